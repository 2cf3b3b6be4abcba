"""Every figure the library draws. Uses matplotlib's object API: no global state."""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from spectorch._io import atomic_path
from spectorch._utils import to_numpy

if TYPE_CHECKING:  # a type only: plotting stays importable without the density stack
    from spectorch.density import SpectralDensity

__all__ = [
    "can_show",
    "new_figure",
    "save_figure",
    "draw_eigenfunctions",
    "draw_eigenvalue_curves",
    "plot_densities",
    "plot_density",
    "plot_eigenfunctions",
    "plot_eigenvalue_curves",
    "plot_landscape",
    "plot_pruning_curve",
    "plot_rim_trajectory",
    "plot_sharpness",
    "plot_slow_features",
    "plot_trajectories",
]

_LOG_RANGE = 1e-8  # the log panels show eight decades below the peak


def new_figure(ncols: int = 1, width: float = 5.0, height: float = 3.6) -> Any:
    """A matplotlib ``Figure`` of ``ncols`` panels of ``width`` x ``height`` inches on
    the Agg canvas (no window, no pyplot state), laid out with constrained layout."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Any, path: str | os.PathLike) -> Path:
    """Write ``fig`` as a PNG (130 dpi) to ``path`` atomically; returns ``path``."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=130)
    with atomic_path(path) as fh:
        fh.write(buf.getvalue())
    return Path(path)


def plot_density(
    density: SpectralDensity,
    path: str | os.PathLike,
    *,
    exact: Any = None,
    title: str | None = None,
    width: str = "spacing",
    **evaluate_kwargs: Any,
) -> Path:
    """The estimated density on linear and log axes, outliers marked, as a PNG.

    Args:
        density: the estimate to draw.
        path: where the PNG goes (written atomically).
        exact: exact eigenvalues, drawn as a histogram for comparison.
        title: the figure's title.
        width: the kernel-width convention of :meth:`SpectralDensity.evaluate`.
        evaluate_kwargs: passed on to :meth:`SpectralDensity.evaluate`.

    Returns:
        The path written.
    """
    grid, phi = density.evaluate(width=width, **evaluate_kwargs)
    outliers = density.outliers()
    fig = new_figure(2)
    axes = fig.subplots(1, 2)
    for ax, log in zip(axes, (False, True), strict=True):
        if exact is not None:
            ev = to_numpy(exact).reshape(-1)
            hist, edges = np.histogram(ev, bins=np.linspace(grid[0], grid[-1], 120), density=True)
            if log:  # empty bins have no logarithm: leave them out
                ax.stairs(
                    np.where(hist > 0, hist, np.nan),
                    edges,
                    color="0.45",
                    lw=1.0,
                    label="exact eigenvalues (histogram)",
                )
            else:
                ax.stairs(
                    hist,
                    edges,
                    color="0.6",
                    fill=True,
                    alpha=0.5,
                    label="exact eigenvalues (histogram)",
                )
        ax.plot(
            grid,
            phi,
            color="C0",
            lw=1.4,
            label=f"SLQ ({density.draws} draws × {density.steps} steps)",
        )
        for i, x in enumerate(outliers):
            ax.axvline(x, color="C3", lw=0.8, ls="--", label="outliers" if i == 0 else None)
        ax.set_xlabel("eigenvalue λ")
        ax.set_ylabel("density φ(λ)" + (" (log)" if log else ""))
        if log:
            ax.set_yscale("log")
            ax.set_ylim(phi.max() * _LOG_RANGE, phi.max() * 3)
    axes[0].legend(fontsize=8, loc="upper right")
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def _shared_sigma(densities: Any, width: str) -> tuple[float, float, float]:
    """One kernel width for densities that are compared, and their common range:
    ``(lo, hi, sigma)``; ``"spacing"``: the node-spacing width of the widest spectrum
    (Papyan 2020), ``"original"``: google/spectral-density's ``sqrt(1e-5) · range``."""
    lo = min(d.bounds()[0] for d in densities)
    hi = max(d.bounds()[1] for d in densities)
    span = max(hi - lo, 1e-12 * max(abs(lo), abs(hi), 1.0))
    if width == "original":
        return lo, hi, math.sqrt(1e-5) * span
    steps = max(d.steps for d in densities)
    return lo, hi, span / max(steps - 1, 1) / math.sqrt(8.0 * math.log(3.0))


