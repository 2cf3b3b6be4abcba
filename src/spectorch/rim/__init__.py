"""Recurrent inference machines (Putzky & Welling 2017): learned iterative solvers for
inverse problems ``y = F(x) + noise``.

* :class:`RIM`: the machine, with ``fit``, ``predict`` and ``from_checkpoint``.
* Backbones: :class:`Hourglass`, :class:`Unet`, :class:`ConvRNN` (Putzky's cell) and
  their :class:`ConvGRU` (:class:`GRU`: the same with torch-rim's names).
* :mod:`spectorch.rim.problems`: linear-Gaussian problems on real images (digits,
  scikit-image patches), their datasets and the classical baselines.

The experiments built on them (``spectorch rim train``) are in
:mod:`spectorch.experiments.rim`.
"""

from spectorch.rim._backbones import (
    BACKBONES,
    GRU,
    ConvGRU,
    ConvRNN,
    GRUBlock,
    Hourglass,
    Unet,
    build_backbone,
)
from spectorch.rim._rim import LINKS, PREPROCESSING, RIM
from spectorch.rim.problems import FeedForward, InverseProblemDataset, LinearGaussian

__all__ = [
    "BACKBONES",
    "LINKS",
    "PREPROCESSING",
    "RIM",
    "ConvGRU",
    "ConvRNN",
    "FeedForward",
    "GRU",
    "GRUBlock",
    "Hourglass",
    "InverseProblemDataset",
    "LinearGaussian",
    "Unet",
    "build_backbone",
]
