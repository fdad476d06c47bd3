"""Tune GFlash to full-simulation (Geant4) showers of a geometry: ``fastshower gflash tune``.

The free coefficients of :class:`~fastshower.simulate.gflash.GFlashParameters` (longitudinal means,
widths and correlation of ln T and ln alpha and their energy dependence, radial core/tail radii and
weights, spot number, sampling coefficient and scale, albedo; :data:`FREE_PARAMETERS` with their
bounds) are fitted with scipy.optimize.least_squares (trust-region reflective, bounded) on the unit
box of their bounds. The objective is built on the validation observables
(:mod:`fastshower.validate.observables`, :mod:`fastshower.validate.metrics`) of GFlash showers
simulated at the reference events' own primary energies and angles, per fit energy e:

    J = (1 / n_energies) sum_e [ mean_cells(rel_profile^2) / 0.05^2 + mean_moments(rel_moment^2) / 0.01^2
        + (d mean / mean / 0.005)^2 + (d mu90 / mu90 / 0.005)^2 + (d sigma90 / sigma90 / 0.05)^2
        + (d core / 0.005)^2 + (d std(m1_z) / std(m1_z) / 0.05)^2 ]

rel_profile: relative differences (candidate - reference) / reference of the event-averaged energy
profiles in x, y and z (GeV per cell, the quantities of the 3DGAN metric's profile term) over the
cells where the reference is not empty; rel_moment: relative differences of the event means of the
first and second moments m1, m2 of the three profiles (the 3DGAN moment term); mean, mu90 and sigma90
of E_active / E_primary (the mean and the core of the response: Geant4's low tail separates them);
core: the mean 5x5 core containment; std(m1_z): the event-to-event spread of the longitudinal
centre of gravity. The scales (:data:`TERM_SCALES`) say what counts as one unit of
disagreement. Every evaluation redraws GFlash with the same seeds (common random numbers), so J is
a deterministic function of the parameters up to the spot draws. See docs/gflash.md.

It sits on top of the pipeline (with ``hpo`` and the command line), not in ``simulate``: it fits
the reference simulation with the validation observables and reads data files, stages above it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import yaml

from fastshower import __version__
from fastshower.fileio import file_sha256
from fastshower.geometry import Geometry
from fastshower.showers import ShowerSet
from fastshower.simulate.gflash import (
    GFlashParameterFile,
    GFlashParameters,
    load_parameters,
    simulate_showers,
    stack_parameters,
)
from fastshower.validate import observables as ob
from fastshower.validate.metrics import (
    ConditionBin,
    gan_optimisation_metric,
    mu90_sigma90,
)

#: The parameters ``tune`` fits by default, with their (low, high) bounds.
FREE_PARAMETERS: dict[str, tuple[float, float]] = {
    "t_hom_offset": (-2.5, 1.0),
    "t_hom_slope": (0.6, 1.4),
    "alpha_hom_offset": (-1.5, 3.0),
    "alpha_hom_slope": (0.2, 0.8),
    "sigma_ln_t_offset": (-6.0, 4.0),
    "sigma_ln_t_slope": (0.4, 2.0),
    "sigma_ln_alpha_offset": (-5.0, 4.0),
    "sigma_ln_alpha_slope": (0.3, 1.6),
    "rho_offset": (0.2, 0.99),
    "rho_slope": (-0.1, 0.05),
    "core_z1_offset": (0.0, 0.15),
    "core_z1_ln_e": (-0.02, 0.03),
    "core_z2_offset": (0.03, 0.4),
    "tail_k1_offset": (0.3, 1.5),
    "tail_k4_offset": (0.05, 0.9),
    "tail_k4_ln_e": (-0.1, 0.2),
    "weight_p1_offset": (1.0, 4.5),
    "weight_p3_offset": (0.5, 2.5),
    "weight_p3_ln_e": (-0.3, 0.15),
    "start_offset_x0": (0.0, 2.5),
    "spot_number": (2.0, 40.0),
    "spot_exponent": (0.7, 1.2),
    "sampling_coefficient": (0.0, 0.1),
    "sampling_scale": (0.3, 1.2),
    "albedo": (0.0, 0.8),
}

#: Tunable on request (``--free``) but not fitted by default, with their bounds.
OPTIONAL_PARAMETERS: dict[str, tuple[float, float]] = {
    "albedo_depth_x0": (0.0, 3.0),
}

#: Scale of each objective term (what counts as one unit of disagreement): ``profiles`` and
#: ``moments`` for the RMS of their relative differences, the others for the term itself.
TERM_SCALES: dict[str, float] = {
    "profiles": 0.05, "moments": 0.01, "mean": 0.005, "mu90": 0.005, "sigma90": 0.05, "core_containment": 0.005,
    "depth_spread": 0.05,
}


@dataclass
class ReferenceSample:
    """Full-simulation showers around one fit energy with the observables the objective uses."""

    energy_gev: float
    primary_energy: np.ndarray
    incident_angle: np.ndarray
    obs: dict
    core: np.ndarray

    def __len__(self) -> int:
        return len(self.primary_energy)


def core_containment(showers: np.ndarray, geometry: Geometry) -> np.ndarray:
    """Fraction of each shower's energy in its core, (n,): the central 5x5 cells of every layer
    (cartesian), or the rings whose centre lies inside one Moliere radius (cylindrical)."""
    total = showers.sum(axis=(1, 2, 3), dtype=np.float64) + ob._EPS
    if geometry.kind == "cartesian":
        cx, cy = geometry.shape[0] // 2, geometry.shape[1] // 2
        core = showers[:, cx - 2:cx + 3, cy - 2:cy + 3].sum(axis=(1, 2, 3), dtype=np.float64)
    else:
        r = geometry.cell_centres_mm()[0]
        core = showers[:, r < geometry.moliere_radius_mm].sum(axis=(1, 2, 3), dtype=np.float64)
    return core / total


def reference_sample(showers: ShowerSet, geometry: Geometry, energy_gev: float) -> ReferenceSample:
    """Threshold ``showers`` at the geometry's readout threshold and compute their observables."""
    s = ob.apply_threshold(showers.showers, geometry.readout_threshold_gev)
    return ReferenceSample(float(energy_gev), np.asarray(showers.primary_energy, np.float64),
                           np.asarray(showers.incident_angle, np.float64),
                           ob.observables_in_chunks(s, showers.primary_energy, geometry), core_containment(s, geometry))


