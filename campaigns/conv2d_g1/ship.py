"""Ship a campaign generator as the package's conv2d_g1 (src/fastshower/weights/conv2d_g1.*) with its
model card: training data, steps, CPU hours, the learning curve point, and the `fastshower validate`
metrics against fixed-energy Geant4 samples beside their floor and beside untuned GFlash.

    python campaigns/conv2d_g1/ship.py runs/campaign_conv2d_g1/generators/step_00000900 \\
        --evaluation /tmp/eval/summary.json
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path

import yaml

from fastshower.models import registry

HERE = Path(__file__).resolve().parent


def _load_range(curve: list[dict[str, str]], step: int) -> tuple[float, float]:
    loads = [float(r["load_avg_1min"]) for r in curve if int(r["step"]) <= step]
    return min(loads), max(loads)


#: the card's training_data unless --training-data says otherwise
TRAINING_DATA = ("Geant4 clic25 e- 2-500 GeV at normal incidence, 8500 showers (shared/data/g4-clic25/train, "
                 "17 files), x/y flips and x<->y transpose as augmentation")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("generator", type=Path, help="stem of the chosen generator")
    parser.add_argument("--evaluation", type=Path, default=None, help="summarize.py --json output")
    parser.add_argument("--out", type=Path, default=registry.WEIGHTS_DIR / "conv2d_g1")
    parser.add_argument("--folder", type=Path, default=HERE,
                        help="the campaign folder the generator comes from (config.yaml, learning_curve.csv)")
    parser.add_argument("--note", default=None, help="how the generator was chosen or made (card: selected_by)")
    parser.add_argument("--training-data", default=TRAINING_DATA,
                        help="what the generator was trained on (card: training_data)")
    args = parser.parse_args()
    g = registry.load_generator(args.generator)
    card = registry.read_card(args.generator)
    step = int(card["metadata"]["step"])
    curve = list(csv.DictReader(io.StringIO((args.folder / "learning_curve.csv").read_text())))
    row = next(r for r in curve if int(r["step"]) == step)
    last = curve[-1]
    cfg = yaml.safe_load((args.folder / "config.yaml").read_text())
    folder = args.folder.resolve().relative_to(HERE.parent.parent.resolve()) if args.folder.resolve().is_relative_to(
        HERE.parent.parent.resolve()) else args.folder
    meta = {
        "trained_by": f"fastshower CPU campaign ({folder}, run with campaigns/conv2d_g1/run.py)",
        "quality": "CPU-trained quarter-width G1; see docs/training.md 'CPU campaign' for how it compares "
                   "with Geant4 and GFlash",
        "training_data": args.training_data, "training_files": cfg["data"]["train"],
        "validation_data": "Geant4 clic25 held-out 1000 showers (shared/data/g4-clic25/validation)",
        "model_config": cfg["model"]["config"], "recipe": cfg["recipe"], "seed": cfg["run"]["seed"],
        "step": step, "samples": int(row["samples"]), "batch_size": cfg["recipe"]["batch_size"],
        "train_cpu_hours": round(float(row["train_cpu_s"]) / 3600, 3),
        "campaign_cpu_hours_total": round(float(last["train_cpu_s"]) / 3600, 3),
        "campaign_steps_total": int(last["step"]),
        "load_average_during_training": "{:.0f}-{:.0f} on 2 cores (shared machine, learning_curve.csv); CPU hours are "
                                        "process CPU time".format(*_load_range(curve, step)),
        "selected_by": args.note or "held-out Geant4 validation (profile MSE and sampling-fraction error, "
                                    "learning_curve.csv)",
        "averaged_from": card["metadata"].get("averaged_from"),
        "recalibrated_from": card["metadata"].get("recalibrated_from"),
        "response_calibration": card["metadata"].get("response_calibration"),
        "validation_at_step": {k: float(row[k]) for k in ("val_profile_mse", "val_sampling_fraction_error",
                                                          "val_d_energy_mape")},
        "commands": ["bash scripts/make_g4_lowe.sh (only when training_files lists data/g4-clic25-lowe)",
                     "nohup nice -n 15 env OMP_NUM_THREADS=1 PYTHONPATH=src python campaigns/conv2d_g1/run.py "
                     f"--folder {folder}",
                     f"python campaigns/conv2d_g1/finalize.py --folder {folder} --run-dir RUN_DIR --last 4 "
                     "(--response by-energy --calibration-events 4000 when response_calibration has by_energy; "
                     "--resolution by-energy --calibration-per-source when it has resolution; --layers by-energy "
                     "when it has layers; --cells by-energy when it has cells; --peak by-energy when it has peak; "
                     "--width by-energy (and --width-max-energy its max_energy_gev) when it has width; --lateral "
                     "by-energy when it has lateral; --hits by-energy when it has hits; --symmetry normal_incidence "
                     "when it has symmetry; "
                     "with recalibrated_from: "
                     "--generator that generator instead of --run-dir and --last)",
                     "campaigns/conv2d_g1/evaluate.sh src/fastshower/weights/conv2d_g1 OUTDIR 10 50 100 300",
                     "python campaigns/conv2d_g1/summarize.py OUTDIR"],
    }
    if meta["recalibrated_from"] is None:
        del meta["recalibrated_from"]
    if args.evaluation is not None:
        meta["fastshower_validate_vs_geant4"] = json.loads(args.evaluation.read_text())
    registry.save_generator(g, args.out, meta)
    print(f"shipped step {step} as {args.out}")


if __name__ == "__main__":
    main()
