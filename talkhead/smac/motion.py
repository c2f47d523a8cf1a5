"""Relative motion transfer for SMAC: the reference demo's ``normalize_kp``, on :class:`Keypoints`.

``basicsr/demo.py::normalize_kp`` of ``ShaelynZ/synergize-motion-appearance`` is FOMM's
(:func:`talkhead.fomm.relative_kp`, same formulas and the same movement scale, which is reused). This
helper differs only in how the 2x2 inverse is evaluated: ``torch.inverse`` and ``torch.matmul`` as in
the reference, instead of FOMM's closed-form inverse. The two agree to float32 rounding, but SMAC is
sensitive to that rounding where the motion is the identity (the reconstruction of the initial frame):
its appearance-token mask tests the warped grid against exactly ``+-1``, so one ulp decides a token.
"""
from __future__ import annotations

import torch

from ..fomm.motion import movement_scale
from ..keypoints import Keypoints


def relative_kp(kp_source: Keypoints, kp_driving: Keypoints, kp_driving_initial: Keypoints, *,
                adapt_movement_scale: bool = False, use_relative_movement: bool = True,
                use_relative_jacobian: bool = True) -> Keypoints:
    """Transfer the driving motion (not the driving pose) onto the source keypoints.

    With ``v``/``J`` the values/jacobians of the source (``s``), of driving frame ``t`` and of the initial
    driving frame ``0``: ``v_t' = (v_t - v_0) * scale + v_s`` and ``J_t' = (J_t J_0^{-1}) J_s``;
    ``scale = sqrt(area(hull(v_s)) / area(hull(v_0)))`` if ``adapt_movement_scale`` else 1
    (FOMM Sec. 3.4; reference ``normalize_kp``, here batched over the ``T`` frames).

    Args:
        kp_source: ``(1, K, ...)``.
        kp_driving: ``(T, K, ...)``.
        kp_driving_initial: ``(1, K, ...)``.
        adapt_movement_scale, use_relative_movement, use_relative_jacobian: the reference's switches
            (its demo sets all three from ``--relative`` / ``--adapt_scale``).

    Returns:
        :class:`Keypoints` ``(T, K, ...)`` (``kp_driving`` itself when ``use_relative_movement`` is off;
        its jacobians when ``use_relative_jacobian`` is off); the inputs are not modified.

    Raises:
        ValueError: keypoints without jacobians where they are needed, or ``adapt_movement_scale``
            with degenerate (collinear) keypoints.
    """
    if not use_relative_movement:
        return kp_driving
    scale = movement_scale(kp_source, kp_driving_initial) if adapt_movement_scale else 1.0
    value = (kp_driving.value - kp_driving_initial.value) * scale + kp_source.value
    jacobian = kp_driving.jacobian
    if use_relative_jacobian:
        if kp_driving.jacobian is None or kp_driving_initial.jacobian is None or kp_source.jacobian is None:
            raise ValueError("relative jacobians need jacobians on all three keypoint sets")
        jacobian = torch.matmul(torch.matmul(kp_driving.jacobian, torch.inverse(kp_driving_initial.jacobian)),
                                kp_source.jacobian)
    return Keypoints(value, jacobian)
