"""The keypoint renderers' common base: the source encoding a renderer hands back to itself, and the
input checks every renderer shares.

The contract (what the pipeline relies on, :class:`talkhead.renderers.Renderer`)::

    kp = renderer.detect(images)                      # (B, 3, S, S) [0, 1] -> Keypoints (B, K, ...)
    encoding = renderer.encode_source(source)         # (1, 3, S, S) [0, 1] -> SourceEncoding, once per source
    frames = renderer.render(encoding, kp_driving)    # Keypoints (b, K, ...) -> (b, 3, S, S) [0, 1], many batches

The encoding is an explicit value the caller keeps for as long as it renders that source: a renderer
holds no per-source state, so two sources can be rendered interleaved, and nothing is looked up by
tensor values. It is valid for the renderer (and weights) that made it.

This module sits in layer 3 next to the model packages because :class:`talkhead.fomm.FOMM` and
:class:`talkhead.smac.SMAC` subclass :class:`KeypointRenderer`; the structural
:class:`talkhead.renderers.Renderer` protocol (layer 4) is what the pipeline types against, so a
renderer need not inherit from this base (the tests' toy renderers do, for the checks).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Optional, TypeVar

import torch

from .keypoints import Keypoints


@dataclass(frozen=True, eq=False)
class SourceEncoding:
    """What :meth:`KeypointRenderer.encode_source` computed from one source image, for its
    :meth:`~KeypointRenderer.render` calls.

    Attributes:
        kp_source: :class:`~talkhead.keypoints.Keypoints` ``(1, K, 2)`` (+ jacobian ``(1, K, 2, 2)``
            where the renderer uses them) on the renderer's device: the pose ``render`` measures
            driving keypoints against (detected, or given to ``encode_source``).

    Renderers subclass it with their own per-source tensors (encoder features, the downsampled
    source of the dense motion network). Treat it as read-only; ``render`` never changes it.
    """

    kp_source: Keypoints


E = TypeVar("E", bound=SourceEncoding)


class KeypointRenderer(ABC):
    """Base of the keypoint-driven face renderers (FOMM, SMAC): the :class:`talkhead.renderers.Renderer`
    contract as abstract methods, plus the input checks they share.

    Attributes (set by subclasses):
        frame_size: side ``S`` of the square images it takes and renders, pixels.
        num_kp: keypoints per set ``K``.
        device: :class:`torch.device` its inputs are moved to and its outputs live on.
        num_channels: image channels (3).
        uses_jacobian: whether keypoints need jacobians ``(B, K, 2, 2)``; when ``False`` the checks
            drop any jacobians given.
    """

    frame_size: int
    num_kp: int
    device: torch.device
    num_channels: int = 3
    uses_jacobian: bool = True

    @property
    def dtype(self) -> torch.dtype:
        """Floating-point dtype inputs are cast to (the weights' dtype)."""
        return torch.float32

    # -- the contract -------------------------------------------------------------------------------
    @abstractmethod
    def detect(self, images: Any) -> Keypoints:
        """Keypoints of images ``(B, 3, S, S)`` float in ``[0, 1]`` -> :class:`Keypoints` ``(B, K, ...)``
        on :attr:`device`, values in ``[-1, 1]`` (x = column, y = row)."""

    @abstractmethod
    def encode_source(self, source: Any, kp_source: Optional[Keypoints] = None) -> SourceEncoding:
        """Encode one source image ``(1, 3, S, S)`` float in ``[0, 1]`` for :meth:`render`.

        ``kp_source`` ``(1, K, ...)``: keypoints to use instead of detecting them (e.g. ones already
        detected, or loaded from a file); ``None`` detects them with :meth:`detect`.
        """

    @abstractmethod
    def render(self, encoding: SourceEncoding, kp_driving: Keypoints) -> torch.Tensor:
        """Frames ``(b, 3, S, S)`` float in ``[0, 1]`` on :attr:`device` of ``b`` driving keypoint sets
        ``(b, K, ...)`` against the encoded source."""

    # -- shared checks ------------------------------------------------------------------------------
    def check_images(self, images: Any, what: str = "images", *, batch: Optional[int] = None) -> torch.Tensor:
        """``images`` as a ``(B, C, S, S)`` tensor on :attr:`device` in :attr:`dtype`.

        Raises:
            ValueError: another shape, or (``batch`` given) another batch size, both quoted.
        """
        x = torch.as_tensor(images).to(self.device, self.dtype)
        c, s = self.num_channels, self.frame_size
        if x.ndim != 4 or tuple(x.shape[1:]) != (c, s, s):
            raise ValueError(f"{what} must be (B, {c}, {s}, {s}) float in [0, 1], got {tuple(x.shape)}")
        if batch is not None and x.shape[0] != batch:
            raise ValueError(f"{what} must be {'one source image' if batch == 1 else f'{batch} images'} "
                             f"({batch}, {c}, {s}, {s}), got batch {x.shape[0]}")
        return x

    def check_keypoints(self, kp: Any, what: str, *, batch: Optional[int] = None) -> Keypoints:
        """``kp`` on :attr:`device` in :attr:`dtype` (without jacobians unless :attr:`uses_jacobian`).

        Raises:
            ValueError: not :class:`Keypoints`, another keypoint count or batch size, or missing
                jacobians the renderer uses.
        """
        if not isinstance(kp, Keypoints):
            raise ValueError(f"{what} must be talkhead.keypoints.Keypoints, not {type(kp).__name__}")
        k = self.num_kp
        if kp.num_kp != k or (batch is not None and len(kp) != batch):
            want = f"({batch if batch is not None else 'B'}, {k}, 2)"
            raise ValueError(f"{what} must hold {want} values, got {tuple(kp.value.shape)}")
        if self.uses_jacobian and kp.jacobian is None:
            raise ValueError(f"{what} lacks jacobians ({len(kp)}, {k}, 2, 2), which this renderer uses")
        kp = kp.to(self.device, self.dtype)
        return kp if self.uses_jacobian else Keypoints(kp.value)

    def source_keypoints(self, source: Any, kp_source: Optional[Keypoints]) -> tuple[torch.Tensor, Keypoints]:
        """The checked source ``(1, C, S, S)`` and its keypoints ``(1, K, ...)``: ``kp_source``
        checked, or :meth:`detect` of the source when it is ``None`` (for :meth:`encode_source`).

        Raises:
            ValueError: as :meth:`check_images` / :meth:`check_keypoints`.
        """
        x = self.check_images(source, "source", batch=1)
        kp = self.detect(x) if kp_source is None else kp_source
        return x, self.check_keypoints(kp, "kp_source", batch=1)

    def check_encoding(self, encoding: Any, kind: type[E]) -> E:
        """``encoding`` if it is a ``kind`` on this renderer's device.

        Raises:
            ValueError: another type (e.g. another renderer's encoding, or a source image passed as
                in the old ``render(source, kp_source, kp_driving)``), or another device.
        """
        if not isinstance(encoding, kind):
            raise ValueError(f"render takes the {kind.__name__} from this renderer's encode_source(source), "
                             f"not {type(encoding).__name__}")
        have = encoding.kp_source.value.device
        if have.type != self.device.type or (self.device.index is not None and have.index != self.device.index):
            raise ValueError(f"the source encoding is on {have}, the renderer on {self.device}: "
                             "encode the source with this renderer")
        return encoding


__all__ = ["KeypointRenderer", "SourceEncoding"]
