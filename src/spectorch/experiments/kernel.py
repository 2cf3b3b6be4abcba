"""A kernel experiment with an exact answer: the top eigenpairs of an RBF kernel
matrix, learned by each spectral-inference objective and compared with ``eigh``
(``spectorch spin kernel``)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spectorch import checks
from spectorch.experiments._options import option
from spectorch.spin import OBJECTIVES, KernelOperator, SpectralNetwork
from spectorch.train import RunDirectory

__all__ = ["KernelConfig", "clustered_points", "kernel_example", "run"]


def clustered_points(seed: int = 1) -> torch.Tensor:
    """200 points in four Gaussian clusters of 80, 60, 40 and 20 (float64)."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.tensor(
        [[-2.0, -2.0], [2.0, -2.0], [-2.0, 2.0], [2.0, 2.0]], dtype=torch.float64
    )
    sizes = [80, 60, 40, 20]
    return torch.cat(
        [
            c + 0.3 * torch.randn(m, 2, dtype=torch.float64, generator=g)
            for c, m in zip(centers, sizes, strict=True)
        ]
    )


def _rbf(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.exp(-((a - b) ** 2).sum(1) / 2)


@dataclass
class KernelConfig:
    """Settings of the kernel experiment: every objective learns the top ``k``
    eigenfunctions of ``exp(-|x - y|^2 / 2)`` on :func:`clustered_points` with Adam."""

    objectives: tuple[str, ...] = option(
        tuple(OBJECTIVES), "objectives to run", flag="--objective", choices=OBJECTIVES, nargs="+"
    )
    k: int = option(4, "eigenpairs to learn")
    steps: int = option(1500, "training steps per objective")
    batch_size: int = option(256, "points per batch (drawn with replacement)")
    lr: float = option(1e-3, "Adam's learning rate")
    seed: int = option(0, "seed of the network and the batches")

    def __post_init__(self) -> None:
        names = (self.objectives,) if isinstance(self.objectives, str) else self.objectives
        self.objectives = tuple(checks.choice("objectives", n, OBJECTIVES) for n in names)
        if not self.objectives:
            raise ValueError("objectives must name at least one objective, got none")
        checks.positive_int("k", self.k)
        checks.positive_int("steps", self.steps)
        checks.int_at_least("batch_size", self.batch_size, 2)
        checks.positive("lr", self.lr)
        checks.nonnegative_int("seed", self.seed)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["objectives"] = list(self.objectives)
        return out


def run(
    out: str | os.PathLike, config: KernelConfig | None = None, *, progress: bool = True
) -> dict[str, Any]:
    """Learn the top ``k`` eigenfunctions of ``exp(-|x - y|^2 / 2)`` on
    :func:`clustered_points` with each objective and compare with ``eigh``.

    Batches are drawn with replacement from the 200 points, so the operator is exactly
    ``K / 200``. Writes ``config.json``, ``kernel.png`` (exact and learned
    eigenfunctions on the points, signs aligned) and ``result.json`` into ``out``.

    Returns:
        ``{"exact": top eigenvalues, "objectives": {name: {"eigenvalues", "max_relative_error",
        "overlap"}}}``; the eigenvalues are each objective's readout on the exact
        ``Sigma`` and ``Pi`` of the sample, the overlap ``||Q^T V||_F^2 / k`` of the
        learned and exact subspaces.
    """
    cfg = config or KernelConfig()
    k, batch_size = cfg.k, cfg.batch_size
    run_dir = RunDirectory(out, cfg.as_dict(), kind="kernel", settings_file="config.json").open()
    pts = clustered_points()
    n = pts.shape[0]
    kmat = torch.exp(-(torch.cdist(pts, pts) ** 2) / 2) / n
    evals, evecs = torch.linalg.eigh(kmat)
    top, vecs = evals.flip(0)[:k], evecs.flip(1)[:, :k]
    results: dict[str, Any] = {}
    learned: dict[str, np.ndarray] = {}
    for name in cfg.objectives:
        torch.manual_seed(cfg.seed)
        gen = torch.Generator().manual_seed(cfg.seed + 1)
        model = torch.nn.Sequential(
            torch.nn.Linear(2, 64),
            torch.nn.Softplus(),
            torch.nn.Linear(64, 64),
            torch.nn.Softplus(),
            torch.nn.Linear(64, k),
        ).double()

        def draw(gen: torch.Generator = gen) -> torch.Tensor:
            return pts[torch.randint(0, n, (batch_size,), generator=gen)]

        net = SpectralNetwork(
            KernelOperator(_rbf, pairs="all"),
            model,
            draw,
            objective=name,
            which="largest",
            decay=0.0,
        )
        net.train(torch.optim.Adam(model.parameters(), lr=cfg.lr), cfg.steps, progress=progress)
        with torch.no_grad():
            u = model(pts)
        eig = net.readout(u.T @ u / n, u.T @ kmat @ u / n)
        ef = net.eigenfunctions(pts)
        q, _ = torch.linalg.qr(ef)
        overlap = float((q.T @ vecs).pow(2).sum()) / k
        rel = np.abs(eig - top.numpy()) / top.numpy()
        results[name] = {
            "eigenvalues": eig.tolist(),
            "max_relative_error": float(rel.max()),
            "overlap": overlap,
        }
        f = ef.numpy() / np.linalg.norm(ef.numpy(), axis=0)
        learned[name] = f * np.sign((f * vecs.numpy()).sum(0))
    summary = {"exact": top.tolist(), "objectives": results}
    _figure(pts.numpy(), vecs.numpy(), top.numpy(), learned, results, run_dir.file("kernel.png"))
    run_dir.write_json("result.json", summary)
    return summary


def kernel_example(
    out: str | os.PathLike, *, progress: bool = True, **settings: Any
) -> dict[str, Any]:
    """:func:`run` with the :class:`KernelConfig` fields as keywords (spectorch 0.1's
    signature)."""
    return run(out, KernelConfig(**settings), progress=progress)


def _figure(
    pts: np.ndarray,
    exact: np.ndarray,
    top: np.ndarray,
    learned: dict[str, np.ndarray],
    results: dict[str, Any],
    path: Path,
) -> None:
    from spectorch.plotting import new_figure, save_figure

    rows = [("exact (eigh)", exact, top)] + [
        (k, v, np.asarray(results[k]["eigenvalues"])) for k, v in learned.items()
    ]
    k = exact.shape[1]
    fig = new_figure(1, width=2.3 * k, height=2.1 * len(rows))
    axes = np.atleast_2d(fig.subplots(len(rows), k))
    lim = float(np.abs(exact).max())
    for r, (label, values, eig) in enumerate(rows):
        for j in range(k):
            ax = axes[r, j]
            ax.scatter(
                pts[:, 0], pts[:, 1], c=values[:, j], cmap="coolwarm", vmin=-lim, vmax=lim, s=6
            )
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{label}: λ{j} = {eig[j]:.4f}", fontsize=8)
    save_figure(fig, path)
