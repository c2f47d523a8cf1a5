"""talkhead: one face photo + speech -> a talking-head video (MS-Sync keypoints, FOMM renderer).

Public API::

    from talkhead import AnimateOptions, Pipeline, animate
    result = animate("photo.png", "speech.wav", "out.mp4", AnimateOptions(landmarker="dlib"))

Stage functions live in their modules: :mod:`talkhead.audio` (``load_speech``, ``logfbank``),
:mod:`talkhead.image` (``load_image``), :mod:`talkhead.landmarks` (``detect_faces``),
:mod:`talkhead.crop` (``fomm_crop``), :mod:`talkhead.fomm` (``load_fomm``), :mod:`talkhead.mssync`
(``load_mssync``, ``generate_keypoints``), :mod:`talkhead.video` (``VideoWriter``), :mod:`talkhead.ffmpeg`,
:mod:`talkhead.store` (checkpoint files: sources, download, verification).
"""

__version__ = "0.1.0"

from .errors import (AudioError, AudioTooShortError, CheckpointError, ConfigError, DownloadError, FFmpegError,
                     ImageError, InputError, LandmarkerUnavailableError, NoFaceError, OutputError,
                     StateDictMismatchError, TalkheadError)
from .options import AnimateOptions

_LAZY = {"AnimateResult": "talkhead.pipeline", "Pipeline": "talkhead.pipeline", "animate": "talkhead.pipeline",
         "Keypoints": "talkhead.keypoints"}
"""Public name -> the module that defines it (full dotted names, which the import-graph test reads)."""


def __getattr__(name: str):
    """Import torch-backed parts on first use, so ``import talkhead`` (and ``talkhead --help``) stays fast."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "__version__", "AnimateOptions", "AnimateResult", "Pipeline", "animate", "Keypoints",
    "TalkheadError", "InputError", "AudioError", "AudioTooShortError", "ImageError", "NoFaceError", "OutputError",
    "CheckpointError", "StateDictMismatchError", "ConfigError", "DownloadError", "FFmpegError",
    "LandmarkerUnavailableError",
]
