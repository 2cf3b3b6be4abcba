"""Spectral inference networks: learn the eigenfunctions of kernel and differential
operators with SpIN (Pfau et al., 2019), NeuralEF (Deng et al., 2022) or NeuralSVD
(Ryu et al., 2024), behind one interface.

>>> from spectorch import spin
>>> H = -spin.LaplacianOperator() + spin.DiagonalOperator(lambda x: -1 / x.norm(dim=1))
>>> net = spin.SpectralNetwork(H, model, sampler, decay=0.01)   # doctest: +SKIP
>>> stats = net.train(optim, 10_000, logging_config, stats_hooks)  # doctest: +SKIP
"""

from spectorch.spin import util
from spectorch.spin._network import SpectralNetwork
from spectorch.spin._objectives import NESTINGS, OBJECTIVES, cholesky
from spectorch.spin._operators import (
    AddOperator,
    DiagonalOperator,
    ExactLaplacianOperator,
    KernelOperator,
    LaplacianOperator,
    LinearOperator,
    ScaleOperator,
    SlownessOperator,
    covariance,
)

__all__ = [
    "AddOperator",
    "DiagonalOperator",
    "ExactLaplacianOperator",
    "KernelOperator",
    "LaplacianOperator",
    "LinearOperator",
    "NESTINGS",
    "OBJECTIVES",
    "ScaleOperator",
    "SlownessOperator",
    "SpectralNetwork",
    "cholesky",
    "covariance",
    "util",
]
