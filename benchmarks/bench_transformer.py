"""Hessian products, Lanczos steps, peak memory and top-eigenvalue accuracy on a GPT
trained here: spectorch against hessian-eigenthings, PyHessian and curvlinops.

    python benchmarks/bench_transformer.py --out benchmarks/out/transformer

The model is the GPT of ``spectorch lm train`` (4 layers, width 128, 0.8M parameters,
byte-level; float32), trained for ``--train-steps`` steps on the standard library's
source (the run is kept in ``--out`` and reused). The loss is the mean next-byte
cross-entropy of its first ``--sequences`` training windows of 128 bytes, one batch,
the same for every library (PyHessian and curvlinops see the model through a wrapper
that flattens the shifted logits, as their ``(inputs, targets)`` interface needs).

Timings are CPU time (``time.process_time``) on one thread, each library timed once
per round with the rounds interleaved, medians reported, so a loaded machine slows
all alike. Reported per library: one full-data HVP, one Lanczos step (a run of
``--lanczos-steps`` steps with full reorthogonalisation where the library has it,
divided by the steps), the peak memory of each (resident set above the start, in a
second run of this script with a fixed glibc mmap threshold), and the top eigenvalue
each library's own top-eigenvalue routine returns, against a float64 reference
(spectorch's Lanczos on the float64 copy of the model, 80 steps).

Peers are skipped when not installed: ``pip install --pre hessian-eigenthings
pyhessian curvlinops-for-pytorch``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from bench_hessian import PeakMemory, _torch_eig_stand_in
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from spectorch.curvature import CausalLM, HessianOperator
from spectorch.experiments import lm
from spectorch.linalg import lanczos

F64 = torch.float64


class Flat(nn.Module):
    """The shifted logits as ``(tokens, vocabulary)`` rows: a causal LM seen through an
    ``(inputs, targets)`` interface (targets ``ids[:, 1:].reshape(-1)``)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        logits = self.model(ids)
        return logits[:, :-1].reshape(-1, logits.shape[-1])


def _cpu() -> float:
    return time.process_time()


def _top(alphas: torch.Tensor, betas: torch.Tensor) -> float:
    T = torch.diag(alphas.double()) + torch.diag(betas.double(), 1) + torch.diag(betas.double(), -1)
    return float(torch.linalg.eigvalsh(T)[-1])


def build(args: argparse.Namespace) -> tuple[nn.Module, torch.Tensor, int]:
    config = lm.LMConfig(steps=args.train_steps)
    run = Path(args.out) / "run"
    if not (run / lm.CHECKPOINT.format(step=args.train_steps)).exists():
        lm.run(run, config, checkpoint_every=args.train_steps, device="cpu", progress=True)
    found = lm.density_problem(run, sequences=args.sequences, batch_size=args.sequences)
    model = found["model"].float().eval()
    return model, found["data"][0], sum(p.numel() for p in model.parameters())


