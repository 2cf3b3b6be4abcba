"""The three objectives: SpIN (masked gradient), NeuralEF and NeuralSVD.

Each maps a batch's ``Sigma = E[u u^T]`` and ``Pi = E[u (A u)^T]`` to a scalar loss
(minimised) whose gradient is the objective's, plus per-column eigenvalue estimates
of ``A``. ``A`` is the operator whose *top* eigenvalues NeuralEF and NeuralSVD find
and whose *bottom* eigenvalues SpIN finds; :class:`~spectorch.spin.SpectralNetwork`
maps ``which`` onto it.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from spectorch import checks

OBJECTIVES = ("spin", "neuralef", "neuralsvd")
NESTINGS = ("joint", "sequential")

_JITTERS = (1e-10, 1e-8, 1e-6, 1e-4, 1e-3, 1e-2)


def cholesky(sigma: Tensor, owner: Any = None) -> Tensor:
    """The Cholesky factor of ``sigma`` (float64); a rank-deficient ``sigma`` gets the
    smallest jitter (relative to its mean diagonal) that makes it positive definite,
    with a warning, instead of an error deep inside a factorisation.

    Raises:
        FloatingPointError: if ``sigma`` is not finite, or no jitter up to 1% helps.
    """
    sigma = sigma.detach().to(torch.float64)
    if not torch.isfinite(sigma).all():
        raise FloatingPointError(
            "Sigma = E[u u^T] is not finite: the network's outputs overflowed or are NaN"
        )
    chol, info = torch.linalg.cholesky_ex(sigma)
    if int(info) == 0:
        return chol
    k = sigma.shape[0]
    scale = float(sigma.diagonal().abs().mean()) or 1.0
    eye = torch.eye(k, dtype=sigma.dtype, device=sigma.device)
    for jitter in _JITTERS:
        chol, info = torch.linalg.cholesky_ex(sigma + jitter * scale * eye)
        if int(info) == 0:
            if owner is None or not getattr(owner, "_warned_jitter", False):
                warnings.warn(
                    f"Sigma = E[u u^T] is rank deficient (the network's {k} outputs are "
                    f"linearly dependent on this batch); added jitter {jitter:g} x its mean "
                    "diagonal to the Cholesky factorisation",
                    RuntimeWarning,
                    stacklevel=3,
                )
                if owner is not None:
                    owner._warned_jitter = True
            return chol
    raise FloatingPointError(
        "Sigma = E[u u^T] is not positive definite even with 1% jitter: the network's "
        "outputs are (near) constant or collinear"
    )


def spin_gradients(chol: Tensor, pi: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(Lambda, dLoss/dSigma, dLoss/dPi)`` of SpIN's masked gradient (float64).

    ``Lambda = L^-1 Pi L^-T``; ``dSigma = -L^-T triu(Lambda diag(L^-1))`` and
    ``dPi = L^-T diag(L^-1)``, as in Pfau et al. (2019), eq. (6).
    """
    pi = pi.detach().to(torch.float64)
    k = chol.shape[0]
    eye = torch.eye(k, dtype=chol.dtype, device=chol.device)
    choli = torch.linalg.solve_triangular(chol, eye, upper=False)
    lam = choli @ pi @ choli.T
    dl = torch.diag(choli.diagonal())
    g_sigma = -choli.T @ torch.triu(lam @ dl)
    g_pi = choli.T @ dl
    return lam, g_sigma, g_pi


class _SpinObjective(torch.autograd.Function):
    """``tr(L^-1 Pi L^-T)`` with SpIN's masked gradient for ``Sigma`` and ``Pi``."""

    @staticmethod
    def forward(sigma: Tensor, pi: Tensor, chol: Tensor) -> Tensor:  # type: ignore[override]
        lam, _, _ = spin_gradients(chol, pi)
        return lam.diagonal().sum().to(pi.dtype)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: Tensor) -> None:
        sigma, pi, chol = inputs
        ctx.save_for_backward(pi, chol)
        ctx.dtypes = (sigma.dtype, pi.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None]:  # type: ignore[override]
        pi, chol = ctx.saved_tensors
        _, g_sigma, g_pi = spin_gradients(chol, pi)
        g = grad.to(torch.float64)
        return (g * g_sigma).to(ctx.dtypes[0]), (g * g_pi).to(ctx.dtypes[1]), None


def spin_loss(sigma: Tensor, pi: Tensor, chol: Tensor) -> Tensor:
    """SpIN's loss ``tr(Lambda)`` (to minimise), differentiable with the masked gradient.

    ``sigma`` may be a constant (the moving average); then the gradient flows through
    ``pi`` only and the ``Sigma`` part is added from the averaged Jacobian.
    """
    return _SpinObjective.apply(sigma, pi, chol)


