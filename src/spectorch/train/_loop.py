"""The one training loop: a step function and the objects with a ``state_dict``; the
loop owns everything around the step."""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from spectorch import checks
from spectorch.train._rundir import RunDirectory, SettingsMismatch, plain

__all__ = [
    "BatchStream",
    "EarlyStopping",
    "Every",
    "Loop",
    "LoopResult",
    "get_rng_state",
    "make_ema",
    "optimizer_step",
    "set_rng_state",
]

log = logging.getLogger("spectorch.train")

#: the suffix of a checkpoint written but not yet confirmed by the next step's loss
_PENDING = ".pending"


def get_rng_state() -> dict[str, Any]:
    """torch's CPU generator and every initialised CUDA generator."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore :func:`get_rng_state` (CUDA generators only where CUDA is here)."""
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        cuda = list(state["cuda"])[: torch.cuda.device_count()]
        for device, s in enumerate(cuda):
            torch.cuda.set_rng_state(s, device)


def make_ema(model: nn.Module, decay: float) -> torch.optim.swa_utils.AveragedModel:
    """An exponential moving average of ``model``'s weights and buffers: after each
    :meth:`update_parameters`, ``avg = decay * avg + (1 - decay) * weights``."""
    checks.interval("ema_decay", decay, 0.0, 1.0, closed=(False, False))
    return torch.optim.swa_utils.AveragedModel(
        model,
        multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(float(decay)),
        use_buffers=True,
    )


def optimizer_step(
    loss: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    *,
    clip: float = 0.0,
    ema: torch.optim.swa_utils.AveragedModel | None = None,
    model: nn.Module | None = None,
    where: str = "",
) -> float:
    """``loss.backward()`` and the optimizer's step, with the checks that keep a failed
    step from reaching the weights: a non-finite loss or gradient raises
    :class:`FloatingPointError` (its message ends with ``where``) before any weight
    changes. The gradient norm is clipped to ``clip`` (0: no clipping) and ``ema``,
    the moving average of ``model``, updated after the step. Returns the loss."""
    value = float(loss.detach())
    if not math.isfinite(value):
        raise FloatingPointError(f"the training loss became {value}{where}")
    loss.backward()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if not _all_finite([p.grad for p in params if p.grad is not None]):
        raise FloatingPointError(f"the gradient became non-finite{where}")
    if clip > 0:
        nn.utils.clip_grad_norm_(params, float(clip))
    optimizer.step()
    if ema is not None:
        if model is None:
            raise TypeError("optimizer_step: ema needs the model it averages (model=...)")
        ema.update_parameters(model)
    return value


class BatchStream:
    """Batch ``t`` of endless epochs over ``data``, for step-based training: batch
    ``t % len(data)`` of epoch ``t // len(data)``, where ``data.set_epoch(epoch)``
    selects the epoch's order (:class:`~spectorch.data.Batches`,
    :class:`~spectorch.data.CifarBatches`, a ``DataLoader`` with a
    ``DistributedSampler``). Reading the steps in order costs one pass; any other
    step (a resume) starts the epoch at that batch (``data.iter_from(i)`` when it
    exists, else by skipping ``i`` batches)."""

    def __init__(self, data: Any) -> None:
        if not hasattr(data, "__len__") or len(data) == 0:
            raise ValueError("data must have a length of at least one batch")
        self.data = data
        self._next: int | None = None
        self._it: Any = None

    def __call__(self, t: int) -> Any:
        epoch, i = divmod(int(t), len(self.data))
        if self._next != t or i == 0:
            if hasattr(self.data, "set_epoch"):
                self.data.set_epoch(epoch)
            if hasattr(self.data, "iter_from"):
                self._it = iter(self.data.iter_from(i))
            else:
                self._it = iter(self.data)
                for _ in range(i):
                    next(self._it)
        self._next = t + 1
        return next(self._it)


def _all_finite(tensors: list[torch.Tensor]) -> bool:
    """Whether every entry of ``tensors`` is finite, with one synchronisation per
    device: a NaN or inf makes the tensor's sum non-finite (and a sum is less prone
    to overflow than the squares of a norm)."""
    by_device: dict[torch.device, list[torch.Tensor]] = {}
    for t in tensors:
        by_device.setdefault(t.device, []).append(t.sum().float())
    return all(bool(torch.isfinite(torch.stack(sums).sum())) for sums in by_device.values())


