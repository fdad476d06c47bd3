"""A minimal Geant4 data set for electromagnetic showers, built offline from public tables.

Geant4's standard EM physics (G4EmStandardPhysics, options 1 and 2) opens, for each element of
the geometry, the Seltzer-Berger bremsstrahlung table ``G4EMLOW/brem_SB/br<Z>``, five Livermore
photoelectric files ``G4EMLOW/epics2017/phot/pe-{cs,high,low,ss-cs,le-cs}-<Z>.dat`` and (option 0
only) the Rayleigh file ``G4EMLOW/epics2017/rayl/re-cs-<Z>.dat``; nothing else of G4EMLOW. This
module writes exactly those files (see /work/shared/docs/reference/geant4-offline-data.md and
docs/geant4.md, "Offline data set"):

- ``brem_SB/br<Z>``: the NIST Seltzer-Berger tables (Z = 1-92, shipped with the package as
  ``nist_brems.npz``, an exact and checked re-encoding of the published text files), values
  copied verbatim in the line order of ``G4Physics2DVector::Retrieve``.
- photoelectric: xraylib. Shell binding energies ``EdgeEnergy``; shell cross sections Kissel
  (``CS_Photo_Partial``) up to E_kv, the highest energy where Kissel's total agrees with the
  Elam/XCOM total (``CS_Photo``) within 2 %, scaled by Elam/Kissel (taken away from edges and
  interpolated across them), so that the total is Elam's away from edges (Kissel and Elam differ
  by up to 5 % tens of % above some edges, e.g. Si at 2.4 keV); above E_kv the Elam total with
  the shell fractions frozen at E_kv; above the Elam tables (0.8 or 1 MeV) the energy dependence
  of Sauter's K-shell formula, normalised to the last tabulated point. The two parametrisations (``pe-low``,
  ``pe-high``: sigma = sum_i a_i / E^i, one fit per cumulative shell sum) are least-squares fits
  in relative error (for the total, refined towards the smallest largest residual); their
  residuals go into the manifest.
- ``re-cs``: xraylib ``CS_Rayl`` (Elam), 0.1-800 keV.
- The other data-set directories of Geant4 11.4 (geant4_pybind sets its data variables only when
  all twelve exist) and an empty ``G4ENSDFSTATE3.0/ENSDFSTATE.dat`` (no ions), each marked with a
  ``FASTSHOWER_PLACEHOLDER`` file so that nothing mistakes them for real data.

The build is deterministic (the same elements give byte-identical files: no time stamp, fixed
grids and formats), atomic (files are written under temporary names and renamed; a new set is
assembled in a temporary directory and renamed into place; the manifest, written last, is what
makes a directory a data set) and extensible (adding an element adds its files and rewrites the
manifest; every file depends only on its element, so an extended set equals one built at once).

Units in this module: photon energies in keV unless a name says MeV, cross sections in barn/atom.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fastshower.fileio import write_text_atomic

#: Version of the recipe (formats, grids, fits). A set built with another recipe is rebuilt.
RECIPE = 1
MANIFEST = "fastshower-g4data.json"
PLACEHOLDER_MARKER = "FASTSHOWER_PLACEHOLDER"
EMLOW = "G4EMLOW8.8"
ENSDFSTATE = "G4ENSDFSTATE3.0"
#: Environment variable that overrides the default location of the fastshower-built set.
DIR_ENV = "FASTSHOWER_G4DATA_DIR"

SYMBOLS = ("H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br "
           "Kr Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er "
           "Tm Yb Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U").split()
MAX_Z = 92

#: Elements of the Geant4 (NIST) materials fastshower builds (app.G4_MATERIALS, the world's
#: G4_Galactic and the gaps' G4_AIR; G4_AIR also holds Ar).
MATERIAL_ELEMENTS: dict[str, tuple[int, ...]] = {
    "G4_Galactic": (1,), "G4_AIR": (6, 7, 8, 18), "G4_W": (74,), "G4_Si": (14,), "G4_Pb": (82,), "G4_Fe": (26,),
    "G4_Cu": (29,), "G4_lAr": (18,), "G4_PbWO4": (8, 74, 82), "G4_PLASTIC_SC_VINYLTOLUENE": (1, 6),
}
#: Materials every fastshower Geant4 geometry contains besides its layers.
FRAME_MATERIALS = ("G4_Galactic", "G4_AIR")

_NIST_NPZ = Path(__file__).with_name("nist_brems.npz")
_NIST_JSON = Path(__file__).with_name("nist_brems.json")
ELECTRON_MASS_MEV = 0.51099895
_MEV = 1e-3  # keV -> MeV


# ------------------------------------------------------------------------------------------------
# elements

def element_z(spec: str | int) -> int:
    """Atomic number of ``spec`` (a symbol such as ``W`` or a number such as ``74``), 1-92."""
    text = str(spec).strip()
    if text.isdigit():
        z = int(text)
    else:
        matches = [i + 1 for i, s in enumerate(SYMBOLS) if s.lower() == text.lower()]
        if not matches:
            raise ValueError(f"unknown element {spec!r}: give a symbol (W, Si, ...) or an atomic number 1-{MAX_Z}")
        z = matches[0]
    if not 1 <= z <= MAX_Z:
        raise ValueError(f"element Z={z} is outside 1-{MAX_Z} (the NIST bremsstrahlung tables)")
    return z


def symbol(z: int) -> str:
    return SYMBOLS[z - 1]


def material_elements(materials: Iterable[str]) -> tuple[int, ...]:
    """Sorted atomic numbers of the Geant4 materials ``materials`` (names as in MATERIAL_ELEMENTS)."""
    out: set[int] = set()
    for m in materials:
        if m not in MATERIAL_ELEMENTS:
            raise ValueError(f"no element list for Geant4 material {m!r}; known: {', '.join(MATERIAL_ELEMENTS)}")
        out.update(MATERIAL_ELEMENTS[m])
    return tuple(sorted(out))


def geometry_elements(geometry) -> tuple[int, ...]:
    """Elements Geant4 meets in ``geometry`` (a Geometry or a preset name / YAML path): its layers'
    materials, the air of the gaps and the vacuum of the world."""
    from fastshower.geometry import load_geometry
    from fastshower.simulate.geant4.app import G4_MATERIALS

    g = load_geometry(geometry)
    names = set(FRAME_MATERIALS)
    for grp in g.layers:
        for m in (grp.absorber, grp.active):
            if m not in G4_MATERIALS:
                raise ValueError(f"geometry {g.name}: material {m!r} has no Geant4 material "
                                 f"(known: {', '.join(G4_MATERIALS)})")
            names.add(G4_MATERIALS[m])
    return material_elements(names)


def default_elements() -> tuple[int, ...]:
    """Elements of every material fastshower's Geant4 application can build (one set for all
    presets and any geometry YAML made of known materials)."""
    from fastshower.simulate.geant4.app import G4_MATERIALS

    return material_elements(set(G4_MATERIALS.values()) | set(FRAME_MATERIALS))


def parse_elements(specs: Iterable[str]) -> tuple[int, ...]:
    """Atomic numbers of ``specs`` (symbols or numbers, also comma-separated), sorted, unique."""
    out = {element_z(s) for spec in specs for s in str(spec).split(",") if s.strip()}
    if not out:
        raise ValueError("no element given")
    return tuple(sorted(out))


def default_data_dir() -> Path:
    """Where fastshower keeps its data set: $FASTSHOWER_G4DATA_DIR, else
    $XDG_CACHE_HOME/fastshower/g4data (default ~/.cache/fastshower/g4data)."""
    if os.environ.get(DIR_ENV):
        return Path(os.environ[DIR_ENV]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "fastshower" / "g4data"


# ------------------------------------------------------------------------------------------------
# NIST Seltzer-Berger tables: packing (done once, by a developer) and unpacking

_TOKEN = re.compile(r"(\d)\.(\d{6})e([+-]\d\d)")


def _encode_tokens(tokens: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``d.dddddde+XX`` tokens -> (7-digit integer mantissa, decimal exponent): an exact code."""
    mant = np.empty(len(tokens), np.int32)
    expo = np.empty(len(tokens), np.int8)
    for i, tok in enumerate(tokens):
        m = _TOKEN.fullmatch(tok)
        if m is None:
            raise ValueError(f"unexpected number {tok!r} in a NIST table")
        mant[i] = int(m.group(1) + m.group(2))
        expo[i] = int(m.group(3))
    return mant, expo


