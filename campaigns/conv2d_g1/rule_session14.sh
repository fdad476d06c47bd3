#!/bin/bash
# Session 14 (docs/training.md "Session 14"), written before the candidate was finalized or evaluated on the
# fixed-energy test samples. The only goal of issue 15 still missed is the width chi2 at 10 GeV (0.132 against untuned
# GFlash's 0.109). On low-energy training showers (train_lowe_1 and _2, 7-14 GeV) the shipped generator's layer widths
# lack Geant4's wide tail in nearly every layer and, in the first layers, its split between one-cell layers and layers
# of a few cells far apart (layer 0: 59% one-cell layers in Geant4, 32% generated; Geant4's 90% quantile 11.8 mm,
# generated 1.9 mm). The new step is finalize.py --width by-energy (calibrate_width_by_energy: the radial width of
# each layer holding < 5% of the shower mapped by rank onto the data's, narrower by moving energy into the largest
# cell, wider by one far deposit in a direction drawn from new noise components), after the lateral step and before
# the hit count. Prototype, fitted on train_lowe_1 and measured on train_lowe_2 (7-14 GeV, not used in the fit): mean
# width separation over the layers 0.124 -> 0.082 (floor 0.046), hits separation 0.214 -> 0.175, profile MSE
# 4.0e-6 -> 2.7e-6. Candidate `width`: the shipped generator (session 12) re-calibrated on the same 4000 + 4000
# training showers: layers, lateral, width, hits, then response and resolution by energy. The checks are session
# 13's, unchanged; it replaces the shipped generator (baseline) when:
#   a. low-energy sample (1000, 2-100 GeV): width separation below the baseline's; profile MSE and hits separation at
#      most 1.1 x the baseline's; spread distance at most 1.05 x the baseline's
#   b. 2-500 GeV validation: profile MSE at most 1.1 x the baseline's, sampling-fraction error <= 0.02, width
#      separation at most the baseline's
#   c. resolution: within x/1.2 of Geant4's in the 4 low-energy slices and the 7 lower validation slices
# and then, on the fixed-energy test samples (evaluate.sh, the goals of issue 15), it ships only if it beats untuned
# GFlash on every goal metric at 10, 50, 100 and 300 GeV.
cd "$(dirname "$0")/../.."
mkdir -p runs/final
out=runs/final/s14_width
[ -f $out.finalize.json ] || PYTHONPATH=src OMP_NUM_THREADS=1 .venv/bin/python campaigns/conv2d_g1/finalize.py \
  --folder campaigns/conv2d_g1_g4lowe_ld --generator src/fastshower/weights/conv2d_g1 --symmetry keep \
  --out $out --layers by-energy --lateral by-energy --width by-energy --hits by-energy \
  --response by-energy --resolution by-energy --calibration-events 4000 \
  --calibration-per-source --low-energy-validation data/g4-clic25-lowe/validation/validation_lowe.h5 \
  --baseline conv2d_g1 > $out.log 2>&1
OUT=$out python3 - <<'PY'
import json
import os
d = json.load(open(os.environ["OUT"] + ".finalize.json"))
a, b = d["average"], d["baseline"]
lo, blo = a["low_energy"], b["low_energy"]
worst = max(max(r, 1 / r) for r in a["resolution_ratio"][:-1] + lo["resolution_ratio"])
checks = {"a_lowE_width": lo["width_separation"] < blo["width_separation"],
          "a_lowE_profile": lo["profile_mse"] <= 1.1 * blo["profile_mse"],
          "a_lowE_hits": lo["hits_separation"] <= 1.1 * blo["hits_separation"],
          "a_lowE_spread": lo["spread_distance"] <= 1.05 * blo["spread_distance"],
          "b_profile": a["profile_mse"] <= 1.1 * b["profile_mse"], "b_sf": a["sampling_fraction_error"] <= 0.02,
          "b_width": a["width_separation"] <= b["width_separation"], "c_resolution": worst <= 1.2}
for name, v in (("baseline", b), ("width", a)):
    print(name, "| profile", v["profile_mse"], "sf", v["sampling_fraction_error"], "width", v["width_separation"],
          "spread", v["spread_distance"], "resolution", v["resolution_ratio"], "| lowE profile",
          v["low_energy"]["profile_mse"], "width", v["low_energy"]["width_separation"], "hits",
          v["low_energy"]["hits_separation"], "spread", v["low_energy"]["spread_distance"], "resolution",
          v["low_energy"]["resolution_ratio"])
print("PASS" if all(checks.values()) else "fail " + ",".join(k for k, v in checks.items() if not v))
PY
