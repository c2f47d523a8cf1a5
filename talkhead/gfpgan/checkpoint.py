"""Reading ``GFPGANv1.4.pth`` (or a file in its layout) safely, and building the restorer.

:func:`read_state_dict` is the one check of a GFPGAN file, for :func:`load_gfpgan` and for the
model store: safe loading (:func:`talkhead.checkpoints.load_checkpoint`: ``weights_only=True``, else
the allow-list unpickler), a top level of state dicts and scalars only, the ``params_ema`` entry
with exactly the released keys and shapes, finite weights.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Optional, Union

import torch

from ..fomm.model import PRECISION_DTYPES

from ..checkpoints import check_top_level, load_checkpoint, load_state_dict_checked, require_finite
from ..errors import CheckpointError, StateDictMismatchError
from .layout import ENTRY, check_state_dict, config_from_state_dict
from .model import GFPGANConfig, GFPGANv1Clean

__all__ = ["read_state_dict", "load_gfpgan", "GFPGANRestorer"]


def read_state_dict(path: Union[str, os.PathLike], config: Optional[GFPGANConfig] = None, *,
                    infer_widths: bool = False, mmap: bool = False) -> tuple[dict, GFPGANConfig]:
    """Read a GFPGAN file without running code from it, and check it.

    Args:
        path: ``GFPGANv1.4.pth`` (348,632,874 bytes) or a file in its layout.
        config: widths (``None``: v1.4's, unless ``infer_widths``).
        infer_widths: take the widths from the file (:func:`talkhead.gfpgan.layout.config_from_state_dict`;
            e.g. a tiny random-weight file with the released key names), then check it strictly.
        mmap: map the tensors instead of reading them (zip-format files; for a check).

    Returns:
        ``(state_dict, config)``: the ``params_ema`` weights and the widths they were checked against.

    Raises:
        CheckpointError: missing, empty, truncated, not a checkpoint, tampered with, no
            ``params_ema`` entry, or NaN/Inf weights; one line naming the file.
        StateDictMismatchError: keys/shapes that differ (each one listed).
    """
    path = Path(path)
    data = load_checkpoint(path, mmap=mmap)
    if not isinstance(data, Mapping) or ENTRY not in data:
        what = f"entries {', '.join(map(repr, list(data)[:5]))}" if isinstance(data, Mapping) else type(data).__name__
        raise CheckpointError(f"{path}: not a GFPGAN file: no '{ENTRY}' entry ({what})")
    check_top_level(data, path)
    state_dict = data[ENTRY]
    if infer_widths and config is None and isinstance(state_dict, Mapping):
        try:
            config = config_from_state_dict(state_dict)
        except ValueError as exc:
            raise StateDictMismatchError(f"{path}: {exc}") from None
    config = config or GFPGANConfig()
    state_dict = check_state_dict(state_dict, f"{path} ['{ENTRY}']", config)
    require_finite(state_dict, path, ENTRY)
    return state_dict, config


class GFPGANRestorer(torch.nn.Module):
    """A restorer for the pipeline's restore stage: aligned faces ``(B, 3, N, N)`` float RGB in [0, 1]
    -> restored faces, same shape, clamped to [0, 1] (GFPGANer's ``[-1, 1]`` normalisation and clamp;
    deterministic, see :class:`talkhead.gfpgan.GFPGANv1Clean`).

    Attributes:
        face_size: ``N`` (512 for v1.4): the side of the faces it takes, aligned to the FFHQ template.
        net: the :class:`GFPGANv1Clean`.
        precision: ``"fp32"`` (default), or ``"bf16"`` / ``"fp16"``: the network runs under
            ``torch.autocast`` in that dtype (the pipeline sets it from ``--precision``; bf16 on a CPU
            with native bf16: ~1.3x faster, faces within 2e-4 of fp32 in [0, 1], ``benchmarks/README.md``,
            "Face restoration").
    """

    def __init__(self, net: GFPGANv1Clean):
        super().__init__()
        self.net = net
        self.face_size = int(net.config.out_size)
        self.precision = "fp32"

    @torch.inference_mode()
    def forward(self, faces: torch.Tensor) -> torch.Tensor:
        x = faces.to(next(self.net.parameters()).dtype) * 2.0 - 1.0
        if self.precision == "fp32":
            out = self.net(x)
        else:
            dtype = PRECISION_DTYPES[self.precision]  # KeyError on a value that is not a precision
            with torch.autocast(device_type=x.device.type, dtype=dtype):
                out = self.net(x)
        return ((out.float().clamp(-1.0, 1.0) + 1.0) * 0.5)


def load_gfpgan(path: Union[str, os.PathLike], *, infer_widths: bool = False,
                device: Union[str, torch.device] = "cpu") -> GFPGANRestorer:
    """A :class:`GFPGANRestorer` with the ``params_ema`` weights of ``path``, in eval mode on ``device``.

    Args:
        path: the checkpoint (:func:`read_state_dict`).
        infer_widths: accept a file of other widths in the released key layout (tests).
        device: where the model goes.

    Raises:
        The errors of :func:`read_state_dict`.
    """
    state_dict, config = read_state_dict(path, infer_widths=infer_widths)
    with torch.device("meta"):
        net = GFPGANv1Clean(config)
    net = net.to_empty(device="cpu")
    load_state_dict_checked(net, state_dict, f"GFPGAN {path}")
    return GFPGANRestorer(net.to(device).eval())
