"""Validation report and the ``fastshower validate`` command."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
from test_validate import scaled, toy_showers, widen_by_one_cell

from fastshower.data import write_showers
from fastshower.validate.report import write_report


@pytest.fixture(scope="module")
def toy_report(tmp_path_factory):
    rng = np.random.default_rng(11)
    ref, ref2 = toy_showers(300, rng), toy_showers(300, rng)
    bad = widen_by_one_cell(scaled(toy_showers(300, rng), 0.95))
    out = tmp_path_factory.mktemp("report") / "rep"
    return write_report(ref, bad, out, ref2, quick=True, progress=False), out


def test_report_has_its_images_and_metrics_json(toy_report):
    result, rep = toy_report
    page = (rep / "report.html").read_text()
    assert len(re.findall(r'src="data:image/png;base64,[A-Za-z0-9+/=]{1000,}"', page)) == 7
    saved = json.loads((rep / "metrics.json").read_text())["comparisons"][0]
    assert saved["metrics"]["sampling_fraction_mre"]["candidate"] == pytest.approx(
        result.metrics["sampling_fraction_mre"].candidate)
    assert saved["metrics"]["profile_mse"]["ratio"] > 5
    assert "profile_mse" in page and "floor" in page
    assert page.index("Verdict") < page.index("<img") < page.index("All metrics")  # verdict on top, full table below
    assert "mean response" in page and "fail" in page  # the 5% low, widened candidate fails its response
    assert not list(rep.glob("*.tmp"))


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium for a headless screenshot")
def test_report_renders_in_a_headless_browser(toy_report, tmp_path):
    """The page loads in a real browser: the screenshot is tall, wide and not blank (docs/metrics.md)."""
    from PIL import Image

    _, rep = toy_report
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
                    "--window-size=1400,3000", f"--screenshot={shot}", (rep / "report.html").as_uri()],
                   check=True, capture_output=True, timeout=120)
    img = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert img.shape == (3000, 1400)
    top, plots = img[:400], img[800:2800]
    assert top.std() > 20 and plots.std() > 20  # text and table on top, figures below: not a blank page
    assert (plots < 128).mean() > 0.01  # dark pixels: axes, lines and labels were drawn


def test_cli_validate_cylindrical_files(tmp_path, cli, rng):
    """par04_ds2 in the CaloChallenge layout, two candidates: the verdict (each candidate a column),
    the full table with --all, the report; SSIM is skipped (9 radial bins < 11)."""
    for name, s in (("ref", toy_showers(200, rng, "par04_ds2", energy_gev=(1, 1000))),
                    ("cand", toy_showers(200, rng, "par04_ds2", energy_gev=(1, 1000))),
                    ("low", scaled(toy_showers(100, rng, "par04_ds2", energy_gev=(1, 1000)), 0.8))):
        write_showers(tmp_path / f"{name}.h5", s, format="calochallenge")
    code, out, err = cli("validate", tmp_path / "ref.h5", tmp_path / "cand.h5", tmp_path / "low.h5", "-o",
                         tmp_path / "rep", "--quick", "--all")
    assert code == 0, err
    verdict, full = out.split("sampling_fraction_mre", 1)
    assert "mean response" in verdict and "cand (100)" in verdict and "low (100)" in verdict
    response = next(line for line in verdict.splitlines() if line.startswith("mean response"))
    assert response.endswith("fail")  # the 0.8 x candidate, last column: 20 % low
    assert -22 < float(re.findall(r"([-+][0-9.]+)%", response)[-1]) < -18
    assert "halves" in full and "chi2_width_r" in full
    saved = json.loads((tmp_path / "rep" / "metrics.json").read_text())["comparisons"][0]
    assert saved["geometry"] == "par04_ds2" and saved["candidate_details"]["ssim_skipped"]
    assert np.isfinite(saved["metrics"]["chi2_width_r"]["candidate"])


def test_cli_validate_fails_cleanly_on_a_missing_file(tmp_path, cli, rng):
    write_showers(tmp_path / "ref.h5", toy_showers(20, rng))
    code, out, err = cli("validate", tmp_path / "ref.h5", tmp_path / "nothere.h5", "-o", tmp_path / "rep")
    assert code == 2
    assert err.startswith("error:") and "nothere.h5" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "rep" / "metrics.json").exists()


def test_observables_stream_from_a_file_as_from_memory(tmp_path, rng):
    from fastshower.geometry import load_geometry
    from fastshower.validate.observables import (
        apply_threshold,
        event_observables,
        observables_from_file,
    )

    s = toy_showers(130, rng)
    write_showers(tmp_path / "s.h5", s)
    streamed, energy, angle, geo = observables_from_file(tmp_path / "s.h5", chunk_size=50, max_events=120)
    direct = event_observables(apply_threshold(s.showers[:120], 1e-6), s.primary_energy[:120], load_geometry("clic25"))
    assert geo.name == "clic25" and len(energy) == 120 and angle == pytest.approx(np.full(120, np.pi / 2))
    for key in ("energy_deposited", "hits", "m2_x", "width_y", "measured_angle"):
        assert streamed[key] == pytest.approx(direct[key], rel=1e-5), key
