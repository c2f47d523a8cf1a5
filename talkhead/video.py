"""Frame streaming to ffmpeg (H.264 + AAC MP4), and probing of the result.

The encoder is the static ffmpeg binary shipped by ``imageio-ffmpeg``; the command line is built
with ``ffmpeg-python`` and run as an argument vector (never through a shell). Rendered frames are
piped to ffmpeg's stdin as raw ``rgb24`` while they are produced, so memory does not grow with the
length of the video; the original speech file is muxed in by the same ffmpeg process. The output is
written to a hidden temporary file beside the target (:func:`talkhead.io.atomic_output`) and renamed
into place only when ffmpeg succeeded: on any error or Ctrl-C ffmpeg is killed and nothing partial
remains.

``imageio-ffmpeg`` ships no ``ffprobe``, so :func:`probe` parses ``ffmpeg -i`` and counts frames by
running ffmpeg into the ``null`` muxer; :func:`moov_before_mdat` reads the MP4 box headers.
"""
from __future__ import annotations

import functools
import os
import re
import struct
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import ffmpeg
import numpy as np

from .constants import FPS
from .errors import FFmpegError, InputError
from .io import AtomicOutput, check_output_path

__all__ = ["ffmpeg_exe", "ffmpeg_capabilities", "to_uint8_frames", "VideoWriter", "VideoInfo", "probe",
           "moov_before_mdat"]

_STDERR_TAIL_BYTES = 16_384
"""How much of ffmpeg's stderr is kept for error messages (the tail; the rest is discarded)."""

_MP4_SUFFIXES = {".mp4", ".m4v", ".mov"}

MIN_FREE_BYTES = 64 * 1024
"""The encoder stops at once when the output's file system has less than this free (bytes): the
muxer buffers packets and x264 holds ~40 frames of lookahead, so ffmpeg itself notices a full disk
only late (for short or small clips: at the very end)."""

_CAUSES = ("No space left on device", "Disk quota exceeded", "File too large", "Broken pipe",
           "Input/output error", "Read-only file system", "Permission denied", "Invalid data found")
"""Phrases of ffmpeg's stderr that name a failure's cause; the first one found is the message."""


def _cause(tail: str) -> str:
    """The one-line cause of an ffmpeg failure: a known phrase (:data:`_CAUSES`) or its first line."""
    for phrase in _CAUSES:
        if phrase in tail:
            return phrase
    lines = [ln.strip() for ln in tail.splitlines() if ln.strip() and "Last message repeated" not in ln]
    return lines[0][:300] if lines else "(ffmpeg printed nothing on stderr)"


def _free_bytes(folder: Path) -> int | None:
    """Bytes available to this user on ``folder``'s file system (``statvfs``), None if unknown."""
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):  # AttributeError: no statvfs on Windows
        return None
    return st.f_bavail * st.f_frsize


# ------------------------------------------------------------------------------------------ ffmpeg
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


def _decode_tail(data: bytes | bytearray) -> str:
    text = bytes(data).decode("utf-8", "replace").strip()
    return text[-2000:] if text else "(ffmpeg printed nothing on stderr)"


