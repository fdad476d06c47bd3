"""Geant4 integration: placement, shower-source batching, data-set checks (always), and the Geant4
application in fast mode (skipped with the reason where geant4_pybind cannot be imported).

Geant4's run manager is a process-wide singleton, so every Geant4 scenario runs in a subprocess
that saves its results to an .npz file; the checks run here.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import probe_geant4

from fastshower.geometry import PRESETS, load_geometry
from fastshower.simulate.geant4.datasets import (
    STUB_MARKER,
    datasets_message,
    find_dataset,
    missing_datasets,
    require_datasets,
)
from fastshower.simulate.geant4.placement import (
    check_energy_conservation,
    condition_to_direction,
    direction_to_condition,
    place_showers,
)
from fastshower.simulate.geant4.sources import batch_seed

G4_OK, G4_REASON = probe_geant4()
needs_geant4 = pytest.mark.skipif(not G4_OK, reason=f"geant4_pybind unusable here: {G4_REASON}")
DATA_VARS = ("GEANT4_DATA_DIR", "G4LEDATA", "G4ENSDFSTATEDATA", "G4PARTICLEXSDATA", "G4LEVELGAMMADATA",
             "G4SAIDXSDATA")


@pytest.fixture
def no_datasets(monkeypatch, tmp_path):
    """An environment without any Geant4 data set (whatever the machine has)."""
    for var in DATA_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setenv("FASTSHOWER_G4DATA_AUTOBUILD", "0")  # no offline set built (tests/test_g4data.py tests that)
    return tmp_path


# ------------------------------------------------------------------------------------------------
# pure numpy: conventions and placement

def test_direction_convention_round_trip(rng):
    theta = rng.uniform(0.1, math.pi - 0.1, 200)
    psi = rng.uniform(-math.pi / 2 + 1e-3, math.pi / 2, 200)
    d = condition_to_direction(theta, psi)
    assert np.allclose(np.linalg.norm(d, axis=1), 1)
    t2, p2 = direction_to_condition(d)
    assert np.allclose(t2, theta) and np.allclose(p2, psi)
    # the project convention: theta w.r.t. y, tilt in the y-z plane, 90 deg = along +z
    assert np.allclose(condition_to_direction(math.radians(60)), [[0, 0.5, math.sqrt(3) / 2]])
    assert np.allclose(direction_to_condition(np.array([[0, 0, 1.0]])), ([math.pi / 2], [0]))
    t, p = direction_to_condition(np.array([[0, -0.5, math.sqrt(3) / 2]]))  # tilted towards -y
    assert np.isclose(t[0], math.radians(120)) and p[0] == 0


@pytest.mark.parametrize("name", ["clic25", "par04_ds2"])
def test_placement_at_the_centre_is_the_identity(name, rng):
    g = load_geometry(name)
    showers = rng.gamma(0.3, 1.0, (3, *g.shape)).astype(np.float32)
    cells, leaked = place_showers(g, showers, np.zeros((3, 2)))
    assert np.array_equal(cells, showers)
    assert np.all(leaked == 0)


def test_placement_shifts_sums_events_and_counts_leakage(rng):
    g = load_geometry("clic25")
    dx = g.cell_size_mm[0]
    showers = rng.random((3, *g.shape)).astype(np.float32)
    # primary 0 enters 2 cells towards +x (plus 1 mm, less than half a cell); 1 and 2 share event 1,
    # 2 entering in layer 3
    cells, leaked = place_showers(g, showers, [[2 * dx + 1.0, 0.0], [0, -dx], [0, 0]], entry_layer=[0, 0, 3],
                                  event_index=[0, 1, 1], n_events=2)
    assert np.allclose(cells[0, 2:], showers[0, :-2])
    assert np.allclose(cells[0, :2], 0)
    assert np.isclose(leaked[0], showers[0, -2:].sum(dtype=np.float64), rtol=1e-6)
    expected1 = np.zeros(g.shape)
    expected1[:, :-1] += showers[1, :, 1:]
    expected1[:, :, 3:] += showers[2, :, :, :-3]
    assert np.allclose(cells[1], expected1, atol=1e-6)
    generated = [showers[0].sum(dtype=np.float64), showers[1:].sum(dtype=np.float64)]
    assert check_energy_conservation(generated, cells.reshape(2, -1).sum(1, dtype=np.float64), leaked) < 1e-6
    with pytest.raises(RuntimeError, match="energy not conserved in event 1"):
        check_energy_conservation(generated, cells.reshape(2, -1).sum(1, dtype=np.float64) * [1, 0.99], leaked)


def test_placement_rotates_the_tilt_plane_by_psi():
    g = load_geometry("clic51")
    nx, ny, _ = g.shape
    shower = np.zeros((1, *g.shape), np.float32)
    shower[0, nx // 2, ny // 2 + 4, 10] = 1.0  # 4 cells towards +y in the model frame (tilt in y-z)
    for psi, cell in [(0.0, (nx // 2, ny // 2 + 4)), (math.pi / 2, (nx // 2 + 4, ny // 2)),
                      (-math.pi / 2, (nx // 2 - 4, ny // 2))]:
        cells, leaked = place_showers(g, shower, [[0.0, 0.0]], psi=[psi])
        assert cells[0, cell[0], cell[1], 10] == 1.0 and leaked[0] == 0


def test_cylindrical_placement_off_axis_moves_the_barycentre(rng):
    g = load_geometry("par04_ds3")
    showers = rng.random((1, *g.shape)).astype(np.float32) * 1e-3
    showers[0, 0] += 1.0  # a dense core in the innermost ring
    r, alpha = g.cell_centres_mm()
    x = r[:, None] * np.cos(alpha)[None, :]
    cells, leaked = place_showers(g, showers, [[6.0, 0.0]])
    w = cells[0].sum(axis=2)
    assert 3.0 < (w * x).sum() / w.sum() < 9.0
    assert np.isclose(cells.sum(dtype=np.float64) + leaked[0], showers.sum(dtype=np.float64), rtol=1e-6)


def test_batch_seeds_are_reproducible_and_distinct():
    assert batch_seed(7, 3) == batch_seed(7, 3)
    assert len({batch_seed(7, b) for b in range(100)} | {batch_seed(8, 0)}) == 101


# ------------------------------------------------------------------------------------------------
# data sets

def test_missing_datasets_are_listed_in_one_line(no_datasets):
    missing = [d.name for d in missing_datasets("em")]
    assert missing == ["G4EMLOW", "G4ENSDFSTATE"]
    assert missing_datasets("transport") == []
    msg = datasets_message(missing_datasets("FTFP_BERT"), "FTFP_BERT")
    assert "\n" not in msg
    for word in ("G4EMLOW8.8", "$G4LEDATA", "G4ENSDFSTATE3.0", "G4PARTICLEXS", "GEANT4_DATA_DIR",
                 "geant4-config --install-datasets"):
        assert word in msg
    with pytest.raises(RuntimeError, match="G4EMLOW"):
        require_datasets("em")


def test_installed_datasets_are_found_and_never_the_stub(no_datasets, monkeypatch):
    data = no_datasets / "data"
    (data / "G4EMLOW8.8").mkdir(parents=True)
    monkeypatch.setenv("GEANT4_DATA_DIR", str(data))
    assert find_dataset("G4EMLOW") == data / "G4EMLOW8.8"
    assert [d.name for d in missing_datasets("em")] == ["G4ENSDFSTATE"]
    stub = no_datasets / "stub"
    stub.mkdir()
    (stub / STUB_MARKER).write_text("")
    monkeypatch.setenv("G4ENSDFSTATEDATA", str(stub))
    assert find_dataset("G4ENSDFSTATE") is None
    real = no_datasets / "ensdf"
    real.mkdir()
    monkeypatch.setenv("G4ENSDFSTATEDATA", str(real))  # the user's own setting wins over the default location
    assert find_dataset("G4ENSDFSTATE") == real and missing_datasets("em") == []


def test_full_mode_without_datasets_gives_the_message_not_a_crash(no_datasets, cli, tmp_path):
    code, out, err = cli("g4run", "--mode", "full", "-g", "clic25", "-n", "2", "-o", tmp_path / "full.h5")
    assert code == 2
    assert err.startswith("error: Geant4 em physics needs data sets that were not found: G4EMLOW8.8")
    assert "G4ENSDFSTATE3.0" in err and "GEANT4_DATA_DIR" in err
    assert not (tmp_path / "full.h5").exists()
    from fastshower.simulate.geant4.app import Gun, run_geant4

    with pytest.raises(RuntimeError, match="G4PARTICLEXS"):
        run_geant4(PRESETS["clic25"], 1, Gun(), mode="full", physics="FTFP_BERT")


# ------------------------------------------------------------------------------------------------
# the Geant4 application (subprocesses)

PRELUDE = """
import json, math, sys
import numpy as np
from fastshower.geometry import PRESETS, load_geometry
from fastshower.simulate.geant4.app import Gun, get_app, run_geant4

