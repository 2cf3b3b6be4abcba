"""Matrix-free curvature operators of (model, loss, data).

Each operator follows the contract of :mod:`spectorch.linalg`: ``shape``, ``dtype``,
``matvec`` on a flat parameter vector and ``matmat`` for several vectors in one pass.
"""

from spectorch.curvature._blocks import PRESETS, parameter_blocks, select_parameters
from spectorch.curvature._landscape import (
    DIRECTIONS,
    Landscape,
    filter_normalized,
    loss_landscape,
)
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
    "DIRECTIONS",
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
    "Landscape",
    "PreconditionedOperator",
    "SharpnessTracker",
    "adam_preconditioner",
    "adam_threshold",
    "filter_normalized",
    "gd_threshold",
    "loss_landscape",
    "make_operator",
    "parameter_blocks",
    "select_parameters",
]
