#!/bin/bash
# Session 13 check (docs/training.md "Session 13"), written before the candidate was finalized or evaluated on the
# fixed-energy test samples. The only goal of issue 15 still missed is the width chi2 at 10 GeV (0.132 against untuned
# GFlash's 0.109). Looked at on low-energy training showers only (train_lowe_1, 8-12.5 GeV): the shipped generator's
# early layers share their energy between the largest cell and the others too alike from shower to shower (layer 5:
# IQR of logit(energy outside the largest cell / layer) 0.26 against Geant4's 0.73; layer 0: generated widths 0.7-1.9 mm
# where Geant4's are 0 or 5-11 mm). The new step is finalize.py --peak by-energy (calibrate_peak_by_energy: per layer
# the median and spread of that logit over layers of two cells or more, in bins of ln E, on the training showers), after
# the lateral calibration. The library version, fitted on train_lowe_1 and measured on train_lowe_2 (not used in the
# fit): mean width separation over the layers 0.158 -> 0.146 (2-5 GeV), 0.147 -> 0.136 (8-12.5), 0.046 -> 0.044 (30-100).
# Candidate `peak`: the shipped generator (session 12) re-calibrated on the same 4000 + 4000 training showers: layers,
# lateral, peak, hits, then response and resolution by energy. It replaces the shipped generator (baseline) when:
#   a. low-energy sample (1000, 2-100 GeV): width separation below the baseline's; profile MSE and hits separation at
#      most 1.1 x the baseline's; spread distance at most 1.05 x the baseline's
#   b. 2-500 GeV validation: profile MSE at most 1.1 x the baseline's, sampling-fraction error <= 0.02, width
#      separation at most the baseline's
#   c. resolution: within x/1.2 of Geant4's in the 4 low-energy slices and the 7 lower validation slices
cd "$(dirname "$0")/../.."
mkdir -p runs/final
out=runs/final/s13_peak
[ -f $out.finalize.json ] || PYTHONPATH=src OMP_NUM_THREADS=1 .venv/bin/python campaigns/conv2d_g1/finalize.py \
  --folder campaigns/conv2d_g1_g4lowe_ld --generator src/fastshower/weights/conv2d_g1 --symmetry keep \
  --out $out --layers by-energy --lateral by-energy --peak by-energy --hits by-energy \
  --response by-energy --resolution by-energy --calibration-events 4000 \
  --calibration-per-source --low-energy-validation data/g4-clic25-lowe/validation/validation_lowe.h5 \
  --baseline conv2d_g1 > $out.log 2>&1
python3 campaigns/conv2d_g1/candidate_checks.py $out.finalize.json peak
