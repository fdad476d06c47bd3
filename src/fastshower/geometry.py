"""Detector descriptions: grid, cell sizes, layer structure, materials and sampling fraction.

A geometry says what a shower array means. Cartesian geometries (``clic25``, ``clic51``) have
showers of shape ``(n, nx, ny, nz)``; cylindrical ones (``par04_ds2``, ``par04_ds3``) have
``(n, n_r, n_alpha, n_layers)``. In both, the last axis is the depth (readout layer), and the
particle enters at z = 0.

Units: lengths in mm, energies in GeV unless the name says otherwise (``critical_energy_mev``),
angles in rad.

A user writes a new detector as YAML (see :func:`save_geometry` for the layout) and loads it with
:func:`load_geometry`; the presets are built in and listed by :data:`PRESETS`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

#: Fine-structure scale energy used in the Moliere radius, E_s = m_e sqrt(4 pi / alpha) (MeV).
SCALE_ENERGY_MEV = 21.2052


class Material(BaseModel):
    """Bulk properties of one material (PDG values).

    ``radiation_length_mm`` X0, ``moliere_radius_mm`` R_M, ``critical_energy_mev`` E_c (Rossi
    definition, electrons), ``density_g_cm3``, atomic number ``Z`` and mass ``A`` (g/mol), and the
    minimum-ionising stopping power ``mip_dedx_mev_cm`` (dE/dx at its minimum, MeV/cm).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    Z: float
    A: float
    density_g_cm3: float
    radiation_length_mm: float
    moliere_radius_mm: float
    critical_energy_mev: float
    mip_dedx_mev_cm: float


#: Material data base (PDG "Atomic and nuclear properties of materials").
MATERIALS: dict[str, Material] = {
    m.name: m
    for m in [
        Material(name="W", Z=74, A=183.84, density_g_cm3=19.30, radiation_length_mm=3.504,
                 moliere_radius_mm=9.327, critical_energy_mev=7.97, mip_dedx_mev_cm=22.10),
        Material(name="Si", Z=14, A=28.0855, density_g_cm3=2.329, radiation_length_mm=93.70,
                 moliere_radius_mm=48.82, critical_energy_mev=40.19, mip_dedx_mev_cm=3.876),
        Material(name="Pb", Z=82, A=207.2, density_g_cm3=11.35, radiation_length_mm=5.612,
                 moliere_radius_mm=16.02, critical_energy_mev=7.43, mip_dedx_mev_cm=12.74),
        Material(name="Fe", Z=26, A=55.845, density_g_cm3=7.874, radiation_length_mm=17.57,
                 moliere_radius_mm=17.19, critical_energy_mev=21.68, mip_dedx_mev_cm=11.43),
        Material(name="Cu", Z=29, A=63.546, density_g_cm3=8.96, radiation_length_mm=14.36,
                 moliere_radius_mm=15.66, critical_energy_mev=19.42, mip_dedx_mev_cm=12.57),
        Material(name="LAr", Z=18, A=39.948, density_g_cm3=1.396, radiation_length_mm=140.0,
                 moliere_radius_mm=90.43, critical_energy_mev=32.84, mip_dedx_mev_cm=2.105),
        Material(name="PbWO4", Z=75.8, A=455.0, density_g_cm3=8.30, radiation_length_mm=8.903,
                 moliere_radius_mm=19.59, critical_energy_mev=9.64, mip_dedx_mev_cm=10.20),
        Material(name="Scintillator", Z=3.5, A=6.5, density_g_cm3=1.032, radiation_length_mm=425.4,
                 moliere_radius_mm=95.9, critical_energy_mev=93.11, mip_dedx_mev_cm=2.052),
    ]
}


def get_material(name: str) -> Material:
    """Material by name; a one-line error lists the known ones."""
    try:
        return MATERIALS[name]
    except KeyError:
        raise ValueError(f"unknown material {name!r}; known: {', '.join(sorted(MATERIALS))}") from None


