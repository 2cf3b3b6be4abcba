"""Faithful to the originals (issue 16): code written for SpIN, torch-rim and
spectraltools behaves here as it did there, or the difference is loud. One test per
silent difference that a migrating user met."""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import pytest
import torch

from spectorch import spin
from spectorch.nn import Spectral
from spectorch.prune import spectral_pruning
from spectorch.rim import RIM, ConvRNN, LinearGaussian


# ----------------------------------------------------------------------------- SpIN
def _rbf(x, y):
    return torch.exp(-((x - y) ** 2).sum(1))


def _net(seed: int = 0, operator=None):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    g = torch.Generator().manual_seed(1)

    def batch():
        return torch.randn(32, 2, generator=g)

    net = spin.SpectralNetwork(operator or spin.KernelOperator(_rbf), model, batch)
    return net, model, torch.optim.Adam(model.parameters(), lr=1e-2)


def _logging(path):
    return {
        "config": {},
        "log_image_every": 2,
        "save_params_every": 2,
        "saver_path": str(path),
        "saver_name": "run",
    }


def test_spin_train_starts_afresh_by_default_as_the_original(tmp_path):
    net, _, opt = _net()
    net.train(opt, 5, _logging(tmp_path), progress=False)
    # a second run in the same place, longer: a fresh run, not the old one continued
    net2, model2, opt2 = _net()
    net2.train(opt2, 8, _logging(tmp_path), progress=False)
    net3, model3, opt3 = _net()
    net3.train(opt3, 8, _logging(tmp_path / "elsewhere"), progress=False)
    for a, b in zip(model2.parameters(), model3.parameters(), strict=True):
        assert torch.equal(a, b)
    assert net2.resumed_from == 0


def test_spin_resume_is_asked_for_and_never_takes_another_operators_run(tmp_path):
    net, _, opt = _net()
    net.train(opt, 4, _logging(tmp_path), progress=False)
    done, _, opt_done = _net()
    done.train(opt_done, 4, _logging(tmp_path), progress=False, resume=True)
    assert done.resumed_from == 4
    assert done.eigenvalues is not None and np.isfinite(done.eigenvalues).all()
    other, _, opt_other = _net(operator=spin.KernelOperator(lambda x, y: _rbf(x, y) ** 2))
    with pytest.raises(ValueError, match=r"other settings \(operator: \"KernelOperator\(_rbf") as e:
        other.train(opt_other, 6, _logging(tmp_path), progress=False, resume=True)
    assert f"{tmp_path / 'run.pt'} holds a run with other settings" in str(e.value)


def test_spin_decay_defaults_to_the_originals_zero():
    default = inspect.signature(spin.SpectralNetwork).parameters["decay"].default
    assert default == 0.0


def test_spin_plotting_hooks_run_only_when_asked_and_take_arrays(tmp_path):
    calls = []
    hooks = {
        "create": lambda: (None,),
        "update": lambda t, outputs, inputs, *plots, **stats: calls.append(inputs),
    }
    grid = np.random.default_rng(0).normal(size=(5, 2)).astype(np.float32)
    net, _, opt = _net()
    net.train(
        opt, 4, _logging(tmp_path), plotting_hooks=hooks, data_for_plotting=grid, progress=False
    )
    assert calls == []  # show_plots=False: the original never called them
    net, _, opt = _net()
    net.train(
        opt,
        4,
        _logging(tmp_path),
        plotting_hooks=hooks,
        data_for_plotting=grid,
        progress=False,
        plot=True,
    )
    assert len(calls) == 2 and np.allclose(calls[0], grid)
    with pytest.raises(ValueError, match="plotting_hooks: required when show_plots=True"):
        _net()[0].train(opt, 2, _logging(tmp_path), show_plots=True, progress=False)


