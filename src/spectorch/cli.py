"""``spectorch ...``: one sub-command per job. Parses, checks and calls public functions."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from spectorch._version import __version__
from spectorch.distributed import DistributedError

__all__ = ["load_entry", "main"]

_USER_ERRORS = (ValueError, TypeError, FileNotFoundError, ImportError, FloatingPointError)


class CLIError(Exception):
    """A user mistake: printed as one line, exit status 2."""


def _int_at_least(lowest: int, what: str):
    """An argparse type: an int no smaller than ``lowest``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {what} int, got {text!r}") from None
        if value < lowest:
            raise argparse.ArgumentTypeError(f"expected a {what} int, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1, "positive")


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


_nonnegative_int = _int_at_least(0, "non-negative")


def load_entry(spec: str) -> Any:
    """Resolve ``MODULE:FUNCTION`` (a module name or a ``path/to/file.py``) to a callable.

    Raises:
        CLIError: naming what is wrong: the form, the module or the function.
    """
    module_name, sep, func_name = spec.rpartition(":")
    if not sep or not module_name or not func_name:
        raise CLIError(
            f"ENTRY must look like MODULE:FUNCTION or path/file.py:FUNCTION, got {spec!r}"
        )
    if module_name.endswith(".py") or "/" in module_name:
        path = Path(module_name)
        if not path.is_file():
            raise CLIError(f"ENTRY's file {path} does not exist")
        mod_spec = importlib.util.spec_from_file_location(path.stem, path)
        if mod_spec is None or mod_spec.loader is None:
            raise CLIError(f"cannot load {path} as a Python module")
        module = importlib.util.module_from_spec(mod_spec)
        sys.modules.setdefault(path.stem, module)
        mod_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            raise CLIError(f"cannot import module {module_name!r} of ENTRY: {exc}") from exc
    func = getattr(module, func_name, None)
    if func is None:
        raise CLIError(f"module {module_name!r} has no function {func_name!r}")
    if not callable(func):
        raise CLIError(f"{spec} is not callable")
    return func


def _problem(entry: str, rank: int = 0, world_size: int = 1) -> tuple[Any, Any, Any, bool]:
    """Call ENTRY; returns (model, loss, data, sharded): an ENTRY that takes ``rank`` and
    ``world_size`` shards its data itself."""
    import inspect

    func = load_entry(entry)
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        params = {}
    sharded = world_size > 1 and {"rank", "world_size"} <= set(params)
    result = func(rank=rank, world_size=world_size) if sharded else func()
    if isinstance(result, dict):
        missing = [k for k in ("model", "loss", "data") if k not in result]
        if missing:
            raise CLIError(f"{entry} returned a dict without {missing}")
        return result["model"], result["loss"], result["data"], sharded
    if not isinstance(result, (tuple, list)) or len(result) != 3:
        raise CLIError(f"{entry} must return (model, loss, data), got {type(result).__name__}")
    return (*result, sharded)


def _device(name: str) -> Any:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda was asked for, but CUDA is not available here")
    return torch.device(name)


def _cmd_density(args: argparse.Namespace) -> int:
    from spectorch import distributed
    from spectorch.curvature import OPERATORS, make_operator

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} is a file, expected a directory")
    if args.operator not in OPERATORS:  # argparse checks too; the registry is the truth
        raise CLIError(f"unknown --operator {args.operator!r}; choose one of {sorted(OPERATORS)}")
    if args.draw_index is not None and args.draws is not None:
        raise CLIError("give either --draws N or --draw-index K, not both")
    draws = [args.draw_index] if args.draw_index is not None else (args.draws or 10)

    if not distributed.launched():
        device = _device(args.device)
        model, loss, data, _ = _problem(args.entry)
        model.to(device)
        op = make_operator(args.operator, model, loss, data)
        _check_steps(args, op)
        return _density_run(args, op, out, draws, world_size=1)

    ctx = distributed.setup(args.backend, timeout=args.timeout, device=args.device)
    try:
        model, loss, data, sharded = _problem(args.entry, ctx.rank, ctx.world_size)
        if not sharded:
            data = distributed.shard(data, ctx.rank, ctx.world_size)
        model.to(ctx.device)
        with distributed.DistributedOperator(make_operator(args.operator, model, loss, data)) as op:
            if not op.is_root:
                op.serve()
                return 0
            _check_steps(args, op)
            return _density_run(args, op, out, draws, world_size=ctx.world_size)
    finally:
        distributed.teardown()


def _check_steps(args: argparse.Namespace, op: Any) -> None:
    if args.steps > op.shape[0]:
        raise CLIError(f"--steps {args.steps} exceeds the number of parameters {op.shape[0]}")


