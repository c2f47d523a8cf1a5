"""The FOMM renderer as one object: keypoint detection and batched rendering from one source image.

``load_fomm`` reads an official ``first-order-model`` config + checkpoint (``vox-adv-cpk.pth.tar``
layout: top-level ``generator``, ``discriminator``, ``kp_detector``, ``optimizer_*``, ``epoch``; only
``generator`` and ``kp_detector`` are used, as in the reference ``demo.load_checkpoints``).
"""
from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ..checkpoints import load_checkpoint, load_state_dict_checked, require_finite
from ..errors import CheckpointError
from ..keypoints import Keypoints
from ..memory import separate_large_allocations
from .blocks import clear_fused_cache
from .config import FOMMConfig
from .generator import OcclusionAwareGenerator
from .keypoint_detector import KPDetector

PRECISION_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
""":attr:`FOMM.precision` names -> the dtype FOMM's decoder computes in."""

@dataclass
class _SourceEncoding:
    """Per-source tensors reused across :meth:`FOMM.render` calls (keyed by the values they came from)."""

    source: torch.Tensor  # (1, C, S, S), a private copy used as the cache key
    kp_source: Keypoints  # (1, K, ...), a private copy
    features: torch.Tensor  # (1, F, S / 2**n, S / 2**n): generator encoder output
    source_down: torch.Tensor  # (1, C, S * scale, S * scale): dense-motion input resolution

    def matches(self, source: torch.Tensor, kp_source: Keypoints) -> bool:
        return self.kp_source.equal(kp_source) and torch.equal(self.source, source)


