"""Inference benchmark: ms/shower, showers/s, memory, FLOPs and the fraction of the machine's peak,
with the speed-up over the reference simulator (GFlash) measured in the same run.

Two timing protocols (``bench/inference.py`` and ``fastshower benchmark`` share this module):

- **steps** (the 3DGAN seeds' protocol): ``warmup`` batches of ``batch_size`` (timed, reported
  apart), then ``repeats`` steps of ``batches_per_step`` batches; ms/shower per step, reported as
  median, min, max and the interquartile range.
- **calochallenge** (peers-and-benchmarks 6.1): batch sizes 1, 100 and 10 000 (``quick``: 1, 16,
  256), one warm-up batch excluded and reported separately, then 10 (``quick``: 3) repetitions;
  median and spread of ms/shower.

Every timed batch is a full generation call: seeded noise drawn on the CPU, moved to the device,
network, post-processing to GeV, result copied back to host memory as numpy.

Per back-end *variant* (torch eager under ``inference_mode``, ``channels_last`` (3-d weights
``channels_last_3d``),
``torch.compile``, ONNX Runtime; on GPUs also CUDA graphs and two CUDA streams) the steps protocol
is run and the fastest variant is kept and recorded; the CaloChallenge protocol runs on that one.

Quantities: ``flops_per_shower`` counted with ``torch.utils.flop_counter.FlopCounterMode`` (a
multiply-add = 2 FLOPs; convolutions and matrix products only); ``peak_gflops_fp32`` measured with
a large fp32 matrix product (best of a few) at the start and at the end of the run, the larger kept
(on a shared machine one measurement can land in a busy moment); ``fraction_of_peak`` = achieved
GFLOP/s over that peak (fp32 peak also for bf16/fp16); ``peak_memory_mb``: on CPU the process's peak resident set
(VmHWM, reset before each measurement where Linux allows, else ``ru_maxrss``; includes the Python
interpreter and libraries), on GPU ``torch.cuda.max_memory_allocated``; ``gpu_utilisation_pct``:
mean of pynvml samples during the timed steps (None without pynvml or on CPU).
"""

from __future__ import annotations

import copy
import json
import math
import platform
import resource
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

import fastshower
from fastshower.fileio import atomic_path
from fastshower.infer.backends import PRECISIONS, Backend, TorchBackend, seeded_noise
from fastshower.infer.generator import Generator
from fastshower.infer.timing import time_per_shower

#: Fields of every result row (the JSON ``results`` list); tests check them.
RESULT_FIELDS = (
    "model", "backend", "variant", "precision", "device", "batch_size", "ms_per_shower", "ms_per_shower_min",
    "ms_per_shower_max", "ms_per_shower_iqr", "showers_per_s", "warmup_ms_per_shower", "peak_memory_mb",
    "parameters", "flops_per_shower", "achieved_gflops", "fraction_of_peak", "gpu_utilisation_pct",
    "reference_ms_per_shower", "speedup_vs_reference", "weights", "variants", "calochallenge",
    "cpu_ms_per_shower", "geant4_ms_per_shower", "speedup_vs_geant4", "geant4")

# ------------------------------------------------------------------------------ machine facts

def measure_peak_gflops(device: torch.device | str = "cpu", size: int | None = None, repeats: int = 5,
                        clock: str = "wall") -> float:
    """Best fp32 GFLOP/s of a ``size`` x ``size`` matrix product (2 size^3 FLOPs) on ``device``, by
    wall time or (``clock="cpu"``, CPU devices: the process's CPU time, e.g. one thread on a shared
    machine) CPU time."""
    dev = torch.device(device)
    if clock not in ("wall", "cpu") or (clock == "cpu" and dev.type != "cpu"):
        raise ValueError(f"clock {clock!r}: 'wall', or 'cpu' on a CPU device")
    now = time.process_time if clock == "cpu" else time.perf_counter
    size = size or (8192 if dev.type == "cuda" else 2048)
    a = torch.randn(size, size, device=dev)
    b = torch.randn(size, size, device=dev)
    best = math.inf
    for _ in range(repeats + 1):  # the first is a warm-up
        _sync(dev)
        t0 = now()
        torch.mm(a, b)
        _sync(dev)
        best = min(best, now() - t0)
    return 2.0 * size**3 / best / 1e9


