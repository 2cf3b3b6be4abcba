"""Moved to :mod:`spectorch.experiments.atari`; this module keeps spectorch 0.1's import path."""

import warnings

from spectorch.experiments.atari import *  # noqa: F403
from spectorch.experiments.atari import __all__  # noqa: F401

warnings.warn(
    "spectorch.spin.atari moved to spectorch.experiments.atari; "
    "the old path will be removed in a later release",
    DeprecationWarning,
    stacklevel=2,
)
