"""The one orchestrator: a face photo + a motion source -> MP4, composed from the stage modules.

Data path (every way a face is moved: ``animate``, ``reenact``, ``batch``, the web page)::

    photo  -> load_image (H,W,3 uint8) -> landmarker / select_face -> fomm_crop (S,S,3 float [0,1])
    crop   -> renderer.detect -> kp_source Keypoints (1,K,2) + (1,K,2,2)
    motion source -> kp_driving batches (b,K,...), yielded as they are ready:
        SpeechMotion: audio -> 16 kHz blocks -> logfbank rows (100 Hz) -> MS-Sync, windowed -> (w,K,...) at 25 fps
                      (the MS-Sync, released or ``--motion-model``, must generate the renderer's keypoint space)
        VideoMotion (talkhead.reenact): driving video -> fixed face track -> renderer.detect -> relative motion
    crop + kp_source + each batch -> renderer.render -> [restore: talkhead.restore.FaceRestoreStage, 2 S crops]
        -> [paste back into the photo] -> ffmpeg (+ audio) -> MP4

Each stage is a plain function or a small object of the module that owns it; this module only composes
them (:meth:`Pipeline.run`), owns the device, batching and progress reporting, and checks inputs and
outputs once, before any heavy work. Its components (renderer, motion generator, landmarker) can be
given to :class:`Pipeline` already built (tests, a second renderer, a face restorer); otherwise they are loaded from
the models directory. With speech the keypoints drive the renderer as absolute positions, as in the
reference ``execute_model.make_animation`` (no relative motion transfer): MS-Sync generates them
starting from the source's own keypoints.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional, Protocol, runtime_checkable

import numpy as np
import torch

from .constants import FPS
from .devices import resolve_device
from .errors import CheckpointError, InputError, NoFaceError, NonFiniteError, TalkheadError
from .keypoints import Keypoints, scale_head_motion
from .options import AnimateOptions
from .progress import Progress
from .renderers import MotionGenerator, Renderer, get_renderer

_detail = logging.getLogger(__name__).info
"""Status lines (where models load from, which photo is searched): logger ``talkhead.pipeline``, INFO;
the CLI shows them with ``-v``. ``log`` gets notes a user needs by default."""


@dataclass
class Result:
    """What one :meth:`Pipeline.run` produced (any motion source).

    Attributes:
        output: the written MP4 (absolute path).
        num_frames: frames in the video.
        fps: its frame rate, frames per second.
        duration_s: its duration, ``num_frames / fps`` seconds.
        has_audio: whether an audio track was muxed in.
        crop_box: ``(x0, y0, x1, y1)`` of the photo's face crop, photo pixels.
        kp_source: the photo crop's keypoints ``(1, K, ...)`` (CPU).
        kp_driving: the keypoints that drove the renderer ``(T, K, ...)`` (CPU), values in [-1, 1] of
            the keypoint grid; ``None`` where the motion source does not keep them (see
            :class:`MotionSource`).
        timings: seconds per stage (``prepare``: inputs decoded and the photo's face found; ``load``:
            models; ``render``: motion + rendering + encoding, streamed together).
    """

    output: Path
    num_frames: int
    fps: float
    duration_s: float
    has_audio: bool
    crop_box: tuple
    kp_source: Keypoints = field(repr=False)
    kp_driving: Optional[Keypoints] = field(default=None, repr=False)
    timings: dict = field(default_factory=dict)


@dataclass
class AnimateResult(Result):
    """What one ``animate`` (speech-driven) run produced: a :class:`Result` at 25 fps whose
    ``kp_driving`` is the generated sequence ``(T, K, ...)``; ``duration_s`` is the speech's."""

    @property
    def keypoints(self) -> np.ndarray:
        """``(T, K, 2)`` float32 kp_driving values."""
        return self.kp_driving.numpy()[0]

    @property
    def jacobians(self) -> np.ndarray:
        """``(T, K, 2, 2)`` float32 kp_driving jacobians."""
        return self.kp_driving.numpy()[1]


@dataclass
class SourcePhoto:
    """The photo a run animates (:meth:`Pipeline.prepare_photo`), before any model runs.

    Attributes:
        path: the file.
        image: ``(H, W, 3)`` uint8 RGB, EXIF-rotated; with ``frame="full"`` capped at ``max_size`` and
            even-sized (:meth:`Pipeline.photo`): the picture the video is made of.
        crop: the :class:`talkhead.crop.FaceCrop` at the renderer's frame size.
        face: the chosen :class:`talkhead.landmarks.Face` (its 68 landmarks in ``image`` pixels), ``None``
            with ``crop="none"``.
    """

    path: Path
    image: np.ndarray = field(repr=False)
    crop: object = field(repr=False)
    face: object = field(default=None, repr=False)


@dataclass
class PreparedSource:
    """A photo ready to render (:meth:`Pipeline.prepare_source`): decoded, its face found and cropped, and
    (``encoded``) its keypoints and the renderer's source encoding computed.

    Attributes:
        photo: the :class:`SourcePhoto`.
        source: its crop ``(1, 3, S, S)`` float32 in [0, 1] on the device; ``None`` until encoded.
        kp_source: its keypoints ``(1, K, ...)`` on the device; ``None`` until encoded.
        encoding: ``renderer.encode_source(source, kp_source)`` (the per-source part of a render);
            ``None`` until encoded.
        owners: ``(renderer, landmarker)`` it was made with: a cached entry is used only with these
            very objects (identity), so another renderer or landmarker never sees it.
    """

    photo: SourcePhoto
    source: Optional[torch.Tensor] = field(default=None, repr=False)
    kp_source: Optional[Keypoints] = field(default=None, repr=False)
    encoding: object = field(default=None, repr=False)
    owners: tuple = field(default=(None, None), repr=False)

    @property
    def encoded(self) -> bool:
        """Whether the keypoints and the source encoding exist."""
        return self.encoding is not None


@dataclass
class PhotoStages:
    """What every frame of one photo uses, made once (:meth:`Pipeline.photo_stages`, models loaded): the
    prepared source (crop, keypoints, the renderer's source encoding), the restore stage and the paste-back.

    Attributes:
        prepared: the encoded :class:`PreparedSource` (``photo``, ``source``, ``kp_source``, ``encoding``).
        restore: the :class:`talkhead.restore.FaceRestoreStage` of ``options.enhance``, or ``None``.
        compositor: the :class:`talkhead.compose.Compositor` (``frame="full"``), or ``None``.
        face_side: the side of the face crops the stages hand to the compositor: ``S``, or ``2 S`` restored.
    """

    prepared: PreparedSource = field(repr=False)
    restore: object = field(default=None, repr=False)
    compositor: object = field(default=None, repr=False)
    face_side: int = 0

    @property
    def photo(self) -> SourcePhoto:
        """The decoded photo, its face and crop."""
        return self.prepared.photo

    @property
    def source(self) -> torch.Tensor:
        """The crop ``(1, 3, S, S)`` float32 in [0, 1] on the device."""
        return self.prepared.source

    @property
    def kp_source(self) -> Keypoints:
        """The crop's keypoints ``(1, K, ...)`` on the device."""
        return self.prepared.kp_source

    @property
    def encoding(self):
        """``renderer.encode_source(source, kp_source)``."""
        return self.prepared.encoding

    @property
    def frame_size(self) -> tuple[int, int]:
        """``(width, height)`` of the video frames: the photo's with a compositor, else the face crop's."""
        if self.compositor is not None:
            return self.compositor.shape[1], self.compositor.shape[0]
        return self.face_side, self.face_side