class LayerGroup(BaseModel):
    """``count`` identical readout layers: absorber, then active (sensitive) material, then a gap.

    Thicknesses in mm. One readout layer may stand for several physical layers (Par04 sums two
    1.4 mm W + 0.3 mm Si layers per readout layer): give the summed thicknesses.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    count: int = Field(gt=0)
    absorber: str
    absorber_thickness_mm: float = Field(ge=0)
    active: str
    active_thickness_mm: float = Field(gt=0)
    gap_thickness_mm: float = Field(default=0.0, ge=0)

    @property
    def thickness_mm(self) -> float:
        return self.absorber_thickness_mm + self.active_thickness_mm + self.gap_thickness_mm


class Geometry(BaseModel):
    """A calorimeter readout grid and its layer structure.

    Cartesian: ``shape = (nx, ny, nz)``, ``cell_size_mm = (dx, dy)``, x/y centred on the particle
    entry point. Cylindrical: ``shape = (n_r, n_alpha, n_layers)``, ``r_edges_mm`` the radial bin
    edges (n_r + 1 values from 0), alpha bins uniform in [-pi, pi).

    ``sampling_fraction`` is E_active / E_primary for a contained electromagnetic shower (a
    calibration constant of the detector). ``readout_threshold_gev`` is the smallest deposit a cell
    reports (energy in the active material). ``energy_range_gev`` and ``angle_range_rad`` are the
    conditions the detector's data cover.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    description: str = ""
    kind: Literal["cartesian", "cylindrical"]
    shape: tuple[int, int, int]
    cell_size_mm: tuple[float, float] | None = None
    r_edges_mm: tuple[float, ...] | None = None
    layers: tuple[LayerGroup, ...]
    sampling_fraction: float = Field(gt=0, le=1)
    readout_threshold_gev: float = Field(default=0.0, ge=0)
    energy_range_gev: tuple[float, float]
    angle_range_rad: tuple[float, float] = (math.pi / 2, math.pi / 2)

    @model_validator(mode="after")
    def _check(self) -> Geometry:
        n_layers = sum(g.count for g in self.layers)
        if n_layers != self.shape[2]:
            raise ValueError(
                f"geometry {self.name!r}: layer groups give {n_layers} layers but shape has {self.shape[2]}")
        for g in self.layers:
            get_material(g.absorber)
            get_material(g.active)
        if self.kind == "cartesian" and self.cell_size_mm is None:
            raise ValueError(f"geometry {self.name!r}: a cartesian geometry needs cell_size_mm")
        if self.kind == "cylindrical":
            if self.r_edges_mm is None or len(self.r_edges_mm) != self.shape[0] + 1:
                raise ValueError(
                    f"geometry {self.name!r}: a cylindrical geometry needs r_edges_mm with n_r + 1 = "
                    f"{self.shape[0] + 1} values")
            if any(b <= a for a, b in zip(self.r_edges_mm, self.r_edges_mm[1:])):
                raise ValueError(f"geometry {self.name!r}: r_edges_mm must increase")
        lo, hi = self.energy_range_gev
        if not 0 < lo <= hi:
            raise ValueError(f"geometry {self.name!r}: energy_range_gev must satisfy 0 < low <= high")
        alo, ahi = self.angle_range_rad
        if not 0 < alo <= ahi < math.pi:
            raise ValueError(f"geometry {self.name!r}: angle_range_rad must lie in (0, pi)")
        return self

    # --- derived quantities -------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return self.shape[2]

    @property
    def n_cells(self) -> int:
        return int(np.prod(self.shape))

    def layer_thickness_mm(self) -> np.ndarray:
        """Thickness of each readout layer (mm), shape (n_layers,)."""
        return np.concatenate([np.full(g.count, g.thickness_mm) for g in self.layers])

    def layer_edges_mm(self) -> np.ndarray:
        """Depth of the layer boundaries along the normal (mm), shape (n_layers + 1,), from 0."""
        return np.concatenate([[0.0], np.cumsum(self.layer_thickness_mm())])

    def layer_radiation_lengths(self) -> np.ndarray:
        """Thickness of each readout layer in radiation lengths X0, shape (n_layers,)."""
        per_group = [
            np.full(g.count, g.absorber_thickness_mm / get_material(g.absorber).radiation_length_mm
                    + g.active_thickness_mm / get_material(g.active).radiation_length_mm)
            for g in self.layers
        ]
        return np.concatenate(per_group)

    def _mass_fractions(self) -> tuple[list[Material], np.ndarray]:
        """Materials and their mass fractions in the whole stack (gaps are air: neglected)."""
        mats: list[Material] = []
        masses: list[float] = []
        for g in self.layers:
            for name, t in ((g.absorber, g.absorber_thickness_mm), (g.active, g.active_thickness_mm)):
                m = get_material(name)
                mats.append(m)
                masses.append(g.count * t * m.density_g_cm3)
        w = np.asarray(masses)
        return mats, w / w.sum()

    @property
    def radiation_length_mm(self) -> float:
        """Effective X0 of the stack (mm): total thickness / total thickness in X0 (gaps included)."""
        return float(self.layer_thickness_mm().sum() / self.layer_radiation_lengths().sum())

    @property
    def critical_energy_mev(self) -> float:
        """Effective critical energy (MeV): X0_eff * sum_i w_i E_c,i / X0_i (mass-weighted, in g/cm^2)."""
        mats, w = self._mass_fractions()
        x0_gcm2 = np.array([m.radiation_length_mm / 10 * m.density_g_cm3 for m in mats])
        x0_eff = 1.0 / np.sum(w / x0_gcm2)
        return float(x0_eff * np.sum(w * np.array([m.critical_energy_mev for m in mats]) / x0_gcm2))

    @property
    def moliere_radius_mm(self) -> float:
        """Effective Moliere radius of the stack (mm), gaps included as dilution.

        1/R_M = (1/E_s) sum_i w_i E_c,i / X0_i for the dense material (g/cm^2), converted to a
        length with the stack's mean density.
        """
        mats, w = self._mass_fractions()
        x0_gcm2 = np.array([m.radiation_length_mm / 10 * m.density_g_cm3 for m in mats])
        ec = np.array([m.critical_energy_mev for m in mats])
        rm_gcm2 = 1.0 / (np.sum(w * ec / x0_gcm2) / SCALE_ENERGY_MEV)
        total_mass = sum(g.count * (g.absorber_thickness_mm * get_material(g.absorber).density_g_cm3
                                    + g.active_thickness_mm * get_material(g.active).density_g_cm3)
                         for g in self.layers)
        mean_density = total_mass / self.layer_thickness_mm().sum()
        return float(rm_gcm2 / mean_density * 10)

    @property
    def mip_sampling_fraction(self) -> float:
        """Fraction of a minimum-ionising particle's energy loss that falls in the active material."""
        act = sum(g.count * g.active_thickness_mm * get_material(g.active).mip_dedx_mev_cm for g in self.layers)
        tot = act + sum(g.count * g.absorber_thickness_mm * get_material(g.absorber).mip_dedx_mev_cm
                        for g in self.layers)
        return float(act / tot)

    def cell_centres_mm(self) -> tuple[np.ndarray, np.ndarray]:
        """Lateral cell centres. Cartesian: (x, y) centres in mm, centred on 0. Cylindrical:
        (r, alpha) bin centres in (mm, rad)."""
        if self.kind == "cartesian":
            nx, ny, _ = self.shape
            dx, dy = self.cell_size_mm  # type: ignore[misc]
            return (np.arange(nx) - (nx - 1) / 2) * dx, (np.arange(ny) - (ny - 1) / 2) * dy
        r = np.asarray(self.r_edges_mm)
        n_alpha = self.shape[1]
        alpha = -math.pi + (np.arange(n_alpha) + 0.5) * 2 * math.pi / n_alpha
        return 0.5 * (r[1:] + r[:-1]), alpha

    def layer_centres_mm(self) -> np.ndarray:
        """Depth of each readout layer's centre along the normal (mm), shape (n_layers,)."""
        e = self.layer_edges_mm()
        return 0.5 * (e[1:] + e[:-1])

    def check_shape(self, showers: np.ndarray) -> None:
        """Raise ValueError if ``showers`` is not (n, *shape)."""
        if showers.ndim != 4 or tuple(showers.shape[1:]) != self.shape:
            raise ValueError(
                f"shower array has shape {tuple(showers.shape)}, expected (n, {', '.join(map(str, self.shape))}) "
                f"for geometry {self.name!r}")


