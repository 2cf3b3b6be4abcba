"""Page faults and system time of each Hessian product, alone and inside a Lanczos run.

    python benchmarks/bench_inrun_faults.py --digits 512
    GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1099511627776 \\
        python benchmarks/bench_inrun_faults.py --digits 512
    python benchmarks/bench_inrun_faults.py --row gpt:1e8 --repeat 1   # a bench_scale row

At 10^8 parameters ``bench_scale.py`` finds a product inside a Lanczos run slower than
the same product timed alone. This script takes the 10^8-parameter MLP of
``bench_scale.py`` (width 7052, ``--digits`` of the 8x8 digits) and its kept-graph
product (``matvec(v, out=)``, as Lanczos calls it), and prints for each product its CPU
time, its minor page faults and the system time among them: ``--repeat`` products
alone, every product of one Lanczos run of ``--steps`` steps (``--reorth``, full by
default; ``--basis``, float64 in memory by default), and ``--repeat`` products after
the run, when its basis is freed; then the run's time, its products' and its own work
(the rest), with the faults and system time of each, and the own work's parts: the basis's new rows
(``push``: their first touch), the Gram-Schmidt passes (``orthogonalize``) and the
three-term recurrence; the rest is the start vector, ``α``'s dot product and the
bookkeeping. The second command makes glibc keep the memory a product frees for the
next one (no page faults in the products). ``--row family:size`` takes any row of
``bench_scale.py`` instead, with its data and steps (``--digits`` is then the row's,
and so is ``--steps`` unless given). ``--touch-basis`` writes the whole basis when the
run allocates it, to compare its first touch up front with a row per step.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).parent))
import bench_scale
from bench_held_memory import kept_mlp, kept_row

from spectorch.linalg import _basis, lanczos


def _usage() -> tuple[float, int, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return time.process_time(), r.ru_minflt, r.ru_stime


def _parts(names: tuple[str, ...]) -> tuple[dict[str, list], object]:
    """Time the basis's methods ``names`` (CPU time, faults, system time, calls) until
    the returned function is called, which restores them."""
    totals = {name: [0.0, 0, 0.0, 0] for name in names}
    saved = {name: getattr(_basis.BlockBasis, name) for name in names}

    def timing(name: str):
        method = saved[name]

        def timed(self, *a, **k):
            start = _usage()
            try:
                return method(self, *a, **k)
            finally:
                t = totals[name]
                for i, (x, y) in enumerate(zip(start, _usage(), strict=True)):
                    t[i] += y - x
                t[3] += 1

        return timed

    for name in names:
        setattr(_basis.BlockBasis, name, timing(name))

    def restore() -> None:
        for name, method in saved.items():
            setattr(_basis.BlockBasis, name, method)

    return totals, restore


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--digits", type=int, default=512)
    parser.add_argument("--steps", type=bench_scale.positive, default=None,
                        help="the run's steps (default: 8, or the --row's)")  # fmt: skip
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--row", help="a bench_scale.py row, family:size (default: the MLP)")
    parser.add_argument("--reorth", choices=("full", "partial"), default="full",
                        help="the run's reorthogonalisation (default: full)")  # fmt: skip
    parser.add_argument("--basis", choices=("memory", "float32"), default="memory",
                        help="the run's basis (default: memory, in float64)")  # fmt: skip
    parser.add_argument(
        "--touch-basis",
        action="store_true",
        help="write zeros into the whole basis when the run allocates it (its first touch "
        "up front, instead of a row per step)",
    )
    args = parser.parse_args()
    if args.touch_basis:
        init = _basis.BlockBasis.__init__

        def touching(self, *a, **k) -> None:
            init(self, *a, **k)
            if self.Q is not None:
                self.Q[:, 1:].zero_()  # row 0 holds the start vector already

        _basis.BlockBasis.__init__ = touching
    if args.row is not None and (
        args.row.count(":") != 1 or args.row.split(":")[0] not in bench_scale.FAMILIES
    ):
        parser.error(f"--row must be family:size of bench_scale.py, got {args.row!r}")
    gpt = args.row is not None and args.row.startswith("gpt")
    # the peers' kernel in bench_scale.py: the GPT's attention on its math kernel
    with sdpa_kernel(SDPBackend.MATH) if gpt else nullcontext():
        if args.row is None:
            op, v, out, desc = kept_mlp(args.digits)
            args.steps = 8 if args.steps is None else args.steps
        else:
            op, v, out, desc = kept_row(*args.row.split(":"))
            args.steps = desc["steps"] if args.steps is None else args.steps
            args.digits = desc["samples"]
        _run(op, v, out, desc, args)


def _run(op, v, out, desc, args) -> None:
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

    print(f"{desc['parameters']:,} parameters, {desc['family']}, {args.digits} samples, "
          f"{args.steps} steps, {args.reorth} reorthogonalisation, basis {args.basis}")  # fmt: skip
    for _ in range(args.repeat):
        timed(v, out=out)
    show("alone")
    log.clear()
    op.matvec = timed
    parts, restore = _parts(("push", "orthogonalize", "recurrence"))
    start = _usage()
    try:
        lanczos(op, args.steps, seed=0, reorth=args.reorth, basis=args.basis)
    finally:
        run = [b - a for a, b in zip(start, _usage(), strict=True)]
        restore()
        del op.matvec  # the class's method again
    show("in run")
    products = [sum(x[i] for x in log) for i in range(3)]
    own = [r - p for r, p in zip(run, products, strict=True)]
    print(f"run {run[0]:.2f} s ({run[1]:,d} faults, {run[2]:.2f} s system): products "
          f"{products[0]:.2f} s ({products[1]:,d}, {products[2]:.2f} s), own work "
          f"{own[0]:.2f} s ({own[1]:,d}, {own[2]:.2f} s)")  # fmt: skip
    rest = list(own)
    for name, (t, faults, sys_s, calls) in parts.items():
        print(f"  own work: {name:13s} {t:7.2f} s  {faults:9,d} faults  {sys_s:5.2f} s system"
              f"  ({calls} calls)")  # fmt: skip
        rest = [r - x for r, x in zip(rest, (t, faults, sys_s), strict=True)]
    print(f"  own work: {'the rest':13s} {rest[0]:7.2f} s  {rest[1]:9,d} faults  "
          f"{rest[2]:5.2f} s system")  # fmt: skip
    log.clear()
    for _ in range(args.repeat):
        timed(v, out=out)
    show("after")


if __name__ == "__main__":
    main()