def plot_densities(
    densities: Mapping[str, SpectralDensity],
    path: str | os.PathLike,
    *,
    title: str | None = None,
    width: str = "spacing",
) -> Path:
    """Several densities (e.g. Hessian, GGN, Fisher) on log-density axes, as a PNG.

    Spectra of comparable ranges (within a factor 10) share a panel and one kernel
    width; a spectrum of another scale gets a panel of its own (an empirical Fisher a
    hundred times narrower than the Hessian would be a spike on the Hessian's axis)."""
    if not densities:
        raise ValueError("densities is empty: nothing to plot")
    from matplotlib.ticker import MaxNLocator

    # one panel per group of spectra whose ranges agree within a factor 10
    groups: list[dict[str, SpectralDensity]] = []
    for label, dens in densities.items():
        span = max(dens.bounds()[1] - dens.bounds()[0], 1e-300)
        for group in groups:
            spans = [max(d.bounds()[1] - d.bounds()[0], 1e-300) for d in group.values()]
            if max(*spans, span) / min(*spans, span) <= 10.0:
                group[label] = dens
                break
        else:
            groups.append({label: dens})
    together = len(groups) == 1
    fig = new_figure(len(groups), width=6.5 if together else 4.8, height=4.0)
    axes = np.atleast_1d(fig.subplots(1, len(groups)))
    colour = {label: f"C{i}" for i, label in enumerate(densities)}
    for ax, group in zip(axes, groups, strict=True):
        lo, hi, sigma = _shared_sigma(list(group.values()), width)
        grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, 4096)
        peak = 0.0
        for label, dens in group.items():
            _, phi = dens.evaluate(grid, sigma=sigma)
            ax.plot(grid, phi, color=colour[label], lw=1.3, label=label)
            peak = max(peak, float(phi.max()))
        ax.set_yscale("log")
        ax.set_xlim(grid[0], grid[-1])
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.ticklabel_format(axis="x", style="sci", scilimits=(-2, 3))
        ax.set_xlabel("eigenvalue λ")
        ax.set_ylim(peak * _LOG_RANGE, peak * 3)
        ax.legend(fontsize=8, title=f"σ = {sigma:.2g}", title_fontsize=7)
    axes[0].set_ylabel("density φ(λ) (log)")
    if title:
        fig.suptitle(title + ("" if together else " (panels: spectra of different scales)"))
    return save_figure(fig, path)


def plot_block_densities(
    densities: Mapping[str, SpectralDensity],
    path: str | os.PathLike,
    *,
    title: str | None = None,
    width: str = "spacing",
    columns: int = 4,
) -> Path:
    """Block spectra side by side (Zhang et al. 2024's figure): one small panel per
    block, the full spectrum first, each on its own eigenvalue range and log-density
    axis (blocks differ by orders of magnitude), each titled with its name and size.
    """
    if not densities:
        raise ValueError("densities is empty: nothing to plot")
    from matplotlib.ticker import MaxNLocator

    n = len(densities)
    cols = max(1, min(columns, n))
    rows = -(-n // cols)
    fig = new_figure(cols, width=3.4, height=2.7 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols)).reshape(-1)
    for i, (ax, (label, dens)) in enumerate(zip(axes, densities.items(), strict=False)):
        lo, hi, sigma = _shared_sigma([dens], width)
        grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, 2048)
        _, phi = dens.evaluate(grid, sigma=sigma)
        ax.plot(grid, phi, color="C3" if i == 0 else "C0", lw=1.2)
        ax.set_yscale("log")
        ax.set_ylim(float(phi.max()) * _LOG_RANGE, float(phi.max()) * 3)
        ax.set_xlim(grid[0], grid[-1])
        ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.ticklabel_format(axis="x", style="sci", scilimits=(-2, 3))
        ax.tick_params(labelsize=7)
        ax.set_title(f"{label} (P = {dens.dim:,})", fontsize=8)
    for ax in axes[n:]:
        ax.set_visible(False)
    for ax in axes[::cols]:
        ax.set_ylabel("φ(λ) (log)", fontsize=8)
    for ax in axes[max(0, n - cols) : n]:
        ax.set_xlabel("eigenvalue λ", fontsize=8)
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


