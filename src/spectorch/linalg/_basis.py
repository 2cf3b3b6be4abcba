"""Where the Lanczos vectors live: memory (recurrence dtype), float32, or a file on disk.

The basis is what limits Lanczos on big models: 90 steps of a 10⁷-parameter model are
7.2 GB of float64 vectors. The recurrence itself (the current and previous vector,
``α``, ``β``) always stays in the recurrence dtype; only the stored copy used for
reorthogonalisation and returned to the caller changes.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

__all__ = ["BASIS_MODES", "BlockBasis", "DiskRows"]

BASIS_MODES = ("memory", "float32", "disk")
# Temporary float64 working set of one reorthogonalisation chunk (float32 and disk modes).
_CHUNK_BYTES = 64 << 20


class DiskRows:
    """The rows of one recurrence's basis in a ``.npy`` file, read with ``pread``.

    Reading through explicit reads instead of a memory map keeps the process's resident
    memory at one chunk, whatever the file size (pages of a map count as resident).
    """

    def __init__(self, path: Path, rows: int, n: int) -> None:
        self.path = path
        self.n = n
        self.rows = rows
        header = np.lib.format.open_memmap(path, mode="w+", dtype=np.float64, shape=(rows, n))
        self.offset = int(header.offset)
        del header
        self.fd: int | None = os.open(path, os.O_RDWR)
        self.rows_per_chunk = max(1, _CHUNK_BYTES // (8 * n))

    def write(self, i: int, row: torch.Tensor) -> None:
        data = np.ascontiguousarray(row.detach().to("cpu", torch.float64).numpy())
        self._check_open()
        os.pwrite(self.fd, data.tobytes(), self.offset + 8 * i * self.n)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as a fresh float64 array."""
        self._check_open()
        out = np.empty((stop - start, self.n), dtype=np.float64)
        view = memoryview(out).cast("B")
        done, pos = 0, self.offset + 8 * start * self.n
        while done < view.nbytes:
            got = os.preadv(self.fd, [view[done:]], pos + done)
            if got <= 0:
                raise OSError(f"short read from the Lanczos basis file {self.path}")
            done += got
        return out

    def chunks(self, m: int, device: torch.device):
        """``(start, rows)`` blocks of the first ``m`` rows, as float64 tensors on ``device``."""
        for start in range(0, m, self.rows_per_chunk):
            stop = min(m, start + self.rows_per_chunk)
            yield start, torch.from_numpy(self.read(start, stop)).to(device)

    def project(self, x: torch.Tensor, m: int) -> torch.Tensor:
        """``Q[:m] x`` in float64."""
        x = x.to(torch.float64)
        parts = [rows @ x for _, rows in self.chunks(m, x.device)]
        return torch.cat(parts) if parts else x.new_zeros(0)

    def truncate(self, m: int) -> None:
        """Keep the first ``m`` rows (after a breakdown), rewriting the header."""
        if m == self.rows:
            return
        self._check_open()
        tmp = self.path.with_name(self.path.name + ".trunc")
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float64, shape=(m, self.n))
        for start, rows in self.chunks(m, torch.device("cpu")):
            out[start : start + rows.shape[0]] = rows.numpy()
        out.flush()
        del out
        self.close()
        os.replace(tmp, self.path)
        self.rows = m
        self.fd = os.open(self.path, os.O_RDWR)

    def tensor(self, m: int) -> torch.Tensor:
        """The first ``m`` rows as a memory-mapped (copy-on-write) tensor."""
        self.truncate(m)
        return torch.from_numpy(np.load(self.path, mmap_mode="c"))

    def sync(self) -> None:
        if self.fd is not None:
            os.fsync(self.fd)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def _check_open(self) -> None:
        if self.fd is None:
            raise ValueError(f"the Lanczos basis file {self.path} is closed")

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


