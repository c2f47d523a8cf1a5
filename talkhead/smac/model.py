"""The SMAC renderer as one object, with the same interface as :class:`talkhead.fomm.FOMM`.

``load_smac`` reads the reference-schema YAML and the two released files:

- ``net_g_latest.pth``: ``{'params': state_dict, 'params_ema': state_dict}``; ``params_ema`` is used,
  falling back to ``params`` (reference ``demo.load_network`` with ``param_key_g: params_ema``);
- ``net_motion_estimator_latest.pth``: ``{'params': state_dict}``.

A leading ``module.`` (DataParallel) is stripped from keys, as the reference does; loading is strict
(keys and shapes), through :func:`talkhead.checkpoints.load_checkpoint` (no full pickle).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from ..checkpoints import load_checkpoint, load_state_dict_checked, strip_key_prefix
from ..errors import CheckpointError
from ..keypoints import Keypoints
from ..rendering import KeypointRenderer, SourceEncoding
from .config import SMACConfig
from .generator import AppMotionCompFormer
from .motion_estimator import MotionEstimator


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """``[0, 1] -> [-1, 1]`` as the reference demo's ``normalize(t, (0.5,)*3, (0.5,)*3)``: ``(x - 0.5) / 0.5``."""
    return (images - 0.5) / 0.5


def from_model_range(out: torch.Tensor) -> torch.Tensor:
    """Generator output -> frames in ``[0, 1]``: clamp to ``[-1, 1]``, then ``(x + 1) / 2``
    (reference ``tensor2img(..., min_max=(-1, 1))`` before its ``* 255`` rounding)."""
    return (out.clamp(-1.0, 1.0) + 1.0) / 2.0


@dataclass(frozen=True, eq=False)
class SMACSourceEncoding(SourceEncoding):
    """:meth:`SMAC.encode_source` of one source image: what every :meth:`SMAC.render` of it reuses.

    Attributes:
        kp_source: Keypoints ``(1, 15, 2)`` + ``(1, 15, 2, 2)`` (:class:`~talkhead.rendering.SourceEncoding`).
        latent: ``(1, 256, 32, 32)`` the encoder's latent (warped and compensated per frame).
        features: ``{256: (1, 64, 256, 256), 128: (1, 128, 128, 128), 64: (1, 128, 64, 64)}`` the
            encoder features fused into the decoder at those resolutions.
        source_down: ``(1, 3, 64, 64)`` in ``[-1, 1]``: the dense motion network's input.
    """

    latent: torch.Tensor
    features: dict
    source_down: torch.Tensor


