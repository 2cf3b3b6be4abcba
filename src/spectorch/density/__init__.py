"""Spectral densities by stochastic Lanczos quadrature: run draws, save, load, smooth.

Also the public names of google/spectral-density (``lanczos_alg``,
``tridiag_to_eigv``, ``tridiag_to_density``, ``eigv_to_density``).
"""

from spectorch.density._density import (
    WIDTHS,
    SpectralDensity,
    eigv_to_density,
    gaussian_mixture,
    js_distance,
    js_distances,
)
from spectorch.density._original import lanczos_alg, tridiag_to_density, tridiag_to_eigv
from spectorch.density._run import (
    MANIFEST,
    combine_densities,
    draw_generator,
    load_density,
    spectral_density,
)

__all__ = [
    # running and loading
    "MANIFEST",
    "SpectralDensity",
    "combine_densities",
    "draw_generator",
    "js_distance",
    "js_distances",
    "load_density",
    "spectral_density",
    # smoothing
    "WIDTHS",
    "gaussian_mixture",
    # google/spectral-density's names
    "eigv_to_density",
    "lanczos_alg",
    "tridiag_to_density",
    "tridiag_to_eigv",
]
