"""The one-call GPU training job (scripts/gpu_train.py) on its CPU smoke setting: it builds its data,
trains, writes what comes back from the accelerator machine, and a second call resumes from it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "gpu_train.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(SCRIPT.parent.parent / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--models", "conv2d_g1", "--device", "cpu", *args],
                          capture_output=True, text=True, timeout=600, env=env, check=False)


@pytest.mark.slow
def test_gpu_job_smoke_runs_and_resumes(tmp_path):
    first = _run("--out", str(tmp_path / "a"), "--max-steps", "3")
    assert first.returncode == 0, first.stderr[-3000:]
    files = sorted(p.relative_to(tmp_path / "a").as_posix() for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert files == ["conv2d_g1/models.safetensors", "conv2d_g1/run.json", "summary.json"]
    assert all(p.stat().st_size < 16 * 2 ** 20 for p in (tmp_path / "a").rglob("*") if p.is_file())
    run = json.loads((tmp_path / "a/conv2d_g1/run.json").read_text())
    assert run["step"] == 3 and [r["step"] for r in run["curve"]] == [3]
    assert 0 < run["output_scale"] < 0.1  # calibrated, not the unit default
    summary = json.loads((tmp_path / "a/summary.json").read_text())
    assert summary["smoke"] and summary["models"]["conv2d_g1"]["steps_this_call"] == 3

    second = _run("--out", str(tmp_path / "b"), "--max-steps", "3", "--resume", str(tmp_path / "a"), "--spread", "3")
    assert second.returncode == 0, second.stderr[-3000:]
    run2 = json.loads((tmp_path / "b/conv2d_g1/run.json").read_text())
    assert run2["step"] == 6 and [r["step"] for r in run2["curve"]] == [3, 6]
    assert run2["config"]["recipe"]["loss_weights"] == {"spread": 3.0}  # merged into the preset's weights
    assert run2["config"]["recipe"]["spread_energies"] == "log_uniform"
    assert run2["output_scale"] == run["output_scale"]  # the scale travels with the weights
    assert run2["config"]["recipe"]["energy_spectrum"] == "data"
    mismatch = _run("--out", str(tmp_path / "c"), "--max-steps", "1", "--resume", str(tmp_path / "a"),
                    "--latent", "scaled_and_raw")
    assert mismatch.returncode != 0 and "has latent scaled" in mismatch.stderr