def pencil_source(geometry):
    # all energy on the shower axis: model cell column x = centre, y = centre + depth*cot(theta)/dy
    g = geometry
    nx, ny, nz = g.shape
    depth = g.layer_centres_mm()
    frac = np.exp(-0.5 * ((np.arange(nz) - 8) / 4.0) ** 2)
    frac /= frac.sum()
    def source(energy, theta, seed):
        out = np.zeros((len(energy), *g.shape), np.float32)
        for n, (e, t) in enumerate(zip(energy, theta)):
            iy = np.clip(np.round(depth / math.tan(t) / g.cell_size_mm[1]).astype(int) + ny // 2, 0, ny - 1)
            out[n, nx // 2, iy, np.arange(nz)] = 0.02 * e * frac
        return out
    return source

def noise_source(geometry):
    g = geometry
    def source(energy, theta, seed):
        rng = np.random.default_rng(seed)
        out = rng.gamma(0.2, 1.0, (len(energy), *g.shape)).astype(np.float32)
        scale = 0.02 * np.asarray(energy) / out.reshape(len(energy), -1).sum(1)
        return (out * scale[:, None, None, None]).astype(np.float32)
    return source

def save(path, result, **extra):
    np.savez(path, showers=result.showers.showers, primary_energy=result.showers.primary_energy,
             incident_angle=result.showers.incident_angle, leaked=result.leaked_gev,
             **{"rec_" + k: v for k, v in result.records.items()}, **extra)
    return dict(timing=result.timing, max_dev=result.max_energy_deviation, n_fast=result.n_fast_primaries,
                attrs=result.attrs)
"""


def _run_scenario(tmp_path: Path, body: str, timeout: int = 240) -> dict:
    script = PRELUDE + textwrap.dedent(body)
    env = dict(os.environ)
    env.setdefault("XDG_CACHE_HOME", str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=tmp_path)
    assert proc.returncode == 0, f"scenario failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@needs_geant4
def test_fast_mode_100_events_equal_the_source_placed_outside_geant4(tmp_path):
    """Two primaries per event (an e- at the centre, a gamma two cells off), a small untrained
    3DGAN as the shower source, batches of 40 events: the run's cells equal the generator's output
    (same seeds) placed by the same code outside Geant4, energy is conserved per event, and the
    Geant4 scorer's cell indexing matches the shower arrays."""
    pytest.importorskip("torch")
    out = _run_scenario(tmp_path, """
        import torch
        torch.set_num_threads(1)
        from fastshower.models.registry import build_generator
        from fastshower.infer.sources import module_source
        torch.manual_seed(0)
        model = build_generator("gan3d_clic25", width=0.25)
        torch.save(model.state_dict(), sys.argv[1] + "/model.pt")
        guns = [Gun("e-", np.linspace(20, 200, 100), math.pi / 2),
                Gun("gamma", 50.0, math.pi / 2, entry_mm=(2 * 5.1 + 1.0, -5.1))]
        result = run_geant4(PRESETS["clic25"], 100, guns, module_source(model), seed=11, batch_events=40, threshold_gev=1.0)
        g = load_geometry("clic25")
        edges = g.layer_edges_mm()
        z_active = lambda k: edges[k] + (2.1 if k < 17 else 4.2) + 0.25  # centre of layer k's silicon
        pts = np.array([[0, 0, z_active(0)], [5.1, -2 * 5.1, z_active(0)], [-12 * 5.1, 12 * 5.1, z_active(20)],
                        [0, 0, 1.0], [0, 0, -3.0], [200.0, 0, 2.35]])
        idx = get_app(PRESETS["clic25"]).cell_index_at(pts)
        errors = []
        for bad in (lambda e, t, s: np.zeros((len(e), 3, 3, 3)), lambda e, t, s: np.zeros((len(e), 25, 25, 25))):
            try:
                run_geant4(PRESETS["clic25"], 2, Gun(), bad, batch_events=1)  # the source is called inside the event loop
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
        out = save(sys.argv[1] + "/fast.npz", result, cells=idx)
        out["errors"] = errors
        print(json.dumps(out))
    """)
    import torch

    from fastshower.infer.sources import module_source
    from fastshower.models.registry import build_generator

    r = np.load(tmp_path / "fast.npz")
    assert out["n_fast"] == 200 and r["showers"].shape == (100, 25, 25, 25)
    assert out["attrs"]["nuclide_table"] in ("empty", "user", "dataset")
    assert np.allclose(r["primary_energy"], np.linspace(20, 200, 100) + 50.0)
    # primaries as Geant4 delivered them: both at the face, normal incidence, exact energies
    assert np.allclose(r["rec_z_mm"], 0, atol=1e-9) and np.allclose(r["rec_theta_rad"], math.pi / 2)
    assert np.all(r["rec_entry_layer"] == 0) and np.allclose(r["rec_psi_rad"], 0)
    assert sorted(set(r["rec_pdg"].tolist())) == [11, 22]

    model = build_generator("gan3d_clic25", width=0.25)
    model.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    source = module_source(model)
    expected, leaked = [], []
    for b, (start, stop) in enumerate([(0, 40), (40, 80), (80, 100)]):
        sel = (r["rec_event"] >= start) & (r["rec_event"] < stop)
        gen = source(r["rec_energy_gev"][sel], r["rec_theta_rad"][sel], batch_seed(11, b))
        assert np.all(r["rec_batch"][sel] == b)
        entry = np.stack([r["rec_x_mm"][sel], r["rec_y_mm"][sel]], axis=1)
        assert np.allclose(entry[r["rec_pdg"][sel] == 22], [10.2 + 1.0, -5.1], atol=1e-6)
        cells, lk = place_showers(PRESETS["clic25"], gen, entry, event_index=r["rec_event"][sel] - start, n_events=stop - start)
        expected.append(cells)
        leaked.append(lk)
        generated = np.bincount(r["rec_event"][sel] - start, weights=gen.reshape(len(gen), -1).sum(1, dtype=np.float64))
        total = r["showers"][start:stop].reshape(stop - start, -1).sum(1, dtype=np.float64) + r["leaked"][start:stop]
        assert np.allclose(total, generated, rtol=1e-5)
    assert np.allclose(r["showers"], np.concatenate(expected), rtol=1e-6, atol=1e-9)
    assert np.allclose(r["leaked"], np.concatenate(leaked))
    assert out["max_dev"] < 1e-5
    # a bad shower source is reported; Geant4 was left mid-event, so the next run is refused
    assert out["errors"][0].startswith("ValueError: shower source returned shape (1, 3, 3, 3), expected (1, 25, 25, 25)")
    assert out["errors"][1].startswith("RuntimeError: an earlier Geant4 run in this process failed")
    # Geant4's scorer cells are the shower array's cells (i = x, j = y, k = layer); -1 = not active
    assert r["cells"].tolist() == [[12, 12, 0], [13, 10, 0], [0, 24, 20], [-1, -1, -1], [-1, -1, -1], [-1, -1, -1]]


@needs_geant4
def test_tilted_primaries_land_in_the_right_cells(tmp_path):
    """60 deg in the y-z plane (psi = 0) and in the x-z plane (psi = 90 deg), entering 2 cells off
    centre: the barycentre of each layer follows entry + depth cot(theta) along y, resp. x."""
    out = _run_scenario(tmp_path, """
        res = {}
        for name, psi in (("yz", 0.0), ("xz", math.pi / 2)):
            gun = Gun("e-", 100.0, math.radians(60), psi_rad=psi, entry_mm=(2 * 5.1, -2 * 5.1), distance_mm=50.0)
            result = run_geant4(PRESETS["clic51"], 10, gun, pencil_source(PRESETS["clic51"]), seed=3, batch_events=4)
            res[name] = save(sys.argv[1] + f"/{name}.npz", result)
        from fastshower.simulate.geant4.sources import gflash_source
        for name, psi in (("gflash_yz", 0.0), ("gflash_xz", math.pi / 2)):
            gun = Gun("e-", 100.0, math.radians(70), psi_rad=psi, entry_mm=(5.1, 0.0))
            result = run_geant4(PRESETS["clic51"], 10, gun, gflash_source(PRESETS["clic51"]), seed=4, batch_events=10)
            res[name] = save(sys.argv[1] + f"/{name}.npz", result)
        print(json.dumps(res))
    """)
    g = load_geometry("clic51")
    xc, yc = g.cell_centres_mm()
    depth = g.layer_centres_mm()
    shift = np.round(depth / math.tan(math.radians(60)) / 5.1) * 5.1  # the pencil source's own rounding
    for name in ("yz", "xz"):
        r = np.load(tmp_path / f"{name}.npz")
        assert out[name]["n_fast"] == 10
        assert np.allclose(r["rec_theta_rad"], math.radians(60)) and np.allclose(r["rec_x_mm"], 10.2, atol=1e-6)
        s = r["showers"].sum(axis=0)
        w = s.sum(axis=(0, 1))
        bx = np.einsum("ijk,i->k", s, xc) / w
        by = np.einsum("ijk,j->k", s, yc) / w
        inside = w > 0
        if name == "yz":
            assert np.allclose(bx[inside], 10.2, atol=1e-4) and np.allclose(by[inside], (-10.2 + shift)[inside], atol=1e-4)
        else:
            assert np.allclose(by[inside], -10.2, atol=1e-4) and np.allclose(bx[inside], (10.2 + shift)[inside], atol=1e-4)
        assert np.all(np.diff(by[inside] if name == "yz" else bx[inside]) > -1e-9)  # moves away with depth
        assert np.allclose(r["showers"].reshape(10, -1).sum(1) + r["leaked"], 2.0, rtol=1e-5)
    # GFlash showers (axis through the grid centre at the shower maximum): after placement the
    # shower axis runs from the entry point along the particle, y (resp. x) = entry + depth cot(theta)
    cot = 1 / math.tan(math.radians(70))
    for name in ("gflash_yz", "gflash_xz"):
        r = np.load(tmp_path / f"{name}.npz")
        s = r["showers"].sum(axis=0)
        w = s.sum(axis=(0, 1))
        along = np.einsum("ijk,j->k", s, yc) / w if name == "gflash_yz" else np.einsum("ijk,i->k", s, xc) / w - 5.1
        across = np.einsum("ijk,i->k", s, xc) / w - 5.1 if name == "gflash_yz" else np.einsum("ijk,j->k", s, yc) / w
        core = w > 0.05 * w.max()  # layers around the maximum
        slope, intercept = np.polyfit(depth[core], along[core], 1, w=np.sqrt(w[core]))
        assert abs(slope - cot) < 0.05 and abs(intercept) < 2.0, (name, slope, intercept)
        assert np.all(np.abs(across[core]) < 2.5), (name, across[core])  # fluctuations of 10 showers


@needs_geant4
def test_cylindrical_fast_mode_and_scorer_cells(tmp_path):
    out = _run_scenario(tmp_path, """
        from fastshower.simulate.geant4.sources import batch_seed
        src = noise_source(PRESETS["par04_ds2"])
        result = run_geant4(PRESETS["par04_ds2"], 6, Gun("e+", 30.0), src, seed=5, batch_events=6)
        expected = src(np.full(6, 30.0), np.full(6, math.pi / 2), batch_seed(5, 0))
        g = load_geometry("par04_ds2")
        z = g.layer_centres_mm()
        a = -math.pi + (np.array([0, 3, 15]) + 0.5) * 2 * math.pi / 16
        r = np.array([2.0, 20.0, 41.0])
        pts = np.stack([r * np.cos(a), r * np.sin(a), [z[0] + 1.5, z[7] + 1.5, z[44] + 1.5]], axis=1)
        idx = get_app(PRESETS["par04_ds2"]).cell_index_at(pts)
        print(json.dumps(save(sys.argv[1] + "/cyl.npz", result, expected=expected, cells=idx)))
    """)
    r = np.load(tmp_path / "cyl.npz")
    assert out["n_fast"] == 6
    assert np.array_equal(r["showers"], r["expected"]) and np.all(r["leaked"] == 0)
    assert r["cells"].tolist() == [[0, 0, 0], [4, 3, 7], [8, 15, 44]]


@needs_geant4
def test_geantino_track_lengths_read_from_the_cpp_scorer(tmp_path):
    """The full-mode readout path without data sets: geantinos at 75 deg (tilt towards +y) through
    clic25 with a track-length scorer; Geant4's own C++ scoring, read per event into numpy, puts
    0.5 mm / sin(theta) of track into each layer's silicon, in the cell at y = depth cot(theta)."""
    _run_scenario(tmp_path, """
        gun = Gun("geantino", 10.0, math.radians(75), entry_mm=(0.0, 0.0))
        result = run_geant4(PRESETS["clic25"], 3, gun, None, scorer="tracklength", batch_events=2)
        print(json.dumps(save(sys.argv[1] + "/geantino.npz", result)))
    """)
    r = np.load(tmp_path / "geantino.npz")
    g = load_geometry("clic25")
    theta = math.radians(75)
    per_layer = r["showers"].sum(axis=(1, 2))  # (events, layers) mm
    assert np.allclose(per_layer, 0.5 / math.sin(theta), rtol=1e-6)
    edges = g.layer_edges_mm()
    absorber = np.where(np.arange(25) < 17, 2.1, 4.2)
    y_mid = (edges[:-1] + absorber + 0.25) / math.tan(theta)
    expected_j = np.floor(y_mid / 5.1 + 12.5).astype(int)
    ev = r["showers"][0]
    for k in range(25):
        i, j = np.unravel_index(np.argmax(ev[:, :, k]), ev.shape[:2])
        assert i == 12 and abs(j - expected_j[k]) <= 1 and (j == expected_j[k] or ev[i, j, k] < 0.5 / math.sin(theta))


def _tiny_onnx(path: Path, shape: tuple[int, int, int]) -> np.ndarray:
    """An ONNX shower model with our export's interface (primary_energy, incident_angle, noise ->
    showers): fixed cell fractions times 0.02 E. Returns the fractions."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    frac = np.random.default_rng(0).random(shape).astype(np.float32)
    frac *= 0.02 / frac.sum()
    nodes = [helper.make_node("Reshape", ["primary_energy", "shape4"], ["e4"]),
             helper.make_node("Mul", ["e4", "fractions"], ["showers"])]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("primary_energy", TensorProto.FLOAT, ["B"]),
         helper.make_tensor_value_info("incident_angle", TensorProto.FLOAT, ["B"]),
         helper.make_tensor_value_info("noise", TensorProto.FLOAT, ["B", 4])],
        [helper.make_tensor_value_info("showers", TensorProto.FLOAT, ["B", *shape])],
        [numpy_helper.from_array(frac[None], "fractions"),
         numpy_helper.from_array(np.array([-1, 1, 1, 1], np.int64), "shape4")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    # the metadata fastshower's exporter writes (g4run refuses ONNX files without it)
    geometry = {(25, 25, 25): "clic25", (51, 51, 25): "clic51"}[tuple(shape)]
    for key, value in {"model": "tiny", "geometry": geometry, "shape": json.dumps(list(shape)), "noise_dim": "4",
                       "energy_range_gev": "[2.0, 500.0]",
                       "angle_range_rad": json.dumps([math.pi / 2, math.pi / 2])}.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return frac


@needs_geant4
def test_g4run_cli_fast_mode_with_an_onnx_model(tmp_path):
    """End to end through the command: an ONNX model as the shower source, two primaries per
    event, a file in our format, the timing table, energy conserved."""
    pytest.importorskip("onnxruntime")
    frac = _tiny_onnx(tmp_path / "tiny.onnx", (25, 25, 25))
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-m", "fastshower.cli", "g4run", "-g", "clic25", "--mode", "fast",
                           "--model", str(tmp_path / "tiny.onnx"), "--energy", "10,100", "--multiplicity", "2",
                           "-n", "12", "--seed", "2", "--batch-events", "5", "-o", str(tmp_path / "fast.h5")],
                          capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for word in ("transport", "inference", "placement", "wrote 12 events", "24 showers from the model"):
        assert word in proc.stdout
    assert "Geant4 version" not in proc.stdout  # the banner stays off the table
    from fastshower.data import read_showers

    s = read_showers(tmp_path / "fast.h5")
    assert len(s) == 12 and set(np.round(s.primary_energy).tolist()) <= {20.0, 110.0, 200.0}
    assert np.allclose(s.showers, s.primary_energy[:, None, None, None] * frac[None], rtol=1e-5)  # both primaries at the centre
    assert s.attrs["simulator"] == "geant4-fast" and s.attrs["physics"] == "transport"


@needs_geant4
def test_g4run_cli_fast_mode_writes_a_file(tmp_path):
    pytest.importorskip("fastshower.simulate.gflash", reason="the gflash reference simulator has not landed")
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-m", "fastshower.cli", "g4run", "-g", "clic25", "--mode", "fast",
                           "--model", "gflash", "--energy", "10,100", "-n", "20", "--seed", "2", "--batch-events", "8",
                           "-o", str(tmp_path / "fast.h5")], capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "transport" in proc.stdout and "inference" in proc.stdout and "wrote 20 events" in proc.stdout
    from fastshower.data import read_showers

    s = read_showers(tmp_path / "fast.h5")
    assert len(s) == 20 and set(np.round(s.primary_energy).tolist()) <= {10.0, 100.0}
    assert np.all(s.deposited_energy > 0)


@needs_geant4
def test_g4run_cli_with_a_saved_generator_reproduces_generator_output(tmp_path):
    """--model <weights path>: fastshower.infer's Generator is the source; at normal incidence and
    the grid centre, the written cells are Generator.generate(E, theta, seed=batch_seed(s, b)) with
    s the shower-source seed of the run's one shard."""
    import torch

    from fastshower.data import read_showers
    from fastshower.infer.generator import Generator
    from fastshower.models.registry import build_generator, save_generator
    from fastshower.production import shard_seeds

    torch.manual_seed(0)
    save_generator(build_generator("gan3d_clic25", width=0.25), tmp_path / "tiny25", {"note": "untrained"})
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-m", "fastshower.cli", "g4run", "-g", "clic25", "--model",
                           str(tmp_path / "tiny25"), "--energy", "50", "-n", "6", "--seed", "9", "--batch-events", "4",
                           "-o", str(tmp_path / "gen.h5")], capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    s = read_showers(tmp_path / "gen.h5")
    gen = Generator.load(str(tmp_path / "tiny25"))
    expected = np.concatenate([gen.generate(np.full(k, 50.0, np.float32), np.full(k, math.pi / 2, np.float32),
                                            seed=batch_seed(shard_seeds(9, 0).source_seed, b)).showers
                               for b, k in enumerate((4, 2))])
    assert np.allclose(s.showers, expected, rtol=1e-5, atol=1e-9)
