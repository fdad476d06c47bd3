"""The GFlash reference simulator: physics (response, shower maximum, resolution, Moliere radius,
tilt, photons), reproducibility, geometries and threshold. Seeded; numbers measured with
``tests/test_gflash.py`` itself (see docs/gflash.md)."""

import math

import numpy as np
import pytest
from scipy import integrate

from fastshower.geometry import PRESETS, Geometry, LayerGroup
from fastshower.simulate.gflash import (ring_fractions, rectangle_fractions, simulate, simulate_showers,
                                        stack_parameters)

NORMAL = math.pi / 2
CLIC = PRESETS["clic25"]


def _wide_geometry() -> Geometry:
    """The clic W/Si layers (17 thin, then thick ones) extended to 60 layers (62 X0) deep, read out
    in rings up to 100 Moliere radii: a contained shower loses < 0.1% laterally, nothing in depth."""
    kw = dict(name="wide_wsi", kind="cylindrical", shape=(6, 1, 60), sampling_fraction=0.02,
              energy_range_gev=(1.0, 1000.0),
              layers=(LayerGroup(count=17, absorber="W", absorber_thickness_mm=2.1, active="Si",
                                 active_thickness_mm=0.5, gap_thickness_mm=1.8),
                      LayerGroup(count=43, absorber="W", absorber_thickness_mm=4.2, active="Si",
                                 active_thickness_mm=0.5, gap_thickness_mm=2.1)))
    rm = Geometry(r_edges_mm=tuple(range(7)), **kw).moliere_radius_mm
    return Geometry(r_edges_mm=tuple(np.array([0, 0.5, 1, 2, 5, 20, 100]) * rm), **kw)


WIDE = _wide_geometry()


def _showers(geometry, energy, n, rng, angle=NORMAL, **kw):
    return simulate_showers(geometry, np.full(n, float(energy)), np.full(n, float(angle)), rng, **kw)


def test_rectangle_primitive_matches_numerical_integral():
    radius = 7.0  # mm
    density = lambda y, x: radius**2 / (math.pi * (x * x + y * y + radius**2) ** 2)  # noqa: E731
    x_edges = np.array([-3.0, 2.0, 11.0])
    y_edges = np.array([-20.0, -1.0, 4.0])
    one = np.array([[radius]])
    frac = rectangle_fractions(x_edges, y_edges[None, :, None], one, one, np.ones((1, 1)))[0, :, :, 0]
    for i in range(2):
        for j in range(2):
            ref = integrate.dblquad(density, x_edges[i], x_edges[i + 1], y_edges[j], y_edges[j + 1])[0]
            assert frac[i, j] == pytest.approx(ref, rel=1e-4, abs=1e-7)
    # a huge square holds the whole profile
    big = np.array([-1e4, 1e4])
    assert rectangle_fractions(big, big[None, :, None], one, 3 * one, np.full((1, 1), 0.5)).sum() == \
        pytest.approx(1.0, abs=1e-5)
    assert ring_fractions(np.array([0.0, radius, 1e9]), np.array(radius)) == pytest.approx([0.5, 0.5])


def test_stack_parameters_from_materials():
    st = stack_parameters(CLIC)
    # W/Si with gaps: X0 between W (3.5 mm) and the diluted stack, Z close to tungsten's
    assert 3.5 < st.radiation_length_mm < 9.0 and 9.3 < st.moliere_radius_mm < 25
    assert 70 < st.z_eff < 74 and 0.6 < st.e_hat < 0.8
    # sampling term 2.7% sqrt(0.5 mm / f_mip): thick layers (half the mip fraction) sample worse
    assert st.layer_sampling_term[-1] / st.layer_sampling_term[0] == pytest.approx(math.sqrt(2), rel=0.02)
    assert stack_parameters(PRESETS["par04_ds2"]).radiation_length_mm < st.radiation_length_mm  # no gaps


@pytest.mark.parametrize("energy", [10.0, 100.0, 500.0])
def test_response_linear_for_contained_showers(energy, rng):
    tot = _showers(WIDE, energy, 300, rng).sum(axis=(1, 2, 3), dtype=np.float64)
    # measured 1.001 / 1.000 / 1.000 (400 events, statistical error <= 0.2%)
    assert tot.mean() / energy / WIDE.sampling_fraction == pytest.approx(1.0, abs=0.02)


