"""bench/gpu_inference.py runs end to end on the CPU with --smoke (the GPU run uses the same code)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench" / "gpu_inference.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_inference", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_benchmark_smoke_on_cpu(tmp_path):
    doc = _load().main(["--smoke", "--models", "gan3d_clic25", "--precisions", "fp32", "--out-dir", str(tmp_path)])
    written = json.loads((tmp_path / "gpu_inference.json").read_text())
    assert written["settings"]["smoke"] and written["machine"]["device"] == "cpu"
    assert written["machine"]["peak_gflops"]["fp32"] > 0
    timed = [r for r in doc["results"] if r.get("mode") == "eager"]
    assert {(r["fold"], r["batch_size"]) for r in timed} == {("folded", 1), ("folded", 4), ("unfolded", 1),
                                                             ("unfolded", 4)}
    assert all(r["ms_per_shower"] > 0 and 0 < r["fraction_of_peak"] for r in timed)
    folded = next(r for r in timed if r["fold"] == "folded")
    unfolded = next(r for r in timed if r["fold"] == "unfolded")
    assert folded["flops_per_shower"] < 0.5 * unfolded["flops_per_shower"]
    assert any(r.get("mode") == "full path" and r["ms_per_shower"] > 0 for r in doc["results"])
    assert any("cuda_graph: CUDA only" in s for s in doc["skipped"])
