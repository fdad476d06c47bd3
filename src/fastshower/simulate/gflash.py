"""GFlash: the Grindhammer-Peters parametrisation of electromagnetic showers, vectorised.

The classical fast simulation of the project (G. Grindhammer and S. Peters, hep-ex/0001020; the
formulas of Geant4's ``GFlashSamplingShowerParameterisation``), written batch-at-a-time in numpy,
with every coefficient in one typed set :class:`GFlashParameters` (defaults: the published values)
that ``fastshower gflash tune`` fits to Geant4 (:mod:`fastshower.gflash_tune`).
See ``docs/gflash.md`` for the formulas, units and choices. In short, per shower:

1. longitudinal profile: a gamma distribution in the depth along the shower axis t (in X0) with
   shape alpha and maximum T, both drawn log-normally with the correlation rho of the paper
   (sampling-calorimeter parameters, effective Z, E_c, X0 and sampling frequency of the stack);
   photons start after an exponential conversion depth of mean 9/7 X0;
2. per layer, the fraction of the energy in each cell from the two-component radial profile
   f(r) = p 2r R_C^2/(r^2+R_C^2)^2 + (1-p) 2r R_T^2/(r^2+R_T^2)^2 (r in Moliere radii; R_C, R_T
   and p depend on tau = t/T), integrated exactly over each cell (cartesian: closed form of the
   2-d integral over a rectangle; cylindrical: over rings);
3. the active-layer signal samples the particle flux where the active layer sits: the shower's
   energy density dE/dt at the active layer's depth, times the layer's thickness in X0, times the
   layer's own mip sampling fraction and an e/mip scale (so a thick absorber layer samples less,
   and the profile does not jump where the absorber changes);
4. fluctuations: the energy spots of GFlash (N_S = 10.3/c_S E^0.959 spots, spread along t with
   their own gamma profile) and the sampling fluctuations (sigma^2 = c^2 E per layer) are drawn
   per cell (Poisson spot counts, a gamma variate for their sampled energy);
5. energy outside the grid is lost; cells below ``geometry.readout_threshold_gev`` read 0.

Units: energies in GeV (``critical_energy_gev``), lengths in mm, depths in radiation lengths X0
where the name says ``_x0``, radii of the radial profile in Moliere radii, angles in rad.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field
from scipy.special import gammainc, gammaln

from fastshower import __version__
from fastshower.geometry import Geometry, get_material
from fastshower.showers import ShowerSet

PARTICLES = ("e-", "gamma")

#: Mean photon conversion depth (X0): the mean free path of a high-energy photon is 9/7 X0.
PHOTON_CONVERSION_DEPTH_X0 = 9.0 / 7.0

#: Stochastic term of the sampling fluctuations per sqrt(active layer thickness / mip fraction),
#: sigma/E = 2.7% sqrt(d_active[mm] / f_mip) / sqrt(E[GeV]) (the sampling formula quoted by
#: Grindhammer & Peters, after Amaldi and Wigmans). The default of
#: :attr:`GFlashParameters.sampling_coefficient`.
SAMPLING_COEFFICIENT = 0.027

#: Cells per internal work chunk (bounds the float64 temporaries to ~100 MB).
_CHUNK_CELLS = 4_000_000

#: Folder of the parameter sets shipped with the package (``gflash_<name>.yaml``).
PRESETS_DIR = Path(__file__).resolve().parent.parent / "presets"

#: Names that mean the published Grindhammer-Peters values.
DEFAULT_PARAMETER_NAMES = ("default", "grindhammer-peters", "gp")


class GFlashParameters(BaseModel):
    """Every coefficient of the parametrisation; the defaults are the published values.

    Longitudinal (y = E/E_c, Z the effective Z, F_S the sampling frequency, e_hat = e/mip):
    T_hom = t_hom_slope ln y + t_hom_offset; alpha_hom = alpha_hom_offset + (alpha_hom_slope +
    alpha_hom_z / Z) ln y; sampling calorimeter T = T_hom + t_sampling_fs / F_S + t_sampling_ehat
    (1 - e_hat), alpha = alpha_hom + alpha_sampling_fs / F_S; sigma(ln T) = 1/(sigma_ln_t_offset +
    sigma_ln_t_slope ln y), sigma(ln alpha) likewise, rho = rho_offset + rho_slope ln y (``*_hom``:
    the homogeneous widths, used for the spots' profile).

    Radial (E in GeV, tau = t/T): R_C = core_z1_offset + core_z1_ln_e ln E + (core_z2_offset +
    core_z2_z Z) tau; R_T = k1 (exp(tail_k3 (tau - tail_k2)) + exp(k4 (tau - tail_k2))) with
    k1 = tail_k1_offset + tail_k1_z Z, k4 = tail_k4_offset + tail_k4_ln_e ln E; p = p1 exp(u -
    exp(u)), u = (p2 - tau)/p3, p1 = weight_p1_offset + weight_p1_z Z, p2 = weight_p2_offset +
    weight_p2_z Z, p3 = weight_p3_offset + weight_p3_ln_e ln E; sampling corrections
    R_C += core_sampling_ehat (1 - e_hat) + core_sampling_fs/F_S exp(-tau), R_T likewise with
    ``tail_sampling_*``, p += (1 - e_hat)(weight_sampling_ehat + weight_sampling_fs/F_S exp(-(tau-1)^2)).

    Spots: N_S = spot_number / c_S E^spot_exponent, their profile T_S = T_hom (spot_t_offset +
    spot_t_z Z), alpha_S = alpha_hom (spot_alpha_offset + spot_alpha_z Z).

    Start: ``start_offset_x0`` moves the origin of the gamma profiles that many X0 before the shower
    start (the face for electrons, the conversion point for photons), renormalised to the part after
    it: a shower whose particles are already there at the start (the primary and its first
    bremsstrahlung pairs), which the published profile, zero at t = 0, lacks (default 0: the paper).

    Sampling (this project's model of the active-layer signal, docs/gflash.md): the sampling
    fluctuation of a layer is c^2 E_layer with c = sampling_coefficient sqrt(d_active[mm] / f_mip);
    the active signal is sampling_scale x f_mip(layer) x the shower energy at the active layer's
    density (``sampling_scale`` None: e_hat, the e/mip ratio of the paper); ``albedo`` is the part
    of an active layer's signal that particles scattered back from the absorber behind it make, so
    the last layer (no absorber behind) reads (1 - albedo) of it (default 0: not in the paper);
    ``albedo_depth_x0`` is how far behind the active layer (X0 along the axis) the absorber that
    scatters those particles back samples the shower: that part of layer L's signal follows the
    profile at t_L + albedo_depth_x0, not at t_L (default 0: at the active layer itself, which with
    albedo 0 is the paper's sampling). It gives the first layers, where the profile rises steeply,
    the signal of the denser shower behind them.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    t_hom_offset: float = -0.812
    t_hom_slope: float = 1.0
    alpha_hom_offset: float = 0.81
    alpha_hom_slope: float = 0.458
    alpha_hom_z: float = 2.26
    t_sampling_fs: float = -0.55
    t_sampling_ehat: float = -0.69
    alpha_sampling_fs: float = -0.476
    sigma_ln_t_offset: float = -2.5
    sigma_ln_t_slope: float = 1.25
    sigma_ln_alpha_offset: float = -0.82
    sigma_ln_alpha_slope: float = 0.79
    rho_offset: float = 0.784
    rho_slope: float = -0.023
    sigma_ln_t_hom_offset: float = -1.4
    sigma_ln_t_hom_slope: float = 1.26
    sigma_ln_alpha_hom_offset: float = -0.58
    sigma_ln_alpha_hom_slope: float = 0.86
    rho_hom_offset: float = 0.705
    rho_hom_slope: float = -0.023

    core_z1_offset: float = 0.0251
    core_z1_ln_e: float = 0.00319
    core_z2_offset: float = 0.1162
    core_z2_z: float = -0.000381
    tail_k1_offset: float = 0.659
    tail_k1_z: float = -0.00309
    tail_k2: float = 0.645
    tail_k3: float = -2.59
    tail_k4_offset: float = 0.3585
    tail_k4_ln_e: float = 0.0412
    weight_p1_offset: float = 2.632
    weight_p1_z: float = -0.00094
    weight_p2_offset: float = 0.401
    weight_p2_z: float = 0.00187
    weight_p3_offset: float = 1.313
    weight_p3_ln_e: float = -0.0686
    core_sampling_ehat: float = -0.0203
    core_sampling_fs: float = 0.0397
    tail_sampling_ehat: float = -0.14
    tail_sampling_fs: float = -0.495
    weight_sampling_ehat: float = 0.348
    weight_sampling_fs: float = -0.642

    spot_number: float = Field(default=10.3, gt=0)
    spot_exponent: float = 0.959
    spot_t_offset: float = 0.813
    spot_t_z: float = 0.0019
    spot_alpha_offset: float = 0.844
    spot_alpha_z: float = 0.0026

    start_offset_x0: float = Field(default=0.0, ge=0)
    sampling_coefficient: float = Field(default=SAMPLING_COEFFICIENT, ge=0)
    sampling_scale: float | None = Field(default=None, gt=0)
    albedo: float = Field(default=0.0, ge=0, lt=1)
    albedo_depth_x0: float = Field(default=0.0, ge=0)


class GFlashParameterFile(BaseModel):
    """A parameter file: ``parameters`` (only those that differ from the defaults need be given)
    and free-form ``provenance`` (how they were obtained: reference files and hashes, energies,
    objective, fastshower version)."""

    model_config = ConfigDict(extra="forbid")

    parameters: GFlashParameters = GFlashParameters()
    provenance: dict[str, Any] = {}


def parameter_file_path(spec: str | Path) -> Path:
    """The file behind ``spec``: a path, or the name of a shipped set (``clic25_geant4`` ->
    ``presets/gflash_clic25_geant4.yaml``)."""
    key = str(spec)
    shipped = PRESETS_DIR / f"gflash_{key}.yaml"
    if "/" not in key and not key.endswith((".yaml", ".yml")) and shipped.is_file():
        return shipped
    path = Path(key)
    if not path.is_file():
        known = ", ".join(sorted(q.stem.removeprefix("gflash_") for q in PRESETS_DIR.glob("gflash_*.yaml")))
        raise FileNotFoundError(f"GFlash parameter file not found: {key} (shipped sets: {known or 'none'}; "
                                f"or {' / '.join(DEFAULT_PARAMETER_NAMES)} for the published values)")
    return path


def load_parameter_file(spec: str | Path) -> GFlashParameterFile:
    """Read a parameter file (YAML, safe_load) or a shipped set by name."""
    path = parameter_file_path(spec)
    with open(path) as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict):
        raise ValueError(f"GFlash parameter file {path} does not hold a mapping")  # noqa: TRY004 (a user error)
    return GFlashParameterFile.model_validate(data)


def load_parameters(spec: str | Path | GFlashParameters | None = None) -> GFlashParameters:
    """Parameters from ``spec``: None or ``default``/``grindhammer-peters`` (the published values), a
    :class:`GFlashParameters`, the name of a shipped set (``clic25_geant4``) or a YAML file."""
    if spec is None:
        return GFlashParameters()
    if isinstance(spec, GFlashParameters):
        return spec
    if str(spec).lower() in DEFAULT_PARAMETER_NAMES:
        return GFlashParameters()
    return load_parameter_file(spec).parameters


DEFAULT_PARAMETERS = GFlashParameters()


@dataclass(frozen=True)
class StackParameters:
    """Material parameters of a geometry's layer stack used by the parametrisation.

    ``radiation_length_mm`` X0_eff, ``moliere_radius_mm`` R_M_eff, ``critical_energy_gev`` E_c_eff,
    ``z_eff`` mass-weighted Z, ``e_hat`` the e/mip ratio 1/(1 + 0.007 (Z_absorber - Z_active)),
    ``sampling_frequency`` F_S = X0_eff / layer pitch, ``sampling_term`` c_S (GeV^0.5) of the whole
    stack, ``layer_sampling_term`` c per readout layer (n_layers,), ``layer_mip_fraction`` the mip
    sampling fraction of each readout layer (active / (active + absorber) mip energy loss),
    ``layer_edges_x0`` cumulative depth of the layer boundaries in X0 at normal incidence
    (n_layers + 1,), ``layer_edges_mm`` the same in mm, ``active_depth_x0`` / ``active_depth_mm``
    the depth of each active layer's centre (absorber first, then the active layer) (n_layers,).
    The sampling terms use :data:`SAMPLING_COEFFICIENT`.
    """

    radiation_length_mm: float
    moliere_radius_mm: float
    critical_energy_gev: float
    z_eff: float
    e_hat: float
    sampling_frequency: float
    sampling_term: float
    layer_sampling_term: np.ndarray
    layer_mip_fraction: np.ndarray
    layer_edges_x0: np.ndarray
    layer_edges_mm: np.ndarray
    active_depth_x0: np.ndarray
    active_depth_mm: np.ndarray


def _mass_weighted(geometry: Geometry, attribute: str) -> tuple[float, float]:
    """Mass-weighted mean of a material attribute over the absorbers and over the active layers."""
    out = []
    for role in ("absorber", "active"):
        masses = np.array([g.count * getattr(g, f"{role}_thickness_mm") * get_material(getattr(g, role)).density_g_cm3
                           for g in geometry.layers])
        values = np.array([getattr(get_material(getattr(g, role)), attribute) for g in geometry.layers])
        out.append(float(np.sum(masses * values) / masses.sum()) if masses.sum() > 0 else float(values.mean()))
    return out[0], out[1]


@lru_cache(maxsize=32)
def stack_parameters(geometry: Geometry) -> StackParameters:
    """The effective material parameters of ``geometry`` (computed from its layer groups)."""
    z_absorber, z_active = _mass_weighted(geometry, "Z")
    m_abs = sum(g.count * g.absorber_thickness_mm * get_material(g.absorber).density_g_cm3 for g in geometry.layers)
    m_act = sum(g.count * g.active_thickness_mm * get_material(g.active).density_g_cm3 for g in geometry.layers)
    z_eff = (m_abs * z_absorber + m_act * z_active) / (m_abs + m_act)
    thickness = geometry.layer_thickness_mm()
    x0 = geometry.radiation_length_mm
    layer_terms, mip_fractions, active_x0, active_mm = [], [], [], []
    for g in geometry.layers:
        act = g.active_thickness_mm * get_material(g.active).mip_dedx_mev_cm
        f_mip = act / (act + g.absorber_thickness_mm * get_material(g.absorber).mip_dedx_mev_cm)
        layer_terms.append(np.full(g.count, SAMPLING_COEFFICIENT * math.sqrt(g.active_thickness_mm / f_mip)))
        mip_fractions.append(np.full(g.count, f_mip))
        active_x0.append(np.full(g.count, g.absorber_thickness_mm / get_material(g.absorber).radiation_length_mm
                                 + 0.5 * g.active_thickness_mm / get_material(g.active).radiation_length_mm))
        active_mm.append(np.full(g.count, g.absorber_thickness_mm + 0.5 * g.active_thickness_mm))
    edges_x0 = np.concatenate([[0.0], np.cumsum(geometry.layer_radiation_lengths())])
    edges_mm = geometry.layer_edges_mm()
    mean_active_mm = sum(g.count * g.active_thickness_mm for g in geometry.layers) / geometry.n_layers
    return StackParameters(
        radiation_length_mm=x0,
        moliere_radius_mm=geometry.moliere_radius_mm,
        critical_energy_gev=geometry.critical_energy_mev / 1000.0,
        z_eff=float(z_eff),
        e_hat=1.0 / (1.0 + 0.007 * (z_absorber - z_active)),
        sampling_frequency=float(x0 / thickness.mean()),
        sampling_term=SAMPLING_COEFFICIENT * math.sqrt(mean_active_mm / geometry.mip_sampling_fraction),
        layer_sampling_term=np.concatenate(layer_terms),
        layer_mip_fraction=np.concatenate(mip_fractions),
        layer_edges_x0=edges_x0,
        layer_edges_mm=edges_mm,
        active_depth_x0=edges_x0[:-1] + np.concatenate(active_x0),
        active_depth_mm=edges_mm[:-1] + np.concatenate(active_mm),
    )


def layer_sampling_fractions(stack: StackParameters, params: GFlashParameters = DEFAULT_PARAMETERS) -> np.ndarray:
    """Active signal per unit of shower energy at the active layer's density, per readout layer
    (n_layers,): sampling_scale (default e_hat) x f_mip of the layer, x (1 - albedo) for the last
    layer, which has no absorber behind it to scatter particles back."""
    scale = stack.e_hat if params.sampling_scale is None else params.sampling_scale
    fractions = scale * stack.layer_mip_fraction
    fractions[-1] *= 1.0 - params.albedo
    return fractions


# --- longitudinal profile -------------------------------------------------------------------

def mean_log_profile_parameters(stack: StackParameters, primary_energy: np.ndarray,
                                params: GFlashParameters = DEFAULT_PARAMETERS) -> dict[str, np.ndarray]:
    """Means, widths and correlations of ln T and ln alpha (T in X0), homogeneous and sampling.

    Published values (``params`` default): homogeneous medium <ln T> = ln(ln y - 0.812),
    <ln alpha> = ln(0.81 + (0.458 + 2.26/Z) ln y), sigma(ln T) = 1/(-1.4 + 1.26 ln y),
    sigma(ln alpha) = 1/(-0.58 + 0.86 ln y), rho = 0.705 - 0.023 ln y, with y = E / E_c. Sampling
    calorimeter: T = T_hom - 0.55/F_S - 0.69 (1 - e_hat), alpha = alpha_hom - 0.476/F_S,
    sigma(ln T) = 1/(-2.5 + 1.25 ln y), sigma(ln alpha) = 1/(-0.82 + 0.79 ln y), rho = 0.784 - 0.023 ln y.
    Widths are capped at 0.5 as in GFlash (also where the fitted form turns negative, y < ~30);
    correlations are clipped to [-0.99, 0.99].
    """
    p = params
    ln_y = np.log(np.asarray(primary_energy, dtype=np.float64) / stack.critical_energy_gev)
    t_hom = np.maximum(p.t_hom_slope * ln_y + p.t_hom_offset, 0.1)
    a_hom = np.maximum(p.alpha_hom_offset + (p.alpha_hom_slope + p.alpha_hom_z / stack.z_eff) * ln_y, 0.1)
    fs, e_hat = stack.sampling_frequency, stack.e_hat

    def width(offset: float, slope: float) -> np.ndarray:
        return 1.0 / np.maximum(offset + slope * ln_y, 2.0)

    def corr(offset: float, slope: float) -> np.ndarray:
        return np.clip(offset + slope * ln_y, -0.99, 0.99)

    return {
        "ln_t_hom": np.log(t_hom),
        "ln_alpha_hom": np.log(a_hom),
        "sigma_ln_t_hom": width(p.sigma_ln_t_hom_offset, p.sigma_ln_t_hom_slope),
        "sigma_ln_alpha_hom": width(p.sigma_ln_alpha_hom_offset, p.sigma_ln_alpha_hom_slope),
        "rho_hom": corr(p.rho_hom_offset, p.rho_hom_slope),
        "ln_t": np.log(np.maximum(t_hom + p.t_sampling_fs / fs + p.t_sampling_ehat * (1.0 - e_hat), 0.1)),
        "ln_alpha": np.log(np.maximum(a_hom + p.alpha_sampling_fs / fs, 1.1)),
        "sigma_ln_t": width(p.sigma_ln_t_offset, p.sigma_ln_t_slope),
        "sigma_ln_alpha": width(p.sigma_ln_alpha_offset, p.sigma_ln_alpha_slope),
        "rho": corr(p.rho_offset, p.rho_slope),
    }


def _correlated(mean_t, sigma_t, mean_a, sigma_a, rho, z1, z2):
    c1, c2 = np.sqrt((1.0 + rho) / 2.0), np.sqrt((1.0 - rho) / 2.0)
    return np.exp(mean_t + sigma_t * (c1 * z1 + c2 * z2)), np.exp(mean_a + sigma_a * (c1 * z1 - c2 * z2))


def draw_profile_parameters(stack: StackParameters, primary_energy: np.ndarray, rng: np.random.Generator,
                            params: GFlashParameters = DEFAULT_PARAMETERS
                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per shower (T, alpha) of the sampling-calorimeter energy profile and (T_hom, alpha_hom)
    of the homogeneous one, drawn from the same two normal variates (T in X0). alpha >= 1.1, T >= 0.5."""
    p = mean_log_profile_parameters(stack, primary_energy, params)
    z1, z2 = rng.standard_normal((2, len(primary_energy)))
    t, alpha = _correlated(p["ln_t"], p["sigma_ln_t"], p["ln_alpha"], p["sigma_ln_alpha"], p["rho"], z1, z2)
    t_hom, alpha_hom = _correlated(p["ln_t_hom"], p["sigma_ln_t_hom"], p["ln_alpha_hom"], p["sigma_ln_alpha_hom"],
                                   p["rho_hom"], z1, z2)
    return np.maximum(t, 0.5), np.maximum(alpha, 1.1), np.maximum(t_hom, 0.5), np.maximum(alpha_hom, 1.1)


def gamma_profile_fractions(t_max: np.ndarray, alpha: np.ndarray, depth_edges_x0: np.ndarray) -> np.ndarray:
    """Fraction of a gamma profile dE/dt ~ t^(alpha-1) exp(-beta t), beta = (alpha-1)/T, between
    consecutive depth edges (X0 along the axis, from the shower start). ``depth_edges_x0``
    (n, n_layers + 1), ``t_max``/``alpha`` (n,); returns (n, n_layers)."""
    beta = (alpha - 1.0) / t_max
    cdf = gammainc(alpha[:, None], beta[:, None] * np.maximum(depth_edges_x0, 0.0))
    return np.diff(cdf, axis=1)


def gamma_profile_density(t_max: np.ndarray, alpha: np.ndarray, depth_x0: np.ndarray) -> np.ndarray:
    """The normalised gamma profile f(t) = (beta t)^(alpha-1) beta exp(-beta t) / Gamma(alpha), per X0,
    at depths ``depth_x0`` (n, m) along the axis from the shower start (0 before it);
    ``t_max``/``alpha`` (n,). Returns (n, m) in 1/X0."""
    beta = ((alpha - 1.0) / t_max)[:, None]
    a = alpha[:, None]
    x = beta * np.maximum(depth_x0, 1e-300)
    log_f = (a - 1.0) * np.log(x) - x - gammaln(a) + np.log(beta)
    return np.where(depth_x0 > 0, np.exp(log_f), 0.0)


# --- radial profile -------------------------------------------------------------------------

def radial_parameters(stack: StackParameters, primary_energy: np.ndarray, tau: np.ndarray,
                      params: GFlashParameters = DEFAULT_PARAMETERS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Core radius R_C, tail radius R_T (Moliere radii) and core weight p at tau = t/T.

    ``primary_energy`` (n,) GeV, ``tau`` (n, n_layers). Published values (``params`` default):
    R_C = z1 + z2 tau, z1 = 0.0251 + 0.00319 ln E, z2 = 0.1162 - 0.000381 Z;
    R_T = k1 (exp(k3 (tau - k2)) + exp(k4 (tau - k2))), k1 = 0.659 - 0.00309 Z, k2 = 0.645,
    k3 = -2.59, k4 = 0.3585 + 0.0412 ln E;
    p = p1 exp((p2 - tau)/p3 - exp((p2 - tau)/p3)), p1 = 2.632 - 0.00094 Z,
    p2 = 0.401 + 0.00187 Z, p3 = 1.313 - 0.0686 ln E.
    Sampling corrections: R_C += -0.0203 (1 - e_hat) + 0.0397/F_S exp(-tau);
    R_T += -0.14 (1 - e_hat) - 0.495/F_S exp(-tau);
    p += (1 - e_hat) (0.348 - 0.642/F_S exp(-(tau - 1)^2)). p is clipped to [0, 1], radii to >= 0.005.
    """
    q = params
    z, fs, one_minus_e_hat = stack.z_eff, stack.sampling_frequency, 1.0 - stack.e_hat
    ln_e = np.log(np.asarray(primary_energy, dtype=np.float64))[:, None]
    r_core = (q.core_z1_offset + q.core_z1_ln_e * ln_e) + (q.core_z2_offset + q.core_z2_z * z) * tau
    k4 = q.tail_k4_offset + q.tail_k4_ln_e * ln_e
    r_tail = (q.tail_k1_offset + q.tail_k1_z * z) * (np.exp(q.tail_k3 * (tau - q.tail_k2))
                                                     + np.exp(k4 * (tau - q.tail_k2)))
    p3 = np.maximum(q.weight_p3_offset + q.weight_p3_ln_e * ln_e, 1e-3)
    u = (q.weight_p2_offset + q.weight_p2_z * z - tau) / p3
    weight = (q.weight_p1_offset + q.weight_p1_z * z) * np.exp(u - np.exp(u))
    r_core = r_core + q.core_sampling_ehat * one_minus_e_hat + q.core_sampling_fs / fs * np.exp(-tau)
    r_tail = r_tail + q.tail_sampling_ehat * one_minus_e_hat + q.tail_sampling_fs / fs * np.exp(-tau)
    weight = weight + one_minus_e_hat * (q.weight_sampling_ehat
                                         + q.weight_sampling_fs / fs * np.exp(-((tau - 1.0) ** 2)))
    return np.maximum(r_core, 0.005), np.maximum(r_tail, 0.005), np.clip(weight, 0.0, 1.0)


def _rectangle_primitive(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Integral of the 2-d density R^2 / (pi (x^2 + y^2 + R^2)^2) over [0, a] x [0, b], with a, b in
    units of R (odd in a and in b): (a/s_a atan(b/s_a) + b/s_b atan(a/s_b)) / (2 pi),
    s_a = sqrt(a^2 + 1). Its radial form is 2 r R^2 / (r^2 + R^2)^2."""
    sa = np.sqrt(a * a + 1.0)
    sb = np.sqrt(b * b + 1.0)
    return (a / sa * np.arctan(b / sa) + b / sb * np.arctan(a / sb)) / (2.0 * math.pi)


def rectangle_fractions(x_edges: np.ndarray, y_edges: np.ndarray, r_core: np.ndarray, r_tail: np.ndarray,
                        core_weight: np.ndarray) -> np.ndarray:
    """Fraction of the two-component radial profile in each rectangular cell of each layer (float32).

    ``x_edges`` (nx + 1,) and ``y_edges`` (n, ny + 1, n_layers) cell edges relative to the axis;
    radii ``r_core``, ``r_tail`` and the core weight ``core_weight`` (n, n_layers); lengths in one
    unit (mm). Returns (n, nx, ny, n_layers). The primitive is odd in x, so it is evaluated on the
    distinct |x| only.
    """
    abs_x, where = np.unique(np.abs(np.asarray(x_edges, dtype=np.float32)), return_inverse=True)
    sign_x = np.sign(x_edges).astype(np.float32)[:, None, None]
    y = np.asarray(y_edges, dtype=np.float32)[:, None, :, :]
    x = abs_x[None, :, None, None]
    prim = np.zeros((y.shape[0], len(abs_x), y.shape[2], y.shape[3]), dtype=np.float32)
    for radius, weight in ((r_core, core_weight), (r_tail, 1.0 - core_weight)):
        r = radius.astype(np.float32)[:, None, None, :]
        prim += weight.astype(np.float32)[:, None, None, :] * _rectangle_primitive(x / r, y / r)
    prim = sign_x * prim[:, where]
    return np.diff(np.diff(prim, axis=1), axis=2)


def ring_fractions(r_edges: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """Fraction of one radial component (radius R) in each ring: r^2/(r^2+R^2) differences.
    ``r_edges`` (n_r + 1,), ``radius`` (...); returns (..., n_r)."""
    r2 = np.asarray(r_edges, dtype=np.float64) ** 2
    return np.diff(r2 / (r2 + radius[..., None] ** 2), axis=-1)


# --- the simulator --------------------------------------------------------------------------

def _check_inputs(geometry: Geometry, primary_energy, incident_angle, particle: str):
    if particle not in PARTICLES:
        raise ValueError(f"unknown particle {particle!r}; expected one of {', '.join(PARTICLES)}")
    energy = np.asarray(primary_energy, dtype=np.float64).reshape(-1)
    angle = np.asarray(incident_angle, dtype=np.float64).reshape(-1)
    if angle.size == 1 and energy.size != 1:
        angle = np.full(energy.shape, angle[0])
    if energy.shape != angle.shape:
        raise ValueError(f"primary_energy {energy.shape} and incident_angle {angle.shape} must have the same length")
    if not np.all(np.isfinite(energy) & (energy > 0)):
        raise ValueError("primary_energy must be positive and finite (GeV)")
    if not np.all((angle > 0) & (angle < math.pi)):
        raise ValueError("incident_angle must lie strictly between 0 and pi (rad)")
    if geometry.kind == "cylindrical" and not np.allclose(angle, math.pi / 2, atol=1e-6):
        raise ValueError(f"geometry {geometry.name!r} is cylindrical around the particle direction: only normal "
                         "incidence (pi/2 rad) is simulated")
    return energy, angle


def _pivot_depth_mm(stack: StackParameters, primary_energy: np.ndarray, sin_theta: np.ndarray,
                    particle: str, params: GFlashParameters = DEFAULT_PARAMETERS) -> np.ndarray:
    """Depth (mm, along the normal) of the mean shower maximum, where a tilted axis crosses the
    lateral grid centre: exp(<ln T>) (+ 9/7 X0 for photons) along the axis, projected."""
    t_mean = np.exp(mean_log_profile_parameters(stack, primary_energy, params)["ln_t"])
    if particle == "gamma":
        t_mean = t_mean + PHOTON_CONVERSION_DEPTH_X0
    far_x0 = stack.layer_edges_x0[-1] + 1000.0  # beyond the stack: continue with X0_eff
    edges_x0 = np.append(stack.layer_edges_x0, far_x0)
    edges_mm = np.append(stack.layer_edges_mm, stack.layer_edges_mm[-1] + 1000.0 * stack.radiation_length_mm)
    return np.interp(t_mean * sin_theta, edges_x0, edges_mm)


def pivot_depth_mm(stack: StackParameters, primary_energy: np.ndarray, sin_theta: np.ndarray,
                   particle: str = "e-") -> np.ndarray:
    """Depth (mm, along the normal) where GFlash's tilted shower axis crosses the lateral grid
    centre (the mean shower maximum), per primary energy (GeV) and sin(theta): the entry-point
    convention of GFlash showers (and of the training data), used to place them in Geant4."""
    return _pivot_depth_mm(stack, np.asarray(primary_energy, np.float64), np.asarray(sin_theta, np.float64),
                           "gamma" if particle == "gamma" else "e-")


def _lateral_fractions(geometry: Geometry, stack: StackParameters, primary_energy, sin_theta, cot_theta,
                       pivot_mm, r_core, r_tail, core_weight) -> np.ndarray:
    """Fraction of each layer's energy in each cell at the active layer: (n, *lateral shape, n_layers)."""
    rm = stack.moliere_radius_mm
    if geometry.kind == "cylindrical":
        r_edges = np.asarray(geometry.r_edges_mm)
        rings = core_weight[..., None] * ring_fractions(r_edges, r_core * rm) \
            + (1.0 - core_weight[..., None]) * ring_fractions(r_edges, r_tail * rm)  # (n, L, n_r)
        n_alpha = geometry.shape[1]
        per_cell = np.moveaxis(rings, 1, -1)[:, :, None, :] / n_alpha  # (n, n_r, 1, L)
        return np.broadcast_to(per_cell, (len(primary_energy), geometry.shape[0], n_alpha, geometry.n_layers))
    nx, ny, _ = geometry.shape
    dx, dy = geometry.cell_size_mm  # type: ignore[misc]
    x_edges = (np.arange(nx + 1) - nx / 2) * dx
    y_edges = (np.arange(ny + 1) - ny / 2) * dy
    y_axis = (stack.active_depth_mm[None, :] - pivot_mm[:, None]) * cot_theta[:, None]  # (n, L) mm
    # The profile lives in the plane normal to the axis: a layer plane cuts it stretched by 1/sin(theta) in y.
    v_edges = (y_edges[None, :, None] - y_axis[:, None, :]) * sin_theta[:, None, None]  # (n, ny + 1, L)
    return rectangle_fractions(x_edges, v_edges, r_core * rm, r_tail * rm, core_weight)


def layer_signal_energy(stack: StackParameters, t_max: np.ndarray, alpha: np.ndarray, primary_energy: np.ndarray,
                        sin_theta: np.ndarray, start_x0: np.ndarray) -> np.ndarray:
    """Shower energy each readout layer samples (GeV, (n, n_layers)): the profile's density at the
    active layer's depth along the axis times the layer's thickness along the axis, E f(t_active)
    dt_layer / sin(theta). Summed over a contained shower it is E (a Riemann sum of the profile);
    it differs from the energy deposited inside the layer where the absorber thickness changes,
    which a thin active layer does not see."""
    depth = stack.active_depth_x0[None, :] / sin_theta[:, None] - start_x0[:, None]
    thickness = np.diff(stack.layer_edges_x0)[None, :] / sin_theta[:, None]
    return primary_energy[:, None] * gamma_profile_density(t_max, alpha, depth) * thickness


def _simulate_chunk(geometry: Geometry, stack: StackParameters, primary_energy: np.ndarray,
                    incident_angle: np.ndarray, rng: np.random.Generator, particle: str,
                    params: GFlashParameters) -> np.ndarray:
    n = len(primary_energy)
    sin_theta, cot_theta = np.sin(incident_angle), 1.0 / np.tan(incident_angle)
    t_max, alpha, t_hom, alpha_hom = draw_profile_parameters(stack, primary_energy, rng, params)
    start_x0 = rng.exponential(PHOTON_CONVERSION_DEPTH_X0, n) if particle == "gamma" else np.zeros(n)
    start_x0 = start_x0 - params.start_offset_x0  # the profiles' origin (X0 along the axis from the face)
    # shower energy each layer samples at its active layer (GeV), the profile renormalised to t > start
    layer_energy = layer_signal_energy(stack, t_max, alpha, primary_energy, sin_theta, start_x0)
    if params.albedo > 0 and params.albedo_depth_x0 > 0:  # the scattered-back part samples the shower behind
        behind = layer_signal_energy(stack, t_max, alpha, primary_energy, sin_theta, start_x0 - params.albedo_depth_x0)
        layer_energy[:, :-1] = (1.0 - params.albedo) * layer_energy[:, :-1] + params.albedo * behind[:, :-1]
    if params.start_offset_x0 > 0:
        layer_energy /= 1.0 - gammainc(alpha, (alpha - 1.0) / t_max * params.start_offset_x0)[:, None]
    # energy spots: their number and their own longitudinal profile (sampling-calorimeter GFlash)
    depth_x0 = stack.layer_edges_x0[None, :] / sin_theta[:, None] - start_x0[:, None]
    n_spots = params.spot_number / stack.sampling_term * primary_energy ** params.spot_exponent
    t_spot = np.maximum(t_hom * (params.spot_t_offset + params.spot_t_z * stack.z_eff), 0.5)
    alpha_spot = np.maximum(alpha_hom * (params.spot_alpha_offset + params.spot_alpha_z * stack.z_eff), 1.1)
    layer_spots = n_spots[:, None] * gamma_profile_fractions(t_spot, alpha_spot, depth_x0)
    # at least one spot in a layer that holds energy
    layer_spots = np.where(layer_energy > 0, np.maximum(layer_spots, 1.0), 0.0)
    spot_energy = np.divide(layer_energy, layer_spots, out=np.zeros_like(layer_energy), where=layer_spots > 0)  # GeV
    active_depth = stack.active_depth_x0[None, :] / sin_theta[:, None] - start_x0[:, None]
    tau = np.maximum(active_depth, 0.0) / t_max[:, None]
    r_core, r_tail, core_weight = radial_parameters(stack, primary_energy, tau, params)
    pivot_mm = _pivot_depth_mm(stack, primary_energy, sin_theta, particle, params)
    frac = _lateral_fractions(geometry, stack, primary_energy, sin_theta, cot_theta, pivot_mm,
                              r_core, r_tail, core_weight)  # (n, a, b, L)
    frac = np.maximum(frac, np.float32(0.0))
    lateral_axes = (1, 2)
    # spots per cell: Poisson with mean N_layer x cell fraction; the energy leaving the grid is one more part
    spots = rng.poisson(frac * layer_spots.astype(np.float32)[:, None, None, :])
    outside = np.maximum(1.0 - frac.sum(axis=lateral_axes, dtype=np.float64), 0.0)
    spots_drawn = spots.sum(axis=lateral_axes) + rng.poisson(outside * layer_spots)  # (n, L)
    # sampling fluctuation of the spots' energy: Gamma with mean k e_s and variance c^2 k e_s for k spots
    c2 = (stack.layer_sampling_term * (params.sampling_coefficient / SAMPLING_COEFFICIENT)) ** 2  # GeV
    hit = spots > 0
    deposit = np.zeros(spots.shape, dtype=np.float32)  # GeV of sampled shower energy
    if params.sampling_coefficient > 0:
        shape_per_spot = np.broadcast_to((spot_energy / c2[None, :]).astype(np.float32)[:, None, None, :],
                                         spots.shape)
        deposit[hit] = rng.standard_gamma(spots[hit] * shape_per_spot[hit], dtype=np.float32) \
            * np.broadcast_to(c2.astype(np.float32), spots.shape)[hit]
    else:  # no sampling fluctuation: each spot carries its mean energy
        deposit[hit] = spots[hit] * np.broadcast_to(spot_energy.astype(np.float32)[:, None, None, :], spots.shape)[hit]
    # GFlash's spot number per layer is fixed: rescale the Poisson total to N_layer (Poisson given its
    # sum is multinomial); 1/(1 - exp(-N)) restores the mean lost to layers that drew no spot.
    norm = np.divide(layer_spots, spots_drawn * -np.expm1(-layer_spots), out=np.zeros_like(layer_spots),
                     where=spots_drawn > 0)
    active = deposit
    # the active layer's share of the sampled energy: its own sampling fraction
    active *= (layer_sampling_fractions(stack, params)[None, :] * norm).astype(np.float32)[:, None, None, :]
    active[active < geometry.readout_threshold_gev] = 0.0
    return active


def simulate_showers(geometry: Geometry, primary_energy: np.ndarray, incident_angle: np.ndarray,
                     rng: np.random.Generator, *, particle: str = "e-",
                     params: GFlashParameters | str | Path | None = None) -> np.ndarray:
    """Simulate one shower per (primary_energy [GeV], incident_angle [rad]) pair.

    Returns float32 ``(n, *geometry.shape)``: energy deposited in the active material per cell
    (GeV). ``rng`` is the only source of randomness. ``particle`` is ``"e-"`` (default) or
    ``"gamma"``. ``params``: the coefficients (:class:`GFlashParameters`, a parameter file or a
    shipped set's name, see :func:`load_parameters`); default the published values. A tilted axis
    lies in the y-z plane, y(depth) = (depth - z_max) cot(theta), with z_max the depth of the mean
    shower maximum for that energy (the axis crosses the grid centre there); cylindrical geometries
    accept normal incidence only.
    """
    g = geometry
    energy, angle = _check_inputs(g, primary_energy, incident_angle, particle)
    p = load_parameters(params)
    stack = stack_parameters(g)
    out = np.empty((len(energy), *g.shape), dtype=np.float32)
    chunk = max(1, _CHUNK_CELLS // g.n_cells)
    for s in range(0, len(energy), chunk):
        out[s:s + chunk] = _simulate_chunk(g, stack, energy[s:s + chunk], angle[s:s + chunk], rng, particle, p)
    return out


def parameters_label(params: GFlashParameters | str | Path | None) -> str:
    """How a parameter choice is recorded in a file's attributes: ``grindhammer-peters`` for the
    published values, the shipped set's name or the file's path otherwise."""
    if params is None or (isinstance(params, GFlashParameters) and params == DEFAULT_PARAMETERS):
        return "grindhammer-peters"
    if isinstance(params, GFlashParameters):
        return "custom"
    return "grindhammer-peters" if str(params).lower() in DEFAULT_PARAMETER_NAMES else str(params)


def simulate(geometry: Geometry, energy: str = "2:500", angle_deg: str = "90", n: int = 1000,
             seed: int = 0, batch_size: int = 1000, progress: bool = False, particle: str = "e-",
             params: GFlashParameters | str | Path | None = None) -> ShowerSet:
    """Simulate ``n`` showers with conditions drawn from specs (``fastshower.conditions``:
    energy in GeV, angle in deg), checked against the geometry's allowed ranges. One generator
    seeded with ``seed`` draws the conditions and the showers. ``params`` as in
    :func:`simulate_showers`. Provenance goes into ``attrs``. (:func:`iter_simulate` batch by batch.)"""
    from tqdm import tqdm

    parts = []
    with tqdm(total=n, desc="simulate", unit="shower", disable=not progress) as bar:
        for part in iter_simulate(geometry, energy, angle_deg, n, seed=seed, batch_size=batch_size,
                                  particle=particle, params=params):
            parts.append(part)
            bar.update(len(part))
    return ShowerSet.concatenate(parts)


#: Conditions drawn per call when skipping a random stream ahead (bounds memory).
_SKIP_CHUNK = 1 << 20


def _advance(rng: np.random.Generator, spec, n: int) -> None:
    """Move ``rng`` to where one ``spec.sample(n, rng)`` would leave it: a uniform draw takes one
    64-bit output per value, so PCG64 jumps there at once (``advance``) when no half-used 32-bit
    output is buffered; other specs are drawn and dropped in chunks of :data:`_SKIP_CHUNK`."""
    bits = rng.bit_generator
    if spec.kind == "value":
        return
    if spec.kind in ("uniform", "loguniform") and hasattr(bits, "advance") and not bits.state.get("has_uint32"):
        bits.advance(n)
        return
    for start in range(0, n, _SKIP_CHUNK):
        spec.sample(min(_SKIP_CHUNK, n - start), rng)


def iter_simulate(geometry: Geometry, energy: str = "2:500", angle_deg: str = "90", n: int = 1000,
                  seed: int = 0, batch_size: int = 1000, particle: str = "e-",
                  params: GFlashParameters | str | Path | None = None) -> Iterator[ShowerSet]:
    """:func:`simulate` batch by batch in constant memory (conditions drawn per batch too): the
    concatenated batches equal ``simulate(...)`` with the same arguments. The one generator seeded
    with ``seed`` is read as ``simulate`` reads it (all energies, then all angles, then the showers)
    through three copies advanced to those points, so no array of ``n`` conditions is ever held.
    Each batch's ``attrs`` hold the provenance; ``params`` as in :func:`simulate_showers`."""
    from fastshower.conditions import parse_spec, sample_angles, sample_energies

    g = geometry
    if n < 1 or batch_size < 1:
        raise ValueError(f"n and batch_size must be >= 1, got {n} and {batch_size}")
    p = load_parameters(params)
    energy_spec, angle_spec = parse_spec(energy, "energy"), parse_spec(angle_deg, "angle")
    sample_energies(energy_spec, 0, np.random.default_rng(0), g.energy_range_gev)  # range checks only
    sample_angles(angle_spec, 0, np.random.default_rng(0), g.angle_range_rad)
    energy_rng = np.random.default_rng(seed)
    angle_rng = np.random.default_rng(seed)
    _advance(angle_rng, energy_spec, n)
    shower_rng = np.random.default_rng(seed)
    shower_rng.bit_generator.state = angle_rng.bit_generator.state
    _advance(shower_rng, angle_spec, n)
    attrs = {"simulator": "gflash", "simulator_version": __version__, "seed": seed, "particle": particle,
             "energy_spec": str(energy), "angle_spec_deg": str(angle_deg), "gflash_params": parameters_label(params)}
    for start in range(0, n, batch_size):
        size = min(batch_size, n - start)
        primary_energy = sample_energies(energy_spec, size, energy_rng)
        incident_angle = sample_angles(angle_spec, size, angle_rng)
        showers = simulate_showers(g, primary_energy, incident_angle, shower_rng, particle=particle, params=p)
        yield ShowerSet(showers, primary_energy, incident_angle, g, dict(attrs))
