"""Spectral densities from Lanczos quadrature: the estimate and the kernels that smooth it."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from spectorch import checks
from spectorch._utils import to_numpy
from spectorch.linalg import TraceEstimate, gauss_quadrature

__all__ = ["WIDTHS", "SpectralDensity", "eigv_to_density", "gaussian_mixture"]

#: conventions for the width of the Gaussian kernel that smooths the quadrature nodes
WIDTHS = ("spacing", "original")


def gaussian_mixture(
    grid: np.ndarray, nodes: np.ndarray, weights: np.ndarray, variance: float
) -> np.ndarray:
    """``Σ_k w_k N(t; θ_k, variance)`` on every grid point ``t``."""
    z = (grid[:, None] - nodes[None, :]) ** 2 / (2.0 * variance)
    return (np.exp(-z) * weights[None, :]).sum(axis=1) / math.sqrt(2.0 * math.pi * variance)


def eigv_to_density(
    eig_vals: Any,
    all_weights: Any = None,
    grids: Any = None,
    grid_len: int = 10000,
    sigma_squared: float | None = None,
    grid_expand: float = 1e-2,
) -> tuple[np.ndarray, np.ndarray]:
    r"""google/spectral-density's ``eigv_to_density``: smooth nodes into a density.

    The Gaussian kernel's variance is ``sigma_squared · max(1, λmax − λmin)`` (default
    ``sigma_squared = 1e-5``), with ``λmax``, ``λmin`` the draws' mean largest and
    smallest node; the grid spans them widened by ``grid_expand``; the density is
    normalised to integrate to one on the grid.

    Args:
        eig_vals: nodes, shape ``(draws, m)`` (NaN marks a missing node).
        all_weights: quadrature weights of the same shape; default uniform ``1/m``.
        grids: evaluation points; default ``grid_len`` evenly spaced points.

    Returns:
        ``(density, grids)``, both of shape ``(grid_len,)``.
    """
    eig_vals = np.atleast_2d(np.asarray(eig_vals, dtype=np.float64))
    if all_weights is None:
        all_weights = np.full(eig_vals.shape, 1.0 / eig_vals.shape[1])
    all_weights = np.atleast_2d(np.asarray(all_weights, dtype=np.float64))
    if all_weights.shape != eig_vals.shape:
        raise ValueError(
            f"all_weights must have the shape of eig_vals {eig_vals.shape}, got {all_weights.shape}"
        )
    if np.isnan(eig_vals[:, 0]).any():
        raise ValueError("a draw has NaN nodes: its tridiagonal has NaN values")
    lambda_max = float(np.nanmean(np.nanmax(eig_vals, axis=1))) + grid_expand
    lambda_min = float(np.nanmean(np.nanmin(eig_vals, axis=1))) - grid_expand
    if grids is None:
        checks.int_at_least("grid_len", grid_len, 2)
        grids = np.linspace(lambda_min, lambda_max, num=grid_len)
    grids = np.asarray(grids, dtype=np.float64).reshape(-1)
    if sigma_squared is None:
        sigma_squared = 1e-5
    checks.positive("sigma_squared", sigma_squared)
    variance = sigma_squared * max(1.0, lambda_max - lambda_min)
    per_draw = []
    for nodes, weights in zip(eig_vals, all_weights, strict=True):
        keep = ~np.isnan(nodes)
        per_draw.append(gaussian_mixture(grids, nodes[keep], weights[keep], variance))
    density = np.mean(per_draw, axis=0)
    norm = np.sum(density) * (grids[1] - grids[0]) if len(grids) > 1 else 1.0
    return density / norm, grids


@dataclass
class SpectralDensity:
    r"""A stochastic Lanczos quadrature estimate of a spectral density.

    For ``D`` draws, draw ``d`` contributes the Ritz values ``θ_{d,k}`` and Gauss
    quadrature weights ``w_{d,k}`` of its tridiagonal; the density of the ``n``
    eigenvalues ``λ_i`` of ``A``, ``φ(t) = (1/n) Σᵢ δ(t − λᵢ)``, is estimated by
    ``(1/D) Σ_d Σ_k w_{d,k} δ(t − θ_{d,k})`` and smoothed by a Gaussian kernel.

    Attributes:
        nodes: per draw, the Ritz values (ascending).
        weights: per draw, the quadrature weights (each sums to one).
        dim: the dimension ``n`` of the operator.
        steps: the Lanczos steps requested per draw (a draw with a breakdown has fewer).
        metadata: the run's settings (the manifest when loaded from disk).
        trace_samples: Krylov-deflated trace samples, one per pair of consecutive
            draws (see :func:`spectorch.linalg.deflated_trace_sample`).
    """

    nodes: list[np.ndarray]
    weights: list[np.ndarray]
    dim: int
    steps: int = 0
    metadata: dict[str, Any] = field(default_factory=dict)
    trace_samples: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.nodes or len(self.nodes) != len(self.weights):
            raise ValueError("nodes and weights must be non-empty lists of equal length")
        self.nodes = [np.asarray(x, dtype=np.float64) for x in self.nodes]
        self.weights = [np.asarray(x, dtype=np.float64) for x in self.weights]
        if not self.steps:
            self.steps = max(len(x) for x in self.nodes)

    @classmethod
    def from_tridiagonals(
        cls, tridiagonals: Sequence[Any], dim: int, **kwargs: Any
    ) -> SpectralDensity:
        """Build from dense ``(m, m)`` tridiagonal matrices, one per draw."""
        nodes, weights = [], []
        for T in tridiagonals:
            T = to_numpy(T)
            if T.ndim != 2 or T.shape[0] != T.shape[1]:
                raise ValueError(f"each tridiagonal must be square (m, m), got {T.shape}")
            x, w = gauss_quadrature(np.diag(T), np.diag(T, 1))
            nodes.append(x)
            weights.append(w)
        return cls(nodes, weights, dim, **kwargs)

    # ----------------------------------------------------------------- summaries
    @property
    def draws(self) -> int:
        return len(self.nodes)

    def pooled(self) -> tuple[np.ndarray, np.ndarray]:
        """All draws' nodes and weights as one distribution (weights sum to one)."""
        x = np.concatenate(self.nodes)
        w = np.concatenate(self.weights) / self.draws
        order = np.argsort(x, kind="stable")
        return x[order], w[order]

    def bounds(self) -> tuple[float, float]:
        """The smallest and the largest Ritz value over all draws."""
        return float(min(x.min() for x in self.nodes)), float(max(x.max() for x in self.nodes))

    def moments(self, orders: int | Sequence[int] = (1, 2)) -> np.ndarray:
        r"""Spectral moments ``tr(Aᵐ)/n``, estimated by ``(1/D) Σ_d Σ_k w_{d,k} θ_{d,k}ᵐ``.

        The quadrature is exact for ``m < 2·steps``, so each draw gives ``vᵀAᵐv``
        exactly; the average over draws is the stochastic estimate.
        """
        orders_arr = np.atleast_1d(np.asarray(orders, dtype=np.int64))
        per_draw = np.array(
            [
                [np.sum(w * x**m) for m in orders_arr]
                for x, w in zip(self.nodes, self.weights, strict=True)
            ]
        )
        out = per_draw.mean(axis=0)
        return out if np.ndim(orders) else out[0]

    def trace(self, method: str = "auto") -> TraceEstimate:
        """The trace ``tr(A)`` with its standard error over samples.

        Args:
            method: ``"quadrature"``: ``n · vᵀAv`` per draw, Hutchinson's estimator
                read off the quadrature (``n · Σ_k w_k θ_k``); ``"deflated"``: the
                Krylov-deflated samples (far smaller variance when the spectrum has
                outliers, no extra products); ``"auto"``: deflated when available.

        Raises:
            ValueError: on an unknown method, or ``"deflated"`` without samples.
        """
        if method not in ("auto", "quadrature", "deflated"):
            raise ValueError(f"method must be 'auto', 'quadrature' or 'deflated', got {method!r}")
        if method == "deflated" and not self.trace_samples:
            raise ValueError("no deflated trace samples: they need at least two draws")
        if method != "quadrature" and self.trace_samples:
            samples = np.asarray(self.trace_samples, dtype=np.float64)
        else:
            samples = np.array(
                [self.dim * np.sum(w * x) for x, w in zip(self.nodes, self.weights, strict=True)]
            )
        stderr = samples.std(ddof=1) / math.sqrt(len(samples)) if len(samples) > 1 else np.nan
        return TraceEstimate(float(samples.mean()), float(stderr), len(samples))

    def top_eigenvalues(self, k: int = 1) -> np.ndarray:
        """The ``k`` largest eigenvalues, descending, from the Ritz values.

        By interlacing the ``j``-th largest Ritz value of any draw is a lower bound of
        ``λ_j``; the largest over draws is returned. Outliers converge first: after
        80-90 steps the top few are exact to many digits.
        """
        _check_k(k, min(len(x) for x in self.nodes))
        tops = np.stack([np.sort(x)[::-1][:k] for x in self.nodes])
        return tops.max(axis=0)

    def bottom_eigenvalues(self, k: int = 1) -> np.ndarray:
        """The ``k`` smallest eigenvalues, ascending (upper bounds, as above)."""
        _check_k(k, min(len(x) for x in self.nodes))
        bottoms = np.stack([np.sort(x)[:k] for x in self.nodes])
        return bottoms.min(axis=0)

    def cdf(self, t: Any) -> np.ndarray:
        """The estimated cumulative distribution ``#{λᵢ ≤ t}/n`` at the points ``t``."""
        x, w = self.pooled()
        c = np.concatenate([[0.0], np.cumsum(w)])
        return c[np.searchsorted(x, np.asarray(t, dtype=np.float64), side="right")]

    def wasserstein(self, eigenvalues: Any) -> float:
        """Wasserstein-1 distance ``∫|F̂ − F|`` to the exact spectrum ``eigenvalues``."""
        from scipy.stats import wasserstein_distance

        x, w = self.pooled()
        ev = to_numpy(eigenvalues)
        return float(wasserstein_distance(x, ev.reshape(-1), u_weights=w))

    def outliers(
        self, *, whisker: float = 3.0, max_count: int = 20, resolution: float | None = None
    ) -> np.ndarray:
        """Eigenvalues standing out of the bulk, the largest first.

        An outlier is a Ritz value that lies ``whisker`` interquartile ranges beyond
        the quartiles of the estimated spectrum and that has converged: at least half
        of the other draws reproduce it to ``1e-4`` of the spectral range (a bulk Ritz
        value moves from draw to draw; an isolated eigenvalue does not). With a single
        draw only the first test applies. The interquartile range counts as at least
        the kernel width :meth:`sigma` (the resolution of ``steps`` nodes), so a bulk
        concentrated at one point (most curvature spectra, at 0) does not make its own
        neighbours outliers: an outlier is separated from the bulk by more than
        ``whisker`` resolvable widths (``resolution`` sets that width instead, e.g.
        the kernel width of a figure that compares several densities). At most
        ``max_count`` are returned.
        """
        x, w = self.pooled()
        c = np.cumsum(w)
        q1 = x[min(np.searchsorted(c, 0.25), len(x) - 1)]
        q3 = x[min(np.searchsorted(c, 0.75), len(x) - 1)]
        lo_all, hi_all = self.bounds()
        span = max(hi_all - lo_all, 1e-300)
        width = self.sigma() if resolution is None else checks.positive("resolution", resolution)
        iqr = max(q3 - q1, width, 1e-9 * span)
        lo, hi = q1 - whisker * iqr, q3 + whisker * iqr
        first = self.nodes[0]
        candidates = first[(first > hi) | (first < lo)]
        others = self.nodes[1:]
        keep = []
        for value in candidates:
            agree = sum(np.min(np.abs(o - value)) <= 1e-4 * span for o in others)
            if not others or 2 * agree >= len(others):
                keep.append(value)
        keep = np.sort(np.asarray(keep, dtype=np.float64))[::-1]
        return keep[:max_count]

    # ------------------------------------------------------------------ smoothing
    def grid(self, num_points: int = 1024, margin: float = 0.05) -> np.ndarray:
        """Evenly spaced points over the Ritz values widened by ``margin`` of the range."""
        lo, hi = self.bounds()
        pad = margin * max(hi - lo, 1e-12 * max(abs(lo), abs(hi), 1.0))
        return np.linspace(lo - pad, hi + pad, num_points)

    def sigma(self, *, kappa: float = 3.0) -> float:
        """The kernel width of the ``"spacing"`` convention (Papyan 2020, §D.2).

        ``σ = (λmax − λmin) / (m − 1) / sqrt(8 ln κ)``: on the spectrum mapped to
        ``[−1, 1]``, ``κ`` sets how much two Gaussians one node spacing apart overlap,
        so a single ``κ`` (3 by default) suits any scale.
        """
        if not kappa > 1.0:
            raise ValueError(f"kappa must be greater than 1, got {kappa!r}")
        lo, hi = self.bounds()
        width = max(hi - lo, 1e-12 * max(abs(lo), abs(hi), 1.0))
        return width / max(self.steps - 1, 1) / math.sqrt(8.0 * math.log(kappa))

    def evaluate(
        self,
        grid: Any = None,
        *,
        width: str = "spacing",
        kappa: float = 3.0,
        sigma_squared: float = 1e-5,
        num_points: int = 1024,
        grid_len: int = 10000,
        sigma: float | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The smoothed density on a grid.

        Args:
            grid: evaluation points; default :meth:`grid` (``"spacing"``) or the
                original's grid of ``grid_len`` points (``"original"``).
            width: ``"spacing"`` (scale-free, set by the node spacing: Papyan 2020;
                not renormalised) or ``"original"`` (google/spectral-density's
                ``tridiag_to_density``: variance ``sigma_squared · max(1, range)``,
                normalised to integrate to one on the grid).
            kappa: the ``"spacing"`` overlap parameter, see :meth:`sigma`.
            sigma_squared: the ``"original"`` variance factor.
            sigma: a kernel width to use instead of either convention's (one width
                for densities that are compared, e.g. checkpoints along training).

        Returns:
            ``(grid, density)`` as float64 arrays.

        Raises:
            ValueError: on an unknown ``width`` (the message lists the valid ones).
        """
        if width not in WIDTHS:
            raise ValueError(f"width must be one of {list(WIDTHS)}, got {width!r}")
        checks.positive("sigma_squared", sigma_squared)
        if sigma is not None:
            checks.positive("sigma", sigma)
            grid = self.grid(num_points) if grid is None else np.asarray(grid, dtype=np.float64)
            x, w = self.pooled()
            return grid, gaussian_mixture(grid, x, w, float(sigma) ** 2)
        if width == "original":
            density, grid_out = eigv_to_density(
                self._padded(np.nan),
                self._padded(0.0),
                grids=grid,
                grid_len=grid_len,
                sigma_squared=sigma_squared,
            )
            return grid_out, density
        grid = self.grid(num_points) if grid is None else np.asarray(grid, dtype=np.float64)
        variance = self.sigma(kappa=kappa) ** 2
        x, w = self.pooled()
        return grid, gaussian_mixture(grid, x, w, variance)

    def _padded(self, fill: float) -> np.ndarray:
        """Nodes (``fill=nan``) or weights (``fill=0``) as a ``(draws, m)`` array."""
        m = max(len(x) for x in self.nodes)
        src = self.nodes if np.isnan(fill) else self.weights
        out = np.full((self.draws, m), fill)
        for d, x in enumerate(src):
            out[d, : len(x)] = x
        return out


def _check_k(k: Any, limit: int) -> None:
    checks.int_in("k", k, 1, limit)


def js_distance(a: SpectralDensity, b: SpectralDensity, *, points: int = 4096) -> float:
    """The Jensen-Shannon distance (base 2, in [0, 1]) between two smoothed spectral
    densities, the measure Zhang et al. (2024) average over pairs of Hessian blocks.

    Both are evaluated on one grid over the union of their ranges with one kernel
    width, the node-spacing width of the wider (as :func:`spectorch.plotting.
    plot_densities` compares spectra), and normalised on the grid;
    :func:`scipy.spatial.distance.jensenshannon` gives the distance. Spectra of very
    different scales are far apart by this measure: that is what it is meant to show.
    """
    from scipy.spatial.distance import jensenshannon

    for name, d in (("a", a), ("b", b)):
        if not isinstance(d, SpectralDensity):
            raise TypeError(f"{name} must be a SpectralDensity, got {type(d).__name__}")
    checks.int_at_least("points", points, 16)
    lo = min(a.bounds()[0], b.bounds()[0])
    hi = max(a.bounds()[1], b.bounds()[1])
    span = max(hi - lo, 1e-12 * max(abs(lo), abs(hi), 1.0))
    steps = max(a.steps, b.steps)
    sigma = span / max(steps - 1, 1) / math.sqrt(8.0 * math.log(3.0))
    grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, points)
    pa = a.evaluate(grid, sigma=sigma)[1]
    pb = b.evaluate(grid, sigma=sigma)[1]
    return float(jensenshannon(pa / pa.sum(), pb / pb.sum(), base=2))


def js_distances(densities: Mapping[str, SpectralDensity]) -> dict[str, Any]:
    """:func:`js_distance` between every pair of ``densities``: ``{"pairs": {"a | b":
    distance}, "mean": the average over pairs}`` (Zhang et al. 2024's summary)."""
    names = list(densities)
    if len(names) < 2:
        raise ValueError("js_distances needs at least two densities")
    pairs = {
        f"{x} | {y}": js_distance(densities[x], densities[y])
        for i, x in enumerate(names)
        for y in names[i + 1 :]
    }
    return {"pairs": pairs, "mean": float(np.mean(list(pairs.values())))}
