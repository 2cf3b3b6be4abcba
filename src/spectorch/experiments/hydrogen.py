"""The 2-D hydrogen atom of the SpIN paper (Pfau et al., 2019, section 5.1): the
experiment behind ``spectorch spin hydrogen``, a :class:`HydrogenConfig` and
:func:`run` on top of :class:`spectorch.spin.SpectralNetwork`.

``H = -Laplacian - charge / r`` on the box ``[-lim, lim]^ndim``; the network's outputs
are forced to zero on the boundary by the original's mask. In 2-D the exact energies
are ``-charge^2 / (2n + 1)^2`` with degeneracy ``2n + 1`` (``-1``; ``-1/9`` three times;
``-1/25`` five times for the 9 lowest) and the eigenfunctions are known in closed form
(:func:`exact_eigenfunctions`), so every run is checked against the exact answer.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from spectorch import checks
from spectorch.experiments._options import option, parse_widths
from spectorch.plotting import can_show
from spectorch.spin import (
    NESTINGS,
    OBJECTIVES,
    DiagonalOperator,
    LaplacianOperator,
    LinearOperator,
    SpectralNetwork,
    cholesky,
    util,
)
from spectorch.train import RunDirectory

__all__ = [
    "RECIPES",
    "HydrogenConfig",
    "HydrogenNetwork",
    "HydrogenResult",
    "HydrogenSampler",
    "evaluate_hydrogen",
    "exact_eigenfunctions",
    "exact_energies",
    "hamiltonian",
    "quantum_numbers",
    "run",
    "shells",
    "train_hydrogen",
]


def quantum_numbers(neig: int) -> list[tuple[int, int]]:
    """``(n, m)`` of the ``neig`` lowest 2-D states in order: ``n = 0, 1, ...`` and
    ``m = 0, 1, -1, 2, -2, ...`` (``|m| <= n``; ``+m`` is the cosine, ``-m`` the sine)."""
    checks.positive_int("neig", neig)
    out: list[tuple[int, int]] = []
    n = 0
    while len(out) < neig:
        out.append((n, 0))
        for m in range(1, n + 1):
            out.extend([(n, m), (n, -m)])
        n += 1
    return out[:neig]


def exact_energies(neig: int, charge: float = 1.0) -> np.ndarray:
    """The ``neig`` lowest eigenvalues of ``-Laplacian - charge/r`` in 2-D, ascending:
    ``-charge^2 / (2n + 1)^2``, each ``2n + 1`` times."""
    return np.array([-(charge**2) / (2 * n + 1) ** 2 for n, _ in quantum_numbers(neig)])


def shells(neig: int) -> list[list[int]]:
    """Indices of the degenerate shells among the ``neig`` lowest states
    (``[[0], [1, 2, 3], [4, ..., 8], ...]``; the last may be incomplete)."""
    groups: dict[int, list[int]] = {}
    for i, (n, _) in enumerate(quantum_numbers(neig)):
        groups.setdefault(n, []).append(i)
    return list(groups.values())


def _laguerre(k: int, alpha: float, x: Tensor) -> Tensor:
    """The generalised Laguerre polynomial ``L_k^(alpha)(x)`` by its recurrence."""
    prev = torch.ones_like(x)
    if k == 0:
        return prev
    cur = 1 + alpha - x
    for j in range(1, k):
        prev, cur = cur, ((2 * j + 1 + alpha - x) * cur - (j + alpha) * prev) / (j + 1)
    return cur


def exact_eigenfunctions(x: Tensor, neig: int, charge: float = 1.0) -> Tensor:
    """The exact (free-space, unnormalised) 2-D eigenfunctions at ``x`` (``m x 2``) in the
    order of :func:`quantum_numbers`: ``rho^|m| e^(-rho/2) L_(n-|m|)^(2|m|)(rho)`` times
    ``cos(|m| theta)`` or ``sin(|m| theta)``, ``rho = 2 charge r / (2n + 1)``.
    Differentiable in ``x`` (used to check the Laplacians)."""
    if x.ndim != 2 or x.shape[1] != 2:
        raise ValueError(f"x: expected positions of shape (m, 2), got {tuple(x.shape)}")
    r = x.norm(dim=1)
    theta = torch.atan2(x[:, 1], x[:, 0])
    cols = []
    for n, m in quantum_numbers(neig):
        am = abs(m)
        rho = 2 * charge * r / (2 * n + 1)
        radial = rho**am * torch.exp(-rho / 2) * _laguerre(n - am, 2 * am, rho)
        angular = torch.cos(am * theta) if m >= 0 else torch.sin(am * theta)
        cols.append(radial * angular)
    return torch.stack(cols, dim=1)


def hamiltonian(charge: float = 1.0, laplacian_eps: float = 0.0) -> LinearOperator:
    """``-Laplacian + DiagonalOperator(-charge / r)``; the Laplacian is exact for
    ``laplacian_eps = 0`` and by finite differences otherwise (the original's flag)."""
    kinetic = -LaplacianOperator(eps=laplacian_eps or None)
    return kinetic + DiagonalOperator(lambda x: -charge / x.norm(dim=1))


class HydrogenNetwork(nn.Module):
    """The original's network: an MLP with softplus hidden layers (weights
    ``N(0, 1/fan_in)``, biases ``N(0, 1)``), times the boundary mask
    ``prod_i max((sqrt(2 lim^2 - x_i^2) - lim) / lim, 0)`` that vanishes on the box."""

    def __init__(
        self,
        neig: int = 9,
        hidden: tuple[int, ...] = (64, 64, 64),
        *,
        ndim: int = 2,
        lim: float = 50.0,
        boundary: bool = True,
    ) -> None:
        super().__init__()
        sizes = [ndim, *hidden, neig]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))
        with torch.no_grad():
            for layer in self.layers:
                layer.weight.normal_().div_(math.sqrt(layer.in_features))
                layer.bias.normal_()
        self.lim = float(lim)
        self.boundary = bool(boundary)

    def mask(self, x: Tensor) -> Tensor:
        lim = self.lim
        m = torch.clamp((torch.sqrt(torch.clamp(2 * lim**2 - x**2, min=0)) - lim) / lim, min=0)
        return m.prod(dim=-1, keepdim=True)

    def forward(self, x: Tensor) -> Tensor:
        h = x
        for layer in self.layers[:-1]:
            h = nn.functional.softplus(layer(h))
        y = self.layers[-1](h)
        return self.mask(x) * y if self.boundary else y


