"""The sharpness while a network trains: a callback for any training loop.

Every ``every`` steps it finds the top ``k`` eigenvalues of the curvature at the current
weights (warm-started from the previous eigenvectors, so a call costs a few products
once the eigenvectors move slowly), optionally the trace and the whole eigenvalue
density, and writes them to a CSV (and the densities to a JSON file) next to the
checkpoints; with :class:`spectorch.train.Loop` (and so :func:`spectorch.train.fit`)
its rows and vectors are saved in every checkpoint, so a resumed run goes on with the
same rows as an uninterrupted one.
"""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from spectorch import checks
from spectorch._io import atomic_path
from spectorch.curvature._preconditioned import PreconditionedOperator
from spectorch.linalg import (
    default_basis_size,
    hutchinson_trace,
    operator_device,
    resolve_basis,
    top_eigenpairs,
)

__all__ = ["SharpnessTracker", "adam_threshold", "gd_threshold"]


def gd_threshold(lr: float) -> float:
    """Gradient descent's stability threshold ``2/η`` (Cohen et al. 2021)."""
    return 2.0 / checks.positive("lr", lr)


def adam_threshold(lr: float, beta1: float = 0.9) -> float:
    """Adam's threshold for the preconditioned sharpness, ``(2 + 2β₁) / ((1 − β₁) η)``
    (Cohen et al. 2022): 38/η at ``β₁ = 0.9``."""
    lr = checks.positive("lr", lr)
    beta1 = checks.probability("beta1", beta1, one=False)
    return (2 + 2 * beta1) / ((1 - beta1) * lr)


