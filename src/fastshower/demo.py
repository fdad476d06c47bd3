"""The main job a new user runs first: Geant4 beside the fast simulations, one verdict, in one run.

:func:`run_demo`
1. simulates ``2 n`` Geant4 showers (full simulation, G4EmStandardPhysics, e- at one energy and
   angle in clic25) with the sharded production (:mod:`fastshower.production`,
   ``workers`` local processes; the offline data set is built on first use): the first ``n`` are
   the reference, the last ``n`` (other shards, independent random streams) the floor sample;
2. generates the same conditions with the best shipped generator (:func:`pick_generator`) and with
   GFlash (tuned parameters where a preset for the geometry ships, else the published ones);
3. validates both against the reference (:func:`fastshower.validate.report.write_validation`):
   the verdict table, the full metric table and the plots in ``out_dir/report.html``.

Time per shower = CPU seconds of one core per shower (``time.process_time``; Geant4: its event
loops summed over the workers; the generator with one torch thread, after a warm-up; GFlash in
numpy), so the speed-ups do not depend on other load on the machine; the wall time of every stage
is recorded too.
"""

from __future__ import annotations

import contextlib
import math
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: The demo's physics case: 100 GeV electrons at normal incidence into clic25 (quick: 20 GeV).
GEOMETRY, PARTICLE, ENERGY_GEV, ANGLE_DEG = "clic25", "e-", 100.0, 90.0
QUICK_ENERGY_GEV = 20.0
DEFAULT_N, QUICK_N = 125, 40


@dataclass
class DemoResult:
    """What the demo did: the validation (verdict, comparisons, report paths), the names of the
    generator and GFlash variant, sizes, seed, CPU seconds per shower and wall seconds per stage."""

    validation: object
    generator: str
    gflash: str
    n_showers: int
    energy_gev: float
    seed: int
    cpu_seconds_per_shower: dict[str, float]
    wall_seconds: dict[str, float] = field(default_factory=dict)
    geant4_file: Path | None = None

    @property
    def report_path(self) -> Path:
        return self.validation.report_path  # type: ignore[attr-defined]


def _card_rank(card: dict) -> tuple:
    """Sort key of a model card, best first: trained beyond a smoke test, trained on Geant4, then
    the lowest last validation profile MSE recorded in the card."""
    meta = card.get("metadata") or {}
    smoke = str(meta.get("quality", "")).upper().startswith("SMOKE")
    geant4 = "geant4" in str(meta.get("training_data", "")).lower()
    history = meta.get("epochs_validation") or []
    mse = history[-1].get("val_profile_mse", math.inf) if history else math.inf
    return (smoke, not geant4, mse if mse is not None else math.inf)


def pick_generator(geometry: str, energy_gev: float, angle_rad: float) -> str:
    """The best shipped generator for the geometry whose condition ranges hold the demo's energy
    and angle, by :func:`_card_rank` (so a newly shipped, better-trained model takes over)."""
    from fastshower.models import registry

    usable = []
    for name in registry.list_shipped():
        card = registry.read_card(name)
        e_lo, e_hi = card.get("energy_range_gev", (0, math.inf))
        a_lo, a_hi = card.get("angle_range_rad", (angle_rad, angle_rad))
        if card.get("geometry") == geometry and e_lo <= energy_gev <= e_hi and a_lo - 1e-6 <= angle_rad <= a_hi + 1e-6:
            usable.append((_card_rank(card), name))
    if not usable:
        raise ValueError(f"no shipped generator covers {geometry} at {energy_gev:g} GeV (see `fastshower models`)")
    return min(usable)[1]


def gflash_parameters(geometry: str):
    """(parameters or None, description): the tuned GFlash preset of the geometry where one ships
    (``presets/gflash_<geometry>_geant4.yaml``), else None for the published parameters."""
    try:
        from fastshower.simulate.gflash import PRESETS_DIR, load_parameters  # type: ignore[attr-defined]
    except ImportError:
        return None, "GFlash"
    for key in (f"{geometry}_geant4", geometry):
        if (PRESETS_DIR / f"gflash_{key}.yaml").is_file():
            return load_parameters(key), "GFlash tuned"
    return None, "GFlash"


@contextlib.contextmanager
def _one_torch_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _timed(call, n: int):
    """(result, CPU seconds of one core per shower) of ``call`` generating ``n`` showers: one
    warm-up call, then one timed call (:func:`fastshower.infer.timing.time_per_shower`, CPU clock),
    whose result is returned."""
    from fastshower.infer.timing import time_per_shower

    results = []
    timing = time_per_shower(lambda: results.append(call()), n, warmup=1, repeats=1, clock="cpu")
    return results[-1], timing.ms_per_shower / 1e3