def test_spin_a_fixed_tensor_as_data_is_loud():
    model = torch.nn.Linear(2, 3)
    with pytest.warns(UserWarning, match="every step trains on this same batch"):
        spin.SpectralNetwork(spin.KernelOperator(_rbf), model, torch.randn(16, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        spin.SpectralNetwork(spin.KernelOperator(_rbf), model, lambda: torch.randn(16, 2))
        spin.SpectralNetwork(spin.KernelOperator(_rbf), model, [torch.randn(16, 2)])


# ----------------------------------------------------------------------------- torch-rim
def _rim_problem():
    torch.manual_seed(0)
    a = torch.randn(20, 16, dtype=torch.float64) / 4
    problem = LinearGaussian(a, 0.1, (1, 4, 4))
    x = torch.rand(24, 1, 4, 4, dtype=torch.float64)
    y = problem.observe(x, torch.Generator().manual_seed(1))
    return problem, torch.utils.data.TensorDataset(y, x)


def _rim(problem, **kw):
    torch.manual_seed(0)
    return RIM((4, 4), ConvRNN(1, 2, features=4, hidden=4).double(), problem.score, steps=3, **kw)


def test_rim_fit_trains_epochs_more_on_each_call_as_torch_rim(tmp_path):
    problem, data = _rim_problem()
    rim = _rim(problem)
    first = rim.fit(data, epochs=2, batch_size=8, checkpoints_directory=tmp_path, progress=False)
    assert len(first.losses) == 2
    again = _rim(problem)
    second = again.fit(
        data, epochs=2, batch_size=8, checkpoints_directory=tmp_path, ema_decay=0.5, progress=False
    )
    assert second.resumed_from == 2 and len(second.losses) == 4
    # spectorch's own runs ask for a total instead
    total = _rim(problem).fit(
        data,
        total_epochs=4,
        batch_size=8,
        checkpoints_directory=tmp_path,
        ema_decay=0.5,
        progress=False,
    )
    assert total.resumed_from == 4 and len(total.losses) == 4


def test_rim_loss_sum_is_torch_rims_loss():
    problem, data = _rim_problem()
    y, x = data.tensors
    mean_rim, sum_rim = _rim(problem), _rim(problem, loss_reduction="sum")
    with torch.no_grad():
        trajectory = sum_rim(y[:6])
        torch_rim = sum(((xt - x[:6]) ** 2).sum() for xt in trajectory) / 6  # its loss_fn
        mean, summed = mean_rim.loss(y[:6], x[:6]), sum_rim.loss(y[:6], x[:6])
    torch.testing.assert_close(summed, torch_rim)
    torch.testing.assert_close(summed, mean * 3 * 1 * 16)  # T · C · ∏D


# ----------------------------------------------------------------------------- spectraltools
def test_pruning_pools_diag_start_with_diag_end_when_both_are_trained():
    torch.manual_seed(0)
    first, second = Spectral(6, 10, activation="tanh"), Spectral(10, 3)
    for layer in (first, second):
        layer.is_diag_start_trainable = True
        with torch.no_grad():
            layer.diag_start.copy_(torch.rand_like(layer.diag_start) * 4)
            layer.diag_end.copy_(torch.rand_like(layer.diag_end))
    model = torch.nn.Sequential(first, second)
    _, report = spectral_pruning(model, 40, return_report=True)
    pool = np.concatenate(
        [
            first.diag_start.detach().abs().numpy().ravel(),
            first.diag_end.detach().abs().numpy().ravel(),
        ]
    )
    assert report.cutoff == pytest.approx(float(np.percentile(pool, 40)))


# ----------------------------------------------------------------------------- names
def test_torch_rims_names_are_accepted(tmp_path):
    from spectorch.rim import Hourglass

    problem, data = _rim_problem()
    rim = RIM(
        (4, 4),
        ConvRNN(1, 2, features=4, hidden=4).double(),
        score_fn=problem.score,
        T=3,
        initialization_method="zeros",
        score_preprocessing_method="Identity",
        device="cpu",
        checkpoints_directory=tmp_path,
    )
    assert rim.steps == 3 and rim.score_preprocessing == "identity"
    x, y = torch.randn(2, 1, 4, 4, dtype=torch.float64), data.tensors[0][:2]
    torch.testing.assert_close(rim.model_score_fn(x, y), rim.score(x, y), rtol=0, atol=0)
    with pytest.warns(UserWarning, match="models_to_keep/checkpoints are not needed"):
        rim.fit(data, epochs=1, batch_size=8, models_to_keep=3, checkpoints=10, progress=False)
    assert (tmp_path / "last.pt").exists()  # torch-rim's constructor directory is fit's default
    with pytest.raises(TypeError, match=r"unexpected keyword argument\(s\) \['TT'\]"):
        RIM((4, 4), ConvRNN(1, 2, features=4, hidden=4), score_fn=problem.score, TT=3)
    hourglass = Hourglass(1, 2, nf=8, ch_mult=(2, 2), hidden_units=16)
    assert hourglass.config["features"] == 8 and hourglass.config["levels"] == 2
    assert hourglass.config["hidden"] == 16 and hourglass.config["multiplier"] == 2
    with pytest.raises(ValueError, match="ch_mult must repeat one multiplier"):
        Hourglass(1, 2, ch_mult=(1, 2))
    with pytest.raises(TypeError, match=r"\['nf/features', 'ch_mult/levels'\] given under both"):
        Hourglass(1, 2, features=8, nf=8, ch_mult=(2,), levels=1)


def test_an_energy_that_ignores_x_has_a_zero_score_as_in_torch_rim():
    rim = RIM(
        (4, 4),
        ConvRNN(1, 2, features=4, hidden=4),
        steps=2,
        energy_fn=lambda x, y: torch.ones(x.shape[0]),
    )
    assert torch.equal(rim.predict(torch.randn(3, 20)), torch.zeros(3, 1, 4, 4))


def test_spins_names_are_accepted(tmp_path):
    net, _, opt = _net()
    spin.SpectralNetwork(net.operator, net.network, net.data, use_pfor=False, per_example=True)
    net.train(opt, 2, _logging(tmp_path), progress=False, global_step=object())
    assert net.step_count == 2


def test_spectraltools_names_are_accepted():
    from spectorch.data import load_digits
    from spectorch.prune import spectral_distiller

    layer = Spectral(6, units=4, activation="relu", use_bias=True, diag_regularizer=None)
    assert layer.out_features == 4 and layer.return_diag().shape == (4,)
    layer.is_diag_start_trainable = True
    assert layer.return_diag().shape == (10,)  # [diag_start, diag_end], as spectraltools
    with pytest.raises(TypeError, match="base_constraint='non_neg' has no per-layer equivalent"):
        Spectral(6, units=4, base_constraint="non_neg")
    with pytest.raises(ValueError, match="diag_regularizer must be None, 'l1', 'l2'"):
        Spectral(6, units=4, diag_regularizer="l3")
    with pytest.raises(TypeError, match=r"Spectral\(784, units=100\)"):
        Spectral(6)
    x, y = load_digits(split="train")
    model = torch.nn.Sequential(Spectral(64, units=32, activation="relu"), torch.nn.Linear(32, 10))
    tr_dict = dict(x=x.numpy(), y=y.numpy(), batch_size=300, epochs=2, verbose=0)
    minimal = spectral_distiller(model, fit_dictionary=tr_dict, percentile=50)
    assert minimal[0].out_features == 16
    with pytest.raises(ValueError, match=r"\['validation_data'\] have no equivalent"):
        spectral_distiller(
            model, fit_dictionary={**tr_dict, "validation_data": None}, percentile=50
        )


def test_rim_runs_written_before_loss_reduction_still_resume(tmp_path):
    problem, data = _rim_problem()
    assert "loss_reduction" not in _rim(problem).hyperparameters()  # what older runs hold
    _rim(problem).fit(data, epochs=1, batch_size=8, checkpoints_directory=tmp_path, progress=False)
    again = _rim(problem).fit(
        data, epochs=1, batch_size=8, checkpoints_directory=tmp_path, progress=False
    )
    assert again.resumed_from == 1
    summed = _rim(problem, loss_reduction="sum")
    summed.fit(data, epochs=1, batch_size=8, checkpoints_directory=tmp_path / "s", progress=False)
    rebuilt = RIM.from_checkpoint(tmp_path / "s", score_fn=problem.score)
    assert rebuilt.loss_reduction == "sum"


def test_spin_grid_reader_has_the_originals_row_order():
    def original(dim, lim, points):  # spin/util.py's grid_reader, NumPy part as written
        hyperplane = [0 for _ in range(dim - 2)]
        xx = np.linspace(-lim, lim, points, dtype=np.float32)
        yy = np.linspace(-lim, lim, points, dtype=np.float32)
        if dim == 2:
            grid = np.meshgrid(xx, yy)
        else:
            zz = [np.linspace(z_i, z_i, 1, dtype=np.float32) for z_i in hyperplane]
            grid = np.meshgrid(xx, yy, *zz)
        return np.array(grid).T.reshape(-1, dim)

    for dim, lim, points in ((2, 1.0, 3), (2, 50.0, 16), (3, 7.5, 5)):
        np.testing.assert_array_equal(
            spin.util.grid_reader(dim, lim, points).numpy(), original(dim, lim, points)
        )


def test_spin_util_make_network_is_the_originals():
    from spectorch.experiments.hydrogen import HydrogenNetwork

    torch.manual_seed(0)
    net = HydrogenNetwork(4, (8, 8), ndim=2, lim=5.0).double()
    hid = (8, 8, 4)
    ws = [layer.weight.T for layer in net.layers]
    bs = [layer.bias for layer in net.layers]
    x = (torch.rand(16, 2, dtype=torch.float64) * 2 - 1) * 5
    torch.testing.assert_close(spin.util.make_network(x, hid, ws, bs, True, 5.0), net(x))
    # NumPy, as the original's TF: softplus layers, then the box mask
    h = x.numpy()
    for w, b in zip(ws[:-1], bs[:-1], strict=True):
        h = np.logaddexp(0, h @ w.detach().numpy() + b.detach().numpy())
    y = h @ ws[-1].detach().numpy() + bs[-1].detach().numpy()
    mask = np.prod(np.maximum((np.sqrt(2 * 25.0 - x.numpy() ** 2) - 5.0) / 5.0, 0), axis=1)
    np.testing.assert_allclose(
        spin.util.make_network(x, hid, ws, bs, True, 5.0, custom_softplus=True).detach().numpy(),
        mask[:, None] * y,
        rtol=1e-12,
    )
    with pytest.raises(ValueError, match="one weight and one bias per entry of hid"):
        spin.util.make_network(x, (8, 4), ws, bs, False, 5.0)


def test_spin_util_make_conv_network_pads_as_tensorflow():
    """TF's SAME: out = ceil(n / s), the odd padding pixel after (here 7 -> 4 with a
    4x4 kernel of stride 2: 1 pixel before, 2 after); checked against a direct loop."""
    torch.manual_seed(0)
    x = torch.randn(2, 7, 7, 3, dtype=torch.float64)  # NHWC
    w = torch.randn(4, 4, 3, 5, dtype=torch.float64)  # HWIO
    b = torch.randn(5, dtype=torch.float64)
    fc = torch.randn(4 * 4 * 5, 2, dtype=torch.float64)
    fb = torch.randn(2, dtype=torch.float64)
    out = spin.util.make_conv_network(x, [2], ["SAME"], [w, fc], [b, fb])
    padded = np.zeros((2, 10, 10, 3))
    padded[:, 1:8, 1:8] = x.numpy()
    conv = np.zeros((2, 4, 4, 5))
    for i in range(4):
        for j in range(4):
            patch = padded[:, 2 * i : 2 * i + 4, 2 * j : 2 * j + 4, :]
            conv[:, i, j] = np.einsum("nhwc,hwco->no", patch, w.numpy())
    hidden = np.maximum(conv + b.numpy(), 0).reshape(2, -1)  # NHWC order, as TF
    expected = np.concatenate([np.ones((2, 1)), hidden @ fc.numpy() + fb.numpy()], axis=1)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-12)
    with pytest.raises(ValueError, match="paddings"):
        spin.util.make_conv_network(x, [2], ["FULL"], [w, fc], [b, fb])
    with pytest.raises(ValueError, match="1 convolutions need as many conv_stride"):
        spin.util.make_conv_network(x, [], [], [w, fc], [b, fb])
    with pytest.raises(ValueError, match="2 weights but 1 biases"):
        spin.util.make_conv_network(x, [2], ["SAME"], [w, fc], [b])
