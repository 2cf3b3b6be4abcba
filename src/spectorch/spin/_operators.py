"""Linear operators on functions, estimated from a batch of samples.

An operator ``T`` turns a batch ``x`` and the network's outputs ``u = f(x)`` (``n x k``)
into ``Pi = E[u (T u)^T]`` (``k x k``), the matrix whose whitened diagonal a spectral
inference network optimises. Operators compose with ``+``, ``-`` and scalar ``*`` to
any depth; a sum is evaluated on one batch and one forward pass of the network.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from spectorch import checks

__all__ = [
    "AddOperator",
    "DiagonalOperator",
    "ExactLaplacianOperator",
    "KernelOperator",
    "LaplacianOperator",
    "LinearOperator",
    "ScaleOperator",
    "SlownessOperator",
    "covariance",
]


class _Covariance(torch.autograd.Function):
    """``x^T diag(w) y / n`` with the original SpIN's gradient.

    The backward pass returns ``w (y G) / n`` for ``x`` and ``w (x G) / n`` for ``y``
    (``G`` the incoming gradient), not ``y G^T``: the gradient of entry ``(i, j)``
    reaches column ``j`` of both arguments only. With SpIN's upper-triangular ``G``
    this is what makes column ``j`` see columns ``i <= j`` only (the masked gradient).
    """

    @staticmethod
    def forward(x: Tensor, y: Tensor, w: Tensor | None) -> Tensor:  # type: ignore[override]
        n = x.shape[0]
        if w is None:
            return x.T @ y / n
        return (x * w[:, None]).T @ y / n

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        x, y, w = inputs
        ctx.save_for_backward(x, y, w)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:  # type: ignore[override]
        x, y, w = ctx.saved_tensors
        n = x.shape[0]
        scale = 1.0 / n if w is None else w[:, None] / n
        gx = (y @ grad) * scale if ctx.needs_input_grad[0] else None
        gy = (x @ grad) * scale if ctx.needs_input_grad[1] else None
        return gx, gy, None


def covariance(
    x: Tensor, y: Tensor, weights: Tensor | None = None, *, masked: bool = True
) -> Tensor:
    """``E[x y^T] = x^T diag(weights) y / n`` for batches ``x`` (``n x k``), ``y`` (``n x k``).

    With ``masked=True`` the gradient is the original SpIN's (see :class:`_Covariance`);
    with ``masked=False`` it is the true gradient.
    """
    if masked:
        return _Covariance.apply(x, y, weights)
    n = x.shape[0]
    if weights is None:
        return x.T @ y / n
    return (x * weights[:, None]).T @ y / n


class Batch:
    """One batch as the operators see it: inputs, importance weights, outputs.

    Attributes:
        x: the inputs, ``n x ...``.
        weights: ``p(x)/q(x)`` per sample when ``x`` was drawn from ``q`` instead of the
            measure ``p`` of the eigenproblem, else ``None``.
        u: ``f(x)``, ``n x k``: the same tensor for every operator in a sum.
        masked: whether covariances carry SpIN's masked gradient.
    """

    def __init__(
        self,
        f: Callable[[Tensor], Tensor],
        x: Tensor,
        weights: Tensor | None = None,
        *,
        masked: bool = True,
    ) -> None:
        self.f = f
        self.x = x
        self.weights = weights
        self.masked = masked
        self.u = f(x)
        if self.u.ndim != 2 or self.u.shape[0] != x.shape[0]:
            raise ValueError(
                f"network: expected outputs of shape (batch, k) = ({x.shape[0]}, k), "
                f"got {tuple(self.u.shape)}"
            )
        self._cache: dict[Any, Tensor] = {}

    def cov(self, a: Tensor, b: Tensor, weights: Tensor | str | None = "batch") -> Tensor:
        w = self.weights if isinstance(weights, str) else weights
        return covariance(a, b, w, masked=self.masked)

    def cached(self, key: Any, compute: Callable[[], Tensor]) -> Tensor:
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]


class LinearOperator:
    """Base class: ``pi(batch)`` returns ``E[u (T u)^T]``; ``+``, ``-``, ``*`` compose."""

    def pi(self, batch: Batch) -> Tensor:
        raise NotImplementedError

    def __add__(self, other: LinearOperator) -> LinearOperator:
        if not isinstance(other, LinearOperator):
            return NotImplemented
        return AddOperator(self, other)

    def __sub__(self, other: LinearOperator) -> LinearOperator:
        if not isinstance(other, LinearOperator):
            return NotImplemented
        return AddOperator(self, ScaleOperator(-1.0, other))

    def __mul__(self, c: float) -> LinearOperator:
        if isinstance(c, bool) or not isinstance(c, numbers.Real):
            return NotImplemented
        return ScaleOperator(float(c), self)

    __rmul__ = __mul__

    def __truediv__(self, c: float) -> LinearOperator:
        if isinstance(c, bool) or not isinstance(c, numbers.Real):
            return NotImplemented
        return ScaleOperator(1.0 / float(c), self)

    def __neg__(self) -> LinearOperator:
        return ScaleOperator(-1.0, self)

    def __pos__(self) -> LinearOperator:
        return self


class AddOperator(LinearOperator):
    """``x + y``: both evaluated on the same batch and network outputs."""

    def __init__(self, x: LinearOperator, y: LinearOperator) -> None:
        self.x, self.y = x, y

    def pi(self, batch: Batch) -> Tensor:
        return self.x.pi(batch) + self.y.pi(batch)

    def __repr__(self) -> str:
        return f"({self.x!r} + {self.y!r})"


class ScaleOperator(LinearOperator):
    """``c * x`` for a real number ``c``."""

    def __init__(self, c: float, x: LinearOperator) -> None:
        if not isinstance(x, LinearOperator):
            raise TypeError(f"x: expected a LinearOperator, got {type(x).__name__}")
        self.c, self.x = float(c), x

    def pi(self, batch: Batch) -> Tensor:
        return self.c * self.x.pi(batch)

    def __repr__(self) -> str:
        return f"{self.c:g} * {self.x!r}"


def _flat_inputs(x: Tensor, what: str) -> None:
    if x.ndim != 2:
        raise ValueError(f"{what}: expected inputs of shape (batch, dim), got {tuple(x.shape)}")


class ExactLaplacianOperator(LinearOperator):
    """``Delta u``: the trace of each output's Hessian in ``x``, by ``torch.func``.

    Each second derivative ``d^2 u / dx_i^2`` is a forward-over-forward ``jvp`` along
    ``e_i`` for the whole batch at once, and ``vmap`` runs all ``dim`` directions
    together: no Python loop over dimensions, outputs or samples, and only the
    Hessian's diagonal is formed, not the full per-sample Hessian. It is differentiable
    in the network's
    parameters. Inputs must be ``(batch, dim)`` and the network must treat samples
    independently (no batch normalisation).
    """

    def laplacian(self, batch: Batch) -> Tensor:
        def compute() -> Tensor:
            from torch.func import jvp, vmap

            x = batch.x
            _flat_inputs(x, "ExactLaplacianOperator")
            n, d = x.shape
            f = batch.f

            def second(direction: Tensor) -> Tensor:
                t = direction.expand(n, d)
                return jvp(lambda z: jvp(f, (z,), (t,))[1], (x,), (t,))[1]

            eye = torch.eye(d, dtype=x.dtype, device=x.device)
            return vmap(second)(eye).sum(0)

        return batch.cached(("exact_laplacian",), compute)

    def pi(self, batch: Batch) -> Tensor:
        return batch.cov(batch.u, self.laplacian(batch))

    def __repr__(self) -> str:
        return "ExactLaplacianOperator()"


class LaplacianOperator(LinearOperator):
    """The Laplacian: exact (``eps=None`` or ``0``, :class:`ExactLaplacianOperator`) or
    by central finite differences with step ``eps``, one forward pass over all
    ``2 * dim`` shifted copies of the batch.
    """

    def __new__(cls, eps: float | None = None) -> LinearOperator:  # type: ignore[misc]
        if cls is LaplacianOperator and (eps is None or eps == 0):
            return ExactLaplacianOperator()
        return super().__new__(cls)

    def __init__(self, eps: float | None = None) -> None:
        checks.positive("eps", eps)
        self.eps = float(eps)

    def laplacian(self, batch: Batch) -> Tensor:
        def compute() -> Tensor:
            x = batch.x
            _flat_inputs(x, "LaplacianOperator")
            n, d = x.shape
            shifts = self.eps * torch.eye(d, dtype=x.dtype, device=x.device)
            shifted = torch.cat([x[None] + shifts[:, None], x[None] - shifts[:, None]])
            fs = batch.f(shifted.reshape(2 * d * n, d)).reshape(2 * d, n, -1)
            return (fs.sum(0) - 2 * d * batch.u) / self.eps**2

        return batch.cached(("fd_laplacian", self.eps), compute)

    def pi(self, batch: Batch) -> Tensor:
        return batch.cov(batch.u, self.laplacian(batch))

    def __repr__(self) -> str:
        return f"LaplacianOperator(eps={self.eps:g})"


class DiagonalOperator(LinearOperator):
    """Multiplication by a function: ``(T u)(x) = v(x) u(x)`` (a potential).

    Args:
        fn: ``v``; maps the batch ``x`` to ``n`` or ``n x 1`` values.
    """

    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        if not callable(fn):
            raise TypeError(f"fn: expected a callable x -> v(x), got {type(fn).__name__}")
        self.fn = fn

    def pi(self, batch: Batch) -> Tensor:
        v = self.fn(batch.x)
        n = batch.x.shape[0]
        if v.shape not in ((n,), (n, 1)):
            raise ValueError(
                f"DiagonalOperator: fn(x) must have shape ({n},) or ({n}, 1), got {tuple(v.shape)}"
            )
        return batch.cov(batch.u, v.reshape(n, 1) * batch.u)

    def __repr__(self) -> str:
        return f"DiagonalOperator({getattr(self.fn, '__name__', 'fn')})"


class KernelOperator(LinearOperator):
    """The integral operator of a symmetric kernel, ``(T u)(x) = E_y[k(x, y) u(y)]``.

    ``Pi`` comes from two halves of the batch, so no sample meets itself.

    Args:
        kernel: ``kernel(x, y)`` for paired rows ``x``, ``y`` (``m x d`` each),
            returning ``m`` or ``m x 1`` values, as in the original.
        pairs: ``"matched"`` pairs row ``i`` of one half with row ``i`` of the other
            (the original); ``"all"`` uses every cross pair, ``m^2`` kernel values
            for a lower-variance estimate.
    """

    def __init__(self, kernel: Callable[[Tensor, Tensor], Tensor], pairs: str = "matched") -> None:
        if not callable(kernel):
            raise TypeError(
                f"kernel: expected a callable (x, y) -> k(x, y), got {type(kernel).__name__}"
            )
        if pairs not in ("matched", "all"):
            raise ValueError(f"pairs: expected 'matched' or 'all', got {pairs!r}")
        self.kernel = kernel
        self.pairs = pairs

    def _values(self, x: Tensor, y: Tensor, m: int) -> Tensor:
        k = self.kernel(x, y)
        if k.shape not in ((m,), (m, 1)):
            raise ValueError(
                f"KernelOperator: kernel(x, y) must have shape ({m},) or ({m}, 1), "
                f"got {tuple(k.shape)}"
            )
        return k.reshape(m)

    def pi(self, batch: Batch) -> Tensor:
        n = batch.x.shape[0]
        if n < 2 or n % 2:
            raise ValueError(f"KernelOperator: the batch size must be even and at least 2, got {n}")
        h = n // 2
        x1, x2 = batch.x[:h], batch.x[h:]
        u1, u2 = batch.u[:h], batch.u[h:]
        w1 = w2 = None
        if batch.weights is not None:
            w1, w2 = batch.weights[:h], batch.weights[h:]
        if self.pairs == "matched":
            kv = self._values(x1, x2, h)
            if w2 is not None:
                kv = kv * w2
            return batch.cov(u1, kv[:, None] * u2, w1)
        rows = x1.repeat_interleave(h, dim=0)
        cols = x2.repeat(h, *([1] * (x2.ndim - 1)))
        kmat = self._values(rows, cols, h * h).reshape(h, h)
        if w2 is not None:
            kmat = kmat * w2[None, :]
        return batch.cov(u1, kmat @ u2 / h, w1)

    def __repr__(self) -> str:
        name = getattr(self.kernel, "__qualname__", type(self.kernel).__qualname__)
        return f"KernelOperator({name}, pairs={self.pairs!r})"


class SlownessOperator(LinearOperator):
    """Slow feature analysis: ``Pi = E[(u_t - u_{t+1})(u_t - u_{t+1})^T]`` over
    consecutive samples of the batch (row ``t`` and row ``t + 1``)."""

    def pi(self, batch: Batch) -> Tensor:
        if batch.x.shape[0] < 2:
            raise ValueError("SlownessOperator: the batch needs at least 2 consecutive samples")
        if batch.weights is not None:
            raise ValueError("SlownessOperator: importance weights are not supported")
        diff = batch.u[:-1] - batch.u[1:]
        return batch.cov(diff, diff, None)

    def __repr__(self) -> str:
        return "SlownessOperator()"
