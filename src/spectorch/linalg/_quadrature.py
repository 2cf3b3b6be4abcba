"""Gauss quadrature of a Lanczos tridiagonal: Ritz values and weights."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.linalg
import torch

from spectorch._utils import to_numpy

__all__ = ["gauss_quadrature", "tridiagonal_matrix"]


def tridiagonal_matrix(alphas: Any, betas: Any) -> torch.Tensor:
    """The dense symmetric tridiagonal matrix with diagonal ``alphas``, off-diagonal ``betas``."""
    a = torch.as_tensor(alphas)
    b = torch.as_tensor(betas, dtype=a.dtype, device=a.device)
    if a.ndim != 1 or b.shape != (max(a.shape[0] - 1, 0),):
        raise ValueError(
            f"alphas must have shape (m,) and betas (m - 1,), got {tuple(a.shape)} and "
            f"{tuple(b.shape)}"
        )
    return torch.diag(a) + torch.diag(b, 1) + torch.diag(b, -1)


def gauss_quadrature(alphas: Any, betas: Any) -> tuple[np.ndarray, np.ndarray]:
    r"""Nodes and weights of the Gauss quadrature defined by a Jacobi matrix ``T``.

    With ``T = U diag(θ) Uᵀ`` the nodes are the Ritz values ``θ_k`` and the weights are
    ``w_k = U[0, k]²`` (Golub & Welsch 1969), so ``Σ_k w_k f(θ_k) ≈ vᵀ f(A) v`` for the
    unit start vector ``v``, exactly for polynomials of degree ``< 2m``.

    Returns:
        ``(nodes, weights)`` as float64 numpy arrays of shape ``(m,)``, nodes ascending.
    """
    a, b = to_numpy(alphas), to_numpy(betas)
    if a.ndim != 1 or a.shape[0] < 1 or b.shape != (a.shape[0] - 1,):
        raise ValueError(
            f"alphas must have shape (m,) with m >= 1 and betas (m - 1,), got {a.shape} and "
            f"{b.shape}"
        )
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("the tridiagonal has NaN or inf entries")
    if a.shape[0] == 1:
        return a.copy(), np.ones(1)
    nodes, vecs = scipy.linalg.eigh_tridiagonal(a, b)
    weights = vecs[0] ** 2
    return nodes, weights / weights.sum()
