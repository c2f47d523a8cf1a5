"""Speech decoding and the checkpoint-compatible log mel filterbank ("logfbank") of MS-Sync.

Two stages, both pure apart from reading the one input file:

1. :func:`load_speech` decodes any audio file into :class:`Speech`: 16 kHz mono float32 samples
   in [-1, 1] (full scale). Decoding uses libsndfile (``soundfile``: wav, flac, ogg/vorbis/opus,
   mp3, aiff, ...) and, for everything it does not read (m4a/aac, webm, mp4/mov audio tracks, ...),
   the ffmpeg binary shipped with ``imageio-ffmpeg`` (:mod:`talkhead.ffmpeg`; an argument
   list, never a shell; raw float32 PCM is piped out). Both paths stream fixed-size blocks, so a
   two-hour file never holds more than its 16 kHz mono copy in memory.

   * Channels are **averaged** into mono. The reference
     (``dataset/preprocess_audio.get_audio_feature_from_audio`` of LouisBearing/HMo-audio) instead
     keeps channel 1 of a 16 kHz stereo file (channel 0 only if it is strictly positive everywhere)
     and lets ``ffmpeg -ac 1`` downmix other rates.
   * Other sample rates are resampled to 16 kHz with libsoxr at quality ``'HQ'`` (the default of
     ``librosa.resample``), streamed through ``soxr.ResampleStream``; on the test clip it gives
     exactly the same samples as one-shot ``soxr.resample``. The reference shells out to
     ``ffmpeg -ar 16000`` (swresample) instead.

2. :func:`logfbank` computes the (M, 26) log mel filterbank exactly as the reference does:
   ``python_speech_features.logfbank(audio, 16000, nfilt=26)`` after removing the mean and dividing
   by the peak (see :func:`logfbank` for every step). It is implemented here in numpy and matches
   the reference output (``tests/data/audio/features.npz``, ``logfbank_f64``) to within 1e-8; it
   is vectorised and chunked, with temporary memory bounded independently of the length (speed
   and memory measured: ``benchmarks/README.md``, "logfbank speed and memory").

Resampled and transcoded input: ``tests/test_audio.py`` holds the logfbank of
``speech_44k_stereo.wav`` (the 16 kHz test clip upsampled to 44.1 kHz stereo by ffmpeg) within max
abs 1.25, mean abs 0.0095 (bands 1-24: 0.004) of that of the 16 kHz original, and transcoded copies
(opus, aac, mp3, vorbis) within mean abs 0.25 (flac: 1e-8), decoded to the original length within
one hop (encoder delay removed by the decoders). The measured deviations, and the reference's own
ffmpeg path on the same file: ``benchmarks/README.md``, "Audio decoding: resampling and transcoding
deviation".

Errors: a missing file raises :class:`~talkhead.errors.InputError`; an undecodable, empty or silent
file raises :class:`~talkhead.errors.AudioError`; audio shorter than :data:`MIN_NUM_SAMPLES`
raises :class:`~talkhead.errors.AudioTooShortError`. Every message names the file.
"""
from __future__ import annotations

import functools
import os
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional

import numpy as np

from .constants import HOP_S, N_FILT, NFFT, PREEMPH, SAMPLE_RATE, WIN_S
from .errors import AudioError, AudioTooShortError, InputError
from .ffmpeg import ffmpeg_exe, flags

__all__ = [
    "MIN_NUM_SAMPLES",
    "SILENCE_PEAK",
    "RESAMPLE_QUALITY",
    "ToMono16k",
    "Speech",
    "load_speech",
    "logfbank",
    "mel_filterbank",
    "num_logfbank_frames",
    "speech_features",
    "speech_blocks",
    "source_blocks",
    "scan_speech",
    "SpeechInfo",
    "SignalStats",
    "LogfbankStream",
    "logfbank_stream",
]

MIN_NUM_SAMPLES = 1361
"""Fewest 16 kHz samples (about 0.085 s) the MS-Sync keypoint generator accepts (the one definition:
:func:`load_speech` rejects shorter audio, :func:`talkhead.mssync.num_frames` uses it too).

1361 samples give M = 8 logfbank rows and T = 2 output frames; with at most 1360 samples the
reference ``execute_model`` fails (a reflect-pad RuntimeError, or an IndexError when M <= 3 rows;
see docs/fixtures.md, "minimum audio")."""

MAX_CHANNELS = 8
"""Most channels a speech file may have (7.1): the AAC track of the video cannot hold more, so a file
with more is refused when it is opened, before any model runs."""

SILENCE_PEAK = 1e-4
"""Audio whose peak absolute value after removing its mean is below this (full scale = 1.0,
i.e. -80 dBFS, about 3 LSB of 16-bit audio) is rejected as silent: the reference normalisation
would divide by (nearly) zero and give NaN or pure-noise features."""

