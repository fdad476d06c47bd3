"""Hyper-parameter search: a small study completes and writes a trainable best config, workers share
one SQLite study, a killed worker's trial is failed and retried, pruning and failures are recorded.

Trials train an eighth-width conv2d_g1 for 2 x 2 steps on 64 GFlash showers (about a second each).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from fastshower.cli import main
from fastshower.data import write_showers
from fastshower.hpo import ParamSpec, load_hpo_config, run_study, set_dotted
from fastshower.train.config import load_config

SPACE = {"recipe.optimizer.lr_generator": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
         "recipe.loss_weights.real": {"type": "float", "low": 1.0, "high": 10.0},
         "recipe.batch_size": {"type": "categorical", "choices": [4, 8]}}


@pytest.fixture(scope="module")
def base_config(tmp_path_factory) -> Path:
    from fastshower.simulate.gflash import simulate

    root = tmp_path_factory.mktemp("hpo_data")
    write_showers(root / "train.h5", simulate("clic25", energy="50:150", angle_deg="90", n=64, seed=1))
    write_showers(root / "val.h5", simulate("clic25", energy="50:150", angle_deg="90", n=32, seed=2))
    base = {"model": {"name": "conv2d_g1", "config": {"width": 0.125}},
            "recipe": {"preset": "conv2d", "batch_size": 8, "lr_scaling": "none"},
            "data": {"train": "train.h5", "validation": "val.h5"},
            "run": {"epochs": 2, "steps_per_epoch": 2, "device": "cpu", "output_dir": "run"}}
    path = root / "base.yaml"
    path.write_text(yaml.safe_dump(base))
    return path


def _hpo(tmp_path: Path, base: Path, name: str = "hpo.yaml", **extra) -> Path:
    raw = {"base": str(base), "search_space": SPACE, "report_dir": "report", "trial_time_budget_s": 120, **extra}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw))
    return path


def _study(report: Path, name: str = "fastshower") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{report / 'study.db'}")


def _worker(config: Path, trials: int, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "fastshower.cli", "hpo", str(config), "--trials", str(trials),
                             *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# ------------------------------------------------------------------ config

def test_dotted_keys_and_search_space_validation():
    raw = {"model": "conv2d_g1", "recipe": {"preset": "conv2d"}}
    out = set_dotted(raw, "model.config.width", 0.5)
    assert out["model"] == {"name": "conv2d_g1", "config": {"width": 0.5}} and raw["model"] == "conv2d_g1"
    assert set_dotted(raw, "recipe.optimizer.lr_generator", 1e-3)["recipe"] == \
        {"preset": "conv2d", "optimizer": {"lr_generator": 1e-3}}
    with pytest.raises(ValueError, match="low < high"):
        ParamSpec(type="float", low=1.0, high=1.0)
    with pytest.raises(ValueError, match="low > 0"):
        ParamSpec(type="float", low=0.0, high=1.0, log=True)
    with pytest.raises(ValueError, match="choices"):
        ParamSpec(type="categorical")


def test_bad_hpo_configs_fail_with_one_line(tmp_path, base_config, capsys):
    bad = _hpo(tmp_path, base_config, search_space={"lr": {"type": "float", "low": 1, "high": 2}})
    with pytest.raises(ValueError, match="dotted training-config key"):
        load_hpo_config(bad)
    for argv in (["hpo", str(tmp_path / "missing.yaml")], ["hpo", str(bad)]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err)


# ------------------------------------------------------------------ one worker

def test_three_trial_study_writes_a_trainable_best_config(tmp_path, base_config):
    config = _hpo(tmp_path, base_config, pruner={"name": "none"})
    summary = run_study(config, trials=3, progress=False)
    report = tmp_path / "report"
    study = _study(report)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    assert summary["trials"]["complete"] == 3 and summary["best_trial"] == study.best_trial.number
    # each epoch's validation reached Optuna, and the trial's value is its best epoch
    for t in study.trials:
        records = [json.loads(line) for line in (report / f"trials/{t.number:04d}/metrics.jsonl").read_text().splitlines()]
        assert t.intermediate_values == {r["epoch"]: pytest.approx(r["val_profile_mse"]) for r in records}
        assert t.value == pytest.approx(min(r["val_profile_mse"] for r in records))
        assert 0 < t.value < 1
    best = load_config(report / "best_config.yaml")
    params = study.best_trial.params
    assert best.recipe.optimizer.lr_generator == pytest.approx(params["recipe.optimizer.lr_generator"])
    assert best.recipe.loss_weights.real == pytest.approx(params["recipe.loss_weights.real"])
    assert best.recipe.batch_size == params["recipe.batch_size"] and best.model.config == {"width": 0.125}
    assert Path(best.data.validation).is_file() and Path(best.run.output_dir).is_absolute()
    assert json.loads((report / "best.json").read_text())["best_params"] == params
    for plot in ("history", "importances"):
        assert (report / f"{plot}.png").stat().st_size > 1000
    assert len((report / "trials.csv").read_text().splitlines()) == 4


def test_threshold_pruner_prunes_after_the_warmup_epoch(tmp_path, base_config):
    config = _hpo(tmp_path, base_config, pruner={"name": "threshold", "threshold": 1e-9, "warmup_epochs": 1})
    summary = run_study(config, trials=2, progress=False)
    trials = _study(tmp_path / "report").trials
    assert [t.state for t in trials] == [TrialState.PRUNED] * 2
    assert all(sorted(t.intermediate_values) == [1, 2] for t in trials)  # judged from epoch 2 on
    assert "best_value" not in summary and summary["trials"]["pruned"] == 2


def test_a_config_no_trial_can_run_is_refused_before_the_first_trial(tmp_path, base_config):
    space = {**SPACE, "recipe.label_flip": {"type": "categorical", "choices": [0.7]}}  # invalid: must be < 0.5
    with pytest.raises(ValueError, match="recipe.label_flip"):
        run_study(_hpo(tmp_path, base_config, search_space=space), trials=2, progress=False)
    assert not (tmp_path / "report/study.db").exists() or not _study(tmp_path / "report").trials


# ------------------------------------------------------------------ several workers

def test_two_workers_share_one_sqlite_study(tmp_path, base_config):
    config = _hpo(tmp_path, base_config, pruner={"name": "none"})
    (tmp_path / "report").mkdir()
    workers = [_worker(config, 2) for _ in range(2)]
    for w in workers:
        out, err = w.communicate(timeout=300)
        assert w.returncode == 0, err[-2000:]
    trials = _study(tmp_path / "report").trials
    assert len(trials) == 4 and len({t.number for t in trials}) == 4
    assert all(t.state == TrialState.COMPLETE for t in trials)
    by_worker: dict[str, int] = {}
    for t in trials:
        by_worker[t.user_attrs["worker"]] = by_worker.get(t.user_attrs["worker"], 0) + 1
    assert sorted(by_worker.values()) == [2, 2]
    assert len({t.user_attrs["run_dir"] for t in trials}) == 4


def test_a_killed_worker_leaves_the_study_usable(tmp_path, base_config):
    storage = f"sqlite:///{tmp_path / 'report/study.db'}"
    common = {"storage": storage, "heartbeat_s": 1, "grace_period_s": 2, "pruner": {"name": "none"}}
    slow = _hpo(tmp_path, base_config, "slow.yaml", steps_per_epoch=100000, **common)
    fast = _hpo(tmp_path, base_config, "fast.yaml", **common)
    (tmp_path / "report").mkdir()
    victim = _worker(slow, 1)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if any(t.state == TrialState.RUNNING for t in _study(tmp_path / "report").trials):
                break
        except KeyError:  # the study is not created yet
            pass
        time.sleep(0.5)
    else:
        victim.kill()
        pytest.fail("the first worker never started a trial")
    time.sleep(2)  # a few heartbeats
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    time.sleep(3)  # past the grace period
    summary = run_study(fast, trials=2, progress=False)
    trials = _study(tmp_path / "report").trials
    assert trials[0].state == TrialState.FAIL  # the killed worker's trial, failed by heartbeat
    assert not any(t.state == TrialState.RUNNING for t in trials)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 2 and summary["trials"]["complete"] == 2
    # the failed trial was retried with its parameters
    retried = [t for t in complete if t.system_attrs.get("failed_trial") == 0]
    assert len(retried) == 1 and retried[0].params == trials[0].params


def _as_postgres(*cmd: str) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run the server tools as the postgres user."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else list(cmd)


@pytest.mark.skipif(shutil.which("pg_ctl") is None or shutil.which("initdb") is None,
                    reason="PostgreSQL server binaries (initdb, pg_ctl) are not installed")
def test_two_workers_share_one_postgresql_study(tmp_path, base_config):
    pytest.importorskip("psycopg2", reason="psycopg2 is not installed")
    import pwd
    import tempfile

    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user to run the server as")

    pg = Path(tempfile.mkdtemp(prefix="fastshower-pg-"))  # owned by the server's user
    if os.geteuid() == 0:
        shutil.chown(pg, user="postgres")
    port = 55432
    subprocess.run(_as_postgres("initdb", "-D", str(pg / "data"), "-A", "trust", "-U", "postgres"), check=True,
                   capture_output=True)
    subprocess.run(_as_postgres("pg_ctl", "-D", str(pg / "data"), "-l", str(pg / "log"), "-w", "start",
                                "-o", f"-p {port} -k {pg} -c listen_addresses=''"), check=True, capture_output=True)
    try:
        subprocess.run(_as_postgres("createdb", "-h", str(pg), "-p", str(port), "-U", "postgres", "hpo"), check=True)
        url = f"postgresql+psycopg2://postgres@/hpo?host={pg}&port={port}"
        config = _hpo(tmp_path, base_config, storage=url, pruner={"name": "none"})
        workers = [_worker(config, 2) for _ in range(2)]
        for w in workers:
            _, err = w.communicate(timeout=300)
            assert w.returncode == 0, err[-2000:]
        trials = optuna.load_study(study_name="fastshower", storage=url).trials
        assert len(trials) == 4 and len({t.number for t in trials}) == 4
        assert all(t.state == TrialState.COMPLETE for t in trials)
        assert len({t.user_attrs["worker"] for t in trials}) == 2
    finally:
        subprocess.run(_as_postgres("pg_ctl", "-D", str(pg / "data"), "-m", "immediate", "stop"), capture_output=True)
        shutil.rmtree(pg, ignore_errors=True)


def test_example_study_config_builds_valid_trial_configs():
    from fastshower.hpo import base_training_raw, trial_training_raw
    from fastshower.train.config import build_config

    path = Path(__file__).resolve().parents[1] / "configs/hpo_conv2d_g1.yaml"
    cfg, folder = load_hpo_config(path)
    base, base_dir = base_training_raw(cfg, folder)
    params = {k: (s.choices[-1] if s.type == "categorical" else s.high) for k, s in cfg.search_space.items()}
    train = build_config(trial_training_raw(trial_training_raw(base, cfg.overrides, {}), params, {}), base_dir=base_dir)
    assert train.model.name == "conv2d_g1" and train.model.config == {"width": 0.5, "cell_power": 1.0}
    assert train.recipe.optimizer.lr_generator == 3e-3 and train.recipe.lr_scaling == "none"
    assert Path(train.data.train).resolve() == path.parents[1] / "data/hpo_clic25_train.h5"


def test_searched_cell_power_is_the_models_preprocessing(tmp_path):
    import torch

    from fastshower.models import registry
    from fastshower.models.conv2d import Conv2dGenerator

    g = registry.build_generator("conv2d_g1", width=0.125, cell_power=0.5)
    d = registry.build_discriminator("conv2d_g1", width=0.125, cell_power=0.5)
    assert g.transform.power == d.transform.power == 0.5 and Conv2dGenerator.transform.power == 1.0
    showers = torch.full((1, 25, 25, 25), 4.0)
    assert torch.allclose(g.preprocess(showers), torch.full_like(showers, 2.0))  # (1 x 4 GeV) ** 0.5
    assert torch.allclose(g.postprocess(g.preprocess(showers)), showers)
    assert torch.allclose(d.ecal_sum_of(g.preprocess(showers)), torch.tensor([4.0 * 25**3]))
    # the power travels with the weights (model card) and an unset power keeps the model's own
    loaded = registry.load_generator(registry.save_generator(g, tmp_path / "g"))
    assert loaded.transform.power == 0.5 and loaded.metadata()["preprocessing"]["cell_power"] == 0.5
    assert registry.build_generator("conv2d_g1", width=0.125).transform.power == 1.0
