"""Training the MS-Sync syncer pyramid (paper sec. 3.1, eq. 3-5): InfoNCE, data, the training task.

The model (pyramid ops, :class:`~talkhead.mssync.syncers.SyncerPyramid`, the pyramid file) lives in
:mod:`talkhead.mssync.syncers`; this module keeps what training needs.

Loss (eq. 3-5, InfoNCE): for an aligned pair ``(x, a+)`` and ``N = 48`` negatives ``a-_1..N``
(windows of the same clip at other offsets, and windows of other clips)::

    L = -log( exp(s(x, a+) / tau) / (exp(s(x, a+) / tau) + sum_n exp(s(x, a-_n) / tau)) )

with ``s`` the syncer's cosine score (eq. 2), temperature ``tau = 0.1`` (our choice; config
``temperature``), averaged over anchors and summed over levels (the 4 syncers share no parameters,
so this trains them independently on the same batches). :func:`pyramid_sync_loss` is the
generator's multi-scale sync loss over a frozen pyramid.

Files: training writes ``RUN_DIR/checkpoint.pt`` through :mod:`talkhead.train.engine`;
:func:`load_syncers` reads the pyramid back from a run directory, a training checkpoint or a
pyramid file (:func:`talkhead.mssync.syncers.save_syncers`).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..constants import LOGFBANK_PER_VIDEO_FRAME
from ..errors import CheckpointError, ConfigError
from ..mssync.syncers import (WINDOW_FRAMES, SyncerConfig, SyncerPyramid, build_pyramid, level_name, read_syncer_file,
                              syncers_from_state)
from .data import DataFormatError, WindowDataset, read_data_space, require_same_space, settle_run_space
from .evaluate import av_sync_clips
from .engine import CHECKPOINT_NAME, EngineConfig, ProgressFn, RunContext, TrainTask, read_run_checkpoint, resolve_run_config, run_training

DEFAULTS_PATH = Path(__file__).with_name("configs") / "syncers.yaml"


def pyramid_sync_loss(pyramid: SyncerPyramid, keypoints: torch.Tensor, logfbank: torch.Tensor,
                      levels: Sequence[int] | None = None) -> torch.Tensor:
    """Multi-scale AV synchrony loss for a generator: ``-mean cos(e_x, e_a)`` over every aligned
    window of every level, averaged over levels (reference ``lip_sync_pyramid_loss`` /
    ``lip_sync_loss``, which average ``-(e_a * e_x).sum(-1)``).

    Args:
        pyramid: a trained (usually frozen) :class:`SyncerPyramid`.
        keypoints: ``(B, F, K, 6)`` generated keypoints; logfbank: ``(B, 4F, 26)``.
        levels: 0-based levels to use (default all).

    Returns:
        scalar tensor in ``[-1, 1]``, differentiable w.r.t. ``keypoints``.
    """
    levels = list(range(pyramid.levels)) if levels is None else list(levels)
    pyr = pyramid.pyramid(keypoints, logfbank)
    losses = []
    for l in levels:
        e_x, e_a = pyramid.embed_level(l, *pyr[l])
        losses.append(-(e_x * e_a).sum(-1).mean())
    return torch.stack(losses).mean()




# ============================================================================================ InfoNCE
def info_nce(e_x: torch.Tensor, e_a: torch.Tensor, clip: torch.Tensor, start: torch.Tensor, level: int, *,
             negatives: int = 48, same_clip_negatives: int = 24, anchors_per_segment: int = 4,
             temperature: float = 0.1, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """InfoNCE over one level's window embeddings of a batch of segments (paper eq. 3-5).

    Anchors: ``anchors_per_segment`` window positions per segment (distinct when possible). For the
    anchor at position ``p`` of segment ``b``, the positive is ``e_a[b, p]`` and the ``negatives``
    candidates are: up to ``same_clip_negatives`` windows of the same segment at other positions
    (misaligned by 1 .. P-1 level frames) and the rest windows of the *other* segments of the batch
    (other clips; a window of another segment of the same clip is excluded when it starts less than
    one level frame from the anchor, i.e. when it is effectively aligned). Negatives are drawn
    without replacement when enough candidates exist, with replacement otherwise.

    Args:
        e_x, e_a: ``(B, P, D)`` unit-norm embeddings (:meth:`SyncerPyramid.embed_level`).
        clip: ``(B,)`` clip index of each segment; start: ``(B,)`` first frame of each segment (25 fps).
        level: 0-based pyramid level (window ``p`` starts at frame ``start + p * 2**level``).
        generator: RNG for anchors/negatives (default: torch's global RNG).

    Returns:
        ``(loss, accuracy)``: mean cross-entropy with the positive as class 0 over ``1 + negatives``
        logits ``cos / temperature``; and the fraction of anchors whose positive outscores every
        negative (chance = ``1 / (1 + negatives)``).
    """
    b, p, _ = e_x.shape
    dev = e_x.device
    k = min(anchors_per_segment, p)
    anchor_pos = torch.rand(b, p, generator=generator).argsort(dim=1)[:, :k].to(dev)   # (B, k)
    anchor_item = torch.arange(b, device=dev)[:, None].expand(b, k)
    ai, ap = anchor_item.reshape(-1), anchor_pos.reshape(-1)                          # (Q,)
    q = ai.numel()
    cand_item = torch.arange(b, device=dev).repeat_interleave(p)                      # (B*P,)
    cand_pos = torch.arange(p, device=dev).repeat(b)
    same = (cand_item[None] == ai[:, None]) & (cand_pos[None] != ap[:, None])
    clip, start = clip.to(dev), start.to(dev)
    abs_anchor = start[ai] + ap * 2 ** level
    abs_cand = start[cand_item] + cand_pos * 2 ** level
    aligned_elsewhere = (clip[cand_item][None] == clip[ai][:, None]) & \
                        ((abs_cand[None] - abs_anchor[:, None]).abs() < 2 ** level)
    other = (cand_item[None] != ai[:, None]) & ~aligned_elsewhere
    n_same_avail, n_other_avail = int(same.sum(1).min()), int(other.sum(1).min())
    if n_same_avail == 0 and n_other_avail == 0:
        raise ValueError("no negative candidates: need more than one window or more than one segment")
    n_same = min(same_clip_negatives, n_same_avail) if n_other_avail > 0 else negatives
    n_other = negatives - n_same
    picks = []
    for mask, n in ((same, n_same), (other, n_other)):
        if n > 0:
            idx = torch.multinomial(mask.float().cpu(), n, replacement=n > int(mask.sum(1).min()), generator=generator)
            picks.append(idx.to(dev))
    neg_idx = torch.cat(picks, dim=1)                                                 # (Q, N)
    ex_q = e_x[ai, ap]                                                               # (Q, D)
    pos = (ex_q * e_a[ai, ap]).sum(-1, keepdim=True)                                 # (Q, 1)
    neg = torch.einsum("qd,qnd->qn", ex_q, e_a.reshape(b * p, -1)[neg_idx])           # (Q, N)
    logits = torch.cat([pos, neg], dim=1) / temperature
    loss = F.cross_entropy(logits, torch.zeros(q, dtype=torch.long, device=dev))
    acc = (pos[:, 0] > neg.max(dim=1).values).float().mean()
    return loss, acc


# ============================================================================================ training data
class PyramidSegments(torch.utils.data.Dataset):
    """Segments of clip-level pyramids: the pyramid is built once on each whole clip, then sliced.

    Slicing a whole-clip pyramid (instead of blurring each short segment) keeps the upper levels
    free of segment-edge reflection artefacts, so training windows look like the evaluation's.

    Item ``i`` (segment ``s .. s+F-1`` of a clip; ``s`` and ``F`` multiples of ``2**(levels-1)``)::

        {"levels": [(kp_l (F / 2**l, K, 6), lf_l (4F / 2**l, 26)) for l in 0..levels-1],
         "clip": clip index, "start": s (frames at 25 fps)}

    Raises:
        ConfigError: ``segment_frames`` or ``hop`` not a multiple of ``2**(levels-1)``.
        DataFormatError: no clip of ``split`` is long enough.
    """

    def __init__(self, data_dir: str | Path, split: str, segment_frames: int, hop: int, *, levels: int = 4,
                 kernel_size: int = 7, cache_clips: int = 4096):
        unit = 2 ** (levels - 1)
        if segment_frames % unit or hop % unit:
            raise ConfigError(f"segment_frames ({segment_frames}) and segment hop ({hop}) must be multiples of "
                              f"{unit} for a {levels}-level pyramid")
        self.windows = WindowDataset(data_dir, split, segment_frames, hop=hop, cache=False)
        self.levels, self.kernel_size, self.frames = levels, kernel_size, segment_frames
        self.cache_clips = int(cache_clips)
        self._pyr: OrderedDict[int, list[tuple[torch.Tensor, torch.Tensor]]] = OrderedDict()

    def __len__(self) -> int:
        return len(self.windows)

    def clip_pyramid(self, clip: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Levels of the whole clip: ``[(kp_l (U_l, K, 6), lf_l (4 U_l, 26)), ...]``; the last
        ``cache_clips`` clips used are kept in memory (least recently used evicted first)."""
        if clip in self._pyr:
            self._pyr.move_to_end(clip)
            return self._pyr[clip]
        kp, lf = self.windows.store.get(clip)
        pyr = build_pyramid(torch.from_numpy(np.array(kp))[None], torch.from_numpy(np.array(lf))[None],
                            self.levels, self.kernel_size)
        levels = [(k[0], a[0]) for k, a in pyr]
        if self.cache_clips > 0:
            self._pyr[clip] = levels
            if len(self._pyr) > self.cache_clips:
                self._pyr.popitem(last=False)
        return levels

    def __getitem__(self, index: int) -> dict:
        clip, start = self.windows.locate(int(index))
        levels = []
        for l, (kp, lf) in enumerate(self.clip_pyramid(clip)):
            s, n = start >> l, self.frames >> l
            r = LOGFBANK_PER_VIDEO_FRAME
            levels.append((kp[s:s + n], lf[r * s:r * (s + n)]))
        return {"levels": levels, "clip": clip, "start": start}


def collate_segments(items: list[dict]) -> dict:
    """Stack :class:`PyramidSegments` items: ``levels`` -> ``[(kp_l (B, F_l, K, 6), lf_l (B, 4F_l, 26))]``,
    ``clip`` and ``start`` -> ``(B,)`` int64."""
    levels = [(torch.stack([it["levels"][l][0] for it in items]), torch.stack([it["levels"][l][1] for it in items]))
              for l in range(len(items[0]["levels"]))]
    return {"levels": levels, "clip": torch.tensor([i["clip"] for i in items]),
            "start": torch.tensor([i["start"] for i in items])}


# ============================================================================================ training task


@dataclass(frozen=True, kw_only=True)
class SyncerRunConfig(EngineConfig):
    """The ``train syncers`` run config, typed and checked once (defaults and meaning of every key:
    ``talkhead/train/configs/syncers.yaml``, the one place they are declared)."""

    batch_size: int
    segment_frames: int
    segment_hop: int
    anchors_per_segment: int
    negatives: int
    same_clip_negatives: int
    temperature: float
    lr: float
    betas: tuple[float, float]
    weight_decay: float
    lr_step: int
    lr_gamma: float
    grad_clip: float
    val_segments: int
    eval_max_shift: int
    cache_clips: int
    model: SyncerConfig


class SyncerTask(TrainTask):
    """:class:`~talkhead.train.engine.TrainTask` training a :class:`SyncerPyramid` with InfoNCE.

    Data: ``split="train"`` segments (:class:`PyramidSegments`) of ``segment_frames`` frames every
    ``segment_hop`` frames;
    validation: up to ``val_segments`` non-overlapping ``split="val"`` segments (or, without a val
    split, none) scored with a fixed generator so numbers are comparable across steps.
    """

    name = "syncers"

    def __init__(self, data_dir: str | Path):
        self.data_dir = Path(data_dir)

    def setup(self, ctx: RunContext) -> None:
        cfg = self.cfg = SyncerRunConfig.from_config(ctx.config)
        self.ctx = ctx
        self.model_cfg = cfg.model
        # train_syncers settles it; a hand-made config may not
        require_same_space("the run config", self.model_cfg.space, read_data_space(self.data_dir),
                           f"{self.data_dir}'s data")
        unit = 2 ** (self.model_cfg.levels - 1)
        f = cfg.segment_frames
        if f % unit or f < WINDOW_FRAMES * unit + unit:
            raise ConfigError(f"segment_frames={f} must be a multiple of {unit} and at least "
                              f"{WINDOW_FRAMES * unit + unit} for a {self.model_cfg.levels}-level pyramid")
        self.model = SyncerPyramid(self.model_cfg).to(ctx.device)
        self.ddp_model = ctx.wrap_ddp(self.model)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, betas=cfg.betas,
                                          weight_decay=cfg.weight_decay)
        step = cfg.lr_step
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=max(step, 1),
                                                         gamma=cfg.lr_gamma if step > 0 else 1.0)
        levels, kernel = self.model_cfg.levels, self.model_cfg.kernel_size
        self.train_set = PyramidSegments(self.data_dir, "train", f, cfg.segment_hop, levels=levels,
                                         kernel_size=kernel, cache_clips=cfg.cache_clips)
        try:
            val = PyramidSegments(self.data_dir, "val", f, f, levels=levels, kernel_size=kernel, cache_clips=0)
            n = min(len(val), cfg.val_segments)
            idx = np.linspace(0, len(val) - 1, n).round().astype(int) if n < len(val) else np.arange(len(val))
            self.val_items = [val[int(i)] for i in idx]
            self.val_store = val.windows.store
        except DataFormatError:  # no (long enough) val clip: validation is skipped
            self.val_items, self.val_store = [], None

    def models(self) -> dict[str, torch.nn.Module]:
        return {"syncers": self.model}

    def optimizers(self) -> dict:
        return {"adam": self.optimizer}

    def schedulers(self) -> dict:
        return {"step_lr": self.scheduler}

    def batches(self, start_step: int) -> Iterator[dict]:
        cfg = self.cfg
        return iter(self.ctx.make_loader(self.train_set, cfg.batch_size, start_step=start_step,
                                         total_steps=cfg.steps, seed=cfg.seed, num_workers=cfg.num_workers,
                                         collate_fn=collate_segments))

    def _losses(self, model: nn.Module, batch: dict, generator: torch.Generator | None):
        cfg = self.cfg
        dev = self.ctx.device
        levels = model([(kp.to(dev), lf.to(dev)) for kp, lf in batch["levels"]])
        out = []
        for l, (e_x, e_a) in enumerate(levels):
            out.append(info_nce(e_x, e_a, batch["clip"], batch["start"], l, negatives=cfg.negatives,
                                same_clip_negatives=cfg.same_clip_negatives,
                                anchors_per_segment=cfg.anchors_per_segment,
                                temperature=cfg.temperature, generator=generator))
        return out

    def train_step(self, batch: dict, step: int) -> dict[str, float]:
        self.ddp_model.train()
        per_level = self._losses(self.ddp_model, batch, None)
        loss = torch.stack([l for l, _ in per_level]).sum()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clip = self.cfg.grad_clip
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self.optimizer.step()
        self.scheduler.step()
        out = {"loss": float(loss.detach())}
        for l, (li, acc) in enumerate(per_level):
            out[f"loss_{level_name(l)}"] = float(li.detach())
            out[f"acc_{level_name(l)}"] = float(acc)
        out["lr"] = float(self.scheduler.get_last_lr()[0])
        return out

    @torch.no_grad()
    def validate(self, step: int) -> dict[str, float]:
        if not self.val_items:
            return {}
        self.model.eval()
        gen = torch.Generator().manual_seed(self.cfg.seed + 12345)
        bs = max(2, self.cfg.batch_size)
        sums = np.zeros((self.model.levels, 2))
        count = 0
        for i in range(0, len(self.val_items), bs):
            chunk = self.val_items[i:i + bs]
            if len(chunk) < 2 and count:
                break
            res = self._losses(self.model, collate_segments(chunk), gen)
            sums += np.array([[float(l), float(a)] for l, a in res]) * len(chunk)
            count += len(chunk)
        sums /= max(count, 1)
        self.model.train()
        out = {"loss": float(sums[:, 0].sum())}
        for l in range(self.model.levels):
            out[f"loss_{level_name(l)}"] = float(sums[l, 0])
            out[f"acc_{level_name(l)}"] = float(sums[l, 1])
        self.last_val = out
        return out

    def final_metrics(self) -> dict:
        out: dict = {"val": dict(getattr(self, "last_val", {}))}
        if self.val_store is not None:
            n = min(len(self.val_store), self.cfg.val_segments)
            clips = [self.val_store.get(i) for i in range(n)]
            out["av_sync"] = av_sync_clips(self.model, [c[0] for c in clips], [c[1] for c in clips],
                                           max_shift=self.cfg.eval_max_shift)
        out["chance_accuracy"] = 1.0 / (1 + self.cfg.negatives)
        return out


