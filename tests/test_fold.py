"""Inference-time rewrites (fastshower.infer.fold): the folded network computes the same showers."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from fastshower.infer.fold import (
    FOLD_RTOL,
    BiasMap,
    ConvTransposeCrop,
    check_fold,
    flop_report,
    flops_per_shower,
    fold_generator,
)
from fastshower.models.layers import Conv3d
from fastshower.models.registry import MODELS, build_generator

WIDTH = 0.125


def _random_generator(name: str, seed: int = 0):
    """A small generator with random weights and random BatchNorm statistics and affine terms
    (fresh BN would be the identity and hide a wrong fold)."""
    torch.manual_seed(seed)
    g = build_generator(name, width=WIDTH).eval()
    with torch.no_grad():
        for m in g.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.3, 2.0)
                m.weight.uniform_(-1.5, 1.5)  # negative scales too
                m.bias.uniform_(-0.5, 0.5)
    return g


@pytest.mark.parametrize("name,form", [(name, "auto") for name in sorted(MODELS)]
                         + [("gan3d_clic25", "transposed"), ("conv2d_g1", "subpixel")])
def test_folded_generator_equals_original(name, form):
    g = _random_generator(name)
    before = {k: v.clone() for k, v in g.state_dict().items()}
    folded = fold_generator(g, form=form)
    err = check_fold(g, folded, n=4)
    assert err["is_finite"]
    assert err["max_rel_err"] <= FOLD_RTOL and err["max_rel_err_raw"] <= FOLD_RTOL, err
    # the original is untouched, and every foldable BN went (only branch-final ones stay)
    assert all(torch.equal(before[k], v) for k, v in g.state_dict().items())
    n_bn = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    assert n_bn == folded.folded["batchnorm_kept"]
    assert folded.folded["batchnorm"] > 0  # every model has BN layers followed by a linear one
    assert not any(isinstance(m, nn.Dropout) for m in folded.modules())


def test_gan3d_clic25_fold_and_flops():
    g = build_generator("gan3d_clic25", width=1.0)
    report = flop_report(g)
    assert report["folded"]["upsample_conv"] == 2 and report["folded"]["batchnorm"] == 2
    assert report["folded"]["dense_conv"] == 1
    assert report["flops_before"] == pytest.approx(0.511e9, rel=0.01)
    # upsampling folds alone: the estimate, ~0.19 GFLOP/shower when only the needed taps count
    upsample_only = flops_per_shower(fold_generator(g, dense_conv=False))
    assert upsample_only["minimal"] == pytest.approx(0.181e9, rel=0.02)
    # Dense + first Conv3D as one 200 x 25088 product: 115.6 + 1.3 -> 10.0 MFLOP
    assert report["flops_after_minimal"] == pytest.approx(upsample_only["minimal"] - 116.9e6 + 10.04e6, rel=0.01)
    assert report["flops_after"] < 0.25 * report["flops_before"]
    assert not any(isinstance(m, nn.Upsample) for m in fold_generator(g).modules())


def test_gan3d_clic51_upsample_fold_flops():
    report = flop_report(build_generator("gan3d_clic51", width=WIDTH))
    assert report["folded"]["upsample_conv"] == 1
    assert report["flops_after"] < 0.6 * report["flops_before"]


@pytest.mark.parametrize("scale,pad,kernel", [((2, 2, 3), (1, 0, 3), (3, 3, 8)),
                                              ((3, 1, 2), (2, 1, 0), (4, 2, 3)),
                                              ((2, 2, 2), (0, 0, 0), (2, 3, 1))])
def test_upsample_pad_conv_is_one_transposed_convolution(scale, pad, kernel):
    """Asymmetric padding and odd/even kernels: Conv(Pad(Upsample(x))) == the folded layer."""
    torch.manual_seed(1)
    pad3 = (pad[2], pad[2] + 1 if pad[2] < kernel[2] - 1 else pad[2], pad[1], pad[1], pad[0], pad[0])
    seq = nn.Sequential(nn.Upsample(scale_factor=scale, mode="nearest"), nn.ConstantPad3d(pad3, 0.0),
                        nn.Conv3d(3, 4, kernel))
    x = torch.randn(2, 3, 5, 4, 6, dtype=torch.float64)
    seq = seq.double()
    expected = seq(x)
    for form in ("subpixel", "transposed"):
        folded = fold_generator_seq(seq, form)
        assert len(folded) == 1 and isinstance(folded[0], ConvTransposeCrop)
        got = folded(x)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


def fold_generator_seq(seq: nn.Sequential, form: str) -> nn.Sequential:
    from fastshower.infer.fold import _fold_upsampling

    mods = _fold_upsampling(seq)
    for m in mods:
        if isinstance(m, ConvTransposeCrop):
            m.form = form
            m.prepare()
    return nn.Sequential(*mods)


def test_batchnorm_before_zero_padding_becomes_a_bias_map():
    """BN -> ZeroPad -> Conv: the shift sees the padding, so it is a map, not a per-channel bias."""
    from fastshower.infer.fold import _fold_batchnorm

    torch.manual_seed(2)
    bn = nn.BatchNorm3d(3).eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.bias.uniform_(-1, 1)
    conv = Conv3d(3, 2, (3, 3, 2), padding="same")
    x = torch.randn(2, 3, 4, 5, 6)
    with torch.no_grad():
        expected = conv(bn(x))
        folded = _fold_batchnorm([bn, copy.deepcopy(conv)], {id(bn): x.shape})
    assert len(folded) == 2 and isinstance(folded[1], BiasMap)
    with torch.no_grad():
        got = nn.Sequential(*folded)(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_folded_onnx_export_matches_unfolded_torch(tmp_path):
    import onnx

    from fastshower.infer.fold import example_inputs
    from fastshower.infer.onnx_export import export_onnx, open_session

    g = _random_generator("gan3d_clic25")
    result = export_onnx(g, tmp_path / "g.onnx")  # folded by default; checked against unfolded torch
    assert result["ok"] and '"upsample_conv": 2' in result["metadata"]["folded"]
    ops = {n.op_type for n in onnx.load(str(tmp_path / "g.onnx")).graph.node}
    assert "Resize" not in ops and "BatchNormalization" not in ops
    args = example_inputs(g, 3, seed=5)
    with torch.inference_mode():
        expected = g(*args).numpy()
    got = open_session(tmp_path / "g.onnx").run(["showers"], dict(zip(("primary_energy", "incident_angle", "noise"),
                                                                        [a.numpy() for a in args])))[0]
    assert np.abs(got - expected).max() <= FOLD_RTOL * np.abs(expected).max()


def test_generator_load_folds_and_keeps_weights_on_disk(tmp_path):
    from safetensors.torch import load_file

    from fastshower.infer.generator import Generator
    from fastshower.models.registry import save_generator

    g = _random_generator("gan3d_clic25")
    stem = save_generator(g, tmp_path / "g").with_suffix("")
    on_disk = load_file(str(stem.with_suffix(".safetensors")))
    folded = Generator.load(stem)
    plain = Generator.load(stem, fold=False)
    assert folded.module.folded["upsample_conv"] == 2
    assert not hasattr(plain.module, "folded")
    a = folded.generate(100.0, np.pi / 2, n=3, seed=4).showers
    b = plain.generate(100.0, np.pi / 2, n=3, seed=4).showers
    assert np.abs(a - b).max() <= FOLD_RTOL * np.abs(b).max()
    assert set(load_file(str(stem.with_suffix(".safetensors")))) == set(on_disk)


def test_subpixel_and_transposed_forms_agree_on_conv2d_transpose():
    """The Keras 'same' ConvTranspose2d (full output, cropped) as ConvTransposeCrop."""
    from fastshower.models.layers import ConvTranspose2d

    torch.manual_seed(3)
    layer = ConvTranspose2d(4, 3, 5, stride=2, padding="same").double()
    x = torch.randn(2, 4, 15, 15, dtype=torch.float64)
    expected = layer(x)
    for form in ("subpixel", "transposed"):
        got = fold_generator_seq(nn.Sequential(layer), form)(x)
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["gan3d_clic25", "gan3d_clic51", "conv2d_g1"])
def test_channels_last_equals_original(name):
    """The channels-last twin (folded layers writing channels-last activations) computes the same showers."""
    from fastshower.infer.fold import Crop, DenseVolume, channels_last

    g = _random_generator(name)
    folded = fold_generator(g)
    twin = channels_last(folded)
    err = check_fold(g, twin, n=3)
    assert err["is_finite"] and err["max_rel_err"] <= FOLD_RTOL, err
    assert all(m.channels_last for m in twin.modules() if isinstance(m, ConvTransposeCrop | DenseVolume))
    if name == "gan3d_clic25":  # fresh BN (no bias map between): the last crop moves behind the final valid Conv3D
        plain = build_generator(name, width=WIDTH).eval()
        twin = channels_last(fold_generator(plain))
        assert sum(isinstance(m, Crop) for m in twin.modules()) == 1
        err = check_fold(plain, twin, n=3)
        assert err["is_finite"] and err["max_rel_err"] <= FOLD_RTOL, err
    assert not any(getattr(m, "channels_last", False) for m in folded.modules())  # a copy: the input is untouched


def test_subpixel_channels_last_layer_2d_and_3d():
    """A ConvTransposeCrop in channels-last mode equals the plain one (odd strides, asymmetric crop)."""
    torch.manual_seed(4)
    for dims, shape in ((3, (2, 3, 5, 4, 6)), (2, (2, 3, 7, 5))):
        k = (4, 3, 5)[:dims]
        layer = ConvTransposeCrop(torch.randn(3, 2, *k, dtype=torch.float64), torch.randn(2, dtype=torch.float64),
                                  (2, 3, 2)[:dims], [(1, 2), (0, 1), (2, 2)][:dims])
        x = torch.randn(*shape, dtype=torch.float64)
        expected = layer(x)
        layer.to_channels_last()
        got = layer(x)
        assert got.stride(1) == 1  # channels innermost (a cropped view of a channels-last tensor)
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", ["gan3d_clic25", "conv2d_g1"])
def test_batch1_trace_equals_eager(tmp_path, name):
    """Generator.load runs batch-1 calls through a frozen trace (built and checked at the first
    call); its showers equal the plain unfolded network's, and batches > 1 stay eager."""
    from fastshower.infer.generator import Generator
    from fastshower.models.registry import save_generator

    g = _random_generator(name)
    stem = save_generator(g, tmp_path / "g").with_suffix("")
    fast = Generator.load(stem)
    plain = Generator.load(stem, fold=False, channels_last=False, batch1_trace=False)
    e, a = fast.energy_range_gev[1] / 2, float(np.mean(fast.angle_range_rad))
    for seed in (1, 2):  # the first call traces, the second runs the trace
        got, expected = (gen.generate(e, a, n=1, seed=seed).showers for gen in (fast, plain))
        assert np.abs(got - expected).max() <= FOLD_RTOL * np.abs(expected).max()
    assert fast.engine.traced not in (None, False) and plain.engine.traced is None
    batch = fast.generate(e, a, n=3, seed=3).showers
    assert np.abs(batch - plain.generate(e, a, n=3, seed=3).showers).max() <= FOLD_RTOL * np.abs(batch).max()


