"""Validation report: the metric table beside its floor, and the standard plots, as one HTML page.

:func:`write_report` computes every metric (:func:`fastshower.validate.metrics.compare_samples`),
draws the plots with matplotlib in the mplhep CMS style, and writes ``DIR/report.html`` (images
embedded as base64 PNG, so the page is self-contained) and ``DIR/metrics.json`` (atomically).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path

import numpy as np

from fastshower.fileio import write_text_atomic
from fastshower.geometry import Geometry
from fastshower.showers import ShowerSet
from fastshower.validate import metrics as M
from fastshower.validate.observables import HIT_THRESHOLD_GEV

COLOURS = {"reference": "black", "candidate": "tab:red", "reference 2": "tab:blue"}


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _axis_names(geometry: Geometry) -> dict[str, str]:
    if geometry.kind == "cylindrical":
        return {"x": "r bin", "y": r"$\alpha$ bin", "z": "layer"}
    return {"x": "x cell", "y": "y cell", "z": "layer (depth)"}


def plot_profiles(samples: dict[str, M.Sample], geometry: Geometry, log: bool):
    """Event-averaged energy profile along each axis (GeV per cell), with candidate / reference ratios."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(18, 7), gridspec_kw={"height_ratios": [3, 1]}, sharex="col")
    names = _axis_names(geometry)
    ref = samples["reference"]
    for col, a in enumerate("xyz"):
        r = ref.obs[f"profile_{a}"].mean(axis=0)
        idx = np.arange(len(r))
        for label, s in samples.items():
            p = s.obs[f"profile_{a}"].mean(axis=0)
            axes[0, col].step(idx, p, where="mid", color=COLOURS[label], label=label)
            if label != "reference":
                with np.errstate(divide="ignore", invalid="ignore"):
                    axes[1, col].step(idx, p / r, where="mid", color=COLOURS[label])
        axes[0, col].set_yscale("log" if log else "linear")
        axes[0, col].set_ylabel("mean energy [GeV]")
        axes[1, col].axhline(1, color="grey", lw=0.8)
        axes[1, col].set_ylim(0.5, 1.5)
        axes[1, col].set_ylabel("ratio to ref.")
        axes[1, col].set_xlabel(names[a])
    axes[0, 0].legend()
    fig.suptitle(f"Shower shapes ({'log' if log else 'linear'} scale)")
    return fig


def plot_energy_and_hits(samples: dict[str, M.Sample], energy_bins: np.ndarray, n_panels: int = 4):
    """E_deposited / E_primary and the number of hits (> 0.2 MeV) for several primary-energy bins."""
    import matplotlib.pyplot as plt

    ref = samples["reference"]
    bin_ids = [i for i in range(len(energy_bins) - 1)
               if np.sum((ref.primary_energy >= energy_bins[i]) & (ref.primary_energy < energy_bins[i + 1])) >= 10]
    chosen = [bin_ids[int(round(k))] for k in np.linspace(0, len(bin_ids) - 1, min(n_panels, len(bin_ids)))]
    chosen = sorted(set(chosen))
    fig, axes = plt.subplots(2, len(chosen), figsize=(5 * len(chosen), 8), squeeze=False)
    for col, i in enumerate(chosen):
        lo, hi = energy_bins[i], energy_bins[i + 1]
        masks = {k: (s.primary_energy >= lo) & (s.primary_energy < hi) for k, s in samples.items()}
        for row, (key, xlabel) in enumerate((("energy_ratio", r"$E_{dep}/E_{primary}$"), ("hits", "hits > 0.2 MeV"))):
            values = np.concatenate([s.obs[key][masks[k]] for k, s in samples.items()])
            edges = np.histogram_bin_edges(values, bins=40, range=tuple(np.quantile(values, [0.002, 0.998])))
            for label, s in samples.items():
                axes[row, col].hist(s.obs[key][masks[label]], bins=edges, density=True, histtype="step",
                                    color=COLOURS[label], label=label)
            axes[row, col].set_xlabel(xlabel)
            axes[row, col].set_title(f"{lo:g}-{hi:g} GeV", fontsize=14)
    axes[0, 0].legend(fontsize=12)
    return fig


