"""Lanczos, quadrature and traces against matrices with a known spectrum."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import matrix_with_spectrum

from spectorch.density import lanczos_alg
from spectorch.linalg import (
    MatrixOperator,
    _basis,
    _lanczos,
    accepts_out,
    check_symmetric,
    gauss_quadrature,
    hutchinson_trace,
    lanczos,
    lanczos_block,
    rademacher_signs,
    random_start,
    resolve_reorth,
)

EXACT = 1e-10  # float64 round-off of an n=60 eigenproblem, with room to spare


@pytest.fixture
def spectrum() -> torch.Tensor:
    # distinct eigenvalues with a cluster, a negative part and two outliers
    bulk = torch.linspace(-1.0, 2.0, 55, dtype=torch.float64)
    return torch.cat([bulk, torch.tensor([2.0 + 1e-3, 5.0, 7.5, 30.0, 100.0], dtype=torch.float64)])


def test_full_lanczos_reproduces_eigenvalues(spectrum):
    A = matrix_with_spectrum(spectrum)
    res = lanczos(A, steps=A.shape[0], seed=3)
    assert not res.breakdown and res.steps == A.shape[0]
    ritz = torch.linalg.eigvalsh(res.tridiagonal)
    torch.testing.assert_close(ritz, torch.sort(spectrum).values, rtol=0, atol=EXACT * 100)


def test_basis_reconstructs_matrix(spectrum):
    A = matrix_with_spectrum(spectrum)
    res = lanczos(A, steps=A.shape[0], seed=4)
    Q, T = res.basis, res.tridiagonal
    torch.testing.assert_close(
        Q @ Q.T, torch.eye(A.shape[0], dtype=torch.float64), rtol=0, atol=EXACT
    )
    torch.testing.assert_close(Q.T @ T @ Q, A, rtol=0, atol=EXACT * 100)


def test_partial_lanczos_is_orthonormal_and_projects(spectrum):
    A = matrix_with_spectrum(spectrum)
    res = lanczos(A, steps=20, start="gaussian", seed=5)
    Q = res.basis
    torch.testing.assert_close(Q @ Q.T, torch.eye(20, dtype=torch.float64), rtol=0, atol=EXACT)
    torch.testing.assert_close(Q @ A @ Q.T, res.tridiagonal, rtol=0, atol=EXACT * 100)
    # the largest Ritz value converges to the isolated top eigenvalue
    assert abs(torch.linalg.eigvalsh(res.tridiagonal)[-1].item() - 100.0) < 1e-8


def test_quadrature_moments_are_exact_for_diagonal_rademacher(spectrum):
    # For diagonal A and a Rademacher start v = z/√n: vᵀAᵐv = tr(Aᵐ)/n exactly.
    A = torch.diag(spectrum)
    n = A.shape[0]
    res = lanczos(A, steps=10, start="rademacher", seed=0)
    nodes, weights = res.quadrature()
    assert weights.sum() == pytest.approx(1.0, abs=1e-14)
    for m in (1, 2, 3):
        exact = float((spectrum**m).sum() / n)
        assert np.sum(weights * nodes**m) == pytest.approx(exact, rel=1e-12)


def test_quadrature_equals_quadratic_form(spectrum):
    A = matrix_with_spectrum(spectrum)
    v = random_start(A.shape[0], kind="gaussian", generator=torch.Generator().manual_seed(2))
    res = lanczos(A, steps=8, start=v)
    nodes, weights = res.quadrature()
    for m in range(1, 16):  # exact for degree < 2·steps
        exact = float(v @ torch.linalg.matrix_power(A, m) @ v)
        assert np.sum(weights * nodes**m) == pytest.approx(exact, rel=1e-9)


def test_breakdown_stops_cleanly():
    # 3 distinct eigenvalues: the Krylov space is invariant after 3 steps.
    A = torch.diag(torch.tensor([1.0, 1.0, 2.0, 2.0, 3.0, 3.0], dtype=torch.float64))
    res = lanczos(A, steps=6, seed=0)
    assert res.breakdown and res.steps == 3
    nodes, weights = res.quadrature()
    np.testing.assert_allclose(nodes, [1.0, 2.0, 3.0], atol=1e-13)
    np.testing.assert_allclose(weights, [1 / 3] * 3, atol=1e-13)
    assert torch.isfinite(res.basis).all()


def test_zero_operator_breaks_down_at_first_step():
    res = lanczos(torch.zeros(5, 5, dtype=torch.float64), steps=4, seed=0)
    assert res.breakdown and res.steps == 1 and res.alphas.item() == 0.0


def test_block_matches_single_runs(spectrum):
    A = matrix_with_spectrum(spectrum)
    starts = random_start(A.shape[0], num=3, generator=torch.Generator().manual_seed(9))
    block = lanczos_block(A, 15, starts)
    for i, res in enumerate(block):
        single = lanczos(A, 15, start=starts[i])
        torch.testing.assert_close(res.alphas, single.alphas, rtol=0, atol=1e-12)
        torch.testing.assert_close(res.betas, single.betas, rtol=0, atol=1e-12)


def test_block_handles_one_draw_breaking_down():
    A = torch.diag(torch.tensor([1.0, 1.0, 2.0, 2.0, 3.0, 4.0], dtype=torch.float64))
    e = torch.zeros(6, dtype=torch.float64)
    e[0] = 1.0  # an eigenvector: breakdown after one step
    starts = torch.stack([e, torch.ones(6, dtype=torch.float64)])
    a, b = lanczos_block(A, 5, starts)
    assert a.breakdown and a.steps == 1 and a.alphas.item() == pytest.approx(1.0)
    assert b.breakdown and b.steps == 4
    np.testing.assert_allclose(b.quadrature()[0], [1, 2, 3, 4], atol=1e-12)


def test_seed_and_generator_are_reproducible(spectrum):
    A = matrix_with_spectrum(spectrum)
    r1 = lanczos(A, 10, seed=11)
    r2 = lanczos(A, 10, generator=torch.Generator().manual_seed(11))
    torch.testing.assert_close(r1.alphas, r2.alphas, rtol=0, atol=0)
    assert not torch.equal(r1.alphas, lanczos(A, 10, seed=12).alphas)


def test_float32_recurrence(spectrum):
    A = matrix_with_spectrum(spectrum)
    res = lanczos(A, A.shape[0], seed=0, dtype=torch.float32)
    assert res.alphas.dtype == torch.float32
    ritz = torch.linalg.eigvalsh(res.tridiagonal.double())
    torch.testing.assert_close(ritz, torch.sort(spectrum).values, rtol=0, atol=1e-3)


def test_lanczos_alg_keeps_the_original_signature(spectrum):
    A = matrix_with_spectrum(spectrum)
    n = A.shape[0]
    tridiag, vecs = lanczos_alg(lambda v: A @ v, n, 12, 0)
    assert tridiag.shape == (12, 12) and vecs.shape == (12, n)
    torch.testing.assert_close(vecs @ A @ vecs.T, tridiag, rtol=0, atol=1e-10)
    # the same seed gives the same tridiagonal; Gaussian start as the original
    torch.testing.assert_close(lanczos_alg(lambda v: A @ v, n, 12, 0)[0], tridiag)
    start = random_start(n, kind="gaussian", generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(lanczos(A, 12, start=start).tridiagonal, tridiag)


def test_gauss_quadrature_single_step():
    nodes, weights = gauss_quadrature(torch.tensor([2.5]), torch.tensor([]))
    assert nodes.tolist() == [2.5] and weights.tolist() == [1.0]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"steps": 0}, "steps must be a positive int, got 0"),
        ({"steps": 2.5}, "steps must be a positive int"),
        ({"steps": 61}, "steps must be at most the dimension n=60"),
        ({"steps": 5, "start": "uniform"}, "start must be one of"),
        ({"steps": 5, "start": torch.ones(3)}, r"start must have shape \(60,\)"),
        ({"steps": 5, "start": torch.zeros(60)}, "finite and non-zero"),
    ],
)
def test_bad_arguments(spectrum, kwargs, match):
    A = matrix_with_spectrum(spectrum)
    with pytest.raises(ValueError, match=match):
        lanczos(A, **kwargs)


def test_non_square_and_non_operator():
    with pytest.raises(ValueError, match="must be square"):
        lanczos(torch.ones(3, 4), 2)
    with pytest.raises(TypeError, match="lacks shape, dtype, matvec"):
        lanczos(object(), 2)


def test_nan_product_is_an_error():
    A = torch.eye(4, dtype=torch.float64)
    A[1, 1] = float("nan")
    with pytest.raises(FloatingPointError, match="NaN or inf at Lanczos step 1"):
        lanczos(A, 3, seed=0)


def test_symmetry_probe(spectrum):
    A = matrix_with_spectrum(spectrum)
    assert check_symmetric(A) < 1e-14
    B = A.clone()
    B[0, 1] += 1.0
    with pytest.raises(ValueError, match="not symmetric"):
        check_symmetric(B)


def test_matrix_operator_checks_shapes():
    op = MatrixOperator(torch.eye(3))
    with pytest.raises(ValueError, match=r"v must have shape \(3,\), got \(4,\)"):
        op.matvec(torch.ones(4))
    with pytest.raises(ValueError, match=r"V must have shape \(3, k\)"):
        op.matmat(torch.ones(4, 2))


def test_hutchinson_exact_on_diagonal_and_unbiased(spectrum):
    D = torch.diag(spectrum)
    est = hutchinson_trace(D, probes=4, seed=0)
    assert est.value == pytest.approx(float(spectrum.sum()), rel=1e-13)
    A = matrix_with_spectrum(spectrum)
    est = hutchinson_trace(A, probes=4000, seed=1, probes_per_pass=500)
    # 5 standard errors: fails with probability below 1e-6 for a correct estimator
    assert abs(est.value - float(spectrum.sum())) < 5 * est.stderr
    with pytest.raises(ValueError, match="distribution must be"):
        hutchinson_trace(A, distribution="cauchy")


def _hessian_like(n: int = 3000) -> torch.Tensor:
    """A diagonal spectrum shaped like a network Hessian's: a bulk near zero (some of
    it negative) and a few large outliers, which Lanczos finds fast and so loses
    orthogonality fast without reorthogonalisation."""
    g = torch.Generator().manual_seed(0)
    bulk = torch.randn(n - 6, generator=g, dtype=torch.float64) * 0.05 + 0.02
    outliers = torch.tensor([3.0, 8.0, 15.0, 40.0, 90.0, 250.0], dtype=torch.float64)
    return torch.cat([bulk, outliers])


def test_full_reorthogonalisation_passes_once_unless_it_cancels():
    d = _hessian_like()
    res = lanczos(torch.diag(d), 120, seed=1)
    # DGKS: one pass per step (119 steps reorthogonalise) plus the rare second one
    assert 119 <= res.reorth_passes < 1.1 * 119
    Q = res.basis
    assert (Q @ Q.T - torch.eye(120, dtype=torch.float64)).abs().max() < 1e-13


def test_partial_reorthogonalisation_gives_the_same_tridiagonal():
    d = _hessian_like()
    A = torch.diag(d)
    full = lanczos(A, 120, seed=1)
    part = lanczos(A, 120, seed=1, reorth="partial")
    # far fewer passes over the basis, orthogonality kept at the √eps level
    assert part.reorth_passes < 0.75 * full.reorth_passes
    Q = part.basis
    loss = (Q @ Q.T - torch.eye(120, dtype=torch.float64)).abs().max().item()
    assert 1e-14 < loss < 10 * torch.finfo(torch.float64).eps ** 0.5
    # the outliers are found once each (no ghost copies) and to working precision
    ritz = torch.linalg.eigvalsh(part.tridiagonal)
    top = ritz[-6:]
    torch.testing.assert_close(top, d[-6:], rtol=1e-12, atol=0)
    assert ritz[-7].item() < 1.0
    # the quadrature (the density's input) agrees with full reorthogonalisation: the
    # moments vᵀAᵐv for m < 2·steps are exact in both, so compare them with the truth
    nodes, weights = part.quadrature()
    v = random_start(d.numel(), generator=_generator(1))
    for m in (1, 2, 3, 5, 8):
        exact = float((v * v * d**m).sum())
        assert np.sum(weights * nodes**m) == pytest.approx(exact, rel=1e-10)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_partial_block_matches_single_runs():
    A = torch.diag(_hessian_like(800))
    starts = random_start(800, num=3, generator=_generator(5))
    block = lanczos_block(A, 60, starts, reorth="partial")
    for i, res in enumerate(block):
        single = lanczos(A, 60, start=starts[i], reorth="partial")
        assert res.reorth_passes == single.reorth_passes
        torch.testing.assert_close(res.alphas, single.alphas, rtol=0, atol=1e-12)
        torch.testing.assert_close(res.betas, single.betas, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("basis", "rtol"), [("float32", 1e-7), ("disk", 1e-12)])
def test_partial_reorthogonalisation_with_other_bases(basis, rtol, tmp_path):
    # a float32 basis bounds the accuracy at about 1e-7 with either reorthogonalisation
    d = _hessian_like(800)
    res = lanczos(torch.diag(d), 60, seed=2, reorth="partial", basis=basis, basis_dir=tmp_path)
    top = torch.linalg.eigvalsh(res.tridiagonal)[-6:]
    torch.testing.assert_close(top, d[-6:], rtol=rtol, atol=0)


def test_partial_reorthogonalisation_follows_a_float32_operator():
    # A float32 operator returns its products in float64 here, but their round-off is
    # float32's: the loss of orthogonality must be estimated with float32's eps. With
    # float64's (as before) the recurrence skipped the passes it needed and the
    # outliers came back as ghost copies, as on a float32 network's Hessian.
    d = _hessian_like(2000)
    A = torch.diag(d).to(torch.float32)
    full = lanczos(A, 90, seed=4)
    part = lanczos(A, 90, seed=4, reorth="partial")
    assert 0 < part.reorth_passes < full.reorth_passes
    Q = part.basis
    loss = (Q @ Q.T - torch.eye(90, dtype=torch.float64)).abs().max().item()
    assert loss < 10 * torch.finfo(torch.float32).eps ** 0.5
    ritz = torch.linalg.eigvalsh(part.tridiagonal)
    torch.testing.assert_close(ritz[-6:], d[-6:], rtol=1e-6, atol=0)
    assert ritz[-7].item() < 1.0  # no ghost copy of an outlier
    top = torch.linalg.eigvalsh(full.tridiagonal)[-6:]
    torch.testing.assert_close(top, d[-6:], rtol=1e-6, atol=0)


def test_partial_estimates_advance_alike_in_python_and_in_numpy():
    # Simon's recurrence runs as a Python loop for the first steps and as numpy
    # arrays after: both must give the same floats and the same reorthogonalisations.
    # Checked against the recurrence written out in full, on the coefficients of a
    # run whose estimates pass √eps many times (a spectrum with converged outliers).
    n = 400
    d = torch.cat([torch.linspace(0, 1, n - 5, dtype=torch.float64), torch.arange(3.0, 8.0)])
    res = lanczos(torch.diag(d), 150, seed=0)
    alphas, betas = res.alphas.tolist(), res.betas.tolist()
    for kept, driven, size in ((torch.float64, torch.float32, 10**8), (torch.float64,) * 2 + (n,)):
        runs = [_lanczos._Orthogonality(size, 150, kept, driven) for _ in range(2)]
        runs[1].vector_from = 0  # numpy from the start
        eps, floor = torch.finfo(driven).eps, torch.finfo(kept).eps * size**0.5
        cur, prev, restarted = np.ones(1), np.zeros(0), 0
        for j in range(149):
            due = [est.due(alphas[j], betas[j], 7.0, j) for est in runs]
            assert due[0] == due[1]
            assert runs[0].cur == runs[1].cur  # the same floats, bit for bit
            # the recurrence as written in Simon (1984), restarted where they restarted
            new = np.empty(j + 2)
            a, b = np.array(alphas[: j + 1]), np.array(betas[:j])
            if j:
                t = b * cur[1:] + (a[:j] - a[j]) * cur[:j] - b[j - 1] * prev
                t[1:] += b[:-1] * cur[: j - 1]
                new[:j] = (t + np.where(t >= 0, 1.0, -1.0) * 2 * eps * 7.0) / betas[j]
            new[j], new[j + 1] = floor * max(1.0, 7.0 / betas[j]), 1.0
            for start, stop in due[0]:
                new[start:stop] = floor
            np.testing.assert_allclose(runs[0].cur, new, rtol=1e-12, atol=0)
            cur, prev = new, cur
            restarted += bool(due[0])
            for est in runs:
                est.kept(j, betas[j])
        assert restarted > 40  # the comparison went through many restarts


def test_partial_estimates_of_float32_rows_restart_at_their_rounding():
    # basis="float32" rounds only the stored rows: q and q_prev stay in float64, so
    # the loss between neighbours is float64's and 10^8 entries need no pass in ten
    # steps (with float32's, eps32·√n passed √eps32 and every step had one). A pass
    # against the float32 rows leaves their rounding (up to eps32 / 2 whatever n), so
    # the estimates of the rows it met restart at eps32, not at float64's local loss.
    n = 10**8
    f32, f64 = torch.float32, torch.float64
    rows32 = _lanczos._Orthogonality(n, 12, f64, f32, f32)
    rows64 = _lanczos._Orthogonality(n, 12, f64, f32)
    for j in range(10):
        for est in (rows32, rows64):
            assert est.due(1.0 + 0.01 * j, 0.5, 2.0, j) == []
            est.kept(j, 0.5)
    assert rows32.cur == rows64.cur  # no pass yet: the same estimates
    for est in (rows32, rows64):  # a breakdown: a pass against every row
        assert est.due(1.1, 0.0, 2.0, 10) == [(0, 11)]
    eps32 = torch.finfo(f32).eps
    assert rows32.cur[:11] == [eps32] * 11
    assert rows64.cur[:11] == [torch.finfo(f64).eps * n**0.5] * 11
    assert rows64.cur[0] < eps32 / 1e3


def test_partial_estimates_take_the_loss_between_neighbours_at_the_basis_precision():
    # A float32 network of 10^8 parameters in a float64 basis: its products feed
    # float32 round-off into the older rows, but each new vector is formed against its
    # two neighbours in float64 (α read from the product as computed). Taking
    # float32's eps for the neighbours too (eps32·√n = 1.2e-3, above √eps32 = 3.5e-4)
    # reorthogonalised at every step from about 8·10^6 parameters. A spectrum with
    # no converged Ritz value needs no pass in ten steps.
    n = 10**8
    kept = _lanczos._Orthogonality(n, 10, torch.float64, torch.float32)
    coarse = _lanczos._Orthogonality(n, 10, torch.float32, torch.float32)
    fine = _lanczos._Orthogonality(n, 10, torch.float64, torch.float64)
    due = {"kept": [], "coarse": [], "fine": []}
    for j in range(10):
        for name, est in (("kept", kept), ("coarse", coarse), ("fine", fine)):
            due[name].append(est.due(1.0 + 0.01 * j, 0.5, 2.0, j))
            est.kept(j, 0.5)
    assert due["kept"] == due["fine"] == [[]] * 10
    assert all(due["coarse"])
    # the older rows' estimates grow with float32's round-off, not float64's
    assert np.abs(kept.cur[:-2]).max() > 1e6 * np.abs(fine.cur[:-2]).max()


@pytest.mark.parametrize("chunk_bytes", [4 << 20, 8 * 4 * 37])
def test_float32_basis_reorthogonalises_in_float64(monkeypatch, chunk_bytes):
    # float32 storage: the coefficients c = Q w are computed in the recurrence's
    # float64 from the rows converted a column chunk at a time, so they equal float64
    # Gram-Schmidt's against the same (float32-valued) rows; summed in float32 they
    # would miss by float32 round-off (about 1e-8 here). The update w -= Qᵀc takes
    # the rows as stored and c rounded to float32: off by float32's round-off of Qᵀc,
    # which is small where c is (w nearly orthogonal to the rows, as in Lanczos), and
    # by no more. 8 * 4 * 37 bytes: 37 columns of 4 rows, 28 chunks and a ragged last.
    monkeypatch.setitem(_basis._CONVERT_BYTES, "cpu", chunk_bytes)
    g = torch.Generator().manual_seed(0)
    n = 1000
    store = _basis.BlockBasis(1, 4, n, dtype=torch.float64, device=torch.device("cpu"),
                              mode="float32")  # fmt: skip
    rows = torch.linalg.qr(torch.randn(n, 4, generator=g, dtype=torch.float64))[0].T
    for j in range(4):
        store.set(j, rows[None, j])
    Q = store.Q[0].to(torch.float64)
    w = torch.randn(1, n, generator=g, dtype=torch.float64)
    w[0] -= Q.T @ (Q @ w[0])  # orthogonal to the rows, then a loss of orthogonality
    w[0] += Q.T @ (1e-4 * torch.randn(4, generator=g, dtype=torch.float64))
    c = Q @ w[0]
    expected = w[0] - Q.T @ c
    size = w[0].norm().item()  # float64 round-off of c is relative to it; float32's 1e8x
    got = store._pass(w, 0, 0, 4)
    torch.testing.assert_close(got, c, rtol=0, atol=1e-14 * size)
    error = (w[0] - expected).abs().max().item()
    assert error <= 2 * torch.finfo(torch.float32).eps * c.abs().sum().item()
    assert (Q @ w[0]).abs().max().item() < 1e-10  # orthogonal to the rows again


def test_unknown_reorth_is_refused():
    with pytest.raises(ValueError, match=r"reorth must be one of \['auto', 'full', 'partial'\]"):
        lanczos(torch.eye(4, dtype=torch.float64), 2, reorth="selective")
    with pytest.raises(ValueError, match="reorth must be one of"):
        resolve_reorth("none", torch.eye(4))


def test_auto_reorth_is_partial_only_where_the_operator_declares_its_precision():
    class Declared(MatrixOperator):
        compute_dtype = torch.float32

    A = torch.diag(torch.arange(1.0, 41.0, dtype=torch.float64))
    assert resolve_reorth("auto", A) == "full"  # a tensor, and any operator of one's own
    assert resolve_reorth("auto", MatrixOperator(A)) == "full"
    assert resolve_reorth("auto", Declared(A)) == "partial"
    for mode in ("full", "partial"):
        assert resolve_reorth(mode, A) == resolve_reorth(mode, Declared(A)) == mode
    # a preconditioned operator chooses as the operator it wraps
    from spectorch.curvature import PreconditionedOperator

    ones = torch.ones(40, dtype=torch.float64)
    assert resolve_reorth("auto", PreconditionedOperator(A, ones)) == "full"
    assert resolve_reorth("auto", PreconditionedOperator(Declared(A), ones)) == "partial"
    # lanczos takes "auto" too: the run is the resolved mode's, bit for bit
    for op, mode in ((A, "full"), (Declared(A), "partial")):
        auto = lanczos(op, 20, seed=0, reorth="auto")
        same = lanczos(op, 20, seed=0, reorth=mode)
        torch.testing.assert_close(auto.tridiagonal, same.tridiagonal, rtol=0, atol=0)
        assert auto.reorth_passes == same.reorth_passes


def test_operator_returning_its_input_is_not_modified_in_place():
    class Identity:
        shape, dtype = (5, 5), torch.float64

        def matvec(self, v):
            return v

    res = lanczos(Identity(), 3, seed=0)
    assert res.breakdown and res.steps == 1 and res.alphas.item() == pytest.approx(1.0)


def test_random_start_values_are_the_bits_of_32_bit_words():
    # since issue 18 (GPU round) one CPU draw gives 32 entries: entry i is 2b - 1 for
    # bit i % 32 of word i // 32 of torch.randint(0, 2**32), each row its own words
    g1, g2 = _generator(3), _generator(3)
    v = random_start(1001, generator=g1, num=2)
    words = torch.randint(0, 2**32, (2, 32), generator=g2)
    bits = (words.unsqueeze(-1) >> torch.arange(32)) & 1  # (row, word, bit)
    ref = (2 * bits - 1).reshape(2, 32 * 32)[:, :1001].to(torch.float64)
    assert torch.equal(v, ref / ref.norm(dim=-1, keepdim=True))
    assert torch.equal(g1.get_state(), g2.get_state())  # no word drawn beyond them


@pytest.mark.parametrize("sizes", [[1001], [5, 300, 1, 695], [32, 32, 937], [1000, 1]])
def test_rademacher_signs_are_the_same_however_the_vector_is_cut(sizes):
    # ShardedHessian draws one parameter at a time: its start must be random_start's
    g = _generator(7)
    pieces = list(rademacher_signs(sizes, g))
    assert [len(x) for x in pieces] == sizes
    whole = random_start(1001, generator=_generator(7))
    signs = torch.cat(pieces).to(torch.float64)
    assert torch.equal(signs / signs.norm(), whole)
    g_whole = _generator(7)
    random_start(1001, generator=g_whole)
    assert torch.equal(g.get_state(), g_whole.get_state())


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (
            lambda g: rademacher_signs([3, -1], g),
            r"sizes entries must be a non-negative int, got -1",
        ),
        (lambda g: rademacher_signs(5, g), r"sizes must be a sequence of ints, got int"),
        (lambda g: random_start(0, generator=g), r"n must be a positive int, got 0"),
        (lambda g: random_start(4, generator=g, num=0), r"num must be a positive int, got 0"),
    ],
)
def test_bad_start_arguments_are_refused_before_any_draw(call, match):
    g = _generator(0)
    state = g.get_state()
    with pytest.raises(ValueError, match=match):
        call(g)
    assert torch.equal(g.get_state(), state)  # nothing drawn


def test_pythagorean_dgks_matches_the_measured_norm():
    # without the norm before, the first pass infers it as √(‖after‖² + ‖c‖²): on a
    # vector that cancels, the second pass must run exactly as with the measured norm
    from spectorch.linalg._basis import BlockBasis

    n, m = 200, 5
    q = torch.linalg.qr(torch.randn(n, m, dtype=torch.float64, generator=_generator(0)))[0].T
    for near in (True, False):
        w = q.T @ torch.ones(m, dtype=torch.float64) * (1.0 if near else 0.0)
        w = w + 1e-3 * torch.randn(n, dtype=torch.float64, generator=_generator(1))
        runs = []
        for norms in (None, [w.norm().item()]):
            store = BlockBasis(1, m, n, dtype=torch.float64, device=torch.device("cpu"))
            store.Q[0] = q
            x = w.clone().reshape(1, n)
            read = torch.tensor([3.25], dtype=torch.float64)
            floats, values = store.orthogonalize(x, m, norms, read=read)
            # the norm after as measured, α read along with it
            assert floats == [x.norm().item()] and values == [3.25]
            runs.append((store.passes[0], floats[0], x))
        assert runs[0][0] == runs[1][0] == (2 if near else 1)
        assert runs[0][1] == pytest.approx(runs[1][1], rel=1e-12)
        torch.testing.assert_close(runs[0][2], runs[1][2], rtol=0, atol=1e-15)


class _Into:
    """A matrix operator that writes into out=, as the curvature operators do, and
    counts how often it was given a buffer."""

    def __init__(self, A: torch.Tensor) -> None:
        self.A, self.shape, self.dtype, self.into = A, tuple(A.shape), A.dtype, 0

    def matvec(self, v, *, out=None):
        if out is None:
            return self.A @ v
        self.into += 1
        return torch.mv(self.A, v, out=out)

    def matmat(self, V, *, out=None):
        if out is None:
            return self.A @ V
        self.into += 1
        return torch.mm(self.A, V, out=out)


@pytest.mark.parametrize("basis", ["memory", "float32", "disk"])
@pytest.mark.parametrize("b", [1, 3])
def test_products_written_into_a_kept_vector_change_nothing(basis, b, tmp_path):
    A = torch.diag(_hessian_like(300))
    starts = random_start(300, num=b, generator=_generator(4))
    plain = lanczos_block(MatrixOperator(A), 40, starts, basis=basis, basis_dir=tmp_path / "a")
    op = _Into(A)
    into = lanczos_block(op, 40, starts, basis=basis, basis_dir=tmp_path / "b")
    assert op.into == 40  # every product went into the kept buffer
    for x, y in zip(plain, into, strict=True):
        torch.testing.assert_close(x.alphas, y.alphas, rtol=0, atol=0)
        torch.testing.assert_close(x.betas, y.betas, rtol=0, atol=0)
        torch.testing.assert_close(x.basis, y.basis, rtol=0, atol=0)


@pytest.mark.parametrize("basis", ["memory", "float32"])
def test_workspace_keeps_the_basis_and_changes_nothing(spectrum, basis):
    A = matrix_with_spectrum(spectrum)
    n = A.shape[0]
    kept = torch.float64 if basis == "memory" else torch.float32
    space = torch.full((2, 12, n), float("nan"), dtype=kept)
    for seed in (1, 2):  # the second run reuses (overwrites) the first one's rows
        starts = random_start(n, num=2, generator=torch.Generator().manual_seed(seed))
        fresh = lanczos_block(A, 12, starts, basis=basis)
        reused = lanczos_block(A, 12, starts, basis=basis, workspace=space)
        for a, b in zip(fresh, reused, strict=True):
            assert torch.equal(a.alphas, b.alphas) and torch.equal(a.betas, b.betas)
            assert torch.equal(a.basis, b.basis)
            assert b.basis.untyped_storage().data_ptr() == space.untyped_storage().data_ptr()
        torch.testing.assert_close(space[1], reused[1].basis, rtol=0, atol=0)


@pytest.mark.parametrize("basis", ["memory", "float32", "disk"])
def test_scratch_keeps_the_working_vectors_and_changes_nothing(basis, tmp_path):
    # runs one after another reuse the product vector and (with float32 or disk rows)
    # the window of the last two vectors; they are filled with NaN in between, so a
    # value read before it is written would show
    A = torch.diag(_hessian_like(300))
    op = _Into(A)  # takes out=: the products go into the kept vector
    scratch: dict = {}
    for seed in (1, 2, 3):
        starts = random_start(300, num=2, generator=_generator(seed))
        fresh = lanczos_block(op, 30, starts, basis=basis, basis_dir=tmp_path / f"a{seed}")
        kept = {k: v.data_ptr() for k, v in scratch.items()}
        reused = lanczos_block(
            op, 30, starts, basis=basis, basis_dir=tmp_path / f"b{seed}", scratch=scratch
        )
        for x, y in zip(fresh, reused, strict=True):
            assert torch.equal(x.alphas, y.alphas) and torch.equal(x.betas, y.betas)
            assert torch.equal(x.basis, y.basis)
        expected = {"products"} | ({"window"} if basis != "memory" else set())
        assert set(scratch) == expected
        assert scratch["products"].shape == (2, 300)
        if basis != "memory":
            assert scratch["window"].shape == (2, 2, 300)
        if kept:  # the same memory as the run before
            assert {k: v.data_ptr() for k, v in scratch.items()} == kept
        for v in scratch.values():
            v.fill_(float("nan"))
    # entries that do not fit (shape, dtype) are replaced, not an error
    scratch = {"products": torch.empty(3, 300), "window": "not a tensor"}
    starts = random_start(300, num=2, generator=_generator(1))
    again = lanczos_block(op, 30, starts, basis=basis, basis_dir=tmp_path / "c", scratch=scratch)
    plain = lanczos_block(op, 30, starts, basis=basis, basis_dir=tmp_path / "d")
    for x, y in zip(plain, again, strict=True):
        assert torch.equal(x.alphas, y.alphas) and torch.equal(x.betas, y.betas)
    assert scratch["products"].shape == (2, 300) and scratch["products"].dtype == torch.float64
    if basis != "memory":
        assert isinstance(scratch["window"], torch.Tensor)


@pytest.mark.parametrize("basis", ["float32", "disk"])
def test_scratch_with_more_rows_lends_its_first(basis, tmp_path):
    # a density's last group may be smaller than the others: its run takes the first
    # rows of the kept vectors, and a start drawn into the window's first slot is
    # normalised there, with the run the same as from a vector of its own
    A = torch.diag(_hessian_like(300))
    op = _Into(A)
    scratch = {
        "products": torch.full((3, 300), float("nan"), dtype=torch.float64),
        "window": torch.full((3, 2, 300), float("nan"), dtype=torch.float64),
    }
    kept = {k: v.data_ptr() for k, v in scratch.items()}
    starts = random_start(300, num=2, generator=_generator(6))
    plain = lanczos_block(op, 30, starts, basis=basis, basis_dir=tmp_path / "a")
    scratch["window"][:2, 0] = starts
    inside = lanczos_block(
        op, 30, scratch["window"][:2, 0], basis=basis, basis_dir=tmp_path / "b", scratch=scratch
    )
    assert {k: v.data_ptr() for k, v in scratch.items()} == kept
    assert scratch["window"].shape == (3, 2, 300)
    for x, y in zip(plain, inside, strict=True):
        assert torch.equal(x.alphas, y.alphas) and torch.equal(x.betas, y.betas)
        assert torch.equal(x.basis, y.basis)


@pytest.mark.parametrize(
    ("basis", "dtype"), [("memory", torch.float64), ("float32", torch.float64),
                         ("float32", torch.float32), ("disk", torch.float64)]
)  # fmt: skip
def test_lanczos_draws_its_start_where_the_run_keeps_it(basis, dtype, tmp_path):
    # lanczos draws its start into the basis's first row or, with float32 or disk rows,
    # the window's first slot: the run is the one from the same vector passed in
    A = torch.diag(_hessian_like(300))
    got = lanczos(A, 30, seed=4, basis=basis, dtype=dtype, reorth="partial")
    start = random_start(300, generator=torch.Generator().manual_seed(4), dtype=dtype)
    want = lanczos_block(A, 30, start[None], basis=basis, dtype=dtype, reorth="partial")[0]
    assert torch.equal(got.alphas, want.alphas) and torch.equal(got.betas, want.betas)
    assert torch.equal(got.basis, want.basis)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"scratch": [1.0]}, "scratch must be a dict or None, got list"),
        ({"workspace": torch.empty(1, 5, 60, dtype=torch.float64)}, r"shape \(2, 6, 60\)"),
        ({"workspace": torch.empty(2, 6, 60, dtype=torch.float32)}, "dtype torch.float64"),
        ({"workspace": torch.empty(2, 60, 6, dtype=torch.float64).mT}, "not contiguous"),
        ({"workspace": "rows"}, "workspace must be a torch.Tensor"),
        ({"workspace": torch.empty(2, 6, 60), "basis": "disk"}, "basis='disk' takes none"),
    ],
)
def test_bad_workspace_is_refused(spectrum, kwargs, match):
    A = matrix_with_spectrum(spectrum)
    starts = random_start(60, num=2, generator=torch.Generator().manual_seed(0))
    with pytest.raises((ValueError, TypeError), match=match):
        lanczos_block(A, 6, starts, **kwargs)


def test_random_start_into_out_is_the_same_vector():
    out = torch.full((3, 1001), 7.0, dtype=torch.float64)
    got = random_start(1001, generator=_generator(4), num=3, out=out)
    assert got.data_ptr() == out.data_ptr()
    assert torch.equal(out, random_start(1001, generator=_generator(4), num=3))
    with pytest.raises(ValueError, match=r"out must be a contiguous tensor of shape \(1001,\)"):
        random_start(1001, generator=_generator(4), out=torch.empty(1000, dtype=torch.float64))


def test_lanczos_checks_its_arguments_before_drawing_the_start():
    # the start is drawn straight into the basis, so the checks come first
    A = torch.diag(torch.arange(1.0, 9.0, dtype=torch.float64))
    for kwargs, match in (
        ({"reorth": "bogus"}, "reorth must be one of"),
        ({"start": "uniform"}, "start must be one of"),
        ({"steps": 9}, "steps must be at most"),
    ):
        g = _generator(0)
        state = g.get_state()
        with pytest.raises(ValueError, match=match):
            lanczos(A, kwargs.pop("steps", 4), generator=g, **kwargs)
        assert torch.equal(g.get_state(), state)


@pytest.mark.parametrize("reorth", ["full", "partial"])
def test_one_read_to_the_host_per_step(reorth, monkeypatch):
    # on a GPU every read of a value waits for the device: a step reads α and β (and
    # the Gram-Schmidt test) in one transfer, partial reorthogonalisation's estimates
    # come from those floats, and the end checks the last α
    reads = []
    for name in ("tolist", "item", "__bool__", "__float__", "cpu", "numpy"):
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            reads.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    d = torch.linspace(0.0, 1.0, 500, dtype=torch.float64)
    A = MatrixOperator(torch.diag(d))
    res = lanczos(A, 30, seed=0, reorth=reorth)
    assert res.steps == 30
    assert len(reads) <= 30 + 2, reads


def test_accepts_out_reads_each_signature_once_and_keeps_nothing_alive():
    import gc
    import weakref

    from spectorch.linalg import _operator

    class Takes:
        shape, dtype = (2, 2), torch.float64

        def matvec(self, v, *, out=None):
            return v

    class Refuses:
        shape, dtype = (2, 2), torch.float64

        def matvec(self, v):
            return v

    assert accepts_out(Takes()) and not accepts_out(Refuses())
    assert not accepts_out(Takes(), block=True)  # no matmat
    assert _operator._OUT[Takes.matvec] is True  # the class's function, recorded once

    def closure(v, *, out=None):  # a function of one's own, here bound to an instance
        return v

    op = Refuses()
    op.matvec = closure
    assert accepts_out(op)
    gone = weakref.ref(closure)
    del op, closure
    gc.collect()
    assert gone() is None  # the record does not keep it (nor what it holds) alive


def test_auto_basis_is_float32_only_where_the_products_are():
    from spectorch.linalg import resolve_basis

    f32, f64 = torch.eye(4), torch.eye(4, dtype=torch.float64)

    class Network:  # declares its products' precision, as the curvature operators do
        shape, dtype, compute_dtype = (4, 4), torch.float64, torch.float32

        def matvec(self, v):
            return v.clone()

    cases = [
        ((Network(), "auto"), "float32"),  # partial on a float32 network
        ((Network(), "full"), "memory"),
        ((Network(), "auto", torch.float32), "memory"),  # the recurrence is float32
        ((f32, "partial"), "float32"),
        ((f32, "auto"), "memory"),  # auto is full on a plain tensor
        ((f64, "partial"), "memory"),
        ((torch.eye(4, dtype=torch.bfloat16), "partial"), "float32"),
    ]
    for args, want in cases:
        assert resolve_basis("auto", *args) == want, args
    for basis in ("memory", "float32", "disk"):
        assert resolve_basis(basis, f32, "partial") == basis
    with pytest.raises(ValueError, match="basis must be one of"):
        resolve_basis("ram", f32)
    with pytest.raises(ValueError, match=r"dtype must be a floating torch\.dtype"):
        resolve_basis("auto", f32, "partial", "float64")
    res = lanczos(Network(), 3, seed=0, reorth="partial", basis="auto")
    assert res.basis.dtype == torch.float32
    assert lanczos(Network(), 3, seed=0, basis="auto").basis.dtype == torch.float64