class HydrogenSampler:
    """Batches of positions in the box ``[-lim, lim]^ndim``, reproducible and resumable.

    ``importance=False``: uniform, as the original. ``importance=True``: a mixture of
    the uniform (fraction ``mix``) and a radial law with ``r ~ Exponential(scale)`` and a
    uniform direction (rejected outside the box, and normalised for it), whose density
    ``~ e^(-r/s) / r^(d-1)``
    puts samples where the low states live and cancels the ``1/r`` of the potential;
    each batch is then ``(x, p(x) / q(x))`` with ``p`` the uniform density of the box,
    so every expectation stays unbiased (weights at most ``1 / mix``).
    """

    def __init__(
        self,
        batch_size: int = 128,
        *,
        lim: float = 50.0,
        ndim: int = 2,
        importance: bool = False,
        scale: float = 8.0,
        mix: float = 0.1,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        checks.int_at_least("batch_size", batch_size, 2)
        checks.positive("lim", lim)
        checks.interval("mix", mix, 0.0, 1.0, closed=(False, True))
        checks.positive("scale", scale)
        self.batch_size, self.lim, self.ndim = int(batch_size), float(lim), int(ndim)
        self.importance, self.scale, self.mix = bool(importance), float(scale), float(mix)
        self.dtype = dtype
        self.generator = torch.Generator().manual_seed(int(seed))
        self.inside = self._inside_probability() if self.importance else 1.0

    def _inside_probability(self) -> float:
        """``P(x in box)`` under the radial law, to normalise the truncated density:
        exact quadrature in 2-D (the fraction of the circle of radius ``r`` inside the
        square is ``1 - (4/pi) arccos(lim/r)`` for ``lim < r < lim sqrt 2``), Monte Carlo
        with 10^6 fixed draws otherwise."""
        lim, s = self.lim, self.scale
        if self.ndim == 2:
            from scipy.integrate import quad

            core = -math.expm1(-lim / s)
            corners, _ = quad(
                lambda r: (1 - 4 / math.pi * math.acos(lim / r)) * math.exp(-r / s) / s,
                lim,
                lim * math.sqrt(2),
            )
            return core + corners
        g = torch.Generator().manual_seed(0)
        r = torch.empty(10**6, dtype=torch.float64).exponential_(1.0 / s, generator=g)
        u = torch.randn(10**6, self.ndim, dtype=torch.float64, generator=g)
        x = r[:, None] * u / u.norm(dim=1, keepdim=True)
        return float((x.abs() <= lim).all(dim=1).double().mean())

    def _radial(self, m: int) -> Tensor:
        g, d = self.generator, self.ndim
        out = torch.empty(0, d, dtype=torch.float64)
        while out.shape[0] < m:
            r = torch.empty(2 * m, dtype=torch.float64).exponential_(1.0 / self.scale, generator=g)
            u = torch.randn(2 * m, d, dtype=torch.float64, generator=g)
            x = r[:, None] * u / u.norm(dim=1, keepdim=True)
            out = torch.cat([out, x[(x.abs() <= self.lim).all(dim=1)]])
        return out[:m]

    def density(self, x: Tensor) -> Tensor:
        """``q(x)`` of the mixture (float64), for ``x`` inside the box."""
        d = self.ndim
        x = x.to(torch.float64)
        uniform = 1.0 / (2 * self.lim) ** d
        if not self.importance:
            return torch.full((x.shape[0],), uniform, dtype=torch.float64)
        r = x.norm(dim=1).clamp_min(1e-300)
        sphere = 2 * math.pi ** (d / 2) / math.gamma(d / 2)
        radial = torch.exp(-r / self.scale) / (self.scale * sphere * r ** (d - 1) * self.inside)
        return self.mix * uniform + (1 - self.mix) * radial

    def sample(self, m: int) -> tuple[Tensor, Tensor | None]:
        g, d = self.generator, self.ndim
        if not self.importance:
            x = (torch.rand(m, d, dtype=torch.float64, generator=g) * 2 - 1) * self.lim
            return x.to(self.dtype), None
        pick = torch.rand(m, generator=g, dtype=torch.float64) < self.mix
        x = self._radial(m)
        nu = int(pick.sum())
        if nu:
            x[pick] = (torch.rand(nu, d, dtype=torch.float64, generator=g) * 2 - 1) * self.lim
        w = (1.0 / (2 * self.lim) ** d) / self.density(x)
        return x.to(self.dtype), w.to(self.dtype)

    def __call__(self) -> Any:
        x, w = self.sample(self.batch_size)
        return x if w is None else (x, w)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


#: Each objective's optimiser and learning rate on hydrogen when the config does not
#: set them: the original example's RMSProp (decay 0.999) at 1e-5 for SpIN; Adam at
#: 1e-3 for NeuralEF and NeuralSVD, which reach 0.24% and 1.66% mean relative error in
#: 20 minutes with it (docs/benchmarks.md).
RECIPES: dict[str, dict[str, Any]] = {
    "spin": {"optimizer": "rmsprop", "lr": 1e-5},
    "neuralef": {"optimizer": "adam", "lr": 1e-3},
    "neuralsvd": {"optimizer": "adam", "lr": 1e-3},
}


def _recipe_help(key: str) -> str:
    return ", ".join(f"{v[key]} {k}" for k, v in RECIPES.items())


@dataclass
class HydrogenConfig:
    """Settings of a hydrogen run; defaults are the original example's flags
    (``neig 9, batch_size 128, lr 1e-5, decay 0.01, lim 50``, RMSProp with decay 0.999,
    exact Laplacian, boundary mask, uniform sampling, MLP 64-64-64). ``lr`` and
    ``optimizer`` left at ``None`` take the objective's :data:`RECIPES`."""

    objective: str = option("spin", "training objective", choices=OBJECTIVES)
    neig: int = option(9, "number of eigenfunctions")
    niter: int = option(1_000_000, "training steps")
    ndim: int = option(2, "dimensions (only 2 has exact answers)", cli=False)
    batch_size: int = option(128, "points per batch (even)")
    laplacian_eps: float = option(0.0, "finite-difference step of the Laplacian; 0 = exact")
    lim: float = option(50.0, "half-width of the box")
    lr: float | None = option(None, f"learning rate ({_recipe_help('lr')})")
    decay: float = option(0.01, "moving-average weight of the new batch")
    boundary: bool = option(True, "zero boundary mask", flag="--no-boundary")
    charge: float = option(1.0, "nuclear charge")
    hidden: tuple[int, ...] = option((64, 64, 64), "hidden widths", parse=parse_widths)
    optimizer: str | None = option(
        None, f"optimiser ({_recipe_help('optimizer')})", choices=("rmsprop", "adam")
    )
    importance: bool = option(False, "importance-sample x near the nucleus")
    importance_scale: float = option(8.0, "radial scale of the importance sampler", cli=False)
    importance_mix: float = option(0.1, "uniform fraction of the importance sampler", cli=False)
    nesting: str = option("joint", "NeuralSVD's nesting", choices=NESTINGS)
    shift: float = option(0.0, "constant added to the operator")
    cosine: bool = option(False, "cosine learning-rate decay over niter")
    log_image_every: int = option(1000, "steps between figures")
    save_params_every: int = option(5000, "steps between checkpoints")
    seed: int = option(0, "seed of the network and the sampler")

    def __post_init__(self) -> None:
        self.hidden = tuple(int(h) for h in self.hidden)
        checks.choice("objective", self.objective, OBJECTIVES)
        recipe = RECIPES[self.objective]
        if self.lr is None:
            self.lr = recipe["lr"]
        if self.optimizer is None:
            self.optimizer = recipe["optimizer"]
        checks.choice("nesting", self.nesting, NESTINGS)
        checks.choice("optimizer", self.optimizer, ("rmsprop", "adam"))
        for name in ("neig", "niter", "batch_size", "log_image_every", "save_params_every"):
            checks.positive_int(name, getattr(self, name))
        checks.nonnegative_int("seed", self.seed)
        if self.ndim != 2:
            raise ValueError(
                f"ndim must be 2 (only the 2-D atom has exact answers), got {self.ndim!r}"
            )
        if self.batch_size % 2:
            raise ValueError(f"batch_size must be an even number, got {self.batch_size}")
        for name in ("lr", "lim", "charge", "importance_scale"):
            checks.positive(name, getattr(self, name))
        checks.probability("decay", self.decay)
        checks.interval("importance_mix", self.importance_mix, 0.0, 1.0, closed=(False, True))
        checks.finite("shift", self.shift)
        if not self.laplacian_eps >= 0:
            raise ValueError(
                f"laplacian_eps must be 0 (exact) or a positive step, got {self.laplacian_eps!r}"
            )
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"hidden must be positive layer widths, got {self.hidden!r}")

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["hidden"] = list(self.hidden)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HydrogenConfig:
        return cls(**d)


