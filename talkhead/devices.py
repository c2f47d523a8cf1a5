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


def default_batch_size(device: torch.device | str) -> int:
    """Frames rendered per FOMM call for ``--batch-size auto`` on ``device``.

    - CPU: 1. A CPU convolution is already compute bound at batch 1 (two threads keep the cores busy
      on a 64x64x256 feature map), so larger batches buy no throughput; they only multiply the size
      of every large temporary (a 256x256x64 float map is 16 MiB per frame), which costs page faults
      and peak memory (measured: batch 8 is *slower* than batch 1 and uses ~1.7x the memory).
    - CUDA: 8. One 256x256 frame does not fill a GPU (kernel launch overhead dominates at batch 1);
      8 frames amortise it while the activations stay well under 1 GiB (about 100 MiB per frame
      in float32), which fits any CUDA card that can hold the ~230 MiB of FOMM weights.
    - MPS (and anything else): 4, a middle ground for unified-memory GPUs.

    Args:
        device: a torch device or its name (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``).

    Returns:
        A positive batch size (frames per render call).
    """
    kind = torch.device(device).type
    if kind == "cpu":
        return 1
    if kind == "cuda":
        return 8
    return 4
