"""Response calibration of a generator (fastshower.train.calibration)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fastshower.geometry import PRESETS
from fastshower.models import registry
from fastshower.showers import ShowerSet
from fastshower.train.calibration import (
    calibrate_resolution_by_energy,
    calibrate_response,
    calibrate_response_by_energy,
    generated_energy_ratio,
    resolution_by_energy,
)


@pytest.mark.parametrize("cell_power", [1.0, 0.5])
def test_calibrated_generator_matches_the_data_response(cell_power):
    torch.manual_seed(0)
    g = registry.build_generator("conv2d_g1", width=0.125, output_activation="relu", cell_power=cell_power,
                                 output_scale=3e-3).eval()
    energy = np.linspace(10, 200, 48)
    angle = np.full(48, math.pi / 2)
    with torch.no_grad():
        cells = g(torch.as_tensor(energy, dtype=torch.float32), torch.as_tensor(angle, dtype=torch.float32),
                  g.sample_noise(48, generator=torch.Generator().manual_seed(1))).numpy()
    cells = np.where(cells < PRESETS["clic25"].readout_threshold_gev, 0.0, cells)  # what the readout keeps
    data = ShowerSet(1.25 * cells, energy, angle, PRESETS["clic25"])  # a detector that reads 25% more
    assert generated_energy_ratio(g, data, seed=1) == pytest.approx(1.25, rel=1e-3)
    before = float(g.output_scale)
    applied = calibrate_response(g, data, seed=1)
    # exactly 1.25 without a readout threshold; with it, the untrained network's many tiny cells
    # crossing the threshold add energy when the output grows (sqrt units: far more of them)
    assert applied == pytest.approx(1.25, rel=1e-3 if cell_power == 1.0 else 0.2)
    assert float(g.output_scale) == pytest.approx(before * applied ** cell_power, rel=1e-6)
    assert generated_energy_ratio(g, data, seed=1) == pytest.approx(1.0, abs=3e-3)
    assert g.config.output_scale == pytest.approx(float(g.output_scale))  # saved with the card


def test_calibration_refuses_a_linear_head():
    g = registry.build_generator("conv2d_g1", width=0.125, output_scale=3e-3).eval()
    data = ShowerSet(np.ones((2, 25, 25, 25), np.float32) * 1e-3, np.array([50.0, 60.0]),
                     np.full(2, math.pi / 2), PRESETS["clic25"])
    with pytest.raises(ValueError, match="ReLU"):
        calibrate_response(g, data)


def _relu_generator(cell_power: float = 0.5, output_scale: float = 3e-2):
    torch.manual_seed(0)
    return registry.build_generator("conv2d_g1", width=0.125, output_activation="relu", cell_power=cell_power,
                                    output_scale=output_scale).eval()


def test_calibration_by_energy_fixes_a_response_that_depends_on_energy():
    """A detector whose response is 30% above the generator's at 10 GeV falling to +0% at 300 GeV
    (linear in ln E): one number cannot fix it, the ln E polynomial does, bin by bin (up to
    cells crossing the readout threshold, few in GeV units: cell_power 1)."""
    g = _relu_generator(cell_power=1.0, output_scale=3e-3)
    rng = np.random.default_rng(3)
    energy = np.exp(rng.uniform(np.log(10), np.log(300), 160))
    angle = np.full(len(energy), math.pi / 2)
    with torch.no_grad():
        cells = g(torch.as_tensor(energy, dtype=torch.float32), torch.as_tensor(angle, dtype=torch.float32),
                  g.sample_noise(len(energy), generator=torch.Generator().manual_seed(1))).numpy()
    truth = 1.0 + 0.3 * np.log(300 / energy) / np.log(30)
    cells = np.where(cells < PRESETS["clic25"].readout_threshold_gev, 0.0, cells) * truth[:, None, None, None]
    data = ShowerSet(cells.astype(np.float32), energy, angle, PRESETS["clic25"])
    result = calibrate_response_by_energy(g, data, degree=1, n_bins=4, seed=1, max_iterations=3)
    assert max(result["ratio_before"]) > 1.2 and min(result["ratio_before"]) < 1.05
    assert np.abs(np.array(result["ratio_after"]) - 1).max() < 5e-3
    assert g.config.response_correction == pytest.approx(tuple(result["coefficients"]))
    factor = g.response_factor(torch.tensor([10.0, 300.0]))  # GeV factor (cell_power 1)
    assert factor[0].item() / factor[1].item() == pytest.approx(1.3, rel=0.05)


def test_response_correction_survives_saving_folding_and_onnx(tmp_path):
    from fastshower.infer.fold import check_fold, example_inputs
    from fastshower.infer.onnx_export import export_onnx, open_session

    g = _relu_generator()
    args = example_inputs(g, 4, seed=2)
    with torch.no_grad():
        plain = g(*args)
        g.set_response_correction([0.2, -0.1, 0.02])
        corrected = g(*args)
    u = torch.log(args[0] / 100.0)
    expected = torch.exp(0.2 - 0.1 * u + 0.02 * u**2)
    torch.testing.assert_close(corrected.sum(dim=(1, 2, 3)) / plain.sum(dim=(1, 2, 3)), expected, rtol=1e-4, atol=0)
    stem = registry.save_generator(g, tmp_path / "g").with_suffix("")
    loaded = registry.load_generator(stem)
    with torch.no_grad():
        torch.testing.assert_close(loaded(*args), corrected)
    assert check_fold(loaded)["max_rel_err"] <= 1e-5
    export_onnx(loaded, tmp_path / "g.onnx")
    got = open_session(tmp_path / "g.onnx").run(["showers"], dict(zip(("primary_energy", "incident_angle", "noise"),
                                                                        [a.numpy() for a in args])))[0]
    assert np.abs(got - corrected.numpy()).max() <= 1e-5 * corrected.abs().max().item()


def _generated(g, energy: np.ndarray, seed: int = 1) -> np.ndarray:
    angle = torch.full((len(energy),), math.pi / 2)
    with torch.no_grad():
        return g(torch.as_tensor(energy, dtype=torch.float32), angle,
                 g.sample_noise(len(energy), generator=torch.Generator().manual_seed(seed))).numpy()


def _assert_saved_and_exported_alike(g, energy: np.ndarray, expected: np.ndarray, tmp_path) -> None:
    """The saved and reloaded generator makes ``expected`` exactly, its ONNX export to 1e-5."""
    from fastshower.infer.onnx_export import export_onnx, open_session

    loaded = registry.load_generator(registry.save_generator(g, tmp_path / "g").with_suffix(""))
    np.testing.assert_array_equal(_generated(loaded, energy), expected)
    export_onnx(loaded, tmp_path / "g.onnx")
    noise = g.sample_noise(len(energy), generator=torch.Generator().manual_seed(1)).numpy()
    got = open_session(tmp_path / "g.onnx").run(["showers"], {
        "primary_energy": energy.astype(np.float32), "incident_angle": np.full(len(energy), math.pi / 2, np.float32),
        "noise": noise})[0]
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()


def test_resolution_correction_scales_the_response_around_its_centre_and_survives_saving_and_onnx(tmp_path):
    g = _relu_generator()
    energy = np.array([5.0, 20.0, 80.0, 300.0] * 4)
    plain = _generated(g, energy)
    r = plain.sum(axis=(1, 2, 3), dtype=np.float64) / energy
    u = np.log(energy / 100.0)
    centre_coefficients = np.polynomial.polynomial.polyfit(u[:4], np.log(r.reshape(4, 4).mean(axis=0)), 3)
    centre = np.exp(np.polynomial.polynomial.polyval(u, centre_coefficients))  # the mean at each energy
    g.set_resolution_correction(centre_coefficients.tolist(), [math.log(1.3), 0.1])  # s = 1.3 (E / 100 GeV)^0.1
    corrected = _generated(g, energy)
    target = centre + 1.3 * (energy / 100.0) ** 0.1 * (r - centre)
    assert (target / r > 0.25).all() and (target / r < 4).all()  # inside the factor's safety clamp
    np.testing.assert_allclose(corrected.sum(axis=(1, 2, 3), dtype=np.float64) / energy, target, rtol=2e-4)
    # one factor per shower: the shape (cell fractions) is untouched
    np.testing.assert_allclose(corrected / corrected.sum(axis=(1, 2, 3), keepdims=True),
                               plain / plain.sum(axis=(1, 2, 3), keepdims=True), rtol=2e-3, atol=1e-9)
    card = g.metadata()["preprocessing"]["resolution_correction"]
    assert card["scale"] == [math.log(1.3), 0.1]
    _assert_saved_and_exported_alike(g, energy, corrected, tmp_path)
    with pytest.raises(ValueError, match="both"):
        g.set_resolution_correction([0.0], None)
    g.set_resolution_correction(None, None)
    np.testing.assert_array_equal(_generated(g, energy), plain)


def test_calibration_by_energy_gives_the_generator_the_data_resolution():
    """Data whose response fluctuates 1.8x as much as the generator's at 5 GeV, falling to 1.0x at
    300 GeV (a detector with a worse stochastic term): the calibrated generator has the data's
    sigma90 / mu90 in every bin, its mean response and its shapes unchanged."""
    g = _relu_generator(cell_power=1.0, output_scale=3e-3)
    rng = np.random.default_rng(4)
    energy = np.exp(rng.uniform(np.log(5), np.log(300), 600))
    cells = _generated(g, energy, seed=7)
    r = cells.sum(axis=(1, 2, 3), dtype=np.float64) / energy
    widen = 1.0 + 0.8 * np.log(300 / energy) / np.log(60)
    factor = (r.mean() + widen * (r - r.mean())) / r
    data = ShowerSet((cells * factor[:, None, None, None]).astype(np.float32), energy, np.full(600, math.pi / 2),
                     PRESETS["clic25"])
    mean_before = generated_energy_ratio(g, data, seed=1)
    result = calibrate_resolution_by_energy(g, data, degree=1, n_bins=3, seed=1, min_events=150)
    before = np.array(result["data"]) / np.array(result["generator_before"])
    assert before[0] > 1.4 and before[-1] < 1.25
    np.testing.assert_allclose(result["generator_after"], result["data"], rtol=0.03)
    edges = np.array(result["bin_edges_gev"])
    check = resolution_by_energy(g, data, edges, seed=1, min_events=150)  # what the generator now does
    np.testing.assert_allclose(check["generator"], result["generator_after"], rtol=0.01)
    assert generated_energy_ratio(g, data, seed=1) == pytest.approx(mean_before, rel=5e-3)


def test_layer_correction_moves_log_layer_fractions_keeps_totals_and_survives_saving_and_onnx(tmp_path):
    from fastshower.models.conv2d import LAYER_FRACTION_FLOOR
    from fastshower.train.calibration import log_layer_fractions

    g = _relu_generator()
    energy = np.array([5.0, 20.0, 80.0, 300.0] * 8)
    plain = _generated(g, energy)
    g_plain = np.log(plain.sum(axis=(1, 2), dtype=np.float64) / plain.sum(axis=(1, 2, 3), dtype=np.float64)[:, None]
                     + LAYER_FRACTION_FLOOR)
    knots = [math.log(0.1), math.log(2.0)]  # 10 and 200 GeV
    centre = np.stack([g_plain.mean(axis=0)] * 2, axis=1)  # (layers, knots)
    target = centre + np.linspace(-0.3, 0.3, 25)[:, None]
    gain = np.full((25, 2), math.log(1.5))
    g.set_layer_correction(knots, centre.tolist(), target.tolist(), gain.tolist())
    corrected = _generated(g, energy)
    # the total and the lateral shape of each layer are kept, one factor per layer
    np.testing.assert_allclose(corrected.sum(axis=(1, 2, 3), dtype=np.float64), plain.sum(axis=(1, 2, 3)), rtol=1e-5)
    lateral = lambda x: x / np.maximum(x.sum(axis=(1, 2), keepdims=True), 1e-30)  # noqa: E731
    np.testing.assert_allclose(lateral(corrected), lateral(plain), atol=1e-5)
    # before the renormalisation the fractions are exp(target + 1.5 (g - centre)) - floor: up to one constant
    # per shower (its log), the corrected log fractions are that
    moved = np.log(np.clip(np.exp(np.minimum(target[:, 0] + 1.5 * (g_plain - centre[:, 0]), 0.0))
                           - LAYER_FRACTION_FLOOR, 0, None))
    got = np.log(corrected.sum(axis=(1, 2), dtype=np.float64) / corrected.sum(axis=(1, 2, 3))[:, None])
    busy = np.exp(g_plain) > 1e-3  # layers away from the floor and the [1/16, 16] clamp
    shift = got - moved
    for row, mask in zip(shift, busy, strict=True):
        assert np.ptp(row[mask]) < 2e-3
    assert log_layer_fractions(corrected, 0.0).std(axis=0)[busy.all(axis=0)].mean() > \
        1.3 * log_layer_fractions(plain, 0.0).std(axis=0)[busy.all(axis=0)].mean()
    card = g.metadata()["preprocessing"]["layer_correction"]
    assert card["knots"] == pytest.approx(knots) and len(card["gain"]) == 25
    _assert_saved_and_exported_alike(g, energy, corrected, tmp_path)
    with pytest.raises(ValueError, match="increasing"):
        g.set_layer_correction([1.0, 0.0], centre.tolist(), target.tolist(), gain.tolist())
    with pytest.raises(ValueError, match="25 layers"):
        g.set_layer_correction(knots, centre[:3].tolist(), target.tolist(), gain.tolist())
    g.set_layer_correction(None)
    np.testing.assert_array_equal(_generated(g, energy), plain)


def test_layer_calibration_gives_the_generator_the_data_layer_fluctuations():
    """Data whose log layer fractions fluctuate 2.5x as much as the generator's around medians
    shifted by up to +-0.3 (a collapsed GAN against Geant4): after calibration the generator's
    per-layer spread and median match the data's in every energy bin, its totals unchanged."""
    from fastshower.train.calibration import calibrate_layers_by_energy, log_layer_fractions

    g = _relu_generator(cell_power=1.0, output_scale=3e-3)
    rng = np.random.default_rng(5)
    energy = np.exp(rng.uniform(np.log(5), np.log(300), 800))
    cells = _generated(g, energy, seed=9)
    lg = log_layer_fractions(cells, 0.0)
    which = np.digitize(energy, np.geomspace(5, 300 * (1 + 1e-9), 4)) - 1
    centre = np.stack([np.median(lg[which == b], axis=0) for b in range(3)])[which]
    wanted = centre + np.linspace(-0.3, 0.3, 25) + 2.5 * (lg - centre)
    layer = np.exp(wanted)
    factor = layer / np.exp(lg)
    factor *= cells.sum(axis=(1, 2, 3))[:, None] / (cells.sum(axis=(1, 2)) * factor).sum(axis=1, keepdims=True)
    data = ShowerSet((cells * factor[:, None, None, :]).astype(np.float32), energy, np.full(800, math.pi / 2),
                     PRESETS["clic25"])
    total_before = generated_energy_ratio(g, data, seed=1)
    result = calibrate_layers_by_energy(g, data, n_bins=3, seed=1, min_events=200)
    assert max(result["before"]["spread_ratio_median"]) < 0.5
    np.testing.assert_allclose(result["after"]["spread_ratio_median"], 1.0, atol=0.08)
    assert max(result["after"]["median_offset_median"]) < 0.05 < min(result["before"]["median_offset_median"])
    assert generated_energy_ratio(g, data, seed=1) == pytest.approx(total_before, rel=1e-4)


