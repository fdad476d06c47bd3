"""Per-layer CPU ms per shower of the folded gan3d_clic25 (full width, seeded random weights), one
thread, plain (NCDHW) vs the channels-last twin (:func:`fastshower.infer.fold.channels_last`), at
batch 128 and 1: where the time over the FLOP floor goes (docs/inference.md, issue 18).

    /work/bin/quiet .venv/bin/python bench/clic25_layers_cpu.py [out.json]
"""

import json
import os
import sys

import torch

from fastshower.infer.fold import channels_last, example_inputs, fold_generator
from fastshower.infer.timing import time_per_shower
from fastshower.models.registry import build_generator


def best_ms(fn, batch: int, repeats: int = 5) -> float:
    """Fastest of ``repeats`` calls after one warm-up, CPU ms per shower."""
    return time_per_shower(fn, batch, warmup=1, repeats=repeats, clock="cpu").ms_per_shower_min


def layers(net, batch: int) -> dict[str, float]:
    e, a, z = example_inputs(net, batch, 3)
    out: dict[str, float] = {}
    keep = torch.preserve_format
    with torch.inference_mode():
        x = net.latent(e, a, z)
        for i, mod in enumerate(net.net):
            xi = x.clone(memory_format=keep)
            out[f"{i} {type(mod).__name__}"] = max(0.0, best_ms(lambda: mod(xi.clone(memory_format=keep)), batch)
                                                   - best_ms(lambda: xi.clone(memory_format=keep), batch))
            x = mod(x.clone(memory_format=keep))
        out["total"] = best_ms(lambda: net(e, a, z), batch)
    return out


def main() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    folded = fold_generator(build_generator("gan3d_clic25").eval())
    doc: dict = {"loadavg_start": os.getloadavg()}
    for label, net in (("folded", folded), ("folded channels_last", channels_last(folded))):
        for batch in (128, 1):
            doc[f"{label} batch {batch}"] = row = layers(net, batch)
            print(label, batch, json.dumps({k: round(v, 3) for k, v in row.items()}), flush=True)
    doc["loadavg_end"] = os.getloadavg()
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as f:
            f.write(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
