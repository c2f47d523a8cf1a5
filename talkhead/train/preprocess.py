"""Talking-head videos -> MS-Sync training data (keypoints + logfbank per clip).

This is the paper's VoxCeleb2 (II) preparation: every video is turned into the keypoint sequence of
its face and the logfbank of its speech, written in the training data format of
:mod:`talkhead.train.data` (``manifest.json`` + ``clips/<id>.npz`` holding ``keypoints (T, K, 6)``
and ``logfbank (M, 26)``). The keypoints are those of the renderer ``options.renderer`` (its detector):
FOMM's 10 (the released MS-Sync's space, the default) or SMAC's 15 (``--renderer smac``, its motion
estimator's keypoint detector); the manifest records which (:func:`talkhead.train.data.read_data_space`),
and a data folder holds one space only. Per video:

1. **Audio**: the container's first audio stream decoded to 16 kHz mono with
   :func:`talkhead.audio.load_speech`, then :func:`talkhead.audio.logfbank` - the very features
   inference feeds MS-Sync (100 rows per second).
2. **Face track** (``crop="auto"``): frames sampled every ``detect_every_s`` seconds (at most
   ``max_detections``, spread over the clip) go through :func:`talkhead.landmarks.detect_faces` (which
   detects on a copy downscaled like FOMM's ``crop-video.py``). As for a still photo, only confident
   faces count (:func:`talkhead.landmarks.is_confident`) and a face's box is its detector box joined with
   its 68 landmarks (:func:`talkhead.crop.face_extent`). Boxes are grouped into tracks by IoU with
   each track's first box (> 0.25, ``crop-video.py``'s ``iou_with_initial``); the track seen in most
   sampled frames is the speaker (ties: the larger face). If fewer than ``min_face_fraction`` of the
   sampled frames show that face, the clip is skipped.
3. **Fixed crop** (:func:`fixed_crop_box`): the union of the track's boxes (``crop-video.py``'s
   "tube" ``join``), grown by the FOMM rule (``compute_bbox`` with ``increase_area = 0.1``: a square
   of side ``(1 + 2 * 0.1) * max(w, h)`` centred on the union), then moved - not cut - to lie inside
   the frame (side capped at ``min(H, W)``): :func:`talkhead.crop.fomm_square_box`, the inference
   crop rule, applied to the union. The *same* box is used for every frame, so the head's motion
   within the clip is kept in the keypoints. ``crop="none"``: the video is already a face crop;
   whole frames are resized.
4. **Frames**: ffmpeg resamples to 25 fps (``fps=25`` filter: nearest source frame), crops and
   resizes to the renderer's frame size (256 for both) (as ``crop-video.py``'s ffmpeg ``crop,scale`` does, here with the
   anti-aliasing ``area`` scaler); only ``batch_size`` small frames are in memory at a time.
5. **Keypoints**: the renderer's ``detect`` (:meth:`talkhead.fomm.FOMM.detect`,
   :meth:`talkhead.smac.SMAC.detect`) in batches -> ``[x, y, j00, j01, j10, j11]`` per keypoint (value
   in the crop's [-1, 1] keypoint grid, jacobian row-major): ``(T, K, 6)`` at 25 fps.
6. **Alignment**: ``U = min(T, M // 4)`` frames are kept, with logfbank rows ``0 .. 4U - 1`` (frame
   ``t`` <-> rows ``4t .. 4t+3``, see :mod:`talkhead.train.data`).

Clips without a face, without (decodable) audio, shorter than ``min_frames`` or whose audio and
video durations differ by more than ``max_av_mismatch_frames`` are skipped with a reason, never
fatal. They are remembered in ``OUT_DIR/preprocess-skipped.json`` so a resumed run does not retry
them (``retry_skipped=True`` does).

**Resuming**: a clip already in ``OUT_DIR``'s manifest is not redone. The manifest is flushed
every ``flush_every`` clips and on exit (also on Ctrl-C), so an interrupted run loses at most that
many clips of work.

**Sharding**: ``shard=(i, n)`` keeps the inputs whose position in the clip-id-sorted list is
``i`` modulo ``n`` - a deterministic, disjoint split that does not depend on the order the videos
were given. Each shard writes its own data directory (e.g. ``data/shard-0``, ``data/shard-1`` on
different machines or GPUs); :func:`merge_shards` joins them into one. Every shard must be given
the same list of videos (and ``root``), because clip ids are derived from the whole list.

**Clip ids** (:func:`clip_ids`): the video's path relative to ``root`` without its extension,
folders joined by ``_``, any run of characters outside ``[A-Za-z0-9._-]`` replaced by ``-``
(VoxCeleb2 ``dev/mp4/id00012/21Uxsk56VDQ/00001.mp4`` with ``root=dev/mp4`` ->
``id00012_21Uxsk56VDQ_00001``). Ids that would collide (case-insensitively, for case-insensitive
file systems) get ``-<8 hex of sha1(relative path)>`` appended.
"""
from __future__ import annotations

