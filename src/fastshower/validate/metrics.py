"""Distances between two shower sets: the metric maths, pure functions of arrays and condition bins.

Every metric compares a *reference* (ground truth) with a *candidate* (a generator's output).
Condition binning lives in :mod:`fastshower.validate.binning`, the driver that computes them all
beside their floor in :mod:`fastshower.validate.comparison`, the tables in
:mod:`fastshower.validate.formatting`. Definitions, units and binning: docs/metrics.md and the
docstrings below.
"""

from __future__ import annotations

import numpy as np
from scipy import linalg

# Sampling fraction, profile MSE and quick_metrics are shared with training (epoch choice), so they
# live one layer down, in fastshower.data.summaries; re-exported here with the other metrics.
from fastshower.data.summaries import (  # noqa: F401
    MIN_EVENTS_PER_BIN,
    ConditionBin,
    binned_profile_mse,
    condition_bins,
    default_angle_bins,
    default_energy_bins,
    mean_normalised_profiles,
    mu90_sigma90,
    profile_mse,
    quick_metrics,
    sampling_fraction_error,
    sampling_fraction_mre,
    sampling_fraction_per_bin,
)
from fastshower.geometry import Geometry
from fastshower.validate import observables as ob

#: SSIM data ranges L scanned (GeV), as the 3DGAN low-precision study.
SSIM_DATA_RANGES = (1.0, 1e-2, 1e-4, 1e-6, 1e-8)


# ------------------------------------------------------------------ 3DGAN optimisation metric

def profile_term(profiles_ref: dict[str, np.ndarray], profiles_cand: dict[str, np.ndarray]) -> float:
    """The profile term of the 3DGAN metric for one bin: the mean over axes of the mean over cells
    of |(S_ref - S_cand) / S_ref|, S the event-averaged profiles (arrays (events, cells) per axis,
    GeV; cells with S_ref = 0 skipped)."""
    per_axis = []
    for a in profiles_ref:
        sr, sc = profiles_ref[a].mean(axis=0), profiles_cand[a].mean(axis=0)
        ok = sr > 0
        per_axis.append(np.mean(np.abs((sr[ok] - sc[ok]) / sr[ok])))
    return float(np.mean(per_axis))


def gan_optimisation_metric(obs_ref: dict, obs_cand: dict, bins: list[ConditionBin]) -> dict[str, float]:
    """The 3DGAN epoch-selection metric (GANutils ``metric``) with the double count fixed.

    Per bin: ``moments`` = mean over m in {1, 2} of the mean over axes of
    |(<m_ref> - <m_cand>) / <m_ref>| (event means of the profile moments, cell indices);
    ``profiles`` = mean over axes of the mean over cells of |(S_ref - S_cand) / S_ref| for the
    event-averaged profiles S (GeV; cells with S_ref = 0 skipped); ``angle`` =
    |(<theta_ref> - <theta_cand>) / <theta_ref>| of the measured angles. Each term is averaged over
    the bins and ``total`` = moments + profiles + angle (the original added the moment term twice).
    """
    pos, prof, ang = [], [], []
    for b in bins:
        rel = []
        for m in (1, 2):
            ref_mean = {a: obs_ref[f"m{m}_{a}"][b.reference].mean() for a in "xyz"}
            rel.append(np.mean([abs((ref_mean[a] - obs_cand[f"m{m}_{a}"][b.candidate].mean()) / (ref_mean[a] + ob._EPS))
                                for a in "xyz"]))
        pos.append(np.mean(rel))
        prof.append(profile_term({a: obs_ref[f"profile_{a}"][b.reference] for a in "xyz"},
                                 {a: obs_cand[f"profile_{a}"][b.candidate] for a in "xyz"}))
        tr = obs_ref["measured_angle"][b.reference].mean()
        ang.append(abs((tr - obs_cand["measured_angle"][b.candidate].mean()) / tr))
    out = {"moments": float(np.mean(pos)), "profiles": float(np.mean(prof)), "angle": float(np.mean(ang))}
    out["total"] = out["moments"] + out["profiles"] + out["angle"]
    return out


# ------------------------------------------------------------------ mu90 / sigma90

def mu90_sigma90_per_bin(energy_ratio: np.ndarray, bins: list[ConditionBin], which: str) -> np.ndarray:
    """(n_bins, 2) array of mu90, sigma90 of E_deposited / E_primary per bin."""
    return np.array([mu90_sigma90(energy_ratio[getattr(b, which)]) for b in bins])