def _density_run(
    args: argparse.Namespace, op: Any, out: Path, draws: Any, *, world_size: int
) -> int:
    from spectorch.density import spectral_density

    what = f"draw {draws[0]}" if isinstance(draws, list) else f"{draws} draws"
    ranks = f" on {world_size} processes" if world_size > 1 else ""
    print(f"spectorch density: {op!r}, {what} x {args.steps} steps{ranks} -> {out}/")
    dens = spectral_density(
        op,
        steps=args.steps,
        draws=draws,
        seed=args.seed,
        dtype=args.dtype,
        probes_per_pass=args.probes_per_pass,
        basis=args.basis,
        out=out,
        save_vectors=not args.no_vectors,
        progress=not args.quiet,
        metadata={"entry": args.entry, "world_size": world_size},
    )
    _report(dens, out, f"{args.operator} spectral density", args.width)
    return 0


def _report(dens: Any, out: Path, title: str, width: str) -> None:
    """The figure and ``summary.json`` of a density, also printed."""
    import json

    from spectorch._io import atomic_write_json
    from spectorch.plotting import plot_density

    plot_density(dens, out / "density.png", title=title, width=width)
    trace = dens.trace()
    summary = {
        "draws": len(dens.nodes),
        "top_eigenvalues": dens.top_eigenvalues(min(5, dens.steps)).tolist(),
        "bottom_eigenvalue": float(dens.bottom_eigenvalues(1)[0]),
        "outliers": dens.outliers().tolist(),
        "trace": trace.value,
        "trace_stderr": trace.stderr,
        "moments": dict(zip(("1", "2"), dens.moments([1, 2]).tolist(), strict=True)),
    }
    atomic_write_json(out / "summary.json", summary)
    print(json.dumps(summary, indent=1))
    print(f"wrote {out}/density.png, tridiag_<k>.npy, manifest.json, summary.json")


def _cmd_combine(args: argparse.Namespace) -> int:
    from spectorch.density import combine_densities

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} is a file, expected a directory")
    missing = [d for d in args.dirs if not Path(d).is_dir()]
    if missing:
        raise CLIError(f"not a directory: {', '.join(missing)}")
    if out.resolve() in {Path(d).resolve() for d in args.dirs}:
        raise CLIError("--out must be a new directory, not one of the runs to combine")
    dens = combine_densities(args.dirs, out=out)
    print(f"spectorch density combine: {len(dens.nodes)} draws from {len(args.dirs)} runs")
    _report(dens, out, "combined spectral density", args.width)
    return 0


def _cifar_config(args: argparse.Namespace) -> Any:
    from spectorch.cifar import CifarConfig

    return CifarConfig(
        steps=args.steps,
        depth=args.depth,
        batchnorm=not args.no_batchnorm,
        width=args.width,
        batch_size=args.batch_size,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        lr_drops=tuple(args.lr_drops),
        augment=not args.no_augment,
        seed=args.seed,
    )


def _cmd_cifar_train(args: argparse.Namespace) -> int:
    from spectorch.cifar import train_cifar

    config = _cifar_config(args)
    out = Path(args.out)
    print(f"spectorch cifar train: ResNet-{config.depth}, {config.steps} steps -> {out}/")
    result = train_cifar(
        args.train_data,
        out,
        config,
        checkpoint_every=args.checkpoint_every,
        device=_device(args.device),
        progress=not args.quiet,
    )
    if result.resumed_from:
        print(f"resumed from step {result.resumed_from}")
    last = result.losses[-1] if result.losses else float("nan")
    print(f"final training loss {last:.4f}; {len(result.checkpoints)} checkpoints in {out}/")
    return 0


def _cmd_cifar_eval(args: argparse.Namespace) -> int:
    from spectorch._io import atomic_write_json
    from spectorch.cifar import evaluate, list_checkpoints, load_cifar_checkpoint
    from spectorch.data import CifarBatches, read_cifar10

    files = list_checkpoints(args.checkpoints)
    if not files:
        raise CLIError(f"no checkpoint step_<n>.pt in {args.checkpoints}")
    models = [load_cifar_checkpoint(f) for f in files]
    X, y = read_cifar10(args.test_data)
    batches = CifarBatches(X, y, args.batch_size)
    device = _device(args.device)
    rows = []
    for f, (model, state) in zip(files, models, strict=True):
        row = {"checkpoint": str(f), "step": int(state["step"])}
        row |= evaluate(model, batches, device)
        rows.append(row)
        print(f"{f.name}: loss {row['loss']:.4f}  accuracy {row['accuracy']:.4f}")
    if args.out:
        atomic_write_json(args.out, rows)
        print(f"wrote {args.out}")
    return 0


