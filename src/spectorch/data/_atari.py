"""Atari game play as video, in the format of the SpIN paper's slow-feature experiment
(appendix C.3), and synthetic video with exactly known slow features.

* :func:`collect` plays a game with ale-py (which ships the ROMs; ``pip install
  'spectorch[atari]'``) under DQN's preprocessing and returns (or writes) the
  original's .npz format: ``frames`` (uint8, ``N x 84 x 84``) and ``episode_starts``
  (bool, ``N``); :func:`save_frames` / :func:`load_frames` write and read it;
* :class:`WindowReader` draws random windows of ``B + 1`` consecutive stacks that
  never cross an episode start, as the original's reader;
* :func:`ball_video` is a ball moving at random in a box, whose slow features are
  ``cos(k pi x) cos(l pi y)`` with the slowness :func:`ball_slowness` (after the
  paper's section 5.2).

>>> from spectorch.data import ball_video
>>> video = ball_video(2000)
>>> video["frames"].shape, video["frames"].dtype, int(video["episode_starts"].sum())
((2000, 36, 36), dtype('uint8'), 2)
"""

from __future__ import annotations

import itertools
import json
import os
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from spectorch import checks
from spectorch._io import atomic_path

__all__ = [
    "FRAME_SIZE",
    "STACK",
    "WindowReader",
    "ball_slowness",
    "ball_video",
    "check_game",
    "collect",
    "games",
    "load_frames",
    "save_frames",
]

FRAME_SIZE = 84
STACK = 4
_SCREEN_FRAMES_PER_EPISODE = 108_000  # ALE's usual cap: 30 minutes of play at 60 Hz


def _ale_py() -> Any:
    try:
        import ale_py
        import ale_py.roms
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "collecting Atari frames needs ale-py: pip install 'spectorch[atari]'"
        ) from err
    return ale_py


def games() -> list[str]:
    """The games ale-py knows (``montezuma_revenge``, ``space_invaders``, ...)."""
    return sorted(_ale_py().roms.get_all_rom_ids())


def check_game(game: str) -> str:
    """``game`` if ale-py knows it, else a ``ValueError`` listing the valid names."""
    names = games()
    if game not in names:
        raise ValueError(f"game: ale-py does not know {game!r}; valid names: {', '.join(names)}")
    return game


