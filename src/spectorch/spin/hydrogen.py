"""Moved to :mod:`spectorch.experiments.hydrogen`; this module keeps spectorch 0.1's import path."""

import warnings

from spectorch.experiments.hydrogen import *  # noqa: F403
from spectorch.experiments.hydrogen import __all__  # noqa: F401

warnings.warn(
    "spectorch.spin.hydrogen moved to spectorch.experiments.hydrogen; "
    "the old path will be removed in a later release",
    DeprecationWarning,
    stacklevel=2,
)
