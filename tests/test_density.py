"""Densities: the original's conventions, moments, traces, resumable runs."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from conftest import matrix_with_spectrum

from spectorch.density import (
    SpectralDensity,
    combine_densities,
    draw_generator,
    eigv_to_density,
    load_density,
    spectral_density,
    tridiag_to_density,
    tridiag_to_eigv,
)
from spectorch.linalg import deflated_trace_sample, lanczos, lanczos_block, random_start


def _spectrum(n: int = 300) -> torch.Tensor:
    # a bulk near zero and three outliers, like a trained network's Hessian
    bulk = torch.linspace(-0.5, 1.0, n - 3, dtype=torch.float64) ** 3
    return torch.cat([bulk, torch.tensor([8.0, 20.0, 45.0], dtype=torch.float64)])


class Counting:
    """An operator that counts products and can fail at a chosen one."""

    def __init__(self, A: torch.Tensor, fail_at: int | None = None) -> None:
        self.A, self.fail_at, self.calls = A, fail_at, 0
        self.shape, self.dtype = tuple(A.shape), A.dtype

    def matvec(self, v):
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise KeyboardInterrupt
        return self.A @ v


def test_tridiag_to_eigv_matches_eigh():
    A = matrix_with_spectrum(_spectrum(50))
    Ts = [lanczos(A, 10, seed=s).tridiagonal.numpy() for s in range(3)]
    eig_vals, weights = tridiag_to_eigv(Ts)
    assert eig_vals.shape == (3, 10) and weights.shape == (3, 10)
    for T, x, w in zip(Ts, eig_vals, weights, strict=True):
        vals, vecs = np.linalg.eigh(T)
        np.testing.assert_allclose(x, vals, atol=1e-12)
        np.testing.assert_allclose(w, vecs[0] ** 2, atol=1e-12)


def test_original_density_formula():
    # one draw, two nodes: the original's Gaussian kernel with variance
    # sigma_squared · max(1, range), normalised on its grid
    eig_vals = np.array([[0.0, 4.0]])
    weights = np.array([[0.25, 0.75]])
    density, grids = eigv_to_density(eig_vals, weights, grid_len=2001, sigma_squared=0.01)
    assert grids[0] == pytest.approx(-0.01) and grids[-1] == pytest.approx(4.01)
    var = 0.01 * 4.02
    raw = 0.25 * np.exp(-(grids**2) / (2 * var)) + 0.75 * np.exp(-((grids - 4) ** 2) / (2 * var))
    raw /= math.sqrt(2 * math.pi * var)
    raw /= raw.sum() * (grids[1] - grids[0])
    np.testing.assert_allclose(density, raw, rtol=1e-12)
    assert density.sum() * (grids[1] - grids[0]) == pytest.approx(1.0, abs=1e-12)


def test_tridiag_to_density_defaults():
    A = matrix_with_spectrum(_spectrum(80))
    T = lanczos(A, 20, seed=0).tridiagonal
    density, grids = tridiag_to_density([T])
    assert density.shape == grids.shape == (10000,)
    # normalised as the original does: a Riemann sum on the grid
    assert density.sum() * (grids[1] - grids[0]) == pytest.approx(1.0, abs=1e-12)
    assert grids[0] == pytest.approx(T.diagonal().min().item() - 1, abs=1)  # spans the nodes


def test_spacing_width_is_scale_free():
    A = matrix_with_spectrum(_spectrum(100))
    d1 = spectral_density(A, steps=30, draws=3, progress=False)
    d2 = spectral_density(7.0 * A, steps=30, draws=3, progress=False)
    g1, p1 = d1.evaluate()
    g2, p2 = d2.evaluate()
    np.testing.assert_allclose(g2, 7.0 * g1, rtol=1e-10)
    np.testing.assert_allclose(p2, p1 / 7.0, rtol=1e-8)
    lo, hi = d1.bounds()
    assert d1.sigma(kappa=3.0) == pytest.approx((hi - lo) / 29 / math.sqrt(8 * math.log(3.0)))
    assert np.trapezoid(p1, g1) == pytest.approx(1.0, abs=1e-3)
    with pytest.raises(ValueError, match="width must be one of"):
        d1.evaluate(width="silverman")
    with pytest.raises(ValueError, match="kappa must be greater than 1"):
        d1.sigma(kappa=1.0)


def test_moments_top_eigenvalues_and_cdf():
    ev = _spectrum()
    A = matrix_with_spectrum(ev)
    dens = spectral_density(A, steps=60, draws=8, seed=1, progress=False)
    n = ev.numel()
    # top eigenvalues: isolated, converged to round-off
    np.testing.assert_allclose(dens.top_eigenvalues(3), [45.0, 20.0, 8.0], rtol=1e-12)
    np.testing.assert_allclose(dens.outliers(), [45.0, 20.0, 8.0], rtol=1e-12)
    assert dens.bottom_eigenvalues(1)[0] == pytest.approx(-0.125, abs=1e-6)
    # moments: unbiased, within 5 standard errors of tr(Aᵐ)/n
    per_draw = np.array(
        [[np.sum(w * x**m) for m in (1, 2)] for x, w in zip(dens.nodes, dens.weights, strict=True)]
    )
    se = per_draw.std(axis=0, ddof=1) / math.sqrt(dens.draws)
    exact = np.array([float(ev.sum()) / n, float((ev**2).sum()) / n])
    assert np.all(np.abs(dens.moments([1, 2]) - exact) < 5 * se)
    assert dens.cdf(ev.max().item() + 1) == pytest.approx(1.0)
    assert dens.cdf(ev.min().item() - 1) == 0.0
    assert dens.wasserstein(ev) < 0.01 * float(ev.max() - ev.min())


def test_deflated_trace_beats_hutchinson():
    ev = _spectrum()
    A = matrix_with_spectrum(ev)
    dens = spectral_density(A, steps=40, draws=10, seed=2, progress=False)
    exact = float(ev.sum())
    deflated, plain = dens.trace("deflated"), dens.trace("quadrature")
    assert deflated.samples == 9 and plain.samples == 10
    assert abs(deflated.value - exact) < 5 * deflated.stderr + 1e-9
    # the bulk of this spectrum is wide, so deflating the outliers gains "only" 4x here;
    # on the digits Hessian it is 40x (see test_digits_slq.py)
    assert deflated.stderr < plain.stderr / 4
    assert dens.trace().value == deflated.value
    with pytest.raises(ValueError, match="method must be"):
        dens.trace("exact")


def test_deflated_trace_is_exact_when_krylov_space_holds_the_range():
    # rank-5 A: a generic Krylov space of 6+ steps contains A's whole range, so
    # (I - P) A (I - P) = 0 and every deflated sample is tr(A) exactly.
    g = torch.Generator().manual_seed(0)
    U, _ = torch.linalg.qr(torch.randn(40, 5, generator=g, dtype=torch.float64))
    A = U @ torch.diag(torch.tensor([1.0, 2.0, 3.0, 5.0, 8.0], dtype=torch.float64)) @ U.T
    dens = spectral_density(A, steps=10, draws=3, progress=False)
    assert dens.trace().samples == 2
    np.testing.assert_allclose(dens.trace_samples, [19.0, 19.0], rtol=1e-12)


def test_density_from_a_single_draw_has_no_deflated_trace():
    A = matrix_with_spectrum(_spectrum(40))
    dens = spectral_density(A, steps=10, draws=1, progress=False)
    assert dens.trace().samples == 1
    with pytest.raises(ValueError, match="need at least two draws"):
        dens.trace("deflated")


def test_probes_per_pass_gives_the_same_draws():
    A = matrix_with_spectrum(_spectrum(60))
    a = spectral_density(A, steps=15, draws=5, seed=3, progress=False)
    b = spectral_density(A, steps=15, draws=5, seed=3, probes_per_pass=2, progress=False)
    for x, y in zip(a.nodes, b.nodes, strict=True):
        np.testing.assert_allclose(x, y, atol=1e-12)
    assert a.trace().value == pytest.approx(b.trace().value, rel=1e-12)


def test_reused_basis_keeps_the_carried_probe():
    # one draw per pass reuses one basis: draw k's deflated trace sample needs draw
    # k-1's first two rows, carried over from the previous pass that the next overwrites
    A = matrix_with_spectrum(_spectrum(60))
    one = spectral_density(A, steps=15, draws=5, seed=3, progress=False)
    all_ = spectral_density(A, steps=15, draws=5, seed=3, probes_per_pass=5, progress=False)
    assert len(one.trace_samples) == 4
    np.testing.assert_allclose(one.trace_samples, all_.trace_samples, rtol=1e-12)


@pytest.mark.parametrize(
    ("basis", "dtype"), [("memory", torch.float64), ("float32", torch.float64),
                         ("disk", torch.float64), ("memory", torch.float32)]
)  # fmt: skip
@pytest.mark.parametrize("per_pass", [1, 2])
def test_each_draw_is_the_run_from_its_own_start(basis, dtype, per_pass):
    # the starts are drawn where the runs keep them (the basis's first row; with float32
    # or disk rows the first slot of the runs' window), the last group is smaller, and
    # the previous draw's first rows are carried as stored: every draw is still the run
    # from draw_generator's vector, bit for bit, and so is each deflated trace sample
    # (a float32 recurrence: the float64 vector rounded by the run)
    A = matrix_with_spectrum(_spectrum(60))
    kw = dict(steps=15, draws=5, seed=3, basis=basis, dtype=dtype, probes_per_pass=per_pass)
    dens = spectral_density(A, progress=False, **kw)
    runs = []
    for first in range(0, 5, per_pass):
        group = range(first, min(5, first + per_pass))
        starts = torch.stack([random_start(60, generator=draw_generator(3, k)) for k in group])
        runs += lanczos_block(A, 15, starts, basis=basis, dtype=dtype)
    ts = [r.tridiagonal.numpy() for r in runs]
    samples = []
    for previous, res in itertools.pairwise(runs):
        q0, q1 = previous.row(0), previous.row(1)
        z, az = 60**0.5 * q0, 60**0.5 * (previous.alphas[0] * q0 + previous.betas[0] * q1)
        samples.append(deflated_trace_sample(res, res.tridiagonal, z, az))
    want = SpectralDensity.from_tridiagonals(ts, 60, steps=15, trace_samples=samples)
    for a, b in zip(want.nodes + want.weights, dens.nodes + dens.weights, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(want.trace_samples, dens.trace_samples)


@pytest.mark.parametrize(
    ("basis", "kept", "per_pass"), [("memory", torch.float64, 2), ("float32", torch.float32, 1)]
)
def test_caller_workspace_changes_nothing(basis, kept, per_pass):
    # the workspace is filled with NaN: a row read before it is written would show
    A = matrix_with_spectrum(_spectrum(60))
    kw = dict(steps=15, draws=5, seed=3, basis=basis, probes_per_pass=per_pass, progress=False)
    plain = spectral_density(A, **kw)
    space = torch.full((per_pass, 15, 60), float("nan"), dtype=kept)
    for _ in range(2):  # again with what the first call left there
        dens = spectral_density(A, workspace=space, **kw)
        for a, b in zip(plain.nodes + plain.weights, dens.nodes + dens.weights, strict=True):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(plain.trace_samples, dens.trace_samples)
    assert not bool(torch.isnan(space[0, :2]).any())  # the bases were kept there


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"workspace": torch.empty(1, 14, 60, dtype=torch.float64)}, r"shape \(1, 15, 60\)"),
        ({"workspace": torch.empty(2, 15, 60, dtype=torch.float64)}, r"shape \(1, 15, 60\)"),
        ({"workspace": torch.empty(1, 15, 60, dtype=torch.float64), "basis": "float32"},
         "dtype torch.float32"),
        ({"workspace": torch.empty(1, 15, 60, dtype=torch.float64), "basis": "disk"},
         "basis='disk' takes none"),
        ({"workspace": torch.empty(1, 15, 60, dtype=torch.float64), "blocks": [[0, 1]]},
         "blocks= runs one per block"),
        ({"workspace": [1.0]}, "workspace must be a torch.Tensor"),
    ],
)  # fmt: skip
def test_bad_workspace_is_refused_before_any_product(kwargs, match):
    op = Counting(matrix_with_spectrum(_spectrum(60)))
    with pytest.raises((ValueError, TypeError), match=match):
        spectral_density(op, steps=15, draws=2, progress=False, **kwargs)
    assert op.calls == 0


def test_outputs_are_the_originals_files(tmp_path):
    A = matrix_with_spectrum(_spectrum(60))
    dens = spectral_density(A, steps=12, draws=3, seed=4, out=tmp_path / "run", progress=False)
    run = tmp_path / "run"
    for k in range(3):
        T = np.load(run / f"tridiag_{k}.npy")
        V = np.load(run / f"lanczos_vec_{k}.npy")
        assert T.shape == (12, 12) and V.shape == (12, 60)
        np.testing.assert_allclose(V @ A.numpy() @ V.T, T, atol=1e-10)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["finished_draws"] == [0, 1, 2]
    assert manifest["steps"] == 12 and manifest["seed"] == 4 and manifest["dtype"] == "float64"
    assert set(manifest["versions"]) >= {"spectorch", "torch", "numpy", "python"}
    assert not list(run.glob("*.tmp"))
    loaded = load_density(run)
    np.testing.assert_allclose(loaded.moments([1, 2]), dens.moments([1, 2]), rtol=1e-12)
    assert loaded.trace().value == pytest.approx(dens.trace().value, rel=1e-12)


def test_interrupted_run_resumes_from_last_finished_draw(tmp_path):
    A = matrix_with_spectrum(_spectrum(60))
    steps, draws = 10, 4
    full = spectral_density(A, steps=steps, draws=draws, seed=5, progress=False)
    # die in the middle of draw 2 (products 1-2 are the symmetry probe)
    op = Counting(A, fail_at=2 + 2 * steps + 5)
    with pytest.raises(KeyboardInterrupt):
        spectral_density(op, steps=steps, draws=draws, seed=5, out=tmp_path, progress=False)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["finished_draws"] == [0, 1]
    assert not (tmp_path / "tridiag_2.npy").exists() and not list(tmp_path.glob(".*tmp"))
    op = Counting(A)
    resumed = spectral_density(op, steps=steps, draws=draws, seed=5, out=tmp_path, progress=False)
    assert op.calls == 2 + 2 * steps  # only draws 2 and 3 were computed again
    for x, y in zip(full.nodes, resumed.nodes, strict=True):
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-13)
    assert resumed.trace().value == pytest.approx(full.trace().value, rel=1e-12)


def test_resume_with_other_settings_is_refused(tmp_path):
    A = matrix_with_spectrum(_spectrum(30))
    spectral_density(A, steps=5, draws=1, seed=0, out=tmp_path, progress=False)
    with pytest.raises(ValueError, match=r"other settings .*steps: 5 there, 6 now"):
        spectral_density(A, steps=6, draws=1, seed=0, out=tmp_path, progress=False)


def test_a_run_with_the_earlier_rademacher_signs_is_not_resumed(tmp_path):
    # before issue 18's GPU round a Rademacher start took one random number per entry;
    # its manifests have no start_signs, and their draws are other vectors
    import json

    A = matrix_with_spectrum(_spectrum(30))
    spectral_density(A, steps=5, draws=1, seed=0, out=tmp_path, progress=False)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["start_signs"] == "bits of 32-bit words"
    del manifest["start_signs"]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match=r"start_signs: not set there, 'bits of 32-bit words' now"):
        spectral_density(A, steps=5, draws=2, seed=0, out=tmp_path, progress=False)
    # Gaussian starts are drawn as before: no such key
    spectral_density(A, steps=5, draws=1, seed=0, start="gaussian", out=tmp_path / "g",
                     progress=False)  # fmt: skip
    assert "start_signs" not in json.loads((tmp_path / "g" / "manifest.json").read_text())


def test_failure_before_any_draw_leaves_nothing(tmp_path):
    A = matrix_with_spectrum(_spectrum(30))
    B = A.clone()
    B[0, 3] += 1.0
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="not symmetric"):
        spectral_density(B, steps=5, out=out, progress=False)
    assert not out.exists()
    C = A.clone()
    C[2, 2] = float("nan")
    with pytest.raises(FloatingPointError, match="NaN or inf"):
        spectral_density(C, steps=5, out=out, progress=False, check_symmetry=False)
    assert not out.exists()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"steps": 0}, "steps must be a positive int, got 0"),
        ({"steps": 31}, "at most the operator's dimension 30"),
        ({"draws": -1}, "draws must be a positive int"),
        ({"seed": -3}, "seed must be a non-negative int"),
        ({"start": "sobol"}, "start must be 'rademacher' or 'gaussian'"),
        ({"dtype": "float16"}, "dtype must be one of"),
        ({"probes_per_pass": 0}, "probes_per_pass must be a positive int"),
    ],
)
def test_bad_arguments(kwargs, match):
    A = matrix_with_spectrum(_spectrum(30))
    with pytest.raises(ValueError, match=match):
        spectral_density(A, **{"steps": 5, "progress": False, **kwargs})


def test_spectral_density_object_checks():
    with pytest.raises(ValueError, match="non-empty lists"):
        SpectralDensity([], [], 3)
    dens = SpectralDensity([np.array([1.0, 2.0])], [np.array([0.5, 0.5])], 2)
    with pytest.raises(ValueError, match=r"k must be an int in \[1, 2\]"):
        dens.top_eigenvalues(3)


def test_auto_reorthogonalisation_is_partial_on_a_network_and_says_so(tmp_path):
    # the default: partial on a curvature operator (it declares its compute_dtype),
    # the same density as full reorthogonalisation (google/spectral-density's) to
    # working precision; the manifest names the mode, for every draw, also when a
    # run made with full reorthogonalisation (the earlier default) is resumed
    from conftest import inputs_for, mlp, targets_for

    from spectorch.curvature import HessianOperator

    X, y = inputs_for("mlp", 40), targets_for("ce", 40)
    op = HessianOperator(mlp(), torch.nn.CrossEntropyLoss(), [(X, y)])
    full = spectral_density(op, steps=30, draws=3, seed=2, reorth="full",
                            out=tmp_path, progress=False)  # fmt: skip
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert "reorth" not in manifest  # full runs' manifests stay as they were
    for info in manifest["draw_info"].values():
        del info["reorth"]  # as an earlier version wrote them
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    auto = spectral_density(op, steps=30, draws=4, seed=2, out=tmp_path, progress=False)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    labels = [manifest["draw_info"][str(k)].get("reorth") for k in range(4)]
    assert labels == [None, None, None, "partial"]
    fresh = spectral_density(op, steps=30, draws=4, seed=2, out=tmp_path / "new",
                             progress=False)  # fmt: skip
    manifest = json.loads((tmp_path / "new" / "manifest.json").read_text())
    assert manifest["reorth"] == "partial"
    assert fresh.metadata["reorth"] == "partial"
    assert [info["reorth"] for info in manifest["draw_info"].values()] == ["partial"] * 4
    for a, b in zip(full.nodes + auto.nodes[3:], fresh.nodes, strict=True):
        np.testing.assert_allclose(np.sort(b)[-5:], np.sort(a)[-5:], rtol=1e-10)
    for p in (1, 2, 4):
        assert float(auto.moments(p)) == pytest.approx(float(fresh.moments(p)), rel=1e-10)


def test_partial_reorthogonalisation_gives_the_same_density(tmp_path):
    # a spectrum with far outliers, which make Lanczos lose orthogonality fast
    g = torch.Generator().manual_seed(0)
    d = torch.cat(
        [
            torch.randn(1994, generator=g, dtype=torch.float64) * 0.05,
            torch.tensor([3.0, 8.0, 15.0, 40.0, 90.0, 250.0], dtype=torch.float64),
        ]
    )
    A = torch.diag(d)
    full = spectral_density(A, steps=60, draws=2, seed=3, progress=False)
    part = spectral_density(
        A, steps=60, draws=2, seed=3, reorth="partial", out=tmp_path, progress=False
    )
    for a, b in zip(full.nodes, part.nodes, strict=True):
        np.testing.assert_allclose(np.sort(b)[-6:], np.sort(a)[-6:], rtol=1e-11)
    for p in (1, 2, 4, 8):
        assert float(part.moments(p)) == pytest.approx(float(full.moments(p)), rel=1e-10)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["reorth"] == "partial"
    label = "operator precision, neighbours in the basis's"
    assert manifest["reorth_estimates"] == label
    # a run whose estimates took float32's eps for the neighbours too only
    # reorthogonalised more often: it is resumed, each draw labelled with its own
    manifest["reorth_estimates"] = "coarsest precision"
    for info in manifest["draw_info"].values():
        del info["reorth_estimates"]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    more = spectral_density(
        A, steps=60, draws=3, seed=3, reorth="partial", out=tmp_path, progress=False
    )
    for a, b in zip(part.nodes, more.nodes[:2], strict=True):
        np.testing.assert_array_equal(a, b)  # the first two draws read back
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["reorth_estimates"] == "coarsest precision"
    labels = [manifest["draw_info"][k].get("reorth_estimates") for k in ("0", "1", "2")]
    assert labels == [None, None, label]
    # a partial run made before the estimates followed the operator's precision (no
    # such key) is not resumed: its draws can hold spurious eigenvalues
    del manifest["reorth_estimates"]
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="not resumed: choose another out directory"):
        spectral_density(
            A, steps=60, draws=2, seed=3, reorth="partial", out=tmp_path, progress=False
        )
    # nor merged into another run
    with pytest.raises(ValueError, match="not combined: choose another out directory"):
        combine_densities([tmp_path], out=tmp_path / "merged")
    with pytest.raises(ValueError, match="reorth must be one of"):
        spectral_density(A, steps=5, draws=1, reorth="none", progress=False)


def _network_hessian(dtype: torch.dtype):
    from torch import nn

    from spectorch.curvature import HessianOperator

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.Tanh(), nn.Linear(12, 3)).to(dtype)
    X = torch.randn(50, 6, generator=torch.Generator().manual_seed(1), dtype=dtype)
    return HessianOperator(model, nn.CrossEntropyLoss(), [(X, torch.arange(50) % 3)])


def test_auto_basis_keeps_a_float32_networks_rows_in_float32(tmp_path):
    # basis="auto", the default: a float32 network's products carry float32 round-off
    # and partial reorthogonalisation keeps the rows orthogonal to its √eps, no better,
    # so the rows are float32: the density of basis="float32" bit for bit, said in the
    # manifest (for each draw too) and in the saved vectors' dtype
    H = _network_hessian(torch.float32)
    kw = dict(steps=20, draws=3, seed=1, progress=False)
    auto = spectral_density(H, out=tmp_path / "auto", **kw)
    named = spectral_density(H, basis="float32", **kw)
    for a, b in zip(auto.nodes + auto.weights, named.nodes + named.weights, strict=True):
        np.testing.assert_array_equal(a, b)
    manifest = json.loads((tmp_path / "auto" / "manifest.json").read_text())
    assert manifest["basis"] == "float32" and manifest["reorth"] == "partial"
    assert {info["basis"] for info in manifest["draw_info"].values()} == {"float32"}
    assert np.load(tmp_path / "auto" / "lanczos_vec_0.npy").dtype == np.float32
    # float64 rows where they keep more: a float64 network, full reorthogonalisation,
    # a float32 recurrence (whose rows are float32 anyway)
    for op, extra in ((_network_hessian(torch.float64), {}), (H, {"reorth": "full"}),
                      (H, {"dtype": torch.float32})):  # fmt: skip
        out = tmp_path / f"other{len(list(tmp_path.iterdir()))}"
        spectral_density(op, out=out, **extra, **kw)
        assert json.loads((out / "manifest.json").read_text())["basis"] == "memory"
        dtype = np.float32 if extra.get("dtype") == torch.float32 else np.float64
        assert np.load(out / "lanczos_vec_0.npy").dtype == dtype
