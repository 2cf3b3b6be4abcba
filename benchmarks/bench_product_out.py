"""A kept-graph Hessian product returned as a new tensor or written into a kept one,
against PyHessian's kept-graph product.

    PYTHONPATH=<peers> python benchmarks/bench_product_out.py --family gpt --size 1e7

``bench_scale.py`` times spectorch's product as a standalone ``op.matvec(v)``, which
returns a new float64 vector of the parameters' length, while its Lanczos writes every
product into one vector kept for the run (``matvec(v, out=)``). From 10^7 parameters
a new result is tens of MB of fresh memory whose pages fault when first written. This
script takes one of ``bench_scale.py``'s models and data and times, interleaved over
``--rounds`` rounds (CPU time, one thread, medians): spectorch's ``matvec(v)``, its
``matvec(v, out=)``, and PyHessian's product from its kept graph (a list of float32
tensors, which autograd allocates anyway), with the per-round times.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).parent))
import bench_scale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", default="gpt", choices=bench_scale.FAMILIES)
    parser.add_argument("--size", default="1e7", choices=bench_scale.SIZES)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, peer_model, batch, loss, desc = bench_scale.build(args.family, args.size)
    with sdpa_kernel(SDPBackend.MATH):
        libs = bench_scale.libraries(model, peer_model, batch, loss, args.family, 1, ["pyhessian"])
        if "pyhessian" not in libs:
            raise SystemExit("PyHessian is not installed: pip install pyhessian")
        op = libs["spectorch"]["op"]
        n = op.shape[0]
        v = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        v /= v.norm()
        kept = torch.empty(n, dtype=torch.float64)
        products = {
            "spectorch matvec(v), a new result": lambda: op.matvec(v),
            "spectorch matvec(v, out=kept)": lambda: op.matvec(v, out=kept),
            "PyHessian, kept graph": libs["pyhessian"]["product"],
        }
        for f in products.values():  # warm-up; the graphs are kept from here on
            f()
        times: dict[str, list[float]] = {name: [] for name in products}
        for _ in range(args.rounds):
            for name, f in products.items():
                t0 = time.process_time()
                f()
                times[name].append(time.process_time() - t0)
    print(f"{desc['family']} ({desc['model']}), {desc['parameters']:,} parameters, "
          f"{desc['samples']} {'windows' if args.family == 'gpt' else 'samples'}, "
          f"{args.rounds} rounds\n")  # fmt: skip
    peer = statistics.median(times["PyHessian, kept graph"])
    print("| product | CPU s per round | median (s) | PyHessian / this |")
    print("|---|---|---:|---:|")
    for name, t in times.items():
        med = statistics.median(t)
        print(f"| {name} | {', '.join(f'{x:.2f}' for x in t)} | {med:.2f} | {peer / med:.2f} |")


if __name__ == "__main__":
    main()
