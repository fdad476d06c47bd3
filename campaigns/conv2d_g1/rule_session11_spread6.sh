#!/bin/bash
# Session 11, second check (docs/training.md "Session 11"): the spread-6 campaign (conv2d_g1_g4lowe_ld_spread6, forked
# at 26353 with twice the spread weight, run to 31077 at the end of session 9 and not evaluated since) finalized the
# way the shipped generator now is made (weight average of its last 4 generators, symmetrised, layers, then response
# and resolution by energy on the same 4000 + 4000 training showers) and compared on the held-out showers with the
# generator shipped in session 11 (baseline). It replaces it under the checks a-c of rule_session11.sh.
cd "$(dirname "$0")/../.."
mkdir -p runs/final
[ -f runs/final/s11_spread6.finalize.json ] || PYTHONPATH=src OMP_NUM_THREADS=1 .venv/bin/python \
  campaigns/conv2d_g1/finalize.py --folder campaigns/conv2d_g1_g4lowe_ld_spread6 --run-dir runs/campaign_conv2d_g1_g4lowe_ld_spread6 --last 4 \
  --out runs/final/s11_spread6 --symmetry normal_incidence --layers by-energy \
  --response by-energy --resolution by-energy --calibration-events 4000 \
  --calibration-per-source --low-energy-validation data/g4-clic25-lowe/validation/validation_lowe.h5 \
  --baseline conv2d_g1 > runs/final/s11_spread6.log 2>&1
python3 - <<'PY'
import json
d = json.load(open("runs/final/s11_spread6.finalize.json"))
a, b = d["average"], d["baseline"]
lo, blo = a["low_energy"], b["low_energy"]
worst = max(max(r, 1 / r) for r in a["resolution_ratio"][:-1] + lo["resolution_ratio"])
checks = {"a_lowE_spread": lo["spread_distance"] < blo["spread_distance"],
          "a_lowE_width": lo["spread_layer_width"] < blo["spread_layer_width"],
          "a_lowE_profile": lo["profile_mse"] <= 1.1 * blo["profile_mse"],
          "b_profile": a["profile_mse"] <= 1.1 * b["profile_mse"], "b_sf": a["sampling_fraction_error"] <= 0.02,
          "b_spread": a["spread_distance"] <= b["spread_distance"],
          "b_width": a["spread_layer_width"] <= b["spread_layer_width"], "c_resolution": worst <= 1.2}
for name, v in (("baseline", b), ("spread6", a)):
    print(name, "| profile", v["profile_mse"], "sf", v["sampling_fraction_error"], "spread", v["spread_distance"],
          "width", v["spread_layer_width"], "lateral", v["spread_lateral_profile"], "resolution", v["resolution_ratio"],
          "| lowE profile", v["low_energy"]["profile_mse"], "spread", v["low_energy"]["spread_distance"], "width",
          v["low_energy"]["spread_layer_width"], "resolution", v["low_energy"]["resolution_ratio"])
print("PASS" if all(checks.values()) else "fail " + ",".join(k for k, v in checks.items() if not v))
PY
