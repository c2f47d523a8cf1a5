"""SyncNet (Chung and Zisserman, "Out of time: automated lip sync in the wild", ACCV 2016 workshops),
checkpoint-compatible with the released ``syncnet_v2.model`` of joonson/syncnet_python.

Two streams embed 0.2 s of speech and of mouth into one space where aligned pairs are close in
Euclidean distance:

* **audio** (``netcnnaud`` + ``netfcaud``): 13 MFCCs x 20 rows at 100 Hz, ``(B, 1, 13, 20)`` ->
  six 2-D conv blocks (BatchNorm, ReLU, three max-pools) down to ``(B, 512, 1, 1)`` -> 512 -> 512 ->
  ``embed_dim`` (1024);
* **lip** (``netcnnlip`` + ``netfclip``): 5 face crops of 224 x 224, ``(B, 3, 5, 224, 224)`` ->
  six 3-D conv blocks (the first spans the 5 frames, the rest are per-frame 1 x k x k) down to
  ``(B, 512, 1, 1, 1)`` -> 512 -> 512 -> ``embed_dim``.

Embeddings are not normalised (the reference compares raw vectors with ``pairwise_distance``).
The lip stream takes frames as the reference feeds them: ``cv2.imread`` pixels, i.e. **BGR** channel
order and values 0..255 (no scaling, no mean removal); :func:`talkhead.syncnet.scoring.video_windows`
turns RGB frames into that.

The sequential indices of every layer (``netcnnaud.18.weight``, ...) are those of the reference's
``SyncNetModel.S``, so a released state dict loads with strict keys; the reference's no-op
``MaxPool2d(1, 1)`` at ``netcnnaud.3`` is an ``nn.Identity`` here (it holds no weights).
Source: https://github.com/joonson/syncnet_python ``SyncNetModel.py`` (MIT), read and rewritten.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn as nn

__all__ = ["SyncNetConfig", "SyncNet", "AUDIO_WINDOW_SHAPE", "VIDEO_WINDOW_SHAPE"]

AUDIO_WINDOW_SHAPE = (1, 13, 20)
"""One audio window fed to :meth:`SyncNet.embed_audio`: (channel, MFCC coefficient, 100 Hz row)."""
VIDEO_WINDOW_SHAPE = (3, 5, 224, 224)
"""One video window fed to :meth:`SyncNet.embed_video`: (BGR channel, frame, row, column)."""


@dataclass(frozen=True)
class SyncNetConfig:
    """Widths of a SyncNet. The released ``syncnet_v2.model`` is :meth:`released` (the defaults);
    the spatial and temporal kernel sizes are fixed by the input sizes and are not configurable.

    Attributes:
        audio_channels: output channels of the six audio conv layers (64, 192, 384, 256, 256, 512).
        lip_channels: output channels of the six lip conv layers (96, 256, 256, 256, 256, 512).
        hidden: width of the middle fully connected layer of both heads (512).
        embed_dim: embedding size (1024; the reference's ``num_layers_in_fc_layers``).
    """

    audio_channels: tuple[int, int, int, int, int, int] = (64, 192, 384, 256, 256, 512)
    lip_channels: tuple[int, int, int, int, int, int] = (96, 256, 256, 256, 256, 512)
    hidden: int = 512
    embed_dim: int = 1024

    @classmethod
    def released(cls) -> "SyncNetConfig":
        """The widths of ``syncnet_v2.model``: 13,631,616 parameters, 13,640,256 floats with the
        BatchNorm running statistics (88 tensors; 102 with the 14 ``num_batches_tracked`` buffers)."""
        return cls()

    @classmethod
    def tiny(cls) -> "SyncNetConfig":
        """A small SyncNet with the released keys and kernel sizes (for tests and demos with random
        weights): channels 8-32, hidden 32, 16-d embeddings."""
        return cls(audio_channels=(8, 16, 16, 16, 16, 32), lip_channels=(8, 16, 16, 16, 16, 32), hidden=32,
                   embed_dim=16)

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, Any]) -> "SyncNetConfig":
        """The widths a state dict in the released key layout was saved with, read from the shapes of
        its conv and linear weights (a tiny test file, or the release: :meth:`released`). Only those
        10 tensors are read; a strict check against the returned config checks the rest.

        Raises:
            ValueError: a weight it reads is missing or not a tensor of the expected rank.
        """
        def out_width(key: str, rank: int) -> int:
            value = state_dict.get(key) if isinstance(state_dict, Mapping) else None
            shape = getattr(value, "shape", None)
            if shape is None or len(shape) != rank:
                raise ValueError(f"cannot read SyncNet widths: {key} is missing or not a {rank}-d tensor")
            return int(shape[0])

        convs = (0, 4, 8, 11, 14, 18)
        return cls(audio_channels=tuple(out_width(f"netcnnaud.{i}.weight", 4) for i in convs),
                   lip_channels=tuple(out_width(f"netcnnlip.{i}.weight", 5) for i in convs),
                   hidden=out_width("netfcaud.0.weight", 2), embed_dim=out_width("netfcaud.3.weight", 2))

    def __post_init__(self) -> None:
        for name in ("audio_channels", "lip_channels"):
            value = tuple(getattr(self, name))
            if len(value) != 6 or not all(isinstance(c, int) and c > 0 for c in value):
                raise ValueError(f"SyncNetConfig.{name} must be 6 positive ints, got {value!r}")
            object.__setattr__(self, name, value)
        for name in ("hidden", "embed_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"SyncNetConfig.{name} must be a positive int, got {value!r}")


def _head(width_in: int, hidden: int, embed_dim: int) -> nn.Sequential:
    """Linear, BatchNorm1d, ReLU, Linear (indices 0..3 as the reference's ``netfc*``)."""
    return nn.Sequential(nn.Linear(width_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, embed_dim))


def _audio_trunk(ch: Sequence[int]) -> nn.Sequential:
    """The audio conv stack: (B, 1, 13, 20) -> (B, ch[5], 1, 1); indices as ``netcnnaud``."""
    c1, c2, c3, c4, c5, c6 = ch
    return nn.Sequential(
        nn.Conv2d(1, c1, 3, padding=1), nn.BatchNorm2d(c1), nn.ReLU(inplace=True),
        nn.Identity(),  # the reference's MaxPool2d(kernel 1, stride 1): a no-op, kept for the indices
        nn.Conv2d(c1, c2, 3, padding=1), nn.BatchNorm2d(c2), nn.ReLU(inplace=True),
        nn.MaxPool2d((3, 3), stride=(1, 2)),                                     # 13 x 20 -> 11 x 9
        nn.Conv2d(c2, c3, 3, padding=1), nn.BatchNorm2d(c3), nn.ReLU(inplace=True),
        nn.Conv2d(c3, c4, 3, padding=1), nn.BatchNorm2d(c4), nn.ReLU(inplace=True),
        nn.Conv2d(c4, c5, 3, padding=1), nn.BatchNorm2d(c5), nn.ReLU(inplace=True),
        nn.MaxPool2d((3, 3), stride=(2, 2)),                                     # 11 x 9 -> 5 x 4
        nn.Conv2d(c5, c6, (5, 4)), nn.BatchNorm2d(c6), nn.ReLU(),               # -> 1 x 1
    )


def _lip_trunk(ch: Sequence[int]) -> nn.Sequential:
    """The lip conv stack: (B, 3, 5, 224, 224) -> (B, ch[5], 1, 1, 1); indices as ``netcnnlip``."""
    c1, c2, c3, c4, c5, c6 = ch
    return nn.Sequential(
        nn.Conv3d(3, c1, (5, 7, 7), stride=(1, 2, 2)), nn.BatchNorm3d(c1), nn.ReLU(inplace=True),   # 5x224 -> 1x109
        nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2)),                                                    # -> 54
        nn.Conv3d(c1, c2, (1, 5, 5), stride=(1, 2, 2), padding=(0, 1, 1)), nn.BatchNorm3d(c2),
        nn.ReLU(inplace=True),                                                                        # -> 26
        nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)),                                 # -> 13
        nn.Conv3d(c2, c3, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(c3), nn.ReLU(inplace=True),
        nn.Conv3d(c3, c4, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(c4), nn.ReLU(inplace=True),
        nn.Conv3d(c4, c5, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(c5), nn.ReLU(inplace=True),
        nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2)),                                                    # -> 6
        nn.Conv3d(c5, c6, (1, 6, 6)), nn.BatchNorm3d(c6), nn.ReLU(inplace=True),                      # -> 1
    )


