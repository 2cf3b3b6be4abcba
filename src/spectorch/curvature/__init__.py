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
    "make_operator",
    "parameter_blocks",
    "select_parameters",
]
