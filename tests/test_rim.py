"""Recurrent inference machines: likelihood plumbing, preprocessing, backbones,
training, checkpoints and the classical baselines, against exact answers."""

from __future__ import annotations

import json

import pytest
import torch

from spectorch.rim import LINKS, RIM, ConvGRU, ConvRNN, Hourglass, LinearGaussian, Unet
from spectorch.rim.problems import InverseProblemDataset, blur_matrix, psnr


def _problem(seed: int = 0, shape=(1, 4, 4), m: int = 12, sigma: float = 0.3) -> LinearGaussian:
    g = torch.Generator().manual_seed(seed)
    n = int(torch.tensor(shape).prod())
    a = torch.randn(m, n, generator=g, dtype=torch.float64) / n**0.5
    return LinearGaussian(a, sigma, shape)


def _images(count: int, shape=(1, 4, 4), seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(count, 1, *shape[1:], generator=g, dtype=torch.float64)
    return (base + base.roll(1, -1)) / 2  # some structure for a prior to learn


def _rim(problem, dtype=torch.float64, **kw) -> RIM:
    torch.manual_seed(0)
    net = ConvRNN(1, 2, features=8, hidden=8).to(dtype)
    kw.setdefault("score_fn", problem.score)
    return RIM(problem.shape[1:], net, steps=kw.pop("steps", 4), **kw)


# ----------------------------------------------------------------- likelihood


def test_energy_score_equals_the_analytic_linear_gaussian_score():
    problem = _problem()
    x = torch.randn(5, *problem.shape, dtype=torch.float64)
    y = problem.observe(_images(5), torch.Generator().manual_seed(2))
    exact = problem.adjoint(y - problem.forward(x)) / problem.sigma**2
    rim = _rim(problem, score_fn=None, energy_fn=problem.log_likelihood)
    torch.testing.assert_close(rim.score(x, y), exact, rtol=1e-12, atol=1e-10)

    a, sigma = problem.matrix, problem.sigma

    def one(xi, yi, a):  # one example, no batch dimension
        return -0.5 * (yi - a @ xi.flatten()).square().sum() / sigma**2

    per = _rim(problem, score_fn=None, energy_fn=one, per_example=True)
    batch_a = a.expand(5, *a.shape)
    torch.testing.assert_close(per.score(x, y, batch_a), exact, rtol=1e-12, atol=1e-10)


def test_a_chi_square_energy_is_the_wrong_sign():
    """torch-rim's README returns the χ² as the energy: its gradient is -2x the score."""
    problem = _problem()
    x = torch.randn(3, *problem.shape, dtype=torch.float64)
    y = problem.observe(_images(3))

    def chi2(x, y):
        return (y - problem.forward(x)).square().sum(-1) / problem.sigma**2

    rim = _rim(problem, score_fn=None, energy_fn=chi2)
    torch.testing.assert_close(rim.score(x, y), -2 * problem.score(x, y))


@pytest.mark.parametrize("name", sorted(LINKS))
def test_link_functions_round_trip_and_enter_by_the_chain_rule(name):
    link, inverse = LINKS[name]
    z = torch.linspace(-2.0, 2.0, 41, dtype=torch.float64)
    if name == "tanh":
        z = z / 3
    torch.testing.assert_close(inverse(link(z)), z, rtol=1e-9, atol=1e-9)
    if name in ("exp", "softplus"):
        u = torch.linspace(0.05, 3.0, 30, dtype=torch.float64)
    else:
        u = torch.linspace(-0.9, 0.9, 30, dtype=torch.float64) + (name == "sigmoid") * 0.9 / 2
        u = u.clamp(0.01, 0.99) if name == "sigmoid" else u
    torch.testing.assert_close(link(inverse(u)), u, rtol=1e-9, atol=1e-9)

    problem = _problem()
    rim = _rim(problem, link_function=name)
    x = torch.randn(2, *problem.shape, dtype=torch.float64) * 0.3
    y = problem.observe(_images(2))
    jac_diag = torch.func.vmap(torch.func.grad(lambda t: link(t).sum()))(x.flatten())
    expected = jac_diag.reshape(x.shape) * problem.score(link(x), y)
    torch.testing.assert_close(rim.score(x, y), expected)
    # the energy path agrees with the score path
    erim = _rim(problem, score_fn=None, energy_fn=problem.log_likelihood, link_function=name)
    torch.testing.assert_close(erim.score(x, y), expected)


def test_a_callable_link_needs_its_inverse():
    problem = _problem()
    with pytest.raises(ValueError, match="inverse_link_function"):
        _rim(problem, link_function=torch.exp)
    with pytest.raises(ValueError, match="link_function must be one of"):
        _rim(problem, link_function="logistic")


# ----------------------------------------------------------------- preprocessing


def test_preprocessing_methods_follow_their_formulas():
    problem = _problem()
    g = torch.Generator().manual_seed(3)
    scores = [torch.randn(2, 1, 4, 4, generator=g, dtype=torch.float64) * 5 for _ in range(4)]
    b1, b2, eps = 0.8, 0.95, 1e-6
    for method in ("identity", "arcsinh", "adam", "rmsprop", "rms"):
        rim = _rim(problem, score_preprocessing=method, beta_1=b1, beta_2=b2, epsilon=eps)
        state, m, v = None, 0.0, 0.0
        for t, s in enumerate(scores):
            out, state = rim.preprocess(s, state, t)
            m = b1 * m + (1 - b1) * s
            v = b2 * v + (1 - b2) * s**2
            expected = {
                "identity": s,
                "arcsinh": torch.log(s + torch.sqrt(s**2 + 1)),
                "adam": (m / (1 - b1 ** (t + 1))) / (torch.sqrt(v / (1 - b2 ** (t + 1))) + eps),
                "rmsprop": s / (torch.sqrt(v / (1 - b2 ** (t + 1))) + eps),
                "rms": s / (s.flatten(1).square().mean(1).sqrt()[:, None, None, None] + eps),
            }[method]
            torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    # adam at step 0 is sign(s) up to epsilon: the bias corrections cancel
    rim = _rim(problem, score_preprocessing="adam", epsilon=1e-12)
    out, _ = rim.preprocess(scores[0], None, 0)
    torch.testing.assert_close(out, scores[0].sign())


# ----------------------------------------------------------------- backbones


@pytest.mark.parametrize("cls", [Hourglass, Unet, ConvRNN])
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_backbones_keep_the_shape_for_any_size(cls, dims):
    sizes = {1: (10,), 2: (6, 9), 3: (5, 4, 6)}[dims]  # 10, 6x9, 5x4x6: not multiples of 4
    net = (
        cls(2, dims, features=4, levels=2)
        if cls is not ConvRNN
        else cls(2, dims, features=4, hidden=4)
    )
    x = torch.randn(3, 2, *sizes)
    update, h = net(x, torch.randn_like(x), None)
    assert update.shape == x.shape
    assert not update.any()  # the output layer starts at zero: the identity step
    torch.nn.init.normal_(net.output.weight)
    update2, _ = net(x + update, torch.randn_like(x), h)
    assert update2.shape == x.shape and update2.abs().min() > 0


def test_conv_gru_updates_its_whole_state():
    """torch-rim's GRU block never updates the first half of its state; ours does."""
    torch.manual_seed(0)
    gru = ConvGRU(3, 8, 3, 2)
    h0 = torch.randn(2, 8, 5, 5)
    _, h1 = gru(torch.randn(2, 3, 5, 5), h0)
    changed = (h1 - h0).abs().flatten(2).amax(-1)  # per (batch, channel)
    assert bool((changed > 1e-3).all())
    torch.manual_seed(0)
    net = Hourglass(1, 2, features=4, levels=1)
    x = torch.randn(2, 1, 6, 6)
    _, h1 = net(x, torch.randn_like(x), None)
    _, h2 = net(x, torch.randn_like(x), h1)
    assert bool(((h2 - h1).abs().flatten(2).amax(-1) > 1e-4).all())


def test_backbones_check_their_input():
    net = Hourglass(1, 2, features=4, levels=1)
    with pytest.raises(ValueError, match="same shape"):
        net(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 5), None)
    with pytest.raises(ValueError, match=r"expects x of shape \(batch, 1"):
        net(torch.zeros(1, 2, 4, 4), torch.zeros(1, 2, 4, 4), None)
    with pytest.raises(ValueError, match="dimensions must be 0, 1, 2 or 3"):
        Unet(1, 4)
    with pytest.raises(ValueError, match="activation must be one of"):
        ConvRNN(1, 2, activation="sine")


