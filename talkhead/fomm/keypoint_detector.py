"""FOMM keypoint detector: image -> 10 keypoints in ``[-1, 1]`` and their local 2x2 jacobians.

Re-implementation of ``first-order-model/modules/keypoint_detector.py::KPDetector`` (Siarohin et al.
2019, Sec. 3.1). State-dict keys: ``predictor.encoder.*``, ``predictor.decoder.*``, ``kp.*``,
``jacobian.*``, ``down.weight`` (in that order), identical to the official checkpoint.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .blocks import AntiAliasInterpolation2d, Hourglass, make_coordinate_grid


class KPDetector(nn.Module):
    """Unsupervised keypoint detector (hourglass + heatmap softmax + jacobian head).

    Pipeline for an image ``(B, C, H, W)`` in ``[0, 1]``:

    1. anti-alias downsampling by ``scale_factor`` (0.25 for vox-adv: 256 -> 64 pixels);
    2. :class:`~talkhead.fomm.blocks.Hourglass` -> feature map ``(B, block_expansion + C, h, w)``;
    3. ``kp``: a 7x7 convolution with padding ``pad`` (0) -> heatmap logits ``(B, K, h', w')``,
       ``h' = h - 6`` (58 for vox-adv), then ``softmax(logits / temperature)`` over the ``h' w'`` pixels;
    4. keypoint ``value`` = softmax-weighted mean of ``make_coordinate_grid(h', w')`` ``(B, K, 2)``, so
       ``[-1, 1]`` spans the valid-convolution region, not the whole image;
    5. ``jacobian`` (if ``estimate_jacobian``): a 7x7 convolution giving 4 maps per keypoint (or one
       shared set with ``single_jacobian_map``), averaged with the same softmax weights -> ``(B, K, 2, 2)``
       (row-major ``[[j00, j01], [j10, j11]]``).

    Args mirror the YAML ``kp_detector_params`` + ``common_params``, so
    ``KPDetector(**kp_detector_params, **common_params)`` works as in the reference ``run.py``.
    """

    def __init__(self, block_expansion: int, num_kp: int, num_channels: int, max_features: int,
                 num_blocks: int, temperature: float, estimate_jacobian: bool = False, scale_factor: float = 1,
                 single_jacobian_map: bool = False, pad: int = 0):
        super().__init__()
        self.predictor = Hourglass(block_expansion, in_features=num_channels, max_features=max_features,
                                   num_blocks=num_blocks)
        self.kp = nn.Conv2d(self.predictor.out_filters, num_kp, kernel_size=(7, 7), padding=pad)
        if estimate_jacobian:
            self.num_jacobian_maps = 1 if single_jacobian_map else num_kp
            self.jacobian = nn.Conv2d(self.predictor.out_filters, 4 * self.num_jacobian_maps, kernel_size=(7, 7),
                                      padding=pad)
            # FOMM initialisation: zero weights and an identity bias -> identity jacobians before training
            with torch.no_grad():
                self.jacobian.weight.zero_()
                self.jacobian.bias.copy_(torch.tensor([1.0, 0.0, 0.0, 1.0] * self.num_jacobian_maps))
        else:
            self.num_jacobian_maps = 0
            self.jacobian = None
        self.num_kp = num_kp
        self.temperature = temperature
        self.scale_factor = scale_factor
        if scale_factor != 1:
            self.down = AntiAliasInterpolation2d(num_channels, scale_factor)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Detect keypoints.

        Args:
            x: images ``(B, C, H, W)``, float in ``[0, 1]``.

        Returns:
            ``{"value": (B, K, 2)}`` in ``[-1, 1]`` (x, y) and, with ``estimate_jacobian``,
            ``"jacobian": (B, K, 2, 2)``.
        """
        if self.scale_factor != 1:
            x = self.down(x)
        features = self.predictor(x)
        logits = self.kp(features)  # (B, K, h, w)
        b, k, h, w = logits.shape
        weights = F.softmax(logits.flatten(2) / self.temperature, dim=2)  # (B, K, h*w)
        grid = make_coordinate_grid(h, w, dtype=weights.dtype, device=weights.device).view(h * w, 2)
        out = {"value": weights @ grid}  # (B, K, 2)
        if self.jacobian is not None:
            maps = self.jacobian(features).view(b, self.num_jacobian_maps, 4, h * w)
            jac = (weights[:, :, None, :] * maps).sum(-1)  # (B, K, 4)
            out["jacobian"] = jac.view(b, k, 2, 2)
        return out
