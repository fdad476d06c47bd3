"""Validation report: the verdict table, the full metric table beside its floor, and the standard plots
(overlaid distributions of the reference, the floor sample and every candidate, with ratio panels),
as one self-contained HTML page.

:func:`write_validation` runs the whole validation of one or more candidates
(:mod:`~fastshower.validate.comparison` for the metrics, :mod:`~fastshower.validate.verdict` for the
key numbers), draws the plots with matplotlib (mplhep CMS style) and writes ``DIR/report.html``
(images embedded as base64 PNG) and ``DIR/metrics.json`` atomically. :func:`write_report` is the
one-candidate form.

Check the page in a headless browser (docs/metrics.md, "Looking at the report"):
``chromium --headless --no-sandbox --disable-gpu --screenshot=shot.png --window-size=1400,4000 DIR/report.html``.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fastshower.fileio import write_text_atomic
from fastshower.geometry import Geometry
from fastshower.showers import ShowerSet
from fastshower.validate import metrics as M
from fastshower.validate.binning import default_angle_bins, default_energy_bins
from fastshower.validate.comparison import (
    Comparison,
    Prepared,
    Sample,
    compare_prepared,
    prepare,
)
from fastshower.validate.formatting import verdict_rows
from fastshower.validate.observables import HIT_THRESHOLD_GEV
from fastshower.validate.verdict import Column, Verdict, build_verdict, event_depth_mm

REFERENCE, FLOOR = "reference", "floor sample"
_CANDIDATE_COLOURS = ("tab:red", "tab:green", "tab:orange", "tab:purple", "tab:brown", "tab:cyan")


@dataclass
class Validation:
    """What :func:`write_validation` computed and wrote."""

    comparisons: list[Comparison]
    verdict: Verdict
    report_path: Path
    metrics_path: Path


class Palette(dict):
    """Sample key -> colour, with the name each sample has in legends and titles."""

    def __init__(self, labels: list[str], names: dict[str, str] | None = None) -> None:
        super().__init__({REFERENCE: "black", FLOOR: "tab:blue"})
        cands = [k for k in labels if k not in self]
        self.update({k: _CANDIDATE_COLOURS[i % len(_CANDIDATE_COLOURS)] for i, k in enumerate(cands)})
        self.names = dict(names or {})

    def name(self, key: str) -> str:
        return self.names.get(key, key)


def _colours(labels: list[str], names: dict[str, str] | None = None) -> Palette:
    return Palette(labels, names)


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=72, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _axis_names(geometry: Geometry) -> dict[str, str]:
    if geometry.kind == "cylindrical":
        return {"x": "radial bin r", "y": r"angular bin $\alpha$", "z": "layer"}
    return {"x": "x [mm]", "y": "y [mm]", "z": "depth of the layer centre [mm]"}


def _axis_positions(geometry: Geometry) -> dict[str, np.ndarray]:
    if geometry.kind == "cylindrical":
        return {"x": np.arange(geometry.shape[0]), "y": np.arange(geometry.shape[1]),
                "z": geometry.layer_centres_mm()}
    a, b = geometry.cell_centres_mm()
    return {"x": np.asarray(a), "y": np.asarray(b), "z": geometry.layer_centres_mm()}


def _panel_pair(fig, spec):
    top = fig.add_subplot(spec[0])
    bottom = fig.add_subplot(spec[1], sharex=top)
    top.tick_params(labelbottom=False)
    return top, bottom


def _ratio_axes(ax, ylabel: str = "ratio to ref.") -> None:
    ax.axhline(1, color="grey", lw=0.8)
    ax.set_ylim(0.5, 1.5)
    ax.set_ylabel(ylabel, fontsize=13)


def _reference_range(values: np.ndarray, n_bins: int = 40) -> np.ndarray:
    """Bin edges around the bulk of the reference: its 0.1-99.9 % quantiles widened by a quarter of
    that span on each side (other samples' entries outside land in the edge bins)."""
    lo, hi = np.quantile(values, [0.001, 0.999])
    pad = 0.25 * (hi - lo) if hi > lo else max(abs(lo) * 0.05, 1e-6)
    return np.linspace(lo - pad, hi + pad, n_bins + 1)


def _overlay_hist(top, bottom, samples: dict[str, np.ndarray], edges: np.ndarray, colours: Palette,
                  *, logy: bool = False) -> None:
    """Normalised histograms (density) of every sample, the reference with its statistical band,
    and each sample / reference in the ratio panel (statistical error bars of the sample)."""
    ref = samples[REFERENCE]
    widths = np.diff(edges)
    ref_counts = np.histogram(np.clip(ref, edges[0], edges[-1]), edges)[0].astype(float)
    ref_d = ref_counts / max(ref_counts.sum(), 1) / widths
    ref_err = np.sqrt(ref_counts) / max(ref_counts.sum(), 1) / widths
    centres = 0.5 * (edges[1:] + edges[:-1])
    top.fill_between(edges, np.append(ref_d - ref_err, 0), np.append(ref_d + ref_err, 0), step="post",
                     color="black", alpha=0.15, lw=0)
    for label, values in samples.items():
        counts = np.histogram(np.clip(values, edges[0], edges[-1]), edges)[0].astype(float)
        d = counts / max(counts.sum(), 1) / widths
        top.stairs(d, edges, color=colours[label], label=colours.name(label), lw=2 if label == REFERENCE else 1.5)
        if label != REFERENCE:
            with np.errstate(divide="ignore", invalid="ignore"):
                err = np.sqrt(counts) / max(counts.sum(), 1) / widths / ref_d
                bottom.errorbar(centres, d / ref_d, yerr=err, fmt="o", ms=3, color=colours[label], lw=1)
    if logy:
        top.set_yscale("log")
    top.set_ylabel("normalised entries", fontsize=13)
    _ratio_axes(bottom)


def plot_profiles(samples: dict[str, Sample], geometry: Geometry, colours: Palette):
    """Event-averaged energy per layer (longitudinal) and per x and y column (lateral), GeV, log
    scale, with sample / reference ratio panels (error bars: standard error of the mean)."""
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(18, 7))
    grid = fig.add_gridspec(2, 3, height_ratios=(3, 1), hspace=0.05, wspace=0.3)
    names, pos = _axis_names(geometry), _axis_positions(geometry)
    titles = {"x": "lateral profile (x)", "y": "lateral profile (y)", "z": "longitudinal profile"}
    for col, a in enumerate("zxy"):
        top, bottom = _panel_pair(fig, (grid[0, col], grid[1, col]))
        r = samples[REFERENCE].obs[f"profile_{a}"].mean(axis=0)
        for label, s in samples.items():
            p = s.obs[f"profile_{a}"]
            mean, sem = p.mean(axis=0), p.std(axis=0) / math.sqrt(len(p))
            top.step(pos[a], mean, where="mid", color=colours[label], label=colours.name(label), lw=2 if label == REFERENCE else 1.5)
            if label != REFERENCE:
                with np.errstate(divide="ignore", invalid="ignore"):
                    bottom.errorbar(pos[a], mean / r, yerr=sem / r, fmt="o", ms=3, color=colours[label], lw=1)
        top.set_yscale("log")
        top.set_ylabel("mean energy per event [GeV]", fontsize=13)
        top.set_title(titles[a], fontsize=15)
        _ratio_axes(bottom)
        bottom.set_xlabel(names[a], fontsize=13)
    fig.axes[0].legend(fontsize=11)
    return fig


