"""``spectorch ...``: one sub-command per job. Parses, checks and calls public functions.

The options of an experiment's sub-command are read from its config dataclass
(:mod:`spectorch.experiments`): the field's name is the option, its metadata the help
and choices, its default the default, so every default is written once.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import inspect
import sys
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

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


def _problem(
    entry: str, rank: int = 0, world_size: int = 1, sequences: int | None = None
) -> tuple[Any, Any, Any, bool, Any]:
    """Call ENTRY; returns (model, loss, data, sharded, problem): an ENTRY that takes
    ``rank`` and ``world_size`` shards its data itself; ``problem`` names the study
    for resumes (ENTRY itself, or the ``"problem"`` of the dict it returns). An ENTRY
    that is a checkpoint (or run directory) of ``spectorch lm train`` gives its
    :func:`~spectorch.experiments.lm.density_problem` on ``sequences`` windows."""
    path = Path(entry)
    if path.exists() and (path.is_dir() or path.suffix == ".pt"):
        from spectorch.experiments import lm

        if not lm.is_lm_checkpoint(entry):
            raise CLIError(
                f"ENTRY {entry} is a path, but not a checkpoint or run directory of "
                "`spectorch lm train`; give MODULE:FUNCTION or such a checkpoint"
            )
        found = lm.density_problem(entry, sequences=sequences or 16)
        return found["model"], found["loss"], found["data"], False, found["problem"]
    if sequences is not None:
        raise CLIError("--sequences applies to a language-model checkpoint ENTRY only")
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
        problem = result.get("problem", {"entry": entry})
        return result["model"], result["loss"], result["data"], sharded, problem
    if not isinstance(result, (tuple, list)) or len(result) != 3:
        raise CLIError(f"{entry} must return (model, loss, data), got {type(result).__name__}")
    return (*result, sharded, {"entry": entry})


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
    options = _operator_options(args)

    blocks = _parse_blocks(args.blocks)
    if args.shard and not distributed.launched():
        raise CLIError(
            "--shard shards the model over torchrun's processes; launch with "
            "torchrun --nproc_per_node=N spectorch density ... --shard"
        )
    if not distributed.launched():
        device = _device(args.device)
        model, loss, data, _, problem = _problem(args.entry, sequences=args.sequences)
        model.to(device)
        op = make_operator(args.operator, model, loss, data, **options)
        _check_steps(args, op)
        if blocks is not None:
            from spectorch.curvature import parameter_blocks

            try:
                parameter_blocks(op.model, blocks)  # a bad selection fails before any work
            except (ValueError, TypeError) as exc:
                raise CLIError(f"--blocks: {exc}") from exc
        return _density_run(args, op, out, draws, world_size=1, blocks=blocks, problem=problem)

    if blocks is not None:
        raise CLIError("--blocks runs in one process for now; run it without torchrun")
    if args.shard:
        _check_shard(args)
    ctx = distributed.setup(args.backend, timeout=args.timeout, device=args.device)
    if args.shard:
        try:
            return _sharded_run(args, ctx, out)
        finally:
            distributed.teardown()
    try:
        model, loss, data, sharded, problem = _problem(
            args.entry, ctx.rank, ctx.world_size, sequences=args.sequences
        )
        if not sharded:
            data = distributed.shard(data, ctx.rank, ctx.world_size)
        model.to(ctx.device)
        local = make_operator(args.operator, model, loss, data, **options)
        with distributed.DistributedOperator(local) as op:
            if not op.is_root:
                op.serve()
                return 0
            _check_steps(args, op)
            return _density_run(args, op, out, draws, world_size=ctx.world_size, problem=problem)
    finally:
        distributed.teardown()


# the product options each operator takes on the command line (--hvp values, then flags)
_PRODUCT_OPTIONS = {
    "hessian": (("reverse", "forward", "finite-difference"), ("--cache-graphs", "--compile")),
    "ggn": (("reverse", "forward"), ("--compile",)),
    "fisher": ((), ()),
}


def _operator_options(args: argparse.Namespace) -> dict[str, Any]:
    """``--hvp``, ``--cache-graphs`` and ``--compile`` as the operator's keywords, checked
    against ``--operator`` before any work; a flag not given keeps the operator's default."""
    hvps, flags = _PRODUCT_OPTIONS.get(args.operator, ((), ()))
    given = {"--cache-graphs": args.cache_graphs is not None, "--compile": args.compile}
    refused = [flag for flag, on in given.items() if on and flag not in flags]
    if args.hvp is not None and args.hvp not in hvps:
        refused.insert(0, f"--hvp {args.hvp}")
    if refused:
        raise CLIError(f"--operator {args.operator} does not take {', '.join(refused)}")
    if args.hvp == "finite-difference" and (args.cache_graphs == "yes" or args.compile):
        raise CLIError(
            "--hvp finite-difference keeps no graphs and is not compiled: drop "
            "--cache-graphs yes and --compile"
        )
    options: dict[str, Any] = {}
    if args.hvp is not None:
        options["hvp"] = args.hvp
    if args.cache_graphs is not None:
        options["cache_graphs"] = {"auto": "auto", "yes": True, "no": False}[args.cache_graphs]
    if args.compile:
        options["compile"] = True
    return options


