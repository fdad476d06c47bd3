"""The shower set: showers with the conditions that produced them.

Every stage passes showers around as a :class:`ShowerSet`, in the shared convention:
``showers`` float32 ``(n_events, nx, ny, nz)`` (cylindrical: ``(n, n_r, n_alpha, n_layers)``),
energy deposited in the active material per cell in GeV; ``primary_energy`` (n,) in GeV;
``incident_angle`` (n,) polar angle in rad (pi/2 = normal incidence).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fastshower.geometry import Geometry


@dataclass
class ShowerSet:
    showers: np.ndarray
    primary_energy: np.ndarray
    incident_angle: np.ndarray
    geometry: Geometry
    attrs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.geometry, Geometry):
            raise TypeError(f"ShowerSet.geometry must be a Geometry (fastshower.geometry.load_geometry turns a name "
                            f"into one), got {type(self.geometry).__name__} {self.geometry!r}")
        self.showers = np.asarray(self.showers, dtype=np.float32)
        self.primary_energy = np.asarray(self.primary_energy, dtype=np.float64).reshape(-1)
        self.incident_angle = np.asarray(self.incident_angle, dtype=np.float64).reshape(-1)
        n = self.showers.shape[0]
        if self.showers.ndim != 4:
            raise ValueError(f"showers must be 4-d (n, x, y, z), got shape {self.showers.shape}")
        if self.primary_energy.shape != (n,) or self.incident_angle.shape != (n,):
            raise ValueError(
                f"primary_energy {self.primary_energy.shape} and incident_angle {self.incident_angle.shape} "
                f"must both have shape ({n},)")

    def __len__(self) -> int:
        return self.showers.shape[0]

    def __getitem__(self, index: slice | np.ndarray) -> ShowerSet:
        return ShowerSet(self.showers[index], self.primary_energy[index], self.incident_angle[index],
                         self.geometry, dict(self.attrs))

    @staticmethod
    def concatenate(parts: list[ShowerSet]) -> ShowerSet:
        if not parts:
            raise ValueError("nothing to concatenate")
        names = {p.geometry.name for p in parts}  # by name: an extrapolated copy has wider ranges
        if len(names) != 1:
            raise ValueError(f"cannot concatenate shower sets of different geometries: {sorted(names)}")
        return ShowerSet(np.concatenate([p.showers for p in parts]),
                         np.concatenate([p.primary_energy for p in parts]),
                         np.concatenate([p.incident_angle for p in parts]),
                         parts[0].geometry, dict(parts[0].attrs))

    @property
    def deposited_energy(self) -> np.ndarray:
        """Total deposited (active) energy per event, GeV, shape (n,)."""
        return self.showers.reshape(len(self), -1).sum(axis=1, dtype=np.float64)