def _cmd_cifar_density(args: argparse.Namespace) -> int:
    from spectorch import distributed
    from spectorch.cifar import checkpoint_densities

    kwargs = {
        "images": args.images,
        "batch_size": args.batch_size,
        "operator": args.operator,
        "steps": args.steps,
        "draws": args.draws,
        "seed": args.seed,
        "basis": args.basis,
        "progress": not args.quiet,
    }
    out = Path(args.out)
    if not distributed.launched():
        dens = checkpoint_densities(
            args.checkpoints, args.train_data, out, device=_device(args.device), **kwargs
        )
    else:
        ctx = distributed.setup(args.backend, timeout=args.timeout, device=args.device)
        try:
            dens = checkpoint_densities(
                args.checkpoints,
                args.train_data,
                out,
                device=ctx.device,
                rank=ctx.rank,
                world_size=ctx.world_size,
                **kwargs,
            )
        finally:
            distributed.teardown()
        if not ctx.is_root:
            return 0
    for name, d in dens.items():
        print(f"{name}: top eigenvalue {d.top_eigenvalues(1)[0]:.6g}, trace {d.trace().value:.6g}")
    print(f"wrote {out}/<checkpoint>/ and {out}/trajectory.png")
    return 0


def _cmd_cifar_figure(args: argparse.Namespace) -> int:
    from spectorch.cifar import load_trajectory
    from spectorch.plotting import plot_trajectories

    if args.labels and len(args.labels) != len(args.dirs):
        raise CLIError(f"--labels needs {len(args.dirs)} labels, one per DIR")
    panels = {}
    for i, d in enumerate(args.dirs):
        label, curves = load_trajectory(d)
        if args.labels:
            label = args.labels[i]
        panels[label if label not in panels else f"{label} ({d})"] = curves
    plot_trajectories(panels, args.out, title=args.title)
    print(f"wrote {args.out}")
    return 0


