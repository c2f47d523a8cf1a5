"""Run options, declared once: frozen dataclasses that travel from the CLI to the pipeline.

Each field carries its CLI flag and help text in ``dataclasses.field(metadata=...)``; the Typer
commands are generated from these fields by :func:`talkhead.cli_options.with_options`, so an option is
declared in exactly one place (whisper's ``DecodingOptions``, LivePortrait's ``ArgumentConfig``).
This module imports neither torch nor any model code, so ``talkhead --help`` stays fast.

Metadata keys: ``help`` (text), ``flags`` (tuple of option names; default ``--field-name``),
``cli`` (``False`` keeps a field out of the CLI), ``choices`` (allowed strings, listed in the help).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .errors import InputError
from .face import LANDMARKER_CHOICES as LANDMARKERS

DEVICES = ("auto", "cpu", "cuda", "mps")
"""``--device`` choices; ``auto`` = cuda > mps > cpu (see :func:`talkhead.devices.resolve_device`)."""

CROPS = ("auto", "none")
"""``--crop`` choices: ``auto`` crops around the face with FOMM's rule; ``none`` takes the image as a crop."""


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
        landmarker: 68-point landmark backend: ``"auto"`` (fan when its weights are cached or can be
            fetched, else dlib with a note; :func:`talkhead.face.resolve_landmarker`), ``"fan"``
            (face-alignment) or ``"dlib"`` (offline). ``LANDMARKERS`` is
            :data:`talkhead.face.LANDMARKER_CHOICES` (the backend registry).
        crop: ``"auto"`` crops around the detected face with FOMM's rule; ``"none"`` uses the whole
            image (it must already be a face crop framed like FOMM's VoxCeleb data).
        face_index: which face when several are found (0 = largest); ``None`` = largest confident.
        batch_size: frames per render pass.
        overwrite: replace an existing output; otherwise an existing output is an error.
        offline: never download; missing checkpoints are an error with by-hand instructions.
        align_corners: FOMM ``grid_sample`` convention; ``True`` is vox-adv's training-time behaviour.
        crf: H.264 constant rate factor of the output video.

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
    batch_size: int = opt(8, "Frames per render pass.")
    overwrite: bool = opt(False, "Replace existing outputs.")
    offline: bool = opt(False, "Never download checkpoints.")
    align_corners: bool = opt(True, "FOMM grid_sample convention: on = the torch-1.0 behaviour vox-adv was "
                              "trained with.", "--align-corners/--no-align-corners")
    crf: int = opt(18, "H.264 constant rate factor (lower = better quality, bigger file).", cli=False)

    def __post_init__(self) -> None:
        check_choice("device", self.device, DEVICES)
        check_choice("landmarker", self.landmarker, LANDMARKERS)
        check_choice("crop", self.crop, CROPS)
        if self.batch_size < 1:
            raise InputError(f"--batch-size must be at least 1, not {self.batch_size}")
        if self.face_index is not None and self.face_index < 0:
            raise InputError(f"--face-index must be 0 or more, not {self.face_index}")
        if self.models_dir is not None and not isinstance(self.models_dir, Path):
            object.__setattr__(self, "models_dir", Path(self.models_dir))


__all__ = ["AnimateOptions", "DEVICES", "LANDMARKERS", "CROPS", "opt", "check_choice"]