# ----------------------------------------------------------------- RIM


def test_dtype_and_device_are_respected():
    problem = _problem()
    rim = _rim(problem, dtype=torch.float64)
    y = problem.observe(_images(3)).float()  # float32 observation, float64 model
    traj = rim(y)
    assert len(traj) == 4 and all(t.dtype == torch.float64 for t in traj)
    assert rim.predict(y).dtype == torch.float64 and not rim.predict(y).requires_grad
    rim32 = _rim(problem, dtype=torch.float32)
    assert rim32.predict(y.double()).dtype == torch.float32
    init = _rim(problem, initialization="model")
    assert len(init(y)) == 5  # x_0 from the model, then 4 steps


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fit_moves_batches_to_the_model_device():  # pragma: no cover - GPU only
    problem = _problem()
    rim = _rim(problem).cuda()
    data = InverseProblemDataset(_images(16), problem)
    rim.fit(data, epochs=1, batch_size=8, progress=False)
    assert rim.predict(data[0][0][None]).device.type == "cuda"


def test_score_graph_lets_the_loss_differentiate_through_the_score():
    problem = _problem()
    x = _images(4)
    y = problem.observe(x, torch.Generator().manual_seed(0))
    grads = {}
    for graph in (False, True):
        for energy in (False, True):
            kw = {"score_fn": None, "energy_fn": problem.log_likelihood} if energy else {}
            rim = _rim(problem, score_graph=graph, **kw)
            # the output layer starts at zero, where the score's own path contributes
            # nothing to first order; move it off zero so both paths are live
            torch.nn.init.normal_(
                rim.model.output.weight, std=0.1, generator=torch.Generator().manual_seed(3)
            )
            rim.zero_grad()
            rim.loss(y, x).backward()
            grads[graph, energy] = torch.cat([p.grad.flatten() for p in rim.parameters()])
    torch.testing.assert_close(grads[False, False], grads[False, True])
    torch.testing.assert_close(grads[True, False], grads[True, True])
    assert (grads[True, False] - grads[False, False]).abs().max() > 1e-6


