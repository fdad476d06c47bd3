"""Physics validation: observables and metrics on hand-made showers with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import linalg, stats

from fastshower.geometry import load_geometry
from fastshower.showers import ShowerSet
from fastshower.validate import comparison as C
from fastshower.validate import metrics as M
from fastshower.validate import observables as ob


def toy_showers(n: int, rng: np.random.Generator, geometry: str = "clic25", scale: float = 1.0,
                lateral_sigma_cells: float = 1.6, energy_gev=(2.0, 500.0)) -> ShowerSet:
    """Toy EM showers: gamma-shaped depth profile (fluctuating shape), Gaussian lateral profile,
    gamma-distributed cell fluctuations, active energy = 0.02 x primary energy x ``scale``."""
    g = load_geometry(geometry)
    a_dim, b_dim, nz = g.shape
    e = rng.uniform(*energy_gev, n)
    u = np.arange(a_dim) - (a_dim - 1) / 2 if g.kind == "cartesian" else np.arange(a_dim) + 0.5
    v = np.arange(b_dim) - (b_dim - 1) / 2
    z = np.arange(nz) + 0.5
    shape = 3 + 0.5 * np.log(e)[:, None] + rng.normal(0, 0.3, (n, 1))
    depth = z[None] ** (shape - 1) * np.exp(-0.5 * z[None])
    depth /= depth.sum(1, keepdims=True)
    if g.kind == "cartesian":
        lateral = np.exp(-0.5 * (u[:, None] ** 2 + v[None] ** 2) / lateral_sigma_cells ** 2)
    else:
        lateral = np.repeat(np.exp(-u / lateral_sigma_cells)[:, None], b_dim, axis=1)
    lateral /= lateral.sum()
    mean = 0.02 * e[:, None, None, None] * lateral[None, :, :, None] * depth[:, None, None, :]
    showers = rng.gamma(4.0, mean / 4.0 + 1e-12) * scale
    return ShowerSet(showers.astype(np.float32), e, np.full(n, math.pi / 2), g.name)


def widen_by_one_cell(s: ShowerSet) -> ShowerSet:
    """Spread each cell's energy over it and its 4 lateral neighbours (energy kept inside the grid)."""
    x = s.showers
    out = x * 0.2
    for axis in (1, 2):
        for shift in (1, -1):
            out = out + 0.2 * np.roll(x, shift, axis=axis)
    return ShowerSet(out, s.primary_energy, s.incident_angle, s.geometry)


def scaled(s: ShowerSet, factor: float) -> ShowerSet:
    return ShowerSet(s.showers * factor, s.primary_energy, s.incident_angle, s.geometry)


# ------------------------------------------------------------------ observables

def test_moments_of_single_and_two_cells():
    s = np.zeros((2, 25, 25, 25), np.float32)
    s[0, 3, 7, 11] = 1.0
    s[1, 4, 7, 11] = s[1, 6, 7, 11] = 2.0
    m = ob.profile_moments(ob.axis_profiles(s))
    assert m["m1_x"] == pytest.approx([3, 5]) and m["m1_y"] == pytest.approx([7, 7])
    assert m["m1_z"] == pytest.approx([11, 11])
    assert m["m2_x"] == pytest.approx([0, 1]) and m["m2_z"] == pytest.approx([0, 0], abs=1e-12)


def test_hits_sparsity_and_shower_max():
    s = np.zeros((1, 25, 25, 25), np.float32)
    s[0, 12, 12, :5] = [1e-4, 3e-4, 1.0, 0.5, 0.0]
    assert ob.hit_count(s)[0] == 3  # above 2e-4 GeV
    assert ob.sparsity(s)[0] == pytest.approx(1 - 4 / 25 ** 3)
    assert ob.shower_max_layer(ob.axis_profiles(s)["z"])[0] == 2


@pytest.mark.parametrize("theta_deg", [62.0, 90.0, 118.0])
def test_measured_angle_recovers_a_tilted_axis(theta_deg):
    g = load_geometry("clic51")
    depth = g.layer_centres_mm()
    y = 2.0 + depth / math.tan(math.radians(theta_deg))  # y(depth) = y0 + depth cot(theta), in the y-z plane
    _, yc = g.cell_centres_mm()
    s = np.zeros((1, *g.shape), np.float32)
    for layer, yl in enumerate(y):  # split each layer's energy between the two cells around y (exact barycentre)
        j = np.searchsorted(yc, yl) - 1
        f = (yl - yc[j]) / (yc[j + 1] - yc[j])
        s[0, 25, j, layer], s[0, 25, j + 1, layer] = 1 - f, f
    obs = ob.event_observables(s, np.array([100.0]), g)
    assert math.degrees(obs["measured_angle"][0]) == pytest.approx(theta_deg, abs=0.05)
    assert obs["centre_x"][0] == pytest.approx(np.zeros(25), abs=1e-9)


