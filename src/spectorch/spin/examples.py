"""Moved to :mod:`spectorch.experiments.kernel`; this module keeps spectorch 0.1's import path."""

import warnings

from spectorch.experiments.kernel import *  # noqa: F403
from spectorch.experiments.kernel import __all__  # noqa: F401

warnings.warn(
    "spectorch.spin.examples moved to spectorch.experiments.kernel; "
    "the old path will be removed in a later release",
    DeprecationWarning,
    stacklevel=2,
)
