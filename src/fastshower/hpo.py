"""Hyper-parameter search over training configs with Optuna (issue 9; docs/hpo.md).

An HPO config (YAML) names a base training config, a search space over its dotted keys
(``recipe.optimizer.lr_generator``, ``model.config.width``, ...), the objective (a validation metric
of :class:`fastshower.train.trainer.Trainer`, optionally plus ``speed_weight`` x generation time in
ms/shower), a pruner fed with the per-epoch validation and a wall-clock budget per trial.

The study lives in an Optuna RDB storage: a SQLite file in the report folder by default, or any
SQLAlchemy URL (PostgreSQL for many machines); every worker runs the same command and joins the same
study. Workers write heartbeats, so the trial of a killed worker is marked FAIL by the next worker
that starts a trial (after ``grace_period_s``) and is retried once; a trial that raises is recorded
FAIL and the study goes on.
"""

from __future__ import annotations

import copy
import json
import math
import os
import socket
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fastshower.fileio import atomic_path, write_text_atomic

METRICS = ("profile_mse", "sampling_fraction_error")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ParamSpec(_Strict):
    """One searched key: ``float`` / ``int`` in [low, high] (``log`` scale, optional ``step``) or
    ``categorical`` over ``choices``."""

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _check(self) -> "ParamSpec":
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("categorical needs a non-empty 'choices' list")
        elif self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(f"{self.type} needs low < high")
        elif self.log and self.low <= 0:
            raise ValueError("log scale needs low > 0")
        return self


class ObjectiveSection(_Strict):
    """``metric``: the validation metric minimised (profile MSE by default); ``speed_weight``: add
    this many units of the metric per ms/shower of generation on the training device."""

    metric: Literal["profile_mse", "sampling_fraction_error"] = "profile_mse"
    speed_weight: float = Field(default=0.0, ge=0)


class PrunerSection(_Strict):
    """``median`` (Optuna MedianPruner), ``percentile`` (``percentile``), ``threshold`` (prune a
    trial whose value exceeds ``threshold``) or ``none``; a trial is judged from epoch
    ``warmup_epochs + 1`` on, once ``startup_trials`` trials have finished (median, percentile)."""

    name: Literal["median", "percentile", "threshold", "none"] = "median"
    startup_trials: int = Field(default=2, ge=0)
    warmup_epochs: int = Field(default=1, ge=0)
    percentile: float = Field(default=50.0, gt=0, lt=100)
    threshold: float | None = None

    @model_validator(mode="after")
    def _check(self) -> "PrunerSection":
        if self.name == "threshold" and self.threshold is None:
            raise ValueError("the threshold pruner needs 'threshold'")
        return self


class HpoConfig(_Strict):
    """A study: ``base`` training config (a path, relative to the HPO file, or a mapping);
    ``overrides`` dotted key -> fixed value applied to the base (e.g. ``data.train``; relative data
    paths resolve against the base config's folder); ``search_space`` dotted key -> :class:`ParamSpec`; ``epochs`` / ``steps_per_epoch`` of each
    trial (default: the base config's); ``trial_time_budget_s``; ``study``; ``storage`` (SQLAlchemy
    URL, default ``sqlite:///<report_dir>/study.db``); ``report_dir``; ``seed`` of the TPE sampler
    (each worker adds its process id so that workers do not propose the same points);
    ``heartbeat_s`` / ``grace_period_s`` for detecting killed workers; ``retries`` of such trials."""

    base: str | dict[str, Any]
    overrides: dict[str, Any] = Field(default_factory=dict)
    search_space: dict[str, ParamSpec]
    objective: ObjectiveSection = ObjectiveSection()
    pruner: PrunerSection = PrunerSection()
    epochs: int | None = Field(default=None, ge=1)
    steps_per_epoch: int | None = Field(default=None, ge=1)
    trial_time_budget_s: float = Field(default=600.0, gt=0)
    study: str = "fastshower"
    storage: str | None = None
    report_dir: str = "reports/hpo"
    seed: int = 0
    heartbeat_s: int = Field(default=30, ge=1)
    grace_period_s: int | None = Field(default=None, ge=1)
    retries: int = Field(default=1, ge=0)

    @model_validator(mode="after")
    def _check(self) -> "HpoConfig":
        if not self.search_space:
            raise ValueError("search_space is empty")
        for key in [*self.search_space, *self.overrides]:
            if key.split(".")[0] not in ("model", "recipe", "data", "run") or "." not in key:
                raise ValueError(f"key {key!r} must be a dotted training-config key "
                                 "under model, recipe, data or run (e.g. recipe.optimizer.lr_generator)")
        return self


