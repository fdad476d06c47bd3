"""Geant4 as the reference of the inference benchmark: full simulation, and the fast-simulation
hook with a network, timed at the same conditions in the same benchmark run, one core each.

Geant4 allows one application per process, so each mode runs in a child process
(``python -m fastshower.infer.g4reference``) that builds the application, simulates one warm-up
event (or batch), then ``n`` events of one primary at fixed energy and angle, and prints one JSON
line. Times are the child's **CPU time** per event (``time.process_time``: on a shared machine it
counts the work, not the waiting) and its wall time; the split of a fast-mode run (transport,
inference, placement) is Geant4App's, in wall ms per event. The child runs with one thread
(``OMP_NUM_THREADS=1``, ``torch.set_num_threads(1)``; Geant4's serial run manager).

    python -m fastshower.infer.g4reference --mode full -g clic25 --energy 100 -n 5
    python -m fastshower.infer.g4reference --mode fast -g clic25 --model gan3d_clic25 -n 256 --batch-events 128
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from typing import Any


def geant4_available() -> str | None:
    """None when geant4_pybind is installed, else the reason (one line). Not imported here: the
    child process imports it the way the Geant4 application does (data sets set up first)."""
    import importlib.util

    return None if importlib.util.find_spec("geant4_pybind") else "geant4_pybind is not installed"


def geant4_reference(geometry: str, mode: str = "full", *, model: str | None = None, energy_gev: float = 100.0,
                     angle_deg: float = 90.0, n: int = 5, batch_events: int = 128, particle: str = "e-",
                     seed: int = 0, timeout_s: float = 1800.0) -> dict[str, Any]:
    """Time Geant4 in a child process (see the module docstring): ``mode`` ``full`` (physics
    ``em``) or ``fast`` (the ``model`` as shower source, ``batch_events`` events per source call).
    Returns the child's JSON (``cpu_ms_per_event``, ``wall_ms_per_event``, ``timing_ms`` split,
    ``geant4``, ``loadavg``...) or ``{"error": reason}`` when Geant4 is missing or the run fails."""
    reason = geant4_available()
    if reason:
        return {"error": reason}
    cmd = [sys.executable, "-m", "fastshower.infer.g4reference", "--mode", mode, "-g", geometry,
           "--energy", str(energy_gev), "--angle", str(angle_deg), "-n", str(n), "--batch-events", str(batch_events),
           "--particle", particle, "--seed", str(seed)]
    if model is not None:
        cmd += ["--model", model]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    try:
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout_s, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"geant4 {mode} run exceeded {timeout_s:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if not lines:  # the JSON line is printed last; a crash after it (teardown) does not matter
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"geant4 {mode} run failed (exit {proc.returncode}): {tail}"}
    return json.loads(lines[-1])


def _source(model: str, geometry: str):
    """The fast-simulation source ``g4run --model`` builds: ``model`` (name, saved stem or
    ``.onnx``) loaded with ``Generator.load`` (folded), one thread, gflash entry convention."""
    from fastshower.infer.sources import generator_source

    return generator_source(model, geometry, threads=1)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=["full", "fast"], default="full")
    p.add_argument("-g", "--geometry", default="clic25")
    p.add_argument("--model", default=None, help="fast mode: model name, saved stem or .onnx")
    p.add_argument("--energy", type=float, default=100.0, help="GeV")
    p.add_argument("--angle", type=float, default=90.0, help="deg")
    p.add_argument("-n", type=int, default=5)
    p.add_argument("--batch-events", type=int, default=128)
    p.add_argument("--particle", default="e-")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from fastshower.simulate.geant4.app import Gun, get_app

    if a.mode == "fast" and not a.model:
        raise SystemExit("error: fast mode needs --model")
    app = get_app(a.geometry, a.mode)
    source = _source(a.model, a.geometry) if a.mode == "fast" else None
    gun = Gun(a.particle, a.energy, math.radians(a.angle))
    batch = a.batch_events if a.mode == "fast" else 1
    app.run(min(batch, a.n), [gun], source, seed=a.seed + 1, batch_events=batch, collect=False)  # warm-up
    cpu0, wall0 = time.process_time(), time.perf_counter()
    result = app.run(a.n, [gun], source, seed=a.seed, batch_events=batch, collect=False)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    print(json.dumps({
        "mode": a.mode, "physics": app.physics, "geometry": a.geometry, "particle": a.particle,
        "energy_gev": a.energy, "angle_deg": a.angle, "n_events": a.n, "batch_events": batch,
        "model": a.model, "cpu_ms_per_event": 1e3 * cpu / a.n, "wall_ms_per_event": 1e3 * wall / a.n,
        "timing_ms": {k: 1e3 * v for k, v in result.timing.items()}, "geant4": app.version,
        "loadavg": list(os.getloadavg())}), flush=True)
    sys.stderr.flush()
    os._exit(0)  # skip Geant4's static teardown, which can crash at interpreter exit after a full run


if __name__ == "__main__":
    main()
