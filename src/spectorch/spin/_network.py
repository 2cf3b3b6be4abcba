"""SpectralNetwork: learn eigenfunctions of an operator with SpIN, NeuralEF or NeuralSVD."""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from spectorch import checks
from spectorch.plotting import can_show
from spectorch.spin import util
from spectorch.spin._objectives import (
    NESTINGS,
    OBJECTIVES,
    cholesky,
    neuralef_loss,
    neuralsvd_loss,
    spin_gradients,
    spin_loss,
)
from spectorch.spin._operators import Batch, LinearOperator, covariance
from spectorch.train import Every, Loop, RunDirectory, SettingsMismatch, settings_differences

__all__ = ["SpectralNetwork"]

_LOGGING_KEYS = ("log_image_every", "save_params_every", "saver_path", "saver_name")
log = logging.getLogger("spectorch.spin")


class SpectralNetwork:
    """A network ``u(x)`` in ``R^k`` trained so its outputs span the top or bottom ``k``
    eigenfunctions of ``operator``.

    ``objective="spin"`` is the original algorithm of Pfau et al. (2019):
    ``Sigma = E[u u^T]``, ``Pi = E[u (T u)^T]``, ``L = chol(Sigma)``,
    ``Lambda = L^-1 Pi L^-T``, loss ``tr(Lambda)`` with the masked gradient that orders
    the eigenfunctions, and moving averages of ``Sigma`` and of its Jacobian (weight
    ``decay`` on the new batch, starting from the identity and zero; ``decay=0`` means
    no averaging). ``eigenvalues`` are ``diag(Lambda)``; the eigenfunctions are
    ``L^-1 u``. ``objective="neuralef"`` (Deng et al., 2022) and ``"neuralsvd"`` (Ryu
    et al., 2024; ``nesting="joint"`` or ``"sequential"``) use the same operators, data
    and loop without a Cholesky factorisation.

    Args:
        operator: a :class:`~spectorch.spin.LinearOperator` (sums and scalings included).
        network: an ``nn.Module`` or a function ``x -> u`` (``n x k``).
        data: where batches come from: a tensor (the same batch every step, like a
            constant in the original's graph), a callable returning a batch, or an
            iterable of batches (cycled). A batch is ``x`` or ``(x, weights)``, the
            weights being importance weights ``p(x)/q(x)``.
        params: the trainable tensors; default ``network.parameters()``.
        decay: weight of the new batch in the moving averages of ``Sigma`` and of its
            Jacobian (SpIN); for the other objectives it only smooths the ``Sigma``
            used to normalise :meth:`eigenfunctions`. ``0`` means no averaging.
        objective: ``"spin"``, ``"neuralef"`` or ``"neuralsvd"``.
        which: ``"smallest"`` or ``"largest"`` eigenvalues.
        nesting: NeuralSVD's ``"joint"`` or ``"sequential"`` nesting.
        shift: a constant added to the operator the objective sees (``T + shift`` for
            ``which="largest"``, ``shift - T`` for ``"smallest"``); NeuralEF and NeuralSVD
            need the eigenvalues they look for to be positive. Reported eigenvalues are
            always ``T``'s.

    Raises:
        ValueError / TypeError: naming the argument, before any work.
    """

    def __init__(
        self,
        operator: LinearOperator,
        network: Callable[[Tensor], Tensor],
        data: Any,
        params: Sequence[Tensor] | None = None,
        *,
        decay: float = 0.0,
        objective: str = "spin",
        which: str = "smallest",
        nesting: str = "joint",
        shift: float = 0.0,
        use_pfor: bool = True,
        per_example: bool = False,
    ) -> None:
        # use_pfor and per_example chose how the original's TensorFlow graph computed
        # the Jacobian of Sigma (parallel_for, per-example Jacobians); spectorch
        # computes the same quantity exactly by batched backward passes, so both are
        # accepted for the original's signature and change nothing (docs/migrating.md)
        self.use_pfor, self.per_example = bool(use_pfor), bool(per_example)
        if not isinstance(operator, LinearOperator):
            raise TypeError(
                f"operator: expected a spectorch.spin.LinearOperator, got {type(operator).__name__}"
            )
        if not callable(network):
            raise TypeError(
                f"network: expected an nn.Module or a callable, got {type(network).__name__}"
            )
        checks.choice("objective", objective, OBJECTIVES)
        checks.choice("which", which, ("smallest", "largest"))
        checks.choice("nesting", nesting, NESTINGS)
        checks.probability("decay", decay)
        checks.finite("shift", shift)
        if params is None:
            if not isinstance(network, nn.Module):
                raise ValueError(
                    "params: required when network is a plain function (pass its tensors)"
                )
            params = [p for p in network.parameters() if p.requires_grad]
        params = list(params)
        if not params or not all(isinstance(p, Tensor) for p in params):
            raise ValueError("params: expected a non-empty list of tensors")
        for i, p in enumerate(params):
            if not p.requires_grad:
                raise ValueError(f"params[{i}]: does not require grad")
        if data is None:
            raise ValueError("data: expected a tensor, a callable or an iterable of batches")
        if isinstance(data, Tensor):
            warnings.warn(
                "data is a tensor, so every step trains on this same batch (the original's "
                "tf.random.normal drew a new batch each step); pass a function that returns "
                "a batch, e.g. lambda: torch.randn(...), for a fresh one each step, or [data] "
                "to keep the fixed batch without this warning",
                UserWarning,
                stacklevel=2,
            )
        self.operator = operator
        self.network = network
        self.data = data
        self.params = params
        self.decay = float(decay)
        self.objective = objective
        self.which = which
        self.nesting = nesting
        self.shift = float(shift)
        self.step_count = 0
        self.resumed_from = 0  # the step the last train() call resumed from
        self.step_seconds = 0.0  # time spent in step() by this object (not restored on resume)
        self.k: int | None = None
        self.sigma_avg: Tensor | None = None
        self.sigma_jac_avg: list[Tensor] | None = None
        self.chol: Tensor | None = None
        self.loss: float | None = None
        self.eigenvalues: np.ndarray | None = None
        self._iter: Any = None
        self._warned_jitter = False

    # -- batches -------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.params[0].device

    @property
    def dtype(self) -> torch.dtype:
        return self.params[0].dtype

    def _next_batch(self) -> tuple[Tensor, Tensor | None]:
        data = self.data
        if isinstance(data, Tensor):
            out: Any = data
        elif callable(data):
            out = data()
        else:
            if self._iter is None:
                self._iter = iter(data)
            try:
                out = next(self._iter)
            except StopIteration:
                self._iter = iter(data)
                try:
                    out = next(self._iter)
                except StopIteration:
                    raise ValueError("data: the iterable yields no batches") from None
        return self._to_batch(out)

    def _to_batch(self, out: Any) -> tuple[Tensor, Tensor | None]:
        weights = None
        if isinstance(out, (tuple, list)):
            if len(out) != 2:
                raise ValueError(
                    f"data: a batch is x or (x, weights), got a sequence of {len(out)}"
                )
            out, weights = out
        if not isinstance(out, Tensor):
            raise ValueError(f"data: a batch must be a tensor, got {type(out).__name__}")
        x = out.to(self.device)
        if x.is_floating_point():
            x = x.to(self.dtype)
        if weights is not None:
            weights = torch.as_tensor(weights).to(self.device, self.dtype).reshape(-1)
            if weights.shape[0] != x.shape[0]:
                raise ValueError(f"data: {weights.shape[0]} weights for a batch of {x.shape[0]}")
        return x, weights

    # -- one step ---------------------------------------------------------------------------
    def _sign(self) -> float:
        # SpIN minimises, so it sees +T for the smallest eigenvalues; NeuralEF and
        # NeuralSVD maximise, so they see -T for the smallest.
        s = 1.0 if self.which == "smallest" else -1.0
        return s if self.objective == "spin" else -s

    def _init_state(self, k: int) -> None:
        self.k = k
        self.sigma_avg = torch.eye(k, dtype=torch.float64, device=self.device)
        if self.objective == "spin" and 0.0 < self.decay < 1.0:
            self.sigma_jac_avg = [
                torch.zeros((k, k, *p.shape), dtype=torch.float64, device=p.device)
                for p in self.params
            ]

    def _sigma_jacobian(self, u: Tensor, weights: Tensor | None) -> list[Tensor]:
        """SpIN's (masked) Jacobian of ``Sigma`` in the parameters: entry ``(i, j)`` is
        ``2 E[u_i d u_j / d theta]``, all ``k^2`` rows in one batched backward pass."""
        n, k = u.shape
        uw = u.detach() if weights is None else u.detach() * weights[:, None]
        eye = torch.eye(k, dtype=u.dtype, device=u.device)
        cot = (2.0 / n) * torch.einsum("bi,jl->ijbl", uw, eye).reshape(k * k, n, k)
        grads = torch.autograd.grad(
            u,
            self.params,
            grad_outputs=cot,
            is_grads_batched=True,
            retain_graph=True,
            allow_unused=True,
        )
        return [
            torch.zeros((k, k, *p.shape), dtype=torch.float64, device=p.device)
            if g is None
            else g.reshape(k, k, *p.shape).to(torch.float64)
            for g, p in zip(grads, self.params, strict=True)
        ]

    def compute_loss(
        self, x: Tensor, weights: Tensor | None = None
    ) -> tuple[Tensor, Tensor, dict[str, Any]]:
        """The loss of one batch, with its gradient ready for ``backward()``.

        Returns:
            ``(loss, eigenvalue estimates of T, extras)``; for SpIN with moving
            averages ``extras["sigma_grad"]`` holds the ``Sigma`` part of the gradient,
            to be added to the parameters' ``.grad`` after ``backward()``.
        """
        batch = Batch(self.network, x, weights, masked=True)
        u = batch.u
        if self.k is None:
            self._init_state(u.shape[1])
        elif u.shape[1] != self.k:
            raise ValueError(
                f"network: the number of outputs changed from {self.k} to {u.shape[1]}"
            )
        sign = self._sign()
        pi = self.operator.pi(batch)
        if pi.shape != (self.k, self.k):
            raise ValueError(
                f"operator: Pi has shape {tuple(pi.shape)}, expected ({self.k}, {self.k})"
            )
        pi = sign * pi
        if self.shift:
            pi = pi + self.shift * covariance(u, u, weights, masked=True)
        extras: dict[str, Any] = {}
        if self.objective == "spin":
            sigma = covariance(u, u, weights, masked=True)
            averaging = 0.0 < self.decay < 1.0
            if averaging:
                c = self.decay
                jac = self._sigma_jacobian(u, weights)
                self.sigma_avg = (1 - c) * self.sigma_avg + c * sigma.detach().to(torch.float64)
                for avg, j in zip(self.sigma_jac_avg, jac, strict=True):
                    avg.mul_(1 - c).add_(j, alpha=c)
                chol = cholesky(self.sigma_avg, self)
                loss = spin_loss(self.sigma_avg.to(pi.dtype), pi, chol)
                lam, g_sigma, _ = spin_gradients(chol, pi)
                extras["sigma_grad"] = [
                    torch.tensordot(g_sigma, avg, dims=2).to(p.dtype)
                    for avg, p in zip(self.sigma_jac_avg, self.params, strict=True)
                ]
            else:
                self.sigma_avg = sigma.detach().to(torch.float64)
                chol = cholesky(self.sigma_avg, self)
                loss = spin_loss(sigma, pi, chol)
                lam, _, _ = spin_gradients(chol, pi)
            self.chol = chol
            est = lam.diagonal()
        else:
            sigma = covariance(u, u, weights, masked=False).detach().to(torch.float64)
            c = self.decay if 0.0 < self.decay < 1.0 else 1.0
            self.sigma_avg = sigma if self.step_count == 0 else (1 - c) * self.sigma_avg + c * sigma
            if self.objective == "neuralef":
                loss, est = neuralef_loss(u, weights, pi)
            else:
                loss, est = neuralsvd_loss(u, weights, pi, self.nesting)
            est = est.to(torch.float64)
        # the objective saw A = sign * T + shift (sign = +-1): map back to T
        return loss, (est - self.shift) * sign, extras

    def step(self, optimizer: torch.optim.Optimizer) -> tuple[float, np.ndarray]:
        """One optimisation step on the next batch; returns ``(loss, eigenvalues)``.

        Raises:
            FloatingPointError: if the loss is not finite; the parameters are untouched.
        """
        started = time.perf_counter()
        x, weights = self._next_batch()
        optimizer.zero_grad(set_to_none=True)
        loss, eig, extras = self.compute_loss(x, weights)
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value) or not torch.isfinite(eig).all():
            raise FloatingPointError(
                f"the loss is {loss_value} at step {self.step_count}: training diverged "
                "(try a smaller learning rate)"
            )
        loss.backward()
        for p, g in zip(self.params, extras.get("sigma_grad", ()), strict=False):
            p.grad = g.clone() if p.grad is None else p.grad + g
        for i, p in enumerate(self.params):
            if p.grad is not None and not torch.isfinite(p.grad).all():
                raise FloatingPointError(
                    f"the gradient of params[{i}] is not finite at step {self.step_count}"
                )
        optimizer.step()
        self.step_count += 1
        self.step_seconds += time.perf_counter() - started
        self.loss = loss_value
        self.eigenvalues = eig.detach().cpu().numpy()
        return loss_value, self.eigenvalues

    # -- evaluation ------------------------------------------------------------------------
    @torch.no_grad()
    def eigenfunctions(self, x: Tensor) -> Tensor:
        """The learned eigenfunctions at ``x`` (``n x k``), in the order of the eigenvalues:
        ``u L^-T`` for SpIN, ``u`` with unit-norm columns for the other objectives."""
        x, _ = self._to_batch(x)
        u = self.network(x).to(torch.float64)
        if self.sigma_avg is None:
            raise ValueError("eigenfunctions: train for at least one step first")
        if self.objective == "spin":
            chol = self.chol if self.chol is not None else cholesky(self.sigma_avg, self)
            return torch.linalg.solve_triangular(chol, u.T, upper=False).T
        return u / self.sigma_avg.diagonal().clamp_min(1e-300).sqrt()

    def estimate(
        self, x: Tensor, weights: Tensor | None = None, *, chunk: int = 4096
    ) -> tuple[Tensor, Tensor]:
        """``(Sigma, Pi)`` of the raw outputs over a (large) sample ``x``, in chunks of
        ``chunk`` rows weighted by their size (float64, no training state touched)."""
        x, weights = self._to_batch((x, weights) if weights is not None else x)
        n = x.shape[0]
        if chunk < 2 or n < 2:
            raise ValueError(
                f"estimate: need at least 2 samples and chunk >= 2, got {n} and {chunk}"
            )
        sigma = pi = None
        used = 0
        for start in range(0, n, chunk):
            xs = x[start : start + chunk]
            ws = None if weights is None else weights[start : start + chunk]
            if xs.shape[0] % 2:  # kernel operators want two equal halves
                xs, ws = xs[:-1], (None if ws is None else ws[:-1])
            if xs.shape[0] == 0:
                continue
            with torch.no_grad():
                batch = Batch(self.network, xs, ws, masked=False)
                s = covariance(batch.u, batch.u, ws, masked=False).to(torch.float64) * xs.shape[0]
                p = self.operator.pi(batch).to(torch.float64) * xs.shape[0]
            sigma = s if sigma is None else sigma + s
            pi = p if pi is None else pi + p
            used += xs.shape[0]
        return sigma / used, pi / used

    def readout(self, sigma: Tensor, pi: Tensor) -> np.ndarray:
        """The eigenvalues of ``T`` this objective reads from ``Sigma = E[u u^T]`` and
        ``Pi = E[u (T u)^T]`` of the network's raw outputs, e.g. estimated on a large
        evaluation sample or exactly on a finite one: ``diag(L^-1 Pi L^-T)`` for SpIN,
        the Rayleigh quotients ``Pi_jj / Sigma_jj`` for NeuralEF and NeuralSVD."""
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        pi = torch.as_tensor(pi, dtype=torch.float64)
        pi = 0.5 * (pi + pi.T)
        if self.objective == "spin":
            chol = cholesky(sigma, self)
            eye = torch.eye(sigma.shape[0], dtype=torch.float64)
            choli = torch.linalg.solve_triangular(chol, eye, upper=False)
            return (choli @ pi @ choli.T).diagonal().numpy()
        return (pi.diagonal() / sigma.diagonal()).numpy()

    # -- checkpoints ----------------------------------------------------------------------------
    def _config(self) -> dict[str, Any]:
        """What defines a run: compared before a checkpoint is resumed, so a run of
        another operator, network or data source is never picked up."""
        return {
            "objective": self.objective,
            "which": self.which,
            "decay": self.decay,
            "nesting": self.nesting,
            "shift": self.shift,
            "params": [list(p.shape) for p in self.params],
            "operator": repr(self.operator),
            "network": _describe(self.network),
            "data": _describe(self.data),
        }

    def state_dict(self, optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any]:
        """The network's training state (weights-only loadable): its settings, step,
        parameters, buffers and moving averages, and ``optimizer``'s state when given.
        :meth:`train` saves it with the optimizer, the data's and the random generators'
        states in one :mod:`spectorch.train` checkpoint."""
        state: dict[str, Any] = {
            "config": self._config(),
            "step": self.step_count,
            "k": self.k,
            "params": [p.detach().cpu().clone() for p in self.params],
            "sigma_avg": None if self.sigma_avg is None else self.sigma_avg.cpu(),
            "sigma_jac_avg": None
            if self.sigma_jac_avg is None
            else [a.cpu() for a in self.sigma_jac_avg],
            "chol": None if self.chol is None else self.chol.cpu(),
            "eigenvalues": None
            if self.eigenvalues is None
            else torch.as_tensor(np.asarray(self.eigenvalues, dtype=np.float64)),
            "loss": self.loss,
        }
        if isinstance(self.network, nn.Module):
            state["buffers"] = {k: v.cpu() for k, v in self.network.named_buffers()}
        if optimizer is not None:
            state["optimizer"] = optimizer.state_dict()
        return state

    def load_state_dict(
        self, state: Mapping[str, Any], optimizer: torch.optim.Optimizer | None = None
    ) -> None:
        """Restore :meth:`state_dict`; refuses the state of another configuration."""
        saved = state.get("config", {})
        # compared on what the saved state recorded (spectorch 0.1 did not record the
        # operator, network and data)
        diffs = settings_differences(saved, self._config(), only=list(saved))
        if diffs:
            raise SettingsMismatch(
                f"the saved state is of a network with other settings ({'; '.join(diffs)}); "
                "use another saver_path/saver_name or the same settings"
            )
        with torch.no_grad():
            for p, v in zip(self.params, state["params"], strict=True):
                p.copy_(v)
        if isinstance(self.network, nn.Module) and "buffers" in state:
            for name, buf in self.network.named_buffers():
                if name in state["buffers"]:
                    buf.copy_(state["buffers"][name])
        self.step_count = int(state["step"])
        self.k = state["k"]
        dev = self.device
        self.sigma_avg = None if state["sigma_avg"] is None else state["sigma_avg"].to(dev)
        jac = state["sigma_jac_avg"]
        self.sigma_jac_avg = (
            None if jac is None else [a.to(p.device) for a, p in zip(jac, self.params, strict=True)]
        )
        self.chol = None if state["chol"] is None else state["chol"].to(dev)
        if state.get("eigenvalues") is not None:  # a resumed, finished run reports them
            self.eigenvalues = state["eigenvalues"].numpy()
        if state.get("loss") is not None:
            self.loss = float(state["loss"])
        if optimizer is not None and "optimizer" in state:
            optimizer.load_state_dict(state["optimizer"])

    # -- training loop ---------------------------------------------------------------------------
    def train(
        self,
        optim: torch.optim.Optimizer,
        iterations: int,
        logging_config: Mapping[str, Any] | None = None,
        stats_hooks: Mapping[str, Callable[..., Any]] | None = None,
        plotting_hooks: Mapping[str, Callable[..., Any]] | None = None,
        show_plots: bool = False,
        data_for_plotting: Tensor | None = None,
        *,
        progress: bool = True,
        resume: bool = False,
        time_budget: float | None = None,
        lr_schedule: Callable[[int], float] | None = None,
        run: RunDirectory | None = None,
        plot: bool | None = None,
        global_step: Any = None,
    ) -> dict[str, np.ndarray]:
        """The original's training loop, resumable; it runs on
        :class:`spectorch.train.Loop`.

        Args:
            optim: a ``torch.optim`` optimizer over :attr:`params`.
            iterations: the total number of steps (a resumed run does the rest).
            logging_config: the original's keys: ``config`` (logged, and saved with the
                checkpoint), ``log_image_every``, ``save_params_every`` (steps between
                checkpoints), ``saver_path``, ``saver_name`` (the checkpoint is
                ``saver_path/saver_name.pt``, written atomically). ``None``: no
                checkpoints and no images.
            stats_hooks: ``{"create": f(iterations, neig) -> dict of arrays, "update":
                f(t, loss, eigenvalues, **stats)}``; default
                :func:`spectorch.spin.util.create_default_stats` /
                :func:`~spectorch.spin.util.update_default_stats`.
            plotting_hooks: ``{"create": f() -> plots, "update": f(t, outputs, inputs,
                *plots, **stats)}``, called every ``log_image_every`` steps with the
                eigenfunctions on ``data_for_plotting``, when ``show_plots`` (as the
                original) or ``plot``.
            show_plots: run the plotting hooks and refresh a live matplotlib window when
                one can be opened (the original's GUI).
            data_for_plotting: the inputs the plotting hooks see: a tensor, an array, or
                a function returning one (called each time, like the original's op).
            progress: show a progress bar with the current eigenvalues.
            resume: continue from ``saver_path/saver_name.pt`` (or ``run``) when it
                holds a run of this network's settings (objective, decay, operator,
                network, data, parameter shapes; anything else is refused), doing the
                rest of ``iterations`` steps. The default, as the original, is a fresh
                run that writes over the checkpoint.
            plot: run the plotting hooks without a window (to write figures to files);
                default: ``show_plots``.
            global_step: the original's TensorFlow step counter; accepted and unused
                (the step count is :attr:`step_count`, saved with the checkpoint).
            time_budget: stop (with a checkpoint) after this many seconds.
            lr_schedule: ``step -> factor``: each step runs with the optimizer's initial
                learning rate times ``lr_schedule(step)`` (torch's ``LambdaLR``; a
                function of the step, so a resumed run follows the same schedule).
            run: the :class:`~spectorch.train.RunDirectory` of a larger workflow to
                checkpoint into, with its settings, instead of
                ``saver_path/saver_name.pt``; the other ``logging_config`` keys apply.

        Returns:
            The stats dict (arrays of length ``iterations``; filled up to the last step).

        Raises:
            FloatingPointError: on a NaN loss; the last checkpoint is left intact.
        """
        del global_step  # the original's TF counter; see the docstring
        if not isinstance(optim, torch.optim.Optimizer):
            raise TypeError(f"optim: expected a torch.optim.Optimizer, got {type(optim).__name__}")
        checks.positive_int("iterations", iterations)
        cfg = _check_logging_config(logging_config)
        hooks = stats_hooks or {
            "create": util.create_default_stats,
            "update": util.update_default_stats,
        }
        for key in ("create", "update"):
            if not callable(hooks.get(key)):
                raise ValueError(
                    f"stats_hooks: expected callables under 'create' and 'update', missing {key!r}"
                )
        if plotting_hooks is not None:
            for key in ("create", "update"):
                if not callable(plotting_hooks.get(key)):
                    raise ValueError(
                        "plotting_hooks: expected callables under 'create' and 'update', "
                        f"missing {key!r}"
                    )
        if run is not None and cfg is None:
            raise ValueError("run: needs a logging_config for the checkpoint and image steps")
        if run is None and cfg is not None:
            run = RunDirectory(
                cfg["saver_path"],
                self._config(),
                kind="spin",
                settings_file=None,
                checkpoint=f"{cfg['saver_name']}.pt",
            )
        if cfg is not None:
            log.info(cfg["config"])
        stats = _Stats(self, hooks, iterations)
        callbacks: list[Any] = [stats]
        plot = bool(show_plots) if plot is None else bool(plot)
        if show_plots and plotting_hooks is None:
            raise ValueError("plotting_hooks: required when show_plots=True (the original's rule)")
        if plot and plotting_hooks is not None and data_for_plotting is not None:
            live = bool(show_plots) and can_show()
            plots = plotting_hooks["create"]()
            plots = plots if isinstance(plots, tuple) else (plots,)

            def plotting_inputs() -> Tensor:
                x = data_for_plotting() if callable(data_for_plotting) else data_for_plotting
                return torch.as_tensor(x)

            def draw(loop: Loop) -> None:
                if loop.step == 0:
                    return
                x = plotting_inputs()
                outputs = self.eigenfunctions(x).cpu().numpy()
                inputs = x.detach().cpu().numpy()
                plotting_hooks["update"](loop.step - 1, outputs, inputs, *plots, **stats.arrays)
                if live:
                    import matplotlib.pyplot as plt

                    plt.pause(0.01)

            every = iterations if cfg is None else int(cfg["log_image_every"])
            callbacks.append(Every(every, draw))
        scheduler = (
            torch.optim.lr_scheduler.LambdaLR(optim, lambda t: float(lr_schedule(t)))
            if lr_schedule is not None
            else None
        )

        def one_step(t: int) -> float:
            loss, eig = self.step(optim)
            hooks["update"](t, loss, eig, **stats.arrays)
            return loss

        def postfix(loop: Loop) -> str:
            arrays = stats.arrays
            t = loop.step - 1
            shown = arrays["eigenvalues_ma"][t] if "eigenvalues_ma" in arrays else self.eigenvalues
            return "eig " + " ".join(f"{v:.4g}" for v in np.asarray(shown)[:9])

        data_state = self.data if hasattr(self.data, "state_dict") else None
        loop = Loop(
            one_step,
            iterations,
            state={"network": self, "optimizer": optim, "data": data_state},
            run=run,
            checkpoint_every=None if cfg is None else int(cfg["save_params_every"]),
            schedulers=[scheduler],
            callbacks=callbacks,
            time_budget=time_budget,
            resume=resume,
            progress=progress,
            desc=self.objective,
            postfix=postfix,
            record=False,
            extra={} if cfg is None else {"logging_config": cfg["config"]},
            finite=[self.network] if isinstance(self.network, nn.Module) else [],
        )
        done = loop.run()
        self.resumed_from = done.resumed_from
        return stats.arrays

    def _peek_k(self, x: Tensor) -> None:
        u = self.network(x)
        if u.ndim != 2:
            raise ValueError(f"network: expected outputs of shape (batch, k), got {tuple(u.shape)}")
        self._init_state(u.shape[1])
        if not isinstance(self.data, Tensor) and not callable(self.data):
            self._iter = None  # a re-iterable serves the peeked batch again


