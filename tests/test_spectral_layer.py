"""The Spectral layer and the IDX reader (issue 5, first part)."""

from __future__ import annotations

import copy
import gzip

import numpy as np
import pytest
import torch

from spectorch.data import load_mnist, read_idx, write_idx
from spectorch.nn import Spectral

F64 = torch.float64


@pytest.mark.parametrize("activation", [None, "tanh"])
@pytest.mark.parametrize("use_bias", [False, True])
def test_spectral_equals_its_linear_exactly(activation, use_bias):
    torch.manual_seed(0)
    layer = Spectral(
        7,
        5,
        activation=activation,
        use_bias=use_bias,
        is_diag_start_trainable=True,
        diag_start_initializer="ones",
        dtype=F64,
    )
    with torch.no_grad():
        layer.diag_start.normal_()
        layer.diag_end.normal_()
        if layer.bias is not None:
            layer.bias.normal_()
    x = torch.randn(11, 7, dtype=F64)
    linear = layer.to_linear()
    assert torch.equal(layer(x), linear(x))
    lin = linear if activation is None else linear[0]
    assert isinstance(lin, torch.nn.Linear) and lin.weight.shape == (5, 7)


def test_kernel_is_the_spectraltools_formula_and_defaults_are_minus_base_times_diag_end():
    torch.manual_seed(1)
    layer = Spectral(4, 3, dtype=F64)
    assert torch.equal(layer.diag_start, torch.zeros(4, dtype=F64))
    assert torch.equal(layer.diag_end, torch.ones(3, dtype=F64))
    torch.testing.assert_close(layer.kernel(), -layer.base * layer.diag_end, rtol=0, atol=0)
    with torch.no_grad():
        layer.diag_start.copy_(torch.arange(4.0))
        layer.diag_end.copy_(torch.tensor([0.5, -2.0, 3.0]))
    k = layer.kernel()
    for j in range(4):
        for i in range(3):
            assert k[j, i] == layer.base[j, i] * (layer.diag_start[j] - layer.diag_end[i])
    bound = (6 / 7) ** 0.5  # glorot uniform on a 4 x 3 matrix
    assert layer.base.abs().max() <= bound


def test_trainable_flags_change_after_construction_and_eigenvalue_training_leaves_bases():
    torch.manual_seed(2)
    layer = Spectral(6, 4, use_bias=True)
    assert (
        layer.is_base_trainable
        and layer.is_diag_end_trainable
        and not layer.is_diag_start_trainable
    )
    layer.is_base_trainable = False
    base = layer.base.detach().clone()
    end = layer.diag_end.detach().clone()
    opt = torch.optim.SGD([p for p in layer.parameters() if p.requires_grad], lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        layer(torch.randn(8, 6)).pow(2).sum().backward()
        opt.step()
    assert torch.equal(layer.base, base) and layer.base.grad is None
    assert not torch.equal(layer.diag_end, end)


def test_bad_layer_arguments_are_named():
    with pytest.raises(ValueError, match="in_features"):
        Spectral(0, 3)
    with pytest.raises(ValueError, match="activation"):
        Spectral(3, 3, activation="swishy")
    with pytest.raises(ValueError, match="diag_end_initializer"):
        Spectral(3, 3, diag_end_initializer="twos")


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip_and_mnist_layout(tmp_path, suffix):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 5, dtype=np.uint8)
    write_idx(tmp_path / f"t10k-images-idx3-ubyte{suffix}", images)
    write_idx(tmp_path / f"t10k-labels-idx1-ubyte{suffix}", labels)
    raw = (tmp_path / f"t10k-images-idx3-ubyte{suffix}").read_bytes()
    if suffix:
        raw = gzip.decompress(raw)
    assert raw[:4] == bytes([0, 0, 0x08, 3])  # the published magic number 2051
    assert int.from_bytes(raw[4:8], "big") == 5 and len(raw) == 16 + 5 * 784
    got_images, got_labels = load_mnist(tmp_path, "test")
    assert np.array_equal(got_images, images) and np.array_equal(got_labels, labels)
    floats = rng.standard_normal((3, 2)).astype(np.float32)
    write_idx(tmp_path / f"f.idx{suffix}", floats)
    assert np.array_equal(read_idx(tmp_path / f"f.idx{suffix}"), floats)


