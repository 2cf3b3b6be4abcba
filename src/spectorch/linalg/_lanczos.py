"""Lanczos tridiagonalisation with full reorthogonalisation, several draws in one pass."""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from spectorch import checks
from spectorch.linalg._basis import BASIS_MODES, BlockBasis, DiskRows
from spectorch.linalg._operator import (
    accepts_out,
    as_operator,
    operator_device,
    operator_matmat,
    operator_precision,
)
from spectorch.linalg._quadrature import gauss_quadrature, tridiagonal_matrix

__all__ = [
    "REORTH_MODES",
    "LanczosResult",
    "lanczos",
    "lanczos_block",
    "rademacher_signs",
    "random_start",
    "resolve_basis",
    "resolve_reorth",
]

_STARTS = ("rademacher", "gaussian")
#: how the Lanczos vectors are kept orthogonal: against the whole basis at every step
#: ("full"), only when Simon's estimate of the loss of orthogonality says so
#: ("partial"), or "auto": partial on an operator that declares its compute_dtype,
#: else full (:func:`resolve_reorth`)
REORTH_MODES = ("auto", "full", "partial")


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
        reorth_passes: Gram-Schmidt passes this recurrence made: about ``m`` with
            ``reorth="full"`` (a second pass only where the first cancelled), fewer
            with ``reorth="partial"``.
        reorth_rows: basis rows those passes read (each is read twice per pass): about
            ``m²/2`` with ``reorth="full"``, far fewer with ``reorth="partial"``, which
            reads only the rows the new vector has lost orthogonality to.
    """

    alphas: torch.Tensor
    betas: torch.Tensor
    basis: torch.Tensor
    breakdown: bool
    reorth_passes: int = 0
    reorth_rows: int = 0
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
    device: torch.device | str | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Unit-norm random start vector(s) of length ``n``, drawn on the CPU, on ``device``
    (the CPU by default).

    Drawing on the CPU from an explicit generator makes a seed give the same vector on
    every device. ``num=None`` gives shape ``(n,)``, else ``(num, n)``, the rows drawn
    one after another. A Rademacher vector's signs are the bits of 32-bit random words
    (:func:`rademacher_signs`), so the CPU draws one number per 32 entries and only
    their four bytes travel to ``device``, where each is looked up as its eight
    entries: at 10⁸ entries a draw of one number per entry took about a second on
    the CPU, several GPU products. Gaussian starts are drawn in full on the CPU.

    ``out``: a contiguous tensor of the result's shape, ``dtype`` and device to write
    the vector(s) into (a Lanczos basis row, so that the start is not one more
    full-length vector: at 10⁸ entries fresh memory costs more than the draw).
    """
    _check_start(kind)
    checks.positive_int("n", n)
    rows = 1 if num is None else checks.positive_int("num", num)
    device = torch.device("cpu") if device is None else torch.device(device)
    shape = (n,) if num is None else (rows, n)
    if out is not None:
        checks.buffer("out", out, shape, dtype, device)
    v = torch.empty(rows, n, dtype=dtype, device=device) if out is None else out.view(rows, n)
    if kind == "rademacher" and dtype == torch.float64:
        # every entry is ±1/√n: a ±1 vector's norm is √n exactly in float64 (its
        # square is a sum of integers), so this is the signs divided by their norm, bit
        # for bit, looked up byte by byte: eight entries per random byte
        scale = torch.tensor([-1.0, 1.0], dtype=dtype, device=device) / math.sqrt(n)
        table = scale[_BYTE_BITS.to(device)]  # (256, 8): byte value -> its 8 entries
        full, rem = divmod(n, 8)
        for row in v:  # the rows' words one after another, as one draw of them all
            octets = _octets(-(-n // _WORD_BITS), generator, device)
            torch.index_select(table, 0, octets[:full], out=row[: 8 * full].view(full, 8))
            if rem:
                row[8 * full :] = table[octets[full]][:rem]
        return v[0] if num is None else v
    if kind == "rademacher":
        for row in v:
            row.copy_(next(rademacher_signs([n], generator, device=device)))
    else:
        v.copy_(torch.randn(rows, n, generator=generator, dtype=dtype))
    v = v.div_(v.norm(dim=-1, keepdim=True))
    return v[0] if num is None else v


#: random bits per number drawn for a Rademacher vector
_WORD_BITS = 32


def rademacher_signs(
    sizes: list[int], generator: torch.Generator | None, *, device: Any = None
) -> Any:
    """The entries (``±1``, int8, on ``device``) of one Rademacher vector of length
    ``sum(sizes)``, yielded in pieces of those sizes, which :func:`random_start`
    normalises.

    Entry ``i`` is ``2 b − 1`` for the bit ``i mod 32`` (least significant first) of
    word ``⌊i / 32⌋``, the words drawn on the CPU by ``torch.randint(0, 2**32)`` from
    ``generator``. A piece draws only the words it needs beyond the bits left over from
    the previous one, so the pieces of a vector are the same however it is cut (one
    parameter at a time, as :class:`~spectorch.sharded.ShardedHessian` draws it) and
    leave the generator where one draw of the whole vector would.

    Raises:
        ValueError: if ``sizes`` is not a sequence of non-negative ints (checked
            before anything is drawn).
    """
    if isinstance(sizes, (str, bytes)) or not hasattr(sizes, "__iter__"):
        raise ValueError(f"sizes must be a sequence of ints, got {type(sizes).__name__}")
    sizes = [checks.nonnegative_int("sizes entries", x) for x in sizes]
    device = torch.device("cpu") if device is None else torch.device(device)
    return (bits.to(torch.int8).mul_(2).sub_(1) for bits in _bits(sizes, generator, device))


#: bit ``k`` (least significant first) of every byte value, ``(256, 8)`` int64
_BYTE_BITS = (torch.arange(256).unsqueeze(-1) >> torch.arange(8)) & 1


def _octets(count: int, generator: torch.Generator | None, device: torch.device) -> Any:
    """The bytes of ``count`` random 32-bit words drawn on the CPU, little end first,
    on ``device``, as int32 (an index for a lookup)."""
    # torch.randint(0, 2**32)'s words are the low 32 bits of one 64-bit draw each;
    # random_() on int64 keeps the low 63 of the same draw without randint's
    # division (about a tenth faster), and only the low four bytes are kept
    words = torch.empty(count, dtype=torch.int64).random_(generator=generator)
    if sys.byteorder == "little":
        octets = words.view(torch.uint8).view(count, 8)[:, :4]
    else:
        octets = ((words.unsqueeze(-1) >> torch.tensor([0, 8, 16, 24])) & 255).to(torch.uint8)
    # a byte per four entries travels (not the words' eight), an index on arrival
    return octets.to(device).to(torch.int32).view(-1)


def _bits(sizes: list[int], generator: torch.Generator | None, device: torch.device) -> Any:
    """:func:`rademacher_signs`'s bits (``True`` for ``+1``), as bool pieces on
    ``device``."""
    table = _BYTE_BITS.to(device=device, dtype=torch.bool)
    left = torch.empty(0, dtype=torch.bool, device=device)  # bits drawn, not yet used
    for size in sizes:
        need = size - left.numel()
        if need > 0:
            octets = _octets(-(-need // _WORD_BITS), generator, device)
            bits = torch.index_select(table, 0, octets).view(-1)
            left = torch.cat([left, bits]) if left.numel() else bits
        yield left[:size]
        left = left[size:]


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
    reorth: str = "full",
    progress: bool = False,
    desc: str = "lanczos",
) -> LanczosResult:
    r"""Tridiagonalise a symmetric operator: ``Qᵀ A Q = T`` on a Krylov space.

    Each step multiplies once by ``A`` and, with ``reorth="full"``, reorthogonalises
    the new vector against the whole basis by classical Gram-Schmidt, a second pass
    only where the first cancelled (Daniel, Gragg, Kaufman & Stewart 1976), which keeps
    the basis orthogonal to working precision (no ghost eigenvalues). With
    ``reorth="partial"`` it reorthogonalises only when Simon's (1984) recurrence for
    the loss of orthogonality estimates it above ``√eps`` (then at that step and the
    next): the basis stays orthogonal to about ``√eps``, which keeps the tridiagonal
    ``T`` -- its Ritz values and quadrature -- as accurate as full reorthogonalisation
    (Simon 1984), at a fraction of its reads of the basis. The estimates take each
    round-off from where it arises: the loss between neighbours (``eps·√n``) from
    the basis's precision, which forms and stores each new vector, and the loss the
    products feed into every older row (``eps·‖A‖`` a step) from the coarsest of the
    basis's and the operator's (``compute_dtype``: a float32 network's products carry
    float32 round-off even in a float64 recurrence); so with a float32 network it
    reorthogonalises more often than with a float64 one, and the threshold ``√eps``
    is float32's. The recurrence and the basis are kept in ``dtype`` (float64 by
    default) whatever the operator's own dtype.

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
            memory does not grow with ``steps``), or ``"auto"``: float32 rows on an
            operator whose products are float32 with ``reorth`` partial, else
            ``"memory"`` (:func:`resolve_basis`; the density's default). The recurrence
            stays in ``dtype``.
        basis_dir: directory of the ``"disk"`` files; default a temporary one.
        reorth: ``"full"`` (the default: the basis orthonormal to working precision),
            ``"partial"`` (orthogonal to ``√eps``, the same ``T`` to working
            precision, fewer passes over the basis: the cheaper choice when only ``T``
            -- a density, Ritz values -- is wanted; docs/benchmarks.md has the
            measured costs) or ``"auto"`` (partial on an operator that declares its
            ``compute_dtype``, as the curvature operators do, else full:
            :func:`resolve_reorth`; the density's default).
        progress: show a progress bar over the steps.
        desc: label of the progress bar.

    Returns:
        A :class:`LanczosResult`; with a breakdown it holds fewer than ``steps`` steps.

    Raises:
        ValueError: on a non-square operator, ``steps`` outside ``[1, n]``, or a start
            vector of the wrong shape or zero norm, or an unknown ``reorth``.
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
    workspace = scratch = None
    _check_reorth(reorth)
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point:  # else lanczos_block says
        basis = resolve_basis(basis, op, reorth, dtype)
    if isinstance(start, torch.Tensor):
        if tuple(start.shape) != (n,):
            raise ValueError(f"start must have shape ({n},), got {tuple(start.shape)}")
        starts = start.reshape(1, n)
    else:
        device = operator_device(op)
        if (basis == "memory" and dtype == torch.float64) or basis in ("float32", "disk"):
            # drawn straight into the basis's first row, or with float32 or disk rows
            # into the first slot of the run's window of its last two vectors (in
            # dtype): no full-length vector more, 0.8 GB of fresh memory at 10⁸
            # entries (the arguments checked first, as lanczos_block would)
            _check_steps(steps, n)
            _check_start(start)
            if basis == "memory":
                workspace = torch.empty(1, steps, n, dtype=dtype, device=device)
                starts = workspace[:, 0]
            else:
                scratch = {"window": torch.empty(1, 2, n, dtype=dtype, device=device)}
                starts = scratch["window"][:, 0]
            generator = make_generator(generator, seed)
            random_start(n, kind=start, generator=generator, dtype=dtype, device=device,
                         out=starts[0])  # fmt: skip
        else:
            starts = _random_starts(n, 1, start, generator, seed, dtype, device)
    return lanczos_block(
        op,
        steps,
        starts,
        dtype=dtype,
        breakdown_tol=breakdown_tol,
        basis=basis,
        basis_dir=basis_dir,
        reorth=reorth,
        progress=progress,
        desc=desc,
        workspace=workspace,
        scratch=scratch,
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
    reorth: str = "full",
    progress: bool = False,
    desc: str = "lanczos",
    workspace: torch.Tensor | None = None,
    scratch: dict | None = None,
) -> list[LanczosResult]:
    """Run independent Lanczos recurrences from the rows of ``starts`` side by side.

    Each step multiplies all ``b`` current vectors by ``A`` in one ``matmat`` (one
    pass over the data for a curvature operator), while every recurrence keeps its own
    coefficients, basis and breakdown. See :func:`lanczos` for the arguments.

    Args:
        starts: start vectors as rows, shape ``(b, n)``; each is normalised here.
        basis_names: with ``basis="disk"``, the file of row ``d`` of ``starts`` is
            ``lanczos_vec_<basis_names[d]>.npy.partial`` in ``basis_dir``.
        workspace: with ``basis="memory"`` or ``"float32"`` (or an ``"auto"`` that
            stands for one), a contiguous tensor of shape ``(b, steps, n)`` on the
            operator's device (``dtype``, or float32 for ``"float32"``) to keep the
            basis in, instead of a new one per call. The results' bases are views of
            it, so the next call that reuses it overwrites them: for runs one after
            another whose bases are not kept (the draws of
            :func:`~spectorch.density.spectral_density`). Above a few tens of MB a new
            basis is fresh memory from the system, and writing a fresh page costs more
            than a pass over a used one (a page fault each): at 10⁸ parameters 0.5-2 s
            per basis row on the CPU measured here, more the more the process holds
            (docs/benchmarks.md).
        scratch: a dict that keeps the run's working vectors from one call to the
            next: the vector the products are written into and, with float32 or disk
            rows, the window of the last two vectors in ``dtype`` (keys
            ``"products"``, ``(b, n)``, and ``"window"``, ``(b, 2, n)``; other keys
            are left alone). A call takes them from it where their shape (or their
            first ``b`` rows, where they have more), dtype and device fit, else makes
            them and leaves them there. For runs one after another, as ``workspace``:
            with float32 rows each run otherwise makes 3 full-length float64 vectors
            anew, 2.4 GB at 10⁸ parameters (``benchmarks/bench_draw_memory.py``).
            ``starts`` may be the window's first slot (``scratch["window"][:, 0]``),
            as a basis's first row may be in ``workspace``: the start vectors are
            then drawn where the run keeps them, no vector more, and normalised in
            place (:func:`lanczos` and the density draw theirs so).

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
    _check_reorth(reorth)
    if scratch is not None and not isinstance(scratch, dict):
        raise TypeError(f"scratch must be a dict or None, got {type(scratch).__name__}")
    basis = resolve_basis(basis, op, reorth, dtype)
    reorth = resolve_reorth(reorth, op)
    device = operator_device(op)
    b = starts.shape[0]
    if workspace is not None:
        kept_dtype = torch.float32 if basis == "float32" else dtype
        _check_workspace(workspace, (b, steps, n), kept_dtype, device, basis)
    # each mode writes q0 / norms into its own rows (or its window of the last two
    # vectors) and leaves the caller's starts as they were, unless they are that row
    # (workspace's first, the window's first slot: drawn there, normalised in place)
    q0 = starts.to(device=device, dtype=dtype)
    norms = q0.norm(dim=1).tolist()
    if not all(math.isfinite(x) and x > 0 for x in norms):
        raise ValueError("every start vector must be finite and non-zero")
    store = BlockBasis(
        b,
        steps,
        n,
        dtype=dtype,
        device=device,
        mode=basis,
        directory=basis_dir,
        names=basis_names,
        out=workspace,
        window=None if basis == "memory" else _kept(scratch, "window", (b, 2, n), dtype, device),
    )
    q = store.push(0, q0, [1.0 / x for x in norms])  # a view of the stored row (or window)
    # never read: β q_prev enters from step 1, when q_prev is row 0 (the recurrence reads
    # it from the basis rows, or the window, beside q)
    q_prev = q.new_empty(0)
    # the coefficients side by side, (β_{j-1}, α_j) in coefs[:, j]: the three-term
    # recurrence takes its two coefficients as one view, no tensor built per step
    coefs = torch.zeros(b, steps, 2, dtype=dtype, device=device)
    alphas, betas = coefs[:, :, 1], coefs[:, 1:, 0]  # β_j is betas[:, j]
    # the views a step works on, made once (on a small operator the step's own work is
    # mostly such bookkeeping, and it runs with the caches emptied by the product):
    # (β_{j-1}, α_j), α_j, β_j, and α_j with β_j, adjacent, to read in one transfer
    coef_at, alpha_at, beta_at = coefs.unbind(1), alphas.unbind(1), betas.unbind(1)
    read_at = coefs.view(b, 2 * steps)[:, 1 : 2 * steps - 1].unflatten(1, (steps - 1, 2))
    read_at = read_at.unbind(1)
    dots = alphas[0].unbind(0) if b == 1 else ()
    lengths = [steps] * b
    # The per-step bookkeeping (norms, breakdowns, ‖A‖) is on Python floats, read with
    # one transfer per step: for small operators a step is otherwise tens of tiny
    # tensor operations, which cost more than the arithmetic (benchmarks/bench_scale.py).
    active = [True] * b
    # ‖A‖ estimated by max_j ‖A q_j‖ = max_j √(β_{j-1}² + α_j² + β_j²), no extra pass
    anorm = [0.0] * b
    previous = [0.0] * b  # β_{j-1}
    # the estimates take the products' round-off at the coarsest precision a step works
    # in: float32 rows carry float32's eps, and so do the products of a network that
    # computes in float32 (its compute_dtype) even when they are returned in float64;
    # the recurrence's float64 eps would underestimate the loss and skip passes it
    # needs. The loss between neighbours arises where the new vector is formed, in the
    # recurrence's dtype (a float32 basis rounds only the stored copies; q and q_prev
    # stay in dtype), and a pass against float32 rows leaves their rounding
    # (_Orthogonality)
    levels = None
    if reorth == "partial":
        stored = torch.float32 if basis == "float32" else dtype
        driven = _coarsest(stored, operator_precision(op))
        levels = [_Orthogonality(n, steps, dtype, driven, stored) for _ in range(b)]
    # An operator that takes out= writes each product into a vector kept from step to
    # step: at 10⁸ entries a new one costs more (page faults) than the arithmetic. w is
    # free again at every step (push copies it into the basis, or the window).
    spare = None
    if op.dtype == dtype and accepts_out(op, block=b > 1):
        spare = _kept(scratch, "products", (b, n), dtype, device)

    # no bar object at all without progress: a disabled one costs 17 µs to make, hot
    bar = tqdm(total=steps, desc=desc, leave=False, unit="step") if progress else None
    try:
        for j in range(steps):
            if spare is not None:
                w = spare
                if b == 1:
                    op.matvec(q[0], out=w[0])
                else:
                    op.matmat(q.T.contiguous(), out=w.T)
            elif b == 1:
                w = op.matvec(q[0]).to(dtype).reshape(1, n)
                if w.untyped_storage().data_ptr() in (
                    q.untyped_storage().data_ptr(),
                    q_prev.untyped_storage().data_ptr(),
                ):
                    w = w.clone()  # the recurrence works on w in place
            else:
                w = operator_matmat(op, q.T.contiguous()).to(dtype).T.contiguous()
            # the three-term recurrence, in place: w = A q − α q − β q_prev; a finished
            # recurrence has q = 0, so its α (and β below) is 0
            alpha = alpha_at[j]
            if b == 1:  # written where it is kept
                torch.dot(w[0], q[0], out=dots[j])
            else:
                alpha.copy_(torch.einsum("bn,bn->b", w, q))
            store.recurrence(w, j, q, q_prev, coef_at[j])
            if j == steps - 1:  # the last w is not used: no norm, no reorthogonalisation
                _check_finite(alpha, j)  # a NaN or inf product makes α non-finite
                if bar is not None:
                    bar.update(1)
                break
            rows = [d for d in range(b) if active[d]]
            if levels is None:
                # full reorthogonalisation against the whole basis (one classical
                # Gram-Schmidt pass, a second where the first cancelled: DGKS); the
                # norm before it is not needed: the pass returns it by Pythagoras. α
                # is read with the pass's norms: one wait for the device per step
                bt, a = store.orthogonalize(w, j + 1, None, rows, read=alpha)
                _check_floats(a, bt, j)
                stored = False
            else:
                # β written where it is kept, and read to the host with α
                torch.linalg.vector_norm(w, dim=1, out=beta_at[j])
                read = read_at[j].tolist()
                a, bt = [x for x, _ in read], [x for _, x in read]
                _check_floats(a, bt, j)
                stored = True
            for d in rows:
                anorm[d] = max(anorm[d], (previous[d] ** 2 + a[d] ** 2 + bt[d] ** 2) ** 0.5)
            if levels is not None:
                # Simon's estimates from the coefficients already read (no transfer)
                spans = {}
                for d in rows:
                    spans[d] = levels[d].due(a[d], bt[d], anorm[d], j)
                spans = {d: s for d, s in spans.items() if s}
                if spans:
                    bt, _ = store.orthogonalize(w, j + 1, bt, list(spans), spans)
                    _check_floats(a, bt, j)
                    stored = False
            if bar is not None:
                bar.update(1)
            for d in rows:
                if bt[d] <= breakdown_tol * anorm[d]:
                    lengths[d], active[d] = j + 1, False
            if not any(active):
                break
            # β is stored after reorthogonalisation, so T matches the basis; a stopped
            # recurrence's is 0
            previous = [x if active[d] else 0.0 for d, x in enumerate(bt)]
            if not all(active):
                w[torch.tensor([not x for x in active], device=device)] = 0.0
                stored = False
            if not stored:  # (a scalar fill does not wait for a GPU; a copy from the host may)
                if b == 1:
                    beta_at[j].fill_(previous[0])
                else:
                    beta_at[j].copy_(torch.tensor(previous, dtype=dtype), non_blocking=True)
            if levels is not None:
                for d in rows:
                    levels[d].kept(j, previous[d])
            scale = [1.0 / x if active[d] else 1.0 for d, x in enumerate(bt)]
            q_prev, q = q, store.push(j + 1, w, scale)
    except BaseException:
        store.discard()
        raise
    finally:
        if bar is not None:
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
                reorth_passes=store.passes[d],
                reorth_rows=store.rows_read[d],
                disk=disk,
            )
        )
    return results


def _kept(
    scratch: dict | None, key: str, shape: tuple[int, ...], dtype: torch.dtype, device: Any
) -> torch.Tensor:
    """An uninitialised tensor of ``shape``, ``dtype`` on ``device``: ``scratch[key]``
    where it is one, or its first ``shape[0]`` rows where it has more (the last, smaller
    group of a density's draws), else a new one, left in ``scratch`` for the next call."""
    if scratch is not None and key in scratch:
        kept = scratch[key]
        if isinstance(kept, torch.Tensor) and kept.ndim == len(shape) and kept.shape[0] > shape[0]:
            kept = kept[: shape[0]]  # (a leading slice of a contiguous tensor is one)
        try:  # the test a lent buffer passes (workspace=, out=)
            return checks.buffer(key, kept, shape, dtype, device)
        except (TypeError, ValueError):
            pass  # does not fit: a new one replaces it
    kept = torch.empty(shape, dtype=dtype, device=device)
    if scratch is not None:
        scratch[key] = kept
    return kept


def _check_workspace(
    workspace: Any, shape: tuple, dtype: torch.dtype, device: torch.device, basis: str
) -> None:
    if basis == "disk":
        raise ValueError("workspace keeps the basis in memory; basis='disk' takes none")
    checks.buffer("workspace", workspace, shape, dtype, device)


def _check_floats(a: list[float], b: list[float], j: int) -> None:
    """Raise when the floats read of ``α`` and ``β`` of step ``j`` are not all finite."""
    if not all(map(math.isfinite, a + b)):
        _non_finite(j)


def _check_finite(values: torch.Tensor, j: int) -> None:
    """Raise when ``α`` or ``β`` of step ``j`` is NaN or inf (a non-finite product)."""
    if not bool(torch.isfinite(values).all()):
        _non_finite(j)


def _non_finite(j: int) -> None:
    raise FloatingPointError(
        f"the operator returned NaN or inf at Lanczos step {j + 1}; check the "
        "model, loss and data for non-finite values, or use a wider dtype"
    )


def _check_start(kind: Any) -> None:
    if kind not in _STARTS:
        raise ValueError(f"start must be one of {list(_STARTS)} or a tensor, got {kind!r}")


def resolve_reorth(reorth: str, op: Any) -> str:
    """The reorthogonalisation that ``reorth`` stands for on ``op``: ``"full"`` and
    ``"partial"`` as they are; ``"auto"`` is ``"partial"`` on an operator that declares
    the precision its products are computed in (``compute_dtype``, as spectorch's
    curvature operators do), where a run is long and only ``T`` is wanted, and
    ``"full"`` on any other (a tensor, an operator of one's own), whose basis stays
    orthonormal to working precision as before. Partial reorthogonalisation takes the
    products' round-off from that precision: a ``dtype`` that hid products computed in
    a narrower one would make it skip passes the basis needs (ghost eigenvalues).

    Example:
        >>> import torch
        >>> resolve_reorth("auto", torch.eye(3)), resolve_reorth("partial", torch.eye(3))
        ('full', 'partial')
    """
    _check_reorth(reorth)
    if reorth != "auto":
        return reorth
    return "partial" if hasattr(as_operator(op), "compute_dtype") else "full"


def resolve_basis(
    basis: str, op: Any, reorth: str = "auto", dtype: torch.dtype = torch.float64
) -> str:
    """The basis that ``basis`` stands for on ``op``: ``"memory"``, ``"float32"`` and
    ``"disk"`` as they are; ``"auto"`` is ``"float32"`` where float64 rows would keep
    nothing the run can use, else ``"memory"``: float32 rows when the recurrence
    (``dtype``) is wider than float32, the products are computed in float32 or coarser
    (``compute_dtype``: a float32 network; a float32 tensor) and the
    reorthogonalisation (``reorth``, resolved on ``op`` by :func:`resolve_reorth`) is
    ``"partial"``, which wants the basis orthogonal to the products' ``√eps`` and no
    better. Such rows halve the basis's memory and the fresh memory a first run
    writes; measured on float32 MLPs, CNNs and GPTs of 10⁴ to 10⁷ parameters, the
    densities' Ritz values, moments and Wasserstein distances came out the same as
    with float64 rows (docs/benchmarks.md). Full reorthogonalisation keeps float64
    rows, orthonormal to working precision as google/spectral-density's are.

    Example:
        >>> import torch
        >>> A = torch.eye(3)
        >>> resolve_basis("auto", A, "partial"), resolve_basis("auto", A.double(), "partial")
        ('float32', 'memory')
        >>> resolve_basis("auto", A, "full")
        'memory'
    """
    if basis not in BASIS_MODES:
        raise ValueError(f"basis must be one of {list(BASIS_MODES)}, got {basis!r}")
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    if basis != "auto":
        return basis
    eps32 = torch.finfo(torch.float32).eps
    narrow = torch.finfo(operator_precision(as_operator(op))).eps >= eps32
    wide = torch.finfo(dtype).eps < eps32
    partial = resolve_reorth(reorth, op) == "partial"
    return "float32" if narrow and wide and partial else "memory"


def _check_reorth(reorth: Any) -> None:
    if reorth not in REORTH_MODES:
        raise ValueError(f"reorth must be one of {list(REORTH_MODES)}, got {reorth!r}")


def _check_steps(steps: Any, n: int) -> None:
    checks.positive_int("steps", steps)
    if steps > n:
        raise ValueError(f"steps must be at most the dimension n={n}, got {steps}")


def make_generator(generator: torch.Generator | None, seed: int | None) -> torch.Generator:
    """``generator`` itself, or a new CPU generator seeded with ``seed`` (from the
    system's entropy when ``seed`` is ``None``)."""
    if generator is not None:
        return generator
    generator = torch.Generator()
    if seed is not None:
        generator.manual_seed(int(seed))
    else:
        generator.seed()
    return generator


def _random_starts(
    n: int,
    num: int,
    kind: str,
    generator: torch.Generator | None,
    seed: int | None,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:
    generator = make_generator(generator, seed)
    return random_start(n, kind=kind, generator=generator, num=num, dtype=dtype, device=device)


def _coarsest(*dtypes: torch.dtype) -> torch.dtype:
    """The floating dtype of largest ``eps`` among ``dtypes``."""
    return max(dtypes, key=lambda t: torch.finfo(t).eps)


class _Orthogonality:
    """Simon's (1984) running estimates ``ω_k ≈ q_{j+1}ᵀ q_k`` of one recurrence's loss
    of orthogonality, from its ``α`` and ``β`` alone (no product with the basis), and
    the rows to reorthogonalise against when they grow too large.

    With ``A q_j = β_{j-1} q_{j-1} + α_j q_j + β_j q_{j+1}`` the estimates obey

        β_j ω_{j+1,k} = β_k ω_{j,k+1} + (α_k − α_j) ω_{j,k} + β_{k-1} ω_{j,k-1}
                        − β_{j-1} ω_{j-1,k} ± 2 eps ‖A‖,

    the last term the round-off of one step, added with the sign that makes the
    estimate grow; ``ω_{j+1,j}`` is the local loss ``eps_kept √n max(1, ‖A‖ / β_j)``.
    When some ``|ω_k|`` passes ``√eps``, the new vector is reorthogonalised against the
    rows around it whose ``|ω_k|`` passes ``eps^(3/4)`` (Simon's partial
    reorthogonalisation), and the next vector against the same rows, since it
    inherits the loss through the recurrence; their estimates restart at the local
    loss.

    Three precisions: ``kept``, the recurrence's, in which each new vector is formed
    against its two neighbours (``α`` is read from the product as computed, so the
    product's own error does not enter ``q_{j+1}ᵀ q_j``); ``driven`` (``eps`` above),
    the coarsest of the stored rows' and the operator's, whose products carry their
    round-off into ``q_{j+1}ᵀ q_k`` for the older rows (Paige 1976: ``q_kᵀ f_j −
    q_jᵀ f_k``, with ``‖f‖ ≈ eps ‖A‖``); and ``stored``, the rows' as kept for the
    passes (default ``kept``). Taking ``driven`` for the neighbours made a float32
    network of 8·10⁶ parameters or more reorthogonalise at every step, as its
    ``eps √n`` alone passes ``√eps``; taking ``kept`` for the older rows skipped passes
    a float32 network needs (ghost eigenvalues; tests/test_digits_slq.py). Rows stored
    coarser than the recurrence (``basis="float32"``: the neighbours stay in the
    recurrence's precision, only the stored copies are rounded) leave a vector
    orthogonalised against them off by up to the storage's rounding, ``eps_stored / 2``
    by Cauchy-Schwarz and independent of ``n``: the estimates of those rows restart at
    ``eps_stored`` rather than at the local loss.
    """

    #: from this step on the estimates are advanced by numpy, before it in Python:
    #: after a product the caches hold the product's data and code, and there a few
    #: numpy calls on short arrays cost more than a Python loop over tens of numbers
    #: (3.5x, measured on a network of 10⁴ parameters); the two give the same floats
    vector_from = 64

    def __init__(
        self,
        n: int,
        steps: int,
        kept: torch.dtype,
        driven: torch.dtype,
        stored: torch.dtype | None = None,
    ) -> None:
        self.eps = float(torch.finfo(driven).eps)
        self.limit = self.eps**0.5
        self.band = self.eps**0.75
        self.floor = float(torch.finfo(kept).eps) * n**0.5
        #: where the estimates of rows just reorthogonalised against restart
        self.restart = max(self.floor, float(torch.finfo(stored or kept).eps))
        self.alphas = [0.0] * steps  # the recurrence's coefficients so far
        self.betas = [0.0] * steps
        self.cur = [1.0]  # ω_{j, 0..j}
        self.prev: list[float] = []  # ω_{j-1, 0..j-1}
        self.pending: list[tuple[int, int]] = []  # rows the next vector must meet

    def due(self, alpha: float, beta: float, anorm: float, j: int) -> list[tuple[int, int]]:
        """Advance the estimates to ``q_{j+1}`` (``α_j`` of this step, ``beta`` the new
        vector's norm before normalising) and return the ``[start, stop)`` row ranges
        it must be reorthogonalised against (empty: none); the estimates of those rows
        restart. :meth:`kept` records ``β_j`` once it is final."""
        self.alphas[j] = alpha
        if not (beta > 0.0 and math.isfinite(beta)):
            new = [0.0] * (j + 1)
            spans = [(0, j + 1)]
        else:
            new = self._older(alpha, beta, anorm, j) if j > 0 else []
            new.append(self.floor * max(1.0, anorm / beta))  # ω_{j+1, j}
            if self.pending:
                spans, self.pending = self.pending, []
                spans = [(start, min(stop, j + 1)) for start, stop in spans]
            elif max(map(abs, new)) > self.limit:
                spans = _intervals(np.abs(np.array(new)), self.limit, self.band)
                self.pending = spans
            else:
                spans = []
        new.append(1.0)  # ω_{j+1, j+1}
        for start, stop in spans:
            new[start:stop] = [self.restart] * (stop - start)
        self.prev, self.cur = self.cur, new
        return spans

    def _older(self, alpha: float, beta: float, anorm: float, j: int) -> list[float]:
        """``ω_{j+1, k}`` for ``k < j``: ``(β_k ω_{j,k+1} + (α_k − α_j) ω_{j,k}
        − β_{j-1} ω_{j-1,k} + β_{k-1} ω_{j,k-1} ± 2 eps ‖A‖) / β_j``, in this order."""
        a, b, cur, prev = self.alphas, self.betas, self.cur, self.prev
        grow, last = 2.0 * self.eps * anorm, b[j - 1]
        if j >= self.vector_from:
            bv, cv = np.array(b[:j]), np.array(cur)
            t = bv * cv[1:] + (np.array(a[:j]) - alpha) * cv[:j] - last * np.array(prev)
            t[1:] += bv[:-1] * cv[: j - 1]
            t += np.where(t >= 0, grow, -grow)
            t /= beta
            return t.tolist()
        out = []
        for k in range(j):
            x = b[k] * cur[k + 1] + (a[k] - alpha) * cur[k] - last * prev[k]
            if k:
                x += b[k - 1] * cur[k - 1]
            out.append((x + grow if x >= 0 else x - grow) / beta)
        return out

    def kept(self, j: int, beta: float) -> None:
        """Record ``β_j`` as stored (after any reorthogonalisation; 0 once stopped)."""
        self.betas[j] = beta


def _intervals(level: np.ndarray, limit: float, band: float) -> list[tuple[int, int]]:
    """The ``[start, stop)`` ranges around each index whose level passes ``limit``,
    widened while the level stays above ``band``."""
    spans: list[tuple[int, int]] = []
    above = level > band
    for k in np.flatnonzero(level > limit):
        if spans and k < spans[-1][1]:
            continue
        start = k
        while start > 0 and above[start - 1]:
            start -= 1
        stop = k + 1
        while stop < level.size and above[stop]:
            stop += 1
        spans.append((int(start), int(stop)))
    return spans
