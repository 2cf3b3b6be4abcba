"""The CIFAR-10 workflow: binary-batch reader, augmentation, ResNet-32, train/resume,
checkpoints, one density per checkpoint, trajectory figures, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from spectorch.curvature import HessianOperator
from spectorch.data import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    CifarBatches,
    read_cifar10,
    synthetic_cifar10,
    write_cifar10,
)
from spectorch.density import spectral_density
from spectorch.experiments.cifar import (
    CifarConfig,
    checkpoint_densities,
    list_checkpoints,
    load_cifar_checkpoint,
    load_trajectory,
    train_cifar,
)
from spectorch.nn import cifar_resnet


@pytest.fixture(scope="module")
def cifar_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar")
    X, y = synthetic_cifar10(300, seed=1)
    write_cifar10(root / "data_batch_1.bin", X[:150], y[:150])
    write_cifar10(root / "data_batch_2.bin", X[150:250], y[150:250])
    write_cifar10(root / "test_batch.bin", X[250:], y[250:])
    return root, X, y


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "spectorch.cli", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONWARNINGS="ignore"),
        timeout=timeout,
    )


def test_reader_reads_the_exact_binary_format(cifar_files):
    root, X, y = cifar_files
    raw = (root / "data_batch_1.bin").read_bytes()
    assert len(raw) == 150 * 3073
    # record 0: its label byte, then the red plane row-major
    assert raw[0] == int(y[0]) and raw[1:33] == bytes(X[0, 0, 0].tolist())
    assert raw[3073 + 1 + 1024] == int(X[1, 1, 0, 0])  # record 1, first green pixel
    images, labels = read_cifar10(str(root / "data_batch_*.bin"))
    assert images.dtype == torch.uint8 and images.shape == (250, 3, 32, 32)
    assert torch.equal(images, X[:250]) and torch.equal(labels, y[:250])


def test_reader_errors_name_the_problem(tmp_path, cifar_files):
    with pytest.raises(FileNotFoundError, match="matches no file"):
        read_cifar10(str(tmp_path / "nothing_*.bin"))
    bad = tmp_path / "data_batch_9.bin"
    bad.write_bytes(b"\x01" * 3074)
    with pytest.raises(ValueError, match=r"data_batch_9.bin has 3074 bytes.*3073-byte records"):
        read_cifar10(str(bad))
    bad.write_bytes(bytes([12]) + b"\x00" * 3072)
    with pytest.raises(ValueError, match="label 12, expected 0-9"):
        read_cifar10(str(bad))


def test_batches_normalise_and_augment(cifar_files):
    _, X, y = cifar_files
    plain = CifarBatches(X, y, 64)
    xb, yb = plain[0]
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(xb, (X[:64].float() / 255 - mean) / std, rtol=0, atol=0)
    assert torch.equal(yb, y[:64])
    aug = CifarBatches(X, y, 16, augment=True, shuffle=True, seed=3)
    xa, ya = aug[0]
    order = torch.randperm(300, generator=torch.Generator().manual_seed(_seed(3, 0)))
    assert torch.equal(ya, y[order[:16]])
    raw = (xa * std + mean) * 255
    for j in range(4):  # each image is a window of its zero-padded self, maybe flipped
        padded = torch.nn.functional.pad(X[order[j]].float(), (4, 4, 4, 4))
        windows = [
            w
            for oy in range(9)
            for ox in range(9)
            for w in (padded[:, oy : oy + 32, ox : ox + 32],)
            for w in (w, w.flip(-1))
        ]
        assert min(float((raw[j] - w).abs().max()) for w in windows) < 1e-3


def _seed(*key):
    from spectorch.data._cifar import _seed as seed

    return seed(*key)


def test_batches_are_reproducible_per_epoch_and_step(cifar_files):
    _, X, y = cifar_files
    a = CifarBatches(X, y, 32, augment=True, shuffle=True, seed=0)
    b = CifarBatches(X, y, 32, augment=True, shuffle=True, seed=0)
    a.set_epoch(2)
    b.set_epoch(2)
    full = list(a)
    tail = list(b.iter_from(5))
    assert len(tail) == len(full) - 5
    for (x1, y1), (x2, y2) in zip(full[5:], tail, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    b.set_epoch(3)
    assert not torch.equal(next(iter(b))[0], full[0][0])
    shards = [CifarBatches(X, y, 50, rank=r, world_size=3) for r in range(3)]
    seen = torch.cat([torch.cat([yy for _, yy in s]) for s in shards])
    assert seen.numel() == 300 and sorted(seen.tolist()) == sorted(y.tolist())


def test_resnet32_with_and_without_batchnorm():
    bn, plain = cifar_resnet(32), cifar_resnet(32, batchnorm=False)
    # He et al. 2016 Table 6: 0.46M parameters
    assert sum(p.numel() for p in bn.parameters()) == 464_154
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert sum(isinstance(m, nn.Conv2d) for m in bn.modules()) == 31  # + 1 linear = 32
    assert bn(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def small_config(**kw) -> CifarConfig:
    return CifarConfig(**{"steps": 6, "depth": 8, "batch_size": 32, "lr": 0.05, **kw})


def test_training_resumes_to_the_uninterrupted_result(tmp_path, cifar_files):
    root, _, _ = cifar_files
    data = str(root / "data_batch_*.bin")
    full = train_cifar(data, tmp_path / "a", small_config(), checkpoint_every=2, progress=False)
    assert [p.name for p in full.checkpoints] == [f"step_{s:07d}.pt" for s in (0, 2, 4, 6)]
    train_cifar(data, tmp_path / "b", small_config(), checkpoint_every=2, progress=False)
    (tmp_path / "b" / "step_0000006.pt").unlink()  # as if killed during steps 5-6
    resumed = train_cifar(data, tmp_path / "b", small_config(), checkpoint_every=2, progress=False)
    assert resumed.resumed_from == 4
    a = torch.load(tmp_path / "a" / "step_0000006.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "step_0000006.pt", weights_only=True)
    for k in a["state"]["model"]:
        assert torch.equal(a["state"]["model"][k], b["state"]["model"][k]), k
    assert a["history"]["loss"] == b["history"]["loss"] and len(a["history"]["loss"]) == 6
    with pytest.raises(ValueError, match=r"other settings \(momentum: 0.9 there, 0.5 now"):
        train_cifar(data, tmp_path / "b", small_config(momentum=0.5), progress=False)


def test_step_schedule():
    c = CifarConfig(steps=100, lr=0.1, lr_drops=(0.5, 0.75))
    assert [c.lr_at(s) for s in (0, 49, 50, 74, 75, 99)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
    )
    with pytest.raises(ValueError, match="depth must be 6n"):
        CifarConfig(depth=30)


def test_corrupt_checkpoint_is_named(tmp_path, cifar_files):
    root, _, _ = cifar_files
    run = tmp_path / "run"
    train_cifar(str(root / "data_batch_1.bin"), run, small_config(steps=2), progress=False)
    last = list_checkpoints(run)[-1]
    last.write_bytes(last.read_bytes()[:1000])
    with pytest.raises(ValueError, match=f"checkpoint {last} is corrupt or truncated"):
        load_cifar_checkpoint(last)
    with pytest.raises(ValueError, match="corrupt or truncated"):
        train_cifar(str(root / "data_batch_1.bin"), run, small_config(steps=2), progress=False)
    with pytest.raises(ValueError, match="corrupt or truncated"):
        checkpoint_densities(run, str(root / "data_batch_1.bin"), tmp_path / "d", steps=3)
    assert not (tmp_path / "d").exists()


def test_one_density_per_checkpoint_and_the_trajectory(tmp_path, cifar_files):
    root, X, y = cifar_files
    data = str(root / "data_batch_*.bin")
    run = tmp_path / "run"
    train_cifar(data, run, small_config(steps=4), checkpoint_every=2, progress=False)
    out = tmp_path / "dens"
    dens = checkpoint_densities(
        run, data, out, images=64, batch_size=32, steps=8, draws=2, progress=False
    )
    assert sorted(dens) == ["step_0000000", "step_0000002", "step_0000004"]
    assert (out / "trajectory.png").stat().st_size > 0
    # the same as a density of that checkpoint's Hessian on the first 64 images, in order
    model, _ = load_cifar_checkpoint(run / "step_0000002.pt")
    op = HessianOperator(model, nn.CrossEntropyLoss(), CifarBatches(X[:64], y[:64], 32))
    ref = spectral_density(op, steps=8, draws=2, progress=False)
    for a, b in zip(ref.nodes, dens["step_0000002"].nodes, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    label, curves = load_trajectory(out)
    assert label == "ResNet-8 with BatchNorm" and list(curves) == ["step 0", "step 2", "step 4"]


def test_cli_workflow_and_errors(tmp_path, cifar_files):
    root, _, _ = cifar_files
    data = str(root / "data_batch_*.bin")
    run = tmp_path / "run"
    common = ["--steps", "2", "--depth", "8", "--batch-size", "32", "--quiet"]
    r = cli("cifar", "train", "--train-data", data, "--out", str(run), *common)
    assert r.returncode == 0, r.stderr
    r = cli("cifar", "eval", str(run), "--test-data", str(root / "test_batch.bin"), "--out",
            str(tmp_path / "eval.json"))  # fmt: skip
    assert r.returncode == 0, r.stderr
    rows = json.loads((tmp_path / "eval.json").read_text())
    assert [row["step"] for row in rows] == [0, 2] and rows[0]["images"] == 50
    dens = tmp_path / "dens"
    r = cli("cifar", "density", str(run), "--train-data", data, "--out", str(dens),
            "--images", "64", "--steps", "5", "--draws", "1", "--quiet")  # fmt: skip
    assert r.returncode == 0, r.stderr
    r = cli("cifar", "figure", str(dens), str(dens), "--labels", "a", "b", "--out",
            str(tmp_path / "fig.png"))  # fmt: skip
    assert r.returncode == 0, r.stderr and (tmp_path / "fig.png").exists()
    r = cli("cifar", "train", "--train-data", str(tmp_path / "none_*.bin"), "--out",
            str(tmp_path / "x"), *common)  # fmt: skip
    assert r.returncode == 2 and "matches no file" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "x").exists()


@pytest.mark.slow
def test_end_to_end_cifar_workflow(tmp_path):
    """Generated CIFAR-format files -> ResNet-20 trained 240 steps -> 3 checkpoints ->
    3 Hessian densities -> trajectory figure, all through the command line (about 10
    minutes on 2 CPU cores)."""
    X, y = synthetic_cifar10(2048 + 512, seed=0)
    write_cifar10(tmp_path / "data" / "data_batch_1.bin", X[:1024], y[:1024])
    write_cifar10(tmp_path / "data" / "data_batch_2.bin", X[1024:2048], y[1024:2048])
    write_cifar10(tmp_path / "data" / "test_batch.bin", X[2048:], y[2048:])
    data = str(tmp_path / "data" / "data_batch_*.bin")
    run = tmp_path / "run"
    r = cli("cifar", "train", "--train-data", data, "--out", str(run), "--steps", "240",
            "--checkpoint-every", "120", "--depth", "20", "--batch-size", "64",
            "--quiet")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert [p.name for p in list_checkpoints(run)] == [
        "step_0000000.pt",
        "step_0000120.pt",
        "step_0000240.pt",
    ]
    r = cli("cifar", "eval", str(run), "--test-data", str(tmp_path / "data" / "test_batch.bin"),
            "--out", str(tmp_path / "eval.json"))  # fmt: skip
    rows = json.loads((tmp_path / "eval.json").read_text())
    assert rows[-1]["accuracy"] > 0.5 > rows[0]["accuracy"]  # it learned
    dens = tmp_path / "dens"
    r = cli("cifar", "density", str(run), "--train-data", data, "--out", str(dens),
            "--images", "256", "--steps", "30", "--draws", "2", "--quiet",
            timeout=1800)  # fmt: skip
    assert r.returncode == 0, r.stderr
    _, curves = load_trajectory(dens)
    assert list(curves) == ["step 0", "step 120", "step 240"]
    assert all(np.isfinite(d.top_eigenvalues(1)[0]) for d in curves.values())
    assert (dens / "trajectory.png").stat().st_size > 10_000


def test_training_tracks_the_sharpness(tmp_path, cifar_files):
    import csv

    root, _, _ = cifar_files
    out = tmp_path / "run"
    train_cifar(str(root / "data_batch_*.bin"), out, small_config(steps=3), checkpoint_every=3,
                progress=False, sharpness_every=3, sharpness_images=4)  # fmt: skip
    with open(out / "sharpness.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [0, 3]
    assert all(float(r["eig_1"]) > 0 and r["converged"] == "1" for r in rows)
    saved = torch.load(out / "step_0000003.pt", weights_only=True)
    assert len(saved["state"]["callback:sharpness"]["rows"]) == 2


@pytest.mark.slow
def test_training_tracks_the_sharpness_and_resumes_it(tmp_path, cifar_files):
    import csv

    root, _, _ = cifar_files
    data = str(root / "data_batch_*.bin")
    kw = {"checkpoint_every": 2, "progress": False, "sharpness_every": 3, "sharpness_images": 4}
    train_cifar(data, tmp_path / "a", small_config(), **kw)
    train_cifar(data, tmp_path / "b", small_config(), **kw)
    (tmp_path / "b" / "step_0000006.pt").unlink()  # as if killed during steps 5-6
    train_cifar(data, tmp_path / "b", small_config(), **kw)

    def rows(d):
        with open(d / "sharpness.csv") as fh:
            return [{k: v for k, v in r.items() if k != "cpu_seconds"} for r in csv.DictReader(fh)]

    assert [int(r["step"]) for r in rows(tmp_path / "a")] == [0, 3, 6]
    assert rows(tmp_path / "a") == rows(tmp_path / "b")
    assert all(float(r["eig_1"]) > 0 for r in rows(tmp_path / "a"))