class FOMM:
    """FOMM keypoint detector + occlusion-aware generator, ready for inference.

    Attributes:
        kp_detector: :class:`~talkhead.fomm.KPDetector` (eval mode, no grads).
        generator: :class:`~talkhead.fomm.OcclusionAwareGenerator` (eval mode, no grads).
        config: the :class:`~talkhead.fomm.FOMMConfig` the modules were built from.
        frame_size: side of the square frames, pixels (from ``config``; 256 for vox-adv-256).
        device: where the modules live; inputs are moved there.
        align_corners: ``F.grid_sample`` convention of every warp (assignable). ``True`` (default)
            reproduces torch <= 1.2, which vox-adv was trained with; ``False`` is the torch >= 1.3
            default that a modern run of the reference code gets.
        precision: ``"fp32"`` (default), ``"fp16"`` or ``"bf16"`` (assignable): the arithmetic of
            the generator's decoder in :meth:`render` (see there). Allowed on every device here;
            :func:`talkhead.devices.check_precision` says where it is worth it.
    """

    def __init__(self, kp_detector: KPDetector, generator: OcclusionAwareGenerator, config: FOMMConfig, *,
                 align_corners: bool = True, device: torch.device | str | None = None):
        if generator.dense_motion_network is None:
            raise ValueError("the FOMM renderer needs a generator with a dense motion network")
        self.config = config
        self.frame_size = int(config.frame_size)
        self.device = torch.device(device) if device is not None else next(generator.parameters()).device
        self.kp_detector = kp_detector.to(self.device).eval().requires_grad_(False)
        self.generator = generator.to(self.device).eval().requires_grad_(False)
        self.align_corners = align_corners
        self.precision = "fp32"
        self._cache: Optional[_SourceEncoding] = None
        self._detections = 0
        self._rendered_batches: set[int] = set()

    @classmethod
    def from_config(cls, config: FOMMConfig, *, device: torch.device | str = "cpu",
                    align_corners: bool = True) -> "FOMM":
        """A FOMM with freshly initialised (untrained) weights, e.g. for tests and benchmarks."""
        return cls(config.build_kp_detector(), config.build_generator(align_corners), config,
                   align_corners=align_corners, device=device)

    # -- settings -----------------------------------------------------------------------------------
    @property
    def align_corners(self) -> bool:
        """``F.grid_sample`` convention of the renderer (see the class docstring)."""
        return self.generator.align_corners

    @align_corners.setter
    def align_corners(self, value: bool) -> None:
        self.generator.align_corners = bool(value)

    @property
    def precision(self) -> str:
        """Arithmetic of the decoder in :meth:`render`: ``"fp32"``, ``"fp16"`` or ``"bf16"``."""
        return self._precision

    @precision.setter
    def precision(self, value: str) -> None:
        if value not in PRECISION_DTYPES:
            raise ValueError(f"precision must be one of {', '.join(PRECISION_DTYPES)}, not {value!r}")
        self._precision = value

    @property
    def dtype(self) -> torch.dtype:
        """Floating-point dtype of the weights (inputs are cast to it)."""
        return next(self.generator.parameters()).dtype

    def clear_cache(self) -> None:
        """Forget the cached source encoding (needed only after changing the weights in place)."""
        self._cache = None

    # -- input checks -------------------------------------------------------------------------------
    def _image(self, source, what: str = "source") -> torch.Tensor:
        x = torch.as_tensor(source).to(self.device, self.dtype)
        c, s = self.config.num_channels, self.frame_size
        if x.ndim != 4 or tuple(x.shape[1:]) != (c, s, s):
            raise ValueError(f"{what} must be (B, {c}, {s}, {s}) float in [0, 1], got {tuple(x.shape)}")
        return x

    def _kp(self, kp, what: str, batch: Optional[int] = None) -> Keypoints:
        if not isinstance(kp, Keypoints):
            raise ValueError(f"{what} must be talkhead.keypoints.Keypoints, not {type(kp).__name__}")
        k = self.config.num_kp
        if kp.num_kp != k or (batch is not None and len(kp) != batch):
            want = f"({batch if batch is not None else 'B'}, {k}, 2)"
            raise ValueError(f"{what} values must be {want}, got {tuple(kp.value.shape)}")
        if self.config.estimate_jacobian and kp.jacobian is None:
            raise ValueError(f"{what} lacks jacobians ({len(kp)}, {k}, 2, 2)")
        kp = kp.to(self.device, self.dtype)
        return kp if self.config.estimate_jacobian else Keypoints(kp.value)

    # -- inference ----------------------------------------------------------------------------------
    def detect(self, source) -> Keypoints:
        """Keypoints of source images.

        Args:
            source: ``(B, 3, S, S)`` float in ``[0, 1]``, ``S = frame_size`` pixels.

        Returns:
            :class:`~talkhead.keypoints.Keypoints` value ``(B, 10, 2)``, jacobian ``(B, 10, 2, 2)`` on
            ``device``; values in ``[-1, 1]`` (x = column, y = row) of the keypoint heatmap grid.

        The detector's derived (packed) weights, about as large as its own weights (54 MiB for
        vox-adv-256), are dropped after the first call and kept from the second on: one photo per run
        (``animate``) needs them once, many calls (driving videos, batches) pay their packing once more.
        On CPU that first call runs under :func:`talkhead.memory.separate_large_allocations`. The
        keypoints are the same either way.

        Raises:
            ValueError: a tensor of the wrong shape.
        """
        first = self._detections == 0 and self.device.type == "cpu"
        with torch.inference_mode(), separate_large_allocations() if first else contextlib.nullcontext():
            kp = Keypoints.from_dict(self.kp_detector(self._image(source)))
        self._detections += 1
        if self._detections == 1:
            clear_fused_cache(self.kp_detector)
        return kp

    def _encode(self, source: torch.Tensor, kp_source: Keypoints) -> _SourceEncoding:
        if self._cache is not None and self._cache.matches(source, kp_source):
            return self._cache
        gen = self.generator
        enc = _SourceEncoding(source=source.clone(), kp_source=kp_source.clone(),
                              features=gen.encode(source),
                              source_down=gen.dense_motion_network.downsample(source))
        self._cache = enc
        return enc

    def render(self, source, kp_source: Keypoints, kp_driving: Keypoints) -> torch.Tensor:
        """Render a batch of ``b`` driving keypoint sets against one source image.

        The source is encoded once (generator encoder + dense-motion downsampling) and that encoding is
        reused while the same source and kp_source (by value) come back, so rendering a long sequence
        in batches encodes it once. Gives the same frames as the reference
        ``OcclusionAwareGenerator.forward(source, kp_driving=..., kp_source=...)["prediction"]`` per frame
        (absolute keypoints: apply :func:`~talkhead.fomm.relative_kp` first for relative motion).

        Precision: with :attr:`precision` ``"fp16"``/``"bf16"`` the decoder (bottleneck, up blocks,
        final conv and sigmoid: ~85 % of a frame's time on CPU, ``benchmarks/README.md``) runs under
        ``torch.autocast`` on an input cast to that dtype; the source encoding, the dense motion
        (keypoint gaussians, ``J_s J_d^-1`` with its 2x2 inverse, the hourglass, softmax) and both
        ``grid_sample`` warps stay float32, since a reduced-precision jacobian product alone moved
        frames by up to 14/255 (bf16, full-size random weights). The frames come back float32.

        On CPU the first batch of each size, which builds the packed weights, runs under
        :func:`talkhead.memory.separate_large_allocations` (a lower peak RSS; same frames).

        Args:
            source: ``(1, 3, S, S)`` float in ``[0, 1]``, ``S = frame_size`` pixels.
            kp_source: :class:`~talkhead.keypoints.Keypoints` ``(1, 10, 2)`` + ``(1, 10, 2, 2)`` (from
                :meth:`detect`).
            kp_driving: Keypoints ``(b, 10, 2)`` + ``(b, 10, 2, 2)``.

        Returns:
            Frames ``(b, 3, S, S)`` float in ``(0, 1)`` on ``device``.

        Raises:
            ValueError: a tensor of the wrong shape, or a source batch other than 1.
        """
        b = len(kp_driving) if isinstance(kp_driving, Keypoints) else 0
        first = self.device.type == "cpu" and b not in self._rendered_batches
        with separate_large_allocations() if first else contextlib.nullcontext():
            frames = self._render(source, kp_source, kp_driving)
        self._rendered_batches.add(b)
        return frames

    def _render(self, source, kp_source: Keypoints, kp_driving: Keypoints) -> torch.Tensor:
        with torch.inference_mode():
            src = self._image(source)
            if src.shape[0] != 1:
                raise ValueError(f"render takes one source image (1, 3, S, S), got batch {src.shape[0]}")
            kp_s = self._kp(kp_source, "kp_source", batch=1)
            kp_d = self._kp(kp_driving, "kp_driving")
            enc = self._encode(src, kp_s)
            gen = self.generator
            motion = gen.dense_motion_network.motion(enc.source_down, kp_d.as_dict(), kp_s.as_dict())
            warped = gen.warp(enc.features, motion)
            if self._precision == "fp32":
                return gen.decode(warped)
            dtype = PRECISION_DTYPES[self._precision]
            # the cast input also keeps the decoder off CPU code paths that autocast does not see
            # (the pre-packed oneDNN float32 convolutions of talkhead.fomm.blocks.conv_forward)
            with torch.autocast(self.device.type, dtype=dtype):
                frames = gen.decode(warped.to(dtype))
            return frames.float()


