"""The RIM workflow behind ``spectorch rim train|predict`` and the tour: build a RIM
for a task, train it resumably, score it against the classical baselines on the test
set, and draw the trajectory figure."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spectorch._io import atomic_save_npy, atomic_write_json
from spectorch.rim._backbones import BACKBONES
from spectorch.rim._rim import RIM
from spectorch.rim.problems import TASKS, Task, load_task, make_task, psnr

__all__ = ["DEFAULTS", "baselines", "build_rim", "predict_directory", "train_task"]

#: The recipe used for every task unless overridden (chosen on the validation sets;
#: docs/benchmarks.md): Putzky's cell, RMSProp-normalised scores, the back-projection
#: ``Aᵀy`` as starting point and a loss that weighs step t by t.
DEFAULTS: dict[str, Any] = {
    "backbone": "convrnn",
    "features": 32,
    "steps": 10,
    "preprocessing": "rmsprop",
    "initialization": "adjoint",
    "epochs": 30,
    "learning_rate": 2e-3,
    "batch_size": 32,
    "schedule": "cosine",
}


#: Starting points of :func:`build_rim`: zero, the back-projection ``Aᵀy``, or the
#: LMMSE (Wiener) estimate from the training set.
INITIALIZATIONS = ("zeros", "adjoint", "lmmse")


def build_rim(
    task: Task,
    *,
    backbone: str = DEFAULTS["backbone"],
    features: int = DEFAULTS["features"],
    steps: int = DEFAULTS["steps"],
    preprocessing: str = DEFAULTS["preprocessing"],
    initialization: str = DEFAULTS["initialization"],
    seed: int = 0,
) -> RIM:
    """A RIM for ``task``: backbone ``backbone`` of width ``features``, ``steps``
    iterations, step t weighted by t in the loss; ``initialization`` is one of
    :data:`INITIALIZATIONS` (``"adjoint"`` starts from ``Aᵀy``, ``"lmmse"`` from the
    Wiener estimate, so the RIM learns to improve on it). As every backbone's, the
    output layer starts at zero, so the untrained RIM returns its start."""
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {sorted(BACKBONES)}, got {backbone!r}")
    if initialization not in INITIALIZATIONS:
        raise ValueError(f"initialization must be one of {INITIALIZATIONS}, got {initialization!r}")
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


def train_task(
    out: str | os.PathLike,
    task: str = "digits-deblur",
    *,
    task_config: dict[str, Any] | None = None,
    backbone: str = DEFAULTS["backbone"],
    features: int = DEFAULTS["features"],
    steps: int = DEFAULTS["steps"],
    preprocessing: str = DEFAULTS["preprocessing"],
    initialization: str = DEFAULTS["initialization"],
    epochs: int = DEFAULTS["epochs"],
    learning_rate: float = DEFAULTS["learning_rate"],
    batch_size: int = DEFAULTS["batch_size"],
    schedule: str = DEFAULTS["schedule"],
    ema_decay: float = 0.0,
    clip: float = 0.0,
    patience: int | None = None,
    seed: int = 0,
    examples: int = 6,
    progress: bool = True,
) -> dict[str, Any]:
    """Train a RIM on ``task`` into ``out`` and score it on the test set.

    ``schedule="cosine"`` anneals the learning rate to zero over ``epochs``
    (``"constant"`` keeps it; the schedule is part of the saved settings, so a run
    resumes with the same ``epochs``). Writes ``out/task.json``, the RIM's
    ``hparams.json``, ``last.pt`` and ``best.pt`` (rerunning resumes),
    ``out/metrics.json`` (test PSNR of the RIM, of every baseline and of every RIM
    step) and ``out/rim.png`` (truth, observation, baselines and RIM iterates for
    ``examples`` test images).

    Returns the metrics.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {task!r}")
    if schedule not in ("cosine", "constant"):
        raise ValueError(f'schedule must be "cosine" or "constant", got {schedule!r}')
    task_config = dict(task_config or {})
    the_task = make_task(task, **task_config)
    rim = build_rim(
        the_task,
        backbone=backbone,
        features=features,
        steps=steps,
        preprocessing=preprocessing,
        initialization=initialization,
        seed=seed,
    )
    out = Path(out)
    spec = {"name": task, "config": task_config, "initialization": initialization}
    task_path = out / "task.json"
    if task_path.exists() and json.loads(task_path.read_text()) != spec:
        raise ValueError(f"{out} holds a run on another task; use a new --out directory")
    atomic_write_json(task_path, spec)
    train, val, test = the_task.datasets(seed)
    t0 = time.perf_counter()
    result = rim.fit(
        train,
        epochs=epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        checkpoints_directory=out,
        validation=val,
        ema_decay=ema_decay,
        clip=clip,
        scheduler=CosineSchedule(epochs) if schedule == "cosine" else None,
        patience=patience,
        seed=seed,
        progress=progress,
        desc=f"rim {task}",
    )
    seconds = time.perf_counter() - t0
    best = _load(out, the_task, initialization)
    y, x = test.observations(), test.x
    with torch.no_grad():
        trajectory = [best.link_function(t) for t in best(y)]
    base = baselines(the_task, y, steps=steps)
    scores = {name: psnr(e, x) for name, e in base["estimates"].items()}
    scores["RIM"] = psnr(trajectory[-1], x)
    metrics = {
        "task": task,
        "test_images": int(x.shape[0]),
        "psnr": {name: float(s.mean()) for name, s in scores.items()},
        "rim_psnr_per_step": [float(psnr(t, x).mean()) for t in trajectory],
        "tikhonov_lambda": base["tikhonov_lambda"],
        "epochs": result.epochs,
        "best_epoch": result.best_epoch,
        "val_losses": result.val_losses,
        "train_seconds_this_call": seconds,
    }
    atomic_write_json(out / "metrics.json", metrics)
    from spectorch.plotting import plot_rim_trajectory

    k = min(examples, x.shape[0])
    plot_rim_trajectory(
        out / "rim.png",
        x[:k],
        _observation_images(the_task, y[:k]),
        {name: e[:k] for name, e in base["estimates"].items() if name in ("Tikhonov", "LMMSE")},
        [t[:k] for t in trajectory],
        scores={name: s[:k] for name, s in scores.items()},
        title=f"{task}: test PSNR RIM {metrics['psnr']['RIM']:.2f} dB, "
        f"LMMSE {metrics['psnr']['LMMSE']:.2f} dB",
    )
    return metrics


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


