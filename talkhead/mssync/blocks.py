"""Building blocks of MS-Sync: 1-D inverted-residual blocks, deep MLPs and the audio pyramid.

Module and attribute names follow the reference (``nets/resnet.py`` of LouisBearing/HMo-audio:
``InvResX1D``, ``DeepMLP``, ``FeaturePyramidNetwork(bottom_up_only=True)``) so that state-dict
keys match the released checkpoints exactly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..constants import N_FILT


class InvResX1D(nn.Module):
    """ConvNeXt-style inverted residual block over a 1-D (temporal) axis.

    ``out = GELU(pt_wise_out(GELU(pt_wise_in(norm(depth_wise(x))))) + identity)`` where the
    identity is ``out_norm(downsample(x))`` when the stride or width changes.

    Normalisation: with ``groups == 1`` a LayerNorm over channels at every time step; with
    ``groups > 1`` a GroupNorm with ``groups`` groups (over channels and time). The depth-wise
    conv uses padding ``(kernel - 1) // 2``.

    Args:
        indim: input channels C_in.
        outdim: output channels C_out.
        kernel: depth-wise kernel size (time steps).
        stride: depth-wise (and shortcut) stride.
        expansion_fact: width factor of the point-wise bottleneck (C_in * expansion_fact).
        groups: groups of the point-wise convs and of the shortcut (grouped multi-scale streams).

    Shapes: ``(B, C_in, L) -> (B, C_out, ceil(L / stride))`` (for odd kernels).

    Reference: ``nets/resnet.py`` ``InvResX1D``.
    """

    def __init__(self, indim: int, outdim: int, kernel: int, stride: int = 1, expansion_fact: int = 4,
                 groups: int = 1) -> None:
        super().__init__()
        self.depth_wise = nn.Conv1d(indim, indim, kernel, stride=stride, padding=(kernel - 1) // 2, groups=indim)
        self.norm = nn.GroupNorm(groups, indim) if groups > 1 else nn.LayerNorm(indim)
        self.pt_wise_in = nn.Conv1d(indim, expansion_fact * indim, 1, groups=groups)
        self.act = nn.GELU()
        self.pt_wise_out = nn.Conv1d(expansion_fact * indim, outdim, 1, groups=groups)
        self.downsample: nn.Conv1d | None = None
        if stride != 1 or indim != outdim:
            self.downsample = nn.Conv1d(indim, outdim, 1, stride, groups=groups)
            self.out_norm = nn.GroupNorm(groups, outdim) if groups > 1 else nn.LayerNorm(outdim)
        self.groups = groups

    def _normalise(self, norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.groups > 1:
            return norm(x)
        return norm(x.transpose(1, 2)).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, C_in, L)`` -> ``(B, C_out, L')``."""
        out = self.pt_wise_out(self.act(self.pt_wise_in(self._normalise(self.norm, self.depth_wise(x)))))
        if self.downsample is not None:
            identity = self._normalise(self.out_norm, self.downsample(x))
        else:
            identity = x
        return self.act(out + identity)

    def forward_step(self, x: torch.Tensor) -> torch.Tensor:
        """Same as ``forward(x[..., None])[..., 0]`` for one time step ``(N, C_in) -> (N, C_out)``.

        Only for kernel-1, stride-1 blocks (those of :class:`DeepMLP`); every conv becomes a
        (grouped) matmul and both norms see the same ``(N, C)`` statistics as on ``(N, C, 1)``.
        """
        dw = self.depth_wise
        out = x * dw.weight[:, 0, 0] + dw.bias if dw.bias is not None else x * dw.weight[:, 0, 0]
        out = self.norm(out)
        out = pointwise_conv(self.act(pointwise_conv(out, self.pt_wise_in)), self.pt_wise_out)
        if self.downsample is not None:
            identity = self.out_norm(pointwise_conv(x, self.downsample))
        else:
            identity = x
        return self.act(out + identity)


