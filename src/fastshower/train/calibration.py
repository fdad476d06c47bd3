"""Energy-response calibration of a trained generator against its training showers.

:func:`calibrate_response` rescales a generator's output so that its mean deposited energy over
the training conditions equals the data's, the way a fast simulation's response is calibrated to
the full simulation it was fitted to. It is meant for generators whose weights were made outside
the training loop (e.g. :func:`fastshower.models.registry.average_generators`, where the mean of
several checkpoints deposits a few per cent less than each of them) and only applies to those with
a positive-homogeneous output (ReLU head times ``output_scale``): in GeV the output scales as
``output_scale ** (1 / cell_power)``, so the ratio r of the energies is applied as
``output_scale *= r ** cell_power``. One number for the whole energy range: a response that is
wrong differently at different energies stays visible.

:func:`calibrate_response_by_energy` goes one step further, as a fast simulation's response is
calibrated against energy: it fits ln(data / generator) of the mean sampling fraction in bins of
ln E with a low-order polynomial and stores it as the generator's ``response_correction``
(a per-shower factor exp(sum_k c_k ln(E / 100 GeV)^k) on the GeV output). It corrects the mean
response only: the shapes, the spread and the hits stay what the network makes, and a report
should give the response before the correction beside the one after it.

:func:`calibrate_resolution_by_energy` does the same for the energy resolution, as a fast
simulation's smearing is tuned to the full simulation: in bins of ln E it compares the relative
width sigma90 / mu90 of the deposited fraction E_dep / E (its energy trend inside the bin removed)
of the data and of the generator, fits ln(data / generator) with a low-order polynomial s(E) and
stores it as the generator's resolution correction, which moves each shower's fraction r to
c(E) + s(E) (r - c(E)) around the generator's own mean c(E) by one factor on all its cells: the mean
response is kept, the width of the response is the data's, and the shapes, the layer fractions and
the fluctuations of everything but the total stay what the network makes. It is a correction of
the total only, and a report gives the resolution before it beside the one after it.

:func:`calibrate_layers_by_energy` is the longitudinal counterpart, for a network whose showers of
one energy fluctuate too little from layer to layer (a GAN's partial mode collapse): per layer, the
median and the spread (inter-quartile range) of the log layer fraction g = ln(E_layer / E_dep +
floor) of the data and of the generator are measured in bins of ln E (interpolated linearly between
them), and each generated shower's g is moved to the data's median plus its deviation from the
generator's median scaled by the ratio of the spreads (the generator's own correlations between
layers are kept, only their size and the location change). Each layer's cells are scaled by one
factor and the shower renormalised to its deposited energy: the response, the resolution and the
lateral shapes stay what they were. It matches the median and the spread of each layer's marginal,
not the tails of the distributions nor the correlations between layers, and it cannot fill a layer
the network leaves empty; a report gives the per-layer spreads and medians before it beside those
after it.

:func:`calibrate_hits_by_energy` does the same for each shower's number of hits (cells at or above the
readout threshold), for a network that makes too many small cells: the median and spread of ln(hit
count) in bins of ln E are matched by keeping only the largest cells of the showers asked to have
fewer hits (the smallest hits are zeroed, nothing else is touched; it cannot add hits). The energy
it removes is that of the smallest cells; the response calibration after it puts the mean back.

:func:`calibrate_cells_by_energy` matches the spectrum of cell energies, for a network that makes too
many small cells and too few large ones: per layer and bin of ln E, the quantiles of ln E_cell (cells
at or above the readout threshold) of the generator are mapped piecewise-linearly onto the data's,
each layer renormalised to its energy. Empty cells stay empty and the layer energies are kept; the
lateral and hit-count calibrations come after it. A report gives the quantile offsets before and
after, per bin.

:func:`calibrate_lateral_by_energy` is the lateral counterpart of the layer calibration, for a network
whose layers are too alike from shower to shower in their lateral spread and whose mean radial
profile has rings of too much or too little energy (a transposed-convolution generator's pattern):
per layer, the median and spread of logit(halo fraction) (the energy beyond 1.5 cell widths of the
central cell over the layer's) are matched in bins of ln E by one factor on the halo's cells and one
on the core's, then the mean fraction of each layer's energy in each ring (rounded distance to the
central cell) is matched by one factor per ring, layer and energy bin, each layer renormalised to
its energy. The layer energies, the total and the response stay what they were; it moves energy
only between cells the network fills (it cannot add a hit far from the core where the network
leaves none), and a report gives the halo spreads and medians and the ring-profile distance before
it beside those after it.

:func:`calibrate_peak_by_energy` comes before the lateral one (whose ring factors then put the mean
radial profile back), for a network whose layers share their
energy between the largest cell and the others too alike from shower to shower (at low energy, where
a layer holds a few cells, that sets the spread of the layers' widths): per layer, the median and
spread of logit(fraction of the layer's energy outside its largest cell), over the layers of two
cells or more, are matched in bins of ln E by one factor on the largest cell and one on the others,
the layer's energy kept. It moves no energy into empty cells and never makes another cell the largest.

:func:`calibrate_width_by_energy` comes before the lateral one (whose ring factors then put the mean
radial profile back: the far deposits take their energy mostly from each layer's core), for a network
whose sparse layers (the shower's first layers at low energy, where Geant4's layer is either one cell
or a few cells far apart) are too alike in their lateral width: per layer and bin of ln E, each
layer's radial width is mapped by its rank onto the data's distribution (the fraction of one-cell
layers and the quantiles of the others), a narrower layer by moving energy into its largest cell, a
wider one by moving a small fraction into one far cell in a direction drawn from the generator's
noise. Only layers that hold a small share of the shower are mapped; the layer energies are kept. A
report gives the quantile offsets before and after, per bin.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
from numpy.polynomial import polynomial

from fastshower.data.summaries import mu90_sigma90
from fastshower.geometry import Geometry
from fastshower.models.base import ShowerGenerator, generate_like
from fastshower.models.conv2d import (
    HALO_FRACTION_FLOOR,
    LAYER_FRACTION_FLOOR,
    LAYER_GAIN_MAX,
    RING_FACTOR_MAX,
    lateral_halo,
    lateral_rings,
)
from fastshower.showers import ShowerSet


def _read_out_gev(showers: np.ndarray, threshold_gev: float) -> np.ndarray:
    """``(B,)`` energy each shower leaves above the readout threshold (GeV, float64 sums)."""
    return np.where(showers < threshold_gev, 0.0, showers).sum(axis=(1, 2, 3), dtype=np.float64)


def generated_energy_ratio(generator: ShowerGenerator, data: ShowerSet, seed: int = 0,
                           batch_size: int = 256) -> float:
    """Mean summed energy of the data / that of the generator at the data's conditions (GeV; cells
    below the geometry's readout threshold count as zero in both)."""
    threshold = data.geometry.readout_threshold_gev
    generated = generate_like(generator, data, seed, batch_size).showers
    generated_sum = float(_read_out_gev(generated, threshold).sum())
    real = float(_read_out_gev(data.showers, threshold).sum())
    if not generated_sum > 0:
        raise ValueError("the generator deposits no energy at the data's conditions")
    return real / generated_sum


