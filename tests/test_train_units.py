"""Unit tests of the training building blocks that need no network: losses, config, LR rules, data order."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fastshower.data import write_showers
from fastshower.geometry import PRESETS, load_geometry
from fastshower.showers import ShowerSet
from fastshower.train.config import LossWeights, build_config, load_config
from fastshower.train.data import InMemoryData, StreamingData, fit_ecal_sum, log_uniform_weights, spectrum_weights
from fastshower.train.distributed import lr_factor, lr_scale
from fastshower.train.losses import bce, gan_loss, mae, mape


def test_mape_divides_by_the_target_keras_definition():
    t, p = torch.tensor([2.0, 4.0]), torch.tensor([1.0, 5.0])
    # 100 * mean(|2-1|/2, |4-5|/4) = 100 * (0.5 + 0.25) / 2
    assert mape(t, p).item() == pytest.approx(37.5)
    assert mape(p, t).item() == pytest.approx(100 * (1.0 + 0.2) / 2)  # the ports' swapped order differs
    assert mape(torch.zeros(1), torch.tensor([1e-7])).item() == pytest.approx(100.0)  # max(|y|, 1e-7)
    assert mape(torch.tensor([3.0, 5.0]), torch.zeros(2)).item() == 100.0  # empty showers: exactly 100


def test_bce_on_probabilities_and_mae():
    p = torch.tensor([0.9, 0.2, 0.6])
    y = torch.tensor([1.0, 0.0, 0.9])
    assert bce(p, y).item() == pytest.approx(torch.nn.functional.binary_cross_entropy(p, y).item(), rel=1e-6)
    # p = 1 is clipped to 1 - 1e-7 (in float32, as Keras does): a large but finite loss
    clipped = float(np.float32(1 - 1e-7))
    assert bce(torch.tensor([1.0]), torch.tensor([0.0])).item() == pytest.approx(-math.log1p(-clipped), rel=1e-4)
    assert mae(torch.tensor([1.0, 2.0]), torch.tensor([1.5, 1.0])).item() == pytest.approx(0.75)


def test_gan_loss_weights_terms():
    out = {"real": torch.tensor([0.5, 0.5]), "energy": torch.tensor([1.0, 1.0]),
           "ecal_sum": torch.tensor([10.0, 30.0]), "angle": torch.tensor([1.5, 1.5])}
    w = LossWeights(real=3, energy=0.1, ecal_sum=0.1, angle=25)
    total, terms = gan_loss(out, torch.ones(2), torch.tensor([2.0, 2.0]), torch.tensor([20.0, 20.0]),
                            torch.tensor([1.6, 1.4]), w)
    assert terms["bce"].item() == pytest.approx(math.log(2), rel=1e-6)
    assert terms["energy_mape"].item() == pytest.approx(50.0)
    assert terms["ecal_mape"].item() == pytest.approx(50.0)
    assert terms["angle_mae"].item() == pytest.approx(0.1, rel=1e-5)
    assert total.item() == pytest.approx(3 * math.log(2) + 5 + 5 + 2.5, rel=1e-5)


def _raw(**kw):
    raw = {"model": {"name": "gan3d_clic25"}, "data": {"train": "x.h5"}}
    raw.update(kw)
    return raw


def test_config_presets_and_overrides():
    cfg = build_config(_raw())
    assert cfg.recipe.preset == "gan3d_clic25"
    assert cfg.recipe.loss_weights == LossWeights(real=2, energy=0.1, ecal_sum=0.1, angle=0)
    assert (cfg.recipe.optimizer.name, cfg.recipe.optimizer.lr_generator, cfg.recipe.optimizer.rho,
            cfg.recipe.optimizer.eps, cfg.recipe.batch_size) == ("rmsprop", 1e-3, 0.9, 1e-7, 128)
    cfg = build_config(_raw(model={"name": "conv2d_g2"}, recipe={"batch_size": 32, "optimizer": {"lr_generator": 1e-4}}))
    assert cfg.recipe.preset == "conv2d" and cfg.recipe.batch_size == 32
    assert (cfg.recipe.optimizer.lr_generator, cfg.recipe.optimizer.lr_discriminator) == (1e-4, 1e-4)
    # Conv2D labels as bit_flip_tf makes them: real 0.9, fake zeros*0.1 = 0, G target 0.9 with flips
    assert (cfg.recipe.real_label, cfg.recipe.fake_label, cfg.recipe.generator_label,
            cfg.recipe.generator_label_flip, cfg.recipe.generator_steps) == (0.9, 0.0, 0.9, 0.05, 1)
    assert cfg.recipe.lr_scaling == "none" and cfg.recipe.cell_threshold_gev == 1e-6
    assert cfg.recipe.lr_reference_batch == 128
    cfg = build_config(_raw(recipe="gan3d_clic51"))
    assert cfg.recipe.loss_weights.angle == 25 and cfg.recipe.batch_size == 64
    cfg = build_config(_raw(stages=[{"epochs": 3, "energy_range_gev": [100, 200]}, {"epochs": 2}],
                            data={"train": "x.h5", "energy_range_gev": [2, 500]}))
    assert cfg.total_epochs == 5
    assert cfg.stage_of_epoch(2) == (0, (100.0, 200.0)) and cfg.stage_of_epoch(3) == (1, (2.0, 500.0))


@pytest.mark.parametrize("raw, message", [
    (_raw(run={"epochz": 3}), "run.epochz: unknown key"),
    (_raw(recipe={"preset": "wgan"}), "unknown recipe 'wgan'"),
    (_raw(model={"name": "mystery"}), "model.name: unknown model 'mystery'"),
    (_raw(run={"precision": "fp8"}), "run.precision"),
    (_raw(recipe={"optimizer": {"name": "sgd"}}), "recipe.optimizer.name"),
    (_raw(recipe={"energy_spectrum": "log_uniform"}, data={"train": "x.h5", "streaming": True}),
     "energy_spectrum: log_uniform needs in-memory data"),
])
def test_config_errors_are_one_line(raw, message):
    with pytest.raises(ValueError, match=message) as exc:
        build_config(raw, source="cfg.yaml")
    assert "\n" not in str(exc.value) and str(exc.value).startswith("cfg.yaml: ")


def test_load_config_resolves_paths_and_overrides(tmp_path):
    (tmp_path / "c.yaml").write_text("model: {name: gan3d_clic25}\ndata: {train: d/train.h5}\n"
                                     "run: {epochs: 4, output_dir: ../runs/x}\n")
    cfg = load_config(tmp_path / "c.yaml", {"run": {"epochs": 7}})
    assert cfg.data.train == str(tmp_path / "d/train.h5") and cfg.run.epochs == 7
    assert cfg.run.output_dir == str(tmp_path / "../runs/x")  # relative to the config file, not the cwd
    assert load_config(tmp_path / "c.yaml", {"run": {"output_dir": "/abs/out"}}).run.output_dir == "/abs/out"
    # the same mapping from another folder: paths follow the file, not the working directory
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.yaml").write_text((tmp_path / "c.yaml").read_text())
    moved = load_config(tmp_path / "sub" / "c.yaml")
    assert Path(moved.run.output_dir).resolve() == (tmp_path / "runs/x").resolve()
    assert moved.data.train == str(tmp_path / "sub/d/train.h5")
    # no output_dir in the file: the default stays relative to the working directory
    (tmp_path / "d.yaml").write_text("model: {name: gan3d_clic25}\ndata: {train: [a.h5, /abs/b.h5]}\n")
    default = load_config(tmp_path / "d.yaml")
    assert default.run.output_dir == "runs/train" and default.data.train == [str(tmp_path / "a.h5"), "/abs/b.h5"]
    raw = {"model": {"name": "gan3d_clic25"}, "data": {"train": "t.h5"}, "run": {"output_dir": "out"}}
    assert build_config(raw).run.output_dir == "out" and build_config(raw).data.train == "t.h5"  # no folder given
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_lr_scaling_warmup_and_decay():
    assert lr_scale(256, 64, "linear") == 4.0 and lr_scale(256, 64, "none") == 1.0
    assert lr_scale(256, 64, "workers", world=4) == 4.0 and lr_scale(256, 64, "workers") == 1.0
    assert lr_factor(0, 0, 4.0, 10, 0.0, 0) == 1.0
    assert lr_factor(5, 5, 4.0, 10, 0.0, 0) == pytest.approx(2.5)
    assert lr_factor(10, 10, 4.0, 10, 0.0, 0) == 4.0
    assert lr_factor(90, 90, 1.0, 0, 0.012, 80) == pytest.approx(math.exp(-0.12))
    assert lr_factor(90, 50, 1.0, 0, 0.012, 80) == 1.0


def test_batch_size_does_not_scale_the_learning_rates_by_default():
    """Neither original scales its rates with the batch: the old default (linear) quartered them at batch 32."""
    cfg = build_config(_raw(model={"name": "conv2d_g1"}, recipe={"batch_size": 32}))
    assert lr_scale(32, cfg.recipe.lr_reference_batch, cfg.recipe.lr_scaling) == 1.0
    cfg = build_config(_raw(recipe={"batch_size": 32}))
    assert lr_scale(32, cfg.recipe.lr_reference_batch, cfg.recipe.lr_scaling) == 1.0


def test_conv2d_decay_follows_the_original_per_file_schedule():
    """l_dec: exp(-0.012) per file of 70 steps (batch 128) once 81 files are done, over the whole
    run. The old port decayed per step from step 80 of every epoch (x0.07 at step 300)."""
    rc = build_config(_raw(model={"name": "conv2d_g1"})).recipe
    f = lambda steps: lr_factor(steps, steps, 1.0, 0, rc.lr_decay_rate, rc.lr_decay_start)
    assert f(300) == 1.0 and f(1000) == 1.0 and f(81 * 70) == 1.0
    assert f(91 * 70) == pytest.approx(math.exp(-0.12))
    assert f(81 * 70 + 30 * 20 * 70) == pytest.approx(math.exp(-0.012 * 600))
    # at batch 32 a step is a quarter of a reference step
    rc32 = build_config(_raw(model={"name": "conv2d_g1"}, recipe={"batch_size": 32})).recipe
    assert rc32.lr_reference_batch == 128


def test_fit_ecal_sum_recovers_a_linear_response(rng):
    e = rng.uniform(2, 500, 4000)
    ecal = e * (0.02 + 1e-5 * e)  # ratio rises with E
    fit = fit_ecal_sum(e, ecal)
    probe = np.array([50.0, 250.0, 450.0])
    assert np.allclose(fit(probe), probe * (0.02 + 1e-5 * probe), rtol=2e-3)


@pytest.fixture
def small_file(tmp_path, rng):
    g = load_geometry("clic25")
    n = 50
    showers = rng.exponential(1e-3, size=(n, *g.shape)).astype(np.float32)
    showers[::10] = 0.0  # 5 empty events, dropped by the deposit filter
    energy = np.linspace(10, 400, n)
    path = tmp_path / "train.h5"
    write_showers(path, ShowerSet(showers, energy, np.full(n, np.pi / 2), PRESETS["clic25"]))
    return path, g


def _check_two_ranks_and_resume(data: InMemoryData, n_steps: int) -> list[np.ndarray]:
    """Epoch 1 (seed 3, global batch 8): two ranks together see the one-rank batches, and a run
    resumed at step 2 sees the rest; returns the one-rank batches' energies."""
    one = [b.primary_energy for b in data.batches(3, 1, 0, 1, 8, 0, n_steps)]
    two = [np.concatenate([b0.primary_energy, b1.primary_energy]) for b0, b1 in
           zip(data.batches(3, 1, 0, 2, 8, 0, n_steps), data.batches(3, 1, 1, 2, 8, 0, n_steps))]
    assert all(np.array_equal(a, b) for a, b in zip(one, two))
    resumed = [b.primary_energy for b in data.batches(3, 1, 0, 1, 8, 2, n_steps)]
    assert all(np.array_equal(a, b) for a, b in zip(one[2:], resumed))
    return one


