"""The original's utilities: default stats hooks and a grid of positions for plots."""

from __future__ import annotations

import numpy as np
import torch

from spectorch import checks

__all__ = ["create_default_stats", "grid_reader", "update_default_stats"]

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
    """``points^2`` positions on a grid over ``[-lim, lim]^2`` (``points^2 x dim``); for
    ``dim > 2`` the other coordinates are 0. Row ``i * points + j`` is
    ``(x_j, y_i)``, so ``values.reshape(points, points)`` is an image with ``y`` down
    the rows."""
    checks.positive_int("dim", dim)
    axis = torch.linspace(-lim, lim, points, dtype=dtype)
    if dim == 1:
        return axis[:, None]
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    grid = torch.zeros(points * points, dim, dtype=dtype)
    grid[:, 0] = xx.reshape(-1)
    grid[:, 1] = yy.reshape(-1)
    return grid
