"""Compiled Hessian products (``HessianOperator(..., compile=True)``) against eager
ones and the peers', from 10^4 to 10^7 parameters.

    python benchmarks/bench_compile.py --out benchmarks/out/compile

On ``bench_scale.py``'s models and data (MLPs, CNNs, GPTs; one batch per row), one
Hessian-vector product by: spectorch with its gradient graphs kept (the default),
rebuilt every product (``cache_graphs=False``), and rebuilt by the ``torch.compile``d
program (``cache_graphs=False, compile=True``); PyHessian with its graph kept
(``data=``) and rebuilt (``dataloader=``), hessian-eigenthings and curvlinops
(rebuilt); and one gradient, the unit. CPU time on one thread, every library timed
once per round with the rounds interleaved, medians (5 rounds, 3 at 10^7). The
compiled product is checked against the eager one first (their relative difference,
float32 networks, is in the table; over 1e-2 stops the row). "compile" is the first
compiled product less an eager one, wall clock (the compiler runs in worker
processes) and CPU time of this process. One
Lanczos run (the row's steps, full reorthogonalisation) with the kept graphs and with
the compiled products gives each a step. Peak memory of one product (the resident set
above its start) in a second process per row with a fixed glibc mmap threshold, as in
``bench_scale.py``. Each row is appended to ``<out>/results.jsonl``; a rerun skips the
rows already there, ``--report`` prints the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import bench_scale
import torch
from bench_hessian import PeakMemory
from torch.nn.attention import SDPBackend, sdpa_kernel

from spectorch.curvature import HessianOperator
from spectorch.linalg import lanczos

ROWS = ("mlp:1e4,mlp:1e5,mlp:1e6,mlp:1e7,cnn:1e4,cnn:1e5,cnn:1e6,"
        "gpt:1e4,gpt:1e5,gpt:1e6,gpt:1e7")  # fmt: skip
ORDER = ("gradient", "spectorch", "spectorch-nocache", "spectorch-compiled",
         *bench_scale.PEERS)  # fmt: skip


def measure(family: str, size: str, rounds: int, peers: list[str], memory: bool) -> dict:
    torch.set_num_threads(1)
    model, peer_model, batch, loss, desc = bench_scale.build(family, size)
    steps = desc["steps"]
    kernel = sdpa_kernel(SDPBackend.MATH) if family == "gpt" else nullcontext()
    with kernel:
        libs = bench_scale.libraries(model, peer_model, batch, loss, family, steps, peers)
        # the products only: bench_scale's Lanczos-only entries (spectorch's partial
        # reorthogonalisation and a density's later draws) have none
        libs = {name: lib for name, lib in libs.items() if lib["product"] is not None}
        op = HessianOperator(model, loss, [batch], cache_graphs=False, compile=True)
        v = torch.randn(op.shape[0], generator=torch.Generator().manual_seed(0))
        v = (v / v.norm()).double()
        libs["spectorch-compiled"] = {"product": lambda: op.matvec(v), "op": op}
        if memory:
            out = {}
            for name, lib in libs.items():
                lib["product"]()
                with PeakMemory(torch.device("cpu")) as mem:
                    lib["product"]()
                out[name] = {"product_mb": mem.peak / 2**20}
            return out
        eager = libs["spectorch-nocache"]["op"]
        t0, w0 = time.process_time(), time.time()
        compiled = op.matvec(v)
        first_cpu, first_wall = time.process_time() - t0, time.time() - w0
        if not op.compiled:
            raise SystemExit(f"{family} {size}: torch.compile failed: {op.compile_error}")
        t0, w0 = time.process_time(), time.time()
        reference = eager.matvec(v)
        eager_cpu, eager_wall = time.process_time() - t0, time.time() - w0
        err = float((compiled - reference).norm() / reference.norm())
        if err > 1e-2:  # float32 round-off is far below; reported in the table
            raise SystemExit(f"{family} {size}: compiled product off by {err:.1e}")
        for lib in libs.values():  # warm-up; spectorch's graphs are kept from here on
            lib["product"]()
        times: dict[str, list[float]] = {name: [] for name in libs}
        for _ in range(min(rounds, 3) if size in ("1e7", "1e8") else rounds):
            for name, lib in libs.items():
                t0 = time.process_time()
                lib["product"]()
                times[name].append(time.process_time() - t0)
        step = {}
        for name in ("spectorch", "spectorch-compiled"):
            t0 = time.process_time()
            lanczos(libs[name]["op"], steps, seed=0)
            step[name] = (time.process_time() - t0) / steps
    results = {name: {"product_s": statistics.median(t)} for name, t in times.items()}
    for name, s in step.items():
        results[name]["step_s"] = s
    results["spectorch"]["cached"] = bool(libs["spectorch"]["op"].caching)
    compile_cost = {"wall_s": first_wall - eager_wall, "cpu_s": first_cpu - eager_cpu}
    return desc | {"results": results, "compile": compile_cost, "error": err}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/out/compile")
    parser.add_argument("--rows", default=ROWS, help="family:size,... (sizes 1e4-1e8)")
    bench_scale.row_options(parser)
    args = parser.parse_args()
    peers = [p for p in args.peers.split(",") if p]
    if args.row:
        family, size = args.row.split(":")
        print(json.dumps(measure(family, size, args.rounds, peers, args.memory)))
        return
    rows = [tuple(r.split(":")) for r in args.rows.split(",")]
    for family, size in rows:
        if family not in bench_scale.FAMILIES or size not in bench_scale.SIZES:
            parser.error(f"--rows: {family}:{size} is not a family:size of bench_scale.py")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.jsonl"
    settings = bench_scale.settings_of(args, peers)
    done = bench_scale._read(path, settings)
    if not args.report:
        for family, size in rows:
            if (family, size) in done:
                print(f"{family} {size}: already in {path}")
                continue
            row = bench_scale.run_row(__file__, family, size, args)
            row["settings"] = settings
            with open(path, "a") as fh:
                fh.write(json.dumps(row) + "\n")
            done[(family, size)] = row
            print(f"{family} {size}: done", flush=True)
    report([done[k] for k in sorted(done, key=lambda k: (bench_scale.FAMILIES.index(k[0]),
                                                         float(k[1])))])  # fmt: skip


def report(rows: list[dict]) -> None:
    fmt = bench_scale._fmt
    print("\n| model | parameters | data | gradient (ms) | compile (s wall / cpu) | kept | "
          "not kept | compiled | compiled / gradient | kept / gradient | "
          "step kept / compiled (ms) | memory MB kept / not / compiled | "
          "compiled vs eager |")  # fmt: skip
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        r = row["results"]
        g, k, n, c = (r[x] for x in ("gradient", "spectorch", "spectorch-nocache",
                                     "spectorch-compiled"))  # fmt: skip
        data = f"{row['samples']} {'windows' if row['family'] == 'gpt' else 'samples'}"
        print(
            f"| {row['family']} ({row['model']}) | {row['parameters']:,} | {data} | "
            f"{fmt(g['product_s'], 'ms')} | {row['compile']['wall_s']:.0f} / "
            f"{row['compile']['cpu_s']:.1f} | {fmt(k['product_s'], 'ms')} | "
            f"{fmt(n['product_s'], 'ms')} | {fmt(c['product_s'], 'ms')} | "
            f"{fmt(c['product_s'] / g['product_s'])} | {fmt(k['product_s'] / g['product_s'])} | "
            f"{fmt(k.get('step_s'), 'ms')} / {fmt(c.get('step_s'), 'ms')} | "
            f"{fmt(k.get('product_mb'), 'MB')} / {fmt(n.get('product_mb'), 'MB')} / "
            f"{fmt(c.get('product_mb'), 'MB')} | {row['error']:.1e} |"
        )
    print(
        "\nPeers: their product over spectorch's compiled one (above 1: compiled is "
        "faster), and over spectorch's kept one for PyHessian's kept graph\n"
    )
    print("| model | parameters | not kept (eager) | " + " | ".join(bench_scale.PEERS)
          + " | pyhessian / kept |")  # fmt: skip
    print("|---|---:|---:|" + "---:|" * (len(bench_scale.PEERS) + 1))
    for row in rows:
        r = row["results"]
        c = r["spectorch-compiled"]["product_s"]
        cells = [fmt(r["spectorch-nocache"]["product_s"] / c)]
        cells += [fmt(r[p]["product_s"] / c) if p in r else "–" for p in bench_scale.PEERS]
        pk = r.get("pyhessian")
        cells.append(fmt(pk["product_s"] / r["spectorch"]["product_s"]) if pk else "–")
        print(f"| {row['family']} | {row['parameters']:,} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
