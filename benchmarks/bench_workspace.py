"""SLQ draws and eigenpair runs one after another: a new basis each time against one
basis reused.

    python benchmarks/bench_workspace.py --sizes 1e6,1e7 --steps 30 --draws 3
    python benchmarks/bench_workspace.py --eigenpairs --sizes 1e5,1e6,1e7 --draws 5

``spectral_density`` runs its draws one after another (``probes_per_pass=1``) and
keeps their bases in one ``lanczos_block(workspace=)`` tensor. Before, every draw had
a new basis: glibc hands blocks of this size back to the kernel when they are freed,
so a new one is fresh memory, and the first write of every 4 KB page is a page
fault. Here the operator is diagonal with a kept output vector (its product is one
element-wise multiplication into it), so the time per step is Lanczos's own work: the
recurrence, the reorthogonalisation and the writing of the new basis row. For each size, ``--draws``
draws with a new basis each and the same draws in one reused workspace, interleaved
over ``--rounds`` rounds (CPU time, one thread, medians); reported per step over the
draws after the first (the first draw of a reused workspace faults its pages in too)
and over all draws, with the Ritz values of both checked equal.

``--eigenpairs`` does the same for ``top_eigenpairs(k=1)`` (default basis of 21
vectors), what :class:`~spectorch.curvature.SharpnessTracker` runs at every
measurement, with and without its ``keep_basis`` (a ``workspace=``): ``--draws`` runs
from different random starts on the diagonal operator with three outliers above its
bulk (5, 3, 2 over [0, 1]); reported per run after the first, with the products per
run and the eigenvalues of both checked equal.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from spectorch.linalg import default_basis_size, lanczos_block, random_start, top_eigenpairs


class Diagonal:
    def __init__(self, n: int, outliers: tuple[float, ...] = ()) -> None:
        self.d = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
        if outliers:
            self.d[-len(outliers) :] = torch.tensor(sorted(outliers), dtype=torch.float64)
        self.shape = (n, n)
        self.dtype = torch.float64

    def matvec(self, v: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
        return torch.mul(self.d, v, out=out)


def draws(op: Diagonal, steps: int, count: int, reuse: bool) -> tuple[list[float], list]:
    """CPU seconds per step of each draw, and each draw's α."""
    n = op.shape[0]
    space = torch.empty(1, steps, n, dtype=torch.float64) if reuse else None
    times, alphas = [], []
    for k in range(count):
        start = random_start(n, num=1, generator=torch.Generator().manual_seed(k))
        t0 = time.process_time()
        (res,) = lanczos_block(op, steps, start, workspace=space)
        times.append((time.process_time() - t0) / steps)
        alphas.append(res.alphas)
        del res
    return times, alphas


def eigenpair_runs(op: Diagonal, count: int, reuse: bool) -> tuple[list[float], list]:
    """CPU seconds of each ``top_eigenpairs(k=1)`` run, and each run's pairs."""
    n = op.shape[0]
    m = default_basis_size(1, n)
    space = torch.empty(m + 1, n, dtype=torch.float64) if reuse else None
    times, found = [], []
    for k in range(count):
        t0 = time.process_time()
        pairs = top_eigenpairs(op, 1, seed=k, workspace=space)
        times.append(time.process_time() - t0)
        found.append(pairs)
    return times, found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1e6,1e7")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--eigenpairs", action="store_true", help="top_eigenpairs runs")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.eigenpairs:
        eigenpairs(args)
        return
    print("| n | basis MB | new basis per draw: ms/step, draws 2+ | reused: ms/step, draws 2+ "
          "| ratio | all draws: new / reused (ms/step) |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|")
    for size in args.sizes.split(","):
        n = int(float(size))
        op = Diagonal(n)
        later: dict[bool, list[float]] = {False: [], True: []}
        whole: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.rounds):
            ref = None
            for reuse in (False, True):
                times, alphas = draws(op, args.steps, args.draws, reuse)
                later[reuse].append(statistics.mean(times[1:]))
                whole[reuse].append(statistics.mean(times))
                if ref is None:
                    ref = alphas
                elif not all(torch.equal(a, b) for a, b in zip(ref, alphas, strict=True)):
                    raise SystemExit("a reused workspace changed the recurrence")
        new, old = statistics.median(later[True]), statistics.median(later[False])
        mb = args.steps * n * 8 / 2**20
        print(
            f"| {n:,} | {mb:,.0f} | {old * 1e3:.2f} | {new * 1e3:.2f} | {old / new:.2f} | "
            f"{statistics.median(whole[False]) * 1e3:.2f} / "
            f"{statistics.median(whole[True]) * 1e3:.2f} |"
        )


def eigenpairs(args: argparse.Namespace) -> None:
    print("| n | basis MB | products per run | new basis: ms per run, runs 2+ | "
          "kept: ms per run, runs 2+ | ratio |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|")
    for size in args.sizes.split(","):
        n = int(float(size))
        op = Diagonal(n, outliers=(2.0, 3.0, 5.0))
        later: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(args.rounds):
            ref = None
            for reuse in (False, True):
                times, found = eigenpair_runs(op, args.draws, reuse)
                later[reuse].append(statistics.mean(times[1:]))
                if ref is None:
                    ref = found
                elif not all(
                    torch.equal(a.values, b.values) and a.products == b.products
                    for a, b in zip(ref, found, strict=True)
                ):
                    raise SystemExit("a kept basis changed the eigenpairs")
        products = statistics.mean(p.products for p in ref)
        new, old = statistics.median(later[True]), statistics.median(later[False])
        mb = (default_basis_size(1, n) + 1) * n * 8 / 2**20
        print(
            f"| {n:,} | {mb:,.0f} | {products:.0f} | {old * 1e3:,.1f} | {new * 1e3:,.1f} | "
            f"{old / new:.2f} |"
        )


if __name__ == "__main__":
    main()