import filecmp
import hashlib
import json
import math
import os
import re
import shutil
import time
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ..constants import FPS, LOGFBANK_PER_VIDEO_FRAME
from ..errors import ConfigError, FFmpegError, InputError, TalkheadError
from ..devices import resolve_device
from ..facetrack import face_detector, face_track, fixed_crop_box, sample_faces  # noqa: F401 (face_track, fixed_crop_box: public here too)
from ..ffmpeg import read_frames
from ..keypoints import FOMM_SPACE, KeypointSpace
from ..options import PreprocessOptions
from ..progress import Progress
from .data import (DATA_MANIFEST_NAME, ClipInfo, DataFormatError, DatasetWriter, clip_path, require_same_space,
                   read_data, write_manifest)

__all__ = [
    "VIDEO_EXTS", "SKIPPED_NAME", "ID_PATTERN", "VideoJob", "ClipOutcome", "PreprocessReport",
    "preprocess", "plan_jobs", "list_videos", "clip_ids", "shard_jobs", "fixed_crop_box", "face_track",
    "merge_shards", "read_skipped",
]

VIDEO_EXTS = (".mp4", ".mkv", ".avi", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".ts")
"""File extensions (lower case) picked up when a folder is given to :func:`preprocess`."""
SKIPPED_NAME = "preprocess-skipped.json"
"""Sidecar in the output directory: ``{"clips": {id: {"source", "reason"}}}`` of skipped videos."""

PROGRESS_STAGES = ("videos", "frames")
"""Stages of preprocess's :data:`talkhead.progress.Progress` calls: ``"videos"`` (videos of this shard
handled) and ``"frames"`` (frames of the current video through the keypoint detector; ``total`` is
estimated from the container's duration)."""

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
"""What every clip id matches (the file-safe rule of :mod:`talkhead.train.data`)."""
_MAX_ID = 180


class _Skip(Exception):
    """Internal: this video is skipped for ``reason`` (never leaves this module)."""


# ============================================================================== inputs, ids, shards
@dataclass(frozen=True)
class VideoJob:
    """One input video and the clip id it is stored under."""

    path: Path
    clip_id: str


def list_videos(videos: Sequence[str | os.PathLike] | str | os.PathLike) -> tuple[list[Path], Path]:
    """Expand folders to the video files they contain (recursively) and find the id root.

    Args:
        videos: video files and/or folders. A folder contributes every file below it whose extension
            is in :data:`VIDEO_EXTS` (hidden files and folders excepted).

    Returns:
        ``(files, root)``: absolute paths, duplicates removed, in sorted order; ``root`` is the
        deepest folder holding every given argument (a folder argument counts as itself, a file as
        its parent folder), from which :func:`clip_ids` derives ids.

    Raises:
        InputError: a path that does not exist, or no video file at all. (A file given by name is
            taken whatever its extension: ffmpeg decides whether it is a video.)
    """
    if isinstance(videos, (str, os.PathLike)):
        videos = [videos]
    files: dict[str, Path] = {}
    anchors: list[str] = []
    for item in videos:
        p = Path(os.path.abspath(Path(item).expanduser()))
        if p.is_dir():
            anchors.append(str(p))
            for dirpath, dirnames, filenames in os.walk(p):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for name in filenames:
                    if not name.startswith(".") and Path(name).suffix.lower() in VIDEO_EXTS:
                        f = Path(dirpath) / name
                        files[str(f)] = f
        elif p.is_file():
            anchors.append(str(p.parent))
            files[str(p)] = p
        else:
            raise InputError(f"video input {str(item)!r} does not exist")
    if not files:
        raise InputError(f"no video files ({', '.join(VIDEO_EXTS)}) in {[str(v) for v in videos]}")
    root = Path(os.path.commonpath(anchors))
    return [files[k] for k in sorted(files)], root


