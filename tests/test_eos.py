"""The edge-of-stability experiment: the phase measure, and a short resumable run."""

from __future__ import annotations

import csv
import json

import pytest

from spectorch.experiments import eos


def test_stable_phase_starts_at_the_first_upward_crossing():
    steps = [0, 5, 10, 15, 20, 25]
    # Adam-like: above the threshold at first, down, then up and hovering
    sharp = [9.0, 1.0, 1.5, 2.2, 1.9, 2.1]
    phase = eos.stable_phase(steps, sharp, 2.0)
    assert phase["first_crossing"] == 15 and phase["measurements"] == 3
    assert phase["mean_ratio"] == pytest.approx((2.2 + 1.9 + 2.1) / 3 / 2.0)
    never = eos.stable_phase(steps, [0.1] * 6, 2.0)
    assert never["first_crossing"] is None and never["max_ratio_before"] == pytest.approx(0.05)


def test_short_run_writes_its_files_and_resumes(tmp_path):
    cfg = eos.EosConfig(lrs=(3.0,), steps=30, every=5, samples=200, checkpoint_every=10)
    first = eos.run(tmp_path, cfg, progress=False)
    run = first["runs"][0]
    assert run["threshold"] == pytest.approx(2 / 3.0)
    with open(tmp_path / "lr_3" / "sharpness.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [0, 5, 10, 15, 20, 25, 30]
    assert (tmp_path / "sharpness.png").stat().st_size > 1000
    again = eos.run(tmp_path, cfg, progress=False)  # finished: resumes and changes nothing
    assert again["runs"][0]["mean_ratio"] == run["mean_ratio"]
    assert json.loads((tmp_path / "summary.json").read_text())["config"]["steps"] == 30


def test_samples_bound_is_the_training_split():
    from spectorch.data import load_digits

    assert load_digits(split="train")[0].shape[0] == eos.TRAIN_DIGITS
    with pytest.raises(ValueError, match=r"samples must be an int in \[10, 1438\]"):
        eos.EosConfig(samples=1439)


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="optimizer must be one of"):
        eos.EosConfig(optimizer="sgd")
    with pytest.raises(ValueError, match="lrs must be a positive"):
        eos.EosConfig(lrs=(0.0,))
