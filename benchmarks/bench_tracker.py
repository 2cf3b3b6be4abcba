"""The sharpness tracker's cost: a training run with and without it.

    python benchmarks/bench_tracker.py

Full-batch gradient descent (step size 1.5) on the edge-of-stability problem of
``spectorch eos`` (tanh MLP 64-100-100-10, 1,000 digits, squared loss, float32) for
``--steps`` steps, without a tracker and with ``SharpnessTracker(k=1)`` every 1, 5,
25 and 100 steps; CPU time on one thread, the variants interleaved over ``--rounds``
rounds, medians. Reported: the run's CPU time over the untracked run's, the CPU time
and products per measurement (warm-started from the previous vector), and one
training step's CPU time.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from spectorch.curvature import HessianOperator, SharpnessTracker
from spectorch.experiments.eos import _data, _model


def train(steps: int, every: int | None) -> tuple[float, list[dict]]:
    torch.manual_seed(0)
    model = _model("mlp")
    X, Y = _data(1000)
    loss = nn.MSELoss()
    opt = torch.optim.SGD(model.parameters(), lr=1.5)
    tracker = None
    if every is not None:
        tracker = SharpnessTracker(HessianOperator(model, loss, [(X, Y)]), every=every)
    t0 = time.process_time()
    for t in range(steps):
        if tracker is not None and t % every == 0:
            tracker.measure(t)
        opt.zero_grad()
        loss(model(X), Y).backward()
        opt.step()
    return time.process_time() - t0, [] if tracker is None else tracker.rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    variants = [None, 1, 5, 25, 100]
    times: dict = {v: [] for v in variants}
    rows: dict = {}
    for r in range(args.rounds):
        for v in variants if r % 2 == 0 else variants[::-1]:
            t, rs = train(args.steps, v)
            times[v].append(t)
            rows[v] = rs
    base = statistics.median(times[None])
    print(
        f"{args.steps} full-batch steps, one training step {base / args.steps * 1e3:.1f} ms CPU\n"
    )
    print(
        "| tracker | run CPU time | over untracked | per measurement | products per measurement |"
    )
    print("|---|---:|---:|---:|---:|")
    print(f"| none | {base:.2f} s | 1.00x | | |")
    for v in variants[1:]:
        t = statistics.median(times[v])
        per = statistics.median(r["cpu_seconds"] for r in rows[v][1:])
        products = statistics.median(r["products"] for r in rows[v][1:])
        print(f"| every {v} | {t:.2f} s | {t / base:.2f}x | {per * 1e3:.0f} ms | {products:g} |")


if __name__ == "__main__":
    main()
