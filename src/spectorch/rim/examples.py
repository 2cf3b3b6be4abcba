"""Moved to :mod:`spectorch.experiments.rim`; this module keeps spectorch 0.1's import path."""

import warnings

from spectorch.experiments.rim import *  # noqa: F403
from spectorch.experiments.rim import __all__  # noqa: F401

warnings.warn(
    "spectorch.rim.examples moved to spectorch.experiments.rim; "
    "the old path will be removed in a later release",
    DeprecationWarning,
    stacklevel=2,
)
