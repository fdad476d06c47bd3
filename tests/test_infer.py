"""Inference: generation API, files, ONNX export and runtime, condition checks, seeds, benchmark."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest
import torch

from fastshower.data import read_showers
from fastshower.infer.benchmark import RESULT_FIELDS, benchmark
from fastshower.infer.generator import Generator
from fastshower.infer.onnx_export import INPUT_NAMES, export_onnx, read_metadata
from fastshower.models.registry import build_generator, save_generator

WIDTH = 0.125


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Tiny saved generators (seeded random weights): name -> stem."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    stems = {}
    for name in ("gan3d_clic25", "gan3d_clic51"):
        stems[name] = save_generator(build_generator(name, width=WIDTH), root / name).with_suffix("")
    return stems


@pytest.fixture(scope="module")
def clic51(saved):
    return Generator.load(saved["gan3d_clic51"])


def test_generate_to_file_round_trip(clic51, tmp_path):
    e = np.array([3.0, 20.0, 100.0, 250.0, 499.0, 60.0, 7.0])
    a = np.radians([60.0, 75.0, 90.0, 105.0, 120.0, 80.0, 95.0])
    n = clic51.generate_to_file(tmp_path / "g.h5", e, a, batch_size=3, seed=7)
    assert n == 7
    back = read_showers(tmp_path / "g.h5")
    direct = clic51.generate(e, a, batch_size=3, seed=7)
    assert back.geometry == "clic51" and back.showers.shape == (7, 51, 51, 25)
    np.testing.assert_array_equal(back.showers, direct.showers)
    np.testing.assert_allclose(back.primary_energy, e)
    np.testing.assert_allclose(back.incident_angle, a)
    assert back.attrs["seed"] == 7 and back.attrs["model"] == "gan3d_clic51"
    assert np.all(back.deposited_energy > 0)


def test_scalars_repeat_and_shapes(clic51):
    s = clic51.generate(100.0, math.pi / 2, n=5, seed=1, batch_size=2)
    assert s.showers.shape == (5, 51, 51, 25) and s.showers.dtype == np.float32
    np.testing.assert_array_equal(s.primary_energy, np.full(5, 100.0))
    with pytest.raises(ValueError, match="inconsistent numbers of showers"):
        clic51.generate(np.array([10.0, 20.0]), np.radians([70.0, 80.0, 90.0]))


def test_seeds(clic51):
    e, a = np.array([50.0, 200.0]), np.radians([70.0, 110.0])
    one = clic51.generate(e, a, seed=11).showers
    np.testing.assert_array_equal(one, clic51.generate(e, a, seed=11).showers)
    other = clic51.generate(e, a, seed=12).showers
    assert np.abs(one - other).max() > 1e-3 * np.abs(one).max()


@pytest.mark.parametrize("name", ["gan3d_clic25", "gan3d_clic51"])
def test_onnx_matches_torch(saved, tmp_path, name):
    info = export_onnx(saved[name], tmp_path / "g.onnx")
    assert info["ok"] and info["max_rel_err_sum"] < 1e-4 and info["opset"] == 17
    model = onnx.load(str(tmp_path / "g.onnx"))
    assert [i.name for i in model.graph.input] == list(INPUT_NAMES)  # the fixed-angle model keeps its angle input
    meta = read_metadata(tmp_path / "g.onnx")
    assert meta["model"] == name and meta["opset"] == "17"
    torch_gen = Generator.load(saved[name])
    onnx_gen = Generator.load(tmp_path / "g.onnx", threads=1)
    assert onnx_gen.backend == "onnx" and onnx_gen.noise_dim == torch_gen.noise_dim == meta["noise_dim"]
    lo, hi = torch_gen.angle_range_rad
    e = np.array([2.0, 17.0, 140.0, 500.0, 333.0])  # batch 5, exported with 8: dynamic batch
    a = np.linspace(lo, hi, 5)
    ref = torch_gen.generate(e, a, seed=3).showers
    got = onnx_gen.generate(e, a, seed=3).showers
    sums_ref, sums_got = ref.sum(axis=(1, 2, 3), dtype=np.float64), got.sum(axis=(1, 2, 3), dtype=np.float64)
    assert np.max(np.abs(sums_got - sums_ref) / sums_ref) < 1e-4
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())


def test_onnx_backend_from_saved_model(saved, clic51):
    e, a = np.array([10.0, 300.0]), np.radians([65.0, 115.0])
    onnx_gen = Generator.load(saved["gan3d_clic51"], backend="onnx", threads=1)
    np.testing.assert_allclose(onnx_gen.generate(e, a, seed=5).showers, clic51.generate(e, a, seed=5).showers,
                               rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="onnx backend"):
        Generator.load(saved["gan3d_clic51"], backend="onnx", precision="bf16")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_low_precision_close_to_fp32(saved, clic51, precision):
    e, a = np.array([20.0, 200.0, 450.0]), np.radians([70.0, 90.0, 110.0])
    ref = clic51.generate(e, a, seed=2)
    try:
        low = Generator.load(saved["gan3d_clic51"], precision=precision).generate(e, a, seed=2)
    except RuntimeError as exc:  # this torch cannot run the precision on CPU: a clear error
        assert precision in str(exc)
        return
    assert low.showers.dtype == np.float32
    rel = np.abs(low.deposited_energy / ref.deposited_energy - 1)
    assert rel.max() < 0.05  # bf16 keeps 8 mantissa bits; measured here 0.5-0.6 %


def test_out_of_range_conditions(clic51, saved):
    with pytest.raises(ValueError, match=r"primary energy 600-600 GeV outside the trained range 2-500 GeV"):
        clic51.generate(600.0, math.pi / 2)
    with pytest.raises(ValueError, match=r"incident angle 130-130 deg outside the trained range 60-120 deg"):
        clic51.generate(100.0, math.radians(130.0))
    lenient = Generator.load(saved["gan3d_clic51"], allow_extrapolation=True)
    with pytest.warns(UserWarning, match="extrapolating"):
        s = lenient.generate(600.0, math.pi / 2, n=2, seed=0)
    assert s.showers.shape == (2, 51, 51, 25)
    fixed = Generator.load(saved["gan3d_clic25"])
    with pytest.raises(ValueError, match="trained at the fixed angle 90 deg only and cannot make showers at 60-60 deg"):
        fixed.generate(100.0, math.radians(60.0))


def test_cli_generate_range_error_and_extrapolation(cli, saved, tmp_path):
    out = tmp_path / "x.h5"
    code, _, err = cli("generate", "-m", saved["gan3d_clic51"], "-o", out, "--energy", "600", "-n", "3")
    assert code == 2 and not out.exists()
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: gan3d_clic51: primary energy 600-600 GeV outside")
    with pytest.warns(UserWarning, match="extrapolating"):
        code, stdout, _ = cli("generate", "-m", saved["gan3d_clic51"], "-o", out, "--energy", "600", "--angle",
                              "60:130", "-n", "3", "--allow-extrapolation", "--seed", "4")
    assert code == 0 and "wrote 3 showers" in stdout
    back = read_showers(out)
    np.testing.assert_allclose(back.primary_energy, 600.0)
    assert back.attrs["extrapolated"] and back.incident_angle.max() > math.radians(120.0)


def test_cli_generate_formats_and_export(cli, saved, tmp_path):
    code, stdout, err = cli("generate", "-m", saved["gan3d_clic25"], "-o", tmp_path / "a.h5", "--energy", "10,100",
                            "-n", "4", "--format", "3dgan", "--batch-size", "3", "--seed", "9")
    assert code == 0, err
    back = read_showers(tmp_path / "a.h5")
    assert back.showers.shape == (4, 25, 25, 25) and set(back.primary_energy) <= {10.0, 100.0}
    rng = np.random.default_rng(9)  # the CLI draws conditions first, then the noise from the same seed
    from fastshower.conditions import sample_energies

    energies = sample_energies("10,100", 4, rng)
    direct = Generator.load(saved["gan3d_clic25"]).generate(energies, math.pi / 2, batch_size=3, seed=9)
    np.testing.assert_allclose(back.showers, direct.showers, rtol=1e-5, atol=1e-7)
    code, stdout, _ = cli("export", "-m", saved["gan3d_clic25"], "-o", tmp_path / "g.onnx", "--opset", "18")
    assert code == 0 and "rel. error" in stdout and read_metadata(tmp_path / "g.onnx")["opset"] == "18"
    code, _, err = cli("export", "-m", saved["gan3d_clic25"], "-o", tmp_path / "g.pt", "--format", "torchscript")
    assert code == 2 and err.strip() == "error: unknown export format 'torchscript'; expected onnx"


def test_cli_models_lists_cards(cli, tmp_path, monkeypatch):
    from fastshower.models import registry

    save_generator(build_generator("gan3d_clic51", width=WIDTH), tmp_path / "gan3d_clic51",
                   metadata={"validation": {"profile_mse": 0.0123, "reference": "gflash"}})
    monkeypatch.setattr(registry, "WEIGHTS_DIR", tmp_path)
    code, stdout, _ = cli("models")
    assert code == 0
    assert "gan3d_clic51: gan3d_clic51 on clic51 51x51x25, E 2-500 GeV, angle 60-120 deg" in stdout
    assert "validation: profile_mse 0.0123, reference gflash" in stdout
    size = (tmp_path / "gan3d_clic51.safetensors").stat().st_size / 2**20
    assert f"parameters ({size:.1f} MiB), noise 254" in stdout


def test_benchmark_quick_has_every_field(cli, saved, tmp_path):
    out = tmp_path / "bench.json"
    code, stdout, err = cli("benchmark", "-m", saved["gan3d_clic25"], "-m", "gan3d_clic25@0.0625", "--backend", "torch",
                            "--backend", "onnx", "--batch-size", "4", "--repeats", "2", "--warmup", "1",
                            "--batches-per-step", "1", "--quick", "--reference-n", "8", "--threads", "1", "-o", out)
    assert code == 0, err
    result = json.loads(out.read_text())
    assert result["machine"]["peak_gflops_fp32"] > 0
    rows = result["results"]
    assert [(r["backend"], r["weights"]) for r in rows] == [
        ("torch", "trained"), ("onnx", "trained"), ("torch", "untrained (timing only)"), ("onnx", "untrained (timing only)")]
    for r in rows:
        assert set(RESULT_FIELDS) <= set(r)
        assert r["ms_per_shower_min"] <= r["ms_per_shower"] <= r["ms_per_shower_max"]
        assert r["showers_per_s"] == pytest.approx(1e3 / r["ms_per_shower"])
        assert r["flops_per_shower"] > 1e6 and r["parameters"] > 1000 and 0 < r["fraction_of_peak"]
        assert r["speedup_vs_reference"] == pytest.approx(r["reference_ms_per_shower"] / r["ms_per_shower"])
        assert r["peak_memory_mb"] > 10 and r["gpu_utilisation_pct"] is None
        assert r["variant"] in r["variants"] and isinstance(r["variants"][r["variant"]], dict)
        assert [c["batch_size"] for c in r["calochallenge"]] == [1, 16, 256]
    torch_row = rows[0]
    assert set(torch_row["variants"]) == {"eager", "channels_last", "onnxruntime"}
    assert torch_row["flops_per_shower"] == rows[1]["flops_per_shower"]
    assert rows[2]["flops_per_shower"] < torch_row["flops_per_shower"]  # width 0.0625 < 0.125
    assert "ms/shower" in stdout and "speed-up" in stdout


def test_benchmark_skips_onnx_low_precision(saved):
    result = benchmark([str(saved["gan3d_clic25"])], backends=("onnx",), precisions=("bf16",), batch_size=2,
                       repeats=1, warmup=0, calochallenge=False, reference_n=4)
    assert result["results"] == [] and "onnx bf16" in result["skipped"][0]


@pytest.mark.parametrize("name", ["conv2d_g1", "conv2d_g3"])
def test_conv2d_generators_export(tmp_path, name):
    torch.manual_seed(1)
    info = export_onnx(build_generator(name, width=WIDTH).eval(), tmp_path / "g.onnx", n_check=3)
    assert info["ok"] and info["max_rel_err_sum"] < 1e-4 and info["n_check"] == 3
    assert [i.name for i in onnx.load(str(tmp_path / "g.onnx")).graph.input] == list(INPUT_NAMES)
