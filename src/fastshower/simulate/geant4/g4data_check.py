"""Checks of the offline data set inside Geant4: per-atom photoelectric and Rayleigh cross sections.

Geant4's own values come from ``G4EmCalculator.ComputeCrossSectionPerAtom`` (processes "phot"
and "Rayl" of G4EmStandardPhysics) after a ``BeamOn(0)`` that builds the physics tables (the
calculator crashes the process before it). They are compared with

- xraylib's Elam/XCOM totals (``CS_Photo``, ``CS_Rayl``): the physics check;
- :func:`file_cross_section`, the files as written, evaluated the way Geant4's readers do
  (G4LivermorePhotoElectricModel: E clamped to the lowest binding energy; high fit above its
  threshold, low fit above its threshold, ``pe-cs``/E^3 above the K edge, ``pe-le-cs``/E^3 below;
  G4LivermoreRayleighModel: ``re-cs``/E^2, 0 below the table, last value/E^2 above): the
  write/read-back check.

Geant4 allows one run manager per process: run :func:`main` in a fresh process,
``python -m fastshower.simulate.geant4.g4data_check --out result.json [--elements W Si ...]``,
with GEANT4_DATA_DIR (or nothing: the offline set is then found or built as in full mode).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
from pathlib import Path

import numpy as np

from fastshower.simulate.geant4.g4data import EMLOW, MATERIAL_ELEMENTS, parse_elements, symbol

#: Elements of the check geometry (W/Si and Pb/Si layers in air, world of G4_Galactic).
CHECK_ELEMENTS = (8, 14, 74, 82)


def check_geometry():
    """A small W/Si + Pb/Si calorimeter, so that the tables of W, Si, Pb, O (air), ... are built."""
    from fastshower.geometry import Geometry, LayerGroup

    return Geometry(name="g4data_check", kind="cartesian", shape=(3, 3, 2), cell_size_mm=(5.1, 5.1),
                    layers=(LayerGroup(count=1, absorber="W", absorber_thickness_mm=2.0, active="Si",
                                       active_thickness_mm=0.5),
                            LayerGroup(count=1, absorber="Pb", absorber_thickness_mm=2.0, active="Si",
                                       active_thickness_mm=0.5)),
                    sampling_fraction=0.02, energy_range_gev=(1.0, 100.0))


def _edges_kev(z: int) -> np.ndarray:
    import xraylib

    out = []
    for s in range(40):
        try:
            out.append(xraylib.EdgeEnergy(z, s))
        except ValueError:
            pass
    return np.array(sorted(set(out)))


def check_energies(z: int, n: int = 40, lo_kev: float = 1.0, hi_kev: float = 800.0,
                   below: float = 0.02, above: float = 0.10) -> np.ndarray:
    """``n`` log-spaced energies in [lo, hi] keV, less those within ``below`` under or ``above``
    over an absorption edge of ``z`` (where Kissel and Elam, and any table, disagree by design)."""
    e = np.geomspace(lo_kev, hi_kev, n)
    edges = _edges_kev(z)
    near = np.any((e[:, None] > edges[None, :] * (1 - below)) & (e[:, None] < edges[None, :] * (1 + above)), axis=1)
    return e[~near]


def readback_energies(z: int) -> np.ndarray:
    """Energies (keV) that visit every branch of Geant4's readers: both sides of each edge, below
    the lowest binding energy, the tables, both fits, above the Elam and Rayleigh tables."""
    edges = _edges_kev(z)
    e = np.concatenate([edges * (1 - 1e-3), edges * (1 + 1e-3), [edges.min() * 0.5, 0.05, 0.3, 3.0, 30.0, 300.0,
                                                                  900.0, 2e3, 5e3, 2e4, 1e6]])
    return np.unique(e)


def xraylib_cross_sections(z: int, e_kev: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(photoelectric, Rayleigh) per atom in barn from xraylib's Elam/XCOM tables."""
    import xraylib

    barn = xraylib.AtomicWeight(z) / xraylib.AVOGNUM
    phot = np.array([xraylib.CS_Photo(z, float(e)) for e in e_kev]) * barn
    rayl = np.array([xraylib.CS_Rayl(z, float(e)) for e in e_kev]) * barn
    return phot, rayl


def _read_vector(path: Path) -> tuple[np.ndarray, np.ndarray]:
    tok = path.read_text().split()
    n = int(tok[2])
    vals = np.array(tok[4:4 + 2 * n], dtype=np.float64).reshape(n, 2)
    return vals[:, 0], vals[:, 1]


def _read_fit(path: Path) -> tuple[float, np.ndarray]:
    tok = path.read_text().split()
    n1 = int(tok[0])
    return float(tok[2]), np.array(tok[3:3 + 7 * n1], dtype=np.float64).reshape(n1, 7)


