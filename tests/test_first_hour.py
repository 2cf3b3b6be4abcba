"""A new user's first hour (issue 15): every silent or confusing failure a new user
met is now one clear line, found before any expensive work, and the figures compare
what they draw. One test per failure."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from spectorch import plotting
from spectorch.density import SpectralDensity, spectral_density, tridiag_to_density
from spectorch.train import Loop, RunDirectory, optimizer_step


def cli(*args: str, cwd=None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run(
        [sys.executable, "-m", "spectorch.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
    )


def one_line_error(r: subprocess.CompletedProcess, *needles: str) -> None:
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert "Traceback" not in r.stderr and len(lines) == 1, r.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


# ----------------------------------------------------------------------------- start-up
def test_version_and_help_answer_without_importing_torch():
    code = (
        "import sys\n"
        "from spectorch.cli import main\n"
        "for argv in (['--version'], ['--help'], []):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print('TORCH', 'torch' in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "TORCH False" in r.stdout
    assert "spectorch 0." in r.stdout and "density" in r.stdout and "rim" in r.stdout
    import spectorch

    assert callable(spectorch.spectral_density)  # the lazy names still resolve
    assert "HessianOperator" in dir(spectorch)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        spectorch.nope  # noqa: B018


# ----------------------------------------------------------------------------- divergence
def _tiny_problem():
    torch.manual_seed(0)
    X = torch.randn(64, 4)
    y = X @ torch.tensor([1.0, -2.0, 0.5, 3.0])
    return X, y


def _regression_loop(run: RunDirectory, lr: float, steps: int = 12, **kwargs) -> Loop:
    X, y = _tiny_problem()
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [6], gamma=0.5)

    def step(t: int) -> float:
        opt.zero_grad()
        return optimizer_step(((model(X).squeeze(1) - y) ** 2).mean(), opt)

    loop = Loop(
        step,
        steps,
        state={"model": model, "optimizer": opt},
        run=run,
        checkpoint_every=2,
        schedulers=[sched],
        progress=False,
        **kwargs,
    )
    loop.model, loop.optimizer = model, opt
    return loop


def test_divergence_never_reaches_a_checkpoint_and_the_run_resumes_with_a_lower_lr(tmp_path):
    run = RunDirectory(
        tmp_path,
        {"lr": 2.0, "model": "linear"},
        kind="fit",
        checkpoint="c_{step}.pt",
        ignore=("lr",),
    )
    loop = _regression_loop(run, lr=2.0, diverge=1e3)
    with pytest.raises(FloatingPointError, match=r"diverged at step .*lower the learning rate"):
        loop.run()
    # every checkpoint left holds weights whose loss was computed and found sane
    saved = sorted(tmp_path.glob("c_*.pt"))
    assert saved and not list(tmp_path.glob("*.pending"))
    first_loss = None
    for path in saved:
        state = torch.load(path, weights_only=True)
        losses = state["history"].get("loss", [])
        first_loss = first_loss or (losses[0] if losses else None)
        X, y = _tiny_problem()
        model = nn.Linear(4, 1)
        model.load_state_dict(state["state"]["model"])
        with torch.no_grad():
            loss = float(((model(X).squeeze(1) - y) ** 2).mean())
        assert math.isfinite(loss) and (first_loss is None or loss < 1e3 * first_loss), path
    last = int(saved[-1].stem.split("_")[1])
    # the same directory, a lower learning rate: resumed, not refused
    run = RunDirectory(
        tmp_path,
        {"lr": 0.05, "model": "linear"},
        kind="fit",
        checkpoint="c_{step}.pt",
        ignore=("lr",),
    )
    loop = _regression_loop(run, lr=0.05, diverge=1e3)
    result = loop.run()
    assert result.resumed_from == last and result.step == 12
    assert loop.lr_changes == [(2.0, 0.05)]
    # the schedule continues from the new base: 0.05 halved at step 6
    assert loop.optimizer.param_groups[0]["lr"] == pytest.approx(0.025)
    assert json.loads((tmp_path / "settings.json").read_text())["lr"] == 0.05
    # what defines the run still may not change
    other = RunDirectory(
        tmp_path, {"lr": 0.05, "model": "mlp"}, kind="fit", checkpoint="c_{step}.pt", ignore=("lr",)
    )
    with pytest.raises(ValueError, match="model: 'linear' there, 'mlp' now"):
        _regression_loop(other, lr=0.05).run()


def test_a_checkpoint_is_confirmed_by_the_next_step_before_it_counts(tmp_path):
    run = RunDirectory(tmp_path, {}, kind="fit", checkpoint="c_{step}.pt")
    model = nn.Linear(2, 1)

    def step(t: int) -> float:
        return float("nan") if t == 4 else 1.0  # the weights saved after step 3 are "bad"

    with pytest.raises(FloatingPointError, match=r"c_2\.pt, is intact"):
        Loop(step, 10, state={"model": model}, run=run, checkpoint_every=2, progress=False).run()
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".pt") == ["c_2.pt"]
    assert not list(tmp_path.glob("*.pending"))


def test_non_finite_buffers_are_refused_like_weights(tmp_path):
    run = RunDirectory(tmp_path, {}, kind="fit")
    model = nn.BatchNorm1d(3)
    model.running_var.fill_(float("inf"))
    with pytest.raises(FloatingPointError, match="buffer running_var became non-finite"):
        Loop(lambda t: 1.0, 2, state={"model": model}, run=run, progress=False).run()
    assert not (tmp_path / "checkpoint.pt").exists()


def test_cifar_train_with_a_huge_lr_stops_and_resumes_with_a_lower_one(tmp_path):
    from spectorch.data import synthetic_cifar10, write_cifar10

    X, y = synthetic_cifar10(64, seed=0)
    write_cifar10(tmp_path / "d" / "data_batch_1.bin", X, y)
    args = (
        "cifar",
        "train",
        "--train-data",
        str(tmp_path / "d" / "data_batch_*.bin"),
        "--out",
        str(tmp_path / "r"),
        "--steps",
        "6",
        "--checkpoint-every",
        "2",
        "--depth",
        "8",
        "--width",
        "4",
        "--batch-size",
        "32",
        "--quiet",
    )
    r = cli(*args, "--lr", "1000")
    one_line_error(r, "diverged", "lower the learning rate", "is intact")
    for path in (tmp_path / "r").glob("step_*.pt"):
        state = torch.load(path, weights_only=True)["state"]["model"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
        assert max(float(v.abs().max()) for v in state.values() if v.is_floating_point()) < 1e3
    r = cli(*args, "--lr", "0.05")
    assert r.returncode == 0, r.stderr
    assert "resuming from step" in r.stderr and "learning rate 1000 -> 0.05" in r.stderr


# ----------------------------------------------------------------------------- resumes
def test_a_resumed_run_says_so_even_with_quiet_and_counts_only_its_steps(tmp_path):
    args = (
        "spin",
        "hydrogen",
        "--objective",
        "neuralef",
        "--neig",
        "4",
        "--niter",
        "6",
        "--batch-size",
        "32",
        "--hidden",
        "8",
        "--log-image-every",
        "100",
        "--save-params-every",
        "1",
        "--out",
        str(tmp_path / "h"),
        "--quiet",
    )
    r = cli(*args, "--time-budget", "1e-9")
    assert r.returncode == 0, r.stderr
    assert "1 steps in" in r.stdout and "resum" not in r.stderr
    r = cli(*args)
    assert r.returncode == 0, r.stderr
    assert "spectorch: neuralef: resuming from step 1 of 6" in r.stderr
    assert "5 steps in" in r.stdout and "(resumed at step 1; 6 in all)" in r.stdout


# ----------------------------------------------------------------------------- density runs
class _Counted:
    """A diagonal operator that counts its products."""

    def __init__(self, n: int = 40) -> None:
        self.diag = torch.linspace(-1.0, 3.0, n, dtype=torch.float64)
        self.shape = (n, n)
        self.dtype = torch.float64
        self.products = 0

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        self.products += 1
        return self.diag * v

    def describe(self) -> dict:
        return {"operator": "counted diagonal"}


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: np.save(d / "tridiag_1.npy", np.zeros((3, 3))), "shape (3, 3), expected (8, 8)"),
        (lambda d: np.save(d / "tridiag_1.npy", np.full((8, 8), np.nan)), "NaN or inf"),
        (lambda d: (d / "tridiag_1.npy").write_bytes(b"garbage"), "unreadable"),
        (
            lambda d: (d / "lanczos_vec_0.npy").write_bytes(
                (d / "lanczos_vec_0.npy").read_bytes()[:300]
            ),
            "truncated or unreadable",
        ),
    ],
)
def test_damaged_run_files_are_found_before_any_product(tmp_path, damage, message):
    out = tmp_path / "run"
    spectral_density(_Counted(), steps=8, draws=2, seed=0, out=out, progress=False)
    damage(out)
    op = _Counted()
    with pytest.raises(ValueError, match="of the run to resume is damaged") as info:
        spectral_density(op, steps=8, draws=3, seed=0, out=out, progress=False)
    assert message in str(info.value) and str(out) in str(info.value)
    assert op.products == 0 and not (out / "tridiag_2.npy").exists()


def test_tridiag_to_density_names_a_bad_sigma_squared():
    T = np.diag([1.0, 2.0])
    with pytest.raises(ValueError, match="sigma_squared must be a positive finite number, got -1"):
        tridiag_to_density([T], sigma_squared=-1)
    with pytest.raises(ValueError, match="grid_len must be"):
        tridiag_to_density([T], grid_len=1)


def test_outliers_are_only_marked_apart_from_the_bulk():
    # a bulk concentrated at 0 (as most curvature spectra), spread to ±0.01, and one
    # eigenvalue at 5: only 5 is an outlier
    rng = np.random.default_rng(0)
    eig = np.concatenate([np.zeros(900), rng.uniform(-0.01, 0.01, 99), [5.0]])
    op = _Counted(len(eig))
    op.diag = torch.as_tensor(eig)
    dens = spectral_density(op, steps=30, draws=3, seed=0, progress=False)
    assert np.allclose(dens.outliers(), [5.0])


# ----------------------------------------------------------------------------- atari, rim
def test_a_truncated_npz_is_one_line(tmp_path):
    frames = np.zeros((40, 84, 84), np.uint8)
    np.savez(tmp_path / "good.npz", frames=frames, episode_starts=np.zeros(40, bool))
    data = (tmp_path / "good.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    r = cli(
        "spin",
        "atari",
        "train",
        "--data",
        str(tmp_path / "cut.npz"),
        "--niter",
        "2",
        "--out",
        str(tmp_path / "run"),
        "--quiet",
    )
    one_line_error(r, "cut.npz is not a readable .npz of frames")
    assert not (tmp_path / "run").exists()


@pytest.fixture
def rim_run(rim_cli_run):
    return rim_cli_run[0]  # a trained RIM directory (conftest), only read here


def test_rim_predict_refuses_nan_observations(rim_run, tmp_path):
    y = np.random.default_rng(0).normal(size=(5, 32)).astype(np.float32)
    y[3, 7] = np.nan
    np.save(tmp_path / "y.npy", y)
    r = cli(
        "rim",
        "predict",
        "--checkpoint",
        str(rim_run),
        "--input",
        str(tmp_path / "y.npy"),
        "--output",
        str(tmp_path / "x.npy"),
    )
    one_line_error(r, "y.npy hold NaN or inf in 1 of 5 rows (the first is row 3)")
    assert not (tmp_path / "x.npy").exists()
    # the library call is an error too, unless asked for
    from spectorch.rim import RIM, ConvRNN, LinearGaussian

    torch.manual_seed(0)
    problem = LinearGaussian(torch.randn(32, 16, dtype=torch.float64) / 4, 0.1, (1, 4, 4))
    model = RIM((4, 4), ConvRNN(1, 2, features=4, hidden=4).double(), problem.score, steps=2)
    y = torch.randn(5, 32, dtype=torch.float64)
    y[3, 7] = float("nan")
    with pytest.raises(ValueError, match=r"y holds 1 NaN or inf values .* row 3"):
        model.predict(y)
    estimate = model.predict(y, allow_nonfinite=True)
    assert torch.isnan(estimate[3]).all() and torch.isfinite(estimate[[0, 1, 2, 4]]).all()


def test_rim_predict_to_a_missing_directory_and_a_corrupt_run(rim_run, tmp_path):
    r = cli(
        "rim",
        "predict",
        "--checkpoint",
        str(rim_run),
        "--output",
        str(tmp_path / "nowhere" / "x.npy"),
    )
    one_line_error(r, f"output directory {tmp_path / 'nowhere'} does not exist")
    assert not (tmp_path / "nowhere").exists()
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "hparams.json").write_text("{not json")
    r = cli("rim", "predict", "--checkpoint", str(broken))
    one_line_error(r, f"cannot read {broken / 'hparams.json'}")
    (broken / "hparams.json").unlink()  # a run of spectorch 0.1 kept its task in task.json
    (broken / "task.json").write_text('{"name": "digits-')
    r = cli("rim", "predict", "--checkpoint", str(broken))
    one_line_error(r, f"cannot read {broken / 'task.json'}")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--seed", "-5"), "seed must be a non-negative int, got -5"),
        (("--ema-decay", "7"), "ema_decay must lie in [0, 1), got 7.0"),
    ],
)
def test_rim_train_bad_settings_name_the_argument_and_leave_nothing(tmp_path, extra, message):
    r = cli("rim", "train", "--out", str(tmp_path / "r"), "--epochs", "1", *extra)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert not (tmp_path / "r").exists()


# ----------------------------------------------------------------------------- figures
def _density(eigs, steps: int = 12, draws: int = 2) -> SpectralDensity:
    op = _Counted(len(eigs))
    op.diag = torch.as_tensor(np.asarray(eigs, dtype=np.float64))
    return spectral_density(op, steps=steps, draws=draws, seed=0, progress=False)


@pytest.fixture
def captured(monkeypatch):
    """The figures plotting would save, kept instead of written."""
    figures = []
    monkeypatch.setattr(plotting, "save_figure", lambda fig, path: figures.append(fig) or path)
    return figures


def test_compared_runs_share_axes_and_one_kernel_width(captured, monkeypatch):
    widths = []
    evaluate = SpectralDensity.evaluate

    def spy(self, grid=None, **kw):
        widths.append(kw.get("sigma"))
        return evaluate(self, grid, **kw)

    monkeypatch.setattr(SpectralDensity, "evaluate", spy)
    narrow = _density(np.linspace(-1, 1, 60))
    wide = _density(np.r_[np.linspace(-1, 1, 59), 250.0])
    plotting.plot_trajectories(
        {"a": {"step 0": narrow, "step 1": wide}, "b": {"step 0": narrow}}, "x.png"
    )
    fig = captured[0]
    axes = [ax for ax in fig.axes if ax.get_lines()]
    assert len({ax.get_xlim() for ax in axes}) == 1
    assert len(set(widths)) == 1 and widths[0] is not None
    lo, hi = axes[0].get_xlim()
    for ax in axes:  # every curve falls to the floor inside the axis: nothing is cut
        for line in ax.get_lines():
            x, y = line.get_data()
            if len(x) > 100:
                assert lo <= x[0] and x[-1] <= hi and y[-1] < 1e-6 * np.max(y)


def test_spectra_of_other_scales_get_their_own_panel(captured):
    hessian = _density(np.r_[np.linspace(0, 0.05, 59), 0.22])
    ggn = _density(np.r_[np.linspace(0, 0.05, 59), 0.21])
    fisher = _density(np.r_[np.linspace(0, 0.001, 59), 0.004])
    plotting.plot_densities({"Hessian": hessian, "GGN": ggn, "Fisher": fisher}, "x.png")
    panels = [sorted(t.get_text() for t in ax.get_legend().get_texts()) for ax in captured[0].axes]
    assert panels == [["GGN", "Hessian"], ["Fisher"]]


def test_pruning_figure_carries_the_fully_trained_reference(captured):
    plotting.plot_pruning_curve(
        [0, 50], {"pruned": [0.9, 0.8]}, "x.png", reference=("fully trained, unpruned", 0.95)
    )
    labels = [t.get_text() for t in captured[0].axes[0].get_legend().get_texts()]
    assert "fully trained, unpruned" in labels


def test_hydrogen_figures_label_the_exact_energies_and_zoom_each_shell(captured, tmp_path):
    from spectorch.experiments import hydrogen

    cfg = hydrogen.HydrogenConfig(
        objective="neuralef",
        neig=4,
        niter=3,
        batch_size=32,
        hidden=(8,),
        log_image_every=3,
        save_params_every=3,
    )
    hydrogen.run(tmp_path, cfg, progress=False, eval_samples=500, plot_points=16)
    functions, curves = captured[-2], captured[-1]
    images = [ax for ax in functions.axes if ax.get_images()]
    assert len(images) == 4 and len(functions.axes) == 8  # one colour bar per image
    assert "exact -1" in images[0].get_title()
    assert images[0].get_xlim()[1] == pytest.approx(hydrogen.shell_zoom(0, cfg.lim))
    assert images[1].get_xlim()[1] == pytest.approx(hydrogen.shell_zoom(1, cfg.lim))
    legend = [t.get_text() for t in curves.axes[0].get_legend().get_texts()]
    assert "exact (dashed)" in legend
    assert curves.axes[0].get_yscale() == "log"


def test_written_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = plotting.plot_pruning_curve([0], {"a": [0.5]}, tmp_path / "p.png")
    finally:
        os.umask(old)
    assert Path(path).stat().st_mode & 0o777 == 0o644
