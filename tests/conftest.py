"""Shared fixtures. Tests are seeded and small: the whole suite must run in minutes on 2 cores."""

from __future__ import annotations

import functools
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


@pytest.fixture
def cli(capsys):
    """Run the ``fastshower`` command in-process: ``code, out, err = cli("inspect", "f.h5")``."""
    from fastshower.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:  # typer/click and main() end with SystemExit
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@functools.lru_cache(maxsize=1)
def probe_geant4() -> tuple[bool, str]:
    """(usable, reason) of ``geant4_available()``, asked in a subprocess: keeps Geant4's static state
    out of the pytest process. Asked once per session."""
    code = "import json; from fastshower.simulate.geant4 import geant4_available; print(json.dumps(geant4_available()))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        return False, (proc.stderr.strip().splitlines() or ["probe failed"])[-1]
    ok, reason = json.loads(proc.stdout.strip().splitlines()[-1])
    return bool(ok), reason