def calibrate_response(generator: ShowerGenerator, data: ShowerSet, seed: int = 0, tolerance: float = 1e-3,
                       max_iterations: int = 8) -> float:
    """Rescale ``generator.output_scale`` in place so that its mean response over ``data`` matches
    (module docstring) to ``tolerance``; returns the energy ratio that was applied. Iterated,
    because cells crossing the readout threshold make the response not exactly proportional."""
    config = generator.config
    if getattr(config, "output_activation", None) != "relu" or not hasattr(generator, "set_output_scale"):
        raise ValueError(f"{generator.name}: response calibration needs a ReLU output head with an output scale")
    power = generator.transform.power
    applied = 1.0
    for _ in range(max_iterations):
        ratio = generated_energy_ratio(generator, data, seed)
        if abs(ratio - 1.0) <= tolerance:
            break
        generator.set_output_scale(float(generator.output_scale) * ratio ** power)
        applied *= ratio
    return applied


def response_by_energy(generator: ShowerGenerator, data: ShowerSet, edges_gev: np.ndarray, seed: int = 0,
                       batch_size: int = 256, min_events: int = 30) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per bin of primary energy (``edges_gev``): (mean ln(E / 100 GeV), data / generator ratio of
    the mean sampling fraction, events). Cells below the readout threshold count as zero; bins
    with fewer than ``min_events`` events are left out (their ratio is noise for the fit)."""
    u, ratio, count = [], [], []
    for mask, real, fake in _binned_fractions(generator, data, edges_gev, seed, batch_size, min_events):
        u.append(np.log(data.primary_energy[mask] / 100.0).mean())
        ratio.append(real.mean() / fake.mean())
        count.append(int(mask.sum()))
    return np.asarray(u), np.asarray(ratio), np.asarray(count)


def _binned_fractions(generator: ShowerGenerator, data: ShowerSet, edges_gev: np.ndarray, seed: int, batch_size: int,
                      min_events: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """For each bin of primary energy with ``min_events`` showers or more: (mask over ``data``, the
    data's and the generator's E_dep / E in it), the generator run once at the data's conditions;
    cells below the readout threshold count as zero. ValueError for a bin the generator leaves empty."""
    threshold = data.geometry.readout_threshold_gev
    generated = generate_like(generator, data, seed, batch_size).showers
    real = _read_out_gev(data.showers, threshold) / data.primary_energy
    fake = _read_out_gev(generated, threshold) / data.primary_energy
    which = np.digitize(data.primary_energy, edges_gev) - 1
    out = []
    for b in range(len(edges_gev) - 1):
        mask = which == b
        if mask.sum() < min_events:
            continue
        if not fake[mask].mean() > 0:
            raise ValueError(f"the generator deposits no energy at {edges_gev[b]:.3g}-{edges_gev[b + 1]:.3g} GeV")
        out.append((mask, real[mask], fake[mask]))
    return out


def calibrate_response_by_energy(generator: ShowerGenerator, data: ShowerSet, degree: int = 3, n_bins: int = 10,
                                 seed: int = 0, tolerance: float = 2e-3, max_iterations: int = 6,
                                 min_events: int = 30) -> dict:
    """Fit and set the generator's ``response_correction`` (module docstring) so that the mean sampling
    fraction matches ``data`` in ``n_bins`` bins equal in ln E, with a polynomial of ``degree`` in
    ln(E / 100 GeV), iterated (cells crossing the readout threshold) until every bin is within
    ``tolerance``; bins with fewer than ``min_events`` showers are left out. Returns the per-bin
    ratios before and after and the coefficients."""
    if getattr(generator.config, "output_activation", None) != "relu" or \
            not hasattr(generator, "set_response_correction"):
        raise ValueError(f"{generator.name}: response calibration needs a ReLU output head with a response correction")
    if n_bins < degree + 1:
        raise ValueError(f"{n_bins} energy bins cannot fix a polynomial of degree {degree}")
    e = data.primary_energy
    edges = np.geomspace(e.min(), e.max() * (1 + 1e-9), n_bins + 1)
    coefficients = np.zeros(degree + 1)
    current = (getattr(generator.config, "response_correction", None) or ())[: degree + 1]
    coefficients[: len(current)] = current
    u, before, count = response_by_energy(generator, data, edges, seed, min_events=min_events)
    if len(u) < degree + 1:
        raise ValueError(f"only {len(u)} energy bins hold {min_events} or more showers: too few for a polynomial "
                         f"of degree {degree} (more showers, fewer bins or a lower degree)")
    ratio = before
    for _ in range(max_iterations):
        if np.abs(ratio - 1.0).max() <= tolerance:
            break
        coefficients = coefficients + polynomial.polyfit(u, np.log(ratio), degree, w=np.sqrt(count))
        generator.set_response_correction(coefficients.tolist())
        u, ratio, count = response_by_energy(generator, data, edges, seed, min_events=min_events)
    return {"coefficients": coefficients.tolist(), "bin_edges_gev": edges.round(4).tolist(),
            "ratio_before": before.round(5).tolist(), "ratio_after": ratio.round(5).tolist(),
            "events": count.tolist(), "degree": degree}


def relative_width(fraction: np.ndarray, primary_energy_gev: np.ndarray) -> float:
    """sigma90 / mu90 of ``fraction`` divided by its linear fit in ln E (the energy trend of the
    mean inside a bin removed, so that it does not count as width)."""
    u = np.log(primary_energy_gev)
    trend = polynomial.polyval(u, polynomial.polyfit(u, fraction, 1)) if np.ptp(u) > 0 else fraction.mean()
    mu, sigma = mu90_sigma90(fraction / trend)
    return sigma / mu


def resolution_by_energy(generator: ShowerGenerator, data: ShowerSet, edges_gev: np.ndarray, seed: int = 0,
                         batch_size: int = 256, min_events: int = 100) -> dict[str, np.ndarray]:
    """Per bin of primary energy (``edges_gev``) holding ``min_events`` showers or more: ``u`` mean
    ln(E / 100 GeV), ``data`` and ``generator`` relative widths sigma90 / mu90 of E_dep / E
    (:func:`relative_width`), ``ratio`` = data / generator, ``centre`` the generator's mean E_dep / E
    and ``events``. Cells below the readout threshold count as zero."""
    e = data.primary_energy
    rows = []
    for mask, real, fake in _binned_fractions(generator, data, edges_gev, seed, batch_size, min_events):
        width_data, width_generator = relative_width(real, e[mask]), relative_width(fake, e[mask])
        if not width_generator > 0:
            raise ValueError(f"the generator's response does not fluctuate at {e[mask].min():.3g}-"
                             f"{e[mask].max():.3g} GeV: no resolution to scale")
        rows.append((np.log(e[mask] / 100.0).mean(), width_data, width_generator, width_data / width_generator,
                     fake.mean(), mask.sum()))
    names = ("u", "data", "generator", "ratio", "centre", "events")
    return {name: np.asarray(column) for name, column in zip(names, zip(*rows, strict=True), strict=True)} if rows \
        else {name: np.zeros(0) for name in names}


def calibrate_resolution_by_energy(generator: ShowerGenerator, data: ShowerSet, degree: int = 2, n_bins: int = 8,
                                   seed: int = 0, tolerance: float = 0.02, max_iterations: int = 4,
                                   min_events: int = 100) -> dict:
    """Fit and set the generator's resolution correction (module docstring) so that sigma90 / mu90
    of E_dep / E matches ``data`` in ``n_bins`` bins equal in ln E, with a polynomial of ``degree`` in
    ln(E / 100 GeV) for ln s(E) (a cubic for the centre ln c(E)), iterated until every bin is within
    ``tolerance`` (relative; the same generated sample each time); bins with fewer than
    ``min_events`` showers are left out. Returns the per-bin widths before and after and the
    coefficients. Any resolution correction the generator had is replaced."""
    if not hasattr(generator, "set_resolution_correction"):
        raise ValueError(f"{generator.name}: it has no resolution correction to calibrate")
    e = data.primary_energy
    edges = np.geomspace(e.min(), e.max() * (1 + 1e-9), n_bins + 1)
    generator.set_resolution_correction(None, None)
    before = resolution_by_energy(generator, data, edges, seed, min_events=min_events)
    u, count = before["u"], before["events"]
    if len(u) < degree + 2:
        raise ValueError(f"only {len(u)} energy bins hold {min_events} or more showers: too few for a polynomial "
                         f"of degree {degree} (more showers, fewer bins or a lower degree)")
    weight = np.sqrt(count)  # the same bins every time: same showers, edges and min_events
    centre = polynomial.polyfit(u, np.log(before["centre"]), min(3, len(u) - 1), w=weight)
    scale = np.zeros(degree + 1)
    after = before
    for _ in range(max_iterations):
        if np.abs(after["ratio"] - 1.0).max() <= tolerance:
            break
        scale = scale + polynomial.polyfit(u, np.log(after["ratio"]), degree, w=weight)
        generator.set_resolution_correction(centre.tolist(), scale.tolist())
        after = resolution_by_energy(generator, data, edges, seed, min_events=min_events)
    return {"centre": centre.tolist(), "scale": scale.tolist(), "degree": degree,
            "bin_edges_gev": edges.round(4).tolist(), "data": before["data"].round(5).tolist(),
            "generator_before": before["generator"].round(5).tolist(),
            "generator_after": after["generator"].round(5).tolist(), "events": count.tolist()}


def log_layer_fractions(showers: np.ndarray, threshold_gev: float) -> np.ndarray:
    """``(B, n_layers)`` ln(E_layer / E_dep + LAYER_FRACTION_FLOOR) of showers ``(B, x, y, z)`` (GeV),
    cells below the readout threshold counted as zero (float64 sums)."""
    layer = np.where(showers < threshold_gev, 0.0, showers).sum(axis=(1, 2), dtype=np.float64)
    total = layer.sum(axis=1, keepdims=True)
    return np.log(layer / np.where(total > 0, total, 1.0) + LAYER_FRACTION_FLOOR)


#: bound of |gain| of the layer correction, where Conv2dGenerator.layer_factor clamps its factor
MAX_LN_GAIN = float(np.log(LAYER_GAIN_MAX))
#: an energy bin's median and spread of a value defined only in some showers (e.g. the peak-sharing
#: fraction of layers of two cells or more) need this many showers where it is defined
MIN_QUANTILE_VALUES = 20


def _binned_quantiles(g: np.ndarray, which: np.ndarray, bins: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """``(len(bins), k)`` median and half inter-quartile range / 0.6745 (the standard deviation of a
    normal distribution with that IQR) of the columns of ``g`` in each energy bin; NaN entries of
    ``g`` are left out, and a column with fewer than MIN_QUANTILE_VALUES others in a bin gives NaN."""
    out = []
    for b in bins:
        v = g[which == b]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: NaN, replaced below
            q = np.nanpercentile(v, [25, 50, 75], axis=0)  # (3, k)
        out.append(np.where(np.isfinite(v).sum(axis=0) >= MIN_QUANTILE_VALUES, q, np.nan))
    q = np.stack(out)  # (bins, 3, k)
    return q[:, 1], (q[:, 2] - q[:, 0]) / (2 * 0.6745)


def _energy_bins(primary_energy: np.ndarray, n_bins: int, min_events: int
                 ) -> tuple[np.ndarray, np.ndarray, list[int], list[float]]:
    """``n_bins`` bins equal in ln E over the showers' range: (edges GeV, each shower's bin, the bins
    holding ``min_events`` showers or more, their mean ln(E / 100 GeV), the knots); two such bins are needed."""
    e = primary_energy
    edges = np.geomspace(e.min(), e.max() * (1 + 1e-9), n_bins + 1)
    which = np.digitize(e, edges) - 1
    bins = [b for b in range(n_bins) if (which == b).sum() >= min_events]
    if len(bins) < 2:
        raise ValueError(f"only {len(bins)} energy bins hold {min_events} or more showers: two are needed "
                         f"(more showers or fewer bins)")
    return edges, which, bins, [float(np.log(e[which == b] / 100.0).mean()) for b in bins]


def calibrate_layers_by_energy(generator: ShowerGenerator, data: ShowerSet, n_bins: int = 10,
                               seed: int = 0, iterations: int = 4, min_events: int = 100,
                               min_layer_fraction: float = 1e-3) -> dict:
    """Fit and set the generator's longitudinal correction (module docstring). In ``n_bins`` bins
    equal in ln E holding ``min_events`` showers or more, per layer: the median and the spread
    (IQR, robust against the few showers whose layer is nearly empty) of g = ln(E_layer / E_dep +
    floor) of ``data`` and of the generator at the data's conditions, placed at the bin's mean
    ln(E / 100 GeV) (the knots): centre = the generator's median, target = the data's, gain =
    ln(data / generator spread); then ``iterations - 1`` updates of target and gain from the
    corrected showers (the renormalisation, the clamps and the interpolation move them).
    Any layer correction the generator had is replaced. The report gives per bin the generator /
    data spread ratio and |median difference| of g over the layers holding ``min_layer_fraction`` of
    the data's showers on average (median over those layers and worst), before and after."""
    if not hasattr(generator, "set_layer_correction"):
        raise ValueError(f"{generator.name}: it has no layer correction to calibrate")
    threshold = data.geometry.readout_threshold_gev
    edges, which, bins, knots = _energy_bins(data.primary_energy, n_bins, min_events)

    generator.set_layer_correction(None)
    g_data = log_layer_fractions(data.showers, threshold)
    kept = np.stack([np.exp(g_data[which == b]).mean(axis=0) >= min_layer_fraction for b in bins])
    fit = _fit_median_and_spread(
        g_data, lambda: log_layer_fractions(generate_like(generator, data, seed).showers, threshold),
        lambda c, t, g: generator.set_layer_correction(knots, c.tolist(), t.tolist(), g.tolist()),
        which, bins, iterations)
    median_data, spread_data = fit["median_data"], fit["spread_data"]

    def summary(median: np.ndarray, spread: np.ndarray) -> dict[str, list[float]]:
        ratio = [(spread[i] / np.maximum(spread_data[i], 1e-9))[kept[i]] for i in range(len(bins))]
        offset = [np.abs(median[i] - median_data[i])[kept[i]] for i in range(len(bins))]
        return {"spread_ratio_median": [round(float(np.median(r)), 4) for r in ratio],
                "spread_ratio_worst": [round(float(max(r.max(), 1 / max(r.min(), 1e-9))), 4) for r in ratio],
                "median_offset_median": [round(float(np.median(o)), 4) for o in offset],
                "median_offset_worst": [round(float(o.max()), 4) for o in offset]}

    return {"knots": knots, **{k: fit[k].tolist() for k in ("centre", "target", "gain")},
            "bins_gev": [[round(float(edges[b]), 4), round(float(edges[b + 1]), 4)] for b in bins],
            "events": [int((which == b).sum()) for b in bins], "layers_kept": [int(k.sum()) for k in kept],
            "before": summary(*fit["before"]), "after": summary(*fit["after"])}


