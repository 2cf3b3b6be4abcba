"""Slow features of video (spectorch.experiments.atari; the readers in spectorch.data):
reader, network, collector, training."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from spectorch.experiments import atari


def _episodes(lengths, size=4):
    n = sum(lengths)
    frames = (np.arange(n)[:, None, None] % 251).astype(np.uint8) * np.ones((1, size, size), "u1")
    starts = np.zeros(n, dtype=bool)
    starts[np.cumsum([0, *lengths[:-1]])] = True
    return frames, starts


def _crosses(window_frames, starts):
    """Whether frames ``window_frames`` (indices) cover an episode start after their first."""
    return bool(starts[window_frames[1:]].any())


def test_windows_are_consecutive_stacks_inside_one_episode():
    frames, starts = _episodes([7, 20, 5, 40, 13])
    reader = atari.WindowReader(frames, starts, batch_size=6, stack=3, seed=0)
    span = 6 + 3
    # every admissible start, and only those, is drawn from
    expected = [s for s in range(len(frames) - span + 1) if not starts[s + 1 : s + span].any()]
    assert reader.starts.tolist() == expected
    for _ in range(50):
        w = reader()
        assert w.shape == (7, 3, 4, 4) and w.dtype == torch.uint8
        ids = w[:, :, 0, 0].numpy().astype(int)  # frame i holds the value i
        first = ids[0, 0]
        np.testing.assert_array_equal(ids, first + np.arange(7)[:, None] + np.arange(3)[None, :])
        assert not _crosses(np.arange(first, first + span), starts)
    ends = reader.stack_ends()
    assert all(not starts[e - 2 : e + 1][1:].any() and e >= 2 for e in ends)


def test_reader_resumes_its_draws_and_refuses_short_episodes():
    frames, starts = _episodes([30, 30])
    a = atari.WindowReader(frames, starts, batch_size=8, seed=3)
    a()
    state = a.state_dict()
    nxt = [a() for _ in range(3)]
    b = atari.WindowReader(frames, starts, batch_size=8, seed=99)
    b.load_state_dict(state)
    for x in nxt:
        assert torch.equal(b(), x)
    with pytest.raises(ValueError, match=r"batch_size \+ stack = 34 frames .*longest has 30"):
        atari.WindowReader(frames, starts, batch_size=30)
    with pytest.raises(ValueError, match="episode_starts"):
        atari.WindowReader(frames, starts[:-1])
    with pytest.raises(ValueError, match="'frames' must be uint8"):
        atari.WindowReader(frames.astype(np.float32), starts)


def test_save_and_load_frames_round_trip(tmp_path):
    frames, starts = _episodes([10, 10])
    starts[0] = False  # the reader treats the first frame as a start anyway
    path = atari.save_frames(tmp_path / "f.npz", frames, starts, game="pong")
    got, got_starts = atari.load_frames(path)
    np.testing.assert_array_equal(got, frames)
    assert got_starts[0] and got_starts[10] and got_starts.sum() == 2
    np.savez(tmp_path / "bad.npz", frames=frames)
    with pytest.raises(ValueError, match="missing \\['episode_starts'\\]"):
        atari.load_frames(tmp_path / "bad.npz")
    with pytest.raises(FileNotFoundError, match="data: no such file"):
        atari.load_frames(tmp_path / "none.npz")


def test_network_prepends_a_constant_and_scales_uint8():
    torch.manual_seed(0)
    net = atari.AtariNetwork(4, size=36)
    x = torch.randint(0, 256, (3, 4, 36, 36), dtype=torch.uint8)
    u = net(x)
    assert u.shape == (3, 4)
    assert torch.equal(u[:, 0], torch.ones(3))
    torch.testing.assert_close(u, net(x.float() / 255))
    assert atari.AtariNetwork(5)(torch.zeros(2, 4, 84, 84)).shape == (2, 5)
    with pytest.raises(ValueError, match="at least 6 pixels"):
        atari.AtariNetwork(3, size=5)
    with pytest.raises(ValueError, match="neig"):
        atari.AtariNetwork(1)
    with pytest.raises(ValueError, match="x: expected stacks of shape"):
        net(torch.zeros(2, 3, 36, 36))


def test_network_is_the_originals_make_conv_network():
    """The original's network is make_conv_network with paddings VALID, SAME, SAME and
    fc_size [6400, 128, neig]: the same function on NHWC frames with TF's layouts."""
    from spectorch.spin.util import make_conv_network

    torch.manual_seed(0)
    net = atari.AtariNetwork(3, channels=8, hidden=16).double()
    assert net.features[-3].in_features == 8 * 10 * 10  # 84 -> 40 -> 20 -> 10
    convs = [m for m in net.features if isinstance(m, torch.nn.Conv2d)]
    fcs = [m for m in net.features if isinstance(m, torch.nn.Linear)]
    ws = [c.weight.permute(2, 3, 1, 0) for c in convs]  # OIHW -> HWIO
    # nn.Flatten reads NCHW, the original flattened NHWC: permute the first fc's inputs
    first = fcs[0].weight.reshape(16, 8, 10, 10).permute(2, 3, 1, 0).reshape(-1, 16)
    ws += [first, fcs[1].weight.T]
    bs = [c.bias for c in convs] + [f.bias for f in fcs]
    x = torch.rand(2, 4, 84, 84, dtype=torch.float64)
    expected = make_conv_network(
        x.permute(0, 2, 3, 1), [2, 2, 2], ["VALID", "SAME", "SAME"], ws, bs
    )
    torch.testing.assert_close(net(x), expected)


