"""Reduced precision on this CPU: fp32 / bf16 / fp16 (torch), fp32 / fp16 / int8 tuned (ONNX Runtime).

Per model: export to ONNX, tune int8 to a target (``fastshower.infer.quantize.tune``, relative
shape metric vs fp32; for models with shipped weights also the physics metrics vs GFlash, criterion
``both``), make the fp16 file, then time every variant at batch 128 and batch 1 and measure its
accuracy on held-out inputs (seed 7; tuning uses seeds 0 and 1):

- ``relative_shape_error`` vs the torch fp32 model (same inputs);
- with trained weights: ``profile_mse`` and ``sampling_fraction_error`` vs GFlash showers of the
  same conditions (and the fp32 values beside them);
- model size in MB (ONNX: the file; torch: parameters and buffers in that dtype), layers left in
  fp32, int8 kernels in the optimised graph.

Timings: each variant ``--rounds`` timed calls per batch size after a warm-up, one variant after
the other; per variant the minimum and the median ms/shower are written. The CPU may be shared: the load average at start and end is recorded.

    .venv/bin/python bench/quantize.py --out bench/quantize_cpu.json
    .venv/bin/python bench/quantize.py --models conv2d_g1 --quick
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fastshower.fileio import atomic_path
from fastshower.infer import quantize as q
from fastshower.infer.generator import Generator
from fastshower.infer.onnx_export import export_onnx
from fastshower.models.registry import build_generator, list_shipped, save_generator

MODELS = ("gan3d_clic25", "conv2d_g1", "conv2d_g2", "conv2d_g3")
#: torch fp16 on this CPU ran 5x slower than fp32 (gan3d_clic25, batch 128: 24.5 vs 4.6 ms/shower):
#: ``--torch-fp16`` adds it; the fp16 row is the ONNX file.
TORCH_PRECISIONS = ("fp32", "bf16")


def prepare(name: str, tmp: Path, args) -> tuple[dict[str, Generator], dict, str]:
    """The variants of ``name`` (label -> loaded Generator), the tuning summary and the weights kind."""
    trained = name in list_shipped()
    stem: str | Path = name
    if not trained:
        torch.manual_seed(0)
        stem = save_generator(build_generator(name), tmp / name).with_suffix("")
    fp32_onnx = tmp / f"{name}.onnx"
    export_onnx(stem, fp32_onnx, check=True)
    variants = {f"torch {p}": Generator.load(stem, precision=p)
                for p in TORCH_PRECISIONS + (("fp16",) if args.torch_fp16 else ())}
    variants["onnx fp32"] = Generator.load(fp32_onnx, threads=args.threads)
    reference = reference_showers(variants["torch fp32"], args.tune_n, seed=1) if trained else None
    common = dict(criterion="both" if trained else "shapes", n_eval=args.tune_n, reference=reference,
                  threads=args.threads, timing_batch=args.timing_batch)
    fp16 = q.make_fp16(fp32_onnx, tmp / f"{name}.fp16.onnx", args.target, **common)
    if fp16.met:
        variants["onnx fp16"] = Generator.load(tmp / f"{name}.fp16.onnx", threads=args.threads)
    tuning = {}
    conv3d_run = q.read_graph(fp32_onnx).conv3d_layers and not args.no_conv3d_int8
    runs = [("int8", False)] + ([("int8 conv3d", True)] if conv3d_run else [])
    for label, conv3d in runs:
        path = tmp / f"{name}.{label.replace(' ', '_')}.onnx"
        t0 = time.perf_counter()
        result = q.tune(fp32_onnx, path, args.target, select="fastest", conv3d=conv3d, n_calibration=args.tune_n,
                        max_groups=args.max_groups, progress=True, **common)
        print(f"{name} {label}: tuned in {time.perf_counter() - t0:.0f} s, {len(result.steps)} steps, "
              f"chosen {result.chosen_step}", file=sys.stderr)
        tuning[f"onnx {label}"] = summary(result, path)
        if result.met:
            variants[f"onnx {label}"] = Generator.load(path, threads=args.threads)
    tuning["onnx fp16"] = summary(fp16, tmp / f"{name}.fp16.onnx")
    tuning["onnx fp32"] = {"size_mb": q.model_size_mb(fp32_onnx)}
    return variants, tuning, "trained (shipped)" if trained else "untrained (timing; accuracy vs fp32 only)"


def summary(result: q.TuningResult, path: Path) -> dict:
    """What the table needs from a tuning log (the whole log is kept under ``log``)."""
    chosen = result.chosen
    return {"met": result.met, "size_mb": q.model_size_mb(path) if result.met else None,
            "fp32_layers": (chosen.fp32_layers if chosen else None), "skipped_layers": result.skipped_layers,
            "n_tuned_layers": len(result.eligible_layers), "int8_kernels": result.int8_kernels,
            "tuning_seconds": result.seconds, "all_int8_ms_per_shower": result.steps[0].ms_per_shower,
            "fp32_ms_per_shower": result.fp32_ms_per_shower, "chosen_step": result.chosen_step,
            "log": json.loads(result.to_json())}


def reference_showers(generator: Generator, n: int, seed: int):
    """GFlash showers for ``n`` conditions uniform in the model's range (seeded)."""
    from fastshower.showers import ShowerSet
    from fastshower.simulate.gflash import simulate_showers

    rng = np.random.default_rng(seed)
    (e_lo, e_hi), (a_lo, a_hi) = generator.energy_range_gev, generator.angle_range_rad
    e, a = rng.uniform(e_lo, e_hi, n), rng.uniform(a_lo, a_hi, n)
    showers = simulate_showers(generator.geometry, e, a, rng)
    return ShowerSet(showers, e, a, generator.geometry)


