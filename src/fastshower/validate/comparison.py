"""The validation driver: every metric of one or more candidates against a reference, each beside its
floor computed at the candidate's sample size, as typed results.

The *floor* of a metric is its value for a statistically identical sample of the same size: the
reference against disjoint subsamples, each of the candidate's size, of an independent reference
sample (``reference2``; without one, the reference is split into two random halves A and B, the
candidates are compared with A and the subsamples come from B). The floor is the mean over the
subsamples (at most ``max_floor_subsamples``), its error their standard deviation (the scatter of
one draw, what the candidate's single value is to be compared with). A candidate larger than the
second sample is cut to its size (seeded random subset).

Showers are thresholded (cells below the geometry's readout threshold set to 0, all samples) before
any metric, as the CaloChallenge evaluation does. Definitions: docs/metrics.md.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field

import numpy as np

from fastshower.data import geometry_of
from fastshower.geometry import Geometry
from fastshower.showers import ShowerSet
from fastshower.validate import metrics as M
from fastshower.validate import observables as ob
from fastshower.validate.binning import (
    condition_bins,
    default_angle_bins,
    default_energy_bins,
    overlap_warnings,
)

#: Fewest events a candidate (and each reference sample) needs: below it the floor and most binned
#: metrics are noise, and the histograms hold a handful of entries.
MIN_EVENTS = 20
#: Fewest events per class the classifier test needs (60/20/20 split); below it the test is skipped.
CLASSIFIER_MIN_EVENTS = 50
#: Most disjoint reference subsamples the floor averages over.
MAX_FLOOR_SUBSAMPLES = 5
#: Metrics where the candidate should come close to the floor from below (similarities).
HIGHER_IS_BETTER = ("ssim",)


@dataclass
class Sample:
    """A thresholded shower set with its per-event observables (see :mod:`observables`)."""

    showers: np.ndarray
    primary_energy: np.ndarray
    incident_angle: np.ndarray
    obs: dict
    threshold_gev: float

    @classmethod
    def from_set(cls, shower_set: ShowerSet, geometry: Geometry, threshold_gev: float,
                 in_place: bool = False) -> Sample:
        showers = ob.apply_threshold(shower_set.showers, threshold_gev, in_place=in_place)
        return cls(showers, shower_set.primary_energy, shower_set.incident_angle,
                   ob.observables_in_chunks(showers, shower_set.primary_energy, geometry), threshold_gev)

    def take(self, index: np.ndarray) -> Sample:
        """The events ``index`` (integer indices or a boolean mask), observables included."""
        return Sample(self.showers[index], self.primary_energy[index], self.incident_angle[index],
                      {k: v[index] for k, v in self.obs.items()}, self.threshold_gev)

    def __len__(self) -> int:
        return len(self.showers)


@dataclass
class MetricRow:
    """One metric: the candidate's value and the floor (same metric, statistically identical sample
    of the candidate's size), with errors where the metric has one. Units: docs/metrics.md."""

    candidate: float
    floor: float | None
    candidate_error: float | None = None
    floor_error: float | None = None
    higher_is_better: bool = False

    @property
    def ratio(self) -> float | None:
        """candidate / floor; None where the floor is not a positive number."""
        f = self.floor
        return self.candidate / f if f is not None and np.isfinite(f) and f > 0 else None


@dataclass
class PairDetails:
    """Per-bin values behind the plots, for one pair (reference vs candidate or floor sample)."""

    bins: list[str]
    sampling_fraction: list[float]
    sampling_fraction_reference: list[float]
    mu90_sigma90: list[list[float]]
    mu90_sigma90_reference: list[list[float]]
    separation_power: dict[str, list[float]] = field(default_factory=dict)
    classifier: dict[str, dict] = field(default_factory=dict)
    ssim_skipped: str = ""


@dataclass
class Comparison:
    """Every metric of one candidate against the reference, beside its floor."""

    label: str
    geometry: str
    n_reference: int
    n_candidate: int
    n_reference2: int
    n_floor_subsamples: int
    floor_source: str
    threshold_gev: float
    energy_bins_gev: list[float]
    angle_bins_rad: list[float] | None
    metrics: dict[str, MetricRow]
    candidate_details: PairDetails
    floor_details: PairDetails
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """JSON-serialisable form (metrics.json): the fields, each metric row with its ratio."""
        out = asdict(self)
        for name, row in self.metrics.items():
            out["metrics"][name]["ratio"] = row.ratio
        return out


