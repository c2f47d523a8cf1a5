"""The MS-Sync syncer pyramid (paper sec. 3.1, eq. 2): pyramid ops, models and the pyramid file.

A *syncer* embeds a short window of keypoint motion and the speech heard during it into a shared
space where aligned pairs have a high cosine similarity. The *pyramid* has 4 syncers, one per time
scale (:data:`LEVEL_MS` = 200, 400, 800, 1600 ms):

* level 1 sees the raw streams: 5 video frames (25 fps) of keypoints ``(5, K, 6)`` (K = 10 for FOMM) and the 20
  logfbank rows ``(20, 26)`` heard during them (frame t <-> rows 4t..4t+3);
* level ``l > 1`` sees the same number of frames of both streams after ``l - 1`` blur-and-halve
  steps (:func:`blur_halve`: centred 7-tap moving average with reflect padding, then every 2nd
  sample; reference ``moving_avg_with_reflect_pad_torch(a, 7)[::2]`` in ``nets/utils.py``, applied
  to keypoints and to logfbank alike as in ``nets/trainer.py`` ``lip_sync_pyramid_loss``), so its
  5-frame windows span 400, 800, 1600 ms.

Score (eq. 2): ``s(x, a) = cos(E_x(x), E_a(a))``. This module is the model only, shared by training
(:mod:`talkhead.train.syncers`: InfoNCE, eq. 3-5, and the generator's sync loss) and evaluation
(:mod:`talkhead.train.evaluate`: AV offset / confidence per scale).

The reference repository (https://github.com/LouisBearing/HMo-audio) lacks its syncer module
(``lip_syncer_train``), so the encoders are ours: 1-D convolutions over time that keep the 5-step
order, then an MLP, then L2 normalisation. The keypoint encoder sees each window minus its temporal
mean (invariant to where the face is, i.e. to identity and framing); the audio encoder sees each
window minus its mean (invariant to recording gain).

Files: :func:`save_syncers` writes a weights-only pyramid file ``{"format", "version", "config",
"state_dict"}``; :func:`read_syncer_file` reads it back; :func:`syncers_from_state` builds a frozen
pyramid from a model config and a state dict (what a training checkpoint holds, see
:func:`talkhead.train.syncers.load_syncers`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checkpoints import load_checkpoint, load_state_dict_checked
from ..constants import KP_DIM, LOGFBANK_PER_VIDEO_FRAME, N_FILT, NUM_KP
from ..keypoints import FOMM_SPACE, KeypointSpace
from ..errors import CheckpointError, ConfigError
from ..io import atomic_write

WINDOW_FRAMES = 5
"""Video frames per syncer window (200 ms at 25 fps at level 1)."""
WINDOW_ROWS = WINDOW_FRAMES * LOGFBANK_PER_VIDEO_FRAME
"""logfbank rows per syncer window (20 at 100 Hz)."""
LEVEL_MS = (200, 400, 800, 1600)
"""Time span of one window at each pyramid level, milliseconds."""
PYRAMID_FORMAT = "talkhead-syncer-pyramid"
"""``format`` of a :func:`save_syncers` file."""


def level_name(level: int) -> str:
    """``"200ms"``, ``"400ms"``, ... for 0-based pyramid ``level``."""
    return f"{WINDOW_FRAMES * 40 * 2 ** level}ms"


# ============================================================================================ pyramid ops
def blur_halve(x: torch.Tensor, kernel_size: int = 7, dim: int = 1) -> torch.Tensor:
    """Blur-and-halve along ``dim``: centred moving average of ``kernel_size`` (odd) with reflect
    padding, keeping samples ``0, 2, 4, ...``.

    Output sample ``j`` is ``mean(x[2j - h .. 2j + h])`` with ``h = kernel_size // 2`` and
    ``x[-i] = x[i]``, ``x[L-1+i] = x[L-1-i]`` (reflection without repeating the edge); output length
    ``ceil(L / 2)``. Equals the reference ``moving_avg_with_reflect_pad_torch(x, n)[::2]``.

    Args:
        x: any shape with ``L = x.shape[dim] > kernel_size // 2``.

    Raises:
        ValueError: even kernel or a sequence too short to reflect.
    """
    if kernel_size % 2 != 1:
        raise ValueError(f"kernel_size must be odd, got {kernel_size}")
    h = kernel_size // 2
    length = x.shape[dim]
    if length <= h:
        raise ValueError(f"sequence of length {length} is too short for a {kernel_size}-tap reflect-padded blur")
    moved = x.movedim(dim, -1)
    shape = moved.shape
    flat = moved.reshape(-1, 1, length)
    padded = F.pad(flat, (h, h), mode="reflect")
    out = F.avg_pool1d(padded, kernel_size, stride=2)
    return out.reshape(*shape[:-1], out.shape[-1]).movedim(-1, dim)


def pyramid_frames(num_frames: int, levels: int) -> int:
    """Largest multiple of ``2**(levels-1)`` not above ``num_frames`` (what :func:`build_pyramid` keeps)."""
    unit = 2 ** (levels - 1)
    return (num_frames // unit) * unit


def build_pyramid(keypoints: torch.Tensor, logfbank: torch.Tensor, levels: int = 4,
                  kernel_size: int = 7, *, partial: bool = False) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Multi-scale inputs of the syncer pyramid.

    Args:
        keypoints: ``(B, F, K, d)`` keypoint sequences at 25 fps.
        logfbank: ``(B, 4F', 26)`` aligned logfbank (frame t <-> rows 4t..4t+3), ``F' >= F``.
        levels: pyramid depth (4 in the paper).
        kernel_size: blur width of :func:`blur_halve` (7 in the reference).
        partial: for short clips (evaluation): skip the minimum-length check and stop at the first
            level that cannot be blurred (``F_l <= kernel_size // 2``), returning fewer levels.

    Returns:
        ``levels`` pairs ``(kp_l (B, F / 2**l, K, d), lf_l (B, 4F / 2**l, 26))`` for ``l = 0..levels-1``
        after cropping both streams to ``F = pyramid_frames(F, levels)`` frames, so every level keeps
        exactly 4 logfbank rows per frame (fewer pairs with ``partial``).

    Raises:
        ValueError: without ``partial``, fewer than ``5 * 2**(levels-1)`` frames (the top level would
            have no window); fewer than ``4F`` logfbank rows.
    """
    n = pyramid_frames(keypoints.shape[1], levels)
    if not partial and n < WINDOW_FRAMES * 2 ** (levels - 1):
        raise ValueError(f"{keypoints.shape[1]} frames are too few for a {levels}-level syncer pyramid "
                         f"(need {WINDOW_FRAMES * 2 ** (levels - 1)})")
    if logfbank.shape[1] < LOGFBANK_PER_VIDEO_FRAME * n:
        raise ValueError(f"logfbank has {logfbank.shape[1]} rows, need {LOGFBANK_PER_VIDEO_FRAME * n}")
    kp, lf = keypoints[:, :n], logfbank[:, :LOGFBANK_PER_VIDEO_FRAME * n]
    out = [(kp, lf)]
    for _ in range(levels - 1):
        if partial and kp.shape[1] <= kernel_size // 2:
            break
        kp, lf = blur_halve(kp, kernel_size, dim=1), blur_halve(lf, kernel_size, dim=1)
        out.append((kp, lf))
    return out