def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``(n_out, n_in)`` averaging over the bins of adaptive average pooling (torch's
    ``interpolate(mode="area")``): output ``i`` averages inputs
    ``floor(i n_in / n_out)`` to ``ceil((i + 1) n_in / n_out) - 1``."""
    m = np.zeros((n_out, n_in), dtype=np.float32)
    for i in range(n_out):
        a, b = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
        m[i, a:b] = 1.0 / (b - a)
    return m


def _resize(screen: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Area-average a grayscale screen with :func:`_area_matrix` ``rows`` and ``cols``."""
    out = rows @ screen.astype(np.float32) @ cols.T
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def collect(
    game: str,
    frames: int = 10_000,
    *,
    seed: int = 0,
    out: str | os.PathLike | None = None,
    sticky: float = 0.25,
    frame_skip: int = 4,
    size: int = FRAME_SIZE,
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Play ``game`` with a uniformly random policy and record ``frames`` observations.

    Each observation is DQN's: the agent acts every ``frame_skip`` screen frames, the
    observation is the pixelwise max of the last two screens (Atari sprites flicker),
    in grayscale, area-averaged to ``size x size``. Sticky actions (ALE's
    ``repeat_action_probability=sticky``) make play stochastic, as ALE v5 recommends.
    An episode ends at game over or after 108 000 screen frames; the next observation
    starts a new episode.

    Args:
        game: an ale-py game name (:func:`games`).
        frames: number of observations.
        seed: seeds ALE and the policy: the same seed gives the same frames.
        out: if given, also written there (atomically) by :func:`save_frames`.

    Returns:
        ``{"frames": uint8 (frames, size, size), "episode_starts": bool (frames,)}``.
    """
    frames = checks.int_at_least("frames", frames, 1)
    seed = checks.int_at_least("seed", seed, 0)
    frame_skip = checks.int_at_least("frame_skip", frame_skip, 1)
    size = checks.int_at_least("size", size, 8)
    checks.probability("sticky", sticky, one=False)
    check_game(game)
    ale_py = _ale_py()
    ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)
    ale = ale_py.ALEInterface()
    ale.setInt("random_seed", seed % 2**31)
    ale.setFloat("repeat_action_probability", float(sticky))
    ale.setInt("max_num_frames_per_episode", _SCREEN_FRAMES_PER_EPISODE)
    ale.loadROM(str(ale_py.roms.get_rom_path(game)))
    actions = ale.getMinimalActionSet()
    rng = np.random.default_rng(seed)
    h, w = ale.getScreenDims()
    screens = np.zeros((2, h, w), dtype=np.uint8)
    rows, cols = _area_matrix(h, size), _area_matrix(w, size)
    obs = np.empty((frames, size, size), dtype=np.uint8)
    starts = np.zeros(frames, dtype=bool)
    new_episode = True
    with tqdm(total=frames, desc=f"collect {game}", disable=not progress, unit="frame") as bar:
        for i in range(frames):
            if new_episode:
                ale.reset_game()
                ale.getScreenGrayscale(screens[1])
                screens[0] = screens[1]
                starts[i], new_episode = True, False
            else:
                action = actions[rng.integers(len(actions))]
                for k in range(frame_skip):
                    ale.act(action)
                    done = ale.game_over()
                    if k >= frame_skip - 2 or done:  # keep the last two screens
                        screens[0] = screens[1]
                        ale.getScreenGrayscale(screens[1])
                    if done:
                        break
            obs[i] = _resize(screens.max(axis=0), rows, cols)
            new_episode = bool(ale.game_over())
            bar.update(1)
    data = {"frames": obs, "episode_starts": starts}
    if out is not None:
        save_frames(out, data["frames"], data["episode_starts"], game=game)
    return data


def save_frames(
    path: str | os.PathLike, frames: Any, episode_starts: Any, *, game: str | None = None
) -> Path:
    """Write frames in the original's .npz format (atomically, compressed)."""
    frames, starts = _check_frames(np.asarray(frames), np.asarray(episode_starts), str(path))
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"path: expected a .npz file name, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    extra = {} if game is None else {"game": np.array(game)}
    with atomic_path(path) as fh:
        np.savez_compressed(fh, frames=frames, episode_starts=starts, **extra)
    return path


def _check_frames(frames: np.ndarray, starts: np.ndarray, where: str) -> tuple[np.ndarray, ...]:
    if frames.dtype != np.uint8 or frames.ndim != 3:
        raise ValueError(
            f"{where}: 'frames' must be uint8 of shape (N, H, W), "
            f"got {frames.dtype} {tuple(frames.shape)}"
        )
    if starts.dtype != np.bool_ or starts.shape != frames.shape[:1]:
        raise ValueError(
            f"{where}: 'episode_starts' must be bool of shape ({frames.shape[0]},), "
            f"got {starts.dtype} {tuple(starts.shape)}"
        )
    return frames, starts


def load_frames(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read an .npz of the original's format: ``(frames, episode_starts)``; the first
    frame always starts an episode."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data: no such file {str(path)!r}")
    try:
        with np.load(path, allow_pickle=False) as z:
            if not hasattr(z, "files"):
                raise ValueError(f"{path}: an .npy array, expected an .npz archive")
            missing = [k for k in ("frames", "episode_starts") if k not in z.files]
            if missing:
                raise ValueError(f"{path}: missing {missing}; the file holds {z.files}")
            frames, starts = _check_frames(z["frames"], z["episode_starts"], str(path))
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as exc:
        if isinstance(exc, ValueError) and str(path) in str(exc):
            raise  # already names the file
        raise ValueError(
            f"{path} is not a readable .npz of frames (truncated or damaged: {exc}); "
            "collect it again with `spectorch spin atari collect`"
        ) from None
    if len(frames) == 0:
        raise ValueError(f"{path}: holds no frames")
    starts = starts.copy()
    starts[0] = True
    return frames, starts


class WindowReader:
    """Random windows of ``batch_size + 1`` consecutive stacks of ``stack`` frames,
    none crossing an episode start, as uint8 ``(batch_size + 1, stack, H, W)``
    (:class:`AtariNetwork` scales them). Row ``i`` of a window starting at frame ``s``
    is frames ``s + i, ..., s + i + stack - 1``, so consecutive rows are consecutive
    time steps, which is what :class:`~spectorch.spin.SlownessOperator` compares.
    Reproducible and resumable (:meth:`state_dict`).

    Args:
        frames: uint8 ``(N, H, W)``, or a path to an .npz (:func:`load_frames`).
        episode_starts: bool ``(N,)`` (ignored when ``frames`` is a path).
    """

    def __init__(
        self,
        frames: Any,
        episode_starts: Any = None,
        *,
        batch_size: int = 128,
        stack: int = STACK,
        seed: int = 0,
    ) -> None:
        if isinstance(frames, (str, os.PathLike)):
            frames, episode_starts = load_frames(frames)
        elif episode_starts is None:
            raise ValueError("episode_starts: required when frames is an array")
        self.frames, starts = _check_frames(np.asarray(frames), np.asarray(episode_starts), "data")
        self.batch_size = checks.int_at_least("batch_size", batch_size, 1)
        self.stack = checks.int_at_least("stack", stack, 1)
        self.episode_starts = starts.copy()
        self.episode_starts[0] = True
        self._count = np.cumsum(self.episode_starts)  # starts in frames[0..t]
        span = self.batch_size + self.stack
        self.starts = self._clean(span)
        if len(self.starts) == 0:
            bounds = [*np.flatnonzero(self.episode_starts).tolist(), len(self.frames)]
            longest = max(b - a for a, b in itertools.pairwise(bounds))
            raise ValueError(
                f"data: no episode holds a window of batch_size + stack = {span} frames "
                f"(the longest has {longest}); collect more frames or lower batch_size"
            )
        self.generator = np.random.default_rng(int(seed))
        self.last_start: int | None = None

    def _clean(self, length: int) -> np.ndarray:
        """First frames ``s`` of the runs of ``length`` frames inside one episode."""
        n = len(self.frames)
        if length > n:
            return np.zeros(0, dtype=np.int64)
        s = np.arange(n - length + 1)
        return s[self._count[s + length - 1] == self._count[s]]

    def stack_ends(self) -> np.ndarray:
        """The frames that end a full stack inside one episode (for evaluation)."""
        return self._clean(self.stack) + self.stack - 1

    def stacks(self, ends: Any) -> Tensor:
        """uint8 stacks ``(len(ends), stack, H, W)`` ending at frames ``ends``."""
        ends = np.asarray(ends, dtype=np.int64)
        idx = ends[:, None] - self.stack + 1 + np.arange(self.stack)[None, :]
        if len(ends) and (idx.min() < 0 or idx.max() >= len(self.frames)):
            raise ValueError("ends: a stack reaches outside the frames")
        return torch.from_numpy(self.frames[idx])

    def __call__(self) -> Tensor:
        s = int(self.starts[self.generator.integers(len(self.starts))])
        self.last_start = s  # first frame of the window just drawn
        return self.stacks(s + self.stack - 1 + np.arange(self.batch_size + 1))

    def state_dict(self) -> dict[str, Any]:
        return {"generator": json.dumps(self.generator.bit_generator.state)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.generator.bit_generator.state = json.loads(state["generator"])


def ball_video(
    frames: int,
    *,
    size: int = 36,
    steps: tuple[float, float] = (0.1, 0.15),
    episode_length: int = 1000,
    radius: float = 1.5,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Video of a ball moving at random in a box and reflected by its walls (after the
    SpIN paper's section 5.2): its position ``(x, y)`` in ``[0, 1]^2`` takes Gaussian
    steps of standard deviation ``steps`` per frame, from a uniform random start in
    each episode of ``episode_length`` frames. Its slow features are known exactly: as
    functions of the position, the eigenfunctions of the slowness operator are
    ``cos(k pi x) cos(l pi y)`` with eigenvalue ``2 (1 - exp(-pi^2 (k^2 sx^2 + l^2
    sy^2) / 2))`` (:func:`ball_slowness`), so with ``sx < sy < 2 sx`` the slowest two
    are ``cos(pi x)`` then ``cos(pi y)``.

    Returns:
        ``{"frames": uint8 (frames, size, size), "episode_starts": bool (frames,),
        "positions": float64 (frames, 2)}``, positions as ``(x, y)``, ``y`` down the rows.
    """
    frames = checks.int_at_least("frames", frames, 1)
    size = checks.int_at_least("size", size, 4)
    episode_length = checks.int_at_least("episode_length", episode_length, 1)
    sigma = np.asarray(steps, dtype=np.float64)
    if sigma.shape != (2,) or not np.all(sigma > 0):
        raise ValueError(f"steps: expected two positive step sizes, got {steps!r}")
    if not (isinstance(radius, (int, float)) and radius > 0):
        raise ValueError(f"radius: expected a positive number of pixels, got {radius!r}")
    rng = np.random.default_rng(seed)
    t = np.arange(frames)
    first = (t % episode_length) == 0
    moves = rng.normal(size=(frames, 2)) * sigma
    moves[first] = rng.uniform(0, 2, size=(int(first.sum()), 2))
    # a free walk folded onto [0, 1] is the walk reflected by the walls
    free = np.cumsum(moves, axis=0)
    free -= np.repeat(free[first] - moves[first], np.diff(np.r_[np.flatnonzero(first), frames]), 0)
    pos = 1.0 - np.abs(np.mod(free, 2.0) - 1.0)
    margin = radius + 1.0
    centre = margin + pos * (size - 1 - 2 * margin)
    grid = np.arange(size, dtype=np.float64)
    gx = np.exp(-0.5 * ((grid[None, :] - centre[:, :1]) / radius) ** 2)
    gy = np.exp(-0.5 * ((grid[None, :] - centre[:, 1:]) / radius) ** 2)
    images = 255.0 * gy[:, :, None] * gx[:, None, :]
    return {"frames": np.round(images).astype(np.uint8), "episode_starts": first, "positions": pos}


def ball_slowness(kx: int, ky: int, steps: tuple[float, float] = (0.1, 0.15)) -> float:
    """The exact slowness ``E[(f_t - f_{t+1})^2] / Var f`` of ``f = cos(kx pi x)
    cos(ky pi y)`` in :func:`ball_video`'s walk: ``2 (1 - exp(-pi^2 (kx^2 sx^2 +
    ky^2 sy^2) / 2))``, since the phase of a folded Gaussian walk is uniform and its
    step Gaussian."""
    sx, sy = steps
    return float(2.0 * -np.expm1(-(np.pi**2) * (kx * kx * sx * sx + ky * ky * sy * sy) / 2.0))
