"""Block Hessian spectra of a small transformer against a small CNN (Zhang et al.,
"Why Transformers Need Adam: A Hessian Perspective", NeurIPS 2024).

    python benchmarks/bench_block_spectra.py --out benchmarks/out/blocks

Zhang et al. find that the Hessian spectra of a transformer's parameter blocks differ
from block to block much more than a CNN's, and measure it by the Jensen-Shannon
distance between block spectra, averaged over pairs. This reproduces it on two small
models trained here, of similar size:

* a GPT-style transformer (2 layers, width 48, 4 heads, pre-LayerNorm, byte-level,
  context 32, 90k parameters) trained with Adam on the text of the Python standard
  library's own modules (the ``.py`` files of ``sysconfig.get_paths()["stdlib"]``,
  which ship with Python);
* a CNN (two 3x3 convolutions and two linear layers, 85k parameters) trained with
  Adam on the bundled 8x8 digits.

The blocks are the weight matrices (every parameter with two or more dimensions, the
embeddings included; biases and LayerNorm gains left out, as their blocks are tiny),
each block the principal sub-matrix of the Hessian of the training loss on a fixed
batch (512 tokens; 512 images). Each block's density has ``--draws`` SLQ draws of
``--steps`` steps; :func:`spectorch.density.js_distances` gives the distances. Writes
``blocks_<model>.png`` and ``blocks.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import sysconfig
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from spectorch.curvature import CausalLM, HessianOperator
from spectorch.data import load_digits
from spectorch.density import js_distances, spectral_density
from spectorch.plotting import plot_block_densities


class Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.fc = nn.Linear(width, 4 * width)
        self.out = nn.Linear(4 * width, width)
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, w = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(w, dim=-1)
        q, k, v = (t.reshape(b, n, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        # attention written out: it has a double backward everywhere
        s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        s = s.masked_fill(~torch.ones(n, n, dtype=torch.bool, device=x.device).tril(), -1e9)
        a = (s.softmax(-1) @ v).transpose(1, 2).reshape(b, n, w)
        x = x + self.proj(a)
        return x + self.out(torch.nn.functional.gelu(self.fc(self.ln2(x))))


class TinyGPT(nn.Module):
    def __init__(self, vocab=256, width=48, layers=2, heads=4, context=32) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.pos = nn.Embedding(context, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab, bias=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        n = input_ids.shape[1]
        x = self.embed(input_ids) + self.pos(torch.arange(n, device=input_ids.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),
        nn.Conv2d(1, 32, 3, padding=1),
        nn.Tanh(),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.Tanh(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 16, 64),
        nn.Tanh(),
        nn.Linear(64, 10),
    )


def stdlib_bytes(limit: int = 2_000_000) -> torch.Tensor:
    """The bytes of the standard library's top-level modules, in name order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    data = b"".join(p.read_bytes() for p in sorted(root.glob("*.py")))[:limit]
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long()


def gpt_problem(seed: int) -> tuple[nn.Module, list, torch.Tensor]:
    torch.manual_seed(seed)
    text = stdlib_bytes()
    split = int(0.9 * len(text))
    starts = torch.arange(split, split + 16 * 33, 33)
    batch = torch.stack([text[s : s + 32] for s in starts])  # held-out text, fixed
    return TinyGPT().eval(), [batch], text


def train_gpt(model: nn.Module, text: torch.Tensor, steps: int, seed: int) -> None:
    split = int(0.9 * len(text))
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    for _ in range(steps):
        starts = torch.randint(0, split - 33, (32,), generator=g)
        ids = torch.stack([text[s : s + 32] for s in starts])
        logits = model(ids)
        loss = nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 256), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    starts = torch.arange(split, split + 16 * 33, 33)
    batch = torch.stack([text[s : s + 32] for s in starts])
    with torch.no_grad():
        held = nn.functional.cross_entropy(
            model(batch)[:, :-1].reshape(-1, 256), batch[:, 1:].reshape(-1)
        )
    print(f"transformer: {steps} steps, held-out loss {float(held):.3f} nats/byte")


def cnn_problem(seed: int) -> tuple[nn.Module, list]:
    torch.manual_seed(seed)
    x, y = load_digits(split="train")
    return small_cnn().eval(), [(x[:512], y[:512])]


def train_cnn(model: nn.Module, epochs: int, seed: int) -> None:
    x, y = load_digits(split="train")
    xt, yt = load_digits(split="test")
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(64):
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(xt).argmax(-1) == yt).float().mean())
    print(f"CNN: {epochs} epochs, test accuracy {acc:.3f}")


def block_spectra(name, model, loss, data, *, steps, draws, out: Path) -> dict:
    H = HessianOperator(model, loss, data)
    blocks = {n: [n] for n, p in model.named_parameters() if p.ndim >= 2}
    t0 = time.process_time()
    dens = spectral_density(H, steps=steps, draws=draws, blocks=blocks, progress=False)
    seconds = time.process_time() - t0
    parts = {k: v for k, v in dens.items() if k != "full"}
    distances = js_distances(parts)
    plot_block_densities(dens, out / f"blocks_{name}.png", title=f"{name}: Hessian blocks")
    return {
        "parameters": H.shape[0],
        "blocks": {
            k: {"size": d.dim, "top": float(d.top_eigenvalues(1)[0])} for k, d in parts.items()
        },
        "js_mean": distances["mean"],
        "js_median": float(np.median(list(distances["pairs"].values()))),
        "cpu_seconds": seconds,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=40, help="Lanczos steps per draw")
    p.add_argument("--draws", type=int, default=3)
    p.add_argument("--gpt-steps", type=int, default=1500)
    p.add_argument("--cnn-epochs", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/out/blocks")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    gpt, gpt_data, text = gpt_problem(args.seed)
    cnn, cnn_data = cnn_problem(args.seed)
    kw = dict(steps=args.steps, draws=args.draws, out=out)
    result = {
        "transformer, initialization": block_spectra(
            "transformer_init", gpt, CausalLM(), gpt_data, **kw
        ),
        "CNN, initialization": block_spectra(
            "cnn_init", cnn, nn.CrossEntropyLoss(), cnn_data, **kw
        ),
    }
    train_gpt(gpt, text, args.gpt_steps, args.seed)
    train_cnn(cnn, args.cnn_epochs, args.seed)
    result["transformer, trained"] = block_spectra("transformer", gpt, CausalLM(), gpt_data, **kw)
    result["CNN, trained"] = block_spectra("cnn", cnn, nn.CrossEntropyLoss(), cnn_data, **kw)
    (out / "blocks.json").write_text(json.dumps(result, indent=1))
    print("| model | parameters | blocks | JS distance, mean over pairs | median | CPU s |")
    print("|---|---|---|---|---|---|")
    for name, r in result.items():
        print(
            f"| {name} | {r['parameters']:,} | {len(r['blocks'])} | {r['js_mean']:.3f} | "
            f"{r['js_median']:.3f} | {r['cpu_seconds']:.0f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
