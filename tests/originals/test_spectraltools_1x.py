"""spectraltools 1.x's pruning by masks (``prune_percentile``, ``metric_based_pruning``,
``original_model``, ``Spectral(eigenvalue_mask=...)``), against 1.x's own code.

1.x (1.0.1, 1.1.0, 1.2.0 on the package registry) has no test suite; the references
below are its functions translated line by line from Keras/NumPy (1.0.1's
``eigenvalue_cutoff`` and ``Spectral.conditions``/``mask_diag_end``/``call``, and the
loop of ``metric_based_pruning``), run on the same weights.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from spectorch.data import Batches, load_digits
from spectorch.nn import Spectral
from spectorch.prune import (
    make_evaluate,
    make_fit,
    metric_based_pruning,
    original_model,
    prune_percentile,
    spectral_pruning,
)

# --- 1.x, translated ---------------------------------------------------------------


def _cutoff_1x(layers, perc):
    """1.0.1's eigenvalue_cutoff: |diag_end| of every Spectral layer, np.percentile."""
    eigvals = np.concatenate([lay.diag_end.detach().numpy().squeeze() for lay in layers], axis=0)
    return np.percentile(abs(eigvals.flatten()), np.clip(perc, 0, 100), 0)


def _call_1x(lay, inputs, mask):
    """1.0.1's Spectral.call with diag_end_mask set (mask multiplies diag_end and bias)."""
    base = lay.base.detach().numpy()
    diag_start = lay.diag_start.detach().numpy().reshape(-1, 1)
    diag_end = lay.diag_end.detach().numpy().reshape(1, -1) * mask
    kernel = base * (diag_start - diag_end)
    out = inputs @ kernel
    if lay.bias is not None:
        out = out + lay.bias.detach().numpy() * mask
    return np.maximum(out, 0)  # relu


def _model(seed=0, hidden=40):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        Spectral(64, hidden, "relu", use_bias=True),
        Spectral(hidden, 30, "relu", use_bias=True),
        torch.nn.Linear(30, 10),
    )


@pytest.fixture(scope="module")
def trained():
    x, y = load_digits(split="train")
    model = _model()
    make_fit(Batches(x, y, 64, shuffle=True), epochs=4, lr=3e-3)(model)
    return model


# --- the layer's mask -----------------------------------------------------------------


def test_the_mask_is_1x_call_and_original_model_removes_it():
    torch.manual_seed(1)
    lay = Spectral(5, units=7, activation="relu", use_bias=True, bias_initializer="ones")
    with torch.no_grad():
        lay.diag_end.normal_()
    x = torch.randn(4, 5)
    cut = float(np.percentile(lay.diag_end.detach().abs().numpy(), 40))
    expected_mask = (lay.diag_end.detach().abs().numpy() >= cut).astype(np.float32)
    lay.mask_diag_end(cut)
    np.testing.assert_array_equal(lay.diag_end_mask.numpy(), expected_mask)
    np.testing.assert_allclose(
        lay(x).detach().numpy(), _call_1x(lay, x.numpy(), expected_mask), rtol=1e-6, atol=1e-6
    )
    assert lay.get_eigenvalues()["diag_end"].shape == (1, 7)
    assert lay.get_eigenvalues()["diag_start"].shape == (5, 1)
    np.testing.assert_array_equal(
        lay.get_eigenvalues(masked=True)["diag_end"][0],
        lay.diag_end.detach().numpy() * expected_mask,
    )
    # the constructor's mask (1.0.1 / 1.2.0: eigenvalue_mask; 1.1.0: diag_end_mask)
    again = Spectral(5, units=7, activation="relu", use_bias=True, eigenvalue_mask=expected_mask)
    again.load_state_dict(lay.state_dict())
    torch.testing.assert_close(again(x), lay(x), rtol=0, atol=0)
    # the state dict carries the mask both ways
    plain = Spectral(5, units=7, activation="relu", use_bias=True)
    plain.load_state_dict(lay.state_dict())
    torch.testing.assert_close(plain(x), lay(x), rtol=0, atol=0)
    lay.clear_mask()
    again.load_state_dict(lay.state_dict())
    assert again.diag_end_mask is None
    with pytest.raises(ValueError, match="eigenvalue_mask"):
        Spectral(5, units=7, eigenvalue_mask=[1, 0])


