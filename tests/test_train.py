"""The shared fit loop: resume equals an uninterrupted run; damaged checkpoints are named."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from spectorch.data import Batches
from spectorch.train import fit, load_checkpoint


def _setup(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(100, 4, generator=g)
    y = (X[:, 0] > 0).long()
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.2), nn.Linear(8, 2))
    return model, Batches(X, y, 16, shuffle=True, seed=seed)


def test_resumed_run_equals_uninterrupted(tmp_path):
    model_a, data_a = _setup()
    full = fit(model_a, nn.CrossEntropyLoss(), data_a, epochs=6, lr=0.05, progress=False)

    model_b, data_b = _setup()
    ckpt = tmp_path / "ckpt.pt"
    first = fit(
        model_b, nn.CrossEntropyLoss(), data_b, epochs=3, lr=0.05, checkpoint=ckpt, progress=False
    )
    assert first.epochs == 3
    model_c, data_c = _setup(seed=0)  # a fresh process: new model, same checkpoint
    second = fit(
        model_c, nn.CrossEntropyLoss(), data_c, epochs=6, lr=0.05, checkpoint=ckpt, progress=False
    )
    assert second.resumed_from == 3 and second.epochs == 6
    assert second.losses == pytest.approx(full.losses, rel=0, abs=0)
    for p, q in zip(model_a.parameters(), model_c.parameters(), strict=True):
        assert torch.equal(p, q)
    assert not model_c.training  # eval mode after the fit


def test_interrupt_keeps_last_checkpoint(tmp_path):
    model, data = _setup()
    ckpt = tmp_path / "ckpt.pt"
    calls = {"n": 0}

    def loss(o, t):
        calls["n"] += 1
        if calls["n"] == 7 * 3 + 2:  # in the middle of epoch 4 (7 batches an epoch)
            raise KeyboardInterrupt
        return nn.functional.cross_entropy(o, t)

    with pytest.raises(KeyboardInterrupt):
        fit(model, loss, data, epochs=5, checkpoint=ckpt, progress=False)
    assert load_checkpoint(ckpt)["epoch"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temporary left


def test_damaged_checkpoint_is_a_clear_error(tmp_path):
    model, data = _setup()
    ckpt = tmp_path / "ckpt.pt"
    fit(model, nn.CrossEntropyLoss(), data, epochs=1, checkpoint=ckpt, progress=False)
    raw = ckpt.read_bytes()
    ckpt.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=r"ckpt\.pt is corrupt or truncated"):
        fit(model, nn.CrossEntropyLoss(), data, epochs=2, checkpoint=ckpt, progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_bad_arguments():
    model, data = _setup()
    with pytest.raises(ValueError, match="epochs must be a positive int, got 0"):
        fit(model, nn.CrossEntropyLoss(), data, epochs=0)
    with pytest.raises(TypeError, match="re-iterable"):
        fit(model, nn.CrossEntropyLoss(), iter(data), epochs=1)
    with pytest.raises(ValueError, match="same number of samples"):
        Batches(torch.ones(3, 2), torch.ones(4), 2)
