"""Extreme eigenpairs by thick-restart Lanczos, against dense eigh and scipy's eigsh."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import matrix_with_spectrum, mlp
from scipy.sparse.linalg import LinearOperator, eigsh
from torch import nn

from spectorch.curvature import HessianOperator
from spectorch.linalg import Eigenpairs, MatrixOperator, default_basis_size, top_eigenpairs

REL = 1e-10  # eigenvalues, relative to the largest magnitude


def _spectrum(n: int = 400, seed: int = 0) -> torch.Tensor:
    """A Hessian-like spectrum: a bulk near zero, a cluster and outliers on both sides."""
    g = torch.Generator().manual_seed(seed)
    bulk = torch.randn(n - 9, generator=g, dtype=torch.float64) * 0.05
    top = torch.tensor([-3.0, -2.5, 4.0, 4.001, 4.002, 7.0, 12.0, 30.0, 31.0])
    return torch.cat([bulk, top.double()])


def _sin_angle(X: torch.Tensor, U: torch.Tensor) -> float:
    """Largest principal angle's sine between the row spaces of X and U (orthonormal)."""
    Qx = torch.linalg.qr(X.T)[0]
    s = torch.linalg.svdvals(U @ Qx).clamp(max=1.0)
    return float((1 - s.min() ** 2).clamp(min=0).sqrt())


@pytest.mark.parametrize(
    ("which", "k"), [("largest", 1), ("largest", 6), ("smallest", 2), ("magnitude", 4)]
)
def test_eigenpairs_match_dense_eigh(which, k):
    d = _spectrum()
    A = matrix_with_spectrum(d)
    evals, evecs = torch.linalg.eigh(A)
    order = {
        "largest": torch.argsort(-evals),
        "smallest": torch.argsort(evals),
        "magnitude": torch.argsort(-evals.abs()),
    }[which][:k]
    pairs = top_eigenpairs(A, k=k, which=which, seed=0)
    scale = float(evals.abs().max())
    assert (pairs.values - evals[order]).abs().max() <= REL * scale
    # vectors: the subspace of the wanted pairs (the cluster 4, 4.001, 4.002 is
    # resolved: its gaps are 1e-3, far above the residuals)
    assert _sin_angle(pairs.vectors, evecs[:, order].T) < 1e-6
    assert bool(pairs.converged.all()) and pairs.measured
    AX = (A @ pairs.vectors.T).T
    true = torch.linalg.vector_norm(AX - pairs.values[:, None] * pairs.vectors, dim=1)
    torch.testing.assert_close(pairs.residuals, true, rtol=1e-6, atol=1e-13)
    assert (pairs.residuals <= pairs.tol * scale).all()


def test_repeated_top_eigenvalue_is_found_with_its_multiplicity():
    # 10 three times, then 9.5: one Krylov space sees one direction of the triple
    # eigenspace; scipy's eigsh (ARPACK) returns [10, 9.5] for k=2 on this matrix
    d = torch.cat([torch.tensor([10.0, 10.0, 10.0, 9.5]), torch.linspace(-1, 9, 296)]).double()
    A = matrix_with_spectrum(d, seed=3)
    evecs = torch.linalg.eigh(A).eigenvectors
    for k in (2, 3, 4):
        pairs = top_eigenpairs(A, k=k, seed=1)
        expected = torch.sort(d, descending=True).values[:k]
        assert (pairs.values - expected).abs().max() <= REL * 10
    # the three vectors span the eigenspace of 10
    pairs = top_eigenpairs(A, k=3, seed=1)
    assert _sin_angle(pairs.vectors, evecs[:, -3:].T) < 1e-6
    # without the look for missing copies, the second copy is missed, as in eigsh
    assert top_eigenpairs(A, k=2, seed=1, check=0).values[1] == pytest.approx(9.5, rel=1e-9)


def test_restarts_keep_memory_bounded():
    # k = 30 pairs in a basis of 40 vectors: an unrestarted Lanczos would keep every
    # one of the several hundred vectors convergence takes
    n = 3000
    d = torch.cat([torch.linspace(1.0, 2.0, 40), torch.linspace(-0.5, 0.9, n - 40)]).double()
    op = MatrixOperator(torch.diag(d))
    pairs = top_eigenpairs(op, k=30, basis_size=40, seed=0, max_products=4000)
    expected = torch.sort(d, descending=True).values[:30]
    assert (pairs.values - expected).abs().max() <= REL * 2
    assert pairs.basis_size == 40 and pairs.restarts > 5 and pairs.products > 4 * 41


def test_fewer_products_than_eigsh_on_a_hessian_like_spectrum():
    d = _spectrum(2000, seed=1)
    A = torch.diag(d)
    for k in (1, 6):
        count = [0]

        def mv(x, count=count):
            count[0] += 1
            return d.numpy() * np.ravel(x)

        L = LinearOperator((2000, 2000), matvec=mv, dtype=np.float64)
        ref = np.sort(eigsh(L, k=k, which="LA", tol=1e-8, v0=np.ones(2000))[0])[::-1]
        pairs = top_eigenpairs(A, k=k, seed=0, tol=1e-8, check=0, verify=False)
        np.testing.assert_allclose(pairs.values.numpy(), ref, rtol=1e-10)
        assert pairs.products <= count[0]


def test_warm_start_takes_fewer_products():
    A = matrix_with_spectrum(_spectrum(seed=2))
    first = top_eigenpairs(A, k=3, seed=0)
    g = torch.Generator().manual_seed(5)
    E = torch.randn(A.shape, generator=g, dtype=torch.float64) * 1e-4
    B = A + (E + E.T) / 2  # the next training step's Hessian, nearly the same
    cold = top_eigenpairs(B, k=3, seed=0)
    warm = top_eigenpairs(B, k=3, seed=0, start=first)
    torch.testing.assert_close(warm.values, cold.values, rtol=1e-10, atol=0)
    assert warm.products < cold.products


