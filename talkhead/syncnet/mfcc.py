"""The 13 MFCCs at 100 Hz that SyncNet's audio stream reads, as ``python_speech_features.mfcc``.

The reference (joonson/syncnet_python ``SyncNetInstance.evaluate``) reads the clip's 16 kHz mono
16-bit WAV with ``scipy.io.wavfile`` (int16 values, *not* scaled to [-1, 1]) and calls
``python_speech_features.mfcc(audio, 16000)`` with its defaults. This module computes the same
numbers in numpy (python_speech_features 0.6, its last release (2017), is not a dependency):

1. Pre-emphasis ``y[0] = x[0]``, ``y[n] = x[n] - 0.97 x[n-1]`` (float64).
2. Frames of 400 samples (25 ms) every 160 (10 ms), M = :func:`talkhead.audio.num_logfbank_frames`,
   the end zero-padded; rectangular window.
3. Power spectrum ``|rfft(frame, 512)|^2 / 512`` (257 bins); frame energy = its sum.
4. Mel energies = power spectrum x :func:`talkhead.audio.mel_filterbank` (26 bands, 0-8 kHz);
   zeros (and zero frame energies) become float64 eps; natural log.
5. DCT-II with orthonormal scaling over the 26 bands, first 13 coefficients kept.
6. Lifter ``c_n *= 1 + 11 sin(pi n / 22)``.
7. Coefficient 0 replaced by ``log(frame energy)``.

The scale of the input matters only for coefficient 0 (log energy) and the other coefficients'
response to the eps floor; SyncNet was trained on int16-scaled audio, so float audio in [-1, 1] is
multiplied by 32768 first (:func:`pcm16_units`).
"""
from __future__ import annotations

import numpy as np
from scipy.fft import dct

from ..audio import HOP_LEN, WIN_LEN, mel_filterbank, num_logfbank_frames
from ..constants import NFFT, PREEMPH, SAMPLE_RATE

__all__ = ["NUM_CEPSTRA", "CEP_LIFTER", "PCM16_FULL_SCALE", "pcm16_units", "mfcc"]

NUM_CEPSTRA = 13
"""MFCCs per 10 ms row (python_speech_features ``numcep``)."""
CEP_LIFTER = 22
"""Cepstral lifter (python_speech_features ``ceplifter``)."""
PCM16_FULL_SCALE = 32768.0
"""int16 value of full scale: float samples in [-1, 1] are multiplied by it (:func:`pcm16_units`)."""

_CHUNK_FRAMES = 8192
"""Frames per rfft batch (bounds temporaries to about 50 MB whatever the length)."""


def pcm16_units(samples: np.ndarray) -> np.ndarray:
    """Samples in 16-bit PCM units (what ``scipy.io.wavfile.read`` gives for a 16-bit WAV), float64.

    Integer arrays are taken as PCM values already; float arrays as full scale [-1, 1]
    (:func:`talkhead.audio.load_speech`) and multiplied by :data:`PCM16_FULL_SCALE` (exact for audio
    decoded from 16-bit files).

    Raises:
        ValueError: not a 1-D real array.
    """
    x = np.asarray(samples)
    if x.ndim != 1:
        raise ValueError(f"SyncNet audio must be mono samples of shape (N,), got shape {x.shape}")
    if x.dtype.kind in "iu":
        return x.astype(np.float64)
    if x.dtype.kind == "f":
        return x.astype(np.float64) * PCM16_FULL_SCALE
    raise ValueError(f"SyncNet audio must be real samples, got dtype {x.dtype}")


def mfcc(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """``python_speech_features.mfcc(samples, 16000)`` with its default parameters.

    Args:
        samples: ``(N,)`` 16 kHz mono audio in 16-bit PCM units (int16 values, as float or int; use
            :func:`pcm16_units` for float audio in [-1, 1]), ``N >= 1``.
        sample_rate: must be 16000.

    Returns:
        ``(M, 13)`` float64, ``M = 1 + ceil((N - 400) / 160)`` (1 if ``N <= 400``); row m covers
        samples ``[160 m, 160 m + 400)``, 100 rows per second; column 0 is the log frame energy.
        Matches python_speech_features 0.6 to about 1e-12 (float64 rounding of the FFT and DCT).

    Raises:
        ValueError: another sample rate, a shape other than ``(N,)`` with ``N >= 1``, non-finite samples.
    """
    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"SyncNet MFCCs need {SAMPLE_RATE} Hz audio, got {sample_rate} Hz; resample first")
    x = np.asarray(samples)
    if x.ndim != 1 or x.shape[0] == 0:
        raise ValueError(f"SyncNet MFCCs need mono samples of shape (N,) with N >= 1, got shape {x.shape}")
    x = x.astype(np.float64)
    if not np.isfinite(x).all():
        raise ValueError("SyncNet MFCCs: the audio holds non-finite samples")
    n, m = x.shape[0], num_logfbank_frames(x.shape[0])
    emphasised = np.zeros((m - 1) * HOP_LEN + WIN_LEN)  # zero-padded to whole frames, as framesig
    emphasised[0] = x[0]
    emphasised[1:n] = x[1:] - PREEMPH * x[:-1]
    fb_t = mel_filterbank().T  # (257, 26)
    eps = np.finfo(np.float64).eps
    n_ceps = np.arange(NUM_CEPSTRA)
    lift = 1.0 + (CEP_LIFTER / 2.0) * np.sin(np.pi * n_ceps / CEP_LIFTER)
    frames_all = np.lib.stride_tricks.sliding_window_view(emphasised, WIN_LEN)[::HOP_LEN]  # (m, 400) view
    out = np.empty((m, NUM_CEPSTRA))
    for f0 in range(0, m, _CHUNK_FRAMES):
        f1 = min(f0 + _CHUNK_FRAMES, m)
        power = np.abs(np.fft.rfft(frames_all[f0:f1], NFFT))
        np.square(power, out=power)
        power *= 1.0 / NFFT
        energy = power.sum(axis=1)
        energy[energy == 0] = eps
        feat = power @ fb_t
        del power
        feat[feat == 0] = eps
        ceps = dct(np.log(feat), type=2, axis=1, norm="ortho")[:, :NUM_CEPSTRA]
        ceps *= lift
        ceps[:, 0] = np.log(energy)
        out[f0:f1] = ceps
    return out
