"""The GAN trainer: one class holding the networks, optimizers, counters and data of a run.

One iteration (all recipes; 3DGAN reference notes, section 3):

1. D update on the real batch (cells below ``cell_threshold_gev`` zeroed, optionally a random
   symmetry of the grid applied), labels ``real_label`` (each flipped Keras-style with probability
   ``label_flip``: 0 -> 1, anything else -> 0), regression targets E/100, the real ECAL sum
   (``D.ecal_sum_of``) and the angle.
2. D update on a fake batch generated without gradients by G in ``fake_batch_mode`` (inference:
   Keras ``predict``), labels ``fake_label`` (flipped likewise), targets from the fake's
   conditions: the real batch's (``fake_conditions: real``) or freshly sampled energies with the
   ECAL-sum fit of the training data (``sampled``).
3. ``generator_steps`` G updates through D (D's parameters frozen, D kept in train mode as in Keras),
   target ``generator_label`` (flipped with ``generator_label_flip``), fresh noise (and fresh
   energies for ``sampled``) for each; with ``loss_weights.spread`` > 0 the G loss also has the
   spread term of :mod:`fastshower.train.spread` against the real batch of the step (its
   standardizer fitted once on up to ``SPREAD_FIT_EVENTS`` training showers), or with
   ``spread_energies: log_uniform`` on an extra fake batch at energies uniform in ln E against
   those fitted showers (the bank).

A generator with a calibrated output multiplier (the Conv2D models, ``output_scale: null``) gets it
before the first step: mean deposited energy of up to 512 training showers over the mean summed
|output| of the untrained generator for the same conditions.

Random numbers that matter for the result (noise, label flips, sampled energies) come from one
torch generator seeded with the run's seed and identical on every rank: each rank draws the
*global* batch's numbers and keeps its slice. Together with the data order of
:mod:`fastshower.train.data`, W ranks with per-rank batch B follow the same trajectory as one rank
with batch W*B, up to float summation order, for networks without batch statistics or dropout.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import random
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from fastshower.data import iter_showers, read_showers, resolve_paths
from fastshower.errors import OutputExistsError
from fastshower.fileio import write_text_atomic
from fastshower.geometry import Geometry, load_geometry
from fastshower.models.base import generate_like
from fastshower.showers import ShowerSet
from fastshower.train import checkpoint as ckpt
from fastshower.train import distributed as dist_utils
from fastshower.train.config import TrainConfig, dump_config
from fastshower.train.data import Batch, EcalFit, InMemoryData, StreamingData
from fastshower.train.losses import gan_loss
from fastshower.train.spread import ENERGY_GROUPS, FeatureStandardizer, spread_loss, spread_loss_against_bank

METRICS_JSONL = "metrics.jsonl"
METRICS_CSV = "metrics.csv"
#: training showers the spread term's standardizer is fitted on (the first ones of the data)
SPREAD_FIT_EVENTS = 2000


class TrainingCollapsed(RuntimeError):
    """The generator produces only empty showers (fake ECAL MAPE = 100)."""


class _RawGenerator(nn.Module):
    """``forward = generator.generate_raw`` (model units), so that DDP hooks the training path."""

    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, primary_energy: torch.Tensor, incident_angle: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.generator.generate_raw(primary_energy, incident_angle, noise)


def _set_requires_grad(module: nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


def _log_uniform(u: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Map uniform draws u in [0, 1) to values uniform in ln between ``low`` and ``high``."""
    return torch.exp(math.log(low) + (math.log(high) - math.log(low)) * u)


def _data_geometry(paths: list[Path] | str, geometry: Geometry | None) -> Geometry:
    return next(iter(iter_showers(paths, chunk_size=1, geometry=geometry))).geometry


