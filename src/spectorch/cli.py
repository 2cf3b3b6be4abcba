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
    if args.draw_index is not None and args.draws != 10:
        raise CLIError("give either --draws N or --draw-index K, not both")
    draws = [args.draw_index] if args.draw_index is not None else args.draws

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
    dens.add_argument("--draws", type=_positive_int, default=10, help="independent draws (10)")
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
    return parser


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
