"""Keras semantics in PyTorch: the building blocks the 3DGAN-family ports are made of.

The published models were written in Keras (TF 1.x / TF 2). PyTorch layers differ in defaults
that silently change the networks; these helpers reproduce the Keras behaviour:

- ``LeakyReLU()`` in Keras has slope 0.3 (PyTorch: 0.01) -> :data:`LEAKY_SLOPE`.
- ``BatchNormalization(momentum=0.99)`` keeps 99 % of the old moving average; PyTorch's
  ``momentum`` is the weight of the *new* batch -> :data:`BN_MOMENTUM` = 0.01. Keras' default
  epsilon is 1e-3 (PyTorch: 1e-5) -> :data:`KERAS_BN_EPS`.
- ``padding='same'`` pads ``k - 1`` cells in total, ``(k - 1) // 2`` before and the rest after:
  for even kernels the extra cell is at the *end* (PyTorch's ``padding='same'`` agrees only for
  stride 1, and has no transposed counterpart) -> :class:`Conv3d`, :class:`Conv2d`,
  :class:`ConvTranspose2d`.
- Initialisers: Keras' default ``glorot_uniform`` with zero biases (PyTorch: kaiming-uniform with
  a=sqrt(5) and uniform biases), ``he_uniform`` and ``glorot_normal`` (a *truncated* normal in
  Keras 2.2+, stddev corrected by 1/0.8796) -> :func:`keras_init_`.
- ``BatchNormalization()(x, training=True)`` uses batch statistics even at inference ->
  :class:`BatchNorm3dAlwaysTraining`.
- ``UpSampling3D`` is nearest-neighbour (the PyTorch ports used trilinear) -> ``nn.Upsample(mode="nearest")``.

Parameter counts follow the Keras convention (moving mean and variance of BN counted, PyTorch's
``num_batches_tracked`` not): :func:`keras_parameter_count`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import nn

#: Keras ``LeakyReLU()`` default negative slope.
LEAKY_SLOPE = 0.3
#: PyTorch BatchNorm momentum equivalent to Keras ``momentum=0.99``.
BN_MOMENTUM = 0.01
#: Keras ``BatchNormalization`` default epsilon.
KERAS_BN_EPS = 1e-3

Init = Literal["glorot_uniform", "glorot_normal", "he_uniform"]


def scaled_channels(channels: int, width: float) -> int:
    """``channels * width`` rounded, at least 1 (``width`` = 1 gives the published network)."""
    return max(1, int(round(channels * width)))


def keras_init_(weight: torch.Tensor, init: Init) -> None:
    """Initialise ``weight`` in place as the Keras initialiser ``init`` would.

    Fan-in / fan-out are computed as Keras does (receptive field x input / output channels); for
    PyTorch's ``(out, in, *k)`` convolution and ``(in, out, *k)`` transposed-convolution layouts
    :func:`torch.nn.init._calculate_fan_in_and_fan_out` gives the same numbers.
    """
    fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(weight)
    with torch.no_grad():
        if init == "glorot_uniform":
            limit = math.sqrt(6.0 / (fan_in + fan_out))
            weight.uniform_(-limit, limit)
        elif init == "he_uniform":
            limit = math.sqrt(6.0 / fan_in)
            weight.uniform_(-limit, limit)
        elif init == "glorot_normal":
            # Keras VarianceScaling(1, fan_avg, 'normal'): truncated at 2 sigma, sigma corrected so
            # that the truncated distribution has variance 2 / (fan_in + fan_out).
            std = math.sqrt(2.0 / (fan_in + fan_out)) / 0.87962566103423978
            nn.init.trunc_normal_(weight, 0.0, std, -2 * std, 2 * std)
        else:
            raise ValueError(f"unknown initialiser {init!r}")


def _tuple(value: int | Sequence[int], n: int) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * n
    value = tuple(value)
    if len(value) != n:
        raise ValueError(f"expected {n} values, got {value}")
    return value


def same_padding(kernel: Sequence[int]) -> tuple[int, ...]:
    """``F.pad`` argument for Keras/TF ``padding='same'`` at stride 1: per axis ``(k-1)//2`` cells
    before and ``k//2`` after (the extra cell of an even kernel at the end); last axis first."""
    pads: list[int] = []
    for k in reversed(tuple(kernel)):
        pads += [(k - 1) // 2, k // 2]
    return tuple(pads)


def _keras_init_layer_(layer: nn.Module, init: Init) -> None:
    """Keras initialisation of a layer: ``init`` for the kernel, zeros for the bias (if any)."""
    keras_init_(layer.weight, init)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def _check_padding(padding: str) -> None:
    if padding not in ("same", "valid"):
        raise ValueError(f"padding must be 'same' or 'valid', got {padding!r}")


class _KerasConv:
    """Mixin before ``nn.ConvNd``: Keras padding and initialisation for a stride-1 convolution of
    ``dims`` spatial dimensions."""

    dims: ClassVar[int]

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | Sequence[int],
                 padding: Literal["same", "valid"] = "valid", bias: bool = True,
                 init: Init = "glorot_uniform") -> None:
        kernel = _tuple(kernel_size, self.dims)
        super().__init__(in_channels, out_channels, kernel, bias=bias)  # type: ignore[call-arg]
        _check_padding(padding)
        self.keras_padding = same_padding(kernel) if padding == "same" else None
        _keras_init_layer_(self, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self.keras_padding) if self.keras_padding else x)  # type: ignore[misc]


