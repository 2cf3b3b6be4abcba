"""Top-k Hessian eigenvalues: spectorch's thick-restart Lanczos against scipy's eigsh
(ARPACK) and PyHessian's ``eigenvalues(top_n=k)`` (power iteration with deflation).

    python benchmarks/bench_eigenpairs.py

The problem is a float64 tanh MLP (64-32-32-10, 3,466 parameters) trained briefly on
scikit-learn's digits, the cross-entropy Hessian on 1,000 digits; the exact answer is
``eigh`` of its dense Hessian. For each ``k`` and each method: Hessian-vector products
used, CPU time (``time.process_time``, one thread, the methods interleaved over
``--rounds`` rounds, medians) and the largest relative error of the ``k`` eigenvalues.
spectorch runs with its defaults (tol 1e-8, the look for repeated eigenvalues from
k = 2 on, measured residuals: ``k`` more products, counted) and with ``check=0,
verify=False`` (what eigsh does); eigsh with ``tol=1e-8`` and spectorch's basis size;
PyHessian with its defaults (``tol=1e-3``, ``maxIter=100``) and with ``tol=1e-8,
maxIter=1000``. All use the same Hessian-vector product (spectorch's kept graph, one
second backward pass); PyHessian its own.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, eigsh
from torch import nn

from spectorch.curvature import HessianOperator
from spectorch.data import load_digits
from spectorch.linalg import top_eigenpairs


def problem() -> tuple[nn.Module, nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(),
                          nn.Linear(32, 10)).double()  # fmt: skip
    X, y = load_digits(split="train", dtype=torch.float64)
    X, y = X[:1000], y[:1000]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss = nn.CrossEntropyLoss()
    for _ in range(100):
        opt.zero_grad()
        loss(model(X), y).backward()
        opt.step()
    return model.eval(), loss, X, y


def methods(model, loss, X, y, k: int) -> dict[str, Any]:
    op = HessianOperator(model, loss, [(X, y)])
    op.matvec(torch.zeros(op.shape[0], dtype=torch.float64))  # keep the graph
    n = op.shape[0]
    out: dict[str, Any] = {}

    def ours(**kw):
        pairs = top_eigenpairs(op, k, seed=0, **kw)
        return pairs.values.numpy(), pairs.products

    out["spectorch"] = lambda: ours()
    out["spectorch, check=0, no verify"] = lambda: ours(check=0, verify=False)

    def scipy_eigsh():
        count = [0]

        def mv(x):
            count[0] += 1
            return op.matvec(torch.from_numpy(np.ascontiguousarray(x).reshape(-1))).numpy()

        L = LinearOperator((n, n), matvec=mv, dtype=np.float64)
        ncv = min(n, max(2 * k + 1, k + 20))
        vals = eigsh(L, k=k, which="LA", tol=1e-8, ncv=ncv, v0=np.ones(n),
                     return_eigenvectors=False)  # fmt: skip
        return np.sort(vals)[::-1], count[0]

    out["scipy eigsh"] = scipy_eigsh
    try:
        import sys

        import pyhessian  # noqa: F401  (its package exports the class under the module's name)

        ph = sys.modules["pyhessian.hessian"]

        torch.eig = lambda *a, **kw: None  # PyHessian's import-time reference only
        c = ph.hessian(model, loss, data=(X, y), cuda=False)
        counted = [0]
        original = ph.hessian_vector_product

        def hvp(*a, **kw):
            counted[0] += 1
            return original(*a, **kw)

        ph.hessian_vector_product = hvp

        def pyh(**kw):
            counted[0] = 0
            torch.manual_seed(0)
            vals, _ = c.eigenvalues(top_n=k, **kw)
            return np.sort(np.asarray(vals))[::-1], counted[0]

        out["PyHessian (tol 1e-3)"] = lambda: pyh()
        out["PyHessian (tol 1e-8)"] = lambda: pyh(tol=1e-8, maxIter=1000)
    except ImportError:
        print("pyhessian is not installed: skipped")
    return out, op


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ks", default="1,5,10")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model, loss, X, y = problem()
    op = HessianOperator(model, loss, [(X, y)])
    exact = torch.linalg.eigvalsh(op.to_dense()).flip(0).numpy()
    n = op.shape[0]
    print(f"{n:,} parameters, torch {torch.__version__}, one thread\n")
    print("| k | method | products | CPU time | max rel. error |")
    print("|---:|---|---:|---:|---:|")
    for k in (int(x) for x in args.ks.split(",")):
        fns, _ = methods(model, loss, X, y, k)
        times: dict[str, list[float]] = {name: [] for name in fns}
        result: dict[str, tuple] = {}
        for r in range(args.rounds):
            for name in fns if r % 2 == 0 else list(fns)[::-1]:
                t0 = time.process_time()
                vals, products = fns[name]()
                times[name].append(time.process_time() - t0)
                result[name] = (vals, products)
        for name in fns:
            vals, products = result[name]
            err = float(np.max(np.abs(vals[:k] - exact[:k]) / np.abs(exact[0])))
            t = statistics.median(times[name])
            print(f"| {k} | {name} | {products} | {t:.2f} s | {err:.1e} |")


if __name__ == "__main__":
    main()
