"""The Geant4 application: a calorimeter built from a fastshower geometry, a particle gun, full
simulation with scored cells, and the fast-simulation hook that calls a shower source.

Detector frame (mm; see placement.py for the angle convention): the calorimeter face is the
plane z = 0 and the layers are stacked along +z; the readout grid is centred on the z axis.

- Cartesian geometries (clic25, clic51): per readout layer an absorber slab, an active slab and a
  gap (air), ``nx*dx`` by ``ny*dy`` wide. The active slab is divided into cells by two replicas
  (columns along x, cells along y).
- Cylindrical geometries (par04_ds2/ds3): the same stack as discs of radius ``r_edges[-1]``; the
  active disc holds one ring per radial bin, each divided into ``n_alpha`` phi replicas starting at
  alpha = -pi. (A local, flat version of the Par04 barrel: the mesh is fixed in the detector and
  centred on the z axis.)

Scoring without Python per step: the active cells are a ``G4MultiFunctionalDetector`` with a
``G4PSEnergyDeposit3D`` primitive; Geant4 fills its ``G4THitsMap<double>`` in C++ and Python reads
the map once per event (index ``i*n_j*n_k + j*n_k + k`` = the flat index of our shower arrays).

Fast simulation: geant4_pybind 0.1.3 does not expose ``G4VFastSimulationModel``,
``G4FastTrack``/``G4FastStep`` or ``G4FastSimHitMaker`` (nor ``G4ScoringManager``), so the hook is
a *regional stepping action on the world region*: it runs only for steps that start outside the
calorimeter (a primary needs one or two), and when an e-, e+ or gamma above the threshold steps
into the calorimeter region it records energy, entry point and direction and kills the track, as
a fast-simulation model's DoIt would. Steps inside the calorimeter never call Python. The shower
source is called once per batch of events with all the recorded primaries, and the generated
cells are placed with ``placement.place_showers`` and accumulated in numpy (the same cell indexing
as the scorer), rather than as G4 hits: the hits leave Geant4 as numpy arrays anyway, and
depositing 65k cells per shower through G4FastSimHitMaker-like calls from Python would cost more
than the inference.

Geant4 allows one run manager per process: :func:`get_app` builds the application once and
reuses it for later runs with the same geometry, mode and physics.
"""

from __future__ import annotations

import contextlib
import io
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from fastshower.geometry import Geometry, load_geometry
from fastshower.showers import ShowerSet
from fastshower.simulate.geant4.datasets import (ensure_nuclide_table_for_fast_mode, find_dataset, import_geant4,
                                                 require_datasets)
from fastshower.simulate.geant4.placement import (check_energy_conservation, condition_to_direction,
                                                  direction_to_condition, entry_layer_of, place_showers)
from fastshower.simulate.geant4.sources import ShowerSource, as_source, batch_seed, call_source, entry_offset_of

MODES = ("fast", "full")
#: Particles the fast-simulation hook takes.
FAST_PARTICLES = ("e-", "e+", "gamma")
#: Particles the transport-only (fast mode) physics list constructs.
TRANSPORT_PARTICLES = ("G4Electron", "G4Positron", "G4Gamma", "G4Geantino", "G4ChargedGeantino", "G4Proton",
                       "G4Neutron", "G4PionPlus", "G4PionMinus", "G4MuonMinus", "G4MuonPlus", "G4KaonPlus",
                       "G4KaonMinus")
#: Geant4 (NIST) material of each fastshower material.
G4_MATERIALS = {"W": "G4_W", "Si": "G4_Si", "Pb": "G4_Pb", "Fe": "G4_Fe", "Cu": "G4_Cu", "LAr": "G4_lAr",
                "PbWO4": "G4_PbWO4", "Scintillator": "G4_PLASTIC_SC_VINYLTOLUENE"}
CALO_REGION = "fastshower_calorimeter"
#: Cell scorers: "edep" (energy deposit, read out in GeV), "tracklength" (a geometry diagnostic:
#: mm of track per active cell, read out in mm; works with geantinos and no data set).
SCORERS = ("edep", "tracklength")
SD_NAME, SCORER_NAME = "fastshower_calo", "edep"


