"""Expected state-dict layout of ``syncnet_v2.model``, and the checks every SyncNet file passes.

The released file (joonson/syncnet_python ``download_model.sh``) is a bare ``torch.save``d state
dict in torch's legacy (pre-1.6) format: 88 tensors under ``netcnnaud.``, ``netfcaud.``,
``netfclip.`` and ``netcnnlip.``. It predates BatchNorm's ``num_batches_tracked`` buffers (torch
0.4.1), so a file has either none of the 14 counters (the release) or all of them (one re-saved by a
recent torch); :func:`complete_batchnorm_counters` fills in the missing ones as zeros, as torch's own
BatchNorm loader does for old checkpoints. Any other difference is refused.

:func:`expected_layout` builds the network on torch's ``meta`` device (shapes without memory);
:func:`check_state_dict` checks what a file holds against it (the whole check of a file, with safe
loading and finite values, is :func:`talkhead.syncnet.checkpoint.read_state_dict`).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

import torch

from ..checkpoints import state_dict_diff, state_dict_shapes
from ..errors import StateDictMismatchError
from .model import SyncNet, SyncNetConfig

__all__ = ["BATCHNORM_COUNTER", "expected_layout", "complete_batchnorm_counters", "check_state_dict"]

Shape = tuple[int, ...]

BATCHNORM_COUNTER = "num_batches_tracked"
"""Suffix of the BatchNorm buffers the released file lacks (optional in every SyncNet file)."""

_WHAT = "SyncNet"


def expected_layout(config: Optional[SyncNetConfig] = None, *, counters: bool = True) -> dict[str, Shape]:
    """``{key: shape}`` of a SyncNet state dict in ``state_dict()`` order.

    Args:
        config: widths (``None``: the released ``syncnet_v2.model``: 102 entries, 88 without
            counters).
        counters: include the 14 BatchNorm ``num_batches_tracked`` buffers (shape ``()``).
    """
    with torch.device("meta"):
        model = SyncNet(config)
    layout = state_dict_shapes(model)
    if not counters:
        layout = {k: v for k, v in layout.items() if not k.endswith("." + BATCHNORM_COUNTER)}
    return layout


def complete_batchnorm_counters(state_dict: Mapping[str, Any], config: Optional[SyncNetConfig] = None) -> dict[str, Any]:
    """``state_dict`` with every BatchNorm ``num_batches_tracked`` added as ``tensor(0)`` when it has
    none of them (the released file); unchanged (a shallow copy) when it has any, so a file with only
    some counters is refused by the strict check.

    Raises:
        StateDictMismatchError: ``state_dict`` is not a mapping.
    """
    if not isinstance(state_dict, Mapping):
        raise StateDictMismatchError(f"{_WHAT}: expected a state dict (a mapping of parameter names to tensors), "
                                     f"got {type(state_dict).__name__}")
    out = dict(state_dict)
    if any(isinstance(k, str) and k.endswith("." + BATCHNORM_COUNTER) for k in out):
        return out
    for key in expected_layout(config):
        if key.endswith("." + BATCHNORM_COUNTER):
            out[key] = torch.tensor(0, dtype=torch.long)
    return out


def check_state_dict(state_dict: Any, what: str, config: Optional[SyncNetConfig] = None) -> dict[str, Any]:
    """Check keys and shapes of a SyncNet state dict against :func:`expected_layout`.

    Args:
        state_dict: what the file holds (the released file: 88 tensors).
        what: the file or a name, for messages.
        config: widths (``None``: released).

    Returns:
        The state dict with the BatchNorm counters completed (:func:`complete_batchnorm_counters`).

    Raises:
        StateDictMismatchError: not a mapping, or missing / unexpected / wrong-shape keys (all listed,
            one message).
    """
    if not isinstance(state_dict, Mapping):
        raise StateDictMismatchError(f"{what}: a SyncNet file holds a state dict (a mapping of parameter names to "
                                     f"tensors), not {type(state_dict).__name__}")
    full = complete_batchnorm_counters(state_dict, config)
    diff = state_dict_diff(expected_layout(config), full)
    if diff:
        raise StateDictMismatchError(diff.report(what))
    return full
