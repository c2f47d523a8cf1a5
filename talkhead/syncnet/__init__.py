"""SyncNet lip-sync scoring (Chung and Zisserman 2016), checkpoint-compatible with joonson/syncnet_python's
``syncnet_v2.model``: AV offset, LSE-D and LSE-C of any face clip, as papers since Wav2Lip report them.

Typical use::

    model = load_syncnet("syncnet_v2.model")                   # strict layout, safe loading
    scores = score_clip(model, crops, samples)                 # crops (T, 224, 224, 3) RGB uint8, 25 fps;
    scores.offset, scores.lse_d, scores.lse_c                  # samples (N,) 16 kHz

Modules: :mod:`.model` (the network), :mod:`.layout` (expected keys and shapes),
:mod:`.checkpoint` (reading a file), :mod:`.mfcc` (the audio features), :mod:`.scoring` (windows,
distances, scores), :mod:`.crop` (the reference's face crop rule).
"""
from .checkpoint import load_syncnet, read_state_dict
from .crop import CROP_SCALE, crop_track, smooth_track, syncnet_crop
from .layout import expected_layout
from .mfcc import mfcc, pcm16_units
from .model import SyncNet, SyncNetConfig
from .scoring import (VSHIFT, EmbeddingModel, SyncScores, distance_matrix, embed_windows, num_windows, score_clip,
                      sync_scores)

__all__ = [
    "CROP_SCALE", "VSHIFT", "crop_track", "EmbeddingModel", "SyncNet", "SyncNetConfig", "SyncScores", "distance_matrix",
    "embed_windows", "expected_layout", "load_syncnet", "mfcc", "num_windows", "pcm16_units", "read_state_dict",
    "score_clip", "smooth_track", "sync_scores", "syncnet_crop",
]
