"""Commands of the simulate and data stages: geometries, simulate, inspect, gflash tune, g4run, merge, g4data."""

from __future__ import annotations

from pathlib import Path

import typer

from fastshower.cli.common import _overwrite_option, _require_onnx, app
from fastshower.errors import UserInputError


@app.command()
def geometries(
    show: str | None = typer.Argument(None, help="Preset name or YAML file to describe in full."),
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
    gflash_params: str | None = typer.Option(
        None, "--gflash-params", help="GFlash parameters: a file from `fastshower gflash tune`, a shipped set "
        "(clic25_geant4) or default (the published Grindhammer-Peters values, also when omitted)."),
) -> None:
    """Simulate showers with the GFlash parametrisation and stream them to a file (constant memory)."""
    from fastshower.data import write_batches
    from fastshower.geometry import load_geometry
    from fastshower.simulate import gflash

    if n < 1 or batch_size < 1:
        raise UserInputError(f"-n and --batch-size must be >= 1, got {n} and {batch_size}")
    if particle not in SIMULATED_PARTICLES:
        raise UserInputError(f"unknown particle {particle!r}; expected one of {', '.join(SIMULATED_PARTICLES)}")
    g = load_geometry(geometry)
    batches = gflash.iter_simulate(g, energy, angle, n, seed=seed, batch_size=batch_size, particle=particle,
                                   params=gflash_params)
    writer = write_batches(output, batches, format, total=n, overwrite=overwrite, progress=True, desc="simulate")
    typer.echo(f"wrote {n} {particle} showers ({g.name}, {writer.layout.name}) to {output}")


@app.command()
def inspect(
    path: str = typer.Argument(..., help="Shower file or glob pattern in quotes ('EleEscan_*.h5')."),
    geometry: str | None = typer.Option(None, "--geometry", "-g",
                                           help="Geometry (preset or YAML) when the file does not tell."),
    chunk_size: int = typer.Option(1000, "--chunk-size", help="Events read per chunk."),
    binning: Path | None = typer.Option(None, "--binning",
                                           help="CaloChallenge binning XML to check against the file's geometry."),
) -> None:
    """Describe a shower file: layout, geometry, events, energy and angle ranges, deposits, attributes."""
    from fastshower.data.describe import format_file_summary, summarize_file
    from fastshower.geometry import load_geometry
    from fastshower.production import format_provenance

    summary = summarize_file(path, load_geometry(geometry) if geometry else None, chunk_size, binning, progress=True)
    typer.echo(format_file_summary(summary, format_provenance(summary.attrs)))


# ---------------------------------------------------------------- gflash tuning (issue 14)

gflash_app = typer.Typer(help="GFlash, the classical fast simulation: tune it to full-simulation showers.",
                         no_args_is_help=True)
app.add_typer(gflash_app, name="gflash")


def _tune_command(reference: list[str], output: Path, options: dict[str, object]) -> str:
    """The ``fastshower gflash tune`` command line with every option spelled out (shell-quoted),
    for the parameter file's provenance: rerunning it re-makes the file."""
    import shlex

    words = ["fastshower", "gflash", "tune", *reference]
    for name, value in options.items():
        if value is not None:
            words += [f"--{name}", str(value)]
    return shlex.join([*words, "-o", str(output)])


