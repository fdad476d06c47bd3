"""Seeded, sharded Geant4 production: in this process, on a local Dask cluster, on any Dask
deployment, or one shard per batch job followed by :func:`merge_shards`.

A :class:`Production` (geometry, gun, conditions, mode, physics, seed, number of shards) is split
into ``n_shards`` shards of consecutive events. Shard ``k`` has its own random streams, all
spawned from the run seed with numpy's ``SeedSequence`` (spawn key ``(k, i)``): ``i = 0`` draws
the shard's conditions (energies, angles), ``i = 1`` seeds the shower source (fast mode), ``i = 2``
gives the four 32-bit seeds of Geant4's MixMax engine. A shard therefore gives the same showers
whichever process runs it and whatever ran there before, and the merged file (shards in order)
is the same whatever the number of workers.

Each shard is written to a work folder next to the output (``<output>.shards/``):
``shard-KKKKK-of-NNNNN.h5`` (native layout) and, once that file is complete, a manifest
``shard-KKKKK-of-NNNNN.json`` holding its SHA-256, event count and timings. ``production.json``
in the folder names the production (:meth:`Production.identity`). A re-run of an interrupted
production skips every shard whose manifest and file agree, and recomputes the others; shards of
another production in the folder are an error, never overwritten. With Dask, a shard whose task
raised is retried (``retries``) and a shard whose worker died is rescheduled by the scheduler.
Geant4 allows one run manager per process, so Dask workers are processes with one thread each.
Workers must see the work folder (a shared file system with ``--scheduler``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fastshower.fileio import file_sha256, write_text_atomic
from fastshower.geometry import Geometry

#: Events per shard when the number of shards is not given.
DEFAULT_SHARD_EVENTS = 100
#: File attributes that differ from shard to shard (the rest must agree for a merge).
SHARD_ATTRS = ("shard", "shard_events", "shard_source_seed", "geant4_seeds", "n_shard_events")
#: Attributes that may differ between hosts (where the data sets lie); a merge keeps every value.
HOST_ATTRS = ("geant4_data",)
PRODUCTION_FILE = "production.json"


def default_n_shards(n_events: int) -> int:
    """One shard per :data:`DEFAULT_SHARD_EVENTS` events (at least one)."""
    return max(1, math.ceil(n_events / DEFAULT_SHARD_EVENTS))


@dataclass(frozen=True)
class ShardSeeds:
    """The random streams of one shard (see the module docstring)."""

    conditions: np.random.SeedSequence
    source_seed: int
    geant4_seeds: tuple[int, int, int, int]


def shard_seeds(seed: int, shard: int) -> ShardSeeds:
    """Independent streams of shard ``shard`` of a production with run seed ``seed``."""
    def child(i: int) -> np.random.SeedSequence:
        return np.random.SeedSequence(int(seed), spawn_key=(int(shard), i))

    source_seed = int(child(1).generate_state(1, np.uint32)[0])
    words = tuple(int(w) for w in child(2).generate_state(4, np.uint32))
    return ShardSeeds(child(0), source_seed, words)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Production:
    """What to simulate. ``geometry``: the detector; ``energy``/``angle``: condition
    specs as in ``fastshower simulate`` (GeV, deg); ``position_mm``: entry point on the face;
    ``multiplicity``: primaries per event; ``n_shards``: 0 = :func:`default_n_shards`; ``model``,
    ``threshold_gev``, ``entry_convention``: fast mode's shower source; ``physics``: transport,
    em or FTFP_BERT (default: transport for fast, em for full); ``em_physics``: option0/1/2 (see
    ``app.EM_PHYSICS``); ``production_cut_mm``: Geant4's range cut."""

    geometry: Geometry
    n_events: int
    mode: str = "full"
    particle: str = "e-"
    energy: str = "100"
    angle: str = "90"
    azimuth_deg: float = 0.0
    position_mm: tuple[float, float] = (0.0, 0.0)
    multiplicity: int = 1
    seed: int = 0
    n_shards: int = 0
    model: str = "gflash"
    physics: str | None = None
    em_physics: str = "option0"
    production_cut_mm: float = 1.0
    threshold_gev: float | None = None
    batch_events: int = 100
    entry_convention: str = "gflash"

    def __post_init__(self) -> None:
        from fastshower.simulate.geant4.app import EM_PHYSICS, MODES

        if self.n_events < 1 or self.batch_events < 1 or self.multiplicity < 1:
            raise ValueError(f"-n, --batch-events and --multiplicity must be >= 1, got {self.n_events}, "
                             f"{self.batch_events}, {self.multiplicity}")
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; expected fast or full")
        if self.em_physics not in EM_PHYSICS:
            raise ValueError(f"unknown EM physics {self.em_physics!r}; expected one of {', '.join(EM_PHYSICS)}")
        if self.n_shards < 0:
            raise ValueError(f"the number of shards must be >= 1, got {self.n_shards}")
        n_shards = self.n_shards or default_n_shards(self.n_events)
        if n_shards > self.n_events:
            raise ValueError(f"{n_shards} shards for {self.n_events} events: every shard needs an event")
        object.__setattr__(self, "n_shards", n_shards)
        object.__setattr__(self, "position_mm", tuple(float(v) for v in self.position_mm))
        object.__setattr__(self, "physics", self.physics or ("transport" if self.mode == "fast" else "em"))
        if self.mode == "full" and self.physics == "transport":
            raise ValueError("full simulation needs a physics list: em or FTFP_BERT")

    # --- identity and shards ---------------------------------------------------------------
    def identity(self) -> dict:
        """Everything that determines the showers (the geometry by content), JSON-ready."""
        d = dataclasses.asdict(self)
        d["geometry"] = json.loads(self.geometry.model_dump_json())
        d["position_mm"] = list(self.position_mm)
        if self.mode == "full":  # the shower source plays no part
            for key in ("model", "threshold_gev", "entry_convention"):
                d.pop(key)
        return d

    @property
    def production_id(self) -> str:
        """A short hash of :meth:`identity`: shards of one production carry the same id."""
        text = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def shard_range(self, shard: int) -> tuple[int, int]:
        """Events [start, stop) of ``shard`` (the events split as evenly as possible)."""
        if not 0 <= shard < self.n_shards:
            raise ValueError(f"shard {shard} does not exist: shards are 0..{self.n_shards - 1}")
        return self.n_events * shard // self.n_shards, self.n_events * (shard + 1) // self.n_shards

    def guns(self, shard: int) -> list:
        """The guns of ``shard``: conditions drawn from the shard's own stream."""
        from fastshower.conditions import sample_angles, sample_energies
        from fastshower.simulate.geant4.app import Gun

        start, stop = self.shard_range(shard)
        rng = np.random.default_rng(shard_seeds(self.seed, shard).conditions)
        m = stop - start
        return [Gun(self.particle, sample_energies(self.energy, m, rng), sample_angles(self.angle, m, rng),
                    math.radians(self.azimuth_deg), self.position_mm) for _ in range(self.multiplicity)]

    def file_attrs(self) -> dict:
        """Attributes every file of this production carries (besides Geant4's, see :func:`run_shard`)."""
        x0, y0 = self.position_mm
        return {"particle": self.particle, "multiplicity": self.multiplicity, "energy_spec": self.energy,
                "angle_spec_deg": self.angle, "azimuth_deg": self.azimuth_deg, "position_mm": f"{x0:g},{y0:g}",
                "seed": self.seed, "n_shards": self.n_shards, "n_events_total": self.n_events,
                "production_id": self.production_id, "batch_events": self.batch_events,
                "model": self.model if self.mode == "fast" else None,
                "threshold_gev": self.threshold_gev if self.mode == "fast" else None,
                "entry_convention": self.entry_convention if self.mode == "fast" else None}

    def check(self) -> None:
        """Fail early, in the submitting process, on what would fail in every shard: the condition
        specs, the geometry, the data sets and the EM physics choice."""
        from fastshower.conditions import parse_spec
        from fastshower.simulate.geant4.app import require_em_physics
        from fastshower.simulate.geant4.datasets import require_datasets

        parse_spec(self.energy, "energy")
        parse_spec(self.angle, "angle")
        self.guns(0)
        require_datasets(self.physics, self.geometry)  # type: ignore[arg-type]  # builds fastshower's set here, not per worker
        if self.physics != "transport":
            require_em_physics(self.em_physics)


