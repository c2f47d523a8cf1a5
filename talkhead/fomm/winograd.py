"""Winograd F(2x2, 3x3) convolution for the FOMM generator's bottleneck on CPU.

A 3x3, stride-1, zero-padded convolution computed tile by tile: each 2x2 block of outputs comes from a
4x4 block of the (padded) input as ``Y = A^T [ (G g G^T) * (B^T d B) ] A`` (Lavin & Gray, "Fast Algorithms
for Convolutional Neural Networks", CVPR 2016, eq. 8 with m = 2, r = 3), the elementwise products summed
over input channels as 16 matrix products. That is 16 multiplies per 4 outputs instead of 36: the
multiply count of the 12 bottleneck convolutions (256 -> 256 channels at 64x64, most of a frame's time
on CPU: ``benchmarks/README.md``, "FOMM rendering") falls 2.25x, for transforms that are additions only
(the input and output transforms) and a weight transform done once per weight.

Numerics: F(2x2, 3x3) has transform entries 0, +-1 and +-1/2 only, so its rounding error stays at the
level of a direct float32 convolution (``tests/test_fast_paths.py`` holds it within 2e-6 of a float64
convolution; measured against oneDNN's direct kernel: ``benchmarks/README.md``, "FOMM rendering", Winograd
row). The larger tiles
(F(4x4, 3x3)) are not used: their transforms have entries up to 8 and lose about a digit.

Not in the reference (FOMM uses ``nn.Conv2d``); the result is the same convolution up to float32
rounding, pinned by ``tests/test_fast_paths.py``.
"""
from __future__ import annotations

from typing import Optional

import torch

__all__ = ["winograd_weight", "winograd_conv3x3", "winograd_applies", "TILE_ROWS"]

TILE_ROWS = 16
"""Default rows of output tiles per step of :func:`winograd_conv3x3` (measured: ``benchmarks/README.md``,
"FOMM rendering", Winograd row)."""


def winograd_weight(weight: torch.Tensor) -> torch.Tensor:
    """3x3 kernels ``(Cout, Cin, 3, 3)`` -> their F(2x2, 3x3) transforms ``U = G g G^T``, ``(16, Cin, Cout)``.

    ``U[4 i + j]`` is the ``(Cin, Cout)`` matrix the input-transform entry ``(i, j)`` of every tile
    is multiplied by. ``G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]`` (Lavin & Gray).
    Computed in float64 and rounded once to ``weight``'s dtype.
    """
    g = weight.detach().to(torch.float64)

    def rows(t: torch.Tensor, dim: int) -> torch.Tensor:  # G applied along ``dim`` (3 -> 4)
        k0, k1, k2 = t.unbind(dim)
        return torch.stack([k0, (k0 + k1 + k2) / 2, (k0 - k1 + k2) / 2, k2], dim)

    u = rows(rows(g, 2), 3)  # (Cout, Cin, 4, 4)
    return u.permute(2, 3, 1, 0).reshape(16, g.shape[1], g.shape[0]).to(weight.dtype).contiguous()


