"""``spectorch tour``: a short run of every capability, with figures and a summary
(:class:`TourConfig` and :func:`run`)."""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spectorch import checks
from spectorch.curvature import make_operator
from spectorch.data import Batches, load_digits
from spectorch.density import spectral_density
from spectorch.experiments._options import option
from spectorch.experiments.cifar import cifar_demo
from spectorch.experiments.digits import train_digits_mlp
from spectorch.experiments.lm import lm_demo
from spectorch.plotting import plot_densities, plot_density
from spectorch.train import RunDirectory

__all__ = ["TourConfig", "run", "run_tour"]


@dataclass
class TourConfig:
    """The lengths of the tour's parts."""

    digits_hidden: int = option(26, "hidden units of the digits MLP (26: 1,960 parameters)")
    digits_epochs: int = option(60, "training epochs of the digits MLP whose curvature is shown")
    slq_draws: int = option(10, "SLQ draws of its Hessian (half as many for the GGN and Fisher)")
    cifar_steps: int = option(60, "training steps of each CIFAR-format ResNet")
    cifar_images: int = option(1024, "generated CIFAR-format training images")
    cifar_lanczos_steps: int = option(20, "Lanczos steps of each checkpoint's density")
    cifar_density_images: int = option(128, "training images in each checkpoint's density")
    lm_steps: int = option(150, "training steps of the small GPT on Python's source")
    lm_lanczos_steps: int = option(20, "Lanczos steps of each GPT block density")
    eos_steps: int = option(500, "full-batch GD steps of the edge-of-stability run (η = 1.5)")
    kernel_steps: int = option(1000, "training steps of each kernel objective")
    hydrogen_steps: int = option(3000, "NeuralEF steps on 2-D hydrogen")
    atari_frames: int = option(2000, "Space Invaders frames to collect")
    atari_steps: int = option(60, "slow-feature steps")
    pruning_epochs: int = option(30, "epochs of each pruning training")
    rim_epochs: int = option(8, "RIM training epochs")
    rim_features: int = option(16, "width of the RIM's network")

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            checks.positive_int(name, value)


_LABELS = {"hessian": "Hessian", "ggn": "GGN", "fisher": "empirical Fisher"}

#: The tour's hydrogen recipe, the best of the runs compared in docs/tour.md:
#: NeuralEF with Adam at 3e-3 and a cosine decay, batches of 256 importance-sampled
#: points, and the finite-difference Laplacian (a third of the exact one's cost;
#: its error, O(1e-4) relative, is far below the training error).
HYDROGEN = {
    "objective": "neuralef",
    "batch_size": 256,
    "importance": True,
    "cosine": True,
    "lr": 3e-3,
    "laplacian_eps": 0.01,
    "log_image_every": 1000,
    "save_params_every": 1000,
}


