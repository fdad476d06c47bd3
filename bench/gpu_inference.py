"""Everything of the inference benchmark on one accelerator, in one call under 10 minutes.

For a lent GPU (``--device cuda``): per model, folded (``fastshower.infer.fold``) and, for the
ratio, unfolded; precisions fp32 (TF32 off, and TF32 on), bf16 and fp16; batch 1 to 10 000;
torch eager under ``inference_mode`` and a captured CUDA graph (static buffers, replay); device ms
per shower from CUDA events around ``--reps`` calls after ``--warmup`` calls (network only: inputs
already on the device), and a full-path row per (model, precision) at the largest batch that fits
(seeded noise on the host -> device -> showers back as numpy). Also the device's measured matmul
peak (fp32, TF32, bf16, fp16; 8192^2), FLOPs per shower (before/after the fold) and the fraction
of the peak reached, peak memory per row, and ONNX Runtime's CUDA execution provider when
onnxruntime-gpu is installed. Out-of-memory rows are recorded as such and the run goes on; a time
budget (``--budget-s``, default 540 s) skips what is left rather than overrun.

``--smoke`` runs the same code on the CPU in seconds (gan3d_clic25 unless ``--models``, width
0.125, batches 1 and 4, fp32 and bf16, one repetition, CUDA-only parts recorded as skipped): the
test suite runs it.

    python bench/gpu_inference.py --device cuda --out-dir "$OUT"          # the lent accelerator
    python bench/gpu_inference.py --smoke --out-dir /tmp/gpu_smoke        # anywhere

Writes ``<out-dir>/gpu_inference.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch

MODELS = ("gan3d_clic25", "gan3d_clic51", "conv2d_g1", "conv2d_g2", "conv2d_g3")
BATCHES = (1, 16, 128, 1024, 10_000)
PRECISIONS = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class Budget:
    def __init__(self, seconds: float) -> None:
        self.t0, self.seconds = time.perf_counter(), seconds

    @property
    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.t0)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _set_tf32(on: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def matmul_peak(dev: torch.device, dtype: torch.dtype, size: int, reps: int) -> float:
    """Best GFLOP/s of a size^2 matmul on ``dev``."""
    a = torch.randn(size, size, device=dev, dtype=dtype)
    b = torch.randn(size, size, device=dev, dtype=dtype)
    torch.mm(a, b)
    _sync(dev)
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        _sync(dev)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * size ** 3 / best / 1e9


def _timer(dev: torch.device):
    """(start, stop) -> elapsed ms: CUDA events on a GPU, perf_counter elsewhere."""
    if dev.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        return (lambda: start.record()), (lambda: (end.record(), end.synchronize(), start.elapsed_time(end))[2])
    box = {}
    return (lambda: box.__setitem__("t", time.perf_counter())), (lambda: 1e3 * (time.perf_counter() - box["t"]))


def time_network(module, dev, dtype, batch: int, warmup: int, reps: int, graph: bool) -> dict:
    """Device ms per shower of the network alone (inputs on the device), eager or CUDA graph."""
    from fastshower.infer.fold import example_inputs

    e, a, z = (t.to(dev) for t in example_inputs(module, batch, seed=1))
    e, a, z = e.to(dtype), a.to(dtype), z.to(dtype)

    def call():
        return module.postprocess(module.generate_raw(e, a, z).float())

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    with torch.inference_mode():
        if graph:
            side = torch.cuda.Stream(dev)
            side.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(side):
                for _ in range(max(warmup, 2)):
                    call()
            torch.cuda.current_stream(dev).wait_stream(side)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                call()
            run = g.replay
        else:
            run = call
        for _ in range(warmup):
            run()
        _sync(dev)
        start, stop = _timer(dev)
        start()
        for _ in range(reps):
            run()
        ms = stop() / reps
    return {"ms_per_shower": ms / batch, "ms_per_call": ms, "peak_memory_mb":
            torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda" else None}


def time_full_path(module, dev, dtype, batch: int, reps: int) -> dict:
    """Wall ms per shower of the whole generation call: host noise -> device -> GeV numpy on the host."""
    import numpy as np

    from fastshower.infer.generator import Generator

    precision = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    gen = Generator.from_module(module, device=dev, precision=precision, allow_extrapolation=True)
    e, a = np.full(batch, 100.0), np.full(batch, math.pi / 2)
    noise = torch.randn(batch, module.noise_dim, generator=torch.Generator().manual_seed(0))
    gen.run_batch(e, a, noise)
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        gen.run_batch(e, a, noise)
        best = min(best, time.perf_counter() - t0)
    return {"ms_per_shower": 1e3 * best / batch, "batch_size": batch}


def onnx_cuda_rows(module, batches, reps: int, tmp: Path) -> dict:
    try:
        import onnxruntime as ort
    except ImportError:
        return {"skipped": "onnxruntime not installed"}
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return {"skipped": "no CUDAExecutionProvider (onnxruntime-gpu not installed)"}
    from fastshower.infer.fold import example_inputs
    from fastshower.infer.onnx_export import export_onnx, open_session

    path = tmp / f"{module.name}.onnx"
    export_onnx(module, path, check=False)
    sess = open_session(path, device="cuda")
    rows = {}
    for b in batches:
        feed = dict(zip(("primary_energy", "incident_angle", "noise"), [t.numpy() for t in example_inputs(module, b)]))
        sess.run(["showers"], feed)
        t0 = time.perf_counter()
        for _ in range(reps):
            sess.run(["showers"], feed)
        rows[f"batch{b}"] = 1e3 * (time.perf_counter() - t0) / (reps * b)
    return rows


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--width", type=float, default=1.0, help="network width (1 = published)")
    p.add_argument("--batches", nargs="+", type=int, default=list(BATCHES))
    p.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=list(PRECISIONS))
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--budget-s", type=float, default=540.0)
    p.add_argument("--out-dir", default=os.environ.get("OUT", "."))
    p.add_argument("--smoke", action="store_true", help="CPU, tiny widths, batches 1 and 4, 1 repetition")
    args = p.parse_args(argv)
    if args.smoke:
        args.device, args.width, args.batches, args.warmup, args.reps = "cpu", 0.125, [1, 4], 1, 1
        args.precisions = [p for p in args.precisions if p in ("fp32", "bf16")]
        args.models = ["gan3d_clic25"] if args.models == list(MODELS) else args.models
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but torch sees no GPU (use --smoke on a CPU)")
    budget = Budget(args.budget_s)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    from fastshower.infer.fold import flops_per_shower, fold_generator
    from fastshower.models.registry import build_generator

    size = 8192 if dev.type == "cuda" else 512
    peaks = {}
    for label, dtype, tf32 in (("fp32", torch.float32, False), ("tf32", torch.float32, True),
                               ("bf16", torch.bfloat16, False), ("fp16", torch.float16, False)):
        if dev.type != "cuda" and label in ("tf32", "fp16"):
            continue
        if dev.type == "cuda":
            _set_tf32(tf32)
        peaks[label] = matmul_peak(dev, dtype, size, 3 if args.smoke else 5)
    doc: dict = {"machine": {"device": str(dev), "name": torch.cuda.get_device_name(dev) if dev.type == "cuda"
                             else platform.processor() or platform.machine(), "torch": torch.__version__,
                             "cuda": torch.version.cuda, "peak_gflops": peaks, "loadavg_start": os.getloadavg()},
                 "settings": vars(args), "results": [], "skipped": []}
    tmp = out_dir / "tmp_onnx"
    for name in args.models:
        base = build_generator(name, width=args.width).eval()
        flops = {"unfolded": flops_per_shower(base)["total"]}
        nets = {"folded": fold_generator(base), "unfolded": base}
        flops["folded"] = flops_per_shower(nets["folded"])["total"]
        for fold_label, net in nets.items():
            for prec in args.precisions:
                dtype = PRECISIONS[prec]
                if dev.type == "cuda":
                    _set_tf32(prec == "tf32")
                elif prec in ("tf32", "fp16"):
                    doc["skipped"].append(f"{name} {prec}: CUDA only")
                    continue
                module = copy.deepcopy(net).to(dev, dtype)  # from the fp32 master each time
                for batch in args.batches:
                    for mode in ("eager", "cuda_graph"):
                        key = f"{name} {fold_label} {prec} batch {batch} {mode}"
                        if mode == "cuda_graph" and dev.type != "cuda":
                            doc["skipped"].append(f"{key}: CUDA only")
                            continue
                        if fold_label == "unfolded" and batch != max(args.batches) and batch != 1 and not args.smoke:
                            continue  # the unfolded network only for the ratio, at batch 1 and the largest
                        if budget.left < 5:
                            doc["skipped"].append(f"{key}: time budget")
                            continue
                        try:
                            row = time_network(module, dev, dtype, batch, args.warmup, args.reps, mode == "cuda_graph")
                        except torch.OutOfMemoryError:
                            row = {"error": "out of memory"}
                            torch.cuda.empty_cache()
                        except RuntimeError as exc:
                            row = {"error": str(exc).splitlines()[0]}
                        row.update(model=name, fold=fold_label, precision=prec, batch_size=batch, mode=mode,
                                   flops_per_shower=flops[fold_label])
                        if "ms_per_shower" in row:
                            gflops = flops[fold_label] / row["ms_per_shower"] / 1e6
                            row.update(achieved_gflops=gflops,
                                       fraction_of_peak=gflops / peaks.get(prec, peaks["fp32"]))
                        doc["results"].append(row)
                        print(f"{key}: {row.get('ms_per_shower', row.get('error'))}", file=sys.stderr, flush=True)
                if fold_label == "folded" and budget.left > 5:
                    fits = [r["batch_size"] for r in doc["results"] if r["model"] == name and r["fold"] == "folded"
                            and r["precision"] == prec and "ms_per_shower" in r]
                    if fits:
                        doc["results"].append({"model": name, "fold": "folded", "precision": prec, "mode": "full path",
                                               **time_full_path(module, dev, dtype, max(fits), max(args.reps // 2, 1))})
                del module
        if budget.left > 5:
            tmp.mkdir(exist_ok=True)
            doc.setdefault("onnxruntime_cuda", {})[name] = onnx_cuda_rows(nets["folded"], args.batches, args.reps, tmp)
    doc["machine"]["loadavg_end"] = os.getloadavg()
    doc["machine"]["seconds"] = time.perf_counter() - budget.t0
    path = out_dir / "gpu_inference.json"
    path.write_text(json.dumps(doc, indent=2, default=float) + "\n")
    print(f"wrote {path} ({doc['machine']['seconds']:.0f} s)", file=sys.stderr)
    return doc


if __name__ == "__main__":
    main()
