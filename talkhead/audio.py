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
from typing import Optional

import numpy as np

from .constants import HOP_S, N_FILT, NFFT, PREEMPH, SAMPLE_RATE, WIN_S
from .errors import AudioError, AudioTooShortError, InputError
from .ffmpeg import ffmpeg_exe, flags

__all__ = [
    "MIN_NUM_SAMPLES",
    "SILENCE_PEAK",
    "RESAMPLE_QUALITY",
    "Speech",
    "load_speech",
    "logfbank",
    "mel_filterbank",
    "num_logfbank_frames",
    "speech_features",
]

MIN_NUM_SAMPLES = 1361
"""Fewest 16 kHz samples (about 0.085 s) the MS-Sync keypoint generator accepts (the one definition:
:func:`load_speech` rejects shorter audio, :func:`talkhead.mssync.num_frames` uses it too).

1361 samples give M = 8 logfbank rows and T = 2 output frames; with at most 1360 samples the
reference ``execute_model`` fails (a reflect-pad RuntimeError, or an IndexError when M <= 3 rows;
see docs/fixtures.md, "minimum audio")."""

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

_FFT_CHUNK = 8192
"""logfbank frames per chunk (signal normalisation, framing and rfft batch; bounds the temporary
complex spectrum to about 34 MB)."""


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
class _ToMono16k:
    """Averages channels and resamples blocks to 16 kHz (streamed soxr), collecting the result."""

    def __init__(self, path: Path, rate: int, channels: int) -> None:
        if rate <= 0 or channels <= 0:
            raise AudioError(f"{path}: invalid audio stream ({rate} Hz, {channels} channels)")
        self.path, self.rate, self.channels = path, rate, channels
        self._parts: list[np.ndarray] = []
        self._stream = None
        if rate != SAMPLE_RATE:
            import soxr

            self._stream = soxr.ResampleStream(rate, SAMPLE_RATE, 1, dtype="float32", quality=RESAMPLE_QUALITY)

    def feed(self, block: np.ndarray) -> None:
        """``block`` ``(n, channels)`` float32 at the source rate."""
        if block.shape[0] == 0:
            return
        if not np.isfinite(block).all():
            raise AudioError(f"{self.path}: audio holds non-finite samples (NaN or infinity)")
        if self.channels == 1:
            mono = np.ascontiguousarray(block[:, 0], dtype=np.float32)
        else:
            mono = block.mean(axis=1, dtype=np.float64).astype(np.float32)
        if self._stream is not None:
            mono = self._stream.resample_chunk(mono)
        self._parts.append(mono)

    def finish(self) -> np.ndarray:
        """All samples, ``(N,)`` float32 at 16 kHz."""
        if self._stream is not None:
            self._parts.append(self._stream.resample_chunk(np.zeros(0, np.float32), last=True))
        if not self._parts:
            return np.zeros(0, np.float32)
        return np.concatenate(self._parts).astype(np.float32, copy=False)


def _decode_soundfile(path: Path) -> tuple[np.ndarray, int, int]:
    """Decode with libsndfile. Raises ``soundfile.SoundFileError`` (a RuntimeError) if it cannot."""
    import soundfile as sf

    with sf.SoundFile(os.fsencode(path)) as f:  # bytes: names that are not UTF-8 work too
        out = _ToMono16k(path, f.samplerate, f.channels)
        for block in f.blocks(blocksize=_BLOCK_FRAMES, dtype="float32", always_2d=True):
            out.feed(block)
        return out.finish(), f.samplerate, f.channels


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


