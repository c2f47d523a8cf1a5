"""Training engine shared by ``talkhead train syncers`` and ``talkhead train generator``.

A training command is a :class:`TrainTask` (models, optimisers, schedulers, a batch stream, one
``train_step`` and a ``validate``); :func:`run_training` drives it:

* **Config.** A YAML of defaults per command (``talkhead/train/configs/<name>.yaml``, paper values),
  a user YAML and CLI overrides are merged by :func:`load_run_config` (unknown keys and wrong types
  raise :class:`~talkhead.errors.ConfigError`) and saved as ``RUN_DIR/config.yaml``.
* **Distributed.** Launched by ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` in the
  environment) the engine joins a ``torch.distributed`` process group (NCCL on GPUs, gloo on CPU);
  the task wraps its models with :meth:`RunContext.wrap_ddp`; each rank reads its own shard
  (:class:`~talkhead.train.data.StepBatchSampler`); only rank 0 writes files.
* **Checkpoints.** ``RUN_DIR/checkpoint.pt`` holds models, optimisers, schedulers, the step and every
  rank's RNG states (python, numpy, torch, CUDA) as tensors and plain types, so it loads with
  ``torch.load(..., weights_only=True)``. It is written to a temporary file and ``os.replace``-d:
  a crash never leaves a partial checkpoint. Saved every ``checkpoint_every`` steps, at the end, and
  on Ctrl-C (SIGINT, or the SIGTERM torchrun forwards, becomes a stop request honoured at the end of
  the current step on every rank, after which :class:`TrainingInterrupted` is raised).
* **Resume.** ``resume=True`` restores all of the above; because the batch of a step is a function of
  the step (not of iterator state) and every random draw comes from the restored RNGs, a resumed
  run reproduces the losses of an uninterrupted one exactly (same device, same world size).
* **Non-finite loss.** Any NaN/inf in a step's losses raises :class:`NonFiniteLossError` before
  anything is saved: ``checkpoint.pt`` stays the last good one.
* **Metrics.** ``RUN_DIR/metrics.jsonl``: one JSON object per line, ``{"step", "split", ...}`` for
  train/val metrics and ``{"event": ...}`` for checkpoints, resumes, interruptions. On resume, lines
  past the checkpoint's step are dropped so the file reads like one uninterrupted run.
* **Progress.** ``progress(event: TrainEvent)`` is called on rank 0 after every step, validation and
  checkpoint; the CLI renders it (e.g. a Rich bar with live losses).

The engine chooses no architecture and no loss: both live in the task.
"""
from __future__ import annotations

import abc
import copy
import dataclasses
import json
import math
import os
import random
import signal
import threading
import time
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
import torch.distributed as dist
import yaml

from ..checkpoints import load_checkpoint, load_state_dict_checked
from ..errors import CheckpointError, ConfigError, OutputError, TalkheadError
from ..devices import resolve_device
from ..io import atomic_write

CHECKPOINT_NAME = "checkpoint.pt"
CONFIG_NAME = "config.yaml"
METRICS_NAME = "metrics.jsonl"
FINAL_METRICS_NAME = "final_metrics.json"
CHECKPOINT_FORMAT = "talkhead-train-checkpoint"
CHECKPOINT_VERSION = 1

RESUMABLE_KEYS = frozenset({"steps", "checkpoint_every", "val_every", "log_every", "num_workers", "device"})
"""Config keys that may change when resuming (everything else must match the saved run config)."""


class TrainingInterrupted(TalkheadError):
    """Training stopped on Ctrl-C/SIGINT; a checkpoint of the last completed step was saved."""

    exit_code = 130


class NonFiniteLossError(TalkheadError):
    """A loss became NaN or infinite; nothing was saved after it (the last good checkpoint is kept)."""