# ------------------------------------------------------------------------------------------------
# one shard

def work_dir_for(output: str | Path) -> Path:
    """The work folder of ``output``: ``<output>.shards`` beside it."""
    output = Path(output)
    return output.with_name(output.name + ".shards")


def shard_path(work_dir: str | Path, shard: int, n_shards: int) -> Path:
    return Path(work_dir) / f"shard-{shard:05d}-of-{n_shards:05d}.h5"


def _manifest_path(shard_file: Path) -> Path:
    return shard_file.with_suffix(".json")



_SOURCES: dict = {}


def _source_for(production: Production, geometry):
    """The fast-mode shower source, built once per process."""
    from fastshower.infer.sources import resolve_source

    key = (production.model, geometry.model_dump_json(), production.particle, production.entry_convention)
    if key not in _SOURCES:
        _SOURCES[key] = resolve_source(production.model, geometry, production.particle, production.entry_convention)
    return _SOURCES[key]


def run_shard(production: Production, shard: int, work_dir: str | Path) -> dict:
    """Simulate ``shard`` in this process, write its file and then its manifest; return the
    manifest (shard, events, n_fast, timings in seconds, CPU seconds of this process, ...)."""
    from fastshower.data import ShowerWriter
    from fastshower.simulate.geant4.app import get_app

    cpu0, wall0 = time.process_time(), time.perf_counter()
    g = production.geometry
    app = get_app(g, production.mode, production.physics, em_physics=production.em_physics,
                  production_cut_mm=production.production_cut_mm)
    source = _source_for(production, g) if production.mode == "fast" else None
    start, stop = production.shard_range(shard)
    seeds = shard_seeds(production.seed, shard)
    guns = production.guns(shard)
    path = shard_path(work_dir, shard, production.n_shards)
    attrs = {**production.file_attrs(), **app.provenance(),
             "shard": shard, "shard_events": [start, stop], "n_shard_events": stop - start,
             "shard_source_seed": seeds.source_seed, "geant4_seeds": list(seeds.geant4_seeds)}
    cpu1 = time.process_time()
    with ShowerWriter(path, g, format="native", attrs=attrs) as writer:
        result = app.run(stop - start, guns, source, seed=seeds.source_seed, geant4_seeds=seeds.geant4_seeds,
                         threshold_gev=production.threshold_gev, batch_events=production.batch_events,
                         sink=writer.write, collect=False)
    cpu2 = time.process_time()
    manifest = {"production_id": production.production_id, "shard": shard, "n_shards": production.n_shards,
                "events": [start, stop], "file": path.name, "sha256": file_sha256(path),
                "n_fast_primaries": result.n_fast_primaries, "max_energy_deviation": result.max_energy_deviation,
                "leaked_gev": float(np.sum(result.leaked_gev)),
                "timing_s": {k: v * result.n_events for k, v in result.timing.items()},
                "cpu_s_run": cpu2 - cpu1, "cpu_s_total": cpu2 - cpu0, "wall_s": time.perf_counter() - wall0,
                "pid": os.getpid(), "host": os.uname().nodename}
    write_text_atomic(_manifest_path(path), json.dumps(manifest, indent=1) + "\n")
    return manifest