def load_fomm(config_path: str | Path, checkpoint_path: str | Path, *, device: torch.device | str = "cpu",
              align_corners: bool = True) -> FOMM:
    """Build FOMM from an official-schema YAML and load an official-layout checkpoint.

    Args:
        config_path: YAML in the ``first-order-model`` schema (e.g. :func:`default_config_path`).
        checkpoint_path: ``.pth.tar`` with top-level ``generator`` and ``kp_detector`` state dicts
            (``vox-adv-cpk.pth.tar``; torch zip or legacy format), read with
            :func:`talkhead.checkpoints.load_checkpoint` (no full pickle).
        device: where the modules are placed.
        align_corners: ``F.grid_sample`` convention (``True``: vox-adv's training-time torch 1.0 behaviour).

    Returns:
        A :class:`FOMM` in eval mode on ``device``.

    Raises:
        ConfigError: a bad config. CheckpointError: an unreadable or tampered checkpoint, one lacking
        ``generator``/``kp_detector`` (named), or NaN/Inf weights (file and tensor named).
        StateDictMismatchError: weights that do not fit the config.
    """
    config = FOMMConfig.from_yaml(config_path)
    checkpoint = load_checkpoint(checkpoint_path, mmap=True)  # copied into the modules, then dropped
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"{checkpoint_path}: a FOMM checkpoint must be a dict, not {type(checkpoint).__name__}")
    missing = [k for k in ("generator", "kp_detector") if not isinstance(checkpoint.get(k), Mapping)]
    if missing:
        present = ", ".join(map(str, checkpoint)) or "none"
        raise CheckpointError(f"{checkpoint_path}: FOMM checkpoint lacks entr{'y' if len(missing) == 1 else 'ies'} "
                              f"{', '.join(missing)} (top-level keys: {present})")
    for entry in ("kp_detector", "generator"):
        require_finite(checkpoint[entry], checkpoint_path, entry)
    kp_detector = config.build_kp_detector()
    generator = config.build_generator(align_corners)
    load_state_dict_checked(kp_detector, checkpoint["kp_detector"], "FOMM kp_detector")
    load_state_dict_checked(generator, checkpoint["generator"], "FOMM generator")
    del checkpoint
    return FOMM(kp_detector, generator, config, align_corners=align_corners, device=device)