@dataclass
class HydrogenResult:
    """What a hydrogen run learned, checked against the exact solution.

    Attributes:
        eigenvalues: the objective's readout on a large evaluation sample, ascending order
            of the learned functions.
        exact: the exact energies.
        relative_errors: ``|eigenvalue - exact| / |exact|`` per state.
        mean_relative_error: their mean.
        ritz: Rayleigh-Ritz values of the learned span on the same sample.
        shell_distances: per degenerate shell, ``sqrt(1 - overlap)`` between the span of
            the learned functions of that shell and the exact one (0 is perfect).
        steps: training steps done (resumed ones included); resumed_from: the step
            this call resumed from (0: a fresh run), so it ran ``steps - resumed_from``;
        seconds: wall time of this call's training; step_seconds: the part of it
            spent in optimisation steps.
        stats: the stats hooks' arrays (up to ``steps``).
    """

    eigenvalues: list[float]
    exact: list[float]
    relative_errors: list[float]
    mean_relative_error: float
    ritz: list[float]
    shell_distances: list[float]
    steps: int
    seconds: float
    out: str
    step_seconds: float = 0.0
    resumed_from: int = 0
    stats: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("stats")
        return d


def _weighted_orthonormal(f: Tensor, w: Tensor | None) -> Tensor:
    a = f if w is None else f * w.sqrt()[:, None]
    q, _ = torch.linalg.qr(a)
    return q


