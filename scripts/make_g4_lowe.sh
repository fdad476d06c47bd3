#!/usr/bin/env bash
# Extra low-energy Geant4 training showers for clic25 (e-, 90 deg, G4EmStandardPhysics option0, 1 mm cut,
# the same recipe as ../shared/data/g4-clic25): 4 files x 2500 showers, primary energies log-uniform in
# 2-100 GeV, seeds 8101-8104 (distinct from every other sample of the project). About 0.3 CPU s per shower
# on one core; each file is written atomically and an interrupted file resumes from its complete shards.
# Usage: bash scripts/make_g4_lowe.sh [out_dir=data/g4-clic25-lowe]
set -euo pipefail
out=${1:-data/g4-clic25-lowe}
mkdir -p "$out"
for k in 1 2 3 4; do
  f="$out/train_lowe_$k.h5"
  [ -f "$f" ] && continue
  OMP_NUM_THREADS=1 fastshower g4run -g clic25 --mode full --energy 2:100:log -n 2500 --seed 810$k -o "$f"
done
