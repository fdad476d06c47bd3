"""Ratio to its floor of a statistically identical 30-event candidate (issue 17 item 8).

    PYTHONPATH=src python bench/validate_small_candidate.py new 0 3 tests     # this branch
    PYTHONPATH=/path/to/old/src python bench/validate_small_candidate.py old 0 3 /path/to/old/tests

Reference: 800 toy showers (tests/test_validate.py), candidate: 30 more from the same distribution,
floor without reference2 (the reference split in halves). Prints candidate / floor per metric and seed.
"""

import sys

import numpy as np

sys.path.insert(0, sys.argv[4])
from test_validate import toy_showers  # noqa: E402

new = sys.argv[1] == "new"
if new:
    from fastshower.validate import comparison as C
else:  # before the split: metrics.compare returned a dict
    from fastshower.validate import metrics as C

names = ("sampling_fraction_mre", "profile_mse", "gan_metric_total", "mu90_rel_error", "sigma90_rel_error",
         "chi2_separation_mean", "chi2_layer_energy", "chi2_width_x", "fpd")
for seed in range(int(sys.argv[2]), int(sys.argv[3])):
    rng = np.random.default_rng(seed)
    ref, cand = toy_showers(800, rng), toy_showers(30, rng)
    res = C.compare(ref, cand, quick=True)
    rows = res.metrics if new else res["metrics"]
    ratios = [rows[n].ratio if new else rows[n]["ratio"] for n in names]
    print(seed, " ".join(f"{n}={r:.2f}" for n, r in zip(names, ratios)), flush=True)
