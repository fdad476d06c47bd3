"""The verdict: six key numbers a physicist reads first, per candidate, each against its floor, with a
plain pass / close / fail mark, and the time per shower with the speed-up over the reference.

Key numbers (per condition bin, averaged over the bins of :mod:`fastshower.validate.binning`):

========================  ==================================================  ==========================
key number                value of a sample                                    deviation D from reference
========================  ==================================================  ==========================
response                  mean of E_deposited / E_primary                      |relative difference|
resolution                std / mean of E_deposited / E_primary                |relative difference|
longitudinal profile      mean energy per layer, normalised to unit sum        1/2 sum |p_c - p_r| (the
                                                                               fraction of the energy
                                                                               in the wrong layers)
lateral profile           mean energy per x and per y column, unit sum         the same, mean of x and y
shower depth              energy-weighted mean depth of the layers (mm)        |difference| (mm)
classifier AUC            AUC of the high-level classifier (docs/metrics.md)   |AUC - 0.5|
========================  ==================================================  ==========================

The *floor* F of a key number is the mean D of a statistically identical sample of the same size:
for the first five, the mean D over ``n_boot`` pairs of bootstrap samples drawn from the reference
(as many events per bin as the candidate and the reference hold); for the AUC, sqrt(2/pi) sigma,
with sigma = sqrt((2m + 1) / (12 m^2)) the spread of the AUC of two identical classes of m
validation events each (Mann-Whitney).

Marks: **pass** when D <= 3 F (consistent with the reference within its statistics: for a
Gaussian deviation 3 F = 2.4 sigma, a statistically identical sample fails one number in 60);
**close** when D > 3 F but D is within the physics tolerance of :data:`TOLERANCES` (a real but
small difference); **fail** otherwise. The tolerances: response 1 % (a calorimeter's calibration
target), resolution 10 % of itself, 2 % of the energy in the wrong layers or columns, shower depth
0.2 X0 (the effective radiation length of the geometry), AUC 0.6 (CaloChallenge's best high-level
AUCs are 0.55-0.7).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from fastshower.geometry import Geometry
from fastshower.validate.binning import ConditionBin, condition_bins

#: Key numbers in table order: name -> label.
KEY_NUMBERS = {
    "response": "mean response E_dep/E0",
    "resolution": "resolution sigma/mean",
    "longitudinal": "longitudinal profile",
    "lateral": "lateral profile",
    "depth": "shower depth [mm]",
    "auc": "classifier AUC (high-level)",
}
#: Physics tolerance of the deviation D for the mark "close" (depth: in X0 of the geometry).
TOLERANCES = {"response": 0.01, "resolution": 0.10, "longitudinal": 0.02, "lateral": 0.02, "depth_x0": 0.2,
              "auc": 0.10}
#: D / F at or below which a key number passes.
PASS_RATIO = 3.0
MARKS = ("pass", "close", "fail", "n/a")


@dataclass
class VerdictCell:
    """One key number of one sample: its value (None for the profiles, which are only a distance),
    the signed difference to the reference (relative for response and resolution, mm for the depth,
    AUC - 0.5), the deviation D >= 0, the floor F and the mark."""

    value: float | None
    difference: float | None
    deviation: float | None
    floor: float | None
    mark: str

    @property
    def ratio(self) -> float | None:
        """D / F (None where either is missing)."""
        if self.deviation is None or not self.floor:
            return None
        return self.deviation / self.floor


@dataclass
class CandidateVerdict:
    label: str
    n_events: int
    cells: dict[str, VerdictCell]
    seconds_per_shower: float | None = None
    speed_up: float | None = None  # reference seconds / candidate seconds per shower


@dataclass
class Verdict:
    reference_label: str
    n_reference: int
    reference_values: dict[str, float]
    reference_seconds_per_shower: float | None
    candidates: list[CandidateVerdict]
    depth_tolerance_mm: float
    timing_note: str = ""
    notes: list[str] = field(default_factory=list)


def event_depth_mm(layer_energy: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Energy-weighted mean depth of each event's layers (layer centres, mm from the face), (n,)."""
    z = geometry.layer_centres_mm()
    total = layer_energy.sum(axis=1)
    return (layer_energy * z[None, :]).sum(axis=1) / np.where(total > 0, total, 1.0)


def _unit(v: np.ndarray) -> np.ndarray:
    s = v.sum()
    return v / s if s > 0 else v


def _bin_stats(obs: dict, depth: np.ndarray, idx: np.ndarray) -> dict:
    ratio = obs["energy_ratio"][idx]
    mean = ratio.mean()
    return {"response": mean, "resolution": ratio.std() / mean if mean > 0 else np.nan,
            "longitudinal": _unit(obs["layer_energy"][idx].mean(axis=0)),
            "lateral": (_unit(obs["profile_x"][idx].mean(axis=0)), _unit(obs["profile_y"][idx].mean(axis=0))),
            "depth": depth[idx].mean()}


def _deviations(cand: list[dict], ref: list[dict]) -> dict[str, tuple[float, float]]:
    """Per key number (signed difference, deviation D), each averaged over the bins."""
    out = {}
    for k in ("response", "resolution"):
        d = np.array([(c[k] - r[k]) / r[k] for c, r in zip(cand, ref)])
        out[k] = (float(d.mean()), float(np.abs(d).mean()))
    d = np.array([c["depth"] - r["depth"] for c, r in zip(cand, ref)])
    out["depth"] = (float(d.mean()), float(np.abs(d).mean()))
    lon = np.mean([0.5 * np.abs(c["longitudinal"] - r["longitudinal"]).sum() for c, r in zip(cand, ref)])
    lat = np.mean([0.25 * (np.abs(c["lateral"][0] - r["lateral"][0]).sum()
                           + np.abs(c["lateral"][1] - r["lateral"][1]).sum()) for c, r in zip(cand, ref)])
    out["longitudinal"] = (float(lon), float(lon))
    out["lateral"] = (float(lat), float(lat))
    return out


