"""The fresh memory of a density's draws: page faults and system time of each draw.

    python benchmarks/bench_draw_memory.py --n 5e7 --draws 5 --basis float32
    python benchmarks/bench_draw_memory.py --n 5e7 --draws 5 --basis memory
    python benchmarks/bench_draw_memory.py --n 5e7 --draws 5 --basis float32 --scratch none

A density's draws write their Lanczos rows into one basis kept from draw to draw
(``lanczos_block``'s ``workspace``), so only the first draw touches those rows'
memory for the first time. This script shows what else a draw touches: ``--draws``
runs of ``--steps`` steps (partial reorthogonalisation, the density's default on
float32 networks) on a diagonal operator of ``--n`` entries that writes its product
into ``out=`` and declares a float32 ``compute_dtype`` (``bench_loop.py``'s), into one
workspace of ``--basis`` rows written once before the first draw. For each draw it
prints the CPU time a step (the loop's own work and the diagonal product, one pass
over three vectors), the minor page faults (as GB of 4 KB pages) and the system
time among them. With float32 rows a run also needs the float64 window of the last
two vectors and the float64 vector the products are written into; with float64 rows
only the product vector. ``--scratch keep`` (the default, as ``spectral_density``
does) keeps them from draw to draw (``lanczos_block``'s ``scratch``) and draws each
start into the first row, or with float32 rows into the window's first slot;
``--scratch none`` makes them anew in every draw and, with float32 rows, draws the
start into a float64 vector of its own, as every draw did before. One process, CPU
time, one thread.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_loop import Diagonal

from spectorch.linalg import lanczos_block, random_start


def _usage() -> tuple[float, int, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return time.process_time(), r.ru_minflt, r.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=float, default=5e7, help="the operator's size")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--basis", choices=("memory", "float32"), default="float32")
    parser.add_argument("--scratch", choices=("keep", "none"), default="keep")
    args = parser.parse_args()
    n = int(args.n)
    if n < 2 or args.steps < 2 or args.draws < 1:
        parser.error("--n and --steps must be at least 2, --draws at least 1")
    torch.set_num_threads(1)
    op = Diagonal(n, 0)
    kept = torch.float32 if args.basis == "float32" else torch.float64
    rows = torch.zeros(1, args.steps, n, dtype=kept)  # written once, as a first draw would
    g = torch.Generator().manual_seed(0)
    print(
        f"n = {n:,}, {args.steps} steps, {args.basis} rows ({rows.nbytes / 1e9:.2f} GB), "
        f"scratch {args.scratch}"
    )
    scratch: dict | None = {} if args.scratch == "keep" else None
    for d in range(args.draws):
        before = _usage()
        if args.basis == "memory":  # drawn into the first row, as the density does
            start = rows[:, 0]
        elif scratch is not None:  # into the first slot of the window, kept
            if "window" not in scratch:
                scratch["window"] = torch.empty(1, 2, n, dtype=torch.float64)
            start = scratch["window"][:, 0]
        else:
            start = torch.empty(1, n, dtype=torch.float64)
        random_start(n, generator=g, out=start[0])
        result = lanczos_block(
            op,
            args.steps,
            start,
            basis=args.basis,
            reorth="partial",
            workspace=rows,
            scratch=scratch,
        )
        after = _usage()
        del result, start
        cpu, faults, system = (y - x for x, y in zip(before, after, strict=True))
        print(
            f"draw {d}: {cpu / args.steps * 1e3:8.1f} ms a step, {faults:>9,} faults "
            f"({faults * 4096 / 1e9:.2f} GB), {system:6.2f} s system"
        )


if __name__ == "__main__":
    main()
