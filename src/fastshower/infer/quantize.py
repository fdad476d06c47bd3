"""Reduced-precision ONNX generators: int8 post-training quantization tuned against a physics
accuracy target, and float16 copies.

The exported ONNX generator (see :mod:`fastshower.infer.onnx_export`: inputs ``primary_energy``
[B] GeV, ``incident_angle`` [B] rad, ``noise`` [B, noise_dim]; output ``showers`` [B, nx, ny, nz]
GeV) is quantized with ONNX Runtime's static quantization: QDQ format, int8 weights per output
channel (7-bit, ``reduce_range``, on CPUs without an int8 dot product: :func:`default_reduce_range`),
int8 activations, ranges calibrated (MinMax) on generated conditions (energies and angles
drawn uniformly from the model's trained range). ONNX Runtime is the back-end that Geant4
applications embed, so the int8 file is what they run. Inputs and output stay float32.

Which layers can be int8 (:func:`read_graph`, :func:`tune`): Conv, ConvTranspose, Gemm and MatMul
nodes with a learned weight. Two kinds are left in float32 before tuning, for measured reasons:

- layers whose QDQ pattern ONNX Runtime's CPU execution provider does not fuse into an integer
  kernel (ConvTranspose in ORT 1.32): they would run in float between extra Quantize/Dequantize
  nodes, slower and less accurate (found by optimising the all-int8 graph, :func:`unfused_layers`);
- 3-d convolutions, unless ``conv3d=True``: ORT's int8 QLinearConv for 3-d kernels ran about 5x
  slower than its fp32 Conv on this machine's CPU (AVX-512 VNNI; docs/inference.md).

Accuracy-aware tuning (:func:`tune`): start with every eligible layer int8; while the accuracy
target is not met, return to float32 the group of consecutive layers with the largest measured
sensitivity (the score of the model in which only that group is int8) and re-measure. ``select=
"first"`` stops at the first model that meets the target; ``"fastest"`` goes on for ``max_steps``
groups and keeps the fastest model that meets it (int8 is not faster for every layer; a model with
more fp32 layers must be at least ``SPEED_MARGIN`` = 5 % faster to be preferred). Every step
(layers in fp32, metrics, ms per shower) is logged to a JSON file.

Accuracy metrics, physics rather than pixels:

(a) :func:`relative_shape_error`, the published metric of the 3DGAN quantization study (mean and
    standard deviation of each x, y and z slice of the showers over events, int8 vs fp32 for the
    same inputs, squared differences averaged over slices and summed over axes and over mean/std),
    here divided by the same sums of the fp32 values and square-rooted so that it reads as a
    relative RMS deviation: ``target=0.01`` means slice means and widths agree with fp32 to ~1 %;
(b) against a reference simulation (:mod:`fastshower.validate.metrics`): the profile MSE may
    exceed the fp32 model's by at most a factor ``1 + target`` and the sampling-fraction error may
    differ from the fp32 one by at most ``target``.

``criterion`` picks (a) ``"shapes"``, (b) ``"physics"`` or ``"both"``. A step's *score* is the
largest of its metrics divided by what the target allows (<= 1: target met).
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

#: Operator types whose weights and inputs static quantization turns to int8.
ELIGIBLE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
#: Operator types of integer kernels in the graph ONNX Runtime runs after optimisation.
INT8_KERNELS = ("QLinearConv", "QGemm", "QLinearMatMul", "MatMulInteger", "ConvInteger",
                "DynamicQuantizeMatMul", "MatMulIntegerToFloat")

Criterion = Literal["shapes", "physics", "both"]
#: ``select="fastest"``: a step with more layers in fp32 replaces the chosen one only if it is at
#: least this much faster (relative), so that timing noise does not undo the quantization.
SPEED_MARGIN = 0.05


# ------------------------------------------------------------------ model facts and inputs

@dataclass(frozen=True)
class GraphInfo:
    """What the quantizer needs to know about an exported generator (read once by :func:`read_graph`).

    ``layers``: nodes with a learned weight that static quantization can make int8, graph order;
    ``conv3d_layers``: those of them that are 3-d convolutions (5-d weight)."""

    path: Path
    model: str
    metadata: dict[str, str]
    input_names: tuple[str, ...]
    noise_dim: int
    energy_range_gev: tuple[float, float]
    angle_range_rad: tuple[float, float]
    layers: tuple[str, ...]
    conv3d_layers: tuple[str, ...]


def read_graph(model_path: str | Path, model: onnx.ModelProto | None = None) -> GraphInfo:
    """The :class:`GraphInfo` of an exported generator, loading its graph once (not at all when
    the loaded ``model`` is given)."""
    path = Path(model_path)
    if model is None:
        if not path.is_file():
            raise FileNotFoundError(f"no ONNX file at {path}")
        model = onnx.load(str(path), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    inputs = {i.name: i for i in model.graph.input}
    if "noise" not in inputs:
        raise ValueError(f"{path} is not a fastshower generator export (no 'noise' input)")
    weights = {t.name: t for t in model.graph.initializer}
    layers, conv3d = [], []
    for node in model.graph.node:
        # only layers with a learned weight: a MatMul between two activations is left alone
        if node.op_type in ELIGIBLE_OPS and len(node.input) > 1 and node.input[1] in weights:
            layers.append(node.name)
            if node.op_type.startswith("Conv") and len(weights[node.input[1]].dims) == 5:
                conv3d.append(node.name)
    energy = tuple(json.loads(meta["energy_range_gev"])) if "energy_range_gev" in meta else (2.0, 500.0)
    angle = tuple(json.loads(meta["angle_range_rad"])) if "angle_range_rad" in meta else (math.pi / 2,) * 2
    return GraphInfo(path=path, model=meta.get("model", path.stem), metadata=meta, input_names=tuple(inputs),
                     noise_dim=int(inputs["noise"].type.tensor_type.shape.dim[1].dim_value),
                     energy_range_gev=energy, angle_range_rad=angle, layers=tuple(layers),
                     conv3d_layers=tuple(conv3d))  # type: ignore[arg-type]


def generator_inputs(graph: GraphInfo, n: int, seed: int) -> dict[str, np.ndarray]:
    """``n`` input sets for an exported generator: energies (GeV) and angles (rad) uniform in its
    trained range (``numpy.random.default_rng(seed)``), and the noise of the generators' convention
    (:func:`fastshower.infer.backends.seeded_noise`: one batch of ``n`` with ``seed``, as
    ``Generator.generate(..., seed=seed, batch_size=n)`` draws it); float32."""
    from fastshower.infer.backends import seeded_noise

    (e_lo, e_hi), (a_lo, a_hi) = graph.energy_range_gev, graph.angle_range_rad
    rng = np.random.default_rng(seed)
    return {
        "primary_energy": rng.uniform(e_lo, e_hi, n).astype(np.float32),
        "incident_angle": rng.uniform(a_lo, a_hi, n).astype(np.float32),
        "noise": seeded_noise(seed, n, graph.noise_dim).numpy(),
    }


def _batches(inputs: dict[str, np.ndarray], batch_size: int, names) -> list[dict[str, np.ndarray]]:
    """Batches of ``inputs``, keeping only the tensors the model declares (``names``)."""
    n = len(inputs["primary_energy"])
    return [{k: v[start:start + batch_size] for k, v in inputs.items() if k in names}
            for start in range(0, n, batch_size)]


# ------------------------------------------------------------------ running

def session(model_path: str | Path, threads: int | None = None, optimized_path: str | Path | None = None):
    """An ONNX Runtime CPU session from the one factory (:func:`fastshower.infer.backends.open_session`:
    all graph optimisations, ``threads`` intra-op threads, None or 0 = ORT's default); with
    ``optimized_path`` the optimised graph is also written there."""
    from fastshower.infer.backends import open_session

    return open_session(model_path, threads=threads or None, optimized_path=optimized_path)


def run_model(sess, inputs: dict[str, np.ndarray], batch_size: int = 128) -> np.ndarray:
    """Showers (GeV) from an ONNX Runtime session (or a model path) for all ``inputs``, in batches."""
    if isinstance(sess, (str, Path)):
        sess = session(sess)
    names = {i.name for i in sess.get_inputs()}
    return np.concatenate([sess.run(["showers"], b)[0] for b in _batches(inputs, batch_size, names)])


def time_per_shower_ms(sess, inputs: dict[str, np.ndarray], batch_size: int, repeats: int = 5) -> float:
    """ms per shower of one batch of ``batch_size`` (:func:`fastshower.infer.timing.time_per_shower`:
    one warm-up run, ``repeats`` timed runs, wall clock), the fastest repeat: on a shared CPU it
    is the least disturbed, and the tuning compares candidates timed minutes apart."""
    from fastshower.infer.timing import time_per_shower

    if isinstance(sess, (str, Path)):
        sess = session(sess)
    if len(inputs["primary_energy"]) < batch_size:
        raise ValueError(f"need at least {batch_size} inputs to time batch {batch_size}")
    batch = _batches(inputs, batch_size, {i.name for i in sess.get_inputs()})[0]
    timing = time_per_shower(lambda: sess.run(["showers"], batch), batch_size, warmup=1, repeats=repeats)
    return timing.ms_per_shower_min


def optimized_graph(model_path: str | Path) -> onnx.ModelProto:
    """The graph ONNX Runtime's CPU execution provider actually runs (ORT_ENABLE_ALL)."""
    with tempfile.TemporaryDirectory() as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        session(model_path, threads=1, optimized_path=optimized)
        return onnx.load(str(optimized))


def int8_kernels_used(model_path: str | Path) -> list[str]:
    """Operator types of integer kernels (QLinearConv, QGemm, ...) in the optimised graph: a QDQ
    model whose pairs ORT did not fuse would run in float and this list would be empty."""
    return sorted({n.op_type for n in optimized_graph(model_path).graph.node
                   if n.op_type in INT8_KERNELS or n.op_type.startswith("QLinear")})


def unfused_layers(quantized_path: str | Path, layers) -> list[str]:
    """Those of ``layers`` (node names) that still run as float operators after ORT optimised the
    QDQ graph at ``quantized_path`` (fused layers become QLinearConv / QGemm nodes)."""
    floats = {n.name for n in optimized_graph(quantized_path).graph.node if n.op_type in ELIGIBLE_OPS}
    return [name for name in layers if name in floats]


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


def physics_metrics(showers: np.ndarray, inputs: dict[str, np.ndarray], reference) -> dict[str, float]:
    """Profile MSE and sampling-fraction error of generated ``showers`` (GeV, for ``inputs``)
    against ``reference`` (a ShowerSet of the reference simulation with the same conditions)."""
    from fastshower.showers import ShowerSet
    from fastshower.validate.metrics import quick_metrics

    return quick_metrics(reference, ShowerSet(showers, inputs["primary_energy"], inputs["incident_angle"],
                                              reference.geometry))


# ------------------------------------------------------------------ int8 and fp16 files

def cpu_has_int8_dot_product() -> bool:
    """Whether this CPU has an int8 dot-product instruction (x86 AVX-512 VNNI, AVX-VNNI or AMX;
    any non-x86 CPU counts as having one: the saturation below is an x86 AVX2 matter)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), None)
    except OSError:
        flags = None
    if flags is None or "avx2" not in flags:
        return True
    return any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


def default_reduce_range() -> bool:
    """7-bit weights (``reduce_range``) where the CPU has no int8 dot product: AVX2's
    ``vpmaddubsw`` adds two u8 x s8 products into a saturating int16, which full 8-bit weights
    overflow. Measured on this AVX2 machine (conv2d_g1, every layer int8): relative shape error
    5.3 % with 8-bit weights, 0.53 % with 7-bit ones, and faster (docs/inference.md)."""
    return not cpu_has_int8_dot_product()


def quantize_int8(prepared_path: str | Path, out_path: str | Path, calibration: dict[str, np.ndarray], *,
                  graph: GraphInfo, exclude=(), per_channel: bool = True, batch_size: int = 32,
                  calibration_cache: str | Path | None = None, metadata: dict[str, str] | None = None,
                  reduce_range: bool | None = None) -> Path:
    """Static int8 QDQ quantization of ``prepared_path`` (the fp32 generator, optionally after
    ``onnxruntime.quantization.quant_pre_process``) into ``out_path`` (atomic), leaving the nodes
    in ``exclude`` in float32. Calibration (MinMax) runs on ``calibration`` inputs; with
    ``calibration_cache`` the ranges are computed once and reused across calls. ``graph``: the
    fp32 generator's :class:`GraphInfo` (its metadata is copied, with ``precision=int8``,
    ``fp32_layers`` and the items of ``metadata``). ``reduce_range``: 7-bit weights (None:
    :func:`default_reduce_range`, i.e. on CPUs without an int8 dot product)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = _batches(calibration, batch_size, graph.input_names)
            self.rewind()

        def get_next(self):
            return next(self.it, None)

        def rewind(self) -> None:
            self.it = iter(self.batches)

    reduce_range = default_reduce_range() if reduce_range is None else reduce_range
    with atomic_path(out_path) as tmp_out:
        quantize_static(
            str(prepared_path), str(tmp_out), Reader(),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(ELIGIBLE_OPS),
            per_channel=per_channel,
            reduce_range=reduce_range,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=list(exclude),
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
            calibration_cache_path=str(calibration_cache) if calibration_cache else None,
        )
        _set_metadata(tmp_out, {**graph.metadata, "precision": "int8", "fp32_layers": json.dumps(list(exclude)),
                                "weight_bits": "7" if reduce_range else "8",
                                **(metadata or {})})
    return Path(out_path)