def test_diag_regularizer_param_and_0_4_1_glorot_eigenvalues():
    torch.manual_seed(0)
    lay = Spectral(4, units=6, diag_regularizer="l2", diag_regularizer_param=5e-4)
    expected = 5e-4 * (lay.diag_start.square().sum() + lay.diag_end.square().sum())
    torch.testing.assert_close(lay.regularization_loss(), expected)
    # 0.4.1's diag_end default: Glorot-uniform on the (1, units) matrix
    lay = Spectral(4, units=500, diag_end_initializer="glorot_uniform")
    bound = (6 / (1 + 500)) ** 0.5
    assert lay.diag_end.abs().max() <= bound and lay.diag_end.abs().max() > 0.9 * bound


# --- prune_percentile / original_model ------------------------------------------------


def test_prune_percentile_masks_as_1x_in_place_or_on_a_copy(trained):
    x, _ = load_digits(split="test")
    layers = [m for m in trained.modules() if isinstance(m, Spectral)]
    before = trained(x).detach().clone()
    cut = _cutoff_1x(layers, 30)
    # 1.2.0's form (compile_dictionary third): a copy, the model untouched
    compiled = prune_percentile(
        trained, 30, dict(optimizer="adam", loss="sparse_categorical_crossentropy"), verbose=False
    )
    assert compiled is not trained and all(m.diag_end_mask is None for m in layers)
    # 1.0.1's create_copy
    copied = prune_percentile(trained, 30, create_copy=True, verbose=False)
    copied_layers = [m for m in copied.modules() if isinstance(m, Spectral)]
    for original, pruned in zip(layers, copied_layers, strict=True):
        keep = (original.diag_end.detach().abs().numpy() >= cut).astype(np.float32)
        np.testing.assert_array_equal(pruned.diag_end_mask.numpy(), keep)
    torch.testing.assert_close(compiled(x), copied(x), rtol=0, atol=0)
    masked = sum(int((m.diag_end_mask == 0).sum()) for m in copied.modules() if hasattr(m, "base"))
    assert masked == int(
        np.sum(np.concatenate([abs(m.diag_end.detach().numpy()) for m in layers]) < cut)
    )
    # in place (1.0.1's default), then original_model brings every node back
    assert prune_percentile(trained, 30, verbose=False) is trained
    torch.testing.assert_close(trained(x), copied(x), rtol=0, atol=0)
    assert original_model(trained) is trained
    torch.testing.assert_close(trained(x), before, rtol=0, atol=0)
    # a structural pruning of the masked model treats masked nodes as zero: same outputs
    smaller = spectral_pruning(copied, 0)
    torch.testing.assert_close(smaller(x), copied(x), rtol=1e-5, atol=1e-5)


def test_prune_percentile_refuses_what_1x_refused(trained, capsys):
    with pytest.raises(ValueError, match="percentile_threshold must be in"):
        prune_percentile(trained, 101)
    with pytest.raises(ValueError, match="compile_dictionary"):
        prune_percentile(trained, 10, compile_dictionary={"loss_weights": [1.0]})
    with pytest.raises(ValueError, match="no Spectral layer"):
        prune_percentile(torch.nn.Linear(3, 3), 10)
    assert all(m.diag_end_mask is None for m in trained.modules() if isinstance(m, Spectral))
    prune_percentile(trained, 0, create_copy=True)
    assert "Number of nodes masked: 0 out of 70 (0.00%)" in capsys.readouterr().out


# --- metric_based_pruning -------------------------------------------------------------


def _loop_1x(model, evaluate, max_delta, step):
    """1.0.1's loop (the percentile chosen), with its step back made ``step``."""
    initial = evaluate(model)
    for perc in range(0, 100, step):
        value = evaluate(prune_percentile(model, perc, create_copy=True, verbose=False))
        if abs(value - initial) / initial * 100 > max_delta:
            return max(perc - step, 0)
    return None


