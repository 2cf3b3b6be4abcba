"""google/spectral-density's public functions, with their names, arguments and returns.

A user of the original (Ghorbani, Krishnan & Xiao 2019) finds ``lanczos_alg``,
``tridiag_to_eigv``, ``tridiag_to_density`` and ``eigv_to_density`` here and gets the
same numbers, with full reorthogonalisation in float64 and a clean breakdown.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from spectorch import checks
from spectorch.density._density import SpectralDensity
from spectorch.linalg import lanczos

__all__ = ["lanczos_alg", "tridiag_to_density", "tridiag_to_eigv"]


class _FunctionOperator:
    def __init__(self, matvec: Callable[[torch.Tensor], Any], dim: int) -> None:
        self._matvec = matvec
        self.shape = (dim, dim)
        self.dtype = torch.float64

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        w = torch.as_tensor(self._matvec(v), dtype=torch.float64, device=v.device)
        if tuple(w.shape) != (self.shape[0],):
            raise ValueError(
                f"matrix_vector_product must return a vector of shape ({self.shape[0]},), got "
                f"{tuple(w.shape)}"
            )
        return w


def _seed_of(key: Any) -> int | torch.Generator:
    """An int or a ``torch.Generator`` from what the original's ``rng_key`` might be
    here: an int, a generator, or a JAX key's raw data (two unsigned 32-bit words, as
    ``jax.random.PRNGKey(s)`` holds ``[0, s]``)."""
    if isinstance(key, torch.Generator):
        return key
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        return int(key)
    words = np.asarray(key)
    if words.shape == (2,) and np.issubdtype(words.dtype, np.integer):
        return (int(words[0]) << 32) | int(words[1])
    raise TypeError(
        "rng_key must be an int, a torch.Generator or a JAX key's data (two unsigned "
        f"ints), got {type(key).__name__}"
    )


def lanczos_alg(
    matrix_vector_product: Callable[[torch.Tensor], Any],
    dim: int,
    order: int,
    seed: int | torch.Generator | None = None,
    *,
    rng_key: Any = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The original's ``lanczos_alg``: ``order`` Lanczos steps from a Gaussian start.

    Args:
        matrix_vector_product: ``v ↦ A v`` on float64 tensors of shape ``(dim,)``.
        dim: the dimension of ``A``.
        order: the number of Lanczos steps. More than ``dim`` (the original's own test
            asks for 72 steps of a 27-dimensional Hessian) runs ``dim`` steps, with a
            warning: the Krylov space is the whole space after ``dim`` steps, and the
            original's further steps divided by ``β ≈ 0``.
        seed: an int or a ``torch.Generator``.
        rng_key: the original's name for ``seed`` (it took a JAX key; an int, a
            generator or a JAX key's two words are accepted).

    Returns:
        ``(tridiag, vecs)``: the ``(order, order)`` tridiagonal and the
        ``(order, dim)`` Lanczos vectors as rows, float64 tensors. If the Krylov
        space becomes invariant after ``m < order`` steps (breakdown), they are
        ``(m, m)`` and ``(m, dim)``: the original divided by ``β ≈ 0`` there.
    """
    checks.positive_int("dim", dim)
    checks.positive_int("order", order)
    if rng_key is not None:
        if seed is not None:
            raise TypeError("lanczos_alg: give seed or rng_key (the original's name), not both")
        seed = _seed_of(rng_key)
    elif seed is not None:
        seed = _seed_of(seed)
    if order > dim:
        warnings.warn(
            f"lanczos_alg: order {order} exceeds the dimension {dim}; running {dim} steps "
            "(the Krylov space is then the whole space: the tridiagonal's eigenvalues are "
            "the matrix's)",
            UserWarning,
            stacklevel=2,
        )
        order = int(dim)
    generator = seed if isinstance(seed, torch.Generator) else None
    res = lanczos(
        _FunctionOperator(matrix_vector_product, int(dim)),
        order,
        start="gaussian",
        generator=generator,
        seed=None if generator is not None else (0 if seed is None else int(seed)),
    )
    return res.tridiagonal, res.basis


def tridiag_to_eigv(tridiag_list: Sequence[Any]) -> tuple[np.ndarray, np.ndarray]:
    """The original's ``tridiag_to_eigv``: nodes and weights of each tridiagonal.

    Returns:
        ``(eig_vals, all_weights)`` of shape ``(draws, m)``: the Ritz values
        (ascending) and the squared first components of the eigenvectors. Draws with
        fewer steps (breakdown) are padded with NaN nodes and zero weights.
    """
    if len(tridiag_list) == 0:
        raise ValueError("tridiag_list is empty")
    dens = SpectralDensity.from_tridiagonals(tridiag_list, dim=1)
    return dens._padded(np.nan), dens._padded(0.0)


def tridiag_to_density(
    tridiag_list: Sequence[Any], sigma_squared: float = 1e-5, grid_len: int = 10000
) -> tuple[np.ndarray, np.ndarray]:
    """The original's ``tridiag_to_density``: a smoothed density from tridiagonals.

    Returns:
        ``(density, grids)`` of shape ``(grid_len,)``; the Gaussian kernel's variance
        is ``sigma_squared · max(1, λmax − λmin)`` and the density integrates to one.
    """
    if len(tridiag_list) == 0:
        raise ValueError("tridiag_list is empty")
    checks.positive("sigma_squared", sigma_squared)
    checks.int_at_least("grid_len", grid_len, 2)
    grid, density = SpectralDensity.from_tridiagonals(tridiag_list, dim=1).evaluate(
        width="original", sigma_squared=sigma_squared, grid_len=grid_len
    )
    return density, grid
