"""google/spectral-density's tf2/lanczos_algorithm_test.py, translated from
TensorFlow 2 / Keras to PyTorch with its tolerances kept (``assertAllClose``'s
defaults: rtol = atol = 1e-6).

Translation: ``lanczos_algorithm.lanczos_algorithm(Qv, dim, order)`` returns ``(V, T)``
with the Lanczos vectors as columns; spectorch's :func:`spectorch.linalg.lanczos`
returns them as rows (``basis``), so ``V = basis.T``. ``approximate_hessian(model,
loss_fn, dataset.batch(5), order)`` is a :class:`spectorch.HessianOperator` over the
same batches followed by ``lanczos``. The Keras model ``Dense(7, relu), Dense(2)`` is
the same ``nn.Sequential`` (in float64: the original compared float32 results at
1e-6, which float64 meets with room to spare).
"""

from __future__ import annotations

import torch
from torch import nn

from spectorch import HessianOperator
from spectorch.linalg import lanczos


class _Matrix:
    def __init__(self, q):
        self.q, self.shape, self.dtype = q, tuple(q.shape), q.dtype

    def matvec(self, v):
        return self.q @ v


def test_full_order_recovery():
    """Matrix Q should be recovered by running Lanczos with dim=order."""
    q = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    res = lanczos(_Matrix(q), 3, seed=0)
    v, t = res.basis.T, res.tridiagonal
    torch.testing.assert_close(v @ t @ v.T, q, atol=1e-7, rtol=1e-6)


def test_full_order_recovery_on_model():
    """Hessian should be recovered by running Lanczos with order=dim."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(32, 3, generator=g, dtype=torch.float64) * 2 - 1
    labels = torch.rand(32, 2, generator=g, dtype=torch.float64) * 2 - 1
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 7), nn.ReLU(), nn.Linear(7, 2)).double()
    mse_loss = nn.MSELoss()

    # Compute Hessian explicitly, on the full dataset:
    full = HessianOperator(model, mse_loss, [(x, labels)]).to_dense()

    # A full rank approximation of the Hessian by Lanczos over batches of 5 (the last
    # one of 2), which should then be equal to the Hessian.
    batches = [(x[i : i + 5], labels[i : i + 5]) for i in range(0, 32, 5)]
    op = HessianOperator(model, mse_loss, batches)
    w_dim = op.shape[0]
    res = lanczos(op, w_dim, seed=0)
    v, t = res.basis.T, res.tridiagonal
    torch.testing.assert_close(v @ t @ v.T, full, atol=1e-6, rtol=1e-6)
