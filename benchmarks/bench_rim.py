"""Recurrent inference machines against the classical solvers and torch-rim.

    python benchmarks/bench_rim.py --tasks digits-deblur digits-cs patches-deblur \
        --seeds 3 --jobs 2

For every task (:mod:`spectorch.rim.problems`) and seed, the mean test PSNR of:

- ``Tikhonov`` (λ chosen on the validation set), ``LMMSE`` (Wiener, from the training
  set's mean and covariance), ``MAP-T`` and ``MAP-500`` (gradient ascent on the
  Gaussian-prior posterior with T and 500 steps); these do not depend on the seed;
- ``RIM``: spectorch's RIM with the recipe of :data:`spectorch.experiments.rim.DEFAULTS`;
- ``feed-forward``: the same backbone once from ``Aᵀy``, no recurrence, no gradient
  input, trained with the same budget;
- ``RIM (hourglass)`` and ``torch-rim``: the same recipe on both sides — an
  Hourglass backbone of the same width, T steps, arcsinh preprocessing, zero start,
  the same epochs, batch size and learning rate and the same fresh noise every
  epoch — with the training steps per second of each (torch-rim only where it is
  installed: ``pip install torch-rim``).

Every training runs in its own process on one thread; ``--jobs`` run side by side.
Writes ``benchmarks/out/rim.json`` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
import time
from pathlib import Path

ARMS = ("RIM", "feed-forward", "RIM (hourglass)", "torch-rim")


def _task(name: str, n_train: int | None):
    from spectorch.rim.problems import make_task

    return make_task(name, **({"n_train": n_train} if n_train and name == "patches-deblur" else {}))


class _FreshNoise:
    """torch-rim's fit never tells the dataset the epoch; count the reads instead so it
    sees exactly the noise spectorch's fit sees (one full pass per epoch)."""

    def __init__(self, dataset):
        self.dataset, self.reads = dataset, 0

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        self.dataset.set_epoch(self.reads // len(self.dataset))
        self.reads += 1
        return self.dataset[i]


def _train(arm: str, name: str, seed: int, cfg: dict) -> dict:
    import torch

    torch.set_num_threads(1)
    from spectorch.experiments.rim import DEFAULTS, CosineSchedule, build_rim
    from spectorch.rim import FeedForward, Hourglass
    from spectorch.rim._rim import RIM
    from spectorch.rim.problems import psnr
    from spectorch.train import fit

    task = _task(name, cfg["n_train"])
    train, _, test = task.datasets(seed)
    y, x = test.observations(), test.x
    epochs, lr, bs, steps = cfg["epochs"], cfg["lr"], DEFAULTS["batch_size"], cfg["steps"]
    n_steps = epochs * -(-len(train) // bs)
    width = cfg["features"]
    t0 = time.perf_counter()
    sched = CosineSchedule(epochs) if cfg["schedule"] == "cosine" else None
    init = cfg["initialization"]

    def fit_rim(rim: RIM) -> None:
        rim.fit(
            train,
            epochs=epochs,
            learning_rate=lr,
            batch_size=bs,
            seed=seed,
            scheduler=sched,
            progress=False,
        )

    if arm == "RIM":
        rim = build_rim(
            task,
            features=width,
            steps=steps,
            seed=seed,
            initialization=init,
            preprocessing=cfg["preprocessing"],
        )
        n_params = sum(q.numel() for q in rim.parameters())
        fit_rim(rim)
        seconds = time.perf_counter() - t0
        estimate = rim.predict(y)
    elif arm == "feed-forward":
        torch.manual_seed(seed)
        base = build_rim(task, features=width, steps=steps, seed=seed).model
        start = {"adjoint": None, "lmmse": task.lmmse(), "zeros": torch.zeros_like}[init]
        net = FeedForward(base, task.problem, start)
        n_params = sum(q.numel() for q in net.parameters())

        from spectorch.rim._rim import _EpochLoader

        class Plain:  # (y, x) items in the same seeded order, fresh noise per epoch
            def __init__(self):
                self.loader = _EpochLoader(_Items(train), bs, shuffle=True, seed=seed)

            def set_epoch(self, e):
                self.loader.set_epoch(e)

            def __iter__(self):
                return iter(self.loader)

        fit(
            net,
            lambda out, target: (out - target).square().mean(),
            Plain(),
            epochs=epochs,
            lr=lr,
            scheduler=sched,
            seed=seed,
            progress=False,
        )
        seconds = time.perf_counter() - t0
        with torch.no_grad():
            estimate = net(y)
    elif arm == "RIM (hourglass)":
        torch.manual_seed(seed)
        net = Hourglass(1, 2, features=width, levels=2, hidden=width)
        n_params = sum(q.numel() for q in net.parameters())
        rim = RIM(
            task.dimensions,
            net,
            score_fn=task.problem.score,
            steps=steps,
            score_preprocessing="arcsinh",
        )
        fit_rim(rim)
        seconds = time.perf_counter() - t0
        estimate = rim.predict(y)
    elif arm == "torch-rim":
        try:
            import rim as torch_rim
        except ImportError:
            return {"arm": arm, "task": name, "seed": seed, "skipped": "torch-rim not installed"}
        torch.manual_seed(seed)
        net = torch_rim.Hourglass(
            1, dimensions=2, nf=width, ch_mult=(2, 2), hidden_units=2 * width, num_layers=1
        )
        n_params = sum(q.numel() for q in net.parameters())
        trim = torch_rim.RIM(
            task.dimensions,
            net,
            score_fn=task.problem.score,
            T=steps,
            score_preprocessing_method="arcsinh",
            device=torch.device("cpu"),
        )
        trim.fit(
            _FreshNoise(train),
            epochs=epochs,
            learning_rate=lr,
            batch_size=bs,
            shuffle=True,
            seed=seed,
            scheduler=sched,
        )
        seconds = time.perf_counter() - t0
        with torch.no_grad():
            estimate = trim.predict(y)
    else:  # pragma: no cover
        raise ValueError(arm)
    return {
        "arm": arm,
        "task": name,
        "seed": seed,
        "psnr": float(psnr(estimate, x).mean()),
        "seconds": seconds,
        "steps_per_second": n_steps / seconds,
        "parameters": n_params,
    }


class _Items:
    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        return self.dataset[i]

    def set_epoch(self, e):
        self.dataset.set_epoch(e)


def _baselines(name: str, cfg: dict) -> dict:
    import torch

    torch.set_num_threads(1)
    from spectorch.experiments.rim import baselines
    from spectorch.rim.problems import psnr

    task = _task(name, cfg["n_train"])
    _, _, test = task.datasets()
    y, x = test.observations(), test.x
    base = baselines(task, y, steps=cfg["steps"])
    out = {k: float(psnr(e, x).mean()) for k, e in base["estimates"].items()}
    out["lambda"] = base["tikhonov_lambda"]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", nargs="+", default=["digits-deblur", "digits-cs", "patches-deblur"])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    p.add_argument("--epochs", type=int, default=None, help="default: 30 digits, 16 patches")
    p.add_argument("--features", type=int, default=None, help="default: 32 digits, 16 patches")
    p.add_argument("--steps", type=int, default=None, help="default: 10 digits, 5 patches")
    p.add_argument("--lr", type=float, default=None, help="default: 2e-3 digits, 3e-3 patches")
    p.add_argument("--n-train", type=int, default=2000, help="training patches (patches task)")
    p.add_argument("--schedule", choices=("cosine", "constant"), default="cosine")
    p.add_argument(
        "--initialization",
        choices=("adjoint", "lmmse", "zeros"),
        default=None,
        help="start of the RIM and input of the feed-forward arm (adjoint digits, lmmse patches)",
    )
    p.add_argument(
        "--preprocessing",
        choices=("identity", "arcsinh", "adam", "rmsprop", "rms"),
        default=None,
        help="the RIM arm's score preprocessing (rmsprop digits, rms patches)",
    )
    p.add_argument("--out", default="benchmarks/out/rim.json")
    args = p.parse_args(argv)

    configs = {}
    for name in args.tasks:
        patches = name == "patches-deblur"
        configs[name] = {
            "epochs": args.epochs or (16 if patches else 30),
            "features": args.features or (16 if patches else 32),
            "steps": args.steps or (5 if patches else 10),
            "lr": args.lr or (3e-3 if patches else 2e-3),
            "n_train": args.n_train if patches else None,
            "schedule": args.schedule,
            "initialization": args.initialization or ("lmmse" if patches else "adjoint"),
            "preprocessing": args.preprocessing or ("rms" if patches else "rmsprop"),
        }
    jobs = [
        (arm, name, seed, configs[name])
        for name in args.tasks
        for seed in range(args.seeds)
        for arm in args.arms
    ]
    ctx = mp.get_context("spawn")
    with ctx.Pool(args.jobs) as pool:
        base = {n: pool.apply_async(_baselines, (n, configs[n])) for n in args.tasks}
        rows = [pool.apply_async(_train, job) for job in jobs]
        rows = [r.get() for r in rows]
        base = {n: b.get() for n, b in base.items()}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"configs": configs, "baselines": base, "runs": rows}, indent=1))
    print(table(base, rows, configs))
    return 0


def table(base: dict, rows: list[dict], configs: dict) -> str:
    import numpy as np

    lines = ["| method | " + " | ".join(configs) + " |", "|---" * (len(configs) + 1) + "|"]
    names = ["Tikhonov", "LMMSE"]
    steps = {c["steps"] for c in configs.values()}
    names += [f"MAP-{s}" for s in sorted(steps)] + ["MAP-500"]
    for n in names:
        cells = [f"{base[t][n]:.2f}" if n in base[t] else "" for t in configs]
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    for arm in ARMS:
        cells = []
        for t in configs:
            got = [r for r in rows if r["arm"] == arm and r["task"] == t and "psnr" in r]
            if not got:
                cells.append("")
                continue
            v = np.array([r["psnr"] for r in got])
            sps = np.mean([r["steps_per_second"] for r in got])
            cells.append(f"{v.mean():.2f} ± {v.std():.2f} ({sps:.2f} steps/s)")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