def test_ninety_percent_inside_one_moliere_radius(rng):
    s = _showers(WIDE, 50.0, 200, rng)
    inside = s[:, :2].sum(axis=(1, 2, 3)) / s.sum(axis=(1, 2, 3))  # rings 0-0.5 and 0.5-1 R_M
    assert inside.mean() == pytest.approx(0.90, abs=0.03)  # measured 0.891 (50 GeV), 0.883 (500 GeV)


def test_shower_maximum_grows_like_log_energy(rng):
    st = stack_parameters(CLIC)
    centres_x0 = 0.5 * (st.layer_edges_x0[1:] + st.layer_edges_x0[:-1])
    log_e, t_max = [], []
    for energy in (10.0, 30.0, 100.0, 300.0):
        density = _showers(CLIC, energy, 200, rng).sum(axis=(0, 1, 2)) / CLIC.layer_radiation_lengths()
        i = int(np.argmax(density))
        y0, y1, y2 = density[i - 1:i + 2]
        t_max.append(centres_x0[i] + 0.5 * (y0 - y2) / (y0 - 2 * y1 + y2) * (centres_x0[i + 1] - centres_x0[i]))
        log_e.append(math.log(energy))
    slope = np.polyfit(log_e, t_max, 1)[0]
    assert slope == pytest.approx(1.0, abs=0.15)  # X0 per e-fold of energy; measured 0.92 (300 events each)
    assert 5.0 < t_max[0] < 7.0  # 10 GeV in W/Si: ln(E/E_c) - 0.8 - sampling shift; measured 6.1 X0


def test_energy_resolution_stochastic_term(rng):
    energies = np.array([10.0, 30.0, 100.0])
    c2 = stack_parameters(CLIC).layer_sampling_term ** 2
    rel, sampling_only = [], []
    for energy in energies:
        s = _showers(CLIC, energy, 1000, rng)
        tot = s.sum(axis=(1, 2, 3), dtype=np.float64)
        rel.append(tot.std() / tot.mean())
        layer_share = s.sum(axis=(0, 1, 2), dtype=np.float64) / s.sum(dtype=np.float64)
        # the layers' sampling terms 2.7% sqrt(d_Si / f_mip), 0.095 (thin) and 0.133 (thick), weighted
        # with the energy share of the layers
        sampling_only.append(np.sum(layer_share * c2) / energy)
    design = np.vstack([1 / energies, np.ones_like(energies)]).T
    a2, b2 = np.linalg.lstsq(design, np.square(rel), rcond=None)[0]
    a2_expected = np.linalg.lstsq(design, sampling_only, rcond=None)[0][0]
    assert math.sqrt(a2) == pytest.approx(math.sqrt(a2_expected), rel=0.15)  # 0.105 vs 0.104 (2000 events)
    assert 0.09 < math.sqrt(a2) < 0.25
    assert 0 <= b2 < 0.03**2  # constant term from leakage fluctuations


@pytest.mark.parametrize("angle_deg", [70.0, 110.0])
def test_tilted_barycentre_moves_by_pitch_cot_theta(angle_deg, rng):
    g = PRESETS["clic51"]
    theta = math.radians(angle_deg)
    s = _showers(g, 100.0, 150, rng, angle=theta)
    per_y_layer = s.sum(axis=(0, 1))
    y = g.cell_centres_mm()[1]
    barycentre = (per_y_layer * y[:, None]).sum(0) / per_y_layer.sum(0)
    thin = slice(1, 16)  # 4.4 mm pitch, where the energy is
    slope = np.polyfit(g.layer_centres_mm()[thin], barycentre[thin], 1)[0]
    assert slope * 4.4 == pytest.approx(4.4 / math.tan(theta), abs=0.1)  # mm per layer; 1.60 expected
    assert math.pi / 2 - math.atan(slope) == pytest.approx(theta, abs=math.radians(1.5))  # Keras-style angle
    # x stays centred; the shower stays inside the 51-wide grid
    x_bary = (s.sum(axis=(0, 2, 3)) * g.cell_centres_mm()[0]).sum() / s.sum()
    assert abs(x_bary) < 0.3


