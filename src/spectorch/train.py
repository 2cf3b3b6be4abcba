"""The one small fit loop the library shares: progress bar, atomic checkpoints, resume."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from spectorch._io import atomic_torch_save, load_torch_checkpoint

__all__ = ["FitResult", "fit", "load_checkpoint"]

_FORMAT = "spectorch.fit/1"


@dataclass
class FitResult:
    """What :func:`fit` did.

    Attributes:
        losses: mean training loss of every epoch so far (resumed epochs included).
        epochs: the number of epochs the model has now been trained for.
        resumed_from: the epoch the run resumed from (0 for a fresh run).
    """

    losses: list[float] = field(default_factory=list)
    epochs: int = 0
    resumed_from: int = 0


def fit(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, Any], torch.Tensor],
    data: Iterable[tuple[Any, Any]],
    *,
    epochs: int,
    optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] | None = None,
    lr: float = 1e-3,
    scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int = 1,
    seed: int | None = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
    desc: str = "fit",
) -> FitResult:
    """Train ``model`` on ``data`` for ``epochs`` epochs, resumably.

    With ``checkpoint`` set, the model, optimizer, scheduler, loss history and the
    torch RNG state are written there atomically every ``checkpoint_every`` epochs
    and after the last one; calling :func:`fit` again with the same checkpoint
    continues from it, and the result equals an uninterrupted run when the data's
    order depends only on the epoch (:class:`spectorch.data.Batches`, or any data with
    ``set_epoch``).

    Args:
        model: the network; it is put in train mode for the fit and eval mode after.
        loss_fn: ``loss_fn(outputs, targets)`` returning a scalar.
        data: re-iterable ``(inputs, targets)`` batches; ``data.set_epoch(e)`` is
            called before epoch ``e`` when it exists.
        epochs: total number of epochs (a resumed run trains only the missing ones).
        optimizer: ``params ↦ Optimizer``; default ``torch.optim.Adam(params, lr)``.
        lr: learning rate of the default optimizer.
        scheduler: ``optimizer ↦ LR scheduler``, stepped once per epoch.
        checkpoint: path of the checkpoint file.
        checkpoint_every: epochs between checkpoints.
        seed: seeds torch's global RNG (dropout, initialisation in the loop) for a
            fresh run; ``None`` leaves it alone.
        device: where to train; default the model's device.
        progress: show a progress bar over epochs.

    Raises:
        ValueError: on ``epochs`` or ``checkpoint_every`` below one, or a checkpoint
            that cannot be read (the message names the file).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for name, value in (("epochs", epochs), ("checkpoint_every", checkpoint_every)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if iter(data) is data:
        raise TypeError(
            "data must be re-iterable (a list, Batches or a DataLoader), not an iterator"
        )
    if device is not None:
        model.to(device)
    device = next(model.parameters()).device
    opt = (
        optimizer(model.parameters()) if optimizer else torch.optim.Adam(model.parameters(), lr=lr)
    )
    sched = scheduler(opt) if scheduler else None
    result = FitResult()
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None and path.exists():
        state = load_checkpoint(path)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if sched is not None and state.get("scheduler") is not None:
            sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        result.losses = [float(x) for x in state["losses"]]
        result.epochs = result.resumed_from = int(state["epoch"])
    elif seed is not None:
        torch.manual_seed(seed)

    model.train()
    bar = tqdm(total=epochs, initial=result.epochs, desc=desc, disable=not progress, unit="epoch")
    try:
        for epoch in range(result.epochs, epochs):
            if hasattr(data, "set_epoch"):
                data.set_epoch(epoch)
            total, count = 0.0, 0
            for inputs, targets in data:
                inputs, targets = inputs.to(device), targets.to(device)
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(inputs), targets)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"the training loss became {loss.item()} in epoch {epoch}; lower the "
                        "learning rate"
                    )
                loss.backward()
                opt.step()
                b = int(targets.shape[0]) if targets.ndim else 1
                total += float(loss.detach()) * b
                count += b
            if sched is not None:
                sched.step()
            result.losses.append(total / max(count, 1))
            result.epochs = epoch + 1
            bar.update(1)
            bar.set_postfix(loss=f"{result.losses[-1]:.4g}")
            if path is not None and (
                result.epochs % checkpoint_every == 0 or result.epochs == epochs
            ):
                atomic_torch_save(
                    path,
                    {
                        "format": _FORMAT,
                        "model": model.state_dict(),
                        "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict() if sched is not None else None,
                        "rng": torch.get_rng_state(),
                        "losses": result.losses,
                        "epoch": result.epochs,
                    },
                )
    finally:
        bar.close()
        model.eval()
    return result


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint written by :func:`fit` with ``torch.load(weights_only=True)``.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file is corrupt, truncated or not a spectorch checkpoint.
    """
    return load_torch_checkpoint(path, _FORMAT, "spectorch")