def _sanitize(part: str) -> str:
    """One path component -> ``[A-Za-z0-9._-]`` (accents dropped, other runs -> ``-``, ends trimmed)."""
    part = unicodedata.normalize("NFKD", part).encode("ascii", "ignore").decode()
    return _UNSAFE.sub("-", part).strip("-._")


def clip_ids(paths: Sequence[str | os.PathLike], root: str | os.PathLike) -> list[str]:
    """File-safe, unique clip ids for ``paths`` (same order); see the module docstring for the rule.

    Args:
        paths: video files.
        root: folder the ids are relative to (paths outside it use their absolute path).

    Returns:
        Ids matching :data:`ID_PATTERN` (at most 189 characters), unique even when compared
        case-insensitively. Deterministic: a function of the set of paths and ``root``.
    """
    root = Path(os.path.abspath(root))
    rels = []
    for p in paths:
        p = Path(os.path.abspath(p))
        try:
            rel = p.relative_to(root)
        except ValueError:
            rel = Path(*p.parts[1:])
        rels.append(rel)
    base = []
    for rel in rels:
        parts = [q for q in map(_sanitize, rel.with_suffix("").parts) if q]
        base.append(("_".join(parts) or "clip")[:_MAX_ID])
    counts: dict[str, int] = {}
    for b in base:
        counts[b.lower()] = counts.get(b.lower(), 0) + 1
    ids = []
    for b, rel in zip(base, rels):
        if counts[b.lower()] > 1:
            b = f"{b}-{hashlib.sha1(rel.as_posix().encode()).hexdigest()[:8]}"
        ids.append(b)
    if len({i.lower() for i in ids}) != len(ids):  # astronomically unlikely: identical relative paths
        raise InputError("the same video is listed twice under different spellings; give each once")
    return ids


def shard_jobs(jobs: Sequence[VideoJob], shard: tuple[int, int]) -> list[VideoJob]:
    """Shard ``(i, n)`` of ``jobs``: positions ``p`` of the id-sorted list with ``p % n == i``.

    The shards ``(0, n) .. (n-1, n)`` are disjoint, cover every job, differ in size by at most one,
    and do not depend on the order of ``jobs``.

    Raises:
        ValueError: ``n < 1`` or ``i`` outside ``[0, n)``.
    """
    index, count = (int(shard[0]), int(shard[1]))
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard must be (i, n) with 0 <= i < n, got {tuple(shard)}")
    ordered = sorted(jobs, key=lambda j: j.clip_id)
    return [j for p, j in enumerate(ordered) if p % count == index]


def plan_jobs(videos: Sequence[str | os.PathLike] | str | os.PathLike, *, root: str | os.PathLike | None = None,
              shard: tuple[int, int] = (0, 1)) -> list[VideoJob]:
    """The jobs :func:`preprocess` would run: :func:`list_videos` -> :func:`clip_ids` -> :func:`shard_jobs`.

    Args:
        videos: files and/or folders. root: id root (default: from :func:`list_videos`).
        shard: ``(i, n)``.

    Returns:
        This shard's jobs, sorted by clip id.
    """
    files, auto_root = list_videos(videos)
    ids = clip_ids(files, root if root is not None else auto_root)
    return shard_jobs([VideoJob(f, i) for f, i in zip(files, ids)], shard)


# ============================================================================== report
@dataclass
class ClipOutcome:
    """What happened to one video.

    Attributes:
        clip_id: id in the data directory. source: the video path.
        status: ``"done"`` (written now), ``"resumed"`` (already in the manifest: not redone) or
            ``"skipped"`` (see ``reason``; also for videos skipped by an earlier run).
        reason: why a video was skipped (empty otherwise).
        num_frames: ``T`` frames at 25 fps written (0 unless done).
        num_logfbank_frames: ``M`` logfbank rows written.
        crop_box: the fixed ``(x0, y0, x1, y1)`` crop, full-resolution pixels (``None`` for ``crop="none"``
            or when not computed).
        seconds: wall time spent on the video.
    """

    clip_id: str
    source: str
    status: str
    reason: str = ""
    num_frames: int = 0
    num_logfbank_frames: int = 0
    crop_box: Optional[tuple[int, int, int, int]] = None
    seconds: float = 0.0


