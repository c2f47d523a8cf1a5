"""FOMM renderer (First Order Motion Model, Siarohin et al., NeurIPS 2019), checkpoint-compatible with
the official ``first-order-model`` ``vox-adv-cpk.pth.tar``.

Typical use::

    fomm = load_fomm(default_config_path(), "vox-adv-cpk.pth.tar", device="cpu")
    encoding = fomm.encode_source(source)       # source (1, 3, S, S) in [0, 1]; encoding.kp_source (1, 10, ...)
    frames = fomm.render(encoding, kp_driving)  # kp_driving (b, 10, 2) + (b, 10, 2, 2), as many batches as needed

Keypoints live in ``[-1, 1]`` of the keypoint heatmap grid (x = column, y = row); images in ``[0, 1]``.
"""
from .config import FOMMConfig, default_config_path
from .dense_motion import DenseMotionNetwork
from .discriminator import MultiScaleDiscriminator
from .generator import OcclusionAwareGenerator
from .keypoint_detector import KPDetector
from .model import FOMM, FOMMSourceEncoding, load_fomm
from .motion import movement_scale, relative_kp

__all__ = [
    "FOMM",
    "FOMMConfig",
    "FOMMSourceEncoding",
    "DenseMotionNetwork",
    "KPDetector",
    "MultiScaleDiscriminator",
    "OcclusionAwareGenerator",
    "default_config_path",
    "load_fomm",
    "movement_scale",
    "relative_kp",
]