def _check_shard(args: argparse.Namespace) -> None:
    """What ``--shard`` (FSDP2, finite-difference Hessian products) cannot do, refused
    before any work."""
    if args.operator != "hessian":
        raise CLIError("--shard computes the Hessian only; drop --operator or use hessian")
    wrong = [
        flag
        for flag, bad in (
            ("--draw-index", args.draw_index is not None),
            ("--dtype float32", args.dtype != "float64"),
            ("--probes-per-pass", args.probes_per_pass != 1),
            ("--basis", args.basis not in ("auto", "memory")),
            ("--reorth partial", args.reorth == "partial"),
            ("--hvp", args.hvp is not None),
            ("--cache-graphs", args.cache_graphs is not None),
            ("--compile", args.compile),
        )
        if bad
    ]
    if wrong:
        raise CLIError(f"--shard does not take {', '.join(wrong)}")


def _sharded_run(args: argparse.Namespace, ctx: Any, out: Path) -> int:
    """``--shard``: the model's parameters sharded with FSDP2 over the ranks, each
    with its shard of the data; the Lanczos recurrence on sharded vectors."""
    from spectorch import distributed
    from spectorch.sharded import ShardedHessian, shard_model, sharded_density

    model, loss, data, sharded, problem = _problem(
        args.entry, ctx.rank, ctx.world_size, sequences=args.sequences
    )
    if not sharded:
        data = distributed.shard(data, ctx.rank, ctx.world_size)
    model.to(ctx.device)
    op = ShardedHessian(shard_model(model), loss, data)
    _check_steps(args, op)
    draws = args.draws or 10
    if ctx.is_root:
        print(
            f"spectorch density: the Hessian of {op.dim:,} parameters sharded with FSDP2 "
            f"over {ctx.world_size} processes (finite-difference products), {draws} draws x "
            f"{args.steps} steps, full reorthogonalisation -> {out}/"
        )
    dens = sharded_density(
        op,
        steps=args.steps,
        draws=draws,
        seed=args.seed,
        out=out,
        metadata={"entry": args.entry, "world_size": ctx.world_size, "problem": problem},
        progress=not args.quiet,
    )
    if ctx.is_root:
        _report(dens, out, "hessian spectral density (FSDP2-sharded)", args.width)
    return 0


def _parse_blocks(values: list[str] | None) -> Any:
    """``--blocks``: one preset name, or ``NAME=GLOB[,GLOB...]`` pairs (a bare GLOB is
    its own name)."""
    if values is None:
        return None
    from spectorch.curvature import PRESETS

    if len(values) == 1 and values[0] in PRESETS:
        return values[0]
    blocks: dict[str, list[str]] = {}
    for value in values:
        name, sep, globs = value.partition("=")
        if not sep:
            name, globs = value, value
        if not name or not globs:
            raise CLIError(f"--blocks: expected a preset or NAME=GLOB[,GLOB...], got {value!r}")
        if value in PRESETS:
            raise CLIError(f"--blocks: the preset {value!r} goes alone")
        if name in blocks:
            raise CLIError(f"--blocks: the block name {name!r} is given twice")
        blocks[name] = [g for g in globs.split(",") if g]
    return blocks


def _check_steps(args: argparse.Namespace, op: Any) -> None:
    if args.steps > op.shape[0]:
        raise CLIError(f"--steps {args.steps} exceeds the number of parameters {op.shape[0]}")


def _density_run(
    args: argparse.Namespace,
    op: Any,
    out: Path,
    draws: Any,
    *,
    world_size: int,
    blocks: Any = None,
    problem: Any = None,
) -> int:
    import torch

    from spectorch.density import spectral_density
    from spectorch.linalg import resolve_basis, resolve_reorth

    what = f"draw {draws[0]}" if isinstance(draws, list) else f"{draws} draws"
    ranks = f" on {world_size} processes" if world_size > 1 else ""
    reorth = resolve_reorth(args.reorth, op)
    basis = resolve_basis(args.basis, op, reorth, getattr(torch, args.dtype))
    print(
        f"spectorch density: {op!r}, {what} x {args.steps} steps{ranks}, {reorth} "
        f"reorthogonalisation, basis {basis} -> {out}/"
    )
    result = spectral_density(
        op,
        steps=args.steps,
        draws=draws,
        seed=args.seed,
        dtype=args.dtype,
        probes_per_pass=args.probes_per_pass,
        basis=args.basis,
        reorth=args.reorth,
        out=out,
        save_vectors=not args.no_vectors,
        progress=not args.quiet,
        metadata={"entry": args.entry, "world_size": world_size, "problem": problem},
        blocks=blocks,
    )
    if blocks is None:
        _report(result, out, f"{args.operator} spectral density", args.width)
        return 0
    _report_blocks(result, out, args.operator, args.width)
    return 0


def _report_blocks(result: dict, out: Path, operator: str, width: str) -> None:
    """The full density's report, the block figure, and ``blocks.json``: each block's
    size, top eigenvalue, trace per parameter and the Jensen-Shannon distances."""
    import json

    from spectorch.density import js_distances
    from spectorch.plotting import plot_block_densities
    from spectorch.train import RunDirectory

    _report(result["full"], out, f"{operator} spectral density", width)
    blocks = {k: v for k, v in result.items() if k != "full"}
    plot_block_densities(result, out / "blocks.png", title=f"{operator}: blocks", width=width)
    distances = js_distances(blocks) if len(blocks) > 1 else None
    summary = {
        "blocks": {
            name: {
                "parameters": d.dim,
                "top_eigenvalue": float(d.top_eigenvalues(1)[0]),
                "bottom_eigenvalue": float(d.bottom_eigenvalues(1)[0]),
                "mean_eigenvalue": float(d.moments(1)),
            }
            for name, d in blocks.items()
        },
        "js_distance_mean": None if distances is None else distances["mean"],
        "js_distance": None if distances is None else distances["pairs"],
    }
    RunDirectory(out, kind="density", settings_file=None).write_json("blocks.json", summary)
    print(json.dumps({k: summary[k] for k in ("blocks", "js_distance_mean")}, indent=1))
    print(f"wrote {out}/blocks.png, blocks.json and blocks/<name>/ for {len(blocks)} blocks")


