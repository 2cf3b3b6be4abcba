"""Run stochastic Lanczos quadrature draws, with resumable on-disk outputs."""

from __future__ import annotations

import contextlib
import logging
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from spectorch import checks
from spectorch._io import atomic_save_npy, atomic_write_json
from spectorch._version import __version__
from spectorch.density._density import SpectralDensity
from spectorch.linalg import (
    BASIS_MODES,
    REORTH_MODES,
    LanczosResult,
    as_operator,
    check_symmetric,
    deflated_trace_sample,
    lanczos_block,
    operator_device,
    random_start,
    resolve_basis,
    resolve_reorth,
)
from spectorch.train import RunDirectory
from spectorch.train._rundir import plain

__all__ = ["MANIFEST", "combine_densities", "draw_generator", "load_density", "spectral_density"]

log = logging.getLogger("spectorch.density")

MANIFEST = "manifest.json"
_FORMAT = "spectorch.density/1"
_DTYPES = {"float64": torch.float64, "float32": torch.float32}
# A resumed run must have been started with the same settings as these, and on the
# same problem (``metadata["problem"]``, when the caller names it).
_RESUME_KEYS = ("dim", "steps", "seed", "start", "start_signs", "dtype", "operator")
#: how a Rademacher start's signs come from the seed (:func:`rademacher_signs`); runs
#: made before it (no such key, one random number per entry) are neither resumed nor
#: combined with later ones
START_SIGNS = "bits of 32-bit words"
#: how partial reorthogonalisation estimates the loss of orthogonality: the round-off
#: the products feed into older rows with the operator's precision (a float32
#: network's, even with a float64 basis), the loss between neighbours with the basis's.
#: Partial runs made before any such key estimated both with float64's eps, skipped
#: passes a float32 network needs and could hold spurious eigenvalues, so they are not
#: resumed; those of "coarsest precision" (both with float32's on a float32 network)
#: only reorthogonalised more often, and are resumed and combined
PARTIAL_ESTIMATES = "operator precision, neighbours in the basis's"
_SOUND_ESTIMATES = (PARTIAL_ESTIMATES, "coarsest precision")
_PROBLEM = "problem"


def draw_generator(seed: int, draw: int) -> torch.Generator:
    """The CPU generator of draw ``draw`` of a run seeded ``seed``.

    Derived with numpy's ``SeedSequence`` so that draws are independent streams and a
    draw can be recomputed alone (resume, or one draw per job).
    """
    state = np.random.SeedSequence(entropy=int(seed), spawn_key=(int(draw),)).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 31 ^ int(state[1]))


