"""A short pruning experiment on the bundled digits, for ``spectorch tour``: train a
Spectral network through its eigenvalues only, prune it by |eigenvalue|, and run the
pre-training filter (prune first, then train)."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from spectorch import checks
from spectorch.experiments._options import option
from spectorch.train import RunDirectory

__all__ = ["PruningConfig", "pruning_demo", "run"]


@dataclass
class PruningConfig:
    """Settings of the pruning experiment (a 64-``hidden``-10 Spectral network)."""

    hidden: int = option(256, "hidden nodes before pruning")
    epochs: int = option(5, "epochs of each training")
    eigenvalue_lr: float = option(3e-2, "learning rate of the eigenvalue-only training")
    lr: float = option(1e-3, "learning rate of the full training after the filter")
    removed: tuple[int, ...] = option((0, 25, 50, 75, 90, 95), "percentages of nodes removed")
    seed: int = option(0, "seed of the network and the batches")

    def __post_init__(self) -> None:
        checks.positive_int("hidden", self.hidden)
        checks.positive_int("epochs", self.epochs)
        checks.positive("eigenvalue_lr", self.eigenvalue_lr)
        checks.positive("lr", self.lr)
        self.removed = tuple(int(checks.interval("removed", p, 0, 100, closed=(True, False)))
                             for p in self.removed)  # fmt: skip
        checks.nonnegative_int("seed", self.seed)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["removed"] = list(self.removed)
        return out


def run(
    out: str | os.PathLike, config: PruningConfig | None = None, *, progress: bool = False
) -> dict[str, Any]:
    """Train a 64-``hidden``-10 Spectral network on the digits through its eigenvalues
    only, prune it at each percentage of ``removed`` and record the test accuracy (no
    fine-tuning), then run the pre-training filter at 90% (prune, then train fully).
    Writes ``config.json``, ``pruning.png`` and ``result.json`` into ``out``."""
    from spectorch.data import Batches, load_digits
    from spectorch.nn import Spectral
    from spectorch.plotting import plot_pruning_curve
    from spectorch.prune import eigenvalues_only, make_evaluate, make_fit, spectral_pruning

    cfg = config or PruningConfig()
    t0 = time.perf_counter()
    run_dir = RunDirectory(out, cfg.as_dict(), kind="pruning", settings_file="config.json").open()
    xtr, ytr = load_digits(split="train")
    xte, yte = load_digits(split="test")
    train = Batches(xtr, ytr, batch_size=128, shuffle=True, seed=cfg.seed)
    evaluate = make_evaluate(Batches(xte, yte, batch_size=1024))
    torch.manual_seed(cfg.seed)
    hidden = cfg.hidden
    model = torch.nn.Sequential(Spectral(64, hidden, activation="tanh"), Spectral(hidden, 10))
    eigenvalues_only(model)
    make_fit(train, epochs=cfg.epochs, lr=cfg.eigenvalue_lr, seed=cfg.seed, progress=progress)(
        model
    )
    curve = []
    for p in cfg.removed:
        pruned = spectral_pruning(model, p) if p else model
        curve.append({"removed": p, "kept": pruned[0].out_features, "acc": evaluate(pruned)["acc"]})
    filtered = spectral_pruning(model, 90)
    filtered[0].is_base_trainable = filtered[1].is_base_trainable = True
    make_fit(train, epochs=cfg.epochs, lr=cfg.lr, seed=cfg.seed, progress=progress)(filtered)
    result = {
        "hidden": hidden,
        "curve": curve,
        "filter_90": {"kept": filtered[0].out_features, "acc": evaluate(filtered)["acc"]},
        "seconds": round(time.perf_counter() - t0, 1),
        "figures": ["pruning.png"],
    }
    plot_pruning_curve(
        [c["removed"] for c in curve],
        {"eigenvalue-trained, pruned (no fine-tuning)": [c["acc"] for c in curve]},
        run_dir.file("pruning.png"),
        marks={"pre-training filter at 90%, then trained": (90, result["filter_90"]["acc"])},
        title=f"Spectral 64-{hidden}-10 on digits",
    )
    run_dir.write_json("result.json", result)
    return result


def pruning_demo(
    out: str | os.PathLike, *, progress: bool = False, **settings: Any
) -> dict[str, Any]:
    """:func:`run` with the :class:`PruningConfig` fields as keywords (spectorch 0.1's
    ``spectorch.prune.pruning_demo``)."""
    return run(out, PruningConfig(**settings), progress=progress)
