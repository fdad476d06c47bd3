"""Post-training int8 quantization of exported generators, tuned against a physics accuracy target.

The exported ONNX generator (see :mod:`fastshower.infer.onnx_export`: inputs ``primary_energy``
[B] GeV, ``incident_angle`` [B] rad, ``noise`` [B, noise_dim]; output ``showers`` [B, nx, ny, nz]
GeV) is quantized with ONNX Runtime's static quantization: QDQ format, int8 weights per output
channel, int8 activations, ranges calibrated on generated conditions (energies and angles drawn
uniformly from the model's trained range). ONNX Runtime is the back-end that Geant4 applications
embed, so the int8 file is what they run.

Accuracy-aware tuning (:func:`tune`): start with every eligible layer (Conv, ConvTranspose, Gemm,
MatMul) quantized; while the accuracy target is not met, return to float32 the quantized layer with
the largest measured sensitivity and re-measure; stop at the first (fastest) model that meets the
target. Sensitivity of a layer = the accuracy metric of the model in which only that layer is
quantized. Every step (layers in fp32, metric, time per shower) is logged.

Accuracy metric (:func:`relative_shape_error`), physics rather than pixels: the published metric
of the 3DGAN quantization study (mean and standard deviation of each x, y and z slice of the
showers over events, int8 vs fp32 for the same inputs, squared differences averaged over slices and
summed over axes and over mean/std), here normalised by the same sums of the fp32 values and
square-rooted so it reads as a relative RMS deviation: ``target=0.01`` means the slice means and
widths agree with fp32 to about 1%. The physics check against the reference simulation (profile
MSE and sampling-fraction error, :mod:`fastshower.validate.metrics`) is reported beside it and can
be made part of the criterion (``criterion="both"``).
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import onnx

from fastshower.fileio import atomic_path

#: Operator types whose weights and inputs are quantized to int8.
ELIGIBLE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")

Criterion = Literal["shapes", "physics", "both"]


# ------------------------------------------------------------------ model facts and inputs

def model_metadata(model_path: str | Path) -> dict[str, str]:
    """The metadata_props written by the exporter (model name, geometry, ranges, noise_dim, ...)."""
    model = onnx.load(str(model_path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def _input_spec(model_path: str | Path) -> tuple[int, tuple[float, float], tuple[float, float]]:
    """noise_dim, energy range (GeV) and angle range (rad) of an exported generator."""
    meta = model_metadata(model_path)
    model = onnx.load(str(model_path), load_external_data=False)
    noise = next(i for i in model.graph.input if i.name == "noise")
    noise_dim = noise.type.tensor_type.shape.dim[1].dim_value
    energy = tuple(json.loads(meta["energy_range_gev"])) if "energy_range_gev" in meta else (2.0, 500.0)
    angle = tuple(json.loads(meta["angle_range_rad"])) if "angle_range_rad" in meta else (math.pi / 2,) * 2
    return int(noise_dim), energy, angle  # type: ignore[return-value]


def generator_inputs(model_path: str | Path, n: int, seed: int) -> dict[str, np.ndarray]:
    """``n`` input sets for an exported generator: energies and angles uniform in its trained
    range, standard-normal noise; float32, reproducible from ``seed``."""
    noise_dim, (e_lo, e_hi), (a_lo, a_hi) = _input_spec(model_path)
    rng = np.random.default_rng(seed)
    return {
        "primary_energy": rng.uniform(e_lo, e_hi, n).astype(np.float32),
        "incident_angle": rng.uniform(a_lo, a_hi, n).astype(np.float32),
        "noise": rng.standard_normal((n, noise_dim)).astype(np.float32),
    }


def _batches(inputs: dict[str, np.ndarray], batch_size: int, names: set[str] | None = None):
    """Batches of ``inputs``, keeping only the tensors the model declares (``names``): a generator
    that ignores a condition (the fixed-angle models and the angle) has no input for it."""
    n = len(inputs["primary_energy"])
    for start in range(0, n, batch_size):
        yield {k: v[start:start + batch_size] for k, v in inputs.items() if names is None or k in names}


def _input_names(model_path: str | Path) -> set[str]:
    model = onnx.load(str(model_path), load_external_data=False)
    return {i.name for i in model.graph.input}


def eligible_nodes(model_path: str | Path) -> list[str]:
    """Names of the nodes that static quantization can turn into int8 kernels, in graph order."""
    model = onnx.load(str(model_path), load_external_data=False)
    initializers = {t.name for t in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        # only layers with a learned weight: a MatMul between two activations is left alone
        if node.op_type in ELIGIBLE_OPS and len(node.input) > 1 and node.input[1] in initializers:
            nodes.append(node.name)
    return nodes


# ------------------------------------------------------------------ running

def session(model_path: str | Path, threads: int | None = None):
    """An ONNX Runtime CPU session with all graph optimisations and ``threads`` intra-op threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])


