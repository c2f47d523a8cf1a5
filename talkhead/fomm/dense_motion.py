"""FOMM dense motion network: sparse keypoint motions -> dense backward deformation + occlusion map.

Re-implementation of ``first-order-model/modules/dense_motion.py::DenseMotionNetwork`` (Siarohin et al.
2019, Sec. 3.2, Eqs. 4, 6, 7). State-dict keys: ``hourglass.*``, ``mask.*``, ``occlusion.*``,
``down.weight``.

Batching: the driving keypoints set the batch size ``b``; the source image and ``kp_source`` may have
batch 1 and are then broadcast over the ``b`` driving frames (one source, many driving poses), which
gives the same numbers as repeating them.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import (CHANNELS_LAST, AntiAliasInterpolation2d, Hourglass, conv_forward, folded_weights, fused_conv_bn,
                     inverse_2x2, kp2gaussian, make_coordinate_grid, use_fused)


class DenseMotionNetwork(nn.Module):
    """Predicts the dense deformation ``T_{s<-d}`` and occlusion map from kp_source / kp_driving.

    Args:
        block_expansion, num_blocks, max_features: hourglass size (YAML ``dense_motion_params``).
        num_kp: number of keypoints ``K``.
        num_channels: image channels ``C`` (3).
        estimate_occlusion_map: add the ``occlusion`` head (sigmoid, Sec. 3.2).
        scale_factor: the network works on the source downsampled by this factor (0.25: 256 -> 64 px).
        kp_variance: variance of the keypoint gaussians (grid units squared).
        align_corners: the ``F.grid_sample`` convention used to warp the source. ``True`` reproduces
            torch <= 1.2 (the version vox-adv was trained with), ``False`` the modern default.
    """

    def __init__(self, block_expansion: int, num_blocks: int, max_features: int, num_kp: int, num_channels: int,
                 estimate_occlusion_map: bool = False, scale_factor: float = 1, kp_variance: float = 0.01,
                 align_corners: bool = True):
        super().__init__()
        self.hourglass = Hourglass(block_expansion=block_expansion, in_features=(num_kp + 1) * (num_channels + 1),
                                   max_features=max_features, num_blocks=num_blocks)
        self.mask = nn.Conv2d(self.hourglass.out_filters, num_kp + 1, kernel_size=(7, 7), padding=(3, 3))
        self.occlusion = (nn.Conv2d(self.hourglass.out_filters, 1, kernel_size=(7, 7), padding=(3, 3))
                          if estimate_occlusion_map else None)
        self.num_kp = num_kp
        self.scale_factor = scale_factor
        self.kp_variance = kp_variance
        self.align_corners = bool(align_corners)
        if scale_factor != 1:
            self.down = AntiAliasInterpolation2d(num_channels, scale_factor)

    def downsample(self, source_image: torch.Tensor) -> torch.Tensor:
        """Anti-aliased source at the motion resolution: ``(B, C, H, W) -> (B, C, h, w)``, ``h = H*scale``."""
        return self.down(source_image) if self.scale_factor != 1 else source_image

    def heatmap_representation(self, size: tuple[int, int], kp_driving: dict, kp_source: dict) -> torch.Tensor:
        """Eq. 6 ``H_k(z)``: driving minus source gaussians, background (zeros) first.

        Returns ``(b, K+1, 1, h, w)``.
        """
        diff = (kp2gaussian(kp_driving["value"], size, self.kp_variance)
                - kp2gaussian(kp_source["value"], size, self.kp_variance))  # (b, K, h, w)
        zeros = diff.new_zeros(diff.shape[0], 1, *diff.shape[2:])
        return torch.cat([zeros, diff], dim=1).unsqueeze(2)

    def sparse_motions(self, size: tuple[int, int], kp_driving: dict, kp_source: dict) -> torch.Tensor:
        """Eq. 4 ``T_{s<-d}(z) = s_k + J_s J_d^{-1} (z - d_k)`` per keypoint, identity for the background.

        Returns sampling grids ``(b, K+1, h, w, 2)`` in ``[-1, 1]`` (x, y); the jacobian term is used
        when ``kp_driving`` has a ``"jacobian"`` entry.
        """
        h, w = size
        d_val = kp_driving["value"]
        b = d_val.shape[0]
        identity = make_coordinate_grid(h, w, dtype=d_val.dtype, device=d_val.device)  # (h, w, 2)
        rel = identity - d_val[:, :, None, None, :]  # (b, K, h, w, 2)
        if "jacobian" in kp_driving:
            jac = kp_source["jacobian"] @ inverse_2x2(kp_driving["jacobian"])  # (b, K, 2, 2)
            jac = jac[:, :, None, None]  # (b, K, 1, 1, 2, 2)
            x, y = rel[..., 0], rel[..., 1]
            rel = torch.stack([jac[..., 0, 0] * x + jac[..., 0, 1] * y,
                               jac[..., 1, 0] * x + jac[..., 1, 1] * y], dim=-1)
        driving_to_source = rel + kp_source["value"][:, :, None, None, :]
        background = identity.expand(b, 1, h, w, 2)
        return torch.cat([background, driving_to_source], dim=1)

    def deformed_source(self, source_down: torch.Tensor, sparse_motions: torch.Tensor) -> torch.Tensor:
        """Eq. 7: the downsampled source warped by each sparse motion, ``(b, K+1, C, h, w)``.

        ``source_down`` is ``(1 or b, C, h, w)``; ``sparse_motions`` ``(b, K+1, h, w, 2)``.
        """
        b, n, h, w, _ = sparse_motions.shape
        c = source_down.shape[1]
        src = source_down[:, None].expand(b, n, c, h, w).reshape(b * n, c, h, w)
        warped = F.grid_sample(src, sparse_motions.reshape(b * n, h, w, 2), mode="bilinear",
                               padding_mode="zeros", align_corners=self.align_corners)
        return warped.view(b, n, c, h, w)

    def motion(self, source_down: torch.Tensor, kp_driving: dict, kp_source: dict, *,
               piece: Optional[int] = None) -> dict[str, torch.Tensor]:
        """The network on an already downsampled source (see :meth:`forward` for the outputs).

        ``piece`` (fused path only; ``None``: all ``b`` frames at once): the frames go through everything
        but the hourglass's deep levels ``piece`` at a time (:meth:`Hourglass.forward_pieces`), so the
        full-resolution temporaries are those of ``piece`` frames while the deep levels' weights are read
        once for all ``b``. The outputs are the same, frame for frame.
        """
        b = kp_driving["value"].shape[0]
        if piece is None or b <= piece or not use_fused(self):
            return self._outputs(*self._inputs(source_down, kp_driving, kp_source))
        spans = [(s, min(s + piece, b)) for s in range(0, b, piece)]

        def part(t: torch.Tensor, s: int, e: int) -> torch.Tensor:  # a batch-1 source (or kp_source) is shared
            return t[s:e] if t.shape[0] == b else t

        inputs = [self._inputs(part(source_down, s, e), {k: v[s:e] for k, v in kp_driving.items()},
                               {k: part(v, s, e) for k, v in kp_source.items()}) for s, e in spans]
        predictions = self.hourglass.forward_pieces([x for x, _, _ in inputs])
        outs = [self._outputs(x, sparse, deformed, prediction)
                for (x, sparse, deformed), prediction in zip(inputs, predictions)]
        return {k: torch.cat([o[k] for o in outs]) for k in outs[0]}

    def _inputs(self, source_down: torch.Tensor, kp_driving: dict,
                kp_source: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The hourglass input ``(b, (K+1)(C+1), h, w)`` (channels_last on the fused path), the sparse motions
        ``(b, K+1, h, w, 2)`` and the deformed sources ``(b, K+1, C, h, w)``."""
        h, w = source_down.shape[2:]
        b = kp_driving["value"].shape[0]
        heatmap = self.heatmap_representation((h, w), kp_driving, kp_source)
        sparse = self.sparse_motions((h, w), kp_driving, kp_source)
        deformed = self.deformed_source(source_down, sparse)
        hourglass_in = torch.cat([heatmap, deformed], dim=2).view(b, -1, h, w)
        if use_fused(self):
            hourglass_in = hourglass_in.contiguous(memory_format=CHANNELS_LAST)
        return hourglass_in, sparse, deformed

    def _outputs(self, hourglass_in: torch.Tensor, sparse: torch.Tensor, deformed: torch.Tensor,
                 prediction: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        """The heads, the softmax and the deformation from the hourglass's ``prediction`` (computed from
        ``hourglass_in`` when not given)."""
        if prediction is None:
            prediction = self.hourglass(hourglass_in)
        if use_fused(self):
            mask_logits, occlusion_logits = self._heads_fused(prediction)
        else:
            mask_logits = self.mask(prediction)
            occlusion_logits = self.occlusion(prediction) if self.occlusion is not None else None
        mask = F.softmax(mask_logits, dim=1)  # (b, K+1, h, w)
        out = {
            "sparse_deformed": deformed,
            "mask": mask,
            "deformation": (sparse * mask[..., None]).sum(dim=1),  # (b, h, w, 2)
        }
        if occlusion_logits is not None:
            out["occlusion_map"] = torch.sigmoid(occlusion_logits)
        return out

    def _heads_fused(self, prediction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Mask and occlusion logits ``(b, K+1, h, w)``, ``(b, 1, h, w)`` from one 7x7 convolution.

        Both heads read the same hourglass output with the same kernel size, so their weights are
        stacked (cached) into one ``K+2``-channel convolution; returns contiguous NCHW tensors.
        """
        mask, occlusion = self.mask, self.occlusion
        if occlusion is None:
            logits = fused_conv_bn(mask, None, prediction)
        else:
            def heads():
                (mw, mb), (ow, ob) = folded_weights(mask, None), folded_weights(occlusion, None)
                return torch.cat([mw, ow]).contiguous(memory_format=CHANNELS_LAST), torch.cat([mb, ob])

            logits = conv_forward(mask, prediction, heads, [mask.weight, mask.bias, occlusion.weight, occlusion.bias],
                                  cache="_fused_conv_heads")
        logits = logits.contiguous()
        k = self.mask.out_channels
        return logits[:, :k], (logits[:, k:] if self.occlusion is not None else None)

    def forward(self, source_image: torch.Tensor, kp_driving: dict, kp_source: dict) -> dict[str, torch.Tensor]:
        """Dense motion for ``b`` driving keypoint sets.

        Args:
            source_image: ``(1 or b, C, H, W)`` in ``[0, 1]``.
            kp_driving: ``{"value": (b, K, 2), "jacobian": (b, K, 2, 2)}``.
            kp_source: ``{"value": (1 or b, K, 2), "jacobian": (1 or b, K, 2, 2)}``.

        Returns:
            ``sparse_deformed (b, K+1, C, h, w)``, ``mask (b, K+1, h, w)`` (softmax over the K+1 motions),
            ``deformation (b, h, w, 2)`` (backward sampling grid, x/y in ``[-1, 1]``) and, with the
            occlusion head, ``occlusion_map (b, 1, h, w)`` in ``(0, 1)``; ``h = H * scale_factor``.
        """
        return self.motion(self.downsample(source_image), kp_driving, kp_source)
