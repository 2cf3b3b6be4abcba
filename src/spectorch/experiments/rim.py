"""The RIM experiments behind ``spectorch rim train|predict`` and the tour: build a
RIM for an inverse problem on real images, train it resumably, score it against the
classical baselines on the test set, and draw the trajectory figure
(:class:`RimConfig` and :func:`run`)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spectorch import checks
from spectorch.experiments._options import option
from spectorch.rim import BACKBONES, PREPROCESSING, RIM
from spectorch.rim.problems import TASKS, Task, load_task, make_task, psnr
from spectorch.train import RunDirectory

__all__ = [
    "DEFAULTS",
    "INITIALIZATIONS",
    "CosineSchedule",
    "RimConfig",
    "baselines",
    "build_rim",
    "predict",
    "predict_directory",
    "run",
    "train_task",
]

#: Starting points of :func:`build_rim`: zero, the back-projection ``Aᵀy``, or the
#: LMMSE (Wiener) estimate from the training set.
INITIALIZATIONS = ("zeros", "adjoint", "lmmse")


@dataclass
class RimConfig:
    """Settings of a RIM experiment. The defaults are the recipe used for every task
    (chosen on the validation sets; docs/benchmarks.md): Putzky's cell, RMSProp-
    normalised scores, the back-projection ``Aᵀy`` as starting point, a loss that
    weighs step t by t, and a cosine schedule over the epochs."""

    task: str = option("digits-deblur", "the inverse problem", choices=sorted(TASKS))
    train_size: int | None = option(None, "training patches (patches-deblur only)")
    backbone: str = option("convrnn", "the RIM's network", choices=sorted(BACKBONES))
    features: int = option(32, "backbone width")
    steps: int = option(10, "RIM iterations")
    preprocessing: str = option("rmsprop", "score preprocessing", choices=PREPROCESSING)
    initialization: str = option("adjoint", "starting point", choices=INITIALIZATIONS)
    epochs: int = option(30, "training epochs")
    learning_rate: float = option(2e-3, "Adam's learning rate", flag="--lr")
    batch_size: int = option(32, "examples per batch")
    schedule: str = option(
        "cosine", "learning-rate schedule over the epochs", choices=("cosine", "constant")
    )
    ema_decay: float = option(0.0, "weight averaging (0: off)")
    clip: float = option(0.0, "gradient-norm clip (0: off)")
    patience: int | None = option(None, "early stopping after this many epochs")
    seed: int = option(0, "seed of the network, the noise and the order")
    examples: int = option(6, "test images in the figure", cli=False)

    def __post_init__(self) -> None:
        checks.choice("task", self.task, TASKS)
        if self.train_size is not None:
            checks.positive_int("train_size", self.train_size)
            if self.task != "patches-deblur":
                raise ValueError(
                    f"train_size applies to task patches-deblur only, got task {self.task!r}"
                )
        checks.choice("backbone", self.backbone, BACKBONES)
        checks.choice("preprocessing", self.preprocessing, PREPROCESSING)
        checks.choice("initialization", self.initialization, INITIALIZATIONS)
        checks.choice("schedule", self.schedule, ("cosine", "constant"))
        for name in ("features", "steps", "epochs", "batch_size", "examples"):
            checks.positive_int(name, getattr(self, name))
        checks.positive("learning_rate", self.learning_rate)
        checks.probability("ema_decay", self.ema_decay, one=False)
        if not self.clip >= 0:
            raise ValueError(f"clip must be >= 0 (0 disables clipping), got {self.clip!r}")
        if self.patience is not None:
            checks.positive_int("patience", self.patience)
        checks.nonnegative_int("seed", self.seed)

    def task_config(self) -> dict[str, Any]:
        """The keywords of the task's builder (:func:`spectorch.rim.problems.make_task`)."""
        return {} if self.train_size is None else {"n_train": self.train_size}

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


#: The recipe's values by name (spectorch 0.1's ``DEFAULTS``), read from
#: :class:`RimConfig`.
DEFAULTS: dict[str, Any] = {
    f.name: f.default
    for f in dataclasses.fields(RimConfig)
    if f.name
    in (
        "backbone",
        "features",
        "steps",
        "preprocessing",
        "initialization",
        "epochs",
        "learning_rate",
        "batch_size",
        "schedule",
    )
}