def run_model(model_path: str | Path, inputs: dict[str, np.ndarray], batch_size: int = 128,
              threads: int | None = None) -> np.ndarray:
    """Showers (GeV) from an ONNX generator for all ``inputs``, in batches."""
    sess = session(model_path, threads)
    names = {i.name for i in sess.get_inputs()}
    return np.concatenate([sess.run(["showers"], b)[0] for b in _batches(inputs, batch_size, names)])


def time_per_shower_ms(model_path: str | Path, inputs: dict[str, np.ndarray], batch_size: int,
                       repeats: int = 5, threads: int | None = None) -> float:
    """Median wall time per shower (ms) of one batch of ``batch_size``, after one warm-up run."""
    sess = session(model_path, threads)
    names = {i.name for i in sess.get_inputs()}
    batch = {k: v[:batch_size] for k, v in inputs.items() if k in names}
    if len(batch["primary_energy"]) < batch_size:
        raise ValueError(f"need at least {batch_size} inputs to time batch {batch_size}")
    sess.run(["showers"], batch)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        sess.run(["showers"], batch)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) / batch_size * 1e3)


def int8_kernels_used(model_path: str | Path) -> list[str]:
    """Operator types of the graph ONNX Runtime actually runs after optimisation that compute in
    integer arithmetic (QLinearConv, QGemm, ConvInteger, ...): a QDQ model whose pairs were not
    fused would run in float and this list would be empty."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.optimized_model_filepath = str(optimized)
        ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
        model = onnx.load(str(optimized))
    return sorted({n.op_type for n in model.graph.node
                   if n.op_type.startswith("QLinear") or n.op_type.endswith("Integer")
                   or n.op_type in ("QGemm", "DynamicQuantizeMatMul", "MatMulIntegerToFloat")})


# ------------------------------------------------------------------ accuracy

def slice_statistics(showers: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per axis (x, y, z) of (n, x, y, z) showers: mean and standard deviation of every slice
    over events and the two other axes (the published quantization metric's statistics)."""
    stats = []
    for axis in (1, 2, 3):
        other = tuple(a for a in (0, 1, 2, 3) if a != axis)
        stats.append((showers.mean(axis=other, dtype=np.float64), showers.std(axis=other, dtype=np.float64)))
    return stats


def relative_shape_error(candidate: np.ndarray, reference: np.ndarray) -> float:
    """sqrt(sum over axes of mean_i (mean_c - mean_r)^2 + (std_c - std_r)^2, divided by the same
    sums of mean_r^2 + std_r^2): the relative RMS deviation of the per-slice means and widths of
    ``candidate`` from ``reference`` showers (same inputs). 0 for identical outputs."""
    err = norm = 0.0
    for (mc, sc), (mr, sr) in zip(slice_statistics(candidate), slice_statistics(reference)):
        err += np.mean((mc - mr) ** 2) + np.mean((sc - sr) ** 2)
        norm += np.mean(mr ** 2) + np.mean(sr ** 2)
    return float(math.sqrt(err / norm)) if norm > 0 else 0.0


@dataclass
class PhysicsReference:
    """Reference-simulation showers for the conditions of the evaluation inputs, and the fp32
    model's physics metrics against them (profile MSE, sampling-fraction error)."""

    shower_set: object  # fastshower.showers.ShowerSet
    fp32_profile_mse: float
    fp32_sampling_fraction_error: float


def physics_metrics(showers: np.ndarray, inputs: dict[str, np.ndarray], reference) -> dict[str, float]:
    """Profile MSE and sampling-fraction error of generated ``showers`` against ``reference``."""
    from fastshower.showers import ShowerSet
    from fastshower.validate.metrics import profile_mse, sampling_fraction_error

    cand = ShowerSet(showers, inputs["primary_energy"], inputs["incident_angle"], reference.geometry)
    return {"profile_mse": float(profile_mse(reference, cand)),
            "sampling_fraction_error": float(sampling_fraction_error(reference, cand))}


# ------------------------------------------------------------------ quantization and tuning

class _CalibrationReader:
    """ONNX Runtime calibration data reader over a dict of input arrays."""

    def __init__(self, inputs: dict[str, np.ndarray], batch_size: int, names: set[str]):
        self._batches = list(_batches(inputs, batch_size, names))
        self._it = iter(self._batches)

    def get_next(self):
        return next(self._it, None)

    def rewind(self):
        self._it = iter(self._batches)


