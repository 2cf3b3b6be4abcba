"""The preconditioned curvature P^{-1/2} H P^{-1/2} and Adam's P, against dense and
against torch's own Adam step."""

from __future__ import annotations

import pytest
import torch
from conftest import mlp
from torch import nn

from spectorch.curvature import HessianOperator, PreconditionedOperator, adam_preconditioner
from spectorch.linalg import top_eigenpairs


def _problem():
    model = mlp()
    g = torch.Generator().manual_seed(0)
    X = torch.randn(24, 5, generator=g, dtype=torch.float64)
    y = torch.arange(24) % 3
    return model, [(X, y)]


def _adam(model, data, steps=3, **kwargs):
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, **kwargs)
    loss = nn.CrossEntropyLoss()
    for _ in range(steps):
        opt.zero_grad()
        loss(model(data[0][0]), data[0][1]).backward()
        opt.step()
    return opt


def test_adam_preconditioner_reproduces_torch_adam_step():
    model, data = _problem()
    opt = _adam(model, data, steps=4, betas=(0.9, 0.99), eps=1e-6)
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    nn.CrossEntropyLoss()(model(data[0][0]), data[0][1]).backward()
    opt.step()
    P = adam_preconditioner(opt)
    for p, b, d in zip(model.parameters(), before, P, strict=True):
        m = opt.state[p]["exp_avg"]
        # θ_new = θ − η P⁻¹ m, P = (1 − β₁ᵗ)(√(v / (1 − β₂ᵗ)) + ε)
        torch.testing.assert_close(p.detach() - b, -1e-2 * m / d, rtol=1e-10, atol=1e-15)


def test_preconditioned_operator_equals_dense():
    model, data = _problem()
    opt = _adam(model, data)
    H = HessianOperator(model, nn.CrossEntropyLoss(), data)
    P = adam_preconditioner(opt, model.named_parameters())
    op = PreconditionedOperator(H, P)
    d = torch.cat([P[k].reshape(-1) for k in H.param_names])
    dense = H.to_dense()
    expected = dense / d.sqrt()[:, None] / d.sqrt()[None, :]
    torch.testing.assert_close(op.matmat(torch.eye(H.shape[0], dtype=torch.float64)), expected,
                               rtol=1e-10, atol=1e-12)  # fmt: skip
    v = torch.randn(H.shape[0], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    torch.testing.assert_close(op.matvec(v), expected @ v, rtol=1e-10, atol=1e-12)
    out = torch.empty_like(v)
    assert op.matvec(v, out=out) is out
    torch.testing.assert_close(out, expected @ v, rtol=1e-10, atol=1e-12)
    # the preconditioned sharpness: the top eigenvalue of the non-symmetric P⁻¹H
    top = torch.linalg.eigvals(dense / d[:, None]).real.max()
    pairs = top_eigenpairs(op, k=1, seed=0)
    assert pairs.values[0].item() == pytest.approx(top.item(), rel=1e-10)
    assert set(pairs.parameters(0)) == set(H.param_names)


def test_bad_preconditioners_are_refused():
    model, data = _problem()
    H = HessianOperator(model, nn.CrossEntropyLoss(), data)
    n = H.shape[0]
    with pytest.raises(ValueError, match=rf"diagonal must be a tensor of shape \({n},\)"):
        PreconditionedOperator(H, torch.ones(n + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="finite and positive"):
        PreconditionedOperator(H, torch.zeros(n, dtype=torch.float64))
    with pytest.raises(ValueError, match="lacks the parameters"):
        PreconditionedOperator(H, {"0.weight": torch.ones(6, 5)})
    with pytest.raises(ValueError, match=r"optimizer must be a torch\.optim\.Adam"):
        adam_preconditioner(torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(ValueError, match="take a step first"):
        adam_preconditioner(torch.optim.Adam(model.parameters()))