# ============================================================================================ config
def _deep_merge(base: dict, override: Mapping, where: str = "") -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        path = f"{where}{key}"
        if key not in out:
            raise ConfigError(f"unknown config key {path!r} (known: {', '.join(sorted(map(str, out)))})")
        default = out[key]
        if isinstance(default, dict):
            if not isinstance(value, Mapping):
                raise ConfigError(f"config key {path!r} must be a mapping, got {value!r}")
            out[key] = _deep_merge(default, value, f"{path}.")
        else:
            out[key] = _coerce(path, default, value)
    return out


def _coerce(path: str, default: Any, value: Any) -> Any:
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"config key {path!r} must be true/false, got {value!r}")
        return value
    if isinstance(default, int) and not isinstance(default, bool):
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"config key {path!r} must be an integer, got {value!r}")
        return int(value)
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key {path!r} must be a number, got {value!r}")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"config key {path!r} must be a string, got {value!r}")
        return value
    if isinstance(default, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {path!r} must be a list, got {value!r}")
        return list(value)
    return value


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping. Raises ConfigError if missing, unparsable or not a mapping."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError(f"config {path} must be a YAML mapping, got {type(doc).__name__}")
    return doc


def dotted_to_nested(flat: Mapping[str, Any]) -> dict:
    """``{"model.hidden": 32, "lr": 1e-4}`` -> ``{"model": {"hidden": 32}, "lr": 1e-4}`` (CLI ``--set k=v``)."""
    out: dict = {}
    for key, value in flat.items():
        node = out
        parts = str(key).split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return out


def load_run_config(defaults: str | Path | Mapping, config: str | Path | Mapping | None = None,
                    overrides: Mapping | None = None) -> dict:
    """Merge run configuration: ``defaults`` <- ``config`` (YAML path or mapping) <- ``overrides``.

    Every key of ``config``/``overrides`` must exist in ``defaults`` and have a compatible type
    (ints for ints, numbers for floats, bools for bools); nested mappings merge key by key.
    ``overrides`` may use dotted keys (``"model.hidden"``).

    Raises:
        ConfigError: unknown key, wrong type, unreadable YAML.
    """
    base = dict(defaults) if isinstance(defaults, Mapping) else read_yaml(defaults)
    if config is not None:
        base = _deep_merge(base, config if isinstance(config, Mapping) else read_yaml(config))
    if overrides:
        base = _deep_merge(base, dotted_to_nested(overrides))
    return base


def resolve_run_config(defaults: str | Path | Mapping, run_dir: str | Path, *, resume: bool = False,
                       config: str | Path | Mapping | None = None, overrides: Mapping | None = None) -> dict:
    """The config of a new run (``defaults`` <- ``config`` <- ``overrides``) or of a resumed one.

    When ``resume`` and ``RUN_DIR/config.yaml`` exists, the saved config is the base instead of
    ``defaults``, so only what the user passes again (e.g. ``steps``) is compared by
    :func:`run_training` against the checkpoint.

    Raises:
        ConfigError: see :func:`load_run_config`.
    """
    saved = Path(run_dir) / CONFIG_NAME
    base: Any = defaults
    if resume and saved.is_file():
        merged_defaults = dict(defaults) if isinstance(defaults, Mapping) else read_yaml(defaults)
        # keys added to the defaults after the run started keep their default value
        base = _deep_merge(merged_defaults, read_yaml(saved))
    return load_run_config(base, config, overrides)


# ============================================================================================ typed configs
def _typed_value(path: str, hint: Any, value: Any) -> Any:
    """``value`` checked against the annotation ``hint`` (int, float, str, bool, tuple[...], dict,
    Optional[...], or a dataclass), converted where lossless (an integral float to int, an int to float)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _typed_value(path, inner, value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key {path!r} must be true/false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"config key {path!r} must be an integer, got {value!r}")
        return int(value)
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key {path!r} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key {path!r} must be a string, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or (args[-1:] != (Ellipsis,) and len(value) != len(args)):
            raise ConfigError(f"config key {path!r} must be a list of {len(args)}, got {value!r}")
        kinds = [args[0]] * len(value) if args[-1:] == (Ellipsis,) else list(args)
        return tuple(_typed_value(f"{path}[{i}]", k, v) for i, (k, v) in enumerate(zip(kinds, value)))
    if hint is dict or origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key {path!r} must be a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key {path!r} must be a mapping, got {value!r}")
        from_mapping = getattr(hint, "from_mapping", None)
        return from_mapping(value) if from_mapping is not None else typed_config(hint, value, f"{path}.")
    return value


def typed_config(cls: type, mapping: Mapping, where: str = ""):
    """Build the frozen config dataclass ``cls`` from a merged run config, checking every value's type
    once (keys of ``mapping`` that ``cls`` lacks are ignored: each reader takes its part).

    Raises:
        ConfigError: a key ``cls`` needs is missing, or a value has the wrong type.
    """
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in mapping:
            values[f.name] = _typed_value(f"{where}{f.name}", hints[f.name], mapping[f.name])
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"run config lacks {where}{f.name!r}")
    return cls(**values)


@dataclass(frozen=True, kw_only=True)
class EngineConfig:
    """The run-config keys the engine itself reads (a task's config class extends it).

    Attributes:
        seed: RNG seed; steps: optimisation steps to reach; checkpoint_every / val_every /
        log_every: steps between checkpoints, validations, ``metrics.jsonl`` train lines (0: only at
        the end); num_workers: DataLoader workers per rank; device: ``auto | cpu | cuda | mps``.
    """

    seed: int
    steps: int
    checkpoint_every: int = 0
    val_every: int = 0
    log_every: int = 1
    num_workers: int = 0
    device: str = "auto"

    @classmethod
    def from_config(cls, mapping: Mapping):
        """:func:`typed_config` of ``cls``. Raises ConfigError."""
        return typed_config(cls, mapping)


# ============================================================================================ distributed
@dataclass
class DistInfo:
    """Process-group facts for this process (``world_size == 1``: no process group)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device_kind: str = "auto") -> DistInfo:
    """Join the process group described by torchrun's ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``.

    Backend: NCCL when CUDA is used, gloo otherwise. Without those variables (or ``WORLD_SIZE=1``)
    this is a single-process run. A group that already exists is reused (and not destroyed by us).
    """
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)),
                        dist.get_backend(), False)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    use_cuda = torch.cuda.is_available() and device_kind in ("auto", "cuda")
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistInfo(rank, world, local_rank, backend, True)