def completed_shards(production: Production, work_dir: str | Path) -> dict[int, dict]:
    """Shards of ``production`` already done in ``work_dir``: manifest present, same production,
    and the file's SHA-256 as recorded (a partial or altered shard does not count)."""
    done = {}
    for shard in range(production.n_shards):
        path = shard_path(work_dir, shard, production.n_shards)
        try:
            manifest = json.loads(_manifest_path(path).read_text())
        except (OSError, ValueError):
            continue
        if (manifest.get("production_id") == production.production_id and manifest.get("shard") == shard
                and path.exists() and file_sha256(path) == manifest.get("sha256")):
            done[shard] = manifest
    return done


def prepare_work_dir(production: Production, work_dir: str | Path) -> Path:
    """Create ``work_dir`` for ``production`` (or check it belongs to it): ``production.json``."""
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    record = work / PRODUCTION_FILE
    ident = {"production_id": production.production_id, "identity": production.identity()}
    if record.exists():
        try:
            have = json.loads(record.read_text()).get("production_id")
        except ValueError:
            have = None
        if have != production.production_id:
            raise RuntimeError(f"work folder {work} holds shards of another production ({have}, this one is "
                               f"{production.production_id}: different settings, seed or shard count); remove it "
                               f"or write to another output")
    else:
        write_text_atomic(record, json.dumps(ident, indent=1, sort_keys=True) + "\n")
    return work


