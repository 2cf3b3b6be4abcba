"""GELU and SiLU differentiated twice in closed form, for the Hessian's
reverse-over-reverse products.

PyTorch's double backward of ``gelu`` is a composite of about twenty element-wise
operations (``silu``'s of about ten), each allocating a tensor the size of the
activation. A Hessian product of a kept gradient graph runs it at every product: on
the GPT of ``bench_scale.py`` at 10^6 parameters it was a quarter of the product
(``torch.profiler``). Here the first backward pass, which builds the graph and runs
once per kept graph, also computes ``f'(x)`` and ``f''(x) · g``; each product then
multiplies twice.

The values are those of plain autograd: the forward pass and the gradient are
PyTorch's own kernels, and the two derivatives are the closed forms of the same
functions (GELU exact, ``x Φ(x)``, or its tanh approximation; SiLU ``x σ(x)``), equal
to PyTorch's double backward up to round-off.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

__all__ = ["ClosedFormActivations", "gelu_derivatives", "silu_derivatives"]

_K = math.sqrt(2.0 / math.pi)  # the tanh approximation's √(2/π)
_C = 0.044715  # and its cubic coefficient
_PHI = 1.0 / math.sqrt(2.0 * math.pi)  # the normal density's constant


def _wide(x: torch.Tensor) -> torch.Tensor:
    """``x`` detached, in float32 when it is of half precision."""
    x = x.detach()
    return x.float() if x.element_size() < 4 else x


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
    dtype, x = x.dtype, _wide(x)
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


def silu_derivatives(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(silu'(x), silu''(x))`` element-wise, in closed form, in ``x``'s dtype
    (computed in float32 for half-precision ``x``): with ``σ = sigmoid(x)``, ``silu' =
    σ (1 + x (1 − σ))`` and ``silu'' = σ (1 − σ) (2 + x (1 − 2σ))``."""
    dtype, x = x.dtype, _wide(x)
    sig = torch.sigmoid(x)
    rest = (sig - 1.0).neg_()  # 1 − σ
    d1 = (x * rest).add_(1.0).mul_(sig)
    d2 = (sig * -2.0).add_(1.0).mul_(x).add_(2.0).mul_(rest).mul_(sig)
    return d1.to(dtype), d2.to(dtype)


#: what each rewritten activation is: its forward, its gradient (PyTorch's kernels)
#: and its two derivatives, by ``kind``
_FORWARD = {
    "gelu": lambda x: F.gelu(x),
    "gelu-tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": lambda x: F.silu(x),
}
_GRADIENT = {
    "gelu": lambda g, x: torch.ops.aten.gelu_backward(g, x),
    "gelu-tanh": lambda g, x: torch.ops.aten.gelu_backward(g, x, approximate="tanh"),
    "silu": lambda g, x: torch.ops.aten.silu_backward(g, x),
}
_DERIVATIVES = {
    "gelu": gelu_derivatives,
    "gelu-tanh": lambda x: gelu_derivatives(x, "tanh"),
    "silu": silu_derivatives,
}


class _ActivationGrad(torch.autograd.Function):
    """``f'(x) · g`` (PyTorch's kernel), differentiated in closed form: its derivative in
    ``g`` is ``f'(x)`` and in ``x`` ``f''(x) · g``, both computed here, where the
    gradient graph is built, and kept instead of ``x`` and ``g``."""

    @staticmethod
    def forward(ctx: Any, g: torch.Tensor, x: torch.Tensor, kind: str) -> torch.Tensor:
        d1, d2 = _DERIVATIVES[kind](x)
        ctx.save_for_backward(d1, d2.mul_(g))
        return _GRADIENT[kind](g, x)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, u: torch.Tensor):
        d1, d2g = ctx.saved_tensors
        need_g, need_x, _ = ctx.needs_input_grad
        return d1 * u if need_g else None, d2g * u if need_x else None, None


class _Activation(torch.autograd.Function):
    """``f(x)`` (PyTorch's kernel) whose gradient, built with ``create_graph``, is
    :class:`_ActivationGrad`."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, kind: str) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.kind = kind
        return _FORWARD[kind](x)

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor):
        (x,) = ctx.saved_tensors
        if not torch.is_grad_enabled():  # a backward pass not to be differentiated
            return _GRADIENT[ctx.kind](g, x), None
        return _ActivationGrad.apply(g, x, ctx.kind), None


def _kind(func: Any, args: tuple, kwargs: dict) -> tuple[torch.Tensor, str] | None:
    """``(input, kind)`` of a call to rewrite, or ``None``."""
    if func is F.gelu:
        x = args[0] if args else kwargs.get("input")
        approximate = kwargs.get("approximate", "none")
        kind = {"none": "gelu", "tanh": "gelu-tanh"}.get(approximate)
    elif func is F.silu:
        x = args[0] if args else kwargs.get("input")
        inplace = args[1] if len(args) > 1 else kwargs.get("inplace", False)
        kind = None if inplace else "silu"  # an in-place call keeps its semantics
    else:
        return None
    if kind is None or not isinstance(x, torch.Tensor):
        return None
    if not (x.requires_grad and x.is_floating_point()):
        return None
    return x, kind


class ClosedFormActivations(torch.overrides.TorchFunctionMode):
    """Within it, ``torch.nn.functional.gelu`` and ``silu`` (and so ``nn.GELU`` and
    ``nn.SiLU``, not in place) on a tensor that requires grad run as
    :class:`_Activation`, whose second derivative is in closed form. :attr:`used` says
    whether any call did.

    For a graph that reverse-mode autograd differentiates twice (the Hessian's
    reverse-over-reverse products); not for :mod:`torch.func` transforms, and a
    product's result cannot be differentiated a third time.
    """

    def __init__(self) -> None:
        super().__init__()
        self.used = False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if torch.is_grad_enabled():
            found = _kind(func, args, kwargs)
            if found is not None:
                self.used = True
                return _Activation.apply(*found)
        return func(*args, **kwargs)
