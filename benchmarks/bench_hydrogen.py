"""2-D hydrogen with each objective under the same CPU budget, checked against the exact solution.

    python benchmarks/bench_hydrogen.py --budget 600 --jobs 2

Every run gets ``--budget`` seconds of training on one CPU thread (``--jobs`` runs side
by side), the same network (the original's MLP 64-64-64 with the boundary mask), the
same importance sampler and batch size, Adam with a cosine decay calibrated to end
with the budget. ``spin-original`` is SpIN with the original example's own recipe
(RMSProp 1e-5, uniform sampling, batch 128). Reported per run: the relative error of
each of the 9 lowest energies (each objective's own readout on a fresh 20,000-point
sample), their mean, and the subspace distance per degenerate shell.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import sys
from pathlib import Path

RUNS = {
    "spin": dict(objective="spin", decay=0.01),
    "spin-nodecay": dict(objective="spin", decay=0.0),
    "neuralef": dict(objective="neuralef"),
    "neuralsvd-joint": dict(objective="neuralsvd", nesting="joint"),
    "neuralsvd-seq": dict(objective="neuralsvd", nesting="sequential"),
    "spin-original": dict(
        objective="spin",
        decay=0.01,
        lr=1e-5,
        optimizer="rmsprop",
        importance=False,
        batch_size=128,
        cosine=False,
    ),
}
COMMON = dict(lr=1e-3, optimizer="adam", importance=True, batch_size=256, cosine=True)


def _one(name: str, budget: float, out: str, seed: int) -> dict:
    import torch

    torch.set_num_threads(1)
    from spectorch.experiments.hydrogen import HydrogenConfig, train_hydrogen

    settings = {**COMMON, **RUNS[name]}
    # calibrate: steps per second of this objective on this machine (optimisation steps
    # only), so the cosine schedule ends with the budget
    probe = HydrogenConfig(
        **{
            **settings,
            "niter": 300,
            "log_image_every": 10**6,
            "save_params_every": 10**6,
            "seed": seed,
        }
    )
    done = train_hydrogen(Path(out) / f"{name}-probe", probe, progress=False, eval_samples=2000)
    rate = done.steps / done.step_seconds
    niter = max(100, int(0.92 * rate * budget))
    cfg = HydrogenConfig(
        **{
            **settings,
            "niter": niter,
            "log_image_every": max(1, niter // 10),
            "save_params_every": max(1, niter // 10),
            "seed": seed,
        }
    )
    result = train_hydrogen(Path(out) / name, cfg, progress=False, time_budget=budget)
    summary = result.summary()
    summary["name"] = name
    summary["niter"] = niter
    summary["probe_steps_per_second"] = rate
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--budget", type=float, default=600.0, help="training seconds per run (600)"
    )
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument(
        "--jobs", type=int, default=2, help="runs side by side, one thread each (2)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/out/hydrogen")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context("spawn")
    with ctx.Pool(args.jobs) as pool:
        results = pool.starmap(
            _one, [(name, args.budget, str(out), args.seed) for name in args.runs]
        )
    (out / "results.json").write_text(json.dumps(results, indent=2))
    lines = [
        f"budget {args.budget:.0f} s of training per run, one thread; "
        f"`python {' '.join(sys.argv)}`",
        "",
        "| run | steps | mean rel. error | max rel. error | shell distances (n=0, 1, 2) |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        shells = ", ".join(f"{d:.3f}" for d in r["shell_distances"])
        lines.append(
            f"| {r['name']} | {r['steps']} | {r['mean_relative_error']:.2%} | "
            f"{max(r['relative_errors']):.2%} | {shells} |"
        )
    lines += ["", "relative error per state (0; 1-3; 4-8):", ""]
    for r in results:
        lines.append(f"- {r['name']}: " + ", ".join(f"{e:.2%}" for e in r["relative_errors"]))
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    print(text)
    _figure(results, out / "hydrogen_errors.png")
    return 0


def _figure(results: list[dict], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for i, r in enumerate(results):
        ax.semilogy(
            range(len(r["relative_errors"])),
            r["relative_errors"],
            "o-",
            color=f"C{i}",
            label=f"{r['name']} (mean {r['mean_relative_error']:.2%})",
        )
    ax.axhline(0.02, color="k", ls="--", lw=0.8)
    ax.set_xlabel("state (0; 1-3; 4-8)")
    ax.set_ylabel("relative error of the energy")
    ax.legend(fontsize=7)
    fig.savefig(path, dpi=130)


if __name__ == "__main__":
    sys.exit(main())
