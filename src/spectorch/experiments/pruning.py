"""A short pruning experiment on the bundled digits, for ``spectorch tour``: train a
Spectral network fully and through its eigenvalues only, prune both by |eigenvalue|,
and run the pre-training filter (prune first, then train)."""

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
    epochs: int = option(30, "epochs of each training")
    lr: float = option(3e-3, "learning rate of the full (eigenvectors and eigenvalues) training")
    eigenvalue_lr: float = option(3e-2, "learning rate of the eigenvalue-only training")
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
    """Spectral pruning (Giambagli et al. 2021; Buffoni et al. 2022) of a
    64-``hidden``-10 Spectral network on the bundled digits.

    Two trainings of the same initial network: a full one (eigenvectors and
    eigenvalues, the reference) and one through the eigenvalues only. Each is pruned
    at every percentage of ``removed`` by |eigenvalue| and tested without fine-tuning;
    then the pre-training filter (prune the eigenvalue-trained network at 90%, train
    what is left fully). Writes ``config.json``, ``pruning.png`` and ``result.json``.
    """
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
    hidden = cfg.hidden

    def network() -> torch.nn.Sequential:
        torch.manual_seed(cfg.seed)
        return torch.nn.Sequential(Spectral(64, hidden, activation="tanh"), Spectral(hidden, 10))

    def curve(model: torch.nn.Module) -> list[dict[str, Any]]:
        rows = []
        for p in cfg.removed:
            pruned = spectral_pruning(model, p) if p else model
            rows.append({"removed": p, "kept": pruned[0].out_features,
                         "acc": evaluate(pruned)["acc"]})  # fmt: skip
        return rows

    full = network()
    make_fit(train, epochs=cfg.epochs, lr=cfg.lr, seed=cfg.seed, progress=progress)(full)
    eig = eigenvalues_only(network())
    make_fit(train, epochs=cfg.epochs, lr=cfg.eigenvalue_lr, seed=cfg.seed, progress=progress)(eig)
    full_curve, eig_curve = curve(full), curve(eig)
    filtered = spectral_pruning(eig, 90)
    filtered[0].is_base_trainable = filtered[1].is_base_trainable = True
    make_fit(train, epochs=cfg.epochs, lr=cfg.lr, seed=cfg.seed, progress=progress)(filtered)
    reference = evaluate(full)["acc"]
    result = {
        "hidden": hidden,
        "reference": {"acc": reference, "what": "fully trained, unpruned"},
        "full": full_curve,
        "curve": eig_curve,
        "filter_90": {"kept": filtered[0].out_features, "acc": evaluate(filtered)["acc"]},
        "seconds": round(time.perf_counter() - t0, 1),
        "figures": ["pruning.png"],
    }
    plot_pruning_curve(
        [c["removed"] for c in full_curve],
        {
            "fully trained, pruned by |eigenvalue|": [c["acc"] for c in full_curve],
            "eigenvalues only trained, pruned": [c["acc"] for c in eig_curve],
        },
        run_dir.file("pruning.png"),
        marks={
            f"eigenvalue-trained, pruned at 90% ({filtered[0].out_features} nodes), then "
            "trained fully": (90, result["filter_90"]["acc"])
        },
        reference=("fully trained, unpruned", reference),
        title=f"Spectral 64-{hidden}-10 on 8x8 digits (test accuracy, no fine-tuning)",
    )
    run_dir.write_json("result.json", result)
    return result


def pruning_demo(
    out: str | os.PathLike, *, progress: bool = False, **settings: Any
) -> dict[str, Any]:
    """:func:`run` with the :class:`PruningConfig` fields as keywords (spectorch 0.1's
    ``spectorch.prune.pruning_demo``)."""
    return run(out, PruningConfig(**settings), progress=progress)
