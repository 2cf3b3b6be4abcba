"""Re-iterable mini-batches over in-memory tensors, with a reproducible shuffle."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from spectorch import checks

__all__ = ["Batches"]


class Batches:
    """``(inputs, targets)`` mini-batches of two tensors, iterable again and again.

    With ``shuffle=True`` epoch ``e`` uses the permutation seeded by ``(seed, e)``, so a
    run resumed at epoch ``e`` (see :meth:`set_epoch`) sees the batches an
    uninterrupted run would have seen. Without shuffle the order is fixed, as
    curvature operators need.

    Args:
        inputs: tensor with the samples along its first dimension.
        targets: tensor with as many rows as ``inputs``.
        batch_size: samples per batch (the last batch may be smaller).
        shuffle: draw a new order every epoch.
        seed: seed of the shuffle.

    Raises:
        ValueError: on mismatched lengths or a batch size below one.
    """

    def __init__(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
    ) -> None:
        if not isinstance(inputs, torch.Tensor) or not isinstance(targets, torch.Tensor):
            raise TypeError("inputs and targets must be torch.Tensors")
        if inputs.shape[0] != targets.shape[0]:
            raise ValueError(
                f"inputs and targets must have the same number of samples, got "
                f"{inputs.shape[0]} and {targets.shape[0]}"
            )
        checks.positive_int("batch_size", batch_size)
        self.inputs, self.targets = inputs, targets
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffle of epoch ``epoch`` (as ``DistributedSampler.set_epoch``)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return -(-self.inputs.shape[0] // self.batch_size)

    def _order(self) -> torch.Tensor | None:
        if not self.shuffle:
            return None
        state = np.random.SeedSequence(self.seed, spawn_key=(self.epoch,)).generate_state(1)
        g = torch.Generator().manual_seed(int(state[0]))
        return torch.randperm(self.inputs.shape[0], generator=g)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self._order()
        for i in range(len(self)):
            yield self._batch(i, order)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``i`` of the current epoch (what sharding over ranks reads)."""
        if isinstance(i, bool) or not isinstance(i, int):
            raise TypeError(f"batch index must be an int, got {type(i).__name__}")
        if not -len(self) <= i < len(self):
            raise IndexError(f"batch index {i} out of range for {len(self)} batches")
        return self._batch(i % len(self), self._order())

    def _batch(self, i: int, order: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = i * self.batch_size, (i + 1) * self.batch_size
        if order is None:
            return self.inputs[lo:hi], self.targets[lo:hi]
        idx = order[lo:hi]
        return self.inputs[idx], self.targets[idx]
