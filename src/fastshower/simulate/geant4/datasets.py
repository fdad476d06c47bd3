"""Geant4 data sets: which a physics list needs, where they are, and importing geant4_pybind safely.

Nothing here imports ``geant4_pybind`` at module import time.

Facts about geant4_pybind 0.1.3 (Geant4 11.4.1) that this module works with:

- At import, geant4_pybind looks for its data sets (``GEANT4_DATA_DIR``, then one environment
  variable per data set, then ``~/.geant4_pybind/<name><version>``). If one is missing it *asks on
  stdin* whether to download all of them (about 2 GB from cern.ch), and with ``CI=true`` it
  downloads without asking. :func:`import_geant4` declines that offer (it answers "n") unless
  ``FASTSHOWER_G4_ALLOW_DOWNLOAD=1`` is set: an import must not start a 2 GB download, and a
  closed stdin must not crash it (EOFError -> "ImportError: initialization failed").
- Creating the run manager builds the particle table, whose ``G4NuclideTable`` reads
  ``$G4ENSDFSTATEDATA/ENSDFSTATE.dat`` and aborts the process (fatal G4Exception PART70000) when the
  variable is unset, even for a physics list that only transports particles. When the real
  G4ENSDFSTATE data set cannot be found, :func:`ensure_nuclide_table_for_fast_mode` points
  ``G4ENSDFSTATEDATA`` at an *empty* nuclide table written by fastshower (a directory marked with
  ``FASTSHOWER_STUB``): the table of ion ground states and isomers is then empty, which the fast
  mode (no ions, no EM physics) never uses. A variable the user set, ``GEANT4_DATA_DIR``, or a
  real data set is never replaced; full mode refuses to run on the stub.
- Standard EM physics needs only a few files of G4EMLOW per element, which fastshower builds from
  public tables (:mod:`.g4data`). :func:`require_datasets` uses a real installation where the user
  has one (``GEANT4_DATA_DIR`` or a data-set variable such as ``G4LEDATA``, or geant4_pybind's own
  download); otherwise it uses, and if absent builds (one line on stderr), fastshower's set in the
  user's cache directory and points the Geant4 variables at it. A fastshower-built set that lacks
  an element of the geometry is extended.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

#: Marker file inside fastshower's empty nuclide table (never counted as a real data set).
STUB_MARKER = "FASTSHOWER_STUB"
#: Set to 0 to stop full mode from building fastshower's offline data set by itself.
AUTOBUILD_ENV = "FASTSHOWER_G4DATA_AUTOBUILD"
#: Set to 1 to let geant4_pybind offer (or, under CI=true, start) its data set download at import.
ALLOW_DOWNLOAD_ENV = "FASTSHOWER_G4_ALLOW_DOWNLOAD"


@dataclass(frozen=True)
class Dataset:
    name: str
    version: str
    envvar: str

    @property
    def dirname(self) -> str:
        return f"{self.name}{self.version}"


#: The data sets of Geant4 11.4 (versions as geant4_pybind 0.1.3 expects them): name, version,
#: environment variable.
_DATASET_TABLE = """
G4EMLOW            8.8     G4LEDATA
G4ENSDFSTATE       3.0     G4ENSDFSTATEDATA
G4PARTICLEXS       4.2     G4PARTICLEXSDATA
PhotonEvaporation  6.1.2   G4LEVELGAMMADATA
RadioactiveDecay   6.1.2   G4RADIOACTIVEDATA
G4SAIDDATA         2.0     G4SAIDXSDATA
G4NDL              4.7.1   G4NEUTRONHPDATA
G4PII              1.3     G4PIIDATA
RealSurface        2.2     G4REALSURFACEDATA
G4ABLA             3.3     G4ABLADATA
G4INCL             1.3     G4INCLDATA
G4CHANNELING       2.0     G4CHANNELINGDATA
"""
DATASETS: dict[str, Dataset] = {d.name: d for d in (Dataset(*row.split()) for row in _DATASET_TABLE.split("\n") if row)}

#: Data sets each physics choice needs. "transport" (fast mode: transportation only) needs none;
#: "em" is G4EmStandardPhysics + G4DecayPhysics; FTFP_BERT adds hadronic physics.
PHYSICS_DATASETS: dict[str, tuple[str, ...]] = {
    "transport": (),
    "em": ("G4EMLOW", "G4ENSDFSTATE"),
    "FTFP_BERT": ("G4EMLOW", "G4ENSDFSTATE", "G4PARTICLEXS", "PhotonEvaporation", "G4SAIDDATA"),
}


#: Marker file of the placeholder directories of fastshower's data set (see g4data.py); they
#: count as a data set only where PLACEHOLDER_OK says so.
PLACEHOLDER_MARKER = "FASTSHOWER_PLACEHOLDER"
#: Data sets whose fastshower placeholder is enough: standard EM physics with no ions needs an
#: (empty) nuclide table.
PLACEHOLDER_OK = ("G4ENSDFSTATE",)
#: The data sets fastshower's built set provides for real (for physics needing only these, full
#: mode builds the set when no installation is found).
BUILDABLE = ("G4EMLOW", "G4ENSDFSTATE")


def _is_stub(path: Path) -> bool:
    return (path / STUB_MARKER).exists()


def is_placeholder(path: Path) -> bool:
    return (path / PLACEHOLDER_MARKER).exists()


def find_dataset(name: str, placeholder_ok: bool = False) -> Path | None:
    """Directory of the data set ``name``, looked up as Geant4 does, or None.

    Order: its environment variable (e.g. ``G4LEDATA``), ``$GEANT4_DATA_DIR/<name><version>``,
    then geant4_pybind's own download location ``~/.geant4_pybind/<name><version>``. fastshower's
    empty nuclide table never counts; a placeholder of fastshower's data set counts only with
    ``placeholder_ok``.
    """
    ds = DATASETS[name]
    candidates = []
    if os.environ.get(ds.envvar):
        candidates.append(Path(os.environ[ds.envvar]))
    if os.environ.get("GEANT4_DATA_DIR"):
        candidates.append(Path(os.environ["GEANT4_DATA_DIR"]) / ds.dirname)
    candidates.append(Path.home() / ".geant4_pybind" / ds.dirname)
    for path in candidates:
        if path.is_dir() and not _is_stub(path) and (placeholder_ok or not is_placeholder(path)):
            return path
    return None


def missing_datasets(physics: str) -> list[Dataset]:
    """The data sets ``physics`` needs that cannot be found (see :func:`find_dataset`)."""
    if physics not in PHYSICS_DATASETS:
        raise ValueError(f"unknown physics {physics!r}; expected one of {', '.join(PHYSICS_DATASETS)}")
    return [DATASETS[n] for n in PHYSICS_DATASETS[physics] if find_dataset(n, n in PLACEHOLDER_OK) is None]


def user_data_variables() -> list[str]:
    """The Geant4 data variables set in the environment (GEANT4_DATA_DIR and per data set)."""
    names = ["GEANT4_DATA_DIR"] + [d.envvar for d in DATASETS.values()]
    return [n for n in names if os.environ.get(n)]


def datasets_message(missing: list[Dataset], physics: str) -> str:
    """One line: which data sets are missing, and how to point Geant4 at them."""
    listed = ", ".join(f"{d.dirname} (${d.envvar})" for d in missing)
    example = missing[0] if missing else DATASETS["G4EMLOW"]
    return (f"Geant4 {physics} physics needs data sets that were not found: {listed}. Point Geant4 at an "
            f"installation: export GEANT4_DATA_DIR=/path/to/data (the directory holding {example.dirname}, ...), "
            f"or one variable per data set (export {example.envvar}=/path/to/{example.dirname}), or "
            f"`source <geant4-prefix>/bin/geant4.sh`; install them with `geant4-config --install-datasets` "
            f"or from https://geant4.web.cern.ch/download (see docs/geant4.md)"
            + ("; for standard EM physics, `fastshower g4data build` writes an offline set (full mode builds "
               f"it by itself unless {AUTOBUILD_ENV}=0 or a Geant4 data variable is set)"
               if set(PHYSICS_DATASETS.get(physics, ())) <= set(BUILDABLE) else ""))


def require_datasets(physics: str, geometry=None, *, build: bool = True) -> str:
    """Make sure Geant4 finds the data sets ``physics`` needs, or raise RuntimeError with
    :func:`datasets_message`. Returns where they come from: "none needed", "installation" (a real
    one the user pointed at or geant4_pybind downloaded) or "fastshower:<dir>" (the offline set).

    Physics that needs only G4EMLOW and G4ENSDFSTATE (standard EM) runs on fastshower's offline
    set (:mod:`.g4data`) when no installation is found: with ``build``, it is built in the user's
    cache directory if absent (one line on stderr) and the Geant4 variables of this process point
    at it. A fastshower set that lacks an element of ``geometry`` (a Geometry, preset name or YAML
    path) is extended. A real installation always wins. ``FASTSHOWER_G4DATA_AUTOBUILD=0`` turns
    the building off (then a missing data set is an error, as with ``build=False``).
    """
    needed = PHYSICS_DATASETS.get(physics)
    missing = missing_datasets(physics)
    build = build and os.environ.get(AUTOBUILD_ENV, "1") != "0"
    if not needed:
        return "none needed"
    emlow = find_dataset("G4EMLOW")
    if not missing:
        if emlow is not None and emlow.parent.joinpath(_G4DATA_MANIFEST).exists():
            if geometry is not None and build:
                from fastshower.simulate.geant4 import g4data

                g4data.ensure_dataset(g4data.geometry_elements(geometry), emlow.parent)
            return f"fastshower:{emlow.parent}"
        return "installation"
    buildable = set(needed) <= set(BUILDABLE)
    if not buildable or not build or user_data_variables():
        # hadronic physics, or data variables the user set that lack a data set (an installation
        # the user points at always wins: never mixed with fastshower's files)
        raise RuntimeError(datasets_message(missing, physics))
    from fastshower.simulate.geant4 import g4data

    elements = g4data.geometry_elements(geometry) if geometry is not None else g4data.default_elements()
    root = g4data.ensure_dataset(elements)
    g4data.set_environment(root)
    still = missing_datasets(physics)
    if still:  # pragma: no cover - a variable the user set points elsewhere
        raise RuntimeError(datasets_message(still, physics))
    return f"fastshower:{root}"


_G4DATA_MANIFEST = "fastshower-g4data.json"


def _stub_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "fastshower" / "geant4-empty-nuclide-table"


def ensure_nuclide_table_for_fast_mode() -> str:
    """Make sure creating a run manager does not abort for want of G4ENSDFSTATEDATA.

    Returns "user" (the variable was set by the user), "dataset" (a real G4ENSDFSTATE was found and
    nothing was changed, Geant4 finds it by itself or through geant4_pybind) or "empty" (no
    data set anywhere: ``G4ENSDFSTATEDATA`` now points at fastshower's empty nuclide table, for this
    process and its children only).
    """
    if os.environ.get("G4ENSDFSTATEDATA"):
        return "user"
    found = find_dataset("G4ENSDFSTATE")
    if found is not None:
        if not os.environ.get("GEANT4_DATA_DIR"):
            # found in ~/.geant4_pybind: geant4_pybind sets the variable at import only if *all*
            # data sets are there; point at the real one rather than at a stub
            os.environ["G4ENSDFSTATEDATA"] = str(found)
        return "dataset"
    stub = _stub_dir()
    stub.mkdir(parents=True, exist_ok=True)
    (stub / STUB_MARKER).write_text(
        "Empty nuclide table written by fastshower for the Geant4 fast-simulation mode, which "
        "transports particles without physics and constructs no ions. Not a Geant4 data set.\n")
    table = stub / "ENSDFSTATE.dat"
    if not table.exists():
        table.write_text("")
    os.environ["G4ENSDFSTATEDATA"] = str(stub)
    return "empty"


@contextlib.contextmanager
def _declining_download(captured: io.StringIO) -> Iterator[None]:
    """While importing geant4_pybind: stdin answers "n" to its download offer, ``CI`` is unset
    (CI=true would make the import download 2 GB without asking), stdout goes to ``captured``."""
    saved_stdin, saved_ci = sys.stdin, os.environ.pop("CI", None)
    sys.stdin = io.StringIO("n\n")
    try:
        with contextlib.redirect_stdout(captured):
            yield
    finally:
        sys.stdin = saved_stdin
        if saved_ci is not None:
            os.environ["CI"] = saved_ci


def import_geant4():
    """Import geant4_pybind without its interactive data set download (unless
    ``FASTSHOWER_G4_ALLOW_DOWNLOAD=1``); RuntimeError if impossible."""
    if "geant4_pybind" in sys.modules:
        return sys.modules["geant4_pybind"]
    captured = io.StringIO()
    allow_download = os.environ.get(ALLOW_DOWNLOAD_ENV) == "1"
    try:
        with contextlib.nullcontext() if allow_download else _declining_download(captured):
            import geant4_pybind
    except ModuleNotFoundError as exc:
        raise RuntimeError("geant4_pybind is not installed: pip install 'fastshower[geant4]'") from exc
    except ImportError as exc:
        said = captured.getvalue().strip().replace("\n", " ")
        raise RuntimeError(f"cannot import geant4_pybind: {exc}" + (f" (it said: {said})" if said else "")) from exc
    return geant4_pybind


def geant4_available() -> tuple[bool, str]:
    """(True, version) if geant4_pybind imports here, else (False, reason)."""
    try:
        g4 = import_geant4()
    except RuntimeError as exc:
        return False, str(exc)
    return True, str(g4.G4Version).strip("$ ").replace("Name: ", "")
