#!/usr/bin/env bash
# Validate a generator (and GFlash, untuned and tuned) against the fixed-energy Geant4 samples of data/g4samples
# (made by scripts/make_g4_samples.sh; G4SAMPLES=DIR for another folder)
# (sample "a" = reference, "b" = the floor sample), with `fastshower validate`.
#   campaigns/conv2d_g1/evaluate.sh GENERATOR OUTDIR [ENERGIES...]
#   e.g. campaigns/conv2d_g1/evaluate.sh src/fastshower/weights/conv2d_g1 /tmp/eval 10 50 100 300
# Writes OUTDIR/{gan,gflash,gflash_tuned}_eE.h5 and OUTDIR/v_{gan,gflash,gflash_tuned}_eE/metrics.json; then
#   python campaigns/conv2d_g1/summarize.py OUTDIR  prints the table of docs/training.md.
set -euo pipefail
gen=$1; out=$2; shift 2
energies=${*:-10 50 100 300}
samples=${G4SAMPLES:-data/g4samples}
fs="python -m fastshower.cli"
mkdir -p "$out"
for e in $energies; do
  a=$samples/clic25_e${e}_a.h5; b=$samples/clic25_e${e}_b.h5
  [ -f "$a" ] && [ -f "$b" ] || { echo "skip $e GeV: $a or $b missing"; continue; }
  n=$(python -c "import h5py; print(len(h5py.File('$a')['primary_energy']))")
  $fs generate -m "$gen" --energy "$e" -n "$n" --seed 5 --threads 1 -o "$out/gan_e$e.h5"
  $fs validate "$a" "$out/gan_e$e.h5" --reference2 "$b" --quick --no-classifier -o "$out/v_gan_e$e"
  if [ ! -f "$out/v_gflash_e$e/metrics.json" ]; then
    $fs simulate -g clic25 --energy "$e" -n "$n" --seed 7 -o "$out/gflash_e$e.h5"
    $fs validate "$a" "$out/gflash_e$e.h5" --reference2 "$b" --quick --no-classifier -o "$out/v_gflash_e$e"
  fi
  if [ ! -f "$out/v_gflash_tuned_e$e/metrics.json" ]; then  # GFlash tuned to Geant4 (the shipped clic25_geant4)
    $fs simulate -g clic25 --energy "$e" -n "$n" --seed 7 --gflash-params clic25_geant4 -o "$out/gflash_tuned_e$e.h5"
    $fs validate "$a" "$out/gflash_tuned_e$e.h5" --reference2 "$b" --quick --no-classifier -o "$out/v_gflash_tuned_e$e"
  fi
done
