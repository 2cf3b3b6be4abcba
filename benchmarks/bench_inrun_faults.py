"""Page faults and system time of each Hessian product, alone and inside a Lanczos run.

    python benchmarks/bench_inrun_faults.py --digits 512
    GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1099511627776 \\
        python benchmarks/bench_inrun_faults.py --digits 512

At 10^8 parameters ``bench_scale.py`` finds a product inside a Lanczos run slower than
the same product timed alone. This script takes the 10^8-parameter MLP of
``bench_scale.py`` (width 7052, ``--digits`` of the 8x8 digits) and its kept-graph
product (``matvec(v, out=)``, as Lanczos calls it), and prints for each product its CPU
time, its minor page faults and the system time among them: ``--repeat`` products
alone, every product of one Lanczos run of ``--steps`` steps (full
reorthogonalisation), and ``--repeat`` products after the run, when its basis is
freed; then the run's time, its products' and its own work (the rest), with the
faults and system time of each. The second command makes glibc keep the memory a
product frees for the next one (no page faults in the products).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_held_memory import kept_mlp

from spectorch.linalg import lanczos


def _usage() -> tuple[float, int, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return time.process_time(), r.ru_minflt, r.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--digits", type=int, default=512)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    op, v, out, desc = kept_mlp(args.digits)
    matvec, log = op.matvec, []

    def timed(x: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
        start = _usage()
        try:
            return matvec(x, out=out)
        finally:
            log.append([b - a for a, b in zip(start, _usage(), strict=True)])

    def show(label: str) -> None:
        for t, faults, sys_s in log:
            print(f"{label:8s} {t:7.2f} s  {faults:9,d} faults  {sys_s:5.2f} s system")

    print(f"{desc['parameters']:,} parameters, {args.digits} digits")
    for _ in range(args.repeat):
        timed(v, out=out)
    show("alone")
    log.clear()
    op.matvec = timed
    start = _usage()
    lanczos(op, args.steps, seed=0)
    run = [b - a for a, b in zip(start, _usage(), strict=True)]
    del op.matvec  # the class's method again
    show("in run")
    products = [sum(x[i] for x in log) for i in range(3)]
    own = [r - p for r, p in zip(run, products, strict=True)]
    print(f"run {run[0]:.2f} s ({run[1]:,d} faults, {run[2]:.2f} s system): products "
          f"{products[0]:.2f} s ({products[1]:,d}, {products[2]:.2f} s), own work "
          f"{own[0]:.2f} s ({own[1]:,d}, {own[2]:.2f} s)")  # fmt: skip
    log.clear()
    for _ in range(args.repeat):
        timed(v, out=out)
    show("after")


if __name__ == "__main__":
    main()
