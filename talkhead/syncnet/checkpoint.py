"""Reading ``syncnet_v2.model`` (or a file in its layout) safely, and building a loaded SyncNet.

:func:`read_state_dict` is the one check of a SyncNet file, for :func:`load_syncnet` and for the
model store: safe loading (:func:`talkhead.checkpoints.load_checkpoint`: ``weights_only=True``, else
the allow-list unpickler; the release is in torch's legacy non-zip format, which both read), a state
dict with exactly the released keys and shapes (BatchNorm counters optional, see
:mod:`talkhead.syncnet.layout`), and finite weights.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional, Union

import torch

from ..checkpoints import load_checkpoint, load_state_dict_checked, require_finite
from ..errors import StateDictMismatchError
from .layout import check_state_dict
from .model import SyncNet, SyncNetConfig

__all__ = ["read_state_dict", "load_syncnet"]


def read_state_dict(path: Union[str, os.PathLike], config: Optional[SyncNetConfig] = None, *,
                    infer_widths: bool = False, mmap: bool = False) -> dict[str, Any]:
    """Read a SyncNet file without running code from it, and check it.

    Args:
        path: ``syncnet_v2.model`` (54,573,114 bytes) or a file in its layout.
        config: widths (``None``: the released ones, unless ``infer_widths``).
        infer_widths: take the widths from the file (:meth:`SyncNetConfig.from_state_dict`; e.g. a
            tiny random-weight file in the released key layout), then check it strictly against them.
        mmap: map the tensors instead of reading them (zip-format files only; for a check).

    Returns:
        ``{key: tensor}`` with the BatchNorm counters completed, ready for a strict ``load_state_dict``.

    Raises:
        CheckpointError: missing, empty, truncated, not a checkpoint, tampered with (a pickled global
            off the allow-list), or holding NaN/Inf weights; one line naming the file.
        StateDictMismatchError: not a state dict, or keys/shapes that differ (each one listed).
    """
    path = Path(path)
    data = load_checkpoint(path, mmap=mmap)
    if infer_widths and config is None and isinstance(data, Mapping):
        try:
            config = SyncNetConfig.from_state_dict(data)
        except ValueError as exc:
            raise StateDictMismatchError(f"{path}: {exc}") from None
    state_dict = check_state_dict(data, str(path), config)
    require_finite(state_dict, path, "SyncNet state dict")
    return state_dict


def load_syncnet(path: Union[str, os.PathLike], config: Optional[SyncNetConfig] = None, *,
                 infer_widths: bool = False, device: Union[str, torch.device] = "cpu") -> SyncNet:
    """A :class:`SyncNet` with the weights of ``path``, in eval mode on ``device``.

    Args:
        path, config, infer_widths: as :func:`read_state_dict` (by default only the released widths
            are accepted).
        device: where the model goes.

    Raises:
        The errors of :func:`read_state_dict`.
    """
    state_dict = read_state_dict(path, config, infer_widths=infer_widths)
    if config is None and infer_widths:
        config = SyncNetConfig.from_state_dict(state_dict)
    model = SyncNet(config)
    load_state_dict_checked(model, state_dict, f"SyncNet {path}")
    return model.to(device).eval()
