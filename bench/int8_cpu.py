"""int8 on this CPU, one thread: what the hardware allows and which ONNX Runtime quantization
settings reach it (issue 18).

1. **GEMM peaks** (``--peaks``): a ``--size``^3 matrix product, best CPU time of 5, in ONNX Runtime
   (fp32 ``MatMul``; ``MatMulInteger`` u8 x u8 and u8 x s8) and torch (fp32 ``mm``, bf16 ``mm``,
   fbgemm int8 ``Linear``): the ceiling of any int8 gain over fp32 on this CPU.
2. **Quantization settings** (``--models``): every eligible layer of the folded export (sub-pixel
   form: every layer an ordinary Conv) int8 with static QDQ/QOperator quantization, activations
   u8/s8, weights s8/u8, 8-bit or 7-bit (``reduce_range``) weights, per-channel; CPU ms per
   shower at ``--batch`` against the fp32 export of the same graph, the relative shape error
   (:func:`fastshower.infer.quantize.relative_shape_error`, 64 held-out showers), the integer
   kernels ORT runs and the layers it leaves in float.

    .venv/bin/python bench/int8_cpu.py --peaks --models conv2d_g1 gan3d_clic25 --out bench/int8_cpu_quiet.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fastshower.infer.timing import time_per_shower


def best_cpu_s(fn, repeats: int = 5) -> float:
    """Fastest of ``repeats`` calls after one warm-up, CPU seconds."""
    return time_per_shower(fn, 1, warmup=1, repeats=repeats, clock="cpu").ms_per_shower_min / 1e3


def _session(model):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def gemm_peaks(n: int) -> dict[str, float]:
    """G(FL)OP/s of an n^3 product, one thread (2 n^3 operations / best CPU time)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    ops = 2.0 * n ** 3
    out: dict[str, float] = {}

    def graph(op, a_type, b, out_type):
        g = helper.make_graph([helper.make_node(op, ["a", "b"], ["c"])], "g",
                              [helper.make_tensor_value_info("a", a_type, [n, n])],
                              [helper.make_tensor_value_info("c", out_type, [n, n])], [numpy_helper.from_array(b, "b")])
        return _session(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]))

    a = rng.standard_normal((n, n), dtype=np.float32)
    s = graph("MatMul", TensorProto.FLOAT, rng.standard_normal((n, n), dtype=np.float32), TensorProto.FLOAT)
    out["ort fp32 MatMul"] = ops / best_cpu_s(lambda: s.run(None, {"a": a})) / 1e9
    a8 = rng.integers(0, 255, (n, n), dtype=np.uint8)
    for label, b in (("u8u8", rng.integers(0, 255, (n, n), dtype=np.uint8)),
                     ("u8s8", rng.integers(-127, 127, (n, n)).astype(np.int8))):
        s = graph("MatMulInteger", TensorProto.UINT8, b, TensorProto.INT32)
        out[f"ort {label} MatMulInteger"] = ops / best_cpu_s(lambda s=s: s.run(None, {"a": a8})) / 1e9
    x, y = torch.randn(n, n), torch.randn(n, n)
    out["torch fp32 mm"] = ops / best_cpu_s(lambda: torch.mm(x, y)) / 1e9
    xb, yb = x.bfloat16(), y.bfloat16()
    out["torch bf16 mm"] = ops / best_cpu_s(lambda: torch.mm(xb, yb), repeats=1) / 1e9
    torch.backends.quantized.engine = "fbgemm"
    q = torch.ao.nn.quantized.Linear(n, n)
    q.set_weight_bias(torch.quantize_per_tensor(torch.randn(n, n), 0.01, 0, torch.qint8), torch.zeros(n))
    qx = torch.quantize_per_tensor(x, 0.05, 128, torch.quint8)
    out["torch fbgemm u8s8 Linear"] = ops / best_cpu_s(lambda: q(qx)) / 1e9
    return out