def _set_metadata(path: str | Path, meta: dict[str, str], model: onnx.ModelProto | None = None) -> None:
    """Replace the metadata_props of the ONNX file at ``path`` (of ``model`` if given) and save."""
    model = model if model is not None else onnx.load(str(path))
    del model.metadata_props[:]
    for k, v in meta.items():
        model.metadata_props.add(key=k, value=str(v))
    onnx.save(model, str(path))


def convert_fp16(fp32_path: str | Path, out_path: str | Path) -> Path:
    """A float16 copy of an exported generator: the network (from the first to the last learned
    layer) in fp16, the pre- and post-processing (``E/100``, ``x ** (1/0.85) / 50``, ...) and the
    inputs and output in float32, as the torch back-end does at fp16/bf16."""
    import warnings

    from onnxconverter_common import float16

    model = onnx.load(str(fp32_path))
    graph = read_graph(fp32_path, model)
    nodes = list(model.graph.node)
    at = [i for i, node in enumerate(nodes) if node.name in set(graph.layers)]
    # the processing before the first and after the last layer stays fp32 (this also keeps the
    # exporter's no-op input Casts, which the converter would otherwise leave mistyped); the
    # Identity aliases of shared weights stay with the network
    fp32_nodes = [node.name for node in nodes[:at[0]] + nodes[at[-1] + 1:] if node.op_type != "Identity"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "the float32 number ... will be truncated to 1e-07"
        converted = float16.convert_float_to_float16(model, keep_io_types=True, node_block_list=fp32_nodes)
    # float32 interface: also inputs no node reads (a fixed-angle model's angle), and the output,
    # which the converter casts to fp16 after a blocked (fp32) last node
    outputs = {t.name for t in converted.graph.output}
    for node in converted.graph.node:
        if node.op_type == "Cast" and node.output[0] in outputs:
            for attr in node.attribute:
                if attr.name == "to" and attr.i == onnx.TensorProto.FLOAT16:
                    attr.i = onnx.TensorProto.FLOAT
    for tensor in [*converted.graph.input, *converted.graph.output]:
        if tensor.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16:
            tensor.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    with atomic_path(out_path) as tmp:
        _set_metadata(tmp, {**graph.metadata, "precision": "fp16"}, converted)
    return Path(out_path)


def model_size_mb(path: str | Path) -> float:
    """File size in MB (10^6 bytes)."""
    return Path(path).stat().st_size / 1e6


# ------------------------------------------------------------------ tuning

@dataclass
class TuningStep:
    """One measured candidate: the tuned layers kept in fp32, its metrics, ms per shower (ORT,
    ``timing_batch``), score (largest metric over what the target allows) and whether it meets it."""

    fp32_layers: list[str]
    relative_shape_error: float
    ms_per_shower: float
    profile_mse: float | None = None
    sampling_fraction_error: float | None = None
    score: float = math.inf
    meets_target: bool = False
    seconds: float = 0.0


@dataclass
class TuningResult:
    """The tuning log (written as JSON). ``eligible_layers``: the layers tuned; ``skipped_layers``:
    layer -> why it stays fp32 regardless (``conv3d``, ``not fused by onnxruntime``);
    ``sensitivity``: layer -> score with only its group int8; ``chosen_step``: index into
    ``steps`` of the written model (None: target not met, nothing written)."""

    model: str
    target: float
    criterion: str
    select: str
    eligible_layers: list[str]
    skipped_layers: dict[str, str]
    settings: dict
    sensitivity: dict[str, float] = field(default_factory=dict)
    steps: list[TuningStep] = field(default_factory=list)
    chosen_step: int | None = None
    fp32_ms_per_shower: float = float("nan")
    fp32_profile_mse: float | None = None
    fp32_sampling_fraction_error: float | None = None
    int8_kernels: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def met(self) -> bool:
        return self.chosen_step is not None

    @property
    def chosen(self) -> TuningStep | None:
        return None if self.chosen_step is None else self.steps[self.chosen_step]

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


def step_score(step: TuningStep, criterion: str, target: float, fp32_profile_mse: float | None = None,
               fp32_sampling_fraction_error: float | None = None) -> float:
    """Largest metric of ``step`` divided by what ``target`` allows (<= 1: met). ``shapes``:
    relative_shape_error / target; ``physics``: profile-MSE excess over fp32 (relative) / target and
    |sampling-fraction error - fp32's| / target; ``both``: the largest of the three."""
    scores = []
    if criterion in ("shapes", "both"):
        scores.append(step.relative_shape_error / target)
    if criterion in ("physics", "both"):
        excess = step.profile_mse / fp32_profile_mse - 1 if fp32_profile_mse > 0 else step.profile_mse  # type: ignore[operator]
        scores.append(max(excess, 0.0) / target)  # type: ignore[operator,type-var]
        scores.append(abs(step.sampling_fraction_error - fp32_sampling_fraction_error) / target)  # type: ignore[operator]
    return max(scores)


class _Evaluation:
    """Held-out evaluation inputs, the fp32 model's showers, time and physics metrics on them,
    and :meth:`measure` for a candidate file (same inputs, same metrics)."""

    def __init__(self, graph: GraphInfo, target: float, criterion: str, n_eval: int, seed: int, reference,
                 timing_batch: int, threads: int | None) -> None:
        if not target > 0:
            raise ValueError(f"the accuracy target must be positive, got {target}")
        if criterion not in ("shapes", "physics", "both"):
            raise ValueError(f"unknown criterion {criterion!r}: shapes, physics or both")
        if criterion != "shapes" and reference is None:
            raise ValueError(f"criterion {criterion!r} needs reference showers")
        if min(n_eval, timing_batch) < 1:
            raise ValueError("n_eval and timing_batch must be >= 1")
        self.target, self.criterion, self.threads, self.timing_batch = target, criterion, threads, timing_batch
        self.timing_inputs = generator_inputs(graph, max(n_eval, timing_batch), seed + 1)
        self.inputs = {k: v[:n_eval] for k, v in self.timing_inputs.items()}
        self.reference = reference
        if reference is not None:  # the reference's conditions, our noise
            self.reference = reference = reference[:n_eval]
            self.inputs = {"primary_energy": reference.primary_energy.astype(np.float32),
                           "incident_angle": reference.incident_angle.astype(np.float32),
                           "noise": generator_inputs(graph, len(reference), seed + 1)["noise"]}
        fp32 = session(graph.path, threads)
        self.fp32_out = run_model(fp32, self.inputs)
        self.fp32_ms = time_per_shower_ms(fp32, self.timing_inputs, timing_batch)
        self.fp32_physics = physics_metrics(self.fp32_out, self.inputs, reference) if reference is not None else {}

    def result(self, graph: GraphInfo, select: str, layers: list[str], skipped: dict[str, str],
               settings: dict) -> TuningResult:
        return TuningResult(
            model=graph.model, target=self.target, criterion=self.criterion, select=select, eligible_layers=layers,
            skipped_layers=skipped, fp32_ms_per_shower=self.fp32_ms,
            fp32_profile_mse=self.fp32_physics.get("profile_mse"),
            fp32_sampling_fraction_error=self.fp32_physics.get("sampling_fraction_error"),
            settings={"n_eval": len(self.inputs["primary_energy"]), "timing_batch": self.timing_batch,
                      "threads": self.threads, "reference": self.reference is not None, **settings})

    def measure(self, path: str | Path, fp32_layers: list[str], timed: bool) -> TuningStep:
        """Metrics (and, if ``timed``, ms per shower) of the candidate at ``path``."""
        t0 = time.perf_counter()
        sess = session(path, self.threads)
        out = run_model(sess, self.inputs)
        step = TuningStep(fp32_layers=list(fp32_layers), relative_shape_error=relative_shape_error(out, self.fp32_out),
                          ms_per_shower=(time_per_shower_ms(sess, self.timing_inputs, self.timing_batch)
                                         if timed else math.nan))
        if self.reference is not None:
            phys = physics_metrics(out, self.inputs, self.reference)
            step.profile_mse, step.sampling_fraction_error = phys["profile_mse"], phys["sampling_fraction_error"]
        step.score = step_score(step, self.criterion, self.target, self.fp32_physics.get("profile_mse"),
                                self.fp32_physics.get("sampling_fraction_error"))
        step.meets_target = step.score <= 1.0
        step.seconds = time.perf_counter() - t0
        return step


def _write_log(result: TuningResult, out_path: Path, log_path: str | Path | None, t_start: float) -> None:
    result.seconds = time.perf_counter() - t_start
    with atomic_path(Path(log_path) if log_path else out_path.with_suffix(".tuning.json")) as tmp_log:
        tmp_log.write_text(result.to_json() + "\n")


def tune(fp32_path: str | Path, out_path: str | Path, target: float = 0.01, *,
         criterion: Criterion = "shapes", n_calibration: int = 256, n_eval: int = 256, seed: int = 0,
         reference=None, timing_batch: int = 64, threads: int | None = None,
         select: Literal["first", "fastest"] = "fastest", conv3d: bool = False, max_groups: int = 24,
         max_steps: int | None = None, log_path: str | Path | None = None, progress: bool = False) -> TuningResult:
    """Accuracy-aware int8 tuning of the exported fp32 generator ``fp32_path``; writes the chosen
    model to ``out_path`` and the tuning log (JSON) to ``log_path`` (default: ``out_path`` with
    ``.tuning.json``). See the module docstring for the procedure and the metrics.

    Calibration inputs come from ``seed``, evaluation inputs from ``seed + 1`` (held out); with
    ``reference`` (a ShowerSet of the reference simulation, needed for ``criterion`` ``physics``
    and ``both``) the evaluation uses its first ``n_eval`` conditions. Times: ORT at batch
    ``timing_batch`` with ``threads`` intra-op threads. Layers are tuned in at most ``max_groups``
    groups; at most ``max_steps`` groups (None: all) are returned to fp32. If no model meets the target,
    ``out_path`` is not written and :attr:`TuningResult.met` is False.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process
    from tqdm import tqdm

    t_start = time.perf_counter()
    if select not in ("first", "fastest"):
        raise ValueError(f"unknown selection {select!r}: first or fastest")
    if min(n_calibration, max_groups) < 1:
        raise ValueError("n_calibration and max_groups must be >= 1")
    out_path = Path(out_path)
    graph = read_graph(fp32_path)
    evaluation = _Evaluation(graph, target, criterion, n_eval, seed, reference, timing_batch, threads)
    calibration = generator_inputs(graph, n_calibration, seed)
    skipped = {} if conv3d else {name: "conv3d" for name in graph.conv3d_layers}
    layers = [name for name in graph.layers if name not in skipped]
    if not layers:
        raise ValueError(f"{graph.path} has no layer to quantize ({', '.join(ELIGIBLE_OPS)}"
                         f"{'' if conv3d else '; 3-d convolutions need conv3d=True'})")
    result = evaluation.result(graph, select, layers, skipped, {
        "n_calibration": n_calibration, "seed": seed, "max_groups": max_groups, "max_steps": max_steps,
        "speed_margin": SPEED_MARGIN, "per_channel": True, "activations": "int8 asymmetric (MinMax)",
        "weights": "int8 symmetric" + (", 7-bit (reduce_range)" if default_reduce_range() else "")})

    with tempfile.TemporaryDirectory() as tmp:
        prepared, cache, candidate = Path(tmp) / "prepared.onnx", Path(tmp) / "calibration.json", Path(tmp) / "q.onnx"
        quant_pre_process(str(graph.path), str(prepared), skip_symbolic_shape=True)

        def quantize(fp32_layers, path=candidate, metadata=None) -> Path:
            return quantize_int8(prepared, path, calibration, graph=graph, exclude=[*skipped, *fp32_layers],
                                 calibration_cache=cache, metadata=metadata)

        def measure(fp32_layers: list[str], timed: bool = True) -> TuningStep:
            return evaluation.measure(quantize(fp32_layers), fp32_layers, timed)

        # layers ORT would not run as integer kernels stay fp32 (they only add Q/DQ work)
        all_int8 = quantize([])
        unfused = unfused_layers(all_int8, layers)
        if unfused:
            skipped.update({name: "not fused by onnxruntime" for name in unfused})
            layers = result.eligible_layers = [name for name in layers if name not in unfused]
            if not layers:
                raise ValueError(f"onnxruntime runs none of the layers of {graph.path} as int8 kernels")
            all_int8 = quantize([])
        result.steps.append(evaluation.measure(all_int8, [], timed=True))
        if not (select == "first" and result.steps[0].meets_target):
            groups = _layer_groups(layers, max_groups)
            for group in tqdm(groups, desc="layer sensitivity", disable=not progress):
                alone = measure([n for n in layers if n not in group], timed=False).score  # only this group int8
                result.sensitivity.update({node: alone for node in group})
            groups.sort(key=lambda g: result.sensitivity[g[0]], reverse=True)
            fp32_layers: list[str] = []
            for group in tqdm(groups[:max_steps], desc="returning layers to fp32", disable=not progress):
                fp32_layers.extend(group)
                result.steps.append(measure(fp32_layers))
                if select == "first" and result.steps[-1].meets_target:
                    break
        # a step with every tuned layer back in fp32 is the fp32 model, not an int8 one
        meeting = [i for i, s in enumerate(result.steps) if s.meets_target and len(s.fp32_layers) < len(layers)]
        if meeting:
            result.chosen_step = meeting[0]
            for i in meeting[1:] if select == "fastest" else []:
                # more layers in fp32 only for a real gain, not for timing noise
                if result.steps[i].ms_per_shower < (1 - SPEED_MARGIN) * result.steps[result.chosen_step].ms_per_shower:
                    result.chosen_step = i
            quantize(result.steps[result.chosen_step].fp32_layers, out_path,
                     {"quantization_target": str(target), "criterion": criterion})
            result.int8_kernels = int8_kernels_used(out_path)
    _write_log(result, out_path, log_path, t_start)
    return result


def make_fp16(fp32_path: str | Path, out_path: str | Path, target: float = 0.01, *,
              criterion: Criterion = "shapes", n_eval: int = 256, seed: int = 0, reference=None,
              timing_batch: int = 64, threads: int | None = None,
              log_path: str | Path | None = None) -> TuningResult:
    """:func:`convert_fp16` checked like an int8 candidate: the same metrics, score and log (one
    step, no layer in fp32). If the fp16 model misses the target, ``out_path`` is removed and
    :attr:`TuningResult.met` is False."""
    t_start = time.perf_counter()
    out_path = Path(out_path)
    graph = read_graph(fp32_path)
    evaluation = _Evaluation(graph, target, criterion, n_eval, seed, reference, timing_batch, threads)
    result = evaluation.result(graph, "fp16", list(graph.layers), {}, {"seed": seed, "precision": "fp16"})
    convert_fp16(graph.path, out_path)
    result.steps.append(evaluation.measure(out_path, [], timed=True))
    if result.steps[0].meets_target:
        result.chosen_step = 0
    else:
        out_path.unlink()
    _write_log(result, out_path, log_path, t_start)
    return result


def _layer_groups(nodes: list[str], max_groups: int) -> list[list[str]]:
    """Split ``nodes`` (graph order) into at most ``max_groups`` groups of consecutive layers."""
    size = math.ceil(len(nodes) / max_groups)
    return [nodes[i:i + size] for i in range(0, len(nodes), size)]


# ------------------------------------------------------------------ the `fastshower quantize` command

@dataclass
class QuantizeOutcome:
    """What :func:`quantize_model` wrote: the file, its precision, the tuning result, the sizes in MB
    (fp32, reduced), the log path and the reference file judged against (if any)."""

    output: Path
    precision: str
    result: TuningResult
    size_mb: tuple[float, float]
    log: Path
    reference: Path | None = None


def quantize_model(model: str, output: str | Path, *, precision: str = "int8", target: float = 0.01,
                   select: str = "fastest", reference: str | Path | None = None, criterion: str | None = None,
                   calibration_n: int = 256, eval_n: int = 256, conv3d: bool = False, threads: int | None = None,
                   seed: int = 0, overwrite: bool = False, progress: bool = False) -> QuantizeOutcome:
    """A reduced-precision ONNX file of ``model`` (a name, saved stem or fp32 .onnx; exported first
    when not ONNX): int8 tuned by :func:`tune`, or fp16 by :func:`make_fp16`. ``criterion`` defaults
    to ``physics`` with a ``reference`` shower file (its first ``eval_n`` events), else ``shapes``.
    :class:`~fastshower.errors.TargetNotMetError` when no model meets ``target`` (nothing written)."""
    from fastshower.errors import TargetNotMetError, UserInputError
    from fastshower.fileio import check_output
    from fastshower.models.registry import resolve

    output = Path(output)
    if not target > 0:
        raise UserInputError(f"--target must be > 0, got {target}")
    if precision not in ("int8", "fp16"):
        raise UserInputError(f"unknown precision {precision!r}; expected int8 or fp16")
    criterion = criterion or ("physics" if reference is not None else "shapes")
    check_output(output, overwrite)
    ref = None
    if reference is not None:
        from fastshower.data import read_showers

        ref = read_showers(reference, max_events=eval_n)
    with tempfile.TemporaryDirectory(prefix="fastshower-quantize-") as tmp:
        fp32_path = Path(model)
        if resolve(model).kind == "onnx":
            if read_graph(fp32_path).metadata.get("precision", "fp32") != "fp32":
                raise UserInputError(f"{model} is already reduced precision; give the fp32 export")
        else:
            from fastshower.infer.onnx_export import export_onnx

            fp32_path = Path(tmp) / "fp32.onnx"
            # int8: folded transposed convolutions in sub-pixel form, ordinary Convs that ORT runs as QLinearConv
            export_onnx(model, fp32_path, check=True, form="subpixel" if precision == "int8" else "auto")
        common = dict(criterion=criterion, n_eval=eval_n, seed=seed, reference=ref, threads=threads)
        if precision == "fp16":
            result = make_fp16(fp32_path, output, target, **common)  # type: ignore[arg-type]
        else:
            result = tune(fp32_path, output, target, select=select, n_calibration=calibration_n,  # type: ignore[arg-type]
                          conv3d=conv3d, progress=progress, **common)  # type: ignore[arg-type]
        size = (model_size_mb(fp32_path), model_size_mb(output) if result.met else math.nan)
    log = output.with_suffix(".tuning.json")
    if not result.met:
        int8_steps = [st for st in result.steps if len(st.fp32_layers) < len(result.eligible_layers)] or result.steps
        best = min(int8_steps, key=lambda st: st.score)  # the all-fp32 step is no int8 model
        raise TargetNotMetError(f"no {precision} model met the target {target} ({criterion}; "
                                f"best score {best.score:.3g}, 1 = target); nothing written, log in {log}")
    return QuantizeOutcome(output, precision, result, size, log, Path(reference) if reference is not None else None)


def format_quantize_outcome(o: QuantizeOutcome) -> str:
    """The command's report: sizes, shape error and speed against fp32, the physics metrics against the
    reference, the int8 layer counts and kernels, and the log path."""
    result, step = o.result, o.result.chosen
    assert step is not None  # a met result has a chosen step
    lines = [f"wrote {o.output} ({o.precision}, {o.size_mb[1]:.2f} MB vs {o.size_mb[0]:.2f} MB fp32): relative "
             f"shape error {step.relative_shape_error:.2e}, {step.ms_per_shower:.3f} ms/shower vs "
             f"{result.fp32_ms_per_shower:.3f} fp32 (ONNX Runtime, batch {result.settings['timing_batch']})"]
    if step.profile_mse is not None:
        lines.append(f"  vs {o.reference}: profile MSE {step.profile_mse:.4g} (fp32 {result.fp32_profile_mse:.4g}), "
                     f"sampling-fraction error {step.sampling_fraction_error:.4g} "
                     f"(fp32 {result.fp32_sampling_fraction_error:.4g})")
    if o.precision == "int8":
        lines.append(f"  {len(result.eligible_layers) - len(step.fp32_layers)} of {len(result.eligible_layers)} "
                     f"tuned layers int8, {len(step.fp32_layers)} returned to fp32, {len(result.skipped_layers)} "
                     f"kept fp32 ({', '.join(sorted(set(result.skipped_layers.values()))) or 'none'}); int8 "
                     f"kernels: {', '.join(result.int8_kernels) or 'none'}")
    lines.append(f"tuning log: {o.log}")
    return "\n".join(lines)
