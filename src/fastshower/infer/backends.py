"""Inference back-ends: one protocol, a torch and an ONNX Runtime implementation, the one ONNX
Runtime session factory and the one noise convention.

A back-end runs one batch: primary energies (GeV), incident angles (rad) and ``(B, noise_dim)``
standard-normal noise in, float32 showers ``(B, *shape)`` in GeV per cell out (the network's
post-processing included). It does no checks and draws no random numbers: the noise comes from
:func:`draw_noise` (a seeded torch CPU generator, batch after batch) in
:class:`~fastshower.infer.generator.Generator`, so the same seed, conditions and batch size give
the same showers on every back-end, device and caller (``generate``, ``g4run``, ``benchmark``,
``quantize``) up to floating-point rounding.

As Geant4's Par04 example: the fast-simulation side asks one interface (:class:`Backend`), each
runtime is one class behind it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

#: torch dtypes of the precisions the torch back-end runs.
PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: Names of the exported graph's inputs, in order, and of its output (docs/inference.md).
INPUT_NAMES = ("primary_energy", "incident_angle", "noise")
OUTPUT_NAME = "showers"


# ------------------------------------------------------------------------------ the noise convention

def noise_rng(seed: int) -> torch.Generator:
    """The random stream of a generation with ``seed``: a CPU ``torch.Generator``."""
    return torch.Generator(device="cpu").manual_seed(int(seed))


def draw_noise(rng: torch.Generator, n: int, noise_dim: int) -> torch.Tensor:
    """The next batch of ``n`` noise vectors from ``rng``: float32 ``(n, noise_dim)`` N(0, 1) on the
    CPU. Batches are drawn one after the other from one stream, so the values depend on the batch
    sizes (torch fills normals in blocks), not only on the seed."""
    return torch.randn(int(n), int(noise_dim), generator=rng)


def seeded_noise(seed: int, n: int, noise_dim: int, batch_size: int | None = None) -> torch.Tensor:
    """The noise a generation of ``n`` showers with ``seed`` in batches of ``batch_size`` (None: one
    batch) uses, concatenated: ``(n, noise_dim)`` float32 on the CPU."""
    rng = noise_rng(seed)
    step = int(batch_size or max(n, 1))
    if step < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    parts = [draw_noise(rng, min(step, n - start), noise_dim) for start in range(0, n, step)]
    return torch.cat(parts) if parts else torch.zeros(0, int(noise_dim))


# ------------------------------------------------------------------------------ the protocol

@runtime_checkable
class Backend(Protocol):
    """What runs a batch of a generator. ``name``: ``torch`` or ``onnx``; ``precision``: what the
    network runs in (fp32, bf16, fp16, int8); ``device``: where."""

    name: str
    precision: str
    device: torch.device

    def run(self, primary_energy: np.ndarray, incident_angle: np.ndarray, noise: torch.Tensor) -> np.ndarray:
        """Float32 showers ``(B, *shape)`` in GeV for energies (GeV), angles (rad), CPU noise ``(B, noise_dim)``."""
        ...


class TorchBackend:
    """A ``ShowerGenerator`` network (eval mode) on ``device``; ``precision`` bf16/fp16 runs the
    network in that precision (weights cast by the caller) and the post-processing to GeV in fp32.

    ``batch1_trace`` (fp32 on the CPU, fixed weights): batch-1 calls run a frozen TorchScript trace
    of the network (``torch.jit.trace`` + ``freeze`` + ``optimize_for_inference``: oneDNN kernels
    with pre-packed weights, no Python per layer), built at the first batch-1 call and kept only if
    it equals the eager network on that call to :data:`TRACE_RTOL` of the largest cell; measured
    about 2x faster than eager for the 3-d generators at batch 1 on this CPU, no slower for the
    Conv2D ones, and slower at batch 128 (docs/inference.md). The weights must not change
    afterwards (``Generator.load`` turns it on; ``Generator.from_module``, e.g. in training, does not)."""

    name = "torch"

    def __init__(self, module: torch.nn.Module, device: torch.device | str = "cpu", precision: str = "fp32",
                 batch1_trace: bool = False) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; expected {', '.join(PRECISIONS)}")
        self.module: Any = module  # a ShowerGenerator, or a compiled / re-laid-out copy of one
        self.device = torch.device(device)
        self.precision = precision
        self.batch1_trace = bool(batch1_trace) and precision == "fp32" and self.device.type == "cpu"
        self.traced: Any = None  # the batch-1 trace; False once rejected (or not possible)

    def _batch1(self, e: torch.Tensor, a: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        if self.traced is None:  # from the first call on, every batch-1 call runs the same path
            self.traced = _frozen_trace(self.module, (e, a, z), self.module(e, a, z))
        return self.traced(e, a, z) if self.traced is not False else self.module(e, a, z)

    def run(self, primary_energy: np.ndarray, incident_angle: np.ndarray, noise: torch.Tensor) -> np.ndarray:
        dtype = PRECISIONS[self.precision]
        dev = self.device
        with torch.inference_mode():
            e = torch.as_tensor(np.asarray(primary_energy, np.float32), device=dev)
            a = torch.as_tensor(np.asarray(incident_angle, np.float32), device=dev)
            z = noise.to(dev, non_blocking=True)
            if dtype == torch.float32:
                out = self._batch1(e, a, z) if self.batch1_trace and len(e) == 1 else self.module(e, a, z)
            else:  # network in low precision, post-processing (e.g. x ** (1/0.85)) in fp32
                raw = self.module.generate_raw(e.to(dtype), a.to(dtype), z.to(dtype))
                out = self.module.postprocess(raw.float())
            return out.float().cpu().numpy()


#: Largest cell difference (relative to the largest cell) allowed between a batch-1 trace and the eager network.
TRACE_RTOL = 1e-5


def _frozen_trace(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], expected: torch.Tensor) -> Any:
    """``module`` traced on ``inputs``, frozen and optimised for inference, or False when that fails
    or its output on ``inputs`` differs from ``expected`` by more than :data:`TRACE_RTOL`."""
    import warnings

    if module.training:
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer chatter (Python ints from shapes: the volume is fixed)
            traced = torch.jit.freeze(torch.jit.trace(module, inputs, check_trace=False))
            traced = torch.jit.optimize_for_inference(traced)
            got = traced(*inputs)
    except (RuntimeError, TypeError, ValueError):
        return False
    scale = float(expected.abs().max()) or 1.0
    if got.shape != expected.shape or float((got - expected).abs().max()) > TRACE_RTOL * scale:
        return False
    return traced


class OnnxBackend:
    """An ONNX Runtime session of an exported generator (fp32, or fp16 / int8 from ``fastshower
    quantize``; ``precision`` is the file's). Feeds only the inputs the graph declares."""

    name = "onnx"

    def __init__(self, session: Any, precision: str = "fp32", device: torch.device | str = "cpu") -> None:
        self.session = session
        self.precision = precision
        self.device = torch.device(device)
        self.input_names = tuple(i.name for i in session.get_inputs())

    @classmethod
    def open(cls, path: str | Path, device: str | torch.device = "cpu", threads: int | None = None,
             precision: str = "fp32") -> OnnxBackend:
        return cls(open_session(path, device=str(device), threads=threads), precision, device)

    def feed(self, primary_energy: np.ndarray, incident_angle: np.ndarray, noise: torch.Tensor | np.ndarray
             ) -> dict[str, np.ndarray]:
        """The session's input dict (float32 arrays), limited to the graph's inputs."""
        z = noise.numpy() if isinstance(noise, torch.Tensor) else noise
        values = {"primary_energy": np.asarray(primary_energy, np.float32),
                  "incident_angle": np.asarray(incident_angle, np.float32), "noise": np.asarray(z, np.float32)}
        return {k: values[k] for k in self.input_names}

    def run(self, primary_energy: np.ndarray, incident_angle: np.ndarray, noise: torch.Tensor) -> np.ndarray:
        return self.session.run([OUTPUT_NAME], self.feed(primary_energy, incident_angle, noise))[0]


# ------------------------------------------------------------------------------ the session factory

def open_session(path: str | Path, device: str = "cpu", threads: int | None = None,
                 optimized_path: str | Path | None = None):
    """The one ONNX Runtime session factory: all graph optimisations (``ORT_ENABLE_ALL``),
    ``threads`` intra-op threads and one inter-op thread (None: ONNX Runtime's default, one per
    core), the CUDA execution provider for ``device="cuda[:N]"`` (RuntimeError when this ONNX
    Runtime has none), else the CPU one. With ``optimized_path`` the optimised graph ONNX Runtime
    runs is also written there (and its warning about the hardware-specific file silenced)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if optimized_path is not None:
        options.optimized_model_filepath = str(optimized_path)
        options.log_severity_level = 3
    if str(device).startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise RuntimeError("this ONNX Runtime has no CUDAExecutionProvider (install onnxruntime-gpu)")
        index = int(str(device).partition(":")[2] or 0)
        providers: list = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    elif str(device) == "cpu":
        providers = ["CPUExecutionProvider"]
    else:
        raise ValueError(f"unknown device {device!r}; expected cpu or cuda[:N]")
    return ort.InferenceSession(str(path), sess_options=options, providers=providers)
