"""The restore stage: a face restorer (GFPGAN) between the renderer and the paste-back, following the head.

The data's path, per batch of rendered crops (all on the renderer's device, torch)::

    once:  photo's 68 landmarks -> 5 points (eye centres, nose tip, mouth corners) in crop pixels
           -> similarity M0: crop -> the restorer's N x N FFHQ-aligned face (N = 512 for GFPGAN v1.4)
    frame t: kp_driving vs kp_source -> head similarity H_t (talkhead.keypoints.fit_head_motion,
           the fit --motion-scale uses) in crop pixels;  M_t = M0 o H_t^-1
    rendered (b, 3, S, S) -> warp by M_t -> aligned (b, 3, N, N) -> restorer -> restored
           -> colour matched to the aligned render in the blending band (a smooth field)
           -> warped back by M_t^-1 onto the crop at 2 S -> blended, by strength x a feathered mask,
              with the render upscaled to 2 S -> (b, 3, 2 S, 2 S)

No detector runs per frame: the alignment moves exactly as the keypoints' head transform, so the
restored face does not jitter, and identical rendered frames give identical restored frames (the
restorer must be deterministic: :class:`talkhead.gfpgan.GFPGANRestorer` uses the checkpoint's stored
noise). The paste-back (:class:`talkhead.compose.Compositor`) then takes the ``2 S`` face, built for
the same box at ``2 S`` (:func:`talkhead.crop.crop_at_size`), so the face reaches the photo at up to
twice the render's resolution.

Coordinates: pixel centres at integers (:mod:`talkhead.crop`). Keypoints are in the renderer's
``[-1, 1]`` grid with ``-1``/``1`` at the centres of the first/last pixel (FOMM's
``make_coordinate_grid``): pixel ``u = (k + 1) (S - 1) / 2``.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from .crop import FaceCrop
from .keypoints import HeadMotion, Keypoints, fit_head_motion

__all__ = ["FFHQ_TEMPLATE_512", "UPSCALE", "Restorer", "FaceRestoreStage", "five_points", "identity_restorer", "similarity_matrix",
           "warp_affine"]

FFHQ_TEMPLATE_512 = np.array([[192.98138, 239.94708], [318.90277, 240.1936], [256.63416, 314.01935],
                              [201.26117, 371.41043], [313.08905, 371.15118]], dtype=np.float64)
"""Where GFPGAN's training faces have their 5 points in a 512 x 512 face, pixels: the eye centres (left
of the image first), the nose tip, the mouth corners (FFHQ alignment as facexlib's
``FaceRestoreHelper`` uses it for GFPGAN). Scaled by ``N / 512`` for a restorer of side ``N``."""

UPSCALE = 2
"""The restored face is warped back onto the crop at this many times the render's side."""


@runtime_checkable
class Restorer(Protocol):
    """A face restorer: ``faces (B, 3, N, N)`` float RGB in [0, 1], aligned to the FFHQ template
    (:data:`FFHQ_TEMPLATE_512` x ``N / 512``) -> restored faces, same shape and range, on the same
    device. Must be deterministic (the same face in, the same face out).

    Attributes:
        face_size: ``N``.
    """

    face_size: int

    def __call__(self, faces: torch.Tensor) -> torch.Tensor: ...


def five_points(landmarks: np.ndarray) -> np.ndarray:
    """``(68, 2)`` iBUG-68 landmarks -> ``(5, 2)``: left-of-image eye centre (mean of points 36-41),
    the other eye's (42-47), nose tip (30), mouth corners (48, 54); same units.

    Raises:
        ValueError: not ``(68, 2)``, or non-finite values.
    """
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.shape != (68, 2) or not np.isfinite(pts).all():
        raise ValueError(f"the restore stage needs the face's 68 finite landmarks, got shape {pts.shape}")
    return np.stack([pts[36:42].mean(0), pts[42:48].mean(0), pts[30], pts[48], pts[54]])


def similarity_matrix(motion: HeadMotion, index: int = 0) -> np.ndarray:
    """The ``(2, 3)`` float64 matrix of frame ``index`` of ``motion``: ``x -> A (x - c) + c + t``."""
    A = motion.linear(1.0)[index].double().cpu().numpy()
    c = motion.centre[index].double().cpu().numpy()
    t = motion.translation[index].double().cpu().numpy()
    return np.concatenate([A, (c + t - A @ c)[:, None]], axis=1)


