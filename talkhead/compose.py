"""Full-frame output: paste FOMM's rendered face crops back into the photo.

FOMM renders only its square face crop (``(S, S, 3)``, ``S`` = 256 for vox-adv-256). For a video of
the whole photo, each rendered crop is warped back to where it came from and blended in. The data's
path::

    photo = even_size(limit_size(load_image(path), max_size))   # (H, W, 3) uint8, H and W even
    face_crop = fomm_crop(photo, face, S, pad=True)             # square, centred on the face
    comp = Compositor(photo, face_crop)                         # once per photo
    out = comp.new_buffer(b)                                    # (b, H, W, 3) uint8, the photo
    comp.paste(rendered, out=out)                               # rendered (b, S, S, 3) -> out

What :class:`Compositor` does per frame (all on the crop's bounding box in the photo, the *region*;
pixels outside it are never touched and stay the photo's exactly):

1. **Colour matching** in crop space (``S x S``, cheap): the renderer's colour drift is estimated
   where the rendered crop must agree with the photo, the *blending band* along the crop border
   (inside the photo), as a smooth low-frequency field, and subtracted (``colour="lowfreq"``, the
   default; see :data:`COLOUR_MATCHES`).
2. **Warp** the (corrected) crop into the region with the crop -> photo affine
   (``cv2.warpAffine``, ``INTER_LINEAR``), uint8.
3. **Blend** with a soft mask that is 1 inside the crop and falls smoothly (smoothstep) to 0 over
   the band at the crop border, so the head may move inside the crop and the border band fades
   into the untouched photo (``cv2.blendLinear``).

Faces near the image border: :func:`talkhead.crop.fomm_crop` with ``pad=True`` keeps the crop square
and centred, mirroring the photo beyond its edge; the region is clipped to the photo, so only the
part of the crop inside the photo is pasted (the mask does not fade at the photo's own edge: there
is nothing beyond it to blend with).

Output size: the video is the photo's size after EXIF rotation (:func:`talkhead.image.load_image`),
:func:`~talkhead.image.limit_size` (``--max-size``) and :func:`~talkhead.image.even_size` (yuv420p
needs even sides).
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from .crop import FaceCrop

__all__ = ["COLOUR_MATCHES", "Compositor", "seam_metrics"]

COLOUR_MATCHES = ("lowfreq", "mean", "none")
"""Colour matching of the rendered crop to the photo (:class:`Compositor` ``colour=``). All three
estimate the renderer's drift from the difference photo - rendered over the blending band (the ring
of the crop where the mask is below 1, inside the photo), at half the crop's resolution, with each
band pixel weighted by how flat both images are around it (``exp(-|grad|^2 / 2 edge_scale^2)``,
dilated over 8 crop pixels; :meth:`Compositor._flatness`): where there are edges or texture, the
difference is the head's motion, not drift, and is down-weighted.

* ``"lowfreq"`` (default): a smooth per-pixel correction field, the weighted difference spread over
  the whole crop by normalised convolution, ``D = G*(w (P - R)) / G*(w)`` with a Gaussian ``G`` of
  ``sigma = S / 8`` crop pixels (at ``S / 8`` resolution, then upsampled), added to the rendered
  crop. A cheap stand-in for the harmonic membrane of Poisson cloning (Perez et al., SIGGRAPH 2003):
  it removes a global or slowly varying drift in the band and, smoothly, in the face.
* ``"mean"``: one constant offset per channel, the weighted band mean (a global drift only).
* ``"none"``: no correction; a drifting renderer then shows as a soft-edged tinted square.

