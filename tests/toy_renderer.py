"""Renderers for tests: small, fast, and with known behaviour, on the renderer contract of
:class:`talkhead.renderers.Renderer` (through :class:`talkhead.rendering.KeypointRenderer`).

- :class:`SourceImageRenderer`: the base of the tests' stand-ins; its encoding is the source image
  itself (:class:`SourceImage`) and a subclass says how a frame follows from source and keypoints.
- :class:`PoseCodeRenderer`: frames that carry the keypoint values that drove them, readable back
  from a decoded H.264 video (:meth:`PoseCodeRenderer.decode`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from talkhead.keypoints import Keypoints
from talkhead.rendering import KeypointRenderer, SourceEncoding


@dataclass(frozen=True, eq=False)
class SourceImage(SourceEncoding):
    """A stand-in renderer's encoding: ``kp_source (1, K, ...)`` and the source image ``(1, 3, S, S)``."""

    source: torch.Tensor


class SourceImageRenderer(KeypointRenderer):
    """Base of the tests' stand-in renderers: ``encode_source`` keeps the source image, ``render``
    returns :meth:`frames` of it. Subclasses define :meth:`detect` and :meth:`frames`.

    ``calls`` lists the batch size of every :meth:`render` call; ``encodings`` counts
    :meth:`encode_source` calls.
    """

    frame_size = 32
    num_kp = 10

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.calls: list[int] = []
        self.encodings = 0

    def encode_source(self, source: Any, kp_source: Optional[Keypoints] = None) -> SourceImage:
        x, kp = self.source_keypoints(source, kp_source)
        self.encodings += 1
        return SourceImage(kp_source=kp, source=x.clone())

    def render(self, encoding: SourceImage, kp_driving: Keypoints) -> torch.Tensor:
        enc = self.check_encoding(encoding, SourceImage)
        kp = self.check_keypoints(kp_driving, "kp_driving")
        self.calls.append(len(kp))
        return self.frames(enc.source, enc.kp_source, kp)

    def frames(self, source: torch.Tensor, kp_source: Keypoints, kp_driving: Keypoints) -> torch.Tensor:
        """``(b, 3, S, S)`` in [0, 1] for ``kp_driving (b, K, ...)``; default: the source repeated."""
        return source.expand(len(kp_driving), -1, -1, -1).clone()