@dataclass
class LoopResult:
    """What :meth:`Loop.run` did.

    Attributes:
        step: steps done in all (resumed ones included).
        resumed_from: the step this call started from (0 for a fresh run).
        history: every per-step record (``loss`` and whatever the step returned).
        stopped: why the loop ended before its last step (``"time budget"``, ``"early
            stopping"``, ...), or ``None``.
        checkpoint: the last checkpoint written or resumed from, if any.
        seconds: wall time of this call.
    """

    step: int = 0
    resumed_from: int = 0
    history: dict[str, list[float]] = field(default_factory=dict)
    stopped: str | None = None
    checkpoint: Any = None
    seconds: float = 0.0


class Every:
    """Call ``fn(loop)`` every ``n`` steps, and once more when the loop ends (also when
    it ends early, or without a step because the run was already finished) unless it
    was just called at that step.

    Args:
        n: steps between calls.
        fn: the callback; it sees the :class:`Loop` (``loop.step``, ``loop.history``,
            ``loop.stop(reason)``).
        at_end: also call it when the loop ends.
    """

    def __init__(self, n: int, fn: Callable[[Loop], Any], *, at_end: bool = True) -> None:
        self.n = checks.positive_int("n", n)
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        self.fn, self.at_end = fn, at_end
        self._last: int | None = None

    def on_step(self, loop: Loop) -> None:
        if loop.step % self.n == 0:
            self._last = loop.step
            self.fn(loop)

    def on_end(self, loop: Loop) -> None:
        if self.at_end and self._last != loop.step:
            self._last = loop.step
            self.fn(loop)


class EarlyStopping:
    """Stop when ``loop.history[monitor]`` has not reached a new low for ``patience``
    steps (``None``: never stop, only track the best). ``on_best(loop)`` is called at
    every new low (to save the best weights). Its state is saved with the run."""

    name = "early_stopping"

    def __init__(
        self,
        monitor: str = "loss",
        patience: int | None = None,
        *,
        on_best: Callable[[Loop], Any] | None = None,
    ) -> None:
        if patience is not None:
            checks.positive_int("patience", patience)
        self.monitor, self.patience, self.on_best = monitor, patience, on_best
        self.best, self.best_step, self.waited = float("inf"), 0, 0

    @property
    def exhausted(self) -> bool:
        return self.patience is not None and self.waited >= self.patience

    def on_start(self, loop: Loop) -> None:
        if self.exhausted:
            loop.stop("early stopping")

    def on_step(self, loop: Loop) -> None:
        score = loop.history[self.monitor][-1]
        if score < self.best:
            self.best, self.best_step, self.waited = score, loop.step, 0
            if self.on_best is not None:
                self.on_best(loop)
        else:
            self.waited += 1
        if self.exhausted:
            loop.stop("early stopping")

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_step": self.best_step, "waited": self.waited}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best = float(state["best"])
        self.best_step, self.waited = int(state["best_step"]), int(state["waited"])


