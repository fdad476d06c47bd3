"""Batch slicing of the channels-last twin (:class:`fastshower.infer.fold.BatchChunks`, issue 18):
CPU ms per shower, one thread (``--threads N``: wall ms), of the folded channels-last network at batch ``--batch`` for
several activation budgets per slice (``chunk_bytes``; 0 = the whole batch at once) and the
network before this change (zero pads copied before the convolutions, whole batch), with the
minor page faults per call (``ru_minflt``: fresh memory mapped by the allocator) and the load
average. Variants are timed in interleaved rounds (minimum per variant over the rounds).

    Q="/work/bin/quiet .venv/bin/python bench/chunks_cpu.py"
    $Q --model gan3d_clic25 --batch 128 --rounds 3 --calls 2 --out bench/chunks_cpu_quiet_clic25.json
    $Q --model gan3d_clic51 --batch 16 --budgets-mb 0 8 16 32 --rounds 3 --calls 1 \
        --out bench/chunks_cpu_quiet_clic51.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

import torch

from fastshower.infer.fold import channels_last, example_inputs, fold_generator
from fastshower.models.registry import build_generator


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="gan3d_clic25")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--budgets-mb", type=float, nargs="+", default=[0, 4, 8, 16, 32])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calls", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (> 1: wall time is the figure)")
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    clock = time.process_time if args.threads == 1 else time.perf_counter
    torch.manual_seed(0)
    module = build_generator(args.model).eval()
    folded = fold_generator(module)
    nets = {"before (pads copied, whole batch)": channels_last(fold_generator(module, pads=False), chunk_bytes=0)}
    nets.update({f"{mb:g} MB": channels_last(folded, chunk_bytes=int(mb * 2**20)) for mb in args.budgets_mb})
    inputs = example_inputs(module, args.batch, 3)
    doc: dict = {"model": args.model, "batch": args.batch, "threads": args.threads,
           "clock": "cpu (process_time)" if args.threads == 1 else "wall (perf_counter)",
                 "loadavg_start": os.getloadavg(), "chunks": {}, "ms_per_shower": {}, "minflt_per_call": {}}
    with torch.inference_mode():
        ref = folded(*inputs)
        scale = float(ref.abs().max())
        for label, net in nets.items():
            chunk = [m.chunk for m in net.modules() if type(m).__name__ == "BatchChunks"]
            doc["chunks"][label] = chunk
            got = net(*inputs)
            doc.setdefault("max_rel_err", {})[label] = float((got - ref).abs().max()) / scale
        for _ in range(args.rounds):
            for label, net in nets.items():
                net(*inputs)
                f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                c0 = clock()
                for _ in range(args.calls):
                    net(*inputs)
                ms = (clock() - c0) * 1e3 / (args.calls * args.batch)
                flt = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / args.calls
                doc["ms_per_shower"][label] = min(doc["ms_per_shower"].get(label, float("inf")), ms)
                doc["minflt_per_call"][label] = flt
            print({k: round(v, 3) for k, v in doc["ms_per_shower"].items()}, flush=True)
    doc["loadavg_end"] = os.getloadavg()
    print(json.dumps({k: doc[k] for k in ("chunks", "minflt_per_call", "max_rel_err", "loadavg_start", "loadavg_end")}))
    if args.out:
        with open(args.out, "w") as f:
            f.write(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
