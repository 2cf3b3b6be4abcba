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

__all__ = ["FitResult", "fit", "load_best", "load_checkpoint"]

_FORMAT = "spectorch.fit/1"
_BEST_FORMAT = "spectorch.fit.best/1"


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


def _to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor of a (nested) tuple or list batch to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to_device(b, device) for b in batch)
    return batch


def _batch_size(batch: Any) -> int:
    first = batch[0] if isinstance(batch, (tuple, list)) else batch
    return int(first.shape[0]) if isinstance(first, torch.Tensor) and first.ndim else 1


def _mean_loss(compute: Callable[[nn.Module, Any], torch.Tensor], model, data, device) -> float:
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in data:
            batch = _to_device(batch, device)
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
    checkpoint: str | os.PathLike | None = None,
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
) -> FitResult:
    """Train ``model`` on ``data`` for ``epochs`` epochs, resumably.

    With ``checkpoint`` set, the model, optimizer, scheduler, moving average, loss
    history, early-stopping state and the torch RNG state are written there atomically
    every ``checkpoint_every`` epochs and after the last one; calling :func:`fit` again
    with the same checkpoint continues from it, and the result equals an uninterrupted
    run when the data's order depends only on the epoch
    (:class:`spectorch.data.Batches`, or any data with ``set_epoch``).

    Args:
        model: the network; it is put in train mode for the fit and eval mode after.
        loss_fn: ``loss_fn(model(inputs), targets)`` returning a scalar, for
            ``(inputs, targets)`` batches; ``None`` when ``compute_loss`` is given.
        data: re-iterable batches; ``data.set_epoch(e)`` is called before epoch ``e``
            when it exists. Every tensor of a batch is moved to the model's device.
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

    Raises:
        ValueError: on ``epochs`` or ``checkpoint_every`` below one, a negative
            ``clip``, ``ema_decay`` outside [0, 1), ``patience`` below one, or a
            checkpoint that cannot be read (the message names the file).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    for name, value in (("epochs", epochs), ("checkpoint_every", checkpoint_every)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if (loss_fn is None) == (compute_loss is None):
        raise TypeError("give exactly one of loss_fn and compute_loss")
    if not 0.0 <= float(ema_decay) < 1.0:
        raise ValueError(f"ema_decay must lie in [0, 1), got {ema_decay!r}")
    if not float(clip) >= 0.0:
        raise ValueError(f"clip must be >= 0 (0 disables clipping), got {clip!r}")
    if patience is not None and (
        isinstance(patience, bool) or not isinstance(patience, int) or patience < 1
    ):
        raise ValueError(f"patience must be a positive int or None, got {patience!r}")
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
    ema = (
        torch.optim.swa_utils.AveragedModel(
            model,
            multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(float(ema_decay)),
            use_buffers=True,
        )
        if ema_decay > 0
        else None
    )
    result = FitResult()
    waited = 0
    path = Path(checkpoint) if checkpoint is not None else None
    if path is not None and path.exists():
        state = load_checkpoint(path)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if sched is not None and state.get("scheduler") is not None:
            sched.load_state_dict(state["scheduler"])
        if ema is not None:
            if state.get("ema") is None:
                raise ValueError(f"{path} was written without ema_decay; resume without it")
            ema.load_state_dict(state["ema"])
        torch.set_rng_state(state["rng"])
        result.losses = [float(x) for x in state["losses"]]
        result.epochs = result.resumed_from = int(state["epoch"])
        result.val_losses = [float(x) for x in state.get("val_losses", [])]
        result.best_loss = float(state.get("best_loss", float("inf")))
        result.best_epoch = int(state.get("best_epoch", 0))
        waited = int(state.get("waited", 0))
    elif seed is not None:
        torch.manual_seed(seed)

    def evaluated() -> nn.Module:
        return ema.module if ema is not None else model

    model.train()
    bar = tqdm(total=epochs, initial=result.epochs, desc=desc, disable=not progress, unit="epoch")
    try:
        for epoch in range(result.epochs, epochs):
            if patience is not None and waited >= patience:
                result.stopped_early = True
                break
            if hasattr(data, "set_epoch"):
                data.set_epoch(epoch)
            total, count = 0.0, 0
            for batch in data:
                batch = _to_device(batch, device)
                opt.zero_grad(set_to_none=True)
                loss = compute_loss(model, batch)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"the training loss became {loss.item()} in epoch {epoch}; lower the "
                        "learning rate"
                    )
                loss.backward()
                if clip > 0:
                    nn.utils.clip_grad_norm_(model.parameters(), float(clip))
                opt.step()
                if ema is not None:
                    ema.update_parameters(model)
                b = _batch_size(batch)
                total += float(loss.detach()) * b
                count += b
            if sched is not None:
                sched.step()
            result.losses.append(total / max(count, 1))
            result.epochs = epoch + 1
            postfix = {"loss": f"{result.losses[-1]:.4g}"}
            score = result.losses[-1]
            if validation is not None:
                net = evaluated()
                net.eval()
                score = _mean_loss(compute_loss, net, validation, device)
                net.train()
                result.val_losses.append(score)
                postfix["val"] = f"{score:.4g}"
            if score < result.best_loss:
                result.best_loss, result.best_epoch, waited = score, result.epochs, 0
                if best_checkpoint is not None:
                    atomic_torch_save(
                        best_checkpoint,
                        {
                            "format": _BEST_FORMAT,
                            "model": evaluated().state_dict(),
                            "epoch": result.best_epoch,
                            "loss": result.best_loss,
                        },
                    )
            else:
                waited += 1
            bar.update(1)
            bar.set_postfix(postfix)
            if path is not None and (
                result.epochs % checkpoint_every == 0
                or result.epochs == epochs
                or (patience is not None and waited >= patience)
            ):
                atomic_torch_save(
                    path,
                    {
                        "format": _FORMAT,
                        "model": model.state_dict(),
                        "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict() if sched is not None else None,
                        "ema": ema.state_dict() if ema is not None else None,
                        "rng": torch.get_rng_state(),
                        "losses": result.losses,
                        "val_losses": result.val_losses,
                        "best_loss": result.best_loss,
                        "best_epoch": result.best_epoch,
                        "waited": waited,
                        "epoch": result.epochs,
                    },
                )
        if patience is not None and waited >= patience and result.epochs < epochs:
            result.stopped_early = True
    finally:
        bar.close()
        if ema is not None:
            model.load_state_dict(ema.module.state_dict())
        model.eval()
    return result


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint written by :func:`fit` with ``torch.load(weights_only=True)``.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file is corrupt, truncated or not a spectorch checkpoint.
    """
    return load_torch_checkpoint(path, _FORMAT, "spectorch")


def load_best(path: str | os.PathLike) -> dict[str, Any]:
    """Load a ``best_checkpoint`` written by :func:`fit`: a dict with the ``model``
    state dict, its ``epoch`` and its ``loss``.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: if the file is corrupt or not a best-weights checkpoint.
    """
    return load_torch_checkpoint(path, _BEST_FORMAT, "spectorch best-weights")
