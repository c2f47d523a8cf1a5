"""GFPGAN v1.4 face restoration (TencentARC, Apache-2.0 code; clean architecture, no custom ops),
checkpoint-compatible with the released ``GFPGANv1.4.pth``.

Typical use::

    restorer = load_gfpgan("GFPGANv1.4.pth")        # strict layout, safe loading, params_ema
    restored = restorer(faces)                      # (B, 3, 512, 512) [0, 1], FFHQ-aligned -> same

Modules: :mod:`.model` (the network), :mod:`.layout` (expected keys and shapes, the check),
:mod:`.checkpoint` (reading a file, the [0, 1] wrapper). Where it runs in a video: the restore
stage, :mod:`talkhead.restore`.
"""
from .checkpoint import GFPGANRestorer, load_gfpgan, read_state_dict
from .layout import ENTRY, check_state_dict, config_from_state_dict, expected_layout
from .model import GFPGANConfig, GFPGANv1Clean

__all__ = ["ENTRY", "GFPGANConfig", "GFPGANRestorer", "GFPGANv1Clean", "check_state_dict", "config_from_state_dict",
           "expected_layout", "load_gfpgan", "read_state_dict"]
