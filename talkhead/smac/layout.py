"""Expected state-dict layouts of SMAC's two released files, from the config alone (no weights built).

The networks are instantiated on torch's ``meta`` device (shapes without memory). The checkpoint
store (:mod:`talkhead.store`) compares ``net_g_latest.pth`` and ``net_motion_estimator_latest.pth``
against these listings before it records them; :func:`talkhead.smac.load_smac` does the real load
once, when rendering.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from ..checkpoints import state_dict_shapes
from .config import SMACConfig, default_config_path

Shape = tuple[int, ...]

GENERATOR_ENTRIES = ("params_ema", "params")
"""Top-level entries of ``net_g_latest.pth``, in the order inference prefers them (the reference
demo's ``param_key_g: params_ema``, falling back to ``params``): the first present is read."""

MOTION_ESTIMATOR_ENTRIES = ("params",)
"""The top-level entry of ``net_motion_estimator_latest.pth`` (BasicSR ``save_network``)."""


def _config(config_path: Optional[str | Path]) -> SMACConfig:
    return SMACConfig.from_yaml(config_path if config_path is not None else default_config_path())


def generator_layout(config_path: Optional[str | Path]) -> dict[str, dict[str, Shape]]:
    """``{"params": {key: shape}}`` of ``net_g`` (:class:`~talkhead.smac.AppMotionCompFormer`) for a
    reference-schema YAML (``None``: the packaged release config; 472 entries at full size). The same
    listing applies to ``params_ema``.

    Raises:
        ConfigError: the YAML is missing or invalid.
    """
    config = _config(config_path)
    with torch.device("meta"):
        return {"params": state_dict_shapes(config.build_generator())}


def motion_estimator_layout(config_path: Optional[str | Path]) -> dict[str, dict[str, Shape]]:
    """``{"params": {key: shape}}`` of ``net_motion_estimator`` (keypoint detector + dense motion,
    150 entries at full size, buffers included) for a reference-schema YAML (``None``: packaged).

    Raises:
        ConfigError: the YAML is missing or invalid.
    """
    config = _config(config_path)
    with torch.device("meta"):
        return {"params": state_dict_shapes(config.build_motion_estimator())}