def _check_video_windows(frames: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``frames`` is ``(B, 3, 5, 224, 224)`` (5-frame lip windows)."""
    if frames.dim() != 5 or tuple(frames.shape[1:]) != VIDEO_WINDOW_SHAPE:
        raise ValueError(f"SyncNet video windows must be (B, 3, 5, 224, 224), got {tuple(frames.shape)}")


class SyncNet(nn.Module):
    """The two-stream SyncNet (reference ``SyncNetModel.S``), in the released state-dict layout:
    ``netcnnaud.*``, ``netfcaud.*``, ``netfclip.*``, ``netcnnlip.*``.

    Build it with :func:`talkhead.syncnet.load_syncnet` to get the released weights; a bare
    ``SyncNet()`` has torch's default random initialisation. Use in ``eval()`` mode (BatchNorm with
    running statistics), as the reference scores.
    """

    def __init__(self, config: SyncNetConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or SyncNetConfig.released()
        # Registration order = the reference's, so state_dict() lists keys in the released order.
        self.netcnnaud = _audio_trunk(config.audio_channels)
        self.netfcaud = _head(config.audio_channels[-1], config.hidden, config.embed_dim)
        self.netfclip = _head(config.lip_channels[-1], config.hidden, config.embed_dim)
        self.netcnnlip = _lip_trunk(config.lip_channels)

    def embed_audio(self, mfcc: torch.Tensor) -> torch.Tensor:
        """Audio embeddings (reference ``forward_aud``).

        Args:
            mfcc: ``(B, 1, 13, 20)`` float32: 13 MFCCs (python_speech_features layout, coefficient 0
                = log frame energy) by 20 rows at 100 Hz (0.2 s).

        Returns:
            ``(B, embed_dim)`` float32, not normalised.

        Raises:
            ValueError: a tensor of another shape.
        """
        if mfcc.dim() != 4 or tuple(mfcc.shape[1:]) != AUDIO_WINDOW_SHAPE:
            raise ValueError(f"SyncNet audio windows must be (B, 1, 13, 20), got {tuple(mfcc.shape)}")
        feat = self.netcnnaud(mfcc)
        return self.netfcaud(feat.flatten(1))

    def embed_video(self, frames: torch.Tensor) -> torch.Tensor:
        """Lip embeddings (reference ``forward_lip``).

        Args:
            frames: ``(B, 3, 5, 224, 224)`` float32: 5 consecutive 25-fps face crops, BGR, values
                0..255 (see :func:`talkhead.syncnet.scoring.video_windows`).

        Returns:
            ``(B, embed_dim)`` float32, not normalised.

        Raises:
            ValueError: a tensor of another shape.
        """
        _check_video_windows(frames)
        feat = self.netcnnlip(frames)
        return self.netfclip(feat.flatten(1))

    def lip_features(self, frames: torch.Tensor) -> torch.Tensor:
        """The lip trunk's ``(B, 512)`` features before the head (reference ``forward_lipfeat``)."""
        _check_video_windows(frames)
        return self.netcnnlip(frames).flatten(1)
