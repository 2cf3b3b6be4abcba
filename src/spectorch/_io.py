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
]


def _umask() -> int:
    """The process's umask, read without changing it where Linux tells it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, but brief)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path``; on success fsync it and rename it over
    ``path`` (atomic on POSIX), on failure delete it.

    The file gets the permissions a plain ``open`` would give it (``0666`` less the
    umask), not ``mkstemp``'s private ``0600``, so collaborators can read results.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, 0o666 & ~_umask())
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
