"""Forward-over-reverse against reverse-over-reverse, both without kept graphs.

    python benchmarks/bench_forward_ad.py --rows mlp:1e4,mlp:1e5,gpt:1e5,cnn:1e4

On ``bench_scale.py``'s models (same builders, same data), one Hessian-vector product
of the summed cross-entropy three ways, each building what it needs from scratch:
reverse-over-reverse (the gradient's graph built with ``create_graph`` and
differentiated again: spectorch's ``cache_graphs=False`` product and the peers'),
forward-over-reverse with ``torch.autograd.forward_ad`` (dual parameters whose
tangent is ``v``, one backward pass whose gradient carries ``Hv`` as its tangent),
and ``torch.func.jvp`` of ``torch.func.grad`` (spectorch's ``hvp="forward"``). CPU
time on one thread, the four interleaved over 5 rounds (medians), as multiples of one
gradient; the three products are checked equal to float32 round-off.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.autograd.forward_ad as fwAD
from torch import nn
from torch.func import functional_call, grad, jvp
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).parent))
import bench_scale


def row(family: str, size: str, calls: int) -> str:
    model, _, batch, _, desc = bench_scale.build(family, size)
    if family == "gpt":
        inputs, targets = batch, batch[:, 1:].reshape(-1)

        def loss(out: torch.Tensor) -> torch.Tensor:
            logits = out[:, :-1].reshape(-1, out.shape[-1])
            return nn.functional.cross_entropy(logits, targets, reduction="sum")
    else:
        inputs, targets = batch

        def loss(out: torch.Tensor) -> torch.Tensor:
            return nn.functional.cross_entropy(out, targets, reduction="sum")

    params = {k: p.detach() for k, p in model.named_parameters()}
    gen = torch.Generator().manual_seed(0)
    v = {k: torch.randn(p.shape, generator=gen) for k, p in params.items()}

    def value(p: dict) -> torch.Tensor:
        return loss(functional_call(model, p, (inputs,)))

    def leaves() -> dict:
        return {k: p.detach().requires_grad_(True) for k, p in params.items()}

    def gradient() -> list:
        x = leaves()
        return list(torch.autograd.grad(value(x), list(x.values())))

    def reverse() -> list:
        x = leaves()
        g = torch.autograd.grad(value(x), list(x.values()), create_graph=True)
        return list(torch.autograd.grad(g, list(x.values()), list(v.values())))

    def forward_ad() -> list:
        with fwAD.dual_level():
            x = leaves()
            duals = {k: fwAD.make_dual(t, v[k]) for k, t in x.items()}
            g = torch.autograd.grad(value(duals), list(x.values()))
            return [fwAD.unpack_dual(t).tangent for t in g]

    def func() -> list:
        return list(jvp(grad(value), (params,), (v,))[1].values())

    ways = {"gradient": gradient, "reverse": reverse, "forward_ad": forward_ad, "func": func}
    with sdpa_kernel(SDPBackend.MATH) if family == "gpt" else nullcontext():
        ref = reverse()
        for name in ("forward_ad", "func"):
            err = max(
                float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))
                for a, b in zip(ways[name](), ref, strict=True)
            )
            if err > 1e-4:
                raise SystemExit(f"{family} {size}: {name} differs from reverse by {err:.1e}")
        times: dict[str, list[float]] = {k: [] for k in ways}
        for _ in range(5):
            for name, f in ways.items():
                t0 = time.process_time()
                for _ in range(calls):
                    f()
                times[name].append((time.process_time() - t0) / calls)
    g = statistics.median(times["gradient"])
    cells = [f"{statistics.median(times[k]) / g:.2f}" for k in ("reverse", "forward_ad", "func")]
    return f"| {family} | {desc['parameters']:,} | {g * 1e3:.3g} | " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default="mlp:1e4,mlp:1e5,gpt:1e5,cnn:1e4")
    parser.add_argument("--calls", type=int, default=3, help="products per timing")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| model | parameters | gradient (ms) | reverse-over-reverse | forward_ad | "
          "torch.func jvp(grad) |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|")
    for spec in args.rows.split(","):
        family, size = spec.split(":")
        print(row(family, size, args.calls), flush=True)


if __name__ == "__main__":
    main()