def quantize_int8(fp32_path: str | Path, out_path: str | Path, calibration: dict[str, np.ndarray], *,
                  exclude: list[str] = (), per_channel: bool = True, batch_size: int = 32,
                  calibration_cache: str | Path | None = None) -> Path:
    """Static int8 QDQ quantization of ``fp32_path`` into ``out_path`` (atomic), leaving the nodes
    in ``exclude`` in float32. Calibration (MinMax) runs on ``calibration`` inputs; with
    ``calibration_cache`` the ranges are computed once and reused across calls."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    reader = type("Reader", (_CalibrationReader, CalibrationDataReader), {})(calibration, batch_size,
                                                                      _input_names(fp32_path))
    out_path = Path(out_path)
    with tempfile.TemporaryDirectory() as tmp:
        prepped = Path(tmp) / "prepped.onnx"
        quant_pre_process(str(fp32_path), str(prepped), skip_symbolic_shape=True)
        with atomic_path(out_path) as tmp_out:
            quantize_static(
                str(prepped), str(tmp_out), reader,
                quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(ELIGIBLE_OPS),
                per_channel=per_channel,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=list(exclude),
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
                calibration_cache_path=str(calibration_cache) if calibration_cache else None,
            )
            _copy_metadata(fp32_path, tmp_out, {"precision": "int8", "fp32_layers": json.dumps(list(exclude))})
    return out_path


def _copy_metadata(src: str | Path, dst: str | Path, extra: dict[str, str]) -> None:
    meta = model_metadata(src)
    meta.update(extra)
    model = onnx.load(str(dst))
    del model.metadata_props[:]
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=str(v))
    onnx.save(model, str(dst))


@dataclass
class TuningStep:
    fp32_layers: list[str]
    relative_shape_error: float
    ms_per_shower: float
    profile_mse: float | None = None
    sampling_fraction_error: float | None = None
    meets_target: bool = False


@dataclass
class TuningResult:
    model: str
    target: float
    criterion: str
    eligible_layers: list[str]
    sensitivity: dict[str, float]
    steps: list[TuningStep] = field(default_factory=list)
    chosen_step: int | None = None
    fp32_ms_per_shower: float = float("nan")
    fp32_profile_mse: float | None = None
    fp32_sampling_fraction_error: float | None = None
    int8_kernels: list[str] = field(default_factory=list)

    @property
    def met(self) -> bool:
        return self.chosen_step is not None

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def tune(fp32_path: str | Path, out_path: str | Path, target: float = 0.01, *,
         criterion: Criterion = "shapes", n_calibration: int = 256, n_eval: int = 256, seed: int = 0,
         reference=None, timing_batch: int = 64, threads: int | None = None,
         select: Literal["first", "fastest"] = "fastest", max_groups: int = 24, max_steps: int = 12,
         log_path: str | Path | None = None, progress: bool = False) -> TuningResult:
    """Accuracy-aware int8 tuning of an exported generator; writes the chosen model to ``out_path``
    and the tuning log (JSON) to ``log_path`` (default: ``out_path`` with ``.tuning.json``).

    The target applies to :func:`relative_shape_error` of int8 vs fp32 on held-out inputs
    (``criterion="shapes"``), to the physics metrics against ``reference`` (a ShowerSet of the
    reference simulation whose conditions are used as evaluation inputs; ``criterion="physics"``:
    the int8 profile MSE may exceed the fp32 one by at most a factor ``1 + target`` and the
    sampling-fraction errors may differ by at most ``target``), or to both. If no model
    meets the target, the all-float32 end of the search is reported and ``out_path`` is not
    written; :attr:`TuningResult.met` is False.
    """
    from tqdm import tqdm

    if target <= 0:
        raise ValueError("the accuracy target must be positive")
    if select not in ("first", "fastest"):
        raise ValueError(f"unknown selection {select!r}: first or fastest")
    if criterion not in ("shapes", "physics", "both"):
        raise ValueError(f"unknown criterion {criterion!r}: shapes, physics or both")
    if criterion != "shapes" and reference is None:
        raise ValueError(f"criterion {criterion!r} needs reference showers")
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    if not fp32_path.exists():
        raise FileNotFoundError(f"model file not found: {fp32_path}")
    calibration = generator_inputs(fp32_path, n_calibration, seed)
    evaluation = generator_inputs(fp32_path, n_eval, seed + 1)
    if reference is not None:
        evaluation = {"primary_energy": reference.primary_energy.astype(np.float32)[:n_eval],
                      "incident_angle": reference.incident_angle.astype(np.float32)[:n_eval],
                      "noise": evaluation["noise"][:len(reference)]}
        reference = reference[: len(evaluation["primary_energy"])]
    nodes = eligible_nodes(fp32_path)
    if not nodes:
        raise ValueError(f"{fp32_path} has no layer that can be quantized ({', '.join(ELIGIBLE_OPS)})")
    fp32_out = run_model(fp32_path, evaluation, threads=threads)
    result = TuningResult(model=model_metadata(fp32_path).get("model", fp32_path.stem), target=target,
                          criterion=criterion, eligible_layers=nodes, sensitivity={})
    result.fp32_ms_per_shower = time_per_shower_ms(fp32_path, evaluation, timing_batch, threads=threads)
    if reference is not None:
        fp32_phys = physics_metrics(fp32_out, evaluation, reference)
        result.fp32_profile_mse = fp32_phys["profile_mse"]
        result.fp32_sampling_fraction_error = fp32_phys["sampling_fraction_error"]

    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "calibration.cache"
        candidate = Path(tmp) / "candidate.onnx"

        def measure(excluded: list[str], timed: bool) -> TuningStep:
            quantize_int8(fp32_path, candidate, calibration, exclude=excluded, calibration_cache=cache)
            out = run_model(candidate, evaluation, threads=threads)
            step = TuningStep(fp32_layers=list(excluded), relative_shape_error=relative_shape_error(out, fp32_out),
                              ms_per_shower=(time_per_shower_ms(candidate, evaluation, timing_batch, threads=threads)
                                             if timed else float("nan")))
            if reference is not None:
                phys = physics_metrics(out, evaluation, reference)
                step.profile_mse, step.sampling_fraction_error = phys["profile_mse"], phys["sampling_fraction_error"]
            step.meets_target = _meets(step, result)
            return step

        result.steps.append(measure([], timed=True))
        if not (select == "first" and result.steps[0].meets_target):
            groups = _layer_groups(nodes, max_groups)
            for group in tqdm(groups, desc="layer sensitivity", disable=not progress):
                # only this group quantized: how much does it alone cost?
                alone = measure([n for n in nodes if n not in group], timed=False).relative_shape_error
                for node in group:
                    result.sensitivity[node] = alone
            groups.sort(key=lambda g: result.sensitivity[g[0]], reverse=True)
            excluded: list[str] = []
            for group in tqdm(groups[:max_steps], desc="returning layers to fp32", disable=not progress):
                excluded.extend(group)
                result.steps.append(measure(excluded, timed=True))
                if select == "first" and result.steps[-1].meets_target:
                    break
        meeting = [i for i, s in enumerate(result.steps) if s.meets_target]
        if not meeting:
            chosen = None
        elif select == "first":
            chosen = meeting[0]
        else:
            chosen = min(meeting, key=lambda i: result.steps[i].ms_per_shower)
        result.chosen_step = chosen
        if chosen is not None:
            quantize_int8(fp32_path, out_path, calibration, exclude=result.steps[chosen].fp32_layers,
                          calibration_cache=cache)
            _copy_metadata(out_path, out_path, {"quantization_target": str(target), "criterion": criterion})
            result.int8_kernels = int8_kernels_used(out_path)
    log_path = Path(log_path) if log_path else out_path.with_suffix(".tuning.json")
    with atomic_path(log_path) as tmp_log:
        tmp_log.write_text(result.to_json())
    return result


def _layer_groups(nodes: list[str], max_groups: int) -> list[list[str]]:
    """Split ``nodes`` (graph order) into at most ``max_groups`` groups of consecutive layers."""
    size = math.ceil(len(nodes) / max_groups)
    return [nodes[i:i + size] for i in range(0, len(nodes), size)]


def _meets(step: TuningStep, result: TuningResult) -> bool:
    ok_shapes = step.relative_shape_error <= result.target
    if result.criterion == "shapes":
        return ok_shapes
    ok_physics = (step.profile_mse <= result.fp32_profile_mse * (1 + result.target)
                  and abs(step.sampling_fraction_error - result.fp32_sampling_fraction_error) <= result.target)
    return ok_physics if result.criterion == "physics" else (ok_physics and ok_shapes)


# ------------------------------------------------------------------ fp16

def convert_fp16(fp32_path: str | Path, out_path: str | Path) -> Path:
    """A float16 copy of an exported generator (weights and arithmetic in fp16, inputs and output
    kept float32 so callers are unchanged)."""
    from onnxconverter_common import float16

    model = onnx.load(str(fp32_path))
    converted = float16.convert_float_to_float16(model, keep_io_types=True)
    with atomic_path(out_path) as tmp:
        onnx.save(converted, str(tmp))
        _copy_metadata(fp32_path, tmp, {"precision": "fp16"})
    return Path(out_path)


def model_size_mb(path: str | Path) -> float:
    return Path(path).stat().st_size / 1e6
