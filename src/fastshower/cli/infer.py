"""Commands of the infer stage: generate, export, models, benchmark, quantize."""

from __future__ import annotations

from pathlib import Path

import typer

from fastshower.cli.common import (
    _check_condition_count,
    _model_option,
    _output_option,
    _overwrite_option,
    _require_onnx,
    app,
)
from fastshower.errors import UserInputError

# ------------------------------------------------------- infer: generate / export / benchmark / models (issue 5)

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
    threads: int | None = typer.Option(None, "--threads", help="Intra-op CPU threads."),
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
                                    help="Model(s): shipped name, saved stem, or registry name[@width] "
                                         "(untrained, timing only)."),
    backend: list[str] = typer.Option(["torch"], "--backend", help="torch and/or onnx (repeat the option)."),
    precision: list[str] = typer.Option(["fp32"], "--precision", help="fp32, bf16, fp16 (repeat the option)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda[:N]."),
    batch_size: int = typer.Option(128, "--batch-size", help="Batch of the steps protocol."),
    repeats: int = typer.Option(5, "--repeats", help="Timed steps."),
    batches_per_step: int = typer.Option(2, "--batches-per-step", help="Batches per timed step."),
    warmup: int = typer.Option(2, "--warmup", help="Warm-up batches (timed apart)."),
    threads: int | None = typer.Option(None, "--threads", help="Intra-op CPU threads."),
    quick: bool = typer.Option(False, "--quick",
                               help="CaloChallenge protocol with batches 1/16/256 and 3 repetitions."),
    no_calochallenge: bool = typer.Option(False, "--no-calochallenge", help="Skip the CaloChallenge protocol."),
    compile: bool = typer.Option(False, "--compile", help="Also try torch.compile (slow to compile)."),
    reference_n: int = typer.Option(200, "--reference-n", help="GFlash showers timed for the speed-up."),
    seed: int = typer.Option(0, "--seed", help="Seed of conditions and noise."),
    geant4: bool = typer.Option(True, "--geant4/--no-geant4",
                                help="Also time Geant4 full and fast (g4run) mode, one core (if installed)."),
    geant4_n: int = typer.Option(5, "--geant4-n", help="Geant4 full-simulation events timed."),
    geant4_energy: float = typer.Option(100.0, "--geant4-energy", help="Geant4 primary energy (GeV)."),
    output: Path | None = typer.Option(None, "-o", "--output", help="JSON file for the results."),
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
                                 "widths within ~1 %; with --reference: profile MSE within 1 %, "
                                 "sampling fraction 0.01)."),
    precision: str = typer.Option("int8", "--precision", help="int8 (tuned layer by layer) or fp16."),
    select: str = typer.Option("fastest", "--select",
                               help="int8: fastest model meeting the target, or the first found."),
    reference: Path | None = typer.Option(None, "--reference", help="Reference-simulation shower file: judge by "
                                             "profile MSE and sampling fraction against it (its conditions are used)."),
    criterion: str | None = typer.Option(None, "--criterion", help="shapes, physics or both (default: physics "
                                            "with --reference, else shapes)."),
    calibration_n: int = typer.Option(256, "--calibration-n", help="int8: calibration showers (seed --seed)."),
    eval_n: int = typer.Option(256, "--eval-n", help="Held-out evaluation showers (seed --seed + 1)."),
    conv3d: bool = typer.Option(False, "--conv3d", help="int8: also quantize 3-d convolutions (slower than fp32 "
                                "in ONNX Runtime on the CPUs measured)."),
    threads: int | None = typer.Option(None, "--threads", help="ONNX Runtime intra-op threads for the timings."),
    seed: int = typer.Option(0, "--seed", help="Seed of the calibration inputs (evaluation: seed + 1)."),
    overwrite: bool = _overwrite_option(),
) -> None:
    """Reduced-precision ONNX generator: int8 tuned against an accuracy target, or fp16."""
    from fastshower.infer.quantize import format_quantize_outcome, quantize_model

    _require_onnx(model)
    outcome = quantize_model(model, output, precision=precision, target=target, select=select, reference=reference,
                             criterion=criterion, calibration_n=calibration_n, eval_n=eval_n, conv3d=conv3d,
                             threads=threads, seed=seed, overwrite=overwrite, progress=True)
    typer.echo(format_quantize_outcome(outcome))
