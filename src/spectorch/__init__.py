"""spectorch: study and train neural networks through the spectra of linear operators.

>>> import spectorch
>>> H = spectorch.HessianOperator(model, loss_fn, data)          # doctest: +SKIP
>>> density = spectorch.spectral_density(H, steps=90, draws=10)  # doctest: +SKIP

The names below are imported on first use (PEP 562), so ``import spectorch`` and
``spectorch --version`` do not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from spectorch._version import __version__

#: public name -> the module that defines it
_EXPORTS = {
    # curvature operators
    "OPERATORS": "spectorch.curvature",
    "EmpiricalFisherOperator": "spectorch.curvature",
    "GGNOperator": "spectorch.curvature",
    "HessianOperator": "spectorch.curvature",
    "make_operator": "spectorch.curvature",
    # Lanczos and traces
    "LanczosResult": "spectorch.linalg",
    "hutchinson_trace": "spectorch.linalg",
    "lanczos": "spectorch.linalg",
    # densities
    "SpectralDensity": "spectorch.density",
    "combine_densities": "spectorch.density",
    "load_density": "spectorch.density",
    "spectral_density": "spectorch.density",
    # google/spectral-density's names
    "eigv_to_density": "spectorch.density",
    "lanczos_alg": "spectorch.density",
    "tridiag_to_density": "spectorch.density",
    "tridiag_to_eigv": "spectorch.density",
    # training
    "fit": "spectorch.train",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'spectorch' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