def mu90_relative_errors(ratio_ref: np.ndarray, ratio_cand: np.ndarray, bins: list[ConditionBin]) -> dict[str, float]:
    """Mean over bins of the relative errors of mu90 and sigma90 of E_deposited / E_primary."""
    r = mu90_sigma90_per_bin(ratio_ref, bins, "reference")
    c = mu90_sigma90_per_bin(ratio_cand, bins, "candidate")
    rel = np.abs(c - r) / r
    return {"mu90": float(rel[:, 0].mean()), "sigma90": float(rel[:, 1].mean())}


# ------------------------------------------------------------------ SSIM

def ssim_vs_data_range(showers_ref: np.ndarray, showers_cand: np.ndarray, bins: list[ConditionBin],
                       rng: np.random.Generator, data_ranges=SSIM_DATA_RANGES, max_pairs_per_bin: int = 100
                       ) -> dict[float, tuple[float, float]]:
    """SSIM of reference showers against shuffled candidate showers of the same bin, per data range L.

    skimage ``structural_similarity`` with ``gaussian_weights=True`` (sigma 1.5, an 11-cell window),
    ``use_sample_covariance=False``, the depth axis as channels, images in GeV, ``data_range=L``.
    Up to ``max_pairs_per_bin`` pairs (ref[i], cand[perm[i]]) per bin. Returns {L: (mean, std)}.
    Raises ValueError when a lateral dimension is smaller than the 11-cell window.
    """
    from skimage.metrics import structural_similarity

    if min(showers_ref.shape[1:3]) < 11:
        raise ValueError(f"SSIM needs lateral dimensions of at least 11 cells, got {showers_ref.shape[1:3]}")
    pairs = []
    for b in bins:
        ir, ic = np.flatnonzero(b.reference), rng.permutation(np.flatnonzero(b.candidate))
        n = min(len(ir), len(ic), max_pairs_per_bin)
        pairs += list(zip(ir[:n], ic[:n]))
    out = {}
    for L in data_ranges:
        vals = np.array([structural_similarity(showers_ref[i], showers_cand[j], data_range=L, channel_axis=-1,
                                               gaussian_weights=True, use_sample_covariance=False)
                         for i, j in pairs])
        out[L] = (float(vals.mean()), float(vals.std()))
    return out


# ------------------------------------------------------------------ separation power (chi2)

def separation_power(counts_a: np.ndarray, counts_b: np.ndarray) -> float:
    """Triangular discrimination S = 1/2 sum_i (p_i - q_i)^2 / (p_i + q_i) of two histograms.

    p, q are the counts normalised to unit sum over the bins (CaloChallenge's density x bin width),
    so S lies in [0, 1], 0 for identical histograms; 1 if only one of them is empty (no overlap),
    NaN if both are.
    """
    a, b = np.asarray(counts_a, float), np.asarray(counts_b, float)
    if a.sum() == 0 and b.sum() == 0:
        return float("nan")
    if a.sum() == 0 or b.sum() == 0:
        return 1.0
    p, q = a / a.sum(), b / b.sum()
    return float(0.5 * np.sum((p - q) ** 2 / (p + q + 1e-16)))


