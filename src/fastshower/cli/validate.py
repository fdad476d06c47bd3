"""Commands of the validate stage: validate, demo."""

from __future__ import annotations

from pathlib import Path

import typer

from fastshower.cli.common import app

# ---------------------------------------------------------------- validate (issue 3)

@app.command()
def validate(
    reference: str = typer.Argument(..., help="Reference shower file (ground truth)."),
    candidates: list[str] = typer.Argument(..., help="Candidate shower file(s) (a generator's output, GFlash...)."),
    output: Path = typer.Option(..., "-o", "--output", help="Directory for report.html and metrics.json."),
    reference2: str | None = typer.Option(
        None, "--reference2", help="Independent reference sample for the floor (default: split the reference in two)."),
    show_all: bool = typer.Option(False, "--all", help="Print the full metric table after the verdict table."),
    quick: bool = typer.Option(False, "--quick", help="Fewer SSIM pairs and FPD/KPD draws, no classifiers (CI, demo)."),
    no_classifier: bool = typer.Option(False, "--no-classifier", help="Skip the classifier tests."),
    max_events: int | None = typer.Option(None, "--max-events", help="Read at most this many events per file."),
    geometry: str | None = typer.Option(None, "--geometry", "-g", help="Geometry when the files do not tell."),
    seed: int = typer.Option(0, "--seed", help="Seed of the split, the floor subsamples, SSIM pairs, classifiers."),
) -> None:
    """Compare candidate shower files with a reference: verdict table (--all: every metric beside its floor),
    HTML report."""
    from fastshower.geometry import load_geometry
    from fastshower.validate.formatting import format_table, format_verdict
    from fastshower.validate.report import validate_files

    result = validate_files(reference, candidates, output, reference2,  # type: ignore[arg-type]
                            geometry=load_geometry(geometry) if geometry else None, max_events=max_events,
                            quick=quick, classifier=not no_classifier, seed=seed)
    typer.echo(format_verdict(result.verdict))
    if show_all:
        typer.echo("")
        typer.echo(format_table(result.comparisons))
    else:
        typer.echo(f"floor: {result.comparisons[0].floor_source}")
    typer.echo(f"wrote {result.report_path} and {result.metrics_path}")


# ---------------------------------------------------------------- demo (issue 8)


@app.command()
def demo(
    n: int | None = typer.Option(None, "-n", help="Showers per sample (Geant4 reference, Geant4 floor sample, "
                                    "generator, GFlash); default 125, --quick 40."),
    out: Path = typer.Option(Path("demo_report"), "--out", "-o", help="Report directory."),
    seed: int | None = typer.Option(None, "--seed", help="Seed of the run (default: a new one, shown in the report)."),
    quick: bool = typer.Option(False, "--quick", help="Small and fast (under a minute): 40 showers at 20 GeV, one "
                               "Geant4 process, no classifier (CI)."),
    workers: int = typer.Option(2, "--workers", help="Local Geant4 worker processes."),
    model: str | None = typer.Option(None, "--model", "-m", help="Generator (default: the best shipped one)."),
    show_all: bool = typer.Option(False, "--all", help="Also print the full metric table."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda (the generator)."),
) -> None:
    """The main job: Geant4 vs the best shipped generator vs GFlash in clic25, one verdict, timed, reported."""
    from fastshower.demo import run_demo
    from fastshower.validate.formatting import format_table, format_verdict

    result = run_demo(out_dir=out, n=n, seed=seed, quick=quick, workers=workers, model=model, device=device)
    typer.echo(f"\nGeant4 vs {result.generator} vs {result.gflash}: {result.n_showers} showers each, e- "
               f"{result.energy_gev:g} GeV at 90 deg in clic25 (seed {result.seed})\n")
    typer.echo(format_verdict(result.validation.verdict))  # type: ignore[attr-defined]
    if show_all:
        typer.echo("")
        typer.echo(format_table(result.validation.comparisons))  # type: ignore[attr-defined]
    typer.echo("wall time: " + ", ".join(f"{k} {v:.1f} s" for k, v in result.wall_seconds.items()))
    typer.echo(f"full table and plots: {result.report_path.resolve()}")
