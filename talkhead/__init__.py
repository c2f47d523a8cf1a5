"""talkhead: one face photo + speech -> a talking-head video (MS-Sync keypoints, FOMM renderer).

Public API::

    from talkhead import AnimateOptions, Pipeline, animate
    result = animate("photo.png", "speech.wav", "out.mp4", AnimateOptions(landmarker="dlib"))

Stage functions live in their modules: :mod:`talkhead.audio` (``load_speech``, ``logfbank``),
:mod:`talkhead.face` (``load_image``, ``detect_faces``, ``fomm_crop``), :mod:`talkhead.fomm`
(``load_fomm``), :mod:`talkhead.mssync` (``load_mssync``, ``generate_keypoints``),
:mod:`talkhead.video` (``VideoWriter``, ``probe``), :mod:`talkhead.models` (checkpoints).
"""

__version__ = "0.1.0"

from .errors import (AudioError, AudioTooShortError, CheckpointError, ConfigError, DownloadError, FFmpegError,
                     ImageError, InputError, NoFaceError, OutputError, StateDictMismatchError, TalkheadError)
from .pipeline import AnimateOptions, AnimateResult, Pipeline, animate

__all__ = [
    "__version__", "AnimateOptions", "AnimateResult", "Pipeline", "animate",
    "TalkheadError", "InputError", "AudioError", "AudioTooShortError", "ImageError", "NoFaceError", "OutputError",
    "CheckpointError", "StateDictMismatchError", "ConfigError", "DownloadError", "FFmpegError",
]