def _cmd_tour(args: argparse.Namespace) -> int:
    from spectorch._tour import run_tour

    out = Path(args.out)
    run_tour(out, progress=not args.quiet)
    print((out / "summary.txt").read_text(), end="")
    print(f"figures and summary in {out.resolve()}/")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from spectorch.curvature import OPERATORS

    parser = argparse.ArgumentParser(
        prog="spectorch",
        description="Study and train neural networks through the spectra of linear operators.",
    )
    parser.add_argument("--version", action="version", version=f"spectorch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    tour = sub.add_parser("tour", help="a short run of every capability, with figures")
    tour.add_argument("--out", default="spectorch-out", help="output directory (spectorch-out)")
    tour.add_argument("--quiet", action="store_true", help="no progress bars")
    tour.set_defaults(func=_cmd_tour)

    dens = sub.add_parser(
        "density",
        help="eigenvalue density of a network's curvature by stochastic Lanczos quadrature",
        description=(
            "ENTRY is MODULE:FUNCTION (or path/file.py:FUNCTION), a function that returns "
            "(model, loss, data): data is a re-iterable of (inputs, targets) batches. "
            "Example: spectorch density spectorch.demo:digits_problem. Under torchrun "
            "(torchrun --nproc_per_node=N spectorch density ...) each rank takes a disjoint "
            "shard of the batches (an ENTRY that accepts rank= and world_size= shards its "
            "own data) and rank 0 writes the outputs. `spectorch density combine DIR... "
            "--out OUT` merges runs made one draw per job (--draw-index)."
        ),
    )
    dens.add_argument(
        "entry", metavar="ENTRY", help="MODULE:FUNCTION returning (model, loss, data)"
    )
    dens.add_argument("--operator", choices=sorted(OPERATORS), default="hessian")
    dens.add_argument("--steps", type=_positive_int, default=90, help="Lanczos steps per draw (90)")
    dens.add_argument("--draws", type=_positive_int, default=None, help="independent draws (10)")
    dens.add_argument(
        "--draw-index",
        type=_nonnegative_int,
        default=None,
        metavar="K",
        help="run only draw K of the seed's stream (one draw per job; merge with combine)",
    )
    dens.add_argument("--seed", type=_nonnegative_int, default=0)
    dens.add_argument(
        "--dtype",
        choices=("float64", "float32"),
        default="float64",
        help="dtype of the Lanczos recurrence and basis (float64)",
    )
    dens.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    dens.add_argument(
        "--probes-per-pass",
        type=_positive_int,
        default=1,
        help="draws advanced together, one pass over the data per step (1)",
    )
    dens.add_argument(
        "--basis",
        choices=("memory", "float32", "disk"),
        default="memory",
        help="where the Lanczos vectors are kept: memory, float32 (half of it) or disk "
        "(in --out; memory no longer grows with --steps); the recurrence stays float64",
    )
    dens.add_argument(
        "--backend",
        choices=("auto", "gloo", "nccl"),
        default="auto",
        help="torch.distributed backend under torchrun: gloo on CPU, nccl on GPU (auto)",
    )
    dens.add_argument(
        "--timeout",
        type=_positive_float,
        default=1800.0,
        help="seconds a rank waits for the others before the job fails (1800)",
    )
    _add_width(dens)
    dens.add_argument("--no-vectors", action="store_true", help="do not save lanczos_vec_<k>.npy")
    dens.add_argument("--out", default="spectorch-out/density", help="output directory")
    dens.add_argument("--quiet", action="store_true", help="no progress bars")
    dens.set_defaults(func=_cmd_density)
    _add_cifar(sub)
    _add_spin(sub)
    _add_rim(sub)
    return parser


def _add_cifar(sub: Any) -> None:
    from spectorch.curvature import OPERATORS

    cifar = sub.add_parser(
        "cifar",
        help="the CIFAR-10 workflow: train with checkpoints, eval, densities, figures",
        description="Ghorbani et al. 2019's workflow on CIFAR-10 binary batches "
        "(cifar-10-batches-bin/data_batch_*.bin): train a CIFAR ResNet with checkpoints "
        "every N steps, evaluate them, one Hessian density per checkpoint, and the "
        "figure of the densities along training.",
    )
    csub = cifar.add_subparsers(dest="cifar_command", metavar="STEP", required=True)

    train = csub.add_parser("train", help="SGD with momentum and a step schedule, resumable")
    train.add_argument("--train-data", required=True, help="glob of CIFAR-10 binary batches")
    train.add_argument("--out", required=True, help="run directory (checkpoints step_<n>.pt)")
    train.add_argument("--steps", type=_positive_int, default=64000, help="(64000)")
    train.add_argument("--checkpoint-every", type=_positive_int, default=1000, help="(1000)")
    train.add_argument("--depth", type=_positive_int, default=32, help="6n+2: 20, 32, ... (32)")
    train.add_argument("--no-batchnorm", action="store_true", help="ResNet without BatchNorm")
    train.add_argument("--width", type=_positive_int, default=16, help="first stage channels")
    train.add_argument("--batch-size", type=_positive_int, default=128, help="(128)")
    train.add_argument("--lr", type=_positive_float, default=0.1, help="(0.1)")
    train.add_argument("--momentum", type=float, default=0.9, help="(0.9)")
    train.add_argument("--weight-decay", type=float, default=1e-4, help="(1e-4)")
    train.add_argument(
        "--lr-drops",
        type=float,
        nargs="*",
        default=[0.5, 0.75],
        help="fractions of --steps where the learning rate is divided by 10 (0.5 0.75)",
    )
    train.add_argument("--no-augment", action="store_true", help="no random crops and flips")
    train.add_argument("--seed", type=_nonnegative_int, default=0)
    train.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=_cmd_cifar_train)

    ev = csub.add_parser("eval", help="test loss and accuracy of every checkpoint")
    ev.add_argument("checkpoints", metavar="CHECKPOINTS", help="a run directory or a .pt file")
    ev.add_argument("--test-data", required=True, help="glob, e.g. .../test_batch.bin")
    ev.add_argument("--batch-size", type=_positive_int, default=1000)
    ev.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ev.add_argument("--out", help="also write the results to this JSON file")
    ev.set_defaults(func=_cmd_cifar_eval)

    dens = csub.add_parser(
        "density",
        help="one curvature density per checkpoint (deterministic data), torchrun-ready",
    )
    dens.add_argument("checkpoints", metavar="CHECKPOINTS", help="a run directory or a .pt file")
    dens.add_argument("--train-data", required=True, help="glob of CIFAR-10 binary batches")
    dens.add_argument("--out", required=True, help="directory: <checkpoint>/ per checkpoint")
    dens.add_argument("--images", type=_positive_int, default=None, help="first N images (all)")
    dens.add_argument("--batch-size", type=_positive_int, default=500, help="(500)")
    dens.add_argument("--operator", choices=sorted(OPERATORS), default="hessian")
    dens.add_argument("--steps", type=_positive_int, default=90, help="Lanczos steps (90)")
    dens.add_argument("--draws", type=_positive_int, default=10, help="(10)")
    dens.add_argument("--seed", type=_nonnegative_int, default=0)
    dens.add_argument("--basis", choices=("memory", "float32", "disk"), default="memory")
    dens.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    dens.add_argument("--backend", choices=("auto", "gloo", "nccl"), default="auto")
    dens.add_argument("--timeout", type=_positive_float, default=1800.0)
    dens.add_argument("--quiet", action="store_true", help="no progress bars")
    dens.set_defaults(func=_cmd_cifar_density)

    fig = csub.add_parser(
        "figure", help="densities along training, one panel per density directory"
    )
    fig.add_argument("dirs", nargs="+", metavar="DIR", help="outputs of `cifar density`")
    fig.add_argument("--labels", nargs="*", help="panel titles, one per DIR")
    fig.add_argument("--title", default=None)
    fig.add_argument("--out", required=True, help="the PNG to write")
    fig.set_defaults(func=_cmd_cifar_figure)


