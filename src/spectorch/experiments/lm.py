"""A GPT-2-style language model trained here, on text that ships with Python, and the
curvature of its checkpoints: :class:`LMConfig`, :func:`run` (``spectorch lm
train``), :func:`load_lm_checkpoint` and :func:`density_problem` (what ``spectorch
density CHECKPOINT`` computes on).

    spectorch lm train --out lm --steps 2000
    spectorch density lm/step_0002000.pt --blocks modules --out lm/density

The corpus is the source of the Python standard library's top-level modules
(:func:`spectorch.data.python_source`), tokenised at byte level, cut into windows of
``context`` bytes; the last ``held_out`` of the windows are held out. The model is
:class:`spectorch.nn.GPT` (plain torch), or HuggingFace's ``GPT2LMHeadModel`` built
from the same config with ``arch="transformers"`` (the ``lm`` extra); both have
GPT-2's parameter names, so block globs such as ``transformer.h.*.attn.*`` select the
same blocks in either.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from spectorch import checks
from spectorch.curvature import CausalLM, logits_of
from spectorch.data import Batches, byte_tokens, python_source, text_windows
from spectorch.data._text import fingerprint
from spectorch.experiments._options import option
from spectorch.nn import GPT, GPTConfig, hf_gpt2
from spectorch.train import BatchStream, Loop, RunDirectory, load_checkpoint, optimizer_step

__all__ = [
    "LMConfig",
    "TrainResult",
    "corpus",
    "density_problem",
    "evaluate",
    "is_lm_checkpoint",
    "load_lm_checkpoint",
    "lm_demo",
    "run",
]

#: One checkpoint per ``checkpoint_every`` steps, all kept (densities along training).
CHECKPOINT = "step_{step:07d}.pt"

#: A loss this many times the first step's stops the run as diverged.
DIVERGE = 10.0

ARCHS = ("spectorch", "transformers")


@dataclass(frozen=True)
class LMConfig:
    """Everything that defines a language-model run; saved in every checkpoint.

    The defaults train a 4-layer, width-128 GPT (0.8M parameters) on 128-byte windows
    with AdamW (β = 0.9, 0.95, weight decay 0.1 on the matrices), a linear warm-up and
    a cosine decay to a tenth of the peak rate, and gradients clipped at norm 1, as
    GPT-2-style recipes do.
    """

    steps: int = option(2000, "training steps")
    arch: str = option(
        "spectorch",
        "spectorch: spectorch.nn.GPT (plain torch); transformers: HuggingFace's "
        "GPT2LMHeadModel from the same config (pip install 'spectorch[lm]')",
        choices=ARCHS,
    )
    layers: int = option(4, "transformer blocks (n_layer)")
    heads: int = option(4, "attention heads (n_head)")
    width: int = option(128, "embedding width (n_embd)")
    context: int = option(128, "bytes per training window (n_positions)")
    batch_size: int = option(32, "windows per batch")
    lr: float = option(1e-3, "peak learning rate (AdamW)")
    warmup: int = option(100, "steps of linear warm-up")
    min_lr_factor: float = option(0.1, "the cosine decays to this fraction of --lr")
    weight_decay: float = option(0.1, "AdamW weight decay of the weight matrices")
    clip: float = option(1.0, "gradient-norm clipping (0: none)")
    text_bytes: int = option(4_000_000, "bytes of standard-library source used")
    held_out: float = option(0.1, "fraction of the windows held out (the last ones)")
    seed: int = option(0, "seed of the network and the batch order")

    def __post_init__(self) -> None:
        checks.choice("arch", self.arch, ARCHS)
        for name in ("steps", "layers", "heads", "width", "context", "batch_size"):
            checks.positive_int(name, getattr(self, name))
        checks.nonnegative_int("warmup", self.warmup)
        checks.positive_int("text_bytes", self.text_bytes)
        checks.nonnegative_int("seed", self.seed)
        checks.positive("lr", self.lr)
        checks.interval("min_lr_factor", self.min_lr_factor, 0.0, 1.0)
        checks.interval("held_out", self.held_out, 0.0, 1.0, closed=(True, False))
        if not self.weight_decay >= 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not self.clip >= 0:
            raise ValueError(f"clip must be >= 0, got {self.clip!r}")
        if self.width % self.heads:
            raise ValueError(
                f"width must be a multiple of heads, got width={self.width}, heads={self.heads}"
            )

    def gpt_config(self) -> GPTConfig:
        return GPTConfig(
            vocab_size=256,
            n_positions=self.context,
            n_embd=self.width,
            n_layer=self.layers,
            n_head=self.heads,
        )

    def model(self) -> nn.Module:
        """The network at initialisation (seeded by ``seed``)."""
        torch.manual_seed(self.seed)
        if self.arch == "transformers":
            return hf_gpt2(self.gpt_config())
        return GPT(self.gpt_config())

    def lr_factor(self, step: int) -> float:
        """The schedule: ``step / warmup`` during the warm-up, then a cosine from 1 to
        ``min_lr_factor`` at the last step."""
        if step < self.warmup:
            return (step + 1) / self.warmup
        span = max(self.steps - self.warmup, 1)
        cos = 0.5 * (1 + math.cos(math.pi * min(step - self.warmup, span) / span))
        return self.min_lr_factor + (1 - self.min_lr_factor) * cos

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LMConfig:
        return cls(**dict(d))


@dataclass
class TrainResult:
    """What :func:`run` did: the checkpoints of the run (in order), the per-step
    training losses, the step it resumed from and the final held-out loss."""

    checkpoints: list[Path] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    resumed_from: int = 0
    held_out_loss: float = float("nan")


def corpus(config: LMConfig) -> tuple[torch.Tensor, torch.Tensor, str]:
    """``(training windows, held-out windows, SHA-256 of the text)`` of a run."""
    text = python_source(config.text_bytes)
    windows = text_windows(byte_tokens(text), config.context)
    held = round(config.held_out * windows.shape[0])
    train = windows[: windows.shape[0] - held]
    if train.shape[0] < 1:
        raise ValueError(
            f"text_bytes={config.text_bytes} makes {windows.shape[0]} windows of "
            f"{config.context} bytes, none left to train on"
        )
    return train, windows[train.shape[0] :], fingerprint(text)


def _decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW's usual groups: weight decay on the matrices (and embeddings), none on
    biases and LayerNorm gains."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0}]


def _loss(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """Mean next-byte cross-entropy of a batch of windows."""
    logits = logits_of(model(ids))
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))


def run(
    out: str | os.PathLike,
    config: LMConfig | None = None,
    *,
    checkpoint_every: int = 500,
    device: str | torch.device | None = None,
    progress: bool = True,
    sharpness_every: int | None = None,
    sharpness_sequences: int = 16,
    sharpness_preconditioned: bool = False,
) -> TrainResult:
    """Train the language model of ``config``, writing ``out/step_<step>.pt`` every
    ``checkpoint_every`` steps (and at step 0 and the last step); resumes from the
    latest checkpoint there. A resumed run equals an uninterrupted one: batch ``t``
    depends only on ``(seed, t)``. The settings saved (and compared on resume) include
    the SHA-256 of the text, so a run is never resumed on other text (another Python's
    standard library).

    Args:
        sharpness_every: also track the top Hessian eigenvalue every this many steps
            (:class:`~spectorch.curvature.SharpnessTracker`, eval mode, on the first
            ``sharpness_sequences`` training windows, in order), written to
            ``out/sharpness.csv`` and saved in the checkpoints; ``None``: never.
        sharpness_preconditioned: track AdamW's preconditioned sharpness, the top
            eigenvalue of ``P⁻¹ H`` (:func:`~spectorch.curvature.adam_preconditioner`),
            against Cohen et al.'s ``(2 + 2β₁) / ((1 − β₁) η)`` at the peak rate
            ``config.lr`` (the schedule moves η, so the line is the warm-up's end),
            from step ``sharpness_every`` on (``P`` exists only after a step).

    Raises:
        ValueError: on bad arguments, or a directory holding another run.
        ImportError: for ``arch="transformers"`` without ``transformers``.
        FloatingPointError: when the loss diverges; the last checkpoint is intact.
    """
    config = config or LMConfig()
    if not isinstance(config, LMConfig):
        raise TypeError(f"config must be an LMConfig, got {type(config).__name__}")
    checks.positive_int("checkpoint_every", checkpoint_every)
    if sharpness_every is not None:
        checks.positive_int("sharpness_every", sharpness_every)
        checks.positive_int("sharpness_sequences", sharpness_sequences)
    elif sharpness_preconditioned:
        raise ValueError(
            "sharpness_preconditioned=True tracks nothing without sharpness_every; give "
            "the steps between measurements"
        )
    train, held, sha = corpus(config)
    if sharpness_every is not None and sharpness_sequences > train.shape[0]:
        raise ValueError(
            f"sharpness_sequences={sharpness_sequences} exceeds the {train.shape[0]} "
            "training windows"
        )
    run_dir = RunDirectory(
        out,
        {**config.as_dict(), "corpus": "python-stdlib", "corpus_sha256": sha},
        kind="lm",
        settings_file="config.json",
        checkpoint=CHECKPOINT,
        ignore=("lr",),
    )
    run_dir.check()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = config.model().to(device)
    opt = torch.optim.AdamW(
        _decay_groups(model, config.weight_decay), lr=config.lr, betas=(0.9, 0.95)
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, config.lr_factor)
    batch_at = BatchStream(Batches(train, train, config.batch_size, shuffle=True, seed=config.seed))

    def step(t: int) -> float:
        ids, _ = batch_at(t)
        ids = ids.to(device, non_blocking=True)
        opt.zero_grad(set_to_none=True)
        lr = opt.param_groups[0]["lr"]
        return optimizer_step(
            _loss(model, ids),
            opt,
            clip=config.clip,
            where=f" at step {t} (lower the learning rate, now {lr:g})",
        )

    callbacks = []
    if sharpness_every is not None:
        callbacks.append(
            _tracker(model, opt, config, train[:sharpness_sequences], device, out,
                     sharpness_every, sharpness_preconditioned)
        )  # fmt: skip
    loop = Loop(
        step,
        config.steps,
        state={"model": model, "optimizer": opt},
        run=run_dir,
        checkpoint_every=checkpoint_every,
        save_initial=True,
        schedulers=[scheduler],
        callbacks=callbacks,
        diverge=DIVERGE,
        progress=progress,
        desc="lm train",
        postfix=lambda lp: {
            "loss": f"{lp.history['loss'][-1]:.3f}",
            "lr": f"{opt.param_groups[0]['lr']:.2e}",
        },
    )
    model.train()
    try:
        done = loop.run()
    finally:
        model.eval()
    held_loss = evaluate(model, held[:256]) if held.shape[0] else float("nan")
    return TrainResult(
        checkpoints=run_dir.checkpoints(),
        losses=list(done.history.get("loss", [])),
        resumed_from=done.resumed_from,
        held_out_loss=held_loss,
    )


def _tracker(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    config: LMConfig,
    windows: torch.Tensor,
    device: torch.device,
    out: str | os.PathLike,
    every: int,
    preconditioned: bool,
) -> Any:
    """The sharpness tracker of a run: the Hessian of the mean next-byte loss on fixed
    windows (batches of 8: memory only), optionally preconditioned by AdamW's ``P``."""
    from spectorch.curvature import (
        HessianOperator,
        SharpnessTracker,
        adam_preconditioner,
        adam_threshold,
    )

    data = [windows[i : i + 8].to(device) for i in range(0, windows.shape[0], 8)]
    model.eval()  # the operator checks the mode it is built in; the tracker's is eval
    H = HessianOperator(model, CausalLM(), data)
    model.train()
    precondition, threshold = None, None
    if preconditioned:
        beta1 = opt.param_groups[0]["betas"][0]
        threshold = adam_threshold(config.lr, beta1)

        def precondition() -> dict[str, torch.Tensor]:
            return adam_preconditioner(opt, model.named_parameters())

    return SharpnessTracker(
        H, every=every, model=model, path=Path(out) / "sharpness.csv", seed=config.seed,
        precondition=precondition, threshold=threshold, initial=not preconditioned,
    )  # fmt: skip


@torch.no_grad()
def evaluate(model: nn.Module, windows: torch.Tensor, batch_size: int = 32) -> float:
    """Mean next-byte cross-entropy (nats per byte) of ``model`` over ``windows``."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for i in range(0, windows.shape[0], batch_size):
        ids = windows[i : i + batch_size].to(device)
        n = ids.shape[0] * (ids.shape[1] - 1)
        total += float(_loss(model, ids)) * n
        count += n
    return total / count


def is_lm_checkpoint(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a language-model run directory or one of its checkpoints
    (by the file names and the run's ``config.json``; the checkpoint itself is
    checked when it is loaded)."""
    path = Path(path)
    if path.is_dir():
        return (path / "config.json").is_file() and any(path.glob("step_*.pt"))
    return path.is_file() and path.suffix == ".pt" and (path.parent / "config.json").is_file()


def _checkpoint_file(path: str | os.PathLike) -> Path:
    path = Path(path)
    if path.is_dir():
        found = RunDirectory(path, kind="lm", settings_file=None, checkpoint=CHECKPOINT)
        files = found.checkpoints()
        if not files:
            raise FileNotFoundError(f"no checkpoint step_<n>.pt in {path}")
        return files[-1]
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return path


def load_lm_checkpoint(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """The model of a language-model checkpoint (in eval mode; the latest checkpoint
    of a run directory) and the checkpoint itself (``step``, ``settings``).

    Raises:
        FileNotFoundError: if there is no such file or checkpoint.
        ValueError: if it is corrupt, not a language-model checkpoint, or does not
            match its configuration (the message names the file).
    """
    path = _checkpoint_file(path)
    state = load_checkpoint(path, kind="lm")
    settings = {k: v for k, v in state["settings"].items() if k in LMConfig.__dataclass_fields__}
    model = LMConfig.from_dict(settings).model()
    try:
        model.load_state_dict(state["state"]["model"])
    except (RuntimeError, KeyError) as exc:
        raise ValueError(f"checkpoint {path} does not match its configuration: {exc}") from exc
    state["path"] = str(path)
    return model.eval(), state


def density_problem(
    path: str | os.PathLike, *, sequences: int = 16, batch_size: int = 8
) -> dict[str, Any]:
    """The curvature problem of a language-model checkpoint, as ``{"model", "loss",
    "data", "problem"}``: the model, a :class:`~spectorch.curvature.CausalLM`
    objective and the first ``sequences`` training windows of its run (in order, so
    every product sees the same data) in batches of ``batch_size`` windows (memory
    only: the products do not depend on it); ``problem`` names the checkpoint, its
    step, the text and ``sequences``, for a density's manifest (a density run of
    another checkpoint is then never resumed). What ``spectorch density CHECKPOINT``
    computes on.

    Raises:
        ValueError: on bad arguments, or when the text on this machine is not the
            text the run was trained on (another Python's standard library).
    """
    checks.positive_int("sequences", sequences)
    checks.positive_int("batch_size", batch_size)
    model, state = load_lm_checkpoint(path)
    settings = state["settings"]
    config = LMConfig.from_dict(
        {k: v for k, v in settings.items() if k in LMConfig.__dataclass_fields__}
    )
    train, _, sha = corpus(config)
    if settings.get("corpus_sha256") not in (None, sha):
        raise ValueError(
            f"checkpoint {state['path']} was trained on other text (SHA-256 "
            f"{settings['corpus_sha256'][:12]}..., here {sha[:12]}...): another Python's "
            "standard library"
        )
    if sequences > train.shape[0]:
        raise ValueError(f"sequences={sequences} exceeds the {train.shape[0]} training windows")
    windows = train[:sequences]
    data = [windows[i : i + batch_size] for i in range(0, sequences, batch_size)]
    problem = {
        "lm_checkpoint": Path(state["path"]).name,
        "step": int(state["step"]),
        "config": config.as_dict(),
        "corpus_sha256": sha,
        "sequences": sequences,
    }
    return {"model": model, "loss": CausalLM(), "data": data, "problem": problem}


def lm_demo(
    out: str | os.PathLike,
    *,
    steps: int = 150,
    width: int = 32,
    layers: int = 2,
    context: int = 32,
    sequences: int = 8,
    lanczos_steps: int = 20,
    draws: int = 2,
    progress: bool = True,
) -> dict[str, Any]:
    """The language-model workflow in under a minute: train a small GPT on the standard
    library's source (``run``), then the Hessian density of its first and last
    checkpoints with one density per block (attention, MLP, embeddings, LayerNorms),
    the block figure and Zhang et al.'s Jensen-Shannon distances between blocks."""
    from spectorch.curvature import HessianOperator
    from spectorch.density import js_distances, spectral_density
    from spectorch.plotting import plot_block_densities

    out = Path(out)
    config = LMConfig(
        steps=steps, layers=layers, heads=2, width=width, context=context, batch_size=16,
        lr=3e-3, warmup=10, text_bytes=400_000,
    )  # fmt: skip
    result = run(out / "run", config, checkpoint_every=steps, device="cpu", progress=progress)
    summary: dict[str, Any] = {
        "parameters": sum(p.numel() for p in config.model().parameters()),
        "steps": steps,
        "first_loss": result.losses[0] if result.losses else None,
        "final_loss": result.losses[-1] if result.losses else None,
        "held_out_loss": result.held_out_loss,
        "checkpoints": {},
    }
    blocks = {
        "attention": ["transformer.h.*.attn.*"],
        "mlp": ["transformer.h.*.mlp.*"],
        "embeddings": ["transformer.wte.*", "transformer.wpe.*"],
        "layernorms": ["transformer.h.*.ln_*", "transformer.ln_f.*"],
    }
    figures = []
    for ckpt in (result.checkpoints[0], result.checkpoints[-1]):
        found = density_problem(ckpt, sequences=sequences, batch_size=sequences)
        op = HessianOperator(found["model"], found["loss"], found["data"])
        name = ckpt.stem
        dens = spectral_density(
            op, steps=lanczos_steps, draws=draws, seed=0, out=out / "density" / name,
            blocks=blocks, progress=progress, metadata={"problem": found["problem"]},
        )  # fmt: skip
        plot_block_densities(
            dens, out / "density" / name / "blocks.png",
            title=f"Hessian blocks of a {summary['parameters']}-parameter GPT, {name}",
        )  # fmt: skip
        parts = {k: v for k, v in dens.items() if k != "full"}
        summary["checkpoints"][name] = {
            "top_eigenvalue": float(dens["full"].top_eigenvalues(1)[0]),
            "block_top_eigenvalues": {k: float(v.top_eigenvalues(1)[0]) for k, v in parts.items()},
            "js_distance_mean": js_distances(parts)["mean"],
        }
        figures.append(f"density/{name}/blocks.png")
    summary["figures"] = figures
    return summary
