"""The one ffmpeg module: binary lookup, capabilities, building and running commands, decoding frames.

* **Binary**: the static ffmpeg shipped by ``imageio-ffmpeg`` (:func:`ffmpeg_exe`; no system
  ffmpeg needed; ``IMAGEIO_FFMPEG_EXE`` selects another one).
* **Commands** are plain argument vectors (``list[str]``) built with :func:`flags` and run without
  a shell (:func:`run`, or ``subprocess.Popen`` for streaming). We build them ourselves rather than
  with ffmpeg-python: our commands are linear (inputs -> one output, no filter graphs beyond a
  ``-vf`` string), an argument list is what ``subprocess`` takes and what a log or a test can show
  verbatim, and ffmpeg-python (unmaintained since 2019) is one dependency fewer.
* **Decoding video frames** (:func:`read_frames`) uses imageio-ffmpeg's reader, which already
  parses the stream's size (rotation applied), frame rate and duration from ffmpeg's log; decoding
  audio is :mod:`talkhead.audio`'s (an AU pipe, see ``_decode_ffmpeg`` there); encoding is
  :class:`talkhead.video.VideoWriter`'s.
"""
from __future__ import annotations

import functools
import logging
import os
import re
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

import numpy as np

from .errors import FFmpegError

__all__ = ["ffmpeg_exe", "ffmpeg_capabilities", "flags", "run", "decode_tail", "StderrDrain", "read_frames",
           "MediaInfo", "probe", "count_frames"]

STDERR_TAIL_BYTES = 16_384
"""How much of ffmpeg's stderr is kept for error messages (the tail; the rest is discarded)."""