def _report(dens: Any, out: Path, title: str, width: str) -> None:
    """The figure and ``summary.json`` of a density, also printed."""
    import json

    from spectorch.plotting import plot_density
    from spectorch.train import RunDirectory

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
    RunDirectory(out, kind="density", settings_file=None).write_json("summary.json", summary)
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


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("spectorch")
    except PackageNotFoundError:  # running from a source tree that is not installed
        return "unknown"


def _default(function: Callable, name: str) -> Any:
    """The default of keyword ``name`` of ``function`` (so the CLI does not restate it)."""
    return inspect.signature(function).parameters[name].default


def _scalar(tp: Any) -> Any:
    """The value type of a field's annotation: ``int`` for ``int | None`` or
    ``tuple[int, ...]``."""
    args = [a for a in typing.get_args(tp) if a is not type(None) and a is not Ellipsis]
    if typing.get_origin(tp) in (tuple, list) or (args and len(args) == 1):
        return _scalar(args[0]) if args else str
    return tp


def _add_config(parser: argparse.ArgumentParser, cls: type) -> None:
    """One option per field of the config dataclass ``cls`` (fields marked
    ``cli=False`` are left to the library)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if meta.get("cli") is False:
            continue
        tp, default = hints[f.name], f.default
        flag = meta.get("flag") or "--" + f.name.replace("_", "-")
        shown = default if not isinstance(default, tuple) else " ".join(map(str, default))
        help_text = meta.get("help", "")
        if tp is bool:  # a flag that turns the default over
            action = "store_false" if default else "store_true"
            shown_help = f"without: {help_text}" if default else help_text
            parser.add_argument(flag, dest=f.name, action=action, help=shown_help)
            continue
        kwargs: dict[str, Any] = {"dest": f.name, "default": default}
        parse = meta.get("parse")
        if parse is not None:
            kwargs["type"] = _argument_type(parse)
            shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        else:
            kwargs["type"] = _scalar(tp)
        if meta.get("nargs"):
            kwargs["nargs"] = meta["nargs"]
        if meta.get("choices"):
            kwargs["choices"] = list(meta["choices"])
        if default is not None:
            help_text = f"{help_text} ({shown})" if help_text else f"({shown})"
        parser.add_argument(flag, help=help_text, **kwargs)


def _argument_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


def _config(cls: type, args: argparse.Namespace) -> Any:
    """The config dataclass ``cls`` from the parsed options; its own checks run here,
    before any work (a bad value is one line and exit status 2)."""
    values = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli") is False or not hasattr(args, f.name):
            continue
        value = getattr(args, f.name)
        values[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)


def _ran(result: Any) -> None:
    """``N steps in S s``, counting only this call's steps of a resumed run."""
    ran = result.steps - result.resumed_from
    line = f"{ran} steps in {result.seconds:.0f} s"
    if result.resumed_from:
        line += f" (resumed at step {result.resumed_from}; {result.steps} in all)"
    print(line)


def _say_resumes() -> None:
    """Print the resume notices of the training loop (which step, which checkpoint, a
    changed learning rate) and of density runs (draws found) to stderr, also under
    --quiet."""
    import logging

    for name in ("spectorch.train", "spectorch.density"):
        log = logging.getLogger(name)
        if not any(getattr(h, "_spectorch_cli", False) for h in log.handlers):
            handler = logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("spectorch: %(message)s"))
            handler._spectorch_cli = True  # type: ignore[attr-defined]
            log.addHandler(handler)
        log.setLevel(logging.INFO)


# ----------------------------------------------------------------------------- cifar
def _cmd_cifar_train(args: argparse.Namespace) -> int:
    from spectorch.experiments import cifar

    config = _config(cifar.CifarConfig, args)
    out = Path(args.out)
    print(f"spectorch cifar train: ResNet-{config.depth}, {config.steps} steps -> {out}/")
    result = cifar.run(
        out,
        config,
        train_data=args.train_data,
        checkpoint_every=args.checkpoint_every,
        device=_device(args.device),
        progress=not args.quiet,
        sharpness_every=args.sharpness_every,
        sharpness_images=args.sharpness_images,
    )
    last = result.losses[-1] if result.losses else float("nan")
    print(f"final training loss {last:.4f}; {len(result.checkpoints)} checkpoints in {out}/")
    return 0


def _cmd_cifar_eval(args: argparse.Namespace) -> int:
    from spectorch.data import CifarBatches, read_cifar10
    from spectorch.experiments.cifar import evaluate, list_checkpoints, load_cifar_checkpoint
    from spectorch.train import RunDirectory

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
        target = Path(args.out)
        RunDirectory(target.parent, kind="cifar", settings_file=None).write_json(target.name, rows)
        print(f"wrote {args.out}")
    return 0


