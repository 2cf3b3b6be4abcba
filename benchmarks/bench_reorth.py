"""Reorthogonalisation: cost and accuracy of Lanczos's modes on a spectrum with an
exact answer.

    python benchmarks/bench_reorth.py --n 1000000 --steps 90

The operator is diagonal, ``n`` eigenvalues shaped like a network Hessian's: a bulk
``N(0.02, 0.05²)`` and six outliers (3, 8, 15, 40, 90, 250), which Lanczos finds within
a few steps and then loses orthogonality to fast. Its product is one element-wise
multiplication, so the time per step is the Lanczos work itself. For each mode
(``reorth`` full or partial, basis float64 or float32) and spectorch 0.x's recurrence
before issue 18 (two Gram-Schmidt passes every step, kept here verbatim for the
comparison), on the same start vector:

* CPU time per step (``time.process_time``, one thread, modes interleaved over
  ``--rounds`` rounds, medians);
* basis rows read by the reorthogonalisation (each row is read twice per pass);
* the largest relative error of the six outliers' Ritz values against the exact ones;
* the largest relative error of the quadrature's moments ``Σ w θ^p`` (p = 1, 2, 4, 8)
  against the exact ``vᵀ A^p v``;
* the loss of orthogonality ``max |QᵀQ − I|``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from spectorch.linalg import lanczos, random_start

OUTLIERS = (3.0, 8.0, 15.0, 40.0, 90.0, 250.0)


class Diagonal:
    def __init__(self, d: torch.Tensor) -> None:
        self.d = d
        self.shape = (d.numel(), d.numel())
        self.dtype = torch.float64

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.d * v


def two_pass_lanczos(op: Diagonal, steps: int, v: torch.Tensor) -> tuple:
    """The recurrence before issue 18: classical Gram-Schmidt twice at every step."""
    n = v.numel()
    Q = torch.zeros(steps, n, dtype=torch.float64)
    alphas, betas = torch.zeros(steps, dtype=torch.float64), torch.zeros(steps - 1, dtype=F64)
    q, q_prev = v / v.norm(), torch.zeros(n, dtype=torch.float64)
    Q[0] = q
    for j in range(steps):
        w = op.matvec(q)
        if not torch.isfinite(w).all():
            raise FloatingPointError
        alpha = (w * q).sum()
        w = w - alpha * q
        if j > 0:
            w = w - betas[j - 1] * q_prev
        for _ in range(2):
            w = w - Q[: j + 1].T @ (Q[: j + 1] @ w)
        alphas[j] = alpha
        if j == steps - 1:
            break
        beta = w.norm()
        betas[j] = beta
        q_prev, q = q, w / beta
        Q[j + 1] = q
    return alphas, betas, Q


F64 = torch.float64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--steps", type=int, default=90)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    bulk = torch.randn(args.n - len(OUTLIERS), generator=g, dtype=F64) * 0.05 + 0.02
    d = torch.cat([bulk, torch.tensor(OUTLIERS, dtype=F64)])
    op = Diagonal(d)
    v = random_start(args.n, generator=torch.Generator().manual_seed(1))
    exact_moments = np.array([float((v * v * d**p).sum()) for p in (1, 2, 4, 8)])
    modes = {
        "before (two passes)": lambda: two_pass_lanczos(op, args.steps, v),
        "full, float64": lambda: lanczos(op, args.steps, start=v),
        "partial, float64": lambda: lanczos(op, args.steps, start=v, reorth="partial"),
        "full, float32 basis": lambda: lanczos(op, args.steps, start=v, basis="float32"),
        "partial, float32 basis": lambda: lanczos(
            op, args.steps, start=v, reorth="partial", basis="float32"
        ),
    }
    times: dict[str, list[float]] = {k: [] for k in modes}
    out: dict[str, object] = {}
    for _ in range(args.rounds):
        for name, run in modes.items():
            t0 = time.process_time()
            out[name] = run()
            times[name].append((time.process_time() - t0) / args.steps)
    t = np.array(OUTLIERS)
    print(f"n = {args.n:,}, {args.steps} steps, torch {torch.__version__}, one thread\n")
    print("| mode | CPU ms / step | basis rows read | outliers' max rel. error | "
          "moments' max rel. error | max abs(QᵀQ − I) |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|")
    for name, res in out.items():
        if isinstance(res, tuple):
            alphas, betas, Q = res
            rows = 2 * sum(range(1, args.steps + 1))
        else:
            alphas, betas, Q = res.alphas, res.betas, res.basis
            rows = res.reorth_rows
        T = torch.diag(alphas) + torch.diag(betas, 1) + torch.diag(betas, -1)
        theta, vecs = torch.linalg.eigh(T)
        ritz = theta.numpy()[-len(OUTLIERS) :]
        weights = (vecs[0] ** 2).numpy()
        moments = np.array([np.sum(weights * theta.numpy() ** p) for p in (1, 2, 4, 8)])
        Q = Q.to(F64)
        loss = float((Q @ Q.T - torch.eye(Q.shape[0], dtype=F64)).abs().max())
        print(
            f"| {name} | {statistics.median(times[name]) * 1e3:.1f} | {rows:,} | "
            f"{np.max(np.abs(ritz / t - 1)):.1e} | "
            f"{np.max(np.abs(moments / exact_moments - 1)):.1e} | {loss:.1e} |"
        )


if __name__ == "__main__":
    main()
