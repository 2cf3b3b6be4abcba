"""Curvature spectra of models too big for one device: parameters sharded with torch's
FSDP2 (``torch.distributed.fsdp.fully_shard``), Hessian products that never gather
the parameter vector on one rank, and the Lanczos recurrence on sharded vectors.

Every rank holds its shard of each parameter (FSDP2's ``Shard(0)`` DTensors) and a
disjoint shard of the data. A vector lives as each rank's piece, laid out like its
parameter shards (:attr:`ShardedHessian.local_dim` numbers per rank); inner products
are local sums followed by one all-reduce, so the recurrence, the basis and its full
reorthogonalisation are split across the ranks like the parameters.

The product is the finite-difference one of :class:`~spectorch.curvature.HessianOperator`
(``hvp="finite-difference"``): ``(∇L(θ + h v) − ∇L(θ − h v)) / 2h`` with ``h =
ε^(1/3) max(1, ‖θ‖) / ‖v‖``, each gradient an ordinary FSDP2 forward and backward
(parameters all-gathered one FSDP unit at a time, gradients reduce-scattered into
shards). Why not the exact product: FSDP2 frees each unit's gathered parameters after
its forward and gathers them again in its backward hooks, which run once per
backward, so differentiating the gradient a second time reads freed storage
(``RuntimeError: setStorage: ... out of bounds for storage of size 0`` on torch
2.13); the finite-difference product needs only what FSDP2 does in training. Its
error is measured in docs/curvature.md (about 1e-10 relative in float64, 1e-5 in
float32).

Example (``torchrun --nproc_per_node=2 script.py``)::

    ctx = spectorch.distributed.setup()
    for block in model.transformer.h:
        fully_shard(block)
    fully_shard(model)
    data = spectorch.distributed.shard(batches, ctx.rank, ctx.world_size)
    H = ShardedHessian(model, CausalLM(), data)
    density = sharded_density(H, steps=90, draws=10)   # the same on every rank
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from spectorch import checks
from spectorch.curvature import Objective, Supervised
from spectorch.density import SpectralDensity, draw_generator
from spectorch.density._run import START_SIGNS, _RunDir
from spectorch.linalg import LanczosResult, rademacher_signs
from spectorch.train._rundir import plain

log = logging.getLogger("spectorch.density")

__all__ = ["ShardedHessian", "shard_model", "sharded_density", "sharded_lanczos"]


def shard_model(model: nn.Module) -> nn.Module:
    """Shard ``model``'s parameters over the job with FSDP2: ``fully_shard`` on every
    module held in an ``nn.ModuleList`` (a transformer's blocks, each gathered in turn
    during a forward) and then on the root (the rest). Returns ``model``, changed in
    place."""
    from torch.distributed.fsdp import fully_shard

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not dist.is_initialized():
        raise ValueError("shard_model needs torch.distributed; call setup() first")
    for module in list(model.modules()):
        if isinstance(module, nn.ModuleList):
            for block in module:
                if any(True for _ in block.parameters()):
                    fully_shard(block)
    fully_shard(model)
    return model


def _dtensor_type() -> type:
    from torch.distributed.tensor import DTensor

    return DTensor


class ShardedHessian:
    """The Hessian of the mean loss over every rank's data, for a model sharded with
    FSDP2, acting on sharded vectors (see the module's text).

    Args:
        model: a module after ``fully_shard`` (every trainable parameter a DTensor);
            in eval mode, as for :class:`~spectorch.curvature.HessianOperator`.
        loss_fn: a PyTorch loss for ``(inputs, targets)`` batches or a
            :class:`~spectorch.curvature.Objective` (``CausalLM`` for language
            models); the loss is the mean over all loss terms of all ranks.
        data: this rank's batches (a re-iterable; the ranks' data are disjoint).
        group: the process group (default: the whole job).

    Raises:
        ValueError: when a trainable parameter is not sharded, the model is in
            training mode, or a rank has no data; before any product.
    """

    name = "hessian"

    def __init__(
        self, model: nn.Module, loss_fn: Any, data: Iterable[Any], *, group: Any = None
    ) -> None:
        if not dist.is_initialized():
            raise ValueError("ShardedHessian needs torch.distributed; call setup() first")
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if model.training:
            raise ValueError("model is in training mode; call model.eval() first")
        DTensor = _dtensor_type()
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        plain = [n for n, p in named if not isinstance(p, DTensor)]
        if plain:
            raise ValueError(
                f"parameters {plain[:3]} are not sharded; call "
                "torch.distributed.fsdp.fully_shard on the model (and its blocks) first"
            )
        self.model, self.group = model, group
        self.objective = loss_fn if isinstance(loss_fn, Objective) else Supervised(loss_fn)
        if not self.objective.splits:
            raise ValueError(
                f"{type(self.objective).__name__} does not count its loss terms; use "
                "Supervised, CausalLM or an Objective with count()"
            )
        self.data = data
        self.param_names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.local_dim = sum(p.to_local().numel() for p in self.params)
        self.world_size = dist.get_world_size(group)
        counts = torch.tensor([self.local_dim, 0], dtype=torch.float64)
        local_terms = sum(int(self.objective.count(b)) for b in data)
        counts[1] = local_terms
        dist.all_reduce(counts, group=group)
        self.dim, self.count = int(counts[0]), int(counts[1])
        if self.count == 0:
            raise ValueError("the ranks' data hold no loss terms")
        self.dtype = self.params[0].dtype
        self.products = 0

    @property
    def shape(self) -> tuple[int, int]:
        return (self.dim, self.dim)

    def describe(self) -> dict[str, Any]:
        """A JSON-friendly description for manifests."""
        return {
            "operator": "hessian",
            "hvp": "finite-difference",
            "sharded": "fsdp2",
            "model": type(self.model).__name__,
            "parameters": self.dim,
            "loss": self.objective.describe(),
            "network_dtype": str(self.dtype).replace("torch.", ""),
        }

    # ----------------------------------------------------------------- vectors
    def dot(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """``⟨a, b⟩`` of two sharded vectors (rows of ``a`` against ``b`` when ``a``
        is a matrix of them): local products, one all-reduce."""
        out = (a @ b).to(torch.float64)
        dist.all_reduce(out, group=self.group)
        return out

    def norm(self, a: torch.Tensor) -> float:
        return math.sqrt(float(self.dot(a, a)))

    def local_pieces(self, v: torch.Tensor) -> list[torch.Tensor]:
        """The pieces of a sharded vector, shaped like this rank's parameter shards."""
        out, i = [], 0
        for p in self.params:
            local = p.to_local()
            out.append(v[i : i + local.numel()].view_as(local))
            i += local.numel()
        return out

    def shard_full(self, full: list[torch.Tensor]) -> torch.Tensor:
        """This rank's piece of a vector given as full parameter-shaped tensors (one
        per parameter, the same on every rank), sharded as the parameters are."""
        from torch.distributed.tensor import distribute_tensor

        pieces = []
        for p, f in zip(self.params, full, strict=True):
            d = distribute_tensor(f, p.device_mesh, p.placements, src_data_rank=None)
            pieces.append(d.to_local().reshape(-1))
        return torch.cat(pieces).to(torch.float64)

    def gather(self, v: torch.Tensor) -> torch.Tensor:
        """The full vector of a sharded one, in ``named_parameters`` order (gathers
        everything on every rank: for checks on small models)."""
        from torch.distributed.tensor import DTensor

        parts = []
        for p, piece in zip(self.params, self.local_pieces(v), strict=True):
            d = DTensor.from_local(piece, p.device_mesh, p.placements, shape=p.shape,
                                   stride=p.stride())  # fmt: skip
            parts.append(d.full_tensor().reshape(-1))
        return torch.cat(parts)

    def random_start(self, generator: torch.Generator) -> torch.Tensor:
        """A Rademacher start vector, unit norm, drawn parameter by parameter from
        ``generator``: :func:`~spectorch.linalg.random_start`'s vector of the same
        generator, whatever the number of ranks (one parameter's full tensor at a time
        is drawn on each rank)."""
        signs = rademacher_signs([p.numel() for p in self.params], generator)
        full = [
            s.to(torch.float64).reshape(p.shape) for s, p in zip(signs, self.params, strict=True)
        ]
        v = self.shard_full(full)
        return v / self.norm(v)

    # ----------------------------------------------------------------- products
    def _gradient(self) -> list[torch.Tensor]:
        """This rank's shards of the gradient of the mean loss over all ranks' data."""
        for p in self.params:
            p.grad = None
        scale = self.world_size / self.count  # FSDP2 averages the ranks' gradients
        with torch.enable_grad():
            for batch in self.data:
                loss, _ = self.objective.evaluate(self.model, batch)
                (loss * scale).backward()
        grads = [
            torch.zeros_like(p.to_local()) if p.grad is None else p.grad.to_local().clone()
            for p in self.params
        ]
        for p in self.params:
            p.grad = None
        return grads

    @torch.no_grad()
    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``H v`` for this rank's piece ``v`` of a sharded vector (every rank calls
        it together); returns this rank's piece of the product, in float64."""
        if v.shape != (self.local_dim,):
            raise ValueError(f"v must be this rank's piece, shape ({self.local_dim},)")
        squares = sum(float(p.to_local().double().square().sum()) for p in self.params)
        total = torch.tensor(squares, dtype=torch.float64)
        dist.all_reduce(total, group=self.group)
        theta = math.sqrt(float(total))
        norm = self.norm(v.double())
        self.products += 1
        if norm == 0.0:
            return torch.zeros_like(v, dtype=torch.float64)
        h = torch.finfo(self.dtype).eps ** (1.0 / 3.0) * max(1.0, theta) / norm
        saved = [p.to_local().clone() for p in self.params]
        pieces = self.local_pieces(v)
        try:
            grads = []
            for sign in (1.0, -1.0):
                for p, s, x in zip(self.params, saved, pieces, strict=True):
                    p.to_local().copy_(s + sign * h * x.to(s.dtype))
                grads.append(self._gradient())
        finally:
            for p, s in zip(self.params, saved, strict=True):
                p.to_local().copy_(s)
        out = [(a.double() - b.double()) / (2.0 * h) for a, b in zip(*grads, strict=True)]
        return torch.cat([x.reshape(-1) for x in out])


