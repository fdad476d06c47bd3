"""Training data: filtering, per-epoch permutation, sharding over ranks, in memory or streamed.

Both sources are deterministic functions of (seed, epoch, rank, world size), so the data order of a
resumed run is recomputed, not stored: a checkpoint only records the epoch and the step inside it.

- :class:`InMemoryData` keeps the filtered events in memory. Each epoch draws one permutation of
  all events (from ``(seed, epoch)``); global batch ``s`` is ``perm[s*GB:(s+1)*GB]`` and rank ``r``
  takes its ``r``-th slice of ``GB / world`` events. A run on W ranks therefore sees exactly the
  events and the order of a one-rank run with the same global batch. With
  ``energy_spectrum="log_uniform"`` (``"mixed"``) the epoch's order is instead as many draws with
  replacement, weighted by :func:`log_uniform_weights` (:func:`mixed_spectrum_weights`).
- :class:`StreamingData` never holds more than ``chunks_in_memory`` chunks of ``chunk_size``
  events. One pass at start counts the events that pass the filters per chunk. Each epoch permutes
  the chunks; rank ``r`` reads chunks ``r, r + W, ...`` of that order, ``chunks_in_memory`` at a
  time, shuffles each buffer and cuts it into per-rank batches (a buffer's remainder is dropped).
  Every rank runs the same number of steps, the smallest any rank can fill.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastshower.data import iter_showers, read_events, resolve_paths
from fastshower.geometry import Geometry
from fastshower.showers import ShowerSet
from fastshower.train.config import EnergySpectrum

#: Number of energy bins of the ECAL-sum fit (quantile bins of the training energies).
FIT_BINS = 20
#: Number of equal bins in ln E over which :func:`log_uniform_weights` flattens the spectrum.
SPECTRUM_BINS = 20


@dataclass(frozen=True)
class Batch:
    """One rank's batch: showers in GeV (B, *shape) float32, energies GeV (B,), angles rad (B,)."""

    showers: np.ndarray
    primary_energy: np.ndarray
    incident_angle: np.ndarray


def event_mask(part: ShowerSet, energy_range_gev: tuple[float, float] | None, min_deposit_gev: float) -> np.ndarray:
    """Events kept for training: primary energy inside the range (inclusive) and deposit above the threshold."""
    keep = part.deposited_energy > min_deposit_gev
    if energy_range_gev is not None:
        keep &= (part.primary_energy >= energy_range_gev[0]) & (part.primary_energy <= energy_range_gev[1])
    return keep