RESAMPLE_QUALITY = "HQ"
"""libsoxr quality preset used to resample to 16 kHz (``librosa.resample``'s default)."""

WIN_LEN = int(round(WIN_S * SAMPLE_RATE))
"""logfbank frame length, samples (400 at 16 kHz)."""

HOP_LEN = int(round(HOP_S * SAMPLE_RATE))
"""logfbank frame step, samples (160 at 16 kHz): 100 logfbank frames per second."""

_BLOCK_FRAMES = 1 << 18
"""Frames per decoded block (about 6 s at 44.1 kHz)."""

_FFT_CHUNK = 1024
"""logfbank frames per chunk (signal normalisation, framing and rfft batch; bounds the temporary
complex spectrum to about 4 MB). Also the first rows a streamed ``animate`` waits for (10 s of speech,
:class:`LogfbankStream`); it was 8192 (34 MB) before streaming."""


@dataclass(frozen=True, eq=False)
class Speech:
    """Decoded speech: 16 kHz mono float32 samples.

    Attributes:
        samples: ``(N,)`` float32, full scale [-1, 1], read-only, at ``sample_rate``.
        sample_rate: always :data:`~talkhead.constants.SAMPLE_RATE` (16000 Hz).
        path: the file it was decoded from (``None`` when built from an array).
        source_sample_rate: sample rate of the file, Hz.
        source_channels: channel count of the file (averaged into mono).
        decoder: ``"soundfile"`` (libsndfile) or ``"ffmpeg"``.
    """

    samples: np.ndarray
    sample_rate: int = SAMPLE_RATE
    path: Optional[Path] = None
    source_sample_rate: int = SAMPLE_RATE
    source_channels: int = 1
    decoder: str = "soundfile"

    @property
    def num_samples(self) -> int:
        """Number of samples N at ``sample_rate``."""
        return int(self.samples.shape[0])

    @property
    def duration_s(self) -> float:
        """Duration in seconds: ``N / sample_rate``."""
        return self.num_samples / self.sample_rate


# ------------------------------------------------------------------------------------------------
# decoding
# ------------------------------------------------------------------------------------------------
class ToMono16k:
    """Streamed conversion of audio blocks to 16 kHz mono float32: channels averaged, then resampled with a
    streamed soxr at :data:`RESAMPLE_QUALITY` (``soxr.ResampleStream``) unless the rate is already 16 kHz.

    The one definition of "to mono 16 kHz" for the file decoders (:func:`speech_blocks`) and the chunks
    pushed to a live session (:meth:`talkhead.live.LiveSession.push`).

    Args:
        source: names the audio in error messages (``"audio file x.wav"``, ``"speech chunk"``).
        rate: the blocks' sample rate, Hz.
        channels: the blocks' channel count.

    Raises:
        AudioError: a rate or channel count that is not positive, or more than :data:`MAX_CHANNELS` channels.
    """

    def __init__(self, source: str, rate: int, channels: int) -> None:
        if rate <= 0 or channels <= 0:
            raise AudioError(f"{source}: invalid audio stream ({rate} Hz, {channels} channels)")
        if channels > MAX_CHANNELS:
            raise AudioError(f"{source} has {channels} channels; talkhead takes speech with at most "
                             f"{MAX_CHANNELS} (mono or stereo is best): mix it down first")
        self.source, self.rate, self.channels = source, rate, channels
        self._stream = None
        if rate != SAMPLE_RATE:
            import soxr

            self._stream = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32", quality=RESAMPLE_QUALITY)

    def feed(self, block: np.ndarray) -> np.ndarray:
        """``block`` ``(n, channels)`` float32 at :attr:`rate` -> 16 kHz mono float32 ``(m,)`` (maybe empty;
        the resampler holds back a few samples until :meth:`finish`).

        Raises:
            AudioError: NaN or infinite samples (checked before the resampler sees the block, so a
                refused block changes nothing).
        """
        if block.shape[0] == 0:
            return np.zeros(0, np.float32)
        if not np.isfinite(block).all():
            raise AudioError(f"{self.source}: audio holds non-finite samples (NaN or infinity)")
        if self.channels == 1:
            mono = np.ascontiguousarray(block[:, 0], dtype=np.float32)
        else:
            mono = block.mean(axis=1, dtype=np.float64).astype(np.float32)
        if self._stream is not None:
            mono = self._stream.resample_chunk(mono)
        return mono

    def finish(self) -> np.ndarray:
        """The resampler's last samples (empty at 16 kHz); the converter is spent afterwards."""
        if self._stream is None:
            return np.zeros(0, np.float32)
        return self._stream.resample_chunk(np.zeros(0, np.float32), last=True).astype(np.float32, copy=False)