def _fit_median_and_spread(data_values: np.ndarray, generated_values: Callable[[], np.ndarray],
                           set_correction: Callable[[np.ndarray, np.ndarray, np.ndarray], None],
                           which: np.ndarray, bins: list[int], iterations: int) -> dict:
    """The fit shared by the layer and hit calibrations: values ``(B, k)`` of the data and of the
    generator (``generated_values()``, made anew with the correction in force) are summarised per
    energy bin by their median and spread (:func:`_binned_quantiles`); the correction's tables
    ``(k, n_bins)`` are centre = the generator's median, target = the data's, gain = ln(data /
    generator spread) within +-MAX_LN_GAIN, set by ``set_correction(centre, target, gain)``; then
    ``iterations - 1`` updates of target and gain from the corrected showers. Returns the tables,
    the data's median and spread and the generator's (median, spread) before and after, ``(n_bins, k)``."""
    median_data, spread_data = _binned_quantiles(data_values, which, bins)

    def measured() -> tuple[np.ndarray, np.ndarray]:
        return _binned_quantiles(generated_values(), which, bins)

    def ln_spread_ratio(spread: np.ndarray) -> np.ndarray:  # (bins, k) -> ln(data / generator), (k, bins)
        return np.log(np.maximum(spread_data, 1e-6) / np.maximum(spread, 1e-6)).T

    before = measured()
    centre, target = before[0].T, median_data.T
    gain = np.clip(ln_spread_ratio(before[1]), -MAX_LN_GAIN, MAX_LN_GAIN)
    for i in range(iterations):
        set_correction(centre, target, gain)
        after = measured()
        if i == iterations - 1:
            break
        target = target + (median_data - after[0]).T
        gain = np.clip(gain + ln_spread_ratio(after[1]), -MAX_LN_GAIN, MAX_LN_GAIN)
    return {"centre": centre, "target": target, "gain": gain, "median_data": median_data,
            "spread_data": spread_data, "before": before, "after": after}


