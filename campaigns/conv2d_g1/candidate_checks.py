"""The candidate checks of sessions 13 and 14 (docs/training.md), on a finalize.py report made with
``--baseline`` and ``--low-energy-validation``: the candidate (``average``) replaces the baseline when

  a. low-energy sample: width separation below the baseline's; profile MSE and hits separation at
     most 1.1 x the baseline's; spread distance at most 1.05 x the baseline's
  b. 2-500 GeV validation: profile MSE at most 1.1 x the baseline's, sampling-fraction error <= 0.02,
     width separation at most the baseline's
  c. resolution: within x/1.2 of Geant4's in the low-energy slices and all validation slices but the last

Prints both rows and PASS or the failed checks.

    python campaigns/conv2d_g1/candidate_checks.py runs/final/NAME.finalize.json NAME
"""

from __future__ import annotations

import json
import sys


def checks(report: dict) -> dict[str, bool]:
    """{check: passed} for a finalize report (keys ``average`` and ``baseline``)."""
    a, b = report["average"], report["baseline"]
    lo, blo = a["low_energy"], b["low_energy"]
    worst = max(max(r, 1 / r) for r in a["resolution_ratio"][:-1] + lo["resolution_ratio"])
    return {"a_lowE_width": lo["width_separation"] < blo["width_separation"],
            "a_lowE_profile": lo["profile_mse"] <= 1.1 * blo["profile_mse"],
            "a_lowE_hits": lo["hits_separation"] <= 1.1 * blo["hits_separation"],
            "a_lowE_spread": lo["spread_distance"] <= 1.05 * blo["spread_distance"],
            "b_profile": a["profile_mse"] <= 1.1 * b["profile_mse"], "b_sf": a["sampling_fraction_error"] <= 0.02,
            "b_width": a["width_separation"] <= b["width_separation"], "c_resolution": worst <= 1.2}


def main() -> None:
    path, name = sys.argv[1], sys.argv[2]
    report = json.load(open(path))
    for label, v in (("baseline", report["baseline"]), (name, report["average"])):
        print(label, "| profile", v["profile_mse"], "sf", v["sampling_fraction_error"], "width", v["width_separation"],
              "spread", v["spread_distance"], "resolution", v["resolution_ratio"], "| lowE profile",
              v["low_energy"]["profile_mse"], "width", v["low_energy"]["width_separation"], "hits",
              v["low_energy"]["hits_separation"], "spread", v["low_energy"]["spread_distance"], "resolution",
              v["low_energy"]["resolution_ratio"])
    result = checks(report)
    print("PASS" if all(result.values()) else "fail " + ",".join(k for k, v in result.items() if not v))


if __name__ == "__main__":
    main()
