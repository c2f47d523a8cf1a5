"""Expected state-dict layout of ``GFPGANv1.4.pth`` (TencentARC/GFPGAN release v1.3.0), and its check.

The released file is a ``torch.save``d dict ``{"params_ema": state_dict}`` (the EMA generator
weights); inference reads ``params_ema`` only. :func:`expected_layout` builds the network on torch's
``meta`` device (shapes without memory); :func:`check_state_dict` compares a file's entry with it,
strictly (the decoder's stored noise buffers ``stylegan_decoder.noises.noise{i}`` included: they
are what makes restoration deterministic).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Optional

import torch

from ..checkpoints import state_dict_diff, state_dict_shapes
from ..errors import StateDictMismatchError
from .model import GFPGANConfig, GFPGANv1Clean

__all__ = ["ENTRY", "expected_layout", "check_state_dict", "config_from_state_dict"]

ENTRY = "params_ema"
"""The top-level entry of the released file that holds the weights inference uses."""

Shape = tuple[int, ...]


def expected_layout(config: Optional[GFPGANConfig] = None) -> dict[str, Shape]:
    """``{key: shape}`` of a GFPGANv1Clean state dict (default: v1.4's widths) in ``state_dict()`` order."""
    with torch.device("meta"):
        model = GFPGANv1Clean(config)
    return state_dict_shapes(model)


def config_from_state_dict(state_dict: Mapping[str, Any]) -> GFPGANConfig:
    """The :class:`GFPGANConfig` whose widths a state dict in the released key layout has (e.g. a tiny
    random-weight test file), read from a few shapes; :func:`check_state_dict` then checks every key.

    Raises:
        ValueError: a key it reads is missing or has an unusable shape.
    """
    try:
        noises = sum(1 for k in state_dict if str(k).startswith("stylegan_decoder.noises.noise"))
        out_size = 2 ** ((noises - 1) // 2 + 2)
        c4 = int(state_dict["stylegan_decoder.constant_input.weight"].shape[1])
        narrow = c4 / 512
        nsf = int(state_dict["stylegan_decoder.style_mlp.1.weight"].shape[0])
        num_mlp = sum(1 for k in state_dict if str(k).startswith("stylegan_decoder.style_mlp.")
                      and str(k).endswith(".weight"))
        linear_out = int(state_dict["final_linear.weight"].shape[0])
        log = int(math.log2(out_size))
        multiplier = 2
        if out_size >= 64:  # the 64 px level's decoder width is 256 x multiplier x narrow
            c64 = int(state_dict["stylegan_decoder.to_rgbs.3.modulated_conv.weight"].shape[2])
            multiplier = max(1, round(c64 / (256 * narrow)))
        sft_out = int(state_dict["condition_scale.0.2.weight"].shape[0])
        sft_in = int(state_dict["condition_scale.0.0.weight"].shape[0])
        return GFPGANConfig(out_size=out_size, num_style_feat=nsf, channel_multiplier=multiplier, narrow=narrow,
                            num_mlp=num_mlp, different_w=linear_out != nsf or log * 2 - 2 == 1,
                            sft_half=sft_out == sft_in)
    except (KeyError, IndexError, AttributeError, TypeError, ValueError, ZeroDivisionError) as exc:
        raise ValueError(f"not a GFPGANv1Clean state dict ({type(exc).__name__}: {exc})") from None


def check_state_dict(state_dict: Any, what: str, config: Optional[GFPGANConfig] = None) -> dict[str, Any]:
    """Check keys and shapes of a GFPGAN state dict against :func:`expected_layout` (default: v1.4).

    Returns:
        The state dict as a plain ``dict``.

    Raises:
        StateDictMismatchError: not a mapping, or missing / unexpected / wrong-shape keys (all listed).
    """
    if not isinstance(state_dict, Mapping):
        raise StateDictMismatchError(f"{what}: a GFPGAN '{ENTRY}' entry is a state dict (a mapping of parameter "
                                     f"names to tensors), not {type(state_dict).__name__}")
    diff = state_dict_diff(expected_layout(config), state_dict)
    if diff:
        raise StateDictMismatchError(diff.report(what))
    return dict(state_dict)
