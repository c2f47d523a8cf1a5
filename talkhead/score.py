"""Lip sync of any talking-face MP4, measured: SyncNet LSE-C, LSE-D and the AV offset
(``talkhead score``; the figures lip-sync papers since Wav2Lip report).

For each video (:func:`score_video`):

1. frames resampled to 25 fps (ffmpeg ``fps=25``), audio decoded to 16 kHz mono
   (:func:`talkhead.audio.load_speech`); frame 0 and sample 0 are taken to start together;
2. face boxes on every frame with our landmarker (:func:`talkhead.facetrack.face_detector`), one
   face followed by IoU with the previous frame's box (the largest face where there is none),
   missing frames filled by linear interpolation of the box corners between detections (the
   reference's ``run_pipeline.py`` rule), held at the ends (:func:`fill_track`);
3. the reference's crop of each frame (:func:`talkhead.syncnet.crop_track`: boxes median-filtered
   over 13 frames, square of side 2.8 s extended towards the mouth, grey padding, 224 x 224);
4. :func:`talkhead.syncnet.score_clip`: 13 MFCCs at 100 Hz, 5-frame video windows against 0.2 s
   audio windows at offsets -15..15 frames; LSE-D, LSE-C, AV offset.

Offset sign: **positive = the audio is late** (the sound of a frame is heard after the frame is
shown); a clip whose audio is delayed by k frames scores ``+k`` (+40 k ms), as ``talkhead evaluate``'s
AV-Off; syncnet_python prints the opposite sign.

Differences from the reference pipeline (joonson/syncnet_python): its faces come from S3FD and it
drops face tracks of 4 s or less; here the boxes are our landmarker's (the detector box joined with
the 68 landmarks, so usually a little larger than S3FD's and reaching the chin), and any clip of
at least 6 frames is scored (a track shorter than 13 frames is smoothed over the largest odd number
of frames it has).

Memory: the frames are decoded twice (once to find the faces, once to cut the crops), so only the
224 x 224 crops are held: 150 kB a frame, about 225 MB per minute of video, plus one batch of
windows (20 windows, about 60 MB of float32).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from .constants import FPS
from .errors import InputError, NoFaceError, TalkheadError
from .facetrack import box_iou
from .progress import Progress

__all__ = ["SCORE_VF", "VideoScore", "fill_track", "face_boxes", "score_video", "score_videos", "summary"]

SCORE_VF = f"fps={FPS}"
"""The ffmpeg filter that resamples any video to SyncNet's 25 fps."""

SCORE_STAGES = ("faces", "crops", "syncnet")
"""The stages :data:`talkhead.progress.Progress` callbacks see here: ``"faces"`` (frames), ``"crops"``
(frames), ``"syncnet"`` (windows)."""


def fill_track(boxes: Sequence[Optional[np.ndarray]]) -> np.ndarray:
    """One box per frame from per-frame detections with gaps.

    Args:
        boxes: per frame, a ``(4,)`` box ``(x1, y1, x2, y2)`` in pixels or ``None`` (no face).

    Returns:
        ``(T, 4)`` float64: detected boxes kept, the corners of missing ones interpolated linearly
        between the nearest detections before and after (the reference's rule), and held constant
        before the first and after the last detection.

    Raises:
        NoFaceError: no frame has a box.
    """
    seen = [i for i, b in enumerate(boxes) if b is not None]
    if not seen:
        raise NoFaceError("no face found in any frame")
    known = np.stack([np.asarray(boxes[i], dtype=np.float64) for i in seen])
    t = np.arange(len(boxes))
    return np.stack([np.interp(t, seen, known[:, c]) for c in range(4)], axis=1)


def _frames(path: Path):
    from .ffmpeg import read_frames

    return read_frames(path, SCORE_VF)[1]