class SMAC(KeypointRenderer):
    """SMAC motion estimator + generator, ready for inference.

    Attributes:
        motion_estimator: :class:`~talkhead.smac.MotionEstimator` (eval mode, no grads).
        generator: :class:`~talkhead.smac.AppMotionCompFormer` (eval mode, no grads).
        config: the :class:`~talkhead.smac.SMACConfig` the modules were built from.
        frame_size: side of the square frames, pixels (256).
        num_kp: keypoints per frame (15).
        device: where the modules live; inputs are moved there.
    """

    def __init__(self, motion_estimator: MotionEstimator, generator: AppMotionCompFormer, config: SMACConfig, *,
                 device: torch.device | str | None = None):
        self.config = config
        self.frame_size = int(config.frame_size)
        self.num_kp = int(config.num_kp)
        self.device = torch.device(device) if device is not None else next(generator.parameters()).device
        self.motion_estimator = motion_estimator.to(self.device).eval().requires_grad_(False)
        self.generator = generator.to(self.device).eval().requires_grad_(False)

    @classmethod
    def from_config(cls, config: SMACConfig, *, device: torch.device | str = "cpu") -> "SMAC":
        """A SMAC with freshly initialised (untrained) weights, e.g. for tests and benchmarks."""
        return cls(config.build_motion_estimator(), config.build_generator(), config, device=device)

    @property
    def dtype(self) -> torch.dtype:
        """Floating-point dtype of the weights (inputs are cast to it)."""
        return next(self.generator.parameters()).dtype

    # -- inference ------------------------------------------------------------------------------------
    def detect(self, source: Any) -> Keypoints:
        """Keypoints of images.

        Args:
            source: ``(B, 3, S, S)`` float in ``[0, 1]``, ``S = frame_size`` pixels.

        Returns:
            :class:`~talkhead.keypoints.Keypoints` with value ``(B, 15, 2)`` in ``[-1, 1]`` (x = column,
            y = row of the keypoint heatmap grid) and jacobian ``(B, 15, 2, 2)``, on ``device``.

        Raises:
            ValueError: a tensor of the wrong shape.
        """
        with torch.inference_mode():
            return Keypoints.from_dict(self.motion_estimator.estimate_kp(to_model_range(self.check_images(source))))

    def encode_source(self, source: Any, kp_source: Optional[Keypoints] = None) -> SMACSourceEncoding:
        """Encode one source image for :meth:`render`: its keypoints, the generator encoder's latent and
        multi-scale features, and the dense motion network's downsampled source (the per-source part of
        the reference ``net_g`` / ``estimate_motion_w_kp``; the rest depends on the driving keypoints).

        Keep the result while rendering that source (one encoding, many :meth:`render` calls); encode
        again after changing the weights in place.

        Args:
            source: ``(1, 3, S, S)`` float in ``[0, 1]``, ``S = frame_size`` pixels.
            kp_source: Keypoints ``(1, 15, 2)`` + ``(1, 15, 2, 2)`` to use; ``None`` runs :meth:`detect`.

        Returns:
            :class:`SMACSourceEncoding` on ``device``.

        Raises:
            ValueError: a tensor of the wrong shape, a source batch other than 1, or keypoints that are
                not :class:`~talkhead.keypoints.Keypoints` / lack jacobians.
        """
        with torch.inference_mode():
            src, kp_s = self.source_keypoints(source, kp_source)
            x = to_model_range(src)
            latent, feats = self.generator.encode(x)
            return SMACSourceEncoding(kp_source=kp_s, latent=latent, features=feats,
                                      source_down=self.motion_estimator.dense_motion_network.downsample(x))

    def render_outputs(self, encoding: SMACSourceEncoding, kp_driving: Any) -> tuple[dict, dict]:
        """:meth:`render` with the raw outputs: ``(dense_motion, generator outputs)``.

        ``dense_motion`` is :meth:`DenseMotionNetwork.motion`'s dict; the generator outputs are
        :meth:`AppMotionCompFormer.forward`'s (``out`` in about ``[-1, 1]``, not clamped). Same
        arguments and errors as :meth:`render`.
        """
        enc = self.check_encoding(encoding, SMACSourceEncoding)
        kp_d = self.check_keypoints(kp_driving, "kp_driving")
        dense = self.motion_estimator.dense_motion_network.motion(enc.source_down, kp_d.as_dict(),
                                                                  enc.kp_source.as_dict())
        return dense, self.generator(None, dense, encoded=(enc.latent, enc.features))

    def render(self, encoding: SMACSourceEncoding, kp_driving: Any) -> torch.Tensor:
        """Render a batch of ``b`` driving keypoint sets against an encoded source.

        Gives the reference
        ``net_g(source, motion_estimator.estimate_motion_w_kp(kp_source, kp_driving, source))['out']``
        per frame, mapped to ``[0, 1]`` (absolute keypoints: apply :func:`talkhead.smac.relative_kp`,
        the reference demo's ``normalize_kp``, first for relative motion).

        Args:
            encoding: :meth:`encode_source` of the source image (this renderer's).
            kp_driving: :class:`~talkhead.keypoints.Keypoints` ``(b, 15, ...)`` with jacobians.

        Returns:
            Frames ``(b, 3, S, S)`` float in ``[0, 1]`` on ``device``.

        Raises:
            ValueError: an encoding that is not this renderer's kind or device, or keypoints that are
                not :class:`Keypoints`, of the wrong shape, or without jacobians.
        """
        with torch.inference_mode():
            return from_model_range(self.render_outputs(encoding, kp_driving)[1]["out"])


def _entry(checkpoint: Any, path: Path, keys: tuple[str, ...], what: str) -> Mapping:
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"{path}: a SMAC {what} checkpoint must be a dict, not {type(checkpoint).__name__}")
    for key in keys:
        if isinstance(checkpoint.get(key), Mapping):
            return checkpoint[key]
    present = ", ".join(map(str, checkpoint)) or "none"
    raise CheckpointError(f"{path}: SMAC {what} checkpoint lacks {' or '.join(keys)} (top-level keys: {present})")


def load_smac(config_path: str | Path, generator_path: str | Path, motion_estimator_path: str | Path, *,
              device: torch.device | str = "cpu") -> SMAC:
    """Build SMAC from a reference-schema YAML and load the released weight files.

    Args:
        config_path: YAML in the ``options/test.yml`` schema (e.g. :func:`default_config_path`).
        generator_path: ``net_g_latest.pth`` (``params_ema``, else ``params``).
        motion_estimator_path: ``net_motion_estimator_latest.pth`` (``params``).
        device: where the modules are placed.

    Returns:
        A :class:`SMAC` in eval mode on ``device``.

    Raises:
        ConfigError: a bad config. CheckpointError: an unreadable file, or one lacking the expected
        entry (named). StateDictMismatchError: weights that do not fit the config (missing, unexpected
        and wrong-shape keys listed).
    """
    config = SMACConfig.from_yaml(config_path)
    generator = config.build_generator()
    motion_estimator = config.build_motion_estimator()
    g_path, me_path = Path(generator_path), Path(motion_estimator_path)
    ckpt = load_checkpoint(g_path)
    load_state_dict_checked(generator, strip_key_prefix(_entry(ckpt, g_path, ("params_ema", "params"), "net_g"), "module."),
                            "SMAC net_g")
    del ckpt
    ckpt = load_checkpoint(me_path)
    load_state_dict_checked(motion_estimator, strip_key_prefix(_entry(ckpt, me_path, ("params",), "motion estimator"), "module."),
                            "SMAC net_motion_estimator")
    del ckpt
    return SMAC(motion_estimator, generator, config, device=device)
