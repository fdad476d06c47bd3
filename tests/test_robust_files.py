"""Output files under interrupts, full disks and concurrent writers (issue 17 items 1, 2, 5, 7)."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

import fastshower
from fastshower.geometry import PRESETS
from fastshower.data import count_events
from fastshower.simulate import gflash

SRC = str(Path(fastshower.__file__).resolve().parent.parent)


def run_python(code: str, timeout: float = 120, **popen) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter on this source tree (SIGINT at its default)."""
    env = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=timeout, preexec_fn=default_sigint, **popen)


def default_sigint() -> None:
    """The child's SIGINT action is the default even when pytest runs with SIGINT ignored (started
    in the background by a shell): the interrupt tests need a SIGINT that Python can see."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def fake_simulate_code(extra: str = "", delay_s: float = 0.0) -> str:
    """Python source: gflash.simulate_showers replaced by a fast fake (flat 2 % deposits), ``extra``
    run on each call with ``calls`` (1, 2, ...) defined; ends with ``from fastshower.cli import main``."""
    body = textwrap.indent(textwrap.dedent(extra), " " * 4)
    return (
        "import os, signal, time, weakref\n"
        "import numpy as np\n"
        "from fastshower.simulate import gflash\n"
        "calls = 0\n"
        "def simulate_showers(geometry, primary_energy, incident_angle, rng, *, particle='e-', params=None):\n"
        "    global calls\n"
        "    calls += 1\n"
        f"    time.sleep({delay_s})\n"
        f"{body}\n"
        "    cells = np.full((len(primary_energy), 25, 25, 25), 0.02 / 25**3, np.float32)\n"
        "    return cells * primary_energy[:, None, None, None].astype(np.float32)\n"
        "gflash.simulate_showers = simulate_showers\n"
        "from fastshower.cli import main\n")


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ------------------------------------------------------------------ item 1: Ctrl-C

def test_sigint_inside_a_finalizer_stops_simulate(tmp_path):
    """The Ctrl-C lands inside a weakref callback, as it does in h5py's object registry (a
    WeakValueDictionary freeing ObjectIDs at every block): Python ignores a KeyboardInterrupt raised
    there, and simulate used to go on and write the whole file. It must stop with 130, no file."""
    out = tmp_path / "x.h5"
    code = fake_simulate_code("""
        if calls == 2:  # the signal arrives while a finalizer runs
            class Obj: pass
            o = Obj()
            weakref.finalize(o, os.kill, os.getpid(), signal.SIGINT)
            del o
    """) + f"main(['simulate', '-n', '40', '--batch-size', '4', '-o', {str(out)!r}])"
    result = run_python(code)
    assert result.returncode == 130, result.stderr[-2000:]
    assert leftovers(tmp_path) == []


def test_real_sigint_stops_simulate_with_130(tmp_path):
    """A real SIGINT to a running `simulate` (real GFlash): exit 130, no output, no temp or lock file."""
    out = tmp_path / "x.h5"
    env = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "fastshower.cli", "simulate", "-n", "100000", "--batch-size", "50",
                             "-o", str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=default_sigint)
    deadline = time.time() + 60
    while not any(p.name.endswith(".tmp") for p in tmp_path.iterdir()) and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # a few blocks into the run
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert leftovers(tmp_path) == []


def test_ctrl_c_is_taken_at_the_next_block(tmp_path):
    """In-process: a SIGINT between two writes does not raise where it lands; the next write does,
    and the writer leaves nothing. Python's own SIGINT handler is set first, as in a fresh
    `fastshower` process (earlier tests in this process may have installed others, e.g. Dask's)."""
    from fastshower.data import ShowerWriter
    from fastshower.showers import ShowerSet

    block = ShowerSet(np.zeros((2, 25, 25, 25), np.float32), [10.0, 20.0], [np.pi / 2] * 2, PRESETS["clic25"])
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            with ShowerWriter(tmp_path / "x.h5", PRESETS["clic25"]) as w:
                w.write(block)
                os.kill(os.getpid(), signal.SIGINT)  # handled: sets the flag only
                landed = True
                w.write(block)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert landed and leftovers(tmp_path) == []


# ------------------------------------------------------------------ item 2: full disk

@pytest.fixture
def small_fs(tmp_path):
    """A 2 MiB tmpfs (root only, where mounting works); skip elsewhere."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here: {r.stderr.decode().strip()[:100]}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.mark.parametrize("precheck", [True, False], ids=["space-check", "hdf5-finds-it"])
def test_full_disk_is_one_line_error_not_a_crash(small_fs, precheck):
    """simulate onto a 2 MiB file system: a one-line error, exit 2 (not 139), temp file removed,
    other files untouched, both when the free-space check catches it and when HDF5 hits ENOSPC."""
    (small_fs / "other.txt").write_text("keep me\n")
    patch = "" if precheck else "import fastshower.data.io as io; io.check_free_space = lambda *a: None\n"
    code = fake_simulate_code().replace("from fastshower.cli import main", patch + "from fastshower.cli import main")
    code += f"main(['simulate', '-n', '400', '--batch-size', '20', '-o', {str(small_fs / 'x.h5')!r}])"
    # cells with noise so that gzip cannot squeeze them into 2 MiB
    noisy = "    cells = cells + np.random.default_rng(calls).random(cells.shape, np.float32)\n"
    code = code.replace("    return cells * primary_energy", noisy + "    return cells * primary_energy")
    result = run_python(code)
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "disk full" in errors[0], result.stderr[-2000:]
    assert leftovers(small_fs) == ["other.txt"] and (small_fs / "other.txt").read_text() == "keep me\n"


def test_injected_enospc_removes_the_temp_file(cli, tmp_path, monkeypatch):
    """Works everywhere: the second block's write fails with ENOSPC."""
    from fastshower.data.native import NativeLayout

    calls = []
    append = NativeLayout.append

    def failing_append(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return append(self, *args, **kwargs)

    monkeypatch.setattr(NativeLayout, "append", failing_append)
    monkeypatch.setattr(gflash, "simulate_showers", lambda g, e, a, rng, particle="e-", params=None:
                        np.full((len(e), 25, 25, 25), 1e-4, np.float32))
    (tmp_path / "other.h5").write_bytes(b"other")
    code, _, err = cli("simulate", "-n", 6, "--batch-size", 2, "-o", tmp_path / "x.h5")
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: disk full"), err
    assert leftovers(tmp_path) == ["other.h5"] and (tmp_path / "other.h5").read_bytes() == b"other"


# ------------------------------------------------------------------ item 5: overwrite, concurrent writers

def test_existing_output_is_refused_without_overwrite(cli, tmp_path, monkeypatch):
    monkeypatch.setattr(gflash, "simulate_showers", lambda g, e, a, rng, particle="e-", params=None:
                        np.full((len(e), 25, 25, 25), 1e-4, np.float32))
    out = tmp_path / "x.h5"
    assert cli("simulate", "-n", 10, "-o", out)[0] == 0
    code, _, err = cli("simulate", "-n", 5, "-o", out)
    assert code == 2 and "exists" in err and "--overwrite" in err
    assert count_events(out) == 10
    assert cli("simulate", "-n", 5, "-o", out, "--overwrite")[0] == 0
    assert count_events(out) == 5


def test_two_concurrent_writers_cannot_both_succeed(tmp_path):
    """Two real processes write the same file: one writes it, the other fails at once (exit 2,
    'another process'); the file holds the winner's events, whole."""
    out = tmp_path / "x.h5"
    code = fake_simulate_code(delay_s=0.1) + "import sys\nmain(['simulate', '-n', sys.argv[1], '--batch-size', '2', " \
                                             f"'--overwrite', '-o', {str(out)!r}])"
    env = dict(os.environ, PYTHONPATH=SRC, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-c", code, n], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for n in ("20", "21")]
    results = [(p.wait(timeout=120), p.stdout.read(), p.stderr.read()) for p in procs]
    codes = sorted(r[0] for r in results)
    assert codes == [0, 2], results
    loser = next(r for r in results if r[0] == 2)
    assert "another process" in loser[2]
    winner = next(r for r in results if r[0] == 0)
    assert count_events(out) == int(winner[1].split()[1])
    assert leftovers(tmp_path) == ["x.h5"]


# ------------------------------------------------------------------ item 7: memory, stale temp files

def test_simulate_huge_n_draws_conditions_per_batch(cli, tmp_path, monkeypatch):
    """-n 2e7 with a fake simulator stopped after three blocks: peak Python/numpy memory stays far
    below the 320 MB that drawing all conditions up front takes."""
    calls = []

    class Stop(Exception):
        pass

    def simulate_showers(g, e, a, rng, particle="e-", params=None):
        calls.append(len(e))
        if len(calls) == 3:
            raise Stop
        return np.full((len(e), 25, 25, 25), 1e-4, np.float32)

    monkeypatch.setattr(gflash, "simulate_showers", simulate_showers)
    tracemalloc.start()
    try:
        with pytest.raises(Stop):
            cli("simulate", "-n", 20_000_000, "--batch-size", 100, "-o", tmp_path / "x.h5")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert calls == [100, 100, 100]
    assert peak < 60e6, f"peak {peak / 1e6:.0f} MB"
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("energy,angle", [("10,50,100", "80:100"), ("2:500", "70,90,100"), ("2:500:log", "90")])
def test_streamed_simulation_equals_simulate(energy, angle):
    """Drawing conditions per batch gives the same showers and conditions as simulate()."""
    whole = gflash.simulate(PRESETS["clic51"], energy, angle, n=7, seed=3, batch_size=3)
    parts = list(gflash.iter_simulate(PRESETS["clic51"], energy, angle, n=7, seed=3, batch_size=3))
    assert [len(p) for p in parts] == [3, 3, 1]
    np.testing.assert_array_equal(np.concatenate([p.primary_energy for p in parts]), whole.primary_energy)
    np.testing.assert_array_equal(np.concatenate([p.incident_angle for p in parts]), whole.incident_angle)
    np.testing.assert_array_equal(np.concatenate([p.showers for p in parts]), whole.showers)


def test_stale_temp_files_of_dead_runs_are_removed(cli, tmp_path, monkeypatch):
    monkeypatch.setattr(gflash, "simulate_showers", lambda g, e, a, rng, particle="e-", params=None:
                        np.full((len(e), 25, 25, 25), 1e-4, np.float32))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".x.h5.{int(dead.stdout)}.abcd1234.tmp"
    stale.write_bytes(b"partial")
    live = tmp_path / f".x.h5.{os.getpid()}.efgh5678.tmp"  # a live writer's (this process): kept
    live.write_bytes(b"partial")
    assert cli("simulate", "-n", 2, "-o", tmp_path / "x.h5")[0] == 0
    assert leftovers(tmp_path) == [live.name, "x.h5"]


def test_gitignore_matches_hidden_temp_and_lock_files():
    root = Path(SRC).parent
    if not (root / ".git").exists():
        pytest.skip("not a git checkout")
    names = [".x.h5.1234.ab_cd.tmp", ".x.h5.leuye4ut.tmp", ".x.h5.lock", "runs/.lock"]
    r = subprocess.run(["git", "check-ignore", "--no-index", *names], cwd=root, capture_output=True, text=True)
    assert sorted(r.stdout.split()) == sorted(names)
