"""Placing generated showers into the detector's cells (pure numpy, no Geant4).

Frames and conventions (the project's angle convention, DESIGN.md):

- Detector frame: the calorimeter face is the plane z = 0, layers are stacked along +z, the
  readout grid is centred on the z axis (Cartesian: cell (i, j) centred at
  ``((i - (nx-1)/2) dx, (j - (ny-1)/2) dy)``; cylindrical: rings and alpha bins around the z axis,
  alpha in [-pi, pi) measured from +x). Lengths in mm.
- A direction is written ``d = (sin(psi) cos(theta), cos(psi) cos(theta), sin(theta))``: ``theta``
  is the polar angle w.r.t. the y axis (the beam axis of the 3DGAN convention), 90 deg = normal
  incidence, ``psi`` the azimuth of the tilt plane about z (psi = 0: the shower axis lies in the
  y-z plane, y(depth) = y0 + depth cot(theta), x constant). psi is folded into (-pi/2, pi/2] so
  that directions in the y-z plane always give psi = 0 and theta in (0, pi).
- A generated shower is in *model* cells: the detector's own grid, translated laterally, with the
  tilt theta already inside it (the networks and GFlash are trained/parametrised in detector
  cells, layer k = depth layer k). Where the particle enters the face in the model frame is the
  *model entry point* ``(mx, my)`` relative to the grid centre: (0, 0) when showers are centred
  on the entry point; for GFlash-convention showers (the project's training data), whose tilted
  axis crosses the grid centre at the depth of the mean shower maximum z_p(E, theta),
  ``(0, -z_p cot(theta))`` (see ``sources.gflash_entry_offset``). Placement therefore does *not*
  rotate the shower in 3-d (unlike Par04, whose mesh follows the particle): it moves the model
  entry point onto the detector entry point, rotates the lateral pattern about it by psi, and
  shifts the layers by the entry layer. Each generated cell goes, whole, to the detector cell that holds its rotated and
  translated centre (cell-centre placement, as Par04 and DDML do); a cell that falls outside the
  grid is *leakage*. Hence, per event, placed energy + leakage = generated energy exactly (up to
  float rounding), which :func:`check_energy_conservation` verifies.
- Units: showers in GeV in, GeV out (Geant4 works in MeV; the Geant4 application converts at its
  edge).
"""

from __future__ import annotations

import math

import numpy as np

from fastshower.geometry import Geometry

#: Primaries placed per vectorised chunk (bounds the index arrays to ~30 MB for 51x51x25).
_CHUNK = 64