def build_rim(
    task: Task,
    *,
    backbone: str = RimConfig.backbone,
    features: int = RimConfig.features,
    steps: int = RimConfig.steps,
    preprocessing: str = RimConfig.preprocessing,
    initialization: str = RimConfig.initialization,
    seed: int = 0,
) -> RIM:
    """A RIM for ``task``: backbone ``backbone`` of width ``features``, ``steps``
    iterations, step t weighted by t in the loss; ``initialization`` is one of
    :data:`INITIALIZATIONS` (``"adjoint"`` starts from ``Aᵀy``, ``"lmmse"`` from the
    Wiener estimate, so the RIM learns to improve on it). As every backbone's, the
    output layer starts at zero, so the untrained RIM returns its start."""
    checks.choice("backbone", backbone, BACKBONES)
    checks.choice("initialization", initialization, INITIALIZATIONS)
    torch.manual_seed(seed)
    dims = len(task.dimensions)
    if backbone == "convrnn":
        net = BACKBONES[backbone](1, dims, features=features, hidden=features)
    else:
        net = BACKBONES[backbone](1, dims, features=features, levels=2)
    return RIM(
        task.dimensions,
        net.to(task.train.dtype),
        score_fn=task.problem.score,
        steps=steps,
        score_preprocessing=preprocessing,
        time_weights=[float(t + 1) for t in range(steps)],
        **_start(task, initialization),
    )


def baselines(task: Task, y: torch.Tensor, *, steps: int, long_steps: int = 500) -> dict[str, Any]:
    """The classical estimates of the images behind ``y``:

    * ``Tikhonov``: ``argmin ||y - Ax||² + λ||x||²`` with the λ (of 31 on a log grid
      from 1e-5 to 10) that scores best on the validation set;
    * ``LMMSE``: the Wiener estimate from the training set's mean and covariance;
    * ``MAP-{steps}`` and ``MAP-{long_steps}``: gradient ascent on the posterior
      under that Gaussian prior (ridge 1e-3) from the prior mean.

    Returns ``{"estimates": {name: images}, "tikhonov_lambda": λ}``.
    """
    problem = task.problem
    _, val, _ = task.datasets()
    yv = val.observations()
    grid = np.logspace(-5, 1, 31)
    val_psnr = [float(psnr(problem.tikhonov(yv, lam), val.x).mean()) for lam in grid]
    lam = float(grid[int(np.argmax(val_psnr))])
    mean, cov = task.prior()
    estimates = {
        "Tikhonov": problem.tikhonov(y, lam),
        "LMMSE": problem.lmmse(y, mean, cov),
        f"MAP-{steps}": problem.map_ascent(y, mean, cov, steps),
        f"MAP-{long_steps}": problem.map_ascent(y, mean, cov, long_steps),
    }
    return {"estimates": estimates, "tikhonov_lambda": lam}


def _observation_images(task: Task, y: torch.Tensor) -> torch.Tensor:
    """What to draw for an observation: y itself when it is an image of x's size
    (deblurring), else its back-projection ``Aᵀy``."""
    if y.shape[1] == math.prod(task.problem.shape):
        return y.reshape(-1, *task.problem.shape)
    return task.problem.adjoint(y)


