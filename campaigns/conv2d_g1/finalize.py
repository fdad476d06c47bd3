"""Make the candidate generator of a campaign: the weight average of its last K validated
generators (fastshower.models.registry.average_generators), its response calibrated on training
showers (fastshower.train.calibration.calibrate_response; with ``--response by-energy``
calibrate_response_by_energy, a ln E polynomial; with ``--resolution by-energy`` then its
resolution, fastshower.train.calibration.calibrate_resolution_by_energy; with ``--layers by-energy``
first its longitudinal fluctuations, fastshower.train.calibration.calibrate_layers_by_energy; with ``--symmetry
normal_incidence`` before all of them the symmetrisation of its output over the 8 symmetries of the grid; with
``--cells by-energy`` after the layers the spectrum of its cell energies, calibrate_cells_by_energy; with
``--lateral by-energy`` after those its halo fluctuations and radial profile,
calibrate_lateral_by_energy, and with ``--peak by-energy`` before that how each layer shares its energy between its
largest cell and the others, calibrate_peak_by_energy; with ``--width by-energy`` after the peak and before the
lateral one the widths of its sparse layers, calibrate_width_by_energy; with ``--hits by-energy`` after those its
number of hits, calibrate_hits_by_energy), and its metrics on the
held-out validation showers beside those of each averaged checkpoint: the quick profile and
sampling-fraction metrics, the resolution ratio (generated / Geant4 sigma90 / mu90 of E_dep / E in
each energy slice, fastshower.train.calibration.relative_width; ``resolution_worst`` the ratio
furthest from 1, as max(r, 1 / r)), and the spread distance (fastshower.train.spread.spread_loss of the
generated against the validation showers at the same conditions, in 8 slices of energy, features
standardised on the calibration showers; 0 for a generator that fluctuates like Geant4) and the
width separation (fastshower.validate's per-layer separation power of the x widths, mean over the
layers, the ``chi2_width_x`` of ``fastshower validate``) and the separation powers of the number of
cells above 0.2 MeV per shower (``chi2_hits``) and of the pooled cell-energy spectrum
(``chi2_cell_energy``), for all
validation showers and for those below LOW_ENERGY_GEV (in 2 slices), or, with
``--low-energy-validation``, for a held-out low-energy sample (in 4 slices; scripts/make_g4_lowe.sh
makes one, 1000 showers in 2-100 GeV, against ~120 below 65 GeV in the 2-500 GeV set). The rule (last K, fixed before
looking at any test sample) is what chooses the steps; the fixed-energy Geant4 test samples are
only used afterwards by evaluate.sh.

    python campaigns/conv2d_g1/finalize.py --folder campaigns/conv2d_g1_power \\
        --run-dir runs/campaign_conv2d_g1_power --last 4 --out runs/final/conv2d_g1_power
"""

from __future__ import annotations

import argparse
import functools
import glob
import json
import subprocess
from pathlib import Path

import numpy as np
import torch
import yaml

from fastshower.data import read_showers
from fastshower.data.summaries import quick_metrics
from fastshower.models import registry
from fastshower.models.base import generate_like
from fastshower.showers import ShowerSet
from fastshower.train.calibration import (
    calibrate_cells_by_energy,
    calibrate_hits_by_energy,
    calibrate_lateral_by_energy,
    calibrate_layers_by_energy,
    calibrate_peak_by_energy,
    calibrate_resolution_by_energy,
    calibrate_response,
    calibrate_response_by_energy,
    calibrate_width_by_energy,
    relative_width,
)
from fastshower.train.spread import FeatureStandardizer, spread_loss
from fastshower.validate.metrics import cell_energy_histogram, separation_power
from fastshower.validate.observables import HIT_THRESHOLD_GEV, apply_threshold, layer_centres_and_widths

#: energy slices of the validation spread distance
SPREAD_ENERGY_GROUPS = 8
#: the low-energy view of the validation: showers below this (GeV; ~1/8 of the 2-500 GeV set), in 2 slices
LOW_ENERGY_GEV = 65.0
LOW_ENERGY_GROUPS = 2
#: slices of the low-energy view when it is a separate sample (--low-energy-validation)
LOW_ENERGY_SAMPLE_GROUPS = 4


def spread_distance(standardizer: FeatureStandardizer, reference: ShowerSet, candidate: ShowerSet,
                    energy_groups: int = SPREAD_ENERGY_GROUPS) -> dict[str, float]:
    """spread_loss of ``candidate`` against ``reference`` (total and per group of features)."""
    ec, er = torch.from_numpy(candidate.primary_energy), torch.from_numpy(reference.primary_energy)
    zc = standardizer.z_scores(torch.from_numpy(candidate.showers), ec)
    zr = standardizer.z_scores(torch.from_numpy(reference.showers), er)
    total, groups = spread_loss(zc, zr, ec, er, energy_groups)
    return {"spread_distance": round(float(total), 4), **{f"spread_{g}": round(float(v), 4) for g, v in groups.items()}}


