"""Generic matrix-free numerics: no knowledge of networks.

Anything with ``shape``, ``dtype`` and ``matvec`` (or a square tensor) can be
tridiagonalised, traced and turned into a spectral density.
"""

from spectorch.linalg._basis import BASIS_MODES
from spectorch.linalg._eigenpairs import WHICH, Eigenpairs, default_basis_size, top_eigenpairs
from spectorch.linalg._lanczos import (
    REORTH_MODES,
    LanczosResult,
    lanczos,
    lanczos_block,
    rademacher_signs,
    random_start,
    resolve_basis,
    resolve_reorth,
)
from spectorch.linalg._operator import (
    MatrixOperator,
    SymmetricOperator,
    accepts_out,
    as_operator,
    check_symmetric,
    operator_device,
    operator_matmat,
)
from spectorch.linalg._quadrature import gauss_quadrature, tridiagonal_matrix
from spectorch.linalg._trace import TraceEstimate, deflated_trace_sample, hutchinson_trace

__all__ = [
    # the operator contract
    "MatrixOperator",
    "SymmetricOperator",
    "accepts_out",
    "as_operator",
    "check_symmetric",
    "operator_device",
    "operator_matmat",
    # Lanczos
    "BASIS_MODES",
    "REORTH_MODES",
    "LanczosResult",
    "lanczos",
    "lanczos_block",
    "rademacher_signs",
    "random_start",
    "resolve_basis",
    "resolve_reorth",
    # extreme eigenpairs
    "WHICH",
    "Eigenpairs",
    "default_basis_size",
    "top_eigenpairs",
    # quadrature and traces
    "TraceEstimate",
    "deflated_trace_sample",
    "gauss_quadrature",
    "hutchinson_trace",
    "tridiagonal_matrix",
]
