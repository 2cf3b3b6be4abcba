"""spectraltools 1.x's pruning by masks: ``prune_percentile``, ``metric_based_pruning``
and ``original_model``.

Where :func:`~spectorch.prune.spectral_pruning` (spectraltools 0.4.1) builds a smaller
network, spectraltools 1.x switches nodes off: each :class:`~spectorch.nn.Spectral`
layer gets a 0/1 mask over its output nodes, and a masked node's ``diag_end`` and bias
act as zero (the weights stay, so :func:`original_model` brings the nodes back). The
cut-off is the percentile of ``|diag_end|`` over every Spectral layer of the model, as
1.x's ``eigenvalue_cutoff``; a node is kept when ``|diag_end| >= cut-off``.

The three versions of 1.x on the package registry disagree and none runs its pruning
as published (1.1.0 fails to import ``original_model``; 1.2.0's layer lacks the
``mask_diag_end`` its ``prune_percentile`` calls), so this module follows what each
documents: 1.0.1's in-place forms, and 1.2.0's copying forms when a
``compile_dictionary`` is passed (see docs/migrating.md).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from spectorch import checks
from spectorch.nn import Spectral
from spectorch.prune._pretrain import _from_dictionary, _metric

__all__ = ["metric_based_pruning", "original_model", "prune_percentile"]

#: Keras ``compile`` keywords that change nothing in an evaluation here
_COMPILE_IGNORED = ("optimizer", "run_eagerly", "jit_compile", "steps_per_execution")
#: Keras metric names that are the classification accuracy
_ACCURACY = ("accuracy", "acc", "sparse_categorical_accuracy", "categorical_accuracy")


def _spectral_layers(model: nn.Module) -> list[Spectral]:
    layers = [m for m in model.modules() if isinstance(m, Spectral)]
    if not layers:
        raise ValueError("model: has no Spectral layer to prune")
    return layers


def _cutoff(layers: list[Spectral], percentile: float) -> float:
    """1.x's ``eigenvalue_cutoff``: the percentile of ``|diag_end|`` over all layers."""
    eig = np.concatenate([m.diag_end.detach().abs().cpu().numpy().reshape(-1) for m in layers])
    return float(np.percentile(eig, percentile))


