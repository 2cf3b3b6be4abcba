"""The original's utilities: default stats hooks, a grid of positions for plots, and
its functional networks (``make_network``, ``make_conv_network``), with the original's
layouts (``x @ w`` weights ``[in, out]``; images NHWC, convolution weights HWIO)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from spectorch import checks

__all__ = [
    "create_default_stats",
    "grid_reader",
    "make_conv_network",
    "make_network",
    "update_default_stats",
]

_STATS_DECAY = 0.01


def create_default_stats(iterations: int, neig: int) -> dict[str, np.ndarray]:
    """Arrays for the default stats: ``losses`` (``iterations``), ``eigenvalues`` and
    ``eigenvalues_ma`` (``iterations x neig``), float32 as in the original."""
    return {
        "losses": np.zeros(iterations, dtype=np.float32),
        "eigenvalues": np.zeros((iterations, neig), dtype=np.float32),
        "eigenvalues_ma": np.zeros((iterations, neig), dtype=np.float32),
    }


def update_default_stats(
    t: int,
    current_loss: float,
    current_eigenvalues: np.ndarray,
    losses: np.ndarray,
    eigenvalues: np.ndarray,
    eigenvalues_ma: np.ndarray,
) -> None:
    """Record step ``t``: the loss, the eigenvalues and their moving average (weight
    0.01 on the new value, starting from the first value), as the original."""
    losses[t] = current_loss
    eigenvalues[t] = current_eigenvalues
    if t > 0:
        eigenvalues_ma[t] = (
            _STATS_DECAY * current_eigenvalues + (1 - _STATS_DECAY) * eigenvalues_ma[t - 1]
        )
    else:
        eigenvalues_ma[t] = current_eigenvalues


def grid_reader(
    dim: int, lim: float, points: int = 128, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The original's grid: ``points^2`` positions over ``[-lim, lim]^2`` (``points^2 x
    dim``; for ``dim > 2`` the other coordinates are 0), in the original's order: row
    ``j * points + i`` is ``(x_j, y_i)``, so ``values.reshape(points, points)`` has
    ``x`` down the rows (``.T`` for an image with ``y`` down the rows)."""
    checks.positive_int("dim", dim)
    checks.positive_int("points", points)
    # np.linspace in float64, then cast, as the original's np.linspace(..., dtype=float32)
    axis = torch.from_numpy(np.linspace(-lim, lim, points)).to(dtype)
    if dim == 1:
        return axis[:, None]
    xx, yy = torch.meshgrid(axis, axis, indexing="ij")
    grid = torch.zeros(points * points, dim, dtype=dtype)
    grid[:, 0] = xx.reshape(-1)
    grid[:, 1] = yy.reshape(-1)
    return grid


def _add_mask(x: Tensor, y: Tensor, lim: float) -> Tensor:
    """The original's boundary mask: ``prod_i max((sqrt(2 lim^2 - x_i^2) - lim) / lim,
    0)`` times ``y``, zero on the faces of the box ``[-lim, lim]^d``."""
    m = torch.clamp((torch.sqrt(torch.clamp(2 * lim**2 - x**2, min=0)) - lim) / lim, min=0)
    return m.prod(dim=1, keepdim=True) * y


def make_network(
    x: Tensor,
    hid: Sequence[int],
    ws: Sequence[Tensor],
    bs: Sequence[Tensor],
    apply_boundary: bool,
    lim: float,
    custom_softplus: bool = False,
) -> Tensor:
    """The original's multi-layer perceptron: ``softplus(x @ ws[i] + bs[i])`` for the
    first ``len(hid) - 1`` layers, then ``@ ws[-1] + bs[-1]``, times the boundary mask
    when ``apply_boundary``. ``custom_softplus`` (the original's softplus with a
    hand-written gradient, the same function and gradient) is accepted."""
    del custom_softplus  # the same derivative as torch's softplus
    if len(ws) != len(hid) or len(bs) != len(hid):
        raise ValueError(
            f"make_network: expected one weight and one bias per entry of hid ({len(hid)}), "
            f"got {len(ws)} and {len(bs)}"
        )
    inp = x
    for i in range(len(hid) - 1):
        inp = torch.nn.functional.softplus(inp @ ws[i] + bs[i])
    y = inp @ ws[-1] + bs[-1]
    return _add_mask(x, y, lim) if apply_boundary else y


def _tf_conv2d(x: Tensor, w: Tensor, stride: int, padding: str) -> Tensor:
    """TensorFlow's ``conv2d`` on NHWC ``x`` and HWIO ``w``: ``"VALID"``, or ``"SAME"``
    with TensorFlow's split of the padding (the extra pixel after)."""
    xc = x.permute(0, 3, 1, 2)
    kc = w.permute(3, 2, 0, 1)
    if padding.upper() == "SAME":
        pads = []
        for size, k in ((xc.shape[3], kc.shape[3]), (xc.shape[2], kc.shape[2])):
            total = max((math.ceil(size / stride) - 1) * stride + k - size, 0)
            pads += [total // 2, total - total // 2]
        xc = torch.nn.functional.pad(xc, pads)
    elif padding.upper() != "VALID":
        raise ValueError(f"paddings: expected 'SAME' or 'VALID', got {padding!r}")
    return torch.nn.functional.conv2d(xc, kc, stride=stride).permute(0, 2, 3, 1)


def make_conv_network(
    x: Tensor,
    conv_stride: Sequence[int],
    paddings: Sequence[str],
    ws: Sequence[Tensor],
    bs: Sequence[Tensor],
) -> Tensor:
    """The original's convolutional network: ReLU layers, a convolution where a weight
    has four dimensions (HWIO, on NHWC images, TensorFlow's ``"SAME"``/``"VALID"``
    padding), a fully-connected layer where it has two (the last convolution's output
    flattened in NHWC order, as the original); a linear read-out; and a constant
    feature prepended to the outputs."""
    if len(bs) != len(ws):
        raise ValueError(f"make_conv_network: {len(ws)} weights but {len(bs)} biases")
    convs = sum(1 for w in ws[:-1] if w.ndim == 4)
    if len(conv_stride) < convs or len(paddings) < convs:
        raise ValueError(
            f"make_conv_network: {convs} convolutions need as many conv_stride and paddings "
            f"entries, got {len(conv_stride)} and {len(paddings)}"
        )
    inp = x
    for i in range(len(ws) - 1):
        weight = ws[i]
        if weight.ndim == 4:
            inp = torch.relu(_tf_conv2d(inp, weight, conv_stride[i], paddings[i]) + bs[i])
            if ws[i + 1].ndim == 2:  # flatten after the last convolution
                inp = inp.reshape(inp.shape[0], -1)
        else:
            inp = torch.relu(inp @ weight + bs[i])
    features = inp @ ws[-1] + bs[-1]
    return torch.cat([torch.ones_like(features[:, :1]), features], dim=1)