@dataclass
class Prepared:
    """Thresholded samples ready for the metrics: the reference (A), the floor's pool (reference2
    or half B) and the candidates (each cut to the pool's size when larger)."""

    reference: Sample
    pool: Sample
    candidates: dict[str, Sample]
    geometry: Geometry
    floor_source: str
    warnings: list[str]
    subsampled: dict[str, int] = field(default_factory=dict)  # label -> events before the cut


def check_sizes(reference: int, candidates: dict[str, int], reference2: int | None = None) -> None:
    """Refuse (UserInputError, one line) samples below :data:`MIN_EVENTS`: each candidate, and each
    reference sample (the reference counts twice without ``reference2``: it is split in halves)."""
    from fastshower.errors import UserInputError

    need = {f"candidate {k}" if k != "candidate" else "candidate": (n, MIN_EVENTS) for k, n in candidates.items()}
    need["reference"] = (reference, MIN_EVENTS * (1 if reference2 is not None else 2))
    if reference2 is not None:
        need["reference2"] = (reference2, MIN_EVENTS)
    small = [f"{what} has {n} events, needs {m}" for what, (n, m) in need.items() if n < m]
    if small:
        raise UserInputError(f"too few events to validate ({', '.join(small)}): the metrics and their floor need at "
                             f"least {MIN_EVENTS} events per candidate and per reference sample (without reference2 "
                             f"the reference is split in two halves)")


def prepare(reference: ShowerSet, candidates: dict[str, ShowerSet], reference2: ShowerSet | None = None, *,
            threshold_gev: float | None = None, seed: int = 0, in_place: bool = False) -> Prepared:
    """Check the sets and sizes, make the floor's pool, threshold everything.

    Refuses (UserInputError, a ValueError, one line) a candidate or reference sample below :data:`MIN_EVENTS` events
    and a geometry that differs from the reference's; records a warning (also issued with
    :func:`warnings.warn`) when a candidate's conditions lie outside the reference's.
    """
    geometry = geometry_of(reference)
    geometry.check_shape(reference.showers)
    if not candidates:
        raise ValueError("no candidate to validate")
    others = dict(candidates)
    if reference2 is not None:
        others["reference2"] = reference2
    for what, other in others.items():
        if other.geometry != reference.geometry:
            raise ValueError(f"{what} geometry {other.geometry!r} differs from the reference's {reference.geometry!r}")
        geometry.check_shape(other.showers)
    check_sizes(len(reference), {k: len(v) for k, v in candidates.items()},
                None if reference2 is None else len(reference2))
    if reference2 is None:
        perm = np.random.default_rng(seed).permutation(len(reference))
        half = len(reference) // 2
        reference, reference2 = reference[np.sort(perm[:half])], reference[np.sort(perm[half:])]
        floor_source = f"reference split into two random halves ({len(reference)} + {len(reference2)} events)"
    else:
        floor_source = f"independent reference sample (reference2, {len(reference2)} events)"
    notes = []
    for what, c in candidates.items():
        notes += overlap_warnings(reference.primary_energy, reference.incident_angle, c.primary_energy,
                                  c.incident_angle, what=what)
    for w in notes:
        warnings.warn(w, stacklevel=2)
    cut, before = {}, {}
    for i, (what, c) in enumerate(candidates.items()):
        if len(c) > len(reference2):  # the floor's subsample cannot be larger than its pool
            before[what] = len(c)
            keep = np.random.default_rng([seed, 1, i]).permutation(len(c))[:len(reference2)]
            c = c[np.sort(keep)]
        cut[what] = c
    thr = geometry.readout_threshold_gev if threshold_gev is None else threshold_gev
    make = lambda s: Sample.from_set(s, geometry, thr, in_place)
    return Prepared(make(reference), make(reference2), {k: make(v) for k, v in cut.items()}, geometry,
                    floor_source, notes, before)


def prepare_samples(reference: ShowerSet, candidate: ShowerSet, reference2: ShowerSet | None = None, *,
                    threshold_gev: float | None = None, seed: int = 0, in_place: bool = False
                    ) -> tuple[Sample, Sample, Sample, Geometry, str]:
    """:func:`prepare` for one candidate: (reference, candidate, pool, geometry, floor_source)."""
    p = prepare(reference, {"candidate": candidate}, reference2, threshold_gev=threshold_gev, seed=seed,
                in_place=in_place)
    return p.reference, p.candidates["candidate"], p.pool, p.geometry, p.floor_source


