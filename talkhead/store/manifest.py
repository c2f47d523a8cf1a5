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


def read_store_manifest(models_dir: str | os.PathLike | None = None) -> dict[str, dict[str, Any]]:
    """The manifest's file entries, ``relpath -> {"sha256", "size", "mtime_ns", "pin", "source",
    "how", "recorded_at"}`` (plus ``"md5"`` for a file pinned by md5); empty without a manifest.

    Raises:
        CheckpointError: the manifest exists but cannot be read or parsed (the message names it).
    """
    path = resolve_models_dir(models_dir) / STORE_MANIFEST_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc})") from None
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT or not isinstance(files, dict):
        raise CheckpointError(f"{path} is not a talkhead manifest (format {MANIFEST_FORMAT})")
    return {k: v for k, v in files.items() if isinstance(v, dict)}


def write_manifest(root: Path, updates: Mapping[str, dict[str, Any]]) -> None:
    """Merge ``updates`` into the manifest (re-read just before, to keep concurrent writers'
    entries) and replace it atomically.

    Raises:
        CheckpointError: it cannot be written.
    """
    try:
        files = read_store_manifest(root)
    except CheckpointError:
        files = {}  # an unreadable manifest is rebuilt from what is verified now
    files.update(updates)
    text = json.dumps({"format": MANIFEST_FORMAT, "files": dict(sorted(files.items()))}, indent=2) + "\n"
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
