"""Run options, declared once: frozen dataclasses that travel from the CLI to the pipeline.

Each field carries its CLI flag and help text in ``dataclasses.field(metadata=...)``; the Typer
commands are generated from these fields by :func:`talkhead.cli_options.with_options`, so an option is
declared in exactly one place (whisper's ``DecodingOptions``, LivePortrait's ``ArgumentConfig``).
This module imports neither torch nor any model code, so ``talkhead --help`` stays fast.

Metadata keys: ``help`` (text), ``flags`` (tuple of option names; default ``--field-name``),
``cli`` (``False`` keeps a field out of the CLI), ``choices`` (allowed strings, listed in the help).
"""
from __future__ import annotations

import math
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .constants import DETECT_EVERY_S, DEVICES, MAX_DETECTIONS, PRECISIONS
from .errors import InputError
from .landmarks import LANDMARKER_CHOICES as LANDMARKERS

CROPS = ("auto", "none")
"""``--crop`` choices: ``auto`` crops around the face with FOMM's rule; ``none`` takes the image as a crop."""

FRAMES = ("full", "crop")
"""``--frame`` choices: ``full`` = the whole photo with the face pasted back; ``crop`` = the renderer's square."""

ENHANCERS = ("none", "gfpgan")
"""``--enhance`` choices: ``none``; ``gfpgan`` = the restore stage with GFPGAN v1.4 (:mod:`talkhead.restore`)."""

DEFAULT_ENHANCE_STRENGTH = 0.5
"""``--enhance-strength`` default: half restored face, half render (why: README, "Sharper faces")."""

DEFAULT_MAX_SIZE = 1920
"""``--max-size`` default: longest side of the output video, pixels."""

DEFAULT_MAX_SECONDS = 1800.0
"""``animate --max-seconds`` default: 30 minutes of speech, 45,000 frames at 25 fps, which is hours of
rendering on a CPU (README, Performance); a longer input is refused before any model runs unless the
limit is raised (0 = no limit)."""


def opt(default, help: str, *flags: str, cli: bool = True, choices: tuple[str, ...] | None = None,
        auto: bool = False):
    """A dataclass field with CLI metadata (see the module docstring); ``auto``: the CLI value ``auto``
    means ``None`` (a numeric option whose default is chosen at run time)."""
    meta = {"help": help, "flags": flags, "cli": cli, "choices": choices, "auto": auto}
    return field(default=default, metadata=meta)


