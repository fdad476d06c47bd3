"""Training checkpoints: everything a killed run needs to continue exactly where it stopped.

A checkpoint is a directory ``<run>/checkpoints/step_<N>/`` with

- ``models.safetensors``: generator (``generator.*``) and discriminator (``discriminator.*``) weights
  and buffers;
- ``state.pt``: a ``torch.save``'d dict of plain tensors, numbers, lists and dicts, read back with
  ``weights_only=True``: both optimizers, the grad scalers (fp16), the trainer's random generator
  and every rank's torch (and CUDA) RNG state;
- ``meta.json``: step, epoch and step inside the epoch (the data order is recomputed from them),
  world size, the Python and NumPy global RNG states of every rank, the model name and config.

The directory is written under a temporary name and renamed into place; ``<run>/checkpoints/latest``
(written atomically afterwards) names the newest complete one. Older ones beyond ``keep`` are removed.

Resuming from a run directory whose newest checkpoint cannot be read (a damaged disk, a file
truncated by a full disk) falls back to the previous readable one with a warning
(:func:`load_checkpoint`). A run directory is locked while a run writes it (:func:`lock_run_dir`).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from fastshower.errors import DataFileError
from fastshower.fileio import exclusive_lock, write_text_atomic

CHECKPOINT_DIR = "checkpoints"
MODELS_FILE = "models.safetensors"
STATE_FILE = "state.pt"
META_FILE = "meta.json"


def host_rng_state() -> dict[str, Any]:
    """This process's Python and NumPy global RNG states (JSON-serialisable) and torch states."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_host_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npy = state["numpy"]
    np.random.set_state((npy[0], np.asarray(npy[1], dtype=np.uint32), npy[2], npy[3], npy[4]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tensors(prefix: str, module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}


def save_checkpoint(run_dir: str | Path, step: int, generator: torch.nn.Module, discriminator: torch.nn.Module,
                    state: dict[str, Any], meta: dict[str, Any], keep: int) -> Path:
    """Write checkpoint ``step_<step>`` atomically, point ``latest`` at it, prune to ``keep``."""
    root = Path(run_dir) / CHECKPOINT_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:08d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
    try:
        save_file({**_tensors("generator", generator), **_tensors("discriminator", discriminator)},
                  str(tmp / MODELS_FILE))
        torch.save(state, tmp / STATE_FILE)
        (tmp / META_FILE).write_text(json.dumps(meta))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_text_atomic(root / "latest", final.name + "\n")
    for old in sorted(p for p in root.glob("step_*") if p.is_dir())[:-keep]:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def checkpoint_candidates(path: str | Path) -> list[Path]:
    """Checkpoint directories to try for ``path``, best first: the checkpoint itself, or for a run
    directory its ``latest`` one and then every other ``step_*`` one, newest first."""
    p = Path(path)
    if (p / MODELS_FILE).is_file():
        return [p]
    root = p / CHECKPOINT_DIR
    found: list[Path] = []
    latest = root / "latest"
    if latest.is_file():
        ckpt = root / latest.read_text().strip()
        if ckpt.is_dir():
            found.append(ckpt)
    if root.is_dir():
        found += [c for c in sorted((c for c in root.glob("step_*") if c.is_dir()), reverse=True) if c not in found]
    return found


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from itself or from a run directory (its ``latest`` checkpoint, or
    the newest one with weights)."""
    p = Path(path)
    for ckpt in checkpoint_candidates(p):
        if (ckpt / MODELS_FILE).is_file():
            return ckpt
    if not p.exists():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    raise FileNotFoundError(f"{p} holds no checkpoint (expected {MODELS_FILE} or {CHECKPOINT_DIR}/latest)")


def load_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """(generator, discriminator or None) state dicts from a checkpoint or run directory, or from a
    generator file saved by ``registry.save_generator`` (``best.safetensors``: no discriminator)."""
    from fastshower.models.registry import read_safetensors

    p = Path(path)
    if not p.is_dir():  # a saved generator: <stem>, <stem>.json or <stem>.safetensors
        weights = p.with_suffix(".safetensors") if p.suffix in (".json", ".safetensors") else \
            p.with_name(p.name + ".safetensors")
        if not weights.is_file():
            raise FileNotFoundError(f"checkpoint not found: {p}")
        return read_safetensors(weights), None
    tensors = read_safetensors(find_checkpoint(p) / MODELS_FILE, "checkpoint")
    gen = {k.removeprefix("generator."): v for k, v in tensors.items() if k.startswith("generator.")}
    disc = {k.removeprefix("discriminator."): v for k, v in tensors.items() if k.startswith("discriminator.")}
    return gen, disc


def _read_checkpoint(ckpt: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(state, meta) of one checkpoint directory, its weights file read through once: any damage
    raises here, before a run resumes from it."""
    from fastshower.models.registry import read_safetensors

    try:
        state = torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=True)
        meta = json.loads((ckpt / META_FILE).read_text())
    except DataFileError:
        raise
    except Exception as exc:  # a damaged file: torch/pickle/zip/json errors of many kinds
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise DataFileError(f"{ckpt} is unreadable ({type(exc).__name__}: {detail})") from None
    if not isinstance(meta, dict) or not isinstance(state, dict) or "step" not in meta:
        raise DataFileError(f"{ckpt} is unreadable (meta.json / state.pt incomplete)")
    read_safetensors(ckpt / MODELS_FILE, "checkpoint")
    return state, meta


def load_checkpoint(path: str | Path) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """(checkpoint dir, state dict, meta) of a checkpoint or run directory. For a run directory,
    an unreadable newest checkpoint is skipped with a warning for the previous readable one."""
    candidates = checkpoint_candidates(path)
    if not candidates:
        find_checkpoint(path)  # raises the not-found message
    problems = []
    for ckpt in candidates:
        try:
            state, meta = _read_checkpoint(ckpt)
        except (DataFileError, FileNotFoundError) as exc:
            problems.append(str(exc))
            continue
        if problems:
            warnings.warn(f"{'; '.join(problems)}: resuming from the previous readable checkpoint {ckpt.name}",
                          UserWarning, stacklevel=2)
        return ckpt, state, meta
    raise DataFileError(f"no readable checkpoint in {path}: {'; '.join(problems)}")


@contextlib.contextmanager
def lock_run_dir(run_dir: str | Path):
    """Hold ``<run_dir>/.lock`` while a run writes the directory: a second run on the same directory
    fails at once (:class:`~fastshower.errors.ConcurrentWriterError`)."""
    with exclusive_lock(Path(run_dir) / ".lock", f"run folder {run_dir}"):
        yield


def run_dir_in_use(run_dir: str | Path) -> bool:
    """True when ``run_dir`` already holds a run (checkpoints, metrics or saved generators)."""
    p = Path(run_dir)
    return any((p / name).exists() for name in (CHECKPOINT_DIR, "metrics.jsonl", "generator.json", "best.json"))


def clear_run_dir(run_dir: str | Path) -> None:
    """Remove a previous run's checkpoints, metrics and saved generators (``--overwrite``)."""
    p = Path(run_dir)
    shutil.rmtree(p / CHECKPOINT_DIR, ignore_errors=True)
    for name in ("metrics.jsonl", "metrics.csv", "generator.json", "generator.safetensors", "best.json",
                 "best.safetensors"):
        (p / name).unlink(missing_ok=True)
