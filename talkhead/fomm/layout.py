"""Expected state-dict layout of a FOMM checkpoint, from the config alone (no weights built).

:func:`expected_layout` instantiates the keypoint detector and generator on torch's ``meta``
device, which records every parameter and buffer shape without allocating or initialising
memory (cost: ``benchmarks/README.md``, "Checkpoint checks"), and returns their keys and shapes. The checkpoint store
(:mod:`talkhead.store`) compares a downloaded ``vox-adv-cpk.pth.tar`` against it without loading
it into networks; :func:`talkhead.fomm.load_fomm` does the real load once, when animating.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from ..checkpoints import state_dict_shapes
from .config import FOMMConfig, default_config_path

Shape = tuple[int, ...]

CHECKPOINT_ENTRIES = ("kp_detector", "generator")
"""The top-level entries of ``vox-adv-cpk.pth.tar`` that inference reads (as the reference
``demo.load_checkpoints``); ``discriminator``, ``optimizer_*`` and ``epoch`` are ignored."""


def expected_layout(config: FOMMConfig) -> dict[str, dict[str, Shape]]:
    """``{entry: {key: shape}}`` of the checkpoint entries :data:`CHECKPOINT_ENTRIES` for ``config``.

    Keys are in ``state_dict()`` order, buffers included (BatchNorm ``running_mean``/``var``,
    ``num_batches_tracked``; the anti-alias kernels ``down.weight`` (3, 1, 13, 13)). For
    vox-adv-256: ``kp_detector`` 75 entries, ``generator`` 196 entries.
    """
    with torch.device("meta"):
        kp_detector = config.build_kp_detector()
        generator = config.build_generator()
    return {"kp_detector": state_dict_shapes(kp_detector), "generator": state_dict_shapes(generator)}


def layout_for_config_file(config_path: Optional[str | Path]) -> dict[str, dict[str, Shape]]:
    """:func:`expected_layout` of a FOMM YAML (``None``: the packaged ``vox-adv-256.yaml``).

    Raises:
        ConfigError: the YAML is missing or invalid.
    """
    return expected_layout(FOMMConfig.from_yaml(config_path if config_path is not None else default_config_path()))