def accuracy(variants: dict[str, Generator], n: int, trained: bool) -> dict[str, dict]:
    """Per variant: relative shape error vs torch fp32 on ``n`` held-out inputs (seed 7), and with
    trained weights the physics metrics vs GFlash for the same conditions."""
    reference = reference_showers(variants["torch fp32"], n, seed=7) if trained else None
    e, a = (reference.primary_energy, reference.incident_angle) if trained else _conditions(variants, n)
    noise = torch.randn(n, variants["torch fp32"].noise_dim, generator=torch.Generator().manual_seed(7))
    outputs = {label: np.concatenate([g.run_batch(e[i:i + 64], a[i:i + 64], noise[i:i + 64]) for i in range(0, n, 64)])
               for label, g in variants.items()}
    rows = {}
    for label, out in outputs.items():
        row = {"relative_shape_error": q.relative_shape_error(out, outputs["torch fp32"])}
        if trained:
            row.update(q.physics_metrics(out, {"primary_energy": e, "incident_angle": a}, reference))
        rows[label] = row
    return rows


def _conditions(variants: dict[str, Generator], n: int) -> tuple[np.ndarray, np.ndarray]:
    g = variants["torch fp32"]
    rng = np.random.default_rng(7)
    return rng.uniform(*g.energy_range_gev, n), rng.uniform(*g.angle_range_rad, n)


def timings(variants: dict[str, Generator], batch_sizes: tuple[int, ...], rounds: int) -> dict[str, dict]:
    """Per variant and batch size, ms/shower min and median over ``rounds`` timed calls (batch 1:
    the mean of 3 calls each), after one warm-up call; one variant after the other."""
    g = variants["torch fp32"]
    inputs = {}
    for b in batch_sizes:
        e, a = _conditions(variants, b)
        inputs[b] = (e, a, torch.randn(b, g.noise_dim, generator=torch.Generator().manual_seed(b)))
    calls = {b: 3 if b == 1 else 1 for b in batch_sizes}
    result: dict[str, dict] = {}
    for label, gen in variants.items():
        result[label] = {}
        for b in batch_sizes:
            gen.run_batch(*inputs[b])  # warm-up
            samples = []
            for _ in range(rounds):
                t0 = time.perf_counter()
                for _ in range(calls[b]):
                    gen.run_batch(*inputs[b])
                samples.append((time.perf_counter() - t0) / (calls[b] * b) * 1e3)
            result[label][f"batch_{b}"] = {"ms_per_shower_min": min(samples),
                                           "ms_per_shower_median": statistics.median(samples), "samples": samples}
        print(f"  {label}: " + ", ".join(f"batch {b} {result[label][f'batch_{b}']['ms_per_shower_min']:.3f}"
                                          for b in batch_sizes) + " ms/shower", file=sys.stderr)
    return result


def torch_size_mb(gen: Generator) -> float:
    return sum(t.numel() * t.element_size() for t in [*gen.module.parameters(), *gen.module.buffers()]) / 1e6


