"""Spread of the held-out goal terms of the shipped GFlash set over GFlash seeds 1-8 (docs/gflash.md).

Against the fixed-energy Geant4 samples data/g4samples/clic25_e{50,300}_a.h5, GFlash at the same
energies and as many showers; the terms of ``fastshower.gflash_tune.objective_residuals`` (3DGAN
profile term, mean response, sigma90 relative errors, 5x5 core difference). Seed 1 is the seed of
bench/gflash_geant4.py.

    PYTHONPATH=src OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/gflash_seed_spread.py
"""

import numpy as np

from fastshower.data import read_showers
from fastshower.gflash_tune import objective_residuals, reference_sample
from fastshower.simulate.gflash import load_parameters, simulate_showers

TERMS = ("profiles", "mean", "sigma90", "core_containment")


def main(params: str = "clic25_geant4", seeds: range = range(1, 9)) -> None:
    p = load_parameters(params)
    for energy in (50, 300):
        ref = read_showers(f"data/g4samples/clic25_e{energy}_a.h5")
        geometry = ref.geometry
        sample = reference_sample(ref, geometry, energy)
        values = []
        for seed in seeds:
            showers = simulate_showers(geometry, ref.primary_energy, ref.incident_angle,
                                       np.random.default_rng([seed, energy]), params=p)
            _, terms = objective_residuals(sample, showers, ref.primary_energy, geometry)
            values.append([terms[t] for t in TERMS])
        v = np.array(values)
        for k, name in enumerate(TERMS):
            print(f"{energy} GeV {name}: {np.round(v[:, k], 4)} mean {v[:, k].mean():+.4f} std {v[:, k].std():.4f}")


if __name__ == "__main__":
    main()
