"""Curvature of networks that compute in bfloat16 and float16, accumulated in float64.

    python benchmarks/bench_low_precision.py

The operators run the network in its own dtype and accumulate every product over the
batches in float64; the Lanczos recurrence is float64 too. This measures what the
network's dtype costs: for the digits MLP (trained 20 epochs, 1,960 parameters, the
training split in batches of 512) and a one-layer causal language model (vocabulary
64, width 32, 8 sequences of 32 random tokens), the relative error of Hessian and GGN
products over 4 random probes, ``‖C V − C_ref V‖ / ‖C_ref V‖``, and of the top
eigenvalue after 30 Lanczos steps, against the same network in float64.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from spectorch.curvature import CausalLM, GGNOperator, HessianOperator
from spectorch.data import Batches, load_digits
from spectorch.experiments.digits import train_digits_mlp
from spectorch.linalg import lanczos

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def problems():
    model, _ = train_digits_mlp(epochs=20)
    x, y = load_digits(split="train")
    yield (
        "digits MLP",
        model,
        nn.CrossEntropyLoss(),
        lambda dt: list(Batches(x.to(dt), y, 512)),
    )
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_finite_difference import _LM

    torch.manual_seed(0)
    ids = torch.randint(0, 64, (8, 32), generator=torch.Generator().manual_seed(1))
    yield "causal LM", _LM(), CausalLM(), lambda dt: [ids[:4], ids[4:]]


def main() -> int:
    torch.set_num_threads(1)
    print("| model | product | network dtype | relative error of C V | of the top eigenvalue |")
    print("|---|---|---|---|---|")
    for name, model, loss, data in problems():
        for cls in (HessianOperator, GGNOperator):
            ref = cls(copy.deepcopy(model).double(), loss, data(torch.float64))
            g = torch.Generator().manual_seed(2)
            V = torch.randn(ref.shape[0], 4, dtype=torch.float64, generator=g)
            a = ref.matmat(V)
            top = float(torch.linalg.eigvalsh(lanczos(ref, 30, seed=0).tridiagonal)[-1])
            for dt in DTYPES:
                op = cls(copy.deepcopy(model).to(dt), loss, data(dt))
                err = float((op.matmat(V) - a).norm() / a.norm())
                top_dt = float(torch.linalg.eigvalsh(lanczos(op, 30, seed=0).tridiagonal)[-1])
                label = str(dt).replace("torch.", "")
                print(
                    f"| {name} | {cls.name} | {label} | {err:.1e} | "
                    f"{abs(top_dt - top) / abs(top):.1e} |"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
