"""Run every robustness case of docs/robustness.md and print the table (markdown) + JSON.

    PYTHONPATH=src OMP_NUM_THREADS=1 python bench/robustness.py --out bench/results/robustness.json

Each case runs ``python -m fastshower.cli ...`` in a fresh folder and records the exit code, the
message (the ``error:`` line, else the last line of output), warnings and the files left in the
folder. Needs root for the 20 MB tmpfs cases (skipped otherwise). Small inputs: about 10 minutes
of CPU on one core.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SRC = str(Path(__file__).resolve().parent.parent / "src")
PY = sys.executable
ENV = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1")


def _default_sigint() -> None:
    """Children get the default SIGINT action even when this script runs in the background (where
    the shell starts it with SIGINT ignored, which Python and its children would inherit)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def cli(*args: str, cwd: Path, sigint_after: float | None = None, timeout: float = 900) -> dict:
    cmd = [PY, "-m", "fastshower.cli", *map(str, args)]
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=cwd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)
    if sigint_after is not None:
        time.sleep(sigint_after)
        proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    warnings = [line.split("UserWarning: ", 1)[1] for line in err.splitlines() if "UserWarning: " in line]
    last = (out.strip().splitlines() or err.strip().splitlines() or [""])[-1]
    return {"rc": proc.returncode, "message": errors[0] if errors else last, "warnings": warnings,
            "stderr_lines": len(err.strip().splitlines()), "seconds": round(time.time() - t0, 1)}


def files(folder: Path) -> str:
    names = sorted(p.name for p in folder.rglob("*") if p.is_file())
    return ", ".join(names) if names else "nothing"


