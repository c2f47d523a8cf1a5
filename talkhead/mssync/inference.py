"""Speech features + source keypoints -> a driving keypoint sequence at 25 fps (MS-Sync inference).

Reproduces the reference ``execute_model.execute_model`` (LouisBearing/HMo-audio) exactly:

1. ``M`` logfbank rows (100 Hz). ``R = int(M / 3.9943)`` frames are required, or
   ``min(1 + seq_len, R)`` when ``seq_len > 0``.
2. The first ``round(R * 3.9943)`` rows (``np.round``: half to even) are kept; the first
   ``4 * (obs_len - 1)`` of them, in reverse order, are put in front (the warm-up's audio); 5 rows are
   reflect-padded at the end (rows n-2, ..., n-6) and the padded audio is cut to ``4 R`` rows.
   This is ``audio_in``, ``(1, 4 (obs_len-1) + min(4R, n+5), 26)``.
3. ``inpt`` = kp0 = ``kp_source.pack()`` = ``[value, jacobian flattened row-major]`` ``(1, K, 6)``
   (``K = num_kp``: 10 for the released model) repeated ``obs_len`` times.
4. ``x_rec, x_pred = model(inpt, audio_in)``; ``out_kp = [x_rec[:, -1:]; x_pred]``: frame 0 is kp0
   plus the warm-up velocity, not kp0 itself. Frame t is conditioned on logfbank rows near 4 t,
   i.e. on time t / 25 s.
"""
from __future__ import annotations

import contextlib
import numpy as np
import torch

from ..audio import MIN_NUM_SAMPLES, num_logfbank_frames
from ..constants import HOP_S, KP_DIM, N_FILT, NUM_KP, REFERENCE_LOGFBANK_PER_FRAME, SAMPLE_RATE
from ..errors import AudioTooShortError, ConfigError
from ..keypoints import Keypoints
from ..progress import Progress
from .generator import MSSyncGenerator

REFLECT_PAD_ROWS = 5
"""Logfbank rows reflect-padded at the end by the reference (``F.pad(..., (0, 0, 0, 5), 'reflect')``)."""

def required_len(num_rows: int, seq_len: int = 0) -> int:
    """Reference ``required_len``: ``int(M / 3.9943)``, capped at ``1 + seq_len`` if ``seq_len > 0``."""
    n = int(num_rows / REFERENCE_LOGFBANK_PER_FRAME)
    if seq_len > 0:
        n = min(1 + seq_len, n)
    return n


def _kept_rows(req_len: int) -> int:
    """Logfbank rows the reference keeps: ``np.round(R * 3.9943)`` (half to even)."""
    return int(np.round(req_len * REFERENCE_LOGFBANK_PER_FRAME))