def test_cylindrical_features_match_calochallenge_formulas(rng):
    """Our (n_r, n_alpha, layer) features equal CaloChallenge HighLevelFeatures on its flattened layout."""
    g = load_geometry("par04_ds2")
    s = toy_showers(20, rng, "par04_ds2", energy_gev=(10, 100)).showers
    s[:, :, :3] *= rng.uniform(0.5, 2.0, size=(20, 1, 3, 1)).astype(np.float32)  # break the symmetry in alpha
    n_r, n_alpha, n_layers = g.shape
    r_edges = np.asarray(g.r_edges_mm)
    r_mid = (r_edges[:-1] + r_edges[1:]) / 2
    alpha_mid = (np.linspace(-math.pi, math.pi, n_alpha + 1)[:-1] + np.linspace(-math.pi, math.pi, n_alpha + 1)[1:]) / 2
    r_list = np.tile(r_mid, n_alpha)  # XMLHandler.fill_r_a_lists: alpha outer, r inner
    a_list = np.repeat(alpha_mid, n_r)
    eta, phi = r_list * np.cos(a_list), r_list * np.sin(a_list)
    data = s.transpose(0, 3, 2, 1).reshape(20, n_layers, n_alpha * n_r).astype(np.float64)
    ours = ob.event_observables(s, np.full(20, 50.0), g)
    for layer in (0, 10, 30):
        e = data[:, layer]
        ec_eta = (eta * e).sum(-1) / (e.sum(-1) + 1e-16)
        w_eta = np.sqrt(np.clip((eta ** 2 * e).sum(-1) / (e.sum(-1) + 1e-16) - ec_eta ** 2, 0, None))
        ec_phi = (phi * e).sum(-1) / (e.sum(-1) + 1e-16)
        ec_r = (r_list * e).sum(-1) / (e.sum(-1) + 1e-16)
        assert ours["centre_x"][:, layer] == pytest.approx(ec_eta, rel=1e-6, abs=1e-9)
        assert ours["width_x"][:, layer] == pytest.approx(w_eta, rel=1e-6)
        assert ours["centre_y"][:, layer] == pytest.approx(ec_phi, rel=1e-6, abs=1e-9)
        assert ours["centre_r"][:, layer] == pytest.approx(ec_r, rel=1e-6)
        assert ours["layer_sparsity"][:, layer] == pytest.approx(1 - (e > 0).mean(-1))


# ------------------------------------------------------------------ metrics with known answers

@pytest.fixture(scope="module")
def toys():
    rng = np.random.default_rng(7)
    return {"ref": toy_showers(1500, rng), "ref2": toy_showers(1500, rng)}


def test_identical_sets_have_zero_distance(toys):
    r = toys["ref"]
    assert M.sampling_fraction_error(r, r) == 0.0
    assert M.profile_mse(r, r) == 0.0
    ref = C.Sample.from_set(r, load_geometry("clic25"), 0.0)
    bins = M.condition_bins(r.primary_energy, r.incident_angle, r.primary_energy, r.incident_angle,
                            M.default_energy_bins(load_geometry("clic25")))
    gm = M.gan_optimisation_metric(ref.obs, ref.obs, bins)
    assert gm["total"] == 0.0


def test_energy_scale_is_seen_by_sampling_fraction_not_by_shapes(toys):
    r, r2 = toys["ref"], toys["ref2"]
    floor = M.sampling_fraction_error(r, r2)
    assert M.sampling_fraction_error(r, scaled(r, 0.95)) == pytest.approx(0.05, rel=1e-5)
    assert M.sampling_fraction_error(r, scaled(r2, 0.95)) > 5 * floor
    assert M.profile_mse(r, scaled(r, 0.95)) < 1e-12  # sum-normalised profiles ignore the scale
    geo = load_geometry("clic25")
    a, b = C.Sample.from_set(r, geo, 0.0), C.Sample.from_set(scaled(r, 0.95), geo, 0.0)
    bins = M.condition_bins(r.primary_energy, r.incident_angle, r.primary_energy, r.incident_angle,
                            M.default_energy_bins(geo))
    gm = M.gan_optimisation_metric(a.obs, b.obs, bins)
    assert gm["profiles"] == pytest.approx(0.05, rel=1e-4)
    assert gm["moments"] < 1e-5
    assert gm["total"] == pytest.approx(gm["moments"] + gm["profiles"] + gm["angle"])  # no double count


