"""SyncNet's lip-sync scores of a face clip: AV offset, LSE-D, LSE-C (and per-frame confidence).

Exactly the reference scoring (joonson/syncnet_python ``SyncNetInstance.evaluate`` and
``calc_pdist``; the figures every lip-sync paper since Wav2Lip reports), as functions of arrays:

1. Audio: 13 MFCCs at 100 Hz of the 16 kHz track in 16-bit PCM units (:func:`talkhead.syncnet.mfcc.mfcc`).
2. Windows: ``L = min(T, floor(N / 640))`` for T video frames and N audio samples, and
   ``W = L - 5`` windows (the reference's count: the last full window is never used). Window ``i``
   pairs frames ``i .. i+4`` (:func:`video_windows`: BGR, 0..255) with MFCC rows ``4i .. 4i+19``
   (:func:`audio_windows`), i.e. both streams' 0.2 s starting at frame i.
3. Embeddings of both streams (:func:`embed_windows`), any model with ``embed_video`` and
   ``embed_audio`` (:class:`EmbeddingModel`; :class:`talkhead.syncnet.SyncNet` or one a test injects).
4. Distances (:func:`distance_matrix`): ``D[i, j] = ||v_i - a_(i + j - s) + 1e-6||_2`` for
   ``j = 0 .. 2s`` (``s`` = ``vshift`` = 15 frames), where audio embeddings outside ``0 .. W-1`` are
   zero vectors (the reference pads with zeros, so edge windows are compared with nothing and count
   ``||v_i + 1e-6||`` in the means).
5. Scores (:func:`sync_scores`): ``mean_distance[j]`` = mean over i of ``D[i, j]``; ``j* = argmin``
   (the first on ties); **AV offset** = ``j* - s`` frames; **LSE-D** = ``mean_distance[j*]``;
   **LSE-C** = ``median(mean_distance) - LSE-D``; per-frame confidence =
   ``medfilt(median(mean_distance) - D[:, j*], 9)``.

Sign of the offset: at the best offset, video window i matches audio window ``i + offset``. An
offset of +k means the sound of a frame is heard k frames (40 k ms) *after* the frame is shown (the
video leads, the audio is late): delaying the audio by k frames gives ``+k``. This is the sign of
``talkhead evaluate``'s AV-Off (motion leading speech is positive); the reference ``SyncNetInstance``
prints the opposite sign (its ``vshift - argmin``).

Frame crops: 224 x 224 (:func:`talkhead.syncnet.crop.syncnet_crop` cuts them from a face track).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from scipy.signal import medfilt

from ..constants import FPS, SAMPLE_RATE
from ..errors import InputError
from .crop import CROP_SIZE
from .mfcc import mfcc, pcm16_units

__all__ = [
    "VSHIFT", "WINDOW_FRAMES", "MFCC_ROWS_PER_FRAME", "AUDIO_WINDOW_ROWS", "SAMPLES_PER_FRAME", "CROP_SIZE",
    "PAIRWISE_EPS", "FRAME_CONF_KERNEL", "EmbeddingModel", "SyncScores", "num_windows", "video_windows",
    "audio_windows", "embed_windows", "distance_matrix", "sync_scores", "score_clip",
]

VSHIFT = 15
"""Largest offset searched, frames each way (the reference ``run_syncnet.py`` ``--vshift`` default)."""
WINDOW_FRAMES = 5
"""Video frames per window (0.2 s at 25 fps)."""
MFCC_ROWS_PER_FRAME = 4
"""MFCC rows (100 Hz) per 25-fps frame."""
AUDIO_WINDOW_ROWS = WINDOW_FRAMES * MFCC_ROWS_PER_FRAME
"""MFCC rows per window (20 = 0.2 s)."""
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS
"""16 kHz samples per 25-fps frame (640)."""
PAIRWISE_EPS = 1e-6
"""``torch.nn.functional.pairwise_distance``'s eps, added to each difference (the reference's)."""
FRAME_CONF_KERNEL = 9
"""Median filter width of the per-frame confidence (the reference's)."""
DEFAULT_BATCH = 20
"""Windows per forward pass (the reference's ``--batch_size``; results do not depend on it beyond
float32 rounding)."""


class EmbeddingModel(Protocol):
    """What the scoring needs of a model: both streams' embeddings of a batch of windows."""

    def embed_video(self, frames: torch.Tensor) -> torch.Tensor:
        """``(B, 3, 5, 224, 224)`` float32 BGR 0..255 -> ``(B, E)``."""

    def embed_audio(self, mfcc: torch.Tensor) -> torch.Tensor:
        """``(B, 1, 13, 20)`` float32 -> ``(B, E)``."""


@dataclass(frozen=True, eq=False)
class SyncScores:
    """Lip-sync scores of one clip.

    Attributes:
        offset: AV offset, frames (``-vshift .. vshift``; + = the audio is late, see the module doc).
        lse_d: LSE-D, the mean embedding distance at the best offset (lower = better sync).
        lse_c: LSE-C, ``median(mean_distance) - lse_d`` (higher = more confident sync).
        mean_distance: ``(2 vshift + 1,)`` float64 mean distance per candidate, index ``j`` = offset
            ``j - vshift``.
        frame_confidence: ``(W,)`` float64 per-window confidence at the best offset, median-filtered
            over 9 windows (window i starts at frame i).
        num_windows: W.
        vshift: the search range.
    """

    offset: int
    lse_d: float
    lse_c: float
    mean_distance: np.ndarray
    frame_confidence: np.ndarray
    num_windows: int
    vshift: int = VSHIFT

    @property
    def offset_ms(self) -> float:
        """The AV offset in milliseconds (40 ms per frame)."""
        return self.offset * 1000.0 / FPS

    def as_dict(self) -> dict:
        """Plain numbers for JSON: offset (frames and ms), lse_c, lse_d, num_windows."""
        return {"offset_frames": self.offset, "offset_ms": self.offset_ms, "lse_c": self.lse_c, "lse_d": self.lse_d,
                "num_windows": self.num_windows}


def num_windows(num_frames: int, num_samples: int) -> int:
    """Windows the reference scores for ``num_frames`` video frames and ``num_samples`` audio samples:
    ``min(num_frames, num_samples // 640) - 5`` (may be <= 0: too short)."""
    return min(int(num_frames), int(num_samples) // SAMPLES_PER_FRAME) - WINDOW_FRAMES


def _check_frames(frames: np.ndarray) -> np.ndarray:
    x = np.asarray(frames)
    if x.ndim != 4 or x.shape[1:] != (CROP_SIZE, CROP_SIZE, 3):
        raise ValueError(f"SyncNet frames must be (T, 224, 224, 3) RGB crops, got shape {x.shape}")
    return x


def video_windows(frames: np.ndarray, start: int, stop: int) -> torch.Tensor:
    """Video windows ``start .. stop-1`` as the lip stream reads them.

    Args:
        frames: ``(T, 224, 224, 3)`` RGB face crops (uint8 0..255, or float on that scale), 25 fps.
        start, stop: window indices, ``0 <= start < stop <= T - 4``.

    Returns:
        ``(stop - start, 3, 5, 224, 224)`` float32, **BGR** (the reference reads frames with
        ``cv2.imread``), values 0..255 unscaled; window i holds frames ``i .. i+4``.
    """
    x = _check_frames(frames)
    clip = torch.from_numpy(np.ascontiguousarray(x[start:stop + WINDOW_FRAMES - 1, :, :, ::-1])).float()
    clip = clip.permute(3, 0, 1, 2)  # (3, n + 4, 224, 224) BGR
    return clip.unfold(1, WINDOW_FRAMES, 1).permute(1, 0, 4, 2, 3).contiguous()


def audio_windows(mfcc_rows: np.ndarray, start: int, stop: int) -> torch.Tensor:
    """Audio windows ``start .. stop-1``: ``(stop - start, 1, 13, 20)`` float32, window i = MFCC rows
    ``4i .. 4i+19`` transposed (coefficients by time), as the reference's ``cct[:, :, :, 4i:4i+20]``.

    Args:
        mfcc_rows: ``(M, 13)`` from :func:`talkhead.syncnet.mfcc.mfcc`, ``M >= 4 (stop - 1) + 20``.
    """
    m = np.asarray(mfcc_rows)
    need = MFCC_ROWS_PER_FRAME * (stop - 1) + AUDIO_WINDOW_ROWS
    if m.ndim != 2 or m.shape[1] != 13 or m.shape[0] < need:
        raise ValueError(f"SyncNet audio windows {start}..{stop - 1} need ({need}, 13) MFCC rows, got {m.shape}")
    rows = torch.from_numpy(np.ascontiguousarray(m[MFCC_ROWS_PER_FRAME * start:need].T)).float()  # (13, r)
    return rows.unfold(1, AUDIO_WINDOW_ROWS, MFCC_ROWS_PER_FRAME).permute(1, 0, 2).unsqueeze(1).contiguous()


def _device_of(model: EmbeddingModel) -> torch.device:
    params = getattr(model, "parameters", None)
    first = next(iter(params()), None) if callable(params) else None
    return first.device if first is not None else torch.device("cpu")


def embed_windows(model: EmbeddingModel, frames: np.ndarray, mfcc_rows: np.ndarray, count: int, *,
                  batch_size: int = DEFAULT_BATCH,
                  progress: Optional[Callable[[int, int], None]] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings of windows ``0 .. count-1`` of both streams, ``batch_size`` windows per pass.

    Args:
        model: an :class:`EmbeddingModel` in eval mode (tensors go to its parameters' device).
        frames: ``(T, 224, 224, 3)`` RGB crops, ``T >= count + 4``.
        mfcc_rows: ``(M, 13)``, ``M >= 4 count + 16``.
        count: number of windows (:func:`num_windows`).
        progress: called as ``progress(done, count)`` after each batch.

    Returns:
        ``(video (count, E), audio (count, E))`` float32 on the CPU.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    device = _device_of(model)
    video, audio = [], []
    with torch.inference_mode():
        for start in range(0, count, batch_size):
            stop = min(count, start + batch_size)
            video.append(model.embed_video(video_windows(frames, start, stop).to(device)).float().cpu())
            audio.append(model.embed_audio(audio_windows(mfcc_rows, start, stop).to(device)).float().cpu())
            if progress is not None:
                progress(stop, count)
    return torch.cat(video), torch.cat(audio)


def distance_matrix(video: torch.Tensor, audio: torch.Tensor, vshift: int = VSHIFT, *,
                    chunk: int = 256) -> torch.Tensor:
    """Distances between each video window and the audio windows within ``vshift`` of it
    (the reference ``calc_pdist``).

    Args:
        video, audio: ``(W, E)`` embeddings of the same windows.
        vshift: search range, frames each way.
        chunk: video windows per step (bounds the temporary to ``chunk (2 vshift + 1) E`` floats).

    Returns:
        ``(W, 2 vshift + 1)`` float32: ``[i, j] = ||video[i] - audio[i + j - vshift] + 1e-6||``, with
        zero audio embeddings outside ``0 .. W-1``.
    """
    if video.dim() != 2 or video.shape != audio.shape:
        raise ValueError(f"distance_matrix needs two (W, E) embeddings of one shape, got {tuple(video.shape)} "
                         f"and {tuple(audio.shape)}")
    span = 2 * vshift + 1
    padded = F.pad(audio, (0, 0, vshift, vshift))  # (W + 2 vshift, E)
    out = []
    for i0 in range(0, video.shape[0], chunk):
        i1 = min(i0 + chunk, video.shape[0])
        candidates = padded[i0:i1 + span - 1].unfold(0, span, 1).transpose(1, 2)  # (n, span, E)
        out.append(F.pairwise_distance(video[i0:i1, None, :].expand_as(candidates), candidates, eps=PAIRWISE_EPS))
    return torch.cat(out)


def sync_scores(distances: torch.Tensor, vshift: int = VSHIFT) -> SyncScores:
    """AV offset, LSE-D, LSE-C and per-frame confidence from a :func:`distance_matrix`.

    Args:
        distances: ``(W, 2 vshift + 1)``.

    Returns:
        :class:`SyncScores` (the arithmetic of the reference ``evaluate``, in float32 as it).
    """
    if distances.dim() != 2 or distances.shape[1] != 2 * vshift + 1 or distances.shape[0] < 1:
        raise ValueError(f"sync_scores needs (W >= 1, {2 * vshift + 1}) distances, got {tuple(distances.shape)}")
    mean_distance = distances.t().contiguous().mean(1)  # the reference: stack(dists, 1).mean(1)
    min_value, min_index = torch.min(mean_distance, 0)
    median = torch.median(mean_distance)
    frame_conf = (median - distances[:, min_index]).numpy()
    return SyncScores(
        offset=int(int(min_index) - vshift),  # the reference's vshift - argmin, negated (module doc)
        lse_d=float(min_value),
        lse_c=float(median - min_value),
        mean_distance=mean_distance.double().numpy(),
        frame_confidence=np.asarray(medfilt(frame_conf, kernel_size=FRAME_CONF_KERNEL), dtype=np.float64),
        num_windows=int(distances.shape[0]),
        vshift=vshift,
    )


def score_clip(model: EmbeddingModel, frames: np.ndarray, samples: np.ndarray, *, vshift: int = VSHIFT,
               batch_size: int = DEFAULT_BATCH,
               progress: Optional[Callable[[int, int], None]] = None) -> SyncScores:
    """Lip-sync scores of a face clip (the whole of the module doc's steps 1-5).

    Args:
        model: :class:`talkhead.syncnet.SyncNet` (eval mode) or any :class:`EmbeddingModel`.
        frames: ``(T, 224, 224, 3)`` uint8 RGB face crops at 25 fps.
        samples: ``(N,)`` the clip's audio at 16 kHz, starting with frame 0: float in [-1, 1] or int16
            values (:func:`talkhead.syncnet.mfcc.pcm16_units`).
        vshift: offsets searched, frames each way (15).
        batch_size: windows per forward pass.
        progress: ``progress(done, total)`` windows, after each batch.

    Returns:
        :class:`SyncScores`.

    Raises:
        InputError: fewer than 6 frames of video or of audio (no window to score).
        ValueError: arrays of the wrong shape.
    """
    frames = _check_frames(frames)
    pcm = pcm16_units(samples)
    count = num_windows(frames.shape[0], pcm.shape[0])
    if count < 1:
        need = WINDOW_FRAMES + 1
        raise InputError(f"clip too short for SyncNet: {frames.shape[0]} frames and {pcm.shape[0] / SAMPLE_RATE:.2f} s "
                         f"of audio; it needs at least {need} frames ({need * 1000 // FPS} ms) of both")
    rows = mfcc(pcm)
    video, audio = embed_windows(model, frames, rows, count, batch_size=batch_size, progress=progress)
    return sync_scores(distance_matrix(video, audio, vshift), vshift)
