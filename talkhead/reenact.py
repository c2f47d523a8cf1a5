"""Video-driven reenactment: one face photo + a driving video -> MP4 of the photo moving like the video.

This is what FOMM's ``demo.py`` (and avatarify) does, streamed, as a :class:`VideoMotion` source of the
one pipeline (:meth:`talkhead.pipeline.Pipeline.run`). The driving side of the data path::

    video  -> probe (fps, frames, audio) -> faces on frames sampled every 0.5 s -> speaker's track
           -> ONE fixed square crop for the clip (talkhead.facetrack, the training data's rule)
           -> ffmpeg: crop + scale to S x S, frame by frame
           -> renderer.detect per batch -> kp_detected (b,K,...)
           -> relative_kp(kp_source, kp_detected, kp_driving_initial) -> kp_driving (b,K,...)

and the pipeline renders each batch, pastes it back into the photo (``--frame full``) and encodes it
with the video's own audio track at the driving video's frame rate (or ``--fps``).

Motion transfer follows ``first-order-model/demo.py``: with ``relative`` (``--relative``), each driving
frame's keypoints move the photo's by their displacement from the *initial* driving frame
(``normalize_kp``: relative movement, relative jacobian, ``adapt_scale`` = ``--adapt_scale``);
without it (``--absolute``) the driving keypoints are used as they are. The initial frame is frame 0,
or with ``find_best_frame`` the frame whose face is closest to the photo's (:func:`find_best_frame`).
``demo.py`` then renders forward and backward from that frame with it as the initial frame for
both halves, which is the same as one pass over the video with that initial frame - what is done
here, so frames are decoded, rendered and encoded in one stream (only ``batch_size`` frames in
memory; a second, cheap decode finds the best frame's keypoints first).

Bad driving videos (no video stream, undecodable, no frames, longer than ``max_seconds``, no
face in any sampled frame) raise :class:`talkhead.errors.InputError` (or its subclass
:class:`~talkhead.errors.NoFaceError`) before anything is written. A face lost for a few frames
mid-clip does not matter: the crop is fixed for the whole clip.

Use it with a :class:`talkhead.pipeline.Pipeline`::

    pipe = load_reenact_pipeline(ReenactOptions(frame="crop"))
    result = reenact(pipe, "photo.png", "driving.mp4", "out.mp4")
    # the same: pipe.run("photo.png", VideoMotion("driving.mp4"), "out.mp4")
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import torch

from .errors import FFmpegError, InputError, NoFaceError
from .keypoints import Keypoints
from .options import ReenactOptions
from .pipeline import MotionRun, Pipeline, Result
from .progress import Progress

__all__ = ["ReenactResult", "VideoMotion", "load_reenact_pipeline", "reenact", "normalized_landmarks",
           "find_best_frame", "default_output", "LANDMARK_SIZE"]

LANDMARK_SIZE = 256
"""Side of the driving crops the 68 landmarks are found on for ``find_best_frame``, pixels (FOMM
``demo.py`` finds them on its 256 x 256 frames; a smaller renderer frame is not used for this)."""


@dataclass
class ReenactResult(Result):
    """What one :func:`reenact` call produced: a :class:`~talkhead.pipeline.Result` (its ``fps`` the
    driving video's or ``--fps``; ``kp_driving`` the transferred keypoints, only when kept) plus these.

    Attributes:
        driving_crop_box: the driving video's fixed crop, video pixels (``None`` with ``crop="none"``).
        initial_frame: index of the initial driving frame (0 unless ``find_best_frame``).
        movement_scale: the adaptive movement scale applied (1.0 unless ``relative`` and ``adapt_scale``).
    """

    driving_crop_box: Optional[tuple] = None
    initial_frame: int = 0
    movement_scale: float = 1.0


def default_output(photo: str | Path, video: str | Path) -> Path:
    """The output when none is given: ``<video stem>-<photo stem>.mp4`` beside the driving video."""
    photo, video = Path(photo), Path(video)
    return video.with_name(f"{video.stem}-{photo.stem}.mp4")


# ============================================================================== best frame (FOMM demo)
def normalized_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """68 landmarks centred on their mean and divided by the square root of their convex hull's area
    (FOMM ``demo.py`` ``find_best_frame.normalize_kp``): invariant to translation and scale.

    Args:
        landmarks: ``(68, 2)`` ``(x, y)`` pixels (any image; only shape matters).

    Returns:
        ``(68, 2)`` float64.

    Raises:
        ValueError: degenerate landmarks (no 2-D hull).
    """
    from scipy.spatial import ConvexHull, QhullError

    kp = np.asarray(landmarks, dtype=np.float64)[:, :2]
    kp = kp - kp.mean(axis=0, keepdims=True)
    try:
        area = ConvexHull(kp).volume  # 2-D: the area
    except QhullError as exc:
        raise ValueError(f"landmarks have no 2-D convex hull: {exc}") from None
    return kp / np.sqrt(area)


def find_best_frame(source_landmarks: np.ndarray, frames: Iterator[np.ndarray],
                    landmarks_of: Callable[[np.ndarray], Optional[np.ndarray]],
                    progress: Optional[Callable[[int], None]] = None) -> tuple[int, np.ndarray]:
    """Index of the driving frame whose face is closest to the photo's (FOMM ``demo.py`` ``find_best_frame``).

    Distance: ``sum((normalized_landmarks(source) - normalized_landmarks(frame)) ** 2)``. Frames
    where ``landmarks_of`` finds no face get distance ``inf`` (the reference would stop there).

    Args:
        source_landmarks: ``(68, 2)`` landmarks of the photo's face.
        frames: driving frames (crops), streamed.
        landmarks_of: ``frame -> (68, 2)`` landmarks or ``None``.
        progress: called with the number of frames searched so far.

    Returns:
        ``(index, distances (T,) float64)``; index 0 when no frame has a face.
    """
    ref = normalized_landmarks(source_landmarks)
    distances = []
    for i, frame in enumerate(frames):
        lm = landmarks_of(frame)
        d = np.inf
        if lm is not None:
            try:
                d = float(((ref - normalized_landmarks(lm)) ** 2).sum())
            except ValueError:
                d = np.inf
        distances.append(d)
        if progress:
            progress(i + 1)
    distances = np.asarray(distances, dtype=np.float64)
    best = int(np.argmin(distances)) if len(distances) and np.isfinite(distances).any() else 0
    return best, distances


# ============================================================================== the motion source
def _driving_filter(box: Optional[tuple], size: int, fps: Optional[float]) -> str:
    """ffmpeg ``-vf`` chain: [fps resampling,] rgb24, the fixed crop, area scaling to ``size``."""
    chain = [f"fps={fps:.6f}"] if fps is not None else []
    chain.append("format=rgb24")
    if box is not None:
        side = box[2] - box[0]
        chain.append(f"crop={side}:{side}:{box[0]}:{box[1]}")
    chain.append(f"scale={size}:{size}:flags=area")
    return ",".join(chain)


def _to_tensor(frames: np.ndarray, device) -> torch.Tensor:
    """``(b, S, S, 3)`` uint8 -> ``(b, 3, S, S)`` float32 in [0, 1] on ``device``."""
    return torch.from_numpy(frames).to(device).permute(0, 3, 1, 2).float().div_(255.0)


def _resize(crop: np.ndarray, side: int) -> np.ndarray:
    import cv2

    if crop.shape[0] == side:
        return crop
    interp = cv2.INTER_AREA if crop.shape[0] > side else cv2.INTER_CUBIC
    return cv2.resize(crop, (side, side), interpolation=interp)


class VideoMotion:
    """A :class:`talkhead.pipeline.MotionSource` driven by a video of a face: the head motion of its
    speaker, transferred to the photo's keypoints (FOMM ``demo.py``; see the module docstring).

    Options come from the pipeline's :class:`~talkhead.options.ReenactOptions` (``relative``,
    ``adapt_scale``, ``find_best_frame``, ``fps``, ``max_seconds``, ``crop``); plain
    :class:`~talkhead.options.AnimateOptions` mean those options' defaults. The output has the video's
    frame rate (or ``fps``) and its audio track, when it has one. Frames are streamed: decoded,
    detected and transferred ``batch_size`` at a time, never held whole.

    ``--save-keypoints`` arrays: ``kp_driving_value (T,K,2)`` / ``kp_driving_jacobian (T,K,2,2)`` (what
    drove the renderer), ``kp_detected_*`` (the driving frames' own keypoints),
    ``kp_driving_initial_*`` ``(1,K,...)``, ``kp_source_*`` ``(1,K,...)``, ``crop_box (4,)``,
    ``crop_affine (2,3)``, ``driving_crop_box (4,)`` (-1s with ``crop="none"``), ``initial_frame``,
    ``movement_scale`` and ``fps``.

    Args:
        video: the driving video (anything ffmpeg decodes), with or without audio.

    Raises:
        InputError (:meth:`prepare`): not decodable, no video stream, no frames, longer than
            ``max_seconds``; (while streaming) keypoints too degenerate for ``adapt_scale``.
        NoFaceError (:meth:`prepare`): no face in any sampled frame (or, with ``find_best_frame``, no
            landmarks in the photo).
    """

    needs_generator = False

    def __init__(self, video: str | Path):
        self.path = Path(video)
        self.inputs = ((self.path, "driving video"),)
        self.fps = 25.0
        self.audio: Optional[Path] = None
        self.num_frames = 0
        self.box: Optional[tuple] = None
        self.initial_frame = 0
        self.scale = 1.0
        self._vf = ""
        self._kept: dict[str, list] = {}
        self._kp_initial: Optional[Keypoints] = None

    @staticmethod
    def _options(pipeline: Pipeline) -> ReenactOptions:
        opts = pipeline.options
        if isinstance(opts, ReenactOptions):
            return opts
        return ReenactOptions(**{k: getattr(opts, k) for k in opts.__dataclass_fields__})

    def check(self, pipeline: Pipeline) -> None:
        """Nothing to refuse before the files are read: every renderer can be driven by a video."""

    def prepare(self, pipeline: Pipeline) -> None:
        """Probe the video (frame rate, frames, audio, ``max_seconds``) and, with ``crop="auto"``, find
        its fixed face crop (:func:`talkhead.facetrack.sample_faces`)."""
        from .ffmpeg import count_frames, probe
        from .facetrack import face_detector, face_track, fixed_crop_box, sample_faces

        opts, path = self._options(pipeline), self.path
        try:
            num_frames = count_frames(path.absolute())  # first: a stream without frames cannot be probed
            if not num_frames:
                raise InputError(f"driving video '{path}' has no video frames")
            info = probe(path.absolute())
        except FFmpegError as exc:
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            if reason.endswith("has no video stream"):
                raise InputError(f"driving video '{path}' has no video stream") from None
            raise InputError(f"cannot read driving video '{path}': {reason}") from None
        duration = num_frames / info.fps
        # a variable-frame-rate stream (phones record VFR) has fewer or more frames than its duration
        # at its average rate; its duration is the container's, and its frames are resampled below
        vfr = info.duration_s > 0 and abs(num_frames - info.duration_s * info.fps) > max(2.0, 0.02 * num_frames)
        if vfr:
            duration = info.duration_s
        if opts.max_seconds is not None and duration > opts.max_seconds:
            raise InputError(f"driving video '{path}' lasts {duration:.2f} s, more than --max-seconds "
                             f"{opts.max_seconds:g}")
        self.audio = path if info.has_audio else None
        self.fps = float(opts.fps) if opts.fps is not None else info.fps
        # frames are always read at the output rate (ffmpeg's fps filter: constant, time-aligned), so a
        # VFR video is read and written at one explicit rate and stays in sync with its audio
        self.num_frames = num_frames if opts.fps is None and not vfr else max(1, int(round(duration * self.fps)))
        if opts.crop == "auto":
            detections, frame_hw, step = sample_faces(path, face_detector(pipeline.faces, str(pipeline.device), None),
                                                      info=info)
            if not detections:
                raise InputError(f"driving video '{path}' has no decodable video frames")
            boxes, seen = face_track(detections)
            if seen == 0:
                n = len(detections)
                raise NoFaceError(f"no face found in driving video '{path}' ({n} frame{'s' * (n != 1)} sampled "
                                  f"every {step:.2g} s from the start)")
            self.box = tuple(int(v) for v in fixed_crop_box(boxes, frame_hw))
        self._vf = _driving_filter(self.box, pipeline.frame_size, self.fps)

    def _frames(self, vf: str, size: int):
        from .ffmpeg import read_frames

        return read_frames(self.path, vf, (size, size))[1]

    def _best_initial(self, run: MotionRun, opts: ReenactOptions) -> Optional[Keypoints]:
        """With ``find_best_frame``: the initial frame's index and keypoints; else ``None`` (frame 0)."""
        pipeline, size = run.pipeline, run.pipeline.frame_size

        def landmarks_of(image: np.ndarray) -> Optional[np.ndarray]:
            from .landmarks import select_face

            try:
                face = select_face(pipeline.faces(image))
            except NoFaceError:
                return None
            lm = getattr(face, "landmarks", None)
            return None if lm is None or len(lm) < 3 else np.asarray(lm, dtype=np.float64)

        lm_size = max(size, LANDMARK_SIZE)
        face = run.photo.face
        if face is not None and face.landmarks is not None and len(face.landmarks) >= 3:
            src_lm = np.asarray(face.landmarks, dtype=np.float64)
        else:
            crop = run.photo.crop.crop
            src_lm = landmarks_of(np.clip(np.round(_resize(crop, lm_size) * 255), 0, 255).astype(np.uint8))
            if src_lm is None:
                raise NoFaceError(f"no face landmarks found in '{run.photo.path}' for --find-best-frame")
        frames = self._frames(_driving_filter(self.box, lm_size, self.fps), lm_size)
        try:
            total = self.num_frames
            cb = (lambda done: run.progress("best-frame", done, max(done, total))) if run.progress else None
            self.initial_frame, _ = find_best_frame(src_lm, frames, landmarks_of, cb)
        finally:
            frames.close()
        frames = self._frames(self._vf, size)
        try:
            for i, frame in enumerate(frames):
                if i == self.initial_frame:
                    return pipeline.renderer.detect(_to_tensor(frame[None].copy(), pipeline.device))
        finally:
            frames.close()
        return None

    def batches(self, run: MotionRun) -> Iterator[Keypoints]:
        """Decode -> detect -> transfer, ``batch_size`` frames at a time (see the class docstring).

        Raises:
            InputError: no frame decodes; keypoints too degenerate for ``adapt_scale``.
        """
        from .fomm import movement_scale, relative_kp

        pipeline, opts = run.pipeline, self._options(run.pipeline)
        renderer, kp_source = pipeline.renderer, run.kp_source
        adapt = opts.relative and opts.adapt_scale
        self._kept = {"kp_driving": [], "kp_detected": []}
        self._kp_initial = self._best_initial(run, opts) if opts.find_best_frame else None
        frames, done = self._frames(self._vf, pipeline.frame_size), 0
        try:
            for batch in _batches(frames, pipeline.batch_size):
                kp_detected = renderer.detect(_to_tensor(batch, pipeline.device))
                if self._kp_initial is None:
                    self._kp_initial = kp_detected[0]
                if done == 0 and adapt:
                    try:
                        self.scale = movement_scale(kp_source, self._kp_initial)
                    except ValueError as exc:
                        raise InputError(f"cannot adapt the movement scale ({exc}); use --no-adapt-scale") from None
                kp_driving = relative_kp(kp_source, kp_detected, self._kp_initial, adapt_movement_scale=adapt,
                                         use_relative_movement=opts.relative, use_relative_jacobian=opts.relative)
                if run.keep:
                    self._kept["kp_driving"].append(kp_driving.to("cpu"))
                    self._kept["kp_detected"].append(kp_detected.to("cpu"))
                done += len(kp_driving)
                yield kp_driving
        finally:
            frames.close()
        if done == 0:
            raise InputError(f"driving video '{self.path}' has no decodable video frames")

    def finish(self, run: MotionRun, result: dict) -> tuple[ReenactResult, dict, dict]:
        keypoints = {}
        if run.keep:
            keypoints = {name: Keypoints.cat(kps) for name, kps in self._kept.items()}
            keypoints["kp_driving_initial"] = self._kp_initial.to("cpu")
        self._kept = {}
        out = ReenactResult(**result, kp_driving=keypoints.get("kp_driving"), driving_crop_box=self.box,
                            initial_frame=self.initial_frame, movement_scale=self.scale)
        extras = {"driving_crop_box": np.asarray(self.box if self.box is not None else (-1, -1, -1, -1), np.float64),
                  "initial_frame": np.int64(self.initial_frame), "movement_scale": np.float64(self.scale),
                  "fps": np.float64(self.fps)}
        return out, keypoints, extras


def _batches(frames: Iterator[np.ndarray], size: int) -> Iterator[np.ndarray]:
    """Stack ``size`` frames at a time (the last batch may be shorter)."""
    batch = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == size:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


# ============================================================================== the job
def load_reenact_pipeline(options: ReenactOptions = ReenactOptions(), *, renderer=None, landmarker=None,
                          log: Optional[Callable[[str], None]] = None) -> Pipeline:
    """A :class:`talkhead.pipeline.Pipeline` for :func:`reenact` with ``options``; nothing is loaded yet:
    the run loads only the ``options.renderer`` renderer (no speech model) after checking its inputs
    (reuse one pipeline for many pairs; it loads once).

    Args:
        options: the run's :class:`~talkhead.options.ReenactOptions`.
        renderer: an already built renderer (nothing is loaded from the models directory).
        landmarker: ``image -> list[Face]`` (default: the ``options.landmarker`` backend).
        log: one-line status messages (model loading, downloads).

    Raises:
        InputError: an unknown renderer or an unavailable device.
    """
    return Pipeline(options, renderer=renderer, landmarker=landmarker, log=log)


def reenact(pipeline: Pipeline, photo: str | Path, video: str | Path, output: str | Path | None = None, *,
            save_keypoints: str | Path | None = None, keep_keypoints: bool = False,
            progress: Progress | None = None) -> ReenactResult:
    """Render ``output`` (MP4: H.264 yuv420p + the driving video's audio as AAC) of ``photo`` moved
    by the head motion in ``video``: :meth:`Pipeline.run <talkhead.pipeline.Pipeline.run>` with a
    :class:`VideoMotion`.

    Args:
        pipeline: a :class:`talkhead.pipeline.Pipeline` (see :func:`load_reenact_pipeline`); its
            :class:`~talkhead.options.ReenactOptions` choose the motion transfer.
        photo: a face photo (PNG, JPEG, WebP, BMP).
        video: the driving video (anything ffmpeg decodes), with or without audio.
        output: the MP4 to write (default :func:`default_output`).
        save_keypoints: optional ``.npz`` (the arrays :class:`VideoMotion` lists).
        keep_keypoints: also return ``kp_driving`` in the result (``(T, K, ...)``, 240 bytes a frame).
        progress: ``progress(stage, done, total)``: stages ``"best-frame"`` (driving frames searched
            for the face closest to the photo's) and ``"render"`` (frames rendered and encoded;
            ``total`` is the probed frame count, an estimate when ``fps`` resamples).

    Returns:
        :class:`ReenactResult`.

    Raises:
        As :meth:`Pipeline.run <talkhead.pipeline.Pipeline.run>` and :class:`VideoMotion`; OutputError
        also when the output is the photo, the driving video or the keypoints file (even with
        ``overwrite``).
    """
    output = output if output is not None else default_output(photo, video)
    return pipeline.run(photo, VideoMotion(video), output, save_keypoints=save_keypoints,
                        keep_keypoints=keep_keypoints, progress=progress)