def test_widened_showers_are_seen_by_profile_mse(toys):
    r, r2 = toys["ref"], toys["ref2"]
    floor = M.profile_mse(r, r2)
    assert M.profile_mse(r, widen_by_one_cell(r2)) > 20 * floor
    assert M.profile_mse(r, r2) == pytest.approx(M.profile_mse(r2, r), rel=1e-9)  # symmetric


def test_profile_metrics_are_fast_for_2k_showers(rng):
    import time

    r, c = toy_showers(2000, rng), toy_showers(2000, rng)
    t = time.perf_counter()
    M.profile_mse(r, c)
    M.sampling_fraction_error(r, c)
    assert time.perf_counter() - t < 2.0  # < 1 s each on an idle core; the suite's machine is shared


def test_mu90_sigma90_of_a_gaussian():
    x = np.random.default_rng(3).normal(1.0, 0.1, 400_000)
    mu, sig = M.mu90_sigma90(x)
    z = stats.norm.ppf(0.95)  # the smallest 90 % interval of a Gaussian is mean +- 1.645 sigma
    expected = 0.1 * math.sqrt(1 - 2 * z * stats.norm.pdf(z) / 0.9)
    assert mu == pytest.approx(1.0, abs=1e-3)
    assert sig == pytest.approx(expected, rel=0.01)
    assert sig < 0.1 * 0.8  # the tails are cut: well below the full RMS


def test_mu90_ignores_a_far_tail():
    x = np.concatenate([np.full(95, 1.0), np.full(5, 100.0)])
    assert M.mu90_sigma90(x) == (1.0, 0.0)


def test_separation_power_limits_and_symmetry(rng):
    e = np.linspace(-4, 4, 41)
    a, b = np.histogram(rng.normal(0, 1, 5000), e)[0], np.histogram(rng.normal(0.5, 1, 5000), e)[0]
    assert M.separation_power(a, a) == 0.0
    assert M.separation_power(a, b) == pytest.approx(M.separation_power(b, a))
    assert 0.02 < M.separation_power(a, b) < 0.2
    assert M.separation_power([1, 0], [0, 1]) == pytest.approx(1.0)
    assert M.separation_power([0, 0], [0, 3]) == 1.0


def test_frechet_distance_matches_jetnet_sqrtm_formula(rng):
    a = rng.normal(size=(2000, 12))
    b = rng.normal(size=(2000, 12)) @ rng.normal(size=(12, 12)) * 0.3 + 0.2
    mu1, mu2, c1, c2 = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(c1.dot(c2)).real  # jetnet _calculate_frechet_distance
    d = mu1 - mu2
    jetnet = d.dot(d) + np.trace(c1) + np.trace(c2) - 2 * np.trace(covmean)
    assert M.frechet_distance(mu1, c1, mu2, c2) == pytest.approx(jetnet, rel=1e-8)
    # one dimension: (mu1 - mu2)^2 + (s1 - s2)^2
    assert M.frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([0.0]), np.array([[1.0]])) == \
        pytest.approx(2.0)


def test_fpd_and_kpd_separate_a_shift_from_the_floor(rng):
    x, y = rng.normal(size=(3000, 5)), rng.normal(size=(3000, 5))
    z = rng.normal(size=(3000, 5)) + np.array([0.3, 0, 0, 0, 0])
    kw = dict(min_samples=1000, max_samples=3000, num_batches=5, num_points=4)
    floor, _ = M.frechet_physics_distance(x, y, **kw)
    shifted, _ = M.frechet_physics_distance(x, z, **kw)
    assert floor < 5e-3 and shifted > 5 * floor
    kfloor, kerr = M.kernel_physics_distance(x, y, num_batches=5, batch_size=1000)
    kshift, _ = M.kernel_physics_distance(x, z, num_batches=5, batch_size=1000)
    assert abs(kfloor) < 5 * kerr + 1e-4 and kshift > 10 * abs(kfloor)


