"""Slow features of Atari game play: the SpIN paper's second experiment (appendix C.3).

The smallest eigenfunctions of :class:`~spectorch.spin.SlownessOperator`,
``E[(u_t - u_{t+1})(u_t - u_{t+1})^T]`` over consecutive 4-frame stacks, are the
slowest-varying features of the video. The original shipped its frames as .npz files
that are no longer available; :func:`collect` makes them again from the real games
(ale-py ships the ROMs; ``pip install 'spectorch[atari]'``), in the original's
format: ``frames`` (uint8, ``N x 84 x 84``) and ``episode_starts`` (bool, ``N``).

* :func:`collect` plays episodes with a random policy and sticky actions, preprocessed
  as DQN (every 4th frame, the max of the last two, grayscale, 84x84);
* :class:`WindowReader` draws random windows of ``B + 1`` consecutive stacks that never
  cross an episode start, as the original's reader;
* :class:`AtariNetwork` is the original's network with a constant feature prepended;
* :func:`train_atari` trains it with :class:`~spectorch.spin.SpectralNetwork`,
  resumably, and draws the frames where each feature is lowest and highest;
* :func:`ball_video` is synthetic video whose slow features are known exactly (after
  the paper's section 5.2), to check the whole pipeline against an exact answer.

>>> from spectorch.spin import atari
>>> video = atari.ball_video(2000)
>>> video["frames"].shape, video["frames"].dtype, int(video["episode_starts"].sum())
((2000, 36, 36), dtype('uint8'), 2)
"""

from __future__ import annotations

import itertools
import json
import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from spectorch._io import atomic_path, atomic_write_json
from spectorch.spin import util
from spectorch.spin._network import SpectralNetwork, _can_show
from spectorch.spin._operators import SlownessOperator

