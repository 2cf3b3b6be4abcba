"""Pruning by eigenvalues: :func:`spectral_pruning` (spectraltools' name)."""

from spectorch.prune._pruning import PruningReport, prunable_boundaries, spectral_pruning

__all__ = ["PruningReport", "prunable_boundaries", "spectral_pruning"]
