"""The offline Geant4 data set: build time, rebuild determinism, and Geant4's per-atom
photoelectric and Rayleigh cross sections against xraylib for every element of the default set.

Builds the set twice into temporary directories (CPU time of each build; the two trees must be
byte-identical), then runs ``fastshower.simulate.geant4.g4data_check`` in a fresh process on the
first one (Geant4's G4EmCalculator after BeamOn(0)) and writes JSON with the per-element table
(largest and rms |Geant4/xraylib - 1| from 1 to 800 keV away from edges, Rayleigh, read-back of
the files) and the fit residuals from the manifest; prints the table as Markdown.

    .venv/bin/python bench/g4data_xs.py --out bench/results/g4data_xs.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fastshower.fileio import write_text_atomic
from fastshower.simulate.geant4 import g4data


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + b"\0" + p.read_bytes())
    return h.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/g4data_xs.json")
    parser.add_argument("--points", type=int, default=80, help="log-spaced energies per element, 1-800 keV")
    args = parser.parse_args()
    load = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        builds = []
        for name in ("a", "b"):
            t0, w0 = time.process_time(), time.perf_counter()
            result = g4data.build_dataset(Path(tmp) / name)
            builds.append({"cpu_s": time.process_time() - t0, "wall_s": time.perf_counter() - w0,
                           "tree_sha256": _tree_digest(result.directory)})
        root = Path(tmp) / "a"
        manifest = g4data.read_manifest(root)
        env = {k: v for k, v in os.environ.items() if not k.startswith("G4") and k != "GEANT4_DATA_DIR"}
        env.update(GEANT4_DATA_DIR=str(root), OMP_NUM_THREADS="1")
        elements = [e["symbol"] for e in manifest["elements"]]
        check_out = Path(tmp) / "check.json"
        proc = subprocess.run([sys.executable, "-m", "fastshower.simulate.geant4.g4data_check", "--out", str(check_out),
                               "--points", str(args.points), "--elements", *elements],
                              capture_output=True, text=True, timeout=600, env=env)
        if proc.returncode != 0:
            sys.exit(f"g4data_check failed: {proc.stderr[-2000:]}")
        check = json.loads(check_out.read_text())
        size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    rows = []
    for e in manifest["elements"]:
        s = check["summary"][str(e["Z"])]
        p = e["photoelectric"]
        rows.append({"Z": e["Z"], "symbol": e["symbol"], "n_energies": s["n_energies"],
                     "phot_max_dev": s["phot_max_dev"], "phot_max_dev_at_kev": s["phot_max_dev_at_kev"],
                     "phot_rms_dev": s["phot_rms_dev"], "rayl_max_dev": s["rayl_max_dev"],
                     "phot_readback_max_dev": s["phot_readback_max_dev"],
                     "rayl_readback_max_dev": s["rayl_readback_max_dev"], "fit": p})
    out = {"command": "bench/g4data_xs.py " + " ".join(sys.argv[1:]), "load_average": load,
           "geant4": check["geant4"], "xraylib": manifest["xraylib_version"],
           "fastshower": manifest["fastshower_version"], "recipe": manifest["recipe"],
           "builds": builds, "identical_rebuild": builds[0]["tree_sha256"] == builds[1]["tree_sha256"],
           "n_files": len(manifest["files"]), "bytes": size, "elements": rows,
           "materials_geant4": check["materials"]}
    write_text_atomic(args.out, json.dumps(out, indent=1) + "\n")
    print(f"build: {builds[0]['cpu_s']:.2f} / {builds[1]['cpu_s']:.2f} CPU s, identical rebuild: "
          f"{out['identical_rebuild']}, {out['n_files']} files, {size / 1e3:.0f} kB; load {load[0]:.1f}")
    print("| Z | el | energies | phot max dev (at keV) | phot rms dev | Rayl max dev | read-back max dev "
          "| fit max res. low / high |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        res = r["fit"]["residuals"]
        print(f"| {r['Z']} | {r['symbol']} | {r['n_energies']} | {100 * r['phot_max_dev']:.2f}% "
              f"({r['phot_max_dev_at_kev']:.3g}) | {100 * r['phot_rms_dev']:.2f}% | {100 * r['rayl_max_dev']:.3f}% "
              f"| {max(r['phot_readback_max_dev'], r['rayl_readback_max_dev']):.1e} "
              f"| {100 * res['low_max']:.2f}% / {100 * res['high_max']:.2f}% |")


if __name__ == "__main__":
    main()
