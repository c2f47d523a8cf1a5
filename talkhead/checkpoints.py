"""Safe checkpoint loading and readable state-dict checks.

PLACEHOLDER API (to be completed by the checkpoints work): signatures are stable, internals will change.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError, StateDictMismatchError


def load_checkpoint(path: str | Path) -> Any:
    """Load a torch checkpoint on CPU without full pickle (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    return torch.load(path, map_location="cpu", weights_only=True)


def load_state_dict_checked(module: torch.nn.Module, state_dict: dict, what: str) -> None:
    """Strictly load ``state_dict`` into ``module``; raise StateDictMismatchError with a report."""
    try:
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise StateDictMismatchError(f"{what}: {exc}") from None