def _simulate_geant4(n_events: int, energy_gev: float, seed: int, workers: int, output: Path, progress: bool):
    """2 x ... Geant4 showers through the production; returns (ShowerSet, CPU s per shower)."""
    from fastshower.data import read_showers
    from fastshower.geometry import load_geometry
    from fastshower.production import Production, produce

    shards = max(2, 2 * workers) if n_events >= 2 * workers else 1
    prod = Production(geometry=load_geometry(GEOMETRY), n_events=n_events, mode="full", particle=PARTICLE,
                      energy=f"{energy_gev:g}", angle=f"{ANGLE_DEG:g}", seed=seed, n_shards=shards)
    output.unlink(missing_ok=True)
    result = produce(prod, output, workers=workers, progress=progress)
    cpu = sum(m["cpu_s_run"] for m in result.manifests)
    return read_showers(output), cpu / n_events


def run_demo(out_dir: str | Path = "demo_report", n: int | None = None, seed: int | None = None,
             quick: bool = False, workers: int = 2, model: str | None = None, device: str = "cpu",
             progress: bool = True) -> DemoResult:
    """Geant4 (reference and floor sample) vs the best shipped generator and GFlash, ``n`` showers
    each (default 125; ``quick``: 40 at 20 GeV in one process, no classifier); report in ``out_dir``.

    ``seed`` None draws one (shown in the report, so a run can be repeated); ``model`` overrides
    the generator choice.
    """
    from fastshower.geometry import load_geometry
    from fastshower.infer.generator import Generator
    from fastshower.showers import ShowerSet
    from fastshower.simulate.gflash import simulate_showers
    from fastshower.validate.report import FLOOR, REFERENCE, write_validation

    n = n or (QUICK_N if quick else DEFAULT_N)
    if n < 20:
        raise ValueError(f"the demo needs at least 20 showers per sample, got -n {n}")
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    seed = secrets.randbelow(2**31) if seed is None else seed
    energy = QUICK_ENERGY_GEV if quick else ENERGY_GEV
    angle = math.radians(ANGLE_DEG)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    geometry = load_geometry(GEOMETRY)
    wall, cpu = {}, {}

    t0 = time.perf_counter()
    g4_file = out_dir / f"geant4_{GEOMETRY}_{PARTICLE}_{energy:g}GeV_seed{seed}.h5"
    g4, cpu["Geant4"] = _simulate_geant4(2 * n, energy, seed, 1 if quick else workers, g4_file, progress)
    reference, floor_sample = g4[:n], g4[n:]
    wall["geant4"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    name = model or pick_generator(GEOMETRY, energy, angle)
    energies, angles = np.full(n, energy), np.full(n, angle)
    with _one_torch_thread():
        generator = Generator.load(name, device=device)
        generated, cpu[name] = _timed(lambda: generator.generate(energies, angles, seed=seed), n)
    wall["generator"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    params, gflash_label = gflash_parameters(GEOMETRY)
    kw = {} if params is None else {"params": params}
    gflash_cells, cpu[gflash_label] = _timed(
        lambda: simulate_showers(geometry, energies, angles, np.random.default_rng([seed, 7]), **kw), n)
    gflash = ShowerSet(gflash_cells, energies, angles, geometry, {"simulator": gflash_label})
    wall["gflash"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    times = {REFERENCE: cpu["Geant4"], FLOOR: cpu["Geant4"], name: cpu[name], gflash_label: cpu[gflash_label]}
    note = ("CPU seconds of one core per shower measured in this run (Geant4: its event loops, "
            f"{'1 process' if quick else f'{workers} worker processes'}; generator: one torch thread after a "
            "warm-up; GFlash: numpy); speed-up = Geant4 time / time.")
    labels = {"Geant4": f"Geant4 11.4 full simulation (G4EmStandardPhysics), {PARTICLE} {energy:g} GeV at "
                        f"{ANGLE_DEG:g} deg, first {n} showers of {g4_file} (seed {seed})",
              "Geant4 floor sample": f"the last {n} showers of the same production (independent shards)",
              name: f"shipped generator {name} (picked from the model cards), same conditions",
              gflash_label: "GFlash with the tuned preset parameters" if params is not None
              else "GFlash with the published Grindhammer-Peters parameters"}
    validation = write_validation(reference, {name: generated, gflash_label: gflash}, out_dir, floor_sample,
                                  quick=quick, seed=seed % (2**31), progress=progress, labels=labels,
                                  seconds_per_shower=times, reference_label="Geant4",
                                  floor_label="Geant4 floor sample", timing_note=note,
                                  title=f"fastshower demo: Geant4 vs {name} vs {gflash_label}", ssim_pairs=20)
    wall["validation"] = time.perf_counter() - t0
    return DemoResult(validation, name, gflash_label, n, energy, seed, cpu, wall, g4_file)
