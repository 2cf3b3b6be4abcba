"""CIFAR-10 in its binary format: a reader, a writer and batches with the standard
augmentation.

The binary version (``cifar-10-batches-bin``) holds records of 3,073 bytes: one label
byte (0-9), then 1,024 red, 1,024 green and 1,024 blue pixel bytes, row-major. Five
``data_batch_<i>.bin`` files of 10,000 records make the training set and
``test_batch.bin`` the test set. google/spectral-density's ``cifar_train.py`` reads
them through ``--train_data_path=<glob>``; so does :func:`read_cifar10`.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from spectorch import checks
from spectorch._io import atomic_path

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CifarBatches",
    "read_cifar10",
    "synthetic_cifar10",
    "write_cifar10",
]

RECORD_BYTES = 1 + 3 * 32 * 32
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
#: per-channel mean and standard deviation of the CIFAR-10 training images (in [0, 1])
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def read_cifar10(
    pattern: str | os.PathLike | Sequence[str | os.PathLike],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read CIFAR-10 binary batches.

    Args:
        pattern: a glob (``"cifar-10-batches-bin/data_batch_*.bin"``), a file, or a list
            of files; matched files are read in sorted order.

    Returns:
        ``(images, labels)``: uint8 ``(N, 3, 32, 32)`` and int64 ``(N,)``.

    Raises:
        FileNotFoundError: when the glob matches no file.
        ValueError: when a file's size is not a whole number of 3,073-byte records, or
            a label is not in 0-9; the message names the file.
    """
    if isinstance(pattern, (str, os.PathLike)):
        files = sorted(glob.glob(os.fspath(pattern)))
        if not files:
            raise FileNotFoundError(
                f"the CIFAR-10 glob {os.fspath(pattern)!r} matches no file; expected e.g. "
                "'cifar-10-batches-bin/data_batch_*.bin'"
            )
    else:
        files = [os.fspath(p) for p in pattern]
        if not files:
            raise FileNotFoundError("no CIFAR-10 file given")
    images, labels = [], []
    for f in files:
        if not os.path.isfile(f):
            raise FileNotFoundError(f"CIFAR-10 file {f} does not exist")
        size = os.path.getsize(f)
        if size == 0 or size % RECORD_BYTES:
            raise ValueError(
                f"{f} has {size} bytes, not a whole number of {RECORD_BYTES}-byte records "
                "(1 label byte + 3,072 pixel bytes): not a CIFAR-10 binary batch"
            )
        raw = np.fromfile(f, dtype=np.uint8).reshape(-1, RECORD_BYTES)
        bad = raw[:, 0] > 9
        if bad.any():
            first = int(np.argmax(bad))
            raise ValueError(
                f"{f}: record {first} has label {int(raw[first, 0])}, expected 0-9: not a "
                "CIFAR-10 binary batch (CIFAR-100's records have two label bytes)"
            )
        labels.append(raw[:, 0].astype(np.int64))
        images.append(raw[:, 1:].reshape(-1, 3, 32, 32))
    return torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels))


def write_cifar10(path: str | os.PathLike, images: torch.Tensor, labels: torch.Tensor) -> Path:
    """Write ``images`` (uint8 ``(N, 3, 32, 32)``) and ``labels`` (0-9) as a CIFAR-10
    binary batch, atomically.

    Raises:
        ValueError: on wrong shapes, dtypes or labels.
    """
    images, labels = torch.as_tensor(images), torch.as_tensor(labels)
    if images.dtype != torch.uint8 or images.ndim != 4 or tuple(images.shape[1:]) != (3, 32, 32):
        raise ValueError(
            f"images must be uint8 of shape (N, 3, 32, 32), got {images.dtype} "
            f"{tuple(images.shape)}"
        )
    if labels.shape != (images.shape[0],) or labels.min() < 0 or labels.max() > 9:
        raise ValueError("labels must be N integers in 0-9")
    records = np.empty((images.shape[0], RECORD_BYTES), dtype=np.uint8)
    records[:, 0] = labels.numpy().astype(np.uint8)
    records[:, 1:] = images.reshape(images.shape[0], -1).numpy()
    with atomic_path(path) as fh:
        fh.write(records.tobytes())
    return Path(path)