def flops_per_shower(module: torch.nn.Module, noise_dim: int, batch: int = 2) -> float:
    """FLOPs of one shower (FlopCounterMode on a float32 CPU copy, averaged over ``batch``)."""
    from torch.utils.flop_counter import FlopCounterMode

    net = copy.deepcopy(module).float().cpu().eval()
    e = torch.full((batch,), 100.0)
    a = torch.full((batch,), math.pi / 2)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        net(e, a, torch.zeros(batch, noise_dim))
    return counter.get_total_flops() / batch


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _reset_peak_memory(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: reset VmHWM
    except OSError:
        pass


def _peak_memory_mb(dev: torch.device) -> float:
    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _gpu_sampler(dev: torch.device):
    """(start, stop) pair sampling GPU utilisation with pynvml every 20 ms; stop() returns the
    mean in percent, or None without pynvml / GPU."""
    if dev.type != "cuda":
        return (lambda: None), (lambda: None)
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(dev.index or 0)
    except Exception:  # pynvml missing or no NVML: optional
        return (lambda: None), (lambda: None)
    samples: list[float] = []
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            samples.append(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            done.wait(0.02)

    thread = threading.Thread(target=poll, daemon=True)

    def stop() -> float | None:
        done.set()
        thread.join()
        return float(np.mean(samples)) if samples else None

    return thread.start, stop


# ------------------------------------------------------------------------------ variants

def _channels_last(module: torch.nn.Module) -> torch.nn.Module:
    """A channels-last copy of ``module`` (:func:`fastshower.infer.fold.channels_last`; Conv3D
    and Conv2D models alike; a no-op on one that is already channels-last)."""
    from fastshower.infer.fold import channels_last

    return channels_last(module)


class CudaGraphBackend:
    """The network captured once as a CUDA graph for ``batch_size`` (static input buffers)."""

    name = "torch"

    def __init__(self, generator: Generator, batch_size: int) -> None:
        self.device, self.precision, self.batch_size = generator.device, generator.precision, batch_size
        dev, dtype, module = self.device, PRECISIONS[generator.precision], generator.module
        self.dtype = dtype
        self.e = torch.full((batch_size,), 100.0, device=dev, dtype=dtype)
        self.a = torch.full((batch_size,), math.pi / 2, device=dev, dtype=dtype)
        self.z = torch.zeros(batch_size, generator.noise_dim, device=dev, dtype=dtype)
        with torch.inference_mode():
            side = torch.cuda.Stream(dev)
            side.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(side):
                for _ in range(3):
                    module.postprocess(module.generate_raw(self.e, self.a, self.z).float())  # type: ignore[union-attr]
            torch.cuda.current_stream(dev).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.out = module.postprocess(module.generate_raw(self.e, self.a, self.z).float())  # type: ignore[union-attr]

    def run(self, primary_energy: np.ndarray, incident_angle: np.ndarray, noise: torch.Tensor) -> np.ndarray:
        n = len(primary_energy)
        if n != self.batch_size:
            raise ValueError(f"CUDA graph captured for batch {self.batch_size}, got {n}")
        self.e.copy_(torch.as_tensor(np.asarray(primary_energy, np.float32)).to(self.dtype), non_blocking=True)
        self.a.copy_(torch.as_tensor(np.asarray(incident_angle, np.float32)).to(self.dtype), non_blocking=True)
        self.z.copy_(noise.to(self.dtype), non_blocking=True)
        self.graph.replay()
        return self.out.cpu().numpy()


class StreamsBackend:
    """Each batch split over ``n_streams`` CUDA streams."""

    name = "torch"

    def __init__(self, generator: Generator, n_streams: int = 2) -> None:
        self.device, self.precision, self.module = generator.device, generator.precision, generator.module
        self.streams = [torch.cuda.Stream(self.device) for _ in range(n_streams)]

    def run(self, primary_energy: np.ndarray, incident_angle: np.ndarray, noise: torch.Tensor) -> np.ndarray:
        dev, dtype = self.device, PRECISIONS[self.precision]
        parts = np.array_split(np.arange(len(primary_energy)), len(self.streams))
        outs = []
        for stream, idx in zip(self.streams, parts):
            with torch.cuda.stream(stream), torch.inference_mode():
                e = torch.as_tensor(primary_energy[idx].astype(np.float32)).to(dev, non_blocking=True)
                a = torch.as_tensor(incident_angle[idx].astype(np.float32)).to(dev, non_blocking=True)
                z = noise[torch.as_tensor(idx)].to(dev, non_blocking=True)
                raw = self.module.generate_raw(e.to(dtype), a.to(dtype), z.to(dtype))  # type: ignore[union-attr]
                outs.append(self.module.postprocess(raw.float()))  # type: ignore[union-attr]
        torch.cuda.synchronize(dev)
        return torch.cat(outs).cpu().numpy()


def make_variants(model: str, generator: Generator, batch_size: int, threads: int | None,
                  include_compile: bool) -> dict[str, Backend | str]:
    """Runnable variants of ``generator`` (name -> back-end), or name -> reason it is unavailable.
    Every variant runs the same network on the same inputs (noise included)."""
    variants: dict[str, Backend | str] = {}
    if generator.backend == "onnx":
        return {"onnxruntime": generator.engine}
    variants["eager"] = generator.engine
    dev, precision = generator.device, generator.precision
    if dev.type == "cpu":
        variants["channels_last"] = TorchBackend(_channels_last(generator.module), dev, precision)
        if precision == "fp32":
            try:
                variants["onnxruntime"] = Generator.load(model, backend="onnx", threads=threads).engine
            except Exception as exc:  # an optional variant: record why it is missing
                variants["onnxruntime"] = f"unavailable: {str(exc).splitlines()[0]}"
    else:
        try:
            variants["cuda_graph"] = CudaGraphBackend(generator, batch_size)
        except Exception as exc:
            variants["cuda_graph"] = f"unavailable: {str(exc).splitlines()[0]}"
        variants["two_streams"] = StreamsBackend(generator, 2)
    if include_compile:
        try:
            compiled = TorchBackend(torch.compile(generator.module), dev, precision)
            compiled.run(np.full(2, 100.0), np.full(2, math.pi / 2), torch.zeros(2, generator.noise_dim))  # compile now
            variants["compile"] = compiled
        except Exception as exc:
            variants["compile"] = f"unavailable: {str(exc).splitlines()[0]}"
    return variants


# ------------------------------------------------------------------------------ timing

def timed_inputs(generator: Generator, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
    """The inputs of every timed call: ``n`` energies (GeV) and angles (rad) uniform in the model's
    range from ``numpy.random.default_rng(seed)``, and the noise of the generators' convention for
    one batch of ``n`` with ``seed``; so a variant's showers equal
    ``generator.generate(e, a, seed=seed, batch_size=n)`` (up to the variant's rounding)."""
    rng = np.random.default_rng(seed)
    (e_lo, e_hi), (a_lo, a_hi) = generator.energy_range_gev, generator.angle_range_rad
    return rng.uniform(e_lo, e_hi, n), rng.uniform(a_lo, a_hi, n), seeded_noise(seed, n, generator.noise_dim)


def time_steps(run: Backend, generator: Generator, batch_size: int, warmup: int, repeats: int,
               batches_per_step: int, seed: int = 0) -> dict[str, Any]:
    """The steps protocol for one back-end (:func:`fastshower.infer.timing.time_per_shower`, wall
    clock, a step = ``batches_per_step`` batches): ms/shower per step (median, min, max, IQR),
    warm-up ms/shower, peak memory (MB) and mean GPU utilisation (%) during the steps."""
    dev = generator.device
    e, a, z = timed_inputs(generator, batch_size, seed)
    _reset_peak_memory(dev)
    start, stop = _gpu_sampler(dev)
    cpu_start: list[float] = []

    def after_warmup() -> None:  # CPU time of the timed repeats (all threads of the process)
        cpu_start.append(time.process_time())
        start()

    t = time_per_shower(lambda: run.run(e, a, z), batch_size, warmup=warmup, repeats=repeats,
                        calls_per_repeat=batches_per_step, sync=lambda: _sync(dev), after_warmup=after_warmup)
    cpu_ms = (time.process_time() - cpu_start[0]) / (repeats * batches_per_step * batch_size) * 1e3
    util = stop()
    return {"ms_per_shower": t.ms_per_shower, "ms_per_shower_min": t.ms_per_shower_min,
            "ms_per_shower_max": t.ms_per_shower_max, "ms_per_shower_iqr": t.ms_per_shower_iqr,
            "showers_per_s": t.showers_per_s, "warmup_ms_per_shower": t.warmup_ms_per_shower,
            "peak_memory_mb": _peak_memory_mb(dev), "gpu_utilisation_pct": util,
            "steps_ms_per_shower": t.repeats_ms_per_shower, "cpu_ms_per_shower": cpu_ms}


def time_calochallenge(run: Backend, generator: Generator, quick: bool, seed: int = 0) -> list[dict[str, Any]]:
    """CaloChallenge protocol: batch 1, 100, 10 000 (quick: 1, 16, 256); one warm-up batch
    reported apart, then 10 (quick: 3) timed repetitions."""
    sizes, reps = ((1, 16, 256), 3) if quick else ((1, 100, 10_000), 10)
    dev = generator.device
    rows = []
    for batch in sizes:
        e, a, z = timed_inputs(generator, batch, seed)
        t = time_per_shower(lambda e=e, a=a, z=z: run.run(e, a, z), batch, warmup=1, repeats=reps,  # type: ignore[misc]
                            sync=lambda: _sync(dev))
        rows.append({"batch_size": batch, "repetitions": reps, "warmup_ms_per_shower": t.warmup_ms_per_shower,
                     "ms_per_shower": t.ms_per_shower, "ms_per_shower_min": t.ms_per_shower_min,
                     "ms_per_shower_max": t.ms_per_shower_max})
    return rows


def reference_ms_per_shower(generator: Generator, n: int, seed: int = 0) -> float:
    """GFlash (the reference simulator) ms/shower for ``n`` showers of the benchmark's conditions
    (energies and angles uniform in the model's range)."""
    from fastshower.simulate.gflash import simulate_showers

    e, a, _ = timed_inputs(generator, n, seed)
    simulate_showers(generator.geometry, e[:min(n, 8)], a[:min(n, 8)], np.random.default_rng(seed))  # warm-up
    return time_per_shower(lambda: simulate_showers(generator.geometry, e, a, np.random.default_rng(seed)), n,
                           warmup=0, repeats=1).ms_per_shower


# ------------------------------------------------------------------------------ the run

def benchmark(models: list[str], backends: tuple[str, ...] = ("torch",), precisions: tuple[str, ...] = ("fp32",),
              device: str = "cpu", batch_size: int = 128, warmup: int = 2, repeats: int = 5,
              batches_per_step: int = 2, threads: int | None = None, quick: bool = False,
              calochallenge: bool = True, include_compile: bool = False, reference_n: int = 200,
              seed: int = 0, log: Callable[[str], None] | None = None, geant4: bool = False,
              geant4_n: int = 5, geant4_energy_gev: float = 100.0) -> dict[str, Any]:
    """Benchmark every (model, backend, precision) on ``device``; returns the JSON-ready dict
    ``{"machine": {...}, "settings": {...}, "results": [row, ...]}`` (row fields: RESULT_FIELDS).
    Combinations a back-end cannot run (ONNX at bf16/fp16) are skipped and listed in ``skipped``.
    A model may be an ``.onnx`` file of any precision (fp32, or fp16 / int8 from ``fastshower
    quantize``): it runs on ONNX Runtime at its own precision (ask for fp32), and its row has no
    FLOPs (NaN) or parameter count.

    ``geant4`` (when geant4_pybind is installed): Geant4 full simulation of ``geant4_n`` e- at
    ``geant4_energy_gev`` and normal incidence in each model's geometry, in a child process
    (:mod:`fastshower.infer.g4reference`), CPU ms per event on one core -> ``geant4_ms_per_shower``
    and ``speedup_vs_geant4`` = that over the row's ``cpu_ms_per_shower`` (CPU time of the timed
    steps: equal to the wall time on one thread; one core each when ``threads=1``)."""
    say = log or (lambda _msg: None)
    dev = torch.device(device)
    if threads is not None:
        torch.set_num_threads(threads)
    peak_start = measure_peak_gflops(dev)
    say(f"peak fp32 matmul: {peak_start:.1f} GFLOP/s on {device}")
    results, skipped = [], []
    geant4_runs: dict[str, dict[str, Any]] = {}
    tmpdir = tempfile.TemporaryDirectory(prefix="fastshower-bench-")
    for name in models:
        model, weights = _loadable(name, Path(tmpdir.name))
        reference_ms = None
        g4_fast: dict[str, Any] | None = None
        for backend in backends:
            for precision in precisions:
                if backend == "onnx" and precision != "fp32":
                    skipped.append(f"{name} onnx {precision}: the onnx backend runs fp32 files")
                    continue
                gen = Generator.load(model, device=device, precision=precision, backend=backend, threads=threads)
                if reference_ms is None:
                    reference_ms = reference_ms_per_shower(gen, reference_n, seed)
                    say(f"{name}: reference (gflash) {reference_ms:.3f} ms/shower")
                if geant4 and gen.geometry.name not in geant4_runs:
                    from fastshower.infer.g4reference import geant4_reference

                    geant4_runs[gen.geometry.name] = g4 = geant4_reference(
                        gen.geometry.name, "full", energy_gev=geant4_energy_gev, n=geant4_n, seed=seed)
                    say(f"{gen.geometry.name}: geant4 full " + (g4["error"] if "error" in g4 else
                                                                f"{g4['cpu_ms_per_event']:.1f} CPU ms/event"))
                if geant4 and g4_fast is None and "error" not in geant4_runs[gen.geometry.name]:
                    from fastshower.infer.g4reference import geant4_reference

                    # g4run fast mode with this model: transport / inference / placement per event
                    g4_fast = geant4_reference(gen.geometry.name, "fast", model=model, energy_gev=geant4_energy_gev,
                                               n=batch_size, batch_events=batch_size, seed=seed)
                g4_run = geant4_runs.get(gen.geometry.name, {"error": "not asked for"})
                g4_ms = g4_run.get("cpu_ms_per_event")
                torch_module = gen.module
                if torch_module is None or getattr(torch_module, "folded", None):
                    # the folded network every back-end runs: layout tweaks of the torch CPU path
                    # (channels-last, a crop moved behind a convolution: +0.8 % for gan3d_clic25) not counted
                    torch_module = _torch_twin(model)
                if torch_module is None:  # an .onnx file (fp32, fp16 or int8): no network to count
                    flops, params = math.nan, None
                else:
                    flops = flops_per_shower(torch_module, gen.noise_dim)
                    params = sum(p.numel() for p in torch_module.parameters())
                variants = make_variants(model, gen, batch_size, threads, include_compile)
                timings: dict[str, Any] = {}
                for variant, runner in variants.items():
                    if isinstance(runner, str):
                        timings[variant] = runner
                        continue
                    timings[variant] = time_steps(runner, gen, batch_size, warmup, repeats, batches_per_step, seed)
                    say(f"{name} {backend} {precision} {variant}: {timings[variant]['ms_per_shower']:.3f} ms/shower")
                best = min((k for k, v in timings.items() if isinstance(v, dict)),
                           key=lambda k: timings[k]["ms_per_shower"])
                row = dict(timings[best])
                row.pop("steps_ms_per_shower")
                achieved = flops * row["showers_per_s"] / 1e9
                row.update(model=name, backend=gen.backend, variant=best, precision=gen.precision, device=str(dev),
                           batch_size=batch_size, parameters=params, flops_per_shower=flops,
                           achieved_gflops=achieved,
                           reference_ms_per_shower=reference_ms,
                           speedup_vs_reference=reference_ms / row["ms_per_shower"],
                           geant4_ms_per_shower=g4_ms, geant4={"full": g4_run, "fast": g4_fast},
                           speedup_vs_geant4=None if g4_ms is None else g4_ms / row["cpu_ms_per_shower"],
                           variants={k: (v if isinstance(v, str) else
                                         {"ms_per_shower": v["ms_per_shower"],
                                          "ms_per_shower_iqr": v["ms_per_shower_iqr"],
                                          "steps_ms_per_shower": v["steps_ms_per_shower"]})
                                     for k, v in timings.items()},
                           weights=weights,
                           calochallenge=time_calochallenge(variants["eager" if best == "cuda_graph" else best],  # type: ignore[arg-type]
                                                            gen, quick, seed) if calochallenge else None)
                results.append({k: row.get(k) for k in RESULT_FIELDS})
    tmpdir.cleanup()
    peak_end = measure_peak_gflops(dev)
    peak = max(peak_start, peak_end)
    for row in results:
        row["fraction_of_peak"] = row["achieved_gflops"] / peak
    machine = machine_info(dev, peak, threads)
    machine.update(peak_gflops_fp32_start=peak_start, peak_gflops_fp32_end=peak_end)
    return {"machine": machine, "settings": {
        "batch_size": batch_size, "warmup_batches": warmup, "repeats": repeats, "batches_per_step": batches_per_step,
        "quick": quick, "reference": "gflash", "reference_n": reference_n, "seed": seed},
        "results": results, "skipped": skipped}


def _loadable(model: str, tmpdir: Path) -> tuple[str, str]:
    """``model`` as ``Generator.load`` takes it, and what its weights are (found by
    :func:`fastshower.models.registry.resolve`): an .onnx file ("onnx file"); a shipped name or
    saved path as is ("trained"); a registry name without shipped weights, optionally
    ``name@width``, becomes a freshly initialised network saved in ``tmpdir`` ("untrained": timing
    only; saved once so that every back-end times the same weights)."""
    from fastshower.models.registry import build_generator, resolve, save_generator

    found = resolve(model)
    if found.kind == "onnx":
        return model, "onnx file"
    if found.kind != "untrained":
        return model, "trained"
    stem = tmpdir / model.replace("@", "_w")
    save_generator(build_generator(found.name, width=found.width), stem)
    return str(stem), "untrained (timing only)"


def _torch_twin(model: str) -> torch.nn.Module | None:
    """The torch network behind ``model`` for FLOPs and parameters (None for an .onnx file)."""
    from fastshower.infer.fold import fold_generator
    from fastshower.models.registry import load_generator, resolve

    # the folded network: what Generator.load(backend="onnx") exports
    return None if resolve(model).kind == "onnx" else fold_generator(load_generator(model))


def machine_info(dev: torch.device, peak_gflops: float, threads: int | None) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "torch_threads": torch.get_num_threads(), "threads_asked": threads,
            "peak_gflops_fp32": peak_gflops, "torch": torch.__version__, "fastshower": fastshower.__version__,
            "device": str(dev), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if dev.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(dev)
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        info["onnxruntime"] = None
    return info


def write_json(result: dict[str, Any], path: str | Path) -> None:
    """Write a benchmark result atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(result, indent=2) + "\n")


def format_table(result: dict[str, Any]) -> str:
    """The printed table: one line per (model, backend, precision), best variant."""
    head = (f"{'model':14s} {'backend':7s} {'variant':16s} {'prec':5s} {'dev':5s} {'batch':>5s} {'ms/shower':>10s} "
            f"{'IQR':>7s} {'showers/s':>10s} {'GFLOP/sh':>9s} {'%peak':>6s} {'mem MB':>8s} {'gflash ms':>9s} "
            f"{'speed-up':>8s} {'g4 ms':>8s} {'vs g4':>7s}")
    lines = [f"peak fp32 matmul {result['machine']['peak_gflops_fp32']:.1f} GFLOP/s "
             f"({result['machine']['cpu']}, {result['machine']['torch_threads']} torch threads)", head]
    for r in result["results"]:
        lines.append(f"{r['model']:14s} {r['backend']:7s} {r['variant']:16s} {r['precision']:5s} {r['device'][:5]:5s} "
                      f"{r['batch_size']:>5d} {r['ms_per_shower']:>10.3f} {r['ms_per_shower_iqr']:>7.3f} "
                      f"{r['showers_per_s']:>10.1f} {r['flops_per_shower'] / 1e9:>9.3f} "
                      f"{100 * r['fraction_of_peak']:>6.1f} {r['peak_memory_mb']:>8.0f} "
                      f"{r['reference_ms_per_shower']:>9.3f} {r['speedup_vs_reference']:>8.3g} "
                      + (f"{r['geant4_ms_per_shower']:>8.1f} {r['speedup_vs_geant4']:>7.1f}"
                         if r.get("speedup_vs_geant4") is not None else f"{'-':>8s} {'-':>7s}"))
        g4 = r.get("geant4") or {}
        for mode in ("full", "fast"):
            run = g4.get(mode) or {}
            if "timing_ms" in run:
                t = run["timing_ms"]
                lines.append(f"{'':14s} g4run {mode:4s} {run['energy_gev']:g} GeV: {run['cpu_ms_per_event']:.2f} CPU "
                             f"ms/event; wall ms/event transport {t['transport']:.2f}, inference "
                             f"{t['inference']:.2f}, placement {t['placement']:.2f}, total {t['total']:.2f}")
            elif "error" in run and mode == "full":
                lines.append(f"{'':14s} geant4: {run['error']}")
        for c in r["calochallenge"] or []:
            lines.append(f"{'':14s} calochallenge batch {c['batch_size']:>6d}: {c['ms_per_shower']:.3f} ms/shower "
                         f"(min {c['ms_per_shower_min']:.3f}, max {c['ms_per_shower_max']:.3f}, warm-up "
                         f"{c['warmup_ms_per_shower']:.3f})")
    lines.extend(f"skipped: {s}" for s in result.get("skipped", []))
    return "\n".join(lines)
