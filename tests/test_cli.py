"""The command line as a user runs it: real processes, real files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import spectorch

ENTRY = textwrap.dedent(
    """
    import torch
    from torch import nn

    def problem():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).eval()
        X = torch.randn(40, 4)
        y = torch.randint(0, 3, (40,))
        return model, nn.CrossEntropyLoss(), [(X[:25], y[:25]), (X[25:], y[25:])]

    def nan_problem():
        model, loss, data = problem()
        X, y = data[0]
        X = X.clone()
        X[0, 0] = float("nan")
        return model, loss, [(X, y)]

    def train_mode_problem():
        model = nn.Sequential(nn.Linear(4, 6), nn.Dropout(0.5), nn.Linear(6, 3)).train()
        return model, nn.CrossEntropyLoss(), [(torch.randn(8, 4), torch.randint(0, 3, (8,)))]

    not_callable = 3
    """
)


def run(*args: str, cwd=None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run(
        [sys.executable, "-m", "spectorch.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=timeout,
    )


@pytest.fixture
def entry(tmp_path):
    path = tmp_path / "problem.py"
    path.write_text(ENTRY)
    return path


def test_version_and_help():
    r = run("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"spectorch {spectorch.__version__}"
    r = run("--help")
    assert r.returncode == 0 and "density" in r.stdout and "tour" in r.stdout
    r = run("density", "--help")
    assert r.returncode == 0 and "--operator {fisher,ggn,hessian}" in r.stdout


def test_density_writes_the_originals_files_and_resumes(tmp_path, entry):
    out = tmp_path / "run"
    args = (
        "density",
        f"{entry}:problem",
        "--steps",
        "20",
        "--draws",
        "3",
        "--out",
        str(out),
        "--quiet",
        "--operator",
        "ggn",
    )
    r = run(*args)
    assert r.returncode == 0, r.stderr
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        [f"tridiag_{k}.npy" for k in range(3)]
        + [f"lanczos_vec_{k}.npy" for k in range(3)]
        + ["manifest.json", "summary.json", "density.png"]
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["operator"]["operator"] == "ggn" and manifest["dim"] == 51
    assert manifest["entry"] == f"{entry}:problem"
    T = np.load(out / "tridiag_0.npy")
    assert T.shape == (20, 20) and np.allclose(T, T.T)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["bottom_eigenvalue"] > -1e-6  # the GGN is positive semi-definite
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("tridiag_*.npy")}
    r = run(*args)  # everything is done: nothing is recomputed, and it says so
    assert r.returncode == 0
    assert "3 of 3 draws already there, 0 to compute" in r.stderr
    assert before == {p.name: p.stat().st_mtime_ns for p in out.glob("tridiag_*.npy")}


def test_density_blocks_from_the_command_line(tmp_path, entry):
    out = tmp_path / "blocks"
    base = ("density", f"{entry}:problem", "--steps", "8", "--draws", "2", "--quiet")
    r = run(*base, "--out", str(out), "--blocks", "first=0.*", "last=2.weight,2.bias")
    assert r.returncode == 0, r.stderr
    assert (out / "blocks.png").stat().st_size > 10_000 and (out / "density.png").exists()
    summary = json.loads((out / "blocks.json").read_text())
    assert summary["blocks"]["first"]["parameters"] == 30
    assert summary["blocks"]["last"]["parameters"] == 21
    assert 0 <= summary["js_distance_mean"] <= 1
    manifest = json.loads((out / "blocks" / "last" / "manifest.json").read_text())
    assert manifest["params"] == ["2.weight", "2.bias"] and manifest["dim"] == 21
    r = run(*base, "--out", str(tmp_path / "bad"), "--blocks", "attn=h.*.attn.*")
    assert r.returncode == 2 and "--blocks: block 'attn'" in r.stderr
    assert "selects no trainable parameter" in r.stderr and not (tmp_path / "bad").exists()


def test_density_with_kept_linearisations_from_the_command_line(tmp_path, entry):
    """``--hvp forward --cache-graphs yes``: the same tridiagonals as the default
    products (float32 round-off apart), the choice in the manifest, and a run made
    with other products is not resumed."""
    base = ("density", f"{entry}:problem", "--steps", "8", "--draws", "2", "--quiet")
    r = run(*base, "--out", str(tmp_path / "default"))
    assert r.returncode == 0, r.stderr
    kept = ("--hvp", "forward", "--cache-graphs", "yes")
    r = run(*base, *kept, "--out", str(tmp_path / "linearised"))
    assert r.returncode == 0, r.stderr
    manifest = json.loads((tmp_path / "linearised" / "manifest.json").read_text())
    assert manifest["operator"]["hvp"] == "forward"
    for k in range(2):
        a = np.load(tmp_path / "default" / f"tridiag_{k}.npy")
        b = np.load(tmp_path / "linearised" / f"tridiag_{k}.npy")
        assert np.abs(a - b).max() < 1e-5 * np.abs(a).max()
    r = run(*base, *kept, "--out", str(tmp_path / "default"))
    assert r.returncode == 2 and "operator.hvp: 'reverse' there, 'forward' now" in r.stderr


@pytest.mark.parametrize(
    ("entry_spec", "extra", "message"),
    [
        ("{entry}", (), "ENTRY must look like MODULE:FUNCTION"),
        ("no_such_module_xyz:f", (), "cannot import module 'no_such_module_xyz'"),
        ("{entry}:missing", (), "has no function 'missing'"),
        ("{entry}:not_callable", (), "is not callable"),
        ("{dir}/nope.py:f", (), "does not exist"),
        ("{entry}:nan_problem", ("--no-vectors",), "NaN or inf"),
        ("{entry}:train_mode_problem", (), "train mode with Dropout"),
        ("{entry}:problem", ("--steps", "1000"), "exceeds the number of parameters 51"),
        ("{entry}:problem", ("--device", "cuda"), "CUDA is not available"),
        ("{entry}:problem", ("--draws", "10", "--draw-index", "1"), "either --draws N or"),
        (
            "{entry}:problem",
            ("--operator", "fisher", "--hvp", "forward"),
            "--operator fisher does not take --hvp forward",
        ),
        (
            "{entry}:problem",
            ("--operator", "ggn", "--hvp", "finite-difference", "--cache-graphs", "no"),
            "--operator ggn does not take --hvp finite-difference, --cache-graphs",
        ),
        (
            "{entry}:problem",
            ("--hvp", "finite-difference", "--compile"),
            "--hvp finite-difference keeps no graphs and is not compiled",
        ),
    ],
)
def test_user_errors_are_one_line_and_leave_nothing(tmp_path, entry, entry_spec, extra, message):
    if "cuda" in extra and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    out = tmp_path / "out"
    spec = entry_spec.format(entry=entry, dir=tmp_path)
    r = run("density", spec, "--out", str(out), "--quiet", "--steps", "10", *extra)
    assert r.returncode == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_argparse_rejects_unknown_operator_and_bad_numbers(entry):
    r = run("density", f"{entry}:problem", "--operator", "hesian")
    assert r.returncode == 2 and "invalid choice: 'hesian'" in r.stderr
    r = run("density", f"{entry}:problem", "--steps", "0")
    assert r.returncode == 2 and "expected a positive int, got 0" in r.stderr


def test_out_that_is_a_file(tmp_path, entry):
    f = tmp_path / "file"
    f.write_text("x")
    r = run("density", f"{entry}:problem", "--out", str(f))
    assert r.returncode == 2 and "is a file, expected a directory" in r.stderr


#: A cut-down tour for the default tier: every section runs, through the command line,
#: in about a minute; `make demo` and the slow tier run the full one.
SHORT_TOUR = ("--digits-hidden", "8", "--digits-epochs", "10", "--slq-draws", "2",
              "--cifar-steps", "4", "--cifar-images", "128", "--cifar-lanczos-steps", "8",
              "--cifar-density-images", "16", "--lm-steps", "4", "--lm-lanczos-steps", "6",
              "--eos-steps", "10",
              "--kernel-steps", "20", "--hydrogen-steps", "20",
              "--atari-frames", "200", "--atari-steps", "2", "--pruning-epochs", "2",
              "--rim-epochs", "1", "--rim-features", "4")  # fmt: skip


def _check_tour_files(out, summary):
    assert set(summary["section_seconds"]) == {
        "curvature_spectra", "cifar_workflow", "language_model", "curvature_during_training",
        "spectral_inference", "spectral_layers", "rim",
    }  # fmt: skip
    for name, rep in summary["curvature_spectra"]["operators"].items():
        assert rep["top_eigenvalue_rel_error"] < 1e-6, name
        assert rep["wasserstein1_over_range"] < 0.01, name
        assert (out / "curvature" / f"density_{name}.png").stat().st_size > 10_000
    figures = ["curvature/curvature_densities.png", "cifar/trajectories.png",
               "spin/kernel/kernel.png", "spin/hydrogen/eigenfunctions.png",
               "spin/hydrogen/eigenvalues.png", "pruning/pruning.png", "rim/rim.png",
               "eos/sharpness.png",
               *("lm/" + f for f in summary["language_model"]["figures"])]  # fmt: skip
    for figure in figures:
        assert (out / figure).stat().st_size > 10_000, figure
    text = (out / "summary.txt").read_text()
    assert "time per section" in text and "against the exact" in text


def test_short_tour(tmp_path):
    r = run("tour", "--out", "tour", "--quiet", *SHORT_TOUR, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "figures and summary in" in r.stdout
    out = tmp_path / "tour"
    summary = json.loads((out / "summary.json").read_text())
    _check_tour_files(out, summary)
    assert summary["spectral_inference"]["hydrogen"]["steps"] == 20
    assert summary["rim"]["epochs"] == 1


@pytest.mark.slow
def test_tour(tmp_path):
    """The full tour (`make demo`): every capability against its reference."""
    r = run("tour", "--out", "tour", "--quiet", cwd=tmp_path, timeout=900)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "tour"
    summary = json.loads((out / "summary.json").read_text())
    _check_tour_files(out, summary)
    assert summary["curvature_spectra"]["train"]["test_accuracy"] > 0.9
    for name, rows in summary["cifar_workflow"]["runs"].items():
        assert rows[-1]["test_accuracy"] > 0.8, name
    gpt = summary["language_model"]
    assert gpt["held_out_loss"] < 3.0 < 5.0 < gpt["first_loss"]  # from ln 256 = 5.5 nats/byte
    assert len(gpt["figures"]) == 2 and summary["section_seconds"]["language_model"] < 60
    eos = summary["curvature_during_training"]  # the sharpness reaches 2/η and hovers
    assert eos["first_crossing"] is not None and abs(eos["mean_ratio"] - 1) < 0.15
    spin = summary["spectral_inference"]
    for name, rep in spin["kernel"]["objectives"].items():
        assert rep["max_relative_error"] < 0.05, name
    assert spin["hydrogen"]["mean_relative_error"] < 0.05
    layers = summary["spectral_layers"]
    reference = layers["reference"]["acc"]
    assert reference > 0.95
    half = next(row for row in layers["full"] if row["removed"] == 50)
    assert half["acc"] > reference - 0.03  # pruning half the nodes keeps the accuracy
    assert layers["filter_90"]["acc"] > 0.95
    rim = summary["rim"]["psnr"]
    assert rim["RIM"] > max(v for k, v in rim.items() if k != "RIM"), rim
    slow = spin["atari"]
    if "skipped" not in slow:
        assert slow["steps"] == 60 and len(slow["evaluation"]) == 5
        assert (out / "spin" / "atari" / "run" / "slow_features.png").stat().st_size > 10_000
    assert summary["seconds"] < 600


def test_atari_collect_refuses_an_unknown_game():
    pytest.importorskip("ale_py", reason="ale-py (the atari extra) is not installed")
    r = run("spin", "atari", "collect", "--game", "space_invaderz", "--frames", "10")
    assert r.returncode == 2 and "valid names:" in r.stderr and "montezuma_revenge" in r.stderr
    r = run("spin", "atari", "train", "--data", "missing.npz")
    assert r.returncode == 2 and "--data: no such file" in r.stderr


@pytest.mark.slow
def test_atari_collect_train_and_figure(tmp_path):
    """End to end: frames of a real game, a few hundred SpIN steps, the figure, resume."""
    pytest.importorskip("ale_py", reason="ale-py (the atari extra) is not installed")
    data = tmp_path / "si.npz"
    r = run("spin", "atari", "collect", "--game", "space_invaders", "--frames", "3000",
            "--out", str(data), "--quiet")  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = tmp_path / "run"
    args = ("spin", "atari", "train", "--data", str(data), "--out", str(out), "--quiet")
    r = run(*args, "--niter", "300", "--batch-size", "64", "--log-image-every", "300",
            timeout=1800)  # fmt: skip
    assert r.returncode == 0, r.stderr
    result = json.loads((out / "result.json").read_text())
    assert result["steps"] == 300 and abs(result["evaluation"][0]) < 1e-8
    assert all(0 < v < 2 for v in result["evaluation"][1:])
    assert (out / "slow_features.png").stat().st_size > 10_000
    r = run(*args, "--niter", "300", "--batch-size", "64", "--log-image-every", "300")
    assert r.returncode == 0 and "300 steps" in r.stdout  # resumed, nothing left to do


def test_rim_train_and_predict(tmp_path, rim_cli_run):
    out, r = rim_cli_run
    args = ("rim", "train", "--task", "digits-cs", "--epochs", "1", "--features", "8")
    assert "LMMSE" in r.stdout and "RIM" in r.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["rim_psnr_per_step"]) == 3 and metrics["epochs"] == 1
    assert (out / "rim.png").stat().st_size > 5_000
    r = run("rim", "predict", "--checkpoint", str(out), "--output", str(tmp_path / "p.npy"))
    assert r.returncode == 0, r.stderr
    assert "test PSNR" in r.stdout
    predictions = np.load(tmp_path / "p.npy")
    assert predictions.shape == (metrics["test_images"], 1, 8, 8)
    assert float(r.stdout.split("test PSNR ")[1].split()[0]) == pytest.approx(
        metrics["psnr"]["RIM"], abs=0.01
    )
    y = np.random.default_rng(0).normal(size=(5, 32)).astype(np.float32)
    np.save(tmp_path / "y.npy", y)
    r = run(
        "rim",
        "predict",
        "--checkpoint",
        str(out),
        "--input",
        str(tmp_path / "y.npy"),
        "--output",
        str(tmp_path / "x.npy"),
    )
    assert r.returncode == 0, r.stderr
    assert np.load(tmp_path / "x.npy").shape == (5, 1, 8, 8)
    np.save(tmp_path / "bad.npy", y[:, :30])
    r = run("rim", "predict", "--checkpoint", str(out), "--input", str(tmp_path / "bad.npy"))
    assert r.returncode == 2 and "must have shape (N, 32)" in r.stderr
    r = run("rim", "predict", "--checkpoint", str(tmp_path))
    assert r.returncode == 2 and "hparams.json does not exist" in r.stderr
    r = run(*args, "--steps", "3", "--out", str(out), "--quiet", "--train-size", "5")
    assert r.returncode == 2 and "train_size applies to task patches-deblur" in r.stderr


def test_eigenpairs_and_landscape_from_the_command_line(tmp_path, entry):
    r = run("eigenpairs", f"{entry}:problem", "-k", "2", "--out", str(tmp_path / "eig"), "--quiet")
    assert r.returncode == 0, r.stderr
    found = json.loads((tmp_path / "eig" / "eigenpairs.json").read_text())
    # the exact answer: eigh of the dense Hessian of the same problem
    ns: dict = {}
    exec(ENTRY, ns)
    from spectorch.curvature import HessianOperator

    model, loss, data = ns["problem"]()
    dense = torch.linalg.eigvalsh(HessianOperator(model.double(), loss, [
        (X.double(), y) for X, y in data]).to_dense()).flip(0)[:2]  # fmt: skip
    np.testing.assert_allclose(found["eigenvalues"], dense.numpy(), rtol=1e-4)  # float32 net
    assert all(found["converged"])
    saved = torch.load(tmp_path / "eig" / "eigenvectors.pt")
    assert saved["vectors"].shape == (2, 51)
    # the same eigenpairs from kept linearisations; a product option the operator does
    # not take is refused before any work
    lin = tmp_path / "eig-lin"
    r = run("eigenpairs", f"{entry}:problem", "-k", "2", "--out", str(lin), "--quiet",
            "--hvp", "forward", "--cache-graphs", "yes")  # fmt: skip
    assert r.returncode == 0, r.stderr
    found = json.loads((lin / "eigenpairs.json").read_text())
    assert found["operator"]["hvp"] == "forward"
    np.testing.assert_allclose(found["eigenvalues"], dense.numpy(), rtol=1e-4)
    r = run("eigenpairs", f"{entry}:problem", "--operator", "fisher", "--compile",
            "--out", str(tmp_path / "no"))  # fmt: skip
    assert r.returncode == 2 and "--operator fisher does not take --compile" in r.stderr
    assert not (tmp_path / "no").exists()
    r = run("landscape", f"{entry}:problem", "--dims", "2", "--points", "5", "--quiet",
            "--out", str(tmp_path / "land"))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "land" / "landscape.png").stat().st_size > 1000
    summary = json.loads((tmp_path / "land" / "landscape.json").read_text())
    assert summary["dims"] == 2 and len(summary["eigenvalues"]) == 2
    r = run("landscape", f"{entry}:problem", "--points", "4", "--out", str(tmp_path / "x"))
    assert r.returncode != 0 and "--points must be odd" in r.stderr
    assert not (tmp_path / "x").exists()


def test_eos_from_the_command_line(tmp_path):
    out = tmp_path / "eos"
    r = run("eos", "--lrs", "3", "--steps", "20", "--every", "5", "--samples", "100",
            "--out", str(out), "--quiet")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "η = 3 (threshold 0.6667)" in r.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["runs"][0]["threshold"] == pytest.approx(2 / 3)
    assert (out / "lr_3" / "sharpness.csv").exists() and (out / "sharpness.png").exists()
    r = run("eos", "--lrs", "0", "--out", str(tmp_path / "bad"))
    assert r.returncode == 2 and "--lrs" in r.stderr and not (tmp_path / "bad").exists()