@dataclass
class PreprocessReport:
    """Result of :func:`preprocess`: one :class:`ClipOutcome` per video of the shard, in id order."""

    out_dir: Path
    shard: tuple[int, int]
    outcomes: list[ClipOutcome] = field(default_factory=list)

    def _with(self, status: str) -> list[ClipOutcome]:
        return [o for o in self.outcomes if o.status == status]

    @property
    def done(self) -> list[ClipOutcome]:
        """Clips written by this run."""
        return self._with("done")

    @property
    def resumed(self) -> list[ClipOutcome]:
        """Clips found in the manifest and left alone."""
        return self._with("resumed")

    @property
    def skipped(self) -> list[ClipOutcome]:
        """Videos skipped (now or by an earlier run), each with a reason."""
        return self._with("skipped")

    def summary(self) -> str:
        """One line: counts per status and seconds of keypoints written."""
        secs = sum(o.num_frames for o in self.done) / FPS
        return (f"shard {self.shard[0]}/{self.shard[1]}: {len(self.done)} done ({secs:.1f} s of video), "
                f"{len(self.resumed)} already done, {len(self.skipped)} skipped -> {self.out_dir}")

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {"out_dir": str(self.out_dir), "shard": list(self.shard),
                "outcomes": [asdict(o) for o in self.outcomes]}