SETTINGS = {  # label: (format, activation, weight, reduce_range)
    "QDQ s8s8 8-bit (before)": ("QDQ", "QInt8", "QInt8", False),
    "QDQ s8s8 7-bit (now)": ("QDQ", "QInt8", "QInt8", True),
    "QDQ u8s8 8-bit": ("QDQ", "QUInt8", "QInt8", False),
    "QDQ u8s8 7-bit": ("QDQ", "QUInt8", "QInt8", True),
    "QDQ u8u8 8-bit": ("QDQ", "QUInt8", "QUInt8", False),
    "QOperator u8s8 8-bit": ("QOperator", "QUInt8", "QInt8", False),
}


def settings_rows(name: str, batch: int) -> dict:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from fastshower.infer import quantize as q
    from fastshower.infer.onnx_export import export_onnx
    from fastshower.models.registry import build_generator

    torch.manual_seed(0)
    module = build_generator(name).eval()
    tmp = Path(tempfile.mkdtemp(prefix="fastshower-int8-"))
    fp32 = tmp / "fp32.onnx"
    export_onnx(module, fp32, form="subpixel", check=False)
    graph = q.read_graph(fp32)
    prepared = tmp / "prepared.onnx"
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    calibration, evaluation = q.generator_inputs(graph, 32, 0), q.generator_inputs(graph, 64, 1)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = q._batches(calibration, 16, graph.input_names)
            self.it = iter(self.batches)

        def get_next(self):
            return next(self.it, None)

        def rewind(self) -> None:
            self.it = iter(self.batches)

    def timed(path):
        sess = q.session(path, threads=1)
        feed = {k: v[:batch] for k, v in evaluation.items() if k in graph.input_names}
        return 1e3 * best_cpu_s(lambda: sess.run(None, feed), repeats=3) / batch, sess

    fp32_ms, sess = timed(fp32)
    reference = q.run_model(sess, evaluation, 32)
    out = {"model": name, "batch": batch, "fp32_ms_per_shower": fp32_ms, "layers": list(graph.layers), "settings": {}}
    for label, (fmt, act, wt, rr) in SETTINGS.items():
        path = tmp / f"{len(out['settings'])}.onnx"
        quantize_static(str(prepared), str(path), Reader(), quant_format=getattr(QuantFormat, fmt),
                        op_types_to_quantize=list(q.ELIGIBLE_OPS), per_channel=True, reduce_range=rr,
                        activation_type=getattr(QuantType, act), weight_type=getattr(QuantType, wt),
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
        ms, sess = timed(path)
        err = q.relative_shape_error(q.run_model(sess, evaluation, 32), reference)
        row = {"ms_per_shower": ms, "speedup_vs_fp32_same_graph": fp32_ms / ms, "relative_shape_error": err,
               "int8_kernels": q.int8_kernels_used(path),
               "float_layers": q.unfused_layers(path, graph.layers) if fmt == "QDQ" else None}
        out["settings"][label] = row
        print(f"{name} {label:24s} {ms:8.3f} ms (fp32 {fp32_ms:.3f}) x{fp32_ms / ms:.2f} err {err:.4f} "
              f"{row['int8_kernels']} float {row['float_layers']}", file=sys.stderr, flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--peaks", action="store_true")
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--models", nargs="*", default=[])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--out", default=None)
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    doc: dict = {"loadavg_start": os.getloadavg(), "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                 "settings": vars(a)}
    if a.peaks:
        doc["gemm_peaks_gops_one_thread"] = gemm_peaks(a.size)
        print(json.dumps(doc["gemm_peaks_gops_one_thread"], indent=1), file=sys.stderr, flush=True)
    doc["models"] = [settings_rows(m, a.batch) for m in a.models]
    doc["loadavg_end"] = os.getloadavg()
    if a.out:
        Path(a.out).write_text(json.dumps(doc, indent=2) + "\n")
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