def plot_response(samples: dict[str, Sample], energy_bins: np.ndarray, colours: Palette, n_panels: int = 3):
    """E_deposited / E_primary per primary-energy bin (up to ``n_panels`` bins with events), with ratios."""
    import matplotlib.pyplot as plt

    ref = samples[REFERENCE]
    ids = [i for i in range(len(energy_bins) - 1)
           if np.sum((ref.primary_energy >= energy_bins[i]) & (ref.primary_energy < energy_bins[i + 1])) >= 10]
    if not ids or np.ptp(ref.primary_energy) < 1e-6:  # a single energy outside the edges, or few events: all events in one panel
        chosen = [(float(ref.primary_energy.min()), float(ref.primary_energy.max()) + 1e-9)]
    else:
        picks = sorted({ids[int(round(k))] for k in np.linspace(0, len(ids) - 1, min(n_panels, len(ids)))})
        chosen = [(energy_bins[i], energy_bins[i + 1]) for i in picks]
    fig = plt.figure(figsize=(6 * len(chosen), 6.5))
    grid = fig.add_gridspec(2, len(chosen), height_ratios=(3, 1), hspace=0.05, wspace=0.3)
    for col, (lo, hi) in enumerate(chosen):
        top, bottom = _panel_pair(fig, (grid[0, col], grid[1, col]))
        vals = {k: s.obs["energy_ratio"][(s.primary_energy >= lo) & (s.primary_energy <= hi)]
                for k, s in samples.items()}
        _overlay_hist(top, bottom, vals, _reference_range(vals[REFERENCE]), colours)
        top.set_title(f"{lo:g}-{hi:g} GeV" if hi - lo > 1e-6 else f"{lo:g} GeV", fontsize=15)
        bottom.set_xlabel(r"response $E_{dep}/E_{primary}$ (active energy)", fontsize=13)
    fig.axes[0].legend(fontsize=11)
    return fig


