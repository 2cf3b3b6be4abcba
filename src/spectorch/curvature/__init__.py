"""Matrix-free curvature operators of (model, loss, data).

Each operator follows the contract of :mod:`spectorch.linalg`: ``shape``, ``dtype``,
``matvec`` on a flat parameter vector and ``matmat`` for several vectors in one pass.
"""

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
    "CurvatureOperator",
    "EmpiricalFisherOperator",
    "GGNOperator",
    "HessianOperator",
    "make_operator",
]
