"""The checks a model's files pass before they are recorded: safe loading, each state dict inference
reads against the listing its model's layout callable gives (key by key, shape by shape, computed on
the ``meta`` device), finite weights. Files only: no network is built.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional, Sequence

from ..checkpoints import check_top_level, load_checkpoint, require_finite, state_dict_diff, strip_key_prefix
from ..errors import CheckpointError, ConfigError, StateDictMismatchError, TalkheadError
from .registry import ModelFile, ModelSpec, get_model


def packaged_path(f: ModelFile) -> Path:
    """The path of the copy of ``f`` that ships with talkhead (``f.packaged`` must be set)."""
    return Path(f.packaged())


def check_layout(name: str, files: Mapping[str, str | os.PathLike]) -> None:
    """Check model ``name``'s files before they are recorded: config readable, every checkpoint
    loads safely, the state dicts inference reads match the expected listing key by key and shape
    by shape, and every floating tensor is finite. Networks are not built (the listing comes from
    the ``meta`` device).

    Args:
        name: a registered model (``"fomm"``, ``"mssync"``, ``"smac"``).
        files: ``{relpath: path}``, any subset of the model's files. A checkpoint without its config
            is checked against the packaged config (FOMM, SMAC); an MS-Sync checkpoint without
            ``args`` only for safe loading, its ``checkpoints`` entry and finite weights.

    Raises:
        InputError: an unknown model. ConfigError: a bad config. CheckpointError: unreadable,
        tampered with, an entry missing, or a non-finite tensor (named). StateDictMismatchError:
        keys/shapes differ (listed).
    """
    check_group(get_model(name), {rel: Path(p) for rel, p in files.items()})


def check_checkpoint(spec: ModelSpec, f: ModelFile, path: Path, config_path: Optional[Path]) -> None:
    """Check one checkpoint file ``f`` at ``path`` against its layout for ``config_path`` (without
    a config: safe loading, the entries and finite weights only). A file with its own ``check``
    (a bare state dict, SyncNet) is checked by it alone."""
    if f.check is not None:
        f.check(path)
        return
    expected = f.layout(config_path) if config_path is not None and f.layout else None
    data = load_checkpoint(path, mmap=True)  # shapes + finiteness: mapped, not read into memory
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{path}: a {spec.title} checkpoint is a dict, not {type(data).__name__}")
    check_top_level(data, path)
    for alternatives in f.entries:
        name = next((n for n in alternatives if isinstance(data.get(n), Mapping)), None)
        if name is None:
            present = ", ".join(map(str, data)) or "none"
            raise CheckpointError(f"{path}: {spec.title} checkpoint lacks the {' or '.join(map(repr, alternatives))} "
                                  f"state dict (top-level keys: {present})")
        state_dict = strip_key_prefix(data[name], f.strip_prefix)
        if expected is not None:
            listing = next((expected[n] for n in alternatives if n in expected), None)
            if listing is None:
                raise ConfigError(f"the {spec.title} layout of {f.relpath} gives no listing for "
                                  f"{' or '.join(alternatives)}")
            diff = state_dict_diff(listing, state_dict)
            if diff:
                raise StateDictMismatchError(diff.report(f"{path} [{name}]"))
        require_finite(state_dict, path, name)


def check_group(spec: ModelSpec, group: Mapping[str, Path]) -> None:
    """:func:`check_layout` on the files of ``group`` (``{relpath: path}``); an error names the
    blamed file in its ``model_file`` attribute (a relpath) when it is a checkpoint's.

    Raises:
        TalkheadError: as :func:`check_layout`; anything else a check trips on becomes a
        CheckpointError naming the file.
    """
    cfg = spec.config
    config_path = group.get(cfg.relpath) if cfg is not None else None
    if config_path is None and cfg is not None and cfg.packaged:
        config_path = packaged_path(cfg)
    current: Optional[ModelFile] = None
    try:
        checkpoints = [f for f in spec.checkpoints if f.relpath in group]
        if not checkpoints:
            if config_path is not None and cfg is not None and cfg.relpath in group:
                for f in spec.checkpoints:  # the config alone: it must parse and describe a buildable model
                    if f.layout:
                        f.layout(config_path)
            return
        for current in checkpoints:
            check_checkpoint(spec, current, group[current.relpath], config_path)
    except TalkheadError as exc:
        if current is not None and not isinstance(exc, ConfigError):
            exc.model_file = current.relpath
        raise
    except Exception as exc:  # a verification gate: whatever the check trips on, the file is bad
        where = group.get(current.relpath) if current is not None else (config_path or spec.name)
        first = (str(exc).strip().splitlines() or [""])[0]
        err = CheckpointError(f"{where}: cannot be checked ({type(exc).__name__}: {first})")
        if current is not None:
            err.model_file = current.relpath
        raise err from exc


def blame(spec: ModelSpec, fresh: Sequence[str], exc: BaseException) -> list[str]:
    """Which of the ``fresh`` (new or unrecorded) files a failed check is blamed on: the checkpoint
    it names, the config for a config error, else all of them."""
    if len(fresh) <= 1:
        return list(fresh)
    rel = spec.config.relpath if isinstance(exc, ConfigError) and spec.config is not None else getattr(exc, "model_file", None)
    return [rel] if rel in fresh else list(fresh)