def _hidden(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(t) for t in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated layer widths, got {text!r}"
        ) from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"expected positive layer widths, got {text!r}")
    return sizes


def _cmd_spin_hydrogen(args: argparse.Namespace) -> int:
    from spectorch.spin.hydrogen import HydrogenConfig, train_hydrogen

    defaults = {"spin": (1e-5, "rmsprop"), "neuralef": (1e-3, "adam"), "neuralsvd": (1e-3, "adam")}
    lr, optimizer = defaults[args.objective]
    cfg = HydrogenConfig(
        objective=args.objective,
        neig=args.neig,
        niter=args.niter,
        batch_size=args.batch_size,
        laplacian_eps=args.laplacian_eps,
        lim=args.lim,
        lr=args.lr if args.lr is not None else lr,
        decay=args.decay,
        boundary=not args.no_boundary,
        charge=args.charge,
        hidden=args.hidden,
        optimizer=args.optimizer or optimizer,
        importance=args.importance,
        nesting=args.nesting,
        shift=args.shift,
        cosine=args.cosine,
        log_image_every=args.log_image_every,
        save_params_every=args.save_params_every,
        seed=args.seed,
    )
    out = Path(args.out)
    print(
        f"spectorch spin hydrogen: {cfg.objective}, {cfg.neig} states, {cfg.niter} steps -> {out}/"
    )
    result = train_hydrogen(
        out,
        cfg,
        show_plots=args.show_plots,
        time_budget=args.time_budget,
        progress=not args.quiet,
        device=_device(args.device),
    )
    print(f"{result.steps} steps in {result.seconds:.0f} s")
    print("  state   learned     exact    rel. error")
    for i, (e, x, r) in enumerate(
        zip(result.eigenvalues, result.exact, result.relative_errors, strict=True)
    ):
        print(f"  {i:5d} {e:9.5f} {x:9.5f} {r:10.2%}")
    shells = ", ".join(f"{d:.3f}" for d in result.shell_distances)
    print(
        f"mean relative error {result.mean_relative_error:.2%}; "
        f"subspace distance per shell: {shells}"
    )
    print(f"figures, checkpoint and result.json in {out}/")
    return 0


def _cmd_spin_kernel(args: argparse.Namespace) -> int:
    from spectorch.spin.examples import kernel_example

    out = Path(args.out)
    result = kernel_example(
        out, objectives=args.objective, steps=args.steps, progress=not args.quiet
    )
    print(
        f"top {len(result['exact'])} eigenvalues of the kernel matrix: "
        + ", ".join(f"{v:.4f}" for v in result["exact"])
    )
    for name, r in result["objectives"].items():
        vals = ", ".join(f"{v:.4f}" for v in r["eigenvalues"])
        print(
            f"  {name:9s} {vals}   max rel. error {r['max_relative_error']:.2%}, "
            f"overlap {r['overlap']:.3f}"
        )
    print(f"figure and result.json in {out}/")
    return 0


def _cmd_spin_atari_collect(args: argparse.Namespace) -> int:
    from spectorch.spin import atari

    atari.check_game(args.game)
    out = Path(args.out) if args.out else Path("spectorch-out") / "atari" / f"{args.game}.npz"
    data = atari.collect(
        args.game,
        args.frames,
        seed=args.seed,
        out=out,
        sticky=args.sticky,
        progress=not args.quiet,
    )
    episodes = int(data["episode_starts"].sum())
    print(f"{len(data['frames'])} frames of {args.game} in {episodes} episode(s) -> {out}")
    return 0


def _cmd_spin_atari_train(args: argparse.Namespace) -> int:
    from spectorch.spin import atari

    data = Path(args.data)
    if not data.is_file():
        raise CLIError(
            f"--data: no such file {str(data)!r} (make one with `spectorch spin atari collect`)"
        )
    cfg = atari.AtariConfig(
        neig=args.neig,
        niter=args.niter,
        batch_size=args.batch_size,
        lr=args.lr,
        decay=args.decay,
        log_image_every=args.log_image_every,
        save_params_every=args.save_params_every,
        seed=args.seed,
    )
    out = Path(args.out) if args.out else Path("spectorch-out") / "atari" / data.stem
    print(f"spectorch spin atari train: {data} ({cfg.neig} features, {cfg.niter} steps) -> {out}/")
    result = atari.train_atari(
        out,
        data,
        cfg,
        progress=not args.quiet,
        time_budget=args.time_budget,
        device=_device(args.device),
        show_plots=args.show_plots,
    )
    print(f"{result.steps} steps in {result.seconds:.0f} s")
    print("slowness of each feature (0 is the constant):")
    print("  training (moving average): " + " ".join(f"{v:.4g}" for v in result.eigenvalues))
    print("  on the evaluation stacks:  " + " ".join(f"{v:.4g}" for v in result.evaluation))
    print(f"figure {result.figure}, checkpoint and result.json in {out}/")
    return 0