@dataclass
class Gun:
    """One primary per event: ``particle`` with ``energy_gev`` (scalar or one value per event) and
    polar angle ``theta_rad`` (w.r.t. y; pi/2 = normal incidence; scalar or per event), tilt
    azimuth ``psi_rad`` about z, aimed at ``entry_mm`` = (x, y) on the face; it starts
    ``distance_mm`` before the face along its direction."""

    particle: str = "e-"
    energy_gev: float | np.ndarray = 100.0
    theta_rad: float | np.ndarray = math.pi / 2
    psi_rad: float = 0.0
    entry_mm: tuple[float, float] = (0.0, 0.0)
    distance_mm: float = 10.0

    def arrays(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        e = np.broadcast_to(np.asarray(self.energy_gev, np.float64), (n,)).copy()
        t = np.broadcast_to(np.asarray(self.theta_rad, np.float64), (n,)).copy()
        if np.any(e <= 0):
            raise ValueError("gun energy must be positive (GeV)")
        if np.any((t <= 0) | (t >= math.pi)):
            raise ValueError("gun polar angle must lie strictly between 0 and pi rad")
        return e, t


@dataclass
class G4RunResult:
    """What a run returns. ``timing`` holds seconds per event: transport (Geant4 event loop,
    including the hook that kills and records primaries), inference (shower source), placement
    (fast: placing generated cells and the energy check; full: reading the scored hits map),
    output (the sink, e.g. writing the file), total (wall time)."""

    mode: str
    physics: str
    n_events: int
    timing: dict[str, float]
    showers: Optional[ShowerSet]
    records: dict[str, np.ndarray]
    leaked_gev: np.ndarray
    max_energy_deviation: float
    attrs: dict = field(default_factory=dict)

    @property
    def n_fast_primaries(self) -> int:
        return len(self.records["event"])


def format_timing(result: G4RunResult) -> str:
    """The per-event timing table the CLI prints."""
    t = result.timing
    lines = [f"geant4 {result.mode} mode ({result.physics} physics), {result.n_events} events, "
             f"{result.n_fast_primaries} showers from the model",
             f"{'per event':<12}{'transport':>12}{'inference':>12}{'placement':>12}{'output':>12}{'total':>12}",
             f"{'ms':<12}" + "".join(f"{1e3 * t[k]:>12.3f}"
                                     for k in ("transport", "inference", "placement", "output", "total"))]
    return "\n".join(lines)


_LENGTH_MM = {"nm": 1e-6, "um": 1e-3, "mm": 1.0, "cm": 10.0, "m": 1000.0, "km": 1e6}
#: Default production cut (mm): 1 mm, G4VUserPhysicsList's default and the cut every Geant4 sample
#: of the project so far was made with (the 0.7 mm that earlier code asked for never took effect,
#: see Geant4App.__init__). Geant4's reference lists (FTFP_BERT, ...) use 0.7 mm.
DEFAULT_CUT_MM = 1.0
DEFAULT_EM_PHYSICS = "option0"
#: EM physics choices (``--em-physics``): Geant4 constructor and G4EMLOW8.8 paths it reads.
#: option0-2 read only brem_SB and the photoelectric (+ Rayleigh for option0) files that
#: ``fastshower g4data build`` makes (strace, reference note section 1). The others need more of
#: the real G4EMLOW: the path listed is the one Geant4 11.4 aborted on when each was run on the
#: built set (fatal em0003; checked here one by one), so it is where they first differ, not
#: necessarily all they read.
_EXTRA = ("brem_SB", "epics2017/phot", "fluor")
EM_PHYSICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "option0": ("G4EmStandardPhysics", ("brem_SB", "epics2017/phot", "epics2017/rayl")),
    "option1": ("G4EmStandardPhysics_option1", ("brem_SB", "epics2017/phot")),
    "option2": ("G4EmStandardPhysics_option2", ("brem_SB", "epics2017/phot")),
    "option3": ("G4EmStandardPhysics_option3", _EXTRA),
    "option4": ("G4EmStandardPhysics_option4", _EXTRA),
    "livermore": ("G4EmLivermorePhysics", _EXTRA),
    "penelope": ("G4EmPenelopePhysics", _EXTRA),
    "lowep": ("G4EmLowEPPhysics", ("brem_SB", "epics2017/phot", "photoelectric_angular")),
    "GS": ("G4EmStandardPhysicsGS", _EXTRA),
    "SS": ("G4EmStandardPhysicsSS", _EXTRA),
    "WVI": ("G4EmStandardPhysicsWVI", _EXTRA),
}


def physics_list_name(physics: str, em_physics: str | None = DEFAULT_EM_PHYSICS) -> str:
    """The Geant4 physics list a physics choice builds, as recorded in the files."""
    if physics == "transport":
        return "transportation only"
    em = EM_PHYSICS[em_physics or DEFAULT_EM_PHYSICS][0]
    return f"{em} + G4DecayPhysics" if physics == "em" else f"FTFP_BERT ({em})"


def require_em_physics(em_physics: str) -> None:
    """ValueError for an unknown choice; RuntimeError (one line) when the G4EMLOW data set that
    Geant4 will read lacks a path this EM constructor opens (Geant4 itself would abort the
    process)."""
    if em_physics not in EM_PHYSICS:
        raise ValueError(f"unknown EM physics {em_physics!r}; expected one of {', '.join(EM_PHYSICS)}")
    emlow = find_dataset("G4EMLOW")
    if emlow is None:
        return  # require_datasets reports the missing data set
    constructor, paths = EM_PHYSICS[em_physics]
    missing = [p for p in paths if not (emlow / p).exists()]
    if missing:
        raise RuntimeError(f"EM physics {em_physics} ({constructor}) needs G4EMLOW data that {emlow} lacks: "
                           f"{', '.join(p + '/' for p in missing)} (fastshower's built data set covers option0, "
                           f"option1 and option2); point G4LEDATA at a full G4EMLOW8.8 installation")


