"""The face of a video: one fixed square crop for a whole clip, from faces detected on sampled frames.

Used by ``talkhead preprocess`` (training data) and ``talkhead reenact`` (the driving video), so both
crop a video the same way: :func:`face_detector` finds the confident faces in a frame (boxes joined
with their 68 landmarks, as for a still photo), :func:`face_track` groups the boxes of the sampled
frames into tracks by IoU with each track's first box and picks the speaker, and
:func:`fixed_crop_box` turns that track into one square crop by the FOMM rule (FOMM's
``crop-video.py``: ``iou_with_initial``, the "tube" ``join`` and ``compute_bbox``).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

from .constants import DETECT_EVERY_S, MAX_DETECTIONS
from .errors import NoFaceError
from .crop import FOMM_INCREASE_AREA, face_extent, fomm_square_box
from .ffmpeg import MediaInfo, probe, read_frames
from .landmarks import detect_faces, is_confident

__all__ = ["IOU_WITH_INITIAL", "box_iou", "face_detector", "sample_faces", "face_track", "fixed_crop_box"]

IOU_WITH_INITIAL = 0.25
"""FOMM ``crop-video.py`` ``--iou_with_initial``: a detection joins a track above this IoU."""


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two ``(x0, y0, x1, y1)`` boxes (continuous pixel coordinates)."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0.0, w) * max(0.0, h)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def face_track(detections: Sequence[np.ndarray], *, iou_min: float = IOU_WITH_INITIAL) -> tuple[np.ndarray, int]:
    """The speaker's boxes among per-frame face detections.

    Each detection joins the track whose *first* box overlaps it most, if that IoU exceeds
    ``iou_min`` (at most one box per track and frame; larger boxes are placed first), else it starts
    a new track - the tube rule of FOMM's ``crop-video.py``. The track present in the most frames
    wins; ties go to the larger mean box area.

    Args:
        detections: per sampled frame, an ``(k, 4)`` array of ``(x0, y0, x1, y1)`` boxes, pixels
            (``k`` may be 0).
        iou_min: IoU with a track's first box needed to join it.

    Returns:
        ``(boxes (n, 4) float64, n)``: the chosen track's boxes, one per frame it was seen in;
        ``(0, 4)`` and 0 when no frame holds a face.
    """
    tracks: list[dict] = []
    for boxes in detections:
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        order = np.argsort(-(boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), kind="stable")
        used: set[int] = set()
        for box in boxes[order]:
            best, best_iou = None, iou_min
            for ti, tr in enumerate(tracks):
                if ti in used:
                    continue
                iou = box_iou(tr["init"], box)
                if iou > best_iou:
                    best, best_iou = ti, iou
            if best is None:
                tracks.append({"init": box, "boxes": [box]})
                used.add(len(tracks) - 1)
            else:
                tracks[best]["boxes"].append(box)
                used.add(best)
    if not tracks:
        return np.zeros((0, 4)), 0
    area = lambda tr: float(np.mean([(b[2] - b[0]) * (b[3] - b[1]) for b in tr["boxes"]]))
    best = max(tracks, key=lambda tr: (len(tr["boxes"]), area(tr)))
    return np.stack(best["boxes"]), len(best["boxes"])


def fixed_crop_box(boxes: np.ndarray, frame_hw: tuple[int, int], *,
                   increase_area: float = FOMM_INCREASE_AREA) -> tuple[int, int, int, int]:
    """One square crop for a whole clip, covering every face box (FOMM ``crop-video.py`` rule).

    The union ("tube", ``crop-video.py``'s ``join``) of ``boxes``, of width ``w`` and height ``h``, is
    grown by ``compute_bbox``'s rule to a square of side ``(1 + 2 * increase_area) * max(w, h)``
    about its centre, then moved inside the frame (side capped at ``min(H, W)``) instead of being
    clipped - exactly :func:`talkhead.crop.fomm_square_box`, the rule the inference crop uses, applied
    to the union.

    Args:
        boxes: ``(n, 4)`` face boxes ``(x0, y0, x1, y1)`` (``x1, y1`` exclusive), full-resolution pixels.
        frame_hw: ``(H, W)`` of the frame, pixels.
        increase_area: growth per side, a fraction of the longer side (FOMM default 0.1).

    Returns:
        ``(x0, y0, x1, y1)`` integer pixels with ``x1 - x0 == y1 - y0``, inside the frame.

    Raises:
        ValueError: no boxes.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(boxes) == 0:
        raise ValueError("fixed_crop_box needs at least one face box")
    union = (boxes[:, 0].min(), boxes[:, 1].min(), boxes[:, 2].max(), boxes[:, 3].max())
    return fomm_square_box(union, (int(frame_hw[0]), int(frame_hw[1])), increase_area)


def face_detector(landmarker, device: str, min_score: Optional[float]) -> Callable[[np.ndarray], np.ndarray]:
    """``detect(frame (H, W, 3) uint8) -> (k, 4)`` boxes of the confident faces in a frame.

    ``landmarker`` is a backend name of :func:`talkhead.landmarks.detect_faces` or a callable returning
    :class:`talkhead.landmarks.Face` objects. As for a still (:func:`talkhead.landmarks.select_face`), faces
    that are not confident (:func:`talkhead.landmarks.is_confident` with ``min_score``) are dropped, and
    each box is the detector box joined with the 68 landmarks (:func:`talkhead.crop.face_extent`).
    """
    if callable(landmarker):
        fn = landmarker
    else:
        def fn(image):
            return detect_faces(image, backend=landmarker, device=device)

    def detect(image: np.ndarray) -> np.ndarray:
        try:
            faces = fn(image)
        except NoFaceError:
            faces = []
        boxes = []
        for f in faces or []:
            if not hasattr(f, "box"):  # a plain (x0, y0, x1, y1) box from a custom landmarker
                boxes.append(f)
                continue
            if not hasattr(f, "score") or is_confident(f, min_score):
                boxes.append(face_extent(f) if getattr(f, "landmarks", None) is not None else f.box)
        return np.asarray(boxes, dtype=np.float64).reshape(-1, 4)

    return detect


def sample_faces(path, detect: Callable[[np.ndarray], np.ndarray], *, every_s: float = DETECT_EVERY_S,
                 max_detections: int = MAX_DETECTIONS, info: Optional[MediaInfo] = None
                 ) -> tuple[list[np.ndarray], tuple[int, int], float]:
    """Face boxes on frames sampled over a video: the one sampling loop of ``preprocess`` and ``reenact``.

    Frames are taken every ``every_s`` seconds from the start (fewer, spread over the clip, when that
    would exceed ``max_detections``); a clip shorter than one sampling step gives its first frame.

    Args:
        path: the video.
        detect: ``frame (H, W, 3) uint8 -> (k, 4)`` boxes (:func:`face_detector`).
        every_s: seconds between samples. max_detections: the most frames sampled.
        info: the video's :func:`talkhead.ffmpeg.probe` when the caller has it (else probed here).

    Returns:
        ``(detections, (H, W), step_s)``: one ``(k, 4)`` array per sampled frame (empty list when no
        frame decodes), the frame size in pixels, and the sampling step used, seconds.

    Raises:
        FFmpegError: the video cannot be opened or decoded.
    """
    info = info if info is not None else probe(path)
    width, height = info.size
    rate = 1.0 / every_s
    if info.duration_s > 0:
        rate = min(rate, max_detections / info.duration_s)
    detections: list[np.ndarray] = []
    # the fps filter yields nothing for a clip shorter than one sampling step: then take its first frame
    for vf, limit in ((f"fps={rate:.6f}", max_detections), ("null", 1)):
        _, frames = read_frames(path, vf, (width, height))
        try:
            for frame in frames:
                detections.append(detect(np.ascontiguousarray(frame)))
                if len(detections) >= limit:
                    break
        finally:
            frames.close()
        if detections:
            break
    return detections, (int(height), int(width)), 1.0 / rate
