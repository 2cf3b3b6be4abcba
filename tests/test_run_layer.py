"""The run layer itself: the loop, the run directory and the checkpoint format."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from torch import nn

from spectorch import checks
from spectorch.train import (
    BatchStream,
    EarlyStopping,
    Every,
    Loop,
    RunDirectory,
    SettingsMismatch,
    load_checkpoint,
    save_checkpoint,
    settings_differences,
)

# -- the loop ------------------------------------------------------------------------------


def _problem(seed: int = 0):
    """A model with dropout (so the RNG matters), Adam and a LambdaLR schedule; every
    step draws a fresh random batch from torch's global generator."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 8), nn.Dropout(0.3), nn.Linear(8, 1))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1 + 0.1 * t))

    def step(t: int) -> float:
        x = torch.randn(16, 3)
        y = x.sum(1, keepdim=True)
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
        return loss.item()

    return model, opt, sched, step


def _loop(tmp_path, steps, step, model, opt, sched, **kw):
    run = RunDirectory(tmp_path, {"lr": 0.05}, kind="test")
    return Loop(
        step,
        steps,
        state={"model": model, "optimizer": opt},
        run=run,
        schedulers=[sched],
        progress=False,
        seed=7,
        **kw,
    )


def test_interrupted_loop_resumes_to_the_uninterrupted_result_bit_for_bit(tmp_path):
    model_a, opt_a, sched_a, step_a = _problem()
    full = _loop(tmp_path / "a", 12, step_a, model_a, opt_a, sched_a, checkpoint_every=4).run()

    model_b, opt_b, sched_b, step_b = _problem()

    def dying(t: int) -> float:
        if t == 9:
            raise KeyboardInterrupt  # killed in the middle of the third stretch
        return step_b(t)

    with pytest.raises(KeyboardInterrupt):
        _loop(tmp_path / "b", 12, dying, model_b, opt_b, sched_b, checkpoint_every=4).run()
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["step"] == 8
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["checkpoint.pt", "settings.json"]

    model_c, opt_c, sched_c, step_c = _problem(seed=123)  # a new process: other weights
    torch.manual_seed(999)  # and another global generator state
    again = _loop(tmp_path / "b", 12, step_c, model_c, opt_c, sched_c, checkpoint_every=4).run()
    assert again.resumed_from == 8 and again.step == 12
    assert again.history["loss"] == full.history["loss"]  # bit for bit
    for p, q in zip(model_a.parameters(), model_c.parameters(), strict=True):
        assert torch.equal(p, q)
    assert opt_c.param_groups[0]["lr"] == opt_a.param_groups[0]["lr"]