def test_in_memory_order_is_sharded_from_one_permutation(small_file):
    path, g = small_file
    data = InMemoryData([path], g, (20.0, 390.0), 0.1, chunk_size=16)
    assert data.n_events == int(np.sum((np.linspace(10, 400, 50) >= 20) & (np.linspace(10, 400, 50) <= 390))) - 4
    assert data.steps_per_epoch(0, 0, 2, 8) == data.n_events // 8
    one = _check_two_ranks_and_resume(data, 4)
    other_epoch = [b.primary_energy for b in data.batches(3, 2, 0, 1, 8, 0, 4)]
    assert not np.array_equal(one[0], other_epoch[0])


def test_log_uniform_weights_flatten_a_uniform_spectrum_in_log_energy(rng):
    energy = rng.uniform(2.0, 500.0, 200_000)
    p = log_uniform_weights(energy)
    assert p.sum() == pytest.approx(1.0) and (p > 0).all()
    drawn = energy[rng.choice(len(energy), size=200_000, p=p)]
    # uniform in ln E: a decade holds ln(10) / ln(250) = 41.7% of the draws, the data 3.6%
    assert np.mean(drawn < 20.0) == pytest.approx(math.log(10) / math.log(250), abs=0.01)
    assert np.mean(energy < 20.0) == pytest.approx(18 / 498, abs=0.002)
    counts, _ = np.histogram(np.log(drawn), bins=10)
    assert counts.min() > 0.9 * counts.max()