def _compile_loss(
    compile_dictionary: Mapping[str, Any],
) -> tuple[Callable[..., torch.Tensor], str, list[str]]:
    """A Keras ``compile_dictionary`` as ``(loss summed over a batch, target kind,
    metric names)``; the names are Keras' ``model.metrics_names``."""
    unknown = sorted(set(compile_dictionary) - {"loss", "metrics", *_COMPILE_IGNORED})
    if unknown:
        raise ValueError(
            f"compile_dictionary: {unknown} would change the evaluation and have no "
            f"equivalent here; understood keys are {['loss', 'metrics', *_COMPILE_IGNORED]}"
        )
    loss = compile_dictionary.get("loss", "sparse_categorical_crossentropy")
    targets = "labels"
    if callable(loss):
        fn = loss

        def loss_sum(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return fn(out, y) * out.shape[0]  # a batch-mean loss, as Keras' losses

    elif loss == "sparse_categorical_crossentropy":
        loss_sum = nn.CrossEntropyLoss(reduction="sum")
    elif loss == "categorical_crossentropy":
        targets = "onehot"

        def loss_sum(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return -(y * torch.log_softmax(out, dim=-1)).sum()

    elif loss in ("mse", "mean_squared_error"):
        targets = "values"

        def loss_sum(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return (out - y.reshape(out.shape)).square().mean(-1).sum()

    else:
        raise ValueError(
            "compile_dictionary['loss'] must be 'sparse_categorical_crossentropy', "
            "'categorical_crossentropy', 'mse' or a callable (outputs, targets) -> batch "
            f"mean, got {loss!r}"
        )
    metrics = compile_dictionary.get("metrics") or []
    if isinstance(metrics, str):
        metrics = [metrics]
    names = ["loss"]
    for m in metrics:
        if m not in _ACCURACY:
            raise ValueError(
                f"compile_dictionary['metrics']: only the accuracy ({list(_ACCURACY)}) is "
                f"computed here, got {m!r}"
            )
        if targets == "values":
            raise ValueError(
                f"compile_dictionary: metric {m!r} needs a classification loss, got {loss!r}"
            )
        names.append(m)
    return loss_sum, targets, names


def _warn_probabilities(evaluate: Callable[[nn.Module], Any], x: Any) -> Callable:
    """Say so when a model's outputs look like probabilities (a final softmax): the
    losses here take logits, as ``torch.nn.CrossEntropyLoss``, where Keras' took
    probabilities by default."""

    def run(model: nn.Module) -> Any:
        with torch.no_grad():
            first = next(model.parameters())
            probe = torch.as_tensor(np.asarray(x[:64])).to(first.device, first.dtype)
            out = model(probe.reshape(len(probe), -1))
        if out.ndim == 2 and out.shape[1] > 1 and bool((out >= 0).all()):
            if torch.allclose(out.sum(-1), torch.ones_like(out[:, 0]), atol=1e-4):
                warnings.warn(
                    "metric_based_pruning: the model's outputs sum to one (a final softmax?); "
                    "the cross-entropy here takes logits, as torch.nn.CrossEntropyLoss, so "
                    "the loss (not the accuracy) differs from Keras'; drop the final softmax",
                    UserWarning,
                    stacklevel=3,
                )
        return evaluate(model)

    return run


def original_model(model: nn.Module) -> nn.Module:
    """spectraltools 1.x: remove every Spectral layer's pruning mask, in place (all
    nodes active again, the weights untouched). Returns ``model``."""
    for m in _spectral_layers(model):
        m.clear_mask()
    return model


def prune_percentile(
    model: nn.Module,
    percentile_threshold: float,
    create_copy: bool | Mapping[str, Any] = False,
    *,
    compile_dictionary: Mapping[str, Any] | None = None,
    verbose: bool = True,
) -> nn.Module:
    """spectraltools 1.x: mask the output nodes of every Spectral layer whose
    ``|diag_end|`` is below the ``percentile_threshold`` percentile of all of them.

    Args:
        model: a model with Spectral layers.
        percentile_threshold: in ``[0, 100]`` (outside is an error, as 1.x; 0.4.1's
            ``spectral_pruning`` clipped); 0 masks nothing.
        create_copy: prune a copy and leave ``model`` as it is (1.0.1); otherwise
            ``model`` is masked in place.
        compile_dictionary: 1.2.0's third argument (also accepted in third place):
            its pruning always returned a copy, so passing it implies
            ``create_copy=True``. PyTorch models are not compiled; its keys are
            checked, and used by :func:`metric_based_pruning`.
        verbose: print how many nodes were masked, as 1.x did.

    Returns:
        The pruned model (``model`` itself when pruning in place; 1.0.1 returned
        ``None`` then). Masks replace earlier ones: pruning at 30 then at 10 leaves
        10% masked, as 1.x.
    """
    if isinstance(create_copy, Mapping):  # spectraltools 1.2.0's positional form
        if compile_dictionary is not None:
            raise TypeError("prune_percentile: compile_dictionary given twice")
        compile_dictionary, create_copy = create_copy, True
    if compile_dictionary is not None:
        _compile_loss(compile_dictionary)  # checked now, as Keras' compile would
        create_copy = True
    percentile_threshold = checks.finite("percentile_threshold", percentile_threshold)
    if not 0 <= percentile_threshold <= 100:
        raise ValueError(f"percentile_threshold must be in [0, 100], got {percentile_threshold!r}")
    layers = _spectral_layers(model)
    cut_off = _cutoff(layers, percentile_threshold)
    target = copy.deepcopy(model) if create_copy else model
    total = masked = 0
    for m in _spectral_layers(target):
        m.mask_diag_end(cut_off)
        total += m.out_features
        masked += int((m.diag_end_mask == 0).sum())
    if verbose:
        print(f"Number of nodes masked: {masked} out of {total} ({100 * masked / total:.2f}%)")
    return target


def metric_based_pruning(
    model: nn.Module,
    eval_dictionary: Mapping[str, Any] | None = None,
    *args: Any,
    compile_dictionary: Mapping[str, Any] | None = None,
    compare_metric: str = "accuracy",
    max_delta_percent: float = 10,
    percentile_step: int = 5,
    evaluate: Callable[[nn.Module], Any] | None = None,
    verbose: bool = True,
) -> nn.Module:
    """spectraltools 1.x: mask more and more nodes (percentiles ``0, step, 2 step,
    ...`` of ``|diag_end|``, see :func:`prune_percentile`) while ``compare_metric``
    stays within ``max_delta_percent`` percent (relative) of the unpruned model's, and
    keep the last percentile within it.

    Called as 1.0.1, ``metric_based_pruning(model, eval_dictionary, compare_metric,
    max_delta_percent, percentile_step=5)``, the model is pruned in place; called as
    1.2.0, ``metric_based_pruning(model, eval_dictionary, compile_dictionary, ...)``, a
    pruned copy is returned and ``model`` is left as it is. Either way the pruned model
    is returned.

    Args:
        eval_dictionary: keyword arguments of Keras' ``model.evaluate`` (``x``, ``y``,
            ``batch_size``, ``verbose``); or pass ``evaluate``, a callable returning
            ``{"loss", "acc"}`` or ``(loss, acc)``.
        compile_dictionary: Keras' ``compile`` keywords: ``loss``
            (``"sparse_categorical_crossentropy"`` by default,
            ``"categorical_crossentropy"``, ``"mse"``, or a callable returning the batch
            mean) and ``metrics`` (the accuracy); the loss takes the model's logits.
        compare_metric: ``"accuracy"`` (or ``"acc"``) or ``"loss"``; with a
            ``compile_dictionary`` it must be among its metrics, as 1.x.
        max_delta_percent: the tolerance, in percent of the unpruned value.
        percentile_step: the step of the percentiles (1.x's ``**kwargs``).

    Differences from 1.x, each a bug there: the step back after the tolerance is
    exceeded is ``percentile_step`` (1.x stepped back 5 whatever the step); when the
    tolerance is never exceeded, the model pruned at the last percentile is returned
    with a warning (1.2.0 returned ``None``).
    """
    positional = list(args)
    if positional and isinstance(positional[0], Mapping):  # 1.2.0: compile_dictionary third
        if compile_dictionary is not None:
            raise TypeError("metric_based_pruning: compile_dictionary given twice")
        compile_dictionary = positional.pop(0)
    if len(positional) > 2:
        raise TypeError(
            "metric_based_pruning: too many positional arguments; the originals' order is "
            "(model, eval_dictionary, [compile_dictionary,] compare_metric, max_delta_percent)"
        )
    if positional:
        compare_metric = positional[0]
    if len(positional) > 1:
        max_delta_percent = positional[1]
    if (eval_dictionary is None) == (evaluate is None):
        raise TypeError("metric_based_pruning: give exactly one of eval_dictionary and evaluate")
    if not isinstance(compare_metric, str):
        raise ValueError(f"compare_metric must be 'accuracy' or 'loss', got {compare_metric!r}")
    max_delta_percent = checks.finite("max_delta_percent", max_delta_percent)
    if max_delta_percent < 0:
        raise ValueError(f"max_delta_percent must be >= 0, got {max_delta_percent!r}")
    step = checks.int_in("percentile_step", percentile_step, 1, 100)
    names = ["loss", "accuracy"]
    loss_fn, targets = None, "labels"
    if compile_dictionary is not None:
        loss_fn, targets, names = _compile_loss(compile_dictionary)
    if compare_metric not in names:
        raise ValueError(
            f"compare_metric: metric {compare_metric!r} not found in the model's metrics "
            f"{names} (with a compile_dictionary, add it to its 'metrics')"
        )
    key = "loss" if compare_metric == "loss" else "acc"
    _spectral_layers(model)
    if evaluate is None:
        evaluate = _warn_probabilities(
            _from_dictionary(
                eval_dictionary, "eval_dictionary", training=False, loss_fn=loss_fn, targets=targets
            ),
            eval_dictionary["x"],
        )
    elif not callable(evaluate):
        raise TypeError(f"evaluate: expected a callable taking the model, got {type(evaluate)}")
    target = copy.deepcopy(model) if compile_dictionary is not None else model

    initial = _metric(evaluate(target), key)
    chosen = None
    for perc in range(0, 100, step):
        prune_percentile(target, perc, verbose=False)
        value = _metric(evaluate(target), key)
        if initial:
            delta = abs(value - initial) / abs(initial) * 100
        else:
            delta = 0.0 if value == initial else math.inf
        if verbose:
            print(
                f"Pruning with {perc}% of eigenvalues removed. Delta in {compare_metric}: "
                f"{delta:.2f}%"
            )
        if delta > max_delta_percent:
            chosen = max(perc - step, 0)
            if perc == 0:
                warnings.warn(
                    f"metric_based_pruning: {compare_metric} moved by {delta:.2f}% with no node "
                    "masked (is the evaluation random?); the model is not pruned",
                    UserWarning,
                    stacklevel=2,
                )
            break
    if chosen is None:
        chosen = perc
        warnings.warn(
            f"metric_based_pruning: {compare_metric} stayed within {max_delta_percent}% up "
            f"to {chosen}% of the nodes masked; the model is pruned at {chosen}%",
            UserWarning,
            stacklevel=2,
        )
    prune_percentile(target, chosen, verbose=verbose)
    return target