# ------------------------------------------------------------------------------------------ binary
def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary shipped by imageio-ffmpeg (``imageio_ffmpeg.get_ffmpeg_exe()``).

    ``IMAGEIO_FFMPEG_EXE`` in the environment selects another binary (imageio-ffmpeg's own rule).

    Raises:
        FFmpegError: imageio-ffmpeg is not installed or finds no usable binary.
    """
    try:
        import imageio_ffmpeg

        exe = imageio_ffmpeg.get_ffmpeg_exe()
    except Exception as err:  # ImportError, RuntimeError("No ffmpeg exe could be found...")
        raise FFmpegError(f"ffmpeg is not available (install imageio-ffmpeg or set IMAGEIO_FFMPEG_EXE): {err}") from err
    if not exe or not os.path.isfile(exe):
        raise FFmpegError(f"ffmpeg binary {exe!r} does not exist")
    return exe


@functools.lru_cache(maxsize=4)
def _capabilities(exe: str) -> tuple[str, frozenset[str]]:
    try:
        proc = subprocess.run([exe, "-encoders"], capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise FFmpegError(f"cannot run ffmpeg {exe!r}: {err}") from err
    text_err = proc.stderr.decode("utf-8", "replace")
    if proc.returncode != 0:
        raise FFmpegError(f"ffmpeg {exe!r} -encoders failed (exit {proc.returncode}): {text_err[-2000:]}")
    match = re.search(r"ffmpeg version (\S+)", text_err + proc.stdout.decode("utf-8", "replace"))
    names = re.findall(r"^\s*[VASD][A-Z.]{5}\s+(\S+)", proc.stdout.decode("utf-8", "replace"), flags=re.M)
    return (match.group(1) if match else "unknown"), frozenset(names)


def ffmpeg_capabilities() -> dict[str, Any]:
    """What the ffmpeg binary can do, from its ``-encoders`` listing (cached per binary).

    Returns:
        ``{"exe": str, "version": str (e.g. "n9.0.2-17-g2a571b6068-20260930"),
        "has_libx264": bool, "has_aac": bool, "encoders": frozenset[str]}`` (a fresh dict).

    Raises:
        FFmpegError: no binary, or it cannot be run.
    """
    exe = ffmpeg_exe()
    version, encoders = _capabilities(exe)
    return {"exe": exe, "version": version, "has_libx264": "libx264" in encoders, "has_aac": "aac" in encoders,
            "encoders": encoders}


# ------------------------------------------------------------------------------------------ commands
def flags(options: Mapping[str, Any]) -> list[str]:
    """``{"f": "mp4", "crf": 18, "y": True}`` -> ``["-f", "mp4", "-crf", "18", "-y"]`` (in the given
    order; ``True`` gives a bare flag, ``None``/``False`` leaves the option out)."""
    out: list[str] = []
    for key, value in options.items():
        if value is None or value is False:
            continue
        out.append(f"-{key}")
        if value is not True:
            out.append(str(value))
    return out


def run(args: list[str], *, timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run ``ffmpeg -hide_banner -nostdin ARGS`` to completion, capturing stdout and stderr (bytes).

    Raises:
        FFmpegError: no binary, or it cannot be started (a non-zero exit is the caller's to judge).
    """
    try:
        return subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", *args], capture_output=True, check=False,
                              timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise FFmpegError(f"cannot run ffmpeg: {err}") from err


def decode_tail(data: bytes | bytearray) -> str:
    """The last 2000 characters of ffmpeg's stderr, for an error message."""
    text = bytes(data).decode("utf-8", "replace").strip()
    return text[-2000:] if text else "(ffmpeg printed nothing on stderr)"


class StderrDrain:
    """Reads a pipe to EOF in a daemon thread, keeping only its last :data:`STDERR_TAIL_BYTES` bytes.

    Draining prevents the deadlock where ffmpeg blocks on a full stderr pipe while we block on a
    full stdin pipe.
    """

    def __init__(self, pipe):
        self._pipe = pipe
        self._buf = bytearray()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="ffmpeg-stderr", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        read = getattr(self._pipe, "read1", self._pipe.read)
        try:
            while chunk := read(65536):
                with self._lock:
                    self._buf += chunk
                    if len(self._buf) > STDERR_TAIL_BYTES:
                        del self._buf[:-STDERR_TAIL_BYTES]
        except (OSError, ValueError):
            pass

    def join(self, timeout: float | None = 10.0) -> None:
        """Wait up to ``timeout`` seconds (``None``: forever) for the pipe's EOF; never raises."""
        self._thread.join(timeout)

    def tail(self) -> str:
        """The last :data:`STDERR_TAIL_BYTES` bytes read so far, decoded (:func:`decode_tail`)."""
        with self._lock:
            return decode_tail(self._buf)


# ------------------------------------------------------------------------------------------ decoding
class _QuietResize(logging.Filter):
    """Drop imageio-ffmpeg's warning that filtered frames differ in size from the source (intended here)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "is different from the source frame size" not in record.getMessage()


_QUIET = _QuietResize()


def _open_frames(path: Path, vf: str) -> tuple[dict, Iterator[bytes]]:
    """Start ffmpeg on ``path`` with video filter ``vf``; return ``(meta, raw rgb24 frame iterator)``."""
    import imageio_ffmpeg

    logger = logging.getLogger("imageio_ffmpeg")
    if _QUIET not in logger.filters:
        logger.addFilter(_QUIET)
    gen = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24",
                                     output_params=["-map", "0:v:0", "-an", "-sn", "-vf", vf])
    try:
        meta = next(gen)
    except (OSError, RuntimeError, StopIteration, ValueError, IndexError) as exc:
        gen.close()
        text = str(exc)
        if "matches no streams" in text:
            raise FFmpegError(f"{str(path)!r} has no video stream") from None
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        raise FFmpegError(f"cannot decode video {str(path)!r}: {lines[-1] if lines else type(exc).__name__}") from None
    return meta, gen


def read_frames(path: str | os.PathLike, vf: str, size: Optional[tuple[int, int]] = None
                ) -> tuple[dict, Iterator[np.ndarray]]:
    """Decode the first video stream of ``path`` through the video filter ``vf``.

    Args:
        path: any file ffmpeg decodes.
        vf: an ffmpeg ``-vf`` filter chain ending in ``rgb24`` frames (``"null"`` for none).
        size: ``(W, H)`` of the filtered frames in pixels, when the filter changes it (else the
            stream's size from ``meta``).

    Returns:
        ``(meta, frames)``: imageio-ffmpeg's stream metadata (``size`` (W, H) after rotation,
        ``fps``, ``duration`` seconds) and a generator of ``(H, W, 3)`` uint8 RGB frames (close it
        to stop ffmpeg early).

    Raises:
        FFmpegError: no video stream, or ffmpeg cannot decode the file (also while iterating).
    """
    meta, gen = _open_frames(Path(path), vf)
    width, height = size if size is not None else meta["size"]

    def frames():
        try:
            for raw in gen:
                yield np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3)
        except (OSError, RuntimeError) as exc:
            raise FFmpegError(f"decoding {str(path)!r} failed: {exc}") from None
        finally:
            gen.close()

    return meta, frames()


@dataclass(frozen=True)
class MediaInfo:
    """What :func:`probe` reads of a media file without decoding frames.

    Attributes:
        size: ``(W, H)`` of the first video stream in pixels, rotation applied.
        fps: its frame rate, frames per second (25.0 when ffmpeg reports none).
        duration_s: the file's duration, seconds (0.0 when unknown).
        has_audio: whether the file has an audio stream.
    """

    size: tuple[int, int]
    fps: float
    duration_s: float
    has_audio: bool


def probe(path: str | os.PathLike) -> MediaInfo:
    """The one media prober: the first video stream's size, frame rate and duration, and whether an
    audio stream exists, read from ffmpeg's stream listing (imageio-ffmpeg's parser; no ffprobe is
    bundled).

    Raises:
        FFmpegError: the file has no video stream or ffmpeg cannot open it (one line).
    """
    meta, gen = _open_frames(Path(path), "null")
    gen.close()
    fps = float(meta.get("fps") or 0.0)
    return MediaInfo(size=tuple(int(v) for v in meta["size"]), fps=fps if fps > 0 else 25.0,
                     duration_s=float(meta.get("duration") or 0.0), has_audio=bool(meta.get("audio_codec")))


def count_frames(path: str | os.PathLike) -> int:
    """Frames in the first video stream of ``path``, counted by demuxing it into the null muxer (no
    decoding).

    Raises:
        FFmpegError: no video stream (``"... has no video stream"``), or ffmpeg failed (its last line).
    """
    proc = run(["-nostats", "-loglevel", "error", "-i", f"file:{os.path.abspath(path)}", "-map", "0:v:0",
                "-c", "copy", "-f", "null", "-", "-progress", "pipe:1"])
    if proc.returncode != 0:
        text = decode_tail(proc.stderr)
        if "matches no streams" in text:
            raise FFmpegError(f"{str(path)!r} has no video stream")
        lines = text.splitlines()
        raise FFmpegError(lines[-1] if lines else f"ffmpeg exited with {proc.returncode}")
    frames = [ln.split("=", 1)[1] for ln in proc.stdout.decode("utf-8", "replace").splitlines()
              if ln.startswith("frame=")]
    return int(frames[-1]) if frames and frames[-1].strip().isdigit() else 0
