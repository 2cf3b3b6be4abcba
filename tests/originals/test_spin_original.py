"""SpIN's tests/spin_test.py (deepmind/spectral_inference_networks), translated from
TensorFlow 1 to PyTorch with its tolerances kept: SpIN on the quadratic form of a
small random matrix, with a fixed deterministic batch (decay 0, atol 1e-5) and with
random one-hot batches (decay 0.9, atol 0.1).

Translation: ``tf.random_normal([size, neig])`` is a torch parameter;
``tf.train.GradientDescentOptimizer(1.0 / global_step)`` is SGD at 1.0 (the original
increments ``global_step`` once, before the loop, so its rate is 1.0 throughout); a
``sess.run(step)`` is :meth:`SpectralNetwork.step`; the stochastic batch op is a
function that draws a new batch per call; ``sess.run(spec_net.eigenvalues)`` on a new
batch is :meth:`SpectralNetwork.compute_loss` on one. ``use_pfor`` and
``per_example`` only chose how TensorFlow built the Jacobian of Sigma; spectorch
accepts them and computes the same Jacobian exactly, so every combination of the
original runs and must pass.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from spectorch import spin

COMBINATIONS = [(False, False), (True, False), (True, True)]  # (use_pfor, per_example)


def _small_matrix(
    size=5,
    neig=3,
    batch_size=1000,
    niter=2000,
    deterministic=False,
    use_pfor=False,
    per_example=False,
):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    mat = rng.standard_normal((size, size))
    xx = torch.as_tensor(mat.T @ mat)  # Symmetrize the matrix
    params = [torch.randn(size, neig, dtype=torch.float64, requires_grad=True)]
    eye = torch.eye(size, dtype=torch.float64)
    if deterministic:
        decay = 0.0
        # Data is all combinations of rows and columns of the matrix.
        fixed = torch.cat((eye.repeat(size, 1), eye.repeat(1, size).reshape(size**2, size)))
        data = [fixed * np.sqrt(size)]  # one fixed batch, said explicitly
    else:
        decay = 0.9
        g = torch.Generator().manual_seed(1)

        def data():
            idx = torch.randint(0, size, (batch_size,), generator=g)
            return eye[idx] * np.sqrt(size)  # Make rows unit norm

    def network(x):
        return x @ params[0]

    def kernel(x1, x2):
        return (x1 * (x2 @ xx)).sum(1, keepdim=True)

    spec_net = spin.SpectralNetwork(
        spin.KernelOperator(kernel),
        network,
        data,
        params,
        decay=decay,
        use_pfor=use_pfor,
        per_example=per_example,
    )
    optim = torch.optim.SGD(params, lr=1.0)
    for _ in range(niter):
        spec_net.step(optim)
    if deterministic:
        eigval = spec_net.compute_loss(data[0])[1].detach().numpy()
        eigvec = network(data[0]).detach().numpy()
    else:
        n = 1000
        eigval = np.mean([spec_net.compute_loss(data())[1].detach().numpy() for _ in range(n)], 0)
        eigvec = params[0].detach().numpy()
    eigvec, _ = np.linalg.qr(eigvec)
    eigvec = eigvec[: int(size)]
    true_eigval, true_eigvec = np.linalg.eig(xx.numpy())
    idx = np.argsort(true_eigval)
    atol = 1e-5 if deterministic else 1e-1  # Stochastic case is quite noisy
    np.testing.assert_allclose(eigval, np.sort(true_eigval)[:neig], atol=atol)
    # Compute dot product between true eigenvectors and learned ones.
    cross_cov = eigvec.T @ true_eigvec[:, idx[:neig]]
    cross_cov -= np.diag(np.diag(cross_cov))
    np.testing.assert_allclose(cross_cov, np.zeros((neig, neig)), atol=atol)


# the three combinations run the same code here: one in the default tier, all in the slow
@pytest.mark.parametrize(
    ("use_pfor", "per_example"),
    [COMBINATIONS[0], *(pytest.param(*c, marks=pytest.mark.slow) for c in COMBINATIONS[1:])],
)
def test_small_matrix_deterministic(use_pfor, per_example):
    _small_matrix(deterministic=True, use_pfor=use_pfor, per_example=per_example)


@pytest.mark.slow
@pytest.mark.parametrize(("use_pfor", "per_example"), COMBINATIONS)
def test_small_matrix_stochastic(use_pfor, per_example):
    _small_matrix(deterministic=False, use_pfor=use_pfor, per_example=per_example)