@pytest.mark.parametrize("name", ["gan3d_clic25", "gan3d_clic51"])
def test_batch_slices_equal_the_whole_batch(name):
    """With a tiny activation budget the channels-last twin runs its layer stacks on slices of one
    shower (BatchChunks); the showers of a batch of 5 equal the unfolded network's."""
    from fastshower.infer.fold import BatchChunks, channels_last

    g = _random_generator(name)
    twin = channels_last(fold_generator(g), chunk_bytes=1)
    chunks = [m for m in twin.modules() if isinstance(m, BatchChunks)]
    assert chunks and all(m.chunk == 1 for m in chunks)
    err = check_fold(g, twin, n=5)
    assert err["is_finite"] and err["max_rel_err"] <= FOLD_RTOL, err
    default = channels_last(fold_generator(g))  # default budget: slices of many showers
    assert all(m.chunk > 1 for m in default.modules() if isinstance(m, BatchChunks))


def test_batch_slices_only_over_per_sample_layers():
    """Batch statistics (Keras BN called with training=True, BN in training mode) forbid slicing."""
    from fastshower.infer.fold import BatchChunks, _per_sample, channels_last
    from fastshower.models.layers import BatchNorm3dAlwaysTraining

    bn = nn.BatchNorm3d(4).eval()
    assert _per_sample(bn) and _per_sample(nn.Sequential(nn.Conv3d(4, 4, 1), nn.LeakyReLU(0.3)))
    assert not _per_sample(BatchNorm3dAlwaysTraining(4).eval()) and not _per_sample(bn.train())
    g = build_generator("gan3d_clic25", width=WIDTH).eval()
    g.net = nn.Sequential(*g.net[:3], BatchNorm3dAlwaysTraining(g.net[1].out_channels).eval(), *g.net[3:])
    twin = channels_last(fold_generator(g), chunk_bytes=1)
    assert not any(isinstance(m, BatchChunks) for m in twin.modules())


