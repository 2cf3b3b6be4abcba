"""Argument checks shared by every public entry point, with one message style:
``"<name> must be <what was expected>, got <what came>"``.

Each check returns the value (normalised: ``int`` for ints, ``float`` for numbers) so
it can be used inline, and raises :class:`ValueError` (or :class:`TypeError` where the
type is wrong in a way no value could fix) before any expensive work starts.

>>> from spectorch import checks
>>> checks.positive_int("steps", 90)
90
>>> checks.positive_int("steps", 0)
Traceback (most recent call last):
...
ValueError: steps must be a positive int, got 0
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any

import numpy as np

__all__ = [
    "buffer",
    "choice",
    "finite",
    "int_at_least",
    "int_in",
    "interval",
    "nonnegative_int",
    "positive",
    "positive_int",
    "probability",
]


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )


def int_at_least(name: str, value: Any, lowest: int) -> int:
    """``value`` as an int, if it is an int no smaller than ``lowest``."""
    if not _is_int(value) or value < lowest:
        what = {0: "a non-negative int", 1: "a positive int"}.get(lowest, f"an int >= {lowest}")
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return int(value)


def int_in(name: str, value: Any, low: int, high: int) -> int:
    """``value`` as an int, if it is an int from ``low`` to ``high`` (both included)."""
    if not _is_int(value) or not low <= value <= high:
        raise ValueError(f"{name} must be an int in [{low}, {high}], got {value!r}")
    return int(value)


def positive_int(name: str, value: Any) -> int:
    """``value`` as an int, if it is an int of at least one."""
    return int_at_least(name, value, 1)


def nonnegative_int(name: str, value: Any) -> int:
    """``value`` as an int, if it is an int of at least zero."""
    return int_at_least(name, value, 0)


def finite(name: str, value: Any) -> float:
    """``value`` as a float, if it is a finite number."""
    if not _is_number(value) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def positive(name: str, value: Any) -> float:
    """``value`` as a float, if it is a finite number above zero."""
    if not _is_number(value) or not math.isfinite(value) or not value > 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def interval(
    name: str,
    value: Any,
    low: float,
    high: float,
    *,
    closed: tuple[bool, bool] = (True, True),
) -> float:
    """``value`` as a float, if it lies in the interval from ``low`` to ``high``;
    ``closed`` says whether each end belongs to it (``[0, 1)`` is ``(True, False)``)."""
    ok = _is_number(value) and not math.isnan(value)
    if ok:
        ok = (value >= low if closed[0] else value > low) and (
            value <= high if closed[1] else value < high
        )
    if not ok:
        brackets = ("[" if closed[0] else "(", "]" if closed[1] else ")")
        raise ValueError(
            f"{name} must lie in {brackets[0]}{low:g}, {high:g}{brackets[1]}, got {value!r}"
        )
    return float(value)


def probability(name: str, value: Any, *, one: bool = True) -> float:
    """``value`` as a float, if it lies in ``[0, 1]`` (``[0, 1)`` with ``one=False``)."""
    return interval(name, value, 0.0, 1.0, closed=(True, one))


def choice(name: str, value: Any, choices: Collection[Any]) -> Any:
    """``value``, if it is one of ``choices``; the error lists them."""
    try:
        ok = value in choices
    except TypeError:  # an unhashable value asked of a dict or set
        ok = False
    if not ok:
        shown = sorted(choices) if all(isinstance(c, str) for c in choices) else list(choices)
        raise ValueError(f"{name} must be one of {shown}, got {value!r}")
    return value


def buffer(name: str, value: Any, shape: tuple, dtype: Any, device: Any) -> Any:
    """``value``, if it is a contiguous tensor of exactly this shape, dtype and device:
    memory a caller lends to be written in place (a reused Lanczos basis)."""
    import torch

    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(value).__name__}")
    device = torch.device(device)
    same_device = value.device.type == device.type and device.index in (None, value.device.index)
    if (
        tuple(value.shape) != tuple(shape)
        or value.dtype != dtype
        or not same_device
        or not value.is_contiguous()
    ):
        raise ValueError(
            f"{name} must be a contiguous tensor of shape {tuple(shape)}, dtype {dtype} "
            f"on {device}, got {tuple(value.shape)}, {value.dtype} on {value.device}"
            f"{'' if value.is_contiguous() else ' (not contiguous)'}"
        )
    return value
