"""Two choices inside spectorch's Hessian product, each timed both ways.

    python benchmarks/bench_product_parts.py --rounds 9

* eval-mode BatchNorm as its affine map (spectorch's default in kept graphs; a graph
  used once keeps BatchNorm's kernel) against BatchNorm's own kernel, on the CNN of
  ``bench_scale.py`` at 10^4 parameters with the gradient graph kept, and at 10^4 and
  10^5 parameters with the graph built again for every product (the product with
  ``cache_graphs=False``, its fold switched on for the "affine map" row: the choice
  for graphs used once);
* the closed-form cross-entropy (``closed_form=True``) against autograd's double
  backward of the softmax (``closed_form=False``), kept graphs, on the MLP (10
  classes) and the GPT (256 classes) of ``bench_scale.py`` at 10^5 parameters, GELU
  differentiated by autograd in both;
* GELU and SiLU differentiated twice in closed form (spectorch's default with
  ``closed_form="auto"``) against autograd's double backward: each activation's
  second backward pass alone (1024 x 768 inputs, float32, as in the GPT's MLP at
  10^6 parameters), and the products of the GPT of ``bench_scale.py`` at 10^5 and
  10^6 parameters, graphs kept and not, with the bytes the kept graphs hold
  (``--activations`` runs this part alone; ``--profile`` prints ``torch.profiler``'s
  table of the GPT's kept product at 10^6 parameters both ways).

CPU time on one thread, the variants interleaved round by round, medians. The
BatchNorm variant without the affine map is obtained by switching the rewrite off for
the product being timed, and GELU's likewise for its operator (spectorch's own
internal switches).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch
from bench_scale import build
from torch.nn.attention import SDPBackend, sdpa_kernel

from spectorch.curvature import HessianOperator
from spectorch.curvature import _operators as ops


def timed(cands: dict, rounds: int) -> dict[str, float]:
    for f in cands.values():
        f()
    times: dict[str, list[float]] = {k: [] for k in cands}
    for _ in range(rounds):
        for k, f in cands.items():
            t0 = time.process_time()
            f()
            times[k].append(time.process_time() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--activations", action="store_true", help="only GELU and SiLU")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="only torch.profiler's table of the GPT's kept product at 1e6, GELU both ways",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.profile:
        profile()
        return
    if args.activations:
        activations(args.rounds)
        return

    model, _, batch, loss, _ = build("cnn", "1e4")
    affine = ops._affine_batchnorms

    def own_kernel(op: HessianOperator, v: torch.Tensor):
        ops._affine_batchnorms = lambda modules: contextlib.nullcontext()
        try:
            return op.matvec(v)
        finally:
            ops._affine_batchnorms = affine

    def folded(op: HessianOperator, v: torch.Tensor):
        # the fold on for a graph used once (its switch, set while the graph is built)
        fold = affine(op._stochastic)
        with fold:
            return op.matvec(v)

    cands = {}
    # separate operators: each kept graph is built with the variant it is timed with
    a = HessianOperator(model, loss, [batch], cache_graphs=True)
    b = HessianOperator(model, loss, [batch], cache_graphs=True)
    v = torch.randn(a.shape[0], dtype=torch.float64)
    cands["CNN 1e4, kept graph, affine map"] = lambda: a.matvec(v)
    cands["CNN 1e4, kept graph, BatchNorm kernel"] = lambda: own_kernel(b, v)
    res = timed(cands, args.rounds)
    for size in ("1e4", "1e5"):  # the graph built again for every product
        cnn, _, data, cnn_loss, _ = build("cnn", size)
        c = HessianOperator(cnn, cnn_loss, [data], cache_graphs=False)
        u = torch.randn(c.shape[0], dtype=torch.float64)
        cands = {
            f"CNN {size}, graph not kept, affine map": lambda c=c, u=u: folded(c, u),
            f"CNN {size}, graph not kept, BatchNorm kernel": lambda c=c, u=u: c.matvec(u),
        }
        res |= timed(cands, args.rounds)
    print("| product | CPU ms | ratio |\n|---|---:|---:|")
    names = list(res)
    for i in range(0, len(names), 2):
        x, y = res[names[i]], res[names[i + 1]]
        print(f"| {names[i]} | {x * 1e3:.1f} | |")
        print(f"| {names[i + 1]} | {y * 1e3:.1f} | {y / x:.2f}x |")

    for family in ("mlp", "gpt"):
        model, _, batch, loss, _ = build(family, "1e5")
        with sdpa_kernel(SDPBackend.MATH):
            closed = HessianOperator(model, loss, [batch], cache_graphs=True, closed_form=True)
            closed._closed_activations = False  # the cross-entropy alone: GELU as in `auto`
            auto = HessianOperator(model, loss, [batch], cache_graphs=True, closed_form=False)
            v = torch.randn(closed.shape[0], dtype=torch.float64)
            cands = {
                "closed": lambda c=closed, v=v: c.matvec(v),
                "autograd": lambda a=auto, v=v: a.matvec(v),
            }
            res = timed(cands, args.rounds)
        print(
            f"| {family} 1e5, closed form | {res['closed'] * 1e3:.1f} | |\n"
            f"| {family} 1e5, autograd | {res['autograd'] * 1e3:.1f} | "
            f"{res['autograd'] / res['closed']:.2f}x |"
        )

    activations(args.rounds)


def activations(rounds: int) -> None:
    """GELU's and SiLU's closed-form second derivatives against autograd's: each
    activation's second backward pass, then the GPT's products (the cross-entropy's
    closed form in both)."""
    from spectorch.curvature import _activations as act

    print("\n| second backward pass, 1024 x 768 | closed form (ms) | autograd (ms) | ratio |")
    print("|---|---:|---:|---:|")
    gen = torch.Generator().manual_seed(0)
    x, g, u = (torch.randn(1024, 768, generator=gen) for _ in range(3))
    x.requires_grad_(True)
    for kind in ("gelu", "gelu-tanh", "silu"):
        cands = {}
        for name, f in (("c", lambda t, k=kind: act._Activation.apply(t, k)),
                        ("p", act._FORWARD[kind])):  # fmt: skip
            (first,) = torch.autograd.grad(f(x), x, g, create_graph=True)
            cands[name] = lambda first=first: torch.autograd.grad(first, x, u, retain_graph=True)
        res = timed(cands, rounds)
        print(
            f"| {kind} | {res['c'] * 1e3:.2f} | {res['p'] * 1e3:.2f} | {res['p'] / res['c']:.2f}x |"
        )
    print("\n| product | closed-form GELU (ms) | autograd's GELU (ms) | ratio | "
          "kept graph MB, closed / autograd |")  # fmt: skip
    print("|---|---:|---:|---:|---:|")
    for size in ("1e5", "1e6"):
        model, _, batch, loss, _ = build("gpt", size)
        with sdpa_kernel(SDPBackend.MATH):
            for kept in (True, False):
                closed = HessianOperator(model, loss, [batch], cache_graphs=kept)
                plain = HessianOperator(model, loss, [batch], cache_graphs=kept)
                plain._closed_activations = False  # the switch: this operator never rewrites GELU
                v = torch.randn(closed.shape[0], dtype=torch.float64)
                cands = {
                    "c": lambda c=closed, v=v: c.matvec(v),
                    "p": lambda p=plain, v=v: p.matvec(v),
                }
                res = timed(cands, rounds)
                assert closed._closed_activations, "GELU was not rewritten"
                what = "kept graph" if kept else "graph not kept"
                held = "–"  # what the kept graphs hold, closed form / autograd
                if kept:
                    held = f"{closed.cache_bytes / 2**20:.1f} / {plain.cache_bytes / 2**20:.1f}"
                print(f"| GPT {size}, {what} | {res['c'] * 1e3:.1f} | {res['p'] * 1e3:.1f} | "
                      f"{res['p'] / res['c']:.2f}x | {held} |")  # fmt: skip


def profile() -> None:
    """``torch.profiler``'s operators by self CPU time over three kept products of the
    GPT at 10^6 parameters, with GELU's closed form and with autograd's."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as profiler

    model, _, batch, loss, _ = build("gpt", "1e6")
    with sdpa_kernel(SDPBackend.MATH):
        for closed in (False, True):
            op = HessianOperator(model, loss, [batch], cache_graphs=True)
            if not closed:
                op._closed_activations = False  # the switch, as in activations()
            v = torch.randn(op.shape[0], dtype=torch.float64)
            op.matvec(v)
            op.matvec(v)
            with profiler(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(3):
                    op.matvec(v)
            print(f"\nGPT 1e6, kept graph, {'closed-form' if closed else 'autograd'} GELU")
            events = prof.key_averages()
            print(events.table(sort_by="self_cpu_time_total", row_limit=12))
            total = sum(e.self_cpu_time_total for e in events)
            for e in events:  # the activation's second derivative, its children included
                if e.key in ("GeluBackwardBackward0", "_ActivationGradBackward"):
                    print(f"{e.key}: {e.cpu_time_total / total:.0%} of the products' CPU time")


if __name__ == "__main__":
    main()
