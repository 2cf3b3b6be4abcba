"""Lanczos tridiagonalisation with full reorthogonalisation, several draws in one pass."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from spectorch import checks
from spectorch.linalg._basis import BASIS_MODES, BlockBasis, DiskRows
from spectorch.linalg._operator import as_operator, operator_device, operator_matmat
from spectorch.linalg._quadrature import gauss_quadrature, tridiagonal_matrix

__all__ = ["LanczosResult", "lanczos", "lanczos_block", "random_start"]

_STARTS = ("rademacher", "gaussian")


@dataclass(frozen=True)
class LanczosResult:
    """The outcome of ``m`` Lanczos steps from one start vector.

    Attributes:
        alphas: diagonal of the tridiagonal ``T``, shape ``(m,)``.
        betas: off-diagonal of ``T``, shape ``(m - 1,)``.
        basis: the orthonormal Lanczos vectors as rows, shape ``(m, n)``, so that
            ``basis @ A @ basis.T == T`` (up to round-off). With ``basis="float32"``
            they are float32; with ``basis="disk"`` the tensor is a memory map of
            :attr:`basis_file`.
        breakdown: ``True`` when the Krylov space became invariant before the
            requested number of steps (``β ≈ 0``); ``m`` is then the number of steps
            actually taken and the Ritz values are exact eigenvalues of ``A``.
    """

    alphas: torch.Tensor
    betas: torch.Tensor
    basis: torch.Tensor
    breakdown: bool
    disk: DiskRows | None = field(default=None, repr=False, compare=False)

    @property
    def basis_file(self) -> os.PathLike | None:
        """The ``.npy`` file holding the basis with ``basis="disk"``, else ``None``."""
        return None if self.disk is None else self.disk.path

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """``basis @ x`` in float64; on disk, read chunk by chunk."""
        if self.disk is not None:
            return self.disk.project(x, self.steps)
        return self.basis.to(torch.float64) @ x.to(torch.float64)

    def row(self, i: int) -> torch.Tensor:
        """Lanczos vector ``i`` in float64."""
        if self.disk is not None:
            return torch.from_numpy(self.disk.read(i, i + 1)[0])
        return self.basis[i].to(torch.float64)

    @property
    def steps(self) -> int:
        return int(self.alphas.shape[0])

    @property
    def tridiagonal(self) -> torch.Tensor:
        """The dense ``(m, m)`` tridiagonal matrix ``T``."""
        return tridiagonal_matrix(self.alphas, self.betas)

    def quadrature(self) -> tuple[np.ndarray, np.ndarray]:
        """Ritz values (ascending) and Gauss quadrature weights (they sum to one)."""
        return gauss_quadrature(self.alphas, self.betas)


def random_start(
    n: int,
    *,
    kind: str = "rademacher",
    generator: torch.Generator | None = None,
    num: int | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Unit-norm random start vector(s) of length ``n``, drawn on the CPU.

    Drawing on the CPU from an explicit generator makes a seed give the same vector on
    every device. ``num=None`` gives shape ``(n,)``, else ``(num, n)``.
    """
    if kind not in _STARTS:
        raise ValueError(f"start must be one of {list(_STARTS)} or a tensor, got {kind!r}")
    shape = (n,) if num is None else (num, n)
    if kind == "rademacher":
        v = torch.randint(0, 2, shape, generator=generator, dtype=torch.int8).to(dtype)
        v = 2 * v - 1
    else:
        v = torch.randn(shape, generator=generator, dtype=dtype)
    return v / v.norm(dim=-1, keepdim=True)


