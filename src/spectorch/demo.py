"""Moved to :mod:`spectorch.experiments.digits`; this module keeps spectorch 0.1's import path."""

import warnings

from spectorch.experiments.digits import *  # noqa: F403
from spectorch.experiments.digits import __all__  # noqa: F401

warnings.warn(
    "spectorch.demo moved to spectorch.experiments.digits; "
    "the old path will be removed in a later release",
    DeprecationWarning,
    stacklevel=2,
)