def train_syncers(data_dir: str | Path, run_dir: str | Path, *, config: str | Path | Mapping | None = None,
                  overrides: Mapping | None = None, resume: bool = False, progress: ProgressFn | None = None) -> dict:
    """Train the syncer pyramid on ``data_dir`` (see :mod:`talkhead.train.data`) into ``run_dir``.

    Args:
        data_dir: training data (clips of split ``"train"``; ``"val"`` clips for validation).
        run_dir: output folder: ``config.yaml``, ``checkpoint.pt``, ``metrics.jsonl``, ``final_metrics.json``.
        config: a YAML path or mapping overriding ``configs/syncers.yaml``; overrides: dotted
            ``{"model.hidden": 64}`` CLI-style overrides applied last.
        resume: continue from ``run_dir/checkpoint.pt`` (only ``steps``, ``*_every``, ``num_workers``,
            ``device`` may change).
        progress: called on rank 0 with :class:`~talkhead.train.engine.TrainEvent`.

    Returns:
        final metrics: ``{"step", "val": {"acc_200ms", ..., "loss_..."}, "av_sync": {"200ms":
        {"abs_offset_frames", "offset_frames", "conf"}, ...}, "chance_accuracy"}`` (``val`` and
        ``av_sync`` need a ``"val"`` split).

    Raises:
        ConfigError, DataFormatError, CheckpointError, OutputError, NonFiniteLossError,
        TrainingInterrupted: see :func:`talkhead.train.engine.run_training`.
    """
    cfg = resolve_run_config(DEFAULTS_PATH, run_dir, resume=resume, config=config, overrides=overrides)
    settle_run_space(cfg["model"], data_dir, resume=resume)  # the syncers read the data's keypoint space
    return run_training(SyncerTask(data_dir), run_dir, cfg, resume=resume, progress=progress)