def test_symmetry_applies_the_grid_symmetries_chosen_by_the_extra_noise_and_survives_saving_and_onnx(tmp_path):
    g = _relu_generator(cell_power=1.0, output_scale=3e-3)
    energy = np.array([5.0, 50.0, 300.0, 20.0] * 4)
    plain = _generated(g, energy)
    g.set_symmetry("normal_incidence")
    assert g.noise_dim == 203 and g.metadata()["noise_dim"] == 203
    z = g.sample_noise(16, generator=torch.Generator().manual_seed(1))
    # the network's part is what it was without the symmetry (the same showers, moved)
    np.testing.assert_array_equal(z[:, :200], torch.randn(16, 200, generator=torch.Generator().manual_seed(1)))
    with torch.no_grad():
        out = g(torch.as_tensor(energy, dtype=torch.float32), torch.full((16,), math.pi / 2), z).numpy()
    for i in range(16):
        expected = plain[i]
        expected = expected[::-1] if z[i, 200] < 0 else expected
        expected = expected[:, ::-1] if z[i, 201] < 0 else expected
        expected = expected.transpose(1, 0, 2) if z[i, 202] < 0 else expected
        np.testing.assert_array_equal(out[i], expected)
    assert len({tuple((z[i, 200:] < 0).tolist()) for i in range(16)}) > 3
    _assert_saved_and_exported_alike(g, energy, _generated(g, energy), tmp_path)
    g.set_symmetry("none")
    assert g.noise_dim == 200
    np.testing.assert_array_equal(_generated(g, energy), plain)
    with pytest.raises(ValueError, match="normal incidence"):
        registry.build_generator("conv2d_g1", width=0.125, condition_on_angle=True, symmetry="normal_incidence")


