"""``fastshower simulate`` and ``fastshower inspect``: streaming, reproducibility, one-line errors."""

import math
import re

import h5py
import numpy as np
import pytest

from fastshower.data import count_events, detect_layout, read_showers
from fastshower.geometry import load_geometry
from fastshower.simulate import gflash

FAKE_SAMPLING_FRACTION = 0.02


@pytest.fixture
def fake_gflash(monkeypatch):
    """A stand-in for fastshower.simulate.gflash that records its calls: each shower deposits exactly
    0.02 x primary energy, spread over the cells by the shared rng."""
    calls = []

    def simulate_showers(geometry, primary_energy, incident_angle, rng, *, particle="e-", params=None):
        g = load_geometry(geometry)
        calls.append((len(primary_energy), particle))
        cells = rng.exponential(1.0, size=(len(primary_energy), *g.shape))
        cells *= (FAKE_SAMPLING_FRACTION * primary_energy / cells.reshape(len(cells), -1).sum(axis=1))[:, None, None, None]
        return cells.astype(np.float32)

    monkeypatch.setattr(gflash, "simulate_showers", simulate_showers)
    return calls


def error_lines(err: str) -> list[str]:
    """The ``error: ...`` lines of stderr (a progress bar may precede them)."""
    return [line for line in err.splitlines() if line.startswith("error: ")]


def value(out: str, label: str) -> str:
    return re.search(rf"^{label}:\s*(.+)$", out, re.M).group(1)


def test_simulate_streams_batches_and_inspect_reports(cli, tmp_path, fake_gflash):
    path = tmp_path / "s.h5"
    code, out, err = cli("simulate", "--geometry", "clic51", "--energy", "10:100", "--angle", "60:120", "-n", 7,
                         "--batch-size", 3, "--format", "3dgan", "--particle", "gamma", "-o", path)
    assert code == 0, err
    assert [c[0] for c in fake_gflash] == [3, 3, 1] and {c[1] for c in fake_gflash} == {"gamma"}
    assert detect_layout(path) == "3dgan_variable_angle" and count_events(path) == 7
    s = read_showers(path)
    assert np.all((s.primary_energy >= 10) & (s.primary_energy <= 100))
    assert np.all((s.incident_angle >= math.radians(60)) & (s.incident_angle <= math.radians(120)))
    np.testing.assert_allclose(s.deposited_energy / s.primary_energy, FAKE_SAMPLING_FRACTION, rtol=1e-5)

    code, out, err = cli("inspect", path)
    assert code == 0, err
    assert value(out, "layout") == "3dgan_variable_angle" and value(out, "geometry") == "clic51"
    assert value(out, "events") == "7"
    lo, hi = map(float, re.findall(r"[\d.]+", value(out, "primary energy"))[:2])
    assert lo == pytest.approx(s.primary_energy.min(), rel=1e-3) and hi == pytest.approx(s.primary_energy.max(), rel=1e-3)
    assert float(value(out, r"sampling fraction \(mean deposited / primary\)")) == pytest.approx(0.02, rel=1e-4)
    assert "attr simulator: gflash" in out and "attr seed: 0" in out and "attr particle: gamma" in out


def test_simulate_is_reproducible_from_its_seed(cli, tmp_path, fake_gflash):
    runs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        code, _, err = cli("simulate", "-n", 4, "--seed", seed, "-o", tmp_path / f"{name}.h5")
        assert code == 0, err
        runs[name] = read_showers(tmp_path / f"{name}.h5")
    np.testing.assert_array_equal(runs["a"].showers, runs["b"].showers)
    np.testing.assert_array_equal(runs["a"].primary_energy, runs["b"].primary_energy)
    assert not np.array_equal(runs["a"].primary_energy, runs["c"].primary_energy)


def test_simulate_calochallenge_for_par04(cli, tmp_path, fake_gflash):
    path = tmp_path / "cc.h5"
    code, _, err = cli("simulate", "--geometry", "par04_ds2", "--energy", "1:1000:log", "-n", 3,
                       "--format", "calochallenge", "-o", path)
    assert code == 0, err
    with h5py.File(path) as f:
        assert f["showers"].shape == (3, 6480)
        np.testing.assert_allclose(f["showers"][:].sum(axis=1) / f["incident_energies"][:, 0],
                                   FAKE_SAMPLING_FRACTION / 0.033, rtol=1e-5)


