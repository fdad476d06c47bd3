"""The inference seam: back-ends, the one noise convention, the model resolver, the timing helper
and the model-backed shower sources.

The central check: one seed gives the same showers through ``generate``, the shower source that
``g4run --mode fast`` hands to Geant4, the benchmark's timed calls and the quantizer's inputs, for a
torch model and for its ONNX export (within the export tolerance).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import probe_geant4

from fastshower.geometry import PRESETS
from fastshower.infer import timing
from fastshower.infer.backends import Backend, OnnxBackend, TorchBackend, open_session, seeded_noise
from fastshower.infer.generator import Generator
from fastshower.infer.onnx_export import compare_showers, export_onnx
from fastshower.models.registry import build_generator, resolve, save_generator

WIDTH = 0.125


@pytest.fixture(scope="module")
def model_files(tmp_path_factory):
    """A tiny saved gan3d_clic51 (seeded random weights; angles 60-120 deg) and its ONNX export."""
    root = tmp_path_factory.mktemp("seam")
    torch.manual_seed(0)
    stem = save_generator(build_generator("gan3d_clic51", width=WIDTH), root / "g51").with_suffix("")
    export_onnx(stem, root / "g51.onnx")
    return {"torch": str(stem), "onnx": str(root / "g51.onnx")}


@pytest.fixture(scope="module")
def conditions():
    return np.array([3.0, 40.0, 150.0, 420.0, 77.0]), np.radians([62.0, 75.0, 90.0, 104.0, 118.0])


def _close(got: np.ndarray, expected: np.ndarray) -> bool:
    return compare_showers(expected, got)["ok"]


def test_one_seed_same_showers_through_generate_g4run_source_and_benchmark(model_files, conditions):
    from fastshower.infer.benchmark import make_variants, timed_inputs
    from fastshower.infer.sources import resolve_source

    e, a = conditions
    seed = 1
    generated = {}
    for kind, model in model_files.items():
        gen = Generator.load(model, threads=1)
        assert gen.backend == kind
        generated[kind] = gen.generate(e, a, seed=seed).showers
        # g4run --mode fast --model <model> --seed s: batch b calls the source with batch_seed(s, b)
        source = resolve_source(model, PRESETS["clic51"])
        np.testing.assert_array_equal(source(e, a, seed), generated[kind])
        # the benchmark: every variant's timed call on the timed inputs of seed s is generate(seed=s)
        te, ta, noise = timed_inputs(gen, len(e), seed)
        reference = gen.generate(te, ta, seed=seed, batch_size=len(e)).showers
        for name, variant in make_variants(model, gen, len(e), 1, include_compile=False).items():
            assert not isinstance(variant, str), f"{name}: {variant}"
            assert _close(variant.run(te, ta, noise), reference), name
    # the ONNX export gives the torch model's showers for the same seed
    assert _close(generated["onnx"], generated["torch"])
    assert np.abs(generated["torch"]).max() > 0


def test_quantizer_inputs_follow_the_noise_convention(model_files):
    from fastshower.infer import quantize as q

    graph = q.read_graph(model_files["onnx"])
    inputs = q.generator_inputs(graph, 6, seed=4)
    torch.testing.assert_close(torch.from_numpy(inputs["noise"]), seeded_noise(4, 6, graph.noise_dim), rtol=0, atol=0)
    gen = Generator.load(model_files["torch"])
    expected = gen.generate(inputs["primary_energy"], inputs["incident_angle"], seed=4, batch_size=6).showers
    assert _close(q.run_model(q.session(model_files["onnx"], threads=1), inputs), expected)


def test_noise_is_drawn_per_batch_from_one_stream(model_files, conditions):
    """Batches of 2, 2 and 1 showers take consecutive draws from one CPU torch.Generator(seed)."""
    e, a = conditions
    gen = Generator.load(model_files["torch"])
    rng = torch.Generator().manual_seed(9)
    draws = [torch.randn(k, gen.noise_dim, generator=rng) for k in (2, 2, 1)]
    torch.testing.assert_close(seeded_noise(9, 5, gen.noise_dim, batch_size=2), torch.cat(draws), rtol=0, atol=0)
    by_hand = np.concatenate([gen.run_batch(e[i:i + 2], a[i:i + 2], z) for i, z in zip((0, 2, 4), draws)])
    np.testing.assert_array_equal(gen.generate(e, a, seed=9, batch_size=2).showers, by_hand)
    assert not np.array_equal(gen.generate(e, a, seed=9, batch_size=5).showers, by_hand)  # the batch size matters


def test_backends_follow_the_protocol(model_files):
    torch_gen, onnx_gen = Generator.load(model_files["torch"]), Generator.load(model_files["onnx"])
    assert isinstance(torch_gen.engine, TorchBackend) and isinstance(onnx_gen.engine, OnnxBackend)
    for gen in (torch_gen, onnx_gen):
        assert isinstance(gen.engine, Backend) and gen.engine.precision == gen.precision == "fp32"
    assert torch_gen.module is not None and torch_gen.session is None
    assert onnx_gen.module is None and onnx_gen.session is not None
    assert onnx_gen.engine.input_names == ("primary_energy", "incident_angle", "noise")
    with pytest.raises(ValueError, match="threads must be >= 1"):
        open_session(model_files["onnx"], threads=0)
    with pytest.raises(ValueError, match="unknown device"):
        open_session(model_files["onnx"], device="tpu")


def test_resolve_finds_each_kind(model_files, tmp_path, monkeypatch):
    from fastshower.models import registry

    onnx = resolve(model_files["onnx"])
    assert (onnx.kind, onnx.name, onnx.geometry.name) == ("onnx", "gan3d_clic51", "clic51")
    for spelling in (model_files["torch"], model_files["torch"] + ".json", model_files["torch"] + ".safetensors"):
        saved = resolve(spelling)
        assert (saved.kind, str(saved.path), saved.name, saved.geometry.name) == ("saved", model_files["torch"],
                                                                              "gan3d_clic51", "clic51")
    monkeypatch.setattr(registry, "WEIGHTS_DIR", tmp_path)
    save_generator(build_generator("conv2d_g1", width=WIDTH), tmp_path / "conv2d_g1")
    shipped = resolve("conv2d_g1")
    assert (shipped.kind, shipped.path, shipped.geometry.name) == ("shipped", tmp_path / "conv2d_g1", "clic25")
    fresh = resolve("gan3d_clic25@0.25")
    assert (fresh.kind, fresh.path, fresh.name, fresh.width) == ("untrained", None, "gan3d_clic25", 0.25)
    assert resolve("gan3d_clic51").width == 1.0
    with pytest.raises(FileNotFoundError, match="no shipped generator named 'gan3d_clic51'; shipped: conv2d_g1"):
        resolve("gan3d_clic51", untrained=False)
    with pytest.raises(FileNotFoundError, match="no ONNX file at"):
        resolve(tmp_path / "missing.onnx")
    with pytest.raises(FileNotFoundError, match="no shipped generator named 'nope'"):
        resolve("nope")


def test_time_per_shower_definition(monkeypatch):
    """Warm-up calls timed apart, repeats of calls_per_repeat calls, median / min / max / IQR per shower."""
    ticks = iter([0.0, 3.0] + [t for start, d in zip(range(10, 60, 10), (4, 2, 8, 6, 10)) for t in (start, start + d)])
    monkeypatch.setitem(timing.CLOCKS, "wall", lambda: next(ticks))
    calls = []
    t = timing.time_per_shower(lambda: calls.append(1), 10, warmup=3, repeats=5, calls_per_repeat=2)
    assert len(calls) == 3 + 5 * 2
    assert t.warmup_ms_per_shower == pytest.approx(3.0 / 30 * 1e3)
    assert t.repeats_ms_per_shower == pytest.approx([200.0, 100.0, 400.0, 300.0, 500.0])  # s / 20 showers
    assert (t.ms_per_shower, t.ms_per_shower_min, t.ms_per_shower_max, t.ms_per_shower_iqr) == pytest.approx(
        (300.0, 100.0, 500.0, 200.0))
    assert t.showers_per_s == pytest.approx(1e3 / 300.0) and t.clock == "wall"
    cpu = timing.time_per_shower(lambda: sum(range(1000)), 1, warmup=0, repeats=2, clock="cpu")
    assert cpu.clock == "cpu" and cpu.warmup_ms_per_shower == 0.0 and cpu.ms_per_shower >= 0
    with pytest.raises(ValueError, match="unknown clock"):
        timing.time_per_shower(lambda: None, 1, clock="gpu")


def test_shower_sources_carry_their_entry_convention(model_files):
    from fastshower.infer.sources import GeneratorSource, generator_source, module_source, resolve_source
    from fastshower.simulate.geant4.sources import FunctionSource, ShowerSource, as_source, gflash_entry_offset

    e, t = np.array([100.0, 50.0]), np.radians([70.0, 90.0])
    expected = gflash_entry_offset(PRESETS["clic51"])(e, t)
    assert expected[0, 1] < -5 and expected[1, 1] == pytest.approx(0, abs=1e-9)  # tilted: enters below the centre
    for model in model_files.values():
        source = resolve_source(model, PRESETS["clic51"])
        assert isinstance(source, ShowerSource) and isinstance(source, GeneratorSource)
        np.testing.assert_allclose(source.entry_offset(e, t), expected)
        np.testing.assert_array_equal(generator_source(model, PRESETS["clic51"], entry_convention="centre").entry_offset(e, t), 0)
    assert resolve_source(model_files["onnx"], PRESETS["clic51"]).description.startswith("onnx ")
    with pytest.raises(ValueError, match="generates showers for geometry 'clic51', not 'clic25'"):
        resolve_source(model_files["torch"], PRESETS["clic25"])
    gflash = resolve_source("gflash", PRESETS["clic51"])
    assert isinstance(gflash, FunctionSource) and gflash.description == "gflash (e-)"
    np.testing.assert_allclose(gflash.entry_offset(e, t), expected)

    def plain(energy, theta, seed):
        return np.zeros((len(energy), 1))

    wrapped = as_source(plain)
    assert wrapped.description == "plain" and np.all(wrapped.entry_offset(e, t) == 0)
    torch.manual_seed(2)
    module = build_generator("gan3d_clic25", width=WIDTH)
    out = module_source(module)(np.array([1.0, 30.0]), np.full(2, math.pi / 2), 5)  # 1 GeV: below range, no check
    assert out.shape == (2, 25, 25, 25)
    np.testing.assert_array_equal(out, Generator.from_module(module).generate_arrays(
        np.array([1.0, 30.0]), np.full(2, math.pi / 2), seed=5, check_range=False))


def test_g4run_with_a_model_and_its_onnx_export_writes_the_same_showers(model_files, tmp_path):
    """``g4run --model x --seed 3`` and ``g4run --model x.onnx --seed 3``: the same showers (export
    tolerance), and batch b equals ``generate(E, theta, seed=batch_seed(s, b))`` where s is the
    shard's source seed (spawned from the run seed, recorded in the file)."""
    if not probe_geant4()[0]:
        pytest.skip("geant4_pybind unusable here")
    from fastshower.data import read_showers
    from fastshower.simulate.geant4.sources import batch_seed

    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    files = {}
    for kind, model in model_files.items():
        files[kind] = tmp_path / f"{kind}.h5"
        proc = subprocess.run([sys.executable, "-m", "fastshower.cli", "g4run", "-g", "clic51", "--model", model,
                               "--energy", "20,200", "--angle", "90", "-n", "5", "--seed", "3", "--batch-events", "3",
                               "-o", str(files[kind])], capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
    torch_run, onnx_run = (read_showers(files[k]) for k in ("torch", "onnx"))
    np.testing.assert_array_equal(torch_run.primary_energy, onnx_run.primary_energy)
    assert _close(onnx_run.showers, torch_run.showers)
    gen = Generator.load(model_files["torch"])
    e = torch_run.primary_energy
    (shard,) = json.loads(torch_run.attrs["shards"])
    seed = shard["source_seed"]
    expected = np.concatenate([gen.generate(e[s], np.full(len(e[s]), math.pi / 2), seed=batch_seed(seed, b)).showers
                               for b, s in enumerate((slice(0, 3), slice(3, 5)))])
    np.testing.assert_allclose(torch_run.showers, expected, rtol=1e-5, atol=1e-9)
