"""MS-Sync generator training (paper sec. 3.2-3.3, eq. 6-14): the multi-scale autoregressive GAN.

One optimisation step on a batch of aligned training windows (``keypoints (B, O+S, K, 6)``, ``K`` keypoints of
the data's keypoint space (10 for FOMM, 15 for SMAC; recorded in the data manifest and in the exported ``args``), and
their ``logfbank (B, 4(O+S), 26)``, frame t <-> rows 4t..4t+3; ``O = obs_len`` warm-up frames,
``S = seq_len`` predicted frames) does, as the reference ``AudioHMoTrainer`` (``nets/trainer.py``):

1. **Augment** (reference ``VoxLipsDataset``): keypoints and jacobians times ``U(1-s, 1+s)``,
   positions shifted by ``U(-t, t)`` per axis, logfbank shifted by ``U(-r, r)`` with
   ``r = audio_shift * (max - min)``; every clip's keypoints are smoothed once by a centred
   3-frame moving average (``kp_smoothing``).
2. **Generate**: ``x_rec, x_pred = G(x[:, :O], logfbank)`` (teacher-forced warm-up, then an
   autoregressive rollout of ``S`` frames, paper eq. 6-8; :class:`~talkhead.mssync.MSSyncGenerator`).
3. **Discriminator update** (hinge / geometric GAN loss, Lim & Ye 2017) on the detached
   prediction vs the ground truth ``x[:, O:]``, both conditioned on the observed frames
   ``x[:, 1:O]``::

       L_D = w_win  [E relu(1 - D_win(real)) + E relu(1 + D_win(fake))]      multi-scale windows
           + w_fr   [E relu(1 - D_fr(real))  + E relu(1 + D_fr(fake))]       every frame
           + w_pair [E relu(1 - D_pair(real pairs)) + E relu(1 + D_pair(fake pairs))]

   ``D_win``/``D_fr`` are the released :class:`~talkhead.mssync.MSSyncDiscriminator` (LSTM +
   distance-weighted projection critic over windows of 5, 10, 20, 40 frames, and a per-frame
   DeepMLP critic). ``D_pair`` is :class:`PairedSequenceDiscriminator`: the same kind of
   multi-scale window critic applied to *pairs* of sequences (items ``2k`` and ``2k+1`` of the
   batch, max-pooled: PacGAN with packing 2, Lin et al. 2018; reference ancestor
   ``UnconditionalHeadMotion`` ``Discriminator.forward_local_dis(interaction=True)``), which sees
   the diversity of the generator's output and so counters mode collapse. The released
   HMo-audio code keeps its trace only (an even batch size, ``rounded_bs``).
4. **Generator update**::

       L_G = adv   (-w_win E D_win(fake) - w_fr E D_fr(fake) - w_pair E D_pair(fake pairs))
           + sync  L_sync([x_0, x_rec, x_pred], logfbank)      lambda = 8, frozen syncer pyramid
           + sup   E_{b,t,k} ||x_pred - x[:, O:]||^2            (sum over the 6 numbers)
           + reco  E_{b,t,k} ||x_rec - x[:, 1:O]||^2
           + first_order  E |x_pred[:, t+1] - x_pred[:, t]|

   ``L_sync`` is :func:`~talkhead.train.syncers.pyramid_sync_loss`: ``-cos(E_x, E_a)`` averaged
   over every 5-frame window of every pyramid level (reference ``lip_sync_loss`` +
   ``lip_sync_pyramid_loss``, divided by the number of levels). The reference rigid loss applies
   only to 3-D 68-point landmarks (``data_dim == 3``); with FOMM keypoints it is 0 and left out.
   The reference's horizontal-flip augmentation needs keypoints detected on mirrored videos
   (FOMM keypoints are learnt, not semantic), so it is not reproduced.
5. **Optimisers**: Adam ``betas = (0, 0.999)``, lr ``2e-5`` (G) and ``1e-5`` (D), both multiplied by
   ``lr_decay_gamma = 0.1`` from ``lr_decay_step`` on (a pure function of the step: resume-exact).

Files (``RUN_DIR``): the engine's ``config.yaml``, ``checkpoint.pt`` (generator, both
discriminators, the frozen syncers, both optimisers, RNG states), ``metrics.jsonl``,
``final_metrics.json``; and, rewritten atomically at every checkpoint, the released inference
format in ``RUN_DIR/mssync/``: ``args`` (one JSON line, :meth:`MSSyncConfig.to_args_file`) and
``model_chkpt.pt`` = ``{'checkpoints': generator state dict, 'steps': step}``, so
``talkhead.mssync.load_mssync(RUN_DIR)`` and ``talkhead animate --motion-model RUN_DIR`` (with a renderer of the
data's keypoint space) use the trained generator directly.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from scipy.ndimage import uniform_filter1d
from torch import nn

from ..constants import KP_DIM, NUM_KP
from ..keypoints import FOMM_SPACE
from ..io import atomic_output
from ..errors import ConfigError
from ..mssync import MSSyncConfig, MSSyncDiscriminator, MSSyncGenerator
from ..mssync.config import ARGS_NAME, CHECKPOINT_NAME, DISCRIMINATOR_WINDOWS
from ..mssync.discriminators import ProjectionDisc
from .data import ClipStore, DataFormatError, WindowDataset, require_same_space, settle_run_space
from .engine import (
    EngineConfig,
    ProgressFn,
    RunContext,
    TrainTask,
    atomic_torch_save,
    read_yaml,
    resolve_run_config,
    run_training,
    typed_config,
)
from ..mssync.syncers import WINDOW_FRAMES, SyncerPyramid
from .syncers import load_syncers, pyramid_sync_loss

DEFAULTS_PATH = Path(__file__).with_name("configs") / "generator.yaml"
MSSYNC_DIRNAME = "mssync"
"""Sub-folder of the run directory holding the released-format model (``args`` + ``model_chkpt.pt``)."""
MODEL_KEYS = ("obs_len", "audio_dim", "coord_dim", "hidden_size", "nblocks_do", "expansion_fact_do", "nheads_tf",
              "nlayers_tf", "streams_merging_activation", "coord_dim_D", "hidden_size_D", "nblocks_frame_D",
              "dis_config")
"""Keys of the run config's ``model`` section, copied into the MS-Sync ``args``."""


