"""The one checkpoint format of every spectorch run.

A checkpoint is a ``torch.save`` of a dict of tensors, numbers, strings, lists and
dicts only, so ``torch.load(weights_only=True)`` reads it without running any code::

    {
      "format": "spectorch.checkpoint",
      "version": 2,
      "kind": "fit" | "cifar" | "spin" | "best" | ...,   # what wrote it
      "step": int,                          # loop steps done (epochs for ``fit``)
      "settings": {...},                    # what the run was asked to do
      "state": {name: state_dict},          # model, optimizer, scheduler, sampler, ...
      "history": {name: [float, ...]},      # per-step records (losses, ...)
      "rng": {"torch": ByteTensor, "cuda": [ByteTensor, ...]},
      "extra": {...},
    }

Version 1 was one format per capability (``spectorch.fit/1``, ``spectorch.fit.best/1``,
``spectorch.cifar/1``, ``spectorch.spin/1``); :func:`load_checkpoint` reads those
too, converted to version 2 on the fly.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from spectorch._io import atomic_torch_save

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_FORMAT = "spectorch.checkpoint"
CHECKPOINT_VERSION = 2
_KEYS = ("kind", "step", "settings", "state", "history", "rng", "extra")


def save_checkpoint(
    path: str | os.PathLike,
    *,
    kind: str,
    step: int,
    state: Mapping[str, Any],
    settings: Mapping[str, Any] | None = None,
    history: Mapping[str, Any] | None = None,
    rng: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint of the current format to ``path`` atomically (a crash leaves
    the previous file intact). Returns ``path``."""
    path = Path(path)
    atomic_torch_save(
        path,
        {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "kind": str(kind),
            "step": int(step),
            "settings": dict(settings or {}),
            "state": dict(state),
            "history": {k: list(v) for k, v in (history or {}).items()},
            "rng": dict(rng or {}),
            "extra": dict(extra or {}),
        },
    )
    return path


def load_checkpoint(path: str | os.PathLike, *, kind: str | None = None) -> dict[str, Any]:
    """Read a spectorch checkpoint with ``torch.load(weights_only=True)``.

    Checkpoints of version 1 are converted to the current layout. With ``kind``, a
    checkpoint written by something else is refused.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file is corrupt or truncated, holds objects that only an
            unsafe load would rebuild, is not a spectorch checkpoint, was written by a
            newer spectorch, or is of another kind; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower() or "weights_only" in str(exc):
            raise ValueError(
                f"checkpoint {path} holds Python objects that a safe (weights-only) load "
                "refuses to rebuild; spectorch never writes such objects, so the file is "
                "not a spectorch checkpoint or was altered; it was not loaded"
            ) from None
        raise ValueError(f"checkpoint {path} is corrupt or truncated: {exc}") from exc
    except Exception as exc:  # torch raises several types for a damaged file
        raise ValueError(f"checkpoint {path} is corrupt or truncated: {exc}") from exc
    state = _upgrade(raw, path)
    if kind is not None and state["kind"] != kind:
        raise ValueError(f"{path} is a spectorch {state['kind']!r} checkpoint, not a {kind!r} one")
    return state


def _upgrade(raw: Any, path: Path) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ValueError(f"{path} is not a spectorch checkpoint")
    fmt = raw.get("format")
    if fmt == CHECKPOINT_FORMAT:
        version = raw.get("version")
        if not isinstance(version, int) or version > CHECKPOINT_VERSION:
            raise ValueError(
                f"{path} is a spectorch checkpoint of version {version!r}, written by a newer "
                f"spectorch; this one reads versions 1 to {CHECKPOINT_VERSION}: upgrade spectorch"
            )
        missing = [k for k in _KEYS if k not in raw]
        if missing:
            raise ValueError(f"{path} is a damaged spectorch checkpoint (missing {missing})")
        return raw
    upgrade = _LEGACY.get(fmt)
    if upgrade is None:
        raise ValueError(
            f"{path} is not a spectorch checkpoint (format {fmt!r}; expected "
            f"{CHECKPOINT_FORMAT!r} or a version-1 format {sorted(_LEGACY)})"
        )
    try:
        return {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **upgrade(raw)}
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path} is a damaged version-1 {fmt} checkpoint: {exc!r}") from exc


def _v1_fit(raw: dict[str, Any]) -> dict[str, Any]:
    state = {k: raw.get(k) for k in ("model", "optimizer", "scheduler", "ema")}
    state["callback:early_stopping"] = {
        "best": float(raw.get("best_loss", float("inf"))),
        "best_step": int(raw.get("best_epoch", 0)),
        "waited": int(raw.get("waited", 0)),
    }
    return {
        "kind": "fit",
        "step": int(raw["epoch"]),
        "settings": {},
        "state": state,
        "history": {"loss": list(raw["losses"])}
        | ({"val_loss": list(raw["val_losses"])} if raw.get("val_losses") else {}),
        "rng": {"torch": raw["rng"]},
        "extra": {},
    }


def _v1_best(raw: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": "best",
        "step": int(raw["epoch"]),
        "settings": {},
        "state": {"model": raw["model"]},
        "history": {},
        "rng": {},
        "extra": {"loss": float(raw["loss"])},
    }


def _v1_cifar(raw: dict[str, Any]) -> dict[str, Any]:
    return {
        "kind": "cifar",
        "step": int(raw["step"]),
        "settings": dict(raw["config"]),
        "state": {"model": raw["model"], "optimizer": raw["optimizer"]},
        "history": {"loss": list(raw["losses"])},
        "rng": {"torch": raw["rng"]},
        "extra": {},
    }


def _v1_spin(raw: dict[str, Any]) -> dict[str, Any]:
    network = {
        k: raw.get(k)
        for k in ("config", "step", "k", "params", "sigma_avg", "sigma_jac_avg", "chol", "buffers")
        if k in raw
    }
    state: dict[str, Any] = {"network": network}
    if "optimizer" in raw:
        state["optimizer"] = raw["optimizer"]
    if "data" in raw:
        state["data"] = raw["data"]
    if "stats" in raw:
        state["callback:stats"] = dict(raw["stats"])
    rng = {"torch": raw["rng"]}
    if "cuda_rng" in raw:
        rng["cuda"] = [raw["cuda_rng"]]
    return {
        "kind": "spin",
        "step": int(raw["step"]),
        "settings": {},  # the network's own settings are in state["network"]["config"]
        "state": state,
        "history": {},
        "rng": rng,
        "extra": {"logging_config": raw.get("logging_config", {})},
    }


_LEGACY = {
    "spectorch.fit/1": _v1_fit,
    "spectorch.fit.best/1": _v1_best,
    "spectorch.cifar/1": _v1_cifar,
    "spectorch.spin/1": _v1_spin,
}