def _tiny_task():
    problem = _problem(shape=(1, 4, 4), m=10, sigma=0.1)
    train = InverseProblemDataset(_images(96, seed=1), problem, seed=0)
    val = InverseProblemDataset(_images(32, seed=2), problem, seed=1, fresh_noise=False)
    return problem, train, val


def test_training_on_a_tiny_problem_lowers_the_validation_loss():
    problem, train, val = _tiny_task()
    rim = _rim(problem, score_preprocessing="arcsinh")
    result = rim.fit(
        train, epochs=6, learning_rate=3e-3, batch_size=16, validation=val, progress=False
    )
    assert len(result.val_losses) == 6
    assert result.val_losses[-1] < 0.75 * result.val_losses[0]
    ys = val.observations()
    assert psnr(rim.predict(ys), val.x).mean() > psnr(problem.adjoint(ys), val.x).mean()


def test_checkpoint_round_trip_reproduces_predictions_exactly(tmp_path):
    problem, train, val = _tiny_task()
    rim = _rim(problem, score_preprocessing="adam", link_function="softplus", steps=3)
    rim.fit(
        train,
        epochs=3,
        batch_size=16,
        validation=val,
        checkpoints_directory=tmp_path,
        ema_decay=0.5,
        progress=False,
    )
    hp = json.loads((tmp_path / "hparams.json").read_text())
    assert hp["model"]["backbone"] == "convrnn" and hp["score_preprocessing"] == "adam"
    assert hp["steps"] == 3 and hp["fit"]["ema_decay"] == 0.5
    ys = val.observations()
    with pytest.raises(ValueError, match=r"score_fn=\.\.\.") as info:
        RIM.from_checkpoint(tmp_path)
    assert "module-level" in str(info.value)
    last = RIM.from_checkpoint(tmp_path, which="last", score_fn=problem.score)
    assert torch.equal(last.predict(ys), rim.predict(ys))  # fit leaves the averaged weights
    best = RIM.from_checkpoint(tmp_path, score_fn=problem.score)
    assert best.steps == 3 and best.score_preprocessing == "adam"
    assert torch.isfinite(best.predict(ys)).all()


