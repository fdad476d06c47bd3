"""Commands of the train stage: train, hpo."""

from __future__ import annotations

from pathlib import Path

import typer

from fastshower.cli.common import app
from fastshower.errors import UserInputError

# ---------------------------------------------------------------- train (issue 4)

@app.command()
def train(
    config: Path = typer.Argument(..., help="Training config (YAML); see docs/training.md."),
    resume: Path | None = typer.Option(None, "--resume", help="Continue a run directory (or checkpoint) exactly."),
    warm_start: Path | None = typer.Option(None, "--warm-start",
                                              help="Start from another run's weights (checkpoint, run dir or "
                                                   "generator .safetensors); fresh optimizers and counters."),
    epochs: int | None = typer.Option(None, "--epochs", help="Override run.epochs (not with stages)."),
    out: Path | None = typer.Option(None, "--out", help="Output directory (overrides run.output_dir)."),
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


# ---------------------------------------------------------------- hpo (issue 9)

@app.command()
def hpo(
    config: Path = typer.Argument(..., help="HPO config (YAML): base training config, search space, objective; "
                                  "see docs/hpo.md."),
    trials: int = typer.Option(10, "--trials", help="Trials this worker runs (each worker started with the same "
                               "command adds its own)."),
    storage: str | None = typer.Option(None, "--storage", help="SQLAlchemy URL of the study database "
                                          "(default: SQLite file study.db in the report folder)."),
    study: str | None = typer.Option(None, "--study", help="Study name (overrides the config's)."),
    report: Path | None = typer.Option(None, "--report", help="Report folder (overrides report_dir)."),
    timeout: float | None = typer.Option(None, "--timeout", help="Stop starting new trials after this many "
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