def test_symmetric_zero_padding_moves_into_the_convolution():
    from fastshower.infer.fold import _fold_pads

    torch.manual_seed(5)
    x = torch.randn(2, 3, 6, 5, 7)
    seqs = [nn.Sequential(nn.ConstantPad3d((1, 1, 2, 2, 0, 0), 0.0), nn.Conv3d(3, 2, (3, 3, 2))),  # moved
            nn.Sequential(Conv3d(3, 2, (3, 5, 3), padding="same")),  # odd kernel, symmetric Keras pad: moved
            nn.Sequential(nn.ConstantPad3d((0, 1, 0, 0, 0, 0), 0.0), nn.Conv3d(3, 2, 2)),  # asymmetric: kept
            nn.Sequential(Conv3d(3, 2, (2, 2, 2), padding="same"))]  # even kernel, asymmetric Keras pad: kept
    moved = []
    with torch.no_grad():
        for seq in seqs:
            expected = seq(x)
            mods, n = _fold_pads([copy.deepcopy(m) for m in seq])
            assert len(mods) == len(seq) - (n if isinstance(seq[0], nn.ConstantPad3d) else 0)
            torch.testing.assert_close(nn.Sequential(*mods)(x), expected, rtol=1e-5, atol=1e-6)
            moved.append(n)
    assert moved == [1, 1, 0, 0]
    folded = fold_generator(build_generator("gan3d_clic51", width=WIDTH))
    assert folded.folded["pad"] == 5 and not any(isinstance(m, nn.ConstantPad3d) for m in folded.modules())


def test_channels_last_twin_stays_in_evaluation_mode():
    from fastshower.infer.fold import channels_last

    twin = channels_last(fold_generator(build_generator("gan3d_clic25", width=WIDTH).eval()))
    assert not any(m.training for m in twin.modules())
