"""Tiny training configs shared by the training tests (imported by test modules; not a test file).

CPU-sized versions of the paper defaults: a 2-level syncer pyramid and the smallest MS-Sync generator
(~6 M parameters, set by its hard-coded widths) on 11-frame windows.
"""
from __future__ import annotations

import copy

TINY_SYNCERS = {
    "steps": 2, "batch_size": 4, "segment_frames": 16, "segment_hop": 4, "checkpoint_every": 0, "val_every": 0,
    "val_segments": 4, "negatives": 8, "same_clip_negatives": 4, "device": "cpu",
    "model": {"levels": 2, "hidden": 16, "embed_dim": 8},
}

TINY_GENERATOR = {
    "steps": 24, "batch_size": 2, "seq_len": 8, "window_hop": 4, "checkpoint_every": 12, "val_every": 12,
    "log_every": 1, "val_windows": 4, "device": "cpu", "lr_decay_step": 20,
    "model": {"audio_dim": 12, "coord_dim": 16, "hidden_size": 8, "nblocks_do": 6, "expansion_fact_do": 1,
              "coord_dim_D": 16, "hidden_size_D": 16},
    "discriminator": {"windows": [5, 10]},
}


def tiny(config: dict, **changes) -> dict:
    """A deep copy of ``config`` with top-level ``changes`` applied."""
    out = copy.deepcopy(config)
    out.update(changes)
    return out