def histogram_bins(geometry: Geometry, obs_ref: dict, min_energy_gev: float, cell_energy_max_gev: float
                   ) -> dict[str, np.ndarray]:
    """Bin edges per observable, as the CaloChallenge evaluation for cylindrical geometries.

    ``energy_ratio_cc``: 100 bins in [0.5, 1.5] of E_dep / (sf E_primary); ``layer_energy``: 39
    log bins from ``min_energy_gev`` to the reference maximum of the layer (per layer);
    ``centre_x/y``: 100 bins in +-30 mm (cylindrical) or +- half the lateral extent (cartesian);
    ``width_x/y``: 100 bins in [0, 30] mm (cylindrical) or [0, half extent]; ``centre_r`` [0, 42]
    and ``width_r`` [0, 20] mm (cylindrical) or [0, extent] and [0, half extent]; ``layer_sparsity``
    and ``sparsity``: 20 bins in [0, 1]; ``cell_energy``: 49 log bins from ``min_energy_gev`` to the
    reference's largest cell. Ours beyond CaloChallenge: ``hits``, moments and ``measured_angle``
    50 bins over the reference's 0.1-99.9 % quantiles, ``shower_max_layer`` one bin per layer;
    for these the under- and overflow is counted in the edge bins (CaloChallenge drops it).
    Edges are in the observable's units (GeV, mm, rad, cell indices).
    """
    if geometry.kind == "cylindrical":
        c_lim, w_lim, r_lim, wr_lim = 30.0, 30.0, 42.0, 20.0
    else:
        dx, dy = geometry.cell_size_mm or (0.0, 0.0)  # always set for cartesian geometries
        half = 0.5 * min(geometry.shape[0] * dx, geometry.shape[1] * dy)
        c_lim, w_lim, r_lim, wr_lim = half, half, half, half / 2
    edges: dict[str, np.ndarray] = {
        "energy_ratio_cc": np.linspace(0.5, 1.5, 101),
        "centre_x": np.linspace(-c_lim, c_lim, 101), "centre_y": np.linspace(-c_lim, c_lim, 101),
        "width_x": np.linspace(0, w_lim, 101), "width_y": np.linspace(0, w_lim, 101),
        "centre_r": np.linspace(0, r_lim, 101), "width_r": np.linspace(0, wr_lim, 101),
        "layer_sparsity": np.linspace(0, 1, 21), "sparsity": np.linspace(0, 1, 21),
        "shower_max_layer": np.arange(geometry.n_layers + 1) - 0.5,
    }
    lo = max(min_energy_gev, 1e-9)
    if cell_energy_max_gev > lo:
        edges["cell_energy"] = np.geomspace(lo, cell_energy_max_gev, 50)
    for name in ["hits", "measured_angle"] + [f"m{m}_{a}" for m in (1, 2) for a in "xyz"]:
        q_lo, q_hi = np.quantile(obs_ref[name], [0.001, 0.999])
        if q_hi <= q_lo:
            q_lo, q_hi = q_lo - 0.5, q_hi + 0.5
        edges[name] = np.linspace(q_lo, q_hi, 51)
    return edges


def separation_powers(geometry: Geometry, obs_ref: dict, obs_cand: dict, sampling_ref_gev: tuple,
                      min_energy_gev: float, cell_counts: tuple[np.ndarray, np.ndarray] | None,
                      edges: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Separation power of every observable's histogram; per-layer observables give one value a layer.

    ``sampling_ref_gev`` = (sampling fraction, primary energy reference, primary energy candidate)
    for E_dep / (sf E_primary). ``cell_counts`` = histograms of all cell energies over
    ``edges["cell_energy"]`` (reference, candidate), pooled over events. Returns {name: array}.
    """
    sf, e_ref, e_cand = sampling_ref_gev
    out: dict[str, np.ndarray] = {}
    h = lambda a, b, e: separation_power(np.histogram(a, e)[0], np.histogram(b, e)[0])  # noqa: E731
    out["energy_ratio_cc"] = np.array([h(obs_ref["energy_deposited"] / (sf * e_ref),
                                         obs_cand["energy_deposited"] / (sf * e_cand), edges["energy_ratio_cc"])])
    layer_vals = []
    lo = max(min_energy_gev, 1e-9)
    for layer in range(obs_ref["layer_energy"].shape[1]):
        top = obs_ref["layer_energy"][:, layer].max()
        if top > lo:
            e = np.geomspace(lo, top, 40)
            layer_vals.append(h(obs_ref["layer_energy"][:, layer], obs_cand["layer_energy"][:, layer], e))
    out["layer_energy"] = np.array(layer_vals)
    for name in ("centre_x", "centre_y", "width_x", "width_y", "centre_r", "width_r", "layer_sparsity"):
        out[name] = np.array([h(obs_ref[name][:, layer], obs_cand[name][:, layer], edges[name])
                              for layer in range(obs_ref[name].shape[1])])
    out["sparsity"] = np.array([h(obs_ref["sparsity"], obs_cand["sparsity"], edges["sparsity"])])
    for name in ["hits", "shower_max_layer", "measured_angle"] + [f"m{m}_{a}" for m in (1, 2) for a in "xyz"]:
        e = edges[name]  # our observables: under- and overflow go to the edge bins
        out[name] = np.array([h(np.clip(obs_ref[name], e[0], e[-1]), np.clip(obs_cand[name], e[0], e[-1]), e)])
    if cell_counts is not None:
        out["cell_energy"] = np.array([separation_power(*cell_counts)])
    return {k: v for k, v in out.items() if len(v)}


def cell_energy_histogram(showers: np.ndarray, edges: np.ndarray, chunk_size: int = 1000) -> np.ndarray:
    """Counts of all cell energies (GeV) in the log-spaced ``edges``, pooled over events (chunked)."""
    log_edges = np.log10(edges)
    counts = np.zeros(len(edges) - 1, dtype=np.int64)
    for i in range(0, len(showers), chunk_size):
        v = showers[i:i + chunk_size]
        v = v[v >= edges[0]]
        counts += np.histogram(np.log10(v), log_edges)[0]
    return counts


# ------------------------------------------------------------------ FPD / KPD (jetnet definitions)

def normalise_by_reference_max(reference: np.ndarray, candidate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Divide each feature by max |reference| (1 where that is 0), as ``jetnet`` does."""
    m = np.max(np.abs(reference), axis=0)
    m[m == 0] = 1
    return reference / m, candidate / m


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """Squared Frechet distance of two Gaussians: |mu1 - mu2|^2 + Tr(C1 + C2 - 2 sqrt(C1 C2)).

    Tr sqrt(C1 C2) is computed as the sum of the square roots of the eigenvalues of the symmetric
    matrix sqrt(C1) C2 sqrt(C1) (the same eigenvalues as C1 C2 for covariance matrices): equal to
    jetnet's ``scipy.linalg.sqrtm`` trace and some 50 times faster.
    """
    w, v = linalg.eigh(cov1)
    root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    tr_covmean = np.sqrt(np.clip(linalg.eigvalsh(root1 @ cov2 @ root1), 0, None)).sum()
    d = mu1 - mu2
    return float(d @ d + np.trace(cov1) + np.trace(cov2) - 2 * tr_covmean)


def frechet_physics_distance(reference: np.ndarray, candidate: np.ndarray, min_samples: int = 10_000,
                             max_samples: int = 50_000, num_batches: int = 20, num_points: int = 10,
                             seed: int = 42) -> tuple[float, float]:
    """FPD as ``jetnet.evaluation.fpd`` (arXiv:2211.10295): features normalised by max |reference|;
    Frechet distances of bootstrap samples of N events (``num_points`` N regularly spaced in 1/N
    between ``min_samples`` and ``max_samples``, each the mean of ``num_batches`` draws); the value
    is the intercept at 1/N -> 0 of a linear fit constrained to non-negative parameters, with its
    fit error. Returns (value, error), dimensionless. CaloChallenge calls it with min_samples=10000.
    """
    from scipy.optimize import curve_fit
    from threadpoolctl import threadpool_limits

    x, y = normalise_by_reference_max(np.asarray(reference, np.float64), np.asarray(candidate, np.float64))
    sizes = (1 / np.linspace(1.0 / min_samples, 1.0 / max_samples, num_points)).astype("int32")
    rng = np.random.default_rng(seed)
    vals = []
    with threadpool_limits(limits=1, user_api="blas"):  # small matrices: threads only add overhead
        for n in sizes:
            pts = []
            for _ in range(num_batches):
                a, b = x[rng.choice(len(x), size=n)], y[rng.choice(len(y), size=n)]
                pts.append(frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False)))
            vals.append(np.mean(pts))
    params, covs = curve_fit(lambda t, c, s: c + s * t, 1 / sizes, vals, bounds=([0, 0], [np.inf, np.inf]))
    return float(params[0]), float(np.sqrt(np.diag(covs)[0]))