@pytest.mark.parametrize("args, message", [
    (("--energy", "1:1000"), "primary energy 1-1000 GeV is outside the allowed range 2-500 GeV"),
    (("--angle", "60"), "incident angle 60-60 deg is outside the allowed range 90-90 deg"),
    (("--geometry", "nosuch"), "unknown geometry 'nosuch'"),
    (("--format", "root"), "unknown format 'root'"),
    (("--format", "calochallenge"), "calochallenge layout holds cylindrical"),
    (("--particle", "mu-"), "unknown particle 'mu-'"),
    (("-n", "0"), "-n and --batch-size must be >= 1"),
])
def test_simulate_bad_input_is_one_line_with_exit_code_2(cli, tmp_path, fake_gflash, args, message):
    code, out, err = cli("simulate", "-n", 2, *args, "-o", tmp_path / "x.h5")
    assert code == 2
    assert error_lines(err) == [error_lines(err)[0]] and message in error_lines(err)[0]
    assert not (tmp_path / "x.h5").exists()


def test_simulate_failure_mid_run_leaves_no_file(cli, tmp_path, monkeypatch):
    def simulate_showers(geometry, primary_energy, incident_angle, rng, *, particle="e-", params=None):
        simulate_showers.calls += 1
        if simulate_showers.calls == 2:  # the second batch fails, after the first was written
            raise RuntimeError("simulation crashed")
        return np.zeros((len(primary_energy), 25, 25, 25), np.float32)

    simulate_showers.calls = 0
    monkeypatch.setattr(gflash, "simulate_showers", simulate_showers)
    with pytest.raises(RuntimeError, match="simulation crashed"):  # a defect keeps its traceback
        cli("simulate", "-n", 4, "--batch-size", 2, "-o", tmp_path / "x.h5")
    assert list(tmp_path.iterdir()) == []


# --- inspect: bad files --------------------------------------------------------------------------

def write_fixed_angle(path, ecal, energies):
    with h5py.File(path, "w") as f:
        f["ECAL"] = ecal
        f["target"] = np.stack([np.zeros(len(energies)), energies], axis=1)


def test_inspect_missing_file(cli, tmp_path):
    code, _, err = cli("inspect", tmp_path / "nope.h5")
    assert code == 2 and "shower file not found" in err


def test_inspect_glob_without_match(cli, tmp_path):
    code, _, err = cli("inspect", str(tmp_path / "EleEscan_*.h5"))
    assert code == 2 and "no file matches" in err


def test_inspect_not_hdf5(cli, tmp_path):
    (tmp_path / "x.h5").write_text("hello")
    code, _, err = cli("inspect", tmp_path / "x.h5")
    assert code == 2 and "is not a readable HDF5 file" in err


def test_inspect_unknown_layout_lists_the_keys(cli, tmp_path):
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["images"], f["labels"] = np.zeros((2, 3)), np.zeros(2)
    code, _, err = cli("inspect", tmp_path / "x.h5")
    assert code == 2 and "unknown shower layout, keys found: images, labels" in err


def test_inspect_shape_not_matching_the_geometry(cli, tmp_path, rng):
    write_fixed_angle(tmp_path / "x.h5", rng.exponential(1e-3, (2, 25, 25, 25)), [50.0, 60.0])
    code, _, err = cli("inspect", tmp_path / "x.h5", "--geometry", "clic51")
    assert code == 2 and "cells have shape (25, 25, 25) but geometry 'clic51' expects (51, 51, 25)" in err


def test_inspect_unknown_cell_shape(cli, tmp_path, rng):
    write_fixed_angle(tmp_path / "x.h5", rng.exponential(1e-3, (2, 10, 10, 10)), [50.0, 60.0])
    code, _, err = cli("inspect", tmp_path / "x.h5")
    assert code == 2 and "cannot tell the geometry from the cell shape (10, 10, 10)" in err