_AU_MAGIC = b".snd"
_AU_FLOAT32 = 6


def _ffmpeg_reason(stderr: bytes) -> str:
    lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    if not lines:
        return "ffmpeg could not read it"
    if any("does not contain any stream" in ln or "matches no streams" in ln for ln in lines):
        return "it has no audio stream"
    return lines[-1][:300]


def _read_exact(stream, n: int) -> bytes:
    data = stream.read(n)
    return data if data is not None else b""


def _blocks_soundfile(f, path: Path, info: dict):
    """16 kHz mono blocks of an open ``soundfile.SoundFile`` (closed at the end)."""
    with f:
        out = ToMono16k(f"audio file {path}", f.samplerate, f.channels)
        info.update(source_sample_rate=int(f.samplerate), source_channels=int(f.channels), decoder="soundfile")
        for block in f.blocks(blocksize=_BLOCK_FRAMES, dtype="float32", always_2d=True):
            mono = out.feed(block)
            if mono.size:
                yield mono
        tail = out.finish()
        if tail.size:
            yield tail


class _AsIs:
    """The blocks as decoded: ``(n, channels)`` float32 at the source rate (what :func:`source_blocks` yields)."""

    def __init__(self, source: str, rate: int, channels: int) -> None:
        if rate <= 0 or channels <= 0:
            raise AudioError(f"{source}: invalid audio stream ({rate} Hz, {channels} channels)")
        self.channels = channels

    def feed(self, block: np.ndarray) -> np.ndarray:
        return block

    def finish(self) -> np.ndarray:
        return np.zeros((0, self.channels), np.float32)


def _blocks_ffmpeg(path: Path, info: dict, convert=ToMono16k):
    """Decode the first audio stream with ffmpeg: float32 PCM at the source rate and channel
    count, piped out as Sun AU, yielded as 16 kHz mono blocks (``convert``: :class:`ToMono16k`), or
    as decoded (:class:`_AsIs`).

    The AU container (24-byte big-endian header: magic, data offset, size, encoding, rate,
    channels) states rate and channel count up front and allows an unknown length, so the PCM can
    be streamed from the pipe. Raises AudioError (with ffmpeg's last error line) if it fails.
    """
    argv = [ffmpeg_exe(), "-i", "file:" + str(path.resolve()),
            *flags({"f": "au", "acodec": "pcm_f32be", "map": "0:a:0", "map_metadata": -1}), "pipe:",
            "-nostdin", "-hide_banner", "-loglevel", "error"]
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
        try:
            header = _read_exact(proc.stdout, 24)
            out = None
            if len(header) == 24 and header[:4] == _AU_MAGIC:
                offset, _size, encoding, rate, channels = struct.unpack(">5I", header[4:24])
                if encoding != _AU_FLOAT32 or offset < 24:
                    raise AudioError(f"cannot decode audio file {path}: unexpected PCM from ffmpeg")
                _read_exact(proc.stdout, offset - 24)
                out = convert(f"audio file {path}", rate, channels)
                info.update(source_sample_rate=int(rate), source_channels=int(channels), decoder="ffmpeg")
                frame_bytes = 4 * channels
                while True:
                    chunk = _read_exact(proc.stdout, _BLOCK_FRAMES * frame_bytes)
                    usable = len(chunk) - len(chunk) % frame_bytes
                    if usable:
                        block = np.frombuffer(chunk[:usable], dtype=">f4").astype(np.float32)
                        mono = out.feed(block.reshape(-1, channels))
                        if mono.size:
                            yield mono
                    if len(chunk) < _BLOCK_FRAMES * frame_bytes:
                        break
            rc = proc.wait()
        except BaseException:  # an error, or the consumer closed the generator early
            proc.kill()
            proc.wait()
            raise
        finally:
            proc.stdout.close()
        if rc != 0 or out is None:
            err.seek(0)
            raise AudioError(f"cannot decode audio file {path}: {_ffmpeg_reason(err.read()[-4000:])}")
        tail = out.finish()
        if tail.size:
            yield tail