def test_a_killed_process_resumes_to_the_uninterrupted_result(tmp_path):
    """SIGKILL, not an exception: whatever was on disk is what the next run finds."""
    script = tmp_path / "train.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys, time, torch
            from spectorch.train import Loop, RunDirectory
            out, steps, slow = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "slow"
            torch.manual_seed(0)
            model = torch.nn.Linear(4, 1)
            opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
            def step(t):
                if slow and t >= 7:
                    time.sleep(60)  # killed here (step 6's loss confirmed checkpoint 6)
                x = torch.randn(8, 4)
                opt.zero_grad()
                loss = ((model(x)[:, 0] - x.sum(1)) ** 2).mean()
                loss.backward()
                opt.step()
                return loss.item()
            run = RunDirectory(out, {"lr": 0.1}, kind="demo")
            res = Loop(step, steps, state={"model": model, "optimizer": opt}, run=run,
                       checkpoint_every=3, progress=False, seed=1).run()
            print(repr(res.history["loss"]), model.weight.tolist())
            """
        )
    )
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    whole = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "a"), "10", "fast"],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "b"), "10", "slow"], env=env
    )
    ckpt = tmp_path / "b" / "checkpoint.pt"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if ckpt.exists() and load_checkpoint(ckpt)["step"] == 6:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert load_checkpoint(ckpt)["step"] == 6
    resumed = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "b"), "10", "fast"],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    assert resumed.stdout == whole.stdout


def test_nan_stops_with_the_last_checkpoint_intact(tmp_path):
    model, opt, sched, step = _problem()

    def poisoned(t: int) -> float:
        return float("nan") if t == 5 else step(t)

    loop = _loop(tmp_path, 10, poisoned, model, opt, sched, checkpoint_every=2)
    message = r"became nan at step 5 \(lower the learning rate\); the last checkpoint, "
    with pytest.raises(FloatingPointError, match=message):
        loop.run()
    saved = load_checkpoint(tmp_path / "checkpoint.pt")
    assert saved["step"] == 4 and len(saved["history"]["loss"]) == 4


def test_a_checkpoint_of_non_finite_weights_is_refused(tmp_path):
    w = nn.Linear(2, 1)
    opt = torch.optim.SGD(w.parameters(), lr=float("inf"))

    def step(t: int) -> float:
        opt.zero_grad()
        loss = w(torch.ones(1, 2)).square().sum()
        loss.backward()
        opt.step()  # the loss was finite; the weights are not any more
        return loss.item()

    run = RunDirectory(tmp_path, kind="test")
    state = {"model": w, "optimizer": opt}
    loop = Loop(step, 4, state=state, run=run, checkpoint_every=1, progress=False)
    with pytest.raises(FloatingPointError, match="non-finite at step 1"):
        loop.run()
    assert run.latest_checkpoint() is None


def test_a_non_finite_gradient_stops_before_the_weights_change(tmp_path):
    from spectorch.train import fit

    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    x = torch.ones(2, 1)

    def sqrt_loss(net: nn.Module, batch) -> torch.Tensor:
        return net(batch[0]).abs().sqrt().mean()  # 0 at w = 0, with a NaN gradient there

    with pytest.raises(FloatingPointError, match="gradient became non-finite in epoch 0"):
        fit(model, None, [(x, x)], epochs=2, compute_loss=sqrt_loss, progress=False,
            checkpoint=tmp_path / "last.pt")  # fmt: skip
    assert model.weight.item() == 0.0 and not (tmp_path / "last.pt").exists()


def test_every_early_stopping_and_time_budget(tmp_path):
    calls = []
    losses = [5.0, 4.0, 4.5, 4.2, 4.1, 3.0]
    stopper = EarlyStopping("loss", patience=3)
    loop = Loop(
        lambda t: losses[t],
        6,
        run=RunDirectory(tmp_path, kind="test"),
        callbacks=[Every(2, lambda lp: calls.append(lp.step)), stopper],
        progress=False,
    )
    result = loop.run()
    assert result.stopped == "early stopping" and result.step == 5  # 4.0 at step 2, then 3 worse
    assert calls == [2, 4, 5]  # every 2 steps, and once at the end
    again = Loop(
        lambda t: losses[t],
        6,
        run=RunDirectory(tmp_path, kind="test"),
        callbacks=[EarlyStopping("loss", patience=3)],
        progress=False,
    ).run()
    assert again.step == 5 and again.stopped == "early stopping"  # the waiting was saved
    budget = Loop(lambda t: 1.0, 100, time_budget=0.0, progress=False).run()
    assert budget.step == 1 and budget.stopped == "time budget"


def test_batch_stream_resumes_mid_epoch():
    from spectorch.data import Batches

    data = Batches(torch.arange(10.0)[:, None], torch.arange(10), 3, shuffle=True, seed=4)
    ordered = BatchStream(data)
    seen = [ordered(t)[1].tolist() for t in range(9)]
    jumped = BatchStream(data)
    assert jumped(6)[1].tolist() == seen[6] and jumped(7)[1].tolist() == seen[7]
    assert sorted(i for batch in seen[:4] for i in batch) == list(range(10))  # one epoch


# -- the run directory ---------------------------------------------------------------------


def test_other_settings_are_refused_naming_every_key(tmp_path):
    RunDirectory(
        tmp_path, {"lr": 0.1, "fit": {"clip": 0.0, "epochs": 3}, "old": 1}, kind="x"
    ).open()
    wanted = {"lr": 0.2, "fit": {"clip": 1.0, "epochs": 5}, "new": 2}
    with pytest.raises(SettingsMismatch) as info:
        RunDirectory(tmp_path, wanted, kind="x", ignore=("fit.epochs",)).open()
    message = str(info.value)
    for part in (
        "fit.clip: 0.0 there, 1.0 now",
        "lr: 0.1 there, 0.2 now",
        "new: not set there, 2 now",
        "old: 1 there, not set now",
    ):
        assert part in message
    assert "epochs" not in message
    # an ignored key is brought up to date, the others are written once
    same = {"lr": 0.1, "fit": {"clip": 0.0, "epochs": 9}, "old": 1}
    RunDirectory(tmp_path, same, kind="x", ignore=("fit.epochs",)).open()
    assert json.loads((tmp_path / "settings.json").read_text())["fit"]["epochs"] == 9
    assert settings_differences({"a": (1, 2)}, {"a": [1, 2]}) == []  # as JSON keeps them
    assert settings_differences({"a": 1, "b": 2}, {"a": 1, "b": 3}, only=["a"]) == []


def test_a_checkpoint_of_another_run_or_kind_is_refused(tmp_path):
    run = RunDirectory(tmp_path, {"seed": 0}, kind="cifar", settings_file=None)
    run.save_checkpoint(3, state={})
    with pytest.raises(SettingsMismatch, match=r"checkpoint\.pt holds a run .*seed: 0 there, 1"):
        RunDirectory(tmp_path, {"seed": 1}, kind="cifar", settings_file=None).load_checkpoint()
    with pytest.raises(ValueError, match="is a spectorch 'cifar' checkpoint, not a 'fit' one"):
        load_checkpoint(tmp_path / "checkpoint.pt", kind="fit")


def test_results_are_atomic_and_readable_by_others(tmp_path):
    old = os.umask(0o022)
    try:
        run = RunDirectory(tmp_path / "run", kind="x")
        path = run.write_json("result.json", {"a": 1})
        run.save_checkpoint(0, state={})
    finally:
        os.umask(old)
    for p in (path, tmp_path / "run" / "checkpoint.pt"):
        assert stat.S_IMODE(p.stat().st_mode) == 0o644
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoint.pt", "result.json"]


# -- the checkpoint format -----------------------------------------------------------------


def test_version_1_checkpoints_load_and_resume(tmp_path):
    """spectorch 0.1 wrote one format per capability; they still load, and a fit
    resumes from one."""
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    v1 = {
        "format": "spectorch.fit/1",
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": None,
        "ema": None,
        "rng": torch.get_rng_state(),
        "losses": [1.0, 0.5],
        "val_losses": [],
        "best_loss": 0.5,
        "best_epoch": 2,
        "waited": 0,
        "epoch": 2,
    }
    torch.save(v1, tmp_path / "last.pt")
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["version"] == 2 and state["kind"] == "fit" and state["step"] == 2
    assert state["history"]["loss"] == [1.0, 0.5]
    from spectorch.train import fit

    x = torch.ones(4, 2)
    result = fit(
        model,
        nn.MSELoss(),
        [(x, x[:, :1])],
        epochs=3,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
        checkpoint=tmp_path / "last.pt",
        progress=False,
    )
    assert result.resumed_from == 2 and result.epochs == 3 and result.losses[:2] == [1.0, 0.5]
    torch.save(
        {"format": "spectorch.cifar/1", "model": {}, "optimizer": {}, "rng": torch.get_rng_state(),
         "step": 4, "config": {"steps": 8}, "losses": [2.0] * 4},
        tmp_path / "step_0000004.pt",
    )  # fmt: skip
    cifar = load_checkpoint(tmp_path / "step_0000004.pt", kind="cifar")
    assert cifar["settings"] == {"steps": 8} and cifar["history"]["loss"] == [2.0] * 4
    torch.save({"format": "spectorch.fit.best/1", "model": {}, "epoch": 2, "loss": 0.5},
               tmp_path / "best.pt")  # fmt: skip
    from spectorch.train import load_best

    assert load_best(tmp_path / "best.pt") == {"model": {}, "epoch": 2, "loss": 0.5}


def test_unknown_newer_unsafe_and_damaged_checkpoints_are_named(tmp_path):
    save_checkpoint(tmp_path / "new.pt", kind="x", step=0, state={})
    raw = torch.load(tmp_path / "new.pt", weights_only=True)
    torch.save({**raw, "version": 3}, tmp_path / "newer.pt")
    with pytest.raises(ValueError, match="version 3, written by a newer spectorch"):
        load_checkpoint(tmp_path / "newer.pt")
    torch.save({"format": "something/9"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a spectorch checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    torch.save({"format": "spectorch.checkpoint", "version": 2, "evil": _Unsafe()},
               tmp_path / "unsafe.pt")  # fmt: skip
    with pytest.raises(ValueError, match="refuses to rebuild") as info:
        load_checkpoint(tmp_path / "unsafe.pt")
    assert "weights_only=False" not in str(info.value)
    (tmp_path / "short.pt").write_bytes((tmp_path / "new.pt").read_bytes()[:100])
    with pytest.raises(ValueError, match=r"short\.pt is corrupt or truncated"):
        load_checkpoint(tmp_path / "short.pt")


class _Unsafe:
    pass


# -- argument checks -----------------------------------------------------------------------


def test_checks_share_one_message_style():
    assert checks.positive_int("n", 3) == 3
    for call, message in (
        (lambda: checks.positive_int("steps", 0), "steps must be a positive int, got 0"),
        (lambda: checks.positive_int("steps", True), "steps must be a positive int, got True"),
        (lambda: checks.nonnegative_int("seed", -5), "seed must be a non-negative int, got -5"),
        (lambda: checks.int_at_least("size", 3, 8), "size must be an int >= 8, got 3"),
        (lambda: checks.int_in("k", 3, 1, 2), r"k must be an int in \[1, 2\], got 3"),
        (lambda: checks.positive("lr", 0.0), "lr must be a positive finite number, got 0.0"),
        (lambda: checks.probability("p", 1.0, one=False), r"p must lie in \[0, 1\), got 1.0"),
        (lambda: checks.finite("shift", float("inf")), "shift must be a finite number"),
        (lambda: checks.choice("which", "top", ("smallest", "largest")),
         r"which must be one of \['largest', 'smallest'\], got 'top'"),
    ):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            call()


# -- the command line reads the experiments' configs ---------------------------------------


@pytest.mark.parametrize(
    ("argv", "config"),
    [
        (["spin", "hydrogen"], "hydrogen.HydrogenConfig"),
        (["spin", "kernel"], "kernel.KernelConfig"),
        (["spin", "atari", "train", "--data", "x.npz"], "atari.AtariConfig"),
        (["cifar", "train", "--train-data", "x", "--out", "o"], "cifar.CifarConfig"),
        (["rim", "train"], "rim.RimConfig"),
        (["tour"], "tour.TourConfig"),
    ],
)
def test_every_option_default_is_the_configs(argv, config):
    """Each experiment's options come from its config's fields: same names, same
    defaults (written once, in the dataclass), and the parsed options rebuild it."""
    import dataclasses
    import importlib

    from spectorch.cli import _config, build_parser

    module, name = config.split(".")
    cls = getattr(importlib.import_module(f"spectorch.experiments.{module}"), name)
    args = build_parser().parse_args(argv)
    options = [f for f in dataclasses.fields(cls) if f.metadata.get("cli", True)]
    assert options
    for f in options:
        assert getattr(args, f.name) == f.default, f.name
    assert _config(cls, args) == cls()