def test_an_interrupted_fit_resumes_to_the_same_weights(tmp_path):
    problem, train, val = _tiny_task()
    straight = _rim(problem)
    straight.fit(
        train,
        epochs=3,
        batch_size=16,
        validation=val,
        checkpoints_directory=tmp_path / "a",
        progress=False,
    )
    resumed = _rim(problem)
    resumed.fit(
        train,
        epochs=1,
        batch_size=16,
        validation=val,
        checkpoints_directory=tmp_path / "b",
        progress=False,
    )
    again = _rim(problem)
    result = again.fit(
        train,
        epochs=2,  # as torch-rim: two more, three in all
        batch_size=16,
        validation=val,
        checkpoints_directory=tmp_path / "b",
        progress=False,
    )
    assert result.resumed_from == 1
    for p, q in zip(straight.parameters(), again.parameters(), strict=True):
        assert torch.equal(p, q)
    other = _rim(problem, steps=5)
    with pytest.raises(ValueError, match="other settings"):
        other.fit(
            train,
            epochs=4,
            batch_size=16,
            validation=val,
            checkpoints_directory=tmp_path / "b",
            progress=False,
        )


def test_bad_dataset_items_are_named():
    problem = _problem()
    rim = _rim(problem)
    x = _images(6)
    ys = problem.observe(x)
    three = [(ys[i], x[i], torch.ones(1)) for i in range(6)]
    with pytest.raises(ValueError, match=r"dataset item 0: .* 2 entries; got 3"):
        rim.fit(three, epochs=1, progress=False)
    wrong_x = [(ys[i], x[i].reshape(1, 16)) for i in range(6)]
    with pytest.raises(ValueError, match=r"dataset item 0: x_true must have shape \(1, 4, 4\)"):
        rim.fit(wrong_x, epochs=1, progress=False)
    mixed = [(ys[i], x[i]) for i in range(6)]
    mixed[4] = (ys[4][:5], x[4])
    with pytest.raises(ValueError, match=r"dataset item 4: shapes .* differ"):
        rim.fit(mixed, epochs=1, batch_size=2, shuffle=False, progress=False)
    short_y = [(ys[i][:5], x[i]) for i in range(6)]
    with pytest.raises(ValueError, match="dataset item 0 does not run through the RIM"):
        rim.fit(short_y, epochs=1, progress=False)
    with pytest.raises(ValueError, match="validation item 2"):
        rim.fit(
            mixed[:4],
            validation=[(ys[i], x[i]) if i != 2 else (ys[i],) for i in range(3)],
            epochs=1,
            progress=False,
        )