class PoseCodeRenderer(SourceImageRenderer):
    """A renderer whose frames encode the keypoint values that drove them.

    The frame is an 8 x 8 grid of square blocks (side ``S / 8``). The first ``2 K`` blocks in raster
    order are the code: block ``2 k + c`` is flat grey at level ``0.5 + 0.4 v`` for the value
    ``v = kp_driving.value[:, k, c]`` clamped to ``[-1, 1]`` (levels 0.1-0.9, inside H.264's video
    range, grey so that yuv420p's halved chroma does not matter); the other blocks are the source's.
    :meth:`detect` reads the code back from the mean of each code block's central half (away from the
    coding artefacts at block edges), so ``detect(render(e, kp)) == kp`` to float rounding. After
    H.264 (yuv420p, crf 18-23, 64 px frames, random values every frame) a value comes back within
    0.07 (mean error 0.01; measured worst 0.066 at crf 23 on a noise background, 0.03-0.05 at crf 18;
    at 128 px within 0.03): tell poses apart by all ``2 K`` values together (:meth:`nearest`), or keep
    single values at least 0.15 apart.

    Promises (what the contract suite checks): frames depend on ``kp_driving`` row by row only (batch
    size invariant, exactly); ``render(encode_source(x), kp_source)`` reproduces ``x`` for any ``x``
    whose code blocks are flat (e.g. :meth:`pose_image`); jacobians are identities and unused.

    Args:
        frame_size: ``S``, a multiple of 8, at least 32.
        num_kp: ``K``, at most 16 (the code takes at most half the frame).
        device: where frames are made.

    Raises:
        ValueError: another ``frame_size`` or ``num_kp``.
    """

    GRID = 8

    def __init__(self, frame_size: int = 64, num_kp: int = 10, device: torch.device | str = "cpu"):
        if frame_size % self.GRID or frame_size < 32:
            raise ValueError(f"frame_size must be a multiple of {self.GRID}, at least 32, not {frame_size}")
        if not 1 <= num_kp <= self.GRID * self.GRID // 4:
            raise ValueError(f"num_kp must be 1-{self.GRID * self.GRID // 4}, not {num_kp}")
        super().__init__(device)
        self.frame_size = frame_size
        self.num_kp = num_kp

    @property
    def block(self) -> int:
        """Side of a code block, pixels."""
        return self.frame_size // self.GRID

    def _boxes(self) -> list[tuple[int, int]]:
        """``(row, column)`` pixel origin of each code block, in value order ``(k, c)``."""
        return [tuple(b * self.block for b in divmod(i, self.GRID)) for i in range(2 * self.num_kp)]

    @staticmethod
    def level(value: torch.Tensor) -> torch.Tensor:
        """Keypoint value -> grey level: ``0.5 + 0.4 clamp(v, -1, 1)``."""
        return 0.5 + 0.4 * value.clamp(-1.0, 1.0)

    def decode(self, frames: Any) -> torch.Tensor:
        """The keypoint values ``(B, K, 2)`` in ``[-1, 1]`` (float32, CPU) that drew ``frames``:
        ``(B, 3, S, S)`` float in [0, 1] or ``(B, S, S, 3)`` uint8 (as decoded from a video)."""
        x = torch.as_tensor(np.asarray(frames) if not isinstance(frames, torch.Tensor) else frames)
        if x.dtype == torch.uint8:
            x = x.permute(0, 3, 1, 2).float() / 255.0
        x = x.float().cpu()
        q = self.block // 4  # central half of each block
        means = [x[:, :, r + q:r + self.block - q, c + q:c + self.block - q].mean(dim=(1, 2, 3))
                 for r, c in self._boxes()]
        return ((torch.stack(means, dim=1) - 0.5) / 0.4).clamp(-1.0, 1.0).reshape(len(x), self.num_kp, 2)

    def nearest(self, frames: Any, candidates: Keypoints) -> torch.Tensor:
        """Index ``(B,)`` of the candidate keypoint set ``(N, K, ...)`` that drew each frame (smallest
        mean absolute difference of the decoded values; ``frames`` as in :meth:`decode`)."""
        values = self.decode(frames)
        want = candidates.value.detach().float().cpu().clamp(-1.0, 1.0)
        return (values[:, None] - want[None]).abs().mean(dim=(2, 3)).argmin(dim=1)

    def detect(self, images: Any) -> Keypoints:
        x = self.check_images(images)
        value = self.decode(x).to(self.device)
        return Keypoints(value, torch.eye(2, device=self.device).expand(len(x), self.num_kp, 2, 2).clone())

    def frames(self, source: torch.Tensor, kp_source: Keypoints, kp_driving: Keypoints) -> torch.Tensor:
        out = source.expand(len(kp_driving), -1, -1, -1).clone()
        levels = self.level(kp_driving.value.reshape(len(kp_driving), -1))  # (b, 2K)
        for i, (r, c) in enumerate(self._boxes()):
            out[:, :, r:r + self.block, c:c + self.block] = levels[:, i, None, None, None]
        return out

    def pose_image(self, kp: Keypoints, background: Optional[torch.Tensor] = None) -> torch.Tensor:
        """An image ``(1, 3, S, S)`` whose :meth:`detect` gives ``kp (1, K, ...)``'s values: the code of
        ``kp`` drawn over ``background`` ``(1, 3, S, S)`` (default mid grey)."""
        base = background if background is not None else torch.full((1, 3, self.frame_size, self.frame_size), 0.5)
        return self.frames(base.to(self.device, torch.float32), kp, kp.to(self.device))[:1]


__all__ = ["PoseCodeRenderer", "SourceImage", "SourceImageRenderer"]
