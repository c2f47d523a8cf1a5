"""Typed errors raised by talkhead.

Every error a user can cause (bad input, missing checkpoint, unwritable output) derives from
:class:`TalkheadError`. The CLI maps these, once, to a one-line message and exit code 2; any other
exception is a bug and is shown with its traceback only under ``--debug``
(:func:`talkhead.io.unexpected_reason` words its one line). This module is the lowest layer: it
imports nothing of talkhead's.
"""
from __future__ import annotations


class TalkheadError(Exception):
    """Base class of every expected, user-facing error. ``exit_code`` is what the CLI returns."""

    exit_code = 2


# --- input -------------------------------------------------------------------------------------
class InputError(TalkheadError):
    """A user-supplied input file is missing, unreadable or unusable."""


class AudioError(InputError):
    """Audio that cannot be decoded, is empty, or is silent."""


class AudioTooShortError(AudioError):
    """Audio shorter than the minimum the generator accepts (see ``talkhead.audio``)."""


class ImageError(InputError):
    """An image that cannot be decoded."""


class NoFaceError(ImageError):
    """No (confident) face was found in the image."""


class NonFiniteError(TalkheadError):
    """A stage produced NaN or infinite values (extreme input or bad weights). ``stage`` names it:
    ``"keypoints"`` (source detection or generation) or ``"render"``. Nothing is written."""

    def __init__(self, message: str, stage: str = ""):
        super().__init__(message)
        self.stage = stage


# --- output ------------------------------------------------------------------------------------
class OutputError(TalkheadError):
    """The output cannot be written: it exists (no ``--overwrite``) or its folder is not writable."""


# --- checkpoints / configs --------------------------------------------------------------------
class CheckpointError(TalkheadError):
    """A checkpoint is missing, corrupt, tampered with, or does not match the expected layout."""


class StateDictMismatchError(CheckpointError):
    """A state dict's keys or shapes differ from the model's; the message lists each difference."""


class ConfigError(TalkheadError):
    """A model config (FOMM YAML or MS-Sync ``args`` JSON) is missing keys or holds bad values."""


class DownloadError(CheckpointError):
    """A checkpoint could not be downloaded (offline, quota, network); nothing partial is left."""


# --- components --------------------------------------------------------------------------------
class LandmarkerUnavailableError(TalkheadError):
    """A landmark backend cannot be used: its package or its weights are missing (the message says
    which pip package to install, or to use ``--landmarker dlib``), or the backend name is unknown."""


# --- tools -------------------------------------------------------------------------------------
class FFmpegError(TalkheadError):
    """ffmpeg is missing, lacks a codec, or failed while encoding/decoding."""