def sharded_lanczos(
    op: ShardedHessian,
    steps: int,
    start: torch.Tensor,
    *,
    progress: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lanczos with full reorthogonalisation on sharded vectors: every rank keeps its
    piece of the basis, and every inner product is one all-reduce (classical
    Gram-Schmidt twice, as :func:`spectorch.linalg.lanczos`). Every rank calls it
    with its piece of the start vector and gets the same ``(alphas, betas)``.
    """
    checks.positive_int("steps", steps)
    if steps > op.dim:
        raise ValueError(f"steps must be at most the operator's dimension {op.dim}, got {steps}")
    if not isinstance(start, torch.Tensor) or tuple(start.shape) != (op.local_dim,):
        got = tuple(start.shape) if isinstance(start, torch.Tensor) else type(start).__name__
        raise ValueError(f"start must be this rank's piece, shape ({op.local_dim},), got {got}")
    q = start.to(torch.float64)
    q = q / op.norm(q)
    basis = torch.zeros(steps, op.local_dim, dtype=torch.float64)
    basis[0] = q
    alphas = torch.zeros(steps, dtype=torch.float64)
    betas = torch.zeros(max(steps - 1, 0), dtype=torch.float64)
    anorm, m = 0.0, steps
    tol = max(1000, op.dim) * torch.finfo(torch.float64).eps
    bar = tqdm(total=steps, desc="lanczos", disable=not progress or dist.get_rank() != 0,
               leave=False, unit="step")  # fmt: skip
    try:
        for j in range(steps):
            w = op.matvec(q)
            if not torch.isfinite(w).all():
                raise FloatingPointError(f"the product has NaN or inf at Lanczos step {j + 1}")
            anorm = max(anorm, op.norm(w))
            alphas[j] = op.dot(w, q)
            w = w - alphas[j] * q
            if j > 0:
                w = w - betas[j - 1] * basis[j - 1]
            for _ in range(2):
                w = w - basis[: j + 1].T @ op.dot(basis[: j + 1], w)
            bar.update(1)
            if j == steps - 1:
                break
            beta = op.norm(w)
            if beta <= tol * anorm:
                m = j + 1
                break
            betas[j] = beta
            q = w / beta
            basis[j + 1] = q
    finally:
        bar.close()
    return alphas[:m].clone(), betas[: m - 1].clone()


def sharded_density(
    op: ShardedHessian,
    *,
    steps: int = 90,
    draws: int = 10,
    seed: int = 0,
    out: str | os.PathLike | None = None,
    metadata: dict[str, Any] | None = None,
    progress: bool = True,
) -> SpectralDensity:
    """The spectral density of a :class:`ShardedHessian` by stochastic Lanczos
    quadrature, every rank calling it together and getting the same density. Draw
    ``k`` starts from the Rademacher vector of :func:`~spectorch.density.draw_generator`
    ``(seed, k)``, drawn parameter by parameter, so the density does not depend on the
    number of ranks.

    With ``out``, rank 0 writes each finished draw's ``tridiag_<k>.npy`` and the
    manifest there, as :func:`~spectorch.density.spectral_density` does (no Lanczos
    vectors: they are sharded), and a run found there with the same settings resumes
    from its finished draws; :func:`~spectorch.density.load_density` reads it.
    ``metadata`` goes into the manifest (its ``"problem"`` is compared on resume).
    """
    checks.positive_int("draws", draws)
    checks.nonnegative_int("seed", seed)
    checks.positive_int("steps", steps)
    if steps > op.dim:
        raise ValueError(f"steps must be at most the operator's dimension {op.dim}, got {steps}")
    settings = {"dim": op.dim, "steps": int(steps), "seed": int(seed), "start": "rademacher",
                "start_signs": START_SIGNS, "dtype": "float64", "operator": op.describe(),
                "basis": "sharded"}  # fmt: skip
    if metadata and "problem" in metadata:
        settings["problem"] = plain(metadata["problem"])
    root = dist.get_rank(op.group) == 0
    run, done = None, {}
    if out is not None and root:
        try:
            run = _RunDir(Path(out), settings, metadata)
            done = {k: T for k, (T, _) in run.load_finished().items()}
            problem = None
        except ValueError as exc:  # another run's directory: every rank stops
            problem = str(exc)
    else:
        problem = None
    shared = [problem, sorted(done)]
    dist.broadcast_object_list(shared, src=dist.get_global_rank(op.group, 0) if op.group else 0,
                               group=op.group)  # fmt: skip
    if shared[0] is not None:
        raise ValueError(shared[0])
    finished = set(shared[1]) & set(range(draws))
    if finished and root:
        log.info("resuming %s: %d of %d draws already there, %d to compute", out,
                 len(finished), draws, draws - len(finished))  # fmt: skip
    tridiags = {}
    bar = tqdm(range(draws), desc="draws", disable=not progress or not root)
    for k in bar:
        if k in finished:
            tridiags[k] = done.get(k)
            continue
        t0 = time.perf_counter()
        start = op.random_start(draw_generator(seed, k))
        a, b = sharded_lanczos(op, steps, start, progress=progress)
        res = LanczosResult(alphas=a, betas=b, basis=torch.empty(0, 0), breakdown=len(a) < steps)
        T = res.tridiagonal.numpy()
        tridiags[k] = T
        if run is not None:
            run.save_draw(k, res, T, False, time.perf_counter() - t0, None)
    if finished:  # the finished draws' tridiagonals, read on rank 0, to every rank
        known = [tridiags[k] if root else None for k in sorted(finished)]
        dist.broadcast_object_list(known, src=dist.get_global_rank(op.group, 0) if op.group else 0,
                                   group=op.group)  # fmt: skip
        tridiags.update(zip(sorted(finished), known, strict=True))
    meta = dict(settings, draws=list(range(draws)), **(metadata or {}))
    return SpectralDensity.from_tridiagonals(
        [tridiags[k] for k in range(draws)], op.dim, steps=steps, metadata=meta
    )