class _StderrDrain:
    """Reads a pipe to EOF in a daemon thread, keeping only its last ``_STDERR_TAIL_BYTES`` bytes.

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
                    if len(self._buf) > _STDERR_TAIL_BYTES:
                        del self._buf[:-_STDERR_TAIL_BYTES]
        except (OSError, ValueError):
            pass

    def join(self, timeout: float | None = 10.0) -> None:
        self._thread.join(timeout)

    def tail(self) -> str:
        with self._lock:
            return _decode_tail(self._buf)


# ------------------------------------------------------------------------------------------ frames
def to_uint8_frames(frames: Any) -> np.ndarray:
    """Convert frames to a C-contiguous uint8 batch ``(b, H, W, 3)`` (RGB).

    Args:
        frames: ``(H, W, 3)`` or ``(b, H, W, 3)``; a numpy array or a torch tensor (any device; it is
            detached and copied to CPU). uint8 is passed through. Floats are images in [0, 1] and are
            converted like ``skimage.img_as_ubyte`` (what FOMM's ``demo.py`` uses): ``rint(x * 255)``
            computed in the input's float precision, then clipped to [0, 255] (skimage would raise
            for values above 1; we clip).

    Returns:
        uint8 array ``(b, H, W, 3)``; a view of the input when it already was one.

    Raises:
        ValueError: wrong rank or channel count, an unsupported dtype (not uint8/float), or a
            non-finite float value.
    """
    if hasattr(frames, "detach") and hasattr(frames, "cpu"):  # torch.Tensor without importing torch
        frames = frames.detach().cpu().numpy()
    arr = np.asarray(frames)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"frames must be (H, W, 3) or (b, H, W, 3) RGB, got shape {tuple(np.shape(frames))}")
    if arr.dtype == np.uint8:
        return np.ascontiguousarray(arr)
    if arr.dtype.kind != "f":
        raise ValueError(f"frames must be uint8 or float in [0, 1], got dtype {arr.dtype}")
    work = np.multiply(arr, 255, dtype=arr.dtype if arr.dtype.itemsize >= 4 else np.float32)
    if not np.isfinite(work).all():
        raise ValueError("frames contain NaN or infinite values")
    np.rint(work, out=work)
    np.clip(work, 0, 255, out=work)
    return work.astype(np.uint8, order="C")  # C order: the frames go to a pipe as raw bytes


# ------------------------------------------------------------------------------------------ writer
class VideoWriter:
    """Stream RGB frames into an H.264/AAC MP4 through one ffmpeg process; atomic on disk.

    Usage::

        n = round(speech_duration_s * 25)                 # see "Duration" below
        with VideoWriter("out.mp4", size=(256, 256), fps=25, audio_path="speech.wav") as w:
            for batch in render():                        # (b, 256, 256, 3) float [0, 1] or uint8
                w.write(batch)

    Encoding: input ``rawvideo rgb24`` from stdin at ``fps``; output ``libx264`` ``yuv420p``,
    ``crf``/``preset`` as given, BT.709 limited range (converted by ffmpeg's ``scale`` filter and
    tagged), the first audio stream of ``audio_path`` re-encoded to AAC (its sample rate and
    channels kept), ``movflags=+faststart`` (moov atom before mdat; for ``.mp4/.m4v/.mov``;
    ``.mkv`` gives Matroska, any other suffix MP4).

    Duration: ffmpeg runs *without* ``-shortest``, so neither stream is cut and the container lasts
    ``max(num_frames / fps, audio duration)``. The caller writes ``round(audio_duration_s * fps)``
    frames (``talkhead.pipeline.num_video_frames``), which makes the video and the audio agree within
    half a frame (20 ms at 25 fps).

    Odd sizes: yuv420p subsamples chroma 2x2, so libx264 needs even width and height. An odd
    ``W``/``H`` is padded by one column/row on the right/bottom that repeats the last one (numpy
    ``edge`` padding) - the encoded size is ``(W + W % 2, H + H % 2)`` and no pixel is resampled.

    Failure: an exception inside the ``with`` block (``KeyboardInterrupt`` included) or a failing
    ffmpeg kills ffmpeg and deletes the temporary file; the target is never created (or, with
    ``overwrite``, left as it was). ffmpeg's stderr is drained in a thread (no pipe deadlock); the
    :class:`FFmpegError` message is one line naming the cause (e.g. ``No space left on device``) and
    the path, the stderr tail is in its ``detail``. Each :meth:`write` first checks that ffmpeg is
    still running and that the disk has :data:`MIN_FREE_BYTES` free, so a full disk stops rendering
    within one batch instead of at the end.

    Args:
        path: output file; checked at construction, before ffmpeg starts.
        size: ``(W, H)`` of the frames, pixels.
        fps: frames per second (default 25, :data:`talkhead.constants.FPS`).
        audio_path: a file whose first audio stream is muxed in (any format ffmpeg decodes);
            ``None`` for a silent video.
        crf: x264 constant rate factor, 0 (lossless) .. 51; 18 is visually lossless.
        overwrite: allow replacing an existing ``path``.
        preset: x264 speed/size preset (``ultrafast`` .. ``veryslow``).

    Raises:
        OutputError: (constructor) ``path`` exists without ``overwrite``, or its folder is missing or
            not writable; (exit) the final rename failed.
        InputError: (constructor) ``audio_path`` does not exist.
        ValueError: (constructor/write) bad ``size``/``fps``/``crf``, or frames of the wrong shape/dtype.
        FFmpegError: (enter) no ffmpeg, or it lacks libx264/aac; (write/exit) ffmpeg failed.
    """

    def __init__(self, path: str | os.PathLike, *, size: tuple[int, int], fps: float = FPS,
                 audio_path: str | os.PathLike | None = None, crf: int = 18, overwrite: bool = False,
                 preset: str = "medium"):
        try:
            width, height = (int(v) for v in size)
        except (TypeError, ValueError) as err:
            raise ValueError(f"size must be (W, H) in pixels, got {size!r}") from err
        if width <= 0 or height <= 0:
            raise ValueError(f"size must be positive (W, H) pixels, got {size!r}")
        if not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps!r}")
        if not 0 <= crf <= 51:
            raise ValueError(f"crf must be within 0..51, got {crf!r}")
        self.path = check_output_path(path, overwrite)
        self.overwrite = overwrite
        self.audio_path = None if audio_path is None else Path(os.path.abspath(Path(audio_path).expanduser()))
        if self.audio_path is not None and not self.audio_path.is_file():
            raise InputError(f"audio file {str(audio_path)!r} does not exist")
        self.size = (width, height)
        self.encoded_size = (width + width % 2, height + height % 2)
        self.fps = fps
        self.crf = int(crf)
        self.preset = preset
        self.num_frames = 0
        self._atomic: AtomicOutput | None = None
        self._proc: subprocess.Popen | None = None
        self._drain: _StderrDrain | None = None

    # -- command ----------------------------------------------------------------------------------
    def _output_kwargs(self) -> dict[str, Any]:
        suffix = self.path.suffix.lower()
        kwargs: dict[str, Any] = dict(vcodec="libx264", pix_fmt="yuv420p", crf=self.crf, preset=self.preset,
                                      vf=("scale=out_color_matrix=bt709:out_range=tv,"
                                          "setparams=range=tv:color_primaries=bt709:color_trc=bt709:colorspace=bt709"))
        if self.audio_path is not None:
            kwargs.update(acodec="aac", audio_bitrate="128k")
        if suffix == ".mkv":
            kwargs["format"] = "matroska"
        else:
            kwargs["format"] = "mov" if suffix == ".mov" else "mp4"
            kwargs["movflags"] = "+faststart"
        return kwargs

    _AUDIO_SLOT = "file:talkhead-audio-path"
    _OUTPUT_SLOT = "file:talkhead-output-path"

    def _spec(self):
        """The ffmpeg-python graph: raw rgb24 on stdin (+ audio file) -> output. File names are
        placeholders (:meth:`command` puts the real ones in): ffmpeg-python hashes its nodes as UTF-8,
        which a name with undecodable bytes (PEP 383 surrogates) would break."""
        w, h = self.encoded_size
        streams = [ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{w}x{h}", framerate=self.fps)]
        if self.audio_path is not None:
            streams.append(ffmpeg.input(self._AUDIO_SLOT)["a:0"])
        return (ffmpeg.output(*streams, self._OUTPUT_SLOT, **self._output_kwargs())
                .global_args("-hide_banner", "-nostats", "-loglevel", "error")
                .overwrite_output())  # the atomic temp file already exists (empty)

    def command(self, tmp_path: str | os.PathLike) -> list[str]:
        """The ffmpeg argument vector that writes ``tmp_path`` (for logging and tests).

        Paths are absolute and prefixed with ``file:`` (so ffmpeg reads no protocol out of a name).
        """
        slots = {self._OUTPUT_SLOT: f"file:{os.path.abspath(tmp_path)}"}
        if self.audio_path is not None:
            slots[self._AUDIO_SLOT] = f"file:{self.audio_path}"
        return [slots.get(arg, arg) for arg in self._spec().compile(cmd=ffmpeg_exe())]

    # -- lifecycle --------------------------------------------------------------------------------
    def __enter__(self) -> "VideoWriter":
        if self._atomic is not None:
            raise RuntimeError("VideoWriter is already open")
        caps = ffmpeg_capabilities()
        if not caps["has_libx264"]:
            raise FFmpegError(f"ffmpeg {caps['exe']!r} (version {caps['version']}) has no libx264 encoder")
        if self.audio_path is not None and not caps["has_aac"]:
            raise FFmpegError(f"ffmpeg {caps['exe']!r} (version {caps['version']}) has no aac encoder")
        free = _free_bytes(self.path.parent)
        if free is not None and free < MIN_FREE_BYTES:
            raise FFmpegError(f"No space left on device for {str(self.path)!r}: {free // 1024} KiB free in "
                              f"{str(self.path.parent)!r}")
        self._atomic = AtomicOutput(self.path, overwrite=self.overwrite)
        tmp = self._atomic.__enter__()
        try:
            try:
                self._proc = subprocess.Popen(self.command(tmp), stdin=subprocess.PIPE, stderr=subprocess.PIPE)
            except OSError as err:
                raise FFmpegError(f"cannot start ffmpeg: {err}") from err
            self._drain = _StderrDrain(self._proc.stderr)
        except BaseException:
            self._atomic.discard()
            self._atomic = None
            raise
        return self

    def write(self, frames: Any) -> None:
        """Encode frames now (blocks while ffmpeg's stdin pipe is full: memory stays flat).

        Args:
            frames: ``(H, W, 3)`` or ``(b, H, W, 3)`` RGB, uint8 or float in [0, 1] (numpy or torch;
                see :func:`to_uint8_frames`), ``H, W`` equal to ``size``.

        Raises:
            ValueError: wrong shape/dtype. FFmpegError: ffmpeg exited (its stderr tail is quoted).
            RuntimeError: the writer is not open.
        """
        if self._proc is None:
            raise RuntimeError("VideoWriter.write() outside its with-block")
        batch = to_uint8_frames(frames)
        w, h = self.size
        if batch.shape[1:3] != (h, w):
            raise ValueError(f"frames are {batch.shape[2]}x{batch.shape[1]} (WxH), the writer expects {w}x{h}")
        if (w, h) != self.encoded_size:
            batch = np.pad(batch, ((0, 0), (0, self.encoded_size[1] - h), (0, self.encoded_size[0] - w), (0, 0)),
                           mode="edge")
        self._check_encoder()
        try:
            self._proc.stdin.write(memoryview(batch).cast("B"))
        except (BrokenPipeError, ValueError, OSError) as err:
            raise self._failure(f"ffmpeg stopped accepting frames after {self.num_frames}") from err
        self.num_frames += batch.shape[0]

    def _check_encoder(self) -> None:
        """Stop at once when ffmpeg has exited or the output's disk is full (before more frames).

        Raises:
            FFmpegError: one line naming the cause and the output path.
        """
        if self._proc.poll() is not None:
            raise self._failure(f"ffmpeg exited after {self.num_frames} frames")
        free = _free_bytes(self.path.parent)
        if free is not None and free < MIN_FREE_BYTES:
            raise FFmpegError(f"No space left on device while writing {str(self.path)!r}: {free // 1024} KiB free "
                              f"in {str(self.path.parent)!r}; stopped after {self.num_frames} frames")

    def _failure(self, what: str) -> FFmpegError:
        """Wait (briefly) for ffmpeg to exit and build a one-line error naming the cause; the stderr
        tail is kept in the error's ``detail`` attribute."""
        rc = None
        if self._proc is not None:
            try:
                rc = self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                rc = self._proc.wait()
        if self._drain is not None:
            self._drain.join()
        tail = self._drain.tail() if self._drain else ""
        err = FFmpegError(f"{_cause(tail)}: {what} while writing {str(self.path)!r} (ffmpeg exit code {rc})")
        err.detail = tail
        return err

    def _finish(self) -> None:
        """Close stdin, wait for ffmpeg, check its exit code."""
        if self.num_frames == 0:
            raise ValueError(f"no frames were written to {str(self.path)!r}")
        try:
            self._proc.stdin.close()
        except (BrokenPipeError, OSError) as err:
            raise self._failure("ffmpeg exited early") from err
        rc = self._proc.wait()
        self._drain.join()
        if rc != 0:
            tail = self._drain.tail()
            err = FFmpegError(f"{_cause(tail)}: ffmpeg failed (exit code {rc}) while writing {str(self.path)!r}")
            err.detail = tail
            raise err

    def abort(self) -> None:
        """Kill ffmpeg and delete the temporary file; the target is left untouched. Idempotent."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            try:
                proc.stdin.close()
            except (BrokenPipeError, OSError, ValueError):
                pass
            proc.wait()
        if self._drain is not None:
            self._drain.join(timeout=5)
        if self._atomic is not None:
            self._atomic.discard()
            self._atomic = None

    def close(self) -> Path:
        """Finish encoding and rename the temporary file onto ``path``; return ``path``.

        On any failure (including KeyboardInterrupt while waiting) everything is aborted first.
        """
        if self._atomic is None:
            raise RuntimeError("VideoWriter is not open")
        try:
            self._finish()
            self._proc = None
            atomic, self._atomic = self._atomic, None
            return atomic.commit()
        except BaseException:
            self.abort()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


# ------------------------------------------------------------------------------------------ probing
@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe` found in a media file (first video and first audio stream).

    Attributes:
        path: the probed file.
        format_name: ffmpeg's demuxer names, e.g. ``"mov,mp4,m4a,3gp,3g2,mj2"``.
        major_brand / compatible_brands: ISO-BMFF ``ftyp`` brands (``"isom"``,
            ``"isomiso2avc1mp41"``), ``None`` for other containers.
        duration_s: container duration as ffmpeg reports it, seconds (0.01 s resolution).
        video_codec: e.g. ``"h264"``; pix_fmt: e.g. ``"yuv420p"``; width/height: pixels;
        fps: frames per second (stream's average rate); num_frames: exact, counted by demuxing.
        video_duration_s: ``num_frames / fps`` seconds.
        audio_codec: e.g. ``"aac"``; audio_sample_rate: Hz; audio_channels: layout (``"mono"``);
        audio_duration_s: seconds, exact (end time of the fully decoded first audio stream).
        faststart: MP4 ``moov`` box before ``mdat`` (:func:`moov_before_mdat`); ``None`` when the
            file is not ISO-BMFF.
    Fields of an absent stream are ``None``.
    """

    path: Path
    format_name: str | None
    major_brand: str | None
    compatible_brands: str | None
    duration_s: float | None
    video_codec: str | None
    pix_fmt: str | None
    width: int | None
    height: int | None
    fps: float | None
    num_frames: int | None
    video_duration_s: float | None
    audio_codec: str | None
    audio_sample_rate: int | None
    audio_channels: str | None
    audio_duration_s: float | None
    faststart: bool | None

    @property
    def has_audio(self) -> bool:
        return self.audio_codec is not None


def _split_top_level(text: str) -> list[str]:
    """Split ``a (x, y), b, c`` on commas outside parentheses/brackets."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth = max(depth - 1, 0)
        if ch == "," and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur).strip())
    return parts


def _run_ffmpeg(args: list[str]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", *args], capture_output=True, check=False)
    except OSError as err:
        raise FFmpegError(f"cannot run ffmpeg: {err}") from err


def _null_run(path: Path, stream: str, copy: bool) -> dict[str, str]:
    """Demux (``copy``) or decode one stream into the null muxer; return ffmpeg's final progress block."""
    args = ["-nostats", "-loglevel", "error", "-i", f"file:{path}", "-map", stream]
    if copy:
        args += ["-c", "copy"]
    proc = _run_ffmpeg([*args, "-f", "null", "-", "-progress", "pipe:1"])
    if proc.returncode != 0:
        raise FFmpegError(f"ffmpeg could not read stream {stream} of {str(path)!r}: {_decode_tail(proc.stderr)}")
    values: dict[str, str] = {}
    for line in proc.stdout.decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip()
    return values


def probe(path: str | os.PathLike) -> VideoInfo:
    """Describe a media file with the bundled ffmpeg (no ffprobe needed).

    Parses the ``ffmpeg -i`` stream listing; counts video frames exactly by demuxing the first
    video stream (``-map 0:v:0 -c copy -f null -``); measures the audio duration exactly by
    decoding the first audio stream into the null muxer (``out_time_us``, which already honours
    MP4 edit lists, i.e. AAC priming is not counted); checks faststart with :func:`moov_before_mdat`.

    Args:
        path: a video or audio file.

    Returns:
        :class:`VideoInfo`.

    Raises:
        InputError: ``path`` is not an existing file.
        FFmpegError: ffmpeg cannot read it (the message quotes ffmpeg's stderr tail).
    """
    p = Path(os.path.abspath(Path(path).expanduser()))
    if not p.is_file():
        raise InputError(f"cannot probe {str(path)!r}: no such file")
    text = _run_ffmpeg(["-i", f"file:{p}"]).stderr.decode("utf-8", "replace")  # exits 1: no output given
    header = re.search(r"^Input #0, (.+?), from ", text, flags=re.M)
    if header is None:
        raise FFmpegError(f"ffmpeg cannot read {str(p)!r}: {_decode_tail(text.encode())}")
    format_name = header.group(1)
    before_streams = text[header.end():].split("Stream #", 1)[0]
    major = re.search(r"^\s*major_brand\s*:\s*(\S+)", before_streams, flags=re.M)
    compat = re.search(r"^\s*compatible_brands\s*:\s*(\S+)", before_streams, flags=re.M)
    dur = re.search(r"Duration:\s*(\d+):(\d+):(\d+(?:\.\d+)?)", text)
    duration_s = int(dur.group(1)) * 3600 + int(dur.group(2)) * 60 + float(dur.group(3)) if dur else None

    video = audio = None
    for kind, desc in re.findall(r"^\s*Stream #0:\d+\S*: (Video|Audio): (.+)$", text, flags=re.M):
        if kind == "Video" and video is None and "attached pic" not in desc:
            video = _split_top_level(desc)
        elif kind == "Audio" and audio is None:
            audio = _split_top_level(desc)

    v: dict[str, Any] = dict(video_codec=None, pix_fmt=None, width=None, height=None, fps=None, num_frames=None,
                             video_duration_s=None)
    if video is not None:
        v["video_codec"] = video[0].split()[0]
        if len(video) > 1 and not re.match(r"^\d+x\d+", video[1]):
            v["pix_fmt"] = video[1].split("(")[0].strip()
        for part in video[1:]:
            size = re.match(r"^(\d+)x(\d+)", part)
            if size and v["width"] is None:
                v["width"], v["height"] = int(size.group(1)), int(size.group(2))
            rate = re.match(r"^([\d.]+)(k?) fps$", part)
            if rate:
                v["fps"] = float(rate.group(1)) * (1000 if rate.group(2) else 1)
        progress = _null_run(p, "0:v:0", copy=True)
        v["num_frames"] = int(progress.get("frame", "0"))
        if v["fps"]:
            v["video_duration_s"] = v["num_frames"] / v["fps"]

    a: dict[str, Any] = dict(audio_codec=None, audio_sample_rate=None, audio_channels=None, audio_duration_s=None)
    if audio is not None:
        a["audio_codec"] = audio[0].split()[0]
        for i, part in enumerate(audio[1:], start=1):
            hz = re.match(r"^(\d+) Hz$", part)
            if hz:
                a["audio_sample_rate"] = int(hz.group(1))
                if i + 1 < len(audio):
                    a["audio_channels"] = audio[i + 1]
        progress = _null_run(p, "0:a:0", copy=False)
        us = progress.get("out_time_us", "N/A")
        a["audio_duration_s"] = int(us) / 1e6 if us.lstrip("-").isdigit() else None

    try:
        faststart: bool | None = moov_before_mdat(p)
    except InputError:
        faststart = None
    return VideoInfo(path=p, format_name=format_name, major_brand=major.group(1) if major else None,
                     compatible_brands=compat.group(1) if compat else None, duration_s=duration_s,
                     faststart=faststart, **v, **a)


def moov_before_mdat(path: str | os.PathLike) -> bool:
    """Whether an MP4's ``moov`` box precedes its ``mdat`` box ("faststart": playable while streaming).

    Walks the top-level ISO-BMFF boxes (ISO/IEC 14496-12 §4.2: 32-bit big-endian size + 4-char type;
    size 1 = 64-bit size follows, size 0 = box runs to end of file) reading headers only.

    Returns:
        True if ``moov`` comes first; False if ``mdat`` comes first or either is missing.

    Raises:
        InputError: the file is missing or does not start like an ISO-BMFF file (``ftyp`` etc.).
    """
    p = Path(path)
    try:
        file_size = p.stat().st_size
        fh = open(p, "rb")
    except OSError as err:
        raise InputError(f"cannot read {str(path)!r}: {err}") from err
    with fh:
        offset, first = 0, True
        while offset + 8 <= file_size:
            fh.seek(offset)
            size, box = struct.unpack(">I4s", fh.read(8))
            header = 8
            if size == 1:
                (size,) = struct.unpack(">Q", fh.read(8))
                header = 16
            elif size == 0:
                size = file_size - offset
            if first and (box not in (b"ftyp", b"styp", b"free", b"skip", b"wide", b"moov", b"mdat")
                          or size < header):
                raise InputError(f"{str(path)!r} is not an MP4/ISO-BMFF file (first box {box!r})")
            first = False
            if box == b"moov":
                return True
            if box == b"mdat":
                return False
            if size < header:  # corrupt size: stop rather than loop
                break
            offset += size
    if first:
        raise InputError(f"{str(path)!r} is not an MP4/ISO-BMFF file (too short)")
    return False
