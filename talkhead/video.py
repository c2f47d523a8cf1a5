"""Frame streaming to ffmpeg: H.264 + AAC MP4 (:class:`VideoWriter`).

The encoder is the static ffmpeg binary shipped by ``imageio-ffmpeg``; the command line is an
argument vector built by :mod:`talkhead.ffmpeg` and run without a shell. Rendered frames are
piped to ffmpeg's stdin as raw ``rgb24`` while they are produced, so memory does not grow with the
length of the video; the original speech file is muxed in by the same ffmpeg process. The output is
written to a hidden temporary file beside the target (:func:`talkhead.io.atomic_output`) and renamed
into place only when ffmpeg succeeded: on any error or Ctrl-C ffmpeg is killed and nothing partial
remains.

:class:`SegmentWriter` cuts the same frames into short standalone MP4 segments as they arrive (each
with its slice of the audio, losslessly), for a page that plays the video while it renders;
:class:`FrameTee` feeds one batch to both.
"""
from __future__ import annotations

import os
import queue
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Callable, Optional

import numpy as np

from . import ffmpeg as _ff
from .constants import FPS
from .errors import FFmpegError, InputError
from .io import AtomicOutput, check_output_path, signals_deferred

__all__ = ["to_uint8_frames", "VideoWriter", "WriterThread", "Segment", "SegmentWriter", "FrameTee",
           "SEGMENT_S", "segment_sample"]

_MP4_SUFFIXES = {".mp4", ".m4v", ".mov"}

AUDIO_CODECS = ("aac", "flac")
"""Audio encoders :class:`VideoWriter` offers (``audio_codec``)."""

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


# ------------------------------------------------------------------------------------------ frames
def to_uint8_frames(frames: Any) -> np.ndarray:
    """Convert frames to a C-contiguous uint8 batch ``(b, H, W, 3)`` (RGB).

    Args:
        frames: ``(H, W, 3)`` or ``(b, H, W, 3)``; a numpy array or a torch tensor (any device: a
            float tensor is converted *on its device* and only the uint8 result is copied to the
            host, a quarter of the float bytes). uint8 is passed through. Floats are images in
            [0, 1] and are converted like ``skimage.img_as_ubyte`` (what FOMM's ``demo.py`` uses):
            ``rint(x * 255)`` computed in the input's float precision (float32 for narrower floats),
            then clipped to [0, 255] (skimage would raise for values above 1; we clip). numpy and
            torch give identical bytes (one IEEE multiply, round-half-to-even in both).

    Returns:
        uint8 array ``(b, H, W, 3)``; a view of the input when it already was one.

    Raises:
        ValueError: wrong rank or channel count, an unsupported dtype (not uint8/float), or a
            non-finite float value.
    """
    if hasattr(frames, "detach") and hasattr(frames, "cpu"):  # torch.Tensor without importing torch
        frames = _tensor_to_uint8(frames.detach())
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