def log_cells(showers: np.ndarray, threshold_gev: float, which: np.ndarray, bins: list[int]) -> list[list[np.ndarray]]:
    """ln(E_cell / GeV) of the cells at or above the readout threshold, per energy bin and layer."""
    out = []
    for b in bins:
        part = showers[which == b]
        layers = []
        for layer in range(showers.shape[3]):
            cells = part[..., layer]
            layers.append(np.log(cells[cells >= max(threshold_gev, 1e-30)].astype(np.float64)))
        out.append(layers)
    return out


def _quantiles(cells: list[list[np.ndarray]], levels: np.ndarray) -> np.ndarray:
    """``(n_bins, n_layers, n_levels)`` quantiles of :func:`log_cells` at ``levels`` (``(n_levels,)`` or
    ``(n_bins, n_layers, n_levels)``); 0 where a bin and layer has no cells."""
    levels = np.broadcast_to(levels, (len(cells), len(cells[0]), levels.shape[-1]))
    return np.array([[np.quantile(c, levels[i, k]) if len(c) else np.zeros(levels.shape[-1])
                      for k, c in enumerate(layers)] for i, layers in enumerate(cells)])


def calibrate_cells_by_energy(generator: ShowerGenerator, data: ShowerSet, n_bins: int = 10, n_quantiles: int = 41,
                              seed: int = 0, iterations: int = 3, min_cells: int = 200) -> dict:
    """Fit and set the generator's cell-energy correction (module docstring). In ``n_bins`` bins equal
    in ln E (100 showers or more each) and per layer, the generator's ``n_quantiles`` quantiles
    (equally spaced levels) of ln E_cell without the correction are mapped onto the data's taken
    from the top in absolute numbers: with r = the generator's cells / the data's, level p goes to
    the data's level 1 - (1 - p) r (the generator's k-th largest cell of a shower to the data's
    k-th largest; where the generator has more cells its surplus of smallest ones goes to the data's
    smallest value, for the hit-count calibration after it to remove). Then ``iterations - 1``
    updates of the data side, target += data - corrected generator at the same levels (the
    renormalisation moves them), kept increasing. Where the data or the generator has fewer than
    ``min_cells`` cells in a bin and layer the map is the identity. Any cell correction the
    generator had is replaced. The report gives per bin the mean |data - generator| of the
    quantiles (ln GeV) over the mapped layers and the levels, before and after."""
    if not hasattr(generator, "set_cell_correction"):
        raise ValueError(f"{generator.name}: it has no cell-energy correction to calibrate")
    threshold = data.geometry.readout_threshold_gev
    edges, which, bins, knots = _energy_bins(data.primary_energy, n_bins, 100)
    levels = np.linspace(0.0, 1.0, n_quantiles)
    generator.set_cell_correction(None)
    cells_data = log_cells(data.showers, threshold, which, bins)
    cells_gen = log_cells(generate_like(generator, data, seed).showers, threshold, which, bins)
    count_data, count_gen = (np.array([[len(c) for c in layers] for layers in cells]) for cells in (cells_data,
                                                                                                       cells_gen))
    used = (count_data >= min_cells) & (count_gen >= min_cells)
    ratio = count_gen / np.maximum(count_data, 1)
    levels_data = np.clip(1.0 - (1.0 - levels) * ratio[..., None], 0.0, 1.0)
    q_data, q_gen = _quantiles(cells_data, levels_data), _quantiles(cells_gen, levels)
    identity = np.broadcast_to(np.linspace(-30.0, 5.0, n_quantiles), q_gen.shape)
    q_from = np.where(used[..., None], q_gen, identity)
    target = np.where(used[..., None], q_data, identity)

    def as_table(q: np.ndarray) -> list:  # (bins, layers, quantiles) -> (layers * quantiles, bins)
        return q.reshape(len(bins), -1).T.tolist()

    def offset(q: np.ndarray) -> list[float]:  # per bin: mean over the mapped layers and levels of |data - q|
        return [round(float(np.abs(q_data[i] - q[i])[used[i]].mean()), 4) if used[i].any() else 0.0
                for i in range(len(bins))]

    before = offset(q_gen)
    for i in range(iterations):
        generator.set_cell_correction(knots, as_table(q_from), as_table(target))
        q_after = _quantiles(log_cells(generate_like(generator, data, seed).showers, threshold, which, bins), levels)
        if i < iterations - 1:
            target = np.where(used[..., None], np.maximum.accumulate(target + q_data - q_after, axis=-1), identity)
    return {"knots": knots, "levels": levels.tolist(), "layers_mapped": used.sum(axis=1).tolist(),
            "cell_count_ratio_median": [round(float(np.median(r[u])), 4) if u.any() else 1.0
                                        for r, u in zip(ratio, used, strict=True)],
            "bins_gev": [[round(float(edges[b]), 4), round(float(edges[b + 1]), 4)] for b in bins],
            "events": [int((which == b).sum()) for b in bins],
            "before": {"quantile_offset": before}, "after": {"quantile_offset": offset(q_after)}}


