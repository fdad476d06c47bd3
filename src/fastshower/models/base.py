"""The contracts every shower generator and discriminator fulfils (docs/INTERFACES.md, "models").

At the interface, showers are float32 ``(B, nx, ny, nz)`` in GeV (energy deposited in the active
material per cell, z = depth); ``primary_energy`` is ``(B,)`` in GeV and ``incident_angle`` ``(B,)``
the polar angle in rad (pi/2 = normal incidence). Inside, each model works in its own *model
units* (e.g. 100 x GeV for the fixed-angle 3DGAN, (50 x GeV)**0.85 for the angle 3DGAN); the
conversion is :class:`CellTransform`, owned by the model and saved with its weights.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from fastshower.geometry import Geometry
from fastshower.models.layers import keras_parameter_count
from fastshower.showers import ShowerSet


class ModelConfig(BaseModel):
    """Options a model is rebuilt from. ``width`` multiplies every hidden channel count (1.0 = the
    published architecture; small values give fast networks for tests). ``cell_power`` replaces the
    model's preprocessing power (:class:`CellTransform`; None = the model's own, e.g. for a
    hyper-parameter search over it)."""

    model_config = ConfigDict(extra="forbid")

    width: float = Field(default=1.0, gt=0)
    cell_power: float | None = Field(default=None, gt=0)


class CellTransform(BaseModel):
    """Cell-energy transform between GeV and model units: ``model = (scale * GeV) ** power``,
    inverse ``GeV = max(model, 0) ** (1 / power) / scale``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    scale: float = Field(gt=0)
    power: float = Field(default=1.0, gt=0)

    def to_model_units(self, showers_gev: torch.Tensor) -> torch.Tensor:
        x = showers_gev * self.scale
        return x if self.power == 1.0 else x.clamp_min(0) ** self.power

    def to_gev(self, model_units: torch.Tensor) -> torch.Tensor:
        """Model units -> GeV. Negative outputs (a linear or LeakyReLU output head) are unphysical
        deposits and become 0."""
        x = model_units.clamp_min(0)
        return (x if self.power == 1.0 else x ** (1.0 / self.power)) / self.scale

    def unpowered(self, model_units: torch.Tensor) -> torch.Tensor:
        """``model_units ** (1 / power)``: scaled GeV (``scale`` x GeV), the units the ECAL sum uses."""
        return model_units if self.power == 1.0 else model_units.clamp_min(0) ** (1.0 / self.power)


def _configured_transform(transform: CellTransform, config: ModelConfig) -> CellTransform:
    """The model's transform with ``config.cell_power`` (when set) as its power."""
    return transform if config.cell_power is None else CellTransform(scale=transform.scale, power=config.cell_power)