def _decode_tokens(mant: np.ndarray, expo: np.ndarray) -> list[str]:
    return [f"{m // 1000000}.{m % 1000000:06d}e{e:+03d}" for m, e in zip(mant.tolist(), expo.tolist())]


def _nist_table_text(tokens: list[str]) -> str:
    """The layout of the published nist_brems_<Z> files: six numbers a line, each followed by
    two blanks, no newline at the end."""
    return "\n".join("".join(t + "  " for t in tokens[i:i + 6]) for i in range(0, len(tokens), 6))


def pack_nist_brems(source_dir: str | Path, npz_path: str | Path = _NIST_NPZ,
                    json_path: str | Path = _NIST_JSON) -> dict:
    """Re-encode the NIST tables of ``source_dir`` (nist_brems_grid, nist_brems_1..92) into the
    package's ``nist_brems.npz`` and write the provenance record (md5 of every source file and
    sha256 of the npz); refuses if decoding does not give back every file byte for byte."""
    src = Path(source_dir)
    grid = (src / "nist_brems_grid").read_bytes()
    mants, expos, md5 = [], [], {"nist_brems_grid": hashlib.md5(grid).hexdigest()}
    for z in range(1, MAX_Z + 1):
        raw = (src / f"nist_brems_{z}").read_bytes()
        tokens = raw.decode("ascii").split()
        if len(tokens) != 57 * 32:
            raise ValueError(f"nist_brems_{z}: {len(tokens)} numbers, expected 57 x 32")
        mant, expo = _encode_tokens(tokens)
        if _nist_table_text(_decode_tokens(mant, expo)).encode("ascii") != raw:
            raise ValueError(f"nist_brems_{z}: the re-encoding does not reproduce the file")
        mants.append(mant)
        expos.append(expo)
        md5[f"nist_brems_{z}"] = hashlib.md5(raw).hexdigest()
    np.savez_compressed(npz_path, grid=np.frombuffer(grid, np.uint8), mantissa=np.stack(mants),
                        exponent=np.stack(expos))
    record = {
        "content": "NIST electron bremsstrahlung tables (Seltzer and Berger, ADNDT 35 (1986) 345), Z = 1-92: "
                   "scaled cross sections (beta^2/Z^2) k dsigma/dk in mb on 57 electron kinetic energies "
                   "(1 keV - 10 GeV) x 32 reduced photon energies k/T",
        "source": "github.com/RuiFilipeCampos/MontyCarlo@d5f1eef171b9c02b772ddc8a681bb8ed70396a24 "
                  "materials/electron/NIST_BREM1/ (copy described in /work/shared/data/nist-brems/README.md)",
        "encoding": "grid: the bytes of nist_brems_grid; mantissa (92, 1824) int32 and exponent int8: every "
                    "number d.dddddde+XX of nist_brems_<Z> as the integer dddddddd and XX, in file order (57 T "
                    "rows of 32 k/T values); the text file is six numbers a line, each followed by two blanks, "
                    "lines joined by newlines, none at the end",
        "md5": md5,
        "npz_sha256": hashlib.sha256(Path(npz_path).read_bytes()).hexdigest(),
    }
    write_text_atomic(json_path, json.dumps(record, indent=1) + "\n")
    return record