def dataset_provenance(physics: str, source: str) -> dict:
    """Where the data sets ``physics`` reads come from: ``source`` as one line (what
    ``datasets.require_datasets`` returned, expanded by ``g4data.provenance``: an installation, or
    fastshower's offline set with its recipe, versions, elements and manifest hash) and the
    directory of each data set."""
    from fastshower.simulate.geant4.datasets import PHYSICS_DATASETS
    from fastshower.simulate.geant4.g4data import provenance

    out: dict = {"source": provenance(source)}
    for name in PHYSICS_DATASETS[physics]:
        path = find_dataset(name, placeholder_ok=True)
        out[name] = str(path) if path else None
    return out


def engine_seeds(seed: int) -> tuple[int, int, int, int]:
    """The four 32-bit seeds of Geant4's MixMax engine for a run with ``seed``: an independent
    stream (numpy SeedSequence, spawn key 2; the shower source uses :func:`batch_seed`, the
    conditions their own streams), so runs with different seeds differ and one seed reproduces."""
    words = np.random.SeedSequence(int(seed), spawn_key=(2,)).generate_state(4, np.uint32)
    return tuple(int(w) for w in words)  # type: ignore[return-value]


def _default_physics(mode: str) -> str:
    return "transport" if mode == "fast" else "em"


