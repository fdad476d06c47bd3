"""Unit and layout conversions between the shared convention and the published file layouts.

The shared convention (DESIGN.md): showers float32 ``(n, nx, ny, nz)`` (cylindrical
``(n, n_r, n_alpha, n_layers)``), energy deposited in the active material per cell in GeV.
Every function here has its inverse beside it, and ``inverse(forward(x)) == x`` up to float32
rounding. Arithmetic runs in the input's float type (float64 for integer input), without a
float64 copy of large float32 blocks.
"""

from __future__ import annotations

import numpy as np

#: 3DGAN variable-angle files store cell energies as 50 x the deposited GeV (ECAL sum ~ primary energy).
THREEDGAN_ANGLE_SCALE = 50.0
#: Exponent of the power transform the 3DGAN angle models train on (``--xpower 0.85``).
THREEDGAN_POWER = 0.85
MEV_PER_GEV = 1000.0


def _float_type(x: np.ndarray) -> np.dtype:
    x = np.asarray(x)
    return x.dtype if np.issubdtype(x.dtype, np.floating) else np.dtype(np.float64)


def _scaled(x: np.ndarray, factor: float) -> np.ndarray:
    x = np.asarray(x)
    ftype = _float_type(x)
    return np.multiply(x, ftype.type(factor), dtype=ftype)


# --- 3DGAN x50 cell scale ------------------------------------------------------------------------

def gev_to_ecal_x50(showers_gev: np.ndarray) -> np.ndarray:
    """Deposited GeV -> the 3DGAN variable-angle ``ECAL`` unit (50 x GeV)."""
    return _scaled(showers_gev, THREEDGAN_ANGLE_SCALE)


def ecal_x50_to_gev(ecal_x50: np.ndarray) -> np.ndarray:
    """3DGAN variable-angle ``ECAL`` (50 x GeV) -> deposited GeV; inverse of :func:`gev_to_ecal_x50`."""
    return _scaled(ecal_x50, 1.0 / THREEDGAN_ANGLE_SCALE)


# --- MeV -----------------------------------------------------------------------------------------

def gev_to_mev(energy_gev: np.ndarray) -> np.ndarray:
    """GeV -> MeV."""
    return _scaled(energy_gev, MEV_PER_GEV)


def mev_to_gev(energy_mev: np.ndarray) -> np.ndarray:
    """MeV -> GeV; inverse of :func:`gev_to_mev`."""
    return _scaled(energy_mev, 1.0 / MEV_PER_GEV)


# --- CaloChallenge sampling-fraction scaling ----------------------------------------------------

def deposit_gev_to_calochallenge_mev(showers_gev: np.ndarray, sampling_fraction: float) -> np.ndarray:
    """Active-material deposit in GeV -> CaloChallenge voxel energy in MeV, ``GeV * 1000 / f_s``.

    The CaloChallenge Par04 data sets divide the deposit by the sampling fraction f_s (0.033), so
    that the voxel sum is close to the incident energy.
    """
    _check_sampling_fraction(sampling_fraction)
    return _scaled(showers_gev, MEV_PER_GEV / sampling_fraction)


def calochallenge_mev_to_deposit_gev(showers_mev: np.ndarray, sampling_fraction: float) -> np.ndarray:
    """CaloChallenge voxel energy (MeV, divided by f_s) -> active deposit in GeV; inverse of the above."""
    _check_sampling_fraction(sampling_fraction)
    return _scaled(showers_mev, sampling_fraction / MEV_PER_GEV)


def _check_sampling_fraction(sampling_fraction: float) -> None:
    if not 0 < sampling_fraction <= 1:
        raise ValueError(f"sampling fraction must lie in (0, 1], got {sampling_fraction!r}")


# --- CaloChallenge voxel order -------------------------------------------------------------------

def flatten_calochallenge(showers: np.ndarray) -> np.ndarray:
    """``(n, n_r, n_alpha, n_layers)`` -> CaloChallenge ``(n, n_layers * n_alpha * n_r)``.

    The CaloChallenge voxel index runs over (layer, alpha, r) with r fastest, i.e. the flat array
    reshapes to ``(n, n_layers, n_alpha, n_r)``.
    """
    showers = np.asarray(showers)
    if showers.ndim != 4:
        raise ValueError(f"expected showers (n, n_r, n_alpha, n_layers), got shape {showers.shape}")
    return np.ascontiguousarray(showers.transpose(0, 3, 2, 1)).reshape(showers.shape[0], -1)


def unflatten_calochallenge(flat: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """CaloChallenge ``(n, n_voxels)`` -> ``(n, n_r, n_alpha, n_layers)`` for ``shape = (n_r, n_alpha,
    n_layers)``; inverse of :func:`flatten_calochallenge`."""
    flat = np.asarray(flat)
    n_r, n_alpha, n_layers = shape
    if flat.ndim != 2 or flat.shape[1] != n_r * n_alpha * n_layers:
        raise ValueError(f"expected CaloChallenge showers (n, {n_r * n_alpha * n_layers}), got shape {flat.shape}")
    return np.ascontiguousarray(flat.reshape(flat.shape[0], n_layers, n_alpha, n_r).transpose(0, 3, 2, 1))


# --- channel axis --------------------------------------------------------------------------------

def to_channels_last(showers: np.ndarray) -> np.ndarray:
    """``(n, x, y, z)`` -> Keras ``channels_last`` ``(n, x, y, z, 1)``."""
    return np.asarray(showers)[..., np.newaxis]


def from_channels_last(images: np.ndarray) -> np.ndarray:
    """``(n, x, y, z, 1)`` -> ``(n, x, y, z)``; inverse of :func:`to_channels_last`."""
    images = np.asarray(images)
    if images.ndim != 5 or images.shape[-1] != 1:
        raise ValueError(f"expected channels-last images (n, x, y, z, 1), got shape {images.shape}")
    return images[..., 0]


def to_channels_first(showers: np.ndarray) -> np.ndarray:
    """``(n, x, y, z)`` -> PyTorch/``channels_first`` ``(n, 1, x, y, z)``."""
    return np.asarray(showers)[:, np.newaxis]


def from_channels_first(images: np.ndarray) -> np.ndarray:
    """``(n, 1, x, y, z)`` -> ``(n, x, y, z)``; inverse of :func:`to_channels_first`."""
    images = np.asarray(images)
    if images.ndim != 5 or images.shape[1] != 1:
        raise ValueError(f"expected channels-first images (n, 1, x, y, z), got shape {images.shape}")
    return images[:, 0]


# --- power transform -----------------------------------------------------------------------------

def power_transform(cells: np.ndarray, power: float = THREEDGAN_POWER) -> np.ndarray:
    """``x ** power`` (3DGAN angle models: 0.85), compressing the cells' dynamic range; needs x >= 0."""
    cells = np.asarray(cells)
    if power <= 0:
        raise ValueError(f"power must be positive, got {power!r}")
    if np.any(cells < 0):
        raise ValueError("the power transform needs non-negative cell energies")
    ftype = _float_type(cells)
    return np.power(cells, ftype.type(power), dtype=ftype)


def inverse_power_transform(cells: np.ndarray, power: float = THREEDGAN_POWER) -> np.ndarray:
    """``y ** (1 / power)``; inverse of :func:`power_transform`."""
    return power_transform(cells, 1.0 / power)
