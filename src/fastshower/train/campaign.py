"""A resumable, time-budgeted training campaign whose state lives in a small repository folder.

A campaign folder (e.g. ``campaigns/conv2d_g1/``) holds what is needed to continue a run that was
cut off, small enough to commit:

| file | content |
|---|---|
| ``config.yaml`` | the training config (relative paths: to this folder) |
| ``latest/`` | the last checkpoint (G, D, both optimizers, RNG states, counters) |
| ``best/`` | the checkpoint of the best validation so far (``run.best_metric``) |
| ``learning_curve.csv`` | one row per validation: step, samples, training wall and CPU seconds, load average, the validation metrics against the held-out showers, learning rates, mean losses |

The bulky run directory (every validated generator under ``generators/``, the trainer's own
checkpoints and logs) goes to ``run_dir``, outside the repository (``runs/`` is ignored).

:func:`run_campaign` resumes from ``latest/`` when it exists, trains until the budget of wall
seconds is spent (the current epoch is cut there, validated and checkpointed), and after every
epoch copies the checkpoint into the folder (atomically: written beside, then renamed).
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import time
from pathlib import Path
from typing import Any

from fastshower.fileio import write_text_atomic
from fastshower.train import checkpoint as ckpt
from fastshower.train.config import load_config
from fastshower.train.trainer import Trainer

CURVE = "learning_curve.csv"
COLUMNS = ["step", "epoch", "samples", "train_wall_s", "train_cpu_s", "session_cpu_s", "load_avg_1min", "utc",
           "val_profile_mse", "val_sampling_fraction_error", "val_d_energy_mape", "lr_generator",
           "lr_discriminator", "d_real_loss", "d_fake_loss", "g_loss", "d_real_energy_mape", "best"]


def _copy_checkpoint(source: Path, target: Path) -> None:
    """Copy checkpoint directory ``source`` to ``target`` atomically (the old copy is replaced)."""
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(source, tmp)
    old = target.with_name(target.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def read_curve(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    return list(csv.DictReader(io.StringIO(path.read_text())))


def _write_curve(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buf.getvalue())


def run_campaign(campaign_dir: str | Path, budget_s: float, run_dir: str | Path,
                 overrides: dict[str, dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    """Train the campaign of ``campaign_dir`` for at most ``budget_s`` wall seconds (see the module
    docstring); returns the learning curve rows. ``overrides`` are merged into its config (e.g.
    other data paths)."""
    folder = Path(campaign_dir)
    run_dir = Path(run_dir)
    cfg = load_config(folder / "config.yaml", overrides)
    latest = folder / "latest"
    resume = latest if (latest / ckpt.MODELS_FILE).is_file() else None
    trainer = Trainer(cfg, resume=resume, output_dir=run_dir)
    curve_path = folder / CURVE
    rows: list[dict[str, Any]] = [r for r in read_curve(curve_path) if int(r["step"]) <= trainer.step]
    start = time.monotonic()
    cpu0 = time.process_time()

    def on_epoch_end(record: dict[str, Any]) -> None:
        row = {k: record.get(k) for k in COLUMNS}
        row.update({"step": trainer.step, "epoch": trainer.epoch, "samples": trainer.step * trainer.global_batch,
                    "train_wall_s": round(trainer.wall_s, 1), "train_cpu_s": round(trainer.cpu_s, 1),
                    "session_cpu_s": round(time.process_time() - cpu0, 1),
                    "load_avg_1min": round(os.getloadavg()[0], 2),
                    "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "best": bool(record.get("best", False))})
        for k in ("val_profile_mse", "val_sampling_fraction_error", "val_d_energy_mape"):
            if row.get(k) is not None:
                row[k] = f"{row[k]:.6g}"
        rows.append(row)
        trainer._save_generator(run_dir / "generators" / f"step_{trainer.step:08d}",
                                {"epoch": trainer.epoch, "step": trainer.step,
                                 "validation": {k: record.get(k) for k in
                                                ("val_profile_mse", "val_sampling_fraction_error",
                                                 "val_d_energy_mape")}})
        source = ckpt.find_checkpoint(run_dir)
        _copy_checkpoint(source, latest)
        if record.get("best"):
            _copy_checkpoint(source, folder / "best")
        _write_curve(curve_path, rows)

    try:
        trainer.fit(on_epoch_end=on_epoch_end, should_stop=lambda: time.monotonic() - start > budget_s)
    finally:
        trainer.close()
    return rows
