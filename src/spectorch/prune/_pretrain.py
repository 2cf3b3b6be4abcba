"""Eigenvalue-only training followed by pruning: ``spectral_pretrain`` and
``spectral_distiller`` (spectraltools' names), with ready ``fit``/``evaluate`` callables.

PyTorch models have no ``model.fit``: ``fit(model)`` trains a model in place and
``evaluate(model)`` returns its metrics (a dict with ``"loss"``/``"acc"``, or a Keras-like
``(loss, acc)`` pair). :func:`make_fit` and :func:`make_evaluate` build them on
spectorch's shared training loop (:func:`spectorch.train.fit`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from spectorch import checks
from spectorch.nn import Spectral, regularization_loss
from spectorch.prune._pruning import spectral_pruning
from spectorch.train import FitResult, fit

__all__ = [
    "eigenvalues_only",
    "make_evaluate",
    "make_fit",
    "spectral_distiller",
    "spectral_pretrain",
]


def eigenvalues_only(model: nn.Module) -> nn.Module:
    """Set every Spectral layer of ``model`` to train its ``diag_end`` eigenvalues only
    (bases and ``diag_start`` frozen), in place, as spectraltools' ``spectral_pretrain``;
    other layers keep their flags. Returns ``model``."""
    found = False
    for m in model.modules():
        if isinstance(m, Spectral):
            m.is_base_trainable = False
            m.is_diag_start_trainable = False
            m.is_diag_end_trainable = True
            found = True
    if not found:
        raise ValueError("model: has no Spectral layer to train by its eigenvalues")
    return model


def make_fit(
    data: Iterable[Any],
    *,
    epochs: int,
    lr: float = 1e-3,
    loss_fn: Callable[..., torch.Tensor] | None = None,
    seed: int | None = 0,
    progress: bool = False,
) -> Callable[[nn.Module], FitResult]:
    """``fit(model)``: Adam on the trainable parameters for ``epochs`` epochs of ``data``
    (re-iterable ``(inputs, targets)`` batches), cross-entropy by default, plus the
    weight penalties of the model's Spectral layers (:func:`regularization_loss`)."""
    loss = loss_fn or nn.CrossEntropyLoss()

    def run(model: nn.Module) -> FitResult:
        def penalized(out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            # spectraltools' layer regularizers, added to the loss as Keras did
            return loss(out, targets) + regularization_loss(model)

        return fit(
            model,
            penalized,
            data,
            epochs=epochs,
            optimizer=lambda params: torch.optim.Adam(
                [p for p in params if p.requires_grad], lr=lr
            ),
            seed=seed,
            progress=progress,
            desc="fit",
        )

    return run


def make_evaluate(
    data: Iterable[Any], *, loss_fn: Callable[..., torch.Tensor] | None = None
) -> Callable[[nn.Module], dict[str, float]]:
    """``evaluate(model)``: ``{"loss", "acc"}`` over ``data``, each batch weighted by its size."""
    loss = loss_fn or nn.CrossEntropyLoss(reduction="sum")

    @torch.no_grad()
    def run(model: nn.Module) -> dict[str, float]:
        model.eval()
        first = next(model.parameters())
        total = correct = 0.0
        n = 0
        for inputs, targets in data:
            targets = targets.to(first.device)
            if targets.is_floating_point():
                targets = targets.to(first.dtype)
            inputs = inputs.to(first.device)
            if inputs.is_floating_point():  # the dictionaries' float32 into any model
                inputs = inputs.to(first.dtype)
            out = model(inputs)
            total += float(loss(out, targets))
            # one-hot (or probability) targets: the class is their largest entry
            labels = targets.argmax(-1) if targets.ndim == out.ndim else targets
            correct += float((out.argmax(-1) == labels).sum())
            n += int(targets.shape[0])
        return {"loss": total / n, "acc": correct / n}

    return run


def _metric(result: Any, compare_with: str) -> float:
    if isinstance(result, Mapping):
        if compare_with not in result:
            raise ValueError(f"evaluate: returned {sorted(result)}, no {compare_with!r}")
        return float(result[compare_with])
    if isinstance(result, Sequence) and not isinstance(result, str):
        return float(result[1 if compare_with == "acc" else 0])  # Keras: (loss, acc)
    raise ValueError(
        f"evaluate: expected a dict or a (loss, acc) pair, got {type(result).__name__}"
    )


#: the keys of a Keras fit/evaluate dictionary that have a meaning here
_DICT_KEYS = ("x", "y", "batch_size", "epochs", "verbose", "shuffle", "lr", "validation_split")


def _from_dictionary(
    d: Mapping[str, Any],
    name: str,
    *,
    training: bool,
    loss_fn: Callable[..., torch.Tensor] | None = None,
    targets: str = "labels",
) -> Callable:
    """spectraltools' ``fit_dictionary`` / ``eval_dictionary`` (keyword arguments of
    Keras' ``model.fit`` / ``model.evaluate``) as a spectorch callable: batches of
    ``batch_size`` (Keras' default 32) of ``x``, ``y``; ``epochs`` (default 1) of Adam
    at ``lr`` (default 1e-3, Keras' Adam) on the cross-entropy; ``validation_split``
    holds out the last fraction, as Keras (its scores were only reported).
    ``loss_fn`` (summed over a batch) and ``targets`` (``"labels"``, ``"onehot"`` or
    ``"values"``) come from a Keras ``compile_dictionary`` when one is given."""
    from spectorch.data import Batches

    unknown = sorted(set(d) - set(_DICT_KEYS))
    if unknown:
        raise ValueError(
            f"{name}: {unknown} have no equivalent here; understood keys are {list(_DICT_KEYS)}"
        )
    if "x" not in d or "y" not in d:
        raise ValueError(f"{name}: needs 'x' and 'y'")
    x = torch.as_tensor(np.asarray(d["x"]), dtype=torch.float32)
    y = torch.as_tensor(np.asarray(d["y"]))
    y = y.long().reshape(-1) if targets == "labels" else y.to(torch.float32).reshape(len(y), -1)
    split = float(d.get("validation_split", 0.0))
    if training and split:  # Keras holds out the last fraction (and only reports on it)
        checks.interval("validation_split", split, 0.0, 1.0, closed=(True, False))
        keep = int(len(x) * (1.0 - split))
        x, y = x[:keep], y[:keep]
    data = Batches(
        x.reshape(len(x), -1),
        y,
        int(d.get("batch_size", 32)),
        shuffle=training and bool(d.get("shuffle", True)),
    )
    if training:
        return make_fit(data, epochs=int(d.get("epochs", 1)), lr=float(d.get("lr", 1e-3)))
    return make_evaluate(data, loss_fn=loss_fn)


def _callable_or_dictionary(obj: Any, name: str, *, training: bool) -> Any:
    return _from_dictionary(obj, name, training=training) if isinstance(obj, Mapping) else obj


def _check_callables(**fns: Any) -> None:
    for name, fn in fns.items():
        if not callable(fn):
            raise TypeError(
                f"{name}: expected a callable taking the model, got {type(fn).__name__}"
            )


def spectral_pretrain(
    model: nn.Module,
    fit: Callable[[nn.Module], Any] | Mapping[str, Any] | None = None,
    evaluate: Callable[[nn.Module], Any] | Mapping[str, Any] | None = None,
    max_delta: float | None = None,
    compare_with: str = "acc",
    *,
    step: float = 5.0,
    fit_dictionary: Mapping[str, Any] | None = None,
    eval_dictionary: Mapping[str, Any] | None = None,
) -> nn.Module:
    """Train a copy of ``model`` through its eigenvalues only, then prune it at
    percentiles ``step, 2 step, ...`` while the metric stays within ``max_delta`` percent
    (relative) of the unpruned one; return the last model within the tolerance.

    spectraltools returns the first model *beyond* the tolerance; this returns the last
    one *within* it (the one a user wants). ``max_delta`` is clipped to [1, 99] as there.
    The input model is not modified. ``fit``/``evaluate`` may also be spectraltools'
    ``fit_dictionary``/``eval_dictionary`` (see :func:`_from_dictionary`).
    """
    fit = _callable_or_dictionary(
        fit if fit is not None else fit_dictionary, "fit_dictionary", training=True
    )
    evaluate = _callable_or_dictionary(
        evaluate if evaluate is not None else eval_dictionary, "eval_dictionary", training=False
    )
    if max_delta is None:
        raise TypeError("spectral_pretrain: max_delta is required")
    _check_callables(fit=fit, evaluate=evaluate)
    checks.choice("compare_with", compare_with, ("acc", "loss"))
    checks.positive("max_delta", max_delta)
    checks.interval("step", step, 0, 100, closed=(False, True))
    tolerance = min(max(float(max_delta), 1.0), 99.0) / 100
    spec = eigenvalues_only(copy.deepcopy(model))
    fit(spec)
    reference = _metric(evaluate(spec), compare_with)
    best = spec
    p = step
    while p < 100:
        candidate = spectral_pruning(spec, p)
        value = _metric(evaluate(candidate), compare_with)
        if abs(value - reference) > tolerance * abs(reference):
            break
        best = candidate
        p += step
    return best


def spectral_distiller(
    model: nn.Module,
    fit: Callable[[nn.Module], Any] | Mapping[str, Any] | None = None,
    percentile: float | None = None,
    *,
    fine_tune: Callable[[nn.Module], Any] | None = None,
    fit_dictionary: Mapping[str, Any] | None = None,
) -> nn.Module:
    """The papers' pre-training filter: train a copy of ``model`` through its eigenvalues
    only, prune it at ``percentile``, then train the pruned network fully (bases and
    ``diag_end``) starting from its trained weights with ``fine_tune`` (default ``fit``).

    spectraltools' package re-initialised the pruned network before the full training;
    this keeps the trained weights, as the papers describe. The input model is not
    modified. ``fit`` may also be spectraltools' ``fit_dictionary``.
    """
    fit = _callable_or_dictionary(
        fit if fit is not None else fit_dictionary, "fit_dictionary", training=True
    )
    if percentile is None:
        raise TypeError("spectral_distiller: percentile is required")
    _check_callables(fit=fit, fine_tune=fine_tune or fit)
    checks.finite("percentile", percentile)  # before any training; clipped as spectraltools
    spec = eigenvalues_only(copy.deepcopy(model))
    fit(spec)
    pruned = spectral_pruning(spec, percentile)
    for m in pruned.modules():
        if isinstance(m, Spectral):
            m.is_base_trainable = True
            m.is_diag_end_trainable = True
    (fine_tune or fit)(pruned)
    return pruned
