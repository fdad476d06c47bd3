import math

import numpy as np
import pytest

from fastshower.conditions import parse_spec, sample_angles, sample_energies
from fastshower.geometry import PRESETS, load_geometry, save_geometry


def test_clic_stack_is_a_20_x0_ecal():
    g = PRESETS["clic25"]
    assert g.shape == (25, 25, 25)
    # 17 x 2.1 mm + 8 x 4.2 mm of tungsten plus silicon: about 20 X0
    assert g.layer_radiation_lengths().sum() == pytest.approx(19.9, abs=0.2)
    assert g.layer_edges_mm()[-1] == pytest.approx(17 * 4.4 + 8 * 6.8)
    # effective properties lie between those of pure W and pure Si
    assert 3.504 < g.radiation_length_mm < 93.7
    assert 9.327 < g.moliere_radius_mm < 48.8
    assert 7.97 < g.critical_energy_mev < 40.19
    # e/mip < 1: the electron sampling fraction is below the mip one
    assert g.sampling_fraction < g.mip_sampling_fraction


def test_par04_matches_calochallenge_binning():
    ds2, ds3 = PRESETS["par04_ds2"], PRESETS["par04_ds3"]
    assert ds2.n_cells == 6480 and ds3.n_cells == 40500
    assert ds2.r_edges_mm[-1] == pytest.approx(41.85) and ds3.r_edges_mm[-1] == pytest.approx(41.85)
    assert ds2.layer_edges_mm()[-1] == pytest.approx(153.0)
    r, alpha = ds2.cell_centres_mm()
    assert r[0] == pytest.approx(4.65 / 2) and alpha[0] == pytest.approx(-math.pi + math.pi / 16)


def test_yaml_round_trip_and_user_detector(tmp_path):
    path = tmp_path / "det.yaml"
    save_geometry(PRESETS["clic51"], path)
    assert load_geometry(path) == PRESETS["clic51"]
    text = path.read_text().replace("name: clic51", "name: mydet").replace("absorber: W", "absorber: Pb")
    path.write_text(text)
    g = load_geometry(path)
    assert g.name == "mydet" and g.layers[0].absorber == "Pb"
    assert g.radiation_length_mm > PRESETS["clic51"].radiation_length_mm


def test_bad_geometry_messages(tmp_path):
    with pytest.raises(ValueError, match="unknown geometry"):
        load_geometry("nope")
    with pytest.raises(FileNotFoundError):
        load_geometry(tmp_path / "missing.yaml")
    bad = PRESETS["clic25"].model_dump()
    bad["shape"] = (25, 25, 24)
    with pytest.raises(ValueError, match="layer groups give 25 layers"):
        type(PRESETS["clic25"]).model_validate(bad)
    with pytest.raises(ValueError, match="shape"):
        PRESETS["clic25"].check_shape(np.zeros((2, 25, 25, 24)))


def test_condition_specs(rng):
    assert parse_spec("100").kind == "value"
    e = sample_energies("2:500", 10000, rng)
    assert 2 <= e.min() and e.max() <= 500 and abs(e.mean() - 251) < 5
    le = sample_energies("1:1000:log", 10000, rng)
    assert abs(np.median(np.log10(le)) - 1.5) < 0.05
    c = sample_energies("10,50", 1000, rng)
    assert set(np.unique(c)) == {10.0, 50.0}
    a = sample_angles("60:120", 100, rng, allowed_rad=PRESETS["clic51"].angle_range_rad)
    assert np.all((a >= math.radians(60)) & (a <= math.radians(120)))
    with pytest.raises(ValueError, match="outside the allowed range"):
        sample_energies("1:600", 5, rng, allowed_gev=(2, 500))
    with pytest.raises(ValueError, match="cannot read energy"):
        parse_spec("abc", "energy")


def test_cli_lists_geometries(cli):
    code, out, _ = cli("geometries")
    assert code == 0 and "clic25" in out and "par04_ds3" in out
    code, _, err = cli("geometries", "nope")
    assert code == 2 and err.startswith("error: unknown geometry")