@dataclass(frozen=True)
class NistBrems:
    grid_text: str
    mantissa: np.ndarray  # (92, 1824) int32
    exponent: np.ndarray  # (92, 1824) int8
    record: dict

    def source_text(self, z: int) -> str:
        """The published ``nist_brems_<Z>`` file, byte for byte."""
        return _nist_table_text(_decode_tokens(self.mantissa[z - 1], self.exponent[z - 1]))

    def tokens(self, z: int) -> list[str]:
        return _decode_tokens(self.mantissa[z - 1], self.exponent[z - 1])


_NIST_CACHE: list[NistBrems] = []


def nist_brems() -> NistBrems:
    """The shipped NIST tables (checked against their recorded sha256)."""
    if not _NIST_CACHE:
        raw = _NIST_NPZ.read_bytes()
        record = json.loads(_NIST_JSON.read_text())
        if hashlib.sha256(raw).hexdigest() != record["npz_sha256"]:
            raise RuntimeError(f"{_NIST_NPZ} does not match its recorded sha256: reinstall fastshower")
        with np.load(_NIST_NPZ) as f:
            _NIST_CACHE.append(NistBrems(f["grid"].tobytes().decode("ascii"), f["mantissa"], f["exponent"], record))
    return _NIST_CACHE[0]


def brem_sb_text(z: int) -> str:
    """``brem_SB/br<Z>`` as G4Physics2DVector::Retrieve reads it: ``2 32 57``, the 32 k/T nodes,
    ln(T/MeV) of the 57 electron energies, then 57 rows of 32 values (the NIST numbers, verbatim)."""
    nist = nist_brems()
    grid = nist.grid_text.split()
    n_z, n_t, n_k = (int(v) for v in grid[:3])
    t_mev = [float(v) for v in grid[3:3 + n_t]]
    k_nodes = grid[3 + n_t:3 + n_t + n_k]
    tokens = nist.tokens(z)
    lines = [f"2 {n_k} {n_t}", " ".join(k_nodes), " ".join(f"{math.log(t):.10g}" for t in t_mev)]
    lines += [" ".join(tokens[i * n_k:(i + 1) * n_k]) for i in range(n_t)]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------
# photoelectric and Rayleigh cross sections from xraylib

def _xraylib():
    try:
        import xraylib
    except ModuleNotFoundError as exc:
        raise RuntimeError("building the Geant4 data set needs xraylib: pip install 'fastshower[geant4]'") from exc
    return xraylib


def _try(f, *args) -> float | None:
    try:
        return float(f(*args))
    except ValueError:
        return None


def sauter_k_shape(e_mev: np.ndarray) -> np.ndarray:
    """Energy dependence of Sauter's K-shell photoeffect cross section (arbitrary normalisation;
    photoelectron energy = photon energy, binding neglected)."""
    k = np.asarray(e_mev, np.float64) / ELECTRON_MASS_MEV
    g = 1.0 + k
    p = np.sqrt(g * g - 1.0)
    return p ** 3 / k ** 5 * (4.0 / 3.0 + g * (g - 2.0) / (g + 1.0) * (1.0 - np.log(g + p) / (g * p)))


#: Energies within [B (1 - EDGE_BELOW), B (1 + EDGE_ABOVE)] of a binding energy B are "near an
#: edge": there the Elam/Kissel ratio is interpolated (Elam's tables put some edges up to 2 % away
#: from xraylib's EdgeEnergy, which Geant4 uses as the shell binding energies).
EDGE_BELOW, EDGE_ABOVE = 0.005, 0.04
ELAM_MIN_KEV = 0.1009  # the lowest energy of xraylib's CS_Photo
#: Energies where xraylib's CS_Photo has a kink (its log-log slope jumps at 1 keV, where Elam's
#: tables join their low-energy part): nodes of every grid, so no interpolation straddles them.
KNOTS_KEV = (1.0,)


def _with_knots(grid: np.ndarray) -> np.ndarray:
    lo, hi = grid[0], grid[-1]
    knots = [k for k in KNOTS_KEV if lo < k < hi]
    if not knots:
        return grid
    keep = np.all(np.abs(grid[:, None] / np.array(knots)[None, :] - 1) > 1e-3, axis=1)
    return np.unique(np.concatenate([grid[keep], knots]))


