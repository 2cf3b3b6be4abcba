"""The recurrent inference machine (Putzky & Welling 2017).

A RIM solves ``y = F(x) + noise`` by a learned iteration
``x_{t+1} = x_t + g(x_t, ∇_x log p(y | x_t), h_t)``, trained on ``(y, x)`` pairs with
a weighted sum over steps of the squared error.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, SequentialSampler

from spectorch import checks
from spectorch.rim._backbones import BACKBONES, _Backbone, build_backbone
from spectorch.train import FitResult, RunDirectory, fit, load_best, load_checkpoint

__all__ = ["RIM", "LINKS", "PREPROCESSING"]

_FORMAT = "spectorch.rim/1"


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _softplus_inverse(y: torch.Tensor) -> torch.Tensor:
    return y + torch.log(-torch.expm1(-y))


#: Named link functions: ``name -> (link, inverse)``; the link maps the RIM's
#: unconstrained space to the user's space.
LINKS: dict[str, tuple[Callable, Callable]] = {
    "identity": (_identity, _identity),
    "sigmoid": (torch.sigmoid, torch.logit),
    "exp": (torch.exp, torch.log),
    "softplus": (F.softplus, _softplus_inverse),
    "tanh": (torch.tanh, torch.atanh),
}

#: Score preprocessing methods.
PREPROCESSING = ("identity", "arcsinh", "adam", "rmsprop", "rms")
_INITIALIZATIONS = ("zeros", "approximate_inverse", "model")


def _qualified_name(fn: Any) -> str | None:
    """``module:qualname`` of a module-level function that imports back to itself."""
    module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", None)
    if not module or not qualname or "<" in qualname or module == "__main__":
        return None
    try:
        obj: Any = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        return None
    return f"{module}:{qualname}" if obj is fn else None


def _resolve(spec: str) -> Any:
    module, _, qualname = spec.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _positional_arity(fn: Callable) -> int | None:
    """Number of positional parameters of ``fn``; ``None`` if it takes ``*args`` or
    has no readable signature."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    kinds = [p.kind for p in params]
    if inspect.Parameter.VAR_POSITIONAL in kinds:
        return None
    return sum(
        k in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        for k in kinds
    )


_TORCH_RIM_NAMES = (
    "T",
    "initialization_method",
    "score_preprocessing_method",
    "device",
    "checkpoints_directory",
)


def _torch_rim_names(
    extra: dict[str, Any], steps: int, initialization: str, score_preprocessing: str
) -> tuple[int, str, str, Any, Any]:
    """torch-rim 0.2.9's constructor names, mapped onto spectorch's; an unknown one
    is a ``TypeError`` naming it."""
    unknown = sorted(set(extra) - set(_TORCH_RIM_NAMES))
    if unknown:
        raise TypeError(
            f"RIM got unexpected keyword argument(s) {unknown}; torch-rim's names accepted "
            f"here are {list(_TORCH_RIM_NAMES)}"
        )
    if "T" in extra:
        steps = extra["T"]
    if "initialization_method" in extra:
        initialization = extra["initialization_method"]
    if "score_preprocessing_method" in extra:
        score_preprocessing = extra["score_preprocessing_method"]
    return (
        steps,
        initialization,
        score_preprocessing,
        extra.get("device"),
        extra.get("checkpoints_directory"),
    )