def _add_atari(ssub: Any) -> None:
    atari = ssub.add_parser(
        "atari",
        help="slow features of Atari game play (collect frames with ale-py, then train)",
        description="The SpIN paper's appendix C.3: the slowest features of 4-frame stacks "
        "of Atari play, with SlownessOperator. `collect` writes the original's .npz format "
        "(frames uint8 N x 84 x 84, episode_starts bool N); `train` learns from it.",
    )
    asub = atari.add_subparsers(dest="atari_command", metavar="STEP", required=True)
    col = asub.add_parser(
        "collect",
        help="play a game with a random policy and save preprocessed frames (.npz)",
        description="Random policy with sticky actions (ale-py; pip install "
        "'spectorch[atari]'); DQN preprocessing: every 4th frame, max of the last two, "
        "grayscale, 84x84.",
    )
    col.add_argument(
        "--game", required=True, help="an ale-py game: montezuma_revenge, space_invaders, ..."
    )
    col.add_argument("--frames", type=_positive_int, default=10_000, help="frames (10000)")
    col.add_argument("--seed", type=_nonnegative_int, default=0)
    col.add_argument("--sticky", type=float, default=0.25, help="repeat-action probability (0.25)")
    col.add_argument("--out", default=None, help="the .npz (spectorch-out/atari/GAME.npz)")
    col.add_argument("--quiet", action="store_true", help="no progress bar")
    col.set_defaults(func=_cmd_spin_atari_collect)

    tr = asub.add_parser(
        "train",
        help="learn the slowest features of collected frames; resumable",
        description="The original's network (three 6x6 stride-2 convolutions of 64 "
        "channels, 128 hidden units) with a constant feature first, trained with "
        "SpectralNetwork(SlownessOperator()) and centered RMSProp (neig 5, batch 128, "
        "lr 1e-3). Writes slow_features.png, checkpoints and result.json; resumes from --out.",
    )
    tr.add_argument("--data", required=True, help="an .npz from `spectorch spin atari collect`")
    tr.add_argument("--out", default=None, help="output directory (spectorch-out/atari/NAME)")
    tr.add_argument(
        "--neig", type=_int_at_least(2, "features"), default=5,
        help="features, the constant included (5)",
    )  # fmt: skip
    tr.add_argument("--niter", type=_positive_int, default=20_000, help="training steps (20000)")
    tr.add_argument("--batch-size", type=_positive_int, default=128, help="(128)")
    tr.add_argument("--lr", type=_positive_float, default=1e-3, help="learning rate (1e-3)")
    tr.add_argument(
        "--decay", type=float, default=0.0,
        help="moving-average weight of the new batch; the original's 0.01 is unstable "
        "at lr 1e-3 and 28x slower (0)",
    )  # fmt: skip
    tr.add_argument(
        "--log-image-every", type=_positive_int, default=1000, help="steps between figures (1000)"
    )
    tr.add_argument(
        "--save-params-every", type=_positive_int, default=1000, help="steps between checkpoints"
    )
    tr.add_argument(
        "--time-budget", type=_positive_float, default=None, help="stop after this many seconds"
    )
    tr.add_argument("--seed", type=_nonnegative_int, default=0)
    tr.add_argument("--show-plots", action="store_true", help="live figures when possible")
    tr.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    tr.add_argument("--quiet", action="store_true", help="no progress bar")
    tr.set_defaults(func=_cmd_spin_atari_train)


