"""The sharpness tracker: right eigenvalues, warm starts, and a CSV that resumes with
the training run after a kill."""

from __future__ import annotations

import csv

import pytest
import torch
from torch import nn

from spectorch.curvature import (
    HessianOperator,
    SharpnessTracker,
    adam_preconditioner,
    adam_threshold,
    gd_threshold,
)
from spectorch.train import fit


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    g = torch.Generator().manual_seed(1)
    X = torch.randn(40, 4, generator=g, dtype=torch.float64)
    y = torch.arange(40) % 3
    return model, [(X, y)]


def _rows(path):
    with open(path) as fh:
        return [{k: v for k, v in r.items() if k != "cpu_seconds"} for r in csv.DictReader(fh)]


class _Kill(Exception):
    pass


class _KillAt:
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step(self, loop) -> None:
        if loop.step == self.step:
            raise _Kill


def test_tracker_matches_dense_eigenvalues_during_fit(tmp_path):
    model, data = _setup()
    H = HessianOperator(model, nn.CrossEntropyLoss(), data)
    seen = []

    class Dense:
        def on_step(self, loop):
            seen.append(torch.linalg.eigvalsh(H.to_dense()).flip(0)[:2])

    tracker = SharpnessTracker(H, k=2, path=tmp_path / "sharpness.csv", threshold=gd_threshold(0.5))
    fit(model, nn.CrossEntropyLoss(), data, epochs=3, lr=0.5, progress=False,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.5), callbacks=[tracker, Dense()])  # fmt: skip
    assert tracker.steps == [0, 1, 2, 3]  # the initial weights, then every epoch
    for row, dense in zip(tracker.rows[1:], seen, strict=True):
        assert [row["eig_1"], row["eig_2"]] == pytest.approx(dense.tolist(), rel=1e-9)
        assert row["converged"] == 1.0
    rows = _rows(tmp_path / "sharpness.csv")
    assert [int(r["step"]) for r in rows] == [0, 1, 2, 3]
    png = tracker.plot(tmp_path / "sharpness.png")
    assert png.stat().st_size > 1000


def test_warm_start_saves_products():
    model, data = _setup()
    H = HessianOperator(model, nn.CrossEntropyLoss(), data)
    warm = SharpnessTracker(H, k=1)
    warm.measure(0)
    second = warm.measure(1)  # same weights: the previous vector is the eigenvector
    cold = SharpnessTracker(H, k=1).measure(1)
    assert second["eig_1"] == pytest.approx(cold["eig_1"], rel=1e-9)
    assert second["products"] < cold["products"]


