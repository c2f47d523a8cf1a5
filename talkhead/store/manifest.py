"""The store's record of the models directory (``manifest.json``: sha256, size, mtime, pin and source of
every recorded file) and this process's memo of the files it has hashed.
"""
from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from ..checkpoints import file_digests
from ..errors import CheckpointError, OutputError
from ..io import atomic_write
from .paths import resolve_models_dir
from .registry import Pin

STORE_MANIFEST_NAME = "manifest.json"
"""The store's record in the models directory (not the training data manifest,
``talkhead.train.data.DATA_MANIFEST_NAME``)."""

MANIFEST_FORMAT = 1

_HASH_MEMO: dict[str, tuple[int, int, dict[str, str]]] = {}
"""``str(path) -> (size, mtime_ns, digests)`` of files hashed by this process."""


def clear_hash_memo() -> None:
    """Forget which files this process has hashed, so the next :func:`talkhead.store.verify`
    re-hashes them as a new process would (for tests and long-running services)."""
    _HASH_MEMO.clear()


def digests(path: Path, algorithms: Sequence[str], *, fresh: bool = False) -> dict[str, str]:
    """Hex digests of ``path``, sha256 plus ``algorithms`` (memoised per process by size +
    ``mtime_ns``; ``fresh`` re-reads the file)."""
    st = path.stat()
    memo = _HASH_MEMO.get(str(path))
    if not fresh and memo is not None and memo[:2] == (st.st_size, st.st_mtime_ns) \
            and all(a in memo[2] for a in algorithms):
        return memo[2]
    out = file_digests(path, tuple(dict.fromkeys(("sha256", *algorithms))))
    _HASH_MEMO[str(path)] = (st.st_size, st.st_mtime_ns, out)
    return out


def hashed_this_process(path: Path, st: os.stat_result) -> Optional[dict[str, str]]:
    """The digests this process computed for ``path`` when its size and mtime were ``st``'s, else ``None``."""
    memo = _HASH_MEMO.get(str(path))
    return memo[2] if memo is not None and memo[:2] == (st.st_size, st.st_mtime_ns) else None


def match_pin(found: Mapping[str, str], pins: Sequence[Pin]) -> Optional[Pin]:
    """The first of ``pins`` whose digest is in ``found`` (``{algorithm: hex}``), else ``None``."""
    return next((p for p in pins if found.get(p.algorithm) == p.digest), None)


def _read(root: Path) -> tuple[dict[str, dict[str, Any]], bool]:
    """``(file entries, lost)`` of the manifest in ``root``; ``({}, False)`` without one.

    Raises:
        CheckpointError: the manifest exists but cannot be read or parsed (the message names it).
    """
    path = root / STORE_MANIFEST_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}, False
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({str(exc)[:120]})") from None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT or not isinstance(files, dict):
        raise CheckpointError(f"{path} is not a talkhead manifest (format {MANIFEST_FORMAT})")
    return {k: v for k, v in files.items() if isinstance(v, dict)}, bool(data.get("lost"))


def read_store_manifest(models_dir: str | os.PathLike | None = None) -> dict[str, dict[str, Any]]:
    """The manifest's file entries, ``relpath -> {"sha256", "size", "mtime_ns", "pin", "source",
    "how", "recorded_at"}`` (plus ``"md5"`` for a file pinned by md5); empty without a manifest.

    Raises:
        CheckpointError: the manifest exists but cannot be read or parsed (the message names it).
    """
    return _read(resolve_models_dir(models_dir))[0]


def manifest_problem(models_dir: str | os.PathLike | None = None) -> tuple[dict[str, dict[str, Any]], str]:
    """``(file entries, problem)``: ``problem`` is empty when the manifest is readable (or absent: a
    new directory), else why files it does not list cannot be trusted as placed by hand: it is
    unreadable (its entries are ``{}``), or it was rebuilt after it was found unreadable (``"lost"``,
    until every file in the directory is recorded again by ``talkhead download --force`` or
    ``--from-dir``). A replaced file must never be re-trusted because its record was destroyed."""
    root = resolve_models_dir(models_dir)
    try:
        files, lost = _read(root)
    except CheckpointError as exc:
        return {}, f"{exc}, so no file it recorded can be trusted"
    if lost:
        return files, (f"{root / STORE_MANIFEST_NAME} was found unreadable and rebuilt; files it no longer lists "
                       "cannot be trusted")
    return files, ""


def _present_files(root: Path) -> list[str]:
    from .registry import REGISTRY

    return [f.relpath for spec in REGISTRY.values() for f in spec.files if (root / f.relpath).is_file()]


def write_manifest(root: Path, updates: Mapping[str, dict[str, Any]]) -> None:
    """Merge ``updates`` into the manifest (re-read just before, to keep concurrent writers'
    entries) and replace it atomically. An unreadable manifest is rebuilt from ``updates`` and
    marked ``"lost": true`` (see :func:`manifest_problem`) until every model file in ``root`` is
    recorded again.

    Raises:
        CheckpointError: it cannot be written.
    """
    try:
        files, lost = _read(root)
    except CheckpointError:
        files, lost = {}, True
    files.update(updates)
    if lost and all(rel in files for rel in _present_files(root)):
        lost = False
    data: dict[str, Any] = {"format": MANIFEST_FORMAT, "files": dict(sorted(files.items()))}
    if lost:
        data["lost"] = True
    text = json.dumps(data, indent=2) + "\n"
    path = root / STORE_MANIFEST_NAME
    try:
        atomic_write(path, lambda f: f.write(text.encode("utf-8")))
    except OutputError as exc:
        raise CheckpointError(f"cannot write {path}: {exc}") from None


def manifest_entry(path: Path, found: Mapping[str, str], pin: Optional[Pin], how: str, source: str) -> dict[str, Any]:
    """The manifest entry of the file at ``path`` with digests ``found``; also remembered as hashed
    by this process."""
    st = path.stat()
    entry = {"sha256": found["sha256"], "size": st.st_size, "mtime_ns": st.st_mtime_ns,
             "pin": pin.label if pin else None, "source": source, "how": how,
             "recorded_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    if pin is not None and pin.algorithm != "sha256":
        entry[pin.algorithm] = found[pin.algorithm]
    _HASH_MEMO[str(path)] = (st.st_size, st.st_mtime_ns, dict(found))
    return entry