def run(
    out: str | os.PathLike, config: RimConfig | None = None, *, progress: bool = True
) -> dict[str, Any]:
    """Train a RIM on ``config.task`` into ``out`` and score it on the test set.

    ``schedule="cosine"`` anneals the learning rate to zero over ``epochs``
    (``"constant"`` keeps it; the schedule is part of the saved settings, so a run
    resumes with the same ``epochs``). Writes the RIM's ``hparams.json`` (with the
    task), ``last.pt`` and ``best.pt`` (rerunning resumes), ``out/metrics.json`` (test
    PSNR of the RIM, of every baseline and of every RIM step) and ``out/rim.png``
    (truth, observation, baselines and RIM iterates for ``examples`` test images).

    Returns the metrics.
    """
    cfg = config or RimConfig()
    if not isinstance(cfg, RimConfig):
        raise TypeError(f"config must be a RimConfig, got {type(cfg).__name__}")
    out = Path(out)
    _adopt_legacy_task(out)
    the_task = make_task(cfg.task, **cfg.task_config())
    rim = build_rim(
        the_task,
        backbone=cfg.backbone,
        features=cfg.features,
        steps=cfg.steps,
        preprocessing=cfg.preprocessing,
        initialization=cfg.initialization,
        seed=cfg.seed,
    )
    spec = {"name": cfg.task, "config": cfg.task_config(), "initialization": cfg.initialization}
    train, val, test = the_task.datasets(cfg.seed)
    t0 = time.perf_counter()
    result = rim.fit(
        train,
        total_epochs=cfg.epochs,  # a rerun of the command finishes the run
        learning_rate=cfg.learning_rate,
        batch_size=cfg.batch_size,
        checkpoints_directory=out,
        validation=val,
        ema_decay=cfg.ema_decay,
        clip=cfg.clip,
        scheduler=CosineSchedule(cfg.epochs) if cfg.schedule == "cosine" else None,
        patience=cfg.patience,
        seed=cfg.seed,
        progress=progress,
        desc=f"rim {cfg.task}",
        extra_settings={"task": spec},
    )
    seconds = time.perf_counter() - t0
    best = _load(out, the_task, cfg.initialization)
    y, x = test.observations(), test.x
    with torch.no_grad():
        trajectory = [best.link_function(t) for t in best(y)]
    base = baselines(the_task, y, steps=cfg.steps)
    scores = {name: psnr(e, x) for name, e in base["estimates"].items()}
    scores["RIM"] = psnr(trajectory[-1], x)
    metrics = {
        "task": cfg.task,
        "test_images": int(x.shape[0]),
        "psnr": {name: float(s.mean()) for name, s in scores.items()},
        "rim_psnr_per_step": [float(psnr(t, x).mean()) for t in trajectory],
        "tikhonov_lambda": base["tikhonov_lambda"],
        "epochs": result.epochs,
        "resumed_from": result.resumed_from,
        "best_epoch": result.best_epoch,
        "val_losses": result.val_losses,
        "train_seconds_this_call": seconds,
    }
    from spectorch.plotting import plot_rim_trajectory

    run_dir = RunDirectory(out, kind="fit", settings_file=None)
    run_dir.write_json("metrics.json", metrics)
    k = min(cfg.examples, x.shape[0])
    plot_rim_trajectory(
        run_dir.file("rim.png"),
        x[:k],
        _observation_images(the_task, y[:k]),
        {name: e[:k] for name, e in base["estimates"].items() if name in ("Tikhonov", "LMMSE")},
        [t[:k] for t in trajectory],
        scores={name: s[:k] for name, s in scores.items()},
        title=f"{cfg.task}: test PSNR RIM {metrics['psnr']['RIM']:.2f} dB, "
        f"LMMSE {metrics['psnr']['LMMSE']:.2f} dB",
    )
    return metrics


def _adopt_legacy_task(out: Path) -> None:
    """A run of spectorch 0.1 kept its task in ``task.json`` beside ``hparams.json``;
    its task goes into ``hparams.json`` (where runs keep it now) so the run resumes.
    A run on another task is left alone: the settings check refuses it."""
    legacy, hp_path = out / "task.json", out / "hparams.json"
    if not (legacy.is_file() and hp_path.is_file()):
        return
    try:
        old_spec, hparams = json.loads(legacy.read_text()), json.loads(hp_path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read the spectorch 0.1 run in {out}: {exc}") from exc
    if isinstance(hparams, dict) and "task" not in hparams:
        hparams["task"] = old_spec
        RunDirectory(out, kind="fit", settings_file=None).write_json("hparams.json", hparams)


def train_task(
    out: str | os.PathLike,
    task: str = "digits-deblur",
    *,
    task_config: dict[str, Any] | None = None,
    progress: bool = True,
    **settings: Any,
) -> dict[str, Any]:
    """:func:`run` with the :class:`RimConfig` fields as keywords (spectorch 0.1's
    signature; ``task_config={"n_train": N}`` is ``train_size=N``)."""
    task_config = dict(task_config or {})
    if "n_train" in task_config:
        settings.setdefault("train_size", task_config.pop("n_train"))
    if task_config:
        raise ValueError(
            "task_config: only n_train (the training patches) can be set, got "
            f"{sorted(task_config)}"
        )
    return run(out, RimConfig(task=task, **settings), progress=progress)


class CosineSchedule:
    """``optimizer ↦ CosineAnnealingLR(optimizer, epochs)``, comparable by value so a
    resumed run recognises it."""

    def __init__(self, epochs: int):
        self.epochs = int(epochs)

    def __call__(self, optimizer: torch.optim.Optimizer) -> Any:
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, self.epochs)

    def __repr__(self) -> str:
        return f"CosineSchedule({self.epochs})"