def test_metric_based_pruning_keeps_the_last_percentile_within_the_tolerance(trained):
    x, y = load_digits(split="test")
    ev = dict(x=x.numpy(), y=y.numpy(), batch_size=128, verbose=0)
    acc = make_evaluate(Batches(x, y, 128))

    def accuracy(m):
        return acc(m)["acc"]

    expected = _loop_1x(trained, accuracy, 2.0, 10)
    assert expected is not None and expected > 0
    compile_dictionary = dict(
        optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    # 1.2.0's form: a pruned copy
    pruned = metric_based_pruning(
        trained, ev, compile_dictionary, "accuracy", 2.0, percentile_step=10, verbose=False
    )
    reference = prune_percentile(trained, expected, create_copy=True, verbose=False)
    assert pruned is not trained
    assert all(m.diag_end_mask is None for m in trained.modules() if isinstance(m, Spectral))
    torch.testing.assert_close(pruned(x), reference(x), rtol=0, atol=0)
    # 1.0.1's form: in place, compare_metric third
    work = _model()
    work.load_state_dict(trained.state_dict())
    out = metric_based_pruning(work, ev, "accuracy", 2.0, percentile_step=10, verbose=False)
    assert out is work
    torch.testing.assert_close(work(x), reference(x), rtol=0, atol=0)
    # the loss, and spectorch's evaluate callable
    by_loss = metric_based_pruning(
        trained,
        evaluate=acc,
        compare_metric="loss",
        max_delta_percent=5,
        percentile_step=10,
        verbose=False,
    )
    assert by_loss is trained
    original_model(trained)


def test_metric_based_pruning_checks_before_evaluating(trained):
    x, y = load_digits(split="test")
    ev = dict(x=x.numpy(), y=y.numpy())
    calls = []

    def evaluate(m):
        calls.append(1)
        return {"loss": 1.0, "acc": 1.0}

    with pytest.raises(ValueError, match="not found in the model's metrics"):
        metric_based_pruning(trained, ev, {"loss": "sparse_categorical_crossentropy"})
    with pytest.raises(ValueError, match="max_delta_percent"):
        metric_based_pruning(trained, evaluate=evaluate, max_delta_percent=-1)
    with pytest.raises(ValueError, match="percentile_step"):
        metric_based_pruning(trained, evaluate=evaluate, percentile_step=0)
    with pytest.raises(TypeError, match="exactly one"):
        metric_based_pruning(trained)
    assert not calls
    # never beyond the tolerance: pruned at the last percentile, and said so
    with pytest.warns(UserWarning, match="stayed within"):
        m = metric_based_pruning(trained, evaluate=evaluate, percentile_step=50, verbose=False)
    assert m is trained
    masks = [mm.diag_end_mask for mm in trained.modules() if isinstance(mm, Spectral)]
    assert sum(int((k == 0).sum()) for k in masks) == 35  # half of 70 nodes
    original_model(trained)


def test_metric_based_pruning_says_when_outputs_look_like_probabilities(trained):
    x, y = load_digits(split="test")
    soft = torch.nn.Sequential(*trained, torch.nn.Softmax(dim=-1))
    ev = dict(x=x.numpy(), y=y.numpy())
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        metric_based_pruning(soft, ev, percentile_step=50, max_delta_percent=100, verbose=False)
    assert any("sum to one" in str(w.message) for w in seen)
    original_model(trained)


def test_the_dictionaries_evaluate_a_float64_model(trained):
    import copy

    x, y = load_digits(split="test")
    model = copy.deepcopy(trained).double()
    ev = dict(x=x.numpy(), y=y.numpy(), batch_size=128)
    with pytest.warns(UserWarning, match="stayed within"):
        out = metric_based_pruning(
            model, ev, percentile_step=50, max_delta_percent=100, verbose=False
        )
    assert out is model and model[0].diag_end_mask.dtype == torch.float64
