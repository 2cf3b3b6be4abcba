"""The symmetric-operator contract that every algorithm in spectorch consumes.

A symmetric operator is anything with ``shape == (n, n)``, a floating ``dtype`` and
``matvec(v)`` on a flat vector of length ``n``; ``matmat(V)`` on an ``(n, k)`` block is
used when present (curvature operators batch probes through it with ``torch.func.vmap``).
Plain tensors are wrapped by :class:`MatrixOperator`, so Lanczos, traces and densities
are written once and tested on matrices whose spectrum is known exactly.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import weakref
from typing import Any, Protocol, runtime_checkable

import torch

__all__ = [
    "MatrixOperator",
    "SymmetricOperator",
    "accepts_out",
    "as_operator",
    "check_symmetric",
    "operator_device",
    "operator_matmat",
    "operator_precision",
]


@runtime_checkable
class SymmetricOperator(Protocol):
    """What spectorch's algorithms expect of a symmetric linear operator."""

    @property
    def shape(self) -> tuple[int, int]: ...

    @property
    def dtype(self) -> torch.dtype: ...

    def matvec(self, v: torch.Tensor) -> torch.Tensor: ...


class MatrixOperator:
    """A dense (or sparse) symmetric matrix seen through the operator contract.

    Args:
        matrix: square tensor of shape ``(n, n)``.

    Raises:
        ValueError: if ``matrix`` is not a square 2-D floating tensor.

    Example:
        >>> import torch
        >>> op = MatrixOperator(torch.diag(torch.tensor([1.0, 2.0, 3.0])))
        >>> op.matvec(torch.ones(3))
        tensor([1., 2., 3.])
    """

    def __init__(self, matrix: torch.Tensor) -> None:
        if not isinstance(matrix, torch.Tensor):
            raise TypeError(f"matrix must be a torch.Tensor, got {type(matrix).__name__}")
        if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
            raise ValueError(f"matrix must be square (n, n), got shape {tuple(matrix.shape)}")
        if not matrix.dtype.is_floating_point:
            raise ValueError(f"matrix must have a floating dtype, got {matrix.dtype}")
        self.matrix = matrix

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.matrix.shape[0]), int(self.matrix.shape[1]))

    @property
    def dtype(self) -> torch.dtype:
        return self.matrix.dtype

    @property
    def device(self) -> torch.device:
        return self.matrix.device

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        _check_vector(v, self.shape[0], "v")
        return (self.matrix @ v.to(self.matrix)).to(v.dtype)

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        _check_block(V, self.shape[0], "V")
        return (self.matrix @ V.to(self.matrix)).to(V.dtype)

    def __repr__(self) -> str:
        return f"MatrixOperator(shape={self.shape}, dtype={self.dtype})"


def as_operator(A: Any) -> Any:
    """Return ``A`` itself if it follows the operator contract, else wrap a tensor.

    Raises:
        TypeError: if ``A`` is neither a square tensor nor an object with ``shape``,
            ``dtype`` and ``matvec``.
        ValueError: if the operator is not square.
    """
    if isinstance(A, torch.Tensor):
        return MatrixOperator(A)
    missing = [name for name in ("shape", "dtype", "matvec") if not hasattr(A, name)]
    if missing:
        raise TypeError(
            "expected a square torch.Tensor or an operator with shape, dtype and matvec; "
            f"{type(A).__name__} lacks {', '.join(missing)}"
        )
    shape = tuple(A.shape)
    if len(shape) != 2 or shape[0] != shape[1] or int(shape[0]) < 1:
        raise ValueError(f"the operator must be square (n, n) with n >= 1, got shape {shape}")
    return A


def operator_device(op: Any) -> torch.device:
    """The device an operator lives on (``cpu`` when it does not say)."""
    device = getattr(op, "device", None)
    return torch.device(device) if device is not None else torch.device("cpu")