def _halves(u: Tensor, weights: Tensor | None) -> list[tuple[Tensor, Tensor | None]]:
    n = u.shape[0]
    if n < 2:
        return [(u, weights)]
    h = n // 2
    if weights is None:
        return [(u[:h], None), (u[h : 2 * h], None)]
    return [(u[:h], weights[:h]), (u[h : 2 * h], weights[h : 2 * h])]


def _gram(a: Tensor, b: Tensor, w: Tensor | None) -> Tensor:
    n = a.shape[0]
    if w is not None:
        a = a * w[:, None]
    return a.T @ b / n


def neuralef_loss(u: Tensor, weights: Tensor | None, pi_masked: Tensor) -> tuple[Tensor, Tensor]:
    """NeuralEF (Deng, Shi & Zhu, 2022) for the top eigenpairs of ``A``.

    Outputs are L2-batch-normalised, ``psi_j = u_j / s_j`` with ``s_j^2 = E[u_j^2]``;
    ``R = E[psi (A psi)^T]``; the loss is ``-sum_j R_jj + sum_{i<j} R_ij^2 / |R_ii|``
    where, in ``R_ij`` (``i < j``) and ``R_ii``, ``psi_i`` is held fixed (stop-gradient).
    ``pi_masked`` must come from the masked covariance, whose entry ``(i, j)`` sends
    its gradient to column ``j`` only: half of it is exactly the gradient of the
    symmetrised stop-gradient estimate ``(<psi_i, A psi_j> + <A psi_i, psi_j>) / 2``.

    Returns:
        ``(loss, eigenvalue estimates R_jj)``.
    """
    sigma = _gram(u, u, weights)
    s2 = sigma.diagonal()
    s = s2.clamp_min(torch.finfo(s2.dtype).tiny).sqrt()
    diag = pi_masked.diagonal() / s2
    sym = 0.5 * (pi_masked.detach() + pi_masked.detach().T)
    grad_half = sym + 0.5 * (pi_masked - pi_masked.detach())
    r = grad_half / (s.detach()[:, None] * s[None, :])
    k = u.shape[1]
    upper = torch.triu(torch.ones(k, k, dtype=torch.bool, device=u.device), diagonal=1)
    denom = diag.detach().abs()[:, None] + 1e-12
    penalty = torch.where(upper, r**2 / denom, torch.zeros_like(r)).sum()
    return -diag.sum() + penalty, diag.detach()


def neuralsvd_loss(
    u: Tensor, weights: Tensor | None, pi_masked: Tensor, nesting: str = "joint"
) -> tuple[Tensor, Tensor]:
    """NeuralSVD / nested low-rank approximation (Ryu et al., 2024) for a symmetric ``A``.

    The low-rank objective ``-2 tr E[u (A u)^T] + ||E[u u^T]||_F^2`` is minimised by
    ``u_l = sqrt(lambda_l) phi_l`` for the top (positive) eigenpairs. The quadratic term
    multiplies the Gram matrices of the two halves of the batch (unbiased).

    * ``nesting="joint"``: the sum over ``l`` of the objective of the first ``l``
      outputs with weight ``1/k`` each: ``-2 sum_l v_l Pi_ll + sum_{l,m}
      v_max(l,m) G1_lm G2_lm`` with ``v_l = (k - l)/k``; no stop-gradient.
    * ``nesting="sequential"``: output ``l`` minimises the objective of the first ``l``
      outputs with the earlier ones held fixed (stop-gradient).

    Returns:
        ``(loss, Rayleigh-quotient eigenvalue estimates Pi_ll / Sigma_ll)``.
    """
    checks.choice("nesting", nesting, NESTINGS)
    k = u.shape[1]
    diag_pi = pi_masked.diagonal()
    halves = _halves(u, weights)
    if nesting == "joint":
        v = (k - torch.arange(k, dtype=u.dtype, device=u.device)) / k
        m = torch.minimum(v[:, None], v[None, :])
        (a, wa), (b, wb) = halves[0], halves[-1]
        g1, g2 = _gram(a, a, wa), _gram(b, b, wb)
        loss = -2.0 * (v * diag_pi).sum() + (m * g1 * g2).sum()
    else:
        upper = torch.triu(torch.ones(k, k, dtype=torch.bool, device=u.device), diagonal=1)
        (a, wa), (b, wb) = halves[0], halves[-1]
        d1 = (a * a * (1 if wa is None else wa[:, None])).mean(0)
        d2 = (b * b * (1 if wb is None else wb[:, None])).mean(0)
        c1 = _gram(a.detach(), a, wa)  # column m gets the gradient of entry (l, m)
        c2 = _gram(b.detach(), b, wb)
        cross = torch.where(upper, c1 * c2, torch.zeros_like(c1))
        loss = -2.0 * diag_pi.sum() + (d1 * d2).sum() + 2.0 * cross.sum()
    sigma_diag = _gram(u, u, weights).diagonal().detach()
    return loss, (diag_pi.detach() / sigma_diag.clamp_min(torch.finfo(u.dtype).tiny))