# ------------------------------------------------------------------------------------------------
# many shards

@dataclass
class ProductionResult:
    """What :func:`produce` did. ``manifests``: one per shard (see :func:`run_shard`); ``resumed``:
    shards found complete in the work folder; ``wall_s``: wall time of this call."""

    output: Path
    production: Production
    manifests: list[dict]
    resumed: list[int]
    workers: int
    wall_s: float
    merged: MergeResult | None = None
    shard_file: Path | None = None
    extra: dict = field(default_factory=dict)

    @property
    def n_fast_primaries(self) -> int:
        return sum(m["n_fast_primaries"] for m in self.manifests)

    @property
    def max_energy_deviation(self) -> float:
        return max((m["max_energy_deviation"] for m in self.manifests), default=0.0)

    def timing_per_event(self) -> dict[str, float]:
        """Seconds per event, summed over the shards this call ran (resumed shards included)."""
        n = sum(m["events"][1] - m["events"][0] for m in self.manifests)
        keys = ("transport", "inference", "placement", "output", "total")
        return {k: sum(m["timing_s"][k] for m in self.manifests) / max(n, 1) for k in keys}


def format_production(result: ProductionResult) -> str:
    """The summary the CLI prints: the per-event timing table and the shard bookkeeping."""
    p = result.production
    t = result.timing_per_event()
    n = sum(m["events"][1] - m["events"][0] for m in result.manifests)
    cpu = sum(m["cpu_s_run"] for m in result.manifests)
    lines = [f"geant4 {p.mode} mode ({p.physics}" + (f", EM {p.em_physics}" if p.physics != "transport" else "")
             + f"), {n} events in {len(result.manifests)} of {p.n_shards} shards"
             + (f", {result.n_fast_primaries} showers from the model" if p.mode == "fast" else ""),
             f"{'per event':<12}{'transport':>12}{'inference':>12}{'placement':>12}{'output':>12}{'total':>12}",
             f"{'ms':<12}" + "".join(f"{1e3 * t[k]:>12.3f}" for k in ("transport", "inference", "placement",
                                                                      "output", "total")),
             f"CPU {cpu / max(n, 1):.4g} s per event in the event loops ({cpu:.1f} s); wall {result.wall_s:.1f} s "
             f"with {result.workers} worker(s)" + (f"; {len(result.resumed)} shard(s) resumed from the work folder"
                                                   if result.resumed else "")]
    return "\n".join(lines)


