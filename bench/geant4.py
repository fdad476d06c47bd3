"""Cost of Geant4 full simulation, of parallel production and of fast vs full mode, on this machine.

Parts (``--parts``, default all):

- ``cpu``: CPU seconds per shower on one core, full mode (em physics, ``--em-physics``), e- at
  ``--energies`` in clic25 and clic51 at 90 and 60 deg. One process per geometry (one Geant4
  application); per case a run of 1 and a run of N events after a warm-up, and
  CPU/shower = (CPU(N) - CPU(1)) / (N - 1) (process CPU time, so other jobs on the machine do not
  inflate it; the difference removes the per-run overhead). Peak RSS of each process.
- ``workers``: one production (full mode, ``--workers-energy`` GeV, ``--workers-n`` events in
  ``--workers-shards`` shards) with 1 worker (in process) and with 2 local Dask workers; wall
  times (start-up included), the load average before each, and whether the outputs are identical.
- ``fastfull``: per-event CPU of ``g4run --mode full`` and ``--mode fast`` (transportation only:
  the model takes every e-/gamma at the face) with GFlash and with the shipped generator
  (``--model``) as shower source, clic25, 90 deg, same gun, same formula; speed-up = full / fast.

Each part runs in child processes (Geant4 allows one application per process) with one thread
(OMP_NUM_THREADS=1, torch.set_num_threads(1)). Results go to ``--out`` (JSON); ``--docs FILE``
rewrites the table between the ``bench/geant4.py`` markers in that file from the JSON
(``--table-only`` does only that).

    OMP_NUM_THREADS=1 nice -n 10 python bench/geant4.py --out bench/geant4_cpu.json --docs docs/geant4.md
    python bench/geant4.py --table-only --out bench/geant4_cpu.json --docs docs/geant4.md
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

BEGIN = "<!-- bench/geant4.py: begin (generated from bench/geant4_cpu.json; do not edit by hand) -->"
END = "<!-- bench/geant4.py: end -->"


def _load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def _cpu_name() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _timed_runs(app, gun_of, source, n: int, seed: int, batch_events: int = 100) -> dict:
    """CPU and wall of a 1-event and an n-event run; per-event CPU = difference / (n - 1)."""
    t0, w0 = time.process_time(), time.perf_counter()
    app.run(1, [gun_of()], source, seed=seed, batch_events=batch_events, collect=False)
    t1, w1 = time.process_time(), time.perf_counter()
    app.run(n, [gun_of()], source, seed=seed + 1, batch_events=batch_events, collect=False)
    t2, w2 = time.process_time(), time.perf_counter()
    return {"n": n, "cpu_s_1": t1 - t0, "cpu_s_n": t2 - t1, "wall_s_1": w1 - w0, "wall_s_n": w2 - w1,
            "cpu_s_per_event": ((t2 - t1) - (t1 - t0)) / (n - 1),
            "wall_s_per_event": ((w2 - w1) - (w1 - w0)) / (n - 1)}


# ------------------------------------------------------------------------------------------------
# children (one Geant4 application each)

def child_cpu(spec: dict) -> dict:
    from fastshower.simulate.geant4.app import Gun, get_app

    app = get_app(spec["geometry"], "full", "em", em_physics=spec["em_physics"])
    warm = time.process_time()
    app.run(2, [Gun("e-", 10.0)], None, seed=1, collect=False)  # builds the physics tables
    init_cpu = time.process_time() - warm
    cases = []
    for angle in spec["angles_deg"]:
        for energy, n in zip(spec["energies_gev"], spec["n"]):
            load = _load()
            r = _timed_runs(app, lambda: Gun("e-", float(energy), math.radians(angle)), None, n, seed=int(energy))
            cases.append({"geometry": spec["geometry"], "angle_deg": angle, "energy_gev": energy, "load_before": load,
                          **r})
            print(f"  {spec['geometry']} {angle:g} deg {energy:g} GeV: {r['cpu_s_per_event']:.4f} CPU s/shower "
                  f"(n={n}, load {load[0]})", file=sys.stderr, flush=True)
    return {"cases": cases, "first_run_cpu_s": init_cpu, "peak_rss_mb": _peak_rss_mb(),
            "physics_list": app.physics_list_name, "production_cut_mm": app.production_cut_mm,
            "geant4": app.version}


def child_mode(spec: dict) -> dict:
    if spec["mode"] == "fast":
        import torch

        torch.set_num_threads(1)
    from fastshower.simulate.geant4.app import Gun, get_app
    from fastshower.infer.sources import resolve_source

    app = get_app(spec["geometry"], spec["mode"], spec.get("physics"))
    source = resolve_source(spec["model"], spec["geometry"]) if spec["mode"] == "fast" else None
    app.run(2, [Gun("e-", 10.0)], source, seed=1, collect=False)  # tables, first inference call
    cases = []
    for energy, n in zip(spec["energies_gev"], spec["n"]):
        load = _load()
        r = _timed_runs(app, lambda: Gun("e-", float(energy)), source, n, seed=int(energy),
                        batch_events=spec["batch_events"])
        cases.append({"energy_gev": energy, "load_before": load, **r})
        print(f"  {spec['mode']} {spec.get('model') or ''} {energy:g} GeV: {r['cpu_s_per_event'] * 1e3:.2f} "
              f"CPU ms/event (n={n}, load {load[0]})", file=sys.stderr, flush=True)
    return {"cases": cases, "peak_rss_mb": _peak_rss_mb(), "physics_list": app.physics_list_name}


def child_produce(spec: dict) -> dict:
    from fastshower.production import Production, produce

    p = Production(spec["geometry"], spec["n"], mode="full", energy=str(spec["energy_gev"]), seed=spec["seed"],
                   n_shards=spec["shards"])
    load = _load()
    t0, c0 = time.perf_counter(), time.process_time()
    result = produce(p, spec["output"], workers=spec["workers"])
    return {"workers": spec["workers"], "wall_s": time.perf_counter() - t0, "load_before": load,
            "load_after": _load(), "shard_cpu_s": sum(m["cpu_s_total"] for m in result.manifests),
            "parent_cpu_s": time.process_time() - c0, "peak_rss_mb_parent": _peak_rss_mb(),
            "pids": sorted({m["pid"] for m in result.manifests}), **result.extra}


CHILDREN = {"cpu": child_cpu, "mode": child_mode, "produce": child_produce}


def _child(kind: str, spec: dict) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, __file__, "--child", kind, json.dumps(spec)], env=env, text=True,
                          stdout=subprocess.PIPE)
    if proc.returncode != 0:
        raise SystemExit(f"child {kind} {spec} failed with exit code {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------
# parts

def part_cpu(a) -> dict:
    energies = [float(e) for e in a.energies.split(",")]
    ns = [int(v) for v in a.n.split(",")]
    out = {}
    for geometry in ("clic25", "clic51"):
        print(f"cpu: {geometry}", file=sys.stderr, flush=True)
        out[geometry] = _child("cpu", {"geometry": geometry, "angles_deg": [90.0, 60.0], "energies_gev": energies,
                                       "n": ns, "em_physics": a.em_physics})
    return out


def part_workers(a) -> dict:
    import h5py
    import numpy as np

    runs = []
    with tempfile.TemporaryDirectory(prefix="g4bench-") as tmp:
        for workers in (1, 2):
            print(f"workers: {workers}", file=sys.stderr, flush=True)
            runs.append(_child("produce", {"geometry": "clic25", "n": a.workers_n, "energy_gev": a.workers_energy,
                                           "shards": a.workers_shards, "seed": 5, "workers": workers,
                                           "output": f"{tmp}/w{workers}.h5"}))
        with h5py.File(f"{tmp}/w1.h5") as f1, h5py.File(f"{tmp}/w2.h5") as f2:
            identical = bool(np.array_equal(f1["showers"][()], f2["showers"][()]))
    return {"geometry": "clic25", "energy_gev": a.workers_energy, "n": a.workers_n, "shards": a.workers_shards,
            "runs": runs, "identical_output": identical, "speed_up": runs[0]["wall_s"] / runs[1]["wall_s"]}


def part_fastfull(a) -> dict:
    energies = [float(e) for e in a.fastfull_energies.split(",")]
    full_n = [int(v) for v in a.fastfull_full_n.split(",")]
    out = {"geometry": "clic25", "angle_deg": 90.0, "batch_events": 100}
    print("fastfull: full", file=sys.stderr, flush=True)
    out["full"] = _child("mode", {"geometry": "clic25", "mode": "full", "physics": "em", "energies_gev": energies,
                                  "n": full_n, "batch_events": 100})
    for model in ("gflash", a.model):
        print(f"fastfull: fast {model}", file=sys.stderr, flush=True)
        out[f"fast {model}"] = _child("mode", {"geometry": "clic25", "mode": "fast", "model": model,
                                               "energies_gev": energies, "n": [a.fastfull_fast_n] * len(energies),
                                               "batch_events": 100})
    return out


# ------------------------------------------------------------------------------------------------
# the docs table

def render(results: dict) -> str:
    lines = [BEGIN, ""]
    m = results["machine"]
    lines.append(f"Machine: {m['cpu']}, {m['cores']} cores, shared with other jobs (load averages in the JSON and "
                 f"below); {m['date']}. Geant4 {m.get('geant4', '?')}.")
    if "cpu" in results:
        c = results["cpu"]
        first = next(iter(c.values()))
        lines += ["", f"**Full simulation, CPU seconds per shower on one core** ({first['physics_list']}, production "
                  f"cut {first['production_cut_mm']:g} mm, e- at the face centre; CPU/shower = (CPU(N) - CPU(1)) / "
                  f"(N - 1) in one process, N in brackets):", "",
                  "| geometry | angle | " + " | ".join(f"{e:g} GeV" for e in _energies(first["cases"]))
                  + " | peak RSS |", "|---|---|" + "---|" * len(_energies(first["cases"])) + "---|"]
        for geometry, g in c.items():
            for angle in sorted({case["angle_deg"] for case in g["cases"]}, reverse=True):
                cells = []
                for case in (x for x in g["cases"] if x["angle_deg"] == angle):
                    cells.append(f"{case['cpu_s_per_event']:.3g} s (N={case['n']})")
                lines.append(f"| {geometry} | {angle:g} deg | " + " | ".join(cells)
                             + f" | {g['peak_rss_mb']:.0f} MB |")
        loads = [x["load_before"][0] for g in c.values() for x in g["cases"]]
        lines += ["", f"(1-minute load average during these runs: {min(loads):.1f}-{max(loads):.1f}; first run "
                  f"incl. physics tables: {first['first_run_cpu_s']:.1f} CPU s.)"]
    if "workers" in results:
        w = results["workers"]
        r1, r2 = w["runs"]
        lines += ["", f"**Parallel production** (`g4run --mode full --energy {w['energy_gev']:g} -n {w['n']} --shards "
                  f"{w['shards']}`, clic25): 1 worker (in process) {r1['wall_s']:.1f} s wall, 2 local Dask workers "
                  f"{r2['wall_s']:.1f} s wall, of which {r2.get('cluster_start_s', float('nan')):.1f} s starting the "
                  f"cluster: speed-up {w['speed_up']:.2f}x "
                  f"({r1['wall_s'] / (r2['wall_s'] - r2.get('cluster_start_s', 0)):.2f}x without the start-up) on this "
                  f"2-core machine at load average {r1['load_before'][0]:.1f} / {r2['load_before'][0]:.1f} before "
                  f"each run. The two files hold bit-identical showers: {w['identical_output']}. CPU summed over the "
                  f"shards: {r1['shard_cpu_s']:.0f} s with 1 worker, {r2['shard_cpu_s']:.0f} s with 2; the Dask "
                  f"scheduler and client in the submitting process used {r2['parent_cpu_s']:.0f} CPU s."]
    if "fastfull" in results:
        f = results["fastfull"]
        full = {x["energy_gev"]: x for x in f["full"]["cases"]}
        fast_keys = [k for k in f if k.startswith("fast ")]
        lines += ["", "**Fast vs full mode in the same application** (clic25, e- at 90 deg, per-event CPU on one "
                  "core, (CPU(N) - CPU(1)) / (N - 1); fast = transportation only, the source takes each e- at the "
                  "face, 100 events per source call, torch 1 thread):", "",
                  "| E | full | fast, GFlash | speed-up | fast, " + f"{fast_keys[-1][5:]}" + " | speed-up |",
                  "|---|---|---|---|---|---|"]
        for e, fc in sorted(full.items()):
            row = [f"{e:g} GeV", f"{fc['cpu_s_per_event'] * 1e3:.1f} ms"]
            for key in fast_keys:
                x = next(c for c in f[key]["cases"] if c["energy_gev"] == e)
                speed_up = fc["cpu_s_per_event"] / x["cpu_s_per_event"]
                row += [f"{x['cpu_s_per_event'] * 1e3:.2f} ms", f"{speed_up:.0f}x"]
            lines.append("| " + " | ".join(row) + " |")
        rss = ", ".join(f"{k}: {v['peak_rss_mb']:.0f} MB" for k, v in f.items()
                        if isinstance(v, dict) and "peak_rss_mb" in v)
        lines += ["", f"(Peak RSS per process: {rss}.)"]
    lines += ["", END]
    return "\n".join(lines)


def _energies(cases: list[dict]) -> list[float]:
    return sorted({c["energy_gev"] for c in cases})


def write_docs(path: Path, table: str) -> None:
    text = path.read_text()
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + table + rest.split(END, 1)[1]
    else:
        raise SystemExit(f"{path} has no {BEGIN!r} ... {END!r} markers")
    path.write_text(text)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--parts", default="cpu,workers,fastfull")
    p.add_argument("--energies", default="10,100,500")
    p.add_argument("-n", default="41,11,5", help="events per energy for the cpu part")
    p.add_argument("--em-physics", default="option0")
    p.add_argument("--workers-energy", type=float, default=100.0)
    p.add_argument("--workers-n", type=int, default=96)
    p.add_argument("--workers-shards", type=int, default=8)
    p.add_argument("--fastfull-energies", default="10,100")
    p.add_argument("--fastfull-full-n", default="41,11")
    p.add_argument("--fastfull-fast-n", type=int, default=201)
    p.add_argument("--model", default="gan3d_clic25", help="shipped generator for the fastfull part")
    p.add_argument("--out", type=Path, default=Path("bench/geant4_cpu.json"))
    p.add_argument("--docs", type=Path, default=None)
    p.add_argument("--table-only", action="store_true")
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(CHILDREN[a.child[0]](json.loads(a.child[1]))))
        return
    if a.table_only:
        results = json.loads(a.out.read_text())
    else:
        results = json.loads(a.out.read_text()) if a.out.exists() else {}
        results["machine"] = {"cpu": _cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
                              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                              "command": " ".join([Path(sys.executable).name, *sys.argv])}
        parts = {"cpu": part_cpu, "workers": part_workers, "fastfull": part_fastfull}
        for name in a.parts.split(","):
            results[name] = parts[name](a)
            if name == "cpu":
                results["machine"]["geant4"] = next(iter(results["cpu"].values()))["geant4"]
            a.out.parent.mkdir(parents=True, exist_ok=True)
            a.out.write_text(json.dumps(results, indent=1) + "\n")  # after each part: nothing lost
    table = render(results)
    print(table)
    if a.docs:
        write_docs(a.docs, table)


if __name__ == "__main__":
    main()