def same_as(cls: type, name: str, *, default=dataclasses.MISSING, help: str | None = None):
    """A copy of ``cls``'s field ``name`` (its flag, help and choices) for another options dataclass,
    optionally with another ``default`` or ``help``: an option that means the same in two commands is
    declared once."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    meta = dict(f.metadata)
    if help is not None:
        meta["help"] = help
    return field(default=f.default if default is dataclasses.MISSING else default, metadata=meta)


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    """Raise :class:`InputError` ``--name must be one of ...`` unless ``value`` is in ``choices``."""
    if value not in choices:
        raise InputError(f"--{name.replace('_', '-')} must be one of {', '.join(choices)}, not {value!r}")


@dataclass(frozen=True)
class AnimateOptions:
    """Every option of an ``animate`` run, from the CLI to the pipeline (one object, no long arg lists).

    Attributes:
        models_dir: checkpoint directory; ``None`` -> ``$TALKHEAD_MODELS`` -> the platform cache dir.
        device: ``"auto"`` (cuda > mps > cpu), ``"cpu"``, ``"cuda"`` or ``"mps"``.
        landmarker: 68-point landmark backend: ``"auto"`` (fan when its weights are cached or can be
            fetched, else dlib with a note; :func:`talkhead.landmarks.resolve_landmarker`), ``"fan"``
            (face-alignment) or ``"dlib"`` (offline). ``LANDMARKERS`` is
            :data:`talkhead.landmarks.LANDMARKER_CHOICES` (the backend registry).
        crop: ``"auto"`` crops around the detected face with FOMM's rule; ``"none"`` uses the whole
            image (it must already be a face crop framed like FOMM's VoxCeleb data).
        face_index: which face when several are found (0 = largest); ``None`` = largest confident.
        batch_size: frames per render pass; ``None`` (``--batch-size auto``) = the device's default,
            :func:`talkhead.devices.default_batch_size` (CPU: 8 for FOMM, rendered in pieces of 2, and 2
            for SMAC; 8 on CUDA; why: its docstring).
        precision: the renderer's arithmetic, one of :data:`PRECISIONS`: ``"fp32"`` (exact, the
            default); ``"fp16"``/``"bf16"`` run FOMM's decoder (bottleneck, up blocks, final conv:
            most of its time on CPU, ``benchmarks/README.md``, "Reduced precision") in that precision
            under ``torch.autocast``, while keypoints,
            jacobians, the dense motion and the warp grids stay float32
            (:attr:`talkhead.fomm.FOMM.precision`). Where each may run:
            :func:`talkhead.devices.check_precision` (fp16: CUDA only; bf16: CUDA, or a CPU with
            native bf16 arithmetic).
        writer_thread: paste-back and encoding in a background thread while the next batch renders
            (:class:`talkhead.video.WriterThread`); ``None`` = the device's default,
            :func:`talkhead.devices.default_writer_thread` (on for CUDA/MPS, off on CPU). API only.
        overwrite: replace an existing output; otherwise an existing output is an error.
        offline: never download; missing checkpoints are an error with by-hand instructions.
        align_corners: FOMM ``grid_sample`` convention; ``True`` is vox-adv's training-time behaviour.
        frame: ``"full"`` writes the photo at its own size (after EXIF rotation and ``max_size``,
            even-rounded) with the rendered face pasted back; ``"crop"`` writes the renderer's square.
        max_size: the photo is downscaled so its longest side is at most this, pixels (``frame="full"``).
        motion_scale: head motion multiplier (0 = still head, lips and expression kept; 1 = as generated).
        still: shorthand for ``motion_scale=0``.
        renderer: the registered renderer (:mod:`talkhead.renderers`).
        motion_model: an MS-Sync model folder (``args`` + ``model_chkpt.pt``: ``RUN_DIR/mssync`` of
            ``train generator``, or ``RUN_DIR``) used instead of the downloaded one; its keypoint space
            (``args``) must be the renderer's (:meth:`talkhead.pipeline.Pipeline.check_motion_pairing`).
            ``None``: the released MS-Sync (FOMM's space).
        crf: H.264 constant rate factor of the output video.
        enhance: face restoration between render and paste-back, one of :data:`ENHANCERS` (``"gfpgan"``:
            :class:`talkhead.restore.FaceRestoreStage` with GFPGAN v1.4, installed with
            ``talkhead download gfpgan``; needs the face's landmarks, so not with ``crop="none"``).
        enhance_strength: blend of the restored face with the render, in [0, 1].
        max_seconds: refuse speech longer than this many seconds (checked before any model runs);
            ``0`` or ``None`` = no limit. Default :data:`DEFAULT_MAX_SECONDS`.

    Raises:
        InputError: a value out of range or not among the choices (quoted in the message).
    """

    models_dir: Optional[Path] = opt(None, "Checkpoint folder [default: $TALKHEAD_MODELS, else the platform "
                                     "cache, ~/.cache/talkhead on Linux].")
    device: str = opt("auto", "Where to run: auto (cuda > mps > cpu), cpu, cuda or mps.", choices=DEVICES)
    landmarker: str = opt("auto", "68-point landmarks: auto (fan if its weights are cached or can be fetched, "
                          "else dlib), fan (face-alignment) or dlib (offline).", choices=LANDMARKERS)
    crop: str = opt("auto", "auto: crop around the face (FOMM rule); none: the image is already a face crop.",
                    choices=CROPS)
    face_index: Optional[int] = opt(None, "Which face when several are found (0 = largest) "
                                    "[default: the largest confident face].")
    batch_size: Optional[int] = opt(None, "Frames per render pass, or auto [default: auto = 8 on CPU with FOMM "
                                    "(rendered 2 at a time, the motion network's deep layers once per pass; "
                                    "measured fastest), 2 with SMAC, 8 on CUDA].", auto=True)
    precision: str = opt("fp32", "Renderer arithmetic: fp32 (exact); fp16 or bf16 (faster, frames within a few "
                         "8-bit levels) on CUDA; bf16 also on CPUs with native bf16 (AVX512-BF16/AMX).",
                         choices=PRECISIONS)
    writer_thread: Optional[bool] = opt(None, "Paste-back + encoding in a background thread.", cli=False)
    overwrite: bool = opt(False, "Replace existing outputs.")
    offline: bool = opt(False, "Never download checkpoints.")
    align_corners: bool = opt(True, "FOMM grid_sample convention: on = the torch-1.0 behaviour vox-adv was "
                              "trained with.", "--align-corners/--no-align-corners")
    frame: str = opt("full", "full: the whole photo with the animated face pasted back; crop: only the "
                     "renderer's square face crop.", choices=FRAMES)
    max_size: int = opt(DEFAULT_MAX_SIZE, "Downscale photos whose longest side exceeds this, pixels (--frame full).")
    motion_scale: float = opt(1.0, "Head motion: 0 = still head (lips and expression kept), 0.5 calmer, 1 as "
                              "generated, 1.5 livelier.")
    still: bool = opt(False, "Hold the head still (= --motion-scale 0).")
    renderer: str = opt("fomm", "Renderer: fomm (First Order Motion Model), or smac (non-commercial licence; "
                        "reenact, or animate with a --motion-model trained for it).")
    motion_model: Optional[Path] = opt(None, "A trained MS-Sync folder (args + model_chkpt.pt: RUN_DIR/mssync of "
                                       "`talkhead train generator`, or RUN_DIR) instead of the downloaded one; it "
                                       "must speak the renderer's keypoints.")
    crf: int = opt(18, "H.264 constant rate factor (lower = better quality, bigger file).", cli=False)
    enhance: str = opt("none", "Face restoration: none, or gfpgan (GFPGAN v1.4 on the face, following the head; "
                       "`talkhead download gfpgan` first).", choices=ENHANCERS)
    enhance_strength: float = opt(DEFAULT_ENHANCE_STRENGTH, "Blend of the restored face with the render, 0 to 1 "
                                  "(--enhance).")
    max_seconds: Optional[float] = opt(DEFAULT_MAX_SECONDS, "Refuse speech longer than this many seconds, before "
                                       "any model runs (30 min = 45,000 frames, hours of rendering on a CPU); "
                                       "0 = no limit.")

    def __post_init__(self) -> None:
        check_choice("device", self.device, DEVICES)
        check_choice("landmarker", self.landmarker, LANDMARKERS)
        check_choice("crop", self.crop, CROPS)
        if self.batch_size is not None and self.batch_size < 1:
            raise InputError(f"--batch-size must be at least 1 or auto, not {self.batch_size}")
        check_choice("precision", self.precision, PRECISIONS)
        if self.face_index is not None and self.face_index < 0:
            raise InputError(f"--face-index must be 0 or more, not {self.face_index}")
        check_choice("frame", self.frame, FRAMES)
        from .renderers import get_renderer

        get_renderer(self.renderer)  # InputError naming the registered renderers
        if isinstance(self.max_size, bool) or not isinstance(self.max_size, int) or self.max_size < 2:
            raise InputError(f"--max-size must be a whole number of pixels >= 2, not {self.max_size!r}")
        try:
            scale = float(self.motion_scale)
        except (TypeError, ValueError):
            raise InputError(f"--motion-scale must be a number >= 0, not {self.motion_scale!r}") from None
        if isinstance(self.motion_scale, bool) or not math.isfinite(scale) or scale < 0:
            raise InputError(f"--motion-scale must be a finite number >= 0, not {self.motion_scale!r}")
        if self.still:
            scale = 0.0
        object.__setattr__(self, "motion_scale", scale)
        check_choice("enhance", self.enhance, ENHANCERS)
        try:
            strength = float(self.enhance_strength)
        except (TypeError, ValueError):
            raise InputError(f"--enhance-strength must be a number in [0, 1], not {self.enhance_strength!r}") from None
        if isinstance(self.enhance_strength, bool) or not 0.0 <= strength <= 1.0:  # NaN fails too
            raise InputError(f"--enhance-strength must be a number in [0, 1], not {self.enhance_strength!r}")
        object.__setattr__(self, "enhance_strength", strength)
        if self.enhance != "none" and self.crop == "none":
            raise InputError(f"--enhance {self.enhance} needs the face's landmarks to align it: use it with --crop "
                             "auto, not --crop none")
        if self.models_dir is not None and not isinstance(self.models_dir, Path):
            object.__setattr__(self, "models_dir", Path(self.models_dir))
        if self.motion_model is not None and not isinstance(self.motion_model, Path):
            object.__setattr__(self, "motion_model", Path(self.motion_model))
        if self.max_seconds is not None:
            try:
                limit = float(self.max_seconds)
            except (TypeError, ValueError):
                raise InputError(f"--max-seconds must be a number of seconds >= 0, not {self.max_seconds!r}") from None
            if isinstance(self.max_seconds, bool) or not limit >= 0 or math.isinf(limit):  # NaN fails too
                raise InputError(f"--max-seconds must be a number of seconds >= 0 (0 = no limit), not "
                                 f"{self.max_seconds!r}")
            object.__setattr__(self, "max_seconds", limit or None)


def parse_shard(value) -> tuple[int, int]:
    """``"I/N"`` (or ``(I, N)``) -> ``(I, N)`` with ``0 <= I < N``.

    Raises:
        InputError: anything else (the message quotes ``--shard``).
    """
    try:
        i, n = (int(x) for x in (value.split("/") if isinstance(value, str) else value))
        if not 0 <= i < n:
            raise ValueError
    except (ValueError, TypeError):
        raise InputError(f"--shard must be I/N with 0 <= I < N, not {value!r}") from None
    return i, n


@dataclass(frozen=True)
class ReenactOptions(AnimateOptions):
    """Every option of a ``reenact`` run (photo + driving video -> MP4): :class:`AnimateOptions`'
    fields (same meaning; ``crop`` applies to the photo and to the driving video; ``renderer`` picks
    the renderer; ``motion_scale``/``still`` are not used) plus these.

    Attributes:
        relative: FOMM demo ``--relative``: transfer the driving *motion* (each frame's keypoints
            relative to the initial driving frame's) onto the photo's keypoints, relative jacobians
            included; ``False`` (``--absolute``) drives the renderer with the driving keypoints as
            they are (the photo then takes the driving face's shape and place).
        adapt_scale: FOMM demo ``--adapt_scale``: scale the relative movement by
            ``sqrt(area(kp_source) / area(kp_driving_initial))`` (convex hulls of the keypoints).
            Ignored with ``relative=False``.
        find_best_frame: FOMM demo ``--find_best_frame``: the initial driving frame is the one whose
            face is closest to the photo's (normalised 68 landmarks), not the first.
        fps: output frame rate (frames per second); ``None`` = the driving video's own.
        max_seconds: refuse a driving video longer than this (seconds); ``None`` (default) or ``0`` = no limit.

    Raises:
        InputError: a value out of range or not among the choices (quoted in the message).
    """

    relative: bool = opt(True, "Relative motion transfer (FOMM demo --relative); --absolute uses the driving "
                         "keypoints as they are.", "--relative/--absolute")
    adapt_scale: bool = opt(True, "Scale the relative movement by the keypoint hulls' size ratio (FOMM demo "
                            "--adapt_scale).", "--adapt-scale/--no-adapt-scale")
    find_best_frame: bool = opt(False, "Start from the driving frame whose face is closest to the photo's "
                                "(by landmarks), not from the first (FOMM demo --find_best_frame).",
                                "--find-best-frame")
    fps: Optional[float] = opt(None, "Output frame rate [default: the driving video's].")
    max_seconds: Optional[float] = same_as(AnimateOptions, "max_seconds", default=None,
                                           help="Refuse driving videos longer than this many seconds [default: no "
                                                "limit].")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.fps is not None and not 0 < self.fps <= 240:
            raise InputError(f"--fps must be in (0, 240], not {self.fps}")


@dataclass(frozen=True)
class PreprocessOptions:
    """Every option of a ``preprocess`` run (videos -> training clips; :func:`talkhead.train.preprocess.preprocess`).

    ``models_dir``, ``device``, ``landmarker`` and ``offline`` are :class:`AnimateOptions`' fields
    (same flags and help); ``device`` defaults to ``cpu`` here, as before (``auto`` also works).

    Attributes:
        renderer: the registered renderer whose keypoint detector makes the training keypoints (its
            keypoint space: ``fomm`` 10, ``smac`` 15), recorded in the data manifest.
        crop: ``"auto"``: one fixed FOMM crop per clip around the tracked face; ``"none"``: the videos
            already are face crops (whole frames resized).
        shard: ``"I/N"``: process only share ``I`` of ``N`` (:func:`talkhead.train.preprocess.shard_jobs`);
            merge the outputs with ``talkhead merge-shards``. :attr:`shard_index` is ``(I, N)``.
        split: split label recorded in the manifest for the new clips.
        min_frames: skip clips with fewer usable frames (25 fps).
        max_av_mismatch_frames: skip clips whose audio and video durations differ by more frames.
        detect_every_s: seconds between frames sampled for face detection.
        max_detections: at most this many sampled frames per video.
        min_face_fraction: skip unless the speaker's face is in at least this fraction of the samples.
        min_score: detector score a face needs (``None``: its backend's, :func:`talkhead.landmarks.confident_score`).
        batch_size: frames per keypoint-detector batch.
        retry_skipped: also retry videos an earlier run skipped.
        flush_every: rewrite the manifest after this many new clips.

    Raises:
        InputError: a value out of range or not among the choices (quoted with its flag).
    """

    models_dir: Optional[Path] = same_as(AnimateOptions, "models_dir")
    device: str = same_as(AnimateOptions, "device", default="cpu", help="Where to run: cpu (the default here), "
                          "auto (cuda > mps > cpu), cuda or mps.")
    landmarker: str = same_as(AnimateOptions, "landmarker")
    offline: bool = same_as(AnimateOptions, "offline")
    renderer: str = same_as(AnimateOptions, "renderer", help="Whose keypoints to extract: fomm (10, what the released "
                            "MS-Sync speaks) or smac (15, to train MS-Sync for SMAC; non-commercial licence).")
    crop: str = opt("auto", "auto: one fixed face crop per clip (FOMM rule); none: the videos are face crops.",
                    choices=CROPS)
    shard: str = opt("0/1", "I/N: process the I-th of N deterministic shares of the inputs (merge with merge-shards).")
    split: str = opt("train", "Split label recorded for these clips (train, val, test).")
    min_frames: int = opt(50, "Skip clips with fewer usable frames at 25 fps (2 s).")
    max_av_mismatch_frames: int = opt(12, "Skip clips whose audio and video lengths differ by more frames.")
    detect_every_s: float = opt(DETECT_EVERY_S, "Seconds between frames sampled for face detection.")
    max_detections: int = opt(MAX_DETECTIONS, "Most frames sampled for face detection per video.")
    min_face_fraction: float = opt(0.5, "Skip unless the speaker's face is in this fraction of the samples.")
    min_score: Optional[float] = opt(None, "Detector score a face needs [default: the landmarker's own].")
    batch_size: int = opt(32, "Frames per keypoint-detector batch.")
    retry_skipped: bool = opt(False, "Also retry videos an earlier run skipped.")
    flush_every: int = opt(20, "Rewrite the manifest after this many new clips.", cli=False)

    def __post_init__(self) -> None:
        check_choice("device", self.device, DEVICES)
        check_choice("landmarker", self.landmarker, LANDMARKERS)
        check_choice("crop", self.crop, CROPS)
        from .renderers import get_renderer

        get_renderer(self.renderer)  # InputError naming the registered renderers
        i, n = parse_shard(self.shard)
        object.__setattr__(self, "shard", f"{i}/{n}")
        for name in ("min_frames", "max_detections", "batch_size", "flush_every"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}")
        if self.detect_every_s <= 0:
            raise InputError(f"--detect-every-s must be positive, not {self.detect_every_s}")
        if self.max_av_mismatch_frames < 0 or not 0 <= self.min_face_fraction <= 1:
            raise InputError("--max-av-mismatch-frames must be >= 0 and --min-face-fraction in [0, 1]")
        if self.models_dir is not None and not isinstance(self.models_dir, Path):
            object.__setattr__(self, "models_dir", Path(self.models_dir))

    @property
    def shard_index(self) -> tuple[int, int]:
        """``shard`` as ``(I, N)``."""
        return parse_shard(self.shard)


__all__ = ["AnimateOptions", "ReenactOptions", "PreprocessOptions", "LANDMARKERS", "CROPS", "FRAMES", "DEFAULT_MAX_SIZE",
           "ENHANCERS", "DEFAULT_ENHANCE_STRENGTH",
           "opt", "same_as", "check_choice", "parse_shard"]