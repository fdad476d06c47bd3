#!/bin/bash
# Session 9 selection (docs/training.md "Session 9"), fixed before any test sample was looked at: finalize the two
# cool-down candidates (average of the last 4 validated generators) and the shipped generator, each with its
# response and then its resolution calibrated against ln E on 4000 + 4000 training showers (2-500 GeV and 2-100 GeV
# files), and print the rule check. A candidate passes when, on the held-out showers after calibration:
#   a. low-energy sample (1000, 2-100 GeV): spread distance at most the shipped generator's (as shipped) and profile
#      MSE at most 1.1 x its
#   b. 2-500 GeV validation: profile MSE <= 1e-5, sampling-fraction error <= 0.02, spread distance at most twice the
#      shipped generator's (session 8's bound, 2 x 1.13, was written as a number for another standardizer)
#   c. resolution: sigma90/mu90 of E_dep/E within x/1.2 of Geant4's in each of the 4 slices of the low-energy sample
#      and in the 7 lower of the 8 slices of the 2-500 GeV validation sample (its top slice, 440-500 GeV, is left
#      out: there the validation showers' own width is 0.080 against 0.058 for the training showers of those energies)
# Of those that pass, the lowest low-energy spread distance ships. (First draft, changed after finalizing the shipped
# generator alone and before any candidate: a with strict inequalities, which the re-calibrated shipped generator
# cannot pass against itself; b with spread distance <= 2.26, which the shipped generator itself misses with this
# session's standardizer (2.52); c on all 8 validation slices.)
cd "$(dirname "$0")/../.."
common=(--response by-energy --resolution by-energy --calibration-events 4000 --calibration-per-source
        --low-energy-validation data/g4-clic25-lowe/validation/validation_lowe.h5 --baseline conv2d_g1)
run() { PYTHONPATH=src OMP_NUM_THREADS=1 .venv/bin/python campaigns/conv2d_g1/finalize.py "$@" "${common[@]}"; }
mkdir -p runs/final
for c in g4lowe_cool g4lowe_ld_cool; do
  [ -f runs/final/s9_$c.finalize.json ] || run --folder campaigns/conv2d_g1_$c --run-dir runs/campaign_conv2d_g1_$c \
    --last 4 --out runs/final/s9_$c > runs/final/s9_$c.log 2>&1 &
done
[ -f runs/final/s9_shipped.finalize.json ] || run --folder campaigns/conv2d_g1_g4lowe_ld \
  --generator src/fastshower/weights/conv2d_g1 --out runs/final/s9_shipped > runs/final/s9_shipped.log 2>&1
wait
python3 - <<'PY'
import json
for c in ("g4lowe_cool", "g4lowe_ld_cool", "shipped"):
    d = json.load(open(f"runs/final/s9_{c}.finalize.json"))
    a, b = d["average"], d["baseline"]
    lo, blo = a["low_energy"], b["low_energy"]
    worst = max(max(r, 1 / r) for r in a["resolution_ratio"][:-1] + lo["resolution_ratio"])
    checks = {"a_lowE_spread": lo["spread_distance"] <= blo["spread_distance"],
              "a_lowE_profile": lo["profile_mse"] <= 1.1 * blo["profile_mse"],
              "b_profile": a["profile_mse"] <= 1e-5, "b_sf": a["sampling_fraction_error"] <= 0.02,
              "b_spread": a["spread_distance"] <= 2 * b["spread_distance"], "c_resolution": worst <= 1.2}
    steps = f"{d['averaged_from'][0]}-{d['averaged_from'][-1]}" if d["averaged_from"] else d["recalibrated_from"]
    print(c, steps, "| profile", a["profile_mse"], "sf", a["sampling_fraction_error"], "spread", a["spread_distance"],
          "resolution", a["resolution_ratio"], "| lowE profile", lo["profile_mse"], "spread", lo["spread_distance"],
          "resolution", lo["resolution_worst"], lo["resolution_ratio"],
          "| baseline lowE profile", blo["profile_mse"], "spread", blo["spread_distance"],
          "|", "PASS" if all(checks.values()) else "fail " + ",".join(k for k, v in checks.items() if not v))
PY
