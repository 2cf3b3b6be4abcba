"""The fixed costs around the arithmetic: a Lanczos step's own work where the product
costs nothing, the start vector's draw, and a kept Hessian product beyond the autograd
call it makes.

    python benchmarks/bench_overhead.py                 # CPU time, one thread
    python benchmarks/bench_overhead.py --device cuda   # wall time, synchronised
    python benchmarks/bench_overhead.py --device cuda --tables kernels --sizes 1e8 --steps 8

Five tables by default, each library call timed once per round with the rounds interleaved,
medians:

* ``step``: :func:`~spectorch.linalg.lanczos` on a diagonal operator of ``n`` entries
  (its product is one multiplication), full and partial reorthogonalisation, and full
  against float32 rows (``basis="float32"``): time per step; the basis rows its
  reorthogonalisation read per step and what reading them twice (a classical
  Gram-Schmidt pass's two reads) costs at this machine's read speed, timed as a sum
  over as many rows in the same rounds (the floor of that work once the rows no
  longer fit in the processor's cache; below that the pass may beat a sum over rows
  read cold); the reads of a value to the host per step (on a GPU each waits for the device) and
  the tensor operations per step (``torch.profiler``'s aten calls, views included);
* ``start``: :func:`~spectorch.linalg.random_start` of ``n`` entries into a new
  tensor and into a kept one (``out=``, as Lanczos draws it into its basis);
* ``product``: the kept Hessian product of ``bench_scale.py``'s models at 10^4
  parameters (``matvec`` into a kept vector, as Lanczos calls it) against
  ``torch.autograd.grad`` of the gradient's kept graph built by plain autograd (what
  PyHessian's kept product is): the difference is what spectorch adds per product
  (checks, the float64 result, the closed-form cross-entropy's graph is cheaper);
* ``rebuilt``: the same models' Hessian product without kept graphs
  (``cache_graphs=False``) against plain autograd building the gradient's graph and
  differentiating it once (what hessian-eigenthings' and PyHessian's ``dataloader=``
  products do), each with the page faults it takes (fresh memory the kernel maps in,
  ``getrusage``'s minor faults): the difference is spectorch's fixed cost per product
  plus whatever fresh memory one of them was given and the other was not (run it again
  under ``GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1099511627776``,
  which keeps freed memory for reuse, to take the faults out);
* ``kernels`` (not by default): ``torch.profiler``'s table of one Lanczos run at the
  largest ``--sizes`` (on a GPU by device time), to see which operations its own
  work spends;
* ``loss``: the closed-form cross-entropy (``cross_entropy_sum``)
  differentiated once with its graph kept and then once more, as a product that
  rebuilds its graph does, on logits of the benchmarks' shapes (the digits' 10
  classes, a GPT's 256 bytes), beside ``torch.softmax`` and ``exp(x − logsumexp(x))``
  of the same logits.

It runs on any checkout of spectorch (``PYTHONPATH=<checkout>/src``); where a call does
not exist there (``out=`` before issue 18's tenth round) the cell says so.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parent))

from spectorch.linalg import lanczos, random_start

DEVICE = torch.device("cpu")
READS = ("tolist", "item", "__bool__", "__float__", "cpu", "numpy")


def _clock() -> float:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)
        return time.perf_counter()
    return time.process_time()


class Diagonal:
    """``diag(d)``: a product that is one multiplication."""

    def __init__(self, d: torch.Tensor) -> None:
        self.d, self.shape, self.dtype, self.device = d, (d.numel(),) * 2, d.dtype, d.device

    def matvec(self, v: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
        return self.d * v if out is None else torch.mul(self.d, v, out=out)


def _median_interleaved(calls: dict[str, Any], rounds: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in calls}
    for f in calls.values():  # warm-up
        f()
    for _ in range(rounds):
        for k, f in calls.items():
            t0 = _clock()
            f()
            times[k].append(_clock() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _count_reads(f: Any) -> int:
    """Reads of a tensor's value to the host while ``f`` runs."""
    seen: list[str] = []
    saved = {name: getattr(torch.Tensor, name) for name in READS}

    def counting(name: str) -> Any:
        def wrapper(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            seen.append(name)
            return saved[name](self, *args, **kwargs)

        return wrapper

    try:
        for name in READS:
            setattr(torch.Tensor, name, counting(name))
        f()
    finally:
        for name, original in saved.items():
            setattr(torch.Tensor, name, original)
    return len(seen)


def _count_ops(f: Any) -> int:
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    with profile(activities=activities) as prof:
        f()
    return sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))


