"""Training configuration: typed (pydantic), loaded from YAML, unknown keys rejected.

A config file has four blocks (all documented in docs/training.md)::

    model:    {name: gan3d_clic51, config: {width: 1.0}}
    recipe:   {preset: gan3d_clic51, batch_size: 64, ...}   # preset fields, any overridden
    data:     {train: "train_*.h5", validation: val.h5, energy_range_gev: [2, 500], ...}
    run:      {epochs: 30, seed: 0, precision: fp32, device: auto, output_dir: runs/x, ...}
    stages:   [{epochs: 130, energy_range_gev: [100, 200]}, {epochs: 20}]   # optional

``recipe`` may also be just the preset name. Relative paths in ``data`` (``train``, ``validation``)
and ``run.output_dir`` are relative to the config file's folder.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from fastshower.train.recipes import RECIPES, recipe_for_model

#: ``recipe.energy_spectrum``: the primary-energy spectrum training works on (see :class:`RecipeConfig`)
EnergySpectrum = Literal["data", "log_uniform", "mixed"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSection(_Strict):
    """``name`` a registry model; ``config`` keyword overrides for its builders (e.g. ``width``)."""

    name: str
    config: dict[str, Any] = Field(default_factory=dict)


class LossWeights(_Strict):
    """Weights of the loss terms: BCE on real/fake, MAPE on E/100, MAPE on the ECAL sum, MAE on the
    angle (rad), and ``spread``: the generator-only shower-to-shower spread term of
    :mod:`fastshower.train.spread` (not in the originals; 0 in every preset). A zero weight drops the term."""

    real: float = Field(ge=0)
    energy: float = Field(ge=0)
    ecal_sum: float = Field(ge=0)
    angle: float = Field(default=0.0, ge=0)
    spread: float = Field(default=0.0, ge=0)


class OptimizerConfig(_Strict):
    """``rmsprop`` (``rho``, ``eps``) or ``adam`` (``betas``, ``eps``); learning rates per network,
    given for the recipe's reference batch (scaled with the global batch, see RecipeConfig)."""

    name: Literal["rmsprop", "adam"]
    lr_generator: float = Field(gt=0)
    lr_discriminator: float = Field(gt=0)
    rho: float = Field(default=0.9, gt=0, lt=1)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = Field(default=1e-7, gt=0)


