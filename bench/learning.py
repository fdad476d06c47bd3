"""The learning check of tests/test_train_learning.py for several seeds: is learning luck?

    OMP_NUM_THREADS=1 PYTHONPATH=src python bench/learning.py --seeds 0 1 2 3 --out bench/learning_cpu.json

Writes one record per seed (metrics of the untrained generator and after the check's steps, CPU
seconds) and a summary (how many seeds pass the test's bounds), with the machine's load average.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from fastshower.fileio import write_text_atomic
from fastshower.train.selftest import BOUNDS, SETTING, learning_run, passes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--steps", type=int, default=None, help=f"default {SETTING['steps']}")
    parser.add_argument("--batch-size", type=int, default=None, help=f"default {SETTING['batch_size']}")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batchnorm", default=None, help="override the model's batchnorm (e.g. train: the old port)")
    parser.add_argument("--cell-power", type=float, default=None,
                        help="override the model's cell power (the networks see GeV ** p)")
    parser.add_argument("--out", type=Path, default=Path("bench/learning_cpu.json"))
    parser.add_argument("--merge", type=Path, nargs="+", default=None,
                        help="combine the runs of these result files into --out (no training)")
    args = parser.parse_args()
    if args.merge:
        parts = [json.loads(p.read_text()) for p in args.merge]
        runs = sorted((r for part in parts for r in part["runs"]), key=lambda r: r["seed"])
        merged = {**parts[0], "command": " + ".join(part["command"] for part in parts),
                  "passed": sum(r["passes"] for r in runs), "n_seeds": len(runs), "runs": runs}
        write_text_atomic(args.out, json.dumps(merged, indent=1))
        return
    torch.set_num_threads(args.threads)
    runs = []
    for seed in args.seeds:
        load = os.getloadavg()
        t = time.perf_counter()
        overrides = {"batchnorm": args.batchnorm, "cell_power": args.cell_power}
        r = learning_run(seed, args.steps, model_config={k: v for k, v in overrides.items() if v is not None} or None,
                         batch_size=args.batch_size)
        r.update({"wall_s": round(time.perf_counter() - t, 1), "load_avg_1_5_15": [round(x, 2) for x in load],
                  "passes": passes(r)})
        runs.append(r)
        print(json.dumps({k: r[k] for k in ("seed", "before", "after", "train_cpu_s", "passes")}), flush=True)
    result = {"command": f"bench/learning.py --seeds {' '.join(map(str, args.seeds))}"
                         + (f" --steps {args.steps}" if args.steps else "")
                         + (f" --batch-size {args.batch_size}" if args.batch_size else "")
                         + (f" --batchnorm {args.batchnorm}" if args.batchnorm else "")
                         + (f" --cell-power {args.cell_power:g}" if args.cell_power else ""), "bounds": BOUNDS,
              "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
              "threads": args.threads, "batchnorm_override": args.batchnorm, "cell_power_override": args.cell_power,
              "passed": sum(r["passes"] for r in runs), "n_seeds": len(runs), "runs": runs}
    write_text_atomic(args.out, json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
