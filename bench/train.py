"""Training throughput of the five generators (full iterations: D real, D fake, G steps).

For each model at its default width: write a small synthetic training file of its geometry
(exponential cell energies; the arithmetic does not depend on the values), build the trainer with
the model's recipe, run ``--warmup`` iterations, then time ``--steps`` iterations of ``--batch``
showers. Writes JSON (device, parameter counts, samples/s, s/step) and prints a table.

    .venv/bin/python bench/train.py --out bench/train_cpu.json
    .venv/bin/python bench/train.py --device cuda --batch 64 --out bench/train_cuda.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fastshower.data import write_showers
from fastshower.fileio import write_text_atomic
from fastshower.models import registry
from fastshower.showers import ShowerSet
from fastshower.train.config import build_config
from fastshower.train.trainer import Trainer

MODELS = ("gan3d_clic25", "gan3d_clic51", "conv2d_g1", "conv2d_g2", "conv2d_g3")


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({torch.get_num_threads()} threads)"
    return f"{platform.machine()} ({torch.get_num_threads()} threads)"


def bench_model(name: str, workdir: Path, batch: int, steps: int, warmup: int, device: str) -> dict:
    geometry = registry.build_generator(name).geometry
    rng = np.random.default_rng(0)
    n = batch * (steps + warmup)
    energy = rng.uniform(*geometry.energy_range_gev, n)
    angle = rng.uniform(*geometry.angle_range_rad, n)
    showers = rng.exponential(1e-3, size=(n, *geometry.shape)).astype(np.float32)
    path = workdir / f"{name}.h5"
    write_showers(path, ShowerSet(showers, energy, angle, geometry))
    cfg = build_config({"model": {"name": name}, "recipe": {"batch_size": batch, "lr_scaling": "none"},
                        "data": {"train": str(path)},
                        "run": {"device": device, "output_dir": str(workdir / name), "progress": False}})
    trainer = Trainer(cfg)
    data = trainer.data_for_epoch(0)
    batches = list(data.batches(0, 0, 0, 1, batch, 0, steps + warmup))
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
    for b in batches[:warmup]:
        trainer.train_step(b)
    sync()
    t0 = time.perf_counter()
    for b in batches[warmup:]:
        trainer.train_step(b)
    sync()
    dt = time.perf_counter() - t0
    return {"model": name, "recipe": cfg.recipe.preset, "generator_steps": cfg.recipe.generator_steps,
            "params_generator": sum(p.numel() for p in trainer.G.parameters()),
            "params_discriminator": sum(p.numel() for p in trainer.D.parameters()),
            "batch": batch, "steps": steps, "s_per_step": dt / steps, "samples_per_s": batch * steps / dt,
            "device": str(trainer.device), "device_name": _device_name(trainer.device)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(MODELS))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    ap.add_argument("--out", type=Path, default=Path("bench/train.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            r = bench_model(name, Path(tmp), args.batch, args.steps, args.warmup, args.device)
            results.append(r)
            print(f"{name:13s} G {r['params_generator']:>10,d}  D {r['params_discriminator']:>9,d}  "
                  f"{r['samples_per_s']:9.2f} samples/s  {r['s_per_step']:8.3f} s/step  ({r['device_name']})",
                  flush=True)
    report = {"torch": torch.__version__, "threads": torch.get_num_threads(), "batch": args.batch,
              "steps": args.steps, "warmup": args.warmup,
              "note": "samples/s of full training iterations (D real + D fake + G steps) at default widths",
              "published": {"conv3d_3dgan_min_per_epoch_T4": 258, "conv2d_g1_min_per_epoch_T4": 40,
                            "showers_per_epoch": 200000, "source": "Rehm et al. (vCHEP 2021), as quoted in the issue"},
              "results": results}
    write_text_atomic(args.out, json.dumps(report, indent=1) + "\n")
    by = {r["model"]: r for r in results}
    if "gan3d_clic25" in by and "conv2d_g1" in by:
        print(f"conv2d_g1 / gan3d_clic25 throughput ratio: "
              f"{by['conv2d_g1']['samples_per_s'] / by['gan3d_clic25']['samples_per_s']:.2f} "
              f"(published T4: 258 / 40 = {258 / 40:.2f})")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
