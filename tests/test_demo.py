"""The shipped generators and the main job (`fastshower demo`)."""

import numpy as np
import pytest

from fastshower.models import registry

SHIPPED = registry.list_shipped()


def test_a_default_model_ships():
    from fastshower.demo import DEFAULT_MODEL

    assert DEFAULT_MODEL in SHIPPED


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


def test_demo_quick_writes_report(cli, tmp_path):
    code, out, err = cli("demo", "--quick", "-n", "80", "--seed", "3", "-o", tmp_path / "demo")
    assert code == 0, err
    assert (tmp_path / "demo" / "report.html").is_file() and (tmp_path / "demo" / "metrics.json").is_file()
    assert "showers/s" in out and "profile_mse" in out