def operator_precision(op: Any) -> torch.dtype:
    """The dtype that bounds an operator's products' accuracy: its ``compute_dtype``
    when it has one (a float32 network whose products are returned in float64), else
    its ``dtype``; float64 for a dtype that is not floating."""
    dtype = getattr(op, "compute_dtype", op.dtype)
    return dtype if dtype.is_floating_point else torch.float64


def accepts_out(op: Any, block: bool = False) -> bool:
    """Whether ``op.matvec`` (with ``block``, also ``op.matmat``) takes an ``out=``
    tensor to write the product into, as spectorch's curvature operators do."""
    names = ("matvec", "matmat") if block else ("matvec",)
    for name in names:
        method = getattr(op, name, None)
        if method is None or not _takes_out(getattr(method, "__func__", method)):
            return False
    return True


# what _takes_out found per function: reading a signature costs 15 µs in a hot loop,
# at every Lanczos run; weak keys, so a function (and what its closure holds) is not
# kept alive by this record
_OUT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _takes_out(func: Any) -> bool:
    try:
        return _OUT[func]
    except (KeyError, TypeError):  # TypeError: not weakly referenceable, not hashable
        pass
    try:
        found = "out" in inspect.signature(func).parameters
    except (TypeError, ValueError):
        found = False
    with contextlib.suppress(TypeError):
        _OUT[func] = found
    return found


def operator_matmat(op: Any, V: torch.Tensor) -> torch.Tensor:
    """``op @ V`` for an ``(n, k)`` block: one batched pass when the operator can."""
    if hasattr(op, "matmat"):
        return op.matmat(V)
    return torch.stack([op.matvec(V[:, j]) for j in range(V.shape[1])], dim=1)


def check_symmetric(
    op: Any,
    *,
    rtol: float | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> float:
    """Probe an operator for symmetry with two random vectors (two products).

    Computes ``|uᵀ(Av) − vᵀ(Au)| / (‖Au‖‖v‖ + ‖Av‖‖u‖)``; a symmetric operator gives
    round-off only. The default tolerance is ``sqrt(eps)`` of the operator's dtype (of
    its ``compute_dtype`` when it has one):
    products of a float32 network agree to about that, a non-symmetric operator
    misses by orders of magnitude.

    Returns:
        The measured relative asymmetry.

    Raises:
        ValueError: if the asymmetry exceeds ``rtol``.
    """
    op = as_operator(op)
    n = op.shape[0]
    if rtol is None:
        # products computed in a narrower dtype than they are returned in (a float32
        # network with float64 accumulation) are only that accurate
        rtol = math.sqrt(torch.finfo(operator_precision(op)).eps)
    if generator is None:
        generator = torch.Generator().manual_seed(0x5EC7)
    U = torch.randn(n, 2, generator=generator, dtype=dtype).to(operator_device(op))
    AU = operator_matmat(op, U).to(dtype)
    if not torch.isfinite(AU).all():
        raise FloatingPointError(
            "the operator returned NaN or inf for a random probe; check the model, "
            "loss and data for non-finite values"
        )
    u, v = U[:, 0], U[:, 1]
    Au, Av = AU[:, 0], AU[:, 1]
    scale = (Au.norm() * v.norm() + Av.norm() * u.norm()).item()
    if scale == 0.0:
        return 0.0
    asym = abs((u @ Av - v @ Au).item()) / scale
    if asym > rtol:
        raise ValueError(
            f"the operator is not symmetric: uᵀAv and vᵀAu differ by {asym:.2e} relative "
            f"(tolerance {rtol:.1e}); Lanczos needs a symmetric operator"
        )
    return asym


def _check_vector(v: Any, n: int, name: str) -> None:
    if not isinstance(v, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(v).__name__}")
    if tuple(v.shape) != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {tuple(v.shape)}")


def _check_block(V: Any, n: int, name: str) -> None:
    if not isinstance(V, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(V).__name__}")
    if V.ndim != 2 or V.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n}, k), got {tuple(V.shape)}")