def face_boxes(path: str | os.PathLike, detect: Callable[[np.ndarray], np.ndarray], *,
               progress: Optional[Callable[[int], None]] = None) -> np.ndarray:
    """The face box of every 25-fps frame of a video (steps 1-2 of the module doc).

    Args:
        path: the video.
        detect: ``frame (H, W, 3) uint8 RGB -> (k, 4)`` boxes (:func:`talkhead.facetrack.face_detector`).
        progress: called with the number of frames done so far.

    Returns:
        ``(T, 4)`` float64 boxes ``(x1, y1, x2, y2)``, pixels, one per frame (:func:`fill_track`).

    Raises:
        NoFaceError: no frame holds a face (or the video has no frame).
        FFmpegError: the video cannot be decoded.
    """
    per_frame: list[Optional[np.ndarray]] = []
    last: Optional[np.ndarray] = None
    frames = _frames(Path(path))
    try:
        for frame in frames:
            found = np.asarray(detect(np.ascontiguousarray(frame)), dtype=np.float64).reshape(-1, 4)
            box = None
            if len(found):
                if last is not None:
                    ious = [box_iou(last, b) for b in found]
                    best = int(np.argmax(ious))
                    box = found[best] if ious[best] > 0 else None
                if box is None and last is None:
                    box = found[int(np.argmax((found[:, 2] - found[:, 0]) * (found[:, 3] - found[:, 1])))]
            per_frame.append(box)
            last = box if box is not None else last
            if progress is not None:
                progress(len(per_frame))
    finally:
        frames.close()
    if not per_frame:
        raise NoFaceError(f"{path}: the video has no frame")
    try:
        return fill_track(per_frame)
    except NoFaceError:
        raise NoFaceError(f"{path}: no face found in any of its {len(per_frame)} frames") from None


@dataclass(frozen=True, eq=False)
class VideoScore:
    """The outcome of scoring one video.

    Attributes:
        path: the video.
        scores: :class:`talkhead.syncnet.SyncScores`, or ``None`` when it failed.
        error: one line saying why it failed, or ``None``.
        num_frames: 25-fps frames scored (0 on failure before the faces were found).
        duration_s: the audio's duration, seconds (0.0 when unknown).
    """

    path: Path
    scores: Optional[object] = None
    error: Optional[str] = None
    num_frames: int = 0
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.scores is not None

    def as_dict(self) -> dict:
        """Plain values for JSON: ``video``, ``ok``, ``error`` and (when scored) ``lse_c``, ``lse_d``,
        ``offset_frames``, ``offset_ms``, ``num_windows``, ``num_frames``, ``duration_s``."""
        out = {"video": str(self.path), "ok": self.ok, "error": self.error, "num_frames": self.num_frames,
               "duration_s": round(self.duration_s, 3)}
        if self.scores is not None:
            out.update(self.scores.as_dict())
        return out


def score_video(model, path: str | os.PathLike, *, detect: Callable[[np.ndarray], np.ndarray],
                progress: Optional[Progress] = None, batch_size: int = 20) -> VideoScore:
    """SyncNet scores of one video (the module doc's steps), raising on bad input.

    Args:
        model: a loaded :class:`talkhead.syncnet.SyncNet` (eval mode) or any
            :class:`talkhead.syncnet.EmbeddingModel`.
        path: any video ffmpeg decodes, with a face and an audio track.
        detect: ``frame -> (k, 4)`` boxes (:func:`talkhead.facetrack.face_detector`).
        progress: ``progress(stage, done, total)`` (see :data:`Progress`).
        batch_size: SyncNet windows per forward pass.

    Returns:
        :class:`VideoScore` with ``scores`` set.

    Raises:
        InputError: the file is missing, or shorter than 6 frames of video or audio
        (:func:`talkhead.syncnet.score_clip`); AudioError: no audio track, silent; NoFaceError: no
        face; FFmpegError: undecodable.
    """
    from .audio import load_speech
    from .ffmpeg import probe
    from .syncnet import score_clip, smooth_track, syncnet_crop
    from .syncnet.crop import SMOOTH_KERNEL

    path = Path(path)
    if not path.is_file():
        raise InputError(f"video not found: {path}")
    info = probe(path)
    if not info.has_audio:
        raise InputError(f"{path} has no audio track: nothing to score the lips against")
    speech = load_speech(path)
    expected = max(1, int(round(info.duration_s * FPS)))

    def stage(name: str):
        if progress is None:
            return None
        return lambda done, total=None: progress(name, done, total if total is not None else max(expected, done))

    boxes = face_boxes(path, detect, progress=stage("faces"))
    # (T, 3) x, y, s: the reference's 13-frame median filter (zero-padded at the ends, as scipy's);
    # a track shorter than 13 frames (the reference never scores one) gets the largest odd width <= T,
    # so the padding never outnumbers the boxes
    track = smooth_track(boxes, min(SMOOTH_KERNEL, len(boxes) - (1 - len(boxes) % 2)))
    on_crop = stage("crops")
    crops = np.empty((len(track), 224, 224, 3), dtype=np.uint8)
    n = 0
    frames = _frames(path)
    try:
        for frame in frames:
            if n >= len(track):
                break
            x, y, s = track[n]
            crops[n] = syncnet_crop(frame, x, y, s)
            n += 1
            if on_crop is not None:
                on_crop(n, len(track))
    finally:
        frames.close()
    with warnings.catch_warnings():  # scipy's note on a clip of fewer than 9 windows (zero-padded, as the reference)
        warnings.filterwarnings("ignore", message="kernel_size exceeds volume extent")
        scores = score_clip(model, crops[:n], speech.samples, batch_size=batch_size, progress=stage("syncnet"))
    return VideoScore(path=path, scores=scores, num_frames=n, duration_s=speech.duration_s)


