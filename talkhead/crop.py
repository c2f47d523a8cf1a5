"""FOMM's face-crop rule: the square the renderer animates, cut from a photo or a video frame.

The data's path::

    fomm_crop(image, face, S)   -> FaceCrop(box, crop (S, S, 3) float32 [0, 1], affine (2, 3))
    fomm_crop(..., pad=True)    -> the same, the square kept centred at full size past the image
                                   edge (mirrored pixels there), for full-frame paste-back
                                   (talkhead.compose)
    no_crop(image, S)           -> the whole image resized (``--crop none``)

:func:`fomm_square_box` is the rule itself (also used on videos by :mod:`talkhead.facetrack`);
``face`` is a :class:`talkhead.landmarks.Face` (its box joined with its landmarks,
:func:`face_extent`).

Coordinates are image pixels, ``x`` to the right and ``y`` down, with integer values at pixel
centres (the OpenCV / scikit-image convention): pixel ``(row r, col c)`` is the point ``(c, r)`` and
covers ``[c - 0.5, c + 0.5) x [r - 0.5, r + 0.5)``. Boxes are ``(x0, y0, x1, y1)`` with ``x1, y1``
exclusive, so the box of pixels ``image[y0:y1, x0:x1]`` spans ``[x0 - 0.5, x1 - 0.5)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:
    from .landmarks import Face

__all__ = ["FOMM_INCREASE_AREA", "FaceCrop", "fomm_square_box", "face_extent", "fomm_crop", "no_crop", "crop_at_size"]

FOMM_INCREASE_AREA = 0.1
"""``increase_area`` of FOMM ``crop-video.py`` ``compute_bbox`` (default of its ``--increase``): the
crop margin of animate's photos and of preprocess's videos alike."""


@dataclass(frozen=True, eq=False)
class FaceCrop:
    """The source frame FOMM animates, and where it sits in the photo.

    Attributes:
        box: ``(x0, y0, x1, y1)`` int pixels of the crop in the image (``image[y0:y1, x0:x1]``;
            square for :func:`fomm_crop`, the whole image for :func:`no_crop`). With
            ``fomm_crop(..., pad=True)`` the box may extend past the image (negative ``x0``/``y0``,
            or ``x1 > W``, ``y1 > H``); the crop pixels there are the image mirrored at its edge
            (``cv2.BORDER_REFLECT``, ``fedcba|abcdef``).
        crop: ``(S, S, 3)`` float32 RGB in [0, 1], ``S`` = the FOMM config's frame size (pixels).
        affine: ``(2, 3)`` float64 ``A`` mapping crop pixel coordinates to image pixel coordinates,
            ``[x, y] = A @ [u, v, 1]`` (pixel-centre convention, see the module docstring). Paste a
            rendered ``(S, S, 3)`` frame back with ``cv2.warpAffine(frame, affine, (W, H))``.
    """

    box: tuple[int, int, int, int]
    crop: np.ndarray
    affine: np.ndarray

    @property
    def size(self) -> int:
        """``S``, the side of :attr:`crop` in pixels."""
        return int(self.crop.shape[0])


def fomm_square_box(face_box: Sequence[float], image_shape: Sequence[int],
                    increase_area: float = FOMM_INCREASE_AREA, *,
                    pad: bool = False) -> tuple[int, int, int, int]:
    """FOMM's face-crop rule (``crop-video.py`` ``compute_bbox``) for a still, kept square.

    ``compute_bbox`` grows the face box by ``increase_area`` on each side of its longer dimension
    and makes it square about the box centre: side ``L = (1 + 2 * increase_area) * max(w, h)``.
    We round the corners (FOMM truncates with ``int()``: at most 1 px apart). FOMM then clips the
    box to the frame, which makes it non-square and ``ffmpeg scale`` stretches it; here the square
    is instead shifted back inside the image (same scale, no stretch), and only when ``L`` exceeds
    the image's shorter side is it shrunk to that side.

    Args:
        face_box: ``(x0, y0, x1, y1)`` detector box, pixels.
        image_shape: ``(H, W, ...)``.
        increase_area: FOMM's ``--increase`` (0.1).
        pad: keep the square centred on the face at full size even where it leaves the image (no
            shift, no shrink); the caller pads the image (:func:`fomm_crop` with ``pad=True``
            mirrors it). Used for full-frame paste-back, where a shifted crop would put the face
            off-centre in FOMM's frame.

    Returns:
        ``(x0, y0, x1, y1)`` ints with ``x1 - x0 == y1 - y0 >= 1``; without ``pad`` also
        ``0 <= x0 < x1 <= W``, ``0 <= y0 < y1 <= H``.
    """
    h_img, w_img = int(image_shape[0]), int(image_shape[1])
    left, top, right, bot = (float(v) for v in face_box)
    w, h = max(right - left, 1.0), max(bot - top, 1.0)
    side = int(round((1.0 + 2.0 * increase_area) * max(w, h)))
    side = max(1, side if pad else min(side, h_img, w_img))
    cx, cy = (left + right) / 2.0, (top + bot) / 2.0
    x0 = int(round(cx - side / 2.0))
    y0 = int(round(cy - side / 2.0))
    if pad:
        return x0, y0, x0 + side, y0 + side
    x0 = min(max(x0, 0), w_img - side)
    y0 = min(max(y0, 0), h_img - side)
    return x0, y0, x0 + side, y0 + side


def _crop_resize(image: np.ndarray, box: tuple[int, int, int, int], size: int) -> FaceCrop:
    """Cut ``image[y0:y1, x0:x1]`` and resize it to ``(size, size)`` exactly as FOMM ``demo.py``
    prepares its source: ``skimage.transform.resize`` defaults (bilinear, order=1, mode='reflect',
    Gaussian anti-aliasing when downscaling; uint8 -> float in [0, 1]).

    A box reaching past the image takes its outside pixels from the image mirrored at its edges
    (:func:`_reflect_indices`, ``cv2.BORDER_REFLECT``)."""
    from skimage.util import img_as_float

    if int(size) < 1:
        raise ValueError(f"crop size must be a positive number of pixels, not {size}")
    size = int(size)
    x0, y0, x1, y1 = (int(v) for v in box)
    h_img, w_img = image.shape[:2]
    if 0 <= x0 and 0 <= y0 and x1 <= w_img and y1 <= h_img:
        patch = image[y0:y1, x0:x1, :3]
    else:
        rows = _reflect_indices(y0, y1, h_img)
        cols = _reflect_indices(x0, x1, w_img)
        patch = image[rows[:, None], cols[None, :], :3]
    if patch.shape[:2] == (size, size):
        # already the frame size: what ``resize`` returns here (an identity zoom of the image as float,
        # exactly), without importing scipy.ndimage to compute it (cost: benchmarks/README.md, "animate peak RSS")
        crop = img_as_float(patch.astype(np.float32) if patch.dtype == np.float16 else patch).astype(np.float32)
    else:
        from skimage.transform import resize  # imports scipy.ndimage

        crop = resize(patch, (size, size), order=1, mode="reflect").astype(np.float32)
    crop = np.clip(crop, 0.0, 1.0)
    # Pixel centres: image x = x0 + (u + 0.5) * (x1 - x0) / S - 0.5 (skimage/OpenCV resize mapping).
    sx, sy = (x1 - x0) / size, (y1 - y0) / size
    affine = np.array([[sx, 0.0, x0 + 0.5 * sx - 0.5],
                       [0.0, sy, y0 + 0.5 * sy - 0.5]], dtype=np.float64)
    return FaceCrop(box=(int(x0), int(y0), int(x1), int(y1)), crop=np.ascontiguousarray(crop), affine=affine)


def _reflect_indices(start: int, stop: int, n: int) -> np.ndarray:
    """Indices ``start .. stop - 1`` of an axis of length ``n`` folded back into ``[0, n)`` by
    mirroring at the edges with the edge pixel repeated (OpenCV ``BORDER_REFLECT``,
    ``fedcba|abcdefgh|hgfedcb``; repeated for offsets beyond one image length)."""
    i = np.arange(start, stop)
    if n == 1:
        return np.zeros_like(i)
    m = np.mod(i, 2 * n)
    return np.where(m >= n, 2 * n - 1 - m, m)


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] < 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
    return image


def face_extent(face: Face) -> tuple[float, float, float, float]:
    """The box FOMM's rule grows: the detector box joined with the landmarks' bounding box.

    For S3FD (``fan``) boxes, which already hold the 68 points, this is the detector box itself, as
    in ``crop-video.py``. dlib's HOG boxes are tighter (brows to lower lip, about 80 % of an S3FD box)
    and the jaw/chin points fall outside them; joining the landmarks keeps the chin in the crop.
    Non-finite landmarks are ignored.

    Returns:
        ``(x0, y0, x1, y1)`` float pixels.
    """
    x0, y0, x1, y1 = (float(v) for v in face.box)
    pts = np.asarray(face.landmarks, dtype=np.float64).reshape(-1, 2)
    pts = pts[np.isfinite(pts).all(axis=1)]
    if len(pts):
        x0, y0 = min(x0, pts[:, 0].min()), min(y0, pts[:, 1].min())
        x1, y1 = max(x1, pts[:, 0].max() + 1.0), max(y1, pts[:, 1].max() + 1.0)  # x1, y1 exclusive
    return x0, y0, x1, y1


def fomm_crop(image: np.ndarray, face: Face, size: int,
              increase_area: float = FOMM_INCREASE_AREA, *, pad: bool = False) -> FaceCrop:
    """Crop ``image`` around ``face`` with FOMM's rule (:func:`fomm_square_box` of
    :func:`face_extent`) and resize it to the FOMM frame size (:func:`_crop_resize`: FOMM
    ``demo.py``'s ``skimage.transform.resize``).

    Args:
        image: ``(H, W, 3)`` uint8 RGB (or float in [0, 1]).
        face: the chosen face (its box joined with its landmarks, see :func:`face_extent`).
        size: the FOMM config's frame side ``S``, pixels (256 for vox-adv-256).
        increase_area: margin added on each side, as a fraction of the longer box side (FOMM: 0.1).
        pad: for a face near the image border, keep the square centred on the face at FOMM's size
            and fill its part outside the image by mirroring the image (``cv2.BORDER_REFLECT``)
            instead of shifting/shrinking the square inside the image. The full-frame
            compositor (:class:`talkhead.compose.Compositor`) pastes back only inside the image.

    Returns:
        :class:`FaceCrop` with a square ``box`` (inside the image unless ``pad``) and ``crop``
        ``(S, S, 3)`` float32; ``affine`` maps crop pixels to image pixels in both cases.

    Raises:
        ValueError: bad image shape or ``size`` < 1.
    """
    image = _check_image(image)
    box = fomm_square_box(face_extent(face), image.shape, increase_area, pad=pad)
    return _crop_resize(image, box, size)


def no_crop(image: np.ndarray, size: int) -> FaceCrop:
    """``--crop none``: the image already is a face crop; resize all of it to ``(S, S)`` (as FOMM
    ``demo.py`` does with its source). A non-square image is stretched; ``affine`` records the two
    scales so paste-back still lands on the right pixels.

    Args:
        image: ``(H, W, 3)`` uint8 RGB (or float in [0, 1]).
        size: the FOMM frame side ``S``, pixels.

    Returns:
        :class:`FaceCrop` with ``box == (0, 0, W, H)``.

    Raises:
        ValueError: bad image shape or ``size`` < 1.
    """
    image = _check_image(image)
    return _crop_resize(image, (0, 0, image.shape[1], image.shape[0]), size)


def crop_at_size(image: np.ndarray, face_crop: FaceCrop, size: int) -> FaceCrop:
    """The same box as ``face_crop``, cut from ``image`` again at another side ``size`` (the restore
    stage's ``2 S`` face, :mod:`talkhead.restore`): same resize rule and border mirroring as
    :func:`fomm_crop`, ``affine`` for the new size.

    Raises:
        ValueError: bad image shape or ``size`` < 1.
    """
    return _crop_resize(_check_image(image), face_crop.box, size)
