"""Video-driven reenactment: one face photo + a driving video -> MP4 of the photo moving like the video.

This is what FOMM's ``demo.py`` (and avatarify) does, streamed. Data path::

    photo  -> load_image (H,W,3 uint8) -> landmarker / select_face -> fomm_crop (S,S,3 [0,1])
           -> renderer.detect -> kp_source Keypoints (1,K,2) + (1,K,2,2)
    video  -> probe (fps, frames, audio) -> faces on frames sampled every 0.5 s -> speaker's track
           -> ONE fixed square crop for the clip (talkhead.facetrack, the training data's rule)
           -> ffmpeg: crop + scale to S x S, frame by frame
           -> renderer.detect per batch -> kp_detected (b,K,...)
           -> relative_kp(kp_source, kp_detected, kp_driving_initial) -> kp_driving (b,K,...)
           -> renderer.render -> (b,S,S,3) -> paste back into the photo (--frame full) or not (crop)
           -> ffmpeg (H.264 + the video's own audio track) -> MP4 at the driving video's fps

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

Use it with a :class:`talkhead.pipeline.Pipeline` (its renderer, landmarker, device and
``face_crop``)::

    pipe = load_reenact_pipeline(ReenactOptions(frame="crop"))
    result = reenact(pipe, "photo.png", "driving.mp4", "out.mp4")
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import torch

from .errors import FFmpegError, InputError, NoFaceError, OutputError
from .keypoints import Keypoints
from .options import ReenactOptions
from .progress import Progress

__all__ = ["ReenactResult", "DrivingVideo", "probe_driving", "load_reenact_pipeline", "reenact",
           "normalized_landmarks", "find_best_frame", "default_output", "DETECT_EVERY_S", "MAX_DETECTIONS",
           "LANDMARK_SIZE"]

DETECT_EVERY_S = 0.5
"""Seconds between the driving frames the face is looked for in (as the training data preparation)."""
MAX_DETECTIONS = 24
"""The most driving frames sampled for the face track (spread over the clip)."""
LANDMARK_SIZE = 256
"""Side of the driving crops the 68 landmarks are found on for ``find_best_frame``, pixels (FOMM
``demo.py`` finds them on its 256 x 256 frames; a smaller renderer frame is not used for this)."""


@dataclass
class ReenactResult:
    """What one :func:`reenact` call produced.

    Attributes:
        output: the written MP4.
        num_frames: frames written (the driving video's, or its resampling at ``fps``).
        fps: the output frame rate, frames per second.
        duration_s: ``num_frames / fps``, seconds.
        has_audio: whether the driving video's audio track was muxed in.
        crop_box: ``(x0, y0, x1, y1)`` of the photo's face crop, photo pixels.
        driving_crop_box: the driving video's fixed crop, video pixels (``None`` with ``crop="none"``).
        initial_frame: index of the initial driving frame (0 unless ``find_best_frame``).
        movement_scale: the adaptive movement scale applied (1.0 unless ``relative`` and ``adapt_scale``).
        kp_source: the photo crop's keypoints ``(1, K, ...)`` (CPU).
        kp_driving: the keypoints that drove the renderer ``(T, K, ...)`` (CPU), only when kept
            (``save_keypoints`` or ``keep_keypoints``; else ``None``: memory stays flat).
        timings: seconds per stage (``faces``, ``load``, ``best_frame``, ``render``).
    """

    output: Path
    num_frames: int
    fps: float
    duration_s: float
    has_audio: bool
    crop_box: tuple
    driving_crop_box: Optional[tuple]
    initial_frame: int
    movement_scale: float
    kp_source: Keypoints
    kp_driving: Optional[Keypoints] = None
    timings: dict = field(default_factory=dict)


# ============================================================================== the driving video
@dataclass(frozen=True)
class DrivingVideo:
    """A checked driving video (:func:`probe_driving`).

    Attributes:
        path: the file. fps: its frame rate (frames per second). num_frames: frames in its first
        video stream. duration_s: ``num_frames / fps``, seconds. has_audio: it has an audio stream.
    """

    path: Path
    fps: float
    num_frames: int
    duration_s: float
    has_audio: bool


def _streams(path: Path) -> tuple[bool, bool, float | None]:
    """``(has_video, has_audio, fps)`` from the ``ffmpeg -i`` stream listing (no ffprobe is bundled).

    Raises:
        FFmpegError: ffmpeg cannot open the file (the message ends with ffmpeg's last line).
    """
    import re

    from .ffmpeg import run

    text = run(["-i", f"file:{path}"]).stderr.decode("utf-8", "replace")  # exits 1: no output given
    if not re.search(r"^Input #0, ", text, flags=re.M):
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        raise FFmpegError(lines[-1] if lines else "ffmpeg printed nothing")
    streams = re.findall(r"^\s*Stream #0:\d+\S*: (Video|Audio): (.+)$", text, flags=re.M)
    video = [d for k, d in streams if k == "Video" and "attached pic" not in d]
    fps = None
    if video:
        rate = re.search(r"([\d.]+)(k?) fps", video[0])
        if rate:
            fps = float(rate.group(1)) * (1000 if rate.group(2) else 1)
    return bool(video), any(k == "Audio" for k, _ in streams), fps


def _count_frames(path: Path) -> int:
    """Frames in the first video stream, counted by demuxing it into the null muxer (no decoding)."""
    from .ffmpeg import decode_tail, run

    proc = run(["-nostats", "-loglevel", "error", "-i", f"file:{path}", "-map", "0:v:0", "-c", "copy",
                "-f", "null", "-", "-progress", "pipe:1"])
    if proc.returncode != 0:
        raise FFmpegError(decode_tail(proc.stderr).splitlines()[-1])
    frames = [ln.split("=", 1)[1] for ln in proc.stdout.decode("utf-8", "replace").splitlines()
              if ln.startswith("frame=")]
    return int(frames[-1]) if frames and frames[-1].strip().isdigit() else 0


def probe_driving(path: str | Path, max_seconds: Optional[float] = None) -> DrivingVideo:
    """Check a driving video before any work: it must exist, decode, and hold a non-empty video stream.

    Args:
        path: the video.
        max_seconds: refuse videos whose video stream is longer than this, seconds (``None``: no limit).

    Returns:
        :class:`DrivingVideo`.

    Raises:
        InputError: missing file, not decodable (corrupt, not a media file), no video stream, zero
            frames, or longer than ``max_seconds`` - each a one-line message naming the file.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"driving video not found: {path}")
    if not path.is_file():
        raise InputError(f"driving video is not a file: {path}")
    try:
        has_video, has_audio, fps = _streams(path.absolute())
        if not has_video:
            raise InputError(f"driving video '{path}' has no video stream")
        num_frames = _count_frames(path.absolute())
    except FFmpegError as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise InputError(f"cannot read driving video '{path}': {reason}") from None
    if not num_frames:
        raise InputError(f"driving video '{path}' has no video frames")
    fps = float(fps or 25.0)
    duration = num_frames / fps
    if max_seconds is not None and duration > max_seconds:
        raise InputError(f"driving video '{path}' lasts {duration:.2f} s, more than --max-seconds {max_seconds:g}")
    return DrivingVideo(path=path, fps=fps, num_frames=num_frames, duration_s=duration, has_audio=has_audio)


def default_output(photo: str | Path, video: str | Path) -> Path:
    """The output when none is given: ``<video stem>-<photo stem>.mp4`` beside the driving video."""
    photo, video = Path(photo), Path(video)
    return video.with_name(f"{video.stem}-{photo.stem}.mp4")


def _driving_crop_box(video: Path, detect) -> tuple[int, int, int, int]:
    """The driving video's fixed crop: faces on frames sampled every :data:`DETECT_EVERY_S` s (at most
    :data:`MAX_DETECTIONS`, spread over the clip), the speaker's track and its FOMM-grown union -
    the training data's rule (:func:`talkhead.facetrack.face_track` / ``fixed_crop_box``).

    Raises:
        InputError: no frame decodes. NoFaceError: no face in any sampled frame.
    """
    from .ffmpeg import read_frames, video_meta
    from .facetrack import face_track, fixed_crop_box

    meta = video_meta(video)
    width, height = meta["size"]
    duration = float(meta.get("duration") or 0.0)
    rate = 1.0 / DETECT_EVERY_S
    if duration > 0:
        rate = min(rate, MAX_DETECTIONS / duration)
    detections = []
    # the fps filter yields nothing for a clip shorter than one sampling step: then take its first frame
    for vf, limit in ((f"fps={rate:.6f}", MAX_DETECTIONS), ("null", 1)):
        _, frames = read_frames(video, vf, (width, height))
        try:
            for frame in frames:
                detections.append(detect(np.ascontiguousarray(frame)))
                if len(detections) >= limit:
                    break
        finally:
            frames.close()
        if detections:
            break
    if not detections:
        raise InputError(f"driving video '{video}' has no decodable video frames")
    boxes, seen = face_track(detections)
    if seen == 0:
        n = len(detections)
        raise NoFaceError(f"no face found in driving video '{video}' ({n} frame{'s' * (n != 1)} sampled "
                          f"every {1 / rate:.2g} s from the start)")
    return tuple(int(v) for v in fixed_crop_box(boxes, (int(height), int(width))))


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


# ============================================================================== building the pipeline
def _no_motion(kp_source, logfbank, progress=None):
    raise RuntimeError("reenact pipelines take their motion from a driving video, not from speech")


def _pipeline_class():
    from .pipeline import Pipeline

    class ReenactPipeline(Pipeline):
        """A :class:`~talkhead.pipeline.Pipeline` whose only model is the ``options.renderer``
        renderer (no speech model), loaded lazily - after :func:`reenact` has checked its inputs."""

        def load(self, *, motion: bool = False) -> "ReenactPipeline":  # no motion generator here
            if self._renderer is None:
                from .store import ensure_models
                from .renderers import get_renderer

                entry = get_renderer(self.options.renderer)
                if entry.store_names:
                    self.log(f"loading the {entry.name} renderer from {self.models_dir}")
                    ensure_models(self.models_dir, names=entry.store_names, offline=self.options.offline,
                                  log=self._log)
                self._renderer = entry.load(self.models_dir, self.device, self.options)
            return self

        @property
        def frame_size(self) -> int:
            """The renderer's frame side, pixels, known before it loads (from its config)."""
            from .renderers import get_renderer

            if self._renderer is not None:
                return int(self._renderer.frame_size)
            return int(get_renderer(self.options.renderer).frame_size(self.models_dir))

    return ReenactPipeline


def load_reenact_pipeline(options: ReenactOptions = ReenactOptions(), *, renderer=None, landmarker=None,
                          log: Optional[Callable[[str], None]] = None):
    """A pipeline for :func:`reenact`: a :class:`talkhead.pipeline.Pipeline` whose only model is the
    ``options.renderer`` renderer (:func:`talkhead.renderers.get_renderer`), no speech model. Nothing
    is loaded yet: :func:`reenact` loads the renderer after checking its inputs (reuse one pipeline for
    many pairs; it loads once).

    Args:
        options: the run's :class:`~talkhead.options.ReenactOptions`.
        renderer: an already built renderer (nothing is loaded from the models directory).
        landmarker: ``image -> list[Face]`` (default: the ``options.landmarker`` backend).
        log: one-line status messages (model loading, downloads).

    Raises:
        InputError: an unknown renderer or an unavailable device.
    """
    from .renderers import get_renderer

    if renderer is None:
        get_renderer(options.renderer)  # InputError naming the registered renderers
    return _pipeline_class()(options, renderer=renderer, motion=_no_motion, landmarker=landmarker, log=log)


# ============================================================================== helpers
def _photo_face(pipeline, image: np.ndarray, source: str):
    """``(FaceCrop, Face or None)`` of the photo: as :meth:`Pipeline.face_crop`, keeping the face
    (its landmarks serve :func:`find_best_frame`)."""
    from .face import detect_faces, fomm_crop, no_crop, select_face

    opts = pipeline.options
    if opts.crop == "none":
        return no_crop(image, pipeline.frame_size), None
    if pipeline.landmarker is not None:
        faces = sorted(pipeline.landmarker(np.ascontiguousarray(image)), key=lambda f: f.area, reverse=True)
    else:
        faces = detect_faces(image, backend=opts.landmarker, device=str(pipeline.device), offline=opts.offline)
    face = select_face(faces, index=opts.face_index, source=source)
    # full frame: the square stays centred on the face at the photo's border (mirrored padding)
    return fomm_crop(image, face, pipeline.frame_size, pad=opts.frame == "full"), face


def _landmark_fn(pipeline) -> Callable[[np.ndarray], Optional[np.ndarray]]:
    """``image (H, W, 3) uint8 -> (68, 2)`` landmarks of its largest confident face, or ``None``."""
    from .face import detect_faces, select_face

    opts = pipeline.options

    def landmarks(image: np.ndarray) -> Optional[np.ndarray]:
        image = np.ascontiguousarray(image)
        if pipeline.landmarker is not None:
            faces = pipeline.landmarker(image)
        else:
            faces = detect_faces(image, backend=opts.landmarker, device=str(pipeline.device), offline=opts.offline)
        try:
            face = select_face(faces)
        except NoFaceError:
            return None
        lm = getattr(face, "landmarks", None)
        return None if lm is None or len(lm) < 3 else np.asarray(lm, dtype=np.float64)

    return landmarks


def _driving_filter(box: Optional[tuple], size: int, fps: Optional[float]) -> str:
    """ffmpeg ``-vf`` chain: [fps resampling,] rgb24, the fixed crop, area scaling to ``size``."""
    chain = [f"fps={fps:.6f}"] if fps is not None else []
    chain.append("format=rgb24")
    if box is not None:
        side = box[2] - box[0]
        chain.append(f"crop={side}:{side}:{box[0]}:{box[1]}")
    chain.append(f"scale={size}:{size}:flags=area")
    return ",".join(chain)


def _batches(frames: Iterator[np.ndarray], size: int) -> Iterator[np.ndarray]:
    batch = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == size:
            yield np.stack(batch)
            batch = []
    if batch:
        yield np.stack(batch)


def _to_tensor(frames: np.ndarray, device) -> torch.Tensor:
    """``(b, S, S, 3)`` uint8 -> ``(b, 3, S, S)`` float32 in [0, 1] on ``device``."""
    return torch.from_numpy(frames).to(device).permute(0, 3, 1, 2).float().div_(255.0)


class _FrameSink:
    """Where rendered crops go: ``--frame crop`` writes them as they are; ``--frame full`` pastes them
    into the photo with :class:`talkhead.compose.Compositor` (soft mask, colour matching; the
    paste-back ``animate`` uses). The one place the output frame layout is decided.

    Attributes:
        size: ``(W, H)`` of the written frames, pixels.
    """

    def __init__(self, frame: str, photo: np.ndarray, face_crop, frame_size: int):
        self.frame = frame
        self._comp = None
        self._buf = None
        if frame == "crop":
            self.size = (frame_size, frame_size)
            return
        from .compose import Compositor

        self._comp = Compositor(photo, face_crop)
        h, w = self._comp.shape[:2]
        self.size = (w, h)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """``(b, S, S, 3)`` float [0, 1] rendered crops -> the frames to encode."""
        if self._comp is None:
            return frames
        if self._buf is None or len(self._buf) != len(frames):
            self._buf = self._comp.new_buffer(len(frames))
        return self._comp.paste(frames, out=self._buf)


def _frame_sink(options: ReenactOptions, photo: np.ndarray, face_crop, frame_size: int) -> _FrameSink:
    """The output-frame stage for ``options.frame`` (see :class:`_FrameSink`)."""
    return _FrameSink(options.frame, photo, face_crop, frame_size)


# ============================================================================== the job
def reenact(pipeline, photo: str | Path, video: str | Path, output: str | Path | None = None, *,
            save_keypoints: str | Path | None = None, keep_keypoints: bool = False,
            progress: Progress | None = None) -> ReenactResult:
    """Render ``output`` (MP4: H.264 yuv420p + the driving video's audio as AAC) of ``photo`` moved
    by the head motion in ``video``.

    Inputs are checked before any heavy work; the MP4 (and the keypoints ``.npz``) are written
    atomically: on any error or Ctrl-C nothing partial remains.

    Args:
        pipeline: a :class:`talkhead.pipeline.Pipeline` whose ``options`` are
            :class:`~talkhead.options.ReenactOptions` (see :func:`load_reenact_pipeline`); its
            ``renderer`` detects and renders, its ``landmarker`` finds faces.
        photo: a face photo (PNG, JPEG, WebP, BMP).
        video: the driving video (anything ffmpeg decodes), with or without audio.
        output: the MP4 to write (default :func:`default_output`).
        save_keypoints: optional ``.npz`` receiving ``kp_driving_value (T,K,2)`` /
            ``kp_driving_jacobian (T,K,2,2)`` (what drove the renderer), ``kp_detected_*`` (the
            driving frames' own keypoints), ``kp_driving_initial_*`` ``(1,K,...)``,
            ``kp_source_*`` ``(1,K,...)``, ``crop_box (4,)``, ``crop_affine (2,3)``,
            ``driving_crop_box (4,)`` (-1s with ``crop="none"``), ``initial_frame``,
            ``movement_scale`` and ``fps``.
        keep_keypoints: also return ``kp_driving`` in the result (``(T, K, ...)``, 240 bytes a frame).
        progress: :data:`talkhead.progress.Progress`, called with stages ``"best-frame"`` (driving
            frames searched for the face closest to the photo's) and ``"render"`` (frames rendered and
            encoded; ``total`` is the probed frame count, an estimate when ``fps`` resamples).

    Returns:
        :class:`ReenactResult`.

    Raises:
        InputError: a bad driving video (see :func:`probe_driving`), or keypoints too degenerate
            for ``adapt_scale``.
        NoFaceError: no face in the photo, or in any sampled driving frame.
        ImageError: an unreadable photo.
        OutputError: an output exists (without ``overwrite``), is the driving video, or cannot be written.
        FFmpegError: encoding failed.
    """
    from .face import load_image
    from .ffmpeg import read_frames as iter_frames
    from .facetrack import face_detector  # the training data's face filter
    from .fomm import movement_scale, relative_kp
    from .io import atomic_output, check_output_path
    from .pipeline import check_input_file, host_frames
    from .video import VideoWriter, WriterThread

    opts = pipeline.options
    if not isinstance(opts, ReenactOptions):
        opts = ReenactOptions(**{k: getattr(opts, k) for k in opts.__dataclass_fields__})
    photo = check_input_file(Path(photo), "photo")
    video = Path(video)
    output = Path(output) if output is not None else default_output(photo, video)
    if video.exists() and output.exists() and output.resolve() == video.resolve():
        raise OutputError(f"the output would replace the driving video: {output}")
    check_output_path(output, opts.overwrite)
    if save_keypoints is not None:
        check_output_path(Path(save_keypoints), opts.overwrite)
    driving = probe_driving(video, opts.max_seconds)
    device, size = pipeline.device, pipeline.frame_size  # known without loading the renderer

    # -- the photo -----------------------------------------------------------------------------------
    timings = {}
    t0 = time.perf_counter()
    image = pipeline.photo(load_image(photo), source=str(photo))  # max_size, even sides (frame full)
    crop, face = _photo_face(pipeline, image, str(photo))

    # -- the driving video's face and fixed crop -----------------------------------------------------
    box = None
    if opts.crop == "auto":
        detect = face_detector(pipeline.landmarker if pipeline.landmarker is not None else opts.landmarker,
                                str(device), None)
        box = _driving_crop_box(video, detect)
    vf = _driving_filter(box, size, opts.fps)
    out_fps = float(opts.fps) if opts.fps is not None else driving.fps
    total = driving.num_frames if opts.fps is None else max(1, int(round(driving.duration_s * out_fps)))
    timings["faces"] = time.perf_counter() - t0

    # -- inputs checked: load the renderer (downloads on first use) ----------------------------------
    t0 = time.perf_counter()
    pipeline.load()
    renderer = pipeline.renderer
    sink = _frame_sink(opts, image, crop, size)
    source = pipeline.source_tensor(crop.crop)
    encoding = renderer.encode_source(source)  # detects kp_source; encoded once, rendered per batch
    kp_source = encoding.kp_source
    timings["load"] = time.perf_counter() - t0

    # -- the initial driving frame -------------------------------------------------------------------
    t0 = time.perf_counter()
    initial_frame, kp_initial = 0, None
    if opts.find_best_frame:
        lm_size = max(size, LANDMARK_SIZE)
        landmarks_of = _landmark_fn(pipeline)
        if face is not None and face.landmarks is not None and len(face.landmarks) >= 3:
            src_lm = np.asarray(face.landmarks, dtype=np.float64)
        else:
            src_lm = landmarks_of(np.clip(np.round(_resize(crop.crop, lm_size) * 255), 0, 255).astype(np.uint8))
            if src_lm is None:
                raise NoFaceError(f"no face landmarks found in '{photo}' for --find-best-frame")
        _, frames = iter_frames(video, _driving_filter(box, lm_size, opts.fps), (lm_size, lm_size))
        try:
            cb = (lambda done: progress("best-frame", done, max(done, total))) if progress else None
            initial_frame, _ = find_best_frame(src_lm, frames, landmarks_of, cb)
        finally:
            frames.close()
        _, frames = iter_frames(video, vf, (size, size))
        try:
            for i, frame in enumerate(frames):
                if i == initial_frame:
                    kp_initial = renderer.detect(_to_tensor(frame[None].copy(), device))
                    break
        finally:
            frames.close()
    timings["best_frame"] = time.perf_counter() - t0

    # -- stream: decode -> keypoints -> motion transfer -> render -> paste -> encode ------------------
    t0 = time.perf_counter()
    keep = keep_keypoints or save_keypoints is not None
    kept_driving, kept_detected = [], []
    scale = 1.0
    done = 0
    audio = video if driving.has_audio else None
    with VideoWriter(output, size=sink.size, fps=out_fps, audio_path=audio, crf=opts.crf,
                     overwrite=opts.overwrite) as writer, \
            WriterThread(writer.write, sink, threaded=pipeline.writer_thread) as out:  # paste + encode
        _, frames = iter_frames(video, vf, (size, size))
        try:
            for batch in _batches(frames, pipeline.batch_size):
                x = _to_tensor(batch, device)
                kp_detected = renderer.detect(x)
                if kp_initial is None:
                    kp_initial = kp_detected[0]
                if done == 0 and opts.relative and opts.adapt_scale:
                    try:
                        scale = movement_scale(kp_source, kp_initial)
                    except ValueError as exc:
                        raise InputError(f"cannot adapt the movement scale ({exc}); use --no-adapt-scale") from None
                kp_driving = relative_kp(kp_source, kp_detected, kp_initial,
                                         adapt_movement_scale=opts.relative and opts.adapt_scale,
                                         use_relative_movement=opts.relative, use_relative_jacobian=opts.relative)
                rendered = renderer.render(encoding, kp_driving)  # (b, 3, S, S) in [0, 1]
                out.put(host_frames(rendered, uint8=sink.frame == "crop", own=out.threaded))
                if keep:
                    kept_driving.append(kp_driving.to("cpu"))
                    kept_detected.append(kp_detected.to("cpu"))
                done += len(batch)
                if progress:
                    progress("render", done, max(done, total))
        finally:
            frames.close()
        if done == 0:
            raise InputError(f"driving video '{video}' has no decodable video frames")
    timings["render"] = time.perf_counter() - t0

    kp_source_cpu = kp_source.to("cpu")
    kp_all = Keypoints.cat(kept_driving) if keep else None
    if save_keypoints is not None:
        arrays = {}
        for name, kp in (("kp_driving", kp_all), ("kp_detected", Keypoints.cat(kept_detected)),
                         ("kp_driving_initial", kp_initial.to("cpu")), ("kp_source", kp_source_cpu)):
            value, jacobian = kp.numpy()
            arrays[f"{name}_value"] = value
            if jacobian is not None:
                arrays[f"{name}_jacobian"] = jacobian
        with atomic_output(Path(save_keypoints), overwrite=opts.overwrite) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays, crop_box=np.asarray(crop.box, dtype=np.float64),
                         crop_affine=np.asarray(crop.affine, dtype=np.float64),
                         driving_crop_box=np.asarray(box if box is not None else (-1, -1, -1, -1), np.float64),
                         initial_frame=np.int64(initial_frame), movement_scale=np.float64(scale),
                         fps=np.float64(out_fps))
    return ReenactResult(output=output, num_frames=done, fps=out_fps, duration_s=done / out_fps,
                         has_audio=driving.has_audio, crop_box=tuple(crop.box), driving_crop_box=box,
                         initial_frame=initial_frame, movement_scale=scale, kp_source=kp_source_cpu,
                         kp_driving=kp_all if keep_keypoints else None, timings=timings)


def _resize(crop: np.ndarray, side: int) -> np.ndarray:
    import cv2

    if crop.shape[0] == side:
        return crop
    interp = cv2.INTER_AREA if crop.shape[0] > side else cv2.INTER_CUBIC
    return cv2.resize(crop, (side, side), interpolation=interp)
