#!/bin/bash
# Session 8 selection (docs/training.md "Session 8"): finalize both candidates after their campaigns stopped, print the rule check.
cd "$(dirname "$0")/../.."
for c in g4lowe g4lowe_ld; do
  PYTHONPATH=src OMP_NUM_THREADS=1 .venv/bin/python campaigns/conv2d_g1/finalize.py --folder campaigns/conv2d_g1_$c \
    --run-dir runs/campaign_conv2d_g1_$c --last 4 --response by-energy --calibration-events 4000 \
    --low-energy-validation data/g4-clic25-lowe/validation/validation_lowe.h5 --baseline conv2d_g1 \
    --out runs/final/s8_$c > runs/final/s8_$c.log 2>&1 &
done
wait
python3 - <<'PY'
import json
for c in ("g4lowe", "g4lowe_ld"):
    d = json.load(open(f"runs/final/s8_{c}.finalize.json"))
    a, b = d["average"], d["baseline"]
    lo, blo = a["low_energy"], b["low_energy"]
    checks = {"a_lowE_spread": lo["spread_distance"] < blo["spread_distance"],
              "a_lowE_profile": lo["profile_mse"] < blo["profile_mse"],
              "b_profile": a["profile_mse"] <= 1e-5, "b_sf": a["sampling_fraction_error"] <= 0.02,
              "c_spread": a["spread_distance"] <= 2 * 1.13}
    print(c, d["averaged_from"][0], d["averaged_from"][-1], "| profile", a["profile_mse"], "sf", a["sampling_fraction_error"],
          "spread", a["spread_distance"], "| lowE profile", lo["profile_mse"], "lowE spread", lo["spread_distance"],
          "| baseline: profile", b["profile_mse"], "sf", b["sampling_fraction_error"], "spread", b["spread_distance"],
          "lowE profile", blo["profile_mse"], "lowE spread", blo["spread_distance"],
          "|", "PASS" if all(checks.values()) else "fail " + ",".join(k for k, v in checks.items() if not v))
PY
