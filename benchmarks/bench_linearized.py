"""Kept linearisations against kept gradient graphs: two ways of keeping, between
Hessian products at fixed weights and data, what the products need.

    PYTHONPATH=<peers> python benchmarks/bench_linearized.py --family gpt --size 1e5

A kept graph (spectorch's ``cache_graphs=True``, the default while it fits, and
PyHessian's ``data=`` path) keeps the graph of the batch's gradient and differentiates
it again at every product (reverse-over-reverse): both libraries make the same autograd
call, so with kept graphs they can only be at parity. A kept linearisation
(``HessianOperator(..., hvp="forward", cache_graphs=True)``) traces the forward-mode
product (``jvp`` of ``grad``) once per batch shape, runs the part that does not depend
on the probe once per batch, keeps its results, and runs only the operations on the
probe at every product. ``torch.func.linearize`` does the same with the weights and
batch as constants of its trace (one trace per batch), and is timed alongside.

On one of ``bench_scale.py``'s models and data (``--family``, ``--size``), over
``--rounds`` interleaved rounds (CPU time, one thread, medians): each product's time,
the kept graph's time over it, the memory kept (spectorch's: ``cache_bytes``, the
storages its graph saves or its linearisation keeps; ``linearize``: the resident set's
growth over its trace and first product, which includes the traced graph; PyHessian:
not measured), the one-off time (spectorch: the first product, which builds the graph
or traces and runs the linearisation; ``linearize``: trace and first product), and the
product's relative difference from the kept graph's. spectorch's products are timed as
Lanczos calls them (``matvec(v, out=)``, a float64 vector kept between calls), which
leaves out the fresh float64 result a standalone ``matvec(v)`` allocates
(``bench_product_out.py``). ``--compile`` adds ``torch.compile`` of ``linearize``'s
product; ``--no-func-linearize`` leaves ``linearize`` out; ``--steps N`` also times
one Lanczos run of ``N`` steps per round with each of spectorch's operators (step and
step / product).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.func import functional_call, grad, linearize
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).parent))
import bench_scale

from spectorch.curvature import HessianOperator
from spectorch.linalg import lanczos


def _rss_mb() -> float:
    gc.collect()
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * 4096 / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", default="gpt", choices=bench_scale.FAMILIES)
    parser.add_argument("--size", default="1e5", choices=bench_scale.SIZES)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--steps", type=int, default=0,
                        help="also time one Lanczos run of this many steps with each of "
                        "spectorch's operators, in every round (0: none)")  # fmt: skip
    parser.add_argument("--no-func-linearize", action="store_true",
                        help="leave torch.func.linearize out (its trace holds several "
                        "times the kept graph's memory)")  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, peer_model, batch, loss, desc = bench_scale.build(args.family, args.size)
    inputs, targets = (batch, batch[:, 1:].reshape(-1)) if args.family == "gpt" else batch
    names = [n for n, _ in peer_model.named_parameters()]
    weights = {n: p.detach() for n, p in peer_model.named_parameters()}
    dim = sum(p.numel() for p in weights.values())
    v64 = torch.randn(dim, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    v64 /= v64.norm()
    pieces = v64.float().split([p.numel() for p in weights.values()])
    probe = {n: x.reshape(weights[n].shape) for n, x in zip(names, pieces, strict=True)}
    count = len(targets)

    def flat(prods) -> torch.Tensor:
        parts = [prods[n] for n in names] if isinstance(prods, dict) else prods
        return torch.cat([p.reshape(-1) for p in parts]).double() / count

    rows: dict[str, dict] = {}
    with sdpa_kernel(SDPBackend.MATH):
        for name, hvp in (("kept graph", "reverse"), ("kept linearisation", "forward")):
            op = HessianOperator(model, loss, [batch], cache_graphs=True, hvp=hvp)
            out = torch.empty(dim, dtype=torch.float64)
            t0 = time.process_time()
            op.matvec(v64, out=out)
            rows[name] = {
                "once": time.process_time() - t0,
                "mb": op.cache_bytes / 2**20,
                "f": lambda op=op, out=out: op.matvec(v64, out=out),
                "flat": out.clone(),
                "op": op,
            }
        try:
            libs = bench_scale.libraries(model, peer_model, batch, loss, args.family, 1,
                                         ["pyhessian"])  # fmt: skip
        except ImportError:
            libs = {}
        if "pyhessian" in libs:
            first = libs["pyhessian"]["product"]()
            rows["PyHessian, kept graph"] = {
                "once": float("nan"),
                "mb": float("nan"),
                "f": libs["pyhessian"]["product"],
                "flat": torch.cat([p.reshape(-1) for p in first]).double(),
            }
        else:
            print("PyHessian is not installed: its row is left out", file=sys.stderr)

        def loss_sum(w: dict) -> torch.Tensor:
            logits = functional_call(peer_model, w, (inputs,))
            return torch.nn.functional.cross_entropy(logits, targets, reduction="sum")

        if not args.no_func_linearize:
            r0, t0 = _rss_mb(), time.process_time()
            _, jvp_fn = linearize(grad(loss_sum), weights)
            first = jvp_fn(probe)
            rows["torch.func.linearize"] = {
                "once": time.process_time() - t0,
                "mb": _rss_mb() - r0,
                "f": lambda: jvp_fn(probe),
                "flat": flat(first),
            }
        if args.compile and not args.no_func_linearize:
            t0 = time.process_time()
            compiled = torch.compile(jvp_fn)
            first = compiled(probe)
            rows["linearize, compiled"] = {
                "once": rows["torch.func.linearize"]["once"] + time.process_time() - t0,
                "mb": float("nan"),
                "f": lambda: compiled(probe),
                "flat": flat(first),
            }
        times: dict[str, list[float]] = {name: [] for name in rows}
        steps: dict[str, list[float]] = {name: [] for name in rows if "op" in rows[name]}
        for _ in range(args.rounds):
            for name, row in rows.items():
                t0 = time.process_time()
                row["f"]()
                times[name].append(time.process_time() - t0)
            for name in steps if args.steps else ():
                t0 = time.process_time()
                lanczos(rows[name]["op"], args.steps, seed=0)
                steps[name].append((time.process_time() - t0) / args.steps)

    ref = rows["kept graph"]["flat"]
    base = statistics.median(times["kept graph"])
    print(f"{desc['family']} {desc['parameters']:,} parameters ({desc['model']}), "
          f"{desc['samples']} samples, {args.rounds} rounds")  # fmt: skip
    print(
        "| method | product (ms) | kept graph / this | memory kept (MB) | one-off (s) "
        "| rel. difference |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for name, row in rows.items():
        t = statistics.median(times[name])
        diff = float((row["flat"] - ref).norm() / ref.norm())
        print(f"| {name} | {1000 * t:,.1f} | {base / t:.2f} | {row['mb']:,.0f} "
              f"| {row['once']:.1f} | {diff:.1e} |")  # fmt: skip
    if args.steps:
        print(f"\nLanczos, {args.steps} steps, full reorthogonalisation, one run per round:")
        print("| method | step (ms) | step / product |")
        print("|---|---:|---:|")
        for name, per in steps.items():
            step = statistics.median(per)
            print(f"| {name} | {1000 * step:,.1f} | {step / statistics.median(times[name]):.2f} |")


if __name__ == "__main__":
    main()