def test_ball_video_has_the_slowness_it_claims():
    video = atari.ball_video(60_000, episode_length=500, seed=1)
    x, y = video["positions"].T
    assert video["frames"].shape == (60_000, 36, 36) and video["episode_starts"].sum() == 120
    inside = ~video["episode_starts"][1:]
    for (kx, ky), f in {(1, 0): np.cos(np.pi * x), (0, 1): np.cos(np.pi * y)}.items():
        d = (f[1:] - f[:-1])[inside]
        measured = (d**2).mean() / f.var()
        assert measured == pytest.approx(atari.ball_slowness(kx, ky), rel=0.05)
    # the ball is drawn where the positions say (x along the columns)
    i = int(np.argmax(video["frames"][5].max(axis=0)))
    assert abs(i - (2.5 + x[5] * (36 - 1 - 5))) <= 1


def test_slowest_features_of_synthetic_video_are_learned(tmp_path):
    """The known slow signals cos(pi x), cos(pi y) of a ball in a box come out as the
    first two learned features (|r| >= 0.9), in that order, with about their exact
    slowness; a constant is the trivial one."""
    video = atari.ball_video(6000, seed=0)
    data = atari.save_frames(tmp_path / "ball.npz", video["frames"], video["episode_starts"])
    cfg = atari.AtariConfig(
        neig=3, niter=600, channels=16, hidden=32, stack=1, log_image_every=600,
        save_params_every=600,
    )  # fmt: skip
    result = atari.train_atari(tmp_path / "run", data, cfg, progress=False)
    assert result.steps == 600 and (tmp_path / "run" / "slow_features.png").exists()
    reader = atari.WindowReader(data, stack=1)
    ends = reader.stack_ends()[::3]
    f = result.network.eigenfunctions(reader.stacks(ends)).numpy()
    x, y = video["positions"][ends].T
    np.testing.assert_allclose(f[:, 0], f[0, 0])  # the constant
    r = [
        abs(np.corrcoef(f[:, i], s)[0, 1])
        for i, s in ((1, np.cos(np.pi * x)), (2, np.cos(np.pi * y)))
    ]
    assert min(r) >= 0.9, r
    lam = result.evaluation
    exact = [atari.ball_slowness(1, 0), atari.ball_slowness(0, 1)]
    assert abs(lam[0]) < 1e-8 and lam[1] < lam[2]
    for got, want in zip(lam[1:], exact, strict=True):
        assert 0.85 * want <= got <= 1.4 * want, (lam, exact)


