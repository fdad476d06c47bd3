"""Run (or resume) the conv2d_g1 CPU campaign of this folder; see config.yaml and docs/training.md.

    nohup nice -n 15 env OMP_NUM_THREADS=1 PYTHONPATH=src python campaigns/conv2d_g1/run.py --budget-min 120 &
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from fastshower.train.campaign import run_campaign

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-min", type=float, default=120.0, help="wall minutes to train in this session")
    parser.add_argument("--run-dir", type=Path, default=HERE.parent.parent / "runs" / "campaign_conv2d_g1",
                        help="bulky outputs (every validated generator, trainer checkpoints); default runs/")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="folder with the Geant4 clic25 train/ and validation/ folders "
                             "(default: ../shared/data/g4-clic25 beside the repository, as in config.yaml)")
    parser.add_argument("--folder", type=Path, default=HERE, help="campaign folder (config.yaml, latest/, best/)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    overrides = None
    if args.data_root is not None:
        root = args.data_root.resolve()
        overrides = {"data": {"train": str(root / "train" / "*.h5"), "validation": str(root / "validation" / "*.h5")}}
    rows = run_campaign(args.folder, args.budget_min * 60, args.run_dir, overrides)
    last = rows[-1] if rows else {}
    print(f"campaign at step {last.get('step')}: val profile MSE {last.get('val_profile_mse')}, "
          f"sampling-fraction error {last.get('val_sampling_fraction_error')}, "
          f"D energy MAPE {last.get('val_d_energy_mape')}")


if __name__ == "__main__":
    main()
