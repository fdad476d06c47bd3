"""Geant4 integration (optional extra ``fastshower[geant4]``): full simulation of a fastshower
geometry with scored cells, and the fast-simulation hook that replaces e+/e-/gamma showers by a
shower source (:class:`ShowerSource`: the GFlash parametrisation here; trained generators and
ONNX models from :mod:`fastshower.infer.sources`, which the caller hands in).

Pure-numpy parts (placement, sources, data-set checks) import without geant4_pybind; the
application (:mod:`.app`) imports it when built. See docs/geant4.md.
"""

from fastshower.simulate.geant4.datasets import (DATASETS, PHYSICS_DATASETS, datasets_message, find_dataset,
                                                 geant4_available, import_geant4, missing_datasets,
                                                 require_datasets)
from fastshower.simulate.geant4.placement import (check_energy_conservation, condition_to_direction,
                                                  direction_to_condition, entry_layer_of, place_showers)
from fastshower.simulate.geant4.sources import (ENTRY_CONVENTIONS, FunctionSource, ShowerSource, as_source,
                                                batch_seed, centre_entry_offset, entry_offset_for, entry_offset_of,
                                                gflash_entry_offset, gflash_source)

__all__ = [
    "DATASETS", "PHYSICS_DATASETS", "datasets_message", "find_dataset", "geant4_available", "import_geant4",
    "missing_datasets", "require_datasets", "check_energy_conservation", "condition_to_direction",
    "direction_to_condition", "entry_layer_of", "place_showers", "ShowerSource", "FunctionSource",
    "ENTRY_CONVENTIONS", "as_source", "batch_seed", "gflash_source", "centre_entry_offset", "gflash_entry_offset",
    "entry_offset_for", "entry_offset_of", "Gun", "G4RunResult", "get_app", "run_geant4", "format_timing",
]


def __getattr__(name):
    if name in ("Gun", "G4RunResult", "Geant4App", "get_app", "run_geant4", "format_timing"):
        from fastshower.simulate.geant4 import app

        return getattr(app, name)
    raise AttributeError(name)