def bootstrap_floor(ref_obs: dict, ref_depth: np.ndarray, bins: list[ConditionBin], n_candidate_per_bin: list[int],
                    n_boot: int = 100, seed: int = 0) -> dict[str, float]:
    """Mean deviation D of a statistically identical sample: per bootstrap round, draw (with
    replacement, from the reference events of each bin) as many events as the candidate holds and as
    many as the reference holds, and take their D; the mean over ``n_boot`` rounds per key number."""
    rng = np.random.default_rng([seed, 3])
    ref_idx = [np.flatnonzero(b.reference) for b in bins]
    acc: dict[str, list[float]] = {}
    for _ in range(n_boot):
        c = [_bin_stats(ref_obs, ref_depth, rng.choice(i, n)) for i, n in zip(ref_idx, n_candidate_per_bin)]
        r = [_bin_stats(ref_obs, ref_depth, rng.choice(i, len(i))) for i in ref_idx]
        for k, (_, d) in _deviations(c, r).items():
            acc.setdefault(k, []).append(d)
    return {k: float(np.mean(v)) for k, v in acc.items()}


def auc_floor(n_per_class: int) -> float:
    """Mean |AUC - 0.5| of a classifier between two identical classes, for the validation split of
    ``n_per_class`` events per class (20 %, see classifier.fixed_split): sqrt(2/pi) sigma with the
    Mann-Whitney sigma = sqrt((2m + 1) / (12 m^2)), m validation events per class."""
    m = n_per_class - int(round(0.6 * n_per_class)) - int(round(0.2 * n_per_class))
    m = max(m, 1)
    return math.sqrt(2 / math.pi) * math.sqrt((2 * m + 1) / (12 * m * m))


def mark(deviation: float | None, floor: float | None, tolerance: float) -> str:
    """pass if D <= 3 F; close if D <= the tolerance; fail otherwise (n/a without numbers)."""
    if deviation is None or floor is None or not np.isfinite(deviation) or not np.isfinite(floor):
        return "n/a"
    if deviation <= PASS_RATIO * floor:
        return "pass"
    return "close" if deviation <= tolerance else "fail"


@dataclass
class Column:
    """A sample to judge: its label, observables (a comparison.Sample), the high-level classifier
    result against the reference if one ran ((auc, events per class) or None) and its time per
    shower (s) if measured."""

    label: str
    sample: object
    auc: tuple[float, int] | None = None
    seconds_per_shower: float | None = None


def build_verdict(reference, columns: list[Column], geometry: Geometry, energy_bins: np.ndarray,
                  angle_bins: np.ndarray | None, *, reference_label: str = "reference",
                  reference_seconds_per_shower: float | None = None, n_boot: int = 100, seed: int = 0,
                  timing_note: str = "") -> Verdict:
    """The verdict of each column against ``reference`` (a comparison.Sample)."""
    ref_depth = event_depth_mm(reference.obs["layer_energy"], geometry)
    depth_tol = TOLERANCES["depth_x0"] * geometry.radiation_length_mm
    tol = {**TOLERANCES, "depth": depth_tol}
    all_bins = condition_bins(reference.primary_energy, reference.incident_angle, reference.primary_energy,
                              reference.incident_angle, energy_bins, angle_bins)
    ref_all = [_bin_stats(reference.obs, ref_depth, b.reference) for b in all_bins]
    ref_values = {k: float(np.mean([s[k] for s in ref_all])) for k in ("response", "resolution", "depth")}
    out = []
    for col in columns:
        s = col.sample
        depth = event_depth_mm(s.obs["layer_energy"], geometry)
        bins = condition_bins(reference.primary_energy, reference.incident_angle, s.primary_energy,
                              s.incident_angle, energy_bins, angle_bins)
        cand = [_bin_stats(s.obs, depth, b.candidate) for b in bins]
        ref = [_bin_stats(reference.obs, ref_depth, b.reference) for b in bins]
        devs = _deviations(cand, ref)
        floor = bootstrap_floor(reference.obs, ref_depth, bins, [int(b.candidate.sum()) for b in bins],
                                n_boot=n_boot, seed=seed)
        cells = {}
        for k in ("response", "resolution", "longitudinal", "lateral", "depth"):
            diff, d = devs[k]
            value = float(np.mean([c[k] for c in cand])) if k in ("response", "resolution", "depth") else None
            cells[k] = VerdictCell(value, diff, d, floor[k], mark(d, floor[k], tol[k]))
        if col.auc is not None:
            auc, n_per_class = col.auc
            f = auc_floor(n_per_class)
            cells["auc"] = VerdictCell(auc, auc - 0.5, abs(auc - 0.5), f,
                                       mark(abs(auc - 0.5), f, TOLERANCES["auc"]))
        else:
            cells["auc"] = VerdictCell(None, None, None, None, "n/a")
        speed = (reference_seconds_per_shower / col.seconds_per_shower
                 if reference_seconds_per_shower and col.seconds_per_shower else None)
        out.append(CandidateVerdict(col.label, len(s), cells, col.seconds_per_shower, speed))
    return Verdict(reference_label, len(reference), ref_values, reference_seconds_per_shower, out, depth_tol,
                   timing_note)
