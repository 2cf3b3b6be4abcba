"""Curvature as a preconditioned optimiser sees it: ``P^{-1/2} C P^{-1/2}``.

An optimiser that steps ``θ ← θ − η P⁻¹ g`` with a diagonal ``P`` (Adam, RMSProp,
Adagrad) is stable along the eigenvectors of ``P⁻¹ H``, not of ``H``; its edge of
stability is reached when the top eigenvalue of ``P⁻¹ H`` -- the *preconditioned
sharpness* -- reaches the threshold of the non-adaptive method (Cohen et al. 2022:
``(2 + 2β₁) / ((1 − β₁) η)`` for Adam, 38/η at ``β₁ = 0.9``). ``P⁻¹ H`` is not
symmetric, but it has the eigenvalues of the symmetric ``P^{-1/2} H P^{-1/2}``, whose
eigenvector ``x`` maps to the eigenvector ``P^{-1/2} x`` of ``P⁻¹ H``.
"""

from __future__ import annotations

from typing import Any

import torch

from spectorch.linalg._operator import accepts_out, as_operator, operator_device

__all__ = ["PreconditionedOperator", "adam_preconditioner"]


class PreconditionedOperator:
    """``P^{-1/2} A P^{-1/2}`` for a symmetric operator ``A`` and a positive diagonal
    ``P``, through the operator contract (``shape``, ``dtype``, ``matvec``, ``matmat``).

    Args:
        op: the symmetric operator (a curvature operator, a matrix).
        diagonal: ``P``'s diagonal: a flat tensor of length ``n``, or a dict of
            parameter-shaped tensors (name → tensor) for an operator with
            ``param_names`` (:func:`adam_preconditioner` returns one).

    Raises:
        ValueError: if the diagonal has the wrong length or names, or an entry that is
            not finite and positive.

    Example:
        >>> import torch
        >>> A = torch.diag(torch.tensor([4.0, 9.0], dtype=torch.float64))
        >>> op = PreconditionedOperator(A, torch.tensor([4.0, 1.0], dtype=torch.float64))
        >>> op.matvec(torch.ones(2, dtype=torch.float64))
        tensor([1., 9.], dtype=torch.float64)
    """

    def __init__(self, op: Any, diagonal: Any) -> None:
        self.op = as_operator(op)
        n = int(self.op.shape[0])
        if isinstance(diagonal, dict):
            names = getattr(self.op, "param_names", None)
            if names is None:
                raise ValueError(
                    "diagonal is a dict of parameters, but the operator has no param_names; "
                    "pass a flat tensor"
                )
            missing = [k for k in names if k not in diagonal]
            if missing:
                raise ValueError(f"diagonal lacks the parameters {missing[:5]}")
            diagonal = torch.cat([diagonal[k].detach().reshape(-1) for k in names])
        if not isinstance(diagonal, torch.Tensor) or tuple(diagonal.shape) != (n,):
            got = tuple(diagonal.shape) if isinstance(diagonal, torch.Tensor) else diagonal
            raise ValueError(f"diagonal must be a tensor of shape ({n},) or a dict, got {got}")
        diagonal = diagonal.detach().to(device=operator_device(self.op), dtype=self.op.dtype)
        if not bool((torch.isfinite(diagonal) & (diagonal > 0)).all()):
            raise ValueError("diagonal must be finite and positive everywhere")
        #: ``P^{-1/2}``, the scaling applied on both sides
        self.scale = diagonal.rsqrt()
        self.shape = (n, n)
        self.dtype = self.op.dtype
        self.device = operator_device(self.op)
        self._into = accepts_out(self.op)

    @property
    def compute_dtype(self) -> torch.dtype:
        """The wrapped operator's compute dtype (it bounds the products' accuracy); like
        the wrapped operator, none (``AttributeError``) where it declares none, so
        ``reorth="auto"`` chooses for this operator what it chooses for that one."""
        return self.op.compute_dtype

    @property
    def param_names(self) -> list[str] | None:
        return getattr(self.op, "param_names", None)

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """As the wrapped operator's ``unflatten`` (for parameter-shaped vectors)."""
        fn = getattr(self.op, "unflatten", None)
        if fn is None:
            raise ValueError("the wrapped operator has no parameters (no unflatten method)")
        return fn(flat)

    def matvec(self, v: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
        """``P^{-1/2} A P^{-1/2} v``; ``out`` as in the curvature operators."""
        x = v.to(self.dtype) * self.scale
        if out is not None and self._into:
            return self.op.matvec(x, out=out).mul_(self.scale)
        y = self.op.matvec(x).to(self.dtype).mul_(self.scale)
        return y if out is None else out.copy_(y)

    def matmat(self, V: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
        """``P^{-1/2} A P^{-1/2} V`` for an ``(n, k)`` block, in one pass where ``A`` can."""
        X = V.to(self.dtype) * self.scale[:, None]
        if hasattr(self.op, "matmat"):
            Y = self.op.matmat(X).to(self.dtype)
        else:
            Y = torch.stack([self.op.matvec(X[:, j]) for j in range(X.shape[1])], dim=1)
        Y = Y * self.scale[:, None]
        return Y if out is None else out.copy_(Y)

    def __matmul__(self, x: torch.Tensor) -> torch.Tensor:
        return self.matvec(x) if x.ndim == 1 else self.matmat(x)

    def __repr__(self) -> str:
        return f"PreconditionedOperator({self.op!r})"


def adam_preconditioner(
    optimizer: torch.optim.Optimizer, params: Any = None
) -> dict[str, torch.Tensor] | list[torch.Tensor]:
    """The diagonal ``P`` of an Adam or AdamW step, from the optimiser's state.

    With torch's Adam, ``θ ← θ − η m̂ / (√v̂ + ε)`` where ``m̂ = m / (1 − β₁ᵗ)`` and
    ``v̂ = v / (1 − β₂ᵗ)`` after ``t`` steps, so ``θ ← θ − η P⁻¹ m`` with

        P = (1 − β₁ᵗ) (√(v / (1 − β₂ᵗ)) + ε),

    the preconditioner of Cohen et al. (2022), whose ``λ_max(P⁻¹ H)`` equilibrates near
    ``(2 + 2β₁) / ((1 − β₁) η)`` in full-batch training.

    Args:
        optimizer: a ``torch.optim.Adam`` or ``AdamW`` that has taken at least one step.
        params: ``model.named_parameters()`` (or a dict name → parameter) to get a dict
            name → diagonal, for :class:`PreconditionedOperator` of a curvature
            operator; default the list of the optimiser's parameters' diagonals.

    Raises:
        ValueError: for another optimiser, ``amsgrad=True``, or one without a step yet.
    """
    if not isinstance(optimizer, torch.optim.Adam | torch.optim.AdamW):
        raise ValueError(
            f"optimizer must be a torch.optim.Adam or AdamW, got {type(optimizer).__name__}"
        )
    diag: dict[int, torch.Tensor] = {}
    order: list[torch.Tensor] = []
    for group in optimizer.param_groups:
        if group.get("amsgrad"):
            raise ValueError("amsgrad=True keeps the running maximum of v: not supported")
        beta1, beta2 = group["betas"]
        eps = group["eps"]
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            if "exp_avg_sq" not in state:
                raise ValueError("the optimizer has no second-moment state yet: take a step first")
            t = float(state["step"])
            v = state["exp_avg_sq"].detach().double()
            diag[id(p)] = (1 - beta1**t) * ((v / (1 - beta2**t)).sqrt() + eps)
            order.append(p)
    if params is None:
        return [diag[id(p)] for p in order]
    named = dict(params)
    out = {}
    for name, p in named.items():
        if id(p) not in diag:
            raise ValueError(f"parameter {name!r} is not optimised by this optimizer")
        out[name] = diag[id(p)]
    return out
