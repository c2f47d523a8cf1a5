"""SMAC renderer (Zhao, Hong, Huang, Xu, "Synergizing Motion and Appearance: Multi-Scale Compensatory
Codebooks for Talking Head Video Generation", CVPR 2025), checkpoint-compatible with the released
``net_g_latest.pth`` and ``net_motion_estimator_latest.pth`` of ``ShaelynZ/synergize-motion-appearance``.

FOMM-style motion (15 keypoints with jacobians, dense motion with occlusion) is compensated at four
scales (32/64/128/256 px) by a motion codebook and an appearance codebook through small transformers,
and decoded by a VQGAN-style decoder. Typical use::

    smac = load_smac(default_config_path(), "net_g_latest.pth", "net_motion_estimator_latest.pth")
    encoding = smac.encode_source(source)       # source (1, 3, 256, 256) in [0, 1]; encoding.kp_source (1, 15, ...)
    frames = smac.render(encoding, kp_driving)  # Keypoints (b, 15, 2) + (b, 15, 2, 2), as many batches as needed

Relative motion: :func:`relative_kp` (the reference demo's ``normalize_kp``, which is FOMM's, evaluated
with ``torch.inverse`` as the reference does; see :mod:`talkhead.smac.motion`).
Images are in ``[0, 1]`` at this interface; the networks see ``[-1, 1]`` (converted inside).
"""
from .config import SMACConfig, default_config_path
from .generator import AppMotionCompFormer
from .model import SMAC, SMACSourceEncoding, from_model_range, load_smac, to_model_range
from .motion import relative_kp
from .motion_estimator import DenseMotionNetwork, MotionEstimator

__all__ = [
    "SMAC",
    "SMACConfig",
    "SMACSourceEncoding",
    "AppMotionCompFormer",
    "DenseMotionNetwork",
    "MotionEstimator",
    "default_config_path",
    "from_model_range",
    "load_smac",
    "relative_kp",
    "to_model_range",
]
