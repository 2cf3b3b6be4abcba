"""The Spectral layer: a dense layer parametrised by eigenvectors and eigenvalues.

Giambagli et al. (Nat. Commun. 2021) see the ``in -> out`` dense layer as the
adjacency matrix ``A = Phi Lambda Phi^-1`` of a two-layer graph, whose off-diagonal
block is ``base[j, i] * (diag_start[j] - diag_end[i])``: ``base`` holds the non-trivial
eigenvector entries ``phi_ij``, ``diag_start`` the eigenvalues of the input nodes and
``diag_end`` those of the output nodes. As in spectraltools 0.4.1 the layer computes

    y = activation(x @ K + bias),   K[j, i] = base[j, i] * (diag_start[j] - diag_end[i])

so with the defaults (``diag_start = 0``, not trained) ``K = -base * diag_end``: the
sign of an eigenvalue is the opposite of the weight it scales.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from spectorch import checks

__all__ = ["Spectral"]

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "softplus": nn.Softplus,
    "softmax": lambda: nn.Softmax(dim=-1),
    "linear": nn.Identity,
}


def _init(
    tensor: Tensor,
    how: str | Callable[[Tensor], Any],
    name: str,
    keras_shape: tuple[int, int] | None = None,
) -> None:
    """Fill ``tensor`` with a Keras-named initialiser (``glorot_uniform``, ``ones``,
    ``zeros``, ``glorot_normal``, ``he_uniform``, ``he_normal``) or a callable.
    ``keras_shape`` is the shape the Keras weight had (spectraltools kept the
    eigenvalues as ``(1, out)`` and ``(in, 1)`` matrices): its fans are Keras' ones."""
    with torch.no_grad():
        if callable(how):
            how(tensor)
            return
        key = str(how).lower().replace("glorotuniform", "glorot_uniform")
        if key == "zeros":
            tensor.zero_()
        elif key == "ones":
            tensor.fill_(1.0)
        elif key in ("glorot_uniform", "glorot_normal", "he_uniform", "he_normal"):
            shape = keras_shape or tuple(tensor.shape)
            if len(shape) != 2:
                raise ValueError(f"{name}: {how!r} needs a matrix")
            fan_in, fan_out = shape  # Keras kernel layout (in, out)
            if key == "glorot_uniform":
                bound = math.sqrt(6.0 / (fan_in + fan_out))
                tensor.uniform_(-bound, bound)
            elif key == "glorot_normal":
                tensor.normal_(0.0, math.sqrt(2.0 / (fan_in + fan_out)))
            elif key == "he_uniform":
                bound = math.sqrt(6.0 / fan_in)
                tensor.uniform_(-bound, bound)
            else:
                tensor.normal_(0.0, math.sqrt(2.0 / fan_in))
        else:
            raise ValueError(
                f"{name}: expected 'zeros', 'ones', 'glorot_uniform', 'glorot_normal', "
                f"'he_uniform', 'he_normal' or a callable, got {how!r}"
            )


#: spectraltools' Keras keywords without a per-layer PyTorch equivalent
_KERAS_ONLY = {
    "activity_regularizer": "add a penalty on the layer's output to the loss",
    "base_constraint": "apply it after each optimizer step, or use torch.nn.utils.parametrize",
    "diag_constraint": "apply it after each optimizer step, or use torch.nn.utils.parametrize",
    "bias_constraint": "apply it after each optimizer step, or use torch.nn.utils.parametrize",
}


#: Keras' named weight regularizers, with their default factors (0.01)
_REGULARIZERS = {"l1": (0.01, 0.0), "l2": (0.0, 0.01), "l1_l2": (0.01, 0.01)}


def _regularizer(
    name: str, value: Any, l2_factor: float | None = None
) -> tuple[float, float] | None:
    """A Keras weight regularizer as ``(l1, l2)`` factors: ``None``, ``"l1"``,
    ``"l2"``, ``"l1_l2"`` (Keras' default 0.01 each), or an ``(l1, l2)`` pair;
    ``l2_factor`` replaces the factor of ``"l2"`` (spectraltools 1.x's
    ``diag_regularizer_param``)."""
    if value is None:
        return None
    if l2_factor is not None and isinstance(value, str) and value.lower() == "l2":
        return 0.0, float(l2_factor)
    if isinstance(value, str) and value.lower() in _REGULARIZERS:
        return _REGULARIZERS[value.lower()]
    if (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, (int, float)) and v >= 0 for v in value)
    ):
        return float(value[0]), float(value[1])
    raise ValueError(
        f"{name} must be None, 'l1', 'l2', 'l1_l2' (Keras' factors, 0.01) or an (l1, l2) "
        f"pair of factors, got {value!r}"
    )


