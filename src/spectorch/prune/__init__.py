"""Pruning by eigenvalues and eigenvalue-only training (spectraltools' names):
:func:`spectral_pruning`, :func:`spectral_pretrain`, :func:`spectral_distiller`
(0.4.1: a smaller network), and :func:`prune_percentile`, :func:`metric_based_pruning`,
:func:`original_model` (1.x: nodes masked in place)."""

from spectorch.prune._masking import metric_based_pruning, original_model, prune_percentile
from spectorch.prune._pretrain import (
    eigenvalues_only,
    make_evaluate,
    make_fit,
    spectral_distiller,
    spectral_pretrain,
)
from spectorch.prune._pruning import PruningReport, prunable_boundaries, spectral_pruning

__all__ = [
    "PruningReport",
    "eigenvalues_only",
    "make_evaluate",
    "make_fit",
    "metric_based_pruning",
    "original_model",
    "prunable_boundaries",
    "prune_percentile",
    "spectral_distiller",
    "spectral_pretrain",
    "spectral_pruning",
]


def __getattr__(name: str):
    if name == "pruning_demo":  # spectorch 0.1's name; the experiment lives elsewhere now
        import warnings

        from spectorch.experiments.pruning import pruning_demo

        warnings.warn(
            "spectorch.prune.pruning_demo moved to spectorch.experiments.pruning",
            DeprecationWarning,
            stacklevel=2,
        )
        return pruning_demo
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
