"""Models: shapes, sizes against the published/computed figures, save/load, reproducibility, the
discriminator heads, Keras-semantics layers, and that the energy conditioning learns the right
direction in a few steps on reference showers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fastshower.geometry import PRESETS
from fastshower.models import registry
from fastshower.models.layers import (
    BatchNorm3dAlwaysTraining,
    Conv2d,
    Conv3d,
    ConvTranspose2d,
    FixedStatisticsBatchNorm,
    keras_parameter_count,
    minibatch_std,
    same_padding,
)

MODEL_NAMES = sorted(registry.MODELS)
#: The 25^3 models, cheap enough on a CPU to train a few dozen steps in a test.
FIXED_ANGLE_MODELS = [n for n in MODEL_NAMES if registry.MODELS[n].geometry.name == "clic25"]
#: Small networks for the functional tests (the size test builds the published width).
SMALL = {"width": 0.25}


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: on the shared 2-core machine these small networks run ~3x faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _conditions(n: int, generator, energies=(50.0, 400.0)):
    energy = torch.tensor([energies[i % len(energies)] for i in range(n)], dtype=torch.float32)
    angle = torch.full((n,), math.pi / 2) if not generator.conditions_on_angle else \
        torch.linspace(generator.angle_range_rad[0], generator.angle_range_rad[1], n)
    return energy, angle


# ------------------------------------------------------------------------ sizes and shapes

@pytest.mark.parametrize("name", MODEL_NAMES)
def test_parameter_count_matches_published(name):
    # Keras convention: weights + biases + BN gamma/beta + BN moving mean/variance (PyTorch buffers
    # running_mean/running_var); num_batches_tracked not counted.
    spec = registry.MODELS[name]
    g = registry.build_generator(name)
    d = registry.build_discriminator(name)
    for part, model in (("generator", g), ("discriminator", d)):
        published = spec.published_parameters[part]
        ours = keras_parameter_count(model)
        assert abs(ours - published) <= 0.02 * published, (name, part, ours, published)


def test_gan3d_counts_are_exact():
    g = registry.build_generator("gan3d_clic25")
    assert keras_parameter_count(g) == 872_948
    assert keras_parameter_count(g, trainable_only=True) == 872_808
    assert keras_parameter_count(registry.build_discriminator("gan3d_clic25")) == 73_450


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_generator_output_shape_units_and_reproducible_noise(name):
    torch.manual_seed(0)
    g = registry.build_generator(name, **SMALL).eval()
    shape = g.geometry.shape
    energy, angle = _conditions(3, g)
    noise_a = g.sample_noise(3, generator=torch.Generator().manual_seed(7))
    noise_b = g.sample_noise(3, generator=torch.Generator().manual_seed(7))
    assert noise_a.shape == (3, g.noise_dim)
    assert torch.equal(noise_a, noise_b)
    with torch.no_grad():
        raw = g.generate_raw(energy, angle, noise_a)
        showers = g(energy, angle, noise_b)
    assert raw.shape == (3, *shape) and showers.shape == (3, *shape)
    assert showers.dtype == torch.float32
    torch.testing.assert_close(showers, g.postprocess(raw))
    # the round trip is exact up to the clipping of negative outputs (linear/LeakyReLU heads) to 0 GeV
    torch.testing.assert_close(g.preprocess(showers), raw.clamp_min(0), rtol=1e-4, atol=1e-6)
    assert float(showers.min()) >= 0.0


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_save_load_round_trip(name, tmp_path):
    torch.manual_seed(1)
    g = registry.build_generator(name, **SMALL)
    g.train()
    energy, angle = _conditions(4, g)
    with torch.no_grad():  # move the BN moving statistics away from their initial values
        for _ in range(3):
            g(energy, angle, g.sample_noise(4))
    g.eval()
    path = registry.save_generator(g, tmp_path / "gen", {"epoch": 3})
    assert path == tmp_path / "gen.json" and (tmp_path / "gen.safetensors").is_file()
    card = registry.read_card(tmp_path / "gen")
    assert card["model"] == name and card["metadata"] == {"epoch": 3}
    assert card["config"]["width"] == 0.25 and card["geometry"] == g.geometry.name
    loaded = registry.load_generator(tmp_path / "gen.safetensors")
    assert not loaded.training
    noise = g.sample_noise(4, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(loaded(energy, angle, noise), g(energy, angle, noise), rtol=0, atol=0)


def test_load_unknown_generator_names_shipped(tmp_path):
    with pytest.raises(FileNotFoundError, match="no shipped generator named 'nope'"):
        registry.load_generator("nope")
    (tmp_path / "card.json").write_text('{"model": "gan3d_clic25", "config": {}}')
    with pytest.raises(FileNotFoundError, match="no weights file card.safetensors"):
        registry.load_generator(tmp_path / "card")
    with pytest.raises(ValueError, match="unknown model"):
        registry.build_generator("gan4d")


def test_shipped_generators_are_found_by_name(tmp_path, monkeypatch):
    monkeypatch.setattr(registry, "WEIGHTS_DIR", tmp_path)
    assert registry.list_shipped() == []
    torch.manual_seed(4)
    g = registry.build_generator("conv2d_g1", **SMALL).eval()
    registry.save_generator(g, tmp_path / "conv2d_g1", {"trained_by": "test"})
    (tmp_path / "orphan.json").write_text("{}")  # a card without weights is not listed
    assert registry.list_shipped() == ["conv2d_g1"]
    loaded = registry.load_generator("conv2d_g1")
    energy, angle = torch.tensor([80.0]), torch.tensor([math.pi / 2])
    noise = g.sample_noise(1, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(loaded(energy, angle, noise), g(energy, angle, noise))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_spec_default_config_round_trips(name):
    spec = registry.MODELS[name]
    config = spec.default_config()
    assert config.width == 1.0
    assert spec.config_class.model_validate_json(config.model_dump_json()) == config
    g = registry.build_generator(name, width=0.5)
    assert g.geometry == spec.geometry and g.config.width == 0.5
    with pytest.raises(ValueError):
        registry.build_generator(name, no_such_option=1)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_discriminator_heads(name, rng):
    torch.manual_seed(2)
    g = registry.build_generator(name, **SMALL)
    d = registry.build_discriminator(name, **SMALL).train()
    shape = g.geometry.shape
    showers_gev = torch.from_numpy(rng.exponential(1e-3, size=(4, *shape)).astype(np.float32))
    image = g.preprocess(showers_gev)
    out = d(image)
    for key in ("real", "energy", "ecal_sum"):
        assert out[key].shape == (4,)
    assert bool(((out["real"] > 0) & (out["real"] < 1)).all())
    # the ECAL sum is the image sum with the power transform undone: scale x GeV
    expected = showers_gev.sum(dim=(1, 2, 3)).double() * g.transform.scale
    torch.testing.assert_close(out["ecal_sum"].double(), expected, rtol=1e-4, atol=0)
    torch.testing.assert_close(d.ecal_sum_of(image), out["ecal_sum"])
    assert ("angle" in out) == g.conditions_on_angle


# ------------------------------------------------------------------------ Keras semantics

def test_same_padding_puts_the_extra_cell_at_the_end():
    assert same_padding((6, 5, 8)) == (3, 4, 2, 2, 2, 3)  # last axis first: z (3, 4), y (2, 2), x (2, 3)
    conv = Conv3d(1, 1, (2, 2, 2), padding="same", bias=False)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 0, 0, 0] = 1.0  # picks the cell itself: output == input
        conv.weight[0, 0, 1, 0, 0] = 10.0  # and 10 x the next cell along x (zero past the end)
    x = torch.arange(3.0).view(1, 1, 3, 1, 1)
    assert conv(x).flatten().tolist() == [10.0, 21.0, 2.0]


def test_conv2d_same_and_transposed_same_sizes():
    assert Conv2d(2, 3, 8, padding="same")(torch.zeros(1, 2, 30, 30)).shape == (1, 3, 30, 30)
    assert ConvTranspose2d(2, 3, 5, stride=3, padding="same")(torch.zeros(1, 2, 5, 5)).shape == (1, 3, 15, 15)
    assert ConvTranspose2d(2, 3, 5, stride=2, padding="same")(torch.zeros(1, 2, 15, 15)).shape == (1, 3, 30, 30)
    assert ConvTranspose2d(2, 3, 5, stride=2)(torch.zeros(1, 2, 15, 15)).shape == (1, 3, 33, 33)


def test_transposed_same_crops_like_tensorflow():
    # TF conv2d_transpose 'same', k=5, s=2 on a 1-pixel input: the full 5-wide output is cropped
    # (k - s) // 2 = 1 at the start and 2 at the end -> kernel taps 1..2.
    conv = ConvTranspose2d(1, 1, 5, stride=2, padding="same", bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.arange(25.0).view(1, 1, 5, 5))
    y = conv(torch.ones(1, 1, 1, 1))
    assert y.shape == (1, 1, 2, 2)
    assert y.flatten().tolist() == [6.0, 7.0, 11.0, 12.0]


def test_batchnorm_always_training_uses_batch_statistics_in_eval():
    bn = BatchNorm3dAlwaysTraining(1).eval()
    x = torch.tensor([1.0, 3.0]).view(2, 1, 1, 1, 1)
    y = bn(x).flatten()
    torch.testing.assert_close(y, torch.tensor([-1.0, 1.0]) / math.sqrt(1 + 1e-3))
    assert bn.running_mean.item() == 0.0  # eval mode leaves the moving statistics alone
    bn.train()(x)
    assert bn.running_mean.item() == pytest.approx(0.01 * 2.0)  # Keras momentum 0.99


def test_fixed_statistics_batchnorm_is_a_learnable_affine_map():
    """Keras BatchNormalization called in inference mode (the TF2 Conv2D loop): moving statistics
    (0, 1), never updated, so only gamma and beta act, in train and eval mode alike."""
    bn = FixedStatisticsBatchNorm(2, 3, eps=1e-3).train()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, 3.0]))
        bn.bias.copy_(torch.tensor([0.5, 0.0, -1.0]))
    x = torch.randn(4, 3, 5, 5)
    expected = x / math.sqrt(1 + 1e-3) * bn.weight.view(1, 3, 1, 1) + bn.bias.view(1, 3, 1, 1)
    torch.testing.assert_close(bn(x), expected)
    torch.testing.assert_close(bn.eval()(x), expected)
    assert bn.running_mean.abs().max().item() == 0.0 and bn.running_var.eq(1).all()
    assert set(bn.state_dict()) == set(torch.nn.BatchNorm2d(3).state_dict())


@pytest.mark.parametrize("name", ["conv2d_g1", "conv2d_g3"])
def test_conv2d_discriminator_heads_depend_on_the_input_in_training_mode(name, rng):
    """The Conv2D D is trained on all-real and all-fake batches. With batch-statistics BatchNorm
    right before its heads (the old port) the batch mean of each head is the same for any input:
    real showers, showers x1000 and empty showers. The original's inference-mode BatchNorm (the
    default) keeps the input's information. (Mean logit and mean energy: both heads are linear in
    the normalised features.)"""
    torch.manual_seed(0)
    showers = torch.from_numpy(rng.exponential(0.02, size=(8, 25, 25, 25)).astype(np.float32))
    batches = [showers, showers * 1000, torch.zeros_like(showers)]

    def batch_means(d):
        outs = [d(x) for x in batches]
        return [(torch.logit(o["real"].double()).mean().item(), o["energy"].mean().item()) for o in outs]

    d = registry.build_discriminator(name, width=0.125).train()
    assert registry.make_config(name).batchnorm == "inference"
    assert not any(isinstance(m, torch.nn.Dropout) for m in d.modules())  # dropout never fired
    (r0, e0), (r1, e1), (r2, e2) = batch_means(d)
    assert abs(e1 - e0) > 1e-3 and abs(e2 - e0) > 1e-4 and abs(r1 - r0) > 1e-4
    blind = registry.build_discriminator(name, width=0.125, batchnorm="train", dropout=0.0).train()
    (r0, e0), (r1, e1), (r2, e2) = batch_means(blind)
    assert e1 == pytest.approx(e0, abs=1e-5) and e2 == pytest.approx(e0, abs=1e-5)
    assert r1 == pytest.approx(r0, abs=1e-4) and r2 == pytest.approx(r0, abs=1e-4)


def test_minibatch_std_groups_showers_of_similar_energy():
    """Groups are formed along ``order``: a batch of two energies, each repeated 4 times, has zero
    spread in groups of 4 whatever the batch order, and the feature follows a permutation of the
    batch; a tail group (7 samples, groups of 4) overlaps the previous one; one sample gives 0."""
    torch.manual_seed(0)
    low, high = torch.randn(1, 6), torch.randn(1, 6) + 5.0
    features = torch.cat([low.expand(4, 6), high.expand(4, 6)])
    energy = torch.tensor([1.0] * 4 + [2.0] * 4)
    perm = torch.randperm(8)
    assert minibatch_std(features[perm], energy[perm], 4).abs().max() < 1e-3
    assert minibatch_std(features[perm], torch.randperm(8).float(), 4).min() > 1.0  # mixed groups
    diverse, order = torch.randn(8, 6), torch.randn(8)
    torch.testing.assert_close(minibatch_std(diverse[perm], order[perm], 4), minibatch_std(diverse, order, 4)[perm])
    out = minibatch_std(diverse[:7], order[:7], 4).squeeze(1)
    ranked = torch.argsort(order[:7])
    tail = diverse[:7][ranked[3:]].std(dim=0, unbiased=False).mean()
    assert out[ranked[4:]].tolist() == pytest.approx([tail.item()] * 3, rel=1e-4)
    assert minibatch_std(diverse[:1], order[:1], 4).tolist() == [[0.0]]


def test_conv2d_discriminator_with_minibatch_std_sees_a_collapsed_batch():
    """With ``minibatch_std_group`` a shower's outputs depend on the rest of its batch: the same
    shower scores differently among copies of itself (a collapsed generator's batch) than among
    other showers; without it they do not. The extra input starts the Dense(10) one wider."""
    torch.manual_seed(0)
    showers = torch.rand(8, 25, 25, 25) ** 4
    collapsed = showers[:1].expand(8, -1, -1, -1)
    plain = registry.build_discriminator("conv2d_g1", width=0.125).eval()
    torch.testing.assert_close(plain(showers)["real"][0], plain(collapsed)["real"][0])
    d = registry.build_discriminator("conv2d_g1", width=0.125, minibatch_std_group=4).eval()
    assert d.hidden[0].in_features == plain.hidden[0].in_features + 1
    assert abs(d(showers)["real"][0].item() - d(collapsed)["real"][0].item()) > 1e-5


def test_gan3d_clic25_discriminator_sees_the_pattern_but_not_the_batch_scale(rng):
    """The 25^3 D normalises with batch statistics inside its convolutional features (Keras
    training=True), before pooling and the heads: a batch of showers and the same batch moved in x
    give different mean outputs (not blind), while the batch x1000 gives the same (the absolute
    scale is lost, at initialisation with zero biases, as in Keras)."""
    torch.manual_seed(0)
    d = registry.build_discriminator("gan3d_clic25", width=0.25, dropout=0.0).train()
    showers = torch.zeros(8, 25, 25, 25)
    showers[:, 10:15, 10:15, 2:20] = torch.from_numpy(rng.exponential(1.0, (8, 5, 5, 18)).astype(np.float32))
    mean = lambda x: d(x)["energy"].mean().item()  # noqa: E731
    assert abs(mean(showers.roll(6, dims=1)) - mean(showers)) > 1e-4
    assert mean(showers * 1000) == pytest.approx(mean(showers), abs=1e-4)


def test_gan3d_batchnorm_follows_keras_training_mode_with_epsilon_1e6():
    """EcalEnergyGan / AngleArch3dGAN: BatchNormalization(epsilon=1e-6) in G and D, layers called in
    training mode (train_on_batch), the 25^3 D with training=True always."""
    for name in ("gan3d_clic25", "gan3d_clic51"):
        cfg = registry.make_config(name)
        assert (cfg.generator_bn_eps, cfg.discriminator_bn_eps, cfg.batchnorm) == (1e-6, 1e-6, "train")
        for net in (registry.build_generator(name, width=0.125), registry.build_discriminator(name, width=0.125)):
            bns = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
            assert bns and all(m.eps == 1e-6 for m in bns)
    d = registry.build_discriminator("gan3d_clic25", width=0.125)
    assert sum(isinstance(m, BatchNorm3dAlwaysTraining) for m in d.modules()) == 3
    assert sum(isinstance(m, torch.nn.Dropout) for m in d.modules()) == 4


def test_conv2d_output_scale_multiplies_and_is_saved(tmp_path):
    torch.manual_seed(0)
    g = registry.build_generator("conv2d_g1", width=0.125).eval()
    assert g.needs_output_scale and float(g.output_scale) == 1.0
    energy, angle = _conditions(2, g)
    noise = g.sample_noise(2, generator=torch.Generator().manual_seed(1))
    raw = g.generate_raw(energy, angle, noise)
    g.set_output_scale(1.3e-3)
    torch.testing.assert_close(g.generate_raw(energy, angle, noise), raw * 1.3e-3)
    registry.save_generator(g, tmp_path / "g")
    back = registry.load_generator(tmp_path / "g")
    assert back.config.output_scale == pytest.approx(1.3e-3) and not back.needs_output_scale
    torch.testing.assert_close(back(energy, angle, noise), g(energy, angle, noise))
    card = registry.read_card(tmp_path / "g")
    assert card["preprocessing"]["output_scale"] == pytest.approx(1.3e-3)
    old = {k: v for k, v in g.state_dict().items() if k != "output_scale"}  # weights from before the scale
    fresh = registry.build_generator("conv2d_g1", width=0.125)
    fresh.load_state_dict(old)
    assert float(fresh.output_scale) == 1.0


def test_keras_layer_defaults():
    g = registry.build_generator("gan3d_clic25")
    slopes = {m.negative_slope for m in g.modules() if isinstance(m, torch.nn.LeakyReLU)}
    assert slopes == {0.3}
    bns = [m for m in g.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    assert bns and all(m.momentum == 0.01 and m.eps == 1e-6 for m in bns)
    ups = [m for m in g.modules() if isinstance(m, torch.nn.Upsample)]
    assert ups and all(m.mode == "nearest" for m in ups)
    # he_uniform: bound sqrt(6 / fan_in); fan_in of Conv3D(6, (6,5,8)) on 64 channels = 15360
    conv = [m for m in g.modules() if isinstance(m, Conv3d)][1]
    assert float(conv.weight.detach().abs().max()) <= math.sqrt(6 / 15360)
    assert float(conv.weight.detach().abs().max()) > 0.95 * math.sqrt(6 / 15360)
    assert float(conv.bias.detach().abs().max()) == 0.0


# ------------------------------------------------------------------------ conditioning

def _reference_showers(geometry, energy_gev: np.ndarray, rng: np.random.Generator,
                       angle_rad: float = math.pi / 2) -> np.ndarray:
    """Reference (GFlash) showers in GeV, (n, nx, ny, nz)."""
    from fastshower.simulate.gflash import simulate_showers

    return simulate_showers(geometry, energy_gev, np.full(len(energy_gev), angle_rad), rng)


def _recalibrate_batchnorm(generator, energy_range, n_batches: int = 4, batch: int = 32) -> None:
    """Moving statistics = the average over a few mixed-energy batches (momentum 0.01 would need
    hundreds of steps to forget their initial values)."""
    bns = [m for m in generator.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    generator.train()
    with torch.no_grad():
        for i in range(n_batches):
            gen = torch.Generator().manual_seed(100 + i)
            e = energy_range[0] + (energy_range[1] - energy_range[0]) * torch.rand(batch, generator=gen)
            a = torch.full((batch,), math.pi / 2)
            generator.generate_raw(e, a, generator.sample_noise(batch, generator=gen))
    for m in bns:
        m.momentum = 0.01
    generator.eval()


def test_energy_conditioning_learns_the_deposited_energy(rng):
    """gan3d_clic25: 40 steps regressing the total deposited energy (the ECAL-sum term of the GAN
    loss) on reference showers; afterwards 400 GeV showers carry ~8x the energy of 50 GeV ones, at
    the reference's sampling fraction. (The untrained network fails both: its 400 GeV showers hold
    ~35 GeV.)"""
    torch.manual_seed(3)
    g = registry.build_generator("gan3d_clic25", **SMALL)
    d = registry.build_discriminator("gan3d_clic25", **SMALL)
    opt = torch.optim.Adam(g.parameters(), lr=2e-3)
    train_energy = np.linspace(20.0, 500.0, 64)
    reference = torch.from_numpy(_reference_showers(g.geometry, train_energy, rng))
    target = d.ecal_sum_of(g.preprocess(reference))
    energy = torch.tensor(train_energy, dtype=torch.float32)
    angle = torch.full((64,), math.pi / 2)
    noise_gen = torch.Generator().manual_seed(4)
    for _ in range(40):
        idx = torch.randint(0, 64, (16,), generator=noise_gen)
        fake = g.generate_raw(energy[idx], angle[idx], g.sample_noise(16, generator=noise_gen))
        loss = ((d.ecal_sum_of(fake) - target[idx]).abs() / target[idx]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    _recalibrate_batchnorm(g, (20.0, 500.0))
    with torch.no_grad():
        means = {}
        for e in (50.0, 400.0):
            showers = g(torch.full((32,), e), torch.full((32,), math.pi / 2),
                        g.sample_noise(32, generator=torch.Generator().manual_seed(5)))
            means[e] = float(showers.sum(dim=(1, 2, 3)).mean())
    assert means[400.0] > means[50.0] > 0
    assert 4.0 < means[400.0] / means[50.0] < 16.0, means
    assert means[400.0] == pytest.approx(0.02 * 400, rel=0.5), means


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_conditions_reach_the_output(name):
    """Same noise, other energy -> other shower; other angle -> other shower exactly when the
    model conditions on the angle."""
    torch.manual_seed(6)
    g = registry.build_generator(name, **SMALL).eval()
    noise = g.sample_noise(2, generator=torch.Generator().manual_seed(8))
    lo, hi = (1.2, 1.9) if g.conditions_on_angle else (math.pi / 2, 1.2)
    with torch.no_grad():
        base = g(torch.tensor([50.0, 50.0]), torch.tensor([lo, lo]), noise)
        other_energy = g(torch.tensor([400.0, 400.0]), torch.tensor([lo, lo]), noise)
        other_angle = g(torch.tensor([50.0, 50.0]), torch.tensor([hi, hi]), noise)
    assert float((other_energy - base).abs().max()) > 1e-6
    assert torch.equal(other_angle, base) != g.conditions_on_angle


def test_conv2d_angle_condition_extends_the_latent():
    g = registry.build_generator("conv2d_g1", condition_on_angle=True, **SMALL)
    assert g.conditions_on_angle and g.noise_dim == 200 and g.dense.in_features == 201
    assert registry.build_generator("conv2d_g1", **SMALL).dense.in_features == 200


def test_conv2d_scaled_and_raw_latent_keeps_the_noise_amplitude_at_low_energy():
    """``latent: scaled_and_raw`` = [(E/100) n, theta, n, ln(E/100)]; with the original latent a 2 GeV
    shower's Dense input is 1/50 of a 100 GeV one's, with the extra inputs the raw noise is kept."""
    g = registry.build_generator("conv2d_g1", condition_on_angle=True, latent="scaled_and_raw", **SMALL)
    assert g.dense.in_features == 402
    noise = torch.randn(2, 200, generator=torch.Generator().manual_seed(0))
    energy, angle = torch.tensor([2.0, 100.0]), torch.tensor([1.0, 1.5])
    z = g.latent(energy, angle, noise)
    torch.testing.assert_close(z[:, :200], noise * torch.tensor([[0.02], [1.0]]))
    torch.testing.assert_close(z[:, 200], angle)
    torch.testing.assert_close(z[:, 201:401], noise)
    torch.testing.assert_close(z[:, 401], torch.log(energy / 100))
    scaled = registry.build_generator("conv2d_g1", condition_on_angle=True, **SMALL).latent(energy, angle, noise)
    torch.testing.assert_close(scaled, z[:, :201])


def test_relu_switch_keeps_the_weights(tmp_path):
    torch.manual_seed(9)
    g = registry.build_generator("conv2d_g1", **SMALL).eval()
    assert g.config.output_activation == "linear"
    energy, angle = torch.tensor([100.0, 300.0]), torch.full((2,), math.pi / 2)
    noise = g.sample_noise(2, generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        linear = g.generate_raw(energy, angle, noise)
        assert float(linear.min()) < 0  # the linear head lets negative cells through (clipped in GeV)
        g.use_relu_output()
        relu = g(energy, angle, noise)
    torch.testing.assert_close(relu, g.postprocess(linear))
    torch.testing.assert_close(g.generate_raw(energy, angle, noise), linear.clamp_min(0))
    assert g.config.output_activation == "relu"
    registry.save_generator(g, tmp_path / "g1", {})
    loaded = registry.load_generator(tmp_path / "g1")
    with torch.no_grad():
        torch.testing.assert_close(loaded(energy, angle, noise), relu, rtol=0, atol=0)


# ------------------------------------------------------------------------ measured angle

def _tilted_track(theta: float, shape=(51, 51, 25), y0: float = 25.5) -> torch.Tensor:
    """One cell-energy line per layer whose y barycentre is exactly y0 + (z - z0) cot(theta)
    (cell units, centres at index + 0.5), split linearly between two neighbouring cells."""
    nx, ny, nz = shape
    image = torch.zeros(1, *shape, dtype=torch.float64)
    z = torch.arange(nz, dtype=torch.float64) + 0.5
    y = y0 + (z - z.mean()) / math.tan(theta)
    for k in range(nz):
        lo = int(math.floor(y[k] - 0.5))
        frac = float(y[k] - 0.5 - lo)
        image[0, nx // 2, lo, k] = (1 - frac) * (k + 2)
        image[0, nx // 2, lo + 1, k] = frac * (k + 2)
    return image


@pytest.mark.parametrize("theta_deg", [62.0, 90.0, 118.0])
def test_measured_angle_of_a_tilted_axis(theta_deg):
    from fastshower.models.gan3d import measured_angle

    theta = math.radians(theta_deg)
    measured = measured_angle(_tilted_track(theta))
    assert float(measured) == pytest.approx(theta, abs=1e-6)


@pytest.mark.parametrize("theta_deg", [62.0, 90.0, 118.0])
def test_measured_angle_of_reference_showers(theta_deg, rng):
    """On GFlash showers (axis in the y-z plane) the Keras angle measurement is within ~2 deg of
    the incident angle on average (measured: 63.7, 89.5, 116.6 deg; biased toward 90 deg, as the
    layer at the barycentre counts as 90 deg)."""
    from fastshower.models.gan3d import measured_angle

    showers = _reference_showers(PRESETS["clic51"], np.full(16, 100.0), rng, math.radians(theta_deg))
    measured = np.degrees(measured_angle(torch.from_numpy(showers).double()).numpy())
    assert measured.mean() == pytest.approx(theta_deg, abs=2.5)
    assert measured.std() < 4.0


def test_measured_angle_empty_showers_and_gradients():
    from fastshower.models.gan3d import measured_angle

    image = torch.zeros(2, 51, 51, 25, dtype=torch.float64)
    image[1] = _tilted_track(math.radians(70.0))[0]
    image[1, :, :, 20:] = 0  # empty layers are left out of the average
    image.requires_grad_(True)
    angle = measured_angle(image)
    assert float(angle[0].detach()) == 100.0
    assert float(angle[1].detach()) == pytest.approx(math.radians(70.0), abs=1e-6)
    angle[1].backward()
    assert bool(torch.isfinite(image.grad).all()) and float(image.grad.abs().sum()) > 0


def test_average_generators_is_the_mean_of_the_weights(tmp_path):
    """Weight averaging over checkpoints: every float weight is the mean of the inputs', the output
    scale is kept, and generators of another configuration are refused."""
    stems = []
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        g = registry.build_generator("conv2d_g1", width=0.125, output_scale=2e-3)
        registry.save_generator(g, tmp_path / f"g{seed}")
        stems.append(tmp_path / f"g{seed}")
    states = [registry.load_generator(s).state_dict() for s in stems]
    avg = registry.average_generators(stems)
    for key, value in avg.state_dict().items():
        if key.endswith("output_scale"):
            assert float(value) == pytest.approx(2e-3)
        elif value.is_floating_point():
            torch.testing.assert_close(value, sum(s[key] for s in states) / 3)
    assert any(not torch.equal(states[0][k], states[1][k]) for k in states[0])  # the inputs differ
    registry.save_generator(registry.build_generator("conv2d_g1", width=0.25, output_scale=2e-3), tmp_path / "other")
    with pytest.raises(ValueError, match="differ"):
        registry.average_generators([stems[0], tmp_path / "other"])
