"""Bad inputs and misleading successes of the commands (issue 17 items 3, 4, 6, 9; errors.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from fastshower.data import write_showers
from fastshower.models import registry
from fastshower.showers import ShowerSet
from fastshower.simulate import gflash


def error_lines(err: str) -> list[str]:
    lines = err.strip().splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("error: ")), len(lines))
    return lines[start:]


def one_line_error(code: int, err: str, *fragments: str) -> None:
    lines = error_lines(err)
    assert code == 2 and len(lines) == 1, err[-2000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A saved, untrained 1/16-width gan3d_clic25 (fixed angle 90 deg)."""
    torch.manual_seed(0)
    stem = tmp_path_factory.mktemp("model") / "tiny"
    registry.save_generator(registry.build_generator("gan3d_clic25", width=0.0625), stem)
    return stem


@pytest.fixture
def model_copy(tiny_model, tmp_path) -> Path:
    for suffix in (".json", ".safetensors"):
        (tmp_path / f"m{suffix}").write_bytes(tiny_model.with_suffix(suffix).read_bytes())
    return tmp_path / "m"


# ------------------------------------------------------------------ weights: truncated, tampered (items 3, 9)

def test_truncated_safetensors_is_one_line(cli, model_copy, tmp_path):
    weights = model_copy.with_suffix(".safetensors")
    weights.write_bytes(weights.read_bytes()[:1000])
    code, _, err = cli("generate", "-m", model_copy, "-o", tmp_path / "g.h5", "-n", 2, "--energy", "50")
    one_line_error(code, err, "m.safetensors")
    assert not (tmp_path / "g.h5").exists()


def test_tampered_weights_are_refused(cli, model_copy, tmp_path):
    weights = model_copy.with_suffix(".safetensors")
    tensors = load_file(str(weights))
    key = sorted(tensors)[0]
    tensors[key].view(-1)[0] += 0.5  # one value changed, the file stays a valid safetensors file
    save_file(tensors, str(weights), metadata={"model": "gan3d_clic25", "format": registry.CARD_FORMAT})
    code, _, err = cli("generate", "-m", model_copy, "-o", tmp_path / "g.h5", "-n", 2, "--energy", "50")
    one_line_error(code, err, "does not match its model card")


def test_saved_card_records_the_weights_checksum(tiny_model):
    card = json.loads(tiny_model.with_suffix(".json").read_text())
    assert card["weights_sha256"] == registry.file_sha256(tiny_model.with_suffix(".safetensors"))


def test_shipped_cards_carry_checksums():
    names = registry.list_shipped()
    assert names
    for name in names:
        card = registry.read_card(name)
        assert card["weights_sha256"] == registry.file_sha256(registry.WEIGHTS_DIR / f"{name}.safetensors")


# ------------------------------------------------------------------ not ONNX (item 3)