def spectral_density(
    op: Any,
    *,
    steps: int = 90,
    draws: int | Sequence[int] = 10,
    seed: int = 0,
    start: str = "rademacher",
    dtype: torch.dtype | str = torch.float64,
    probes_per_pass: int = 1,
    basis: str = "auto",
    reorth: str = "auto",
    out: str | os.PathLike | None = None,
    save_vectors: bool = True,
    check_symmetry: bool = True,
    progress: bool = True,
    metadata: dict[str, Any] | None = None,
    blocks: Any = None,
    workspace: torch.Tensor | None = None,
) -> Any:
    r"""Estimate the eigenvalue density of a symmetric operator by stochastic Lanczos
    quadrature (Ghorbani, Krishnan & Xiao 2019; Lin, Saad & Yang 2016).

    Each draw runs ``steps`` Lanczos steps from a random unit vector, its basis kept
    orthogonal (``reorth``), and keeps the Gauss quadrature of its tridiagonal; the
    density is the average over draws.

    Args:
        op: a symmetric operator (e.g. :class:`~spectorch.curvature.HessianOperator`)
            or a square tensor.
        steps: Lanczos steps per draw; 90, as in Ghorbani et al. 2019.
        draws: independent start vectors to average over: a count ``N`` runs draws
            ``0..N-1``; a sequence of indices runs just those draws of the seed's
            stream, e.g. ``[k]`` for one draw per job, whose outputs
            :func:`combine_densities` merges into the density of all of them.
        seed: seeds draw ``k`` through :func:`draw_generator` (seed, k).
        start: ``"rademacher"`` or ``"gaussian"`` start vectors.
        dtype: dtype of the recurrence and basis (``float64`` or ``float32``).
        probes_per_pass: draws advanced together, one ``matmat`` per step (one pass
            over the data for all of them; memory grows with it).
        basis: where the Lanczos vectors are kept while a draw runs: ``"auto"`` (the
            default; ``"memory"`` in earlier versions): float32 rows where the products
            are float32 (a float32 network) and ``reorth`` resolves to partial, else
            ``"memory"`` (see :func:`~spectorch.linalg.resolve_basis`); ``"memory"``
            (in ``dtype``), ``"float32"`` or ``"disk"`` (in ``out``, or a temporary
            directory); see :func:`~spectorch.linalg.lanczos`. The recurrence stays in
            ``dtype``; the saved vectors are the rows as kept. The mode it resolves to
            is written in the manifest.
        reorth: ``"auto"`` (the default: ``"partial"`` on spectorch's curvature
            operators, ``"full"`` on a tensor or any other operator, see
            :func:`~spectorch.linalg.resolve_reorth`; earlier versions defaulted to
            ``"full"``), ``"full"`` (every step against the whole basis, as
            google/spectral-density does) or ``"partial"`` (Simon's partial
            reorthogonalisation: the same tridiagonals to working precision, fewer
            reads of the basis; see :func:`~spectorch.linalg.lanczos`). The mode it
            resolves to is written in the manifest, for each draw too;
            like ``basis`` it does not stop a resume, but a partial run made before its
            estimates followed a float32 network's round-off is refused (its draws can
            hold spurious eigenvalues).
        out: a directory for ``tridiag_<k>.npy``, ``lanczos_vec_<k>.npy`` and
            ``manifest.json``; a run found there with the same settings is resumed from
            its last finished draw. Every file is written atomically.
        save_vectors: also write the Lanczos vectors (``steps × n`` floats per draw).
        check_symmetry: probe the operator for symmetry first (two products).
        progress: show progress bars over draws and steps.
        metadata: extra JSON-friendly entries for the manifest. Its entry
            ``"problem"``, when given, names the data and weights (a checkpoint and
            its data, say): a run in ``out`` made on another problem is refused
            rather than resumed, as for other settings.
        blocks: also one density per block of parameters, the principal sub-matrix of
            a curvature operator on them (Zhang et al. 2024): a preset
            (``"parameters"``, ``"modules"``, ``"layers"``), ``{name: selection}`` or a
            list of selections (see :func:`spectorch.curvature.parameter_blocks`).
            The full density is written to ``out``, each block's to
            ``out/blocks/<name>/``; a block smaller than ``steps`` runs as many steps
            as it has dimensions (said in its manifest and the log).
        workspace: with ``basis="memory"`` or ``"float32"``, a contiguous tensor of
            shape ``(probes_per_pass, steps, n)`` on the operator's device (``dtype``,
            or float32 for ``"float32"``) to keep the bases in, instead of one made by
            this call (see :func:`~spectorch.linalg.lanczos_block`): for densities
            measured again and again on one operator, as
            :class:`~spectorch.curvature.SharpnessTracker` does with ``keep_basis``.
            Its contents are overwritten; the result never views it. Not with
            ``blocks`` (each block has its own size).

    Returns:
        The :class:`SpectralDensity` of all ``draws`` draws; with ``blocks``, a dict
        ``{"full": density, <block>: density, ...}``.

    Raises:
        ValueError: on bad arguments, a non-symmetric operator, or an ``out`` holding a
            run with other settings; all before any Lanczos step.
        FloatingPointError: when a product has NaN or inf entries.

    Example:
        >>> import torch
        >>> A = torch.diag(torch.linspace(0, 1, 200, dtype=torch.float64))
        >>> dens = spectral_density(A, steps=30, draws=4, progress=False)
        >>> round(float(dens.moments(1)), 6)
        0.5
    """
    if blocks is not None:
        if workspace is not None:
            raise ValueError("workspace is for one operator; blocks= runs one per block")
        return _block_densities(
            op,
            blocks,
            out=out,
            metadata=metadata,
            steps=steps,
            draws=draws,
            seed=seed,
            start=start,
            dtype=dtype,
            probes_per_pass=probes_per_pass,
            basis=basis,
            reorth=reorth,
            save_vectors=save_vectors,
            check_symmetry=check_symmetry,
            progress=progress,
        )
    op = as_operator(op)
    n = op.shape[0]
    dtype = _resolve_dtype(dtype)
    checks.positive_int("steps", steps)
    checks.positive_int("probes_per_pass", probes_per_pass)
    indices = _draw_indices(draws)
    if steps > n:
        raise ValueError(f"steps must be at most the operator's dimension {n}, got {steps}")
    checks.nonnegative_int("seed", seed)
    if start not in ("rademacher", "gaussian"):
        raise ValueError(f"start must be 'rademacher' or 'gaussian', got {start!r}")
    if basis not in BASIS_MODES:
        raise ValueError(f"basis must be one of {list(BASIS_MODES)}, got {basis!r}")
    if basis == "disk" and dtype != torch.float64:
        raise ValueError("basis='disk' stores float64 vectors; use it with dtype=float64")
    if reorth not in REORTH_MODES:
        raise ValueError(f"reorth must be one of {list(REORTH_MODES)}, got {reorth!r}")
    asked, reorth = reorth, resolve_reorth(reorth, op)
    if asked == "auto":  # the default (earlier versions: full); the manifest says which
        log.debug(
            "reorth='auto': %s reorthogonalisation for %s (reorth='full' is "
            "google/spectral-density's)",
            reorth,
            type(op).__name__,
        )
    asked, basis = basis, resolve_basis(basis, op, reorth, dtype)
    if asked == "auto":  # the default (earlier versions: memory); the manifest says which
        log.debug("basis='auto': basis=%r for %s", basis, type(op).__name__)
    if workspace is not None:
        if basis == "disk":
            raise ValueError("workspace keeps the bases in memory; basis='disk' takes none")
        kept = dtype if basis == "memory" else torch.float32
        shape = (probes_per_pass, steps, n)
        checks.buffer("workspace", workspace, shape, kept, operator_device(op))

    describe = getattr(op, "describe", None)
    settings = {
        "dim": n,
        "steps": int(steps),
        "seed": int(seed),
        "start": start,
        "dtype": str(dtype).replace("torch.", ""),
        "operator": describe() if callable(describe) else {"operator": type(op).__name__},
        "basis": basis,
    }
    if start == "rademacher":
        settings["start_signs"] = START_SIGNS
    if reorth != "full":  # manifests of full reorthogonalisation stay as they were
        settings["reorth"] = reorth
        settings["reorth_estimates"] = PARTIAL_ESTIMATES
    if metadata and _PROBLEM in metadata:
        settings[_PROBLEM] = plain(metadata[_PROBLEM])
    done: dict[int, tuple[np.ndarray, float | None]] = {}
    run = _RunDir(Path(out), settings, metadata) if out is not None else None
    if run is not None:
        done = run.load_finished()
    todo = [k for k in indices if k not in done]
    reused = len(indices) - len(todo)
    if reused:
        log.info(
            "resuming %s: %d of %d draws already there, %d to compute",
            out,
            reused,
            len(indices),
            len(todo),
        )
    if todo and check_symmetry:
        check_symmetric(op, generator=draw_generator(seed, 2**31 - 1))

    carry: dict[int, tuple] = {}  # the previous group's last draw, for its probe
    # one basis for all groups, reused (lanczos_block's workspace): a new one per draw
    # would be fresh memory, a page fault per 4 KB page of every row (at 10⁸
    # parameters more than the arithmetic on the row); the carried rows get their own
    carried = None
    # and one set of the runs' working vectors (lanczos_block's scratch), the start
    # vectors drawn into the first row of their basis or, with float32 or disk rows,
    # into the first slot of the runs' window: with float32 rows a draw would otherwise
    # make five full-length float64 vectors anew
    scratch: dict = {}
    device = operator_device(op)  # the starts are built there, from words drawn on the CPU
    total = len(indices)
    bar = tqdm(total=total, initial=total - len(todo), desc="draws", disable=not progress)
    try:
        for i in range(0, len(todo), probes_per_pass):
            group = todo[i : i + probes_per_pass]
            if basis != "disk":
                if workspace is None:
                    kept = dtype if basis == "memory" else torch.float32
                    shape = (len(group), steps, n)
                    workspace = torch.empty(shape, dtype=kept, device=operator_device(op))
                if carried is None:  # as the rows are stored (float32 rows: half the memory)
                    carried = torch.empty(2, n, dtype=workspace.dtype, device=workspace.device)
                space = workspace[: len(group)]  # the last group may be smaller
            # the float64 starts drawn where the runs keep them: the basis's first rows,
            # or with float32 or disk rows the first slot of the runs' window of their
            # last two vectors (lanczos_block's scratch); for another recurrence dtype
            # into a kept buffer, rounded to that dtype by the run
            if basis == "memory" and dtype == torch.float64:
                starts = space[:, 0]
            else:
                key, shape = ("window", (2, n)) if dtype == torch.float64 else ("starts", (n,))
                buffer = scratch.get(key)
                if buffer is None or buffer.shape[0] < len(group):
                    buffer = torch.empty(len(group), *shape, dtype=torch.float64, device=device)
                    scratch[key] = buffer
                starts = buffer[: len(group), 0] if key == "window" else buffer[: len(group)]
            for row, k in zip(starts, group, strict=True):
                generator = draw_generator(seed, k)
                random_start(n, kind=start, generator=generator, device=device, out=row)
            t0 = time.perf_counter()
            results = lanczos_block(
                op,
                steps,
                starts,
                dtype=dtype,
                basis=basis,
                basis_dir=run.path if run is not None and basis == "disk" else None,
                basis_names=[str(k) for k in group],
                reorth=reorth,
                progress=progress,
                desc=f"draw {group[0]}",
                workspace=None if basis == "disk" else space,
                scratch=scratch,
            )
            seconds = (time.perf_counter() - t0) / len(group)
            try:
                for k, res in zip(group, results, strict=True):
                    T = res.tridiagonal.cpu().numpy()
                    probe = _probe_of(k - 1, results, group, carry, run)
                    if probe is None and k >= 1:
                        probe = _regenerated_probe(op, n, start, seed, k - 1, res)
                    sample = None
                    if probe is not None:
                        sample = deflated_trace_sample(res, res.tridiagonal, *probe)
                    done[k] = (T, sample)
                    if run is not None:
                        run.save_draw(k, res, T, save_vectors, seconds, sample)
                last = results[-1]
                if last.steps >= 2:
                    if carried is not None:  # the next group overwrites the workspace
                        rows = (carried[0].copy_(last.basis[0]), carried[1].copy_(last.basis[1]))
                    else:
                        rows = (last.row(0), last.row(1))
                    carry = {group[-1]: (*rows, last.alphas[0], last.betas[0])}
            finally:
                for res in results:  # disk files not handed over to ``out``
                    if res.disk is not None and res.disk.path.name.endswith(".partial"):
                        res.disk.close()
                        with contextlib.suppress(FileNotFoundError):
                            res.disk.path.unlink()
            bar.update(len(group))
    finally:
        bar.close()

    tridiags = [done[k][0] for k in indices]
    samples = [done[k][1] for k in indices if done[k][1] is not None]
    meta = dict(settings, draws=indices, **(metadata or {}))
    return SpectralDensity.from_tridiagonals(
        tridiags, n, steps=steps, metadata=meta, trace_samples=samples
    )


