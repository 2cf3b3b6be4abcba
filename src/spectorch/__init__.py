"""spectorch: study and train neural networks through the spectra of linear operators.

>>> import spectorch
>>> H = spectorch.HessianOperator(model, loss_fn, data)          # doctest: +SKIP
>>> density = spectorch.spectral_density(H, steps=90, draws=10)  # doctest: +SKIP
"""

from spectorch._version import __version__
from spectorch.curvature import (
    OPERATORS,
    EmpiricalFisherOperator,
    GGNOperator,
    HessianOperator,
    make_operator,
)
from spectorch.density import (
    SpectralDensity,
    combine_densities,
    eigv_to_density,
    lanczos_alg,
    load_density,
    spectral_density,
    tridiag_to_density,
    tridiag_to_eigv,
)
from spectorch.linalg import LanczosResult, hutchinson_trace, lanczos
from spectorch.train import fit

__all__ = [
    "__version__",
    # curvature operators
    "OPERATORS",
    "EmpiricalFisherOperator",
    "GGNOperator",
    "HessianOperator",
    "make_operator",
    # Lanczos and traces
    "LanczosResult",
    "hutchinson_trace",
    "lanczos",
    # densities
    "SpectralDensity",
    "combine_densities",
    "load_density",
    "spectral_density",
    # google/spectral-density's names
    "eigv_to_density",
    "lanczos_alg",
    "tridiag_to_density",
    "tridiag_to_eigv",
    # training
    "fit",
]
