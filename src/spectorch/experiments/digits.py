"""The demo problem of the tour and the docs: an MLP on the bundled 8x8 digits.

``spectorch density spectorch.experiments.digits:digits_problem`` runs the CLI on it
(``spectorch.demo:digits_problem``, its name in spectorch 0.1, still works).
"""

from __future__ import annotations

import os

import torch
from torch import nn

from spectorch import checks
from spectorch.data import Batches, load_digits
from spectorch.train import fit

__all__ = ["digits_mlp", "digits_problem", "train_digits_mlp"]


def digits_mlp(hidden: int = 26, *, dtype: torch.dtype = torch.float32, seed: int = 0) -> nn.Module:
    """A 64 → ``hidden`` → 10 tanh MLP; ``hidden=26`` gives 1,960 parameters."""
    checks.positive_int("hidden", hidden)
    g = torch.random.fork_rng()
    with g:
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(64, hidden), nn.Tanh(), nn.Linear(hidden, 10))
    return model.to(dtype)


def train_digits_mlp(
    *,
    hidden: int = 26,
    epochs: int = 60,
    dtype: torch.dtype = torch.float32,
    checkpoint: str | os.PathLike | None = None,
    progress: bool = False,
) -> tuple[nn.Module, list[float]]:
    """Train :func:`digits_mlp` with Adam (lr 1e-2, batches of 64) on the training split.

    Returns:
        The trained model in eval mode and its per-epoch training losses.
    """
    X, y = load_digits(split="train", dtype=dtype)
    model = digits_mlp(hidden, dtype=dtype)
    result = fit(
        model,
        nn.CrossEntropyLoss(),
        Batches(X, y, 64, shuffle=True),
        epochs=epochs,
        lr=1e-2,
        checkpoint=checkpoint,
        progress=progress,
        desc="train digits MLP",
    )
    return model, result.losses


def digits_problem(dtype: torch.dtype = torch.float32) -> tuple[nn.Module, nn.Module, Batches]:
    """(model, loss, data) for ``spectorch density``: the trained MLP, cross-entropy and
    the training split in fixed batches of 512."""
    model, _ = train_digits_mlp(dtype=dtype)
    X, y = load_digits(split="train", dtype=dtype)
    return model, nn.CrossEntropyLoss(), Batches(X, y, 512)
