"""Extreme eigenpairs of a symmetric operator by thick-restart Lanczos.

Lanczos from one start vector finds the extreme eigenvalues first, but keeping every
vector until they converge costs memory that grows with the number of products.
Thick restart (Wu & Simon 2000) keeps the basis at ``basis_size`` vectors: when it is
full, the most wanted Ritz vectors are kept (their Rayleigh quotients on the diagonal,
their coupling to the last Lanczos vector in one extra row and column) and the
recurrence goes on from the last vector. It is mathematically the same as ARPACK's
implicit restart (scipy's ``eigsh``) but needs no shifts.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from spectorch import checks
from spectorch.linalg._lanczos import make_generator, random_start
from spectorch.linalg._operator import (
    accepts_out,
    as_operator,
    operator_device,
    operator_precision,
)

__all__ = ["WHICH", "Eigenpairs", "default_basis_size", "top_eigenpairs"]

#: which end of the spectrum: algebraically largest, smallest, or largest in magnitude
WHICH = ("largest", "smallest", "magnitude")
# DGKS: a second Gram-Schmidt pass when the first shrank the vector below this fraction
_DGKS = 0.5**0.5
# weight of the random part of a warm start, against the previous vectors' sum
_FRESH = 0.1


@dataclass(frozen=True)
class Eigenpairs:
    """``k`` eigenpairs of a symmetric operator, most wanted first.

    Attributes:
        values: eigenvalues, shape ``(k,)``: descending for ``which="largest"``,
            ascending for ``"smallest"``, by descending magnitude for ``"magnitude"``.
        vectors: unit eigenvectors as rows, shape ``(k, n)``, in the same order.
        residuals: ``‖A v − λ v‖`` per pair: measured with ``k`` more products when
            ``verify=True`` (the default), else the recurrence's estimate ``|β y_m|``.
        converged: per pair, whether its residual is at most ``tol · max|λ|``.
        products: products with the operator used, verification included.
        restarts: thick restarts made.
        basis_size: vectors the basis held at most (plus one, the next Lanczos vector).
        tol: the relative tolerance the pairs were held to.
        which: ``"largest"``, ``"smallest"`` or ``"magnitude"``.
        measured: whether :attr:`residuals` were measured (``verify=True``).
    """

    values: torch.Tensor
    vectors: torch.Tensor
    residuals: torch.Tensor
    converged: torch.Tensor
    products: int
    restarts: int
    basis_size: int
    tol: float
    which: str
    measured: bool
    unflatten: Callable[[torch.Tensor], dict[str, torch.Tensor]] | None = field(
        default=None, repr=False, compare=False
    )

    @property
    def k(self) -> int:
        return int(self.values.shape[0])

    def parameters(self, i: int) -> dict[str, torch.Tensor]:
        """Eigenvector ``i`` as a dict of parameter-shaped tensors (name → tensor), for
        an operator that knows its parameters (the curvature operators)."""
        if self.unflatten is None:
            raise ValueError(
                "this operator has no parameters (no unflatten method); use .vectors[i]"
            )
        if not 0 <= i < self.k:
            raise IndexError(f"i must be in [0, {self.k}), got {i}")
        return self.unflatten(self.vectors[i])


def top_eigenpairs(
    op: Any,
    k: int = 1,
    *,
    which: str = "largest",
    tol: float | None = None,
    basis_size: int | None = None,
    max_products: int | None = None,
    start: Any = None,
    check: int = 20,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    verify: bool = True,
    progress: bool = False,
    dtype: torch.dtype = torch.float64,
    workspace: torch.Tensor | None = None,
) -> Eigenpairs:
    """The ``k`` extreme eigenpairs of a symmetric operator, by thick-restart Lanczos.

    The basis never holds more than ``basis_size + 1`` vectors, however many products
    convergence takes; each Lanczos vector is reorthogonalised against the whole basis
    (one classical Gram-Schmidt pass, a second where the first cancelled), so no ghost
    copies appear. The convergence test runs after every product, so the run stops as
    soon as the wanted pairs have converged, not at the next restart. An eigenvalue
    of multiplicity ``r`` should come out ``r`` times, but one Krylov space holds only
    one direction of each eigenspace: once the pairs have converged, ``check`` more
    steps from a fresh random vector orthogonal to them look for a missing copy.

    Args:
        op: a symmetric operator (``shape``, ``dtype``, ``matvec``) or a square tensor.
        k: number of eigenpairs.
        which: ``"largest"`` (algebraically: the sharpness of a Hessian),
            ``"smallest"`` (its most negative curvature) or ``"magnitude"``.
        tol: a pair has converged when ``‖A v − λ v‖ <= tol · max|λ|``; default
            ``max(1e-8, 1000 · eps)`` of the operator's compute dtype (1e-8 for float64
            networks, 1.2e-4 for float32 ones, whose products carry round-off of that
            order: a measured residual cannot fall much below it).
        basis_size: vectors kept between restarts; default ``max(2k + 1, k + 20)``
            (at most ``n``). Memory is ``(basis_size + 1) · n`` numbers of ``dtype``.
        max_products: give up after this many products (a warning says which pairs
            did not converge; their residuals are reported as they are); default
            ``30 · basis_size``.
        start: a warm start: the previous run's :class:`Eigenpairs`, or vectors as
            rows ``(j, n)`` (or one ``(n,)``). The Lanczos start vector is their
            normalised sum plus ``0.1`` of a random unit vector.
        check: Lanczos steps, once the pairs have converged, from a fresh random
            vector orthogonal to them, to look for a missing copy of a repeated
            eigenvalue: a Krylov space from one vector holds one direction of each
            eigenspace, so the second copy of a double eigenvalue can otherwise be
            missed, and a less wanted value returned in its place (scipy's
            ``eigsh`` relies on round-off to find it). A copy it finds is
            converged and the look made again. ``0`` skips it; with ``k = 1`` it is
            skipped (another copy would not change the value).
        seed, generator: the random source of the start (and check) vectors.
        verify: measure the residuals with ``k`` more products (one ``matmat``)
            instead of reporting the recurrence's estimates.
        progress: show a progress bar over the products.
        dtype: floating dtype of the recurrence, the basis and the results.
        workspace: a contiguous tensor of shape ``(basis_size + 1, n)``, ``dtype``, on
            the operator's device, to keep the basis in instead of a new one per call
            (:func:`default_basis_size` gives the default ``basis_size``). Its contents
            are overwritten; the results never view it. For calls one after another on
            operators of one size (:class:`~spectorch.curvature.SharpnessTracker`
            measures with one): a new basis is fresh memory from the system, whose
            every page is a fault the first time it is written (see
            :func:`~spectorch.linalg.lanczos_block`).

    Returns:
        An :class:`Eigenpairs`.

    Raises:
        ValueError: on a bad argument (named), before any product.

    Example:
        >>> import torch
        >>> A = torch.diag(torch.arange(1.0, 101.0, dtype=torch.float64))
        >>> pairs = top_eigenpairs(A, k=3, seed=0)
        >>> pairs.values.round(decimals=8).tolist()
        [100.0, 99.0, 98.0]
        >>> bool(pairs.converged.all())
        True
    """
    op = as_operator(op)
    n = int(op.shape[0])
    k = checks.int_in("k", k, 1, n)
    which = checks.choice("which", which, WHICH)
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    if basis_size is None:
        basis_size = default_basis_size(k, n)
    else:
        basis_size = checks.int_in("basis_size", basis_size, min(k + 1, n), n)
    m = basis_size
    if tol is None:
        compute = operator_precision(op)
        tol = max(1e-8, 1000 * torch.finfo(compute).eps)
    else:
        tol = checks.interval("tol", tol, 0.0, 1.0, closed=(False, True))
    if max_products is None:
        max_products = 30 * m
    else:
        max_products = checks.int_at_least("max_products", max_products, m)
    check = checks.nonnegative_int("check", check)
    device = operator_device(op)
    if workspace is not None:
        checks.buffer("workspace", workspace, (m + 1, n), dtype, device)
    generator = make_generator(generator, seed)
    v0 = _start_vector(start, n, dtype, generator).to(device)
    unflatten = getattr(op, "unflatten", None)

    solver = _ThickRestart(op, n, m, dtype, device, generator, workspace)
    solver.V[0] = v0
    bar = tqdm(total=max_products, desc="eigenpairs", disable=not progress, leave=False)
    checking = 0  # steps left of the look for a missing copy of a repeated eigenvalue
    try:
        while True:
            solver.step()
            bar.update(1)
            theta, Y = solver.ritz()
            order = _order(theta, which)
            estimate = solver.residual_estimates(Y)
            scale = max(float(np.abs(theta).max()), np.finfo(float).tiny)
            wanted = order[:k]
            done = theta.size >= k and bool((estimate[wanted] <= tol * scale).all())
            if solver.complete or solver.products >= max_products:
                break
            if checking:
                checking = checking - 1 if done else 0
                if done and checking == 0:
                    break  # the look found nothing more wanted
                if not done:
                    checking = 0  # it did: converge the new pair
            elif done:
                if check == 0 or k == 1:
                    break  # (a missing copy cannot change the top value)
                # every wanted pair converged: look for a missing copy of a repeated
                # eigenvalue (one Krylov space holds one vector of each eigenspace)
                # with `check` steps from a fresh random vector orthogonal to them
                checking = min(check, m - k)
                solver.restart(theta, Y, order, keep=k, fresh=True)
                continue
            if solver.full:
                solver.restart(theta, Y, order, keep=min(k + (m - k) // 2, m - 1), fresh=False)
    finally:
        bar.close()
    wanted = order[:k]
    values = torch.as_tensor(theta[wanted], dtype=dtype)
    vectors = solver.vectors(Y[:, wanted])
    if verify:
        AX = _products(op, vectors, dtype)
        solver.products += k
        residuals = torch.linalg.vector_norm(AX - values.to(device)[:, None] * vectors, dim=1)
        residuals = residuals.cpu()
    else:
        residuals = torch.as_tensor(estimate[wanted], dtype=dtype)
    converged = residuals <= tol * scale
    if not bool(converged.all()):
        warnings.warn(
            f"top_eigenpairs: {int((~converged).sum())} of {k} pairs did not reach "
            f"tol · max|λ| = {tol * scale:.3g} in {solver.products} products (largest "
            f"residual {float(residuals.max()):.3g}); raise max_products or basis_size, "
            "or tol if the products are only that exact",
            RuntimeWarning,
            stacklevel=2,
        )
    return Eigenpairs(
        values=values,
        vectors=vectors,
        residuals=residuals,
        converged=converged,
        products=solver.products,
        restarts=solver.restarts,
        basis_size=m,
        tol=float(tol),
        which=which,
        measured=bool(verify),
        unflatten=unflatten,
    )


def default_basis_size(k: int, n: int) -> int:
    """The basis :func:`top_eigenpairs` keeps for ``k`` pairs of an ``n``-dimensional
    operator when not told: ``max(2k + 1, k + 20)`` vectors, at most ``n``."""
    n = checks.positive_int("n", n)
    k = checks.int_in("k", k, 1, n)
    return min(n, max(2 * k + 1, k + 20))


def _order(theta: np.ndarray, which: str) -> np.ndarray:
    """Indices of the Ritz values, most wanted first."""
    if which == "largest":
        return np.argsort(-theta, kind="stable")
    if which == "smallest":
        return np.argsort(theta, kind="stable")
    return np.argsort(-np.abs(theta), kind="stable")


def _start_vector(start: Any, n: int, dtype: torch.dtype, generator: torch.Generator):
    fresh = random_start(n, generator=generator, dtype=dtype)
    if start is None:
        return fresh
    rows = start.vectors if isinstance(start, Eigenpairs) else start
    if not isinstance(rows, torch.Tensor):
        raise TypeError(
            f"start must be an Eigenpairs, a tensor or None, got {type(start).__name__}"
        )
    rows = rows.detach().to("cpu", dtype)
    if rows.ndim == 1:
        rows = rows[None]
    if rows.ndim != 2 or rows.shape[1] != n:
        raise ValueError(
            f"start must have shape (n,) or (j, n) with n={n}, got {tuple(rows.shape)}"
        )
    norms = rows.norm(dim=1, keepdim=True)
    if not bool(torch.isfinite(rows).all()) or bool((norms == 0).any()):
        raise ValueError("start vectors must be finite and non-zero")
    v = (rows / norms).sum(dim=0)
    v = v / v.norm() + _FRESH * fresh
    return v / v.norm()


def _products(op: Any, X: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``A xᵢ`` for the rows of ``X``, one pass over the data where the operator can."""
    if hasattr(op, "matmat"):
        return op.matmat(X.T.contiguous()).to(dtype).T
    return torch.stack([op.matvec(x).to(dtype) for x in X])