class ShowerGenerator(nn.Module):
    """A conditional shower generator.

    Class attributes set by each model: ``name`` (registry name), ``geometry`` (a preset
    :class:`~fastshower.geometry.Geometry`),
    ``transform`` (:class:`CellTransform`), ``conditions_on_angle``. Instance: ``config`` (the
    :class:`ModelConfig` it was built from), ``noise_dim``.
    """

    name: ClassVar[str]
    geometry: ClassVar[Geometry]
    transform: ClassVar[CellTransform]
    noise_dim: int
    conditions_on_angle: bool

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.transform = _configured_transform(type(self).transform, config)  # type: ignore[misc]

    # --- conditions ---------------------------------------------------------------------------
    @property
    def energy_range_gev(self) -> tuple[float, float]:
        """Primary energies the model is meant for (GeV): the geometry's data range."""
        return tuple(self.geometry.energy_range_gev)  # type: ignore[return-value]

    @property
    def angle_range_rad(self) -> tuple[float, float]:
        """Incident polar angles the model is meant for (rad); (pi/2, pi/2) for normal incidence only."""
        if not self.conditions_on_angle:
            return (math.pi / 2, math.pi / 2)
        return tuple(self.geometry.angle_range_rad)  # type: ignore[return-value]

    @property
    def shape(self) -> tuple[int, int, int]:
        """Output grid ``(nx, ny, nz)``."""
        return tuple(self.geometry.shape)  # type: ignore[return-value]

    def sample_noise(self, n: int, generator: torch.Generator | None = None,
                     device: torch.device | str | None = None) -> torch.Tensor:
        """``(n, noise_dim)`` standard-normal noise, drawn from ``generator`` (reproducible) on the
        generator's device and moved to ``device``."""
        where = generator.device if generator is not None else (device or "cpu")
        noise = torch.randn(n, self.noise_dim, generator=generator, device=where)
        return noise.to(device) if device is not None else noise

    # --- the network --------------------------------------------------------------------------
    def generate_raw(self, primary_energy: torch.Tensor, incident_angle: torch.Tensor,
                     noise: torch.Tensor) -> torch.Tensor:
        """``(B, nx, ny, nz)`` showers in model units; conditioning happens here."""
        raise NotImplementedError

    def preprocess(self, showers_gev: torch.Tensor) -> torch.Tensor:
        """Showers in GeV -> model units (what the discriminator sees)."""
        return self.transform.to_model_units(showers_gev)

    def postprocess(self, model_units: torch.Tensor) -> torch.Tensor:
        """Model units -> GeV."""
        return self.transform.to_gev(model_units)

    def forward(self, primary_energy: torch.Tensor, incident_angle: torch.Tensor,
                noise: torch.Tensor) -> torch.Tensor:
        """``(B, nx, ny, nz)`` float32 showers in GeV for primary energies (GeV), angles (rad) and noise."""
        return self.postprocess(self.generate_raw(primary_energy, incident_angle, noise))

    def metadata(self) -> dict[str, Any]:
        """The model card: what the JSON beside the weights records."""
        return {
            "model": self.name,
            "config": self.config.model_dump(mode="json"),
            "geometry": self.geometry.name,
            "shape": list(self.shape),
            "noise_dim": self.noise_dim,
            "conditions_on_angle": self.conditions_on_angle,
            "energy_range_gev": list(self.energy_range_gev),
            "angle_range_rad": list(self.angle_range_rad),
            "preprocessing": {"cell_scale": self.transform.scale, "cell_power": self.transform.power,
                              "to_model_units": "(cell_scale * GeV) ** cell_power",
                              "to_gev": "max(model, 0) ** (1 / cell_power) / cell_scale",
                              "energy_condition": "primary_energy / 100 (GeV)",
                              "angle_condition": "incident_angle (rad)" if self.conditions_on_angle else None},
            "parameters": keras_parameter_count(self),
            "trainable_parameters": keras_parameter_count(self, trainable_only=True),
        }


def generate_like(generator: ShowerGenerator, reference: ShowerSet, seed: int, batch_size: int = 256) -> ShowerSet:
    """Showers (GeV) of ``generator`` at ``reference``'s conditions, without gradients, batch after
    batch on the generator's device; the noise is drawn per batch from a CPU ``torch.Generator``
    seeded with ``seed``. The caller chooses the mode (eval/train) and any autocast."""
    device = next(generator.parameters()).device
    g = torch.Generator().manual_seed(seed)
    parts = []
    with torch.no_grad():
        for i in range(0, len(reference), batch_size):
            e = torch.as_tensor(reference.primary_energy[i:i + batch_size], dtype=torch.float32)
            a = torch.as_tensor(reference.incident_angle[i:i + batch_size], dtype=torch.float32)
            z = generator.sample_noise(len(e), generator=g)
            parts.append(generator(e.to(device), a.to(device), z.to(device)).float().cpu().numpy())
    return ShowerSet(np.concatenate(parts), reference.primary_energy, reference.incident_angle, reference.geometry)


class ShowerDiscriminator(nn.Module):
    """A 3DGAN-family discriminator on showers in model units ``(B, nx, ny, nz)``.

    ``forward`` returns a dict of ``(B,)`` tensors: ``real`` (probability that the shower is real,
    sigmoid applied), ``energy`` (regressed primary energy / 100 GeV), ``ecal_sum`` (not learned:
    :meth:`ecal_sum_of`) and, for angle models, ``angle`` (measured polar angle, rad).
    """

    name: ClassVar[str]
    geometry: ClassVar[Geometry]
    transform: ClassVar[CellTransform]

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.transform = _configured_transform(type(self).transform, config)  # type: ignore[misc]

    def ecal_sum_of(self, image: torch.Tensor) -> torch.Tensor:
        """``(B,)`` total energy of ``image`` (model units, (B, nx, ny, nz)) in the units of the
        ECAL-sum regression: ``scale`` x GeV (the power transform undone)."""
        return self.transform.unpowered(image).sum(dim=(1, 2, 3))
