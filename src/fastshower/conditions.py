"""Condition specifications: primary energy and incident angle, as given on the command line.

A spec is a single value (``100``), a range sampled uniformly (``2:500``), a range sampled
log-uniformly (``1:1000:log``) or a list whose values are drawn with equal probability
(``10,50,100``). Energies are in GeV; angles on the command line are in degrees and are returned
in rad by :func:`sample_angles`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np


@dataclass(frozen=True)
class ConditionSpec:
    kind: Literal["value", "uniform", "loguniform", "choice"]
    values: tuple[float, ...]

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` values drawn from the spec with ``rng`` (float64)."""
        if self.kind == "value":
            return np.full(n, self.values[0], dtype=np.float64)
        if self.kind == "uniform":
            return rng.uniform(self.values[0], self.values[1], size=n)
        if self.kind == "loguniform":
            return np.exp(rng.uniform(math.log(self.values[0]), math.log(self.values[1]), size=n))
        return rng.choice(np.asarray(self.values, dtype=np.float64), size=n)


def parse_spec(text: str | float, what: str = "value") -> ConditionSpec:
    """Parse ``"100"``, ``"2:500"``, ``"1:1000:log"`` or ``"10,50,100"``; one-line ValueError otherwise."""
    s = str(text).strip()
    try:
        if ":" in s:
            parts = s.split(":")
            if len(parts) == 3 and parts[2].strip().lower() == "log":
                lo, hi = float(parts[0]), float(parts[1])
                if lo <= 0:
                    raise ValueError
                kind: Literal["uniform", "loguniform"] = "loguniform"
            elif len(parts) == 2:
                lo, hi = float(parts[0]), float(parts[1])
                kind = "uniform"
            else:
                raise ValueError
            if not lo < hi:
                raise ValueError
            spec = ConditionSpec(kind, (lo, hi))
        elif "," in s:
            spec = ConditionSpec("choice", tuple(float(v) for v in s.split(",") if v.strip()))
        else:
            spec = ConditionSpec("value", (float(s),))
    except ValueError:
        raise ValueError(
            f"cannot read {what} {s!r}: expected a value (100), a range (2:500), a log range (1:1000:log) "
            f"or a list (10,50,100)") from None
    if not all(math.isfinite(v) for v in spec.values):
        raise ValueError(f"{what} {s!r} is not finite")
    return spec


def sample_energies(spec: str | ConditionSpec, n: int, rng: np.random.Generator,
                    allowed_gev: tuple[float, float] | None = None) -> np.ndarray:
    """Primary energies in GeV; checks them against ``allowed_gev`` (inclusive) when given."""
    spec = parse_spec(spec, "energy") if not isinstance(spec, ConditionSpec) else spec
    if allowed_gev is not None:
        lo, hi = allowed_gev
        if spec.low < lo * (1 - 1e-9) or spec.high > hi * (1 + 1e-9):
            raise ValueError(f"primary energy {spec.low:g}-{spec.high:g} GeV is outside the allowed range "
                             f"{lo:g}-{hi:g} GeV")
    if spec.low <= 0:
        raise ValueError("primary energy must be positive (GeV)")
    return spec.sample(n, rng)


def sample_angles(spec_deg: str | ConditionSpec, n: int, rng: np.random.Generator,
                  allowed_rad: tuple[float, float] | None = None) -> np.ndarray:
    """Incident polar angles in rad from a spec in degrees; checks against ``allowed_rad`` when given."""
    spec = parse_spec(spec_deg, "angle") if not isinstance(spec_deg, ConditionSpec) else spec_deg
    if allowed_rad is not None:
        lo, hi = (math.degrees(a) for a in allowed_rad)
        if spec.low < lo - 1e-6 or spec.high > hi + 1e-6:
            raise ValueError(f"incident angle {spec.low:g}-{spec.high:g} deg is outside the allowed range "
                             f"{lo:g}-{hi:g} deg")
    if not (0 < spec.low and spec.high < 180):
        raise ValueError("incident angle must lie strictly between 0 and 180 deg")
    return np.radians(spec.sample(n, rng))