class Loop:
    """Run ``step(t)`` for ``t = 0, 1, ..., steps - 1``, resumably.

    The step function does one unit of work (an optimisation step, or an epoch) and
    returns its loss, a float or a dict of floats with a ``"loss"`` entry; everything
    else is the loop's:

    * **resume**: with a :class:`RunDirectory`, the latest checkpoint there restores
      every object of ``state`` (``load_state_dict``), the random generators, the
      history and the step, and the loop continues from there; the result equals an
      uninterrupted run when ``step(t)`` depends only on ``t`` and that state;
    * **checkpoints** every ``checkpoint_every`` steps and when the loop ends, written
      atomically; never after a failed step: a non-finite (or, with ``diverge``, a
      diverging) loss stops the loop with the last checkpoint intact. A checkpoint
      becomes one only once the next step has computed a good loss from its weights
      (until then it is ``<name>.pending``), and one whose model weights or buffers
      are not finite is refused, so the checkpoint left behind after a divergence is
      one to resume from, with a lower learning rate;
    * **schedules**: ``schedulers`` (torch LR schedulers) step after every step;
    * **callbacks**: objects with any of ``on_start(loop)``, ``on_step(loop)``,
      ``on_end(loop)`` (e.g. :class:`Every`, :class:`EarlyStopping`); those with a
      ``name`` and a ``state_dict`` are saved with the run;
    * **time budget**: stop (with a checkpoint) after ``time_budget`` seconds;
    * **progress**: a tqdm bar with ``postfix(loop)`` after every step.

    Args:
        step: ``step(t) -> loss``.
        steps: the total number of steps (a resumed run does the rest).
        state: ``{name: object}`` of everything with a ``state_dict`` (model,
            optimizer, samplers, moving averages); ``None`` entries are skipped.
        run: where checkpoints go and come from (``None``: no checkpoints, no resume).
        checkpoint_every: steps between checkpoints (``None``: only at the end).
        save_initial: also write a checkpoint before the first step of a fresh run.
        schedulers: stepped after every step.
        callbacks: see above.
        time_budget: seconds after which the loop stops.
        seed: seeds torch's generator for a fresh run (``None`` leaves it alone).
        progress, desc, unit: the progress bar.
        postfix: ``loop -> dict or str`` shown on the bar.
        record: keep the returned values in ``history`` (saved with checkpoints).
        resume: continue from a checkpoint found in ``run`` (``False``: start afresh
            and write over it).
        extra: entries saved in every checkpoint's ``extra``, as JSON would keep them
            (other objects as their ``str``).
        finite: the modules whose parameters and buffers must be finite for a
            checkpoint to be written (default: the ``nn.Module`` entries of ``state``).
        diverge: stop (as for a NaN) when a step's loss exceeds ``diverge`` times the
            first step's (``None``: only non-finite losses stop the run).
    """

    def __init__(
        self,
        step: Callable[[int], Any],
        steps: int,
        *,
        state: Mapping[str, Any] | None = None,
        run: RunDirectory | None = None,
        checkpoint_every: int | None = None,
        save_initial: bool = False,
        schedulers: Iterable[Any] = (),
        callbacks: Iterable[Any] = (),
        time_budget: float | None = None,
        seed: int | None = None,
        progress: bool = True,
        desc: str = "train",
        unit: str = "step",
        postfix: Callable[[Loop], Any] | None = None,
        record: bool = True,
        resume: bool = True,
        extra: Mapping[str, Any] | None = None,
        finite: Iterable[nn.Module] | None = None,
        diverge: float | None = None,
    ) -> None:
        if not callable(step):
            raise TypeError(f"step must be callable, got {type(step).__name__}")
        self.steps = checks.positive_int("steps", steps)
        if checkpoint_every is not None:
            checks.positive_int("checkpoint_every", checkpoint_every)
        if time_budget is not None and not (
            isinstance(time_budget, (int, float)) and time_budget >= 0
        ):
            raise ValueError(f"time_budget must be a non-negative number, got {time_budget!r}")
        if diverge is not None:
            checks.positive("diverge", diverge)
        self.diverge = diverge
        self.step_fn = step
        self.state = {k: v for k, v in (state or {}).items() if v is not None}
        for name, obj in self.state.items():
            if not (hasattr(obj, "state_dict") and hasattr(obj, "load_state_dict")):
                raise TypeError(
                    f"state[{name!r}] must have state_dict() and load_state_dict(), got "
                    f"{type(obj).__name__}"
                )
        self.run_dir = run
        self.checkpoint_every = checkpoint_every
        self.save_initial = save_initial
        self.schedulers = [s for s in schedulers if s is not None]
        self.callbacks = list(callbacks)
        self.time_budget = time_budget
        self.seed = seed
        self.progress, self.desc, self.unit, self.postfix = progress, desc, unit, postfix
        self.record = record
        self.resume = bool(resume)
        self.extra = plain(dict(extra or {}))
        self.finite = (
            {n: m for n, m in self.state.items() if isinstance(m, nn.Module)}
            if finite is None
            else {f"module {i}": m for i, m in enumerate(finite)}
        )
        self.step = 0
        self.history: dict[str, list[float]] = {}
        self._stop: str | None = None
        self._saved: int | None = None
        self._pending: tuple[Any, Any] | None = None
        self.checkpoint: Any = None
        self.lr_changes: list[tuple[float, float]] = []

    # ----------------------------------------------------------------- state
    def stop(self, reason: str) -> None:
        """Ask the loop to end after the current step (with a checkpoint)."""
        self._stop = self._stop or reason

    def _stateful(self) -> dict[str, Any]:
        out = dict(self.state)
        for cb in self.callbacks:
            if hasattr(cb, "state_dict") and getattr(cb, "name", None):
                out[f"callback:{cb.name}"] = cb
        for i, sched in enumerate(self.schedulers):
            out.setdefault(f"scheduler:{i}" if i else "scheduler", sched)
        return out

    def _restore(self, saved: Mapping[str, Any]) -> None:
        states = saved["state"]
        # the learning rates this run was built with; they may differ from the saved
        # run's (a resume after a divergence, with a lower rate)
        fresh = {
            id(opt): [g["lr"] for g in opt.param_groups]
            for opt in self.state.values()
            if isinstance(opt, torch.optim.Optimizer)
        }
        bases = {id(s): list(s.base_lrs) for s in self.schedulers if hasattr(s, "base_lrs")}
        for name, obj in self._stateful().items():
            if name.startswith("scheduler") and states.get(name) is None:
                # written without its schedule's state (spectorch 0.1's CIFAR runs): a
                # torch schedule is a function of the steps taken; stepping it once from
                # the step before applies a milestone that falls on this very step
                obj.last_epoch = int(saved["step"]) - 1
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    obj.step()
                continue
            if (name not in states or states[name] is None) and isinstance(
                obj, torch.optim.swa_utils.AveragedModel
            ):
                # a moving average switched on at this resume: it starts from the
                # resumed weights at its first update
                log.info(
                    "%s: no moving average saved; it starts from step %d",
                    self.desc,
                    int(saved["step"]),
                )
                continue
            if name not in states or states[name] is None:
                raise ValueError(
                    f"checkpoint {self.checkpoint} has no state for {name!r}: it was written "
                    "by a run with other settings"
                )
            try:
                obj.load_state_dict(states[name])
            except SettingsMismatch as exc:  # name the file, so that it can be moved away
                raise SettingsMismatch(
                    f"{self.checkpoint} holds a run with other settings: {exc}; move it "
                    "away, or choose another output directory, to start afresh"
                ) from exc
        set_rng_state(saved["rng"])
        self.history = {k: [float(x) for x in v] for k, v in saved["history"].items()}
        self.step = int(saved["step"])
        self.lr_changes = self._rebase_learning_rates(fresh, bases)

    def _rebase_learning_rates(
        self, fresh: dict[int, list[float]], bases: dict[int, list[float]]
    ) -> list[tuple[float, float]]:
        """Give the resumed optimizers the learning rates this run was built with: a
        scheduled optimizer continues its schedule from the new base rate (the rate is
        scaled by new base / old base), an unscheduled one takes the new rate.
        Returns the ``(old, new)`` base rates that changed."""
        changes: list[tuple[float, float]] = []
        scheduled = set()
        for sched in self.schedulers:
            if id(sched) not in bases:
                continue
            opt = sched.optimizer
            scheduled.add(id(opt))
            new, old = bases[id(sched)], list(sched.base_lrs)
            if new == old:
                continue
            for group, n, o in zip(opt.param_groups, new, old, strict=True):
                group["lr"] = group["lr"] * (n / o) if o else n
                group["initial_lr"] = n
            sched.base_lrs = list(new)  # torch's schedulers read it, and the groups' lr
            changes += [(o, n) for o, n in zip(old, new, strict=True) if o != n]
        for opt in self.state.values():
            if not isinstance(opt, torch.optim.Optimizer) or id(opt) in scheduled:
                continue
            for group, n in zip(opt.param_groups, fresh.get(id(opt), []), strict=False):
                if group["lr"] != n:
                    changes.append((group["lr"], n))
                    group["lr"] = n
        return changes

    def _check_weights(self) -> None:
        for name, obj in self.finite.items():
            tensors = [("parameter", n, p) for n, p in obj.named_parameters()]
            tensors += [("buffer", n, b) for n, b in obj.named_buffers() if b.is_floating_point()]
            if _all_finite([t.detach() for _, _, t in tensors]):
                continue
            what, tname, _ = next(x for x in tensors if not bool(torch.isfinite(x[2]).all()))
            raise FloatingPointError(
                f"{name} {what} {tname} became non-finite at step {self.step} "
                f"(lower the learning rate); {self._intact()}"
            )

    def _save(self, *, pending: bool = False) -> None:
        """Write the checkpoint of this step. ``pending``: under a temporary name, made
        the checkpoint by :meth:`_commit` once the next step's loss (the loss of these
        very weights) has been found finite, so that a checkpoint never holds weights
        that are about to diverge."""
        if self.run_dir is None or self._saved == self.step:
            return
        self._commit()
        self._check_weights()
        final = self.run_dir.checkpoint_path(self.step)
        written = self.run_dir.save_checkpoint(
            self.step,
            state={name: obj.state_dict() for name, obj in self._stateful().items()},
            history=self.history,
            rng=get_rng_state(),
            extra=self.extra,
            path=final.with_name(final.name + _PENDING) if pending else None,
        )
        self._saved = self.step
        if pending:
            self._pending = (written, final)
        else:
            self.checkpoint = written

    def _commit(self) -> None:
        if self._pending is not None:
            written, final = self._pending
            os.replace(written, final)
            self._pending, self.checkpoint = None, final

    def _discard(self) -> None:
        if self._pending is not None:
            self._pending[0].unlink(missing_ok=True)
            self._pending = None

    def _check_divergence(self, t: int, loss: float) -> None:
        if self.diverge is None:
            return
        first = (self.history.get("loss") or [loss])[0]
        if abs(loss) > self.diverge * max(abs(first), 1e-12):
            raise FloatingPointError(
                f"the training loss diverged at step {t}: {loss:.6g}, more than "
                f"{self.diverge:g} times the first step's {first:.6g} (lower the learning "
                f"rate); {self._intact()}"
            )

    def _intact(self) -> str:
        if self.run_dir is None:
            return "no checkpoint was being written"
        if self.checkpoint is None:
            return f"no checkpoint was written to {self.run_dir.path} yet"
        return f"the last checkpoint, {self.checkpoint}, is intact"

    # ----------------------------------------------------------------- running
    def run(self) -> LoopResult:
        """Resume or start, run the remaining steps, return what happened.

        Raises:
            FloatingPointError: when a step's loss (or a checkpoint's weights) is not
                finite; nothing is written for that step.
            ValueError: from the run directory (other settings, damaged checkpoint).
        """
        t0 = time.monotonic()
        result = LoopResult()
        saved = None
        if self.run_dir is not None:
            self.run_dir.check()  # the directory's settings file first, then the checkpoint's
            if self.resume:
                saved = self.run_dir.load_checkpoint()
        if saved is not None:
            self.checkpoint = self.run_dir.latest_checkpoint()
            self._restore(saved)
            self._saved = self.step
            result.resumed_from = self.step
            log.info(
                "%s: resuming from step %d of %d (%s)",
                self.desc,
                self.step,
                self.steps,
                self.checkpoint,
            )
            for old_lr, new_lr in self.lr_changes:
                log.info("%s: learning rate %g -> %g from here on", self.desc, old_lr, new_lr)
        elif self.seed is not None:
            torch.manual_seed(self.seed)
        if self.run_dir is not None:
            self.run_dir.open()
            for stale in self.run_dir.path.glob(f"*{_PENDING}"):
                stale.unlink(missing_ok=True)  # of a process killed before its next step
            if saved is None and self.save_initial:
                self._save()
        for cb in self.callbacks:
            if hasattr(cb, "on_start"):
                cb.on_start(self)
        bar = tqdm(
            total=self.steps,
            initial=self.step,
            desc=self.desc,
            unit=self.unit,
            disable=not self.progress,
            dynamic_ncols=True,
        )
        try:
            while self.step < self.steps and self._stop is None:
                t = self.step
                try:
                    out = self.step_fn(t)
                except FloatingPointError as exc:  # the step says where and why
                    raise FloatingPointError(f"{exc}; {self._intact()}") from exc
                values = out if isinstance(out, Mapping) else {"loss": out}
                loss = float(values["loss"])
                if not math.isfinite(loss):
                    raise FloatingPointError(
                        f"the training loss became {loss} at step {t} (lower the learning "
                        f"rate); {self._intact()}"
                    )
                self._check_divergence(t, loss)
                self._commit()  # the pending checkpoint's weights gave a good loss
                self.step = t + 1
                if self.record:
                    for key, value in values.items():
                        self.history.setdefault(key, []).append(float(value))
                for sched in self.schedulers:
                    sched.step()
                for cb in self.callbacks:
                    if hasattr(cb, "on_step"):
                        cb.on_step(self)
                if self.time_budget is not None and time.monotonic() - t0 > self.time_budget:
                    self.stop("time budget")
                bar.update(1)
                if self.postfix is not None:
                    shown = self.postfix(self)
                    if isinstance(shown, str):
                        bar.set_postfix_str(shown, refresh=False)
                    else:
                        bar.set_postfix(shown, refresh=False)
                ending = self.step >= self.steps or self._stop is not None
                if not ending and self.checkpoint_every and self.step % self.checkpoint_every == 0:
                    self._save(pending=True)
            for cb in self.callbacks:
                if hasattr(cb, "on_end"):
                    cb.on_end(self)
            self._save()
        except FloatingPointError:
            self._discard()  # its weights led to a non-finite or diverging loss
            raise
        finally:
            self._commit()  # interrupted (or failed elsewhere): its weights were fine
            bar.close()
        result.step, result.history, result.stopped = self.step, self.history, self._stop
        result.checkpoint, result.seconds = self.checkpoint, time.monotonic() - t0
        return result