def test_idx_errors_name_the_file(tmp_path):
    write_idx(tmp_path / "a.idx", np.zeros((2, 3), dtype=np.uint8))
    (tmp_path / "short.idx").write_bytes((tmp_path / "a.idx").read_bytes()[:-1])
    with pytest.raises(ValueError, match=r"short\.idx: 17 bytes, but the header \(2, 3\)"):
        read_idx(tmp_path / "short.idx")
    (tmp_path / "magic.idx").write_bytes(b"\x01\x00\x08\x01\x00\x00\x00\x00")
    with pytest.raises(ValueError, match=r"magic\.idx: not an IDX file"):
        read_idx(tmp_path / "magic.idx")
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        load_mnist(tmp_path, "train")
    with pytest.raises(ValueError, match="split"):
        load_mnist(tmp_path, "val")
    with pytest.raises(ValueError, match="IDX holds"):
        write_idx(tmp_path / "b.idx", np.zeros(2, dtype=np.uint64))


# -- spectral pruning ---------------------------------------------------------------------


def _model(act=torch.nn.Tanh, start=False):
    torch.manual_seed(3)
    m = torch.nn.Sequential(
        Spectral(12, 40, use_bias=True, dtype=F64),
        act(),
        Spectral(40, 30, is_diag_start_trainable=start, use_bias=True, dtype=F64),
        act(),
        torch.nn.Linear(30, 5, dtype=F64),
    )
    with torch.no_grad():
        for layer in (m[0], m[2]):
            layer.diag_end.normal_()
            layer.diag_start.normal_()
            layer.bias.normal_()
    return m


@pytest.mark.parametrize("percentile", [0, 30, 60, 90])
@pytest.mark.parametrize("act", [torch.nn.Tanh, torch.nn.ReLU])
def test_pruning_removes_about_p_percent_and_equals_zeroing_those_nodes(percentile, act):
    from spectorch.prune import spectral_pruning

    model = _model(act)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned, report = spectral_pruning(model, percentile, return_report=True)
    # the input model is untouched
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    masks = list(report.kept.values())
    assert [m.size for m in masks] == [40, 30]
    removed = 1 - sum(int(m.sum()) for m in masks) / 70
    assert abs(removed - percentile / 100) <= 1.5 / 70 + 1e-9
    assert pruned[0].out_features == int(masks[0].sum()) == pruned[2].in_features
    assert pruned[4].in_features == int(masks[1].sum())
    # the original with the removed nodes' outgoing weights zeroed gives the same outputs
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        zeroed[2].base[~torch.as_tensor(masks[0])] = 0
        zeroed[4].weight[:, ~torch.as_tensor(masks[1])] = 0
    x = torch.randn(64, 12, dtype=F64)
    torch.testing.assert_close(pruned(x), zeroed(x), rtol=1e-13, atol=1e-13)
    n_params = sum(p.numel() for p in pruned.parameters())
    assert percentile == 0 or n_params < sum(p.numel() for p in model.parameters())


def test_pruning_with_trained_start_eigenvalues_needs_both_conditions():
    from spectorch.prune import spectral_pruning

    model = _model(start=True)
    _, report = spectral_pruning(model, 50, return_report=True)
    cut = report.cutoff
    end = model[0].diag_end.detach().abs().numpy() >= cut
    start = model[2].diag_start.detach().abs().numpy() >= cut
    assert np.array_equal(report.kept["0->2"], end & start)


def test_pruning_refuses_and_skips_clearly():
    from spectorch.prune import spectral_pruning

    with pytest.raises(ValueError, match="percentile"):
        spectral_pruning(_model(), float("nan"))
    model = _model()  # spectraltools clips a percentile beyond 100; so do we, with a warning
    with pytest.warns(UserWarning, match="percentile 120 clipped to"):
        clipped = spectral_pruning(model, 120)
    assert clipped[0].out_features == spectral_pruning(model, 100)[0].out_features
    with pytest.raises(TypeError, match=r"torch\.fx cannot trace"):
        spectral_pruning(_Untraceable(), 10)
    with pytest.raises(ValueError, match="no prunable Spectral"):
        spectral_pruning(torch.nn.Sequential(torch.nn.Linear(3, 3), Spectral(3, 2)), 10)
    blocked = torch.nn.Sequential(
        Spectral(6, 8),
        torch.nn.LayerNorm(8),
        Spectral(8, 7),
        torch.nn.ReLU(),
        torch.nn.Linear(7, 2),
    )
    with pytest.warns(RuntimeWarning, match="LayerNorm"):
        pruned, report = spectral_pruning(blocked, 50, return_report=True)
    assert pruned[0].out_features == 8 and list(report.kept) == ["2->4"]
    assert pruned(torch.randn(3, 6)).shape == (3, 2)


