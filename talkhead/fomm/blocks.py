"""Building blocks shared by the FOMM keypoint detector, dense motion network and generator.

Re-implementation of the layers in the official ``first-order-model/modules/util.py``
(Siarohin et al., "First Order Motion Model for Image Animation", NeurIPS 2019). Attribute names
are chosen so that ``state_dict()`` keys equal the official checkpoint's (``conv``, ``norm``,
``conv1``/``conv2``/``norm1``/``norm2``, ``encoder.down_blocks``, ``decoder.up_blocks``,
``weight`` of the anti-alias kernel), in the same registration order.

Batch norms are plain :class:`torch.nn.BatchNorm2d`: the official ``SynchronizedBatchNorm2d`` has the
same state-dict entries (``weight``, ``bias``, ``running_mean``, ``running_var``,
``num_batches_tracked``) and, in ``eval()`` mode, the same arithmetic (running statistics).

Coordinate convention: every grid lives in ``[-1, 1]``; channel 0 is x (column), channel 1 is y (row),
as ``F.grid_sample`` expects.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def make_coordinate_grid(height: int, width: int, *, dtype: torch.dtype = torch.float32,
                         device: torch.device | str | None = None) -> torch.Tensor:
    """Regular grid over ``[-1, 1] x [-1, 1]``, shape ``(height, width, 2)`` as ``(x, y)``.

    ``grid[i, j] = (2 j / (width - 1) - 1, 2 i / (height - 1) - 1)``, the same values as the reference
    ``modules/util.py::make_coordinate_grid``.
    """
    x = torch.arange(width, dtype=dtype, device=device)
    y = torch.arange(height, dtype=dtype, device=device)
    x = 2 * (x / (width - 1)) - 1
    y = 2 * (y / (height - 1)) - 1
    return torch.stack(torch.broadcast_tensors(x[None, :], y[:, None]), dim=-1)


def kp2gaussian(value: torch.Tensor, spatial_size: Sequence[int], kp_variance: float) -> torch.Tensor:
    """Gaussian heatmap of each keypoint on a ``spatial_size`` grid (FOMM paper, Eq. 6 ``H_k``).

    Args:
        value: keypoint positions ``(..., K, 2)`` in ``[-1, 1]`` (x, y).
        spatial_size: ``(h, w)`` of the heatmap, pixels.
        kp_variance: variance of the isotropic gaussian, in squared grid units (0.01 in FOMM).

    Returns:
        ``(..., K, h, w)``: ``exp(-0.5 * |z - value|^2 / kp_variance)``. Matches the reference
        ``modules/util.py::kp2gaussian``.
    """
    h, w = int(spatial_size[0]), int(spatial_size[1])
    grid = make_coordinate_grid(h, w, dtype=value.dtype, device=value.device)
    diff = grid - value[..., None, None, :]  # (..., K, h, w, 2)
    return torch.exp(-0.5 * diff.pow(2).sum(-1) / kp_variance)


def inverse_2x2(m: torch.Tensor) -> torch.Tensor:
    """Closed-form inverse of a batch of 2x2 matrices ``(..., 2, 2)``.

    Cheaper than a batched LU on every device and free of host synchronisation; agrees with
    ``torch.inverse`` to float32 rounding for the well-conditioned FOMM jacobians. A singular matrix
    gives ``inf``/``nan`` entries (``torch.inverse`` would raise).
    """
    a, b = m[..., 0, 0], m[..., 0, 1]
    c, d = m[..., 1, 0], m[..., 1, 1]
    det = a * d - b * c
    adj = torch.stack([torch.stack([d, -b], -1), torch.stack([-c, a], -1)], -2)
    return adj / det[..., None, None]


class ResBlock2d(nn.Module):
    """Pre-activation residual block, resolution preserving: ``x + conv2(relu(bn2(conv1(relu(bn1(x))))))``.

    Shapes: ``(B, C, H, W) -> (B, C, H, W)``. Reference: ``modules/util.py::ResBlock2d``.
    """

    def __init__(self, in_features: int, kernel_size=3, padding=1):
        super().__init__()
        # registration order fixes the state-dict order: conv1, conv2, norm1, norm2
        self.conv1 = nn.Conv2d(in_features, in_features, kernel_size=kernel_size, padding=padding)
        self.conv2 = nn.Conv2d(in_features, in_features, kernel_size=kernel_size, padding=padding)
        self.norm1 = nn.BatchNorm2d(in_features, affine=True)
        self.norm2 = nn.BatchNorm2d(in_features, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.relu(self.norm1(x)))
        h = self.conv2(F.relu(self.norm2(h)))
        return h + x


class UpBlock2d(nn.Module):
    """Nearest-neighbour x2 upsampling, then conv -> BN -> ReLU. ``(B, Cin, H, W) -> (B, Cout, 2H, 2W)``.

    Reference: ``modules/util.py::UpBlock2d``.
    """

    def __init__(self, in_features: int, out_features: int, kernel_size=3, padding=1, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size=kernel_size, padding=padding, groups=groups)
        self.norm = nn.BatchNorm2d(out_features, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        return F.relu(self.norm(self.conv(x)))


class DownBlock2d(nn.Module):
    """conv -> BN -> ReLU -> 2x2 average pooling. ``(B, Cin, H, W) -> (B, Cout, H/2, W/2)``.

    Reference: ``modules/util.py::DownBlock2d`` (its ``AvgPool2d`` holds no state, so it is functional here).
    """

    def __init__(self, in_features: int, out_features: int, kernel_size=3, padding=1, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size=kernel_size, padding=padding, groups=groups)
        self.norm = nn.BatchNorm2d(out_features, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(F.relu(self.norm(self.conv(x))), kernel_size=2)


class SameBlock2d(nn.Module):
    """conv -> BN -> ReLU, resolution preserving. ``(B, Cin, H, W) -> (B, Cout, H, W)``.

    Reference: ``modules/util.py::SameBlock2d``.
    """

    def __init__(self, in_features: int, out_features: int, groups: int = 1, kernel_size=3, padding=1):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size=kernel_size, padding=padding, groups=groups)
        self.norm = nn.BatchNorm2d(out_features, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.norm(self.conv(x)))


def _width(block_expansion: int, max_features: int, level: int) -> int:
    """Channel width at hourglass/encoder ``level``: ``min(max_features, block_expansion * 2**level)``."""
    return min(max_features, block_expansion * (2 ** level))


class Encoder(nn.Module):
    """Hourglass encoder: ``num_blocks`` :class:`DownBlock2d`; returns the input and every block output.

    Reference: ``modules/util.py::Encoder``.
    """

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int = 3, max_features: int = 256):
        super().__init__()
        self.down_blocks = nn.ModuleList(
            DownBlock2d(in_features if i == 0 else _width(block_expansion, max_features, i),
                        _width(block_expansion, max_features, i + 1), kernel_size=3, padding=1)
            for i in range(num_blocks))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = [x]
        for block in self.down_blocks:
            outs.append(block(outs[-1]))
        return outs


class Decoder(nn.Module):
    """Hourglass decoder: :class:`UpBlock2d` from the deepest level up, concatenating each skip.

    The output has ``out_filters = block_expansion + in_features`` channels at the input resolution.
    Reference: ``modules/util.py::Decoder``.
    """

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int = 3, max_features: int = 256):
        super().__init__()
        blocks = []
        for i in reversed(range(num_blocks)):
            mult = 1 if i == num_blocks - 1 else 2  # deeper levels receive [up, skip] concatenated
            blocks.append(UpBlock2d(mult * _width(block_expansion, max_features, i + 1),
                                    _width(block_expansion, max_features, i), kernel_size=3, padding=1))
        self.up_blocks = nn.ModuleList(blocks)
        self.out_filters = block_expansion + in_features

    def forward(self, skips: list[torch.Tensor]) -> torch.Tensor:
        out = skips[-1]
        for block, skip in zip(self.up_blocks, reversed(skips[:-1])):
            out = torch.cat([block(out), skip], dim=1)
        return out


class Hourglass(nn.Module):
    """U-Net style hourglass. ``(B, in_features, H, W) -> (B, block_expansion + in_features, H, W)``.

    ``H`` and ``W`` must be divisible by ``2**num_blocks``. Reference: ``modules/util.py::Hourglass``.
    """

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int = 3, max_features: int = 256):
        super().__init__()
        self.encoder = Encoder(block_expansion, in_features, num_blocks, max_features)
        self.decoder = Decoder(block_expansion, in_features, num_blocks, max_features)
        self.out_filters = self.decoder.out_filters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class AntiAliasInterpolation2d(nn.Module):
    """Band-limited downsampling by ``scale`` (Gaussian blur, then keep every ``1/scale``-th pixel).

    The depthwise kernel has ``sigma = (1/scale - 1) / 2`` and size ``2 * round(4 sigma) + 1``
    (13x13 for scale 0.25), normalised to sum 1, and is a *persistent buffer* named ``weight`` of
    shape ``(channels, 1, k, k)``: it is part of the official checkpoints. The blur and the
    subsampling are fused into one strided convolution, equal to the reference's full convolution
    followed by ``[::s, ::s]``. Shapes: ``(B, C, H, W) -> (B, C, ceil(H*scale), ceil(W*scale))``.
    Reference: ``modules/util.py::AntiAliasInterpolation2d``.
    """

    def __init__(self, channels: int, scale: float):
        super().__init__()
        sigma = (1 / scale - 1) / 2
        size = 2 * round(sigma * 4) + 1
        self.ka = size // 2
        self.kb = self.ka - 1 if size % 2 == 0 else self.ka
        coords = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
        g = torch.exp(-coords ** 2 / (2 * sigma ** 2)) if sigma > 0 else (coords == 0).float()
        kernel = g[:, None] * g[None, :]
        kernel = kernel / kernel.sum()
        self.register_buffer("weight", kernel.expand(channels, 1, size, size).clone())
        self.groups = channels
        self.scale = scale
        self.stride = int(1 / scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale == 1.0:
            return x
        x = F.pad(x, (self.ka, self.kb, self.ka, self.kb))
        return F.conv2d(x, self.weight, stride=self.stride, groups=self.groups)


def check_scale(scale: float) -> bool:
    """True when ``1/scale`` is a positive integer (the only scales the anti-alias resampler supports)."""
    if not 0 < scale <= 1:
        return False
    inv = 1 / scale
    return math.isclose(inv, round(inv), rel_tol=0, abs_tol=1e-9)
