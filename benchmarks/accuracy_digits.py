"""SLQ accuracy against the exact Hessian spectrum: spectorch, curvlinops, PyHessian.

The digits MLP of the tour (1,960 parameters, float32 network as the peers run it)
has a Hessian small enough to diagonalise exactly in float64. Each library runs
stochastic Lanczos quadrature with the same number of steps and draws on the same
batches; reported are the Wasserstein-1 distance between the estimated and exact
spectral CDFs (as a share of the spectral range), the relative error of the largest
eigenvalue, and of the trace (``n · Σ w θ`` averaged over draws for the peers; the
Krylov-deflated estimator for spectorch, with plain Hutchinson alongside).

    python benchmarks/accuracy_digits.py --steps 90 --draws 10
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from scipy.stats import wasserstein_distance
from torch import nn

from spectorch.curvature import HessianOperator
from spectorch.data import Batches, load_digits
from spectorch.density import spectral_density
from spectorch.experiments.digits import train_digits_mlp


def _scores(nodes: list[np.ndarray], weights: list[np.ndarray], exact: np.ndarray) -> dict:
    x = np.concatenate(nodes)
    w = np.concatenate(weights) / len(nodes)
    n = exact.size
    trace = float(np.mean([n * np.sum(wi * xi) for xi, wi in zip(nodes, weights, strict=True)]))
    return {
        "w1_over_range": wasserstein_distance(x, exact, u_weights=w) / (exact[-1] - exact[0]),
        "top_rel_error": abs(x.max() - exact[-1]) / abs(exact[-1]),
        "trace_rel_error": abs(trace - exact.sum()) / abs(exact.sum()),
        "nodes_above_top": int(np.sum(x > exact[-1] * (1 + 1e-6))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=90)
    parser.add_argument("--draws", type=int, default=10)
    args = parser.parse_args()

    model, _ = train_digits_mlp(dtype=torch.float32)
    X, y = load_digits(split="train", dtype=torch.float32)
    data = list(Batches(X, y, 512))
    loss = nn.CrossEntropyLoss()
    op = HessianOperator(model, loss, data)
    exact = torch.linalg.eigvalsh(op.to_dense()).numpy()
    print(f"digits MLP, {op.shape[0]} parameters, {args.draws} draws x {args.steps} steps")
    rows = {}

    dens = spectral_density(op, steps=args.steps, draws=args.draws, seed=0, progress=False)
    rows["spectorch"] = _scores(dens.nodes, dens.weights, exact)
    rows["spectorch"]["trace_rel_error"] = abs(dens.trace().value - exact.sum()) / abs(exact.sum())
    rows["spectorch (Hutchinson)"] = _scores(dens.nodes, dens.weights, exact)

    try:
        from curvlinops import HessianLinearOperator
        from curvlinops.papyan2020traces.spectrum import fast_lanczos
    except ImportError:
        print("curvlinops is not installed: skipped")
    else:
        H = HessianLinearOperator(model, loss, list(model.parameters()), data)
        nodes, weights = [], []
        torch.manual_seed(0)
        for _ in range(args.draws):
            evals, evecs = fast_lanczos(H, args.steps)
            nodes.append(evals.double().numpy())
            weights.append((evecs[0] ** 2).double().numpy())
        rows["curvlinops"] = _scores(nodes, weights, exact)

    try:
        from pyhessian import hessian as pyhessian_hessian
    except ImportError:
        print("PyHessian is not installed: skipped")
    else:
        torch.eig = _torch_eig_stand_in  # torch.eig exists only to raise since 2.0
        comp = pyhessian_hessian(model, loss, dataloader=data, cuda=False)
        torch.manual_seed(0)
        eig, wts = comp.density(iter=args.steps, n_v=args.draws)
        rows["pyhessian"] = _scores(
            [np.asarray(e, dtype=np.float64) for e in eig],
            [np.asarray(w, dtype=np.float64) for w in wts],
            exact,
        )

    print(
        f"\n{'library':24s} {'W1/range':>10s} {'top rel err':>12s} {'trace rel err':>14s} "
        f"{'nodes > λmax':>13s}"
    )
    for name, r in rows.items():
        print(
            f"{name:24s} {r['w1_over_range']:10.2e} {r['top_rel_error']:12.2e} "
            f"{r['trace_rel_error']:14.2e} {r['nodes_above_top']:13d}"
        )


def _torch_eig_stand_in(T: torch.Tensor, eigenvectors: bool = False):
    w, V = torch.linalg.eigh(T)
    return torch.stack([w, torch.zeros_like(w)], dim=1), V


if __name__ == "__main__":
    main()