def test_bad_arguments_fail_before_any_work():
    problem = _problem()
    net = ConvRNN(1, 2, features=4, hidden=4)
    with pytest.raises(ValueError, match="exactly one of score_fn and energy_fn"):
        RIM((4, 4), net)
    with pytest.raises(ValueError, match="initialization must be one of"):
        RIM((4, 4), net, problem.score, initialization="ones")
    with pytest.raises(ValueError, match="approximate_inverse_fn"):
        RIM((4, 4), net, problem.score, initialization="approximate_inverse")
    with pytest.raises(ValueError, match="score_preprocessing must be one of"):
        RIM((4, 4), net, problem.score, score_preprocessing="adagrad")
    with pytest.raises(ValueError, match="time_weights must be 3"):
        RIM((4, 4), net, problem.score, steps=3, time_weights=[1, 1])
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        RIM((4, 4), net, problem.score).fit([], batch_size=0)


# ----------------------------------------------------------------- problems and baselines


def test_blur_matrix_is_a_normalised_symmetric_gaussian():
    a = blur_matrix((9, 9))
    torch.testing.assert_close(a, a.T)
    interior = 4 * 9 + 4  # the centre pixel sees the whole kernel
    assert abs(float(a[interior].sum()) - 1.0) < 1e-12
    assert float(a[0].sum()) < 1.0  # zero boundary


def test_lmmse_tikhonov_and_map_ascent_against_closed_forms():
    problem = _problem(m=10)
    x = _images(200)
    y = problem.observe(x, torch.Generator().manual_seed(5))
    flat = x.flatten(1)
    mean, cov = flat.mean(0), torch.cov(flat.T)
    a, s2 = problem.matrix, problem.sigma**2
    # LMMSE is the posterior mean of the Gaussian model: argmax of the Gaussian posterior
    precision = torch.linalg.inv(cov + 1e-3 * torch.eye(16))
    post = torch.linalg.solve(a.T @ a / s2 + precision, (y @ a / s2 + mean @ precision).T).T
    torch.testing.assert_close(
        problem.lmmse(y, cov=cov + 1e-3 * torch.eye(16), mean=mean).flatten(1), post
    )
    torch.testing.assert_close(
        problem.map_ascent(y, mean, cov, steps=20000).flatten(1), post, rtol=1e-6, atol=1e-6
    )
    lam = 0.3
    stacked = torch.cat([a, lam**0.5 * torch.eye(16)])
    rhs = torch.cat([y, torch.zeros(200, 16, dtype=y.dtype)], 1)
    lstsq = torch.linalg.lstsq(stacked, rhs.T).solution.T
    torch.testing.assert_close(problem.tikhonov(y, lam).flatten(1), lstsq)
    assert float(psnr(x, x + 0.1).mean()) == pytest.approx(20.0)


def test_photograph_patches_come_from_the_bundled_images():
    pytest.importorskip("skimage", reason="scikit-image (the examples extra) is not installed")
    from spectorch.rim.problems import TEST_IMAGES, TRAIN_IMAGES, patches_deblur

    assert not set(TRAIN_IMAGES) & set(TEST_IMAGES)
    task = patches_deblur(size=16, n_train=12, n_val=4, n_test=4)
    assert task.train.shape == (12, 1, 16, 16) and task.test.shape == (4, 1, 16, 16)
    for part in (task.train, task.val, task.test):
        assert float(part.min()) >= 0.0 and float(part.max()) <= 1.0
        assert float(part.flatten(1).std(1).max()) > 0.01  # real texture, not constant
    y, x = task.datasets()[0][0]
    assert y.shape == (256,) and x.shape == (1, 16, 16)
    again = patches_deblur(size=16, n_train=12, n_val=4, n_test=4)
    assert torch.equal(again.train, task.train)  # reproducible