def select_energy(showers: ShowerSet, energy_gev: float, window: float) -> ShowerSet:
    """The events with |E / energy_gev - 1| <= ``window`` (relative half-width)."""
    keep = np.abs(showers.primary_energy / energy_gev - 1.0) <= window + 1e-9
    return showers[np.flatnonzero(keep)]



def load_references(paths: Sequence[str | Path], energies_gev: Sequence[float], window: float = 0.2,
                    geometry: Geometry | None = None, max_events: int | None = None,
                    min_events: int = 20) -> tuple[list[ReferenceSample], Geometry, list[dict]]:
    """Read the reference files (streamed, chunk by chunk) and keep, per fit energy, the events inside
    its window (at most ``max_events`` each). Returns (samples, geometry, file records with sha256)."""
    from fastshower.data import iter_showers, resolve_paths

    files = [Path(p) for spec in paths for p in resolve_paths(spec)]
    if not files:
        raise ValueError("no reference files given")
    if not energies_gev:
        raise ValueError("give at least one fit energy (GeV)")
    if window <= 0:
        raise ValueError(f"the energy window must be positive, got {window}")
    parts: dict[float, list[ShowerSet]] = {float(e): [] for e in energies_gev}
    geo: Geometry | None = geometry
    for path in files:
        for chunk in iter_showers(path, geometry=geometry):
            if geo is None:
                geo = chunk.geometry
            elif chunk.geometry.name != geo.name:
                raise ValueError(f"{path}: geometry {chunk.geometry.name!r} differs from {geo.name!r}")
            for e, found in parts.items():
                if max_events is not None and sum(len(p) for p in found) >= max_events:
                    continue
                sel = select_energy(chunk, e, window)
                if len(sel):
                    found.append(sel)
    assert geo is not None
    samples = []
    for e, found in parts.items():
        n = sum(len(p) for p in found)
        if n < min_events:
            raise ValueError(f"only {n} reference events within {window:.0%} of {e:g} GeV (need {min_events}); "
                             "widen --window or give more files")
        s = ShowerSet.concatenate(found)
        if max_events is not None:
            s = s[:max_events]
        samples.append(reference_sample(s, geo, e))
    records = [{"path": str(p), "sha256": file_sha256(p)} for p in files]
    return samples, geo, records


