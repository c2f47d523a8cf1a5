"""The MS-Sync evaluation in the keypoint domain: multi-scale AV synchrony (|AV-Off|, AV-Conf) and LMD.

Multi-scale AV synchrony (paper sec. 4, "AV-Off / AV-Conf at 200/400/800/1600 ms"): a *metric*
syncer pyramid, trained separately from the one used as a training loss (e.g. ``talkhead train
syncers`` with another seed into another run dir), embeds every 5-frame window of each pyramid level
(:class:`~talkhead.train.syncers.SyncerPyramid`). At each level, SyncNet's offset search
(Chung & Zisserman 2016, ``SyncNetInstance.evaluate``) compares each video window ``t`` with the
audio windows ``t + d`` for every shift ``|d| <= S`` (``S = 15`` level frames, reduced for short
clips so that at least a third of the windows are compared at every shift)::

    dist(d) = mean_t || e_x[t] - e_a[t + d] ||      (t over the windows valid for every shift)
    offset  = argmin_d dist(d)                      (ties: the smallest |d|)
    conf    = median_d dist(d) - min_d dist(d)

Offsets are reported in 25-fps frames (``d * 2**level``) and are positive when the motion leads
the speech (motion at frame t matches speech at frame t + offset). Per clip values are averaged over
clips: ``abs_offset_frames`` = mean |AV-Off|, ``offset_frames`` = mean signed offset, ``conf`` =
mean AV-Conf. A well synchronised sequence has |AV-Off| near 0 and a high AV-Conf; a static head
has AV-Conf near 0 (the distance curve is almost flat).

LMD (landmark distance): mean over frames and the 68 points of the Euclidean distance between
generated and ground-truth 68-landmark sequences, in pixels (lower is better).

:func:`evaluate` returns a JSON-serialisable dict with three rows: ``generated``, ``ground_truth``
(the real motion, in sync by construction) and ``static`` (the first ground-truth frame held still).

SyncNet's lip-sync scores of rendered videos (LSE-C, LSE-D and the AV offset, :mod:`talkhead.score`)
join the table through :func:`syncnet_rows`: the generated row from the rendered ``<clip id>.mp4``
files, the ground-truth row from the clips' source videos where they still exist. They measure the
pixels (renderer included) with the pretrained SyncNet, where AV-Off/AV-Conf measure the keypoints
with the metric syncers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np
import torch

from ..constants import FPS
from ..errors import InputError
from ..constants import LOGFBANK_PER_VIDEO_FRAME
from ..progress import Progress
from ..score import VideoScore, score_videos, summary
from ..mssync.syncers import WINDOW_FRAMES, SyncerPyramid, level_name, pyramid_frames

DEFAULT_MAX_SHIFT = 15
"""SyncNet's offset search range (``vshift``), in frames of each pyramid level."""


@dataclass
class EvalClip:
    """One sequence to evaluate.

    Attributes:
        keypoints: ``(T, K, d)`` keypoints (+ jacobians) at 25 fps in the metric syncers' keypoint space
            (FOMM: ``(T, 10, 6)``).
        logfbank: ``(M, 26)`` logfbank of the speech (100 Hz; frame t <-> rows 4t..4t+3); needed on
            ground-truth clips (generated clips are scored against their ground truth's speech).
        landmarks: optional ``(T, 68, 2)`` 68-point landmarks in pixels (for LMD).
    """

    keypoints: np.ndarray
    logfbank: np.ndarray | None = None
    landmarks: np.ndarray | None = None


def _as_clip(obj: Any, what: str, space) -> EvalClip:
    if isinstance(obj, EvalClip):
        clip = obj
    elif isinstance(obj, Mapping):
        clip = EvalClip(obj["keypoints"], obj.get("logfbank"), obj.get("landmarks"))
    else:
        clip = EvalClip(np.asarray(obj))
    kp = np.asarray(clip.keypoints, dtype=np.float32)
    if kp.ndim != 3 or kp.shape[1:] != (space.num_kp, space.kp_dim):
        raise InputError(f"{what}: keypoints must have shape (T, {space.num_kp}, {space.kp_dim}) (the syncers' "
                         f"{space.describe()}), got {kp.shape}")
    lf = None if clip.logfbank is None else np.asarray(clip.logfbank, dtype=np.float32)
    lm = None if clip.landmarks is None else np.asarray(clip.landmarks, dtype=np.float64)
    if lm is not None and (lm.ndim != 3 or lm.shape[1:] != (68, 2)):
        raise InputError(f"{what}: landmarks must have shape (T, 68, 2), got {lm.shape}")
    return EvalClip(kp, lf, lm)


