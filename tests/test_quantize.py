"""Reduced precision: int8 tuning against an accuracy target, fp16 files, their use in generate and
the benchmark (tiny seeded models exported to ONNX)."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest
import torch

from fastshower.geometry import PRESETS
from fastshower.data import read_showers
from fastshower.infer import quantize as q
from fastshower.infer.benchmark import benchmark
from fastshower.infer.generator import Generator
from fastshower.infer.onnx_export import export_onnx
from fastshower.models.registry import build_generator, save_generator

WIDTH = 0.125
SMALL = dict(n_calibration=64, n_eval=64, timing_batch=16, threads=1)


@pytest.fixture(scope="module")
def fp32_files(tmp_path_factory):
    """Tiny exported generators (seeded random weights): name -> fp32 .onnx path."""
    root = tmp_path_factory.mktemp("onnx")
    files = {}
    for name in ("conv2d_g1", "gan3d_clic25"):
        torch.manual_seed(0)
        files[name] = root / f"{name}.onnx"
        export_onnx(build_generator(name, width=WIDTH).eval(), files[name], check=False)
    return files


@pytest.fixture(scope="module")
def tuned(fp32_files, tmp_path_factory):
    """conv2d_g1 tuned to a 1 % target, the first model that meets it."""
    out = tmp_path_factory.mktemp("int8") / "g1.int8.onnx"
    return out, q.tune(fp32_files["conv2d_g1"], out, target=0.01, select="first", **SMALL)


def test_relative_shape_error_reads_as_relative_deviation(rng):
    showers = rng.gamma(2.0, 1.0, size=(50, 6, 5, 4)).astype(np.float32)
    assert q.relative_shape_error(showers, showers) == 0.0
    # every slice mean and width scales by 1.01: a 1 % deviation
    assert q.relative_shape_error(showers * 1.01, showers) == pytest.approx(0.01, rel=1e-5)
    assert q.relative_shape_error(showers + 0.5, showers) > 0.05  # shifted means


def test_step_score_physics():
    step = q.TuningStep(fp32_layers=[], relative_shape_error=0.002, ms_per_shower=1.0, profile_mse=1.02e-4,
                        sampling_fraction_error=0.031)
    # profile MSE 2 % above fp32's, sampling-fraction error 0.001 away: against a 1 % target
    assert q.step_score(step, "shapes", 0.01) == pytest.approx(0.2)
    assert q.step_score(step, "physics", 0.01, 1e-4, 0.030) == pytest.approx(2.0)
    assert q.step_score(step, "both", 0.05, 1e-4, 0.030) == pytest.approx(0.4)


def test_tuned_int8_meets_target_on_held_out_inputs(tuned, fp32_files):
    out, result = tuned
    assert result.met and result.chosen.meets_target and out.exists()
    held_out = q.generator_inputs(q.read_graph(fp32_files["conv2d_g1"]), 96, seed=1234)  # not seed 0 / 1
    error = q.relative_shape_error(q.run_model(out, held_out), q.run_model(fp32_files["conv2d_g1"], held_out))
    assert 0 < error <= 0.01
    meta = q.read_graph(out).metadata
    assert meta["precision"] == "int8" and meta["model"] == "conv2d_g1" and meta["quantization_target"] == "0.01"
    log = json.loads(out.with_suffix(".tuning.json").read_text())
    assert log["chosen_step"] == result.chosen_step and log["steps"][0]["fp32_layers"] == []


def test_int8_kernels_run(tuned, fp32_files):
    out, result = tuned
    # ORT fuses the Q/DQ pairs around Conv and Gemm into integer kernels (the Gemm: when the tuning
    # kept it int8; on this tiny untrained model it is often the most sensitive layer, returned to fp32) ...
    assert {"QLinearConv"} <= set(result.int8_kernels) == set(q.int8_kernels_used(out))
    gemms = [n for n in q.read_graph(fp32_files["conv2d_g1"]).layers if n.endswith("Gemm")]
    assert gemms and ("QGemm" in result.int8_kernels) == any(n not in result.chosen.fp32_layers for n in gemms)
    assert {n.op_type for n in onnx.load(str(out)).graph.node} >= {"QuantizeLinear", "DequantizeLinear"}
    assert q.int8_kernels_used(fp32_files["conv2d_g1"]) == []
    # ... but not around ConvTranspose: those stay fp32 and are not tuned. (Since the fold puts zero
    # pads into the convolutions, ORT also leaves branch_x's first Conv, which reads the seed tensor
    # that the other branches' permutes read too, unfused: at most a few plain Convs join them.)
    transposed = {n for n in q.read_graph(fp32_files["conv2d_g1"]).layers if n.endswith("ConvTranspose")}
    skipped = set(result.skipped_layers)
    assert transposed and transposed <= skipped
    assert all(n.endswith("/Conv") for n in skipped - transposed) and len(skipped - transposed) <= 3
    assert set(result.skipped_layers.values()) == {"not fused by onnxruntime"}
    assert not transposed & set(result.eligible_layers)


def test_loose_target_quantizes_every_layer(fp32_files, tmp_path):
    result = q.tune(fp32_files["conv2d_g1"], tmp_path / "loose.onnx", target=1.0, select="first", **SMALL)
    assert result.chosen_step == 0 and result.chosen.fp32_layers == [] and len(result.steps) == 1
    assert result.sensitivity == {}  # no layer had to be measured


def test_strict_target_returns_layers_to_fp32(fp32_files, tmp_path):
    """A target the all-int8 model misses: layer groups go back to fp32 one at a time, and the
    tuning stops at the first step that meets it. The tiny untrained model's shape errors are large
    (order 1e-2), so the target is set from a first tuning's own steps: between the errors of the
    last two steps that still hold int8 layers."""
    probe = q.tune(fp32_files["conv2d_g1"], tmp_path / "probe.onnx", target=1e-5, select="first", max_groups=3,
                   **SMALL)
    errors = [s.relative_shape_error for s in probe.steps]
    assert len(errors) >= 3 and errors[-1] == 0.0  # every layer back in fp32: no int8 error left
    target = (errors[-2] * errors[-3]) ** 0.5
    out = tmp_path / "strict.onnx"
    result = q.tune(fp32_files["conv2d_g1"], out, target=target, select="first", max_groups=3, **SMALL)
    log = json.loads(out.with_suffix(".tuning.json").read_text())
    steps = log["steps"]
    assert len(steps) > 1 and not steps[0]["meets_target"]
    assert [len(s["fp32_layers"]) for s in steps] == sorted(len(s["fp32_layers"]) for s in steps)
    assert set(log["sensitivity"]) == set(result.eligible_layers)
    assert result.met and len(result.chosen.fp32_layers) > 0  # stopped where the target is met
    assert len(result.chosen.fp32_layers) < len(result.eligible_layers)  # ... with int8 layers left
    assert result.chosen_step == len(steps) - 1
    assert json.loads(q.read_graph(out).metadata["fp32_layers"]) == [*result.skipped_layers, *result.chosen.fp32_layers]


def test_conv3d_layers_left_fp32_by_default(fp32_files, tmp_path):
    graph = q.read_graph(fp32_files["gan3d_clic25"])
    # the export is folded (#18): Dense + first Conv3D are one Gemm, three 3-d convolutions remain
    assert len(graph.conv3d_layers) == 3 and set(graph.conv3d_layers) < set(graph.layers)
    result = q.tune(graph.path, tmp_path / "c25.onnx", target=1.0, select="first", **SMALL)
    assert set(result.skipped_layers) == set(graph.conv3d_layers)
    assert result.eligible_layers == [n for n in graph.layers if n.endswith("Gemm")]
    assert result.int8_kernels == ["QGemm"]


def test_fp16_file_keeps_float32_io(fp32_files, tmp_path):
    out = tmp_path / "g1.fp16.onnx"
    result = q.make_fp16(fp32_files["conv2d_g1"], out, target=0.01, n_eval=32, timing_batch=16, threads=1)
    assert result.met and result.chosen.relative_shape_error < 1e-3
    model = onnx.load(str(out))
    assert {i.type.tensor_type.elem_type for i in [*model.graph.input, *model.graph.output]} == {onnx.TensorProto.FLOAT}
    assert q.model_size_mb(out) < 0.7 * q.model_size_mb(fp32_files["conv2d_g1"])


@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_reduced_precision_files_in_generate(cli, tuned, fp32_files, tmp_path, precision):
    path = tuned[0] if precision == "int8" else tmp_path / "g.fp16.onnx"
    if precision == "fp16":
        q.convert_fp16(fp32_files["conv2d_g1"], path)
    code, out, err = cli("generate", "-m", path, "--backend", "onnx", "-o", tmp_path / "s.h5", "-n", 5,
                         "--energy", "20:200", "--seed", 3, "--threads", 1)
    assert code == 0, err
    assert f"onnx {precision}" in out
    showers = read_showers(tmp_path / "s.h5")
    assert showers.showers.shape == (5, 25, 25, 25) and showers.attrs["precision"] == precision
    assert np.all(np.isfinite(showers.showers)) and showers.showers.min() >= 0
    with pytest.raises(ValueError, match="file's own precision"):
        Generator.load(path, precision="bf16")


def test_benchmark_times_int8_file(tuned):
    result = benchmark([str(tuned[0])], backends=("onnx",), batch_size=4, repeats=1, warmup=1,
                       calochallenge=False, reference_n=4, threads=1)
    (row,) = result["results"]
    assert row["precision"] == "int8" and row["variant"] == "onnxruntime" and row["ms_per_shower"] > 0
    assert math.isnan(row["flops_per_shower"]) and row["weights"] == "onnx file"


def test_cli_quantize_fp16_from_saved_model(cli, tmp_path):
    torch.manual_seed(0)
    stem = save_generator(build_generator("conv2d_g1", width=WIDTH), tmp_path / "g1").with_suffix("")
    code, out, err = cli("quantize", "-m", stem, "-o", tmp_path / "g1.fp16.onnx", "--precision", "fp16",
                         "--eval-n", 32, "--threads", 1)
    assert code == 0, err
    assert "fp16" in out and (tmp_path / "g1.fp16.onnx").exists()
    log = json.loads((tmp_path / "g1.fp16.tuning.json").read_text())
    assert log["steps"][0]["relative_shape_error"] < 0.01


@pytest.mark.parametrize("args, message", [
    (["-m", "gan3d_clic25", "--target", "0"], "--target must be > 0"),
    (["-m", "no_such_model"], "no_such_model"),
    (["-m", "missing.onnx"], "no ONNX file"),
    (["-m", "gan3d_clic25", "--precision", "int4"], "unknown precision"),
])
def test_cli_quantize_errors(cli, tmp_path, args, message):
    code, out, err = cli("quantize", *args, "-o", tmp_path / "q.onnx")
    assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "q.onnx").exists()


def test_physics_criterion_against_reference(fp32_files, tmp_path):
    from fastshower.simulate.gflash import simulate

    reference = simulate(PRESETS["clic25"], energy="10:200", angle_deg="90", n=48, seed=3)
    out = tmp_path / "phys.onnx"
    result = q.tune(fp32_files["gan3d_clic25"], out, target=0.05, criterion="physics", reference=reference,
                    select="first", **SMALL)
    assert result.settings["n_eval"] == 48 and result.fp32_profile_mse > 0
    step = result.steps[0]
    assert step.profile_mse > 0 and 0 <= step.sampling_fraction_error
    # the score is the physics one: profile MSE excess and sampling-fraction shift over the target
    expected = max(max(step.profile_mse / result.fp32_profile_mse - 1, 0),
                   abs(step.sampling_fraction_error - result.fp32_sampling_fraction_error)) / 0.05
    assert step.score == pytest.approx(expected)
    assert step.meets_target == (expected <= 1)