def test_kept_basis_changes_no_row_and_is_one_tensor():
    model, data = _setup()
    H = HessianOperator(model, nn.CrossEntropyLoss(), data)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    # densities every other measurement: 30 steps, more than the 22-vector basis of the
    # eigenpairs, and both share the kept rows
    kw = dict(k=2, density_every=2, density_steps=30)
    plain, kept = SharpnessTracker(H, **kw), SharpnessTracker(H, keep_basis=True, **kw)
    assert not plain.keep_basis  # off unless asked: the basis would be held all run
    pointers = set()
    for step in range(3):
        a, b = plain.measure(step), kept.measure(step)
        assert {k: v for k, v in a.items() if k != "cpu_seconds"} == {
            k: v for k, v in b.items() if k != "cpu_seconds"
        }
        assert torch.equal(plain.vectors, kept.vectors)
        assert sorted(plain.densities) == sorted(kept.densities) == [0, 2][: step // 2 + 1]
        for s_ in plain.densities:
            for x, y in zip(plain.densities[s_].nodes, kept.densities[s_].nodes, strict=True):
                assert (x == y).all()
        pointers.add(kept._workspace.data_ptr())
        assert plain._workspace is None
        opt.zero_grad()
        nn.CrossEntropyLoss()(model(data[0][0]), data[0][1]).backward()
        opt.step()
    assert len(pointers) == 1  # one basis for every measurement
    n = sum(p.numel() for p in model.parameters())
    assert tuple(kept._workspace.shape) == (30, n)  # the density's 30 rows
    # another operator of another size: a new basis of its size
    other, _ = _setup(1)
    other[2] = nn.Linear(8, 2).double()
    H2 = HessianOperator(other, nn.CrossEntropyLoss(), [(data[0][0], data[0][1] % 2)])
    kept.operator = H2
    row = kept.measure(3)
    dense = torch.linalg.eigvalsh(H2.to_dense()).flip(0)[:2]
    assert [row["eig_1"], row["eig_2"]] == pytest.approx(dense.tolist(), rel=1e-9)
    assert kept._workspace.shape[1] == H2.shape[0] != n


def test_csv_resumes_with_training_after_a_kill(tmp_path):
    def run(directory, kill=None, epochs=6):
        model, data = _setup()
        H = HessianOperator(model, nn.CrossEntropyLoss(), data)
        tracker = SharpnessTracker(H, k=2, path=directory / "sharpness.csv", trace_every=2,
                                   density_every=3, density_steps=10)  # fmt: skip
        extra = [_KillAt(kill)] if kill is not None else []
        fit(model, nn.CrossEntropyLoss(), data, epochs=epochs, progress=False,
            optimizer=lambda p: torch.optim.SGD(p, lr=0.3), checkpoint=directory / "ckpt.pt",
            callbacks=[tracker, *extra])  # fmt: skip
        return tracker

    whole = run(tmp_path / "whole")
    with pytest.raises(_Kill):
        run(tmp_path / "killed", kill=4)  # after the tracker wrote step 4, before its checkpoint
    assert [int(r["step"]) for r in _rows(tmp_path / "killed" / "sharpness.csv")][-1] == 4
    resumed = run(tmp_path / "killed")
    assert resumed.steps == whole.steps == list(range(7))
    assert _rows(tmp_path / "killed" / "sharpness.csv") == _rows(
        tmp_path / "whole" / "sharpness.csv"
    )
    assert "trace" in whole.rows[0] and "trace" not in whole.rows[1]
    # the densities (steps 0, 3, 6) resume with the rows
    assert sorted(resumed.densities) == sorted(whole.densities) == [0, 3, 6]
    dens = [(d / "sharpness_densities.json").read_text() for d in (tmp_path / "whole",
            tmp_path / "killed")]  # fmt: skip
    assert dens[0] == dens[1]


def test_density_every_m_measurements():
    from spectorch.density import spectral_density

    model, data = _setup()
    H = HessianOperator(model, nn.CrossEntropyLoss(), data)
    tracker = SharpnessTracker(H, density_every=2, density_steps=40, density_draws=2, seed=5)
    rows = [tracker.measure(s) for s in (0, 1, 2)]
    assert sorted(tracker.densities) == [0, 2]
    assert rows[1]["products"] < rows[0]["products"] - 70  # no density at step 1
    # the density of step 2 is spectral_density's with draws seeded by seed + step
    direct = spectral_density(H, steps=40, draws=2, seed=7, progress=False)
    for a, b in zip(tracker.densities[2].nodes, direct.nodes, strict=True):
        assert a == pytest.approx(b, rel=1e-12, abs=1e-14)
    # 40 steps on 67 dimensions: the top Ritz value is the sharpness
    assert tracker.densities[2].top_eigenvalues(1)[0] == pytest.approx(rows[2]["eig_1"], rel=1e-8)
    with pytest.raises(ValueError, match="density_every must be a positive int"):
        SharpnessTracker(H, density_every=0)


def test_preconditioned_sharpness_with_adam():
    model, data = _setup()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss = nn.CrossEntropyLoss()
    for _ in range(3):
        opt.zero_grad()
        loss(model(data[0][0]), data[0][1]).backward()
        opt.step()
    H = HessianOperator(model, loss, data)
    P = adam_preconditioner(opt, model.named_parameters())
    tracker = SharpnessTracker(H, precondition=lambda: P, threshold=adam_threshold(1e-2))
    row = tracker.measure(3)
    d = torch.cat([P[k].reshape(-1) for k in H.param_names])
    top = torch.linalg.eigvals(H.to_dense() / d[:, None]).real.max()
    assert row["eig_1"] == pytest.approx(top.item(), rel=1e-9)
    assert tracker.threshold == pytest.approx(38 / 1e-2)


def test_bad_tracker_arguments():
    model, data = _setup()
    H = HessianOperator(model, nn.CrossEntropyLoss(), data)
    with pytest.raises(ValueError, match="every must be a positive int"):
        SharpnessTracker(H, every=0)
    with pytest.raises(ValueError, match="threshold must be a positive"):
        SharpnessTracker(H, threshold=-1.0)
    with pytest.raises(TypeError, match="precondition must be callable"):
        SharpnessTracker(H, precondition=torch.ones(3))
    with pytest.raises(ValueError, match="lr must be a positive"):
        gd_threshold(0.0)
    with pytest.raises(TypeError, match="operator must be an operator"):
        SharpnessTracker(torch.eye(3))
    with pytest.raises(TypeError, match="keep_basis must be a bool"):
        SharpnessTracker(H, keep_basis="yes")


def test_kept_basis_holds_a_float32_networks_density_rows_in_float32():
    # a float32 network's density keeps float32 rows (basis="auto"): in the kept
    # float64 rows read as float32, half as many rows as steps, the same densities
    model, data = _setup()
    model = model.float()
    data = [(data[0][0].float(), data[0][1])]
    H = HessianOperator(model, nn.CrossEntropyLoss(), data)
    kw = dict(k=2, density_every=1, density_steps=60)
    plain, kept = SharpnessTracker(H, **kw), SharpnessTracker(H, keep_basis=True, **kw)
    for step in range(2):
        a, b = plain.measure(step), kept.measure(step)
        assert a["eig_1"] == b["eig_1"]
        for x, y in zip(plain.densities[step].nodes, kept.densities[step].nodes, strict=True):
            assert (x == y).all()
    n = sum(p.numel() for p in model.parameters())
    assert tuple(kept._workspace.shape) == (30, n)  # 60 float32 rows in 30 float64 ones