@pytest.mark.parametrize("spoil, message", [
    (lambda ecal, e: ecal.__setitem__((7, 3, 3, 3), np.nan), "event 7 has NaN or infinite cell energies"),
    (lambda ecal, e: ecal.__setitem__((8, 0, 0, 0), -1e-3), "event 8 has negative cell energies"),
    (lambda ecal, e: e.__setitem__(6, 900.0), "event 6 has primary energy 900 GeV, outside the range of geometry 'clic25',"),
    (lambda ecal, e: e.__setitem__(9, -5.0), "event 9 has primary energy -5 GeV"),
])
def test_inspect_checks_every_chunk(cli, tmp_path, rng, spoil, message):
    ecal, energies = rng.exponential(1e-3, (10, 25, 25, 25)), rng.uniform(10, 400, 10)
    spoil(ecal, energies)
    write_fixed_angle(tmp_path / "x.h5", ecal, energies)
    code, _, err = cli("inspect", tmp_path / "x.h5", "--chunk-size", 5)  # the bad event is in the second chunk
    assert code == 2 and error_lines(err) == [error_lines(err)[0]] and message in error_lines(err)[0]


def test_inspect_angle_outside_the_geometry(cli, tmp_path, rng):
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["ECAL"], f["energy"] = 50 * rng.exponential(1e-3, (3, 51, 51, 25)), [10.0, 20.0, 30.0]
        f["theta"] = np.radians([90.0, 30.0, 90.0])
    code, _, err = cli("inspect", tmp_path / "x.h5")
    assert code == 2 and "event 1 has incident angle 30 deg, outside the range of geometry 'clic51', 60-120 deg" in err


def test_inspect_datasets_of_different_lengths(cli, tmp_path, rng):
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["ECAL"], f["target"] = rng.exponential(1e-3, (4, 25, 25, 25)), np.full((3, 2), 50.0)
    code, _, err = cli("inspect", tmp_path / "x.h5")
    assert code == 2 and "datasets hold different numbers of events: ECAL 4, target 3" in err


def test_inspect_checks_a_calochallenge_binning(cli, tmp_path, fake_gflash):
    from fastshower.data import write_binning_xml
    from fastshower.geometry import PRESETS

    code, _, err = cli("simulate", "--geometry", "par04_ds3", "-n", 2, "--energy", "50", "--format", "calochallenge",
                       "-o", tmp_path / "cc.h5")
    assert code == 0, err
    write_binning_xml(PRESETS["par04_ds3"], tmp_path / "b3.xml")
    write_binning_xml(PRESETS["par04_ds2"], tmp_path / "b2.xml")
    code, out, _ = cli("inspect", tmp_path / "cc.h5", "--binning", tmp_path / "b3.xml")
    assert code == 0 and "matches geometry par04_ds3" in out and "events:           2" in out
    code, _, err = cli("inspect", tmp_path / "cc.h5", "--binning", tmp_path / "b2.xml")
    assert code == 2 and "layer 0: binning has 16 alpha bins, geometry 'par04_ds3' has 50" in err


def test_simulate_with_gflash_then_inspect(cli, tmp_path):
    """The real reference simulator: the file holds exactly what one seeded rng gives for the
    conditions, then the showers; inspect reports the file's sampling fraction."""
    from fastshower.conditions import sample_angles, sample_energies
    from fastshower.simulate.gflash import simulate_showers

    path = tmp_path / "g.h5"
    code, out, err = cli("simulate", "--geometry", "clic51", "--energy", "20:200", "--angle", "70:110", "-n", 6,
                         "--seed", 5, "--format", "3dgan", "-o", path)
    assert code == 0, err
    g = load_geometry("clic51")
    rng = np.random.default_rng(5)
    primary_energy = sample_energies("20:200", 6, rng, g.energy_range_gev)
    incident_angle = sample_angles("70:110", 6, rng, g.angle_range_rad)
    expected = simulate_showers(g, primary_energy, incident_angle, rng)
    s = read_showers(path)
    np.testing.assert_allclose(s.showers, expected, rtol=1e-6)
    np.testing.assert_array_equal(s.incident_angle, incident_angle)

    code, out, err = cli("inspect", path)
    assert code == 0, err
    assert value(out, "events") == "6" and value(out, "layout") == "3dgan_variable_angle"
    assert float(value(out, r"sampling fraction \(mean deposited / primary\)")) == pytest.approx(
        np.mean(s.deposited_energy / s.primary_energy), rel=1e-4)
