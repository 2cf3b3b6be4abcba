"""Pruning by eigenvalues and eigenvalue-only training (spectraltools' names):
:func:`spectral_pruning`, :func:`spectral_pretrain`, :func:`spectral_distiller`."""

from spectorch.prune._demo import pruning_demo
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
    "prunable_boundaries",
    "pruning_demo",
    "spectral_distiller",
    "spectral_pretrain",
    "spectral_pruning",
]
