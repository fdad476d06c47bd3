"""Validation statistics (issue 17 item 8): the floor at the candidate's sample size, minimum sizes,
non-overlapping conditions; and the verdict's key numbers against their floor."""

from __future__ import annotations

import numpy as np
import pytest
from test_validate import scaled, toy_showers, widen_by_one_cell

from fastshower.geometry import load_geometry
from fastshower.validate import comparison as C
from fastshower.validate.binning import default_energy_bins
from fastshower.validate.verdict import Column, auc_floor, build_verdict, mark


def test_a_small_identical_candidate_scores_about_its_floor():
    """30 events from the reference's own distribution: the distribution metrics sit near 1x their
    floor (main scored this 5-9x: its floor came from two 400-event halves)."""
    rng = np.random.default_rng(0)
    ref, cand = toy_showers(800, rng), toy_showers(30, rng)
    res = C.compare(ref, cand, quick=True)
    assert res.n_candidate == 30 and res.n_floor_subsamples == 5 and "30-event" in res.floor_source
    for name in ("chi2_separation_mean", "chi2_layer_energy", "chi2_width_x", "fpd"):
        assert res.metrics[name].ratio < 2.5, (name, res.metrics[name])
    for name in ("sampling_fraction_mre", "profile_mse"):
        assert res.metrics[name].ratio < 4, (name, res.metrics[name])
    assert res.metrics["chi2_width_x"].floor_error > 0  # spread over the 5 subsamples


def test_floor_subsamples_are_disjoint_and_of_the_candidate_size():
    subs = C.floor_subsamples(100, 30, seed=1)
    assert len(subs) == 3 and all(len(s) == 30 for s in subs)
    assert len(np.unique(np.concatenate(subs))) == 90
    assert len(C.floor_subsamples(1000, 30, max_subsamples=5)) == 5
    with pytest.raises(ValueError):
        C.floor_subsamples(20, 30)


def test_too_few_events_are_refused_with_one_line():
    rng = np.random.default_rng(1)
    ref = toy_showers(200, rng)
    with pytest.raises(ValueError, match=r"^too few events to validate \(candidate has 5 events, needs 20\): .* at least 20 "):
        C.compare(ref, toy_showers(5, rng), quick=True)
    with pytest.raises(ValueError, match=r"\(reference has 30 events, needs 40\).*halves"):
        C.compare(ref[:30], toy_showers(30, rng), quick=True)
    C.check_sizes(40, {"candidate": 20})  # at the minimum: accepted
    C.check_sizes(20, {"candidate": 20}, reference2=20)


def test_non_overlapping_conditions_warn():
    rng = np.random.default_rng(2)
    ref = toy_showers(200, rng, energy_gev=(2, 100))
    with pytest.warns(UserWarning, match="do not overlap.*primary energy"):
        res = C.compare(ref, toy_showers(60, rng, energy_gev=(300, 500)), quick=True)
    assert any("do not overlap" in w for w in res.warnings)


def test_verdict_passes_an_identical_sample_and_fails_a_degraded_one():
    rng = np.random.default_rng(3)
    geo = load_geometry("clic25")
    ref, same = toy_showers(600, rng), toy_showers(300, rng)
    bad = widen_by_one_cell(scaled(toy_showers(300, rng), 0.9))
    samples = {k: C.Sample.from_set(s, geo, geo.readout_threshold_gev) for k, s in
               (("ref", ref), ("same", same), ("bad", bad))}
    edges = default_energy_bins(geo)
    v = build_verdict(samples["ref"], [Column("same", samples["same"], (0.51, 300), 1e-3),
                                       Column("bad", samples["bad"], (0.97, 300), 1e-4)],
                      geo, edges, None, reference_seconds_per_shower=0.4, n_boot=40)
    same_v, bad_v = v.candidates
    for key in ("response", "resolution", "longitudinal", "lateral", "depth", "auc"):
        assert same_v.cells[key].mark == "pass", (key, same_v.cells[key])
    assert bad_v.cells["response"].difference == pytest.approx(-0.1, abs=0.01)
    for key in ("response", "lateral", "auc"):
        assert bad_v.cells[key].mark == "fail", (key, bad_v.cells[key])
    assert bad_v.speed_up == pytest.approx(4000)


def test_marks_and_auc_floor():
    assert mark(0.02, 0.01, 0.05) == "pass" and mark(0.04, 0.01, 0.05) == "close"
    assert mark(0.06, 0.01, 0.05) == "fail" and mark(None, 0.01, 0.05) == "n/a"
    # 1000 events per class -> 200 validation events: sigma = sqrt(401 / 480000) = 0.0289
    assert auc_floor(1000) == pytest.approx(np.sqrt(2 / np.pi) * 0.02890, rel=1e-3)
