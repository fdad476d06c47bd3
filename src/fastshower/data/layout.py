"""What every file layout provides, and the HDF5 helpers the layouts share.

A layout knows its HDF5 keys and units: it recognises a file (:meth:`Layout.matches`), counts its
events, reads a block of events converted to the shared convention (GeV, rad), creates its
resizable datasets and appends blocks given in the shared convention.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import h5py
import numpy as np

from fastshower.geometry import Geometry

#: Target size of one HDF5 chunk (bytes); a chunk holds a whole number of events.
CHUNK_BYTES = 1 << 20


class Layout(ABC):
    """One file layout. ``read`` returns ``(showers_gev float32 (n, *geometry.shape),
    primary_energy_gev (n,), incident_angle_rad (n,))``."""

    name: str
    description: str

    @abstractmethod
    def matches(self, f: h5py.File) -> bool: ...

    @abstractmethod
    def count_events(self, f: h5py.File) -> int: ...

    @abstractmethod
    def event_shape(self, f: h5py.File) -> tuple[int, ...]:
        """Shape of one event's cell array as stored in the file."""

    @abstractmethod
    def read(self, f: h5py.File, start: int, stop: int, geometry: Geometry
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...

    @abstractmethod
    def check_writable(self, geometry: Geometry) -> None:
        """Raise ValueError if this layout cannot hold showers of ``geometry``."""

    @abstractmethod
    def create(self, f: h5py.File, geometry: Geometry, compression: str | None) -> None: ...

    @abstractmethod
    def append(self, f: h5py.File, showers_gev: np.ndarray, primary_energy: np.ndarray,
               incident_angle: np.ndarray, geometry: Geometry, attrs: dict) -> None: ...


def events_per_chunk(event_shape: tuple[int, ...], itemsize: int = 4) -> int:
    """Whole events per HDF5 chunk, about :data:`CHUNK_BYTES` per chunk (at least one event)."""
    return max(1, CHUNK_BYTES // (int(np.prod(event_shape)) * itemsize))


def create_event_dataset(f: h5py.File, key: str, event_shape: tuple[int, ...], dtype: type,
                         compression: str | None) -> h5py.Dataset:
    """An empty, growable ``(0, *event_shape)`` dataset chunked by whole events, compressed."""
    kwargs: dict = {}
    if compression is not None:
        kwargs = {"compression": compression, "shuffle": True}
        if compression == "gzip":
            kwargs["compression_opts"] = 4
    chunk = (events_per_chunk(event_shape, np.dtype(dtype).itemsize), *event_shape)
    return f.create_dataset(key, shape=(0, *event_shape), maxshape=(None, *event_shape), dtype=dtype,
                            chunks=chunk, **kwargs)


def append_events(ds: h5py.Dataset, block: np.ndarray) -> None:
    """Grow ``ds`` along the event axis and write ``block`` at its end."""
    n0 = ds.shape[0]
    ds.resize(n0 + block.shape[0], axis=0)
    ds[n0:] = block


def is_normal_incidence(incident_angle: np.ndarray) -> bool:
    return bool(np.allclose(incident_angle, np.pi / 2, rtol=0, atol=1e-6))


def geometry_is_normal_incidence(geometry: Geometry) -> bool:
    lo, hi = geometry.angle_range_rad
    return abs(lo - np.pi / 2) < 1e-9 and abs(hi - np.pi / 2) < 1e-9


def event_count(f: h5py.File, keys: tuple[str, ...]) -> int:
    """Number of events in the per-event datasets ``keys`` (those present), which must agree."""
    counts = {k: int(f[k].shape[0]) for k in keys if k in f}
    if len(set(counts.values())) > 1:
        raise ValueError(f"{f.filename}: datasets hold different numbers of events: "
                         + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return next(iter(counts.values()))