def plot_sampling_fraction(samples: dict[str, M.Sample], result: dict):
    """Sampling fraction vs primary energy (profile in 25 bins) and mu90, sigma90/mu90 per metric bin."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(18, 5))
    ref = samples["reference"]
    edges = np.linspace(ref.primary_energy.min(), ref.primary_energy.max() * 1.0001, 26)
    for label, s in samples.items():
        idx = np.digitize(s.primary_energy, edges) - 1
        ok = [i for i in range(25) if np.sum(idx == i) > 1]
        mean = [s.obs["energy_ratio"][idx == i].mean() for i in ok]
        err = [s.obs["energy_ratio"][idx == i].std() / math.sqrt(np.sum(idx == i)) for i in ok]
        axes[0].errorbar(0.5 * (edges[ok] + edges[np.array(ok) + 1]), mean, yerr=err, fmt="o", ms=3,
                         color=COLOURS[label], label=label)
    axes[0].set_xlabel("primary energy [GeV]")
    axes[0].set_ylabel(r"$E_{dep}/E_{primary}$")
    axes[0].legend(fontsize=12)
    labels = result["details"]["candidate"]["bins"]
    x = np.arange(len(labels))
    series = {"reference": result["details"]["candidate"]["mu90_sigma90_reference"],
              "candidate": result["details"]["candidate"]["mu90_sigma90"]}
    if result["details"]["floor"]["bins"] == labels:
        series["reference 2"] = result["details"]["floor"]["mu90_sigma90"]
    for label, vals in series.items():
        v = np.asarray(vals)
        axes[1].plot(x, v[:, 0], "o-", color=COLOURS[label], label=label)
        axes[2].plot(x, v[:, 1] / v[:, 0], "o-", color=COLOURS[label], label=label)
    for ax, title in ((axes[1], r"$\mu_{90}$ of $E_{dep}/E_{primary}$"), (axes[2], r"$\sigma_{90}/\mu_{90}$")):
        ax.set_xticks(x)
        ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=10)
        ax.set_title(title, fontsize=14)
    return fig


def plot_cell_spectrum(samples: dict[str, M.Sample]):
    """Spectrum of cell energies (GeV, all cells with a deposit) with the thresholds marked."""
    import matplotlib.pyplot as plt

    ref = samples["reference"]
    lo = max(ref.threshold_gev, 1e-9)
    hi = max(float(s.showers.max()) for s in samples.values())
    edges = np.geomspace(lo, hi * 1.01, 60)
    fig, ax = plt.subplots(figsize=(8, 6))
    for label, s in samples.items():
        counts = M.cell_energy_histogram(s.showers, edges)
        ax.stairs(counts / len(s), edges, color=COLOURS[label], label=label)
    ax.axvline(HIT_THRESHOLD_GEV, color="grey", ls="--", label="hit threshold 0.2 MeV")
    ax.axvline(lo, color="grey", ls=":", label=f"readout threshold {lo:g} GeV")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("cell energy [GeV]")
    ax.set_ylabel("cells per event")
    ax.legend(fontsize=11)
    return fig


def plot_moments(samples: dict[str, M.Sample], geometry: Geometry):
    """Distributions of the first and second moments of the x, y, z profiles (cell indices)."""
    import matplotlib.pyplot as plt

    names = _axis_names(geometry)
    fig, axes = plt.subplots(2, 3, figsize=(18, 9))
    for row, m in enumerate((1, 2)):
        for col, a in enumerate("xyz"):
            key = f"m{m}_{a}"
            lo, hi = np.quantile(np.concatenate([s.obs[key] for s in samples.values()]), [0.001, 0.999])
            edges = np.linspace(lo, hi if hi > lo else lo + 1, 50)
            for label, s in samples.items():
                axes[row, col].hist(s.obs[key], bins=edges, density=True, histtype="step", color=COLOURS[label],
                                    label=label)
            axes[row, col].set_xlabel(f"{'first' if m == 1 else 'second'} moment, {names[a]}")
    axes[0, 0].legend(fontsize=12)
    return fig


def plot_projections(samples: dict[str, M.Sample], geometry: Geometry):
    """2D projections of the average shower (GeV, log colour scale): x-y summed over depth, y-z summed over x."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    names = _axis_names(geometry)
    shown = {k: v for k, v in samples.items() if k != "reference 2"}
    fig, axes = plt.subplots(2, len(shown), figsize=(7 * len(shown), 12), squeeze=False)
    means = {k: s.showers.mean(axis=0, dtype=np.float64) for k, s in shown.items()}
    for row, (axis, xl, yl) in enumerate(((2, names["y"], names["x"]), (0, names["z"], names["y"]))):
        imgs = {k: m.sum(axis=axis) for k, m in means.items()}
        vmax = max(i.max() for i in imgs.values())
        vmin = max(vmax * 1e-6, min(i[i > 0].min() for i in imgs.values() if np.any(i > 0)))
        for col, (label, img) in enumerate(imgs.items()):
            im = axes[row, col].imshow(np.where(img > 0, img, np.nan), origin="lower", aspect="auto",
                                       norm=LogNorm(vmin=vmin, vmax=vmax), cmap="viridis")
            axes[row, col].set_title(label)
            axes[row, col].set_xlabel(xl)
            axes[row, col].set_ylabel(yl)
            fig.colorbar(im, ax=axes[row, col], label="GeV")
    return fig


def plot_ssim(result: dict):
    """Mean SSIM (+- std over pairs) vs the data range L, candidate and floor."""
    import matplotlib.pyplot as plt

    rows = {k: v for k, v in result["metrics"].items() if k.startswith("ssim_L")}
    if not rows:
        return None
    ls = [float(k[len("ssim_L"):]) for k in rows]
    fig, ax = plt.subplots(figsize=(8, 6))
    for which, colour, label in (("candidate", COLOURS["candidate"], "ref. vs candidate"),
                                 ("floor", COLOURS["reference 2"], "ref. vs ref. (floor)")):
        ax.errorbar(ls, [r[which] for r in rows.values()], yerr=[r[f"{which}_error"] for r in rows.values()],
                    fmt="o-", color=colour, label=label, capsize=3)
    ax.set_xscale("log")
    ax.set_xlabel("SSIM data range L [GeV]")
    ax.set_ylabel("SSIM")
    ax.legend(fontsize=12)
    return fig