# ============================================================================================ offset search
def offset_search(e_x: torch.Tensor, e_a: torch.Tensor, max_shift: int = DEFAULT_MAX_SHIFT) -> dict:
    """SyncNet-style AV offset and confidence from one level's window embeddings.

    Args:
        e_x, e_a: ``(P, D)`` keypoint / audio window embeddings of one clip (window p starts at level
            frame p).
        max_shift: largest ``|d|`` searched, level frames; reduced to ``(P - 1) // 3``.

    Returns:
        ``{"offset": d*, "conf": median - min, "dists": [dist(-S) .. dist(S)], "max_shift": S}``
        (offset in level frames, distances in embedding units). ``S = 0`` gives offset 0, conf 0.
    """
    p = e_x.shape[0]
    s = int(max(0, min(max_shift, (p - 1) // 3)))
    shifts = torch.arange(-s, s + 1)
    t = torch.arange(s, p - s)
    d = torch.stack([(e_x[t] - e_a[t + k]).norm(dim=-1).mean() for k in shifts.tolist()]).double()
    best = min(range(len(shifts)), key=lambda i: (float(d[i]), abs(int(shifts[i]))))  # ties -> smallest |d|
    conf = float(d.median() - d[best]) if len(d) > 1 else 0.0
    return {"offset": int(shifts[best]), "conf": conf, "dists": [float(v) for v in d], "max_shift": s}


@torch.no_grad()
def av_sync_clip(syncers: SyncerPyramid, keypoints: np.ndarray | torch.Tensor, logfbank: np.ndarray | torch.Tensor,
                 *, max_shift: int = DEFAULT_MAX_SHIFT) -> dict[str, dict | None]:
    """|AV-Off| and AV-Conf of one clip at every pyramid level.

    Args:
        keypoints: ``(T, K, d)`` in the syncers' space (FOMM: ``(T, 10, 6)``); logfbank: ``(M, 26)``; the clip is cut to ``min(T, M // 4)``
            frames, then to a multiple of ``2**(levels-1)``.

    Returns:
        ``{"200ms": {"offset_frames", "abs_offset_frames", "offset_level_frames", "conf", "max_shift"},
        ...}`` with offsets in 25-fps frames; ``None`` for levels where the clip has too few windows
        (fewer than 4) to search any offset.
    """
    dev = next(syncers.parameters()).device
    kp = torch.as_tensor(np.asarray(keypoints, dtype=np.float32))
    lf = torch.as_tensor(np.asarray(logfbank, dtype=np.float32))
    n = min(kp.shape[0], lf.shape[0] // LOGFBANK_PER_VIDEO_FRAME)
    n = pyramid_frames(n, syncers.levels)
    out: dict[str, dict | None] = {level_name(l): None for l in range(syncers.levels)}
    if n < 1:
        return out
    kp, lf = kp[None, :n].to(dev), lf[None, :n * LOGFBANK_PER_VIDEO_FRAME].to(dev)
    levels = syncers.pyramid(kp, lf, partial=True)
    was_training = syncers.training
    syncers.eval()
    for l, (k, a) in enumerate(levels):
        if k.shape[1] < WINDOW_FRAMES + 1:
            continue
        e_x, e_a = syncers.embed_level(l, k, a)
        r = offset_search(e_x[0].float().cpu(), e_a[0].float().cpu(), max_shift)
        if r["max_shift"] < 1:
            continue  # too few windows to search any offset
        off = r["offset"] * 2 ** l
        out[level_name(l)] = {"offset_frames": int(off), "abs_offset_frames": int(abs(off)),
                              "offset_level_frames": r["offset"], "conf": r["conf"], "max_shift": r["max_shift"]}
    syncers.train(was_training)
    return out


def av_sync_clips(syncers: SyncerPyramid, keypoints: Sequence[np.ndarray], logfbanks: Sequence[np.ndarray], *,
                  max_shift: int = DEFAULT_MAX_SHIFT) -> dict[str, dict]:
    """Mean |AV-Off| (25-fps frames), signed offset and AV-Conf over clips, per level.

    Returns:
        ``{"200ms": {"abs_offset_frames", "abs_offset_ms", "offset_frames", "conf", "clips"}, ...}``;
        values are ``None`` at a level no clip is long enough for.
    """
    per_level: dict[str, list[dict]] = {level_name(l): [] for l in range(syncers.levels)}
    for kp, lf in zip(keypoints, logfbanks):
        for name, r in av_sync_clip(syncers, kp, lf, max_shift=max_shift).items():
            if r is not None:
                per_level[name].append(r)
    out = {}
    for name, rs in per_level.items():
        if rs:
            abs_off = float(np.mean([r["abs_offset_frames"] for r in rs]))
            out[name] = {"abs_offset_frames": abs_off, "abs_offset_ms": abs_off * 1000.0 / FPS,
                         "offset_frames": float(np.mean([r["offset_frames"] for r in rs])),
                         "conf": float(np.mean([r["conf"] for r in rs])), "clips": len(rs)}
        else:
            out[name] = {"abs_offset_frames": None, "abs_offset_ms": None, "offset_frames": None, "conf": None,
                         "clips": 0}
    return out


# ============================================================================================ LMD
def lmd(generated: np.ndarray, ground_truth: np.ndarray) -> float:
    """Landmark distance: mean Euclidean distance (pixels) between ``(T, 68, 2)`` landmark sequences
    over frames and points; both are cut to the shorter length.

    Raises:
        InputError: shapes other than ``(T, 68, 2)`` or no common frame.
    """
    g, t = np.asarray(generated, dtype=np.float64), np.asarray(ground_truth, dtype=np.float64)
    if g.ndim != 3 or t.ndim != 3 or g.shape[1:] != (68, 2) or t.shape[1:] != (68, 2):
        raise InputError(f"LMD needs (T, 68, 2) landmarks, got {g.shape} and {t.shape}")
    n = min(len(g), len(t))
    if n == 0:
        raise InputError("LMD: empty landmark sequence")
    return float(np.linalg.norm(g[:n] - t[:n], axis=-1).mean())


# ============================================================================================ the table
def evaluate(generated: Sequence[Any], ground_truth: Sequence[Any], syncers: SyncerPyramid, *,
             max_shift: int = DEFAULT_MAX_SHIFT, references: bool = True) -> dict:
    """The multi-scale AV synchrony table (and LMD) of generated keypoint sequences.

    Args:
        generated: per clip, an :class:`EvalClip`, a mapping with ``keypoints`` (and optionally
            ``landmarks``), or a bare ``(T, K, d)`` array.
        ground_truth: per clip (same order), an :class:`EvalClip`/mapping with ``keypoints``,
            ``logfbank`` and optionally ``landmarks``; its speech scores both rows.
        syncers: the *metric* syncer pyramid (trained separately from any loss syncer).
        max_shift: offset search range per level, in level frames.
        references: also compute the ``ground_truth`` and ``static`` rows.

    Returns:
        ``{"levels": ["200ms", ...], "max_shift": 15, "num_clips": n, "rows": {"generated": row,
        "ground_truth": row, "static": row}}`` with ``row = {"200ms": {"abs_offset_frames",
        "abs_offset_ms", "offset_frames", "conf", "clips"}, ..., "lmd_px": float | None}``.
        Every value is a plain float/int/str/None (``json.dumps`` works).

    Raises:
        InputError: different numbers of clips, bad shapes (keypoints of another space than the syncers'),
            a ground-truth clip without logfbank.
    """
    if len(generated) != len(ground_truth):
        raise InputError(f"{len(generated)} generated clips but {len(ground_truth)} ground-truth clips")
    if not len(generated):
        raise InputError("nothing to evaluate")
    gens = [_as_clip(g, f"generated[{i}]", syncers.space) for i, g in enumerate(generated)]
    gts = [_as_clip(g, f"ground_truth[{i}]", syncers.space) for i, g in enumerate(ground_truth)]
    for i, g in enumerate(gts):
        if g.logfbank is None:
            raise InputError(f"ground_truth[{i}] has no logfbank (the speech to score against)")
    rows_kp = {"generated": [g.keypoints for g in gens]}
    rows_lm = {"generated": [(g.landmarks, t.landmarks) for g, t in zip(gens, gts)]}
    if references:
        rows_kp["ground_truth"] = [t.keypoints for t in gts]
        rows_kp["static"] = [np.repeat(t.keypoints[:1], len(t.keypoints), axis=0) for t in gts]
        rows_lm["ground_truth"] = [(t.landmarks, t.landmarks) for t in gts]
        rows_lm["static"] = [(None if t.landmarks is None else np.repeat(t.landmarks[:1], len(t.landmarks), axis=0),
                              t.landmarks) for t in gts]
    rows = {}
    for name, kps in rows_kp.items():
        row: dict[str, Any] = av_sync_clips(syncers, kps, [t.logfbank for t in gts], max_shift=max_shift)
        pairs = [(a, b) for a, b in rows_lm[name] if a is not None and b is not None]
        row["lmd_px"] = float(np.mean([lmd(a, b) for a, b in pairs])) if pairs else None
        rows[name] = row
    return {"levels": [level_name(l) for l in range(syncers.levels)], "max_shift": int(max_shift),
            "num_clips": len(gens), "rows": rows}


def syncnet_rows(model, videos: Mapping[str, Sequence[Optional[Path]]], *, detect: Callable[[np.ndarray], np.ndarray],
                 progress: Optional[Progress] = None,
                 on_video: Optional[Callable[[VideoScore], None]] = None) -> dict[str, Optional[dict]]:
    """SyncNet scores (LSE-C, LSE-D, AV offset) of each row's videos, for :func:`evaluate`'s table.

    Args:
        model: a loaded SyncNet (:func:`talkhead.score.load_scorer`) or any embedding model.
        videos: per row name (``"generated"``, ``"ground_truth"``), one video path per clip, or
            ``None`` for a clip with no video to score (not counted).
        detect: ``frame -> (k, 4)`` face boxes (:func:`talkhead.facetrack.face_detector`).
        progress: ``progress(stage, done, total)`` for each video's stages.
        on_video: called with each :class:`talkhead.score.VideoScore` as it is done (a video that
            cannot be scored has its one-line ``error`` and the others are still scored).

    Returns:
        Per row, :func:`talkhead.score.summary` of its videos (``videos``, ``scored``, ``failed``,
        ``lse_c``, ``lse_d``, ``offset_frames``, ``abs_offset_frames``; offsets in 25-fps frames,
        positive = the audio is late), or ``None`` when the row has no video at all.
    """
    out: dict[str, Optional[dict]] = {}
    for name, paths in videos.items():
        todo = [Path(p) for p in paths if p is not None]
        out[name] = summary(score_videos(model, todo, detect=detect, progress=progress, on_video=on_video)) \
            if todo else None
    return out


def format_table(result: Mapping) -> str:
    """Plain-text table of an :func:`evaluate` result: one line per row, |AV-Off| (frames) and
    AV-Conf per level, then LMD (pixels); then, when a row has SyncNet scores (``row["lse"]``, see
    :func:`syncnet_rows`), LSE-C, LSE-D and SyncNet's mean signed AV offset (25-fps frames)."""
    levels = list(result["levels"])
    lse = any(row.get("lse") for row in result["rows"].values())
    head = f"{'':<14}" + "".join(f"{'|Off| ' + l:>16}{'Conf ' + l:>14}" for l in levels) + f"{'LMD px':>10}"
    if lse:
        head += f"{'LSE-C':>9}{'LSE-D':>9}{'SyncNet Off':>13}"
    lines = [head]
    for name, row in result["rows"].items():
        cells = []
        for l in levels:
            r = row[l]
            off = "-" if r["abs_offset_frames"] is None else f"{r['abs_offset_frames']:.2f}"
            conf = "-" if r["conf"] is None else f"{r['conf']:.3f}"
            cells.append(f"{off:>16}{conf:>14}")
        lm = "-" if row.get("lmd_px") is None or (isinstance(row["lmd_px"], float) and math.isnan(row["lmd_px"])) \
            else f"{row['lmd_px']:.2f}"
        line = f"{name:<14}" + "".join(cells) + f"{lm:>10}"
        if lse:
            sc = row.get("lse") or {}
            if sc.get("lse_c") is None:
                line += f"{'-':>9}{'-':>9}{'-':>13}"
            else:
                line += f"{sc['lse_c']:>9.3f}{sc['lse_d']:>9.3f}{sc['offset_frames']:>+13.2f}"
        lines.append(line)
    return "\n".join(lines)