def _cmd_cifar_density(args: argparse.Namespace) -> int:
    from spectorch import distributed
    from spectorch.experiments.cifar import checkpoint_densities

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
    from spectorch.experiments.cifar import load_trajectory
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


def _add_cifar(sub: Any) -> None:
    from spectorch.curvature import OPERATORS
    from spectorch.experiments import cifar

    parser = sub.add_parser(
        "cifar",
        help=_HELP["cifar"],
        description="Ghorbani et al. 2019's workflow on CIFAR-10 binary batches "
        "(cifar-10-batches-bin/data_batch_*.bin): train a CIFAR ResNet with checkpoints "
        "every N steps, evaluate them, one Hessian density per checkpoint, and the "
        "figure of the densities along training.",
    )
    csub = parser.add_subparsers(dest="cifar_command", metavar="STEP", required=True)

    train = csub.add_parser("train", help="SGD with momentum and a step schedule, resumable")
    train.add_argument("--train-data", required=True, help="glob of CIFAR-10 binary batches")
    train.add_argument("--out", required=True, help="run directory (checkpoints step_<n>.pt)")
    every = _default(cifar.run, "checkpoint_every")
    train.add_argument("--checkpoint-every", type=_positive_int, default=every, help=f"({every})")
    _add_config(train, cifar.CifarConfig)
    train.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    train.add_argument("--sharpness-every", type=_positive_int, default=None, metavar="N",
                       help="track the top Hessian eigenvalue every N steps into "
                            "OUT/sharpness.csv (off)")  # fmt: skip
    train.add_argument("--sharpness-images", type=_positive_int, default=512,
                       help="training images of the tracked Hessian (512)")  # fmt: skip
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
    densities = cifar.checkpoint_densities
    dens.add_argument("checkpoints", metavar="CHECKPOINTS", help="a run directory or a .pt file")
    dens.add_argument("--train-data", required=True, help="glob of CIFAR-10 binary batches")
    dens.add_argument("--out", required=True, help="directory: <checkpoint>/ per checkpoint")
    dens.add_argument("--images", type=_positive_int, default=None, help="first N images (all)")
    for name, what in (("batch_size", "images per product batch"), ("steps", "Lanczos steps"),
                       ("draws", "independent draws")):  # fmt: skip
        value = _default(densities, name)
        dens.add_argument(
            "--" + name.replace("_", "-"),
            type=_positive_int,
            default=value,
            help=f"{what} ({value})",
        )
    dens.add_argument("--operator", choices=sorted(OPERATORS), default="hessian")
    dens.add_argument("--seed", type=_nonnegative_int, default=0)
    dens.add_argument(
        "--basis",
        choices=("auto", "memory", "float32", "disk"),
        default="auto",
        help="where the Lanczos vectors are kept (auto: float32 rows for a float32 network)",
    )
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


# ----------------------------------------------------------------------------- tour
def _cmd_tour(args: argparse.Namespace) -> int:
    from spectorch.experiments import tour

    out = Path(args.out)
    tour.run(out, _config(tour.TourConfig, args), progress=not args.quiet)
    print((out / "summary.txt").read_text(), end="")
    print(f"figures and summary in {out.resolve()}/")
    return 0


def _add_tour(sub: Any) -> None:
    from spectorch.experiments import tour

    parser = sub.add_parser("tour", help=_HELP["tour"])
    parser.add_argument("--out", default="spectorch-out", help="output directory (spectorch-out)")
    _add_config(parser, tour.TourConfig)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=_cmd_tour)