class _ThickRestart:
    """The basis ``V`` (``m + 1`` rows), the projected matrix ``H`` and the products."""

    def __init__(self, op, n, m, dtype, device, generator, workspace=None) -> None:
        self.op, self.n, self.m, self.dtype = op, n, m, dtype
        self.generator = generator
        if workspace is None:
            workspace = torch.empty(m + 1, n, dtype=dtype, device=device)
        self.V = workspace
        self.H = np.zeros((m + 1, m + 1))
        self.j = 0  # basis vectors so far; V[j] is the next Lanczos vector
        self.products = 0
        self.restarts = 0
        self.complete = False  # the basis spans the whole space (m = n, no new vector)
        self.out = None
        if op.dtype == dtype and accepts_out(op):
            self.out = torch.empty(n, dtype=dtype, device=device)

    def _apply(self, v: torch.Tensor) -> torch.Tensor:
        if self.out is not None:
            w = self.op.matvec(v, out=self.out)
        else:
            w = self.op.matvec(v).to(self.dtype)
            if w.untyped_storage().data_ptr() == v.untyped_storage().data_ptr():
                w = w.clone()
        if not bool(torch.isfinite(w).all()):
            raise FloatingPointError(
                f"the operator returned NaN or inf at product {self.products + 1}"
            )
        self.products += 1
        return w

    def _orthogonalize(self, w: torch.Tensor, rows: int) -> np.ndarray:
        """Remove from ``w`` its components on ``V[:rows]`` (DGKS); returns them."""
        Q = self.V[:rows]
        total = np.zeros(rows)
        before = torch.linalg.vector_norm(w)
        for _ in range(2):
            c = torch.mv(Q, w)
            w.addmv_(Q.T, c, alpha=-1.0)
            total += c.cpu().numpy()
            after = torch.linalg.vector_norm(w)
            if not bool(after < _DGKS * before):
                break
            before = after
        return total

    @property
    def full(self) -> bool:
        return self.j == self.m

    def step(self) -> None:
        """One Lanczos step: the product of ``V[j]``, its coefficients on the basis
        (column ``j`` of ``H``) and the next vector ``V[j + 1]``."""
        j = self.j
        w = self._apply(self.V[j])
        h = self._orthogonalize(w, j + 1)
        self.H[: j + 1, j] = h
        self.H[j, : j + 1] = h
        beta = float(torch.linalg.vector_norm(w))
        scale = max(float(np.abs(h).max()), float(np.abs(np.diag(self.H)[: j + 1]).max()))
        self.j = j + 1
        if beta <= self.n * np.finfo(float).eps * max(scale, 1e-300):
            # an invariant subspace: go on from a fresh vector orthogonal to it
            if self.j == self.n:
                self.complete = True
                return
            w, beta = self._fresh(self.j), 0.0
        else:
            w = w / beta
        self.H[self.j, j] = self.H[j, self.j] = beta
        self.V[self.j] = w

    def _fresh(self, rows: int) -> torch.Tensor:
        """A random unit vector orthogonal to ``V[:rows]``."""
        v = random_start(self.n, generator=self.generator, dtype=self.dtype, device=self.V.device)
        self._orthogonalize(v, rows)
        self._orthogonalize(v, rows)
        return v / torch.linalg.vector_norm(v)

    def ritz(self) -> tuple[np.ndarray, np.ndarray]:
        """Ritz values (ascending) and vectors (columns, in the basis) of ``H[:j, :j]``."""
        H = self.H[: self.j, : self.j]
        return np.linalg.eigh((H + H.T) / 2)

    def residual_estimates(self, Y: np.ndarray) -> np.ndarray:
        """``|β_j y_j|``: the norm of ``A x − θ x`` for each Ritz pair ``(θ, x)``."""
        if self.complete:
            return np.zeros(Y.shape[1])
        return np.abs(self.H[self.j, self.j - 1] * Y[self.j - 1])

    def restart(self, theta, Y, order, keep: int, fresh: bool) -> None:
        """Keep the ``keep`` most wanted Ritz vectors and go on from the last Lanczos
        vector (``fresh``: from a random vector orthogonal to them instead)."""
        sel = order[:keep]
        beta = self.H[self.j, self.j - 1]
        coupling = beta * Y[self.j - 1, sel]
        self._rotate(Y[:, sel])
        H = np.zeros_like(self.H)
        H[np.arange(keep), np.arange(keep)] = theta[sel]
        if fresh:
            # the kept vectors are converged: their coupling to the rest is below tol
            self.V[keep] = self._fresh(keep)
        else:
            self.V[keep] = self.V[self.j]
            H[keep, :keep] = coupling
            H[:keep, keep] = coupling
        self.H = H
        self.j = keep
        self.restarts += 1

    def _rotate(self, Ysel: np.ndarray) -> None:
        """``V[:p] = Yselᵀ V[:m]`` in place, a block of columns at a time."""
        p = Ysel.shape[1]
        Yt = torch.as_tensor(Ysel.T, dtype=self.dtype, device=self.V.device)
        chunk = max(1, (64 << 20) // (8 * max(self.j, 1)))
        for c0 in range(0, self.n, chunk):
            block = self.V[: self.j, c0 : c0 + chunk]
            self.V[:p, c0 : c0 + chunk] = Yt @ block

    def vectors(self, Ysel: np.ndarray) -> torch.Tensor:
        Yt = torch.as_tensor(Ysel.T, dtype=self.dtype, device=self.V.device)
        X = Yt @ self.V[: self.j]
        return X / torch.linalg.vector_norm(X, dim=1, keepdim=True)