def plot_trajectories(
    panels: Mapping[str, Mapping[str, SpectralDensity]],
    path: str | os.PathLike,
    *,
    title: str | None = None,
    width: str = "spacing",
) -> Path:
    """Densities along training, one panel per run side by side (e.g. with and without
    BatchNorm), one curve per checkpoint on a shared log-density axis; each curve's
    outliers are marked by ticks of its colour under it (Ghorbani et al. 2019, Fig. 2-4).

    Every curve is smoothed with one kernel width, and every panel shows one
    eigenvalue range (wide enough for each curve to fall to the floor at both ends),
    so the panels and the checkpoints compare as drawn. With ``width="spacing"`` the
    width is the node-spacing width of the widest spectrum (Papyan 2020); with
    ``"original"`` it is google/spectral-density's ``sqrt(1e-5 · range²)``.

    Args:
        panels: ``{panel title: {curve label: density}}``, curves in trajectory order.
        path: where the PNG goes (written atomically).
    """
    if not panels or not all(panels.values()):
        raise ValueError("panels is empty, or one has no density: nothing to plot")
    from matplotlib import colormaps

    every = [d for densities in panels.values() for d in densities.values()]
    lo, hi, sigma = _shared_sigma(every, width)
    grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, 4096)
    fig = new_figure(len(panels), width=5.5, height=4.0)
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharey=True, sharex=True))
    peak = 0.0
    curves = []
    for ax, (panel, densities) in zip(axes, panels.items(), strict=True):
        cmap = colormaps["viridis"]
        n = len(densities)
        for i, (label, dens) in enumerate(densities.items()):
            color = cmap(0.9 * i / max(n - 1, 1))
            _, phi = dens.evaluate(grid, sigma=sigma)
            ax.plot(grid, phi, color=color, lw=1.3, label=label)
            peak = max(peak, float(np.nanmax(phi)))
            curves.append((ax, dens.outliers(resolution=sigma), color, i))
        ax.set_yscale("log")
        ax.set_xlabel("eigenvalue λ")
        ax.set_title(panel, fontsize=10)
        ax.legend(fontsize=7, loc="upper right")
    axes[0].set_xlim(grid[0], grid[-1])
    low = peak * _LOG_RANGE
    for ax, outliers, color, i in curves:
        # a row of ticks per checkpoint just above the bottom of the axis
        ax.plot(outliers, np.full(len(outliers), low * 3.0 ** (i + 1)), "|", color=color, ms=9)
    axes[0].set_ylabel("density φ(λ) (log); ticks: outliers")
    axes[0].set_ylim(low, peak * 3)
    fig.suptitle(
        (f"{title}\n" if title else "") + f"one kernel width σ = {sigma:.3g} for every curve",
        fontsize=10,
    )
    return save_figure(fig, path)