def _add_spin(sub: Any) -> None:
    from spectorch.spin import NESTINGS, OBJECTIVES

    spin = sub.add_parser(
        "spin",
        help="spectral inference networks: eigenfunctions of kernels and differential operators",
        description="Train a network whose outputs span the top or bottom eigenfunctions of "
        "an operator, with SpIN (Pfau et al. 2019), NeuralEF or NeuralSVD.",
    )
    ssub = spin.add_subparsers(dest="spin_command", metavar="EXAMPLE", required=True)
    hyd = ssub.add_parser(
        "hydrogen",
        help="the 2-D hydrogen atom (H = -Laplacian - 1/r), checked against the exact solution",
        description="The SpIN paper's section 5.1. Defaults are the original example's flags "
        "(neig 9, batch 128, lr 1e-5, decay 0.01, lim 50, RMSProp) for --objective spin; "
        "NeuralEF and NeuralSVD default to Adam with lr 1e-3. Resumes from --out.",
    )
    hyd.add_argument("--out", default="spectorch-out/hydrogen", help="output directory")
    hyd.add_argument("--objective", choices=OBJECTIVES, default="spin")
    hyd.add_argument("--neig", type=_positive_int, default=9, help="number of eigenfunctions (9)")
    hyd.add_argument(
        "--niter", type=_positive_int, default=1_000_000, help="training steps (1000000)"
    )
    hyd.add_argument("--batch-size", type=_positive_int, default=128, help="(128)")
    hyd.add_argument(
        "--lr", type=_positive_float, default=None, help="learning rate (1e-5 SpIN, 1e-3 others)"
    )
    hyd.add_argument(
        "--optimizer", choices=("rmsprop", "adam"), default=None, help="(rmsprop SpIN, adam others)"
    )
    hyd.add_argument(
        "--decay", type=float, default=0.01, help="moving-average weight of the new batch (0.01)"
    )
    hyd.add_argument("--lim", type=_positive_float, default=50.0, help="half-width of the box (50)")
    hyd.add_argument(
        "--laplacian-eps", type=float, default=0.0, help="finite-difference step; 0 = exact (0)"
    )
    hyd.add_argument("--no-boundary", action="store_true", help="no zero boundary mask")
    hyd.add_argument("--charge", type=_positive_float, default=1.0, help="nuclear charge (1)")
    hyd.add_argument(
        "--hidden", type=_hidden, default=(64, 64, 64), help="hidden widths (64,64,64)"
    )
    hyd.add_argument(
        "--importance", action="store_true", help="importance-sample x near the nucleus"
    )
    hyd.add_argument(
        "--nesting", choices=NESTINGS, default="joint", help="NeuralSVD's nesting (joint)"
    )
    hyd.add_argument("--shift", type=float, default=0.0, help="constant added to the operator (0)")
    hyd.add_argument(
        "--cosine", action="store_true", help="cosine learning-rate decay over --niter"
    )
    hyd.add_argument(
        "--log-image-every", type=_positive_int, default=1000, help="steps between figures (1000)"
    )
    hyd.add_argument(
        "--save-params-every",
        type=_positive_int,
        default=5000,
        help="steps between checkpoints (5000)",
    )
    hyd.add_argument(
        "--time-budget", type=_positive_float, default=None, help="stop after this many seconds"
    )
    hyd.add_argument("--seed", type=_nonnegative_int, default=0)
    hyd.add_argument(
        "--show-plots", action="store_true", help="live figures in a window when a display exists"
    )
    hyd.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    hyd.add_argument("--quiet", action="store_true", help="no progress bar")
    hyd.set_defaults(func=_cmd_spin_hydrogen)

    ker = ssub.add_parser(
        "kernel",
        help="top eigenfunctions of an RBF kernel on a finite 2-D sample, against eigh",
        description="Each objective learns the top 4 eigenpairs of a squared-exponential "
        "kernel on 200 clustered 2-D points; compared with the exact eigendecomposition.",
    )
    ker.add_argument("--out", default="spectorch-out/kernel", help="output directory")
    ker.add_argument("--objective", choices=OBJECTIVES, nargs="+", default=list(OBJECTIVES))
    ker.add_argument(
        "--steps", type=_positive_int, default=1500, help="training steps per objective (1500)"
    )
    ker.add_argument("--quiet", action="store_true", help="no progress bars")
    ker.set_defaults(func=_cmd_spin_kernel)

    _add_atari(ssub)


def _cmd_rim_train(args: argparse.Namespace) -> int:
    from spectorch.rim.examples import train_task

    config: dict[str, Any] = {}
    if args.task == "patches-deblur" and args.train_size is not None:
        config["n_train"] = args.train_size
    elif args.train_size is not None:
        raise CLIError("--train-size applies to --task patches-deblur only")
    metrics = train_task(
        args.out,
        args.task,
        task_config=config,
        backbone=args.backbone,
        features=args.features,
        steps=args.steps,
        preprocessing=args.preprocessing,
        initialization=args.initialization,
        epochs=args.epochs,
        learning_rate=args.lr,
        batch_size=args.batch_size,
        schedule=args.schedule,
        ema_decay=args.ema_decay,
        clip=args.clip,
        patience=args.patience,
        seed=args.seed,
        progress=not args.quiet,
    )
    print(f"test PSNR on {metrics['test_images']} images of {args.task}:")
    for name, value in sorted(metrics["psnr"].items(), key=lambda kv: kv[1]):
        print(f"  {name:10s} {value:6.2f} dB")
    print(f"checkpoints, metrics.json and rim.png in {Path(args.out).resolve()}/")
    return 0