def resolution_ratios(reference: ShowerSet, candidate: ShowerSet, energy_groups: int) -> dict[str, float | list[float]]:
    """Generated / Geant4 relative width (sigma90 / mu90 of E_dep / E, energy trend removed) in
    ``energy_groups`` slices of primary-energy rank (the two sets share their conditions), and the
    worst slice as max(r, 1 / r)."""
    ratios = []
    fake, real = candidate.deposited_energy, reference.deposited_energy
    for index in np.array_split(np.argsort(reference.primary_energy), energy_groups):
        e = reference.primary_energy[index]
        ratios.append(relative_width(fake[index] / e, e) / relative_width(real[index] / e, e))
    return {"resolution_ratio": [round(r, 4) for r in ratios],
            "resolution_worst": round(max(max(r, 1 / r) for r in ratios), 4)}


def width_separation(reference: ShowerSet, candidate: ShowerSet) -> float:
    """Mean over the layers of the separation power of the per-layer x widths (100 bins from 0 to
    half the grid, as ``fastshower validate``'s chi2_width_x) of two sets at the same conditions."""
    geometry = reference.geometry
    edges = np.linspace(0, 0.5 * geometry.shape[0] * (geometry.cell_size_mm or (1.0, 1.0))[0], 101)
    ref, cand = (layer_centres_and_widths(s.showers, geometry)["width_x"] for s in (reference, candidate))
    return float(np.mean([separation_power(np.histogram(ref[:, k], edges)[0], np.histogram(cand[:, k], edges)[0])
                          for k in range(ref.shape[1])]))


def spectrum_separations(reference: ShowerSet, candidate: ShowerSet) -> dict[str, float]:
    """Separation powers of the number of cells at or above HIT_THRESHOLD_GEV per shower (50 bins over
    the reference's 0.1-99.9% quantiles, under- and overflow in the end bins) and of the cell energies
    at or above the readout threshold (49 log bins to the reference's largest cell), as ``fastshower
    validate``'s chi2_hits and chi2_cell_energy."""
    hits = [(s.showers >= HIT_THRESHOLD_GEV).reshape(len(s), -1).sum(axis=1) for s in (reference, candidate)]
    lo, hi = np.quantile(hits[0], [0.001, 0.999])
    edges = np.linspace(lo, hi if hi > lo else lo + 1, 51)
    counts = [np.histogram(np.clip(h, edges[0], edges[-1]), edges)[0] for h in hits]
    cell_edges = np.geomspace(max(reference.geometry.readout_threshold_gev, 1e-9), float(reference.showers.max()), 50)
    cells = [cell_energy_histogram(s.showers, cell_edges) for s in (reference, candidate)]
    return {"hits_separation": round(separation_power(*counts), 4),
            "cell_energy_separation": round(separation_power(*cells), 4)}


def validation_metrics(generator, validation: ShowerSet, standardizer: FeatureStandardizer,
                       low_energy: ShowerSet | None = None, seed: int = 5) -> dict[str, float | dict[str, float]]:
    """Quick metrics and spread distance on all validation showers, and (``low_energy``) on those
    below LOW_ENERGY_GEV or on the separate sample ``low_energy``; the generated showers are made
    once, at the conditions of the reference showers."""

    def generated_like(reference: ShowerSet) -> ShowerSet:
        generated = generate_like(generator, reference, seed, batch_size=len(reference))
        cells = apply_threshold(generated.showers, reference.geometry.readout_threshold_gev)
        return ShowerSet(cells, reference.primary_energy, reference.incident_angle, reference.geometry)

    def metrics(ref: ShowerSet, gen: ShowerSet, energy_groups: int) -> dict[str, float]:
        out = {k: float(f"{v:.4g}") for k, v in quick_metrics(ref, gen).items()}
        out.update(resolution_ratios(ref, gen, energy_groups))
        out["width_separation"] = round(width_separation(ref, gen), 4)
        out.update(spectrum_separations(ref, gen))
        with torch.no_grad():
            out.update(spread_distance(standardizer, ref, gen, energy_groups))
        return out

    cand = generated_like(validation)
    if low_energy is None:
        low = validation.primary_energy < LOW_ENERGY_GEV
        low_view = {"events": int(low.sum()), **metrics(validation[low], cand[low], LOW_ENERGY_GROUPS)}
    else:
        low_view = {"events": len(low_energy),
                    **metrics(low_energy, generated_like(low_energy), LOW_ENERGY_SAMPLE_GROUPS)}
    return {**metrics(validation, cand, SPREAD_ENERGY_GROUPS), "low_energy": low_view}