def evaluate_hydrogen(
    net: SpectralNetwork,
    *,
    charge: float = 1.0,
    lim: float = 50.0,
    samples: int = 20_000,
    seed: int = 1234,
    scale: float = 8.0,
) -> dict[str, Any]:
    """Check a trained network against the exact solution on a fresh importance sample.

    Returns:
        ``eigenvalues`` (the objective's readout), ``exact``, ``relative_errors``,
        ``mean_relative_error``, ``ritz`` (Rayleigh-Ritz values of the learned span) and
        ``shell_distances`` (``sqrt(1 - overlap)`` per complete degenerate shell, using
        the weighted inner product of the sample).
    """
    sampler = HydrogenSampler(
        samples, lim=lim, importance=True, scale=scale, seed=seed, dtype=net.dtype
    )
    x, w = sampler.sample(samples)
    sigma, pi = net.estimate(x, w)
    k = sigma.shape[0]
    exact = exact_energies(k, charge)
    eig = net.readout(sigma, pi)
    rel = np.abs(eig - exact) / np.abs(exact)
    sym = 0.5 * (pi + pi.T)
    lchol = cholesky(sigma)  # jitter, with a warning, for a near-singular span
    li = torch.linalg.solve_triangular(lchol, torch.eye(k, dtype=sigma.dtype), upper=False)
    ritz = torch.linalg.eigvalsh(li @ sym @ li.T).numpy()
    ef = net.eigenfunctions(x).to(torch.float64).cpu()
    xe = x.to(torch.float64).cpu()
    we = w.to(torch.float64).cpu()
    exact_f = exact_eigenfunctions(xe, k, charge)
    dists = []
    for idx in shells(k):
        n = quantum_numbers(k)[idx[0]][0]
        if len(idx) < 2 * n + 1:  # an incomplete shell has no well-defined subspace
            continue
        ql = _weighted_orthonormal(ef[:, idx], we)
        qe = _weighted_orthonormal(exact_f[:, idx], we)
        overlap = float((ql.T @ qe).pow(2).sum()) / len(idx)
        dists.append(math.sqrt(max(0.0, 1.0 - overlap)))
    return {
        "eigenvalues": eig.tolist(),
        "exact": exact.tolist(),
        "relative_errors": rel.tolist(),
        "mean_relative_error": float(rel.mean()),
        "ritz": ritz.tolist(),
        "shell_distances": dists,
    }