class RecipeConfig(_Strict):
    """One training recipe (see :mod:`fastshower.train.recipes` for the presets).

    - ``batch_size``: the global batch (all ranks together); ``reference_batch`` the batch the
      learning rates and the decay schedule are given for (default: the preset's batch).
      ``lr_scaling``: ``none`` (default; neither original scales the rates with the batch),
      ``workers`` (rates x number of ranks, as the Horovod ``EcalEnergyTrain_hvd.py`` runs) or
      ``linear`` (x batch_size / reference_batch); the multiplier ramps linearly from 1 over
      ``warmup_steps`` steps (or ``warmup_epochs`` epochs).
    - ``generator_steps`` G updates after each D real + D fake pair.
    - ``micro_batches``: each rank's batch is processed in this many parts whose gradients are
      averaged before one update (gradient accumulation). BatchNorm statistics are per part, so one
      process with ``micro_batches: W`` follows the trajectory of W data-parallel ranks.
    - labels: real ``real_label`` / fake ``fake_label`` targets for D, G trained toward
      ``generator_label``; with probability ``label_flip`` (D) / ``generator_label_flip`` (G) a label
      is flipped as the Keras ``BitFlip`` does: a label 0 becomes 1, any other becomes 0.
    - ``fake_conditions``: ``real`` = fake showers get the real batch's (E, angle) and the real ECAL
      sums as targets; ``sampled`` = fresh energies, uniform over ``fake_energy_range_gev`` (default:
      the training data's range), with the ECAL-sum target from a fit of the training data (mean
      ECAL sum / E in energy bins); during the first ``early_fake_energy_epochs`` epochs uniform over
      ``early_fake_energy_range_gev`` instead (the Conv2D curriculum).
    - ``fake_batch_mode``: the generator's mode while it makes the fake batch of the D step:
      ``inference`` (Keras ``generator.predict`` / a call without ``training=True``) or ``train``.
    - ``cell_threshold_gev``: cells of the real showers below it are set to 0 (Keras ``X[X < 1e-6] = 0``).
    - ``angle_target``: ``measured`` = the angle D measures on the real shower (the Keras
      ``mtheta`` convention), ``incident`` = the true incident angle.
    - ``lr_decay_rate`` / ``lr_decay_start``: lr * exp(-rate * (s - start)) for s > start, where s is
      the number of reference-batch steps trained so far (samples seen / reference_batch), counted
      over the whole run (never reset).
    - ``relu_epoch``: epoch index from which a generator with a LeakyReLU output head switches to
      ReLU (Conv2D generators); ignored by models without the switch.
    - ``collapse_after``: steps after which all-empty generated showers (fake ECAL MAPE = 100) abort.
    - ``spread_energies`` (with ``loss_weights.spread`` > 0): ``batch`` = the spread term is taken
      on the G step's fake batch against the step's real batch; ``log_uniform`` = on an extra fake
      batch (same size) with energies uniform in ln E over the training range, against the bank of
      real showers the term's standardizer was fitted on, in the same energy slices: the low
      energies, few in a batch drawn uniform in E, get as much weight as the high ones. The two
      fake batches go through the generator together (one call): a generator with batch-statistics
      BatchNorm sees their union (the Conv2D generators' fixed-statistics BatchNorm does not care).
    - ``energy_spectrum``: the primary-energy spectrum training works on. ``data`` (default, as the
      originals): real batches in the data's spectrum, sampled fake energies uniform in E.
      ``log_uniform``: real showers drawn with replacement, weighted so that every ln-E bin of the
      data is drawn equally often, and sampled fake energies uniform in ln E. On data uniform in
      2-500 GeV the showers below 20 GeV go from 4% to 42% of what the discriminator and the
      generator see; a shower above 100 GeV is drawn about 0.36 times per epoch (0.29 of the draws
      for 0.80 of the data). ``mixed``: the equal mixture of the two: real showers drawn with
      replacement so that their spectrum is half uniform in E, half uniform in ln E over the data's
      energy range, whatever the data's own spectrum (e.g. uniform data plus extra low-energy
      files), and every other sampled fake energy uniform in E, the others uniform in ln E (23% of
      the showers below 20 GeV, 55% above 100 GeV over 2-500 GeV). ``log_uniform`` and ``mixed``
      need in-memory data (not ``data.streaming``).
    """

    preset: str
    loss_weights: LossWeights
    optimizer: OptimizerConfig
    batch_size: int = Field(gt=0)
    reference_batch: int | None = Field(default=None, gt=0)
    lr_scaling: Literal["none", "workers", "linear"] = "none"
    warmup_steps: int = Field(default=0, ge=0)
    warmup_epochs: float = Field(default=0.0, ge=0)
    generator_steps: int = Field(default=2, ge=1)
    micro_batches: int = Field(default=1, ge=1)
    label_flip: float = Field(default=0.05, ge=0, lt=0.5)
    generator_label_flip: float = Field(default=0.0, ge=0, lt=0.5)
    real_label: float = Field(default=1.0, ge=0, le=1)
    fake_label: float = Field(default=0.0, ge=0, le=1)
    generator_label: float = Field(default=1.0, ge=0, le=1)
    fake_conditions: Literal["real", "sampled"] = "real"
    fake_energy_range_gev: tuple[float, float] | None = None
    early_fake_energy_range_gev: tuple[float, float] | None = None
    early_fake_energy_epochs: int = Field(default=0, ge=0)
    fake_batch_mode: Literal["inference", "train"] = "inference"
    cell_threshold_gev: float = Field(default=0.0, ge=0)
    angle_target: Literal["measured", "incident"] = "measured"
    lr_decay_rate: float = Field(default=0.0, ge=0)
    lr_decay_start: float = Field(default=0, ge=0)
    relu_epoch: int | None = Field(default=None, ge=0)
    collapse_after: int = Field(default=10, ge=0)
    spread_energies: Literal["batch", "log_uniform"] = "batch"
    energy_spectrum: EnergySpectrum = "data"

    @property
    def lr_reference_batch(self) -> int:
        return self.reference_batch or RECIPES[self.preset]["batch_size"]


class DataPaths(_Strict):
    """``train`` and ``validation`` paths of :attr:`DataSection.fallback`."""

    train: str | list[str]
    validation: str | None = None


