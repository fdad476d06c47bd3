"""The Conv2D generators of F. Rehm (``svalleco/3Dgan@frehm/Conv2D``, TF2/Keras, channels-first).

The 25x25x25 volume (x, y, z) is handled as a 2D image: ``(B, x, y, z)`` is read as channels = x,
image = (y, z), exactly as the Keras code reads its ``(B, 1, x, y, z)`` input after
``Reshape([25, 25, 25])``. The other orientations come from Keras ``Permute([3, 1, 2])`` (channels
z, image (x, y): the layer view) and ``Permute([2, 3, 1])`` (channels y, image (z, x)).

- ``conv2d_g1`` "three branches" (``Conv2D/Models_m4_1_ReLU.py``): Dense(125) -> (5, 5, 5); three
  branches with their own weights on the three orientations, un-permuted, concatenated (75 ch),
  Conv2D(25, 3). 2 055 324 parameters.
- ``conv2d_g2`` "25 branches" (``Conv2D_25_branches/PTF_m1_25path.py``): 25 parallel paths from
  the (5, 5, 5) tensor, each giving one 25x25 image; concatenated, Conv2D(25, 5), Conv2D(25, 3).
  2 131 000 parameters.
- ``conv2d_g3`` "single branch, residual" (``Conv2D_1_branch_residual/PTF_m1_2_fullK_1path_residual.py``):
  upsampling to 25x25 x 64 ch, then three serial segments on p1, Permute[3,1,2](p1) and
  Permute[2,3,1](p1 + p2); residual sums p1 + p2 and p1 + p2 + p3 *without* un-permuting (as in
  the Keras code); Conv2D(25, 4), Conv2D(25, 3). 2 397 022 parameters.
- Discriminator (shared design): the three orientations, each through [Conv2D(64,8,same),
  32,6v, 32,5v, 32,4v, 32,3v, 9,3v] with LeakyReLU + BN + Dropout, un-permuted and concatenated
  (27 x 9 x 9 = 2187), Dense(10), LeakyReLU, BN; heads Dense(1, sigmoid), Dense(1, linear), ECAL
  sum. 714 114 parameters (``minibatch_std_group`` > 1 adds one input to Dense(10)); the G3
  variant inserts three 'same' 32-channel blocks (6, 4, 3): 902 658.

Every convolution block is Conv2D (no bias, he_uniform; the first of G1/G3/D: glorot_uniform),
LeakyReLU(0.3), BatchNormalization (momentum 0.99 -> 0.01, eps 1e-3, the TF2 default), Dropout(0.2).
The TF2 training loop called the models without ``training=True``, i.e. in inference mode: the
BatchNorm layers normalised with their moving statistics, never updated and so fixed at (0, 1),
leaving a learnable scale and shift, and Dropout never fired. That is ``batchnorm: inference``, the
default here (``train`` gives batch statistics and active dropout in training, which makes the
discriminator blind: its heads sit right after a BatchNorm of the Dense(10) features, so on the
all-real and all-fake batches it is trained on, the batch mean of each head does not depend on the
input). Cells are in GeV (the Conv2D data are used unscaled). The generator's output is multiplied
by ``output_scale`` (a buffer, saved with the weights): the trainer calibrates it on the data at the
start of training (``output_scale: null``; the untrained network deposits several hundred times
too much energy), a number fixes it, and a generator built outside training uses 1. Conditioning: latent = (E / 100
GeV) * noise^200; with
``condition_on_angle`` the angle theta (rad) is appended to the latent (201 inputs), an extension
of ours. ``latent: scaled_and_raw`` (ours too) appends the same noise unscaled and ln(E / 100 GeV):
with the original latent the noise's share of the Dense's output falls in proportion to E, and so
does the showers' diversity at low energies (a 10 GeV shower gets a tenth of a 100 GeV shower's
noise amplitude); the extra inputs let the Dense set the noise amplitude and a bias per energy.

``output_activation``: the Keras ``generator_LeakyReLU`` (whose name refers to its hidden layers)
ends in a *linear* Conv2D ("linear", the default); ``generator_ReLU`` adds a ReLU ("relu");
"leaky_relu" puts a LeakyReLU(0.3) head. :meth:`Conv2dGenerator.use_relu_output` switches to ReLU
in place, keeping the weights (the Keras trainer's rebuild at ``ReLU_epoch``).
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import numpy as np
import torch
from pydantic import Field
from torch import nn

from fastshower.geometry import PRESETS, Geometry
from fastshower.models.base import CellTransform, ModelConfig, ShowerDiscriminator, ShowerGenerator
from fastshower.models.layers import (
    KERAS_BN_EPS,
    BatchNormMode,
    Conv2d,
    ConvTranspose2d,
    batch_norm,
    dense,
    dropout,
    leaky_relu,
    minibatch_std,
    scaled_channels,
)

OutputActivation = Literal["linear", "leaky_relu", "relu"]
#: The grid edge (cells); also the channel count of the 2D view.
N = 25
#: floor of the layer fractions in the log of the longitudinal correction (layers that hold less
#: than about a millionth of the shower are left where they are)
LAYER_FRACTION_FLOOR = 1e-6
#: the longitudinal correction's spread factor exp(gain) is clamped to [1 / LAYER_GAIN_MAX, LAYER_GAIN_MAX]
LAYER_GAIN_MAX = 4.0
#: the lateral correction: cells whose centre lies further than this from the central cell's centre
#: (in cell widths) are the layer's halo, the others its core
LATERAL_CORE_RADIUS_CELLS = 1.5
#: halo fractions h are kept within [HALO_FRACTION_FLOOR, 1 - HALO_FRACTION_FLOOR] in logit(h)
HALO_FRACTION_FLOOR = 1e-4
#: the lateral correction's ring factors are clamped to [1 / RING_FACTOR_MAX, RING_FACTOR_MAX]
RING_FACTOR_MAX = 5.0
#: noise components of a generator with ``symmetry: normal_incidence`` beyond the network's, whose
#: signs choose the symmetry of the grid (x flip, y flip, x <-> y transpose)
SYMMETRY_NOISE = 3
#: noise components per layer of a generator with the width correction (after the network's and the
#: symmetry's): two for the direction of the far deposit, one for the rank of a one-cell layer
WIDTH_NOISE_PER_LAYER = 3
#: the width correction's far deposit lies at D^2 = V + WIDTH_SPOT_REACH (V' - V) from the layer's centre
#: (V, V' the layer's radial variance before and after, mm^2) and carries about 1 / WIDTH_SPOT_REACH of the
#: layer's energy where the layer had one cell: a small deposit far out (measured on Geant4 showers of 7-14 GeV:
#: 16 keeps the mean lateral profile where 4, two equal deposits, spoils it)
WIDTH_SPOT_REACH = 16.0


class Conv2dConfig(ModelConfig):
    """Conv2D model options: ``condition_on_angle`` (append theta to the latent; default off),
    ``output_activation`` of the generator, ``dropout`` rate and BatchNorm ``bn_eps`` (G and D),
    ``batchnorm`` semantics (:data:`fastshower.models.layers.BatchNormMode`; ``inference`` as the
    TF2 loop ran them), ``output_scale`` of the generator (None: calibrated by the trainer),
    ``response_correction``: coefficients c_k of the generator's energy-dependent response
    correction ln r(E) = sum_k c_k ln(E / 100 GeV)^k (None: none; set by
    :func:`fastshower.train.calibration.calibrate_response_by_energy`),
    ``resolution_centre`` / ``resolution_scale``: the generator's resolution correction (None: none;
    set by :func:`fastshower.train.calibration.calibrate_resolution_by_energy`): each shower's
    deposited fraction r = E_dep / E is moved to c(E) + s(E) (r - c(E)) by a factor on all its
    cells, with ln c(E) and ln s(E) polynomials in ln(E / 100 GeV) of these coefficients (c the
    generator's mean fraction, so the mean response is kept and the width is scaled by s),
    ``layer_knots`` and ``layer_centre`` / ``layer_target`` / ``layer_gain``: the generator's
    longitudinal correction (None: none; set by
    :func:`fastshower.train.calibration.calibrate_layers_by_energy`): each shower's log layer fraction
    g = ln(E_layer / E_dep + LAYER_FRACTION_FLOOR) is moved to target(E) + exp(gain(E)) (g - centre(E))
    (centre the generator's median of g, target the data's, exp(gain) the ratio of their spreads,
    within [1/4, 4]), each layer's cells scaled by one factor and the shower renormalised to its
    deposited energy (the total, the response and resolution, and the lateral shapes are kept);
    centre, target and gain are ``(n_layers, n_knots)`` values at ``layer_knots`` = ln(E / 100 GeV),
    linearly interpolated in ln E and constant beyond the end knots,
    ``hits_knots`` and ``hits_centre`` / ``hits_target`` / ``hits_gain``: the generator's hit-count
    correction (None: none; set by :func:`fastshower.train.calibration.calibrate_hits_by_energy`):
    each shower's number n of cells at or above the readout threshold is moved in ln n to
    target(E) + exp(gain(E)) (ln n - centre(E)) (values at the knots ln(E / 100 GeV), linear between
    them, exp(gain) within [1/4, 4]); where that asks for fewer hits, only the largest cells are kept
    (the smallest hits zeroed, the rest untouched; it never adds hits),
    ``cell_knots`` and ``cell_quantiles_generator`` / ``cell_quantiles_data``: the generator's
    cell-energy correction (None: none; set by
    :func:`fastshower.train.calibration.calibrate_cells_by_energy`), applied after the longitudinal
    one: in each layer every cell with energy is moved in ln(E_cell / GeV) by the piecewise-linear
    map that takes the generator's quantiles of ln E_cell (cells at or above the readout threshold)
    to the data's (slope 1 beyond the end quantiles), then the layer renormalised to its energy: the
    spectrum of cell energies in each layer is the data's, the layer energies and the cells that
    have energy are kept; the tables are ``(n_layers * n_quantiles, n_knots)`` (layer-major, each
    layer's quantiles increasing) at ``cell_knots`` = ln(E / 100 GeV), interpolated as the layer
    correction's,
    ``lateral_knots`` and ``halo_centre`` / ``halo_target`` / ``halo_gain`` / ``ring_log_factor``:
    the generator's lateral correction (None: none; set by
    :func:`fastshower.train.calibration.calibrate_lateral_by_energy`), applied after the longitudinal
    one: in each layer of each shower, the halo fraction h (energy of the cells further than
    LATERAL_CORE_RADIUS_CELLS from the grid's central cell / the layer's) is moved in logit(h) to
    target(E) + exp(gain(E)) (logit(h) - centre(E)) by one factor on the halo's cells and one on the
    core's (the layer's energy kept; nothing moves where either part is empty), then each cell is
    scaled by the factor of its ring (its distance to the central cell in cell widths, rounded; one
    ln factor per layer and ring, within ln RING_FACTOR_MAX) and the layer renormalised to its energy
    before it: the halo's fluctuations are the data's and the mean radial profile of each layer is
    the data's where the network leaves energy; it cannot put energy where the network leaves none;
    the halo tables are ``(n_layers, n_knots)``, the ring table ``(n_layers * n_rings, n_knots)``
    (layer-major), all given at ``lateral_knots`` = ln(E / 100 GeV) and interpolated as the layer
    correction's,
    ``peak_knots`` and ``peak_centre`` / ``peak_target`` / ``peak_gain``: the generator's peak-sharing
    correction (None: none; set by :func:`fastshower.train.calibration.calibrate_peak_by_energy`),
    applied after the cell-energy one and before the lateral one (whose ring factors then put the
    mean radial profile back to the data's): in each layer of each shower with two cells or more, the fraction
    r of the layer's energy outside its largest cell is moved in logit(r) (within
    [HALO_FRACTION_FLOOR, 1 - HALO_FRACTION_FLOOR]) to target(E) + exp(gain(E)) (logit(r) -
    centre(E)), by one factor on the largest cell and one on the others (the layer's energy kept; r
    never beyond the value at which the second cell would become the largest): how the energy of
    the layer is shared between its peak and the rest fluctuates from shower to shower as in the
    data, which sets the spread of the layers' widths; the tables are ``(n_layers, n_knots)`` at
    ``peak_knots`` = ln(E / 100 GeV), interpolated as the layer correction's,
    ``width_knots`` and ``width_single_generator`` / ``width_single_data`` / ``width_quantiles_generator`` /
    ``width_quantiles_data``: the generator's width correction (None: none; set by
    :func:`fastshower.train.calibration.calibrate_width_by_energy`), applied after the peak-sharing one
    and before the lateral one (whose ring factors then put each layer's mean radial profile back to
    the data's): in each layer of each shower the radial width w = sqrt(var x + var y) (mm,
    cells at or above the readout threshold) is mapped to the data's by its rank: one-cell layers (w =
    0, fraction ``single`` of the layers with energy) get a rank drawn uniformly within that fraction
    from the layer's own noise, the others the generator's quantile of w among layers of two cells or
    more; the rank gives the data's width w' (0 below the data's one-cell fraction). A narrower layer
    moves a fraction of its energy to its largest cell, a wider one to one cell (the far deposit) at
    D^2 = V + WIDTH_SPOT_REACH (V' - V) from the layer's centre (V = w^2, V' = w'^2) in a direction
    drawn from two noise components; both fractions solve (1 - a) V + a (1 - a) d^2 = V' for the
    chosen cell (d its distance to the centre); the layer's energy is kept. The noise grows by
    WIDTH_NOISE_PER_LAYER components a layer, after the network's and the symmetry's. Layers the
    calibration leaves alone have equal generator and data tables (the identity); the single tables
    are ``(n_layers, n_knots)``, the quantile tables ``(n_layers * n_quantiles, n_knots)`` (layer-major,
    increasing), all at ``width_knots`` = ln(E / 100 GeV), interpolated as the layer correction's,
    ``symmetry``: ``normal_incidence`` applies to each shower one of the 8 symmetries of the square
    grid (x flip, y flip, x <-> y transpose and their products, about the central cell) chosen by
    the signs of SYMMETRY_NOISE extra noise components (noise_dim 203), so that the generated
    distribution has the symmetry of a beam at normal incidence on the centre of the grid whatever
    the network makes (``none``: the network's output as it is),
    ``minibatch_std_group``: when > 1 the discriminator also sees the spread of its features within
    groups of that many showers of similar energy (:func:`fastshower.models.layers.minibatch_std`;
    an extension of ours against mode collapse, 0 = off as in the original),
    ``latent``: ``scaled`` = (E / 100 GeV) x noise (the original), ``scaled_and_raw`` = that, then
    theta when conditioned on the angle, then the noise unscaled and ln(E / 100 GeV) (401 or 402
    Dense inputs)."""

    condition_on_angle: bool = False
    output_activation: OutputActivation = "linear"
    dropout: float = Field(default=0.2, ge=0, lt=1)
    bn_eps: float = Field(default=KERAS_BN_EPS, gt=0)
    batchnorm: BatchNormMode = "inference"
    output_scale: float | None = Field(default=None, gt=0)
    response_correction: tuple[float, ...] | None = None
    resolution_centre: tuple[float, ...] | None = None
    resolution_scale: tuple[float, ...] | None = None
    layer_knots: tuple[float, ...] | None = None
    layer_centre: tuple[tuple[float, ...], ...] | None = None
    layer_target: tuple[tuple[float, ...], ...] | None = None
    layer_gain: tuple[tuple[float, ...], ...] | None = None
    hits_knots: tuple[float, ...] | None = None
    hits_centre: tuple[float, ...] | None = None
    hits_target: tuple[float, ...] | None = None
    hits_gain: tuple[float, ...] | None = None
    cell_knots: tuple[float, ...] | None = None
    cell_quantiles_generator: tuple[tuple[float, ...], ...] | None = None
    cell_quantiles_data: tuple[tuple[float, ...], ...] | None = None
    lateral_knots: tuple[float, ...] | None = None
    halo_centre: tuple[tuple[float, ...], ...] | None = None
    halo_target: tuple[tuple[float, ...], ...] | None = None
    halo_gain: tuple[tuple[float, ...], ...] | None = None
    ring_log_factor: tuple[tuple[float, ...], ...] | None = None
    peak_knots: tuple[float, ...] | None = None
    peak_centre: tuple[tuple[float, ...], ...] | None = None
    peak_target: tuple[tuple[float, ...], ...] | None = None
    peak_gain: tuple[tuple[float, ...], ...] | None = None
    width_knots: tuple[float, ...] | None = None
    width_single_generator: tuple[tuple[float, ...], ...] | None = None
    width_single_data: tuple[tuple[float, ...], ...] | None = None
    width_quantiles_generator: tuple[tuple[float, ...], ...] | None = None
    width_quantiles_data: tuple[tuple[float, ...], ...] | None = None
    symmetry: Literal["none", "normal_incidence"] = "none"
    minibatch_std_group: int = Field(default=0, ge=0)
    latent: Literal["scaled", "scaled_and_raw"] = "scaled"


def _block(c_in: int, c_out: int, kernel: int, padding: str, cfg: Conv2dConfig,
           init: str = "he_uniform", bias: bool = False) -> list[nn.Module]:
    """Conv2D (no bias) -> LeakyReLU(0.3) -> BN -> Dropout."""
    return [Conv2d(c_in, c_out, kernel, padding=padding, bias=bias, init=init), leaky_relu(),  # type: ignore[arg-type]
            batch_norm(2, c_out, cfg.bn_eps, cfg.batchnorm), dropout(cfg.dropout, cfg.batchnorm)]


def _layer_view(x: torch.Tensor) -> torch.Tensor:
    """Keras ``Permute([3, 1, 2])``: (B, a, b, c) -> (B, c, a, b)."""
    return x.permute(0, 3, 1, 2)


def _side_view(x: torch.Tensor) -> torch.Tensor:
    """Keras ``Permute([2, 3, 1])``: (B, a, b, c) -> (B, b, c, a)."""
    return x.permute(0, 2, 3, 1)


def _output_head(kind: OutputActivation) -> nn.Module:
    return {"linear": nn.Identity(), "relu": nn.ReLU(), "leaky_relu": leaky_relu()}[kind]


class Conv2dGenerator(ShowerGenerator):
    """Common part of the Conv2D generators: latent, Dense(125) -> (5, 5, 5), output head."""

    geometry: ClassVar[Geometry] = PRESETS["clic25"]
    transform: ClassVar[CellTransform] = CellTransform(scale=1.0)
    config: Conv2dConfig

    def __init__(self, config: Conv2dConfig | None = None) -> None:
        config = config or Conv2dConfig()
        super().__init__(config)
        self.network_noise_dim = 200
        self.conditions_on_angle = config.condition_on_angle
        self._check_symmetry(config.symmetry)
        self._set_noise_dim()
        extra = self.network_noise_dim + 1 if config.latent == "scaled_and_raw" else 0
        self.dense = dense(self.network_noise_dim + int(config.condition_on_angle) + extra, 5 * 5 * 5)
        self.output_head = _output_head(config.output_activation)
        self.register_buffer("output_scale", torch.tensor(config.output_scale or 1.0))
        self._register_load_state_dict_pre_hook(_default_output_scale)

    @property
    def needs_output_scale(self) -> bool:
        """True when the config leaves the output scale to be calibrated (``output_scale: null``)."""
        return self.config.output_scale is None

    def set_output_scale(self, value: float) -> None:
        """Fix the output multiplier (the config follows, so a saved generator records it)."""
        self.output_scale.fill_(float(value))
        self.config = self.config.model_copy(update={"output_scale": float(value)})

    def set_response_correction(self, coefficients: list[float] | tuple[float, ...]) -> None:
        """Set the energy-dependent response correction (see :class:`Conv2dConfig`; the config
        follows, so a saved generator records it)."""
        values = tuple(float(c) for c in coefficients)
        self.config = self.config.model_copy(update={"response_correction": values or None})

    def response_factor(self, primary_energy: torch.Tensor) -> torch.Tensor:
        """``(B,)`` factor on the output in model units: the GeV response correction r(E) raised to
        ``cell_power`` (the ReLU output is positive-homogeneous: x r^p in model units is x r in GeV)."""
        return torch.exp(self.transform.power * _log_polynomial(self.config.response_correction or (), primary_energy))

    def set_resolution_correction(self, centre: list[float] | tuple[float, ...] | None,
                                  scale: list[float] | tuple[float, ...] | None) -> None:
        """Set (or with None / empty, remove) the resolution correction (see :class:`Conv2dConfig`)."""
        centre = tuple(float(c) for c in centre or ()) or None
        scale = tuple(float(c) for c in scale or ()) or None
        if (centre is None) != (scale is None):
            raise ValueError("the resolution correction needs both its centre and its scale coefficients")
        self.config = self.config.model_copy(update={"resolution_centre": centre, "resolution_scale": scale})

    def resolution_factor(self, showers_gev: torch.Tensor, primary_energy: torch.Tensor) -> torch.Tensor:
        """``(B,)`` factor on each shower (GeV) that moves its deposited fraction r to
        c + s (r - c) (see :class:`Conv2dConfig`); 1 for an empty shower, within [1/4, 4]."""
        e = primary_energy.float()
        r = showers_gev.float().sum(dim=(1, 2, 3)) / e
        centre = torch.exp(_log_polynomial(self.config.resolution_centre or (), e))
        scale = torch.exp(_log_polynomial(self.config.resolution_scale or (), e))
        target = centre + scale * (r - centre)
        return torch.where(r > 0, (target / r.clamp_min(1e-30)).clamp(0.25, 4.0), torch.ones_like(r))

    def set_layer_correction(self, knots: list | tuple | None, centre: list | tuple | None = None,
                             target: list | tuple | None = None, gain: list | tuple | None = None) -> None:
        """Set (or with None, remove) the longitudinal correction (see :class:`Conv2dConfig`):
        increasing ``knots`` (ln(E / 100 GeV)) and three ``(n_layers, n_knots)`` tables of values."""
        if knots is None:
            if any(t is not None for t in (centre, target, gain)):
                raise ValueError("the layer correction's tables need its knots")
            self.config = self.config.model_copy(update=dict.fromkeys(
                ("layer_knots", "layer_centre", "layer_target", "layer_gain")))
            return
        knots = _checked_knots(knots, "layer")
        if centre is None or target is None or gain is None:
            raise ValueError("the layer correction needs its centre, target and gain values")
        tables = [tuple(tuple(float(c) for c in row) for row in t) for t in (centre, target, gain)]
        if not all(len(t) == self.geometry.n_layers and all(len(row) == len(knots) for row in t) for t in tables):
            raise ValueError(f"the layer correction needs ({self.geometry.n_layers} layers, {len(knots)} knots) tables")
        self.config = self.config.model_copy(update=dict(zip(
            ("layer_knots", "layer_centre", "layer_target", "layer_gain"), (knots, *tables))))

    def layer_factor(self, showers_gev: torch.Tensor, primary_energy: torch.Tensor) -> torch.Tensor:
        """``(B, n_layers)`` factor on each layer's cells (GeV) of the longitudinal correction (see
        :class:`Conv2dConfig`); each within [1/16, 16] before the renormalisation to the shower's
        deposited energy; 1 for empty layers and showers."""
        s = showers_gev.float()
        layer = s.sum(dim=(1, 2))
        total = layer.sum(dim=1, keepdim=True)
        fraction = layer / total.clamp_min(1e-30)
        c = self.config
        moved = _moved(c.layer_knots or (), (c.layer_centre or (), c.layer_target or (), c.layer_gain or ()),
                       torch.log(fraction + LAYER_FRACTION_FLOOR), primary_energy)
        new_fraction = (torch.exp(moved.clamp(max=0.0)) - LAYER_FRACTION_FLOOR).clamp_min(0.0)
        one = torch.ones_like(layer)
        ratio = torch.where(layer > 0, new_fraction / fraction.clamp_min(1e-30), one).clamp(1 / 16, 16.0)
        ratio = ratio * total / (layer * ratio).sum(dim=1, keepdim=True).clamp_min(1e-30)
        return torch.where(total > 0, ratio, one)

    def set_hits_correction(self, knots: list | tuple | None, centre: list | tuple | None = None,
                            target: list | tuple | None = None, gain: list | tuple | None = None) -> None:
        """Set (or with None, remove) the hit-count correction (see :class:`Conv2dConfig`): increasing
        ``knots`` (ln(E / 100 GeV)) and the values of centre, target and gain (ln of hit counts) at them."""
        names = ("hits_knots", "hits_centre", "hits_target", "hits_gain")
        if knots is None:
            self.config = self.config.model_copy(update=dict.fromkeys(names))
            return
        knots = _checked_knots(knots, "hits")
        values = [tuple(float(v) for v in t) for t in (centre or (), target or (), gain or ())]
        if any(len(v) != len(knots) for v in values):
            raise ValueError(f"the hits correction needs centre, target and gain at its {len(knots)} knots")
        self.config = self.config.model_copy(update=dict(zip(names, (knots, *values))))

    def hits_kept(self, showers_gev: torch.Tensor, primary_energy: torch.Tensor) -> torch.Tensor:
        """``(B, x, y, z)`` bool: the cells the hit-count correction keeps (see :class:`Conv2dConfig`):
        all but the smallest hits of showers asked to have fewer; cells below the threshold are kept
        (they are not hits and stay as they are)."""
        s = showers_gev.float()
        hit = s >= max(self.geometry.readout_threshold_gev, 1e-30)
        n = hit.flatten(1).sum(dim=1).float()
        c = self.config
        moved = _moved(c.hits_knots or (), ((c.hits_centre or (),), (c.hits_target or (),), (c.hits_gain or (),)),
                       torch.log(n.clamp_min(1.0)).unsqueeze(1), primary_energy)[:, 0]
        wanted = torch.minimum(torch.round(torch.exp(moved)), n).clamp_min(1.0)
        ordered = torch.sort(s.flatten(1), dim=1, descending=True).values
        smallest_kept = torch.gather(ordered, 1, (wanted.long() - 1).unsqueeze(1))
        return ~hit | (s >= smallest_kept.view(-1, 1, 1, 1))

    def set_cell_correction(self, knots: list | tuple | None, generator_quantiles: list | tuple | None = None,
                            data_quantiles: list | tuple | None = None) -> None:
        """Set (or with None, remove) the cell-energy correction (see :class:`Conv2dConfig`):
        increasing ``knots`` (ln(E / 100 GeV)) and two ``(n_layers * n_quantiles, n_knots)`` tables of
        ln(E_cell / GeV) quantiles, each layer's increasing at every knot."""
        names = ("cell_knots", "cell_quantiles_generator", "cell_quantiles_data")
        if knots is None:
            if generator_quantiles is not None or data_quantiles is not None:
                raise ValueError("the cell correction's tables need its knots")
            self.config = self.config.model_copy(update=dict.fromkeys(names))
            return
        knots = _checked_knots(knots, "cell")
        if generator_quantiles is None or data_quantiles is None:
            raise ValueError("the cell correction needs the generator's and the data's quantiles")
        tables = [np.asarray(t, dtype=np.float64) for t in (generator_quantiles, data_quantiles)]
        n_layers = self.geometry.n_layers
        if any(t.ndim != 2 or t.shape[1] != len(knots) or t.shape[0] % n_layers or t.shape[0] < 2 * n_layers
               for t in tables) or tables[0].shape != tables[1].shape:
            raise ValueError(f"the cell correction needs two ({n_layers} layers x n_quantiles >= 2, "
                             f"{len(knots)} knots) tables of the same shape")
        if any((np.diff(t.reshape(n_layers, -1, len(knots)), axis=1) < 0).any() for t in tables):
            raise ValueError("the cell correction's quantiles must increase within each layer")
        self.config = self.config.model_copy(update=dict(zip(
            names, (knots, *(tuple(tuple(float(v) for v in row) for row in t) for t in tables)))))

    def cell_factor(self, showers_gev: torch.Tensor, primary_energy: torch.Tensor) -> torch.Tensor:
        """``(B, x, y, z)`` factor on each cell (GeV) of the cell-energy correction (see
        :class:`Conv2dConfig`), each layer renormalised to its energy; 1 for empty cells."""
        s = showers_gev.float()
        nz = self.geometry.n_layers
        c = self.config
        u = torch.log(primary_energy.float() / 100.0)
        tables = (c.cell_quantiles_generator or (), c.cell_quantiles_data or ())
        q_gen, q_data = (_interpolate_layers(c.cell_knots or (), t, u).view(-1, nz, len(t) // nz).unsqueeze(1)
                         .unsqueeze(1) for t in tables)  # (B, 1, 1, z, n_quantiles)
        v = torch.log(s.clamp_min(1e-30))
        # the map, segment after segment (a (B, x, y, z, n_quantiles) tensor would not fit in memory at batch 256)
        mapped = q_data[..., 0] + (v - q_gen[..., 0]).clamp_max(0.0) + (v - q_gen[..., -1]).clamp_min(0.0)
        for j in range(q_gen.shape[-1] - 1):
            width = (q_gen[..., j + 1] - q_gen[..., j]).clamp_min(1e-6)
            step = torch.minimum((v - q_gen[..., j]).clamp_min(0.0), width)
            mapped = mapped + (q_data[..., j + 1] - q_data[..., j]) / width * step
        factor = torch.where(s > 0, torch.exp(mapped - v), torch.ones_like(s))
        layer, after = s.sum(dim=(1, 2)), (s * factor).sum(dim=(1, 2))
        scale = torch.where(after > 0, layer / after.clamp_min(1e-30), torch.ones_like(layer))
        return factor * scale.view(-1, 1, 1, nz)

    def set_lateral_correction(self, knots: list | tuple | None, centre: list | tuple | None = None,
                               target: list | tuple | None = None, gain: list | tuple | None = None,
                               ring_log_factor: list | tuple | None = None) -> None:
        """Set (or with None, remove) the lateral correction (see :class:`Conv2dConfig`): increasing
        ``knots`` (ln(E / 100 GeV)), three ``(n_layers, n_knots)`` halo tables and the ``(n_layers *
        n_rings, n_knots)`` ring table (None: ln factor 0, halo only)."""
        names = ("lateral_knots", "halo_centre", "halo_target", "halo_gain", "ring_log_factor")
        if knots is None:
            if any(t is not None for t in (centre, target, gain, ring_log_factor)):
                raise ValueError("the lateral correction's tables need its knots")
            self.config = self.config.model_copy(update=dict.fromkeys(names))
            return
        knots = _checked_knots(knots, "lateral")
        if centre is None or target is None or gain is None:
            raise ValueError("the lateral correction needs its halo centre, target and gain values")
        n_rings = int(lateral_rings(*self.geometry.shape[:2]).max()) + 1
        rings = np.zeros((self.geometry.n_layers * n_rings, len(knots))) if ring_log_factor is None else ring_log_factor
        tables = [tuple(tuple(float(c) for c in row) for row in t) for t in (centre, target, gain, rings)]
        rows = (self.geometry.n_layers,) * 3 + (self.geometry.n_layers * n_rings,)
        if not all(len(t) == n and all(len(row) == len(knots) for row in t) for t, n in zip(tables, rows)):
            raise ValueError(f"the lateral correction needs ({self.geometry.n_layers} layers, {len(knots)} knots) "
                             f"halo tables and a ({self.geometry.n_layers} x {n_rings} rings, {len(knots)} knots) "
                             "ring table")
        self.config = self.config.model_copy(update=dict(zip(names, (knots, *tables))))

    def lateral_factor(self, showers_gev: torch.Tensor, primary_energy: torch.Tensor) -> torch.Tensor:
        """``(B, x, y, z)`` factor on each cell (GeV) of the lateral correction (see
        :class:`Conv2dConfig`): the halo's and the core's factors times the ring's, each layer
        renormalised to its energy; 1 in empty layers."""
        s = showers_gev.float()
        nx, ny, nz = self.geometry.shape  # static sizes (an ONNX trace makes s.shape tensors)
        halo = torch.from_numpy(lateral_halo(nx, ny)).to(s.device).view(1, nx, ny, 1)
        layer = s.sum(dim=(1, 2))  # (B, nz)
        halo_energy = (s * halo).sum(dim=(1, 2))
        h = halo_energy / layer.clamp_min(1e-30)
        logit = _clamped_logit(h)
        c = self.config
        moved = _moved(c.lateral_knots or (), (c.halo_centre or (), c.halo_target or (), c.halo_gain or ()),
                       logit, primary_energy)
        new_h = torch.sigmoid(moved)
        both = (halo_energy > 0) & (layer - halo_energy > 0)
        one = torch.ones_like(layer)
        halo_factor = torch.where(both, new_h / h.clamp_min(1e-30), one)
        core_factor = torch.where(both, (1 - new_h) / (1 - h).clamp_min(1e-30), one)
        factor = halo * halo_factor.view(-1, 1, 1, nz) + (1 - halo) * core_factor.view(-1, 1, 1, nz)
        # ring factors: (B, nz * n_rings) -> per cell through the one-hot ring map (ONNX-safe matmul)
        rings = lateral_rings(nx, ny)
        one_hot = torch.from_numpy(np.eye(int(rings.max()) + 1, dtype=np.float32)[rings.ravel()]).to(s.device)
        u = torch.log(primary_energy.float() / 100.0)
        ln_ring = _interpolate_layers(c.lateral_knots or (), c.ring_log_factor or (), u).view(-1, nz, one_hot.shape[1])
        ln_cell = torch.matmul(ln_ring, one_hot.T).view(-1, nz, nx, ny).permute(0, 2, 3, 1)
        factor = factor * torch.exp(ln_cell.clamp(-float(np.log(RING_FACTOR_MAX)), float(np.log(RING_FACTOR_MAX))))
        after = (s * factor).sum(dim=(1, 2))
        return factor * torch.where(after > 0, layer / after.clamp_min(1e-30), one).view(-1, 1, 1, nz)

    def set_peak_correction(self, knots: list | tuple | None, centre: list | tuple | None = None,
                            target: list | tuple | None = None, gain: list | tuple | None = None) -> None:
        """Set (or with None, remove) the peak-sharing correction (see :class:`Conv2dConfig`):
        increasing ``knots`` (ln(E / 100 GeV)) and three ``(n_layers, n_knots)`` tables."""
        names = ("peak_knots", "peak_centre", "peak_target", "peak_gain")
        if knots is None:
            if any(t is not None for t in (centre, target, gain)):
                raise ValueError("the peak correction's tables need its knots")
            self.config = self.config.model_copy(update=dict.fromkeys(names))
            return
        knots = _checked_knots(knots, "peak")
        if centre is None or target is None or gain is None:
            raise ValueError("the peak correction needs its centre, target and gain values")
        tables = [tuple(tuple(float(c) for c in row) for row in t) for t in (centre, target, gain)]
        if not all(len(t) == self.geometry.n_layers and all(len(row) == len(knots) for row in t) for t in tables):
            raise ValueError(f"the peak correction needs three ({self.geometry.n_layers} layers, {len(knots)} knots) "
                             "tables")
        if not np.isfinite(np.asarray(tables)).all():
            raise ValueError("the peak correction's tables must be finite")
        self.config = self.config.model_copy(update=dict(zip(names, (knots, *tables))))

    def peak_factor(self, showers_gev: torch.Tensor, primary_energy: torch.Tensor) -> torch.Tensor:
        """``(B, x, y, z)`` factor on each cell (GeV) of the peak-sharing correction (see
        :class:`Conv2dConfig`): one on each layer's largest cell, one on its other cells, the layer
        renormalised to its energy; 1 in layers of one cell or none."""
        s = showers_gev.float()
        nx, ny, nz = self.geometry.shape  # static sizes (an ONNX trace makes s.shape tensors)
        layer = s.sum(dim=(1, 2))  # (B, nz)
        top = torch.topk(s.permute(0, 3, 1, 2).reshape(-1, nz, nx * ny), 2, dim=2).values  # (B, nz, 2)
        peak, second = top[..., 0], top[..., 1]
        rest = layer - peak
        r = rest / layer.clamp_min(1e-30)
        logit = _clamped_logit(r)
        c = self.config
        moved = _moved(c.peak_knots or (), (c.peak_centre or (), c.peak_target or (), c.peak_gain or ()),
                       logit, primary_energy)
        # the largest cell stays the largest: r' <= rest / (rest + second)
        new_r = torch.minimum(torch.sigmoid(moved), rest / (rest + second).clamp_min(1e-30))
        both = (second > 0) & (rest > 0)
        one = torch.ones_like(layer)
        peak_factor = torch.where(both, (1 - new_r) / (1 - r).clamp_min(1e-30), one)
        rest_factor = torch.where(both, new_r / r.clamp_min(1e-30), one)
        is_peak = s >= peak.view(-1, 1, 1, nz)
        factor = torch.where(is_peak, peak_factor.view(-1, 1, 1, nz), rest_factor.view(-1, 1, 1, nz))
        after = (s * factor).sum(dim=(1, 2))
        return factor * torch.where(after > 0, layer / after.clamp_min(1e-30), one).view(-1, 1, 1, nz)

    def set_width_correction(self, knots: list | tuple | None, single_generator: list | tuple | None = None,
                             single_data: list | tuple | None = None, quantiles_generator: list | tuple | None = None,
                             quantiles_data: list | tuple | None = None) -> None:
        """Set (or with None, remove) the width correction (see :class:`Conv2dConfig`): increasing
        ``knots`` (ln(E / 100 GeV)), two ``(n_layers, n_knots)`` one-cell fractions in [0, 1] and two
        ``(n_layers * n_quantiles, n_knots)`` tables of widths (mm), each layer's increasing at every
        knot. The noise dimension follows (WIDTH_NOISE_PER_LAYER a layer more with it)."""
        names = ("width_knots", "width_single_generator", "width_single_data", "width_quantiles_generator",
                 "width_quantiles_data")
        tables_in = (single_generator, single_data, quantiles_generator, quantiles_data)
        if knots is None:
            if any(t is not None for t in tables_in):
                raise ValueError("the width correction's tables need its knots")
            self.config = self.config.model_copy(update=dict.fromkeys(names))
            self._set_noise_dim()
            return
        knots = _checked_knots(knots, "width")
        if any(t is None for t in tables_in):
            raise ValueError("the width correction needs the generator's and the data's one-cell fractions and "
                             "width quantiles")
        tables = [np.asarray(t, dtype=np.float64) for t in tables_in]
        n_layers = self.geometry.n_layers
        if any(t.shape != (n_layers, len(knots)) for t in tables[:2]) or not all(
                ((t >= 0) & (t <= 1)).all() for t in tables[:2]):
            raise ValueError(f"the width correction needs two ({n_layers} layers, {len(knots)} knots) one-cell "
                             "fractions in [0, 1]")
        q = tables[2:]
        if any(t.ndim != 2 or t.shape[1] != len(knots) or t.shape[0] % n_layers or t.shape[0] < 2 * n_layers
               for t in q) or q[0].shape != q[1].shape:
            raise ValueError(f"the width correction needs two ({n_layers} layers x n_quantiles >= 2, "
                             f"{len(knots)} knots) width tables of the same shape")
        if any((np.diff(t.reshape(n_layers, -1, len(knots)), axis=1) < 0).any() or (t < 0).any() for t in q):
            raise ValueError("the width correction's quantiles must be >= 0 and increase within each layer")
        if not all(np.isfinite(t).all() for t in tables):
            raise ValueError("the width correction's tables must be finite")
        self.config = self.config.model_copy(update=dict(zip(
            names, (knots, *(tuple(tuple(float(v) for v in row) for row in t) for t in tables)))))
        self._set_noise_dim()

    def width_moved(self, showers_gev: torch.Tensor, primary_energy: torch.Tensor, noise: torch.Tensor
                    ) -> torch.Tensor:
        """``(B, x, y, z)`` showers (GeV) after the width correction (see :class:`Conv2dConfig`); its
        noise is the last WIDTH_NOISE_PER_LAYER * n_layers components of ``noise``."""
        s = showers_gev.float()
        nx, ny, nz = self.geometry.shape  # static sizes (an ONNX trace makes s.shape tensors)
        dx, dy = self.geometry.cell_size_mm or (1.0, 1.0)
        c = self.config
        x = ((torch.arange(nx, device=s.device, dtype=torch.float32) - (nx - 1) / 2) * dx).view(1, nx, 1, 1)
        y = ((torch.arange(ny, device=s.device, dtype=torch.float32) - (ny - 1) / 2) * dy).view(1, 1, ny, 1)
        seen = torch.where(s >= max(self.geometry.readout_threshold_gev, 1e-30), s, torch.zeros_like(s))
        energy = seen.sum(dim=(1, 2))  # (B, nz)
        total = energy.clamp_min(1e-30)
        cx, cy = (seen * x).sum(dim=(1, 2)) / total, (seen * y).sum(dim=(1, 2)) / total
        variance = ((seen * (x * x + y * y)).sum(dim=(1, 2)) / total - cx * cx - cy * cy).clamp_min(0.0)
        cells = (seen > 0).float().sum(dim=(1, 2))
        z = noise[:, noise.shape[1] - WIDTH_NOISE_PER_LAYER * nz:].view(-1, nz, WIDTH_NOISE_PER_LAYER)
        u = torch.log(primary_energy.float() / 100.0)
        single_gen, single_data = (_interpolate_layers(c.width_knots or (), t or (), u)
                                   for t in (c.width_single_generator, c.width_single_data))
        n_q = len(c.width_quantiles_generator or ()) // nz
        q_gen, q_data = (_interpolate_layers(c.width_knots or (), t or (), u).view(-1, nz, n_q)
                         for t in (c.width_quantiles_generator, c.width_quantiles_data))
        width = variance.sqrt()
        uniform = 0.5 * (1.0 + torch.erf(z[..., 2] / math.sqrt(2.0)))
        rank = torch.where(cells < 1.5, uniform * single_gen, single_gen + (1 - single_gen) * _table_cdf(width, q_gen))
        above = ((rank - single_data) / (1 - single_data).clamp_min(1e-6)).clamp(0.0, 1.0)
        # slope 1 beyond the generator's narrowest and widest
        beyond = (width - q_gen[..., -1]).clamp_min(0.0) + (width - q_gen[..., 0]).clamp_max(0.0)
        new_width = torch.where(rank < single_data, torch.zeros_like(rank),
                                (_table_quantile(above, q_data) + beyond).clamp_min(0.0))
        new_variance = new_width * new_width
        # wider: a far deposit in the direction of the noise, at the cell nearest D from the centre
        gap = new_variance - variance
        direction = z[..., :2] / z[..., :2].norm(dim=-1, keepdim=True).clamp_min(1e-12)
        reach = (variance + WIDTH_SPOT_REACH * gap.clamp_min(0.0)).sqrt()
        ix = torch.round((cx + reach * direction[..., 0]) / dx + (nx - 1) / 2).clamp(0, nx - 1)
        iy = torch.round((cy + reach * direction[..., 1]) / dy + (ny - 1) / 2).clamp(0, ny - 1)
        d2 = ((ix - (nx - 1) / 2) * dx - cx) ** 2 + ((iy - (ny - 1) / 2) * dy - cy) ** 2
        b = d2 - variance
        disc = b * b - 4 * d2 * gap
        wide = torch.where(disc >= 0, (b - disc.clamp_min(0.0).sqrt()) / (2 * d2).clamp_min(1e-12),
                           b.clamp_min(0.0) / (2 * d2).clamp_min(1e-12)).clamp(0.0, 0.5)
        # narrower: towards the largest cell
        flat = seen.permute(0, 3, 1, 2).reshape(-1, nz, nx * ny)
        peak = flat.argmax(dim=2)
        px, py = torch.div(peak, ny, rounding_mode="floor").float(), (peak % ny).float()
        d2p = ((px - (nx - 1) / 2) * dx - cx) ** 2 + ((py - (ny - 1) / 2) * dy - cy) ** 2
        bp = d2p - variance
        narrow = (2 * (-gap).clamp_min(0.0) / (torch.sqrt(bp * bp - 4 * d2p * gap.clamp_max(0.0)) - bp)
                  .clamp_min(1e-12)).clamp(0.0, 1.0)
        act = energy > 0
        tolerance = 1e-4 * (variance + dx * dy)  # the identity map's rounding moves nothing
        widen, shrink = act & (gap > tolerance) & (d2 > 0), act & (gap < -tolerance)
        fraction = torch.where(widen, wide, torch.where(shrink, narrow, torch.zeros_like(wide)))
        target = torch.where(widen, ix * ny + iy, px * ny + py).long()
        index = torch.arange(nx * ny, device=s.device).view(1, 1, -1)
        spot = (index == target.unsqueeze(2)).float().view(-1, nz, nx, ny).permute(0, 2, 3, 1)
        layer = s.sum(dim=(1, 2))
        return s * (1 - fraction).view(-1, 1, 1, nz) + spot * (fraction * layer).view(-1, 1, 1, nz)

    def _check_symmetry(self, kind: str) -> None:
        if kind != "none" and self.conditions_on_angle:
            raise ValueError("symmetry: normal_incidence needs a generator of normal incidence only "
                             "(condition_on_angle: false)")

    def set_symmetry(self, kind: Literal["none", "normal_incidence"]) -> None:
        """Switch the symmetrisation of the output (see :class:`Conv2dConfig`); the noise dimension
        follows (SYMMETRY_NOISE more with it), and so does the config."""
        if kind not in ("none", "normal_incidence"):
            raise ValueError(f"unknown symmetry {kind!r}: none or normal_incidence")
        self._check_symmetry(kind)
        self.config = self.config.model_copy(update={"symmetry": kind})
        self._set_noise_dim()

    def _set_noise_dim(self) -> None:
        """The network's 200 components, then SYMMETRY_NOISE with the symmetry, then
        WIDTH_NOISE_PER_LAYER a layer with the width correction."""
        self.noise_dim = (self.network_noise_dim + (SYMMETRY_NOISE if self.config.symmetry != "none" else 0)
                          + (WIDTH_NOISE_PER_LAYER * self.geometry.n_layers if self.config.width_knots else 0))

    def sample_noise(self, n: int, generator: torch.Generator | None = None,
                     device: torch.device | str | None = None) -> torch.Tensor:
        """``(n, noise_dim)`` standard-normal noise as :meth:`ShowerGenerator.sample_noise`, the
        network's 200 components drawn first and the symmetry's after them: from one seed the
        network makes the same showers with and without the symmetry (which then only moves them)."""
        where = generator.device if generator is not None else (device or "cpu")
        noise = torch.randn(n, self.network_noise_dim, generator=generator, device=where)
        if self.noise_dim > self.network_noise_dim:
            extra = torch.randn(n, self.noise_dim - self.network_noise_dim, generator=generator, device=where)
            noise = torch.cat([noise, extra], dim=1)
        return noise.to(device) if device is not None else noise

    def symmetrise(self, showers: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Each shower ``(B, x, y, z)`` flipped in x, in y and transposed x <-> y where the matching
        one of the noise components after the network's is negative (ONNX-safe)."""
        chosen = noise[:, self.network_noise_dim:self.network_noise_dim + SYMMETRY_NOISE] < 0
        for k, move in enumerate((lambda v: v.flip(1), lambda v: v.flip(2), lambda v: v.transpose(1, 2))):
            showers = torch.where(chosen[:, k].view(-1, 1, 1, 1), move(showers), showers)
        return showers

    def use_relu_output(self) -> None:
        """Switch the output head to ReLU in place (weights kept; the config follows, so a saved
        generator reloads with the ReLU head)."""
        self.output_head = nn.ReLU()
        self.config = self.config.model_copy(update={"output_activation": "relu"})

    def latent(self, primary_energy: torch.Tensor, incident_angle: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """(E / 100 GeV) * noise, with theta (rad) appended when the model conditions on the angle,
        then the noise and ln(E / 100 GeV) with ``latent: scaled_and_raw``."""
        e = (primary_energy.to(noise.dtype) / 100.0).unsqueeze(1)
        parts = [e * noise]
        if self.conditions_on_angle:
            parts.append(incident_angle.to(noise.dtype).unsqueeze(1))
        if self.config.latent == "scaled_and_raw":
            parts += [noise, torch.log(e)]
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    def generate_raw(self, primary_energy: torch.Tensor, incident_angle: torch.Tensor,
                     noise: torch.Tensor) -> torch.Tensor:
        """(B, 25, 25, 25) showers in model units (GeV for the default transform) for energies (GeV), angles
        (rad) and noise (B, noise_dim), the longitudinal, cell-energy, peak-sharing, width, lateral, hit-count,
        response and resolution corrections and the symmetrisation applied, in that order."""
        seed = self.dense(self.latent(primary_energy, incident_angle, noise[:, :self.network_noise_dim]))
        out = self.output_head(self.body(seed.view(-1, 5, 5, 5))) * self.output_scale
        if self.config.layer_gain:
            factor = self.layer_factor(self.transform.to_gev(out), primary_energy) ** self.transform.power
            out = out * factor.to(out.dtype).unsqueeze(1).unsqueeze(1)
        if self.config.cell_knots:
            factor = self.cell_factor(self.transform.to_gev(out), primary_energy) ** self.transform.power
            out = out * factor.to(out.dtype)
        if self.config.peak_gain:
            factor = self.peak_factor(self.transform.to_gev(out), primary_energy) ** self.transform.power
            out = out * factor.to(out.dtype)
        if self.config.width_knots:
            out = self.transform.to_model_units(self.width_moved(self.transform.to_gev(out), primary_energy,
                                                                 noise)).to(out.dtype)
        if self.config.halo_gain:
            factor = self.lateral_factor(self.transform.to_gev(out), primary_energy) ** self.transform.power
            out = out * factor.to(out.dtype)
        if self.config.hits_gain:
            out = torch.where(self.hits_kept(self.transform.to_gev(out), primary_energy), out, torch.zeros_like(out))
        if self.config.response_correction:
            out = out * self.response_factor(primary_energy).to(out.dtype).view(-1, 1, 1, 1)
        if self.config.resolution_scale:
            factor = self.resolution_factor(self.transform.to_gev(out), primary_energy) ** self.transform.power
            out = out * factor.to(out.dtype).view(-1, 1, 1, 1)
        if self.config.symmetry != "none":
            out = self.symmetrise(out, noise)
        return out

    def metadata(self) -> dict:
        card = super().metadata()
        card["preprocessing"]["output_scale"] = float(self.output_scale)
        if self.config.latent == "scaled_and_raw":
            card["preprocessing"]["energy_condition"] = ("latent [(primary_energy / 100) * noise, noise, "
                                                         "ln(primary_energy / 100)] (GeV)")
        if self.config.response_correction:
            card["preprocessing"]["response_correction"] = {
                "coefficients": list(self.config.response_correction),
                "meaning": "GeV output x exp(sum_k c_k ln(E / 100 GeV)^k)"}
        if self.config.resolution_scale:
            card["preprocessing"]["resolution_correction"] = {
                "centre": list(self.config.resolution_centre or ()), "scale": list(self.config.resolution_scale),
                "meaning": ("each shower x (c + s (r - c)) / r, r = E_dep / E, "
                            "ln c and ln s = sum_k a_k ln(E / 100 GeV)^k")}
        if self.config.layer_gain:
            card["preprocessing"]["layer_correction"] = {
                "knots": list(self.config.layer_knots or ()),
                "centre": [list(r) for r in self.config.layer_centre or ()],
                "target": [list(r) for r in self.config.layer_target or ()],
                "gain": [list(r) for r in self.config.layer_gain],
                "fraction_floor": LAYER_FRACTION_FLOOR,
                "meaning": ("per layer g = ln(E_layer / E_dep + floor) -> target + exp(gain) (g - centre), each "
                            "given at the knots ln(E / 100 GeV), linear between them; the layer's cells scaled, "
                            "the shower renormalised to E_dep")}
        if self.config.hits_gain:
            card["preprocessing"]["hits_correction"] = {
                "knots": list(self.config.hits_knots or ()), "centre": list(self.config.hits_centre or ()),
                "target": list(self.config.hits_target or ()), "gain": list(self.config.hits_gain),
                "meaning": ("ln n (n = cells at or above the readout threshold) -> target + exp(gain) (ln n - centre), "
                            "given at the knots ln(E / 100 GeV), linear between them; only the largest cells kept "
                            "where that asks for fewer")}
        if self.config.cell_knots:
            card["preprocessing"]["cell_correction"] = {
                "knots": list(self.config.cell_knots),
                "quantiles_generator": [list(r) for r in self.config.cell_quantiles_generator or ()],
                "quantiles_data": [list(r) for r in self.config.cell_quantiles_data or ()],
                "meaning": ("per layer, ln(E_cell / GeV) of every cell with energy mapped piecewise-linearly "
                            "from quantiles_generator[layer * n_q + k] to quantiles_data[...] (slope 1 beyond the "
                            "ends), the layer renormalised to its energy; tables at the knots ln(E / 100 GeV), "
                            "linear between them")}
        if self.config.halo_gain:
            card["preprocessing"]["lateral_correction"] = {
                "knots": list(self.config.lateral_knots or ()),
                **{name: [list(r) for r in getattr(self.config, name) or ()]
                   for name in ("halo_centre", "halo_target", "halo_gain", "ring_log_factor")},
                "core_radius_cells": LATERAL_CORE_RADIUS_CELLS, "halo_fraction_floor": HALO_FRACTION_FLOOR,
                "ring_factor_max": RING_FACTOR_MAX,
                "meaning": ("per layer h = halo energy (cells further than core_radius_cells from the central cell) "
                            "/ layer energy: logit(h) -> halo_target + exp(halo_gain) (logit(h) - halo_centre) by "
                            "factors on the halo's and the core's cells; then each cell x exp(ring_log_factor[layer "
                            "* n_rings + ring]) (ring = rounded distance to the central cell, cells) and the layer "
                            "renormalised; tables at the knots ln(E / 100 GeV), linear between them")}
        if self.config.peak_gain:
            card["preprocessing"]["peak_correction"] = {
                "knots": list(self.config.peak_knots or ()),
                **{name: [list(r) for r in getattr(self.config, name) or ()]
                   for name in ("peak_centre", "peak_target", "peak_gain")},
                "fraction_floor": HALO_FRACTION_FLOOR,
                "meaning": ("per layer with two cells or more r = energy outside the largest cell / layer energy: "
                            "logit(r) -> peak_target + exp(peak_gain) (logit(r) - peak_centre), at most up to the r "
                            "at which the second cell would be the largest, by one factor on the largest cell and one "
                            "on the others; tables at the knots ln(E / 100 GeV), linear between them")}
        if self.config.width_knots:
            card["preprocessing"]["width_correction"] = {
                "knots": list(self.config.width_knots),
                **{name.removeprefix("width_"): [list(r) for r in getattr(self.config, name) or ()]
                   for name in ("width_single_generator", "width_single_data", "width_quantiles_generator",
                                "width_quantiles_data")},
                "spot_reach": WIDTH_SPOT_REACH,
                "noise_components": [self.noise_dim - WIDTH_NOISE_PER_LAYER * self.geometry.n_layers,
                                     self.noise_dim - 1],
                "meaning": ("per layer w = radial width (mm, cells at or above the readout threshold); its rank "
                            "(one-cell layers: uniform within single_generator from noise component 3 * layer + 2 "
                            "of the range) mapped to the data's width; narrower: energy moved to the largest cell, "
                            "wider: to one cell at D^2 = w^2 + spot_reach (w'^2 - w^2) from the layer's centre "
                            "in the direction of noise components 3 * layer, 3 * layer + 1; tables at the knots "
                            "ln(E / 100 GeV), linear between them")}
        if self.config.symmetry != "none":
            card["preprocessing"]["symmetry"] = ("each shower flipped in x, in y and transposed x <-> y where noise "
                                                 f"components {self.network_noise_dim}.."
                                                 f"{self.network_noise_dim + SYMMETRY_NOISE - 1} are "
                                                 "negative (normal incidence)")
        return card

    def body(self, seed: torch.Tensor) -> torch.Tensor:
        """(B, 5, 5, 5) -> (B, 25, 25, 25) before the output head."""
        raise NotImplementedError


def _log_polynomial(coefficients: tuple[float, ...], primary_energy: torch.Tensor) -> torch.Tensor:
    """``sum_k c_k ln(E / 100 GeV)^k`` (float32, Horner), 0 for no coefficients."""
    u = torch.log(primary_energy.float() / 100.0)
    out = torch.zeros_like(u)
    for coefficient in reversed(coefficients):
        out = out * u + coefficient
    return out


def lateral_rings(nx: int, ny: int) -> np.ndarray:
    """``(nx, ny)`` int ring of each cell: its distance to the grid's central cell (cell widths),
    rounded (0 = the central cell)."""
    dx, dy = np.arange(nx) - (nx - 1) / 2, np.arange(ny) - (ny - 1) / 2
    return np.rint(np.hypot(dx[:, None], dy[None, :])).astype(np.int64)


def lateral_halo(nx: int, ny: int) -> np.ndarray:
    """``(nx, ny)`` float32 1 for the halo's cells (centre further than LATERAL_CORE_RADIUS_CELLS
    from the central cell's), 0 for the core's."""
    dx, dy = np.arange(nx) - (nx - 1) / 2, np.arange(ny) - (ny - 1) / 2
    return (np.hypot(dx[:, None], dy[None, :]) > LATERAL_CORE_RADIUS_CELLS).astype(np.float32)


def _clamped_logit(fraction: torch.Tensor) -> torch.Tensor:
    """logit of ``fraction`` and of ``1 - fraction`` each kept within [HALO_FRACTION_FLOOR, 1 - HALO_FRACTION_FLOOR]
    (the halo and peak-sharing corrections' variable)."""
    return torch.log(fraction.clamp(HALO_FRACTION_FLOOR, 1 - HALO_FRACTION_FLOOR)) - torch.log(
        (1 - fraction).clamp(HALO_FRACTION_FLOOR, 1 - HALO_FRACTION_FLOOR))


def _table_cdf(value: torch.Tensor, quantiles: torch.Tensor) -> torch.Tensor:
    """Level in [0, 1] of ``value`` ``(B, k)`` in the increasing quantile tables ``(B, k, n_q)`` taken at
    equally spaced levels: piecewise linear between them, 0 and 1 beyond the ends."""
    n_q = quantiles.shape[-1]
    level = torch.zeros_like(value)
    for j in range(n_q - 1):
        step = (quantiles[..., j + 1] - quantiles[..., j]).clamp_min(1e-6)
        level = level + ((value - quantiles[..., j]) / step).clamp(0.0, 1.0)
    return level / (n_q - 1)


def _table_quantile(level: torch.Tensor, quantiles: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`_table_cdf`: the value at ``level`` ``(B, k)`` in [0, 1]."""
    n_q = quantiles.shape[-1]
    out = quantiles[..., 0]
    for j in range(n_q - 1):
        out = out + (quantiles[..., j + 1] - quantiles[..., j]) * (level * (n_q - 1) - j).clamp(0.0, 1.0)
    return out


def _checked_knots(knots: list | tuple, what: str) -> tuple[float, ...]:
    """``knots`` (ln(E / 100 GeV)) as floats, refused unless two or more and increasing."""
    checked = tuple(float(k) for k in knots)
    if len(checked) < 2 or any(b <= a for a, b in zip(checked, checked[1:])):
        raise ValueError(f"the {what} correction needs two or more increasing knots, got {checked}")
    return checked


def _moved(knots: tuple[float, ...], tables: tuple, value: torch.Tensor, primary_energy: torch.Tensor
           ) -> torch.Tensor:
    """``target + exp(gain) (value - centre)`` of a correction given as (centre, target, gain) tables
    ``(k, n_knots)`` at ``knots``, interpolated at ln(E / 100 GeV) (:func:`_interpolate_layers`), for
    ``value`` ``(B, k)``; exp(gain) within [1 / LAYER_GAIN_MAX, LAYER_GAIN_MAX]."""
    u = torch.log(primary_energy.float() / 100.0)
    centre, target, gain = (_interpolate_layers(knots, table, u) for table in tables)
    return target + torch.exp(gain).clamp(1 / LAYER_GAIN_MAX, LAYER_GAIN_MAX) * (value - centre)


def _interpolate_layers(knots: tuple[float, ...], table: tuple[tuple[float, ...], ...], u: torch.Tensor
                        ) -> torch.Tensor:
    """``(B, n_layers)`` values at u = ln(E / 100 GeV) ``(B,)`` of ``table`` ``(n_layers, n_knots)``
    given at ``knots``: linear between knots, constant beyond the end ones (float32, ONNX-safe)."""
    values = torch.tensor(table, dtype=torch.float32, device=u.device)
    out = values[:, 0].unsqueeze(0).expand(u.shape[0], -1)
    for j in range(1, len(knots)):
        weight = ((u - knots[j - 1]) / (knots[j] - knots[j - 1])).clamp(0.0, 1.0).unsqueeze(1)
        out = out + weight * (values[:, j] - values[:, j - 1])
    return out


def _default_output_scale(state_dict: dict, prefix: str, *args: object) -> None:
    """Weights saved before the output scale existed load with scale 1."""
    state_dict.setdefault(prefix + "output_scale", torch.tensor(1.0))


def _g1_branch(cfg: Conv2dConfig) -> nn.Sequential:
    w = cfg.width
    c32, c64 = scaled_channels(32, w), scaled_channels(64, w)
    return nn.Sequential(
        *_block(5, c32, 5, "same", cfg, init="glorot_uniform"),                  # 5x5
        ConvTranspose2d(c32, c64, 5, stride=3, padding="same"),                  # 15x15
        *_block(c64, c64, 5, "same", cfg),
        ConvTranspose2d(c64, c64, 5, stride=2, padding="same"),                  # 30x30
        *_block(c64, c64, 8, "same", cfg),
        *_block(c64, c64, 5, "valid", cfg),                                      # 26x26
        *_block(c64, c32, 4, "same", cfg),
        *_block(c32, c32, 3, "same", cfg),
        *_block(c32, N, 2, "valid", cfg),                                        # 25x25 x 25
    )


class Conv2dG1Generator(Conv2dGenerator):
    """G1, three branches (one per orientation, separate weights), merged by Conv2D(25, 3)."""

    name: ClassVar[str] = "conv2d_g1"

    def __init__(self, config: Conv2dConfig | None = None) -> None:
        super().__init__(config)
        cfg = self.config
        self.branch_x = _g1_branch(cfg)
        self.branch_z = _g1_branch(cfg)
        self.branch_y = _g1_branch(cfg)
        self.merge = Conv2d(3 * N, N, 3, padding="same", bias=False, init="he_uniform")

    def body(self, seed: torch.Tensor) -> torch.Tensor:
        x1 = self.branch_x(seed)
        x2 = _side_view(self.branch_z(_layer_view(seed)))  # Permute([2,3,1]) undoes Permute([3,1,2])
        x3 = _layer_view(self.branch_y(_side_view(seed)))  # and vice versa
        return self.merge(torch.cat([x1, x2, x3], dim=1))


class Conv2dG2Generator(Conv2dGenerator):
    """G2, 25 branches: path l makes one 25x25 image; the 25 images are the channels of
    Conv2D(25, 5) -> LeakyReLU/BN/Dropout -> Conv2D(25, 3)."""

    name: ClassVar[str] = "conv2d_g2"

    def __init__(self, config: Conv2dConfig | None = None) -> None:
        super().__init__(config)
        cfg = self.config
        c32, c16 = scaled_channels(32, cfg.width), scaled_channels(16, cfg.width)
        self.paths = nn.ModuleList(
            nn.Sequential(
                ConvTranspose2d(5, c32, 5, stride=3, padding="same"),            # 15x15
                *_block(c32, c32, 4, "same", cfg),
                ConvTranspose2d(c32, c32, 5, stride=2, padding="same"),          # 30x30
                *_block(c32, c32, 5, "valid", cfg),                              # 26x26
                *_block(c32, c32, 3, "same", cfg),
                *_block(c32, c16, 2, "valid", cfg),                              # 25x25
                *_block(c16, 1, 1, "valid", cfg, bias=True),
            )
            for _ in range(N))
        self.merge = nn.Sequential(*_block(N, N, 5, "same", cfg),
                                   Conv2d(N, N, 3, padding="same", bias=False, init="he_uniform"))

    def body(self, seed: torch.Tensor) -> torch.Tensor:
        return self.merge(torch.cat([path(seed) for path in self.paths], dim=1))


def _g3_segment(c_in: int, cfg: Conv2dConfig) -> nn.Sequential:
    c64, c32 = scaled_channels(64, cfg.width), scaled_channels(32, cfg.width)
    return nn.Sequential(*_block(c_in, c64, 9, "same", cfg), *_block(c64, c64, 7, "same", cfg),
                         *_block(c64, c64, 5, "same", cfg), *_block(c64, c64, 5, "same", cfg),
                         *_block(c64, c32, 4, "same", cfg), *_block(c32, N, 4, "same", cfg))


class Conv2dG3Generator(Conv2dGenerator):
    """G3, a single branch with residual sums over three orientations."""

    name: ClassVar[str] = "conv2d_g3"

    def __init__(self, config: Conv2dConfig | None = None) -> None:
        super().__init__(config)
        cfg = self.config
        c32, c64 = scaled_channels(32, cfg.width), scaled_channels(64, cfg.width)
        self.upsample = nn.Sequential(
            *_block(5, c32, 5, "same", cfg, init="glorot_uniform"),              # 5x5
            ConvTranspose2d(c32, c64, 5, stride=3, padding="same"),              # 15x15
            *_block(c64, c64, 5, "same", cfg),
            ConvTranspose2d(c64, c64, 5, stride=2, padding="same"),              # 30x30
            *_block(c64, c64, 6, "valid", cfg),                                  # 25x25 x 64
        )
        self.segment1 = _g3_segment(c64, cfg)
        self.segment2 = _g3_segment(N, cfg)
        self.segment3 = _g3_segment(N, cfg)
        self.merge = nn.Sequential(*_block(N, N, 4, "same", cfg),
                                   Conv2d(N, N, 3, padding="same", bias=False, init="he_uniform"))

    def body(self, seed: torch.Tensor) -> torch.Tensor:
        p1 = self.segment1(self.upsample(seed))
        p2 = self.segment2(_layer_view(p1))
        p3 = self.segment3(_side_view(p1 + p2))
        return self.merge(p1 + p2 + p3)


def _d_path(cfg: Conv2dConfig, extra_blocks: bool) -> nn.Sequential:
    # the last block keeps 9 channels at any width: un-permuting needs channels == image size (9)
    c64, c32, c9 = scaled_channels(64, cfg.width), scaled_channels(32, cfg.width), 9
    layers = [*_block(N, c64, 8, "same", cfg, init="glorot_uniform"),            # 25x25
              *_block(c64, c32, 6, "valid", cfg),                                # 20x20
              *_block(c32, c32, 5, "valid", cfg),                                # 16x16
              *_block(c32, c32, 4, "valid", cfg)]                                # 13x13
    if extra_blocks:
        layers += [*_block(c32, c32, 6, "same", cfg), *_block(c32, c32, 4, "same", cfg),
                   *_block(c32, c32, 3, "same", cfg)]
    layers += [*_block(c32, c32, 3, "valid", cfg),                               # 11x11
               *_block(c32, c9, 3, "valid", cfg)]                                # 9x9
    return nn.Sequential(*layers)


class Conv2dDiscriminator(ShowerDiscriminator):
    """The shared Conv2D discriminator; ``extra_blocks`` gives the G3 variant."""

    geometry: ClassVar[Geometry] = PRESETS["clic25"]
    transform: ClassVar[CellTransform] = Conv2dGenerator.transform
    extra_blocks: ClassVar[bool] = False

    def __init__(self, config: Conv2dConfig | None = None) -> None:
        config = config or Conv2dConfig()
        super().__init__(config)
        self.path_x = _d_path(config, self.extra_blocks)
        self.path_z = _d_path(config, self.extra_blocks)
        self.path_y = _d_path(config, self.extra_blocks)
        n_features = 3 * 9 * 9 * 9
        self.minibatch_std_group = config.minibatch_std_group
        n_features += int(self.minibatch_std_group > 1)
        self.hidden = nn.Sequential(dense(n_features, 10), leaky_relu(),
                                    batch_norm(1, 10, config.bn_eps, config.batchnorm))
        self.real_head = dense(10, 1)
        self.energy_head = dense(10, 1)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        x1 = self.path_x(image)
        x2 = _side_view(self.path_z(_layer_view(image)))
        x3 = _layer_view(self.path_y(_side_view(image)))
        features = torch.cat([x1, x2, x3], dim=1).flatten(1)
        if self.minibatch_std_group > 1:
            features = torch.cat([features, minibatch_std(features, image.sum(dim=(1, 2, 3)),
                                                          self.minibatch_std_group)], dim=1)
        h = self.hidden(features)
        return {"real": torch.sigmoid(self.real_head(h)).squeeze(1),
                "energy": self.energy_head(h).squeeze(1),
                "ecal_sum": self.ecal_sum_of(image)}


class Conv2dG1Discriminator(Conv2dDiscriminator):
    name: ClassVar[str] = "conv2d_g1"


class Conv2dG2Discriminator(Conv2dDiscriminator):
    name: ClassVar[str] = "conv2d_g2"


class Conv2dG3Discriminator(Conv2dDiscriminator):
    """The G3 variant: three extra 'same' 32-channel blocks (kernels 6, 4, 3) per path."""

    name: ClassVar[str] = "conv2d_g3"
    extra_blocks: ClassVar[bool] = True
