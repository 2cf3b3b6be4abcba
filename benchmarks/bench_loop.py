"""The Lanczos loop's own work a step: a run's time less its products', per step.

    python benchmarks/bench_loop.py                         # a nearly free product, n = 10^4
    python benchmarks/bench_loop.py --evict-mb 0,16 --n 10000,100000
    python benchmarks/bench_loop.py --row mlp:1e4           # a bench_scale.py row's product
    python benchmarks/bench_loop.py --against <checkout>/src   # against another version

On an operator of 10^4 parameters a product takes a few milliseconds and a Lanczos
step's own work (the recurrence, the norms, Simon's estimates, the bookkeeping) is
a few tens of small calls, which after a product run with the caches full of the
product's data and code. This script times that own work alone: ``lanczos(op,
steps)`` with each product timed inside the run and taken out, in CPU time on one
thread, each mode (``--reorth``) interleaved round by round, medians over
``--rounds``.

The default operator is a diagonal matrix that writes its product into ``out=`` (a
few microseconds) and declares a float32 ``compute_dtype``, as a float32 network's
Hessian does, so that partial reorthogonalisation's estimates behave as they do on
a network; with ``--evict-mb M`` each product also streams through ``M`` MB of
memory first, as a real product would, so the step runs with cold caches.
``--row family:size`` takes a row of ``bench_scale.py`` instead (its model, data and
kept-graph Hessian product; ``--steps`` defaults to the row's).

``--against <checkout>/src`` compares this library with another version of it:
``--processes`` rounds, each one process of either (which goes first alternating),
each measuring ``--rounds`` runs per mode; the medians of the processes' medians and
their ratio. A machine's speed drifts between processes by more than the loop's own
work, so one process each would not do.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).parent))
import bench_scale

from spectorch.curvature import HessianOperator
from spectorch.linalg import lanczos

_clock = time.process_time
#: the Lanczos rows a run may keep (``lanczos``'s ``basis``; "auto" is float32 rows with
#: partial reorthogonalisation on these float32 operators)
BASES = ("memory", "float32", "auto")


class Diagonal:
    """``diag(d) v`` written into ``out=``, after streaming through ``evict_mb`` MB."""

    dtype = torch.float64
    device = torch.device("cpu")
    compute_dtype = torch.float32  # as a float32 network's Hessian declares

    def __init__(self, n: int, evict_mb: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.shape = (n, n)
        self.d = torch.rand(n, dtype=torch.float64, generator=g)
        self.buffer = torch.zeros(evict_mb << 17, dtype=torch.float64) if evict_mb else None

    def matvec(self, v: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
        if self.buffer is not None:
            self.buffer.add_(1.0)
        return torch.mul(self.d, v, out=out)


def _timed(op) -> list[float]:
    """Time each ``op.matvec`` (once per operator, so the loop reads its signature
    once, as it would the operator's own method); the returned list collects them."""
    times: list[float] = []
    original = op.matvec

    def matvec(v: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
        t0 = _clock()
        try:
            return original(v, out=out)
        finally:
            times.append(_clock() - t0)

    op.matvec = matvec
    return times


def measure(
    op, label: str, steps: int, modes: list[str], rounds: int, bases: tuple[str, ...] = ("memory",)
) -> list[dict]:
    """Each reorthogonalisation of ``modes`` with each basis of ``bases``, interleaved
    round by round."""
    times = _timed(op)
    lanczos(op, steps, seed=0)  # warm-up (graphs, allocator, the signature read)
    pairs = [(mode, basis) for mode in modes for basis in bases]
    own = {pair: [] for pair in pairs}
    products = {pair: [] for pair in pairs}
    for r in range(rounds):
        for mode, basis in pairs:
            times.clear()
            t0 = _clock()
            lanczos(op, steps, seed=r, reorth=mode, basis=basis)
            total = _clock() - t0
            own[mode, basis].append((total - sum(times)) / steps)
            products[mode, basis].append(sum(times) / len(times))
    return [
        {
            "operator": label,
            "n": op.shape[0],
            "steps": steps,
            "reorth": mode,
            "basis": basis,
            "own_us": statistics.median(own[mode, basis]) * 1e6,
            "own_range_us": (min(own[mode, basis]) * 1e6, max(own[mode, basis]) * 1e6),
            "product_ms": statistics.median(products[mode, basis]) * 1e3,
        }
        for mode, basis in pairs
    ]


def _numbers(parser: argparse.ArgumentParser, option: str, text: str, least: int) -> list[int]:
    """The comma-separated whole numbers of ``text`` (``1e4`` allowed), each at least
    ``least``, or a parser error that names ``option``."""
    out = []
    for x in text.split(","):
        try:
            value = float(x)
        except ValueError:
            value = -1.0
        if not math.isfinite(value) or value != int(value) or value < least:
            parser.error(f"{option}: expected whole numbers of at least {least}, got {x!r}")
        out.append(int(value))
    return out


def run_here(args: argparse.Namespace, parser: argparse.ArgumentParser) -> list[dict]:
    """Every operator and mode of ``args`` in this process."""
    modes = bench_scale.listed(parser, "--reorth", args.reorth, ("full", "partial"))
    bases = tuple(bench_scale.listed(parser, "--basis", args.basis, BASES))
    sizes, evictions = (
        _numbers(parser, "--n", args.n, 1),
        _numbers(parser, "--evict-mb", args.evict_mb, 0),
    )
    torch.set_num_threads(1)
    rows = []
    if args.row is not None:
        family, _, size = args.row.partition(":")
        model, _, batch, loss, desc = bench_scale.build(family, size)
        kernel = sdpa_kernel(SDPBackend.MATH) if family == "gpt" else nullcontext()
        with kernel:
            op = HessianOperator(model, loss, [batch], cache_graphs="auto")
            steps = args.steps or desc["steps"]
            rows += measure(op, f"{family} {size} (kept graphs)", steps, modes, args.rounds, bases)
    else:
        steps = args.steps or 30
        for n in sizes:
            for mb in evictions:
                label = f"diagonal, {mb} MB streamed a product" if mb else "diagonal, hot"
                rows += measure(Diagonal(n, mb), label, steps, modes, args.rounds, bases)
    return rows


def run_against(args: argparse.Namespace) -> None:
    """``--processes`` rounds, each one process of this checkout and one of
    ``--against`` (alternating which goes first), each measuring ``--rounds`` runs per
    mode; the medians of the processes' medians, and their ratio."""
    import spectorch

    here = str(Path(spectorch.__file__).resolve().parents[1])
    against = str(Path(args.against).resolve())
    if not (Path(against) / "spectorch" / "linalg").is_dir():
        raise SystemExit(f"--against: {against} holds no spectorch package (want <checkout>/src)")
    child = ["--n", args.n, "--evict-mb", args.evict_mb, "--rounds", str(args.rounds)]
    child += ["--reorth", args.reorth, "--basis", args.basis, "--json"]
    child += ["--row", args.row] if args.row is not None else []
    child += ["--steps", str(args.steps)] if args.steps is not None else []
    own: dict[tuple, dict[str, list[float]]] = {}
    for p in range(args.processes):
        for version in ("this", "against") if p % 2 == 0 else ("against", "this"):
            env = dict(os.environ, PYTHONPATH=here if version == "this" else against)
            out = subprocess.run(
                [sys.executable, __file__, *child], env=env, check=True, capture_output=True,
                text=True,
            ).stdout  # fmt: skip
            for r in json.loads(out):
                key = (r["operator"], r["n"], r["steps"], r["reorth"], r.get("basis", "memory"))
                own.setdefault(key, {"this": [], "against": []})[version].append(r["own_us"])
    print(f"this: {here}; against: {against}; {args.processes} processes each, alternating")
    print(
        "| operator | n | steps | reorth | basis | own work a step (µs) | against (µs) | "
        "against / this |"
    )
    print("|---|---:|---:|---|---|---:|---:|---:|")
    for (label, n, steps, mode, basis), runs in own.items():
        a, b = statistics.median(runs["this"]), statistics.median(runs["against"])
        print(
            f"| {label} | {n:,} | {steps} | {mode} | {basis} | {a:.0f} ({min(runs['this']):.0f}-"
            f"{max(runs['this']):.0f}) | {b:.0f} ({min(runs['against']):.0f}-"
            f"{max(runs['against']):.0f}) | {b / a:.2f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", default="10000", help="sizes of the diagonal operator")
    parser.add_argument("--evict-mb", default="0,16", help="MB streamed before each product")
    parser.add_argument("--row", default=None, help="a bench_scale.py row, family:size")
    parser.add_argument("--steps", type=bench_scale.positive, default=None)
    parser.add_argument("--rounds", type=bench_scale.positive, default=30)
    parser.add_argument("--reorth", default="full,partial")
    parser.add_argument(
        "--basis", default="memory", help=f"Lanczos rows, any of {', '.join(BASES)} (memory)"
    )
    parser.add_argument(
        "--against", default=None, help="another checkout's src directory to compare with"
    )
    parser.add_argument("--processes", type=bench_scale.positive, default=4)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    # every argument checked here, before any process or model is started
    bench_scale.listed(parser, "--reorth", args.reorth, ("full", "partial"))
    bench_scale.listed(parser, "--basis", args.basis, BASES)
    _numbers(parser, "--n", args.n, 1)
    _numbers(parser, "--evict-mb", args.evict_mb, 0)
    if args.row is not None:
        family, _, size = args.row.partition(":")
        if family not in bench_scale.FAMILIES or size not in bench_scale.STEPS:
            parser.error(f"--row must be family:size of bench_scale.py, got {args.row!r}")
    if args.against is not None:
        run_against(args)
        return
    rows = run_here(args, parser)
    if args.json:
        print(json.dumps(rows))
        return
    print("| operator | n | steps | reorth | basis | own work a step (µs) | product (ms) |")
    print("|---|---:|---:|---|---|---:|---:|")
    for r in rows:
        low, high = r["own_range_us"]
        print(
            f"| {r['operator']} | {r['n']:,} | {r['steps']} | {r['reorth']} | {r['basis']} | "
            f"{r['own_us']:.0f} ({low:.0f}-{high:.0f}) | {r['product_ms']:.3f} |"
        )


if __name__ == "__main__":
    main()