def _cmd_rim_predict(args: argparse.Namespace) -> int:
    from spectorch.rim.examples import predict_directory

    report = predict_directory(args.checkpoint, args.input, args.output, which=args.which)
    line = f"{report['count']} estimates written to {report['written']}"
    if "psnr" in report:
        line += f"; test PSNR {report['psnr']:.2f} dB"
    print(line)
    return 0


def _add_rim(sub: Any) -> None:
    from spectorch.rim import PREPROCESSING
    from spectorch.rim._backbones import BACKBONES
    from spectorch.rim.examples import DEFAULTS, INITIALIZATIONS
    from spectorch.rim.problems import TASKS

    rim = sub.add_parser(
        "rim",
        help="recurrent inference machines: learned solvers for inverse problems",
        description="Train a RIM (Putzky & Welling 2017) on a linear-Gaussian problem with "
        "real images, and score it against Tikhonov, LMMSE and gradient-ascent MAP.",
    )
    rsub = rim.add_subparsers(dest="rim_command", metavar="COMMAND", required=True)
    train = rsub.add_parser(
        "train",
        help="train on a task, resumably; test PSNR against the baselines and a figure",
        description="Tasks: digits-deblur (8x8 digits, 5x5 Gaussian blur, noise 0.05), "
        "digits-cs (32 random projections, noise 0.05), patches-deblur (32x32 patches of "
        "scikit-image's sample photographs). Rerunning with the same --out resumes.",
    )
    train.add_argument("--task", choices=sorted(TASKS), default="digits-deblur")
    train.add_argument("--out", default="spectorch-out/rim", help="output directory")
    train.add_argument("--backbone", choices=sorted(BACKBONES), default=DEFAULTS["backbone"])
    train.add_argument(
        "--features", type=_positive_int, default=DEFAULTS["features"], help="backbone width"
    )
    train.add_argument(
        "--steps", type=_positive_int, default=DEFAULTS["steps"], help="RIM iterations"
    )
    train.add_argument("--preprocessing", choices=PREPROCESSING, default=DEFAULTS["preprocessing"])
    train.add_argument(
        "--initialization", choices=INITIALIZATIONS, default=DEFAULTS["initialization"]
    )
    train.add_argument("--epochs", type=_positive_int, default=DEFAULTS["epochs"])
    train.add_argument("--lr", type=_positive_float, default=DEFAULTS["learning_rate"])
    train.add_argument("--batch-size", type=_positive_int, default=DEFAULTS["batch_size"])
    train.add_argument(
        "--schedule",
        choices=("cosine", "constant"),
        default=DEFAULTS["schedule"],
        help="learning-rate schedule over the epochs",
    )
    train.add_argument("--ema-decay", type=float, default=0.0, help="weight averaging (0: off)")
    train.add_argument("--clip", type=float, default=0.0, help="gradient-norm clip (0: off)")
    train.add_argument("--patience", type=_positive_int, default=None, help="early stopping")
    train.add_argument(
        "--train-size", type=_positive_int, default=None, help="training patches (patches-deblur)"
    )
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=_cmd_rim_train)
    pred = rsub.add_parser(
        "predict",
        help="estimates from a trained RIM (default: the task's test set, with PSNR)",
    )
    pred.add_argument("--checkpoint", required=True, help="directory of `spectorch rim train`")
    pred.add_argument("--input", default=None, help=".npy file of observations (N, m)")
    pred.add_argument("--output", default=None, help=".npy file for the estimates")
    pred.add_argument("--which", choices=("best", "last"), default="best")
    pred.set_defaults(func=_cmd_rim_predict)


def _add_width(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--width",
        choices=("spacing", "original"),
        default="spacing",
        help="kernel width of the figure: node spacing (Papyan 2020) or the "
        "original's sigma_squared",
    )


def build_combine_parser() -> argparse.ArgumentParser:
    """``spectorch density combine``: its own parser, since ``density`` takes an ENTRY."""
    parser = argparse.ArgumentParser(
        prog="spectorch density combine",
        description="Merge density runs of one study made by separate jobs (--draw-index) "
        "into one density: figure, summary.json and a run directory of their draws.",
    )
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="run directories to merge")
    parser.add_argument("--out", required=True, help="directory of the merged run")
    _add_width(parser)
    parser.set_defaults(func=_cmd_combine)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``spectorch`` command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["density", "combine"]:
        parser = build_combine_parser()
        argv = argv[2:]
    else:
        parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except CLIError as exc:
        print(f"spectorch: error: {exc}", file=sys.stderr)
        return 2
    except _USER_ERRORS as exc:
        print(f"spectorch: error: {exc}", file=sys.stderr)
        return 2
    except DistributedError as exc:
        print(f"spectorch: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("spectorch: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
