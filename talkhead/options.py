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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .errors import InputError

DEVICES = ("auto", "cpu", "cuda", "mps")
"""``--device`` choices; ``auto`` = cuda > mps > cpu (see :func:`talkhead.devices.resolve_device`)."""

LANDMARKERS = ("fan", "dlib")
"""68-point landmark backends (see :mod:`talkhead.face`)."""

CROPS = ("auto", "none")
"""``--crop`` choices: ``auto`` crops around the face with FOMM's rule; ``none`` takes the image as a crop."""

FRAMES = ("full", "crop")
"""``--frame`` choices: ``full`` = the whole photo with the face pasted back; ``crop`` = the renderer's square."""

DEFAULT_MAX_SIZE = 1920
"""``--max-size`` default: longest side of the output video, pixels."""


def opt(default, help: str, *flags: str, cli: bool = True, choices: tuple[str, ...] | None = None):
    """A dataclass field with CLI metadata (see the module docstring)."""
    meta = {"help": help, "flags": flags, "cli": cli, "choices": choices}
    return field(default=default, metadata=meta)


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
        landmarker: 68-point landmark backend, ``"fan"`` (face-alignment) or ``"dlib"`` (offline).
        crop: ``"auto"`` crops around the detected face with FOMM's rule; ``"none"`` uses the whole
            image (it must already be a face crop framed like FOMM's VoxCeleb data).
        face_index: which face when several are found (0 = largest); ``None`` = largest confident.
        batch_size: frames per render pass.
        overwrite: replace an existing output; otherwise an existing output is an error.
        offline: never download; missing checkpoints are an error with by-hand instructions.
        align_corners: FOMM ``grid_sample`` convention; ``True`` is vox-adv's training-time behaviour.
        frame: ``"full"`` writes the photo at its own size (after EXIF rotation and ``max_size``,
            even-rounded) with the rendered face pasted back; ``"crop"`` writes the renderer's square.
        max_size: the photo is downscaled so its longest side is at most this, pixels (``frame="full"``).
        motion_scale: head motion multiplier (0 = still head, lips and expression kept; 1 = as generated).
        still: shorthand for ``motion_scale=0``.
        renderer: the registered renderer (:mod:`talkhead.renderers`).
        crf: H.264 constant rate factor of the output video.

    Raises:
        InputError: a value out of range or not among the choices (quoted in the message).
    """

    models_dir: Optional[Path] = opt(None, "Checkpoint folder [default: $TALKHEAD_MODELS, else the platform "
                                     "cache, ~/.cache/talkhead on Linux].")
    device: str = opt("auto", "Where to run: auto (cuda > mps > cpu), cpu, cuda or mps.", choices=DEVICES)
    landmarker: str = opt("fan", "68-point landmarks: fan (face-alignment) or dlib (offline).", choices=LANDMARKERS)
    crop: str = opt("auto", "auto: crop around the face (FOMM rule); none: the image is already a face crop.",
                    choices=CROPS)
    face_index: Optional[int] = opt(None, "Which face when several are found (0 = largest) "
                                    "[default: the largest confident face].")
    batch_size: int = opt(8, "Frames per render pass.")
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
    renderer: str = opt("fomm", "Renderer (fomm).")
    crf: int = opt(18, "H.264 constant rate factor (lower = better quality, bigger file).", cli=False)

    def __post_init__(self) -> None:
        check_choice("device", self.device, DEVICES)
        check_choice("landmarker", self.landmarker, LANDMARKERS)
        check_choice("crop", self.crop, CROPS)
        if self.batch_size < 1:
            raise InputError(f"--batch-size must be at least 1, not {self.batch_size}")
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
        if self.models_dir is not None and not isinstance(self.models_dir, Path):
            object.__setattr__(self, "models_dir", Path(self.models_dir))


__all__ = ["AnimateOptions", "DEVICES", "LANDMARKERS", "CROPS", "FRAMES", "DEFAULT_MAX_SIZE", "opt", "check_choice"]
