"""Parameter selection and blocks: the principal sub-matrices of a curvature matrix.

A block is a set of parameters; its operator is the curvature restricted to them (the
other parameters held fixed), which is the principal sub-matrix of the full matrix on
those coordinates. Zhang et al. ("Why Transformers Need Adam: A Hessian Perspective",
NeurIPS 2024) compare the spectra of such blocks.

Selections (:func:`select_parameters`) are names, globs over dotted names
(``"h.*.attn.*"``; ``*`` also crosses dots, as :mod:`fnmatch`), module types (every
parameter that a module of that type holds itself), predicates ``(name, parameter)
-> bool``, or lists of these (their union, in the model's order).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from torch import nn

__all__ = ["PRESETS", "parameter_blocks", "select_parameters"]

Selection = Any


def _trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {k: p for k, p in model.named_parameters() if p.requires_grad}


def _owners(model: nn.Module) -> dict[str, nn.Module]:
    """Parameter name -> the module that holds it directly."""
    out: dict[str, nn.Module] = {}
    for mname, module in model.named_modules():
        for pname, _ in module.named_parameters(recurse=False):
            out[f"{mname}.{pname}" if mname else pname] = module
    return out


def _matches(spec: Selection, names: Sequence[str], owners: Mapping[str, nn.Module], params) -> set:
    if isinstance(spec, str):
        if spec in params:
            return {spec}
        return {n for n in names if fnmatch.fnmatchcase(n, spec)}
    if isinstance(spec, type) and issubclass(spec, nn.Module):
        return {n for n in names if isinstance(owners.get(n), spec)}
    if isinstance(spec, tuple) and spec and all(isinstance(t, type) for t in spec):
        return {n for n in names if isinstance(owners.get(n), spec)}
    if callable(spec):
        return {n for n in names if spec(n, params[n])}
    if isinstance(spec, Iterable):
        found: set = set()
        for part in spec:
            found |= _matches(part, names, owners, params)
        return found
    raise TypeError(
        "a parameter selection must be a name, a glob, a module type, a predicate "
        f"(name, parameter) -> bool, or a list of these; got {type(spec).__name__}"
    )


def select_parameters(model: nn.Module, spec: Selection, *, what: str = "selection") -> list[str]:
    """The names of the trainable parameters of ``model`` that ``spec`` selects, in
    ``model.named_parameters()`` order.

    Raises:
        ValueError: if nothing is selected (naming the selection and a few names).
    """
    params = _trainable(model)
    names = list(params)
    found = _matches(spec, names, _owners(model), params)
    if not found:
        raise ValueError(
            f"{what} {spec!r} selects no trainable parameter; names look like {names[:6]}"
        )
    return [n for n in names if n in found]


def _preset_modules(model: nn.Module) -> dict[str, list[str]]:
    blocks: dict[str, list[str]] = {}
    for name, owner in _owners(model).items():
        if name in _trainable(model):
            mname = next(m for m, mod in model.named_modules() if mod is owner)
            blocks.setdefault(mname or type(owner).__name__, []).append(name)
    return blocks


def _preset_layers(model: nn.Module) -> dict[str, list[str]]:
    trainable = _trainable(model)
    blocks: dict[str, list[str]] = {}
    for name in trainable:
        blocks.setdefault(name.split(".")[0], []).append(name)
    return blocks


#: named ways to cut a model into blocks
PRESETS: dict[str, Callable[[nn.Module], dict[str, list[str]]]] = {
    "parameters": lambda model: {n: [n] for n in _trainable(model)},
    "modules": _preset_modules,
    "layers": _preset_layers,
}


def parameter_blocks(model: nn.Module, blocks: Any) -> dict[str, list[str]]:
    """Blocks of parameter names, by name.

    Args:
        blocks: a preset, ``"parameters"`` (each parameter tensor), ``"modules"`` (the
            parameters each module holds itself: a linear layer's weight and bias) or
            ``"layers"`` (the model's top-level children); a mapping ``{block name:
            selection}``; or a sequence of selections (each named by itself).

    Raises:
        ValueError: on an unknown preset, a block that selects nothing, or two blocks
            under one name.
    """
    if isinstance(blocks, str):
        if blocks not in PRESETS:
            raise ValueError(
                f"blocks: unknown preset {blocks!r}; choose one of {sorted(PRESETS)}, or "
                "give {name: selection}"
            )
        return PRESETS[blocks](model)
    if isinstance(blocks, Mapping):
        items = list(blocks.items())
    elif isinstance(blocks, Sequence):
        items = [(s if isinstance(s, str) else getattr(s, "__name__", repr(s)), s) for s in blocks]
    else:
        raise TypeError(
            f"blocks must be a preset name, a mapping or a sequence, got {type(blocks).__name__}"
        )
    out: dict[str, list[str]] = {}
    for name, spec in items:
        if name in out or name == "full":
            raise ValueError(f"blocks: the name {name!r} is used twice (or is 'full')")
        out[str(name)] = select_parameters(model, spec, what=f"block {name!r}")
    if not out:
        raise ValueError("blocks: no block given")
    return out
