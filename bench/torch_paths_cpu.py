"""Other torch CPU paths for gan3d_clic25 (folded, channels-last), one thread, CPU ms per shower at
batch 128 and 1 (issue 18): eager vs ``torch.jit.trace`` + ``freeze`` + ``optimize_for_inference``
(oneDNN fusion), and bf16 eager (no AVX-512 BF16 here: emulated). Writes JSON (argv[1]).

    .venv/bin/python bench/torch_paths_cpu.py bench/torch_paths_cpu_quiet.json
"""
import os
import sys
import json
import time

import torch

from fastshower.models.registry import build_generator
from fastshower.infer.fold import fold_generator, example_inputs, channels_last
torch.set_num_threads(1); torch.manual_seed(0)
m = build_generator('gan3d_clic25').eval(); f = channels_last(fold_generator(m))
out = {"loadavg_start": os.getloadavg()}
for B in (128, 1):
    e,a,z = example_inputs(m,B,3)
    def tm(fn, n=3 if B>1 else 20):
        fn(); fn(); best=1e9
        for _ in range(3):
            c=time.process_time()
            for _ in range(n): fn()
            best=min(best,time.process_time()-c)
        return best*1e3/B/n
    with torch.inference_mode():
        ref = f(e,a,z)
        out[f'eager channels_last b{B}'] = tm(lambda: f(e,a,z))
        tr = torch.jit.freeze(torch.jit.trace(f, (e,a,z), check_trace=False))
        tr = torch.jit.optimize_for_inference(tr)
        got = tr(e,a,z); err = float((got-ref).abs().max()/ref.abs().max())
        out[f'jit trace+freeze+optimize_for_inference b{B}'] = tm(lambda: tr(e,a,z)); out[f'jit err b{B}'] = err
        if B == 128:
            fb = f.to(torch.bfloat16)
            raw = lambda: fb.generate_raw(e.bfloat16(), a.bfloat16(), z.bfloat16())
            out[f'eager channels_last bf16 b{B}'] = tm(raw, n=1)
            f = f.float()
    print(json.dumps(out, indent=0), flush=True)
# two threads at batch 128 (eager channels-last and ONNX Runtime): wall ms per shower, best of 10 calls
# (on a shared 2-core machine the wall time counts every other runnable process; loadavg recorded)
import onnxruntime  # noqa: E402,F401

from fastshower.infer.onnx_export import export_onnx, open_session  # noqa: E402

e, a, z = example_inputs(m, 128, 3)
path = "/tmp/fastshower_torch_paths_clic25.onnx"
export_onnx(m, path, check=False)
sess2 = open_session(path, threads=2)
feed = {"primary_energy": e.numpy(), "incident_angle": a.numpy(), "noise": z.numpy()}
feed = {k: v for k, v in feed.items() if k in {i.name for i in sess2.get_inputs()}}
for threads in (1, 2):
    torch.set_num_threads(threads)
    sess = open_session(path, threads=threads)
    for label, fn in ((f"eager channels_last {threads} threads b128", lambda: f(e, a, z)),
                      (f"onnx folded {threads} threads b128", lambda: sess.run(["showers"], feed))):
        with torch.inference_mode():
            fn()
            walls, cpus = [], []
            for _ in range(10):
                c0, w0 = time.process_time(), time.perf_counter()
                fn()
                walls.append(time.perf_counter() - w0)
                cpus.append(time.process_time() - c0)
        out[label + " wall"] = 1e3 * min(walls) / 128
        out[label + " cpu"] = 1e3 * min(cpus) / 128
        print(label, out[label + " wall"], out[label + " cpu"], flush=True)
out["loadavg_end"] = os.getloadavg()
if len(sys.argv) > 1:
    open(sys.argv[1], "w").write(json.dumps(out, indent=1) + "\n")
