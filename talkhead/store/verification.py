"""The five states of a model file and :func:`verify`, which finds them: recorded files are compared
with the manifest (size, pin, sha256 once per process), unrecorded ones optionally layout-checked.
Nothing is recorded here (see :func:`talkhead.store.register_local`).
"""
from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

from ..errors import CheckpointError, InputError, TalkheadError
from .checks import blame, check_group, packaged_path
from .manifest import STORE_MANIFEST_NAME, digests, hashed_this_process, manifest_problem, write_manifest
from .paths import resolve_models_dir
from .registry import ModelFile, Pin, PinMap, pins_of, specs_for

MISSING = "missing"
"""No file at the expected path."""
PACKAGED = "packaged"
"""A file that ships with talkhead (the FOMM YAML) and is not in the directory yet: copied in on first use."""
VERIFIED = "verified"
"""Recorded in the manifest and its bytes are unchanged."""
CORRUPT = "corrupt"
"""Size, sha256 or pin differs from the record, or (unrecorded) it fails the checks, or it is unrecorded
while ``manifest.json`` is unreadable or was rebuilt after being unreadable (its record may have been
destroyed: see :func:`talkhead.store.manifest.manifest_problem`)."""
UNVERIFIED = "unverified"
"""Present but not recorded in the manifest (placed by hand); checked and recorded on first use."""

HASH_CHECKS = ("stat", "once", "always")
"""The values of :func:`verify`'s ``hash_check``."""


