"""Text forms of the validation results: the verdict table (what `fastshower validate` and
`fastshower demo` print by default) and the full metric table (``--all``)."""

from __future__ import annotations

from fastshower.validate.comparison import Comparison
from fastshower.validate.verdict import (
    KEY_NUMBERS,
    PASS_RATIO,
    TOLERANCES,
    Verdict,
    VerdictCell,
)


def _num(v: float | None, e: float | None = None) -> str:
    if v is None:
        return "n/a"
    return f"{v:.4g} +- {e:.2g}" if e is not None else f"{v:.4g}"


def format_table(result: Comparison | list[Comparison]) -> str:
    """The full metric table as aligned text: per metric the floor, and per candidate its value and
    value / floor. One floor column when all candidates have the same size (the same floor)."""
    comps = [result] if isinstance(result, Comparison) else list(result)
    shared = len({c.n_candidate for c in comps}) == 1
    head = f"{'metric':30s}"
    if shared:
        head += f" {'floor':>20s}"
    for c in comps:
        head += (f" {c.label[:20]:>20s}" if shared else f" {c.label[:20]:>20s} {'floor':>20s}") + f" {'ratio':>7s}"
    lines = [head]
    for name in comps[0].metrics:
        line = f"{name:30s}"
        if shared:
            r = comps[0].metrics[name]
            line += f" {_num(r.floor, r.floor_error):>20s}"
        for c in comps:
            r = c.metrics.get(name)
            if r is None:
                line += f" {'n/a':>20s}" + ("" if shared else f" {'n/a':>20s}") + f" {'n/a':>7s}"
                continue
            line += f" {_num(r.candidate, r.candidate_error):>20s}"
            if not shared:
                line += f" {_num(r.floor, r.floor_error):>20s}"
            line += f" {'n/a' if r.ratio is None else format(r.ratio, '.3g'):>7s}"
        lines.append(line)
    c0 = comps[0]
    sizes = ", ".join(f"{c.label} {c.n_candidate}" for c in comps)
    lines.append(f"floor: {c0.floor_source}; geometry {c0.geometry}; {c0.n_reference} reference events; "
                 f"candidates: {sizes}")
    for c in comps:
        lines += [f"warning: {w}" for w in c.warnings]
    return "\n".join(lines)


def _cell_text(key: str, cell: VerdictCell) -> str:
    """'value  difference  D/F x  mark' in the key number's units."""
    if cell.mark == "n/a" and cell.deviation is None:
        return "n/a"
    ratio = "" if cell.ratio is None else f" {cell.ratio:.1f}x"
    if key in ("response", "resolution"):
        v = f"{cell.value:.4g}" if key == "response" else f"{100 * cell.value:.2f}%"
        return f"{v} {100 * cell.difference:+.1f}%{ratio} {cell.mark}"
    if key == "depth":
        return f"{cell.value:.1f} {cell.difference:+.1f}{ratio} {cell.mark}"
    if key == "auc":
        return f"{cell.value:.3f}{ratio} {cell.mark}"
    return f"{100 * cell.deviation:.1f}% off{ratio} {cell.mark}"


def _time_text(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    return f"{seconds:.3g} s" if seconds >= 1 else f"{1e3 * seconds:.3g} ms"


def verdict_rows(verdict: Verdict) -> tuple[list[str], list[list[str]]]:
    """Header and rows (strings) of the verdict table: one row per key number and the time row."""
    header = ["", f"{verdict.reference_label} ({verdict.n_reference})"] + \
        [f"{c.label} ({c.n_events})" for c in verdict.candidates]
    rows = []
    ref = verdict.reference_values
    for key, label in KEY_NUMBERS.items():
        if key == "response":
            r = f"{ref['response']:.4g}"
        elif key == "resolution":
            r = f"{100 * ref['resolution']:.2f}%"
        elif key == "depth":
            r = f"{ref['depth']:.1f}"
        else:
            r = "-"
        rows.append([label, r] + [_cell_text(key, c.cells[key]) for c in verdict.candidates])
    time_row = ["time per shower (speed-up)", _time_text(verdict.reference_seconds_per_shower)]
    for c in verdict.candidates:
        t = _time_text(c.seconds_per_shower)
        speed = None if c.speed_up is None else (f"{c.speed_up:.0f}" if c.speed_up >= 100 else f"{c.speed_up:.3g}")
        time_row.append(t if speed is None else f"{t} (x{speed})")
    rows.append(time_row)
    return header, rows


def format_verdict(verdict: Verdict) -> str:
    """The verdict table as aligned text, with a legend of the marks."""
    header, rows = verdict_rows(verdict)
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    lines = [fmt(header), "  ".join("-" * w for w in widths)] + [fmt(r) for r in rows]
    lines.append(f"each cell: value, difference to the reference, deviation / floor (x), mark. floor = the deviation "
                 f"of a statistically identical sample of the same size. pass: <= {PASS_RATIO:g}x floor; close: "
                 f"beyond, but within {100 * TOLERANCES['response']:g}% response, "
                 f"{100 * TOLERANCES['resolution']:g}% of the resolution, {100 * TOLERANCES['longitudinal']:g}% of the "
                 f"energy off in profile, {verdict.depth_tolerance_mm:.2g} mm depth "
                 f"({TOLERANCES['depth_x0']:g} X0), AUC {0.5 + TOLERANCES['auc']:g}; fail: beyond that.")
    if verdict.timing_note:
        lines.append(f"time: {verdict.timing_note}")
    lines += [f"note: {n}" for n in verdict.notes]
    return "\n".join(lines)