def sliding_windows(kp: torch.Tensor, lf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All aligned windows of one level, one per start frame ``p = 0 .. P-1`` with ``P = F - 4``.

    Args:
        kp: ``(B, F, K, d)``; lf: ``(B, 4F, 26)``.

    Returns:
        ``(x (B, P, 5, K, d), a (B, P, 20, 26))``: ``x[:, p] = kp[:, p:p+5]``,
        ``a[:, p] = lf[:, 4p:4p+20]`` (start-aligned, as the reference ``lip_sync_pyramid_loss``).
    """
    x = kp.unfold(1, WINDOW_FRAMES, 1).permute(0, 1, 4, 2, 3)
    a = lf.unfold(1, WINDOW_ROWS, LOGFBANK_PER_VIDEO_FRAME).permute(0, 1, 3, 2)
    p = min(x.shape[1], a.shape[1])
    return x[:, :p], a[:, :p]


# ============================================================================================ models
@dataclass(frozen=True)
class SyncerConfig:
    """Syncer-pyramid hyper-parameters (the ``model`` section of the run config).

    ``num_kp``, ``kp_dim`` and ``keypoint_space`` are the keypoint space the keypoint encoders read
    (:attr:`space`; ``train syncers`` sets them from its data's manifest); a config without them (runs and
    files written before they existed) means FOMM's 10 keypoints with jacobians.
    """

    levels: int = 4
    kernel_size: int = 7
    hidden: int = 256
    embed_dim: int = 128
    kp_scale: float = 10.0
    num_kp: int = NUM_KP
    kp_dim: int = KP_DIM
    keypoint_space: str = FOMM_SPACE.renderer

    @classmethod
    def from_mapping(cls, m: Mapping) -> "SyncerConfig":
        """Build from a mapping, ignoring unknown keys (a key set to ``None`` keeps its default). Raises
        ConfigError on bad values."""
        kinds = {"kp_scale": float, "keypoint_space": str}
        try:
            cfg = cls(**{k: kinds.get(k, int)(m[k]) for k in cls.__dataclass_fields__ if m.get(k) is not None})
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"bad syncer model config {dict(m)!r}: {exc}") from None
        if not 1 <= cfg.levels <= 6 or cfg.kernel_size % 2 != 1 or min(cfg.hidden, cfg.embed_dim) < 1:
            raise ConfigError(f"bad syncer model config {cfg}")
        try:
            cfg.space
        except ValueError as exc:
            raise ConfigError(f"bad syncer model config {cfg}: {exc}") from None
        return cfg

    @property
    def space(self) -> KeypointSpace:
        """The :class:`~talkhead.keypoints.KeypointSpace` of the keypoint windows the syncers judge.

        Raises:
            ValueError: a count below 1 or a ``kp_dim`` other than 6 or 2.
        """
        return KeypointSpace.from_kp_dim(self.keypoint_space, self.num_kp, self.kp_dim)


class KeypointEncoder(nn.Module):
    """``(N, 5, K, d)`` keypoint window -> ``(N, D)`` unit-norm embedding (``K = num_kp``, ``d = kp_dim``:
    10 x 6 by default).

    The window minus its temporal mean, times ``kp_scale`` (keypoint motion is a few hundredths of
    the [-1, 1] grid; the factor brings encoder inputs to order 1), is read as a ``K d``-channel (60)
    sequence of 5 steps by two 3-tap convolutions, flattened (keeping the order of the 5 steps) and
    mapped by a 2-layer MLP.
    """

    def __init__(self, hidden: int, embed_dim: int, kp_scale: float = 10.0, *, num_kp: int = NUM_KP,
                 kp_dim: int = KP_DIM):
        super().__init__()
        self.kp_scale = float(kp_scale)
        c = num_kp * kp_dim
        self.conv = nn.Sequential(nn.Conv1d(c, hidden, 3, padding=1), nn.LeakyReLU(0.2),
                                  nn.Conv1d(hidden, hidden, 3, padding=1), nn.LeakyReLU(0.2))
        self.head = nn.Sequential(nn.Linear(hidden * WINDOW_FRAMES, hidden), nn.LeakyReLU(0.2),
                                  nn.Linear(hidden, embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x - x.mean(dim=1, keepdim=True)) * self.kp_scale
        h = self.conv(x.flatten(2).transpose(1, 2))  # (N, K d, 5)
        return F.normalize(self.head(h.flatten(1)), dim=-1)


class AudioEncoder(nn.Module):
    """``(N, 20, 26)`` logfbank window -> ``(N, D)`` unit-norm embedding.

    The window minus its mean is read as 26 channels over 20 rows; two stride-2 convolutions bring
    the 20 rows (10 ms) to 5 steps (40 ms, one per video frame), then flatten + 2-layer MLP.
    """

    def __init__(self, hidden: int, embed_dim: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv1d(N_FILT, hidden, 3, padding=1), nn.LeakyReLU(0.2),
                                  nn.Conv1d(hidden, hidden, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
                                  nn.Conv1d(hidden, hidden, 4, stride=2, padding=1), nn.LeakyReLU(0.2))
        self.head = nn.Sequential(nn.Linear(hidden * WINDOW_FRAMES, hidden), nn.LeakyReLU(0.2),
                                  nn.Linear(hidden, embed_dim))

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        a = a - a.mean(dim=(1, 2), keepdim=True)
        h = self.conv(a.transpose(1, 2))  # (N, hidden, 5)
        return F.normalize(self.head(h.flatten(1)), dim=-1)


class Syncer(nn.Module):
    """One pyramid level: ``(x (N, 5, K, d), a (N, 20, 26)) -> (e_x (N, D), e_a (N, D))``, unit norm.

    The sync score of a pair is ``(e_x * e_a).sum(-1)`` (cosine similarity, paper eq. 2).
    """

    def __init__(self, hidden: int = 256, embed_dim: int = 128, kp_scale: float = 10.0, *, num_kp: int = NUM_KP,
                 kp_dim: int = KP_DIM):
        super().__init__()
        self.kp_encoder = KeypointEncoder(hidden, embed_dim, kp_scale, num_kp=num_kp, kp_dim=kp_dim)
        self.audio_encoder = AudioEncoder(hidden, embed_dim)

    def forward(self, x: torch.Tensor, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.kp_encoder(x), self.audio_encoder(a)


class SyncerPyramid(nn.Module):
    """Four (``config.levels``) independent syncers over the blur-and-halve pyramid.

    ``forward(keypoints (B, F, K, d), logfbank (B, 4F, 26))`` returns, per level ``l``, the
    embeddings of every window: ``(e_x (B, P_l, D), e_a (B, P_l, D))`` with
    ``P_l = F / 2**l - 4`` (``F`` cropped to a multiple of ``2**(levels-1)``); window ``p`` of
    level ``l`` starts at original frame ``p * 2**l``.
    """

    def __init__(self, config: SyncerConfig | Mapping | None = None):
        super().__init__()
        cfg = config if isinstance(config, SyncerConfig) else SyncerConfig.from_mapping(config or {})
        self.config = cfg
        self.syncers = nn.ModuleList(Syncer(cfg.hidden, cfg.embed_dim, cfg.kp_scale, num_kp=cfg.num_kp,
                                            kp_dim=cfg.kp_dim) for _ in range(cfg.levels))

    @property
    def space(self) -> KeypointSpace:
        """The keypoint space its keypoint encoders read (``config.space``)."""
        return self.config.space

    @property
    def levels(self) -> int:
        """Number of syncers, one per pyramid level (4 in MS-Sync: 200, 400, 800, 1600 ms windows)."""
        return self.config.levels

    def pyramid(self, keypoints: torch.Tensor, logfbank: torch.Tensor, *, partial: bool = False
                ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """:func:`build_pyramid` with this pyramid's depth and kernel."""
        return build_pyramid(keypoints, logfbank, self.config.levels, self.config.kernel_size, partial=partial)

    def embed_level(self, level: int, kp: torch.Tensor, lf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings of all windows of one level's inputs ``kp (B, F_l, K, d)``, ``lf (B, 4F_l, 26)``."""
        x, a = sliding_windows(kp, lf)
        b, p = x.shape[:2]
        e_x, e_a = self.syncers[level](x.reshape(b * p, *x.shape[2:]), a.reshape(b * p, *a.shape[2:]))
        return e_x.reshape(b, p, -1), e_a.reshape(b, p, -1)

    def embed_pyramid(self, pyramid: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Embeddings of every window of pre-built pyramid levels (see :func:`build_pyramid`)."""
        return [self.embed_level(l, kp, lf) for l, (kp, lf) in enumerate(pyramid)]

    def forward(self, keypoints: torch.Tensor, logfbank: torch.Tensor | None = None
                ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """``forward(keypoints (B, F, K, d), logfbank (B, 4F, 26))``, or ``forward(pyramid)`` with a
        pre-built list of levels."""
        if logfbank is None:
            return self.embed_pyramid(keypoints)
        return self.embed_pyramid(self.pyramid(keypoints, logfbank))


# ============================================================================================ files
def syncers_from_state(model_config: Mapping, state_dict: Mapping, what: str, *,
                       device: str | torch.device = "cpu") -> SyncerPyramid:
    """A frozen, eval-mode :class:`SyncerPyramid` of ``model_config`` with ``state_dict`` loaded.

    Args:
        model_config: :class:`SyncerConfig` fields (a run config's ``model`` section).
        state_dict: the pyramid's parameters; what: the source, quoted in errors.

    Raises:
        ConfigError: bad ``model_config``; StateDictMismatchError: the layout differs.
    """
    model = SyncerPyramid(SyncerConfig.from_mapping(model_config))
    load_state_dict_checked(model, state_dict, f"syncer pyramid {what}")
    model.eval().requires_grad_(False)
    return model.to(device)


def read_syncer_file(path: str | Path) -> dict | None:
    """Load ``path`` (``weights_only``); return it if it is a :func:`save_syncers` file, else ``None``
    (e.g. a training checkpoint).

    Raises:
        CheckpointError: missing, unreadable or corrupt file.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no syncer checkpoint at {path}")
    raw = load_checkpoint(path)  # raises CheckpointError for unreadable, corrupt or unsafe files
    return raw if isinstance(raw, dict) and raw.get("format") == PYRAMID_FORMAT else None


def save_syncers(model: SyncerPyramid, path: str | Path) -> Path:
    """Write a weights-only syncer file ``{"format", "version", "config", "state_dict"}`` (atomic).

    Public API (a compact pyramid file for :func:`read_syncer_file` / ``talkhead.train.syncers.load_syncers``);
    not used by the CLI, whose training runs keep the pyramid in ``RUN_DIR/checkpoint.pt``.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        OutputError: the folder or file cannot be written (``path`` keeps its old content then;
            :func:`talkhead.io.atomic_write`).
    """
    path = Path(path)
    atomic_write(path, lambda f: torch.save({"format": PYRAMID_FORMAT, "version": 1, "config": asdict(model.config),
                                             "state_dict": model.state_dict()}, f))
    return path


__all__ = ["WINDOW_FRAMES", "WINDOW_ROWS", "LEVEL_MS", "PYRAMID_FORMAT", "level_name", "blur_halve",
           "pyramid_frames", "build_pyramid", "sliding_windows", "SyncerConfig", "KeypointEncoder", "AudioEncoder",
           "Syncer", "SyncerPyramid", "syncers_from_state", "read_syncer_file", "save_syncers"]
