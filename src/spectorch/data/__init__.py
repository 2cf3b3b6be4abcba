"""Real data readers and batching: the bundled 8x8 digits and in-memory batches."""

from spectorch.data._batches import Batches
from spectorch.data._digits import load_digits

__all__ = ["Batches", "load_digits"]
