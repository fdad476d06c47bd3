"""Shower files: transforms, layouts, streaming, atomic writes, CaloChallenge binning."""

import math

import h5py
import numpy as np
import pytest

from fastshower.data import (ShowerWriter, check_binning, count_events, detect_layout, iter_showers,
                             measured_angle, pseudorapidity, read_binning_xml, read_showers, write_binning_xml,
                             write_showers)
from fastshower.data import transforms as T
from fastshower.geometry import PRESETS, Geometry, load_geometry, save_geometry
from fastshower.showers import ShowerSet


def make_set(rng, geometry="clic25", n=12, angle=None, attrs=None):
    g = PRESETS[geometry]
    showers = rng.exponential(1e-3, size=(n, *g.shape)).astype(np.float32)
    showers[showers < 5e-4] = 0  # sparse, like real showers
    primary_energy = rng.uniform(10, 400, n)
    lo, hi = g.angle_range_rad
    incident_angle = rng.uniform(lo, hi, n) if angle is None else np.full(n, angle)
    return ShowerSet(showers, primary_energy, incident_angle, g, dict(attrs or {}))


def tilted_line_shower(theta, shape=(51, 51, 25), y0=20.0):
    """Unit deposits on the line y = y0 + z * cot(theta) (index units), split linearly between the two
    neighbouring y cells so that each layer's y barycentre lies exactly on the line."""
    e = np.zeros(shape)
    x = shape[0] // 2
    for z in range(shape[2]):
        y = y0 + (z + 0.5) * math.cos(theta) / math.sin(theta) - 0.5  # cell index whose centre is i + 0.5
        i = int(math.floor(y))
        frac = y - i
        e[x, i, z] += (1 - frac) * (1 + z)
        e[x, i + 1, z] += frac * (1 + z)
    return e


# --- transforms ----------------------------------------------------------------------------------

