"""Peak memory of 90 Lanczos steps on a 10^7-parameter model, per ``--basis`` mode.

Each mode runs in a fresh process (a peak resident set cannot be reset): build the
model and its Hessian operator, take one product (the baseline resident set), then one
SLQ draw of ``--steps`` steps with ``spectral_density(basis=mode)``. Reported: the
peak resident set (``ru_maxrss``), its growth over the baseline, the time of the draw
and the top Ritz values, which must agree between modes.

    python benchmarks/bench_basis.py --steps 90

The model is a 3072-2560-1000-10 tanh MLP on CIFAR-shaped random inputs (10,437,890
parameters, float32); its float64 basis is 90 x 10.4M x 8 B = 7.5 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

MODES = ("memory", "float32", "disk")


def model_and_data(images: int, batch: int) -> tuple[nn.Module, list]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(),
        nn.Linear(3072, 2560),
        nn.Tanh(),
        nn.Linear(2560, 1000),
        nn.Tanh(),
        nn.Linear(1000, 10),
    ).eval()
    X = torch.randn(images, 3, 32, 32)
    y = torch.randint(0, 10, (images,))
    return model, [(X[i : i + batch], y[i : i + batch]) for i in range(0, images, batch)]


def _rss_now() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def child(mode: str, steps: int, images: int, batch: int) -> dict:
    from spectorch.curvature import HessianOperator
    from spectorch.density import spectral_density

    model, data = model_and_data(images, batch)
    op = HessianOperator(model, nn.CrossEntropyLoss(), data)
    op.matvec(torch.ones(op.shape[0], dtype=torch.float64))
    base = _rss_now()
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        t0 = time.perf_counter()
        dens = spectral_density(
            op,
            steps=steps,
            draws=1,
            basis=mode,
            out=tmp,
            save_vectors=False,
            check_symmetry=False,
            progress=False,
        )
        seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {
        "mode": mode,
        "parameters": op.shape[0],
        "steps": steps,
        "baseline_bytes": base,
        "peak_bytes": peak,
        "growth_bytes": peak - base,
        "seconds": seconds,
        "top_ritz": dens.top_eigenvalues(3).tolist(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=90)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--out", default="benchmarks/out/basis.json")
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.steps, args.images, args.batch)))
        return

    results = []
    for mode in args.modes:
        cmd = [sys.executable, __file__, "--child", mode, "--steps", str(args.steps)]
        cmd += ["--images", str(args.images), "--batch", str(args.batch)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            sys.exit(f"mode {mode} failed:\n{proc.stderr[-3000:]}")
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        results.append(res)
        print(
            f"{mode:8s} peak {res['peak_bytes'] / 2**30:6.2f} GiB  growth "
            f"{res['growth_bytes'] / 2**30:6.2f} GiB  {res['seconds']:7.1f} s  "
            f"top {res['top_ritz'][0]:.6g}",
            flush=True,
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": os.cpu_count()}
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
