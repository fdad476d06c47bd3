"""Quick scores of campaign generators at fixed energies against the Geant4 samples (a cheap
pre-selection before `fastshower validate`): per energy, the relative error of the mean sampling
fraction, the profile MSE (fastshower.data.summaries.quick_metrics) and the 3DGAN profile term (mean
relative difference of the event-averaged x, y, z profiles, as `fastshower validate` defines it) of N
generated showers, cells below the readout threshold set to zero, the ratio (generated / Geant4) of
the mean x width, and the diversity: the ratios (generated / Geant4) of the event-to-event spreads
of the longitudinal centre and the x width and of the mean number of cells hit; and the ratio of the
roughness of the mean longitudinal profile (sum of |second differences| of the layer fractions: a
layer-to-layer zigzag that Geant4's smooth profile does not have).

    python campaigns/conv2d_g1/score.py runs/campaign_conv2d_g1/generators/step_*.json --n 100
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from fastshower.data import read_showers
from fastshower.data.summaries import axis_profiles, quick_metrics
from fastshower.models import registry
from fastshower.models.base import generate_like
from fastshower.showers import ShowerSet
from fastshower.validate.metrics import profile_term
from fastshower.validate.observables import apply_threshold


def spread_ratios(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """Generated / Geant4: mean x width, std of the longitudinal centre and of the x width (cells),
    mean cells hit, roughness of the mean longitudinal profile."""
    def stats(showers: np.ndarray) -> tuple[float, float, float, float]:
        cells = np.arange(showers.shape[1])
        px, pz = showers.sum(axis=(2, 3)), showers.sum(axis=(1, 2))
        total = px.sum(axis=1)
        mx = (px * cells).sum(axis=1) / total
        width = np.sqrt(np.maximum((px * cells**2).sum(axis=1) / total - mx**2, 0.0))
        depth = (pz * np.arange(showers.shape[3])).sum(axis=1) / total
        return (float(width.mean()), float(depth.std()), float(width.std()),
                float((showers > 0).sum(axis=(1, 2, 3)).mean()))
    def roughness(showers: np.ndarray) -> float:  # layer-to-layer zigzag of the mean longitudinal profile
        profile = showers.sum(axis=(1, 2)).mean(axis=0)
        return float(np.abs(np.diff(profile / profile.sum(), n=2)).sum())
    r, c = stats(reference), stats(candidate)
    return {"width_ratio": c[0] / r[0], "depth_spread_ratio": c[1] / r[1], "width_spread_ratio": c[2] / r[2],
            "hits_ratio": c[3] / r[3], "roughness_ratio": roughness(candidate) / roughness(reference)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("generators", nargs="+", type=Path)
    parser.add_argument("--energies", default="10,50,100,300")
    parser.add_argument("--samples", type=Path, default=Path("data/g4samples"))
    parser.add_argument("--n", type=int, default=100)
    args = parser.parse_args()
    torch.set_num_threads(1)
    refs = {e: read_showers(args.samples / f"clic25_e{e}_a.h5") for e in args.energies.split(",")}
    for stem in args.generators:
        g = registry.load_generator(stem.with_suffix(""))
        row = {"generator": stem.stem}
        for e, ref in refs.items():
            n = min(args.n, len(ref))
            cand = generate_like(g, ref[:n], seed=5, batch_size=n)  # the fixed-energy file's conditions
            showers = apply_threshold(cand.showers, ref.geometry.readout_threshold_gev)
            cand = ShowerSet(showers, cand.primary_energy, cand.incident_angle, ref.geometry)
            sf_ref = ref.showers.sum(axis=(1, 2, 3)).mean() / float(e)
            sf_gan = showers.sum(axis=(1, 2, 3)).mean() / float(e)
            row[f"sf_rel_{e}"] = round(float(sf_gan / sf_ref - 1), 4)
            row[f"profile_mse_{e}"] = float(f"{quick_metrics(ref[:n], cand)['profile_mse']:.4g}")
            row[f"gan_profiles_{e}"] = round(profile_term(axis_profiles(ref.showers[:n]), axis_profiles(showers)), 4)
            for key, value in spread_ratios(ref.showers[:n], showers).items():
                row[f"{key}_{e}"] = round(value, 4)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
