"""The finite-difference Hessian product against the exact one.

    python benchmarks/bench_finite_difference.py

``HessianOperator(..., hvp="finite-difference")`` takes central differences of two
ordinary gradients per probe. This measures its relative error ``‖H V − H_fd V‖ /
‖H V‖`` over 8 random probes against the exact reverse-over-reverse product, in
float64 and float32 networks, on the digits MLP (1,960 parameters, cross-entropy, the
bundled digits) and on a one-layer causal language model (vocabulary 64, width 32, 8
sequences of 32 random tokens), and the CPU time of one product of each (one thread,
after a warm-up product).
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn

from spectorch.curvature import CausalLM, HessianOperator
from spectorch.data import Batches, load_digits
from spectorch.experiments.digits import digits_mlp


class _LM(nn.Module):
    def __init__(self, vocab: int = 64, width: int = 32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.qkv = nn.Linear(width, 3 * width)
        self.read = nn.Linear(width, vocab)
        self.width = width

    def forward(self, input_ids):
        n = input_ids.shape[1]
        h = self.embed(input_ids)
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(self.width)
        s = s.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
        return self.read(h + torch.tanh(s.softmax(-1) @ v))


def problems(dtype: torch.dtype):
    x, y = load_digits(split="train")
    yield (
        "digits MLP",
        digits_mlp(dtype=dtype).eval(),
        nn.CrossEntropyLoss(),
        list(Batches(x.to(dtype), y, 512)),
    )
    torch.manual_seed(0)
    ids = torch.randint(0, 64, (8, 32), generator=torch.Generator().manual_seed(1))
    yield "causal LM", _LM().to(dtype), CausalLM(), [ids[:4], ids[4:]]


def main() -> int:
    torch.set_num_threads(1)
    print("| model | network dtype | relative error | CPU s exact | CPU s finite difference |")
    print("|---|---|---|---|---|")
    for dtype in (torch.float64, torch.float32):
        for name, model, loss, data in problems(dtype):
            exact = HessianOperator(model, loss, data, cache_graphs=False)
            fd = HessianOperator(model, loss, data, hvp="finite-difference")
            V = torch.randn(
                exact.shape[0], 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2)
            )
            exact.matvec(V[:, 0])  # warm-up of both
            fd.matvec(V[:, 0])
            t0 = time.process_time()
            a = exact.matmat(V)
            t1 = time.process_time()
            b = fd.matmat(V)
            t2 = time.process_time()
            err = float((a - b).norm() / a.norm())
            label = str(dtype).replace("torch.", "")
            print(f"| {name} | {label} | {err:.1e} | {(t1 - t0) / 8:.4f} | {(t2 - t1) / 8:.4f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
