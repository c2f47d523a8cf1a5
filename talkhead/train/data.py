"""Training data format: a manifest of clips, one ``.npz`` per clip, and aligned windowed datasets.

Layout of a data directory ``DATA_DIR``::

    DATA_DIR/manifest.json       {"format": "talkhead-train-data", "version": 1, "fps": 25,
                                  "logfbank_hz": 100, "keypoint_space": "fomm", "num_kp": 10, "kp_dim": 6,
                                  "n_filt": 26,
                                  "clips": [{"id", "num_frames", "num_logfbank_frames", "source", "split"}, ...]}
    DATA_DIR/clips/<id>.npz      keypoints (T, K, 6) float32, logfbank (M, 26) float32

* **Keypoint space**: ``keypoint_space`` (the renderer whose detector made the keypoints: ``"fomm"``,
  ``"smac"``), ``num_kp`` (``K``: 10 for FOMM, 15 for SMAC) and ``kp_dim`` (6 with jacobians, 2 without)
  are one :class:`~talkhead.keypoints.KeypointSpace` (:func:`read_data_space`); every clip of a data
  directory is in it, and a writer, a merge or a trainer meeting another space refuses in one line.
  A manifest without ``keypoint_space`` (written before it existed) is FOMM's 10-keypoint space.
* ``keypoints[t, k] = [x, y, j00, j01, j10, j11]``: keypoint ``k`` of video frame ``t`` (25 fps),
  position in the keypoint grid's [-1, 1] coordinates and its 2x2 jacobian, row-major. This is the
  MS-Sync sequence layout (``KP_DIM = 6`` numbers per keypoint; ``[x, y]`` without jacobians).
* ``logfbank`` is exactly ``talkhead.audio.logfbank(samples, 16000)`` of the clip's speech (26 mel
  bands, 25 ms window, 10 ms hop: 100 rows per second), stored as float32.
* Alignment: video frame ``t`` (40 ms) covers logfbank rows ``4t .. 4t+3``. Real recordings give
  ``M`` within a couple of rows of ``4T``; :func:`usable_frames` is the number of frames that have all
  four rows, ``min(T, M // 4)``, and every dataset below only uses those.
* ``split`` is a free string; the trainers use ``"train"`` and ``"val"`` (``"test"`` is kept aside).

Writers are atomic (temporary file + ``os.replace``): a crash never leaves a half-written clip or
manifest. :class:`DatasetWriter` reopens an existing directory and appends, so preprocessing can be
resumed; the manifest is rewritten after every ``flush_every`` clips and on close.

Datasets return aligned segments ``(keypoints (F, K, 6), logfbank (4F, 26))`` as float32 tensors.
:func:`shard_indices` and :class:`StepBatchSampler` give DistributedSampler-style deterministic
sharding by ``(rank, world_size)``; the batch of a given optimisation step is a pure function of
``(seed, step, rank, world_size)``, which is what makes resumed training bit-identical.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..constants import FPS, LOGFBANK_HZ, LOGFBANK_PER_VIDEO_FRAME, N_FILT
from ..errors import InputError
from ..io import atomic_write
from ..keypoints import FOMM_SPACE, KeypointSpace

FORMAT_NAME = "talkhead-train-data"
FORMAT_VERSION = 1
DATA_MANIFEST_NAME = "manifest.json"
"""The data directory's clip list (not the checkpoint store's record, ``talkhead.store.STORE_MANIFEST_NAME``)."""
CLIPS_DIRNAME = "clips"
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


class DataFormatError(InputError):
    """A training data directory, manifest or clip file is missing, malformed or inconsistent."""


# --------------------------------------------------------------------------------------- records
@dataclass(frozen=True)
class ClipInfo:
    """One manifest entry.

    Attributes:
        id: file-safe identifier (``[A-Za-z0-9._-]``, first char alphanumeric); the clip is ``clips/<id>.npz``.
        num_frames: ``T``, video frames at 25 fps.
        num_logfbank_frames: ``M``, logfbank rows at 100 Hz.
        source: where the clip came from (video path, URL, ``"synthetic"``), informative only.
        split: ``"train"``, ``"val"``, ``"test"`` or any other label.
    """

    id: str
    num_frames: int
    num_logfbank_frames: int
    source: str = ""
    split: str = "train"

    @property
    def usable_frames(self) -> int:
        """Frames that have their four logfbank rows: ``min(T, M // 4)``."""
        return usable_frames(self.num_frames, self.num_logfbank_frames)


def usable_frames(num_frames: int, num_logfbank_frames: int) -> int:
    """``min(T, M // 4)``: video frames (25 fps) whose logfbank rows ``4t..4t+3`` all exist."""
    return int(min(num_frames, num_logfbank_frames // LOGFBANK_PER_VIDEO_FRAME))


def check_clip_arrays(keypoints: np.ndarray, logfbank: np.ndarray, *, max_mismatch_frames: float | None = 2,
                      what: str = "clip", space: KeypointSpace = FOMM_SPACE) -> tuple[np.ndarray, np.ndarray]:
    """Validate one clip's arrays and return them as contiguous float32.

    Args:
        keypoints: ``(T, K, d)`` keypoints (+ jacobians) per 25-fps frame, ``K = space.num_kp``,
            ``d = space.kp_dim`` (FOMM: ``(T, 10, 6)``).
        logfbank: ``(M, 26)`` logfbank rows at 100 Hz.
        max_mismatch_frames: largest allowed ``|M / 4 - T|`` in video frames (audio and video
            durations of one clip must agree to within this many 40 ms frames).
        what: name used in error messages.
        space: the data directory's keypoint space.

    Raises:
        DataFormatError: wrong rank/shape, non-finite values, empty clip, or audio/video durations
            that disagree by more than ``max_mismatch_frames``.
    """
    kp = np.asarray(keypoints)
    lf = np.asarray(logfbank)
    if kp.ndim != 3 or kp.shape[1:] != (space.num_kp, space.kp_dim):
        raise DataFormatError(f"{what}: keypoints must have shape (T, {space.num_kp}, {space.kp_dim}) "
                              f"({space.describe()}), got {kp.shape}")
    if lf.ndim != 2 or lf.shape[1] != N_FILT:
        raise DataFormatError(f"{what}: logfbank must have shape (M, {N_FILT}), got {lf.shape}")
    if kp.shape[0] == 0 or lf.shape[0] < LOGFBANK_PER_VIDEO_FRAME:
        raise DataFormatError(f"{what}: empty clip (T={kp.shape[0]}, M={lf.shape[0]})")
    if not (np.all(np.isfinite(kp)) and np.all(np.isfinite(lf))):
        raise DataFormatError(f"{what}: keypoints or logfbank contain NaN/inf")
    mismatch = abs(lf.shape[0] / LOGFBANK_PER_VIDEO_FRAME - kp.shape[0])
    if max_mismatch_frames is not None and mismatch > max_mismatch_frames:
        raise DataFormatError(
            f"{what}: audio and video lengths disagree by {mismatch:.2f} frames (T={kp.shape[0]} frames at "
            f"{FPS} fps = {kp.shape[0] / FPS:.2f} s, M={lf.shape[0]} logfbank rows = {lf.shape[0] / LOGFBANK_HZ:.2f} s)")
    return np.ascontiguousarray(kp, dtype=np.float32), np.ascontiguousarray(lf, dtype=np.float32)


# --------------------------------------------------------------------------------------- manifest
_SPACE_KEYS = ("keypoint_space", "num_kp", "kp_dim")


def _manifest_header(space: KeypointSpace = FOMM_SPACE) -> dict:
    return {"format": FORMAT_NAME, "version": FORMAT_VERSION, "fps": FPS, "logfbank_hz": LOGFBANK_HZ,
            "keypoint_space": space.renderer, "num_kp": space.num_kp, "kp_dim": space.kp_dim, "n_filt": N_FILT}


def require_same_space(where: str, have: KeypointSpace, new: KeypointSpace, what: str) -> None:
    """The one check that two keypoint spaces are the same (data folders, shards, run configs, syncers,
    evaluation): ``where`` holds ``have``, ``what`` is ``new``.

    Raises:
        DataFormatError: they differ (one line naming both).
    """
    if have != new:
        raise DataFormatError(f"{where} holds {have.describe()}, but {what} is {new.describe()}: keypoints of two "
                              "spaces cannot be mixed; use a separate folder per renderer")


SPACE_CONFIG_KEYS = ("keypoint_space", "num_kp", "kp_dim")
"""The ``model`` keys of a ``train syncers`` / ``train generator`` run config that hold its keypoint space
(``null`` in the defaults: :func:`settle_run_space` sets them from the data's manifest)."""


def settle_run_space(model: dict, data_dir: str | Path, *, resume: bool = False) -> KeypointSpace:
    """Set a run config's ``model`` keypoint-space keys (:data:`SPACE_CONFIG_KEYS`) from ``DATA_DIR``'s
    manifest, in place, and return that space; keys already set (by ``--config``/``--set``, or by the
    run being resumed) must name the same space.

    Raises:
        DataFormatError: the data's manifest is unreadable, or the config (or the resumed run) is in
            another keypoint space (one line naming both).
    """
    space = read_data_space(data_dir)
    given = {k: model.get(k) for k in SPACE_CONFIG_KEYS}
    want = {"keypoint_space": space.renderer, "num_kp": space.num_kp, "kp_dim": space.kp_dim}
    merged = {k: want[k] if given[k] is None else given[k] for k in SPACE_CONFIG_KEYS}
    if merged != want:
        try:
            have = KeypointSpace.from_kp_dim(merged["keypoint_space"], merged["num_kp"], merged["kp_dim"])
        except (TypeError, ValueError) as exc:
            raise DataFormatError(f"bad keypoint space in the run config (model.{', model.'.join(SPACE_CONFIG_KEYS)}): "
                                  f"{exc}") from None
        require_same_space("the run being resumed" if resume else "the run config", have, space, f"{data_dir}'s data")
    model.update(want)
    return space


def write_manifest(data_dir: str | Path, clips: Sequence[ClipInfo], space: KeypointSpace = FOMM_SPACE) -> Path:
    """Atomically write ``DATA_DIR/manifest.json`` listing ``clips`` (ids must be unique) in ``space``.

    Raises:
        DataFormatError: duplicate clip ids.
    """
    data_dir = Path(data_dir)
    ids = [c.id for c in clips]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise DataFormatError(f"duplicate clip ids in manifest: {dup[:5]}")
    doc = _manifest_header(space)
    doc["clips"] = [asdict(c) for c in clips]
    text = json.dumps(doc, indent=1).encode()
    path = data_dir / DATA_MANIFEST_NAME
    atomic_write(path, lambda f: f.write(text))
    return path


def read_manifest(data_dir: str | Path) -> list[ClipInfo]:
    """Read ``DATA_DIR/manifest.json``'s clip records (:func:`read_data` without the keypoint space)."""
    return read_data(data_dir)[0]


def read_data_space(data_dir: str | Path) -> KeypointSpace:
    """The keypoint space of ``DATA_DIR``'s clips, from its manifest (see the module docstring).

    Raises:
        DataFormatError: as :func:`read_data`.
    """
    return read_data(data_dir)[1]


def _space_of(doc: dict, path: Path) -> KeypointSpace:
    """The manifest document's keypoint space (FOMM's when it records none)."""
    if not any(k in doc for k in _SPACE_KEYS):
        return FOMM_SPACE
    renderer = doc.get("keypoint_space", FOMM_SPACE.renderer if doc.get("num_kp", FOMM_SPACE.num_kp) == FOMM_SPACE.num_kp
                       else None)
    if renderer is None:
        raise DataFormatError(f"{path}: num_kp={doc.get('num_kp')!r} but no keypoint_space says whose keypoints "
                              "they are (e.g. \"keypoint_space\": \"smac\")")
    try:
        return KeypointSpace.from_kp_dim(renderer, doc.get("num_kp", FOMM_SPACE.num_kp), doc.get("kp_dim", FOMM_SPACE.kp_dim))
    except ValueError as exc:
        raise DataFormatError(f"{path}: bad keypoint space: {exc}") from None


def read_data(data_dir: str | Path) -> tuple[list[ClipInfo], KeypointSpace]:
    """Read ``DATA_DIR/manifest.json``: its clip records and keypoint space.

    Accepts the full document (see module docstring) or, for hand-made data, a bare JSON list of
    clip records (FOMM's keypoint space).

    Raises:
        DataFormatError: missing/unreadable manifest, wrong format name/version, constants that differ
            from this package's (fps, logfbank rate, bands), a bad keypoint space, or malformed clip records.
    """
    path = Path(data_dir) / DATA_MANIFEST_NAME
    if not path.is_file():
        raise DataFormatError(f"no {DATA_MANIFEST_NAME} in data directory {Path(data_dir)}")
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataFormatError(f"unreadable manifest {path}: {exc}") from None
    space = FOMM_SPACE
    if isinstance(doc, list):
        records = doc
    elif isinstance(doc, dict):
        if doc.get("format", FORMAT_NAME) != FORMAT_NAME:
            raise DataFormatError(f"{path}: format {doc.get('format')!r} is not {FORMAT_NAME!r}")
        if int(doc.get("version", FORMAT_VERSION)) > FORMAT_VERSION:
            raise DataFormatError(f"{path}: format version {doc['version']} is newer than supported {FORMAT_VERSION}")
        for key, want in _manifest_header().items():
            if key in ("format", "version") or key in _SPACE_KEYS:
                continue
            if key in doc and doc[key] != want:
                raise DataFormatError(f"{path}: {key}={doc[key]!r} but talkhead expects {want!r}")
        space = _space_of(doc, path)
        records = doc.get("clips")
        if not isinstance(records, list):
            raise DataFormatError(f"{path}: 'clips' must be a list")
    else:
        raise DataFormatError(f"{path}: manifest must be a JSON object or list")
    clips = []
    for i, rec in enumerate(records):
        try:
            clip = ClipInfo(id=str(rec["id"]), num_frames=int(rec["num_frames"]),
                            num_logfbank_frames=int(rec["num_logfbank_frames"]),
                            source=str(rec.get("source", "")), split=str(rec.get("split", "train")))
        except (KeyError, TypeError, ValueError) as exc:
            raise DataFormatError(f"{path}: clip record {i} is malformed ({exc!r}): {rec!r}") from None
        if not _ID_RE.match(clip.id):
            raise DataFormatError(f"{path}: clip id {clip.id!r} is not file-safe")
        clips.append(clip)
    return clips, space


def clip_path(data_dir: str | Path, clip_id: str) -> Path:
    """``DATA_DIR/clips/<id>.npz``."""
    return Path(data_dir) / CLIPS_DIRNAME / f"{clip_id}.npz"


def write_clip(data_dir: str | Path, clip_id: str, keypoints: np.ndarray, logfbank: np.ndarray, *,
               source: str = "", split: str = "train", max_mismatch_frames: int = 2,
               space: KeypointSpace = FOMM_SPACE) -> ClipInfo:
    """Validate and atomically write ``clips/<id>.npz``; return its manifest record (manifest untouched).

    Args:
        keypoints: ``(T, K, d)`` in ``space``; logfbank: ``(M, 26)`` (see :func:`check_clip_arrays`).

    Raises:
        DataFormatError: bad id or arrays.
    """
    if not _ID_RE.match(clip_id):
        raise DataFormatError(f"clip id {clip_id!r} is not file-safe (use letters, digits, '.', '_', '-')")
    kp, lf = check_clip_arrays(keypoints, logfbank, max_mismatch_frames=max_mismatch_frames, what=clip_id,
                               space=space)
    atomic_write(clip_path(data_dir, clip_id), lambda f: np.savez(f, keypoints=kp, logfbank=lf))
    return ClipInfo(id=clip_id, num_frames=int(kp.shape[0]), num_logfbank_frames=int(lf.shape[0]),
                    source=source, split=split)


def load_clip(data_dir: str | Path, clip: ClipInfo | str, space: KeypointSpace | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """Read one clip: ``(keypoints (T, K, d) float32, logfbank (M, 26) float32)``, checked against the
    data directory's keypoint ``space`` (read from its manifest when not given).

    Raises:
        DataFormatError: missing/corrupt file, or shapes that contradict the manifest record.
    """
    clip_id = clip.id if isinstance(clip, ClipInfo) else str(clip)
    path = clip_path(data_dir, clip_id)
    try:
        with np.load(path) as z:
            kp, lf = z["keypoints"], z["logfbank"]
    except (OSError, KeyError, ValueError) as exc:
        raise DataFormatError(f"cannot read clip {path}: {exc}") from None
    if isinstance(clip, ClipInfo) and (kp.shape[0] != clip.num_frames or lf.shape[0] != clip.num_logfbank_frames):
        raise DataFormatError(f"{path}: holds T={kp.shape[0]}, M={lf.shape[0]} but the manifest says "
                              f"T={clip.num_frames}, M={clip.num_logfbank_frames}")
    space = read_data_space(data_dir) if space is None else space
    return check_clip_arrays(kp, lf, max_mismatch_frames=None, what=str(path), space=space)


class DatasetWriter:
    """Incrementally build (or extend) a data directory.

    Usage::

        with DatasetWriter(data_dir) as w:
            w.add("spk1_0001", keypoints, logfbank, source="vox/id1/a.mp4", split="train")

    Reopening an existing directory keeps its clips (``w.has(id)`` lets a preprocessor skip done
    work). The manifest is rewritten atomically every ``flush_every`` additions and on close, so an
    interrupted preprocessing run loses at most ``flush_every`` clips from the manifest (their files
    are simply rewritten on the next run).

    Every clip is in the writer's keypoint ``space`` (recorded in the manifest); an existing directory
    of another space is refused (:class:`DataFormatError`, one line naming both) before anything is written.
    """

    def __init__(self, data_dir: str | Path, *, flush_every: int = 50, max_mismatch_frames: int = 2,
                 space: KeypointSpace = FOMM_SPACE):
        self.data_dir = Path(data_dir)
        self.space = space
        self.flush_every = int(flush_every)
        self.max_mismatch_frames = max_mismatch_frames
        self._clips: dict[str, ClipInfo] = {}
        if (self.data_dir / DATA_MANIFEST_NAME).is_file():
            clips, have = read_data(self.data_dir)
            require_same_space(str(self.data_dir), have, space, "this run's keypoints")
            self._clips = {c.id: c for c in clips}
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._pending = 0

    def has(self, clip_id: str) -> bool:
        """Whether ``clip_id`` is already in the manifest."""
        return clip_id in self._clips

    @property
    def clips(self) -> list[ClipInfo]:
        """Records written so far (manifest order)."""
        return list(self._clips.values())

    def add(self, clip_id: str, keypoints: np.ndarray, logfbank: np.ndarray, *, source: str = "",
            split: str = "train") -> ClipInfo:
        """Write one clip (replacing a clip with the same id) and record it; see :func:`write_clip`."""
        info = write_clip(self.data_dir, clip_id, keypoints, logfbank, source=source, split=split,
                          max_mismatch_frames=self.max_mismatch_frames, space=self.space)
        self._clips[clip_id] = info
        self._pending += 1
        if self._pending >= self.flush_every:
            self.flush()
        return info

    def flush(self) -> None:
        """Rewrite the manifest now."""
        write_manifest(self.data_dir, self.clips, self.space)
        self._pending = 0

    def close(self) -> None:
        """Write the final manifest."""
        self.flush()

    def __enter__(self) -> "DatasetWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --------------------------------------------------------------------------------------- sharding
def shard_indices(num_items: int, rank: int, world_size: int, *, shuffle: bool = True, seed: int = 0,
                  epoch: int = 0, pad: bool = True) -> list[int]:
    """Indices of ``range(num_items)`` that ``rank`` owns (``torch.utils.data.DistributedSampler`` rule).

    The order is a permutation drawn from ``numpy.random.default_rng([seed, epoch])`` (identical on
    every rank), padded by wrapping around to a multiple of ``world_size`` when ``pad`` (every rank
    gets the same count; a few items repeat) or truncated otherwise, then strided:
    ``perm[rank::world_size]``. Deterministic: the same arguments give the same list on any machine.

    Raises:
        ValueError: ``rank`` outside ``[0, world_size)`` or ``num_items < 1``.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside [0, {world_size})")
    if num_items < 1:
        raise ValueError("cannot shard an empty dataset")
    order = (np.random.default_rng([int(seed), int(epoch)]).permutation(num_items) if shuffle
             else np.arange(num_items))
    if pad:
        total = math.ceil(num_items / world_size) * world_size
        order = np.resize(order, total)  # wraps around
    else:
        order = order[: (num_items // world_size) * world_size]
    return order[rank::world_size].tolist()


class StepBatchSampler(torch.utils.data.Sampler):
    """Batches of dataset indices for optimisation steps ``start_step+1 .. total_steps``.

    Step ``s`` (1-based) of rank ``r`` uses epoch ``e = (s-1) // steps_per_epoch`` and batch
    ``(s-1) % steps_per_epoch`` of ``shard_indices(len, r, world_size, seed=seed, epoch=e)``, with
    ``steps_per_epoch = len(shard) // batch_size`` (incomplete batches dropped). Because this is a
    pure function of the step, a resumed run sees exactly the batches of an uninterrupted one.
    Each rank draws ``batch_size`` items per step (the global batch is ``batch_size * world_size``).

    Raises:
        ValueError: a shard smaller than one batch.
    """

    def __init__(self, num_items: int, batch_size: int, *, total_steps: int, start_step: int = 0, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        self.num_items, self.batch_size = int(num_items), int(batch_size)
        self.total_steps, self.start_step = int(total_steps), int(start_step)
        self.seed, self.rank, self.world_size = int(seed), int(rank), int(world_size)
        per_rank = math.ceil(self.num_items / self.world_size)
        self.steps_per_epoch = per_rank // self.batch_size
        if self.steps_per_epoch < 1:
            raise ValueError(f"{self.num_items} items over {self.world_size} rank(s) cannot fill one batch of "
                             f"{self.batch_size}; lower batch_size or add data")
        self._cache: tuple[int, list[int]] | None = None

    def batch_for_step(self, step: int) -> list[int]:
        """Dataset indices of 1-based optimisation ``step`` on this rank."""
        epoch, b = divmod(step - 1, self.steps_per_epoch)
        if self._cache is None or self._cache[0] != epoch:
            self._cache = (epoch, shard_indices(self.num_items, self.rank, self.world_size, seed=self.seed,
                                                epoch=epoch))
        return self._cache[1][b * self.batch_size:(b + 1) * self.batch_size]

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start_step + 1, self.total_steps + 1):
            yield self.batch_for_step(step)

    def __len__(self) -> int:
        return max(0, self.total_steps - self.start_step)


# --------------------------------------------------------------------------------------- datasets
class ClipStore:
    """Manifest + lazy, cached clip loading for one split.

    Args:
        data_dir: the data directory.
        split: keep clips whose ``split`` equals this (``None``: all clips).
        min_frames: drop clips with fewer usable frames than this.
        cache: keep loaded clips in memory (small and medium datasets); ``False`` re-reads each access.

    Attributes:
        space: the data's :class:`~talkhead.keypoints.KeypointSpace` (from the manifest).

    Raises:
        DataFormatError: no clip of ``split`` has ``min_frames`` usable frames.
    """

    def __init__(self, data_dir: str | Path, split: str | None = "train", *, min_frames: int = 1, cache: bool = True):
        self.data_dir = Path(data_dir)
        all_clips, self.space = read_data(self.data_dir)
        self.clips = [c for c in all_clips if (split is None or c.split == split) and c.usable_frames >= min_frames]
        if not self.clips:
            have = sorted({c.split for c in all_clips})
            raise DataFormatError(f"{self.data_dir}: no clip of split {split!r} with at least {min_frames} usable "
                                  f"frames ({len(all_clips)} clips, splits {have})")
        self.cache = cache
        self._mem: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.clips)

    def get(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """``(keypoints (U, K, d), logfbank (4U, 26))`` of clip ``index``, cut to ``U`` usable frames."""
        if index in self._mem:
            return self._mem[index]
        clip = self.clips[index]
        kp, lf = load_clip(self.data_dir, clip, self.space)
        u = clip.usable_frames
        out = (kp[:u], lf[: u * LOGFBANK_PER_VIDEO_FRAME])
        if self.cache:
            self._mem[index] = out
        return out


class WindowDataset(Dataset):
    """Aligned fixed-length segments of every clip of a split.

    Item ``i`` is a dict:

    * ``keypoints``: ``(F, K, d)`` float32 tensor, frames ``s .. s+F-1`` of the clip (25 fps);
    * ``logfbank``: ``(4F, 26)`` float32 tensor, rows ``4s .. 4s+4F-1`` (frame t <-> rows 4t..4t+3);
    * ``clip``: int, index of the clip in ``self.store.clips``; ``start``: int, ``s`` in frames.

    Windows start every ``hop`` frames (``s = 0, hop, 2 hop, ...`` while ``s + F <= U``); a clip
    shorter than ``F`` usable frames gives no window. The dataset is deterministic (no randomness):
    order and sharding come from the sampler (:class:`StepBatchSampler`) or from :meth:`shard`.

    Raises:
        DataFormatError: no clip has ``num_frames`` usable frames.
    """

    def __init__(self, data_dir: str | Path, split: str | None, num_frames: int, *, hop: int | None = None,
                 cache: bool = True, store: ClipStore | None = None):
        if num_frames < 1:
            raise ValueError("num_frames must be >= 1")
        self.num_frames = int(num_frames)
        self.hop = int(hop or num_frames)
        self.store = store or ClipStore(data_dir, split, min_frames=self.num_frames, cache=cache)
        counts = [max(0, (c.usable_frames - self.num_frames) // self.hop + 1) for c in self.store.clips]
        self._clip_of = np.repeat(np.arange(len(counts)), counts)
        self._first = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        if len(self._clip_of) == 0:
            raise DataFormatError(f"no clip with {self.num_frames} usable frames in {self.store.data_dir}")

    def __len__(self) -> int:
        return int(len(self._clip_of))

    def locate(self, index: int) -> tuple[int, int]:
        """``(clip index, start frame)`` of window ``index``."""
        c = int(self._clip_of[index])
        return c, int(index - self._first[c]) * self.hop

    def __getitem__(self, index: int) -> dict:
        c, s = self.locate(int(index))
        kp, lf = self.store.get(c)
        r = LOGFBANK_PER_VIDEO_FRAME
        return {"keypoints": torch.from_numpy(np.array(kp[s:s + self.num_frames])),
                "logfbank": torch.from_numpy(np.array(lf[r * s:r * (s + self.num_frames)])),
                "clip": c, "start": s}

    def shard(self, rank: int, world_size: int, *, shuffle: bool = False, seed: int = 0, epoch: int = 0) -> list[int]:
        """This rank's window indices (see :func:`shard_indices`)."""
        return shard_indices(len(self), rank, world_size, shuffle=shuffle, seed=seed, epoch=epoch)


def iter_clips(data_dir: str | Path, split: str | None = None) -> Iterable[tuple[ClipInfo, np.ndarray, np.ndarray]]:
    """Yield ``(record, keypoints (T, K, d), logfbank (M, 26))`` for each clip of ``split`` (all if None)."""
    clips, space = read_data(data_dir)
    for clip in clips:
        if split is None or clip.split == split:
            kp, lf = load_clip(data_dir, clip, space)
            yield clip, kp, lf