def _digits_problem():
    from spectorch.data import Batches, load_digits

    xtr, ytr = load_digits(split="train")
    xte, yte = load_digits(split="test")
    torch.manual_seed(0)
    model = torch.nn.Sequential(Spectral(64, 128, activation="tanh"), Spectral(128, 10))
    return model, Batches(xtr, ytr, batch_size=64, shuffle=True), Batches(xte, yte, batch_size=512)


def test_eigenvalue_only_training_leaves_the_bases_and_pretrain_stays_within_tolerance():
    from spectorch.prune import make_evaluate, make_fit, spectral_distiller, spectral_pretrain

    model, train, test = _digits_problem()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    evaluate = make_evaluate(test)
    spec_fit = make_fit(train, epochs=3, lr=3e-2)
    pruned = spectral_pretrain(model, spec_fit, evaluate, max_delta=5.0)
    for k, v in model.state_dict().items():  # input untouched
        assert torch.equal(v, before[k])
    # the bases of the returned model are the initial ones, restricted to the kept nodes
    kept = pruned[0].out_features
    assert kept < 128
    for j in range(kept):
        col = pruned[0].base[:, j]
        assert any(torch.equal(col, before["0.base"][:, i]) for i in range(128))
    # and its accuracy is within 5% of the eigenvalue-trained, unpruned model's
    from spectorch.prune import eigenvalues_only

    reference = copy.deepcopy(model)
    eigenvalues_only(reference)
    spec_fit(reference)
    assert torch.equal(reference[0].base, before["0.base"])
    ref_acc, acc = evaluate(reference)["acc"], evaluate(pruned)["acc"]
    assert abs(acc - ref_acc) <= 0.05 * ref_acc
    with pytest.raises(ValueError, match="percentile"):
        spectral_distiller(model, lambda m: pytest.fail("trained before the check"), float("nan"))
    with pytest.raises(TypeError, match="evaluate"):
        spectral_pretrain(model, spec_fit, 3, max_delta=5.0)
    distilled = spectral_distiller(model, spec_fit, 50, fine_tune=make_fit(train, epochs=2))
    assert distilled[0].out_features < 128 and distilled[0].is_base_trainable
    assert evaluate(distilled)["acc"] > 0.8


class _Untraceable(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = Spectral(4, 6), Spectral(6, 2)

    def forward(self, x):
        if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace it
            x = -x
        return self.b(self.a(x))


class _Chain(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.a = Spectral(10, 30, use_bias=True, dtype=F64)
        self.b = Spectral(30, 20, dtype=F64)
        self.c = torch.nn.Linear(20, 3, dtype=F64)
        with torch.no_grad():
            self.a.diag_end.normal_()
            self.b.diag_end.normal_()

    def forward(self, x):
        h = torch.tanh(self.a(x))
        h = torch.nn.functional.relu(self.b(h))
        return self.c(h)


class _Branched(_Chain):
    def forward(self, x):
        h = self.a(x)
        return self.c(torch.relu(self.b(torch.tanh(h)))) + h[:, :3]


def test_pruning_models_torch_fx_can_trace():
    from spectorch.prune import spectral_pruning

    model = _Chain()
    pruned, report = spectral_pruning(model, 40, return_report=True)
    assert list(report.kept) == ["a->b", "b->c"]
    ka, kb = (torch.as_tensor(m) for m in report.kept.values())
    assert pruned.a.out_features == int(ka.sum()) == pruned.b.in_features
    zeroed = copy.deepcopy(model)
    with torch.no_grad():
        zeroed.b.base[~ka] = 0
        zeroed.c.weight[:, ~kb] = 0
    x = torch.randn(16, 10, dtype=F64)
    torch.testing.assert_close(pruned(x), zeroed(x), rtol=1e-13, atol=1e-13)
    assert model.a.out_features == 30  # the input model is untouched
    with pytest.warns(RuntimeWarning, match="a: its output branches"):
        pruned, report = spectral_pruning(_Branched(), 40, return_report=True)
    assert list(report.kept) == ["b->c"] and pruned.a.out_features == 30
    assert pruned(x).shape == (16, 3)
