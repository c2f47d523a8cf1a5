"""The `animate` pipeline: photo + speech -> MP4, composed from the stage modules.

Data path::

    image  -> load_image (H,W,3 uint8) -> landmarker / select_face -> fomm_crop (S,S,3 float [0,1])
    audio  -> load_speech (16 kHz mono) -> logfbank (M,26) at 100 Hz
    crop   -> renderer.detect -> kp_source Keypoints (1,10,2) + (1,10,2,2)
    kp_source + logfbank -> motion generator (MS-Sync) -> kp_driving Keypoints (T,...) at 25 fps
    crop + kp_source + kp_driving[t0:t1] -> renderer.render (batched) -> frames -> ffmpeg (+ audio) -> MP4

Each stage is a plain function or a small object of the module that owns it; this module only composes
them, owns the device, batching and progress reporting, and checks inputs before any heavy work. Its
components (renderer, motion generator, landmarker) can be given to :class:`Pipeline` already built
(tests, a second renderer); otherwise they are loaded from the models directory. The keypoints drive
the renderer as absolute positions, as in the reference ``execute_model.make_animation`` (no relative
motion transfer): MS-Sync generates them starting from the source's own keypoints.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from .constants import FPS
from .devices import resolve_device
from .errors import InputError, NonFiniteError, TalkheadError
from .keypoints import Keypoints, scale_head_motion
from .options import AnimateOptions
from .progress import Progress
from .renderers import MotionGenerator, Renderer, get_renderer



@dataclass
class AnimateResult:
    """What one ``animate`` call produced.

    Attributes:
        output: the written MP4.
        num_frames: frames in the video (25 fps).
        duration_s: the audio's duration, seconds.
        crop_box: ``(x0, y0, x1, y1)`` of the face crop in image pixels.
        kp_source: the source crop's keypoints ``(1, 10, ...)`` (CPU).
        kp_driving: the generated keypoints ``(T, 10, ...)`` at 25 fps (CPU), values in [-1, 1] of the
            keypoint grid.
        timings: seconds per stage (``landmarks``, ``keypoints``, ``render``).
    """

    output: Path
    num_frames: int
    duration_s: float
    crop_box: tuple
    kp_source: Keypoints
    kp_driving: Keypoints
    timings: dict = field(default_factory=dict)

    @property
    def keypoints(self) -> np.ndarray:
        """``(T, 10, 2)`` float32 kp_driving values."""
        return self.kp_driving.numpy()[0]

    @property
    def jacobians(self) -> np.ndarray:
        """``(T, 10, 2, 2)`` float32 kp_driving jacobians."""
        return self.kp_driving.numpy()[1]


@dataclass
class AnimateInputs:
    """The checked inputs of one ``animate`` run (:meth:`Pipeline.prepare`), before any model runs.

    Attributes:
        image / audio / output: the paths (output absolute).
        speech: the decoded :class:`talkhead.audio.Speech` (16 kHz mono).
        logfbank: ``(M, 26)`` float64 log filterbank at 100 Hz.
        photo: ``(H, W, 3)`` uint8 RGB, EXIF-rotated.
        crop: the :class:`talkhead.face.FaceCrop` at the renderer's frame size.
        seconds: time spent decoding and finding the face.
    """

    image: Path
    audio: Path
    output: Path
    speech: object
    logfbank: np.ndarray
    photo: np.ndarray
    crop: object
    seconds: float = 0.0


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


def check_input_file(path: Path, what: str) -> Path:
    """``path`` as a Path if it is an existing regular file; else :class:`InputError` naming ``what``."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} not found: {path}")
    if not path.is_file():
        raise InputError(f"{what} is not a file: {path}")
    return path


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
    """Components + options; call :meth:`animate` once per (image, audio) pair.

    Components not given are loaded once, on first use (:meth:`load`), from the models directory
    (checkpoints are downloaded then unless ``options.offline``), so a batch of pairs pays for it once.

    Args:
        options: the run's :class:`~talkhead.options.AnimateOptions`.
        renderer: a built :class:`~talkhead.renderers.Renderer` (FOMM's ``detect``/``render``
            interface); default: the registered ``fomm`` renderer loaded from the models directory.
        motion: a :class:`~talkhead.renderers.MotionGenerator`, ``motion(kp_source, logfbank,
            progress) -> kp_driving``; default: MS-Sync loaded from the models directory.
        landmarker: a callable ``image (H, W, 3) uint8 -> list[talkhead.face.Face]``; default: the
            ``options.landmarker`` backend.
        log: receives one-line status messages (model loading, downloads).
        single_use: the pipeline makes one video (what ``talkhead animate`` and :func:`animate` do):
            the motion generator it loaded itself is released once the keypoints are generated, and its
            memory returned to the system before rendering (:func:`talkhead.memory.return_freed_memory`;
            135 MiB for the released MS-Sync), which lowers the run's peak RSS. A later :meth:`animate`
            call loads it again. A ``motion`` given to the constructor is never released.

    Raises:
        DownloadError / CheckpointError / ConfigError: missing or bad checkpoints.
        InputError: an unavailable device, or a ``precision`` refused on it
            (:func:`talkhead.devices.check_precision`).
    """

    def __init__(self, options: AnimateOptions = AnimateOptions(), *, renderer: Renderer | None = None,
                 motion: MotionGenerator | None = None, landmarker: Callable | None = None,
                 log: Callable[[str], None] | None = None, single_use: bool = False):
        from .devices import check_precision

        self.options = options
        self.device = resolve_device(options.device)
        check_precision(options.precision, self.device)  # one line, before any model loads
        self.landmarker = landmarker
        self._log = log
        self.log = log or (lambda msg: None)
        self._backend: str | None = None
        self.models_dir: Optional[Path] = None
        if renderer is None or motion is None:
            from .store import resolve_models_dir

            self.models_dir = resolve_models_dir(options.models_dir)
        self._renderer = renderer
        self._motion = motion
        self._single_use = bool(single_use)
        self._owns_motion = False  # loaded by load(), so it can be released and loaded again
        self._precision_applied: object = None

    def load(self, *, motion: bool = True) -> "Pipeline":
        """Load the components not given to the constructor (downloading missing checkpoints unless
        ``options.offline``); a no-op once loaded. :meth:`animate` calls it after checking its inputs,
        so bad input never waits for (or triggers) a download. ``motion=False``: the renderer only
        (what rendering needs, so a released motion generator is not loaded again for it).

        Raises:
            DownloadError / CheckpointError / ConfigError: missing or bad checkpoints.
        """
        if self._renderer is not None and (self._motion is not None or not motion):
            return self
        from .store import ensure_models, model_paths

        self.log(f"loading models from {self.models_dir}")
        entry = get_renderer(self.options.renderer)
        load_motion = motion and self._motion is None
        needed = (*(entry.store_names if self._renderer is None else ()), *(("mssync",) if load_motion else ()))
        if needed:
            ensure_models(self.models_dir, names=needed, offline=self.options.offline, log=self._log)
        if self._renderer is None:
            self._renderer = entry.load(self.models_dir, self.device, self.options)
        if load_motion:
            from .mssync import MSSyncMotion, load_mssync

            self._motion = MSSyncMotion(load_mssync(model_paths(self.models_dir).mssync_dir, device=self.device))
            self._owns_motion = True
        return self

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
        return int(get_renderer(self.options.renderer).frame_size(self.models_dir))

    @property
    def batch_size(self) -> int:
        """Frames per render pass: ``options.batch_size``, or for ``auto`` the device's
        :func:`talkhead.devices.default_batch_size` (1 on CPU, 8 on CUDA)."""
        from .devices import default_batch_size

        return self.options.batch_size or default_batch_size(self.device)

    @property
    def writer_thread(self) -> bool:
        """Whether paste-back and encoding run in a background thread (:class:`talkhead.video.WriterThread`):
        ``options.writer_thread``, or by default :func:`talkhead.devices.default_writer_thread`
        (on for CUDA/MPS, off on CPU)."""
        from .devices import default_writer_thread

        wt = self.options.writer_thread
        return default_writer_thread(self.device) if wt is None else bool(wt)

    # -- stages -------------------------------------------------------------------------------------
    def face_crop(self, image: np.ndarray, source: str = "image"):
        """Landmarks + FOMM crop of an RGB image ``(H, W, 3)`` uint8 -> ``talkhead.face.FaceCrop``.

        With ``frame="full"`` the square stays centred on the face at FOMM's size even where it leaves
        the photo (mirrored padding, ``fomm_crop(pad=True)``); with ``frame="crop"`` it is shifted
        inside the photo, as FOMM's own crop does.

        Raises:
            NoFaceError: no (confident) face, or ``face_index`` out of range.
        """
        from .face import detect_faces, fomm_crop, no_crop, select_face

        if self.options.crop == "none":
            return no_crop(image, self.frame_size)
        if self.landmarker is not None:
            faces = sorted(self.landmarker(np.ascontiguousarray(image)), key=lambda f: f.area, reverse=True)
        else:
            faces = detect_faces(image, backend=self.landmark_backend(), device=str(self.device),
                                 offline=self.options.offline)
        face = select_face(faces, index=self.options.face_index, source=source)
        return fomm_crop(image, face, self.frame_size, pad=self.options.frame == "full")

    def landmark_backend(self) -> str:
        """``options.landmarker`` resolved once (``auto`` -> fan or dlib, with a log line on fallback)."""
        if self._backend is None:
            from .face import resolve_landmarker

            self._backend, note = resolve_landmarker(self.options.landmarker, offline=self.options.offline)
            if note:
                self.log(note)
        return self._backend

    def source_tensor(self, crop: np.ndarray) -> torch.Tensor:
        """``(S, S, 3)`` float [0,1] crop -> ``(1, 3, S, S)`` float32 tensor on the device."""
        return torch.from_numpy(np.ascontiguousarray(crop, dtype=np.float32)).permute(2, 0, 1)[None].to(self.device)

    def keypoints(self, source: torch.Tensor, logfbank: np.ndarray,
                  progress: Progress | None = None) -> tuple[Keypoints, Keypoints]:
        """kp_source of the source ``(1, 3, S, S)`` and the generated kp_driving for ``logfbank (M, 26)``.

        The generated head motion is scaled by ``options.motion_scale``
        (:func:`talkhead.keypoints.scale_head_motion`; 1 leaves the keypoints untouched).

        Returns:
            ``(kp_source (1, 10, ...), kp_driving (T, 10, ...))`` Keypoints on the device (25 fps).

        Raises:
            NonFiniteError: ``stage="keypoints"``: kp_source or kp_driving holds NaN/inf.
        """
        kp_source = self.renderer.detect(source)
        _check_finite("keypoints", "keypoints of the source photo", kp_source.value, kp_source.jacobian)
        kp_driving = self.motion(kp_source, logfbank, progress=progress).to(self.device)
        _check_finite("keypoints", "generated driving keypoints", kp_driving.value, kp_driving.jacobian)
        if self.options.motion_scale != 1.0:
            kp_driving = scale_head_motion(kp_driving, kp_source, self.options.motion_scale)
        return kp_source, kp_driving

    def photo(self, image: np.ndarray, source: str = "image") -> np.ndarray:
        """The photo the video is made of: ``image`` ``(H, W, 3)`` uint8 as is for ``frame="crop"``; for
        ``frame="full"`` downscaled to ``max_size`` (longest side) and made even-sized for yuv420p by one
        mirrored row/column (:func:`talkhead.compose.limit_size`, :func:`~talkhead.compose.even_size`).

        Raises:
            InputError: ``max_size`` below the renderer's frame size, or a photo smaller than that frame in
                both directions (``frame="full"``).
        """
        if self.options.frame != "full":
            return image
        from .compose import even_size, limit_size

        size = self.frame_size
        if self.options.max_size < size:
            raise InputError(f"--max-size {self.options.max_size} is smaller than the renderer's {size}x{size} "
                             "frame")
        h, w = image.shape[:2]
        if max(h, w) < size:
            raise InputError(f"image '{source}' is {w}x{h} pixels, smaller than the {size}x{size} frame the "
                             "renderer draws; use a larger photo or --frame crop")
        return even_size(limit_size(image, self.options.max_size))

    # -- the whole job ------------------------------------------------------------------------------
    def prepare(self, image_path: str | Path, audio_path: str | Path, output_path: str | Path, *,
                save_keypoints: str | Path | None = None) -> "AnimateInputs":
        """Every check and input stage that needs no checkpoint, before any model is loaded.

        Paths exist; the outputs can be written (not existing unless ``overwrite``); the audio decodes,
        is not silent and is long enough, and gives its logfbank; the image decodes and holds a face,
        which is cropped (FOMM's rule) at the renderer's frame size; with ``frame="full"`` the photo is
        first capped at ``max_size`` and made even-sized (:meth:`photo`).

        Returns:
            :class:`AnimateInputs`.

        Raises:
            InputError / AudioError / AudioTooShortError / ImageError / NoFaceError.
            OutputError: an output exists (without ``overwrite``), cannot be written, or is one of the
                inputs (refused even with ``overwrite``).
        """
        from .audio import load_speech, logfbank
        from .face import load_image
        from .io import check_not_input, check_output_path

        image_path = check_input_file(Path(image_path), "image")
        audio_path = check_input_file(Path(audio_path), "audio")
        check_not_input(output_path, image_path, audio_path)
        output_path = check_output_path(Path(output_path), self.options.overwrite)
        if save_keypoints is not None:
            check_not_input(save_keypoints, image_path, audio_path, output_path)
            check_output_path(Path(save_keypoints), self.options.overwrite)
        t0 = time.perf_counter()
        speech = load_speech(audio_path)
        features = logfbank(speech.samples, speech.sample_rate)
        image = self.photo(load_image(image_path), source=str(image_path))
        self.log(f"finding the face in {image_path}")
        crop = self.face_crop(image, source=str(image_path))
        return AnimateInputs(image=image_path, audio=audio_path, output=output_path, speech=speech,
                             logfbank=features, photo=image, crop=crop, seconds=time.perf_counter() - t0)

    def animate(self, image_path: str | Path, audio_path: str | Path, output_path: str | Path, *,
                save_keypoints: str | Path | None = None,
                progress: Progress | None = None) -> AnimateResult:
        """Render ``output_path`` (MP4: H.264 yuv420p + AAC, 25 fps, faststart) from a photo and speech.

        Inputs are checked before any heavy work; the MP4 (and the keypoints ``.npz``) are written
        atomically: on any error or Ctrl-C nothing partial remains.

        Args:
            image_path: a photo (PNG, JPEG, WebP, BMP) holding a face.
            audio_path: speech in any format ffmpeg or libsndfile reads.
            output_path: the MP4 to write.
            save_keypoints: optional ``.npz`` receiving ``kp_driving_value (T,10,2)``,
                ``kp_driving_jacobian (T,10,2,2)``, ``kp_source_value (1,10,2)``,
                ``kp_source_jacobian (1,10,2,2)``, ``crop_box (4,)`` and ``crop_affine (2,3)``.
            progress: ``progress(stage, done, total)`` callback.

        Raises:
            InputError / AudioError / AudioTooShortError / ImageError / NoFaceError: bad input.
            OutputError: the output exists (without ``overwrite``), cannot be written, or is one of
                the inputs (refused even with ``overwrite``).
            NonFiniteError: NaN/inf keypoints or frames (``stage`` keypoints / render).
            FFmpegError: encoding failed.
        """
        from .io import atomic_output
        from .video import VideoWriter

        entry = get_renderer(self.options.renderer)
        if not entry.audio_driven and self._renderer is None:
            raise InputError(f"--renderer {entry.name} cannot be driven by speech: the released MS-Sync generates "
                             f"FOMM's 10-keypoint space, {entry.name} uses {entry.num_kp} keypoints; use it with "
                             f"`talkhead reenact --renderer {entry.name}`")
        inputs = self.prepare(image_path, audio_path, output_path, save_keypoints=save_keypoints)
        speech, features, crop, output_path = inputs.speech, inputs.logfbank, inputs.crop, inputs.output
        timings = {"landmarks": inputs.seconds}
        self.load()

        t0 = time.perf_counter()
        source = self.source_tensor(crop.crop)
        kp_source, kp_driving = self.keypoints(source, features, progress)
        timings["keypoints"] = time.perf_counter() - t0
        duration_s, total = speech.duration_s, num_video_frames(speech.duration_s)
        compositor = self.compositor(inputs)
        audio_file = inputs.audio
        # rendering needs neither the samples nor the logfbank (38 + 12.5 MiB at 10 minutes of speech)
        del inputs, speech, features
        if self._single_use:
            self.release_motion()

        size = (compositor.shape[1], compositor.shape[0]) if compositor else (self.frame_size, self.frame_size)
        t0 = time.perf_counter()
        with VideoWriter(output_path, size=size, fps=FPS, audio_path=audio_file,
                         crf=self.options.crf, overwrite=self.options.overwrite) as writer:
            self.render_into(writer, source, kp_source, kp_driving, total, progress, compositor=compositor)
        timings["render"] = time.perf_counter() - t0

        kp_source, kp_driving = kp_source.to("cpu"), kp_driving.to("cpu")
        if save_keypoints is not None:
            (value, jacobian), (src_value, src_jacobian) = kp_driving.numpy(), kp_source.numpy()
            with atomic_output(Path(save_keypoints), overwrite=self.options.overwrite) as tmp:
                with open(tmp, "wb") as fh:
                    np.savez(fh, kp_driving_value=value, kp_driving_jacobian=jacobian,
                             kp_source_value=src_value, kp_source_jacobian=src_jacobian,
                             crop_box=np.asarray(crop.box, dtype=np.float64),
                             crop_affine=np.asarray(crop.affine, dtype=np.float64), fps=np.int64(FPS))
        return AnimateResult(output=output_path, num_frames=total, duration_s=duration_s,
                             crop_box=tuple(crop.box), kp_source=kp_source, kp_driving=kp_driving, timings=timings)

    def compositor(self, inputs: AnimateInputs):
        """The :class:`talkhead.compose.Compositor` pasting rendered crops into ``inputs.photo``
        (``frame="full"``), or ``None`` (``frame="crop"``: the renderer's squares are the video)."""
        if self.options.frame != "full":
            return None
        from .compose import Compositor

        return Compositor(inputs.photo, inputs.crop)

    def render_into(self, writer, source: torch.Tensor, kp_source: Keypoints, kp_driving: Keypoints,
                    total: int, progress: Progress | None = None, *, compositor=None) -> None:
        """Render ``total`` frames in batches of :attr:`batch_size` and stream them into ``writer``.

        Frame ``t`` uses kp_driving ``min(t, T-1)``: the last generated pose is held when the video
        needs more frames than the generator made (see :func:`num_video_frames`). With a
        ``compositor`` each rendered ``(b, S, S, 3)`` batch is pasted into the photo
        (``(b, H, W, 3)`` uint8, one reused buffer) before it is written.

        Device traffic: the frames stay on the renderer's device until they are bytes: without a
        compositor they are converted to uint8 there (:func:`talkhead.video.to_uint8_frames`) and
        only those cross to the host; with one, the float32 crops ``(b, S, S, 3)`` do (the paste-back
        colour-matches in float on the host, :class:`talkhead.compose.Compositor`), never a
        full-size frame. With :attr:`writer_thread` the paste-back and ``writer.write`` run in a
        background thread (:class:`talkhead.video.WriterThread`, 2 batches queued) while the next
        batch renders; the frames written are the same either way.

        Progress is reported per rendered batch (with the writer thread, up to 3 batches before
        they are encoded).

        Raises:
            NonFiniteError: ``stage="render"``: a rendered batch holds NaN/inf (checked before it
                reaches the encoder, so the writer aborts and nothing is written).
            Whatever ``writer.write`` or the compositor raise (the same exception, also from the thread).
        """
        from .video import WriterThread

        T = len(kp_driving)
        bs = self.batch_size
        threaded = self.writer_thread
        hint = "; with --precision fp16 it may have overflowed, try bf16 or fp32" if self.options.precision == "fp16" else ""
        buffer = None

        def paste(frames: np.ndarray) -> np.ndarray:
            nonlocal buffer
            if buffer is None or buffer.shape[0] != len(frames):
                buffer = compositor.new_buffer(len(frames))
            return compositor.paste(frames, out=buffer)

        encoding = self.renderer.encode_source(source, kp_source)  # once; every batch renders from it
        with WriterThread(writer.write, paste if compositor is not None else None, threaded=threaded) as out:
            for start in range(0, total, bs):
                idx = torch.arange(start, min(start + bs, total), device=kp_driving.device).clamp_(max=T - 1)
                frames = self.renderer.render(encoding, kp_driving[idx])  # (b, 3, S, S) in [0, 1]
                _check_finite("render", f"frames {start}-{start + int(idx.numel()) - 1}{hint}", frames)
                out.put(host_frames(frames, uint8=compositor is None, own=threaded))
                if progress:
                    progress("render", int(idx.numel()) + start, total)


def animate(image: str | Path, audio: str | Path, output: str | Path, options: AnimateOptions = AnimateOptions(),
            *, save_keypoints: str | Path | None = None, progress: Progress | None = None) -> AnimateResult:
    """One-call API: load the models per ``options`` and render ``output`` from ``image`` + ``audio``.

    See :meth:`Pipeline.animate` for formats, outputs and errors. For many pairs, build one
    :class:`Pipeline` and call its ``animate`` repeatedly (models load once).
    """
    return Pipeline(options, single_use=True).animate(image, audio, output, save_keypoints=save_keypoints,
                                                      progress=progress)


__all__ = ["AnimateOptions", "AnimateResult", "Pipeline", "animate", "resolve_device", "num_video_frames",
           "host_frames", "TalkheadError"]
