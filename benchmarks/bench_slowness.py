"""SpIN on video with and without the moving average of Sigma (spectorch.experiments.atari).

    python benchmarks/bench_slowness.py --seeds 3 --steps 600 --jobs 2

Trains the Atari network (16 channels, 32 hidden units, one frame per input) on
:func:`spectorch.experiments.atari.ball_video`, whose slowest features are known exactly
(``cos(pi x)`` then ``cos(pi y)``, slowness :func:`~spectorch.experiments.atari.ball_slowness`),
with the original's recipe (centered RMSProp, lr 1e-3, batch 128) at each ``--decays``
value, and reports per run: |r| of the two learned features with the known signals,
their slowness on held-out stacks over the exact one, and CPU seconds per step. Every run is
on one thread. Writes ``benchmarks/out/slowness.json`` and prints a markdown table.

``--time-game GAME`` also times a step of the full Atari network (64 channels, 128
hidden units, 4-frame stacks of 84x84, neig 5, batch 128) on 3000 collected frames of
GAME at each decay: 3 steps of warm-up, then the mean of ``--time-steps``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def run(decay: float, seed: int, steps: int) -> dict:
    from spectorch.experiments import atari

    torch.set_num_threads(1)
    video = atari.ball_video(6000, seed=0)
    held = atari.ball_video(3000, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        data = atari.save_frames(Path(tmp) / "ball.npz", video["frames"], video["episode_starts"])
        cfg = atari.AtariConfig(
            neig=3, niter=steps, decay=decay, channels=16, hidden=32, stack=1, seed=seed,
            log_image_every=steps, save_params_every=steps,
        )  # fmt: skip
        t0 = time.process_time()  # CPU time of one thread: steady on a loaded machine
        result = atari.train_atari(Path(tmp) / "run", data, cfg, progress=False)
        seconds = time.process_time() - t0
    stacks = torch.from_numpy(held["frames"][:, None])
    net = result.network
    f = net.eigenfunctions(stacks).numpy()
    x, y = held["positions"].T
    with np.errstate(invalid="ignore", divide="ignore"):  # a collapsed feature is constant
        r = [
            float(np.nan_to_num(abs(np.corrcoef(f[:, i], s)[0, 1])))
            for i, s in ((1, np.cos(np.pi * x)), (2, np.cos(np.pi * y)))
        ]
    inside = ~held["episode_starts"][1:]
    pairs = np.flatnonzero(inside)
    order = np.stack([pairs, pairs + 1], 1).reshape(-1)
    lam = atari.evaluate_slowness(net, stacks[order])
    lam = np.r_[lam, [np.nan] * (3 - len(lam))]  # a collapsed feature drops out of the span
    exact = [atari.ball_slowness(1, 0), atari.ball_slowness(0, 1)]
    return {
        "decay": decay,
        "seed": seed,
        "r": r,
        "slowness_over_exact": [float(a / b) for a, b in zip(lam[1:], exact, strict=True)],
        "seconds_per_step": seconds / steps,
    }


def time_full_network(game: str, decay: float, steps: int) -> float:
    """Seconds per SpIN step of the full Atari network on frames of ``game``."""
    from spectorch.experiments import atari
    from spectorch.spin import SlownessOperator, SpectralNetwork

    torch.set_num_threads(1)
    data = atari.collect(game, 3000, seed=0, progress=False)
    reader = atari.WindowReader(data["frames"], data["episode_starts"], seed=1)
    torch.manual_seed(0)
    network = atari.AtariNetwork(5)
    net = SpectralNetwork(SlownessOperator(), network, reader, decay=decay)
    optim = torch.optim.RMSprop(network.parameters(), lr=1e-3, alpha=0.999, centered=True)
    for _ in range(3):
        net.step(optim)
    t0 = time.process_time()
    for _ in range(steps):
        net.step(optim)
    return (time.process_time() - t0) / steps


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--decays", type=float, nargs="+", default=[0.0, 0.01])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--time-game", default=None, help="also time the full network on GAME")
    p.add_argument("--time-steps", type=int, default=5)
    p.add_argument("--out", default="benchmarks/out/slowness.json")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel, one thread each")
    args = p.parse_args(argv)
    if args.time_game:
        times = {d: time_full_network(args.time_game, d, args.time_steps) for d in args.decays}
        for d, t in times.items():
            print(f"full network on {args.time_game}, decay {d}: {t:.2f} s / step")
        base = times.get(0.0)
        if base:
            for d, t in times.items():
                if d:
                    print(f"decay {d} is {t / base:.1f}x slower than decay 0")
        if args.seeds == 0:
            return 0
    todo = [(d, s, args.steps) for d in args.decays for s in range(args.seeds)]
    if args.jobs > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.jobs, mp_context=mp.get_context("spawn")) as pool:
            rows = list(pool.map(run, *zip(*todo, strict=True)))
    else:
        rows = [run(*t) for t in todo]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=1))
    print("| decay | seed | r cos(πx) | r cos(πy) | λ1 / exact | λ2 / exact | s / step |")
    # a feature that collapsed to a constant has r 0 and leaves the span (slowness nan)
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        a, b = row["r"]
        c, d = row["slowness_over_exact"]
        print(
            f"| {row['decay']} | {row['seed']} | {a:.3f} | {b:.3f} | {c:.2f} | {d:.2f} | "
            f"{row['seconds_per_step']:.3f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