def test_photons_start_later_by_nine_sevenths_x0(rng):
    st = stack_parameters(WIDE)
    centres = 0.5 * (st.layer_edges_x0[1:] + st.layer_edges_x0[:-1])
    cog = {}
    for particle in ("e-", "gamma"):
        per_layer = _showers(WIDE, 50.0, 300, rng, particle=particle).sum(axis=(1, 2))
        cog[particle] = ((per_layer * centres).sum(1) / per_layer.sum(1)).mean()
    assert cog["gamma"] - cog["e-"] == pytest.approx(9 / 7, abs=0.25)  # measured 1.36


def test_seeded_reproducible():
    e, a = np.array([20.0, 200.0, 400.0]), np.full(3, NORMAL)
    one = simulate_showers(PRESETS["clic25"], e, a, np.random.default_rng(5))
    assert np.array_equal(one, simulate_showers(PRESETS["clic25"], e, a, np.random.default_rng(5)))
    assert not np.array_equal(one, simulate_showers(PRESETS["clic25"], e, a, np.random.default_rng(6)))
    assert one.dtype == np.float32 and one.shape == (3, 25, 25, 25)
    # outside the fitted range of the parametrisation (y = E/E_c < 30) it stays finite
    edge = simulate_showers(PRESETS["clic25"], np.array([0.05, 0.2, 1000.0]), np.full(3, NORMAL), np.random.default_rng(0))
    assert np.all(np.isfinite(edge)) and edge.min() >= 0 and np.all(edge.sum(axis=(1, 2, 3)) > 0)


def test_par04_cylindrical_shape_and_normalisation(rng):
    g = PRESETS["par04_ds2"]
    s = _showers(g, 100.0, 200, rng)
    assert s.shape == (200, 9, 16, 45) and s.dtype == np.float32
    response = s.sum(axis=(1, 2, 3), dtype=np.float64).mean() / 100.0 / g.sampling_fraction
    assert 0.97 < response < 1.0  # r < 41.85 mm = 3.8 R_M: ~1.2% lateral leakage; measured 0.988
    per_alpha = s.sum(axis=(0, 1, 3))
    assert per_alpha.std() / per_alpha.mean() < 0.03  # uniform in alpha around the axis


def test_readout_threshold_zeroes_small_cells():
    e, a = np.full(20, 50.0), np.full(20, NORMAL)
    low = simulate_showers(CLIC, e, a, np.random.default_rng(3))
    high_geo = CLIC.model_copy(update={"readout_threshold_gev": 3e-4})
    high = simulate_showers(high_geo, e, a, np.random.default_rng(3))
    assert low[low > 0].min() >= CLIC.readout_threshold_gev
    assert high[high > 0].min() >= 3e-4
    # about one spot's active energy (0.02 x 12 MeV at 50 GeV): removes about half of the hits (measured 0.53)
    assert 0.3 < (high > 0).sum() / (low > 0).sum() < 0.7
    kept = low >= 3e-4
    assert np.array_equal(high[kept], low[kept]) and not high[~kept].any()


def test_bad_input():
    with pytest.raises(ValueError, match="particle"):
        simulate_showers(CLIC, [10.0], [NORMAL], np.random.default_rng(0), particle="pi+")
    with pytest.raises(ValueError, match="normal incidence"):
        simulate_showers(PRESETS["par04_ds2"], [10.0], [1.2], np.random.default_rng(0))
    with pytest.raises(ValueError, match="positive"):
        simulate_showers(CLIC, [-1.0], [NORMAL], np.random.default_rng(0))
    with pytest.raises(ValueError, match="outside the allowed range"):
        simulate(PRESETS["clic25"], energy="1:600", n=2)


def test_simulate_conditions_and_provenance():
    out = simulate(PRESETS["clic51"], energy="10:100", angle_deg="60:120", n=30, seed=4, batch_size=7)
    assert out.showers.shape == (30, 51, 51, 25) and out.geometry.name == "clic51"
    assert out.primary_energy.min() >= 10 and out.primary_energy.max() <= 100
    assert np.degrees(out.incident_angle).min() >= 60 and np.degrees(out.incident_angle).max() <= 120
    assert out.attrs["simulator"] == "gflash" and out.attrs["seed"] == 4 and out.attrs["particle"] == "e-"
    again = simulate(PRESETS["clic51"], energy="10:100", angle_deg="60:120", n=30, seed=4, batch_size=7)
    assert np.array_equal(out.showers, again.showers) and np.array_equal(out.primary_energy, again.primary_energy)
