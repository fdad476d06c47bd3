"""The CaloChallenge 2022 layout (data sets 2 and 3, Par04 Si/W) and its binning XML.

HDF5: ``incident_energies`` (N, 1) in MeV; ``showers`` (N, n_voxels) in MeV **divided by the
sampling fraction** (0.033 for Par04), voxels flattened in (layer, alpha, r) order with r fastest
(``showers.reshape(N, n_layers, n_alpha, n_r)``). No angle is stored: normal incidence.

Binning XML (``binning_dataset_2.xml``)::

    <Bins>
       <Bin pid="11" name="electron">
          <Layer id="0" r_edges="0,4.65,...,41.85" n_bin_alpha="16" />
          ...
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

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
from fastshower.data.transforms import (
    calochallenge_mev_to_deposit_gev,
    deposit_gev_to_calochallenge_mev,
    flatten_calochallenge,
    gev_to_mev,
    mev_to_gev,
    unflatten_calochallenge,
)
from fastshower.fileio import write_text_atomic
from fastshower.geometry import Geometry


def _check_cylindrical(geometry: Geometry) -> None:
    if geometry.kind != "cylindrical":
        raise ValueError(f"the calochallenge layout holds cylindrical (r, alpha, layer) showers; geometry "
                         f"{geometry.name!r} is {geometry.kind}: use format native or 3dgan")


class CaloChallengeLayout(Layout):
    name = "calochallenge"
    description = ("CaloChallenge: incident_energies (N, 1) MeV, showers (N, n_voxels) MeV / sampling fraction, "
                   "voxel order (layer, alpha, r)")

    def matches(self, f: h5py.File) -> bool:
        return "incident_energies" in f and "showers" in f and f["showers"].ndim == 2

    def count_events(self, f):
        return event_count(f, ("showers", "incident_energies"))

    def event_shape(self, f):
        return tuple(f["showers"].shape[1:])

    def read(self, f, start, stop, geometry):
        _check_cylindrical(geometry)
        flat = np.asarray(f["showers"][start:stop], dtype=np.float32)
        showers = calochallenge_mev_to_deposit_gev(unflatten_calochallenge(flat, geometry.shape),
                                                   geometry.sampling_fraction)
        primary_energy = mev_to_gev(np.asarray(f["incident_energies"][start:stop], dtype=np.float64).reshape(-1))
        return showers, primary_energy, np.full(showers.shape[0], np.pi / 2)

    def check_writable(self, geometry):
        _check_cylindrical(geometry)
        if not geometry_is_normal_incidence(geometry):
            raise ValueError(f"the calochallenge layout stores no angle (normal incidence only); geometry "
                             f"{geometry.name!r} allows other angles")

    def create(self, f, geometry, compression):
        create_event_dataset(f, "incident_energies", (1,), np.float64, compression)
        create_event_dataset(f, "showers", (geometry.n_cells,), np.float32, compression)

    def append(self, f, showers_gev, primary_energy, incident_angle, geometry, attrs):
        if not is_normal_incidence(incident_angle):
            raise ValueError("the calochallenge layout stores no angle: normal incidence (90 deg) only")
        flat = flatten_calochallenge(deposit_gev_to_calochallenge_mev(showers_gev.astype(np.float32, copy=False),
                                                                      geometry.sampling_fraction))
        append_events(f["incident_energies"], gev_to_mev(primary_energy)[:, None])
        append_events(f["showers"], flat)


# --- binning XML ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class LayerBinning:
    """One layer of a CaloChallenge binning: radial edges (mm) and the number of alpha bins."""

    layer: int
    r_edges_mm: tuple[float, ...]
    n_alpha: int

    @property
    def n_voxels(self) -> int:
        return (len(self.r_edges_mm) - 1) * self.n_alpha


def binning_of(geometry: Geometry) -> list[LayerBinning]:
    """The CaloChallenge binning of a cylindrical geometry: the same r edges and alpha bins in every layer."""
    _check_cylindrical(geometry)
    _, n_alpha, n_layers = geometry.shape
    return [LayerBinning(i, tuple(float(r) for r in geometry.r_edges_mm or ()), n_alpha) for i in range(n_layers)]


def write_binning_xml(geometry: Geometry, path: str | Path, particle: str = "electron", pid: int = 11) -> None:
    """Write the CaloChallenge binning XML of ``geometry`` (atomically)."""
    root = ET.Element("Bins")
    bin_el = ET.SubElement(root, "Bin", pid=str(pid), name=particle)
    for lb in binning_of(geometry):
        ET.SubElement(bin_el, "Layer", id=str(lb.layer), r_edges=",".join(f"{r:g}" for r in lb.r_edges_mm),
                      n_bin_alpha=str(lb.n_alpha))
    ET.indent(root, space="   ")
    write_text_atomic(path, ET.tostring(root, encoding="unicode") + "\n")


def read_binning_xml(path: str | Path) -> list[LayerBinning]:
    """The layers of a CaloChallenge binning XML (first ``<Bin>``), in file order."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"binning file not found: {path}")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise ValueError(f"{path} is not valid XML: {exc}") from None
    bins = root.findall("Bin")
    if root.tag != "Bins" or not bins:
        raise ValueError(f"{path}: expected <Bins><Bin ...><Layer .../></Bin></Bins>, found root <{root.tag}>")
    layers = []
    for el in bins[0].findall("Layer"):
        try:
            edges = tuple(float(r) for r in el.attrib["r_edges"].split(","))
            layers.append(LayerBinning(int(el.attrib["id"]), edges, int(el.attrib["n_bin_alpha"])))
        except (KeyError, ValueError):
            raise ValueError(
                f"{path}: a <Layer> needs id, r_edges=\"0,...\" and n_bin_alpha; got {el.attrib}") from None
    return layers


def check_binning(binning: list[LayerBinning], geometry: Geometry, rtol: float = 1e-6) -> None:
    """Raise ValueError, naming the first difference, unless ``binning`` is the binning of ``geometry``."""
    expected = binning_of(geometry)
    if len(binning) != len(expected):
        raise ValueError(f"binning has {len(binning)} layers, geometry {geometry.name!r} has {len(expected)}")
    for got, want in zip(binning, expected):
        if got.n_alpha != want.n_alpha:
            raise ValueError(f"layer {got.layer}: binning has {got.n_alpha} alpha bins, geometry {geometry.name!r} "
                             f"has {want.n_alpha}")
        if len(got.r_edges_mm) != len(want.r_edges_mm) or not np.allclose(got.r_edges_mm, want.r_edges_mm, rtol=rtol):
            raise ValueError(f"layer {got.layer}: binning has r edges {list(got.r_edges_mm)} mm, geometry "
                             f"{geometry.name!r} has {list(want.r_edges_mm)} mm")
