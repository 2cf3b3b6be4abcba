"""IDX files, the format of MNIST and Fashion-MNIST (``train-images-idx3-ubyte[.gz]``...).

An IDX file is a 4-byte magic number ``0 0 <type> <ndim>``, ``ndim`` big-endian
``int32`` dimensions, then the data, big-endian, in C order. Types: ``0x08`` uint8,
``0x09`` int8, ``0x0B`` int16, ``0x0C`` int32, ``0x0D`` float32, ``0x0E`` float64.
Files ending in ``.gz`` are read and written gzip-compressed (as distributed).
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from spectorch import checks
from spectorch._io import atomic_path

__all__ = ["load_mnist", "read_idx", "write_idx"]

_TYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {np.dtype(v).newbyteorder("=").str: k for k, v in _TYPES.items()}

_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise FileNotFoundError(f"IDX file {path} does not exist")
    if path.suffix == ".gz":
        try:
            with gzip.open(path, "rb") as fh:
                return fh.read()
        except (OSError, EOFError) as exc:
            raise ValueError(f"{path}: not a readable gzip file ({exc})") from exc
    return path.read_bytes()


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (optionally ``.gz``) into a native-endian numpy array.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: naming the file, for a bad magic number, an unknown type code or a
            size that does not match the header.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(
            f"{path}: not an IDX file (the magic number must start with two zero bytes)"
        )
    code, ndim = raw[2], raw[3]
    if code not in _TYPES:
        raise ValueError(
            f"{path}: unknown IDX type code 0x{code:02X}; expected one of "
            + ", ".join(f"0x{c:02X}" for c in _TYPES)
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated header ({len(raw)} bytes for {ndim} dimensions)")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    dtype = _TYPES[code]
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(
            f"{path}: {len(raw)} bytes, but the header {dims} of {dtype.name} needs {expected}"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return data.astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write ``array`` as an IDX file (gzip-compressed if ``path`` ends in ``.gz``),
    atomically.

    Raises:
        ValueError: for a dtype IDX cannot hold or more than 255 dimensions.
    """
    array = np.asarray(array)
    key = array.dtype.newbyteorder("=").str
    if key not in _CODES:
        raise ValueError(
            f"array: IDX holds uint8, int8, int16, int32, float32 or float64, got {array.dtype}"
        )
    if array.ndim > 255:
        raise ValueError(f"array: IDX holds at most 255 dimensions, got {array.ndim}")
    code = _CODES[key]
    body = (
        bytes([0, 0, code, array.ndim])
        + np.asarray(array.shape, dtype=">i4").tobytes()
        + np.ascontiguousarray(array, dtype=_TYPES[code]).tobytes()
    )
    path = Path(path)
    with atomic_path(path) as fh:
        if path.suffix == ".gz":
            with gzip.GzipFile(fileobj=fh, mode="wb", mtime=0) as gz:
                gz.write(body)
        else:
            fh.write(body)
    return path


def _find(directory: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(
        f"{directory}: no {stem} or {stem}.gz (MNIST / Fashion-MNIST file names expected)"
    )


def load_mnist(directory: str | os.PathLike, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Images (``n x 28 x 28`` uint8) and labels (``n`` uint8) of MNIST or Fashion-MNIST
    from the four standard IDX files (plain or ``.gz``) in ``directory``.

    Raises:
        ValueError: for another ``split``, or images and labels that do not match.
        FileNotFoundError: naming the missing file.
    """
    checks.choice("split", split, _MNIST_FILES)
    directory = Path(directory)
    images_file, labels_file = (_find(directory, s) for s in _MNIST_FILES[split])
    images, labels = read_idx(images_file), read_idx(labels_file)
    if images.ndim != 3 or labels.ndim != 1:
        raise ValueError(
            f"{images_file} / {labels_file}: expected n x rows x cols images and n labels, "
            f"got shapes {images.shape} and {labels.shape}"
        )
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{images_file} has {images.shape[0]} images but {labels_file} has "
            f"{labels.shape[0]} labels"
        )
    return images, labels
