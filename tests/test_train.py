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
    assert load_checkpoint(ckpt)["step"] == 3
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


def _quadratic():
    """One weight w, loss (w x - x)² on one batch: plain SGD moves w by a known rule."""
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(3.0)
    x = torch.ones(1, 1, dtype=torch.float32)
    return model, [(x, x)]


def test_ema_keeps_the_exact_exponential_average(tmp_path):
    model, data = _quadratic()
    sgd = lambda params: torch.optim.SGD(params, lr=0.1)  # noqa: E731
    best = tmp_path / "best.pt"
    result = fit(
        model,
        nn.MSELoss(),
        data,
        epochs=5,
        optimizer=sgd,
        ema_decay=0.5,
        validation=data,
        best_checkpoint=best,
        progress=False,
    )
    w, ema, emas = 3.0, None, []
    for _ in range(5):
        w = w - 0.1 * 2 * (w - 1.0)  # d/dw (w - 1)²
        ema = w if ema is None else 0.5 * ema + 0.5 * w
        emas.append((ema - 1.0) ** 2)
    assert model.weight.item() == pytest.approx(ema, rel=1e-6)  # the model ends averaged
    assert result.val_losses == pytest.approx(emas, rel=1e-5)  # validated with the average
    from spectorch.train import load_best

    saved = load_best(best)
    assert saved["epoch"] == 5 and float(saved["model"]["weight"]) == pytest.approx(ema, rel=1e-6)


def test_clip_bounds_every_step():
    model, data = _quadratic()
    sgd = lambda params: torch.optim.SGD(params, lr=0.1)  # noqa: E731
    fit(model, nn.MSELoss(), data, epochs=3, optimizer=sgd, clip=0.5, progress=False)
    assert model.weight.item() == pytest.approx(3.0 - 3 * 0.1 * 0.5, rel=1e-6)  # |grad| = 4 > 0.5


def test_patience_stops_and_is_resumed(tmp_path):
    model, data = _quadratic()
    frozen = lambda params: torch.optim.SGD(params, lr=0.0)  # noqa: E731
    ckpt = tmp_path / "last.pt"
    result = fit(
        model,
        nn.MSELoss(),
        data,
        epochs=10,
        optimizer=frozen,
        validation=data,
        patience=2,
        checkpoint=ckpt,
        progress=False,
    )
    assert result.stopped_early and result.epochs == 3 and result.best_epoch == 1
    again = fit(
        model,
        nn.MSELoss(),
        data,
        epochs=10,
        optimizer=frozen,
        validation=data,
        patience=2,
        checkpoint=ckpt,
        progress=False,
    )
    assert again.stopped_early and again.epochs == 3  # the waiting count was saved


def test_fit_checks_its_new_arguments():
    model, data = _quadratic()
    for kwargs, message in (
        ({"ema_decay": 1.0}, "ema_decay must lie in"),
        ({"clip": -1.0}, "clip must be >= 0"),
        ({"patience": 0}, "patience must be a positive int"),
    ):
        with pytest.raises(ValueError, match=message):
            fit(model, nn.MSELoss(), data, epochs=1, progress=False, **kwargs)
    with pytest.raises(TypeError, match="exactly one of loss_fn and compute_loss"):
        fit(model, None, data, epochs=1, progress=False)