def step_table(sizes: list[int], steps: int, rounds: int) -> None:
    print(f"\n## step: Lanczos's own work per step ({steps} steps, diagonal operator)\n")
    print(
        "| n | reorth | µs per step | basis rows read per step | those reads at this "
        "machine's read speed (µs) | reads to the host per step | tensor operations per step |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|")
    for n in sizes:
        op = Diagonal(torch.linspace(0.0, 1.0, n, dtype=torch.float64, device=DEVICE))
        # full reorthogonalisation also against float32 rows (the recurrence still in
        # float64): its coefficients are summed in float64 from the rows converted a
        # chunk at a time, so half the bytes need not mean half the time
        modes = {"full": ("full", "memory"), "partial": ("partial", "memory"),
                 "full, float32 rows": ("full", "float32")}  # fmt: skip
        calls = {
            k: (lambda r=r, b=b, op=op: lanczos(op, steps, seed=0, reorth=r, basis=b))
            for k, (r, b) in modes.items()
        }
        # the floor of a pass: the time to read rows like the basis's once (a sum over
        # them, which reads each entry once), timed in the same rounds
        rows = torch.ones(steps, n, dtype=torch.float64, device=DEVICE)
        calls["read"] = lambda rows=rows: rows.sum()
        t = _median_interleaved(calls, rounds)
        per_row = t.pop("read") / steps  # seconds to read one row
        del calls["read"]
        for r, f in calls.items():
            result = f()
            # a Gram-Schmidt pass reads each of its rows twice (the coefficients, then
            # the update)
            read = result.reorth_rows / steps
            floor = 2 * read * per_row * result.basis.element_size() / rows.element_size()
            reads, ops = _count_reads(f) / steps, _count_ops(f) / steps
            print(
                f"| {n:,} | {r} | {t[r] / steps * 1e6:.0f} | {read:.1f} | {floor * 1e6:.0f} "
                f"| {reads:.2f} | {ops:.1f} |"
            )
        del rows, calls


def kernel_table(n: int, steps: int, rows: int = 15) -> None:
    """Where one Lanczos run's own work goes at ``n``: ``torch.profiler``'s operations
    by self time (on a GPU, device time: the kernels), full reorthogonalisation."""
    from torch.profiler import ProfilerActivity, profile

    op = Diagonal(torch.linspace(0.0, 1.0, n, dtype=torch.float64, device=DEVICE))
    lanczos(op, steps, seed=0)  # warm-up (on a GPU: the allocator, the first launches)
    cuda = DEVICE.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        lanczos(op, steps, seed=0)
    key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    print(f"\n## kernels: one Lanczos run, n = {n:,}, {steps} steps, by {key}\n")
    print(prof.key_averages().table(sort_by=key, row_limit=rows))


