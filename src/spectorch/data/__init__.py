"""Real data readers and batching: the bundled 8x8 digits, CIFAR-10 binary batches,
MNIST / Fashion-MNIST IDX files, the standard library's source as byte-level text,
Atari play collected with ale-py (the SpIN paper's .npz format) and synthetic video,
and in-memory batches."""

from spectorch.data._atari import (
    FRAME_SIZE,
    STACK,
    WindowReader,
    ball_slowness,
    ball_video,
    check_game,
    collect,
    games,
    load_frames,
    save_frames,
)
from spectorch.data._batches import Batches
from spectorch.data._cifar import (
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    CifarBatches,
    read_cifar10,
    synthetic_cifar10,
    write_cifar10,
)
from spectorch.data._digits import load_digits
from spectorch.data._idx import load_mnist, read_idx, write_idx
from spectorch.data._text import byte_tokens, python_source, text_windows

__all__ = [
    # Atari play and video
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
    # images
    "CIFAR10_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "Batches",
    "CifarBatches",
    "load_digits",
    "load_mnist",
    "read_idx",
    "read_cifar10",
    "synthetic_cifar10",
    "write_cifar10",
    "write_idx",
    # text
    "byte_tokens",
    "python_source",
    "text_windows",
]