def test_training_resumes_exactly(tmp_path):
    video = atari.ball_video(1500, episode_length=500, seed=2)
    data = atari.save_frames(tmp_path / "ball.npz", video["frames"], video["episode_starts"])
    cfg = atari.AtariConfig(
        neig=3, niter=6, batch_size=32, channels=4, hidden=8, stack=2, evaluation_stacks=64,
        log_image_every=3, save_params_every=3,
    )  # fmt: skip
    whole = atari.train_atari(tmp_path / "whole", data, cfg, progress=False)
    part = atari.train_atari(tmp_path / "part", data, cfg, progress=False, time_budget=0.0)
    assert part.steps == 1
    rest = atari.train_atari(tmp_path / "part", data, cfg, progress=False)
    assert rest.steps == 6
    for a, b in zip(whole.network.params, rest.network.params, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert json.loads((tmp_path / "part" / "result.json").read_text())["steps"] == 6
    other = atari.AtariConfig(**{**cfg.as_dict(), "batch_size": 16})
    with pytest.raises(ValueError, match="other settings \\(batch_size: "):
        atari.train_atari(tmp_path / "part", data, other, progress=False)
    # the learning rate may change (a run that diverged resumes with a lower one)
    lower = atari.AtariConfig(**{**cfg.as_dict(), "lr": 1e-4, "niter": 6})
    assert atari.train_atari(tmp_path / "part", data, lower, progress=False).resumed_from == 6


def test_bad_settings_name_the_argument():
    with pytest.raises(ValueError, match="neig"):
        atari.AtariConfig(neig=1)
    with pytest.raises(ValueError, match="decay"):
        atari.AtariConfig(decay=2.0)
    with pytest.raises(ValueError, match="lr"):
        atari.AtariConfig(lr=0)
    with pytest.raises(ValueError, match="steps"):
        atari.ball_video(10, steps=(0.1, -1))
    with pytest.raises(ValueError, match="radius"):
        atari.ball_video(10, radius=0)
    with pytest.raises(ValueError, match="stacks: expected a tensor of consecutive pairs"):
        atari.evaluate_slowness(None, torch.zeros(3, 1, 36, 36))


def test_collector_and_reader_on_a_real_game(tmp_path):
    pytest.importorskip("ale_py", reason="ale-py (the atari extra) is not installed")
    with pytest.raises(ValueError, match=r"valid names: .*space_invaders"):
        atari.collect("space_invaderz", 10, progress=False)
    with pytest.raises(ValueError, match="frames"):
        atari.collect("pong", 0, progress=False)
    path = tmp_path / "pong.npz"
    data = atari.collect("pong", 400, seed=1, out=path, progress=False)
    assert data["frames"].shape == (400, 84, 84) and data["frames"].dtype == np.uint8
    assert data["episode_starts"].dtype == np.bool_ and data["episode_starts"][0]
    assert data["frames"].std() > 0  # a real screen, not a blank
    again = atari.collect("pong", 400, seed=1, progress=False)
    np.testing.assert_array_equal(again["frames"], data["frames"])  # seeded
    frames, starts = atari.load_frames(path)
    np.testing.assert_array_equal(frames, data["frames"])
    np.testing.assert_array_equal(starts, data["episode_starts"])
    # space invaders: a random policy loses in a few hundred frames, so episodes end
    si = atari.collect("space_invaders", 900, seed=0, progress=False)
    assert si["episode_starts"].sum() >= 2
    reader = atari.WindowReader(si["frames"], si["episode_starts"], batch_size=64)
    for _ in range(30):
        w = reader().numpy()
        s = reader.last_start
        assert w.shape == (65, 4, 84, 84)
        idx = s + np.arange(65)[:, None] + np.arange(4)[None, :]
        np.testing.assert_array_equal(w, si["frames"][idx])
        assert not si["episode_starts"][s + 1 : s + 64 + 4].any()
