"""Pruning hidden nodes of a 64 -> 512 -> 10 network on the bundled digits.

    python benchmarks/bench_pruning.py --seeds 10 --jobs 2

For tanh and ReLU, and each seed, the test accuracy against the fraction of hidden
nodes removed, for five arms that all get the same fine-tuning budget after pruning:

- ``eigenvalue``: a Spectral network trained fully, pruned by ``|diag_end|``;
- ``pretrain filter``: a Spectral network trained through its eigenvalues only, pruned,
  then trained fully from those weights (``spectral_distiller``);
- ``L1``: a Dense network, pruned by the L1 norm of each node's incoming weights
  (``torch.nn.utils.prune.ln_structured``), then removed structurally;
- ``random``: a Dense network, random nodes removed;
- ``scratch``: the control, a Dense network of the surviving width trained from scratch
  for the training plus fine-tuning budget.

Also the inference time of the pruned Spectral model against the unpruned one.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

FRACTIONS = (0.0, 0.25, 0.5, 0.75, 0.9, 0.95)
ARMS = ("eigenvalue", "pretrain filter", "L1", "random", "scratch")


def _dense(width: int, act: str):
    import torch

    a = torch.nn.Tanh() if act == "tanh" else torch.nn.ReLU()
    return torch.nn.Sequential(torch.nn.Linear(64, width), a, torch.nn.Linear(width, 10))


def _remove_dense(model, keep):
    import copy

    import torch

    new = copy.deepcopy(model)
    with torch.no_grad():
        new[0].weight = torch.nn.Parameter(new[0].weight[keep].clone())
        new[0].bias = torch.nn.Parameter(new[0].bias[keep].clone())
        new[0].out_features = int(keep.sum())
        new[2].weight = torch.nn.Parameter(new[2].weight[:, keep].clone())
        new[2].in_features = int(keep.sum())
    return new


def _one(act: str, seed: int, epochs: int, fine: int, eig_lr: float) -> list[dict]:
    import copy

    import torch
    from torch.nn.utils import prune as tprune

    torch.set_num_threads(1)
    from spectorch.data import Batches, load_digits
    from spectorch.nn import Spectral
    from spectorch.prune import eigenvalues_only, make_evaluate, make_fit, spectral_pruning

    xtr, ytr = load_digits(split="train")
    xte, yte = load_digits(split="test")
    train = Batches(xtr, ytr, batch_size=128, shuffle=True, seed=seed)
    evaluate = make_evaluate(Batches(xte, yte, batch_size=1024))
    full = make_fit(train, epochs=epochs, lr=1e-3, seed=seed)
    eig_fit = make_fit(train, epochs=epochs, lr=eig_lr, seed=seed)
    tune = make_fit(train, epochs=fine, lr=1e-3, seed=seed)
    rows = []

    torch.manual_seed(seed)
    dense = _dense(512, act)
    full(dense)
    torch.manual_seed(seed)
    spectral = torch.nn.Sequential(Spectral(64, 512, activation=act), Spectral(512, 10))
    full(spectral)
    torch.manual_seed(seed)
    filt = eigenvalues_only(
        torch.nn.Sequential(Spectral(64, 512, activation=act), Spectral(512, 10))
    )
    eig_fit(filt)
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(512, generator=gen)
    for f in FRACTIONS:
        p = 100 * f
        out = {}
        m = spectral_pruning(spectral, p) if f > 0 else copy.deepcopy(spectral)
        tune(m)
        out["eigenvalue"] = evaluate(m)["acc"]
        m = spectral_pruning(filt, p) if f > 0 else copy.deepcopy(filt)
        for layer in m:
            layer.is_base_trainable = True
        tune(m)
        out["pretrain filter"] = evaluate(m)["acc"]
        kept_n = 512 - round(512 * f)
        probe = copy.deepcopy(dense)
        if f > 0:
            tprune.ln_structured(probe[0], "weight", amount=round(512 * f), n=1, dim=0)
            keep = probe[0].weight_mask.abs().sum(1) > 0
        else:
            keep = torch.ones(512, dtype=torch.bool)
        m = _remove_dense(dense, keep)
        tune(m)
        out["L1"] = evaluate(m)["acc"]
        keep = torch.zeros(512, dtype=torch.bool)
        keep[perm[:kept_n]] = True
        m = _remove_dense(dense, keep)
        tune(m)
        out["random"] = evaluate(m)["acc"]
        torch.manual_seed(seed)
        m = _dense(kept_n, act)
        make_fit(train, epochs=epochs + fine, lr=1e-3, seed=seed)(m)
        out["scratch"] = evaluate(m)["acc"]
        rows.append({"activation": act, "seed": seed, "fraction": f, "kept": kept_n, **out})
    return rows


def _timing(act: str) -> dict:
    import torch

    from spectorch.nn import Spectral
    from spectorch.prune import spectral_pruning

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = torch.nn.Sequential(Spectral(64, 512, activation=act), Spectral(512, 10))
    with torch.no_grad():
        model[0].diag_end.normal_()
    x = torch.randn(4096, 64)
    out = {}
    for f in (0.0, 0.9):
        m = spectral_pruning(model, 100 * f) if f else model
        m.eval()
        with torch.no_grad():
            for _ in range(5):
                m(x)
            times = []
            for _ in range(50):
                t = time.perf_counter()
                m(x)
                times.append(time.perf_counter() - t)
        out[f] = sorted(times)[25]
    return {"activation": act, "unpruned_ms": 1e3 * out[0.0], "pruned90_ms": 1e3 * out[0.9]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=30, help="training epochs (30)")
    parser.add_argument(
        "--fine", type=int, default=10, help="fine-tuning epochs after pruning (10)"
    )
    parser.add_argument(
        "--eig-lr", type=float, default=3e-2, help="eigenvalue-only learning rate (3e-2)"
    )
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default="benchmarks/out/pruning")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tasks = [
        (act, s, args.epochs, args.fine, args.eig_lr)
        for act in ("tanh", "relu")
        for s in range(args.seeds)
    ]
    with mp.get_context("spawn").Pool(args.jobs) as pool:
        rows = [r for chunk in pool.starmap(_one, tasks) for r in chunk]
        timing = pool.map(_timing, ("tanh", "relu"))
    (out / "results.json").write_text(json.dumps({"rows": rows, "timing": timing}, indent=2))
    import numpy as np

    lines = [f"`python {' '.join(sys.argv)}`", ""]
    for act in ("tanh", "relu"):
        lines += [
            f"**{act}** (test accuracy, mean ± std over {args.seeds} seeds)",
            "",
            "| removed | " + " | ".join(ARMS) + " |",
            "| --- | " + " | ".join("---" for _ in ARMS) + " |",
        ]
        for f in FRACTIONS:
            sel = [r for r in rows if r["activation"] == act and r["fraction"] == f]
            cells = []
            for arm in ARMS:
                v = np.array([r[arm] for r in sel])
                cells.append(f"{100 * v.mean():.1f} ± {100 * v.std():.1f}")
            lines.append(f"| {100 * f:.0f}% | " + " | ".join(cells) + " |")
        lines.append("")
    for t in timing:
        lines.append(
            f"- inference, {t['activation']}, 4096 inputs: unpruned {t['unpruned_ms']:.2f} ms, "
            f"90% removed {t['pruned90_ms']:.2f} ms ({t['unpruned_ms'] / t['pruned90_ms']:.1f}x)"
        )
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    print(text)
    _figure(rows, args.seeds, out / "pruning.png")
    return 0


def _figure(rows: list[dict], seeds: int, path: Path) -> None:
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, act in zip(axes, ("tanh", "relu"), strict=True):
        for i, arm in enumerate(ARMS):
            mean, std = [], []
            for f in FRACTIONS:
                v = np.array(
                    [r[arm] for r in rows if r["activation"] == act and r["fraction"] == f]
                )
                mean.append(v.mean())
                std.append(v.std())
            mean, std = np.array(mean), np.array(std)
            x = 100 * np.array(FRACTIONS)
            ax.plot(x, 100 * mean, "o-", color=f"C{i}", label=arm)
            ax.fill_between(x, 100 * (mean - std), 100 * (mean + std), color=f"C{i}", alpha=0.2)
        ax.set_title(f"64-512-10, {act}, {seeds} seeds")
        ax.set_xlabel("hidden nodes removed (%)")
    axes[0].set_ylabel("test accuracy (%)")
    axes[0].legend(fontsize=8)
    fig.savefig(path, dpi=130)


if __name__ == "__main__":
    sys.exit(main())
