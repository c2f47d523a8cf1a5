"""FOMM multi-scale patch discriminator (training only).

Public API for code that loads or fine-tunes the full published vox-adv checkpoint (its
``discriminator`` entry); not used by the CLI, inference, the checkpoint store's layout check (which
ignores that entry) or :mod:`talkhead.train` (which trains MS-Sync, not FOMM). ``tests/test_fomm.py``
checks its state-dict keys against the official layout.

Re-implementation of ``first-order-model/modules/discriminator.py`` (Pix2Pix-style discriminator with
optional keypoint heatmaps as extra input channels). State-dict keys: ``discs.<scale>.down_blocks.<i>.conv.*``,
``discs.<scale>.down_blocks.<i>.norm.{weight,bias}`` (InstanceNorm2d, affine, no running stats) and
``discs.<scale>.conv.*``, where ``<scale>`` is ``str(scale)`` with ``.`` -> ``-`` (``discs.1.`` for vox-adv).
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import kp2gaussian


class DiscriminatorBlock(nn.Module):
    """4x4 valid conv (optionally spectral-normalised) -> [InstanceNorm] -> LeakyReLU(0.2) -> [2x2 avg pool].

    Reference: ``modules/discriminator.py::DownBlock2d``.
    """

    def __init__(self, in_features: int, out_features: int, norm: bool = False, kernel_size: int = 4,
                 pool: bool = False, sn: bool = False):
        super().__init__()
        conv = nn.Conv2d(in_features, out_features, kernel_size=kernel_size)
        self.conv = nn.utils.spectral_norm(conv) if sn else conv
        self.norm = nn.InstanceNorm2d(out_features, affine=True) if norm else None
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        if self.norm is not None:
            out = self.norm(out)
        out = F.leaky_relu(out, 0.2)
        return F.avg_pool2d(out, (2, 2)) if self.pool else out


class Discriminator(nn.Module):
    """Single-scale patch discriminator. ``(B, C, H, W)`` (+ keypoint heatmaps) -> feature maps, score map.

    Reference: ``modules/discriminator.py::Discriminator``; extra keyword arguments (the YAML
    ``common_params`` ``estimate_jacobian``) are ignored, as there.
    """

    def __init__(self, num_channels: int = 3, block_expansion: int = 64, num_blocks: int = 4,
                 max_features: int = 512, sn: bool = False, use_kp: bool = False, num_kp: int = 10,
                 kp_variance: float = 0.01, **kwargs):
        super().__init__()
        blocks = []
        for i in range(num_blocks):
            in_features = num_channels + num_kp * use_kp if i == 0 else min(max_features, block_expansion * 2 ** i)
            blocks.append(DiscriminatorBlock(in_features, min(max_features, block_expansion * 2 ** (i + 1)),
                                             norm=i != 0, kernel_size=4, pool=i != num_blocks - 1, sn=sn))
        self.down_blocks = nn.ModuleList(blocks)
        last = min(max_features, block_expansion * 2 ** num_blocks)
        conv = nn.Conv2d(last, 1, kernel_size=1)
        self.conv = nn.utils.spectral_norm(conv) if sn else conv
        self.use_kp = use_kp
        self.kp_variance = kp_variance

    def forward(self, x: torch.Tensor, kp: dict | None = None) -> tuple[list[torch.Tensor], torch.Tensor]:
        """``x (B, C, H, W)``, ``kp {"value": (B, K, 2)}`` -> (per-block feature maps, prediction map)."""
        out = x
        if self.use_kp:
            out = torch.cat([out, kp2gaussian(kp["value"], x.shape[2:], self.kp_variance)], dim=1)
        feature_maps = []
        for block in self.down_blocks:
            out = block(out)
            feature_maps.append(out)
        return feature_maps, self.conv(out)


class MultiScaleDiscriminator(nn.Module):
    """One :class:`Discriminator` per image scale, in ``discs[str(scale).replace('.', '-')]``.

    Reference: ``modules/discriminator.py::MultiScaleDiscriminator``. Built as
    ``MultiScaleDiscriminator(**discriminator_params, **common_params)``.
    """

    def __init__(self, scales: Iterable = (), **kwargs):
        super().__init__()
        self.scales = tuple(scales)
        self.discs = nn.ModuleDict({str(s).replace(".", "-"): Discriminator(**kwargs) for s in self.scales})

    def forward(self, x: dict[str, torch.Tensor], kp: dict | None = None) -> dict:
        """``x["prediction_<scale>"]`` images -> ``feature_maps_<scale>`` and ``prediction_map_<scale>``."""
        out = {}
        for key, disc in self.discs.items():
            scale = key.replace("-", ".")
            feature_maps, prediction_map = disc(x["prediction_" + scale], kp)
            out["feature_maps_" + scale] = feature_maps
            out["prediction_map_" + scale] = prediction_map
        return out