class SharpnessTracker:
    """Top eigenvalues of the curvature every ``every`` steps of a training loop.

    Use it as a :class:`spectorch.train.Loop` callback (``fit(..., callbacks=[t])``),
    or call :meth:`measure` from any loop.

    Args:
        operator: the curvature operator (a :class:`HessianOperator` built once on the
            model is reused: its kept graphs are rebuilt when the weights change), or a
            function returning one for the current weights.
        every: steps between measurements (the loop's steps: epochs for ``fit``).
        k: eigenvalues per measurement.
        precondition: a function returning the optimiser's diagonal preconditioner
            (for example ``lambda: adam_preconditioner(opt, model.named_parameters())``):
            the eigenvalues are then those of ``P⁻¹ H``, the preconditioned sharpness.
        threshold: the stability threshold drawn and compared with
            (:func:`gd_threshold`, :func:`adam_threshold`).
        trace_every: also estimate the trace every this many measurements (``None``:
            never), with ``trace_probes`` Rademacher probes.
        density_every: also estimate the eigenvalue density every this many
            measurements (``None``: never), by stochastic Lanczos quadrature
            (:func:`spectorch.density.spectral_density`) with ``density_steps`` Lanczos
            steps and ``density_draws`` draws; kept in :attr:`densities` and written to
            ``<path stem>_densities.json`` (nodes and weights per step).
        path: the CSV written (atomically) after every measurement; default none.
        model: a module switched to eval mode while measuring and back after (the
            curvature of a network with BatchNorm or dropout is its eval-mode one).
        seed: measurement ``i`` draws its random vectors from ``seed + step``.
        tol, max_products: as :func:`spectorch.linalg.top_eigenpairs`.
        initial: also measure at the start of a fresh run (step 0); ``False`` for a
            preconditioner that exists only after a step (Adam's).
        keep_basis: keep the Lanczos basis (``max(2k + 1, k + 20) + 1`` float64
            vectors of the parameters' length, or as many as a density's
            ``density_steps`` rows take if more: half as many for the float32 rows of a
            float32 network's density, see :func:`spectorch.linalg.resolve_basis`) between
            measurements instead of a new one each time, for the eigenpairs and the
            densities alike. A new one is fresh memory, whose every page is a fault the
            first time it is written: on the CPU measured here a kept basis makes the
            eigenpairs' own work (all but the products) 1.10-1.33x faster from 10^4 to
            10^7 parameters (benchmarks/bench_workspace.py), a few percent of a
            measurement whose products are a network's. The memory is then held for
            the whole run, training included, so it is off by default; a GPU's caching
            allocator reuses a freed basis anyway.
        name: the key of its state in checkpoints.
    """

    def __init__(
        self,
        operator: Any,
        *,
        every: int = 1,
        k: int = 1,
        precondition: Callable[[], Any] | None = None,
        threshold: float | None = None,
        trace_every: int | None = None,
        trace_probes: int = 20,
        density_every: int | None = None,
        density_steps: int = 30,
        density_draws: int = 1,
        path: str | Path | None = None,
        model: torch.nn.Module | None = None,
        seed: int = 0,
        tol: float | None = None,
        max_products: int | None = None,
        initial: bool = True,
        keep_basis: bool = False,
        name: str = "sharpness",
    ) -> None:
        if not (hasattr(operator, "matvec") or callable(operator)):
            raise TypeError(
                "operator must be an operator (with matvec) or a function returning one, "
                f"got {type(operator).__name__}"
            )
        self.operator = operator
        self.every = checks.positive_int("every", every)
        self.k = checks.positive_int("k", k)
        if precondition is not None and not callable(precondition):
            raise TypeError(f"precondition must be callable, got {type(precondition).__name__}")
        self.precondition = precondition
        self.threshold = None if threshold is None else checks.positive("threshold", threshold)
        if trace_every is not None:
            checks.positive_int("trace_every", trace_every)
        self.trace_every = trace_every
        self.trace_probes = checks.positive_int("trace_probes", trace_probes)
        if density_every is not None:
            checks.positive_int("density_every", density_every)
        self.density_every = density_every
        self.density_steps = checks.positive_int("density_steps", density_steps)
        self.density_draws = checks.positive_int("density_draws", density_draws)
        self.path = None if path is None else Path(path)
        self.model = model
        self.seed = checks.nonnegative_int("seed", seed)
        self.tol, self.max_products = tol, max_products
        self.initial = bool(initial)
        if not isinstance(keep_basis, bool):
            raise TypeError(f"keep_basis must be a bool, got {type(keep_basis).__name__}")
        self.keep_basis = keep_basis
        self.name = name
        self.rows: list[dict[str, float]] = []
        self.vectors: torch.Tensor | None = None
        #: step → the density measured there (with ``density_every``)
        self.densities: dict[int, Any] = {}
        # with keep_basis, the rows of the eigenpairs' and densities' Lanczos bases, kept
        # between measurements: a new basis each time is fresh memory, a page fault per
        # page written
        self._workspace: torch.Tensor | None = None

    # ------------------------------------------------------------- measuring
    def measure(self, step: int) -> dict[str, float]:
        """Measure at the current weights, record the row as ``step``, return it."""
        t0 = time.process_time()
        was_training = self.model.training if self.model is not None else None
        if self.model is not None:
            self.model.eval()
        try:
            op = self.operator if hasattr(self.operator, "matvec") else self.operator()
            if self.precondition is not None:
                op = PreconditionedOperator(op, self.precondition())
            start = self.vectors
            if start is not None and start.shape[1] != op.shape[0]:
                start = None  # another model: a cold start
            kept = self._basis(op) if self.keep_basis else None
            m = default_basis_size(self.k, int(op.shape[0]))
            pairs = top_eigenpairs(
                op,
                self.k,
                start=start,
                seed=self.seed + step,
                tol=self.tol,
                max_products=self.max_products,
                workspace=None if kept is None else kept[: m + 1],
            )
            row: dict[str, float] = {"step": float(step)}
            for i in range(self.k):
                row[f"eig_{i + 1}"] = float(pairs.values[i])
            row["residual"] = float(pairs.residuals.max())
            row["converged"] = float(bool(pairs.converged.all()))
            row["products"] = float(pairs.products)
            measured = sum(r["step"] < step for r in self.rows)  # the rows kept below
            if self.trace_every is not None and measured % self.trace_every == 0:
                est = hutchinson_trace(op, self.trace_probes, seed=self.seed + step)
                row["trace"] = float(est.value)
                row["products"] += self.trace_probes
            density = None
            if self.density_every is not None and measured % self.density_every == 0:
                from spectorch.density import spectral_density

                steps = min(self.density_steps, op.shape[0])
                basis = resolve_basis("auto", op)  # the density's default
                density = spectral_density(
                    op,
                    steps=steps,
                    draws=self.density_draws,
                    seed=self.seed + step,
                    basis=basis,
                    check_symmetry=False,
                    progress=False,
                    workspace=None if kept is None else _rows(kept, steps, basis),
                )
                row["products"] += steps * self.density_draws
            row["cpu_seconds"] = time.process_time() - t0
        finally:
            if self.model is not None and was_training:
                self.model.train()
        self.vectors = pairs.vectors.detach().cpu()
        self.rows = [r for r in self.rows if r["step"] < step] + [row]
        self.densities = {s: d for s, d in self.densities.items() if s < step}
        if density is not None:
            self.densities[step] = density
        self._write()
        return row

    def _basis(self, op: Any) -> torch.Tensor:
        """The kept rows for ``op``'s Lanczos bases if they fit, else new ones: enough
        for the eigenpairs' basis and, with ``density_every``, a density's (the two run
        one after the other, so they share the rows)."""
        n = int(op.shape[0])
        rows = default_basis_size(self.k, n) + 1
        if self.density_every is not None:
            steps = min(self.density_steps, n)
            if resolve_basis("auto", op) == "float32":  # float32 rows: half as many bytes
                steps = (steps + 1) // 2
            rows = max(rows, steps)
        device = operator_device(op)
        if self._workspace is not None:
            try:
                return checks.buffer("workspace", self._workspace, (rows, n), torch.float64, device)
            except ValueError:
                self._workspace = None  # another operator: freed before the new one is made
        self._workspace = torch.empty(rows, n, dtype=torch.float64, device=device)
        return self._workspace

    # ------------------------------------------------------------- callbacks
    def on_start(self, loop: Any) -> None:
        if self.initial and loop.step == 0 and not self.rows:
            self.measure(0)  # the curvature at initialisation

    def on_step(self, loop: Any) -> None:
        if loop.step % self.every == 0:
            self.measure(loop.step)

    # ------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        densities = {
            s: {
                "nodes": [torch.from_numpy(x) for x in d.nodes],
                "weights": [torch.from_numpy(w) for w in d.weights],
                "dim": d.dim,
                "steps": d.steps,
            }
            for s, d in self.densities.items()
        }
        return {"rows": [dict(r) for r in self.rows], "vectors": self.vectors,
                "densities": densities}  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        from spectorch.density import SpectralDensity

        self.rows = [dict(r) for r in state["rows"]]
        self.vectors = state["vectors"]
        self.densities = {
            int(s): SpectralDensity(
                [x.numpy() for x in d["nodes"]],
                [w.numpy() for w in d["weights"]],
                d["dim"],
                steps=d["steps"],
            )
            for s, d in state.get("densities", {}).items()
        }
        self._write()  # rows measured after the checkpoint by a killed run are dropped

    # ------------------------------------------------------------- output
    @property
    def sharpness(self) -> list[float]:
        return [r["eig_1"] for r in self.rows]

    @property
    def steps(self) -> list[int]:
        return [int(r["step"]) for r in self.rows]

    def _write(self) -> None:
        if self.path is None or not self.rows:
            return
        keys = list(dict.fromkeys(key for r in self.rows for key in r))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
        writer.writeheader()
        for r in self.rows:
            writer.writerow({key: _cell(key, r.get(key)) for key in keys})
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path, "w") as fh:
            fh.write(buf.getvalue())
        if self.density_every is not None:
            found = {
                str(s): {
                    "dim": d.dim,
                    "steps": d.steps,
                    "nodes": [x.tolist() for x in d.nodes],
                    "weights": [w.tolist() for w in d.weights],
                }
                for s, d in self.densities.items()
            }
            with atomic_path(self.density_path, "w") as fh:
                json.dump(found, fh)

    @property
    def density_path(self) -> Path | None:
        """Where the densities are written: ``<path stem>_densities.json``."""
        return (
            None if self.path is None else self.path.with_name(f"{self.path.stem}_densities.json")
        )

    def plot(self, path: str | Path, *, label: str = "sharpness", title: str | None = None):
        """Sharpness against steps with the threshold as a dashed line, as a PNG."""
        from spectorch.plotting import plot_sharpness

        return plot_sharpness({label: (self.steps, self.sharpness, self.threshold)}, path,
                              title=title)  # fmt: skip


def _cell(key: str, value: Any) -> Any:
    if value is None:
        return ""
    if key in ("step", "products", "converged"):
        return int(value)
    return repr(float(value))


def _rows(kept: torch.Tensor, steps: int, basis: str) -> torch.Tensor:
    """A density's ``(1, steps, n)`` workspace in the tracker's kept float64 rows:
    the first ``steps`` rows, or with ``basis="float32"`` the same memory read as
    float32 (half of it), no new memory either way."""
    n = kept.shape[1]
    if basis == "float32":
        return kept.view(torch.float32).view(-1)[: steps * n].view(1, steps, n)
    return kept[:steps].view(1, steps, n)