# ============================================================================================ losses
def hinge_d_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Critic hinge loss (geometric GAN): ``mean(relu(1 - real)) + mean(relu(1 + fake))``.

    Args:
        real, fake: critic scores of any shape (real and generated samples). Scalar result.
    """
    return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()


def hinge_g_loss(fake: torch.Tensor) -> torch.Tensor:
    """Generator side of the hinge loss: ``-mean(fake)``."""
    return -fake.mean()


def l2_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``mean over (B, T, K) of sum over the last axis of (pred - target)^2`` (reference ``l2_loss``).

    Args:
        pred, target: ``(B, T, K, 6)`` keypoints + jacobians; ``T = 0`` gives 0.
    """
    if pred.numel() == 0:
        return pred.new_zeros(())
    return (pred - target).pow(2).sum(dim=-1).mean()


def first_order_loss(x: torch.Tensor) -> torch.Tensor:
    """``mean |x[:, t+1] - x[:, t]|`` over a ``(B, T, K, 6)`` sequence (reference ``velocity_regularization_loss``)."""
    return torch.diff(x, dim=1).abs().mean()


def window_starts(obs_len: int, seq_len: int, window: int) -> np.ndarray:
    """Start frames (relative to the first judged frame) of the overlapping windows a multi-scale
    critic scores: every ``window // 2`` frames from ``max(-obs_len, window//2 - window)`` to
    ``seq_len - window`` (windows may reach into the ``obs_len`` conditioning frames; reference
    ``Discriminator.forward_local_proj_dis``). Empty when the window is longer than ``obs_len + seq_len``."""
    stride = window // 2
    return np.arange(max(-obs_len, stride - window), seq_len - window + 1, stride)


