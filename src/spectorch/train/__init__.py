"""The run layer under every capability: one loop, one run directory, one checkpoint
format.

* :class:`Loop` runs a step function resumably: progress bar, NaN stop, checkpoints
  every N steps, callbacks (:class:`Every`, :class:`EarlyStopping`), time budget,
  torch LR schedulers, exact resume.
* :class:`RunDirectory` holds one run: settings written once and compared on resume,
  checkpoints, atomic result files.
* :func:`save_checkpoint` / :func:`load_checkpoint`: the one checkpoint format
  (weights-only loadable, versioned).
* :func:`fit`: epoch-based training, one epoch per loop step.

>>> import torch
>>> from spectorch.train import Loop
>>> w = torch.zeros(1, requires_grad=True)
>>> opt = torch.optim.SGD([w], lr=0.1)
>>> def step(t):
...     opt.zero_grad()
...     loss = ((w - 1) ** 2).sum()
...     loss.backward()
...     opt.step()
...     return float(loss)
>>> result = Loop(step, 50, state={"optimizer": opt}, progress=False).run()
>>> round(float(w), 4), result.step
(1.0, 50)
"""

from spectorch.train._checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    load_checkpoint,
    save_checkpoint,
)
from spectorch.train._fit import FitResult, fit, load_best, to_device
from spectorch.train._loop import (
    BatchStream,
    EarlyStopping,
    Every,
    Loop,
    LoopResult,
    get_rng_state,
    make_ema,
    optimizer_step,
    set_rng_state,
)
from spectorch.train._rundir import RunDirectory, SettingsMismatch, settings_differences

__all__ = [
    # the loop
    "BatchStream",
    "EarlyStopping",
    "Every",
    "Loop",
    "LoopResult",
    "get_rng_state",
    "make_ema",
    "optimizer_step",
    "set_rng_state",
    # the run directory and checkpoints
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "RunDirectory",
    "SettingsMismatch",
    "load_checkpoint",
    "save_checkpoint",
    "settings_differences",
    # epoch-based training
    "FitResult",
    "fit",
    "load_best",
    "to_device",
]