def file_cross_section(data_dir: str | Path, z: int, e_kev: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(photoelectric, Rayleigh) per atom in barn from the files in ``data_dir``, evaluated as
    Geant4 11.4's Livermore readers do (linear interpolation, see the module docstring)."""
    d = Path(data_dir) / EMLOW / "epics2017"
    e_hi, high = _read_fit(d / "phot" / f"pe-high-{z}.dat")
    e_lo, low = _read_fit(d / "phot" / f"pe-low-{z}.dat")
    cs_e, cs_v = _read_vector(d / "phot" / f"pe-cs-{z}.dat")
    le = d / "phot" / f"pe-le-cs-{z}.dat"
    le_e, le_v = _read_vector(le) if le.exists() else (cs_e, cs_v)
    re_e, re_v = _read_vector(d / "rayl" / f"re-cs-{z}.dat")
    phot, rayl = [], []
    for e in np.asarray(e_kev, np.float64) * 1e-3:  # MeV
        e = max(e, high[-1, 0])
        if e >= e_hi:
            phot.append(sum(high[-1, i] / e ** i for i in range(1, 7)))
        elif e >= e_lo:
            phot.append(sum(low[-1, i] / e ** i for i in range(1, 7)))
        elif e >= high[0, 0]:
            phot.append(np.interp(e, cs_e, cs_v) / e ** 3)
        else:
            phot.append(np.interp(e, le_e, le_v) / e ** 3)
    for e in np.asarray(e_kev, np.float64) * 1e-3:
        if e >= re_e[-1]:
            rayl.append(re_v[-1] / e ** 2)
        elif e >= re_e[0]:
            rayl.append(np.interp(e, re_e, re_v) / e ** 2)
        else:
            rayl.append(0.0)
    return np.array(phot), np.array(rayl) * 1e22  # re-cs is in mm^2: 1 mm^2 = 1e22 barn


def geant4_cross_sections(elements: tuple[int, ...], energies: dict[int, np.ndarray]) -> dict:
    """Geant4's per-atom "phot" and "Rayl" cross sections (barn) for each element at its energies
    (keV), and the elements of the NIST materials of MATERIAL_ELEMENTS as Geant4 builds them.
    Builds the process's Geant4 application: call once, in a fresh process."""
    from fastshower.simulate.geant4.app import get_app

    noise = io.StringIO()
    with contextlib.redirect_stdout(noise):
        app = get_app(check_geometry(), "full")
        app.run_manager.BeamOn(0)  # builds the physics tables; G4EmCalculator needs them
    g4 = app.g4
    calc = g4.G4EmCalculator()
    nist = g4.G4NistManager.Instance()
    out: dict = {"geant4": app.version, "datasets": app.datasets, "G4LEDATA": os.environ.get("G4LEDATA"),
                 "GEANT4_DATA_DIR": os.environ.get("GEANT4_DATA_DIR"), "elements": {}, "materials": {}}
    with contextlib.redirect_stdout(noise):
        for z in elements:
            el = nist.FindOrBuildElement(int(z))
            e = energies[z]
            phot = [calc.ComputeCrossSectionPerAtom(float(x) * g4.keV, "gamma", "phot", el) / g4.barn for x in e]
            rayl = [calc.ComputeCrossSectionPerAtom(float(x) * g4.keV, "gamma", "Rayl", el) / g4.barn for x in e]
            out["elements"][str(z)] = {"energy_kev": e.tolist(), "phot_barn": phot, "rayl_barn": rayl}
        for name in MATERIAL_ELEMENTS:
            mat = nist.FindOrBuildMaterial(name)
            out["materials"][name] = sorted(int(round(mat.GetElement(i).GetZ()))
                                            for i in range(mat.GetNumberOfElements()))
    return out


def compare(result: dict, data_dir: str | Path | None) -> dict:
    """Add xraylib's values and the read-back values to ``result`` and summarise per element:
    largest |Geant4/xraylib - 1| (phot, Rayl) and largest |Geant4/file - 1|."""
    summary = {}
    for key, rec in result["elements"].items():
        z = int(key)
        e = np.array(rec["energy_kev"])
        g_phot, g_rayl = np.array(rec["phot_barn"]), np.array(rec["rayl_barn"])
        phys = np.array(rec["physics"], bool)
        x_phot, x_rayl = xraylib_cross_sections(z, e[phys])
        rec["xraylib_phot_barn"], rec["xraylib_rayl_barn"] = x_phot.tolist(), x_rayl.tolist()
        dev = g_phot[phys] / x_phot - 1
        worst = int(np.argmax(np.abs(dev)))
        row = {"symbol": symbol(z), "n_energies": int(phys.sum()),
               "phot_max_dev": float(abs(dev[worst])), "phot_max_dev_at_kev": float(e[phys][worst]),
               "phot_rms_dev": float(np.sqrt(np.mean(dev ** 2))),
               "rayl_max_dev": float(np.abs(g_rayl[phys] / x_rayl - 1).max())}
        if data_dir is not None:
            f_phot, f_rayl = file_cross_section(data_dir, z, e)
            row["phot_readback_max_dev"] = float(np.abs(g_phot / f_phot - 1).max())
            both = (g_rayl != 0) | (f_rayl != 0)  # below the Rayleigh table both are 0
            row["rayl_readback_max_dev"] = float(np.abs(g_rayl[both] / f_rayl[both] - 1).max())
            row["rayl_readback_zero_agree"] = bool(np.all(g_rayl[~both] == f_rayl[~both]))
        summary[key] = row
    result["summary"] = summary
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--elements", nargs="*", default=[symbol(z) for z in CHECK_ELEMENTS])
    parser.add_argument("--points", type=int, default=40, help="log-spaced energies per element, 1-800 keV")
    args = parser.parse_args(argv)
    elements = parse_elements(args.elements)
    physics = {z: check_energies(z, args.points) for z in elements}
    readback = {z: readback_energies(z) for z in elements}
    energies = {z: np.concatenate([physics[z], readback[z]]) for z in elements}
    result = geant4_cross_sections(elements, energies)
    for z in elements:
        result["elements"][str(z)]["physics"] = [True] * len(physics[z]) + [False] * len(readback[z])
    from fastshower.simulate.geant4.datasets import find_dataset

    emlow = find_dataset("G4EMLOW")
    compare(result, emlow.parent if emlow is not None else None)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # skip Geant4's static destructors (the exit crash of full mode)


if __name__ == "__main__":
    main()