class Trainer:
    """Train ``cfg.model`` with ``cfg.recipe`` on ``cfg.data``; ``resume`` continues a run directory
    (or checkpoint) exactly; ``warm_start`` loads weights only (transfer learning). The run directory
    is locked while :meth:`fit` runs (a second run on it fails at once); a new run (no ``resume``) in a
    directory that holds a run replaces it only with ``overwrite`` (else OutputExistsError)."""

    def __init__(self, cfg: TrainConfig, resume: str | Path | None = None, warm_start: str | Path | None = None,
                 output_dir: str | Path | None = None, overwrite: bool = True) -> None:
        from fastshower.models import registry

        if resume is not None and warm_start is not None:
            raise ValueError("--resume and --warm-start exclude each other")
        self.cfg = cfg
        self.recipe = cfg.recipe
        run = cfg.run
        self.train_paths = resolve_paths(cfg.data.train)
        if cfg.data.validation is not None:
            resolve_paths(cfg.data.validation)
        if output_dir is not None:
            self.out = Path(output_dir)
        elif resume is not None:  # the run directory the checkpoint belongs to
            self.out = ckpt.find_checkpoint(resume).parent.parent
        else:
            self.out = Path(run.output_dir)

        self.info = dist_utils.init(run.device)
        self.device = self.info.device
        if run.precision == "fp16" and self.device.type != "cuda":
            raise ValueError("precision fp16 needs a CUDA device (use bf16 or fp32 on the CPU)")
        if run.sync_batchnorm and self.device.type != "cuda" and self.info.distributed:
            raise ValueError("sync_batchnorm needs CUDA devices (torch's SyncBatchNorm does not run on the CPU)")
        if self.recipe.batch_size % (self.info.world * self.recipe.micro_batches):
            raise ValueError(f"batch_size {self.recipe.batch_size} is not divisible by {self.info.world} rank(s) x "
                             f"{self.recipe.micro_batches} micro-batch(es)")
        self.global_batch = self.recipe.batch_size
        self.batch = self.global_batch // self.info.world

        torch.manual_seed(run.seed)  # identical initial weights on every rank
        self.G = registry.build_generator(cfg.model.name, **cfg.model.config)
        self.D = registry.build_discriminator(cfg.model.name, **cfg.model.config)
        self.geometry = self.G.geometry
        # the config names the data's geometry (preset or YAML); the library passes the object
        self.data_geometry = load_geometry(cfg.data.geometry) if cfg.data.geometry is not None else None
        self._check_geometry()
        self.has_angle = self.recipe.loss_weights.angle > 0
        if run.sync_batchnorm and self.info.distributed:
            self.G = nn.SyncBatchNorm.convert_sync_batchnorm(self.G)
            self.D = nn.SyncBatchNorm.convert_sync_batchnorm(self.D)
        self.G.to(self.device)
        self.D.to(self.device)
        self._raw = _RawGenerator(self.G)
        if self.info.distributed:
            self.g_train: nn.Module = DDP(self._raw, find_unused_parameters=run.find_unused_parameters)
            self.d_train: nn.Module = DDP(self.D, find_unused_parameters=run.find_unused_parameters)
        else:
            self.g_train, self.d_train = self._raw, self.D

        opt = self.recipe.optimizer
        self.opt_g = self._optimizer(self.G, opt.lr_generator)
        self.opt_d = self._optimizer(self.D, opt.lr_discriminator)
        use_scaler = run.precision == "fp16"
        self.scaler_g = torch.amp.GradScaler("cuda", enabled=use_scaler)
        self.scaler_d = torch.amp.GradScaler("cuda", enabled=use_scaler)
        self.amp_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[run.precision]
        self.lr_scale = dist_utils.lr_scale(self.global_batch, self.recipe.lr_reference_batch, self.recipe.lr_scaling,
                                            self.info.world)
        self._warmup_steps = self.recipe.warmup_steps  # + warmup_epochs, converted in fit()

        self.rng = torch.Generator().manual_seed(run.seed)
        self.step = self.epoch = self.epoch_step = 0
        self.epoch_sums: dict[str, float] = {}
        self.best: float | None = None
        self.records: list[dict[str, Any]] = []
        self.relu_switched = False
        self.output_scale_ready = not getattr(self.G, "needs_output_scale", False)
        self.wall_s = self.cpu_s = 0.0  # training time so far (all epochs, across resumes)
        self._data_stage: int | None = None
        self._data: InMemoryData | StreamingData | None = None
        self._fit: EcalFit | None = None
        self._spread: FeatureStandardizer | None = None
        self._spread_bank: tuple[dict[str, torch.Tensor], torch.Tensor] | None = None  # (z, energy GeV)
        self._ranges: tuple[tuple[float, float], tuple[float, float]] | None = None
        self.validation_set: ShowerSet | None = None
        if cfg.data.validation is not None and self.info.is_main:  # validation runs on rank 0
            self.validation_set = read_showers(cfg.data.validation, geometry=self.data_geometry,
                                               max_events=cfg.data.max_validation_events)
        self.tb = self._tensorboard()

        if resume is not None:
            self._resume(resume)
        elif warm_start is not None:
            self._warm_start(warm_start)
        # per-rank streams for dropout and anything else drawing from the global RNGs
        if resume is None:
            torch.manual_seed(run.seed + self.info.rank)
            np.random.seed(run.seed + self.info.rank)
            random.seed(run.seed + self.info.rank)
        if self.info.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            with ckpt.lock_run_dir(self.out):  # held again for the whole of fit()
                if resume is None and ckpt.run_dir_in_use(self.out):
                    if not overwrite:
                        raise OutputExistsError(f"run folder {self.out} holds a run; --resume {self.out} to continue "
                                                f"it, --overwrite to replace it or --out for another folder")
                    ckpt.clear_run_dir(self.out)
                write_text_atomic(self.out / "config.yaml", dump_config(cfg))

    # ------------------------------------------------------------------ set-up helpers
    def _check_geometry(self) -> None:
        g = self.G.geometry.name
        d = self.cfg.data
        if self.data_geometry is not None and self.data_geometry.name != g:
            raise ValueError(f"data.geometry {self.data_geometry.name!r} does not match model "
                             f"{self.cfg.model.name!r}, which generates {g!r} showers")
        for what, paths in (("training", self.train_paths), ("validation", d.validation)):
            if paths is None:
                continue
            found = _data_geometry(paths, self.data_geometry).name
            if found != g:
                raise ValueError(f"the {what} data are {found!r} showers but model {self.cfg.model.name!r} "
                                 f"generates {g!r} showers")

    def _optimizer(self, module: nn.Module, lr: float) -> torch.optim.Optimizer:
        o = self.recipe.optimizer
        if o.name == "rmsprop":
            return torch.optim.RMSprop(module.parameters(), lr=lr, alpha=o.rho, eps=o.eps)
        return torch.optim.Adam(module.parameters(), lr=lr, betas=o.betas, eps=o.eps)

    def _tensorboard(self):
        mode = self.cfg.run.tensorboard
        if mode == "false" or not self.info.is_main:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            if mode == "true":
                raise ValueError("run.tensorboard is true but the tensorboard package is not installed "
                                 "(pip install tensorboard)") from None
            return None
        return SummaryWriter(str(self.out / "tensorboard"))

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def ecal_sum_of_gev(self, showers_gev: np.ndarray) -> np.ndarray:
        """The discriminator's ECAL sum (its target units) of showers given in GeV."""
        with torch.no_grad():
            x = self.G.preprocess(self._threshold(torch.from_numpy(np.ascontiguousarray(showers_gev)).to(self.device)))
            return self.D.ecal_sum_of(x).double().cpu().numpy()

    def _threshold(self, showers_gev: torch.Tensor) -> torch.Tensor:
        """Cells below the recipe's ``cell_threshold_gev`` set to 0."""
        thr = self.recipe.cell_threshold_gev
        return showers_gev if thr <= 0 else torch.where(showers_gev < thr, torch.zeros_like(showers_gev), showers_gev)

    def prepare(self) -> None:
        """Load the current stage's data and calibrate the generator's output scale if needed
        (both happen once; ``fit`` and ``validate`` call this)."""
        self.data_for_epoch(self.epoch)

    def _calibrate_output_scale(self, data: InMemoryData | StreamingData) -> None:
        """Set the generator's output multiplier from the data (see the module docstring)."""
        if self.output_scale_ready:
            return
        if isinstance(data, InMemoryData):
            showers, energy, angle = data.showers[:512], data.primary_energy[:512], data.incident_angle[:512]
        else:
            batch = next(iter(data.batches(self.cfg.run.seed, 0, 0, 1, min(512, data.n_events), 0, 1)))
            showers, energy, angle = batch.showers, batch.primary_energy, batch.incident_angle
        g = torch.Generator().manual_seed(self.cfg.run.seed + 1)
        was_training = self.G.training
        self.G.eval()
        try:
            with torch.no_grad():
                noise = self.G.sample_noise(len(energy), generator=g).to(self.device)
                e = torch.as_tensor(energy, dtype=torch.float32, device=self.device)
                a = torch.as_tensor(angle, dtype=torch.float32, device=self.device)
                raw = self.G.generate_raw(e, a, noise).float() / self.G.output_scale
                # in model units: with a cell power p the network's cells are (scale x GeV) ** p
                real_gev = self._threshold(torch.from_numpy(np.ascontiguousarray(showers)).to(self.device))
                real = self.G.preprocess(real_gev)
                scale = float(real.sum(dim=(1, 2, 3)).mean() / raw.abs().sum(dim=(1, 2, 3)).mean())
        finally:
            self.G.train(was_training)
        scale = float(dist_utils.broadcast_from_main(scale, self.info))
        self.G.set_output_scale(scale)
        self.output_scale_ready = True

    def _fit_spread(self, data: InMemoryData | StreamingData) -> FeatureStandardizer:
        """The spread term's standardizer, fitted on the first training showers (thresholded); their
        z values become the bank of ``spread_energies: log_uniform``."""
        n = min(SPREAD_FIT_EVENTS, data.n_events)
        if isinstance(data, InMemoryData):
            showers, energy = data.showers[:n], data.primary_energy[:n]
        else:
            batch = next(iter(data.batches(self.cfg.run.seed, 0, 0, 1, n, 0, 1)))
            showers, energy = batch.showers, batch.primary_energy
        showers = self._threshold(torch.from_numpy(np.ascontiguousarray(showers))).numpy()
        standardizer = FeatureStandardizer.fit(showers, energy)
        e = torch.as_tensor(energy, dtype=torch.float32)
        with torch.no_grad():
            z = standardizer.z_scores(torch.from_numpy(showers), e)
        self._spread_bank = ({g: v.to(self.device) for g, v in z.items()}, e.to(self.device))
        return standardizer

    def data_for_epoch(self, epoch: int) -> InMemoryData | StreamingData:
        """The training data of the stage ``epoch`` belongs to (built once per stage)."""
        stage, energy_range = self.cfg.stage_of_epoch(epoch)
        if self._data_stage != stage:
            d = self.cfg.data
            need_fit = self.recipe.fake_conditions == "sampled"
            if d.streaming:
                self._data = StreamingData(self.train_paths, self.geometry, energy_range, d.min_deposit_gev,
                                           d.chunk_size, d.chunks_in_memory,
                                           self.ecal_sum_of_gev if need_fit else None)
            else:
                self._data = InMemoryData(self.train_paths, self.geometry, energy_range, d.min_deposit_gev,
                                          d.chunk_size, self.recipe.energy_spectrum)
            self._fit = self._data.fit(self.ecal_sum_of_gev, d.chunk_size) if need_fit else None
            self._ranges = self._data.condition_ranges()
            self._data_stage = stage
            if d.augment == "normal_incidence" and not np.allclose(self._ranges[1], math.pi / 2, atol=1e-6):
                raise ValueError("data.augment: normal_incidence needs showers at normal incidence (angle pi/2); "
                                 f"the training data have angles {self._ranges[1]} rad")
            self._calibrate_output_scale(self._data)
            if self.recipe.loss_weights.spread > 0:
                self._spread = self._fit_spread(self._data)
        assert self._data is not None
        return self._data

    def steps_in_epoch(self, epoch: int) -> int:
        data = self.data_for_epoch(epoch)
        n = data.steps_per_epoch(self.cfg.run.seed, epoch, self.info.world, self.global_batch)
        if n == 0:
            raise ValueError(f"the training data ({data.n_events} events after the filters) do not fill one "
                             f"batch of {self.global_batch} (per rank {self.batch})")
        cap = self.cfg.run.steps_per_epoch
        return min(n, cap) if cap else n

    # ------------------------------------------------------------------ random draws
    def _draw(self, fn: Callable[[int], torch.Tensor]) -> torch.Tensor:
        """``fn(global batch)`` from the shared generator; this rank's slice, on the device."""
        r = self.info.rank
        return fn(self.global_batch)[r * self.batch:(r + 1) * self.batch].to(self.device)

    def _noise(self) -> torch.Tensor:
        return self._draw(lambda n: self.G.sample_noise(n, generator=self.rng))

    def _labels(self, value: float, flip_probability: float) -> torch.Tensor:
        """``value`` for each event, flipped with ``flip_probability`` as Keras ``BitFlip`` does
        (``logical_not``: 0 becomes 1, anything else 0)."""
        flip = self._draw(lambda n: torch.rand(n, generator=self.rng)) < flip_probability
        flipped = 1.0 if value == 0 else 0.0
        return torch.where(flip, torch.full_like(flip, flipped, dtype=torch.float32),
                           torch.full_like(flip, value, dtype=torch.float32))

    def _augment(self, showers: torch.Tensor) -> torch.Tensor:
        """A random symmetry of the square grid per shower (x flip, y flip, x <-> y transpose)."""
        bits = self._draw(lambda n: torch.rand(n, 3, generator=self.rng)) < 0.5
        m = [b.view(-1, 1, 1, 1) for b in bits.unbind(1)]
        showers = torch.where(m[0], showers.flip(1), showers)
        showers = torch.where(m[1], showers.flip(2), showers)
        return torch.where(m[2], showers.transpose(1, 2), showers)

    def fake_energy_range(self) -> tuple[float, float]:
        """Energies (GeV) of sampled fake showers in the current epoch."""
        rc = self.recipe
        if rc.early_fake_energy_range_gev is not None and self.epoch < rc.early_fake_energy_epochs:
            return rc.early_fake_energy_range_gev
        if rc.fake_energy_range_gev is not None:
            return rc.fake_energy_range_gev
        assert self._ranges is not None
        return self._ranges[0]

    def _log_uniform_conditions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Energies (GeV) uniform in ln E over the training range and angles uniform over theirs."""
        assert self._ranges is not None
        (elo, ehi), (alo, ahi) = self._ranges
        u = self._draw(lambda n: torch.rand(n, 2, generator=self.rng, dtype=torch.float64))
        return _log_uniform(u[:, 0], elo, ehi).float(), (alo + (ahi - alo) * u[:, 1]).float()

    def _sampled_conditions(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Fresh energies over the fake-energy range (uniform in E; in ln E with ``energy_spectrum:
        log_uniform``; with ``mixed`` the even batch positions uniform in E, the odd ones in ln E),
        angles and their ECAL-sum targets."""
        assert self._ranges is not None and self._fit is not None
        (elo, ehi), (alo, ahi) = self.fake_energy_range(), self._ranges[1]
        spectrum = self.recipe.energy_spectrum

        def global_batch(n: int) -> torch.Tensor:  # positions of the global batch, before the rank's slice
            u = torch.rand(n, 2, generator=self.rng, dtype=torch.float64)
            log_uniform = torch.full((n,), spectrum == "log_uniform")
            log_uniform[1::2] |= spectrum == "mixed"
            energy = torch.where(log_uniform, _log_uniform(u[:, 0], elo, ehi), elo + (ehi - elo) * u[:, 0])
            return torch.stack([energy, alo + (ahi - alo) * u[:, 1]], dim=1)

        energy, angle = self._draw(global_batch).cpu().numpy().T
        ecal = self._fit(energy)
        def as_t(a):
            return torch.as_tensor(a, dtype=torch.float32, device=self.device)
        return as_t(energy), as_t(angle), as_t(ecal)

    # ------------------------------------------------------------------ one iteration
    def _fake_conditions(self, real: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """(energy GeV, angle rad, ECAL-sum target, angle target) of a fake batch: the real batch's
        (``fake_conditions: real``) or freshly sampled ones with the fitted ECAL sum."""
        if self.recipe.fake_conditions == "real":
            return real
        e, a, ecal = self._sampled_conditions()
        return e, a, ecal, a

    def _update(self, module: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                loss_fn: Callable[[slice], tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]],
                prefix: str) -> tuple[dict[str, float], list[dict[str, torch.Tensor]]]:
        """One optimizer step of ``module`` on this rank's batch, as ``recipe.micro_batches`` parts.

        ``loss_fn(part)`` returns (loss, terms, outputs) of one part; gradients of the parts are
        averaged (DDP syncs only after the last). Returns the part-averaged loss and terms, named
        ``<prefix>loss`` and ``<prefix><term>``, and the outputs of every part.
        """
        m = self.recipe.micro_batches
        size = self.batch // m
        optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        outputs = []
        for k in range(m):
            last = k == m - 1
            sync = contextlib.nullcontext() if last or not isinstance(module, DDP) else module.no_sync()
            with sync:
                loss, terms, out = loss_fn(slice(k * size, (k + 1) * size))
                scaler.scale(loss / m).backward()
            outputs.append(out)
            for name, value in (("loss", loss), *terms.items()):
                sums[prefix + name] = sums.get(prefix + name, 0.0) + value.item() / m
        scaler.step(optimizer)
        scaler.update()
        return sums, outputs

    def _set_lr(self) -> dict[str, float]:
        reference_steps = self.step * self.global_batch / self.recipe.lr_reference_batch
        f = dist_utils.lr_factor(self.step, reference_steps, self.lr_scale, self._warmup_steps,
                                 self.recipe.lr_decay_rate, self.recipe.lr_decay_start)
        lrs = {"lr_generator": self.recipe.optimizer.lr_generator * f,
               "lr_discriminator": self.recipe.optimizer.lr_discriminator * f}
        for group in self.opt_g.param_groups:
            group["lr"] = lrs["lr_generator"]
        for group in self.opt_d.param_groups:
            group["lr"] = lrs["lr_discriminator"]
        return lrs

    def _spread_term(self, x_fake: torch.Tensor, energy_fake: torch.Tensor, z_real: dict[str, torch.Tensor] | None,
                     energy_real: torch.Tensor | None) -> torch.Tensor:
        """The spread term of fake showers (model units) against the real batch's z, or with
        ``spread_energies: log_uniform`` (``z_real`` None) against the bank."""
        assert self._spread is not None
        z_fake = self._spread.z_scores(self.G.postprocess(x_fake.float()), energy_fake)
        if z_real is None:
            assert self._spread_bank is not None
            z_bank, e_bank = self._spread_bank
            groups = min(ENERGY_GROUPS, len(energy_fake))
            return spread_loss_against_bank(z_fake, energy_fake, z_bank, e_bank, groups)[0]
        assert energy_real is not None
        return spread_loss(z_fake, z_real, energy_fake, energy_real,
                           min(ENERGY_GROUPS, len(energy_fake), len(energy_real)))[0]

    def train_step(self, batch: Batch) -> dict[str, float]:
        """One iteration on this rank's ``batch``; returns the (unweighted) loss terms and totals."""
        rc, w = self.recipe, self.recipe.loss_weights
        dev = self.device
        real_gev = self._threshold(torch.from_numpy(np.ascontiguousarray(batch.showers)).to(dev))
        if self.cfg.data.augment == "normal_incidence":
            real_gev = self._augment(real_gev)
        energy = torch.as_tensor(batch.primary_energy, dtype=torch.float32, device=dev)
        angle = torch.as_tensor(batch.incident_angle, dtype=torch.float32, device=dev)
        measured = self.has_angle and rc.angle_target == "measured"
        with torch.no_grad():
            x_real = self.G.preprocess(real_gev)
            ecal_real = self.D.ecal_sum_of(x_real).float()
            z_real = None
            if self._spread is not None and rc.spread_energies == "batch":
                z_real = self._spread.z_scores(real_gev, energy)
        out: dict[str, float] = {}

        # D on the real batch
        _set_requires_grad(self.D, True)
        labels = self._labels(rc.real_label, rc.label_flip)

        def d_real(part: slice):
            with self._autocast():
                d_out = self.d_train(x_real[part])
            ang = d_out["angle"].detach().float() if measured and "angle" in d_out else angle[part]
            loss, terms = gan_loss(d_out, labels[part], energy[part] / 100, ecal_real[part], ang, w)
            return loss, terms, {"angle": ang}

        sums, outs = self._update(self.d_train, self.opt_d, self.scaler_d, d_real, "d_real_")
        out.update(sums)
        angle_real = torch.cat([o["angle"] for o in outs])

        # D on a fake batch (generated part by part: the generator's BN sees the same groups)
        real_conditions = (energy, angle, ecal_real, angle_real)
        e_fake, a_fake, ecal_fake, ang_fake = self._fake_conditions(real_conditions)
        noise = self._noise()
        labels = self._labels(rc.fake_label, rc.label_flip)

        def d_fake(part: slice):
            self.G.train(rc.fake_batch_mode == "train")
            try:
                with torch.no_grad(), self._autocast():
                    x_fake = self.G.generate_raw(e_fake[part], a_fake[part], noise[part])
            finally:
                self.G.train()
            with self._autocast():
                d_out = self.d_train(x_fake.float())
            loss, terms = gan_loss(d_out, labels[part], e_fake[part] / 100, ecal_fake[part], ang_fake[part], w)
            return loss, terms, {}

        sums, _ = self._update(self.d_train, self.opt_d, self.scaler_d, d_fake, "d_fake_")
        out.update(sums)

        # G steps through the frozen D
        _set_requires_grad(self.D, False)
        collapsed = True
        for _ in range(rc.generator_steps):
            e_g, a_g, ecal_g, ang_g = self._fake_conditions(real_conditions)
            noise = self._noise()
            if self._spread is not None and rc.spread_energies == "log_uniform":
                e_s, a_s = self._log_uniform_conditions()
                noise_s = self._noise()
            target = self._labels(rc.generator_label, rc.generator_label_flip)

            def g_step(part: slice):  # called within this iteration (by _update): the loop variables are current
                extra = self._spread is not None and rc.spread_energies == "log_uniform"
                with self._autocast():
                    if extra:  # one generator call for both batches (DDP allows one forward per backward)
                        n = len(e_g[part])  # noqa: B023
                        x_all = self.g_train(torch.cat([e_g[part], e_s[part]]), torch.cat([a_g[part], a_s[part]]),  # noqa: B023
                                             torch.cat([noise[part], noise_s[part]]))  # noqa: B023
                        x_fake, x_spread = x_all[:n], x_all[n:]
                    else:
                        x_fake = self.g_train(e_g[part], a_g[part], noise[part])  # noqa: B023
                    g_out = self.D(x_fake)
                loss, terms = gan_loss(g_out, target[part], e_g[part] / 100, ecal_g[part], ang_g[part], w)  # noqa: B023
                if self._spread is not None:
                    if extra:
                        terms["spread"] = self._spread_term(x_spread, e_s[part], None, None)  # noqa: B023
                    else:
                        terms["spread"] = self._spread_term(x_fake, e_g[part], z_real, energy)  # noqa: B023
                    loss = loss + w.spread * terms["spread"]
                return loss, terms, {"ecal_sum": g_out["ecal_sum"].detach()}

            sums, outs = self._update(self.g_train, self.opt_g, self.scaler_g, g_step, "g_")
            collapsed &= all(bool((o["ecal_sum"] == 0).all()) for o in outs)
            for k, v in sums.items():
                out[k] = out.get(k, 0.0) + v / rc.generator_steps
        _set_requires_grad(self.D, True)
        if self.step >= rc.collapse_after and not dist_utils.any_rank(not collapsed, self.info):
            raise TrainingCollapsed(
                f"generator collapsed at epoch {self.epoch} step {self.step}: every generated shower is empty "
                f"(fake ECAL MAPE = 100); resume from the last checkpoint in {self.out / ckpt.CHECKPOINT_DIR} "
                f"with a lower learning rate or another seed")
        return out

    # ------------------------------------------------------------------ validation
    def generate_like(self, reference: ShowerSet, batch_size: int = 256) -> ShowerSet:
        """Showers for ``reference``'s conditions (fixed validation seed), generator in eval mode."""
        self.G.eval()
        try:
            with self._autocast():
                return generate_like(self.G, reference, self.cfg.run.validation_seed, batch_size)
        finally:
            self.G.train()

    def validate(self) -> dict[str, float]:
        """Profile MSE and sampling-fraction error of the generator against the held-out file, and
        the discriminator's energy regression on it (``d_energy_mape``, %)."""
        from fastshower.data.summaries import quick_metrics  # one definition, shared with validate and infer

        if self.validation_set is None:
            raise ValueError("no validation file configured (data.validation)")
        self.prepare()
        return {**quick_metrics(self.validation_set, self.generate_like(self.validation_set)),
                "d_energy_mape": self.discriminator_energy_mape(self.validation_set)}

    def discriminator_energy_mape(self, showers: ShowerSet, batch_size: int = 256) -> float:
        """Keras MAPE (%) of the discriminator's energy head (E / 100 GeV) on ``showers``, D in eval mode."""
        from fastshower.train.losses import mape

        preds = []
        self.D.eval()
        try:
            with torch.no_grad(), self._autocast():
                for i in range(0, len(showers), batch_size):
                    x = self._threshold(torch.from_numpy(np.ascontiguousarray(showers.showers[i:i + batch_size]))
                                        .to(self.device))
                    preds.append(self.D(self.G.preprocess(x))["energy"].float().cpu())
        finally:
            self.D.train()
        target = torch.as_tensor(showers.primary_energy, dtype=torch.float32) / 100
        return float(mape(target, torch.cat(preds)))

    # ------------------------------------------------------------------ the loop
    def fit(self, on_epoch_end: Callable[[dict[str, Any]], None] | None = None,
            should_stop: Callable[[], bool] | None = None) -> list[dict[str, Any]]:
        """Train up to ``cfg.total_epochs``; returns the per-epoch records (also in metrics.jsonl/csv).

        ``on_epoch_end(record)`` is called on the main rank after each epoch's record (validation
        included) is written; an exception it raises ends training (e.g. a pruned HPO trial).
        ``should_stop()`` is asked after every step: when true, the epoch ends there (validated and
        checkpointed as usual) and training stops (e.g. a time budget); under torchrun it must give
        the same answer on every rank.
        """
        with ckpt.lock_run_dir(self.out) if self.info.is_main else contextlib.nullcontext():
            return self._fit_locked(on_epoch_end, should_stop)

    def _fit_locked(self, on_epoch_end, should_stop) -> list[dict[str, Any]]:
        from tqdm import tqdm

        total = self.cfg.total_epochs
        self.prepare()
        first = self.steps_in_epoch(0) if total > 0 else 0
        self._warmup_steps = self.recipe.warmup_steps + round(self.recipe.warmup_epochs * first)
        stopped = False
        try:
            while self.epoch < total:
                n_steps = self.steps_in_epoch(self.epoch)
                data = self.data_for_epoch(self.epoch)
                self._maybe_switch_relu()
                t0, c0 = time.perf_counter(), time.process_time()
                steps_before = self.epoch_step
                bar = tqdm(total=n_steps, initial=self.epoch_step, desc=f"epoch {self.epoch + 1}/{total}",
                           unit="step", disable=not (self.info.is_main and self.cfg.run.progress))
                lrs = self._set_lr()
                for batch in data.batches(self.cfg.run.seed, self.epoch, self.info.rank, self.info.world,
                                          self.global_batch, self.epoch_step, n_steps):
                    lrs = self._set_lr()
                    terms = self.train_step(batch)
                    for k, v in terms.items():
                        self.epoch_sums[k] = self.epoch_sums.get(k, 0.0) + v
                    self.step += 1
                    self.epoch_step += 1
                    bar.update(1)
                    bar.set_postfix(d=f"{terms['d_real_loss'] + terms['d_fake_loss']:.3g}", g=f"{terms['g_loss']:.3g}")
                    if self.step % self.cfg.run.checkpoint_every == 0:
                        self.save_checkpoint()
                    if should_stop is not None and should_stop():
                        stopped = True
                        break
                bar.close()
                elapsed = time.perf_counter() - t0
                self.wall_s += elapsed
                self.cpu_s += time.process_time() - c0
                done = self.epoch_step - steps_before
                self._end_epoch(done if stopped else n_steps, lrs, elapsed, done * self.global_batch)
                self.save_checkpoint()
                if on_epoch_end is not None and self.info.is_main:
                    on_epoch_end(self.records[-1])
                if stopped:
                    break
        finally:
            if self.tb is not None:
                self.tb.flush()
        if self.info.is_main:
            self._save_generator(self.out / "generator", {"epoch": self.epoch, "step": self.step})
        dist_utils.barrier(self.info)
        return self.records

    def close(self) -> None:
        """Flush TensorBoard and leave the process group (torchrun runs)."""
        if self.tb is not None:
            self.tb.close()
        dist_utils.shutdown(self.info)

    def _maybe_switch_relu(self, force: bool = False) -> None:
        """From ``recipe.relu_epoch`` on (or when ``force``), switch a generator that has a
        ``use_relu_output`` method (the Conv2D generators) to its ReLU output head."""
        epoch = self.recipe.relu_epoch
        if self.relu_switched or not (force or (epoch is not None and self.epoch >= epoch)):
            return
        switch = getattr(self.G, "use_relu_output", None)
        if switch is not None:
            switch()
        self.relu_switched = True

    def _end_epoch(self, n_steps: int, lrs: dict[str, float], elapsed: float, samples: int) -> None:
        means = dist_utils.mean_over_ranks({k: v / max(n_steps, 1) for k, v in self.epoch_sums.items()}, self.info)
        record: dict[str, Any] = {"epoch": self.epoch + 1, "step": self.step,
                                  "stage": self.cfg.stage_of_epoch(self.epoch)[0], **lrs,
                                  "time_s": round(elapsed, 3), "wall_s_total": round(self.wall_s, 3),
                                  "cpu_s_total": round(self.cpu_s, 3),
                                  "samples_per_s": round(samples / elapsed, 3) if elapsed > 0 and samples else None,
                                  **means}
        if self.validation_set is not None and self.info.is_main:
            val = self.validate()
            record.update({f"val_{k}": v for k, v in val.items()})
            score = val[self.cfg.run.best_metric]
            if math.isfinite(score) and (self.best is None or score < self.best):
                self.best = score
                record["best"] = True
                self._save_generator(self.out / "best", {"epoch": self.epoch + 1, "step": self.step,
                                                         "validation": val})
        self.epoch += 1
        self.epoch_step = 0
        self.epoch_sums = {}
        if self.info.is_main:
            self.records.append(record)
            self._write_records()
            if self.tb is not None:
                for k, v in record.items():
                    if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "epoch":
                        self.tb.add_scalar(k, v, self.epoch)
        self.best = dist_utils.broadcast_from_main(self.best, self.info)

    def _write_records(self) -> None:
        write_text_atomic(self.out / METRICS_JSONL, "".join(json.dumps(r) + "\n" for r in self.records))
        keys: list[str] = []
        for r in self.records:
            keys += [k for k in r if k not in keys]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys)
        writer.writeheader()
        writer.writerows(self.records)
        write_text_atomic(self.out / METRICS_CSV, buf.getvalue())

    def _save_generator(self, stem: Path, extra: dict[str, Any]) -> None:
        from fastshower.models import registry

        meta = {"trained_by": "fastshower train", "model": self.cfg.model.name, "model_config": self.cfg.model.config,
                "recipe": self.recipe.preset, "seed": self.cfg.run.seed, **extra}
        registry.save_generator(self.G, stem, meta)

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path | None:
        """Write a checkpoint (rank 0; every rank contributes its RNG states). Returns its path on rank 0."""
        host = ckpt.host_rng_state()
        states = dist_utils.gather_to_main(host, self.info)
        if not self.info.is_main:
            return None
        assert states is not None
        state = {"optimizer_generator": self.opt_g.state_dict(), "optimizer_discriminator": self.opt_d.state_dict(),
                 "scaler_generator": self.scaler_g.state_dict(), "scaler_discriminator": self.scaler_d.state_dict(),
                 "rng": self.rng.get_state(),
                 "torch_rng": [s["torch"] for s in states], "cuda_rng": [s["cuda"] for s in states]}
        meta = {"step": self.step, "epoch": self.epoch, "epoch_step": self.epoch_step, "world": self.info.world,
                "epoch_sums": self.epoch_sums, "best": self.best, "relu_switched": self.relu_switched,
                "wall_s": self.wall_s, "cpu_s": self.cpu_s,
                "host_rng": [{"python": s["python"], "numpy": s["numpy"]} for s in states],
                "model": self.cfg.model.name, "model_config": self.cfg.model.config, "config": dump_config(self.cfg)}
        return ckpt.save_checkpoint(self.out, self.step, self.G, self.D, state, meta, self.cfg.run.keep_checkpoints)

    def _load_models(self, path: str | Path, need_discriminator: bool) -> None:
        from fastshower.models.registry import load_state

        gen, disc = ckpt.load_weights(path)
        load_state(self.G, gen, path)
        if getattr(self.G, "needs_output_scale", False):  # the loaded weights bring their scale
            self.G.set_output_scale(float(self.G.output_scale))
            self.output_scale_ready = True
        if disc is not None:
            load_state(self.D, disc, path)
        elif need_discriminator:
            raise ValueError(f"{path} holds no discriminator weights")

    def _resume(self, path: str | Path) -> None:
        where, state, meta = ckpt.load_checkpoint(path)
        if meta["model"] != self.cfg.model.name or meta["model_config"] != self.cfg.model.config:
            raise ValueError(f"{where} was trained with model {meta['model']!r} {meta['model_config']}, not "
                             f"{self.cfg.model.name!r} {self.cfg.model.config}")
        saved_batch = yaml.safe_load(meta.get("config", "")).get("recipe", {}).get("batch_size") \
            if meta.get("config") else None
        if saved_batch is not None and saved_batch != self.global_batch:
            warnings.warn(f"{where} was trained with batch_size {saved_batch}, this run uses {self.global_batch}: "
                          f"a valid continuation, but not the same run (data order and learning-rate scaling "
                          f"change)", UserWarning, stacklevel=2)
        if meta["relu_switched"]:
            self._maybe_switch_relu(force=True)
        self._load_models(where, need_discriminator=True)
        self.opt_g.load_state_dict(state["optimizer_generator"])
        self.opt_d.load_state_dict(state["optimizer_discriminator"])
        self.scaler_g.load_state_dict(state["scaler_generator"])
        self.scaler_d.load_state_dict(state["scaler_discriminator"])
        self.rng.set_state(state["rng"])
        self.step, self.epoch, self.epoch_step = meta["step"], meta["epoch"], meta["epoch_step"]
        self.epoch_sums, self.best = meta["epoch_sums"], meta["best"]
        self.wall_s, self.cpu_s = meta.get("wall_s", 0.0), meta.get("cpu_s", 0.0)
        if meta["world"] == self.info.world:
            r = self.info.rank
            ckpt.restore_host_rng_state({**meta["host_rng"][r], "torch": state["torch_rng"][r],
                                         "cuda": state["cuda_rng"][r]})
        else:  # another world size: a valid continuation, but not bitwise the same run
            torch.manual_seed(self.cfg.run.seed + 7919 * self.step + self.info.rank)
            np.random.seed(self.cfg.run.seed + self.info.rank)
            random.seed(self.cfg.run.seed + self.info.rank)
        log = self.out / METRICS_JSONL
        if log.is_file():  # drop epochs logged after the checkpoint was taken
            self.records = [r for r in map(json.loads, log.read_text().splitlines()) if r["epoch"] <= self.epoch]

    def _warm_start(self, path: str | Path) -> None:
        self._load_models(path, need_discriminator=False)
