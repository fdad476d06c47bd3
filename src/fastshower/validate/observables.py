"""Per-event observables of calorimeter showers (vectorised over events).

Showers follow the shared convention: float32 ``(n, nx, ny, nz)`` (cylindrical:
``(n, n_r, n_alpha, n_layers)``), GeV deposited in the active material, the last axis the depth.
Every function takes the batch and returns one value (or one row) per event. Positions are in mm
where a geometry is given, in cell indices otherwise (the 3DGAN moments).

:func:`event_observables` gathers the scalar and per-layer observables the metrics use;
:func:`observables_from_file` streams a file through it chunk by chunk, so the voxels of a large
file never have to be in memory at once.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# the axis projections and the denominator guard are shared with the quick metrics one layer down
from fastshower.data.summaries import EPS as _EPS
from fastshower.data.summaries import axis_profiles  # noqa: F401
from fastshower.geometry import Geometry, load_geometry

#: Default cell threshold for counting hits (GeV): 0.2 MeV, as the 3DGAN analysis (``get_hits``).
HIT_THRESHOLD_GEV = 2e-4

def profile_moments(profiles: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """First and second moments of each axis profile, in cell indices (3DGAN ``get_moments``).

    m1 = sum_i i S(i) / E and m2 = sum_i (i - m1)^2 S(i) / E with E = sum_i S(i); keys ``m1_x`` ...
    ``m2_z``, each (n,). Empty events get 0.
    """
    out = {}
    for axis, p in profiles.items():
        i = np.arange(p.shape[1], dtype=np.float64)
        total = p.sum(axis=1) + _EPS
        m1 = (p * i).sum(axis=1) / total
        out[f"m1_{axis}"] = m1
        out[f"m2_{axis}"] = (p * (i[None, :] - m1[:, None]) ** 2).sum(axis=1) / total
    return out


def shower_max_layer(layer_energies: np.ndarray) -> np.ndarray:
    """Index of the layer holding the most energy (shower maximum), shape (n,)."""
    return np.argmax(layer_energies, axis=1)


def hit_count(showers: np.ndarray, threshold_gev: float = HIT_THRESHOLD_GEV) -> np.ndarray:
    """Number of cells with a deposit above ``threshold_gev`` (GeV), shape (n,)."""
    return (showers.reshape(len(showers), -1) > threshold_gev).sum(axis=1)


def sparsity(showers: np.ndarray, threshold_gev: float = 0.0) -> np.ndarray:
    """Fraction of cells with no deposit above ``threshold_gev`` (CaloChallenge: 1 - fraction > 0)."""
    return 1.0 - (showers.reshape(len(showers), -1) > threshold_gev).mean(axis=1)


def lateral_cell_positions_mm(geometry: Geometry) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lateral position of every cell of a layer, each shape (shape[0], shape[1]), mm.

    Returns (x, y, r). Cartesian: cell centres. Cylindrical: x = r cos(alpha), y = r sin(alpha) at
    the (r, alpha) bin centres, as CaloChallenge ``XMLHandler`` (its eta and phi, in mm).
    """
    a, b = geometry.cell_centres_mm()
    if geometry.kind == "cartesian":
        x, y = np.meshgrid(a, b, indexing="ij")
        return x, y, np.hypot(x, y)
    r, alpha = np.meshgrid(a, b, indexing="ij")
    return r * np.cos(alpha), r * np.sin(alpha), r


def layer_centres_and_widths(showers: np.ndarray, geometry: Geometry) -> dict[str, np.ndarray]:
    """Energy-weighted centre and width of each layer in x, y and r (mm), each (n, n_layers).

    As CaloChallenge ``HighLevelFeatures``: EC = sum(c E) / (sum E + 1e-16) and
    width = sqrt(max(<c^2> - EC^2, 0)); for cylindrical geometries x and y are CaloChallenge's eta
    and phi (r cos alpha, r sin alpha) and r is the radial bin centre.
    """
    x, y, r = lateral_cell_positions_mm(geometry)
    s = showers.astype(np.float64, copy=False)
    total = s.sum(axis=(1, 2)) + _EPS
    out = {}
    for name, c in (("x", x), ("y", y), ("r", r)):
        centre = np.einsum("nijl,ij->nl", s, c) / total
        second = np.einsum("nijl,ij->nl", s, c * c) / total
        out[f"centre_{name}"] = centre
        out[f"width_{name}"] = np.sqrt(np.clip(second - centre ** 2, 0.0, None))
    return out


def layer_sparsity(showers: np.ndarray, threshold_gev: float = 0.0) -> np.ndarray:
    """Per layer, the fraction of cells with no deposit above ``threshold_gev``, (n, n_layers)."""
    return 1.0 - (showers > threshold_gev).mean(axis=(1, 2))


