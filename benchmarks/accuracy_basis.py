"""Does a float32 Lanczos basis lose anything on a float32 network? Measured.

The networks of ``bench_scale.py`` (MLP, CNN, GPT; float32, untrained, the same data)
at the sizes given. The reference is the same network in float64 (its float32
parameters and data, exactly, in float64 arithmetic), Lanczos in float64 with full
reorthogonalisation: its quadrature moments ``vᵀHᵖv`` (p < 2·steps) are exact to
float64 round-off, and its top Ritz values are those of the exact Hessian's Krylov
space. The float32 network is then run from the same start vector with each basis
(``"memory"``: float64 rows; ``"float32"``) and each reorthogonalisation. Reported are
the relative errors against the reference: of the top three Ritz values, of the
moments p = 1, 2, 4, 8, and the Wasserstein-1 distance between the two quadratures'
measures as a share of the reference's spectral range; and, for scale, the same errors
of the float32 network with a float64 basis, which is the floor a float32 network
sets. A float32 basis loses nothing measurable where its errors stay at that floor.
Each run also reports its loss of orthogonality ``max |QQᵀ − I|`` (partial
reorthogonalisation keeps it near ``√eps`` of float32, 3.5e-4; full near round-off) and
the basis rows its reorthogonalisation read.

    python benchmarks/accuracy_basis.py --sizes 1e4,1e5,1e6 --steps 90
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch
from bench_scale import FAMILIES, SIZES, build, listed
from scipy.stats import wasserstein_distance

from spectorch.curvature import HessianOperator
from spectorch.linalg import lanczos

MODES = (("memory", "full"), ("float32", "full"), ("memory", "partial"), ("float32", "partial"))
MOMENTS = (1, 2, 4, 8)


def _summary(res, orthogonality: bool = False) -> dict:
    nodes, weights = res.quadrature()
    loss = float("nan")
    if orthogonality:
        q = res.basis.double()
        gram = q @ q.T
        gram.diagonal().sub_(1.0)
        loss = float(gram.abs().max())
    return {
        "ritz": np.sort(nodes)[::-1][:3],
        "moments": np.array([np.sum(weights * nodes**p) for p in MOMENTS]),
        "nodes": nodes,
        "weights": weights,
        "passes": res.reorth_passes,
        "rows": res.reorth_rows,
        "orthogonality": loss,
    }


def _errors(got: dict, ref: dict) -> dict:
    span = float(ref["nodes"].max() - ref["nodes"].min())
    w1 = wasserstein_distance(got["nodes"], ref["nodes"], got["weights"], ref["weights"])
    return {
        "ritz": float(np.max(np.abs(got["ritz"] - ref["ritz"]) / np.abs(ref["ritz"]))),
        "moments": float(np.max(np.abs(got["moments"] - ref["moments"]) / np.abs(ref["moments"]))),
        "w1": w1 / span,
        "passes": got["passes"],
        "rows": got["rows"],
        "orthogonality": got["orthogonality"],
    }


def measure(family: str, size: str, steps: int, seeds: list[int], modes: tuple = MODES) -> dict:
    torch.set_num_threads(1)
    model, _, batch, loss, desc = build(family, size)
    model64 = copy.deepcopy(model).double()
    if family == "gpt":
        batch64 = batch
    else:
        batch64 = tuple(b.double() if b.is_floating_point() else b for b in batch)
    op64 = HessianOperator(model64, loss, [batch64])
    op32 = HessianOperator(model, loss, [batch])
    rows: dict[str, list[dict]] = {f"{b}/{r}": [] for b, r in modes}
    for seed in seeds:
        ref = _summary(lanczos(op64, steps, seed=seed))
        for basis, reorth in modes:
            res = lanczos(op32, steps, seed=seed, basis=basis, reorth=reorth)
            got = _summary(res, orthogonality=True)
            rows[f"{basis}/{reorth}"].append(_errors(got, ref))
    return {**desc, "steps": steps, "seeds": seeds, "errors": rows}


def report(rows: list[dict]) -> None:
    print(
        "| model | parameters | basis / reorth | top-3 Ritz rel. error | moments rel. error "
        "| W1 / range | max abs(QQᵀ − I) | rows read |"
    )
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for row in rows:
        for mode, errs in row["errors"].items():
            keys = ("ritz", "moments", "w1", "orthogonality")
            worst = {k: max(e[k] for e in errs) for k in keys}
            read = int(np.median([e["rows"] for e in errs]))
            print(
                f"| {row['family']} ({row['model']}) | {row['parameters']:,} | {mode} "
                f"| {worst['ritz']:.1e} | {worst['moments']:.1e} | {worst['w1']:.1e} "
                f"| {worst['orthogonality']:.1e} | {read:,} |"
            )
    print(f"\nworst over {len(rows[0]['seeds'])} start vectors; rows read: median")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1e4,1e5")
    parser.add_argument("--families", default="mlp,cnn,gpt")
    parser.add_argument("--steps", type=int, default=90)
    parser.add_argument("--seeds", type=int, default=3, help="start vectors per row")
    parser.add_argument(
        "--modes",
        default=",".join(f"{b}/{r}" for b, r in MODES),
        help="basis/reorth pairs, comma-separated",
    )
    parser.add_argument("--out", type=Path, default=None, help="results (JSON lines)")
    args = parser.parse_args()
    sizes = listed(parser, "--sizes", args.sizes, SIZES)
    families = listed(parser, "--families", args.families, FAMILIES)
    known = {f"{b}/{r}": (b, r) for b, r in MODES}
    modes = tuple(known[x] for x in listed(parser, "--modes", args.modes, known))
    if args.steps < 1 or args.seeds < 1:
        parser.error("--steps and --seeds must be at least 1")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for size in sizes:
        for family in families:
            row = measure(family, size, args.steps, list(range(args.seeds)), modes)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
            if args.out is not None:
                with args.out.open("a") as f:
                    f.write(json.dumps(row) + "\n")
    report(rows)


if __name__ == "__main__":
    main()
