"""Matrix-free curvature operators of (model, loss, data): Hessian, GGN, empirical Fisher.

Every product is an exact average over the whole dataset's loss terms (rows, or
predicted tokens; see :mod:`spectorch.curvature._objectives`): each batch contributes
the product of its *summed* loss, accumulated in float64, and the total is divided by
the number of terms, so the result does not depend on how the data is cut into
batches or padded (never a mean of per-batch means).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import types
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, functionalize, grad, jvp, vjp, vmap

from spectorch.curvature._activations import ClosedFormActivations
from spectorch.curvature._blocks import select_parameters
from spectorch.curvature._objectives import Objective, Supervised

__all__ = [
    "OPERATORS",
    "CurvatureOperator",
    "EmpiricalFisherOperator",
    "GGNOperator",
    "HessianOperator",
    "make_operator",
]

log = logging.getLogger("spectorch.curvature")

_TRAIN_MODES = ("refuse", "allow")
#: layers whose output depends on train mode (batch statistics, random masks)
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
_STOCHASTIC = (
    *_BATCHNORMS,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.FeatureAlphaDropout,
)
_REDUCTIONS = ("mean", "sum")
_HVP_MODES = ("forward", "reverse")
Batch = Any


class CurvatureOperator:
    """Base class: a symmetric ``P × P`` curvature matrix of a network, matrix-free.

    The dataset objective is ``L(θ) = (1/N) Σᵢ ℓ(f(xᵢ; θ), yᵢ)`` when the loss averages
    over its batch (``reduction="mean"``, PyTorch's default) and ``Σᵢ ℓᵢ`` when it sums.
    ``θ`` is the flat vector of the selected parameters in ``model.named_parameters()``
    order; ``P`` is its length.

    Args:
        model: the network, an ``nn.Module``.
        loss_fn: ``loss_fn(outputs, targets)`` returning a scalar, e.g.
            ``nn.CrossEntropyLoss()``, for ``(inputs, targets)`` batches (the model is
            called as ``model(inputs)``); or an :class:`~spectorch.curvature.Objective`
            for any batch and any model output (:class:`~spectorch.curvature.CausalLM`
            for language-model batches, :class:`~spectorch.curvature.BatchLoss` for a
            function ``loss(forward, batch) -> (loss_sum, count)``), averaged over
            its loss terms.
        data: a re-iterable collection of batches (a list, a ``DataLoader``); it is
            read once per product.
        params: the parameters to differentiate: a list of names (in that order), or
            any selection of :func:`~spectorch.curvature.select_parameters` (globs
            such as ``"h.*.attn.*"``, module types, predicates; model order); default
            all parameters with ``requires_grad``. The operator is then the principal
            sub-matrix on those parameters (see :meth:`restrict`).
        reduction: ``"mean"`` or ``"sum"``; default the loss's own ``reduction``
            attribute, else ``"mean"``.
        train_mode: a model in train mode with BatchNorm or dropout is refused
            (``"refuse"``) because its curvature would change from batch to batch and
            from call to call; ``"allow"`` takes it as it is.
        dtype: the accumulation dtype of products (float64 by default); the network
            runs in its own dtype.

    Raises:
        TypeError: if ``model`` is not an ``nn.Module``, ``loss_fn`` is not callable or
            ``data`` is a one-shot iterator.
        ValueError: on an unknown parameter name, ``reduction`` or ``train_mode``, a
            model in train mode with BatchNorm/dropout, or a first batch on which the
            model and loss cannot be evaluated.
    """

    #: short name used by the registry, the CLI and manifests
    name = "curvature"

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[torch.Tensor, Any], torch.Tensor],
        data: Iterable[Batch],
        *,
        params: Iterable[str] | None = None,
        reduction: str | None = None,
        train_mode: str = "refuse",
        dtype: torch.dtype = torch.float64,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(loss_fn, Objective) and not callable(loss_fn):
            raise TypeError(
                f"loss_fn must be callable or an Objective, got {type(loss_fn).__name__}"
            )
        if train_mode not in _TRAIN_MODES:
            raise ValueError(f"train_mode must be one of {list(_TRAIN_MODES)}, got {train_mode!r}")
        if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        _check_reiterable(data)
        self.model = model
        self.loss_fn = loss_fn
        self.data = data
        self.train_mode = train_mode
        self._dtype = dtype
        self.reduction = _resolve_reduction(loss_fn, reduction)
        #: how each batch becomes loss terms (a plain loss_fn is :class:`Supervised`)
        self.objective = (
            loss_fn if isinstance(loss_fn, Objective) else Supervised(loss_fn, self.reduction)
        )
        if not self.objective.splits and self.name != "hessian":
            raise ValueError(
                f"the {self.name} operator needs the outputs and the loss apart; "
                f"{type(self.objective).__name__} gives only the loss: use an Objective "
                "(Supervised, CausalLM or a subclass) or the Hessian"
            )

        named = dict(model.named_parameters())
        if params is None:
            names = [k for k, p in named.items() if p.requires_grad]
        elif isinstance(params, (list, tuple)) and all(
            isinstance(k, str) and not any(c in k for c in "*?[") for k in params
        ):
            names = list(params)
            unknown = [k for k in names if k not in named]
            if unknown:
                raise ValueError(
                    f"params names {unknown} are not parameters of the model; valid names "
                    f"start with {list(named)[:5]}"
                )
        else:
            names = select_parameters(model, params, what="params")
        if not names:
            raise ValueError("the model has no parameters to differentiate (params is empty)")
        self.param_names = names
        #: the settings :meth:`restrict` builds a block's operator with
        self._settings: dict[str, Any] = {
            "reduction": reduction,
            "train_mode": train_mode,
            "dtype": dtype,
        }
        self._shapes = [tuple(named[k].shape) for k in names]
        self._numels = [named[k].numel() for k in names]
        self._dim = sum(self._numels)
        first = named[names[0]]
        self._device = first.device
        self._net_dtype = first.dtype
        self._tangent_buffer: torch.Tensor | None = None
        #: the buffer's blocks in the parameters' shapes, made once with it
        self._tangent_views: tuple[torch.Tensor, ...] = ()
        self._stochastic = [
            (name, m) for name, m in model.named_modules() if isinstance(m, _STOCHASTIC)
        ]
        self._check_train_mode()
        self._check_first_batch()

    # ------------------------------------------------------------------ contract
    @property
    def shape(self) -> tuple[int, int]:
        return (self._dim, self._dim)

    @property
    def dtype(self) -> torch.dtype:
        return self._dtype

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype the network computes in, which bounds the products' accuracy."""
        return self._net_dtype

    def matvec(self, v: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
        """The product ``C v`` for a flat vector ``v`` of shape ``(P,)``, in ``self.dtype``.

        ``out``: a tensor of shape ``(P,)`` in ``self.dtype`` on the operator's device to
        write the product into (and return), instead of a new one; it must not overlap
        ``v``. Lanczos passes a vector it reuses from step to step: at 10⁸ parameters a
        new 800 MB result costs more (page faults) than the arithmetic on it.
        """
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"v must be a torch.Tensor, got {type(v).__name__}")
        if tuple(v.shape) != (self._dim,):
            raise ValueError(f"v must have shape ({self._dim},), got {tuple(v.shape)}")
        if out is not None:
            self._check_out(out, (self._dim,), v)
            self._product(v.reshape(self._dim, 1), batched=False, out=out.reshape(self._dim, 1))
            return out
        return self._product(v.reshape(self._dim, 1), batched=False).reshape(self._dim)

    def loss(self, shift: torch.Tensor | None = None) -> float:
        """The loss over this operator's data (its ``reduction``) at the weights
        ``θ + shift`` (``shift`` a flat vector of shape ``(P,)`` in parameter order;
        ``None``: at ``θ``), without changing the model: a loss landscape's values."""
        self._check_train_mode()
        params = self._params()
        if shift is not None:
            delta = self.unflatten(shift.to(device=self._device, dtype=self._net_dtype))
            params = {k: v + delta[k] for k, v in params.items()}
        total, count = 0.0, 0
        with torch.no_grad():
            # the data itself (the kept graphs hold the loss at θ only)
            for index, batch, size in CurvatureOperator._batches(self):
                self._index, self._size = index, size
                total += float(self._loss_sum(params, batch))
                count += self._size
        if count == 0:
            raise ValueError("data yielded no batches")
        return total / count if self.reduction == "mean" else total

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """A flat vector of shape ``(P,)`` (an eigenvector, a product) as a dict of
        parameter-shaped views, name → tensor, in this operator's parameter order."""
        if not isinstance(flat, torch.Tensor) or tuple(flat.shape) != (self._dim,):
            got = tuple(flat.shape) if isinstance(flat, torch.Tensor) else type(flat).__name__
            raise ValueError(f"flat must be a tensor of shape ({self._dim},), got {got}")
        return self._as_dict(tuple(t[0] for t in self._unflatten(flat.reshape(1, -1))))

    def _check_out(self, out: Any, shape: tuple[int, ...], source: torch.Tensor) -> None:
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"out must be a torch.Tensor or None, got {type(out).__name__}")
        if tuple(out.shape) != shape or out.dtype != self._dtype or out.device != self._device:
            raise ValueError(
                f"out must have shape {shape}, dtype {self._dtype} and device {self._device}, "
                f"got {tuple(out.shape)}, {out.dtype}, {out.device}"
            )
        if out.untyped_storage().data_ptr() == source.untyped_storage().data_ptr():
            raise ValueError("out must not share memory with the vector it multiplies")

    def matmat(self, V: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
        """``C V`` for a block of shape ``(P, k)``, all columns in one pass over the data.

        Each batch is read and its graph built once for all ``k`` columns. The
        Hessian's default reverse-over-reverse product then differentiates that graph
        once per column, a loop of ``k`` second backward passes (measured as fast as
        ``k`` separate kept-graph products, and faster on the CPU than vmapping the
        second backward pass), and a kept linearisation (``hvp="forward"``,
        ``cache_graphs=True``) runs its probe's part once per column; the
        forward-mode Hessian otherwise, the GGN and the Fisher map the columns with
        ``torch.func.vmap``, one vectorised product per batch, and so does a compiled
        product (``compile=True``), in one compiled program.
        ``out``: as in :meth:`matvec`, shape ``(P, k)`` (any strides).
        """
        if not isinstance(V, torch.Tensor):
            raise TypeError(f"V must be a torch.Tensor, got {type(V).__name__}")
        if V.ndim != 2 or V.shape[0] != self._dim:
            raise ValueError(f"V must have shape ({self._dim}, k), got {tuple(V.shape)}")
        if out is not None:
            self._check_out(out, tuple(V.shape), V)
        return self._product(V, batched=True, out=out)

    def __matmul__(self, x: torch.Tensor) -> torch.Tensor:
        return self.matvec(x) if x.ndim == 1 else self.matmat(x)

    def restrict(self, params: Any) -> CurvatureOperator:
        """The same operator on some of its parameters, the others held fixed: the
        principal sub-matrix of this matrix on their coordinates (a block of Zhang et
        al. 2024). ``params`` is a selection (names, globs, module types, a predicate;
        :func:`~spectorch.curvature.select_parameters`) of this operator's
        parameters; the new operator shares the model, objective, data and settings.

        Raises:
            ValueError: if the selection is empty or holds parameters this operator
                does not differentiate.
        """
        names = select_parameters(self.model, params, what="params")
        outside = [n for n in names if n not in self.param_names]
        if outside:
            raise ValueError(
                f"params {outside[:5]} are not among this operator's parameters; a "
                "block is a subset of them"
            )
        return type(self)(self.model, self.loss_fn, self.data, params=names, **self._settings)

    def to_dense(self, chunk: int = 64) -> torch.Tensor:
        """The full ``P × P`` matrix from ``P`` products, ``chunk`` columns per pass.

        Only for small models: memory and time grow as ``P²``.
        """
        eye = torch.eye(self._dim, dtype=self._dtype, device=self._device)
        cols = [self.matmat(eye[:, i : i + chunk]) for i in range(0, self._dim, chunk)]
        return torch.cat(cols, dim=1)

    def to_scipy(self) -> Any:
        """A ``scipy.sparse.linalg.LinearOperator`` view (float64 numpy in and out)."""
        import numpy as np
        from scipy.sparse.linalg import LinearOperator

        def mv(x: np.ndarray) -> np.ndarray:
            t = torch.as_tensor(np.asarray(x, dtype=np.float64).reshape(-1), device=self._device)
            return self.matvec(t).cpu().numpy()

        return LinearOperator(self.shape, matvec=mv, rmatvec=mv, dtype=np.float64)

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly description for manifests."""
        extra = {"hvp": self._settings["hvp"]} if "hvp" in self._settings else {}
        if self._math_attention:
            extra["attention"] = "math"
        if self._settings.get("compile"):
            error = getattr(self, "compile_error", None)
            extra["compile"] = f"failed, eager ({error})" if error else True
        return extra | {
            "operator": self.name,
            "model": type(self.model).__name__,
            "parameters": self._dim,
            "loss": self.objective.describe(),
            "reduction": self.reduction,
            "network_dtype": str(self._net_dtype).replace("torch.", ""),
            "accumulation_dtype": str(self._dtype).replace("torch.", ""),
            "device": str(self._device),
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(P={self._dim}, model={type(self.model).__name__}, "
            f"reduction={self.reduction!r}, dtype={self._dtype})"
        )

    # ------------------------------------------------------------------ internals
    def _batch_products(
        self, params: dict[str, torch.Tensor], batch: Any, tangents: Any
    ) -> tuple[torch.Tensor, ...]:
        """Per-batch products of the batch's summed loss, for stacked tangents."""
        raise NotImplementedError

    def _product(
        self, V: torch.Tensor, *, batched: bool, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        total, count = self.accumulate(V, batched=batched, out=None if out is None else out.T)
        if count == 0:
            raise ValueError("data yielded no batches")
        if self.reduction == "mean":
            total /= count
        return total.T

    def accumulate(
        self, V: torch.Tensor, *, batched: bool, out: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, int]:
        """The per-batch accumulation behind every product, a public seam: the
        unnormalised sum over this operator's data of the weighted batch products of
        the columns of ``V`` (``(P, k)``), shape ``(k, P)`` in ``self.dtype``, and the
        number of samples. ``matmat`` is its transpose divided by that number (for a
        mean loss); a distributed product
        (:class:`spectorch.distributed.DistributedOperator`) adds both over ranks first.
        ``batched=True`` maps the columns with ``vmap``, ``False`` takes one column.
        ``out``: a ``(k, P)`` tensor in ``self.dtype`` to write the sum into (checked
        by :meth:`matvec` and :meth:`matmat`); default a new one.
        """
        self._check_train_mode()
        k = V.shape[1]
        rows = self._tangent_rows(V)
        if batched:
            tangents = self._unflatten(rows)
        elif rows is self._tangent_buffer:  # its blocks' views, made once
            single = self._tangent_views
        else:  # one column: its blocks in the parameters' shapes, views of the row
            single = self._views(rows[0])
        params = self._params_for_products()
        # written by the first batch's products, added to by the others
        if out is None:
            out = torch.empty(k, self._dim, dtype=self._dtype, device=self._device)
        count = 0
        first = True
        # the running sum's total after each batch, on the device: read once at the
        # end (one transfer, not a wait for the device per batch) to name the first
        # batch whose product has NaN or inf entries
        totals: list[torch.Tensor] = []
        indices: list[int] = []
        for index, batch, size in self._batches():
            # a BatchLoss tells its count only when evaluated: the product sets _size
            self._index, self._size = index, size

            def compute(batch: Any = batch) -> tuple[torch.Tensor, ...]:
                if batched:
                    return self._batch_products(params, batch, tangents)
                return self._batch_products_single(params, batch, single)

            # the blocks (k, *shape) of a block of columns, or one column's (*shape)
            prods = self._with_attention_fallback(compute)
            # the sum is a value: a block's product that still hangs on a graph (the
            # GGN's or the Fisher's of a restricted block, through the parameters
            # held fixed) does not pass its graph on to the product
            with torch.no_grad():
                if first and out.is_contiguous():
                    # written into the float64 sum in one call, no flat copy: a loop over
                    # the blocks is three calls a parameter, a millisecond a product for
                    # a GPT of a hundred parameter tensors (benchmarks/bench_scale.py)
                    torch.cat([p.reshape(k, -1) for p in prods], dim=1, out=out)
                else:  # each block added into its slice of the float64 sum
                    start = 0
                    for p, numel in zip(prods, self._numels, strict=True):
                        block, piece = out[:, start : start + numel], p.reshape(k, numel)
                        if first:
                            block.copy_(piece)
                        else:
                            block.add_(piece)
                        start += numel
            first = False
            # NaN or inf in this batch's product makes the running sum non-finite
            totals.append(out.detach().sum())
            indices.append(index)
            count += self._size
        if totals:
            # one batch: no stack (a kernel and, for a GPT, a tenth of the overhead)
            finite = torch.isfinite(totals[0] if len(totals) == 1 else torch.stack(totals))
            finite = finite.tolist() if len(totals) > 1 else [bool(finite)]
            if not all(finite):
                raise FloatingPointError(
                    f"the {self.name} product of batch {indices[finite.index(False)]} has "
                    "NaN or inf entries; check the model, loss and that batch for "
                    "non-finite values"
                )
        if first:  # no batch: an empty sum
            out.zero_()
        return out, count

    def _tangent_rows(self, V: torch.Tensor) -> torch.Tensor:
        """``V``'s columns as rows in the network's dtype. One column to convert goes
        into a buffer kept between products, whose blocks' views are made once with it:
        at 10⁸ parameters a new 400 MB tensor costs more on the CPU (page faults) than
        the conversion itself, and at 10⁴ the views of a new one cost more than the
        conversion (a GPT's 28 blocks: 0.06 ms a product). The products never return
        it (they are added into the result), so reusing it is safe."""
        rows = V.T.to(device=self._device)
        if V.shape[1] != 1 or rows.dtype == self._net_dtype:
            return rows.to(dtype=self._net_dtype)
        if self._tangent_buffer is None:
            buffer = torch.empty(1, self._dim, dtype=self._net_dtype, device=self._device)
            self._tangent_buffer, self._tangent_views = buffer, self._views(buffer[0])
        return self._tangent_buffer.copy_(rows)

    def _views(self, flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """A flat ``(P,)`` vector's blocks in the parameters' shapes, as views."""
        pieces = torch.split(flat, self._numels)
        return tuple(x.view(s) for x, s in zip(pieces, self._shapes, strict=True))

    def _batch_products_single(
        self, params: dict[str, torch.Tensor], batch: Any, tangent: tuple
    ) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    #: whether eval-mode BatchNorm runs as its affine map in the graphs being built
    _affine_batchnorm = False
    #: whether the model called GELU or SiLU in the first graph built with closed forms
    #: (None: none built yet); once it did not, later graphs skip the function mode
    _closed_activations: bool | None = None

    #: whether scaled_dot_product_attention runs on its math kernel (set when the
    #: default kernel turned out to have no second derivative)
    _math_attention = False

    def _attention_kernels(self) -> Any:
        if not self._math_attention:
            return contextlib.nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel(SDPBackend.MATH)

    def _with_attention_fallback(self, compute: Callable[[], Any]) -> Any:
        """Run ``compute``; if the model's ``scaled_dot_product_attention`` kernel
        (the flash or memory-efficient ones) has no derivative for this product, switch
        to its math kernel, which has every derivative, for good (said in the log and
        in :meth:`describe`), and run it again."""
        try:
            with self._attention_kernels():
                return compute()
        except (RuntimeError, NotImplementedError) as exc:
            text = str(exc)
            if self._math_attention or "scaled_dot_product" not in text:
                raise
            if "not implemented" not in text and "does not support" not in text:
                raise
            log.info(
                "%s: the model's attention kernel has no derivative for this product "
                "(%s); using scaled_dot_product_attention's math kernel",
                self.name,
                text.splitlines()[0],
            )
            self._math_attention = True
            drop = getattr(self, "_drop_cache", None)
            if drop is not None:  # graphs built with the other kernel
                drop()
            with self._attention_kernels():
                return compute()

    def _batches(self) -> Iterator[tuple[int, Any, int | None]]:
        """``(index, batch on the device, its number of loss terms)`` of every batch
        (``None`` terms for a :class:`BatchLoss`, known once it is evaluated)."""
        for index, batch in enumerate(self.data):
            batch = _to_device(batch, self._device)
            yield index, batch, self._count(batch, index)

    def _count(self, batch: Any, index: int) -> int | None:
        if not self.objective.splits:
            return None
        try:
            return int(self.objective.count(batch))
        except ValueError as exc:
            raise ValueError(f"batch {index}: {exc}") from exc

    def _params_for_products(self) -> dict[str, torch.Tensor] | None:
        """The parameters the products of :meth:`accumulate` take (an operator whose
        products need none may give ``None``)."""
        return self._params()

    def _params(self) -> dict[str, torch.Tensor]:
        named = dict(self.model.named_parameters())
        return {k: named[k].detach() for k in self.param_names}

    def _unflatten(self, flat: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(k, P)`` → tuple of ``(k, *shape)`` tensors in parameter order."""
        k = flat.shape[0]
        pieces = torch.split(flat, self._numels, dim=1)
        return tuple(p.reshape(k, *s) for p, s in zip(pieces, self._shapes, strict=True))

    def _as_dict(self, values: tuple[torch.Tensor, ...]) -> dict[str, torch.Tensor]:
        return dict(zip(self.param_names, values, strict=True))

    def _bound(self, params: dict[str, torch.Tensor]) -> Callable[..., Any]:
        """``forward(*args, **kwargs)``: the model called with ``params``; while a graph
        to be kept is built, its eval-mode BatchNorm layers run as the affine maps they
        are (:func:`_affine_batchnorm`)."""
        layers = self._stochastic if self._affine_batchnorm else []

        def forward(*args: Any, **kwargs: Any) -> Any:
            with _affine_batchnorms(layers):
                return functional_call(self.model, params, args, kwargs)

        forward.module = self.model  # type: ignore[attr-defined]  # for its signature
        return forward

    def _loss_sum(
        self, params: dict[str, torch.Tensor], batch: Any, *, closed: bool = False
    ) -> torch.Tensor:
        """The batch's summed loss at ``params``; sets ``_size`` for a BatchLoss.
        ``closed``: built so that reverse-mode autograd differentiates it twice in
        closed form where ``closed_form`` allows: the objective's second derivative when
        it has one, and GELU's and SiLU's (:class:`ClosedFormActivations`)."""
        objective = self.objective
        closed = closed and getattr(self, "closed_form", False) is not False
        mode = ClosedFormActivations() if closed and self._closed_activations is not False else None
        with mode if mode is not None else contextlib.nullcontext():
            if closed and objective.splits:
                out = objective.outputs(self._bound(params), batch)
                loss = objective.closed_form_loss_sum(out, batch)
                if loss is None:
                    loss = objective.loss_sum(out, batch)
            else:
                loss, count = objective.evaluate(self._bound(params), batch)
                if self._size is None:
                    self._size = int(count)
        if mode is not None and not self._closed_activations:
            self._closed_activations = mode.used
        return loss

    def _check_train_mode(self) -> None:
        if self.train_mode == "allow" or not self._stochastic:
            return
        active = [(n, m) for n, m in self._stochastic if m.training]
        if active:
            kinds = sorted({type(m).__name__ for _, m in active})
            active = [n for n, _ in active]
            raise ValueError(
                f"the model is in train mode with {', '.join(kinds)} (modules "
                f"{active[:3]}{'...' if len(active) > 3 else ''}): its curvature would change "
                "from batch to batch and call to call; call model.eval() or pass "
                "train_mode='allow'"
            )

    def _check_first_batch(self) -> None:
        try:
            batch = next(iter(self.data))
        except StopIteration:
            raise ValueError("data yielded no batches") from None
        batch = _to_device(batch, self._device)
        if isinstance(self.objective, Supervised):
            Supervised._pair(batch)  # the shape of the batch first, its own message
        try:
            with torch.no_grad():
                if self.objective.splits:
                    out = self.objective.outputs(self.model, batch)
                    loss = self.objective.loss_sum(out, batch)
                    self.objective.count(batch)
                else:
                    loss, _ = self.objective.evaluate(self.model, batch)
        except Exception as exc:  # the user's model and loss may raise anything
            raise ValueError(
                f"the model and loss could not be evaluated on the first batch "
                f"({type(exc).__name__}: {exc}); check that the inputs match the model's "
                "input shape and the targets match the loss"
            ) from exc
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
            raise ValueError(
                f"loss_fn must return a scalar tensor, got {shape}; use reduction='mean' or 'sum'"
            )


def _second_order(fn: Callable, primal: Any, *, reverse: bool) -> Callable:
    """``t ↦ ∇²fn(primal) t`` for a scalar ``fn``: forward-over-reverse (``jvp`` of
    ``grad``), or reverse-over-reverse (``vjp`` of ``grad``, built once and reused for
    every tangent) where PyTorch lacks a forward-mode rule."""
    g = grad(fn)
    if reverse:
        _, pullback = vjp(g, primal)
        return lambda t: pullback(t)[0]
    return lambda t: jvp(g, (primal,), (t,))[1]


#: the operators now keeping gradient graphs: ``cache_graphs="auto"`` shares one budget
#: among them all
_LIVE_CACHES: weakref.WeakSet = weakref.WeakSet()


def _held_by_caches() -> int:
    """Bytes of the gradient graphs every live operator keeps."""
    return sum(op._cache_bytes for op in list(_LIVE_CACHES))


def _available_memory(device: torch.device) -> int:
    """The memory available now on ``device``: CUDA's free memory, or on the CPU the
    kernel's ``MemAvailable`` capped by the process's cgroup limit (v2 ``memory.max``
    or v1 ``memory.limit_in_bytes``, minus what the group uses)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    available = None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if available is None:
        try:
            available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
        except (ValueError, OSError, AttributeError):
            available = 4 << 30
    room = _cgroup_room()
    return available if room is None else min(available, room)


def _cgroup_room(root: str = "/sys/fs/cgroup") -> int | None:
    """The cgroup's memory limit minus its usage, or ``None`` without a limit."""
    for limit_file, usage_file in (
        ("memory.max", "memory.current"),  # cgroup v2
        ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes"),  # v1
    ):
        try:
            with open(os.path.join(root, limit_file)) as fh:
                limit = fh.read().strip()
            with open(os.path.join(root, usage_file)) as fh:
                usage = int(fh.read().strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or int(limit) >= 1 << 60:  # v1 writes "no limit" as ~2^63
            return None
        return max(0, int(limit) - usage)
    return None


def _cache_budget(device: torch.device) -> int:
    """What ``cache_graphs="auto"`` lets all live operators together hold in gradient
    graphs: a quarter of the memory available now plus what they already hold."""
    return (_available_memory(device) + _held_by_caches()) // 4


_SAVED_NAMES: dict[type, list[str]] = {}


def _saved_tensors(roots: list[torch.Tensor]) -> Iterator[torch.Tensor]:
    """Every tensor the autograd graph behind ``roots`` saves for its backward pass,
    found by walking the graph's nodes (their ``_saved_*`` attributes, and the
    ``saved_tensors`` of custom functions). Walking once after building the graph
    costs nothing per product, where saved-tensor hooks would run Python on every
    access of every later backward pass."""
    stack = [g.grad_fn for g in roots if g.grad_fn is not None]
    seen: set = set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names = _SAVED_NAMES.get(type(node))
        if names is None:
            names = _SAVED_NAMES[type(node)] = [n for n in dir(node) if n.startswith("_saved_")]
        values: list[Any] = []
        for name in names:
            with contextlib.suppress(RuntimeError):  # a value already freed
                values.append(getattr(node, name))
        if not names:
            with contextlib.suppress(AttributeError, RuntimeError):
                values.extend(node.saved_tensors)  # a custom autograd.Function
        for v in values:
            if isinstance(v, torch.Tensor):
                yield v
            elif isinstance(v, (tuple, list)):
                yield from (x for x in v if isinstance(x, torch.Tensor))
        stack.extend(fn for fn, _ in node.next_functions)


def _extent(t: torch.Tensor) -> tuple[int, int]:
    """The ``[start, stop)`` bytes of its storage a tensor spans."""
    size = t.element_size()
    start = t.storage_offset() * size
    if t.numel() == 0:
        return start, start
    span = 1 + sum((n - 1) * abs(st) for n, st in zip(t.shape, t.stride(), strict=True))
    return start, start + span * size


def _needs_reverse(exc: RuntimeError) -> bool:
    # torch's forward-mode derivative of some losses' backward (mse_loss among them)
    # writes into an immutable ZeroTensor; reverse-over-reverse has no such rule.
    return "ZeroTensors are immutable" in str(exc)


class _SecondOrderOperator(CurvatureOperator):
    """Shared plumbing of operators whose products differentiate the loss twice.

    Args:
        closed_form: use the objective's closed-form second derivative in the
            outputs (softmax cross-entropy: ``diag(p) − p pᵀ`` per position, in chunks)
            instead of differentiating the loss twice through the softmax: the same
            product without a double-backward graph over the vocabulary. ``"auto"``
            (the default) uses it when the objective has one (:class:`CausalLM`,
            ``nn.CrossEntropyLoss``) and the product can (the GGN always; the Hessian
            with ``hvp="reverse"``), ``True`` requires it, ``False`` never. Unless
            ``False``, the Hessian's reverse-over-reverse products also take the second
            derivatives of GELU (``torch.nn.functional.gelu``, ``nn.GELU``, both
            approximations) and SiLU (``silu``, ``nn.SiLU``, not in place) in closed
            form: the same product, with PyTorch's kernels for the forward pass and
            the gradient, without autograd's double backward of the activation (the
            GPT's kept products in docs/benchmarks.md 1.25-1.43x faster at 10^5-10^6
            parameters). ``False`` differentiates exactly as plain autograd does.
        hvp: how the loss is differentiated twice (the Hessian also takes
            ``"finite-difference"``, see :class:`HessianOperator`). ``"reverse"`` (the
            default):
            reverse-over-reverse, the graph of the first backward pass built once per
            batch and differentiated again per probe; ``"forward"``:
            forward-over-reverse with ``torch.func`` (``jvp`` of ``grad``, vmapped
            over probes). Both are exact; on a CIFAR ResNet on the CPU ``"reverse"``
            was about 1.5x faster per product and 1.8x leaner (docs/benchmarks.md).
            A loss without a forward-mode rule for its double-backward in PyTorch
            (``mse_loss``) switches to ``"reverse"``.
        compile: run the products that build their graphs anew through
            ``torch.compile`` (the ``torch.func`` product of ``hvp``, one compiled
            program per batch shape): the same exact product, 1.2-2x faster on a CPU's
            MLPs and transformers in docs/benchmarks.md, after a compilation of seconds
            to a minute at the first product (and again for a batch of another shape).
            Not for CNNs: no faster there, and less accurate in float32 at 10^7
            parameters.
            The Hessian's kept graphs (``cache_graphs``) stay eager. If compiling fails
            (no C++ compiler, a model ``torch.compile`` cannot trace) the products run
            eagerly, with a warning, and :meth:`describe` says so.
        **kwargs: as :class:`CurvatureOperator`.
    """

    def __init__(
        self,
        *args: Any,
        hvp: str = "reverse",
        closed_form: bool | str = "auto",
        compile: bool = False,
        **kwargs: Any,
    ) -> None:
        if hvp not in _HVP_MODES:
            raise ValueError(f"hvp must be one of {list(_HVP_MODES)}, got {hvp!r}")
        if closed_form not in (True, False, "auto"):
            raise ValueError(f"closed_form must be True, False or 'auto', got {closed_form!r}")
        if not isinstance(compile, bool):
            raise TypeError(f"compile must be True or False, got {compile!r}")
        self._reverse = hvp == "reverse"
        self.closed_form = closed_form
        #: whether the products built anew run compiled (False once compiling failed)
        self.compiled = compile
        #: why compiling failed, if it did
        self.compile_error: str | None = None
        #: the compiled products, by kind (see _program)
        self._programs: dict[str, Callable] = {}
        super().__init__(*args, **kwargs)
        self._settings["hvp"] = hvp
        self._settings["closed_form"] = closed_form
        self._settings["compile"] = compile
        if closed_form is True:
            if not self._reverse and self.name == "hessian":
                raise ValueError("closed_form=True needs hvp='reverse' for the Hessian")
            self._check_closed_form()

    def _check_closed_form(self) -> None:
        batch = _to_device(next(iter(self.data)), self._device)
        with torch.no_grad():
            out = self.objective.outputs(self.model, batch) if self.objective.splits else None
        if out is None or self.objective.output_derivatives(out, batch) is None:
            raise ValueError(
                f"closed_form=True: {self.objective.describe()} has no closed-form "
                "derivatives (CausalLM and nn.CrossEntropyLoss have); use closed_form='auto'"
            )

    def _derivatives(self, out: torch.Tensor, batch: Any) -> Any:
        if self.closed_form is False or not self.objective.splits:
            return None
        return self.objective.output_derivatives(out.detach(), batch)

    def _hvp(self, params, batch) -> Callable:
        raise NotImplementedError

    def _batch_products_single(self, params, batch, tangent):
        if self.compiled:
            prods = self._compiled(params, batch, tuple(t[None] for t in tangent))
            if prods is not None:
                return tuple(p[0] for p in prods)
        return self._retry(lambda: self._hvp(params, batch)(*tangent))

    def _batch_products(self, params, batch, tangents):
        if self.compiled:
            prods = self._compiled(params, batch, tangents)
            if prods is not None:
                return prods
        return self._retry(lambda: vmap(self._hvp(params, batch))(*tangents))

    def _compiled(self, params, batch, tangents) -> tuple[torch.Tensor, ...] | None:
        """The products of ``tangents`` (stacked) by a compiled ``torch.func``
        product; ``None`` (and eager from then on, with a warning) if ``torch.compile``
        fails. One probe goes through a program of one tangent, several through one
        that vmaps the product over them (the gradient's graph built once for all);
        each program takes the parameters, the batch and the tangents as inputs, so
        one compilation serves every product and every batch of that shape."""
        block = tangents[0].shape[0] > 1
        try:
            # a BatchLoss's count, known only once evaluated, cannot be read inside
            if self._size is None:
                with torch.no_grad():
                    self._size = int(self.objective.evaluate(self._bound(params), batch)[1])
            if block:
                return self._program("block")(params, batch, tangents)
            prods = self._program("single")(params, batch, tuple(t[0] for t in tangents))
        except Exception as exc:  # torch.compile's failures have many types
            if "scaled_dot_product" in str(exc):
                raise  # the attention kernel's own fallback (_with_attention_fallback)
            # eagerly from now on: an error of the model itself is raised there again
            self.compiled = False
            self.compile_error = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
            warnings.warn(
                f"{self.name} operator: torch.compile failed ({self.compile_error}); the "
                "products run eagerly (describe() says so)",
                RuntimeWarning,
                stacklevel=4,
            )
            return None
        return tuple(p.unsqueeze(0) for p in prods)

    def _program(self, kind: str) -> Callable:
        """The compiled product of one tangent (``"single"``) or of stacked ones
        (``"block"``), made at its first use."""
        if kind not in self._programs:
            if kind == "single":

                def program(params, batch, tangent):
                    return self._hvp(params, batch)(*tangent)
            else:

                def program(params, batch, tangents):
                    return vmap(self._hvp(params, batch))(*tangents)

            # torch.compile keeps its programs, and its limit of eight, per code object:
            # a copy of the code per operator, so that one operator's programs neither
            # serve another's model nor use up its room (past the limit the products
            # would run eagerly, silently)
            own = program.__code__.replace(co_name=f"{self.name}_{kind}_{id(self):x}")
            program = types.FunctionType(own, program.__globals__, own.co_name, None,
                                         program.__closure__)  # fmt: skip
            self._programs[kind] = torch.compile(program, fullgraph=True)
        return self._programs[kind]

    def _retry(self, compute: Callable):
        try:
            return compute()
        except RuntimeError as exc:
            if self._reverse or not _needs_reverse(exc):
                raise
            self._reverse = True
            return compute()


class HessianOperator(_SecondOrderOperator):
    r"""The Hessian ``∇²_θ L`` of the dataset loss, matrix-free.

    ``H v = ∂/∂ε ∇L(θ + ε v)``. With ``hvp="forward"`` this is one ``torch.func.jvp``
    of ``torch.func.grad`` (forward-over-reverse) and ``matmat`` vmaps it over the
    probes; with ``hvp="reverse"`` the graph of ``∇L`` is built once per batch and
    differentiated once per probe, and (``cache_graphs``) kept for later products.
    Without a kept graph either costs about two to three backward passes per probe.
    Losses whose double-backward has
    no forward-mode rule in PyTorch (``mse_loss``) switch to ``"reverse"`` by
    themselves.

    Args:
        cache_graphs: keep each batch's gradient graph between products
            (``hvp="reverse"``; forward mode: below), so that every later product is a
            single second backward pass (docs/benchmarks.md has the measured gain) and
            the data is not read again. ``"auto"`` (the default) keeps them while the
            graphs of all live operators together fit in a quarter of the memory
            available at construction (within the process's cgroup limit on the
            CPU), counted from the tensors the graphs save (:attr:`cache_bytes`), and
            gives up for good otherwise; ``True`` keeps them whatever the size; ``False`` never. The
            cached batches are those of the first pass; an in-place change of a
            parameter or buffer drops the cache. With ``hvp="forward"``,
            ``cache_graphs=True`` keeps each batch's *linearisation* instead: the
            forward-mode product (``jvp`` of ``grad``) is traced once per batch shape
            (``make_fx``), the part of it that does not depend on the probe runs once
            per batch and its results are kept, and every later product runs only the
            operations on the probe. On the CPU that is at parity with a kept graph
            on transformers (10^4-10^7 parameters; 1.15-1.23x faster before the kept
            graph's GELU was differentiated in closed form) and on MLPs and CNNs, for
            2.1-3.1x its memory (docs/benchmarks.md, "Kept linearisations");
            ``"auto"`` keeps nothing in forward mode. A model that cannot be traced
            (control flow on values) gets eager forward-mode products, with a
            ``RuntimeWarning`` (:attr:`linearize_error`, :meth:`describe`); a loss
            that calls ``mse_loss`` gets kept reverse-mode graphs (tracing its
            forward-mode rule crashes PyTorch 2.13).
        hvp: as :class:`GGNOperator`, or ``"finite-difference"``: central differences
            of two ordinary gradients per probe, ``(∇L(θ + h v) − ∇L(θ − h v)) / 2h``
            with ``h = ε^(1/3) max(1, ‖θ‖) / ‖v‖`` (``ε`` the network dtype's machine
            epsilon), for models whose kernels have no double backward; not exact
            (relative error of order ``ε^(2/3)``, measured in docs/curvature.md), no
            kept graphs.
        **kwargs: as :class:`CurvatureOperator`.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Linear(3, 2).double()
        >>> data = [(torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 2, (8,)))]
        >>> H = HessianOperator(model, nn.CrossEntropyLoss(), data)
        >>> H.shape
        (8, 8)
    """

    name = "hessian"

    def __init__(
        self, *args: Any, cache_graphs: bool | str = "auto", hvp: str = "reverse", **kwargs: Any
    ) -> None:
        if cache_graphs not in (True, False, "auto"):
            raise ValueError(f"cache_graphs must be True, False or 'auto', got {cache_graphs!r}")
        self._finite = hvp == "finite-difference"
        if self._finite:
            if cache_graphs is True:
                raise ValueError("cache_graphs=True goes with hvp='reverse', not finite-difference")
            if kwargs.get("compile") is True:
                raise ValueError(
                    "compile=True goes with hvp='reverse' or 'forward', not finite-difference"
                )
            cache_graphs = False
            kwargs.setdefault("closed_form", False)
        self.cache_graphs = cache_graphs
        self._graphs: dict[int, tuple] = {}
        self._graph_key: list | None = None
        #: the model's modules, walked at every product for the state key (listed
        #: again when a submodule is replaced)
        self._walk: list[nn.Module] | None = None
        self._cache_complete = False
        self._cache_bytes = 0
        #: per storage of the kept graphs, the [start, stop) bytes its saved views span
        self._extents: dict[int, tuple[int, int]] = {}
        super().__init__(*args, hvp="reverse" if self._finite else hvp, **kwargs)
        self._settings["cache_graphs"] = self.cache_graphs
        self._settings["hvp"] = hvp
        #: traced linearised products by batch signature (hvp="forward", cache_graphs=True)
        self._linear_programs: dict[tuple, tuple[Callable, Callable]] = {}
        #: why keeping a linearisation failed, if it did
        self.linearize_error: str | None = None
        if not self._reverse and cache_graphs is not True:
            self.cache_graphs = False  # "auto" keeps reverse-mode graphs only
        self._budget = _cache_budget(self._device) if cache_graphs == "auto" else None

    @property
    def caching(self) -> bool:
        """Whether gradient graphs are being kept (``"auto"`` turns it off for good once
        they outgrow the budget)."""
        return bool(self.cache_graphs)

    def accumulate(
        self, V: torch.Tensor, *, batched: bool, out: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, int]:
        if self.caching:
            # any in-place change of a parameter (an optimiser step) or of a buffer
            # (BatchNorm statistics) bumps its version and drops the kept graphs
            key = self._state_key()
            if key != self._graph_key:
                self._walk = None  # a submodule may have been replaced: list them again
                self._drop_cache()
                self._graph_key = self._state_key()
        return super().accumulate(V, batched=batched, out=out)

    def _state_key(self) -> list:
        """What the kept graphs were built from: every module's children (by
        identity) and its parameters' and buffers' (data pointer, version). A walk over
        a kept list of the modules, without ``named_modules``' prefixes and memo: a
        third of the time, which matters where a product takes milliseconds (a
        12-layer GPT: 0.16 ms against 0.53 ms a product)."""
        if self._walk is None:
            self._walk = list(self.model.modules())
        key: list = []
        for m in self._walk:
            key.append(tuple(map(id, m._modules.values())))
            for t in (*m._parameters.values(), *m._buffers.values()):
                if t is not None:
                    key.append((t.data_ptr(), t._version))
        return key

    def _params_for_products(self) -> dict[str, torch.Tensor] | None:
        # every batch's graph kept: the products differentiate those graphs and never
        # read the parameters, which take a walk over the model to list
        if self._reverse and not self._finite and self.caching and self._cache_complete:
            return None
        return self._params()

    def _drop_cache(self) -> None:
        self._graphs.clear()
        self._cache_complete = False
        self._cache_bytes = 0
        self._extents.clear()
        _LIVE_CACHES.discard(self)

    @property
    def cache_bytes(self) -> int:
        """Bytes held by the kept gradient graphs: each storage their saved tensors
        use counted once, by the bytes its saved views span (a batch that is a slice
        of a bigger data tensor counts as the slice), the parameters themselves not
        counted. ``cache_graphs="auto"`` stops keeping graphs once the graphs of all
        live operators together pass a quarter of the memory available (the CPU's,
        within the process's cgroup limit, or the GPU's)."""
        return self._cache_bytes

    def _count_graph(self, grads: list[torch.Tensor], skip: set[int]) -> None:
        """Add the bytes of a newly kept graph's saved tensors to the cache's count."""
        self._count_tensors(_saved_tensors(grads), skip)

    def _count_tensors(self, tensors: Iterable[torch.Tensor], skip: set[int]) -> None:
        """Add the bytes of newly kept tensors to the cache's count, each storage
        once (the storages in ``skip`` not at all)."""
        for t in tensors:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            ptr = storage.data_ptr()
            if ptr in skip or storage.nbytes() == 0:
                continue
            start, stop = _extent(t)
            stop = min(stop, storage.nbytes())
            lo, hi = self._extents.get(ptr, (start, stop))
            self._extents[ptr] = (min(lo, start), max(hi, stop))
        self._cache_bytes = sum(hi - lo for lo, hi in self._extents.values())

    def _batches(self) -> Iterator[tuple[int, Any, int | None]]:
        if self.caching and self._cache_complete:
            # every batch's graph is kept: the data need not be read at all
            for index, (*_, size) in self._graphs.items():
                yield index, None, size
            return
        yield from super()._batches()
        self._cache_complete = self.caching

    def _count(self, batch: Any, index: int) -> int | None:
        count = super()._count(batch, index)
        if count is None and not self._reverse:  # forward mode: a BatchLoss's count now
            with torch.no_grad():
                count = int(self.objective.evaluate(self.model, batch)[1])
        return count

    def _hvp(self, params, batch) -> Callable:
        def loss(p: dict[str, torch.Tensor]) -> torch.Tensor:
            return self._loss_sum(p, batch)

        hvp = _second_order(loss, params, reverse=self._reverse)

        def product(*t: torch.Tensor) -> tuple[torch.Tensor, ...]:
            hv = hvp(self._as_dict(t))
            return tuple(hv[k] for k in self.param_names)

        return product

    def _batch_products_single(self, params, batch, tangent):
        if self._finite:
            prods = self._finite_difference(params, batch, tuple(t[None] for t in tangent))
            return tuple(p[0] for p in prods)
        if not self._reverse and self.caching:
            prods = self._linearized(params, batch, tuple(t[None] for t in tangent))
            if prods is not None:
                return tuple(p[0] for p in prods)
        if not self._reverse or (self.compiled and not self.caching):
            return super()._batch_products_single(params, batch, tangent)
        leaves, grads, live = self._gradient_graph(params, batch)
        hv = torch.autograd.grad(
            [grads[i] for i in live],
            leaves,
            grad_outputs=[tangent[i] for i in live],
            retain_graph=self.caching,
            allow_unused=True,
        )
        return tuple(
            torch.zeros_like(t) if h is None else h for h, t in zip(hv, tangent, strict=True)
        )

    def _batch_products(self, params, batch, tangents):
        if self._finite:
            return self._finite_difference(params, batch, tangents)
        if not self._reverse and self.caching:
            prods = self._linearized(params, batch, tangents)
            if prods is not None:
                return prods
        if not self._reverse or (self.compiled and not self.caching):
            return super()._batch_products(params, batch, tangents)
        return self._double_backward(params, batch, tangents)

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        if self.linearize_error is not None:
            out["cache_graphs"] = f"failed, not kept ({self.linearize_error})"
        return out

    def _linearized(self, params, batch, tangents) -> tuple[torch.Tensor, ...] | None:
        """The products of ``tangents`` (stacked) from the batch's kept linearisation,
        made (and counted in :attr:`cache_bytes`) at the batch's first product;
        ``None`` when the product could not be traced: the products are then eager
        forward-mode ones from now on (with a warning), or reverse-over-reverse ones
        with kept graphs for a loss that has no forward-mode rule."""
        kept = self._graphs.get(self._index)
        if kept is None:
            fixed = self._fixed_tensors()
            try:
                primal, product = self._linear_program(params, fixed, batch, tangents)
            except Exception as exc:  # make_fx and functionalize fail in many ways
                if "scaled_dot_product" in str(exc):
                    raise  # the attention kernel's own fallback (_with_attention_fallback)
                self._drop_cache()
                if isinstance(exc, _NoForwardRule) or (
                    isinstance(exc, RuntimeError) and _needs_reverse(exc)
                ):
                    log.info(
                        "%s: the loss (%s) has no traceable forward-mode second derivative; "
                        "keeping reverse-mode graphs instead",
                        self.name,
                        exc,
                    )
                    self._reverse = True  # as _retry: reverse-over-reverse, graphs kept
                    return None
                self.cache_graphs = False
                self.linearize_error = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
                warnings.warn(
                    f"{self.name} operator: the forward-mode product could not be traced "
                    f"({self.linearize_error}); no linearisation is kept and the products "
                    "run eagerly (describe() says so)",
                    RuntimeWarning,
                    stacklevel=5,
                )
                return None
            inputs = [*(params[k] for k in self.param_names), *fixed, *_tensor_leaves(batch)]
            with torch.no_grad():
                values = tuple(primal(*inputs))
            own = {t.untyped_storage().data_ptr() for t in [*params.values(), *fixed]}
            self._count_tensors(values, own)
            _LIVE_CACHES.add(self)
            kept = self._graphs[self._index] = (product, values, self._size)
        product, values, _ = kept
        k = tangents[0].shape[0]
        with torch.no_grad():
            columns = [product(*values, *(t[j] for t in tangents)) for j in range(k)]
        if k == 1:
            return tuple(h.unsqueeze(0) for h in columns[0])
        return tuple(torch.stack(hs) for hs in zip(*columns, strict=True))

    def _fixed_tensors(self) -> list[torch.Tensor]:
        """The model's tensors that are not differentiated (buffers, and parameters
        outside ``params``), in :meth:`_fixed_names` order: inputs of the traced
        product, so that a change of their values never serves a stale trace."""
        named = {**dict(self.model.named_parameters()), **dict(self.model.named_buffers())}
        return [named[k].detach() for k in self._fixed_names()]

    def _fixed_names(self) -> list[str]:
        chosen = set(self.param_names)
        names = [k for k, _ in self.model.named_parameters() if k not in chosen]
        return names + [k for k, _ in self.model.named_buffers()]

    def _linear_program(self, params, fixed, batch, tangents) -> tuple[Callable, Callable]:
        """``(primal, product)`` for batches of this one's signature, traced at the
        first: ``primal(*params, *fixed, *batch tensors)`` returns the values that
        ``product(*values, *probe)`` needs besides the probe."""
        leaves = _tensor_leaves(batch)
        key = (*((tuple(t.shape), t.dtype) for t in leaves), _structure(batch))
        if key in self._linear_programs:
            return self._linear_programs[key]
        names, fixed_names = self.param_names, self._fixed_names()
        n, m = len(names), len(fixed)
        objective = self.objective

        def loss(p: dict[str, torch.Tensor], b: Any) -> torch.Tensor:
            forward = self._bound(p)
            if objective.splits:
                return objective.loss_sum(objective.outputs(forward, b), b)
            return objective.evaluate(forward, b)[0]

        def flat_product(*xs: torch.Tensor) -> list[torch.Tensor]:
            p = dict(zip(names, xs[:n], strict=True))
            rest = dict(zip(fixed_names, xs[n : n + m], strict=True))
            b = _rebuild(batch, list(xs[n + m : n + m + len(leaves)]))
            v = dict(zip(names, xs[n + m + len(leaves) :], strict=True))

            def of(q: dict[str, torch.Tensor]) -> torch.Tensor:
                return loss({**rest, **q}, b)

            hv = _second_order(of, p, reverse=False)(v)
            return [hv[k] for k in names]

        from torch.fx.experimental.proxy_tensor import make_fx

        # make_fx crashes the process (a segmentation fault, torch 2.13) on the
        # forward-mode derivative of mse_loss's backward: such a loss is not traced
        with torch.no_grad(), _Calls() as calls, self._attention_kernels():
            loss({**dict(zip(fixed_names, fixed, strict=True)), **params}, batch)
        if calls.seen & _UNTRACEABLE:
            raise _NoForwardRule(", ".join(sorted(f.__name__ for f in calls.seen & _UNTRACEABLE)))
        example = [*(params[k] for k in names), *fixed, *leaves, *(t[0] for t in tangents)]
        # eval-mode BatchNorm as its affine map: fewer operations on the probe
        self._affine_batchnorm = True
        try:
            with torch.enable_grad(), self._attention_kernels():
                traced = make_fx(functionalize(flat_product, remove="mutations"))(*example)
        finally:
            self._affine_batchnorm = False
        program = _split_on_probe(traced, n)
        self._linear_programs[key] = program
        return program

    def _gradient(self, params: dict[str, torch.Tensor], batch: Any) -> list[torch.Tensor]:
        """The batch's gradient at ``params`` by one ordinary backward pass."""
        leaves = [params[k].detach().requires_grad_(True) for k in self.param_names]
        with torch.enable_grad():
            loss = self._loss_sum(self._as_dict(tuple(leaves)), batch)
            grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        return [torch.zeros_like(x) if g is None else g for g, x in zip(grads, leaves, strict=True)]

    def _finite_difference(self, params, batch, tangents):
        """``H v ≈ (∇L(θ + h v) − ∇L(θ − h v)) / 2h``: central differences of two
        ordinary gradients per probe, for models whose kernels have no double backward.
        ``h = ε^(1/3) max(1, ‖θ‖) / ‖v‖`` with ``ε`` the network dtype's machine
        epsilon, which balances truncation (``h²``) against round-off (``ε / h``): a
        relative error of order ``ε^(2/3)`` (docs/curvature.md has the measured one)."""
        eps = torch.finfo(self._net_dtype).eps
        theta = math.sqrt(sum(float(p.double().square().sum()) for p in params.values()))
        out = [torch.zeros_like(t) for t in tangents]
        for j in range(tangents[0].shape[0]):
            v = [t[j] for t in tangents]
            norm = math.sqrt(sum(float(x.double().square().sum()) for x in v))
            if norm == 0.0:
                continue
            h = eps ** (1.0 / 3.0) * max(1.0, theta) / norm
            names = self.param_names
            plus = self._gradient(
                {k: params[k] + h * x for k, x in zip(names, v, strict=True)}, batch
            )
            minus = self._gradient(
                {k: params[k] - h * x for k, x in zip(names, v, strict=True)}, batch
            )
            for i, (a, b) in enumerate(zip(plus, minus, strict=True)):
                out[i][j] = (a - b) / (2.0 * h)
        return tuple(out)

    def _double_backward(self, params, batch, tangents):
        """Reverse-over-reverse with plain autograd: the graph of ``∇L`` is built once
        per batch and differentiated again for each tangent (``retain_graph``), which
        beats vmapping the second backward pass."""
        leaves, grads, live = self._gradient_graph(params, batch)
        k = tangents[0].shape[0]
        out: list[torch.Tensor | None] = [None] * len(tangents)
        for j in range(k):
            hv = torch.autograd.grad(
                [grads[i] for i in live],
                leaves,
                grad_outputs=[tangents[i][j] for i in live],
                retain_graph=self.caching or j < k - 1,
                allow_unused=True,
            )
            for i, h in enumerate(hv):
                if out[i] is None:
                    out[i] = torch.zeros_like(tangents[i])
                if h is not None:
                    out[i][j] = h
        return tuple(out)

    def _gradient_graph(self, params, batch) -> tuple[list, tuple, list]:
        """``(leaves, ∇L, the indices of its blocks that depend on θ)`` of the current
        batch: its kept graph, or one built now (and kept, if caching)."""
        cached = self._graphs.get(self._index) if self.caching else None
        if cached is None:
            leaves = [params[k].detach().requires_grad_(True) for k in self.param_names]
            # A kept graph is differentiated again at every product: eval-mode BatchNorm
            # as an affine map makes that second backward pass cheaper (a CNN's product
            # 1.15-1.6x faster, benchmarks/bench_product_parts.py). A graph used once keeps
            # BatchNorm's own kernel.
            self._affine_batchnorm = self.caching
            try:
                with torch.enable_grad():
                    loss = self._loss_sum(self._as_dict(tuple(leaves)), batch, closed=True)
                    grads = torch.autograd.grad(loss, leaves, create_graph=True, allow_unused=True)
            finally:
                self._affine_batchnorm = False
            # a gradient that is constant in θ (or absent) has a zero Hessian block
            live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
            if self.caching:
                self._count_graph(
                    [grads[i] for i in live], {p.untyped_storage().data_ptr() for p in leaves}
                )
                _LIVE_CACHES.add(self)
                if self._budget is not None and _held_by_caches() > self._budget:
                    self._drop_cache()  # too big: "auto" gives up caching for good
                    self.cache_graphs = False
                else:
                    self._graphs[self._index] = (leaves, grads, live, self._size)
        else:
            leaves, grads, live, _ = cached
        return leaves, grads, live


class GGNOperator(_SecondOrderOperator):
    r"""The generalised Gauss-Newton ``G = Σ Jᵀ (∇²_f ℓ) J`` (Schraudolph 2002).

    ``J`` is the Jacobian of the network's outputs with respect to ``θ`` and
    ``∇²_f ℓ`` the Hessian of the loss with respect to the outputs. ``G`` is positive
    semi-definite for a convex loss; for cross-entropy it equals the Fisher.
    Each product is one forward-mode ``jvp``, one output-space Hessian product and one
    reverse-mode ``vjp`` per batch.
    """

    name = "ggn"

    def _hvp(self, params, batch) -> Callable:
        objective = self.objective

        def f(p: dict[str, torch.Tensor]) -> torch.Tensor:
            return objective.outputs(self._bound(p), batch)

        out, pullback = vjp(f, params)
        derivs = self._derivatives(out, batch)
        if derivs is not None:
            loss_hvp = derivs[1]
        else:
            loss_hvp = _second_order(
                lambda o: objective.loss_sum(o, batch), out.detach(), reverse=self._reverse
            )

        def product(*t: torch.Tensor) -> tuple[torch.Tensor, ...]:
            _, jv = jvp(f, (params,), (self._as_dict(t),))
            back = pullback(loss_hvp(jv))[0]
            return tuple(back[k] for k in self.param_names)

        return product


class EmpiricalFisherOperator(CurvatureOperator):
    r"""The empirical Fisher ``F = (1/N) Σᵢ gᵢ gᵢᵀ`` with ``gᵢ = ∇_θ ℓᵢ`` over the
    ``N`` loss terms (rows; predicted tokens with :class:`CausalLM`).

    No per-term gradient is ever stored: ``F v = (1/N) Jℓᵀ (Jℓ v)`` where ``Jℓ`` is
    the Jacobian of the vector of per-term losses (the objective's ``terms``), one
    ``jvp`` and one ``vjp`` per batch. With a plain ``loss_fn`` the terms are
    ``loss_fn`` applied to each sample as a batch of one. With ``reduction="sum"`` the
    ``1/N`` is dropped.
    """

    name = "fisher"

    def _parts(self, params, batch):
        objective = self.objective

        def losses(p: dict[str, torch.Tensor]) -> torch.Tensor:
            return objective.terms(objective.outputs(self._bound(p), batch), batch).reshape(-1)

        _, pullback = vjp(losses, params)

        def fisher(t: dict[str, torch.Tensor]) -> tuple[torch.Tensor, ...]:
            _, c = jvp(losses, (params,), (t,))
            back = pullback(c)[0]
            return tuple(back[k] for k in self.param_names)

        return fisher

    def _batch_products_single(self, params, batch, tangent):
        fisher = self._parts(params, batch)
        return fisher(self._as_dict(tangent))

    def _batch_products(self, params, batch, tangents):
        fisher = self._parts(params, batch)
        return vmap(lambda *t: fisher(self._as_dict(t)))(*tangents)


#: the registry of curvature operators by name, shared by the library and the CLI
OPERATORS: dict[str, type[CurvatureOperator]] = {
    "hessian": HessianOperator,
    "ggn": GGNOperator,
    "fisher": EmpiricalFisherOperator,
}


def make_operator(
    name: str, model: nn.Module, loss_fn: Callable, data: Iterable[Batch], **kwargs: Any
) -> CurvatureOperator:
    """Build the curvature operator registered under ``name`` (see :data:`OPERATORS`).

    Raises:
        ValueError: on an unknown name; the message lists the valid ones.
    """
    try:
        cls = OPERATORS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown operator {name!r}; choose one of {sorted(OPERATORS)}") from None
    return cls(model, loss_fn, data, **kwargs)


# ---------------------------------------------------------------------- helpers
def _check_reiterable(data: Any) -> None:
    if isinstance(data, torch.Tensor) or not isinstance(data, Iterable):
        raise TypeError(
            "data must be a re-iterable collection of batches, such as a list or a "
            f"DataLoader; got {type(data).__name__}"
        )
    if iter(data) is data:
        raise TypeError(
            f"data is a one-shot iterator ({type(data).__name__}); every product reads the "
            "data again, so pass a list or a DataLoader instead"
        )


def _map_tensors(x: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    """``x`` (a tensor, or tuples, lists and mappings of them) with ``fn`` applied to
    each of its tensors, in order, the structure kept."""
    if isinstance(x, torch.Tensor):
        return fn(x)
    if isinstance(x, (tuple, list)):
        return type(x)(_map_tensors(e, fn) for e in x)
    if isinstance(x, Mapping):
        try:
            return type(x)({k: _map_tensors(v, fn) for k, v in x.items()})
        except TypeError:  # a mapping type that cannot be rebuilt from a dict
            return {k: _map_tensors(v, fn) for k, v in x.items()}
    return x


def _to_device(x: Any, device: torch.device) -> Any:
    return _map_tensors(x, lambda t: t.to(device, non_blocking=True))


#: functions whose forward-mode second derivative make_fx cannot trace (it crashes)
_UNTRACEABLE = frozenset({nn.functional.mse_loss})


class _NoForwardRule(Exception):
    """The loss calls a function in :data:`_UNTRACEABLE`."""


class _Calls(torch.overrides.TorchFunctionMode):
    """Records the torch functions called within it."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.seen.add(func)
        return func(*args, **(kwargs or {}))


def _tensor_leaves(batch: Any) -> list[torch.Tensor]:
    """The tensors of a batch, in the order :func:`_rebuild` takes them back."""
    leaves: list[torch.Tensor] = []
    _map_tensors(batch, leaves.append)
    return leaves


def _rebuild(batch: Any, leaves: list) -> Any:
    """``batch`` with its tensors replaced, in order, by ``leaves`` (consumed)."""
    return _map_tensors(batch, lambda _: leaves.pop(0))


def _structure(batch: Any) -> str:
    """A batch's structure with its tensors left out: with the tensors' shapes and
    dtypes, what a traced product is specific to."""
    if isinstance(batch, torch.Tensor):
        return "T"
    if isinstance(batch, (tuple, list)):
        return f"{type(batch).__name__}({','.join(_structure(e) for e in batch)})"
    if isinstance(batch, Mapping):
        return "{" + ",".join(f"{k!r}:{_structure(v)}" for k, v in batch.items()) + "}"
    return repr(batch)


def _split_on_probe(gm: Any, probes: int) -> tuple[Callable, Callable]:
    """A traced product (its last ``probes`` inputs the probe) split in two graph
    modules: ``primal(*other inputs)`` computes once what does not depend on the probe
    and returns the values the rest reads; ``product(*those values, *probe)`` does
    the rest."""
    from torch import fx

    nodes = list(gm.graph.nodes)
    inputs = [x for x in nodes if x.op == "placeholder"]
    on_probe = set(inputs[len(inputs) - probes :])
    for x in nodes:
        if x.op.startswith("call_") and any(a in on_probe for a in x.all_input_nodes):
            on_probe.add(x)
    output = next(x for x in nodes if x.op == "output")
    needed: dict[Any, None] = {}  # primal values the probe's part reads, in order
    for x in nodes:
        if x in on_probe or x is output:
            needed.update((a, None) for a in x.all_input_nodes if a not in on_probe)
    first, env = fx.Graph(), {}
    for x in nodes:
        if x not in on_probe and x is not output:
            env[x] = first.node_copy(x, lambda a: env[a])
    first.output([env[a] for a in needed])
    first.eliminate_dead_code()
    second, env2 = fx.Graph(), {}
    for i, a in enumerate(needed):
        env2[a] = second.placeholder(f"kept_{i}")
    for x in inputs[len(inputs) - probes :]:
        env2[x] = second.placeholder(x.name)
    for x in nodes:
        if x in on_probe and x.op != "placeholder":
            env2[x] = second.node_copy(x, lambda a: env2[a])
    second.output(fx.map_arg(output.args[0], lambda a: env2[a]))
    second.eliminate_dead_code()  # forward AD's layout checks, whose results go unused
    for graph in (first, second):
        for x in graph.nodes:  # the tracer's example values: not needed, not kept
            x.meta.clear()
    return fx.GraphModule(gm, first), fx.GraphModule(gm, second)


def _resolve_reduction(loss_fn: Any, reduction: str | None) -> str:
    if isinstance(loss_fn, Supervised):
        own = loss_fn.reduction
    elif isinstance(loss_fn, Objective):
        own = None  # the operator says whether its terms are averaged or summed
    else:
        own = getattr(loss_fn, "reduction", None)
    if reduction is None:
        reduction = own if own is not None else "mean"
    elif own is not None and own != reduction:
        raise ValueError(
            f"reduction={reduction!r} contradicts the loss's own reduction={own!r}; "
            "leave reduction unset"
        )
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {list(_REDUCTIONS)}, got {reduction!r}")
    return reduction


def _affine_batchnorm(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """An eval-mode BatchNorm written as the affine map it is,
    ``x · γ/√(σ² + ε) + (β − μ γ/√(σ² + ε))`` per channel: the same function of the
    input and of ``γ, β`` (so the same derivatives, to round-off), whose second
    derivatives are two element-wise products instead of BatchNorm's general double
    backward (which also serves train mode)."""
    shape = (1, -1) + (1,) * (x.dim() - 2)
    scale = torch.rsqrt(self.running_var + self.eps)
    if self.weight is not None:
        scale = scale * self.weight
    shift = -self.running_mean * scale
    if self.bias is not None:
        shift = shift + self.bias
    return x * scale.reshape(shape) + shift.reshape(shape)


@contextlib.contextmanager
def _affine_batchnorms(modules: list[tuple[str, nn.Module]]) -> Iterator[None]:
    """Within the block, every eval-mode BatchNorm with running statistics among
    ``modules`` computes :func:`_affine_batchnorm` (its own ``forward`` again after)."""
    swapped = []
    try:
        for _, m in modules:
            if (
                isinstance(m, _BATCHNORMS)
                and not m.training
                and m.running_mean is not None
                and "forward" not in vars(m)
            ):
                m.forward = _affine_batchnorm.__get__(m)
                swapped.append(m)
        yield
    finally:
        for m in swapped:
            del m.forward
