"""SMAC motion estimator: FOMM keypoint detector (15 keypoints + jacobians) and dense motion network.

Re-implementation of ``Motion_Estimator_keypoint_aware`` (``basicsr/archs/motion_estimator_arch.py`` of
``ShaelynZ/synergize-motion-appearance``), whose ``KPDetector`` and ``DenseMotionNetwork`` are FOMM's
code (``basicsr/archs/keypoint_detector_arch.py``, ``dense_motion_arch.py``). The arithmetic is the same
as our :mod:`talkhead.fomm` blocks, which are reused; the differences are:

- images are in ``[-1, 1]`` (the networks do not care; the trained weights do);
- the dense motion warp (Eq. 7) uses ``grid_sample``'s default ``align_corners=False``
  (fixture ``parity.conventions.json``: ``dense_motion_arch.py:114`` passes no argument);
- the dense motion network also returns the driving keypoint gaussians ``driving_kp_heatmap``
  (the generator's motion queries use them), the sparse motions and the heatmap representation.

Three small reductions are written in the reference's operation order rather than our FOMM one (same
arithmetic, different float32 rounding): the keypoint mean ``(heatmap * grid).sum((2, 3))``, the sparse
motion ``J_s inv(J_d)`` with ``torch.inverse``/``matmul``, and the deformation summed in a
``(b, K+1, 2, h, w)`` layout (whose channels-first memory order the generator's convolutions then see).
With them the keypoints and the dense motion equal the reference bit for bit on the fixture, which
leaves the whole tolerance budget to the generator.

State-dict keys: ``kp_detector.*`` and ``dense_motion_network.*``, as ``net_motion_estimator_latest.pth``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..fomm.blocks import kp2gaussian, make_coordinate_grid
from ..fomm.dense_motion import DenseMotionNetwork as FOMMDenseMotionNetwork
from ..fomm.keypoint_detector import KPDetector as FOMMKPDetector


class KPDetector(FOMMKPDetector):
    """FOMM keypoint detector (``kp_detector_params`` + ``common_params``), reference reduction order.

    :meth:`forward` takes images ``(B, C, H, W)`` in ``[-1, 1]`` and returns ``value`` (B, K, 2) in
    ``[-1, 1]`` (x, y) and ``jacobian`` (B, K, 2, 2), as :class:`talkhead.fomm.KPDetector`.
    Reference: ``basicsr/archs/keypoint_detector_arch.py::KPDetector`` (FOMM's).
    """

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.scale_factor != 1:
            x = self.down(x)
        features = self.predictor(x)
        logits = self.kp(features)
        b, k, h, w = logits.shape
        heatmap = F.softmax(logits.view(b, k, h * w) / self.temperature, dim=2).view(b, k, h, w)
        grid = make_coordinate_grid(h, w, dtype=heatmap.dtype, device=heatmap.device)
        out = {"value": (heatmap[..., None] * grid).sum(dim=(2, 3))}
        if self.jacobian is not None:
            maps = self.jacobian(features).reshape(b, self.num_jacobian_maps, 4, h, w)
            jac = (heatmap[:, :, None] * maps).view(b, k, 4, h * w).sum(dim=-1)
            out["jacobian"] = jac.view(b, k, 2, 2)
        return out


class DenseMotionNetwork(FOMMDenseMotionNetwork):
    """FOMM dense motion with SMAC's extra outputs and grid convention (``align_corners=False``).

    Args: as :class:`talkhead.fomm.DenseMotionNetwork` (``dense_motion_params`` + ``common_params``).
    """

    def __init__(self, block_expansion: int, num_blocks: int, max_features: int, num_kp: int, num_channels: int,
                 estimate_occlusion_map: bool = False, scale_factor: float = 1, kp_variance: float = 0.01):
        super().__init__(block_expansion, num_blocks, max_features, num_kp, num_channels,
                         estimate_occlusion_map=estimate_occlusion_map, scale_factor=scale_factor,
                         kp_variance=kp_variance, align_corners=False)
        # the reference registers ``down`` before ``occlusion``: keep its state-dict order
        if "occlusion" in self._modules and "down" in self._modules:
            self._modules["occlusion"] = self._modules.pop("occlusion")

    def sparse_motions(self, size: tuple[int, int], kp_driving: dict, kp_source: dict) -> torch.Tensor:
        """FOMM Eq. 4 ``s_k + J_s J_d^{-1} (z - d_k)`` (identity first), ``(b, K+1, h, w, 2)`` in ``[-1, 1]``.

        Same values as :meth:`talkhead.fomm.DenseMotionNetwork.sparse_motions`, computed with
        ``torch.inverse`` and ``matmul`` as the reference ``create_sparse_motions``.
        """
        h, w = size
        d_val = kp_driving["value"]
        b, k = d_val.shape[:2]
        identity = make_coordinate_grid(h, w, dtype=d_val.dtype, device=d_val.device).view(1, 1, h, w, 2)
        rel = identity - d_val.view(b, k, 1, 1, 2)
        jac = torch.matmul(kp_source["jacobian"], torch.inverse(kp_driving["jacobian"]))  # (b, K, 2, 2)
        jac = jac[:, :, None, None].expand(b, k, h, w, 2, 2)
        rel = torch.matmul(jac, rel.unsqueeze(-1)).squeeze(-1)
        driving_to_source = rel + kp_source["value"].view(-1, k, 1, 1, 2)
        return torch.cat([identity.expand(b, 1, h, w, 2), driving_to_source], dim=1)

    def motion(self, source_down: torch.Tensor, kp_driving: dict, kp_source: dict) -> dict[str, torch.Tensor]:
        """Dense motion on an already downsampled source ``(1 or b, C, h, w)`` in ``[-1, 1]``.

        Args:
            source_down: :meth:`downsample` of the source.
            kp_driving: ``{"value": (b, K, 2), "jacobian": (b, K, 2, 2)}``.
            kp_source: ``{"value": (1 or b, K, 2), "jacobian": (1 or b, K, 2, 2)}``.

        Returns:
            ``deformation`` (b, h, w, 2) (backward sampling grid in ``[-1, 1]``), ``occlusion_map``
            (b, 1, h, w) in ``(0, 1)`` (with the occlusion head), ``mask`` (b, K+1, h, w) (softmax),
            ``sparse_motion`` (b, K+1, h, w, 2), ``sparse_deformed`` (b, K+1, C, h, w), ``kp_heatmap``
            (b, K+1, h, w) (Eq. 6, background first), ``driving_kp_heatmap`` (b, K, h, w) and
            ``source`` (the downsampled source). Reference ``DenseMotionNetwork.forward``.
        """
        h, w = source_down.shape[2:]
        b = kp_driving["value"].shape[0]
        heatmap = self.heatmap_representation((h, w), kp_driving, kp_source)  # (b, K+1, 1, h, w)
        sparse = self.sparse_motions((h, w), kp_driving, kp_source)
        deformed = self.deformed_source(source_down, sparse)
        prediction = self.hourglass(torch.cat([heatmap, deformed], dim=2).view(b, -1, h, w))
        mask = F.softmax(self.mask(prediction), dim=1)
        out = {
            "sparse_motion": sparse,
            "sparse_deformed": deformed,
            "mask": mask,
            # summed as (b, K+1, 2, h, w): the (b, h, w, 2) result is channels-first in memory, as the reference's
            "deformation": (sparse.permute(0, 1, 4, 2, 3) * mask[:, :, None]).sum(dim=1).permute(0, 2, 3, 1),
            "kp_heatmap": heatmap.squeeze(2),
            "driving_kp_heatmap": kp2gaussian(kp_driving["value"], (h, w), self.kp_variance),
            "source": source_down,
        }
        if self.occlusion is not None:
            out["occlusion_map"] = torch.sigmoid(self.occlusion(prediction))
        return out


class MotionEstimator(nn.Module):
    """``network_motion_estimator``: keypoint detector + dense motion network.

    Args:
        common_params: ``{num_kp, num_channels}``.
        dense_motion_params: ``{block_expansion, max_features, num_blocks, scale_factor,
            estimate_occlusion_map}`` (optionally ``kp_variance``).
        kp_detector_params: ``{temperature, block_expansion, max_features, scale_factor, num_blocks,
            estimate_jacobian}`` (optionally ``single_jacobian_map``, ``pad``).
    """

    def __init__(self, common_params: dict, dense_motion_params: dict, kp_detector_params: dict):
        super().__init__()
        self.kp_detector = KPDetector(**common_params, **kp_detector_params)
        self.dense_motion_network = DenseMotionNetwork(**common_params, **dense_motion_params)

    def estimate_kp(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Keypoints of ``image`` (B, 3, S, S) in ``[-1, 1]``: ``value`` (B, K, 2) in ``[-1, 1]`` of the
        heatmap grid (x, y) and ``jacobian`` (B, K, 2, 2)."""
        return self.kp_detector(image)

    def estimate_motion_w_kp(self, kp_source: dict, kp_driving: dict, source_image: torch.Tensor) -> dict:
        """Dense motion from keypoints (see :meth:`DenseMotionNetwork.motion`); ``source_image``
        (1 or b, 3, S, S) in ``[-1, 1]``."""
        out = self.dense_motion_network(source_image, kp_driving, kp_source)
        out.update(kp_driving=kp_driving, kp_source=kp_source)
        return out
