"""GAN losses with Keras semantics (see the 3DGAN reference notes, sections 3 and 7).

- :func:`bce`: binary cross-entropy on **probabilities** (the discriminator already applies the
  sigmoid once), probabilities clipped to [1e-7, 1 - 1e-7] as Keras does.
- :func:`mape`: Keras ``mean_absolute_percentage_error`` = 100 * mean(|y - y_hat| / max(|y|, 1e-7)),
  ``y`` the **target** (the PyTorch ports divided by the prediction).
- :func:`mae`: mean absolute error (the angle term, rad).

All are computed in float32 whatever the autocast precision of the networks.
"""

from __future__ import annotations

import torch

from fastshower.train.config import LossWeights

EPSILON = 1e-7


def bce(probability: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    p = probability.float().clamp(EPSILON, 1 - EPSILON)
    t = target.float()
    return -(t * torch.log(p) + (1 - t) * torch.log1p(-p)).mean()


def mape(target: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
    """Mean absolute percentage error, dividing by the target (in %)."""
    t = target.float()
    return 100.0 * ((t - prediction.float()).abs() / t.abs().clamp_min(EPSILON)).mean()


def mae(target: torch.Tensor, prediction: torch.Tensor) -> torch.Tensor:
    return (target.float() - prediction.float()).abs().mean()


def gan_loss(outputs: dict[str, torch.Tensor], labels: torch.Tensor, energy_target: torch.Tensor,
             ecal_target: torch.Tensor, angle_target: torch.Tensor | None, weights: LossWeights
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted sum of the terms for one discriminator pass, and the unweighted terms.

    ``outputs`` is the discriminator's dict (``real`` probability, ``energy`` = E/100, ``ecal_sum``,
    optionally ``angle``); ``energy_target`` is E/100. The angle term is used when its weight is
    non-zero and the discriminator has an angle head.
    """
    terms = {
        "bce": bce(outputs["real"], labels),
        "energy_mape": mape(energy_target, outputs["energy"]),
        "ecal_mape": mape(ecal_target, outputs["ecal_sum"]),
    }
    total = weights.real * terms["bce"] + weights.energy * terms["energy_mape"] + weights.ecal_sum * terms["ecal_mape"]
    if weights.angle > 0 and "angle" in outputs and angle_target is not None:
        terms["angle_mae"] = mae(angle_target, outputs["angle"])
        total = total + weights.angle * terms["angle_mae"]
    return total, terms