def test_hits_correction_keeps_the_largest_cells_and_calibration_matches_the_data_hit_counts(tmp_path):
    """Data made of the generator's showers with a random share (33-37%) of their smallest hits
    removed: after calibration the generator's median and spread of ln(hits) match the data's in
    every energy bin, it only ever zeroes its smallest hits, and the correction survives saving and
    ONNX."""
    from fastshower.train.calibration import calibrate_hits_by_energy, log_hit_counts

    g = _relu_generator(cell_power=1.0, output_scale=3e-3)
    rng = np.random.default_rng(2)
    energy = np.exp(rng.uniform(np.log(5), np.log(300), 600))
    cells = _generated(g, energy, seed=9)
    cells = np.where(cells < 1e-6, 0.0, cells)
    flat = cells.reshape(600, -1).copy()
    for row, share in zip(flat, rng.uniform(0.33, 0.37, 600), strict=True):
        hits = np.flatnonzero(row)
        row[hits[np.argsort(row[hits])][: int(share * len(hits))]] = 0.0
    data = ShowerSet(flat.reshape(cells.shape).astype(np.float32), energy, np.full(600, math.pi / 2),
                     PRESETS["clic25"])
    plain = _generated(g, energy[:16], seed=1)
    result = calibrate_hits_by_energy(g, data, n_bins=3, seed=1, min_events=150)
    np.testing.assert_allclose(result["after"]["median"], result["median_data"], atol=0.01)
    np.testing.assert_allclose(result["after"]["spread"], result["spread_data"], rtol=0.1)
    assert min(np.subtract(result["before"]["median"], result["median_data"])) > 0.2
    corrected = _generated(g, energy[:16], seed=1)
    kept = corrected >= 1e-6
    np.testing.assert_array_equal(corrected[kept], plain[kept])  # kept hits untouched
    assert (corrected[~kept & (plain >= 1e-6)] == 0).all()
    for before, after in zip(plain, corrected, strict=True):  # every removed hit is smaller than every kept one
        removed = before[(before >= 1e-6) & (after == 0)]
        assert removed.size and removed.max() <= after[after >= 1e-6].min()
    assert (log_hit_counts(corrected, 1e-6) < log_hit_counts(plain, 1e-6)).all()
    assert g.metadata()["preprocessing"]["hits_correction"]["knots"] == pytest.approx(result["knots"])
    _assert_saved_and_exported_alike(g, energy[:16], corrected, tmp_path)
    with pytest.raises(ValueError, match="increasing"):
        g.set_hits_correction([1.0, 0.0], [1, 1], [1, 1], [0, 0])
    g.set_hits_correction(None)
    np.testing.assert_array_equal(_generated(g, energy[:16], seed=1), plain)