def _probe_of(
    k: int,
    results: list[LanczosResult],
    group: list[int],
    carry: dict[int, tuple],
    run: _RunDir | None,
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Draw ``k``'s start vector as a Rademacher probe ``z = √n q₀`` and ``Az``.

    ``Az = √n (α₀q₀ + β₀q₁)`` by the Lanczos relation, so no product is spent. The
    vectors come from the current group or, after a resume, from ``lanczos_vec_k.npy``.
    """
    if k < 0:
        return None
    if k in group:
        res = results[group.index(k)]
        if res.steps < 2:
            return None
        q0, q1, a0, b0 = res.row(0), res.row(1), res.alphas[0], res.betas[0]
    elif k in carry:  # the rows as stored (float32 rows: exact in float64)
        q0, q1, a0, b0 = carry[k]
        q0, q1 = q0.to(torch.float64), q1.to(torch.float64)
    else:
        if run is None:
            return None
        loaded = run.first_vectors(k)
        if loaded is None:
            return None
        q0, q1, a0, b0 = loaded
    scale = float(q0.numel()) ** 0.5
    return scale * q0, scale * (a0 * q0 + b0 * q1)


def _regenerated_probe(
    op: Any, n: int, start: str, seed: int, k: int, res: LanczosResult
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``k``'s probe when its vectors are not at hand (one draw per job, or a
    resume without saved vectors): regenerated from the seed, ``Az`` for one product."""
    device = operator_device(op)
    z = random_start(n, kind=start, generator=draw_generator(seed, k), device=device)
    z *= float(n) ** 0.5
    Az = op.matvec(z.to(op.dtype)).to(torch.float64)
    return z, Az


def _draw_indices(draws: Any) -> list[int]:
    if isinstance(draws, (int, np.integer)) and not isinstance(draws, bool):
        if draws < 1:
            raise ValueError(f"draws must be a positive int or a list of draw indices, got {draws}")
        return list(range(int(draws)))
    if isinstance(draws, (str, bytes)) or not isinstance(draws, Sequence):
        raise ValueError(
            f"draws must be a positive int or a list of draw indices, got {type(draws).__name__}"
        )
    indices = list(draws)
    bad = [
        k for k in indices if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0
    ]
    if not indices or bad:
        raise ValueError(f"draw indices must be non-negative ints, got {indices!r}")
    if len(set(indices)) != len(indices):
        raise ValueError(f"draw indices must not repeat, got {indices!r}")
    return sorted(int(k) for k in indices)


def load_density(directory: str | os.PathLike) -> SpectralDensity:
    """Read a run's ``tridiag_<k>.npy`` files back into a :class:`SpectralDensity`.

    Raises:
        FileNotFoundError: if the directory has no manifest.
        ValueError: if the manifest is not a spectorch density manifest.
    """
    directory = Path(directory)
    manifest = _read_manifest(directory)
    if manifest is None:
        raise FileNotFoundError(f"no {MANIFEST} in {directory}: not a spectorch density run")
    finished = sorted(int(k) for k in manifest["finished_draws"])
    if not finished:
        raise ValueError(f"the run in {directory} has no finished draw yet")
    tridiags = [np.load(directory / f"tridiag_{k}.npy") for k in finished]
    info = manifest.get("draw_info", {})
    samples = [
        info[str(k)]["trace_sample"]
        for k in finished
        if info.get(str(k), {}).get("trace_sample") is not None
    ]
    return SpectralDensity.from_tridiagonals(
        tridiags, manifest["dim"], steps=manifest["steps"], metadata=manifest, trace_samples=samples
    )


def combine_densities(
    directories: Sequence[str | os.PathLike], out: str | os.PathLike | None = None
) -> SpectralDensity:
    """Merge runs of the same study made by separate jobs (``draws=[k]`` each, or any
    disjoint sets of draws) into one density.

    The runs must agree on dimension, steps, seed, start vectors, dtype, operator
    (its device aside) and problem (``metadata["problem"]``) and hold different
    draws. With ``out``, the merged run is written there as a run directory of its
    own (``tridiag_<k>.npy`` and a manifest naming where each draw came from;
    Lanczos vectors stay where they are), so :func:`load_density` and ``spectorch
    density combine`` read it like any other.

    Raises:
        ValueError: with no directory, a directory that is not a run, runs with other
            settings, or a draw found in two runs.
    """
    dirs = [Path(d) for d in directories]
    if not dirs:
        raise ValueError("directories is empty: give the run directories to combine")
    manifests = []
    for d in dirs:
        manifest = _read_manifest(d)
        if manifest is None:
            raise ValueError(f"{d} has no {MANIFEST}: not a spectorch density run")
        if not manifest.get("finished_draws"):
            raise ValueError(f"the run in {d} has no finished draw yet")
        _check_partial_estimates(manifest, d, "combined")
        manifests.append(manifest)
    first = manifests[0]
    for d, manifest in zip(dirs[1:], manifests[1:], strict=True):
        diffs = [
            key
            for key in (*_RESUME_KEYS, _PROBLEM)
            if _comparable(manifest, key) != _comparable(first, key)
        ]
        if diffs:
            detail = "; ".join(
                f"{key}: {first.get(key)!r} in {dirs[0]}, {manifest.get(key)!r} in {d}"
                for key in diffs
            )
            raise ValueError(f"cannot combine runs of different studies ({detail})")
    source: dict[int, tuple[Path, dict]] = {}
    for d, manifest in zip(dirs, manifests, strict=True):
        for key, info in manifest["draw_info"].items():
            k = int(key)
            if k in source:
                raise ValueError(f"draw {k} is in both {source[k][0]} and {d}; give each once")
            source[k] = (d, info)
    indices = sorted(source)
    tridiags = [np.load(source[k][0] / f"tridiag_{k}.npy") for k in indices]
    samples = [source[k][1]["trace_sample"] for k in indices]
    meta = {key: first[key] for key in (*_RESUME_KEYS, _PROBLEM, "basis") if key in first}
    meta["combined_from"] = [str(d) for d in dirs]
    if out is not None:
        out = Path(out)
        if out.exists() and not out.is_dir():
            raise ValueError(f"out must be a directory, but {out} is a file")
        out.mkdir(parents=True, exist_ok=True)
        for k, T in zip(indices, tridiags, strict=True):
            atomic_save_npy(out / f"tridiag_{k}.npy", T)
        draw_info = {
            str(k): dict(source[k][1], vectors=False, source=str(source[k][0])) for k in indices
        }
        manifest = dict(
            meta,
            format=_FORMAT,
            versions=_versions(),
            created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            draw_info=draw_info,
            finished_draws=indices,
        )
        atomic_write_json(out / MANIFEST, manifest)
    return SpectralDensity.from_tridiagonals(
        tridiags,
        first["dim"],
        steps=first["steps"],
        metadata=dict(meta, draws=indices),
        trace_samples=[t for t in samples if t is not None],
    )


def _check_partial_estimates(manifest: dict[str, Any], path: Path, use: str) -> None:
    """Refuse the draws of a partial-reorthogonalisation run made before its estimates
    followed the operator's precision (no ``reorth_estimates``); each draw's own label
    is in its ``draw_info``."""
    if manifest.get("reorth") == "partial" and (
        manifest.get("reorth_estimates") not in _SOUND_ESTIMATES
    ):
        raise ValueError(
            f"{path} holds draws of partial reorthogonalisation made before its "
            "estimates followed a float32 network's round-off; on such a network they "
            f"can hold spurious eigenvalues, so they are not {use}: choose another out "
            "directory, or delete this one and run again"
        )


def _comparable(manifest: dict[str, Any], key: str) -> Any:
    value = manifest.get(key)
    if key == "operator" and isinstance(value, dict):
        return {k: v for k, v in value.items() if k != "device"}
    return value


class _RunDir:
    """The on-disk state of a run: created on the first finished draw, never before."""

    def __init__(self, path: Path, settings: dict[str, Any], metadata: dict | None) -> None:
        self.dir = RunDirectory(
            path,
            {key: settings[key] for key in (*_RESUME_KEYS, _PROBLEM) if key in settings},
            kind="density",
            settings_file=MANIFEST,
            only=(*_RESUME_KEYS, _PROBLEM),
        )
        self.path = path
        self.settings = settings
        self.metadata = metadata or {}
        self.manifest = _read_manifest(path)
        if self.manifest is not None:
            self.dir.check(self.manifest)
            _check_partial_estimates(self.manifest, path, "resumed")
        elif path.is_dir() and any(path.glob("tridiag_*.npy")):
            raise ValueError(
                f"{path} holds tridiag files but no {MANIFEST}; choose another out directory"
            )

    def first_vectors(self, k: int) -> tuple[torch.Tensor, ...] | None:
        """``q₀, q₁, α₀, β₀`` of a finished draw, read from its saved files."""
        vec_file = self.path / f"lanczos_vec_{k}.npy"
        if not vec_file.exists():
            return None
        Q = np.load(vec_file, mmap_mode="r")
        T = np.load(self.path / f"tridiag_{k}.npy")
        if Q.shape[0] < 2:
            return None
        q = torch.from_numpy(np.array(Q[:2], dtype=np.float64))
        return q[0], q[1], float(T[0, 0]), float(T[0, 1])

    def load_finished(self) -> dict[int, tuple[np.ndarray, float | None]]:
        if self.manifest is None:
            return {}
        done = {}
        for key, info in self.manifest.get("draw_info", {}).items():
            k = int(key)
            done[k] = (self._checked_tridiagonal(k, info), info.get("trace_sample"))
            if info.get("vectors"):
                self._check_vectors(k, info)
        return done

    def _damaged(self, file: Path, what: str) -> ValueError:
        return ValueError(
            f"{file} of the run to resume is damaged ({what}); delete it and its draw's "
            f"other files (or the whole run) and run again, or choose another out directory"
        )

    def _checked_tridiagonal(self, k: int, info: dict[str, Any]) -> np.ndarray:
        """Draw ``k``'s tridiagonal, checked against the manifest before any work."""
        file = self.path / f"tridiag_{k}.npy"
        try:
            T = np.load(file, allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise self._damaged(file, f"unreadable: {exc}") from None
        m = int(info.get("steps", self.settings["steps"]))
        if not isinstance(T, np.ndarray) or T.shape != (m, m):
            raise self._damaged(file, f"shape {getattr(T, 'shape', None)}, expected ({m}, {m})")
        if not np.issubdtype(T.dtype, np.floating) or not np.isfinite(T).all():
            raise self._damaged(file, "NaN or inf entries" if T.dtype.kind == "f" else T.dtype)
        if not np.array_equal(T, T.T) or np.count_nonzero(np.triu(T, 2)):
            raise self._damaged(file, "not a symmetric tridiagonal matrix")
        return T

    def _check_vectors(self, k: int, info: dict[str, Any]) -> None:
        """Draw ``k``'s Lanczos vectors: a readable ``(steps, dim)`` float array."""
        file = self.path / f"lanczos_vec_{k}.npy"
        if not file.exists():
            raise self._damaged(file, "missing, though the manifest lists it")
        try:
            Q = np.load(file, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as exc:
            raise self._damaged(file, f"truncated or unreadable: {exc}") from None
        m, n = int(info.get("steps", self.settings["steps"])), int(self.settings["dim"])
        if Q.ndim != 2 or Q.shape[1] != n or Q.shape[0] < m:
            raise self._damaged(file, f"shape {Q.shape}, expected ({m}, {n})")

    def save_draw(
        self,
        k: int,
        res: LanczosResult,
        T: np.ndarray,
        save_vectors: bool,
        seconds: float,
        trace_sample: float | None,
    ) -> None:
        vec_file = self.dir.file(f"lanczos_vec_{k}.npy")
        if res.disk is not None and res.disk.path.parent == self.path:
            if save_vectors:  # the basis is already a .npy file here: hand it over
                res.disk.sync()
                os.replace(res.disk.path, vec_file)
                res.disk.path = vec_file
        elif save_vectors:
            self.dir.save_npy(vec_file.name, res.basis.cpu().numpy())
        self.dir.save_npy(f"tridiag_{k}.npy", T)
        if self.manifest is None:
            self.manifest = dict(
                self.settings,
                format=_FORMAT,
                versions=_versions(),
                created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                draw_info={},
                **self.metadata,
            )
        self.manifest["draw_info"][str(k)] = {
            "steps": res.steps,
            "breakdown": res.breakdown,
            "seconds": round(seconds, 4),
            "vectors": save_vectors,
            "trace_sample": trace_sample,
        }
        info = self.manifest["draw_info"][str(k)]
        info["reorth"] = self.settings.get("reorth", "full")  # a resumed run's may differ
        info["basis"] = self.settings["basis"]  # likewise
        if "reorth_estimates" in self.settings:  # a resumed run's may be older
            info["reorth_estimates"] = PARTIAL_ESTIMATES
        self.manifest["finished_draws"] = sorted(int(d) for d in self.manifest["draw_info"])
        self.dir.write_json(MANIFEST, self.manifest)


def _read_manifest(path: Path) -> dict[str, Any] | None:
    manifest = RunDirectory(path, kind="density", settings_file=MANIFEST).saved_settings()
    if manifest is not None and manifest.get("format") != _FORMAT:
        raise ValueError(f"{path / MANIFEST} is not a spectorch density manifest ({_FORMAT})")
    return manifest


def _resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {list(_DTYPES)}, got {dtype!r}")
        return _DTYPES[dtype]
    if dtype not in _DTYPES.values():
        raise ValueError(f"dtype must be torch.float64 or torch.float32, got {dtype!r}")
    return dtype


def _versions() -> dict[str, str]:
    import scipy

    return {
        "spectorch": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "python": platform.python_version(),
    }


def _block_name(name: str) -> str:
    """A directory name for a block: its name with anything but letters, digits,
    ``.``, ``_`` and ``-`` replaced by ``_``."""
    import re

    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "_"


def _block_densities(
    op: Any,
    blocks: Any,
    *,
    out: str | os.PathLike | None,
    metadata: dict[str, Any] | None,
    steps: int,
    **kwargs: Any,
) -> dict[str, SpectralDensity]:
    """The full density and one per block (see :func:`spectral_density`)."""
    from spectorch.curvature import parameter_blocks

    if not hasattr(op, "restrict") or not hasattr(op, "model"):
        raise ValueError(
            f"blocks need a curvature operator (with a model and restrict()), got "
            f"{type(op).__name__}"
        )
    checks.positive_int("steps", steps)
    named = parameter_blocks(op.model, blocks)
    dirs: dict[str, str] = {}
    for name, names in named.items():
        outside = [k for k in names if k not in op.param_names]
        if outside:
            raise ValueError(
                f"block {name!r} holds {outside[:3]}, which the operator does not differentiate"
            )
        d = _block_name(name)
        if d in dirs.values():
            raise ValueError(f"blocks {name!r} and another share the directory name {d!r}")
        dirs[name] = d
    if steps > op.shape[0]:
        raise ValueError(
            f"steps must be at most the operator's dimension {op.shape[0]}, got {steps}"
        )
    root = Path(out) if out is not None else None
    result = {"full": spectral_density(op, steps=steps, out=root, metadata=metadata, **kwargs)}
    for name, names in named.items():
        block = op.restrict(names)
        n = block.shape[0]
        extra = {**(metadata or {}), "block": name, "params": names}
        if n < steps:
            log.info(
                "block %r has %d dimensions: %d Lanczos steps instead of %d", name, n, n, steps
            )
            extra["steps_requested"] = steps
        sub = root / "blocks" / dirs[name] if root is not None else None
        result[name] = spectral_density(
            block, steps=min(steps, n), out=sub, metadata=extra, **kwargs
        )
        del block  # its kept graphs go with it before the next block's
    return result