def winograd_applies(conv: torch.nn.Conv2d, x: torch.Tensor) -> bool:
    """Whether :func:`winograd_conv3x3` computes ``conv`` on ``x``: a 3x3 stride-1 dilation-1 ungrouped
    convolution with zero padding 1, float32 input and weight on CPU, input ``(B, C, H, W)`` with even H and W."""
    return (x.device.type == "cpu" and x.dtype == torch.float32 and conv.weight.dtype == torch.float32
            and x.dim() == 4 and x.shape[2] % 2 == 0
            and x.shape[3] % 2 == 0 and tuple(conv.kernel_size) == (3, 3) and tuple(conv.padding) == (1, 1)
            and tuple(conv.stride) == (1, 1) and tuple(conv.dilation) == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros")


def winograd_conv3x3(x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor, *, relu: bool = False,
                     residual: Optional[torch.Tensor] = None, tile_rows: int = TILE_ROWS) -> torch.Tensor:
    """``conv3x3(x, padding=1) + bias`` (then ``+ residual``, then ReLU if ``relu``) by Winograd F(2x2, 3x3).

    Args:
        x: ``(B, Cin, H, W)`` float32, H and W even (any memory format; read as channels_last).
        u: ``(16, Cin, Cout)`` from :func:`winograd_weight`.
        bias: ``(Cout,)``.
        residual: optional ``(B, Cout, H, W)`` added to the result (before the ReLU).
        tile_rows: rows of 2x2 output tiles transformed and multiplied at a time; bounds the
            temporaries at ~``48 * B * tile_rows * W * (Cin + Cout)`` bytes (float32), besides the padded
            input and the output (24 MiB for 256 channels at 64x64, the default 16 rows).

    Returns:
        ``(B, Cout, H, W)`` in channels_last memory format.

    Input transform ``B^T d B`` with ``B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]``,
    output transform ``A^T m A`` with ``A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]`` (Lavin & Gray, CVPR 2016).
    """
    bsz, cin, h, w = x.shape
    cout = u.shape[2]
    th, tw = h // 2, w // 2
    # zero-padded input, channels last: (B, H + 2, W + 2, Cin)
    pad = x.new_zeros(bsz, h + 2, w + 2, cin)
    pad[:, 1:h + 1, 1:w + 1].copy_(x.permute(0, 2, 3, 1))
    out = x.new_empty(bsz, h, w, cout)  # (B, H, W, Cout): channels_last storage of (B, Cout, H, W)
    step = max(1, min(int(tile_rows), th))
    rt = x.new_empty(4, bsz, step, w + 2, cin)
    v = x.new_empty(4, 4, bsz, step, tw, cin)
    m = x.new_empty(16, bsz * step * tw, cout)
    s = x.new_empty(2, 4, bsz, step, tw, cout)
    for t0 in range(0, th, step):
        tc = min(step, th - t0)
        rt_, v_, s_ = rt[:, :, :tc], v[:, :, :, :tc], s[:, :, :, :tc]
        # rows of B^T d, from padded rows 2 ty + k (k = 0..3)
        r = [pad[:, 2 * t0 + k:2 * (t0 + tc) + k:2] for k in range(4)]
        torch.sub(r[0], r[2], out=rt_[0])
        torch.add(r[1], r[2], out=rt_[1])
        torch.sub(r[2], r[1], out=rt_[2])
        torch.sub(r[1], r[3], out=rt_[3])
        # columns: (B^T d) B, from padded columns 2 tx + k -> v (4, 4, B, tc, TW, Cin)
        for i in range(4):
            c = [rt_[i][:, :, k:k + 2 * tw:2] for k in range(4)]
            torch.sub(c[0], c[2], out=v_[i, 0])
            torch.add(c[1], c[2], out=v_[i, 1])
            torch.sub(c[2], c[1], out=v_[i, 2])
            torch.sub(c[1], c[3], out=v_[i, 3])
        n = bsz * tc * tw
        vv = v_ if tc == step else v_.contiguous()
        mm = torch.bmm(vv.reshape(16, n, cin), u, out=m[:, :n]).view(4, 4, bsz, tc, tw, cout)
        # A^T m, then (A^T m) A written into the output rows 2 t0 .. 2 (t0 + tc)
        for j in range(4):
            torch.add(mm[0, j], mm[1, j], out=s_[0, j]).add_(mm[2, j])
            torch.sub(mm[1, j], mm[2, j], out=s_[1, j]).sub_(mm[3, j])
        rows = out[:, 2 * t0:2 * (t0 + tc)]
        for a in range(2):
            torch.add(s_[a, 0], s_[a, 1], out=rows[:, a::2, 0::2]).add_(s_[a, 2])
            torch.sub(s_[a, 1], s_[a, 2], out=rows[:, a::2, 1::2]).sub_(s_[a, 3])
    del pad, rt, v, m, s
    out = out.permute(0, 3, 1, 2)
    out.add_(bias.view(1, cout, 1, 1))
    if residual is not None:
        out.add_(residual)
    return out.relu_() if relu else out
