"""Time per full-data Hessian-vector product of a CIFAR ResNet on 1, 2, ... processes.

For each process count the script launches itself under ``torchrun --standalone``;
every rank builds the same ResNet (float32, eval mode) and takes its disjoint shard of
the same CIFAR-shaped images; rank 0 times ``--repeats`` products of the
:class:`~spectorch.distributed.DistributedOperator` (broadcast of the vector, local
products, one all-reduce) after two warm-up products. Both HVP modes of the operator
are timed: the default, which keeps each batch's gradient graph after the first
product, and ``cache_graphs=False``, which rebuilds it (a forward and two backward
passes per batch and product). The products of every process count are checked
against the one-process product.

    python benchmarks/bench_distributed.py --depth 32 --images 512 --nprocs 1 2
    python benchmarks/bench_distributed.py --device cuda --nprocs 1 2 4 8   # GPUs, NCCL

On the CPU each process gets ``cores / N`` threads, so the comparison is at equal
hardware.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn


def worker(args: argparse.Namespace) -> None:
    from spectorch import distributed
    from spectorch.curvature import HessianOperator
    from spectorch.nn import cifar_resnet

    ctx = distributed.setup(device=args.device, timeout=600)
    if ctx.device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // ctx.world_size))
    torch.manual_seed(0)
    model = cifar_resnet(args.depth).eval().to(ctx.device)
    g = torch.Generator().manual_seed(1)
    X = torch.randn(args.images, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (args.images,), generator=g)
    batches = [(X[i : i + args.batch], y[i : i + args.batch]) for i in range(0, len(X), args.batch)]
    shard = distributed.shard(batches, ctx.rank, ctx.world_size)
    v = torch.randn(sum(p.numel() for p in model.parameters()), generator=g, dtype=torch.float64)
    result = {"world_size": ctx.world_size, "threads": torch.get_num_threads()}
    for mode, cache in (("kept graphs", "auto"), ("no kept graphs", False)):
        local = HessianOperator(model, nn.CrossEntropyLoss(), shard, cache_graphs=cache)
        with distributed.DistributedOperator(local) as op:
            if not op.is_root:
                op.serve()
                continue
            v_dev = v.to(ctx.device)
            for _ in range(2):
                hv = op.matvec(v_dev)
            times = []
            for _ in range(args.repeats):
                if ctx.device.type == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                hv = op.matvec(v_dev)
                if ctx.device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            result[mode] = {"median_s": statistics.median(times), "times": times}
            result[f"{mode} hv"] = hv.cpu().tolist()
    if ctx.is_root:
        Path(args.result).write_text(json.dumps(result))
    distributed.teardown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=32)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--nprocs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--out", default="benchmarks/out/distributed.json")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    rows = []
    reference = None
    for n in args.nprocs:
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
            result_file = fh.name
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
        cmd += [f"--nproc_per_node={n}", __file__, "--worker", "--result", result_file]
        cmd += ["--depth", str(args.depth), "--images", str(args.images)]
        cmd += ["--batch", str(args.batch), "--repeats", str(args.repeats)]
        cmd += ["--device", args.device]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            sys.exit(f"{n} processes failed:\n{proc.stderr[-4000:]}")
        res = json.loads(Path(result_file).read_text())
        os.unlink(result_file)
        hv = torch.tensor(res.pop("kept graphs hv"))
        hv_nocache = torch.tensor(res.pop("no kept graphs hv"))
        if reference is None:
            reference = hv
        res["max_rel_diff_vs_first"] = float((hv - reference).abs().max() / reference.abs().max())
        res["cache_vs_nocache_rel_diff"] = float((hv - hv_nocache).abs().max() / hv.abs().max())
        rows.append(res)
        kept, rebuilt = res["kept graphs"]["median_s"], res["no kept graphs"]["median_s"]
        print(
            f"{n} process(es) x {res['threads']} threads: HVP {kept:.3f} s (kept graphs), "
            f"{rebuilt:.3f} s (rebuilt); rel diff vs first {res['max_rel_diff_vs_first']:.1e}",
            flush=True,
        )
    base = rows[0]
    for r in rows:
        for mode in ("kept graphs", "no kept graphs"):
            r[mode]["speedup_vs_first"] = base[mode]["median_s"] / r[mode]["median_s"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = vars(args) | {"torch": torch.__version__, "cpu": os.cpu_count()}
    out.write_text(json.dumps({"meta": meta, "results": rows}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
