"""Epoch-based training: :class:`~spectorch.train.Loop` with one epoch per step."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spectorch import checks
from spectorch.train._checkpoint import load_checkpoint, save_checkpoint
from spectorch.train._loop import EarlyStopping, Loop, make_ema, optimizer_step
from spectorch.train._rundir import RunDirectory

__all__ = ["FitResult", "fit", "load_best", "to_device"]


@dataclass
class FitResult:
    """What :func:`fit` did.

    Attributes:
        losses: mean training loss of every epoch so far (resumed epochs included).
        epochs: the number of epochs the model has now been trained for.
        resumed_from: the epoch the run resumed from (0 for a fresh run).
        val_losses: validation loss after every epoch (empty without validation).
        best_loss: the lowest validation loss (training loss without validation).
        best_epoch: the epoch (1-based) that reached ``best_loss``.
        stopped_early: whether ``patience`` ended the run before ``epochs``.
    """

    losses: list[float] = field(default_factory=list)
    epochs: int = 0
    resumed_from: int = 0
    val_losses: list[float] = field(default_factory=list)
    best_loss: float = float("inf")
    best_epoch: int = 0
    stopped_early: bool = False


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor of a (nested) tuple, list or dict batch to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (tuple, list)):
        return type(batch)(to_device(b, device) for b in batch)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch


def _batch_size(batch: Any) -> int:
    first = batch[0] if isinstance(batch, (tuple, list)) else batch
    return int(first.shape[0]) if isinstance(first, torch.Tensor) and first.ndim else 1


def _mean_loss(compute: Callable[[nn.Module, Any], torch.Tensor], model, data, device) -> float:
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in data:
            batch = to_device(batch, device)
            b = _batch_size(batch)
            total += float(compute(model, batch)) * b
            count += b
    return total / max(count, 1)


def fit(
    model: nn.Module,
    loss_fn: Callable[[torch.Tensor, Any], torch.Tensor] | None,
    data: Iterable[Any],
    *,
    epochs: int,
    optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] | None = None,
    lr: float = 1e-3,
    scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
    checkpoint: str | os.PathLike | RunDirectory | None = None,
    checkpoint_every: int = 1,
    seed: int | None = 0,
    device: str | torch.device | None = None,
    progress: bool = True,
    desc: str = "fit",
    compute_loss: Callable[[nn.Module, Any], torch.Tensor] | None = None,
    validation: Iterable[Any] | None = None,
    ema_decay: float = 0.0,
    clip: float = 0.0,
    patience: int | None = None,
    best_checkpoint: str | os.PathLike | None = None,
    callbacks: Iterable[Any] = (),
) -> FitResult:
    """Train ``model`` on ``data`` for ``epochs`` epochs, resumably.

    One epoch is one step of :class:`~spectorch.train.Loop`, which owns the progress
    bar, the checkpoints and the resume. With ``checkpoint`` set, the model, optimizer,
    scheduler, moving average, loss history, early-stopping state and the torch RNG
    state are written there atomically every ``checkpoint_every`` epochs and after the
    last one; calling :func:`fit` again with the same checkpoint continues from it, and
    the result equals an uninterrupted run when the data's order depends only on the
    epoch (:class:`spectorch.data.Batches`, or any data with ``set_epoch``).

    Args:
        model: the network; it is put in train mode for the fit and eval mode after.
        loss_fn: ``loss_fn(model(inputs), targets)`` returning a scalar, for
            ``(inputs, targets)`` batches; ``None`` when ``compute_loss`` is given.
        data: re-iterable batches; ``data.set_epoch(e)`` is called before epoch ``e``
            when it exists. Every tensor of a batch is moved to the model's device.
        epochs: total number of epochs (a resumed run trains only the missing ones).
        optimizer: ``params ↦ Optimizer``; default ``torch.optim.Adam(params, lr)``.
        lr: learning rate of the default optimizer.
        scheduler: ``optimizer ↦ LR scheduler`` (a torch scheduler), stepped once per
            epoch.
        checkpoint: path of the checkpoint file, or a :class:`RunDirectory`.
        checkpoint_every: epochs between checkpoints.
        seed: seeds torch's global RNG (dropout, initialisation in the loop) for a
            fresh run; ``None`` leaves it alone.
        device: where to train; default the model's device.
        progress: show a progress bar over epochs.
        compute_loss: ``compute_loss(model, batch)`` returning a scalar, for batches of
            any structure (a tuple of tensors); replaces ``loss_fn``.
        validation: re-iterable batches scored after every epoch with the training
            loss under ``torch.no_grad`` (with the averaged weights when
            ``ema_decay > 0``).
        ema_decay: keep an exponential moving average of the weights with this decay
            (0 disables it); validation, ``best_checkpoint`` and the model returned
            use the averaged weights, the checkpoint keeps both.
        clip: clip the gradient norm to this value (0 disables clipping).
        patience: stop after this many epochs without a lower validation loss
            (training loss without validation); ``None`` never stops early.
        best_checkpoint: path where the weights of the best epoch so far are written
            atomically (read them with :func:`load_best`).
        callbacks: more :class:`~spectorch.train.Loop` callbacks, called after every
            epoch (a :class:`spectorch.curvature.SharpnessTracker`); those with a
            ``name`` and a ``state_dict`` are saved in the checkpoints and resumed.

    Raises:
        ValueError: on ``epochs`` or ``checkpoint_every`` below one, a negative
            ``clip``, ``ema_decay`` outside [0, 1), ``patience`` below one, or a
            checkpoint that cannot be read (the message names the file).
        FloatingPointError: when a loss or gradient is not finite; the weights are not
            changed by that step and the last checkpoint is intact.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    checks.positive_int("epochs", epochs)
    checks.positive_int("checkpoint_every", checkpoint_every)
    if (loss_fn is None) == (compute_loss is None):
        raise TypeError("give exactly one of loss_fn and compute_loss")
    ema_decay = checks.probability("ema_decay", ema_decay, one=False)
    if not (isinstance(clip, (int, float)) and clip >= 0.0):
        raise ValueError(f"clip must be >= 0 (0 disables clipping), got {clip!r}")
    if patience is not None:
        checks.positive_int("patience", patience)
    for name, value in (("data", data), ("validation", validation)):
        if value is not None and iter(value) is value:
            raise TypeError(
                f"{name} must be re-iterable (a list, Batches or a DataLoader), not an iterator"
            )
    if compute_loss is None:

        def compute_loss(net: nn.Module, batch: Any) -> torch.Tensor:
            inputs, targets = batch
            return loss_fn(net(inputs), targets)

    if device is not None:
        model.to(device)
    device = next(model.parameters()).device
    opt = (
        optimizer(model.parameters()) if optimizer else torch.optim.Adam(model.parameters(), lr=lr)
    )
    sched = scheduler(opt) if scheduler else None
    ema = make_ema(model, ema_decay) if ema_decay > 0 else None
    evaluated = ema.module if ema is not None else model

    def epoch_step(epoch: int) -> dict[str, float]:
        if hasattr(data, "set_epoch"):
            data.set_epoch(epoch)
        total, count = 0.0, 0
        for batch in data:
            batch = to_device(batch, device)
            opt.zero_grad(set_to_none=True)
            value = optimizer_step(
                compute_loss(model, batch),
                opt,
                clip=float(clip),
                ema=ema,
                model=model,
                where=f" in epoch {epoch} (lower the learning rate)",
            )
            b = _batch_size(batch)
            total += value * b
            count += b
        out = {"loss": total / max(count, 1)}
        if validation is not None:
            evaluated.eval()
            out["val_loss"] = _mean_loss(compute_loss, evaluated, validation, device)
            evaluated.train()
        return out

    def save_best(loop: Loop) -> None:
        if best_checkpoint is not None:
            save_checkpoint(
                best_checkpoint,
                kind="best",
                step=loop.step,
                state={"model": evaluated.state_dict()},
                extra={"loss": stopper.best},
            )

    stopper = EarlyStopping(
        "val_loss" if validation is not None else "loss", patience, on_best=save_best
    )
    if checkpoint is None or isinstance(checkpoint, RunDirectory):
        run = checkpoint
    else:
        path = Path(checkpoint)
        run = RunDirectory(path.parent, kind="fit", settings_file=None, checkpoint=path.name)
    loop = Loop(
        epoch_step,
        epochs,
        state={"model": model, "optimizer": opt, "ema": ema},
        run=run,
        checkpoint_every=checkpoint_every,
        schedulers=[sched],
        callbacks=[stopper, *callbacks],
        seed=seed,
        progress=progress,
        desc=desc,
        unit="epoch",
        postfix=lambda lp: {k: f"{v[-1]:.4g}" for k, v in lp.history.items() if v},
    )
    model.train()
    try:
        done = loop.run()
    finally:
        if ema is not None:
            model.load_state_dict(ema.module.state_dict())
        model.eval()
    return FitResult(
        losses=list(done.history.get("loss", [])),
        epochs=done.step,
        resumed_from=done.resumed_from,
        val_losses=list(done.history.get("val_loss", [])),
        best_loss=stopper.best,
        best_epoch=stopper.best_step,
        stopped_early=done.stopped == "early stopping" and done.step < epochs,
    )


def load_best(path: str | os.PathLike) -> dict[str, Any]:
    """Load a ``best_checkpoint`` written by :func:`fit`: a dict with the ``model``
    state dict, its ``epoch`` and its ``loss``.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file is corrupt or not a best-weights checkpoint.
    """
    state = load_checkpoint(path, kind="best")
    return {
        "model": state["state"]["model"],
        "epoch": state["step"],
        "loss": state["extra"]["loss"],
    }