class BlockBasis:
    """The bases of ``b`` side-by-side recurrences, ``steps`` rows of length ``n`` each.

    Args:
        mode: ``"memory"`` keeps the rows in the recurrence ``dtype`` on its device;
            ``"float32"`` keeps them in float32 (half the memory of float64; the basis
            is then orthogonal to about 1e-7, which bounds how accurately interior
            Ritz values separate) and reorthogonalises with float32 products;
            ``"disk"`` writes them to ``.npy`` files in ``directory`` and reads them back
            chunk by chunk (block modified Gram-Schmidt), so resident memory no longer
            grows with the number of steps.
        directory: where ``"disk"`` puts its files (``lanczos_vec_<name>.npy.partial``);
            default a fresh temporary directory, removed with the files.
        names: one name per recurrence for its disk file.
    """

    def __init__(
        self,
        b: int,
        steps: int,
        n: int,
        *,
        dtype: torch.dtype,
        device: torch.device,
        mode: str = "memory",
        directory: str | os.PathLike | None = None,
        names: list[str] | None = None,
    ) -> None:
        if mode not in BASIS_MODES:
            raise ValueError(f"basis must be one of {list(BASIS_MODES)}, got {mode!r}")
        if mode == "disk" and dtype != torch.float64:
            raise ValueError("basis='disk' stores float64 rows; use it with dtype=float64")
        self.mode, self.b, self.steps, self.n = mode, b, steps, n
        self.dtype, self.device = dtype, device
        self.files: list[DiskRows] = []
        self._tmpdir: tempfile.TemporaryDirectory | None = None
        if mode == "disk":
            if directory is None:
                self._tmpdir = tempfile.TemporaryDirectory(prefix="spectorch-basis-")
                directory = self._tmpdir.name
            directory = Path(directory)
            directory.mkdir(parents=True, exist_ok=True)
            names = names or [str(d) for d in range(b)]
            self.files = [
                DiskRows(directory / f"lanczos_vec_{name}.npy.partial", steps, n) for name in names
            ]
            self.Q = None
        else:
            store = dtype if mode == "memory" else torch.float32
            self.Q = torch.zeros(b, steps, n, dtype=store, device=device)

    def set(self, j: int, rows: torch.Tensor) -> None:
        """Store row ``j`` of every recurrence from ``rows`` of shape ``(b, n)``."""
        if self.Q is not None:
            self.Q[:, j] = rows.to(self.Q.dtype)
        else:
            for d, f in enumerate(self.files):
                f.write(j, rows[d])

    def orthogonalize(self, w: torch.Tensor, m: int) -> torch.Tensor:
        """``w`` (``(b, n)``) minus its projections on rows ``0..m-1``, twice."""
        for _ in range(2):
            if self.mode == "memory":
                Q = self.Q[:, :m]
                w = w - torch.einsum("bkn,bk->bn", Q, torch.einsum("bkn,bn->bk", Q, w))
            elif self.mode == "float32":
                w = self._orthogonalize_float32(w, m)
            else:
                w = w.clone()
                for d, f in enumerate(self.files):
                    for _, rows in f.chunks(m, w.device):
                        w[d] -= rows.T @ (rows @ w[d])
        return w

    def _orthogonalize_float32(self, w: torch.Tensor, m: int) -> torch.Tensor:
        # The rows are only float32-accurate, so float32 BLAS products lose nothing
        # more: c = Q w from w rounded to float32, then w -= Qᵀc added in w's dtype.
        Q = self.Q[:, :m]
        c = torch.einsum("bkn,bn->bk", Q, w.to(torch.float32))
        return w - torch.einsum("bkn,bk->bn", Q, c).to(w.dtype)

    def result(self, d: int, m: int) -> tuple[torch.Tensor, DiskRows | None]:
        """Recurrence ``d``'s first ``m`` rows, and its disk file if any."""
        if self.Q is not None:
            return self.Q[d, :m], None
        f = self.files[d]
        return f.tensor(m), f

    def discard(self) -> None:
        """Remove the disk files (after a failure, or for a temporary directory)."""
        for f in self.files:
            f.close()
            with contextlib.suppress(FileNotFoundError):
                f.path.unlink()
