"""Table of the goal metrics from campaigns/conv2d_g1/evaluate.sh outputs: GAN, untuned GFlash and
(where evaluated) GFlash tuned to Geant4 against Geant4, beside the floor (Geant4 sample b vs a).

    python campaigns/conv2d_g1/summarize.py OUTDIR [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

KEYS = ["sampling_fraction_mre", "gan_metric_profiles", "chi2_layer_energy", "chi2_width_x", "chi2_width_y",
        "chi2_width_r", "profile_mse", "sigma90_rel_error"]
#: sigma90 / mu90 of E_dep / E (the resolution): of each candidate, and of the reference in the "floor" column
RESOLUTION = "resolution_sigma90_over_mu90"


def _resolution(mu90_sigma90: list[list[float]]) -> float:
    (mu, sigma), = mu90_sigma90  # one energy bin: the samples are at one energy
    return sigma / mu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    table: dict[str, dict[str, dict[str, float]]] = {}
    for path in sorted(args.outdir.glob("v_*_e*/metrics.json")):
        who, energy = path.parent.name[2:].rsplit("_e", 1)
        # `fastshower validate` writes {"verdict", "comparisons": [{"label", "metrics", ...}]} (one candidate here)
        comparison = json.loads(path.read_text())["comparisons"][0]
        metrics, details = comparison["metrics"], comparison["candidate_details"]
        row = table.setdefault(f"{int(energy)} GeV", {})
        row[who] = {k: metrics[k]["candidate"] for k in KEYS if k in metrics}
        row[who][RESOLUTION] = _resolution(details["mu90_sigma90"])
        row["floor"] = {k: metrics[k]["floor"] for k in KEYS if k in metrics}
        row["floor"][RESOLUTION] = _resolution(details["mu90_sigma90_reference"])
    print(f"{'energy':>8} {'metric':<28} {'GAN':>10} {'GFlash':>10} {'tuned':>10} {'floor':>10}  GAN better (tuned)")
    for energy in sorted(table, key=lambda e: int(e.split()[0])):
        row = table[energy]
        for k in [*KEYS, RESOLUTION]:
            gan, gfl, tun, flo = (row.get(w, {}).get(k, float("nan"))
                                  for w in ("gan", "gflash", "gflash_tuned", "floor"))
            better = "" if k == RESOLUTION else ("yes" if gan < gfl else "no") + (
                "" if tun != tun else " (yes)" if gan < tun else " (no)")  # floor column of RESOLUTION: Geant4's
            print(f"{energy:>8} {k:<28} {gan:10.4g} {gfl:10.4g} {tun:10.4g} {flo:10.4g}  {better}")
    if args.json:
        args.json.write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
