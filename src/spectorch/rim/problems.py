"""Linear-Gaussian inverse problems, their datasets, and the classical baselines.

Every problem here is ``y = A vec(x) + σ ε`` with a dense ``A`` (a blur or random
projections), images ``x`` of shape ``(1, H, W)`` in [0, 1], and ``ε ~ N(0, I)``:

* :func:`digits_deblur`: scikit-learn's 8x8 digits, 5x5 Gaussian blur, σ = 0.05;
* :func:`digits_compressed_sensing`: the same digits, 32 Gaussian random
  projections, σ = 0.05;
* :func:`patches_deblur`: 32x32 grayscale patches cut from the sample images that
  ship with scikit-image, 5x5 Gaussian blur, σ = 0.05; training and test patches
  come from different photographs.

The baselines are the closed-form Tikhonov and LMMSE (Wiener) estimators and
gradient-ascent MAP under the training set's Gaussian prior.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "TASKS",
    "FeedForward",
    "LMMSE",
    "InverseProblemDataset",
    "LinearGaussian",
    "Task",
    "blur_matrix",
    "digits_compressed_sensing",
    "digits_deblur",
    "load_task",
    "make_task",
    "patches_deblur",
    "psnr",
    "sample_patches",
]


def blur_matrix(shape: Sequence[int], size: int = 5, width: float = 1.0) -> torch.Tensor:
    """The matrix of a ``size`` x ``size`` Gaussian blur (standard deviation ``width``
    pixels, weights summing to one) on images of ``shape`` (H, W), zero outside."""
    if size % 2 != 1 or size < 1:
        raise ValueError(f"size must be a positive odd int, got {size!r}")
    if not width > 0:
        raise ValueError(f"width must be positive, got {width!r}")
    h, w = (int(s) for s in shape)
    r = torch.arange(size, dtype=torch.float64) - size // 2
    g = torch.exp(-0.5 * (r / width) ** 2)
    kernel = torch.outer(g, g)
    kernel = kernel / kernel.sum()
    basis = torch.eye(h * w, dtype=torch.float64).reshape(h * w, 1, h, w)
    cols = torch.nn.functional.conv2d(basis, kernel[None, None], padding=size // 2)
    return cols.reshape(h * w, h * w).T.contiguous()


class LinearGaussian:
    """``y = A vec(x) + sigma * ε`` for ``x`` of shape ``(B, *shape)``.

    Args:
        matrix: ``A``, shape ``(m, prod(shape))``.
        sigma: noise standard deviation.
        shape: shape of one x, e.g. ``(1, 8, 8)``.
    """

    def __init__(self, matrix: torch.Tensor, sigma: float, shape: Sequence[int]):
        self.shape = tuple(int(s) for s in shape)
        n = math.prod(self.shape)
        if matrix.ndim != 2 or matrix.shape[1] != n:
            raise ValueError(f"matrix must have shape (m, {n}), got {tuple(matrix.shape)}")
        if not sigma > 0:
            raise ValueError(f"sigma must be positive, got {sigma!r}")
        self.matrix, self.sigma = matrix, float(sigma)

    def _a(self, like: torch.Tensor) -> torch.Tensor:
        return self.matrix.to(like.device, like.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``A vec(x)``, shape ``(B, m)``."""
        return x.flatten(1) @ self._a(x).T

    def adjoint(self, r: torch.Tensor) -> torch.Tensor:
        """``Aᵀ r`` reshaped to x's shape."""
        return (r @ self._a(r)).reshape(-1, *self.shape)

    def observe(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A noisy observation of ``x``."""
        clean = self.forward(x)
        noise = torch.randn(clean.shape, generator=generator, dtype=clean.dtype)
        return clean + self.sigma * noise.to(clean.device)

    def score(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``∇_x log p(y | x) = Aᵀ (y - A x) / σ²``."""
        return self.adjoint(y - self.forward(x)) / self.sigma**2

    def log_likelihood(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``log p(y | x)`` up to a constant: ``-||y - A x||² / (2σ²)`` per example."""
        return -0.5 * (y - self.forward(x)).square().sum(-1) / self.sigma**2

    # -------------------------------------------------------------- baselines
    def tikhonov(self, y: torch.Tensor, lam: float) -> torch.Tensor:
        """``argmin ||y - A x||² + lam ||x||²`` in closed form."""
        a = self.matrix.to(torch.float64)
        n = a.shape[1]
        solve = torch.linalg.solve(a.T @ a + lam * torch.eye(n, dtype=a.dtype), a.T)
        return (y.to(torch.float64) @ solve.T).to(y.dtype).reshape(-1, *self.shape)

    def lmmse(self, y: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor) -> torch.Tensor:
        """The linear minimum-mean-square-error (Wiener) estimate under the prior
        moments ``mean``, ``cov``: ``μ + Σ Aᵀ (A Σ Aᵀ + σ² I)⁻¹ (y - A μ)``."""
        return self.lmmse_estimator(mean, cov)(y)

    def lmmse_estimator(self, mean: torch.Tensor, cov: torch.Tensor) -> LMMSE:
        """:meth:`lmmse` as a callable ``y -> x`` with its gain computed once."""
        a = self.matrix.to(torch.float64)
        mu, c = mean.to(torch.float64).flatten(), cov.to(torch.float64)
        gain = c @ a.T @ torch.linalg.inv(a @ c @ a.T + self.sigma**2 * torch.eye(a.shape[0]))
        return LMMSE(mu - (mu @ a.T) @ gain.T, gain, self.shape)

    def map_ascent(
        self,
        y: torch.Tensor,
        mean: torch.Tensor,
        cov: torch.Tensor,
        steps: int,
        ridge: float = 1e-3,
    ) -> torch.Tensor:
        """Gradient ascent on ``log p(y | x) + log N(x; μ, Σ + ridge·I)`` from ``μ``,
        ``steps`` steps of size ``1/L`` (L the largest curvature), the step that
        guarantees ascent. Converges to the LMMSE estimate with the ridged prior."""
        a = self.matrix.to(torch.float64)
        n = a.shape[1]
        mu = mean.to(torch.float64).flatten()
        precision = torch.linalg.inv(cov.to(torch.float64) + ridge * torch.eye(n))
        hessian = a.T @ a / self.sigma**2 + precision
        step = 1.0 / float(torch.linalg.eigvalsh(hessian)[-1])
        yy = y.to(torch.float64)
        x = mu.expand(y.shape[0], n).clone()
        for _ in range(steps):
            grad = (yy - x @ a.T) @ a / self.sigma**2 - (x - mu) @ precision
            x = x + step * grad
        return x.to(y.dtype).reshape(-1, *self.shape)


class LMMSE:
    """The affine estimate ``x = offset + gain y`` (see :meth:`LinearGaussian.lmmse`)."""

    def __init__(self, offset: torch.Tensor, gain: torch.Tensor, shape: Sequence[int]):
        self.offset, self.gain, self.shape = offset, gain, tuple(shape)

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        out = self.offset.to(y.device) + y.to(torch.float64) @ self.gain.T.to(y.device)
        return out.to(y.dtype).reshape(-1, *self.shape)


def psnr(estimate: torch.Tensor, truth: torch.Tensor, peak: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of every example (images in [0, peak])."""
    mse = (estimate.detach().double() - truth.double()).flatten(1).square().mean(1)
    return 10.0 * torch.log10(peak**2 / mse)


class InverseProblemDataset(torch.utils.data.Dataset):
    """Items ``(y, x)`` with ``y = problem.observe(x)``.

    With ``fresh_noise=True`` the noise of item ``i`` in epoch ``e`` is seeded by
    ``(seed, e, i)``, so every epoch sees new noise (the trainer calls
    :meth:`set_epoch`) while a resumed run sees the same; otherwise by
    ``(seed, i)``, fixed (what a validation or test set wants).
    """

    def __init__(
        self, x: torch.Tensor, problem: LinearGaussian, *, seed: int = 0, fresh_noise: bool = True
    ):
        if x.shape[1:] != problem.shape:
            raise ValueError(f"x must have shape (N, {problem.shape}), got {tuple(x.shape)}")
        self.x, self.problem, self.seed, self.fresh_noise = x, problem, int(seed), fresh_noise
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        key = (self.epoch, int(i)) if self.fresh_noise else (int(i),)
        state = np.random.SeedSequence(self.seed, spawn_key=key).generate_state(1)
        g = torch.Generator().manual_seed(int(state[0]))
        x = self.x[i]
        return self.problem.observe(x[None], g)[0], x

    def observations(self) -> torch.Tensor:
        """All ``y`` at the current epoch, stacked."""
        return torch.stack([self[i][0] for i in range(len(self))])


@dataclass
class Task:
    """One benchmark problem: the forward model and the train/validation/test images."""

    name: str
    problem: LinearGaussian
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    config: dict[str, Any] = field(default_factory=dict)

    def lmmse(self) -> LMMSE:
        """The LMMSE (Wiener) estimator from the training images' mean and covariance."""
        return self.problem.lmmse_estimator(*self.prior())

    @property
    def dimensions(self) -> tuple[int, ...]:
        return self.problem.shape[1:]

    def prior(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and covariance of the training images (float64)."""
        flat = self.train.flatten(1).double()
        return flat.mean(0), torch.cov(flat.T, correction=1)

    def datasets(self, seed: int = 0) -> tuple[InverseProblemDataset, ...]:
        """Training (fresh noise), validation and test (fixed noise) datasets."""
        return (
            InverseProblemDataset(self.train, self.problem, seed=seed),
            InverseProblemDataset(self.val, self.problem, seed=10_000 + seed, fresh_noise=False),
            InverseProblemDataset(self.test, self.problem, seed=20_000, fresh_noise=False),
        )


def _digits(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from spectorch.data import load_digits

    x, _ = load_digits(dtype=dtype)
    x = x.reshape(-1, 1, 8, 8)
    order = torch.as_tensor(np.random.default_rng(0).permutation(x.shape[0]))
    x = x[order]
    return x[:1200], x[1200:1400], x[1400:]


def digits_deblur(*, sigma: float = 0.05, dtype: torch.dtype = torch.float32) -> Task:
    """Task (a): 8x8 digits (1200 train / 200 validation / 397 test) under a 5x5
    Gaussian blur (width 1 pixel, zero boundary) with noise ``sigma``."""
    train, val, test = _digits(dtype)
    problem = LinearGaussian(blur_matrix((8, 8)).to(dtype), sigma, (1, 8, 8))
    return Task("digits-deblur", problem, train, val, test, {"sigma": sigma})


def digits_compressed_sensing(
    *, measurements: int = 32, sigma: float = 0.05, dtype: torch.dtype = torch.float32
) -> Task:
    """Task (b): 8x8 digits from ``measurements`` random projections with i.i.d.
    N(0, 1/measurements) entries (fixed seed 0), noise ``sigma``."""
    train, val, test = _digits(dtype)
    g = torch.Generator().manual_seed(0)
    a = torch.randn(measurements, 64, generator=g, dtype=torch.float64) / math.sqrt(measurements)
    problem = LinearGaussian(a.to(dtype), sigma, (1, 8, 8))
    return Task(
        "digits-cs", problem, train, val, test, {"sigma": sigma, "measurements": measurements}
    )


#: The scikit-image sample photographs the patches come from.
TRAIN_IMAGES = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "coins",
    "moon",
    "brick",
    "grass",
    "gravel",
    "immunohistochemistry",
)
TEST_IMAGES = ("camera", "clock")


def _gray(name: str) -> np.ndarray:
    try:
        import skimage.data
        from skimage.color import rgb2gray
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the patches task cuts its images from scikit-image's bundled samples: "
            "pip install 'spectorch[examples]'"
        ) from exc
    image = getattr(skimage.data, name)()
    if image.ndim == 3:
        image = rgb2gray(image[..., :3])
    image = np.asarray(image, dtype=np.float64)
    return image / 255.0 if image.max() > 1.0 else image


def sample_patches(
    names: Sequence[str], count: int, size: int = 32, *, seed: int = 0
) -> torch.Tensor:
    """``count`` random ``size`` x ``size`` grayscale patches in [0, 1], drawn
    evenly from the scikit-image sample images ``names``; shape ``(count, 1, size, size)``."""
    rng = np.random.default_rng(seed)
    images = [_gray(n) for n in names]
    out = np.empty((count, 1, size, size))
    for k in range(count):
        image = images[k % len(images)]
        i = rng.integers(0, image.shape[0] - size + 1)
        j = rng.integers(0, image.shape[1] - size + 1)
        out[k, 0] = image[i : i + size, j : j + size]
    return torch.as_tensor(out)


def patches_deblur(
    *,
    size: int = 32,
    n_train: int = 4000,
    n_val: int = 400,
    n_test: int = 400,
    sigma: float = 0.05,
    dtype: torch.dtype = torch.float32,
) -> Task:
    """Task (c): ``size`` x ``size`` patches from scikit-image's sample photographs
    (training and validation from :data:`TRAIN_IMAGES`, test from the unseen
    :data:`TEST_IMAGES`) under a 5x5 Gaussian blur (width 1 pixel) with noise ``sigma``."""
    train = sample_patches(TRAIN_IMAGES, n_train, size, seed=0).to(dtype)
    val = sample_patches(TRAIN_IMAGES, n_val, size, seed=1).to(dtype)
    test = sample_patches(TEST_IMAGES, n_test, size, seed=2).to(dtype)
    problem = LinearGaussian(blur_matrix((size, size)).to(dtype), sigma, (1, size, size))
    config = {"sigma": sigma, "size": size, "n_train": n_train, "n_val": n_val, "n_test": n_test}
    return Task("patches-deblur", problem, train, val, test, config)


TASKS = {
    "digits-deblur": digits_deblur,
    "digits-cs": digits_compressed_sensing,
    "patches-deblur": patches_deblur,
}


def make_task(name: str, **config: Any) -> Task:
    """The task called ``name`` (a key of :data:`TASKS`) with ``config``."""
    if name not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {name!r}")
    return TASKS[name](**config)


def load_task(spec: dict[str, Any]) -> Task:
    """Rebuild a task from ``{"name": ..., "config": {...}}`` (as the CLI saves it)."""
    return make_task(spec["name"], **spec.get("config", {}))


class FeedForward(nn.Module):
    """The feed-forward baseline: one pass of a backbone from a start ``x_0`` (by
    default the back-projection ``Aᵀy``; or any ``start(y)``, such as the LMMSE
    estimate), with no recurrence (a fresh zero state) and no gradient input (a zero
    score): ``x̂ = x_0 + model(x_0, 0, None)``."""

    def __init__(self, model: nn.Module, problem: LinearGaussian, start: Any = None):
        super().__init__()
        self.model, self.problem = model, problem
        self.start = start if start is not None else problem.adjoint

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        x0 = self.start(y)
        update, _ = self.model(x0, torch.zeros_like(x0), None)
        return x0 + update
