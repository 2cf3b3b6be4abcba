"""Loss landscapes: the loss along one or two directions through the current weights.

Along the top Hessian eigenvectors the surface shows the curvature the eigenvalues
measure (near the weights, ``L(θ + a v) ≈ L(θ) + a gᵀv + ½ λ a²``); along random
directions, filter-normalised as Li, Xu, Taylor, Studer & Goldstein (2018) do, it is
the picture of "sharp" and "flat" minima that can be compared between networks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from spectorch import checks
from spectorch.linalg import top_eigenpairs

__all__ = ["DIRECTIONS", "Landscape", "filter_normalized", "loss_landscape"]

#: the directions :func:`loss_landscape` can draw by itself
DIRECTIONS = ("top", "random")


@dataclass(frozen=True)
class Landscape:
    """A loss surface: ``losses[i]`` (1-D) or ``losses[i, j]`` (2-D) is the loss at
    ``θ + coords[i] d₁ (+ coords[j] d₂)``.

    Attributes:
        coords: the step along each direction, shape ``(points,)``.
        losses: shape ``(points,)`` or ``(points, points)``.
        directions: the directions as rows, shape ``(dims, P)``.
        kind: ``"top"``, ``"random"`` or ``"given"``.
        eigenvalues: the directions' Hessian eigenvalues with ``kind="top"``.
        center: the loss at ``θ``.
    """

    coords: np.ndarray
    losses: np.ndarray
    directions: torch.Tensor
    kind: str
    eigenvalues: np.ndarray | None
    center: float

    @property
    def dims(self) -> int:
        return int(self.losses.ndim)

    def save(self, path: str | os.PathLike) -> None:
        """Write the surface (not the directions) to an ``.npz`` file, atomically."""
        from spectorch._io import atomic_path

        with atomic_path(path) as fh:
            np.savez(fh, coords=self.coords, losses=self.losses, center=self.center,
                     eigenvalues=np.asarray([] if self.eigenvalues is None else self.eigenvalues),
                     kind=self.kind)  # fmt: skip

    def plot(self, path: str | os.PathLike, *, title: str | None = None) -> Any:
        """A line (1-D) or a contour map (2-D) of the surface, as a PNG."""
        from spectorch.plotting import plot_landscape

        return plot_landscape(self, path, title=title)


def filter_normalized(direction: dict[str, torch.Tensor], params: dict[str, torch.Tensor]):
    """Li et al.'s (2018) filter normalisation: each filter (a slice along the first
    dimension: an output unit, a convolution filter) of the direction is scaled to the
    norm of the same filter of the weights; biases and other 1-D parameters get no
    direction (their "ignore biasbn" choice)."""
    out = {}
    for name, d in direction.items():
        w = params[name]
        if d.ndim <= 1:
            out[name] = torch.zeros_like(d)
            continue
        dn = d.reshape(d.shape[0], -1).norm(dim=1)
        wn = w.reshape(w.shape[0], -1).norm(dim=1)
        scale = wn / dn.clamp(min=torch.finfo(d.dtype).tiny)
        out[name] = d * scale.reshape(-1, *([1] * (d.ndim - 1)))
    return out


def loss_landscape(
    op: Any,
    directions: str | torch.Tensor = "top",
    *,
    dims: int = 1,
    span: float = 1.0,
    points: int = 21,
    seed: int = 0,
    progress: bool = False,
) -> Landscape:
    """The loss on a line or a plane through the current weights.

    Args:
        op: a curvature operator (:class:`HessianOperator`): its model, loss and data
            give the loss (:meth:`~CurvatureOperator.loss`), its Hessian the ``"top"``
            directions.
        directions: ``"top"``: the top ``dims`` Hessian eigenvectors (unit vectors,
            by :func:`~spectorch.linalg.top_eigenpairs`); ``"random"``: Gaussian
            directions, filter-normalised (:func:`filter_normalized`); or a tensor of
            directions as rows, shape ``(dims, P)``, used as given.
        dims: 1 (a line) or 2 (a plane).
        span: the steps run over ``[-span, span]`` along each direction.
        points: grid points per direction (odd, so that ``θ`` itself is one).
        seed: the random source of the ``"random"`` directions and of the eigensolver.
        progress: show a progress bar over the grid.

    Returns:
        A :class:`Landscape`.

    Raises:
        ValueError: on a bad argument, before any loss is computed.
    """
    if not all(hasattr(op, name) for name in ("loss", "param_names", "model", "shape")):
        raise TypeError(
            "op must be a curvature operator (HessianOperator, GGNOperator, ...), whose "
            f"loss(shift) gives the surface; got {type(op).__name__}"
        )
    dims = checks.int_in("dims", dims, 1, 2)
    span = checks.positive("span", span)
    points = checks.int_at_least("points", points, 3)
    if points % 2 == 0:
        raise ValueError(f"points must be odd (so that the weights are a grid point), got {points}")
    n = int(op.shape[0])
    eigenvalues = None
    if isinstance(directions, torch.Tensor):
        if tuple(directions.shape) != (dims, n):
            raise ValueError(
                f"directions must have shape ({dims}, {n}) for dims={dims}, "
                f"got {tuple(directions.shape)}"
            )
        D, kind = directions.detach().to(torch.float64), "given"
    else:
        kind = checks.choice("directions", directions, DIRECTIONS)
        if kind == "top":
            pairs = top_eigenpairs(op, dims, seed=seed)
            D, eigenvalues = pairs.vectors.double(), pairs.values.numpy()
        else:
            g = torch.Generator().manual_seed(int(seed))
            named = dict(op.model.named_parameters())
            params = {k: named[k].detach().double().cpu() for k in op.param_names}
            rows = []
            for _ in range(dims):
                raw = {
                    k: torch.randn(v.shape, generator=g, dtype=torch.float64)
                    for k, v in params.items()
                }
                normed = filter_normalized(raw, params)
                rows.append(torch.cat([normed[k].reshape(-1) for k in op.param_names]))
            D = torch.stack(rows)
    coords = np.linspace(-span, span, points)
    grid = (
        [(i,) for i in range(points)]
        if dims == 1
        else [(i, j) for i in range(points) for j in range(points)]
    )
    losses = np.empty((points,) * dims)
    bar = tqdm(grid, desc="landscape", disable=not progress, leave=False)
    for index in bar:
        shift = sum(coords[i] * D[axis] for axis, i in enumerate(index))
        losses[index] = op.loss(shift)
    mid = (points // 2,) * dims
    return Landscape(coords=coords, losses=losses, directions=D, kind=kind,
                     eigenvalues=eigenvalues, center=float(losses[mid]))  # fmt: skip
