"""GFlash (published and tuned parameters) against Geant4 at held-out energies, and its speed.

For each test energy: a fixed-energy Geant4 file and an independent second one for the floor (or
the Geant4 events within a window of a uniform sample, split in halves for the floor), GFlash
simulated at the same primary energies with each parameter set, then every metric of ``fastshower
validate`` (``fastshower.validate.metrics.compare``, one energy bin spanning the sample) beside the
Geant4-vs-Geant4 floor, plus the goal quantities of issue #14: the 3DGAN profile term / floor, the
mean active energy (relative difference), sigma90 of the response (relative error) and the 5x5 core
containment (difference). Speed (``--speed-only``, run it through ``/work/bin/quiet``): GFlash
showers/s on clic25 (process CPU time, 1000 showers per call, best of 3) and Geant4 full simulation
(option 0, ``fastshower.infer.g4reference`` in a child process, CPU s per shower) in the same run.

    PYTHONPATH=src OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/gflash_geant4.py \
        --energies 50,300 --out bench/results/gflash_geant4.json
    PYTHONPATH=src OMP_NUM_THREADS=1 /work/bin/quiet .venv/bin/python bench/gflash_geant4.py --speed-only \
        --out bench/results/gflash_speed.json
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import time
from datetime import datetime, timezone

import numpy as np

from fastshower.data import read_showers
from fastshower.fileio import write_text_atomic
from fastshower.geometry import load_geometry
from fastshower.gflash_tune import core_containment, select_energy
from fastshower.showers import ShowerSet
from fastshower.simulate.gflash import load_parameters, simulate_showers
from fastshower.validate.comparison import compare_many
from fastshower.validate.metrics import mu90_sigma90
from fastshower.validate.observables import apply_threshold

#: Geant4 full-simulation events timed per speed energy (GeV): a few at 100 GeV (~1 CPU s each).
GEANT4_EVENTS = {10.0: 100, 100.0: 20}

GOAL_METRICS = ("gan_metric_profiles", "gan_metric_moments", "gan_metric_total", "mu90_rel_error",
                "sigma90_rel_error", "profile_mse", "sampling_fraction_mre", "chi2_separation_mean", "fpd", "kpd",
                "classifier_auc_low", "classifier_auc_high")


def _summary(reference: ShowerSet, candidate: ShowerSet, geometry) -> dict:
    """Means over the whole window: active energy / E0, sigma90/mu90, 5x5 core, layer 17/16."""
    out = {}
    for name, s in (("geant4", reference), ("gflash", candidate)):
        showers = apply_threshold(s.showers, geometry.readout_threshold_gev)
        ratio = showers.sum(axis=(1, 2, 3), dtype=np.float64) / s.primary_energy
        mu90, sigma90 = mu90_sigma90(ratio)
        layers = showers.sum(axis=(0, 1, 2), dtype=np.float64)
        out[name] = {"active_over_e0": float(ratio.mean()), "rel_resolution": float(ratio.std() / ratio.mean()),
                     "mu90": mu90, "sigma90": sigma90, "core_5x5": float(core_containment(showers, geometry).mean()),
                     "layer17_over_16": float(layers[17] / layers[16]) if len(layers) > 17 else None}
    g, c = out["geant4"], out["gflash"]
    out["goals"] = {"active_energy_rel_diff": c["active_over_e0"] / g["active_over_e0"] - 1,
                    "sigma90_rel_diff": c["sigma90"] / g["sigma90"] - 1,
                    "core_5x5_diff": c["core_5x5"] - g["core_5x5"]}
    return out


def speed(geometry: str, energy: float, params, n: int = 1000, repeats: int = 3) -> float:
    """GFlash showers per second of process CPU time (best of ``repeats``)."""
    g = load_geometry(geometry)
    e, a = np.full(n, energy), np.full(n, np.pi / 2)
    simulate_showers(g, e[:50], a[:50], np.random.default_rng(0), params=params)  # warm-up
    best = np.inf
    for r in range(repeats):
        t0 = time.process_time()
        simulate_showers(g, e, a, np.random.default_rng(r), params=params)
        best = min(best, time.process_time() - t0)
    return n / best


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "n/a"
    return f"{v:.4g}"


def render(results: dict) -> str:
    """Markdown tables of a result JSON (docs/gflash.md): per energy the goals, every metric beside
    its floor, the goal quantities; the speed."""
    out = []
    for energy, row in results.get("energies", {}).items():
        specs = [k for k, v in row.items() if isinstance(v, dict) and "metrics" in v]
        first = row[specs[0]]
        out.append(f"**{energy} GeV** ({row['n_reference']} Geant4 events; floor: {first['floor_source']})\n")
        out.append("| metric | floor (Geant4 vs Geant4) | " + " | ".join(f"{s} | {s}/floor" for s in specs) + " |")
        out.append("|---|---|" + "---|---|" * len(specs))
        for name, m in first["metrics"].items():
            cells = [_fmt(m["floor"])]
            for spec in specs:
                r = row[spec]["metrics"][name]
                cells += [_fmt(r["candidate"]), _fmt(r["ratio"])]
            out.append(f"| {name} | " + " | ".join(cells) + " |")
        out.append("")
        quantities = list(first["summary"]["geant4"])
        sources = ([("Geant4 (a)", first["summary"]["geant4"])]
                   + ([("Geant4 (b)", row["geant4_b"]["summary"]["gflash"])] if "geant4_b" in row else [])
                   + [(s, row[s]["summary"]["gflash"]) for s in specs])
        out.append("| goal quantity | " + " | ".join(name for name, _ in sources) + " |")
        out.append("|---|" + "---|" * len(sources))
        for q in quantities:
            out.append(f"| {q} | " + " | ".join(_fmt(v[q]) for _, v in sources) + " |")
        goal_sources = ([("Geant4 (b)", row["geant4_b"]["summary"]["goals"])] if "geant4_b" in row else []) \
            + [(s, row[s]["summary"]["goals"]) for s in specs]
        for q in goal_sources[0][1]:
            out.append(f"| {q} | | " + " | ".join(f"{v[q]:+.4f}" for _, v in goal_sources) + " |")
        out.append("")
    speed = results.get("speed", {})
    if speed:
        energies = list(speed.get("geant4_showers_per_s", {}) or ["10", "100"])
        out.append("| showers/s (CPU), GeV | " + " | ".join(energies) + " |")
        out.append("|---|" + "---|" * len(energies))
        for spec, v in speed.items():
            if spec in ("geant4_full",):
                continue
            label = "Geant4 option 0 (full)" if spec == "geant4_showers_per_s" else f"GFlash {spec}"
            out.append(f"| {label} | " + " | ".join(_fmt(x) for x in v.values()) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reference", default="data/g4samples/clic25_e{energy}_a.h5",
                   help="Geant4 files (glob); a pattern with {energy} is formatted per energy (fixed-energy files)")
    p.add_argument("--reference2", default="data/g4samples/clic25_e{energy}_b.h5",
                   help="Second Geant4 sample per energy for the floor ({energy}); 'none': split the reference")
    p.add_argument("--energies", default="50,300")
    p.add_argument("--window", type=float, default=0.2)
    p.add_argument("--params", action="append", default=None, help="Parameter sets (repeatable)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--no-classifier", action="store_true")
    p.add_argument("--speed-n", type=int, default=1000)
    p.add_argument("--speed-only", action="store_true", help="Only the speed of GFlash and Geant4 (run it quiet)")
    p.add_argument("--geant4-scale", type=float, default=1.0, help="Scale the Geant4 events timed (0: skip)")
    p.add_argument("--out", default="bench/results/gflash_geant4.json")
    p.add_argument("--render", default=None, help="Print the markdown tables of this result JSON and stop")
    args = p.parse_args(argv)
    if args.render:
        with open(args.render) as f:
            print(render(json.load(f)))
        return {}
    param_specs = args.params or ["default", "clic25_geant4"]
    energies = [float(v) for v in args.energies.split(",")]
    results: dict = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                     "load_average_start": os.getloadavg(), "reference": args.reference, "window": args.window,
                     "seed": args.seed, "energies": {}, "speed": {}}
    all_ref = None
    if args.reference2 is not None and args.reference2.lower() == "none":
        args.reference2 = None
    for energy in ([] if args.speed_only else energies):
        if "{energy}" in args.reference:
            ref = read_showers(sorted(glob.glob(args.reference.format(energy=f"{energy:g}"))))
            ref2 = read_showers(sorted(glob.glob(args.reference2.format(energy=f"{energy:g}")))) \
                if args.reference2 else None
            bins = [0.5 * ref.primary_energy.min(), 2 * ref.primary_energy.max()]
        else:
            all_ref = all_ref if all_ref is not None else read_showers(sorted(glob.glob(args.reference)))
            ref, ref2 = select_energy(all_ref, energy, args.window), None
            bins = [energy * (1 - args.window) - 1e-6, energy * (1 + args.window) + 1e-6]
        geometry = ref.geometry
        row: dict = {"n_reference": len(ref), "n_reference2": None if ref2 is None else len(ref2)}
        if ref2 is not None:  # the goal quantities of Geant4's second sample: their statistical floor
            row["geant4_b"] = {"summary": _summary(ref, ref2, geometry)}
        candidates, seconds = {}, {}
        for spec in param_specs:
            t0 = time.process_time()
            showers = simulate_showers(geometry, ref.primary_energy, ref.incident_angle,
                                       np.random.default_rng([args.seed, int(energy)]), params=load_parameters(spec))
            candidates[spec] = ShowerSet(showers, ref.primary_energy, ref.incident_angle, ref.geometry,
                                         {"simulator": "gflash"})
            seconds[spec] = time.process_time() - t0
        comparisons = compare_many(ref, candidates, ref2, energy_bins=bins, classifier=not args.no_classifier,
                                   seed=args.seed)
        for spec, res in zip(param_specs, comparisons):
            row[spec] = {"metrics": res.to_dict()["metrics"], "floor_source": res.floor_source,
                         "n_reference2": res.n_reference2, "summary": _summary(ref, candidates[spec], geometry),
                         "simulate_cpu_s": seconds[spec]}
            m = res.metrics
            print(f"{energy:g} GeV {spec}: profiles {m['gan_metric_profiles'].candidate:.4f} "
                  f"(floor {m['gan_metric_profiles'].floor:.4f}), goals {row[spec]['summary']['goals']}", flush=True)
        results["energies"][f"{energy:g}"] = row
    for spec in param_specs if args.speed_only else []:
        params = load_parameters(spec)
        results["speed"][spec] = {f"{e:g}": speed("clic25", e, params, args.speed_n) for e in (10.0, 100.0)}
    if args.speed_only and args.geant4_scale > 0:
        from fastshower.infer.g4reference import geant4_reference

        g4 = {f"{e:g}": geant4_reference("clic25", "full", energy_gev=e, n=max(1, round(n * args.geant4_scale)))
              for e, n in GEANT4_EVENTS.items()}
        results["speed"]["geant4_full"] = g4
        results["speed"]["geant4_showers_per_s"] = {
            k: 1e3 / v["cpu_ms_per_event"] for k, v in g4.items() if "cpu_ms_per_event" in v}
    results["load_average_end"] = os.getloadavg()
    write_text_atomic(args.out, json.dumps(results, indent=1, default=float))
    print(json.dumps(results["speed"], indent=1))
    return results


if __name__ == "__main__":
    main()