class Geant4App:
    """The application for one geometry, mode and physics (use :func:`get_app`)."""

    def __init__(self, geometry: Geometry | str, mode: str = "fast", physics: str | None = None,
                 production_cut_mm: float = DEFAULT_CUT_MM, max_gun_distance_mm: float = 1000.0, scorer: str = "edep",
                 em_physics: str = DEFAULT_EM_PHYSICS) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; expected fast or full")
        if not production_cut_mm > 0:
            raise ValueError(f"the production cut must be positive (mm), got {production_cut_mm}")
        if scorer not in SCORERS:
            raise ValueError(f"unknown scorer {scorer!r}; expected one of {', '.join(SCORERS)}")
        self.scorer = scorer
        self.failed = ""  # set when a run dies inside the event loop (Geant4 left mid-event)
        physics = physics or _default_physics(mode)
        if mode == "full" and physics == "transport":
            raise ValueError("full simulation needs a physics list: em or FTFP_BERT")
        self.datasets = require_datasets(physics, geometry)  # before anything of Geant4 is touched
        if physics != "transport":
            require_em_physics(em_physics)
        self.geometry = load_geometry(geometry)
        self.mode, self.physics = mode, physics
        self.em_physics = em_physics if physics != "transport" else None
        self.production_cut_mm = float(production_cut_mm)
        self.physics_list_name = physics_list_name(physics, em_physics)
        self.data_provenance = dataset_provenance(physics, self.datasets)
        self.nuclide_table = ensure_nuclide_table_for_fast_mode() if physics == "transport" else "dataset"
        self.g4 = g4 = import_geant4()
        self.max_gun_distance_mm = float(max_gun_distance_mm)
        self._keep: list = []
        self.version = str(g4.G4Version).strip("$ ").replace("Name: ", "")
        banner = io.StringIO()  # Geant4's banner (G4cout goes through Python's sys.stdout)
        with contextlib.redirect_stdout(banner):
            self.run_manager = g4.G4RunManagerFactory.CreateRunManager(g4.G4RunManagerType.Serial)
        self.banner = banner.getvalue()
        self.engine = g4.HepRandom.getTheEngine()  # Geant4's default, MixMax (seeded in run())
        if self.engine.name() != "MixMaxRng":  # pragma: no cover - a user replaced the engine
            raise RuntimeError(f"Geant4's random engine is {self.engine.name()}; fastshower seeds MixMaxRng")
        ui = g4.G4UImanager.GetUIpointer()
        for cmd in ("/control/verbose 0", "/run/verbose 0", "/event/verbose 0", "/tracking/verbose 0"):
            ui.ApplyCommand(cmd)
        self.detector = _make_detector(self)
        self.run_manager.SetUserInitialization(self.detector)
        self.physics_list = _make_physics(g4, physics, em_physics)
        self.run_manager.SetUserInitialization(self.physics_list)
        # The cut goes through Geant4's own /run/setCut (G4UserPhysicsListMessenger). Calling
        # SetDefaultCutValue through geant4_pybind 0.1.3 does not take effect (the cuts stay at
        # 1 mm, the G4VUserPhysicsList default) and makes the process crash at exit (SIGSEGV in
        # G4ParticleTable::DeleteAllParticles when geant4_pybind's atexit hook deletes the run
        # manager): both checked with /run/dumpCouples and the exit code.
        ui.ApplyCommand(f"/run/setCut {self.production_cut_mm!r} mm")  # (the binding returns no status)
        if physics != "transport":  # no EM parameter and model tables on stdout (Geant4 prints them at BeamOn)
            g4.G4EmParameters.Instance().SetVerbose(0)
        self.runner = _Runner(self)
        self.run_manager.SetUserInitialization(self.runner.action_initialization)
        self.run_manager.Initialize()
        if mode == "fast":
            world_region = g4.G4RegionStore.GetInstance().GetRegion("DefaultRegionForTheWorld", False)
            hook = self.runner.hook
            if world_region is not None and hasattr(world_region, "SetRegionalSteppingAction"):
                world_region.SetRegionalSteppingAction(hook)
                self.hook_scope = "world region"
            else:  # pragma: no cover - older bindings
                self.run_manager.SetUserAction(hook)
                self.hook_scope = "all steps"

    def provenance(self) -> dict:
        """File attributes that say how showers were made here: simulator, Geant4 version,
        physics (choice, list, EM option, production cut), random engine, data sets."""
        return {"simulator": f"geant4-{self.mode}", "geant4": self.version, "physics": self.physics,
                "physics_list": self.physics_list_name, "em_physics": self.em_physics,
                "production_cut_mm": self.production_cut_mm, "random_engine": self.engine.name(),
                "geant4_data": self.data_provenance, "nuclide_table": self.nuclide_table}

    def applied_range_cuts_mm(self) -> dict[str, float]:
        """The range cuts Geant4 applies, per particle (mm), as ``/run/dumpCouples`` prints them for
        the first material-cuts couple (valid after a run has built the couple table)."""
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            self.g4.G4UImanager.GetUIpointer().ApplyCommand("/run/dumpCouples")
        for line in out.getvalue().splitlines():
            if line.strip().startswith("Range cuts"):
                words = line.split(":", 1)[1].split()
                return {words[i]: round(float(words[i + 1]) * _LENGTH_MM[words[i + 2]], 9)
                        for i in range(0, len(words) - 2, 3)}
        raise RuntimeError("Geant4 printed no range cuts (no run yet?)")

    def seed_engine(self, words: Sequence[int]) -> None:
        """Seed Geant4's MixMax engine with four 32-bit words (all of them count)."""
        seeds = [int(w) for w in words]
        self.g4.HepRandom.setTheSeeds([*seeds, 0], len(seeds))  # 2nd argument: MixMax's seed count
        got = [int(v) for v in self.g4.HepRandom.getTheSeeds()[:len(seeds)]]
        if got != seeds:  # pragma: no cover - another engine or a changed binding
            raise RuntimeError(f"Geant4 engine {self.engine.name()} did not take seeds {seeds} (has {got})")

    @property
    def key(self) -> tuple:
        return (self.geometry.model_dump_json(), self.mode, self.physics, self.scorer, self.em_physics,
                self.production_cut_mm)

    # --- geometry queries (tests, debugging) ------------------------------------------------
    def cell_index_at(self, points_mm: np.ndarray) -> np.ndarray:
        """Scorer cell (i, j, k) that Geant4 locates at each point ``(n, 3)`` (detector frame, mm);
        -1 where the point is not in an active cell."""
        g4 = self.g4
        nav = g4.G4Navigator()
        nav.SetWorldVolume(self.detector.world_pv)
        out = np.full((len(points_mm), 3), -1, dtype=np.int64)
        for n, (x, y, z) in enumerate(np.asarray(points_mm, dtype=np.float64)):
            touchable = g4.G4TouchableHistory()
            nav.LocateGlobalPointAndUpdateTouchable(g4.G4ThreeVector(x, y, z), touchable, False)
            if touchable.GetHistoryDepth() >= 5 and touchable.GetVolume(0).GetLogicalVolume().GetName().startswith("cell"):
                out[n] = (touchable.GetReplicaNumber(1), touchable.GetReplicaNumber(0), touchable.GetReplicaNumber(3))
        return out

    # --- running ----------------------------------------------------------------------------
    def run(self, n_events: int, guns: Sequence[Gun], source: ShowerSource | None = None, *, seed: int = 0,
            threshold_gev: float | None = None, batch_events: int = 100,
            sink: Callable[[ShowerSet], None] | None = None, collect: bool = True,
            progress: bool = False, geant4_seeds: Sequence[int] | None = None) -> G4RunResult:
        """Simulate ``n_events`` events, each with one primary per gun.

        Fast mode: e-, e+ and gamma above ``threshold_gev`` (default: the low end of the
        geometry's energy range) entering the calorimeter are replaced by ``source`` showers (a
        :class:`~fastshower.simulate.geant4.sources.ShowerSource`, or a plain function: centred),
        generated once per ``batch_events`` events with seed ``batch_seed(seed, batch)``. Each
        finished batch becomes a ShowerSet (per event: cells in GeV, primary_energy = the sum of
        the gun energies, incident_angle = the first gun's theta) passed to ``sink`` and, with
        ``collect``, concatenated into ``result.showers``.

        Geant4's random engine (MixMax) is seeded before the event loop with ``geant4_seeds`` (four
        32-bit words), by default :func:`engine_seeds` of ``seed``: the same seed reproduces a run
        bit for bit (in any process), different seeds give independent showers.
        """
        if n_events < 1 or batch_events < 1:
            raise ValueError(f"n_events and batch_events must be >= 1, got {n_events} and {batch_events}")
        if not guns:
            raise ValueError("at least one gun is needed")
        if self.mode == "fast" and source is None and any(g.particle in FAST_PARTICLES for g in guns):
            raise ValueError("fast mode needs a shower source for e-, e+ and gamma")
        for gun in guns:
            if self.g4.G4ParticleTable.GetParticleTable().FindParticle(gun.particle) is None:
                raise ValueError(f"unknown particle {gun.particle!r} for {self.physics} physics")
            if not 0 < gun.distance_mm <= self.max_gun_distance_mm:
                raise ValueError(f"gun distance must lie in (0, {self.max_gun_distance_mm:g}] mm")
        threshold = self.geometry.energy_range_gev[0] if threshold_gev is None else float(threshold_gev)
        source = None if source is None else as_source(source)  # a plain function: showers centred on the entry
        if self.failed:
            raise RuntimeError(f"an earlier Geant4 run in this process failed inside the event loop ({self.failed}); "
                               f"Geant4's state is undefined: use a new process")
        words = tuple(int(w) for w in (engine_seeds(seed) if geant4_seeds is None else geant4_seeds))
        if len(words) != 4 or not all(0 <= w < 2**32 for w in words):
            raise ValueError(f"geant4_seeds must be four integers in [0, 2^32), got {words}")
        return self.runner.run(n_events, list(guns), source, seed=int(seed), threshold_gev=threshold,
                               batch_events=int(batch_events), sink=sink, collect=collect, progress=progress,
                               geant4_seeds=words)


