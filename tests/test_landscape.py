"""Loss landscapes against the exact quadratic of a linear least-squares model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import cnn, mlp
from torch import nn

from spectorch.curvature import HessianOperator, filter_normalized, loss_landscape


def _quadratic():
    # a linear model with the mean squared error: the loss is exactly quadratic in θ
    torch.manual_seed(0)
    model = nn.Linear(6, 2).double()
    g = torch.Generator().manual_seed(1)
    X = torch.randn(30, 6, generator=g, dtype=torch.float64)
    Y = torch.randn(30, 2, generator=g, dtype=torch.float64)
    return HessianOperator(model, nn.MSELoss(), [(X[:17], Y[:17]), (X[17:], Y[17:])])


def _gradient(op):
    model = op.model
    model.zero_grad()
    X = torch.cat([b[0] for b in op.data])
    Y = torch.cat([b[1] for b in op.data])
    nn.MSELoss()(model(X), Y).backward()
    return torch.cat([p.grad.reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize("dims", [1, 2])
def test_top_directions_give_the_exact_quadratic(dims, tmp_path):
    op = _quadratic()
    land = loss_landscape(op, "top", dims=dims, span=0.5, points=5, seed=0)
    g, L0 = _gradient(op), op.loss()
    lam = land.eigenvalues
    dense = torch.linalg.eigvalsh(op.to_dense()).flip(0)[:dims].numpy()
    np.testing.assert_allclose(lam, dense, rtol=1e-10)
    a = land.coords
    if dims == 1:
        expected = L0 + a * float(g @ land.directions[0]) + 0.5 * lam[0] * a**2
    else:
        ga, gb = (float(g @ d) for d in land.directions)
        A, B = np.meshgrid(a, a, indexing="ij")
        expected = L0 + A * ga + B * gb + 0.5 * (lam[0] * A**2 + lam[1] * B**2)
    np.testing.assert_allclose(land.losses, expected, rtol=1e-10, atol=1e-12)
    assert land.center == pytest.approx(L0, rel=1e-12)
    assert land.plot(tmp_path / "land.png").stat().st_size > 1000
    land.save(tmp_path / "land.npz")
    assert np.load(tmp_path / "land.npz")["losses"].shape == land.losses.shape


def test_random_directions_are_filter_normalised():
    model = cnn()
    params = {k: v.detach() for k, v in model.named_parameters()}
    g = torch.Generator().manual_seed(0)
    raw = {k: torch.randn(v.shape, generator=g, dtype=torch.float64) for k, v in params.items()}
    d = filter_normalized(raw, params)
    for k, w in params.items():
        if w.ndim <= 1:
            assert torch.count_nonzero(d[k]) == 0  # biases get no direction
        else:
            torch.testing.assert_close(d[k].reshape(w.shape[0], -1).norm(dim=1),
                                       w.reshape(w.shape[0], -1).norm(dim=1))  # fmt: skip


def test_random_landscape_does_not_move_the_weights():
    model = mlp()
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(12, 5, generator=g, dtype=torch.float64), torch.arange(12) % 3)]
    op = HessianOperator(model, nn.CrossEntropyLoss(), data)
    before = [p.detach().clone() for p in model.parameters()]
    land = loss_landscape(op, "random", dims=2, points=3, span=0.2)
    assert land.losses.shape == (3, 3) and land.kind == "random"
    for p, b in zip(model.parameters(), before, strict=True):
        assert torch.equal(p, b)
    assert land.center == pytest.approx(op.loss(), rel=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dims": 3}, r"dims must be an int in \[1, 2\]"),
        ({"points": 4}, "points must be odd"),
        ({"span": 0.0}, "span must be a positive"),
        ({"directions": "sharp"}, "directions must be one of"),
        ({"directions": torch.zeros(2, 3)}, r"directions must have shape \(1, 14\)"),
    ],
)
def test_bad_landscape_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        loss_landscape(_quadratic(), **kwargs)


def test_landscape_needs_a_curvature_operator():
    with pytest.raises(TypeError, match="op must be a curvature operator"):
        loss_landscape(torch.eye(3, dtype=torch.float64))
