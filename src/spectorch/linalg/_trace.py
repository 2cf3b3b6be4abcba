"""Hutchinson's stochastic trace estimator."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from spectorch import checks
from spectorch.linalg._operator import as_operator, operator_device, operator_matmat

__all__ = ["TraceEstimate", "deflated_trace_sample", "hutchinson_trace"]


@dataclass(frozen=True)
class TraceEstimate:
    """A stochastic estimate with its standard error over ``samples`` probes."""

    value: float
    stderr: float
    samples: int


def hutchinson_trace(
    op: Any,
    probes: int = 100,
    *,
    distribution: str = "rademacher",
    generator: torch.Generator | None = None,
    seed: int | None = 0,
    probes_per_pass: int = 8,
    dtype: torch.dtype = torch.float64,
) -> TraceEstimate:
    r"""Estimate ``tr(A) = E[zᵀ A z]`` with Rademacher or Gaussian probes ``z``.

    Probes are multiplied ``probes_per_pass`` at a time through ``matmat`` (one pass
    over the data for a curvature operator). Rademacher probes have the smaller
    variance, ``2 Σ_{i≠j} A_ij²`` (Hutchinson 1990), and give the trace exactly for a
    diagonal ``A``.

    Raises:
        ValueError: on ``probes`` or ``probes_per_pass`` below one, or an unknown
            distribution.
    """
    op = as_operator(op)
    n = op.shape[0]
    checks.positive_int("probes", probes)
    checks.positive_int("probes_per_pass", probes_per_pass)
    if distribution not in ("rademacher", "gaussian"):
        raise ValueError(f"distribution must be 'rademacher' or 'gaussian', got {distribution!r}")
    if generator is None:
        generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
    device = operator_device(op)
    samples = []
    done = 0
    while done < probes:
        k = min(probes_per_pass, probes - done)
        if distribution == "rademacher":
            Z = 2 * torch.randint(0, 2, (n, k), generator=generator, dtype=torch.int8).to(dtype) - 1
        else:
            Z = torch.randn(n, k, generator=generator, dtype=dtype)
        Z = Z.to(device)
        AZ = operator_matmat(op, Z).to(dtype)
        samples.append((Z * AZ).sum(dim=0).cpu())
        done += k
    s = torch.cat(samples)
    stderr = float(s.std(unbiased=True) / math.sqrt(len(s))) if len(s) > 1 else float("nan")
    return TraceEstimate(value=float(s.mean()), stderr=stderr, samples=len(s))


def deflated_trace_sample(
    basis: Any, tridiagonal: torch.Tensor, z: torch.Tensor, Az: torch.Tensor
) -> float:
    r"""One unbiased sample of ``tr(A)`` that deflates a Krylov space; no new products.

    With ``P = QQᵀ`` the projector on the Lanczos basis ``Q`` (rows of ``basis``) of
    one draw and ``z`` a Rademacher probe independent of it (e.g. another draw's
    start vector scaled by ``√n``, with ``Az`` from that draw's first step),

    ``tr(A) = tr(QᵀAQ) + E_z[zᵀ(I−P)A(I−P)z]``,

    where ``QᵀAQ = T`` is the tridiagonal and ``zᵀ(I−P)A(I−P)z = zᵀAz − 2cᵀ(QAz) +
    cᵀTc`` with ``c = Qz``. The Krylov space holds the large outlying eigenvalues that
    make plain Hutchinson noisy (a Hutch++-style split, Meyer et al. 2021), so the
    variance drops by orders of magnitude for curvature spectra.

    ``basis`` may also be a :class:`~spectorch.linalg.LanczosResult`, whose basis is
    then read through ``project`` (chunk by chunk when it is on disk).
    """
    project = basis.project if hasattr(basis, "project") else lambda x: basis @ x
    z, Az = z.to(torch.float64), Az.to(torch.float64)
    c = project(z).to(torch.float64)
    e = project(Az).to(torch.float64)
    T = tridiagonal.to(device=c.device, dtype=torch.float64)
    return float(torch.trace(T) + z @ Az - 2 * (c @ e) + c @ (T @ c))