def draw_eigenfunctions(
    fig: Any,
    images: Any,
    eigenvalues: Any,
    *,
    extent: Any = None,
    title: str | None = None,
    exact: Any = None,
) -> None:
    """Draw ``k`` images (``points x points x k``) on a square grid of panels of ``fig``,
    each titled with its eigenvalue (and the exact one, if given), with a colour bar
    centred on 0 and the coordinates on the axes (the original's GUI, as a figure).

    ``extent`` is ``(left, right, bottom, top)`` for every panel, or one such tuple per
    panel (each image may show its own zoom)."""
    images = np.asarray(images)
    eigenvalues = np.asarray(eigenvalues, dtype=np.float64).reshape(-1)
    k = images.shape[-1]
    extents = list(extent) if extent is not None and np.ndim(extent[0]) == 1 else [extent] * k
    exact = None if exact is None else np.asarray(exact, dtype=np.float64).reshape(-1)
    fig.clear()
    n = max(2, int(np.ceil(np.sqrt(k))))
    axes = fig.subplots(n, n)
    for i, ax in enumerate(np.asarray(axes).reshape(-1)):
        if i >= k:
            ax.axis("off")
            continue
        img = images[..., i]
        vmax = float(np.nanmax(np.abs(img))) or 1.0
        shown = ax.imshow(
            img,
            cmap="RdBu_r",
            vmin=-vmax,
            vmax=vmax,
            origin="lower",
            extent=extents[i],
            interpolation="nearest",
        )
        fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.03).ax.tick_params(labelsize=6)
        ax.tick_params(labelsize=6)
        value = eigenvalues[i] if i < len(eigenvalues) else float("nan")
        label = f"{i}: λ = {value:.4g}"
        if exact is not None and i < len(exact):
            label += f" (exact {exact[i]:.4g})"
        ax.set_title(label, fontsize=8)
    if title:
        fig.suptitle(title)


def plot_eigenfunctions(
    images: Any,
    eigenvalues: Any,
    path: str | os.PathLike,
    *,
    extent: Any = None,
    title: str | None = None,
    exact: Any = None,
) -> Path:
    """:func:`draw_eigenfunctions` into a new figure saved (atomically) as a PNG."""
    k = np.asarray(images).shape[-1]
    n = max(2, int(np.ceil(np.sqrt(k))))
    fig = new_figure(1, width=3.1 * n, height=2.8 * n)
    draw_eigenfunctions(fig, images, eigenvalues, extent=extent, title=title, exact=exact)
    return save_figure(fig, path)


def draw_eigenvalue_curves(
    fig: Any,
    curves: Any,
    *,
    exact: Any = None,
    ylabel: str = "eigenvalue",
    title: str | None = None,
    ylim: tuple[float, float] | None = None,
    log: bool = False,
) -> None:
    """Draw the eigenvalue estimates along training (``steps x k``), one colour per
    eigenvalue, with the exact values as dashed lines of the same colour (labelled
    in the legend, which sits outside the axes). ``log``: plot ``|eigenvalue|`` on a
    log axis, which separates eigenvalues of different magnitudes."""
    curves = np.asarray(curves, dtype=np.float64)
    fig.clear()
    ax = fig.subplots()
    steps = np.arange(1, len(curves) + 1)
    k = curves.shape[1] if curves.ndim == 2 else 0
    shown = np.abs(curves) if log else curves
    for i in range(k):
        ax.plot(steps, shown[:, i], color=f"C{i % 10}", lw=1.0, label=f"λ{i}")
    if exact is not None:
        values = np.asarray(exact, dtype=np.float64).reshape(-1)
        for i, value in enumerate(np.abs(values) if log else values):
            ax.axhline(value, color=f"C{i % 10}", ls="--", lw=0.8)
        ax.plot([], [], color="0.3", ls="--", lw=0.8, label="exact (dashed)")
    ax.set_xlabel("step")
    ax.set_ylabel(f"|{ylabel}| (log scale)" if log else ylabel)
    if log:
        ax.set_yscale("log")
    if len(steps) > 1:
        ax.set_xlim(1, len(steps))
    if ylim is not None:
        ax.set_ylim(*ylim)
    if 0 < k <= 16:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    if title:
        ax.set_title(title)


def plot_eigenvalue_curves(
    curves: Any,
    path: str | os.PathLike,
    *,
    exact: Any = None,
    ylabel: str = "eigenvalue",
    title: str | None = None,
    ylim: tuple[float, float] | None = None,
    log: bool = False,
) -> Path:
    """:func:`draw_eigenvalue_curves` into a new figure saved (atomically) as a PNG."""
    fig = new_figure(1, width=7.5, height=4.2)
    draw_eigenvalue_curves(fig, curves, exact=exact, ylabel=ylabel, title=title, ylim=ylim, log=log)
    return save_figure(fig, path)