# ----------------------------------------------------------------------------- spin
def _cmd_spin_hydrogen(args: argparse.Namespace) -> int:
    from spectorch.experiments import hydrogen

    cfg = _config(hydrogen.HydrogenConfig, args)
    out = Path(args.out)
    print(
        f"spectorch spin hydrogen: {cfg.objective}, {cfg.neig} states, {cfg.niter} steps -> {out}/"
    )
    result = hydrogen.run(
        out,
        cfg,
        show_plots=args.show_plots,
        time_budget=args.time_budget,
        progress=not args.quiet,
        device=_device(args.device),
    )
    _ran(result)
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
    from spectorch.experiments import kernel

    out = Path(args.out)
    result = kernel.run(out, _config(kernel.KernelConfig, args), progress=not args.quiet)
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
    from spectorch.data import check_game, collect

    check_game(args.game)
    out = Path(args.out) if args.out else Path("spectorch-out") / "atari" / f"{args.game}.npz"
    data = collect(
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
    from spectorch.experiments import atari

    data = Path(args.data)
    if not data.is_file():
        raise CLIError(
            f"--data: no such file {str(data)!r} (make one with `spectorch spin atari collect`)"
        )
    cfg = _config(atari.AtariConfig, args)
    out = Path(args.out) if args.out else Path("spectorch-out") / "atari" / data.stem
    print(f"spectorch spin atari train: {data} ({cfg.neig} features, {cfg.niter} steps) -> {out}/")
    result = atari.run(
        out,
        data,
        cfg,
        progress=not args.quiet,
        time_budget=args.time_budget,
        device=_device(args.device),
        show_plots=args.show_plots,
    )
    _ran(result)
    print("slowness of each feature (0 is the constant):")
    print("  training (moving average): " + " ".join(f"{v:.4g}" for v in result.eigenvalues))
    print("  on the evaluation stacks:  " + " ".join(f"{v:.4g}" for v in result.evaluation))
    print(f"figure {result.figure}, checkpoint and result.json in {out}/")
    return 0


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    """The options every SpIN training run shares."""
    parser.add_argument(
        "--time-budget", type=_positive_float, default=None, help="stop after this many seconds"
    )
    parser.add_argument(
        "--show-plots", action="store_true", help="live figures in a window when a display exists"
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_atari(ssub: Any) -> None:
    from spectorch.data import collect
    from spectorch.experiments import atari

    parser = ssub.add_parser(
        "atari",
        help="slow features of Atari game play (collect frames with ale-py, then train)",
        description="The SpIN paper's appendix C.3: the slowest features of 4-frame stacks "
        "of Atari play, with SlownessOperator. `collect` writes the original's .npz format "
        "(frames uint8 N x 84 x 84, episode_starts bool N); `train` learns from it.",
    )
    asub = parser.add_subparsers(dest="atari_command", metavar="STEP", required=True)
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
    frames, sticky = _default(collect, "frames"), _default(collect, "sticky")
    col.add_argument("--frames", type=_positive_int, default=frames, help=f"frames ({frames})")
    col.add_argument("--seed", type=_nonnegative_int, default=0)
    col.add_argument(
        "--sticky", type=float, default=sticky, help=f"repeat-action probability ({sticky})"
    )
    col.add_argument("--out", default=None, help="the .npz (spectorch-out/atari/GAME.npz)")
    col.add_argument("--quiet", action="store_true", help="no progress bar")
    col.set_defaults(func=_cmd_spin_atari_collect)

    tr = asub.add_parser(
        "train",
        help="learn the slowest features of collected frames; resumable",
        description="The original's network (three 6x6 stride-2 convolutions of 64 "
        "channels, 128 hidden units) with a constant feature first, trained with "
        "SpectralNetwork(SlownessOperator()) and centered RMSProp. Writes "
        "slow_features.png, checkpoints and result.json; resumes from --out.",
    )
    tr.add_argument("--data", required=True, help="an .npz from `spectorch spin atari collect`")
    tr.add_argument("--out", default=None, help="output directory (spectorch-out/atari/NAME)")
    _add_config(tr, atari.AtariConfig)
    _add_run_options(tr)
    tr.set_defaults(func=_cmd_spin_atari_train)


def _add_spin(sub: Any) -> None:
    from spectorch.experiments import hydrogen, kernel

    parser = sub.add_parser(
        "spin",
        help=_HELP["spin"],
        description="Train a network whose outputs span the top or bottom eigenfunctions of "
        "an operator, with SpIN (Pfau et al. 2019), NeuralEF or NeuralSVD.",
    )
    ssub = parser.add_subparsers(dest="spin_command", metavar="EXAMPLE", required=True)
    hyd = ssub.add_parser(
        "hydrogen",
        help="the 2-D hydrogen atom (H = -Laplacian - 1/r), checked against the exact solution",
        description="The SpIN paper's section 5.1. Defaults are the original example's flags "
        "(neig 9, batch 128, lr 1e-5, decay 0.01, lim 50, RMSProp) for --objective spin; "
        "NeuralEF and NeuralSVD default to Adam with lr 1e-3. Resumes from --out.",
    )
    hyd.add_argument("--out", default="spectorch-out/hydrogen", help="output directory")
    _add_config(hyd, hydrogen.HydrogenConfig)
    _add_run_options(hyd)
    hyd.set_defaults(func=_cmd_spin_hydrogen)

    ker = ssub.add_parser(
        "kernel",
        help="top eigenfunctions of an RBF kernel on a finite 2-D sample, against eigh",
        description="Each objective learns the top eigenpairs of a squared-exponential "
        "kernel on 200 clustered 2-D points; compared with the exact eigendecomposition.",
    )
    ker.add_argument("--out", default="spectorch-out/kernel", help="output directory")
    _add_config(ker, kernel.KernelConfig)
    ker.add_argument("--quiet", action="store_true", help="no progress bars")
    ker.set_defaults(func=_cmd_spin_kernel)

    _add_atari(ssub)


# ----------------------------------------------------------------------------- rim
def _cmd_rim_train(args: argparse.Namespace) -> int:
    from spectorch.experiments import rim

    config = _config(rim.RimConfig, args)
    metrics = rim.run(args.out, config, progress=not args.quiet)
    print(f"test PSNR on {metrics['test_images']} images of {config.task}:")
    for name, value in sorted(metrics["psnr"].items(), key=lambda kv: kv[1]):
        print(f"  {name:10s} {value:6.2f} dB")
    print(f"checkpoints, metrics.json and rim.png in {Path(args.out).resolve()}/")
    return 0


def _cmd_rim_predict(args: argparse.Namespace) -> int:
    from spectorch.experiments import rim

    report = rim.predict(args.checkpoint, args.input, args.output, which=args.which)
    line = f"{report['count']} estimates written to {report['written']}"
    if "psnr" in report:
        line += f"; test PSNR {report['psnr']:.2f} dB"
    print(line)
    return 0


def _add_rim(sub: Any) -> None:
    from spectorch.experiments import rim

    parser = sub.add_parser(
        "rim",
        help=_HELP["rim"],
        description="Train a RIM (Putzky & Welling 2017) on a linear-Gaussian problem with "
        "real images, and score it against Tikhonov, LMMSE and gradient-ascent MAP.",
    )
    rsub = parser.add_subparsers(dest="rim_command", metavar="COMMAND", required=True)
    train = rsub.add_parser(
        "train",
        help="train on a task, resumably; test PSNR against the baselines and a figure",
        description="Tasks: digits-deblur (8x8 digits, 5x5 Gaussian blur, noise 0.05), "
        "digits-cs (32 random projections, noise 0.05), patches-deblur (32x32 patches of "
        "scikit-image's sample photographs). Rerunning with the same --out resumes.",
    )
    train.add_argument("--out", default="spectorch-out/rim", help="output directory")
    _add_config(train, rim.RimConfig)
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


# ----------------------------------------------------------------------------- lm
def _cmd_lm_train(args: argparse.Namespace) -> int:
    from spectorch.experiments import lm

    config = _config(lm.LMConfig, args)
    if args.preconditioned_sharpness and args.sharpness_every is None:
        raise CLIError("--preconditioned-sharpness needs --sharpness-every N")
    out = Path(args.out)
    print(
        f"spectorch lm train: {config.arch} GPT, {config.layers} layers of width "
        f"{config.width}, {config.steps} steps on the standard library's source -> {out}/"
    )
    result = lm.run(
        out,
        config,
        checkpoint_every=args.checkpoint_every,
        device=_device(args.device),
        progress=not args.quiet,
        sharpness_every=args.sharpness_every,
        sharpness_sequences=args.sharpness_sequences,
        sharpness_preconditioned=args.preconditioned_sharpness,
    )
    last = result.losses[-1] if result.losses else float("nan")
    print(
        f"final training loss {last:.4f} nats/byte; held-out {result.held_out_loss:.4f} "
        f"nats/byte ({result.held_out_loss / 0.6931471805599453:.3f} bits/byte); "
        f"{len(result.checkpoints)} checkpoints in {out}/"
    )
    if result.checkpoints:
        print(f"next: spectorch density {result.checkpoints[-1]} --blocks modules")
    return 0


def _add_lm(sub: Any) -> None:
    from spectorch.experiments import lm

    parser = sub.add_parser(
        "lm",
        help=_HELP["lm"],
        description="A GPT-2-style language model built from a config (no download), "
        "trained on the Python standard library's own source at byte level, with "
        "checkpoints every N steps; `spectorch density CHECKPOINT` gives the curvature "
        "of a checkpoint (with --blocks, one density per block).",
    )
    lsub = parser.add_subparsers(dest="lm_command", metavar="STEP", required=True)
    train = lsub.add_parser("train", help="AdamW with warm-up and cosine decay, resumable")
    train.add_argument("--out", required=True, help="run directory (checkpoints step_<n>.pt)")
    every = _default(lm.run, "checkpoint_every")
    train.add_argument("--checkpoint-every", type=_positive_int, default=every, help=f"({every})")
    _add_config(train, lm.LMConfig)
    train.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    train.add_argument("--sharpness-every", type=_positive_int, default=None, metavar="N",
                       help="track the top Hessian eigenvalue every N steps into "
                            "OUT/sharpness.csv (off)")  # fmt: skip
    sequences = _default(lm.run, "sharpness_sequences")
    train.add_argument("--sharpness-sequences", type=_positive_int, default=sequences,
                       help=f"training windows of the tracked Hessian ({sequences})")  # fmt: skip
    train.add_argument("--preconditioned-sharpness", action="store_true",
                       help="track AdamW's preconditioned sharpness, λ_max(P⁻¹H), against "
                            "38/η at the peak rate (Cohen et al. 2022)")  # fmt: skip
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=_cmd_lm_train)


# ----------------------------------------------------------------------------- parsers
#: the sub-commands in the order of ``spectorch --help``, with their one-line help
_HELP = {
    "tour": "a short run of every capability, with figures",
    "density": "eigenvalue density of a network's curvature by stochastic Lanczos quadrature",
    "eigenpairs": "top (or bottom) eigenvalues and eigenvectors of a network's curvature",
    "landscape": "the loss along the top Hessian eigenvectors or random directions, a figure",
    "eos": "the edge of stability on digits: sharpness against 2/η (GD) or 38/η (Adam)",
    "cifar": "the CIFAR-10 workflow: train with checkpoints, eval, densities, figures",
    "lm": "a GPT-2-style language model trained on Python's own source, for curvature",
    "spin": "spectral inference networks: eigenfunctions of kernels and differential operators",
    "rim": "recurrent inference machines: learned solvers for inverse problems",
}


def build_parser(only: str | None = None, *, full: bool = True) -> argparse.ArgumentParser:
    """The ``spectorch`` parser.

    Args:
        only: build the options of this sub-command alone (the others are listed with
            their help but take no options), so a command imports only what it needs.
        full: False lists every sub-command without its options: ``--help`` and
            ``--version`` then answer without importing torch.
    """
    parser = argparse.ArgumentParser(
        prog="spectorch",
        description="Study and train neural networks through the spectra of linear operators.",
    )
    parser.add_argument("--version", action="version", version=f"spectorch {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    adders = {"tour": _add_tour, "density": _add_density, "eigenpairs": _add_eigenpairs,
              "landscape": _add_landscape, "eos": _add_eos, "cifar": _add_cifar, "lm": _add_lm,
              "spin": _add_spin, "rim": _add_rim}  # fmt: skip
    for name, add in adders.items():
        if full and only in (None, name):
            add(sub)
        else:
            sub.add_parser(name, help=_HELP[name], add_help=False)
    return parser


# ----------------------------------------------------------------------------- eigenpairs
def _operator_for(args: argparse.Namespace) -> Any:
    from spectorch.curvature import make_operator

    options = _operator_options(args)  # before the problem is built
    model, loss, data, _, _ = _problem(args.entry, sequences=args.sequences)
    model.to(_device(args.device))
    return make_operator(args.operator, model, loss, data, **options)


def _cmd_eigenpairs(args: argparse.Namespace) -> int:
    import torch

    from spectorch._io import atomic_torch_save, atomic_write_json
    from spectorch.linalg import top_eigenpairs

    out = Path(args.out)
    op = _operator_for(args)
    if args.k > op.shape[0]:
        raise CLIError(f"-k {args.k} is more than the {op.shape[0]} parameters")
    pairs = top_eigenpairs(op, args.k, which=args.which, seed=args.seed, progress=not args.quiet)
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "entry": args.entry,
        "operator": op.describe(),
        "which": args.which,
        "eigenvalues": pairs.values.tolist(),
        "residuals": pairs.residuals.tolist(),
        "converged": pairs.converged.tolist(),
        "products": pairs.products,
        "tol": pairs.tol,
    }
    atomic_write_json(out / "eigenpairs.json", summary)
    atomic_torch_save(out / "eigenvectors.pt", {"vectors": pairs.vectors.to(torch.float32),
                                                "param_names": list(op.param_names)})  # fmt: skip
    for i, (v, r) in enumerate(zip(pairs.values.tolist(), pairs.residuals.tolist(), strict=True)):
        print(f"λ{i + 1} = {v:.8g}  (residual {r:.2g})")
    print(f"{pairs.products} products; wrote {out / 'eigenpairs.json'}, {out / 'eigenvectors.pt'}")
    return 0


