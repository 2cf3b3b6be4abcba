"""Shared fixtures: small float64 networks whose curvature can be formed densely."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double().eval()


def cnn() -> nn.Module:
    torch.manual_seed(1)
    return (
        nn.Sequential(
            nn.Conv2d(2, 3, 3, padding=1),
            nn.Softplus(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(3 * 3 * 3, 3),
        )
        .double()
        .eval()
    )


def inputs_for(name: str, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (n, 5) if name == "mlp" else (n, 2, 6, 6)
    return torch.randn(shape, generator=g, dtype=torch.float64)


def targets_for(loss: str, n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if loss == "ce":
        return torch.randint(0, 3, (n,), generator=g)
    return torch.randn(n, 3, generator=g, dtype=torch.float64)


def flat_params(model: nn.Module) -> tuple[torch.Tensor, callable]:
    names = [k for k, _ in model.named_parameters()]
    tensors = [p.detach() for p in model.parameters()]
    shapes = [t.shape for t in tensors]
    numels = [t.numel() for t in tensors]

    def unflatten(flat: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            k: x.reshape(s)
            for k, x, s in zip(names, torch.split(flat, numels), shapes, strict=True)
        }

    return torch.cat([t.reshape(-1) for t in tensors]), unflatten


def forward_flat(model: nn.Module, unflatten, flat: torch.Tensor, X: torch.Tensor) -> torch.Tensor:
    return functional_call(model, unflatten(flat), (X,))


@pytest.fixture
def rng() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


def matrix_with_spectrum(eigenvalues: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """A dense symmetric matrix Q diag(λ) Qᵀ with a random orthogonal Q."""
    n = eigenvalues.numel()
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return (Q * eigenvalues.to(torch.float64)) @ Q.T


@pytest.fixture(scope="session")
def rim_cli_run(tmp_path_factory):
    """One small `spectorch rim train` (digits-cs, 1 epoch), shared by the tests that
    need a trained RIM directory: ``(directory, completed process)``."""
    import os
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("rim") / "rim"
    r = subprocess.run(
        [sys.executable, "-m", "spectorch.cli", "rim", "train", "--task", "digits-cs",
         "--epochs", "1", "--features", "8", "--steps", "3", "--out", str(out), "--quiet"],
        capture_output=True, text=True, timeout=300,
        env=dict(os.environ, PYTHONWARNINGS="ignore"),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return out, r