def test_unbiased_mmd_matches_the_explicit_sum(rng):
    x, y = rng.normal(size=(30, 4)), rng.normal(size=(25, 4)) + 0.5
    k = lambda a, b: (a @ b / 4 + 1) ** 4  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(30) for j in range(30) if i != j) / (30 * 29)
    yy = sum(k(y[i], y[j]) for i in range(25) for j in range(25) if i != j) / (25 * 24)
    xy = sum(k(x[i], y[j]) for i in range(30) for j in range(25)) / (30 * 25)
    assert M.mmd_poly_unbiased(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-9)
    assert M.mmd_poly_unbiased(x, y) == pytest.approx(M.mmd_poly_unbiased(y, x), rel=1e-9)


def test_classifier_auc_is_half_for_one_distribution_and_analytic_for_a_shift(rng):
    from fastshower.validate.classifier import classifier_test

    x, y = rng.normal(size=(2000, 6)).astype(np.float32), rng.normal(size=(2000, 6)).astype(np.float32)
    same = classifier_test(x, y, seeds=(0, 1), hidden=(32,), max_epochs=10)
    assert abs(same["auc_mean"] - 0.5) < 0.05 and same["jsd_mean"] < 0.03
    z = y.copy()
    z[:, 0] += 1.0  # a unit shift in one feature: the best possible AUC is Phi(1 / sqrt 2) = 0.760
    shifted = classifier_test(x, z, seeds=(0,), hidden=(32,), max_epochs=10)
    assert shifted["auc_mean"] == pytest.approx(stats.norm.cdf(1 / math.sqrt(2)), abs=0.04)


def test_ssim_sees_a_halved_energy_scale_but_not_a_widening(toys):
    """SSIM falls for showers of half the energy, and (a known weakness) rises for smoother, widened ones."""
    geo = load_geometry("clic25")
    r, r2 = toys["ref"], toys["ref2"]
    bins = M.condition_bins(r.primary_energy, r.incident_angle, r2.primary_energy, r2.incident_angle,
                            M.default_energy_bins(geo))

    def ssim(c):
        return M.ssim_vs_data_range(r.showers, c.showers, bins, np.random.default_rng(0), data_ranges=(1.0, 1e-4),
                                    max_pairs_per_bin=8)

    floor, half, wide = ssim(r2), ssim(scaled(r2, 0.5)), ssim(widen_by_one_cell(r2))
    assert floor[1.0][0] > floor[1e-4][0]  # a small data range L makes SSIM strict
    assert half[1e-4][0] < floor[1e-4][0] - 0.08
    assert wide[1e-4][0] > floor[1e-4][0]


def test_compare_floor_is_small_and_degraded_copy_is_detected(toys):
    r, r2 = toys["ref"], toys["ref2"]
    bad = widen_by_one_cell(scaled(toy_showers(1500, np.random.default_rng(99)), 0.95))
    res = C.compare(r, bad, r2, quick=True)
    m = res.metrics
    assert res.floor_source.startswith("independent")
    assert m["sampling_fraction_mre"].floor < 0.01
    assert m["sampling_fraction_mre"].candidate == pytest.approx(0.05, abs=0.01)
    assert m["mu90_rel_error"].candidate > 5 * m["mu90_rel_error"].floor
    for name in ("profile_mse", "chi2_width_x", "chi2_centre_r", "chi2_energy_ratio_cc", "fpd", "kpd"):
        assert m[name].candidate > 5 * m[name].floor, name
    assert m["chi2_separation_mean"].floor < 0.05  # the floor is statistical noise


def test_compare_splits_the_reference_without_reference2(toys):
    res = C.compare(toys["ref"], toys["ref2"][:200], quick=True, energy_bins=[2, 250, 500])
    assert res.n_reference == 750 and res.n_reference2 == 750 and res.n_candidate == 200
    assert "halves" in res.floor_source
    big = C.compare(toys["ref"][:600], toys["ref2"], quick=True, energy_bins=[2, 250, 500])
    assert big.n_candidate == 300 and big.n_floor_subsamples == 1 and "subsampled" in big.floor_source
    few = toys["ref2"][:15]  # fewer than 10 events in every energy bin: one bin of all events
    sf_ref = np.mean(toys["ref"].deposited_energy / toys["ref"].primary_energy)
    sf_few = np.mean(few.deposited_energy / few.primary_energy)
    assert M.sampling_fraction_error(toys["ref"], few) == pytest.approx(abs(sf_ref - sf_few) / sf_ref)
    with pytest.raises(ValueError, match="geometry"):
        C.compare(toys["ref"], toy_showers(50, np.random.default_rng(0), "par04_ds2"), quick=True)
