"""Inference speed of the generators (shares fastshower.infer.benchmark with ``fastshower benchmark``).

Models are shipped names or saved stems; a registry name without shipped weights (``name`` or
``name@width``) is timed with freshly initialised weights (the arithmetic does not depend on the
values; rows say ``"weights": "untrained (timing only)"``). Writes JSON and prints a table.

    .venv/bin/python bench/inference.py --out bench/inference_cpu.json
    .venv/bin/python bench/inference.py --models gan3d_clic25 --backends torch onnx --quick
    .venv/bin/python bench/inference.py --device cuda --precisions fp32 bf16 fp16 --out bench/inference_cuda.json
"""

from __future__ import annotations

import argparse
import sys

from fastshower.infer.benchmark import benchmark, format_table, write_json

MODELS = ("gan3d_clic25", "gan3d_clic51", "conv2d_g1", "conv2d_g2", "conv2d_g3")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--backends", nargs="+", default=["torch", "onnx"], choices=["torch", "onnx"])
    p.add_argument("--precisions", nargs="+", default=["fp32"], choices=["fp32", "bf16", "fp16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--batches-per-step", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="CaloChallenge batches 1/16/256, 3 repetitions")
    p.add_argument("--no-calochallenge", action="store_true")
    p.add_argument("--compile", action="store_true", help="also try torch.compile")
    p.add_argument("--reference-n", type=int, default=200, help="GFlash showers timed for the speed-up")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON output file")
    args = p.parse_args(argv)
    result = benchmark(args.models, backends=tuple(args.backends), precisions=tuple(args.precisions),
                       device=args.device, batch_size=args.batch_size, warmup=args.warmup, repeats=args.repeats,
                       batches_per_step=args.batches_per_step, threads=args.threads, quick=args.quick,
                       calochallenge=not args.no_calochallenge, include_compile=args.compile,
                       reference_n=args.reference_n, seed=args.seed, log=lambda m: print(m, file=sys.stderr))
    print(format_table(result))
    if args.out:
        write_json(result, args.out)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
