"""Objectives: how one batch of data becomes loss terms, for any batch and any model.

A curvature operator averages over **loss terms**: the rows of a supervised batch,
the predicted tokens of a language-model batch (not its padding, not its ignored
labels). An :class:`Objective` says, for one batch,

* ``outputs(forward, batch)``: the network's outputs to differentiate (the logits),
  where ``forward(*args, **kwargs)`` calls the model with the operator's parameters;
* ``loss_sum(outputs, batch)``: the **sum** of the batch's loss terms (a scalar);
* ``terms(outputs, batch)``: the loss terms one by one (any shape; a term that does
  not count is 0), for the empirical Fisher;
* ``count(batch)``: how many terms count, from the batch alone.

The dataset objective is then ``L(θ) = Σ_batches loss_sum / Σ_batches count`` (or the
sum alone with ``reduction="sum"``), so the same data cut into batches of any sizes,
with any padding, gives the same curvature.

Ready objectives: :class:`Supervised` (``(inputs, targets)`` pairs and a PyTorch loss;
what a plain ``loss_fn`` means) and :class:`CausalLM` (language-model batches: dicts
with ``input_ids``, ``attention_mask``, ``labels``, or tensors of token ids; models
returning a tensor, a tuple or an object with ``.logits``). :class:`BatchLoss` wraps a
function ``loss(forward, batch) -> (loss_sum, count)`` (Hessian only: the
Gauss-Newton and the Fisher need the outputs and the terms apart).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.func import vmap

__all__ = [
    "BatchLoss",
    "CausalLM",
    "Objective",
    "Supervised",
    "cross_entropy_derivatives",
    "cross_entropy_sum",
    "logits_of",
]

Forward = Callable[..., Any]


class Objective:
    """How a batch becomes loss terms (see the module's text). Subclass it and define
    :meth:`outputs`, :meth:`loss_sum`, :meth:`count` and, for the empirical Fisher,
    :meth:`terms`."""

    #: a short name for manifests
    name = "objective"

    def outputs(self, forward: Forward, batch: Any) -> torch.Tensor:
        raise NotImplementedError

    def loss_sum(self, outputs: torch.Tensor, batch: Any) -> torch.Tensor:
        raise NotImplementedError

    def closed_form_loss_sum(self, outputs: torch.Tensor, batch: Any) -> torch.Tensor | None:
        """:meth:`loss_sum` built so that reverse-mode autograd differentiates it twice
        in closed form (:func:`cross_entropy_sum`), or ``None`` when there is none."""
        return None

    def terms(self, outputs: torch.Tensor, batch: Any) -> torch.Tensor:
        raise NotImplementedError(
            f"{type(self).__name__} gives no per-term losses, which the empirical Fisher needs"
        )

    def count(self, batch: Any) -> int:
        raise NotImplementedError

    def evaluate(self, forward: Forward, batch: Any) -> tuple[torch.Tensor, int]:
        """``(loss_sum, count)`` of one batch."""
        return self.loss_sum(self.outputs(forward, batch), batch), self.count(batch)

    def output_derivatives(self, outputs: torch.Tensor, batch: Any) -> Any:
        """A closed form of the loss's derivatives in the outputs, when there is one:
        ``(gradient, hessian_product)`` with ``gradient`` the tensor ``∂ loss_sum /
        ∂ outputs`` and ``hessian_product(u)`` giving ``∇²_outputs loss_sum · u``
        without differentiating the loss twice; ``None`` (the default) when there is
        none, and autograd differentiates the loss."""
        return None

    #: whether the outputs and the loss are apart (the Gauss-Newton needs it)
    splits = True

    def default_reduction(self) -> str:
        return "mean"

    def describe(self) -> str:
        return self.name


def logits_of(out: Any) -> torch.Tensor:
    """The logits of a model's output: the tensor itself, ``out.logits`` (a HuggingFace
    ``ModelOutput``), ``out["logits"]``, or the first entry of a tuple."""
    if isinstance(out, torch.Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(out, Mapping) and isinstance(out.get("logits"), torch.Tensor):
        return out["logits"]
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise TypeError(
        f"cannot find the logits in the model's output of type {type(out).__name__}: "
        "expected a tensor, an object with .logits, a dict with 'logits' or a tuple"
    )


#: elements per chunk of the closed-form cross-entropy (rows = this // vocabulary):
#: each chunk holds a few temporaries of this size (16 MB in float32)
CHUNK_ELEMENTS = 1 << 22


def _spans(n: int, width: int) -> list[tuple[int, int]]:
    rows = max(1, CHUNK_ELEMENTS // max(width, 1))
    return [(a, min(a + rows, n)) for a in range(0, n, rows)]


#: rows narrower than this take ``exp(x − logsumexp(x))`` on the CPU rather than
#: ``torch.softmax``, whose CPU kernel is slow on them (torch 2.13, one thread: 4.7 ms
#: against 0.33 ms for 26,214 rows of 10 classes; within 1.35x from 16 classes on)
_NARROW_SOFTMAX = 16


def _softmax(
    x: torch.Tensor, *, out: torch.Tensor | None = None, lse: torch.Tensor | None = None
) -> torch.Tensor:
    """The softmax of ``x``'s rows (into ``out`` if given), from their log-sum-exp
    ``lse`` when the rows are narrow and it is at hand. Half-precision rows keep
    ``torch.softmax``, which computes in float32 (``x − lse`` rounded to bfloat16
    would cost the softmax 0.4% of relative error per unit of ``|x − lse|``)."""
    narrow = x.shape[-1] < _NARROW_SOFTMAX and x.dtype in (torch.float32, torch.float64)
    if not narrow or x.device.type != "cpu":
        return torch.softmax(x, dim=-1) if out is None else torch.softmax(x, dim=-1, out=out)
    if lse is None:
        lse = torch.logsumexp(x, dim=-1)
    return torch.sub(x, lse.unsqueeze(-1), out=out).exp_()


def _ce_gradient(logits: torch.Tensor, labels: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    parts = []
    for a, b in _spans(logits.shape[0], logits.shape[1]):
        p = _softmax(logits[a:b])
        p[torch.arange(b - a, device=p.device), labels[a:b].clamp(min=0)] -= 1.0
        parts.append(p.mul_(w[a:b]))
    return torch.cat(parts) if parts else torch.zeros_like(logits)


def _ce_hessian_product(logits: torch.Tensor, w: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    parts = []
    for a, b in _spans(logits.shape[0], logits.shape[1]):
        p = _softmax(logits[a:b])
        ua = u[a:b]
        parts.append(w[a:b] * p * (ua - (p * ua).sum(-1, keepdim=True)))
    return torch.cat(parts) if parts else torch.zeros_like(u)


def cross_entropy_derivatives(
    logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor
) -> tuple[torch.Tensor, Any]:
    """Closed-form derivatives of ``Σ_i weight_i · CE(logits_i, labels_i)`` over rows
    ``i`` of ``(N, V)`` logits: the gradient ``weight_i (p_i − e_{label_i})`` and the
    Hessian product ``u ↦ weight_i (p_i ⊙ u_i − p_i (p_iᵀ u_i))`` with ``p_i`` the
    softmax of row ``i``: ``diag(p) − p pᵀ`` applied row by row, in chunks of
    :data:`CHUNK_ELEMENTS`, never through a double-backward graph of the softmax."""
    logits = logits.detach()
    w = weight.to(logits.dtype).reshape(-1, 1)
    return _ce_gradient(logits, labels, w), lambda u: _ce_hessian_product(logits, w, u)


def _softmax_product(p: torch.Tensor, w: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``_ce_hessian_product`` from the softmax ``p`` itself, in the same chunks,
    written into one tensor (no concatenation)."""
    out = torch.empty_like(u)
    for a, b in _spans(p.shape[0], p.shape[1]):
        pa, ua = p[a:b], u[a:b]
        torch.mul(pa, ua, out=out[a:b])
        dot = out[a:b].sum(-1, keepdim=True)
        torch.sub(ua, dot, out=out[a:b]).mul_(w[a:b] * pa)
    return out