def _halo_and_rings(cells: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(layer energies, logit of the halo fractions, ring of each cell) of showers (B, 25, 25, 25)."""
    from fastshower.models.conv2d import lateral_rings
    from fastshower.train.calibration import logit_halo_fractions

    return cells.sum(axis=(1, 2), dtype=np.float64), logit_halo_fractions(cells, 0.0), lateral_rings(25, 25)


def test_lateral_correction_moves_halo_fractions_then_scales_rings_keeps_layers_and_survives_saving_and_onnx(
        tmp_path):
    from fastshower.models.conv2d import lateral_halo

    g = _relu_generator(cell_power=1.0, output_scale=3e-3)
    energy = np.array([5.0, 20.0, 80.0, 300.0] * 4)
    plain = _generated(g, energy)
    layer, logit, rings = _halo_and_rings(plain)
    knots = [math.log(0.1), math.log(2.0)]
    centre = np.stack([np.median(logit, axis=0)] * 2, axis=1)  # (layers, knots)
    target = centre + np.linspace(-0.5, 0.5, 25)[:, None]
    gain = np.full((25, 2), math.log(2.0))
    g.set_lateral_correction(knots, centre.tolist(), target.tolist(), gain.tolist())
    halo_only = _generated(g, energy)
    np.testing.assert_allclose(halo_only.sum(axis=(1, 2)), layer, rtol=1e-5)  # each layer keeps its energy
    busy = (np.abs(logit) < 6) & (np.abs(target[:, 0] + 2 * (logit - centre[:, 0])) < 6)
    np.testing.assert_allclose(_halo_and_rings(halo_only)[1][busy],
                               (target[:, 0] + 2.0 * (logit - centre[:, 0]))[busy], atol=2e-3)
    assert busy.mean() > 0.5
    # inside the halo (and inside the core) the cells keep their proportions
    halo = lateral_halo(25, 25).astype(bool)
    ratio = halo_only / np.where(plain > 0, plain, 1.0)
    for i, k in zip(*np.nonzero(busy), strict=True):
        for part in (halo, ~halo):
            values = ratio[i][part, k][plain[i][part, k] > 0]
            assert np.ptp(values) <= 1e-4 * values.max()
    # then the ring factors: one per (layer, ring), the layer renormalised to its energy
    n_rings = int(rings.max()) + 1
    ln_ring = np.random.default_rng(3).uniform(-0.5, 0.5, (25, n_rings))
    g.set_lateral_correction(knots, centre.tolist(), target.tolist(), gain.tolist(),
                             np.repeat(ln_ring.reshape(-1, 1), 2, axis=1).tolist())
    corrected = _generated(g, energy)
    np.testing.assert_allclose(corrected.sum(axis=(1, 2)), layer, rtol=1e-5)
    relative = corrected / np.where(halo_only > 0, halo_only, 1.0) / np.exp(ln_ring.T[rings])[None]
    for i, k in zip(*np.nonzero(busy), strict=True):
        values = relative[i][..., k][halo_only[i][..., k] > 0]
        assert np.ptp(values) <= 1e-4 * values.max()  # up to the layer's renormalisation
    card = g.metadata()["preprocessing"]["lateral_correction"]
    assert card["knots"] == pytest.approx(knots) and len(card["ring_log_factor"]) == 25 * n_rings
    _assert_saved_and_exported_alike(g, energy, corrected, tmp_path)
    with pytest.raises(ValueError, match="increasing"):
        g.set_lateral_correction([1.0, 0.0], centre.tolist(), target.tolist(), gain.tolist())
    with pytest.raises(ValueError, match="rings"):
        g.set_lateral_correction(knots, centre.tolist(), target.tolist(), gain.tolist(), [[0.0, 0.0]] * 25)
    g.set_lateral_correction(None)
    np.testing.assert_array_equal(_generated(g, energy), plain)


def test_lateral_calibration_gives_the_generator_the_data_halo_fluctuations_and_radial_profile():
    """Data made by the generator with a known lateral correction (halo medians shifted by up to
    +-0.5 in logit, their spread doubled, ring factors up to x/1.5): after calibration on it the
    generator's halo spreads and medians and its mean radial profile are the data's in every energy
    bin, and its layer energies are what they were."""
    from fastshower.train.calibration import calibrate_lateral_by_energy

    g = _relu_generator(cell_power=1.0, output_scale=3e-3)
    rng = np.random.default_rng(4)
    energy = np.exp(rng.uniform(np.log(5), np.log(300), 600))
    plain = _generated(g, energy, seed=1)
    _, logit, rings = _halo_and_rings(plain)
    knots = [math.log(0.05), math.log(3.0)]
    centre = np.stack([np.median(logit, axis=0)] * 2, axis=1)
    target = centre + np.linspace(-0.5, 0.5, 25)[:, None]
    ln_ring = rng.uniform(-0.4, 0.4, (25 * (int(rings.max()) + 1), 1)).repeat(2, axis=1)
    g.set_lateral_correction(knots, centre.tolist(), target.tolist(), np.full((25, 2), math.log(2.0)).tolist(),
                             ln_ring.tolist())
    data = ShowerSet(_generated(g, energy, seed=9), energy, np.full(600, math.pi / 2), PRESETS["clic25"])
    g.set_lateral_correction(None)
    result = calibrate_lateral_by_energy(g, data, n_bins=3, seed=1, min_events=150)
    before, after = result["before"], result["after"]
    assert max(before["halo_spread_ratio_median"]) < 0.7
    np.testing.assert_allclose(after["halo_spread_ratio_median"], 1.0, atol=0.1)
    assert max(after["halo_median_offset_median"]) < 0.1 < min(before["halo_median_offset_median"])
    assert max(np.divide(after["ring_profile_distance"], before["ring_profile_distance"])) < 0.25
    np.testing.assert_allclose(_generated(g, energy, seed=1).sum(axis=(1, 2)), plain.sum(axis=(1, 2)), rtol=1e-5)


def test_peak_correction_moves_rest_fractions_keeps_layers_and_the_largest_cell_and_survives_saving_and_onnx(
        tmp_path):
    from fastshower.train.calibration import logit_rest_fractions

    g = _relu_generator(cell_power=1.0, output_scale=3e-3)
    energy = np.array([5.0, 20.0, 80.0, 300.0] * 4)
    plain = _generated(g, energy)
    layer, logit = plain.sum(axis=(1, 2), dtype=np.float64), logit_rest_fractions(plain, 0.0)
    assert np.isfinite(logit).mean() > 0.9
    knots = [math.log(0.1), math.log(2.0)]
    centre = np.stack([np.nanmedian(logit, axis=0)] * 2, axis=1)  # (layers, knots)
    target = centre + np.linspace(-0.5, 0.5, 25)[:, None]
    g.set_peak_correction(knots, centre.tolist(), target.tolist(), np.full((25, 2), math.log(2.0)).tolist())
    corrected = _generated(g, energy)
    np.testing.assert_allclose(corrected.sum(axis=(1, 2)), layer, rtol=1e-5)  # each layer keeps its energy
    flat, flat_plain = (a.reshape(len(a), -1, 25) for a in (corrected, plain))
    at_peak = np.take_along_axis(flat, flat_plain.argmax(axis=1)[:, None], axis=1)[:, 0]
    np.testing.assert_allclose(at_peak, flat.max(axis=1), rtol=1e-5)  # the peak stays the largest (or ties)
    wanted = target[:, 0] + 2.0 * (logit - centre[:, 0])
    top = np.sort(flat_plain, axis=1)
    rest = layer - top[:, -1]
    cap = np.log(rest / top[:, -2])  # logit of rest / (rest + second)
    free = np.isfinite(logit) & (np.abs(logit) < 6) & (np.abs(wanted) < 6) & (wanted < cap - 1e-3)
    assert free.mean() > 0.3 and (np.isfinite(logit) & (wanted > cap + 1e-3)).any()
    moved = logit_rest_fractions(corrected, 0.0)
    np.testing.assert_allclose(moved[free], wanted[free], atol=2e-3)
    capped = np.isfinite(logit) & (wanted > cap + 1e-3) & (np.abs(cap) < 6)
    np.testing.assert_allclose(moved[capped], cap[capped], atol=2e-3)  # at most up to the second cell
    ratio = corrected / np.where(plain > 0, plain, 1.0)  # the cells other than the peak keep their proportions
    for i, k in zip(*np.nonzero(free), strict=True):
        others = flat_plain[i, :, k] < top[i, -1, k]
        values = ratio.reshape(len(ratio), -1, 25)[i, others, k][flat_plain[i, others, k] > 0]
        assert np.ptp(values) <= 1e-4 * values.max()
    card = g.metadata()["preprocessing"]["peak_correction"]
    assert card["knots"] == pytest.approx(knots) and len(card["peak_gain"]) == 25
    _assert_saved_and_exported_alike(g, energy, corrected, tmp_path)
    with pytest.raises(ValueError, match="increasing"):
        g.set_peak_correction([1.0, 0.0], centre.tolist(), target.tolist(), centre.tolist())
    with pytest.raises(ValueError, match="finite"):
        g.set_peak_correction(knots, np.full((25, 2), np.nan).tolist(), target.tolist(), centre.tolist())
    g.set_peak_correction(None)
    np.testing.assert_array_equal(_generated(g, energy), plain)


def test_peak_calibration_gives_the_generator_the_data_peak_sharing_fluctuations():
    """Data made by the generator with a known peak-sharing correction (medians shifted by up to
    +-0.5 in logit, spreads x0.6): after calibration on it the generator's medians and spreads of
    logit(energy outside the largest cell / layer energy) are the data's in every energy bin, and its
    layer energies are what they were."""
    from fastshower.train.calibration import calibrate_peak_by_energy, logit_rest_fractions

    g = _relu_generator(cell_power=1.0, output_scale=3e-3)
    rng = np.random.default_rng(5)
    energy = np.exp(rng.uniform(np.log(5), np.log(300), 600))
    plain = _generated(g, energy, seed=1)
    logit = logit_rest_fractions(plain, 0.0)
    knots = [math.log(0.05), math.log(3.0)]
    centre = np.stack([np.nanmedian(logit, axis=0)] * 2, axis=1)
    target = centre + np.linspace(-0.5, 0.5, 25)[:, None]
    g.set_peak_correction(knots, centre.tolist(), target.tolist(), np.full((25, 2), math.log(0.6)).tolist())
    data = ShowerSet(_generated(g, energy, seed=9), energy, np.full(600, math.pi / 2), PRESETS["clic25"])
    g.set_peak_correction(None)
    result = calibrate_peak_by_energy(g, data, n_bins=3, seed=1, min_events=150)
    before, after = result["before"], result["after"]
    assert min(before["spread_ratio_median"]) > 1.4
    np.testing.assert_allclose(after["spread_ratio_median"], 1.0, atol=0.1)
    assert max(after["median_offset_median"]) < 0.1 < min(before["median_offset_median"])
    assert result["layers_left_as_they_are"] == [0, 0, 0]
    np.testing.assert_allclose(_generated(g, energy, seed=1).sum(axis=(1, 2)), plain.sum(axis=(1, 2)), rtol=1e-5)


def test_cell_correction_maps_ln_cell_energies_keeps_layers_and_empty_cells_and_survives_saving_and_onnx(tmp_path):
    g = _relu_generator(cell_power=1.0, output_scale=3e-3)
    energy = np.array([5.0, 20.0, 80.0, 300.0] * 4)
    plain = _generated(g, energy)
    knots = [math.log(0.1), math.log(2.0)]
    q_from = np.tile(np.linspace(-20.0, 0.0, 11), 25)  # (25 layers x 11 quantiles,)
    q_to = 1.5 * q_from - 2.0  # the map ln E -> 1.5 ln E - 2 (slope 1.5 inside, slope 1 beyond the ends)
    g.set_cell_correction(knots, np.stack([q_from] * 2, axis=1).tolist(), np.stack([q_to] * 2, axis=1).tolist())
    corrected = _generated(g, energy)
    np.testing.assert_allclose(corrected.sum(axis=(1, 2)), plain.sum(axis=(1, 2)), rtol=1e-5)  # layers kept
    np.testing.assert_array_equal(corrected > 0, plain > 0)  # no cell filled or emptied
    inside = (plain > math.exp(-20.0)) & (plain < 1.0)
    assert inside.mean() > 0.3
    # up to one factor per (shower, layer) (the renormalisation), ln E_cell became 1.5 ln E_cell - 2
    expected = np.where(inside, 1.5 * np.log(np.where(inside, plain, 1.0)) - 2.0, 0.0)
    shift = np.log(np.where(inside, corrected, 1.0)) - expected
    for i in range(len(energy)):
        for k in range(25):
            values = shift[i][..., k][inside[i][..., k]]
            if values.size:
                assert np.ptp(values) < 1e-3
    assert g.metadata()["preprocessing"]["cell_correction"]["knots"] == pytest.approx(knots)
    _assert_saved_and_exported_alike(g, energy, corrected, tmp_path)
    with pytest.raises(ValueError, match="increase"):
        g.set_cell_correction(knots, np.stack([q_from[::-1]] * 2, axis=1).tolist(), np.stack([q_to] * 2, 1).tolist())
    with pytest.raises(ValueError, match="same shape"):
        g.set_cell_correction(knots, np.stack([q_from] * 2, axis=1).tolist(), np.stack([q_to[:-25]] * 2, 1).tolist())
    g.set_cell_correction(None)
    np.testing.assert_array_equal(_generated(g, energy), plain)


def test_cell_calibration_gives_the_generator_the_data_cell_spectrum():
    """Data made of the generator's showers with every cell's ln E stretched by 1.4 about its layer's
    median and the layer renormalised (a wider spectrum, the same cells): after calibration the
    generator's quantiles of ln E_cell are the data's within a tenth of the offset before, in every
    energy bin, its layer energies and hits unchanged."""
    from fastshower.train.calibration import calibrate_cells_by_energy

    g = _relu_generator(cell_power=1.0, output_scale=3e-3)
    rng = np.random.default_rng(6)
    energy = np.exp(rng.uniform(np.log(5), np.log(300), 300))
    plain = np.where((cells := _generated(g, energy, seed=9)) < 1e-6, 0.0, cells)
    logs = np.log(np.where(plain > 0, plain, 1.0))
    median = np.array([np.median(logs[..., k][plain[..., k] > 0]) for k in range(25)])
    stretched = np.where(plain > 0, np.exp(median + 1.4 * (logs - median)), 0.0)
    stretched *= plain.sum(axis=(1, 2), keepdims=True) / np.maximum(stretched.sum(axis=(1, 2), keepdims=True), 1e-30)
    data = ShowerSet(stretched.astype(np.float32), energy, np.full(300, math.pi / 2), PRESETS["clic25"])
    before_layers = _generated(g, energy, seed=1).sum(axis=(1, 2))
    result = calibrate_cells_by_energy(g, data, n_bins=3, seed=1, min_cells=100)
    assert min(result["layers_mapped"]) >= 20
    assert min(result["before"]["quantile_offset"]) > 0.2
    assert max(np.divide(result["after"]["quantile_offset"], result["before"]["quantile_offset"])) < 0.15
    after = _generated(g, energy, seed=1)
    np.testing.assert_allclose(after.sum(axis=(1, 2)), before_layers, rtol=1e-5)


def _width_tables_of(showers: np.ndarray, n_levels: int = 21) -> tuple[np.ndarray, np.ndarray]:
    """(one-cell fraction per layer, (layers, levels) width quantiles) of showers, the calibration's tables."""
    from fastshower.train.calibration import _width_tables, layer_radial_widths

    single, q, _ = _width_tables(*layer_radial_widths(showers, PRESETS["clic25"]), np.linspace(0, 1, n_levels))
    return single, q


def _compact_showers(n: int, seed: int) -> np.ndarray:
    """``(n, 25, 25, 25)`` Gaussian layers (sigma 2-8 mm, centre within +-3 mm, cells below 1e-4 of the
    largest zeroed) on the clic25 grid, a fifth of the layers a single cell (GeV)."""
    rng = np.random.default_rng(seed)
    c = (np.arange(25) - 12) * 5.1
    sigma = rng.uniform(2.0, 8.0, (n, 1, 1, 25))
    cx, cy = (rng.uniform(-3, 3, (n, 1, 1, 25)) for _ in range(2))
    s = np.exp(-((c[None, :, None, None] - cx) ** 2 + (c[None, None, :, None] - cy) ** 2) / (2 * sigma ** 2))
    s = np.where(s > 1e-4 * s.max(axis=(1, 2), keepdims=True), s, 0.0)
    single = rng.random((n, 25)) < 0.2
    s = np.where(single[:, None, None, :], (s >= s.max(axis=(1, 2), keepdims=True)).astype(float), s)
    return (s / s.sum(axis=(1, 2), keepdims=True) * rng.uniform(0.01, 1.0, (n, 1, 1, 25))).astype(np.float32)


def test_width_correction_maps_layer_widths_keeps_layers_and_survives_saving_and_onnx(tmp_path):
    """On compact showers whose data widths are 1.3 x theirs in layers 0-11 and 0.6 x in 12-24, with
    twice the one-cell layers in 0-11: each layer of two cells or more gets that factor times its
    width (by rank), each layer keeps its energy, a wider layer is its cells x (1 - a) plus one far
    deposit and the one-cell layers are spread by rank drawn from the noise; equal tables are the
    identity. On the generator, the network's showers are unchanged (the correction's noise comes
    after the network's), and it survives saving and ONNX; None removes it."""
    from fastshower.train.calibration import layer_radial_widths

    g = _relu_generator(cell_power=1.0, output_scale=3e-3)
    showers = _compact_showers(400, seed=3)
    energy = np.full(len(showers), 20.0)
    w0, n0 = layer_radial_widths(showers, PRESETS["clic25"])
    single, q = _width_tables_of(showers)
    knots = [math.log(0.05), math.log(3.0)]
    two = lambda a: np.repeat(a[..., None], 2, axis=-1).reshape(-1, 2).tolist()  # noqa: E731  both knots alike

    def moved(single_data, q_data, seed=0):
        g.set_width_correction(knots, two(single), two(single_data), two(q), two(q_data))
        noise = g.sample_noise(len(showers), generator=torch.Generator().manual_seed(seed))
        return g.width_moved(torch.from_numpy(showers), torch.from_numpy(energy).float(), noise).numpy()

    assert 0.1 < single.mean() < 0.3
    np.testing.assert_allclose(moved(single, q), showers, rtol=1e-5, atol=1e-9)  # the identity
    assert g.noise_dim == 200 + 3 * 25
    factor = np.where(np.arange(25) < 12, 1.3, 0.6)
    more_single = np.where(np.arange(25) < 12, 2 * single, single)
    corrected = moved(more_single, q * factor[:, None])
    np.testing.assert_allclose(corrected.sum(axis=(1, 2)), showers.sum(axis=(1, 2)), rtol=1e-5)
    w1, n1 = layer_radial_widths(corrected, PRESETS["clic25"])
    late = (n0 > 1) & (np.arange(25) >= 12)
    np.testing.assert_allclose(w1[late], 0.6 * w0[late], rtol=0.02, atol=0.05)
    # early layers: a rank in the one-cell range (twice as many) collapses the layer, the others widen
    early = (n0 > 1)[:, :12]
    collapsed = early & (n1[:, :12] == 1)
    kept = early & ~collapsed
    assert abs(collapsed.sum() / early.sum() - single[:12].mean() / (1 - single[:12].mean())) < 0.1
    wanted = np.array([[np.interp(np.interp(w0[i, k], q[k], np.linspace(0, 1, 21)) * (1 - single[k]) + single[k] -
                                   2 * single[k], [0, 1 - 2 * single[k]], [q[k, 0] * 1.3, q[k, -1] * 1.3])
                        for k in range(12)] for i in range(len(w0))])
    assert np.median(np.abs(w1[:, :12][kept] / wanted[kept] - 1)) < 0.1
    extra = (corrected[..., :12] > 0) & (showers[..., :12] == 0)
    assert (extra.reshape(len(showers), -1, 12).sum(axis=1) <= 1).all() and extra.any()  # one far deposit at most
    # the single layers: spread by a rank drawn from the noise, different for another seed
    assert not np.array_equal(moved(single * 0, q * factor[:, None], seed=1), moved(single * 0, q * factor[:, None]))
    e8 = np.array([5.0, 20.0, 80.0, 300.0] * 2)
    g.set_width_correction(None)
    network = _generated(g, e8)
    g.set_width_correction(knots, two(single), two(more_single), two(q), two(q * factor[:, None]))
    with_width = _generated(g, e8)
    np.testing.assert_allclose(with_width.sum(axis=(1, 2)), network.sum(axis=(1, 2)), rtol=1e-5)
    card = g.metadata()["preprocessing"]["width_correction"]
    assert card["knots"] == pytest.approx(knots) and card["noise_components"] == [200, 274]
    _assert_saved_and_exported_alike(g, e8, with_width, tmp_path)
    with pytest.raises(ValueError, match="increase"):
        g.set_width_correction(knots, two(single), two(single), two(q[:, ::-1]), two(q))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        g.set_width_correction(knots, two(single + 2), two(single), two(q), two(q))
    g.set_width_correction(None)
    assert g.noise_dim == 200
    np.testing.assert_array_equal(_generated(g, e8), network)


def test_width_calibration_gives_the_generator_the_data_layer_widths():
    """Data made by the generator with a known width correction (every layer 0.7 x as wide, by rank):
    after calibration on it (all layers mapped) the generator's width quantiles are the data's in
    every energy bin, its layer energies are what they were; ``max_energy_gev`` maps only the bins
    below it; mapping no layer (a layer share no layer is under) is the identity."""
    from fastshower.train.calibration import calibrate_width_by_energy

    g = _relu_generator(cell_power=1.0, output_scale=3e-3)
    rng = np.random.default_rng(5)
    energy = np.exp(rng.uniform(np.log(5), np.log(300), 400))
    plain = _generated(g, energy, seed=1)
    single, q = _width_tables_of(plain)
    two = lambda a: np.repeat(a[..., None], 2, axis=-1).reshape(-1, 2).tolist()  # noqa: E731
    knots = [math.log(0.05), math.log(3.0)]
    g.set_width_correction(knots, two(single), two(single), two(q), two(0.7 * q))
    data = ShowerSet(_generated(g, energy, seed=9), energy, np.full(400, math.pi / 2), PRESETS["clic25"])
    g.set_width_correction(None)
    result = calibrate_width_by_energy(g, data, n_bins=2, n_quantiles=21, seed=1, max_layer_share=1.0,
                                       min_events=150)
    assert result["layers_mapped"] == [list(range(25))] * 2
    before, after = result["before"]["width_quantile_offset_mm"], result["after"]["width_quantile_offset_mm"]
    assert min(before) > 10.0 and max(after) < 0.1 * min(before)
    np.testing.assert_allclose(_generated(g, energy, seed=1).sum(axis=(1, 2)), plain.sum(axis=(1, 2)), rtol=1e-5)
    middle = float(np.sqrt(energy.min() * energy.max()))  # the edge between the two bins
    low_only = calibrate_width_by_energy(g, data, n_bins=2, n_quantiles=21, seed=1, max_layer_share=1.0,
                                         min_events=150, max_energy_gev=1.01 * middle)
    assert low_only["layers_mapped"] == [list(range(25)), []]
    none = calibrate_width_by_energy(g, data, n_bins=2, seed=1, max_layer_share=1e-3, min_events=150)
    assert none["layers_mapped"] == [[], []]
    np.testing.assert_allclose(_generated(g, energy, seed=1), plain, rtol=1e-5, atol=1e-9)
    with pytest.raises(ValueError, match="max_layer_share"):
        calibrate_width_by_energy(g, data, max_layer_share=0.0)
