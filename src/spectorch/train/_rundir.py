"""The one run directory of every spectorch capability: settings written once and
compared on resume, checkpoints of one format, atomic result files."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from spectorch._io import atomic_path, atomic_save_npy, atomic_write_json
from spectorch.train._checkpoint import load_checkpoint, save_checkpoint

__all__ = ["RunDirectory", "SettingsMismatch", "settings_differences"]


class SettingsMismatch(ValueError):
    """A directory holds a run with other settings than the ones asked for."""


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def plain(obj: Any) -> Any:
    """``obj`` as JSON would give it back (tuples become lists, keys strings)."""
    return json.loads(json.dumps(obj, default=str))


def settings_differences(
    saved: Mapping[str, Any],
    wanted: Mapping[str, Any],
    *,
    ignore: Iterable[str] = (),
    only: Iterable[str] | None = None,
) -> list[str]:
    """The differences between two settings dicts, one phrase per key
    (``"lr: 0.05 there, 0.1 now"``); nested dicts compare key by key (``"fit.clip"``).

    Args:
        ignore: keys (dotted for nested ones) that may differ.
        only: compare just these keys (and what is nested under them).
    """
    a, b = _flatten(plain(dict(saved))), _flatten(plain(dict(wanted)))
    skip = tuple(ignore)
    keep = None if only is None else tuple(only)

    def wanted_key(k: str) -> bool:
        if any(k == s or k.startswith(f"{s}.") for s in skip):
            return False
        return keep is None or any(k == s or k.startswith(f"{s}.") for s in keep)

    out = []
    for key in sorted(set(a) | set(b)):
        if not wanted_key(key):
            continue
        if key not in a:
            out.append(f"{key}: not set there, {b[key]!r} now")
        elif key not in b:
            out.append(f"{key}: {a[key]!r} there, not set now")
        elif a[key] != b[key]:
            out.append(f"{key}: {a[key]!r} there, {b[key]!r} now")
    return out


class RunDirectory:
    """A directory that holds one run: what it was asked to do, its checkpoints, and
    its results. It is the only place where a run is resumed or refused.

    * **Settings** are JSON-friendly; they are written to ``settings_file`` when the
      run starts (once: later starts rewrite it only for keys in ``ignore``, such as a
      run length that may grow) and compared with the saved ones every time. A run
      with other settings is refused with :class:`SettingsMismatch`, naming every
      differing key. Every checkpoint carries the settings too, and they are compared
      on load (this covers runs without a settings file).
    * **Checkpoints** (:func:`~spectorch.train.save_checkpoint`'s format) are one
      rolling file (``checkpoint="last.pt"``) or one per step when the name holds
      ``{step}`` (``"step_{step:07d}.pt"``); :meth:`latest_checkpoint` finds the one
      to resume from.
    * **Results** (:meth:`write_json`, :meth:`write_text`, :meth:`save_npy`) are written
      atomically.

    Nothing is created on disk until :meth:`open` (or a first write).

    Args:
        path: the directory.
        settings: what the run is asked to do.
        kind: the checkpoint kind this run writes and reads.
        settings_file: the file holding the settings (``None``: only in checkpoints).
        checkpoint: the checkpoint file name, or a pattern with ``{step}``.
        ignore: settings keys (dotted for nested ones) allowed to differ on resume.
        only: compare only these keys (for a settings file that also holds results,
            such as a density run's manifest).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        settings: Mapping[str, Any] | None = None,
        *,
        kind: str,
        settings_file: str | None = "settings.json",
        checkpoint: str = "checkpoint.pt",
        ignore: Iterable[str] = (),
        only: Iterable[str] | None = None,
    ) -> None:
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise ValueError(f"out must be a directory, but {self.path} is a file")
        self.settings = plain(dict(settings or {}))
        self.kind = kind
        self.settings_file = settings_file
        self.checkpoint = checkpoint
        self.ignore = tuple(ignore)
        self.only = None if only is None else tuple(only)
        if "{step" in checkpoint:
            head, _, tail = checkpoint.partition("{step")
            tail = tail.partition("}")[2]
            self._pattern: re.Pattern | None = re.compile(
                f"^{re.escape(head)}(\\d+){re.escape(tail)}$"
            )
        else:
            self._pattern = None

    # ----------------------------------------------------------------- settings
    def saved_settings(self) -> dict[str, Any] | None:
        """The settings file's contents, or ``None`` when there is none yet."""
        if self.settings_file is None:
            return None
        file = self.path / self.settings_file
        if not file.is_file():
            return None
        try:
            saved = json.loads(file.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot read {file}: {exc}") from exc
        if not isinstance(saved, dict):
            raise ValueError(f"{file} does not hold a settings dict")
        return saved

    def check(self, saved: Mapping[str, Any] | None = None, where: Any = None) -> None:
        """Refuse (:class:`SettingsMismatch`) when ``saved`` (default: the settings
        file) differs from this run's settings in a compared key."""
        if saved is None:
            saved = self.saved_settings()
            where = where or self.path
        if saved is None:
            return
        diffs = settings_differences(saved, self.settings, ignore=self.ignore, only=self.only)
        if diffs:
            raise SettingsMismatch(
                f"{where or self.path} holds a run with other settings ({'; '.join(diffs)}); "
                "choose another output directory or the same settings to resume"
            )

    def open(self) -> RunDirectory:
        """Check the settings against a run found here, create the directory and write
        the settings file (once; ignored keys are brought up to date)."""
        saved = self.saved_settings()
        self.check(saved)
        if self.settings_file is not None and (saved is None or plain(saved) != self.settings):
            atomic_write_json(self.path / self.settings_file, self.settings)
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    # ----------------------------------------------------------------- checkpoints
    def checkpoint_path(self, step: int) -> Path:
        return self.path / (self.checkpoint.format(step=step) if self._pattern else self.checkpoint)

    def checkpoints(self) -> list[Path]:
        """The checkpoints in the directory, by step."""
        if not self.path.is_dir():
            return []
        if self._pattern is None:
            file = self.path / self.checkpoint
            return [file] if file.is_file() else []
        found = [
            (int(m.group(1)), p) for p in self.path.iterdir() if (m := self._pattern.match(p.name))
        ]
        return [p for _, p in sorted(found)]

    def latest_checkpoint(self) -> Path | None:
        files = self.checkpoints()
        return files[-1] if files else None

    def load_checkpoint(self, path: str | os.PathLike | None = None) -> dict[str, Any] | None:
        """The latest checkpoint (or ``path``), checked to be of this run's kind and
        settings; ``None`` when there is none."""
        path = Path(path) if path is not None else self.latest_checkpoint()
        if path is None:
            return None
        state = load_checkpoint(path, kind=self.kind)
        if state["settings"]:
            self.check(state["settings"], where=path)
        return state

    def save_checkpoint(
        self, step: int, *, path: str | os.PathLike | None = None, **payload: Any
    ) -> Path:
        """Write the checkpoint of ``step`` (with this run's kind and settings) to its
        place in the directory, or to ``path``."""
        target = self.checkpoint_path(step) if path is None else Path(path)
        return save_checkpoint(target, kind=self.kind, step=step, settings=self.settings, **payload)

    # ----------------------------------------------------------------- results
    def file(self, name: str) -> Path:
        """The path of a result file (the directory is created)."""
        self.path.mkdir(parents=True, exist_ok=True)
        return self.path / name

    def write_json(self, name: str, obj: Any) -> Path:
        """Write ``obj`` as JSON to ``name`` atomically."""
        path = self.file(name)
        atomic_write_json(path, obj)
        return path

    def write_text(self, name: str, text: str) -> Path:
        """Write ``text`` to ``name`` atomically."""
        path = self.file(name)
        with atomic_path(path, "w") as fh:
            fh.write(text)
        return path

    def save_npy(self, name: str, array: Any) -> Path:
        """``np.save`` to ``name`` atomically."""
        path = self.file(name)
        atomic_save_npy(path, array)
        return path

    def __repr__(self) -> str:
        return f"RunDirectory({str(self.path)!r}, kind={self.kind!r})"