def bench_model(name: str, args) -> dict:
    with tempfile.TemporaryDirectory(prefix="fastshower-qbench-") as tmp:
        variants, tuning, weights = prepare(name, Path(tmp), args)
        acc = accuracy(variants, args.accuracy_n, trained=weights.startswith("trained"))
        times = timings(variants, tuple(args.batch_sizes), args.rounds)
    rows = []
    for label, gen in variants.items():
        info = tuning.get(label, {})
        rows.append({"variant": label, "backend": gen.backend, "precision": gen.precision, **times[label],
                     **acc[label], "size_mb": info.get("size_mb") if gen.backend == "onnx" else torch_size_mb(gen),
                     "fp32_layers": info.get("fp32_layers"), "skipped_layers": info.get("skipped_layers"),
                     "n_tuned_layers": info.get("n_tuned_layers"), "int8_kernels": info.get("int8_kernels")})
    return {"weights": weights, "rows": rows, "tuning": {k: v for k, v in tuning.items() if "log" in v}}


def format_table(name: str, result: dict, batch_sizes) -> str:
    head = (f"| {name} | " + " | ".join(f"ms/shower b{b} (min / median)" for b in batch_sizes)
            + " | MB | rel. shape err | profile MSE | SF error | fp32 layers | int8 kernels |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in result["rows"]:
        t = " | ".join(f"{r[f'batch_{b}']['ms_per_shower_min']:.3f} / {r[f'batch_{b}']['ms_per_shower_median']:.3f}"
                       for b in batch_sizes)
        fp32 = "-" if r["fp32_layers"] is None else f"{len(r['fp32_layers'])} tuned + {len(r['skipped_layers'])} kept"
        phys = (f"{r['profile_mse']:.3g} | {r['sampling_fraction_error']:.3g}" if "profile_mse" in r else "- | -")
        lines.append(f"| {r['variant']} | {t} | {r['size_mb']:.2f} | {r['relative_shape_error']:.2e} | {phys} | {fp32} | "
                     f"{', '.join(r['int8_kernels'] or []) or '-'} |")
    for label, t in result["tuning"].items():
        lines.append(f"{label} tuning: all tuned layers quantized {t['all_int8_ms_per_shower']:.3f} ms/shower vs fp32 "
                     f"{t['fp32_ms_per_shower']:.3f} (ORT, tuning batch), chosen step {t['chosen_step']}, "
                     f"{t['tuning_seconds']:.0f} s")
    return "\n".join(lines)


def _finite(value):
    """``value`` with NaN (untimed tuning steps) as None, so that the file is strict JSON."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return None if isinstance(value, float) and math.isnan(value) else value


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--target", type=float, default=0.01)
    p.add_argument("--threads", type=int, default=2, help="torch and ONNX Runtime intra-op threads")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[128, 1])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--tune-n", type=int, default=128, help="calibration and evaluation showers of the tuning")
    p.add_argument("--timing-batch", type=int, default=32, help="batch of the timings inside the tuning")
    p.add_argument("--max-groups", type=int, default=8, help="layer groups of the tuning")
    p.add_argument("--accuracy-n", type=int, default=256, help="held-out showers for the accuracy columns")
    p.add_argument("--no-conv3d-int8", action="store_true", help="skip the int8 tuning with 3-d convolutions")
    p.add_argument("--torch-fp16", action="store_true", help="also time torch fp16 (slow on CPUs)")
    p.add_argument("--quick", action="store_true", help="batch 32 and 1, 2 rounds, 64 tuning / 128 accuracy showers")
    p.add_argument("--out", default=None, help="JSON output file")
    args = p.parse_args(argv)
    if args.quick:
        args.batch_sizes, args.rounds, args.tune_n, args.accuracy_n = [32, 1], 2, 64, 128
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    load_start = os.getloadavg()
    results = {}
    for name in args.models:
        print(f"== {name}", file=sys.stderr)
        results[name] = bench_model(name, args)
        print(format_table(name, results[name], args.batch_sizes), flush=True)
    import onnxruntime

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    out = {"machine": {"cpu": cpu, "cores": os.cpu_count(), "threads": args.threads, "torch": torch.__version__,
                       "onnxruntime": onnxruntime.__version__, "load_average_start": load_start,
                       "load_average_end": os.getloadavg(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                       "note": "CPU shared with other jobs while measured: compare variants within one model"},
           "settings": {k: v for k, v in vars(args).items() if k != "out"}, "seconds": time.perf_counter() - t0,
           "models": results}
    if args.out:
        with atomic_path(args.out) as tmp:
            tmp.write_text(json.dumps(_finite(out), indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
