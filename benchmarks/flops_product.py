"""The arithmetic of one Hessian product against one gradient's: matrix-product and
convolution FLOPs counted by PyTorch, for spectorch and each peer.

    PYTHONPATH=<peers> python benchmarks/flops_product.py --sizes 1e4,1e5,1e6

For each of ``bench_scale.py``'s rows (the same models, data and products: its
``libraries``), one call of every library's product runs under
``torch.utils.flop_counter.FlopCounterMode``, which counts the floating-point
operations of the matrix products, convolutions and attention kernels that PyTorch
dispatches, the backward passes included; element-wise work (activations, the loss,
BatchNorm's affine map, the additions) is not counted. A product with a kept gradient
graph is counted after that graph was built (its first call, not counted), so its
count is the second backward pass alone; a product without one rebuilds the graph
(forward, backward with ``create_graph``) and then differentiates it.

Why it is printed: a Hessian product by reverse-over-reverse differentiation (every
library here) costs, for a linear layer ``y = x W``, one product forward, two backward
(``∂W = xᵀ ∂y`` and ``∂x = ∂y Wᵀ``), and six in the second backward pass (two through
the forward, four through the backward), so about 3 gradients' matrix arithmetic
without a kept graph and 2 with one. Counting it per network shows how far below those
lines a product's *time* can go without removing arithmetic (a compiled product leaves
out ``xᵀ ∂y``, which the product never reads: ``bench_compile.py``). The column
"traced, dead code removed" counts that least arithmetic: the forward-over-reverse
product (``torch.func.jvp`` of ``torch.func.grad``, as ``compile=True`` compiles it)
traced to ATen operations by ``make_fx``, the operations whose results the product
does not use removed (``eliminate_dead_code``, as the compiler's partitioner does),
and the rest run under the counter: the primal forward, the backward to the inputs
of each layer, and the tangent's forward and backward passes, about 8/3 gradients
without a kept graph on linear layers. A convolution's backward is one operation for
the input's and the weight's gradients, so the trace keeps the weight's (3 gradients).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call, grad, jvp
from torch.fx.experimental.proxy_tensor import make_fx
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).parent))
import bench_scale


def count(product) -> int:
    """The FLOPs of one call of ``product`` (the matrix products and convolutions)."""
    with FlopCounterMode(display=False) as mode:
        product()
    return int(mode.get_total_flops())


def traced(model: nn.Module, batch, family: str) -> int:
    """The FLOPs of the forward-over-reverse product traced with its unused operations
    removed (the arithmetic a compiled product without a kept graph cannot go below)."""
    inputs, targets = (batch, batch[:, 1:].reshape(-1)) if family == "gpt" else batch
    params = {k: p.detach() for k, p in model.named_parameters()}
    gen = torch.Generator().manual_seed(0)
    tangent = {k: torch.randn(p.shape, generator=gen) for k, p in params.items()}
    ce = nn.CrossEntropyLoss()

    def loss_of(p: dict) -> torch.Tensor:
        return ce(functional_call(model, p, (inputs,)), targets)

    def product(p: dict, t: dict) -> dict:
        return jvp(grad(loss_of), (p,), (t,))[1]

    program = make_fx(product)(params, tangent)
    program.graph.eliminate_dead_code()
    program.recompile()
    return count(lambda: program(params, tangent))


def row(family: str, size: str, peers: list[str]) -> dict:
    model, peer_model, batch, loss, desc = bench_scale.build(family, size)
    with sdpa_kernel(SDPBackend.MATH):
        libs = bench_scale.libraries(model, peer_model, batch, loss, family, 1, peers)
        flops = {}
        for name, lib in libs.items():
            if lib.get("product") is None:
                continue  # a Lanczos-only entry (spectorch's later draws)
            lib["product"]()  # the kept graphs built (spectorch's "auto", PyHessian's)
            if name == "spectorch" and not lib["op"].caching:  # else not a kept product
                raise SystemExit(f"{family} {size}: spectorch's operator did not keep its graphs")
            flops[name] = count(lib["product"])
        flops["traced"] = traced(peer_model, batch, family)
    return desc | {"flops": flops}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1e4,1e5,1e6", help="comma-separated, of 1e4-1e8")
    parser.add_argument("--families", default=",".join(bench_scale.FAMILIES))
    parser.add_argument(
        "--peers", default=",".join(bench_scale.PEERS),
        help="comma-separated, of " + ", ".join(bench_scale.PEERS) + " (empty: none)",
    )  # fmt: skip
    args = parser.parse_args()
    sizes = bench_scale.listed(parser, "--sizes", args.sizes, bench_scale.SIZES)
    families = bench_scale.listed(parser, "--families", args.families, bench_scale.FAMILIES)
    peers = (
        []
        if not args.peers
        else bench_scale.listed(parser, "--peers", args.peers, bench_scale.PEERS)
    )
    torch.set_num_threads(1)
    rows = [row(f, s, peers) for f in families for s in sizes]
    names = [n for n in ["spectorch", "spectorch-nocache", "traced", *peers]
             if any(n in r["flops"] for r in rows)]  # fmt: skip
    labels = {"spectorch": "spectorch, kept", "spectorch-nocache": "spectorch, not kept",
              "traced": "traced, dead code removed, not kept"}  # fmt: skip
    kept = {"spectorch", "pyhessian"}
    print("Matrix-product and convolution FLOPs of one product over one gradient's (kept: "
          "the gradient graph built before; not kept: rebuilt by the product)\n")  # fmt: skip
    head = " | ".join(labels.get(n, n + (", kept" if n in kept else ", not kept"))
                      for n in names)  # fmt: skip
    print(f"| model | parameters | gradient GFLOP | {head} |")
    print("|---|---:|---:|" + "---:|" * len(names))
    for r in rows:
        g = r["flops"]["gradient"]
        cells = " | ".join(f"{r['flops'][n] / g:.2f}" if n in r["flops"] else "–" for n in names)
        print(f"| {r['family']} ({r['model']}) | {r['parameters']:,} | {g / 1e9:.3g} | {cells} |")


if __name__ == "__main__":
    main()
