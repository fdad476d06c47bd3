"""The Conv3D 3DGAN models (Khattak, Vallecorsa et al.), ported from the Keras code with its semantics.

- ``gan3d_clic25``: fixed-angle 25x25x25 (``svalleco/3Dgan@Anglegan`` ``keras/EcalEnergyGan.py``).
  Latent 200, multiplicative conditioning ``(E/100) * N(0,1)^200``; cells in 100 x GeV.
- ``gan3d_clic51``: variable-angle 51x51x25 (``keras/AngleArch3dGAN.py``). Latent 256 =
  ``[E/100, theta, N(0,1)^254]``; cells in ``(50 x GeV) ** 0.85``; the discriminator measures the
  angle and the ECAL sum on ``image ** (1/0.85)``.

Shapes in the comments are (x, y, z) x channels, as in the Keras channels-last code; inside the
networks tensors are channels-first (B, C, x, y, z). See docs/models.md for the layer tables.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from pydantic import Field
from torch import nn

from fastshower.geometry import PRESETS, Geometry
from fastshower.models.base import CellTransform, ModelConfig, ShowerDiscriminator, ShowerGenerator
from fastshower.models.layers import (
    BatchNorm3dAlwaysTraining,
    BatchNormMode,
    Conv3d,
    batch_norm,
    dense,
    dropout,
    leaky_relu,
    scaled_channels,
)


class _DenseToVolume(nn.Module):
    """Keras ``Dense(c * x * y * z)`` then ``Reshape((x, y, z, c))`` (channels last), returned
    channels-first (B, c, x, y, z): the same weight layout as the Keras model."""

    def __init__(self, latent: int, grid: tuple[int, int, int], channels: int) -> None:
        super().__init__()
        self.grid, self.channels = grid, channels
        self.dense = dense(latent, channels * math.prod(grid))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.dense(z).view(-1, *self.grid, self.channels).permute(0, 4, 1, 2, 3)


def _zero_pad(x: int, y: int, z: int) -> nn.ConstantPad3d:
    """Keras ``ZeroPadding3D((x, y, z))`` (symmetric) on (B, C, x, y, z)."""
    return nn.ConstantPad3d((z, z, y, y, x, x), 0.0)


def _flatten_channels_last(x: torch.Tensor) -> torch.Tensor:
    """Keras ``Flatten`` of a channels-last volume: (B, C, x, y, z) -> (B, x*y*z*C) in (x, y, z, C) order."""
    return x.permute(0, 2, 3, 4, 1).flatten(1)


class _Gan3dGenerator(ShowerGenerator):
    """Common part of the 3DGAN generators: ``net`` maps the :meth:`latent` (B, L) to (B, 1, x, y, z)
    in model units. A model supplies ``config_class``, ``noise_dim``, ``conditions_on_angle``,
    :meth:`build_net` and :meth:`latent`."""

    config_class: ClassVar[type[ModelConfig]]

    def __init__(self, config: ModelConfig | None = None) -> None:
        config = config or self.config_class()
        super().__init__(config)
        self.net = self.build_net(config.width, config.generator_bn_eps, config.batchnorm)  # type: ignore[attr-defined]

    def build_net(self, width: float, bn_eps: float, mode: BatchNormMode = "train") -> nn.Sequential:
        raise NotImplementedError

    def latent(self, primary_energy: torch.Tensor, incident_angle: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def generate_raw(self, primary_energy: torch.Tensor, incident_angle: torch.Tensor,
                     noise: torch.Tensor) -> torch.Tensor:
        """(B, nx, ny, nz) showers in model units for energies (GeV), angles (rad), noise (B, noise_dim)."""
        return self.net(self.latent(primary_energy, incident_angle, noise)).squeeze(1)


class _Gan3dDiscriminator(ShowerDiscriminator):
    """Common part of the 3DGAN discriminators: Conv3D ``features`` of the (B, 1, x, y, z) image,
    flattened channels-last, and the heads Dense(1, sigmoid) ``real`` and Dense(1, linear)
    ``energy`` on them. A model names its ``generator_class`` (whose ``name``, ``geometry`` and
    ``transform`` it takes) and ``config_class``, and supplies :meth:`build_features`."""

    generator_class: ClassVar[type[ShowerGenerator]]
    config_class: ClassVar[type[ModelConfig]]

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        cls.name, cls.geometry = cls.generator_class.name, cls.generator_class.geometry
        cls.transform = cls.generator_class.transform

    def __init__(self, config: ModelConfig | None = None) -> None:
        config = config or self.config_class()
        super().__init__(config)
        self.features, n_features = self.build_features(
            config.width, config.discriminator_bn_eps, config.dropout, config.batchnorm)  # type: ignore[attr-defined]
        self.real_head = dense(n_features, 1)
        self.energy_head = dense(n_features, 1)

    def build_features(self, width: float, bn_eps: float, dropout: float,
                       mode: BatchNormMode = "train") -> tuple[nn.Sequential, int]:
        """The convolutional part and its number of output features."""
        raise NotImplementedError

    def learned_heads(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """``real`` (probability) and ``energy`` (E / 100 GeV), (B,) each, of ``image`` (B, nx, ny, nz)."""
        h = _flatten_channels_last(self.features(image.unsqueeze(1)))
        return {"real": torch.sigmoid(self.real_head(h)).squeeze(1), "energy": self.energy_head(h).squeeze(1)}


# ============================================================================ fixed angle, 25^3

class Gan3dClic25Config(ModelConfig):
    """``gan3d_clic25`` options. ``generator_bn_eps`` / ``discriminator_bn_eps``: BatchNorm epsilon
    (1e-6 in both networks of ``EcalEnergyGan.py``); ``dropout``: discriminator dropout rate;
    ``batchnorm``: how the Keras layers were called in training (``train``: ``train_on_batch``, the
    original; see :data:`fastshower.models.layers.BatchNormMode`)."""

    generator_bn_eps: float = Field(default=1e-6, gt=0)
    discriminator_bn_eps: float = Field(default=1e-6, gt=0)
    dropout: float = Field(default=0.2, ge=0, lt=1)
    batchnorm: BatchNormMode = "train"


class Gan3dClic25Generator(_Gan3dGenerator):
    """Fixed-angle 25^3 3DGAN generator.

    | Keras layer                                                          | output (x,y,z) x ch |
    |----------------------------------------------------------------------|---------------------|
    | Dense(3136), Reshape(7,7,8,8)                                        | 7x7x8 x 8           |
    | Conv3D(64,(6,6,8),same,he_uniform), LeakyReLU, BN, UpSampling3D(2)   | 14x14x16 x 64       |
    | ZeroPad(2,2,0), Conv3D(6,(6,5,8),he_uniform), LeakyReLU, BN, Up(2,2,3)| 26x28x27 x 6       |
    | ZeroPad(1,0,3), Conv3D(6,(3,3,8),he_uniform), LeakyReLU              | 26x26x26 x 6        |
    | Conv3D(1,(2,2,2),no bias,glorot_normal), ReLU                        | 25x25x25            |

    Conditioning: latent = (E / 100 GeV) * noise (multiplicative); the angle is ignored.
    """

    name: ClassVar[str] = "gan3d_clic25"
    geometry: ClassVar[Geometry] = PRESETS["clic25"]
    transform: ClassVar[CellTransform] = CellTransform(scale=100.0)
    config_class: ClassVar[type[ModelConfig]] = Gan3dClic25Config
    noise_dim: int = 200
    conditions_on_angle: bool = False

    def build_net(self, width: float, bn_eps: float, mode: BatchNormMode = "train") -> nn.Sequential:
        c0, c1, c2 = scaled_channels(8, width), scaled_channels(64, width), scaled_channels(6, width)
        return nn.Sequential(
            _DenseToVolume(self.noise_dim, (7, 7, 8), c0),
            Conv3d(c0, c1, (6, 6, 8), padding="same", init="he_uniform"),
            leaky_relu(), batch_norm(3, c1, bn_eps, mode), nn.Upsample(scale_factor=(2, 2, 2), mode="nearest"),
            _zero_pad(2, 2, 0),
            Conv3d(c1, c2, (6, 5, 8), init="he_uniform"),
            leaky_relu(), batch_norm(3, c2, bn_eps, mode), nn.Upsample(scale_factor=(2, 2, 3), mode="nearest"),
            _zero_pad(1, 0, 3),
            Conv3d(c2, c2, (3, 3, 8), init="he_uniform"),
            leaky_relu(),
            Conv3d(c2, 1, (2, 2, 2), bias=False, init="glorot_normal"),
            nn.ReLU(),
        )

    def latent(self, primary_energy: torch.Tensor, incident_angle: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """(E / 100 GeV) * noise (B, 200); the output is (B, 25, 25, 25) in 100 x GeV."""
        return (primary_energy.to(noise.dtype) / 100.0).unsqueeze(1) * noise


class Gan3dClic25Discriminator(_Gan3dDiscriminator):
    """Fixed-angle 25^3 3DGAN discriminator.

    Conv3D(32,5^3,same), LeakyReLU, Dropout; three blocks [ZeroPad(2|2|1), Conv3D(8,5^3),
    LeakyReLU, BN (batch statistics always, Keras ``training=True``), Dropout] (25^3 -> 25^3 ->
    23^3); AvgPool3D(2) -> 11^3 x 8 = 10 648; heads Dense(1, sigmoid) ``real``, Dense(1, linear)
    ``energy`` (E / 100 GeV), and the image sum ``ecal_sum`` (100 x GeV).
    """

    generator_class: ClassVar[type[ShowerGenerator]] = Gan3dClic25Generator
    config_class: ClassVar[type[ModelConfig]] = Gan3dClic25Config

    def build_features(self, width: float, bn_eps: float, rate: float,
                       mode: BatchNormMode = "train") -> tuple[nn.Sequential, int]:
        c0, c1 = scaled_channels(32, width), scaled_channels(8, width)
        blocks: list[nn.Module] = [Conv3d(1, c0, 5, padding="same"), leaky_relu(), dropout(rate, mode)]
        for pad, c_in in ((2, c0), (2, c1), (1, c1)):
            bn = BatchNorm3dAlwaysTraining(c1, bn_eps) if mode == "train" else batch_norm(3, c1, bn_eps, mode)
            blocks += [_zero_pad(pad, pad, pad), Conv3d(c_in, c1, 5), leaky_relu(), bn, dropout(rate, mode)]
        blocks.append(nn.AvgPool3d(2))
        return nn.Sequential(*blocks), c1 * 11 ** 3

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return {**self.learned_heads(image), "ecal_sum": self.ecal_sum_of(image)}


# ============================================================================ variable angle, 51x51x25

#: The angle model's cell power: model units = (50 x GeV) ** 0.85.
ANGLE_POWER = 0.85


class Gan3dClic51Config(ModelConfig):
    """``gan3d_clic51`` options. ``generator_bn_eps`` / ``discriminator_bn_eps``: BatchNorm epsilon
    (1e-6 in both networks of ``AngleArch3dGAN.py``); ``dropout``: discriminator dropout rate;
    ``batchnorm``: see :class:`Gan3dClic25Config`."""

    generator_bn_eps: float = Field(default=1e-6, gt=0)
    discriminator_bn_eps: float = Field(default=1e-6, gt=0)
    dropout: float = Field(default=0.2, ge=0, lt=1)
    batchnorm: BatchNormMode = "train"


class Gan3dClic51Generator(_Gan3dGenerator):
    """Variable-angle 51x51x25 3DGAN generator.

    | Keras layer                                                     | output (x,y,z) x ch |
    |-----------------------------------------------------------------|---------------------|
    | Dense(5184), Reshape(9,9,8,8), UpSampling3D(6,6,6)              | 54x54x48 x 8        |
    | Conv3D(8,(6,6,8)), ReLU, BN                                     | 49x49x41 x 8        |
    | 3 x [ZeroPad(2,2,1), Conv3D(6,(4,4,6)), ReLU, BN]               | 50x50x38, 51x51x35, 52x52x32 x 6 |
    | ZeroPad(1,1,0), Conv3D(6,(3,3,5)), ReLU, BN                     | 52x52x28 x 6        |
    | ZeroPad(1,1,0), Conv3D(6,(3,3,3)), ReLU                         | 52x52x26 x 6        |
    | Conv3D(1,(2,2,2),glorot_normal), ReLU                           | 51x51x25            |

    Hidden convolutions are he_uniform. Conditioning: latent = [E / 100 GeV, theta (rad), noise^254].
    Output in model units (50 x GeV) ** 0.85.
    """

    name: ClassVar[str] = "gan3d_clic51"
    geometry: ClassVar[Geometry] = PRESETS["clic51"]
    transform: ClassVar[CellTransform] = CellTransform(scale=50.0, power=ANGLE_POWER)
    config_class: ClassVar[type[ModelConfig]] = Gan3dClic51Config
    noise_dim: int = 254
    conditions_on_angle: bool = True

    def build_net(self, width: float, bn_eps: float, mode: BatchNormMode = "train") -> nn.Sequential:
        c0, c1 = scaled_channels(8, width), scaled_channels(6, width)
        layers: list[nn.Module] = [
            _DenseToVolume(self.noise_dim + 2, (9, 9, 8), c0),
            nn.Upsample(scale_factor=(6, 6, 6), mode="nearest"),
            Conv3d(c0, c0, (6, 6, 8), init="he_uniform"), nn.ReLU(), batch_norm(3, c0, bn_eps, mode),
        ]
        c_in = c0
        for _ in range(3):
            layers += [_zero_pad(2, 2, 1), Conv3d(c_in, c1, (4, 4, 6), init="he_uniform"), nn.ReLU(),
                       batch_norm(3, c1, bn_eps, mode)]
            c_in = c1
        layers += [_zero_pad(1, 1, 0), Conv3d(c1, c1, (3, 3, 5), init="he_uniform"), nn.ReLU(),
                   batch_norm(3, c1, bn_eps, mode),
                   _zero_pad(1, 1, 0), Conv3d(c1, c1, (3, 3, 3), init="he_uniform"), nn.ReLU(),
                   Conv3d(c1, 1, (2, 2, 2), init="glorot_normal"), nn.ReLU()]
        return nn.Sequential(*layers)

    def latent(self, primary_energy: torch.Tensor, incident_angle: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """[E / 100 GeV, theta (rad), noise (B, 254)]; the output is (B, 51, 51, 25) in (50 x GeV) ** 0.85."""
        return torch.cat([(primary_energy.to(noise.dtype) / 100.0).unsqueeze(1),
                          incident_angle.to(noise.dtype).unsqueeze(1), noise], dim=1)


def measured_angle(energy: torch.Tensor) -> torch.Tensor:
    """Polar angle (rad) measured from the shower barycentres: the Keras ``ecal_angle``, differentiable.

    ``energy``: (B, nx, ny, nz) non-negative cell energies (any scale). With cell centres at index +
    0.5 (lengths in cells; lateral and longitudinal cells are taken as equally long, as in the
    Keras code): the global barycentre (x_ref, y_ref, z_ref); per layer z the barycentres x_mid(z),
    y_mid(z); the slope ``m = (y_mid - y_ref) / sqrt((x_mid - x_ref)^2 + (z - z_ref)^2)`` (sign
    flipped for z < z_ref, floor 1e-7 under the root); the layer angle ``pi/2 - atan(m)``; the
    result is the average over the layers with energy, weighted by z. Empty showers give 100.
    A shower whose axis follows y = y0 + z cot(theta) measures theta.
    """
    _, nx, ny, nz = energy.shape
    dtype, device = energy.dtype, energy.device
    xi = torch.arange(nx, dtype=dtype, device=device) + 0.5
    yi = torch.arange(ny, dtype=dtype, device=device) + 0.5
    zi = torch.arange(nz, dtype=dtype, device=device) + 0.5
    total = energy.sum(dim=(1, 2, 3))
    empty = total == 0
    safe_total = torch.where(empty, torch.ones_like(total), total)
    x_ref = torch.where(empty, 1.0, (energy.sum(dim=(2, 3)) * xi).sum(1) / safe_total).unsqueeze(1)
    y_ref = torch.where(empty, 1.0, (energy.sum(dim=(1, 3)) * yi).sum(1) / safe_total).unsqueeze(1)
    z_ref = torch.where(empty, 1.0, (energy.sum(dim=(1, 2)) * zi).sum(1) / safe_total).unsqueeze(1)
    per_layer = energy.sum(dim=(1, 2))  # (B, nz)
    has_energy = per_layer != 0
    safe_layer = torch.where(has_energy, per_layer, torch.ones_like(per_layer))
    x_mid = torch.where(has_energy, (energy.sum(dim=2) * xi[:, None]).sum(1) / safe_layer, 0.0)
    y_mid = torch.where(has_energy, (energy.sum(dim=1) * yi[:, None]).sum(1) / safe_layer, 0.0)
    z = zi.unsqueeze(0)
    z_proj = torch.sqrt(torch.clamp_min((x_mid - x_ref) ** 2 + (z - z_ref) ** 2, 1e-7))
    slope = (y_mid - y_ref) / z_proj
    slope = torch.where(z < z_ref, -slope, slope)
    weight = z * has_energy.to(dtype)
    weight_sum = weight.sum(1)
    angle = ((math.pi / 2 - torch.atan(slope)) * weight).sum(1) / torch.where(empty, 1.0, weight_sum)
    return torch.where(empty, torch.full_like(angle, 100.0), angle)


class Gan3dClic51Discriminator(_Gan3dDiscriminator):
    """Variable-angle 51x51x25 3DGAN discriminator (input in (50 x GeV) ** 0.85).

    Conv3D(16,(5,6,6),same), LeakyReLU, Dropout; [ZeroPad(0,0,1), Conv3D(8,(5,6,6)), LeakyReLU, BN,
    Dropout] x 2; Conv3D(8,(5,6,6)), LeakyReLU, BN, Dropout; AvgPool3D(2) -> 19x18x7 x 8 = 19 152.
    Heads: Dense(1, sigmoid) ``real``, Dense(1, linear) ``energy`` (E / 100 GeV), and, on
    ``image ** (1/0.85)`` (50 x GeV), the measured ``angle`` (:func:`measured_angle`, rad) and the
    ``ecal_sum`` (50 x GeV).
    """

    generator_class: ClassVar[type[ShowerGenerator]] = Gan3dClic51Generator
    config_class: ClassVar[type[ModelConfig]] = Gan3dClic51Config

    def build_features(self, width: float, bn_eps: float, rate: float,
                       mode: BatchNormMode = "train") -> tuple[nn.Sequential, int]:
        c0, c1 = scaled_channels(16, width), scaled_channels(8, width)

        def bn_drop() -> list[nn.Module]:
            return [leaky_relu(), batch_norm(3, c1, bn_eps, mode), dropout(rate, mode)]

        features = nn.Sequential(
            Conv3d(1, c0, (5, 6, 6), padding="same"), leaky_relu(), dropout(rate, mode),
            _zero_pad(0, 0, 1), Conv3d(c0, c1, (5, 6, 6)), *bn_drop(),
            _zero_pad(0, 0, 1), Conv3d(c1, c1, (5, 6, 6)), *bn_drop(),
            Conv3d(c1, c1, (5, 6, 6)), *bn_drop(),
            nn.AvgPool3d(2),
        )
        return features, c1 * 19 * 18 * 7

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        energy = self.transform.unpowered(image)
        return {**self.learned_heads(image), "ecal_sum": energy.sum(dim=(1, 2, 3)), "angle": measured_angle(energy)}
