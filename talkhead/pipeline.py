"""The `animate` pipeline: photo + speech -> MP4, composed from the stage modules.

Data path (see ARCHITECTURE.md)::

    image  -> load_image (H,W,3 uint8) -> detect_faces / select_face -> fomm_crop (S,S,3 float [0,1])
    audio  -> load_speech (16 kHz mono) -> logfbank (M,26) at 100 Hz
    crop   -> FOMM keypoint detector -> kp_source {value (1,10,2), jacobian (1,10,2,2)}
    kp_source + logfbank -> MS-Sync generator -> kp_driving (T,10,2) + (T,10,2,2) at 25 fps
    crop + kp_source + kp_driving[t0:t1] -> FOMM generator (batched) -> frames -> ffmpeg (+ audio) -> MP4

Each stage is a plain function of the module that owns it; this module only composes them, owns the
device, batching and progress reporting, and checks inputs before any heavy work. The keypoints drive
FOMM as absolute positions, as in the reference ``execute_model.make_animation`` (no relative motion
transfer): MS-Sync generates them starting from the source's own keypoints.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from .constants import FPS
from .devices import DEVICES, resolve_device
from .errors import InputError, TalkheadError

ProgressCallback = Callable[[str, int, int], None]
"""``progress(stage, done, total)``; stages: ``"keypoints"`` (frames generated) and ``"render"``
(frames rendered and encoded). Called from the worker thread; must be cheap."""

LANDMARKERS = ("fan", "dlib")
CROPS = ("auto", "none")


@dataclass(frozen=True)
class AnimateOptions:
    """Every option of an ``animate`` run, from the CLI to the pipeline (one object, no long arg lists).

    Attributes:
        models_dir: checkpoint directory; ``None`` -> ``$TALKHEAD_MODELS`` -> the platform cache dir.
        device: ``"auto"`` (cuda > mps > cpu), ``"cpu"``, ``"cuda"`` or ``"mps"``.
        landmarker: 68-point landmark backend, ``"fan"`` (face-alignment) or ``"dlib"`` (offline).
        crop: ``"auto"`` crops around the detected face with FOMM's rule; ``"none"`` uses the whole
            image (it must already be a face crop framed like FOMM's VoxCeleb data).
        face_index: which face when several are found (0 = largest); ``None`` = largest confident.
        batch_size: frames per FOMM render pass.
        overwrite: replace an existing output; otherwise an existing output is an error.
        offline: never download; missing checkpoints are an error with by-hand instructions.
        align_corners: FOMM ``grid_sample`` convention; ``True`` is vox-adv's training-time behaviour.
        crf: H.264 constant rate factor of the output video.
    """

    models_dir: Optional[Path] = None
    device: str = "auto"
    landmarker: str = "fan"
    crop: str = "auto"
    face_index: Optional[int] = None
    batch_size: int = 8
    overwrite: bool = False
    offline: bool = False
    align_corners: bool = True
    crf: int = 18

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise InputError(f"--device must be one of {', '.join(DEVICES)}, not {self.device!r}")
        if self.landmarker not in LANDMARKERS:
            raise InputError(f"--landmarker must be one of {', '.join(LANDMARKERS)}, not {self.landmarker!r}")
        if self.crop not in CROPS:
            raise InputError(f"--crop must be one of {', '.join(CROPS)}, not {self.crop!r}")
        if self.batch_size < 1:
            raise InputError(f"--batch-size must be at least 1, not {self.batch_size}")
        if self.face_index is not None and self.face_index < 0:
            raise InputError(f"--face-index must be 0 or more, not {self.face_index}")


@dataclass
class AnimateResult:
    """What one ``animate`` call produced.

    Attributes:
        output: the written MP4.
        num_frames: frames in the video (25 fps).
        duration_s: the audio's duration, seconds.
        crop_box: ``(x0, y0, x1, y1)`` of the face crop in image pixels.
        keypoints: ``(T, 10, 2)`` generated kp_driving values in [-1, 1] of the keypoint grid.
        jacobians: ``(T, 10, 2, 2)`` generated kp_driving jacobians.
        timings: seconds per stage (``landmarks``, ``keypoints``, ``render``).
    """

    output: Path
    num_frames: int
    duration_s: float
    crop_box: tuple
    keypoints: np.ndarray
    jacobians: np.ndarray
    timings: dict = field(default_factory=dict)


def num_video_frames(duration_s: float) -> int:
    """Frames of the output video for audio of ``duration_s`` seconds: ``round(duration_s * 25)``.

    The generator yields ``T = talkhead.mssync.num_frames(n)`` keypoint frames, which is one or two
    short of this (and more above ~38.6 s, see ``num_frames``); the pipeline holds the last generated
    pose for the missing frames so the MP4 lasts as long as the audio, within one frame.
    """
    return max(1, int(round(duration_s * FPS)))


@contextlib.contextmanager
def _single_cpu_thread(device: torch.device):
    """One intra-op thread for the autoregressive MS-Sync loop on CPU (restored afterwards).

    Each decoding step is a handful of batch-1 ops, so a second thread gains nothing, and when another
    process holds a core OpenMP spin-waiting makes it far slower. Full-size model, 124 frames, 2-core
    machine with one core busy: 66 fps with one thread; 54 fps and then 3.8 fps with two.
    """
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _check_file(path: Path, what: str) -> Path:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} not found: {path}")
    if not path.is_file():
        raise InputError(f"{what} is not a file: {path}")
    return path


class Pipeline:
    """Loaded models + options; call :meth:`animate` once per (image, audio) pair.

    Loading happens once in the constructor (checkpoints are downloaded on first use unless
    ``options.offline``), so a batch of pairs pays for it once.

    Raises:
        DownloadError / CheckpointError / ConfigError: missing or bad checkpoints.
        InputError: an unavailable device.
    """

    def __init__(self, options: AnimateOptions = AnimateOptions(), *, log: Callable[[str], None] | None = None):
        from .fomm import load_fomm
        from .models import ensure_models, resolve_models_dir
        from .mssync import load_mssync

        self.options = options
        self.device = resolve_device(options.device)
        self.models_dir = resolve_models_dir(options.models_dir)
        paths = ensure_models(self.models_dir, offline=options.offline, log=log)
        self.fomm = load_fomm(paths.fomm_config, paths.fomm_checkpoint, device=self.device,
                              align_corners=options.align_corners)
        self.mssync = load_mssync(paths.mssync_dir, device=self.device)

    @property
    def frame_size(self) -> int:
        """Side of the square frames FOMM renders, pixels (from the FOMM config)."""
        return int(self.fomm.frame_size)

    # -- stages -------------------------------------------------------------------------------------
    def face_crop(self, image: np.ndarray, source: str = "image"):
        """Landmarks + FOMM crop of an RGB image ``(H, W, 3)`` uint8 -> ``talkhead.face.FaceCrop``."""
        from .face import detect_faces, fomm_crop, no_crop, select_face

        if self.options.crop == "none":
            return no_crop(image, self.frame_size)
        faces = detect_faces(image, backend=self.options.landmarker, device=str(self.device),
                             offline=self.options.offline)
        face = select_face(faces, index=self.options.face_index, source=source)
        return fomm_crop(image, face, self.frame_size)

    def source_tensor(self, crop: np.ndarray) -> torch.Tensor:
        """``(S, S, 3)`` float [0,1] crop -> ``(1, 3, S, S)`` float32 tensor on the device."""
        return torch.from_numpy(np.ascontiguousarray(crop, dtype=np.float32)).permute(2, 0, 1)[None].to(self.device)

    def keypoints(self, source: torch.Tensor, logfbank: np.ndarray, progress: ProgressCallback | None = None):
        """kp_source of the source ``(1,3,S,S)`` and the MS-Sync kp_driving sequence for ``logfbank (M,26)``.

        Returns:
            ``(kp_source, value (T,10,2) np.float32, jacobian (T,10,2,2) np.float32)``.
        """
        from .mssync import generate_keypoints

        kp_source = self.fomm.detect(source)
        cb = (lambda done, total: progress("keypoints", done, total)) if progress else None
        with _single_cpu_thread(self.device):
            value, jacobian = generate_keypoints(self.mssync, kp_source["value"], kp_source["jacobian"], logfbank,
                                                 progress=cb)
        to_np = lambda t: t.detach().float().cpu().numpy() if torch.is_tensor(t) else np.asarray(t, np.float32)
        return kp_source, to_np(value), to_np(jacobian)

    # -- the whole job ------------------------------------------------------------------------------
    def animate(self, image_path: str | Path, audio_path: str | Path, output_path: str | Path, *,
                save_keypoints: str | Path | None = None,
                progress: ProgressCallback | None = None) -> AnimateResult:
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
            OutputError: the output exists (without ``overwrite``) or cannot be written.
            FFmpegError: encoding failed.
        """
        from .audio import load_speech, logfbank
        from .face import load_image
        from .io import atomic_output, check_output_path
        from .video import VideoWriter

        image_path = _check_file(Path(image_path), "image")
        audio_path = _check_file(Path(audio_path), "audio")
        output_path = Path(output_path)
        check_output_path(output_path, self.options.overwrite)
        if save_keypoints is not None:
            check_output_path(Path(save_keypoints), self.options.overwrite)

        timings = {}
        t0 = time.perf_counter()
        speech = load_speech(audio_path)
        features = logfbank(speech.samples, speech.sample_rate)
        image = load_image(image_path)
        crop = self.face_crop(image, source=str(image_path))
        timings["landmarks"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        source = self.source_tensor(crop.crop)
        kp_source, value, jacobian = self.keypoints(source, features, progress)
        timings["keypoints"] = time.perf_counter() - t0

        total = num_video_frames(speech.duration_s)
        t0 = time.perf_counter()
        with VideoWriter(output_path, size=(self.frame_size, self.frame_size), fps=FPS, audio_path=audio_path,
                         crf=self.options.crf, overwrite=self.options.overwrite) as writer:
            self.render_into(writer, source, kp_source, value, jacobian, total, progress)
        timings["render"] = time.perf_counter() - t0

        if save_keypoints is not None:
            with atomic_output(Path(save_keypoints), overwrite=self.options.overwrite) as tmp:
                with open(tmp, "wb") as fh:
                    np.savez(fh, kp_driving_value=value, kp_driving_jacobian=jacobian,
                             kp_source_value=kp_source["value"].float().cpu().numpy(),
                             kp_source_jacobian=kp_source["jacobian"].float().cpu().numpy(),
                             crop_box=np.asarray(crop.box, dtype=np.float64),
                             crop_affine=np.asarray(crop.affine, dtype=np.float64), fps=np.int64(FPS))
        return AnimateResult(output=output_path, num_frames=total, duration_s=speech.duration_s,
                             crop_box=tuple(crop.box), keypoints=value, jacobians=jacobian, timings=timings)

    def render_into(self, writer, source: torch.Tensor, kp_source: dict, value: np.ndarray,
                    jacobian: np.ndarray, total: int, progress: ProgressCallback | None = None) -> None:
        """Render ``total`` frames in batches of ``options.batch_size`` and stream them into ``writer``.

        Frame ``t`` uses kp_driving ``min(t, T-1)``: the last generated pose is held when the video
        needs more frames than the generator made (see :func:`num_video_frames`).
        """
        T = value.shape[0]
        value_t = torch.from_numpy(value).to(self.device)
        jacobian_t = torch.from_numpy(jacobian).to(self.device)
        bs = self.options.batch_size
        for start in range(0, total, bs):
            idx = torch.arange(start, min(start + bs, total), device=self.device).clamp_(max=T - 1)
            kp_driving = {"value": value_t[idx], "jacobian": jacobian_t[idx]}
            frames = self.fomm.render(source, kp_source, kp_driving)  # (b, 3, S, S) in [0, 1]
            writer.write(frames.permute(0, 2, 3, 1).float().cpu().numpy())
            if progress:
                progress("render", int(idx.numel()) + start, total)


def animate(image: str | Path, audio: str | Path, output: str | Path, options: AnimateOptions = AnimateOptions(),
            *, save_keypoints: str | Path | None = None, progress: ProgressCallback | None = None) -> AnimateResult:
    """One-call API: load the models per ``options`` and render ``output`` from ``image`` + ``audio``.

    See :meth:`Pipeline.animate` for formats, outputs and errors. For many pairs, build one
    :class:`Pipeline` and call its ``animate`` repeatedly (models load once).
    """
    return Pipeline(options).animate(image, audio, output, save_keypoints=save_keypoints, progress=progress)


__all__ = ["AnimateOptions", "AnimateResult", "Pipeline", "animate", "resolve_device", "num_video_frames",
           "TalkheadError"]
