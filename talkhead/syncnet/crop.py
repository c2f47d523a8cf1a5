"""The face crop SyncNet was trained and is scored on (joonson/syncnet_python ``run_pipeline.py``
``crop_video``), from face boxes of a track.

For a box of half-size ``s = max(w, h) / 2`` centred at ``(x, y)`` (the three median-filtered over
13 frames of the track, :func:`smooth_track`), the crop is the square of side ``2 s (1 + c)`` with
``c`` = :data:`CROP_SCALE` = 0.4 (so ``2.8 s``): columns ``x - 1.4 s .. x + 1.4 s`` and rows
``y - s .. y + 1.8 s``, i.e. from the box's top edge, extended downwards towards the mouth and chin.
The frame is first padded by ``int(s (1 + 2c))`` pixels of grey 110 on every side, so a box near the
border still gives a full crop; the crop is resized to 224 x 224 with bilinear interpolation
(``cv2.resize`` default). Slice bounds are truncated to ints as the reference's ``int()`` does.

The reference detects faces with S3FD every frame and links them into tracks (IoU > 0.5, at most
``num_failed_det`` = 25 missed frames, box corners linearly interpolated between detections); it
drops tracks of 100 frames (4 s) or fewer. Those stages are not here: :func:`syncnet_crop` takes any
box, whatever found it.
"""
from __future__ import annotations

import numpy as np
from scipy.signal import medfilt

__all__ = ["CROP_SCALE", "PAD_VALUE", "SMOOTH_KERNEL", "crop_track", "smooth_track", "syncnet_crop"]

CROP_SCALE = 0.4
"""The reference's ``--crop_scale``: the crop's half-side is ``s (1 + CROP_SCALE)``."""
PAD_VALUE = 110
"""Grey level of the padding around the frame (all channels)."""
SMOOTH_KERNEL = 13
"""Median filter width (frames) over a track's box centres and sizes."""
CROP_SIZE = 224
"""Side of the output crop, pixels."""


def smooth_track(boxes: np.ndarray, kernel_size: int = SMOOTH_KERNEL) -> np.ndarray:
    """Box centres and half-sizes of a face track, median-filtered over time (the reference's
    ``dets`` after ``signal.medfilt(..., kernel_size=13)``, which pads the ends with zeros).

    Args:
        boxes: ``(T, 4)`` boxes ``(x1, y1, x2, y2)`` in pixels, one per frame of the track.
        kernel_size: odd median filter width.

    Returns:
        ``(T, 3)`` float64 ``(x, y, s)``: centre column, centre row, half-size ``max(w, h) / 2``.

    Raises:
        ValueError: not ``(T, 4)`` with ``T >= 1``, or an even kernel.
    """
    b = np.asarray(boxes, dtype=np.float64)
    if b.ndim != 2 or b.shape[1] != 4 or b.shape[0] < 1:
        raise ValueError(f"smooth_track needs (T, 4) boxes, got shape {b.shape}")
    if kernel_size % 2 != 1:
        raise ValueError(f"kernel_size must be odd, got {kernel_size}")
    s = np.maximum(b[:, 3] - b[:, 1], b[:, 2] - b[:, 0]) / 2
    y = (b[:, 1] + b[:, 3]) / 2
    x = (b[:, 0] + b[:, 2]) / 2
    return np.stack([medfilt(x, kernel_size), medfilt(y, kernel_size), medfilt(s, kernel_size)], axis=1)


def syncnet_crop(frame: np.ndarray, x: float, y: float, s: float, crop_scale: float = CROP_SCALE,
                 size: int = CROP_SIZE) -> np.ndarray:
    """Cut the SyncNet face crop of one frame.

    Args:
        frame: ``(H, W, 3)`` uint8 (any channel order; the output keeps it).
        x, y: box centre, pixels (column, row); s: box half-size, pixels (> 0), e.g. a row of
            :func:`smooth_track`.
        crop_scale: ``c`` of the module doc (0.4).
        size: output side (224).

    Returns:
        ``(size, size, 3)`` uint8.

    Raises:
        ValueError: a frame that is not ``(H, W, 3)``, ``s <= 0``, or a box so far outside the
            frame that the crop would be empty.
    """
    import cv2

    img = np.asarray(frame)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"syncnet_crop needs an (H, W, 3) frame, got shape {img.shape}")
    if not s > 0:
        raise ValueError(f"syncnet_crop needs a positive box half-size, got {s}")
    pad = int(s * (1 + 2 * crop_scale))
    padded = np.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode="constant", constant_values=PAD_VALUE)
    my, mx = y + pad, x + pad
    rows = slice(max(int(my - s), 0), int(my + s * (1 + 2 * crop_scale)))
    cols = slice(max(int(mx - s * (1 + crop_scale)), 0), int(mx + s * (1 + crop_scale)))
    face = padded[rows, cols]
    if face.shape[0] < 1 or face.shape[1] < 1:
        raise ValueError(f"syncnet_crop: the box centred at ({x:.1f}, {y:.1f}) with half-size {s:.1f} lies "
                         f"outside the {img.shape[1]}x{img.shape[0]} frame")
    return cv2.resize(face, (size, size))


def crop_track(frames, boxes: np.ndarray, crop_scale: float = CROP_SCALE) -> np.ndarray:
    """The SyncNet crops of a face track (the reference ``crop_video`` without its video file).

    Args:
        frames: ``T`` frames ``(H, W, 3)`` uint8 (an array ``(T, H, W, 3)`` or a sequence), RGB for
            :func:`talkhead.syncnet.scoring.score_clip`.
        boxes: ``(T, 4)`` face boxes ``(x1, y1, x2, y2)``, one per frame (missing detections already
            filled in, e.g. interpolated as the reference does).
        crop_scale: see :func:`syncnet_crop`.

    Returns:
        ``(T, 224, 224, 3)`` uint8: :func:`syncnet_crop` of each frame at its :func:`smooth_track` row.

    Raises:
        ValueError: a frame count other than the box count, or the errors of the two functions.
    """
    track = smooth_track(boxes)
    if len(frames) != track.shape[0]:
        raise ValueError(f"crop_track: {len(frames)} frames but {track.shape[0]} boxes")
    return np.stack([syncnet_crop(frame, x, y, s, crop_scale) for frame, (x, y, s) in zip(frames, track)])