def libraries(
    model: nn.Module, ids: torch.Tensor, args: argparse.Namespace, catch: bool = False
) -> dict:
    """``{name: {"hvp", "lanczos", "top"}}``: callables on the same model and data
    (with ``catch``, a library whose construction fails is the error's text)."""
    if catch:
        out: dict[str, Any] = {}
        for name in args.peers.split(","):
            try:
                out.update(
                    libraries(model, ids, argparse.Namespace(**{**vars(args), "peers": name}))
                )
            except RuntimeError as exc:
                out[name] = f"fails: {str(exc).splitlines()[0][:100]}"
        return out
    params = [p for p in model.parameters() if p.requires_grad]
    dim = sum(p.numel() for p in params)
    g = torch.Generator().manual_seed(0)
    v64 = torch.randn(dim, generator=g, dtype=F64)
    v64 /= v64.norm()
    v32 = v64.float()
    flat, targets = Flat(model), ids[:, 1:].reshape(-1)
    ce = nn.CrossEntropyLoss()
    steps = args.lanczos_steps
    libs: dict[str, dict[str, Any]] = {}
    for name in args.peers.split(","):
        if name in ("spectorch", "spectorch-nocache"):
            cache = False if name.endswith("nocache") else "auto"
            op = HessianOperator(model, CausalLM(), [ids], cache_graphs=cache)
            libs[name] = {
                "hvp": lambda op=op: op.matvec(v64),
                "lanczos": lambda op=op: lanczos(op, steps, seed=0),
                "top": lambda op=op: (_top(*_ab(lanczos(op, steps, seed=0))), steps),
            }
        elif name == "hessian-eigenthings":
            try:
                import hessian_eigenthings as he
            except ImportError:
                print("hessian-eigenthings is not installed: skipped")
                continue

            def he_loss(m: nn.Module, batch: torch.Tensor) -> torch.Tensor:
                logits = m(batch)
                return ce(logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))

            op = he.HessianOperator(model, [ids], he_loss)
            v0 = torch.randn(dim, generator=torch.Generator().manual_seed(1))

            def he_top(op=op) -> tuple[float, int]:
                res = he.lanczos(op, k=1, max_iter=steps, seed=0, which="LA")
                return float(res.eigenvalues[0]), steps

            libs[name] = {
                "hvp": lambda op=op: op.matvec(v32),
                "lanczos": lambda op=op, v0=v0: he.lanczos_tridiagonal(
                    op, v0, steps, reorthogonalize=True
                ),
                "top": he_top,
            }
        elif name == "pyhessian":
            try:
                from pyhessian import hessian as pyhessian_hessian
                from pyhessian.utils import hessian_vector_product
            except ImportError:
                print("PyHessian is not installed: skipped")
                continue
            torch.eig = _torch_eig_stand_in  # torch.eig exists only to raise since 2.0
            # PyHessian differentiates its gradient in .grad (loss.backward with
            # create_graph): a .grad left there by an earlier graph would join it
            model.zero_grad(set_to_none=True)
            comp = pyhessian_hessian(flat, ce, data=(ids, targets), cuda=False)
            vl = [x.reshape(p.shape) for x, p in zip(v32.split([p.numel() for p in params]),
                                                     params, strict=True)]  # fmt: skip

            libs[name] = {
                "hvp": lambda c=comp, vl=vl: hessian_vector_product(c.gradsH, c.params, vl),
                "lanczos": lambda c=comp: c.density(iter=steps, n_v=1),
                # its power iteration, stopped at rel. change 1e-3 or maxIter products
                "top": lambda c=comp: _pyhessian_top(c, steps),
            }
        elif name == "curvlinops":
            try:
                from curvlinops import HessianLinearOperator
                from curvlinops.papyan2020traces.spectrum import lanczos_approximate_spectrum
                from scipy.sparse.linalg import LinearOperator, eigsh
            except ImportError:
                print("curvlinops is not installed: skipped")
                continue
            H = HessianLinearOperator(flat, ce, params, [(ids, targets)], check_deterministic=False)

            def cl_top(H=H) -> tuple[float, int]:
                A, count = H.to_scipy(), [0]

                def mv(vec: Any, A: Any = A, count: list = count) -> Any:
                    count[0] += 1
                    return A.matvec(vec)

                L = LinearOperator(A.shape, matvec=mv, dtype=A.dtype)
                # ARPACK to scipy's defaults but a relative tolerance of 1e-5
                vals = eigsh(L, k=1, which="LA", tol=1e-5, return_eigenvectors=False)
                return float(vals[0]), count[0]

            libs[name] = {
                "hvp": lambda H=H: H @ v32,
                "lanczos": lambda H=H, f=lanczos_approximate_spectrum: f(
                    H, steps, boundaries=(-1.0, 1.0)
                ),
                "top": cl_top,
            }
        else:
            raise SystemExit(f"unknown library {name!r}")
    return libs


def _pyhessian_top(comp: Any, steps: int) -> tuple[float, int]:
    """PyHessian's power iteration (stopped at a relative change of 1e-3, or after
    ``steps`` products), with its products counted."""
    ph = sys.modules["pyhessian.hessian"]  # the module (the package exports the class)

    count, product = [0], ph.hessian_vector_product

    def counted(*a: Any) -> Any:
        count[0] += 1
        return product(*a)

    ph.hessian_vector_product = counted
    try:
        value = float(comp.eigenvalues(maxIter=steps, top_n=1)[0][0])
    finally:
        ph.hessian_vector_product = product
    return value, count[0]