class DataSection(_Strict):
    """Training data.

    - ``train``: a file, a glob (``"EleEscan_*.h5"``) or a list; ``validation``: a held-out file
      (optional; without it no validation and no ``best`` generator).
    - ``geometry``: preset or YAML, when the files do not say; must be the model's geometry.
    - ``energy_range_gev``: keep events with primary energy inside [low, high].
    - ``min_deposit_gev``: keep events whose deposited energy exceeds this (the 3DGAN filter is
      sum(ECAL x 50) > 10, i.e. 0.2 GeV).
    - ``streaming``: read ``chunk_size``-event chunks, ``chunks_in_memory`` at a time, instead of
      loading everything (for data larger than memory; each rank reads only its chunks).
    - ``max_validation_events``: validation uses the first N events of the held-out file.
    - ``fallback``: ``{train, validation}`` used instead of ``train`` / ``validation`` when no file
      matches ``train`` (e.g. the shared Geant4 set first, generated GFlash files otherwise).
    - ``augment``: ``normal_incidence`` applies to each real training shower a random one of the 8
      symmetries of the square grid (x flip, y flip, x <-> y transpose and their products), which
      leave showers at normal incidence through the face centre invariant; refused for data with
      other incidence angles.
    """

    train: str | list[str]
    validation: str | None = None
    geometry: str | None = None
    energy_range_gev: tuple[float, float] | None = None
    min_deposit_gev: float = Field(default=0.0, ge=0)
    streaming: bool = False
    chunk_size: int = Field(default=1000, gt=0)
    chunks_in_memory: int = Field(default=8, gt=0)
    max_validation_events: int = Field(default=2000, gt=0)
    augment: Literal["none", "normal_incidence"] = "none"
    fallback: DataPaths | None = None

    @model_validator(mode="after")
    def _check(self) -> DataSection:
        if self.energy_range_gev is not None and not 0 <= self.energy_range_gev[0] < self.energy_range_gev[1]:
            raise ValueError("energy_range_gev must be [low, high] with 0 <= low < high")
        return self


class RunSection(_Strict):
    """How the run is executed.

    ``epochs``; ``steps_per_epoch`` caps the steps of an epoch; ``seed``; ``precision`` fp32, bf16
    (autocast, CPU or CUDA) or fp16 (autocast + GradScaler, CUDA only); ``device`` auto/cpu/cuda;
    ``checkpoint_every`` steps (and at every epoch end and the end of the run); ``keep_checkpoints``
    most recent kept; ``output_dir``: a relative one given in a config file is relative to the
    file's folder, like the data paths (``../runs/x`` in ``configs/x.yaml``: the repository's
    ``runs/x``); the default ``runs/train``, and any in a config built without a folder
    (``build_config(raw)``), are relative to the working directory;
    ``best_metric`` picks the best epoch on validation; ``tensorboard`` writes event files when the
    ``tensorboard`` package is installed (auto) or demands it (true); ``find_unused_parameters``
    and ``sync_batchnorm`` are passed to DDP.
    """

    epochs: int = Field(default=1, ge=1)
    steps_per_epoch: int | None = Field(default=None, gt=0)
    seed: int = 0
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    checkpoint_every: int = Field(default=500, gt=0)
    keep_checkpoints: int = Field(default=2, gt=0)
    output_dir: str = "runs/train"
    best_metric: Literal["profile_mse", "sampling_fraction_error"] = "profile_mse"
    validation_seed: int = 1234
    tensorboard: Literal["auto", "true", "false"] = "auto"
    find_unused_parameters: bool = False
    sync_batchnorm: bool = False
    progress: bool = True


class Stage(_Strict):
    """One stage of a multi-stage (transfer-learning) schedule: ``epochs`` with its own
    ``energy_range_gev`` (default: the data block's)."""

    epochs: int = Field(ge=1)
    energy_range_gev: tuple[float, float] | None = None


