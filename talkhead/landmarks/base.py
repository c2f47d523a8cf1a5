"""What every landmark backend shares: the :class:`Face` it returns, the :class:`Landmarker`
interface, and the bounded-size working copies detection and landmarks run on.

Coordinates are image pixels, ``x`` to the right and ``y`` down, with integer values at pixel
centres (the OpenCV / scikit-image convention): pixel ``(row r, col c)`` is the point ``(c, r)`` and
covers ``[c - 0.5, c + 0.5) x [r - 0.5, r + 0.5)``. Boxes are ``(x0, y0, x1, y1)`` with ``x1, y1``
exclusive, so the box of pixels ``image[y0:y1, x0:x1]`` spans ``[x0 - 0.5, x1 - 0.5)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

__all__ = ["Face", "Landmarker", "LANDMARK_MAX_SIDE", "detection_copy", "to_full"]

LANDMARK_MAX_SIDE = 1280
"""Landmarks are predicted on a copy whose longest side is at most this (pixels) and mapped back to
full-resolution pixels, so a 4000-8000 px photo costs about what a 1280 px one does (FAN would
otherwise turn the whole photo into a tensor). A face filling a tenth of such a copy still spans
~128 px, more than the 68-point models' own input resolution (FAN: 256 px crops of the face box)."""


@dataclass(frozen=True, eq=False)
class Face:
    """One detected face.

    Attributes:
        box: detector box ``(x0, y0, x1, y1)`` in image pixels (float).
        score: detector confidence; its scale depends on ``backend`` (see
            :func:`talkhead.landmarks.confident_score`).
        landmarks: ``(68, 2)`` float32 ``(x, y)`` image pixels in iBUG 300-W order (0-16 jaw,
            17-26 brows, 27-35 nose, 36-47 eyes, 48-67 mouth).
        backend: ``"fan"`` or ``"dlib"`` (which score scale applies); ``""`` when unknown.
    """

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray
    backend: str = ""

    @property
    def area(self) -> float:
        """Box area, square pixels (what "largest face" means)."""
        x0, y0, x1, y1 = self.box
        return max(0.0, x1 - x0) * max(0.0, y1 - y0)


class Landmarker(Protocol):
    """A landmark backend: ``landmarker(image (H, W, 3) uint8 RGB) -> list[Face]`` (any order)."""

    name: str

    def __call__(self, image: np.ndarray) -> list[Face]: ...


def to_full(points: np.ndarray, s: float) -> np.ndarray:
    """Map pixel-centre coordinates ``(..., 2)`` of a copy downscaled by ``s`` back to full resolution:
    ``full = (small + 0.5) s - 0.5`` (cv2.resize's pixel-centre alignment). Float32."""
    if s == 1.0:
        return np.asarray(points, dtype=np.float32)
    return ((np.asarray(points, dtype=np.float64) + 0.5) * s - 0.5).astype(np.float32)


def detection_copy(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """Downscale ``image`` so its longest side is at most ``max_side``; return it and the factor
    ``s`` with ``full-resolution pixel = s * small pixel`` (1.0 when not resized)."""
    import cv2

    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image, 1.0
    s = max(h, w) / float(max_side)
    small = cv2.resize(image, (max(1, round(w / s)), max(1, round(h / s))), interpolation=cv2.INTER_AREA)
    return small, s