def candidate_conditions(reference: ReferenceSample, n_showers: int) -> tuple[np.ndarray, np.ndarray]:
    """The reference events' (energy, angle) pairs, repeated to at least ``n_showers``."""
    reps = max(1, math.ceil(n_showers / len(reference)))
    return np.tile(reference.primary_energy, reps), np.tile(reference.incident_angle, reps)


def objective_residuals(reference: ReferenceSample, showers: np.ndarray, primary_energy: np.ndarray,
                        geometry: Geometry) -> tuple[np.ndarray, dict[str, float]]:
    """Candidate ``showers`` (made at ``primary_energy``) against ``reference``: the scaled residuals
    the fit minimises (module docstring) and the summary terms (each 0 for a perfect match up to
    statistics): ``profiles`` and ``moments`` as the 3DGAN metric's terms, ``mu90`` and ``sigma90``
    relative errors of E_active / E_primary, ``core_containment`` difference, ``depth_spread``
    relative error of the standard deviation of m1_z."""
    s = ob.apply_threshold(showers, geometry.readout_threshold_gev, in_place=True)
    obs = ob.observables_in_chunks(s, primary_energy, geometry)
    one_bin = [ConditionBin("fit", np.ones(len(reference), bool), np.ones(len(s), bool))]
    gan = gan_optimisation_metric(reference.obs, obs, one_bin)
    mu_r, sig_r = mu90_sigma90(reference.obs["energy_ratio"])
    mu_c, sig_c = mu90_sigma90(obs["energy_ratio"])
    spread_r, spread_c = reference.obs["m1_z"].std(), obs["m1_z"].std()
    mean_r, mean_c = reference.obs["energy_ratio"].mean(), obs["energy_ratio"].mean()
    terms = {"profiles": gan["profiles"], "moments": gan["moments"], "mean": float((mean_c - mean_r) / mean_r),
             "mu90": (mu_c - mu_r) / mu_r,
             "sigma90": (sig_c - sig_r) / sig_r,
             "core_containment": float(core_containment(s, geometry).mean() - reference.core.mean()),
             "depth_spread": float((spread_c - spread_r) / spread_r)}
    profile_parts = []
    for axis in "xyz":
        sr = reference.obs[f"profile_{axis}"].mean(axis=0)
        sc = obs[f"profile_{axis}"].mean(axis=0)
        ok = sr > 0
        profile_parts.append((sc[ok] - sr[ok]) / sr[ok])
    profile_rel = np.concatenate(profile_parts)
    moment_rel = np.array([(obs[f"m{m}_{a}"].mean() - reference.obs[f"m{m}_{a}"].mean())
                           / (reference.obs[f"m{m}_{a}"].mean() + ob._EPS) for m in (1, 2) for a in "xyz"])
    residuals = np.concatenate([
        profile_rel / (TERM_SCALES["profiles"] * math.sqrt(len(profile_rel))),
        moment_rel / (TERM_SCALES["moments"] * math.sqrt(len(moment_rel))),
        [terms[k] / TERM_SCALES[k] for k in ("mean", "mu90", "sigma90", "core_containment", "depth_spread")]])
    return residuals, terms


def evaluate(params: GFlashParameters, references: Sequence[ReferenceSample], geometry: Geometry,
             n_showers: int = 300, seed: int = 0) -> tuple[float, list[dict[str, float]], np.ndarray]:
    """Simulate GFlash at every reference's conditions (seed ``[seed, k]`` for the k-th energy) and
    return (J, summary terms per energy, residual vector scaled so that its sum of squares is J)."""
    terms, residuals = [], []
    for k, ref in enumerate(references):
        e, a = candidate_conditions(ref, n_showers)
        showers = simulate_showers(geometry, e, a, np.random.default_rng([seed, k]), params=params)
        r, t = objective_residuals(ref, showers, e, geometry)
        terms.append(t)
        residuals.append(r / math.sqrt(len(references)))
    vector = np.concatenate(residuals)
    return float(vector @ vector), terms, vector


