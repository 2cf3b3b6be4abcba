"""torch.distributed Lanczos with real processes: torchrun, gloo, kills, hangs, combine."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import torch
from conftest import matrix_with_spectrum

from spectorch.density import combine_densities, load_density, spectral_density
from spectorch.distributed import shard
from spectorch.linalg import lanczos

ENTRY = textwrap.dedent(
    """
    import os
    import time

    import torch
    from torch import nn

    from spectorch.data import Batches, load_digits


    def problem():
        # float64 and no training: the same network in every process, whatever its threads
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(64, 12), nn.Tanh(), nn.Linear(12, 10)).double().eval()
        X, y = load_digits(split="train", dtype=torch.float64)
        return model, nn.CrossEntropyLoss(), Batches(X[:600], y[:600], 100)


    class Slow:
        # sleeps a little per pass so that a run can be killed half way
        def __init__(self, data, fail_rank=None, rank=0, how=None):
            self.data, self.fail_rank, self.rank, self.how = data, fail_rank, rank, how
            self.passes = 0

        def __iter__(self):
            self.passes += 1
            if self.rank == self.fail_rank and self.passes == 6:
                if self.how == "hang":
                    time.sleep(600)
                os._exit(3)
            time.sleep(0.01)
            yield from self.data


    def slow_problem():
        model, loss, data = problem()
        return model, loss, Slow(data)


    def hanging_problem(rank, world_size):
        model, loss, data = problem()
        mine = [data[i] for i in range(rank, len(data), world_size)]
        return model, loss, Slow(mine, fail_rank=1, rank=rank, how="hang")


    def dying_problem(rank, world_size):
        model, loss, data = problem()
        mine = [data[i] for i in range(rank, len(data), world_size)]
        return model, loss, Slow(mine, fail_rank=1, rank=rank, how="die")
    """
)


def spectorch_cmd(*args: str, nproc: int = 1) -> list[str]:
    if nproc == 1:
        return [sys.executable, "-m", "spectorch.cli", *args]
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "--module",
        "spectorch.cli",
        *args,
    ]


def env() -> dict[str, str]:
    return dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")


def run(*args: str, nproc: int = 1, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        spectorch_cmd(*args, nproc=nproc),
        capture_output=True,
        text=True,
        env=env(),
        timeout=timeout,
    )


@pytest.fixture
def entry(tmp_path):
    path = tmp_path / "problem.py"
    path.write_text(ENTRY)
    return path


def density_args(entry, name: str, out, *extra: str) -> tuple[str, ...]:
    return ("density", f"{entry}:{name}", "--steps", "40", "--out", str(out), "--quiet", *extra)


def tridiags(out) -> dict[int, np.ndarray]:
    return {int(p.stem.split("_")[1]): np.load(p) for p in sorted(out.glob("tridiag_*.npy"))}


def test_two_gloo_processes_give_the_tridiagonal_of_one(tmp_path, entry):
    one, two = tmp_path / "one", tmp_path / "two"
    r1 = run(*density_args(entry, "problem", one, "--draws", "2"))
    assert r1.returncode == 0, r1.stderr
    r2 = run(*density_args(entry, "problem", two, "--draws", "2"), nproc=2)
    assert r2.returncode == 0, r2.stderr + r2.stdout
    assert "on 2 processes" in r2.stdout
    a, b = tridiags(one), tridiags(two)
    assert sorted(a) == sorted(b) == [0, 1]
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=0, atol=1e-10)
    manifest = json.loads((two / "manifest.json").read_text())
    assert manifest["world_size"] == 2
    # rank 0 alone wrote: one manifest, no stray temporary files
    assert not list(two.glob(".*tmp"))


def test_killed_distributed_run_resumes_to_the_uninterrupted_result(tmp_path, entry):
    full, killed = tmp_path / "full", tmp_path / "killed"
    args = ("--draws", "5", "--no-vectors")
    r = run(*density_args(entry, "slow_problem", full, *args))
    assert r.returncode == 0, r.stderr
    proc = subprocess.Popen(
        spectorch_cmd(*density_args(entry, "slow_problem", killed, *args), nproc=2),
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if (killed / "manifest.json").exists():
                break
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks, at once
        proc.wait()
    finished = json.loads((killed / "manifest.json").read_text())["finished_draws"]
    assert 1 <= len(finished) < 5, "the run was not killed half way"
    r = run(*density_args(entry, "slow_problem", killed, *args), nproc=2)
    assert r.returncode == 0, r.stderr
    a, b = tridiags(full), tridiags(killed)
    assert sorted(b) == list(range(5))
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=0, atol=1e-10)
    assert load_density(killed).trace().value == pytest.approx(
        load_density(full).trace().value, rel=1e-8
    )


@pytest.mark.parametrize(
    ("name", "message"),
    [("hanging_problem", "hung past the timeout"), ("dying_problem", None)],
)
def test_a_rank_that_hangs_or_dies_ends_the_job(tmp_path, entry, name, message):
    t0 = time.monotonic()
    # the GGN reads the data at every product (the Hessian keeps its graphs instead)
    args = density_args(entry, name, tmp_path / "out", "--timeout", "5", "--operator", "ggn")
    r = run(*args, nproc=2, timeout=120)
    elapsed = time.monotonic() - t0
    assert r.returncode != 0
    assert elapsed < 90
    if message:
        assert message in r.stderr, r.stderr[-2000:]
        assert "spectorch: error: rank 0" in r.stderr


@pytest.mark.slow  # four command-line runs, 40 s; the combine itself is tested in-process
def test_one_draw_per_job_then_combine(tmp_path, entry):
    whole = tmp_path / "whole"
    r = run(*density_args(entry, "problem", whole, "--draws", "3"))
    assert r.returncode == 0, r.stderr
    jobs = []
    for k in range(3):
        out = tmp_path / f"job{k}"
        r = run(*density_args(entry, "problem", out, "--draw-index", str(k), "--basis", "disk"))
        assert r.returncode == 0, r.stderr
        assert (out / f"lanczos_vec_{k}.npy").exists() and not list(out.glob("*.partial"))
        jobs.append(str(out))
    merged = tmp_path / "merged"
    r = run("density", "combine", *jobs, "--out", str(merged))
    assert r.returncode == 0, r.stderr
    a, b = tridiags(whole), tridiags(merged)
    assert sorted(b) == [0, 1, 2]
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=0, atol=1e-12)
    summary = json.loads((merged / "summary.json").read_text())
    assert summary["draws"] == 3 and (merged / "density.png").exists()
    # job k pays one product for draw k-1's probe; the trace matches the one-job run
    assert summary["trace"] == pytest.approx(
        json.loads((whole / "summary.json").read_text())["trace"], rel=1e-8
    )
    r = run("density", "combine", jobs[0], jobs[0], "--out", str(tmp_path / "dup"))
    assert r.returncode == 2 and "draw 0 is in both" in r.stderr
    assert not (tmp_path / "dup").exists()


def test_combine_refuses_runs_of_different_studies(tmp_path):
    A = matrix_with_spectrum(torch.linspace(0, 1, 40))
    spectral_density(A, steps=10, draws=[0], seed=1, out=tmp_path / "a", progress=False)
    spectral_density(A, steps=10, draws=[1], seed=2, out=tmp_path / "b", progress=False)
    spectral_density(A, steps=10, draws=[1], seed=1, out=tmp_path / "c", progress=False)
    with pytest.raises(ValueError, match="seed: 1 in"):
        combine_densities([tmp_path / "a", tmp_path / "b"])
    with pytest.raises(ValueError, match="not a spectorch density run"):
        combine_densities([tmp_path / "a", tmp_path])
    with pytest.raises(ValueError, match="directories is empty"):
        combine_densities([])
    merged = combine_densities([tmp_path / "a", tmp_path / "c"])
    whole = spectral_density(A, steps=10, draws=2, seed=1, progress=False)
    for x, y in zip(whole.nodes, merged.nodes, strict=True):
        np.testing.assert_array_equal(x, y)


def quadrature_moments(res, powers=(1, 2, 4, 8)) -> np.ndarray:
    nodes, weights = res.quadrature()
    return np.array([(weights * nodes**p).sum() for p in powers])


@pytest.mark.parametrize("basis", ["float32", "disk"])
def test_basis_modes_match_memory(tmp_path, basis):
    A = matrix_with_spectrum(torch.cat([torch.linspace(0, 1, 190), torch.tensor([5.0] * 10)]))
    ref = lanczos(A, 60, seed=3)
    res = lanczos(A, 60, seed=3, basis=basis, basis_dir=tmp_path)
    Q = res.basis.to(torch.float64)
    assert res.basis.dtype == (torch.float32 if basis == "float32" else torch.float64)
    ortho = float((Q @ Q.T - torch.eye(Q.shape[0], dtype=torch.float64)).abs().max())
    exact = [
        float(ref.basis[0] @ torch.linalg.matrix_power(A, p) @ ref.basis[0]) for p in (1, 2, 4, 8)
    ]
    if basis == "float32":
        # orthogonal to float32 precision: once the outlier has converged, later
        # coefficients drift, but the quadrature keeps float32 accuracy
        assert ortho < 1e-6
        np.testing.assert_allclose(quadrature_moments(res), exact, rtol=1e-7)
        assert res.quadrature()[0].max() == pytest.approx(5.0, abs=1e-6)
        return
    # disk: float64 rows, the same recurrence up to the order of additions (until the
    # outlier converges; from then on round-off differences grow in any two codes)
    np.testing.assert_allclose(res.alphas[:10], ref.alphas[:10], rtol=0, atol=1e-12)
    np.testing.assert_allclose(res.betas[:10], ref.betas[:10], rtol=0, atol=1e-12)
    np.testing.assert_allclose(quadrature_moments(res), exact, rtol=1e-12)
    assert ortho < 1e-12
    assert res.basis_file is not None and res.basis_file.parent == tmp_path
    z = torch.randn(200, dtype=torch.float64)
    np.testing.assert_allclose(res.project(z), res.basis @ z, atol=1e-12)


def test_disk_basis_in_a_run_and_after_a_breakdown(tmp_path):
    # 12 distinct eigenvalues: the Krylov space is invariant after 12 steps
    A = torch.diag(torch.arange(12.0, dtype=torch.float64).repeat_interleave(5))
    ref = spectral_density(A, steps=20, draws=2, seed=0, progress=False)
    dens = spectral_density(
        A, steps=20, draws=2, seed=0, basis="disk", out=tmp_path, progress=False
    )
    for x, y in zip(ref.nodes, dens.nodes, strict=True):
        np.testing.assert_allclose(x, y, atol=1e-10)
    for k in range(2):
        Q = np.load(tmp_path / f"lanczos_vec_{k}.npy")
        assert Q.shape == (12, 60)
        np.testing.assert_allclose(Q @ Q.T, np.eye(12), atol=1e-12)
    assert not list(tmp_path.glob("*.partial")) and not list(tmp_path.glob("*.trunc"))
    # no out: the temporary files go away with the run
    spectral_density(A, steps=20, draws=1, basis="disk", progress=False, save_vectors=False)


def test_disk_basis_needs_float64(tmp_path):
    A = matrix_with_spectrum(torch.linspace(0, 1, 20))
    with pytest.raises(ValueError, match="basis='disk' stores float64"):
        spectral_density(A, steps=5, draws=1, basis="disk", dtype="float32", out=tmp_path)
    with pytest.raises(ValueError, match="basis must be one of"):
        spectral_density(A, steps=5, draws=1, basis="gpu")
    assert not any(tmp_path.iterdir())


def test_shards_are_disjoint_and_cover_the_data():
    data = list(range(10))
    shards = [list(shard(data, r, 3)) for r in range(3)]
    assert sorted(x for s in shards for x in s) == data
    assert [len(shard(data, r, 3)) for r in range(3)] == [4, 3, 3]

    class Stream:  # neither len nor indexing: batches of other ranks are iterated past
        def __iter__(self):
            return iter([1, 2, 3])

    assert list(shard(Stream(), 1, 2)) == [2]
    with pytest.raises(ValueError, match="data has 2 batches for 3 ranks"):
        shard([1, 2], 0, 3)
    with pytest.raises(ValueError, match="rank must be an int in"):
        shard(data, 3, 3)
