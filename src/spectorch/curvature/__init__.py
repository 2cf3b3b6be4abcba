"""Matrix-free curvature operators of (model, loss, data).

Each operator follows the contract of :mod:`spectorch.linalg`: ``shape``, ``dtype``,
``matvec`` on a flat parameter vector and ``matmat`` for several vectors in one pass.
"""

from spectorch.curvature._blocks import PRESETS, parameter_blocks, select_parameters
from spectorch.curvature._objectives import BatchLoss, CausalLM, Objective, Supervised, logits_of
from spectorch.curvature._operators import (
    OPERATORS,
    CurvatureOperator,
    EmpiricalFisherOperator,
    GGNOperator,
    HessianOperator,
    make_operator,
)
from spectorch.curvature._preconditioned import PreconditionedOperator, adam_preconditioner
from spectorch.curvature._tracking import SharpnessTracker, adam_threshold, gd_threshold

__all__ = [
    "OPERATORS",
    "PRESETS",
    "BatchLoss",
    "CausalLM",
    "Objective",
    "Supervised",
    "logits_of",
    "CurvatureOperator",
    "EmpiricalFisherOperator",
    "GGNOperator",
    "HessianOperator",
    "PreconditionedOperator",
    "SharpnessTracker",
    "adam_preconditioner",
    "adam_threshold",
    "gd_threshold",
    "make_operator",
    "parameter_blocks",
    "select_parameters",
]