def _add_problem_options(parser: Any) -> None:
    from spectorch.curvature import OPERATORS

    parser.add_argument("entry", metavar="ENTRY",
                        help="MODULE:FUNCTION returning (model, loss, data), or a "
                             "`spectorch lm train` checkpoint or run directory")  # fmt: skip
    parser.add_argument("--sequences", type=_positive_int, default=None,
                        help="with a language-model checkpoint: training windows (16)")  # fmt: skip
    parser.add_argument("--operator", choices=sorted(OPERATORS), default="hessian")
    _add_product_options(parser)
    parser.add_argument("--seed", type=_nonnegative_int, default=0)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_eigenpairs(sub: Any) -> None:
    from spectorch.linalg import WHICH

    parser = sub.add_parser("eigenpairs", help=_HELP["eigenpairs"],
                            description="Thick-restart Lanczos; writes eigenpairs.json and "
                            "eigenvectors.pt (float32 rows, in parameter order). Example: "
                            "spectorch eigenpairs spectorch.experiments.digits:digits_problem "
                            "-k 5 --out eig")  # fmt: skip
    _add_problem_options(parser)
    parser.add_argument("-k", type=_positive_int, default=5, help="eigenpairs (5)")
    parser.add_argument("--which", choices=WHICH, default="largest")
    parser.set_defaults(func=_cmd_eigenpairs)