def predict_directory(
    directory: str | os.PathLike,
    observations: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    *,
    which: str = "best",
) -> dict[str, Any]:
    """Run the RIM trained by :func:`train_task` in ``directory``.

    ``observations``: a ``.npy`` file of observations ``(N, m)`` (or one ``(m,)``);
    default the task's test set, which also reports PSNR. The estimates, ``(N, 1, H,
    W)``, are written to ``out`` (default ``directory/predictions.npy``).
    """
    directory = Path(directory)
    spec_path = directory / "task.json"
    if not spec_path.is_file():
        raise FileNotFoundError(
            f"{spec_path} does not exist: not a `spectorch rim train` directory"
        )
    spec = json.loads(spec_path.read_text())
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
        y = torch.as_tensor(np.load(path), dtype=task.train.dtype)
        if y.ndim == 1:
            y = y[None]
        m = task.problem.matrix.shape[0]
        if y.ndim != 2 or y.shape[1] != m:
            raise ValueError(
                f"observations in {path} must have shape (N, {m}) for task {spec['name']}, "
                f"got {tuple(y.shape)}"
            )
    estimate = rim.predict(y)
    target = Path(out) if out is not None else directory / "predictions.npy"
    atomic_save_npy(target, estimate.numpy())
    report.update(count=int(y.shape[0]), written=str(target))
    if truth is not None:
        report["psnr"] = float(psnr(estimate, truth).mean())
    return report
