"""Slow features of Atari game play: the SpIN paper's second experiment (appendix C.3),
behind ``spectorch spin atari train``.

The smallest eigenfunctions of :class:`~spectorch.spin.SlownessOperator`,
``E[(u_t - u_{t+1})(u_t - u_{t+1})^T]`` over consecutive 4-frame stacks, are the
slowest-varying features of the video. The frames come from
:func:`spectorch.data.collect` (real games, the original's .npz format) or
:func:`spectorch.data.ball_video` (synthetic, with exactly known slow features);

* :class:`AtariNetwork` is the original's network with a constant feature prepended;
* :func:`run` trains it with :class:`~spectorch.spin.SpectralNetwork`, resumably,
  and draws the frames where each feature is lowest and highest.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from spectorch import checks
from spectorch.data import (
    FRAME_SIZE,
    STACK,
    WindowReader,
    ball_slowness,
    ball_video,
    check_game,
    collect,
    games,
    load_frames,
    save_frames,
)
from spectorch.experiments._options import option
from spectorch.plotting import can_show
from spectorch.spin import SlownessOperator, SpectralNetwork, util
from spectorch.train import RunDirectory

__all__ = [
    "AtariConfig",
    "AtariNetwork",
    "AtariResult",
    "evaluate_slowness",
    "run",
    "train_atari",
    # the data pieces, at their spectorch 0.1 names (now in spectorch.data)
    "WindowReader",
    "ball_slowness",
    "ball_video",
    "check_game",
    "collect",
    "games",
    "load_frames",
    "save_frames",
]


class AtariNetwork(nn.Module):
    """The original's network for 4-frame stacks: three 6x6 convolutions of stride 2
    with ``channels`` channels and the original's paddings (``VALID``, ``SAME``,
    ``SAME``, TensorFlow's: 84x84 frames give 40, 20, 10 pixels and 6,400 features at
    64 channels), a hidden layer of ``hidden`` units (ReLU throughout) and a linear
    read-out of ``neig - 1`` features, with a constant feature prepended. The constant
    is the trivial eigenfunction of the slowness operator (eigenvalue 0), so SpIN's
    ordered, Cholesky-whitened outputs hold it first and the learned features are
    centred and decorrelated from it by construction.

    uint8 inputs are scaled to ``[0, 1]``; float inputs are taken as they are.
    """

    #: the original's paddings of the three convolutions (examples/atari.py)
    PADDINGS = ("VALID", "SAME", "SAME")

    def __init__(
        self,
        neig: int = 5,
        *,
        stack: int = STACK,
        size: int = FRAME_SIZE,
        channels: int = 64,
        hidden: int = 128,
    ) -> None:
        super().__init__()
        self.neig = checks.int_at_least("neig", neig, 2)
        self.stack = checks.int_at_least("stack", stack, 1)
        self.size = checks.int_at_least("size", size, 1)
        side = self.size
        layers: list[nn.Module] = []
        c = self.stack
        for padding in self.PADDINGS:
            if padding == "SAME":  # TensorFlow's split: the odd pixel after
                out = -(-side // 2)
                total = max((out - 1) * 2 + 6 - side, 0)
                layers.append(nn.ZeroPad2d((total // 2, total - total // 2) * 2))
                side = out
            else:
                side = (side - 6) // 2 + 1
            if side < 1:
                raise ValueError(
                    f"size: three 6x6 convolutions of stride 2 need frames of at least "
                    f"6 pixels, got {size}"
                )
            layers += [nn.Conv2d(c, channels, 6, stride=2), nn.ReLU()]
            c = channels
        self.features = nn.Sequential(
            *layers,
            nn.Flatten(),
            nn.Linear(channels * side * side, hidden),
            nn.ReLU(),
            nn.Linear(hidden, self.neig - 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        dtype = self.features[0].weight.dtype
        if x.dtype == torch.uint8:
            x = x.to(dtype) / 255.0
        if x.ndim != 4 or x.shape[1:] != (self.stack, self.size, self.size):
            raise ValueError(
                f"x: expected stacks of shape (n, {self.stack}, {self.size}, {self.size}), "
                f"got {tuple(x.shape)}"
            )
        f = self.features(x.to(dtype))
        return torch.cat([torch.ones_like(f[:, :1]), f], dim=1)


@dataclass
class AtariConfig:
    """Settings of a slow-feature run. The defaults are the original example's (neig 5,
    batch 128, lr 1e-3, centered RMSProp; 64 channels, 128 hidden units; ``neig``
    counts the constant feature) except ``decay``: the original averaged ``Sigma`` and
    its Jacobian over steps with weight 0.01, but at lr 1e-3 the features then shrink
    faster than the average follows and collapse (on :func:`ball_video`, 3 seeds of 3:
    ``|r| <= 0.32`` with the known slow signals, against ``>= 0.94`` with ``decay=0``;
    ``benchmarks/bench_slowness.py``), and the averaged Jacobian costs ``neig^2``
    backward passes a step (13x slower at neig 5 on 84x84 frames, CPU). ``decay=0``
    uses each window's own ``Sigma``; ``--decay 0.01`` restores the original.

    The objective is SpIN's: the constant feature relies on its scale-free,
    Cholesky-whitened loss (NeuralEF and NeuralSVD, whose losses set each feature's
    scale, reached only ``|r|`` 0.3-0.6 on :func:`ball_video` with it)."""

    neig: int = option(5, "features, the constant included")
    niter: int = option(20_000, "training steps")
    batch_size: int = option(128, "stacks per window")
    lr: float = option(1e-3, "learning rate")
    decay: float = option(
        0.0,
        "moving-average weight of the new batch; the original's 0.01 is unstable at "
        "lr 1e-3 and 13x slower",
    )
    rmsprop_decay: float = option(0.999, "RMSProp's decay", cli=False)
    channels: int = option(64, "channels of the convolutions", cli=False)
    hidden: int = option(128, "hidden units", cli=False)
    stack: int = option(STACK, "frames per stack", cli=False)
    evaluation_stacks: int = option(1024, "stacks the result is measured on", cli=False)
    log_image_every: int = option(1000, "steps between figures")
    save_params_every: int = option(1000, "steps between checkpoints")
    seed: int = option(0, "seed of the network and the windows")

    def __post_init__(self) -> None:
        checks.int_at_least("neig", self.neig, 2)
        for name in (
            "niter",
            "batch_size",
            "channels",
            "hidden",
            "stack",
            "evaluation_stacks",
            "log_image_every",
            "save_params_every",
        ):
            checks.positive_int(name, getattr(self, name))
        checks.nonnegative_int("seed", self.seed)
        checks.positive("lr", self.lr)
        for name in ("decay", "rmsprop_decay"):
            checks.probability(name, getattr(self, name))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class AtariResult:
    """What a slow-feature run learned.

    Attributes:
        eigenvalues: the slowness of each learned feature (the constant first, 0),
            the moving average of the training estimates at the last step.
        evaluation: the same, measured on ``evaluation_stacks`` consecutive stacks
            spread over the data (Rayleigh-Ritz values of the learned span).
        steps: steps done (resumed ones included); resumed_from: the step this call
            resumed from (0: a fresh run); seconds: wall time of this call's training.
        figure: the figure of the frames where each feature is lowest and highest.
        network: the trained :class:`~spectorch.spin.SpectralNetwork`
            (``network.eigenfunctions(stacks)`` gives the features of new stacks).
    """

    eigenvalues: list[float]
    evaluation: list[float]
    steps: int
    seconds: float
    out: str
    figure: str
    resumed_from: int = 0
    stats: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    network: SpectralNetwork | None = field(default=None, repr=False)

    def summary(self) -> dict[str, Any]:
        skip = ("stats", "network")
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}


def _evaluation_ends(reader: WindowReader, n: int, seed: int) -> np.ndarray:
    """``n`` stack ends in runs of consecutive pairs (``t, t + 1`` both valid), spread
    over the data: the first of each pair at even positions of the result."""
    ends = reader.stack_ends()
    pairs = ends[:-1][np.diff(ends) == 1]
    if len(pairs) == 0:
        raise ValueError("data: no two consecutive full stacks inside one episode")
    rng = np.random.default_rng(seed)
    first = np.sort(rng.choice(pairs, size=min(max(n // 2, 1), len(pairs)), replace=False))
    return np.stack([first, first + 1], axis=1).reshape(-1)


def evaluate_slowness(net: SpectralNetwork, stacks: Tensor) -> np.ndarray:
    """Slowness of the learned features on ``stacks`` arranged as consecutive pairs
    (rows ``2i`` and ``2i + 1``): the eigenvalues of ``Pi`` in the basis where the
    features are orthonormal (Rayleigh-Ritz), ascending."""
    if not isinstance(stacks, Tensor) or len(stacks) < 2 or len(stacks) % 2:
        got = tuple(stacks.shape) if isinstance(stacks, Tensor) else type(stacks).__name__
        raise ValueError(f"stacks: expected a tensor of consecutive pairs (even rows), got {got}")
    with torch.no_grad():
        u = torch.cat([net.network(s.to(net.device)) for s in stacks.split(256)])
    u = u.to(torch.float64).cpu()
    u = u / u.square().mean(0).sqrt().clamp_min(1e-300)  # the answer is scale-free; SpIN's
    sigma = u.T @ u / len(u)  # outputs drift in scale without the moving average
    d = u[0::2] - u[1::2]
    pi = d.T @ d / len(d)
    evals, vecs = torch.linalg.eigh(sigma)
    keep = evals > evals.max() * 1e-10
    w = vecs[:, keep] / evals[keep].sqrt()
    return torch.linalg.eigvalsh(w.T @ pi @ w).numpy()


def _figure_hook(out: Path, shown: Tensor, title: str) -> Any:
    from spectorch import plotting

    def update(t: int, outputs: np.ndarray, inputs: Any, *plots: Any, **stats: Any) -> None:
        plotting.plot_slow_features(
            outputs,
            shown.numpy(),
            stats["eigenvalues_ma"][: t + 1],
            out / "slow_features.png",
            title=f"{title}, step {t + 1}",
        )

    return {"create": lambda: (), "update": update}


def run(
    out: str | os.PathLike,
    data: str | os.PathLike,
    config: AtariConfig | None = None,
    *,
    progress: bool = True,
    time_budget: float | None = None,
    device: str | torch.device = "cpu",
    show_plots: bool = False,
) -> AtariResult:
    """Learn the slowest features of the video in ``data`` (an .npz of the original's
    format), resumably.

    Writes into ``out``: ``config.json``, the checkpoint ``atari_params.pt`` (every
    ``save_params_every`` steps; a second call resumes from it), ``slow_features.png``
    (every ``log_image_every`` steps: for each learned feature the frames where it is
    lowest and highest over the evaluation stacks, and the eigenvalue curves) and
    ``result.json``.

    Raises:
        ValueError: bad data, or ``out`` holding a run with other settings.
    """
    cfg = config or AtariConfig()
    if not isinstance(cfg, AtariConfig):
        raise TypeError(f"config must be an AtariConfig, got {type(cfg).__name__}")
    out = Path(out)
    data = Path(data)
    reader = WindowReader(data, batch_size=cfg.batch_size, stack=cfg.stack, seed=cfg.seed + 1)
    h, w = reader.frames.shape[1:]
    if h != w:
        raise ValueError(f"data: expected square frames, got {h}x{w}")
    recorded = {**cfg.as_dict(), "data": str(data.resolve()), "frames": len(reader.frames)}
    run_dir = RunDirectory(
        out,
        recorded,
        kind="spin",
        settings_file="config.json",
        checkpoint="atari_params.pt",
        ignore=("lr",),  # a run that diverged resumes with a lower rate
    )
    run_dir.check()  # before anything is built
    torch.manual_seed(cfg.seed)
    network = AtariNetwork(
        cfg.neig, stack=cfg.stack, size=h, channels=cfg.channels, hidden=cfg.hidden
    )
    dev = torch.device(device)
    network = network.to(dev)
    ends = _evaluation_ends(reader, cfg.evaluation_stacks, cfg.seed + 2)
    stacks = reader.stacks(ends)
    net = SpectralNetwork(SlownessOperator(), network, reader, decay=cfg.decay, objective="spin")
    optim = torch.optim.RMSprop(
        network.parameters(), lr=cfg.lr, alpha=cfg.rmsprop_decay, centered=True
    )
    game = data.stem
    logging_config = {
        "config": recorded,
        "log_image_every": cfg.log_image_every,
        "save_params_every": cfg.save_params_every,
        "saver_path": str(out),
        "saver_name": "atari_params",
    }
    shown = stacks[0::2, -1]  # the newest frame of each first-of-pair stack
    hooks = _figure_hook(out, shown, f"{game}, SpIN")
    t0 = time.monotonic()
    stats = net.train(
        optim,
        cfg.niter,
        logging_config,
        {"create": util.create_default_stats, "update": util.update_default_stats},
        plotting_hooks=hooks,
        show_plots=show_plots and can_show(),
        data_for_plotting=stacks[0::2],
        progress=progress,
        time_budget=time_budget,
        run=run_dir,
        resume=True,  # rerunning the command continues the run in out
        plot=True,  # the figures are written to files with or without a window
    )
    seconds = time.monotonic() - t0
    steps = net.step_count
    result = AtariResult(
        eigenvalues=[float(v) for v in stats["eigenvalues_ma"][max(steps - 1, 0)]],
        evaluation=[float(v) for v in evaluate_slowness(net, stacks)],
        steps=steps,
        seconds=seconds,
        resumed_from=net.resumed_from,
        out=str(out),
        figure=str(out / "slow_features.png"),
        stats={k: v[:steps] for k, v in stats.items() if isinstance(v, np.ndarray)},
        network=net,
    )
    run_dir.write_json("result.json", result.summary())
    return result


#: The name of spectorch 0.1.
train_atari = run
