"""The one keypoint type: FOMM keypoints with their jacobians, as every stage passes them.

A keypoint set travels as :class:`Keypoints` from the renderer's detector (``kp_source``) through the
motion generator (``kp_driving``) to the renderer, on one device, without numpy round trips. The
training data stores the same numbers packed as ``(T, K, 6)`` = ``[x, y, j00, j01, j10, j11]``
(MS-Sync's ``KEYPOINTS_DIM`` layout, jacobian flattened row-major); :meth:`Keypoints.pack` and
:meth:`Keypoints.unpack` are the only conversion between the two.

Coordinates: values in ``[-1, 1]`` of the keypoint heatmap grid, x = column, y = row (FOMM
``modules/keypoint_detector.py``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple, Optional

import numpy as np
import torch

from .constants import KP_DIM, NUM_KP
from .errors import InputError


@dataclass(frozen=True)
class KeypointSpace:
    """Which keypoints a sequence holds: those of one renderer's detector, their count, and whether each
    carries a 2x2 jacobian. Keypoints of two spaces are not interchangeable (FOMM's 10 learnt keypoints
    mean nothing to SMAC's dense motion network, which expects its own 15), so every producer records its
    space (training data manifests, MS-Sync ``args``, syncer configs) and every consumer checks it.

    Attributes:
        renderer: the registered renderer whose detector defines the keypoints (``"fomm"``, ``"smac"``).
        num_kp: keypoints per frame ``K``.
        jacobians: whether each keypoint has a jacobian (packed sequences ``(T, K, 6)``; else ``(T, K, 2)``).

    Raises:
        ValueError: an empty renderer name or ``num_kp`` below 1.
    """

    renderer: str
    num_kp: int
    jacobians: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.renderer, str) or not self.renderer:
            raise ValueError(f"a keypoint space needs a renderer name, got {self.renderer!r}")
        if isinstance(self.num_kp, bool) or not isinstance(self.num_kp, int) or self.num_kp < 1:
            raise ValueError(f"a keypoint space needs num_kp >= 1, got {self.num_kp!r}")

    @property
    def kp_dim(self) -> int:
        """Numbers per keypoint in packed sequences: 6 (``[x, y, j00, j01, j10, j11]``) or 2 (``[x, y]``)."""
        return KP_DIM if self.jacobians else 2

    @classmethod
    def from_kp_dim(cls, renderer: str, num_kp: int, kp_dim: int) -> "KeypointSpace":
        """The space of packed ``(T, num_kp, kp_dim)`` sequences (``kp_dim`` 6 or 2).

        Raises:
            ValueError: ``kp_dim`` other than 6 or 2, or a bad name or count.
        """
        if kp_dim not in (KP_DIM, 2):
            raise ValueError(f"kp_dim must be {KP_DIM} (with jacobians) or 2 (without), got {kp_dim!r}")
        return cls(renderer, num_kp, kp_dim == KP_DIM)

    def describe(self) -> str:
        """E.g. ``"the smac keypoint space (15 keypoints with jacobians)"``: for one-line errors."""
        return (f"the {self.renderer} keypoint space ({self.num_kp} keypoints "
                f"{'with' if self.jacobians else 'without'} jacobians)")


FOMM_SPACE = KeypointSpace("fomm", NUM_KP, True)
"""FOMM vox-adv-256's keypoint space: 10 keypoints with jacobians, what the released MS-Sync generates."""


@dataclass(frozen=True)
class Keypoints:
    """A batch of keypoint sets: ``value (B, K, 2)`` and ``jacobian (B, K, 2, 2)`` float tensors.

    ``B`` is a batch of frames (or of source images), ``K`` keypoints (10 for vox-adv-256, 15 for
    some renderers). ``jacobian`` may be ``None`` for a renderer configured without jacobians
    (FOMM ``estimate_jacobian: False``).

    Raises:
        ValueError: tensors of the wrong rank or mismatched shapes.
    """

    value: torch.Tensor
    jacobian: Optional[torch.Tensor] = None

    def __post_init__(self) -> None:
        value = torch.as_tensor(self.value)
        if value.ndim != 3 or value.shape[-1] != 2:
            raise ValueError(f"keypoint values must be (B, K, 2), got {tuple(value.shape)}")
        object.__setattr__(self, "value", value)
        if self.jacobian is not None:
            jac = torch.as_tensor(self.jacobian)
            if tuple(jac.shape) != tuple(value.shape[:2]) + (2, 2):
                raise ValueError(f"jacobians must be {tuple(value.shape[:2]) + (2, 2)} for values "
                                 f"{tuple(value.shape)}, got {tuple(jac.shape)}")
            object.__setattr__(self, "jacobian", jac)

    # -- size and indexing -------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.value.shape[0])

    @property
    def num_kp(self) -> int:
        """Keypoints per set, ``K``."""
        return int(self.value.shape[1])

    @property
    def device(self) -> torch.device:
        """The device of :attr:`value` (the jacobian, if any, is on the same one)."""
        return self.value.device

    def __getitem__(self, index: Any) -> "Keypoints":
        """Frames ``index`` (an int keeps the batch axis: ``kp[3]`` is ``(1, K, 2)``)."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return Keypoints(self.value[index], None if self.jacobian is None else self.jacobian[index])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "Keypoints":
        """Both tensors moved/cast (as :meth:`torch.Tensor.to`)."""
        return Keypoints(self.value.to(device=device, dtype=dtype),
                         None if self.jacobian is None else self.jacobian.to(device=device, dtype=dtype))

    def clone(self) -> "Keypoints":
        """A copy with both tensors cloned (same shapes, device and dtype)."""
        return Keypoints(self.value.clone(), None if self.jacobian is None else self.jacobian.clone())

    def equal(self, other: "Keypoints") -> bool:
        """Exactly the same numbers (and both with or both without jacobians)."""
        if (self.jacobian is None) != (other.jacobian is None):
            return False
        return bool(torch.equal(self.value, other.value)
                    and (self.jacobian is None or torch.equal(self.jacobian, other.jacobian)))

    # -- conversions -------------------------------------------------------------------------------
    def pack(self) -> torch.Tensor:
        """``(B, K, 6)`` = ``[x, y, j00, j01, j10, j11]`` (MS-Sync sequences, training clips).

        Raises:
            ValueError: keypoints without jacobians.
        """
        if self.jacobian is None:
            raise ValueError("keypoints without jacobians cannot be packed to (B, K, 6)")
        return torch.cat([self.value, self.jacobian.flatten(start_dim=-2)], dim=-1)

    @classmethod
    def unpack(cls, packed: torch.Tensor | np.ndarray) -> "Keypoints":
        """Inverse of :meth:`pack`: ``(B, K, 6)`` (tensor or array) -> Keypoints.

        Raises:
            ValueError: a last axis other than 6.
        """
        packed = torch.as_tensor(packed)
        if packed.ndim != 3 or packed.shape[-1] != KP_DIM:
            raise ValueError(f"packed keypoints must be (B, K, {KP_DIM}), got {tuple(packed.shape)}")
        return cls(packed[..., :2], packed[..., 2:].reshape(*packed.shape[:2], 2, 2))

    def as_dict(self) -> dict:
        """The reference code's ``{"value": ..., "jacobian": ...}`` form (FOMM module internals)."""
        out = {"value": self.value}
        if self.jacobian is not None:
            out["jacobian"] = self.jacobian
        return out

    @classmethod
    def from_dict(cls, kp: dict) -> "Keypoints":
        """From the reference ``{"value", "jacobian"}`` dict (``jacobian`` optional)."""
        return cls(kp["value"], kp.get("jacobian"))

    def numpy(self) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """``(value, jacobian)`` as float32 numpy arrays on the CPU (for saving)."""
        to_np = lambda t: t.detach().to("cpu", torch.float32).numpy()
        return to_np(self.value), None if self.jacobian is None else to_np(self.jacobian)

    @classmethod
    def cat(cls, parts: "list[Keypoints]") -> "Keypoints":
        """Concatenate along the batch axis."""
        jac = None if parts[0].jacobian is None else torch.cat([p.jacobian for p in parts])
        return cls(torch.cat([p.value for p in parts]), jac)


# ============================================================================ head-motion control
class HeadMotion(NamedTuple):
    """Per-frame global head transform of keypoint sets relative to ``kp_source``.

    The transform maps source keypoints ``x`` to driving ones ``y ~ T(x)``::

        T(x) = A (x - centre) + centre + translation,   A = exp(log_scale) R(angle)

    with ``R(angle)`` the 2-D rotation ``[[cos, -sin], [sin, cos]]`` (x right, y down: a positive
    angle turns +x towards +y, i.e. clockwise on screen).

    Attributes:
        log_scale: ``(T,)`` natural log of the scale.
        angle: ``(T,)`` radians in ``(-pi, pi]``.
        translation: ``(T, 2)`` keypoint units (the ``[-1, 1]`` grid).
        centre: ``(T, 2)`` the source keypoints' centroid, the fixed point of the rotation/scale.
    """

    log_scale: torch.Tensor
    angle: torch.Tensor
    translation: torch.Tensor
    centre: torch.Tensor

    def linear(self, scale: float = 1.0) -> torch.Tensor:
        """``(T, 2, 2)`` the linear part ``A_S = exp(S log_scale) R(S angle)`` at motion scale ``S``."""
        s = torch.exp(scale * self.log_scale)
        c, n = torch.cos(scale * self.angle) * s, torch.sin(scale * self.angle) * s
        return torch.stack([torch.stack([c, -n], -1), torch.stack([n, c], -1)], -2)


def fit_head_motion(kp_driving: Keypoints, kp_source: Keypoints, robust_iters: int = 8) -> HeadMotion:
    """Least-squares similarity fit (translation, rotation, scale) of each driving keypoint set to
    the source set, batched over frames with torch ops on the keypoints' device.

    Closed form of the weighted 2-D Procrustes / Umeyama fit: with per-keypoint weights ``w``,
    weighted centroids ``mx``, ``my`` and centred points ``p = x - mx``, ``q = y - my``::

        a = sum w (p . q) / sum w |p|^2,   b = sum w (p x q) / sum w |p|^2
        scale = sqrt(a^2 + b^2),  angle = atan2(b, a),  A = [[a, -b], [b, a]]
        translation = my - centre - A (mx - centre)

    ``robust_iters`` rounds of iteratively reweighted least squares follow the plain fit, with
    Cauchy weights ``1 / (1 + (r / c)^2)`` of each keypoint's residual ``r``, ``c = 1.4826 x median
    (r)`` (at least 1e-3): keypoints that move on their own (mouth, expression) then barely pull the
    head transform. ``robust_iters=0`` is the plain least-squares fit over the K keypoints.

    Args:
        kp_driving: ``(T, K, 2)`` values (jacobians unused).
        kp_source: ``(1, K, 2)`` or ``(T, K, 2)``.
        robust_iters: reweighting rounds (>= 0).

    Returns:
        :class:`HeadMotion` with ``(T,)`` / ``(T, 2)`` tensors, dtype and device of ``kp_driving``.

    Raises:
        ValueError: mismatched shapes, or a source set with all keypoints at one point.
    """
    y = kp_driving.value
    x = kp_source.value.to(device=y.device, dtype=y.dtype)
    if x.shape[1:] != y.shape[1:] or x.shape[0] not in (1, y.shape[0]):
        raise ValueError(f"kp_source {tuple(x.shape)} does not match kp_driving {tuple(y.shape)}")
    x = x.expand_as(y)
    centre = x.mean(dim=1)                                                  # (T, 2)
    if bool((((x - centre[:, None]) ** 2).sum(dim=(1, 2)) <= 1e-12).any()):
        raise ValueError("kp_source has all its keypoints at one point; no head transform can be fitted")
    w = torch.ones(y.shape[:2], dtype=y.dtype, device=y.device)            # (T, K)
    for it in range(int(robust_iters) + 1):
        wn = w / w.sum(dim=1, keepdim=True)
        mx = (wn[..., None] * x).sum(dim=1)
        my = (wn[..., None] * y).sum(dim=1)
        p, q = x - mx[:, None], y - my[:, None]
        sxx = (wn * (p ** 2).sum(-1)).sum(1).clamp_min(1e-12)
        a = (wn * (p * q).sum(-1)).sum(1) / sxx
        b = (wn * (p[..., 0] * q[..., 1] - p[..., 1] * q[..., 0])).sum(1) / sxx
        A = torch.stack([torch.stack([a, -b], -1), torch.stack([b, a], -1)], -2)   # (T, 2, 2)
        if it == robust_iters:
            break
        r = (q - p @ A.transpose(1, 2)).norm(dim=-1)                         # (T, K)
        c = (1.4826 * r.median(dim=1, keepdim=True).values).clamp_min(1e-3)
        w = 1.0 / (1.0 + (r / c) ** 2)
    translation = my - centre - ((mx - centre)[:, None] @ A.transpose(1, 2))[:, 0]
    log_scale = 0.5 * torch.log((a * a + b * b).clamp_min(1e-24))
    return HeadMotion(log_scale, torch.atan2(b, a), translation, centre)


def scale_head_motion(kp_driving: Keypoints, kp_source: Keypoints, scale: float,
                      robust_iters: int = 8) -> Keypoints:
    """Scale the global head motion of generated keypoints by ``scale``, keeping the rest (mouth,
    expression) as it is.

    Decomposition: each driving frame is fitted with a similarity transform ``T`` relative to
    ``kp_source`` (:func:`fit_head_motion`: translation, log-scale, rotation about the source
    keypoints' centroid ``c``; robust least squares over the K keypoints). What ``T`` does not
    explain is the residual, expressed in the head's own frame: ``e = A^-1 (y - T(x))``, so that
    ``y = T(x + e)``. The scaled transform ``T_S`` has ``S`` times the translation, log-scale and
    angle, and the output is ``y' = T_S(x + e)``; in closed form, every driving frame is mapped by
    the similarity ``G = T_S o T^-1``::

        y' = A_S A^-1 (y - c - t) + c + S t,        J' = A_S A^-1 J

    (``A`` / ``A_S`` the linear parts, ``t`` the translation; jacobians transform with ``G``'s
    linear part). ``S = 1`` returns ``kp_driving`` itself (the same object, bit for bit);
    ``S = 0`` removes the global motion (each frame keeps only its residual on the source pose);
    ``S > 1`` exaggerates it.

    Limits: FOMM keypoints are unsupervised, so "head" is whatever the K keypoints do together; a
    similarity cannot express out-of-plane rotation (yaw/pitch show as scale/shear-like residuals and
    stay in ``e``); when most keypoints move independently the robust fit has no stable majority and
    part of that motion is scaled too; angles are taken in ``(-pi, pi]`` (head rolls are far below).

    Args:
        kp_driving: ``(T, K, 2)`` generated keypoints (jacobians ``(T, K, 2, 2)`` or ``None``).
        kp_source: ``(1, K, 2)`` (or ``(T, K, 2)``) the source photo's keypoints.
        scale: ``S``, finite and ``>= 0``.
        robust_iters: reweighting rounds of the fit (0: plain least squares).

    Returns:
        :class:`Keypoints` ``(T, K, 2)`` (+ jacobians) on ``kp_driving``'s device and dtype.

    Raises:
        InputError: ``scale`` is not a finite number ``>= 0``.
        ValueError: mismatched keypoint shapes.
    """
    try:
        s = float(scale)
    except (TypeError, ValueError):
        raise InputError(f"head-motion scale must be a number >= 0, not {scale!r}") from None
    if isinstance(scale, bool) or not math.isfinite(s) or s < 0:
        raise InputError(f"head-motion scale must be a finite number >= 0, not {scale!r}")
    if s == 1.0:
        return kp_driving
    motion = fit_head_motion(kp_driving, kp_source, robust_iters)
    A, A_s = motion.linear(1.0), motion.linear(s)
    G = A_s @ torch.linalg.inv(A)                                            # (T, 2, 2)
    c, t = motion.centre, motion.translation
    y = kp_driving.value
    value = (y - (c + t)[:, None]) @ G.transpose(1, 2) + (c + s * t)[:, None]
    jac = None if kp_driving.jacobian is None else G[:, None] @ kp_driving.jacobian
    return Keypoints(value, jac)


# ------------------------------------------------------------------------------ the --save-keypoints file
def save_keypoints_npz(path, keypoints: "dict[str, Optional[Keypoints]]", extras: "dict[str, Any]", *,
                       overwrite: bool = False):
    """Write the ``--save-keypoints`` ``.npz`` atomically (the one writer of that schema).

    Each ``keypoints[name]`` (``None`` entries skipped) becomes ``<name>_value (B, K, 2)`` float32 and,
    when it has jacobians, ``<name>_jacobian (B, K, 2, 2)`` float32; ``extras`` are stored as given
    (numpy arrays or scalars). ``animate`` writes ``kp_driving`` (T, K, ...) at the video's frame rate and
    ``kp_source`` (1, K, ...), with ``crop_box (4,)``, ``crop_affine (2, 3)`` and ``fps``; ``reenact``
    adds ``kp_detected``, ``kp_driving_initial`` and the driving crop.

    Raises:
        OutputError: the file cannot be written (see :func:`talkhead.io.atomic_output`).
    """
    from .io import atomic_output

    arrays = {}
    for name, kp in keypoints.items():
        if kp is None:
            continue
        value, jacobian = kp.to("cpu").numpy()
        arrays[f"{name}_value"] = value
        if jacobian is not None:
            arrays[f"{name}_jacobian"] = jacobian
    arrays.update(extras)
    with atomic_output(path, overwrite=overwrite) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    return path


def load_keypoints_npz(path, name: str = "kp_driving") -> Keypoints:
    """Read ``name`` (``<name>_value`` [+ ``<name>_jacobian``]) from a ``--save-keypoints`` ``.npz``
    (:func:`save_keypoints_npz`, the one reader of that schema).

    Raises:
        KeyError: the file holds no ``<name>_value``. OSError / ValueError: not a readable ``.npz``.
    """
    with np.load(path, allow_pickle=False) as z:
        value = torch.from_numpy(np.array(z[f"{name}_value"]))
        key = f"{name}_jacobian"
        jacobian = torch.from_numpy(np.array(z[key])) if key in z else None
    return Keypoints(value, jacobian)


__all__ = ["KeypointSpace", "FOMM_SPACE", "Keypoints", "HeadMotion", "fit_head_motion", "scale_head_motion", "save_keypoints_npz",
           "load_keypoints_npz"]