def mount_tmpfs(folder: Path, size: str) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True).returncode == 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    rows = []
    root = Path(tempfile.mkdtemp(prefix="fastshower-robustness-"))

    def case(item: str, name: str, command: str, folder: Path, result: dict, left: str | None = None) -> None:
        row = {"item": item, "case": name, "command": command, **result, "left": left or files(folder)}
        rows.append(row)
        print(f"{item:4s} {name:45s} rc={row['rc']:4} {row['message'][:110]}", flush=True)

    def fresh(name: str) -> Path:
        d = root / name
        d.mkdir(parents=True)
        return d

    # shared inputs
    data = fresh("inputs")
    cli("simulate", "-n", 200, "--seed", 1, "-o", data / "ref.h5", cwd=data)
    cli("simulate", "-n", 30, "--seed", 2, "-o", data / "c30.h5", cwd=data)
    cli("simulate", "-n", 3, "--seed", 3, "-o", data / "c3.h5", cwd=data)
    cli("simulate", "-n", 48, "--seed", 4, "-o", data / "train.h5", cwd=data)
    subprocess.run([PY, "-c", "import torch; from fastshower.models import registry as r; torch.manual_seed(0); "
                    f"r.save_generator(r.build_generator('gan3d_clic25', width=0.0625), '{data}/tiny')"], env=ENV,
                   check=True)

    # item 1: Ctrl-C
    d = fresh("sigint")
    case("1", "Ctrl-C during simulate", "simulate -n 100000 --batch-size 50 -o x.h5 (SIGINT after 3 s)", d,
         cli("simulate", "-n", 100000, "--batch-size", 50, "-o", "x.h5", cwd=d, sigint_after=3))

    # item 2: full disk
    for name, command in (("simulate", ["simulate", "-n", 10000, "-o"]),
                          ("generate", ["generate", "-m", "gan3d_clic25", "-n", 3000, "-o"])):
        d = fresh(f"full_{name}")
        mnt = d / "mnt"
        if mount_tmpfs(mnt, "20m"):
            (mnt / "other.txt").write_text("keep\n")
            r = cli(*command, mnt / "x.h5", cwd=d)
            left = files(mnt)
            subprocess.run(["umount", "-l", str(mnt)])
            case("2", f"full disk (20 MB tmpfs): {name}", " ".join(map(str, command)) + " mnt/x.h5", d, r, left)

    # item 3: raw tracebacks
    d = fresh("truncated")
    for suffix in (".json", ".safetensors"):
        shutil.copy(data / f"tiny{suffix}", d / f"m{suffix}")
    (d / "m.safetensors").write_bytes((d / "m.safetensors").read_bytes()[:1000])
    case("3", "truncated .safetensors", "generate -m m.safetensors -o g.h5 -n 2", d,
         cli("generate", "-m", "m.safetensors", "-o", "g.h5", "-n", 2, "--energy", "50", cwd=d))
    for command in (["generate", "-o", "g.h5", "-n", "2"], ["benchmark", "--quick"], ["quantize", "-o", "q.onnx"],
                    ["g4run", "-o", "g4.h5", "-n", "1"]):
        d = fresh(f"notonnx_{command[0]}")
        (d / "bad.onnx").write_bytes(b"not a protobuf \x00\xff" * 10)
        case("3", f".onnx that is not ONNX: {command[0]}", f"{command[0]} -m bad.onnx {' '.join(command[1:])}", d,
             cli(command[0], "--model" if command[0] == "g4run" else "-m", "bad.onnx", *command[1:], cwd=d))
    d = fresh("corrupt_ckpt")
    cfg = {"model": {"name": "gan3d_clic25", "config": {"width": 0.0625}},
           "recipe": {"batch_size": 4, "lr_scaling": "none"}, "data": {"train": str(data / "train.h5")},
           "run": {"epochs": 2, "steps_per_epoch": 1, "output_dir": "run", "progress": False}}
    (d / "cfg.yaml").write_text(json.dumps(cfg))
    cli("train", "cfg.yaml", cwd=d)
    latest = d / "run/checkpoints" / (d / "run/checkpoints/latest").read_text().strip()
    (latest / "state.pt").write_bytes((latest / "state.pt").read_bytes()[:100])
    cfg["run"]["epochs"] = 3
    (d / "cfg3.yaml").write_text(json.dumps(cfg))
    case("3", "corrupt newest checkpoint on --resume", "train cfg3.yaml --resume run", d,
         cli("train", "cfg3.yaml", "--resume", "run", cwd=d), "run/ with checkpoints step 1-3")
    d = fresh("opset")
    case("3", "export --opset 5", "export -m gan3d_clic25 -o e.onnx --opset 5", d,
         cli("export", "-m", "gan3d_clic25", "-o", "e.onnx", "--opset", 5, cwd=d))
    d = fresh("huge_n")
    case("3", "-n 1e12 (generate)", "generate -m gan3d_clic25 -n 1000000000000 -o g.h5", d,
         cli("generate", "-m", "gan3d_clic25", "-n", 10**12, "-o", "g.h5", cwd=d))
    for n in (3, 30):
        d = fresh(f"validate{n}")
        case("3", f"validate, {n}-event candidate", f"validate ref.h5 c{n}.h5 -o rep --quick", d,
             cli("validate", data / "ref.h5", data / f"c{n}.h5", "-o", "rep", "--quick", cwd=d))

    # item 4: details
    d = fresh("pydantic")
    bad = {**cfg, "model": {"name": "gan3d_clic25", "config": {"width": "wide", "dropout": 2}}}
    (d / "cfg.yaml").write_text(json.dumps(bad))
    case("4", "invalid model config (2 fields)", "train cfg.yaml", d, cli("train", "cfg.yaml", cwd=d))
    d = fresh("state_dict")
    (d / "cfg.yaml").write_text(json.dumps(cfg))
    case("4", "warm start from another width", "train cfg.yaml --warm-start gan3d_clic25 (width 0.25 vs 0.0625)",
         d, cli("train", "cfg.yaml", "--warm-start", registry_path("gan3d_clic25"), cwd=d))

    # item 5: silent losses
    d = fresh("exists")
    cli("simulate", "-n", 20, "-o", "x.h5", cwd=d)
    case("5", "existing output", "simulate -n 5 -o x.h5 (x.h5 holds 20)", d,
         cli("simulate", "-n", 5, "-o", "x.h5", cwd=d), "x.h5 (20 events, unchanged)")
    d = fresh("concurrent")
    procs = [subprocess.Popen([PY, "-m", "fastshower.cli", "simulate", "-n", n, "--batch-size", "20", "-o", "x.h5"],
                              cwd=d, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for n in ("200", "201")]
    outs = [(p.wait(), p.communicate()) for p in procs]
    loser = next((o for o in outs if o[0] != 0), outs[1])
    case("5", "two simulate to one path at once", "simulate -n 200 -o x.h5 & simulate -n 201 -o x.h5", d,
         {"rc": "/".join(str(o[0]) for o in outs),
          "message": next((line for line in loser[1][1].splitlines() if line.startswith("error:")), ""),
          "warnings": [], "stderr_lines": 0, "seconds": 0})
    d = fresh("train_exists")
    (d / "cfg.yaml").write_text(json.dumps(cfg))
    cli("train", "cfg.yaml", cwd=d)
    case("5", "train into a folder holding a run", "train cfg.yaml (run/ exists)", d, cli("train", "cfg.yaml", cwd=d),
         "run/ unchanged")

    # item 6: misleading success
    d = fresh("hpo_missing")
    hpo = {"base": {**cfg, "data": {"train": str(d / "missing.h5"), "validation": str(data / "train.h5")}},
           "report_dir": "report", "search_space": {"recipe.optimizer.lr_generator": {"type": "float", "low": 1e-4,
                                                                                       "high": 1e-3}}}
    (d / "hpo.yaml").write_text(json.dumps(hpo))
    case("6", "hpo, missing data file", "hpo hpo.yaml --trials 2", d, cli("hpo", "hpo.yaml", "--trials", 2, cwd=d))
    d = fresh("hpo_key")
    hpo2 = {**hpo, "base": {**cfg, "data": {"train": str(data / "train.h5"), "validation": str(data / "train.h5")}},
            "search_space": {"recipe.optimizer.lr_generatr": {"type": "float", "low": 1e-4, "high": 1e-3}}}
    (d / "hpo.yaml").write_text(json.dumps(hpo2))
    case("6", "hpo, misspelled search key", "hpo hpo.yaml --trials 2", d, cli("hpo", "hpo.yaml", "--trials", 2, cwd=d))
    d = fresh("quantize_target")
    case("6", "quantize --target 1e-9", "quantize -m tiny -o q.onnx --target 1e-9 --select first", d,
         cli("quantize", "-m", data / "tiny", "-o", "q.onnx", "--target", "1e-9", "--select", "first",
             "--calibration-n", 16, "--eval-n", 16, cwd=d))
    d = fresh("resume_batch")
    (d / "cfg.yaml").write_text(json.dumps(cfg))
    cli("train", "cfg.yaml", cwd=d)
    cfg8 = {**cfg, "recipe": {"batch_size": 8, "lr_scaling": "none"}, "run": {**cfg["run"], "epochs": 3}}
    (d / "cfg8.yaml").write_text(json.dumps(cfg8))
    case("6", "train --resume with another batch size", "train cfg8.yaml --resume run (batch 4 -> 8)", d,
         cli("train", "cfg8.yaml", "--resume", "run", cwd=d), "run/ continued")
    d = fresh("extrapolation")
    case("6", "--allow-extrapolation at 60 deg, fixed-angle model",
         "generate -m gan3d_clic25 --angle 60 --allow-extrapolation -n 5 -o g.h5", d,
         cli("generate", "-m", "gan3d_clic25", "--angle", "60", "--allow-extrapolation", "-n", 5, "-o", "g.h5", cwd=d))

    # item 7: resources
    d = fresh("memory")
    code = ("import resource, signal, subprocess, sys, time\n"
            f"p = subprocess.Popen([sys.executable, '-m', 'fastshower.cli', 'simulate', '-n', '100000000', "
            f"'--batch-size', '100', '-o', 'x.h5'], cwd={str(d)!r}, "
            "preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))\n"
            "time.sleep(20); p.send_signal(signal.SIGINT); p.wait()\n"
            "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    r = subprocess.run([PY, "-c", code], env=ENV, capture_output=True, text=True, preexec_fn=_default_sigint)
    rc, rss_kb = r.stdout.split()
    case("7", "simulate -n 1e8: peak memory (20 s, then Ctrl-C)", "simulate -n 100000000 --batch-size 100 -o x.h5", d,
         {"rc": int(rc), "message": f"max RSS {int(rss_kb) / 1024:.0f} MiB", "warnings": [], "stderr_lines": 0,
          "seconds": 20})
    d = fresh("stale")
    (d / ".x.h5.999999.abcdefgh.tmp").write_bytes(b"partial")
    case("7", "stale temp file of a dead run", "simulate -n 5 -o x.h5 (.x.h5.999999.*.tmp present)", d,
         cli("simulate", "-n", 5, "-o", "x.h5", cwd=d))
    d = fresh("best")
    val = {**cfg, "data": {"train": str(data / "train.h5"), "validation": str(data / "ref.h5")},
           "run": {**cfg["run"], "epochs": 3}}
    (d / "cfg.yaml").write_text(json.dumps(val))
    case("7", "train final line", "train cfg.yaml (3 epochs, validation)", d, cli("train", "cfg.yaml", cwd=d),
         "run/")

    # item 9
    d = fresh("tampered")
    for suffix in (".json", ".safetensors"):
        shutil.copy(data / f"tiny{suffix}", d / f"m{suffix}")
    subprocess.run([PY, "-c", "from safetensors.torch import load_file, save_file; t = load_file('m.safetensors'); "
                    "k = sorted(t)[0]; t[k].view(-1)[0] += 0.5; save_file(t, 'm.safetensors')"], cwd=d, env=ENV,
                   check=True)
    case("9", "tampered weights (one value)", "generate -m m -o g.h5 -n 2", d,
         cli("generate", "-m", "m", "-o", "g.h5", "-n", 2, "--energy", "50", cwd=d))

    # already passing on main (kept)
    d = fresh("passing")
    (d / "text.h5").write_text("not hdf5")
    for name, argv in (("missing file", ["inspect", "missing.h5"]), ("not an HDF5 file", ["inspect", "text.h5"]),
                       ("energy outside the geometry", ["simulate", "--energy", "1000", "-n", "2", "-o", "y.h5"]),
                       ("bad YAML config", ["train", "text.h5"])):
        case("-", name, " ".join(argv), d, cli(*argv, cwd=d))

    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"uptime": os.getloadavg(), "rows": rows}, indent=1) + "\n")
    print("\n| item | case | command | exit | message | left on disk |\n|---|---|---|---|---|---|")
    for r in rows:
        msg = r["message"].replace("|", "\\|")
        warn = f" (warning: {r['warnings'][0][:120]})" if r["warnings"] else ""
        print(f"| {r['item']} | {r['case']} | `{r['command']}` | {r['rc']} | {msg[:200]}{warn} | {r['left']} |")
    shutil.rmtree(root, ignore_errors=True)


def registry_path(name: str) -> str:
    return str(Path(SRC) / "fastshower" / "weights" / name)


if __name__ == "__main__":
    main()