class _Stats:
    """The stats hooks' arrays as a part of the run: created once ``k`` is known (from
    the checkpoint, or one forward pass), saved up to the current step."""

    name = "stats"

    def __init__(self, net: SpectralNetwork, hooks: Mapping[str, Any], iterations: int) -> None:
        self.net, self.hooks, self.iterations = net, hooks, iterations
        self._arrays: dict[str, Any] | None = None

    @property
    def arrays(self) -> dict[str, Any]:
        if self._arrays is None:
            net = self.net
            if net.k is None:  # learn k from one forward pass (no training)
                with torch.no_grad():
                    x, _ = (
                        net._next_batch()
                        if not isinstance(net.data, Tensor)
                        else net._to_batch(net.data)
                    )
                    net._peek_k(x)
            self._arrays = self.hooks["create"](self.iterations, net.k)
        return self._arrays

    def on_start(self, loop: Loop) -> None:
        self.arrays  # noqa: B018 - created before the first step

    def state_dict(self) -> dict[str, Any]:
        return {
            k: torch.from_numpy(np.ascontiguousarray(v[: self.net.step_count]))
            for k, v in self.arrays.items()
            if isinstance(v, np.ndarray)
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        arrays = self.arrays
        for key, value in state.items():
            if key in arrays and isinstance(arrays[key], np.ndarray):
                saved = value.numpy()
                n = min(len(saved), len(arrays[key]))
                arrays[key][:n] = saved[:n]


def _describe(obj: Any) -> str:
    """A description that is the same in every process: a module's architecture, a
    tensor's shape and dtype, a function's or an object's qualified name."""
    if isinstance(obj, nn.Module):
        return repr(obj)
    if isinstance(obj, Tensor):
        return f"tensor{tuple(obj.shape)} {str(obj.dtype).removeprefix('torch.')}"
    name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return f"{getattr(obj, '__module__', None) or type(obj).__module__}.{name}"


def _check_logging_config(cfg: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if cfg is None:
        return None
    if not isinstance(cfg, Mapping):
        raise TypeError(f"logging_config: expected a dict, got {type(cfg).__name__}")
    missing = [k for k in _LOGGING_KEYS if k not in cfg]
    if missing:
        raise ValueError(
            f"logging_config: missing key(s) {missing}; "
            f"expected {list(_LOGGING_KEYS)} (and 'config')"
        )
    out = dict(cfg)
    out.setdefault("config", {})
    for key in ("log_image_every", "save_params_every"):
        checks.positive_int(f"logging_config[{key!r}]", out[key])
    if not isinstance(out["saver_name"], str) or not out["saver_name"]:
        raise ValueError(
            f"logging_config['saver_name'] must be a non-empty string, got {out['saver_name']!r}"
        )
    if not isinstance(out["saver_path"], (str, os.PathLike)):
        raise ValueError(f"logging_config['saver_path'] must be a path, got {out['saver_path']!r}")
    return out
