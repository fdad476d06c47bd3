"""Binned summaries of shower sets and the two cheap distances built on them.

Condition binning (primary energy x incident angle), the sampling fraction per bin, event-averaged
energy profiles, :func:`mu90_sigma90` (the response and resolution of a set of E_dep / E) and
:func:`quick_metrics` = (profile MSE, sampling-fraction error) of a candidate shower set against a
reference. They are functions of shower data alone, and three stages use the
same definition: ``train`` picks epochs and scores HPO trials with it, ``validate`` reports it
among its metrics, ``infer`` checks reduced-precision models with it. So it lives here, in the
lowest stage all three may import (the pipeline layering simulate -> data -> models -> train ->
validate -> infer, dependencies pointing down), rather than in ``validate``, which ``train`` must
not import. :mod:`fastshower.validate.metrics` re-exports every name. Definitions: docs/metrics.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fastshower.geometry import Geometry
from fastshower.showers import ShowerSet

#: Added to every energy-weighted denominator, as CaloChallenge ``HighLevelFeatures`` does.
EPS = 1e-16


def axis_profiles(showers: np.ndarray) -> dict[str, np.ndarray]:
    """Energy projected on each axis (summed over the two others), GeV.

    Keys ``x``, ``y``, ``z`` (cylindrical: r, alpha, layer), each shape (n, axis length).
    """
    xy = showers.sum(axis=3, dtype=np.float64)
    return {"x": xy.sum(axis=2), "y": xy.sum(axis=1), "z": showers.sum(axis=(1, 2), dtype=np.float64)}


# ------------------------------------------------------------------ mu90 / sigma90

def mu90_sigma90(values: np.ndarray) -> tuple[float, float]:
    """Mean and RMS of the values inside the smallest interval that holds 90 % of them.

    The interval holds k = ceil(0.9 n) consecutive sorted values; among all such windows the
    narrowest is taken. RMS is the population standard deviation inside it.
    """
    x = np.sort(np.asarray(values, dtype=np.float64))
    n = len(x)
    if n == 0:
        raise ValueError("mu90/sigma90 of an empty sample")
    k = max(1, math.ceil(0.9 * n))
    widths = x[k - 1:] - x[:n - k + 1]
    i = int(np.argmin(widths))
    inside = x[i:i + k]
    return float(inside.mean()), float(inside.std())


# ------------------------------------------------------------------ binning

#: Fewest events of each sample a condition bin needs to enter a binned metric.
MIN_EVENTS_PER_BIN = 10


def default_energy_bins(geometry: Geometry | None, primary_energy: np.ndarray | None = None) -> np.ndarray:
    """Primary-energy bin edges (GeV) for the binned metrics.

    CLIC-like (2-500 GeV, uniform spectrum): 2, 50, 100, 150, 200, 300, 400, 500 (the 3DGAN SSIM
    bins with 0-100 split). Par04 (1 GeV-1 TeV, log-uniform): 1, 3, 10, 30, 100, 300, 1000. Other
    detectors: 6 log-spaced bins over the geometry's energy range (or the data's, when no geometry).
    Events outside the edges fall in the first or last bin.
    """
    if geometry is not None and geometry.name.startswith("clic"):
        return np.array([2.0, 50, 100, 150, 200, 300, 400, 500])
    if geometry is not None and geometry.name.startswith("par04"):
        return np.array([1.0, 3, 10, 30, 100, 300, 1000])
    if geometry is not None:
        lo, hi = geometry.energy_range_gev
    else:
        lo, hi = float(np.min(primary_energy)), float(np.max(primary_energy))  # type: ignore[arg-type]
    return np.geomspace(lo, hi, 7) if hi > lo else np.array([lo * 0.999, hi * 1.001])


def default_angle_bins(geometry: Geometry | None, incident_angle: np.ndarray) -> np.ndarray | None:
    """Incident-angle bin edges (rad): three equal bins over the geometry's angle range (centred
    on 62/90/118 deg for clic51, as the 3DGAN analysis), or None when the data have one angle."""
    if np.ptp(incident_angle) < 1e-6:
        return None
    if geometry is not None and geometry.angle_range_rad[1] > geometry.angle_range_rad[0]:
        lo, hi = geometry.angle_range_rad
    else:
        lo, hi = float(np.min(incident_angle)), float(np.max(incident_angle))
    return np.linspace(lo, hi, 4)


def bin_index(values: np.ndarray, edges: np.ndarray | None) -> np.ndarray:
    """Bin of each value (0 .. len(edges) - 2); values outside the edges go to the first/last bin."""
    if edges is None:
        return np.zeros(len(values), dtype=int)
    return np.clip(np.searchsorted(edges, values, side="right") - 1, 0, len(edges) - 2)


@dataclass(frozen=True)
class ConditionBin:
    label: str
    reference: np.ndarray  # boolean mask over the reference events
    candidate: np.ndarray  # boolean mask over the candidate events


def condition_bins(ref_energy, ref_angle, cand_energy, cand_angle, energy_bins: np.ndarray,
                   angle_bins: np.ndarray | None = None, min_events: int = MIN_EVENTS_PER_BIN
                   ) -> list[ConditionBin]:
    """The (energy x angle) bins in which both samples have at least ``min_events`` events; if none
    has, a single bin with all events."""
    out = []
    er, ec = bin_index(ref_energy, energy_bins), bin_index(cand_energy, energy_bins)
    ar, ac = bin_index(ref_angle, angle_bins), bin_index(cand_angle, angle_bins)
    n_angle = 1 if angle_bins is None else len(angle_bins) - 1
    for i in range(len(energy_bins) - 1):
        for j in range(n_angle):
            mr, mc = (er == i) & (ar == j), (ec == i) & (ac == j)
            if mr.sum() >= min_events and mc.sum() >= min_events:
                label = f"{energy_bins[i]:g}-{energy_bins[i + 1]:g} GeV"
                if angle_bins is not None:
                    label += f", {math.degrees(angle_bins[j]):.0f}-{math.degrees(angle_bins[j + 1]):.0f} deg"
                out.append(ConditionBin(label, mr, mc))
    if not out:  # small samples: one bin holding every event
        if len(ref_energy) == 0 or len(cand_energy) == 0:
            raise ValueError("a binned metric needs events in both samples")
        out.append(ConditionBin("all events", np.ones(len(ref_energy), bool), np.ones(len(cand_energy), bool)))
    return out


def set_bins(reference: ShowerSet, candidate: ShowerSet, energy_bins=None) -> list[ConditionBin]:
    """:func:`condition_bins` of two shower sets with the default edges of the reference's geometry."""
    geo = reference.geometry
    edges = np.asarray(energy_bins, dtype=float) if energy_bins is not None else \
        default_energy_bins(geo, reference.primary_energy)
    return condition_bins(reference.primary_energy, reference.incident_angle, candidate.primary_energy,
                          candidate.incident_angle, edges, default_angle_bins(geo, reference.incident_angle))