class _CrossEntropyGrad(torch.autograd.Function):
    """``weight_i (softmax(logits_i) − e_{label_i})``, differentiated in closed form.

    It keeps the softmax rather than the logits (the same size): a graph kept for
    many products, or differentiated once per product, then computes the softmax once,
    not at every product (the softmax was a tenth of an MLP's product on the digits,
    ``benchmarks/bench_scale.py`` at 10^4 parameters)."""

    @staticmethod
    def forward(
        ctx: Any, logits: torch.Tensor, labels: torch.Tensor, w: torch.Tensor, lse: torch.Tensor
    ):
        logits = logits.detach()
        p = torch.empty_like(logits)
        for a, b in _spans(logits.shape[0], logits.shape[1]):
            _softmax(logits[a:b], out=p[a:b], lse=lse[a:b])
        ctx.save_for_backward(p, w)
        g = p.clone()
        g[torch.arange(g.shape[0], device=g.device), labels.clamp(min=0)] -= 1.0
        return g.mul_(w)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, u: torch.Tensor):
        p, w = ctx.saved_tensors
        return _softmax_product(p, w, u), None, None, None


class _CrossEntropySum(torch.autograd.Function):
    """``Σ_i weight_i CE(logits_i, labels_i)`` whose gradient is :class:`_CrossEntropyGrad`:
    differentiated twice, the softmax's second derivative is the closed form, and no
    graph of the softmax over the vocabulary is built."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, labels: torch.Tensor, w: torch.Tensor):
        total = logits.new_zeros(())
        idx = labels.clamp(min=0)
        lse = logits.new_empty(logits.shape[0])  # kept: the gradient's softmax uses it
        for a, b in _spans(logits.shape[0], logits.shape[1]):
            chunk = logits[a:b]
            torch.logsumexp(chunk, dim=-1, out=lse[a:b])
            picked = chunk.gather(1, idx[a:b, None])[:, 0]
            total = total + ((lse[a:b] - picked) * w[a:b, 0]).sum()
        ctx.save_for_backward(logits, labels, w, lse)
        return total

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor):
        logits, labels, w, lse = ctx.saved_tensors
        return grad_out * _CrossEntropyGrad.apply(logits, labels, w, lse), None, None


def cross_entropy_sum(
    logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor
) -> torch.Tensor:
    """``Σ_i weight_i · CE(logits_i, labels_i)`` for ``(N, V)`` logits with plain
    autograd's first derivative and a closed-form second one (reverse mode; not for
    :mod:`torch.func` transforms)."""
    w = weight.to(logits.dtype).reshape(-1, 1)
    return _CrossEntropySum.apply(logits, labels, w)


def _accepts(forward: Forward, key: str) -> bool:
    """Whether the model behind ``forward`` takes the keyword ``key``."""
    import inspect

    target = getattr(forward, "module", forward)
    fn = target.forward if isinstance(target, nn.Module) else target
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return True
    return any(p.kind is p.VAR_KEYWORD or p.name == key for p in params)


def _pads_before_tokens(mask: torch.Tensor) -> bool:
    """Whether some row of an attention mask has a 0 before a 1 (left or inner padding)."""
    m = (mask != 0).to(torch.int8)
    return bool((m[:, 1:] > m[:, :-1]).any())


def _unsqueeze(t: Any) -> Any:
    return t.unsqueeze(0) if isinstance(t, torch.Tensor) else t


class Supervised(Objective):
    """``(inputs, targets)`` batches and a PyTorch loss ``loss_fn(outputs, targets)``:
    the terms are the rows. A loss that averages over its batch (``reduction="mean"``,
    PyTorch's default) is weighted by the batch's rows, one that sums is taken as it
    is. This is what a plain ``loss_fn`` given to an operator means.

    ``inputs`` may be a tensor or a tuple of arguments of the model; the model's output
    goes through :func:`logits_of`.
    """

    name = "supervised"

    def __init__(
        self,
        loss_fn: Callable[[torch.Tensor, Any], torch.Tensor],
        reduction: str | None = None,
    ) -> None:
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}")
        self.loss_fn = loss_fn
        #: ``"mean"`` or ``"sum"``: what ``loss_fn`` does over its batch (default its
        #: own ``reduction`` attribute, else ``"mean"``)
        self.reduction = reduction or getattr(loss_fn, "reduction", None) or "mean"
        if self.reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {self.reduction!r}")

    def default_reduction(self) -> str:
        return self.reduction

    @staticmethod
    def _pair(batch: Any) -> tuple[Any, Any]:
        if isinstance(batch, Mapping) or not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise ValueError(
                "each batch must be an (inputs, targets) pair for a loss_fn(outputs, targets); "
                f"got a {type(batch).__name__}"
                + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
                + " (for other batches pass an Objective, e.g. spectorch.curvature.CausalLM)"
            )
        return batch[0], batch[1]

    def outputs(self, forward: Forward, batch: Any) -> torch.Tensor:
        inputs, _ = self._pair(batch)
        return logits_of(forward(*inputs) if isinstance(inputs, tuple) else forward(inputs))

    def loss_sum(self, outputs: torch.Tensor, batch: Any) -> torch.Tensor:
        _, targets = self._pair(batch)
        loss = self.loss_fn(outputs, targets)
        return loss * self.count(batch) if self.reduction == "mean" else loss

    def terms(self, outputs: torch.Tensor, batch: Any) -> torch.Tensor:
        _, targets = self._pair(batch)

        def per_sample(o: torch.Tensor, t: Any) -> torch.Tensor:
            return self.loss_fn(o.unsqueeze(0), _unsqueeze(t)).reshape(())

        return vmap(per_sample)(outputs, targets)

    def count(self, batch: Any) -> int:
        inputs, targets = self._pair(batch)
        for x in (targets, inputs):
            if isinstance(x, torch.Tensor) and x.ndim > 0:
                return int(x.shape[0])
            if isinstance(x, (tuple, list)) and x and isinstance(x[0], torch.Tensor):
                return int(x[0].shape[0])
        raise ValueError("cannot tell the batch size: inputs and targets have no leading dimension")

    def _ce_weights(self, outputs: torch.Tensor, batch: Any) -> Any:
        """``(targets, row weights)`` when the loss is a plain ``nn.CrossEntropyLoss``
        on ``(N, C)`` logits and class indices (no class weights, no smoothing)."""
        fn = self.loss_fn
        if type(fn) is not nn.CrossEntropyLoss or fn.weight is not None or fn.label_smoothing:
            return None
        _, targets = self._pair(batch)
        if outputs.ndim != 2 or not isinstance(targets, torch.Tensor) or targets.ndim != 1:
            return None
        if targets.is_floating_point():
            return None
        keep = (targets != fn.ignore_index).to(outputs.dtype)
        if self.reduction == "mean":  # loss_sum = rows x the mean over the kept rows
            keep = keep * (self.count(batch) / keep.sum().clamp(min=1))
        return targets, keep

    def output_derivatives(self, outputs: torch.Tensor, batch: Any) -> Any:
        """The closed form for ``nn.CrossEntropyLoss`` on ``(N, C)`` logits and class
        indices (no class weights, no label smoothing); ``None`` otherwise."""
        found = self._ce_weights(outputs, batch)
        return None if found is None else cross_entropy_derivatives(outputs, *found)

    def closed_form_loss_sum(self, outputs: torch.Tensor, batch: Any) -> torch.Tensor | None:
        found = self._ce_weights(outputs, batch)
        return None if found is None else cross_entropy_sum(outputs, *found)

    def describe(self) -> str:
        return getattr(type(self.loss_fn), "__name__", repr(self.loss_fn))


class CausalLM(Objective):
    """Next-token cross-entropy of a causal language model, summed over the predicted
    tokens: position ``t``'s logits predict token ``t + 1``, and a label equal to
    ``ignore_index`` (-100, PyTorch's and HuggingFace's) is not a term.

    Batches may be

    * a dict (HuggingFace's): ``input_ids``, optional ``attention_mask`` and optional
      ``labels`` (default: ``input_ids`` with padding, ``attention_mask == 0``, ignored);
      the model gets ``input_ids`` as its first argument and every other key but
      ``labels`` as a keyword argument, when its ``forward`` takes it (a model that
      takes no ``attention_mask`` is refused a batch padded on the left);
    * a tensor of token ids ``(batch, length)``, all of them predicted;
    * an ``(input_ids, labels)`` pair.

    The model may return the logits, a tuple starting with them, or an object with
    ``.logits``. Terms are counted over the non-ignored labels, so batches of other
    sizes and paddings give the same dataset average.

    Args:
        ignore_index: the label that marks a token that is not predicted.
        shift: labels are the inputs (shift them by one, as HuggingFace's models do);
            ``False`` when ``labels[t]`` is already the target of position ``t``.
        model_keys: the dict keys given to the model (default: all but ``labels``).
    """

    name = "causal-lm"

    def __init__(
        self,
        ignore_index: int = -100,
        *,
        shift: bool = True,
        model_keys: tuple[str, ...] | None = None,
    ) -> None:
        self.ignore_index = int(ignore_index)
        self.shift = bool(shift)
        self.model_keys = None if model_keys is None else tuple(model_keys)

    def _parts(self, batch: Any) -> tuple[dict[str, Any], torch.Tensor]:
        """``(model keyword arguments, labels aligned with the logits)``."""
        if isinstance(batch, torch.Tensor):
            kwargs, labels = {"input_ids": batch}, batch
        elif isinstance(batch, Mapping):
            if "input_ids" not in batch:
                raise ValueError(
                    f"a language-model batch needs 'input_ids', got keys {sorted(batch)}"
                )
            keys = self.model_keys or tuple(k for k in batch if k != "labels")
            kwargs = {k: batch[k] for k in keys}
            labels = batch.get("labels")
            if labels is None:
                labels = batch["input_ids"]
                mask = batch.get("attention_mask")
                if mask is not None:
                    labels = labels.masked_fill(mask == 0, self.ignore_index)
        elif isinstance(batch, (tuple, list)) and len(batch) == 2:
            kwargs, labels = {"input_ids": batch[0]}, batch[1]
        else:
            raise ValueError(
                "a language-model batch must be a tensor of token ids, a dict with "
                f"'input_ids' or an (input_ids, labels) pair; got a {type(batch).__name__}"
            )
        if not isinstance(labels, torch.Tensor) or labels.ndim != 2:
            got = tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels)
            raise ValueError(f"labels must be (batch, length) token ids, got {got}")
        if self.shift:
            labels = labels[:, 1:]
        return kwargs, labels

    def outputs(self, forward: Forward, batch: Any) -> torch.Tensor:
        kwargs, _ = self._parts(batch)
        kwargs = dict(kwargs)
        ids = kwargs.pop("input_ids")
        for key in list(kwargs):
            if _accepts(forward, key):
                continue
            value = kwargs.pop(key)
            if key == "attention_mask" and _pads_before_tokens(value):
                raise ValueError(
                    "the batch is padded before some tokens (left padding), and the model "
                    "takes no attention_mask to skip the pads; pad on the right or give "
                    "the model an attention_mask argument"
                )
        logits = logits_of(forward(ids, **kwargs))
        if logits.ndim != 3:
            raise ValueError(
                f"a causal LM must give logits of shape (batch, length, vocab), got "
                f"{tuple(logits.shape)}"
            )
        return logits[:, :-1] if self.shift else logits

    def terms(self, outputs: torch.Tensor, batch: Any) -> torch.Tensor:
        _, labels = self._parts(batch)
        if outputs.shape[:2] != labels.shape:
            raise ValueError(
                f"logits of shape {tuple(outputs.shape)} do not match labels of shape "
                f"{tuple(labels.shape)}"
            )
        flat = outputs.reshape(-1, outputs.shape[-1])
        return nn.functional.cross_entropy(
            flat, labels.reshape(-1), ignore_index=self.ignore_index, reduction="none"
        ).reshape(labels.shape)

    def loss_sum(self, outputs: torch.Tensor, batch: Any) -> torch.Tensor:
        return self.terms(outputs, batch).sum()

    def count(self, batch: Any) -> int:
        _, labels = self._parts(batch)
        return int((labels != self.ignore_index).sum())

    def closed_form_loss_sum(self, outputs: torch.Tensor, batch: Any) -> torch.Tensor:
        _, labels = self._parts(batch)
        flat, lab = outputs.reshape(-1, outputs.shape[-1]), labels.reshape(-1)
        return cross_entropy_sum(flat, lab, (lab != self.ignore_index).to(outputs.dtype))

    def output_derivatives(self, outputs: torch.Tensor, batch: Any) -> Any:
        _, labels = self._parts(batch)
        flat, lab = outputs.reshape(-1, outputs.shape[-1]), labels.reshape(-1)
        keep = (lab != self.ignore_index).to(outputs.dtype)
        gradient, product = cross_entropy_derivatives(flat, lab, keep)

        def hessian_product(u: torch.Tensor) -> torch.Tensor:
            return product(u.reshape(flat.shape)).reshape(u.shape)

        return gradient.reshape(outputs.shape), hessian_product

    def describe(self) -> str:
        return f"causal-lm(ignore_index={self.ignore_index})"


class BatchLoss(Objective):
    """A function ``loss(forward, batch) -> (loss_sum, count)``: the sum of the batch's
    loss terms and how many there are, with ``forward(*args, **kwargs)`` calling the
    model. The Hessian needs nothing more; the Gauss-Newton and the empirical Fisher
    need an :class:`Objective` with the outputs and the terms apart."""

    name = "batch-loss"
    splits = False

    def __init__(self, fn: Callable[[Forward, Any], tuple[torch.Tensor, int]]) -> None:
        if not callable(fn):
            raise TypeError(f"BatchLoss needs a callable, got {type(fn).__name__}")
        self.fn = fn

    def evaluate(self, forward: Forward, batch: Any) -> tuple[torch.Tensor, int]:
        result = self.fn(forward, batch)
        if not isinstance(result, (tuple, list)) or len(result) != 2:
            raise ValueError(
                f"the BatchLoss function must return (loss_sum, count), got {type(result).__name__}"
            )
        loss, count = result
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise ValueError("the BatchLoss function's loss_sum must be a scalar tensor")
        return loss.reshape(()), int(count)

    def describe(self) -> str:
        return getattr(self.fn, "__qualname__", "batch-loss")
