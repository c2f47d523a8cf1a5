"""Staging and installing: files placed by hand are checked and recorded (:func:`register_local`),
files obtained by hand are copied in, checked and recorded (:func:`install_from`). Every new file goes
through a staging folder ``<root>/.incoming-*`` on the models directory's filesystem, is checked
(:func:`talkhead.store.check_layout`), and only then moved into place (atomically) and recorded.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Optional, Sequence

from ..errors import CheckpointError, InputError, TalkheadError
from .checks import blame, check_group, packaged_path
from .manifest import digests, manifest_entry, match_pin, write_manifest
from .paths import resolve_models_dir
from .registry import ModelFile, ModelSpec, Pin, PinMap, file_of, pins_of, specs_for
from .verification import CORRUPT, MISSING, PACKAGED, UNVERIFIED, VERIFIED, ModelState, verify

STALE_STAGING_S = 24 * 3600
"""Staging folders (``<root>/.incoming-*``) older than this (seconds) are left-overs of a killed
process and are removed by the next download or install."""

_STAGING_PREFIX = ".incoming-"


@contextlib.contextmanager
def staging_dir(root: Path) -> Iterator[Path]:
    """A fresh staging folder ``<root>/.incoming-*`` (same filesystem as the targets, so
    :func:`os.replace` is atomic), removed with all its content on exit, whatever happens; the
    models directory itself is removed again if this call created it and it is still empty."""
    created = [p for p in (root, *root.parents) if not p.exists()]
    try:
        root.mkdir(parents=True, exist_ok=True)
        _remove_stale_staging(root)
        path = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=root))
    except OSError as exc:
        raise CheckpointError(f"cannot write to the models directory {root}: {exc.strerror or exc}") from None
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        for d in created:  # deepest first: nothing empty is left behind by a failed download
            with contextlib.suppress(OSError):
                d.rmdir()


def _remove_stale_staging(root: Path) -> None:
    now = time.time()
    for old in [*root.glob(_STAGING_PREFIX + "*"), *root.glob("*/" + _STAGING_PREFIX + "*")]:
        with contextlib.suppress(OSError):
            if old.is_dir() and now - old.stat().st_mtime > STALE_STAGING_S:
                shutil.rmtree(old, ignore_errors=True)


@dataclass
class Accepted:
    """A checked file waiting to be moved into place and recorded."""

    path: Path
    digests: dict[str, str]
    pin: Optional[Pin]
    source: str


def accept(path: Path, pins: Sequence[Pin], source: str) -> Accepted:
    """Hash the staged file at ``path`` (sha256 plus the pins' algorithms) and note which pin it matches."""
    found = digests(path, [p.algorithm for p in pins], fresh=True)
    return Accepted(path, found, match_pin(found, pins), source)


def commit(root: Path, accepted: Mapping[str, Accepted], how: str) -> None:
    """Move checked files into place (:func:`os.replace`) and record them.

    Raises:
        CheckpointError: the manifest cannot be written.
    """
    entries = {}
    for rel, item in accepted.items():
        target = root / rel
        if item.path != target:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(item.path, target)
        entries[rel] = manifest_entry(target, item.digests, item.pin, how, item.source)
    write_manifest(root, entries)


def stage_packaged(f: ModelFile, staging: Path) -> Path:
    """Copy the packaged file ``f`` (e.g. the FOMM YAML) into ``staging``; its staged path."""
    dst = staging / f.basename
    shutil.copyfile(packaged_path(f), dst)
    return dst


def register_local(models_dir: str | os.PathLike | None = None, *, names: str | Iterable[str] | None = None,
                   accept_changed: bool = True, pins: Optional[PinMap] = None) -> dict[str, ModelState]:
    """Check and record files already in place (put there by hand, or replaced on purpose).

    For each model, every present file that is ``unverified`` (and, with ``accept_changed``, every
    ``corrupt`` one: a file changed since it was recorded) is checked (:func:`~talkhead.store.check_layout`)
    together with its partner; if that passes, its sha256, size, mtime and matching pin (if any)
    are recorded (``how: "register"``). The packaged FOMM config is copied into place when the
    checkpoint is there. Files that fail stay unrecorded and are returned as ``corrupt`` with the
    reason; nothing is raised for them.

    Args:
        models_dir: resolved with :func:`~talkhead.store.resolve_models_dir`.
        names: model names or ``None``: the default models and every optional one with a file there.
        accept_changed: also re-record files whose bytes differ from the record (the explicit
            "I replaced it" action). :func:`~talkhead.store.ensure_models` passes ``False``.
        pins: known-good copies per relpath, replacing the registry's (tests).

    Returns:
        ``{relpath: ModelState}`` of the models after registration.

    Raises:
        InputError: an unknown model name. CheckpointError: the manifest cannot be written.
    """
    root = resolve_models_dir(models_dir)
    specs = specs_for(names, root)
    states = verify(root, [s.name for s in specs], check_layout=False, pins=pins)
    takes = (UNVERIFIED, CORRUPT) if accept_changed else (UNVERIFIED,)
    failed: dict[str, str] = {}
    unrecorded: dict[str, str] = {}
    for spec in specs:
        pending = {f.relpath: root / f.relpath for f in spec.files if states[f.relpath].state in takes}
        cfg = spec.config
        needs_config = (cfg is not None and states[cfg.relpath].state == PACKAGED
                        and any(c.relpath in pending or states[c.relpath].state == VERIFIED for c in spec.checkpoints))
        if not pending and not needs_config:
            continue
        with staging_dir(root) if needs_config else contextlib.nullcontext() as staging:
            if needs_config:
                pending[cfg.relpath] = stage_packaged(cfg, staging)
            group = {f.relpath: root / f.relpath for f in spec.files if states[f.relpath].state == VERIFIED}
            group.update(pending)
            try:
                check_group(spec, group)
            except TalkheadError as exc:
                failed.update({rel: f"fails the checks: {exc}" for rel in blame(spec, list(pending), exc)})
                continue
            accepted = {rel: accept(p, pins_of(file_of(rel), pins), "local file") for rel, p in pending.items()}
            try:
                commit(root, accepted, how="register")
            except CheckpointError as exc:  # a read-only models directory: checked, not recorded
                unrecorded.update({rel: f"passes the checks but cannot be recorded: {exc}" for rel in pending})
    out = verify(root, [s.name for s in specs], hash_check="stat", check_layout=False, pins=pins)
    for rel, why in unrecorded.items():
        if out[rel].state == UNVERIFIED:
            out[rel] = dataclasses.replace(out[rel], reason=why)
    for rel, why in failed.items():
        old = out[rel]
        if old.state not in (MISSING, PACKAGED):
            out[rel] = ModelState(rel, old.model, CORRUPT, old.path, why)
    return out


def find_in(folder: Path, spec: ModelSpec, f: ModelFile) -> Optional[Path]:
    """Where ``f`` is in a folder of downloads: ``<relpath>``, ``<file name>`` or ``*/<file name>``."""
    if spec.optional and f.role == "config":  # a generic name (config.yml): only DIR/smac/config.yml
        candidates = [folder / f.relpath]
    else:
        candidates = [folder / f.relpath, folder / f.basename, *sorted(folder.glob(f"*/{f.basename}"))]
    return next((c for c in candidates if c.is_file()), None)


def install_from(source: str | os.PathLike | Iterable[str | os.PathLike],
                 models_dir: str | os.PathLike | None = None, *,
                 names: str | Iterable[str] | None = None, pins: Optional[PinMap] = None) -> dict[str, ModelState]:
    """Copy model files obtained by hand into the models directory, check and record them.

    Each file is looked up by name: in a folder ``source`` as ``<relpath>``, ``<file name>`` or
    ``*/<file name>`` (e.g. ``DIR/fomm/vox-adv-cpk.pth.tar``, ``DIR/vox-adv-cpk.pth.tar`` or
    ``DIR/checkpoint/model_chkpt.pt``); in a list of files by file name. SMAC's config override is
    taken only from ``DIR/smac/config.yml`` (or given by path), and without ``names`` SMAC is
    considered only when one of its weight files is found. Per model the found files
    are copied into a staging folder, checked (:func:`~talkhead.store.check_layout`) with their partners (present or
    copied along; the FOMM and SMAC configs fall back to the packaged ones), and only then moved into place
    and recorded (``how: "install"``, with the pin they match, if any: a hand-installed file need
    not match one). A model that fails leaves the directory as it was.

    Args:
        source: a folder, one file, or several files.
        models_dir: the destination, resolved with :func:`~talkhead.store.resolve_models_dir`.
        names: restrict to these models (default: every model with a file in ``source``).
        pins: known-good copies per relpath, replacing the registry's (tests).

    Returns:
        ``{relpath: ModelState}`` of the models concerned, after installation.

    Raises:
        InputError: ``source`` does not exist, or holds none of the files.
        CheckpointError: a found file fails the checks (the message names the file and why; the
            other models are still installed), or the directory is not writable.
    """
    root = resolve_models_dir(models_dir)
    specs = specs_for(names, every=True)
    if isinstance(source, (str, os.PathLike)):
        src = Path(source).expanduser()
        if src.is_dir():
            found = {f.relpath: p for spec in specs for f in spec.files if (p := find_in(src, spec, f))}
        elif src.is_file():
            found = {f.relpath: src for spec in specs for f in spec.files if f.basename == src.name}
        else:
            raise InputError(f"{src} does not exist: give the folder holding the model files you downloaded")
        where = str(src)
    else:
        paths = [Path(p).expanduser() for p in source]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise InputError(f"not a file: {', '.join(missing)}")
        found = {f.relpath: p for spec in specs for f in spec.files for p in paths if p.name == f.basename}
        where = ", ".join(map(str, paths))
    if names is None:  # an optional model is installed from a folder only when its weights are there
        for spec in specs:
            if spec.optional and not any(c.relpath in found for c in spec.checkpoints):
                found = {rel: p for rel, p in found.items() if not rel.startswith(spec.name + "/")}
    if not found:
        wanted = ", ".join(f.basename for spec in specs for f in spec.files if not f.packaged)
        raise InputError(f"none of the model files ({wanted}) found in {where}")
    errors = []
    touched = []
    for spec in specs:
        mine = {rel: p for rel, p in found.items() if rel.startswith(spec.name + "/")}
        if not mine:
            continue
        touched.append(spec.name)
        with staging_dir(root) as staging:
            new = {}
            for rel, p in mine.items():
                dst = staging / rel.rsplit("/", 1)[-1]
                try:
                    shutil.copyfile(p, dst)
                except OSError as exc:
                    raise CheckpointError(f"cannot copy {p} into {root}: {exc.strerror or exc}") from None
                new[rel] = dst
            cfg = spec.config
            if cfg is not None and cfg.packaged and cfg.relpath not in new and not (root / cfg.relpath).is_file():
                new[cfg.relpath] = stage_packaged(cfg, staging)
            group = {f.relpath: root / f.relpath for f in spec.files if (root / f.relpath).is_file()}
            group.update(new)
            try:
                check_group(spec, group)
            except TalkheadError as exc:
                bad = ", ".join(str(mine.get(rel, rel)) for rel in blame(spec, list(new), exc))
                errors.append(f"{bad} is not a valid {spec.title} file, nothing was installed for {spec.name}: {exc}")
                continue
            commit(root, {rel: accept(p, pins_of(file_of(rel), pins), f"install_from {where}")
                           for rel, p in new.items()}, how="install")
    if errors:
        raise CheckpointError("\n".join(errors))
    return verify(root, touched, hash_check="stat", check_layout=False, pins=pins)