def plot_landscape(landscape: Any, path: str | os.PathLike, *, title: str | None = None) -> Path:
    """A :class:`~spectorch.curvature.Landscape`: the loss along its direction (1-D),
    or filled contours over its plane (2-D); saved (atomically) as a PNG."""
    fig = new_figure(1, width=5.5, height=4.2)
    ax = fig.subplots()
    x = landscape.coords
    names = {"top": "top eigenvector", "random": "random direction", "given": "direction"}
    what = names.get(landscape.kind, "direction")
    if landscape.dims == 1:
        ax.plot(x, landscape.losses, "-", color="C0")
        ax.axvline(0.0, color="k", lw=0.8, ls=":")
        ax.set_xlabel(f"step along the {what}")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
    else:
        cs = ax.contourf(x, x, landscape.losses.T, levels=30, cmap="viridis")
        ax.contour(x, x, landscape.losses.T, levels=10, colors="k", linewidths=0.4)
        fig.colorbar(cs, ax=ax, label="loss")
        ax.plot([0], [0], "w+", ms=10)
        ax.set_xlabel(f"{what} 1")
        ax.set_ylabel(f"{what} 2")
    if landscape.eigenvalues is not None and len(landscape.eigenvalues):
        lam = ", ".join(f"{v:.3g}" for v in landscape.eigenvalues)
        title = f"{title + ': ' if title else ''}eigenvalues {lam}"
    if title:
        ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def plot_sharpness(
    runs: Mapping[str, tuple[Any, Any, float | None]],
    path: str | os.PathLike,
    *,
    ylabel: str = "sharpness (top eigenvalue)",
    title: str | None = None,
) -> Path:
    """Sharpness against training steps, one curve per run ``label: (steps, values,
    threshold)``, each threshold (2/η, 38/η) a dashed line of its colour; saved
    (atomically) as a PNG."""
    fig = new_figure(1, width=6.5, height=4.2)
    ax = fig.subplots()
    for i, (label, (steps, values, threshold)) in enumerate(runs.items()):
        ax.plot(np.asarray(steps), np.asarray(values, dtype=float), "-", color=f"C{i}",
                label=label, lw=1.3)  # fmt: skip
        if threshold is not None:
            ax.axhline(threshold, color=f"C{i}", ls="--", lw=1)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    if title:
        ax.set_title(title)
    return save_figure(fig, path)


