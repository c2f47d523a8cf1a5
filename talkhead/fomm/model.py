"""The FOMM renderer as one object: keypoint detection and batched rendering from one source image.

``load_fomm`` reads an official ``first-order-model`` config + checkpoint (``vox-adv-cpk.pth.tar``
layout: top-level ``generator``, ``discriminator``, ``kp_detector``, ``optimizer_*``, ``epoch``; only
``generator`` and ``kp_detector`` are used, as in the reference ``demo.load_checkpoints``).
"""
from __future__ import annotations

import contextlib
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ..checkpoints import is_zip_format, load_checkpoint, load_state_dict_checked, require_finite
from ..devices import default_piece_frames
from ..errors import CheckpointError
from ..keypoints import Keypoints
from ..memory import page_out, separate_large_allocations
from ..rendering import KeypointRenderer, SourceEncoding
from .blocks import clear_fused_cache, mark_weights_mapped
from .config import FOMMConfig
from .generator import OcclusionAwareGenerator
from .keypoint_detector import KPDetector

PRECISION_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
""":attr:`FOMM.precision` names -> the dtype FOMM's decoder computes in."""

@dataclass(frozen=True, eq=False)
class FOMMSourceEncoding(SourceEncoding):
    """:meth:`FOMM.encode_source` of one source image: what every :meth:`FOMM.render` of it reuses.

    Attributes:
        kp_source: Keypoints ``(1, 10, 2)`` + ``(1, 10, 2, 2)`` (:class:`~talkhead.rendering.SourceEncoding`).
        features: ``(1, F, S / 2**n, S / 2**n)`` the generator encoder's output (warped per frame).
        source_down: ``(1, C, S * scale, S * scale)`` the anti-aliased source at the dense motion
            network's resolution (warped by each keypoint's sparse motion per frame).

    Both tensors depend on the weights only through the encoder and the anti-alias filter, not on
    :attr:`FOMM.align_corners` or :attr:`FOMM.precision` (the encoding stays float32).
    """

    features: torch.Tensor
    source_down: torch.Tensor