@pytest.mark.parametrize("forward, inverse", [
    (T.gev_to_ecal_x50, T.ecal_x50_to_gev),
    (T.gev_to_mev, T.mev_to_gev),
    (lambda x: T.deposit_gev_to_calochallenge_mev(x, 0.033), lambda x: T.calochallenge_mev_to_deposit_gev(x, 0.033)),
    (T.to_channels_last, T.from_channels_last),
    (T.to_channels_first, T.from_channels_first),
    (T.power_transform, T.inverse_power_transform),
    (T.flatten_calochallenge, lambda x: T.unflatten_calochallenge(x, (9, 16, 45))),
])
def test_transforms_invert(rng, forward, inverse):
    x = rng.exponential(1e-2, size=(3, 9, 16, 45)).astype(np.float32)
    y = forward(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(inverse(y), x, rtol=2e-6, atol=0)


def test_transform_units():
    one_gev = np.ones((1, 2, 2, 2), np.float32)
    assert T.gev_to_ecal_x50(one_gev).max() == 50
    assert T.gev_to_mev(np.array([2.5]))[0] == 2500
    # 1 GeV in the silicon of Par04 is 1000 / 0.033 = 30303 MeV in CaloChallenge units
    assert T.deposit_gev_to_calochallenge_mev(np.array([1.0]), 0.033)[0] == pytest.approx(30303.03, rel=1e-6)
    assert T.power_transform(np.array([16.0]), 0.5)[0] == 4
    assert T.to_channels_last(one_gev).shape == (1, 2, 2, 2, 1)
    assert T.to_channels_first(one_gev).shape == (1, 1, 2, 2, 2)
    with pytest.raises(ValueError, match="non-negative"):
        T.power_transform(np.array([-1.0]))
    with pytest.raises(ValueError, match="sampling fraction"):
        T.deposit_gev_to_calochallenge_mev(one_gev, 0.0)


def test_calochallenge_voxel_order_is_layer_alpha_r_with_r_fastest():
    showers = np.zeros((1, 9, 16, 45), np.float32)
    showers[0, 2, 3, 5] = 1.0  # r = 2, alpha = 3, layer = 5
    flat = T.flatten_calochallenge(showers)
    assert flat.shape == (1, 6480)
    assert np.flatnonzero(flat[0]).tolist() == [5 * 16 * 9 + 3 * 9 + 2]
    assert flat.reshape(1, 45, 16, 9)[0, 5, 3, 2] == 1.0


# --- 3DGAN measured angle ------------------------------------------------------------------------

@pytest.mark.parametrize("theta_deg", [60.0, 75.0, 90.0, 104.0, 120.0])
def test_measured_angle_of_a_straight_tilted_shower_is_its_angle(theta_deg):
    theta = math.radians(theta_deg)
    shower = tilted_line_shower(theta)
    assert measured_angle(shower[None])[0] == pytest.approx(theta, abs=1e-9)
    # the energy unit does not matter (x50 files give the same mtheta)
    assert measured_angle(50 * shower[None])[0] == pytest.approx(theta, abs=1e-9)


def test_measured_angle_of_an_empty_event_is_nan():
    assert np.isnan(measured_angle(np.zeros((1, 5, 5, 5)))[0])


def test_pseudorapidity():
    np.testing.assert_allclose(pseudorapidity(np.radians([90.0, 60.0, 120.0])), [0.0, 0.549306, -0.549306], atol=1e-6)


# --- round trips ---------------------------------------------------------------------------------

def test_native_round_trip_is_identical_and_keeps_provenance(tmp_path, rng):
    s = make_set(rng, "clic51", attrs={"simulator": "gflash", "seed": 7, "model": "none"})
    path = tmp_path / "native.h5"
    write_showers(path, s)
    assert detect_layout(path) == "native" and count_events(path) == len(s)
    r = read_showers(path)
    np.testing.assert_array_equal(r.showers, s.showers)
    np.testing.assert_array_equal(r.primary_energy, s.primary_energy)
    np.testing.assert_array_equal(r.incident_angle, s.incident_angle)
    assert r.geometry.name == "clic51"
    assert r.attrs["simulator"] == "gflash" and r.attrs["seed"] == 7 and r.attrs["fastshower_version"]
    with h5py.File(path) as f:
        assert f["showers"].compression == "gzip"
        assert f["showers"].chunks[1:] == (51, 51, 25)  # whole events per chunk
        assert f.attrs["geometry"] == "clic51" and "sampling_fraction" in f.attrs["geometry_yaml"]
        assert f.attrs["fastshower_format_version"] == 1


def test_fixed_angle_3dgan_round_trip_in_gev(tmp_path, rng):
    s = make_set(rng, "clic25")
    path = tmp_path / "fixed.h5"
    write_showers(path, s, format="3dgan")
    with h5py.File(path) as f:
        assert set(f.keys()) == {"ECAL", "target"}
        np.testing.assert_array_equal(f["ECAL"][:], s.showers)  # GeV, as in EleEscan files
        np.testing.assert_array_equal(f["target"][:, 1], s.primary_energy)
    r = read_showers(path)
    assert detect_layout(path) == "3dgan_fixed_angle"
    np.testing.assert_array_equal(r.showers, s.showers)
    np.testing.assert_array_equal(r.primary_energy, s.primary_energy)
    np.testing.assert_allclose(r.incident_angle, math.pi / 2)


def test_variable_angle_3dgan_round_trip_x50(tmp_path, rng):
    s = make_set(rng, "clic51", attrs={"particle": "e-"})
    path = tmp_path / "angle.h5"
    write_showers(path, s, format="3dgan")
    with h5py.File(path) as f:
        assert {"ECAL", "energy", "theta", "mtheta", "sum", "eta", "pdgID"} <= set(f.keys())
        np.testing.assert_allclose(f["ECAL"][:], 50 * s.showers, rtol=1e-6)
        np.testing.assert_allclose(f["sum"][:], 50 * s.deposited_energy, rtol=1e-5)
        np.testing.assert_allclose(f["mtheta"][:], measured_angle(s.showers))
        np.testing.assert_allclose(f["eta"][:], pseudorapidity(s.incident_angle))
        assert set(f["pdgID"][:]) == {11}
    r = read_showers(path)
    assert detect_layout(path) == "3dgan_variable_angle"
    np.testing.assert_allclose(r.showers, s.showers, rtol=1e-6)
    np.testing.assert_array_equal(r.primary_energy, s.primary_energy)
    np.testing.assert_array_equal(r.incident_angle, s.incident_angle)


def test_calochallenge_round_trip_mev_over_sampling_fraction(tmp_path, rng):
    s = make_set(rng, "par04_ds2", n=6)
    path = tmp_path / "cc.h5"
    write_showers(path, s, format="calochallenge")
    with h5py.File(path) as f:
        assert f["incident_energies"].shape == (6, 1) and f["showers"].shape == (6, 6480)
        np.testing.assert_allclose(f["incident_energies"][:, 0], 1000 * s.primary_energy)
        # voxel sum ~ incident energy scale: deposit / 0.033 in MeV
        np.testing.assert_allclose(f["showers"][:].sum(axis=1), s.deposited_energy * 1000 / 0.033, rtol=1e-5)
        np.testing.assert_allclose(f["showers"][:].reshape(6, 45, 16, 9)[:, 7, 3, 2],
                                   s.showers[:, 2, 3, 7] * 1000 / 0.033, rtol=1e-6)
    r = read_showers(path)
    assert r.geometry.name == "par04_ds2" and detect_layout(path) == "calochallenge"
    np.testing.assert_allclose(r.showers, s.showers, rtol=2e-6)
    np.testing.assert_allclose(r.primary_energy, s.primary_energy, rtol=1e-12)
    np.testing.assert_allclose(r.incident_angle, math.pi / 2)


def test_user_defined_geometry_travels_with_its_file(tmp_path, rng):
    base = PRESETS["clic25"].model_dump()
    custom = Geometry.model_validate({**base, "name": "mycal", "shape": (7, 9, 25), "energy_range_gev": (1, 50)})
    save_geometry(custom, tmp_path / "mycal.yaml")
    s = ShowerSet(rng.exponential(1e-3, (4, 7, 9, 25)), rng.uniform(1, 50, 4), np.full(4, math.pi / 2), custom)
    write_showers(tmp_path / "c.h5", s, geometry=load_geometry(tmp_path / "mycal.yaml"))
    r = read_showers(tmp_path / "c.h5")  # no geometry given: read from the file
    assert r.geometry.name == "mycal" and r.showers.shape == (4, 7, 9, 25)
    write_showers(tmp_path / "copy.h5", r)  # the YAML travels in attrs, so a re-write needs no geometry either
    assert read_showers(tmp_path / "copy.h5").geometry.name == "mycal"


# --- public files as they are --------------------------------------------------------------------

def test_reads_the_public_fixed_angle_layout(tmp_path, rng):
    n = 8
    ecal = rng.exponential(1e-3, (n, 25, 25, 25))  # float64, GeV
    target = np.stack([np.full(n, 11.0), rng.uniform(10, 500, n), np.zeros(n), np.zeros(n)], axis=1)
    path = tmp_path / "EleEscan_1_1.h5"
    with h5py.File(path, "w") as f:  # keys as in EleEscan_*.h5, no fastshower attributes
        f["ECAL"], f["target"], f["HCAL"] = ecal, target, rng.exponential(1e-3, (n, 5, 5, 60))
    r = read_showers(path)
    assert r.geometry.name == "clic25" and r.showers.dtype == np.float32
    np.testing.assert_allclose(r.showers, ecal, rtol=1e-6)
    np.testing.assert_array_equal(r.primary_energy, target[:, 1])
    np.testing.assert_allclose(r.incident_angle, math.pi / 2)


def test_reads_the_old_energy_n_1_k_layout(tmp_path, rng):
    path = tmp_path / "old.h5"
    energy = np.zeros((3, 1, 5))
    energy[:, 0, 1] = [20.0, 200.0, 450.0]
    with h5py.File(path, "w") as f:
        f["ECAL"], f["energy"] = rng.exponential(1e-3, (3, 25, 25, 25)), energy
    assert detect_layout(path) == "3dgan_fixed_angle"
    np.testing.assert_array_equal(read_showers(path).primary_energy, [20.0, 200.0, 450.0])


def test_reads_the_public_variable_angle_layout(tmp_path, rng):
    n = 5
    ecal_x50 = 50 * rng.exponential(1e-3, (n, 51, 51, 25))
    theta = np.radians(rng.uniform(60, 120, n))
    path = tmp_path / "EleEscan_RandomAngle_1_1.h5"
    with h5py.File(path, "w") as f:
        f["ECAL"], f["energy"], f["theta"] = ecal_x50, rng.uniform(2, 500, n), theta
        f["ECAL_E"], f["HCAL"], f["phi"], f["pdgID"] = ecal_x50.sum(axis=(1, 2, 3)), np.zeros((n, 5, 5, 60)), theta, 11
    r = read_showers(path)
    assert r.geometry.name == "clic51"
    np.testing.assert_allclose(r.showers, ecal_x50 / 50, rtol=1e-6)  # back to deposited GeV
    np.testing.assert_array_equal(r.incident_angle, theta)


# --- streaming -----------------------------------------------------------------------------------

def test_streaming_chunks_concatenate_to_the_whole(tmp_path, rng):
    s = make_set(rng, "clic25", n=23)
    path = tmp_path / "big.h5"
    write_showers(path, s, format="3dgan")
    chunks = list(iter_showers(path, chunk_size=5))
    assert [len(c) for c in chunks] == [5, 5, 5, 5, 3]
    whole = ShowerSet.concatenate(chunks)
    np.testing.assert_array_equal(whole.showers, s.showers)
    np.testing.assert_array_equal(whole.primary_energy, s.primary_energy)
    assert len(read_showers(path, max_events=7, chunk_size=5)) == 7


def test_glob_and_list_of_files_read_in_sorted_order(tmp_path, rng):
    a, b = make_set(rng, n=4), make_set(rng, n=3)
    write_showers(tmp_path / "EleEscan_1_2.h5", b, format="3dgan")
    write_showers(tmp_path / "EleEscan_1_1.h5", a, format="3dgan")
    pattern = str(tmp_path / "EleEscan_*.h5")
    assert count_events(pattern) == 7
    r = read_showers(pattern)
    np.testing.assert_array_equal(r.primary_energy, np.concatenate([a.primary_energy, b.primary_energy]))
    r2 = read_showers([tmp_path / "EleEscan_1_2.h5", tmp_path / "EleEscan_1_1.h5"])
    np.testing.assert_array_equal(r2.primary_energy[:3], b.primary_energy)


def test_a_file_named_like_a_glob_is_read_as_itself(tmp_path, rng):
    from fastshower.data import read_events

    a, b = make_set(rng, n=4), make_set(rng, n=3)
    write_showers(tmp_path / "run[1].h5", a, format="3dgan")
    write_showers(tmp_path / "run1.h5", b, format="3dgan")  # what the pattern run[1].h5 matches
    np.testing.assert_array_equal(read_showers(tmp_path / "run[1].h5").primary_energy, a.primary_energy)
    np.testing.assert_array_equal(read_events(tmp_path / "run[1].h5", 1, 3).primary_energy, a.primary_energy[1:3])
    (tmp_path / "run1.h5").unlink()
    assert count_events(str(tmp_path / "run[1].h5")) == 4


def test_writer_streams_blocks_into_one_file(tmp_path, rng):
    blocks = [make_set(rng, "par04_ds2", n=k) for k in (3, 4, 2)]
    with ShowerWriter(tmp_path / "s.h5", PRESETS["par04_ds2"], format="calochallenge", attrs={"seed": 1}) as w:
        for block in blocks:
            w.write(block)
        assert not (tmp_path / "s.h5").exists()  # appears only on close
    r = read_showers(tmp_path / "s.h5")
    np.testing.assert_allclose(r.showers, ShowerSet.concatenate(blocks).showers, rtol=2e-6)


# --- atomicity and bad input ---------------------------------------------------------------------

def test_exception_mid_write_leaves_no_file(tmp_path, rng):
    with pytest.raises(RuntimeError, match="interrupted"):
        with ShowerWriter(tmp_path / "x.h5", PRESETS["clic25"]) as w:
            w.write(make_set(rng, n=3))
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    bad = make_set(rng, n=3)
    bad.showers[1, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="event 1 has NaN"):
        write_showers(tmp_path / "y.h5", bad)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("geometry, format, angle, message", [
    ("par04_ds2", "3dgan", math.pi / 2, "cylindrical"),
    ("clic25", "calochallenge", math.pi / 2, "cartesian"),
    ("clic51", "calochallenge", math.pi / 2, "cartesian"),
    ("clic51", "3dgan_fixed_angle", math.pi / 2, "normal incidence only"),
])
def test_writers_refuse_layouts_that_cannot_hold_the_geometry(tmp_path, rng, geometry, format, angle, message):
    with pytest.raises(ValueError, match=message):
        write_showers(tmp_path / "x.h5", make_set(rng, geometry, n=2, angle=angle), format=format)


def test_writer_checks_shape_energy_and_angle(tmp_path, rng):
    with pytest.raises(ValueError, match="expected \\(n, 51, 51, 25\\)"):
        write_showers(tmp_path / "x.h5", make_set(rng, "clic25", n=2), geometry=PRESETS["clic51"])
    s = make_set(rng, "clic25", n=2)
    s.primary_energy[1] = 900.0
    with pytest.raises(ValueError, match="event 1 has primary energy 900 GeV, outside the range .* 2-500 GeV"):
        write_showers(tmp_path / "x.h5", s)
    s = make_set(rng, "clic51", n=2)
    s.incident_angle[0] = math.radians(30)
    with pytest.raises(ValueError, match="event 0 has incident angle 30 deg, outside the range .* 60-120 deg"):
        write_showers(tmp_path / "x.h5", s, format="3dgan")
    assert list(tmp_path.iterdir()) == []


def test_calochallenge_binning_xml_round_trip_and_check(tmp_path):
    ds2, ds3 = PRESETS["par04_ds2"], PRESETS["par04_ds3"]
    path = tmp_path / "binning_dataset_2.xml"
    write_binning_xml(ds2, path)
    text = path.read_text()
    assert '<Bin pid="11" name="electron">' in text
    assert '<Layer id="44" r_edges="0,4.65,9.3,13.95,18.6,23.25,27.9,32.55,37.2,41.85" n_bin_alpha="16" />' in text
    layers = read_binning_xml(path)
    assert len(layers) == 45 and sum(lb.n_voxels for lb in layers) == 6480
    check_binning(layers, ds2)
    with pytest.raises(ValueError, match="layer 0: binning has 16 alpha bins, geometry 'par04_ds3' has 50"):
        check_binning(layers, ds3)
    with pytest.raises(FileNotFoundError):
        read_binning_xml(tmp_path / "missing.xml")
    (tmp_path / "bad.xml").write_text("<Bins><Bin pid='11'><Layer id='0' /></Bin></Bins>")
    with pytest.raises(ValueError, match="needs id, r_edges"):
        read_binning_xml(tmp_path / "bad.xml")


@pytest.mark.parametrize("compression", ["lzf", None])
def test_other_compressions_round_trip(tmp_path, rng, compression):
    s = make_set(rng, "par04_ds2", n=3)
    write_showers(tmp_path / "x.h5", s, compression=compression)
    with h5py.File(tmp_path / "x.h5") as f:
        assert f["showers"].compression == compression
    np.testing.assert_array_equal(read_showers(tmp_path / "x.h5").showers, s.showers)


def test_unknown_compression_is_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown compression 'zstd'"):
        ShowerWriter(tmp_path / "x.h5", PRESETS["clic25"], compression="zstd")


def test_read_events_gives_a_checked_random_access_slice(tmp_path, rng):
    from fastshower.data import read_events

    s = make_set(rng, "clic51", n=9)
    write_showers(tmp_path / "a.h5", s, format="3dgan")
    part = read_events(tmp_path / "a.h5", 4, 7)
    np.testing.assert_allclose(part.showers, s.showers[4:7], rtol=1e-6)
    np.testing.assert_array_equal(part.incident_angle, s.incident_angle[4:7])
    with pytest.raises(ValueError, match="event range 5:12 is outside the file's 9 events"):
        read_events(tmp_path / "a.h5", 5, 12)