def regularization_loss(model: nn.Module) -> Tensor | float:
    """The sum of the weight penalties of every :class:`Spectral` layer of ``model``
    (spectraltools' ``base_regularizer``, ``diag_regularizer``, ``bias_regularizer``,
    which Keras added to the training loss); 0 when none is set."""
    terms = [m.regularization_loss() for m in model.modules() if isinstance(m, Spectral)]
    terms = [t for t in terms if isinstance(t, Tensor)]
    return sum(terms) if terms else 0.0


def _keras_keywords(extra: dict[str, Any]) -> None:
    """Accept spectraltools' constraint keywords left at ``None``; refuse anything else
    with the PyTorch way to get it."""
    for key, value in extra.items():
        if key not in _KERAS_ONLY:
            raise TypeError(f"Spectral got an unexpected keyword argument {key!r}")
        if value is not None:
            raise TypeError(
                f"Spectral: {key}={value!r} has no per-layer equivalent in PyTorch; "
                f"{_KERAS_ONLY[key]}"
            )


class Spectral(nn.Module):
    """A dense layer trained through its eigenvalues (and/or eigenvectors).

    Args:
        in_features, out_features: sizes, as :class:`torch.nn.Linear`.
        activation: ``None``, a name (``"relu"``, ``"tanh"``, ``"sigmoid"``, ``"elu"``,
            ``"gelu"``, ``"softplus"``, ``"softmax"``, ``"linear"``) or a module/callable.
        is_base_trainable: train the eigenvector entries ``base`` (``in x out``).
        is_diag_start_trainable: train the input-node eigenvalues ``diag_start``.
        is_diag_end_trainable: train the output-node eigenvalues ``diag_end``.
        use_bias: add a bias (``out``).
        base_initializer: default ``"glorot_uniform"`` on the ``in x out`` matrix (Keras).
        diag_start_initializer: default ``"zeros"`` (spectraltools 0.4.1 always used
            zeros, whatever was asked; here the argument is honoured).
        diag_end_initializer: default ``"ones"``, as spectraltools 1.x (0.4.1 used
            ``"glorot_uniform"`` on the ``(1, out)`` eigenvalue matrix: pass it for
            0.4.1's layer).
        bias_initializer: default ``"zeros"``.

    spectraltools' keywords are accepted too: ``units`` (``out_features``); its weight
    regularizers ``base_regularizer``, ``diag_regularizer``, ``bias_regularizer``
    (``"l1"``, ``"l2"``, ``"l1_l2"`` or ``(l1, l2)`` factors; the penalty is
    :meth:`regularization_loss`, added to the loss by :func:`spectorch.prune.make_fit`,
    as Keras added it); its constraint and activity-regularizer keywords when ``None``
    (PyTorch layers have no per-layer constraints, see :func:`_keras_keywords`).
    spectraltools 1.x's too: ``diag_regularizer_param`` (the factor of
    ``diag_regularizer="l2"``; 1.x's default was 5e-4, Keras' and 0.4.1's 0.01, which
    stays the default here), ``eigenvalue_mask`` / ``diag_end_mask`` (0/1 per output
    node: a masked node's ``diag_end`` and bias act as zero), :meth:`mask_diag_end`,
    :meth:`get_eigenvalues`.

    The trainable flags are properties: setting ``layer.is_base_trainable = False``
    freezes the bases at once, no rebuild needed (the Keras original must rebuild and
    recompile the model). :meth:`to_linear` gives the equivalent ``nn.Linear``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int | None = None,
        activation: str | Callable[[Tensor], Tensor] | None = None,
        is_base_trainable: bool = True,
        is_diag_start_trainable: bool = False,
        is_diag_end_trainable: bool = True,
        use_bias: bool = False,
        *,
        base_initializer: str | Callable[[Tensor], Any] = "glorot_uniform",
        diag_start_initializer: str | Callable[[Tensor], Any] = "zeros",
        diag_end_initializer: str | Callable[[Tensor], Any] = "ones",
        bias_initializer: str | Callable[[Tensor], Any] = "zeros",
        device: Any = None,
        dtype: torch.dtype | None = None,
        units: int | None = None,
        base_regularizer: Any = None,
        diag_regularizer: Any = None,
        bias_regularizer: Any = None,
        diag_regularizer_param: float | None = None,
        eigenvalue_mask: Any = None,
        diag_end_mask: Any = None,
        **keras: Any,
    ) -> None:
        super().__init__()
        if units is not None:  # spectraltools' (Keras') name of out_features
            if out_features is not None and out_features != units:
                raise TypeError(f"give out_features or units, not both ({out_features}, {units})")
            out_features = units
        if out_features is None:
            raise TypeError(
                "Spectral needs in_features and out_features (or units, spectraltools' "
                "name): a Keras layer inferred its input size at the first call, a PyTorch "
                "layer declares it, e.g. Spectral(784, units=100)"
            )
        _keras_keywords(keras)
        self.regularizers = {
            key: reg
            for key, reg in (
                ("base", _regularizer("base_regularizer", base_regularizer)),
                (
                    "diag",
                    _regularizer("diag_regularizer", diag_regularizer, diag_regularizer_param),
                ),
                ("bias", _regularizer("bias_regularizer", bias_regularizer)),
            )
            if reg is not None
        }
        checks.positive_int("in_features", in_features)
        checks.positive_int("out_features", out_features)
        self.in_features, self.out_features = in_features, out_features
        kw = {"device": device, "dtype": dtype}
        self.base = nn.Parameter(torch.empty(in_features, out_features, **kw))
        self.diag_start = nn.Parameter(torch.empty(in_features, **kw))
        self.diag_end = nn.Parameter(torch.empty(out_features, **kw))
        self.bias = nn.Parameter(torch.empty(out_features, **kw)) if use_bias else None
        _init(self.base, base_initializer, "base_initializer")
        # spectraltools' eigenvalue weights were (in, 1) and (1, out) matrices
        _init(
            self.diag_start,
            diag_start_initializer,
            "diag_start_initializer",
            (in_features, 1),
        )
        _init(self.diag_end, diag_end_initializer, "diag_end_initializer", (1, out_features))
        if self.bias is not None:
            _init(self.bias, bias_initializer, "bias_initializer")
        self.activation = self._activation(activation)
        if eigenvalue_mask is not None and diag_end_mask is not None:
            raise TypeError("give eigenvalue_mask or diag_end_mask (the same mask), not both")
        mask = eigenvalue_mask if eigenvalue_mask is not None else diag_end_mask
        self.register_buffer("diag_end_mask", None)
        if mask is not None:
            self._set_mask(mask)
        self.is_base_trainable = is_base_trainable
        self.is_diag_start_trainable = is_diag_start_trainable
        self.is_diag_end_trainable = is_diag_end_trainable

    def regularization_loss(self) -> Tensor | float:
        """The weight penalties of spectraltools' regularizer keywords, as Keras added
        them to the loss: ``l1 Σ|w| + l2 Σw²`` over ``base``, the eigenvalues
        (``diag_start`` and ``diag_end``, both under ``diag_regularizer``) and the
        bias. :func:`spectorch.prune.make_fit` adds it to the training loss."""
        groups = {
            "base": [self.base],
            "diag": [self.diag_start, self.diag_end],
            "bias": [self.bias] if self.bias is not None else [],
        }
        total: Tensor | float = 0.0
        for key, (l1, l2) in self.regularizers.items():
            for w in groups[key]:
                total = total + l1 * w.abs().sum() + l2 * w.square().sum()
        return total

    def return_diag(self) -> np.ndarray:
        """spectraltools' ``return_diag``: the trained eigenvalues as one array,
        ``[diag_start, diag_end]`` when both are trained, else the trained one
        (``None`` when neither is)."""
        parts = []
        if self.is_diag_start_trainable:
            parts.append(self.diag_start.detach().cpu().numpy().reshape(-1))
        if self.is_diag_end_trainable:
            parts.append(self.diag_end.detach().cpu().numpy().reshape(-1))
        return np.concatenate(parts) if parts else None

    @staticmethod
    def _activation(activation: Any) -> nn.Module | None:
        if activation is None:
            return None
        if isinstance(activation, str):
            if activation.lower() not in _ACTIVATIONS:
                raise ValueError(
                    f"activation: expected one of {sorted(_ACTIVATIONS)}, a module or a callable, "
                    f"got {activation!r}"
                )
            return _ACTIVATIONS[activation.lower()]()
        if isinstance(activation, nn.Module):
            return activation
        if callable(activation):
            return _Lambda(activation)
        raise ValueError(f"activation: expected a name, a module or a callable, got {activation!r}")

    # the trainable flags are views of requires_grad
    @property
    def use_bias(self) -> bool:
        return self.bias is not None

    @property
    def is_base_trainable(self) -> bool:
        return self.base.requires_grad

    @is_base_trainable.setter
    def is_base_trainable(self, value: bool) -> None:
        self.base.requires_grad_(bool(value))

    @property
    def is_diag_start_trainable(self) -> bool:
        return self.diag_start.requires_grad

    @is_diag_start_trainable.setter
    def is_diag_start_trainable(self, value: bool) -> None:
        self.diag_start.requires_grad_(bool(value))

    @property
    def is_diag_end_trainable(self) -> bool:
        return self.diag_end.requires_grad

    @is_diag_end_trainable.setter
    def is_diag_end_trainable(self, value: bool) -> None:
        self.diag_end.requires_grad_(bool(value))

    # ---------------------------------------------------------- spectraltools 1.x mask
    def _set_mask(self, mask: Any) -> None:
        m = torch.as_tensor(np.asarray(mask, dtype=np.float64)).reshape(-1)
        if m.numel() != self.out_features:
            raise ValueError(
                f"eigenvalue_mask: expected {self.out_features} entries (one per output "
                f"node), got {m.numel()}"
            )
        self.diag_end_mask = m.to(device=self.diag_end.device, dtype=self.diag_end.dtype)

    def mask_diag_end(self, cut_off: float) -> None:
        """spectraltools 1.x: mask (switch off) the output nodes whose ``|diag_end|`` is
        below ``cut_off``; a masked node's eigenvalue and bias act as zero. The weights
        are kept: :meth:`clear_mask` (or :func:`spectorch.prune.original_model`) brings
        the nodes back."""
        checks.finite("cut_off", cut_off)
        keep = (self.diag_end.detach().abs() >= cut_off).to(self.diag_end.dtype)
        self.diag_end_mask = keep

    def clear_mask(self) -> None:
        """Remove the mask of :meth:`mask_diag_end`: every node is active again."""
        self.diag_end_mask = None

    def get_eigenvalues(self, masked: bool = False) -> dict[str, np.ndarray]:
        """spectraltools 1.x: ``{"diag_end": (1, out), "diag_start": (in, 1)}`` arrays
        (spectraltools' shapes); ``masked=True`` applies the mask to ``diag_end``."""
        end = self.diag_end.detach()
        if masked and self.diag_end_mask is not None:
            end = end * self.diag_end_mask
        return {
            "diag_end": end.cpu().numpy().reshape(1, -1),
            "diag_start": self.diag_start.detach().cpu().numpy().reshape(-1, 1),
        }

    def _effective(self) -> tuple[Tensor, Tensor | None]:
        """``diag_end`` and the bias with the mask applied (as spectraltools 1.x)."""
        if self.diag_end_mask is None:
            return self.diag_end, self.bias
        bias = self.bias * self.diag_end_mask if self.bias is not None else None
        return self.diag_end * self.diag_end_mask, bias

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors
    ) -> None:
        # the mask exists only while nodes are masked: follow the saved state
        key = prefix + "diag_end_mask"
        if key in state_dict:
            self.diag_end_mask = torch.empty_like(self.diag_end)
        elif prefix + "diag_end" in state_dict:  # this layer's state, saved unmasked
            self.diag_end_mask = None
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, errors
        )

    def kernel(self) -> Tensor:
        """``K`` (``in x out``, the Keras layout): ``base * (diag_start[:, None] -
        diag_end)``, with masked nodes' ``diag_end`` as zero."""
        diag_end, _ = self._effective()
        return self.base * (self.diag_start[:, None] - diag_end[None, :])

    def direct_space(self) -> Tensor:
        """The classical weight matrix (``out x in``, ``nn.Linear``'s layout)."""
        return self.kernel().T

    def eigenvalues(self) -> dict[str, Tensor]:
        """``{"diag_start": ..., "diag_end": ...}`` (detached)."""
        return {"diag_start": self.diag_start.detach(), "diag_end": self.diag_end.detach()}

    def forward(self, x: Tensor) -> Tensor:
        # the same call as nn.Linear on the same contiguous weight, so that
        # to_linear() is equal bit for bit, not only up to rounding
        y = nn.functional.linear(x, self.direct_space().contiguous(), self._effective()[1])
        return self.activation(y) if self.activation is not None else y

    def to_linear(self) -> nn.Module:
        """The equivalent ``nn.Linear`` (weight ``K^T``, same bias, dtype and device);
        an ``nn.Sequential(linear, activation)`` when the layer has an activation."""
        linear = nn.Linear(
            self.in_features,
            self.out_features,
            bias=self.use_bias,
            device=self.base.device,
            dtype=self.base.dtype,
        )
        with torch.no_grad():
            linear.weight.copy_(self.direct_space())
            if self.bias is not None:
                linear.bias.copy_(self._effective()[1])
        if self.activation is None:
            return linear
        import copy

        return nn.Sequential(linear, copy.deepcopy(self.activation))

    def extra_repr(self) -> str:
        masked = (
            "" if self.diag_end_mask is None else f", masked={int((self.diag_end_mask == 0).sum())}"
        )
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.use_bias}, trainable: base={self.is_base_trainable}, "
            f"diag_start={self.is_diag_start_trainable}, diag_end={self.is_diag_end_trainable}"
            f"{masked}"
        )


class _Lambda(nn.Module):
    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x)
