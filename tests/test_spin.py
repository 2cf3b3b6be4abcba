"""Spectral inference networks: operators, the three objectives, training, hydrogen."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from spectorch import spin
from spectorch.experiments import hydrogen
from spectorch.experiments.kernel import clustered_points
from spectorch.spin._objectives import cholesky
from spectorch.spin._operators import Batch, covariance

F64 = torch.float64


# -- operators ---------------------------------------------------------------------------


def _known(x: torch.Tensor) -> torch.Tensor:
    """Two functions of 3-D inputs with known Laplacians (see _known_laplacian)."""
    r2 = (x**2).sum(1)
    return torch.stack(
        [torch.exp(-r2 / 2) * torch.sin(x[:, 0]), x[:, 0] ** 2 * x[:, 1] ** 3 + x[:, 2]], 1
    )


def _known_laplacian(x: torch.Tensor) -> torch.Tensor:
    d = x.shape[1]
    r2 = (x**2).sum(1)
    g = torch.exp(-r2 / 2)
    s, c = torch.sin(x[:, 0]), torch.cos(x[:, 0])
    # Laplacian of g*s = s*Lap(g) + 2 grad g . grad s + g*Lap(s); Lap(g) = (r2 - d) g
    first = s * (r2 - d) * g + 2 * (-x[:, 0] * g) * c - g * s
    second = 2 * x[:, 1] ** 3 + 6 * x[:, 0] ** 2 * x[:, 1]
    return torch.stack([first, second], 1)


def test_exact_and_finite_difference_laplacians_equal_the_analytic_one():
    x = torch.randn(50, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    batch = Batch(_known, x)
    exact = spin.LaplacianOperator().laplacian(batch)
    assert isinstance(spin.LaplacianOperator(), spin.ExactLaplacianOperator)
    torch.testing.assert_close(exact, _known_laplacian(x), rtol=1e-10, atol=1e-10)
    fd = spin.LaplacianOperator(eps=1e-3).laplacian(Batch(_known, x))
    torch.testing.assert_close(fd, _known_laplacian(x), rtol=0, atol=1e-5)


def test_exact_hydrogen_eigenfunctions_satisfy_the_schroedinger_equation():
    g = torch.Generator().manual_seed(1)
    x = (torch.rand(200, 2, dtype=F64, generator=g) * 2 - 1) * 12
    f = lambda z: hydrogen.exact_eigenfunctions(z, 9)  # noqa: E731
    batch = Batch(f, x)
    h_psi = -spin.LaplacianOperator().laplacian(batch) - batch.u / x.norm(dim=1, keepdim=True)
    energies = torch.as_tensor(hydrogen.exact_energies(9), dtype=F64)
    torch.testing.assert_close(h_psi, batch.u * energies, rtol=1e-9, atol=1e-9)
    assert hydrogen.exact_energies(9).tolist() == [-1.0] + [-1 / 9] * 3 + [-1 / 25] * 5
    assert hydrogen.shells(9) == [[0], [1, 2, 3], [4, 5, 6, 7, 8]]


def test_nested_operator_algebra_gives_the_same_pi_as_written_out():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(40, 2, dtype=F64, generator=g)
    w = torch.rand(40, dtype=F64, generator=g) + 0.5
    lin = torch.nn.Linear(2, 3).double()
    net = lambda z: torch.tanh(lin(z))  # noqa: E731

    def kern(a, b):
        return torch.exp(-((a - b) ** 2).sum(1))

    def pot(z):
        return z[:, 0] ** 2

    lap, diag, ker = (
        spin.LaplacianOperator(eps=1e-3),
        spin.DiagonalOperator(pot),
        spin.KernelOperator(kern),
    )
    op = -lap + 0.5 * diag - 2 * (ker + (diag - 3 * lap) / 4) - (-ker)
    batch = Batch(net, x, w)
    got = op.pi(batch)

    u = net(x)
    fd = lap.laplacian(Batch(net, x, w))
    h = 20
    kv = kern(x[:h], x[h:]) * w[h:]
    pi_lap = (u * w[:, None]).T @ fd / 40
    pi_diag = (u * w[:, None]).T @ (pot(x)[:, None] * u) / 40
    pi_ker = (u[:h] * w[:h, None]).T @ (kv[:, None] * u[h:]) / h
    by_hand = -pi_lap + 0.5 * pi_diag - 2 * (pi_ker + (pi_diag - 3 * pi_lap) / 4) + pi_ker
    torch.testing.assert_close(got, by_hand, rtol=1e-12, atol=1e-12)
    with pytest.raises(TypeError):
        _ = lap * "2"


def test_kernel_operator_all_pairs_and_slowness():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(10, 2, dtype=F64, generator=g)
    u = torch.randn(10, 2, dtype=F64, generator=g)
    net = lambda z: u[: z.shape[0]]  # noqa: E731
    kern = lambda a, b: (a * b).sum(1)  # noqa: E731
    got = spin.KernelOperator(kern, pairs="all").pi(Batch(net, x))
    kmat = x[:5] @ x[5:].T
    torch.testing.assert_close(got, u[:5].T @ kmat @ u[5:] / 25)
    slow = spin.SlownessOperator().pi(Batch(net, x))
    d = u[:-1] - u[1:]
    torch.testing.assert_close(slow, d.T @ d / 9)
    with pytest.raises(ValueError, match="even"):
        spin.KernelOperator(kern).pi(Batch(net, x[:9]))
    with pytest.raises(ValueError, match="pairs"):
        spin.KernelOperator(kern, pairs="some")


# -- the masked gradient ------------------------------------------------------------------


def _lambda_jj(w_mat, x, j, v):
    """Lambda_jj of the linear network x @ w_mat under the diagonal operator v(x)."""
    u = x @ w_mat
    n = x.shape[0]
    sigma = u.T @ u / n
    pi = u.T @ (v[:, None] * u) / n
    chol = torch.linalg.cholesky(sigma)
    li = torch.linalg.inv(chol)
    return (li @ pi @ li.T)[j, j]


def test_masked_gradient_is_each_columns_own_rayleigh_quotient_gradient():
    g = torch.Generator().manual_seed(4)
    d, k, n = 5, 4, 64
    x = torch.randn(n, d, dtype=F64, generator=g)
    v = x[:, 0] ** 2 + 0.5 * x[:, 1]
    w_mat = torch.randn(d, k, dtype=F64, generator=g).requires_grad_()
    net = spin.SpectralNetwork(
        spin.DiagonalOperator(lambda z: z[:, 0] ** 2 + 0.5 * z[:, 1]),
        lambda z: z @ w_mat,
        [x],  # one fixed batch, said explicitly
        [w_mat],
        decay=0.0,
    )
    loss, _, _ = net.compute_loss(x)
    loss.backward()
    masked = w_mat.grad.clone()
    eps = 1e-6
    base = w_mat.detach().clone()
    for j in range(k):  # column j's own Rayleigh quotient, the other columns held fixed
        for i in range(d):
            plus, minus = base.clone(), base.clone()
            plus[i, j] += eps
            minus[i, j] -= eps
            fd = (_lambda_jj(plus, x, j, v) - _lambda_jj(minus, x, j, v)) / (2 * eps)
            assert abs(float(fd) - float(masked[i, j])) < 1e-7 * max(1.0, abs(float(fd)))
    # and it is not the plain gradient of tr(Lambda): later columns pull on earlier ones
    plain = torch.autograd.grad(sum(_lambda_jj(w_mat, x, j, v) for j in range(k)), w_mat)[0]
    assert (plain - masked).abs().max() > 1e-3


def test_moving_average_path_equals_the_plain_gradient_without_memory():
    torch.manual_seed(5)
    x = torch.randn(32, 2, dtype=F64)
    net = torch.nn.Sequential(
        torch.nn.Linear(2, 8), torch.nn.Softplus(), torch.nn.Linear(8, 3)
    ).double()
    op = spin.KernelOperator(
        lambda a, b: torch.exp(-((a - b) ** 2).sum(1))
    ) + spin.DiagonalOperator(lambda z: z[:, 0])
    grads = []
    for decay in (0.0, 1.0 - 1e-13):  # the second goes through the averaged Jacobian
        sn = spin.SpectralNetwork(op, net, [x], decay=decay)
        net.zero_grad()
        loss, _, extras = sn.compute_loss(x)
        loss.backward()
        for p, extra in zip(sn.params, extras.get("sigma_grad", ()), strict=False):
            p.grad += extra
        grads.append([p.grad.clone() for p in sn.params])
        if decay:
            assert sn.sigma_jac_avg is not None
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-10)


# -- the three objectives on a kernel with an exact answer ---------------------------------


@pytest.mark.parametrize(
    "objective",
    # 25 s each: NeuralEF and NeuralSVD in the slow tier, to keep the default one short
    [
        "spin",
        pytest.param("neuralef", marks=pytest.mark.slow),
        pytest.param("neuralsvd", marks=pytest.mark.slow),
    ],
)
def test_each_objective_recovers_the_top_eigenpairs_of_a_kernel_matrix(objective):
    torch.manual_seed(0)
    pts = clustered_points()
    n, k = pts.shape[0], 4

    def kern(a, b):
        return torch.exp(-((a - b) ** 2).sum(1) / 2)

    kmat = torch.exp(-(torch.cdist(pts, pts) ** 2) / 2) / n
    evals, evecs = torch.linalg.eigh(kmat)
    top, vecs = evals.flip(0)[:k], evecs.flip(1)[:, :k]
    gen = torch.Generator().manual_seed(2)

    def draw():
        return pts[torch.randint(0, n, (256,), generator=gen)]

    model = torch.nn.Sequential(
        torch.nn.Linear(2, 64),
        torch.nn.Softplus(),
        torch.nn.Linear(64, 64),
        torch.nn.Softplus(),
        torch.nn.Linear(64, k),
    ).double()
    # SpIN's moving averages want far smaller steps than Adam's 1e-3 (see docs/spin.md)
    net = spin.SpectralNetwork(
        spin.KernelOperator(kern, pairs="all"),
        model,
        draw,
        objective=objective,
        which="largest",
        decay=0.0,
    )
    net.train(torch.optim.Adam(model.parameters(), lr=1e-3), 1500, progress=False)
    with torch.no_grad():
        u = model(pts)
    eig = net.readout(u.T @ u / n, u.T @ kmat @ u / n)
    np.testing.assert_allclose(eig, top.numpy(), rtol=0.05)
    q, _ = torch.linalg.qr(net.eigenfunctions(pts))
    overlap = float((q.T @ vecs).pow(2).sum()) / k
    assert overlap >= 0.95


# -- robustness, checkpoints, errors -------------------------------------------------------------


def test_rank_deficient_features_get_jitter_with_a_warning():
    x = torch.randn(16, 2, dtype=F64)
    lin = torch.nn.Linear(2, 2).double()
    net = spin.SpectralNetwork(
        spin.DiagonalOperator(lambda z: z[:, 0]),
        lambda z: torch.cat([lin(z), lin(z)[:, :1]], 1),
        [x],
        list(lin.parameters()),
        decay=0.0,
    )
    with pytest.warns(RuntimeWarning, match="rank deficient"):
        loss, eig = net.step(torch.optim.SGD(lin.parameters(), lr=1e-3))
    assert math.isfinite(loss) and np.isfinite(eig).all()
    with pytest.raises(FloatingPointError, match="not finite"):
        cholesky(torch.full((2, 2), float("nan"), dtype=F64))


def test_bad_arguments_are_named():
    x = torch.randn(8, 2)
    lin = torch.nn.Linear(2, 2)
    op = spin.DiagonalOperator(lambda z: z[:, 0])
    with pytest.raises(ValueError, match="objective"):
        spin.SpectralNetwork(op, lin, [x], objective="spinn")
    with pytest.raises(ValueError, match="which"):
        spin.SpectralNetwork(op, lin, [x], which="top")
    with pytest.raises(ValueError, match="decay"):
        spin.SpectralNetwork(op, lin, [x], decay=1.5)
    with pytest.raises(TypeError, match="operator"):
        spin.SpectralNetwork(lambda z: z, lin, [x])
    with pytest.raises(ValueError, match="params"):
        spin.SpectralNetwork(op, lambda z: z, [x])
    net = spin.SpectralNetwork(op, lin, [x])
    optim = torch.optim.SGD(lin.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="missing key"):
        net.train(optim, 2, {"saver_path": "/tmp"}, progress=False)
    with pytest.raises(ValueError, match="iterations"):
        net.train(optim, 0, progress=False)


def _hydrogen_net(tmp_seed=0, **kw):
    torch.manual_seed(tmp_seed)
    model = hydrogen.HydrogenNetwork(3, (16, 16), lim=10.0)
    sampler = hydrogen.HydrogenSampler(32, lim=10.0, importance=True, seed=1)
    net = spin.SpectralNetwork(hydrogen.hamiltonian(), model, sampler, **kw)
    return net, model, torch.optim.RMSprop(model.parameters(), lr=1e-3, alpha=0.999)


def _logging(path, every):
    return {
        "config": {"x": 1},
        "log_image_every": 1000,
        "save_params_every": every,
        "saver_path": str(path),
        "saver_name": "run",
    }


@pytest.mark.parametrize("objective", ["spin", "neuralsvd"])
def test_interrupted_training_resumes_exactly(tmp_path, objective):
    net, model, optim = _hydrogen_net(objective=objective)
    full = net.train(optim, 20, _logging(tmp_path / "a", 10), progress=False)
    net2, _, optim2 = _hydrogen_net(objective=objective)
    net2.train(optim2, 10, _logging(tmp_path / "b", 10), progress=False)
    net3, model3, optim3 = _hydrogen_net(
        tmp_seed=99, objective=objective
    )  # other init: must be overwritten
    resumed = net3.train(optim3, 20, _logging(tmp_path / "b", 10), progress=False, resume=True)
    for a, b in zip(model.parameters(), model3.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    np.testing.assert_array_equal(full["eigenvalues"], resumed["eigenvalues"])
    np.testing.assert_array_equal(full["losses"], resumed["losses"])
    # another configuration is refused
    net4, _, optim4 = _hydrogen_net(objective=objective, decay=0.5)
    with pytest.raises(ValueError, match="other settings"):
        net4.train(optim4, 20, _logging(tmp_path / "b", 10), progress=False, resume=True)


def test_nan_loss_stops_with_the_last_checkpoint_intact(tmp_path):
    poisoned = {"on": False}

    def potential(z):
        v = -1 / z.norm(dim=1)
        return v * float("nan") if poisoned["on"] else v

    torch.manual_seed(0)
    model = hydrogen.HydrogenNetwork(3, (16,), lim=10.0)
    op = -spin.LaplacianOperator() + spin.DiagonalOperator(potential)
    net = spin.SpectralNetwork(op, model, hydrogen.HydrogenSampler(32, lim=10.0), decay=0.0)
    optim = torch.optim.Adam(model.parameters(), lr=1e-3)
    net.train(optim, 5, _logging(tmp_path, 5), progress=False)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    poisoned["on"] = True
    with pytest.raises(FloatingPointError, match="step 5"):
        net.train(optim, 10, _logging(tmp_path, 5), progress=False, resume=True)
    state = torch.load(tmp_path / "run.pt", weights_only=True)
    assert state["step"] == 5
    for v, w in zip(state["state"]["network"]["params"], saved.values(), strict=True):
        torch.testing.assert_close(v, w)


def test_default_stats_hooks_are_the_originals():
    stats = spin.util.create_default_stats(3, 2)
    assert set(stats) == {"losses", "eigenvalues", "eigenvalues_ma"}
    spin.util.update_default_stats(0, 1.0, np.array([1.0, 2.0]), **stats)
    spin.util.update_default_stats(1, 2.0, np.array([2.0, 4.0]), **stats)
    np.testing.assert_allclose(stats["eigenvalues_ma"][1], [1.01, 2.02], rtol=1e-6)
    grid = spin.util.grid_reader(2, 1.0, 3)
    assert grid.shape == (9, 2) and grid[1].tolist() == [-1.0, 0.0]  # x first, as the original


# -- hydrogen ----------------------------------------------------------------------------------


def test_hydrogen_sampler_weights_are_unbiased():
    s = hydrogen.HydrogenSampler(200_000, lim=10.0, importance=True, scale=2.0, seed=0, dtype=F64)
    x, w = s.sample(200_000)
    assert (x.abs() <= 10).all()
    # E_q[w f] = E_uniform[f] for f = 1 and f = x0^2 (exact: 1 and lim^2 / 3)
    assert abs(float(w.mean()) - 1) < 0.02
    assert abs(float((w * x[:, 0] ** 2).mean()) - 100 / 3) / (100 / 3) < 0.03
    with pytest.raises(ValueError, match="mix"):
        hydrogen.HydrogenSampler(8, mix=0)


def test_hydrogen_run_writes_figures_result_and_resumes(tmp_path):
    cfg = hydrogen.HydrogenConfig(
        objective="neuralsvd",
        niter=30,
        batch_size=32,
        lr=1e-3,
        optimizer="adam",
        importance=True,
        hidden=(16, 16),
        log_image_every=15,
        save_params_every=15,
    )
    result = hydrogen.train_hydrogen(
        tmp_path, cfg, progress=False, eval_samples=2000, plot_points=16
    )
    assert result.steps == 30
    for name in (
        "eigenfunctions.png",
        "eigenvalues.png",
        "hydrogen_params.pt",
        "result.json",
        "config.json",
    ):
        assert (tmp_path / name).exists(), name
    saved = json.loads((tmp_path / "result.json").read_text())
    assert len(saved["eigenvalues"]) == 9 and len(saved["shell_distances"]) == 3
    assert saved["exact"][0] == -1.0
    again = hydrogen.train_hydrogen(
        tmp_path, cfg, progress=False, eval_samples=2000, plot_points=16
    )
    assert again.steps == 30  # nothing left to do
    with pytest.raises(ValueError, match="other settings"):
        hydrogen.train_hydrogen(tmp_path, hydrogen.HydrogenConfig(niter=31), progress=False)
    with pytest.raises(ValueError, match="objective"):
        hydrogen.HydrogenConfig(objective="x")
    with pytest.raises(ValueError, match="decay"):
        hydrogen.train_hydrogen(tmp_path / "bad", hydrogen.HydrogenConfig(decay=2.0))
    assert not (tmp_path / "bad" / "config.json").exists()


def test_covariance_masked_gradient_is_the_originals():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(7, 3, dtype=F64, generator=g, requires_grad=True)
    y = torch.randn(7, 3, dtype=F64, generator=g, requires_grad=True)
    grad = torch.randn(3, 3, dtype=F64, generator=g)
    c = covariance(x, y)
    torch.testing.assert_close(c, x.T @ y / 7)
    gx, gy = torch.autograd.grad(c, (x, y), grad)
    torch.testing.assert_close(gx, y @ grad / 7)
    torch.testing.assert_close(gy, x @ grad / 7)


# -- command line ---------------------------------------------------------------------------


def test_cli_spin_kernel_and_hydrogen(tmp_path, capsys):
    from spectorch.cli import main

    assert (
        main(
            [
                "spin",
                "kernel",
                "--steps",
                "40",
                "--objective",
                "neuralsvd",
                "--out",
                str(tmp_path / "k"),
                "--quiet",
            ]
        )
        == 0
    )
    saved = json.loads((tmp_path / "k" / "result.json").read_text())
    assert list(saved["objectives"]) == ["neuralsvd"] and (tmp_path / "k" / "kernel.png").exists()
    args = [
        "spin",
        "hydrogen",
        "--objective",
        "neuralef",
        "--niter",
        "20",
        "--hidden",
        "8,8",
        "--batch-size",
        "32",
        "--importance",
        "--out",
        str(tmp_path / "h"),
        "--quiet",
        "--log-image-every",
        "10",
    ]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "mean relative error" in text and "-1.00000" in text
    assert main(args) == 0  # resumes: nothing left to train
    assert (
        main(
            ["spin", "hydrogen", "--batch-size", "33", "--out", str(tmp_path / "x"), "--niter", "2"]
        )
        == 2
    )
    assert "batch_size" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["spin", "hydrogen", "--hidden", "0,4"])


def test_live_plot_hooks_draw_into_pyplot_figures_and_files(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = hydrogen.HydrogenConfig(neig=4)
    hooks = hydrogen._plotting_hooks(tmp_path, cfg, hydrogen.exact_energies(4), True, 8)
    plots = hooks["create"]()
    try:
        ma = np.tile(hydrogen.exact_energies(4), (3, 1))
        outputs = np.random.default_rng(0).random((2 * 64, 4))  # one 8x8 grid per shell
        hooks["update"](2, outputs, None, *plots, eigenvalues_ma=ma)
        assert (tmp_path / "eigenfunctions.png").stat().st_size > 0
        assert (tmp_path / "eigenvalues.png").stat().st_size > 0
        assert len(plots[0].axes) >= 4  # one panel per eigenfunction
    finally:
        plt.close("all")
        plt.ioff()
