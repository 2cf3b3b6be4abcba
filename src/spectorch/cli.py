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


def _problem(entry: str) -> tuple[Any, Any, Any]:
    result = load_entry(entry)()
    if isinstance(result, dict):
        missing = [k for k in ("model", "loss", "data") if k not in result]
        if missing:
            raise CLIError(f"{entry} returned a dict without {missing}")
        return result["model"], result["loss"], result["data"]
    if not isinstance(result, (tuple, list)) or len(result) != 3:
        raise CLIError(f"{entry} must return (model, loss, data), got {type(result).__name__}")
    return tuple(result)


def _device(name: str) -> Any:
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CLIError("--device cuda was asked for, but CUDA is not available here")
    return torch.device(name)


def _cmd_density(args: argparse.Namespace) -> int:
    import json

    from spectorch._io import atomic_write_json
    from spectorch.curvature import OPERATORS, make_operator
    from spectorch.density import spectral_density
    from spectorch.plotting import plot_density

    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} is a file, expected a directory")
    if args.operator not in OPERATORS:  # argparse checks too; the registry is the truth
        raise CLIError(f"unknown --operator {args.operator!r}; choose one of {sorted(OPERATORS)}")
    device = _device(args.device)
    model, loss, data = _problem(args.entry)
    model.to(device)
    op = make_operator(args.operator, model, loss, data)
    if args.steps > op.shape[0]:
        raise CLIError(f"--steps {args.steps} exceeds the number of parameters {op.shape[0]}")
    print(f"spectorch density: {op!r}, {args.draws} draws x {args.steps} steps -> {out}/")
    dens = spectral_density(
        op,
        steps=args.steps,
        draws=args.draws,
        seed=args.seed,
        dtype=args.dtype,
        probes_per_pass=args.probes_per_pass,
        out=out,
        save_vectors=not args.no_vectors,
        progress=not args.quiet,
        metadata={"entry": args.entry},
    )
    plot_density(
        dens, out / "density.png", title=f"{args.operator} spectral density", width=args.width
    )
    trace = dens.trace()
    summary = {
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
            "Example: spectorch density spectorch.demo:digits_problem"
        ),
    )
    dens.add_argument(
        "entry", metavar="ENTRY", help="MODULE:FUNCTION returning (model, loss, data)"
    )
    dens.add_argument("--operator", choices=sorted(OPERATORS), default="hessian")
    dens.add_argument("--steps", type=_positive_int, default=90, help="Lanczos steps per draw (90)")
    dens.add_argument("--draws", type=_positive_int, default=10, help="independent draws (10)")
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
        "--width",
        choices=("spacing", "original"),
        default="spacing",
        help="kernel width of the figure: node spacing (Papyan 2020) or the "
        "original's sigma_squared",
    )
    dens.add_argument("--no-vectors", action="store_true", help="do not save lanczos_vec_<k>.npy")
    dens.add_argument("--out", default="spectorch-out/density", help="output directory")
    dens.add_argument("--quiet", action="store_true", help="no progress bars")
    dens.set_defaults(func=_cmd_density)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``spectorch`` command; returns the exit status."""
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
    except KeyboardInterrupt:
        print("spectorch: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