# ------------------------------------------------------------------ sampling fraction and profiles

def sampling_fraction_per_bin(energy_ratio: np.ndarray, bins: list[ConditionBin], which: str) -> np.ndarray:
    """Mean E_deposited / E_primary in each bin (``which`` = "reference" or "candidate")."""
    return np.array([energy_ratio[getattr(b, which)].mean() for b in bins])


def sampling_fraction_mre(ratio_ref: np.ndarray, ratio_cand: np.ndarray, bins: list[ConditionBin]) -> float:
    """Mean over bins of |sf_ref - sf_cand| / sf_ref from per-event E_deposited / E_primary."""
    sf_r = sampling_fraction_per_bin(ratio_ref, bins, "reference")
    sf_c = sampling_fraction_per_bin(ratio_cand, bins, "candidate")
    return float(np.mean(np.abs(sf_r - sf_c) / sf_r))


def sampling_fraction_error(reference: ShowerSet, candidate: ShowerSet, energy_bins=None) -> float:
    """Mean relative error of the sampling fraction, mean over bins of |sf_ref - sf_cand| / sf_ref.

    sf = mean over the bin's events of E_deposited / E_primary (both GeV); bins in primary energy
    (``energy_bins`` edges in GeV, default :func:`default_energy_bins`) and, for data with a spread
    of angles, in angle. Dimensionless; 0 for identical sets.
    """
    bins = set_bins(reference, candidate, energy_bins)
    return sampling_fraction_mre(reference.deposited_energy / reference.primary_energy,
                                  candidate.deposited_energy / candidate.primary_energy, bins)


def mean_normalised_profiles(profiles: dict[str, np.ndarray], mask: np.ndarray) -> dict[str, np.ndarray]:
    """Event-averaged profile of each axis over ``mask``, divided by its sum (a shape, sums to 1)."""
    out = {}
    for axis, p in profiles.items():
        mean = p[mask].mean(axis=0)
        out[axis] = mean / max(mean.sum(), EPS)
    return out


def binned_profile_mse(prof_ref: dict, prof_cand: dict, bins: list[ConditionBin]) -> float:
    """:func:`profile_mse` of per-event axis profiles ({axis: (n, length)}) over condition bins."""
    vals = []
    for b in bins:
        pr = mean_normalised_profiles(prof_ref, b.reference)
        pc = mean_normalised_profiles(prof_cand, b.candidate)
        vals.append(np.mean([np.mean((pr[a] - pc[a]) ** 2) for a in pr]))
    return float(np.mean(vals))


def profile_mse(reference: ShowerSet, candidate: ShowerSet, energy_bins=None) -> float:
    """Profile MSE (our definition): for each bin and axis x, y, z, the event-averaged energy
    profile normalised to unit sum; MSE over the cells of the axis between reference and candidate;
    averaged over the three axes and the bins. Dimensionless (fractions of the energy per cell,
    squared); 0 for identical sets.
    """
    bins = set_bins(reference, candidate, energy_bins)
    return binned_profile_mse(axis_profiles(reference.showers), axis_profiles(candidate.showers), bins)


def quick_metrics(reference: ShowerSet, candidate: ShowerSet) -> dict[str, float]:
    """The two cheap metrics used to pick epochs, score HPO trials and check reduced precision:
    ``{"profile_mse": ..., "sampling_fraction_error": ...}`` of ``candidate`` against ``reference``."""
    return {"profile_mse": float(profile_mse(reference, candidate)),
            "sampling_fraction_error": float(sampling_fraction_error(reference, candidate))}
