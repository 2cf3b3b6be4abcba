"""google/spectral-density's jax/lanczos_test.py and jax/spectral_density_test.py,
translated from JAX to PyTorch with their tolerances kept.

Translation: ``random.PRNGKey(0)`` and ``random.split`` become seeds of torch
generators (the draws differ, the assertions do not); ``stax.serial(Dense(width), Relu,
Dense(output_size), LogSoftmax)`` becomes the same ``nn.Sequential`` in float64;
``hessian_computation.get_hvp_fn`` becomes :class:`spectorch.HessianOperator` and
``full_hessian`` its ``to_dense()``.

One deliberate difference, tested as such: ``testHessianSpectrum`` asks for 72 Lanczos
steps of a 27-dimensional Hessian. The original divided by ``β ≈ 0`` after 27 steps;
spectorch runs at most 27 steps, stops where the Krylov space is invariant, and warns;
the eigenvalue assertions hold on that tridiagonal, and the density assertion holds
with its quadrature weights (``tridiag_to_density``) instead of uniform ones.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from spectorch import HessianOperator
from spectorch.density import eigv_to_density, lanczos_alg, tridiag_to_density

MATRIX_SHAPES = [(10, 10), (15, 15)]


def _gaussian_psd(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    matrix = torch.randn(shape, generator=g, dtype=torch.float64)
    return matrix @ matrix.T  # symmetrize the matrix


@pytest.mark.parametrize("shape", MATRIX_SHAPES)
def test_tridiag_eigenvalues(shape):
    sigma_squared = 1e-2
    order = min(70, shape[0])  # if order > matrix shape, lanczos may fail
    atol = 1e-5
    matrix = _gaussian_psd(shape)
    eigs_true = np.linalg.eigh(matrix.numpy())[0]
    tridiag = lanczos_alg(lambda v: matrix @ v, matrix.shape[0], order, rng_key=0)[0]
    eigs_tridiag = np.linalg.eigh(tridiag.numpy())[0]
    density, grids = eigv_to_density(eigs_tridiag[None], sigma_squared=sigma_squared)
    density_true, _ = eigv_to_density(eigs_true[None], grids=grids, sigma_squared=sigma_squared)
    assert abs(eigs_tridiag.max() - eigs_true.max()) <= atol
    assert abs(eigs_tridiag.min() - eigs_true.min()) <= atol
    np.testing.assert_allclose(density, density_true, atol=atol, rtol=0)


@pytest.mark.parametrize("shape", MATRIX_SHAPES)
def test_density(shape):
    sigma_squared = 1e-2
    num_trials = 5
    order = min(70, shape[0])
    matrix = _gaussian_psd(shape)
    eigs_true = np.linalg.eigvalsh(matrix.numpy())
    tridiag_list = [
        lanczos_alg(lambda v: matrix @ v, matrix.shape[0], order, rng_key=split)[0].numpy()
        for split in range(1, num_trials + 1)  # random.split(key) five times
    ]
    density, grids = tridiag_to_density(tridiag_list, sigma_squared=sigma_squared)
    density_true, _ = eigv_to_density(eigs_true[None], grids=grids, sigma_squared=sigma_squared)
    np.testing.assert_allclose(density, density_true, atol=0.3, rtol=0)
    # Measure the statistical distance between the two distributions.
    assert np.mean(np.abs(density - density_true)) < 5e-2


def _single_layer_problem(input_size, output_size, width, batch_size, seed=0):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(input_size, width),
        nn.ReLU(),
        nn.Linear(width, output_size),
        nn.LogSoftmax(dim=1),
    ).double()
    xs = torch.randn(batch_size, input_size, generator=g, dtype=torch.float64)
    ys = torch.randint(0, output_size, (batch_size,), generator=g)
    onehot = torch.eye(output_size, dtype=torch.float64)[ys]

    def loss(y_hat, y):  # the original's loss(y, y_hat) = -sum(y * y_hat)
        return -(y * y_hat).sum()

    return model, loss, [(xs, onehot)]


def test_hessian_vector_product():
    error_tolerance = 1e-6
    model, loss, batches = _single_layer_problem(4, 2, 10, 5)
    op = HessianOperator(model, loss, batches)
    hessian = op.to_dense()
    v = torch.ones(op.shape[0], dtype=torch.float64)
    np.testing.assert_allclose(op.matvec(v).numpy(), (hessian @ v).numpy(), atol=error_tolerance)
    # the full Hessian itself (the original's full_hessian), by autograd on the flat vector
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for _, p in model.named_parameters()])

    def loss_of(w):
        chunks = torch.split(w, [s.numel() for s in shapes])
        params = {n: c.reshape(s) for n, c, s in zip(names, chunks, shapes, strict=True)}
        out = torch.func.functional_call(model, params, (batches[0][0],))
        return loss(out, batches[0][1])

    full = torch.autograd.functional.hessian(loss_of, flat)
    np.testing.assert_allclose(hessian.numpy(), full.numpy(), atol=error_tolerance)


def test_hessian_spectrum():
    sigma_squared = 1e-2
    atol_e = 1e-6
    atol_density = 0.5
    model, loss, batches = _single_layer_problem(2, 2, 5, 5)
    op = HessianOperator(model, loss, batches)
    num_params = op.shape[0]
    assert num_params == 27
    with pytest.warns(UserWarning, match="order 72 exceeds the dimension 27"):
        tridiag = lanczos_alg(op.matvec, num_params, 72, rng_key=0)[0]
    # a deliberate difference (see the module's text): at most 27 steps, and fewer when
    # the Krylov space becomes invariant (this Hessian of 5 samples has few distinct
    # eigenvalues); the original went on dividing by beta = 0
    assert tridiag.shape[0] <= 27
    eigs_triag = np.linalg.eigh(tridiag.numpy())[0]
    eigs_true = np.linalg.eigh(op.to_dense().numpy())[0]
    assert abs(eigs_triag.max() - eigs_true.max()) <= atol_e
    assert abs(eigs_triag.min() - eigs_true.min()) <= atol_e
    # after the breakdown every distinct eigenvalue is a Ritz value, once: the
    # original's uniform weights over 72 values no longer describe the multiplicities,
    # the Gauss quadrature weights do (tridiag_to_density), at the original's tolerance
    assert all(np.min(np.abs(eigs_triag - e)) <= atol_e for e in eigs_true)
    density, grids = tridiag_to_density([tridiag.numpy()], sigma_squared=sigma_squared)
    density_true, grids = eigv_to_density(eigs_true[None], grids=grids, sigma_squared=sigma_squared)
    np.testing.assert_allclose(density, density_true, atol=atol_density, rtol=1e-1)