def pointwise_conv(x: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """A kernel-1 (optionally grouped) ``Conv1d`` applied to single time steps, as a matmul.

    ``(N, C_in) -> (N, C_out)``; equal to ``conv(x[..., None])[..., 0]`` (block-diagonal weight
    for ``groups > 1``), with far less per-call overhead than a convolution.
    """
    weight = conv.weight[..., 0]                                             # (C_out, C_in / G)
    groups = conv.groups
    if groups == 1:
        return F.linear(x, weight, conv.bias)
    n = x.shape[0]
    c_out = weight.shape[0]
    xg = x.reshape(n, groups, -1).transpose(0, 1)                           # (G, N, C_in/G)
    wg = weight.reshape(groups, c_out // groups, -1).transpose(1, 2)       # (G, C_in/G, C_out/G)
    out = torch.bmm(xg, wg).transpose(0, 1).reshape(n, c_out)
    return out + conv.bias if conv.bias is not None else out


def deep_mlp_dims(indim: int, outdim: int, num_stages: int) -> tuple[list[tuple[int, int]], int]:
    """Per-stage ``(in, out)`` widths of a :class:`DeepMLP` and the width entering ``fc_out``.

    Stage i halves the width, but never below ``outdim``:
    ``in_i = indim`` for i = 0 else ``max(int(indim / 2**i), outdim)``,
    ``out_i = max(int(indim / 2**(i+1)), outdim)``; ``fc_out`` gets ``max(int(indim / 2**n), outdim)``
    (``indim`` when there are no stages). Reference: ``nets/resnet.py`` ``DeepMLP.__init__``.
    """
    dims = []
    for i in range(num_stages):
        d_in = indim if i == 0 else max(int(indim / 2 ** i), outdim)
        dims.append((d_in, max(int(indim / 2 ** (i + 1)), outdim)))
    return dims, max(int(indim / 2 ** num_stages), outdim)


class DeepMLP(nn.Module):
    """A stack of kernel-1 :class:`InvResX1D` blocks (an MLP with inverted residuals) + ``fc_out``.

    Stage i has ``layers[i]`` blocks; its last block halves the width (see :func:`deep_mlp_dims`).
    With ``groups > 1`` every layer is grouped, so ``groups`` independent MLPs (one per pyramid
    level) run side by side on a concatenated input, and ``fc_out`` is a grouped 1x1 conv;
    otherwise ``fc_out`` is a Linear.

    Args:
        indim: input features (all groups together).
        outdim: output features (all groups together).
        layers: blocks per stage (may be empty: then only ``fc_out``).
        expansion_fact: inverted-residual expansion factor.
        groups: number of independent groups (streams).

    Shapes: ``(N, indim) -> (N, outdim)``.

    Reference: ``nets/resnet.py`` ``DeepMLP``.
    """

    def __init__(self, indim: int, outdim: int, layers=(1, 1, 1, 1), expansion_fact: int = 1, groups: int = 1) -> None:
        super().__init__()
        dims, fc_in = deep_mlp_dims(indim, outdim, len(layers))
        blocks: list[nn.Module] = []
        for nblocks, (d_in, d_out) in zip(layers, dims):
            blocks += [InvResX1D(d_in, d_in, kernel=1, expansion_fact=expansion_fact, groups=groups)
                       for _ in range(nblocks - 1)]
            blocks.append(InvResX1D(d_in, d_out, kernel=1, expansion_fact=expansion_fact, groups=groups))
        self.blocks = nn.Sequential(*blocks)
        if groups > 1:
            self.fc_out: nn.Module = nn.Conv1d(fc_in, outdim, 1, groups=groups)
        else:
            self.fc_out = nn.Linear(fc_in, outdim)
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(N, indim)`` -> ``(N, outdim)``.

        The reference runs the blocks as convolutions on ``(N, C, 1)``; each block here is the
        equivalent per-step matmul (:meth:`InvResX1D.forward_step`), chosen for speed on the small
        batches of autoregressive decoding (same arithmetic up to float rounding).
        """
        for block in self.blocks:
            x = block.forward_step(x)
        if self.groups > 1:
            return pointwise_conv(x, self.fc_out)
        return self.fc_out(x)


class AudioPyramidEncoder(nn.Module):
    """Bottom-up feature pyramid over the 26-band logfbank (MS-Sync's ``encoder_a``).

    ``conv0``: ``InvResX1D(26, 64, 3)``, ``InvResX1D(64, 128, 3, stride 2)``,
    ``InvResX1D(128, 256, 3)``, ``InvResX1D(256, width, 3, stride 2)`` -> level 0 at 1/4 of the
    logfbank rate (25 Hz for 100 Hz logfbank); then ``n_levels - 1`` blocks
    ``InvResX1D(width, width, 7, stride 2)`` give levels 1.. at 1/8, 1/16, 1/32.

    Args:
        width: channels of every level (the config's ``audio_dim``).
        n_levels: number of levels (4 in MS-Sync).

    Shapes: ``(B, L, 26)`` -> list of ``(B, width, L_i)`` with ``L_0 = ceil(L/4)``,
    ``L_{i+1} = ceil(L_i/2)``.

    Reference: ``nets/resnet.py`` ``FeaturePyramidNetwork(audio_dim, audio_dim, bottom_up_only=True)``
    (the input width 26 is hard-coded there too; the top-down path is unused by MS-Sync).
    """

    def __init__(self, width: int, n_levels: int = 4) -> None:
        super().__init__()
        self.conv0 = nn.Sequential(
            InvResX1D(N_FILT, 64, 3),
            InvResX1D(64, 128, 3, 2),
            InvResX1D(128, 256, 3),
            InvResX1D(256, width, 3, 2),
        )
        self.pyramid_layers = nn.ModuleList([InvResX1D(width, width, 7, 2) for _ in range(n_levels - 1)])

    chunk_rows: int = 1600
    """Default logfbank rows per chunk of :meth:`forward` (16 s at 100 Hz; a multiple of :attr:`stride`).
    Bounds the encoder's temporaries to those of one 16 s chunk instead of growing with the clip
    (measured: ``benchmarks/README.md``, "Keypoint stage memory vs audio length")."""

    def _blocks(self) -> list[InvResX1D]:
        return [*self.conv0, *self.pyramid_layers]

    @property
    def strides(self) -> list[int]:
        """Total stride of each level w.r.t. the logfbank rows (``[4, 8, 16, 32]`` for 4 levels)."""
        out, total = [], 1
        for i, block in enumerate(self._blocks()):
            total *= block.depth_wise.stride[0]
            if i >= len(self.conv0) - 1:
                out.append(total)
        return out

    @property
    def stride(self) -> int:
        """Total stride of the deepest level, logfbank rows (32): chunk starts must be multiples of it."""
        return self.strides[-1]

    @property
    def halo(self) -> int:
        """Receptive-field half-width of the deepest level, in logfbank rows, rounded up to :attr:`stride`.

        Every block is local in time (LayerNorm per time step, kernel-1 point-wise convs, one
        depth-wise conv with padding ``(k - 1) / 2``), so level-i output ``j`` depends only on input
        rows ``[j s_i - R, j s_i + R]`` with ``R = sum_b (k_b - 1) / 2 * (stride before block b)``
        (90 rows for MS-Sync; 96 after rounding).
        """
        radius, total = 0, 1
        for block in self._blocks():
            radius += (block.depth_wise.kernel_size[0] - 1) // 2 * total
            total *= block.depth_wise.stride[0]
        return -(-radius // self.stride) * self.stride

    def _one_pass(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = self.conv0(x)
        levels = [out]
        for layer in self.pyramid_layers:
            out = layer(out)
            levels.append(out)
        return levels

    def forward(self, logfbank: torch.Tensor, chunk_rows: int | None = None) -> list[torch.Tensor]:
        """``logfbank`` ``(B, L, 26)`` -> ``[(B, width, L_0), ..., (B, width, L_3)]``.

        Long inputs are encoded in chunks of ``chunk_rows`` logfbank rows (default
        :attr:`chunk_rows`; ``0`` = one pass), each read with :attr:`halo` extra rows on both sides
        and cropped to its own outputs, so memory does not grow with the audio length beyond the
        (small) outputs. The result equals the one-pass run: every output sees the same input rows
        and zero padding (chunks start at multiples of :attr:`stride`, so the stride grids align);
        only the float rounding of length-dependent kernels (the point-wise GEMMs) differs
        (``tests/test_fast_paths.py`` pins chunked == one pass within 1e-5 in float32 and 1e-12 in
        float64; the measured deviation: ``benchmarks/README.md``, "Keypoint stage memory vs audio length").

        Raises:
            ValueError: ``chunk_rows`` not a positive multiple of :attr:`stride` (nor 0).
        """
        x = logfbank.transpose(1, 2)
        chunk = self.chunk_rows if chunk_rows is None else int(chunk_rows)
        stride, halo = self.stride, self.halo
        if chunk < 0 or chunk % stride:
            raise ValueError(f"chunk_rows must be 0 or a positive multiple of {stride}, got {chunk}")
        length = x.shape[-1]
        if chunk == 0 or length <= chunk + 2 * halo:
            return self._one_pass(x)
        strides = self.strides
        outputs: list[torch.Tensor] | None = None  # filled in place: no list of parts + concatenation
        for start in range(0, length, chunk):
            stop = min(start + chunk, length)
            lo, hi = max(0, start - halo), min(length, stop + halo)
            levels = self._one_pass(x[..., lo:hi])
            if outputs is None:
                outputs = [level.new_empty(*level.shape[:-1], -(-length // s)) for s, level in zip(strides, levels)]
            for s, level, out in zip(strides, levels, outputs):
                # global outputs j with j * s in [start, stop); lo is a multiple of s
                first, last = start // s, -(-stop // s)
                out[..., first:last] = level[..., first - lo // s:last - lo // s]
        return outputs


def frame_encoder(in_dim: int, width: int, out_dim: int) -> nn.Sequential:
    """Per-frame keypoint encoder shared by the generator and the discriminator.

    ``Linear(in_dim, width) -> LayerNorm(width) -> Linear(width, 4*width) -> GELU -> Linear(4*width, out_dim)``,
    the reference's ``encoder_x`` (widths 272 in ``DynamicalModel``, 408 in ``Discriminator``); its
    ``Sequential`` indices 0, 1, 2, 4 give the checkpoint keys ``encoder_x.{0,1,2,4}.*``.
    Input ``(..., in_dim)`` (a flattened frame, ``10 * data_dim``), output ``(..., out_dim)``.
    """
    return nn.Sequential(nn.Linear(in_dim, width), nn.LayerNorm(width), nn.Linear(width, 4 * width), nn.GELU(),
                         nn.Linear(4 * width, out_dim))


def align_corners_weights(in_len: int, out_len: int, frames: torch.Tensor,
                          dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Source indices and weights of linear resampling with ``align_corners=True``, for some output frames.

    Output frame ``f`` of ``F.interpolate(x, size=out_len, mode="linear", align_corners=True)`` is
    ``x[i0] * w0 + x[i1] * w1`` with ``r = f (in_len - 1) / (out_len - 1)`` (0 when ``out_len == 1``),
    ``i0 = floor(r)``, ``i1 = min(i0 + 1, in_len - 1)``, ``w1 = r - i0``, ``w0 = 1 - w1``; ``r`` and the
    weights are computed in float32 for float32 (and lower) tensors, as torch's CPU kernel does, so the
    indices agree with it also for long clips (where float32 ``r`` is coarse). Used by
    :meth:`MSSyncGenerator.embed_audio` and by the windowed rollout (:mod:`talkhead.mssync.windowed`), so
    both compute every pyramid frame with the same arithmetic, element by element.

    Args:
        in_len: source length (>= 1); out_len: output length (>= 1).
        frames: ``(F,)`` int64 output frame indices.
        dtype: the dtype of the tensor to be resampled (the weights' dtype).

    Returns:
        ``(i0, i1, w0, w1)``, each ``(F,)`` (indices int64, weights ``dtype``) on ``frames``' device.
    """
    opmath = dtype if dtype == torch.float64 else torch.float32
    if out_len > 1:
        scale = torch.tensor(in_len - 1, dtype=opmath, device=frames.device) / (out_len - 1)
    else:
        scale = torch.zeros((), dtype=opmath, device=frames.device)
    real = scale * frames.to(opmath)
    i0 = real.floor().long().clamp_(max=in_len - 1)
    w1 = (real - i0.to(opmath)).clamp_(0, 1)
    w0 = 1 - w1
    i1 = torch.where(i0 < in_len - 1, i0 + 1, i0)
    return i0, i1, w0.to(dtype), w1.to(dtype)


def resample_frames(level: torch.Tensor, i0: torch.Tensor, i1: torch.Tensor, w0: torch.Tensor,
                    w1: torch.Tensor) -> torch.Tensor:
    """``level[..., i0] * w0 + level[..., i1] * w1``: ``(B, C, n)`` -> ``(B, C, F)`` (see
    :func:`align_corners_weights`; indices relative to ``level``'s first column)."""
    return level[..., i0] * w0 + level[..., i1] * w1
