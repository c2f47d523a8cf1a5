"""Device choice shared by inference (``--device``) and training (the run config's ``device``)."""
from __future__ import annotations

from typing import Optional

import torch

from .constants import DEVICES, PRECISIONS
from .errors import InputError


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


def default_batch_size(device: torch.device | str, renderer: str = "fomm") -> int:
    """Frames per render pass (one renderer call) for ``--batch-size auto`` on ``device``.

    - CPU: 8, sent through the memory-heavy stages in pieces of :func:`default_piece_frames` (2). The
      convolutions are compute bound already at batch 1, except the dense-motion hourglass's deep levels
      (16x16 .. 2x2 maps, ~150 MB of weights, bound by reading them from memory): a pass of 8 reads them once
      for 8 frames. `animate` of 28.8 s speech 103.2 / 108.0 s -> 98.5 / 97.1 s, 4.8 s 17.9-18.1 s -> 17.4-17.7 s,
      for +32-40 MiB of peak RSS at 4.8 s (16 frames a pass: no faster, +76-94 MiB; ``benchmarks/README.md``,
      "Fifth pass"). Other renderers (SMAC), which render a pass whole: 2, measured fastest for FOMM before
      passes (1.07x over 1; 4 no faster, 8 slower).
      Frames are bit-identical at any batch size (the packed weights serve every batch size:
      :func:`talkhead.fomm.blocks.conv_forward`).
    - CUDA: 8. One 256x256 frame does not fill a GPU (kernel launch overhead dominates at batch 1);
      8 frames amortise it while the activations stay well under 1 GiB, which fits any CUDA card
      that can hold the ~230 MiB of FOMM weights (an estimate: not measured on a GPU).
    - MPS (and anything else): 4, a middle ground for unified-memory GPUs.

    Args:
        device: a torch device or its name (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``).
        renderer: the renderer's registry name (``--renderer``).

    Returns:
        A positive batch size (frames per render call).
    """
    kind = torch.device(device).type
    if kind == "cpu":
        return 8 if renderer == "fomm" else 2
    if kind == "cuda":
        return 8
    return 4


def default_piece_frames(device: torch.device | str) -> Optional[int]:
    """Frames of a render pass that go through its memory-heavy stages at a time on ``device``, or ``None``
    for the whole pass: FOMM's decoder and its hourglass's full-resolution levels
    (:attr:`talkhead.fomm.FOMM.piece_frames`), the face restorer and the paste-back buffer.

    - CPU: 2. A 256x256 frame's decoder activations are ~30 MB, and the decoder is compute bound: 2 frames
      a piece were as fast as more, 1 slower (0.98x); larger pieces raise the heap's high-water mark.
    - elsewhere: ``None`` (a GPU pass of :func:`default_batch_size` frames fits as one piece).

    Args:
        device: a torch device or its name.
    """
    return 2 if torch.device(device).type == "cpu" else None


def cpu_has_native_bf16() -> bool:
    """Whether this CPU does bf16 arithmetic in hardware (AVX512-BF16 or AMX-BF16), as torch sees it.

    Without it oneDNN emulates bf16 convolutions, far slower than float32; with it a FOMM frame
    renders faster at ``--precision bf16`` than at fp32 (both measured: ``benchmarks/README.md``,
    "Reduced precision"). Returns ``False`` when torch cannot tell (a private torch API).
    """
    caps = getattr(torch.cpu, "get_capabilities", None)
    if caps is not None:
        try:
            found = caps()
            return bool(found.get("avx512_bf16") or found.get("amx_bf16"))
        except Exception:  # a private torch API: a failure means "unknown", i.e. no
            return False
    return bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())


def check_precision(precision: str, device: torch.device | str) -> None:
    """Refuse a ``--precision`` that cannot run well on ``device`` (before any model loads).

    - ``fp32``: everywhere.
    - ``fp16``: CUDA only. On CPU it is slower than fp32, even on a CPU with native bf16 (no CPU
      measured had fp16 arithmetic); MPS is untested.
    - ``bf16``: CUDA, or a CPU with native bf16 (:func:`cpu_has_native_bf16`; faster than fp32
      there); refused on other CPUs (emulated, far slower) and on MPS (untested).
      (Speeds measured: ``benchmarks/README.md``, "Reduced precision".)

    Args:
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` (:data:`talkhead.constants.PRECISIONS`).
        device: a torch device or its name.

    The library itself (:attr:`talkhead.fomm.FOMM.precision`) allows every precision on every
    device, e.g. to measure the deviation; this check is for runs that want speed.

    Raises:
        InputError: ``precision`` is unknown or refused on ``device`` (one line, naming the choice
            that works).
    """
    if precision not in PRECISIONS:
        raise InputError(f"--precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    kind = torch.device(device).type
    if precision == "fp32" or kind == "cuda":
        return
    if kind == "cpu" and precision == "bf16":
        if cpu_has_native_bf16():
            return
        raise InputError("--precision bf16 needs a CUDA device or a CPU with native bf16 (AVX512-BF16/AMX); this "
                         "CPU would emulate it, ~10x slower than fp32: use --precision fp32")
    where = "on CPU it runs 4-10x slower than fp32" if kind == "cpu" else f"it is untested on {kind}"
    alt = "bf16 (this CPU has native bf16) or fp32" if kind == "cpu" and cpu_has_native_bf16() else "fp32"
    raise InputError(f"--precision {precision} needs a CUDA device ({where}): use --precision {alt}")


def default_writer_thread(device: torch.device | str) -> bool:
    """Whether paste-back and encoding run in a background thread by default on ``device``.

    - CUDA / MPS: yes. The GPU renders while the host would otherwise wait on it; in the thread the
      host composites and feeds ffmpeg during the next batch's rendering.
    - CPU: no. Rendering already keeps every core busy, so a thread only moves work around
      (measured at batch 1 on 2 cores, ``benchmarks/bench_writer.py``: ``benchmarks/README.md``,
      "Writer thread").

    Args:
        device: a torch device or its name (``"cpu"``, ``"cuda"``, ``"mps"``).
    """
    return torch.device(device).type != "cpu"
