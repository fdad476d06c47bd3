#!/bin/bash
# Session 12 check (docs/training.md "Session 12"), written before either candidate was finalized or evaluated on the
# fixed-energy test samples. The only goal of issue 15 still missed is the width chi2 at 10 GeV (the shipped
# generator's layers are laterally too alike from shower to shower and its mean radial profile has rings of too much
# or too little energy at low energy). The new step is finalize.py --lateral by-energy (calibrate_lateral_by_energy:
# per layer the median and spread of logit(halo fraction), then the mean energy fraction per ring, in bins of ln E, on
# the training showers). A numpy prototype and the library version were looked at on the held-out low-energy sample
# only (width separation 0.164 -> 0.108 with the shipped generator, calibrated on one low-energy training file).
# Candidates, each calibrated on the same 4000 + 4000 training showers as the shipped one:
#   lateral:  the shipped generator re-calibrated: layers, lateral, hits, then response and resolution by energy;
#   spread6c: the spread-6 campaign (conv2d_g1_g4lowe_ld_spread6, continued in session 12 from 35864) at the time of
#             the run, the weight average of its last 4 generators, symmetrised, then the same calibrations.
# A candidate replaces the shipped generator (baseline) when, after calibration:
#   a. low-energy sample (1000, 2-100 GeV): width separation below the baseline's, profile MSE at most 1.1 x the
#      baseline's, spread distance at most 1.05 x the baseline's
#   b. 2-500 GeV validation: profile MSE at most 1.1 x the baseline's, sampling-fraction error <= 0.02, width
#      separation at most the baseline's
#   c. resolution: within x/1.2 of Geant4's in the 4 low-energy slices and the 7 lower validation slices
# If both pass, the one with the lower low-energy width separation ships.
# Usage: rule_session12.sh [lateral|spread6c]
cd "$(dirname "$0")/../.."
mkdir -p runs/final
variant=${1:-lateral}
case $variant in
  lateral) out=runs/final/s12_lateral
           source=(--folder campaigns/conv2d_g1_g4lowe_ld --generator src/fastshower/weights/conv2d_g1 --symmetry keep) ;;
  spread6c) out=runs/final/s12_spread6c
            source=(--folder campaigns/conv2d_g1_g4lowe_ld_spread6 --run-dir runs/campaign_conv2d_g1_g4lowe_ld_spread6
                    --last 4 --symmetry normal_incidence) ;;
  *) echo "unknown variant $variant: lateral or spread6c" >&2; exit 2 ;;
esac
[ -f $out.finalize.json ] || PYTHONPATH=src OMP_NUM_THREADS=1 .venv/bin/python campaigns/conv2d_g1/finalize.py \
  "${source[@]}" --out $out --layers by-energy --lateral by-energy --hits by-energy \
  --response by-energy --resolution by-energy --calibration-events 4000 \
  --calibration-per-source --low-energy-validation data/g4-clic25-lowe/validation/validation_lowe.h5 \
  --baseline conv2d_g1 > $out.log 2>&1
OUT=$out VARIANT=$variant python3 - <<'PY'
import json
import os
d = json.load(open(os.environ["OUT"] + ".finalize.json"))
a, b = d["average"], d["baseline"]
lo, blo = a["low_energy"], b["low_energy"]
worst = max(max(r, 1 / r) for r in a["resolution_ratio"][:-1] + lo["resolution_ratio"])
checks = {"a_lowE_width": lo["width_separation"] < blo["width_separation"],
          "a_lowE_profile": lo["profile_mse"] <= 1.1 * blo["profile_mse"],
          "a_lowE_spread": lo["spread_distance"] <= 1.05 * blo["spread_distance"],
          "b_profile": a["profile_mse"] <= 1.1 * b["profile_mse"], "b_sf": a["sampling_fraction_error"] <= 0.02,
          "b_width": a["width_separation"] <= b["width_separation"], "c_resolution": worst <= 1.2}
for name, v in (("baseline", b), (os.environ["VARIANT"], a)):
    print(name, "| profile", v["profile_mse"], "sf", v["sampling_fraction_error"], "width", v["width_separation"],
          "spread", v["spread_distance"], "resolution", v["resolution_ratio"], "| lowE profile",
          v["low_energy"]["profile_mse"], "width", v["low_energy"]["width_separation"], "spread",
          v["low_energy"]["spread_distance"], "resolution", v["low_energy"]["resolution_ratio"])
print("PASS" if all(checks.values()) else "fail " + ",".join(k for k, v in checks.items() if not v))
PY