def test_mixed_spectrum_draws_half_uniform_half_log_uniform_whatever_the_data(rng):
    uniform = rng.uniform(2.0, 500.0, 200_000)
    assert spectrum_weights(uniform, "data") is None
    expected_below_20 = 0.5 * (math.log(10) / math.log(250) + 18 / 498)
    expected_above_100 = 0.5 * (math.log(5) / math.log(250) + 400 / 498)
    # uniform data, and the same with as many extra showers log-uniform in 2-100 GeV: same spectrum drawn
    for energy in (uniform, np.concatenate([uniform, np.exp(rng.uniform(math.log(2), math.log(100), 200_000))])):
        p = spectrum_weights(energy, "mixed")
        assert p.sum() == pytest.approx(1.0)
        drawn = energy[rng.choice(len(energy), size=200_000, p=p)]
        assert np.mean(drawn < 20.0) == pytest.approx(expected_below_20, abs=0.01)
        assert np.mean(drawn > 100.0) == pytest.approx(expected_above_100, abs=0.01)
    # on uniform data: half uniform over the events, half log-uniform (to the binning)
    np.testing.assert_allclose(spectrum_weights(uniform, "mixed"),
                               0.5 * log_uniform_weights(uniform) + 0.5 / len(uniform), rtol=0.05)