def _html(result: dict, images: list[tuple[str, str]], labels: dict[str, str]) -> str:
    rows = []
    for name, r in result["metrics"].items():
        def cell(v, e):
            if v is None:
                return "n/a"
            return f"{v:.4g} &plusmn; {e:.2g}" if e is not None else f"{v:.4g}"
        ratio = "n/a" if r["ratio"] is None else f"{r['ratio']:.3g}"
        rows.append(f"<tr><td>{html.escape(name)}</td><td>{cell(r['candidate'], r.get('candidate_error'))}</td>"
                    f"<td>{cell(r['floor'], r.get('floor_error'))}</td><td>{ratio}</td></tr>")
    figs = "\n".join(f'<h2>{html.escape(title)}</h2>\n<img alt="{html.escape(title)}" src="data:image/png;base64,{b64}">'
                     for title, b64 in images)
    notes = html.escape(result["details"]["candidate"].get("ssim_skipped", ""))
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>fastshower validation</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}} td:first-child{{text-align:left}}
img{{max-width:100%}}</style></head><body>
<h1>fastshower validation report</h1>
<p>reference: {html.escape(labels['reference'])}<br>candidate: {html.escape(labels['candidate'])}<br>
floor: {html.escape(result['floor_source'])} {html.escape(labels.get('reference2', ''))}<br>
geometry {html.escape(result['geometry'])}; {result['n_reference']} reference, {result['n_candidate']} candidate,
{result['n_reference2']} second-reference events; cells below {result['threshold_gev']:g} GeV zeroed.
{notes}</p>
<p>Every metric is given for the candidate and for the floor (reference vs an independent reference sample,
what a perfect generator reaches); ratio = candidate / floor. Lower is better except for SSIM (a similarity).
Definitions: docs/metrics.md.</p>
<table><tr><th>metric</th><th>candidate</th><th>floor</th><th>ratio</th></tr>
{''.join(rows)}
</table>
{figs}
</body></html>
"""


def write_report(reference: ShowerSet, candidate: ShowerSet, out_dir: str | Path, reference2: ShowerSet | None = None,
                 *, quick: bool = False, classifier: bool = True, energy_bins=None, classifier_seeds=(0, 1, 2),
                 seed: int = 0, progress: bool = True, labels: dict[str, str] | None = None,
                 in_place: bool = False) -> dict:
    """Compute every metric (with its floor), draw the standard plots, write ``out_dir/report.html``
    and ``out_dir/metrics.json``; return the metrics dict (as :func:`metrics.compare`).

    ``labels`` names the inputs in the page (keys ``reference``, ``candidate``, ``reference2``).
    ``in_place`` applies the readout threshold to the given arrays instead of copies (less memory).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import mplhep
    from tqdm import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ref, cand, ref2, geometry, floor_source = M.prepare_samples(reference, candidate, reference2, seed=seed,
                                                                in_place=in_place)
    result = M.compare_samples(ref, cand, ref2, geometry, floor_source, energy_bins=energy_bins, quick=quick,
                               classifier=classifier, classifier_seeds=classifier_seeds, seed=seed, progress=progress)
    samples = {"reference": ref, "candidate": cand, "reference 2": ref2}
    edges = np.asarray(result["energy_bins_gev"])
    plots = [
        ("Shower shapes, linear", lambda: plot_profiles(samples, geometry, log=False)),
        ("Shower shapes, log", lambda: plot_profiles(samples, geometry, log=True)),
        ("Deposited energy and hits per primary energy", lambda: plot_energy_and_hits(samples, edges)),
        ("Sampling fraction, mu90 and sigma90 vs primary energy", lambda: plot_sampling_fraction(samples, result)),
        ("Cell-energy spectrum", lambda: plot_cell_spectrum(samples)),
        ("Moments of the profiles", lambda: plot_moments(samples, geometry)),
        ("2D projections of the average shower", lambda: plot_projections(samples, geometry)),
        ("SSIM vs data range L", lambda: plot_ssim(result)),
    ]
    images = []
    with plt.style.context(mplhep.style.CMS), np.errstate(divide="ignore", invalid="ignore"):
        for title, make in tqdm(plots, desc="plots", disable=not progress, leave=False):
            fig = make()
            if fig is not None:
                images.append((title, _png(fig)))
    names = {"reference": "reference", "candidate": "candidate", **(labels or {})}
    write_text_atomic(out_dir / "metrics.json", json.dumps(result, indent=1, default=float))
    write_text_atomic(out_dir / "report.html", _html(result, images, names))
    return result
