"""Condition binning of the validation: primary-energy (GeV) and incident-angle (rad) bins, and the
check that a candidate's conditions overlap the reference's.

Binned metrics (:mod:`fastshower.validate.metrics`) are evaluated per :class:`ConditionBin` and
averaged over the bins; a bin enters when both samples hold at least ``min_events`` events.
"""

from __future__ import annotations

import math

import numpy as np

# The condition binning itself is shared with training (epoch choice) and lives one layer down.
from fastshower.data.summaries import (MIN_EVENTS_PER_BIN, ConditionBin, bin_index,  # noqa: F401 (re-exported)
                                       condition_bins, default_angle_bins, default_energy_bins, geometry_or_none,
                                       set_bins)

#: Largest fraction of candidate events allowed outside the reference's condition range before
#: :func:`overlap_warnings` warns.
MAX_OUTSIDE_FRACTION = 0.05


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
