"""The native fastshower HDF5 layout: the shared convention stored as is.

Datasets: ``showers`` float32 ``(n, *geometry.shape)`` deposited GeV per cell, ``primary_energy``
float64 ``(n,)`` GeV, ``incident_angle`` float64 ``(n,)`` polar angle in rad. The file attributes
(written by :mod:`fastshower.data.io` for every layout) carry the geometry name and YAML, the
format version and the provenance.
"""

from __future__ import annotations

import h5py
import numpy as np

from fastshower.data.layout import Layout, append_events, create_event_dataset, event_count
from fastshower.geometry import Geometry


class NativeLayout(Layout):
    name = "native"
    description = "fastshower native: showers (n, *shape) GeV, primary_energy (n,) GeV, incident_angle (n,) rad"

    def matches(self, f: h5py.File) -> bool:
        return all(k in f for k in ("showers", "primary_energy", "incident_angle"))

    def count_events(self, f: h5py.File) -> int:
        return event_count(f, ("showers", "primary_energy", "incident_angle"))

    def event_shape(self, f: h5py.File) -> tuple[int, ...]:
        return tuple(f["showers"].shape[1:])

    def read(self, f, start, stop, geometry):
        return (np.asarray(f["showers"][start:stop], dtype=np.float32),
                np.asarray(f["primary_energy"][start:stop], dtype=np.float64),
                np.asarray(f["incident_angle"][start:stop], dtype=np.float64))

    def check_writable(self, geometry: Geometry) -> None:
        return None  # every geometry fits the native layout

    def create(self, f, geometry, compression):
        create_event_dataset(f, "showers", geometry.shape, np.float32, compression)
        create_event_dataset(f, "primary_energy", (), np.float64, compression)
        create_event_dataset(f, "incident_angle", (), np.float64, compression)

    def append(self, f, showers_gev, primary_energy, incident_angle, geometry, attrs):
        append_events(f["showers"], showers_gev.astype(np.float32, copy=False))
        append_events(f["primary_energy"], primary_energy)
        append_events(f["incident_angle"], incident_angle)