@dataclass
class PhotoModel:
    """The photoelectric cross sections of one element (barn/atom, E in keV).

    Below ``e_kv_kev`` the shell cross sections are Kissel's (``CS_Photo_Partial``, edges at the
    binding energies) times ``R(E)`` = Elam total / Kissel total, taken away from edges and
    interpolated in log E across them; so the total equals Elam's (``CS_Photo``) away from edges.
    Above ``e_kv_kev``: Elam's total with the shell fractions of ``e_kv_kev``; above Elam's table
    (``e_tab_kev``) the energy dependence of Sauter's K-shell formula."""

    z: int
    shells: list[int]          # xraylib shell indices, K first, the lowest binding energy last
    binding_kev: np.ndarray    # (n_shells,)
    barn_per_cm2g: float       # A / N_A x 1e24
    e_kv_kev: float            # Kissel shells (x R) below, Elam total with frozen fractions above
    e_tab_kev: float           # last energy of the Elam table (Sauter shape above)
    kissel_elam_ratio_at_e_kv: float
    frozen_fraction: np.ndarray  # shell fractions at E_kv
    ratio_log_e: np.ndarray    # log(E/keV) nodes of R
    ratio: np.ndarray          # R at the nodes

    def kissel_shells(self, e_kev: np.ndarray) -> np.ndarray:
        """(n_shells, n) Kissel shell cross sections in barn; 0 below each binding energy."""
        xrl = _xraylib()
        e = np.atleast_1d(np.asarray(e_kev, np.float64))
        out = np.zeros((len(self.shells), len(e)))
        for j, ej in enumerate(e):
            for i, (s, b) in enumerate(zip(self.shells, self.binding_kev)):
                if ej >= b:
                    out[i, j] = _try(xrl.CS_Photo_Partial, self.z, s, max(ej, b * (1 + 1e-9))) or 0.0
        return out * self.barn_per_cm2g

    def shell(self, e_kev: np.ndarray) -> np.ndarray:
        """(n_shells, n_energies) shell cross sections; 0 below each shell's binding energy."""
        e = np.atleast_1d(np.asarray(e_kev, np.float64))
        out = np.zeros((len(self.shells), len(e)))
        low = e <= self.e_kv_kev
        if low.any():
            r = np.interp(np.log(e[low]), self.ratio_log_e, self.ratio)
            out[:, low] = self.kissel_shells(e[low]) * r[None, :]
        if (~low).any():
            out[:, ~low] = (self.frozen_fraction[:, None] * self.total_above_e_kv(e[~low])[None, :]
                            * (e[~low][None, :] >= self.binding_kev[:, None]))
        return out

    def total_above_e_kv(self, e_kev: np.ndarray) -> np.ndarray:
        xrl = _xraylib()
        e = np.asarray(e_kev, np.float64)
        tab = np.minimum(e, self.e_tab_kev)
        elam = np.array([xrl.CS_Photo(self.z, float(x)) for x in tab]) * self.barn_per_cm2g
        scale = sauter_k_shape(e * _MEV) / sauter_k_shape(np.array([self.e_tab_kev * _MEV]))[0]
        return np.where(e > self.e_tab_kev, elam * scale, elam)

    def total(self, e_kev: np.ndarray) -> np.ndarray:
        return self.shell(e_kev).sum(axis=0)


def _near_edge(e_kev: np.ndarray, binding_kev: np.ndarray) -> np.ndarray:
    e = np.asarray(e_kev)[:, None]
    b = np.asarray(binding_kev)[None, :]
    return np.any((e >= b * (1 - EDGE_BELOW)) & (e <= b * (1 + EDGE_ABOVE)), axis=1)


def photo_model(z: int) -> PhotoModel:
    """Shells, E_kv, R(E) and the frozen shell fractions of element ``z`` (see PhotoModel)."""
    xrl = _xraylib()
    shells, binding = [], []
    for s in range(0, 40):
        b = _try(xrl.EdgeEnergy, z, s)
        if b is not None and b > 0 and _try(xrl.CS_Photo_Partial, z, s, b * (1 + 1e-9)) is not None:
            shells.append(s)
            binding.append(b)
    lowest = int(np.argmin(binding))
    if lowest != len(shells) - 1 and binding[lowest] < binding[-1]:  # Geant4 clamps E to the last row
        shells.append(shells.pop(lowest))
        binding.append(binding.pop(lowest))
    binding_kev = np.array(binding)
    barn = xrl.AtomicWeight(z) / xrl.AVOGNUM
    # last energy of the Elam table: bisection, rounded down to 0.1 keV
    lo, hi = 100.0, 10000.0
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if _try(xrl.CS_Photo, z, mid) is not None else (lo, mid)
    e_tab = math.floor(lo * 10 + 1e-6) / 10
    model = PhotoModel(z, shells, binding_kev, barn, e_tab, e_tab, 1.0, np.zeros(len(shells)),
                       np.zeros(1), np.ones(1))
    # E_kv: the highest energy where Kissel's total is within 2 % of Elam's (above it xraylib
    # returns Kissel's RTAB extrapolation); R(E) = Elam / Kissel away from edges below it
    grid = _with_knots(np.geomspace(ELAM_MIN_KEV, e_tab, 600))
    kissel = model.kissel_shells(grid).sum(axis=0)
    elam = np.array([xrl.CS_Photo(z, float(e)) for e in grid]) * barn
    good = np.abs(kissel / elam - 1) <= 0.02
    e_kv = float(grid[np.nonzero(good)[0][-1]]) if good.any() else float(grid[0])
    use = (grid <= e_kv) & ~_near_edge(grid, binding_kev) & (kissel > 0)
    model.ratio_log_e, model.ratio = np.log(grid[use]), elam[use] / kissel[use]
    model.e_kv_kev = e_kv
    partial = model.kissel_shells(np.array([e_kv]))[:, 0]
    model.kissel_elam_ratio_at_e_kv = float(partial.sum() / (xrl.CS_Photo(z, e_kv) * barn))
    model.frozen_fraction = partial / partial.sum()
    return model


def _fit_inverse_powers(e_mev: np.ndarray, sigma: np.ndarray, minimax_iterations: int = 0) -> np.ndarray:
    """a_1..a_6 of sum_i a_i / E^i fitted to ``sigma`` in relative error: least squares, then
    (``minimax_iterations`` > 0) Lawson's reweighting towards the smallest largest residual."""
    e0 = float(e_mev[0])
    x = e0 / e_mev
    design = np.stack([x ** i for i in range(1, 7)], axis=1) / sigma[:, None]
    norm = np.linalg.norm(design, axis=0)
    design = design / norm
    ones = np.ones_like(sigma)
    coef, *_ = np.linalg.lstsq(design, ones, rcond=None)
    best = (np.abs(design @ coef - 1).max(), coef)
    weight = np.full(len(sigma), 1.0 / len(sigma))
    for _ in range(minimax_iterations):
        root = np.sqrt(weight)
        coef, *_ = np.linalg.lstsq(design * root[:, None], root, rcond=None)
        res = np.abs(design @ coef - 1)
        if res.max() < best[0]:
            best = (res.max(), coef)
        weight = weight * res
        weight /= weight.sum()
    return best[1] / norm * e0 ** np.arange(1, 7)


