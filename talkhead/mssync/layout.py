"""Expected state-dict layout of an MS-Sync ``model_chkpt.pt``, from ``args`` alone (no weights built).

:func:`expected_layout` instantiates :class:`~talkhead.mssync.MSSyncGenerator` on torch's ``meta``
device (shapes without memory; cost: ``benchmarks/README.md``, "Checkpoint checks") and returns its keys and shapes.
The checkpoint store (:mod:`talkhead.store`) checks a downloaded ``model_chkpt.pt['checkpoints']``
against it; :func:`talkhead.mssync.load_mssync` does the real load once, when animating.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from ..checkpoints import state_dict_shapes
from ..errors import ConfigError
from .config import MSSyncConfig
from .generator import MSSyncGenerator

Shape = tuple[int, ...]

CHECKPOINT_ENTRIES = ("checkpoints",)
"""The entry of ``model_chkpt.pt`` that inference reads (the ``DynamicalModel`` state dict, as the
reference ``execute_model.load_model``); the trainer's other entries are ignored."""


def expected_layout(config: MSSyncConfig) -> dict[str, dict[str, Shape]]:
    """``{"checkpoints": {key: shape}}`` of a generator built from ``config``, in ``state_dict()``
    order (264 entries, 35,410,254 parameters for :meth:`MSSyncConfig.default`)."""
    with torch.device("meta"):
        model = MSSyncGenerator(config)
    return {"checkpoints": state_dict_shapes(model)}


def layout_for_config_file(config_path: Optional[str | Path]) -> dict[str, dict[str, Shape]]:
    """:func:`expected_layout` of a released ``args`` file.

    Raises:
        ConfigError: no ``args`` given, or it is missing, not JSON or lacks keys.
    """
    if config_path is None:
        raise ConfigError("an MS-Sync checkpoint needs its args file to be checked")
    return expected_layout(MSSyncConfig.from_args_file(config_path))