def default_config() -> dict:
    """The default run config (``configs/syncers.yaml``) as a dict.

    Public API: a starting point a caller edits and passes to :func:`train_syncers`; not used by the CLI
    or :func:`train_syncers` itself, which merge a ``config`` over the same file
    (:func:`~talkhead.train.engine.resolve_run_config`).
    """
    from .engine import read_yaml

    return read_yaml(DEFAULTS_PATH)


# ============================================================================================ loading
def load_syncers(path: str | Path, *, device: str | torch.device = "cpu") -> SyncerPyramid:
    """Read a trained pyramid back, frozen and in eval mode.

    Args:
        path: a run directory (its ``checkpoint.pt``), a training checkpoint, or a file written by
            :func:`talkhead.mssync.syncers.save_syncers`.

    Raises:
        CheckpointError: missing/corrupt file, not a syncer checkpoint; StateDictMismatchError: layout differs.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    raw = read_syncer_file(path)
    if raw is not None:
        return syncers_from_state(raw["config"], raw["state_dict"], str(path), device=device)
    ckpt = read_run_checkpoint(path)
    if ckpt.get("task") != SyncerTask.name:
        raise CheckpointError(f"{path} is a {ckpt.get('task')!r} checkpoint, not a syncer pyramid")
    return syncers_from_state(ckpt["config"]["model"], ckpt["models"]["syncers"], str(path), device=device)
