"""The shipped generators and the main job (`fastshower demo`)."""

import subprocess
import sys

import numpy as np
import pytest

from fastshower.models import registry

SHIPPED = registry.list_shipped()


def test_the_demo_picks_a_shipped_generator_by_its_card():
    from fastshower.demo import _card_rank, pick_generator

    assert pick_generator("clic25", 100.0, np.pi / 2) in SHIPPED
    smoke = {"metadata": {"quality": "SMOKE: 75 steps", "training_data": "GFlash clic25"}}
    trained = {"metadata": {"quality": "CPU campaign", "training_data": "Geant4 clic25 2-500 GeV",
                            "epochs_validation": [{"val_profile_mse": 1e-4}]}}
    assert _card_rank(trained) < _card_rank(smoke)
    with pytest.raises(ValueError, match="no shipped generator"):
        pick_generator("par04_ds3", 100.0, np.pi / 2)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_model_loads_and_generates(name):
    from fastshower.infer.generator import Generator

    card = registry.read_card(name)
    gen = Generator.load(name)
    e_lo, e_hi = gen.energy_range_gev
    out = gen.generate(np.array([e_lo, e_hi]), np.full(2, gen.angle_range_rad[0]), seed=1)
    assert out.showers.shape == (2, *gen.geometry.shape)
    assert np.all(np.isfinite(out.showers)) and np.all(out.showers >= 0)
    assert card["geometry"] == gen.geometry.name


def test_demo_quick_prints_the_verdict_and_writes_the_report(tmp_path):
    """The real command in a subprocess: the demo runs Geant4 in its own process, and Geant4 allows
    one application per process (an in-process run would block later Geant4 tests)."""
    from fastshower.simulate.geant4.datasets import geant4_available

    ok, why = geant4_available()
    if not ok:
        pytest.skip(why)
    proc = subprocess.run([sys.executable, "-m", "fastshower.cli", "demo", "--quick", "--seed", "3",
                           "-o", str(tmp_path / "demo")], capture_output=True, text=True, timeout=900)
    code, out, err = proc.returncode, proc.stdout, proc.stderr
    assert code == 0, err[-3000:]
    assert (tmp_path / "demo" / "report.html").is_file() and (tmp_path / "demo" / "metrics.json").is_file()
    for row in ("mean response", "longitudinal profile", "classifier AUC", "time per shower", "Geant4 floor sample"):
        assert row in out, row
    assert "GFlash" in out and "report.html" in out
    assert out.count("pass") >= 4  # the Geant4 floor sample is Geant4: its five shower numbers pass (AUC n/a)