def _start(task: Task, initialization: str) -> dict[str, Any]:
    if initialization == "zeros":
        return {}
    fn = task.problem.adjoint if initialization == "adjoint" else task.lmmse()
    return {"initialization": "approximate_inverse", "approximate_inverse_fn": fn}


def _load(directory: Path, task: Task, initialization: str, which: str = "best") -> RIM:
    extra = _start(task, initialization)
    extra.pop("initialization", None)
    return RIM.from_checkpoint(directory, which=which, score_fn=task.problem.score, **extra)


def _task_spec(directory: Path) -> dict[str, Any]:
    """The task a run was trained on: from ``hparams.json``, or from ``task.json`` for
    a run of spectorch 0.1."""
    hp_path, legacy = directory / "hparams.json", directory / "task.json"
    if not hp_path.is_file() and not legacy.is_file():
        raise FileNotFoundError(f"{hp_path} does not exist: not a `spectorch rim train` directory")
    for path in (hp_path, legacy):
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise ValueError(f"cannot read {path}: {exc}") from exc
            spec = data.get("task") if path == hp_path and isinstance(data, dict) else data
            if isinstance(spec, dict) and "name" in spec:
                return spec
    raise ValueError(f"{hp_path} does not say which task the RIM was trained on")


def predict(
    directory: str | os.PathLike,
    observations: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    *,
    which: str = "best",
) -> dict[str, Any]:
    """Run the RIM trained by :func:`run` in ``directory``.

    ``observations``: a ``.npy`` file of observations ``(N, m)`` (or one ``(m,)``);
    default the task's test set, which also reports PSNR. The estimates, ``(N, 1, H,
    W)``, are written to ``out`` (default ``directory/predictions.npy``).
    """
    directory = Path(directory)
    target = Path(out) if out is not None else directory / "predictions.npy"
    if out is not None:
        if target.is_dir():
            raise ValueError(f"output {target} is a directory, expected a .npy file name")
        if not target.parent.is_dir():
            raise FileNotFoundError(f"output directory {target.parent} does not exist")
    spec = _task_spec(directory)
    task = load_task(spec)
    rim = _load(directory, task, spec.get("initialization", "zeros"), which)
    report: dict[str, Any] = {"task": spec["name"]}
    truth = None
    if observations is None:
        _, _, test = task.datasets()
        y, truth = test.observations(), test.x
    else:
        path = Path(observations)
        if not path.is_file():
            raise FileNotFoundError(f"observations file {path} does not exist")
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise ValueError(f"observations file {path} is not a readable .npy: {exc}") from None
        if not isinstance(array, np.ndarray) or not np.issubdtype(array.dtype, np.number):
            raise ValueError(f"observations file {path} must hold one numeric array")
        y = torch.as_tensor(array, dtype=task.train.dtype)
        if y.ndim == 1:
            y = y[None]
        m = task.problem.matrix.shape[0]
        if y.ndim != 2 or y.shape[1] != m:
            raise ValueError(
                f"observations in {path} must have shape (N, {m}) for task {spec['name']}, "
                f"got {tuple(y.shape)}"
            )
        bad = ~torch.isfinite(y)
        if bool(bad.any()):
            rows = bad.any(1).nonzero().flatten().tolist()
            raise ValueError(
                f"observations in {path} hold NaN or inf in {len(rows)} of {y.shape[0]} rows "
                f"(the first is row {rows[0]}); a RIM cannot estimate from them"
            )
    estimate = rim.predict(y)
    RunDirectory(target.parent, kind="fit", settings_file=None).save_npy(
        target.name, estimate.numpy()
    )
    report.update(count=int(y.shape[0]), written=str(target))
    if truth is not None:
        report["psnr"] = float(psnr(estimate, truth).mean())
    return report


#: The name of spectorch 0.1.
predict_directory = predict
