"""Spectral pruning: remove hidden nodes whose eigenvalue is small, structurally.

A hidden node sits between a *producer* (a :class:`~spectorch.nn.Spectral` or
``nn.Linear`` whose output it is) and a *consumer* (the next ``Spectral`` or ``Linear``),
with only element-wise modules in between (activations, dropout). It has up to two
eigenvalues: the producer's ``diag_end`` and the consumer's ``diag_start``. One global
cut-off decides, the ``percentile`` of the pool of spectraltools 0.4.1's
``eigenvalue_cutoff``: ``|diag_end|`` of every Spectral layer (with a trainable
``diag_end``) that feeds another layer, and that layer's ``|diag_start|`` too when its
``diag_start`` is trainable. A node survives when every *trained* eigenvalue it has is
at least the cut-off (``and`` of the end and start conditions, the original's default;
an eigenvalue that is not trained imposes nothing, nor, as in spectraltools, a
``diag_start`` that is still all zero). Removing
a node removes the producer's output column (and bias entry) and the consumer's input
row, so the returned model is smaller and faster. The input model is not modified.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from spectorch import checks
from spectorch.nn import Spectral

__all__ = ["PruningReport", "prunable_boundaries", "spectral_pruning"]

# modules that act on each hidden node on its own: safe between producer and consumer
_ELEMENTWISE = (
    nn.ReLU,
    nn.ReLU6,
    nn.Tanh,
    nn.Sigmoid,
    nn.GELU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.SiLU,
    nn.Softplus,
    nn.LeakyReLU,
    nn.Hardtanh,
    nn.Identity,
    nn.Dropout,
    nn.AlphaDropout,
)


@dataclass
class PruningReport:
    """What :func:`spectral_pruning` did.

    Attributes:
        cutoff: the global cut-off on ``|eigenvalue|``.
        kept: per pruned boundary (``"producer->consumer"`` module names), the boolean
            mask of surviving hidden nodes.
        skipped: boundaries that could not be pruned safely, with the reason.
    """

    cutoff: float
    kept: dict[str, np.ndarray] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    @property
    def removed_fraction(self) -> float:
        total = sum(m.size for m in self.kept.values())
        return 0.0 if total == 0 else 1.0 - sum(int(m.sum()) for m in self.kept.values()) / total


def _flatten(seq: nn.Sequential, prefix: str = "") -> list[tuple[str, nn.Module]]:
    out: list[tuple[str, nn.Module]] = []
    for name, module in seq.named_children():
        full = f"{prefix}{name}"
        if isinstance(module, nn.Sequential):
            out += _flatten(module, full + ".")
        else:
            out.append((full, module))
    return out


def _is_weighted(m: nn.Module) -> bool:
    return isinstance(m, (Spectral, nn.Linear))


def _elementwise(m: nn.Module) -> bool:
    return isinstance(m, _ELEMENTWISE)


def _spectral_activation_ok(m: Spectral) -> bool:
    return m.activation is None or _elementwise(m.activation)


_ELEMENTWISE_FUNCTIONS = {
    torch.relu,
    torch.tanh,
    torch.sigmoid,
    nn.functional.relu,
    nn.functional.gelu,
    nn.functional.elu,
    nn.functional.silu,
    nn.functional.softplus,
    nn.functional.leaky_relu,
    nn.functional.dropout,
    nn.functional.tanh,
    nn.functional.sigmoid,
}
_ELEMENTWISE_METHODS = {"relu", "tanh", "sigmoid"}


def _fx_boundaries(model: nn.Module) -> tuple[list[tuple[str, str]], list[str]]:
    """Boundaries of a model that ``torch.fx`` can trace: a Spectral or Linear call whose
    output goes, through single-use element-wise operations only, to exactly one
    Spectral or Linear call. Branches, merges and shared modules are skipped."""
    import torch.fx

    class _Tracer(torch.fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return isinstance(m, Spectral) or super().is_leaf_module(m, qualname)

    try:
        graph = _Tracer().trace(model)
    except Exception as exc:
        raise TypeError(
            f"model: torch.fx cannot trace {type(model).__name__} ({exc}); spectral_pruning "
            "handles nn.Sequential models and models torch.fx can trace"
        ) from exc
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1

    def module(node: Any) -> nn.Module | None:
        return model.get_submodule(node.target) if node.op == "call_module" else None

    def elementwise(node: Any) -> bool:
        m = module(node)
        if m is not None:
            return _elementwise(m)
        if node.op == "call_function":
            return node.target in _ELEMENTWISE_FUNCTIONS
        return node.op == "call_method" and node.target in _ELEMENTWISE_METHODS

    found: list[tuple[str, str]] = []
    skipped: list[str] = []
    for node in graph.nodes:
        m = module(node)
        if m is None or not _is_weighted(m):
            continue
        cur, consumer, reason = node, None, None
        while True:
            users = list(cur.users)
            if len(users) != 1:
                reason = "its output branches" if users else None
                break
            nxt = users[0]
            nm = module(nxt)
            if nm is not None and _is_weighted(nm):
                consumer = nxt
                break
            if not elementwise(nxt):
                reason = (
                    None if nxt.op == "output" else f"its output goes into {nxt.op} {nxt.target}"
                )
                break
            cur = nxt
        is_spectral = isinstance(m, Spectral) or (
            consumer is not None and isinstance(module(consumer), Spectral)
        )
        if not is_spectral:
            continue
        if consumer is None:
            if reason:
                skipped.append(f"{node.target}: {reason}; its nodes are kept")
            continue
        if calls[node.target] > 1 or calls[consumer.target] > 1:
            skipped.append(f"{node.target}: a module called more than once; its nodes are kept")
            continue
        if isinstance(m, Spectral) and not _spectral_activation_ok(m):
            skipped.append(f"{node.target}: its activation mixes the nodes; its nodes are kept")
            continue
        found.append((str(node.target), str(consumer.target)))
    return found, skipped


def prunable_boundaries(model: nn.Module) -> tuple[list[tuple[str, str]], list[str]]:
    """The hidden-node boundaries ``(producer, consumer)`` that involve a Spectral layer,
    and the reasons others are skipped: for an ``nn.Sequential`` (nested ones
    flattened) from its order, for any other model from its ``torch.fx`` graph.

    Raises:
        TypeError: for a model that is not an ``nn.Sequential`` and that torch.fx
            cannot trace.
    """
    if not isinstance(model, nn.Sequential):
        return _fx_boundaries(model)
    layers = _flatten(model)
    found: list[tuple[str, str]] = []
    skipped: list[str] = []
    for a, (name_a, mod_a) in enumerate(layers):
        if not _is_weighted(mod_a):
            continue
        b = a + 1
        blocker = None
        while b < len(layers) and not _is_weighted(layers[b][1]):
            if not _elementwise(layers[b][1]):
                blocker = layers[b]
                break
            b += 1
        involves_spectral = isinstance(mod_a, Spectral) or (
            b < len(layers) and blocker is None and isinstance(layers[b][1], Spectral)
        )
        if not involves_spectral:
            continue
        if blocker is not None:
            skipped.append(
                f"{name_a}: followed by {blocker[0]} ({type(blocker[1]).__name__}), which mixes "
                "or reshapes the hidden nodes; its nodes are kept"
            )
            continue
        if b >= len(layers):
            continue  # the model's output nodes are never pruned
        if isinstance(mod_a, Spectral) and not _spectral_activation_ok(mod_a):
            skipped.append(
                f"{name_a}: its activation {type(mod_a.activation).__name__} mixes the nodes; "
                "its nodes are kept"
            )
            continue
        found.append((name_a, layers[b][0]))
    return found, skipped


def _conditions(producer: nn.Module, consumer: nn.Module, cutoff: float) -> np.ndarray:
    n = producer.out_features
    keep = np.ones(n, dtype=bool)
    if isinstance(producer, Spectral) and producer.is_diag_end_trainable:
        keep &= producer.diag_end.detach().abs().cpu().numpy() >= cutoff
    if isinstance(consumer, Spectral) and consumer.is_diag_start_trainable:
        start = consumer.diag_start.detach().abs().cpu().numpy()
        if start.any():  # spectraltools keeps every node while diag_start is all zero
            keep &= start >= cutoff
    return keep


def _bake_mask(m: Spectral) -> None:
    """Write a layer's mask into its weights (masked ``diag_end`` and bias entries set
    to zero) and drop it: the same function, with no mask left to shrink."""
    with torch.no_grad():
        m.diag_end.mul_(m.diag_end_mask)
        if m.bias is not None:
            m.bias.mul_(m.diag_end_mask)
    m.clear_mask()


def _shrink_outputs(m: nn.Module, keep: Tensor) -> None:
    with torch.no_grad():
        if isinstance(m, Spectral):
            m.base = nn.Parameter(m.base[:, keep].clone(), requires_grad=m.base.requires_grad)
            m.diag_end = nn.Parameter(
                m.diag_end[keep].clone(), requires_grad=m.diag_end.requires_grad
            )
        else:
            m.weight = nn.Parameter(m.weight[keep].clone(), requires_grad=m.weight.requires_grad)
        if m.bias is not None:
            m.bias = nn.Parameter(m.bias[keep].clone(), requires_grad=m.bias.requires_grad)
        m.out_features = int(keep.sum())


def _shrink_inputs(m: nn.Module, keep: Tensor) -> None:
    with torch.no_grad():
        if isinstance(m, Spectral):
            m.base = nn.Parameter(m.base[keep].clone(), requires_grad=m.base.requires_grad)
            m.diag_start = nn.Parameter(
                m.diag_start[keep].clone(), requires_grad=m.diag_start.requires_grad
            )
        else:
            m.weight = nn.Parameter(m.weight[:, keep].clone(), requires_grad=m.weight.requires_grad)
        m.in_features = int(keep.sum())


def spectral_pruning(
    model: nn.Module, percentile: float, *, return_report: bool = False
) -> nn.Module | tuple[nn.Module, PruningReport]:
    """A structurally smaller copy of ``model`` without the hidden nodes whose trained
    eigenvalues fall below the global ``percentile`` cut-off (see the module's text).

    Args:
        model: an ``nn.Sequential`` (nested Sequentials are flattened) or a model that
            ``torch.fx`` can trace, with Spectral and Linear layers and element-wise
            operations between them.
        percentile: in ``[0, 100]`` (outside, clipped with a warning, as spectraltools
            clipped); 0 keeps every node.
        return_report: also return a :class:`PruningReport`.

    Boundaries that cannot be pruned safely (a normalisation, softmax or reshape between
    the layers, a branch, a merge, a module called twice) are kept whole and named in a
    warning, never silently broken.

    Raises:
        ValueError: for a percentile that is not a finite number, or a model without a prunable
            Spectral layer.
        TypeError: for a model that is neither an ``nn.Sequential`` nor traceable.
    """
    checks.finite("percentile", percentile)
    if not 0 <= percentile <= 100:  # spectraltools clips (np.clip(perc, 0, 100)); so do we, aloud
        warnings.warn(
            f"spectral_pruning: percentile {percentile} clipped to [0, 100], as spectraltools",
            UserWarning,
            stacklevel=2,
        )
        percentile = min(max(float(percentile), 0.0), 100.0)
    boundaries, skipped = prunable_boundaries(model)
    new = copy.deepcopy(model)
    for m in new.modules():  # nodes masked by prune_percentile (1.x) count as zero
        if isinstance(m, Spectral) and m.diag_end_mask is not None:
            _bake_mask(m)
    modules = {name: new.get_submodule(name) for pair in boundaries for name in pair}
    # spectraltools' pool (eigenvalue_cutoff with return_diag): each Spectral layer
    # with a trainable diag_end that feeds another layer gives |diag_end| and, when
    # its diag_start is trainable too, |diag_start|
    eigen = []
    for p, _ in boundaries:
        m = modules[p]
        if isinstance(m, Spectral) and m.is_diag_end_trainable:
            if m.is_diag_start_trainable:
                eigen.append(m.diag_start.detach().abs().cpu().numpy().reshape(-1))
            eigen.append(m.diag_end.detach().abs().cpu().numpy().reshape(-1))
    if not eigen:
        raise ValueError(
            "model: no prunable Spectral layer (a Spectral layer with trainable diag_end "
            "followed by a Linear or Spectral layer)"
        )
    cutoff = float(np.percentile(np.concatenate(eigen), percentile)) if percentile > 0 else 0.0
    report = PruningReport(cutoff=cutoff, skipped=skipped)
    if skipped:
        warnings.warn("spectral_pruning: " + "; ".join(skipped), RuntimeWarning, stacklevel=2)
    for p, c in boundaries:
        keep = _conditions(modules[p], modules[c], cutoff)
        if not keep.any():  # never cut a path in two: keep the strongest node
            strength = np.ones(len(keep))
            if isinstance(modules[p], Spectral):
                strength = modules[p].diag_end.detach().abs().cpu().numpy()
            keep[int(np.argmax(strength))] = True
        mask = torch.as_tensor(keep)
        _shrink_outputs(modules[p], mask)
        _shrink_inputs(modules[c], mask)
        report.kept[f"{p}->{c}"] = keep
    return (new, report) if return_report else new