_APP: Geant4App | None = None


def get_app(geometry: Geometry | str, mode: str = "fast", physics: str | None = None, scorer: str = "edep",
            em_physics: str = DEFAULT_EM_PHYSICS, production_cut_mm: float = DEFAULT_CUT_MM) -> Geant4App:
    """The process's Geant4 application, built on first use. Geant4 allows one run manager per
    process: asking for another geometry, mode, physics, EM option or cut later raises
    RuntimeError (run it in a new process)."""
    global _APP
    g = load_geometry(geometry)
    physics = physics or _default_physics(mode)
    if _APP is None:
        _APP = Geant4App(g, mode, physics, scorer=scorer, em_physics=em_physics, production_cut_mm=production_cut_mm)
        return _APP
    em = em_physics if physics != "transport" else None
    if _APP.key != (g.model_dump_json(), mode, physics, scorer, em, float(production_cut_mm)):
        raise RuntimeError(f"this process already runs Geant4 for {_APP.geometry.name} ({_APP.mode}, "
                           f"{_APP.physics_list_name}, cut {_APP.production_cut_mm:g} mm); Geant4 allows one "
                           f"application per process: use a new process")
    return _APP


def run_geant4(geometry: Geometry | str, n_events: int, guns: Sequence[Gun] | Gun,
               source: ShowerSource | None = None, *, mode: str = "fast", physics: str | None = None,
               scorer: str = "edep", em_physics: str = DEFAULT_EM_PHYSICS, production_cut_mm: float = DEFAULT_CUT_MM,
               **kwargs) -> G4RunResult:
    """Build (or reuse) the application and run it; see :meth:`Geant4App.run`."""
    if isinstance(guns, Gun):
        guns = [guns]
    return get_app(geometry, mode, physics, scorer, em_physics, production_cut_mm).run(n_events, guns, source,
                                                                                       **kwargs)


# ------------------------------------------------------------------------------------------------
# Geant4 user classes (built lazily, because geant4_pybind is optional)

def _make_physics(g4, physics: str, em_physics: str = DEFAULT_EM_PHYSICS):
    if physics == "transport":
        class TransportOnly(g4.G4VModularPhysicsList):
            """Constructs particles, adds transportation only (G4VModularPhysicsList.ConstructProcess)."""

            def ConstructParticle(self):
                for name in TRANSPORT_PARTICLES:
                    getattr(g4, name).Definition()

        pl = TransportOnly()
    elif physics == "em":
        pl = g4.G4VModularPhysicsList()
        pl.RegisterPhysics(getattr(g4, EM_PHYSICS[em_physics][0])())
        pl.RegisterPhysics(g4.G4DecayPhysics())
    elif physics == "FTFP_BERT":
        pl = g4.FTFP_BERT()
        if em_physics != DEFAULT_EM_PHYSICS:
            pl.ReplacePhysics(getattr(g4, EM_PHYSICS[em_physics][0])())
    else:
        raise ValueError(f"unknown physics {physics!r}")
    return pl  # the production cut is set through Geant4's UI (see Geant4App.__init__)


