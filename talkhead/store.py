"""The models directory: which checkpoints talkhead needs, where they live, and how they are
downloaded, installed by hand, recorded and verified.

Layout of a models directory (``--models-dir`` > ``$TALKHEAD_MODELS`` >
``platformdirs.user_cache_dir("talkhead")``)::

    fomm/vox-adv-256.yaml        FOMM config (ships with talkhead, copied into place)
    fomm/vox-adv-cpk.pth.tar     FOMM vox-adv-256 checkpoint (Google Drive, FOMM authors)
    mssync/args                  MS-Sync generator config, JSON (Google Drive, MS-Sync authors)
    mssync/model_chkpt.pt        MS-Sync generator checkpoint (same folder)
    manifest.json                sha256, size and mtime of every recorded file

One card per model (source, files, layout, license, citation) is in the repository's ``models/``
folder and ships in the wheel as ``talkhead/cards/<name>.md`` (see :func:`model_card`).

Trust model (trust on first use, like huggingface_hub's cache but with a layout check):

* A file is *recorded* only after it passed the **layout check**: it loads with the safe loader
  (``weights_only=True``) and its state dicts fit the architecture its config describes
  (:func:`talkhead.fomm.load_fomm`, :func:`talkhead.mssync.load_mssync`). Its sha256, size and
  ``mtime_ns`` then go to ``manifest.json``. The upstream authors publish no hashes, so the
  first verified copy defines the hash.
* Downloads and installs land atomically: each file is written into a staging folder beside its
  target (``<model>/.incoming-*``), the whole model is checked there, and only then moved into
  place with :func:`os.replace`. The staging folder is always removed, on success, error or Ctrl-C.
* :func:`verify` states per file: ``missing``; ``verified`` (recorded, same bytes); ``corrupt``
  (size or sha256 differ from the record: damaged or tampered with; or, unrecorded, it fails the
  layout check); ``unverified`` (present, not recorded: placed by hand).
* Re-hashing cost: a recorded file whose size and ``mtime_ns`` equal the record is trusted without
  re-hashing (``verify(rehash=False)``, what :func:`ensure_models` does before every ``animate``).
  Any change of either triggers a full sha256; ``talkhead doctor`` always re-hashes
  (``rehash=True``). Overwriting a file in place always changes its ``mtime_ns``, so ordinary
  damage and edits are caught; deliberately restoring the old mtime is caught only by a re-hash.
* :func:`ensure_models` records ``unverified`` files automatically after the layout check (they
  are the files a user was told to put there by hand), but never replaces or accepts ``corrupt``
  ones: it raises :class:`~talkhead.errors.CheckpointError` naming the file and the fix.
  :func:`register_local` is the explicit "I replaced these files myself" action: it re-checks
  and re-records every present file that is not ``verified``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence

from .errors import CheckpointError, ConfigError, DownloadError, InputError, OutputError, TalkheadError
from .io import atomic_write

__all__ = [
    "CORRUPT",
    "DOWNLOAD_TIMEOUT_S",
    "MANIFEST_NAME",
    "MISSING",
    "MODELS_ENV",
    "REGISTRY",
    "UNVERIFIED",
    "VERIFIED",
    "ModelFile",
    "ModelPaths",
    "ModelSpec",
    "ModelState",
    "cards_dir",
    "download",
    "ensure_models",
    "install_from",
    "model_card",
    "model_paths",
    "read_manifest",
    "register_local",
    "resolve_models_dir",
    "verify",
]

MODELS_ENV = "TALKHEAD_MODELS"
"""Environment variable naming the models directory (used when no ``--models-dir`` is given)."""

MANIFEST_NAME = "manifest.json"
"""File in the models directory recording sha256, size and mtime of every verified file."""

MANIFEST_FORMAT = 1

DOWNLOAD_TIMEOUT_S = 20.0
"""Network timeout for Google Drive, seconds: connecting, and waiting between received bytes
(passed to gdown, which supports it from gdown 6; DNS failures end at once)."""

STALE_STAGING_S = 24 * 3600
"""Staging folders (``<model>/.incoming-*``) older than this (seconds) are left-overs of a killed
process and are removed by the next download or install."""

_STAGING_PREFIX = ".incoming-"
_HASH_CHUNK = 1 << 20

ProgressCallback = Callable[[str, int, int], None]
"""``progress(stage, done, total)``, as in :mod:`talkhead.pipeline`; for downloads ``stage`` is
``"download <file name>"`` and ``done``/``total`` are bytes (``total`` 0 when unknown)."""

# ------------------------------------------------------------------------------------------ states
MISSING = "missing"
"""No file at the expected path."""
VERIFIED = "verified"
"""Recorded in the manifest and its bytes are unchanged (sha256, or size + mtime when cached)."""
CORRUPT = "corrupt"
"""Size or sha256 differs from the record, or (unrecorded) it fails the layout check."""
UNVERIFIED = "unverified"
"""Present but not recorded in the manifest (placed by hand); checked and recorded on first use."""


# ---------------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class ModelFile:
    """One file of a model in the models directory.

    Attributes:
        relpath: path relative to the models directory, ``/``-separated (``"fomm/vox-adv-cpk.pth.tar"``).
        role: ``"config"`` or ``"checkpoint"``.
        description: what it is, for messages.
        remote_name: its name in the model's Google Drive folder; ``None`` for a file that ships
            with talkhead (the FOMM YAML).
    """

    relpath: str
    role: str
    description: str
    remote_name: Optional[str] = None

    @property
    def basename(self) -> str:
        return self.relpath.rsplit("/", 1)[-1]

    @property
    def packaged(self) -> bool:
        """Whether this file ships with talkhead instead of being downloaded."""
        return self.remote_name is None


@dataclass(frozen=True)
class ModelSpec:
    """A downloadable model: its files and where they come from.

    Attributes:
        name: registry key and subfolder of the models directory (``"fomm"``, ``"mssync"``).
        title: human-readable name.
        drive_folder: Google Drive folder id holding the released files.
        files: the model's files, config first.
    """

    name: str
    title: str
    drive_folder: str
    files: tuple[ModelFile, ...]

    @property
    def source_url(self) -> str:
        """URL of the Google Drive folder the files come from."""
        return f"https://drive.google.com/drive/folders/{self.drive_folder}"

    def file(self, role: str) -> ModelFile:
        return next(f for f in self.files if f.role == role)


FOMM_CONFIG = "fomm/vox-adv-256.yaml"
FOMM_CHECKPOINT = "fomm/vox-adv-cpk.pth.tar"
MSSYNC_ARGS = "mssync/args"
MSSYNC_CHECKPOINT = "mssync/model_chkpt.pt"

REGISTRY: dict[str, ModelSpec] = {
    "fomm": ModelSpec(
        name="fomm",
        title="FOMM vox-adv-256 (First Order Motion Model, Siarohin et al. 2019)",
        drive_folder="1PyQJmkdCsAkOYwUyaj_l-l0as-iLDgeH",
        files=(
            ModelFile(FOMM_CONFIG, "config", "FOMM vox-adv-256 config (ships with talkhead)"),
            ModelFile(FOMM_CHECKPOINT, "checkpoint", "FOMM vox-adv-256 checkpoint", "vox-adv-cpk.pth.tar"),
        ),
    ),
    "mssync": ModelSpec(
        name="mssync",
        title="MS-Sync generator (Airale et al. 2023)",
        drive_folder="1dtNgqMLWNAkjH_wEkwJrzR9vJJ6ORwV3",
        files=(
            ModelFile(MSSYNC_ARGS, "config", "MS-Sync generator config (args, JSON)", "args"),
            ModelFile(MSSYNC_CHECKPOINT, "checkpoint", "MS-Sync generator checkpoint", "model_chkpt.pt"),
        ),
    ),
}
"""Every downloadable model, by name. Source of the Drive folders: the READMEs of
``AliaksandrSiarohin/first-order-model`` and ``LouisBearing/HMo-audio``."""


def _specs(names: str | Iterable[str] | None) -> list[ModelSpec]:
    """The specs for ``names`` (``None``: all), in registry order.

    Raises:
        InputError: an unknown model name.
    """
    if names is None:
        return list(REGISTRY.values())
    wanted = [names] if isinstance(names, str) else list(names)
    unknown = [n for n in wanted if n not in REGISTRY]
    if unknown:
        raise InputError(f"unknown model {', '.join(map(repr, unknown))}: choose from {', '.join(REGISTRY)}")
    return [spec for name, spec in REGISTRY.items() if name in wanted]


def _spec_of(relpath: str) -> ModelSpec:
    return REGISTRY[relpath.split("/", 1)[0]]


# ---------------------------------------------------------------------------------------- paths
def resolve_models_dir(models_dir: str | os.PathLike | None = None) -> Path:
    """The models directory: ``models_dir`` if given, else ``$TALKHEAD_MODELS`` (when set and not
    empty), else ``platformdirs.user_cache_dir("talkhead")`` (e.g. ``~/.cache/talkhead`` on Linux).

    ``~`` is expanded and the result made absolute; nothing is created.
    """
    if models_dir is None:
        models_dir = os.environ.get(MODELS_ENV) or None
    if models_dir is None:
        import platformdirs

        models_dir = platformdirs.user_cache_dir("talkhead")
    return Path(models_dir).expanduser().absolute()


@dataclass(frozen=True)
class ModelPaths:
    """Paths of the model files ``animate`` loads.

    Attributes:
        root: the models directory.
        fomm_config: FOMM YAML (``talkhead.fomm.load_fomm``'s ``config_path``).
        fomm_checkpoint: ``vox-adv-cpk.pth.tar`` (its ``checkpoint_path``).
        mssync_dir: folder with ``args`` + ``model_chkpt.pt`` (``talkhead.mssync.load_mssync``'s ``model_dir``).
    """

    root: Path
    fomm_config: Path
    fomm_checkpoint: Path
    mssync_dir: Path


def model_paths(models_dir: str | os.PathLike | None = None) -> ModelPaths:
    """Where each model file lives in ``models_dir`` (resolved as in :func:`resolve_models_dir`),
    whether or not it exists."""
    root = resolve_models_dir(models_dir)
    return ModelPaths(root=root, fomm_config=root / FOMM_CONFIG, fomm_checkpoint=root / FOMM_CHECKPOINT,
                      mssync_dir=root / "mssync")


# ---------------------------------------------------------------------------------------- cards
def cards_dir() -> Path:
    """Folder of the model cards: ``talkhead/cards`` of the installed package (package data; in a
    source checkout a link to the repository's ``models/``), else the checkout's ``models/``."""
    packaged = Path(str(resources.files("talkhead").joinpath("cards")))
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[1] / "models"


def model_card(name: str) -> str:
    """The markdown model card of ``name`` (``"fomm"`` or ``"mssync"``): source, files, expected
    layout, license and citation.

    Raises:
        InputError: unknown model. ConfigError: the card is missing (a broken installation).
    """
    spec = _specs(name)[0]
    path = cards_dir() / f"{spec.name}.md"
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"model card {path} is missing ({exc.strerror or exc}); reinstall talkhead") from None


# ---------------------------------------------------------------------------------------- states
@dataclass(frozen=True)
class ModelState:
    """The state of one model file in a models directory (see the module docstring).

    Attributes:
        name: its ``relpath`` (``"fomm/vox-adv-cpk.pth.tar"``).
        model: the model it belongs to (``"fomm"``, ``"mssync"``).
        state: ``"missing"``, ``"verified"``, ``"corrupt"`` or ``"unverified"``.
        path: absolute path.
        reason: why it is not ``verified`` (empty when it is).
        sha256: hex digest recorded in the manifest (``None`` when not recorded).
        size: recorded size in bytes (``None`` when not recorded).
    """

    name: str
    model: str
    state: str
    path: Path
    reason: str = ""
    sha256: Optional[str] = None
    size: Optional[int] = None

    @property
    def ok(self) -> bool:
        return self.state == VERIFIED

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready copy (``path`` as a string)."""
        return {"name": self.name, "model": self.model, "state": self.state, "path": str(self.path),
                "reason": self.reason, "sha256": self.sha256, "size": self.size}


# ---------------------------------------------------------------------------------------- manifest
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(models_dir: str | os.PathLike | None = None) -> dict[str, dict[str, Any]]:
    """The manifest's file entries, ``relpath -> {"sha256", "size", "mtime_ns", "source", "how",
    "recorded_at"}``; empty when there is no manifest.

    Raises:
        CheckpointError: the manifest exists but cannot be read or parsed (the message names it).
    """
    path = resolve_models_dir(models_dir) / MANIFEST_NAME
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


def _write_manifest(root: Path, updates: Mapping[str, dict[str, Any]]) -> None:
    """Merge ``updates`` into the manifest (re-read just before, to keep concurrent writers'
    entries) and replace it atomically.

    Raises:
        CheckpointError: it cannot be written.
    """
    try:
        files = read_manifest(root)
    except CheckpointError:
        files = {}  # an unreadable manifest is rebuilt from what is verified now
    files.update(updates)
    text = json.dumps({"format": MANIFEST_FORMAT, "files": dict(sorted(files.items()))}, indent=2) + "\n"
    path = root / MANIFEST_NAME
    try:
        atomic_write(path, lambda f: f.write(text.encode("utf-8")))
    except OutputError as exc:
        raise CheckpointError(f"cannot write {path}: {exc}") from None


def _entry(path: Path, sha: str, how: str, source: str) -> dict[str, Any]:
    st = path.stat()
    return {"sha256": sha, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "source": source, "how": how,
            "recorded_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}


# ---------------------------------------------------------------------------------------- verify
def _file_state(root: Path, f: ModelFile, manifest: Mapping[str, dict], manifest_problem: str,
                rehash: bool, refreshed: dict[str, dict]) -> ModelState:
    path = root / f.relpath
    model = f.relpath.split("/", 1)[0]
    if not path.exists():
        return ModelState(f.relpath, model, MISSING, path, f"no file at {path}")
    if not path.is_file():
        return ModelState(f.relpath, model, CORRUPT, path, f"{path} is not a regular file")
    entry = manifest.get(f.relpath)
    if entry is None:
        why = manifest_problem or f"present but not recorded in {MANIFEST_NAME} (placed by hand?)"
        return ModelState(f.relpath, model, UNVERIFIED, path, why)
    want_sha, want_size = entry.get("sha256"), entry.get("size")
    st = path.stat()
    if st.st_size != want_size:
        return ModelState(f.relpath, model, CORRUPT, path,
                          f"size {st.st_size} bytes differs from the recorded {want_size} (damaged, "
                          "truncated or replaced)", want_sha, want_size)
    if rehash or st.st_mtime_ns != entry.get("mtime_ns"):
        sha = _sha256(path)
        if sha != want_sha:
            return ModelState(f.relpath, model, CORRUPT, path,
                              f"sha256 {sha[:16]}... differs from the recorded {str(want_sha)[:16]}... "
                              "(damaged or tampered with since it was verified)", want_sha, want_size)
        if st.st_mtime_ns != entry.get("mtime_ns"):
            refreshed[f.relpath] = {**entry, "mtime_ns": st.st_mtime_ns}
    return ModelState(f.relpath, model, VERIFIED, path, "", want_sha, want_size)


def verify(models_dir: str | os.PathLike | None = None, names: str | Iterable[str] | None = None, *,
           rehash: bool = False, check_layout: bool = True) -> dict[str, ModelState]:
    """The state of every file of the models ``names`` (default: all) in ``models_dir``.

    Recorded files are compared with the manifest: size, then sha256 (re-hashed when the size or
    ``mtime_ns`` changed, or always with ``rehash=True``). A re-hash that matches refreshes the
    recorded ``mtime_ns`` (best effort) so the next call is cheap. Unrecorded files are
    ``unverified``; with ``check_layout=True`` their model is also loaded (the layout check) and
    a failure makes the blamed file ``corrupt`` with the loader's message. Nothing is recorded:
    see :func:`register_local`.

    Args:
        models_dir: resolved with :func:`resolve_models_dir`.
        names: model names (``"fomm"``, ``"mssync"``) or ``None`` for all.
        rehash: re-hash every recorded file even if its size and mtime match the record.
        check_layout: load the models of unrecorded files (seconds for the full-size models).

    Returns:
        ``{relpath: ModelState}`` in registry order.

    Raises:
        InputError: an unknown model name.
    """
    root = resolve_models_dir(models_dir)
    specs = _specs(names)
    try:
        manifest, problem = read_manifest(root), ""
    except CheckpointError as exc:
        manifest, problem = {}, f"not recorded: {exc}"
    refreshed: dict[str, dict] = {}
    states = {f.relpath: _file_state(root, f, manifest, problem, rehash, refreshed)
              for spec in specs for f in spec.files}
    if refreshed:
        with contextlib.suppress(CheckpointError):
            _write_manifest(root, refreshed)
    if check_layout:
        for spec in specs:
            fresh = [f.relpath for f in spec.files if states[f.relpath].state == UNVERIFIED]
            if not fresh:
                continue
            group = {f.relpath: root / f.relpath for f in spec.files if states[f.relpath].state != MISSING}
            try:
                _check_layout(spec, group)
            except TalkheadError as exc:
                for rel in _blame(spec, fresh, exc):
                    old = states[rel]
                    states[rel] = ModelState(rel, old.model, CORRUPT, old.path, f"fails the layout check: {exc}")
    return states


# ---------------------------------------------------------------------------------------- layout
def _load_mssync():
    try:
        from .mssync import load_mssync
    except ImportError:  # the package exports it from its generator module
        from .mssync.generator import load_mssync
    return load_mssync


def _check_layout(spec: ModelSpec, group: Mapping[str, Path]) -> None:
    """:func:`_load_group`, with any loader failure reported as a :class:`CheckpointError`
    (torn or foreign files raise unpickling, zip or EOF errors from ``torch.load``)."""
    try:
        _load_group(spec, group)
    except TalkheadError:
        raise
    except Exception as exc:  # a verification gate: whatever the loader trips on, the file is bad
        path = group.get(spec.file("checkpoint").relpath) or next(iter(group.values()), spec.name)
        first = (str(exc).strip().splitlines() or [""])[0]
        raise CheckpointError(f"{path}: cannot be loaded safely ({type(exc).__name__}: {first})") from None


def _load_group(spec: ModelSpec, group: Mapping[str, Path]) -> None:
    """Load what ``group`` (relpath -> path, any subset of ``spec``'s files) allows, on CPU.

    FOMM: checkpoint + config (the packaged config when the group has none) through
    ``load_fomm``; a config alone through ``FOMMConfig.from_yaml``. MS-Sync: ``args`` +
    ``model_chkpt.pt`` (same folder) through ``load_mssync``; ``args`` alone through
    ``MSSyncConfig.from_args_file``; a checkpoint alone must load safely and hold ``'checkpoints'``.

    Raises:
        ConfigError / CheckpointError / StateDictMismatchError: from the loaders.
    """
    config = group.get(spec.file("config").relpath)
    checkpoint = group.get(spec.file("checkpoint").relpath)
    if spec.name == "fomm":
        from .fomm import FOMMConfig, default_config_path, load_fomm

        if checkpoint is not None:
            model = load_fomm(config or default_config_path(), checkpoint, device="cpu")
            del model
        elif config is not None:
            FOMMConfig.from_yaml(config)
    elif spec.name == "mssync":
        if config is not None and checkpoint is not None:
            if config.parent != checkpoint.parent:
                raise AssertionError("MS-Sync args and checkpoint must share a folder")  # internal misuse
            model = _load_mssync()(config.parent, device="cpu")
            del model
        elif config is not None:
            from .mssync.config import MSSyncConfig

            MSSyncConfig.from_args_file(config)
        elif checkpoint is not None:
            from .checkpoints import load_checkpoint

            data = load_checkpoint(checkpoint)
            if not isinstance(data, Mapping) or not isinstance(data.get("checkpoints"), Mapping):
                raise CheckpointError(f"{checkpoint}: expected a dict with a 'checkpoints' state dict")


def _blame(spec: ModelSpec, fresh: Sequence[str], exc: BaseException) -> list[str]:
    """Which of the ``fresh`` (new or unrecorded) files a failed layout check is blamed on."""
    if len(fresh) <= 1:
        return list(fresh)
    role = "config" if isinstance(exc, ConfigError) else "checkpoint"
    rel = spec.file(role).relpath
    return [rel] if rel in fresh else list(fresh)


# ---------------------------------------------------------------------------------------- commit
@contextlib.contextmanager
def _staging(root: Path, spec: ModelSpec) -> Iterator[Path]:
    """A fresh staging folder ``<root>/<model>/.incoming-*`` (same filesystem as the targets, so
    :func:`os.replace` is atomic), removed with all its content on exit, whatever happens."""
    parent = root / spec.name
    try:
        parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_staging(parent)
        path = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=parent))
    except OSError as exc:
        raise CheckpointError(f"cannot write to the models directory {parent}: {exc.strerror or exc}") from None
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _remove_stale_staging(parent: Path) -> None:
    now = time.time()
    for old in parent.glob(_STAGING_PREFIX + "*"):
        with contextlib.suppress(OSError):
            if old.is_dir() and now - old.stat().st_mtime > STALE_STAGING_S:
                shutil.rmtree(old, ignore_errors=True)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


class _LayoutFailure(Exception):
    def __init__(self, blamed: list[str], error: TalkheadError):
        super().__init__(str(error))
        self.blamed, self.error = blamed, error


def _commit(root: Path, spec: ModelSpec, new: Mapping[str, Path], staging: Optional[Path], *, how: str,
            source: str) -> None:
    """Layout-check ``spec`` with the ``new`` files (relpath -> current path: in ``staging`` or
    already in place) plus the present partners, then move the new files into place and record
    them.

    Raises:
        _LayoutFailure: the check failed; nothing was moved or recorded.
        CheckpointError: the manifest cannot be written.
    """
    group: dict[str, Path] = {}
    for f in spec.files:
        if f.relpath in new:
            group[f.relpath] = new[f.relpath]
        elif (root / f.relpath).is_file():
            group[f.relpath] = root / f.relpath
    if spec.name == "mssync" and len({p.parent for p in group.values()}) > 1 and staging is not None:
        for rel, p in list(group.items()):  # load_mssync reads one folder: bring the partner beside
            if rel not in new:
                dst = staging / p.name
                _link_or_copy(p, dst)
                group[rel] = dst
    try:
        _check_layout(spec, group)
    except TalkheadError as exc:
        raise _LayoutFailure(_blame(spec, list(new), exc), exc) from None
    hashes = {rel: _sha256(p) for rel, p in new.items()}
    entries = {}
    for rel, p in new.items():
        target = root / rel
        if p != target:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(p, target)
        entries[rel] = _entry(target, hashes[rel], how, source)
    _write_manifest(root, entries)


def _stage_packaged_config(staging: Path) -> Path:
    from .fomm import default_config_path

    dst = staging / REGISTRY["fomm"].file("config").basename
    shutil.copyfile(default_config_path(), dst)
    return dst


def _by_hand(root: Path, rels: Iterable[str]) -> str:
    """Instructions to fetch ``rels`` by hand: for each file, the URL and the exact path."""
    lines = []
    for rel in rels:
        spec = _spec_of(rel)
        f = next(x for x in spec.files if x.relpath == rel)
        lines.append(f"  - {rel}: download '{f.remote_name}' from {spec.source_url} and save it as {root / rel}")
    return ("\n".join(lines) + "\nthen run `talkhead download --from-dir FOLDER` on the folder holding them "
            "(or leave them at those exact paths: they are checked and recorded on first use).")


# ---------------------------------------------------------------------------------------- register / install
def register_local(models_dir: str | os.PathLike | None = None, *, names: str | Iterable[str] | None = None,
                   accept_changed: bool = True) -> dict[str, ModelState]:
    """Check and record files already in place (put there by hand, or replaced on purpose).

    For each model, every present file that is ``unverified`` (and, with ``accept_changed``, every
    ``corrupt`` one: a file changed since it was recorded) is layout-checked together with its
    partner; if that passes, its sha256, size and mtime are recorded (``how: "register"``). A
    missing FOMM config is installed from the package when the checkpoint is there. Files that
    fail stay unrecorded and are returned as ``corrupt`` with the loader's message; missing files
    are returned as ``missing``. Nothing is raised for them.

    Args:
        models_dir: resolved with :func:`resolve_models_dir`.
        names: model names or ``None`` for all.
        accept_changed: also re-record files whose bytes differ from the record (the explicit
            "I replaced it" action). :func:`ensure_models` passes ``False``.

    Returns:
        ``{relpath: ModelState}`` of the models after registration.

    Raises:
        InputError: an unknown model name. CheckpointError: the manifest cannot be written.
    """
    root = resolve_models_dir(models_dir)
    specs = _specs(names)
    states = verify(root, [s.name for s in specs], check_layout=False)
    takes = (UNVERIFIED, CORRUPT) if accept_changed else (UNVERIFIED,)
    failed: dict[str, str] = {}
    unrecorded: dict[str, str] = {}
    for spec in specs:
        pending = {f.relpath: root / f.relpath for f in spec.files if states[f.relpath].state in takes}
        cfg, ckpt = spec.file("config"), spec.file("checkpoint")
        needs_config = (cfg.packaged and states[cfg.relpath].state == MISSING
                        and (ckpt.relpath in pending or states[ckpt.relpath].state == VERIFIED))
        if not pending and not needs_config:
            continue
        with _staging(root, spec) if needs_config else contextlib.nullcontext() as staging:
            if needs_config:
                pending[cfg.relpath] = _stage_packaged_config(staging)
            try:
                _commit(root, spec, pending, staging, how="register", source="local file")
            except _LayoutFailure as fail:
                failed.update({rel: f"fails the layout check: {fail.error}" for rel in fail.blamed})
            except CheckpointError as exc:  # a read-only models directory: checked, not recorded
                unrecorded.update({rel: f"passes the layout check but cannot be recorded: {exc}" for rel in pending})
    out = verify(root, [s.name for s in specs], check_layout=False)
    for rel, why in unrecorded.items():
        old = out[rel]
        if old.state == UNVERIFIED:
            out[rel] = dataclasses.replace(old, reason=why)
    for rel, why in failed.items():
        old = out[rel]
        if old.state != MISSING:
            out[rel] = ModelState(rel, old.model, CORRUPT, old.path, why)
    return out


def _find_in(folder: Path, f: ModelFile) -> Optional[Path]:
    candidates = [folder / f.relpath, folder / f.basename, *sorted(folder.glob(f"*/{f.basename}"))]
    return next((c for c in candidates if c.is_file()), None)


def install_from(source: str | os.PathLike | Iterable[str | os.PathLike],
                 models_dir: str | os.PathLike | None = None, *,
                 names: str | Iterable[str] | None = None) -> dict[str, ModelState]:
    """Copy model files obtained by hand into the models directory, verify and record them.

    Each file is looked up by name: in a folder ``source`` as ``<relpath>``, ``<file name>`` or
    ``*/<file name>`` (e.g. ``DIR/fomm/vox-adv-cpk.pth.tar``, ``DIR/vox-adv-cpk.pth.tar`` or
    ``DIR/checkpoint/model_chkpt.pt``); in a list of files by file name. Per model the found files
    are copied into a staging folder beside their targets, layout-checked with their partner
    (present or copied along; the FOMM config falls back to the packaged one), and only then moved
    into place and recorded (``how: "install"``). A model that fails leaves the directory as it was.

    Args:
        source: a folder, one file, or several files.
        models_dir: the destination, resolved with :func:`resolve_models_dir`.
        names: restrict to these models (default: every model with a file in ``source``).

    Returns:
        ``{relpath: ModelState}`` of the models concerned, after installation.

    Raises:
        InputError: ``source`` does not exist, or holds none of the files.
        CheckpointError: a found file fails the layout check (the message names the file and why;
            the other models are still installed), or the directory is not writable.
    """
    root = resolve_models_dir(models_dir)
    specs = _specs(names)
    if isinstance(source, (str, os.PathLike)):
        src = Path(source).expanduser()
        if src.is_dir():
            found = {f.relpath: p for spec in specs for f in spec.files if (p := _find_in(src, f))}
            where = str(src)
        elif src.is_file():
            found = {f.relpath: src for spec in specs for f in spec.files if f.basename == src.name}
            where = str(src)
        else:
            raise InputError(f"{src} does not exist: give the folder holding the model files you downloaded")
    else:
        paths = [Path(p).expanduser() for p in source]
        missing = [str(p) for p in paths if not p.is_file()]
        if missing:
            raise InputError(f"not a file: {', '.join(missing)}")
        found = {f.relpath: p for spec in specs for f in spec.files for p in paths if p.name == f.basename}
        where = ", ".join(map(str, paths))
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
        with _staging(root, spec) as staging:
            new = {}
            for rel, p in mine.items():
                dst = staging / rel.rsplit("/", 1)[-1]
                try:
                    shutil.copyfile(p, dst)
                except OSError as exc:
                    raise CheckpointError(f"cannot copy {p} into {root}: {exc.strerror or exc}") from None
                new[rel] = dst
            cfg = spec.file("config")
            if cfg.packaged and cfg.relpath not in new and not (root / cfg.relpath).is_file():
                new[cfg.relpath] = _stage_packaged_config(staging)
            try:
                _commit(root, spec, new, staging, how="install", source=f"install_from {where}")
            except _LayoutFailure as fail:
                bad = ", ".join(str(mine.get(rel, rel)) for rel in fail.blamed)
                errors.append(f"{bad} is not a valid {spec.title} file, nothing was installed for "
                              f"{spec.name}: {fail.error}")
    if errors:
        raise CheckpointError("\n".join(errors))
    return verify(root, touched, check_layout=False)


# ---------------------------------------------------------------------------------------- download
def _supported(func: Callable, **kwargs: Any) -> dict[str, Any]:
    """The ``kwargs`` that ``func`` accepts (gdown grew ``timeout``/``progress`` in version 6)."""
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return {}
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return dict(kwargs)
    return {k: v for k, v in kwargs.items() if k in params}


def _drive_listing(spec: ModelSpec, staging: Path, timeout: float, quiet: bool) -> dict[str, str]:
    """``{file name: Drive file id}`` of ``spec``'s folder, listed without downloading."""
    import gdown

    extra = _supported(gdown.download_folder, timeout=timeout, remaining_ok=True)
    entries = gdown.download_folder(id=spec.drive_folder, output=str(staging / "listing"), quiet=quiet,
                                    skip_download=True, **extra)
    ids: dict[str, str] = {}
    for e in entries or ():
        name = str(getattr(e, "path", "")).replace("\\", "/").rsplit("/", 1)[-1]
        if name and getattr(e, "id", None):
            ids.setdefault(name, e.id)
    return ids


def _fetch(file_id: str, out: Path, timeout: float, quiet: bool, progress: Optional[ProgressCallback]) -> None:
    import gdown

    cb = None
    if progress is not None:
        stage = f"download {out.name}"
        cb = lambda done, total: progress(stage, int(done), int(total or 0))  # noqa: E731
    extra = _supported(gdown.download, timeout=timeout, progress=cb)
    if extra.get("progress") is None:
        extra.pop("progress", None)
    result = gdown.download(id=file_id, output=str(out), quiet=quiet, **extra)
    if result is None or not out.is_file():  # gdown < 5 returned None on failure
        raise OSError("gdown returned no file")


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def download(names: str | Iterable[str] | None = None, models_dir: str | os.PathLike | None = None, *,
             progress: Optional[ProgressCallback] = None, quiet: bool = False, force: bool = False,
             timeout: float = DOWNLOAD_TIMEOUT_S) -> dict[str, ModelState]:
    """Fetch the checkpoints of ``names`` (default: all) from their Google Drive folders (gdown).

    Per model: files already ``verified`` are kept (unless ``force``); ``unverified`` ones are
    first layout-checked and recorded instead of downloaded; the rest (``missing``, ``corrupt``,
    unrecorded files that fail the check) are downloaded. The model's Drive folder is listed
    (``gdown.download_folder(skip_download=True)``, which returns file ids) and only the needed
    files are fetched, into ``<model>/.incoming-*``; the model is layout-checked there
    (``weights_only=True`` load + state-dict layout) and only then moved into place and recorded
    in ``manifest.json``. The FOMM YAML ships with talkhead and is copied in with the checkpoint.
    Every model is attempted; failures are reported together. No partial or temporary file is
    left behind, also on Ctrl-C.

    Args:
        names: ``"fomm"``, ``"mssync"``, a list of them, or ``None`` for all.
        models_dir: destination, resolved with :func:`resolve_models_dir` (created if needed).
        progress: ``progress("download <file>", bytes_done, bytes_total)`` (needs gdown >= 6).
        quiet: silence gdown's own output.
        force: download even files that are ``verified``.
        timeout: seconds to wait for Google Drive (connect and between bytes).

    Returns:
        ``{relpath: ModelState}`` of the requested models afterwards.

    Raises:
        InputError: an unknown model name.
        DownloadError: a file could not be downloaded or failed verification; the message names
            each file, its source URL and the exact path to put it by hand.
    """
    root = resolve_models_dir(models_dir)
    specs = _specs(names)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DownloadError(f"cannot create the models directory {root}: {exc.strerror or exc}") from None
    if not force:  # files placed by hand: keep them if they pass the layout check
        register_local(root, names=[s.name for s in specs], accept_changed=False)
    states = verify(root, [s.name for s in specs], check_layout=False)
    failures: list[str] = []
    for spec in specs:
        need = [f for f in spec.files if not f.packaged and (force or states[f.relpath].state != VERIFIED)]
        cfg = spec.file("config")
        config_needed = cfg.packaged and (force or states[cfg.relpath].state != VERIFIED)
        if not need and not config_needed:
            continue
        with _staging(root, spec) as staging:
            new: dict[str, Path] = {}
            try:
                if need:
                    ids = _drive_listing(spec, staging, timeout, quiet)
                    for f in need:
                        if f.remote_name not in ids:
                            raise FileNotFoundError(f"'{f.remote_name}' is not in the Drive folder "
                                                    f"(found: {', '.join(sorted(ids)) or 'nothing'})")
                        _fetch(ids[f.remote_name], staging / f.basename, timeout, quiet, progress)
                        new[f.relpath] = staging / f.basename
            except Exception as exc:  # network, quota, HTML instead of the file, gdown's own errors
                failures.append(f"could not download {', '.join(f.relpath for f in need)} from {spec.source_url} "
                                f"({_reason(exc)}); get it by hand:\n" + _by_hand(root, [f.relpath for f in need]))
                continue
            if config_needed:
                new[cfg.relpath] = _stage_packaged_config(staging)
            try:
                _commit(root, spec, new, staging, how="download" if need else "packaged", source=spec.source_url)
            except _LayoutFailure as fail:
                if need:
                    failures.append(f"downloaded {', '.join(fail.blamed)} from {spec.source_url} but it failed "
                                    f"verification, nothing was installed: {fail.error}\n"
                                    + _by_hand(root, [f.relpath for f in need]))
                else:
                    failures.append(f"the packaged {cfg.relpath} does not fit {root / spec.file('checkpoint').relpath}"
                                    f", nothing was installed: {fail.error}")
    if failures:
        raise DownloadError("\n".join(failures))
    return verify(root, [s.name for s in specs], check_layout=False)


# ---------------------------------------------------------------------------------------- ensure
def ensure_models(models_dir: str | os.PathLike | None = None, *, offline: bool = False,
                  progress: Optional[ProgressCallback] = None, log: Optional[Callable[[str], None]] = None,
                  timeout: float = DOWNLOAD_TIMEOUT_S) -> ModelPaths:
    """Make sure every model file is present and verified; what ``animate`` calls before loading.

    Steps: corrupt files -> error (never replaced silently); files placed by hand
    (``unverified``) -> layout-checked and recorded; missing checkpoints -> downloaded
    (:func:`download`), or with ``offline`` an error telling where to get each file and where to
    put it; a missing FOMM config -> copied from the package. Recorded files are trusted by size +
    mtime (see the module docstring), so a ready directory costs a few ``stat`` calls.

    Args:
        models_dir: resolved with :func:`resolve_models_dir`.
        offline: never touch the network.
        progress: download progress, see :func:`download`.
        log: receives one-line status messages (``None``: silent, and gdown is quiet).
        timeout: Google Drive timeout, seconds.

    Returns:
        :class:`ModelPaths` of the verified files.

    Raises:
        CheckpointError: a file is corrupt or fails the layout check (named, with the fix).
        DownloadError: files are missing and ``offline`` is set, or the download failed.
    """
    root = resolve_models_dir(models_dir)
    say = log or (lambda msg: None)
    states = verify(root, check_layout=False)
    fresh = sorted({s.model for s in states.values() if s.state == UNVERIFIED})
    if fresh:
        say(f"checking model files placed by hand in {root}")
        states.update(register_local(root, names=fresh, accept_changed=False))
        for s in states.values():
            if s.state == UNVERIFIED:  # checked, but the directory is read-only: used unrecorded
                say(f"note: {s.name} {s.reason}")
    bad = [s for s in states.values() if s.state == CORRUPT]
    if bad:
        lines = [f"  - {s.path}: {s.reason}" for s in bad]
        models = " ".join(sorted({s.model for s in bad}))
        raise CheckpointError(f"model file{'s' if len(bad) > 1 else ''} failed verification:\n" + "\n".join(lines)
                              + f"\nreplace {'them' if len(bad) > 1 else 'it'} with `talkhead download {models}` "
                              "(a new copy is verified before it replaces the old one), or put a good copy "
                              "there and run `talkhead download --from-dir FOLDER`.")
    missing = [s.name for s in states.values() if s.state == MISSING and not _file_of(s.name).packaged]
    if missing and offline:
        raise DownloadError(f"model files missing in {root} and downloads are off (--offline):\n" + _by_hand(root, missing))
    need = sorted({s.model for s in states.values() if s.state == MISSING})
    if need:
        if missing:
            say(f"downloading {', '.join(missing)} to {root}")
        download(need, root, progress=progress, quiet=log is None, timeout=timeout)
    return model_paths(root)


def _file_of(relpath: str) -> ModelFile:
    return next(f for f in _spec_of(relpath).files if f.relpath == relpath)