``tests/test_compose.py`` (the astronaut, ``tint`` of :func:`seam_metrics` in 8-bit levels) holds a
renderer adding +0.1 to red to a tint under 1.5 with ``lowfreq`` (over 20 with ``none``), and the face
centre of a head moved in the band within 2 levels of the moved photo (``lowfreq`` and ``mean``).
Measured tints per mode and the paste-back's cost per frame (``benchmarks/bench_compose.py``;
``cv2.seamlessClone``, not used, for comparison): ``benchmarks/README.md``, "Paste-back (compose)".
"""


def _smoothstep(t: np.ndarray) -> np.ndarray:
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


class Compositor:
    """Paste rendered FOMM crops back into one photo, with a feathered mask and colour matching.

    Built once per photo (everything that does not depend on the frame is precomputed), so that
    :meth:`paste` is small next to rendering (measured: ``benchmarks/README.md``, "Paste-back
    (compose)"). FOMM's axis-aligned square crops are pasted with ``cv2.resize`` of the crop to
    the box (the same pixel mapping as the affine warp, and cheaper); any other ``affine`` goes
    through ``cv2.warpAffine``. Only the band strips are blended; the interior is copied.

    Args:
        photo: ``(H, W, 3)`` uint8 RGB, the image ``face_crop`` was cut from (same size). It is
            copied; later changes to the caller's array do not matter.
        face_crop: the :class:`talkhead.crop.FaceCrop` FOMM animates (``affine`` maps crop pixels to
            photo pixels; its box may reach past the photo, see ``fomm_crop(..., pad=True)``).
        feather: width of the blending band, as a fraction of the crop side ``S`` (0.12: 31 crop
            pixels at ``S`` = 256). The outermost crop pixel (``margin``) always gets weight 0.
        colour: colour matching, one of :data:`COLOUR_MATCHES`.
        colour_side: side of the images the colour statistics are computed on, pixels (default
            ``S / 2``). A face restored at ``2 S`` (:mod:`talkhead.restore`) is matched at the render's
            ``S / 2``, so its colour correction is the plain render's.

    Attributes:
        region: ``(x0, y0, x1, y1)`` int pixels of the photo the crop covers, clipped to the photo
            (``photo[y0:y1, x0:x1]``); pixels outside it are never written.
        mask: ``(y1 - y0, x1 - x0)`` float32 in [0, 1], the weight of the rendered crop per region
            pixel.
        band: width of the blending band, crop pixels (``feather * S``).

    Raises:
        ValueError: bad shapes, ``feather`` outside (0, 0.5), an unknown ``colour``, or a crop that
            does not overlap the photo.
    """

    margin = 1.0
    """Crop pixels at the very border given weight 0 (renderers are least reliable there)."""

    def __init__(self, photo: np.ndarray, face_crop: FaceCrop, *, feather: float = 0.12,
                 colour: str = "lowfreq", colour_side: Optional[int] = None) -> None:
        import cv2

        photo = np.asarray(photo)
        if photo.ndim != 3 or photo.shape[2] != 3 or photo.dtype != np.uint8:
            raise ValueError(f"photo must be an (H, W, 3) uint8 array, got {photo.shape} {photo.dtype}")
        if colour not in COLOUR_MATCHES:
            raise ValueError(f"colour must be one of {COLOUR_MATCHES}, not {colour!r}")
        if not 0.0 < float(feather) < 0.5:
            raise ValueError(f"feather must be in (0, 0.5) of the crop side, not {feather}")
        self.photo = np.ascontiguousarray(photo).copy()
        self.colour = colour
        self.size = S = int(face_crop.size)
        h_img, w_img = photo.shape[:2]
        A = np.asarray(face_crop.affine, dtype=np.float64).reshape(2, 3)

        # Region: photo pixels whose centres fall inside the crop's outer edge [-0.5, S - 0.5]^2.
        corners = np.array([[-0.5, -0.5, 1.0], [S - 0.5, -0.5, 1.0],
                            [-0.5, S - 0.5, 1.0], [S - 0.5, S - 0.5, 1.0]]) @ A.T
        (xmin, ymin), (xmax, ymax) = corners.min(axis=0), corners.max(axis=0)
        x0, y0 = max(0, math.floor(xmin + 0.5)), max(0, math.floor(ymin + 0.5))
        x1, y1 = min(w_img, math.ceil(xmax + 0.5)), min(h_img, math.ceil(ymax + 0.5))
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"the face crop (box {face_crop.box}) does not overlap the "
                             f"{w_img}x{h_img} photo")
        self.region = (int(x0), int(y0), int(x1), int(y1))
        h, w = y1 - y0, x1 - x0
        self._to_region = A.copy()            # crop pixel -> region pixel
        self._to_region[:, 2] -= (x0, y0)

        # Feathered mask in crop space: a product of two 1-D smoothstep ramps over the band
        # (smooth at the corners), then warped into the region once.
        self.band = band = float(feather) * S
        d = np.minimum(np.arange(S) + 0.5, S - 0.5 - np.arange(S))           # distance to edge
        ramp = _smoothstep((d - self.margin) / band).astype(np.float32)
        mask_crop = np.outer(ramp, ramp)
        self.mask = np.clip(cv2.warpAffine(mask_crop, self._to_region, (w, h), flags=cv2.INTER_LINEAR,
                                           borderMode=cv2.BORDER_CONSTANT, borderValue=0.0), 0.0, 1.0)
        self._inv_mask = (1.0 - self.mask).astype(np.float32)
        self._photo_region = np.ascontiguousarray(self.photo[y0:y1, x0:x1])

        # Colour matching: band weights in crop space (band ring, inside the photo), and the
        # photo's side of the normalised convolution, precomputed at low resolution.
        uu = np.arange(S, dtype=np.float64)
        px = A[0, 0] * uu[None, :] + A[0, 1] * uu[:, None] + A[0, 2]
        py = A[1, 0] * uu[None, :] + A[1, 1] * uu[:, None] + A[1, 2]
        inside = (px >= -0.5) & (px < w_img - 0.5) & (py >= -0.5) & (py < h_img - 0.5)
        in_band = (mask_crop < 1.0) & (np.minimum.outer(d, d) >= self.margin)
        self._band_w = (inside & in_band).astype(np.float32)
        if self._band_w.sum() == 0:
            self.colour = "none"  # no band inside the photo: nothing to match against
        # Colour statistics work at half the crop's resolution (S / 2 pixels a side) unless told.
        self._half = max(8, int(colour_side) if colour_side else S // 2)
        self._lr = max(4, int(round(self._half / 4)))
        self._sigma_lr = self._lr / 8.0  # = S / 8 crop pixels, in low-resolution pixels
        self._source_half = self._to_half(np.asarray(face_crop.crop, dtype=np.float32))
        self._band_half_source = self._to_half(self._band_w) * self._flatness(self._source_half)
        self._warp_buf = np.empty((h, w, 3), np.uint8)
        self._crop_buf = np.empty((S, S, 3), np.float32)

        # Fast path: FOMM's crops are axis-aligned squares (A = [[L/S, 0, .], [0, L/S, .]] of an
        # integer box), for which the warp is exactly cv2.resize of the crop to the box's L x L
        # (same pixel-centre mapping, edge pixels replicated), cheaper than warpAffine (benchmarks/README.md).
        bx0, by0, bx1, by1 = (int(v) for v in face_crop.box)
        L = bx1 - bx0
        box_affine = np.array([[L / S, 0.0, bx0 + 0.5 * L / S - 0.5], [0.0, L / S, by0 + 0.5 * L / S - 0.5]])
        self._resize_to: Optional[tuple[int, int, int]] = None
        if by1 - by0 == L and np.allclose(A, box_affine, rtol=0, atol=1e-9):
            self._resize_to = (L, y0 - by0, x0 - bx0)

        # Blend only where the mask is fractional: the band strips; the interior (mask == 1) is a
        # plain copy of the warped crop.
        self._strips: list[tuple[slice, slice, np.ndarray, np.ndarray, np.ndarray]] = []
        ones = self.mask >= 1.0
        rows, cols = np.flatnonzero(ones.any(axis=1)), np.flatnonzero(ones.any(axis=0))
        self._interior: Optional[tuple[slice, slice]] = None
        if len(rows) and len(cols) and ones[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all():
            iy0, iy1, ix0, ix1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
            self._interior = (slice(iy0, iy1), slice(ix0, ix1))
            pieces = [(slice(0, iy0), slice(0, w)), (slice(iy1, h), slice(0, w)),
                      (slice(iy0, iy1), slice(0, ix0)), (slice(iy0, iy1), slice(ix1, w))]
        else:
            pieces = [(slice(0, h), slice(0, w))]
        for ys, xs in pieces:
            if ys.stop > ys.start and xs.stop > xs.start:
                self._strips.append((ys, xs, np.ascontiguousarray(self._photo_region[ys, xs]),
                                     np.ascontiguousarray(self.mask[ys, xs]),
                                     np.ascontiguousarray(self._inv_mask[ys, xs])))

    # -- helpers -----------------------------------------------------------------------------------
    def _to_half(self, x: np.ndarray) -> np.ndarray:
        import cv2

        return cv2.resize(x, (self._half, self._half), interpolation=cv2.INTER_AREA)

    def _lowpass(self, x: np.ndarray) -> np.ndarray:
        """Area-downsample to ``(lr, lr)`` and Gaussian-blur (zero outside: normalised convolution)."""
        import cv2

        small = cv2.resize(x, (self._lr, self._lr), interpolation=cv2.INTER_AREA)
        return cv2.GaussianBlur(small, (0, 0), self._sigma_lr, borderType=cv2.BORDER_CONSTANT)

    def _flatness(self, half: np.ndarray) -> np.ndarray:
        """``(S/2, S/2)`` weight in ``(weight_floor, 1 + weight_floor]``: ~1 where the image is
        flat, small within ~4 half-res
        pixels (8 crop pixels) of an edge or texture, where motion, not colour drift, dominates
        the photo - rendered difference."""
        import cv2

        gray = cv2.GaussianBlur(half.mean(axis=2, dtype=np.float32), (0, 0), 1.0)
        gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3)
        gy = cv2.Sobel(gray, cv2.CV_32F, 0, 1, ksize=3)
        g2 = cv2.dilate(gx * gx + gy * gy, self._dilate_kernel)
        return cv2.exp(g2 * np.float32(-1.0 / (2.0 * self.edge_scale ** 2))) + np.float32(self.weight_floor)

    _dilate_kernel = np.ones((9, 9), np.uint8)

    edge_scale = 0.16
    """Sobel response (on [0, 1] gray, half resolution; = 8 x the gradient per pixel) at which a
    band pixel's weight in the colour estimate falls to ``exp(-1/2)``."""

    weight_floor = 0.01
    """Weight every band pixel keeps, so a band that is all texture still gives an estimate."""

    def colour_correction(self, rendered: np.ndarray) -> np.ndarray:
        """The correction added to one rendered crop before pasting (see :data:`COLOUR_MATCHES`).

        Args:
            rendered: ``(S, S, 3)`` float32 in [0, 1].

        Returns:
            ``(S, S, 3)`` float32 (``"lowfreq"``), ``(3,)`` (``"mean"``) or ``0.0`` (``"none"``).
        """
        import cv2

        if self.colour == "none":
            return np.float32(0.0)
        r_half = self._to_half(rendered)
        w = self._band_half_source * self._flatness(r_half)
        diff = self._source_half - r_half
        if self.colour == "mean":
            return ((w.reshape(-1) @ diff.reshape(-1, 3)) / max(float(w.sum()), 1e-12)).astype(np.float32)
        num = self._lowpass(diff * w[..., None])
        field = num / (self._lowpass(w)[..., None] + np.float32(1e-12))
        return cv2.resize(field, (self.size, self.size), interpolation=cv2.INTER_LINEAR)

    # -- pasting -----------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int, int]:
        """``(H, W, 3)`` of the output frames."""
        return self.photo.shape

    def new_buffer(self, batch: int) -> np.ndarray:
        """A ``(batch, H, W, 3)`` uint8 buffer holding the photo in every frame, for :meth:`paste`."""
        return np.repeat(self.photo[None], int(batch), axis=0)

    def paste_frame(self, frame: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Paste one rendered crop into ``out`` (only ``out``'s region is written).

        Args:
            frame: ``(S, S, 3)`` rendered crop, float in [0, 1] or uint8.
            out: ``(H, W, 3)`` uint8 that holds the photo outside :attr:`region` (a frame of
                :meth:`new_buffer`, or one pasted before).

        Returns:
            ``out``.

        Raises:
            ValueError: ``frame`` is not ``(S, S, 3)`` or ``out`` not the photo's shape in uint8.
        """
        import cv2

        frame = np.asarray(frame)
        S = self.size
        if frame.shape != (S, S, 3):
            raise ValueError(f"rendered frames must be ({S}, {S}, 3), got {frame.shape}")
        if out.shape != self.photo.shape or out.dtype != np.uint8:
            raise ValueError(f"out must be {self.photo.shape} uint8, got {out.shape} {out.dtype}")
        if frame.dtype == np.uint8 and self.colour == "none":
            crop8 = np.ascontiguousarray(frame)
        else:
            r = self._crop_buf
            if frame.dtype == np.uint8:
                np.multiply(frame, np.float32(1.0 / 255.0), out=r)
            else:
                r[...] = frame
            if self.colour != "none":
                r += self.colour_correction(r)
            np.clip(r, 0.0, 1.0, out=r)
            crop8 = cv2.convertScaleAbs(r, alpha=255.0)   # rounds, saturates; r >= 0 here
        x0, y0, x1, y1 = self.region
        if self._resize_to is not None:
            L, oy, ox = self._resize_to
            full = cv2.resize(crop8, (L, L), interpolation=cv2.INTER_LINEAR)
            warped = full[oy:oy + y1 - y0, ox:ox + x1 - x0]
        else:
            warped = cv2.warpAffine(crop8, self._to_region, (x1 - x0, y1 - y0), dst=self._warp_buf,
                                    flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        dst = out[y0:y1, x0:x1]
        if self._interior is not None:
            dst[self._interior] = warped[self._interior]
        for ys, xs, photo, m, inv in self._strips:
            dst[ys, xs] = cv2.blendLinear(np.ascontiguousarray(warped[ys, xs]), photo, m, inv)
        return out

    def paste(self, frames: np.ndarray, out: Optional[np.ndarray] = None) -> np.ndarray:
        """Paste a batch of rendered crops: ``(b, S, S, 3)`` float [0, 1] or uint8 ->
        ``(b, H, W, 3)`` uint8 full frames.

        Args:
            frames: the renderer's output for ``b`` frames (numpy; move torch tensors to the CPU and
                to channels-last first).
            out: optional ``(b, H, W, 3)`` uint8 buffer holding the photo outside :attr:`region`
                (from :meth:`new_buffer`; reuse it across batches: only the region is rewritten).

        Returns:
            ``out`` (a new buffer if none was given).

        Raises:
            ValueError: wrong shapes.
        """
        frames = np.asarray(frames)
        if frames.ndim != 4:
            raise ValueError(f"rendered frames must be (b, {self.size}, {self.size}, 3), got {frames.shape}")
        if out is None:
            out = self.new_buffer(len(frames))
        elif len(out) != len(frames):
            raise ValueError(f"out holds {len(out)} frames for {len(frames)} rendered ones")
        for frame, dst in zip(frames, out):
            self.paste_frame(frame, dst)
        return out


    # -- diagnostics -------------------------------------------------------------------------------
    def edge_distance(self) -> np.ndarray:
        """``(H, W)`` float32: each photo pixel's distance to the crop's outer edge in crop pixels,
        positive inside the crop, negative outside. Diagnostic for :func:`seam_metrics`; not used by
        :meth:`paste`, the CLI or the pipeline."""
        h_img, w_img = self.photo.shape[:2]
        S = self.size
        inv = np.linalg.inv(np.vstack([self._to_region, [0.0, 0.0, 1.0]]))[:2]
        x0, y0 = self.region[:2]
        xs, ys = np.meshgrid(np.arange(w_img, dtype=np.float64) - x0, np.arange(h_img, dtype=np.float64) - y0)
        u = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
        v = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
        return np.minimum(np.minimum(u + 0.5, S - 0.5 - u), np.minimum(v + 0.5, S - 0.5 - v)).astype(np.float32)


def seam_metrics(out: np.ndarray, photo: np.ndarray, comp: Compositor,
                 rendered: Optional[np.ndarray] = None) -> dict:
    """How visible the pasted crop's rectangle is in one output frame.

    Public diagnostic API for judging a compositor's seams (used by ``tests/test_compose.py`` and
    ``benchmarks/bench_compose.py``); not used by the CLI or the pipeline.

    The *seam zone* is split into rings 1 photo pixel wide by the distance ``d`` to the crop's
    outer edge (:meth:`Compositor.edge_distance`, converted to photo pixels), from 2 px outside
    the crop to the inner edge of the blending band; only pixels inside the photo and not on its
    outermost row/column count, and each ring is split into the crop's four sides (by which edge
    is nearest).

    * ``gradient_ratio``: the largest, over rings and RGB channels, of mean ``|d out / d n|``
      divided by the larger of the same for the photo and for the rendered frame (warped into the
      photo with its edge pixels extended, i.e. the renderer's own content, with no seam), where
      ``n`` is the direction across the nearest crop edge (horizontal differences next to the
      crop's left/right sides, vertical ones next to its top/bottom), 8-bit levels per pixel. A
      hard rectangle edge shows as one ring with a high ratio; 1.0 (the rings outside the crop,
      where ``out`` is the photo, give at least that) means no ring has more gradient across the
      seam than the photo or the rendered face have there. (Without ``rendered`` the photo alone
      is the reference; a head that moves into the band then counts its own edges as seam.)
    * ``tint``: the largest ``|mean(out - photo)|``, over channels and the four sides, in the
      band's inner ring (its last 25 %, at least 1 px: mask ~0.85 - 1), 8-bit levels: the colour
      step a viewer sees between the face square and the untouched photo. Real motion in the
      band (the head moving) also moves this figure; compare against the same renderer without
      the drift.

    Args:
        out: ``(H, W, 3)`` uint8 output frame.
        photo: ``(H, W, 3)`` uint8 photo.
        comp: the :class:`Compositor` that made ``out``.
        rendered: ``(S, S, 3)`` the rendered crop pasted into ``out`` (float [0, 1] or uint8).

    Returns:
        ``{"gradient_ratio": float, "tint": float}``.
    """
    import cv2

    scale = math.sqrt(abs(np.linalg.det(comp._to_region[:, :2])))   # photo px per crop px
    d = comp.edge_distance()
    d_px = d * scale
    h_img, w_img = photo.shape[:2]
    usable = np.zeros((h_img, w_img), bool)
    usable[1:-1, 1:-1] = True
    # direction across the nearest edge: the axis along which d changes
    across_x = (np.abs(np.diff(d, axis=1, append=d[:, -1:]))
                >= np.abs(np.diff(d, axis=0, append=d[-1:, :])))
    o, p = out.astype(np.float32), photo.astype(np.float32)

    def grad(img: np.ndarray) -> np.ndarray:   # (H, W, 3)
        gx = np.abs(np.diff(img, axis=1, append=img[:, -1:]))
        gy = np.abs(np.diff(img, axis=0, append=img[-1:, :]))
        return np.where(across_x[..., None], gx, gy)

    g_out, g_ref = grad(o), grad(p)
    if rendered is not None:
        r = np.asarray(rendered, dtype=np.float32) * (1.0 if rendered.dtype == np.uint8 else 255.0)
        M = comp._to_region.copy()
        M[:, 2] += comp.region[:2]
        g_ref = np.maximum(g_ref, grad(cv2.warpAffine(r, M, (w_img, h_img), flags=cv2.INTER_LINEAR,
                                                      borderMode=cv2.BORDER_REPLICATE)))
    inner = (comp.margin + comp.band) * scale
    ratio = 0.0
    for r0 in np.arange(-2.0, inner, 1.0):
        ring = (d_px >= r0) & (d_px < r0 + 1.0) & usable
        if ring.sum() >= 8:
            ratio = max(ratio, float((g_out[ring].mean(axis=0) / np.maximum(g_ref[ring].mean(axis=0), 1e-6)).max()))
    # the four sides: which of the crop's edges is nearest, from the crop coordinates' direction
    yy, xx = np.mgrid[0:h_img, 0:w_img]
    x0, y0, x1, y1 = comp.region
    cx, cy = np.mean([x0, x1]), np.mean([y0, y1])
    side = np.where(across_x, np.where(xx < cx, 0, 1), np.where(yy < cy, 2, 3))
    band_ring = (d_px >= inner - max(1.0, 0.25 * comp.band * scale)) & (d_px < inner) & usable
    tint = 0.0
    diff = o - p
    for k in range(4):
        sel = band_ring & (side == k)
        if sel.sum() >= 8:
            tint = max(tint, float(np.abs(diff[sel].mean(axis=0)).max()))
    return {"gradient_ratio": ratio, "tint": tint}