# ============================================================================================ RNG states
def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy's global RNG and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def get_rng_state() -> dict:
    """This process's RNG states as tensors and plain types (loadable with ``weights_only=True``)."""
    version, mt, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": {"version": int(version), "state": torch.tensor(mt, dtype=torch.int64), "gauss": gauss},
        "numpy": {"name": str(np_name), "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: Mapping) -> None:
    """Inverse of :func:`get_rng_state`."""
    py = state["python"]
    random.setstate((int(py["version"]), tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), int(n["pos"]), int(n["has_gauss"]),
                         float(n["gauss"])))
    torch.set_rng_state(state["torch"].to(torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.to(torch.uint8) for s in state["cuda"]])


# ============================================================================================ checkpoint I/O
def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then ``os.replace`` onto ``path``."""
    atomic_write(path, lambda f: torch.save(obj, f))


def _atomic_write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text.encode()))


def read_run_checkpoint(path: str | Path) -> dict:
    """Load an engine checkpoint (``weights_only=True``) and check its format.

    Raises:
        CheckpointError: missing file, unreadable, or not a talkhead training checkpoint.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError:
        raise
    except Exception as exc:  # corrupt zip, truncated file, unsafe pickle content
        raise CheckpointError(f"cannot load training checkpoint {path}: {exc}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a talkhead training checkpoint")
    if int(ckpt.get("version", 0)) > CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint version {ckpt['version']} is newer than supported")
    return ckpt


def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    return module.module if isinstance(module, torch.nn.parallel.DistributedDataParallel) else module


