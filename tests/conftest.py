"""Shared fixtures. Tests are seeded and small: the whole suite must run in minutes on 2 cores."""

from __future__ import annotations

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