#: Lawson iterations for the fit of the total (the partial shell sums only choose the shell).
MINIMAX_ITERATIONS = 60


def _eval_inverse_powers(a: np.ndarray, e_mev: np.ndarray) -> np.ndarray:
    x = 1.0 / np.asarray(e_mev)
    return sum(a[i] * x ** (i + 1) for i in range(6))


def _fmt_vector(e_mev: np.ndarray, values: np.ndarray) -> str:
    """G4PhysicsVector ascii format: ``emin emax n`` / ``n`` / n lines ``E value``."""
    lines = [f"{e_mev[0]:.10e} {e_mev[-1]:.10e} {len(e_mev)}", f"{len(e_mev)}"]
    lines += [f"{e:.10e} {v:.8e}" for e, v in zip(e_mev, values)]
    return "\n".join(lines) + "\n"


#: Grids of the written tables and of the fits.
PE_CS_POINTS, PE_SS_POINTS, PE_LE_POINTS = 120, 80, 300
FIT_POINTS_PER_DECADE = 60
FIT_TOP_KEV = 1e8  # the high-energy fit is sampled up to 1e5 MeV
E_LO_RATIOS = (2.0, 3.0, 5.0, 8.0)
E_HI_MAX_KEV = 2000.0


def photoelectric_files(z: int) -> tuple[dict[str, str], dict]:
    """The five Livermore photoelectric files of element ``z`` (name -> text; none of pe-ss-cs and
    pe-le-cs for a one-shell atom) and a record of the fit ranges and residuals."""
    m = photo_model(z)
    b_k, b_min = float(m.binding_kev[0]), float(m.binding_kev[-1])
    n_sh = len(m.shells)
    # fine grid for the fits, cumulative shell sums on it
    n_fine = int(round(math.log10(FIT_TOP_KEV / b_k) * FIT_POINTS_PER_DECADE)) + 1
    fine = np.geomspace(b_k * 1.5, FIT_TOP_KEV, n_fine)
    below = fine <= m.e_kv_kev
    cum = np.empty((n_sh, len(fine)))
    if below.any():
        cum[:, below] = np.cumsum(m.shell(fine[below]), axis=0)
    if (~below).any():
        cum[:, ~below] = np.cumsum(m.frozen_fraction)[:, None] * m.total_above_e_kv(fine[~below])[None, :]
    total = cum[-1]
    fine_mev = fine * _MEV

    def fit_range(lo_kev: float, hi_kev: float) -> tuple[np.ndarray, np.ndarray]:
        sel = (fine >= lo_kev * (1 - 1e-12)) & (fine <= hi_kev * (1 + 1e-12))
        return sel, _fit_inverse_powers(fine_mev[sel], total[sel])

    best = None
    for r in E_LO_RATIOS:
        e_lo = r * b_k
        for e_hi in fine[(fine > 1.5 * e_lo) & (fine <= E_HI_MAX_KEV)]:
            sel_lo, a_lo = fit_range(e_lo, e_hi)
            sel_hi, a_hi = fit_range(e_hi, FIT_TOP_KEV)
            if sel_lo.sum() < 12:
                continue
            res_lo = np.abs(_eval_inverse_powers(a_lo, fine_mev[sel_lo]) / total[sel_lo] - 1).max()
            res_hi = np.abs(_eval_inverse_powers(a_hi, fine_mev[sel_hi]) / total[sel_hi] - 1).max()
            worst = max(res_lo, res_hi)
            if best is None or worst < best[0] - 1e-12:
                best = (worst, e_lo, float(e_hi))
    if best is None:
        raise RuntimeError(f"Z={z}: no fit range for the photoelectric parametrisation")
    _, e_lo, e_hi = best
    rows_lo: list[np.ndarray] = []
    rows_hi: list[np.ndarray] = []
    residuals: dict[str, float] = {}
    for name, lo_kev, hi_kev, rows in (("low", e_lo, e_hi, rows_lo), ("high", e_hi, FIT_TOP_KEV, rows_hi)):
        sel = (fine >= lo_kev * (1 - 1e-12)) & (fine <= hi_kev * (1 + 1e-12))
        worst_shell = 0.0
        for s in range(n_sh):
            a = _fit_inverse_powers(fine_mev[sel], cum[s, sel], MINIMAX_ITERATIONS if s == n_sh - 1 else 0)
            rows.append(a)
            res = _eval_inverse_powers(a, fine_mev[sel]) / cum[s, sel] - 1
            if s == n_sh - 1:
                residuals[f"{name}_max"] = float(np.abs(res).max())
                residuals[f"{name}_rms"] = float(np.sqrt(np.mean(res ** 2)))
            else:
                worst_shell = max(worst_shell, float(np.abs(res).max()))
        residuals[f"{name}_max_partial_sums"] = worst_shell

    def fit_file(threshold_kev: float, rows: list[np.ndarray]) -> str:
        lines = [f"{n_sh} {n_sh} {threshold_kev * _MEV:.10e}"]
        for b, a in zip(m.binding_kev, rows):
            lines.append(f"{b * _MEV:.10e} " + " ".join(f"{v:.10e}" for v in a))
        return "\n".join(lines) + "\n"

    files = {f"pe-high-{z}.dat": fit_file(e_hi, rows_hi), f"pe-low-{z}.dat": fit_file(e_lo, rows_lo)}
    # total above the K edge: sigma E^3 [barn MeV^3]
    e_cs = _with_knots(np.geomspace(b_k, e_lo, PE_CS_POINTS))
    files[f"pe-cs-{z}.dat"] = _fmt_vector(e_cs * _MEV, m.total(e_cs) * (e_cs * _MEV) ** 3)
    if n_sh > 1:
        # below the K edge: log grid plus both sides of every edge
        edges = np.unique(m.binding_kev)
        pts = _with_knots(np.geomspace(b_min, b_k, PE_LE_POINTS))
        keep = np.all(np.abs(pts[:, None] / edges[None, :] - 1) > 1e-4, axis=1)
        e_le = np.unique(np.concatenate([pts[keep], edges, edges[edges > b_min] * (1 - 1e-6)]))
        e_le = e_le[(e_le >= b_min) & (e_le <= b_k)]
        files[f"pe-le-cs-{z}.dat"] = _fmt_vector(e_le * _MEV, m.total(e_le) * (e_le * _MEV) ** 3)
        blocks = []
        for s in range(n_sh):
            b = float(m.binding_kev[s])
            e_s = _with_knots(np.geomspace(b, e_lo, PE_SS_POINTS))
            v = m.shell(e_s)[s] * (e_s * _MEV) ** 3
            blocks.append(f"{b * _MEV:.10e} {e_lo * _MEV:.10e} {len(e_s)} {s}")
            blocks += [f"{e * _MEV:.10e} {x:.8e}" for e, x in zip(e_s, v)]
        files[f"pe-ss-cs-{z}.dat"] = "\n".join(blocks) + "\n"
    record = {
        "shells": n_sh, "xraylib_shells": m.shells, "k_edge_kev": round(b_k, 6), "lowest_binding_kev": round(b_min, 6),
        "e_kv_kev": round(m.e_kv_kev, 4), "kissel_over_elam_at_e_kv": round(m.kissel_elam_ratio_at_e_kv, 5),
        "elam_over_kissel_below_e_kv": [round(float(m.ratio.min()), 4), round(float(m.ratio.max()), 4)],
        "elam_table_end_kev": m.e_tab_kev, "table_to_kev": round(e_lo, 4), "low_fit_to_kev": round(e_hi, 4),
        "residuals": {k: float(f"{v:.3g}") for k, v in residuals.items()},
    }
    return files, record