def read_skipped(out_dir: str | os.PathLike) -> dict[str, dict]:
    """``{clip_id: {"source", "reason"}}`` from ``OUT_DIR/preprocess-skipped.json`` (empty if absent).

    Raises:
        DataFormatError: the file exists but is not valid JSON of that shape.
    """
    path = Path(out_dir) / SKIPPED_NAME
    if not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text())
        clips = doc["clips"]
        if not isinstance(clips, dict):
            raise TypeError("'clips' is not an object")
        return {str(k): {"source": str(v.get("source", "")), "reason": str(v.get("reason", ""))}
                for k, v in clips.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataFormatError(f"unreadable {path}: {exc}") from None


def _write_skipped(out_dir: Path, skipped: dict[str, dict]) -> None:
    from ..io import atomic_output

    text = json.dumps({"clips": dict(sorted(skipped.items()))}, indent=1)
    with atomic_output(out_dir / SKIPPED_NAME, overwrite=True) as tmp:
        Path(tmp).write_text(text)


# ============================================================================== the work
def _detect_crop(path: Path, detect, *, detect_every_s: float, max_detections: int, min_face_fraction: float
                 ) -> tuple[int, int, int, int]:
    """Sample frames, track the speaker's face, return the fixed crop box (see module docstring)."""
    detections, (height, width), _ = sample_faces(path, detect, every_s=detect_every_s,
                                                  max_detections=max_detections)
    if not detections:
        raise _Skip("no video frames decoded")
    boxes, seen = face_track(detections)
    if seen == 0:
        raise _Skip(f"no face found in {len(detections)} sampled frames")
    if seen < min_face_fraction * len(detections):
        raise _Skip(f"face found in only {seen} of {len(detections)} sampled frames "
                    f"(< {min_face_fraction:.0%})")
    return fixed_crop_box(boxes, (height, width))


def _keypoints(path: Path, fomm, vf: str, size: int, batch_size: int, est_frames: int,
               progress: Optional[Progress], space: KeypointSpace) -> np.ndarray:
    """Stream the filtered 25-fps frames through the renderer's ``detect`` -> ``(T, K, 6)`` float32."""
    _, frames = read_frames(path, vf, (size, size))
    out: list[np.ndarray] = []
    batch: list[np.ndarray] = []
    count = 0

    def run(batch):
        x = torch.from_numpy(np.stack(batch)).to(fomm.device).permute(0, 3, 1, 2).to(fomm.dtype).div_(255.0)
        out.append(fomm.detect(x).pack().float().cpu().numpy())

    try:
        for frame in frames:
            batch.append(frame)
            if len(batch) == batch_size:
                run(batch)
                count += len(batch)
                batch = []
                if progress:
                    progress("frames", count, max(count, est_frames))
        if batch:
            run(batch)
            count += len(batch)
            if progress:
                progress("frames", count, max(count, est_frames))
    finally:
        frames.close()
    if not out:
        return np.zeros((0, space.num_kp, space.kp_dim), np.float32)
    return np.concatenate(out).astype(np.float32)


def _resolve_renderer(renderer, fomm_config, fomm_checkpoint, options: PreprocessOptions, device: str):
    """The renderer whose detector makes the keypoints: the one given, FOMM from the two files, or
    ``options.renderer`` loaded from the models folder (through the store: checked, recorded)."""
    if renderer is not None:
        return renderer
    if (fomm_config is None) != (fomm_checkpoint is None):
        raise ConfigError("give both fomm_config and fomm_checkpoint, or neither (then models_dir is used)")
    if fomm_config is not None and options.renderer != "fomm":
        raise ConfigError(f"fomm_config/fomm_checkpoint given, but the renderer is {options.renderer!r}")
    if fomm_config is None and options.renderer != "fomm":
        from ..renderers import get_renderer
        from ..store import ensure_models

        entry = get_renderer(options.renderer)
        root = ensure_models(options.models_dir, names=entry.store_names, offline=options.offline)
        return entry.load(root, torch.device(device), options)
    from ..fomm import load_fomm

    models_dir, offline = options.models_dir, options.offline
    if fomm_config is None:
        from ..store import ensure_models, model_file

        root = ensure_models(models_dir, offline=offline)
        fomm_config, fomm_checkpoint = model_file(root, "fomm", "config"), model_file(root, "fomm", "checkpoint")
    return load_fomm(fomm_config, fomm_checkpoint, device=device)


def preprocess(videos: Sequence[str | os.PathLike] | str | os.PathLike, out_dir: str | os.PathLike,
               options: PreprocessOptions = PreprocessOptions(), *, fomm=None, renderer=None,
               fomm_config: str | os.PathLike | None = None, fomm_checkpoint: str | os.PathLike | None = None,
               landmarker: Optional[Callable[[np.ndarray], Sequence]] = None, root: str | os.PathLike | None = None,
               progress: Optional[Progress] = None,
               on_clip: Optional[Callable[[ClipOutcome], None]] = None) -> PreprocessReport:
    """Turn talking-head videos into MS-Sync training clips in ``out_dir`` (see the module docstring).

    Args:
        videos: video files (mp4, mkv, avi, webm, ... any fps; anything ffmpeg decodes) and/or folders
            (searched recursively for :data:`VIDEO_EXTS`).
        out_dir: the data directory (created; an existing one is resumed).
        options: the run's :class:`~talkhead.options.PreprocessOptions` (renderer, landmark backend,
            crop, shard, split, thresholds, device, models folder; the CLI builds it from its flags).
        fomm, renderer: a loaded renderer of ``options.renderer``'s kind (:class:`talkhead.fomm.FOMM`,
            :class:`talkhead.smac.SMAC`; ``fomm`` is the older name of the same argument): its keypoint
            detector is used, on its device. Otherwise, for FOMM, ``fomm_config`` + ``fomm_checkpoint``
            (official YAML + ``vox-adv-cpk.pth.tar``) are loaded, or else the renderer's files in the models
            folder (``options.models_dir``, ``options.offline``) through ``talkhead.store``.
        landmarker: a callable ``image (H, W, 3) uint8 -> faces`` (:class:`talkhead.landmarks.Face`
            objects, or plain ``(x0, y0, x1, y1)`` boxes, which are used as they are) replacing the
            ``options.landmarker`` backend.
        root: folder clip ids are relative to (default: see :func:`list_videos`).
        progress: ``progress(stage, done, total)`` callback (see :data:`PROGRESS_STAGES`).
        on_clip: called with each :class:`ClipOutcome` as soon as it is known.

    Returns:
        A :class:`PreprocessReport` (done / resumed / skipped, with reasons).

    Raises:
        InputError: a missing input path, or no videos at all.
        LandmarkerUnavailableError: the face backend cannot be loaded (checked before any video).
        ConfigError / CheckpointError: the renderer cannot be loaded, or gives keypoints of another count
            than its registry entry says.
        DataFormatError: an existing, malformed data directory, or one of another keypoint space (one line
            naming both spaces).
        Problems of single videos (no face, no audio, too short, undecodable) are never raised:
        they are reported as skipped, with the reason.
    """
    o = options
    crop, min_frames, max_av_mismatch_frames = o.crop, o.min_frames, o.max_av_mismatch_frames
    shard = o.shard_index
    jobs = plan_jobs(videos, root=root, shard=shard)
    out_dir = Path(out_dir)
    device = str(resolve_device(o.device))
    from ..renderers import get_renderer

    entry = get_renderer(o.renderer)
    space = entry.space
    if (out_dir / DATA_MANIFEST_NAME).is_file():  # refused before any model loads (DatasetWriter checks again)
        require_same_space(str(out_dir), read_data(out_dir)[1], space, f"--renderer {entry.name}'s")
    fomm = _resolve_renderer(renderer if renderer is not None else fomm, fomm_config, fomm_checkpoint, o, device)
    if int(getattr(fomm, "num_kp", space.num_kp)) != space.num_kp:
        raise ConfigError(f"the {entry.name} renderer detects {fomm.num_kp} keypoints, not the {space.num_kp} of "
                          f"its registry entry")
    size = int(fomm.frame_size)
    detect = None
    if crop == "auto":
        if landmarker is None:
            from ..landmarks import get_landmarker, resolve_landmarker

            backend, _ = resolve_landmarker(o.landmarker, offline=o.offline)
            get_landmarker(backend, device, offline=o.offline)  # fail fast (LandmarkerUnavailableError)
            landmarker = backend
        detect = face_detector(landmarker, device, o.min_score)
    from ..audio import load_speech, logfbank

    report = PreprocessReport(out_dir=out_dir, shard=shard)
    skipped = read_skipped(out_dir) if out_dir.is_dir() else {}

    def record(outcome: ClipOutcome) -> None:
        report.outcomes.append(outcome)
        if on_clip:
            on_clip(outcome)

    with DatasetWriter(out_dir, flush_every=o.flush_every, max_mismatch_frames=max_av_mismatch_frames,
                       space=space) as writer:
        for n, job in enumerate(jobs):
            if progress:
                progress("videos", n, len(jobs))
            src = str(job.path)
            if writer.has(job.clip_id):
                record(ClipOutcome(job.clip_id, src, "resumed"))
                continue
            if job.clip_id in skipped and not o.retry_skipped:
                record(ClipOutcome(job.clip_id, src, "skipped", f"(earlier run) {skipped[job.clip_id]['reason']}"))
                continue
            t0 = time.perf_counter()
            box = None
            try:
                try:
                    speech = load_speech(job.path)
                except TalkheadError as exc:
                    raise _Skip(f"no usable audio: {exc}") from None
                if speech.duration_s * FPS < min_frames:
                    raise _Skip(f"too few frames: audio lasts {speech.duration_s:.2f} s "
                                f"(< {min_frames} frames at {FPS} fps)")
                feats = logfbank(speech.samples, speech.sample_rate)
                if crop == "auto":
                    box = _detect_crop(job.path, detect, detect_every_s=o.detect_every_s,
                                       max_detections=o.max_detections, min_face_fraction=o.min_face_fraction)
                    side = box[2] - box[0]
                    vf = (f"fps={FPS},format=rgb24,crop={side}:{side}:{box[0]}:{box[1]},"
                          f"scale={size}:{size}:flags=area")
                else:
                    vf = f"fps={FPS},format=rgb24,scale={size}:{size}:flags=area"
                est = int(math.ceil(speech.duration_s * FPS))
                kp = _keypoints(job.path, fomm, vf, size, o.batch_size, est, progress, space)
                num_t, num_m = len(kp), len(feats)
                if abs(num_m / LOGFBANK_PER_VIDEO_FRAME - num_t) > max_av_mismatch_frames:
                    raise _Skip(f"audio ({num_m / 100:.2f} s) and video ({num_t / FPS:.2f} s) durations differ "
                                f"by more than {max_av_mismatch_frames} frames")
                usable = min(num_t, num_m // LOGFBANK_PER_VIDEO_FRAME)
                if usable < min_frames:
                    raise _Skip(f"too few frames: {usable} usable frames at {FPS} fps (< {min_frames})")
                info = writer.add(job.clip_id, kp[:usable], feats[:usable * LOGFBANK_PER_VIDEO_FRAME],
                                  source=src, split=o.split)
            except (_Skip, FFmpegError, DataFormatError) as exc:
                reason = str(exc) if isinstance(exc, _Skip) else f"{type(exc).__name__}: {exc}"
                skipped[job.clip_id] = {"source": src, "reason": reason}
                _write_skipped(out_dir, skipped)
                record(ClipOutcome(job.clip_id, src, "skipped", reason, crop_box=box,
                                   seconds=time.perf_counter() - t0))
                continue
            if skipped.pop(job.clip_id, None) is not None:
                _write_skipped(out_dir, skipped)
            record(ClipOutcome(job.clip_id, src, "done", num_frames=info.num_frames,
                               num_logfbank_frames=info.num_logfbank_frames, crop_box=box,
                               seconds=time.perf_counter() - t0))
        if progress:
            progress("videos", len(jobs), len(jobs))
    return report


# ============================================================================== merging shards
def merge_shards(shard_dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike, *,
                 link: bool = True) -> list[ClipInfo]:
    """Join the data directories written by separate shards into ``out_dir``.

    Clip files are hard-linked when possible (``link``; same file system), else copied, each
    atomically; the manifest of ``out_dir`` (kept if it exists) gains every shard's clips, and the
    skipped-video sidecars are merged too. Merging again is a no-op for clips already present with
    identical files.

    Args:
        shard_dirs: data directories (each with ``manifest.json``).
        out_dir: the merged data directory (created if needed).
        link: try ``os.link`` before copying.

    Returns:
        The merged manifest's records.

    Raises:
        DataFormatError: a shard without a manifest, a missing clip file, one id with different
            contents in two places, or folders of different keypoint spaces (one line naming both;
            checked before anything is linked or copied).
    """
    from ..io import atomic_output

    out_dir = Path(out_dir)
    merged: dict[str, ClipInfo] = {}
    space, space_of = None, None
    if (out_dir / DATA_MANIFEST_NAME).is_file():
        clips, space = read_data(out_dir)
        merged, space_of = {c.id: c for c in clips}, str(out_dir)
    shards = []
    for shard_dir in map(Path, shard_dirs):
        if out_dir.exists() and shard_dir.resolve() == out_dir.resolve():
            continue
        clips, shard_space = read_data(shard_dir)
        if space is None:
            space, space_of = shard_space, str(shard_dir)
        else:
            require_same_space(space_of, space, shard_space, str(shard_dir))
        shards.append((shard_dir, clips))
    out_dir.mkdir(parents=True, exist_ok=True)
    skipped = read_skipped(out_dir)
    for shard_dir, clips in shards:
        for clip in clips:
            src = clip_path(shard_dir, clip.id)
            dst = clip_path(out_dir, clip.id)
            if not src.is_file():
                raise DataFormatError(f"{shard_dir}: clip file {src} listed in the manifest is missing")
            if clip.id in merged or dst.exists():
                if dst.is_file() and (os.path.samefile(src, dst) or filecmp.cmp(src, dst, shallow=False)):
                    merged.setdefault(clip.id, clip)
                    continue
                raise DataFormatError(f"clip id {clip.id!r} of {shard_dir} already exists in {out_dir} "
                                      f"with different contents")
            dst.parent.mkdir(parents=True, exist_ok=True)
            with atomic_output(dst, overwrite=True) as tmp:
                tmp = Path(tmp)
                linked = False
                if link:
                    try:
                        tmp.unlink()
                        os.link(src, tmp)
                        linked = True
                    except OSError:
                        linked = False
                if not linked:
                    shutil.copyfile(src, tmp)
            merged[clip.id] = clip
        skipped.update({k: v for k, v in read_skipped(shard_dir).items() if k not in merged})
    for k in list(skipped):
        if k in merged:
            del skipped[k]
    write_manifest(out_dir, list(merged.values()), space if space is not None else FOMM_SPACE)
    if skipped:
        _write_skipped(out_dir, skipped)
    return list(merged.values())