class Conv3d(_KerasConv, nn.Conv3d):
    """Keras ``Conv3D(filters, kernel, padding)``, stride 1, channels-first input (B, C, x, y, z)."""

    dims: ClassVar[int] = 3


class Conv2d(_KerasConv, nn.Conv2d):
    """Keras ``Conv2D(filters, kernel, padding)``, stride 1, channels-first input (B, C, h, w)."""

    dims: ClassVar[int] = 2


class ConvTranspose2d(nn.ConvTranspose2d):
    """Keras ``Conv2DTranspose(filters, kernel, strides, padding)``.

    'valid': output ``(n - 1) * s + k``. 'same': output ``n * s``; TF crops the full output by
    ``k - s`` cells, ``(k - s) // 2`` at the start and the rest at the end.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int,
                 padding: Literal["same", "valid"] = "valid", bias: bool = True,
                 init: Init = "glorot_uniform") -> None:
        _check_padding(padding)
        if padding == "same" and kernel_size < stride:
            raise ValueError("'same' transposed convolution needs kernel_size >= stride")
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, bias=bias)
        crop = kernel_size - stride if padding == "same" else 0
        self.crop_before, self.crop_after = crop // 2, crop - crop // 2
        _keras_init_layer_(self, init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        if self.crop_before or self.crop_after:
            h, w = y.shape[-2:]
            y = y[..., self.crop_before:h - self.crop_after, self.crop_before:w - self.crop_after]
        return y


def dense(in_features: int, out_features: int, init: Init = "glorot_uniform") -> nn.Linear:
    """Keras ``Dense``: glorot-uniform kernel, zero bias."""
    layer = nn.Linear(in_features, out_features)
    _keras_init_layer_(layer, init)
    return layer


#: How a model's Keras layers were called while it was trained (``ModelConfig.batchnorm``):
#: ``train`` = in training mode (Keras ``train_on_batch``, the 3DGAN trainers): BatchNorm normalises
#: with the batch statistics in training and with its moving statistics at inference, dropout fires
#: in training; ``inference`` = in inference mode throughout (a TF2 loop that calls ``model(x)``
#: without ``training=True``, the Conv2D trainers): BatchNorm normalises with its moving statistics,
#: which are never updated and stay (0, 1), so it is a learnable per-channel scale and shift, and
#: dropout never fires.
BatchNormMode = Literal["train", "inference"]


def batch_norm(dims: int, channels: int, eps: float = KERAS_BN_EPS, mode: BatchNormMode = "train") -> nn.Module:
    """Keras ``BatchNormalization(momentum=0.99, epsilon=eps)`` over the channel axis, called in
    ``mode`` (:data:`BatchNormMode`)."""
    if mode == "inference":
        return FixedStatisticsBatchNorm(dims, channels, eps)
    cls = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims]
    return cls(channels, eps=eps, momentum=BN_MOMENTUM)


class FixedStatisticsBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Keras ``BatchNormalization`` always called in inference mode: ``(x - moving_mean) /
    sqrt(moving_var + eps) * gamma + beta`` with the moving statistics, which inference mode never
    updates (they stay 0 and 1). The state-dict keys are those of ``nn.BatchNormNd``."""

    def __init__(self, dims: int, channels: int, eps: float = KERAS_BN_EPS) -> None:
        super().__init__(channels, eps=eps, momentum=BN_MOMENTUM)
        self.dims = dims

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() not in (self.dims + 1, self.dims + 2):
            raise ValueError(f"expected a {self.dims + 1}D or {self.dims + 2}D input, got {x.dim()}D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


def dropout(rate: float, mode: BatchNormMode = "train") -> nn.Module:
    """Keras ``Dropout(rate)`` called in ``mode``: in inference mode it never fires (Identity)."""
    return nn.Identity() if mode == "inference" else nn.Dropout(rate)


class BatchNorm3dAlwaysTraining(nn.BatchNorm3d):
    """Keras ``BatchNormalization()(x, training=True)``: normalises with the *batch* statistics in
    training and in evaluation mode alike. The moving averages are updated in training mode (as
    Keras does) but never used."""

    def __init__(self, channels: int, eps: float = KERAS_BN_EPS) -> None:
        super().__init__(channels, eps=eps, momentum=BN_MOMENTUM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        return F.batch_norm(x, self.running_mean if self.training else None,
                            self.running_var if self.training else None, self.weight, self.bias,
                            True, self.momentum, self.eps)


def minibatch_std(features: torch.Tensor, order: torch.Tensor, group_size: int) -> torch.Tensor:
    """``(B, 1)``: for each sample, the mean over the features ``(B, F)`` of their standard deviation
    within its group of ``group_size`` samples (the minibatch-standard-deviation feature of Karras et
    al. 2018, "Progressive growing of GANs", sec. 3). The groups are made of samples adjacent in
    ``order`` ``(B,)`` (a discriminator passes the deposited energy, so that a group holds showers of
    similar energy and its spread measures their fluctuations rather than the energy range); when B
    is not a multiple of the group size the last group is the last ``group_size`` samples. A batch
    of one sample gives zero. Appended to the features a discriminator judges, it lets it tell the
    too-similar showers of a collapsed generator from a real batch."""
    batch, n_features = features.shape
    size = min(group_size, batch)
    if size < 2:
        return features.new_zeros(batch, 1)
    rank = torch.argsort(order.detach())
    ordered = features[rank]
    full = batch // size * size

    def group_std(x: torch.Tensor) -> torch.Tensor:  # (G, size, F) -> (G,)
        return torch.sqrt(x.var(dim=1, unbiased=False) + 1e-8).mean(dim=1)

    per_sample = group_std(ordered[:full].reshape(-1, size, n_features)).repeat_interleave(size)
    if full < batch:
        tail = group_std(ordered[batch - size:].unsqueeze(0))
        per_sample = torch.cat([per_sample, tail.expand(batch - full)])
    out = torch.empty_like(per_sample)
    out[rank] = per_sample
    return out.unsqueeze(1)


def leaky_relu() -> nn.LeakyReLU:
    """Keras ``LeakyReLU()``: negative slope 0.3."""
    return nn.LeakyReLU(LEAKY_SLOPE)


def keras_parameter_count(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters as Keras' ``model.summary()`` counts them: all weights and biases plus,
    unless ``trainable_only``, the BatchNorm moving mean and variance (PyTorch buffers
    ``running_mean`` / ``running_var``); ``num_batches_tracked`` is not counted."""
    n = sum(p.numel() for p in module.parameters())
    if not trainable_only:
        n += sum(b.numel() for name, b in module.named_buffers()
                 if name.endswith(("running_mean", "running_var")))
    return n