#: ring fractions (of the layer's energy) are compared as ln((data + floor) / (generator + floor))
RING_FRACTION_FLOOR = 1e-6


def logit_halo_fractions(showers: np.ndarray, threshold_gev: float) -> np.ndarray:
    """``(B, n_layers)`` logit of each layer's halo fraction (energy of the cells further than
    LATERAL_CORE_RADIUS_CELLS from the central cell / the layer's; within [HALO_FRACTION_FLOOR, 1 -
    HALO_FRACTION_FLOOR]) of showers ``(B, x, y, z)`` (GeV), cells below the readout threshold as zero."""
    s = np.where(showers < threshold_gev, 0.0, showers)
    halo = lateral_halo(*s.shape[1:3]).astype(bool)
    layer = s.sum(axis=(1, 2), dtype=np.float64)
    h = s[:, halo].sum(axis=1, dtype=np.float64) / np.where(layer > 0, layer, 1.0)
    h = np.clip(h, HALO_FRACTION_FLOOR, 1 - HALO_FRACTION_FLOOR)
    return np.log(h / (1 - h))


def ring_fractions(showers: np.ndarray, threshold_gev: float, which: np.ndarray, bins: list[int]) -> np.ndarray:
    """``(len(bins), n_layers, n_rings)`` fraction of each layer's energy in each ring
    (:func:`fastshower.models.conv2d.lateral_rings`), summed over the showers of each energy bin
    (energy-weighted, as a mean profile), cells below the readout threshold as zero."""
    rings = lateral_rings(*showers.shape[1:3])
    out = []
    for b in bins:
        s = np.where(showers[which == b] < threshold_gev, 0.0, showers[which == b]).sum(axis=0, dtype=np.float64)
        per_ring = np.stack([s[rings == k].sum(axis=0) for k in range(int(rings.max()) + 1)], axis=1)  # (z, rings)
        out.append(per_ring / np.maximum(per_ring.sum(axis=1, keepdims=True), 1e-300))
    return np.stack(out)


