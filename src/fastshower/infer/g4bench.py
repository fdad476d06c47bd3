"""Per-event timing of the Geant4 application with a shower source: ``python -m fastshower.infer.g4bench``.

Runs fast (or full) mode for several primary energies in one process (one Geant4 application)
and prints transport / inference / placement / total per event in ms. ``--model`` takes what
``fastshower g4run --model`` takes, plus ``untrained:<registry name>[:<width>]`` (a freshly
initialised generator of the right size: timing only, its showers mean nothing). It lives in
``infer`` because it builds model-backed sources; ``simulate.geant4`` only receives them.

    python -m fastshower.infer.g4bench -g clic25 --model untrained:gan3d_clic25 \
        --energies 10,100,500 -n 200 --batch-events 100
"""

from __future__ import annotations

import argparse
import math

import numpy as np


def _source(model: str, geometry: str):
    from fastshower.infer.sources import module_source, resolve_source
    from fastshower.models.registry import build_generator

    if model.startswith("untrained:"):
        import torch

        parts = model.split(":")
        width = float(parts[2]) if len(parts) > 2 else 1.0
        torch.manual_seed(0)
        return module_source(build_generator(parts[1], width=width))
    return resolve_source(model, geometry)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-g", "--geometry", default="clic25")
    p.add_argument("--mode", default="fast", choices=["fast", "full"])
    p.add_argument("--physics", default=None)
    p.add_argument("--model", default="gflash")
    p.add_argument("--particle", default="e-")
    p.add_argument("--energies", default="10,100,500")
    p.add_argument("--angle", type=float, default=90.0, help="deg")
    p.add_argument("-n", type=int, default=100)
    p.add_argument("--batch-events", type=int, default=100)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    from fastshower.simulate.geant4.app import Gun, get_app

    app = get_app(a.geometry, a.mode, a.physics)
    source = _source(a.model, a.geometry) if a.mode == "fast" else None
    # warm-up (first inference call, allocations)
    app.run(min(a.batch_events, a.n), [Gun(a.particle, 50.0, math.radians(a.angle))], source, seed=a.seed + 1,
            batch_events=a.batch_events, collect=False)
    print(f"geant4 {a.mode} ({app.physics}), {a.geometry}, model {a.model if source else '-'}, {a.n} events, "
          f"batch {a.batch_events} events per source call; ms per event")
    print(f"{'E (GeV)':>8}{'transport':>12}{'inference':>12}{'placement':>12}{'total':>12}")
    for e in (float(v) for v in a.energies.split(",")):
        r = app.run(a.n, [Gun(a.particle, e, math.radians(a.angle))], source, seed=a.seed, batch_events=a.batch_events,
                    collect=False)
        t = r.timing
        print(f"{e:>8g}" + "".join(f"{1e3 * t[k]:>12.3f}" for k in ("transport", "inference", "placement", "total")))
        if a.mode == "fast" and r.max_energy_deviation > 1e-5:  # pragma: no cover - checked in run already
            raise SystemExit("energy not conserved")
    np.seterr(all="ignore")


if __name__ == "__main__":
    main()
