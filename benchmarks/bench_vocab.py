"""Curvature products of a language model at large vocabularies: the closed-form
cross-entropy derivatives against differentiating the loss twice with autograd.

    python benchmarks/bench_vocab.py --vocabs 1024 8192 50257 --rounds 3

The model is a one-layer causal transformer (embedding, one attention layer, a
read-out to the vocabulary; float32; width 64) on one batch of 4 sequences of 64
random tokens, so the logits hold ``4 x 64 x V`` numbers (51 MB at GPT-2's 50,257).
Each configuration runs in a fresh process (one thread), first on a 16-token vocabulary
(so that lazy imports are not counted), then on ``V``: "kept" is the resident memory
the operator holds after its first product (a kept gradient graph), "peak" the rise of
the peak resident memory (VmHWM, reset after the first product) during the next
products over the resident memory before them (in a run where glibc returns freed
blocks of 64 kB or more at once, so that resident memory follows the live tensors),
and the time, from a second run with the allocator as it is, the median CPU time
(``time.process_time``) of those products. Rounds interleave the configurations; the
table gives the medians over rounds.

Configurations: the Hessian by reverse-over-reverse autograd through the softmax
(``closed_form=False``) and with the closed-form second derivative of the
cross-entropy (``closed_form=True``, the default ``"auto"`` here), each without and
with its gradient graph kept between products (``cache_graphs``); the GGN through
autograd and in closed form.
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
from pathlib import Path

CONFIGS = {
    "hessian, autograd": ("hessian", {"closed_form": False, "cache_graphs": False}),
    "hessian, closed form": ("hessian", {"closed_form": True, "cache_graphs": False}),
    "hessian, autograd, kept graph": ("hessian", {"closed_form": False, "cache_graphs": True}),
    "hessian, closed form, kept graph": ("hessian", {"closed_form": True, "cache_graphs": True}),
    "ggn, autograd": ("ggn", {"closed_form": False}),
    "ggn, closed form": ("ggn", {"closed_form": True}),
}


def _status(key: str) -> int:
    """A memory figure of this process from /proc/self/status, in bytes."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/self/status")


def _reset_peak() -> None:
    """Reset the peak resident memory (VmHWM) to the current one (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def worker(config: str, vocab: int, width: int, batch: int, length: int, products: int) -> dict:
    import torch
    from torch import nn

    from spectorch.curvature import CausalLM, make_operator

    torch.set_num_threads(1)
    torch.manual_seed(0)

    class LM(nn.Module):
        def __init__(self, size: int) -> None:
            super().__init__()
            self.embed = nn.Embedding(size, width)
            self.qkv = nn.Linear(width, 3 * width)
            self.read = nn.Linear(width, size)

        def forward(self, input_ids):
            n = input_ids.shape[1]
            h = self.embed(input_ids)
            q, k, v = self.qkv(h).chunk(3, dim=-1)
            s = (q @ k.transpose(-1, -2)) / math.sqrt(width)
            s = s.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
            return self.read(h + torch.tanh(s.softmax(-1) @ v))

    name, kwargs = CONFIGS[config]

    def problem(size: int):
        model = LM(size)
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(0, size, (batch, length), generator=g)
        n = sum(p.numel() for p in model.parameters())
        return model, [ids], torch.randn(n, dtype=torch.float64)

    # the same configuration on a tiny vocabulary first: lazy imports and one-off
    # allocations are not counted below
    tiny, tiny_data, tiny_v = problem(16)
    make_operator(name, tiny, CausalLM(), tiny_data, **kwargs).matvec(tiny_v)
    model, data, v = problem(vocab)
    before = _status("VmRSS")
    op = make_operator(name, model, CausalLM(), data, **kwargs)
    op.matvec(v)  # warm-up (and, with a kept graph, the graph)
    kept = _status("VmRSS") - before
    _reset_peak()
    start = _status("VmRSS")
    times = []
    for _ in range(products):
        t0 = time.process_time()
        op.matvec(v)
        times.append(time.process_time() - t0)
    peak = _status("VmHWM") - start
    return {"seconds": statistics.median(times), "kept_bytes": max(kept, 0), "peak_bytes": peak}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--vocabs", type=int, nargs="+", default=[1024, 8192, 50257])
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--length", type=int, default=64)
    p.add_argument("--products", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--out", default="benchmarks/out/vocab.json")
    p.add_argument("--worker", nargs=2, metavar=("CONFIG", "VOCAB"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    sizes = ("--width", str(args.width), "--batch", str(args.batch), "--length", str(args.length))
    if args.worker:
        config, vocab = args.worker
        result = worker(config, int(vocab), args.width, args.batch, args.length, args.products)
        print(json.dumps(result))
        return 0
    # memory: large blocks straight from and back to the system, so that resident
    # memory follows the live tensors (glibc would otherwise keep freed memory
    # resident); time: the allocator as it is (the mmap calls would be counted)
    plain = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    traced = {**plain, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    rows: dict[tuple[int, str], list[dict]] = {}
    for r in range(args.rounds):
        for vocab in args.vocabs:
            for config in args.configs:
                cmd = [sys.executable, __file__, "--worker", config, str(vocab), *sizes]
                cmd += ["--products", str(args.products)]
                result = {}
                for env, keys in ((traced, ("kept_bytes", "peak_bytes")), (plain, ("seconds",))):
                    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
                    if done.returncode != 0:
                        print(done.stderr, file=sys.stderr)
                        raise SystemExit(f"{config} at V={vocab} failed")
                    got = json.loads(done.stdout.splitlines()[-1])
                    result.update({k: got[k] for k in keys})
                rows.setdefault((vocab, config), []).append(result)
                print(f"round {r + 1}: V={vocab} {config}: {result}", flush=True)
    table = [
        {
            "vocab": vocab,
            "config": config,
            "seconds": statistics.median(x["seconds"] for x in runs),
            "kept_mb": statistics.median(x["kept_bytes"] for x in runs) / 2**20,
            "peak_mb": statistics.median(x["peak_bytes"] for x in runs) / 2**20,
        }
        for (vocab, config), runs in rows.items()
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(table, indent=1))
    print("| V | product | CPU s / product | kept between products (MB) | peak in a product (MB) |")
    print("|---|---|---|---|---|")
    for row in table:
        print(
            f"| {row['vocab']:,} | {row['config']} | {row['seconds']:.3f} | "
            f"{row['kept_mb']:.0f} | {row['peak_mb']:.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
