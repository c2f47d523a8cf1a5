"""FOMM occlusion-aware generator: source image + kp_source + kp_driving -> rendered frame.

Re-implementation of ``first-order-model/modules/generator.py::OcclusionAwareGenerator`` (Siarohin et
al. 2019, Sec. 3.2-3.3; a Johnson-style encoder / residual bottleneck / decoder). State-dict keys:
``dense_motion_network.*``, ``first.*``, ``down_blocks.*``, ``up_blocks.*``, ``bottleneck.r{i}.*``,
``final.*`` - identical to the official ``vox-adv-cpk.pth.tar`` ``generator`` entry.

The forward pass is split into :meth:`encode` (source only), :meth:`warp` (per driving frame) and
:meth:`decode`, so a caller can encode a source once and render many driving frames from it.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import CHANNELS_LAST, DownBlock2d, ResBlock2d, SameBlock2d, UpBlock2d, fused_narrow_conv, use_fused
from .dense_motion import DenseMotionNetwork


class OcclusionAwareGenerator(nn.Module):
    """Image generator warping source features with the dense motion and masking occluded parts.

    Args mirror the YAML ``generator_params`` + ``common_params`` (``OcclusionAwareGenerator(
    **generator_params, **common_params)`` as in the reference ``run.py``); ``dense_motion_params`` is
    the nested dict of :class:`~talkhead.fomm.dense_motion.DenseMotionNetwork` arguments.
    ``estimate_jacobian`` is accepted (and unused) for that reason.

    ``align_corners`` selects the ``F.grid_sample`` convention of every warp (here and in the dense
    motion network): ``True`` = torch <= 1.2, what vox-adv was trained with; ``False`` = torch >= 1.3
    default. The bilinear resize of the deformation in :meth:`deform_input` always uses
    ``align_corners=False`` (the same in both eras). Assigning ``gen.align_corners`` updates both.
    """

    def __init__(self, num_channels: int, num_kp: int, block_expansion: int, max_features: int,
                 num_down_blocks: int, num_bottleneck_blocks: int, estimate_occlusion_map: bool = False,
                 dense_motion_params: Optional[dict] = None, estimate_jacobian: bool = False,
                 align_corners: bool = True):
        super().__init__()
        if dense_motion_params is not None:
            self.dense_motion_network = DenseMotionNetwork(num_kp=num_kp, num_channels=num_channels,
                                                           estimate_occlusion_map=estimate_occlusion_map,
                                                           align_corners=align_corners, **dense_motion_params)
        else:
            self.dense_motion_network = None

        def width(level: int) -> int:
            return min(max_features, block_expansion * (2 ** level))

        self.first = SameBlock2d(num_channels, block_expansion, kernel_size=(7, 7), padding=(3, 3))
        self.down_blocks = nn.ModuleList(
            DownBlock2d(width(i), width(i + 1), kernel_size=(3, 3), padding=(1, 1)) for i in range(num_down_blocks))
        self.up_blocks = nn.ModuleList(
            UpBlock2d(width(num_down_blocks - i), width(num_down_blocks - i - 1), kernel_size=(3, 3), padding=(1, 1))
            for i in range(num_down_blocks))
        self.bottleneck = nn.Sequential()
        for i in range(num_bottleneck_blocks):
            self.bottleneck.add_module(f"r{i}", ResBlock2d(width(num_down_blocks), kernel_size=(3, 3), padding=(1, 1)))
        self.final = nn.Conv2d(block_expansion, num_channels, kernel_size=(7, 7), padding=(3, 3))
        self.estimate_occlusion_map = estimate_occlusion_map
        self.num_channels = num_channels
        self._align_corners = bool(align_corners)

    @property
    def align_corners(self) -> bool:
        """``F.grid_sample`` convention of every warp in the generator and its dense motion network."""
        return self._align_corners

    @align_corners.setter
    def align_corners(self, value: bool) -> None:
        self._align_corners = bool(value)
        if self.dense_motion_network is not None:
            self.dense_motion_network.align_corners = bool(value)

    def encode(self, source_image: torch.Tensor) -> torch.Tensor:
        """Source features: ``(B, C, H, W) -> (B, min(max_features, be * 2**n), H / 2**n, W / 2**n)``."""
        out = self.first(source_image)
        for block in self.down_blocks:
            out = block(out)
        return out

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        """Bottleneck, up blocks, final 7x7 conv and sigmoid: features -> image ``(B, C, H, W)`` in ``(0, 1)``.

        In eval mode without autograd the fused path runs channels_last (see
        :func:`~talkhead.fomm.blocks.fused_inference`); the image is returned contiguous either way.
        """
        fused = use_fused(self)
        out = features.contiguous(memory_format=CHANNELS_LAST) if fused else features
        out = self.bottleneck(out)
        for block in self.up_blocks:
            out = block(out)
        if fused:
            return torch.sigmoid_(fused_narrow_conv(self.final, out)).contiguous()
        return torch.sigmoid(self.final(out))

    def deform_input(self, inp: torch.Tensor, deformation: torch.Tensor) -> torch.Tensor:
        """Backward-warp ``inp (1 or b, C, H, W)`` with ``deformation (b, h, w, 2)`` -> ``(b, C, H, W)``.

        A deformation of another size is first resized bilinearly (``align_corners=False``).
        Reference: ``OcclusionAwareGenerator.deform_input``.
        """
        b, h_d, w_d, _ = deformation.shape
        h, w = inp.shape[2:]
        if (h_d, w_d) != (h, w):
            deformation = F.interpolate(deformation.permute(0, 3, 1, 2), size=(h, w), mode="bilinear",
                                        align_corners=False).permute(0, 2, 3, 1)
        if inp.shape[0] != b:
            inp = inp.expand(b, *inp.shape[1:])
        return F.grid_sample(inp, deformation, mode="bilinear", padding_mode="zeros",
                             align_corners=self._align_corners)

    def warp(self, features: torch.Tensor, motion: dict[str, torch.Tensor]) -> torch.Tensor:
        """Deform source ``features (1 or b, F, h, w)`` by ``motion["deformation"]`` and multiply by the
        (bilinearly resized, if needed) ``motion["occlusion_map"]``. Returns ``(b, F, h, w)``."""
        out = self.deform_input(features, motion["deformation"])
        occlusion = motion.get("occlusion_map")
        if occlusion is not None:
            if occlusion.shape[2:] != out.shape[2:]:
                occlusion = F.interpolate(occlusion, size=out.shape[2:], mode="bilinear", align_corners=False)
            out = out * occlusion
        return out

    def forward(self, source_image: torch.Tensor, kp_driving: dict, kp_source: dict) -> dict[str, torch.Tensor]:
        """Render the driving poses from the source (reference ``OcclusionAwareGenerator.forward``).

        Args:
            source_image: ``(1 or b, C, H, W)`` in ``[0, 1]``.
            kp_driving: ``{"value": (b, K, 2), "jacobian": (b, K, 2, 2)}`` in ``[-1, 1]``.
            kp_source: ``{"value": (1 or b, K, 2), "jacobian": (1 or b, K, 2, 2)}``.

        Returns:
            The reference output dict: ``mask (b, K+1, h, w)``, ``sparse_deformed (b, K+1, C, h, w)``,
            ``occlusion_map (b, 1, h, w)``, ``deformed (b, C, H, W)`` (the source warped by the dense
            motion) and ``prediction (b, C, H, W)`` in ``(0, 1)``; without a dense motion network only
            ``prediction`` (a plain auto-encoding of the source).
        """
        features = self.encode(source_image)
        out: dict[str, torch.Tensor] = {}
        if self.dense_motion_network is not None:
            motion = self.dense_motion_network(source_image, kp_driving, kp_source)
            out["mask"] = motion["mask"]
            out["sparse_deformed"] = motion["sparse_deformed"]
            if "occlusion_map" in motion:
                out["occlusion_map"] = motion["occlusion_map"]
            features = self.warp(features, motion)
            out["deformed"] = self.deform_input(source_image, motion["deformation"])
        out["prediction"] = self.decode(features)
        return out
