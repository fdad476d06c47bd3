"""The ``fastshower`` command: one sub-command per pipeline stage.

Each command is a thin wrapper: it parses options, calls the library and prints. Bad input ends
with a one-line ``error: ...`` on stderr and exit code 2 (see :func:`main`). Nothing imports this
module.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from fastshower.errors import TargetNotMetError, UserInputError

app = typer.Typer(
    name="fastshower",
    help="Fast calorimeter shower simulation with deep generative models.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)



@app.callback()
def _root() -> None:
    """Fast calorimeter shower simulation with deep generative models."""


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


def _overwrite_option():
    return typer.Option(False, "--overwrite", help="Replace an existing output file.")


def _require_onnx(*models: str) -> None:
    """A one-line DataFileError for a ``.onnx`` model argument that is not a readable ONNX generator."""
    from fastshower.errors import DataFileError, FastshowerError

    for model in models:
        if not str(model).endswith(".onnx"):
            continue
        from fastshower.infer.onnx_export import read_metadata

        try:
            read_metadata(model)
        except (FastshowerError, FileNotFoundError, ValueError):
            raise
        except Exception as exc:  # protobuf DecodeError, onnx errors: not an ONNX file
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DataFileError(f"{model} is not a readable ONNX file ({type(exc).__name__}: {detail})") from None


def _check_condition_count(n: int) -> None:
    """Refuse -n whose conditions (2 float64 per shower) do not fit in the available memory."""
    import os

    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return
    if 16 * n > available:
        raise UserInputError(f"-n {n}: its conditions alone need {16 * n / 2**30:.1f} GiB, more than the "
                             f"{available / 2**30:.1f} GiB of free memory; split the run (several files with "
                             f"different --seed)")


@app.command()
def geometries(
    show: Optional[str] = typer.Argument(None, help="Preset name or YAML file to describe in full."),
) -> None:
    """List the detector geometry presets, or describe one (derived material properties included)."""
    from fastshower.geometry import PRESETS, load_geometry

    if show is None:
        for name, g in PRESETS.items():
            typer.echo(f"{name:10s} {g.kind:11s} {'x'.join(map(str, g.shape)):9s} {g.description}")
        return
    g = load_geometry(show)
    typer.echo(f"{g.name}: {g.description}")
    typer.echo(f"  kind {g.kind}, shape {g.shape}, layers {g.n_layers}, depth {g.layer_edges_mm()[-1]:.1f} mm "
               f"= {g.layer_radiation_lengths().sum():.1f} X0")
    typer.echo(f"  X0_eff {g.radiation_length_mm:.2f} mm, R_M_eff {g.moliere_radius_mm:.2f} mm, "
               f"E_c_eff {g.critical_energy_mev:.2f} MeV, sampling fraction {g.sampling_fraction:g} "
               f"(mip {g.mip_sampling_fraction:.4f})")


# ---------------------------------------------------------------- simulate / data (issue 2)

SIMULATED_PARTICLES = ("e-", "gamma")


@app.command()
def simulate(
    output: Path = typer.Option(..., "-o", "--output", help="Shower file to write (HDF5)."),
    geometry: str = typer.Option("clic25", "--geometry", "-g", help="Preset name or geometry YAML file."),
    energy: str = typer.Option("2:500", "--energy", help="Primary energy in GeV: 100, 2:500, 1:1000:log or 10,50,100."),
    angle: str = typer.Option("90", "--angle", help="Incident polar angle in deg (90 = normal incidence), same forms."),
    n: int = typer.Option(1000, "-n", "--n-events", help="Number of showers."),
    format: str = typer.Option("native", "--format", help="native, 3dgan or calochallenge."),
    seed: int = typer.Option(0, "--seed", help="Seed of the one random generator (conditions and showers)."),
    particle: str = typer.Option("e-", "--particle", help="e- or gamma."),
    batch_size: int = typer.Option(1000, "--batch-size", help="Showers simulated and written per batch."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output file."),
    gflash_params: Optional[str] = typer.Option(
        None, "--gflash-params", help="GFlash parameters: a file from `fastshower gflash tune`, a shipped set "
        "(clic25_geant4) or default (the published Grindhammer-Peters values, also when omitted)."),
) -> None:
    """Simulate showers with the GFlash parametrisation and stream them to a file (constant memory)."""
    from tqdm import tqdm

    from fastshower.data import ShowerWriter
    from fastshower.geometry import load_geometry
    from fastshower.simulate import gflash

    if n < 1 or batch_size < 1:
        raise UserInputError(f"-n and --batch-size must be >= 1, got {n} and {batch_size}")
    params = gflash.load_parameters(gflash_params)
    if particle not in SIMULATED_PARTICLES:
        raise UserInputError(f"unknown particle {particle!r}; expected one of {', '.join(SIMULATED_PARTICLES)}")
    g = load_geometry(geometry)
    batches = gflash.iter_simulate(g, energy, angle, n, seed=seed, batch_size=batch_size, particle=particle,
                                   params=params)
    attrs = {"simulator": "gflash", "seed": seed, "particle": particle, "energy_spec": energy, "angle_spec_deg": angle,
             "gflash_params": gflash.parameters_label(gflash_params)}
    with ShowerWriter(output, g, format=format, attrs=attrs, overwrite=overwrite) as writer, \
            tqdm(total=n, desc="simulate", unit="shower") as bar:
        for part in batches:
            writer.write(part)
            bar.update(len(part))
    typer.echo(f"wrote {n} {particle} showers ({g.name}, {writer.layout.name}) to {output}")


@app.command()
def inspect(
    path: str = typer.Argument(..., help="Shower file or glob pattern in quotes ('EleEscan_*.h5')."),
    geometry: Optional[str] = typer.Option(None, "--geometry", "-g",
                                           help="Geometry (preset or YAML) when the file does not tell."),
    chunk_size: int = typer.Option(1000, "--chunk-size", help="Events read per chunk."),
    binning: Optional[Path] = typer.Option(None, "--binning",
                                           help="CaloChallenge binning XML to check against the file's geometry."),
) -> None:
    """Describe a shower file: layout, geometry, events, energy and angle ranges, deposits, attributes."""
    import math

    import numpy as np
    from tqdm import tqdm

    from fastshower.data import (check_binning, count_events, detect_layout, geometry_of, iter_showers,
                                 read_binning_xml, resolve_paths)

    files = resolve_paths(path)
    layout = detect_layout(files)
    n = count_events(files)
    e_min = a_min = math.inf
    e_max = a_max = -math.inf
    deposited = ratio = 0.0
    last = None
    with tqdm(total=n, desc="inspect", unit="shower", leave=False) as bar:
        for part in iter_showers(files, chunk_size=chunk_size, geometry=geometry):
            last = part
            e_min, e_max = min(e_min, part.primary_energy.min()), max(e_max, part.primary_energy.max())
            a_min, a_max = min(a_min, part.incident_angle.min()), max(a_max, part.incident_angle.max())
            dep = part.deposited_energy
            deposited += dep.sum()
            ratio += np.sum(dep / part.primary_energy)
            bar.update(len(part))
    if last is None:
        raise UserInputError(f"{path}: the file holds no events")
    name, attrs = last.geometry, last.attrs
    if binning is not None:
        check_binning(read_binning_xml(binning), geometry_of(last))
    typer.echo(f"files:            {len(files)} ({files[0]}{' ...' if len(files) > 1 else ''})")
    typer.echo(f"layout:           {layout}")
    typer.echo(f"geometry:         {name}")
    typer.echo(f"events:           {n}")
    typer.echo(f"primary energy:   {e_min:.4g} - {e_max:.4g} GeV")
    typer.echo(f"incident angle:   {math.degrees(a_min):.4g} - {math.degrees(a_max):.4g} deg")
    typer.echo(f"deposited energy: total {deposited:.6g} GeV, mean {deposited / n:.6g} GeV per shower")
    typer.echo(f"sampling fraction (mean deposited / primary): {ratio / n:.5g}")
    from fastshower.production import format_provenance

    for line in format_provenance(attrs):
        typer.echo(line)
    for key, value in sorted(attrs.items()):
        if key != "geometry_yaml":
            text = str(value)
            typer.echo(f"attr {key}: {text if len(text) <= 300 else text[:300] + f' ... ({len(text)} characters)'}")
    if binning is not None:
        typer.echo(f"binning {binning}: matches geometry {name}")


# ---------------------------------------------------------------- validate (issue 3)

@app.command()
def validate(
    reference: str = typer.Argument(..., help="Reference shower file (ground truth)."),
    candidates: list[str] = typer.Argument(..., help="Candidate shower file(s) (a generator's output, GFlash...)."),
    output: Path = typer.Option(..., "-o", "--output", help="Directory for report.html and metrics.json."),
    reference2: Optional[str] = typer.Option(
        None, "--reference2", help="Independent reference sample for the floor (default: split the reference in two)."),
    show_all: bool = typer.Option(False, "--all", help="Print the full metric table after the verdict table."),
    quick: bool = typer.Option(False, "--quick", help="Fewer SSIM pairs and FPD/KPD draws, no classifiers (CI, demo)."),
    no_classifier: bool = typer.Option(False, "--no-classifier", help="Skip the classifier tests."),
    max_events: Optional[int] = typer.Option(None, "--max-events", help="Read at most this many events per file."),
    geometry: Optional[str] = typer.Option(None, "--geometry", "-g", help="Geometry when the files do not tell."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split, the floor subsamples, SSIM pairs, classifiers."),
) -> None:
    """Compare candidate shower files with a reference: verdict table (--all: every metric beside its floor), HTML report."""
    from fastshower.validate.formatting import format_table, format_verdict
    from fastshower.validate.report import validate_files

    result = validate_files(reference, candidates, output, reference2, geometry=geometry, max_events=max_events,
                            quick=quick, classifier=not no_classifier, seed=seed)
    typer.echo(format_verdict(result.verdict))
    if show_all:
        typer.echo("")
        typer.echo(format_table(result.comparisons))
    else:
        typer.echo(f"floor: {result.comparisons[0].floor_source}")
    typer.echo(f"wrote {result.report_path} and {result.metrics_path}")


# ---------------------------------------------------------------- train (issue 4)

@app.command()
def train(
    config: Path = typer.Argument(..., help="Training config (YAML); see docs/training.md."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue a run directory (or checkpoint) exactly."),
    warm_start: Optional[Path] = typer.Option(None, "--warm-start",
                                              help="Start from another run's weights (checkpoint, run dir or "
                                                   "generator .safetensors); fresh optimizers and counters."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Override run.epochs (not with stages)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output directory (overrides run.output_dir)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a previous run in the output directory."),
) -> None:
    """Train a generator (GAN recipes, checkpoints, validation). Under torchrun: data-parallel."""
    from fastshower.train.config import load_config
    from fastshower.train.trainer import Trainer

    overrides: dict = {}
    if epochs is not None:
        overrides["run"] = {"epochs": epochs}
    if out is not None:
        overrides.setdefault("run", {})["output_dir"] = str(out.resolve())  # --out is relative to the cwd
    cfg = load_config(config, overrides)
    if epochs is not None and cfg.stages:
        raise UserInputError("--epochs cannot override a config with stages; edit stages[].epochs")
    trainer = Trainer(cfg, resume=resume, warm_start=warm_start, output_dir=out, overwrite=overwrite)
    try:
        records = trainer.fit()
    finally:
        trainer.close()
    if trainer.info.is_main:
        key = f"val_{cfg.run.best_metric}"
        scored = [r for r in records if isinstance(r.get(key), (int, float))]
        val = ""
        if scored:  # the best epoch's metric (the one saved as best.*), not the last epoch's
            best = min(scored, key=lambda r: r[key])
            name = cfg.run.best_metric.replace("_", " ").replace("mse", "MSE")
            val = f", best val {name} {best[key]:.4g} at epoch {best['epoch']} (best.safetensors)"
            if best is not scored[-1]:
                val += f", last epoch {scored[-1][key]:.4g}"
        typer.echo(f"trained {cfg.model.name} to epoch {trainer.epoch} (step {trainer.step}){val}; "
                   f"outputs in {trainer.out}")


# ---------------------------------------------------------------- infer: generate / export / benchmark / models (issue 5)

def _model_option(help: str):
    """The required ``--model/-m`` option of the inference commands."""
    return typer.Option(..., "--model", "-m", help=help)


def _output_option(help: str):
    """The required ``-o/--output`` option of the inference commands."""
    return typer.Option(..., "-o", "--output", help=help)


@app.command()
def generate(
    model: str = _model_option("Shipped model name, saved stem/.json/.safetensors, or .onnx file (fp32, fp16, int8)."),
    output: Path = _output_option("Shower file to write (HDF5)."),
    energy: str = typer.Option("2:500", "--energy", help="Primary energy in GeV: 100, 2:500, 1:1000:log or 10,50,100."),
    angle: str = typer.Option("90", "--angle", help="Incident polar angle in deg (90 = normal incidence), same forms."),
    n: int = typer.Option(1000, "-n", "--n-events", help="Number of showers."),
    format: str = typer.Option("native", "--format", help="native, 3dgan or calochallenge."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda[:N]."),
    precision: str = typer.Option("fp32", "--precision", help="fp32, bf16 or fp16 (torch); .onnx files run their own."),
    backend: str = typer.Option("torch", "--backend", help="torch or onnx."),
    batch_size: int = typer.Option(256, "--batch-size", help="Showers generated and written per batch."),
    seed: int = typer.Option(0, "--seed", help="Seed of the conditions and of the noise."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Intra-op CPU threads."),
    allow_extrapolation: bool = typer.Option(False, "--allow-extrapolation",
                                             help="Warn, not fail, for conditions outside the trained range."),
    overwrite: bool = _overwrite_option(),
) -> None:
    """Generate showers with a trained model into a file (streamed, constant memory)."""
    import numpy as np

    from fastshower.conditions import sample_angles, sample_energies
    from fastshower.infer.generator import Generator

    if n < 1:
        raise UserInputError(f"-n must be >= 1, got {n}")
    _check_condition_count(n)
    from fastshower.fileio import check_output

    check_output(output, overwrite)
    _require_onnx(model)
    gen = Generator.load(model, device=device, precision=precision, backend=backend, threads=threads,
                         allow_extrapolation=allow_extrapolation)
    rng = np.random.default_rng(seed)
    primary_energy = sample_energies(energy, n, rng)
    incident_angle = sample_angles(angle, n, rng)
    written = gen.generate_to_file(output, primary_energy, incident_angle, format=format, batch_size=batch_size,
                                   seed=seed, progress=True, overwrite=overwrite)
    typer.echo(f"wrote {written} showers ({gen.name}, {gen.geometry.name}, {format}, {gen.backend} {gen.precision} "
               f"on {gen.device}) to {output}")


@app.command()
def export(
    model: str = _model_option("Shipped model name or saved stem/.json/.safetensors."),
    output: Path = _output_option("File to write (.onnx)."),
    format: str = typer.Option("onnx", "--format", help="Export format (onnx)."),
    opset: int = typer.Option(17, "--opset", help="ONNX opset."),
    overwrite: bool = _overwrite_option(),
) -> None:
    """Export a generator for C++ / Geant4 use (ONNX; checked against PyTorch)."""
    import onnx
    import torch

    from fastshower.fileio import check_output
    from fastshower.infer.onnx_export import export_onnx

    if format != "onnx":
        raise UserInputError(f"unknown export format {format!r}; expected onnx")
    newest = onnx.defs.onnx_opset_version()
    if not 7 <= opset <= newest:
        raise UserInputError(f"--opset {opset} is outside 7-{newest} (this onnx); the default is 17")
    check_output(output, overwrite)
    try:
        info = export_onnx(model, output, opset=opset, check=True)
    except torch.onnx.OnnxExporterError as exc:  # an operator this opset cannot express
        detail = str(exc).strip().splitlines()[0].split(". Please")[0]
        raise UserInputError(f"cannot export with --opset {opset}: {detail}; the default 17 works") from None
    typer.echo(f"wrote {output} ({info['bytes'] / 2**20:.2f} MiB, opset {opset}); ONNX Runtime vs PyTorch on "
               f"{info['n_check']} showers: summed energy rel. error {info['max_rel_err_sum']:.2e}, "
               f"max cell error {info['max_abs_err']:.2e} GeV")


@app.command()
def models() -> None:
    """List the shipped generators: geometry, trained ranges, size and validation summary."""
    import math

    from fastshower.models.registry import list_shipped, read_card, resolve_generator_path

    names = list_shipped()
    if not names:
        typer.echo("no shipped generators in this installation")
        return
    for name in names:
        card = read_card(name)
        (e_lo, e_hi), (a_lo, a_hi) = card["energy_range_gev"], card["angle_range_rad"]
        typer.echo(f"{name}: {card['model']} on {card['geometry']} {'x'.join(map(str, card['shape']))}, "
                   f"E {e_lo:g}-{e_hi:g} GeV, angle {math.degrees(a_lo):.0f}-{math.degrees(a_hi):.0f} deg, "
                   f"{card['parameters']:,} parameters "
                   f"({resolve_generator_path(name).with_suffix('.safetensors').stat().st_size / 2**20:.1f} MiB), "
                   f"noise {card['noise_dim']}")
        validation = card.get("metadata", {}).get("validation")
        if isinstance(validation, dict):
            typer.echo("  validation: " + ", ".join(
                f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in validation.items()
                if not isinstance(v, (dict, list))))
        elif validation is not None:
            typer.echo(f"  validation: {validation}")
        else:
            typer.echo("  validation: none recorded in the model card")


@app.command()
def benchmark(
    model: list[str] = typer.Option(..., "--model", "-m",
                                    help="Model(s): shipped name, saved stem, or registry name[@width] (untrained, timing only)."),
    backend: list[str] = typer.Option(["torch"], "--backend", help="torch and/or onnx (repeat the option)."),
    precision: list[str] = typer.Option(["fp32"], "--precision", help="fp32, bf16, fp16 (repeat the option)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda[:N]."),
    batch_size: int = typer.Option(128, "--batch-size", help="Batch of the steps protocol."),
    repeats: int = typer.Option(5, "--repeats", help="Timed steps."),
    batches_per_step: int = typer.Option(2, "--batches-per-step", help="Batches per timed step."),
    warmup: int = typer.Option(2, "--warmup", help="Warm-up batches (timed apart)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="Intra-op CPU threads."),
    quick: bool = typer.Option(False, "--quick", help="CaloChallenge protocol with batches 1/16/256 and 3 repetitions."),
    no_calochallenge: bool = typer.Option(False, "--no-calochallenge", help="Skip the CaloChallenge protocol."),
    compile: bool = typer.Option(False, "--compile", help="Also try torch.compile (slow to compile)."),
    reference_n: int = typer.Option(200, "--reference-n", help="GFlash showers timed for the speed-up."),
    seed: int = typer.Option(0, "--seed", help="Seed of conditions and noise."),
    geant4: bool = typer.Option(True, "--geant4/--no-geant4",
                                help="Also time Geant4 full and fast (g4run) mode, one core (if installed)."),
    geant4_n: int = typer.Option(5, "--geant4-n", help="Geant4 full-simulation events timed."),
    geant4_energy: float = typer.Option(100.0, "--geant4-energy", help="Geant4 primary energy (GeV)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="JSON file for the results."),
) -> None:
    """Time generators (ms/shower, showers/s, memory, FLOPs, % of peak, speed-up over GFlash and Geant4)."""
    from fastshower.infer.benchmark import benchmark as run_benchmark
    from fastshower.infer.benchmark import format_table, write_json

    _require_onnx(*model)
    result = run_benchmark(model, backends=tuple(backend), precisions=tuple(precision), device=device,
                           batch_size=batch_size, warmup=warmup, repeats=repeats, batches_per_step=batches_per_step,
                           threads=threads, quick=quick, calochallenge=not no_calochallenge, include_compile=compile,
                           reference_n=reference_n, seed=seed, log=lambda m: typer.echo(m, err=True),
                           geant4=geant4, geant4_n=geant4_n, geant4_energy_gev=geant4_energy)
    typer.echo(format_table(result))
    if output is not None:
        write_json(result, output)
        typer.echo(f"wrote {output}")



# ---------------------------------------------------------------- quantize (issue 6)

@app.command()
def quantize(
    model: str = _model_option("Shipped model name, training run / saved stem/.json/.safetensors, or fp32 .onnx file."),
    output: Path = _output_option("ONNX file to write (the tuning log goes next to it, .tuning.json)."),
    target: float = typer.Option(0.01, "--target", help="Accuracy target relative to fp32 (0.01: slice means and "
                                 "widths within ~1 %; with --reference: profile MSE within 1 %, sampling fraction 0.01)."),
    precision: str = typer.Option("int8", "--precision", help="int8 (tuned layer by layer) or fp16."),
    select: str = typer.Option("fastest", "--select", help="int8: fastest model meeting the target, or the first found."),
    reference: Optional[Path] = typer.Option(None, "--reference", help="Reference-simulation shower file: judge by "
                                             "profile MSE and sampling fraction against it (its conditions are used)."),
    criterion: Optional[str] = typer.Option(None, "--criterion", help="shapes, physics or both (default: physics "
                                            "with --reference, else shapes)."),
    calibration_n: int = typer.Option(256, "--calibration-n", help="int8: calibration showers (seed --seed)."),
    eval_n: int = typer.Option(256, "--eval-n", help="Held-out evaluation showers (seed --seed + 1)."),
    conv3d: bool = typer.Option(False, "--conv3d", help="int8: also quantize 3-d convolutions (slower than fp32 "
                                "in ONNX Runtime on the CPUs measured)."),
    threads: Optional[int] = typer.Option(None, "--threads", help="ONNX Runtime intra-op threads for the timings."),
    seed: int = typer.Option(0, "--seed", help="Seed of the calibration inputs (evaluation: seed + 1)."),
    overwrite: bool = _overwrite_option(),
) -> None:
    """Reduced-precision ONNX generator: int8 tuned against an accuracy target, or fp16."""
    import tempfile

    from fastshower.infer import quantize as q

    if not target > 0:
        raise UserInputError(f"--target must be > 0, got {target}")
    if precision not in ("int8", "fp16"):
        raise UserInputError(f"unknown precision {precision!r}; expected int8 or fp16")
    criterion = criterion or ("physics" if reference is not None else "shapes")
    from fastshower.fileio import check_output

    check_output(output, overwrite)
    _require_onnx(model)
    ref = None
    if reference is not None:
        from fastshower.data import read_showers

        ref = read_showers(reference, max_events=eval_n)
    with tempfile.TemporaryDirectory(prefix="fastshower-quantize-") as tmp:
        from fastshower.models.registry import resolve

        fp32_path = Path(model)
        if resolve(model).kind == "onnx":
            if q.read_graph(fp32_path).metadata.get("precision", "fp32") != "fp32":
                raise UserInputError(f"{model} is already reduced precision; give the fp32 export")
        else:
            from fastshower.infer.onnx_export import export_onnx

            fp32_path = Path(tmp) / "fp32.onnx"
            # int8: folded transposed convolutions in sub-pixel form, ordinary Convs that ORT runs as QLinearConv
            export_onnx(model, fp32_path, check=True, form="subpixel" if precision == "int8" else "auto")
        common = dict(criterion=criterion, n_eval=eval_n, seed=seed, reference=ref, threads=threads)
        if precision == "fp16":
            result = q.make_fp16(fp32_path, output, target, **common)
        else:
            result = q.tune(fp32_path, output, target, select=select, n_calibration=calibration_n, conv3d=conv3d,
                            progress=True, **common)
        size = (q.model_size_mb(fp32_path), q.model_size_mb(output) if result.met else None)
    log = output.with_suffix(".tuning.json")
    if not result.met:
        int8_steps = [st for st in result.steps if len(st.fp32_layers) < len(result.eligible_layers)] or result.steps
        best = min(int8_steps, key=lambda st: st.score)  # the all-fp32 step is no int8 model
        raise TargetNotMetError(f"no {precision} model met the target {target} ({criterion}; best score {best.score:.3g}, "
                           f"1 = target); nothing written, log in {log}")
    step = result.chosen
    typer.echo(f"wrote {output} ({precision}, {size[1]:.2f} MB vs {size[0]:.2f} MB fp32): relative shape error "
               f"{step.relative_shape_error:.2e}, {step.ms_per_shower:.3f} ms/shower vs {result.fp32_ms_per_shower:.3f} "
               f"fp32 (ONNX Runtime, batch {result.settings['timing_batch']})")
    if step.profile_mse is not None:
        typer.echo(f"  vs {reference}: profile MSE {step.profile_mse:.4g} (fp32 {result.fp32_profile_mse:.4g}), "
                   f"sampling-fraction error {step.sampling_fraction_error:.4g} "
                   f"(fp32 {result.fp32_sampling_fraction_error:.4g})")
    if precision == "int8":
        typer.echo(f"  {len(result.eligible_layers) - len(step.fp32_layers)} of {len(result.eligible_layers)} tuned "
                   f"layers int8, {len(step.fp32_layers)} returned to fp32, {len(result.skipped_layers)} kept fp32 "
                   f"({', '.join(sorted(set(result.skipped_layers.values()))) or 'none'}); int8 kernels: "
                   f"{', '.join(result.int8_kernels) or 'none'}")
    typer.echo(f"tuning log: {log}")



# ---------------------------------------------------------------- gflash tuning (issue 14)

gflash_app = typer.Typer(help="GFlash, the classical fast simulation: tune it to full-simulation showers.",
                         no_args_is_help=True)
app.add_typer(gflash_app, name="gflash")


@gflash_app.command("tune")
def gflash_tune(
    reference: list[str] = typer.Argument(..., help="Full-simulation (Geant4) shower files or glob patterns."),
    output: Path = typer.Option(..., "-o", "--output", help="Parameter file to write (YAML)."),
    energies: str = typer.Option("10,100", "--energies", help="Fit energies in GeV, comma-separated."),
    window: float = typer.Option(0.2, "--window", help="Keep reference events within this relative half-width of "
                                 "each fit energy (fixed-energy files: any small value)."),
    geometry: Optional[str] = typer.Option(None, "--geometry", "-g", help="Geometry when the files do not tell."),
    max_events: Optional[int] = typer.Option(None, "--max-events", help="At most this many reference events per energy."),
    free: Optional[str] = typer.Option(None, "--free", help="Comma-separated parameters to fit (default: all "
                                       "of gflash_tune.FREE_PARAMETERS)."),
    start: Optional[str] = typer.Option(None, "--start", help="Start from this parameter file or shipped set "
                                        "(default: the published values)."),
    n_showers: int = typer.Option(300, "--n-showers", help="GFlash showers per energy and evaluation (at least the "
                                  "reference's count)."),
    max_evaluations: int = typer.Option(400, "--max-evaluations", help="Objective evaluations in all (the "
                                        "Jacobian's included)."),
    max_minutes: Optional[float] = typer.Option(None, "--max-minutes", help="Stop after this long; the best point "
                                                "seen is written."),
    seed: int = typer.Option(0, "--seed", help="Seed of GFlash's draws (the same in every evaluation)."),
) -> None:
    """Fit GFlash's free parameters to full-simulation showers over the given energies; see docs/gflash.md."""
    from fastshower.gflash_tune import tune_files

    try:
        fit_energies = [float(v) for v in energies.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--energies must be comma-separated numbers (GeV), got {energies!r}") from None
    if n_showers < 10 or max_evaluations < 1 or (max_minutes is not None and max_minutes <= 0):
        raise ValueError("--n-showers must be >= 10, --max-evaluations >= 1 and --max-minutes > 0")
    names = [v.strip() for v in free.split(",") if v.strip()] if free else None
    result = tune_files(reference, output, fit_energies, window=window, geometry=geometry, max_events=max_events,
                        free=names, start=start, n_showers=n_showers, max_evaluations=max_evaluations,
                        max_seconds=None if max_minutes is None else 60 * max_minutes, seed=seed, progress=True)
    typer.echo(f"objective {result.objective_start:.4g} -> {result.objective:.4g} after {result.evaluations} "
               f"evaluations ({result.seconds:.0f} s, {result.stopped_by})")
    for energy, terms in zip(fit_energies, result.terms):
        typer.echo(f"  {energy:g} GeV: " + ", ".join(f"{k} {v:+.4f}" for k, v in terms.items()))
    typer.echo(f"wrote {output}")


# ---------------------------------------------------------------- geant4 (issue 7)

@app.command()
def g4run(
    output: Path = typer.Option(..., "-o", "--output", help="Shower file to write (HDF5)."),
    geometry: str = typer.Option("clic25", "--geometry", "-g", help="Preset name or geometry YAML file."),
    mode: str = typer.Option("fast", "--mode", help="fast (a shower source replaces e+/e-/gamma showers) or full "
                                                    "(Geant4 physics; needs the Geant4 data sets)."),
    model: str = typer.Option("gflash", "--model", help="Fast-mode shower source: gflash, a model name or "
                                                        "weights path, or an .onnx file."),
    particle: str = typer.Option("e-", "--particle", help="Gun particle (e-, e+, gamma, ...)."),
    energy: str = typer.Option("100", "--energy", help="Primary energy in GeV: 100, 2:500, 1:1000:log or 10,50,100."),
    angle: str = typer.Option("90", "--angle", help="Polar angle in deg w.r.t. the y axis (90 = normal incidence)."),
    azimuth: float = typer.Option(0.0, "--azimuth", help="Azimuth of the tilt plane about z in deg (0: y-z plane)."),
    position: str = typer.Option("0,0", "--position", help="Entry point x,y on the calorimeter face in mm."),
    multiplicity: int = typer.Option(1, "--multiplicity", help="Primaries per event (energies drawn independently)."),
    n: int = typer.Option(100, "-n", "--n-events", help="Number of events."),
    seed: int = typer.Option(0, "--seed", help="Run seed: every shard's conditions, shower-source and Geant4 "
                                               "engine streams are spawned from it."),
    threshold_gev: Optional[float] = typer.Option(None, "--threshold-gev", help="Fast mode: smallest e+/e-/gamma "
                                                  "energy handed to the model (default: the geometry's lowest energy)."),
    physics: Optional[str] = typer.Option(None, "--physics", help="transport (fast default), em (full default: "
                                          "an EM constructor + G4DecayPhysics) or FTFP_BERT."),
    em_physics: str = typer.Option("option0", "--em-physics", help="EM constructor: option0 "
                                   "(G4EmStandardPhysics), option1, option2 (run on fastshower's data set); option3, "
                                   "option4, livermore, penelope, lowep, GS, SS, WVI (need a full G4EMLOW)."),
    cut_mm: float = typer.Option(1.0, "--production-cut-mm", help="Geant4 production (range) cut in mm (1 mm: the "
                                 "G4VUserPhysicsList default, used by all the project's Geant4 data so far)."),
    batch_events: int = typer.Option(100, "--batch-events", help="Events per shower-source call and written block."),
    format: str = typer.Option("native", "--format", help="native, 3dgan or calochallenge."),
    entry_convention: str = typer.Option("gflash", "--entry-convention",
                                         help="Where a model's tilted showers enter its grid: gflash (axis through "
                                              "the grid centre at the shower maximum) or centre (at the entry point)."),
    overwrite: bool = _overwrite_option(),
    workers: int = typer.Option(1, "--workers", help="Local Dask worker processes (1: run in this process)."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Address of an existing Dask scheduler "
                                            "(e.g. dask-jobqueue on Slurm/HTCondor); workers must see the output "
                                            "folder."),
    shards: int = typer.Option(0, "--shards", help="Number of seeded shards (default: one per 100 events). The "
                                                   "output depends on it, not on the number of workers."),
    shard: Optional[str] = typer.Option(None, "--shard", help="K/N: simulate only shard K (0-based) of N into the "
                                        "work folder <output>.shards/, then `fastshower merge`."),
    retries: int = typer.Option(2, "--retries", help="Dask: times a failed shard task is retried."),
    keep_shards: bool = typer.Option(False, "--keep-shards", help="Keep the work folder <output>.shards/ after "
                                     "the merge."),
) -> None:
    """Run Geant4 on a fastshower geometry (fast or full simulation), in seeded shards that run here,
    on local Dask workers, on a Dask cluster, or one per batch job (--shard K/N + merge).
    An interrupted run resumes from the complete shards in <output>.shards/."""
    from fastshower.production import Production, format_production, produce, produce_shard

    try:
        x0, y0 = (float(v) for v in position.split(","))
    except ValueError:
        raise ValueError(f"--position must be x,y in mm, got {position!r}") from None
    if shard is None:
        from fastshower.fileio import check_output

        check_output(output, overwrite)
    if mode == "fast":
        _require_onnx(model)
    shard_index = None
    if shard is not None:
        try:
            shard_index, shards = (int(v) for v in shard.split("/"))
        except ValueError:
            raise ValueError(f"--shard must be K/N (0 <= K < N), got {shard!r}") from None
    production = Production(geometry, n, mode=mode, particle=particle, energy=energy, angle=angle,
                            azimuth_deg=azimuth, position_mm=(x0, y0), multiplicity=multiplicity, seed=seed,
                            n_shards=shards, model=model, physics=physics, em_physics=em_physics,
                            production_cut_mm=cut_mm, threshold_gev=threshold_gev, batch_events=batch_events,
                            entry_convention=entry_convention)
    if shard_index is not None:
        result = produce_shard(production, shard_index, output)
        typer.echo(format_production(result))
        typer.echo(f"wrote shard {shard_index}/{production.n_shards} to {result.shard_file}"
                   + (" (already complete)" if result.resumed else ""))
    else:
        result = produce(production, output, workers=workers, scheduler=scheduler, format=format, retries=retries,
                         keep_shards=keep_shards, progress=True)
        typer.echo(format_production(result))
        if mode == "fast":
            typer.echo(f"energy conservation: largest relative deviation {result.max_energy_deviation:.2e}; "
                       f"leakage {sum(m['leaked_gev'] for m in result.manifests) / n:.4g} GeV per event")
        typer.echo(f"wrote {n} events ({production.geometry}, geant4 {mode}) to {output}")


@app.command()
def merge(
    shards: list[str] = typer.Argument(..., help="Shard files, work folders or glob patterns in quotes."),
    output: Path = typer.Option(..., "-o", "--output", help="File to write (the shards in order)."),
    format: str = typer.Option("native", "--format", help="native, 3dgan or calochallenge."),
) -> None:
    """Merge the shard files of one `g4run` production (from `--shard K/N` jobs) into one file, in shard
    order, after checking that they belong together and are complete."""
    from fastshower.production import merge_shards

    result = merge_shards(shards, output, format=format)
    typer.echo(f"merged {result.n_shards} shards, {result.n_events} events (production {result.production_id}) "
               f"into {output}")


# ---------------------------------------------------------------- g4data (issue 13)

g4data_app = typer.Typer(help="The offline Geant4 data set for standard EM physics (built from public tables).",
                         no_args_is_help=True)
app.add_typer(g4data_app, name="g4data")


@g4data_app.command("build")
def g4data_build(
    directory: Optional[Path] = typer.Option(None, "--dir", help="Data directory (default: "
                                             "$XDG_CACHE_HOME/fastshower/g4data, i.e. ~/.cache/fastshower/g4data)."),
    elements: Optional[list[str]] = typer.Option(None, "--elements", "-e", help="Elements (symbols or Z, "
                                                 "repeatable or comma-separated; default: all materials fastshower "
                                                 "builds)."),
    geometry: Optional[list[str]] = typer.Option(None, "--geometry", "-g", help="Take the elements of these "
                                                 "geometries (preset names or YAML files; repeatable)."),
    rebuild: bool = typer.Option(False, "--rebuild", help="Write every file again (else only missing elements)."),
) -> None:
    """Write (or extend) the minimal Geant4 data set: brem_SB, photoelectric and Rayleigh files per element."""
    from fastshower.simulate.geant4 import g4data

    if elements and geometry:
        raise ValueError("give --elements or --geometry, not both")
    chosen = None
    if elements:
        chosen = g4data.parse_elements(elements)
    elif geometry:
        chosen = tuple(sorted({z for g in geometry for z in g4data.geometry_elements(g)}))
    result = g4data.build_dataset(directory, chosen, rebuild=rebuild, progress=True)
    what = (f"wrote {g4data.format_elements(result.added)}" if result.added else "nothing to add")
    typer.echo(f"{result.directory}: {what} ({result.seconds:.1f} s); elements: "
               f"{g4data.format_elements(result.elements)}")
    typer.echo(f"use it: export GEANT4_DATA_DIR={result.directory}   (full mode finds the default location by itself)")


@g4data_app.command("info")
def g4data_info(
    directory: Optional[Path] = typer.Option(None, "--dir", help="Data directory (default: the cache location)."),
) -> None:
    """Which Geant4 data sets are used here, and what the fastshower-built set holds."""
    from fastshower.simulate.geant4.g4data import describe

    typer.echo("\n".join(describe(directory)))


# ---------------------------------------------------------------- demo (issue 8)


@app.command()
def demo(
    n: Optional[int] = typer.Option(None, "-n", help="Showers per sample (Geant4 reference, Geant4 floor sample, "
                                    "generator, GFlash); default 200, --quick 40."),
    out: Path = typer.Option(Path("demo_report"), "--out", "-o", help="Report directory."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the run (default: a new one, shown in the report)."),
    quick: bool = typer.Option(False, "--quick", help="Small and fast (under a minute): 40 showers at 20 GeV, one "
                               "Geant4 process, no classifier (CI)."),
    workers: int = typer.Option(2, "--workers", help="Local Geant4 worker processes."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Generator (default: the best shipped one)."),
    show_all: bool = typer.Option(False, "--all", help="Also print the full metric table."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda (the generator)."),
) -> None:
    """The main job: Geant4 vs the best shipped generator vs GFlash in clic25, one verdict, timed, reported."""
    from fastshower.demo import run_demo
    from fastshower.validate.formatting import format_table, format_verdict

    result = run_demo(out_dir=out, n=n, seed=seed, quick=quick, workers=workers, model=model, device=device)
    typer.echo(f"\nGeant4 vs {result.generator} vs {result.gflash}: {result.n_showers} showers each, e- "
               f"{result.energy_gev:g} GeV at 90 deg in clic25 (seed {result.seed})\n")
    typer.echo(format_verdict(result.validation.verdict))
    if show_all:
        typer.echo("")
        typer.echo(format_table(result.validation.comparisons))
    typer.echo("wall time: " + ", ".join(f"{k} {v:.1f} s" for k, v in result.wall_seconds.items()))
    typer.echo(f"full table and plots: {result.report_path.resolve()}")


# ---------------------------------------------------------------- hpo (issue 9)

@app.command()
def hpo(
    config: Path = typer.Argument(..., help="HPO config (YAML): base training config, search space, objective; "
                                  "see docs/hpo.md."),
    trials: int = typer.Option(10, "--trials", help="Trials this worker runs (each worker started with the same "
                               "command adds its own)."),
    storage: Optional[str] = typer.Option(None, "--storage", help="SQLAlchemy URL of the study database "
                                          "(default: SQLite file study.db in the report folder)."),
    study: Optional[str] = typer.Option(None, "--study", help="Study name (overrides the config's)."),
    report: Optional[Path] = typer.Option(None, "--report", help="Report folder (overrides report_dir)."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Stop starting new trials after this many "
                                            "seconds."),
) -> None:
    """Hyper-parameter search with Optuna; many workers may share one study (SQLite or PostgreSQL)."""
    from fastshower.hpo import run_study

    summary = run_study(config, trials, storage=storage, study=study, report_dir=report, timeout_s=timeout)
    counts = ", ".join(f"{n} {state}" for state, n in summary["trials"].items() if n)
    typer.echo(f"study {summary['study']}: {counts}")
    if "best_value" in summary:
        typer.echo(f"best trial {summary['best_trial']}: {summary['metric']} {summary['best_value']:.4g} "
                   f"with {summary['best_params']}")
    typer.echo(f"report: {summary['report_dir']} (study in {summary['storage']})")


def main(argv: Optional[list[str]] = None) -> None:
    """Entry point: run the app. Expected failures (:mod:`fastshower.errors`) become ``error: <message>``
    and their exit code (2 for bad input); Ctrl-C exits 130; any other exception keeps its traceback."""
    from fastshower.errors import user_message

    try:
        app(args=argv, prog_name="fastshower")
    except KeyboardInterrupt:
        typer.echo("\ninterrupted", err=True)
        sys.exit(130)
    except Exception as exc:
        reported = user_message(exc)
        if reported is None:
            raise
        typer.echo(f"error: {reported[0]}", err=True)
        _exit(reported[1])


def _exit(code: int) -> None:
    """sys.exit, or os._exit when HDF5 holds a file it could not close (it would crash at exit)."""
    from fastshower.data.io import hdf5_file_left_open

    if hdf5_file_left_open():
        import os

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    main()
