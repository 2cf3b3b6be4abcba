"""Text that ships with Python itself, tokenised at byte level, for language models
trained without any download."""

from __future__ import annotations

import hashlib
import sysconfig
from pathlib import Path

import torch

from spectorch import checks

__all__ = ["byte_tokens", "python_source", "text_windows"]


def python_source(limit: int | None = None) -> bytes:
    """The source of the Python standard library's top-level modules (every
    ``*.py`` file directly in ``sysconfig.get_paths()["stdlib"]``), concatenated in
    file-name order: about 4.7 MB of real text on Python 3.12, the same on every
    machine with the same Python. ``limit`` keeps the first ``limit`` bytes.

    Raises:
        FileNotFoundError: when this Python ships no standard-library sources.
    """
    if limit is not None:
        checks.positive_int("limit", limit)
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(root.glob("*.py"))
    if not files:
        raise FileNotFoundError(f"no standard-library sources (*.py) in {root}")
    parts, size = [], 0
    for f in files:
        parts.append(f.read_bytes())
        size += len(parts[-1])
        if limit is not None and size >= limit:
            break
    text = b"".join(parts)
    return text if limit is None else text[:limit]


def byte_tokens(text: bytes | str) -> torch.Tensor:
    """Byte-level tokens (GPT-2's byte alphabet, without merges): a ``long`` tensor of
    values in ``0..255``, UTF-8 for a ``str``."""
    if isinstance(text, str):
        text = text.encode()
    if not isinstance(text, (bytes, bytearray)):
        raise TypeError(f"text must be bytes or str, got {type(text).__name__}")
    return torch.frombuffer(bytearray(text), dtype=torch.uint8).long()


def text_windows(tokens: torch.Tensor, length: int) -> torch.Tensor:
    """The non-overlapping windows ``(n, length)`` of a 1-D token tensor, in order
    (the tail shorter than ``length`` is left out)."""
    checks.positive_int("length", length)
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 1:
        raise ValueError("tokens must be a 1-D tensor")
    n = tokens.shape[0] // length
    if n == 0:
        raise ValueError(f"{tokens.shape[0]} tokens make no window of length {length}")
    return tokens[: n * length].view(n, length)


def fingerprint(text: bytes) -> str:
    """The SHA-256 of ``text``, which names a corpus in a run's settings."""
    return hashlib.sha256(text).hexdigest()