RAYLEIGH_POINTS = 200
RAYLEIGH_RANGE_KEV = (0.1, 800.0)


def rayleigh_file(z: int) -> str:
    """``re-cs-<Z>.dat``: sigma [mm^2] x E^2 [MeV^2] against E [MeV] (G4LivermoreRayleighModel
    divides by E^2 and does not rescale), from xraylib CS_Rayl."""
    xrl = _xraylib()
    e = np.geomspace(*RAYLEIGH_RANGE_KEV, RAYLEIGH_POINTS)
    barn = xrl.AtomicWeight(z) / xrl.AVOGNUM
    sigma_mm2 = np.array([xrl.CS_Rayl(z, float(x)) for x in e]) * barn * 1e-22
    return _fmt_vector(e * _MEV, sigma_mm2 * (e * _MEV) ** 2)


def element_files(z: int) -> tuple[dict[str, str], dict]:
    """All files of element ``z`` (path relative to the data directory -> text) and its record."""
    pe, record = photoelectric_files(z)
    files = {f"{EMLOW}/brem_SB/br{z}": brem_sb_text(z)}
    files.update({f"{EMLOW}/epics2017/phot/{name}": text for name, text in pe.items()})
    files[f"{EMLOW}/epics2017/rayl/re-cs-{z}.dat"] = rayleigh_file(z)
    return files, {"Z": z, "symbol": symbol(z), "photoelectric": record}


# ------------------------------------------------------------------------------------------------
# the data set on disk

def placeholder_dirs() -> list[str]:
    """The data-set directories written as marked placeholders (all but G4EMLOW)."""
    from fastshower.simulate.geant4.datasets import DATASETS

    return sorted(d.dirname for d in DATASETS.values() if d.name != "G4EMLOW")


def _placeholder_text(dirname: str) -> str:
    return (f"Placeholder written by fastshower: {dirname} is not a Geant4 data set. It exists because "
            f"geant4_pybind sets its data variables only when all twelve data-set directories are present; "
            f"standard EM physics never reads it."
            + (" ENSDFSTATE.dat is empty: no ion ground states or isomers." if dirname == ENSDFSTATE else "") + "\n")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_manifest(directory: str | Path) -> dict | None:
    """The manifest of a fastshower-built set in ``directory``, or None (none, unreadable)."""
    path = Path(directory) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == "fastshower-g4data" else None


def _versions() -> dict:
    import fastshower

    xrl = _xraylib()
    return {"fastshower": fastshower.__version__, "xraylib": str(getattr(xrl, "__version__", "unknown"))}


def _manifest(elements: dict[int, dict], hashes: dict[str, str]) -> dict:
    v = _versions()
    nist = nist_brems().record
    return {
        "format": "fastshower-g4data", "recipe": RECIPE, "fastshower_version": v["fastshower"],
        "xraylib_version": v["xraylib"], "layout": "Geant4 11.4 (geant4_pybind 0.1.3): GEANT4_DATA_DIR",
        "elements": [elements[z] for z in sorted(elements)],
        "sources": {
            "brem_SB": f"{nist['content']}; {nist['source']}; shipped as fastshower/simulate/geant4/nist_brems.npz "
                       f"(sha256 {nist['npz_sha256']})",
            "photoelectric": "xraylib EdgeEnergy, CS_Photo_Partial (Kissel) below E_kv, CS_Photo (Elam/XCOM) above "
                             "with frozen shell fractions, Sauter K-shell energy dependence above the Elam table",
            "rayleigh": f"xraylib CS_Rayl (Elam), {RAYLEIGH_RANGE_KEV[0]}-{RAYLEIGH_RANGE_KEV[1]} keV",
            "placeholders": "empty marked directories; G4ENSDFSTATE3.0/ENSDFSTATE.dat empty",
        },
        "placeholders": placeholder_dirs(),
        "files": dict(sorted(hashes.items())),
    }


def _manifest_text(manifest: dict) -> str:
    return json.dumps(manifest, indent=1, sort_keys=True) + "\n"