def pair_metrics(ref: Sample, other: Sample, geometry: Geometry, energy_bins: np.ndarray,
                 angle_bins: np.ndarray | None, *, quick: bool, classifier: bool, classifier_seeds=(0, 1, 2),
                 seed: int = 0, progress: bool = False, label: str = "candidate", ssim: bool = True,
                 ssim_pairs: int | None = None) -> tuple[dict[str, tuple[float, float | None]], PairDetails]:
    """All metrics of ``other`` against ``ref``: ({name: (value, error or None)}, details for plots).
    ``ssim=False`` leaves out the SSIM scan (the slowest metric); ``ssim_pairs``: shower pairs per
    bin (default 10 with ``quick``, else 50)."""
    from tqdm import tqdm

    from fastshower.validate.classifier import (
        classifier_test,
        high_level_inputs,
        low_level_inputs,
    )

    m: dict[str, tuple[float, float | None]] = {}
    bins = condition_bins(ref.primary_energy, ref.incident_angle, other.primary_energy, other.incident_angle,
                          energy_bins, angle_bins)
    classifier = classifier and min(len(ref), len(other)) >= CLASSIFIER_MIN_EVENTS
    steps = ["binned", "ssim", "chi2", "fpd/kpd"] + (["classifier low", "classifier high"] if classifier else [])
    bar = tqdm(total=len(steps), desc=f"metrics {label}", disable=not progress, leave=False)
    ratio_r, ratio_o = ref.obs["energy_ratio"], other.obs["energy_ratio"]
    details = PairDetails(
        bins=[b.label for b in bins],
        sampling_fraction=M.sampling_fraction_per_bin(ratio_o, bins, "candidate").tolist(),
        sampling_fraction_reference=M.sampling_fraction_per_bin(ratio_r, bins, "reference").tolist(),
        mu90_sigma90=M.mu90_sigma90_per_bin(ratio_o, bins, "candidate").tolist(),
        mu90_sigma90_reference=M.mu90_sigma90_per_bin(ratio_r, bins, "reference").tolist())
    m["sampling_fraction_mre"] = (M.sampling_fraction_mre(ratio_r, ratio_o, bins), None)
    prof = lambda o: {a: o.obs[f"profile_{a}"] for a in "xyz"}
    m["profile_mse"] = (M.binned_profile_mse(prof(ref), prof(other), bins), None)
    for k, v in M.gan_optimisation_metric(ref.obs, other.obs, bins).items():
        m[f"gan_metric_{k}"] = (v, None)
    for k, v in M.mu90_relative_errors(ratio_r, ratio_o, bins).items():
        m[f"{k}_rel_error"] = (v, None)
    bar.update()

    rng = np.random.default_rng(seed)
    try:
        if ssim:
            scan = M.ssim_vs_data_range(ref.showers, other.showers, bins, rng, max_pairs_per_bin=ssim_pairs or (10 if quick else 50))
            for L, (mean, std) in scan.items():
                m[f"ssim_L{L:g}"] = (mean, std)
    except ValueError as exc:
        details.ssim_skipped = str(exc)
    bar.update()

    min_e = max(ref.threshold_gev, 1e-9)
    edges = M.histogram_bins(geometry, ref.obs, min_e, float(ref.showers.max()))
    cells = None
    if "cell_energy" in edges:
        cells = (M.cell_energy_histogram(ref.showers, edges["cell_energy"]),
                 M.cell_energy_histogram(other.showers, edges["cell_energy"]))
    seps = M.separation_powers(geometry, ref.obs, other.obs, (geometry.sampling_fraction, ref.primary_energy,
                                                              other.primary_energy), min_e, cells, edges)
    all_seps = np.concatenate([v[np.isfinite(v)] for v in seps.values()])
    m["chi2_separation_mean"] = (float(all_seps.mean()), None)
    m["chi2_separation_worst"] = (float(all_seps.max()), None)
    for k, v in seps.items():
        m[f"chi2_{k}"] = (float(np.nanmean(v)), None)
    details.separation_power = {k: v.tolist() for k, v in seps.items()}
    bar.update()

    sf = geometry.sampling_fraction
    hl_r = high_level_inputs(ref.obs, ref.primary_energy, sf)
    hl_o = high_level_inputs(other.obs, other.primary_energy, sf)
    n = min(len(hl_r), len(hl_o))
    fpd = M.frechet_physics_distance(hl_r, hl_o, min_samples=min(10_000, n), max_samples=min(50_000, 5 * n),
                                     num_batches=5 if quick else 10, num_points=5 if quick else 10)
    m["fpd"] = fpd
    m["kpd"] = M.kernel_physics_distance(hl_r, hl_o, num_batches=5 if quick else 10,
                                         batch_size=min(2_000 if quick else 5_000, n))
    bar.update()

    if classifier:
        low = classifier_test(low_level_inputs(ref.showers, ref.primary_energy, sf),
                              low_level_inputs(other.showers, other.primary_energy, sf), seeds=classifier_seeds,
                              hidden=(128, 128), progress=progress, label=f"cls-low {label}")
        bar.update()
        high = classifier_test(hl_r, hl_o, seeds=classifier_seeds, hidden=(256, 256), progress=progress,
                               label=f"cls-high {label}")
        bar.update()
        for name, res in (("low", low), ("high", high)):
            m[f"classifier_auc_{name}"] = (res["auc_mean"], res["auc_std"])
            m[f"classifier_jsd_{name}"] = (res["jsd_mean"], res["jsd_std"])
            details.classifier[name] = res
    bar.close()
    return m, details


