"""The 3DGAN HDF5 layouts, as the published data sets have them (reference/3dgan-family.md 1.1-1.2).

Fixed angle, 25x25x25 (``EleEscan_*.h5``), layout ``3dgan_fixed_angle``:
``ECAL`` (N, 25, 25, 25) deposited GeV per cell; ``target`` (N, >=2) with the primary energy in
``target[:, 1]`` (GeV). The older files with ``energy`` of shape (N, 1, k) (primary energy in
``energy[:, 0, 1]``) are read too. Normal incidence only.

Variable angle, 51x51x25 (``EleEscan_RandomAngle_*.h5``), layout ``3dgan_variable_angle``:
``ECAL`` (N, 51, 51, 25) in **50 x deposited GeV**; ``energy`` (N,) GeV; ``theta`` (N,) true polar
angle in rad. Written besides: ``mtheta`` (:func:`measured_angle`), ``sum`` (ECAL sum, in the
ECAL unit), ``eta`` (:func:`pseudorapidity` of theta) and ``pdgID`` (when the particle is known).

Readers accept float64 ECAL and ignore keys they do not use (``HCAL``, ``ECAL_E``, ``phi``, ...).
"""

from __future__ import annotations

import h5py
import numpy as np

from fastshower.data.layout import (
    Layout,
    append_events,
    create_event_dataset,
    event_count,
    geometry_is_normal_incidence,
    is_normal_incidence,
)
from fastshower.data.transforms import ecal_x50_to_gev, gev_to_ecal_x50
from fastshower.geometry import Geometry

#: PDG Monte Carlo particle numbers of the particles fastshower simulates.
PDG_ID = {"e-": 11, "e+": -11, "gamma": 22}


