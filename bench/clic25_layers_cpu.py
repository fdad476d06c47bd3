"""Per-layer CPU time of a folded 3-d generator (full width, seeded random weights) against each
layer's own FLOP floor, one thread (docs/inference.md, issue 18).

The network is the one ``Generator.load`` runs on the CPU: folded, channels-last twin, the layers
after the dense one on batch slices (:class:`fastshower.infer.fold.BatchChunks`). Each layer is
timed on its own input at the size it really runs at (the dense layer at ``--batch``, the others at
the slice size), CPU ms per shower, the fastest of ``--repeats`` calls after a warm-up, minus the
time of the input copy each call makes (in-place activations). Per layer: FLOPs executed and
minimal (:meth:`~fastshower.infer.fold.ConvTransposeCrop.effective_flops`: taps that meet an input
cell, outputs kept), GFLOP/s achieved and its percentage of the peak, the floor (minimal FLOPs /
the one-core fp32 matmul peak of the same run, 2048^2, best of 5, the larger of the probes at the
start and the end) and ms / floor. Also the whole network at ``--batch`` with the default slices
and without them (``chunk_bytes=0``), and the load average.

    /work/bin/quiet .venv/bin/python bench/clic25_layers_cpu.py --out bench/clic25_layers_cpu_quiet_chunks.json
    /work/bin/quiet .venv/bin/python bench/clic25_layers_cpu.py --model gan3d_clic51 --batch 16 \\
        --out bench/clic51_layers_cpu_quiet_chunks.json
"""

from __future__ import annotations

import argparse
import json
import math
import os

import torch
from torch import nn

from fastshower.infer.benchmark import measure_peak_gflops
from fastshower.infer.fold import (
    BatchChunks,
    ConvTransposeCrop,
    DenseVolume,
    _dense_of,
    channels_last,
    example_inputs,
    fold_generator,
)
from fastshower.infer.timing import time_per_shower
from fastshower.models.registry import build_generator


def best_ms(fn, batch: int, repeats: int) -> float:
    """Fastest of ``repeats`` calls after one warm-up, CPU ms per shower."""
    return time_per_shower(fn, batch, warmup=1, repeats=repeats, clock="cpu").ms_per_shower_min


def peak_gflops() -> float:
    """Best fp32 GFLOP/s of a 2048^2 matmul on one thread, by CPU time."""
    return measure_peak_gflops("cpu", 2048, clock="cpu")


def flops(mod: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(executed, minimal) FLOPs per shower of ``mod`` on input ``x`` with output ``y``."""
    if isinstance(mod, ConvTransposeCrop):
        shape = (1, *x.shape[1:])
        return mod.executed_flops(shape), mod.effective_flops(shape)
    if isinstance(mod, DenseVolume):
        return 2.0 * mod.weight.numel(), 2.0 * mod.weight.numel()
    if _dense_of(mod) is not None:
        return 2.0 * _dense_of(mod).weight.numel(), 2.0 * _dense_of(mod).weight.numel()
    if isinstance(mod, nn.modules.conv._ConvNd):
        n = 2.0 * y[0].numel() * math.prod(mod.weight.shape[1:])
        return n, n
    return 0.0, 0.0


def layer_rows(net, batch: int, peak: float, repeats: int) -> list[dict]:
    e, a, z = example_inputs(net, batch, 3)
    keep = torch.preserve_format
    rows: list[dict] = []
    x = net.latent(e, a, z)
    stack: list[tuple[nn.Module, int]] = []
    for mod in net.net:
        if isinstance(mod, BatchChunks):
            size = math.ceil(batch / math.ceil(batch / mod.chunk))  # the slices BatchChunks makes
            stack += [(m, size) for m in mod.body]
        else:
            stack.append((mod, batch))
    for i, (mod, size) in enumerate(stack):
        size = min(size, batch)
        xi = x[:size].clone(memory_format=keep)
        y = mod(xi.clone(memory_format=keep))
        ms = max(0.0, best_ms(lambda m=mod, t=xi: m(t.clone(memory_format=keep)), size, repeats)
                 - best_ms(lambda t=xi: t.clone(memory_format=keep), size, repeats))
        executed, minimal = flops(mod, xi, y)
        floor = minimal / peak / 1e6
        rows.append({"layer": f"{i} {type(mod).__name__}", "batch": size, "input": list(xi.shape[1:]),
                     "output": list(y.shape[1:]), "mflop_executed": executed / 1e6, "mflop_minimal": minimal / 1e6,
                     "ms_per_shower": ms, "gflops_executed": executed / ms / 1e6 if ms > 0 else None,
                     "floor_ms": floor, "ms_over_floor": ms / floor if floor > 0 else None})
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in rows[-1].items()}), flush=True)
        x = mod(x.clone(memory_format=keep))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gan3d_clic25")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    folded = fold_generator(build_generator(args.model).eval())
    net, whole = channels_last(folded), channels_last(folded, chunk_bytes=0)
    doc: dict = {"model": args.model, "batch": args.batch, "threads": 1, "clock": "cpu (process_time)",
                 "loadavg_start": os.getloadavg(), "peak_gflops_start": peak_gflops()}
    with torch.inference_mode():
        e, a, z = example_inputs(folded, args.batch, 3)
        doc["layers"] = layer_rows(net, args.batch, doc["peak_gflops_start"], args.repeats)
        for _ in range(2):  # interleaved: the sliced and the whole-batch network
            for label, variant in (("total (batch slices)", net), ("total (whole batch)", whole)):
                ms = best_ms(lambda v=variant: v(e, a, z), args.batch, args.repeats)
                doc[label] = min(doc.get(label, math.inf), ms)
    doc["peak_gflops_end"] = peak_gflops()
    peak = max(doc["peak_gflops_start"], doc["peak_gflops_end"])  # the less disturbed probe
    for row in doc["layers"]:
        row["floor_ms"] = row["mflop_minimal"] / peak
        row["ms_over_floor"] = row["ms_per_shower"] / row["floor_ms"] if row["floor_ms"] > 0 else None
        row["percent_of_peak"] = 100 * row["gflops_executed"] / peak if row["gflops_executed"] else None
    doc["sum_of_layers"] = sum(r["ms_per_shower"] for r in doc["layers"])
    doc["floor_ms"] = sum(r["mflop_minimal"] for r in doc["layers"]) / peak  # MFLOP / (GFLOP/s) = ms
    doc["loadavg_end"] = os.getloadavg()
    print(json.dumps({k: v for k, v in doc.items() if k != "layers"}), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            f.write(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
