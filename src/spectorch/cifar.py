"""Moved to :mod:`spectorch.experiments.cifar`; this module keeps spectorch 0.1's import path."""

import warnings

from spectorch.experiments.cifar import *  # noqa: F403
from spectorch.experiments.cifar import __all__  # noqa: F401

warnings.warn(
    "spectorch.cifar moved to spectorch.experiments.cifar; "
    "the old path will be removed in a later release",
    DeprecationWarning,
    stacklevel=2,
)
