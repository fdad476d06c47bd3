"""Inference-time algebraic rewrites of a generator: the same function with fewer FLOPs.

Applied at load time for inference (:class:`~fastshower.infer.generator.Generator` does it by
default); the weights on disk are unchanged. :func:`fold_generator` returns a folded *copy* in
evaluation mode; :func:`check_fold` measures it against the unfolded network.

Four rewrites, each exact up to floating-point rounding:

1. **Nearest upsampling + convolution -> one strided transposed convolution**
   (:class:`ConvTransposeCrop`). ``Conv(k, stride 1)(ZeroPad(p)(Upsample_nearest(s)(x)))``
   reads every input cell ``s`` times per axis; summing the kernel taps that fall on the same
   input cell gives, per axis, a kernel of ``k + s - 1`` taps applied with stride ``s`` as a
   transposed convolution, cropped by ``k - 1 - p`` cells at each end. For ``gan3d_clic25``
   the two upsampled convolutions drop from 0.39 + 1.27 to 0.15 + 0.26 M multiply-adds per
   channel pair; for ``gan3d_clic51`` the first convolution (on the 6x upsampled 54x54x48
   volume) shrinks 28x.
2. **BatchNorm (inference mode) folded forward into the next linear layer**
   (:func:`_fold_batchnorm`). Evaluation-mode BN is ``a x + b`` per channel; when the modules up
   to the next convolution are linear (Dropout in evaluation mode, nearest upsampling, zero
   padding, a folded upsampling, the convolution), ``a`` goes into that layer's input-channel
   weights and ``b`` becomes the constant tensor ``path(b) - path(0)``: a per-channel bias when
   it is spatially constant (no padding reaches it), else a bias *map* added after the layer
   (:class:`BiasMap`; zero padding makes the border cells see fewer ``b`` terms). BN whose next
   linear layer is outside its ``nn.Sequential`` (end of a branch) is left as it is, and so is
   BN that normalises with batch statistics (``BatchNorm3dAlwaysTraining``).

3. **Dense layer + the convolution right after it -> one matrix product** (:class:`DenseVolume`):
   both are linear (the 3DGAN's ``Dense -> Reshape -> Conv3D`` has no activation between), so
   their composition is one ``latent x volume`` matrix, computed by pushing the unit vectors
   through both; kept only where it needs fewer multiply-adds (gan3d_clic25: 5.0 M instead of
   0.6 M + 57.8 M; not gan3d_clic51, whose first layer's output is 30x larger than its input).

4. **Zero padding into the convolution** (:func:`_fold_pads`): a zero ``ConstantPad`` right
   before a convolution (or a Keras layer's own 'same' ``F.pad``), when symmetric per axis,
   becomes the convolution's ``padding`` (gan3d_clic51: 5 pads; no copy of the padded volume).

Dropout layers (identities in evaluation mode) are dropped. :func:`flop_report` counts FLOPs per
shower before and after (``torch.utils.flop_counter``; a multiply-add = 2 FLOPs).
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fastshower.models.base import ShowerGenerator
from fastshower.models.layers import FixedStatisticsBatchNorm

#: Relative tolerance of :func:`check_fold` (the issue's 1e-5 relative to the largest cell).
FOLD_RTOL = 1e-5
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _fixed_statistics(module: nn.Module) -> bool:
    """A BatchNorm that normalises with stored statistics, i.e. an affine map per channel: torch's
    BatchNormNd with running statistics (in evaluation mode when run), or the Conv2D models'
    :class:`FixedStatisticsBatchNorm` (always). Not batch-statistics ones (``BatchNorm3dAlwaysTraining``)."""
    if isinstance(module, FixedStatisticsBatchNorm):
        return True
    return type(module) in _BATCHNORMS and module.track_running_stats and module.running_mean is not None
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
#: How a ConvTransposeCrop runs; see fold_generator.
FORMS = ("auto", "subpixel", "transposed")
_PADS = (nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d, nn.ZeroPad2d)


# ------------------------------------------------------------------------------ folded layers

class ConvTransposeCrop(nn.Module):
    """A strided transposed convolution whose output is cropped by ``crop`` = ((before, after) per
    spatial axis). ``weight`` (C_in, C_out, *k). What ``Conv(ZeroPad(Upsample_nearest(x)))`` folds
    into (``k = k_conv + s - 1``), and the form of a Keras 'same' ``ConvTranspose2d``.

    ``form`` says how it runs (same function, exact up to rounding):

    - ``"subpixel"`` (default): the polyphase form. Output cell ``o`` with full index
      ``o + crop = s q + r`` only sees the taps ``W[s j + r]``; the ``prod(s)`` phases are one
      ordinary stride-1 convolution with ``C_out prod(s)`` output channels and kernel
      ``ceil(k / s)`` per axis on the input, followed by a depth-to-space shuffle and the crop.
      Only the outputs kept (to within one ``s`` block) are computed, and it runs on the fast
      direct-convolution kernels (torch's CPU ``conv_transpose3d`` is a slow non-oneDNN path here).
    - ``"transposed"``: ``conv_transpose`` with the symmetric part of the crop as padding, then
      the rest sliced off (ONNX ``ConvTranspose``).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, stride: Sequence[int],
                 crop: Sequence[tuple[int, int]], origin: str = "", form: str = "subpixel") -> None:
        super().__init__()
        if form not in ("subpixel", "transposed"):
            raise ValueError(f"unknown form {form!r}: subpixel or transposed")
        self.origin = origin  # what it replaced: "upsample_conv" or "transpose" (a cropped Keras one)
        self.form = form
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.stride = tuple(int(s) for s in stride)
        self.crop = tuple((int(b), int(a)) for b, a in crop)
        self.dims = len(self.stride)
        self.padding = tuple(min(b, a) for b, a in self.crop)
        self.extra_crop = tuple((b - p, a - p) for (b, a), p in zip(self.crop, self.padding))
        kernel = tuple(weight.shape[2:])
        self.taps = tuple(math.ceil(k / s) for k, s in zip(kernel, self.stride))
        self.channels_last = False
        self.crop_deferred = False  # channels-last: the crop is done after the next convolution (Crop)
        self.prepare()

    def prepare(self) -> None:
        """(Re)build the sub-pixel weights from ``weight`` and ``bias`` (after they change)."""
        if self.form != "subpixel":
            self.sub_weight = self.sub_bias = None
            return
        # W (C_in, C_out, *k) -> (C_out, *s, C_in, *taps); tap j' = J-1-j of phase r is W[s j + r]
        weight = self.weight.detach()
        kernel = tuple(weight.shape[2:])
        w = weight
        for axis, (k, s, j) in enumerate(zip(kernel, self.stride, self.taps)):
            w = F.pad(w, [0, 0] * (self.dims - 1 - axis) + [0, s * j - k])
        c_in, c_out = weight.shape[:2]
        w = w.reshape(c_in, c_out, *[d for j, s in zip(self.taps, self.stride) for d in (j, s)])
        w = w.flip(dims=[2 + 2 * a for a in range(self.dims)])
        order = [1, *[3 + 2 * a for a in range(self.dims)], 0, *[2 + 2 * a for a in range(self.dims)]]
        w = w.permute(*order).reshape(c_out * math.prod(self.stride), c_in, *self.taps)
        bias = None if self.bias is None else self.bias.detach().repeat_interleave(math.prod(self.stride))
        self.register_buffer("sub_weight", w.contiguous())  # persistent: an ONNX initializer (int8-able)
        self.register_buffer("sub_bias", bias)
        if self.channels_last:
            self.to_channels_last()

    def to_channels_last(self) -> None:
        """Run the sub-pixel form in channels-last memory layout (torch on the CPU; see
        :func:`channels_last`): the phase convolution's output channels ordered (phase, channel)
        instead of (channel, phase), so that the depth-to-space shuffle moves whole
        ``stride[-1] x C_out`` runs, and the output a ``channels_last`` view. Same values."""
        self.channels_last = True
        if self.form != "subpixel" or self.sub_weight is None:
            return
        c_out, n_phase = int(self.weight.shape[1]), math.prod(self.stride)
        w = self.sub_weight.reshape(c_out, n_phase, *self.sub_weight.shape[1:]).transpose(0, 1)
        fmt = {1: torch.contiguous_format, 2: torch.channels_last, 3: torch.channels_last_3d}[self.dims]
        self.register_buffer("cl_weight", w.reshape(self.sub_weight.shape).contiguous(memory_format=fmt),
                             persistent=False)
        bias = None if self.bias is None else self.bias.detach().repeat(n_phase)
        self.register_buffer("cl_bias", bias, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.form == "transposed":
            fn = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[self.dims]
            y = fn(x, self.weight, self.bias, stride=self.stride, padding=self.padding)
            if any(b or a for b, a in self.extra_crop):
                y = y[tuple([..., *(slice(b, n - a) for (b, a), n in zip(self.extra_crop, y.shape[2:]))])]
            return y
        return self._subpixel(x)

    def _subpixel(self, x: torch.Tensor) -> torch.Tensor:
        # spatial sizes as Python ints (and -1 for the batch below): constants in a traced / exported
        # graph, so ONNX Runtime runs no shape arithmetic per call (a generator's volume is fixed)
        sizes = [int(n) for n in x.shape[2:]]
        pads: list[tuple[int, int]] = []
        index: list[slice] = []
        q_counts, starts, lengths = [], [], []
        for n, k, s, j, (cb, ca) in zip(sizes, self.weight.shape[2:], self.stride, self.taps, self.crop):
            length = (n - 1) * s + k - cb - ca
            q0, q1 = cb // s, (cb + length - 1) // s
            lo, hi = q0 - (j - 1), q1
            pads.append((max(0, -lo), max(0, hi - (n - 1))))
            index.append(slice(max(0, lo), min(n - 1, hi) + 1))
            q_counts.append(q1 - q0 + 1)
            starts.append(cb - s * q0)
            lengths.append(length)
        if any(i.start != 0 or i.stop != n for i, n in zip(index, sizes)):
            x = x[tuple([slice(None), slice(None), *index])]
        flat_pads = [p for pair in reversed(pads) for p in pair]
        if any(flat_pads):
            x = F.pad(x, flat_pads)
        conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[self.dims]
        if self.channels_last and self.dims > 1:
            return self._subpixel_channels_last(x, conv, q_counts, starts, lengths)
        z = conv(x, self.sub_weight, self.sub_bias)
        c_out = int(self.weight.shape[1])
        if torch.onnx.is_in_onnx_export():
            z = self._depth_to_space_stepwise(z, c_out, q_counts)
        else:
            z = z.reshape(-1, c_out, *self.stride, *q_counts)
            order = [0, 1, *[i for a in range(self.dims) for i in (2 + self.dims + a, 2 + a)]]
            z = z.permute(*order).reshape(-1, c_out, *[q * s for q, s in zip(q_counts, self.stride)])
        return self._crop(z, starts, lengths)

    def _depth_to_space_stepwise(self, z: torch.Tensor, c_out: int, q_counts: list[int]) -> torch.Tensor:
        """The depth-to-space shuffle as ``dims`` rank-4 transposes that each move one axis (the
        last spatial axis first): ONNX Runtime's fast path for a Transpose, where one rank-8
        Transpose (3-d) ran 3x slower than the convolution before it at batch 1."""
        s, q, d = self.stride, q_counts, self.dims
        for a in reversed(range(d)):
            tail = math.prod(q[b] * s[b] for b in range(a + 1, d))
            z = z.reshape(-1, s[a], math.prod(q[:a + 1]), tail).transpose(1, 2)
        return z.reshape(-1, c_out, *[qq * ss for qq, ss in zip(q, s)])

    def _subpixel_channels_last(self, x: torch.Tensor, conv, q_counts: list[int], starts: list[int],
                                lengths: list[int]) -> torch.Tensor:
        fmt = torch.channels_last if self.dims == 2 else torch.channels_last_3d
        z = conv(x.contiguous(memory_format=fmt), self.cl_weight, self.cl_bias)  # memory (B, *q, phase, C)
        c_out, d = int(self.weight.shape[1]), self.dims
        z = z.movedim(1, -1).reshape(-1, *q_counts, *self.stride, c_out)
        order = [0, *[i for a in range(d) for i in (1 + a, 1 + d + a)], 1 + 2 * d]
        z = z.permute(*order).reshape(-1, *[q * s for q, s in zip(q_counts, self.stride)], c_out).movedim(-1, 1)
        return z if self.crop_deferred else self._crop(z, starts, lengths)

    def crop_window(self, sizes: Sequence[int]) -> tuple[list[int], list[int]]:
        """(starts, lengths) per spatial axis of the crop the sub-pixel form applies to its
        shuffled output, for an input of spatial ``sizes``."""
        starts, lengths = [], []
        for n, k, s, (cb, ca) in zip(sizes, self.weight.shape[2:], self.stride, self.crop):
            starts.append(cb - s * (cb // s))
            lengths.append((int(n) - 1) * s + k - cb - ca)
        return starts, lengths

    @staticmethod
    def _crop(z: torch.Tensor, starts: list[int], lengths: list[int]) -> torch.Tensor:
        if all(st == 0 and n == m for st, n, m in zip(starts, lengths, z.shape[2:])):
            return z
        return z[tuple([slice(None), slice(None), *(slice(st, st + n) for st, n in zip(starts, lengths))])]

    def effective_flops(self, input_shape: Sequence[int]) -> float:
        """Multiply-adds x 2 that the kept outputs need (taps that meet an input cell), for an
        input of ``input_shape`` (B, C_in, *spatial): the floor of any implementation."""
        total = 2.0 * input_shape[0] * self.weight.shape[0] * self.weight.shape[1]
        for n, k, s, (cb, ca) in zip(input_shape[2:], self.weight.shape[2:], self.stride, self.crop):
            o = np.arange((n - 1) * s + k - cb - ca)[:, None] + cb
            i = np.arange(n)[None, :]
            t = o - s * i
            total *= int(((t >= 0) & (t < k)).sum())
        return total

    def executed_flops(self, input_shape: Sequence[int]) -> float:
        """Multiply-adds x 2 of the convolution this form runs (as FlopCounterMode counts it)."""
        c_in, c_out = self.weight.shape[:2]
        if self.form == "transposed":
            return 2.0 * input_shape[0] * math.prod(input_shape[2:]) * c_in * c_out * math.prod(self.weight.shape[2:])
        positions = 1
        for n, k, s, (cb, ca) in zip(input_shape[2:], self.weight.shape[2:], self.stride, self.crop):
            length = (n - 1) * s + k - cb - ca
            positions *= (cb + length - 1) // s - cb // s + 1
        return 2.0 * input_shape[0] * positions * c_in * c_out * math.prod(self.stride) * math.prod(self.taps)

    def extra_repr(self) -> str:
        return (f"{self.weight.shape[0]}, {self.weight.shape[1]}, kernel={tuple(self.weight.shape[2:])}, "
                f"stride={self.stride}, crop={self.crop}, form={self.form}")


class Crop(nn.Module):
    """Keeps cells ``[start, start + length)`` of each spatial axis (a view)."""

    def __init__(self, starts: Sequence[int], lengths: Sequence[int]) -> None:
        super().__init__()
        self.starts = tuple(int(v) for v in starts)
        self.lengths = tuple(int(v) for v in lengths)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[tuple([slice(None), slice(None), *(slice(s, s + n) for s, n in zip(self.starts, self.lengths))])]

    def extra_repr(self) -> str:
        return f"starts={self.starts}, lengths={self.lengths}"


class BatchChunks(nn.Module):
    """Runs ``body`` on equal slices of at most ``chunk`` samples and concatenates the results: the same
    function when every layer of ``body`` treats samples independently (no batch statistics; see
    :func:`_per_sample`). On the CPU this keeps the activations of a slice a few MB (cache-resident,
    reused by the allocator) instead of tens of MB that a large batch maps fresh from the kernel
    on every call (page faults cost more than the narrow layers' arithmetic; docs/inference.md).
    Tracing and ONNX export see ``body`` alone."""

    def __init__(self, body: nn.Module, chunk: int) -> None:
        super().__init__()
        self.body = body
        self.chunk = int(chunk)
        if self.chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] <= self.chunk or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return self.body(x)
        parts = -(-x.shape[0] // self.chunk)  # slices of equal size (within one sample)
        return torch.cat([self.body(part) for part in x.tensor_split(parts)])

    def extra_repr(self) -> str:
        return f"chunk={self.chunk}"


class BiasMap(nn.Module):
    """Adds a constant tensor (1, C, *spatial): a folded BatchNorm shift seen through zero padding."""

    def __init__(self, bias_map: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("bias_map", bias_map)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.bias_map


class DenseVolume(nn.Module):
    """``Linear(latent) -> volume (B, C, *spatial)``: a dense layer and the linear layer after it
    (convolution, folded upsampling) composed into one matrix product (see :func:`_fold_dense_conv`)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, shape: Sequence[int]) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = nn.Parameter(bias, requires_grad=False)
        self.shape = tuple(int(v) for v in shape)
        self.channels_last = False

    def to_channels_last(self) -> None:
        """Produce the volume as a ``channels_last`` view (rows of the matrix reordered to
        (spatial, channel); same values, no copy)."""
        if self.channels_last:
            return
        c, spatial = self.shape[0], self.shape[1:]
        order = torch.arange(math.prod(self.shape)).view(self.shape).movedim(0, -1).reshape(-1)
        with torch.no_grad():
            self.weight = nn.Parameter(self.weight[order].contiguous(), requires_grad=False)
            self.bias = nn.Parameter(self.bias[order].contiguous(), requires_grad=False)
        self.channels_last = True
        self.cl_shape = (*spatial, c)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            return F.linear(z, self.weight, self.bias).view(-1, *self.cl_shape).movedim(-1, 1)
        return F.linear(z, self.weight, self.bias).view(-1, *self.shape)

    def extra_repr(self) -> str:
        return f"in={self.weight.shape[1]}, out={self.shape}"


# ------------------------------------------------------------------------------ helpers

def _pad_spec(module: nn.Module, dims: int) -> list[tuple[int, int]] | None:
    """Per spatial axis (first axis first) the (before, after) zero padding of ``module`` (a
    ConstantPad with value 0), or None if it is not one."""
    if isinstance(module, _PADS) and module.value == 0:
        pads = list(module.padding)
        if len(pads) != 2 * dims:
            return None
        return [(pads[2 * (dims - 1 - i)], pads[2 * (dims - 1 - i) + 1]) for i in range(dims)]
    return None


def _conv_pad(conv: nn.Module, dims: int) -> list[tuple[int, int]]:
    """Total (before, after) zero padding of a stride-1 convolution: a Keras layer's ``F.pad``
    (``keras_padding``, last axis first) plus the convolution's own ``padding``."""
    own = conv.padding if isinstance(conv.padding, tuple) else (conv.padding,) * dims
    keras = getattr(conv, "keras_padding", None)
    out = []
    for i in range(dims):
        kb, ka = (keras[2 * (dims - 1 - i)], keras[2 * (dims - 1 - i) + 1]) if keras else (0, 0)
        out.append((kb + own[i], ka + own[i]))
    return out


def _upsample_scale(module: nn.Module, dims: int) -> tuple[int, ...] | None:
    if not isinstance(module, nn.Upsample) or module.mode != "nearest" or module.size is not None:
        return None
    scale = module.scale_factor
    scale = tuple(scale) if isinstance(scale, (tuple, list)) else (scale,) * dims
    if len(scale) != dims or any(float(s) != int(s) or s < 1 for s in scale):
        return None
    return tuple(int(s) for s in scale)


def _tap_matrix(k: int, s: int) -> torch.Tensor:
    """(k + s - 1, k) 0/1 matrix: folded tap m sums the original taps k' with
    ``k - 1 - m <= k' <= k - 1 - m + s - 1``."""
    m = torch.arange(k + s - 1).unsqueeze(1)
    kk = torch.arange(k).unsqueeze(0)
    return ((kk >= k - 1 - m) & (kk <= k - 1 - m + s - 1)).double()


def _folded_upsample(scale: tuple[int, ...], pad: list[tuple[int, int]], conv: nn.Module) -> ConvTransposeCrop | None:
    """The transposed convolution equal to ``conv(pad(upsample(x)))``; None when the pattern does
    not apply (stride, dilation, groups, or padding beyond the kernel)."""
    dims = len(scale)
    if not isinstance(conv, _CONVS) or conv.groups != 1 or any(s != 1 for s in conv.stride) \
            or any(d != 1 for d in conv.dilation) or getattr(conv, "padding_mode", "zeros") != "zeros" \
            or isinstance(conv.padding, str):
        return None
    kernel = tuple(conv.weight.shape[2:])
    total = [(p[0] + c[0], p[1] + c[1]) for p, c in zip(pad, _conv_pad(conv, dims))]
    if any(b > k - 1 or a > k - 1 for (b, a), k in zip(total, kernel)):
        return None
    w = conv.weight.detach().double().transpose(0, 1)  # (C_in, C_out, *k)
    for axis in range(dims):
        t = _tap_matrix(kernel[axis], scale[axis])
        w = torch.movedim(torch.tensordot(w, t, dims=([2 + axis], [1])), -1, 2 + axis)
    crop = [(k - 1 - b, k - 1 - a) for (b, a), k in zip(total, kernel)]
    bias = None if conv.bias is None else conv.bias.detach().clone()
    return ConvTransposeCrop(w.to(conv.weight.dtype), bias, scale, crop, origin="upsample_conv")


def _cropped_transpose(layer: nn.Module) -> nn.Module:
    """A Keras-semantics :class:`~fastshower.models.layers.ConvTranspose2d` (full output, then
    cropped) as a :class:`ConvTransposeCrop` that does not compute the cropped cells."""
    from fastshower.models.layers import ConvTranspose2d

    if type(layer) is not ConvTranspose2d or layer.groups != 1 or any(p != 0 for p in layer.padding) \
            or any(d != 1 for d in layer.dilation) or any(p != 0 for p in layer.output_padding):
        return layer
    crop = [(layer.crop_before, layer.crop_after)] * 2
    bias = None if layer.bias is None else layer.bias.detach().clone()
    return ConvTransposeCrop(layer.weight.detach().clone(), bias, layer.stride, crop, origin="transpose")


def _is_identity(module: nn.Module) -> bool:
    return isinstance(module, (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.Identity))


def _fold_upsampling(seq: nn.Sequential) -> list[nn.Module]:
    """The modules of ``seq`` without identities, each ``Upsample -> [ZeroPad] -> Conv`` replaced
    by its :class:`ConvTransposeCrop`."""
    mods = [_cropped_transpose(m) for m in seq if not _is_identity(m)]
    out: list[nn.Module] = []
    i = 0
    while i < len(mods):
        folded, j = None, i + 1
        if isinstance(mods[i], nn.Upsample):
            conv_at = j + 1 if j < len(mods) and isinstance(mods[j], _PADS) else j
            if conv_at < len(mods) and isinstance(mods[conv_at], _CONVS):
                conv = mods[conv_at]
                dims = conv.weight.dim() - 2
                scale = _upsample_scale(mods[i], dims)
                pad = _pad_spec(mods[j], dims) if conv_at > j else [(0, 0)] * dims
                if scale is not None and pad is not None:
                    folded = _folded_upsample(scale, pad, conv)
                    j = conv_at + 1
        out.append(folded if folded is not None else mods[i])
        i = j if folded is not None else i + 1
    return out


def _dense_of(module: nn.Module) -> nn.Linear | None:
    """The ``nn.Linear`` of a dense-to-volume stage (``nn.Linear`` itself, or a module whose only
    parameters are one ``nn.Linear`` and which adds no nonlinearity, e.g. the 3DGAN's
    Dense + Reshape), else None."""
    from fastshower.models.gan3d import _DenseToVolume

    if isinstance(module, nn.Linear):
        return module
    if type(module) is _DenseToVolume:
        return module.dense
    return None


def _fold_dense_conv(mods: list[nn.Module], input_features: dict[int, int]) -> tuple[list[nn.Module], int]:
    """``Dense -> [Reshape] -> Conv`` (no nonlinearity between: both linear) as one matrix product
    (:class:`DenseVolume`), computed exactly by pushing the unit vectors through both, when that
    needs fewer multiply-adds than the two layers apart (gan3d_clic25: 200 x 25 088 = 5.0 M instead
    of 0.6 M + 57.8 M). Returns the modules and the number of folds."""
    out, n, i = [], 0, 0
    while i < len(mods):
        m = mods[i]
        dense = _dense_of(m)
        if dense is not None and i + 1 < len(mods) and isinstance(mods[i + 1], (*_CONVS, ConvTransposeCrop)) \
                and id(m) in input_features:
            pair = copy.deepcopy(nn.Sequential(m, mods[i + 1])).double().eval()
            first = copy.deepcopy(nn.Sequential(m)).double().eval()
            n_in = dense.in_features
            with torch.no_grad():
                zero = pair(torch.zeros(1, n_in, dtype=torch.float64))
                basis = pair(torch.eye(n_in, dtype=torch.float64)) - zero
                dense_out = first(torch.zeros(1, n_in, dtype=torch.float64))
            macs_apart = n_in * dense.out_features + _conv_macs(mods[i + 1], dense_out.shape)
            macs_joint = n_in * zero.numel()
            if macs_joint < macs_apart:
                dtype = dense.weight.dtype
                out.append(DenseVolume(basis.reshape(n_in, -1).T.contiguous().to(dtype),
                                       zero.reshape(-1).to(dtype), zero.shape[1:]))
                n += 1
                i += 2
                continue
        out.append(m)
        i += 1
    return out, n


def _conv_macs(layer: nn.Module, input_shape: Sequence[int]) -> float:
    """Multiply-adds per sample of a convolution (or folded transposed one) on ``input_shape``."""
    if isinstance(layer, ConvTransposeCrop):
        return layer.executed_flops((1, *input_shape[1:])) / 2
    with torch.no_grad():
        out = layer(torch.zeros(1, *input_shape[1:], dtype=layer.weight.dtype))
    return out.numel() * math.prod(layer.weight.shape[1:])


def _linear_path_end(mods: list[nn.Module], start: int) -> int | None:
    """Index of the first weighted linear layer at or after ``start`` if every module before it is
    linear and channel-preserving (padding, nearest upsampling), else None."""
    for j in range(start, len(mods)):
        m = mods[j]
        if isinstance(m, (*_CONVS, *_TRANSPOSED, ConvTransposeCrop)):
            groups = getattr(m, "groups", 1)
            return j if groups == 1 else None
        if isinstance(m, nn.Upsample) and m.mode == "nearest":
            continue
        if any(_pad_spec(m, d) is not None for d in (1, 2, 3)):
            continue
        return None
    return None


def _scale_input_channels(layer: nn.Module, scale: torch.Tensor) -> None:
    """Multiply the input-channel weights of ``layer`` by ``scale`` (C_in,) in place."""
    w = layer.weight
    with torch.no_grad():
        if isinstance(layer, _CONVS):
            w.mul_(scale.view(1, -1, *[1] * (w.dim() - 2)).to(w.dtype))
        else:  # transposed: (C_in, C_out, *k)
            w.mul_(scale.view(-1, 1, *[1] * (w.dim() - 2)).to(w.dtype))


def _fold_batchnorm(mods: list[nn.Module], input_shapes: dict[int, torch.Size]) -> list[nn.Module]:
    out = list(mods)
    i = 0
    while i < len(out):
        bn = out[i]
        if _fixed_statistics(bn) and id(bn) in input_shapes:
            j = _linear_path_end(out, i + 1)
            if j is not None:
                with torch.no_grad():
                    a = (bn.weight if bn.affine else 1.0) / torch.sqrt(bn.running_var + bn.eps)
                    b = (bn.bias if bn.affine else 0.0) - bn.running_mean * a
                    a, b = a.double(), b.double()
                    path = copy.deepcopy(nn.Sequential(*out[i + 1:j + 1])).double().eval()
                    shape = (1, *input_shapes[id(bn)][1:])
                    view = (1, -1, *[1] * (len(shape) - 2))
                    shift = (path(b.view(view).expand(shape).contiguous())
                             - path(torch.zeros(shape, dtype=torch.float64)))
                layer = out[j]
                _scale_input_channels(layer, a)
                flat = shift.flatten(2)
                spread = (flat.max(-1).values - flat.min(-1).values).abs().max()
                extra: list[nn.Module] = []
                if spread <= 1e-12 * max(float(flat.abs().max()), 1e-30):
                    per_channel = flat[0, :, 0].to(layer.weight.dtype)
                    if layer.bias is None:
                        layer.bias = nn.Parameter(per_channel.clone(), requires_grad=False)
                    else:
                        with torch.no_grad():
                            layer.bias.add_(per_channel)
                else:
                    extra = [BiasMap(shift.to(layer.weight.dtype))]
                out = out[:i] + out[i + 1:j + 1] + extra + out[j + 1:]
                continue  # out[i] is now the next module
        i += 1
    return out


def _fold_pads(mods: list[nn.Module]) -> tuple[list[nn.Module], int]:
    """A zero ``ConstantPad`` (or a Keras layer's own ``F.pad``) right before a convolution, when
    symmetric per axis, moved into the convolution's ``padding`` (the same zeros, read by the
    kernel instead of copied into a new tensor first). Returns the modules and the number of pads
    moved. The convolution is modified in place (``fold_generator`` works on a copy)."""
    out: list[nn.Module] = []
    n = 0
    for m in mods:
        prev = out[-1] if out else None
        if isinstance(m, _CONVS) and getattr(m, "padding_mode", "zeros") == "zeros" \
                and not isinstance(m.padding, str):
            dims = m.weight.dim() - 2
            pad = _pad_spec(prev, dims) if prev is not None else None
            total = _conv_pad(m, dims)
            if pad is not None:
                total = [(b + pb, a + pa) for (b, a), (pb, pa) in zip(total, pad)]
            moved = pad is not None or bool(getattr(m, "keras_padding", None))
            if moved and all(b == a for b, a in total):
                m.padding = tuple(b for b, _ in total)
                if getattr(m, "keras_padding", None):
                    m.keras_padding = None
                if pad is not None:
                    out.pop()
                n += 1
        out.append(m)
    return out, n


def _inplace_activations(mods: list[nn.Module]) -> None:
    """Make (Leaky)ReLUs that follow a layer producing a fresh tensor work in place (no new
    allocation: on this CPU a large fresh buffer costs more page faults than the activation itself).
    The first module of a Sequential is left alone: its input may be used elsewhere (residuals)."""
    producers = (*_CONVS, *_TRANSPOSED, nn.Linear, ConvTransposeCrop, BiasMap, DenseVolume)
    for prev, m in itertools.pairwise(mods):
        if isinstance(m, (nn.ReLU, nn.LeakyReLU)) and isinstance(prev, producers):
            m.inplace = True


def _input_shapes(module: ShowerGenerator, layers: list[nn.Module]) -> dict[int, torch.Size]:
    """Input shape of each of ``layers`` (modules of ``module``) in one forward pass of one shower
    (id(layer) -> shape, batch axis included)."""
    shapes: dict[int, torch.Size] = {}

    def record(mod: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        shapes.setdefault(id(mod), inputs[0].shape)

    _one_shower_with_hooks(module, layers, record)
    return shapes


def _one_shower_with_hooks(module: ShowerGenerator, layers: list[nn.Module], hook) -> None:
    """One inference forward pass of one shower with forward ``hook`` on each of ``layers``."""
    hooks = [m.register_forward_hook(hook) for m in layers]
    try:
        with torch.inference_mode():
            module(*example_inputs(module, 1))
    finally:
        for h in hooks:
            h.remove()


def _batchnorm_input_shapes(module: ShowerGenerator) -> dict[int, torch.Size]:
    """Input shape of every BatchNorm module in one forward pass (id(module) -> shape)."""
    return _input_shapes(module, [m for m in module.modules() if _fixed_statistics(m)])


def example_inputs(module: ShowerGenerator, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` float32 inputs over the model's trained range: energies log-spaced (GeV), angles evenly
    spaced (rad), seeded standard-normal noise."""
    (e_lo, e_hi), (a_lo, a_hi) = module.energy_range_gev, module.angle_range_rad
    gen = torch.Generator().manual_seed(seed)
    return (torch.from_numpy(np.geomspace(e_lo, e_hi, n).astype(np.float32)),
            torch.from_numpy(np.linspace(a_lo, a_hi, n).astype(np.float32)),
            torch.randn(n, module.noise_dim, generator=gen))


# ------------------------------------------------------------------------------ public API

def fold_generator(module: ShowerGenerator, upsample: bool = True, batchnorm: bool = True,
                   form: str = "auto", dense_conv: bool = True, pads: bool = True) -> ShowerGenerator:
    """A folded copy of ``module`` (evaluation mode, float32 CPU weights unchanged in value; the
    original is untouched): nearest ``Upsample -> [ZeroPad] -> Conv`` as one transposed
    convolution, inference-mode BatchNorm into the next linear layer, Dropout removed, and (with
    ``dense_conv``) a dense layer and the convolution right after it as one matrix product where
    that is cheaper (:func:`_fold_dense_conv`). Every
    ``nn.Sequential`` of the network is rewritten; the rest of the forward code is kept.
    ``form``: how the transposed convolutions run (:class:`ConvTransposeCrop`): ``subpixel``,
    ``transposed``, or ``auto`` (default: folded upsamplings as ``subpixel``, the Keras
    ``ConvTranspose2d`` layers as ``transposed``, the faster choice for each on this CPU with
    torch and ONNX Runtime; ``subpixel`` makes every layer an ordinary convolution, which int8
    quantization can use). ``module.folded`` records what was done."""
    if getattr(module, "folded", None):  # already folded: nothing left to fold
        return copy.deepcopy(module).eval()
    folded = copy.deepcopy(module).eval()
    device = next(folded.parameters()).device
    dtype = next(folded.parameters()).dtype
    folded = folded.float().cpu()
    shapes = _batchnorm_input_shapes(folded) if batchnorm else {}
    counts = {"upsample_conv": 0, "transpose": 0, "batchnorm": 0, "batchnorm_kept": 0, "dense_conv": 0, "pad": 0}
    features = {id(m): 1 for m in folded.modules() if _dense_of(m) is not None}
    for parent in list(folded.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, nn.Sequential):
                continue
            mods = _fold_upsampling(child) if upsample else [m for m in child if not _is_identity(m)]
            for origin in ("upsample_conv", "transpose"):
                counts[origin] += sum(getattr(m, "origin", None) == origin for m in mods)
            if batchnorm:
                n_bn = sum(_fixed_statistics(m) for m in mods)
                mods = _fold_batchnorm(mods, shapes)
                left = sum(_fixed_statistics(m) for m in mods)
                counts["batchnorm"] += n_bn - left
                counts["batchnorm_kept"] += left
            if dense_conv:
                mods, n_dense = _fold_dense_conv(mods, features)
                counts["dense_conv"] += n_dense
            if pads:
                mods, n_pads = _fold_pads(mods)
                counts["pad"] += n_pads
            _inplace_activations(mods)
            setattr(parent, name, nn.Sequential(*mods))
    if form not in FORMS:
        raise ValueError(f"unknown form {form!r}: {', '.join(FORMS)}")
    for m in folded.modules():
        if isinstance(m, ConvTransposeCrop):
            m.form = form if form != "auto" else ("subpixel" if m.origin == "upsample_conv" else "transposed")
            m.prepare()
    folded.folded = {**counts, "form": form}  # type: ignore[attr-defined]
    return folded.to(device=device, dtype=dtype).eval()


def channels_last(module: nn.Module, chunk_bytes: int | None = None) -> nn.Module:
    """A copy of ``module`` (folded or not) that runs in channels-last memory layout on the CPU:
    4-d / 5-d weights and buffers in ``channels_last`` / ``channels_last_3d``, folded layers
    (:class:`DenseVolume`, sub-pixel :class:`ConvTransposeCrop`) producing channels-last
    activations directly, so that oneDNN's channels-last convolution kernels run without layout
    conversions between layers. For a generator, the layers after the leading dense ones also run
    on batch slices whose largest activation is about ``chunk_bytes`` (:class:`BatchChunks`;
    default :data:`CHUNK_BYTES`, 0 = the whole batch at once), where every such layer treats samples
    independently. The same function (exact up to rounding); torch only: an ONNX export is
    unaffected by memory layout (export the module before this)."""
    twin = copy.deepcopy(module)
    for m in twin.modules():
        if isinstance(m, (ConvTransposeCrop, DenseVolume)):
            m.to_channels_last()
    for tensor in [*twin.parameters(), *twin.buffers()]:
        if tensor.dim() == 5:
            tensor.data = tensor.data.contiguous(memory_format=torch.channels_last_3d)
        elif tensor.dim() == 4:
            tensor.data = tensor.data.contiguous(memory_format=torch.channels_last)
    if isinstance(twin, ShowerGenerator):
        _defer_crops(twin)
        budget = CHUNK_BYTES if chunk_bytes is None else int(chunk_bytes)
        if budget > 0:
            _chunk_batches(twin, budget)
    return twin


#: Activation bytes per batch slice that :func:`channels_last` aims at (:class:`BatchChunks`): well
#: inside the 32 MB L3 of this CPU and below glibc's largest dynamic mmap threshold (32 MB), so that
#: the slices' buffers are reused from the heap instead of being mapped (page-faulted) on every call;
#: 4-32 MB measured alike, 0 page faults at 4-8 MB (bench/chunks_cpu_quiet_*.json).
CHUNK_BYTES = 8 << 20
_ACTIVATIONS = (nn.ReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.Softplus)


def _per_sample(module: nn.Module) -> bool:
    """True when ``module`` maps every sample of a batch on its own (so a batch may be sliced):
    linear layers, folded layers, padding, upsampling, element-wise activations and
    running-statistics BatchNorm in evaluation mode. Anything else (batch statistics,
    minibatch features, unknown modules) is False."""
    if isinstance(module, FixedStatisticsBatchNorm):
        return True
    if type(module) in _BATCHNORMS:
        return module.track_running_stats and module.running_mean is not None and not module.training
    if isinstance(module, nn.Sequential):
        return all(_per_sample(m) for m in module)
    from fastshower.models.gan3d import _DenseToVolume

    return isinstance(module, (*_CONVS, *_TRANSPOSED, *_PADS, *_ACTIVATIONS, ConvTransposeCrop, Crop, BiasMap,
                               DenseVolume, _DenseToVolume, nn.Linear, nn.Upsample, nn.Identity))


def _chunk_batches(module: ShowerGenerator, chunk_bytes: int) -> None:
    """Wrap the layers after the leading dense ones of each ``nn.Sequential`` of ``module`` in a
    :class:`BatchChunks` whose slices keep the largest activation near ``chunk_bytes`` (the
    dense layers keep the whole batch: one matrix product reads their weights once). Only where
    every wrapped layer is :func:`_per_sample` and the largest activation of one sample is
    known from a forward pass."""
    seqs = [(parent, name, child) for parent in list(module.modules())
            for name, child in parent.named_children() if isinstance(child, nn.Sequential)]
    inner = [m for _, _, seq in seqs for m in seq]
    sizes: dict[int, int] = {}

    def record(mod: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        if isinstance(output, torch.Tensor):
            sizes[id(mod)] = max(sizes.get(id(mod), 0), output[0].numel() * output.element_size())

    _one_shower_with_hooks(module, inner, record)
    for parent, name, seq in seqs:
        mods = list(seq)
        start = 0
        while start < len(mods) and (_dense_of(mods[start]) is not None or isinstance(mods[start], DenseVolume)
                                     or isinstance(mods[start], _ACTIVATIONS)):
            start += 1
        body = mods[start:]
        if not body or not all(_per_sample(m) and id(m) in sizes for m in body):
            continue
        largest = max(sizes[id(m)] for m in body)
        chunk = max(1, chunk_bytes // largest)
        chunked = BatchChunks(nn.Sequential(*body), chunk)
        setattr(parent, name, nn.Sequential(*mods[:start], chunked).train(seq.training))


def _valid_conv(layer: nn.Module) -> bool:
    """A stride-1, undilated convolution without any padding (its output is a crop-commuting window)."""
    keras = getattr(layer, "keras_padding", None)
    return isinstance(layer, _CONVS) and not isinstance(layer.padding, str) and all(p == 0 for p in layer.padding) \
        and all(v == 1 for v in layer.stride) and all(v == 1 for v in layer.dilation) \
        and not (keras and any(keras))


def _defer_crops(module: ShowerGenerator) -> None:
    """Channels-last sub-pixel layers followed by (Leaky)ReLUs and a valid convolution: crop after
    that convolution instead of before it (both commute with a crop; the convolution then reads the
    dense shuffled tensor instead of a strided view it would first copy, and the crop is of its
    narrower output). The crop windows come from one forward pass (the volume is fixed)."""
    layers = [m for m in module.modules() if isinstance(m, ConvTransposeCrop) and m.channels_last
              and m.form == "subpixel" and m.dims > 1]
    if not layers:
        return
    sizes = {key: shape[2:] for key, shape in _input_shapes(module, layers).items()}
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if not isinstance(child, nn.Sequential):
                continue
            mods, changed = list(child), False
            for i in range(len(mods)):
                m = mods[i]
                if not (isinstance(m, ConvTransposeCrop) and id(m) in sizes and m in layers):
                    continue
                j = i + 1
                while j < len(mods) and isinstance(mods[j], (nn.ReLU, nn.LeakyReLU)):
                    j += 1
                if j >= len(mods) or not _valid_conv(mods[j]):
                    continue
                starts, lengths = m.crop_window(sizes[id(m)])
                kernel = mods[j].weight.shape[2:]
                m.crop_deferred = True
                mods.insert(j + 1, Crop(starts, [n - k + 1 for n, k in zip(lengths, kernel)]))
                changed = True
            if changed:
                setattr(parent, name, nn.Sequential(*mods).train(child.training))


def flops_per_shower(module: nn.Module, batch: int = 2) -> dict[str, Any]:
    """FLOPs of one shower (``FlopCounterMode`` on a float32 CPU copy, averaged over ``batch``; a
    multiply-add = 2; convolutions and matrix products): ``total`` (what runs), ``minimal`` (the
    same with each :class:`ConvTransposeCrop` counted by the taps its kept outputs need: the
    floor of any implementation) and ``by_operator`` (aten op name -> FLOPs)."""
    from torch.utils.flop_counter import FlopCounterMode

    net = copy.deepcopy(module).float().cpu().eval()
    shapes: list[tuple[ConvTransposeCrop, torch.Size]] = []

    def record(mod: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        shapes.append((mod, inputs[0].shape))  # type: ignore[arg-type]

    hooks = [m.register_forward_hook(record) for m in net.modules() if isinstance(m, ConvTransposeCrop)]
    try:
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            net(*example_inputs(net, batch))
    finally:
        for h in hooks:
            h.remove()
    by_op: dict[str, float] = {}
    for ops in counter.get_flop_counts().values():
        for op, n in ops.items():
            by_op[str(op)] = max(by_op.get(str(op), 0.0), n / batch)  # module totals nest: keep the outermost
    total = counter.get_total_flops() / batch
    minimal = total + sum(m.effective_flops(shape) - m.executed_flops(shape) for m, shape in shapes) / batch
    return {"total": total, "minimal": minimal, "by_operator": by_op}


def flop_report(module: ShowerGenerator, form: str = "auto") -> dict[str, Any]:
    """FLOPs per shower of ``module`` before and after :func:`fold_generator` and what the fold did:
    ``flops_before``, ``flops_after`` (what the folded network runs), ``flops_after_minimal``
    (useful taps only, :func:`flops_per_shower`), ``reduction`` (before / after), ``folded``
    (counts), ``by_operator_before`` / ``by_operator_after``."""
    folded = fold_generator(module, form=form)
    before, after = flops_per_shower(module), flops_per_shower(folded)
    return {"model": module.name, "flops_before": before["total"], "flops_after": after["total"],
            "flops_after_minimal": after["minimal"], "reduction": before["total"] / after["total"],
            "folded": dict(folded.folded), "by_operator_before": before["by_operator"],
            "by_operator_after": after["by_operator"]}


def check_fold(module: ShowerGenerator, folded: ShowerGenerator | None = None, n: int = 8,
               seed: int = 0) -> dict[str, float]:
    """Largest cell difference between ``module`` and its fold on ``n`` inputs spanning the trained
    range, relative to the largest cell: ``max_rel_err`` (to compare with :data:`FOLD_RTOL`),
    and the raw-output (model units, before the ``max(x, 0)`` of the GeV conversion) value
    ``max_rel_err_raw``."""
    folded = folded if folded is not None else fold_generator(module)
    ref = copy.deepcopy(module).float().cpu().eval()
    fol = copy.deepcopy(folded).float().cpu().eval()
    args = example_inputs(ref, n, seed)
    with torch.inference_mode():
        expected, got = ref(*args), fol(*args)
        raw_e, raw_g = ref.generate_raw(*args), fol.generate_raw(*args)
    scale = float(expected.abs().max()) or 1.0
    raw_scale = float(raw_e.abs().max()) or 1.0
    return {"max_rel_err": float((got - expected).abs().max()) / scale,
            "max_rel_err_raw": float((raw_g - raw_e).abs().max()) / raw_scale,
            "max_abs_err_gev": float((got - expected).abs().max()), "n": n,
            "is_finite": bool(math.isfinite(float(got.sum())))}