def _weights_by_log_energy_bin(primary_energy: np.ndarray, n_bins: int,
                               shares: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Event probabilities (sum 1) that draw each of ``n_bins`` equal bins in ln E between the lowest
    and the highest energy in proportion to ``shares(ln-E bin edges)``, the events of a bin equally
    often (empty bins are left out); uniform over the events when all energies are equal."""
    log_e = np.log(np.asarray(primary_energy, dtype=np.float64))
    lo, hi = log_e.min(), log_e.max()
    if hi <= lo:
        return np.full(len(log_e), 1.0 / len(log_e))
    idx = np.minimum(((log_e - lo) / (hi - lo) * n_bins).astype(int), n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins)
    weights = shares(np.linspace(lo, hi, n_bins + 1))[idx] / counts[idx]
    return weights / weights.sum()


def log_uniform_weights(primary_energy: np.ndarray, n_bins: int = SPECTRUM_BINS) -> np.ndarray:
    """Probabilities (sum 1) for drawing events so that each of ``n_bins`` equal bins in ln E between
    the lowest and the highest energy is drawn equally often (events share their bin's probability
    equally; empty bins are left out). For data uniform in E this is close to a 1/E spectrum."""
    return _weights_by_log_energy_bin(primary_energy, n_bins, lambda edges: np.ones(n_bins))


def mixed_spectrum_weights(primary_energy: np.ndarray, n_bins: int = SPECTRUM_BINS) -> np.ndarray:
    """Probabilities (sum 1) that draw the events' ln-E bins (as :func:`log_uniform_weights`) as the
    equal mixture of a spectrum uniform in E and one uniform in ln E over the data's energy range,
    whatever the data's own spectrum (data uniform in E, or with extra low-energy files)."""

    def shares(log_edges: np.ndarray) -> np.ndarray:
        e = np.exp(log_edges)
        return 0.5 * np.diff(e) / (e[-1] - e[0]) + 0.5 / n_bins

    return _weights_by_log_energy_bin(primary_energy, n_bins, shares)


def spectrum_weights(primary_energy: np.ndarray,
                     energy_spectrum: EnergySpectrum) -> np.ndarray | None:
    """Draw probabilities of the events for ``recipe.energy_spectrum`` (None = the data's spectrum,
    one permutation per epoch; :func:`log_uniform_weights`; :func:`mixed_spectrum_weights`)."""
    if energy_spectrum == "data":
        return None
    if energy_spectrum == "mixed":
        return mixed_spectrum_weights(primary_energy)
    return log_uniform_weights(primary_energy)


@dataclass(frozen=True)
class EcalFit:
    """ECAL-sum target of fake showers: ``ecal_sum(E) = E * ratio(E)``, ``ratio`` linearly
    interpolated between the mean ECAL-sum / E of the training events in energy bins (flat beyond
    the outer bins). Units of the ECAL sum are the model's (``D.ecal_sum_of``)."""

    energy_gev: np.ndarray
    ratio: np.ndarray

    def __call__(self, primary_energy: np.ndarray) -> np.ndarray:
        return primary_energy * np.interp(primary_energy, self.energy_gev, self.ratio)


def fit_ecal_sum(primary_energy: np.ndarray, ecal_sum: np.ndarray, n_bins: int = FIT_BINS) -> EcalFit:
    """Mean of ecal_sum / E vs mean E in quantile bins of E (at most ``n_bins``, at least 2 events each)."""
    if len(primary_energy) == 0:
        raise ValueError("no training events left to fit the ECAL sum")
    n_bins = max(1, min(n_bins, len(primary_energy) // 2))
    edges = np.unique(np.quantile(primary_energy, np.linspace(0, 1, n_bins + 1)))
    idx = np.clip(np.searchsorted(edges, primary_energy, side="right") - 1, 0, max(len(edges) - 2, 0))
    bins = np.unique(idx)
    ratio = ecal_sum / primary_energy
    return EcalFit(np.array([primary_energy[idx == b].mean() for b in bins]),
                   np.array([ratio[idx == b].mean() for b in bins]))


class _Conditions:
    """What both training-data classes derive from their ``primary_energy`` / ``incident_angle``."""

    primary_energy: np.ndarray
    incident_angle: np.ndarray

    @property
    def n_events(self) -> int:
        return len(self.primary_energy)

    def condition_ranges(self) -> tuple[tuple[float, float], tuple[float, float]]:
        return ((float(self.primary_energy.min()), float(self.primary_energy.max())),
                (float(self.incident_angle.min()), float(self.incident_angle.max())))


class InMemoryData(_Conditions):
    """All filtered training events in memory (see the module docstring for the order)."""

    def __init__(self, paths: list[Path], geometry: Geometry, energy_range_gev: tuple[float, float] | None,
                 min_deposit_gev: float, chunk_size: int = 1000,
                 energy_spectrum: EnergySpectrum = "data") -> None:
        parts = []
        for part in iter_showers(paths, chunk_size=chunk_size, geometry=geometry):
            parts.append(part[event_mask(part, energy_range_gev, min_deposit_gev)])
        data = ShowerSet.concatenate(parts)
        if len(data) == 0:
            raise ValueError(f"no training event passes the filters (energy range {energy_range_gev} GeV, "
                             f"deposit > {min_deposit_gev} GeV)")
        self.showers = data.showers
        self.primary_energy = data.primary_energy
        self.incident_angle = data.incident_angle
        self._draw_weights = spectrum_weights(self.primary_energy, energy_spectrum)

    def fit(self, ecal_sum_of: Callable[[np.ndarray], np.ndarray], chunk_size: int = 1000) -> EcalFit:
        sums = np.concatenate([ecal_sum_of(self.showers[i:i + chunk_size])
                               for i in range(0, self.n_events, chunk_size)])
        return fit_ecal_sum(self.primary_energy, sums)

    def steps_per_epoch(self, seed: int, epoch: int, world: int, global_batch: int) -> int:
        return self.n_events // global_batch

    def batches(self, seed: int, epoch: int, rank: int, world: int, global_batch: int, start_step: int,
                n_steps: int) -> Iterator[Batch]:
        rng = np.random.default_rng([seed, epoch])
        if self._draw_weights is None:
            perm = rng.permutation(self.n_events)
        else:
            perm = rng.choice(self.n_events, size=self.n_events, p=self._draw_weights)
        per_rank = global_batch // world
        for s in range(start_step, n_steps):
            idx = perm[s * global_batch + rank * per_rank: s * global_batch + (rank + 1) * per_rank]
            yield Batch(self.showers[idx], self.primary_energy[idx], self.incident_angle[idx])


@dataclass(frozen=True)
class _Chunk:
    path: Path
    start: int
    stop: int
    n_kept: int


class StreamingData(_Conditions):
    """Chunked, sharded reading for data larger than memory (see the module docstring)."""

    def __init__(self, paths: list[Path], geometry: Geometry, energy_range_gev: tuple[float, float] | None,
                 min_deposit_gev: float, chunk_size: int, chunks_in_memory: int,
                 ecal_sum_of: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        self.geometry = geometry
        self.energy_range_gev = energy_range_gev
        self.min_deposit_gev = min_deposit_gev
        self.chunks_in_memory = chunks_in_memory
        chunks: list[_Chunk] = []
        energies, angles, sums = [], [], []
        for p in resolve_paths(paths):
            start = 0
            for part in iter_showers(p, chunk_size=chunk_size, geometry=geometry):
                keep = event_mask(part, energy_range_gev, min_deposit_gev)
                chunks.append(_Chunk(p, start, start + len(part), int(keep.sum())))
                start += len(part)
                energies.append(part.primary_energy[keep])
                angles.append(part.incident_angle[keep])
                if ecal_sum_of is not None:
                    sums.append(ecal_sum_of(part.showers[keep]))
        self.chunks = chunks
        self.primary_energy = np.concatenate(energies)
        self.incident_angle = np.concatenate(angles)
        if len(self.primary_energy) == 0:
            raise ValueError(f"no training event passes the filters (energy range {energy_range_gev} GeV, "
                             f"deposit > {min_deposit_gev} GeV)")
        self._sums = np.concatenate(sums) if sums else None

    def fit(self, ecal_sum_of: Callable[[np.ndarray], np.ndarray], chunk_size: int = 1000) -> EcalFit:
        if self._sums is None:
            raise ValueError("StreamingData was built without ecal_sum_of; it cannot fit the ECAL sum")
        return fit_ecal_sum(self.primary_energy, self._sums)

    def _plan(self, seed: int, epoch: int, rank: int, world: int) -> list[list[_Chunk]]:
        order = np.random.default_rng([seed, epoch]).permutation(len(self.chunks))
        mine = [self.chunks[i] for i in order[rank::world]]
        return [mine[i:i + self.chunks_in_memory] for i in range(0, len(mine), self.chunks_in_memory)]

    def steps_per_epoch(self, seed: int, epoch: int, world: int, global_batch: int) -> int:
        per_rank = global_batch // world
        return min(sum(sum(c.n_kept for c in buf) // per_rank for buf in self._plan(seed, epoch, r, world))
                   for r in range(world))

    def batches(self, seed: int, epoch: int, rank: int, world: int, global_batch: int, start_step: int,
                n_steps: int) -> Iterator[Batch]:
        per_rank = global_batch // world
        step = 0
        for j, buf in enumerate(self._plan(seed, epoch, rank, world)):
            n_here = sum(c.n_kept for c in buf) // per_rank
            if step + n_here <= start_step:
                step += n_here
                continue
            parts = [read_events(c.path, c.start, c.stop, self.geometry) for c in buf]
            data = ShowerSet.concatenate([p[event_mask(p, self.energy_range_gev, self.min_deposit_gev)]
                                          for p in parts])
            perm = np.random.default_rng([seed, epoch, rank, j]).permutation(len(data))
            for k in range(n_here):
                if step >= n_steps:
                    return
                if step >= start_step:
                    idx = perm[k * per_rank:(k + 1) * per_rank]
                    yield Batch(data.showers[idx], data.primary_energy[idx], data.incident_angle[idx])
                step += 1
