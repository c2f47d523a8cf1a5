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


@dataclass
class _SourceEncoding:
    """Per-source tensors reused across :meth:`SMAC.render` calls (keyed by the values they came from)."""

    source: torch.Tensor  # (1, 3, S, S) in [0, 1], a private copy used as the cache key
    kp_source: Keypoints
    latent: torch.Tensor  # (1, 256, 32, 32)
    features: dict  # {256: (1, 64, 256, 256), 128: (1, 128, 128, 128), 64: (1, 128, 64, 64)}
    source_down: torch.Tensor  # (1, 3, 64, 64) in [-1, 1]: dense-motion input

    def matches(self, source: torch.Tensor, kp_source: Keypoints) -> bool:
        return self.kp_source.equal(kp_source) and torch.equal(self.source, source)


class SMAC:
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
        self._cache: Optional[_SourceEncoding] = None

    @classmethod
    def from_config(cls, config: SMACConfig, *, device: torch.device | str = "cpu") -> "SMAC":
        """A SMAC with freshly initialised (untrained) weights, e.g. for tests and benchmarks."""
        return cls(config.build_motion_estimator(), config.build_generator(), config, device=device)

    @property
    def dtype(self) -> torch.dtype:
        """Floating-point dtype of the weights (inputs are cast to it)."""
        return next(self.generator.parameters()).dtype

    def clear_cache(self) -> None:
        """Forget the cached source encoding (needed only after changing the weights in place)."""
        self._cache = None

    # -- input checks ---------------------------------------------------------------------------------
    def _image(self, images: Any, what: str = "source") -> torch.Tensor:
        x = torch.as_tensor(images).to(self.device, self.dtype)
        s = self.frame_size
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, s, s):
            raise ValueError(f"{what} must be (B, 3, {s}, {s}) float in [0, 1], got {tuple(x.shape)}")
        return x

    def _kp(self, kp: Any, what: str, batch: Optional[int] = None) -> Keypoints:
        if not isinstance(kp, Keypoints):
            raise ValueError(f"{what} must be talkhead.keypoints.Keypoints, not {type(kp).__name__}")
        k = self.num_kp
        if kp.num_kp != k or (batch is not None and len(kp) != batch):
            want = f"({batch if batch is not None else 'B'}, {k}, 2)"
            raise ValueError(f"{what} must hold {want} values, got {tuple(kp.value.shape)}")
        if kp.jacobian is None:
            raise ValueError(f"{what} lacks jacobians ({len(kp)}, {k}, 2, 2): SMAC uses them")
        return kp.to(self.device, self.dtype)

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
            return Keypoints.from_dict(self.motion_estimator.estimate_kp(to_model_range(self._image(source))))

    def _encode(self, source: torch.Tensor, kp_source: Keypoints) -> _SourceEncoding:
        if self._cache is not None and self._cache.matches(source, kp_source):
            return self._cache
        x = to_model_range(source)
        latent, feats = self.generator.encode(x)
        enc = _SourceEncoding(source=source.clone(), kp_source=kp_source.clone(), latent=latent, features=feats,
                              source_down=self.motion_estimator.dense_motion_network.downsample(x))
        self._cache = enc
        return enc

    def render_outputs(self, source: Any, kp_source: Any, kp_driving: Any) -> tuple[dict, dict]:
        """:meth:`render` with the raw outputs: ``(dense_motion, generator outputs)``.

        ``dense_motion`` is :meth:`DenseMotionNetwork.motion`'s dict; the generator outputs are
        :meth:`AppMotionCompFormer.forward`'s (``out`` in about ``[-1, 1]``, not clamped). Same
        arguments and errors as :meth:`render`.
        """
        src = self._image(source)
        if src.shape[0] != 1:
            raise ValueError(f"render takes one source image (1, 3, S, S), got batch {src.shape[0]}")
        kp_s = self._kp(kp_source, "kp_source", batch=1)
        kp_d = self._kp(kp_driving, "kp_driving")
        enc = self._encode(src, kp_s)
        dense = self.motion_estimator.dense_motion_network.motion(enc.source_down, kp_d.as_dict(), kp_s.as_dict())
        return dense, self.generator(None, dense, encoded=(enc.latent, enc.features))

    def render(self, source: Any, kp_source: Any, kp_driving: Any) -> torch.Tensor:
        """Render a batch of ``b`` driving keypoint sets against one source image.

        The source is encoded once (generator encoder + dense-motion downsampling) and reused while the
        same source and kp_source (by value) come back. Gives the reference
        ``net_g(source, motion_estimator.estimate_motion_w_kp(kp_source, kp_driving, source))['out']``
        per frame, mapped to ``[0, 1]`` (absolute keypoints: apply :func:`talkhead.smac.relative_kp`,
        the reference demo's ``normalize_kp``, first for relative motion).

        Args:
            source: ``(1, 3, S, S)`` float in ``[0, 1]``, ``S = frame_size`` pixels.
            kp_source: :class:`~talkhead.keypoints.Keypoints` ``(1, 15, ...)`` from :meth:`detect`.
            kp_driving: :class:`~talkhead.keypoints.Keypoints` ``(b, 15, ...)``.

        Returns:
            Frames ``(b, 3, S, S)`` float in ``[0, 1]`` on ``device``.

        Raises:
            ValueError: a tensor of the wrong shape, keypoints that are not :class:`Keypoints` or lack
                jacobians, or a source batch other than 1.
        """
        with torch.inference_mode():
            return from_model_range(self.render_outputs(source, kp_source, kp_driving)[1]["out"])


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