def _write_tree(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and path.read_text() == text:
            continue
        write_text_atomic(path, text)


def _placeholder_files() -> dict[str, str]:
    out = {f"{d}/{PLACEHOLDER_MARKER}": _placeholder_text(d) for d in placeholder_dirs()}
    out[f"{ENSDFSTATE}/ENSDFSTATE.dat"] = ""
    return out


@contextlib.contextmanager
def _lock(directory: Path) -> Iterator[None]:
    """An exclusive lock beside ``directory`` (parallel workers building the same set wait)."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    lock_path = directory.parent / f".{directory.name}.lock"
    with open(lock_path, "a") as fh:
        try:
            import fcntl

            fcntl.flock(fh, fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - not POSIX
            pass
        yield


@dataclass
class BuildResult:
    directory: Path
    elements: tuple[int, ...]  # all elements in the set
    added: tuple[int, ...]     # elements written by this call
    seconds: float
    manifest: dict


def build_dataset(directory: str | Path | None = None, elements: Iterable[int] | None = None, *,
                  rebuild: bool = False, progress: bool = False) -> BuildResult:
    """Write (or extend) the data set in ``directory`` (default :func:`default_data_dir`) so that it
    holds ``elements`` (default :func:`default_elements`). Elements already there are kept; a set
    of another recipe, or ``rebuild``, is rebuilt from scratch (with the elements it had).

    Deterministic (each file depends only on its element and the recipe; the manifest is sorted and
    has no time stamp) and atomic: a new set is assembled in a temporary sibling directory and
    renamed into place; an extension writes each new file under a temporary name and rewrites the
    manifest last, so the manifest never lists an element whose files are not all there. A
    directory that is not empty and holds no manifest is never touched.
    """
    t0 = time.perf_counter()
    root = Path(directory).expanduser() if directory is not None else default_data_dir()
    wanted = set(default_elements() if elements is None else (element_z(z) for z in elements))
    with _lock(root):
        old = read_manifest(root)
        if old is None and root.exists() and (not root.is_dir() or any(root.iterdir())):
            raise RuntimeError(f"{root} exists and is not a fastshower data set (no {MANIFEST}); "
                               f"choose another directory")
        if old is not None and (old.get("recipe") != RECIPE or rebuild):
            wanted |= {e["Z"] for e in old["elements"]}
            old = None
        have = {e["Z"]: e for e in old["elements"]} if old else {}
        todo = sorted(wanted - set(have))
        if not todo and old is not None:
            return BuildResult(root, tuple(sorted(have)), (), time.perf_counter() - t0, old)
        iterator: Iterable[int] = todo
        if progress:
            from tqdm import tqdm

            iterator = tqdm(todo, desc="g4data", unit="element")
        new_files: dict[str, str] = {} if old else _placeholder_files()
        records = dict(have)
        for z in iterator:
            files, record = element_files(z)
            new_files.update(files)
            records[z] = record
        hashes = dict(old["files"]) if old else {}
        hashes.update({name: _sha256(text.encode()) for name, text in new_files.items()})
        manifest = _manifest(records, hashes)
        if old is None:
            tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".tmp", dir=root.parent))
            umask = os.umask(0)
            os.umask(umask)
            tmp.chmod(0o777 & ~umask)  # mkdtemp makes a private directory
            try:
                _write_tree(tmp, new_files)
                (tmp / MANIFEST).write_text(_manifest_text(manifest))
                if root.exists():  # an empty directory, or our own set being rebuilt
                    stale = root.with_name(f".{root.name}.old.{os.getpid()}")
                    os.replace(root, stale)
                    os.replace(tmp, root)
                    shutil.rmtree(stale, ignore_errors=True)
                else:
                    os.replace(tmp, root)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        else:
            _write_tree(root, new_files)
            write_text_atomic(root / MANIFEST, _manifest_text(manifest))
    return BuildResult(root, tuple(sorted(records)), tuple(todo), time.perf_counter() - t0, manifest)


def verify_dataset(directory: str | Path) -> list[str]:
    """Files of the set in ``directory`` whose sha256 differs from the manifest (or that are missing)."""
    root = Path(directory)
    manifest = read_manifest(root)
    if manifest is None:
        return [MANIFEST]
    bad = []
    for name, digest in manifest["files"].items():
        path = root / name
        if not path.is_file() or _sha256(path.read_bytes()) != digest:
            bad.append(name)
    return bad


def dataset_elements(directory: str | Path) -> tuple[int, ...]:
    manifest = read_manifest(directory)
    return tuple(e["Z"] for e in manifest["elements"]) if manifest else ()


def format_elements(elements: Iterable[int]) -> str:
    return " ".join(symbol(z) for z in elements)


def ensure_dataset(elements: Iterable[int], directory: str | Path | None = None,
                   announce: Callable[[str], None] | None = None) -> Path:
    """The fastshower-built set in ``directory`` (default :func:`default_data_dir`), built or
    extended first if it lacks one of ``elements``; ``announce`` gets one line when it builds."""
    root = Path(directory).expanduser() if directory is not None else default_data_dir()
    needed = set(elements)
    manifest = read_manifest(root)
    if manifest is not None and manifest.get("recipe") == RECIPE and needed <= set(dataset_elements(root)):
        return root
    if announce is None:
        def announce(line: str) -> None:
            print(line, file=sys.stderr, flush=True)
    wanted = needed | set(default_elements()) if manifest is None else needed
    result = build_dataset(root, wanted)
    if result.added:
        verb = ("built" if manifest is None else "extended" if manifest.get("recipe") == RECIPE
                else f"rebuilt (recipe {manifest.get('recipe')} -> {RECIPE})")
        announce(f"fastshower: {verb} the offline Geant4 data set in {root} for {format_elements(result.added)} "
                 f"({result.seconds:.1f} s; `fastshower g4data info` describes it)")
    return root


def provenance(source: str) -> str:
    """One line for a shower file's attributes: where the data of ``source`` (what
    datasets.require_datasets returned: "installation", "fastshower:<dir>", ...) come from."""
    if not source.startswith("fastshower:"):
        return source
    root = Path(source.split(":", 1)[1])
    manifest = read_manifest(root)
    if manifest is None:
        return source
    digest = hashlib.sha256(_manifest_text(manifest).encode()).hexdigest()[:16]
    return (f"fastshower offline set (recipe {manifest['recipe']}, fastshower {manifest['fastshower_version']}, "
            f"xraylib {manifest['xraylib_version']}, NIST SB brem; elements "
            f"{format_elements(e['Z'] for e in manifest['elements'])}; manifest sha256 {digest}) in {root}")


def set_environment(root: Path) -> list[str]:
    """Point the Geant4 data variables that are unset at the data set in ``root`` (this process
    and its children); return the names set. GEANT4_DATA_DIR is enough before geant4_pybind is
    imported; the per-data-set variables also work after it."""
    from fastshower.simulate.geant4.datasets import DATASETS

    changed = []
    if not os.environ.get("GEANT4_DATA_DIR"):
        os.environ["GEANT4_DATA_DIR"] = str(root)
        changed.append("GEANT4_DATA_DIR")
    for d in DATASETS.values():
        if not os.environ.get(d.envvar):
            os.environ[d.envvar] = str(root / d.dirname)
            changed.append(d.envvar)
    return changed


# ------------------------------------------------------------------------------------------------
# what is there

def describe(directory: str | Path | None = None) -> list[str]:
    """Lines for ``fastshower g4data info``: which data sets Geant4 would use here (and who set
    them), and the fastshower-built set in ``directory`` (default :func:`default_data_dir`):
    elements, sources, versions, fit residuals, and whether its files match the manifest."""
    from fastshower.simulate.geant4.datasets import (DATASETS, PHYSICS_DATASETS, find_dataset, missing_datasets,
                                                     user_data_variables)

    lines = []
    user = user_data_variables()
    if user:
        lines.append("Geant4 data variables set here (an installation you point at always wins): "
                     + ", ".join(f"{n}={os.environ[n]}" for n in user))
    else:
        lines.append("no Geant4 data variable is set")
    for name in PHYSICS_DATASETS["em"] + ("G4PARTICLEXS",):
        found = find_dataset(name, placeholder_ok=True)
        if found is None:
            kind = "not found"
        elif (found / PLACEHOLDER_MARKER).exists():
            kind = f"fastshower placeholder {found}"
        elif read_manifest(found.parent) is not None:
            kind = f"fastshower-built {found}"
        else:
            kind = f"installation {found}"
        lines.append(f"  {DATASETS[name].dirname:18s} ({DATASETS[name].envvar}): {kind}")
    emlow = find_dataset("G4EMLOW")
    if not missing_datasets("em") and emlow is not None:
        kind = "the fastshower set" if read_manifest(emlow.parent) is not None else "the installation"
        lines.append(f"full mode (em physics) uses {kind} in {emlow.parent}")
    elif user:
        lines.append("full mode (em physics) stops with an error: the variables set here lack a data set "
                     "(fastshower does not mix its files into an installation)")
    else:
        built = read_manifest(default_data_dir()) is not None
        lines.append(f"full mode (em physics) uses the fastshower set in {default_data_dir()}"
                     + ("" if built else " (built on first use)"))
    root = Path(directory).expanduser() if directory is not None else default_data_dir()
    manifest = read_manifest(root)
    if manifest is None:
        lines.append(f"fastshower offline set: none in {root}" + (" (incomplete or foreign directory)"
                                                                  if root.exists() else "")
                     + "; `fastshower g4data build` writes it")
        return lines
    files = manifest["files"]
    size = sum((root / n).stat().st_size for n in files if (root / n).is_file())
    bad = verify_dataset(root)
    lines += [
        f"fastshower offline set in {root}",
        f"  built by fastshower {manifest['fastshower_version']} (recipe {manifest['recipe']}"
        + ("" if manifest["recipe"] == RECIPE else f"; this fastshower uses recipe {RECIPE}: it will be rebuilt")
        + f") with xraylib {manifest['xraylib_version']}; layout {manifest['layout']}",
        f"  elements ({len(manifest['elements'])}): " + format_elements(e["Z"] for e in manifest["elements"]),
        f"  {len(files)} files, {size / 1e3:.0f} kB; "
        + ("all match the manifest's sha256" if not bad
           else f"{len(bad)} differ from the manifest: {', '.join(bad[:5])}"),
        "  sources:",
    ]
    lines += [f"    {k}: {v}" for k, v in manifest["sources"].items()]
    lines.append("  placeholders (not data): " + ", ".join(manifest["placeholders"]))
    lines.append("  photoelectric parametrisations (residuals of the total, fit/input - 1):")
    lines.append(f"    {'Z':>3} {'el':2} {'K edge keV':>10} {'E_kv keV':>9} {'table to':>9} {'low fit to':>10} "
                 f"{'max low':>8} {'max high':>8} {'rms low':>8} {'rms high':>8}")
    for e in manifest["elements"]:
        p = e["photoelectric"]
        r = p["residuals"]
        lines.append(f"    {e['Z']:>3} {e['symbol']:2} {p['k_edge_kev']:>10.4g} {p['e_kv_kev']:>9.4g} "
                     f"{p['table_to_kev']:>9.4g} {p['low_fit_to_kev']:>10.4g} {100 * r['low_max']:>7.2f}% "
                     f"{100 * r['high_max']:>7.2f}% {100 * r['low_rms']:>7.2f}% {100 * r['high_rms']:>7.2f}%")
    return lines
