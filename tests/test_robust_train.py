"""`train` under damage and misuse (issue 17 items 3-7): corrupt checkpoints, config and tensor errors
that name the culprit, run folders that are not silently replaced or shared, the best epoch reported."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import yaml

import fastshower
from fastshower.data import write_showers
from fastshower.showers import ShowerSet
from fastshower.train.config import build_config
from fastshower.train.trainer import Trainer

SRC = str(Path(fastshower.__file__).resolve().parent.parent)
SMALL = {"name": "gan3d_clic25", "config": {"width": 0.125}}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    n = 24
    path = tmp_path_factory.mktemp("d") / "train.h5"
    write_showers(path, ShowerSet(rng.exponential(2e-3, size=(n, 25, 25, 25)).astype(np.float32),
                                  rng.uniform(10, 400, n), np.full(n, np.pi / 2), "clic25"))
    return path


def raw_config(train: Path, out: Path, batch_size: int = 4, **run) -> dict:
    return {"model": SMALL, "recipe": {"batch_size": batch_size, "lr_scaling": "none"}, "data": {"train": str(train)},
            "run": {"epochs": 2, "steps_per_epoch": 1, "checkpoint_every": 100, "output_dir": str(out),
                    "progress": False, **run}}


def write_config(tmp_path: Path, raw: dict, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def error_lines(err: str) -> list[str]:
    lines = err.strip().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("error: "))
    return lines[start:]


def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, data, cli):
    out = tmp_path / "run"
    Trainer(build_config(raw_config(data, out))).fit()  # checkpoints at steps 1 and 2
    latest = out / "checkpoints" / (out / "checkpoints" / "latest").read_text().strip()
    assert latest.name.endswith("2")
    state = latest / "state.pt"
    state.write_bytes(state.read_bytes()[:100])  # truncated by a full disk
    cfg = write_config(tmp_path, raw_config(data, out, epochs=3))
    with pytest.warns(UserWarning, match="previous readable checkpoint step_00000001"):
        code, stdout, err = cli("train", cfg, "--resume", out)
    assert code == 0, err
    assert "to epoch 3 (step 3)" in stdout


def test_all_checkpoints_corrupt_is_one_line(tmp_path, data, cli):
    out = tmp_path / "run"
    Trainer(build_config(raw_config(data, out, epochs=1))).fit()
    for models in (out / "checkpoints").glob("step_*/models.safetensors"):
        models.write_bytes(models.read_bytes()[:50])
    code, _, err = cli("train", write_config(tmp_path, raw_config(data, out)), "--resume", out)
    assert code == 2 and error_lines(err)[0].startswith("error: no readable checkpoint in"), err
    assert len(error_lines(err)) == 1


def test_invalid_model_config_names_every_field(tmp_path, data, cli):
    raw = raw_config(data, tmp_path / "out")
    raw["model"] = {"name": "gan3d_clic25", "config": {"width": "wide", "dropout": 2}}
    code, _, err = cli("train", write_config(tmp_path, raw))
    lines = error_lines(err)
    assert code == 2 and len(lines) <= 5, err
    assert "width" in err and "dropout" in err, err


def test_warm_start_from_another_model_names_the_tensors(tmp_path, data, cli):
    other = tmp_path / "other"
    Trainer(build_config({**raw_config(data, other, epochs=1),
                          "model": {"name": "gan3d_clic25", "config": {"width": 0.25}}})).fit()
    code, _, err = cli("train", write_config(tmp_path, raw_config(data, tmp_path / "new")), "--warm-start", other)
    lines = error_lines(err)
    assert code == 2 and 2 <= len(lines) <= 5, err
    assert "size mismatch" in err and "vs" in err, err  # which tensors, which shapes


def test_existing_run_folder_needs_resume_or_overwrite(tmp_path, data, cli):
    out = tmp_path / "run"
    cfg = write_config(tmp_path, raw_config(data, out, epochs=1))
    assert cli("train", cfg)[0] == 0
    before = (out / "metrics.jsonl").read_text()
    code, _, err = cli("train", cfg)
    assert code == 2 and "--overwrite" in err and "--resume" in err, err
    assert (out / "metrics.jsonl").read_text() == before
    code, _, err = cli("train", cfg, "--overwrite")
    assert code == 0, err


def test_resume_with_another_batch_size_warns(tmp_path, data, cli):
    out = tmp_path / "run"
    Trainer(build_config(raw_config(data, out, epochs=1))).fit()
    with pytest.warns(UserWarning, match="batch_size 4, this run uses 8"):
        code, _, err = cli("train", write_config(tmp_path, raw_config(data, out, batch_size=8)), "--resume", out)
    assert code == 0, err


def test_final_line_reports_the_best_epoch(tmp_path, data, cli, monkeypatch):
    scores = iter([0.5, 0.2, 0.9])
    monkeypatch.setattr(Trainer, "validate", lambda self: {"profile_mse": next(scores),
                                                           "sampling_fraction_error": 0.01})
    raw = raw_config(data, tmp_path / "run", epochs=3)
    raw["data"]["validation"] = str(data)
    code, stdout, err = cli("train", write_config(tmp_path, raw))
    assert code == 0, err
    assert "0.2 at epoch 2" in stdout and "last epoch 0.9" in stdout, stdout


def test_two_trainings_on_one_folder_cannot_both_succeed(tmp_path, data):
    """Two real processes train into the same folder: one trains, the other stops at once."""
    out = tmp_path / "run"
    cfg = write_config(tmp_path, raw_config(data, out, epochs=3))
    code = textwrap.dedent(f"""
        import sys, time
        from fastshower.train.trainer import Trainer
        step = Trainer.train_step
        def slow(self, batch):
            time.sleep(0.7)
            return step(self, batch)
        Trainer.train_step = slow
        from fastshower.cli import main
        main(["train", {str(cfg)!r}])
    """)
    env = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for p in procs]
    assert sorted(r[0] for r in results) == [0, 2], [(r[0], r[2][-800:]) for r in results]
    loser = next(r for r in results if r[0] == 2)
    assert "another process" in loser[2] or "holds a run" in loser[2], loser[2][-800:]