def _make_detector(app: Geant4App):
    g4 = app.g4
    geo = app.geometry
    keep = app._keep

    class Detector(g4.G4VUserDetectorConstruction):
        def Construct(self):
            nist = g4.G4NistManager.Instance()
            vacuum = nist.FindOrBuildMaterial("G4_Galactic")
            air = nist.FindOrBuildMaterial("G4_AIR")

            def material(name):
                return nist.FindOrBuildMaterial(G4_MATERIALS[name])

            mm = g4.mm
            depth = float(geo.layer_edges_mm()[-1])
            if geo.kind == "cartesian":
                half_x = geo.shape[0] * geo.cell_size_mm[0] / 2
                half_y = geo.shape[1] * geo.cell_size_mm[1] / 2
            else:
                half_x = half_y = float(geo.r_edges_mm[-1])
            margin = app.max_gun_distance_mm + 10.0
            world_s = g4.G4Box("world", (half_x + margin) * mm, (half_y + margin) * mm, (depth + margin) * mm)
            world_lv = g4.G4LogicalVolume(world_s, vacuum, "world")
            self.world_pv = g4.G4PVPlacement(None, g4.G4ThreeVector(), world_lv, "world", None, False, 0)

            def solid(name, half_z, rmin=None, rmax=None, phi0=0.0, dphi=2 * math.pi):
                if geo.kind == "cartesian" and rmin is None:
                    return g4.G4Box(name, half_x * mm, half_y * mm, half_z * mm)
                return g4.G4Tubs(name, (rmin or 0.0) * mm, (rmax or half_x) * mm, half_z * mm, phi0, dphi)

            env_s = solid("calorimeter", depth / 2)
            env_lv = g4.G4LogicalVolume(env_s, air, "calorimeter")
            env_pv = g4.G4PVPlacement(None, g4.G4ThreeVector(0, 0, depth / 2 * mm), env_lv, "calorimeter",
                                      world_lv, False, 0)
            self.region = g4.G4Region(CALO_REGION)
            self.region.AddRootLogicalVolume(env_lv)
            self.cell_lvs = []
            objects = [world_s, world_lv, env_s, env_lv, env_pv]
            edges = geo.layer_edges_mm()
            k0 = 0
            for gi, grp in enumerate(geo.layers):
                t = grp.thickness_mm
                layer_s = solid(f"layer{gi}", t / 2)
                layer_lv = g4.G4LogicalVolume(layer_s, air, f"layer{gi}")
                objects += [layer_s, layer_lv]
                z = -t / 2
                if grp.absorber_thickness_mm > 0:
                    abs_s = solid(f"absorber{gi}", grp.absorber_thickness_mm / 2)
                    abs_lv = g4.G4LogicalVolume(abs_s, material(grp.absorber), f"absorber{gi}")
                    abs_pv = g4.G4PVPlacement(None, g4.G4ThreeVector(0, 0, (z + grp.absorber_thickness_mm / 2) * mm),
                                              abs_lv, f"absorber{gi}", layer_lv, False, 0)
                    objects += [abs_s, abs_lv, abs_pv]
                z += grp.absorber_thickness_mm
                ta = grp.active_thickness_mm
                act_m = material(grp.active)
                act_s = solid(f"active{gi}", ta / 2)
                act_lv = g4.G4LogicalVolume(act_s, act_m if geo.kind == "cartesian" else air, f"active{gi}")
                act_pv = g4.G4PVPlacement(None, g4.G4ThreeVector(0, 0, (z + ta / 2) * mm), act_lv, f"active{gi}",
                                          layer_lv, False, 0)
                objects += [act_s, act_lv, act_pv]
                if geo.kind == "cartesian":
                    nx, ny, _ = geo.shape
                    dx, dy = geo.cell_size_mm
                    col_s = g4.G4Box(f"column{gi}", dx / 2 * mm, half_y * mm, ta / 2 * mm)
                    col_lv = g4.G4LogicalVolume(col_s, act_m, f"column{gi}")
                    col_pv = g4.G4PVReplica(f"column{gi}", col_lv, act_lv, g4.EAxis.kXAxis, nx, dx * mm)
                    cell_s = g4.G4Box(f"cell{gi}", dx / 2 * mm, dy / 2 * mm, ta / 2 * mm)
                    cell_lv = g4.G4LogicalVolume(cell_s, act_m, f"cell{gi}")
                    cell_pv = g4.G4PVReplica(f"cell{gi}", cell_lv, col_lv, g4.EAxis.kYAxis, ny, dy * mm)
                    objects += [col_s, col_lv, col_pv, cell_s, cell_lv, cell_pv]
                    self.cell_lvs.append(cell_lv)
                else:
                    n_r, n_alpha, _ = geo.shape
                    r = geo.r_edges_mm
                    width = 2 * math.pi / n_alpha
                    for i in range(n_r):
                        ring_s = g4.G4Tubs(f"ring{gi}_{i}", r[i] * mm, r[i + 1] * mm, ta / 2 * mm, 0.0, 2 * math.pi)
                        ring_lv = g4.G4LogicalVolume(ring_s, act_m, f"ring{gi}_{i}")
                        ring_pv = g4.G4PVPlacement(None, g4.G4ThreeVector(), ring_lv, f"ring{gi}_{i}", act_lv, False, i)
                        cell_s = g4.G4Tubs(f"cell{gi}_{i}", r[i] * mm, r[i + 1] * mm, ta / 2 * mm, -width / 2, width)
                        cell_lv = g4.G4LogicalVolume(cell_s, act_m, f"cell{gi}_{i}")
                        cell_pv = g4.G4PVReplica(f"cell{gi}_{i}", cell_lv, ring_lv, g4.EAxis.kPhi, n_alpha, width,
                                                 -math.pi)
                        objects += [ring_s, ring_lv, ring_pv, cell_s, cell_lv, cell_pv]
                        self.cell_lvs.append(cell_lv)
                for k in range(k0, k0 + grp.count):
                    zc = (edges[k] + edges[k + 1]) / 2 - depth / 2
                    objects.append(g4.G4PVPlacement(None, g4.G4ThreeVector(0, 0, zc * mm), layer_lv, f"layer{gi}",
                                                    env_lv, False, k))
                k0 += grp.count
            keep.extend(objects)
            return self.world_pv

        def ConstructSDandField(self):
            sd = g4.G4MultiFunctionalDetector(SD_NAME)
            g4.G4SDManager.GetSDMpointer().AddNewDetector(sd)
            ni, nj, nk = geo.shape
            primitive = g4.G4PSEnergyDeposit3D if app.scorer == "edep" else g4.G4PSTrackLength3D
            scorer = primitive(SCORER_NAME, ni, nj, nk, 1, 0, 3)
            sd.RegisterPrimitive(scorer)
            for lv in self.cell_lvs:
                lv.SetSensitiveDetector(sd)
            keep.extend([sd, scorer])

    return Detector()


