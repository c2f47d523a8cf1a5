"""VQGAN-style encoder/decoder blocks of the SMAC generator (no quantiser on the main path).

Re-implementation of the layers in ``basicsr/archs/vqgan_arch.py`` of the SMAC reference
(``ShaelynZ/synergize-motion-appearance``; the file credits Unleashing Transformers' VQGAN): GroupNorm(32)
``normalize``, ``swish``, ``ResBlock``, ``AttnBlock``, ``Downsample``, ``Upsample``, ``Encoder``,
``Generator`` and the ``VectorQuantizer`` whose ``embedding`` holds a codebook. Attribute names and
registration order give the reference state-dict keys (``encoder.blocks.{i}.*``,
``generator.blocks.{i}.*``, ``norm1``/``conv1``/``norm2``/``conv2``/``conv_out``, ``q``/``k``/``v``/
``proj_out``, ``embedding.weight``).

Block indices for the released settings (``nf`` 64, ``ch_mult`` [1, 2, 2, 4], 2 res blocks, attention at
32 px, 256 px frames):

- encoder: 0 conv (64 ch, 256 px); 1-2 ResBlock (64, 256 px); 3 Downsample; 4-5 ResBlock (128, 128 px);
  6 Downsample; 7-8 ResBlock (128, 64 px); 9 Downsample; 10-13 ResBlock/AttnBlock (256, 32 px);
  14-16 ResBlock/AttnBlock/ResBlock; 17 GroupNorm; 18 conv -> the (B, 256, 32, 32) latent.
- generator: 0 conv; 1-3 ResBlock/AttnBlock/ResBlock; 4-7 ResBlock/AttnBlock (256 ch, 32 px);
  8 Upsample; 9-10 ResBlock (128 ch, 64 px); 11 Upsample; 12-13 ResBlock (128, 128 px); 14 Upsample;
  15-16 ResBlock (64, 256 px); 17 GroupNorm; 18 conv -> (B, 3, 256, 256).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def normalize(channels: int) -> nn.GroupNorm:
    """``GroupNorm(32 groups, channels, eps=1e-6, affine)`` (reference ``vqgan_arch.normalize``)."""
    return nn.GroupNorm(num_groups=32, num_channels=channels, eps=1e-6, affine=True)


def swish(x: torch.Tensor) -> torch.Tensor:
    """``x * sigmoid(x)`` (SiLU), as the reference's scripted ``swish``."""
    return x * torch.sigmoid(x)