class SourceCache:
    """The last ``capacity`` :class:`PreparedSource` s, shared by the runs of a batch and the web page's
    requests (each request has its own :class:`Pipeline`): the same photo again is neither decoded, nor its
    face searched, nor its keypoints or source encoding computed again.

    Exact by construction: the key (:meth:`Pipeline.source_key`) is the photo file's content (SHA-256 of its
    bytes, not its name or time stamp) and every option that shapes the prepared source (frame, max_size,
    crop, face_index, the landmark backend, frame size, device, renderer, precision); an entry is used only
    with the very renderer and landmarker objects that made it. It assumes their weights are not changed in
    place while it is in use (training never uses it). Thread-safe (a batch prepares the next item in a
    thread); least recently used entries are dropped first.

    Args:
        capacity: entries kept (>= 1). A batch needs 2 (the item rendering and the one prepared ahead).

    Attributes:
        hits / misses: lookups that found / did not find their entry.
    """

    def __init__(self, capacity: int = 2):
        if capacity < 1:
            raise ValueError(f"SourceCache capacity must be >= 1, not {capacity}")
        self.capacity = int(capacity)
        self._entries: OrderedDict[tuple, PreparedSource] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key: tuple, owners: tuple) -> Optional[PreparedSource]:
        """The entry of ``key`` made with ``owners`` (identity), or ``None`` (counted as a miss)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or len(entry.owners) != len(owners) or \
                    any(a is not b for a, b in zip(entry.owners, owners)):
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry

    def put(self, key: tuple, entry: PreparedSource) -> None:
        """Keep ``entry`` under ``key`` (replacing an older one), dropping the least recently used beyond
        ``capacity``."""
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        """Drop every entry."""
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


@dataclass
class MotionRun:
    """What a :class:`MotionSource` gets when the run starts (models loaded, the photo encoded).

    Attributes:
        pipeline: the running :class:`Pipeline` (its renderer, device, landmarker, options).
        photo: the :class:`SourcePhoto`.
        source: the photo's crop ``(1, 3, S, S)`` float32 in [0, 1] on the device.
        kp_source: its keypoints ``(1, K, ...)`` on the device.
        keep: keep the driving keypoints for the result / the ``--save-keypoints`` file.
        progress: the run's ``progress(stage, done, total)`` callback.
    """

    pipeline: "Pipeline"
    photo: SourcePhoto
    source: torch.Tensor
    kp_source: Keypoints
    keep: bool = False
    progress: Optional[Progress] = None


@dataclass
class PreparedRun:
    """One video ready to render (:meth:`Pipeline.prepare`): its inputs checked and decoded, its photo
    prepared (:class:`PreparedSource`); nothing written yet. :meth:`Pipeline.render` makes the video.

    Attributes:
        motion: the prepared :class:`MotionSource`.
        output / save_keypoints: the checked output paths (``save_keypoints`` may be ``None``).
        keep_keypoints: return the driving keypoints in the result.
        source: the :class:`PreparedSource` (encoded unless prepared with ``encode=False``).
        timings: seconds so far (``prepare``, ``load``; see :class:`Result`).
    """

    motion: "MotionSource"
    output: Path
    save_keypoints: Optional[Path]
    keep_keypoints: bool
    source: PreparedSource
    timings: dict = field(default_factory=dict)


class RenderedRun:
    """Every frame of a run written to ffmpeg (:meth:`Pipeline.start_render`); the video is not finished yet.

    :meth:`complete` closes ffmpeg's input, waits for it to encode what it still holds (x264's lookahead,
    the audio, the mux), moves the file into place and returns the :class:`Result`; :meth:`abort` kills
    ffmpeg and deletes the temporary file instead. Exactly one of them must be called. A batch completes a
    run in another thread while the next one renders (:func:`talkhead.batch.run_batch`).
    """

    def __init__(self, pipeline: "Pipeline", prepared: PreparedRun, run: MotionRun, writer, done: int, t0: float,
                 preview=None):
        self._pipeline, self._prepared, self._run, self._writer = pipeline, prepared, run, writer
        self._preview = preview  # Pipeline.run's second sink: closed before the MP4 is finished
        self.num_frames, self._t0 = done, t0

    def complete(self) -> "Result":
        """Finish the MP4 (and the keypoints ``.npz``) and return the run's :class:`Result`.

        Raises:
            FFmpegError: encoding failed (nothing is left at the output path).
            OutputError: the file cannot be moved into place.
        """
        from .keypoints import save_keypoints_npz

        writer, self._writer = self._writer, None
        if writer is None:
            raise RuntimeError("RenderedRun.complete() after complete() or abort()")
        preview, self._preview = self._preview, None
        if preview is not None:
            try:
                preview.close()
            except BaseException:
                writer.abort()
                raise
        writer.close()  # aborts (temporary file removed) on any failure
        prepared, run = self._prepared, self._run
        timings = {**prepared.timings, "render": time.perf_counter() - self._t0}
        photo, motion, options = prepared.source.photo, prepared.motion, self._pipeline.options
        done = self.num_frames
        common = dict(output=prepared.output, num_frames=done, fps=float(motion.fps), duration_s=done / motion.fps,
                      has_audio=motion.audio is not None, crop_box=tuple(photo.crop.box),
                      kp_source=run.kp_source.to("cpu"), timings=timings)
        result, keypoints, extras = motion.finish(run, common)
        if prepared.save_keypoints is not None:
            extras = {"crop_box": np.asarray(photo.crop.box, dtype=np.float64),
                      "crop_affine": np.asarray(photo.crop.affine, dtype=np.float64), **extras}
            save_keypoints_npz(prepared.save_keypoints, {"kp_source": result.kp_source, **keypoints}, extras,
                               overwrite=options.overwrite)
        if not prepared.keep_keypoints:
            result.kp_driving = None
        return result

    def abort(self) -> None:
        """Kill ffmpeg and delete the temporary file (idempotent; a no-op after :meth:`complete`)."""
        writer, self._writer = self._writer, None
        preview, self._preview = self._preview, None
        if preview is not None:
            preview.abort()
        if writer is not None:
            writer.abort()


@runtime_checkable
class MotionSource(Protocol):
    """Where the driving keypoints come from: the one seam between "what moves the face" and the stages.

    :meth:`Pipeline.run` calls, in order: :meth:`check` (no file touched), then - after every input
    file in :attr:`inputs` exists and the outputs are checked - :meth:`prepare` (decoding and checks
    that need no model), then, with the models loaded and the photo encoded, iterates
    :meth:`batches`, rendering and encoding each batch as soon as it is yielded (a source may yield
    its batches as they become available: the first frame is written before the last keypoints
    exist), and finally calls :meth:`finish`.

    Implementations: :class:`SpeechMotion` (speech through MS-Sync, ``animate``) and
    :class:`talkhead.reenact.VideoMotion` (a driving video's relative motion, ``reenact``).

    Attributes:
        inputs: ``((path, role), ...)`` the files it reads (checked to exist; never an output).
        needs_generator: whether it needs the pipeline's speech motion generator (MS-Sync).
        fps: output frame rate, frames per second (valid after :meth:`prepare`).
        audio: the file whose first audio stream is muxed into the video, or ``None`` (after :meth:`prepare`).
        num_frames: frames the video will have (an estimate for progress; after :meth:`prepare`).
    """

    inputs: tuple
    needs_generator: bool
    fps: float
    audio: Optional[Path]
    num_frames: int

    def check(self, pipeline: "Pipeline") -> None:
        """Refuse what can be refused before any file is read (e.g. a renderer it cannot drive)."""

    def prepare(self, pipeline: "Pipeline") -> None:
        """Decode and check the inputs (no model). Raises the input errors of its kind."""

    def batches(self, run: MotionRun) -> Iterator[Keypoints]:
        """kp_driving batches ``(b, K, ...)`` on the device, in frame order, ``sum(b)`` frames in all."""

    def finish(self, run: MotionRun, result: dict) -> tuple[Result, dict, dict]:
        """``(result, keypoints, extras)``: the :class:`Result` (built from the common fields in
        ``result``), and the keypoint sets and extra arrays of the ``--save-keypoints`` file
        (:func:`talkhead.keypoints.save_keypoints_npz`)."""


def num_video_frames(duration_s: float) -> int:
    """Frames of the output video for audio of ``duration_s`` seconds: ``round(duration_s * 25)``.

    The generator yields ``T = talkhead.mssync.num_frames(n)`` keypoint frames, which is one or two
    short of this (and more above ~38.6 s, see ``num_frames``); the pipeline holds the last generated
    pose for the missing frames so the MP4 lasts as long as the audio, within one frame.
    """
    return max(1, int(round(duration_s * FPS)))


def _check_finite(stage: str, what: str, *tensors: torch.Tensor) -> None:
    """Raise :class:`NonFiniteError` naming ``stage`` when any tensor holds NaN or infinity."""
    for t in tensors:
        if not bool(torch.isfinite(t).all()):
            raise NonFiniteError(f"{stage} stage produced NaN or infinite values ({what}); nothing was written "
                                 "(extreme input or bad weights)", stage=stage)


def host_frames(frames: torch.Tensor, *, uint8: bool, own: bool = False) -> np.ndarray:
    """Rendered frames ``(b, 3, S, S)`` (any device, float in [0, 1]) -> host ``(b, S, S, 3)`` numpy.

    Args:
        frames: the renderer's output.
        uint8: convert to uint8 on the frames' device first (:func:`talkhead.video.to_uint8_frames`,
            bit-identical to converting on the host), so only bytes cross; else float32 (the
            paste-back colour-matches in float), transposed on the device before the copy.
        own: the result must not share memory with ``frames`` (it will wait in a queue while the
            renderer makes the next batch); only CPU float frames need the copy.

    Raises:
        ValueError: NaN/inf frames (``uint8``).
    """
    from .video import to_uint8_frames

    frames, on_host = frames.permute(0, 2, 3, 1), frames.device.type == "cpu"
    if uint8:
        return to_uint8_frames(frames)  # a fresh array
    if not on_host:
        frames = frames.contiguous()
    out = frames.float().cpu().numpy()
    return out.copy() if own and on_host else out


class Pipeline:
    """Components + options; call :meth:`run` once per video (any :class:`MotionSource`), or its
    speech-driven shorthand :meth:`animate`.

    Components not given are loaded once, on first use (:meth:`load`), from the models directory
    (checkpoints are downloaded then unless ``options.offline``), so a batch of pairs pays for it once.

    Args:
        options: the run's :class:`~talkhead.options.AnimateOptions`.
        renderer: a built :class:`~talkhead.renderers.Renderer` (FOMM's ``detect``/``render``
            interface); default: the registered ``fomm`` renderer loaded from the models directory.
        motion: a :class:`~talkhead.renderers.MotionGenerator`, ``motion(kp_source, logfbank,
            progress) -> kp_driving``; default: MS-Sync loaded from ``options.motion_model``, else the
            downloaded one from the models directory.
        landmarker: a callable ``image (H, W, 3) uint8 -> list[talkhead.landmarks.Face]``; default: the
            ``options.landmarker`` backend.
        restorer: a :class:`talkhead.restore.Restorer` used when ``options.enhance`` is not ``none``;
            default: GFPGAN v1.4 from the models directory (:meth:`load`; never downloaded implicitly).
        log: receives one-line status messages (model loading, downloads).
        single_use: the pipeline makes one video (what ``talkhead animate`` and :func:`animate` do):
            the motion generator it loaded itself is released once the last keypoint window is generated
            (the keypoints stream while the first frames render, :class:`SpeechMotion`), and its memory
            returned to the system (:func:`talkhead.memory.return_freed_memory`). A later :meth:`animate`
            call loads it again. A ``motion`` given to the constructor is never released.
        source_cache: where prepared photos are kept between runs (:class:`SourceCache`): ``True`` (default)
            a private one holding the last photo (one photo, many recordings: decoded, its face found and
            encoded once); a :class:`SourceCache` shared with other pipelines (the web page's requests, each
            with its own options); ``False``: none.

    Raises:
        DownloadError / CheckpointError / ConfigError: missing or bad checkpoints.
        InputError: an unavailable device, or a ``precision`` refused on it
            (:func:`talkhead.devices.check_precision`).
    """

    def __init__(self, options: AnimateOptions = AnimateOptions(), *, renderer: Renderer | None = None,
                 motion: MotionGenerator | None = None, landmarker: Callable | None = None,
                 log: Callable[[str], None] | None = None, single_use: bool = False, restorer: Callable | None = None,
                 source_cache: SourceCache | bool = True):
        from .devices import check_precision

        self.options = options
        self.device = resolve_device(options.device)
        check_precision(options.precision, self.device)  # one line, before any model loads
        self.landmarker = landmarker
        self._log = log
        self.log = log or (lambda msg: None)
        self._backend: str | None = None
        self._pending_notes: list[str] = []  # said once the models are in place (see landmark_backend)
        self.models_dir: Optional[Path] = None
        self._restorer = restorer
        if renderer is None or motion is None or (options.enhance != "none" and restorer is None):
            from .store import resolve_models_dir

            self.models_dir = resolve_models_dir(options.models_dir)
        self._renderer = renderer
        self._motion = motion
        self._single_use = bool(single_use)
        self._owns_motion = False  # loaded by load(), so it can be released and loaded again
        self._precision_applied: object = None
        self._frame_size: Optional[int] = None
        if source_cache is True:
            source_cache = SourceCache(capacity=1)
        self.source_cache: Optional[SourceCache] = source_cache if isinstance(source_cache, SourceCache) else None

    def load(self, *, motion: bool = True) -> "Pipeline":
        """Load the components not given to the constructor (downloading missing checkpoints unless
        ``options.offline``); a no-op once loaded. :meth:`animate` calls it after checking its inputs,
        so bad input never waits for (or triggers) a download. ``motion=False``: the renderer only
        (what rendering needs, so a released motion generator is not loaded again for it).

        Raises:
            DownloadError / CheckpointError / ConfigError: missing or bad checkpoints.
        """
        self._load_restorer()
        if self._renderer is not None and (self._motion is not None or not motion):
            self.flush_notes()
            return self
        from .store import ensure_models, model_dir

        _detail(f"loading models from {self.models_dir}")
        entry = get_renderer(self.options.renderer)
        load_motion = motion and self._motion is None
        if load_motion:
            self.check_motion_pairing()  # one line naming both, before any checkpoint loads
        own_model = self.options.motion_model is not None
        needed = (*(entry.store_names if self._renderer is None else ()),
                  *(("mssync",) if load_motion and not own_model else ()))
        if needed:
            ensure_models(self.models_dir, names=needed, offline=self.options.offline, log=self._log)
        if self._renderer is None:
            self._renderer = entry.load(self.models_dir, self.device, self.options)
        if load_motion:
            from .mssync import load_mssync
            from .mssync.windowed import StreamingMSSyncMotion

            # a trained model is checked as the downloaded one is: safe load, layout against its args, finite
            path = self.options.motion_model if own_model else model_dir(self.models_dir, "mssync")
            self._motion = StreamingMSSyncMotion(load_mssync(path, device=self.device))
            self._owns_motion = True
        self.flush_notes()
        return self

    def flush_notes(self) -> None:
        """Say the notes held back so far (the landmarker's fallback), each once, through ``log``."""
        notes, self._pending_notes = self._pending_notes, []
        for note in notes:
            self.log(note)

    def _load_restorer(self) -> None:
        """Load the ``options.enhance`` restorer unless given or loaded (an optional model: never
        downloaded here; a file of other widths in the released key layout is accepted once the store
        has recorded it, e.g. a tiny test file).

        Raises:
            InputError: the checkpoint is not installed (names the file and ``talkhead download gfpgan``).
            CheckpointError: a bad file.
        """
        if self.options.enhance == "none" or self._restorer is not None:
            return
        from .store import ensure_models, model_file

        path = model_file(self.models_dir, "gfpgan", "checkpoint")
        if not path.is_file():
            raise InputError(f"--enhance gfpgan needs the GFPGAN weights {path}, which are not installed: run "
                             "`talkhead download gfpgan`")
        ensure_models(self.models_dir, names=("gfpgan",), offline=True, log=self._log)
        from .gfpgan import load_gfpgan

        _detail(f"loading GFPGAN from {path}")
        self._restorer = load_gfpgan(path, infer_widths=True, device=self.device)

    @property
    def restorer(self):
        """The face restorer of ``options.enhance`` (given, or loaded on first use; see
        :meth:`_load_restorer`), ``None`` with ``enhance="none"``."""
        self._load_restorer()
        return self._restorer

    def restore_stage(self, photo: SourcePhoto, kp_source: Keypoints):
        """The :class:`talkhead.restore.FaceRestoreStage` of ``photo`` (``options.enhance``), or ``None``.

        Raises:
            InputError: the photo's face has no 68 landmarks to align it with.
        """
        if self.options.enhance == "none":
            return None
        from .restore import FaceRestoreStage

        self._load_restorer()
        landmarks = None if photo.face is None else np.asarray(photo.face.landmarks)
        if landmarks is None or landmarks.shape != (68, 2):
            raise InputError(f"--enhance {self.options.enhance} needs the face's 68 landmarks in {photo.path}, and "
                             "the landmarker gave none")
        if hasattr(self._restorer, "precision"):
            self._restorer.precision = self.options.precision  # checked for the device in __init__
        return FaceRestoreStage(self._restorer, photo.crop, landmarks, kp_source, self.options.enhance_strength)

    def motion_space(self):
        """The :class:`~talkhead.keypoints.KeypointSpace` the speech motion generator produces, known
        before it loads: the given generator's ``space`` attribute (``None`` if it has none), else the
        ``options.motion_model`` folder's ``args`` (:attr:`talkhead.mssync.MSSyncConfig.space`), else
        the released MS-Sync's, FOMM's.

        Raises:
            CheckpointError / ConfigError: the ``motion_model`` folder, or its ``args``, is missing or bad.
        """
        from .keypoints import FOMM_SPACE

        if self._motion is not None:
            return getattr(self._motion, "space", None)
        if self.options.motion_model is None:
            return FOMM_SPACE
        from .mssync.config import ARGS_NAME, MSSyncConfig, resolve_model_dir

        return MSSyncConfig.from_args_file(resolve_model_dir(self.options.motion_model) / ARGS_NAME).space

    def check_motion_pairing(self) -> None:
        """Refuse, in one line naming both, a speech motion generator and a renderer of different keypoint
        spaces (a 10-keypoint FOMM-space MS-Sync with ``--renderer smac``, a 15-keypoint SMAC-space one with
        ``fomm``): called before any checkpoint loads or frame renders. A renderer given to the constructor
        is checked by its ``num_kp`` only; a motion generator without a ``space`` is not checked.

        Raises:
            InputError: the spaces differ.
            CheckpointError / ConfigError: a bad ``motion_model`` folder (:meth:`motion_space`).
        """
        motion = self.motion_space()
        if motion is None:
            return
        if self._renderer is None:
            entry = get_renderer(self.options.renderer)
            name, takes = entry.name, entry.space
            if motion == takes:
                return
        else:
            name, num_kp = self.options.renderer, getattr(self._renderer, "num_kp", None)
            if num_kp is None or int(num_kp) == motion.num_kp:
                return
            from .keypoints import KeypointSpace

            takes = KeypointSpace(name, int(num_kp), True)
        if self._motion is not None:
            which = "the given motion generator"
        elif self.options.motion_model is not None:
            which = f"the MS-Sync model {self.options.motion_model}"
        else:
            which = "the released MS-Sync"
        hint = (f"pass --motion-model with an MS-Sync trained for {name} (README, \"Training MS-Sync for another "
                f"renderer\"), or use `talkhead reenact --renderer {name}`" if self.options.motion_model is None
                else f"use --renderer {motion.renderer}, or an MS-Sync trained for {name}")
        raise InputError(f"{which} generates {motion.describe()}, but --renderer {name} takes {takes.describe()}: "
                         f"{hint}")

    @property
    def renderer(self) -> Renderer:
        """The renderer (loaded on first use, see :meth:`load`), set to ``options.precision``.

        Raises:
            InputError: ``precision`` other than fp32 for a renderer without a ``precision``
                attribute (only FOMM has one).
        """
        renderer = self.load(motion=False)._renderer
        if self._precision_applied is not renderer:
            precision = self.options.precision
            if hasattr(renderer, "precision"):
                renderer.precision = precision
            elif precision != "fp32":
                raise InputError(f"--precision {precision} is not supported by the {self.options.renderer} renderer; "
                                 "use --precision fp32")
            self._precision_applied = renderer
        return renderer

    def release_motion(self) -> None:
        """Drop the motion generator this pipeline loaded (reloaded on next use) and return its memory to
        the system (:func:`talkhead.memory.return_freed_memory`); a no-op for one given to the constructor."""
        if not self._owns_motion or self._motion is None:
            return
        import gc

        from .memory import return_freed_memory

        self._motion, self._owns_motion = None, False
        gc.collect()
        return_freed_memory()

    @property
    def single_use(self) -> bool:
        """Whether this pipeline makes one video (see the class docstring): a motion generator it loaded
        is released once the keypoints exist."""
        return self._single_use

    @property
    def motion(self) -> MotionGenerator:
        """The motion generator (loaded on first use, see :meth:`load`)."""
        return self.load()._motion

    @property
    def frame_size(self) -> int:
        """Side of the square frames the renderer takes and renders, pixels (256 for vox-adv-256).

        Known before any checkpoint is loaded: from the given renderer, else from the renderer's config
        file in the models directory (or the packaged one).
        """
        if self._renderer is not None:
            return int(self._renderer.frame_size)
        if self._frame_size is None:  # the config is parsed once per pipeline
            self._frame_size = int(get_renderer(self.options.renderer).frame_size(self.models_dir))
        return self._frame_size

    @property
    def batch_size(self) -> int:
        """Frames per render pass: ``options.batch_size``, or for ``auto`` the device's
        :func:`talkhead.devices.default_batch_size` (CPU: 8 for FOMM, 2 for SMAC; 8 on CUDA)."""
        from .devices import default_batch_size

        return self.options.batch_size or default_batch_size(self.device, self.options.renderer)

    @property
    def piece_frames(self) -> Optional[int]:
        """Frames of a render pass that the restorer and the paste-back take at a time (and the first pass of
        a streamed clip renders, so that its first frames come out sooner): :func:`talkhead.devices.default_piece_frames`
        (2 on CPU), ``None`` elsewhere (the whole pass)."""
        from .devices import default_piece_frames

        return default_piece_frames(self.device)

    @property
    def writer_thread(self) -> bool:
        """Whether paste-back and encoding run in a background thread (:class:`talkhead.video.WriterThread`):
        ``options.writer_thread``, or by default :func:`talkhead.devices.default_writer_thread`
        (on for CUDA/MPS, off on CPU)."""
        from .devices import default_writer_thread

        wt = self.options.writer_thread
        return default_writer_thread(self.device) if wt is None else bool(wt)

    # -- stages -------------------------------------------------------------------------------------
    def faces(self, image: np.ndarray) -> list:
        """The faces in an RGB image ``(H, W, 3)`` uint8, largest first: the given landmarker's, else the
        ``options.landmarker`` backend's (:func:`talkhead.landmarks.detect_faces`).

        Raises:
            LandmarkerUnavailableError: the backend cannot run.
        """
        from .landmarks import detect_faces

        image = np.ascontiguousarray(image)
        if self.landmarker is not None:
            return sorted(self.landmarker(image), key=lambda f: f.area, reverse=True)
        return detect_faces(image, backend=self.landmark_backend(), device=str(self.device),
                            offline=self.options.offline)

    def find_face(self, image: np.ndarray, source: str = "image"):
        """``(FaceCrop, Face or None)``: the chosen face of ``image`` ``(H, W, 3)`` uint8
        (:func:`talkhead.landmarks.select_face` with ``options.face_index``) and its FOMM crop at the
        renderer's frame size; ``(no_crop, None)`` with ``crop="none"``.

        With ``frame="full"`` the square stays centred on the face at FOMM's size even where it leaves
        the photo (mirrored padding, ``fomm_crop(pad=True)``); with ``frame="crop"`` it is shifted
        inside the photo, as FOMM's own crop does.

        Raises:
            NoFaceError: no (confident) face, or ``face_index`` out of range.
        """
        from .crop import fomm_crop, no_crop
        from .landmarks import select_face

        if self.options.crop == "none":
            return no_crop(image, self.frame_size), None
        face = select_face(self.faces(image), index=self.options.face_index, source=source)
        return fomm_crop(image, face, self.frame_size, pad=self.options.frame == "full"), face

    def face_crop(self, image: np.ndarray, source: str = "image"):
        """The :class:`talkhead.crop.FaceCrop` of :meth:`find_face`."""
        return self.find_face(image, source)[0]

    def landmark_backend(self) -> str:
        """``options.landmarker`` resolved once (``auto`` -> fan or dlib, with a log line on fallback,
        once per process: :func:`talkhead.landmarks.note_once`). The line waits until the models are
        in place (:meth:`load`) or a face is not found: a run that stops at a missing checkpoint says
        one line, the error."""
        if self._backend is None:
            from .landmarks import note_once, resolve_landmarker

            self._backend, note = resolve_landmarker(self.options.landmarker, offline=self.options.offline)
            if note_once(note):
                self._pending_notes.append(note)
        return self._backend

    def source_tensor(self, crop: np.ndarray) -> torch.Tensor:
        """``(S, S, 3)`` float [0,1] crop -> ``(1, 3, S, S)`` float32 tensor on the device."""
        return torch.from_numpy(np.ascontiguousarray(crop, dtype=np.float32)).permute(2, 0, 1)[None].to(self.device)

    def detect_source(self, source: torch.Tensor) -> Keypoints:
        """kp_source ``(1, K, ...)`` of the source crop ``(1, 3, S, S)`` (the renderer's detector).

        Raises:
            NonFiniteError: ``stage="keypoints"``: NaN/inf keypoints.
        """
        kp_source = self.renderer.detect(source)
        _check_finite("keypoints", "keypoints of the source photo", kp_source.value, kp_source.jacobian)
        return kp_source

    def photo(self, image: np.ndarray, source: str = "image") -> np.ndarray:
        """The photo the video is made of: ``image`` ``(H, W, 3)`` uint8 as is for ``frame="crop"``; for
        ``frame="full"`` downscaled to ``max_size`` (longest side) and made even-sized for yuv420p by one
        mirrored row/column (:func:`talkhead.image.limit_size`, :func:`~talkhead.image.even_size`).

        Raises:
            InputError: ``max_size`` below the renderer's frame size, or a photo smaller than that frame in
                both directions (``frame="full"``).
        """
        if self.options.frame != "full":
            return image
        from .image import even_size, limit_size

        size = self.frame_size
        if self.options.max_size < size:
            raise InputError(f"--max-size {self.options.max_size} is smaller than the renderer's {size}x{size} "
                             "frame")
        h, w = image.shape[:2]
        if max(h, w) < size:
            raise InputError(f"image '{source}' is {w}x{h} pixels, smaller than the {size}x{size} frame the "
                             "renderer draws; use a larger photo or --frame crop")
        return even_size(limit_size(image, self.options.max_size))

    def prepare_photo(self, path: str | Path) -> SourcePhoto:
        """Decode the photo (:func:`talkhead.image.load_image`), size it (:meth:`photo`) and find its face
        (:meth:`find_face`); no model is loaded, nothing is cached (:meth:`prepare_source` caches).

        Raises:
            InputError / ImageError / NoFaceError: bad photo.
        """
        from .image import load_image

        path = Path(path)
        image = self.photo(load_image(path), source=str(path))
        _detail(f"finding the face in {path}")
        crop, face = self.find_face(image, source=str(path))
        return SourcePhoto(path=path, image=image, crop=crop, face=face)

    def source_key(self, path: str | Path) -> Optional[tuple]:
        """The :class:`SourceCache` key of the photo file ``path`` under this pipeline's options: the SHA-256
        of its bytes and every option that shapes its :class:`PreparedSource` (frame, max_size, crop,
        face_index, the landmark backend, frame size, device, renderer name, precision). ``None`` when the
        file cannot be read (nothing is cached; the decoder reports the error)."""
        from .checkpoints import file_digests

        try:
            digest = file_digests(path)["sha256"]
        except CheckpointError:  # unreadable: nothing cached, the decoder reports it
            return None
        o = self.options
        backend = None if o.crop == "none" or self.landmarker is not None else self.landmark_backend()
        return (digest, o.frame, o.max_size if o.frame == "full" else None, o.crop,
                o.face_index if o.crop != "none" else None, backend, self.frame_size, str(self.device), o.renderer,
                o.precision)

    def prepare_source(self, path: str | Path, *, motion: bool = True, encode: bool = True,
                       timings: Optional[dict] = None) -> PreparedSource:
        """The photo ``path`` ready to render: :meth:`prepare_photo`, then (``encode``) the models loaded
        (:meth:`load`, ``motion``: the motion generator too), the crop's keypoints (:meth:`detect_source`) and
        the renderer's source encoding (``renderer.encode_source``), taken from :attr:`source_cache` when the
        same photo content was prepared under the same options (:meth:`source_key`) - the same values
        (the same objects), not recomputed. A bad photo is refused before any model loads.

        ``encode=False`` stops after the photo (no model; the result's ``encoding`` is ``None``): a batch
        prepares the next photo this way while the driving video of the current one is read through the
        renderer's detector. ``timings`` receives ``prepare`` (photo) and ``load`` (models + encoding) seconds.

        Raises:
            InputError / ImageError / NoFaceError: bad photo.
            DownloadError / CheckpointError / ConfigError: missing or bad checkpoints.
            NonFiniteError: NaN/inf source keypoints.
        """
        path = Path(path)
        timings = {} if timings is None else timings
        t0 = time.perf_counter()
        cache = self.source_cache
        key = self.source_key(path) if cache is not None else None
        entry = cache.get(key, (self._renderer, self.landmarker)) if key is not None else None
        if entry is None:
            entry = PreparedSource(photo=self.prepare_photo(path), owners=(self._renderer, self.landmarker))
            if key is not None:
                cache.put(key, entry)
        elif entry.photo.path != path:  # the same content under another name: messages name this file
            entry = dataclasses.replace(entry, photo=dataclasses.replace(entry.photo, path=path))
        timings["prepare"] = time.perf_counter() - t0
        timings.setdefault("load", 0.0)
        if not encode:
            return entry
        t0 = time.perf_counter()
        self.load(motion=motion)
        if not entry.encoded:
            source = self.source_tensor(entry.photo.crop.crop)
            kp_source = self.detect_source(source)
            renderer = self.renderer
            entry = PreparedSource(photo=entry.photo, source=source, kp_source=kp_source,
                                   encoding=renderer.encode_source(source, kp_source),
                                   owners=(renderer, self.landmarker))
            if key is not None:
                cache.put(key, entry)
        timings["load"] = time.perf_counter() - t0
        return entry

    def compositor(self, photo: SourcePhoto, face_size: Optional[int] = None):
        """The :class:`talkhead.compose.Compositor` pasting rendered crops into ``photo.image``
        (``frame="full"``), or ``None`` (``frame="crop"``: the renderer's squares are the video).

        ``face_size``: the side of the crops it will paste, when not the render's (the restore stage's
        ``2 S``): the compositor is then built for the same box cut at that size
        (:func:`talkhead.crop.crop_at_size`), so the face is pasted from its own resolution; its colour
        statistics stay at the render's ``S / 2`` (the plain path's colour match)."""
        if self.options.frame != "full":
            return None
        from .compose import Compositor

        crop = photo.crop
        if face_size is not None and face_size != crop.size:
            from .crop import crop_at_size

            return Compositor(photo.image, crop_at_size(photo.image, crop, face_size), colour_side=crop.size // 2)
        return Compositor(photo.image, crop)

    def photo_stages(self, prepared: PreparedSource) -> PhotoStages:
        """What every frame of an encoded ``prepared`` source (:meth:`prepare_source`) uses: the restore stage
        (:meth:`restore_stage`) and the compositor at the side the stages paste (:meth:`compositor`). The one
        photo set-up of :meth:`start_render` and the live session.

        Raises:
            InputError: ``options.enhance`` without its weights or without the face's landmarks.
        """
        restore = self.restore_stage(prepared.photo, prepared.kp_source)
        side = restore.out_size if restore is not None else self.frame_size
        return PhotoStages(prepared=prepared, restore=restore, compositor=self.compositor(prepared.photo, side),
                           face_side=side)

    # -- the whole job ------------------------------------------------------------------------------
    def run(self, photo: str | Path, motion: MotionSource, output: str | Path, *,
            save_keypoints: str | Path | None = None, keep_keypoints: bool = True,
            progress: Progress | None = None, preview: Optional[Callable[..., object]] = None) -> Result:
        """Render ``output`` (MP4: H.264 yuv420p [+ AAC]) of the face in ``photo`` moved by ``motion``.

        The one orchestrator of every way a face is moved (``animate``, ``reenact``, ``batch``, the web
        page): input files exist, the outputs are checked once (none is an input, even with
        ``overwrite``), the motion source decodes its input and the photo's face is found - all before
        any model loads; then photo -> kp_source, and for each kp_driving batch the motion source
        yields: render -> [paste back into the photo] -> encode, streamed. The MP4 (and the keypoints
        ``.npz``) are written atomically: on any error or Ctrl-C nothing partial remains.
        It is :meth:`prepare` (no file written; the photo through :attr:`source_cache`) then :meth:`render`
        (:meth:`start_render` + :meth:`RenderedRun.complete`), the halves a batch overlaps.

        Args:
            photo: a face photo (PNG, JPEG, WebP, BMP).
            motion: the :class:`MotionSource` (:class:`SpeechMotion`, :class:`talkhead.reenact.VideoMotion`).
            output: the MP4 to write.
            save_keypoints: optional ``.npz`` of the keypoints (:func:`talkhead.keypoints.save_keypoints_npz`;
                the arrays each motion source documents).
            keep_keypoints: return the driving keypoints in the result (``(T, K, ...)``, 240 bytes a
                frame for K = 10).
            progress: ``progress(stage, done, total)`` callback (stages ``keypoints``, ``best-frame``,
                ``render``).
            preview: a second frame sink for every frame as it is written, made when the video's size is
                known: ``preview(size=(W, H), fps=, audio_path=, crf=)`` returns an object with ``write(frames)``,
                ``close()`` and ``abort()``, e.g. ``functools.partial(talkhead.video.SegmentWriter, folder,
                on_segment)`` (short playable MP4 segments while the whole MP4 renders: the web page).
                It is closed before the MP4 is finished; an error in either aborts both.

        Returns:
            The motion source's :class:`Result` (:class:`AnimateResult`, :class:`talkhead.reenact.ReenactResult`).

        Raises:
            InputError / AudioError / AudioTooShortError / ImageError / NoFaceError: bad input.
            OutputError: an output exists (without ``overwrite``), cannot be written, is one of the
                inputs (photo, speech, driving video; refused even with ``overwrite``), or the output
                and ``save_keypoints`` are the same file.
            NonFiniteError: NaN/inf keypoints or frames (``stage`` keypoints / render).
            DownloadError / CheckpointError / ConfigError: missing or bad checkpoints.
            FFmpegError: encoding failed.
        """
        return self.render(self.prepare(photo, motion, output, save_keypoints=save_keypoints,
                                        keep_keypoints=keep_keypoints), progress=progress, preview=preview)

    def prepare(self, photo: str | Path, motion: MotionSource, output: str | Path, *,
                save_keypoints: str | Path | None = None, keep_keypoints: bool = True,
                encode: bool = True, prefetch: bool = False) -> PreparedRun:
        """The first half of :meth:`run` (same arguments, same checks and errors, in the same order):
        the inputs exist, the outputs are checked, the motion source decodes its input
        (``motion.prepare``) and the photo is prepared (:meth:`prepare_source`, through the source cache;
        ``encode=False``: without its keypoints and encoding, which :meth:`start_render` then computes).
        ``prefetch`` (with ``encode``): a motion source that can (``motion.prefetch(pipeline, kp_source)``,
        :meth:`SpeechMotion.prefetch`) also generates its first keypoint window now.
        Nothing is written. A batch prepares the next pair in a thread while the current one renders.

        Raises:
            As :meth:`run`, except FFmpegError / NonFiniteError of rendering.
        """
        from .io import check_input_file, check_outputs

        motion.check(self)
        photo = check_input_file(photo, "photo")
        inputs = [check_input_file(path, role) for path, role in motion.inputs]
        output, save_keypoints = check_outputs([output, save_keypoints], [photo, *inputs],
                                               overwrite=self.options.overwrite)
        t0 = time.perf_counter()
        motion.prepare(self)
        timings: dict = {}
        try:
            source = self.prepare_source(photo, motion=motion.needs_generator, encode=encode, timings=timings)
        except NoFaceError:
            self.flush_notes()  # which landmarker looked matters to a face it did not find
            raise
        if prefetch and source.encoded and hasattr(motion, "prefetch"):
            t1 = time.perf_counter()
            motion.prefetch(self, source.kp_source)
            timings["load"] += time.perf_counter() - t1
        timings["prepare"] = time.perf_counter() - t0 - timings["load"]
        return PreparedRun(motion=motion, output=output, save_keypoints=save_keypoints,
                           keep_keypoints=keep_keypoints, source=source, timings=timings)

    def render(self, prepared: PreparedRun, *, progress: Progress | None = None,
               preview: Optional[Callable[..., object]] = None) -> Result:
        """The second half of :meth:`run`: render, encode and finish the video of a :meth:`prepare` d run.

        Raises:
            As :meth:`run`.
        """
        return self.start_render(prepared, progress=progress, preview=preview).complete()

    def start_render(self, prepared: PreparedRun, *, progress: Progress | None = None,
                     preview: Optional[Callable[..., object]] = None) -> RenderedRun:
        """Render every frame of ``prepared`` into ffmpeg (and ``preview``, :meth:`run`); return the
        :class:`RenderedRun` whose ``complete()`` finishes the MP4 (or ``abort()`` discards it). On an error
        here ffmpeg (and the preview) is killed and its temporary file removed before the error propagates.

        Raises:
            As :meth:`run`.
        """
        from .video import FrameTee, VideoWriter

        motion, source = prepared.motion, prepared.source
        if not source.encoded:
            source = prepared.source = self.prepare_source(source.photo.path, motion=motion.needs_generator,
                                                           timings=prepared.timings)
        run = MotionRun(pipeline=self, photo=source.photo, source=source.source, kp_source=source.kp_source,
                        keep=prepared.keep_keypoints or prepared.save_keypoints is not None, progress=progress)
        stages = self.photo_stages(source)
        size = stages.frame_size
        t0 = time.perf_counter()
        writer = VideoWriter(prepared.output, size=size, fps=motion.fps, audio_path=motion.audio,
                             crf=self.options.crf, overwrite=self.options.overwrite)
        writer.__enter__()
        second = None
        try:
            if preview is not None:
                second = preview(size=size, fps=motion.fps, audio_path=motion.audio, crf=self.options.crf)
                second.__enter__()
            done = self.render_into(writer if second is None else FrameTee(writer, second), source.source,
                                    source.kp_source, motion.batches(run), motion.num_frames, progress,
                                    compositor=stages.compositor, restore=stages.restore, encoding=source.encoding)
        except BaseException:
            if second is not None:
                second.abort()
            writer.abort()
            raise
        return RenderedRun(self, prepared, run, writer, done, t0, preview=second)

    def animate(self, image_path: str | Path, audio_path: str | Path, output_path: str | Path, *,
                save_keypoints: str | Path | None = None,
                progress: Progress | None = None) -> AnimateResult:
        """Render ``output_path`` (MP4: H.264 yuv420p + AAC, 25 fps, faststart, as long as the speech)
        from a photo and speech: :meth:`run` with :class:`SpeechMotion`.

        Args:
            image_path: a photo (PNG, JPEG, WebP, BMP) holding a face.
            audio_path: speech in any format ffmpeg or libsndfile reads.
            output_path: the MP4 to write.
            save_keypoints: optional ``.npz`` receiving ``kp_driving_value (T,K,2)``,
                ``kp_driving_jacobian (T,K,2,2)``, ``kp_source_value (1,K,2)``,
                ``kp_source_jacobian (1,K,2,2)``, ``crop_box (4,)``, ``crop_affine (2,3)`` and ``fps``.
            progress: ``progress(stage, done, total)`` callback.

        Raises:
            As :meth:`run`.
        """
        return self.run(image_path, SpeechMotion(audio_path), output_path, save_keypoints=save_keypoints,
                        progress=progress)

    def render_batch(self, encoding, kp_driving: Keypoints, restore=None, *, first: int = 0) -> torch.Tensor:
        """Render one kp_driving batch ``(b, K, ...)`` from the encoded source
        (``renderer.encode_source``) and restore it with ``restore`` (a
        :class:`talkhead.restore.FaceRestoreStage`, or ``None``): ``(b, 3, S, S)`` float in [0, 1] on the
        renderer's device (``(b, 3, 2 S, 2 S)`` restored). ``first``: the batch's first frame number (messages).

        Raises:
            NonFiniteError: ``stage="render"`` / ``"restore"``: the rendered or restored frames hold NaN/inf.
        """
        hint = "; with --precision fp16 it may have overflowed, try bf16 or fp32" if self.options.precision == "fp16" else ""
        last = first + len(kp_driving) - 1
        frames = self.renderer.render(encoding, kp_driving)  # (b, 3, S, S) in [0, 1]
        _check_finite("render", f"frames {first}-{last}{hint}", frames)
        if restore is not None:
            piece = self.piece_frames or len(frames)
            frames = torch.cat([restore(frames[s:s + piece], kp_driving[s:s + piece])  # (b, 3, 2S, 2S) in [0, 1]
                                for s in range(0, len(frames), piece)])
            _check_finite("restore", f"restored frames {first}-{last}", frames)
        return frames

    def render_into(self, writer, source: torch.Tensor, kp_source: Keypoints, batches: Iterable[Keypoints],
                    total: int, progress: Progress | None = None, *, compositor=None, restore=None,
                    encoding=None) -> int:
        """Render each kp_driving batch of ``batches`` and stream the frames into ``writer``; return the
        number of frames written.

        With a ``restore`` stage (:class:`talkhead.restore.FaceRestoreStage`) each rendered batch is
        restored on the renderer's device first (``(b, 3, 2 S, 2 S)``, driven by the batch's keypoints).
        With a ``compositor`` each rendered ``(b, S, S, 3)`` batch (``2 S`` when restored) is pasted
        into the photo (``(b, H, W, 3)`` uint8, one reused buffer) before it is written.

        Device traffic: the frames stay on the renderer's device until they are bytes: without a
        compositor they are converted to uint8 there (:func:`talkhead.video.to_uint8_frames`) and
        only those cross to the host; with one, the float32 crops ``(b, S, S, 3)`` do (the paste-back
        colour-matches in float on the host, :class:`talkhead.compose.Compositor`), never a
        full-size frame. With :attr:`writer_thread` the paste-back and ``writer.write`` run in a
        background thread (:class:`talkhead.video.WriterThread`, 2 batches queued) while the next
        batch renders; the frames written are the same either way.

        Args:
            writer: has ``write(frames (b, H, W, 3) uint8)``.
            source: the photo's crop ``(1, 3, S, S)``; kp_source: its keypoints ``(1, K, ...)``.
            batches: kp_driving batches ``(b, K, ...)`` in frame order (e.g. :func:`held_batches`).
            total: the expected number of frames (progress only).
            encoding: ``renderer.encode_source(source, kp_source)`` when already computed (a
                :class:`PreparedSource`'s); default: computed here.

        Progress is reported per rendered batch (with the writer thread, up to 3 batches before
        they are encoded).

        Raises:
            NonFiniteError: ``stage="render"`` / ``"restore"``: a rendered or restored batch holds
                NaN/inf (checked before it reaches the encoder, so the writer aborts and nothing is written).
            Whatever ``batches``, ``writer.write`` or the compositor raise (the same exception, also
            from the thread).
        """
        from .video import WriterThread

        threaded = self.writer_thread
        buffer = None
        renderer = self.renderer

        def paste(frames: np.ndarray) -> np.ndarray:
            nonlocal buffer
            if buffer is None or buffer.shape[0] != len(frames):
                buffer = compositor.new_buffer(len(frames))
            return compositor.paste(frames, out=buffer)

        done = 0
        if encoding is None:
            encoding = renderer.encode_source(source, kp_source)  # once; every batch renders from it
        with WriterThread(writer.write, paste if compositor is not None else None, threaded=threaded) as out:
            piece = self.piece_frames
            for kp_driving in batches:
                frames = self.render_batch(encoding, kp_driving, restore, first=done)
                for s in range(0, len(frames), piece or len(frames)):  # the paste-back buffer holds one piece
                    out.put(host_frames(frames[s:s + piece] if piece else frames, uint8=compositor is None, own=threaded))
                done += len(kp_driving)
                if progress:
                    progress("render", done, max(done, total))
        return done


def held_batches(kp_driving: Keypoints | Iterable[Keypoints], total: int, batch_size: int, *,
                 first: Optional[int] = None) -> Iterator[Keypoints]:
    """``total`` frames of ``kp_driving`` ``(T, K, ...)`` in batches of ``batch_size``: frame ``t`` is
    ``kp_driving[min(t, T - 1)]``, so the last pose is held when the video needs more frames than
    there are keypoint sets (see :func:`num_video_frames`) and the extra sets are dropped when it
    needs fewer. ``first``: the first batch's size when smaller (the first frames out sooner).

    ``kp_driving`` may also be an iterable of windows ``(w_i, K, ...)`` (a streamed generator,
    :meth:`SpeechMotion.batches`): they are regrouped into the same batches as it arrives, each batch
    yielded as soon as its frames exist; windows past ``total`` frames are still consumed (so the
    generator finishes) and dropped.

    Raises:
        ValueError: ``kp_driving`` is empty, or ``total``/``batch_size`` below 1.
    """
    if total < 1 or batch_size < 1:
        raise ValueError(f"held_batches needs total >= 1 and batch_size >= 1 (total={total}, "
                         f"batch_size={batch_size})")
    windows = [kp_driving] if isinstance(kp_driving, Keypoints) else kp_driving
    pending: list[Keypoints] = []
    have = emitted = 0
    last: Optional[Keypoints] = None
    for window in windows:
        room = total - emitted - have
        if len(window):
            last = window[-1]
        if room <= 0 or not len(window):
            continue
        window = window[:room] if len(window) > room else window
        pending.append(window)
        have += len(window)
        while have >= (size := batch_size if emitted or not first else min(first, batch_size)):
            joined = pending[0] if len(pending) == 1 else Keypoints.cat(pending)
            yield joined[:size]
            rest = joined[size:]
            pending, have, emitted = ([rest] if len(rest) else []), have - size, emitted + size
    if last is None:
        raise ValueError("held_batches needs keypoints (T=0)")
    while emitted < total:
        size = batch_size if emitted or not first else min(first, batch_size)
        fill = min(size, total - emitted) - have
        if fill > 0:
            pending.append(Keypoints(last.value.expand(fill, *last.value.shape[1:]),
                                     None if last.jacobian is None else last.jacobian.expand(fill, *last.jacobian.shape[1:])))
        joined = pending[0] if len(pending) == 1 else Keypoints.cat(pending)
        n = min(size, total - emitted)
        yield joined[:n]
        rest = joined[n:]
        pending, have, emitted = ([rest] if len(rest) else []), len(rest), emitted + n


def speech_keypoint_windows(pipeline: Pipeline, kp_source: Keypoints,
                            windows: Iterable[Keypoints]) -> Iterator[Keypoints]:
    """Each generated window ``(w, 10, ...)`` moved to the pipeline's device, checked finite and its head
    motion scaled by ``options.motion_scale`` (:func:`talkhead.keypoints.scale_head_motion`, frame by
    frame, so windows give the same keypoints as the whole sequence).

    Raises:
        NonFiniteError: ``stage="keypoints"``: NaN/inf generated keypoints.
    """
    done = 0
    for window in windows:
        window = window.to(pipeline.device)
        _check_finite("keypoints", f"generated driving keypoints {done}-{done + len(window) - 1}", window.value,
                      window.jacobian)
        if pipeline.options.motion_scale != 1.0:
            window = scale_head_motion(window, kp_source, pipeline.options.motion_scale)
        done += len(window)
        yield window


def speech_keypoints(pipeline: Pipeline, kp_source: Keypoints, logfbank: np.ndarray,
                     progress: Progress | None = None) -> Keypoints:
    """kp_driving ``(T, K, ...)`` on the pipeline's device, generated by its motion generator (MS-Sync)
    from kp_source ``(1, K, ...)`` (``K``: the motion generator's keypoint count, 10 for the released MS-Sync) and ``logfbank (M, 26)`` at 100 Hz, the head motion scaled by
    ``options.motion_scale`` (:func:`talkhead.keypoints.scale_head_motion`; 1 leaves the keypoints
    untouched). ``T`` is :func:`talkhead.mssync.num_frames` of the speech (25 fps). The whole sequence at
    once; :class:`SpeechMotion` streams it instead.

    Raises:
        NonFiniteError: ``stage="keypoints"``: NaN/inf generated keypoints.
    """
    return next(speech_keypoint_windows(pipeline, kp_source, [pipeline.motion(kp_source, logfbank, progress=progress)]))


KEYPOINT_WINDOW = 25
"""Keypoint frames MS-Sync generates per window while a video renders (1 s at 25 fps): the first frame
renders after one window, whatever the speech's length."""


class SpeechMotion:
    """A :class:`MotionSource` driven by speech: the audio -> 16 kHz logfbank -> the pipeline's motion
    generator (MS-Sync) -> kp_driving at 25 fps, its head motion scaled by ``options.motion_scale``.

    The video has :func:`num_video_frames` frames (as long as the speech within one frame); frame
    ``t`` is drawn from kp_driving ``min(t, T-1)`` (:func:`held_batches`). The speech's own file is
    muxed as the audio track.

    Streaming: :meth:`prepare` decodes the file once without keeping its samples
    (:func:`talkhead.audio.scan_speech`: length, normalisation, the input checks); :meth:`batches` decodes
    it again block by block, computes the logfbank as the blocks come (:func:`talkhead.audio.logfbank_stream`)
    and, with a motion generator that streams (``stream(kp_source, chunks, num_rows, window=, progress=)``,
    :class:`talkhead.mssync.windowed.StreamingMSSyncMotion`, what :meth:`Pipeline.load` loads), generates the keypoints window by window
    (:data:`KEYPOINT_WINDOW` frames, :func:`talkhead.mssync.windowed.stream_keypoints`), yielding each
    batch as soon as its keypoints exist: the first frame is rendered after one window, and neither the
    samples, the logfbank nor the audio pyramid are held for the whole clip. The keypoints equal the
    one-pass generation's. A motion generator without ``stream`` gets the whole logfbank at once. With a
    single-use pipeline the motion generator it loaded is released once the last window is generated.

    ``--save-keypoints`` arrays: ``kp_driving_value (T,K,2)``, ``kp_driving_jacobian (T,K,2,2)``,
    ``kp_source_*`` ``(1,K,...)`` (K = 10 for FOMM), ``crop_box (4,)``, ``crop_affine (2,3)``, ``fps`` (25). The driving
    keypoints are kept (on the CPU, 240 bytes a frame) only when the run keeps them.

    Args:
        audio: speech in any format ffmpeg or libsndfile reads.

    Raises:
        InputError (:meth:`check`): the motion generator (released, or ``options.motion_model``) and the
            renderer are of different keypoint spaces (:meth:`Pipeline.check_motion_pairing`).
        AudioError / AudioTooShortError (:meth:`prepare`): undecodable, silent or too short speech.
    """

    needs_generator = True
    fps = float(FPS)

    def __init__(self, audio: str | Path):
        self.path = Path(audio)
        self.inputs = ((self.path, "audio"),)
        self.audio: Optional[Path] = self.path
        self.num_frames = 0
        self.duration_s = 0.0
        self._info = None
        self._kept: list[Keypoints] = []
        self._prefetched: Optional[tuple] = None  # (kp_source, progress relay, windows, first window): prefetch

    def check(self, pipeline: "Pipeline") -> None:
        pipeline.check_motion_pairing()

    def prepare(self, pipeline: "Pipeline") -> None:
        from .audio import scan_speech

        self._info = scan_speech(self.path)
        self.duration_s = self._info.duration_s
        self.num_frames = num_video_frames(self.duration_s)
        limit = pipeline.options.max_seconds
        if limit is not None and self.duration_s > limit:
            raise InputError(f"speech '{self.path}' lasts {_minutes(self.duration_s)}, more than --max-seconds "
                             f"{limit:g} ({_minutes(limit)}): {self.num_frames:,} frames to render, hours on a CPU "
                             "(README, Performance); raise --max-seconds (0 = no limit) to render it anyway")
        peak = self._info.max_abs
        if peak > 1.0:  # only a float file can hold samples above full scale
            pipeline.log(f"note: speech '{self.path}' peaks at {peak:.1f} x full scale: the keypoints use it as it "
                         "is, but the video's audio track will be clipped (normalise the file to avoid it)")

    def _windows(self, pipeline: "Pipeline", kp_source: Keypoints, progress: Progress | None) -> Iterator[Keypoints]:
        from .audio import logfbank_stream, speech_blocks

        info = self._info
        chunks = logfbank_stream(speech_blocks(self.path, decoder=info.decoder), info)
        motion = pipeline.motion
        if hasattr(motion, "stream"):
            windows = motion.stream(kp_source, chunks, info.num_logfbank_rows, window=KEYPOINT_WINDOW,
                                    progress=progress)
        else:
            windows = iter([motion(kp_source, np.concatenate(list(chunks)), progress=progress)])
        yield from speech_keypoint_windows(pipeline, kp_source, windows)
        if pipeline.single_use:
            pipeline.release_motion()

    def prefetch(self, pipeline: "Pipeline", kp_source: Keypoints) -> None:
        """Generate the first keypoint window now (after :meth:`prepare`), so that :meth:`batches` starts
        rendering at once: a batch does this for the next pair while the current one renders
        (:meth:`Pipeline.prepare` with ``prefetch``). The windows are the same; the ``keypoints`` progress
        of the first window is passed on when :meth:`batches` starts.

        Raises:
            AudioError: the streamed decode failed. NonFiniteError: NaN/inf keypoints.
        """
        relay = _ProgressRelay()
        windows = self._windows(pipeline, kp_source, relay)
        first = next(windows, None)
        self._prefetched = (kp_source, relay, windows, first)

    def batches(self, run: MotionRun) -> Iterator[Keypoints]:
        self._kept = []
        prefetched, self._prefetched = self._prefetched, None
        if prefetched is not None and prefetched[0] is run.kp_source:
            _, relay, rest, first = prefetched
            relay.attach(run.progress)
            windows = itertools.chain(() if first is None else (first,), rest)
        else:
            windows = self._windows(run.pipeline, run.kp_source, run.progress)

        def kept(windows):
            for window in windows:
                if run.keep:
                    self._kept.append(window.to("cpu"))
                yield window

        yield from held_batches(kept(windows), self.num_frames, run.pipeline.batch_size, first=run.pipeline.piece_frames)

    def finish(self, run: MotionRun, result: dict) -> tuple[Result, dict, dict]:
        kp_driving = Keypoints.cat(self._kept) if self._kept else None
        self._kept = []
        out = AnimateResult(**{**result, "duration_s": self.duration_s}, kp_driving=kp_driving)
        return out, ({"kp_driving": kp_driving} if kp_driving is not None else {}), {"fps": np.int64(FPS)}


class _ProgressRelay:
    """A ``progress(stage, done, total)`` callback whose receiver is attached later: calls before
    :meth:`attach` are held (the last one per stage) and replayed to it."""

    def __init__(self):
        self._target: Progress | None = None
        self._held: dict = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self._target is None:
            self._held[stage] = (done, total)
        else:
            self._target(stage, done, total)

    def attach(self, target: Progress | None) -> None:
        held, self._held = self._held, {}
        self._target = target
        if target is not None:
            for stage, (done, total) in held.items():
                target(stage, done, total)


def _minutes(seconds: float) -> str:
    """``95.0`` -> ``"1.6 min"``; under a minute, seconds."""
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.1f} s"


def animate(image: str | Path, audio: str | Path, output: str | Path, options: AnimateOptions = AnimateOptions(),
            *, save_keypoints: str | Path | None = None, progress: Progress | None = None) -> AnimateResult:
    """One-call API: load the models per ``options`` and render ``output`` from ``image`` + ``audio``.

    See :meth:`Pipeline.animate` for formats, outputs and errors. For many pairs, build one
    :class:`Pipeline` and call its ``animate`` repeatedly (models load once).
    """
    return Pipeline(options, single_use=True).animate(image, audio, output, save_keypoints=save_keypoints,
                                                      progress=progress)


__all__ = ["AnimateOptions", "Result", "AnimateResult", "SourcePhoto", "PreparedSource", "PhotoStages", "SourceCache", "PreparedRun",
           "RenderedRun", "MotionRun", "MotionSource", "SpeechMotion",
           "speech_keypoints", "speech_keypoint_windows", "KEYPOINT_WINDOW", "Pipeline", "animate", "held_batches", "resolve_device", "num_video_frames", "host_frames", "TalkheadError"]
