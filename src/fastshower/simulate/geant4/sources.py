"""Shower sources: what the fast-simulation hook calls for the e+/e-/gamma it kills.

A shower source is any object of the :class:`ShowerSource` protocol:

- ``source(primary_energy_gev (m,), incident_angle_rad (m,), seed: int) -> (m, *geometry.shape)``
  float, GeV deposited in the active material per cell, in model cells (entry point at the grid
  centre; see placement.py), called once per batch with all the primaries of that batch (one or
  several events);
- ``source.entry_offset(primary_energy_gev, incident_angle_rad) -> (m, 2)``: where the particle
  enters the face in the model frame, relative to the grid centre (mm): :func:`centre_entry_offset`
  (zeros: showers centred on the entry point) or :func:`gflash_entry_offset` (the convention of
  the project's training data: a tilted axis crosses the grid centre at the mean shower maximum);
- ``source.description``: one line for the run's attributes.

This package (simulate) holds the protocol, :class:`FunctionSource` (a plain function plus an
entry convention) and the GFlash reference parametrisation as a source (:func:`gflash_source`).
Sources backed by a trained model are built above it, in :mod:`fastshower.infer.sources`
(``generator_source``, ``module_source``, ``resolve_source`` for the ``--model`` option), and
handed to the application: simulate never imports them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from fastshower.geometry import Geometry, load_geometry

#: ``(primary_energy_gev (m,), incident_angle_rad (m,)) -> (m, 2)`` model-frame entry point, mm.
EntryOffset = Callable[[np.ndarray, np.ndarray], np.ndarray]
#: The entry conventions :func:`entry_offset_for` knows.
ENTRY_CONVENTIONS = ("gflash", "centre")


@runtime_checkable
class ShowerSource(Protocol):
    """What the Geant4 fast-simulation hook calls (see the module docstring)."""

    @property
    def description(self) -> str:
        """One line naming the source (the run's ``shower_source`` attribute)."""
        ...

    def __call__(self, primary_energy: np.ndarray, incident_angle: np.ndarray, seed: int) -> np.ndarray:
        ...

    def entry_offset(self, primary_energy: np.ndarray, incident_angle: np.ndarray) -> np.ndarray:
        ...


def batch_seed(seed: int, batch_index: int) -> int:
    """The seed the run passes to the shower source for its ``batch_index``-th call."""
    return int(np.random.default_rng([int(seed), 1, int(batch_index)]).integers(2**31 - 1))


def centre_entry_offset(primary_energy: np.ndarray, incident_angle: np.ndarray) -> np.ndarray:
    """Showers centred on the entry point: zeros ``(m, 2)``."""
    return np.zeros((len(np.atleast_1d(primary_energy)), 2))


def gflash_entry_offset(geometry: Geometry | str, particle: str = "e-") -> EntryOffset:
    """Model-frame entry point of GFlash-convention showers: (0, -z_p cot(theta)) mm, with z_p the
    depth where GFlash's tilted axis crosses the grid centre (the mean shower maximum,
    :func:`fastshower.simulate.gflash.pivot_depth_mm`). Zero at normal incidence."""
    from fastshower.simulate.gflash import pivot_depth_mm, stack_parameters

    stack = stack_parameters(load_geometry(geometry))
    kind = "gamma" if particle == "gamma" else "e-"

    def entry_offset(primary_energy: np.ndarray, incident_angle: np.ndarray) -> np.ndarray:
        e = np.asarray(primary_energy, np.float64).reshape(-1)
        t = np.asarray(incident_angle, np.float64).reshape(-1)
        pivot = pivot_depth_mm(stack, e, np.sin(t), kind)
        return np.stack([np.zeros_like(e), -pivot * np.cos(t) / np.sin(t)], axis=1)

    return entry_offset


def entry_offset_for(convention: str, geometry: Geometry | str, particle: str = "e-") -> EntryOffset:
    """The entry convention by name: ``gflash`` (:func:`gflash_entry_offset`) or ``centre``
    (:func:`centre_entry_offset`)."""
    if convention == "gflash":
        return gflash_entry_offset(geometry, particle)
    if convention == "centre":
        return centre_entry_offset
    raise ValueError(f"unknown entry convention {convention!r}; expected gflash or centre")


@dataclass(frozen=True)
class FunctionSource:
    """A plain function ``(primary_energy, incident_angle, seed) -> showers`` as a
    :class:`ShowerSource`, with an explicit entry convention (default: centred)."""

    function: Callable[[np.ndarray, np.ndarray, int], np.ndarray]
    offset: EntryOffset = centre_entry_offset
    description: str = "callable"

    def __call__(self, primary_energy: np.ndarray, incident_angle: np.ndarray, seed: int) -> np.ndarray:
        return self.function(primary_energy, incident_angle, seed)

    def entry_offset(self, primary_energy: np.ndarray, incident_angle: np.ndarray) -> np.ndarray:
        return self.offset(primary_energy, incident_angle)


def as_source(source: ShowerSource | Callable[[np.ndarray, np.ndarray, int], np.ndarray]) -> ShowerSource:
    """``source`` itself if it is a :class:`ShowerSource`, else a plain function wrapped in a
    :class:`FunctionSource` (showers centred on the entry point)."""
    if isinstance(source, ShowerSource):
        return source
    if not callable(source):
        raise TypeError(f"a shower source must be callable, got {type(source).__name__}")
    return FunctionSource(source, centre_entry_offset, getattr(source, "__name__", type(source).__name__))


def gflash_source(geometry: Geometry | str, particle: str = "e-") -> FunctionSource:
    """The GFlash reference parametrisation (``fastshower.simulate.gflash``) as a shower source,
    with its own entry convention."""
    from fastshower.simulate.gflash import simulate_showers

    g = load_geometry(geometry)

    def simulate(primary_energy: np.ndarray, incident_angle: np.ndarray, seed: int) -> np.ndarray:
        return simulate_showers(g, np.asarray(primary_energy, np.float64), np.asarray(incident_angle, np.float64),
                                np.random.default_rng(seed), particle=particle)

    return FunctionSource(simulate, gflash_entry_offset(g, particle), f"gflash ({particle})")


def call_source(source: ShowerSource, geometry: Geometry, primary_energy: np.ndarray,
                incident_angle: np.ndarray, seed: int) -> np.ndarray:
    """Call ``source`` and check what it returns: float array ``(m, *geometry.shape)``."""
    out = np.asarray(source(primary_energy, incident_angle, seed))
    if out.ndim != 4 or out.shape[0] != len(primary_energy) or tuple(out.shape[1:]) != geometry.shape:
        raise ValueError(f"shower source returned shape {out.shape}, expected ({len(primary_energy)}, "
                         f"{', '.join(map(str, geometry.shape))}) for geometry {geometry.name!r}")
    return out


def entry_offset_of(source: ShowerSource, primary_energy: np.ndarray, incident_angle: np.ndarray) -> np.ndarray:
    """``source.entry_offset(...)`` as float64 ``(m, 2)`` (mm)."""
    return np.asarray(source.entry_offset(primary_energy, incident_angle), np.float64).reshape(len(primary_energy), 2)
