"""A short pruning run on the bundled digits, for ``spectorch tour``."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

from spectorch._io import atomic_write_json

__all__ = ["pruning_demo"]


def pruning_demo(
    out: str | os.PathLike,
    *,
    hidden: int = 256,
    epochs: int = 5,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Train a 64-``hidden``-10 Spectral network on the digits through its eigenvalues
    only, prune it at 0-95% and record the test accuracy (no fine-tuning), then run the
    pre-training filter at 90% (prune, then train fully). Writes ``pruning.png`` and
    ``result.json`` into ``out``."""
    from spectorch.data import Batches, load_digits
    from spectorch.nn import Spectral
    from spectorch.plotting import plot_pruning_curve
    from spectorch.prune import eigenvalues_only, make_evaluate, make_fit, spectral_pruning

    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    xtr, ytr = load_digits(split="train")
    xte, yte = load_digits(split="test")
    train = Batches(xtr, ytr, batch_size=128, shuffle=True, seed=seed)
    evaluate = make_evaluate(Batches(xte, yte, batch_size=1024))
    torch.manual_seed(seed)
    model = torch.nn.Sequential(Spectral(64, hidden, activation="tanh"), Spectral(hidden, 10))
    eigenvalues_only(model)
    make_fit(train, epochs=epochs, lr=3e-2, seed=seed, progress=progress)(model)
    curve = []
    for p in (0, 25, 50, 75, 90, 95):
        pruned = spectral_pruning(model, p) if p else model
        curve.append({"removed": p, "kept": pruned[0].out_features, "acc": evaluate(pruned)["acc"]})
    filtered = spectral_pruning(model, 90)
    filtered[0].is_base_trainable = filtered[1].is_base_trainable = True
    make_fit(train, epochs=epochs, lr=1e-3, seed=seed, progress=progress)(filtered)
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
        out / "pruning.png",
        marks={"pre-training filter at 90%, then trained": (90, result["filter_90"]["acc"])},
        title=f"Spectral 64-{hidden}-10 on digits",
    )
    atomic_write_json(out / "result.json", result)
    return result
