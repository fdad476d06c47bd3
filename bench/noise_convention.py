"""Same seed, same showers on both back-ends: the shower source ``g4run --model x.onnx`` uses vs
``generate -m x`` (torch), seed 1, 64 showers of a tiny seeded gan3d_clic51 (width 0.125) over its
trained range. Prints the export-tolerance comparison (``onnx_export.compare_showers``) as JSON.

    PYTHONPATH=src OMP_NUM_THREADS=1 python bench/noise_convention.py

Before the inference seam (main at 4f4467e) the ONNX source drew numpy noise: max_rel_err_sum 0.286,
ok false; with it: 8.8e-08, ok true (docs/inference.md, Reproducibility).
"""

from __future__ import annotations

import importlib
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from fastshower.infer.generator import Generator
from fastshower.infer.onnx_export import compare_showers, export_onnx
from fastshower.models.registry import build_generator, save_generator


def main() -> None:
    try:  # where the model-backed sources live (before the seam: simulate.geant4.sources)
        resolve_source = importlib.import_module("fastshower.infer.sources").resolve_source
    except ImportError:
        resolve_source = importlib.import_module("fastshower.simulate.geant4.sources").resolve_source
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        stem = save_generator(build_generator("gan3d_clic51", width=0.125), Path(tmp) / "g51").with_suffix("")
        export_onnx(stem, Path(tmp) / "g51.onnx")
        rng = np.random.default_rng(0)
        e, a = rng.uniform(2, 500, 64), rng.uniform(np.radians(60), np.radians(120), 64)
        reference = Generator.load(str(stem)).generate(e, a, seed=1).showers
        got = resolve_source(str(Path(tmp) / "g51.onnx"), "clic51")(e, a, 1)
    print(json.dumps(compare_showers(reference, got)))


if __name__ == "__main__":
    main()
