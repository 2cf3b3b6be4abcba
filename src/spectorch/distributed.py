"""Curvature products over many processes, GPUs and machines with ``torch.distributed``.

Each rank holds a disjoint shard of the data and an ordinary curvature operator on
it. Rank 0 runs the Lanczos recurrence; for every product it broadcasts the vectors,
every rank computes the batch-size-weighted sum of its shard's products, and one
all-reduce adds those sums (and the sample counts) before rank 0 divides. The result
equals the one-process product up to the order of float64 additions.

Launch with ``torchrun --nproc_per_node=N spectorch density ...`` (and ``--nnodes``,
``--rdzv-endpoint`` across machines); :func:`setup` reads torchrun's environment and
picks gloo on the CPU and NCCL on GPUs. Every collective waits at most ``timeout``
seconds, so a rank that dies or hangs ends the job with :class:`DistributedError`
instead of a silent hang.

Example (two processes, run with ``torchrun --nproc_per_node=2 script.py``)::

    ctx = spectorch.distributed.setup()
    data = spectorch.distributed.shard(batches, ctx.rank, ctx.world_size)
    with DistributedOperator(HessianOperator(model, loss, data)) as H:
        if H.is_root:
            density = spectral_density(H, out="run")
        else:
            H.serve()
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from spectorch import checks

__all__ = [
    "Context",
    "DistributedError",
    "DistributedOperator",
    "ShardedData",
    "launched",
    "setup",
    "shard",
    "teardown",
]

_STOP, _ABORT, _MATVEC, _MATMAT = 0, -1, 1, 2
DEFAULT_TIMEOUT = 1800.0


class DistributedError(RuntimeError):
    """A collective failed or timed out: another rank died, hung or stopped."""


@dataclass(frozen=True)
class Context:
    """This process's place in the job."""

    rank: int
    world_size: int
    local_rank: int
    backend: str
    device: torch.device

    @property
    def is_root(self) -> bool:
        return self.rank == 0


