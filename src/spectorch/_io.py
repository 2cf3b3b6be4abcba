"""Atomic writes: a crash or an interrupt never leaves a half-written file behind."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

__all__ = [
    "atomic_path",
    "atomic_save_npy",
    "atomic_torch_save",
    "atomic_write_json",
    "load_torch_checkpoint",
]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on success fsync it and rename it over
    ``path`` (atomic on POSIX), on failure delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _atomic(writer: Callable[[IO[Any]], None], path: str | os.PathLike, mode: str = "wb") -> None:
    with atomic_path(path, mode) as fh:
        writer(fh)


def atomic_save_npy(path: str | os.PathLike, array: Any) -> None:
    """``np.save`` to ``path`` atomically (``path`` keeps its exact name)."""
    _atomic(lambda fh: np.save(fh, np.asarray(array)), path)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically."""
    _atomic(lambda fh: fh.write(json.dumps(obj, indent=2, sort_keys=True) + "\n"), path, "w")


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> None:
    """``torch.save`` atomically."""
    import torch

    _atomic(lambda fh: torch.save(obj, fh), path)


def load_torch_checkpoint(path: str | os.PathLike, fmt: str, kind: str) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` of a spectorch checkpoint of format ``fmt``.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file is corrupt, truncated or not a ``kind`` checkpoint;
            the message names the file.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a damaged file
        raise ValueError(f"checkpoint {path} is corrupt or truncated: {exc}") from exc
    if not isinstance(state, dict) or state.get("format") != fmt:
        raise ValueError(f"{path} is not a {kind} checkpoint (format {fmt})")
    return state