@pytest.mark.slow
def test_the_default_recipe_beats_lmmse_on_digit_deblurring(tmp_path):
    """The benchmark's target (a), one seed: RIM >= LMMSE + 1 dB on the test digits."""
    from spectorch.experiments.rim import train_task

    metrics = train_task(tmp_path, "digits-deblur", progress=False)
    assert metrics["psnr"]["RIM"] >= metrics["psnr"]["LMMSE"] + 1.0, metrics["psnr"]
    assert (tmp_path / "rim.png").exists()


def test_a_vector_unknown_with_a_dense_backbone():
    g = torch.Generator().manual_seed(0)
    problem = LinearGaussian(torch.randn(3, 5, generator=g), 0.1, (5,))
    torch.manual_seed(0)
    rim = RIM((), ConvRNN(5, 0, features=16, hidden=16), score_fn=problem.score, steps=3)
    x = torch.randn(64, 5, generator=g)
    data = torch.utils.data.TensorDataset(problem.observe(x, g), x)
    result = rim.fit(
        data, epochs=4, learning_rate=1e-2, batch_size=16, validation=data, progress=False
    )
    assert rim.predict(problem.observe(x[:2])).shape == (2, 5)
    assert result.val_losses[-1] < result.val_losses[0]


def test_feed_forward_baseline_starts_where_it_is_told():
    from spectorch.rim import FeedForward

    problem = _problem()
    torch.manual_seed(0)
    net = ConvRNN(1, 2, features=4, hidden=4).double()
    y = problem.observe(_images(3))
    ff = FeedForward(net, problem)
    expected = (
        problem.adjoint(y) + net(problem.adjoint(y), torch.zeros(3, 1, 4, 4).double(), None)[0]
    )
    torch.testing.assert_close(ff(y), expected)
    zero = FeedForward(net, problem, start=lambda y: torch.zeros(y.shape[0], 1, 4, 4).double())
    torch.testing.assert_close(
        zero(y), net(torch.zeros(3, 1, 4, 4).double(), torch.zeros(3, 1, 4, 4).double(), None)[0]
    )


@pytest.mark.parametrize("initialization", ["zeros", "adjoint", "lmmse"])
def test_build_rim_starts_where_it_is_told(initialization):
    """The examples' RIM starts from zero, ``Aᵀy`` or the LMMSE estimate; the backbone's
    output layer starts at zero, so every iterate of the untrained RIM is that start."""
    from spectorch.experiments.rim import build_rim
    from spectorch.rim.problems import make_task

    task = make_task("digits-deblur")
    rim = build_rim(task, features=4, steps=2, initialization=initialization)
    assert not rim.model.output.weight.any() and not rim.model.output.bias.any()
    y = task.datasets()[2].observations()[:3]
    expected = {
        "zeros": torch.zeros(3, 1, 8, 8, dtype=y.dtype),
        "adjoint": task.problem.adjoint(y),
        "lmmse": task.lmmse()(y),
    }[initialization]
    for x in rim(y):
        torch.testing.assert_close(x, expected)


def test_a_run_of_spectorch_0_1_resumes_and_predicts(tmp_path):
    """0.1 kept the task in task.json beside hparams.json; such a run resumes (its
    task is folded into hparams.json) and predicts."""
    from spectorch.experiments.rim import RimConfig, predict, run

    cfg = RimConfig(task="digits-cs", epochs=1, features=4, steps=2, schedule="constant")
    first = run(tmp_path, cfg, progress=False)
    hp = json.loads((tmp_path / "hparams.json").read_text())
    (tmp_path / "task.json").write_text(json.dumps(hp.pop("task")))  # 0.1's layout
    (tmp_path / "hparams.json").write_text(json.dumps(hp))
    assert predict(tmp_path)["psnr"] == pytest.approx(first["psnr"]["RIM"], abs=1e-4)
    again = run(tmp_path, RimConfig(**{**cfg.as_dict(), "epochs": 2}), progress=False)
    assert again["resumed_from"] == 1 and again["epochs"] == 2
    assert json.loads((tmp_path / "hparams.json").read_text())["task"]["name"] == "digits-cs"