def launched() -> bool:
    """Whether this process was started by ``torchrun`` with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup(
    backend: str = "auto", *, timeout: float = DEFAULT_TIMEOUT, device: str = "auto"
) -> Context:
    """Join the process group described by torchrun's environment variables.

    Args:
        backend: ``"gloo"``, ``"nccl"`` or ``"auto"`` (NCCL when the device is a GPU).
        timeout: seconds any collective may wait for the other ranks before the job
            fails with :class:`DistributedError`. It must exceed the longest stretch
            rank 0 spends between two products (reorthogonalisation, saving a draw).
        device: ``"auto"`` (this rank's GPU, ``cuda:LOCAL_RANK``, if any, else the
            CPU), ``"cpu"`` or ``"cuda"``.

    Raises:
        ValueError: on a bad argument, or when torchrun's variables are missing.
    """
    if backend not in ("auto", "gloo", "nccl"):
        raise ValueError(f"backend must be 'auto', 'gloo' or 'nccl', got {backend!r}")
    checks.positive("timeout", timeout)
    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    missing = [
        k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ
    ]
    if missing:
        raise ValueError(
            f"not started by torchrun: the environment lacks {missing}; launch with "
            "`torchrun --nproc_per_node=N spectorch ...`"
        )
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise ValueError("device='cuda' was asked for, but CUDA is not available here")
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        dev = torch.device("cuda", torch.cuda.current_device())
    else:
        dev = torch.device("cpu")
    if backend == "auto":
        backend = "nccl" if dev.type == "cuda" else "gloo"
    if backend == "nccl" and dev.type != "cuda":
        raise ValueError("backend='nccl' needs GPUs; use 'gloo' on the CPU")
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {}
        if dev.type == "cuda":
            kwargs["device_id"] = dev
        dist.init_process_group(
            backend=backend, timeout=datetime.timedelta(seconds=float(timeout)), **kwargs
        )
    return Context(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=local_rank,
        backend=dist.get_backend(),
        device=dev,
    )


def teardown() -> None:
    """Leave the process group, if any."""
    if dist.is_initialized():
        dist.destroy_process_group()


class ShardedData:
    """Every ``world_size``-th batch of ``data``, starting at ``rank``: a disjoint shard.

    Re-iterable like ``data``. Batches of other ranks are skipped, not read, when
    ``data`` supports ``len`` and indexing (a list, :class:`spectorch.data.Batches`);
    otherwise they are iterated past. For big datasets, shard at the source instead
    (an ENTRY that takes ``rank`` and ``world_size``).
    """

    def __init__(self, data: Iterable[Any], rank: int, world_size: int) -> None:
        checks.positive_int("world_size", world_size)
        checks.int_in("rank", rank, 0, world_size - 1)
        if hasattr(data, "__len__") and len(data) < world_size:
            raise ValueError(
                f"data has {len(data)} batches for {world_size} ranks: every rank needs at "
                "least one; use smaller batches or fewer processes"
            )
        self.data, self.rank, self.world_size = data, rank, world_size

    def __iter__(self) -> Iterator[Any]:
        if hasattr(self.data, "__len__") and hasattr(self.data, "__getitem__"):
            for i in range(self.rank, len(self.data), self.world_size):
                yield self.data[i]
            return
        for i, batch in enumerate(self.data):
            if i % self.world_size == self.rank:
                yield batch

    def __len__(self) -> int:
        return len(range(self.rank, len(self.data), self.world_size))


def shard(data: Iterable[Any], rank: int, world_size: int) -> ShardedData:
    """This rank's disjoint shard of ``data`` (the original's
    ``--partition_data_per_worker``); see :class:`ShardedData`."""
    return ShardedData(data, rank, world_size)


class DistributedOperator:
    """A curvature operator whose products add up the shards of all ranks.

    Args:
        local: this rank's :class:`~spectorch.curvature.CurvatureOperator`, built on
            its shard of the data. All ranks must hold the same model.
        root: the rank that runs the algorithm and calls ``matvec``/``matmat``; the
            others call :meth:`serve`.

    Used as a context manager, the root tells the other ranks to stop when the block
    ends, and to abort (with :class:`DistributedError` on their side) when it raises.
    """

    def __init__(self, local: Any, *, root: int = 0) -> None:
        if not dist.is_initialized():
            raise ValueError(
                "torch.distributed is not initialised: call spectorch.distributed.setup() "
                "(under torchrun) first"
            )
        if not hasattr(local, "accumulate"):
            raise TypeError(
                f"local must be a spectorch curvature operator, got {type(local).__name__}"
            )
        self.local = local
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()
        checks.int_in("root", root, 0, self.world_size - 1)
        self.root = root
        self._comm = local.device if dist.get_backend() == "nccl" else torch.device("cpu")
        self._closed = False

    # ------------------------------------------------------------------ contract
    @property
    def shape(self) -> tuple[int, int]:
        return self.local.shape

    @property
    def dtype(self) -> torch.dtype:
        return self.local.dtype

    @property
    def device(self) -> torch.device:
        return self.local.device

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.local.compute_dtype

    @property
    def is_root(self) -> bool:
        return self.rank == self.root

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``C v`` over all ranks' data (root only)."""
        n = self.shape[0]
        if not isinstance(v, torch.Tensor) or tuple(v.shape) != (n,):
            raise ValueError(f"v must be a tensor of shape ({n},)")
        return self._request(_MATVEC, v.reshape(n, 1)).reshape(n)

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        """``C V`` for a ``(P, k)`` block over all ranks' data (root only)."""
        n = self.shape[0]
        if not isinstance(V, torch.Tensor) or V.ndim != 2 or V.shape[0] != n:
            raise ValueError(f"V must be a tensor of shape ({n}, k)")
        return self._request(_MATMAT, V)

    def describe(self) -> dict[str, Any]:
        # the number of ranks is not part of the operator: a run may resume on another
        return self.local.describe()

    def __repr__(self) -> str:
        return f"DistributedOperator({self.local!r}, world_size={self.world_size})"

    # ------------------------------------------------------------------ protocol
    def serve(self) -> None:
        """Answer the root's products until it stops (every rank but the root).

        Raises:
            DistributedError: when the root aborts, or a collective fails or times out.
        """
        if self.is_root:
            raise RuntimeError("serve() is for the ranks other than the root")
        n = self.shape[0]
        while True:
            header = torch.zeros(2, dtype=torch.int64, device=self._comm)
            self._collective(dist.broadcast, header, "waiting for the next product")
            cmd, k = (int(x) for x in header.tolist())
            if cmd == _STOP:
                return
            if cmd == _ABORT:
                raise DistributedError(
                    f"rank {self.rank}: rank {self.root} stopped with an error (see its message)"
                )
            V = torch.empty(n, k, dtype=self.local.compute_dtype, device=self._comm)
            self._collective(dist.broadcast, V, "receiving the vectors")
            self._reduce(V, batched=cmd == _MATMAT)

    def close(self, *, failed: bool = False) -> None:
        """Release the other ranks (root): they return from :meth:`serve`, or raise
        :class:`DistributedError` when ``failed``."""
        if not self.is_root or self._closed:
            return
        self._closed = True
        header = torch.tensor([_ABORT if failed else _STOP, 0], device=self._comm)
        self._collective(dist.broadcast, header, "stopping the other ranks")

    def __enter__(self) -> DistributedOperator:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if self.is_root and not isinstance(exc, DistributedError):
            try:
                self.close(failed=exc_type is not None)
            except DistributedError:
                if exc_type is None:
                    raise

    # ------------------------------------------------------------------ internals
    def _request(self, cmd: int, V: torch.Tensor) -> torch.Tensor:
        if not self.is_root:
            raise RuntimeError(f"only rank {self.root} asks for products; call serve() here")
        if self._closed:
            raise RuntimeError("the distributed operator is closed")
        header = torch.tensor([cmd, V.shape[1]], dtype=torch.int64, device=self._comm)
        self._collective(dist.broadcast, header, "sending a product request")
        # every rank works from the same vectors, rounded to the network's dtype once
        V = V.to(device=self._comm, dtype=self.local.compute_dtype).contiguous()
        self._collective(dist.broadcast, V, "sending the vectors")
        return self._reduce(V, batched=cmd == _MATMAT)

    def _reduce(self, V: torch.Tensor, *, batched: bool) -> torch.Tensor:
        out, count = self.local.accumulate(V.to(self.local.device), batched=batched)
        k, n = out.shape
        packed = torch.empty(k * n + 1, dtype=torch.float64, device=self._comm)
        packed[:-1] = out.reshape(-1).to(device=self._comm, dtype=torch.float64)
        packed[-1] = float(count)
        self._collective(dist.all_reduce, packed, "adding up the products")
        total = packed[-1].item()
        if total == 0:
            raise ValueError("no rank's data yielded a batch")
        result = packed[:-1].reshape(k, n).to(device=self.local.device, dtype=self.local.dtype)
        if self.local.reduction == "mean":
            result /= total
        return result.T

    def _collective(self, fn: Any, tensor: torch.Tensor, what: str) -> None:
        try:
            if fn is dist.broadcast:
                fn(tensor, src=self.root)
            else:
                fn(tensor)
        except DistributedError:
            raise
        except Exception as exc:  # torch raises RuntimeError or DistBackendError subclasses
            raise DistributedError(
                f"rank {self.rank}: {what} failed: another rank died, hung past the timeout "
                f"or stopped ({type(exc).__name__}: {str(exc).splitlines()[0][:300]})"
            ) from exc
