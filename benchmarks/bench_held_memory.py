"""Products at 10^8 parameters while the process holds a Lanczos basis.

    python benchmarks/bench_held_memory.py --digits 512
    GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1099511627776 \\
        python benchmarks/bench_held_memory.py --digits 512

In ``bench_scale.py``'s 10^8 rows the products inside a Lanczos run were slower than
the same products timed alone. This script takes the 10^8-parameter MLP of
``bench_scale.py`` (width 7052, ``--digits`` of the 8x8 digits) and times one
kept-graph Hessian product (CPU seconds, one thread) alone, while the process holds
and has written ``--rows`` float64 rows of the parameters' length (what a Lanczos
basis holds after that many steps), with a basis row as the vector, right after a
reorthogonalisation-like pass over the rows, and after the rows are freed. The second
command makes glibc serve every allocation from its heap and keep what is freed
(``mmap_max=0``, a 1 TiB trim threshold), so a product's temporaries reuse memory it
has already written instead of fresh pages from the kernel.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import bench_scale

from spectorch.curvature import HessianOperator


def kept_mlp(digits: int) -> tuple[HessianOperator, torch.Tensor, torch.Tensor, dict]:
    """``bench_scale.py``'s 10^8-parameter MLP on ``digits`` digits, one thread: its
    Hessian with the graph built and kept, a unit probe and a result vector."""
    bench_scale.SAMPLES["mlp"]["1e8"] = digits
    return kept_row("mlp", "1e8")


def kept_row(family: str, size: str) -> tuple[HessianOperator, torch.Tensor, torch.Tensor, dict]:
    """:func:`kept_mlp` for any row of ``bench_scale.py``, with the row's data."""
    torch.set_num_threads(1)
    model, _, batch, loss, desc = bench_scale.build(family, size)
    op = HessianOperator(model, loss, [batch])
    n = op.shape[0]
    v = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    v /= v.norm()
    out = torch.empty(n, dtype=torch.float64)
    op.matvec(v, out=out)  # builds and keeps the graph
    return op, v, out, desc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--digits", type=int, default=512)
    parser.add_argument("--rows", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    if args.rows < 2:  # a pass over the rows before the last, and a held row as v
        parser.error(f"--rows must be at least 2, got {args.rows}")
    op, v, out, desc = kept_mlp(args.digits)
    n = op.shape[0]
    print(f"{desc['parameters']:,} parameters, {args.digits} digits; "
          f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}")  # fmt: skip

    def timed(label: str, f) -> None:
        for _ in range(args.repeat):
            t0 = time.process_time()
            f()
            print(f"{label:44s} {time.process_time() - t0:7.2f} s", flush=True)

    timed("alone, a new result", lambda: op.matvec(v))
    timed("alone, out=", lambda: op.matvec(v, out=out))
    held = torch.empty(args.rows, n, dtype=torch.float64)
    t0 = time.process_time()
    held.fill_(1.0 / n**0.5)
    print(f"{'writing ' + str(args.rows) + ' rows (first touch)':44s} "
          f"{time.process_time() - t0:7.2f} s")  # fmt: skip
    timed(f"holding {args.rows} rows, out=", lambda: op.matvec(v, out=out))
    timed(f"holding {args.rows} rows, a held row as v", lambda r=held[1]: op.matvec(r, out=out))
    for _ in range(args.repeat):
        out.sub_(held[:-1].T @ (held[:-1] @ out))  # a Gram-Schmidt pass over the rows
        t0 = time.process_time()
        op.matvec(v, out=out)
        print(f"{'right after a pass over the rows, out=':44s} {time.process_time() - t0:7.2f} s")
    del held
    timed("rows freed, out=", lambda: op.matvec(v, out=out))


if __name__ == "__main__":
    main()
