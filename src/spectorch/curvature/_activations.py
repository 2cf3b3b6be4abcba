"""GELU differentiated twice in closed form, for the Hessian's reverse-over-reverse
products.

PyTorch's double backward of ``gelu`` is a composite of about twenty element-wise
operations, each allocating a tensor the size of the activation. A Hessian product of
a kept gradient graph runs it at every product: on the GPT of ``bench_scale.py`` at
10^6 parameters it was a quarter of the product (``torch.profiler``). Here the first
backward pass, which builds the graph and runs once per kept graph, also computes
``gelu'(x)`` and ``gelu''(x) · g``; each product then multiplies twice.

The values are those of plain autograd: the forward pass and the gradient are
PyTorch's own kernels, and the two derivatives are the closed forms of the same
function (the exact ``x Φ(x)`` or the tanh approximation), equal to PyTorch's double
backward up to round-off.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["ClosedFormActivations", "gelu_derivatives"]

_K = math.sqrt(2.0 / math.pi)  # the tanh approximation's √(2/π)
_C = 0.044715  # and its cubic coefficient
_PHI = 1.0 / math.sqrt(2.0 * math.pi)  # the normal density's constant


def gelu_derivatives(
    x: torch.Tensor, approximate: str = "none"
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(gelu'(x), gelu''(x))`` element-wise, in closed form, in ``x``'s dtype
    (computed in float32 for half-precision ``x``).

    ``approximate="none"``: ``gelu(x) = x Φ(x)``, so ``gelu' = Φ + x φ`` and ``gelu'' =
    φ (2 − x²)``. ``"tanh"``: ``gelu(x) = x (1 + tanh u) / 2`` with ``u = k (x + c x³)``,
    so with ``t = tanh u`` and ``s = 1 − t²``: ``gelu' = (1 + t)/2 + x s u'/2`` and
    ``gelu'' = s (u' + x (u''/2 − t u'²))``, where ``u' = k (1 + 3c x²)`` and ``u'' =
    6 k c x``.
    """
    if approximate not in ("none", "tanh"):
        raise ValueError(f"approximate must be 'none' or 'tanh', got {approximate!r}")
    dtype = x.dtype
    x = x.detach()
    if x.element_size() < 4:
        x = x.float()
    x2 = x * x
    if approximate == "tanh":
        t = (x * (1.0 + _C * x2)).mul_(_K).tanh_()
        du = (x2 * (3.0 * _C)).add_(1.0).mul_(_K)  # u'
        s = (t * t).neg_().add_(1.0)  # 1 − t² = sech² u
        d1 = (x * s).mul_(du).add_(t).add_(1.0).mul_(0.5)
        # u' + x (u''/2 − t u'²), with u''/2 = 3 k c x
        d2 = (du * du).mul_(t).neg_().add_(x, alpha=3.0 * _K * _C).mul_(x).add_(du).mul_(s)
    else:
        phi = (x2 * -0.5).exp_().mul_(_PHI)
        d1 = (x * math.sqrt(0.5)).erf_().add_(1.0).mul_(0.5).addcmul_(x, phi)
        d2 = x2.neg_().add_(2.0).mul_(phi)
    return d1.to(dtype), d2.to(dtype)


class _GeluGrad(torch.autograd.Function):
    """``gelu'(x) · g`` (PyTorch's ``gelu_backward``), differentiated in closed form: its
    derivative in ``g`` is ``gelu'(x)`` and in ``x`` ``gelu''(x) · g``, both computed
    here, where the gradient graph is built, and kept instead of ``x`` and ``g``."""

    @staticmethod
    def forward(ctx: Any, g: torch.Tensor, x: torch.Tensor, approximate: str) -> torch.Tensor:
        d1, d2 = gelu_derivatives(x, approximate)
        ctx.save_for_backward(d1, d2.mul_(g))
        return torch.ops.aten.gelu_backward(g, x, approximate=approximate)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, u: torch.Tensor):
        d1, d2g = ctx.saved_tensors
        need_g, need_x, _ = ctx.needs_input_grad
        return d1 * u if need_g else None, d2g * u if need_x else None, None


class _Gelu(torch.autograd.Function):
    """``gelu(x)`` (PyTorch's kernel) whose gradient, built with ``create_graph``, is
    :class:`_GeluGrad`."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, approximate: str) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.approximate = approximate
        return F.gelu(x, approximate=approximate)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor):
        (x,) = ctx.saved_tensors
        if not torch.is_grad_enabled():  # a backward pass not to be differentiated
            return torch.ops.aten.gelu_backward(g, x, approximate=ctx.approximate), None
        return _GeluGrad.apply(g, x, ctx.approximate), None


class ClosedFormActivations(torch.overrides.TorchFunctionMode):
    """Within it, ``torch.nn.functional.gelu`` (and so ``nn.GELU``) on a tensor that
    requires grad runs as :class:`_Gelu`, whose second derivative is in closed form.
    :attr:`used` says whether any call did.

    For a graph that reverse-mode autograd differentiates twice (the Hessian's
    reverse-over-reverse products); not for :mod:`torch.func` transforms, and a
    product's result cannot be differentiated a third time.
    """

    def __init__(self) -> None:
        super().__init__()
        self.used = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.gelu and torch.is_grad_enabled():
            x = args[0] if args else kwargs.get("input")
            approximate = args[1] if len(args) > 1 else kwargs.get("approximate", "none")
            if (
                isinstance(x, torch.Tensor)
                and x.requires_grad
                and x.is_floating_point()
                and approximate in ("none", "tanh")
            ):
                self.used = True
                return _Gelu.apply(x, approximate)
        return func(*args, **kwargs)