def calibrate_lateral_by_energy(generator: ShowerGenerator, data: ShowerSet, n_bins: int = 10, seed: int = 0,
                                iterations: int = 3, ring_iterations: int = 3, min_events: int = 100) -> dict:
    """Fit and set the generator's lateral correction (module docstring). In ``n_bins`` bins equal in
    ln E holding ``min_events`` showers or more: first the halo, as :func:`calibrate_layers_by_energy`
    does the layers, with g = logit(halo fraction) of each layer (``iterations`` passes); then the
    ring factors, ``ring_iterations`` updates ln f += ln((data + floor) / (generator + floor)) of
    the ring fractions (:func:`ring_fractions`) made with the correction in force, each ln f within
    +-ln RING_FACTOR_MAX. Any lateral correction the generator had is replaced. The report gives
    per bin the generator / data spread ratio and |median difference| of logit(h) (median over the
    layers and worst) and the ring-profile distance (sum over rings of |data - generator| fraction,
    mean over the layers) before and after."""
    if not hasattr(generator, "set_lateral_correction"):
        raise ValueError(f"{generator.name}: it has no lateral correction to calibrate")
    threshold = data.geometry.readout_threshold_gev
    edges, which, bins, knots = _energy_bins(data.primary_energy, n_bins, min_events)
    generator.set_lateral_correction(None)
    uncorrected = [generate_like(generator, data, seed).showers]  # the fit's first pass reuses these
    generated: list[np.ndarray] = []

    def generate() -> np.ndarray:
        generated[:] = [uncorrected.pop() if uncorrected else generate_like(generator, data, seed).showers]
        return generated[0]

    ring_data = ring_fractions(data.showers, threshold, which, bins)
    ring_before = ring_fractions(uncorrected[0], threshold, which, bins)
    fit = _fit_median_and_spread(
        logit_halo_fractions(data.showers, threshold), lambda: logit_halo_fractions(generate(), threshold),
        lambda c, t, g: generator.set_lateral_correction(knots, c.tolist(), t.tolist(), g.tolist()),
        which, bins, iterations)
    bound = float(np.log(RING_FACTOR_MAX))
    ln_factor = np.zeros_like(ring_data)  # (bins, layers, rings)
    ring_after = ring_fractions(generated[0], threshold, which, bins)
    for _ in range(ring_iterations):
        ln_factor = np.clip(ln_factor + np.log((ring_data + RING_FRACTION_FLOOR) / (ring_after + RING_FRACTION_FLOOR)),
                            -bound, bound)
        generator.set_lateral_correction(knots, fit["centre"].tolist(), fit["target"].tolist(), fit["gain"].tolist(),
                                         ln_factor.reshape(len(bins), -1).T.tolist())
        ring_after = ring_fractions(generate(), threshold, which, bins)
    halo_after = _binned_quantiles(logit_halo_fractions(generated[0], threshold), which, bins)
    r = lambda v: [round(float(x), 4) for x in v]  # noqa: E731

    def summary(median: np.ndarray, spread: np.ndarray, rings: np.ndarray) -> dict[str, list[float]]:
        ratio = spread / np.maximum(fit["spread_data"], 1e-9)
        return {"halo_spread_ratio_median": r(np.median(ratio, axis=1)),
                "halo_median_offset_median": r(np.median(np.abs(median - fit["median_data"]), axis=1)),
                "halo_median_offset_worst": r(np.abs(median - fit["median_data"]).max(axis=1)),
                "ring_profile_distance": r(np.abs(rings - ring_data).sum(axis=2).mean(axis=1))}

    return {"knots": knots, **{k: fit[k].tolist() for k in ("centre", "target", "gain")},
            "ring_log_factor": ln_factor.reshape(len(bins), -1).T.tolist(),
            "bins_gev": [[round(float(edges[b]), 4), round(float(edges[b + 1]), 4)] for b in bins],
            "events": [int((which == b).sum()) for b in bins],
            "before": summary(fit["before"][0], fit["before"][1], ring_before),
            "after": summary(halo_after[0], halo_after[1], ring_after)}


def logit_rest_fractions(showers: np.ndarray, threshold_gev: float) -> np.ndarray:
    """``(B, n_layers)`` logit of the fraction of each layer's energy outside its largest cell (within
    [HALO_FRACTION_FLOOR, 1 - HALO_FRACTION_FLOOR]) of showers ``(B, x, y, z)`` (GeV), cells below the
    readout threshold as zero; NaN for layers of fewer than two cells."""
    s = np.where(showers < threshold_gev, 0.0, showers).reshape(len(showers), -1, showers.shape[3])
    layer = s.sum(axis=1, dtype=np.float64)
    rest = layer - s.max(axis=1)
    r = np.clip(rest / np.where(layer > 0, layer, 1.0), HALO_FRACTION_FLOOR, 1 - HALO_FRACTION_FLOOR)
    return np.where((s > 0).sum(axis=1) >= 2, np.log(r / (1 - r)), np.nan)