class FOMM(KeypointRenderer):
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
        piece_frames: frames of a :meth:`render` call that go through the decoder (and the dense-motion
            hourglass's full-resolution levels) at a time, or ``None`` for all of them (assignable; default
            :func:`talkhead.devices.default_piece_frames`: 2 on CPU, ``None`` elsewhere). The frames do not
            depend on it.
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
        self.piece_frames = default_piece_frames(self.device)
        self.num_kp = int(config.num_kp)
        self.num_channels = int(config.num_channels)
        self.uses_jacobian = bool(config.estimate_jacobian)
        self._detections = 0
        self._encodings = 0
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

    # -- inference ----------------------------------------------------------------------------------
    def detect(self, source) -> Keypoints:
        """Keypoints of source images.

        Args:
            source: ``(B, 3, S, S)`` float in ``[0, 1]``, ``S = frame_size`` pixels.

        Returns:
            :class:`~talkhead.keypoints.Keypoints` value ``(B, 10, 2)``, jacobian ``(B, 10, 2, 2)`` on
            ``device``; values in ``[-1, 1]`` (x = column, y = row) of the keypoint heatmap grid.

        The detector's derived (packed) weights, about as large as its own weights (measured:
        ``benchmarks/README.md``, "`animate` peak RSS"), are dropped after the first call and kept from the second on: one photo per run
        (``animate``) needs them once, many calls (driving videos, batches) pay their packing once more.
        On CPU that first call runs under :func:`talkhead.memory.separate_large_allocations`. The
        keypoints are the same either way.

        Raises:
            ValueError: a tensor of the wrong shape.
        """
        first = self._detections == 0 and self.device.type == "cpu"
        with torch.inference_mode(), separate_large_allocations() if first else contextlib.nullcontext():
            kp = Keypoints.from_dict(self.kp_detector(self.check_images(source)))
        self._detections += 1
        if self._detections == 1:
            clear_fused_cache(self.kp_detector)
        return kp

    def encode_source(self, source, kp_source: Optional[Keypoints] = None) -> FOMMSourceEncoding:
        """Encode one source image for :meth:`render`: its keypoints, the generator encoder's features
        and the dense motion network's downsampled source (the per-source part of
        ``OcclusionAwareGenerator.forward``; the rest depends on the driving keypoints).

        Keep the result while rendering that source (one encoding, many :meth:`render` calls); encode
        again after changing the weights in place. On CPU the first encoding, which packs the encoder's
        weights, runs under :func:`talkhead.memory.separate_large_allocations`.

        Args:
            source: ``(1, 3, S, S)`` float in ``[0, 1]``, ``S = frame_size`` pixels.
            kp_source: Keypoints ``(1, 10, 2)`` + ``(1, 10, 2, 2)`` to use (e.g. from an earlier
                :meth:`detect` of this source); ``None`` runs :meth:`detect`.

        Returns:
            :class:`FOMMSourceEncoding` on ``device``.

        Raises:
            ValueError: a tensor of the wrong shape, a source batch other than 1, or keypoints that are
                not :class:`~talkhead.keypoints.Keypoints` / lack jacobians.
        """
        if kp_source is None:
            kp_source = self.detect(self.check_images(source, "source", batch=1))
        first = self._encodings == 0 and self.device.type == "cpu"
        with torch.inference_mode(), separate_large_allocations() if first else contextlib.nullcontext():
            src, kp_s = self.source_keypoints(source, kp_source)
            gen = self.generator
            enc = FOMMSourceEncoding(kp_source=kp_s, features=gen.encode(src),
                                     source_down=gen.dense_motion_network.downsample(src))
        self._encodings += 1
        return enc

    def render(self, encoding: FOMMSourceEncoding, kp_driving: Keypoints) -> torch.Tensor:
        """Render a batch of ``b`` driving keypoint sets against an encoded source.

        Gives the same frames as the reference
        ``OcclusionAwareGenerator.forward(source, kp_driving=..., kp_source=...)["prediction"]`` per frame
        (absolute keypoints: apply :func:`~talkhead.fomm.relative_kp` first for relative motion); the
        frames of a driving set do not depend on the batch it is rendered in (to float rounding).

        Pieces: with :attr:`piece_frames` set (CPU) and more frames than that, the dense motion network's
        deep hourglass levels (weight-bound) run once for all ``b`` frames and everything else ``piece_frames``
        frames at a time (:meth:`DenseMotionNetwork.motion`), which keeps the activations of a long pass to
        those of one piece; the frames are the same as in one piece.

        Precision: with :attr:`precision` ``"fp16"``/``"bf16"`` the decoder (bottleneck, up blocks,
        final conv and sigmoid: most of a frame's time on CPU, ``benchmarks/README.md``, "Reduced precision") runs under
        ``torch.autocast`` on an input cast to that dtype; the source encoding, the dense motion
        (keypoint gaussians, ``J_s J_d^-1`` with its 2x2 inverse, the hourglass, softmax) and both
        ``grid_sample`` warps stay float32, since a reduced-precision jacobian product alone moved
        frames visibly (measured: ``benchmarks/README.md``, "Reduced precision"). The frames come back float32.

        On CPU the first batch of each size, which builds the packed weights, runs under
        :func:`talkhead.memory.separate_large_allocations` (a lower peak RSS; same frames).

        Args:
            encoding: :meth:`encode_source` of the source image (this renderer's).
            kp_driving: Keypoints ``(b, 10, 2)`` + ``(b, 10, 2, 2)``.

        Returns:
            Frames ``(b, 3, S, S)`` float in ``(0, 1)`` on ``device``.

        Raises:
            ValueError: an encoding that is not this renderer's kind or device, or keypoints of the
                wrong shape / type / without jacobians.
        """
        b = len(kp_driving) if isinstance(kp_driving, Keypoints) else 0
        first = self.device.type == "cpu" and b not in self._rendered_batches
        with separate_large_allocations() if first else contextlib.nullcontext():
            frames = self._render(encoding, kp_driving)
        self._rendered_batches.add(b)
        return frames

    def _render(self, encoding: FOMMSourceEncoding, kp_driving: Keypoints) -> torch.Tensor:
        with torch.inference_mode():
            enc = self.check_encoding(encoding, FOMMSourceEncoding)
            kp_d = self.check_keypoints(kp_driving, "kp_driving")
            gen = self.generator
            b, piece = len(kp_d), self.piece_frames
            motion = gen.dense_motion_network.motion(enc.source_down, kp_d.as_dict(), enc.kp_source.as_dict(),
                                                     piece=piece)
            if piece is None or b <= piece:
                return self._decode(gen.warp(enc.features, motion))
            frames = None
            for s in range(0, b, piece):
                part = self._decode(gen.warp(enc.features, {k: v[s:s + piece] for k, v in motion.items()}))
                if frames is None:
                    frames = part.new_empty(b, *part.shape[1:])
                frames[s:s + len(part)] = part
            return frames

    def _decode(self, warped: torch.Tensor) -> torch.Tensor:
        """The generator's decoder at :attr:`precision`: warped features -> float32 frames."""
        gen = self.generator
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
            :func:`talkhead.checkpoints.load_checkpoint` (no full pickle). On Linux the modules take the
            checkpoint's tensors (memory-mapped for a zip file: its pages are dropped from the resident set
            as FOMM's packed copies replace them, :func:`talkhead.fomm.blocks.mark_weights_mapped`); elsewhere
            they are copied and the file is closed.
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
    # On Linux the modules are built on the meta device and take the checkpoint's (memory-mapped) tensors
    # as theirs: nothing is initialised or copied, and the pages each derived (packed) weight replaces are
    # dropped from the resident set as it is built (blocks.mark_weights_mapped). Elsewhere a mapped file
    # would stay open (locked on Windows) for the model's life: the weights are copied and the file closed.
    assign = sys.platform.startswith("linux")
    mapped = assign and is_zip_format(checkpoint_path)
    checkpoint = load_checkpoint(checkpoint_path, mmap=True)
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(f"{checkpoint_path}: a FOMM checkpoint must be a dict, not {type(checkpoint).__name__}")
    missing = [k for k in ("generator", "kp_detector") if not isinstance(checkpoint.get(k), Mapping)]
    if missing:
        present = ", ".join(map(str, checkpoint)) or "none"
        raise CheckpointError(f"{checkpoint_path}: FOMM checkpoint lacks entr{'y' if len(missing) == 1 else 'ies'} "
                              f"{', '.join(missing)} (top-level keys: {present})")
    for entry in ("kp_detector", "generator"):
        require_finite(checkpoint[entry], checkpoint_path, entry)
    with torch.device("meta") if assign else contextlib.nullcontext():
        kp_detector = config.build_kp_detector()
        generator = config.build_generator(align_corners)
    load_state_dict_checked(kp_detector, checkpoint["kp_detector"], "FOMM kp_detector", assign=assign)
    load_state_dict_checked(generator, checkpoint["generator"], "FOMM generator", assign=assign)
    del checkpoint
    fomm = FOMM(kp_detector, generator, config, align_corners=align_corners, device=device)
    if mapped and fomm.device.type == "cpu":
        mark_weights_mapped(fomm.kp_detector)
        mark_weights_mapped(fomm.generator)
        # the finiteness check read every page: none is needed before the first detect / frame
        page_out([*fomm.kp_detector.state_dict().values(), *fomm.generator.state_dict().values()])
    return fomm
