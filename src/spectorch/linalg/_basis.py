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

#: where the Lanczos vectors are kept: in the recurrence's dtype ("memory"), as float32
#: rows ("float32"), in a file ("disk"), or "auto": float32 rows where the products are
#: float32 and only T is wanted, else "memory" (spectorch.linalg.resolve_basis)
BASIS_MODES = ("auto", "memory", "float32", "disk")
_STORED = BASIS_MODES[1:]
# Temporary float64 working set of one reorthogonalisation chunk (disk mode).
_CHUNK_BYTES = 64 << 20
# The float32 rows converted to the recurrence dtype a column chunk at a time for each
# Gram-Schmidt product: on a CPU a chunk that stays in the cache between its conversion
# and its product; on a GPU a larger one (within an H100/H200's 50 MB L2), for fewer
# kernel launches (not measured on a GPU yet).
_CONVERT_BYTES = {"cpu": 4 << 20}
_CONVERT_BYTES_ELSE = 32 << 20
# DGKS: a second pass when a first one shrank the vector below this fraction.
_DGKS = 0.5**0.5


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

    def chunks(self, m: int, device: torch.device, start: int = 0):
        """``(first, rows)`` blocks of rows ``start..m-1``, as float64 tensors on ``device``."""
        for first in range(start, m, self.rows_per_chunk):
            stop = min(m, first + self.rows_per_chunk)
            yield first, torch.from_numpy(self.read(first, stop)).to(device)

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
            Ritz values separate) and reorthogonalises with coefficients in the
            recurrence ``dtype``, converting the rows a column chunk at a time
            (summed in float32 they would add float32 round-off at every pass), and
            the update from the float32 rows as stored;
            ``"disk"`` writes them to ``.npy`` files in ``directory`` and reads them back
            chunk by chunk (block modified Gram-Schmidt), so resident memory no longer
            grows with the number of steps.
        directory: where ``"disk"`` puts its files (``lanczos_vec_<name>.npy.partial``);
            default a fresh temporary directory, removed with the files.
        names: one name per recurrence for its disk file.
        out: with ``"memory"`` or ``"float32"``, a ``(b, steps, n)`` tensor of the
            stored dtype to keep the rows in instead of a new one (checked by
            :func:`~spectorch.linalg.lanczos_block`, which takes it as ``workspace``).
        window: with ``"float32"`` or ``"disk"``, a contiguous ``(b, 2, n)`` tensor of
            ``dtype`` on ``device`` for the last two vectors instead of a new one
            (``lanczos_block``'s ``scratch``).
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
        out: torch.Tensor | None = None,
        window: torch.Tensor | None = None,
    ) -> None:
        if mode not in _STORED:
            raise ValueError(f"basis must be one of {list(_STORED)}, got {mode!r}")
        if mode == "disk" and dtype != torch.float64:
            raise ValueError("basis='disk' stores float64 rows; use it with dtype=float64")
        self.mode, self.b, self.steps, self.n = mode, b, steps, n
        self.dtype, self.device = dtype, device
        self.files: list[DiskRows] = []
        self._converted: torch.Tensor | None = None  # float32 mode's conversion chunk
        self._update: torch.Tensor | None = None  # and its update chunk, float32
        #: Gram-Schmidt passes so far, and basis rows they read, per recurrence
        self.passes = [0] * b
        self.rows_read = [0] * b
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
            # every row is written (push) before it is read
            self.Q = torch.empty(b, steps, n, dtype=store, device=device) if out is None else out
            # the views a step works on, made once: row j of every recurrence
            self._rows = self.Q.unbind(1)
        if mode == "memory":
            # and rows j-1 and j of each side by side as the columns of an (n, 2) matrix
            pairs = [self.Q[d].unfold(0, 2, 1) for d in range(b)] if steps > 1 else []
            self._pairs = [p.unbind(0) for p in pairs]
        else:
            # the last two vectors in the recurrence dtype, row k in slot k % 2 (the
            # stored rows are float32 or on disk): the columns of an (n, 2) matrix, so
            # that the recurrence takes both terms in one pass over w, as in memory mode
            if window is None:
                window = torch.empty(b, 2, n, dtype=dtype, device=device)
            self._slots = window.unbind(1)
            self._window = [window[d].T for d in range(b)]

    def set(self, j: int, rows: torch.Tensor) -> None:
        """Store row ``j`` of every recurrence from ``rows`` of shape ``(b, n)``."""
        if self.Q is not None:
            # converted as it is copied: no temporary (at 10⁷ entries a new one is
            # 40 MB of fresh memory a step)
            self._rows[j].copy_(rows)
        else:
            for d, f in enumerate(self.files):
                f.write(j, rows[d])

    def push(self, j: int, w: torch.Tensor, scale: list[float]) -> torch.Tensor:
        """Store ``w`` times ``scale`` (one factor per row: the reciprocals of the
        norms) as row ``j`` and return it in the recurrence dtype: in ``"memory"``
        mode a view of the stored rows, written in one pass; otherwise a view of the
        window of the last two vectors, then converted into the stored row. ``w`` is
        left as it was. A product with the reciprocal rather than a division: on the
        CPU a division costs several times a product's arithmetic."""
        factor = scale[0] if self.b == 1 else w.new_tensor(scale)[:, None]
        if self.mode == "memory":
            out = self._rows[j]
            torch.mul(w, factor, out=out)
            return out
        out = self._slots[j % 2]  # over row j − 2, no longer needed
        torch.mul(w, factor, out=out)
        self.set(j, out)
        return out

    def recurrence(
        self,
        w: torch.Tensor,
        j: int,
        q: torch.Tensor,
        q_prev: torch.Tensor,
        coef: torch.Tensor,
    ) -> None:
        """The three-term recurrence in place: ``w -= α q + β q_prev`` with ``coef`` the
        ``(b, 2)`` coefficients ``(β, α)`` (no ``β`` term at ``j = 0``). ``q`` and
        ``q_prev`` are side by side, so both terms go in one pass over ``w``: rows
        ``j − 1`` and ``j`` of the basis in ``"memory"`` mode, else the window's two
        slots, in the order ``(q_prev, q)`` for odd ``j`` and ``(q, q_prev)`` for even
        ``j`` (the coefficients reversed)."""
        if j == 0:
            w.addcmul_(q, coef[:, 1:], value=-1.0)
        elif self.mode == "memory":
            for d in range(self.b):
                w[d].addmv_(self._pairs[d][j - 1], coef[d], alpha=-1.0)
        else:
            for d in range(self.b):
                c = coef[d] if j % 2 else coef[d].flip(0)
                w[d].addmv_(self._window[d], c, alpha=-1.0)

    def orthogonalize(
        self,
        w: torch.Tensor,
        m: int,
        norms: list[float] | None,
        rows: list[int] | None = None,
        spans: dict[int, list[tuple[int, int]]] | None = None,
        read: torch.Tensor | None = None,
    ) -> tuple[list[float], list[float] | None]:
        """Remove from ``w`` (``(b, n)``, in place) its projections on rows ``0..m-1``.

        One classical Gram-Schmidt pass (two reads of the basis), and a second one only
        for a row whose norm fell below ``1/√2`` of its norm before (Daniel, Gragg,
        Kaufman & Stewart 1976): a pass that removed little left ``w`` orthogonal to
        working precision, one that removed much may have lost digits to cancellation.

        Args:
            norms: the rows' norms before, as Python floats; ``None``: not computed,
                the norm before a pass is then ``√(after² + ‖c‖²)`` with ``c`` the
                removed coefficients (Pythagoras; the basis rows are orthonormal),
                which saves a pass over ``w``.
            rows: the recurrences to orthogonalise; default all ``b``.
            spans: per recurrence, the ``[start, stop)`` ranges of basis rows to
                orthogonalise against (partial reorthogonalisation); default all ``m``.
            read: a ``(b,)`` tensor to read to the host along with the first pass's
                norms, in the same transfer (Lanczos's ``α``: on a GPU each read waits
                for the device).

        Returns:
            The rows' norms after, as Python floats (``norms``, or zero without them,
            where a row was left alone), and ``read``'s values (``None`` without it).
            Each pass is counted in :attr:`passes` and the basis rows it read in
            :attr:`rows_read`.
        """
        given = norms is not None
        rows = list(range(self.b)) if rows is None else rows
        floats = list(norms) if given else [0.0] * self.b
        values = None
        for d in rows:
            ranges = [(0, m)] if spans is None else spans[d]
            before = floats[d] if given else None
            for second in (False, True):
                parts = [self._pass(w, d, start, stop) for start, stop in ranges]
                self.rows_read[d] += sum(stop - start for start, stop in ranges)
                self.passes[d] += 1
                after = torch.linalg.vector_norm(w[d], dim=0, keepdim=True)
                # the test on Python floats, one transfer with the coefficients removed
                # where the norm before is inferred from them (a step of a small
                # operator is otherwise dominated by tiny tensor operations, and on a
                # GPU each read waits for the device)
                extra = [read] if read is not None and values is None else []
                coefficients = parts if before is None else []
                got = torch.cat([after, *coefficients, *extra]).tolist()
                k = 1 + sum(len(c) for c in coefficients)  # the norm, the coefficients
                if extra:
                    values = got[k:]
                floats[d] = got[0]
                if second:
                    break
                if before is None:  # Pythagoras: ‖w‖² = ‖w − Qᵀc‖² + ‖c‖²
                    before = (got[0] ** 2 + sum(x * x for x in got[1:k])) ** 0.5
                if not got[0] < _DGKS * before:
                    break
        return floats, values

    def _pass(self, w: torch.Tensor, d: int, start: int, stop: int) -> torch.Tensor:
        """One classical Gram-Schmidt pass of row ``d`` of ``w`` against basis rows
        ``start..stop-1``; returns ``c``, the coefficients removed (in ``w``'s dtype)."""
        x = w[d]
        if self.mode == "memory" or (self.Q is not None and self.Q.dtype == x.dtype):
            Q = self.Q[d, start:stop]
            c = torch.mv(Q, x)
            x.addmv_(Q.T, c, alpha=-1.0)
            return c
        if self.mode == "float32":  # (a float32 recurrence takes the branch above)
            return self._converted_pass(x, self.Q[d, start:stop])
        # block modified Gram-Schmidt over the chunks read back from disk
        removed = []
        for _, chunk in self.files[d].chunks(stop, x.device, start=start):
            c = torch.mv(chunk, x)
            x.addmv_(chunk.T, c, alpha=-1.0)
            removed.append(c)
        return torch.cat(removed) if removed else x.new_zeros(0)

    def _converted_pass(self, x: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
        """Classical Gram-Schmidt of ``x`` against the float32 rows ``Q``: the
        coefficients ``c = Q x`` in ``x``'s dtype, the rows converted a column chunk at
        a time (exact in it), and the update ``x -= Qᵀ c`` from the float32 rows as they
        are, ``c`` rounded to float32. Coefficients accumulated in float32 (a sum over
        ``n`` entries) left the Ritz values of a float32 network 7-124x less accurate
        than a float64 basis gives (``benchmarks/accuracy_basis.py``); the update's
        float32 round-off is ``eps32`` relative to ``‖Qᵀc‖ <= ‖c‖``, which is small but
        after a cancellation (and DGKS's second pass then removes what it left), below
        the rounding the float32 rows carry themselves. Converting the rows for the
        update too made a pass cost about twice a float64 basis's."""
        m, n = Q.shape
        limit = _CONVERT_BYTES.get(x.device.type, _CONVERT_BYTES_ELSE) // x.element_size()
        cols = max(1, min(n, limit // m))
        if self._converted is None or self._converted.numel() < m * cols:
            self._converted = torch.empty(m * cols, dtype=x.dtype, device=x.device)
        c = torch.zeros(m, dtype=x.dtype, device=x.device)
        for a in range(0, n, cols):  # the coefficients, in x's dtype
            b = min(n, a + cols)
            chunk = self._converted[: m * (b - a)].view(m, b - a)
            chunk.copy_(Q[:, a:b])
            c.addmv_(chunk, x[a:b])
        c32 = c.to(Q.dtype)
        if self._update is None or self._update.numel() < cols:
            self._update = torch.empty(cols, dtype=Q.dtype, device=x.device)
        for a in range(0, n, cols):  # the update, from the rows as stored
            b = min(n, a + cols)
            u = self._update[: b - a]
            torch.mv(Q[:, a:b].T, c32, out=u)
            x[a:b].sub_(u)
        return c

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
