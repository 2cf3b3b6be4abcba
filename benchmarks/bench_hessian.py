"""Hessian-vector products and Lanczos steps: spectorch against curvlinops, PyHessian
and hessian-eigenthings.

All run side by side in one process on the same model (a CIFAR ResNet, float32
network, eval mode), the same batches and the same start vector; each is timed after
a warm-up, in CPU time (``time.process_time``) on ``--threads`` threads (1), so a
loaded machine does not distort the ratios. Reported: the time of one full-data HVP
(median of interleaved rounds), of one Lanczos step (a run of ``--steps`` steps
divided by ``--steps``) and the peak memory of each phase, with the peers' figures as
ratios to spectorch's. spectorch runs with its
defaults (reverse-over-reverse HVPs, gradient graphs kept while they fit) and, for
comparison, without the graph cache (``spectorch-nocache``) or with forward-over-reverse
products (``spectorch-forward``).

    python benchmarks/bench_hessian.py --images 512 --steps 90

Peers are skipped when not installed (``pip install 'spectorch[bench]'``). PyHessian's
``density()`` calls ``torch.eig``, which PyTorch removed in 2.0; the benchmark
installs a stand-in built on ``torch.linalg.eigh`` (its tridiagonal is symmetric) so
that its Lanczos loop can run unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from spectorch.curvature import HessianOperator
from spectorch.linalg import lanczos
from spectorch.nn import cifar_resnet


class PeakMemory:
    """Peak memory of a block: CUDA's allocator peak, or the process's resident set
    sampled every 2 ms on the CPU (minus the resident set at the start)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak = 0

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = _rss()
            self._stop = threading.Event()
            self._max = self.base
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._max = max(self._max, _rss())
            time.sleep(0.002)

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self._max, _rss()) - self.base


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def _split(flat: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    return [
        p.reshape(q.shape)
        for p, q in zip(flat.split([q.numel() for q in params]), params, strict=True)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, default=20, help="ResNet depth 6n+2 (20)")
    parser.add_argument("--images", type=int, default=512, help="CIFAR-shaped images (512)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=90, help="Lanczos steps (90)")
    parser.add_argument("--repeats", type=int, default=5, help="timed HVP rounds (5)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1)")
    parser.add_argument(
        "--peers",
        default="spectorch,spectorch-nocache,curvlinops,pyhessian,hessian-eigenthings",
        help="spectorch (defaults), spectorch-nocache (cache_graphs=False), "
        "spectorch-forward (hvp='forward'), curvlinops, pyhessian, hessian-eigenthings",
    )
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory pass")
    parser.add_argument("--memory-pass", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    peers = args.peers.split(",")
    clock = time.perf_counter if device.type == "cuda" else time.process_time

    torch.manual_seed(0)
    model = cifar_resnet(args.depth).to(device).eval()
    params = [p for p in model.parameters() if p.requires_grad]
    dim = sum(p.numel() for p in params)
    g = torch.Generator().manual_seed(0)
    X = torch.randn(args.images, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (args.images,), generator=g)
    data = [
        (X[i : i + args.batch_size].to(device), y[i : i + args.batch_size].to(device))
        for i in range(0, args.images, args.batch_size)
    ]
    loss = nn.CrossEntropyLoss()
    v64 = torch.randn(dim, generator=g, dtype=torch.float64).to(device)
    v64 /= v64.norm()
    v32 = v64.float()
    if not args.memory_pass:
        print(
            f"ResNet-{args.depth}: {dim:,} parameters, {args.images} images in batches of "
            f"{args.batch_size}, {device}, {torch.get_num_threads()} thread(s), "
            f"{'wall' if device.type == 'cuda' else 'CPU'} time, "
            f"torch {torch.__version__}"
        )

    libs: dict[str, dict[str, Callable[[], Any]]] = {}
    for name in peers:
        if name in ("spectorch", "spectorch-forward", "spectorch-nocache"):
            mode = "forward" if name.endswith("forward") else "reverse"
            cache = False if name.endswith("nocache") else "auto"
            op = HessianOperator(model, loss, data, hvp=mode, cache_graphs=cache)
            libs[name] = {
                "hvp": lambda op=op: op.matvec(v64),
                "lanczos": lambda op=op: lanczos(op, args.steps, seed=0),
            }
        elif name == "curvlinops":
            try:
                from curvlinops import HessianLinearOperator
                from curvlinops.papyan2020traces.spectrum import lanczos_approximate_spectrum
            except ImportError:
                print("curvlinops is not installed: skipped")
                continue
            H = HessianLinearOperator(model, loss, params, data, check_deterministic=False)
            libs[name] = {
                "hvp": lambda H=H: H @ v32,
                # boundaries given, so no extra ARPACK products are spent on them
                "lanczos": lambda H=H, f=lanczos_approximate_spectrum: f(
                    H, args.steps, boundaries=(-1.0, 1.0)
                ),
            }
        elif name == "hessian-eigenthings":
            try:
                import hessian_eigenthings as he
            except ImportError:
                print("hessian-eigenthings is not installed: skipped")
                continue
            # it averages the batches' losses with equal weights: equal batches here
            op = he.HessianOperator(model, data, lambda m, b: loss(m(b[0]), b[1]))
            v0 = torch.randn(dim, generator=torch.Generator().manual_seed(1)).to(device)
            libs[name] = {
                "hvp": lambda op=op: op.matvec(v32),
                "lanczos": lambda op=op, v0=v0: he.lanczos_tridiagonal(
                    op, v0, args.steps, reorthogonalize=True
                ),
            }
        elif name == "pyhessian":
            try:
                from pyhessian import hessian as pyhessian_hessian
            except ImportError:
                print("PyHessian is not installed: skipped")
                continue
            torch.eig = _torch_eig_stand_in  # torch.eig exists only to raise since 2.0
            comp = pyhessian_hessian(model, loss, dataloader=data, cuda=device.type == "cuda")
            vl = _split(v32, params)
            libs[name] = {
                "hvp": lambda c=comp, vl=vl: _flat(c.dataloader_hv_product(vl)[1]),
                "lanczos": lambda c=comp: c.density(iter=args.steps, n_v=1),
            }
        else:
            raise SystemExit(f"unknown peer {name!r}")

    if args.memory_pass:
        print(json.dumps(_memory(libs, device)))
        return
    results: dict[str, dict[str, float]] = {name: {} for name in libs}
    # HVPs: one warm-up each, then rounds that time every library once, so that a
    # slow spell of a noisy machine hits all of them alike.
    outputs = {name: lib["hvp"]() for name, lib in libs.items()}
    times: dict[str, list[float]] = {name: [] for name in libs}
    for _ in range(args.repeats):
        for name, lib in libs.items():
            _sync(device)
            t0 = clock()
            lib["hvp"]()
            _sync(device)
            times[name].append(clock() - t0)
    reference = outputs.get("spectorch")
    for name, lib in libs.items():
        results[name]["hvp_s"] = statistics.median(times[name])
        results[name]["hvp_rel_diff"] = _rel(outputs[name], reference)
        _sync(device)
        t0 = clock()
        lib["lanczos"]()
        _sync(device)
        results[name]["step_s"] = (clock() - t0) / args.steps
    if args.no_memory:
        memory = {name: {"hvp_mem": float("nan"), "step_mem": float("nan")} for name in libs}
    elif device.type == "cuda":
        memory = _memory(libs, device)
    else:
        # On the CPU the peak is read off the resident set, in a second run of this
        # script with a fixed glibc mmap threshold: every large tensor then goes back
        # to the OS when freed, so each phase starts from the same baseline. (That
        # setting slows allocation down, so the timings above are taken without it.)
        env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
        cmd = [sys.executable, *sys.argv, "--memory-pass"]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        memory = json.loads(out.stdout.strip().splitlines()[-1])
    for name in libs:
        results[name].update(memory[name])

    _report(results, args)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"args": vars(args), "dim": dim, "results": results}, fh, indent=2)


def _memory(libs: dict[str, dict[str, Callable]], device: torch.device) -> dict[str, dict]:
    """Peak memory of one HVP and of one Lanczos run per library (after a warm-up)."""
    memory = {}
    for name, lib in libs.items():
        lib["hvp"]()
        with PeakMemory(device) as hvp_mem:
            lib["hvp"]()
        with PeakMemory(device) as step_mem:
            lib["lanczos"]()
        memory[name] = {"hvp_mem": hvp_mem.peak, "step_mem": step_mem.peak}
    return memory


def _torch_eig_stand_in(
    T: torch.Tensor, eigenvectors: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    w, V = torch.linalg.eigh(T)
    return torch.stack([w, torch.zeros_like(w)], dim=1), V


def _rel(a: torch.Tensor, b: torch.Tensor | None) -> float:
    if b is None:
        return float("nan")
    a = a.double().reshape(-1).to(b.device)
    b = b.double().reshape(-1)
    return float((a - b).norm() / b.norm())


def _report(results: dict[str, dict[str, float]], args: argparse.Namespace) -> None:
    base = results.get("spectorch")
    print(
        f"\n{'library':20s} {'HVP (s)':>9s} {'step (s)':>9s} {'step/HVP':>9s} "
        f"{'HVP mem (MB)':>13s} {'step mem (MB)':>14s} {'HVP vs ours':>12s}"
    )
    for name, r in results.items():
        diff = r.get("hvp_rel_diff")
        print(
            f"{name:20s} {r['hvp_s']:9.3f} {r['step_s']:9.3f} {r['step_s'] / r['hvp_s']:9.2f} "
            f"{r['hvp_mem'] / 2**20:13.0f} {r['step_mem'] / 2**20:14.0f} "
            f"{'' if diff is None else f'{diff:.1e}':>12s}"
        )
    if base:
        print("\nratios, peer / spectorch (above 1: spectorch is faster or leaner)")
        for name, r in results.items():
            if name == "spectorch":
                continue
            print(
                f"  {name:20s} HVP time {r['hvp_s'] / base['hvp_s']:.2f}x   Lanczos step "
                f"{r['step_s'] / base['step_s']:.2f}x   HVP memory "
                f"{r['hvp_mem'] / max(base['hvp_mem'], 1):.2f}x   step memory "
                f"{r['step_mem'] / max(base['step_mem'], 1):.2f}x"
            )


if __name__ == "__main__":
    main()