@dataclass
class TuneResult:
    """What :func:`tune` found: the parameters, J before and after, per-energy terms, history."""

    parameters: GFlashParameters
    start_parameters: GFlashParameters
    objective_start: float
    objective: float
    terms_start: list[dict]
    terms: list[dict]
    evaluations: int
    seconds: float
    free: dict[str, tuple[float, float]]
    history: list[float] = field(default_factory=list)
    stopped_by: str = "converged"
    rounds: list[dict] = field(default_factory=list)
    cpu_seconds: float = 0.0


class _BudgetSpent(Exception):
    pass


def _start_values(params: GFlashParameters, geometry: Geometry, names: Sequence[str]) -> np.ndarray:
    values = params.model_dump()
    if values.get("sampling_scale") is None:
        values["sampling_scale"] = stack_parameters(geometry).e_hat
    return np.array([float(values[n]) for n in names])


def tune(references: Sequence[ReferenceSample], geometry: Geometry, *,
         free: dict[str, tuple[float, float]] | None = None, start: GFlashParameters | str | Path | None = None,
         n_showers: int = 300, max_evaluations: int = 400, max_seconds: float | None = None,
         diff_step: float = 0.03, seed: int = 0, restarts: int = 0, restart_gain: float = 0.02,
         progress: bool = False) -> TuneResult:
    """Fit the ``free`` parameters (default :data:`FREE_PARAMETERS`, name -> bounds) of GFlash,
    starting from ``start`` (default the published values), to ``references`` (one per fit energy).

    scipy.optimize.least_squares (trust-region reflective, bounded) on the residual vector of
    :func:`evaluate`, the parameters mapped to the unit box of their bounds, forward-difference
    Jacobian with steps of ``diff_step`` box widths (wide enough to step over the spot and sampling
    noise that the common random numbers leave). When least_squares converges, it is restarted from
    the best point (a fresh Jacobian and trust region) up to ``restarts`` times, as long as the
    previous round lowered J by more than ``restart_gain`` (relative): the trust region of a long
    run shrinks on the noisy objective, and a fresh one moves on. Stops then, after
    ``max_evaluations`` objective evaluations in all (Jacobian ones included; the bound that keeps a
    run reproducible) or ``max_seconds`` (a safety net: a run it stops depends on the machine's
    speed); returns the best point seen. Deterministic for given references, start, seed and bounds.
    """
    from scipy.optimize import least_squares
    from tqdm import tqdm

    geo = geometry
    free = dict(FREE_PARAMETERS if free is None else free)
    unknown = set(free) - set(GFlashParameters.model_fields)
    if unknown:
        raise ValueError(f"unknown GFlash parameters: {', '.join(sorted(unknown))}")
    if not references:
        raise ValueError("tune needs at least one reference sample")
    names = list(free)
    lo = np.array([free[n][0] for n in names])
    hi = np.array([free[n][1] for n in names])
    if np.any(hi <= lo):
        raise ValueError("every free parameter needs low < high bounds")
    start_params = load_parameters(start)
    # start strictly inside the box: the trust-region reflective method scales each step by the distance to
    # the bounds, so a parameter that starts on one (albedo 0) would never move
    x_start = np.clip((_start_values(start_params, geo, names) - lo) / (hi - lo), 0.02, 0.98)

    def to_params(x: np.ndarray) -> GFlashParameters:
        values = lo + np.clip(x, 0.0, 1.0) * (hi - lo)
        return start_params.model_copy(update={n: float(v) for n, v in zip(names, values)})

    t0, cpu0 = time.perf_counter(), time.process_time()
    history: list[float] = []
    j_start, terms_start, _ = evaluate(to_params(x_start), references, geo, n_showers, seed)
    best = {"j": j_start, "x": x_start}
    bar = tqdm(total=max_evaluations, desc="gflash tune", unit="eval", disable=not progress)

    def fun(x: np.ndarray) -> np.ndarray:
        if len(history) >= max_evaluations:
            raise _BudgetSpent("evaluations")
        if max_seconds is not None and time.perf_counter() - t0 > max_seconds:
            raise _BudgetSpent("time")
        j, _, r = evaluate(to_params(x), references, geo, n_showers, seed)
        history.append(j)
        if j < best["j"]:
            best.update(j=j, x=np.array(x))
        bar.update()
        bar.set_postfix(J=f"{best['j']:.4g}")
        return r

    stopped_by, rounds = "converged", []
    for _ in range(1 + restarts):
        j_before = best["j"]
        try:
            least_squares(fun, best["x"], bounds=(np.zeros(len(names)), np.ones(len(names))), method="trf",
                          diff_step=diff_step, x_scale=1.0, xtol=1e-3, ftol=1e-3, max_nfev=max_evaluations)
        except _BudgetSpent as exc:
            stopped_by = f"budget ({exc})"
        rounds.append({"objective_before": j_before, "objective_after": best["j"], "evaluations_total": len(history)})
        if stopped_by != "converged" or best["j"] >= (1.0 - restart_gain) * j_before:
            break  # budget spent, or the last round gained too little to try a fresh start
    bar.close()
    params = to_params(best["x"])
    j, terms, _ = evaluate(params, references, geo, n_showers, seed)
    return TuneResult(params, start_params, j_start, j, terms_start, terms, len(history), time.perf_counter() - t0,
                      free, history, stopped_by, rounds, time.process_time() - cpu0)


