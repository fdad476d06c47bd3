"""Other formulations of gan3d_clic25's slow layers, timed against the shipped ones (issue 18):
each exact (checked against the module to 1e-5 of the largest value, ``max_rel_err``), one
thread, CPU ms per shower at the slice size the network runs at (``--batch``, default 16),
fastest of 7 calls after a warm-up, in ``--rounds`` interleaved rounds (minimum kept).

- first sub-pixel layer (64 -> 6 x 8 phases): one convolution (shipped) vs the phases split
  along x, z or both into convolutions with their own taps and output range only (fewer FLOPs);
- second sub-pixel layer (6 -> 6 x 12 phases): the convolution alone in channels-last (shipped)
  and NCDHW, with oneDNN off (torch's im2col path), unfolded along z (6 -> 24 input channels) and
  y, z (48), and an im2col + matrix product (96 x 72); and its phase splits;
- final 6 -> 1 Conv3D: oneDNN channels-last (shipped) vs a 6 x 8 matrix product + 8 shifted adds,
  z-windows + matrix-vector products, and as 5 output phases of stride 5 along z;
- the whole sliced stack as a frozen TorchScript trace (``optimize_for_inference``) vs eager.

    /work/bin/quiet .venv/bin/python bench/clic25_alternatives_cpu.py --out bench/clic25_alternatives_cpu_quiet.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import time
import warnings

import torch
import torch.nn.functional as F

from fastshower.infer.fold import BatchChunks, channels_last, example_inputs, fold_generator
from fastshower.models.registry import build_generator

CL = torch.channels_last_3d


def best_ms(fn, n: int, reps: int = 7) -> float:
    fn()
    best = math.inf
    for _ in range(reps):
        c0 = time.process_time()
        fn()
        best = min(best, time.process_time() - c0)
    return best * 1e3 / n


def conv_input(mod, x: torch.Tensor) -> torch.Tensor:
    """The tensor a ConvTransposeCrop passes to F.conv3d (its padded / sliced input)."""
    seen = {}
    orig = F.conv3d

    def spy(inp, *args, **kwargs):
        seen["x"] = inp
        return orig(inp, *args, **kwargs)

    F.conv3d = spy
    try:
        mod(x)
    finally:
        F.conv3d = orig
    return seen["x"]


def phase_split(layer, x: torch.Tensor, xin: torch.Tensor, axes: set[int]):
    """The phases of a channels-last sub-pixel layer grouped by their index along ``axes``, each
    group one convolution with only its own taps and (crop not deferred) its kept output range;
    returns a function giving the layer's output."""
    s, taps, c_out = layer.stride, layer.taps, int(layer.weight.shape[1])
    q = [xin.shape[2 + i] - taps[i] + 1 for i in range(3)]
    starts, lengths = layer.crop_window(x.shape[2:])
    wph = layer.cl_weight.reshape(*s, c_out, *layer.cl_weight.shape[1:])  # (rx, ry, rz, c, cin, jx, jy, jz)
    window, qrange = {}, {}
    for ax in range(3):
        for r in range(s[ax]):
            w = wph.select(ax, r)
            used = w.abs().sum(dim=tuple(d for d in range(w.dim()) if d != w.dim() - 3 + ax))
            nz = torch.nonzero(used).flatten()
            window[ax, r] = (int(nz.min()), int(nz.max()) + 1)
            lo, hi = math.ceil((starts[ax] - r) / s[ax]), (starts[ax] + lengths[ax] - 1 - r) // s[ax] + 1
            qrange[ax, r] = (0, q[ax]) if layer.crop_deferred else (lo, hi)
    groups = []
    for combo in itertools.product(*[range(s[a]) if a in axes else [None] for a in range(3)]):
        phases = [p for p in itertools.product(*[range(n) for n in s])
                  if all(combo[a] is None or p[a] == combo[a] for a in range(3))]
        taps_sl, qs, xs = [], [], []
        for a in range(3):
            (lo, hi), (qa, qb) = ((0, taps[a]), (0, q[a])) if combo[a] is None else (window[a, combo[a]],
                                                                                  qrange[a, combo[a]])
            taps_sl.append(slice(lo, hi))
            qs.append((qa, qb))
            xs.append(slice(qa + lo, qb - 1 + hi))
        w = torch.stack([wph[p] for p in phases]).flatten(0, 1)[:, :, taps_sl[0], taps_sl[1], taps_sl[2]]
        b = torch.stack([layer.cl_bias.view(*s, c_out)[p] for p in phases]).reshape(-1)
        groups.append((phases, w.contiguous(memory_format=CL), b, xs, qs))
    batch = x.shape[0]

    def run() -> torch.Tensor:
        out = torch.empty(batch, q[0], s[0], q[1], s[1], q[2], s[2], c_out)
        for phases, w, b, xs, qs in groups:
            y = F.conv3d(xin[:, :, xs[0], xs[1], xs[2]], w, b)
            y = y.permute(0, 2, 3, 4, 1).reshape(*y.shape[:1], *y.shape[2:], len(phases), c_out)
            for i, p in enumerate(phases):
                out[:, qs[0][0]:qs[0][1], p[0], qs[1][0]:qs[1][1], p[1], qs[2][0]:qs[2][1], p[2]] = y[..., i, :]
        o = out.view(batch, *[a * b for a, b in zip(q, s)], c_out)
        if not layer.crop_deferred:
            o = o[(slice(None), *(slice(st, st + n) for st, n in zip(starts, lengths)))]
        return o.permute(0, 4, 1, 2, 3)

    mflop = sum(2 * w.numel() * math.prod(b - a for a, b in qs) for _, w, _, _, qs in groups) * 1.0 / 1e6
    return run, mflop


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    module = build_generator("gan3d_clic25").eval()
    net = channels_last(fold_generator(module))
    body = next(m for m in net.net if isinstance(m, BatchChunks)).body  # subpixel, act, subpixel, act, conv, ...
    assert [type(m).__name__ for m in body][:5:2] == ["ConvTransposeCrop", "ConvTransposeCrop", "Conv3d"]
    B = args.batch
    doc: dict = {"model": "gan3d_clic25", "batch": B, "threads": 1, "clock": "cpu (process_time)",
                 "loadavg_start": os.getloadavg(), "ms_per_shower": {}, "max_rel_err": {}, "mflop_executed": {}}
    with torch.inference_mode():
        e, a, z = example_inputs(module, B, 3)
        h = net.net[0](net.latent(e, a, z))
        acts = []
        for mod in body:
            acts.append(h)
            h = mod(h.clone(memory_format=torch.preserve_format))
        variants: dict[str, tuple] = {}  # label -> (function, reference output or None)

        l2, x2 = body[0], acts[0]
        variants["subpixel 1: module (shipped)"] = (lambda: l2(x2), None)
        for axes, label in (({0}, "x"), ({2}, "z"), ({0, 2}, "x and z")):
            fn, mflop = phase_split(l2, x2, conv_input(l2, x2), axes)
            variants[f"subpixel 1: phases split along {label}"] = (fn, l2(x2))
            doc["mflop_executed"][f"subpixel 1: phases split along {label}"] = mflop

        l4, x4 = body[2], acts[2]
        xin = conv_input(l4, x4)
        ref4 = F.conv3d(xin, l4.cl_weight, l4.cl_bias)
        variants["subpixel 2: module (shipped)"] = (lambda: l4(x4), None)
        variants["subpixel 2: convolution alone, channels-last (shipped)"] = (
            lambda: F.conv3d(xin, l4.cl_weight, l4.cl_bias), None)
        xin_n = xin.contiguous()
        variants["subpixel 2: convolution alone, NCDHW"] = (lambda: F.conv3d(xin_n, l4.sub_weight, l4.sub_bias), None)

        def no_onednn():
            with torch.backends.mkldnn.flags(enabled=False):
                return F.conv3d(xin_n, l4.sub_weight, l4.sub_bias)

        variants["subpixel 2: convolution alone, NCDHW, oneDNN off"] = (no_onednn, None)
        xl = xin.permute(0, 2, 3, 4, 1)
        nb, nx, ny, nz, c = xl.shape
        tx, ty, tz = l4.taps
        qy, qz = ny - ty + 1, nz - tz + 1
        sb, sx, sy, sz, _ = xl.stride()  # of the second layer's input (the closures below keep them)
        w = l4.cl_weight
        wz = w.permute(0, 4, 1, 2, 3).reshape(w.shape[0], tz * c, tx, ty, 1).contiguous(memory_format=CL)
        wyz = w.permute(0, 3, 4, 1, 2).reshape(w.shape[0], ty * tz * c, tx, 1, 1).contiguous(memory_format=CL)

        def unfold_z():
            v = xl.as_strided((nb, nx, ny, qz, tz * c), (sb, sx, sy, sz, 1)).contiguous().permute(0, 4, 1, 2, 3)
            return F.conv3d(v, wz, l4.cl_bias)

        def unfold_yz():
            v = xl.as_strided((nb, nx, qy, qz, ty, tz, c), (sb, sx, sy, sz, sy, sz, 1))
            return F.conv3d(v.reshape(nb, nx, qy, qz, -1).permute(0, 4, 1, 2, 3), wyz, l4.cl_bias)

        qx = nx - tx + 1
        wmat = w.permute(0, 2, 3, 4, 1).reshape(w.shape[0], -1).t().contiguous()

        def im2col_mm():
            v = xl.as_strided((nb, qx, qy, qz, tx, ty, tz, c), (sb, sx, sy, sz, sx, sy, sz, 1))
            y = torch.addmm(l4.cl_bias, v.reshape(-1, tx * ty * tz * c), wmat)
            return y.view(nb, qx, qy, qz, -1).permute(0, 4, 1, 2, 3)

        variants["subpixel 2: convolution unfolded along z (24 input channels)"] = (unfold_z, ref4)
        variants["subpixel 2: convolution unfolded along y, z (48 input channels)"] = (unfold_yz, ref4)
        variants["subpixel 2: im2col + matrix product (96 x 72)"] = (im2col_mm, ref4)
        for axes, label in (({0}, "x"), ({2}, "z")):
            fn, mflop = phase_split(l4, x4, xin, axes)
            variants[f"subpixel 2: phases split along {label}"] = (fn, l4(x4))
            doc["mflop_executed"][f"subpixel 2: phases split along {label}"] = mflop

        l6, x6 = body[4], acts[4]
        kept = (slice(None), slice(None), slice(1, 26), slice(0, 25), slice(1, 26))
        ref6 = l6(x6)[kept]
        y6 = x6.permute(0, 2, 3, 4, 1)
        w6 = l6.weight[0]  # (6, 2, 2, 2)
        w68 = w6.permute(1, 2, 3, 0).reshape(8, 6).t().contiguous()
        s6b, s6x, s6y, s6z, _ = y6.stride()
        w4 = w6.permute(1, 2, 3, 0).reshape(4, 12)

        def mm_adds():
            p = torch.mm(y6.reshape(-1, 6), w68).view(*y6.shape[:4], 8)
            out = p[:, 1:26, 0:25, 1:26, 0].clone()
            for dx, dy, dz in itertools.product((0, 1), repeat=3):
                if dx or dy or dz:
                    out.add_(p[:, 1 + dx:26 + dx, dy:25 + dy, 1 + dz:26 + dz, 4 * dx + 2 * dy + dz])
            return out.unsqueeze(1)

        def zwindows_mv():
            out = None
            for dx, dy in itertools.product((0, 1), repeat=2):
                v = y6.as_strided((B, 25, 25, 25, 12), (s6b, s6x, s6y, s6z, 1),
                                  storage_offset=s6x * (1 + dx) + s6y * dy + s6z)
                t = torch.matmul(v, w4[2 * dx + dy])
                out = t if out is None else out.add_(t)
            return out.unsqueeze(1)

        w5 = torch.zeros(5, 6, 2, 2, 7)
        for j in range(5):
            for d in range(2):
                w5[j, :, :, :, j + 1 + d] = w6[:, :, :, d]
        w5 = w5.contiguous(memory_format=CL)

        def z_phases():
            y = F.conv3d(x6, w5, stride=(1, 1, 5))
            return y.permute(0, 2, 3, 4, 1).reshape(B, 1, y.shape[2], y.shape[3], -1)[:, :, 1:26, 0:25]

        variants["final Conv3D: oneDNN channels-last (shipped)"] = (lambda: l6(x6), None)
        variants["final Conv3D: 6 x 8 matrix product + 8 shifted adds"] = (mm_adds, ref6)
        variants["final Conv3D: z windows + 4 matrix-vector products"] = (zwindows_mv, ref6)
        variants["final Conv3D: 5 output phases of stride 5 along z"] = (z_phases, ref6)

        x1 = acts[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            traced = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(
                body, (x1.clone(memory_format=torch.preserve_format),), check_trace=False)))
        variants["stack: eager (shipped)"] = (lambda: body(x1.clone(memory_format=torch.preserve_format)), None)
        variants["stack: frozen trace"] = (lambda: traced(x1.clone(memory_format=torch.preserve_format)),
                                           body(x1.clone(memory_format=torch.preserve_format)))
        for label, (fn, ref) in variants.items():
            if ref is not None:
                got = fn()
                doc["max_rel_err"][label] = float((got - ref).abs().max() / ref.abs().max())
        for _ in range(args.rounds):
            for label, (fn, _) in variants.items():
                doc["ms_per_shower"][label] = min(doc["ms_per_shower"].get(label, math.inf), best_ms(fn, B))
            print(json.dumps({k: round(v, 3) for k, v in doc["ms_per_shower"].items()}, indent=0), flush=True)
    doc["loadavg_end"] = os.getloadavg()
    print(json.dumps({k: doc[k] for k in ("max_rel_err", "mflop_executed", "loadavg_start", "loadavg_end")}, indent=0))
    if args.out:
        with open(args.out, "w") as f:
            f.write(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
