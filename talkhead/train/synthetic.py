"""Synthetic training data with a known speech-motion coupling at two time scales.

Each clip is built from a random speech *envelope* ``e(m)`` at 100 Hz (logfbank rate):
syllable-like Hann bumps (about 4 per second, 80-200 ms long) gated by phrases of 0.8-3 s separated
by 0.2-0.8 s pauses.

* **Speech** (``logfbank (4T, 26)``): ``log(floor + e(m) * S(m, f) * (1 + 0.3 n(m, f))) + gain``:
  a spectrum ``S`` = a mild per-clip timbre times a random smooth "phoneme" spectrum per syllable,
  switched on by the envelope, with multiplicative and additive noise and a random recording gain;
  numerically in the range of real logfbank.
* **Mouth** (short scale): the frame envelope ``e_f(t) = mean(e(4t .. 4t+3))`` opens the mouth
  keypoints (lower lip down, upper lip up, mouth jacobian stretched), at the same frame: the true AV
  offset is 0.
* **Head** (long scale): ``h(t)``, the envelope smoothed by a Gaussian of ``head_sigma_s`` (0.4 s),
  standardised, nods and turns the whole face (translation + small rotation of every keypoint and
  jacobian), again with no lag.
* Plus audio-independent slow drift and frame noise on every keypoint, so motion is never trivially
  clean.

:func:`make_synthetic_dataset` writes clips in the training data format (:mod:`talkhead.train.data`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter1d

from ..constants import KP_DIM, N_FILT, NUM_KP
from ..constants import LOGFBANK_HZ, LOGFBANK_PER_VIDEO_FRAME
from .data import ClipInfo, DatasetWriter

MOUTH_KP = (0, 1, 2)
"""Keypoints that play the mouth: 0 = lower lip, 1 = upper lip, 2 = mouth corner."""


def speech_envelope(rng: np.random.Generator, num_rows: int, *, return_syllables: bool = False):
    """``(num_rows,)`` float64 envelope in [0, ~1] at 100 Hz: syllable bumps gated by phrases.

    With ``return_syllables`` also returns ``(num_rows,)`` int: the index of the syllable that
    dominates each row (-1 where no syllable sounds).
    """
    env = np.zeros(num_rows)
    owner = np.full(num_rows, -1)
    gate = np.zeros(num_rows)
    m = int(rng.uniform(0, 0.5) * LOGFBANK_HZ)
    while m < num_rows:  # phrases and pauses
        length = int(rng.uniform(0.8, 3.0) * LOGFBANK_HZ)
        gate[m:m + length] = 1.0
        m += length + int(rng.uniform(0.2, 0.8) * LOGFBANK_HZ)
    m, k = 0.0, 0
    while m < num_rows:  # syllables
        width = int(rng.uniform(0.08, 0.2) * LOGFBANK_HZ)
        c = int(m)
        bump = np.hanning(width + 2)[1:-1] * rng.uniform(0.5, 1.0)
        lo, hi = c, min(num_rows, c + width)
        louder = bump[:hi - lo] > env[lo:hi]
        owner[lo:hi][louder] = k
        env[lo:hi] = np.maximum(env[lo:hi], bump[:hi - lo])
        m += rng.uniform(0.15, 0.35) * LOGFBANK_HZ
        k += 1
    env = env * gate
    owner[env == 0] = -1
    return (env, owner) if return_syllables else env


def synthetic_clip(rng: np.random.Generator, num_frames: int, *, mouth_gain: float = 0.08,
                   head_gain: float = 0.04, head_sigma_s: float = 0.4, noise: float = 0.004) -> dict:
    """One synthetic clip.

    Args:
        rng: numpy generator (the clip is a deterministic function of its state).
        num_frames: ``T`` video frames at 25 fps (``4T`` logfbank rows).
        mouth_gain: mouth opening at envelope 1, in keypoint units ([-1, 1] grid).
        head_gain: head translation per standard deviation of the long-scale envelope, keypoint units.
        head_sigma_s: smoothing of the long-scale envelope, seconds.
        noise: standard deviation of the per-frame keypoint noise, keypoint units.

    Returns:
        ``{"keypoints": (T, 10, 6) float32, "logfbank": (4T, 26) float32, "envelope": (4T,) float64,
        "mouth": (T,) float64 (frame envelope), "head": (T,) float64 (standardised long-scale envelope)}``.
    """
    rows = num_frames * LOGFBANK_PER_VIDEO_FRAME
    env, owner = speech_envelope(rng, rows, return_syllables=True)
    # ---- speech: a speaker timbre times a random "phoneme" spectrum per syllable
    timbre = np.exp(rng.normal(0.0, 0.2, N_FILT)) * np.hanning(N_FILT + 4)[2:-2] * 4.0
    phonemes = np.exp(gaussian_filter1d(rng.normal(0.0, 1.0, (owner.max() + 2, N_FILT)), 2.0, axis=1) * 2.0)
    profile = timbre[None] * phonemes[owner + 1]                                         # (rows, 26)
    mult = 1.0 + 0.3 * rng.standard_normal((rows, N_FILT))
    power = 1e-2 + env[:, None] * profile * np.clip(mult, 0.05, None)
    logfbank = np.log(power) + rng.normal(0.0, 0.1, (rows, N_FILT)) + rng.normal(0.0, 1.0)
    # ---- drivers
    mouth = env.reshape(num_frames, LOGFBANK_PER_VIDEO_FRAME).mean(axis=1)
    slow = gaussian_filter1d(env, head_sigma_s * LOGFBANK_HZ, mode="reflect")
    slow = slow.reshape(num_frames, LOGFBANK_PER_VIDEO_FRAME).mean(axis=1)
    head = (slow - slow.mean()) / (slow.std() + 1e-6)
    # ---- keypoints: a random face layout
    pos = rng.uniform(-0.6, 0.6, (NUM_KP, 2))
    pos[MOUTH_KP, :] = [[0.0, 0.45], [0.0, 0.3], [0.2, 0.38]] + rng.normal(0, 0.03, (3, 2))
    jac = np.eye(2)[None] + rng.normal(0, 0.1, (NUM_KP, 2, 2))
    pos_t = np.repeat(pos[None], num_frames, axis=0)
    jac_t = np.repeat(jac[None], num_frames, axis=0)
    pos_t[:, 0, 1] += mouth_gain * mouth           # lower lip down
    pos_t[:, 1, 1] -= 0.3 * mouth_gain * mouth     # upper lip up
    pos_t[:, 2, 0] -= 0.3 * mouth_gain * mouth     # corner in
    jac_t[:, 0, 1, 1] *= 1.0 + 2.0 * mouth_gain * mouth
    # head: nod (y), turn (x) and roll, all driven by the long-scale envelope
    angle = 0.5 * head_gain * head
    cos, sin = np.cos(angle), np.sin(angle)
    rot = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)       # (T, 2, 2)
    centre = pos.mean(axis=0)
    pos_t = np.einsum("tij,tkj->tki", rot, pos_t - centre) + centre
    jac_t = np.einsum("tij,tkjl->tkil", rot, jac_t)
    pos_t[:, :, 0] += 0.5 * head_gain * head[:, None]
    pos_t[:, :, 1] += head_gain * head[:, None]
    # audio-independent drift + frame noise
    drift = gaussian_filter1d(rng.standard_normal((num_frames, 2)), 25, axis=0, mode="reflect")
    drift *= 0.01 / (drift.std() + 1e-9)
    pos_t += drift[:, None, :] + rng.normal(0, noise, pos_t.shape)
    jac_t += rng.normal(0, 2.5 * noise, jac_t.shape)
    kp = np.concatenate([pos_t, jac_t.reshape(num_frames, NUM_KP, 4)], axis=-1)
    assert kp.shape == (num_frames, NUM_KP, KP_DIM)
    return {"keypoints": kp.astype(np.float32), "logfbank": logfbank.astype(np.float32), "envelope": env,
            "mouth": mouth, "head": head}


def make_synthetic_dataset(data_dir: str | Path, *, num_clips: int = 24, num_frames: int = 200,
                           val_clips: int = 6, seed: int = 0, **clip_kwargs) -> list[ClipInfo]:
    """Write ``num_clips`` synthetic clips of ``num_frames`` frames (25 fps) to ``data_dir``.

    The last ``val_clips`` clips get split ``"val"``, the others ``"train"``; ids are
    ``synth_0000``, ... and the source is ``"synthetic"``. Clip ``i`` is drawn from
    ``numpy.random.default_rng([seed, i])``: the dataset is reproducible. ``clip_kwargs`` go to
    :func:`synthetic_clip`.

    Returns:
        the manifest records written.
    """
    with DatasetWriter(data_dir, flush_every=10**9) as writer:
        for i in range(num_clips):
            clip = synthetic_clip(np.random.default_rng([seed, i]), num_frames, **clip_kwargs)
            split = "val" if i >= num_clips - val_clips else "train"
            writer.add(f"synth_{i:04d}", clip["keypoints"], clip["logfbank"], source="synthetic", split=split)
        return writer.clips