def source_blocks(path: str | os.PathLike, info: Optional[dict] = None) -> Iterator[np.ndarray]:
    """The first audio stream of ``path`` (speech, or a video's sound) as it is: its own sample rate and
    channels, decoded by ffmpeg as it is read - the decoder that muxes it into the MP4
    (:class:`talkhead.video.VideoWriter`), so a slice of these samples is what the MP4 plays there.

    Args:
        path: any file ffmpeg reads with an audio stream.
        info: optional dict receiving ``source_sample_rate`` (Hz), ``source_channels`` and ``decoder``
            (``"ffmpeg"``) once the stream is open (before the first block).

    Yields:
        ``(n, channels)`` float32 blocks, full scale [-1, 1] (at most ~6 s each).

    Raises:
        InputError: missing or unreadable file. AudioError: undecodable, no audio stream. FFmpegError:
        no ffmpeg binary.
    """
    path = Path(path)
    _check_readable(path)
    yield from _blocks_ffmpeg(path, {} if info is None else info, _AsIs)


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise InputError(f"audio file not found: {path}")
    if not path.is_file():
        raise InputError(f"audio path is not a file: {path}")
    if not os.access(path, os.R_OK):
        raise InputError(f"audio file is not readable (permission denied): {path}")


def speech_blocks(path: str | os.PathLike, info: Optional[dict] = None, *,
                  decoder: Optional[str] = None) -> Iterator[np.ndarray]:
    """The file's speech as 16 kHz mono float32 blocks, decoded as they are read (what :func:`load_speech`
    holds whole, in pieces): libsndfile when it opens the file, else ffmpeg piping raw PCM.

    Args:
        path: the audio file.
        decoder: ``"ffmpeg"`` to go straight to ffmpeg (a file :func:`scan_speech` found libsndfile
            fails inside: pass its :attr:`SpeechInfo.decoder`); ``None``: choose as described.
        info: optional dict receiving ``source_sample_rate``, ``source_channels`` and ``decoder`` once
            the stream is open.

    Yields:
        ``(n,)`` float32 blocks (at most ~6 s each); concatenated, :func:`load_speech`'s samples.

    Raises:
        InputError: missing or unreadable file. AudioError: undecodable, no audio stream, non-finite
        samples (no length checks: see :func:`scan_speech`). FFmpegError: no ffmpeg binary.
    """
    import soundfile as sf

    path = Path(path)
    _check_readable(path)
    info = {} if info is None else info
    if decoder == "ffmpeg" or _looks_like_mp3(path):  # libsndfile's mpg123 prints its own lines on a damaged MP3: ffmpeg, quietly
        yield from _blocks_ffmpeg(path, info)
        return
    try:
        f = sf.SoundFile(os.fsencode(path))  # bytes: names that are not UTF-8 work too
    except sf.SoundFileError:
        yield from _blocks_ffmpeg(path, info)
        return
    try:
        yield from _blocks_soundfile(f, path, info)
    except sf.SoundFileError as exc:
        raise _SoundfileFailed(f"cannot decode audio file {path}: {exc}") from None