def lanczos(
    op: Any,
    steps: int,
    *,
    start: str | torch.Tensor = "rademacher",
    generator: torch.Generator | None = None,
    seed: int | None = None,
    dtype: torch.dtype = torch.float64,
    breakdown_tol: float | None = None,
    basis: str = "memory",
    basis_dir: str | os.PathLike | None = None,
    progress: bool = False,
    desc: str = "lanczos",
) -> LanczosResult:
    r"""Tridiagonalise a symmetric operator: ``Qᵀ A Q = T`` on a Krylov space.

    Each step multiplies once by ``A`` and reorthogonalises the new vector against the
    whole basis by classical Gram-Schmidt applied twice, which keeps the basis
    orthogonal to working precision (no ghost eigenvalues). The recurrence and the
    basis are kept in ``dtype`` (float64 by default) whatever the operator's own dtype.

    Args:
        op: a symmetric operator (``shape``, ``dtype``, ``matvec``) or a square tensor.
        steps: number of Lanczos steps ``m`` (1 <= m <= n).
        start: ``"rademacher"``, ``"gaussian"`` or a start vector of shape ``(n,)``
            (normalised here).
        generator: the random source for the start vector.
        seed: used to build a generator when ``generator`` is not given.
        dtype: floating dtype of the recurrence and of the basis.
        breakdown_tol: relative size of ``β`` below which the Krylov space counts as
            invariant; default ``max(1000, n) · eps(dtype)``.
        basis: where the Lanczos vectors are kept: ``"memory"`` (in ``dtype``),
            ``"float32"`` (half of float64's memory, orthogonal to about 1e-7) or
            ``"disk"`` (a ``.npy`` file in ``basis_dir``, read back chunk by chunk, so
            memory does not grow with ``steps``). The recurrence stays in ``dtype``.
        basis_dir: directory of the ``"disk"`` files; default a temporary one.
        progress: show a progress bar over the steps.
        desc: label of the progress bar.

    Returns:
        A :class:`LanczosResult`; with a breakdown it holds fewer than ``steps`` steps.

    Raises:
        ValueError: on a non-square operator, ``steps`` outside ``[1, n]``, or a start
            vector of the wrong shape or zero norm.
        FloatingPointError: when the operator returns NaN or inf.

    Example:
        >>> import torch
        >>> A = torch.diag(torch.arange(1.0, 6.0, dtype=torch.float64))
        >>> res = lanczos(A, steps=5, seed=0)
        >>> torch.linalg.eigvalsh(res.tridiagonal).round(decimals=6)
        tensor([1., 2., 3., 4., 5.], dtype=torch.float64)
    """
    op = as_operator(op)
    n = op.shape[0]
    if isinstance(start, torch.Tensor):
        if tuple(start.shape) != (n,):
            raise ValueError(f"start must have shape ({n},), got {tuple(start.shape)}")
        starts = start.reshape(1, n)
    else:
        starts = _random_starts(n, 1, start, generator, seed, dtype)
    return lanczos_block(
        op,
        steps,
        starts,
        dtype=dtype,
        breakdown_tol=breakdown_tol,
        basis=basis,
        basis_dir=basis_dir,
        progress=progress,
        desc=desc,
    )[0]