def synthetic_cifar10(n: int, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` learnable CIFAR-shaped images: each class is a colour and an oriented
    stripe pattern at a random phase, under pixel noise. For tests and demos where the
    real dataset is not at hand; written with :func:`write_cifar10` it goes through
    exactly the reader users run on the real files."""
    checks.positive_int("n", n)
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=g)
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    angle = labels.double() * (torch.pi / 10)
    freq = 0.25 + 0.05 * (labels % 3).double()
    phase = torch.rand(n, generator=g, dtype=torch.float64) * 2 * torch.pi
    proj = torch.cos(angle)[:, None, None] * xx + torch.sin(angle)[:, None, None] * yy
    stripes = torch.sin(freq[:, None, None] * proj + phase[:, None, None])
    palette = torch.rand(10, 3, generator=g, dtype=torch.float64) * 0.6 + 0.2
    img = palette[labels][:, :, None, None] + 0.15 * stripes[:, None]
    img = img + 0.3 * torch.randn(img.shape, generator=g, dtype=torch.float64)
    return (img.clamp(0, 1) * 255).round().to(torch.uint8), labels


class CifarBatches:
    """Mini-batches of CIFAR images as normalised float tensors, re-iterable.

    Training (``augment=True``, ``shuffle=True``): random crops of the image padded by 4
    black pixels and horizontal flips, a new order each epoch. The order and the
    augmentation of batch ``i`` of epoch ``e`` depend only on ``(seed, e, i)``, so a
    run resumed at any step sees what an uninterrupted run would have seen
    (:meth:`set_epoch`, :meth:`iter_from`). For Lanczos (the original's
    ``--train_mode=lanczos``): ``augment=False, shuffle=False``, fixed batches.

    Args:
        images: uint8 ``(N, 3, 32, 32)`` from :func:`read_cifar10`.
        labels: int64 ``(N,)``.
        batch_size: images per batch (the last may be smaller unless ``drop_last``).
        rank, world_size: keep only records ``rank::world_size`` (a disjoint shard).
        dtype: dtype of the image tensors.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        *,
        augment: bool = False,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if (
            images.dtype != torch.uint8
            or images.ndim != 4
            or tuple(images.shape[1:]) != (3, 32, 32)
        ):
            raise ValueError(
                f"images must be uint8 (N, 3, 32, 32), got {images.dtype} {tuple(images.shape)}"
            )
        if labels.shape != (images.shape[0],):
            raise ValueError(
                f"labels must have shape ({images.shape[0]},), got {tuple(labels.shape)}"
            )
        checks.positive_int("batch_size", batch_size)
        checks.positive_int("world_size", world_size)
        checks.int_in("rank", rank, 0, world_size - 1)
        self.images = images[rank::world_size]
        self.labels = labels[rank::world_size]
        if self.images.shape[0] == 0 or (drop_last and self.images.shape[0] < batch_size):
            raise ValueError(
                f"{images.shape[0]} images leave no full batch of {batch_size} for rank {rank} "
                f"of {world_size}"
            )
        self.batch_size, self.augment, self.shuffle = batch_size, augment, shuffle
        self.drop_last, self.seed, self.dtype = drop_last, seed, dtype
        self.epoch = 0
        self._mean = torch.tensor(CIFAR10_MEAN, dtype=dtype).view(1, 3, 1, 1)
        self._std = torch.tensor(CIFAR10_STD, dtype=dtype).view(1, 3, 1, 1)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n = self.images.shape[0]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.iter_from(0)

    def iter_from(self, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of the current epoch from batch ``start`` on."""
        order = self._order()
        for i in range(start, len(self)):
            yield self._batch(i, order)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if not 0 <= i < len(self):
            raise IndexError(f"batch index {i} out of range for {len(self)} batches")
        return self._batch(i, self._order())

    def _order(self) -> torch.Tensor | None:
        if not self.shuffle:
            return None
        g = torch.Generator().manual_seed(_seed(self.seed, self.epoch))
        return torch.randperm(self.images.shape[0], generator=g)

    def _batch(self, i: int, order: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = i * self.batch_size, (i + 1) * self.batch_size
        idx = slice(lo, hi) if order is None else order[lo:hi]
        x, y = self.images[idx], self.labels[idx]
        if self.augment:
            x = _crop_and_flip(x, torch.Generator().manual_seed(_seed(self.seed, self.epoch, i)))
        x = (x.to(self.dtype) / 255 - self._mean) / self._std
        return x, y


def _seed(*key: int) -> int:
    entropy, *spawn = key
    state = np.random.SeedSequence(entropy, spawn_key=tuple(spawn)).generate_state(2)
    return int(state[0]) << 31 ^ int(state[1])


def _crop_and_flip(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Random 32x32 crops of the images zero-padded by 4, then random horizontal flips."""
    b = x.shape[0]
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    oy = torch.randint(0, 9, (b,), generator=g)
    ox = torch.randint(0, 9, (b,), generator=g)
    flip = torch.rand(b, generator=g) < 0.5
    ar = torch.arange(32)
    rows = (oy[:, None] + ar)[:, None, :, None]
    cols = ox[:, None] + ar
    cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, None, :]
    bi = torch.arange(b)[:, None, None, None]
    ci = torch.arange(3)[None, :, None, None]
    return padded[bi, ci, rows, cols]
