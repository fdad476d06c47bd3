"""The main job a new user runs first: a shipped generator against the reference simulation.

:func:`run_demo` simulates a fresh reference sample (new seed), generates the same number of
showers with a shipped model for the same conditions, simulates an independent second reference
sample for the floor, writes the validation report and returns the metric table and the speed of
both (showers per second, measured here, on this machine).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_MODEL = "gan3d_clic25"


@dataclass
class DemoResult:
    model: str
    geometry: str
    n_showers: int
    seed: int
    reference_showers_per_s: float
    generator_showers_per_s: float
    report_dir: Path
    metrics: dict

    @property
    def speed_up(self) -> float:
        return self.generator_showers_per_s / self.reference_showers_per_s


def _conditions(generator, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Primary energies (GeV) uniform in the model's trained range; angles likewise (rad)."""
    e_lo, e_hi = generator.energy_range_gev
    a_lo, a_hi = generator.angle_range_rad
    return rng.uniform(e_lo, e_hi, n), rng.uniform(a_lo, a_hi, n)


def run_demo(model: str = DEFAULT_MODEL, n: int = 2000, out_dir: str | Path = "demo_report",
             seed: int | None = None, quick: bool = False, device: str = "cpu",
             progress: bool = True) -> DemoResult:
    """Reference vs shipped ``model`` on ``n`` showers each; report in ``out_dir``.

    ``seed`` None draws a new one (printed in the report so a run can be repeated). ``quick`` uses
    the quick validation (no classifier, fewer SSIM pairs).
    """
    from fastshower.infer.generator import Generator
    from fastshower.infer.timing import time_per_shower
    from fastshower.simulate.gflash import simulate_showers
    from fastshower.showers import ShowerSet
    from fastshower.validate.report import write_report

    if n < 20:
        raise ValueError("the demo needs at least 20 showers per sample")
    seed = secrets.randbelow(2**31) if seed is None else seed
    generator = Generator.load(model, device=device)
    geometry = generator.geometry
    rng = np.random.default_rng(seed)
    primary_energy, incident_angle = _conditions(generator, n, rng)

    def simulate(sample_rng: np.random.Generator) -> tuple[ShowerSet, float]:
        out = []
        timing = time_per_shower(lambda: out.append(simulate_showers(geometry, primary_energy, incident_angle,
                                                                     sample_rng)), n, warmup=0, repeats=1)
        return ShowerSet(out[0], primary_energy, incident_angle, geometry.name,
                         {"simulator": "gflash", "seed": seed}), timing.ms_per_shower

    reference, ms_reference = simulate(rng)
    reference2, _ = simulate(np.random.default_rng([seed, 1]))
    generator.generate(primary_energy[:min(n, 64)], incident_angle[:min(n, 64)], seed=seed)  # warm-up
    generated: list[ShowerSet] = []
    ms_generator = time_per_shower(lambda: generated.append(generator.generate(primary_energy, incident_angle, seed=seed)),
                                   n, warmup=0, repeats=1).ms_per_shower
    candidate = generated[0]

    metrics = write_report(reference, candidate, out_dir, reference2=reference2, quick=quick, seed=seed,
                           progress=progress, labels={"reference": f"GFlash reference (seed {seed})",
                                                      "candidate": model, "reference2": "GFlash reference 2"})
    return DemoResult(model=model, geometry=geometry.name, n_showers=n, seed=seed,
                      reference_showers_per_s=1e3 / ms_reference, generator_showers_per_s=1e3 / ms_generator,
                      report_dir=Path(out_dir), metrics=metrics)