@gflash_app.command("tune")
def gflash_tune(
    reference: list[str] = typer.Argument(..., help="Full-simulation (Geant4) shower files or glob patterns."),
    output: Path = typer.Option(..., "-o", "--output", help="Parameter file to write (YAML)."),
    energies: str = typer.Option("10,100", "--energies", help="Fit energies in GeV, comma-separated."),
    window: float = typer.Option(0.2, "--window", help="Keep reference events within this relative half-width of "
                                 "each fit energy (fixed-energy files: any small value)."),
    geometry: str | None = typer.Option(None, "--geometry", "-g", help="Geometry when the files do not tell."),
    max_events: int | None = typer.Option(None, "--max-events", help="At most this many reference events per energy."),
    free: str | None = typer.Option(None, "--free", help="Comma-separated parameters to fit (default: all "
                                       "of gflash_tune.FREE_PARAMETERS)."),
    start: str | None = typer.Option(None, "--start", help="Start from this parameter file or shipped set "
                                        "(default: the published values)."),
    n_showers: int = typer.Option(300, "--n-showers", help="GFlash showers per energy and evaluation (at least the "
                                  "reference's count)."),
    max_evaluations: int = typer.Option(400, "--max-evaluations", help="Objective evaluations in all (the "
                                        "Jacobian's included)."),
    max_minutes: float | None = typer.Option(None, "--max-minutes", help="Stop after this long; the best point "
                                                "seen is written."),
    seed: int = typer.Option(0, "--seed", help="Seed of GFlash's draws (the same in every evaluation)."),
    restarts: int = typer.Option(0, "--restarts", help="Restart the optimiser from its best point up to this "
                                 "many times after it converges (while a round gains > 2% in J)."),
) -> None:
    """Fit GFlash's free parameters to full-simulation showers over the given energies; see docs/gflash.md."""
    from fastshower.geometry import load_geometry
    from fastshower.gflash_tune import tune_files

    try:
        fit_energies = [float(v) for v in energies.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"--energies must be comma-separated numbers (GeV), got {energies!r}") from None
    if n_showers < 10 or max_evaluations < 1 or (max_minutes is not None and max_minutes <= 0):
        raise ValueError("--n-showers must be >= 10, --max-evaluations >= 1 and --max-minutes > 0")
    names = [v.strip() for v in free.split(",") if v.strip()] if free else None
    result = tune_files(reference, output, fit_energies, window=window,
                        geometry=load_geometry(geometry) if geometry else None, max_events=max_events,
                        free=names, start=start, n_showers=n_showers, max_evaluations=max_evaluations,
                        max_seconds=None if max_minutes is None else 60 * max_minutes, seed=seed,
                        restarts=restarts, progress=True, command=_tune_command(reference, output, {
                            "energies": energies, "window": window, "geometry": geometry, "max-events": max_events,
                            "free": free, "start": start, "n-showers": n_showers, "max-evaluations": max_evaluations,
                            "max-minutes": max_minutes, "seed": seed, "restarts": restarts}))
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
    threshold_gev: float | None = typer.Option(None, "--threshold-gev", help="Fast mode: smallest e+/e-/gamma "
                                                  "energy handed to the model "
                                                  "(default: the geometry's lowest energy)."),
    physics: str | None = typer.Option(None, "--physics", help="transport (fast default), em (full default: "
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
    scheduler: str | None = typer.Option(None, "--scheduler", help="Address of an existing Dask scheduler "
                                            "(e.g. dask-jobqueue on Slurm/HTCondor); workers must see the output "
                                            "folder."),
    shards: int = typer.Option(0, "--shards", help="Number of seeded shards (default: one per 100 events). The "
                                                   "output depends on it, not on the number of workers."),
    shard: str | None = typer.Option(None, "--shard", help="K/N: simulate only shard K (0-based) of N into the "
                                        "work folder <output>.shards/, then `fastshower merge`."),
    retries: int = typer.Option(2, "--retries", help="Dask: times a failed shard task is retried."),
    keep_shards: bool = typer.Option(False, "--keep-shards", help="Keep the work folder <output>.shards/ after "
                                     "the merge."),
) -> None:
    """Run Geant4 on a fastshower geometry (fast or full simulation), in seeded shards that run here,
    on local Dask workers, on a Dask cluster, or one per batch job (--shard K/N + merge).
    An interrupted run resumes from the complete shards in <output>.shards/."""
    from fastshower.geometry import load_geometry
    from fastshower.production import Production, format_run, parse_position_mm, parse_shard, run_production

    position_mm = parse_position_mm(position)
    shard_index, shards = parse_shard(shard) if shard is not None else (None, shards)
    if mode == "fast":
        _require_onnx(model)
    production = Production(load_geometry(geometry), n, mode=mode, particle=particle, energy=energy, angle=angle,
                            azimuth_deg=azimuth, position_mm=position_mm, multiplicity=multiplicity, seed=seed,
                            n_shards=shards, model=model, physics=physics, em_physics=em_physics,
                            production_cut_mm=cut_mm, threshold_gev=threshold_gev, batch_events=batch_events,
                            entry_convention=entry_convention)
    result = run_production(production, output, shard=shard_index, workers=workers, scheduler=scheduler,
                            format=format, retries=retries, keep_shards=keep_shards, overwrite=overwrite,
                            progress=True)
    typer.echo(format_run(result, shard_index))


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
    directory: Path | None = typer.Option(None, "--dir", help="Data directory (default: "
                                             "$XDG_CACHE_HOME/fastshower/g4data, i.e. ~/.cache/fastshower/g4data)."),
    elements: list[str] | None = typer.Option(None, "--elements", "-e", help="Elements (symbols or Z, "
                                                 "repeatable or comma-separated; default: all materials fastshower "
                                                 "builds)."),
    geometry: list[str] | None = typer.Option(None, "--geometry", "-g", help="Take the elements of these "
                                                 "geometries (preset names or YAML files; repeatable)."),
    rebuild: bool = typer.Option(False, "--rebuild", help="Write every file again (else only missing elements)."),
) -> None:
    """Write (or extend) the minimal Geant4 data set: brem_SB, photoelectric and Rayleigh files per element."""
    from fastshower.geometry import load_geometry
    from fastshower.simulate.geant4 import g4data

    if elements and geometry:
        raise ValueError("give --elements or --geometry, not both")
    chosen = None
    if elements:
        chosen = g4data.parse_elements(elements)
    elif geometry:
        chosen = tuple(sorted({z for g in geometry for z in g4data.geometry_elements(load_geometry(g))}))
    result = g4data.build_dataset(directory, chosen, rebuild=rebuild, progress=True)
    what = (f"wrote {g4data.format_elements(result.added)}" if result.added else "nothing to add")
    typer.echo(f"{result.directory}: {what} ({result.seconds:.1f} s); elements: "
               f"{g4data.format_elements(result.elements)}")
    typer.echo(f"use it: export GEANT4_DATA_DIR={result.directory}   (full mode finds the default location by itself)")


@g4data_app.command("info")
def g4data_info(
    directory: Path | None = typer.Option(None, "--dir", help="Data directory (default: the cache location)."),
) -> None:
    """Which Geant4 data sets are used here, and what the fastshower-built set holds."""
    from fastshower.simulate.geant4.g4data import describe

    typer.echo("\n".join(describe(directory)))
