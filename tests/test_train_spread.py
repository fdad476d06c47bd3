"""The generator's shower-to-shower spread term (fastshower.train.spread, loss_weights.spread)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fastshower.data import write_showers
from fastshower.geometry import PRESETS
from fastshower.showers import ShowerSet
from fastshower.train.config import build_config
from fastshower.train.spread import (
    GROUPS,
    FeatureStandardizer,
    shower_features,
    spread_loss,
    spread_loss_against_bank,
)
from fastshower.train.trainer import Trainer

SHAPE = (15, 15, 10)


def blob_showers(primary_energy: np.ndarray | torch.Tensor, width: np.ndarray | torch.Tensor,
                 depth: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Gaussian showers (B, 15, 15, 10) in GeV: lateral sigma ``width`` (cells), longitudinal
    maximum at layer ``depth``, 2% of the primary energy deposited; differentiable in width."""
    e, w, d = (torch.as_tensor(v, dtype=torch.float64).view(-1, 1, 1, 1) for v in (primary_energy, width, depth))
    x = torch.arange(SHAPE[0], dtype=torch.float64).view(1, -1, 1, 1) - 7
    y = torch.arange(SHAPE[1], dtype=torch.float64).view(1, 1, -1, 1) - 7
    z = torch.arange(SHAPE[2], dtype=torch.float64).view(1, 1, 1, -1)
    cells = torch.exp(-(x**2 + y**2) / (2 * w**2)) * torch.exp(-((z - d) ** 2) / 8.0)
    return (0.02 * e * cells / cells.sum(dim=(1, 2, 3), keepdim=True)).float()