def lanczos_block(
    op: Any,
    steps: int,
    starts: torch.Tensor,
    *,
    dtype: torch.dtype = torch.float64,
    breakdown_tol: float | None = None,
    basis: str = "memory",
    basis_dir: str | os.PathLike | None = None,
    basis_names: list[str] | None = None,
    progress: bool = False,
    desc: str = "lanczos",
) -> list[LanczosResult]:
    """Run independent Lanczos recurrences from the rows of ``starts`` side by side.

    Each step multiplies all ``b`` current vectors by ``A`` in one ``matmat`` (one
    pass over the data for a curvature operator), while every recurrence keeps its own
    coefficients, basis and breakdown. See :func:`lanczos` for the arguments.

    Args:
        starts: start vectors as rows, shape ``(b, n)``; each is normalised here.
        basis_names: with ``basis="disk"``, the file of row ``d`` of ``starts`` is
            ``lanczos_vec_<basis_names[d]>.npy.partial`` in ``basis_dir``.

    Returns:
        One :class:`LanczosResult` per row of ``starts``.
    """
    op = as_operator(op)
    n = op.shape[0]
    _check_steps(steps, n)
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    if not isinstance(starts, torch.Tensor) or starts.ndim != 2 or starts.shape[1] != n:
        shape = tuple(starts.shape) if isinstance(starts, torch.Tensor) else type(starts)
        raise ValueError(f"starts must be a tensor of shape (b, {n}), got {shape}")
    if breakdown_tol is None:
        breakdown_tol = max(1000, n) * torch.finfo(dtype).eps
    if basis not in BASIS_MODES:
        raise ValueError(f"basis must be one of {list(BASIS_MODES)}, got {basis!r}")
    device = operator_device(op)
    b = starts.shape[0]
    q0 = starts.to(device=device, dtype=dtype)
    norms = q0.norm(dim=1)
    if not torch.all(torch.isfinite(norms) & (norms > 0)):
        raise ValueError("every start vector must be finite and non-zero")
    store = BlockBasis(
        b, steps, n, dtype=dtype, device=device, mode=basis, directory=basis_dir, names=basis_names
    )
    q = q0 / norms[:, None]
    q_prev = torch.zeros_like(q)
    store.set(0, q)
    alphas = torch.zeros(b, steps, dtype=dtype, device=device)
    betas = torch.zeros(b, max(steps - 1, 0), dtype=dtype, device=device)
    lengths = [steps] * b
    active = torch.ones(b, dtype=torch.bool, device=device)
    anorm = torch.zeros(b, dtype=dtype, device=device)

    bar = tqdm(total=steps, desc=desc, disable=not progress, leave=False, unit="step")
    try:
        for j in range(steps):
            if b == 1:
                w = op.matvec(q[0]).to(dtype).reshape(1, n)
            else:
                w = operator_matmat(op, q.T.contiguous()).to(dtype).T.contiguous()
            if not torch.isfinite(w).all():
                raise FloatingPointError(
                    f"the operator returned NaN or inf at Lanczos step {j + 1}; check the "
                    "model, loss and data for non-finite values, or use a wider dtype"
                )
            anorm = torch.maximum(anorm, w.norm(dim=1))
            alpha = (w * q).sum(dim=1)
            w = w - alpha[:, None] * q
            if j > 0:
                w = w - betas[:, j - 1, None] * q_prev
            # Full reorthogonalisation: classical Gram-Schmidt applied twice ("twice
            # is enough", Giraud et al. 2005) keeps Q orthonormal to working precision.
            w = store.orthogonalize(w, j + 1)
            alphas[:, j] = torch.where(active, alpha, alphas[:, j])
            bar.update(1)
            if j == steps - 1:
                break
            beta = w.norm(dim=1)
            broke = active & (beta <= breakdown_tol * anorm)
            for d in torch.nonzero(broke).flatten().tolist():
                lengths[d] = j + 1
            active = active & ~broke
            if not bool(active.any()):
                break
            # β is stored after reorthogonalisation, so T matches the basis.
            safe = torch.where(active, beta, torch.ones_like(beta))
            betas[:, j] = torch.where(active, beta, torch.zeros_like(beta))
            q_prev, q = q, torch.where(active[:, None], w / safe[:, None], torch.zeros_like(w))
            store.set(j + 1, q)
    except BaseException:
        store.discard()
        raise
    finally:
        bar.close()

    results = []
    for d in range(b):
        m = lengths[d]
        rows, disk = store.result(d, m)
        results.append(
            LanczosResult(
                alphas=alphas[d, :m].clone(),
                betas=betas[d, : m - 1].clone(),
                basis=rows,
                breakdown=m < steps,
                disk=disk,
            )
        )
    return results


def _check_steps(steps: Any, n: int) -> None:
    checks.positive_int("steps", steps)
    if steps > n:
        raise ValueError(f"steps must be at most the dimension n={n}, got {steps}")


def _random_starts(
    n: int,
    num: int,
    kind: str,
    generator: torch.Generator | None,
    seed: int | None,
    dtype: torch.dtype,
) -> torch.Tensor:
    if generator is None:
        generator = torch.Generator()
        if seed is not None:
            generator.manual_seed(int(seed))
        else:
            generator.seed()
    return random_start(n, kind=kind, generator=generator, num=num, dtype=dtype)