@dataclass(frozen=True)
class ModelState:
    """The state of one model file in a models directory (see :mod:`talkhead.store`).

    Attributes:
        name: its ``relpath`` (``"fomm/vox-adv-cpk.pth.tar"``).
        model: the model it belongs to (``"fomm"``, ``"mssync"``).
        state: ``"missing"``, ``"packaged"``, ``"verified"``, ``"corrupt"`` or ``"unverified"``.
        path: absolute path.
        reason: why it is not ``verified``; for a ``verified`` file, empty, or a note (a config that
            differs from the copy that ships with talkhead).
        sha256: hex digest recorded in the manifest (``None`` when not recorded).
        size: recorded size in bytes (``None`` when not recorded).
        pin: label of the known-good copy it matches (``"published"``...), ``None`` if none.
    """

    name: str
    model: str
    state: str
    path: Path
    reason: str = ""
    sha256: Optional[str] = None
    size: Optional[int] = None
    pin: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.state == VERIFIED

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy (``path`` as a string)."""
        return {"name": self.name, "model": self.model, "state": self.state, "path": str(self.path),
                "reason": self.reason, "sha256": self.sha256, "size": self.size, "pin": self.pin}


def _file_state(root: Path, f: ModelFile, manifest: Mapping[str, dict], manifest_problem: str, hash_check: str,
                pins: Sequence[Pin], refreshed: dict[str, dict]) -> ModelState:
    path = root / f.relpath
    model = f.model
    if not path.exists():
        if f.packaged:
            return ModelState(f.relpath, model, PACKAGED, path, "ships with talkhead; copied into place on first use")
        return ModelState(f.relpath, model, MISSING, path, f"no file at {path}")
    if not path.is_file():
        return ModelState(f.relpath, model, CORRUPT, path, f"{path} is not a regular file")
    entry = manifest.get(f.relpath)
    if entry is None:
        if manifest_problem:  # its record may have been destroyed: never re-trusted as placed by hand
            return ModelState(f.relpath, model, CORRUPT, path,
                              f"not trusted: {manifest_problem}; re-record it with `talkhead download --force "
                              f"{model}` or `talkhead download {model} --from-dir FOLDER`")
        return ModelState(f.relpath, model, UNVERIFIED, path,
                          f"present but not recorded in {STORE_MANIFEST_NAME} (placed by hand?)")
    want_sha, want_size = entry.get("sha256"), entry.get("size")
    pin = next((p for p in pins if p.label == entry.get("pin")), None)
    bad = lambda why: ModelState(f.relpath, model, CORRUPT, path, why, want_sha, want_size, entry.get("pin"))  # noqa: E731
    if pin is not None and entry.get(pin.algorithm) != pin.digest:
        return bad(f"{STORE_MANIFEST_NAME} says it is the {pin.label!r} copy, but its recorded {pin.algorithm} is "
                   "not that copy's (the record was edited)")
    st = path.stat()
    if st.st_size != want_size:
        return bad(f"size {st.st_size} bytes differs from the recorded {want_size} (damaged, truncated or replaced)")
    known = hashed_this_process(path, st)
    if hash_check == "always" or st.st_mtime_ns != entry.get("mtime_ns") or (hash_check == "once" and known is None):
        known = digests(path, [pin.algorithm] if pin else [], fresh=True)
    if known is not None:
        if known["sha256"] != want_sha:
            return bad(f"its sha256 {known['sha256'][:16]}... differs from the recorded {str(want_sha)[:16]}... "
                       f"(the file was damaged or replaced, or {STORE_MANIFEST_NAME} was edited)")
        if pin is not None and pin.algorithm in known and known[pin.algorithm] != pin.digest:
            return bad(f"its {pin.algorithm} is not that of the {pin.label!r} copy it was recorded as")
        if st.st_mtime_ns != entry.get("mtime_ns"):
            refreshed[f.relpath] = {**entry, "mtime_ns": st.st_mtime_ns}
    note = ""
    if f.packaged and want_sha != _packaged_sha256(f):
        note = "differs from the copy that ships with talkhead (placed by hand or edited, then recorded)"
    return ModelState(f.relpath, model, VERIFIED, path, note, want_sha, want_size, entry.get("pin"))


def _packaged_sha256(f: ModelFile) -> Optional[str]:
    """sha256 of the copy of ``f`` that ships with talkhead (a small config), ``None`` if unreadable."""
    import hashlib

    try:
        return hashlib.sha256(packaged_path(f).read_bytes()).hexdigest()
    except OSError:
        return None


def verify(models_dir: str | os.PathLike | None = None, names: str | Iterable[str] | None = None, *,
           hash_check: str = "once", check_layout: bool = True, pins: Optional[PinMap] = None) -> dict[str, ModelState]:
    """The state of every file of the models ``names`` (default: all) in ``models_dir``.

    Recorded files are compared with the manifest: size, pin (the recorded digest must be the
    pin's), then sha256 according to ``hash_check``. A re-hash that matches refreshes the recorded
    ``mtime_ns`` (best effort). Unrecorded files are ``unverified`` (``corrupt`` while the manifest
    is unreadable or was rebuilt after being unreadable: their record may have been destroyed, see
    :func:`talkhead.store.manifest.manifest_problem`); with ``check_layout=True``
    their model is also checked (:func:`talkhead.store.check_layout`) and a failure makes the
    blamed file ``corrupt`` with the reason. Nothing is recorded: see
    :func:`talkhead.store.register_local`.

    Args:
        models_dir: resolved with :func:`talkhead.store.resolve_models_dir`.
        names: registered model names (``"fomm"``, ``"mssync"``, ``"smac"``) or ``None``: the default
            models plus each optional one (SMAC) with a file in the directory.
        hash_check: ``"once"`` (default): re-hash a recorded file unless this process already
            hashed it with the same size and ``mtime_ns``; ``"always"``: re-hash every file;
            ``"stat"``: trust size + ``mtime_ns`` (re-hash only when the mtime changed).
        check_layout: check the models of unrecorded files (seconds for the full-size models).
        pins: known-good copies per relpath, replacing the registry's (tests).

    Returns:
        ``{relpath: ModelState}`` in registry order.

    Raises:
        InputError: an unknown model name or ``hash_check``.
    """
    if hash_check not in HASH_CHECKS:
        raise InputError(f"hash_check must be one of {', '.join(HASH_CHECKS)}, not {hash_check!r}")
    root = resolve_models_dir(models_dir)
    specs = specs_for(names, root)
    manifest, problem = manifest_problem(root)
    refreshed: dict[str, dict] = {}
    files = [f for spec in specs for f in spec.files]
    # the files are hashed side by side (hashlib releases the GIL): FOMM's and MS-Sync's checkpoints in
    # about the time of the larger one (measured: benchmarks/README.md, "Start and exit")
    with ThreadPoolExecutor(max_workers=max(1, min(len(files), os.cpu_count() or 1))) as pool:
        found = list(pool.map(lambda f: _file_state(root, f, manifest, problem, hash_check, pins_of(f, pins),
                                                    refreshed), files))
    states = {f.relpath: state for f, state in zip(files, found)}
    if refreshed:
        with contextlib.suppress(CheckpointError):
            write_manifest(root, refreshed)
    if check_layout:
        for spec in specs:
            fresh = [f.relpath for f in spec.files if states[f.relpath].state == UNVERIFIED]
            if not fresh:
                continue
            group = {f.relpath: root / f.relpath for f in spec.files if states[f.relpath].state not in (MISSING, PACKAGED)}
            try:
                check_group(spec, group)
            except TalkheadError as exc:
                for rel in blame(spec, fresh, exc):
                    old = states[rel]
                    states[rel] = ModelState(rel, old.model, CORRUPT, old.path, f"fails the checks: {exc}")
    return states