def plot_spectra(samples: dict[str, Sample], geometry: Geometry, colours: Palette):
    """Cell-energy spectrum (GeV, log-log, cells per event) and the number of hits (cells above
    0.2 MeV, log-spaced bins where it spans a decade or more), with ratio panels."""
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(16, 6.5))
    grid = fig.add_gridspec(2, 2, height_ratios=(3, 1), hspace=0.05, wspace=0.25)
    top, bottom = _panel_pair(fig, (grid[0, 0], grid[1, 0]))
    ref = samples[REFERENCE]
    lo = max(ref.threshold_gev, 1e-9)
    hi = max(float(s.showers.max()) for s in samples.values())
    edges = np.geomspace(lo, hi * 1.01, 50)
    r_counts = M.cell_energy_histogram(ref.showers, edges) / len(ref)
    for label, s in samples.items():
        counts = M.cell_energy_histogram(s.showers, edges)
        per_event = counts / len(s)
        top.stairs(per_event, edges, color=colours[label], label=colours.name(label), lw=2 if label == REFERENCE else 1.5)
        if label != REFERENCE:
            with np.errstate(divide="ignore", invalid="ignore"):
                bottom.errorbar(np.sqrt(edges[1:] * edges[:-1]), per_event / r_counts,
                                yerr=np.sqrt(counts) / len(s) / r_counts, fmt="o", ms=3, color=colours[label], lw=1)
    top.axvline(HIT_THRESHOLD_GEV, color="grey", ls="--", label="hit threshold 0.2 MeV")
    top.set_xscale("log")
    top.set_yscale("log")
    top.set_ylabel("cells per event and bin", fontsize=13)
    top.set_title("cell-energy spectrum", fontsize=15)
    top.legend(fontsize=11)
    _ratio_axes(bottom)
    bottom.set_xlabel("cell energy [GeV] (active)", fontsize=13)

    top, bottom = _panel_pair(fig, (grid[0, 1], grid[1, 1]))
    hits = {k: s.obs["hits"].astype(float) for k, s in samples.items()}
    h_lo = max(1.0, float(np.quantile(np.concatenate(list(hits.values())), 0.001)))
    h_hi = float(np.max(np.concatenate(list(hits.values())))) + 1
    log = h_hi / h_lo >= 10
    edges = np.geomspace(h_lo, h_hi, 31) if log else np.linspace(h_lo, h_hi, 31)
    _overlay_hist(top, bottom, hits, edges, colours, logy=True)
    if log:
        top.set_xscale("log")
    top.set_title("hits per event", fontsize=15)
    bottom.set_xlabel("number of cells above 0.2 MeV", fontsize=13)
    return fig


def plot_shapes(samples: dict[str, Sample], geometry: Geometry, colours: Palette):
    """Per-event shower depth (energy-weighted mean layer depth, mm), lateral width in x (energy-
    weighted RMS over the layers' widths, mm) and shower-maximum layer, with ratio panels."""
    import matplotlib.pyplot as plt

    fig = plt.figure(figsize=(18, 6.5))
    grid = fig.add_gridspec(2, 3, height_ratios=(3, 1), hspace=0.05, wspace=0.3)
    def width(s):
        w = s.obs["layer_energy"]
        return (s.obs["width_x"] * w).sum(axis=1) / np.maximum(w.sum(axis=1), 1e-16)
    quantities = (("shower depth [mm]", lambda s: event_depth_mm(s.obs["layer_energy"], geometry)),
                  ("lateral width in x [mm]" if geometry.kind == "cartesian" else "width in x [mm]", width),
                  ("layer of the shower maximum", lambda s: s.obs["shower_max_layer"].astype(float)))
    for col, (xlabel, f) in enumerate(quantities):
        top, bottom = _panel_pair(fig, (grid[0, col], grid[1, col]))
        vals = {k: f(s) for k, s in samples.items()}
        if col == 2:
            edges = np.arange(geometry.n_layers + 1) - 0.5
        else:
            edges = _reference_range(vals[REFERENCE])
        _overlay_hist(top, bottom, vals, edges, colours)
        bottom.set_xlabel(xlabel, fontsize=13)
    fig.axes[0].legend(fontsize=11)
    return fig


