#!/usr/bin/env bash
# Fixed-energy Geant4 test samples for clic25 (e-, 90 deg, G4EmStandardPhysics option0, 1 mm cut, the same
# recipe as ../shared/data/g4-clic25), the samples campaigns/conv2d_g1/evaluate.sh and bench/gflash_*.py
# validate against:
#   clic25_e{10,50,100,300}_a.h5  reference samples, 500/300/300/200 showers, seeds 8310/8350/8400/8430
#   clic25_e{10,50,100,300}_b.h5  the floor samples (a second Geant4 sample), same counts, seeds 8510/8550/8600/8630
# No seed is shared with the training, validation or low-energy samples of the project. Measured (session 9, two
# jobs side by side on the 2-core machine): 0.06 / 0.27 / 0.57 / 1.6 CPU s per shower in the event loops at
# 10 / 50 / 100 / 300 GeV, 20 CPU-min in all; each file is written atomically and skipped when present.
# Usage: bash scripts/make_g4_samples.sh [out_dir=data/g4samples] [a|b|ab]
set -euo pipefail
out=${1:-data/g4samples}
which=${2:-ab}
mkdir -p "$out"
simulate() { # energy n seed file
  [ -f "$4" ] || OMP_NUM_THREADS=1 fastshower g4run -g clic25 --mode full --energy "$1" -n "$2" --seed "$3" -o "$4"
}
for s in a b; do
  [[ $which == *$s* ]] || continue
  base=$([ $s = a ] && echo 8300 || echo 8500)
  simulate 10 500 $((base + 10)) "$out/clic25_e10_$s.h5"
  simulate 50 300 $((base + 50)) "$out/clic25_e50_$s.h5"
  simulate 100 300 $((base + 100)) "$out/clic25_e100_$s.h5"
  simulate 300 200 $((base + 130)) "$out/clic25_e300_$s.h5"
done
