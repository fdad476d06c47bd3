"""Speed of the GFlash reference simulator (showers/s) on the cartesian presets.

For each geometry (clic25 at normal incidence, clic51 at 60-120 deg) and primary energy (10, 100,
500 GeV): one warm-up call, then ``--repeats`` timed calls of ``simulate_showers`` on ``--batch``
showers; the best (least disturbed) repeat is reported, with the median beside it. Writes JSON
(machine info, showers/s) and prints a table.

    .venv/bin/python bench/simulate.py
    .venv/bin/python bench/simulate.py --batch 1000 --repeats 3 --out bench/results/simulate.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from fastshower.fileio import write_text_atomic
from fastshower.geometry import load_geometry
from fastshower.simulate.gflash import simulate_showers

CASES = (("clic25", 90.0, 90.0), ("clic51", 60.0, 120.0))
ENERGIES_GEV = (10.0, 100.0, 500.0)


def _cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def bench_case(geometry: str, energy_gev: float, angle_deg: tuple[float, float], batch: int,
               repeats: int, seed: int) -> dict:
    g = load_geometry(geometry)
    rng = np.random.default_rng(seed)
    energy = np.full(batch, energy_gev)
    angle = np.radians(rng.uniform(*angle_deg, batch))
    simulate_showers(g, energy[: max(1, batch // 10)], angle[: max(1, batch // 10)], rng)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        simulate_showers(g, energy, angle, rng)
        times.append(time.perf_counter() - t0)
    return {"geometry": geometry, "primary_energy_gev": energy_gev, "angle_deg": list(angle_deg), "batch": batch,
            "showers_per_s_best": batch / min(times), "showers_per_s_median": batch / float(np.median(times)),
            "seconds": times}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("bench/results/simulate.json"))
    p.add_argument("--batch", type=int, default=1000, help="showers per timed call")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.batch < 1 or args.repeats < 1:
        raise SystemExit("error: --batch and --repeats must be >= 1")
    results = [bench_case(geo, e, (lo, hi), args.batch, args.repeats, args.seed)
               for geo, lo, hi in CASES for e in ENERGIES_GEV]
    report = {
        "benchmark": "fastshower.simulate.gflash.simulate_showers",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpu": _cpu_name(), "cpu_count": os.cpu_count(),
                    "affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
                    "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
                    "python": platform.python_version(), "numpy": np.__version__},
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(report, indent=2) + "\n")
    print(f"{'geometry':<8} {'angle (deg)':>12} {'E (GeV)':>8} {'showers/s best':>15} {'median':>8}")
    for r in results:
        lo, hi = r["angle_deg"]
        angle = f"{lo:g}" if math.isclose(lo, hi) else f"{lo:g}-{hi:g}"
        print(f"{r['geometry']:<8} {angle:>12} {r['primary_energy_gev']:>8g} {r['showers_per_s_best']:>15.0f} "
              f"{r['showers_per_s_median']:>8.0f}")
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