def _cmd_landscape(args: argparse.Namespace) -> int:
    from spectorch._io import atomic_write_json
    from spectorch.curvature import loss_landscape

    if args.points % 2 == 0:
        raise CLIError(
            f"--points must be odd (the weights are the middle point), got {args.points}"
        )
    out = Path(args.out)
    op = _operator_for(args)
    land = loss_landscape(op, args.directions, dims=args.dims, span=args.span,
                          points=args.points, seed=args.seed, progress=not args.quiet)  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    land.save(out / "landscape.npz")
    png = land.plot(out / "landscape.png", title=Path(args.entry).name)
    atomic_write_json(out / "landscape.json", {
        "entry": args.entry, "directions": land.kind, "dims": land.dims, "span": args.span,
        "points": args.points, "center_loss": land.center,
        "eigenvalues": None if land.eigenvalues is None else land.eigenvalues.tolist(),
        "max_loss": float(land.losses.max()), "min_loss": float(land.losses.min()),
    })  # fmt: skip
    print(f"loss {land.center:.6g} at the weights, {land.losses.min():.6g} to "
          f"{land.losses.max():.6g} on the grid; wrote {png}")  # fmt: skip
    return 0


def _add_landscape(sub: Any) -> None:
    parser = sub.add_parser("landscape", help=_HELP["landscape"],
                            description="The loss on a line or plane through the weights, "
                            "along the top Hessian eigenvectors (--directions top) or "
                            "filter-normalised random directions (Li et al. 2018); writes "
                            "landscape.npz, landscape.json and landscape.png.")  # fmt: skip
    _add_problem_options(parser)
    parser.add_argument("--directions", choices=("top", "random"), default="top")
    parser.add_argument("--dims", type=int, choices=(1, 2), default=1)
    parser.add_argument("--span", type=_positive_float, default=1.0,
                        help="steps from -SPAN to SPAN along each direction (1.0)")  # fmt: skip
    parser.add_argument("--points", type=_positive_int, default=21, help="odd, per direction (21)")
    parser.set_defaults(func=_cmd_landscape)


def _cmd_eos(args: argparse.Namespace) -> int:
    from spectorch.experiments import eos

    out = Path(args.out)
    summary = eos.run(out, _config(eos.EosConfig, args), progress=not args.quiet)
    for r in summary["runs"]:
        ratio = r["mean_ratio"]
        what = (f"from step {r['first_crossing']}: mean sharpness / threshold {ratio:.3f}"
                if ratio is not None else "never crossed the threshold upwards")  # fmt: skip
        print(f"η = {r['lr']:g} (threshold {r['threshold']:.4g}): {what}")
    print(f"figure and summary.json in {out}/; sharpness.csv per step size in {out}/lr_*/")
    return 0