def _curvature_spectra(out: Path, config: TourConfig, progress: bool) -> dict[str, Any]:
    """Hessian, GGN and Fisher densities of the digits MLP, checked against exact ones."""
    t0 = time.perf_counter()
    model, losses = train_digits_mlp(
        hidden=config.digits_hidden,
        epochs=config.digits_epochs,
        dtype=torch.float64,
        checkpoint=out / "digits_mlp.pt",
        progress=progress,
    )
    train_seconds = time.perf_counter() - t0
    X, y = load_digits(split="train", dtype=torch.float64)
    Xt, yt = load_digits(split="test", dtype=torch.float64)
    with torch.no_grad():
        accuracy = float((model(Xt).argmax(1) == yt).double().mean())
    data = Batches(X, y, 512)
    loss = nn.CrossEntropyLoss()

    densities, report = {}, {}
    half = max(config.slq_draws // 2, 1)
    for name, draws in (("hessian", config.slq_draws), ("ggn", half), ("fisher", half)):
        op = make_operator(name, model, loss, data)
        t0 = time.perf_counter()
        dens = spectral_density(
            op,
            steps=90,
            draws=draws,
            seed=0,
            probes_per_pass=5,
            out=out / f"density_{name}",
            progress=progress,
        )
        seconds = time.perf_counter() - t0
        exact = torch.linalg.eigvalsh(op.to_dense()).numpy()
        span = float(exact[-1] - exact[0])
        trace = dens.trace()
        report[name] = {
            "parameters": op.shape[0],
            "draws": draws,
            "steps": 90,
            "seconds": round(seconds, 2),
            "top_eigenvalue": float(dens.top_eigenvalues(1)[0]),
            "top_eigenvalue_exact": float(exact[-1]),
            "top_eigenvalue_rel_error": float(abs(dens.top_eigenvalues(1)[0] - exact[-1]))
            / abs(float(exact[-1])),
            "wasserstein1_over_range": dens.wasserstein(exact) / span,
            "trace": trace.value,
            "trace_exact": float(exact.sum()),
            "trace_rel_error": abs(trace.value - float(exact.sum())) / abs(float(exact.sum())),
        }
        densities[name] = dens
        plot_density(
            dens,
            out / f"density_{name}.png",
            exact=exact,
            title=f"{_LABELS[name]} of a {op.shape[0]}-parameter MLP on 8x8 digits",
        )
    plot_densities(
        {_LABELS[k]: v for k, v in densities.items()},
        out / "curvature_densities.png",
        title="curvature spectra of the digits MLP (SLQ)",
    )
    return {
        "train": {
            "epochs": len(losses),
            "final_loss": losses[-1],
            "test_accuracy": accuracy,
            "seconds": round(train_seconds, 2),
        },
        "operators": report,
        "figures": [
            "density_hessian.png",
            "density_ggn.png",
            "density_fisher.png",
            "curvature_densities.png",
        ],
    }


def _edge_of_stability(out: Path, config: TourConfig, progress: bool) -> dict[str, Any]:
    """Full-batch GD at η = 1.5 on digits with the sharpness tracked: it rises to 2/η and
    hovers there (the short version of ``spectorch eos``)."""
    from spectorch.experiments import eos

    cfg = eos.EosConfig(lrs=(1.5,), steps=config.eos_steps, every=5,
                        checkpoint_every=config.eos_steps)  # fmt: skip
    summary = eos.run(out, cfg, progress=progress)
    return {**summary["runs"][0], "figures": ["sharpness.png"]}


def _spectral_inference(out: Path, config: TourConfig, progress: bool) -> dict[str, Any]:
    """A kernel run (each objective against eigh) and a short 2-D hydrogen run."""
    from spectorch.experiments import hydrogen, kernel

    t0 = time.perf_counter()
    kern = kernel.run(
        out / "kernel", kernel.KernelConfig(steps=config.kernel_steps), progress=progress
    )
    kern["seconds"] = round(time.perf_counter() - t0, 1)
    t1 = time.perf_counter()
    cfg = hydrogen.HydrogenConfig(**{**HYDROGEN, "niter": config.hydrogen_steps})
    result = hydrogen.run(out / "hydrogen", cfg, progress=progress, eval_samples=10_000)
    hyd = result.summary()
    hyd["seconds"] = round(time.perf_counter() - t1, 1)
    figures = ["kernel/kernel.png", "hydrogen/eigenfunctions.png", "hydrogen/eigenvalues.png"]
    slow = _slow_features(out / "atari", config, progress)
    if "figure" in slow:
        figures.append(f"atari/{slow['figure']}")
    return {"kernel": kern, "hydrogen": hyd, "atari": slow, "figures": figures}


def _slow_features(out: Path, config: TourConfig, progress: bool) -> dict[str, Any]:
    """Frames of Space Invaders played at random (ale-py), then a short slow-feature run."""
    from spectorch.data import collect, games
    from spectorch.experiments import atari

    try:
        games()
    except ImportError:
        return {"skipped": "ale-py is not installed (pip install 'spectorch[atari]')"}
    t0 = time.perf_counter()
    data = out / "space_invaders.npz"
    if not data.exists():
        collect("space_invaders", config.atari_frames, seed=0, out=data, progress=progress)
    cfg = atari.AtariConfig(
        niter=config.atari_steps,
        batch_size=64,
        evaluation_stacks=512,
        log_image_every=config.atari_steps,
        save_params_every=config.atari_steps,
    )
    result = atari.run(out / "run", data, cfg, progress=progress)
    summary = result.summary()
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    summary["figure"] = "run/slow_features.png"
    return summary


def _rim(out: Path, config: TourConfig, progress: bool) -> dict[str, Any]:
    """A short RIM run on digits deblurring, scored against the classical solvers."""
    from spectorch.experiments import rim

    t0 = time.perf_counter()
    metrics = rim.run(
        out,
        rim.RimConfig(task="digits-deblur", epochs=config.rim_epochs, features=config.rim_features),
        progress=progress,
    )
    return {
        "epochs": metrics["epochs"],
        "psnr": metrics["psnr"],
        "seconds": round(time.perf_counter() - t0, 1),
        "figures": ["rim/rim.png"],
    }


def run(
    out: str | os.PathLike = "spectorch-out",
    config: TourConfig | None = None,
    *,
    progress: bool = True,
) -> dict[str, Any]:
    """Run every capability briefly, write figures and ``summary.json``/``summary.txt``.

    Returns:
        The summary as a dict.
    """
    config = config or TourConfig()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out must be a directory, but {out} is a file")
    out.mkdir(parents=True, exist_ok=True)
    from spectorch.experiments import pruning

    sections = {
        "curvature_spectra": lambda: _curvature_spectra(out / "curvature", config, progress),
        "cifar_workflow": lambda: cifar_demo(
            out / "cifar",
            images=config.cifar_images,
            train_steps=config.cifar_steps,
            checkpoint_every=max(config.cifar_steps // 2, 1),
            lanczos_steps=config.cifar_lanczos_steps,
            density_images=config.cifar_density_images,
            progress=progress,
        ),
        "language_model": lambda: lm_demo(
            out / "lm",
            steps=config.lm_steps,
            lanczos_steps=config.lm_lanczos_steps,
            progress=progress,
        ),
        "curvature_during_training": lambda: _edge_of_stability(out / "eos", config, progress),
        "spectral_inference": lambda: _spectral_inference(out / "spin", config, progress),
        "spectral_layers": lambda: pruning.run(
            out / "pruning", pruning.PruningConfig(epochs=config.pruning_epochs), progress=progress
        ),
        "rim": lambda: _rim(out / "rim", config, progress),
    }
    t0 = time.perf_counter()
    summary: dict[str, Any] = {"config": asdict(config), "section_seconds": {}}
    for name, section in sections.items():
        t1 = time.perf_counter()
        summary[name] = section()
        summary["section_seconds"][name] = round(time.perf_counter() - t1, 1)
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    results = RunDirectory(out, kind="tour", settings_file=None)
    results.write_json("summary.json", summary)
    results.write_text("summary.txt", _summary_text(summary))
    return summary


#: The name of spectorch 0.1.
run_tour = run


def _summary_text(summary: dict[str, Any]) -> str:
    cs = summary["curvature_spectra"]
    lines = [
        "spectorch tour",
        "",
        "1. Curvature spectra by stochastic Lanczos quadrature",
        f"   digits MLP: {cs['train']['epochs']} epochs, test accuracy "
        f"{cs['train']['test_accuracy']:.3f}",
    ]
    lines.append("   against the exact spectrum (eigh of the dense matrix):")
    for name, r in cs["operators"].items():
        lines.append(
            f"   {name:8s} P={r['parameters']}  {r['draws']}x{r['steps']} steps in "
            f"{r['seconds']:.1f}s  top eig {r['top_eigenvalue']:.6g} "
            f"(rel err {r['top_eigenvalue_rel_error']:.1e})  W1/range "
            f"{r['wasserstein1_over_range']:.1e}  trace rel err {r['trace_rel_error']:.1e}"
        )
    lines.append(f"   figures: {', '.join('curvature/' + f for f in cs['figures'])}")
    cw = summary.get("cifar_workflow")
    if cw:
        lines += [
            "",
            "2. CIFAR workflow: train -> checkpoints -> densities (generated CIFAR-format files)",
            f"   ResNet-{cw['depth']} (width {cw['width']}) on {cw['images']} images, "
            f"in {summary['section_seconds']['cifar_workflow']:.1f}s",
        ]
        for name, rows in cw["runs"].items():
            for r in rows:
                lines.append(
                    f"   {name:13s} step {r['step']:4d}  test acc {r['test_accuracy']:.3f}  "
                    f"top eig {r['top_eigenvalue']:.4g}  trace {r['trace']:.4g}"
                )
        lines.append(f"   figures: {', '.join('cifar/' + f for f in cw['figures'])}")
    lm = summary.get("language_model")
    if lm:
        lines += [
            "",
            "3. A GPT on Python's own source: train -> checkpoints -> Hessian per block",
            f"   {lm['parameters']} parameters, {lm['steps']} steps: loss {lm['first_loss']:.3f} "
            f"-> {lm['final_loss']:.3f} nats/byte (held out {lm['held_out_loss']:.3f}), in "
            f"{summary['section_seconds']['language_model']:.1f}s",
        ]
        for name, r in lm["checkpoints"].items():
            tops = ", ".join(f"{k} {v:.3g}" for k, v in r["block_top_eigenvalues"].items())
            lines.append(
                f"   {name}  top eig {r['top_eigenvalue']:.4g}; by block: {tops}; mean JS "
                f"distance between blocks {r['js_distance_mean']:.3f}"
            )
        lines.append(f"   figures: {', '.join('lm/' + f for f in lm['figures'])}")
    ed = summary.get("curvature_during_training")
    if ed:
        if ed["first_crossing"] is None:
            what = f"never crossed 2/η (max {ed['max_ratio_before']:.2f} of it)"
        else:
            what = (f"crossed 2/η at step {ed['first_crossing']}, then hovered at "
                    f"{ed['mean_ratio']:.3f} of it on average ({ed['measurements']} "
                    "measurements)")  # fmt: skip
        lines += [
            "",
            "3b. Curvature during training: the edge of stability (Cohen et al. 2021)",
            f"   tanh MLP, full-batch GD at η = {ed['lr']:g} on digits: the sharpness {what}; "
            f"{ed['products_per_measurement']:.0f} products and "
            f"{ed['cpu_seconds_per_measurement']:.2f}s per measurement",
            "   figure: eos/sharpness.png",
        ]
    si = summary.get("spectral_inference")
    if si:
        k = si["kernel"]
        lines += [
            "",
            "4. Spectral inference networks",
            f"   RBF kernel on 200 points, top {len(k['exact'])} eigenvalues (eigh): "
            + ", ".join(f"{v:.4f}" for v in k["exact"])
            + f"  ({k['seconds']:.1f}s)",
        ]
        for name, r in k["objectives"].items():
            lines.append(
                f"   {name:9s} max rel err {r['max_relative_error']:.1%}  "
                f"subspace overlap {r['overlap']:.3f}"
            )
        h = si["hydrogen"]
        shells = ", ".join(f"{d:.2f}" for d in h["shell_distances"])
        lines += [
            f"   2-D hydrogen, NeuralEF, {h['steps']} steps in {h['seconds']:.1f}s: the "
            f"{len(h['exact'])} lowest energies against the exact -1/(2n+1)^2: mean rel err "
            f"{h['mean_relative_error']:.1%}",
            "     learned " + " ".join(f"{v:8.4f}" for v in h["eigenvalues"]),
            "     exact   " + " ".join(f"{v:8.4f}" for v in h["exact"]),
            f"     subspace distance to the exact eigenfunctions per shell: {shells}",
        ]
        slow = si.get("atari", {})
        if "skipped" in slow:
            lines.append(f"   Atari slow features: skipped, {slow['skipped']}")
        elif slow:
            lines.append(
                f"   Space Invaders slow features, {slow['steps']} steps in "
                f"{slow['seconds']:.1f}s: slowness (0 for the constant; lower is slower) "
                + ", ".join(f"{v:.3g}" for v in slow["evaluation"])
            )
        lines.append(f"   figures: {', '.join('spin/' + f for f in si['figures'])}")
    sl = summary.get("spectral_layers")
    if sl:

        def curve(rows: list[dict[str, Any]]) -> str:
            return ", ".join(f"{c['removed']}%: {c['acc']:.3f}" for c in rows)

        lines += [
            "",
            "5. Spectral layers: training in the spectral domain, pruning by |eigenvalue|",
            f"   Spectral 64-{sl['hidden']}-10 on digits; reference, fully trained and "
            f"unpruned: test accuracy {sl['reference']['acc']:.3f}",
            f"   fully trained, by nodes removed (no fine-tuning): {curve(sl['full'])}",
            f"   eigenvalues only trained, pruned:              {curve(sl['curve'])}",
            f"   pre-training filter at 90% ({sl['filter_90']['kept']} nodes left), then "
            f"trained: {sl['filter_90']['acc']:.3f}  ({sl['seconds']:.1f}s)",
            "   figure: pruning/pruning.png",
        ]
    rim = summary.get("rim")
    if rim:
        scores = ", ".join(
            f"{k} {v:.2f}" for k, v in sorted(rim["psnr"].items(), key=lambda kv: kv[1])
        )
        lines += [
            "",
            "6. Recurrent inference machine: 8x8 digits under a 5x5 blur, noise 0.05",
            f"   {rim['epochs']} epochs in {rim['seconds']:.1f}s; test PSNR (dB) against the "
            f"classical solvers: {scores}",
            "   figure: rim/rim.png",
        ]
    lines += ["", "time per section (wall clock):"]
    for name, seconds in summary.get("section_seconds", {}).items():
        lines.append(f"   {name:26s} {seconds:7.1f}s")
    lines.append(f"   {'total':26s} {summary['seconds']:7.1f}s")
    return "\n".join(lines) + "\n"