def mmd_poly_unbiased(x: np.ndarray, y: np.ndarray, degree: int = 4) -> float:
    """Unbiased MMD^2 with the polynomial kernel k(a, b) = (a.b / d + 1)^degree."""
    d = x.shape[1]
    kxx = (x @ x.T / d + 1) ** degree
    kyy = (y @ y.T / d + 1) ** degree
    kxy = (x @ y.T / d + 1) ** degree
    m, n = len(x), len(y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2 * kxy.mean())


def kernel_physics_distance(reference: np.ndarray, candidate: np.ndarray, num_batches: int = 10,
                            batch_size: int = 5_000, seed: int = 42) -> tuple[float, float]:
    """KPD as ``jetnet.evaluation.kpd``: features normalised by max |reference|; unbiased MMD^2 with
    the kernel (x.y/d + 1)^4 on ``num_batches`` bootstrap batches of ``batch_size`` (batch i drawn
    with ``default_rng(seed + 1000 i)``); returns (median, half the 16.275-83.725 % inter-quantile
    range). Dimensionless; about 0 for identical distributions.
    """
    x, y = normalise_by_reference_max(np.asarray(reference, np.float64), np.asarray(candidate, np.float64))
    vals = []
    for i in range(num_batches):
        rng = np.random.default_rng(seed + i * 1000)
        a, b = x[rng.choice(len(x), size=batch_size)], y[rng.choice(len(y), size=batch_size)]
        vals.append(mmd_poly_unbiased(a, b))
    q16, q84 = np.percentile(vals, [16.275, 83.725])
    return float(np.median(vals)), float((q84 - q16) / 2)