__all__ = [
    "AtariConfig",
    "AtariNetwork",
    "AtariResult",
    "WindowReader",
    "ball_slowness",
    "ball_video",
    "check_game",
    "collect",
    "evaluate_slowness",
    "games",
    "load_frames",
    "save_frames",
    "train_atari",
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


def _check_int(name: str, value: Any, lowest: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lowest:
        raise ValueError(f"{name}: expected an int >= {lowest}, got {value!r}")
    return int(value)


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
    frames = _check_int("frames", frames, 1)
    seed = _check_int("seed", seed, 0)
    frame_skip = _check_int("frame_skip", frame_skip, 1)
    size = _check_int("size", size, 8)
    if not (isinstance(sticky, (int, float)) and 0.0 <= sticky < 1.0):
        raise ValueError(f"sticky: expected a probability in [0, 1), got {sticky!r}")
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
    with np.load(path, allow_pickle=False) as z:
        missing = [k for k in ("frames", "episode_starts") if k not in z.files]
        if missing:
            raise ValueError(f"{path}: missing {missing}; the file holds {z.files}")
        frames, starts = _check_frames(z["frames"], z["episode_starts"], str(path))
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
        self.batch_size = _check_int("batch_size", batch_size, 1)
        self.stack = _check_int("stack", stack, 1)
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


class AtariNetwork(nn.Module):
    """The original's network for 4-frame stacks: three 6x6 convolutions of stride 2
    with ``channels`` channels, a hidden layer of ``hidden`` units (ReLU throughout)
    and a linear read-out of ``neig - 1`` features, with a constant feature prepended.
    The constant is the trivial eigenfunction of the slowness operator (eigenvalue 0),
    so SpIN's ordered, Cholesky-whitened outputs hold it first and the learned
    features are centred and decorrelated from it by construction.

    uint8 inputs are scaled to ``[0, 1]``; float inputs are taken as they are.
    """

    def __init__(
        self,
        neig: int = 5,
        *,
        stack: int = STACK,
        size: int = FRAME_SIZE,
        channels: int = 64,
        hidden: int = 128,
    ) -> None:
        super().__init__()
        self.neig = _check_int("neig", neig, 2)
        self.stack = _check_int("stack", stack, 1)
        self.size = _check_int("size", size, 1)
        side = self.size
        for _ in range(3):
            side = (side - 6) // 2 + 1
            if side < 1:
                raise ValueError(
                    f"size: three 6x6 convolutions of stride 2 need frames of at least "
                    f"36 pixels, got {size}"
                )
        layers: list[nn.Module] = []
        c = self.stack
        for _ in range(3):
            layers += [nn.Conv2d(c, channels, 6, stride=2), nn.ReLU()]
            c = channels
        self.features = nn.Sequential(
            *layers,
            nn.Flatten(),
            nn.Linear(channels * side * side, hidden),
            nn.ReLU(),
            nn.Linear(hidden, self.neig - 1),
        )

    def forward(self, x: Tensor) -> Tensor:
        dtype = self.features[0].weight.dtype
        if x.dtype == torch.uint8:
            x = x.to(dtype) / 255.0
        if x.ndim != 4 or x.shape[1:] != (self.stack, self.size, self.size):
            raise ValueError(
                f"x: expected stacks of shape (n, {self.stack}, {self.size}, {self.size}), "
                f"got {tuple(x.shape)}"
            )
        f = self.features(x.to(dtype))
        return torch.cat([torch.ones_like(f[:, :1]), f], dim=1)


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
    frames = _check_int("frames", frames, 1)
    size = _check_int("size", size, 4)
    episode_length = _check_int("episode_length", episode_length, 1)
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


@dataclass
class AtariConfig:
    """Settings of a slow-feature run. The defaults are the original example's (neig 5,
    batch 128, lr 1e-3, centered RMSProp; 64 channels, 128 hidden units; ``neig``
    counts the constant feature) except ``decay``: the original averaged ``Sigma`` and
    its Jacobian over steps with weight 0.01, but at lr 1e-3 the features then shrink
    faster than the average follows and collapse (on :func:`ball_video`, 3 seeds of 3:
    ``|r| <= 0.25`` with the known slow signals, against ``>= 0.93`` with ``decay=0``;
    ``benchmarks/bench_slowness.py``), and the averaged Jacobian costs ``neig^2``
    backward passes a step (28x slower at neig 5 on 84x84 frames, CPU). ``decay=0``
    uses each window's own ``Sigma``; ``--decay 0.01`` restores the original.

    The objective is SpIN's: the constant feature relies on its scale-free,
    Cholesky-whitened loss (NeuralEF and NeuralSVD, whose losses set each feature's
    scale, reached only ``|r|`` 0.3-0.6 on :func:`ball_video` with it)."""

    neig: int = 5
    niter: int = 20_000
    batch_size: int = 128
    lr: float = 1e-3
    decay: float = 0.0
    rmsprop_decay: float = 0.999
    channels: int = 64
    hidden: int = 128
    stack: int = STACK
    evaluation_stacks: int = 1024
    log_image_every: int = 1000
    save_params_every: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        _check_int("neig", self.neig, 2)
        for name in (
            "niter",
            "batch_size",
            "channels",
            "hidden",
            "stack",
            "evaluation_stacks",
            "log_image_every",
            "save_params_every",
        ):
            _check_int(name, getattr(self, name), 1)
        _check_int("seed", self.seed, 0)
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ValueError(f"lr: expected a positive number, got {self.lr!r}")
        for name in ("decay", "rmsprop_decay"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                raise ValueError(f"{name}: expected a number in [0, 1], got {value!r}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class AtariResult:
    """What a slow-feature run learned.

    Attributes:
        eigenvalues: the slowness of each learned feature (the constant first, 0),
            the moving average of the training estimates at the last step.
        evaluation: the same, measured on ``evaluation_stacks`` consecutive stacks
            spread over the data (Rayleigh-Ritz values of the learned span).
        steps, seconds: steps done and wall time of this call's training.
        figure: the figure of the frames where each feature is lowest and highest.
        network: the trained :class:`~spectorch.spin.SpectralNetwork`
            (``network.eigenfunctions(stacks)`` gives the features of new stacks).
    """

    eigenvalues: list[float]
    evaluation: list[float]
    steps: int
    seconds: float
    out: str
    figure: str
    stats: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    network: SpectralNetwork | None = field(default=None, repr=False)

    def summary(self) -> dict[str, Any]:
        skip = ("stats", "network")
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in skip}


def _evaluation_ends(reader: WindowReader, n: int, seed: int) -> np.ndarray:
    """``n`` stack ends in runs of consecutive pairs (``t, t + 1`` both valid), spread
    over the data: the first of each pair at even positions of the result."""
    ends = reader.stack_ends()
    pairs = ends[:-1][np.diff(ends) == 1]
    if len(pairs) == 0:
        raise ValueError("data: no two consecutive full stacks inside one episode")
    rng = np.random.default_rng(seed)
    first = np.sort(rng.choice(pairs, size=min(max(n // 2, 1), len(pairs)), replace=False))
    return np.stack([first, first + 1], axis=1).reshape(-1)


def evaluate_slowness(net: SpectralNetwork, stacks: Tensor) -> np.ndarray:
    """Slowness of the learned features on ``stacks`` arranged as consecutive pairs
    (rows ``2i`` and ``2i + 1``): the eigenvalues of ``Pi`` in the basis where the
    features are orthonormal (Rayleigh-Ritz), ascending."""
    if not isinstance(stacks, Tensor) or len(stacks) < 2 or len(stacks) % 2:
        got = tuple(stacks.shape) if isinstance(stacks, Tensor) else type(stacks).__name__
        raise ValueError(f"stacks: expected a tensor of consecutive pairs (even rows), got {got}")
    with torch.no_grad():
        u = torch.cat([net.network(s.to(net.device)) for s in stacks.split(256)])
    u = u.to(torch.float64).cpu()
    u = u / u.square().mean(0).sqrt().clamp_min(1e-300)  # the answer is scale-free; SpIN's
    sigma = u.T @ u / len(u)  # outputs drift in scale without the moving average
    d = u[0::2] - u[1::2]
    pi = d.T @ d / len(d)
    evals, vecs = torch.linalg.eigh(sigma)
    keep = evals > evals.max() * 1e-10
    w = vecs[:, keep] / evals[keep].sqrt()
    return torch.linalg.eigvalsh(w.T @ pi @ w).numpy()


def _figure_hook(out: Path, shown: Tensor, title: str) -> Any:
    from spectorch import plotting

    def update(t: int, outputs: np.ndarray, inputs: Any, *plots: Any, **stats: Any) -> None:
        plotting.plot_slow_features(
            outputs,
            shown.numpy(),
            stats["eigenvalues_ma"][: t + 1],
            out / "slow_features.png",
            title=f"{title}, step {t + 1}",
        )

    return {"create": lambda: (), "update": update}


def train_atari(
    out: str | os.PathLike,
    data: str | os.PathLike,
    config: AtariConfig | None = None,
    *,
    progress: bool = True,
    time_budget: float | None = None,
    device: str | torch.device = "cpu",
    show_plots: bool = False,
) -> AtariResult:
    """Learn the slowest features of the video in ``data`` (an .npz of the original's
    format), resumably.

    Writes into ``out``: ``config.json``, the checkpoint ``atari_params.pt`` (every
    ``save_params_every`` steps; a second call resumes from it), ``slow_features.png``
    (every ``log_image_every`` steps: for each learned feature the frames where it is
    lowest and highest over the evaluation stacks, and the eigenvalue curves) and
    ``result.json``.

    Raises:
        ValueError: bad data, or ``out`` holding a run with other settings.
    """
    cfg = config or AtariConfig()
    out = Path(out)
    data = Path(data)
    reader = WindowReader(data, batch_size=cfg.batch_size, stack=cfg.stack, seed=cfg.seed + 1)
    h, w = reader.frames.shape[1:]
    if h != w:
        raise ValueError(f"data: expected square frames, got {h}x{w}")
    torch.manual_seed(cfg.seed)
    network = AtariNetwork(
        cfg.neig, stack=cfg.stack, size=h, channels=cfg.channels, hidden=cfg.hidden
    )
    recorded = {**cfg.as_dict(), "data": str(data.resolve()), "frames": len(reader.frames)}
    out.mkdir(parents=True, exist_ok=True)
    cfg_file = out / "config.json"
    if cfg_file.exists():
        previous = json.loads(cfg_file.read_text())
        if previous != recorded:
            keys = set(previous) | set(recorded)
            changed = sorted(k for k in keys if previous.get(k) != recorded.get(k))
            raise ValueError(
                f"out: {out} holds a run with other settings ({', '.join(changed)}); "
                "use another folder"
            )
    atomic_write_json(cfg_file, recorded)
    dev = torch.device(device)
    network = network.to(dev)
    ends = _evaluation_ends(reader, cfg.evaluation_stacks, cfg.seed + 2)
    stacks = reader.stacks(ends)
    net = SpectralNetwork(SlownessOperator(), network, reader, decay=cfg.decay, objective="spin")
    optim = torch.optim.RMSprop(
        network.parameters(), lr=cfg.lr, alpha=cfg.rmsprop_decay, centered=True
    )
    game = data.stem
    logging_config = {
        "config": recorded,
        "log_image_every": cfg.log_image_every,
        "save_params_every": cfg.save_params_every,
        "saver_path": str(out),
        "saver_name": "atari_params",
    }
    shown = stacks[0::2, -1]  # the newest frame of each first-of-pair stack
    hooks = _figure_hook(out, shown, f"{game}, SpIN")
    t0 = time.monotonic()
    stats = net.train(
        optim,
        cfg.niter,
        logging_config,
        {"create": util.create_default_stats, "update": util.update_default_stats},
        plotting_hooks=hooks,
        show_plots=show_plots and _can_show(),
        data_for_plotting=stacks[0::2],
        progress=progress,
        time_budget=time_budget,
    )
    seconds = time.monotonic() - t0
    steps = net.step_count
    if net.step_seconds == 0.0 or not (out / "slow_features.png").exists():  # nothing trained
        features = net.eigenfunctions(stacks[0::2]).cpu().numpy()
        hooks["update"](steps - 1, features, None, **stats)
    result = AtariResult(
        eigenvalues=[float(v) for v in stats["eigenvalues_ma"][max(steps - 1, 0)]],
        evaluation=[float(v) for v in evaluate_slowness(net, stacks)],
        steps=steps,
        seconds=seconds,
        out=str(out),
        figure=str(out / "slow_features.png"),
        stats={k: v[:steps] for k, v in stats.items() if isinstance(v, np.ndarray)},
        network=net,
    )
    atomic_write_json(out / "result.json", result.summary())
    return result