def direction_to_condition(direction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(theta, psi) in rad of unit directions ``(n, 3)`` entering through the face (d_z > 0)."""
    d = np.asarray(direction, dtype=np.float64).reshape(-1, 3)
    d = d / np.linalg.norm(d, axis=1, keepdims=True)
    dx, dy, dz = d[:, 0], d[:, 1], d[:, 2]
    rho = np.hypot(dx, dy)
    psi = np.arctan2(dx, dy)
    psi = np.where(psi > math.pi / 2, psi - math.pi, psi)
    psi = np.where(psi <= -math.pi / 2, psi + math.pi, psi)
    psi = np.where(rho < 1e-12, 0.0, psi)
    in_plane = dx * np.sin(psi) + dy * np.cos(psi)  # signed component along the tilt direction
    theta = np.arctan2(dz, in_plane)
    return theta, psi


def condition_to_direction(theta: np.ndarray | float, psi: np.ndarray | float = 0.0) -> np.ndarray:
    """Unit directions ``(n, 3)`` for polar angle ``theta`` (w.r.t. y) and tilt azimuth ``psi``."""
    theta, psi = np.broadcast_arrays(np.asarray(theta, dtype=np.float64), np.asarray(psi, dtype=np.float64))
    theta, psi = theta.reshape(-1), psi.reshape(-1)
    return np.stack([np.sin(psi) * np.cos(theta), np.cos(psi) * np.cos(theta), np.sin(theta)], axis=1)


def entry_layer_of(geometry: Geometry, depth_mm: np.ndarray) -> np.ndarray:
    """Readout layer holding each depth (mm from the face); 0 in front of the face."""
    g = geometry
    edges = g.layer_edges_mm()
    k = np.searchsorted(edges, np.asarray(depth_mm, dtype=np.float64), side="right") - 1
    return np.clip(k, 0, g.n_layers).astype(np.int64)


def _lateral_targets(g: Geometry, x0: np.ndarray, y0: np.ndarray, psi: np.ndarray,
                     model_entry: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Detector lateral cell (flat index) of every model lateral cell, and whether it is inside.

    Returns ``(target, inside)`` of shape ``(m, n_lateral)``.
    """
    c, s = np.cos(psi)[:, None], np.sin(psi)[:, None]
    mx, my = model_entry[:, 0:1], model_entry[:, 1:2]
    if g.kind == "cartesian":
        nx, ny, _ = g.shape
        dx, dy = g.cell_size_mm  # type: ignore[misc]
        xc, yc = g.cell_centres_mm()
        X, Y = (a.reshape(1, -1) for a in np.meshgrid(xc, yc, indexing="ij"))
        X, Y = X - mx, Y - my
        xd = X * c + Y * s + x0[:, None]
        yd = -X * s + Y * c + y0[:, None]
        ix = np.floor(xd / dx + nx / 2).astype(np.int64)
        iy = np.floor(yd / dy + ny / 2).astype(np.int64)
        inside = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
        return ix * ny + iy, inside
    n_r, n_alpha, _ = g.shape
    edges = np.asarray(g.r_edges_mm, dtype=np.float64)
    rc, ac = g.cell_centres_mm()
    R, A = (a.reshape(1, -1) for a in np.meshgrid(rc, ac, indexing="ij"))
    X, Y = R * np.cos(A) - mx, R * np.sin(A) - my
    xd = X * c + Y * s + x0[:, None]
    yd = -X * s + Y * c + y0[:, None]
    r = np.hypot(xd, yd)
    ir = np.searchsorted(edges, r, side="right") - 1
    inside = (ir >= 0) & (r < edges[-1])
    ia = np.floor((np.arctan2(yd, xd) + math.pi) / (2 * math.pi / n_alpha)).astype(np.int64) % n_alpha
    return ir * n_alpha + ia, inside


def place_showers(geometry: Geometry, showers: np.ndarray, entry_xy_mm: np.ndarray,
                  psi: np.ndarray | None = None, entry_layer: np.ndarray | None = None,
                  event_index: np.ndarray | None = None, n_events: int | None = None,
                  model_entry_mm: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Place generated showers into detector cells, summing the primaries of each event.

    ``showers`` float ``(m, *geometry.shape)`` GeV in model cells (one per primary);
    ``entry_xy_mm`` ``(m, 2)`` entry points on the face (mm, detector frame); ``psi`` ``(m,)`` tilt
    azimuths (rad, default 0); ``entry_layer`` ``(m,)`` the layer where each primary enters
    (default 0, the face); ``event_index`` ``(m,)`` the event of each primary in ``[0, n_events)``
    (default: one event per primary); ``model_entry_mm`` ``(m, 2)`` the entry point in the model
    frame relative to the grid centre (default (0, 0)).

    Returns ``(cells, leaked)``: ``cells`` float32 ``(n_events, *geometry.shape)`` GeV and
    ``leaked`` float64 ``(n_events,)`` GeV generated outside the grid (laterally or behind the last
    layer). Summed in float64.
    """
    g = geometry
    showers = np.asarray(showers)
    g.check_shape(showers)
    m = len(showers)
    entry = np.asarray(entry_xy_mm, dtype=np.float64).reshape(m, 2)
    psi = np.zeros(m) if psi is None else np.broadcast_to(np.asarray(psi, dtype=np.float64), (m,))
    layer = np.zeros(m, np.int64) if entry_layer is None else np.broadcast_to(
        np.asarray(entry_layer, dtype=np.int64), (m,))
    model_entry = np.zeros((m, 2)) if model_entry_mm is None else np.asarray(model_entry_mm, np.float64).reshape(m, 2)
    event = np.arange(m) if event_index is None else np.asarray(event_index, dtype=np.int64).reshape(m)
    n_events = (int(event.max()) + 1 if m else 0) if n_events is None else int(n_events)
    if m and (event.min() < 0 or event.max() >= n_events):
        raise ValueError(f"event_index must lie in [0, {n_events})")
    n_lat, nz = g.shape[0] * g.shape[1], g.shape[2]
    n_cells = n_lat * nz
    cells = np.zeros((n_events, n_cells), dtype=np.float64)
    leaked = np.zeros(n_events, dtype=np.float64)
    for start in range(0, m, _CHUNK):
        sl = slice(start, start + _CHUNK)
        target, inside = _lateral_targets(g, entry[sl, 0], entry[sl, 1], psi[sl], model_entry[sl])
        for b in range(len(target)):
            i = start + b
            w = showers[i].reshape(n_lat, nz).astype(np.float64)
            total = w.sum()
            k0 = int(layer[i])
            if k0 >= nz:
                leaked[event[i]] += total
                continue
            kept = w[inside[b], : nz - k0]
            flat = target[b][inside[b]][:, None] * nz + np.arange(k0, nz)[None, :]
            cells[event[i]] += np.bincount(flat.ravel(), weights=kept.ravel(), minlength=n_cells)
            leaked[event[i]] += total - kept.sum()
    return cells.reshape(n_events, *g.shape).astype(np.float32), leaked


def check_energy_conservation(generated_gev: np.ndarray, placed_gev: np.ndarray, leaked_gev: np.ndarray,
                              rtol: float = 1e-5, atol: float = 1e-9) -> float:
    """Per event: placed + leaked must equal generated. Returns the largest relative deviation;
    RuntimeError if it exceeds ``rtol`` (float32 rounding of the cells is ~1e-7 per cell)."""
    generated = np.asarray(generated_gev, dtype=np.float64)
    total = np.asarray(placed_gev, dtype=np.float64) + np.asarray(leaked_gev, dtype=np.float64)
    dev = np.abs(total - generated)
    rel = dev / np.maximum(np.abs(generated), atol)
    bad = dev > rtol * np.abs(generated) + atol
    if np.any(bad):
        i = int(np.argmax(np.where(bad, rel, -1)))
        raise RuntimeError(f"energy not conserved in event {i}: generated {generated[i]:.9g} GeV, placed + "
                           f"leaked {total[i]:.9g} GeV")
    return float(rel.max()) if rel.size else 0.0