def _fit(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity ``src -> dst`` (``(P, 2)`` each) as ``(2, 3)``: the same fit as the head
    transform (:func:`talkhead.keypoints.fit_head_motion`, no reweighting)."""
    motion = fit_head_motion(Keypoints(torch.from_numpy(dst[None]).double()),
                             Keypoints(torch.from_numpy(src[None]).double()), robust_iters=0)
    return similarity_matrix(motion)


def _homogeneous(m: torch.Tensor) -> torch.Tensor:
    """``(..., 2, 3)`` -> ``(..., 3, 3)``."""
    last = torch.zeros(*m.shape[:-2], 1, 3, dtype=m.dtype, device=m.device)
    last[..., 0, 2] = 1.0
    return torch.cat([m, last], dim=-2)


def warp_affine(images: torch.Tensor, to_source: torch.Tensor, size: tuple[int, int], *,
                mode: str = "bilinear") -> torch.Tensor:
    """Resample ``images`` ``(B, C, H, W)`` onto a ``size = (h, w)`` grid: output pixel ``(x, y)`` takes
    the value at ``to_source @ [x, y, 1]`` of the input (pixel-centre coordinates, bilinear or bicubic,
    the edge pixels extended). ``to_source``: ``(B, 2, 3)`` or ``(2, 3)``, any float dtype.

    Returns:
        ``(B, C, h, w)`` of ``images``' dtype and device.
    """
    b, _, H, W = images.shape
    h, w = size
    M = to_source.to(device=images.device, dtype=torch.float32).expand(b, 2, 3)
    ys, xs = torch.meshgrid(torch.arange(h, device=images.device, dtype=torch.float32),
                            torch.arange(w, device=images.device, dtype=torch.float32), indexing="ij")
    pts = torch.stack([xs, ys, torch.ones_like(xs)], -1).reshape(1, h * w, 3)   # (1, hw, 3)
    src = pts @ M.transpose(1, 2)                                               # (b, hw, 2)
    norm = torch.tensor([2.0 / W, 2.0 / H], device=images.device)
    grid = ((src + 0.5) * norm - 1.0).reshape(b, h, w, 2)
    return F.grid_sample(images, grid.to(images.dtype), mode=mode, padding_mode="border", align_corners=False)


def _smoothstep(t: torch.Tensor) -> torch.Tensor:
    t = t.clamp(0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


class FaceRestoreStage:
    """Restore rendered crops along the head's motion (see the module docstring).

    Built once per photo; call it per rendered batch.

    Args:
        restorer: a :class:`Restorer` (``face_size`` ``N``), on the frames' device.
        face_crop: the photo's :class:`talkhead.crop.FaceCrop` at the render's side ``S``.
        landmarks: the face's ``(68, 2)`` landmarks in photo pixels (``talkhead.landmarks.Face.landmarks``).
        kp_source: the crop's keypoints ``(1, K, 2)`` (what the head transform is measured against).
        strength: the blend of the restored face with the render, in [0, 1] (0: the render upscaled).
        band: width of the feathered edge of the restored face, as a fraction of ``N``; the colour
            match is measured there.
        colour: match the restored face's low frequencies to the render's in the band (a smooth field
            over the face, normalised convolution with ``sigma = N / 8``), so the face keeps the
            render's colour (no whitened face).

    Attributes:
        out_size: ``UPSCALE x S``, the side of the crops it returns.
        to_aligned: ``(2, 3)`` float64 ``M0``, crop pixels (side ``S``) -> aligned face pixels, at the
            source pose.

    Raises:
        ValueError: a strength outside [0, 1], bad landmarks, or a restorer without ``face_size``.
    """

    upsample_mode = "bicubic"
    """How the render is upscaled to ``2 S`` (``F.interpolate`` mode)."""

    def __init__(self, restorer: Restorer, face_crop: FaceCrop, landmarks: np.ndarray, kp_source: Keypoints,
                 strength: float, *, band: float = 0.1, colour: bool = True):
        strength = float(strength)
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1], not {strength}")
        self.restorer, self.strength, self.colour = restorer, strength, bool(colour)
        self.size = S = int(face_crop.size)
        self.face_size = N = int(restorer.face_size)
        self.out_size = UPSCALE * S
        self.kp_source = kp_source
        A = np.vstack([np.asarray(face_crop.affine, dtype=np.float64).reshape(2, 3), [0.0, 0.0, 1.0]])
        pts = five_points(landmarks)
        crop_pts = (np.linalg.inv(A) @ np.c_[pts, np.ones(5)].T).T[:, :2]
        self.to_aligned = _fit(crop_pts, FFHQ_TEMPLATE_512 * (N / 512.0))
        # Feathered mask in aligned space (1 inside, smoothstep to 0 at the border; outermost pixel 0).
        d = torch.minimum(torch.arange(N) + 0.5, N - 0.5 - torch.arange(N)).float()
        ramp = _smoothstep((d - 1.0) / (band * N))
        self._mask = torch.outer(ramp, ramp)[None, None]
        self._band_w = ((self._mask > 0) & (self._mask < 1)).float()
        self._lr = max(4, N // 16)
        self._sigma_lr = self._lr / 8.0

    # -- geometry --------------------------------------------------------------------------------------
    def head_transforms(self, kp_driving: Keypoints) -> torch.Tensor:
        """``(b, 2, 3)`` float64 ``H_t`` in crop pixels: the head similarity of each driving keypoint set
        relative to ``kp_source`` (:func:`talkhead.keypoints.fit_head_motion`), converted from the
        keypoint grid to pixels."""
        motion = fit_head_motion(kp_driving, self.kp_source)
        a = (self.size - 1) / 2.0                       # pixel = a k + a
        A = motion.linear(1.0).double().cpu()
        c = motion.centre.double().cpu() * a + a
        t = motion.translation.double().cpu() * a
        b = c + t - (A @ c[..., None])[..., 0]
        return torch.cat([A, b[..., None]], dim=-1)

    def alignments(self, kp_driving: Keypoints) -> torch.Tensor:
        """``(b, 2, 3)`` float64 ``M_t = M0 o H_t^-1``: crop pixels of frame ``t`` -> aligned face pixels."""
        H = _homogeneous(self.head_transforms(kp_driving))
        M0 = _homogeneous(torch.from_numpy(self.to_aligned))
        return (M0 @ torch.linalg.inv(H))[:, :2]

    # -- the stage -------------------------------------------------------------------------------------
    def _lowpass(self, x: torch.Tensor) -> torch.Tensor:
        small = F.adaptive_avg_pool2d(x, self._lr)
        r = max(1, int(np.ceil(3 * self._sigma_lr)))
        k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=x.dtype, device=x.device) / self._sigma_lr) ** 2)
        k = k / k.sum()
        c = small.shape[1]
        small = F.conv2d(small, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), padding=(0, r), groups=c)
        return F.conv2d(small, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), padding=(r, 0), groups=c)

    def colour_match(self, restored: torch.Tensor, aligned: torch.Tensor) -> torch.Tensor:
        """``restored`` plus the smooth field that makes it agree with ``aligned`` (the render) in the band
        (``(b, 3, N, N)`` each)."""
        w = self._band_w.to(device=restored.device, dtype=restored.dtype)
        num = self._lowpass((aligned - restored) * w)
        den = self._lowpass(w.expand(len(restored), 1, -1, -1))
        field = num / (den + 1e-6)
        return restored + F.interpolate(field, size=restored.shape[-2:], mode="bilinear", align_corners=False)

    def __call__(self, frames: torch.Tensor, kp_driving: Keypoints) -> torch.Tensor:
        """Rendered ``frames`` ``(b, 3, S, S)`` in [0, 1] and the keypoints that drove them ``(b, K, ...)``
        -> ``(b, 3, 2 S, 2 S)`` in [0, 1], on the frames' device.

        Raises:
            ValueError: frames of another size, or a batch size that differs from the keypoints'.
        """
        b, _, h, w = frames.shape
        if (h, w) != (self.size, self.size) or len(kp_driving) != b:
            raise ValueError(f"the restore stage takes ({len(kp_driving)}, 3, {self.size}, {self.size}) frames, "
                             f"got {tuple(frames.shape)}")
        N, S2 = self.face_size, self.out_size
        up = F.interpolate(frames, scale_factor=UPSCALE, mode=self.upsample_mode, align_corners=False)
        if self.strength == 0.0:  # nothing of the restored face is kept: do not run the restorer
            return up.clamp(0.0, 1.0)
        M = _homogeneous(self.alignments(kp_driving))                    # crop px -> aligned px
        aligned = warp_affine(frames, torch.linalg.inv(M)[:, :2], (N, N))
        restored = self.restorer(aligned).to(frames.dtype)
        if self.colour:
            restored = self.colour_match(restored, aligned)
        # 2S pixel u2 -> crop pixel u = (u2 + 0.5) / UPSCALE - 0.5 -> aligned pixel M u
        scale = torch.tensor([[1.0 / UPSCALE, 0.0, 0.5 / UPSCALE - 0.5], [0.0, 1.0 / UPSCALE, 0.5 / UPSCALE - 0.5],
                              [0.0, 0.0, 1.0]], dtype=M.dtype)
        mask = self._mask.to(device=frames.device, dtype=frames.dtype).expand(b, 1, N, N)
        back = warp_affine(torch.cat([restored, mask], dim=1), (M @ scale)[:, :2], (S2, S2))
        weight = back[:, 3:].clamp(0.0, 1.0) * self.strength
        return (up + weight * (back[:, :3] - up)).clamp(0.0, 1.0)


def identity_restorer(face_size: int = 512) -> Restorer:
    """A restorer that returns its input (tests, benchmarks): :class:`FaceRestoreStage` is then the
    render's own round trip through the aligned face."""

    class _Identity:
        def __call__(self, faces: torch.Tensor) -> torch.Tensor:
            return faces

    r = _Identity()
    r.face_size = int(face_size)
    return r