def _looks_like_mp3(path: Path) -> bool:
    """An MP3 by its first bytes (an ID3 tag, or an MPEG audio frame sync), whatever its name."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(3)
    except OSError:
        return False
    return head.startswith(b"ID3") or (len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE6 in (0xE2, 0xE4, 0xE6))


class _SoundfileFailed(AudioError):
    """libsndfile opened the file but failed inside it (:func:`load_speech` then tries ffmpeg)."""


class _Blocks(list):
    """A sink of :func:`_feed_blocks` that keeps every block."""

    feed = list.append


def _feed_blocks(path: Path, new_sink):
    """Feed every 16 kHz block of ``path`` (:func:`speech_blocks`) to ``new_sink()``; when libsndfile
    opened the file but fails inside it, start again with ffmpeg and a fresh sink (the one fallback
    :func:`load_speech` and :func:`scan_speech` share). Returns ``(sink, info)``."""
    for decoder in (None, "ffmpeg"):
        info: dict = {}
        sink = new_sink()
        try:
            for block in speech_blocks(path, info, decoder=decoder):
                sink.feed(block)
            return sink, info
        except _SoundfileFailed:
            if decoder == "ffmpeg":
                raise
    raise AssertionError("unreachable")


def _decode(path: Path) -> tuple[np.ndarray, int, int, str]:
    """All samples (16 kHz mono float32), the source rate and channels, and the decoder used."""
    parts, info = _feed_blocks(path, _Blocks)
    samples = np.concatenate(parts).astype(np.float32, copy=False) if parts else np.zeros(0, np.float32)
    return samples, info.get("source_sample_rate", 0), info.get("source_channels", 0), info.get("decoder", "ffmpeg")


def load_speech(path: str | os.PathLike) -> Speech:
    """Decode an audio file into 16 kHz mono float32 :class:`Speech`.

    libsndfile is tried first (wav, flac, ogg, aiff, ...); MP3 (by its first bytes) and anything it
    cannot open goes
    through ffmpeg (m4a/aac, mp4/mov/webm audio tracks, ...). Channels are averaged (the reference
    keeps channel 1 instead); other rates are resampled with soxr 'HQ'.

    Args:
        path: the audio file.

    Returns:
        :class:`Speech` with ``samples`` ``(N,)`` float32 at 16 kHz, ``N >= MIN_NUM_SAMPLES``.

    Raises:
        InputError: the file does not exist or is not a regular file.
        AudioError: neither decoder can read it, it has no audio stream, no samples, non-finite
            samples, or it is silent (peak below :data:`SILENCE_PEAK` after removing the mean).
        AudioTooShortError: fewer than :data:`MIN_NUM_SAMPLES` samples at 16 kHz (~0.085 s), the
            least the MS-Sync generator accepts.
        FFmpegError: the file needs ffmpeg and no ffmpeg binary is available.
    """
    path = Path(path)
    samples, rate, channels, decoder = _decode(path)  # speech_blocks checks the file is there and readable

    stats = SignalStats()
    stats.feed(samples)
    _check_length_and_level(path, samples.shape[0], stats.peak)
    samples.setflags(write=False)
    return Speech(samples=samples, sample_rate=SAMPLE_RATE, path=path, source_sample_rate=int(rate),
                  source_channels=int(channels), decoder=decoder)


# ------------------------------------------------------------------------------------------------
# logfbank
# ------------------------------------------------------------------------------------------------
def num_logfbank_frames(num_samples: int) -> int:
    """Number of logfbank frames M for ``num_samples`` at 16 kHz: 1 + ceil((N - 400) / 160), or 1
    if N <= 400 (``python_speech_features.sigproc.framesig``)."""
    if num_samples <= WIN_LEN:
        return 1
    return 1 + -(-(num_samples - WIN_LEN) // HOP_LEN)


def _hz_to_mel(hz):
    return 2595.0 * np.log10(1.0 + hz / 700.0)


def _mel_to_hz(mel):
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


@functools.lru_cache(maxsize=None)
def mel_filterbank(n_filt: int = N_FILT, nfft: int = NFFT, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Triangular mel filterbank of ``python_speech_features.get_filterbanks`` (lowfreq 0 Hz,
    highfreq = sample_rate / 2).

    ``n_filt + 2`` points evenly spaced on the mel scale ``mel = 2595 log10(1 + f / 700)`` map to
    FFT bins ``b = floor((nfft + 1) f / sample_rate)``; filter j rises linearly from 0 at b[j] to 1
    at b[j+1] and falls towards 0 at b[j+2] (excluded). For 26 filters at 16 kHz the bins are
    [0, 2, 4, 7, ..., 209, 231, 256].

    Returns:
        ``(n_filt, nfft // 2 + 1)`` float64, read-only.
    """
    mel = np.linspace(_hz_to_mel(0.0), _hz_to_mel(sample_rate / 2), n_filt + 2)
    bins = np.floor((nfft + 1) * _mel_to_hz(mel) / sample_rate)
    fb = np.zeros((n_filt, nfft // 2 + 1))
    for j in range(n_filt):
        lo, mid, hi = bins[j], bins[j + 1], bins[j + 2]
        rise = np.arange(int(lo), int(mid))
        fb[j, rise] = (rise - lo) / (mid - lo)
        fall = np.arange(int(mid), int(hi))
        fb[j, fall] = (hi - fall) / (hi - mid)
    fb.setflags(write=False)
    return fb


def logfbank(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """26-band log mel filterbank of speech, as MS-Sync computes its audio input.

    Matches ``get_audio_feature_from_audio`` (HMo-audio ``dataset/preprocess_audio.py``) followed
    by ``python_speech_features.logfbank(audio, 16000, nfilt=26)``, all in float64:

    1. ``x = samples - mean(samples)``; ``x = x / max|x|`` (the reference normalisation; the
       features therefore do not depend on the input's scale or DC offset).
    2. Pre-emphasis: ``y[0] = x[0]``, ``y[n] = x[n] - 0.97 x[n-1]``.
    3. Framing: M = :func:`num_logfbank_frames` frames of 400 samples (25 ms) every 160 samples
       (10 ms), zero-padding the end to ``(M - 1) 160 + 400`` samples; rectangular window.
    4. Power spectrum: ``|rfft(frame, 512)|^2 / 512``, 257 bins.
    5. Energies: power spectrum times :func:`mel_filterbank` transposed; zeros become float64 eps.
    6. Natural log.

    Args:
        samples: ``(N,)`` audio at 16 kHz, any real dtype (float32 [-1, 1] from
            :func:`load_speech`, or raw int16).
        sample_rate: must be 16000 Hz: the frame sizes and the filterbank are those of 16 kHz.

    Returns:
        ``(M, 26)`` float64 logfbank, 100 frames per second; row m covers samples
        ``[160 m, 160 m + 400)``. The model input is this cast to float32.

    Memory: the signal is normalised, pre-emphasised and framed per chunk of :data:`_FFT_CHUNK`
    frames (with their exact sample ranges, so every value is computed as in one pass): beyond the
    input and the ``(M, 26)`` output, temporary memory does not grow with the length (no
    full-length float64 copy; measured: ``benchmarks/README.md``, "logfbank speed and memory"). The mean
    is summed per block of :data:`_SUM_BLOCK` samples (:class:`SignalStats`), so :func:`logfbank_stream`
    (a file streamed, never held whole) gives bit-identical rows.

    Raises:
        ValueError: ``samples`` is not 1-D or ``sample_rate`` is not 16000.
        AudioError: no samples, non-finite samples, or all samples equal (silent: the reference
            would divide by zero).
    """
    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"logfbank needs {SAMPLE_RATE} Hz audio, got {sample_rate} Hz; resample first "
                         "(load_speech does)")
    x = np.asarray(samples)
    if x.ndim != 1:
        raise ValueError(f"logfbank needs mono samples of shape (N,), got shape {x.shape}")
    n = x.shape[0]
    if n == 0:
        raise AudioError("cannot compute the logfbank of empty audio (0 samples)")
    if x.dtype.kind not in "fiu":
        raise ValueError(f"logfbank needs real samples, got dtype {x.dtype}")
    step = _FFT_CHUNK * HOP_LEN  # samples per chunk of frames
    for start in range(0, n, step):
        if not np.isfinite(x[start:start + step]).all():
            raise AudioError("cannot compute the logfbank: audio holds non-finite samples")
    stats = SignalStats()
    stats.feed(x)
    mean, peak = stats.mean, stats.peak
    if peak == 0:
        raise AudioError("cannot compute the logfbank of silent audio (all samples equal)")
    m = num_logfbank_frames(n)
    out = np.empty((m, N_FILT))
    for f0 in range(0, m, _FFT_CHUNK):
        f1 = min(f0 + _FFT_CHUNK, m)
        lo, hi = f0 * HOP_LEN, (f1 - 1) * HOP_LEN + WIN_LEN  # padded-signal samples these frames cover
        out[f0:f1] = _logfbank_rows(x[max(lo - 1, 0):min(hi, n)], lo, f1 - f0, mean, peak)
    return out


def _logfbank_rows(xs: np.ndarray, lo: int, count: int, mean: float, peak: float) -> np.ndarray:
    """logfbank rows of ``count`` frames whose first frame starts at sample ``lo`` (a multiple of 160).

    ``xs`` holds the signal's samples ``[max(lo - 1, 0), min(hi, N))`` with ``hi = lo + 160 (count - 1) + 400``
    (one sample before ``lo`` feeds its pre-emphasis; samples past the end are zero-padded). Steps 1-6 of
    :func:`logfbank`; ``(count, 26)`` float64.
    """
    hi = lo + (count - 1) * HOP_LEN + WIN_LEN
    seg = np.zeros(hi - lo)  # pre-emphasised, normalised signal on [lo, hi); zeros past the end
    xs = np.asarray(xs).astype(np.float64)
    xs -= mean
    xs /= peak
    if lo == 0:
        seg[0] = xs[0]
        seg[1:xs.shape[0]] = xs[1:] - PREEMPH * xs[:-1]
    else:
        seg[:xs.shape[0] - 1] = xs[1:] - PREEMPH * xs[:-1]
    frames = np.lib.stride_tricks.sliding_window_view(seg, WIN_LEN)[::HOP_LEN]  # (count, 400) view
    spec = np.fft.rfft(frames, NFFT)
    del frames, seg, xs
    power = np.abs(spec)
    del spec
    np.square(power, out=power)
    power *= 1.0 / NFFT
    feat = power @ mel_filterbank().T
    del power
    feat[feat == 0] = np.finfo(np.float64).eps
    return np.log(feat)


_SUM_BLOCK = 1 << 20
"""Samples per block of the mean's sum (:class:`SignalStats`): the sum is the same whatever the pieces."""


class SignalStats:
    """Sample count, mean and centred peak of a signal fed in pieces of any size (the normalisation of
    :func:`logfbank`).

    The sum is taken per fixed block of :data:`_SUM_BLOCK` samples from sample 0 (float64 pairwise sum per
    block, blocks added in order), so a signal fed whole or in any pieces gives bit-identical statistics:
    the streamed logfbank (:class:`LogfbankStream`) equals the one-pass one exactly.

    Attributes:
        num_samples: samples fed.
        mean: float64 mean (valid once everything is fed).
        peak: ``max |x - mean|`` in float64 (= ``max(max(x) - mean, mean - min(x))``, rounding being monotone).
    """

    def __init__(self) -> None:
        self.num_samples = 0
        self._total = 0.0
        self._carry: list[np.ndarray] = []
        self._carried = 0
        self._min = np.inf
        self._max = -np.inf

    def feed(self, x: np.ndarray) -> None:
        """Add samples ``(n,)`` (any real dtype)."""
        x = np.asarray(x)
        if not x.size:
            return
        self.num_samples += x.shape[0]
        self._min = min(self._min, float(x.min()))
        self._max = max(self._max, float(x.max()))
        pos = 0
        if self._carried:
            take = min(_SUM_BLOCK - self._carried, x.shape[0])
            self._carry.append(x[:take])
            self._carried += take
            pos = take
            if self._carried == _SUM_BLOCK:
                self._total += float(np.sum(np.concatenate(self._carry), dtype=np.float64))
                self._carry, self._carried = [], 0
        while x.shape[0] - pos >= _SUM_BLOCK:
            self._total += float(np.sum(x[pos:pos + _SUM_BLOCK], dtype=np.float64))
            pos += _SUM_BLOCK
        if pos < x.shape[0]:
            self._carry.append(np.array(x[pos:]))
            self._carried += x.shape[0] - pos

    @property
    def mean(self) -> float:
        total = self._total
        if self._carried:
            total += float(np.sum(np.concatenate(self._carry), dtype=np.float64))
        return total / self.num_samples if self.num_samples else 0.0

    @property
    def peak(self) -> float:
        if not self.num_samples:
            return 0.0
        mean = self.mean
        return max(self._max - mean, mean - self._min)

    @property
    def max_abs(self) -> float:
        """The largest ``|x|`` fed, in full-scale units (1.0 = full scale); 0.0 before any sample."""
        return max(self._max, -self._min) if self.num_samples else 0.0


@dataclass(frozen=True)
class SpeechInfo:
    """What :func:`scan_speech` learnt from a file without keeping its samples.

    Attributes:
        path: the file. num_samples: 16 kHz mono samples N. mean, peak, max_abs: :class:`SignalStats` of
        them (float64; max_abs above 1.0 = samples beyond full scale, only a float file holds them). source_sample_rate, source_channels, decoder: as in :class:`Speech`.
    """

    path: Path
    num_samples: int
    mean: float
    peak: float
    source_sample_rate: int
    source_channels: int
    decoder: str
    max_abs: float = 0.0

    @property
    def duration_s(self) -> float:
        """``N / 16000`` seconds."""
        return self.num_samples / SAMPLE_RATE

    @property
    def num_logfbank_rows(self) -> int:
        """Rows of its logfbank (:func:`num_logfbank_frames`)."""
        return num_logfbank_frames(self.num_samples)


def scan_speech(path: str | os.PathLike) -> SpeechInfo:
    """Decode a file once, streaming (:func:`speech_blocks`), for its length and normalisation, keeping no samples.

    The checks and messages are :func:`load_speech`'s; the memory is one decoded block (~6 s), whatever
    the length.

    Raises:
        as :func:`load_speech`.
    """
    path = Path(path)
    stats, info = _feed_blocks(path, SignalStats)
    _check_length_and_level(path, stats.num_samples, stats.peak)
    return SpeechInfo(path=path, num_samples=stats.num_samples, mean=stats.mean, peak=stats.peak,
                      source_sample_rate=int(info.get("source_sample_rate", 0)),
                      source_channels=int(info.get("source_channels", 0)), decoder=info.get("decoder", "ffmpeg"),
                      max_abs=stats.max_abs)


def _check_length_and_level(path: Path, n: int, peak: float) -> None:
    if n == 0:
        raise AudioError(f"audio file {path} contains no samples (0 s of audio)")
    if n < MIN_NUM_SAMPLES:
        raise AudioTooShortError(
            f"audio file {path} is too short: {n / SAMPLE_RATE:.4f} s ({n} samples at 16 kHz); "
            f"the keypoint generator needs at least {MIN_NUM_SAMPLES / SAMPLE_RATE:.4f} s "
            f"({MIN_NUM_SAMPLES} samples)")
    if peak < SILENCE_PEAK:
        raise AudioError(
            f"audio file {path} is silent: peak {peak:.2e} of full scale after removing the mean "
            f"(threshold {SILENCE_PEAK:g}, -80 dBFS)")


class LogfbankStream:
    """:func:`logfbank` computed as the samples arrive: feed 16 kHz blocks, get logfbank rows.

    Args:
        num_samples: the signal's total length N (rows: :func:`num_logfbank_frames`); ``None`` for an
            open-ended stream (live use: rows come out as soon as their 400 samples are in).
        mean, peak: the normalisation (:class:`SignalStats` of the whole signal for the exact
            :func:`logfbank`; live use passes its own estimate).
        chunk_frames: rows computed per batch. With the default :data:`_FFT_CHUNK` (the grid of
            :func:`logfbank`) and the file's :class:`SignalStats`, the rows are bit-identical to
            :func:`logfbank` of the whole signal.

    Memory: at most one chunk of samples and rows (and the block fed), whatever the length.
    """

    def __init__(self, num_samples: Optional[int], mean: float, peak: float, *, chunk_frames: int = 0) -> None:
        if not peak > 0 or not np.isfinite(peak) or not np.isfinite(mean):
            raise AudioError(f"cannot compute the logfbank with peak {peak!r} and mean {mean!r}")
        self.num_samples = num_samples
        self.total_rows = None if num_samples is None else num_logfbank_frames(num_samples)
        self.mean, self.peak = float(mean), float(peak)
        self.chunk = int(chunk_frames) or _FFT_CHUNK
        self._buf = np.zeros(0, np.float32)
        self._start = 0  # signal index of _buf[0]
        self.rows_done = 0
        self.received = 0

    def feed(self, block: np.ndarray) -> list[np.ndarray]:
        """Add samples ``(n,)``; return the row batches ``(k, 26)`` float64 now complete (maybe none)."""
        block = np.asarray(block)
        if block.size:
            self.received += block.shape[0]
            self._buf = np.concatenate([self._buf, block]) if self._buf.size else np.array(block)
        return self._drain(final=False)

    def finish(self) -> list[np.ndarray]:
        """The remaining rows (the end zero-padded as :func:`logfbank` pads it).

        Raises:
            AudioError: fewer samples than ``num_samples`` were fed.
        """
        if self.num_samples is not None and self.received != self.num_samples:
            raise AudioError(f"the audio stream gave {self.received} samples, {self.num_samples} were expected "
                             "(the file changed while it was read?)")
        if self.num_samples is None:
            self.num_samples = self.received
            self.total_rows = num_logfbank_frames(self.received) if self.received else 0
        return self._drain(final=True)

    def _drain(self, final: bool) -> list[np.ndarray]:
        out = []
        end = self._start + self._buf.shape[0]  # samples received
        while True:
            f0 = self.rows_done
            if self.total_rows is not None and f0 >= self.total_rows:
                break
            if self.total_rows is not None:
                f1 = min(f0 + self.chunk, self.total_rows)
            else:  # open-ended: as many complete frames as there are, up to a chunk
                f1 = min(f0 + self.chunk, max(f0, (end - WIN_LEN) // HOP_LEN + 1) if end >= WIN_LEN else f0)
                if f1 <= f0:
                    break
            lo, hi = f0 * HOP_LEN, (f1 - 1) * HOP_LEN + WIN_LEN
            n = self.num_samples if self.num_samples is not None and final else None
            if not final and end < hi:
                break
            stop = min(hi, n) if n is not None else min(hi, end)
            src = max(lo - 1, 0)
            out.append(_logfbank_rows(self._buf[src - self._start:stop - self._start], lo, f1 - f0,
                                      self.mean, self.peak))
            self.rows_done = f1
            keep = max(f1 * HOP_LEN - 1, 0)  # the next chunk reads from one sample before its first frame
            if keep > self._start:
                self._buf = self._buf[keep - self._start:]
                self._start = keep
        return out


def logfbank_stream(blocks: Iterable[np.ndarray], info: SpeechInfo) -> Iterator[np.ndarray]:
    """The logfbank of a file's speech in row batches, from its decoded blocks and its :func:`scan_speech`
    info: bit-identical to ``logfbank(load_speech(path).samples)``, without holding either whole.

    Yields:
        ``(k, 26)`` float64 row batches, ``info.num_logfbank_rows`` rows in all.

    Raises:
        AudioError: the blocks hold a different number of samples than ``info`` (the file changed).
    """
    stream = LogfbankStream(info.num_samples, info.mean, info.peak)
    for block in blocks:
        yield from stream.feed(block)
    yield from stream.finish()


def speech_features(path: str | os.PathLike) -> tuple[Speech, np.ndarray]:
    """``load_speech(path)`` and its :func:`logfbank` ``(M, 26)`` float64, 100 rows per second.

    Public API for library users and tests (a file's model input in one call); not used by the CLI
    or the pipeline, which decode and compute the logfbank as separate stages.

    Raises:
        the errors of :func:`load_speech` (InputError, AudioError, AudioTooShortError) and of
        :func:`logfbank` (AudioError for silent or non-finite samples).
    """
    speech = load_speech(path)
    return speech, logfbank(speech.samples, speech.sample_rate)