def floor_subsamples(n_pool: int, n: int, seed: int = 0, max_subsamples: int = MAX_FLOOR_SUBSAMPLES
                     ) -> list[np.ndarray]:
    """Disjoint random subsamples of size ``n`` of a pool of ``n_pool`` events (at least one, at most
    ``max_subsamples``), as sorted index arrays. Needs ``n <= n_pool``."""
    if not 0 < n <= n_pool:
        raise ValueError(f"a floor subsample of {n} events needs 0 < n <= {n_pool} (the pool)")
    perm = np.random.default_rng([seed, 2]).permutation(n_pool)
    k = max(1, min(max_subsamples, n_pool // n))
    return [np.sort(perm[i * n:(i + 1) * n]) for i in range(k)]


def floor_metrics(ref: Sample, pool: Sample, n: int, geometry: Geometry, energy_bins: np.ndarray,
                  angle_bins: np.ndarray | None, *, seed: int = 0, max_subsamples: int = MAX_FLOOR_SUBSAMPLES,
                  **kw) -> tuple[dict[str, tuple[float, float | None]], PairDetails, int]:
    """The floor at sample size ``n``: every metric of the reference against disjoint ``n``-event
    subsamples of ``pool``; per metric (mean, standard deviation over the subsamples, or the
    metric's own error for a single subsample), the first subsample's details and the count.
    SSIM, a mean over shower pairs whose expectation does not depend on the sample size, is
    computed on the first subsample only."""
    values: dict[str, list[tuple[float, float | None]]] = {}
    first = None
    subs = floor_subsamples(len(pool), n, seed, max_subsamples)
    for i, idx in enumerate(subs):
        m, d = pair_metrics(ref, pool.take(idx), geometry, energy_bins, angle_bins, seed=seed,
                            label=f"floor {i + 1}/{len(subs)}", ssim=i == 0, **kw)
        first = first or d
        for name, v in m.items():
            values.setdefault(name, []).append(v)
    out = {}
    for name, vs in values.items():
        vals = np.array([v for v, _ in vs])
        err = float(vals.std(ddof=1)) if len(vals) > 1 else vs[0][1]
        out[name] = (float(vals.mean()), err)
    return out, first, len(subs)


def compare_prepared(prepared: Prepared, *, energy_bins=None, quick: bool = False, classifier: bool = True,
                     classifier_seeds=(0, 1, 2), seed: int = 0, progress: bool = False,
                     max_floor_subsamples: int = MAX_FLOOR_SUBSAMPLES, ssim_pairs: int | None = None
                     ) -> list[Comparison]:
    """One :class:`Comparison` per prepared candidate; floors are shared between candidates of the
    same size."""
    p = prepared
    ref, geometry = p.reference, p.geometry
    edges = np.asarray(energy_bins, float) if energy_bins is not None else \
        default_energy_bins(geometry, ref.primary_energy)
    angle_edges = default_angle_bins(geometry, ref.incident_angle)
    kw = dict(quick=quick, classifier=classifier and not quick, classifier_seeds=classifier_seeds,
              progress=progress, ssim_pairs=ssim_pairs)
    floors: dict[int, tuple] = {}
    out = []
    for label, cand in p.candidates.items():
        notes = [w for w in p.warnings if w.startswith(f"{label} ")]
        if kw["classifier"] and len(cand) < CLASSIFIER_MIN_EVENTS:
            notes.append(f"classifier test skipped: {len(cand)} events, it needs {CLASSIFIER_MIN_EVENTS}")
        cand_m, cand_d = pair_metrics(ref, cand, geometry, edges, angle_edges, seed=seed, label=label, **kw)
        if len(cand) not in floors:
            floors[len(cand)] = floor_metrics(ref, p.pool, len(cand), geometry, edges, angle_edges, seed=seed,
                                              max_subsamples=max_floor_subsamples, **kw)
        floor_m, floor_d, k = floors[len(cand)]
        table = {}
        for name, (value, error) in cand_m.items():
            f = floor_m.get(name)
            table[name] = MetricRow(candidate=float(value), floor=None if f is None else f[0],
                                    candidate_error=error, floor_error=None if f is None else f[1],
                                    higher_is_better=name.startswith(HIGHER_IS_BETTER))
        source = p.floor_source + (f"; floor at the candidate's size: mean of {k} disjoint {len(cand)}-event "
                                   f"subsample{'s' if k > 1 else ''} of it")
        if label in p.subsampled:
            source += f"; candidate subsampled from {p.subsampled[label]} to {len(cand)} events like the floor's pool"
        out.append(Comparison(label=label, geometry=geometry.name, n_reference=len(ref), n_candidate=len(cand),
                              n_reference2=len(p.pool), n_floor_subsamples=k, floor_source=source,
                              threshold_gev=float(ref.threshold_gev), energy_bins_gev=edges.tolist(),
                              angle_bins_rad=None if angle_edges is None else angle_edges.tolist(), metrics=table,
                              candidate_details=cand_d, floor_details=floor_d, warnings=notes))
    return out


def compare_samples(ref: Sample, cand: Sample, ref2: Sample, geometry: Geometry, floor_source: str, *,
                    energy_bins=None, quick: bool = False, classifier: bool = True, classifier_seeds=(0, 1, 2),
                    seed: int = 0, progress: bool = False, label: str = "candidate") -> Comparison:
    """:func:`compare` on prepared samples (see :func:`prepare_samples`)."""
    p = Prepared(ref, ref2, {label: cand}, geometry, floor_source, [])
    return compare_prepared(p, energy_bins=energy_bins, quick=quick, classifier=classifier,
                            classifier_seeds=classifier_seeds, seed=seed, progress=progress)[0]


def compare(reference: ShowerSet, candidate: ShowerSet, reference2: ShowerSet | None = None, *,
            energy_bins=None, quick: bool = False, classifier: bool = True, classifier_seeds=(0, 1, 2),
            threshold_gev: float | None = None, seed: int = 0, progress: bool = False) -> Comparison:
    """Every metric of ``candidate`` against ``reference``, each beside its floor at the candidate's
    size (see the module docstring). ``quick`` uses fewer SSIM pairs and FPD/KPD draws and skips
    the classifiers; ``classifier=False`` skips them too. Cells below ``threshold_gev`` (default:
    the geometry's readout threshold) are zeroed in all samples first."""
    p = prepare(reference, {"candidate": candidate}, reference2, threshold_gev=threshold_gev, seed=seed)
    return compare_prepared(p, energy_bins=energy_bins, quick=quick, classifier=classifier,
                            classifier_seeds=classifier_seeds, seed=seed, progress=progress)[0]


def compare_many(reference: ShowerSet, candidates: dict[str, ShowerSet], reference2: ShowerSet | None = None,
                 **kwargs) -> list[Comparison]:
    """:func:`compare` for several candidates (label -> set) against one reference and floor pool."""
    prep_kw = {k: kwargs.pop(k) for k in ("threshold_gev", "in_place") if k in kwargs}
    p = prepare(reference, candidates, reference2, seed=kwargs.get("seed", 0), **prep_kw)
    return compare_prepared(p, **kwargs)
