"""Train the shipped models on an accelerator machine in one call, resumable across calls.

One call: build the training data on the machine (GFlash showers, or Geant4 files carried with the
repository via ``--data``), train each model for its share of ``--minutes`` (validated every
``--validate-every`` steps against held-out showers), and write under ``--out`` (default ``$OUT``),
at most two folders down and 16 MiB a file, so that everything comes back:

    OUT/summary.json                      device, data, per-model steps, time, final and best metrics
    OUT/<model>/models.safetensors        G and D weights (the trainer's checkpoint layout)
    OUT/<model>/run.json                  counters, config, learning curve (one row per validation)

The next call resumes from those files (``--resume DIR``, e.g. the previous OUT copied into the
repository and carried): weights and counters continue (step, epoch, learning-rate schedule, data
order); the optimizer moments start afresh, as the Conv2D original re-created its Adam for every
data file (a full-width G1 Adam state is ~16 MiB and would not come back).

    python scripts/gpu_train.py --out $OUT --minutes 8                      # on the GPU machine
    python scripts/gpu_train.py --out $OUT --minutes 8 --resume gpu_runs/last
    python scripts/gpu_train.py --smoke --out /tmp/smoke                    # tiny CPU check (tests)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, get_args

import torch

from fastshower.data import write_showers
from fastshower.fileio import write_text_atomic
from fastshower.train import checkpoint as ckpt
from fastshower.train.config import EnergySpectrum, build_config
from fastshower.train.trainer import Trainer

#: What each shipped model trains with on the GPU (recipe preset defaults otherwise).
MODELS: dict[str, dict[str, Any]] = {
    "conv2d_g1": {"model": {"name": "conv2d_g1", "config": {}},
                  "recipe": {"preset": "conv2d", "early_fake_energy_epochs": 0, "relu_epoch": None}},
    "gan3d_clic25": {"model": {"name": "gan3d_clic25", "config": {}}, "recipe": {"preset": "gan3d_clic25"}},
}
SMOKE = {"width": 0.125, "batch_size": 8, "n_train": 64, "n_validation": 32, "validate_every": 3}


def build_data(folder: Path, n_train: int, n_validation: int, data: Path | None, seed: int) -> tuple[str, str, str]:
    """(train, validation, description): carried Geant4 files under ``data`` (``train/*.h5``,
    ``validation/*.h5``) or GFlash showers made here (2-500 GeV, normal incidence)."""
    if data is not None:
        return str(data / "train" / "*.h5"), str(data / "validation" / "*.h5"), f"Geant4 files carried in {data}"
    from fastshower.geometry import PRESETS
    from fastshower.simulate.gflash import simulate

    write_showers(folder / "train.h5", simulate(PRESETS["clic25"], energy="2:500", angle_deg="90", n=n_train, seed=seed))
    write_showers(folder / "val.h5", simulate(PRESETS["clic25"], energy="2:500", angle_deg="90", n=n_validation,
                                              seed=seed + 1))
    return str(folder / "train.h5"), str(folder / "val.h5"), f"GFlash clic25 2-500 GeV, {n_train} + {n_validation}"


def train_one(name: str, train: str, validation: str, out: Path, work: Path, budget_s: float, args: argparse.Namespace,
              resume: Path | None) -> dict[str, Any]:
    spec = MODELS[name]
    config = dict(spec["model"]["config"])
    batch = args.batch_size
    if args.smoke:
        config["width"], batch = SMOKE["width"], SMOKE["batch_size"]
    recipe = {**spec["recipe"], **({"batch_size": batch} if batch else {})}
    if args.spread > 0:  # the generator's spread term (fastshower.train.spread), preset weights kept
        recipe.update(loss_weights={"spread": args.spread}, spread_energies=args.spread_energies)
    recipe["energy_spectrum"] = args.energy_spectrum
    latent = args.latent if name.startswith("conv2d_") else "scaled"  # the option of the Conv2D generators
    if latent != "scaled":
        config["latent"] = latent
    raw = {"model": {"name": name, "config": config},
           "recipe": recipe,
           "data": {"train": train, "validation": validation, "augment": "normal_incidence",
                    "max_validation_events": args.n_validation},
           "run": {"epochs": 100000, "steps_per_epoch": args.validate_every, "seed": args.seed,
                   "device": args.device, "precision": args.precision, "checkpoint_every": 10 ** 9,
                   "keep_checkpoints": 1, "output_dir": str(work / name), "progress": False, "tensorboard": "false"}}
    cfg = build_config(raw)
    previous: dict[str, Any] = {}
    if resume is not None:
        previous = json.loads((resume / name / "run.json").read_text())
        before = previous["config"]["model"]["config"].get("latent", "scaled")
        if before != latent:
            raise SystemExit(f"error: --latent {latent}, but the run resumed from {resume / name} has latent "
                             f"{before} (the generator's input layer differs)")
    trainer = Trainer(cfg, warm_start=resume / name if resume else None)
    if resume is not None:
        trainer.step, trainer.epoch = previous["step"], previous["epoch"]
        trainer.wall_s, trainer.cpu_s = previous.get("wall_s", 0.0), previous.get("cpu_s", 0.0)
        trainer.best = previous.get("best")
        trainer.rng.manual_seed(args.seed + 7919 * trainer.step)  # fresh noise, not a replay of call 1
        torch.manual_seed(args.seed + 7919 * trainer.step)
    curve: list[dict[str, Any]] = list(previous.get("curve", []))
    target = out / name
    target.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()

    def save(record: dict[str, Any] | None) -> None:
        if record is not None:
            curve.append({"step": trainer.step, "samples": trainer.step * trainer.global_batch,
                          "wall_s": round(trainer.wall_s, 2),
                          **{k: record[k] for k in record if k.startswith("val_") or k.endswith("_loss")}})
        source = ckpt.find_checkpoint(work / name)
        shutil.copyfile(source / ckpt.MODELS_FILE, target / (ckpt.MODELS_FILE + ".tmp"))
        os.replace(target / (ckpt.MODELS_FILE + ".tmp"), target / ckpt.MODELS_FILE)
        state = {"model": name, "config": raw, "step": trainer.step, "epoch": trainer.epoch,
                 "wall_s": trainer.wall_s, "cpu_s": trainer.cpu_s, "best": trainer.best,
                 "output_scale": float(getattr(trainer.G, "output_scale", 1.0)),
                 "generator_card": trainer.G.metadata(), "curve": curve}
        write_text_atomic(target / "run.json", json.dumps(state, indent=1))

    first = trainer.step
    trainer.fit(on_epoch_end=save, should_stop=lambda: time.monotonic() - start > budget_s
                or (args.max_steps is not None and trainer.step - first >= args.max_steps))
    trainer.close()
    best = min(curve, key=lambda r: r.get("val_profile_mse", float("inf"))) if curve else None
    return {"steps_total": trainer.step, "steps_this_call": trainer.step - previous.get("step", 0),
            "samples_per_s": round((trainer.step - previous.get("step", 0)) * trainer.global_batch
                                   / max(time.monotonic() - start, 1e-9), 2),
            "last": curve[-1] if curve else None, "best_by_profile_mse": best}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "out")))
    parser.add_argument("--minutes", type=float, default=8.0, help="training wall minutes, all models together")
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated: " + ", ".join(MODELS))
    parser.add_argument("--resume", type=Path, default=None, help="a previous OUT folder")
    parser.add_argument("--data", type=Path, default=None, help="folder with Geant4 train/ and validation/ files")
    parser.add_argument("--n-train", type=int, default=20000, help="GFlash training showers to make")
    parser.add_argument("--n-validation", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--validate-every", type=int, default=200, help="steps")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-steps", type=int, default=None, help="stop each model after this many steps")
    parser.add_argument("--spread", type=float, default=0.0,
                        help="weight of the spread term (recipe.loss_weights.spread; 0 = the original recipe)")
    parser.add_argument("--spread-energies", default="log_uniform", choices=["batch", "log_uniform"],
                        help="recipe.spread_energies when --spread > 0")
    parser.add_argument("--energy-spectrum", default="data", choices=get_args(EnergySpectrum),
                        help="recipe.energy_spectrum (log_uniform: showers drawn flat in ln E; mixed: half and half)")
    parser.add_argument("--latent", default="scaled", choices=["scaled", "scaled_and_raw"],
                        help="the Conv2D generator's latent (model.config.latent; a resumed run keeps its own)")
    parser.add_argument("--smoke", action="store_true", help="tiny models and data: a CPU check of this script")
    args = parser.parse_args()
    if args.smoke:
        args.n_train, args.n_validation, args.validate_every = SMOKE["n_train"], SMOKE["n_validation"], SMOKE["validate_every"]
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {unknown}; known: {', '.join(MODELS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        train, validation, described = build_data(work, args.n_train, args.n_validation, args.data, args.seed + 100)
        data_s = time.monotonic() - t0
        share = max(args.minutes * 60 - data_s, 10.0) / len(models)
        results = {m: train_one(m, train, validation, args.out, work, share, args, args.resume) for m in models}
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() and args.device != "cpu" else "cpu"
    summary = {"device": device, "data": described, "data_s": round(data_s, 1), "minutes": args.minutes,
               "smoke": args.smoke, "resumed_from": str(args.resume) if args.resume else None,
               "wall_s": round(time.monotonic() - t0, 1), "models": results}
    write_text_atomic(args.out / "summary.json", json.dumps(summary, indent=1))
    print(json.dumps({m: {"steps": r["steps_total"], "last": r["last"]} for m, r in results.items()}, indent=1))


if __name__ == "__main__":
    main()