def test_log_uniform_draws_are_sharded_and_resumable(small_file):
    path, g = small_file
    data = InMemoryData([path], g, None, 0.1, chunk_size=16, energy_spectrum="log_uniform")
    one = _check_two_ranks_and_resume(data, 5)
    drawn = np.concatenate(one)
    assert len(np.unique(drawn)) < len(drawn)  # with replacement
    # low energies drawn more often than in the data (linspace 10-400 GeV: 10% below 50 GeV)
    many = np.concatenate([b.primary_energy for e in range(40) for b in data.batches(0, e, 0, 1, 8, 0, 5)])
    assert np.mean(many < 50.0) > 0.25


def test_streaming_shards_chunks_and_resumes(small_file):
    path, g = small_file
    data = StreamingData([path], g, None, 0.1, chunk_size=5, chunks_in_memory=2)
    assert data.n_events == 45 and len(data.chunks) == 10
    steps = data.steps_per_epoch(0, 0, 2, 4)
    seen = [np.concatenate([b.primary_energy for b in data.batches(0, 0, r, 2, 4, 0, steps)]) for r in range(2)]
    assert len(seen[0]) == len(seen[1]) == 2 * steps
    assert not set(seen[0]) & set(seen[1])  # disjoint shards
    full = [b.primary_energy for b in data.batches(0, 0, 0, 2, 4, 0, steps)]
    tail = [b.primary_energy for b in data.batches(0, 0, 0, 2, 4, 3, steps)]
    assert all(np.array_equal(a, b) for a, b in zip(full[3:], tail)) and len(tail) == steps - 3


@pytest.mark.parametrize("name", ["gan3d_clic25", "gan3d_clic51", "conv2d_g1", "conv2d_g2", "conv2d_g3", "smoke_cpu"])
def test_example_configs_load(name):
    cfg = load_config(Path(__file__).resolve().parent.parent / "configs" / f"{name}.yaml")
    assert cfg.model.name == ("gan3d_clic25" if name == "smoke_cpu" else name)
    expected = {"gan3d_clic51": 150, "conv2d_g1": 30, "conv2d_g2": 30, "conv2d_g3": 30, "gan3d_clic25": 60,
                "smoke_cpu": 3}[name]
    assert cfg.total_epochs == expected
    repo = Path(__file__).resolve().parent.parent  # ../runs and ../data in configs/ mean the repository's
    assert Path(cfg.run.output_dir).resolve().parent == repo / "runs"
    train = Path(cfg.data.train)
    if name in ("gan3d_clic25", "conv2d_g1", "conv2d_g2", "conv2d_g3") and train.name == "*.h5":
        # the shared Geant4 set beside the repository, present on this machine
        assert train.parent.resolve() == (repo.parent / "shared/data/g4-clic25/train").resolve()
        assert (repo.parent / "shared/data/g4-clic25/train").is_dir()
    else:  # the GFlash files in the repository's data/
        assert train.resolve().parent == repo / "data"


def test_data_fallback_is_used_when_the_first_choice_is_missing(tmp_path):
    (tmp_path / "present.h5").write_bytes(b"")
    raw = {"model": {"name": "conv2d_g1"},
           "data": {"train": "missing/*.h5", "validation": "missing/val.h5",
                    "fallback": {"train": "present.h5", "validation": "val.h5"}}}
    cfg = build_config(raw, base_dir=tmp_path)
    assert (cfg.data.train, cfg.data.validation) == (str(tmp_path / "present.h5"), str(tmp_path / "val.h5"))
    raw["data"]["train"] = "present.h5"
    raw["data"]["validation"] = "v.h5"
    cfg = build_config(raw, base_dir=tmp_path)
    assert (cfg.data.train, cfg.data.validation) == (str(tmp_path / "present.h5"), str(tmp_path / "v.h5"))