# --- presets -----------------------------------------------------------------------------------

def _clic_layers() -> tuple[LayerGroup, ...]:
    # CLIC-like W/Si ECAL as in the 3DGAN data: 17 thin layers of 4.4 mm pitch (2.1 mm W) and
    # 8 thick layers of 6.8 mm pitch (4.2 mm W); 0.5 mm Si sensors; the rest is PCB/air gap.
    return (
        LayerGroup(count=17, absorber="W", absorber_thickness_mm=2.1, active="Si", active_thickness_mm=0.5,
                   gap_thickness_mm=1.8),
        LayerGroup(count=8, absorber="W", absorber_thickness_mm=4.2, active="Si", active_thickness_mm=0.5,
                   gap_thickness_mm=2.1),
    )


def _par04_layers() -> tuple[LayerGroup, ...]:
    # Par04: 90 physical layers of 1.4 mm W + 0.3 mm Si, read out in pairs (3.4 mm per readout layer).
    return (LayerGroup(count=45, absorber="W", absorber_thickness_mm=2.8, active="Si", active_thickness_mm=0.6),)


PRESETS: dict[str, Geometry] = {
    "clic25": Geometry(
        name="clic25",
        description="CLIC-like W/Si ECAL, 25x25x25 cells of 5.1 mm, normal incidence (3DGAN fixed-angle data)",
        kind="cartesian", shape=(25, 25, 25), cell_size_mm=(5.1, 5.1), layers=_clic_layers(),
        sampling_fraction=0.02, readout_threshold_gev=1e-6, energy_range_gev=(2.0, 500.0),
        angle_range_rad=(math.pi / 2, math.pi / 2)),
    "clic51": Geometry(
        name="clic51",
        description="CLIC-like W/Si ECAL, 51x51x25 cells of 5.1 mm, polar angle 60-120 deg (3DGAN variable-angle data)",
        kind="cartesian", shape=(51, 51, 25), cell_size_mm=(5.1, 5.1), layers=_clic_layers(),
        sampling_fraction=0.02, readout_threshold_gev=1e-6, energy_range_gev=(2.0, 500.0),
        angle_range_rad=(math.radians(60.0), math.radians(120.0))),
    "par04_ds2": Geometry(
        name="par04_ds2",
        description="CaloChallenge dataset 2: Par04 Si/W cylinder, 45 layers x 16 alpha x 9 r (dr = 4.65 mm)",
        kind="cylindrical", shape=(9, 16, 45), r_edges_mm=tuple(np.round(np.arange(10) * 4.65, 4)),
        layers=_par04_layers(), sampling_fraction=0.033, readout_threshold_gev=0.5e-6,
        energy_range_gev=(1.0, 1000.0)),
    "par04_ds3": Geometry(
        name="par04_ds3",
        description="CaloChallenge dataset 3: Par04 Si/W cylinder, 45 layers x 50 alpha x 18 r (dr = 2.325 mm)",
        kind="cylindrical", shape=(18, 50, 45), r_edges_mm=tuple(np.round(np.arange(19) * 2.325, 4)),
        layers=_par04_layers(), sampling_fraction=0.033, readout_threshold_gev=0.5e-6,
        energy_range_gev=(1.0, 1000.0)),
}


def load_geometry(name_or_path: str | Path) -> Geometry:
    """A preset by name (``clic25``, ...) or a YAML file describing a detector: where a name
    enters the library (command line, config files); the library itself passes :class:`Geometry`."""
    if isinstance(name_or_path, Geometry):
        raise TypeError("load_geometry takes a preset name or a YAML path; this is already a Geometry")
    key = str(name_or_path)
    if key in PRESETS:
        return PRESETS[key]
    path = Path(key)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.exists():
            raise FileNotFoundError(f"geometry file not found: {path}")
        with open(path) as f:
            data = yaml.safe_load(f)
        if not isinstance(data, dict):
            raise ValueError(f"geometry file {path} does not hold a mapping")
        return Geometry.model_validate(data)
    raise ValueError(f"unknown geometry {key!r}; presets: {', '.join(PRESETS)}, or a YAML file")


def save_geometry(geometry: Geometry, path: str | Path) -> None:
    """Write ``geometry`` as YAML (atomically), loadable with :func:`load_geometry`."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        yaml.safe_dump(geometry.model_dump(mode="json"), f, sort_keys=False)
    tmp.replace(path)