def _add_eos(sub: Any) -> None:
    from spectorch.experiments import eos

    parser = sub.add_parser("eos", help=_HELP["eos"],
                            description="Full-batch training on scikit-learn's digits with "
                            "the sharpness tracked every few steps (Cohen et al. 2021, "
                            "2022); resumable: run the same command again after an "
                            "interruption.")  # fmt: skip
    parser.add_argument("--out", required=True, help="output directory")
    _add_config(parser, eos.EosConfig)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=_cmd_eos)


def _add_density(sub: Any) -> None:
    from spectorch.curvature import OPERATORS

    dens = sub.add_parser(
        "density",
        help=_HELP["density"],
        description=(
            "ENTRY is MODULE:FUNCTION (or path/file.py:FUNCTION), a function that returns "
            "(model, loss, data): data is a re-iterable of batches, loss a PyTorch loss for "
            "(inputs, targets) batches or a spectorch.curvature objective (CausalLM for "
            "language-model batches). ENTRY may also be a checkpoint (or run directory) of "
            "`spectorch lm train`: the loss is then the mean next-byte loss of its first "
            "--sequences training windows. "
            "Example: spectorch density spectorch.experiments.digits:digits_problem. Under "
            "torchrun (torchrun --nproc_per_node=N spectorch density ...) each rank takes a "
            "disjoint shard of the batches (an ENTRY that accepts rank= and world_size= shards its "
            "own data) and rank 0 writes the outputs. `spectorch density combine DIR... "
            "--out OUT` merges runs made one draw per job (--draw-index)."
        ),
    )
    dens.add_argument(
        "entry",
        metavar="ENTRY",
        help="MODULE:FUNCTION returning (model, loss, data), or a `spectorch lm train` "
        "checkpoint or run directory",
    )
    dens.add_argument(
        "--sequences",
        type=_positive_int,
        default=None,
        help="with a language-model checkpoint: training windows in the loss (16)",
    )
    dens.add_argument("--operator", choices=sorted(OPERATORS), default="hessian")
    _add_product_options(dens)
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
        choices=("auto", "memory", "float32", "disk"),
        default="auto",
        help="where the Lanczos vectors are kept: memory, float32 (half of it) or disk "
        "(in --out; memory no longer grows with --steps); the recurrence stays float64. "
        "auto, the default (memory in earlier versions), is float32 for a float32 "
        "network with partial reorthogonalisation, else memory",
    )
    dens.add_argument(
        "--reorth",
        choices=("auto", "full", "partial"),
        default="auto",
        help="reorthogonalise every step against the whole basis (full, as "
        "google/spectral-density does), or only when Simon's estimate of the loss of "
        "orthogonality says so (partial: the same tridiagonals to working precision, "
        "fewer reads of the basis); auto, the default (full in earlier versions), is "
        "partial on the curvature operators this command builds (--shard: full)",
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
    dens.add_argument(
        "--blocks",
        nargs="+",
        default=None,
        metavar="BLOCK",
        help="also one density per block of parameters (the principal sub-matrix): a preset "
        "(parameters, modules, layers) or NAME=GLOB[,GLOB...] pairs, e.g. "
        "attn='h.*.attn.*' mlp='h.*.mlp.*'; figure blocks.png, each block in --out/blocks/NAME",
    )
    dens.add_argument(
        "--shard",
        action="store_true",
        help="under torchrun: shard the model's parameters with FSDP2 (every block of a "
        "ModuleList, then the rest) and run Lanczos on sharded vectors; Hessian only, "
        "finite-difference products",
    )
    dens.add_argument("--out", default="spectorch-out/density", help="output directory")
    dens.add_argument("--quiet", action="store_true", help="no progress bars")
    dens.set_defaults(func=_cmd_density)


def _add_product_options(parser: argparse.ArgumentParser) -> None:
    """``--hvp``, ``--cache-graphs`` and ``--compile``: the operator's product options
    (:func:`_operator_options` checks them against ``--operator``)."""
    parser.add_argument(
        "--hvp",
        choices=("reverse", "forward", "finite-difference"),
        default=None,
        help="how the loss is differentiated twice (the operator's default: reverse): "
        "reverse-over-reverse, forward-over-reverse, or central differences of gradients "
        "(Hessian only; for kernels without a double backward)",
    )
    parser.add_argument(
        "--cache-graphs",
        choices=("auto", "yes", "no"),
        default=None,
        help="Hessian: keep each batch's gradient graph between products (auto: while they "
        "fit in a quarter of the memory); with --hvp forward, yes keeps each batch's "
        "traced linearisation instead (products at parity with a kept graph, 2-3x the memory)",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="run the products that build their graphs anew through torch.compile "
        "(Hessian, GGN; a compilation at the first product)",
    )


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
        command = argv[0] if argv and argv[0] in _HELP else None
        # --help and --version (and a mistyped command) need no sub-command's options
        parser = build_parser(command, full=command is not None)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    _say_resumes()
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
    except Exception as exc:
        from spectorch.distributed import DistributedError

        if isinstance(exc, DistributedError):
            print(f"spectorch: error: {exc}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