def plot_sampling_fraction(samples: dict[str, Sample], comps: list[Comparison], colours: Palette):
    """Mean response vs primary energy (25 bins), mu90 and sigma90/mu90 per metric bin."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(18, 5))
    ref = samples[REFERENCE]
    e_lo, e_hi = ref.primary_energy.min(), ref.primary_energy.max()
    edges = np.linspace(e_lo, e_hi * 1.0001, 26) if e_hi > e_lo * 1.001 else np.array([e_lo * 0.99, e_hi * 1.01])
    for label, s in samples.items():
        idx = np.digitize(s.primary_energy, edges) - 1
        ok = [i for i in range(len(edges) - 1) if np.sum(idx == i) > 1]
        mean = [s.obs["energy_ratio"][idx == i].mean() for i in ok]
        err = [s.obs["energy_ratio"][idx == i].std() / math.sqrt(np.sum(idx == i)) for i in ok]
        axes[0].errorbar(0.5 * (edges[ok] + edges[np.array(ok, int) + 1]), mean, yerr=err, fmt="o", ms=4,
                         color=colours[label], label=colours.name(label))
    axes[0].set_xlabel("primary energy [GeV]")
    axes[0].set_ylabel(r"mean $E_{dep}/E_{primary}$")
    axes[0].legend(fontsize=11)
    labels = comps[0].candidate_details.bins
    x = np.arange(len(labels))
    series = {REFERENCE: comps[0].candidate_details.mu90_sigma90_reference}
    if comps[0].floor_details.bins == labels:
        series[FLOOR] = comps[0].floor_details.mu90_sigma90
    for c in comps:
        if c.candidate_details.bins == labels:
            series[c.label] = c.candidate_details.mu90_sigma90
    for label, vals in series.items():
        v = np.asarray(vals)
        axes[1].plot(x, v[:, 0], "o-", color=colours[label], label=colours.name(label))
        axes[2].plot(x, v[:, 1] / v[:, 0], "o-", color=colours[label], label=colours.name(label))
    for ax, title in ((axes[1], r"$\mu_{90}$ of $E_{dep}/E_{primary}$"), (axes[2], r"$\sigma_{90}/\mu_{90}$")):
        ax.set_xticks(x)
        ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=10)
        ax.set_title(title, fontsize=14)
    return fig


def plot_projections(samples: dict[str, Sample], geometry: Geometry, colours: Palette | None = None):
    """2D projections of the average shower (GeV, log colour scale): x-y summed over depth, y-z summed over x."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    names = {"x": "x cell", "y": "y cell", "z": "layer"} if geometry.kind == "cartesian" else \
        {"x": "r bin", "y": r"$\alpha$ bin", "z": "layer"}
    shown = {k: v for k, v in samples.items() if k != FLOOR}
    fig, axes = plt.subplots(2, len(shown), figsize=(5.5 * len(shown), 9), squeeze=False)
    means = {k: s.showers.mean(axis=0, dtype=np.float64) for k, s in shown.items()}
    for row, (axis, xl, yl) in enumerate(((2, names["y"], names["x"]), (0, names["z"], names["y"]))):
        imgs = {k: m.sum(axis=axis) for k, m in means.items()}
        vmax = max(i.max() for i in imgs.values())
        vmin = max(vmax * 1e-6, min(i[i > 0].min() for i in imgs.values() if np.any(i > 0)))
        for col, (label, img) in enumerate(imgs.items()):
            im = axes[row, col].imshow(np.where(img > 0, img, np.nan), origin="lower", aspect="auto",
                                       norm=LogNorm(vmin=vmin, vmax=vmax), cmap="viridis")
            axes[row, col].set_title(colours.name(label) if colours else label, fontsize=14)
            axes[row, col].set_xlabel(xl)
            axes[row, col].set_ylabel(yl)
            fig.colorbar(im, ax=axes[row, col], label="mean energy [GeV]")
    return fig