def measured_angle(showers: np.ndarray) -> np.ndarray:
    """Polar angle (rad) of the shower axis measured from per-layer y barycentres, as the Keras
    3DGAN ``measPython`` measures it (``mtheta``); shape (n,).

    ``showers`` is ``(n, nx, ny, nz)`` in any energy unit (the result does not depend on it). All
    positions are in cell-index units: cell i sits at i + 0.5 along x, y and z, so the angle is that
    of the index grid (equal to the physical angle only where the y cell size equals the layer pitch).
    Steps:
    1. the shower barycentre (x_ref, y_ref, z_ref) of the whole event;
    2. for each layer z with energy, the layer's barycentre (x_mid, y_mid);
    3. the slope m = (y_mid - y_ref) / sqrt((x_mid - x_ref)^2 + (z - z_ref)^2), with its sign
       flipped for layers in front of z_ref, and the layer's angle pi/2 - arctan(m);
    4. the mean of the layer angles weighted by the layer position z, leaving out layers without
       energy and a layer whose barycentre coincides with the reference point (no direction there;
       Keras divides by zero).
    A shower along y = y0 + depth * cot(theta) gives theta; normal incidence gives pi/2. Events with
    no energy give NaN (Keras returns the sentinel 100).
    """
    e = np.asarray(showers)
    if e.ndim != 4:
        raise ValueError(f"expected showers (n, nx, ny, nz), got shape {e.shape}")
    n, nx, ny, nz = e.shape
    ix, iy, iz = (np.arange(k) + 0.5 for k in (nx, ny, nz))
    xz = e.sum(axis=2, dtype=np.float64)  # (n, nx, nz) projections, accumulated in float64
    yz = e.sum(axis=1, dtype=np.float64)  # (n, ny, nz)
    layer_sum = xz.sum(axis=1)  # (n, nz)
    total = layer_sum.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        x_ref = (xz.sum(axis=2) @ ix) / total
        y_ref = (yz.sum(axis=2) @ iy) / total
        z_ref = (layer_sum @ iz) / total
        x_mid = np.einsum("nxz,x->nz", xz, ix) / layer_sum
        y_mid = np.einsum("nyz,y->nz", yz, iy) / layer_sum
    lever = np.sqrt((x_mid - x_ref[:, None]) ** 2 + (iz[None, :] - z_ref[:, None]) ** 2)
    sign = np.where(iz[None, :] < z_ref[:, None], -1.0, 1.0)
    layer_angle = np.pi / 2 - sign * np.arctan2(y_mid - y_ref[:, None], lever)
    weight = np.where((layer_sum > 0) & (lever > 1e-9), iz[None, :], 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        angle = np.where(weight > 0, layer_angle * weight, 0.0).sum(axis=1) / weight.sum(axis=1)
    return np.where(total > 0, angle, np.nan)


def pseudorapidity(theta: np.ndarray) -> np.ndarray:
    """eta = -ln(tan(theta / 2)) for the polar angle theta in rad (eta = 0 at 90 deg)."""
    return -np.log(np.tan(np.asarray(theta, dtype=np.float64) / 2))


def _primary_energy_column(ds: h5py.Dataset, start: int, stop: int) -> np.ndarray:
    """Primary energy (GeV) from ``target`` (N, k) -> column 1, or the old (N, 1, k) -> [:, 0, 1]."""
    if ds.ndim == 2 and ds.shape[1] >= 2:
        return np.asarray(ds[start:stop, 1], dtype=np.float64)
    if ds.ndim == 3 and ds.shape[1] >= 1 and ds.shape[2] >= 2:
        return np.asarray(ds[start:stop, 0, 1], dtype=np.float64)
    raise ValueError(f"3DGAN key {ds.name.lstrip('/')!r} has shape {ds.shape}; expected (N, >=2) with the "
                     f"primary energy in column 1, or the old (N, 1, >=2)")


def _check_cartesian(geometry: Geometry, layout: str) -> None:
    if geometry.kind != "cartesian":
        raise ValueError(f"the {layout} layout holds cartesian (x, y, z) showers; geometry {geometry.name!r} "
                         f"is {geometry.kind}: use format native or calochallenge")


class FixedAngleLayout(Layout):
    name = "3dgan_fixed_angle"
    description = "3DGAN fixed angle: ECAL (N, 25, 25, 25) GeV, target[:, 1] primary energy GeV"

    def matches(self, f: h5py.File) -> bool:
        return "ECAL" in f and ("target" in f or ("energy" in f and f["energy"].ndim == 3))

    def count_events(self, f):
        return event_count(f, ("ECAL", "target", "energy"))

    def event_shape(self, f):
        return tuple(f["ECAL"].shape[1:])

    def read(self, f, start, stop, geometry):
        showers = np.asarray(f["ECAL"][start:stop], dtype=np.float32)
        energy_key = "target" if "target" in f else "energy"
        primary_energy = _primary_energy_column(f[energy_key], start, stop)
        return showers, primary_energy, np.full(showers.shape[0], np.pi / 2)

    def check_writable(self, geometry):
        _check_cartesian(geometry, self.name)
        if not geometry_is_normal_incidence(geometry):
            raise ValueError(f"the {self.name} layout holds normal incidence only; geometry {geometry.name!r} "
                             f"allows other angles")

    def create(self, f, geometry, compression):
        create_event_dataset(f, "ECAL", geometry.shape, np.float32, compression)
        create_event_dataset(f, "target", (2,), np.float64, compression)

    def append(self, f, showers_gev, primary_energy, incident_angle, geometry, attrs):
        if not is_normal_incidence(incident_angle):
            raise ValueError(f"the {self.name} layout holds normal incidence (90 deg) only; got angles "
                             f"{np.degrees(incident_angle.min()):g}-{np.degrees(incident_angle.max()):g} deg")
        append_events(f["ECAL"], showers_gev.astype(np.float32, copy=False))
        # Column 0's meaning in the public files is undocumented and no 3DGAN code reads it: written as 0.
        append_events(f["target"], np.stack([np.zeros_like(primary_energy), primary_energy], axis=1))


class VariableAngleLayout(Layout):
    name = "3dgan_variable_angle"
    description = "3DGAN variable angle: ECAL (N, 51, 51, 25) 50 x GeV, energy (N,) GeV, theta (N,) rad"

    def matches(self, f: h5py.File) -> bool:
        return "ECAL" in f and "energy" in f and "theta" in f and f["energy"].ndim in (1, 2)

    def count_events(self, f):
        return event_count(f, ("ECAL", "energy", "theta"))

    def event_shape(self, f):
        return tuple(f["ECAL"].shape[1:])

    def read(self, f, start, stop, geometry):
        showers = ecal_x50_to_gev(np.asarray(f["ECAL"][start:stop], dtype=np.float32))
        primary_energy = np.asarray(f["energy"][start:stop], dtype=np.float64).reshape(-1)
        incident_angle = np.asarray(f["theta"][start:stop], dtype=np.float64).reshape(-1)
        return showers, primary_energy, incident_angle

    def check_writable(self, geometry):
        _check_cartesian(geometry, self.name)

    def create(self, f, geometry, compression):
        create_event_dataset(f, "ECAL", geometry.shape, np.float32, compression)
        for key in ("energy", "theta", "mtheta", "sum", "eta"):
            create_event_dataset(f, key, (), np.float64, compression)

    def append(self, f, showers_gev, primary_energy, incident_angle, geometry, attrs):
        ecal = gev_to_ecal_x50(showers_gev.astype(np.float32, copy=False))
        append_events(f["ECAL"], ecal)
        append_events(f["energy"], primary_energy)
        append_events(f["theta"], incident_angle)
        append_events(f["mtheta"], measured_angle(showers_gev))
        append_events(f["sum"], ecal.sum(axis=(1, 2, 3), dtype=np.float64))
        append_events(f["eta"], pseudorapidity(incident_angle))
        particle = attrs.get("particle")
        if particle in PDG_ID:
            if "pdgID" not in f:
                create_event_dataset(f, "pdgID", (), np.int32, compression=None)
            append_events(f["pdgID"], np.full(len(primary_energy), PDG_ID[particle], dtype=np.int32))
