"""Shower files: the native HDF5 format, the 3DGAN layouts and the CaloChallenge layout.

Read any of them with :func:`read_showers` / :func:`iter_showers` (layout and geometry detected,
converted to the shared convention: GeV, rad), write with :func:`write_showers` or, streaming,
:class:`ShowerWriter`. Unit and layout conversions live in :mod:`fastshower.data.transforms`.
See docs/data-formats.md.
"""

from fastshower.data.calochallenge import check_binning, read_binning_xml, write_binning_xml
from fastshower.data.io import (
    FORMATS,
    ShowerWriter,
    count_events,
    detect_layout,
    geometry_from_cell_shape,
    iter_showers,
    read_events,
    read_showers,
    resolve_paths,
    write_batches,
    write_showers,
)
from fastshower.data.threedgan import measured_angle, pseudorapidity

__all__ = [
    "FORMATS", "ShowerWriter", "check_binning", "count_events", "detect_layout", "geometry_from_cell_shape",
    "iter_showers", "measured_angle", "pseudorapidity", "read_binning_xml", "read_events",
    "read_showers", "resolve_paths", "write_batches", "write_binning_xml", "write_showers",
]