def load_hpo_config(path: str | Path, **overrides: Any) -> tuple[HpoConfig, Path]:
    """Read an HPO YAML (``yaml.safe_load``); ``overrides`` (None values ignored) replace top-level
    keys. Returns the config and the folder relative paths are resolved against."""
    from fastshower.train.config import first_error, read_yaml_mapping

    path = Path(path)
    raw = read_yaml_mapping(path, "HPO config")
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return HpoConfig.model_validate(raw), path.parent
    except ValidationError as exc:
        raise ValueError(first_error(exc, str(path))) from None


# ------------------------------------------------------------------ pure helpers

def set_dotted(raw: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """A copy of ``raw`` with ``a.b.c`` set to ``value`` (missing mappings are created)."""
    out = copy.deepcopy(raw)
    node = out
    *parents, leaf = key.split(".")
    for part in parents:
        child = node.get(part)
        if isinstance(child, str) and part in ("model", "recipe"):  # "model: conv2d_g1" / "recipe: conv2d"
            child = {"name" if part == "model" else "preset": child}
        if child is None:
            child = {}
        if not isinstance(child, dict):
            raise ValueError(f"cannot set {key}: {part} is not a mapping")
        node[part] = child = dict(child)
        node = child
    node[leaf] = value
    return out


def suggest(trial, key: str, spec: ParamSpec) -> Any:
    """The trial's value for ``key`` from ``spec``."""
    if spec.type == "categorical":
        return trial.suggest_categorical(key, spec.choices)
    if spec.type == "int":
        return trial.suggest_int(key, int(spec.low), int(spec.high), step=int(spec.step or 1), log=spec.log)
    return trial.suggest_float(key, spec.low, spec.high, step=spec.step, log=spec.log)


def base_training_raw(cfg: HpoConfig, base_dir: Path) -> tuple[dict[str, Any], Path]:
    """The base training config mapping and the folder its relative paths are resolved against."""
    if isinstance(cfg.base, dict):
        return copy.deepcopy(cfg.base), base_dir
    from fastshower.train.config import read_yaml_mapping

    path = base_dir / Path(cfg.base).expanduser()
    return read_yaml_mapping(path, "base training config"), path.parent


def trial_training_raw(base: dict[str, Any], params: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """The base mapping with the trial's ``params`` (dotted keys) and ``run`` entries set."""
    raw = base
    for key, value in params.items():
        raw = set_dotted(raw, key, value)
    for key, value in run.items():
        raw = set_dotted(raw, f"run.{key}", value)
    return raw


def objective_value(record: dict[str, Any], objective: ObjectiveSection, ms_per_shower: float) -> float:
    """The objective of one epoch record: ``val_<metric> + speed_weight * ms_per_shower``."""
    return float(record[f"val_{objective.metric}"]) + objective.speed_weight * ms_per_shower


# ------------------------------------------------------------------ the study

def _pruner(cfg: PrunerSection):
    import optuna

    warmup = cfg.warmup_epochs + 1  # epochs are reported 1-based; Optuna judges steps >= n_warmup_steps
    if cfg.name == "none":
        return optuna.pruners.NopPruner()
    if cfg.name == "threshold":
        return optuna.pruners.ThresholdPruner(upper=cfg.threshold, n_warmup_steps=warmup)
    if cfg.name == "percentile":
        return optuna.pruners.PercentilePruner(cfg.percentile, n_startup_trials=cfg.startup_trials,
                                               n_warmup_steps=warmup)
    return optuna.pruners.MedianPruner(n_startup_trials=cfg.startup_trials, n_warmup_steps=warmup)


def storage_url(cfg: HpoConfig, report_dir: Path) -> str:
    """``cfg.storage`` or the default SQLite file in the report folder."""
    return cfg.storage or f"sqlite:///{(report_dir / 'study.db').resolve()}"


def open_study(cfg: HpoConfig, report_dir: Path, seed_offset: int = 0):
    """Create or join the study: RDB storage with heartbeats and retry of failed (killed) trials."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    from sqlalchemy.exc import SQLAlchemyError

    url = storage_url(cfg, report_dir)
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    for attempt in range(5):  # workers starting together on a new database race to create its tables
        try:
            storage = RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=cfg.heartbeat_s,
                                 grace_period=cfg.grace_period_s or 4 * cfg.heartbeat_s,
                                 heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=cfg.retries))
            break
        except SQLAlchemyError as exc:
            if attempt == 4:
                raise RuntimeError(f"cannot open the study storage {url}: {str(exc).splitlines()[0]}") from None
            time.sleep(0.5 + attempt)
    sampler = optuna.samplers.TPESampler(seed=cfg.seed + seed_offset, n_startup_trials=4)
    return optuna.create_study(study_name=cfg.study, storage=storage, load_if_exists=True, direction="minimize",
                               sampler=sampler, pruner=_pruner(cfg.pruner))


def _ms_per_shower(trainer, n: int = 64) -> float:
    """Generation time (ms/shower) of the trainer's generator on its device, batch ``n`` at 100 GeV
    and normal incidence (:func:`fastshower.infer.timing.time_per_shower`: one warm-up call, one
    timed call, wall clock), through the inference back-end in eval mode."""
    from fastshower.infer.backends import seeded_noise
    from fastshower.infer.generator import Generator
    from fastshower.infer.timing import time_per_shower

    g = trainer.G
    gen = Generator.from_module(g, trainer.device)
    e, a = np.full(n, 100.0), np.full(n, math.pi / 2)
    noise = seeded_noise(0, n, g.noise_dim)
    was_training = g.training
    g.eval()
    try:
        return time_per_shower(lambda: gen.run_batch(e, a, noise), n, warmup=1, repeats=1).ms_per_shower
    finally:
        g.train(was_training)


def check_trial_config(cfg: HpoConfig, base: dict[str, Any], base_cfg_dir: Path, run: dict[str, Any]) -> None:
    """Fail before the first trial, with one line, when no trial could run: a search or override key
    the training config does not have (a misspelling), a missing data file, no validation data.
    Checked on the trial config with every searched value at its low end (first choice)."""
    from fastshower.data import resolve_paths
    from fastshower.errors import UserInputError
    from fastshower.train.config import build_config

    params = {key: spec.choices[0] if spec.type == "categorical" else
              (int(spec.low) if spec.type == "int" else spec.low) for key, spec in cfg.search_space.items()}
    raw = trial_training_raw(base, params, {**run, "output_dir": "unused"})
    try:
        train_cfg = build_config(raw, source="HPO trial config", base_dir=base_cfg_dir)
    except ValueError as exc:
        raise UserInputError(f"{exc} (search_space / overrides / base)") from None
    if train_cfg.data.validation is None:
        raise UserInputError("the base training config needs data.validation (the objective is a validation metric)")
    for paths in (train_cfg.data.train, train_cfg.data.validation):
        resolve_paths(paths)  # FileNotFoundError naming the missing file


def make_objective(cfg: HpoConfig, base_dir: Path, report_dir: Path, worker: str):
    """The Optuna objective: train the trial's config, report each epoch, prune, honour the budget."""
    import optuna

    from fastshower.train.config import build_config
    from fastshower.train.trainer import Trainer

    base, base_cfg_dir = base_training_raw(cfg, base_dir)
    base = trial_training_raw(base, cfg.overrides, {})
    run: dict[str, Any] = {"progress": False, "best_metric": cfg.objective.metric}
    if cfg.epochs is not None:
        run["epochs"] = cfg.epochs
    if cfg.steps_per_epoch is not None:
        run["steps_per_epoch"] = cfg.steps_per_epoch

    check_trial_config(cfg, base, base_cfg_dir, run)
    failures: list[str] = []

    def objective(trial: optuna.Trial) -> float:
        try:
            return _objective(trial)
        except optuna.TrialPruned:
            raise
        except Exception as exc:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            failures.append(f"trial {trial.number}: {type(exc).__name__}: {detail}")
            raise

    objective.failures = failures  # type: ignore[attr-defined]

    def _objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", worker)
        params = {key: suggest(trial, key, spec) for key, spec in cfg.search_space.items()}
        out = report_dir / "trials" / f"{trial.number:04d}"
        raw = trial_training_raw(base, params, {**run, "output_dir": str(out)})
        train_cfg = build_config(raw, source=f"trial {trial.number}", base_dir=base_cfg_dir)
        if train_cfg.data.validation is None:
            raise ValueError("the base training config needs data.validation (the objective is a validation metric)")
        trainer = Trainer(train_cfg)
        deadline = time.monotonic() + cfg.trial_time_budget_s
        ms = _ms_per_shower(trainer) if cfg.objective.speed_weight else 0.0
        trial.set_user_attr("ms_per_shower", ms)
        values: list[float] = []

        def on_epoch_end(record: dict[str, Any]) -> None:
            value = objective_value(record, cfg.objective, ms)
            values.append(value)
            trial.report(value, record["epoch"])
            if not math.isfinite(value):
                raise ValueError(f"non-finite validation {cfg.objective.metric} at epoch {record['epoch']}")
            if trial.should_prune():
                trial.set_user_attr("epochs", len(values))
                raise optuna.TrialPruned(f"pruned at epoch {record['epoch']} ({value:.4g})")

        try:
            trainer.fit(on_epoch_end=on_epoch_end, should_stop=lambda: time.monotonic() > deadline)
        finally:
            trainer.close()
        trial.set_user_attr("epochs", len(values))
        trial.set_user_attr("hit_time_budget", time.monotonic() > deadline)
        trial.set_user_attr("run_dir", str(out))
        return min(values)

    return objective, base, base_cfg_dir


def run_study(config_path: str | Path, trials: int, storage: str | None = None, study: str | None = None,
              report_dir: str | Path | None = None, timeout_s: float | None = None,
              progress: bool = True) -> dict[str, Any]:
    """One worker: run ``trials`` trials of the study (other workers may run theirs at the same
    time), then write the report (best config, best.json, trials.csv, plots). Returns best.json."""
    import warnings

    import optuna

    # heartbeats, the stale-trial retry and the matplotlib plots are flagged experimental
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    cfg, base_dir = load_hpo_config(config_path, storage=storage, study=study)
    if trials < 1:
        raise ValueError(f"--trials must be >= 1, got {trials}")
    # --report is relative to the working directory, report_dir in the YAML to the YAML's folder
    report = (Path(report_dir) if report_dir is not None else base_dir / Path(cfg.report_dir).expanduser()).resolve()
    report.mkdir(parents=True, exist_ok=True)
    worker = f"{socket.gethostname()}:{os.getpid()}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    the_study = open_study(cfg, report, seed_offset=os.getpid())
    objective, base, base_cfg_dir = make_objective(cfg, base_dir, report, worker)
    the_study.optimize(objective, n_trials=trials, timeout=timeout_s, catch=(Exception,),
                       show_progress_bar=progress, gc_after_trial=True)
    summary = write_report(the_study, cfg, base, base_cfg_dir, report)
    failures = objective.failures
    if failures and not any(summary["trials"].get(state) for state in ("complete", "pruned")):
        from fastshower.errors import AllTrialsFailedError

        raise AllTrialsFailedError(f"all {len(failures)} trial(s) of this worker failed, none completed; first: "
                                   f"{failures[0]} (report: {report})")
    return summary


def write_report(study, cfg: HpoConfig, base: dict[str, Any], base_cfg_dir: Path, report: Path) -> dict[str, Any]:
    """best_config.yaml (the base config with the best parameters: ``fastshower train`` takes it),
    best.json, trials.csv and the history / importance plots, all written atomically."""
    from optuna.trial import TrialState

    from fastshower.train.config import build_config, dump_config

    trials = study.get_trials(deepcopy=False)
    counts = {state.name.lower(): sum(t.state == state for t in trials) for state in TrialState}
    summary: dict[str, Any] = {"study": study.study_name, "storage": storage_url(cfg, report),
                               "metric": cfg.objective.metric, "speed_weight": cfg.objective.speed_weight,
                               "report_dir": str(report), "trials": counts}
    rows = ["number,state,value,worker,epochs,duration_s," + ",".join(cfg.search_space)]
    for t in trials:
        dur = (t.datetime_complete - t.datetime_start).total_seconds() if t.datetime_complete and t.datetime_start else ""
        rows.append(",".join(str(x) for x in [t.number, t.state.name, "" if t.value is None else t.value,
                                              t.user_attrs.get("worker", ""), t.user_attrs.get("epochs", ""), dur,
                                              *(t.params.get(k, "") for k in cfg.search_space)]))
    write_text_atomic(report / "trials.csv", "\n".join(rows) + "\n")
    if counts["complete"]:
        best = study.best_trial
        summary.update({"best_value": best.value, "best_trial": best.number, "best_params": best.params})
        raw = trial_training_raw(base, best.params, {"output_dir": str((report / "best_run").resolve())})
        text = ("# best configuration of study " + study.study_name + f" (trial {best.number}, "
                f"{cfg.objective.metric} {best.value:.6g}); train it with: fastshower train best_config.yaml\n"
                + dump_config(build_config(raw, source="best config", base_dir=base_cfg_dir)))
        write_text_atomic(report / "best_config.yaml", text)
    summary["plots"] = _plots(study, report, counts["complete"])
    write_text_atomic(report / "best.json", json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def _plots(study, report: Path, n_complete: int) -> dict[str, str]:
    """Optimisation history and parameter importances as PNG (``n_complete``: the study's complete
    trials); a plot that cannot be made (e.g. importances with fewer than two complete trials) is
    listed with the reason instead."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    out: dict[str, str] = {}
    for name, fn, need in (("history", ovm.plot_optimization_history, 1),
                           ("importances", ovm.plot_param_importances, 2)):
        if n_complete < need:
            out[name] = f"skipped: needs {need} complete trials, the study has {n_complete}"
            continue
        try:
            ax = fn(study)
        except (ValueError, RuntimeError) as exc:  # e.g. a parameter that never varied
            out[name] = f"skipped: {exc}"
            continue
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        path = report / f"{name}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        out[name] = str(path)
    return out
