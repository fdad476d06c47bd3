"""Response calibration of a generator (fastshower.train.calibration)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fastshower.geometry import PRESETS
from fastshower.models import registry
from fastshower.showers import ShowerSet
from fastshower.train.calibration import calibrate_response, generated_energy_ratio


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
