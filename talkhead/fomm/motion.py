"""Relative motion transfer: driving keypoints expressed relative to the source (FOMM ``normalize_kp``).

Re-implementation of ``first-order-model/animate.py::normalize_kp`` (Siarohin et al. 2019, Sec. 3.4,
"relative motion transfer"), batched over the ``T`` driving frames.
"""
from __future__ import annotations

import numpy as np
import torch

from ..keypoints import Keypoints
from .blocks import inverse_2x2


def movement_scale(kp_source: Keypoints, kp_driving_initial: Keypoints) -> float:
    """Adaptive movement scale ``sqrt(area(hull(v_s))) / sqrt(area(hull(v_0)))`` (float64).

    Uses batch item 0 of both ``value`` tensors ``(B, K, 2)``, like the reference.

    Raises:
        ValueError: the keypoints of either set are degenerate (all collinear: no 2-D convex hull).
    """
    # imported here: rendering never needs it (cost: benchmarks/README.md, "animate peak RSS")
    from scipy.spatial import ConvexHull, QhullError

    areas = []
    for name, kp in (("kp_source", kp_source), ("kp_driving_initial", kp_driving_initial)):
        points = kp.value[0].detach().to("cpu", torch.float64).numpy()
        try:
            areas.append(ConvexHull(points).volume)  # in 2-D, ``volume`` is the area
        except QhullError as exc:
            raise ValueError(f"{name} keypoints have no 2-D convex hull (degenerate): {exc}") from None
    return float(np.sqrt(areas[0]) / np.sqrt(areas[1]))


def relative_kp(kp_source: Keypoints, kp_driving: Keypoints, kp_driving_initial: Keypoints, *,
                adapt_movement_scale: bool = False, use_relative_movement: bool = True,
                use_relative_jacobian: bool = True) -> Keypoints:
    """Transfer the driving *motion* (not the driving *pose*) onto the source keypoints.

    With ``v``/``J`` the keypoint values/jacobians of the source (``s``), of driving frame ``t`` and of the
    initial driving frame ``0``:

    - ``value_t' = (v_t - v_0) * scale + v_s``  (``use_relative_movement``),
    - ``jacobian_t' = (J_t J_0^{-1}) J_s``  (``use_relative_jacobian``, needs ``use_relative_movement``),
    - ``scale = movement_scale(kp_source, kp_driving_initial)`` if ``adapt_movement_scale`` else 1.

    Args:
        kp_source: :class:`~talkhead.keypoints.Keypoints` ``(1, K, 2)`` + ``(1, K, 2, 2)``.
        kp_driving: driving keypoints batched over time, ``(T, K, 2)`` + ``(T, K, 2, 2)``.
        kp_driving_initial: the reference driving frame, ``(1, K, 2)`` + ``(1, K, 2, 2)``.

    Returns:
        New Keypoints ``(T, K, ...)``; the inputs are not modified. Matches the reference
        ``normalize_kp`` called once per frame.

    Raises:
        ValueError: ``adapt_movement_scale`` with degenerate (collinear) keypoints.
    """
    scale = movement_scale(kp_source, kp_driving_initial) if adapt_movement_scale else 1.0
    value, jacobian = kp_driving.value, kp_driving.jacobian
    if use_relative_movement:
        diff = kp_driving.value - kp_driving_initial.value
        if scale != 1.0:
            diff = diff * scale
        value = diff + kp_source.value
        if use_relative_jacobian and jacobian is not None:
            jacobian = kp_driving.jacobian @ inverse_2x2(kp_driving_initial.jacobian) @ kp_source.jacobian
    return Keypoints(value, jacobian)