def shell_zoom(n: int, lim: float, charge: float = 1.0) -> float:
    """Half-width of a box that holds the states of shell ``n`` (0, 1, 2, ...): they
    decay as ``r^n e^(-charge r / (2n + 1))``, so ``3 (2n + 1)(n + 1) / charge``
    (3 for the ground state, 18 for the next shell), at most ``lim``."""
    return min(float(lim), 3.0 * (2 * n + 1) * (n + 1) / charge)


def _plot_grid(cfg: HydrogenConfig, points: int) -> tuple[Tensor, list[tuple[float, ...]]]:
    """One grid of ``points^2`` positions per shell, each zoomed to its states
    (:func:`shell_zoom`), stacked; and the extent of each state's image."""
    zooms = sorted({shell_zoom(n, cfg.lim, cfg.charge) for n, _ in quantum_numbers(cfg.neig)})
    grid = torch.cat([util.grid_reader(cfg.ndim, z, points) for z in zooms])
    extents = [
        (-z, z, -z, z)
        for z in (shell_zoom(n, cfg.lim, cfg.charge) for n, _ in quantum_numbers(cfg.neig))
    ]
    return grid, extents


def _plotting_hooks(
    out: Path, cfg: HydrogenConfig, exact: np.ndarray, live: bool, points: int
) -> dict[str, Any]:
    from spectorch import plotting

    _, extents = _plot_grid(cfg, points)
    zooms = sorted({e[1] for e in extents})
    # each state's image is read from the grid of its own zoom
    which = [zooms.index(e[1]) for e in extents]

    def create() -> tuple[Any, Any]:
        if live:
            import matplotlib.pyplot as plt

            plt.ion()
            return plt.figure(figsize=(8, 8)), plt.figure(figsize=(7, 4.5))
        return None, None

    def update(
        t: int, outputs: np.ndarray, inputs: np.ndarray, psi_fig: Any, curve_fig: Any, **stats: Any
    ) -> None:
        del inputs
        ma = stats.get("eigenvalues_ma", stats.get("eigenvalues"))
        current = ma[t] if ma is not None else np.full(outputs.shape[1], np.nan)
        per_grid = outputs.reshape(len(zooms), points, points, -1)
        # grid_reader's rows run over x first (the original's order): .T puts y down
        images = np.stack([per_grid[g, :, :, i].T for i, g in enumerate(which)], axis=-1)
        title = f"{cfg.objective}, step {t + 1}"
        ylim = (0.5 * float(np.abs(exact).min()), 2.0 * float(np.abs(exact).max()))
        ylabel = "eigenvalue (moving average)"
        if psi_fig is None:
            plotting.plot_eigenfunctions(
                images,
                current,
                out / "eigenfunctions.png",
                extent=extents,
                title=f"{title}: learned eigenfunctions (each shell in its own zoom)",
                exact=exact,
            )
            if ma is not None:
                plotting.plot_eigenvalue_curves(
                    ma[: t + 1],
                    out / "eigenvalues.png",
                    exact=exact,
                    title=title,
                    ylim=ylim,
                    ylabel=ylabel,
                    log=True,
                )
            return
        plotting.draw_eigenfunctions(
            psi_fig, images, current, extent=extents, title=title, exact=exact
        )
        plotting.save_figure(psi_fig, out / "eigenfunctions.png")
        if ma is not None:
            plotting.draw_eigenvalue_curves(
                curve_fig,
                ma[: t + 1],
                exact=exact,
                title=title,
                ylim=ylim,
                ylabel=ylabel,
                log=True,
            )
            plotting.save_figure(curve_fig, out / "eigenvalues.png")
        for fig in (psi_fig, curve_fig):
            fig.canvas.draw_idle()
            fig.canvas.flush_events()

    return {"create": create, "update": update}