def parse_position_mm(text: str) -> tuple[float, float]:
    """``"x,y"`` (mm on the calorimeter face) -> (x, y); one-line ValueError otherwise."""
    try:
        x0, y0 = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--position must be x,y in mm, got {text!r}") from None
    return x0, y0


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` -> (K, N): shard K (0-based) of N; one-line ValueError otherwise."""
    try:
        shard, n_shards = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard must be K/N (0 <= K < N), got {text!r}") from None
    return shard, n_shards


def run_production(production: Production, output: str | Path, *, shard: int | None = None, workers: int = 1,
                   scheduler: str | None = None, format: str = "native", retries: int = 2, keep_shards: bool = False,
                   overwrite: bool = False, progress: bool = False) -> ProductionResult:
    """``fastshower g4run``: the whole production into ``output`` (:func:`produce`; an existing output
    is refused unless ``overwrite``), or only ``shard`` into the work folder (:func:`produce_shard`)."""
    if shard is not None:
        return produce_shard(production, shard, output)
    from fastshower.fileio import check_output

    check_output(output, overwrite)
    return produce(production, output, workers=workers, scheduler=scheduler, format=format, retries=retries,
                   keep_shards=keep_shards, progress=progress)


def format_run(result: ProductionResult, shard: int | None = None) -> str:
    """What ``g4run`` prints: :func:`format_production`, the energy bookkeeping of fast mode and
    where the events went."""
    p = result.production
    lines = [format_production(result)]
    if shard is not None:
        lines.append(f"wrote shard {shard}/{p.n_shards} to {result.shard_file}"
                     + (" (already complete)" if result.resumed else ""))
        return "\n".join(lines)
    if p.mode == "fast":
        lines.append(f"energy conservation: largest relative deviation {result.max_energy_deviation:.2e}; "
                     f"leakage {sum(m['leaked_gev'] for m in result.manifests) / p.n_events:.4g} GeV per event")
    lines.append(f"wrote {p.n_events} events ({p.geometry.name}, geant4 {p.mode}) to {result.output}")
    return "\n".join(lines)


def _run_local(production: Production, todo: Sequence[int], work: Path, on_done: Callable[[dict], None]) -> None:
    for shard in todo:
        on_done(run_shard(production, shard, work))


def _run_dask(production: Production, todo: Sequence[int], work: Path, on_done: Callable[[dict], None], *,
              workers: int, scheduler: str | None, retries: int, extra: dict) -> int:
    """Run the shards as Dask tasks; returns the number of workers seen (``extra`` gets the
    seconds spent connecting to or starting the cluster)."""
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError as exc:  # pragma: no cover - dask is in the geant4 extra
        raise RuntimeError("parallel production needs dask.distributed: pip install 'fastshower[geant4]'") from exc
    t0 = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if scheduler:
            client = stack.enter_context(Client(scheduler))
        else:
            cluster = stack.enter_context(LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                                       dashboard_address=None, silence_logs=logging.ERROR))
            client = stack.enter_context(Client(cluster))
        n_workers = len(client.scheduler_info().get("workers", {})) or workers
        extra["cluster_start_s"] = time.perf_counter() - t0
        futures = [client.submit(run_shard, production, shard, str(work), retries=retries, pure=False,
                                 key=f"fastshower-g4shard-{production.production_id}-{shard}-{os.getpid()}")
                   for shard in todo]
        for future in as_completed(futures):
            manifest = future.result()
            if not shard_path(work, manifest["shard"], production.n_shards).exists():
                raise RuntimeError(f"shard {manifest['shard']} was written on {manifest['host']} but is not in "
                                   f"{work} here: workers need a file system shared with this process")
            on_done(manifest)
        return n_workers


def produce(production: Production, output: str | Path, *, workers: int = 1, scheduler: str | None = None,
            format: str = "native", work_dir: str | Path | None = None, retries: int = 2,
            keep_shards: bool = False, progress: bool = False) -> ProductionResult:
    """Simulate ``production`` into one file ``output`` (shards in order), resuming from complete
    shards in the work folder (default ``<output>.shards``).

    ``workers == 1`` and no ``scheduler``: the shards run one after another in this process (its
    Geant4 application). ``workers > 1``: a Dask ``LocalCluster`` of that many single-threaded
    worker processes. ``scheduler``: the address of an existing Dask scheduler (e.g. from
    dask-jobqueue); its workers must see the work folder. The work folder is removed after the
    merge unless ``keep_shards``.
    """
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    if retries < 0:
        raise ValueError(f"--retries must be >= 0, got {retries}")
    from fastshower.data.io import layout_for_format

    layout_for_format(format, production.geometry)  # a bad format fails before any shard
    production.check()
    t0 = time.perf_counter()
    work = prepare_work_dir(production, Path(work_dir or work_dir_for(output)).resolve())
    done = completed_shards(production, work)
    todo = [k for k in range(production.n_shards) if k not in done]
    manifests = dict(done)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=production.n_events, initial=sum(m["events"][1] - m["events"][0] for m in done.values()),
                   desc=f"geant4 {production.mode}", unit="event")

    def on_done(manifest: dict) -> None:
        manifests[manifest["shard"]] = manifest
        if bar is not None:
            bar.update(manifest["events"][1] - manifest["events"][0])

    n_workers = min(workers, len(todo)) or 1  # no more local workers than shards to run
    extra: dict = {}
    try:
        if todo and (n_workers > 1 or scheduler):
            n_workers = _run_dask(production, todo, work, on_done, workers=n_workers, scheduler=scheduler,
                                  retries=retries, extra=extra)
        elif todo:
            _run_local(production, todo, work, on_done)
    finally:
        if bar is not None:
            bar.close()
    paths = [shard_path(work, k, production.n_shards) for k in range(production.n_shards)]
    merged = merge_shards(paths, output, format=format)
    if not keep_shards:
        shutil.rmtree(work)
    return ProductionResult(Path(output), production, [manifests[k] for k in range(production.n_shards)],
                            sorted(done), n_workers, time.perf_counter() - t0, merged, extra=extra)


def produce_shard(production: Production, shard: int, output: str | Path, *,
                  work_dir: str | Path | None = None) -> ProductionResult:
    """One shard of ``production`` in this process (for plain batch systems: job ``shard`` of
    ``n_shards``), written to the work folder of ``output``; complete shards are not redone.
    :func:`merge_shards` (``fastshower merge``) then writes ``output``."""
    production.shard_range(shard)
    production.check()
    t0 = time.perf_counter()
    work = prepare_work_dir(production, Path(work_dir or work_dir_for(output)).resolve())
    done = completed_shards(production, work)
    manifest = done.get(shard) or run_shard(production, shard, work)
    return ProductionResult(Path(output), production, [manifest], [shard] if shard in done else [], 1,
                            time.perf_counter() - t0, shard_file=shard_path(work, shard, production.n_shards))


# ------------------------------------------------------------------------------------------------
# merging

@dataclass
class MergeResult:
    output: Path
    n_events: int
    n_shards: int
    production_id: str


def _shard_files(paths: Iterable[str | Path]) -> list[Path]:
    """Shard files from files, folders (their ``shard-*.h5``) and glob patterns."""
    import glob

    files: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            files += sorted(p.glob("shard-*-of-*.h5"))
        elif p.exists():
            files.append(p)
        else:
            matched = sorted(glob.glob(str(p)))
            if not matched:
                raise FileNotFoundError(f"no shard file matches {p}")
            files += [Path(m) for m in matched]
    if not files:
        raise FileNotFoundError("no shard files given")
    return files


def _shard_attrs(path: Path) -> dict:
    import h5py

    from fastshower.data import count_events

    with h5py.File(path, "r") as f:
        attrs = {k: (v.decode() if isinstance(v, bytes) else v.item() if isinstance(v, np.generic) else v)
                 for k, v in f.attrs.items()}
    for key in ("production_id", "shard", "n_shards", "shard_events"):
        if key not in attrs:
            raise ValueError(f"{path} is not a fastshower production shard (no {key!r} attribute)")
    attrs["_n_events"] = count_events(path)
    return attrs


def merge_shards(paths: Iterable[str | Path], output: str | Path, format: str = "native",
                 chunk_size: int = 1000) -> MergeResult:
    """Merge the shard files of one production (files, folders or globs, any order) into
    ``output``, in shard order. Checks that they belong together (one production id, every shard
    0..N-1 exactly once, each with its event count; a manifest beside a shard must match its
    SHA-256) and that their common attributes agree. The output keeps the common attributes and
    lists every shard's events and seeds in ``shards``."""
    from fastshower.data import ShowerWriter, iter_showers, read_events

    files = _shard_files(paths)
    info = [(path, _shard_attrs(path)) for path in files]
    ids = {a["production_id"] for _, a in info}
    if len(ids) != 1:
        raise ValueError(f"the shard files come from {len(ids)} different productions ({', '.join(sorted(ids))})")
    n_shards = {a["n_shards"] for _, a in info}
    if len(n_shards) != 1:
        raise ValueError(f"the shard files disagree on the number of shards ({sorted(n_shards)})")
    (n,) = n_shards
    by_shard: dict[int, tuple[Path, dict]] = {}
    for path, a in info:
        k = int(a["shard"])
        if k in by_shard:
            raise ValueError(f"shard {k} given twice: {by_shard[k][0]} and {path}")
        by_shard[k] = (path, a)
    missing = [k for k in range(n) if k not in by_shard]
    if missing:
        shown = ", ".join(map(str, missing[:20])) + (" ..." if len(missing) > 20 else "")
        raise ValueError(f"{len(missing)} of {n} shards are missing: {shown}")
    common = None
    data_sources: set = set()
    expected_start = 0
    entries = []
    for k in range(n):
        path, a = by_shard[k]
        start, stop = json.loads(a["shard_events"]) if isinstance(a["shard_events"], str) else a["shard_events"]
        if start != expected_start or a["_n_events"] != stop - start:
            raise ValueError(f"{path}: shard {k} should hold events {expected_start}..{stop} and holds "
                             f"{a['_n_events']} events (recorded {start}..{stop}): incomplete or altered shard")
        expected_start = stop
        manifest = _manifest_path(path)
        if manifest.exists():
            recorded = json.loads(manifest.read_text()).get("sha256")
            if recorded != file_sha256(path):
                raise ValueError(f"{path}: the file does not match its manifest {manifest.name} (altered or "
                                 f"incomplete shard)")
        data_sources.add(a.get("geant4_data"))
        shared = {key: v for key, v in a.items() if key not in SHARD_ATTRS + HOST_ATTRS + ("date", "_n_events")}
        if common is None:
            common = shared
        elif shared != common:
            diff = sorted(key for key in set(shared) | set(common) if shared.get(key) != common.get(key))
            raise ValueError(f"{path}: attributes differ from shard 0 ({', '.join(diff)})")
        entries.append({"shard": k, "events": [start, stop], "source_seed": a.get("shard_source_seed"),
                        "geant4_seeds": json.loads(a["geant4_seeds"]) if isinstance(a.get("geant4_seeds"), str)
                        else a.get("geant4_seeds")})
    assert common is not None
    data_sources.discard(None)
    if len(data_sources) == 1:
        common["geant4_data"] = next(iter(data_sources))
    total = expected_start
    if "n_events_total" in common and int(common["n_events_total"]) != total:
        raise ValueError(f"the shards hold {total} events, the production has {common['n_events_total']}")
    attrs = {k: v for k, v in common.items() if k not in ("layout", "geometry", "geometry_yaml",
                                                        "fastshower_format_version")}
    attrs["shards"] = entries
    first = by_shard[0][0]
    if len(data_sources) > 1:
        attrs["geant4_data"] = sorted(data_sources)
    with ShowerWriter(output, read_events(first, 0, 1).geometry, format=format, attrs=attrs) as writer:
        for k in range(n):
            for part in iter_showers(by_shard[k][0], chunk_size=chunk_size):
                writer.write(part)
    return MergeResult(Path(output), total, n, ids.pop())


def format_provenance(attrs: dict) -> list[str]:
    """Lines that ``fastshower inspect`` prints for a Geant4 file: version, physics list and EM
    option, production cut, data sets (directory and, for fastshower's built set, what it was built
    from) and seeds (run seed, shards, Geant4 engine seeds). Empty for other files."""
    if "geant4" not in attrs:
        return []

    def load(value):
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                return value
        return value

    lines = [f"geant4:           {attrs['geant4']}, {attrs.get('simulator', '?')}, "
             f"{attrs.get('physics_list', attrs.get('physics', '?'))}"
             + (f" (EM {attrs['em_physics']})" if attrs.get("em_physics") else "")]
    if "production_cut_mm" in attrs:
        lines.append(f"production cut:   {attrs['production_cut_mm']:g} mm")
    data = load(attrs.get("geant4_data"))
    if isinstance(data, dict):
        lines.append(f"geant4 data:      {data.get('source', '?')}")
        lines += [f"                  {name}: {path}" for name, path in data.items() if name != "source"]
    shards = load(attrs.get("shards"))
    seeds = f"seed {attrs.get('seed', '?')}"
    if isinstance(shards, list) and shards:
        seeds += f", {len(shards)} shards; geant4 engine ({attrs.get('random_engine', 'MixMaxRng')}) seeds "
        shown = [f"shard {s['shard']}: {s.get('geant4_seeds')}" for s in shards[:3]]
        seeds += "; ".join(shown) + (f"; ... ({len(shards) - 3} more)" if len(shards) > 3 else "")
    elif "geant4_seeds" in attrs:
        seeds += f", shard {attrs.get('shard', 0)} of {attrs.get('n_shards', 1)}; geant4 engine seeds " \
                 f"{load(attrs['geant4_seeds'])}"
    lines.append(f"seeds:            {seeds}")
    return lines
