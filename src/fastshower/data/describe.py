"""What a shower file holds (``fastshower inspect``): layout, geometry, condition ranges, deposits,
provenance, computed in one streaming pass (constant memory)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fastshower.data.calochallenge import check_binning, read_binning_xml
from fastshower.data.io import PathSpec, count_events, detect_layout, iter_showers, resolve_paths
from fastshower.errors import UserInputError
from fastshower.geometry import Geometry

#: Attribute values longer than this are cut in :func:`format_file_summary`.
MAX_ATTR_CHARS = 300


@dataclass
class FileSummary:
    """``files``; ``layout`` name; ``geometry``; ``n_events``; primary energy range (GeV) and incident
    angle range (rad); total deposited (active) energy (GeV); ``mean_ratio`` = mean deposited /
    primary energy; ``attrs`` (provenance of the last file); ``binning`` the binning XML checked, if any."""

    files: list[Path]
    layout: str
    geometry: Geometry
    n_events: int
    energy_range_gev: tuple[float, float]
    angle_range_rad: tuple[float, float]
    deposited_gev: float
    mean_ratio: float
    attrs: dict[str, Any] = field(default_factory=dict)
    binning: Path | None = None


def summarize_file(path: PathSpec, geometry: Geometry | None = None, chunk_size: int = 1000,
                   binning: str | Path | None = None, progress: bool = False) -> FileSummary:
    """Read ``path`` (file, glob or list) chunk by chunk and summarise it; with ``binning``, check a
    CaloChallenge binning XML against the file's geometry (ValueError when it does not match)."""
    from tqdm import tqdm

    files = resolve_paths(path)
    layout = detect_layout(files)
    n = count_events(files)
    e_min = a_min = math.inf
    e_max = a_max = -math.inf
    deposited = ratio = 0.0
    last = None
    with tqdm(total=n, desc="inspect", unit="shower", leave=False, disable=not progress) as bar:
        for part in iter_showers(files, chunk_size=chunk_size, geometry=geometry):
            last = part
            e_min, e_max = min(e_min, part.primary_energy.min()), max(e_max, part.primary_energy.max())
            a_min, a_max = min(a_min, part.incident_angle.min()), max(a_max, part.incident_angle.max())
            dep = part.deposited_energy
            deposited += dep.sum()
            ratio += np.sum(dep / part.primary_energy)
            bar.update(len(part))
    if last is None:
        raise UserInputError(f"{path}: the file holds no events")
    if binning is not None:
        check_binning(read_binning_xml(binning), last.geometry)
    return FileSummary(files, layout, last.geometry, n, (float(e_min), float(e_max)), (float(a_min), float(a_max)),
                       float(deposited), float(ratio / n), dict(last.attrs),
                       Path(binning) if binning is not None else None)


def format_file_summary(s: FileSummary, provenance: list[str] | None = None) -> str:
    """The summary as ``inspect`` prints it; ``provenance``: lines describing the producing run (the
    orchestration layer formats them), printed before the raw attributes."""
    files = f"{len(s.files)} ({s.files[0]}{' ...' if len(s.files) > 1 else ''})"
    lines = [f"files:            {files}",
             f"layout:           {s.layout}",
             f"geometry:         {s.geometry.name}",
             f"events:           {s.n_events}",
             f"primary energy:   {s.energy_range_gev[0]:.4g} - {s.energy_range_gev[1]:.4g} GeV",
             f"incident angle:   {math.degrees(s.angle_range_rad[0]):.4g} - "
             f"{math.degrees(s.angle_range_rad[1]):.4g} deg",
             f"deposited energy: total {s.deposited_gev:.6g} GeV, mean {s.deposited_gev / s.n_events:.6g} GeV "
             f"per shower",
             f"sampling fraction (mean deposited / primary): {s.mean_ratio:.5g}",
             *(provenance or [])]
    for key, value in sorted(s.attrs.items()):
        text = str(value)
        cut = text if len(text) <= MAX_ATTR_CHARS else text[:MAX_ATTR_CHARS] + f" ... ({len(text)} characters)"
        lines.append(f"attr {key}: {cut}")
    if s.binning is not None:
        lines.append(f"binning {s.binning}: matches geometry {s.geometry.name}")
    return "\n".join(lines)