def measured_angle(layer_y_centre_mm: np.ndarray, layer_energies: np.ndarray,
                   geometry: Geometry) -> np.ndarray:
    """Incident polar angle measured from the shower, rad, shape (n,).

    Fits the energy barycentre in y (mm) of each layer against the layer's depth (mm, its centre)
    by weighted least squares with the layer energies as weights: y = y0 + depth * dy/dz. Then
    theta = pi/2 - atan(dy/dz) (Keras ``measPython``), so a shower along the normal gives pi/2.
    Events with fewer than two layers with energy give pi/2.
    """
    depth = geometry.layer_centres_mm()[None, :]
    w = layer_energies
    sw = w.sum(axis=1) + _EPS
    mean_z = (w * depth).sum(axis=1) / sw
    mean_y = (w * layer_y_centre_mm).sum(axis=1) / sw
    dz = depth - mean_z[:, None]
    cov = (w * dz * (layer_y_centre_mm - mean_y[:, None])).sum(axis=1)
    var = (w * dz * dz).sum(axis=1)
    slope = np.where(var > 0, cov / np.where(var > 0, var, 1.0), 0.0)
    return np.pi / 2 - np.arctan(slope)


def event_observables(showers: np.ndarray, primary_energy: np.ndarray, geometry: Geometry,
                      hit_threshold_gev: float = HIT_THRESHOLD_GEV) -> dict[str, np.ndarray]:
    """All per-event observables of a batch, as a dict of arrays with first dimension n.

    Scalars (n,): ``energy_deposited`` (GeV), ``energy_ratio`` (E_deposited / E_primary, the
    sampling fraction of the event), ``shower_max_layer``, ``hits`` (cells above
    ``hit_threshold_gev``), ``sparsity`` (fraction of empty cells), ``measured_angle`` (rad), the
    moments ``m1_x`` ... ``m2_z`` (cell indices). Rows: ``profile_x/y/z`` (GeV per cell index),
    ``layer_energy`` (GeV), ``centre_x/y/r`` and ``width_x/y/r`` (mm, per layer),
    ``layer_sparsity``.
    """
    geometry.check_shape(showers)
    profiles = axis_profiles(showers)
    layers = profiles["z"]
    energy = layers.sum(axis=1)
    obs: dict[str, np.ndarray] = {
        "energy_deposited": energy,
        "energy_ratio": energy / np.asarray(primary_energy, dtype=np.float64),
        "shower_max_layer": shower_max_layer(layers),
        "hits": hit_count(showers, hit_threshold_gev),
        "sparsity": sparsity(showers),
        "layer_energy": layers,
        "layer_sparsity": layer_sparsity(showers),
    }
    obs.update({f"profile_{k}": v for k, v in profiles.items()})
    obs.update(profile_moments(profiles))
    obs.update(layer_centres_and_widths(showers, geometry))
    obs["measured_angle"] = measured_angle(obs["centre_y"], layers, geometry)
    return obs


def apply_threshold(showers: np.ndarray, threshold_gev: float, in_place: bool = False) -> np.ndarray:
    """``showers`` with cells below ``threshold_gev`` set to 0 (CaloChallenge ``min_energy``): a
    float32 copy, or the array itself changed when ``in_place`` (saves memory on large sets)."""
    if in_place and showers.dtype == np.float32:
        showers[showers < threshold_gev] = 0
        return showers
    return np.where(showers < threshold_gev, np.float32(0), showers).astype(np.float32, copy=False)


def observables_in_chunks(showers: np.ndarray, primary_energy: np.ndarray, geometry: Geometry,
                          chunk_size: int = 2000, **kwargs) -> dict[str, np.ndarray]:
    """:func:`event_observables` over ``chunk_size`` events at a time (bounded float64 temporaries)."""
    parts = [event_observables(showers[i:i + chunk_size], primary_energy[i:i + chunk_size], geometry, **kwargs)
             for i in range(0, len(showers), chunk_size)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def observables_from_file(path: str | Path, geometry: str | Geometry | None = None, chunk_size: int = 2000,
                          max_events: int | None = None, threshold_gev: float | None = None
                          ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, Geometry]:
    """Stream a shower file through :func:`event_observables` (``fastshower.data.iter_showers``).

    Cells below ``threshold_gev`` (default: the geometry's readout threshold) are zeroed first.
    Returns (observables, primary_energy GeV, incident_angle rad, geometry).
    """
    from fastshower.data import iter_showers

    parts, energies, angles = [], [], []
    geo: Geometry | None = load_geometry(geometry) if geometry is not None else None
    seen = 0
    for chunk in iter_showers(path, chunk_size=chunk_size, geometry=geometry):
        if max_events is not None and seen >= max_events:
            break
        if max_events is not None:
            chunk = chunk[: max_events - seen]
        geo = geo or load_geometry(chunk.geometry)
        thr = geo.readout_threshold_gev if threshold_gev is None else threshold_gev
        parts.append(event_observables(apply_threshold(chunk.showers, thr), chunk.primary_energy, geo))
        energies.append(chunk.primary_energy)
        angles.append(chunk.incident_angle)
        seen += len(chunk)
    if not parts:
        raise ValueError(f"no events in {path}")
    obs = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    return obs, np.concatenate(energies), np.concatenate(angles), geo
