"""Training: data format, the shared training engine, training the syncer pyramid and the generator, evaluation.

The syncer pyramid model itself is :mod:`talkhead.mssync.syncers` (training and evaluation share it).

Public entry points (the CLI calls these):

* :func:`train_syncers` / :func:`load_syncers` - the syncer pyramid (``talkhead train syncers``);
* :func:`train_generator` - the MS-Sync GAN (``talkhead train generator``);
* :func:`evaluate` / :func:`format_table` - multi-scale AV synchrony (|AV-Off|, AV-Conf) and LMD;
  :func:`syncnet_rows` - SyncNet's LSE-C / LSE-D / AV offset of rendered videos for that table;
* :func:`make_synthetic_dataset` - data with a known speech-motion coupling (tests, smoke runs);
* :mod:`talkhead.train.data` - the on-disk data format (:class:`DatasetWriter`, :class:`WindowDataset`);
* :mod:`talkhead.train.engine` - :func:`run_training` and :class:`TrainTask` for new training commands.
"""
from .data import ClipInfo, DataFormatError, DatasetWriter, WindowDataset, read_manifest
from .engine import NonFiniteLossError, TrainEvent, TrainingInterrupted, run_training
from .evaluate import EvalClip, evaluate, format_table, syncnet_rows
from .synthetic import make_synthetic_dataset
from .generator import train_generator
from ..mssync.syncers import SyncerPyramid
from .syncers import load_syncers, pyramid_sync_loss, train_syncers

__all__ = [
    "ClipInfo", "DataFormatError", "DatasetWriter", "WindowDataset", "read_manifest",
    "NonFiniteLossError", "TrainEvent", "TrainingInterrupted", "run_training",
    "EvalClip", "evaluate", "format_table", "syncnet_rows", "make_synthetic_dataset",
    "SyncerPyramid", "load_syncers", "pyramid_sync_loss", "train_syncers", "train_generator",
]