def _as_of_commit(stem: Path) -> str:
    """``stem`` with the last commit that changed its card (the file is replaced when a re-calibrated
    generator ships over it), or the bare path outside git or with uncommitted changes."""
    card = stem.with_suffix(".json")
    try:
        commit = subprocess.run(["git", "log", "-1", "--format=%h", "--", str(card)], capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", str(card), str(stem.with_suffix(".safetensors"))],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return str(stem)
    return f"{stem} as of commit {commit}" if commit and not dirty else str(stem)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, required=True, help="campaign folder (config.yaml)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run-dir", type=Path, help="the campaign's run directory (generators/)")
    source.add_argument("--generator", type=Path, default=None,
                        help="re-calibrate this saved generator (stem, e.g. src/fastshower/weights/conv2d_g1) "
                             "instead of averaging a run's last generators")
    parser.add_argument("--last", type=int, default=4, help="average the last K validated generators")
    parser.add_argument("--calibration-events", type=int, default=2000, help="training showers for the response")
    parser.add_argument("--response", choices=["global", "by-energy"], default="global",
                        help="one response factor, or a polynomial in ln E (degree --degree)")
    parser.add_argument("--degree", type=int, default=3, help="degree of the ln E polynomial (by-energy)")
    parser.add_argument("--calibration-per-source", action="store_true",
                        help="read --calibration-events showers from each entry of data.train (e.g. the 2-500 GeV "
                             "files and the low-energy ones) instead of from the first files only")
    parser.add_argument("--resolution", choices=["none", "by-energy"], default="none",
                        help="also calibrate the resolution (sigma90 / mu90 of E_dep / E) against ln E, after the "
                             "response")
    parser.add_argument("--layers", choices=["none", "by-energy"], default="none",
                        help="first calibrate each layer's energy fraction (median and spread of its log, in bins of "
                             "ln E) to the training showers; it keeps each shower's total")
    parser.add_argument("--hits", choices=["none", "by-energy"], default="none",
                        help="after the layers, calibrate each shower's number of hits (median and spread of its log, "
                             "in bins of ln E) to the training showers by zeroing the smallest hits")
    parser.add_argument("--cells", choices=["none", "by-energy"], default="none",
                        help="after the layers, calibrate the spectrum of cell energies of each layer (quantile map of "
                             "ln E_cell, in bins of ln E) to the training showers")
    parser.add_argument("--lateral", choices=["none", "by-energy"], default="none",
                        help="after the layers, calibrate each layer's halo fraction (median and spread of its logit) "
                             "and mean radial profile (ring factors), in bins of ln E, to the training showers")
    parser.add_argument("--peak", choices=["none", "by-energy"], default="none",
                        help="after the cells and before the lateral one, calibrate each layer's fraction of energy "
                             "outside its largest cell (median and spread of its logit, layers of two cells or more), "
                             "in bins of ln E")
    parser.add_argument("--width", choices=["none", "by-energy"], default="none",
                        help="before the lateral one, map the radial width of each sparse layer (less than 5%% of the "
                             "shower) onto the data's distribution, in bins of ln E, with far deposits from noise")
    parser.add_argument("--width-max-energy", type=float, default=None,
                        help="map the widths only in the energy bins that end at or below this (GeV; default: all)")
    parser.add_argument("--symmetry", choices=["keep", "none", "normal_incidence"], default="keep",
                        help="symmetrise the output over the 8 symmetries of the grid (normal_incidence), or not "
                             "(none), before any calibration; keep: as the generator is")
    parser.add_argument("--low-energy-validation", nargs="+", default=None,
                        help="held-out low-energy shower files for the low_energy view (instead of the "
                             f"validation showers below {LOW_ENERGY_GEV:g} GeV)")
    parser.add_argument("--baseline", default=None,
                        help="also measure this generator (name or path, e.g. the shipped conv2d_g1) the same way")
    parser.add_argument("--out", type=Path, required=True, help="output stem (.json + .safetensors)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.generator is not None:
        stems = [args.generator]
    else:
        stems = sorted(p.with_suffix("") for p in (args.run_dir / "generators").glob("step_*.json"))[-args.last:]
        if not stems:
            raise SystemExit(f"no generators under {args.run_dir / 'generators'}")
    cfg = yaml.safe_load((args.folder / "config.yaml").read_text())
    def resolve(patterns: str | list[str]) -> list[str]:  # config paths are relative to the folder, in order
        patterns = [patterns] if isinstance(patterns, str) else patterns
        return [f for p in patterns for f in sorted(glob.glob(str((args.folder / p).resolve())))]

    validation = read_showers(resolve(cfg["data"]["validation"]), max_events=cfg["data"].get("max_validation_events"))
    if args.calibration_per_source:
        sources = cfg["data"]["train"] if isinstance(cfg["data"]["train"], list) else [cfg["data"]["train"]]
        train = ShowerSet.concatenate([read_showers(resolve(p), max_events=args.calibration_events) for p in sources])
    else:
        train = read_showers(resolve(cfg["data"]["train"]), max_events=args.calibration_events)
    low_energy = read_showers(args.low_energy_validation) if args.low_energy_validation else None
    standardizer = FeatureStandardizer.fit(train.showers, train.primary_energy)
    report: dict = {"averaged_from": [s.name for s in stems] if args.generator is None else [],
                    "recalibrated_from": None if args.generator is None else _as_of_commit(args.generator),
                    "checkpoints": {}}
    if args.baseline:
        report["baseline"] = {"generator": args.baseline, **validation_metrics(
            registry.load_generator(args.baseline), validation, standardizer, low_energy)}
    for stem in stems if args.generator is None else []:
        report["checkpoints"][stem.name] = validation_metrics(registry.load_generator(stem), validation, standardizer,
                                                                low_energy)
    generator = registry.average_generators(stems) if args.generator is None else registry.load_generator(stems[0])
    report["average_before_calibration"] = validation_metrics(generator, validation, standardizer, low_energy)
    method = []
    if args.symmetry != "keep":
        generator.set_symmetry(args.symmetry)
        report["symmetry"] = args.symmetry
        report["average_after_symmetry"] = validation_metrics(generator, validation, standardizer, low_energy)
    for option, remove in ((args.cells, "set_cell_correction"), (args.peak, "set_peak_correction"),
                           (args.lateral, "set_lateral_correction"), (args.width, "set_width_correction"),
                           (args.hits, "set_hits_correction")):
        if option == "by-energy" and hasattr(generator, remove):
            getattr(generator, remove)(None)  # a re-calibrated generator's old one would act on the fits before it
    # distribution fits, in the order generate_raw applies them; each card entry keeps the fit's bins and before/after
    fits = {"layers": (args.layers, calibrate_layers_by_energy, ("bins_gev", "events", "before", "after")),
            "cells": (args.cells, calibrate_cells_by_energy, ("bins_gev", "events", "cell_count_ratio_median",
                                                             "before", "after")),
            "peak": (args.peak, calibrate_peak_by_energy, ("bins_gev", "events", "layers_left_as_they_are",
                                                          "before", "after")),
            "width": (args.width, functools.partial(calibrate_width_by_energy, max_energy_gev=args.width_max_energy),
                      ("bins_gev", "events", "max_layer_share", "max_energy_gev", "layers_mapped", "before", "after")),
            "lateral": (args.lateral, calibrate_lateral_by_energy, ("bins_gev", "events", "before", "after")),
            "hits": (args.hits, calibrate_hits_by_energy, ("bins_gev", "events", "median_data", "spread_data",
                                                          "before", "after"))}
    card_fits = {}
    for name, (option, fit, keys) in fits.items():
        if option != "by-energy":
            continue
        result = fit(generator, train)
        report[f"{name}_by_energy"] = result
        report[f"average_after_{name}"] = validation_metrics(generator, validation, standardizer, low_energy)
        method.append(getattr(fit, "func", fit).__name__)
        card_fits[name] = {k: result[k] for k in keys}
    ratio = calibrate_response(generator, train)
    report["response_ratio_applied"] = round(ratio, 5)
    method.append("calibrate_response")
    calibration = {"ratio": report["response_ratio_applied"], "training_showers": len(train),
                   "method": "fastshower.train.calibration." + ", then ".join(method), **card_fits}
    if args.symmetry != "keep":
        calibration["symmetry"] = args.symmetry
    if args.response == "by-energy":
        by_energy = calibrate_response_by_energy(generator, train, degree=args.degree)
        report["response_by_energy"] = by_energy
        calibration.update(method=calibration["method"] + ", then calibrate_response_by_energy",
                           by_energy={k: by_energy[k] for k in ("coefficients", "degree", "bin_edges_gev",
                                                                 "ratio_before", "ratio_after")})
    if args.resolution == "by-energy":
        report["average_before_resolution"] = validation_metrics(generator, validation, standardizer, low_energy)
        resolution = calibrate_resolution_by_energy(generator, train)
        report["resolution_by_energy"] = resolution
        calibration.update(method=calibration["method"] + ", then calibrate_resolution_by_energy",
                           resolution=resolution)
    report["calibration_events"] = len(train)
    report["average"] = validation_metrics(generator, validation, standardizer, low_energy)
    card = registry.read_card(stems[-1])
    meta = dict(card.get("metadata") or {})
    if args.generator is None:
        meta["averaged_from"] = report["averaged_from"]
    else:
        meta["recalibrated_from"] = report["recalibrated_from"]
        calibration["before"] = meta.get("response_calibration")
    meta["response_calibration"] = calibration
    registry.save_generator(generator, args.out, meta)
    args.out.with_suffix(".finalize.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