@pytest.mark.parametrize("command", [
    ["generate", "-o", "{tmp}/g.h5", "-n", "2"],
    ["benchmark", "--quick"],
    ["quantize", "-o", "{tmp}/q.onnx"],
    ["g4run", "-o", "{tmp}/g4.h5", "-n", "1"],
])
def test_onnx_file_that_is_not_onnx_is_one_line(cli, tmp_path, command):
    fake = tmp_path / "model.onnx"
    fake.write_bytes(b"this is not a protobuf \x00\xff" * 10)
    args = [a.format(tmp=tmp_path) for a in command]
    code, _, err = cli(*args[:1], "-m" if args[0] != "g4run" else "--model", fake, *args[1:])
    one_line_error(code, err, "model.onnx is not a readable ONNX file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


# ------------------------------------------------------------------ options out of range (item 3)

def test_export_opset_out_of_range_is_one_line(cli, tiny_model, tmp_path):
    code, _, err = cli("export", "-m", tiny_model, "-o", tmp_path / "e.onnx", "--opset", 5)
    one_line_error(code, err, "--opset 5")
    assert list(tmp_path.iterdir()) == []


def test_generate_n_beyond_memory_is_one_line(cli, tiny_model, tmp_path):
    code, _, err = cli("generate", "-m", tiny_model, "-o", tmp_path / "g.h5", "-n", 10**12, "--energy", "50")
    one_line_error(code, err, "-n 1000000000000", "free memory")


def test_validate_tiny_candidate_is_a_clear_refusal(cli, tmp_path):
    """3 events: too few for any metric, refused in one line naming the size and the minimum
    (main ended in an IndexError in plot_sampling_fraction)."""
    s = gflash.simulate("clic25", "50", "90", n=40, seed=1)
    write_showers(tmp_path / "ref.h5", s)
    write_showers(tmp_path / "cand.h5", s[:3])
    code, _, err = cli("validate", tmp_path / "ref.h5", tmp_path / "cand.h5", "-o", tmp_path / "rep", "--quick")
    one_line_error(code, err, "has 3 events", "at least")


def test_validate_30_vs_30_events_is_a_result_or_a_clear_refusal(cli, tmp_path):
    """30 vs 30 events (main: a cryptic error): either a verdict (exit 0) or a one-line refusal."""
    write_showers(tmp_path / "ref.h5", gflash.simulate("clic25", "50", "90", n=30, seed=1))
    write_showers(tmp_path / "cand.h5", gflash.simulate("clic25", "50", "90", n=30, seed=2))
    code, out, err = cli("validate", tmp_path / "ref.h5", tmp_path / "cand.h5", "-o", tmp_path / "rep", "--quick",
                         "--no-classifier")
    if code == 0:
        assert (tmp_path / "rep" / "report.html").is_file(), out
    else:
        one_line_error(code, err, "events")


# ------------------------------------------------------------------ misleading success (item 6)

def test_fixed_angle_model_refuses_other_angles_even_when_extrapolating(cli, tiny_model, tmp_path):
    code, _, err = cli("generate", "-m", tiny_model, "-o", tmp_path / "g.h5", "-n", 2, "--energy", "50",
                       "--angle", "60", "--allow-extrapolation")
    one_line_error(code, err, "fixed angle 90 deg", "not an extrapolation")
    assert not (tmp_path / "g.h5").exists()


def test_int8_target_that_cannot_be_met_writes_nothing(tiny_model, tmp_path):
    """target 1e-9: every int8 step misses it; the step with every layer back in fp32 is no int8
    model, so nothing is written (the CLI then exits 2, docs/inference.md)."""
    from fastshower.infer import quantize as q
    from fastshower.infer.onnx_export import export_onnx

    fp32 = tmp_path / "fp32.onnx"
    export_onnx(str(tiny_model), fp32, check=False)
    out = tmp_path / "int8.onnx"
    result = q.tune(fp32, out, 1e-9, n_calibration=8, n_eval=8, timing_batch=8, max_groups=2, select="first")
    assert not result.met and not out.exists()
    assert all(not s.meets_target or len(s.fp32_layers) == len(result.eligible_layers) for s in result.steps)


def test_generate_refuses_an_existing_output(cli, tiny_model, tmp_path):
    out = tmp_path / "g.h5"
    out.write_bytes(b"precious")
    code, _, err = cli("generate", "-m", tiny_model, "-o", out, "-n", 2, "--energy", "50")
    one_line_error(code, err, "exists", "--overwrite")
    assert out.read_bytes() == b"precious"


# ------------------------------------------------------------------ hpo (item 6)

@pytest.fixture(scope="module")
def hpo_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hpo")
    rng = np.random.default_rng(0)
    for name, n in (("train.h5", 16), ("val.h5", 8)):
        write_showers(root / name, ShowerSet(rng.exponential(2e-3, (n, 25, 25, 25)).astype(np.float32),
                                             rng.uniform(10, 400, n), np.full(n, math.pi / 2), "clic25"))
    return root


def hpo_config(root: Path, tmp_path: Path, space: dict | None = None, **data) -> Path:
    base = {"model": {"name": "gan3d_clic25", "config": {"width": 0.0625}},
            "recipe": {"batch_size": 4, "lr_scaling": "none"},
            "data": {"train": str(root / "train.h5"), "validation": str(root / "val.h5"), **data},
            "run": {"epochs": 1, "steps_per_epoch": 1, "device": "cpu"}}
    raw = {"base": base, "report_dir": str(tmp_path / "report"), "trial_time_budget_s": 60,
           "search_space": space or {"recipe.optimizer.lr_generator": {"type": "float", "low": 1e-4, "high": 1e-3}}}
    path = tmp_path / "hpo.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_hpo_with_a_missing_data_file_fails_before_any_trial(cli, hpo_data, tmp_path):
    code, _, err = cli("hpo", hpo_config(hpo_data, tmp_path, train=str(tmp_path / "missing.h5")), "--trials", 2)
    one_line_error(code, err, "missing.h5")
    assert not (tmp_path / "report" / "trials").exists()


def test_hpo_with_a_misspelled_search_key_fails_before_any_trial(cli, hpo_data, tmp_path):
    space = {"recipe.optimizer.lr_generatr": {"type": "float", "low": 1e-4, "high": 1e-3}}
    code, _, err = cli("hpo", hpo_config(hpo_data, tmp_path, space), "--trials", 2)
    one_line_error(code, err, "lr_generatr", "unknown key")


def test_hpo_where_every_trial_fails_exits_non_zero_with_the_reason(cli, hpo_data, tmp_path, monkeypatch):
    from fastshower.train.trainer import Trainer

    def broken_fit(self, *args, **kwargs):
        raise RuntimeError("out of GPU memory (simulated)")

    monkeypatch.setattr(Trainer, "fit", broken_fit)
    code, _, err = cli("hpo", hpo_config(hpo_data, tmp_path), "--trials", 2)
    lines = error_lines(err)
    assert code == 1 and len(lines) == 1, err[-2000:]
    assert "all 2 trial(s)" in lines[0] and "out of GPU memory (simulated)" in lines[0]


# ------------------------------------------------------------------ errors.py: defects keep their traceback

def test_an_unexpected_keyerror_keeps_its_traceback(cli, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        return {}["primary_energy"]

    monkeypatch.setattr(gflash, "simulate_showers", broken)
    with pytest.raises(KeyError, match="primary_energy"):
        cli("simulate", "-n", 2, "-o", tmp_path / "x.h5")
    assert list(tmp_path.iterdir()) == []