class RIM(nn.Module):
    """A recurrent inference machine around a recurrent ``model`` (the backbone).

    Starting from ``x_0`` (``initialization``), each of the ``steps`` iterations
    computes the likelihood score ``∇_x log p(y | x_t)`` in the RIM's space,
    preprocesses it, and lets the backbone propose an update:
    ``(u_t, h_{t+1}) = model(x_t, s_t, h_t)``, ``x_{t+1} = x_t + u_t``.

    The likelihood comes as one of:

    * ``score_fn(x, y, *args)``: returns ``∇_x log p(y | x)`` (or the posterior
      score) with the shape of ``x``;
    * ``energy_fn(x, y, *args)``: returns ``log p(y | x)`` per example (shape
      ``(B,)``), a log-density, so **larger is more likely**; the RIM differentiates
      it. For Gaussian noise that is ``-0.5 * ||y - F(x)||²_Σ⁻¹``, not the χ² itself
      (torch-rim's README example returns the χ², whose gradient points away from
      the data).

    With ``per_example=True`` the function is written for one example (no batch
    dimension) and the RIM maps it over the batch with :func:`torch.func.vmap`; every
    tensor in ``args`` is then batched along its first dimension.

    The RIM works in an unconstrained space; ``link_function`` maps it to the user's
    space (``"sigmoid"`` for images in (0, 1), ``"exp"`` for positive ones, or a
    callable with its ``inverse_link_function``). The score enters by the chain rule:
    ``∇_z log p(y | link(z)) = J_link(z)ᵀ score(link(z))``. Training targets are
    mapped by the inverse link, so the loss is measured in the RIM's space;
    :meth:`predict` returns the user's space.

    Args:
        dimensions: spatial shape of x (without batch and channels), e.g. ``(8, 8)``;
            ``()`` for a vector unknown of shape ``(B, channels)`` (with a 0-D
            backbone such as ``ConvRNN(n, 0)``).
        model: the backbone, ``model(x, score, h) -> (update, h)`` with ``h=None`` on
            the first call (:class:`Hourglass`, :class:`Unet`, :class:`ConvRNN`). A
            torch-rim model (one with torch-rim's ``initalize_hidden_states``) is
            called as torch-rim called it: ``h`` from
            ``model.initalize_hidden_states(dimensions, batch_size)``, then
            ``model(x, y, score, h)``.
        score_fn: the likelihood score (see above).
        energy_fn: the log-likelihood (see above); give exactly one of the two.
        steps: number of iterations T.
        link_function: a name in :data:`LINKS` or a callable.
        inverse_link_function: the callable inverse (only with a callable link).
        initialization: ``"zeros"``; ``"approximate_inverse"`` (``x_0 =
            inverse_link(approximate_inverse_fn(y, *args))``); or ``"model"`` (the
            backbone's first update from zeros with a zero score, also part of the
            trajectory and the loss).
        approximate_inverse_fn: ``(y, *args) -> x`` in the user's space.
        score_preprocessing: ``"identity"``, ``"arcsinh"`` (elementwise), ``"adam"``
            (bias-corrected first moment over bias-corrected root second moment) or
            ``"rmsprop"`` (score over bias-corrected root second moment), the moments
            running elementwise over the RIM's steps of each example; or ``"rms"``:
            each example's score divided by its root mean square, which keeps the
            gradient's direction (elementwise Adam and RMSProp reduce the first
            step's score to its signs).
        time_weights: weight of each step's squared error in the loss (length T, or
            T+1 with ``initialization="model"``); default uniform, summing to one.
        per_example: map ``score_fn``/``energy_fn`` over the batch with vmap.
        score_graph: let the training loss differentiate through the score
            (``create_graph``), as Putzky's reference code does. Default ``False``:
            the score is treated as an input, as in torch-rim, which is cheaper and
            needs no second derivatives of the likelihood.
        epsilon, beta_1, beta_2: constants of the adam/rmsprop preprocessing.
        channels: channels of x; default ``model.channels``.
        torch-rim's names are accepted too (docs/migrating.md): ``T`` for ``steps``,
        ``initialization_method``, ``score_preprocessing_method`` (any case, e.g.
        ``"Identity"``), ``device`` (the RIM is moved there) and
        ``checkpoints_directory`` (the default directory of :meth:`fit`).
        loss_reduction: ``"mean"``: the loss averages each step's squared error over
            the batch, the channels and the pixels, with weights summing to one;
            ``"sum"``: torch-rim's loss, summed over steps, channels and pixels and
            averaged over the batch (``T · C · ∏D`` times the mean; torch-rim's
            learning rates transfer with it).
    """

    def __init__(
        self,
        dimensions: Sequence[int],
        model: nn.Module,
        score_fn: Callable | None = None,
        energy_fn: Callable | None = None,
        *,
        steps: int = 10,
        link_function: str | Callable = "identity",
        inverse_link_function: Callable | None = None,
        initialization: str = "zeros",
        approximate_inverse_fn: Callable | None = None,
        score_preprocessing: str = "identity",
        time_weights: Sequence[float] | None = None,
        per_example: bool = False,
        score_graph: bool = False,
        epsilon: float = 1e-7,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        channels: int | None = None,
        loss_reduction: str = "mean",
        **torch_rim: Any,
    ):
        super().__init__()
        steps, initialization, score_preprocessing, device, directory = _torch_rim_names(
            torch_rim, steps, initialization, score_preprocessing
        )
        #: torch-rim took the checkpoint directory here; :meth:`fit` uses it by default
        self.checkpoints_directory = directory
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if (score_fn is None) == (energy_fn is None):
            raise ValueError("give exactly one of score_fn and energy_fn")
        for name, fn in (("score_fn", score_fn), ("energy_fn", energy_fn)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
        try:
            dimensions = tuple(int(d) for d in dimensions)
        except TypeError:
            raise TypeError(f"dimensions must be a sequence of ints, got {dimensions!r}") from None
        if any(d < 1 for d in dimensions):
            raise ValueError(f"dimensions must be positive sizes, got {dimensions!r}")
        checks.positive_int("steps", steps)
        if initialization not in _INITIALIZATIONS:
            raise ValueError(
                f"initialization must be one of {list(_INITIALIZATIONS)}, got {initialization!r}"
            )
        if initialization == "approximate_inverse" and not callable(approximate_inverse_fn):
            raise ValueError(
                'initialization="approximate_inverse" needs a callable approximate_inverse_fn'
            )
        method = str(score_preprocessing).lower()
        if method not in PREPROCESSING:
            raise ValueError(
                f"score_preprocessing must be one of {list(PREPROCESSING)}, got "
                f"{score_preprocessing!r}"
            )
        if isinstance(link_function, str):
            if link_function not in LINKS:
                raise ValueError(
                    f"link_function must be one of {sorted(LINKS)} or a callable, got "
                    f"{link_function!r}"
                )
            if inverse_link_function is not None:
                raise ValueError("inverse_link_function goes with a callable link_function only")
            self.link_function, self.inverse_link_function = LINKS[link_function]
            self._link_name: str | None = link_function
        else:
            if not callable(link_function) or not callable(inverse_link_function):
                raise ValueError(
                    "a callable link_function needs its callable inverse_link_function"
                )
            self.link_function, self.inverse_link_function = link_function, inverse_link_function
            self._link_name = None
        if channels is None:
            channels = getattr(model, "channels", None)
            if channels is None:
                raise ValueError("model has no .channels attribute; pass channels=")
        if not 0.0 <= beta_1 < 1.0 or not 0.0 <= beta_2 < 1.0:
            raise ValueError(f"beta_1 and beta_2 must lie in [0, 1), got {beta_1}, {beta_2}")
        if not epsilon > 0:
            raise ValueError(f"epsilon must be positive, got {epsilon!r}")
        checks.choice("loss_reduction", loss_reduction, ("mean", "sum"))
        self.loss_reduction = loss_reduction
        n_out = steps + (initialization == "model")
        if time_weights is None:
            weights = torch.full((n_out,), 1.0 / n_out, dtype=torch.float64)
        else:
            weights = torch.as_tensor(list(time_weights), dtype=torch.float64)
            if weights.shape != (n_out,) or bool((weights < 0).any()) or not weights.sum() > 0:
                raise ValueError(
                    f"time_weights must be {n_out} non-negative numbers (one per output step), "
                    f"not all zero; got {list(time_weights)!r}"
                )
        self.model = model
        #: a torch-rim model (its ``Model`` base class: ``initalize_hidden_states`` and
        #: ``forward(x, y, score, h)``) is called the torch-rim way
        self._torch_rim_model = hasattr(model, "initalize_hidden_states") and not isinstance(
            model, _Backbone
        )
        self.dimensions, self.channels, self.steps = dimensions, int(channels), steps
        self.score_fn, self.energy_fn = score_fn, energy_fn
        self.approximate_inverse_fn = approximate_inverse_fn
        self.initialization, self.score_preprocessing = initialization, method
        self.per_example, self.score_graph = bool(per_example), bool(score_graph)
        self.epsilon, self.beta_1, self.beta_2 = float(epsilon), float(beta_1), float(beta_2)
        self.register_buffer("time_weights", weights.float(), persistent=False)
        self._time_weights_given = None if time_weights is None else [float(w) for w in weights]
        if device is not None:
            self.to(device)

    # ----------------------------------------------------------------- likelihood
    def _in_dims(self, args: tuple) -> tuple:
        return (0, 0, *(0 if isinstance(a, torch.Tensor) else None for a in args))

    def score(self, x: torch.Tensor, y: torch.Tensor, *args: Any) -> torch.Tensor:
        """The likelihood score in the RIM's space at ``x`` (shape of ``x``).

        Differentiable with respect to ``x`` when ``score_graph`` is set and grad mode
        is on; otherwise detached.
        """
        graph = self.score_graph and torch.is_grad_enabled()
        if not graph:
            x = x.detach()
        link = self.link_function
        if self.energy_fn is not None:
            energy = self.energy_fn
            if self.per_example:

                def one(xi, yi, *a):
                    return energy(link(xi), yi, *a)

                s = torch.func.vmap(torch.func.grad(one), in_dims=self._in_dims(args))(x, y, *args)
            else:
                with torch.enable_grad():
                    xr = x if x.requires_grad else x.detach().requires_grad_(True)
                    e = energy(link(xr), y, *args)
                    if not isinstance(e, torch.Tensor) or e.shape != (x.shape[0],):
                        got = tuple(e.shape) if isinstance(e, torch.Tensor) else type(e).__name__
                        raise ValueError(
                            f"energy_fn must return one log-density per example, shape "
                            f"({x.shape[0]},), got {got}; with a per-example function pass "
                            "per_example=True"
                        )
                    if not e.requires_grad:  # an energy that ignores x: a zero score,
                        s = torch.zeros_like(xr)  # as torch-rim's vjp gives
                    else:
                        (s,) = torch.autograd.grad(
                            e.sum(), xr, create_graph=graph, allow_unused=True
                        )
                        s = torch.zeros_like(xr) if s is None else s
        else:
            fn = self.score_fn
            if self.per_example:
                fn = torch.func.vmap(self.score_fn, in_dims=self._in_dims(args))
            if self._link_name == "identity":
                s = fn(x, y, *args)
            else:
                lx, pullback = torch.func.vjp(link, x)
                s = pullback(fn(lx, y, *args))[0]
        if not isinstance(s, torch.Tensor) or s.shape != x.shape:
            got = tuple(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
            raise ValueError(f"the score must have the shape of x, {tuple(x.shape)}; got {got}")
        return s if graph else s.detach()

    def model_score_fn(self, x: torch.Tensor, y: torch.Tensor, *args: Any) -> torch.Tensor:
        """torch-rim's name of :meth:`score`: the score in the RIM's space (through the
        link function)."""
        return self.score(x, y, *args)

    def preprocess(self, score: torch.Tensor, state: Any, step: int) -> tuple[torch.Tensor, Any]:
        """Apply ``score_preprocessing`` at step ``step`` (0-based); ``state`` is the
        running moments (``None`` at step 0). Returns ``(processed, state)``."""
        method = self.score_preprocessing
        if method == "identity":
            return score, None
        if method == "arcsinh":
            return torch.asinh(score), None
        if method == "rms":
            dims = tuple(range(1, score.ndim))
            rms = score.square().mean(dim=dims, keepdim=True).sqrt()
            return score / (rms + self.epsilon), None
        b1, b2, eps = self.beta_1, self.beta_2, self.epsilon
        if state is None:
            state = (torch.zeros_like(score), torch.zeros_like(score))
        m, v = state
        v = b2 * v + (1 - b2) * score**2
        v_hat = v / (1 - b2 ** (step + 1))
        if method == "rmsprop":
            return score / (v_hat.sqrt() + eps), (m, v)
        m = b1 * m + (1 - b1) * score
        m_hat = m / (1 - b1 ** (step + 1))
        return m_hat / (v_hat.sqrt() + eps), (m, v)

    # ----------------------------------------------------------------- inference
    def _prepare(self, y: Any, args: tuple) -> tuple[torch.Tensor, tuple]:
        if not isinstance(y, torch.Tensor) or y.ndim < 1:
            raise TypeError("y must be a batched torch.Tensor (batch first)")
        p = next(self.model.parameters(), None)
        device = p.device if p is not None else y.device
        dtype = p.dtype if p is not None else torch.get_default_dtype()

        def move(t: Any) -> Any:
            if not isinstance(t, torch.Tensor):
                return t
            return t.to(device, dtype if t.is_floating_point() else None)

        return move(y), tuple(move(a) for a in args)

    def forward(self, y: torch.Tensor, *args: Any) -> list[torch.Tensor]:
        """The trajectory ``[x_1, ..., x_T]`` in the RIM's space (``x_0`` first with
        ``initialization="model"``). ``y`` and tensor ``args`` are moved to the model's
        device, and floating ones to its dtype."""
        y, args = self._prepare(y, args)
        p = next(self.model.parameters())
        shape = (y.shape[0], self.channels, *self.dimensions)
        out: list[torch.Tensor] = []
        h = None
        if self._torch_rim_model:
            h = self.model.initalize_hidden_states(list(self.dimensions), y.shape[0])
            if isinstance(h, torch.Tensor):
                h = h.to(device=p.device, dtype=p.dtype)
        if self.initialization == "approximate_inverse":
            x0 = self.approximate_inverse_fn(y, *args)
            if not isinstance(x0, torch.Tensor) or x0.shape != shape:
                got = tuple(x0.shape) if isinstance(x0, torch.Tensor) else type(x0).__name__
                raise ValueError(f"approximate_inverse_fn must return shape {shape}, got {got}")
            x = self.inverse_link_function(x0.to(p.dtype))
        else:
            x = torch.zeros(shape, dtype=p.dtype, device=p.device)
            if self.initialization == "model":
                u, h = self._step(x, y, torch.zeros_like(x), h)
                x = x + u
                out.append(x)
        state = None
        for t in range(self.steps):
            s, state = self.preprocess(self.score(x, y, *args), state, t)
            u, h = self._step(x, y, s, h)
            x = x + u
            out.append(x)
        return out

    def _step(self, x: torch.Tensor, y: torch.Tensor, s: torch.Tensor, h: Any) -> Any:
        if self._torch_rim_model:
            return self.model(x, y, s, h)
        return self.model(x, s, h)

    @torch.no_grad()
    def predict(self, y: torch.Tensor, *args: Any, allow_nonfinite: bool = False) -> torch.Tensor:
        """The final estimate ``link(x_T)`` in the user's space, without a graph.

        Raises:
            ValueError: if ``y`` holds NaN or inf (whose estimates would be NaN), unless
                ``allow_nonfinite=True``.
        """
        if not allow_nonfinite and torch.is_tensor(y) and y.is_floating_point():
            bad = ~torch.isfinite(y)
            if bool(bad.any()):
                rows = bad.reshape(bad.shape[0], -1).any(1).nonzero().flatten() if y.ndim else []
                raise ValueError(
                    f"y holds {int(bad.sum())} NaN or inf values (in {len(rows)} of "
                    f"{y.shape[0] if y.ndim else 1} observations, the first at row "
                    f"{int(rows[0]) if len(rows) else 0}); their estimates would be NaN. "
                    "Pass allow_nonfinite=True to predict anyway"
                )
        return self.link_function(self(y, *args)[-1])

    def loss(self, y: torch.Tensor, x_true: torch.Tensor, *args: Any) -> torch.Tensor:
        """``Σ_t w_t mean((x_t - inverse_link(x_true))²)``: the training loss; with
        ``loss_reduction="sum"``, torch-rim's ``Σ_t T w_t Σ_{c,pixels} (...)² / B``."""
        traj = self(y, *args)
        target = self.inverse_link_function(x_true.to(traj[0].device, traj[0].dtype))
        if target.shape != traj[0].shape:
            raise ValueError(
                f"x_true must have shape {tuple(traj[0].shape)} (batch, channels, *dimensions), "
                f"got {tuple(x_true.shape)}"
            )
        w = self.time_weights.to(traj[0].dtype)
        loss = sum(w[t] * (xt - target).square().mean() for t, xt in enumerate(traj))
        if self.loss_reduction == "sum":  # times T · C · ∏D: per example, summed
            loss = loss * (len(traj) * target[0].numel())
        return loss

    # ----------------------------------------------------------------- saving
    def hyperparameters(self) -> dict[str, Any]:
        """Everything :meth:`from_checkpoint` needs to rebuild this RIM, as JSON."""

        def name_of(fn: Any) -> str | None:
            return None if fn is None else _qualified_name(fn)

        model_cls = type(self.model)
        backbone = next((k for k, v in BACKBONES.items() if v is model_cls), None)
        hp = {
            "format": _FORMAT,
            "dimensions": list(self.dimensions),
            "channels": self.channels,
            "dtype": str(next(self.model.parameters()).dtype).removeprefix("torch."),
            "steps": self.steps,
            "link_function": self._link_name
            if self._link_name is not None
            else name_of(self.link_function),
            "inverse_link_function": None
            if self._link_name is not None
            else name_of(self.inverse_link_function),
            "initialization": self.initialization,
            "score_preprocessing": self.score_preprocessing,
            "time_weights": self._time_weights_given,
            "per_example": self.per_example,
            "score_graph": self.score_graph,
            "epsilon": self.epsilon,
            "beta_1": self.beta_1,
            "beta_2": self.beta_2,
            "likelihood": "energy" if self.energy_fn is not None else "score",
            "score_fn": name_of(self.score_fn),
            "energy_fn": name_of(self.energy_fn),
            "approximate_inverse_fn": name_of(self.approximate_inverse_fn),
            "model": {
                "backbone": backbone,
                "class": _qualified_name(model_cls),
                "config": getattr(self.model, "config", None),
            },
        }
        if self.loss_reduction != "mean":  # recorded only when set, so runs written
            hp["loss_reduction"] = self.loss_reduction  # before it existed still resume
        return hp

    @classmethod
    def from_checkpoint(
        cls,
        directory: str | os.PathLike,
        *,
        which: str = "best",
        model: nn.Module | None = None,
        score_fn: Callable | None = None,
        energy_fn: Callable | None = None,
        approximate_inverse_fn: Callable | None = None,
        link_function: Callable | None = None,
        inverse_link_function: Callable | None = None,
        map_location: str | torch.device = "cpu",
    ) -> RIM:
        """Rebuild a RIM trained by :meth:`fit` from its ``checkpoints_directory``.

        The hyper-parameters come from ``hparams.json``; the weights from ``best.pt``
        (``which="best"``) or ``last.pt`` (``"last"``, the moving average when one
        was kept). Functions saved by their import path (module-level functions) are
        re-imported; others (lambdas, closures, bound methods) must be passed again,
        and the error says which.

        Raises:
            FileNotFoundError: if the directory or its files are missing.
            ValueError: on a damaged file or a function that must be passed.
        """
        directory = Path(directory)
        path = directory / "hparams.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist: not a RIM checkpoints directory")
        try:
            hp = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON: {exc}") from exc
        if hp.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a spectorch RIM ({_FORMAT}) file")
        if which not in ("best", "last"):
            raise ValueError(f'which must be "best" or "last", got {which!r}')

        def function(name: str, given: Any, needed: bool) -> Any:
            if given is not None or not needed:
                return given
            spec = hp.get(name)
            if spec is None:
                raise ValueError(
                    f"{name} was not a module-level function when the RIM was saved; pass "
                    f"RIM.from_checkpoint(..., {name}=...)"
                )
            return _resolve(spec)

        if model is None:
            m = hp["model"]
            if m.get("backbone") is not None:
                model = build_backbone(m["backbone"], m["config"])
            elif m.get("class") is not None and m.get("config") is not None:
                model = _resolve(m["class"])(**m["config"])
            else:
                raise ValueError(
                    "the backbone cannot be rebuilt from hparams.json (no .config); pass model="
                )
        energy = hp["likelihood"] == "energy"
        kwargs: dict[str, Any] = {}
        if hp["link_function"] in LINKS:
            kwargs["link_function"] = hp["link_function"]
        else:
            kwargs["link_function"] = function("link_function", link_function, True)
            kwargs["inverse_link_function"] = function(
                "inverse_link_function", inverse_link_function, True
            )
        rim = cls(
            hp["dimensions"],
            model,
            score_fn=function("score_fn", score_fn, not energy),
            energy_fn=function("energy_fn", energy_fn, energy),
            steps=hp["steps"],
            initialization=hp["initialization"],
            approximate_inverse_fn=function(
                "approximate_inverse_fn",
                approximate_inverse_fn,
                hp["initialization"] == "approximate_inverse",
            ),
            score_preprocessing=hp["score_preprocessing"],
            time_weights=hp["time_weights"],
            loss_reduction=hp.get("loss_reduction", "mean"),
            per_example=hp["per_example"],
            score_graph=hp["score_graph"],
            epsilon=hp["epsilon"],
            beta_1=hp["beta_1"],
            beta_2=hp["beta_2"],
            channels=hp["channels"],
            **kwargs,
        )
        if which == "best":
            state = load_best(directory / "best.pt")["model"]
        else:
            ckpt = load_checkpoint(directory / "last.pt", kind="fit")["state"]
            state = ckpt["model"]
            if ckpt.get("ema") is not None:
                ema = ckpt["ema"]
                state = {k.removeprefix("module."): v for k, v in ema.items() if k != "n_averaged"}
        dtype = getattr(torch, hp.get("dtype", "float32"), None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"{path} names an unknown dtype {hp.get('dtype')!r}")
        rim.to(dtype)
        rim.load_state_dict(state)
        rim.to(map_location)
        rim.eval()
        return rim

    # ----------------------------------------------------------------- training
    def fit(
        self,
        dataset: Any,
        epochs: int = 10,
        learning_rate: float = 1e-4,
        batch_size: int = 32,
        checkpoints_directory: str | os.PathLike | None = None,
        validation: Any = None,
        ema_decay: float = 0.0,
        clip: float = 0.0,
        scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
        patience: int | None = None,
        *,
        shuffle: bool = True,
        seed: int = 0,
        optimizer: Callable | None = None,
        progress: bool = True,
        desc: str = "rim",
        extra_settings: dict[str, Any] | None = None,
        total_epochs: int | None = None,
        models_to_keep: int | None = None,
        checkpoints: int | None = None,
    ) -> FitResult:
        """Train on ``dataset``, whose items are ``(y, x_true, *args)``.

        ``dataset`` (and ``validation``) are map-style datasets (``len`` and
        ``[i]``; a :class:`torch.utils.data.TensorDataset` works); a dataset with
        ``set_epoch(e)`` (fresh noise each epoch, as
        :class:`spectorch.rim.InverseProblemDataset`) is told the epoch. The order is
        a shuffle seeded by ``(seed, epoch)``, so a resumed run sees what an
        uninterrupted one would. Items are checked as they are read: a wrong arity or
        shape is a ``ValueError`` naming the item, and item 0 is checked through
        the whole RIM before training starts. Batches go to the model's device.

        With ``checkpoints_directory``: ``hparams.json`` (every RIM, backbone and
        training hyper-parameter, so :meth:`from_checkpoint` rebuilds the RIM),
        ``last.pt`` (everything to resume; written every epoch) and ``best.pt`` (the
        weights with the lowest validation loss, or training loss without validation)
        are written atomically, and calling :meth:`fit` again resumes: as torch-rim,
        each call trains ``epochs`` more (``total_epochs`` instead trains until the run
        has that many in all, what a rerun of an interrupted command wants). The
        learning rate and ``ema_decay`` may change between calls; a directory holding
        a different RIM or training set-up is refused.

        The loss is :meth:`loss`: with the default ``loss_reduction="mean"`` it is
        torch-rim's divided by ``T · C · ∏D`` (steps, channels, pixels), so torch-rim's
        learning rates are too small here by that factor; build the RIM with
        ``loss_reduction="sum"`` to train on torch-rim's loss.

        Args:
            dataset: the training items.
            epochs: epochs to train in this call (after those of a resumed run).
            learning_rate: Adam's learning rate.
            batch_size: items per batch.
            checkpoints_directory: where to write (see above).
            validation: items scored with the training loss after every epoch.
            ema_decay: keep an exponential moving average of the weights (0: off).
            clip: clip the gradient norm (0: off).
            scheduler: ``optimizer ↦ scheduler`` stepped once per epoch.
            patience: stop after this many epochs without improvement.
            shuffle: shuffle the training items.
            seed: seed of the shuffle and of the training RNG.
            optimizer: ``params ↦ optimizer``; default Adam.
            progress: show a progress bar.
            extra_settings: more JSON-friendly settings recorded in ``hparams.json``
                and compared on resume (e.g. the task the data comes from).
            total_epochs: train until the run has this many epochs (``epochs`` is then
                ignored); a finished run trains none.
            models_to_keep, checkpoints: torch-rim's (how many checkpoints to keep, and
                every how many epochs): accepted with a warning, since spectorch writes
                ``last.pt`` every epoch and keeps ``best.pt``.

        Returns:
            :class:`spectorch.train.FitResult` (losses, validation losses, best epoch).
        """
        checks.positive_int("batch_size", batch_size)
        checks.positive("learning_rate", learning_rate)
        checks.positive_int("epochs", epochs)
        if models_to_keep is not None or checkpoints is not None:
            warnings.warn(
                "RIM.fit: torch-rim's models_to_keep/checkpoints are not needed here: "
                "last.pt is written every epoch (it resumes the run) and best.pt keeps the "
                "best weights",
                UserWarning,
                stacklevel=2,
            )
        if checkpoints_directory is None:
            checkpoints_directory = self.checkpoints_directory
        if total_epochs is not None:
            checks.positive_int("total_epochs", total_epochs)
        train_items = _CheckedItems(dataset, self, "dataset")
        train_items.check_through(0)
        data = _EpochLoader(train_items, batch_size, shuffle=shuffle, seed=seed)
        val = None
        if validation is not None:
            val_items = _CheckedItems(validation, self, "validation", like=train_items)
            val = _EpochLoader(val_items, batch_size, shuffle=False, seed=seed)
        run = best = None
        if checkpoints_directory is not None:
            directory = Path(checkpoints_directory)
            settings = {
                **self.hyperparameters(),
                "fit": {
                    "learning_rate": float(learning_rate),
                    "batch_size": batch_size,
                    "ema_decay": float(ema_decay),
                    "clip": float(clip),
                    "patience": patience,
                    "shuffle": bool(shuffle),
                    "seed": seed,
                    "validation": validation is not None,
                    "optimizer": "adam" if optimizer is None else _describe(optimizer),
                    "scheduler": None if scheduler is None else _describe(scheduler),
                    "epochs": epochs,
                },
                **(extra_settings or {}),
            }
            run = RunDirectory(
                directory,
                settings,
                kind="fit",
                settings_file="hparams.json",
                checkpoint="last.pt",
                ignore=("fit.epochs", "fit.learning_rate", "fit.ema_decay"),
            )
            best = directory / "best.pt"
        done = 0
        if run is not None and total_epochs is None:
            saved = run.load_checkpoint()  # refuses another run's checkpoint, by name
            done = 0 if saved is None else int(saved["step"])
        until = total_epochs if total_epochs is not None else done + epochs

        def compute(rim: nn.Module, batch: tuple) -> torch.Tensor:
            return rim.loss(*batch)

        return fit(
            self,
            None,
            data,
            compute_loss=compute,
            epochs=until,
            lr=learning_rate,
            optimizer=optimizer,
            scheduler=scheduler,
            checkpoint=run,
            best_checkpoint=best,
            validation=val,
            ema_decay=ema_decay,
            clip=clip,
            patience=patience,
            seed=seed,
            progress=progress,
            desc=desc,
        )


def _describe(fn: Any) -> str:
    """A stable description of a factory for hparams.json: its import path, its
    ``repr`` when the class defines one, else ``"custom"``."""
    name = _qualified_name(fn)
    if name is not None:
        return name
    if type(fn).__repr__ is not object.__repr__ and not inspect.isfunction(fn):
        return repr(fn)
    return "custom"


class _CheckedItems(torch.utils.data.Dataset):
    """A map-style dataset whose items are checked to be ``(y, x_true, *args)`` of the
    RIM's shapes; errors name the item."""

    def __init__(self, items: Any, rim: RIM, name: str, like: _CheckedItems | None = None):
        if not hasattr(items, "__getitem__") or not hasattr(items, "__len__"):
            raise TypeError(
                f"{name} must be a map-style dataset (len() and [i]) of (y, x_true, *args) "
                f"items, got {type(items).__name__}"
            )
        if len(items) == 0:
            raise ValueError(f"{name} is empty")
        self.items, self.rim, self.name = items, rim, name
        fn = rim.energy_fn if rim.energy_fn is not None else rim.score_fn
        arity = _positional_arity(fn)
        self.n_args = None if arity is None else arity - 2
        self.reference = like.reference if like is not None else None
        if self.reference is None:
            self.reference = self._structure(0, self.items[0])

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.items, "set_epoch"):
            self.items.set_epoch(epoch)

    def _structure(self, i: int, item: Any) -> list[tuple[int, ...] | None]:
        where = f"{self.name} item {i}"
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            length = f" of length {len(item)}" if hasattr(item, "__len__") else ""
            raise ValueError(
                f"{where}: expected a tuple (y, x_true, *args), got {type(item).__name__}{length}"
            )
        if self.n_args is not None and len(item) != 2 + self.n_args:
            raise ValueError(
                f"{where}: the likelihood takes (x, y{', ' if self.n_args else ''}"
                f"{', '.join(f'arg{k}' for k in range(self.n_args))}), so items must be "
                f"(y, x_true{''.join(f', arg{k}' for k in range(self.n_args))}) with "
                f"{2 + self.n_args} entries; got {len(item)}"
            )
        y, x = item[0], item[1]
        for what, t in (("y", y), ("x_true", x)):
            if not isinstance(t, torch.Tensor):
                raise ValueError(f"{where}: {what} must be a torch.Tensor, got {type(t).__name__}")
        want = (self.rim.channels, *self.rim.dimensions)
        if tuple(x.shape) != want:
            raise ValueError(
                f"{where}: x_true must have shape {want} (channels, *dimensions), got "
                f"{tuple(x.shape)}"
            )
        return [tuple(t.shape) if isinstance(t, torch.Tensor) else None for t in item]

    def __getitem__(self, i: int) -> Any:
        item = self.items[i]
        structure = self._structure(i, item)
        if structure != self.reference:
            raise ValueError(
                f"{self.name} item {i}: shapes {structure} differ from those of the first "
                f"training item {self.reference} (y, x_true, *args)"
            )
        return tuple(item)

    def check_through(self, i: int) -> None:
        """Run item ``i`` through the RIM (no gradient) to catch a likelihood that
        does not fit the data before any training."""
        item = self[i]
        batch = tuple(t.unsqueeze(0) if isinstance(t, torch.Tensor) else t for t in item)
        try:
            with torch.no_grad():
                loss = self.rim.loss(*batch)
        except Exception as exc:
            raise ValueError(
                f"{self.name} item {i} does not run through the RIM: {type(exc).__name__}: {exc}"
            ) from exc
        if not torch.isfinite(loss):
            raise ValueError(f"{self.name} item {i} gives a non-finite loss ({float(loss)})")


class _EpochLoader:
    """DataLoader batches whose shuffle depends only on ``(seed, epoch)``."""

    def __init__(self, items: _CheckedItems, batch_size: int, *, shuffle: bool, seed: int):
        self.items, self.batch_size, self.shuffle, self.seed = items, batch_size, shuffle, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.items.set_epoch(epoch)

    def __len__(self) -> int:
        return -(-len(self.items) // self.batch_size)

    def __iter__(self):
        if self.shuffle:
            state = np.random.SeedSequence(self.seed, spawn_key=(self.epoch,)).generate_state(1)
            g = torch.Generator().manual_seed(int(state[0]))
            sampler: Any = RandomSampler(self.items, generator=g)
        else:
            sampler = SequentialSampler(self.items)
        return iter(DataLoader(self.items, batch_size=self.batch_size, sampler=sampler))