def frames_for_logfbank(num_rows: int, seq_len: int = 0) -> int:
    """Output frames for ``num_rows`` logfbank rows: ``T = min(R, (round(3.9943 R) + 5) // 4)``.

    Valid for ``obs_len >= 2`` (the released models use 3); see :func:`num_frames`.
    """
    req = required_len(num_rows, seq_len)
    return min(req, (_kept_rows(req) + REFLECT_PAD_ROWS) // 4)


def num_frames(num_samples: int) -> int:
    """Keypoint frames (25 fps) the generator yields for ``num_samples`` of 16-kHz audio.

    Rule (reference ``execute_model``): M = 1 + ceil((n - 400) / 160) logfbank rows,
    R = int(M / 3.9943), T = min(R, floor((round(3.9943 R) + 13) / 4) - 2). Below ~38.6 s, T = R;
    above it the 5-row reflect pad no longer covers 4 R - round(3.9943 R) rows, so T = R - 1 or
    less. There is no drift: frame t is conditioned on audio around t / 25 s.

    ========= ======= ==== == == ===== === === === === ==== ==== ====
    seconds   0.0851  0.5  1  2  4.8   5   10  30  38  39   40   60
    T         2       12   24 49 119   124 250 750 951 975  1000 1500
    ========= ======= ==== == == ===== === === === === ==== ==== ====

    (0.0851 s = 1361 samples = :data:`MIN_NUM_SAMPLES`.)

    Raises:
        AudioTooShortError: ``num_samples < MIN_NUM_SAMPLES``.
    """
    if num_samples < MIN_NUM_SAMPLES:
        raise AudioTooShortError(
            f"audio of {num_samples} samples ({num_samples / SAMPLE_RATE:.4f} s) is too short: MS-Sync needs "
            f"at least {MIN_NUM_SAMPLES} samples ({MIN_NUM_SAMPLES / SAMPLE_RATE:.4f} s) at {SAMPLE_RATE} Hz")
    return frames_for_logfbank(num_logfbank_frames(num_samples))


def build_audio_input(logfbank: torch.Tensor | np.ndarray, *, obs_len: int, seq_len: int = 0) -> torch.Tensor:
    """The model's audio input ``audio_in`` from a logfbank (reference ``execute_model`` steps 1-6).

    Args:
        logfbank: ``(M, 26)`` log filterbank at 100 Hz (cast to float32 as ``torch.Tensor`` does).
        obs_len: warm-up length of the model, frames.
        seq_len: frames to predict after frame 0 (0 = as many as the audio gives).

    Returns:
        ``(1, 4 (obs_len-1) + min(4 R, round(3.9943 R) + 5), 26)`` float32 on ``logfbank``'s device.

    Raises:
        AudioTooShortError: fewer rows than the procedure needs (M < 8 rows for obs_len 3).
        ValueError: a bad shape or a negative ``seq_len``.
    """
    feats = torch.as_tensor(logfbank)
    if not torch.is_floating_point(feats) or feats.dtype != torch.float32:
        feats = feats.to(torch.float32)
    if feats.ndim != 2 or feats.shape[1] != N_FILT:
        raise ValueError(f"logfbank must have shape (M, {N_FILT}), got {tuple(feats.shape)}")
    if seq_len < 0:
        raise ValueError(f"seq_len must be >= 0, got {seq_len}")
    req = required_len(feats.shape[0], seq_len)
    rows = _kept_rows(req) if req > 0 else 0
    prepad = 4 * (obs_len - 1)
    if req < 2 or rows <= REFLECT_PAD_ROWS or rows < prepad:
        raise AudioTooShortError(
            f"{feats.shape[0]} logfbank rows ({feats.shape[0] * HOP_S:.2f} s) are too few for MS-Sync: "
            f"at least 2 frames ({MIN_NUM_SAMPLES / SAMPLE_RATE:.4f} s of audio) are needed")
    full = feats[:rows]
    mirror = full[:prepad].flip(0)
    reflected = full[-REFLECT_PAD_ROWS - 1:-1].flip(0)          # rows n-2, n-3, ..., n-6
    padded = torch.cat([full, reflected], dim=0)[:4 * req]
    return torch.cat([mirror, padded], dim=0)[None]


def build_warmup_input(kp_source: Keypoints, *, obs_len: int, num_kp: int = NUM_KP) -> torch.Tensor:
    """``inpt``: kp0 ``[x, y, j00, j01, j10, j11]`` ``(1, K, 6)`` repeated ``obs_len`` times.

    Args:
        kp_source: :class:`~talkhead.keypoints.Keypoints` value ``(1, K, 2)`` in [-1, 1] and jacobian
            ``(1, K, 2, 2)`` (flattened row-major by :meth:`Keypoints.pack`).
        num_kp: ``K``, the model's keypoint count (``MSSyncConfig.num_kp``; 10 for the released model).

    Returns:
        ``(1, obs_len, K, 6)``.

    Raises:
        ValueError: wrong shapes (another keypoint count), or keypoints without jacobians.
    """
    if len(kp_source) != 1 or kp_source.num_kp != num_kp or kp_source.jacobian is None:
        jac = None if kp_source.jacobian is None else tuple(kp_source.jacobian.shape)
        raise ValueError(f"kp_source must be value (1, {num_kp}, 2) and jacobian (1, {num_kp}, 2, 2), "
                         f"got {tuple(kp_source.value.shape)} and {jac}")
    return kp_source.pack()[:, None].repeat(1, obs_len, 1, 1)


def generate_keypoints_trace(model: MSSyncGenerator, kp_source: Keypoints, logfbank, *,
                             seq_len: int = 0, progress: Progress | None = None,
                             incremental: bool | None = None, keep_trace: bool = True) -> dict[str, torch.Tensor]:
    """:func:`generate_keypoints` returning every intermediate (names of the golden fixture).

    Returns:
        dict with ``audio_in`` ``(1, L, 26)``, ``inpt`` ``(1, obs_len, K, 6)``, ``x_rec``
        ``(1, obs_len-1, K, 6)``, ``x_pred`` ``(1, S, K, 6)``, ``out_kp`` ``(1, T, K, 6)``
        (T = S + 1), plus the model's trace (see :meth:`MSSyncGenerator.rollout`) with the batch
        axis of the per-step arrays dropped: ``fpn_raw_i``, ``audio_pyramid_i``, ``encoder_x_obs``,
        ``temporal_obs``, ``vel_obs`` ``(obs_len, 60)``, ``encoder_x_decode`` ``(S-1, coord_dim)``,
        ``temporal_decode`` ``(S-1, hidden)``, ``vel_decode`` ``(S-1, 60)``, ``context_len_decode``
        ``(S-1,)``. All tensors are on the model's device.

    ``keep_trace=False`` records only the five inputs/outputs above (what :func:`generate_keypoints`
    needs: the per-step intermediates grow linearly with the clip; measured: ``benchmarks/README.md``,
    "Keypoint stage memory vs audio length").

    Raises:
        as :func:`generate_keypoints`.
    """
    cfg = model.config
    if cfg.data_dim != KP_DIM:
        raise ConfigError(f"MS-Sync model has data_dim={cfg.data_dim}; generating keypoints with "
                          f"jacobians (what the renderers take) needs data_dim={KP_DIM}")
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    with torch.inference_mode():
        audio_in = build_audio_input(torch.as_tensor(logfbank).to(device), obs_len=cfg.obs_len, seq_len=seq_len)
        inpt = build_warmup_input(kp_source.to(device, dtype), obs_len=cfg.obs_len, num_kp=cfg.num_kp)
        total = int(audio_in.shape[1] / 4) - cfg.obs_len + (1 if cfg.obs_len > 1 else 0)
        offset = 1 if cfg.obs_len > 1 else 0
        cb = (lambda stage, done, _n: progress(stage, done + offset, total)) if progress is not None else None
        trace: dict[str, torch.Tensor] = {}
        x_rec, x_pred = model.rollout(inpt, audio_in.to(dtype), trace=trace if keep_trace else None, progress=cb,
                                      incremental=incremental)
        out_kp = torch.cat([x_rec[:, -1:], x_pred], dim=1) if cfg.obs_len > 1 else x_pred
    if keep_trace:
        for name in ("encoder_x_decode", "temporal_decode", "vel_decode"):
            trace[name] = trace[name][:, 0]
    trace.update(audio_in=audio_in, inpt=inpt, x_rec=x_rec, x_pred=x_pred, out_kp=out_kp)
    return trace


def generate_keypoints(model: MSSyncGenerator, kp_source: Keypoints, logfbank, *,
                       seq_len: int = 0, progress: Progress | None = None) -> Keypoints:
    """Driving keypoints for speech: the reference ``execute_model.execute_model``, exactly.

    Runs under ``torch.inference_mode()`` on the model's device (inputs are moved there).

    Args:
        model: a loaded :class:`MSSyncGenerator` (``data_dim`` 6), e.g. from ``load_mssync``.
        kp_source: the renderer's source :class:`~talkhead.keypoints.Keypoints`, value ``(1, K, 2)`` in [-1, 1]
            of the keypoint grid and jacobian ``(1, K, 2, 2)``, ``K = model.config.num_kp``.
        logfbank: ``(M, 26)`` log filterbank of the speech at 100 Hz (array or tensor; float64 is
            cast to float32 as the reference's ``torch.Tensor(melspec)``).
        seq_len: if > 0, generate at most ``1 + seq_len`` frames (the reference ``max_l``
            behaviour; the result then differs slightly from a full run, see docs/fixtures.md, "Reference behaviours" 3).
        progress: ``progress("keypoints", done, total)`` in frames during the autoregressive decoding.

    Returns:
        kp_driving :class:`~talkhead.keypoints.Keypoints` at 25 fps, value ``(T, K, 2)`` and jacobian
        ``(T, K, 2, 2)`` on the model's device; ``T = num_frames(num_samples)`` for a full run. Frame 0
        is kp0 plus a velocity.

    Raises:
        AudioTooShortError: too few logfbank rows (< 8, i.e. < 85.1 ms of audio).
        ConfigError: the model's ``data_dim`` is not 6.
        ValueError: bad shapes or a negative ``seq_len``.
    """
    out_kp = generate_keypoints_trace(model, kp_source, logfbank, seq_len=seq_len, progress=progress,
                                      keep_trace=False)["out_kp"]
    return Keypoints.unpack(out_kp[0])


@contextlib.contextmanager
def _single_cpu_thread(device: torch.device):
    """One intra-op thread for MS-Sync on CPU (restored afterwards): the one-pass rollout here, and the audio
    encoder and warm-up of the windowed one, whose decoding steps then run on the thread count
    :class:`talkhead.mssync.windowed.StepThreads` measures to be faster.

    The steps are batch-1 ops: two threads read their weights faster on an idle machine, but when another
    process holds a core OpenMP spin-waiting makes them far slower, so only a timed choice uses a second thread
    (measured: ``benchmarks/README.md``, "MS-Sync rollout threads"). The audio encoder's convolutions round
    differently on two threads, so they stay on one (the keypoints must not depend on that choice).
    """
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class MSSyncMotion:
    """The pipeline's motion generator (:class:`talkhead.renderers.MotionGenerator`) over a loaded MS-Sync.

    ``motion(kp_source, logfbank, progress)`` is :func:`generate_keypoints` run on one CPU thread (see
    ``_single_cpu_thread``): kp_source ``(1, K, ...)`` + logfbank ``(M, 26)`` at 100 Hz -> kp_driving
    Keypoints ``(T, K, ...)`` at 25 fps on the model's device.

    Attributes:
        model: the :class:`MSSyncGenerator`.
        num_kp: its keypoint count (10 for the released model, FOMM's space).
        space: the :class:`~talkhead.keypoints.KeypointSpace` it generates (``model.config.space``).
    """

    def __init__(self, model: MSSyncGenerator):
        self.model = model

    @property
    def num_kp(self) -> int:
        return self.model.config.num_kp

    @property
    def space(self):
        return self.model.config.space

    @property
    def device(self) -> torch.device:
        """The device of the model's parameters (where the keypoints are returned)."""
        return next(self.model.parameters()).device

    def __call__(self, kp_source: Keypoints, logfbank, progress: Progress | None = None) -> Keypoints:
        with _single_cpu_thread(self.device):
            return generate_keypoints(self.model, kp_source, logfbank, progress=progress)


__all__ = ["MSSyncMotion", "MIN_NUM_SAMPLES", "num_frames", "required_len", "frames_for_logfbank",
           "build_audio_input", "build_warmup_input", "generate_keypoints", "generate_keypoints_trace"]
