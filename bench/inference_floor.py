"""Inference at the FLOP floor on one CPU core: folded vs unfolded networks, batch 1 vs batch B,
int8 where it pays, and the speed-up over Geant4 full simulation, all in one run.

Per model (registry name at full width, seeded random weights: timing and int8-vs-fp32 agreement
only; ``name@width`` for another width):

- FLOPs per shower before and after :func:`fastshower.infer.fold.fold_generator` (executed, and
  ``minimal``: only the taps the kept outputs need) and the **FLOP floor** = minimal FLOPs / the
  measured one-core fp32 peak (2048^2 matmul, best of 5, at the start and the end of the run, the
  larger kept);
- **CPU ms per shower, one thread** (``time.process_time``; on a loaded machine it counts the
  work, not the waiting), minimum over ``--rounds`` rounds, at batch ``--batch-size`` and batch 1
  (the mean of ``--batch1-calls`` calls): torch eager unfolded / folded / folded channels_last,
  ONNX Runtime unfolded / folded with one intra-op thread, and at batch 1 ONNX Runtime with two
  threads (wall ms: two threads' CPU time is not latency);
- with ``--int8 MODEL``: int8 tuned to ``--target`` (relative shape error vs fp32, layer groups
  returned to fp32 until met, ``select=first``) on the folded export in sub-pixel form (every
  layer an ordinary Conv, run by ORT as QLinearConv), timed like the rest; which layers run int8;
- GFlash ms/shower at ``--energy`` GeV (CPU, same process) and Geant4 full simulation at the same
  energy, normal incidence, e-, one core (child process, :mod:`fastshower.infer.g4reference`),
  and ``g4run`` fast mode with the folded model (transport / inference / placement);
- the load average at start and end.

    .venv/bin/python bench/inference_floor.py --out bench/inference_floor_cpu.json
    .venv/bin/python bench/inference_floor.py --models gan3d_clic25 --int8 gan3d_clic25 --quick
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

MODELS = ("gan3d_clic25", "conv2d_g1", "conv2d_g3", "gan3d_clic51", "conv2d_g2")
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.1f}] {msg}", file=sys.stderr, flush=True)


def cpu_flags() -> dict[str, bool]:
    try:
        flags = set(next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                         if line.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):
        flags = set()
    return {f: f in flags for f in CPU_FLAGS}


def peak_gflops_one_core(size: int = 2048, repeats: int = 5) -> float:
    """Best fp32 GFLOP/s of a size^2 matmul on one thread, by CPU time."""
    from fastshower.infer.benchmark import measure_peak_gflops

    return measure_peak_gflops("cpu", size, repeats, clock="cpu")


def time_call(fn, batch: int, calls: int, rounds: int) -> dict[str, float]:
    """Minimum over ``rounds`` of (CPU s, wall s) per shower of ``calls`` calls of ``fn``, after one warm-up."""
    fn()
    cpu, wall = math.inf, math.inf
    for _ in range(rounds):
        c0, w0 = time.process_time(), time.perf_counter()
        for _ in range(calls):
            fn()
        cpu = min(cpu, (time.process_time() - c0) / (calls * batch))
        wall = min(wall, (time.perf_counter() - w0) / (calls * batch))
    return {"cpu_ms": 1e3 * cpu, "wall_ms": 1e3 * wall}


def torch_runner(module, inputs):
    def run():
        with torch.inference_mode():
            return module(*inputs)
    return run


def ort_runner(path, feed, threads):
    from fastshower.infer.onnx_export import open_session

    sess = open_session(path, threads=threads)
    names = {i.name for i in sess.get_inputs()}
    feed = {k: v for k, v in feed.items() if k in names}
    return lambda: sess.run(["showers"], feed)


def geant4_and_gflash(geo, model_stem: str, args) -> dict:
    from fastshower.infer.g4reference import geant4_reference
    from fastshower.simulate.gflash import simulate_showers

    out: dict = {}
    n = 64
    e, a = np.full(n, args.energy), np.full(n, math.pi / 2)
    simulate_showers(geo, e[:4], a[:4], np.random.default_rng(0))
    c0 = time.process_time()
    simulate_showers(geo, e, a, np.random.default_rng(1))
    out["gflash_cpu_ms"] = 1e3 * (time.process_time() - c0) / n
    if args.geant4_n > 0:
        out["geant4_full"] = geant4_reference(geo.name, "full", energy_gev=args.energy, n=args.geant4_n)
        out["geant4_fast"] = geant4_reference(geo.name, "fast", model=model_stem, energy_gev=args.energy,
                                              n=args.batch_size, batch_events=args.batch_size)
    return out


def int8_rows(name: str, module, tmp: Path, feeds: dict, args) -> dict:
    from fastshower.infer import quantize as q
    from fastshower.infer.onnx_export import export_onnx

    fp32 = tmp / f"{name}.sub.onnx"
    export_onnx(module, fp32, form="subpixel")
    out = tmp / f"{name}.int8.onnx"
    t0 = time.perf_counter()
    result = q.tune(fp32, out, args.target, n_calibration=args.tune_n, n_eval=args.tune_n, timing_batch=32,
                    threads=1, select="first", conv3d=True, max_groups=args.max_groups)
    info = {"tuning_s": time.perf_counter() - t0, "met": result.met, "target": args.target,
            "eligible_layers": len(result.eligible_layers), "skipped_layers": result.skipped_layers,
            "int8_kernels": result.int8_kernels,
            "steps": [{"fp32_layers": len(s.fp32_layers), "relative_shape_error": s.relative_shape_error,
                       "ms_per_shower_wall_batch32": s.ms_per_shower, "meets_target": s.meets_target}
                      for s in result.steps]}
    if not result.met:
        return info
    chosen = result.chosen
    info.update(fp32_layers=chosen.fp32_layers, relative_shape_error=chosen.relative_shape_error,
                int8_layers=[n for n in result.eligible_layers if n not in chosen.fp32_layers])
    for label, path in (("onnx fp32 subpixel", fp32), ("onnx int8", out)):
        info[label] = {
            f"batch{b}": time_call(ort_runner(path, feeds[b], 1), b, 1 if b > 1 else args.batch1_calls, args.rounds)
            for b in feeds}
    return info


def bench_model(spec: str, tmp: Path, peak: float, args) -> dict:
    from fastshower.infer.fold import channels_last, example_inputs, flop_report, fold_generator
    from fastshower.infer.onnx_export import export_onnx
    from fastshower.models.registry import build_generator, save_generator

    name, _, width = spec.partition("@")
    torch.manual_seed(0)
    module = build_generator(name, width=float(width or 1.0)).eval()
    stem = save_generator(module, tmp / spec.replace("@", "_w")).with_suffix("")
    batch = args.batch_size if name == "gan3d_clic25" else args.other_batch_size
    report = flop_report(module)
    folded = fold_generator(module)
    say(f"{spec}: {report['flops_before'] / 1e9:.3f} -> {report['flops_after'] / 1e9:.3f} GFLOP/shower "
        f"(minimal {report['flops_after_minimal'] / 1e9:.3f}); {report['folded']}")
    onnx_u, onnx_f = tmp / f"{name}.u.onnx", tmp / f"{name}.f.onnx"
    export_onnx(module, onnx_u, fold=False)
    check = export_onnx(module, onnx_f)  # folded; checked against the unfolded torch model
    feeds, tensors = {}, {}
    for b in (batch, 1):
        tensors[b] = example_inputs(module, b, seed=3)
        feeds[b] = dict(zip(("primary_energy", "incident_angle", "noise"), [t.numpy() for t in tensors[b]]))
    variants = {"torch unfolded": module, "torch folded": folded, "torch folded channels_last": channels_last(folded)}
    rows: dict = {}
    for b in (batch, 1):
        calls = 1 if b > 1 else args.batch1_calls
        for label, net in variants.items():
            rows.setdefault(label, {})[f"batch{b}"] = time_call(torch_runner(net, tensors[b]), b, calls, args.rounds)
        for label, path in (("onnx unfolded", onnx_u), ("onnx folded", onnx_f)):
            rows.setdefault(label, {})[f"batch{b}"] = time_call(ort_runner(path, feeds[b], 1), b, calls, args.rounds)
        if b == 1:  # what Generator.load runs at batch 1 on the CPU: the frozen trace (TorchBackend)
            from fastshower.infer.backends import _frozen_trace

            net = variants["torch folded channels_last"]
            with torch.inference_mode():
                traced = _frozen_trace(net, tensors[1], net(*tensors[1]))
            if traced is not False:
                rows["torch folded channels_last traced"] = {"batch1": time_call(torch_runner(traced, tensors[1]), 1,
                                                                                 calls, args.rounds)}
            rows.setdefault("onnx folded 2 threads", {})["batch1"] = time_call(ort_runner(onnx_f, feeds[1], 2), 1, calls,
                                                                               args.rounds)
        else:  # two threads at batch B (wall time is the figure: two threads' CPU time is not latency)
            torch.set_num_threads(2)
            try:
                rows["torch folded channels_last 2 threads"] = {f"batch{b}": time_call(
                    torch_runner(variants["torch folded channels_last"], tensors[b]), b, calls, args.rounds)}
            finally:
                torch.set_num_threads(1)
            rows.setdefault("onnx folded 2 threads", {})[f"batch{b}"] = time_call(ort_runner(onnx_f, feeds[b], 2), b, calls,
                                                                                  args.rounds)
        say(f"{spec} batch {b}: " + ", ".join(f"{k} {v[f'batch{b}']['cpu_ms']:.2f}" for k, v in rows.items()
                                                if f"batch{b}" in v))
    out = {"model": spec, "weights": "untrained (seeded, timing only)", "batch_size": batch,
           "flops": {k: v for k, v in report.items() if not k.startswith("by_operator")},
           "onnx_fold_check": {k: check[k] for k in ("max_rel_err_sum", "max_abs_err", "ok")},
           "cpu_ms_per_shower_one_thread": rows}
    if name in args.int8:
        say(f"{spec}: int8 tuning")
        out["int8"] = int8_rows(name, module, tmp, feeds, args)
        say(f"{spec}: int8 {json.dumps({k: out['int8'].get(k) for k in ('met', 'int8_kernels', 'relative_shape_error')})}")
    out["reference"] = geant4_and_gflash(module.geometry, str(stem), args)
    summarise(out, peak, batch)
    return out


def summarise(out: dict, peak: float, batch: int) -> None:
    rows = out["cpu_ms_per_shower_one_thread"]
    fp32_b = {k: v[f"batch{batch}"]["cpu_ms"] for k, v in rows.items() if f"batch{batch}" in v and "2 threads" not in k}
    two = {k: v[f"batch{batch}"]["wall_ms"] for k, v in rows.items() if f"batch{batch}" in v and "2 threads" in k}
    fp32_1 = {k: v["batch1"]["cpu_ms"] for k, v in rows.items() if "batch1" in v and "2 threads" not in k}
    best_b, best_1 = min(fp32_b, key=fp32_b.get), min(fp32_1, key=fp32_1.get)
    floor_ms = out["flops"]["flops_after_minimal"] / (peak * 1e9) * 1e3
    s = {"best_fp32_batch": best_b, "best_fp32_batch_ms": fp32_b[best_b], "best_fp32_batch1": best_1,
         "best_fp32_batch1_ms": fp32_1[best_1], "flop_floor_ms": floor_ms,
         "fp32_over_floor": fp32_b[best_b] / floor_ms,
         "best_fp32_batch_2_threads_wall_ms": min(two.values()) if two else None,
         "best_fp32_batch_2_threads": min(two, key=two.get) if two else None, "batch1_over_batch": fp32_1[best_1] / fp32_b[best_b],
         "fold_speedup_torch": fp32_b["torch unfolded"] / min(fp32_b["torch folded"], fp32_b["torch folded channels_last"]),
         "fold_speedup_onnx": fp32_b["onnx unfolded"] / fp32_b["onnx folded"]}
    best_any = fp32_b[best_b]
    int8 = out.get("int8", {})
    if int8.get("met"):
        i8 = int8["onnx int8"]
        s["int8_vs_onnx_fp32_best"] = {f"batch{b}": min(rows["onnx folded"][f"batch{b}"]["cpu_ms"],
                                                        rows["onnx unfolded"][f"batch{b}"]["cpu_ms"])
                                       / i8[f"batch{b}"]["cpu_ms"] for b in (batch, 1)}
        s["int8_vs_onnx_fp32_same_graph"] = {f"batch{b}": int8["onnx fp32 subpixel"][f"batch{b}"]["cpu_ms"]
                                             / i8[f"batch{b}"]["cpu_ms"] for b in (batch, 1)}
        best_any = min(best_any, i8[f"batch{batch}"]["cpu_ms"])
    s["best_any_precision_batch_ms"] = best_any
    ref = out["reference"]
    s["speedup_vs_gflash_fp32"] = ref["gflash_cpu_ms"] / fp32_b[best_b]
    full = ref.get("geant4_full", {})
    if "cpu_ms_per_event" in full:
        g4 = full["cpu_ms_per_event"]
        s.update(geant4_full_cpu_ms=g4, speedup_vs_geant4_fp32=g4 / fp32_b[best_b],
                 speedup_vs_geant4_best=g4 / best_any, speedup_vs_geant4_fp32_batch1=g4 / fp32_1[best_1])
    out["summary"] = s


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--int8", nargs="*", default=["gan3d_clic25", "conv2d_g1"])
    p.add_argument("--batch-size", type=int, default=128, help="gan3d_clic25")
    p.add_argument("--other-batch-size", type=int, default=32, help="the other models")
    p.add_argument("--batch1-calls", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--target", type=float, default=0.01)
    p.add_argument("--tune-n", type=int, default=64)
    p.add_argument("--max-groups", type=int, default=6)
    p.add_argument("--energy", type=float, default=100.0, help="GeV, Geant4 and GFlash")
    p.add_argument("--geant4-n", type=int, default=5, help="Geant4 full events (0: skip Geant4)")
    p.add_argument("--quick", action="store_true", help="2 rounds, 5 batch-1 calls, 2 Geant4 events")
    p.add_argument("--out", default=None)
    p.add_argument("--markdown", nargs="+", default=None,
                   help="print the docs tables of existing JSON files (results concatenated) and exit")
    args = p.parse_args(argv)
    if args.markdown:
        docs = [json.loads(Path(f).read_text()) for f in args.markdown]
        print(markdown({"results": [r for d in docs for r in d["results"]]}))
        return
    if args.quick:
        args.rounds, args.batch1_calls, args.geant4_n = 2, 5, min(args.geant4_n, 2)
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    t0 = time.perf_counter()
    load_start = os.getloadavg()
    peak_start = peak_gflops_one_core()
    say(f"one-core fp32 peak {peak_start:.1f} GFLOP/s")
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="fastshower-floor-") as tmp:
        for spec in args.models:
            results.append(bench_model(spec, Path(tmp), peak_start, args))
            if args.out:  # partial results after each model (a long run on a shared machine)
                write(args.out, {"partial": True, "settings": vars(args), "results": results,
                                 "peak_gflops_fp32_one_core_start": peak_start, "loadavg_start": load_start})
    peak_end = peak_gflops_one_core()
    peak = max(peak_start, peak_end)
    for r in results:  # floors against the larger of the two peaks
        summarise(r, peak, r["batch_size"])
    import onnxruntime

    doc = {"machine": {"cpu": platform.processor() or platform.machine(), "flags": cpu_flags(),
                       "cores": os.cpu_count(), "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                       "peak_gflops_fp32_one_core_start": peak_start, "peak_gflops_fp32_one_core_end": peak_end,
                       "peak_gflops_fp32_one_core": peak, "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
                       "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": time.perf_counter() - t0},
           "settings": vars(args), "results": results}
    for r in results:
        s = r["summary"]
        print(f"{r['model']:14s} floor {s['flop_floor_ms']:.2f} ms, best fp32 {s['best_fp32_batch_ms']:.2f} "
              f"({s['best_fp32_batch']}, {s['fp32_over_floor']:.2f}x floor), batch 1 {s['best_fp32_batch1_ms']:.2f} "
              f"({s['best_fp32_batch1']}), fold x{s['fold_speedup_torch']:.2f} torch x{s['fold_speedup_onnx']:.2f} ORT, "
              f"vs G4 {s.get('speedup_vs_geant4_fp32', float('nan')):.0f}x fp32 / "
              f"{s.get('speedup_vs_geant4_best', float('nan')):.0f}x best"
              + (f", int8 {s['int8_vs_onnx_fp32_best']}" if "int8_vs_onnx_fp32_best" in s else ""))
    if args.out:
        write(args.out, doc)
        print(f"wrote {args.out}")


def markdown(doc: dict) -> str:
    """The tables of docs/inference.md (CPU ms per shower, one thread) from a result JSON."""
    lines = []
    labels = ("torch unfolded", "torch folded", "torch folded channels_last", "onnx unfolded", "onnx folded")
    lines.append("| model | GFLOP/shower before -> after (minimal) | batch | " + " | ".join(labels)
                 + " | floor | best / floor | 2 threads, wall: torch channels_last / onnx |")
    lines.append("|---" * (len(labels) + 6) + "|")
    for r in doc["results"]:
        f, s, rows, b = r["flops"], r.get("summary", {}), r["cpu_ms_per_shower_one_thread"], r["batch_size"]
        cells = [f"{rows[k][f'batch{b}']['cpu_ms']:.2f}" if f"batch{b}" in rows.get(k, {}) else "-" for k in labels]
        lines.append(f"| {r['model']} | {f['flops_before'] / 1e9:.3f} -> {f['flops_after'] / 1e9:.3f} "
                     f"({f['flops_after_minimal'] / 1e9:.3f}) | {b} | " + " | ".join(cells)
                     + f" | {s.get('flop_floor_ms', float('nan')):.2f} | {s.get('fp32_over_floor', float('nan')):.2f}x | "
                     + " / ".join(f"{rows[k][f'batch{b}']['wall_ms']:.2f}" if f"batch{b}" in rows.get(k, {}) else "-"
                                  for k in ("torch folded channels_last 2 threads", "onnx folded 2 threads")) + " |")
    lines.append("")
    labels1 = (*labels, "torch folded channels_last traced")
    lines.append("| model | batch 1: " + " | ".join(labels1) + " | onnx folded 2 threads (wall) | best batch 1 / best batch B |")
    lines.append("|---" * (len(labels1) + 3) + "|")
    for r in doc["results"]:
        rows, s = r["cpu_ms_per_shower_one_thread"], r.get("summary", {})
        cells = [f"{rows[k]['batch1']['cpu_ms']:.2f}" if "batch1" in rows.get(k, {}) else "-" for k in labels1]
        two = rows.get("onnx folded 2 threads", {}).get("batch1", {}).get("wall_ms", float("nan"))
        lines.append(f"| {r['model']} | " + " | ".join(cells) + f" | {two:.2f} | {s.get('batch1_over_batch', float('nan')):.2f} |")
    lines.append("")
    lines.append("| model | int8 layers (of eligible) | int8 kernels | rel. shape err. | int8 vs best ORT fp32 (batch B / 1) "
                 "| int8 vs same-graph fp32 (B / 1) |")
    lines.append("|---|---|---|---|---|---|")
    for r in doc["results"]:
        i8, s = r.get("int8"), r.get("summary", {})
        if not i8:
            continue
        if not i8.get("met"):
            lines.append(f"| {r['model']} | target not met | {i8.get('int8_kernels')} | - | - | - |")
            continue
        a, b = s["int8_vs_onnx_fp32_best"], s["int8_vs_onnx_fp32_same_graph"]
        lines.append(f"| {r['model']} | {len(i8['int8_layers'])} of {i8['eligible_layers']} | {', '.join(i8['int8_kernels'])} "
                     f"| {i8['relative_shape_error']:.2%} | " + " / ".join(f"{v:.2f}x" for v in a.values())
                     + " | " + " / ".join(f"{v:.2f}x" for v in b.values()) + " |")
    lines.append("")
    lines.append("| model | GFlash CPU ms | Geant4 full CPU ms/event | best fp32 ms | vs Geant4 fp32 (batch B / 1) "
                 "| vs Geant4 best precision | g4run fast: CPU ms/event, wall split transport / inference / placement |")
    lines.append("|---|---|---|---|---|---|---|")
    for r in doc["results"]:
        ref, s = r["reference"], r.get("summary", {})
        fast = ref.get("geant4_fast", {})
        split = ("-" if "timing_ms" not in fast else
                 f"{fast['cpu_ms_per_event']:.2f}; {fast['timing_ms']['transport']:.2f} / "
                 f"{fast['timing_ms']['inference']:.2f} / {fast['timing_ms']['placement']:.2f}")
        g4 = s.get("geant4_full_cpu_ms")
        lines.append(f"| {r['model']} | {ref['gflash_cpu_ms']:.2f} | {g4 if g4 is None else f'{g4:.0f}'} | "
                     f"{s.get('best_fp32_batch_ms', float('nan')):.2f} | "
                     f"{s.get('speedup_vs_geant4_fp32', float('nan')):.0f}x / {s.get('speedup_vs_geant4_fp32_batch1', float('nan')):.0f}x"
                     f" | {s.get('speedup_vs_geant4_best', float('nan')):.0f}x | {split} |")
    return "\n".join(lines)


def write(path: str, doc: dict) -> None:
    from fastshower.fileio import atomic_path

    with atomic_path(path) as tmp_out:
        Path(tmp_out).write_text(json.dumps(doc, indent=2, default=float) + "\n")


if __name__ == "__main__":
    main()
