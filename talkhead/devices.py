"""Device choice shared by inference (``--device``) and training (the run config's ``device``)."""
from __future__ import annotations

import torch

from .errors import InputError
from .options import DEVICES


def mps_available() -> bool:
    """Whether torch can use Apple's MPS backend here (the one check, also used by ``doctor``)."""
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(name: str, *, cuda_index: int | None = None, allow_mps: bool = True) -> torch.device:
    """Map ``auto | cpu | cuda | mps`` to a torch device.

    ``auto`` picks CUDA, then MPS (when ``allow_mps``; distributed training turns it off), then CPU.

    Args:
        name: one of :data:`DEVICES`.
        cuda_index: the CUDA device index (a distributed rank's ``LOCAL_RANK``); ``None`` = current.
        allow_mps: whether ``auto`` may choose MPS.

    Raises:
        InputError: an unknown name, or an explicit ``cuda``/``mps`` that torch cannot use.
    """
    if name not in DEVICES:
        raise InputError(f"device must be one of {', '.join(DEVICES)}, not {name!r}")
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif allow_mps and mps_available():
            return torch.device("mps")
        else:
            return torch.device("cpu")
    elif name == "cuda" and not torch.cuda.is_available():
        raise InputError("device cuda was asked for, but torch sees no CUDA device (try cpu)")
    elif name == "mps" and not mps_available():
        raise InputError("device mps was asked for, but MPS is not available (try cpu)")
    if name == "cuda":
        return torch.device("cuda", cuda_index) if cuda_index is not None else torch.device("cuda")
    return torch.device(name)
