"""Energy-response calibration of a trained generator against its training showers.

:func:`calibrate_response` rescales a generator's output so that its mean deposited energy over
the training conditions equals the data's, the way a fast simulation's response is calibrated to
the full simulation it was fitted to. It is meant for generators whose weights were made outside
the training loop (e.g. :func:`fastshower.models.registry.average_generators`, where the mean of
several checkpoints deposits a few per cent less than each of them) and only applies to those with
a positive-homogeneous output (ReLU head times ``output_scale``): in GeV the output scales as
``output_scale ** (1 / cell_power)``, so the ratio r of the energies is applied as
``output_scale *= r ** cell_power``. One number for the whole energy range: a response that is
wrong differently at different energies stays visible.
"""

from __future__ import annotations

import numpy as np

from fastshower.models.base import ShowerGenerator, generate_like
from fastshower.showers import ShowerSet


def generated_energy_ratio(generator: ShowerGenerator, data: ShowerSet, seed: int = 0,
                           batch_size: int = 256) -> float:
    """Mean summed energy of the data / that of the generator at the data's conditions (GeV; cells
    below the geometry's readout threshold count as zero in both)."""
    threshold = data.geometry.readout_threshold_gev
    generated = generate_like(generator, data, seed, batch_size).showers
    generated_sum = float(np.where(generated < threshold, 0.0, generated).sum(dtype=np.float64))
    real = float(np.where(data.showers < threshold, 0.0, data.showers).sum(dtype=np.float64))
    if not generated_sum > 0:
        raise ValueError("the generator deposits no energy at the data's conditions")
    return real / generated_sum


def calibrate_response(generator: ShowerGenerator, data: ShowerSet, seed: int = 0, tolerance: float = 1e-3,
                       max_iterations: int = 8) -> float:
    """Rescale ``generator.output_scale`` in place so that its mean response over ``data`` matches
    (module docstring) to ``tolerance``; returns the energy ratio that was applied. Iterated,
    because cells crossing the readout threshold make the response not exactly proportional."""
    config = generator.config
    if getattr(config, "output_activation", None) != "relu" or not hasattr(generator, "set_output_scale"):
        raise ValueError(f"{generator.name}: response calibration needs a ReLU output head with an output scale")
    power = generator.transform.power
    applied = 1.0
    for _ in range(max_iterations):
        ratio = generated_energy_ratio(generator, data, seed)
        if abs(ratio - 1.0) <= tolerance:
            break
        generator.set_output_scale(float(generator.output_scale) * ratio ** power)
        applied *= ratio
    return applied
