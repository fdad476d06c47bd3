"""fastshower: fast calorimeter shower simulation with deep generative models.

Pipeline (one sub-package each): simulate -> data -> models -> train -> validate -> infer.
Shared convention: a shower is a float32 array ``(n_events, nx, ny, nz)`` of energy deposited in the
active material per cell, in GeV, z along the depth; ``primary_energy`` in GeV and
``incident_angle`` (polar angle, rad, 90 deg = normal incidence) travel with it.

The public API below is re-exported here and imported on first use (``import fastshower`` stays
fast: torch, h5py and pydantic load only when a name that needs them is touched; no import at the
top, so the package root stays the bottom layer of tests/test_layers.py). The contracts of
each name are in docs/INTERFACES.md.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    # containers and detectors
    "ShowerSet": "fastshower.showers",
    "Geometry": "fastshower.geometry",
    "PRESETS": "fastshower.geometry",
    "load_geometry": "fastshower.geometry",
    "save_geometry": "fastshower.geometry",
    "parse_spec": "fastshower.conditions",
    "sample_energies": "fastshower.conditions",
    "sample_angles": "fastshower.conditions",
    # simulate
    "simulate_showers": "fastshower.simulate.gflash",
    # data (files)
    "read_showers": "fastshower.data.io",
    "iter_showers": "fastshower.data.io",
    "read_events": "fastshower.data.io",
    "write_showers": "fastshower.data.io",
    "ShowerWriter": "fastshower.data.io",
    # models and inference (torch)
    "Generator": "fastshower.infer.generator",
    "load_generator": "fastshower.models.registry",
    "save_generator": "fastshower.models.registry",
    "build_generator": "fastshower.models.registry",
    # validate
    "compare": "fastshower.validate.comparison",
    "compare_many": "fastshower.validate.comparison",
    "Comparison": "fastshower.validate.comparison",
    # errors the command line reports in one line
    "FastshowerError": "fastshower.errors",
    "UserInputError": "fastshower.errors",
    "DataFileError": "fastshower.errors",
}

__all__ = [
    "PRESETS", "Comparison", "DataFileError", "FastshowerError", "Generator", "Geometry", "ShowerSet", "ShowerWriter",
    "UserInputError", "__version__", "build_generator", "compare", "compare_many", "iter_showers", "load_generator",
    "load_geometry", "parse_spec", "read_events", "read_showers", "sample_angles", "sample_energies", "save_generator",
    "save_geometry", "simulate_showers", "write_showers",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'fastshower' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