class _Runner:
    """Per-run state and the Python user actions (called once per event, and in fast mode once
    per step outside the calorimeter)."""

    def __init__(self, app: Geant4App) -> None:
        g4 = self.g4 = app.g4
        self.app = app
        runner = self

        class Primaries(g4.G4VUserPrimaryGeneratorAction):
            def __init__(self):
                super().__init__()
                self.gun = g4.G4ParticleGun(1)

            def GeneratePrimaries(self, event):
                runner._generate(self.gun, event)

        class Events(g4.G4UserEventAction):
            def BeginOfEventAction(self, event):
                runner.current_event = event.GetEventID()

            def EndOfEventAction(self, event):
                runner._end_of_event(event)

        class Hook(g4.G4UserSteppingAction):
            def UserSteppingAction(self, step):
                runner._step(step)

        class Actions(g4.G4VUserActionInitialization):
            def Build(self):
                self.SetUserAction(runner.primaries)
                self.SetUserAction(runner.events)

        self.primaries, self.events, self.hook = Primaries(), Events(), Hook()
        self.action_initialization = Actions()
        self.current_event = 0
        self.active = False

    # --- per-run set-up ---------------------------------------------------------------------
    def run(self, n_events, guns, source, *, seed, threshold_gev, batch_events, sink, collect, progress,
            geant4_seeds):
        g4, app, geo = self.g4, self.app, self.app.geometry
        app.seed_engine(geant4_seeds)
        self.n_events, self.guns, self.source, self.seed = n_events, guns, source, seed
        self.threshold_mev = threshold_gev * 1000.0
        self.batch_events, self.sink, self.collect = batch_events, sink, collect
        table = g4.G4ParticleTable.GetParticleTable()
        self.gun_defs = [table.FindParticle(g.particle) for g in guns]
        arrays = [g.arrays(n_events) for g in guns]
        self.gun_energy = np.stack([a[0] for a in arrays])  # (n_guns, n_events) GeV
        self.gun_theta = np.stack([a[1] for a in arrays])
        self.gun_dir = [condition_to_direction(self.gun_theta[i], g.psi_rad) for i, g in enumerate(guns)]
        self.records: list[tuple] = []
        self.batch_records: list[tuple] = []
        self.batch_start, self.batch_index = 0, 0
        readout = app.physics != "transport" or app.scorer != "edep"
        self.scored = np.zeros((batch_events, geo.n_cells), dtype=np.float64) if readout else None
        self.readout_scale = 1.0 / g4.GeV if app.scorer == "edep" else 1.0 / g4.mm
        self.parts: list[ShowerSet] = []
        self.leaked: list[np.ndarray] = []
        self.max_dev = 0.0
        self.t = {"inference": 0.0, "placement": 0.0, "output": 0.0, "in_loop": 0.0}
        self.bar = None
        if progress:
            from tqdm import tqdm
            self.bar = tqdm(total=n_events, desc=f"geant4 {app.mode}", unit="event")
        self.active = True
        t0 = time.perf_counter()
        try:
            try:
                app.run_manager.BeamOn(n_events)
            except BaseException as exc:  # raised in a user action: Geant4 was left mid-event
                app.failed = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
                raise
            t_loop = time.perf_counter() - t0
            if self.batch_start < n_events:
                self._flush(n_events)
        finally:
            self.active = False
            if self.bar is not None:
                self.bar.close()
        wall = time.perf_counter() - t0
        n = n_events
        timing = {"transport": max(t_loop - self.t["in_loop"], 0.0) / n, "inference": self.t["inference"] / n,
                  "placement": self.t["placement"] / n, "output": self.t["output"] / n, "total": wall / n}
        rec = np.array(self.records, dtype=np.float64).reshape(-1, 10)
        records = {"event": rec[:, 0].astype(np.int64), "energy_gev": rec[:, 1], "x_mm": rec[:, 2], "y_mm": rec[:, 3],
                   "z_mm": rec[:, 4], "theta_rad": rec[:, 5], "psi_rad": rec[:, 6], "entry_layer": rec[:, 7].astype(np.int64),
                   "batch": rec[:, 8].astype(np.int64), "pdg": rec[:, 9].astype(np.int64)}
        attrs = {**app.provenance(), "seed": seed, "geant4_seeds": list(geant4_seeds), "threshold_gev": threshold_gev,
                 "batch_events": batch_events, "particles": ",".join(g.particle for g in guns)}
        if source is not None:
            attrs["shower_source"] = source.description
        showers = None
        if collect:
            showers = ShowerSet.concatenate(self.parts)
            showers.attrs.update(attrs)
        return G4RunResult(app.mode, app.physics, n, timing, showers, records,
                           np.concatenate(self.leaked) if self.leaked else np.zeros(n), self.max_dev, attrs)

    # --- user actions -----------------------------------------------------------------------
    def _generate(self, gun, event):
        g4 = self.g4
        i = event.GetEventID()
        for n, spec in enumerate(self.guns):
            d = self.gun_dir[n][i]
            x0, y0 = spec.entry_mm
            start = np.array([x0, y0, 0.0]) - spec.distance_mm * d
            gun.SetParticleDefinition(self.gun_defs[n])
            gun.SetParticleEnergy(float(self.gun_energy[n, i]) * g4.GeV)
            gun.SetParticleMomentumDirection(g4.G4ThreeVector(*map(float, d)))
            gun.SetParticlePosition(g4.G4ThreeVector(*(float(c) * g4.mm for c in start)))
            gun.GeneratePrimaryVertex(event)

    def _step(self, step):
        if not self.active:
            return
        g4 = self.g4
        post = step.GetPostStepPoint()
        if post.GetStepStatus() != g4.G4StepStatus.fGeomBoundary:
            return
        volume = post.GetTouchable().GetVolume()
        if volume is None or volume.GetLogicalVolume().GetRegion().GetName() != CALO_REGION:
            return
        track = step.GetTrack()
        energy = track.GetKineticEnergy()
        if energy <= self.threshold_mev:
            return
        definition = track.GetDefinition()
        if definition.GetParticleName() not in FAST_PARTICLES:
            return
        d = track.GetMomentumDirection()
        if d.z <= 0:
            return
        p = post.GetPosition()
        self.batch_records.append((self.current_event, energy / 1000.0, p.x / g4.mm, p.y / g4.mm, p.z / g4.mm,
                                   d.x, d.y, d.z, definition.GetPDGEncoding()))
        track.SetTrackStatus(g4.G4TrackStatus.fStopAndKill)

    def _end_of_event(self, event):
        t0 = time.perf_counter()
        i = event.GetEventID()
        if self.scored is not None:
            hce = event.GetHCofThisEvent()
            sdm = self.g4.G4SDManager.GetSDMpointer()
            hc = hce.GetHC(sdm.GetCollectionID(f"{SD_NAME}/{SCORER_NAME}")) if hce is not None else None
            if hc is not None:
                row = self.scored[i - self.batch_start]
                for index, value in hc:
                    row[index] += value * self.readout_scale
        self.t["placement"] += time.perf_counter() - t0
        if self.bar is not None:
            self.bar.update(1)
        if i + 1 - self.batch_start >= self.batch_events:
            self._flush(i + 1)
        self.t["in_loop"] += time.perf_counter() - t0

    def _flush(self, end: int) -> None:
        """Generate and place the showers of events [batch_start, end) and emit the batch."""
        geo = self.app.geometry
        start, size = self.batch_start, end - self.batch_start
        cells = np.zeros((size, *geo.shape), dtype=np.float32)
        leaked = np.zeros(size)
        rec = self.batch_records
        if rec:
            arr = np.array(rec, dtype=np.float64)
            event = arr[:, 0].astype(np.int64) - start
            energy = arr[:, 1]
            theta, psi = direction_to_condition(arr[:, 5:8])
            layer = entry_layer_of(geo, arr[:, 4])
            t0 = time.perf_counter()
            generated = call_source(self.source, geo, energy, theta, batch_seed(self.seed, self.batch_index))
            t1 = time.perf_counter()
            model_entry = entry_offset_of(self.source, energy, theta)
            cells, leaked = place_showers(geo, generated, arr[:, 2:4], psi, layer, event, size, model_entry)
            gen_sum = np.bincount(event, weights=generated.reshape(len(arr), -1).sum(axis=1, dtype=np.float64),
                                  minlength=size)
            dev = check_energy_conservation(gen_sum, cells.reshape(size, -1).sum(axis=1, dtype=np.float64), leaked)
            self.max_dev = max(self.max_dev, dev)
            self.t["inference"] += t1 - t0
            self.t["placement"] += time.perf_counter() - t1
            for r, th, ps, k in zip(rec, theta, psi, layer):
                self.records.append((r[0], r[1], r[2], r[3], r[4], th, ps, k, self.batch_index, r[8]))
        if self.scored is not None:
            cells = cells + self.scored[:size].reshape(size, *geo.shape).astype(np.float32)
            self.scored[:] = 0.0
        part = ShowerSet(cells, self.gun_energy[:, start:end].sum(axis=0), self.gun_theta[0, start:end], geo.name)
        if self.sink is not None:
            t0 = time.perf_counter()
            self.sink(part)
            self.t["output"] += time.perf_counter() - t0
        if self.collect:
            self.parts.append(part)
        self.leaked.append(leaked)
        self.batch_records = []
        self.batch_start, self.batch_index = end, self.batch_index + 1