def plot_pruning_curve(
    removed: Any,
    curves: Mapping[str, Any],
    path: str | os.PathLike,
    *,
    marks: Mapping[str, tuple[float, float]] | None = None,
    reference: tuple[str, float] | None = None,
    title: str | None = None,
) -> Path:
    """Test accuracy against the percentage of hidden nodes removed, one curve per
    method, single results as marked points, ``reference`` (label, accuracy) as a
    dashed line; saved (atomically) as a PNG."""
    fig = new_figure(1, width=6.5, height=4.2)
    ax = fig.subplots()
    if reference is not None:
        ax.axhline(100 * reference[1], color="k", ls="--", lw=1, label=reference[0])
    for i, (label, acc) in enumerate(curves.items()):
        ax.plot(removed, 100 * np.asarray(acc, dtype=float), "o-", color=f"C{i}", label=label)
    for j, (label, (x, acc)) in enumerate((marks or {}).items()):
        ax.plot([x], [100 * acc], "*", ms=14, color=f"C{len(curves) + j}", label=label)
    ax.set_xlabel("hidden nodes removed (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    if title:
        ax.set_title(title)
    return save_figure(fig, path)


def plot_rim_trajectory(
    path: str | os.PathLike,
    truth: Any,
    observation: Any,
    estimates: Mapping[str, Any],
    trajectory: list[Any],
    *,
    scores: Mapping[str, Any] | None = None,
    steps_shown: int = 4,
    title: str | None = None,
) -> Path:
    """Rows of examples: ground truth, the observation, each baseline, and the RIM's
    iterates (``steps_shown`` of them, the last included), as a PNG.

    Args:
        path: where to write the PNG.
        truth: images ``(N, 1, H, W)`` (or ``(N, H, W)``).
        observation: the observations shown as images of the same shape (for
            projections, their back-projection ``Aᵀy``).
        estimates: ``name -> images`` of the baselines.
        trajectory: the RIM's iterates, each ``(N, 1, H, W)``.
        scores: ``name -> PSNR per example`` printed under the images (keys of
            ``estimates`` and ``"RIM"``).
    """
    truth = to_numpy(truth).reshape(len(truth), *np.shape(truth)[-2:])
    n = truth.shape[0]

    def images(a: Any) -> np.ndarray:
        return to_numpy(a).reshape(n, *truth.shape[-2:])

    t = len(trajectory)
    picks = sorted({round(i * (t - 1) / max(steps_shown - 1, 1)) for i in range(steps_shown)})
    columns = [("truth", truth), ("observation", images(observation))]
    columns += [(name, images(e)) for name, e in estimates.items()]
    columns += [(f"RIM t={k + 1}", images(trajectory[k])) for k in picks]
    fig = new_figure(1, width=1.25 * len(columns), height=1.3 * n + 0.5)
    axes = fig.subplots(n, len(columns), squeeze=False)
    for j, (name, imgs) in enumerate(columns):
        key = "RIM" if name.startswith("RIM") and picks[-1] + 1 == int(name[6:]) else name
        for i in range(n):
            ax = axes[i, j]
            ax.imshow(imgs[i], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if scores is not None and key in scores:
                ax.set_xlabel(f"{float(to_numpy(scores[key])[i]):.1f} dB", fontsize=7)
            if i == 0:
                ax.set_title(name, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)


def plot_slow_features(
    features: Any,
    frames: Any,
    curves: Any,
    path: str | os.PathLike,
    *,
    shown: int = 4,
    title: str | None = None,
) -> Path:
    """For each learned slow feature, the ``shown`` frames where it is lowest and the
    ``shown`` where it is highest, next to the eigenvalue curves along training.

    Args:
        features: feature values ``(N, k)`` on ``N`` frames, in the order of the
            eigenvalues; a constant first column (the trivial eigenfunction) is skipped.
        frames: the frames ``(N, H, W)``, drawn from 0 (black) to their maximum (white).
        curves: eigenvalue estimates along training ``(steps, k)``.
        path: where to write the PNG.
    """
    f = to_numpy(features).astype(np.float64)
    frames = to_numpy(frames)
    if f.ndim != 2 or frames.ndim != 3 or len(f) != len(frames):
        raise ValueError(
            f"features and frames: expected (N, k) and (N, H, W), got {f.shape} and {frames.shape}"
        )
    first = 1 if f.shape[1] > 1 and np.ptp(f[:, 0]) <= 1e-9 * max(1.0, abs(f[0, 0])) else 0
    rows = list(range(first, f.shape[1]))
    shown = max(1, min(shown, len(f) // 2))
    vmax = max(float(frames.max()), 1e-12)  # the brightest pixel shown white
    fig = new_figure(1, width=1.0 * 2 * shown + 5.5, height=max(3.6, 1.05 * len(rows) + 0.6))
    left, right = fig.subfigures(1, 2, width_ratios=[2 * shown, 5.0])
    axes = left.subplots(len(rows), 2 * shown, squeeze=False)
    for r, i in enumerate(rows):
        order = np.argsort(f[:, i], kind="stable")
        picks = list(order[:shown]) + list(order[::-1][:shown][::-1])
        for j, n in enumerate(picks):
            ax = axes[r, j]
            ax.imshow(frames[n], cmap="gray", vmin=0, vmax=vmax, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(f"feature {i}", fontsize=8)
            if r == 0:
                ax.set_title("lowest" if j < shown else "highest", fontsize=8)
    draw_eigenvalue_curves(right, curves, ylabel="slowness (moving average)")
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)


def can_show() -> bool:
    """Whether matplotlib can open a window here (an interactive backend and a display)."""
    try:
        import matplotlib

        backend = matplotlib.get_backend().lower()
    except Exception:
        return False
    if "agg" in backend or backend in ("pdf", "ps", "svg", "template", "cairo"):
        return False
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY") or os.name == "nt")