def _decode_ffmpeg(path: Path) -> tuple[np.ndarray, int, int]:
    """Decode the first audio stream with ffmpeg: float32 PCM at the source rate and channel
    count, piped out as Sun AU.

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
                out = _ToMono16k(path, rate, channels)
                frame_bytes = 4 * channels
                while True:
                    chunk = _read_exact(proc.stdout, _BLOCK_FRAMES * frame_bytes)
                    usable = len(chunk) - len(chunk) % frame_bytes
                    if usable:
                        block = np.frombuffer(chunk[:usable], dtype=">f4").astype(np.float32)
                        out.feed(block.reshape(-1, channels))
                    if len(chunk) < _BLOCK_FRAMES * frame_bytes:
                        break
            rc = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            proc.stdout.close()
        if rc != 0 or out is None:
            err.seek(0)
            raise AudioError(f"cannot decode audio file {path}: {_ffmpeg_reason(err.read()[-4000:])}")
    return out.finish(), rate, channels


def load_speech(path: str | os.PathLike) -> Speech:
    """Decode an audio file into 16 kHz mono float32 :class:`Speech`.

    libsndfile is tried first (wav, flac, ogg, mp3, aiff, ...); anything it cannot open goes
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
    if not path.exists():
        raise InputError(f"audio file not found: {path}")
    if not path.is_file():
        raise InputError(f"audio path is not a file: {path}")
    if not os.access(path, os.R_OK):
        raise InputError(f"audio file is not readable (permission denied): {path}")

    import soundfile as sf

    decoder = "soundfile"
    try:
        samples, rate, channels = _decode_soundfile(path)
    except sf.SoundFileError:
        decoder = "ffmpeg"
        samples, rate, channels = _decode_ffmpeg(path)

    n = samples.shape[0]
    if n == 0:
        raise AudioError(f"audio file {path} contains no samples (0 s of audio)")
    if n < MIN_NUM_SAMPLES:
        raise AudioTooShortError(
            f"audio file {path} is too short: {n / SAMPLE_RATE:.4f} s ({n} samples at 16 kHz); "
            f"the keypoint generator needs at least {MIN_NUM_SAMPLES / SAMPLE_RATE:.4f} s "
            f"({MIN_NUM_SAMPLES} samples)")
    peak = _centred_peak(samples)
    if peak < SILENCE_PEAK:
        raise AudioError(
            f"audio file {path} is silent: peak {peak:.2e} of full scale after removing the mean "
            f"(threshold {SILENCE_PEAK:g}, -80 dBFS)")
    samples.setflags(write=False)
    return Speech(samples=samples, sample_rate=SAMPLE_RATE, path=path, source_sample_rate=int(rate),
                  source_channels=int(channels), decoder=decoder)


def _centred_peak(samples: np.ndarray) -> float:
    """max |x - mean(x)|, in float64."""
    x = np.asarray(samples)
    mean = float(np.mean(x, dtype=np.float64))
    return max(abs(float(x.max()) - mean), abs(float(x.min()) - mean))


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
    full-length float64 copy; measured: ``benchmarks/README.md``, "logfbank speed and memory").

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
    # Mean in float64 (pairwise summation; the same as the mean of a float64 copy to within an ulp).
    mean = np.mean(x, dtype=np.float64)
    peak = 0.0
    for start in range(0, n, step):
        chunk = x[start:start + step].astype(np.float64)
        chunk -= mean
        peak = max(peak, float(np.max(np.abs(chunk))))
    if peak == 0:
        raise AudioError("cannot compute the logfbank of silent audio (all samples equal)")

    m = num_logfbank_frames(n)
    fb_t = mel_filterbank().T  # (257, 26)
    eps = np.finfo(np.float64).eps
    out = np.empty((m, N_FILT))
    for f0 in range(0, m, _FFT_CHUNK):
        f1 = min(f0 + _FFT_CHUNK, m)
        lo, hi = f0 * HOP_LEN, (f1 - 1) * HOP_LEN + WIN_LEN  # padded-signal samples these frames cover
        seg = np.zeros(hi - lo)  # pre-emphasised, normalised signal on [lo, hi); zeros past the end
        src_lo = max(lo - 1, 0)  # one sample before lo feeds the pre-emphasis of sample lo
        xs = x[src_lo:min(hi, n)].astype(np.float64)
        xs -= mean
        xs /= peak
        if lo == 0:
            seg[0] = xs[0]
            seg[1:xs.shape[0]] = xs[1:] - PREEMPH * xs[:-1]
        else:
            seg[:xs.shape[0] - 1] = xs[1:] - PREEMPH * xs[:-1]
        frames = np.lib.stride_tricks.sliding_window_view(seg, WIN_LEN)[::HOP_LEN]  # (f1 - f0, 400) view
        spec = np.fft.rfft(frames, NFFT)
        del frames, seg, xs
        power = np.abs(spec)
        del spec
        np.square(power, out=power)
        power *= 1.0 / NFFT
        feat = power @ fb_t
        del power
        feat[feat == 0] = eps
        out[f0:f1] = np.log(feat)
    return out


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