# ============================================================================================ task API
@dataclass
class RunContext:
    """What a task gets from the engine.

    Attributes:
        config: the merged run config (plain dict, as saved in ``config.yaml``); a task reads it
            once into its typed config (an :class:`EngineConfig` subclass, :func:`typed_config`).
        run_dir: run folder (exists; only rank 0 writes into it).
        device: the torch device of this rank.
        dist: rank/world size/backend.
    """

    config: dict
    run_dir: Path
    device: torch.device
    dist: DistInfo = field(default_factory=DistInfo)

    @property
    def rank(self) -> int:
        return self.dist.rank

    @property
    def world_size(self) -> int:
        return self.dist.world_size

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    def wrap_ddp(self, module: torch.nn.Module, **kwargs) -> torch.nn.Module:
        """Wrap in ``DistributedDataParallel`` when distributed (identity otherwise)."""
        if not self.dist.distributed:
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids, **kwargs)

    def make_loader(self, dataset, batch_size: int, *, start_step: int, total_steps: int, seed: int,
                    num_workers: int = 0, collate_fn=None) -> torch.utils.data.DataLoader:
        """A DataLoader yielding this rank's batch for steps ``start_step+1 .. total_steps``.

        Uses :class:`~talkhead.train.data.StepBatchSampler` and a private ``torch.Generator`` (so
        creating the loader never consumes the global RNG, keeping resume exact).
        """
        from .data import StepBatchSampler

        sampler = StepBatchSampler(len(dataset), batch_size, total_steps=total_steps, start_step=start_step,
                                   seed=seed, rank=self.rank, world_size=self.world_size)
        gen = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(start_step))
        return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                                           collate_fn=collate_fn, generator=gen,
                                           persistent_workers=False, pin_memory=self.device.type == "cuda")