def calibrate_peak_by_energy(generator: ShowerGenerator, data: ShowerSet, n_bins: int = 10, seed: int = 0,
                             iterations: int = 3, min_events: int = 100) -> dict:
    """Fit and set the generator's peak-sharing correction (module docstring), as
    :func:`calibrate_layers_by_energy` does the layers, with g = logit(fraction of the layer's energy
    outside its largest cell) of the layers of two cells or more (``iterations`` passes, in ``n_bins``
    bins equal in ln E holding ``min_events`` showers or more). Where a layer has fewer than
    MIN_QUANTILE_VALUES such showers in a bin, in the data or the generator, its correction there is
    the identity (centre = target = 0, gain = 0). Any peak correction the generator had is replaced.
    The report gives per bin the generator / data spread ratio and |median difference| of g (median
    over the layers and worst) before and after, and the number of layers left as they are."""
    if not hasattr(generator, "set_peak_correction"):
        raise ValueError(f"{generator.name}: it has no peak correction to calibrate")
    threshold = data.geometry.readout_threshold_gev
    edges, which, bins, knots = _energy_bins(data.primary_energy, n_bins, min_events)
    generator.set_peak_correction(None)
    identity = np.zeros((data.geometry.n_layers, len(bins)), dtype=bool)

    def set_correction(centre: np.ndarray, target: np.ndarray, gain: np.ndarray) -> None:
        identity[:] = ~(np.isfinite(centre) & np.isfinite(target) & np.isfinite(gain))
        c, t, g = (np.where(identity, 0.0, v) for v in (centre, target, gain))
        generator.set_peak_correction(knots, c.tolist(), t.tolist(), g.tolist())

    fit = _fit_median_and_spread(
        logit_rest_fractions(data.showers, threshold),
        lambda: logit_rest_fractions(generate_like(generator, data, seed).showers, threshold),
        set_correction, which, bins, iterations)
    r = lambda v: [round(float(x), 4) if np.isfinite(x) else None for x in v]  # noqa: E731

    def summary(median: np.ndarray, spread: np.ndarray) -> dict[str, list[float | None]]:
        ratio = np.where(identity.T, np.nan, spread / np.maximum(fit["spread_data"], 1e-9))
        offset = np.where(identity.T, np.nan, np.abs(median - fit["median_data"]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a bin with every layer left as it is: None
            return {"spread_ratio_median": r(np.nanmedian(ratio, axis=1)),
                    "median_offset_median": r(np.nanmedian(offset, axis=1)),
                    "median_offset_worst": r(np.nanmax(offset, axis=1))}

    config = generator.config  # type: ignore[attr-defined]
    return {"knots": knots, **{k: [list(row) for row in getattr(config, f"peak_{k}")]
                               for k in ("centre", "target", "gain")},
            "bins_gev": [[round(float(edges[b]), 4), round(float(edges[b + 1]), 4)] for b in bins],
            "events": [int((which == b).sum()) for b in bins],
            "layers_left_as_they_are": [int(n) for n in identity.sum(axis=0)],
            "before": summary(*fit["before"]), "after": summary(*fit["after"])}


def log_hit_counts(showers: np.ndarray, threshold_gev: float) -> np.ndarray:
    """``(B,)`` ln of the number of cells at or above the readout threshold (ln 1 = 0 for none)."""
    count = (showers >= max(threshold_gev, 1e-30)).reshape(len(showers), -1).sum(axis=1)
    return np.log(np.maximum(count, 1).astype(np.float64))


def calibrate_hits_by_energy(generator: ShowerGenerator, data: ShowerSet, n_bins: int = 10, seed: int = 0,
                             iterations: int = 3, min_events: int = 100) -> dict:
    """Fit and set the generator's hit-count correction (module docstring): in ``n_bins`` bins equal
    in ln E holding ``min_events`` showers or more, the median and spread (IQR) of ln(hit count) of
    ``data`` and of the generator at the data's conditions, at the bins' mean ln(E / 100 GeV):
    centre = the generator's median, target = the data's, gain = ln(data / generator spread) within
    +-ln 4; then ``iterations - 1`` updates of target and gain from the corrected showers (it can
    only remove hits, so where the generator has too few it stays short). The report gives per bin
    the medians and spreads of the data and of the generator before and after."""
    if not hasattr(generator, "set_hits_correction"):
        raise ValueError(f"{generator.name}: it has no hit-count correction to calibrate")
    threshold = data.geometry.readout_threshold_gev
    edges, which, bins, knots = _energy_bins(data.primary_energy, n_bins, min_events)
    generator.set_hits_correction(None)
    fit = _fit_median_and_spread(
        log_hit_counts(data.showers, threshold)[:, None],
        lambda: log_hit_counts(generate_like(generator, data, seed).showers, threshold)[:, None],
        lambda c, t, g: generator.set_hits_correction(knots, c[0].tolist(), t[0].tolist(), g[0].tolist()),
        which, bins, iterations)
    r = lambda v: [round(float(x), 4) for x in np.ravel(v)]  # noqa: E731
    return {"knots": knots, **{k: r(fit[k]) for k in ("centre", "target", "gain", "median_data", "spread_data")},
            "bins_gev": [[round(float(edges[b]), 4), round(float(edges[b + 1]), 4)] for b in bins],
            "events": [int((which == b).sum()) for b in bins],
            **{when: {"median": r(fit[when][0]), "spread": r(fit[when][1])} for when in ("before", "after")}}


def layer_radial_widths(showers: np.ndarray, geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """``(B, n_layers)`` radial width sqrt(var x + var y) (mm) of each layer of showers ``(B, x, y, z)``
    (GeV) of a cartesian geometry over its cells at or above the readout threshold, and the number of
    those cells (0 and 0 for an empty layer)."""
    s = np.where(showers >= max(geometry.readout_threshold_gev, 1e-30), showers, 0.0).astype(np.float64)
    centres_x, centres_y = geometry.cell_centres_mm()
    x, y = centres_x[None, :, None, None], centres_y[None, None, :, None]
    energy = s.sum(axis=(1, 2))
    total = np.where(energy > 0, energy, 1.0)
    cx, cy = (s * x).sum(axis=(1, 2)) / total, (s * y).sum(axis=(1, 2)) / total
    variance = (s * (x * x + y * y)).sum(axis=(1, 2)) / total - cx * cx - cy * cy
    return np.sqrt(np.clip(variance, 0.0, None)), (s > 0).sum(axis=(1, 2))


def _width_tables(widths: np.ndarray, cells: np.ndarray, levels: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per layer of one group of showers: the fraction of one-cell layers among those with energy, the
    quantiles (``levels``) of the widths of the layers of two cells or more, and their number."""
    filled, spread = (cells > 0).sum(axis=0), (cells > 1).sum(axis=0)
    single = np.where(filled > 0, (cells == 1).sum(axis=0) / np.maximum(filled, 1), 0.0)
    q = np.array([np.quantile(widths[cells[:, k] > 1, k], levels) if spread[k] else np.zeros(len(levels))
                  for k in range(widths.shape[1])])
    return single, q, spread


def calibrate_width_by_energy(generator: ShowerGenerator, data: ShowerSet, n_bins: int = 10, n_quantiles: int = 41,
                              seed: int = 0, max_layer_share: float = 0.05, min_layers: int = 50,
                              min_events: int = 100, max_energy_gev: float | None = None) -> dict:
    """Fit and set the generator's width correction (module docstring): in ``n_bins`` bins equal in
    ln E (``min_events`` showers or more each) and per layer, the fraction of one-cell layers and
    ``n_quantiles`` quantiles of the radial width of the others, the generator's (without the
    correction) and the data's. A layer is mapped in a bin where it holds on average less than
    ``max_layer_share`` of the data's deposited energy (the sparse layers: the shower's start and
    its tail, where a far deposit is what makes a layer wide; near the maximum a layer is wide by
    many cells, which one far deposit would not reproduce) and both sides have ``min_layers`` layers
    of two cells or more, and, with ``max_energy_gev``, only in the bins that end at or below it;
    elsewhere the data side is the generator's own (the identity; between a mapped knot and an
    identity one the map fades linearly in ln E). Any width
    correction the generator had is replaced. The report gives per bin the layers mapped and the
    mean |data - generator| of the width quantiles (mm) and of the one-cell fraction over them,
    before and after."""
    if not hasattr(generator, "set_width_correction"):
        raise ValueError(f"{generator.name}: it has no width correction to calibrate")
    if not 0 < max_layer_share <= 1:
        raise ValueError(f"max_layer_share must be in (0, 1], got {max_layer_share}")
    geometry = data.geometry
    edges, which, bins, knots = _energy_bins(data.primary_energy, n_bins, min_events)
    levels = np.linspace(0.0, 1.0, n_quantiles)
    generator.set_width_correction(None)
    w_data, n_data = layer_radial_widths(data.showers, geometry)
    w_gen, n_gen = layer_radial_widths(generate_like(generator, data, seed).showers, geometry)
    deposited = data.showers.sum(axis=(1, 2), dtype=np.float64)
    share = deposited / np.maximum(deposited.sum(axis=1, keepdims=True), 1e-30)
    # identity tables for a layer with too few spread layers in a bin: its quantiles over all bins
    _, pooled, pooled_count = _width_tables(w_gen, n_gen, levels)
    dx, dy = geometry.cell_size_mm or (1.0, 1.0)
    half = 0.5 * min(geometry.shape[0] * dx, geometry.shape[1] * dy)
    pooled = np.where((pooled_count >= 2)[:, None], pooled, np.linspace(0.0, half, n_quantiles)[None, :])
    tables: dict[str, list[np.ndarray]] = {"single_gen": [], "single_data": [], "q_gen": [], "q_data": []}
    mapped, data_tables = [], []
    for b in bins:
        sel = which == b
        sg, qg, spread_g = _width_tables(w_gen[sel], n_gen[sel], levels)
        sd, qd, spread_d = _width_tables(w_data[sel], n_data[sel], levels)
        data_tables.append((sd, qd))
        qg = np.where((spread_g >= 2)[:, None], qg, pooled)
        use = (share[sel].mean(axis=0) < max_layer_share) & (spread_g >= min_layers) & (spread_d >= min_layers)
        use &= max_energy_gev is None or edges[b + 1] <= max_energy_gev * (1 + 1e-9)
        mapped.append(use)
        tables["single_gen"].append(sg)
        tables["single_data"].append(np.where(use, sd, sg))
        tables["q_gen"].append(qg)
        tables["q_data"].append(np.where(use[:, None], qd, qg))
    single_gen, single_data = (np.stack(tables[k], axis=1) for k in ("single_gen", "single_data"))  # (layers, bins)
    q_gen, q_data = (np.stack(tables[k], axis=-1).reshape(-1, len(bins)) for k in ("q_gen", "q_data"))
    generator.set_width_correction(knots, single_gen.tolist(), single_data.tolist(), q_gen.tolist(),
                                   q_data.tolist())
    w_after, n_after = layer_radial_widths(generate_like(generator, data, seed).showers, geometry)

    def offsets(w: np.ndarray, n: np.ndarray) -> dict[str, list[float]]:
        quantile, single = [], []
        for i, b in enumerate(bins):
            sel, use = which == b, mapped[i]
            if not use.any():
                quantile.append(0.0)
                single.append(0.0)
                continue
            s_c, q_c, _ = _width_tables(w[sel], n[sel], levels)
            s_d, q_d = data_tables[i]
            quantile.append(round(float(np.abs(q_c - q_d)[use].mean()), 4))
            single.append(round(float(np.abs(s_c - s_d)[use].mean()), 4))
        return {"width_quantile_offset_mm": quantile, "single_fraction_offset": single}

    return {"knots": knots, "levels": levels.tolist(), "max_layer_share": max_layer_share,
            "max_energy_gev": max_energy_gev,
            "layers_mapped": [[int(k) for k in np.flatnonzero(u)] for u in mapped],
            "bins_gev": [[round(float(edges[b]), 4), round(float(edges[b + 1]), 4)] for b in bins],
            "events": [int((which == b).sum()) for b in bins],
            "before": offsets(w_gen, n_gen), "after": offsets(w_after, n_after)}