def start_table(sizes: list[int], rounds: int) -> None:
    print("\n## start: a Rademacher start vector (float64)\n")
    print(
        "| n | its 32-bit words by `randint(0, 2**32)` (ms) | the same words by int64 "
        "`random_()` (ms) | new tensor (ms) | into a kept one, `out=` (ms) |"
    )
    print("|---:|---:|---:|---:|---:|")
    for n in sizes:
        g = torch.Generator().manual_seed(0)
        kept = torch.empty(n, dtype=torch.float64, device=DEVICE)
        words = -(-n // 32)  # drawn on the CPU whatever the device
        calls = {
            "randint": lambda w=words, g=g: torch.randint(0, 2**32, (w,), generator=g),
            "random_": lambda w=words, g=g: torch.empty(w, dtype=torch.int64).random_(generator=g),
            "new": lambda n=n, g=g: random_start(n, generator=g, device=DEVICE),
        }
        try:
            random_start(n, generator=g, device=DEVICE, out=kept)
            calls["out"] = lambda n=n, g=g, kept=kept: random_start(
                n, generator=g, device=DEVICE, out=kept
            )
        except TypeError:  # a checkout before out=
            pass
        t = _median_interleaved(calls, rounds)
        into = f"{t['out'] * 1e3:.1f}" if "out" in t else "– (no `out=`)"
        ms = {k: f"{x * 1e3:.1f}" for k, x in t.items()}
        print(f"| {n:,} | {ms['randint']} | {ms['random_']} | {ms['new']} | {into} |")
        del kept, calls


def _rows(families: list[str], **settings: Any) -> Any:
    """For each family, ``bench_scale.py``'s model at 10^4 parameters and spectorch's
    Hessian operator on it (``settings``), inside the attention kernel its rows use:
    a namespace with ``family``, ``desc``, ``matvec`` (the operator's product into a kept
    vector, as Lanczos calls it), ``model`` (the peers' view), ``params``, ``inputs``
    and ``targets``."""
    import bench_scale

    from spectorch.curvature import HessianOperator

    bench_scale.DEVICE = DEVICE
    for family in families:
        model, peer_model, batch, loss, desc = bench_scale.build(family, "1e4")
        kernel = sdpa_kernel(SDPBackend.MATH) if family == "gpt" else nullcontext()
        with kernel:
            op = HessianOperator(model, loss, [batch], **settings)
            v = torch.randn(op.shape[0], dtype=torch.float64, device=DEVICE)
            out = torch.empty_like(v)
            inputs, targets = (batch, batch[:, 1:].reshape(-1)) if family == "gpt" else batch
            yield SimpleNamespace(
                family=family,
                desc=desc,
                matvec=lambda op=op, v=v, out=out: op.matvec(v, out=out),
                model=peer_model,
                params=[p for p in peer_model.parameters() if p.requires_grad],
                inputs=inputs,
                targets=targets,
            )


def product_table(families: list[str], rounds: int) -> None:
    print("\n## product: a kept Hessian product at 10^4 parameters\n")
    print(
        "| model | parameter tensors | spectorch `matvec(v, out=)` (ms) | autograd.grad of "
        "the kept gradient graph (ms) | difference (ms) |"
    )
    print("|---|---:|---:|---:|---:|")
    ce = torch.nn.CrossEntropyLoss()
    for row in _rows(families):
        params = row.params
        grads = torch.autograd.grad(
            ce(row.model(row.inputs), row.targets), params, create_graph=True
        )
        tangents = [torch.randn_like(p) for p in params]
        calls = {
            "spectorch": row.matvec,
            "bare": lambda g=grads, p=params, t=tangents: torch.autograd.grad(
                g, p, grad_outputs=t, retain_graph=True
            ),
        }
        t = _median_interleaved(calls, rounds)
        ms = {k: x * 1e3 for k, x in t.items()}
        print(
            f"| {row.family} ({row.desc['model']}) | {len(params)} | "
            f"{ms['spectorch']:.2f} | {ms['bare']:.2f} | {ms['spectorch'] - ms['bare']:+.2f} |"
        )


def rebuilt_table(families: list[str], rounds: int) -> None:
    import resource

    def faults() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

    print(
        "\n## rebuilt: a Hessian product that builds its gradient graph again, at 10^4 parameters\n"
    )
    print(
        "| model | spectorch `cache_graphs=False` (ms) | plain autograd (ms) | difference (ms) "
        "| page faults a product, spectorch / plain |"
    )
    print("|---|---:|---:|---:|---:|")
    ce = torch.nn.CrossEntropyLoss()
    for row in _rows(families, cache_graphs=False):
        tangents = [torch.randn_like(p) for p in row.params]

        def plain(m=row.model, x=row.inputs, y=row.targets, p=row.params, t=tangents) -> Any:
            grads = torch.autograd.grad(ce(m(x), y), p, create_graph=True)
            return torch.autograd.grad(grads, p, grad_outputs=t)

        calls = {"spectorch": row.matvec, "plain": plain}
        counted: dict[str, list[int]] = {k: [] for k in calls}

        def counting(f: Any, into: list[int]) -> Any:
            def call() -> Any:
                before = faults()
                f()
                into.append(faults() - before)

            return call

        t = _median_interleaved({k: counting(f, counted[k]) for k, f in calls.items()}, rounds)
        ms = {k: x * 1e3 for k, x in t.items()}
        pf = {k: statistics.median(x[1:]) for k, x in counted.items()}  # not the warm-up's
        print(
            f"| {row.family} ({row.desc['model']}) | {ms['spectorch']:.2f} | {ms['plain']:.2f} | "
            f"{ms['spectorch'] - ms['plain']:+.2f} | {pf['spectorch']:,.0f} / {pf['plain']:,.0f} |"
        )


def loss_table(shapes: list[tuple[int, int]], rounds: int) -> None:
    from spectorch.curvature._objectives import cross_entropy_sum  # in its __all__

    print("\n## loss: the closed-form cross-entropy, differentiated twice\n")
    print(
        "| logits | first and second derivative (µs) | torch.softmax (µs) | "
        "exp(x − logsumexp(x)) (µs) |"
    )
    print("|---|---:|---:|---:|")
    for n, v in shapes:
        g = torch.Generator().manual_seed(0)
        x = (3 * torch.randn(n, v, generator=g)).to(DEVICE).requires_grad_(True)
        y = torch.randint(0, v, (n,), generator=g).to(DEVICE)
        w = torch.full((n,), 1.0 / n, device=DEVICE)
        u = torch.randn(n, v, generator=g).to(DEVICE)
        z = x.detach()

        def twice(x=x, y=y, w=w, u=u) -> Any:
            (grad,) = torch.autograd.grad(cross_entropy_sum(x, y, w), x, create_graph=True)
            return torch.autograd.grad(grad, x, u)

        calls = {
            "twice": twice,
            "softmax": lambda z=z: torch.softmax(z, dim=-1),
            "exp": lambda z=z: (z - torch.logsumexp(z, dim=-1, keepdim=True)).exp_(),
        }
        t = {k: s * 1e6 for k, s in _median_interleaved(calls, rounds).items()}
        print(f"| {n:,} x {v} | {t['twice']:.0f} | {t['softmax']:.0f} | {t['exp']:.0f} |")


def main() -> None:
    global DEVICE
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--sizes", default="1e3,1e4,1e5", help="n of the step table")
    parser.add_argument("--start-sizes", default="1e6,1e7,1e8", help="n of the start table")
    parser.add_argument("--families", default="mlp,gpt,cnn", help="models of the product table")
    parser.add_argument(
        "--tables",
        default="step,start,product,rebuilt,loss",
        help="any of step, start, product, rebuilt, loss, kernels (the last: a profile of "
        "one Lanczos run at the largest --sizes)",
    )
    parser.add_argument(
        "--logits", default="1797x10,512x10,1024x256", help="rows x classes of the loss table"
    )
    args = parser.parse_args()
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available here")
    if DEVICE.type == "cpu":
        torch.set_num_threads(1)
    tables = args.tables.split(",")
    unknown = set(tables) - {"step", "start", "product", "rebuilt", "loss", "kernels"}
    if unknown:
        parser.error(f"--tables: unknown {sorted(unknown)}; expected step, start, product, "
                     "rebuilt, loss or kernels")  # fmt: skip
    sizes = [int(float(x)) for x in args.sizes.split(",")]
    starts = [int(float(x)) for x in args.start_sizes.split(",")]
    print(f"device {DEVICE}, torch {torch.__version__}, tables {', '.join(tables)}")
    if "step" in tables:
        step_table(sizes, args.steps, args.rounds)
    if "kernels" in tables:
        kernel_table(max(sizes), args.steps)
    if "start" in tables:
        start_table(starts, max(3, args.rounds // 7))
    if "product" in tables:
        product_table(args.families.split(","), args.rounds)
    if "rebuilt" in tables:
        rebuilt_table(args.families.split(","), args.rounds)
    if "loss" in tables:
        shapes = [tuple(int(a) for a in x.split("x")) for x in args.logits.split(",")]
        loss_table(shapes, max(args.rounds, 101))


if __name__ == "__main__":
    main()
