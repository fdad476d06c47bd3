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
python3 campaigns/conv2d_g1/candidate_checks.py $out.finalize.json width
