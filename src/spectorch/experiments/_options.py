"""Config fields that carry their own documentation, so the command line is built from
them and every default is written once, in the dataclass."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["option", "parse_positive_floats", "parse_widths"]


def option(
    default: Any = dataclasses.MISSING,
    help: str = "",
    *,
    flag: str | None = None,
    choices: Sequence[Any] | None = None,
    parse: Callable[[str], Any] | None = None,
    nargs: str | None = None,
    cli: bool = True,
) -> Any:
    """A dataclass field whose metadata describes its command-line option.

    Args:
        default: the default (a tuple for sequences, so it stays immutable).
        help: one line for ``--help``; the default is appended by the CLI.
        flag: the option's name when it is not ``--field-name`` (``--no-batchnorm`` for
            a field ``batchnorm`` that defaults to ``True``).
        choices: the valid values.
        parse: turns the option's text into the value (raises ``ValueError``).
        nargs: argparse's ``nargs`` (``"*"`` for a list of values).
        cli: ``False`` keeps the field off the command line (library use only).
    """
    meta = {"help": help, "flag": flag, "choices": choices, "parse": parse, "nargs": nargs}
    meta["cli"] = cli
    return dataclasses.field(default=default, metadata=meta)


def parse_widths(text: str) -> tuple[int, ...]:
    """``"64,64,64"`` as ``(64, 64, 64)``: comma-separated positive layer widths."""
    try:
        sizes = tuple(int(t) for t in str(text).split(","))
    except ValueError:
        raise ValueError(f"expected comma-separated layer widths, got {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise ValueError(f"expected positive layer widths, got {text!r}")
    return sizes


def parse_positive_floats(text: str) -> tuple[float, ...]:
    """``"1,1.5,3"`` as ``(1.0, 1.5, 3.0)``: comma-separated positive finite numbers."""
    try:
        values = tuple(float(t) for t in str(text).split(","))
    except ValueError:
        raise ValueError(f"expected comma-separated numbers, got {text!r}") from None
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"expected positive numbers separated by commas, got {text!r}")
    return values