def _tensor_to_uint8(t):
    """A torch tensor -> numpy on the host: floats converted to uint8 first on their own device
    (the arithmetic of :func:`to_uint8_frames`); others copied as they are (checked by the caller)."""
    import torch

    if t.is_floating_point() and t.dim() in (3, 4) and t.shape[-1] == 3:
        work = t.mul(255) if t.dtype in (torch.float32, torch.float64) else t.float().mul(255)
        if not bool(torch.isfinite(work).all()):
            raise ValueError("frames contain NaN or infinite values")
        t = work.round_().clamp_(0, 255).to(torch.uint8).contiguous()
    return t.cpu().numpy()


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
        audio_codec: ``"aac"`` (128 kbit/s, what a video to keep gets), or ``"flac"``: lossless, the
            samples decode exactly as they were given (no encoder priming or padding), what a
            :class:`SegmentWriter` segment needs so that its slices join without a gap.

    Raises:
        OutputError: (constructor) ``path`` exists without ``overwrite``, or its folder is missing or
            not writable; (exit) the final rename failed.
        InputError: (constructor) ``audio_path`` does not exist.
        ValueError: (constructor/write) bad ``size``/``fps``/``crf``, or frames of the wrong shape/dtype.
        FFmpegError: (enter) no ffmpeg, or it lacks libx264/aac; (write/exit) ffmpeg failed.
    """

    def __init__(self, path: str | os.PathLike, *, size: tuple[int, int], fps: float = FPS,
                 audio_path: str | os.PathLike | None = None, crf: int = 18, overwrite: bool = False,
                 preset: str = "medium", audio_codec: str = "aac"):
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
        if audio_codec not in AUDIO_CODECS:
            raise ValueError(f"audio_codec must be one of {', '.join(AUDIO_CODECS)}, got {audio_codec!r}")
        self.audio_codec = audio_codec
        self.path = check_output_path(path, overwrite, probe=False)  # the temporary file proves writability
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
        self._drain: _ff.StderrDrain | None = None

    # -- command ----------------------------------------------------------------------------------
    def _output_options(self) -> dict[str, Any]:
        """Encoder options, in the order they appear on the command line."""
        suffix = self.path.suffix.lower()
        opts: dict[str, Any] = {"f": "matroska" if suffix == ".mkv" else ("mov" if suffix == ".mov" else "mp4")}
        if self.audio_path is not None:
            opts.update({"b:a": "128k", "acodec": "aac"} if self.audio_codec == "aac" else {"acodec": self.audio_codec})
        opts["crf"] = self.crf
        if suffix != ".mkv":
            opts["movflags"] = "+faststart"
        opts.update({"pix_fmt": "yuv420p", "preset": self.preset, "vcodec": "libx264",
                     "vf": ("scale=out_color_matrix=bt709:out_range=tv,"
                            "setparams=range=tv:color_primaries=bt709:color_trc=bt709:colorspace=bt709")})
        return opts

    def command(self, tmp_path: str | os.PathLike) -> list[str]:
        """The ffmpeg argument vector that writes ``tmp_path``: raw rgb24 frames on stdin (+ the
        audio file's first audio stream) -> H.264 (+ AAC)."""
        w, h = self.encoded_size
        argv = [_ff.ffmpeg_exe(), *_ff.flags({"f": "rawvideo", "framerate": self.fps, "pix_fmt": "rgb24",
                                               "s": f"{w}x{h}"}), "-i", "pipe:"]
        if self.audio_path is not None:
            # "file:" keeps ffmpeg from reading a protocol out of the name; the path is absolute.
            argv += ["-i", f"file:{self.audio_path}", "-map", "0", "-map", "1:a:0"]
        argv += [*_ff.flags(self._output_options()), f"file:{os.path.abspath(tmp_path)}"]
        # -y: the atomic temp file already exists (empty)
        return argv + ["-hide_banner", "-nostats", "-loglevel", "error", "-y"]

    # -- lifecycle --------------------------------------------------------------------------------
    def __enter__(self) -> "VideoWriter":
        if self._atomic is not None:
            raise RuntimeError("VideoWriter is already open")
        caps = _ff.ffmpeg_capabilities()
        if not caps["has_libx264"]:
            raise FFmpegError(f"ffmpeg {caps['exe']!r} (version {caps['version']}) has no libx264 encoder")
        if self.audio_path is not None and self.audio_codec == "aac" and not caps["has_aac"]:
            raise FFmpegError(f"ffmpeg {caps['exe']!r} (version {caps['version']}) has no aac encoder")
        free = _free_bytes(self.path.parent)
        if free is not None and free < MIN_FREE_BYTES:
            raise FFmpegError(f"No space left on device for {str(self.path)!r}: {free // 1024} KiB free in "
                              f"{str(self.path.parent)!r}")
        self._atomic = AtomicOutput(self.path, overwrite=self.overwrite)
        try:
            tmp = self._atomic.__enter__()
            try:
                with signals_deferred():  # the child is recorded before an interrupt can unwind
                    self._proc = subprocess.Popen(self.command(tmp), stdin=subprocess.PIPE, stderr=subprocess.PIPE)
            except OSError as err:
                raise FFmpegError(f"cannot start ffmpeg: {err}") from err
            self._drain = _ff.StderrDrain(self._proc.stderr)
        except BaseException:
            # also on SIGTERM/Ctrl-C right after ffmpeg started: kill it (it would recreate the temp file
            # when its stdin closes) and delete the temp file
            self.abort()
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

        Raises:
            RuntimeError: the writer is not open (never opened, or already closed/aborted).
            ValueError: no frame was written.
            FFmpegError: ffmpeg exited early or with a non-zero status (the temporary file is removed).
            OutputError: the finished file cannot be renamed onto ``path``.
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


# ------------------------------------------------------------------------------------ writer thread
class WriterThread:
    """``write(prepare(item))`` for every :meth:`put` item, in one background thread (or inline).

    The render loop puts each rendered batch (host arrays) and goes on rendering the next one while
    this thread pastes the previous one into the photo (``prepare``, e.g.
    :meth:`talkhead.compose.Compositor.paste`) and pipes it to ffmpeg (``write``, e.g.
    :meth:`VideoWriter.write`). Items are handled one at a time, in order, by one thread, so
    ``prepare`` may reuse one output buffer.

    Usage::

        with VideoWriter(...) as video, WriterThread(video.write, compositor.paste) as out:
            for batch in render():
                out.put(batch)             # blocks while `depth` items wait: memory stays flat

    Errors: the first exception raised in the thread (``FFmpegError`` for a full disk or a dead
    ffmpeg, a ``ValueError`` of the compositor, ...) is re-raised - the same object, so the CLI
    prints the same one line - by the next :meth:`put` or by the exit of the ``with`` block; the
    items after it are dropped unwritten. A full disk therefore stops rendering within
    ``depth + 1`` batches. Leaving the block with an exception (Ctrl-C, SIGTERM, a render error)
    stops the thread after the item in hand and joins it, before the enclosing
    :class:`VideoWriter` kills ffmpeg and deletes the temporary output. Signals are only ever
    handled in the main thread; this thread never installs or blocks them.

    Args:
        write: called with each prepared item, in the thread.
        prepare: optional ``item -> item`` run in the thread before ``write``.
        depth: items that may wait in the queue (2: one being rendered, two waiting, one written).
        threaded: ``False`` runs ``write(prepare(item))`` inside :meth:`put`: the same code path
            without a thread (what CPU runs use by default, :func:`talkhead.devices.default_writer_thread`).

    Raises:
        ValueError: (constructor) ``depth < 1``.
        RuntimeError: :meth:`put` outside the ``with`` block.
    """

    JOIN_TIMEOUT_S = 30.0
    """How long an aborting exit waits for the item in hand; after that the enclosing writer's
    abort (killing ffmpeg) ends the thread's blocked write."""

    def __init__(self, write: Callable[[Any], Any], prepare: Optional[Callable[[Any], Any]] = None, *,
                 depth: int = 2, threaded: bool = True):
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth!r}")
        self.write, self.prepare, self.depth, self.threaded = write, prepare, int(depth), bool(threaded)
        self._queue: queue.Queue | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._stop = threading.Event()
        self._open = False

    _END = object()

    def __enter__(self) -> "WriterThread":
        if self._open:
            raise RuntimeError("WriterThread is already open")
        self._open = True
        if self.threaded:
            self._queue = queue.Queue(maxsize=self.depth)
            self._thread = threading.Thread(target=self._run, name="talkhead-writer", daemon=True)
            self._thread.start()
        return self

    def _handle(self, item: Any) -> None:
        self.write(self.prepare(item) if self.prepare is not None else item)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if self._error is not None or self._stop.is_set():
                continue  # drop: the main thread raises or is unwinding
            try:
                self._handle(item)
            except BaseException as exc:  # handed to the main thread, which raises it
                self._error = exc

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def put(self, item: Any) -> None:
        """Hand one item over (inline: handle it now).

        Raises:
            the thread's first exception (see the class docstring); RuntimeError outside the block.
        """
        if not self._open:
            raise RuntimeError("WriterThread.put() outside its with-block")
        self._raise_error()
        if not self.threaded:
            self._handle(item)
            return
        self._queue.put(item)

    def _join(self, timeout: float | None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def __exit__(self, exc_type, exc, tb) -> bool:
        self._open = False
        if self._thread is None:
            return False
        if exc_type is None:
            try:
                self._queue.put(self._END)  # everything queued is written first
                self._join(None)
            except BaseException:  # Ctrl-C / SIGTERM while waiting: stop after the item in hand
                self._stop.set()
                raise
            self._thread = None
            self._raise_error()
            return False
        self._stop.set()
        try:
            while True:  # drop what waits, so the end marker fits
                self._queue.get_nowait()
        except queue.Empty:
            pass
        self._queue.put_nowait(self._END)  # the main thread is the only producer: there is room
        self._join(self.JOIN_TIMEOUT_S)
        self._thread = None
        return False


# ------------------------------------------------------------------------------------------ segments
SEGMENT_S = 2.0
"""Default length of a :class:`SegmentWriter` segment, seconds (50 frames at 25 fps): what a page that
plays a video while it renders waits for before its first picture, and each segment's share of
ffmpeg start-up work after that."""


def segment_sample(frame: int, fps: float, sample_rate: int) -> int:
    """The first audio sample of video frame ``frame``: ``round(frame * sample_rate / fps)``.

    Frame ``f`` plays from ``f / fps`` seconds, so the samples ``[segment_sample(a), segment_sample(b))``
    are the sound of frames ``[a, b)``; consecutive ranges join without a gap or an overlap (640 samples
    a frame at 16 kHz and 25 fps, 1764 at 44.1 kHz).
    """
    return int(round(frame * sample_rate / fps))


@dataclass(frozen=True)
class Segment:
    """One finished segment of a :class:`SegmentWriter`: a standalone MP4 (H.264, + FLAC audio).

    Attributes:
        path: the MP4 (in the writer's folder; the receiver may move or delete it).
        index: 0, 1, 2, ... in playing order.
        start_frame / num_frames: its frames' place in the whole video.
        fps: frames per second.
        start_sample / num_samples: its audio's place in the audio file's samples (``num_samples`` 0
            when it has no audio: none given, or the audio ended earlier).
        sample_rate: the audio's rate, Hz (0 without audio).
    """

    path: Path
    index: int
    start_frame: int
    num_frames: int
    fps: float
    start_sample: int = 0
    num_samples: int = 0
    sample_rate: int = 0

    @property
    def start_s(self) -> float:
        """Where it starts in the whole video, seconds."""
        return self.start_frame / self.fps

    @property
    def duration_s(self) -> float:
        """Its video's length, seconds (``num_frames / fps``)."""
        return self.num_frames / self.fps


class _AudioSlicer:
    """Consecutive ``(n, channels)`` float32 slices of an audio file's first stream, decoded once
    (:func:`talkhead.audio.source_blocks`): ``take(n)`` returns the next ``n`` samples, fewer at the end."""

    def __init__(self, path: Path):
        from .audio import source_blocks

        self.info: dict = {}
        self._blocks = source_blocks(path, self.info)
        self._pending: list[np.ndarray] = []
        self._held = 0
        self._ended = False
        self._fill(1)  # opens the stream: sample_rate / channels are known from here on
        self.sample_rate = int(self.info.get("source_sample_rate") or 0)
        self.channels = int(self.info.get("source_channels") or 1)

    def _fill(self, n: int) -> None:
        while self._held < n and not self._ended:
            block = next(self._blocks, None)
            if block is None:
                self._ended = True
            elif len(block):
                self._pending.append(block)
                self._held += len(block)

    def take(self, n: int) -> np.ndarray:
        self._fill(n)
        joined = np.concatenate(self._pending) if self._pending else np.zeros((0, self.channels), np.float32)
        out, rest = joined[:n], joined[n:]
        self._pending, self._held = ([rest] if len(rest) else []), len(rest)
        return out

    def close(self) -> None:
        self._blocks.close()  # stops the decoding ffmpeg


class SegmentWriter:
    """Cut a stream of frames into consecutive short MP4 segments, each playable on its own, as the
    frames arrive: what a web page plays while the whole video is still rendering.

    Every ``round(seconds * fps)`` frames make one segment: H.264 (a :class:`VideoWriter`, keyframe
    first) with the matching slice of ``audio_path``'s first audio stream - the samples
    ``[segment_sample(first frame), segment_sample(first frame of the next segment))`` - in lossless
    FLAC, so the slices decode to exactly those samples and join without a gap (AAC would add its
    encoder priming and padding to every segment, ~46 ms of silence and drift each). The last segment
    holds the frames left (and the audio left, up to a frame's worth more or less than its frames,
    as in the whole MP4). Played one after another, the segments are the whole video: the same frame
    count, the same samples.

    ``on_segment(Segment)`` is called once a segment is finished, in the thread that wrote its last
    frame (or closes the writer); from then on the file is the receiver's. The audio is decoded once,
    as it is needed (:func:`talkhead.audio.source_blocks`): memory holds one segment's slice.

    Usage (beside the :class:`VideoWriter` of the whole video, e.g. through :class:`FrameTee`)::

        with SegmentWriter(folder, on_segment, size=(W, H), fps=25, audio_path="speech.wav") as seg:
            for batch in render():
                seg.write(batch)

    Args:
        folder: an existing folder for the segments (``segment-00000.mp4``, ...) and their audio slices.
        on_segment: called with each finished :class:`Segment`.
        size / fps / crf / preset: as :class:`VideoWriter` (``veryfast``: a segment is for watching now).
        audio_path: the file whose first audio stream is sliced into the segments, or ``None``.
        seconds: segment length, seconds (:data:`SEGMENT_S`); at least one frame.

    Raises:
        ValueError: (constructor) ``seconds <= 0``, or :class:`VideoWriter`'s own checks; (write) frames of
            the wrong shape or dtype.
        InputError: (constructor) ``folder`` is not a folder, ``audio_path`` does not exist.
        AudioError: the audio cannot be decoded. FFmpegError: a segment's encoding failed.
        Whatever ``on_segment`` raises.
    """

    def __init__(self, folder: str | os.PathLike, on_segment: Callable[[Segment], Any], *, size: tuple[int, int],
                 fps: float = FPS, audio_path: str | os.PathLike | None = None, seconds: float = SEGMENT_S,
                 crf: int = 23, preset: str = "veryfast"):
        if not seconds > 0:
            raise ValueError(f"seconds must be > 0, got {seconds!r}")
        if not fps > 0:
            raise ValueError(f"fps must be > 0, got {fps!r}")
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise InputError(f"segment folder {str(folder)!r} is not a folder")
        self.audio_path = None if audio_path is None else Path(audio_path)
        if self.audio_path is not None and not self.audio_path.is_file():
            raise InputError(f"audio file {str(audio_path)!r} does not exist")
        self.on_segment = on_segment
        self.size, self.fps, self.crf, self.preset = size, fps, crf, preset
        self.frames_per_segment = max(1, int(round(seconds * fps)))
        self.num_frames = 0  # frames written, all segments
        self.segments: list[Segment] = []
        self._audio: _AudioSlicer | None = None
        self._video: VideoWriter | None = None
        self._wav: Path | None = None
        self._slice = (0, 0)
        self._open = False
        VideoWriter(self.folder / "segment-check.mp4", size=size, fps=fps, crf=crf, preset=preset)  # its checks

    def __enter__(self) -> "SegmentWriter":
        if self._open:
            raise RuntimeError("SegmentWriter is already open")
        self._open = True
        try:
            if self.audio_path is not None:
                self._audio = _AudioSlicer(self.audio_path)
        except BaseException:
            self.abort()
            raise
        return self

    def _start(self) -> None:
        """Open the next segment: its audio slice (a WAV beside it) and its encoder."""
        import soundfile as sf

        index, first = len(self.segments), self.num_frames
        name = f"segment-{index:05d}"
        audio = None
        if self._audio is not None and self._audio.sample_rate > 0:
            rate = self._audio.sample_rate
            start = segment_sample(first, self.fps, rate)
            pcm = self._audio.take(segment_sample(first + self.frames_per_segment, self.fps, rate) - start)
            self._slice = (start, len(pcm))
            if len(pcm):
                self._wav = self.folder / f".{name}.wav"
                # 16-bit like the speech files it comes from; x * 32768 undoes the decoder's scaling exactly
                sf.write(self._wav, np.clip(np.rint(pcm * 32768.0), -32768, 32767).astype(np.int16), rate,
                         subtype="PCM_16")
                audio = self._wav
        else:
            self._slice = (0, 0)
        self._video = VideoWriter(self.folder / f"{name}.mp4", size=self.size, fps=self.fps, audio_path=audio,
                                  crf=self.crf, preset=self.preset, audio_codec="flac")
        self._video.__enter__()
        self._first = first

    def _finish(self) -> None:
        """Close the segment in hand and hand it to ``on_segment``."""
        video, self._video = self._video, None
        path = video.close()
        self._drop_wav()
        start, count = self._slice
        segment = Segment(path=path, index=len(self.segments), start_frame=self._first, num_frames=video.num_frames,
                          fps=self.fps, start_sample=start, num_samples=count,
                          sample_rate=self._audio.sample_rate if count else 0)
        self.segments.append(segment)
        self.on_segment(segment)

    def _drop_wav(self) -> None:
        if self._wav is not None:
            self._wav.unlink(missing_ok=True)
            self._wav = None

    def write(self, frames: Any) -> None:
        """Add frames ``(H, W, 3)`` or ``(b, H, W, 3)`` (see :func:`to_uint8_frames`); every segment they
        complete is finished and handed over before this returns.

        Raises:
            RuntimeError: outside the ``with`` block. Otherwise as the class.
        """
        if not self._open:
            raise RuntimeError("SegmentWriter.write() outside its with-block")
        batch = to_uint8_frames(frames)
        i = 0
        while i < len(batch):
            if self._video is None:
                self._start()
            take = min(len(batch) - i, self.frames_per_segment - self._video.num_frames)
            self._video.write(batch[i:i + take])
            self.num_frames += take
            i += take
            if self._video.num_frames == self.frames_per_segment:
                self._finish()

    def close(self) -> list[Segment]:
        """Finish the last segment (the frames left) and stop decoding; return every segment.

        Raises:
            RuntimeError: not open. FFmpegError: the last segment's encoding failed.
        """
        if not self._open:
            raise RuntimeError("SegmentWriter is not open")
        try:
            if self._video is not None:
                self._finish()
        except BaseException:
            self.abort()
            raise
        self._open = False
        if self._audio is not None:
            self._audio.close()
            self._audio = None
        return list(self.segments)

    def abort(self) -> None:
        """Stop: kill the segment in hand (its file is never created) and the audio decoder; the
        segments already handed over are the receiver's. Idempotent."""
        self._open = False
        video, self._video = self._video, None
        if video is not None:
            video.abort()
        self._drop_wav()
        if self._audio is not None:
            self._audio.close()
            self._audio = None

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


class FrameTee:
    """A frame sink that writes every batch to several sinks in turn (e.g. the whole video's
    :class:`VideoWriter` and a :class:`SegmentWriter`); the batch is converted once
    (:func:`to_uint8_frames`).

    Args:
        *sinks: objects with ``write(frames (b, H, W, 3) uint8)``.

    Raises:
        (write) whatever a sink raises; the sinks after it do not get that batch.
    """

    def __init__(self, *sinks):
        self.sinks = sinks
        self.num_frames = 0

    def write(self, frames: Any) -> None:
        batch = to_uint8_frames(frames)
        for sink in self.sinks:
            sink.write(batch)
        self.num_frames += len(batch)