def test_unconverged_pairs_are_reported_as_they_are():
    A = matrix_with_spectrum(_spectrum(seed=3))
    with pytest.warns(RuntimeWarning, match="did not reach tol"):
        pairs = top_eigenpairs(A, k=6, basis_size=8, max_products=8, seed=0, tol=1e-12)
    assert not bool(pairs.converged.all())
    AX = (A @ pairs.vectors.T).T
    true = torch.linalg.vector_norm(AX - pairs.values[:, None] * pairs.vectors, dim=1)
    torch.testing.assert_close(pairs.residuals, true, rtol=1e-6, atol=1e-13)
    assert pairs.products == 8 + 6  # the budget, then the k verifying products


def test_whole_space_is_exact():
    pairs = top_eigenpairs(torch.diag(torch.arange(1.0, 6.0, dtype=torch.float64)), k=5, seed=0)
    assert pairs.values.tolist() == pytest.approx([5.0, 4.0, 3.0, 2.0, 1.0], rel=1e-13)


def test_hessian_eigenvectors_as_parameters():
    model = mlp()
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(20, 5, generator=g, dtype=torch.float64), torch.arange(20) % 3)]
    op = HessianOperator(model, nn.CrossEntropyLoss(), data)
    dense = torch.linalg.eigvalsh(op.to_dense())
    pairs = top_eigenpairs(op, k=2, seed=0)
    torch.testing.assert_close(pairs.values, dense.flip(0)[:2], rtol=1e-10, atol=0)
    as_params = pairs.parameters(0)
    assert list(as_params) == op.param_names
    for name, p in model.named_parameters():
        assert as_params[name].shape == p.shape
    flat = torch.cat([t.reshape(-1) for t in as_params.values()])
    assert torch.equal(flat, pairs.vectors[0])
    with pytest.raises(IndexError):
        pairs.parameters(2)
    plain = top_eigenpairs(torch.eye(3, dtype=torch.float64) * 2, k=1, seed=0)
    assert isinstance(plain, Eigenpairs)
    with pytest.raises(ValueError, match="no parameters"):
        plain.parameters(0)


@pytest.mark.parametrize(("k", "basis_size"), [(1, None), (3, 8)])
def test_workspace_keeps_the_basis_and_changes_nothing(k, basis_size):
    # a basis of 8 for 3 pairs restarts many times and looks for missing copies; the
    # workspace is filled with NaN first, so a row read before it is written shows
    d = _spectrum(300, seed=2)
    A = matrix_with_spectrum(d)
    fresh = top_eigenpairs(A, k=k, basis_size=basis_size, seed=4, max_products=3000)
    m = fresh.basis_size
    assert m == (default_basis_size(k, 300) if basis_size is None else basis_size)
    space = torch.full((m + 1, 300), float("nan"), dtype=torch.float64)
    for _ in range(2):  # the second call reuses what the first left there
        reused = top_eigenpairs(
            A, k=k, basis_size=basis_size, seed=4, max_products=3000, workspace=space
        )
        assert torch.equal(reused.values, fresh.values)
        assert torch.equal(reused.vectors, fresh.vectors)
        assert torch.equal(reused.residuals, fresh.residuals)
        assert (reused.products, reused.restarts) == (fresh.products, fresh.restarts)
        assert not bool(torch.isnan(space[:2]).any())  # the basis was kept there
        # the results never view the workspace: the next call cannot change them
        assert reused.vectors.untyped_storage().data_ptr() != space.untyped_storage().data_ptr()
    assert fresh.restarts > 0 or basis_size is None


class _Counting:
    def __init__(self, A):
        self.A, self.shape, self.dtype, self.products = A, A.shape, A.dtype, 0

    def matvec(self, v):
        self.products += 1
        return self.A @ v


def test_default_basis_size_checks_its_arguments():
    assert default_basis_size(1, 300) == 21 and default_basis_size(30, 300) == 61
    assert default_basis_size(3, 10) == 10  # at most n
    with pytest.raises(ValueError, match=r"k must be an int in \[1, 10\]"):
        default_basis_size(0, 10)
    with pytest.raises(ValueError, match="n must be a positive int"):
        default_basis_size(1, 0)


@pytest.mark.parametrize(
    ("workspace", "match"),
    [
        (torch.empty(21, 6, dtype=torch.float64), r"shape \(7, 6\)"),
        (torch.empty(7, 6, dtype=torch.float32), "dtype torch.float64"),
        (torch.empty(6, 7, dtype=torch.float64).T, "not contiguous"),
        ("rows", "workspace must be a torch.Tensor"),
    ],
)
def test_bad_workspace_is_refused_before_any_product(workspace, match):
    op = _Counting(torch.eye(6, dtype=torch.float64))
    with pytest.raises((ValueError, TypeError), match=match):
        top_eigenpairs(op, k=1, basis_size=6, workspace=workspace)
    assert op.products == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k": 0}, r"k must be an int in \[1, 6\]"),
        ({"which": "top"}, "which must be one of"),
        ({"basis_size": 2, "k": 3}, r"basis_size must be an int in \[4, 6\]"),
        ({"tol": 0.0}, r"tol must lie in \(0, 1\]"),
        ({"max_products": 1}, "max_products must be an int >= "),
        ({"check": -1}, "check must be a non-negative int"),
        ({"start": torch.ones(5)}, r"start must have shape \(n,\) or \(j, n\) with n=6"),
        ({"start": torch.zeros(6)}, "start vectors must be finite and non-zero"),
    ],
)
def test_bad_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        top_eigenpairs(torch.eye(6, dtype=torch.float64), **kwargs)