def real_sample(n: int, seed: int) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Showers whose width grows with ln E and fluctuates by 0.4 cells, depth by 1 layer."""
    rng = np.random.default_rng(seed)
    energy = np.exp(rng.uniform(np.log(5), np.log(500), n))
    width = 1.0 + 0.2 * np.log(energy / 100) + 0.4 * rng.standard_normal(n).clip(-2, 2)
    depth = 3.0 + 0.8 * np.log(energy / 100) + rng.standard_normal(n)
    return blob_showers(energy, width, depth), energy, width


def test_features_of_a_known_shower():
    s = torch.zeros(1, 5, 5, 4)
    s[0, 2, 2, 1] = 0.3  # one cell in layer 1, one in layer 3 at two x positions
    s[0, 1, 2, 3] = 0.05
    s[0, 3, 2, 3] = 0.05
    f = shower_features(s, torch.tensor([20.0]))
    assert f["response"].item() == pytest.approx(math.log(0.4 / 20), rel=1e-5)
    depth = (0.3 * 1 + 0.1 * 3) / 0.4
    assert f["longitudinal"][0, 0].item() == pytest.approx(depth, rel=1e-5)
    assert f["longitudinal"][0, 1].item() == pytest.approx(math.sqrt((0.3 + 0.9) / 0.4 - depth**2 + 1e-4), rel=1e-5)
    assert f["layer_energy"][0].tolist() == pytest.approx([math.log(1e-7), math.log(0.3 / 20 + 1e-7), math.log(1e-7),
                                                           math.log(0.1 / 20 + 1e-7)], rel=1e-4)
    assert f["lateral_profile"][0].tolist() == pytest.approx(
        [math.log(v / 20 + 1e-7) for v in (0, 0.05, 0.3, 0.05, 0, 0, 0, 0.4, 0, 0)], rel=1e-4)
    width_x, width_y = f["layer_width"][0, :4], f["layer_width"][0, 4:]
    assert width_x[3].item() == pytest.approx(math.sqrt(1 + 1e-4), rel=1e-5)  # cells at x = 1 and 3
    assert width_y[3].item() == pytest.approx(0.01, rel=1e-3) and width_x[1].item() == pytest.approx(0.01, rel=1e-3)
    assert f["hits"][0].tolist() == pytest.approx([math.log(4), math.log(4)], abs=0.02)  # 3 cells, all above 0.2 MeV


def test_standardizer_removes_the_energy_dependence():
    showers, energy, _ = real_sample(1500, seed=0)
    st = FeatureStandardizer.fit(showers.numpy(), energy)
    test, e_test, _ = real_sample(600, seed=1)
    z = st.z_scores(test, torch.from_numpy(e_test))
    for group in ("longitudinal", "layer_width"):
        for low, high in ((5, 30), (100, 500)):  # the spread is 1 at low and at high energy
            sel = torch.from_numpy((e_test > low) & (e_test < high))
            v = z[group][sel]
            informative = v.std(dim=0) > 0.1  # layers far from the blob carry no energy
            assert v[:, informative].mean().abs().item() < 0.25
            assert v[:, informative].std(dim=0).mean().item() == pytest.approx(1.0, abs=0.2)


def test_spread_loss_separates_a_collapsed_generator_from_a_second_real_sample():
    showers, energy, _ = real_sample(1500, seed=0)
    st = FeatureStandardizer.fit(showers.numpy(), energy)

    def z_of(s, e):
        return st.z_scores(s, torch.from_numpy(e))

    a, e_a, _ = real_sample(256, seed=2)
    b, e_b, _ = real_sample(256, seed=3)
    collapsed = blob_showers(e_b, 1.0 + 0.2 * np.log(e_b / 100), 3.0 + 0.8 * np.log(e_b / 100))
    floor, _ = spread_loss(z_of(b, e_b), z_of(a, e_a))
    bad, groups = spread_loss(z_of(collapsed, e_b), z_of(a, e_a))
    assert set(groups) == set(GROUPS)
    assert floor.item() < 0.1 and bad.item() > 5 * floor.item()
    assert groups["layer_width"].item() > 0.3 and groups["longitudinal"].item() > 0.3


def test_spread_term_teaches_a_collapsed_generator_its_fluctuations():
    """A 'generator' with width = mean(E) + s * noise, s starting at 0 (collapsed): minimising the
    spread term alone against real batches drives s to the real fluctuation (0.4 cells)."""
    showers, energy, _ = real_sample(1500, seed=0)
    st = FeatureStandardizer.fit(showers.numpy(), energy)
    s = torch.zeros((), requires_grad=True)
    opt = torch.optim.Adam([s], lr=0.04)
    g = torch.Generator().manual_seed(0)
    for step in range(60):
        real, e, _ = real_sample(64, seed=100 + step)
        e_t = torch.from_numpy(e)
        noise = torch.randn(64, generator=g).clamp(-2, 2)
        width = 1.0 + 0.2 * torch.log(e_t / 100) + s * noise
        depth = 3.0 + 0.8 * torch.log(e_t / 100) + torch.randn(64, generator=g, dtype=torch.float64)
        fake = blob_showers(e_t, width, depth)
        loss, _ = spread_loss(st.z_scores(fake, e_t), st.z_scores(real, e_t))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert abs(s.item()) == pytest.approx(0.4, abs=0.1)


def _trainer(tmp_path, train, spread: float | None, **recipe_fields) -> Trainer:
    recipe = {"batch_size": 4, **recipe_fields}
    if spread is not None:
        recipe["loss_weights"] = {"spread": spread}
    raw = {"model": {"name": "conv2d_g1", "config": {"width": 0.125, "cell_power": 0.5}}, "recipe": recipe,
           "data": {"train": str(train)},
           "run": {"epochs": 1, "steps_per_epoch": 1, "output_dir": str(tmp_path), "progress": False,
                   "tensorboard": "false"}}
    return Trainer(build_config(raw))


def test_trainer_adds_the_spread_term_to_the_generator_loss_only_when_weighted(tmp_path):
    rng = np.random.default_rng(0)
    n = 40  # more than the standardizer's minimum of 16 showers
    train = tmp_path / "train.h5"
    write_showers(train, ShowerSet(rng.exponential(2e-3, size=(n, 25, 25, 25)).astype(np.float32),
                                   rng.uniform(10, 400, n), np.full(n, np.pi / 2), PRESETS["clic25"]))
    on = _trainer(tmp_path / "on", train, 1.0)
    assert on.recipe.loss_weights.real == 6.0  # the preset's other weights are kept
    on.prepare()
    assert on._spread is not None
    out = on.train_step(next(iter(on.data_for_epoch(0).batches(0, 0, 0, 1, 4, 0, 1))))
    assert math.isfinite(out["g_spread"]) and out["g_spread"] > 0
    assert "d_real_spread" not in out and "d_fake_spread" not in out
    calls = []
    bank = _trainer(tmp_path / "bank", train, 1.0, spread_energies="log_uniform")
    raw = bank.G.generate_raw

    def spy(energy, *args):
        calls.append(energy.clone())
        return raw(energy, *args)

    bank.G.generate_raw = spy  # type: ignore[method-assign]
    bank.prepare()
    calls.clear()  # the output-scale calibration's call
    assert bank._spread_bank is not None
    z_bank, e_bank = bank._spread_bank
    assert len(e_bank) == n and z_bank["hits"].shape == (n, 2)
    out = bank.train_step(next(iter(bank.data_for_epoch(0).batches(0, 0, 0, 1, 4, 0, 1))))
    assert math.isfinite(out["g_spread"]) and out["g_spread"] > 0
    # the D step's fake batch, then the G step's batch and the spread term's extra batch in one call
    assert [len(c) for c in calls] == [4, 8]
    extra = calls[1][4:]
    assert bool((extra >= e_bank.min() - 1e-3).all() and (extra <= e_bank.max() + 1e-3).all())
    off = _trainer(tmp_path / "off", train, None)
    off.prepare()
    assert off._spread is None and off.recipe.loss_weights.spread == 0.0
    assert "g_spread" not in off.train_step(next(iter(off.data_for_epoch(0).batches(0, 0, 0, 1, 4, 0, 1))))


def test_energy_slices_catch_a_bias_that_mimics_spread_in_the_mixture_of_energies():
    """Zero spread at each energy, the width 1 sigma too narrow below 50 GeV and too wide above:
    mixed over energies it looks like the real spread; within slices of similar energy it does not."""
    showers, energy, _ = real_sample(1500, seed=0)
    st = FeatureStandardizer.fit(showers.numpy(), energy)
    a, e_a, _ = real_sample(256, seed=2)
    e_b = real_sample(256, seed=3)[1]
    sign = np.where(e_b > 50, 1.0, -1.0)
    biased = blob_showers(e_b, 1.0 + 0.2 * np.log(e_b / 100) + 0.4 * sign, 3.0 + 0.8 * np.log(e_b / 100) + sign)
    e_a_t, e_b_t = torch.from_numpy(e_a), torch.from_numpy(e_b)
    z_a = st.z_scores(a, e_a_t)
    z_b = st.z_scores(biased, e_b_t)
    mixed = spread_loss(z_b, z_a)[1]["layer_width"].item()
    sliced = spread_loss(z_b, z_a, e_b_t, e_a_t, energy_groups=4)[1]["layer_width"].item()
    assert sliced > 3 * mixed
    with pytest.raises(ValueError, match="primary energies"):
        spread_loss(z_b, z_a, energy_groups=4)


def test_bank_slices_compare_each_energy_range_with_the_bank_showers_of_that_range():
    """Generated showers at low energy collapsed, at high energy right: against a bank spread over
    all energies, the distance comes from the low slice only (the bank showers of the other energies
    do not dilute it), and the low slice takes at least the nearest bank showers when few lie inside."""
    showers, energy, _ = real_sample(1500, seed=0)
    st = FeatureStandardizer.fit(showers.numpy(), energy)
    e_bank = torch.from_numpy(energy)
    z_bank = st.z_scores(showers, e_bank)
    good, e_good, _ = real_sample(256, seed=4)
    e_t = torch.from_numpy(e_good)
    collapsed_low = blob_showers(e_good, 1.0 + 0.2 * np.log(e_good / 100), 3.0 + 0.8 * np.log(e_good / 100))
    mixed = torch.where(torch.from_numpy(e_good < 30).view(-1, 1, 1, 1), collapsed_low, good)
    z_good = st.z_scores(good, e_t)
    z_mixed = st.z_scores(mixed, e_t)
    floor = spread_loss_against_bank(z_good, e_t, z_bank, e_bank, 4)[1]["layer_width"].item()
    bad = spread_loss_against_bank(z_mixed, e_t, z_bank, e_bank, 4)[1]["layer_width"].item()
    assert floor < 0.1 and bad > 3 * floor
    four = {g: v[:4] for g, v in z_good.items()}
    few = spread_loss_against_bank(four, e_t[:4] * 0 + 600.0, z_bank, e_bank, 1, min_bank_showers=16)[0]
    assert math.isfinite(few.item())  # no bank shower at 600 GeV: the 16 nearest are used
