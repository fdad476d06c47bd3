"""Geant4 production: seeding, clean exit, physics choice and provenance, sharded and parallel
production (in-process, Dask workers, --shard K/N + merge, resume).

Full-mode tests run real Geant4 (a few 2-5 GeV electrons) in subprocesses, on the user's Geant4
data sets when there are any, else on fastshower's offline set built once per session in a
temporary cache. Sharding tests that only exercise the bookkeeping use fast mode with GFlash.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from fastshower.simulate.geant4.datasets import find_dataset
from fastshower.production import Production, shard_seeds

from test_geant4 import G4_OK, G4_REASON  # noqa: E402  (the probe runs once, in a subprocess)

needs_geant4 = pytest.mark.skipif(not G4_OK, reason=f"geant4_pybind unusable here: {G4_REASON}")


@pytest.fixture(scope="session")
def g4env(tmp_path_factory) -> dict:
    """Environment for full-mode subprocesses: the user's data sets if present, else a session
    cache in which `g4run --mode full` builds fastshower's offline set on first use."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if find_dataset("G4EMLOW") is not None:
        return env
    try:
        import fastshower.simulate.geant4.g4data  # noqa: F401
    except ImportError:
        pytest.skip("no Geant4 data set here and no offline data-set builder on this branch")
    env["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("g4cache"))
    return env


def _g4run(env: dict, out: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fastshower.cli", "g4run", "-g", "clic25", "-o", str(out), *args],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=out.parent)


def _attrs(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}


def _arrays(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {k: f[k][()] for k in ("showers", "primary_energy", "incident_angle")}


# ------------------------------------------------------------------------------------------------
# pure: shards and their seeds

def test_shard_streams_are_independent_and_reproducible():
    a, b = shard_seeds(7, 0), shard_seeds(7, 1)
    assert a.geant4_seeds == shard_seeds(7, 0).geant4_seeds and a.source_seed == shard_seeds(7, 0).source_seed
    assert a.geant4_seeds != b.geant4_seeds and a.geant4_seeds != shard_seeds(8, 0).geant4_seeds
    assert all(0 <= w < 2**32 for w in a.geant4_seeds) and len(set(a.geant4_seeds)) == 4
    p = Production("clic25", 10, mode="fast", energy="2:500", n_shards=3)
    assert [p.shard_range(k) for k in range(3)] == [(0, 3), (3, 6), (6, 10)]
    e0 = p.guns(0)[0].energy_gev
    assert np.array_equal(e0, p.guns(0)[0].energy_gev) and not np.array_equal(e0, p.guns(1)[0].energy_gev[:3])
    # the identity covers what changes the showers, not how they are run
    assert p.production_id == Production("clic25", 10, mode="fast", energy="2:500", n_shards=3).production_id
    for other in (dict(seed=1), dict(n_shards=2), dict(energy="2:400"), dict(production_cut_mm=0.7)):
        assert Production("clic25", 10, **{"mode": "fast", "energy": "2:500", "n_shards": 3, **other}
                          ).production_id != p.production_id
    assert Production("clic25", 250, mode="fast").n_shards == 3  # default: one shard per 100 events
    with pytest.raises(ValueError, match="every shard needs an event"):
        Production("clic25", 2, n_shards=3)
    with pytest.raises(ValueError, match="unknown EM physics 'option9'"):
        Production("clic25", 2, em_physics="option9")


def test_em_physics_beyond_the_built_set_is_one_line_naming_the_data(monkeypatch, tmp_path):
    from fastshower.simulate.geant4.app import EM_PHYSICS, require_em_physics

    emlow = tmp_path / "G4EMLOW8.8"
    for sub in ("brem_SB", "epics2017/phot", "epics2017/rayl"):
        (emlow / sub).mkdir(parents=True)
    monkeypatch.setenv("G4LEDATA", str(emlow))
    for name in ("option0", "option1", "option2"):
        require_em_physics(name)
    others = [n for n in EM_PHYSICS if n not in ("option0", "option1", "option2")]
    assert others, "the EM choices that need more data are listed"
    for name in others:
        with pytest.raises(RuntimeError) as info:
            require_em_physics(name)
        msg = str(info.value)
        assert "\n" not in msg and name in msg and EM_PHYSICS[name][0] in msg and str(emlow) in msg
        assert all(p + "/" in msg for p in EM_PHYSICS[name][1] if not (emlow / p).exists())
    (emlow / "epics2017/rayl").rmdir()
    with pytest.raises(RuntimeError, match="epics2017/rayl/"):
        require_em_physics("option0")
    with pytest.raises(ValueError, match="unknown EM physics"):
        require_em_physics("standard")


# ------------------------------------------------------------------------------------------------
# full mode: seeds, exit code, recorded provenance

@needs_geant4
def test_full_mode_seeds_reproduce_differ_exit_zero_and_are_recorded(tmp_path, g4env):
    """Three real `g4run --mode full` processes: the same seed twice gives bit-identical showers,
    another seed different ones, and every process exits 0 after writing its file."""
    runs = {}
    for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        proc = _g4run(g4env, tmp_path / f"{name}.h5", "--mode", "full", "--energy", "2", "-n", "3", "--seed", seed)
        assert proc.returncode == 0, f"exit code {proc.returncode}:\n{proc.stdout[-1500:]}\n{proc.stderr[-1500:]}"
        assert "wrote 3 events" in proc.stdout
        runs[name] = _arrays(tmp_path / f"{name}.h5")
    assert np.array_equal(runs["a"]["showers"], runs["b"]["showers"])
    assert not np.array_equal(runs["a"]["showers"], runs["c"]["showers"])
    assert np.all(runs["a"]["showers"].reshape(3, -1).sum(1) > 0)
    a, c = _attrs(tmp_path / "a.h5"), _attrs(tmp_path / "c.h5")
    assert a["simulator"] == "geant4-full" and a["geant4"].startswith("geant4-11")
    assert a["physics_list"] == "G4EmStandardPhysics + G4DecayPhysics" and a["em_physics"] == "option0"
    assert a["production_cut_mm"] == 1.0 and a["random_engine"] == "MixMaxRng" and a["seed"] == 1
    data = json.loads(a["geant4_data"])
    assert data["G4EMLOW"].endswith("G4EMLOW8.8") and data["G4ENSDFSTATE"].endswith("G4ENSDFSTATE3.0")
    assert data["source"] == "installation" or data["source"].startswith("fastshower offline set (recipe ")
    shards_a, shards_c = json.loads(a["shards"]), json.loads(c["shards"])
    assert shards_a[0]["geant4_seeds"] == list(shard_seeds(1, 0).geant4_seeds)
    assert shards_a[0]["geant4_seeds"] != shards_c[0]["geant4_seeds"]


@needs_geant4
def test_library_full_run_applies_the_cut_and_exits_zero(tmp_path, g4env):
    """A library user's script (no CLI): the production cut Geant4 applies is the one asked for,
    the EM option is the one asked for, and the interpreter exits 0."""
    script = textwrap.dedent("""
        import json
        from fastshower.simulate.geant4.app import Gun, get_app, run_geant4
        r = run_geant4("clic25", 2, Gun("e-", 2.0), mode="full", em_physics="option1", production_cut_mm=0.5,
                       seed=3)
        print(json.dumps({"cuts": get_app("clic25", "full", em_physics="option1", production_cut_mm=0.5)
                          .applied_range_cuts_mm(), "attrs": r.attrs}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=g4env,
                          cwd=tmp_path)
    assert proc.returncode == 0, f"exit code {proc.returncode}:\n{proc.stderr[-2000:]}"
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["cuts"] == {"gamma": 0.5, "e-": 0.5, "e+": 0.5, "proton": 0.5}
    assert out["attrs"]["physics_list"] == "G4EmStandardPhysics_option1 + G4DecayPhysics"
    assert out["attrs"]["production_cut_mm"] == 0.5


@needs_geant4
def test_inspect_shows_the_provenance(tmp_path, g4env, cli):
    proc = _g4run(g4env, tmp_path / "o2.h5", "--mode", "full", "--em-physics", "option2", "--energy", "2", "-n", "2",
                  "--shards", "2", "--production-cut-mm", "0.7")
    assert proc.returncode == 0, proc.stderr[-2000:]
    code, out, _ = cli("inspect", tmp_path / "o2.h5")
    assert code == 0
    for text in ("geant4:", "geant4-11", "G4EmStandardPhysics_option2 + G4DecayPhysics", "production cut:   0.7 mm",
                 "G4EMLOW8.8", "seed 0, 2 shards", "geant4 engine"):
        assert text in out, (text, out)


# ------------------------------------------------------------------------------------------------
# sharded production: workers, resume, --shard K/N + merge

def _scenario(tmp_path: Path, env: dict, body: str, timeout: int = 400) -> dict:
    script = "import json, os, sys\nfrom pathlib import Path\nd = Path(sys.argv[1])\n" + textwrap.dedent(body)
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=tmp_path)
    assert proc.returncode == 0, f"scenario exit code {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["stderr"] = proc.stderr
    return out


@needs_geant4
def test_two_dask_workers_give_the_file_of_one_and_a_lost_worker_is_retried(tmp_path, g4env):
    """Full Geant4 (2-5 GeV e-, 4 events in 3 shards): a Dask cluster of two single-threaded worker
    processes, reached through its scheduler address, gives bit-identical showers and the same
    conditions as the same production run shard after shard in one process. The worker that
    starts shard 1 is killed the first time (os._exit): the scheduler reschedules the shard."""
    out = _scenario(tmp_path, g4env, """
        from dask.distributed import Client, LocalCluster, WorkerPlugin
        from fastshower.production import Production, produce

        class KillOnce(WorkerPlugin):
            # the first worker that starts shard 1 dies (a lost node), once
            def transition(self, key, start, finish, *args, **kwargs):
                marker = d / "killed"
                if finish == "executing" and str(key).split("-")[3] == "1" and not marker.exists():
                    marker.write_text(str(os.getpid()))
                    os._exit(1)

        p = Production("clic25", 4, mode="full", energy="2:5", seed=11, n_shards=3)
        with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \\
                Client(cluster) as client:
            client.register_plugin(KillOnce())
            two = produce(p, d / "two.h5", scheduler=cluster.scheduler_address)
        one = produce(p, d / "one.h5")  # in this process
        print(json.dumps({"killed": (d / "killed").read_text(), "two_pids": [m["pid"] for m in two.manifests],
                          "one_pids": [m["pid"] for m in one.manifests], "me": os.getpid(),
                          "work_left": (d / "two.h5.shards").exists()}))
    """)
    one, two = _arrays(tmp_path / "one.h5"), _arrays(tmp_path / "two.h5")
    for key in ("showers", "primary_energy", "incident_angle"):
        assert np.array_equal(one[key], two[key]), key
    assert np.all(one["showers"].reshape(4, -1).sum(1) > 0) and len(set(one["primary_energy"])) == 4
    assert out["one_pids"] == [out["me"]] * 3 and out["me"] not in out["two_pids"]
    assert out["killed"] not in map(str, out["two_pids"])  # shard 1 finished on a live worker
    assert not out["work_left"]
    a, b = _attrs(tmp_path / "one.h5"), _attrs(tmp_path / "two.h5")
    assert a["shards"] == b["shards"] and a["production_id"] == b["production_id"]


@needs_geant4
def test_resume_shard_jobs_and_merge_give_the_single_run(tmp_path, cli):
    """Fast mode with GFlash (the point is the bookkeeping): 10 events in 4 shards. A re-run after
    a shard file was removed, one was truncated and one lost its manifest redoes exactly those
    three; four `--shard K/N` jobs (any order) + `fastshower merge` give the single run's file."""
    pytest.importorskip("fastshower.simulate.gflash")
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    out = _scenario(tmp_path, env, """
        import shutil
        from fastshower.cli import main
        from fastshower.production import Production, produce

        def cli(*args):
            try:
                main([str(a) for a in args])
            except SystemExit as exc:
                assert exc.code in (0, None), exc.code

        base = ["g4run", "-g", "clic25", "--mode", "fast", "--model", "gflash", "--energy", "5:50", "-n", "10",
                "--seed", "3", "--shards", "4", "--batch-events", "2"]
        cli(*base, "-o", d / "single.h5", "--keep-shards")
        shutil.copy(d / "single.h5", d / "first.h5")
        work = d / "single.h5.shards"
        (work / "shard-00001-of-00004.h5").unlink()
        with open(work / "shard-00002-of-00004.h5", "r+b") as f:
            f.truncate(2000)
        (work / "shard-00003-of-00004.json").unlink()
        errors = []
        try:  # another production (seed 4) never uses, nor overwrites, these shards
            produce(Production("clic25", 10, mode="fast", energy="5:50", seed=4, n_shards=4, batch_events=2),
                    d / "single.h5")
        except RuntimeError as exc:
            errors.append(str(exc))
        p = Production("clic25", 10, mode="fast", energy="5:50", seed=3, n_shards=4, batch_events=2)
        again = produce(p, d / "single.h5")
        for k in (3, 1, 0, 2):
            cli(*base, "--shard", f"{k}/4", "-o", d / "jobs.h5")
        cli(*base, "--shard", "1/4", "-o", d / "jobs.h5")  # a repeated job finds its shard complete
        os.makedirs(d / "wrong", exist_ok=True)
        cli(*[a if a != "3" else "4" for a in base], "--shard", "2/4", "-o", d / "wrong" / "w.h5")  # seed 4
        print(json.dumps({"resumed": again.resumed, "ran": [m["shard"] for m in again.manifests
                                                            if m["shard"] not in again.resumed],
                          "errors": errors, "left": work.exists()}))
    """)
    assert out["resumed"] == [0] and out["ran"] == [1, 2, 3] and not out["left"]
    assert len(out["errors"]) == 1 and "holds shards of another production" in out["errors"][0]
    first = _arrays(tmp_path / "first.h5")
    assert len(first["primary_energy"]) == 10 and np.all(first["showers"].reshape(10, -1).sum(1) > 0)
    assert np.array_equal(first["showers"], _arrays(tmp_path / "single.h5")["showers"])
    jobs = tmp_path / "jobs.h5.shards"
    assert sorted(p.name for p in jobs.glob("*.h5")) == [f"shard-0000{k}-of-00004.h5" for k in range(4)]
    code, stdout, err = cli("merge", str(jobs), "-o", tmp_path / "merged.h5")
    assert code == 0, err
    assert "merged 4 shards, 10 events" in stdout
    merged = _arrays(tmp_path / "merged.h5")
    for key in ("showers", "primary_energy", "incident_angle"):
        assert np.array_equal(first[key], merged[key]), key
    assert json.loads(_attrs(tmp_path / "merged.h5")["shards"]) == json.loads(_attrs(tmp_path / "first.h5")["shards"])
    # shards that do not belong together are refused, with the reason
    shards = sorted(jobs.glob("*.h5"))
    code, _, err = cli("merge", *map(str, shards[:2] + shards[3:]), "-o", tmp_path / "m2.h5")
    assert code == 2 and "1 of 4 shards are missing: 2" in err
    wrong = next((tmp_path / "wrong" / "w.h5.shards").glob("*.h5"))
    code, _, err = cli("merge", *map(str, shards[:2] + [wrong] + shards[3:]), "-o", tmp_path / "m3.h5")
    assert code == 2 and "2 different productions" in err
    code, _, err = cli("merge", *map(str, shards + [shards[1]]), "-o", tmp_path / "m4.h5")
    assert code == 2 and "shard 1 given twice" in err
    assert not any((tmp_path / f"m{i}.h5").exists() for i in (2, 3, 4))
