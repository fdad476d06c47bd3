"""A learning check: does a small model measurably learn on a CPU within a fixed number of steps?

:func:`learning_run` trains an eighth-width ``conv2d_g1`` with the Conv2D recipe on a few hundred
GFlash showers (made on the fly, seeded) and reports the validation metrics of the untrained
generator (with its calibrated output scale) and after training: profile MSE, sampling-fraction
error, and the discriminator's energy-regression MAPE on the held-out showers. The CI test
(``tests/test_train_learning.py``) runs one seed; ``bench/learning.py`` runs several to show the
result is not luck. It is the check that caught the blind Conv2D discriminator (issue 15): with
batch-statistics BatchNorm before its heads, the energy MAPE stays near 100%.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch

#: The fixed setting of the check (documented in docs/training.md, "Learning check"): 4 passes of
#: 64 steps of 8 showers over 512 showers; the output head is linear for the first pass, then ReLU
#: (``relu_epoch``). (Batch 16 x 128 steps, the same CPU time, passed for 2 seeds of 4, batch 8 x
#: 256 steps for 3 of 4: bench/learning_cpu*.json.)
SETTING: dict[str, Any] = {
    "model": "conv2d_g1", "width": 0.125, "batch_size": 8, "steps": 256, "n_train": 512, "n_validation": 256,
    "energy_gev": "20:200", "relu_epoch": 1,
}
#: What "learned" means: D's energy MAPE (%) below this, and the profile MSE / sampling-fraction
#: error below these fractions of the untrained generator's (with its calibrated output scale).
BOUNDS = {"d_energy_mape": 25.0, "profile_mse_ratio": 0.9, "sampling_fraction_error_ratio": 0.5}


def passes(result: dict[str, Any]) -> bool:
    """Whether a :func:`learning_run` result meets :data:`BOUNDS`."""
    b, a = result["before"], result["after"]
    return bool(a["d_energy_mape"] < BOUNDS["d_energy_mape"]
                and a["profile_mse"] < BOUNDS["profile_mse_ratio"] * b["profile_mse"]
                and a["sampling_fraction_error"]
                < BOUNDS["sampling_fraction_error_ratio"] * b["sampling_fraction_error"])


def learning_run(seed: int = 0, steps: int | None = None, workdir: str | Path | None = None,
                 model_config: dict[str, Any] | None = None, recipe: dict[str, Any] | None = None,
                 batch_size: int | None = None) -> dict[str, Any]:
    """Train the check's model for ``steps`` (default :data:`SETTING`) with run seed ``seed``;
    returns the settings, ``before`` and ``after`` validation metrics and CPU seconds. The data
    are GFlash showers with seeds 1 (train) and 2 (validation), whatever ``seed`` is.
    ``model_config`` / ``recipe`` override the model options / recipe fields (e.g. the old
    ``batchnorm: train``); ``batch_size`` overrides the setting's."""
    from fastshower.data import write_showers
    from fastshower.geometry import PRESETS
    from fastshower.simulate.gflash import simulate
    from fastshower.train.config import build_config
    from fastshower.train.trainer import Trainer

    s = dict(SETTING)
    s["batch_size"] = batch_size or s["batch_size"]
    steps = steps or s["steps"]
    per_epoch = s["n_train"] // s["batch_size"]  # validated at the end of every pass over the data
    cpu0 = time.process_time()
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        d = Path(tmp)
        clic25 = PRESETS["clic25"]
        write_showers(d / "train.h5", simulate(clic25, energy=s["energy_gev"], angle_deg="90", n=s["n_train"], seed=1))
        write_showers(d / "val.h5", simulate(clic25, energy=s["energy_gev"], angle_deg="90", n=s["n_validation"],
                                             seed=2))
        raw = {"model": {"name": s["model"], "config": {"width": s["width"], **(model_config or {})}},
               "recipe": {"preset": "conv2d", "batch_size": s["batch_size"], "early_fake_energy_epochs": 0,
                          "relu_epoch": s["relu_epoch"],
                          **(recipe or {})},
               "data": {"train": str(d / "train.h5"), "validation": str(d / "val.h5"),
                        "augment": "normal_incidence"},
               "run": {"epochs": max(1, -(-steps // per_epoch)), "steps_per_epoch": min(steps, per_epoch),
                       "seed": seed, "device": "cpu",
                       "checkpoint_every": 10 * steps, "output_dir": str(d / "run"), "progress": False,
                       "tensorboard": "false"}}
        trainer = Trainer(build_config(raw))
        data_cpu = time.process_time() - cpu0
        before = trainer.validate()
        c = time.process_time()
        records = trainer.fit()
        train_cpu = time.process_time() - c
        after = {k[4:]: v for k, v in records[-1].items() if k.startswith("val_")}
        curve = [{"step": r["step"], **{k[4:]: v for k, v in r.items() if k.startswith("val_")}} for r in records]
        trainer.close()
    return {"seed": seed, "setting": {**s, "steps": steps}, "output_scale": float(trainer.G.output_scale),
            "before": before, "after": after, "curve": curve, "data_cpu_s": round(data_cpu, 2),
            "train_cpu_s": round(train_cpu, 2),
            "total_cpu_s": round(time.process_time() - cpu0, 2), "threads": torch.get_num_threads()}