# ============================================================================================ paired critic
class PairedSequenceDiscriminator(nn.Module):
    """Multi-scale window critic over *pairs* of sequences (PacGAN packing 2), hinge-trained.

    Items ``2k`` and ``2k+1`` of a batch form pair ``k``. Every frame is embedded
    (``Linear(K*d, E) -> LayerNorm -> GELU -> Linear(E, E)``); one LSTM (width ``H``) encodes the
    conditioning frames and every overlapping window of each size (see :func:`window_starts`); the
    final LSTM states of the two members are max-pooled (order-free), and a distance-weighted
    projection critic (:class:`~talkhead.mssync.discriminators.ProjectionDisc`) scores each pooled
    window against the pooled conditioning state. The score of a pair is the mean over window
    sizes of the mean over windows. Reference: ``UnconditionalHeadMotion``
    ``Discriminator.forward_local_dis(..., interaction=True)`` (the MS-Sync authors' previous model,
    whose Vox training pairs random sequences, ``n_pers = 2``).

    Args:
        data_dim: numbers per keypoint (6).
        embed_dim: ``E``; hidden: ``H``.
        windows: window sizes in frames (e.g. 5, 10, 20, 40).
        num_kp: ``K``, keypoints per frame (10 for FOMM's space).
    """

    def __init__(self, data_dim: int = KP_DIM, embed_dim: int = 512, hidden: int = 1024,
                 windows: Sequence[int] = (5, 10, 20, 40), num_kp: int = NUM_KP) -> None:
        super().__init__()
        self.data_dim = data_dim
        self.windows = tuple(int(w) for w in windows)
        self.encoder_x = nn.Sequential(nn.Linear(num_kp * data_dim, embed_dim), nn.LayerNorm(embed_dim), nn.GELU(),
                                       nn.Linear(embed_dim, embed_dim))
        self.lstm = nn.LSTM(input_size=embed_dim, hidden_size=hidden)
        self.D_seq = ProjectionDisc(hidden)

    @staticmethod
    def _pair_max(h: torch.Tensor) -> torch.Tensor:
        """``(..., B, H) -> (..., B/2, H)``: max over the two members of each pair."""
        return h.unflatten(-2, (h.shape[-2] // 2, 2)).amax(dim=-2)

    def forward(self, x_obs: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Scores of the pairs of a batch.

        Args:
            x_obs: ``(B, O, K, d)`` conditioning frames (``O >= 1``); x: ``(B, S, K, d)`` judged frames.

        Returns:
            ``(B/2, 1)`` critic scores (higher: more real).

        Raises:
            ValueError: odd ``B``, no conditioning frame, or a window longer than ``O + S`` frames.
        """
        bs, obs_len, seq_len = x.shape[0], x_obs.shape[1], x.shape[1]
        if bs % 2:
            raise ValueError(f"the paired discriminator needs an even batch, got {bs} sequences")
        if obs_len < 1:
            raise ValueError("the paired discriminator needs at least one conditioning frame")
        emb = self.encoder_x(torch.cat([x_obs, x], dim=1).flatten(start_dim=-2))      # (B, O+S, E)
        _, (y, _) = self.lstm(emb[:, :obs_len].transpose(0, 1))
        y = self._pair_max(y[-1])                                                          # (B/2, H)
        scores = x.new_zeros(bs // 2, 1)
        for window in self.windows:
            starts = window_starts(obs_len, seq_len, window)
            if len(starts) == 0:
                raise ValueError(f"{obs_len} + {seq_len} frames are fewer than the {window}-frame window")
            chunks = torch.cat([emb[:, obs_len + i:obs_len + i + window] for i in starts], dim=0)
            _, (h, _) = self.lstm(chunks.transpose(0, 1))
            pooled = self._pair_max(h[-1].view(len(starts), bs, -1)).flatten(end_dim=1)  # (n*B/2, H)
            scores = scores + self.D_seq(pooled, y, distances=starts).mean(dim=0)
        return scores / len(self.windows)


# ============================================================================================ config
@dataclass(frozen=True, kw_only=True)
class AugmentConfig:
    """The ``augment`` section: per-sequence random scale, translation and logfbank shift."""

    scale: float
    translate: float
    audio_shift: float


@dataclass(frozen=True, kw_only=True)
class LossWeights:
    """The ``losses`` section: weights of the generator's terms (see ``configs/generator.yaml``)."""

    adv: float
    window: float
    frame: float
    paired: float
    sync: float
    sup: float
    reco: float
    first_order: float


@dataclass(frozen=True, kw_only=True)
class GeneratorRunConfig(EngineConfig):
    """The ``train generator`` run config, typed and checked once (defaults and meaning of every key:
    ``talkhead/train/configs/generator.yaml``, the one place they are declared). ``model`` stays a
    mapping: :func:`build_mssync_config` turns it into a validated :class:`~talkhead.mssync.MSSyncConfig`."""

    syncers: str
    batch_size: int
    seq_len: int
    window_hop: int
    kp_smoothing: int
    augment: AugmentConfig
    lr_g: float
    lr_d: float
    betas: tuple[float, float]
    lr_decay_step: int
    lr_decay_gamma: float
    grad_clip: float
    losses: LossWeights
    model: dict
    discriminator_windows: Optional[tuple[int, ...]] = None
    val_windows: int

    @classmethod
    def from_config(cls, mapping: Mapping) -> "GeneratorRunConfig":
        """Typed view of a merged run config (``discriminator.windows`` becomes ``discriminator_windows``).

        Raises:
            ConfigError: a missing key or a value of the wrong type.
        """
        flat = dict(mapping)
        windows = dict(flat.pop("discriminator", None) or {}).get("windows")
        if windows is not None:
            flat["discriminator_windows"] = windows
        return typed_config(cls, flat)


def _typed(cfg) -> GeneratorRunConfig:
    return cfg if isinstance(cfg, GeneratorRunConfig) else GeneratorRunConfig.from_config(cfg)


def default_config() -> dict:
    """The default run config (``configs/generator.yaml``, paper values) as a dict.

    Public API: a starting point a caller edits and passes to :func:`train_generator`; not used by the
    CLI or :func:`train_generator` itself, which merge a ``config`` over the same file
    (:func:`~talkhead.train.engine.resolve_run_config`).
    """
    return read_yaml(DEFAULTS_PATH)


def build_mssync_config(cfg: GeneratorRunConfig | Mapping, *, data_dir: str | Path | None = None, run_dir: str | Path | None = None
                        ) -> MSSyncConfig:
    """The MS-Sync ``args`` of a generator run: released defaults, the run's ``model`` section (with its
    keypoint space: ``num_kp``, ``keypoint_space`` and ``data_dim`` from ``model.kp_dim``; FOMM's when unset) and
    its training facts (``seq_len``, ``batch_size``, learning rates, ``adam_beta_1``, loss weights,
    ``lip_loss_weight`` = the sync weight, ``syncer_pyramid`` = True, ``lip_syncer_path``).

    Raises:
        ConfigError: bad architecture values (see :class:`~talkhead.mssync.MSSyncConfig`).
    """
    cfg = _typed(cfg)
    args = MSSyncConfig.default().to_args_dict()
    args.update({k: cfg.model[k] for k in MODEL_KEYS})
    w = cfg.losses
    model = cfg.model
    args.update({
        "num_kp": FOMM_SPACE.num_kp if model.get("num_kp") is None else model["num_kp"],
        "keypoint_space": model.get("keypoint_space") or FOMM_SPACE.renderer,
        "keypoints": True, "data_dim": KP_DIM if model.get("kp_dim") is None else model["kp_dim"], "seq_len": cfg.seq_len, "batch_size": cfg.batch_size,
        "learning_rate_g": cfg.lr_g, "learning_rate_d": cfg.lr_d, "adam_beta_1": cfg.betas[0],
        "adv_loss_weight": w.adv, "seq_stream_weight": w.window, "frame_weight": w.frame,
        "lip_loss_weight": w.sync, "sup_loss_weight": w.sup, "reco_loss_weight": w.reco,
        "first_order_loss_weight": w.first_order, "syncer_pyramid": True, "lip_syncer_path": cfg.syncers,
    })
    if data_dir is not None:
        args["data_dir"] = str(data_dir)
    if run_dir is not None:
        args["out_dir"] = str(run_dir)
    return MSSyncConfig.from_dict(args, source="generator run config")


def _check_config(cfg: GeneratorRunConfig, mcfg: MSSyncConfig, syncers: SyncerPyramid) -> tuple[int, ...]:
    """Validate sizes that only fail deep inside a step, and that the syncers judge the generator's keypoint
    space; return the discriminator windows."""
    require_same_space(f"the syncer pyramid {cfg.syncers}", syncers.space, mcfg.space, "the generator's training data")
    obs, seq, bs = mcfg.obs_len, cfg.seq_len, cfg.batch_size
    if obs < 2:
        raise ConfigError(f"model.obs_len={obs}: training needs at least 2 warm-up frames (the discriminators "
                          "are conditioned on frames 1 .. obs_len-1)")
    if seq < 2:
        raise ConfigError(f"seq_len={seq} must be >= 2")
    if bs < 2 or bs % 2:
        raise ConfigError(f"batch_size={bs} must be even: the paired discriminator packs sequences 2k and 2k+1")
    windows = cfg.discriminator_windows
    windows = tuple(DISCRIMINATOR_WINDOWS[str(mcfg.dis_config)]) if windows is None else windows
    if not windows or min(windows) < 2:
        raise ConfigError(f"discriminator.windows={list(windows)} must be sizes >= 2 frames")
    too_long = [w for w in windows if len(window_starts(obs - 1, seq, w)) == 0]
    if too_long:
        raise ConfigError(f"seq_len={seq} is too short for discriminator window(s) {too_long} frames (windows "
                          f"{list(windows)}; need seq_len >= {max(windows) - obs + 1}); raise seq_len or set "
                          "discriminator.windows")
    need = WINDOW_FRAMES * 2 ** (syncers.levels - 1)
    if obs + seq < need:
        raise ConfigError(f"obs_len + seq_len = {obs + seq} frames are too few for the {syncers.levels}-level syncer "
                          f"pyramid (needs {need})")
    k = cfg.kp_smoothing
    if k < 1 or k % 2 == 0:
        raise ConfigError(f"kp_smoothing={k} must be an odd number of frames (1: off)")
    return windows


# ============================================================================================ data
class SmoothedClipStore(ClipStore):
    """:class:`~talkhead.train.data.ClipStore` whose keypoints are smoothed over time once per clip.

    ``kp_smoothing = n`` (odd) replaces frame t by the mean of frames ``t - n//2 .. t + n//2`` with
    mirror padding at the ends (``scipy.ndimage.uniform_filter1d(mode="mirror")``), the reference
    ``moving_avg_with_reflect_pad(ldks, 3)`` of ``VoxLipsDataset``; logfbank rows are untouched.
    """

    def __init__(self, data_dir, split, *, min_frames: int, kp_smoothing: int = 3):
        super().__init__(data_dir, split, min_frames=min_frames, cache=False)
        self.kp_smoothing = int(kp_smoothing)
        self._smoothed: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def get(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """``(keypoints (U, K, 6) smoothed, logfbank (4U, 26))`` of clip ``index`` (cached)."""
        if index not in self._smoothed:
            kp, lf = super().get(index)
            if self.kp_smoothing > 1 and kp.shape[0] > 1:
                kp = uniform_filter1d(kp, size=min(self.kp_smoothing, 2 * kp.shape[0] - 1), axis=0,
                                      mode="mirror").astype(np.float32)
            self._smoothed[index] = (kp, lf)
        return self._smoothed[index]


def make_windows(data_dir: str | Path, split: str, num_frames: int, hop: int, kp_smoothing: int) -> WindowDataset:
    """Training/validation windows of ``num_frames`` frames every ``hop`` frames of the smoothed clips.

    Raises:
        DataFormatError: no clip of ``split`` has ``num_frames`` usable frames.
    """
    store = SmoothedClipStore(data_dir, split, min_frames=num_frames, kp_smoothing=kp_smoothing)
    return WindowDataset(data_dir, split, num_frames, hop=hop, store=store)


def augment_batch(keypoints: torch.Tensor, logfbank: torch.Tensor, *, scale: float, translate: float,
                  audio_shift: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Random per-sequence augmentation (reference ``VoxLipsDataset.__getitem__``), from torch's global RNG.

    Args:
        keypoints: ``(B, F, K, 6)``; logfbank: ``(B, 4F, 26)``.
        scale: all 6 numbers of every keypoint times ``U(1 - scale, 1 + scale)`` (``rescale_kp``).
        translate: positions ``[x, y]`` plus ``U(-translate, translate)`` per axis (``translate_kp``), grid units.
        audio_shift: logfbank plus ``U(-r, r)``, ``r = audio_shift * (max - min)`` of the sequence.

    Returns:
        augmented copies, same shapes.
    """
    b, dev = keypoints.shape[0], keypoints.device
    u = torch.rand(b, 4).to(dev, keypoints.dtype) * 2 - 1                        # (B, 4) in [-1, 1)
    kp = keypoints * (1 + scale * u[:, 0]).view(b, 1, 1, 1)
    offset = torch.zeros(b, 1, 1, keypoints.shape[-1], device=dev, dtype=keypoints.dtype)
    offset[:, 0, 0, :2] = translate * u[:, 1:3]
    kp = kp + offset
    span = (logfbank.amax(dim=(1, 2)) - logfbank.amin(dim=(1, 2))).view(b, 1, 1)
    lf = logfbank + audio_shift * span * u[:, 3].view(b, 1, 1).to(logfbank.dtype)
    return kp, lf


# ============================================================================================ export
def mssync_export_dir(run_dir: str | Path) -> Path:
    """``RUN_DIR/mssync``: where the released-format generator (``args`` + ``model_chkpt.pt``) is written."""
    return Path(run_dir) / MSSYNC_DIRNAME


def export_mssync(generator: MSSyncGenerator, out_dir: str | Path, *, step: int) -> Path:
    """Write ``out_dir/args`` (:meth:`MSSyncConfig.to_args_file`) and
    ``out_dir/model_chkpt.pt = {'checkpoints': state_dict (CPU), 'steps': step}``, each atomically
    (temporary file + ``os.replace``), the layout ``talkhead.mssync.load_mssync`` reads.

    Returns:
        ``out_dir``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_output(out_dir / ARGS_NAME, overwrite=True) as tmp:
        generator.config.to_args_file(tmp)
    state = {k: v.detach().cpu() for k, v in generator.state_dict().items()}
    atomic_torch_save({"checkpoints": state, "steps": int(step)}, out_dir / CHECKPOINT_NAME)
    return out_dir


# ============================================================================================ the task
def _average_gradients(params: Sequence[torch.Tensor], world_size: int) -> None:
    """All-reduce (mean) the gradients of ``params`` across ranks in one flat buffer (missing grads count as 0)."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n


class GeneratorTask(TrainTask):
    """:class:`~talkhead.train.engine.TrainTask` training the MS-Sync generator against its three critics.

    Models (checkpointed): ``generator`` (:class:`~talkhead.mssync.MSSyncGenerator`),
    ``discriminator`` (:class:`~talkhead.mssync.MSSyncDiscriminator`: window + frame critics),
    ``paired_discriminator`` (:class:`PairedSequenceDiscriminator`) and the frozen ``syncers``
    (kept in the checkpoint so a resumed run uses exactly the same pyramid). Optimisers: ``gen``
    and ``dis`` (Adam). Distributed runs average gradients across ranks after each backward.

    Args:
        data_dir: training data (:mod:`talkhead.train.data`); windows of split ``"train"``, validation
            on split ``"val"`` when present.
    """

    name = "generator"

    def __init__(self, data_dir: str | Path):
        self.data_dir = Path(data_dir)

    # ---- setup
    def setup(self, ctx: RunContext) -> None:
        cfg = self.cfg = GeneratorRunConfig.from_config(ctx.config)
        self.ctx = ctx
        if not cfg.syncers:
            raise ConfigError("no syncer pyramid: pass syncers_dir (a `talkhead train syncers` run directory)")
        self.syncers = load_syncers(cfg.syncers, device=ctx.device)
        self.mcfg = build_mssync_config(cfg, data_dir=self.data_dir, run_dir=ctx.run_dir)
        self.windows = _check_config(cfg, self.mcfg, self.syncers)
        self.obs_len, self.seq_len = self.mcfg.obs_len, cfg.seq_len
        self.generator = MSSyncGenerator(self.mcfg).to(ctx.device)
        self.discriminator = MSSyncDiscriminator(self.mcfg).to(ctx.device)
        self.discriminator.windows = self.windows
        self.paired = PairedSequenceDiscriminator(self.mcfg.data_dim, self.mcfg.coord_dim_D, self.mcfg.hidden_size_D,
                                                  self.windows, num_kp=self.mcfg.num_kp).to(ctx.device)
        self.g_params = list(self.generator.parameters())
        self.d_params = list(self.discriminator.parameters()) + list(self.paired.parameters())
        self.opt_g = torch.optim.Adam(self.g_params, lr=cfg.lr_g, betas=cfg.betas)
        self.opt_d = torch.optim.Adam(self.d_params, lr=cfg.lr_d, betas=cfg.betas)
        frames = self.obs_len + self.seq_len
        k = cfg.kp_smoothing
        self.train_set = make_windows(self.data_dir, "train", frames, cfg.window_hop, k)
        # train_generator settles it; a hand-made config may not
        require_same_space("the run config", self.mcfg.space, self.train_set.store.space, f"{self.data_dir}'s data")
        try:
            val = make_windows(self.data_dir, "val", frames, frames, k)
        except DataFormatError:
            self.val_items: list[dict] = []
        else:
            n = min(len(val), cfg.val_windows)
            idx = np.linspace(0, len(val) - 1, n).round().astype(int) if n < len(val) else np.arange(len(val))
            self.val_items = [val[int(i)] for i in idx]
        self.last_val: dict = {}

    def models(self) -> dict[str, nn.Module]:
        return {"generator": self.generator, "discriminator": self.discriminator,
                "paired_discriminator": self.paired, "syncers": self.syncers}

    def optimizers(self) -> dict:
        return {"gen": self.opt_g, "dis": self.opt_d}

    def batches(self, start_step: int) -> Iterator[dict]:
        cfg = self.cfg
        return iter(self.ctx.make_loader(self.train_set, cfg.batch_size, start_step=start_step,
                                         total_steps=cfg.steps, seed=cfg.seed, num_workers=cfg.num_workers))

    # ---- one step
    def learning_rates(self, step: int) -> tuple[float, float]:
        """``(lr_g, lr_d)`` of 1-based ``step``: the base rates, times ``lr_decay_gamma`` once
        ``step > lr_decay_step`` (when ``lr_decay_step > 0``)."""
        cfg = self.cfg
        factor = cfg.lr_decay_gamma if 0 < cfg.lr_decay_step < step else 1.0
        return cfg.lr_g * factor, cfg.lr_d * factor

    def _sync_loss(self, x: torch.Tensor, x_rec: torch.Tensor, x_pred: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """Multi-scale AV synchrony loss on ``[x_0, x_rec, x_pred]`` ``(B, O+S, K, 6)`` vs ``audio (B, 4(O+S), 26)``."""
        seq = torch.cat([x[:, :1], x_rec, x_pred], dim=1)
        return pyramid_sync_loss(self.syncers, seq, audio)

    def _step_optimizer(self, opt: torch.optim.Optimizer, params: list, loss: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.ctx.world_size > 1:
            _average_gradients(params, self.ctx.world_size)
        clip = self.cfg.grad_clip
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(params, clip)
        opt.step()

    def train_step(self, batch: dict, step: int) -> dict[str, float]:
        cfg, dev = self.cfg, self.ctx.device
        lr_g, lr_d = self.learning_rates(step)
        for opt, lr in ((self.opt_g, lr_g), (self.opt_d, lr_d)):
            for group in opt.param_groups:
                group["lr"] = lr
        aug = cfg.augment
        x, audio = augment_batch(batch["keypoints"].to(dev), batch["logfbank"].to(dev), scale=aug.scale,
                                 translate=aug.translate, audio_shift=aug.audio_shift)
        obs = self.obs_len
        w = cfg.losses
        self.generator.train()
        self.discriminator.train()
        self.paired.train()
        x_rec, x_pred = self.generator(x[:, :obs], audio)
        if x_rec.numel() == 0:
            x_rec = x[:, 1:obs]
        x_cond, x_gt = x[:, 1:obs], x[:, obs:]

        # ---- critics (hinge); the generator's output is detached
        self.discriminator.requires_grad_(True)
        self.paired.requires_grad_(True)
        fake = x_pred.detach()
        d_main, d_win, d_frame, f_mean, r_mean = self.discriminator.compute_dis_loss(x, fake)
        d_pair = hinge_d_loss(self.paired(x_cond, x_gt), self.paired(x_cond, fake))
        d_loss = d_main + w.paired * d_pair
        self._step_optimizer(self.opt_d, self.d_params, d_loss)
        if self.ctx.world_size > 1:  # spectral-norm power-iteration vectors: keep rank 0's
            for buf in list(self.discriminator.buffers()) + list(self.paired.buffers()):
                dist.broadcast(buf, 0)

        # ---- generator
        self.discriminator.requires_grad_(False)
        self.paired.requires_grad_(False)
        g_main, g_win, g_frame = self.discriminator.compute_gen_loss(x, x_pred)
        g_pair = hinge_g_loss(self.paired(x_cond, x_pred))
        adv = g_main + w.paired * g_pair
        sync = self._sync_loss(x, x_rec, x_pred, audio)
        sup = l2_loss(x_pred, x_gt)
        reco = l2_loss(x_rec, x_cond)
        fo = first_order_loss(x_pred)
        g_loss = w.adv * adv + w.sync * sync + w.sup * sup + w.reco * reco + w.first_order * fo
        self._step_optimizer(self.opt_g, self.g_params, g_loss)
        self.discriminator.requires_grad_(True)
        self.paired.requires_grad_(True)
        return {"loss": g_loss.item(), "g_adv": adv.item(), "g_window": g_win.item(), "g_frame": g_frame.item(),
                "g_paired": g_pair.item(), "sync": sync.item(), "sup": sup.item(), "reco": reco.item(),
                "first_order": fo.item(), "d_loss": d_loss.item(), "d_window": d_win.item(),
                "d_frame": d_frame.item(), "d_paired": d_pair.item(), "d_real": float(r_mean),
                "d_fake": float(f_mean), "lr_g": lr_g, "lr_d": lr_d}

    # ---- validation / export
    @torch.no_grad()
    def validate(self, step: int) -> dict[str, float]:
        """Deterministic metrics of the generator on the fixed ``"val"`` windows (no augmentation):
        ``sync`` (the synchrony loss), ``sup`` and ``reco`` (L2), ``first_order``."""
        if not self.val_items:
            return {}
        self.generator.eval()
        dev, obs = self.ctx.device, self.obs_len
        bs = max(2, self.cfg.batch_size)
        sums, count = np.zeros(4), 0
        for i in range(0, len(self.val_items), bs):
            chunk = self.val_items[i:i + bs]
            x = torch.stack([it["keypoints"] for it in chunk]).to(dev)
            audio = torch.stack([it["logfbank"] for it in chunk]).to(dev)
            x_rec, x_pred = self.generator(x[:, :obs], audio)
            vals = [self._sync_loss(x, x_rec, x_pred, audio), l2_loss(x_pred, x[:, obs:]),
                    l2_loss(x_rec, x[:, 1:obs]), first_order_loss(x_pred)]
            sums += np.array([float(v) for v in vals]) * len(chunk)
            count += len(chunk)
        self.generator.train()
        sums /= count
        self.last_val = {"sync": float(sums[0]), "sup": float(sums[1]), "reco": float(sums[2]),
                         "first_order": float(sums[3]), "loss": float(sums[0])}
        return dict(self.last_val)

    def on_checkpoint(self, step: int) -> None:
        """After each ``checkpoint.pt``: rewrite the released-format model in ``RUN_DIR/mssync/``."""
        export_mssync(self.generator, mssync_export_dir(self.ctx.run_dir), step=step)

    def final_metrics(self) -> dict:
        return {"val": dict(self.last_val), "mssync_dir": str(mssync_export_dir(self.ctx.run_dir)),
                "generator_parameters": int(sum(p.numel() for p in self.generator.parameters()))}


def train_generator(data_dir: str | Path, run_dir: str | Path, *, syncers_dir: str | Path | None,
                    config: str | Path | Mapping | None = None, overrides: Mapping | None = None,
                    resume: bool = False, progress: ProgressFn | None = None) -> dict:
    """Train the MS-Sync generator (GAN) on ``data_dir`` into ``run_dir``, guided by a frozen syncer pyramid.

    Args:
        data_dir: training data (:mod:`talkhead.train.data`): windows of ``obs_len + seq_len`` frames
            (25 fps) of split ``"train"``; split ``"val"`` (if any) for validation.
        run_dir: output folder: ``config.yaml``, ``checkpoint.pt``, ``metrics.jsonl``,
            ``final_metrics.json`` and the released-format model ``RUN_DIR/mssync/{args,model_chkpt.pt}``
            (loadable with ``talkhead.mssync.load_mssync(RUN_DIR / "mssync")``).
        syncers_dir: the syncer pyramid: a ``talkhead train syncers`` run directory, its
            ``checkpoint.pt`` or a ``save_syncers`` file. May be ``None`` when resuming (the path
            saved in the run config is used); a different path on resume raises ConfigError.
        config: a YAML path or mapping overriding ``configs/generator.yaml`` (paper values);
            overrides: dotted ``{"model.coord_dim": 64}`` CLI-style overrides applied last.
        resume: continue from ``run_dir/checkpoint.pt`` (only ``steps``, ``*_every``, ``num_workers``,
            ``device`` may change); losses continue exactly as in an uninterrupted run.
        progress: called on rank 0 with :class:`~talkhead.train.engine.TrainEvent`.

    Returns:
        final metrics ``{"step", "val": {"sync", "sup", "reco", "first_order", "loss"}, "mssync_dir",
        "generator_parameters"}`` (``val`` empty without a ``"val"`` split).

    Raises:
        ConfigError: unknown keys/bad values, odd batch, sequences too short for the critics' windows or
            the syncer pyramid, no syncers. CheckpointError: unreadable syncers or training checkpoint.
        DataFormatError: no clip long enough. OutputError, NonFiniteLossError, TrainingInterrupted: see
            :func:`talkhead.train.engine.run_training`.
    """
    cfg = resolve_run_config(DEFAULTS_PATH, run_dir, resume=resume, config=config, overrides=overrides)
    settle_run_space(cfg["model"], data_dir, resume=resume)  # the generator speaks the data's keypoint space
    if syncers_dir is not None:
        cfg["syncers"] = str(Path(syncers_dir).expanduser().absolute())
    elif not resume and not cfg.get("syncers"):
        raise ConfigError("train_generator needs syncers_dir (a `talkhead train syncers` run directory)")
    return run_training(GeneratorTask(data_dir), run_dir, cfg, resume=resume, progress=progress)


__all__ = [
    "DEFAULTS_PATH",
    "GeneratorTask",
    "PairedSequenceDiscriminator",
    "SmoothedClipStore",
    "augment_batch",
    "build_mssync_config",
    "default_config",
    "export_mssync",
    "first_order_loss",
    "hinge_d_loss",
    "hinge_g_loss",
    "l2_loss",
    "make_windows",
    "mssync_export_dir",
    "train_generator",
    "window_starts",
]
