"""Condition binning of the validation: primary-energy (GeV) and incident-angle (rad) bins, and the
check that a candidate's conditions overlap the reference's.

Binned metrics (:mod:`fastshower.validate.metrics`) are evaluated per :class:`ConditionBin` and
averaged over the bins; a bin enters when both samples hold at least ``min_events`` events.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fastshower.data import geometry_of
from fastshower.geometry import Geometry
from fastshower.showers import ShowerSet

#: Fewest events of each sample a condition bin needs to enter a binned metric.
MIN_EVENTS_PER_BIN = 10

#: Largest fraction of candidate events allowed outside the reference's condition range before
#: :func:`overlap_warnings` warns.
MAX_OUTSIDE_FRACTION = 0.05


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
        lo, hi = float(np.min(primary_energy)), float(np.max(primary_energy))
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


_bin_index = bin_index  # the name before the split of the validate package


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


def geometry_or_none(shower_set: ShowerSet) -> Geometry | None:
    """The set's geometry, or None when its name or YAML cannot be resolved."""
    try:
        return geometry_of(shower_set)
    except (ValueError, FileNotFoundError):
        return None


def set_bins(reference: ShowerSet, candidate: ShowerSet, energy_bins=None) -> list[ConditionBin]:
    """:func:`condition_bins` of two shower sets with the default edges of the reference's geometry."""
    geo = geometry_or_none(reference)
    edges = np.asarray(energy_bins, dtype=float) if energy_bins is not None else \
        default_energy_bins(geo, reference.primary_energy)
    return condition_bins(reference.primary_energy, reference.incident_angle, candidate.primary_energy,
                          candidate.incident_angle, edges, default_angle_bins(geo, reference.incident_angle))


def overlap_warnings(ref_energy, ref_angle, cand_energy, cand_angle, what: str = "candidate",
                     max_outside: float = MAX_OUTSIDE_FRACTION) -> list[str]:
    """One line per condition (primary energy, GeV; incident angle, deg) in which more than
    ``max_outside`` of the ``what`` events lie outside the reference's range (a relative margin
    of 1e-6 and 1e-3 GeV / 1e-4 rad absolute is allowed): their metrics then compare different
    physics, or fall back to fewer bins."""
    out = []
    for name, unit, scale, r, c, tol in (("primary energy", "GeV", 1.0, ref_energy, cand_energy, 1e-3),
                                         ("incident angle", "deg", 180 / math.pi, ref_angle, cand_angle, 1e-4)):
        r, c = np.asarray(r, float), np.asarray(c, float)
        if len(r) == 0 or len(c) == 0:
            continue
        lo, hi = r.min(), r.max()
        margin = tol + 1e-6 * max(abs(lo), abs(hi))
        outside = np.mean((c < lo - margin) | (c > hi + margin))
        if outside > max_outside:
            out.append(f"{what} conditions do not overlap the reference's: {outside:.0%} of its events have a "
                       f"{name} outside the reference's {lo * scale:.4g}-{hi * scale:.4g} {unit} "
                       f"(the {what}'s: {c.min() * scale:.4g}-{c.max() * scale:.4g} {unit})")
    return out