def plot_ssim(comps: list[Comparison], colours: Palette):
    """Mean SSIM (+- std over pairs) vs the data range L, candidates and floor."""
    import matplotlib.pyplot as plt

    names = [k for k in comps[0].metrics if k.startswith("ssim_L")]
    if not names:
        return None
    ls = [float(k[len("ssim_L"):]) for k in names]
    fig, ax = plt.subplots(figsize=(8, 5.5))
    rows = comps[0].metrics
    ax.errorbar(ls, [rows[k].floor for k in names], yerr=[rows[k].floor_error or 0 for k in names], fmt="o-",
                color=colours[FLOOR], label=f"floor ({colours.name(REFERENCE)} vs {colours.name(FLOOR)})", capsize=3)
    for c in comps:
        ax.errorbar(ls, [c.metrics[k].candidate for k in names], yerr=[c.metrics[k].candidate_error or 0 for k in names],
                    fmt="o-", color=colours[c.label], label=f"ref. vs {c.label}", capsize=3)
    ax.set_xscale("log")
    ax.set_xlabel("SSIM data range L [GeV]")
    ax.set_ylabel("SSIM")
    ax.legend(fontsize=11)
    return fig


_MARK_COLOURS = {"pass": "#c8f0c8", "close": "#fbe7a6", "fail": "#f6c0c0", "n/a": "#eeeeee"}


