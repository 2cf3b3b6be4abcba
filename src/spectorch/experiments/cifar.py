"""The CIFAR-10 experiment of Ghorbani, Krishnan & Xiao (2019): train a CIFAR ResNet
with checkpoints every N steps, then one Hessian density per checkpoint, then a figure
of the density along the trajectory (google/spectral-density's ``cifar_train.py`` and
``cifar_eval.py``). :class:`CifarConfig` and :func:`run` (``train_cifar``) on top of
:class:`spectorch.train.Loop`.

    spectorch cifar train --train-data 'cifar-10-batches-bin/data_batch_*.bin' --out run
    spectorch cifar eval --test-data 'cifar-10-batches-bin/test_batch.bin' run
    spectorch cifar density --train-data '...data_batch_*.bin' run --out run/densities
    spectorch cifar figure run/densities --out trajectory.png
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spectorch import checks
from spectorch.data import CifarBatches, read_cifar10
from spectorch.experiments._options import option
from spectorch.nn import cifar_resnet
from spectorch.train import BatchStream, Loop, RunDirectory, load_checkpoint, optimizer_step

__all__ = [
    "CifarConfig",
    "TrainResult",
    "checkpoint_densities",
    "cifar_demo",
    "evaluate",
    "list_checkpoints",
    "load_cifar_checkpoint",
    "load_trajectory",
    "run",
    "train_cifar",
]

#: Where a run keeps its checkpoints: one per ``checkpoint_every`` steps, all kept,
#: since the densities along the trajectory are computed from them.
CHECKPOINT = "step_{step:07d}.pt"

#: A training loss this many times the first step's stops the run as diverged (a
#: 10-class cross-entropy that starts near 2.3 does not reach 2300 in a healthy run).
DIVERGE = 1e3


@dataclass(frozen=True)
class CifarConfig:
    """Everything that defines a training run; saved in every checkpoint.

    The defaults are He et al. (2016)'s CIFAR recipe: SGD with momentum 0.9, learning
    rate 0.1 divided by 10 at 50% and 75% of training, weight decay 1e-4, batches of
    128, random crops and flips.
    """

    steps: int = option(64000, "training steps")
    depth: int = option(32, "6n+2: 8, 20, 32, ...")
    batchnorm: bool = option(True, "BatchNorm layers", flag="--no-batchnorm")
    width: int = option(16, "channels of the first stage")
    batch_size: int = option(128, "images per batch")
    lr: float = option(0.1, "learning rate")
    momentum: float = option(0.9, "SGD momentum")
    weight_decay: float = option(1e-4, "weight decay")
    lr_drops: tuple[float, ...] = option(
        (0.5, 0.75), "fractions of --steps where the learning rate drops", nargs="*"
    )
    lr_factor: float = option(0.1, "factor of each drop", cli=False)
    augment: bool = option(True, "random crops and flips", flag="--no-augment")
    seed: int = option(0, "seed of the network, the order and the augmentation")

    def __post_init__(self) -> None:
        object.__setattr__(self, "lr_drops", tuple(float(f) for f in self.lr_drops))
        for name in ("steps", "batch_size", "width"):
            checks.positive_int(name, getattr(self, name))
        checks.nonnegative_int("seed", self.seed)
        if not isinstance(self.depth, int) or (self.depth - 2) % 6 or self.depth < 8:
            raise ValueError(f"depth must be 6n + 2 (8, 20, 32, 44, ...), got {self.depth}")
        checks.positive("lr", self.lr)
        checks.probability("momentum", self.momentum, one=False)
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        checks.positive("lr_factor", self.lr_factor)
        if any(not 0 < f < 1 for f in self.lr_drops) or list(self.lr_drops) != sorted(
            self.lr_drops
        ):
            raise ValueError(
                f"lr_drops must be increasing fractions in (0, 1), got {self.lr_drops}"
            )

    def milestones(self) -> list[int]:
        """The steps at which the learning rate drops."""
        return [int(f * self.steps) for f in self.lr_drops]

    def lr_at(self, step: int) -> float:
        """The step schedule: ``lr · lr_factor^k`` after the k-th drop (what
        :meth:`scheduler`, torch's ``MultiStepLR``, gives)."""
        drops = sum(step >= m for m in self.milestones())
        return self.lr * self.lr_factor**drops

    def scheduler(self, optimizer: torch.optim.Optimizer) -> Any:
        """The step schedule as torch's ``MultiStepLR``, stepped once per step."""
        return torch.optim.lr_scheduler.MultiStepLR(
            optimizer, self.milestones(), gamma=self.lr_factor
        )

    def model(self) -> nn.Module:
        torch.manual_seed(self.seed)
        return cifar_resnet(self.depth, batchnorm=self.batchnorm, width=self.width)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["lr_drops"] = list(self.lr_drops)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CifarConfig:
        d = dict(d)
        d["lr_drops"] = tuple(d.get("lr_drops", ()))
        return cls(**d)


@dataclass
class TrainResult:
    """What :func:`run` did: the checkpoints written (all of the run, in order),
    the per-step training losses and the step it resumed from."""

    checkpoints: list[Path] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    resumed_from: int = 0


def _data(data: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        return data[0], data[1]
    return read_cifar10(data)


def run(
    out: str | os.PathLike,
    config: CifarConfig | None = None,
    *,
    train_data: Any,
    checkpoint_every: int = 1000,
    device: str | torch.device | None = None,
    progress: bool = True,
    sharpness_every: int | None = None,
    sharpness_images: int = 512,
) -> TrainResult:
    """Train a CIFAR ResNet, writing ``out/step_<step>.pt`` every ``checkpoint_every``
    steps (and at step 0 and the last step); resumes from the latest checkpoint there.

    Every checkpoint holds the model, the optimizer and schedule state, the torch RNG
    state, the step, the configuration and the loss history; writes are atomic. A
    resumed run equals an uninterrupted one: batch ``i`` of epoch ``e`` depends only on
    ``(seed, e, i)``.

    Args:
        out: the run directory.
        config: the run's :class:`CifarConfig`; a resumed run must use the same one.
        train_data: a glob of CIFAR-10 binary batches, or ``(images, labels)``.
        checkpoint_every: steps between checkpoints.
        device: where to train (default: CUDA if available).
        sharpness_every: also track the top Hessian eigenvalue every this many steps
            (:class:`~spectorch.curvature.SharpnessTracker`, eval mode, on the first
            ``sharpness_images`` training images without augmentation), written to
            ``out/sharpness.csv`` and saved in the checkpoints; ``None``: never.

    Raises:
        ValueError: on bad arguments, a directory holding a run with another
            configuration, or a corrupt checkpoint (named).
        FloatingPointError: when the loss or a weight becomes NaN or inf; the last
            checkpoint is left intact.
    """
    config = config or CifarConfig()
    if not isinstance(config, CifarConfig):
        raise TypeError(f"config must be a CifarConfig, got {type(config).__name__}")
    checks.positive_int("checkpoint_every", checkpoint_every)
    run_dir = RunDirectory(
        out,
        config.as_dict(),
        kind="cifar",
        settings_file="config.json",
        checkpoint=CHECKPOINT,
        ignore=("lr",),  # a run that diverged resumes with a lower rate
    )
    run_dir.check()
    images, labels = _data(train_data)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    batches = CifarBatches(
        images,
        labels,
        config.batch_size,
        augment=config.augment,
        shuffle=True,
        drop_last=images.shape[0] >= config.batch_size,
        seed=config.seed,
    )
    model = config.model().to(device)
    opt = torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    scheduler = config.scheduler(opt)
    loss_fn = nn.CrossEntropyLoss()
    batch_at = BatchStream(batches)

    def step(t: int) -> float:
        x, y = batch_at(t)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        opt.zero_grad(set_to_none=True)
        lr = opt.param_groups[0]["lr"]
        return optimizer_step(
            loss_fn(model(x), y), opt, where=f" at step {t} (lower the learning rate, now {lr:g})"
        )

    callbacks = []
    if sharpness_every is not None:
        from spectorch.curvature import HessianOperator, SharpnessTracker

        checks.positive_int("sharpness_every", sharpness_every)
        count = checks.positive_int("sharpness_images", sharpness_images)
        count = min(count, images.shape[0])
        x0, y0 = CifarBatches(images[:count], labels[:count], count, augment=False,
                              shuffle=False)[0]  # fmt: skip
        fixed = [(x0.to(device), y0.to(device))]
        model.eval()  # the operator checks the mode it is built in; the tracker's is eval
        H = HessianOperator(model, loss_fn, fixed)
        model.train()
        tracker = SharpnessTracker(
            H, every=sharpness_every, model=model, path=Path(out) / "sharpness.csv",
            seed=config.seed,
        )  # fmt: skip
        callbacks.append(tracker)
    loop = Loop(
        step,
        config.steps,
        state={"model": model, "optimizer": opt},
        run=run_dir,
        checkpoint_every=checkpoint_every,
        save_initial=True,
        schedulers=[scheduler],
        callbacks=callbacks,
        diverge=DIVERGE,
        progress=progress,
        desc="train",
        postfix=lambda lp: {
            "loss": f"{lp.history['loss'][-1]:.4g}",
            "lr": f"{opt.param_groups[0]['lr']:g}",
        },
    )
    model.train()
    try:
        done = loop.run()
    finally:
        model.eval()
    return TrainResult(
        checkpoints=run_dir.checkpoints(),
        losses=list(done.history.get("loss", [])),
        resumed_from=done.resumed_from,
    )


def train_cifar(
    train_data: Any,
    out: str | os.PathLike,
    config: CifarConfig | None = None,
    **kwargs: Any,
) -> TrainResult:
    """:func:`run` with spectorch 0.1's argument order (``train_data`` first)."""
    return run(out, config, train_data=train_data, **kwargs)


def list_checkpoints(path: str | os.PathLike) -> list[Path]:
    """The checkpoints ``step_<n>.pt`` of a run directory by step, or ``[path]`` for a
    file.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
    """
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint path {path} does not exist")
    return RunDirectory(path, kind="cifar", settings_file=None, checkpoint=CHECKPOINT).checkpoints()


def load_cifar_checkpoint(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """The model of a checkpoint (in eval mode) and the checkpoint itself (its
    ``step``, its configuration under ``settings``), read with
    ``torch.load(weights_only=True)``.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if it is corrupt, truncated or not a spectorch CIFAR checkpoint
            (the message names the file).
    """
    path = Path(path)
    state = load_checkpoint(path, kind="cifar")
    model = CifarConfig.from_dict(state["settings"]).model()
    try:
        model.load_state_dict(state["state"]["model"])
    except (RuntimeError, KeyError) as exc:
        raise ValueError(f"checkpoint {path} does not match its configuration: {exc}") from exc
    return model.eval(), state


@torch.no_grad()
def evaluate(model: nn.Module, batches: Any, device: str | torch.device | None = None) -> dict:
    """Mean cross-entropy and accuracy of ``model`` (eval mode) over ``batches``."""
    device = torch.device(device) if device else next(model.parameters()).device
    model.eval().to(device)
    total, correct, count = 0.0, 0, 0
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        logits = model(x)
        total += float(nn.functional.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
        count += int(y.shape[0])
    return {"loss": total / count, "accuracy": correct / count, "images": count}


def checkpoint_densities(
    checkpoints: str | os.PathLike | Sequence[str | os.PathLike],
    train_data: Any,
    out: str | os.PathLike,
    *,
    images: int | None = None,
    batch_size: int = 500,
    operator: str = "hessian",
    steps: int = 90,
    draws: int = 10,
    seed: int = 0,
    basis: str = "auto",
    device: str | torch.device | None = None,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    width: str = "spacing",
) -> dict[str, Any]:
    """One curvature density per checkpoint, on deterministic data (no shuffle, no
    augmentation: the original's ``--train_mode=lanczos``), into ``out/<checkpoint>/``,
    each resumable; then ``out/trajectory.png``.

    Under ``torch.distributed`` (``world_size > 1``) each rank reads the records
    ``rank::world_size`` and rank 0 runs Lanczos and writes; the others return ``{}``.

    Args:
        checkpoints: a run directory, one checkpoint file, or a list of files.
        train_data: a glob of CIFAR-10 binary batches, or ``(images, labels)``.
        images: use the first ``images`` records (default all).
        batch_size: images per product batch (memory, not the result).
        operator, steps, draws, seed, basis: as :func:`spectorch.density.spectral_density`.

    Returns:
        ``{checkpoint name: SpectralDensity}`` on rank 0.
    """
    from spectorch.curvature import make_operator
    from spectorch.density import spectral_density
    from spectorch.plotting import plot_density, plot_trajectories

    files = (
        [Path(p) for p in checkpoints]
        if isinstance(checkpoints, (list, tuple))
        else list_checkpoints(checkpoints)
    )
    if not files:
        raise FileNotFoundError(f"no checkpoint step_<n>.pt in {checkpoints}")
    states = [load_cifar_checkpoint(f) for f in files]  # every file checked before any work
    X, y = _data(train_data)
    if images is not None:
        checks.positive_int("images", images)
        X, y = X[:images], y[:images]
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    data = CifarBatches(X, y, batch_size, rank=rank, world_size=world_size)
    out = Path(out)
    densities: dict[str, Any] = {}
    for f, (model, state) in zip(files, states, strict=True):
        model.to(device)
        op = make_operator(operator, model, nn.CrossEntropyLoss(), data)
        meta = {"checkpoint": str(f), "step": int(state["step"]), "images": int(X.shape[0])}
        meta["config"] = state["settings"]
        run = out / f.stem
        if world_size > 1:
            from spectorch.distributed import DistributedOperator

            with DistributedOperator(op) as dop:
                if not dop.is_root:
                    dop.serve()
                    continue
                dens = spectral_density(
                    dop, steps=steps, draws=draws, seed=seed, basis=basis, out=run,
                    progress=progress, metadata=dict(meta, world_size=world_size),
                )  # fmt: skip
        else:
            dens = spectral_density(
                op, steps=steps, draws=draws, seed=seed, basis=basis, out=run,
                progress=progress, metadata=meta,
            )  # fmt: skip
        plot_density(dens, run / "density.png", title=f"{f.stem}: {operator}", width=width)
        densities[f.stem] = dens
    if densities:
        labels = {k: f"step {d.metadata['step']}" for k, d in densities.items()}
        plot_trajectories(
            {_run_label(states[0][1]["settings"]): {labels[k]: d for k, d in densities.items()}},
            out / "trajectory.png",
            width=width,
        )
    return densities


def _run_label(config: Mapping[str, Any]) -> str:
    bn = "with" if config.get("batchnorm", True) else "without"
    return f"ResNet-{config.get('depth', '?')} {bn} BatchNorm"


def load_trajectory(directory: str | os.PathLike) -> tuple[str, dict[str, Any]]:
    """The densities written by :func:`checkpoint_densities` in ``directory``, by step:
    ``(run label, {"step N": SpectralDensity})``.

    Raises:
        FileNotFoundError: if ``directory`` holds no density run.
    """
    from spectorch.density import MANIFEST, load_density

    directory = Path(directory)
    runs = []
    for sub in sorted(directory.iterdir()) if directory.is_dir() else []:
        if (sub / MANIFEST).exists():
            dens = load_density(sub)
            runs.append((int(dens.metadata.get("step", len(runs))), dens))
    if not runs:
        raise FileNotFoundError(f"{directory} holds no density runs (step_<n>/{MANIFEST})")
    runs.sort(key=lambda r: r[0])
    label = _run_label(runs[0][1].metadata.get("config", {}))
    return label, {f"step {s}": d for s, d in runs}


def cifar_demo(
    out: str | os.PathLike,
    *,
    images: int = 1024,
    depth: int = 8,
    width: int = 8,
    train_steps: int = 60,
    checkpoint_every: int = 30,
    batch_size: int = 64,
    density_images: int = 128,
    lanczos_steps: int = 20,
    draws: int = 2,
    progress: bool = True,
) -> dict[str, Any]:
    """The whole workflow on generated CIFAR-format files, with and without BatchNorm:
    write ``data_batch_1.bin``/``test_batch.bin``, train, evaluate every checkpoint, one
    Hessian density per checkpoint, and ``trajectories.png`` with both runs side by
    side. Everything goes through the same reader and commands as real CIFAR-10.
    """
    from spectorch.data import synthetic_cifar10, write_cifar10
    from spectorch.plotting import plot_trajectories

    out = Path(out)
    X, y = synthetic_cifar10(images + 256, seed=0)
    train_file = out / "data" / "data_batch_1.bin"
    if not train_file.exists():
        write_cifar10(train_file, X[:images], y[:images])
        write_cifar10(out / "data" / "test_batch.bin", X[images:], y[images:])
    test = CifarBatches(*read_cifar10(out / "data" / "test_batch.bin"), 256)
    summary: dict[str, Any] = {"images": images, "depth": depth, "width": width, "runs": {}}
    panels = {}
    for batchnorm in (True, False):
        name = "batchnorm" if batchnorm else "no_batchnorm"
        config = CifarConfig(
            steps=train_steps,
            depth=depth,
            batchnorm=batchnorm,
            width=width,
            batch_size=batch_size,
            lr=0.05 if batchnorm else 0.1,
        )
        result = run(
            out / name,
            config,
            train_data=str(train_file),
            checkpoint_every=checkpoint_every,
            device="cpu",
            progress=progress,
        )
        dens = checkpoint_densities(
            out / name,
            str(train_file),
            out / f"{name}_densities",
            images=density_images,
            batch_size=density_images,
            steps=lanczos_steps,
            draws=draws,
            device="cpu",
            progress=progress,
        )
        rows = []
        for f in result.checkpoints:
            model, state = load_cifar_checkpoint(f)
            d = dens[f.stem]
            rows.append(
                {
                    "step": int(state["step"]),
                    **{f"test_{k}": v for k, v in evaluate(model, test, "cpu").items()},
                    "top_eigenvalue": float(d.top_eigenvalues(1)[0]),
                    "trace": d.trace().value,
                }
            )
        summary["runs"][name] = rows
        panels[_run_label(config.as_dict())] = load_trajectory(out / f"{name}_densities")[1]
    plot_trajectories(
        panels, out / "trajectories.png", title="Hessian density along training (CIFAR format)"
    )
    summary["figures"] = [
        "trajectories.png",
        "batchnorm_densities/trajectory.png",
        "no_batchnorm_densities/trajectory.png",
    ]
    return summary