def provenance(result: TuneResult, references: Sequence[ReferenceSample], geometry: Geometry,
               files: list[dict], *, window: float, n_showers: int, seed: int) -> dict:
    """The provenance block of a tuned parameter file."""
    return {
        "fastshower_version": __version__,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "geometry": geometry.name,
        "reference_files": files,
        "fit_energies_gev": [r.energy_gev for r in references],
        "energy_window": window,
        "reference_events": [len(r) for r in references],
        "gflash_showers_per_energy": max(n_showers, *(len(r) for r in references)),
        "seed": seed,
        "optimiser": "scipy.optimize.least_squares (trf, bounded) on the unit box of the bounds",
        "stopped_by": result.stopped_by,
        "objective": "J = mean over energies of the scaled squared residuals (profiles, moments, mean, mu90, sigma90, "
                     "core containment, depth spread); fastshower.gflash_tune, docs/gflash.md",
        "term_scales": dict(TERM_SCALES),
        "objective_start": result.objective_start,
        "objective_value": result.objective,
        "terms_start": [{k: float(v) for k, v in t.items()} for t in result.terms_start],
        "terms": [{k: float(v) for k, v in t.items()} for t in result.terms],
        "evaluations": result.evaluations,
        "rounds": result.rounds,
        "seconds": round(result.seconds, 1),
        "cpu_seconds": round(result.cpu_seconds, 1),
        "free_parameters": {k: list(v) for k, v in result.free.items()},
    }


def save_parameters(path: str | Path, params: GFlashParameters, provenance_block: dict) -> None:
    """Write a parameter file (YAML, atomically): all parameters and their provenance."""
    from fastshower.fileio import write_text_atomic

    data = GFlashParameterFile(parameters=params, provenance=provenance_block).model_dump(mode="json")
    write_text_atomic(path, yaml.safe_dump(data, sort_keys=False))


def tune_files(paths: Sequence[str | Path], output: str | Path, energies_gev: Sequence[float] = (10.0, 100.0), *,
               window: float = 0.2, geometry: Geometry | None = None, max_events: int | None = None,
               free: Sequence[str] | None = None, start: str | Path | None = None, n_showers: int = 300,
               max_evaluations: int = 400, max_seconds: float | None = None, seed: int = 0, restarts: int = 0,
               progress: bool = False, command: str | None = None) -> TuneResult:
    """``fastshower gflash tune``: read the references, :func:`tune`, write the parameter file
    (``command``, the command line that made it, goes into its provenance)."""
    references, geo, files = load_references(paths, energies_gev, window, geometry, max_events)
    chosen = None
    if free is not None:
        bounds = {**FREE_PARAMETERS, **OPTIONAL_PARAMETERS}
        unknown = [n for n in free if n not in bounds]
        if unknown:
            raise ValueError(f"no bounds for {', '.join(unknown)}; tunable: {', '.join(bounds)}")
        chosen = {n: bounds[n] for n in free}
    result = tune(references, geo, free=chosen, start=start, n_showers=n_showers, max_evaluations=max_evaluations,
                  max_seconds=max_seconds, seed=seed, restarts=restarts, progress=progress)
    block = provenance(result, references, geo, files, window=window, n_showers=n_showers, seed=seed)
    block["start"] = "grindhammer-peters (the published values)" if start is None else str(start)
    block["restarts"] = restarts
    if command is not None:
        block["command"] = command
    save_parameters(output, result.parameters, block)
    return result