def _verdict_html(verdict: Verdict) -> str:
    header, rows = verdict_rows(verdict)
    out = ["<table class='verdict'><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>"]
    for row in rows:
        cells = [f"<td>{html.escape(row[0])}</td>", f"<td>{html.escape(row[1])}</td>"]
        for text in row[2:]:
            m = text.rsplit(" ", 1)[-1]
            style = f" style='background:{_MARK_COLOURS[m]}'" if m in _MARK_COLOURS else ""
            cells.append(f"<td{style}>{html.escape(text)}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    return "\n".join(out) + "</table>"


def _full_table_html(comps: list[Comparison]) -> str:
    def cell(v, e):
        if v is None:
            return "n/a"
        return f"{v:.4g} &plusmn; {e:.2g}" if e is not None else f"{v:.4g}"
    head = "<tr><th>metric</th><th>floor</th>" + "".join(
        f"<th>{html.escape(c.label)}</th><th>ratio</th>" for c in comps) + "</tr>"
    rows = []
    for name, r0 in comps[0].metrics.items():
        tds = f"<td>{html.escape(name)}</td><td>{cell(r0.floor, r0.floor_error)}</td>"
        for c in comps:
            r = c.metrics.get(name)
            if r is None:
                tds += "<td>n/a</td><td>n/a</td>"
                continue
            ratio = "n/a" if r.ratio is None else f"{r.ratio:.3g}"
            tds += f"<td>{cell(r.candidate, r.candidate_error)}</td><td>{ratio}</td>"
        rows.append(f"<tr>{tds}</tr>")
    return f"<table class='full'>{head}{''.join(rows)}</table>"


def _html(comps: list[Comparison], verdict: Verdict, images: list[tuple[str, str, str]], labels: dict[str, str],
          title: str) -> str:
    c0 = comps[0]
    figs = "\n".join(f'<h3>{html.escape(t)}</h3>\n<p class="cap">{html.escape(cap)}</p>\n'
                     f'<img alt="{html.escape(t)}" src="data:image/png;base64,{b64}">' for t, cap, b64 in images)
    notes = sorted({w for c in comps for w in c.warnings} | set(verdict.notes))
    if c0.candidate_details.ssim_skipped:
        notes.append(f"SSIM skipped: {c0.candidate_details.ssim_skipped}")
    inputs = "".join(f"<li>{html.escape(k)}: {html.escape(v)}</li>" for k, v in labels.items())
    note_html = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    sizes = ", ".join(f"{html.escape(c.label)} {c.n_candidate}" for c in comps)
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:1.5em;max-width:1500px}} table{{border-collapse:collapse;margin:0.5em 0}}
td,th{{border:1px solid #bbb;padding:3px 8px;text-align:right;font-size:14px}} td:first-child{{text-align:left}}
th{{background:#f0f0f0}} table.verdict td{{font-family:monospace;font-size:15px}} img{{max-width:100%}}
p.cap{{color:#444;margin:0.2em 0}} .legend{{color:#333;font-size:13px;max-width:1200px}}</style></head><body>
<h1>{html.escape(title)}</h1>
<h2>Verdict</h2>
{_verdict_html(verdict)}
<p class="legend">Each cell: the sample's value, its difference to the reference, its deviation in units of the
floor (the deviation a statistically identical sample of the same size shows), and the mark. <b>pass</b>: within
3x the floor; <b>close</b>: beyond, but within the physics tolerance (response 1%, resolution 10% of itself,
2% of the energy in the wrong layers or columns, depth {verdict.depth_tolerance_mm:.2g} mm = 0.2 X0, AUC 0.6);
<b>fail</b>: beyond. {html.escape(verdict.timing_note)} Definitions: docs/metrics.md.</p>
<h2>Inputs</h2><ul>{inputs}
<li>geometry {html.escape(c0.geometry)}; {c0.n_reference} reference events, candidates: {sizes};
floor pool {c0.n_reference2} events; cells below {c0.threshold_gev:g} GeV zeroed.</li>
<li>floor: {html.escape(c0.floor_source)}</li></ul>
{'<h2>Warnings and notes</h2><ul>' + note_html + '</ul>' if note_html else ''}
<h2>Plots</h2>
<p>Black: the reference (grey band: its statistical error); blue: the floor sample (an independent sample of the
reference simulation: what a perfect candidate looks like); colours: the candidates. Ratio panels: sample /
reference with the sample's statistical error.</p>
{figs}
<h2>All metrics</h2>
<p>Every metric for each candidate and for the floor; ratio = candidate / floor. Lower is better except SSIM.</p>
{_full_table_html(comps)}
</body></html>
"""


def _draw(samples: dict[str, Sample], comps: list[Comparison], geometry: Geometry, progress: bool,
          names: dict[str, str] | None = None) -> list[tuple[str, str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mplhep
    from tqdm import tqdm

    colours = _colours(list(samples), names)
    edges = np.asarray(comps[0].energy_bins_gev)
    plots = [
        ("Shower profiles", "Mean energy per layer (vs the layer's depth) and per lateral column, log scale.",
         lambda: plot_profiles(samples, geometry, colours)),
        ("Energy response", "Active energy over primary energy, per primary-energy bin. Ranges follow the "
         "reference; other samples' entries outside them are counted in the first or last bin.",
         lambda: plot_response(samples, edges, colours)),
        ("Cell-energy spectrum and hits", "Both span decades: log scales.",
         lambda: plot_spectra(samples, geometry, colours)),
        ("Shower depth, width and maximum", "Per-event shape observables.",
         lambda: plot_shapes(samples, geometry, colours)),
        ("Response vs primary energy", "Mean response, mu90 and sigma90/mu90 per metric bin.",
         lambda: plot_sampling_fraction(samples, comps, colours)),
        ("Average shower", "2D projections of the mean shower.", lambda: plot_projections(samples, geometry, colours)),
        ("SSIM vs data range L", "A weak shape metric (docs/metrics.md).", lambda: plot_ssim(comps, colours)),
    ]
    images = []
    with plt.style.context(mplhep.style.CMS), np.errstate(divide="ignore", invalid="ignore"):
        for title, cap, make in tqdm(plots, desc="plots", disable=not progress, leave=False):
            fig = make()
            if fig is not None:
                images.append((title, cap, _png(fig)))
    return images


def write_validation(reference: ShowerSet, candidates: dict[str, ShowerSet], out_dir: str | Path,
                     reference2: ShowerSet | None = None, *, quick: bool = False, classifier: bool = True,
                     energy_bins=None, classifier_seeds=(0, 1, 2), seed: int = 0, progress: bool = True,
                     labels: dict[str, str] | None = None, in_place: bool = False,
                     seconds_per_shower: dict[str, float] | None = None, reference_label: str = REFERENCE,
                     floor_label: str = FLOOR, timing_note: str = "", title: str = "fastshower validation report",
                     n_boot: int = 100, ssim_pairs: int | None = None) -> Validation:
    """Validate ``candidates`` (label -> set) against ``reference`` and write the report.

    The floor pool is ``reference2`` or, without one, half of the reference (see
    :mod:`~fastshower.validate.comparison`). ``seconds_per_shower`` (label -> s; the keys
    ``reference`` and ``floor sample`` for the reference samples) feeds the time row of the verdict.
    ``labels`` describes the inputs in the page (e.g. file names).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    p: Prepared = prepare(reference, candidates, reference2, seed=seed, in_place=in_place)
    comps = compare_prepared(p, energy_bins=energy_bins, quick=quick, classifier=classifier,
                             classifier_seeds=classifier_seeds, seed=seed, progress=progress, ssim_pairs=ssim_pairs)
    geometry = p.geometry
    edges = np.asarray(energy_bins, float) if energy_bins is not None else \
        default_energy_bins(geometry, p.reference.primary_energy)
    angle_edges = default_angle_bins(geometry, p.reference.incident_angle)
    times = dict(seconds_per_shower or {})
    pool_auc = None
    for c in comps:  # the floor of a full-size candidate is the floor sample against the reference
        row = c.metrics.get("classifier_auc_high")
        if row is not None and c.n_floor_subsamples == 1 and c.n_candidate == len(p.pool) and row.floor is not None:
            pool_auc = (row.floor, c.n_candidate)
    columns = [Column(floor_label, p.pool, pool_auc, times.get(FLOOR))]
    for c in comps:
        row = c.metrics.get("classifier_auc_high")
        columns.append(Column(c.label, p.candidates[c.label], None if row is None else (row.candidate, c.n_candidate),
                              times.get(c.label)))
    verdict = build_verdict(p.reference, columns, geometry, edges, angle_edges, reference_label=reference_label,
                            reference_seconds_per_shower=times.get(REFERENCE), n_boot=n_boot, seed=seed,
                            timing_note=timing_note)
    verdict.notes = sorted({w for c in comps for w in c.warnings})
    samples = {REFERENCE: p.reference, FLOOR: p.pool, **p.candidates}
    images = _draw(samples, comps, geometry, progress, {REFERENCE: reference_label, FLOOR: floor_label})
    names = {reference_label: REFERENCE, floor_label: FLOOR, **{k: k for k in candidates}}
    names.update(labels or {})
    report_path, metrics_path = out_dir / "report.html", out_dir / "metrics.json"
    payload = {"verdict": asdict(verdict), "comparisons": [c.to_dict() for c in comps]}
    write_text_atomic(metrics_path, json.dumps(payload, indent=1, default=float))
    write_text_atomic(report_path, _html(comps, verdict, images, names, title))
    return Validation(comps, verdict, report_path, metrics_path)


def write_report(reference: ShowerSet, candidate: ShowerSet, out_dir: str | Path, reference2: ShowerSet | None = None,
                 **kwargs) -> Comparison:
    """:func:`write_validation` for one candidate (label ``candidate``); returns its Comparison."""
    return write_validation(reference, {"candidate": candidate}, out_dir, reference2, **kwargs).comparisons[0]


#: File attribute read for the time row of the verdict (seconds of one core per shower), when present.
TIME_ATTR = "seconds_per_shower"


def validate_files(reference: str | Path, candidates: list[str | Path], out_dir: str | Path,
                   reference2: str | Path | None = None, *, geometry: str | None = None,
                   max_events: int | None = None, **kwargs) -> Validation:
    """Read the shower files and run :func:`write_validation` (in place, to save memory); each
    candidate is labelled by its file name (made unique), times come from the ``seconds_per_shower``
    file attribute where a file has it."""
    from fastshower.data import read_showers

    if max_events is not None and max_events < 2:
        raise ValueError(f"--max-events must be at least 2, got {max_events}")
    if not candidates:
        raise ValueError("give at least one candidate file")
    read = lambda path: read_showers(path, geometry=geometry, max_events=max_events)
    ref = read(reference)
    ref2 = read(reference2) if reference2 else None
    sets, labels, times = {}, {REFERENCE: str(reference)}, {}
    for path in candidates:
        label = Path(path).stem
        while label in sets or label in (REFERENCE, FLOOR):
            label += "'"
        sets[label] = read(path)
        labels[label] = str(path)
    if reference2:
        labels[FLOOR] = f"{reference2} (reference2)"
    for label, s in ((REFERENCE, ref), (FLOOR, ref2), *sets.items()):
        if s is not None and TIME_ATTR in s.attrs:
            times[label] = float(s.attrs[TIME_ATTR])
    return write_validation(ref, sets, out_dir, ref2, in_place=True, labels=labels, seconds_per_shower=times,
                            **kwargs)