def _ab(res: Any) -> tuple[torch.Tensor, torch.Tensor]:
    return res.alphas, res.betas


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/out/transformer")
    parser.add_argument("--train-steps", type=int, default=1000)
    parser.add_argument("--sequences", type=int, default=8, help="windows of 128 bytes (8)")
    parser.add_argument("--lanczos-steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved HVP rounds (5)")
    parser.add_argument(
        "--peers", default="spectorch,spectorch-nocache,hessian-eigenthings,pyhessian,curvlinops"
    )
    parser.add_argument("--memory-pass", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, ids, dim = build(args)
    # The CPU's default attention kernel (flash) has no second derivative: spectorch
    # switches to the math kernel by itself; the peers fail (recorded here) and are
    # then measured, like spectorch, inside sdpa_kernel(MATH).
    status = {} if args.memory_pass else out_of_the_box(model, ids, args)
    with sdpa_kernel(SDPBackend.MATH):
        measure(model, ids, dim, args, status)


def out_of_the_box(model: nn.Module, ids: torch.Tensor, args: argparse.Namespace) -> dict:
    """Whether each library's product runs on the model as it is (default kernels)."""
    status = {}
    for name, lib in libraries(model, ids, args, catch=True).items():
        if isinstance(lib, str):
            status[name] = lib
            continue
        try:
            lib["hvp"]()
            status[name] = "runs"
        except RuntimeError as exc:
            status[name] = f"fails: {str(exc).splitlines()[0][:100]}"
    for name, text in status.items():
        print(f"out of the box, {name}: {text}")
    return status


def measure(
    model: nn.Module, ids: torch.Tensor, dim: int, args: argparse.Namespace, status: dict
) -> None:
    libs = libraries(model, ids, args)
    if args.memory_pass:
        memory = {}
        for name, lib in libs.items():
            lib["hvp"]()
            with PeakMemory(torch.device("cpu")) as hvp_mem:
                lib["hvp"]()
            with PeakMemory(torch.device("cpu")) as step_mem:
                lib["lanczos"]()
            memory[name] = {"hvp_mem": hvp_mem.peak, "step_mem": step_mem.peak}
        print(json.dumps(memory))
        return
    print(
        f"GPT: {dim:,} parameters, {ids.shape[0]} x {ids.shape[1]} bytes, float32, one "
        f"thread, torch {torch.__version__}"
    )
    # the float64 reference of the top eigenvalue
    ref_model = copy.deepcopy(model).to(F64)
    reference = lanczos(HessianOperator(ref_model, CausalLM(), [ids]), 80, seed=0)
    top_ref = _top(reference.alphas, reference.betas)
    outputs = {name: lib["hvp"]() for name, lib in libs.items()}  # warm-up
    hvp = {name: [] for name in libs}
    step = {name: [] for name in libs}
    for r in range(args.rounds):
        for name, lib in libs.items():
            t0 = _cpu()
            lib["hvp"]()
            hvp[name].append(_cpu() - t0)
        if r < 3:  # Lanczos runs are long: three interleaved rounds
            for name, lib in libs.items():
                t0 = _cpu()
                lib["lanczos"]()
                step[name].append((_cpu() - t0) / args.lanczos_steps)
    results: dict[str, dict[str, Any]] = {}
    ours = outputs.get("spectorch")
    for name, lib in libs.items():
        out = outputs[name]
        flat = torch.cat([t.reshape(-1) for t in out]) if isinstance(out, (list, tuple)) else out
        t0 = _cpu()
        top, top_products = lib["top"]()
        results[name] = {
            "hvp_s": statistics.median(hvp[name]),
            "step_s": statistics.median(step[name]),
            "hvp_rel_diff": float((flat.double() - ours).norm() / ours.norm())
            if ours is not None
            else float("nan"),
            "top": top,
            "top_rel_error": abs(top - top_ref) / abs(top_ref),
            "top_s": _cpu() - t0,
            "top_products": top_products,
        }
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    cmd = [sys.executable, *sys.argv, "--memory-pass"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    memory = json.loads(done.stdout.strip().splitlines()[-1])
    for name in results:
        results[name].update(memory[name])
    report(results, top_ref)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    with open(Path(args.out) / "results.json", "w") as fh:
        json.dump({"args": vars(args), "dim": dim, "top_reference": top_ref,
                   "out_of_the_box": status, "results": results}, fh, indent=2)  # fmt: skip


def report(results: dict[str, dict[str, Any]], top_ref: float) -> None:
    print(f"\nfloat64 reference top eigenvalue {top_ref:.6f}")
    print(
        f"{'library':20s} {'HVP (s)':>8s} {'step (s)':>9s} {'step/HVP':>8s} {'HVP MB':>7s} "
        f"{'step MB':>8s} {'top eig':>10s} {'rel err':>8s} {'top (s)':>8s} {'products':>8s} "
        f"{'HVP vs ours':>11s}"
    )
    for name, r in results.items():
        print(
            f"{name:20s} {r['hvp_s']:8.3f} {r['step_s']:9.3f} {r['step_s'] / r['hvp_s']:8.2f} "
            f"{r['hvp_mem'] / 2**20:7.0f} {r['step_mem'] / 2**20:8.0f} {r['top']:10.5f} "
            f"{r['top_rel_error']:8.1e} {r['top_s']:8.2f} {r['top_products']:8d} "
            f"{r['hvp_rel_diff']:11.1e}"
        )
    base = results.get("spectorch")
    if base:
        print("\nratios, peer / spectorch (above 1: spectorch is faster or leaner)")
        for name, r in results.items():
            if name != "spectorch":
                print(
                    f"  {name:20s} HVP {r['hvp_s'] / base['hvp_s']:.2f}x  step "
                    f"{r['step_s'] / base['step_s']:.2f}x  HVP memory "
                    f"{r['hvp_mem'] / max(base['hvp_mem'], 1):.2f}x  step memory "
                    f"{r['step_mem'] / max(base['step_mem'], 1):.2f}x"
                )


if __name__ == "__main__":
    main()
