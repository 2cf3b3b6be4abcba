"""Speed and memory from 10^4 to 10^8 parameters: gradient, Hessian product (graphs
kept and not), Lanczos step and peak memory, for spectorch and each peer, on MLPs, CNNs
and GPTs.

    python benchmarks/bench_scale.py --out benchmarks/out/scale

One row per (family, size). Each row runs in its own process (so that its peak memory
is its own) and is appended to ``<out>/results.jsonl``; a rerun skips the rows already
there with the same settings, so an interrupted run resumes; each row records its host
(the CPU's model name, or the GPU's), and a row that another host measured is measured
again. ``--report`` prints the tables of docs/benchmarks.md from that file, ending with
step/product by family and size and the hosts, ``--report-from a,b,...`` one table from
several such files (or rows printed by ``--row``), whatever their settings, and with
``--pooled`` also the median step/product over every Lanczos run the files hold for
each row in several of them (a row measured again with more runs).

The models (float32, eval mode) and data, all generated or shipped with scikit-learn:

* ``mlp``: digits (64 pixels) through three ReLU layers of one width to 10 classes;
* ``cnn``: digits as 8x8 images, three 3x3 convolutions with BatchNorm and ReLU, global
  average pooling, a linear read-out;
* ``gpt``: spectorch's GPT (byte vocabulary, 64-byte windows of the standard library's
  source), the next-byte loss; everything runs in scaled_dot_product_attention's math
  kernel, since the CPU's default one has no second derivative and the peers fail
  with it.

The data of a row is one batch, the same for every library; the largest sizes use fewer
samples and fewer Lanczos steps (the table says how many; ``--steps`` sets every row's,
such as a density's default 90, and ``--samples`` every row's data). Timings are CPU
time (``time.process_time``) on one thread, every library timed once per round with the
rounds interleaved, medians reported (5 product rounds, 3 from 10^7 on; Lanczos runs in
every round up to 10^5, two rounds at 10^6, one above, or ``--lanczos-rounds``; each
run's step is in the results file too); each product timing is the mean of enough
products in a row for 0.3 s (at most 15), as a run's step is a mean. "step" is a Lanczos
run of the row's steps (the library's own Lanczos with full reorthogonalisation;
spectorch's also with ``reorth="partial"``, the density's default on these operators)
divided by its steps, with a new basis as a density's first draw has; spectorch's are
also timed as a density's later draws (``spectorch-draw-full``,
``spectorch-draw-partial``: the run into basis rows written before, as
``spectral_density`` runs its draws after the first; the rows are held only around those
runs, and every run's basis is freed before the products after it); "step/product"
divides each run's step by the same library's product timed just before and just after
that run (their mean), and reports the median over the runs: the machine's speed drifts
between rounds by more than a step's own work, and a run drifts with the products around
it.
Spectorch's products inside its runs are timed too: "own work" is the run less those
products, per step, and "1 + own/product" the step/product that work makes.
Peak memory is the resident set above the start, sampled every 2 ms, in a second
process per row with a fixed glibc mmap threshold. ``--allocator keep`` times the rows
with glibc serving every allocation from its heap and keeping what is freed, so a
product's temporaries reuse memory already written instead of fresh pages (the remedy
``bench_held_memory.py`` measures for the 10^8 rows); its rows are kept apart from the
default's in the results file. ``--basis float32`` keeps spectorch's Lanczos rows
in float32 (``lanczos(basis="float32")``: half the memory, reorthogonalised in
float64), likewise kept apart; ``--basis auto`` as the density does by default
(``basis="auto"``: float32 rows with partial reorthogonalisation on these float32
networks, float64 rows with full). ``--one-graph`` holds one library's kept gradient
graph at a time (spectorch's, PyHessian's ``data=`` path's), each built again, untimed,
before its library is timed after the other's: for a row where both graphs and a
Lanczos basis do not fit in memory together (the GPT at 10^8 with its 32 windows on
23 GB); its rows are kept apart too, and each says whether every spectorch operator it
built kept its graphs (``cached``).

``--device cuda`` runs the rows on the first GPU: times are wall time with the device
synchronised before and after each timed call, every library runs one Lanczos run as
a warm-up and the Lanczos runs are timed in every round, and peak memory is CUDA's
allocator peak above the start of the call, in the same process (its rows are kept
apart from the CPU's in the results file).

Peers are skipped when not installed: ``pip install --pre hessian-eigenthings
pyhessian curvlinops-for-pytorch``; one that fails in its warm-up is left out of the
row, and the row names it and the error.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from bench_hessian import PeakMemory, _torch_eig_stand_in
from bench_transformer import Flat
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from spectorch.curvature import HessianOperator
from spectorch.density import draw_generator
from spectorch.linalg import lanczos, lanczos_block, random_start, resolve_basis

F64 = torch.float64
SIZES = ("1e4", "1e5", "1e6", "1e7", "1e8")
FAMILIES = ("mlp", "cnn", "gpt")
PEERS = ("hessian-eigenthings", "pyhessian", "pyhessian-loader", "curvlinops")
#: samples (sequences of 64 bytes for the GPT) and Lanczos steps per size
#: results measured since partial reorthogonalisation's estimates take the products'
#: round-off at the operator's precision (a float32 network's) and the loss between
#: neighbours at the basis's (sixteenth round) carry this in their settings; those of the
#: fifteenth round carry "coarsest precision" (float32's for both: a pass on every step
#: from about 8·10^6 parameters), those before no key (float64's for both: passes skipped).
#: With float64 rows (every results file before ``--basis``) "the basis's" precision is
#: the recurrence's, which is what the neighbours take with float32 rows too since the
#: twentieth round; rows with ``--basis float32`` all date from after it
PARTIAL_ESTIMATES = "operator precision, neighbours in the basis's"
_FIFTEENTH_ESTIMATES = "coarsest precision"
#: how step/product is measured: each Lanczos run over the mean of its library's product
#: timed just before and just after it, the median of those ratios; each product timing
#: the mean of enough products in a row for 0.3 s (at most 15). Rows measured before it
#: divided the median step by the median product over all rounds
PAIRING = "each run over the mean products around it"
SAMPLES = {
    "mlp": {"1e4": 1797, "1e5": 1797, "1e6": 1797, "1e7": 1797, "1e8": 1797},
    "cnn": {"1e4": 512, "1e5": 256, "1e6": 64, "1e7": 32, "1e8": 32},
    "gpt": {"1e4": 16, "1e5": 16, "1e6": 16, "1e7": 32, "1e8": 32},
}
#: scikit-learn's digits: the MLPs' and the CNNs' data (the GPTs' windows have no bound
#: here: the standard library's source holds far more)
DIGITS = 1797
STEPS = {"1e4": 30, "1e5": 30, "1e6": 30, "1e7": 20, "1e8": 8}


#: where the rows run (``--device``): on the CPU the clock is CPU time, on a GPU the
#: wall clock after synchronising the device
DEVICE = torch.device("cpu")


def _clock() -> float:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)
        return time.perf_counter()
    return time.process_time()


# ---------------------------------------------------------------------- models
class MLP(nn.Sequential):
    def __init__(self, width: int) -> None:
        super().__init__(
            nn.Linear(64, width), nn.ReLU(),
            nn.Linear(width, width), nn.ReLU(),
            nn.Linear(width, width), nn.ReLU(),
            nn.Linear(width, 10),
        )  # fmt: skip


class CNN(nn.Sequential):
    def __init__(self, channels: int) -> None:
        c = channels
        super().__init__(
            nn.Conv2d(1, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
            nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
            nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10),
        )  # fmt: skip


def _width(target: float, count: Any) -> int:
    """The smallest width whose parameter count reaches ``target``."""
    lo, hi = 1, 1
    while count(hi) < target:
        hi *= 2
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if count(mid) < target else (lo, mid)
    return lo


def build(
    family: str, size: str, samples: int | None = None
) -> tuple[nn.Module, nn.Module, Any, Any, dict]:
    """``(model, the model the peers see, batch, spectorch's loss, description)``.
    The model is deterministic (seed 0) and untrained: the benchmark is about cost.
    ``samples``: digits, images or windows instead of the row's own (SAMPLES)."""
    torch.manual_seed(0)
    target = float(size)
    samples = SAMPLES[family][size] if samples is None else samples
    if family in ("mlp", "cnn") and not 1 <= samples <= DIGITS:
        raise ValueError(f"samples must be between 1 and {DIGITS} (the digits), got {samples}")
    if family in ("mlp", "cnn"):
        from sklearn.datasets import load_digits

        X, y = load_digits(return_X_y=True)
        x = torch.tensor(X[:samples] / 16.0, dtype=torch.float32)
        t = torch.tensor(y[:samples])
        if family == "mlp":
            w = _width(target, lambda w: 2 * w * w + 77 * w + 10)
            model, what = MLP(w), f"width {w}"
        else:
            w = _width(target, lambda c: 18 * c * c + 9 * c + 6 * c + 10 * c + 10)
            model, what = CNN(w), f"{w} channels"
            x = x.reshape(-1, 1, 8, 8)
            for m in model.modules():  # statistics of a trained network, not 0 and 1
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.5, 2.0)
        batch, loss = (x, t), nn.CrossEntropyLoss()
        peer_model = model
    else:
        from spectorch.curvature import CausalLM
        from spectorch.data import byte_tokens, python_source, text_windows
        from spectorch.nn import GPT, GPTConfig

        def config(layers: int, d: int) -> GPTConfig:
            heads = max(1, d // 32)  # heads of width 32 (one below width 32)
            return GPTConfig(n_positions=64, n_layer=layers, n_head=heads, n_embd=d)

        def count(shape: tuple[int, int]) -> int:
            layers, d = shape
            return 12 * layers * d * d + (256 + 64) * d

        # the deepest (layers, width) within 10% of the target (else the nearest), at
        # most 12 layers and no deeper than one layer per 64 of width (two below 128)
        shapes = [(n, d) for d in [*range(8, 64, 8), *range(64, 4097, 32)]
                  for n in range(1, 13) if n <= max(2, d // 64)]  # fmt: skip
        near = [s for s in shapes if abs(count(s) / target - 1) <= 0.1]
        if near:
            layers, d = max(near, key=lambda s: (s[0], -s[1]))
        else:
            layers, d = min(shapes, key=lambda s: abs(math.log(count(s) / target)))
        cfg = config(layers, d)
        model = GPT(cfg)
        ids = text_windows(byte_tokens(python_source(limit=64 * samples)), 64)
        batch, loss = ids, CausalLM()
        peer_model = Flat(model)
        what = f"{layers} layers, width {d}"
    model.float().eval().to(DEVICE)
    batch = batch.to(DEVICE) if family == "gpt" else tuple(b.to(DEVICE) for b in batch)
    params = sum(p.numel() for p in model.parameters())
    desc = {"family": family, "size": size, "parameters": params, "model": what,
            "samples": samples, "steps": STEPS[size], "device": DEVICE.type}  # fmt: skip
    return model, peer_model, batch, loss, desc


# ---------------------------------------------------------------------- libraries
def libraries(
    model,
    peer_model,
    batch,
    loss,
    family: str,
    steps: int,
    peers: list[str],
    basis: str = "memory",
    one_graph: bool = False,
) -> dict:
    """``{name: {"product": f, "lanczos": f or None}}`` on the same model and data;
    spectorch's Lanczos runs keep their rows as ``basis`` says (``lanczos``'s
    ``basis``: ``"memory"``, float64 rows, ``"float32"``, or ``"auto"``, the
    density's default: float32 rows with partial reorthogonalisation on these float32
    networks, float64 ones with full). The libraries that keep a gradient graph
    (spectorch's ``"auto"`` operator, PyHessian's ``data=``) carry ``"kept"``: how
    :func:`_hold_graph` builds it again and frees it; with ``one_graph`` it does, so
    that only one such graph is held at a time (PyHessian's is then built at its first
    use), else every graph is kept for the whole row."""
    params = [p for p in model.parameters() if p.requires_grad]
    dim = sum(p.numel() for p in params)
    v64 = torch.randn(dim, generator=torch.Generator().manual_seed(0), dtype=F64)
    v64 = (v64 / v64.norm()).to(DEVICE)
    v32 = v64.float()
    if family == "gpt":
        inputs, targets = batch, batch[:, 1:].reshape(-1)
    else:
        inputs, targets = batch
    ce = nn.CrossEntropyLoss()
    libs: dict[str, dict[str, Any]] = {}
    data = [batch]

    def gradient() -> Any:
        out = peer_model(inputs)
        return torch.autograd.grad(ce(out, targets), params)

    libs["gradient"] = {"product": gradient, "lanczos": None}
    for name, cache in (("spectorch", "auto"), ("spectorch-nocache", False)):
        op = HessianOperator(model, loss, data, cache_graphs=cache)
        # the functions read the operator from the row's entry: --one-graph replaces it
        lib = libs[name] = {"op": op}
        lib["product"] = lambda lib=lib: lib["op"].matvec(v64)
        if cache:

            def remake(lib: dict = lib) -> None:
                # graphs kept or not as the row's first operator ("auto") decided, with
                # only the models and the data in memory: a later one's budget reads the
                # memory available when it is built, and on the GPT at 1e8 (graphs near a
                # quarter of 23 GB) one stopped keeping graphs in a round of the first
                # --one-graph row, while the others kept them
                first = lib["cached"][0]  # the first operator's, recorded when it was freed
                lib["op"] = HessianOperator(model, loss, data, cache_graphs=first)
                lib["op"].matvec(v64)  # its graphs kept here, untimed

            def free(lib: dict = lib) -> None:
                lib["cached"].append(lib["op"].caching)
                lib["op"] = None

            lib["kept"] = {"make": remake, "free": free}
            lib["cached"] = []  # whether each operator the row used kept every graph
            lib["lanczos"] = lambda lib=lib: lanczos(lib["op"], steps, seed=0, basis=basis)
            libs["spectorch-partial"] = {
                "product": None,
                "lanczos": lambda lib=lib: lanczos(
                    lib["op"], steps, seed=0, reorth="partial", basis=basis
                ),
                "of": name,
            }
            # a density's draws after its first: into the basis rows it already wrote,
            # held only around those draws (with a new basis too, the GPT at 10^8 is
            # more than the machine's 23 GB)
            rows = []
            for mode in ("full", "partial"):
                kept = torch.float32 if resolve_basis(basis, op, mode) == "float32" else F64
                libs[f"spectorch-draw-{mode}"] = {
                    "product": None,
                    "lanczos": lambda lib=lib, m=mode, r=rows: _density_draw(
                        lib["op"], steps, r, m
                    ),
                    "prepare": lambda rows=rows, k=kept: _written_rows(rows, steps, dim, k),
                    "release": lambda rows=rows: _released(rows),
                    "of": name,
                }
        else:
            libs[name]["lanczos"] = None
    vl = list(v32.split([p.numel() for p in params]))
    vl = [x.reshape(p.shape) for x, p in zip(vl, params, strict=True)]
    for name in peers:
        try:
            if name == "hessian-eigenthings":
                import hessian_eigenthings as he

                def he_loss(m: nn.Module, b: Any) -> torch.Tensor:
                    x, t = (b, b[:, 1:].reshape(-1)) if family == "gpt" else b
                    return ce(m(x), t)

                op = he.HessianOperator(peer_model, data, he_loss)
                v0 = torch.randn(dim, generator=torch.Generator().manual_seed(1)).to(DEVICE)
                libs[name] = {
                    "product": lambda op=op: op.matvec(v32),
                    "lanczos": lambda op=op, v0=v0: he.lanczos_tridiagonal(
                        op, v0, steps, reorthogonalize=True
                    ),
                }
            elif name in ("pyhessian", "pyhessian-loader"):
                from pyhessian import hessian as pyhessian_hessian
                from pyhessian.utils import hessian_vector_product

                torch.eig = _torch_eig_stand_in  # torch.eig exists only to raise since 2.0
                cuda = DEVICE.type == "cuda"
                # PyHessian differentiates its gradient in .grad: none may be left there
                peer_model.zero_grad(set_to_none=True)
                if name == "pyhessian":  # data=: its gradient's graph kept for good
                    lib = libs[name] = {}

                    def build(lib: dict = lib, cuda: bool = cuda) -> None:
                        peer_model.zero_grad(set_to_none=True)
                        xy = (inputs, targets)
                        lib["c"] = pyhessian_hessian(peer_model, ce, data=xy, cuda=cuda)

                    def free(lib: dict = lib) -> None:
                        lib["c"] = None  # and its gradient, whose graph .grad holds
                        peer_model.zero_grad(set_to_none=True)

                    lib["kept"] = {"make": build, "free": free}
                    lib["c"] = None
                    if not one_graph:
                        build()
                    lib["product"] = lambda lib=lib: hessian_vector_product(
                        lib["c"].gradsH, lib["c"].params, vl
                    )
                    lib["lanczos"] = lambda lib=lib: lib["c"].density(iter=steps, n_v=1)
                else:  # dataloader=: the graph built again in every product
                    c = pyhessian_hessian(peer_model, ce, dataloader=[(inputs, targets)], cuda=cuda)
                    libs[name] = {
                        "product": lambda c=c: c.dataloader_hv_product(vl),
                        "lanczos": lambda c=c: c.density(iter=steps, n_v=1),
                    }
            elif name == "curvlinops":
                from curvlinops import HessianLinearOperator
                from curvlinops.papyan2020traces.spectrum import lanczos_approximate_spectrum

                H = HessianLinearOperator(
                    peer_model, ce, params, [(inputs, targets)], check_deterministic=False
                )
                libs[name] = {
                    "product": lambda H=H: H @ v32,
                    "lanczos": lambda H=H: lanczos_approximate_spectrum(
                        H, steps, boundaries=(-1.0, 1.0)
                    ),
                }
            else:
                raise SystemExit(f"unknown peer {name!r}")
        except ImportError:
            print(f"{name} is not installed: skipped", file=sys.stderr)
    for lib in libs.values():
        if "kept" in lib:
            lib["kept"]["one"] = one_graph
    return libs


# ---------------------------------------------------------------------- one row
def _held(lib: dict) -> bool:
    """Whether a library's kept graph (``"kept"``) is built: spectorch's operator, or
    PyHessian's object."""
    return lib.get("op", lib.get("c")) is not None


def _hold_graph(libs: dict, name: str) -> bool:
    """``--one-graph``: before ``name`` is timed, build the kept gradient graph of the
    library it times (its ``"of"``) if it was freed, freeing every other library's
    first, so that only one is held at a time (a library that keeps none changes
    nothing); whether a graph was built. Without ``--one-graph`` nothing is freed."""
    owner = libs[libs[name].get("of", name)]
    if "kept" not in owner or not owner["kept"]["one"] or _held(owner):
        return False
    for lib in libs.values():
        if lib is not owner and "kept" in lib and _held(lib):
            lib["kept"]["free"]()
    gc.collect()
    owner["kept"]["make"]()
    return True


def _written_rows(rows: list, steps: int, dim: int, kept: torch.dtype = F64) -> bool:
    """The basis rows of a density's draws, of dtype ``kept`` (float32 for float32
    rows), and their working vectors, written (as its first draw does) into ``rows``
    (a list: the rows, the scratch dict) unless it holds such rows already (with
    ``--basis auto`` full reorthogonalisation's draws keep float64 rows and partial's
    float32 ones: each writes its own before its run, the other's freed first);
    whether they were."""
    if rows and rows[0].dtype == kept:
        return False
    rows.clear()
    rows.append(torch.empty(1, steps, dim, dtype=kept, device=DEVICE).fill_(0.0))
    # and the working vectors of the draws before (lanczos_block's scratch), written too
    zeros = lambda *shape: torch.zeros(*shape, dtype=F64, device=DEVICE)  # noqa: E731
    scratch = {"products": zeros(1, dim)}
    if kept != F64:  # float32 rows: the window of the last two vectors (the start in its first)
        scratch["window"] = zeros(1, 2, dim)
    rows.append(scratch)
    return True


def _released(rows: list) -> bool:
    """Free the rows of ``_written_rows``; whether there were any."""
    held = bool(rows)
    rows.clear()
    return held


def _hold_rows(libs: dict, name: str) -> bool:
    """Hold a density's basis rows for its draws' runs (``prepare``), and free them for
    every other run (``release``); whether that changed the memory held."""
    if "prepare" in libs[name]:
        return libs[name]["prepare"]()
    return any([lib["release"]() for lib in libs.values() if "release" in lib])


def _density_draw(op: Any, steps: int, rows: list, reorth: str) -> Any:
    """One draw of ``spectral_density`` after its first: its start drawn into the first
    of the rows the earlier draws wrote, the Lanczos run into them (its workspace), its
    working vectors those of the draws before (its scratch)."""
    workspace, scratch = rows
    if workspace.dtype == F64:  # drawn straight into the first row, as the density does
        start = workspace[:, 0]
        basis = "memory"
    else:  # float32 rows: drawn into the first slot of the window of the last two vectors
        if "window" not in scratch:
            scratch["window"] = torch.empty(1, 2, op.shape[0], dtype=F64, device=workspace.device)
        start = scratch["window"][:, 0]
        basis = "float32"
    random_start(op.shape[0], kind="rademacher", generator=draw_generator(0, 1), out=start[0])
    return lanczos_block(
        op, steps, start, reorth=reorth, basis=basis, workspace=workspace, scratch=scratch
    )[0]


def measure_row(
    family: str,
    size: str,
    rounds: int,
    peers: list[str],
    memory: bool,
    lanczos_rounds: int | None = None,
    steps: int | None = None,
    basis: str = "memory",
    samples: int | None = None,
    one_graph: bool = False,
) -> dict:
    torch.set_num_threads(1)
    model, peer_model, batch, loss, desc = build(family, size, samples)
    if steps is not None:  # --steps: instead of the size's own (STEPS)
        desc["steps"] = steps
    steps = desc["steps"]

    def kernel() -> Any:
        return sdpa_kernel(SDPBackend.MATH) if family == "gpt" else nullcontext()

    with kernel():
        libs = libraries(model, peer_model, batch, loss, family, steps, peers, basis, one_graph)
        if memory:  # a density's draw holds its basis from before: no step memory
            peaks = {}
            for name, lib in libs.items():
                if "prepare" not in lib:
                    _hold_graph(libs, name)
                    peaks[name] = _memory(lib)
            return peaks
        # warm-up (spectorch's graphs are kept from here on; on a GPU a Lanczos run too,
        # for the allocator and the kernels' first launches); a peer that fails is left
        # out of the row and named in it
        skipped = {}
        for name, lib in list(libs.items()):
            try:
                _hold_graph(libs, name)
                if lib["product"] is not None:
                    lib["product"]()
                if DEVICE.type == "cuda" and lib.get("lanczos") is not None:
                    _hold_rows(libs, name)
                    lib["lanczos"]()
            except Exception as e:
                if name not in PEERS:
                    raise
                print(f"{name} failed: {e!r}: left out", file=sys.stderr)
                skipped[name] = repr(e)[:300]
                del libs[name]
        product = {name: [] for name, lib in libs.items() if lib["product"] is not None}
        step = {name: [] for name, lib in libs.items() if lib.get("lanczos") is not None}
        passes, own = {}, {name: [] for name in step if name.startswith("spectorch")}
        inrun = {name: [] for name in own}  # every product inside spectorch's runs
        # each Lanczos run against its library's product timed just before and just
        # after it (PAIRING): the machine's speed drifts by more than a step's own work
        # between rounds, and a run and its own products drift together
        paired = {name: [] for name in step}
        big = size in ("1e7", "1e8")
        product_rounds = min(rounds, 3) if big else rounds
        # Lanczos runs: as many rounds as products where they are cheap (on a GPU, always)
        if lanczos_rounds is None:
            lanczos_rounds = 1 if big else 2 if size == "1e6" else rounds
            if DEVICE.type == "cuda":
                lanczos_rounds = rounds
        reps = {}
        for name in product:
            _hold_graph(libs, name)
            reps[name] = _repeats(libs[name]["product"])
        for r in range(max(product_rounds, lanczos_rounds)):
            # rounds beyond the products' (--lanczos-rounds) time only Lanczos runs
            before = {}
            for name in product if r < product_rounds else ():
                _hold_graph(libs, name)
                before[name] = _timed(libs[name]["product"], reps[name])
                product[name].append(before[name])
            if r < lanczos_rounds:
                for name in step:
                    of = libs[name].get("of", name)
                    # the rows written or freed, and a kept graph built (--one-graph),
                    # before the product before the run is timed
                    changed = _hold_rows(libs, name)
                    if _hold_graph(libs, name) or changed or of not in before:
                        before[of] = _timed(libs[of]["product"], reps[of])
                    inner = _time_products(libs[of].get("op"))
                    t0 = _clock()
                    res = libs[name]["lanczos"]()
                    step[name].append((_clock() - t0) / steps)
                    times = inner()  # the products the run made, before any more
                    if name.startswith("spectorch"):
                        passes[name] = {"passes": res.reorth_passes, "rows": res.reorth_rows}
                    # a run's basis is not kept into the next: at 10^8 parameters two bases
                    # and a density's rows are more than the machine's 23 GB
                    del res
                    after = _timed(libs[of]["product"], reps[of])
                    paired[name].append(step[name][-1] / ((before[of] + after) / 2))
                    before[of] = after  # the next run's product before it
                    if name.startswith("spectorch"):
                        # the step's own work: the run less the products it made
                        inrun[name] += times
                        own[name].append(step[name][-1] - sum(times) / steps)
    results: dict[str, dict[str, Any]] = {}
    for name, lib in libs.items():
        r: dict[str, Any] = {}
        if name in product:
            r["product_s"] = statistics.median(product[name])
        if name in step:
            r["step_s"] = statistics.median(step[name])
            prod = statistics.median(product[lib.get("of", name)])
            r["step_over_product"] = statistics.median(paired[name])
            r["step_over_product_runs"] = paired[name]
            r["step_runs_s"] = step[name]
            if own.get(name):
                r["own_s"] = statistics.median(own[name])
                r["own_over_product"] = r["own_s"] / prod
            if inrun.get(name):
                r["inrun_product_s"] = statistics.median(inrun[name])
        if name in passes:
            r.update(passes[name])
        results[name] = r
    # whether spectorch's operator kept every graph (with --one-graph: every operator
    # it built)
    ours = libs["spectorch"]
    if ours["op"] is not None:
        ours["cached"].append(ours["op"].caching)
    results["spectorch"]["cached"] = all(ours["cached"])
    if DEVICE.type == "cuda":  # the allocator's peak is exact: no second process
        with kernel():
            for name, lib in libs.items():
                if "prepare" not in lib:
                    _hold_graph(libs, name)
                    results[name].update(_memory(lib))
    row = desc | {"results": results, "host": host()}
    return row | ({"skipped": skipped} if skipped else {})


def host() -> str:
    """The machine a row ran on: the CPU's model name (or the GPU's), so that a table
    merged from several results files says which rows came from which host."""
    if DEVICE.type == "cuda":
        return torch.cuda.get_device_name(DEVICE)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def _repeats(product: Any, least: float = 0.3) -> int:
    """How many products one timing takes: enough for ``least`` seconds of products,
    at most 15, so that a 3 ms product is not timed from one call."""
    t0 = _clock()
    product()
    return max(1, min(15, math.ceil(least / max(_clock() - t0, 1e-6))))


def _timed(product: Any, repeats: int) -> float:
    """The mean time of ``repeats`` calls of ``product`` in a row, timed as one: the
    way a Lanczos run times its products (a median of single calls leaves out the
    slow ones a run's mean keeps, a few percent of a small product)."""
    t0 = _clock()
    for _ in range(repeats):
        product()
    return (_clock() - t0) / repeats


def _time_products(op: Any) -> Any:
    """Time every ``op.matvec`` until the returned function is called, which gives the
    times and restores the method (``None`` op: nothing timed)."""
    times: list[float] = []
    if op is None:
        return lambda: times
    original = op.matvec

    def timed(v: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
        t0 = _clock()
        try:
            return original(v, out=out)
        finally:
            times.append(_clock() - t0)

    op.matvec = timed

    def done() -> list[float]:
        del op.matvec  # the class's method again
        return times

    return done


def _memory(lib: dict) -> dict:
    out = {}
    if lib["product"] is not None:
        lib["product"]()
        with PeakMemory(DEVICE) as mem:
            lib["product"]()
        out["product_mb"] = mem.peak / 2**20
    if lib.get("lanczos") is not None:
        with PeakMemory(DEVICE) as mem:
            lib["lanczos"]()
        out["step_mb"] = mem.peak / 2**20
    return out


# ---------------------------------------------------------------------- driver
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/out/scale")
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--sizes", default=",".join(SIZES))
    row_options(parser)
    parser.add_argument(
        "--lanczos-rounds",
        type=positive,
        default=None,
        help="rounds with a Lanczos run (default: every product round up to 1e5, two "
        "at 1e6, one from 1e7 on; every round on a GPU); more than the product rounds "
        "adds rounds of Lanczos runs alone",
    )
    parser.add_argument(
        "--steps",
        type=positive,
        default=None,
        help="Lanczos steps of every row (default: 30 up to 1e6, 20 at 1e7, 8 at 1e8)",
    )
    parser.add_argument(
        "--samples",
        type=positive,
        default=None,
        help="the data of every row: digits (MLP), images (CNN) or 64-byte windows (GPT) "
        "instead of each row's own (all 1,797 digits for the MLPs; 512 down to 32 images; "
        "16 windows up to 1e6, 32 from 1e7 on)",
    )
    parser.add_argument(
        "--basis",
        choices=("memory", "float32", "auto"),
        default="memory",
        help="spectorch's Lanczos rows: 'memory' (float64, lanczos's default), "
        "'float32' (stored in float32, reorthogonalised in float64) or 'auto' (the "
        "density's default: float32 with partial reorthogonalisation, float64 with full)",
    )
    parser.add_argument(
        "--one-graph",
        action="store_true",
        help="hold one library's kept gradient graph at a time (spectorch's, PyHessian's "
        "data= path's): each built again, untimed, before its library is timed after "
        "another's, the other freed first; for rows where both do not fit in memory "
        "(the GPT at 1e8 with its 32 windows on 23 GB)",
    )
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="where the rows run: 'cpu' (CPU time, one thread) or 'cuda' (the first GPU; "
        "wall time after synchronising, the allocator's peak memory)",
    )
    parser.add_argument(
        "--report-from",
        metavar="FILES",
        help="only print one table from these comma-separated results files, whatever "
        "their settings (a results.jsonl, or a row process's output); a row in a later "
        "file replaces the same row in an earlier one, and a row's memory half run alone "
        "(--row FAMILY:SIZE --memory) adds its peaks to that row of an earlier file",
    )
    parser.add_argument(
        "--pooled",
        action="store_true",
        help="with --report-from: also print, for each row in several of the files, "
        "spectorch's step/product by the median over all their Lanczos runs (each run "
        "over the products around it) instead of the last file's",
    )
    args = parser.parse_args()
    if args.pooled and not args.report_from:
        parser.error("--pooled: only with --report-from")
    if args.report_from:
        rows = _merge(args.report_from.split(","), parser)
        report(rows)
        if args.pooled:
            pooled(args.report_from.split(","))
        print("\nrows from (their settings may differ):")
        for row in rows:
            print(
                f"- {row['family']} {row['size']}: {row['source']} on "
                f"{row.get('host', 'a host not recorded')} {row.get('settings', '')}"
            )
        return
    peers = [p for p in args.peers.split(",") if p]
    if args.one_graph and "pyhessian" not in peers:
        parser.error("--one-graph: only with pyhessian in --peers (the one peer that keeps a "
                     f"gradient graph beside spectorch's), got --peers {args.peers!r}")  # fmt: skip
    if args.samples is not None and args.samples > DIGITS:
        families = [args.row.split(":")[0]] if args.row else args.families.split(",")
        if {"mlp", "cnn"} & set(families):
            parser.error(f"--samples: at most {DIGITS} for the MLPs and the CNNs (the "
                         f"digits), got {args.samples}")  # fmt: skip
    if args.device == "cuda":
        if not torch.cuda.is_available():
            parser.error("--device cuda: no CUDA device is available to this torch")
        if args.allocator != "default":
            parser.error("--allocator: only 'default' with --device cuda (it sets the "
                         "host's glibc malloc, which a GPU's products do not use)")  # fmt: skip
        global DEVICE
        DEVICE = torch.device("cuda")
    if args.row:
        family, size = args.row.split(":")
        row = measure_row(
            family,
            size,
            args.rounds,
            peers,
            args.memory,
            args.lanczos_rounds,
            args.steps,
            args.basis,
            args.samples,
            args.one_graph,
        )
        row["settings"] = settings_of(args, peers, paired=True)  # a row saved alone says how it ran
        if args.memory:  # the memory half says which row it is (--report-from joins them)
            row |= {"row": args.row, "host": host()}
        print(json.dumps(row))
        return
    families = listed(parser, "--families", args.families, FAMILIES)
    sizes = listed(parser, "--sizes", args.sizes, SIZES)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.jsonl"
    settings = settings_of(args, peers, paired=True)
    done = _read(path, settings, None if args.report else host())
    if not args.report:
        for size in sizes:
            for family in families:
                if (family, size) in done:
                    print(f"{family} {size}: already in {path}")
                    continue
                row = _run_row(family, size, args)
                row["settings"] = settings
                with open(path, "a") as fh:  # one line per row: a killed run keeps the rest
                    fh.write(json.dumps(row) + "\n")
                done[(family, size)] = row
                print(f"{family} {size}: done")
    report([done[k] for k in sorted(done, key=lambda k: (FAMILIES.index(k[0]), float(k[1])))])


def row_options(parser: argparse.ArgumentParser) -> None:
    """The options :func:`run_row` passes to a benchmark's row processes, and
    ``--report``."""
    parser.add_argument(
        "--rounds", type=int, default=5, help="interleaved product rounds (5; 3 from 1e7 on)"
    )
    parser.add_argument("--peers", default=",".join(PEERS))
    parser.add_argument("--report", action="store_true", help="only print the tables")
    parser.add_argument(
        "--allocator",
        choices=list(ALLOCATORS),
        default="default",
        help="the timing processes' glibc malloc: 'default', or 'keep' (every allocation "
        "from the heap, freed memory kept for reuse: GLIBC_TUNABLES=" + ALLOCATORS["keep"] + ")",
    )
    parser.add_argument("--row", help=argparse.SUPPRESS)
    parser.add_argument("--memory", action="store_true", help=argparse.SUPPRESS)


# glibc settings for the timing processes (``--allocator``); "keep" is what
# bench_held_memory.py measures: a product's temporaries reuse memory already written
ALLOCATORS = {
    "default": "",
    "keep": "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1099511627776",
}


def listed(parser: argparse.ArgumentParser, option: str, text: str, known: Any) -> list[str]:
    """The comma-separated items of ``text``, each one of ``known``, or a parser error
    that names ``option``."""
    items = text.split(",")
    for x in items:
        if x not in known:
            parser.error(f"{option}: {x!r} is not one of {list(known)}")
    return items


def positive(text: str) -> int:
    """An argparse type: a positive int."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def settings_of(args: argparse.Namespace, peers: list[str], paired: bool = False) -> dict:
    """What a results line must match to be reused: rows measured otherwise rerun.
    ``paired``: this script's rows, whose step/product follows PAIRING."""
    settings = {"rounds": args.rounds, "peers": peers, "torch": torch.__version__}
    # partial reorthogonalisation's estimates, as PARTIAL_ESTIMATES says; rows measured
    # with earlier ones rerun
    settings["partial_estimates"] = PARTIAL_ESTIMATES
    if paired:  # rows before it: a step over the median product
        settings["pairing"] = PAIRING
    if getattr(args, "lanczos_rounds", None) is not None:  # results before it had no key
        settings["lanczos_rounds"] = args.lanczos_rounds
    if getattr(args, "steps", None) is not None:  # likewise
        settings["steps"] = args.steps
    if getattr(args, "samples", None) is not None:  # likewise
        settings["samples"] = args.samples
    if getattr(args, "basis", "memory") != "memory":  # likewise: float64 rows before it
        settings["basis"] = args.basis
    if getattr(args, "one_graph", False):  # likewise: every graph kept for the whole row
        settings["one_graph"] = True
    if args.allocator != "default":  # earlier results, without the key, are "default"
        settings["allocator"] = args.allocator
    device = getattr(args, "device", "cpu")  # bench_compile.py has no --device
    if device != "cpu":  # likewise: earlier results ran on the CPU
        settings["device"] = device
        settings["gpu"] = torch.cuda.get_device_name(0)
    return settings


def _run_row(family: str, size: str, args: argparse.Namespace) -> dict:
    return run_row(__file__, family, size, args)


def run_row(script: str, family: str, size: str, args: argparse.Namespace) -> dict:
    """One row of ``script`` (this file or another benchmark with the same ``--row``,
    ``--rounds``, ``--peers`` and ``--memory`` options): timed in one process, its
    memory measured in a second one with a fixed mmap threshold, merged."""
    base = [sys.executable, script, "--row", f"{family}:{size}", "--rounds", str(args.rounds),
            "--peers", args.peers]  # fmt: skip
    gpu = getattr(args, "device", "cpu") == "cuda"
    if gpu:
        base += ["--device", "cuda"]
    if getattr(args, "lanczos_rounds", None) is not None:
        base += ["--lanczos-rounds", str(args.lanczos_rounds)]
    if getattr(args, "steps", None) is not None:
        base += ["--steps", str(args.steps)]
    if getattr(args, "samples", None) is not None:
        base += ["--samples", str(args.samples)]
    if getattr(args, "basis", "memory") != "memory":
        base += ["--basis", args.basis]
    if getattr(args, "one_graph", False):
        base.append("--one-graph")
    t0 = time.time()
    env = dict(os.environ)
    if ALLOCATORS[args.allocator]:
        env["GLIBC_TUNABLES"] = ALLOCATORS[args.allocator]
    timed = subprocess.run(base, capture_output=True, text=True, env=env)
    if timed.returncode != 0:
        raise SystemExit(_failed(f"{family} {size}", timed))
    row = json.loads(timed.stdout.strip().splitlines()[-1])
    if gpu:  # the row measured its memory itself, from the allocator
        row["wall_s"] = time.time() - t0
        row["allocator"] = args.allocator
        return row
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    mem = subprocess.run([*base, "--memory"], capture_output=True, text=True, env=env)
    if mem.returncode != 0:
        raise SystemExit(_failed(f"{family} {size} (memory)", mem))
    _add_peaks(row["results"], json.loads(mem.stdout.strip().splitlines()[-1]))
    row["wall_s"] = time.time() - t0
    row["allocator"] = args.allocator
    return row


def _failed(what: str, proc: subprocess.CompletedProcess) -> str:
    """Why a row's process failed: its error, or the signal that ended it. A row killed
    by SIGKILL was, most likely, the kernel's out-of-memory killer's: every library's
    graphs and vectors are held in one process for the whole row (the GPT at 10^8
    with every peer and its 32 windows is more than 23 GB)."""
    if proc.returncode >= 0:
        return f"{what} failed:\n{proc.stderr[-3000:]}"
    try:
        name = signal.Signals(-proc.returncode).name
    except ValueError:  # a signal the enum does not name (a real-time one)
        name = f"signal {-proc.returncode}"
    text = f"{what} was killed by {name}"
    if -proc.returncode == signal.SIGKILL:
        text += (" (most likely by the kernel's out-of-memory killer: the row's libraries"
                 " do not fit this machine's memory together; run the row with fewer"
                 " samples, --samples, or fewer peers in one process, --peers)")  # fmt: skip
    return f"{text}\n{proc.stderr[-3000:]}".rstrip()


def _add_peaks(results: dict, half: dict) -> None:
    """Add a memory half's peaks to a timed row's ``results``: only the libraries the
    timed half measured (a peer it left out stays out, not a row of peaks alone), and
    not the half's labels (its settings, row and host)."""
    for name, peaks in half.items():
        if name in results and isinstance(peaks, dict):
            results[name].update(peaks)


def _read(path: Path, settings: dict, here: str | None = None) -> dict:
    """The rows of ``path`` measured with ``settings``; with ``here`` (a resumed run's
    host) only those measured there, so that a run does not mix another machine's
    timings into its table (``--report`` alone prints every host's)."""
    done: dict[tuple[str, str], dict] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                if row.get("settings") != settings:
                    continue
                # rows from before the host key are reused as before
                if here is not None and row.get("host", here) != here:
                    print(f"{row['family']} {row['size']}: measured on {row['host']!r}, "
                          f"not this host ({here!r}): measured again")  # fmt: skip
                    continue
                done[(row["family"], row["size"])] = row
    return done


def _merge(files: list[str], parser: argparse.ArgumentParser) -> list[dict]:
    """The rows of several results files, the last of each (family, size), in the
    table's order. A row's memory half run alone (``--row ... --memory``) adds its
    peaks to that row from an earlier file, when both ran with the same settings; one
    written before it named its row joins the one row of the file just before it."""
    rows: dict[tuple[str, str], dict] = {}
    last: list[tuple[str, str]] = []  # the rows of the file before
    for name in files:
        path = Path(name)
        if not path.is_file():
            parser.error(f"--report-from: {name} is not a file")
        here = []
        for line in path.read_text().splitlines():
            if not line.startswith("{"):
                continue
            row = json.loads(line)
            if "family" in row and "results" in row:
                rows[(row["family"], row["size"])] = row | {"source": name}
                here.append((row["family"], row["size"]))
            elif "results" not in row and "spectorch" in row:  # a memory half
                _join_memory(rows, last, row, name, parser)
        last = here
    if not rows:
        parser.error(f"--report-from: no rows in {files}")
    return [rows[k] for k in sorted(rows, key=lambda k: (FAMILIES.index(k[0]), float(k[1])))]


def _join_memory(
    rows: dict, last: list, half: dict, name: str, parser: argparse.ArgumentParser
) -> None:
    """Add a memory half's peaks (``half``, read from ``name``) to its row in ``rows``."""
    if "row" in half:
        key = tuple(half["row"].split(":"))
    elif len(last) == 1:  # written before the halves named their row
        key = last[0]
    else:
        parser.error(f"--report-from: {name} is a memory half that does not name its row; "
                     "name it right after a file that holds that one row")  # fmt: skip
    row = rows.get(key)
    if row is None:
        parser.error(f"--report-from: {name} is the memory half of {':'.join(key)}, which "
                     "no file before it holds")  # fmt: skip
    if half.get("settings") != row.get("settings"):
        parser.error(
            f"--report-from: {name} ran with other settings than its row in "
            f"{row['source']}: {half.get('settings')} against {row.get('settings')}"
        )
    if half.get("host", row.get("host")) != row.get("host"):
        parser.error(f"--report-from: {name} ran on {half['host']}, its row in "
                     f"{row['source']} on {row.get('host')}")  # fmt: skip
    results = {k: dict(v) for k, v in row["results"].items()}
    _add_peaks(results, half)
    rows[key] = row | {"results": results, "source": f"{row['source']} + {name}"}


POOLED = (
    ("spectorch", "full, first draw"),
    ("spectorch-draw-full", "full, later draws"),
    ("spectorch-partial", "partial, first draw"),
    ("spectorch-draw-partial", "partial, later draws"),
)


def pooled(files: list[str]) -> None:
    """spectorch's step/product for each row in several of ``files``: the median (and
    range) over every Lanczos run the files hold for it. Only runs of one host, device,
    basis, data and number of steps are pooled; a row measured otherwise in another
    file is a line of its own."""
    runs: dict[tuple, dict] = {}
    for name in dict.fromkeys(files):  # a file named twice is read once
        for line in Path(name).read_text().splitlines():
            if not line.startswith("{"):
                continue
            row = json.loads(line)
            if "family" not in row or "results" not in row:
                continue
            basis = row.get("settings", {}).get("basis", "memory")
            key = (row["family"], row["size"], row.get("host", "–"), row.get("device", "cpu"),
                   basis, row.get("samples"), row.get("steps"))  # fmt: skip
            held = runs.setdefault(key, {"files": 0, "row": row})
            held["files"] += 1
            for key, _ in POOLED:
                got = row["results"].get(key, {}).get("step_over_product_runs", [])
                held.setdefault(key, []).extend(got)
    several = {k: v for k, v in runs.items() if v["files"] > 1}
    if not several:
        print("\n(--pooled: no row is in more than one file)")
        return
    print("\n### step/product pooled: the median (range) over every run of the files\n")
    print("| model | parameters | host | basis | files | runs | "
          + " | ".join(h for _, h in POOLED) + " |")  # fmt: skip
    print("|---|---:|---|---|---:|---:|" + "---|" * len(POOLED))
    order = sorted(several, key=lambda k: (FAMILIES.index(k[0]), float(k[1])))
    for k in order:
        held = several[k]
        cells = []
        for key, _ in POOLED:
            v = held.get(key, [])
            cells.append(f"{statistics.median(v):.2f} ({min(v):.2f}-{max(v):.2f})" if v else "–")
        count = len(held.get("spectorch", []))
        where = k[2] if k[3] == "cpu" else f"{k[2]} ({k[3]})"
        print(f"| {k[0]} | {held['row']['parameters']:,} | {where} | {k[4]} | {held['files']} "
              f"| {count} | " + " | ".join(cells) + " |")  # fmt: skip


def _fmt(x: float | None, unit: str = "") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if unit == "ms":
        return f"{x * 1e3:.3g}" if x < 0.1 else f"{x * 1e3:,.0f}"
    if unit == "MB":
        return f"{x:.0f}"
    return f"{x:.2f}"


def report(rows: list[dict]) -> None:
    if any(row.get("device") == "cuda" for row in rows):
        print("\nOn the GPU: times are wall time after synchronising the device, memory the "
              "allocator's peak above the start (torch.cuda.max_memory_allocated)")  # fmt: skip
    print("\n### spectorch alone\n")
    print("'step': a Lanczos run with a new basis (a density's first draw); 'draw': a "
          "density's later draw, into the basis rows the first wrote (full / partial "
          "reorthogonalisation; partial is the density's default on these operators); "
          "'own work': the step less the product it made, timed inside the run (full / "
          "partial); 'data for 1.1': the samples (windows) at which a step would cost 1.1 "
          "products ('this': already at most 1.1)\n")  # fmt: skip
    print("| model | parameters | data | steps | gradient (ms) | product, graphs kept (ms) | "
          "product, not kept (ms) | step full (ms) | step partial (ms) | step/product full | "
          "step/product partial | draw step/product full / partial | own work (ms) | "
          "1 + own/product | data for 1.1 | product MB kept / not | step MB full / partial "
          "|")  # fmt: skip
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    stale = set()
    for row in rows:
        r = row["results"]
        s, n, p = r["spectorch"], r["spectorch-nocache"], r["spectorch-partial"]
        mark = ""
        estimates = row.get("settings", {}).get("partial_estimates")
        if estimates == _FIFTEENTH_ESTIMATES:
            mark = " ‡"
        elif estimates != PARTIAL_ESTIMATES:
            mark = " †"
        stale.add(mark)
        data = f"{row['samples']} {'windows' if row['family'] == 'gpt' else 'samples'}"
        kept = "" if s.get("cached") else " (not kept: over budget)"
        print(
            f"| {row['family']} ({row['model']}) | {row['parameters']:,} | {data} | "
            f"{row['steps']} | {_fmt(r['gradient']['product_s'], 'ms')} | "
            f"{_fmt(s['product_s'], 'ms')}{kept} | {_fmt(n['product_s'], 'ms')} | "
            f"{_fmt(s['step_s'], 'ms')} | {_fmt(p['step_s'], 'ms')}{mark} | "
            f"{_ratio_runs(s)} | {_ratio_runs(p)}{mark} | {_draws(r)} | "
            f"{_fmt(s.get('own_s'), 'ms')} / {_fmt(p.get('own_s'), 'ms')} | "
            f"{_own(s)} / {_own(p)} | {_enough(row, s)} | "
            f"{_fmt(s.get('product_mb'), 'MB')} / {_fmt(n.get('product_mb'), 'MB')} | "
            f"{_fmt(s.get('step_mb'), 'MB')} / {_fmt(p.get('step_mb'), 'MB')} |"
        )
    if " †" in stale:
        print("\n† partial reorthogonalisation measured before its estimates followed the "
              "network's float32 round-off: it skipped passes the network needs (and its "
              "results had ghost eigenvalues), so that step is not the one spectorch takes "
              "now")  # fmt: skip
    if " ‡" in stale:
        print("\n‡ partial reorthogonalisation measured while its estimates took float32's "
              "round-off for the loss between neighbours too (fifteenth round): it "
              "reorthogonalised on every step from about 8·10^6 parameters, more often "
              "than spectorch does now")  # fmt: skip
    summary(rows)
    print("\n### peers, ratio peer / spectorch (above 1: spectorch is faster or leaner)\n")
    print("| model | parameters | library | product | product vs spectorch | step | "
          "step/product | product memory | step memory vs full / partial |")  # fmt: skip
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        r = row["results"]
        for name in PEERS:
            if name not in r:
                continue
            x = r[name]
            # a peer that keeps its graph is compared with spectorch keeping it
            ours = r["spectorch"] if name == "pyhessian" else r["spectorch-nocache"]
            versus = "kept" if name == "pyhessian" else "not kept"
            print(
                f"| {row['family']} | {row['parameters']:,} | {name} | "
                f"{_fmt(x['product_s'], 'ms')} ms | "
                f"{_fmt(x['product_s'] / ours['product_s'])}x ({versus}) | "
                f"{_fmt(x.get('step_s'), 'ms')} ms"
                f" ({_fmt(x['step_s'] / r['spectorch']['step_s']) if 'step_s' in x else '–'}x) | "
                f"{_fmt(x.get('step_over_product'))} | "
                f"{_ratio(x.get('product_mb'), ours.get('product_mb'))} | "
                f"{_ratio(x.get('step_mb'), r['spectorch'].get('step_mb'))} / "
                f"{_ratio(x.get('step_mb'), r['spectorch-partial'].get('step_mb'))} |"
            )
    for row in rows:
        for name, error in row.get("skipped", {}).items():
            print(f"\n{row['family']} {row['size']}: {name} failed, left out: {error}")


def summary(rows: list[dict]) -> None:
    """Step/product by family and size, a density's first draw / its later draws, for
    each reorthogonalisation, and the hosts the rows ran on: the issue's criterion
    (at most 1.1) at a glance."""
    sizes = sorted({row["size"] for row in rows}, key=float)
    cells = {(row["family"], row["size"]): row for row in rows}
    families = [f for f in FAMILIES if any(row["family"] == f for row in rows)]
    for mode, first in (("partial", "spectorch-partial"), ("full", "spectorch")):
        default = ", the density's default on these operators" if mode == "partial" else ""
        print(f"\n### step/product, {mode} reorthogonalisation{default}: first draw / "
              "later draws (median over the runs)\n")  # fmt: skip
        print("| family | " + " | ".join(f"10^{int(math.log10(float(z)))}" for z in sizes) + " |")
        print("|---|" + "---|" * len(sizes))
        worst = []
        for family in families:
            line = []
            for size in sizes:
                row = cells.get((family, size))
                if row is None:
                    line.append("")
                    continue
                r = row["results"]
                ratios = [r[first]["step_over_product"]]
                later = r.get(f"spectorch-draw-{mode}")
                ratios.append(later["step_over_product"] if later else None)
                worst += [x for x in ratios if x is not None]
                line.append(" / ".join(_fmt(x) for x in ratios))
            print(f"| {family} | " + " | ".join(line) + " |")
        if worst:
            print(f"\nhighest {max(worst):.2f}; cells above 1.1: "
                  f"{sum(x > 1.1 for x in worst)} of {len(worst)}")  # fmt: skip
    hosts = sorted({row.get("host", "not recorded") for row in rows})
    print("\nhosts: " + "; ".join(hosts))


def _enough(row: dict, r: dict) -> str:
    """The data (samples or windows) at which a full-reorthogonalisation step would
    cost 1.1 products: the step's own work (timed inside the run where measured, else
    step − product) does not grow with the data, the product does, in proportion."""
    extra = r.get("own_s", r["step_s"] - r["product_s"])
    if extra <= 0.1 * r["product_s"]:
        return "this"
    per_sample = r["product_s"] / row["samples"]
    return f"{math.ceil(extra / (0.1 * per_sample)):,}"


def _ratio_runs(x: dict) -> str:
    """Step/product, and the range over the Lanczos runs where there were several
    (``--lanczos-rounds``): each run over the products around it (PAIRING), or in rows
    measured before that, each run's step over the median product."""
    text = _fmt(x["step_over_product"])
    ratios = x.get("step_over_product_runs")
    if ratios is None and len(x.get("step_runs_s", [])) > 1:
        product = x["step_s"] / x["step_over_product"]
        ratios = [run / product for run in x["step_runs_s"]]
    if ratios is not None and len(ratios) > 1:
        text += f" ({_fmt(min(ratios))}-{_fmt(max(ratios))})"
    return text


def _draws(r: dict) -> str:
    """A density's later draw (its basis rows written before), step/product full /
    partial; "–" in rows measured before it was timed."""
    runs = [r.get(f"spectorch-draw-{mode}") for mode in ("full", "partial")]
    return " / ".join(_ratio_runs(x) if x else "–" for x in runs)


def _own(r: dict) -> str:
    return _fmt(1 + r["own_over_product"]) if "own_over_product" in r else "–"


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b <= 0:
        return "–"
    return f"{a / b:.2f}x"


if __name__ == "__main__":
    main()