def run(
    out: str | os.PathLike,
    config: HydrogenConfig | None = None,
    *,
    show_plots: bool = False,
    time_budget: float | None = None,
    progress: bool = True,
    device: str | torch.device = "cpu",
    eval_samples: int = 20_000,
    plot_points: int = 96,
) -> HydrogenResult:
    """Train a spectral inference network on 2-D hydrogen, resumably, and check it.

    Writes into ``out``: ``config.json``, the checkpoint ``hydrogen_params.pt`` (every
    ``save_params_every`` steps; a second call resumes from it), ``eigenfunctions.png``
    and ``eigenvalues.png`` (every ``log_image_every`` steps, and live in a window when
    ``show_plots`` and a display exists), and ``result.json``.

    Raises:
        ValueError: if ``out`` holds a run with another configuration.
    """
    cfg = config or HydrogenConfig()
    if not isinstance(cfg, HydrogenConfig):
        raise TypeError(f"config must be a HydrogenConfig, got {type(cfg).__name__}")
    checks.positive_int("eval_samples", eval_samples)
    checks.positive_int("plot_points", plot_points)
    out = Path(out)
    run_dir = RunDirectory(
        out,
        cfg.as_dict(),
        kind="spin",
        settings_file="config.json",
        checkpoint="hydrogen_params.pt",
        ignore=("lr",),  # a run that diverged resumes with a lower rate
    )
    run_dir.check()  # before anything is built
    torch.manual_seed(cfg.seed)
    dev = torch.device(device)
    network = HydrogenNetwork(
        cfg.neig, cfg.hidden, ndim=cfg.ndim, lim=cfg.lim, boundary=cfg.boundary
    ).to(dev)
    sampler = HydrogenSampler(
        cfg.batch_size,
        lim=cfg.lim,
        ndim=cfg.ndim,
        importance=cfg.importance,
        scale=cfg.importance_scale,
        mix=cfg.importance_mix,
        seed=cfg.seed + 1,
    )
    operator = hamiltonian(cfg.charge, cfg.laplacian_eps)
    net = SpectralNetwork(
        operator,
        network,
        sampler,
        decay=cfg.decay,
        objective=cfg.objective,
        which="smallest",
        nesting=cfg.nesting,
        shift=cfg.shift,
    )
    if cfg.optimizer == "rmsprop":
        optim: torch.optim.Optimizer = torch.optim.RMSprop(
            network.parameters(), lr=cfg.lr, alpha=0.999
        )
    else:
        optim = torch.optim.Adam(network.parameters(), lr=cfg.lr)
    exact = exact_energies(cfg.neig, cfg.charge)
    logging_config = {
        "config": cfg.as_dict(),
        "log_image_every": cfg.log_image_every,
        "save_params_every": cfg.save_params_every,
        "saver_path": str(out),
        "saver_name": "hydrogen_params",
    }
    stats_hooks = {"create": util.create_default_stats, "update": util.update_default_stats}
    live = show_plots and can_show()
    grid, _ = _plot_grid(cfg, plot_points)
    t0 = time.monotonic()
    stats = net.train(
        optim,
        cfg.niter,
        logging_config,
        stats_hooks,
        plotting_hooks=_plotting_hooks(out, cfg, exact, live, plot_points),
        show_plots=live,
        data_for_plotting=grid,
        progress=progress,
        time_budget=time_budget,
        lr_schedule=(lambda t: 0.5 * (1 + math.cos(math.pi * t / cfg.niter)))
        if cfg.cosine
        else None,
        run=run_dir,
        resume=True,  # rerunning the command continues the run in out
        plot=True,  # the figures are written to files with or without a window
    )
    seconds = time.monotonic() - t0
    check = evaluate_hydrogen(
        net, charge=cfg.charge, lim=cfg.lim, samples=eval_samples, scale=cfg.importance_scale
    )
    result = HydrogenResult(
        steps=net.step_count,
        seconds=seconds,
        step_seconds=net.step_seconds,
        resumed_from=net.resumed_from,
        out=str(out),
        stats={k: v[: net.step_count] for k, v in stats.items() if isinstance(v, np.ndarray)},
        **check,
    )
    run_dir.write_json("result.json", result.summary())
    return result


#: The name of spectorch 0.1.
train_hydrogen = run
