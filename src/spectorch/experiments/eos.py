"""The edge of stability on scikit-learn's digits (Cohen et al. 2021, 2022).

Full-batch gradient descent with step size ``η`` on the squared loss: the sharpness
(the top Hessian eigenvalue) rises while the network trains (progressive sharpening)
until it reaches ``2/η``, and then hovers there. Under Adam the same happens to the
*preconditioned* sharpness, the top eigenvalue of ``P⁻¹H``, at
``(2 + 2β₁) / ((1 − β₁) η)`` (38/η at ``β₁ = 0.9``).

Each step size is one resumable run (:class:`spectorch.train.Loop`) in
``<out>/lr_<η>/``, with a :class:`~spectorch.curvature.SharpnessTracker` writing
``sharpness.csv`` there and saved in the checkpoints. The summary measures the stable
phase from the sharpness's first *upward* crossing of the threshold (Adam's starts
above it, from its first steps' tiny second moments, falls and rises again) to the end:
the mean of sharpness / threshold over it.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spectorch import checks
from spectorch._io import atomic_write_json
from spectorch.curvature import (
    HessianOperator,
    SharpnessTracker,
    adam_preconditioner,
    adam_threshold,
    gd_threshold,
)
from spectorch.data import load_digits
from spectorch.experiments._options import option, parse_positive_floats
from spectorch.plotting import plot_sharpness
from spectorch.train import Loop, RunDirectory

__all__ = ["EosConfig", "OPTIMIZERS", "MODELS", "run", "stable_phase"]

OPTIMIZERS = ("gd", "adam")
#: digits in scikit-learn's set that ``load_digits(split="train")`` keeps (80%)
TRAIN_DIGITS = 1438
MODELS = ("mlp", "cnn")


@dataclass
class EosConfig:
    """Settings of the edge-of-stability runs: full-batch training on the first
    ``samples`` standardised digits, squared loss on one-hot targets, float32."""

    optimizer: str = option("gd", "gradient descent (gd) or Adam (adam)", choices=OPTIMIZERS)
    model: str = option("mlp", "tanh MLP 64-100-100-10 or a small tanh CNN", choices=MODELS)
    lrs: tuple[float, ...] = option(
        (1.0, 1.5, 3.0), "step sizes, one run each", parse=parse_positive_floats
    )
    steps: int = option(1500, "full-batch steps per run")
    every: int = option(5, "steps between sharpness measurements")
    samples: int = option(1000, f"training digits, at most {TRAIN_DIGITS} (full batch)")
    beta1: float = option(0.9, "Adam's β₁")
    eps: float = option(1e-7, "Adam's ε")
    checkpoint_every: int = option(250, "steps between checkpoints")
    seed: int = option(0, "seed of the network")

    def __post_init__(self) -> None:
        checks.choice("optimizer", self.optimizer, OPTIMIZERS)
        checks.choice("model", self.model, MODELS)
        if isinstance(self.lrs, (int, float)):
            self.lrs = (float(self.lrs),)
        self.lrs = tuple(checks.positive("lrs", float(v)) for v in self.lrs)
        checks.positive_int("steps", self.steps)
        checks.positive_int("every", self.every)
        checks.int_in("samples", self.samples, 10, TRAIN_DIGITS)
        checks.probability("beta1", self.beta1, one=False)
        checks.positive("eps", self.eps)
        checks.positive_int("checkpoint_every", self.checkpoint_every)
        checks.nonnegative_int("seed", self.seed)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["lrs"] = list(self.lrs)
        return out


def _model(kind: str) -> nn.Module:
    if kind == "mlp":
        return nn.Sequential(nn.Linear(64, 100), nn.Tanh(), nn.Linear(100, 100), nn.Tanh(),
                             nn.Linear(100, 10))  # fmt: skip
    return nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),
        nn.Conv2d(1, 16, 3, padding=1), nn.Tanh(),
        nn.Conv2d(16, 16, 3, padding=1), nn.Tanh(),
        nn.AvgPool2d(2), nn.Flatten(), nn.Linear(16 * 4 * 4, 10),
    )  # fmt: skip


def _data(samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    X, y = load_digits(split="train", dtype=torch.float32)
    X, y = X[:samples], y[:samples]
    X = (X - X.mean(0)) / (X.std(0) + 1e-6)
    return X, nn.functional.one_hot(y, 10).float()


def stable_phase(steps: list[int], sharpness: list[float], threshold: float) -> dict[str, Any]:
    """The phase from the first upward crossing of ``threshold`` to the end: its first
    step, measurements, and the mean (and median) of sharpness / threshold over it;
    ``None`` entries when the sharpness never crossed upwards."""
    start = next(
        (i for i in range(1, len(sharpness))
         if sharpness[i - 1] < threshold <= sharpness[i]),
        None,
    )  # fmt: skip
    if start is None:
        return {"first_crossing": None, "measurements": 0, "mean_ratio": None,
                "median_ratio": None, "max_ratio_before": max(sharpness) / threshold}  # fmt: skip
    ratios = [s / threshold for s in sharpness[start:]]
    return {
        "first_crossing": steps[start],
        "measurements": len(ratios),
        "mean_ratio": statistics.mean(ratios),
        "median_ratio": statistics.median(ratios),
    }


def run_one(cfg: EosConfig, lr: float, out: Path, *, progress: bool = True) -> dict[str, Any]:
    """One step size: train, track, return its summary (resumes a killed run)."""
    torch.manual_seed(cfg.seed)
    model = _model(cfg.model)
    X, Y = _data(cfg.samples)
    loss = nn.MSELoss()
    if cfg.optimizer == "gd":
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        threshold, precondition = gd_threshold(lr), None
    else:
        opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(cfg.beta1, 0.999), eps=cfg.eps)
        threshold = adam_threshold(lr, cfg.beta1)

        def precondition() -> dict[str, torch.Tensor]:
            return adam_preconditioner(opt, model.named_parameters())

    op = HessianOperator(model, loss, [(X, Y)])
    tracker = SharpnessTracker(op, every=cfg.every, precondition=precondition,
                               threshold=threshold, path=out / "sharpness.csv",
                               initial=cfg.optimizer == "gd", seed=cfg.seed)  # fmt: skip

    def step(t: int) -> float:
        opt.zero_grad(set_to_none=True)
        value = loss(model(X), Y)
        value.backward()
        opt.step()
        return float(value.detach())

    settings = cfg.as_dict() | {"lr": lr}
    settings.pop("lrs")
    run_dir = RunDirectory(out, settings, kind="eos", settings_file="config.json")
    Loop(step, cfg.steps, state={"model": model, "optimizer": opt}, run=run_dir,
         checkpoint_every=cfg.checkpoint_every, callbacks=[tracker], seed=cfg.seed,
         progress=progress, desc=f"{cfg.optimizer} lr={lr:g}").run()  # fmt: skip
    phase = stable_phase(tracker.steps, tracker.sharpness, threshold)
    products = [r["products"] for r in tracker.rows]
    cpu = [r["cpu_seconds"] for r in tracker.rows]
    return {"lr": lr, "threshold": threshold, "final_loss": _final_loss(model, loss, X, Y),
            "products_per_measurement": statistics.median(products),
            "cpu_seconds_per_measurement": statistics.median(cpu), **phase,
            "steps": tracker.steps, "sharpness": tracker.sharpness}  # fmt: skip


def _final_loss(model: nn.Module, loss: nn.Module, X: torch.Tensor, Y: torch.Tensor) -> float:
    with torch.no_grad():
        return float(loss(model(X), Y))


def run(out: str | Path, config: EosConfig | None = None, *, progress: bool = True):
    """Every step size of ``config``; writes ``summary.json`` and ``sharpness.png``
    into ``out`` and returns the summary."""
    cfg = config or EosConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = [run_one(cfg, lr, out / f"lr_{lr:g}", progress=progress) for lr in cfg.lrs]
    label = "preconditioned sharpness λ₁(P⁻¹H)" if cfg.optimizer == "adam" else "sharpness λ₁(H)"
    line = "38/η" if cfg.optimizer == "adam" and cfg.beta1 == 0.9 else "threshold"
    plot_sharpness({f"η = {r['lr']:g}": (r["steps"], r["sharpness"], r["threshold"]) for r in runs},
                   out / "sharpness.png", ylabel=label,
                   title=f"{cfg.optimizer.upper()}, {cfg.model}, digits "
                         f"(dashed: {'2/η' if cfg.optimizer == 'gd' else line})")  # fmt: skip
    summary = {"config": cfg.as_dict(),
               "runs": [{k: v for k, v in r.items() if k not in ("steps", "sharpness")}
                        for r in runs]}  # fmt: skip
    atomic_write_json(out / "summary.json", summary)
    return summary