class Downsample(nn.Module):
    """Pad right/bottom by one pixel, then a 3x3 stride-2 conv: ``(B, C, H, W) -> (B, C, H/2, W/2)``."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0))


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv: ``(B, C, H, W) -> (B, C, 2H, 2W)``."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class ResBlock(nn.Module):
    """Pre-activation residual block with GroupNorm + swish; a 1x1 ``conv_out`` when widths differ.

    ``(B, Cin, H, W) -> (B, Cout, H, W)``. Reference: ``vqgan_arch.ResBlock``.
    """

    def __init__(self, in_channels: int, out_channels: int | None = None):
        super().__init__()
        out_channels = in_channels if out_channels is None else out_channels
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = normalize(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1)
        self.norm2 = normalize(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=1, padding=1)
        if in_channels != out_channels:
            self.conv_out = nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=1, padding=0)

    def forward(self, x_in: torch.Tensor) -> torch.Tensor:
        x = self.conv1(swish(self.norm1(x_in)))
        x = self.conv2(swish(self.norm2(x)))
        if self.in_channels != self.out_channels:
            x_in = self.conv_out(x_in)
        return x + x_in


class AttnBlock(nn.Module):
    """Single-head spatial self-attention with a residual: ``(B, C, H, W) -> (B, C, H, W)``.

    ``softmax(q^T k / sqrt(C))`` over the ``H W`` positions (reference ``vqgan_arch.AttnBlock``).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.norm = normalize(channels)
        self.q = nn.Conv2d(channels, channels, kernel_size=1)
        self.k = nn.Conv2d(channels, channels, kernel_size=1)
        self.v = nn.Conv2d(channels, channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        q, k, v = self.q(h), self.k(h), self.v(h)
        b, c, hh, ww = q.shape
        q = q.reshape(b, c, hh * ww).permute(0, 2, 1)  # (B, HW, C)
        attn = torch.bmm(q, k.reshape(b, c, hh * ww)) * (int(c) ** (-0.5))  # (B, HW_q, HW_k)
        attn = F.softmax(attn, dim=2)
        out = torch.bmm(v.reshape(b, c, hh * ww), attn.permute(0, 2, 1)).reshape(b, c, hh, ww)
        return x + self.proj_out(out)


class Encoder(nn.Module):
    """VQGAN encoder: ``(B, 3, S, S) -> (B, emb_dim, S / 2**(len(ch_mult)-1), ...)`` as ``blocks``.

    Reference: ``vqgan_arch.Encoder`` (the SMAC generator reads intermediate block outputs, so the
    blocks are a flat :class:`~torch.nn.ModuleList`).
    """

    def __init__(self, in_channels: int, nf: int, emb_dim: int, ch_mult: Sequence[int], num_res_blocks: int,
                 resolution: int, attn_resolutions: Sequence[int]):
        super().__init__()
        curr_res = resolution
        in_ch_mult = (1,) + tuple(ch_mult)
        blocks: list[nn.Module] = [nn.Conv2d(in_channels, nf, kernel_size=3, stride=1, padding=1)]
        block_in = nf
        for i, mult in enumerate(ch_mult):
            block_in = nf * in_ch_mult[i]
            block_out = nf * mult
            for _ in range(num_res_blocks):
                blocks.append(ResBlock(block_in, block_out))
                block_in = block_out
                if curr_res in attn_resolutions:
                    blocks.append(AttnBlock(block_in))
            if i != len(ch_mult) - 1:
                blocks.append(Downsample(block_in))
                curr_res //= 2
        blocks += [ResBlock(block_in, block_in), AttnBlock(block_in), ResBlock(block_in, block_in),
                   normalize(block_in), nn.Conv2d(block_in, emb_dim, kernel_size=3, stride=1, padding=1)]
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class Generator(nn.Module):
    """VQGAN decoder: ``(B, emb_dim, s, s) -> (B, 3, s * 2**(len(ch_mult)-1), ...)`` as ``blocks``.

    Reference: ``vqgan_arch.Generator``.
    """

    def __init__(self, nf: int, emb_dim: int, ch_mult: Sequence[int], res_blocks: int, img_size: int,
                 attn_resolutions: Sequence[int]):
        super().__init__()
        n = len(ch_mult)
        block_in = nf * ch_mult[-1]
        curr_res = img_size // 2 ** (n - 1)
        blocks: list[nn.Module] = [nn.Conv2d(emb_dim, block_in, kernel_size=3, stride=1, padding=1),
                                   ResBlock(block_in, block_in), AttnBlock(block_in), ResBlock(block_in, block_in)]
        for i in reversed(range(n)):
            block_out = nf * ch_mult[i]
            for _ in range(res_blocks):
                blocks.append(ResBlock(block_in, block_out))
                block_in = block_out
                if curr_res in attn_resolutions:
                    blocks.append(AttnBlock(block_in))
            if i != 0:
                blocks.append(Upsample(block_in))
                curr_res *= 2
        blocks += [normalize(block_in), nn.Conv2d(block_in, 3, kernel_size=3, stride=1, padding=1)]
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class VectorQuantizer(nn.Module):
    """Holder of a codebook ``embedding.weight`` ``(codebook_size, emb_dim)``.

    At inference SMAC never quantises: the transformers cross-attend to (prefixes of) the codebook.
    Only the state-dict layout of the reference ``vqgan_arch.VectorQuantizer`` is kept; its
    nearest-neighbour lookup is a training-time loss and is not implemented.
    """

    def __init__(self, codebook_size: int, emb_dim: int, beta: float = 0.25):
        super().__init__()
        self.codebook_size = codebook_size
        self.emb_dim = emb_dim
        self.beta = beta
        self.embedding = nn.Embedding(codebook_size, emb_dim)
        with torch.no_grad():  # the reference initialisation
            self.embedding.weight.uniform_(-1.0 / codebook_size, 1.0 / codebook_size)
