"""The one keypoint type: FOMM keypoints with their jacobians, as every stage passes them.

A keypoint set travels as :class:`Keypoints` from the renderer's detector (``kp_source``) through the
motion generator (``kp_driving``) to the renderer, on one device, without numpy round trips. The
training data stores the same numbers packed as ``(T, K, 6)`` = ``[x, y, j00, j01, j10, j11]``
(MS-Sync's ``KEYPOINTS_DIM`` layout, jacobian flattened row-major); :meth:`Keypoints.pack` and
:meth:`Keypoints.unpack` are the only conversion between the two.

Coordinates: values in ``[-1, 1]`` of the keypoint heatmap grid, x = column, y = row (FOMM
``modules/keypoint_detector.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from .constants import KP_DIM


@dataclass(frozen=True)
class Keypoints:
    """A batch of keypoint sets: ``value (B, K, 2)`` and ``jacobian (B, K, 2, 2)`` float tensors.

    ``B`` is a batch of frames (or of source images), ``K`` keypoints (10 for vox-adv-256, 15 for
    some renderers). ``jacobian`` may be ``None`` for a renderer configured without jacobians
    (FOMM ``estimate_jacobian: False``).

    Raises:
        ValueError: tensors of the wrong rank or mismatched shapes.
    """

    value: torch.Tensor
    jacobian: Optional[torch.Tensor] = None

    def __post_init__(self) -> None:
        value = torch.as_tensor(self.value)
        if value.ndim != 3 or value.shape[-1] != 2:
            raise ValueError(f"keypoint values must be (B, K, 2), got {tuple(value.shape)}")
        object.__setattr__(self, "value", value)
        if self.jacobian is not None:
            jac = torch.as_tensor(self.jacobian)
            if tuple(jac.shape) != tuple(value.shape[:2]) + (2, 2):
                raise ValueError(f"jacobians must be {tuple(value.shape[:2]) + (2, 2)} for values "
                                 f"{tuple(value.shape)}, got {tuple(jac.shape)}")
            object.__setattr__(self, "jacobian", jac)

    # -- size and indexing -------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.value.shape[0])

    @property
    def num_kp(self) -> int:
        """Keypoints per set, ``K``."""
        return int(self.value.shape[1])

    @property
    def device(self) -> torch.device:
        return self.value.device

    def __getitem__(self, index: Any) -> "Keypoints":
        """Frames ``index`` (an int keeps the batch axis: ``kp[3]`` is ``(1, K, 2)``)."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return Keypoints(self.value[index], None if self.jacobian is None else self.jacobian[index])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "Keypoints":
        """Both tensors moved/cast (as :meth:`torch.Tensor.to`)."""
        return Keypoints(self.value.to(device=device, dtype=dtype),
                         None if self.jacobian is None else self.jacobian.to(device=device, dtype=dtype))

    def clone(self) -> "Keypoints":
        return Keypoints(self.value.clone(), None if self.jacobian is None else self.jacobian.clone())

    def equal(self, other: "Keypoints") -> bool:
        """Exactly the same numbers (and both with or both without jacobians)."""
        if (self.jacobian is None) != (other.jacobian is None):
            return False
        return bool(torch.equal(self.value, other.value)
                    and (self.jacobian is None or torch.equal(self.jacobian, other.jacobian)))

    # -- conversions -------------------------------------------------------------------------------
    def pack(self) -> torch.Tensor:
        """``(B, K, 6)`` = ``[x, y, j00, j01, j10, j11]`` (MS-Sync sequences, training clips).

        Raises:
            ValueError: keypoints without jacobians.
        """
        if self.jacobian is None:
            raise ValueError("keypoints without jacobians cannot be packed to (B, K, 6)")
        return torch.cat([self.value, self.jacobian.flatten(start_dim=-2)], dim=-1)

    @classmethod
    def unpack(cls, packed: torch.Tensor | np.ndarray) -> "Keypoints":
        """Inverse of :meth:`pack`: ``(B, K, 6)`` (tensor or array) -> Keypoints.

        Raises:
            ValueError: a last axis other than 6.
        """
        packed = torch.as_tensor(packed)
        if packed.ndim != 3 or packed.shape[-1] != KP_DIM:
            raise ValueError(f"packed keypoints must be (B, K, {KP_DIM}), got {tuple(packed.shape)}")
        return cls(packed[..., :2], packed[..., 2:].reshape(*packed.shape[:2], 2, 2))

    def as_dict(self) -> dict:
        """The reference code's ``{"value": ..., "jacobian": ...}`` form (FOMM module internals)."""
        out = {"value": self.value}
        if self.jacobian is not None:
            out["jacobian"] = self.jacobian
        return out

    @classmethod
    def from_dict(cls, kp: dict) -> "Keypoints":
        """From the reference ``{"value", "jacobian"}`` dict (``jacobian`` optional)."""
        return cls(kp["value"], kp.get("jacobian"))

    def numpy(self) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """``(value, jacobian)`` as float32 numpy arrays on the CPU (for saving)."""
        to_np = lambda t: t.detach().to("cpu", torch.float32).numpy()
        return to_np(self.value), None if self.jacobian is None else to_np(self.jacobian)

    @classmethod
    def cat(cls, parts: "list[Keypoints]") -> "Keypoints":
        """Concatenate along the batch axis."""
        jac = None if parts[0].jacobian is None else torch.cat([p.jacobian for p in parts])
        return cls(torch.cat([p.value for p in parts]), jac)


__all__ = ["Keypoints"]