def score_videos(model, paths: Sequence[str | os.PathLike], *, detect: Callable[[np.ndarray], np.ndarray],
                 progress: Optional[Progress] = None, on_video: Optional[Callable[[VideoScore], None]] = None,
                 batch_size: int = 20) -> list[VideoScore]:
    """:func:`score_video` of each video; a video that fails (a :class:`talkhead.errors.TalkheadError`)
    gets its one-line reason in :attr:`VideoScore.error` and the others are still scored.

    Args:
        on_video: called with each :class:`VideoScore` as it is done.

    Returns:
        One :class:`VideoScore` per path, in order.
    """
    out = []
    for p in paths:
        try:
            item = score_video(model, p, detect=detect, progress=progress, batch_size=batch_size)
        except TalkheadError as exc:
            item = VideoScore(path=Path(p), error=(str(exc).strip().splitlines() or [type(exc).__name__])[0])
        out.append(item)
        if on_video is not None:
            on_video(item)
    return out


def summary(items: Sequence[VideoScore]) -> dict:
    """The mean over the scored videos: ``{"videos", "scored", "failed", "lse_c", "lse_d",
    "offset_frames", "abs_offset_frames"}`` (the means are ``None`` when nothing was scored)."""
    done = [i.scores for i in items if i.scores is not None]

    def mean(values):
        return float(np.mean(values)) if done else None

    return {"videos": len(items), "scored": len(done), "failed": len(items) - len(done),
            "lse_c": mean([s.lse_c for s in done]), "lse_d": mean([s.lse_d for s in done]),
            "offset_frames": mean([s.offset for s in done]), "abs_offset_frames": mean([abs(s.offset) for s in done])}


def load_scorer(model_path: str | os.PathLike | None = None, models_dir: str | os.PathLike | None = None, *,
                device: str = "cpu"):
    """The SyncNet to score with.

    Args:
        model_path: a SyncNet file in the released key layout; its widths are read from the file
            (a full-size ``syncnet_v2.model`` or one of other widths, e.g. a tiny test file). ``None``:
            the installed ``syncnet/syncnet_v2.model`` of the models directory, checked strictly
            against the released widths.
        models_dir: the models directory (:func:`talkhead.store.resolve_models_dir`).
        device: torch device string.

    Returns:
        :class:`talkhead.syncnet.SyncNet` in eval mode.

    Raises:
        InputError: no file given and none installed (names ``talkhead download syncnet``).
        CheckpointError / StateDictMismatchError: a bad file (:func:`talkhead.syncnet.load_syncnet`).
    """
    from .syncnet import load_syncnet

    if model_path is not None:
        p = Path(model_path)
        if not p.is_file():
            raise InputError(f"SyncNet file not found: {p}")
        return load_syncnet(p, infer_widths=True, device=device)
    from .store import model_file

    p = model_file(models_dir, "syncnet", "checkpoint")
    if not p.is_file():
        raise InputError(f"the SyncNet weights are not installed ({p}): run `talkhead download syncnet` "
                         "(research use only, see models/syncnet.md) or give --syncnet FILE")
    return load_syncnet(p, device=device)