class TrainTask(abc.ABC):
    """A training command plugged into :func:`run_training`.

    Lifecycle: ``setup(ctx)`` (build models, optimisers, schedulers, datasets; the engine has seeded
    every RNG with ``config['seed']`` so all ranks build identical models), optional checkpoint
    restore, then for each step ``s`` in ``start+1 .. steps``: ``batch = next(batches)``,
    ``losses = train_step(batch, s)``; ``validate(s)`` every ``val_every`` steps and at the end;
    ``final_metrics()`` once at the end.

    Rules for exact resume: draw all randomness from the global RNGs (python/numpy/torch) inside
    ``train_step`` (never at import or in ``batches``), make ``batches(start)`` a function of the
    step (use :meth:`RunContext.make_loader`), and make ``validate`` use its own seeded generator.
    """

    name: str = "task"

    @abc.abstractmethod
    def setup(self, ctx: RunContext) -> None:
        """Build models, optimisers, schedulers and data on ``ctx.device``."""

    @abc.abstractmethod
    def models(self) -> dict[str, torch.nn.Module]:
        """Modules to checkpoint, by name (DDP wrappers are unwrapped when saving)."""

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """Optimisers to checkpoint, by name."""
        return {}

    def schedulers(self) -> dict[str, Any]:
        """LR schedulers (anything with ``state_dict``/``load_state_dict``) to checkpoint, by name."""
        return {}

    @abc.abstractmethod
    def batches(self, start_step: int) -> Iterator[Any]:
        """Batches for steps ``start_step + 1, ...`` (one per step)."""

    @abc.abstractmethod
    def train_step(self, batch: Any, step: int) -> dict[str, float]:
        """One optimisation step; return scalar losses (must include ``"loss"``)."""

    def validate(self, step: int) -> dict[str, float]:
        """Validation metrics (scalars); called on every rank."""
        return {}

    def final_metrics(self) -> dict:
        """JSON-serialisable summary returned by :func:`run_training` (rank 0 writes it)."""
        return {}

    def extra_state(self) -> dict:
        """Extra weights-only-safe state to checkpoint (tensors / plain types)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        """Inverse of :meth:`extra_state`."""

    def on_checkpoint(self, step: int) -> None:
        """Called on rank 0 right after ``checkpoint.pt`` of ``step`` was written (atomically, after the
        step's losses were found finite): the place to export models in other formats."""


@dataclass
class TrainEvent:
    """What the progress callback receives.

    Attributes:
        kind: ``"start"``, ``"step"``, ``"val"``, ``"checkpoint"`` or ``"end"``.
        step: completed optimisation steps; total_steps: the run's target.
        metrics: the latest scalars (train losses for ``step``, validation metrics for ``val``).
    """

    kind: str
    step: int
    total_steps: int
    metrics: dict = field(default_factory=dict)


ProgressFn = Callable[[TrainEvent], None]


# ============================================================================================ the loop
class _StopFlag:
    """SIGINT/SIGTERM -> a flag checked at step boundaries; a second signal raises KeyboardInterrupt.

    SIGTERM is included because ``torchrun`` answers Ctrl-C by sending SIGTERM to its workers (and
    SIGKILL 30 s later), and cluster schedulers pre-empt jobs the same way.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self._previous: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.getsignal(sig)
                signal.signal(sig, self._handler)
        return self

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        return False


class _Runner:
    def __init__(self, task: TrainTask, run_dir: Path, config: dict, dist_info: DistInfo, device: torch.device,
                 progress: ProgressFn | None):
        self.task, self.run_dir, self.config = task, run_dir, config
        self.settings = EngineConfig.from_config(config)
        self.dist, self.device, self.progress = dist_info, device, progress
        self.ckpt_path = run_dir / CHECKPOINT_NAME
        self.metrics_path = run_dir / METRICS_NAME
        self.t0 = time.time()

    # ---- logging (rank 0 only)
    def log(self, record: dict) -> None:
        if not self.dist.is_main:
            return
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def emit(self, kind: str, step: int, metrics: dict | None = None) -> None:
        if self.progress is not None and self.dist.is_main:
            self.progress(TrainEvent(kind, step, self.settings.steps, dict(metrics or {})))

    # ---- checkpoints
    def _gather_rng(self) -> list:
        state = get_rng_state()
        if not self.dist.distributed:
            return [state]
        out: list = [None] * self.dist.world_size
        dist.all_gather_object(out, state)
        return out

    def save(self, step: int) -> None:
        """Collective on all ranks (RNG gather); rank 0 writes the checkpoint atomically."""
        rng = self._gather_rng()
        if self.dist.is_main:
            payload = {
                "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "task": self.task.name,
                "step": int(step), "world_size": self.dist.world_size, "config": self.config,
                "models": {k: _unwrap(m).state_dict() for k, m in self.task.models().items()},
                "optimizers": {k: o.state_dict() for k, o in self.task.optimizers().items()},
                "schedulers": {k: s.state_dict() for k, s in self.task.schedulers().items()},
                "rng": rng, "extra": self.task.extra_state(),
            }
            atomic_torch_save(payload, self.ckpt_path)
            self.task.on_checkpoint(int(step))
            self.log({"event": "checkpoint", "step": int(step), "path": str(self.ckpt_path)})
            self.emit("checkpoint", step)

    def restore(self, ckpt: dict) -> int:
        if ckpt.get("task") != self.task.name:
            raise CheckpointError(f"{self.ckpt_path} belongs to a {ckpt.get('task')!r} run, not {self.task.name!r}")
        for name, module in self.task.models().items():
            if name not in ckpt["models"]:
                raise CheckpointError(f"{self.ckpt_path}: no state for model {name!r}")
            load_state_dict_checked(_unwrap(module), ckpt["models"][name], f"{self.ckpt_path} [{name}]")
        for group, objs in (("optimizers", self.task.optimizers()), ("schedulers", self.task.schedulers())):
            for name, obj in objs.items():
                if name not in ckpt[group]:
                    raise CheckpointError(f"{self.ckpt_path}: no state for {group[:-1]} {name!r}")
                obj.load_state_dict(ckpt[group][name])
        self.task.load_extra_state(ckpt.get("extra", {}))
        rng = ckpt["rng"]
        if len(rng) != self.dist.world_size:
            warnings.warn(f"checkpoint written by {len(rng)} rank(s), resuming on {self.dist.world_size}: "
                          "data order is kept but random draws will differ from an uninterrupted run")
        if self.dist.rank < len(rng):
            set_rng_state(rng[self.dist.rank])
        else:
            seed_everything(self.settings.seed + 7919 * self.dist.rank + int(ckpt["step"]))
        return int(ckpt["step"])

    # ---- collective helpers
    def reduce_scalars(self, values: dict[str, float]) -> dict[str, float]:
        if not self.dist.distributed or not values:
            return values
        keys = sorted(values)
        t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(t)
        t /= self.dist.world_size
        return dict(zip(keys, t.tolist()))

    def any_rank(self, flag: bool) -> bool:
        if not self.dist.distributed:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self._comm_device())
        dist.all_reduce(t)
        return bool(t.item() > 0)

    def _comm_device(self) -> torch.device:
        return self.device if self.dist.backend == "nccl" else torch.device("cpu")

    # ---- main loop
    def run(self, start_step: int) -> dict:
        cfg, task = self.settings, self.task
        total = cfg.steps
        ckpt_every, val_every = cfg.checkpoint_every, cfg.val_every
        log_every = max(1, cfg.log_every)
        step = start_step
        last_saved = start_step if start_step > 0 else -1
        self.emit("start", step)
        batches = iter(task.batches(start_step))
        with _StopFlag() as stop:
            try:
                while step < total:
                    batch = next(batches)
                    losses = task.train_step(batch, step + 1)
                    step += 1
                    if "loss" not in losses:
                        raise TypeError(f"{type(task).__name__}.train_step must return a 'loss' entry")
                    losses = self.reduce_scalars({k: float(v) for k, v in losses.items()})
                    bad = {k: v for k, v in losses.items() if not math.isfinite(v)}
                    if bad:
                        self.log({"event": "non_finite", "step": step, **{k: str(v) for k, v in bad.items()}})
                        where = (f"the last good checkpoint (step {last_saved}) is kept at {self.ckpt_path}"
                                 if last_saved >= 0 else "no checkpoint had been saved yet")
                        raise NonFiniteLossError(
                            f"non-finite loss at step {step}: " + ", ".join(f"{k}={v}" for k, v in bad.items())
                            + f"; training stopped and {where}. Lower the learning rate or check the data, "
                              "then resume with --resume.")
                    if step % log_every == 0 or step == total:
                        self.log({"step": step, "split": "train", "time_s": round(time.time() - self.t0, 3), **losses})
                    self.emit("step", step, losses)
                    if val_every > 0 and (step % val_every == 0 or step == total):
                        self._validate(step)
                    if (ckpt_every > 0 and step % ckpt_every == 0) or step == total:
                        self.save(step)
                        last_saved = step
                    if self.any_rank(stop.requested) and step < total:
                        if last_saved != step:
                            self.save(step)
                            last_saved = step
                        self.log({"event": "interrupted", "step": step})
                        raise TrainingInterrupted(
                            f"interrupted at step {step}/{total}; checkpoint saved to {self.ckpt_path} "
                            "(continue with --resume)")
            except KeyboardInterrupt:
                # Only reachable when no SIGINT handler could be installed (not the main thread) or on a
                # second Ctrl-C: the step in flight may be half applied, so nothing more is saved.
                raise TrainingInterrupted(
                    f"interrupted during step {step + 1}; last checkpoint "
                    f"{'(step %d) ' % last_saved if last_saved >= 0 else ''}kept at {self.ckpt_path}") from None
        if val_every <= 0 or step == start_step:
            self._validate(step)
        final = task.final_metrics()
        final = {"step": step, **final}
        if self.dist.is_main:
            _atomic_write_text(self.run_dir / FINAL_METRICS_NAME, json.dumps(final, indent=1))
        self.log({"event": "end", "step": step})
        self.emit("end", step, _flat_scalars(final))
        return final

    def _validate(self, step: int) -> None:
        metrics = self.task.validate(step)
        if metrics:
            self.log({"step": step, "split": "val", **metrics})
            self.emit("val", step, metrics)


def _flat_scalars(d: Mapping, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flat_scalars(v, f"{prefix}{k}/"))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = v
    return out


def _truncate_metrics(path: Path, step: int) -> None:
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash
        if int(rec.get("step", 0)) <= step and rec.get("event") not in ("interrupted", "non_finite", "end"):
            kept.append(line)
    _atomic_write_text(path, "".join(l + "\n" for l in kept))


def run_training(task: TrainTask, run_dir: str | Path, config: Mapping, *, resume: bool = False,
                 progress: ProgressFn | None = None) -> dict:
    """Run (or resume) ``task`` in ``run_dir`` with the merged ``config``; return its final metrics.

    ``config`` must contain ``seed`` and ``steps`` and may contain ``checkpoint_every``,
    ``val_every``, ``log_every`` (steps; 0 disables) and ``device`` (auto/cpu/cuda/mps).
    When resuming, the run's saved ``config.yaml`` is the base and only :data:`RESUMABLE_KEYS` may
    differ in ``config`` (e.g. a larger ``steps`` to train longer).

    Raises:
        OutputError: ``run_dir`` already holds a checkpoint and ``resume`` is False.
        CheckpointError: ``resume`` without a (valid) checkpoint, or one from another task.
        ConfigError: changed non-resumable keys on resume, bad values.
        NonFiniteLossError: a loss became NaN/inf (the last good checkpoint is kept).
        TrainingInterrupted: Ctrl-C (a checkpoint of the last completed step was saved).
    """
    run_dir = Path(run_dir)
    config = copy.deepcopy(dict(config))
    info = init_distributed(EngineConfig.from_config(config).device)
    try:
        ckpt_path = run_dir / CHECKPOINT_NAME
        ckpt = None
        if resume:
            if not ckpt_path.is_file():
                raise CheckpointError(f"cannot resume: no {CHECKPOINT_NAME} in {run_dir}")
            ckpt = read_run_checkpoint(ckpt_path)
            saved = ckpt["config"]
            changed = sorted(k for k in saved if k not in RESUMABLE_KEYS and k in config and saved[k] != config[k])
            if changed:
                raise ConfigError(f"cannot resume with a different config for {', '.join(changed)} "
                                  f"(only {', '.join(sorted(RESUMABLE_KEYS))} may change)")
            config = {**config, **saved, **{k: config[k] for k in RESUMABLE_KEYS if k in config}}
            if EngineConfig.from_config(config).steps < int(ckpt["step"]):
                raise ConfigError(f"steps={config['steps']} is below the checkpoint's step {ckpt['step']}")
        elif ckpt_path.exists():
            raise OutputError(f"{run_dir} already holds a training checkpoint; pass resume=True (--resume) "
                              "or choose another run directory")
        if info.is_main:
            try:
                run_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise OutputError(f"cannot create run directory {run_dir}: {exc}") from None
            _atomic_write_text(run_dir / CONFIG_NAME, yaml.safe_dump(config, sort_keys=False))
            if ckpt is not None:
                _truncate_metrics(run_dir / METRICS_NAME, int(ckpt["step"]))
            elif (run_dir / METRICS_NAME).exists():
                (run_dir / METRICS_NAME).unlink()
        if info.distributed:
            dist.barrier()
        settings = EngineConfig.from_config(config)
        device = resolve_device(settings.device, cuda_index=info.local_rank, allow_mps=not info.distributed)
        ctx = RunContext(config=config, run_dir=run_dir, device=device, dist=info)
        seed_everything(settings.seed)
        task.setup(ctx)
        seed_everything(settings.seed + 7919 * info.rank)
        runner = _Runner(task, run_dir, config, info, device, progress)
        start = 0
        if ckpt is not None:
            start = runner.restore(ckpt)
            runner.log({"event": "resume", "step": start})
        return runner.run(start)
    finally:
        if info.owns_group and dist.is_initialized():
            dist.destroy_process_group()