class TrainConfig(_Strict):
    model: ModelSection
    recipe: RecipeConfig
    data: DataSection
    run: RunSection = Field(default_factory=RunSection)
    stages: list[Stage] | None = None

    @model_validator(mode="after")
    def _check_spectrum(self) -> TrainConfig:
        if self.recipe.energy_spectrum != "data" and self.data.streaming:
            raise ValueError(f"recipe.energy_spectrum: {self.recipe.energy_spectrum} needs in-memory data; "
                             "set data.streaming: false")
        return self

    @property
    def total_epochs(self) -> int:
        return sum(s.epochs for s in self.stages) if self.stages else self.run.epochs

    def stage_of_epoch(self, epoch: int) -> tuple[int, tuple[float, float] | None]:
        """(stage index, energy range) in force at ``epoch`` (0-based)."""
        if not self.stages:
            return 0, self.data.energy_range_gev
        end = 0
        for i, s in enumerate(self.stages):
            end += s.epochs
            if epoch < end:
                return i, s.energy_range_gev or self.data.energy_range_gev
        raise ValueError(f"epoch {epoch} lies beyond the {end} epochs of the stages")


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for k, v in override.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def first_error(exc: ValidationError, source: str) -> str:
    """One line for a pydantic error: ``source: key.path: message (and N more)``."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
    more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
    return f"{source}: {loc}: {msg}{more}"


def build_config(raw: dict, source: str = "config", base_dir: Path | None = None) -> TrainConfig:
    """Validate a config mapping; the ``recipe`` preset is expanded and overridden; relative data
    paths and ``run.output_dir`` are resolved against ``base_dir``. Errors are one-line ValueErrors naming the key."""
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: the config must be a mapping")
    raw = dict(raw)
    model = raw.get("model")
    if isinstance(model, str):
        raw["model"] = model = {"name": model}
    recipe = raw.get("recipe")
    if recipe is None or isinstance(recipe, str):
        recipe = {"preset": recipe} if recipe else {}
    if not isinstance(recipe, dict):
        raise ValueError(f"{source}: recipe: expected a preset name or a mapping")
    name = model.get("name") if isinstance(model, dict) else None
    if not isinstance(name, str):
        raise ValueError(f"{source}: model.name: field required")
    from fastshower.models.registry import MODELS

    if name not in MODELS:
        raise ValueError(f"{source}: model.name: unknown model {name!r}; known: {', '.join(sorted(MODELS))}")
    preset = recipe.get("preset")
    if preset is None:
        try:
            preset = recipe_for_model(name)
        except ValueError as exc:
            raise ValueError(f"{source}: recipe: {exc}") from None
    if preset not in RECIPES:
        raise ValueError(f"{source}: recipe.preset: unknown recipe {preset!r}; known: {', '.join(RECIPES)}")
    raw["recipe"] = _merge(RECIPES[preset], {**recipe, "preset": preset})
    run = raw.get("run")
    if base_dir is not None and isinstance(run, dict) and isinstance(run.get("output_dir"), str):
        raw["run"] = {**run, "output_dir": _resolve(run["output_dir"], base_dir)}
    data = raw.get("data")
    if isinstance(data, dict):
        data = dict(data)
        if base_dir is not None:
            _resolve_data_paths(data, base_dir)
            if isinstance(data.get("fallback"), dict):
                data["fallback"] = dict(data["fallback"])
                _resolve_data_paths(data["fallback"], base_dir)
        fallback = data.get("fallback")
        if isinstance(fallback, dict) and not _present(data.get("train")):
            data["train"], data["validation"] = fallback.get("train"), fallback.get("validation")
        raw["data"] = data
    try:
        cfg = TrainConfig.model_validate(raw)
    except ValidationError as exc:
        raise ValueError(first_error(exc, source)) from None
    if cfg.recipe.loss_weights.real == 0 and cfg.recipe.loss_weights.energy == 0 \
            and cfg.recipe.loss_weights.ecal_sum == 0 and cfg.recipe.loss_weights.angle == 0:
        raise ValueError(f"{source}: recipe.loss_weights: all weights are zero")
    if not math.isfinite(cfg.recipe.optimizer.lr_generator + cfg.recipe.optimizer.lr_discriminator):
        raise ValueError(f"{source}: recipe.optimizer: learning rates must be finite")
    return cfg


def _resolve_data_paths(data: dict, base_dir: Path) -> None:
    for key in ("train", "validation"):
        value = data.get(key)
        if isinstance(value, str):
            data[key] = _resolve(value, base_dir)
        elif isinstance(value, list):
            data[key] = [_resolve(str(v), base_dir) for v in value]


def _present(paths: object) -> bool:
    """Whether ``paths`` (a file, a glob or a list) names at least one existing file."""
    from fastshower.data import resolve_paths

    if not isinstance(paths, (str, list)):
        return False
    try:
        return bool(resolve_paths(paths))
    except FileNotFoundError:
        return False


def _resolve(path: str, base_dir: Path) -> str:
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else base_dir / p)


def read_yaml_mapping(path: Path, what: str = "config") -> dict[str, Any]:
    """A YAML file (``yaml.safe_load``) that must hold a mapping; one-line errors otherwise."""
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: the {what} must be a mapping")
    return raw


def load_config(path: str | Path, overrides: dict[str, dict[str, Any]] | None = None) -> TrainConfig:
    """Read a YAML config (``yaml.safe_load``); ``overrides`` maps block -> {key: value} (e.g. the
    command line's ``--epochs`` and ``--out``) and is merged before validation."""
    path = Path(path)
    raw = read_yaml_mapping(path)
    if overrides:
        raw = _merge(raw, overrides)
    return build_config(raw, source=str(path), base_dir=path.parent)


def dump_config(cfg: TrainConfig) -> str:
    """The config as YAML (the preset expanded), loadable with :func:`build_config`."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
