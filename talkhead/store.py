"""The checkpoint store: which files talkhead's models need, where they come from, and how they are
downloaded, installed by hand, recorded and verified. Files only: nothing here builds a network.

Layout of a models directory (``--models-dir`` > ``$TALKHEAD_MODELS`` >
``platformdirs.user_cache_dir("talkhead")``)::

    fomm/vox-adv-256.yaml        FOMM config (ships with talkhead, copied into place)
    fomm/vox-adv-cpk.pth.tar     FOMM vox-adv-256 checkpoint
    mssync/args                  MS-Sync generator config, JSON
    mssync/model_chkpt.pt        MS-Sync generator checkpoint
    smac/config.yml              SMAC config (optional renderer; ships with talkhead, copied into place)
    smac/net_g_latest.pth        SMAC generator (installed by hand: ``talkhead download smac --from-dir DIR``)
    smac/net_motion_estimator_latest.pth   SMAC keypoint detector + dense motion (by hand, likewise)
    manifest.json                sha256, size, mtime, pin and source of every recorded file

``fomm`` and ``mssync`` are what ``animate`` needs (the default set of ``talkhead download``); ``smac``
is an optional renderer (``reenact --renderer smac``) whose weights are shared through a browser link
only, so it has no download source: it is installed by hand and recorded on its first verified
install, like any file placed by hand.

One card per model (sources in order, pinned digests, layout, licence, citation) is in the
repository's ``models/`` folder and ships as ``talkhead/cards/<name>.md`` (:func:`model_card`).

**Sources.** Each downloadable file lists its sources in order (:data:`REGISTRY`): the authors'
Google Drive folder first (gdown), then public mirrors other projects use, then the mirror given
by ``--mirror URL`` / ``$TALKHEAD_MIRROR`` (a base URL serving the models directory's layout, e.g.
``URL/fomm/vox-adv-cpk.pth.tar``). Sources are tried until one gives a file that passes both
checks below. Every transfer goes through gdown (Google Drive and plain HTTP(S) alike: it writes
to a temporary name, resumes a broken transfer with an HTTP ``Range`` request where the server
allows it, and reports progress through a callback).

**Checks before a file is recorded** (download, :func:`install_from`, :func:`register_local`):

* *Pins.* A file with known-good copies (:class:`Pin`: the FOMM checkpoint as published, by
  sha256; avatarify's trimmed copy, by md5) is downloaded only if its digest matches one of them.
  A file placed by hand need not match; the manifest records which pin it matched (``pin``), if
  any. Files without a published digest (MS-Sync, SMAC) are trusted on first use: their sha256 is
  recorded from the first copy that passes the layout check, and every later use is compared with it.
* *Layout.* The checkpoint is read with the safe loader
  (:func:`talkhead.checkpoints.load_checkpoint`: ``weights_only=True`` or the allow-list
  unpickler, which refuses tampered files), every state dict inference uses is compared, key by
  key and shape by shape, with the listing its model package derives from the config
  (``talkhead.fomm.layout`` / ``talkhead.mssync.layout`` / ``talkhead.smac.layout``, computed on the
  ``meta`` device; for an entry with alternatives, such as SMAC's ``params_ema`` else ``params``,
  the one inference reads), and
  every floating tensor must be finite. Only then is the file moved into place (atomically, from a
  staging folder ``<root>/.incoming-*`` that is always removed) and recorded.

**Verification on use** (:func:`verify`, :func:`ensure_models`): a recorded file must have its
recorded size, and its sha256 is recomputed on the first use of the file in each process
(``hash_check="once"``; ~0.6 s for the 751 MB FOMM file, measured) and compared with the manifest
and, for a pinned file, with the pin. An edited manifest or a replaced file is therefore caught the
next time a process uses it. Later uses in the same process trust size + ``mtime_ns``;
``talkhead doctor`` re-hashes every time (``hash_check="always"``). The pipeline then loads each
checkpoint exactly once (``load_fomm``, ``load_mssync``); the store never deserializes a recorded
file again.

States: ``missing``; ``packaged`` (the FOMM YAML is not in the directory yet: it ships with
talkhead and is copied in on first use); ``verified``; ``corrupt`` (size, sha256 or pin differ from
the record, or, unrecorded, it fails the checks); ``unverified`` (present, not recorded: placed by
hand; checked and recorded on first use).
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence
from urllib.parse import urlparse

from .checkpoints import file_digests, load_checkpoint, require_finite, state_dict_diff, strip_key_prefix
from .errors import (CheckpointError, ConfigError, DownloadError, InputError, OutputError, StateDictMismatchError,
                     TalkheadError)
from .io import atomic_write

__all__ = [
    "CORRUPT", "MISSING", "PACKAGED", "UNVERIFIED", "VERIFIED",
    "DOWNLOAD_RETRIES", "DOWNLOAD_TIMEOUT_S", "MANIFEST_NAME", "MIRROR_ENV", "MODELS_ENV", "REGISTRY",
    "Attempt", "ModelFile", "ModelPaths", "ModelSpec", "ModelState", "Pin", "Source",
    "cards_dir", "check_layout", "clear_hash_memo", "download", "ensure_models", "install_from", "model_card",
    "model_paths", "read_store_manifest", "register_local", "resolve_mirror", "resolve_models_dir", "verify",
]

MODELS_ENV = "TALKHEAD_MODELS"
"""Environment variable naming the models directory (used when no ``--models-dir`` is given)."""

MIRROR_ENV = "TALKHEAD_MIRROR"
"""Environment variable naming a mirror base URL (used when no ``--mirror`` is given)."""

MANIFEST_NAME = "manifest.json"
"""The store's record in the models directory (not the training data manifest of ``talkhead.train``)."""

MANIFEST_FORMAT = 1

DOWNLOAD_TIMEOUT_S = 20.0
"""Network timeout, seconds: connecting, and waiting between received bytes (DNS failures end at once)."""

DOWNLOAD_RETRIES = 3
"""Reconnections per transfer after a broken connection; each resumes with an HTTP ``Range``
request where the server honours it (gdown's ``retries``)."""

STALE_STAGING_S = 24 * 3600
"""Staging folders (``<root>/.incoming-*``) older than this (seconds) are left-overs of a killed
process and are removed by the next download or install."""

_STAGING_PREFIX = ".incoming-"

ProgressCallback = Callable[[str, int, int], None]
"""``progress(stage, done, total)``, as in :mod:`talkhead.pipeline`; for downloads ``stage`` is
``"download <file name>"`` and ``done``/``total`` are bytes (``total`` 0 when unknown)."""

# ------------------------------------------------------------------------------------------ states
MISSING = "missing"
"""No file at the expected path."""
PACKAGED = "packaged"
"""A file that ships with talkhead (the FOMM YAML) and is not in the directory yet: copied in on first use."""
VERIFIED = "verified"
"""Recorded in the manifest and its bytes are unchanged."""
CORRUPT = "corrupt"
"""Size, sha256 or pin differs from the record, or (unrecorded) it fails the checks."""
UNVERIFIED = "unverified"
"""Present but not recorded in the manifest (placed by hand); checked and recorded on first use."""


# ---------------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class Pin:
    """A known-good copy of a file, identified by its digest.

    Attributes:
        algorithm: ``hashlib`` name, ``"sha256"`` or ``"md5"`` (the only digest some mirrors publish).
        digest: lowercase hex digest.
        label: short name recorded in the manifest (``"published"``, ``"avatarify-trimmed"``).
        size: size in bytes when known.
        description: what this copy is, for the model card and messages.
    """

    algorithm: str
    digest: str
    label: str
    size: Optional[int] = None
    description: str = ""


@dataclass(frozen=True)
class Source:
    """One place a file can be downloaded from.

    Attributes:
        kind: ``"drive-folder"`` (a Google Drive folder, listed to find ``remote_name``),
            ``"drive-file"`` (a Google Drive file id) or ``"url"`` (HTTP(S)).
        location: the folder id, file id or URL.
        host: who hosts it, for messages (``"Google Drive folder of the FOMM authors"``).
        remote_name: the file's name inside a Drive folder.
    """

    kind: str
    location: str
    host: str
    remote_name: Optional[str] = None

    @property
    def url(self) -> str:
        """A URL a person can open to get the file by hand."""
        if self.kind == "drive-folder":
            return f"https://drive.google.com/drive/folders/{self.location}"
        if self.kind == "drive-file":
            return f"https://drive.google.com/file/d/{self.location}"
        return self.location


@dataclass(frozen=True)
class ModelFile:
    """One file of a model in the models directory.

    Attributes:
        relpath: path relative to the models directory, ``/``-separated (``"fomm/vox-adv-cpk.pth.tar"``).
        role: ``"config"`` or ``"checkpoint"``.
        description: what it is, for messages.
        sources: where to download it, in the order they are tried (empty for a packaged file).
        pins: known-good copies; a downloaded file must match one when any are given.
        packaged: ``"module:function"`` returning the path of the copy that ships with talkhead
            (the FOMM and SMAC YAMLs), or ``None``.
        layout: for a checkpoint, ``"module:function"``; ``function(config_path) -> {entry: {key:
            shape}}`` gives its expected state dicts for a config file (the model package computes
            it on the ``meta`` device; the store never imports it at module level).
        entries: for a checkpoint, the top-level entries inference reads, each a tuple of
            alternatives in order of preference (the first present is read and checked against
            the layout's listing of whichever alternative it names).
        strip_prefix: a key prefix the loader removes before matching (SMAC's DataParallel
            ``"module."``), or ``""``.
        by_hand: where a person downloads the file when it has no download source (a browser
            share), or ``None``.
    """

    relpath: str
    role: str
    description: str
    sources: tuple[Source, ...] = ()
    pins: tuple[Pin, ...] = ()
    packaged: Optional[str] = None
    layout: Optional[str] = None
    entries: tuple[tuple[str, ...], ...] = ()
    strip_prefix: str = ""
    by_hand: Optional[str] = None

    @property
    def basename(self) -> str:
        return self.relpath.rsplit("/", 1)[-1]

    @property
    def model(self) -> str:
        return self.relpath.split("/", 1)[0]


@dataclass(frozen=True)
class ModelSpec:
    """A model: its files and how to check them.

    Attributes:
        name: registry key and subfolder of the models directory (``"fomm"``, ``"mssync"``, ``"smac"``).
        title: human-readable name.
        files: the model's files: one config first, then one or more checkpoints (each with its
            ``layout`` and ``entries``).
        optional: not needed by ``animate``: left out of the default set of :func:`download` and
            :func:`ensure_models`, and reported by :func:`verify` only once one of its files is there.
        notice: one line users must see when the model is installed (SMAC's non-commercial licence).
    """

    name: str
    title: str
    files: tuple[ModelFile, ...]
    optional: bool = False
    notice: str = ""

    def file(self, role: str) -> ModelFile:
        """The first file with ``role`` (``"config"`` or ``"checkpoint"``)."""
        return next(f for f in self.files if f.role == role)

    @property
    def config(self) -> ModelFile:
        """The config file."""
        return self.file("config")

    @property
    def checkpoints(self) -> tuple[ModelFile, ...]:
        """The checkpoint files, in registry order."""
        return tuple(f for f in self.files if f.role == "checkpoint")


FOMM_CONFIG = "fomm/vox-adv-256.yaml"
FOMM_CHECKPOINT = "fomm/vox-adv-cpk.pth.tar"
MSSYNC_ARGS = "mssync/args"
MSSYNC_CHECKPOINT = "mssync/model_chkpt.pt"
SMAC_CONFIG = "smac/config.yml"
SMAC_GENERATOR = "smac/net_g_latest.pth"
SMAC_MOTION_ESTIMATOR = "smac/net_motion_estimator_latest.pth"

SMAC_SHARE = ("https://hkustconnect-my.sharepoint.com/:f:/g/personal/szhaoax_connect_ust_hk/"
              "Euur-8TShbNJr_i4yTMjtNUBFxm1OLaF2ndt2IymB6pC0w?e=cmZHYA")
"""The SMAC authors' OneDrive folder (README of ShaelynZ/synergize-motion-appearance): a browser share,
so its files are downloaded by hand."""

FOMM_DRIVE_FOLDER = "1PyQJmkdCsAkOYwUyaj_l-l0as-iLDgeH"
"""The FOMM authors' checkpoint folder (README of AliaksandrSiarohin/first-order-model)."""
MSSYNC_DRIVE_FOLDER = "1dtNgqMLWNAkjH_wEkwJrzR9vJJ6ORwV3"
"""The MS-Sync authors' checkpoint folder (README of LouisBearing/HMo-audio)."""

FOMM_PINS = (
    Pin("sha256", "6792d6810d7f46e3c5c487a1cfec916b96fad8912c3c6cc81baa1fc300c820d3", "published", 750926934,
        "vox-adv-cpk.pth.tar as the FOMM authors published it (751 MB: generator, discriminator, kp_detector, "
        "optimizers, epoch)"),
    Pin("md5", "8a45a24037871c045fbb8a6a8aa95ebc", "avatarify-trimmed", None,
        "avatarify's trimmed copy (228 MB: generator + kp_detector only); avatarify publishes its md5, "
        "its sha256 is recorded in manifest.json from the first verified copy"),
)

REGISTRY: dict[str, ModelSpec] = {
    "fomm": ModelSpec(
        name="fomm",
        title="FOMM vox-adv-256",
        files=(
            ModelFile(FOMM_CONFIG, "config", "FOMM vox-adv-256 config (ships with talkhead)",
                      packaged="talkhead.fomm:default_config_path"),
            ModelFile(FOMM_CHECKPOINT, "checkpoint", "FOMM vox-adv-256 checkpoint", sources=(
                Source("drive-folder", FOMM_DRIVE_FOLDER, "Google Drive folder of the FOMM authors",
                       "vox-adv-cpk.pth.tar"),
                Source("url", "https://github.com/graphemecluster/first-order-model-demo/releases/download/"
                       "checkpoints/vox-adv-cpk.pth.tar", "GitHub release of graphemecluster/first-order-model-demo"),
                Source("url", "https://huggingface.co/spaces/abhishek/first-order-motion-model/resolve/main/"
                       "weights/vox-adv-cpk.pth.tar", "Hugging Face Space abhishek/first-order-motion-model"),
                Source("url", "https://openavatarify.s3-avatarify.com/weights/vox-adv-cpk.pth.tar",
                       "avatarify's S3 bucket"),
                Source("drive-file", "1coUCdyRXDbpWnEkA99NLNY60mb9dQ_n3", "Google Drive file of avatarify"),
            ), pins=FOMM_PINS, layout="talkhead.fomm.layout:layout_for_config_file",
                entries=(("kp_detector",), ("generator",))),
        ),
    ),
    "mssync": ModelSpec(
        name="mssync",
        title="MS-Sync generator",
        files=(
            ModelFile(MSSYNC_ARGS, "config", "MS-Sync generator config (args, JSON)", sources=(
                Source("drive-folder", MSSYNC_DRIVE_FOLDER, "Google Drive folder of the MS-Sync authors", "args"),)),
            ModelFile(MSSYNC_CHECKPOINT, "checkpoint", "MS-Sync generator checkpoint", sources=(
                Source("drive-folder", MSSYNC_DRIVE_FOLDER, "Google Drive folder of the MS-Sync authors",
                       "model_chkpt.pt"),), layout="talkhead.mssync.layout:layout_for_config_file",
                entries=(("checkpoints",),)),
        ),
    ),
    "smac": ModelSpec(
        name="smac",
        title="SMAC renderer",
        files=(
            ModelFile(SMAC_CONFIG, "config", "SMAC config, options/test.yml schema (ships with talkhead)",
                      packaged="talkhead.smac:default_config_path"),
            ModelFile(SMAC_GENERATOR, "checkpoint", "SMAC generator (net_g)", by_hand=SMAC_SHARE,
                      layout="talkhead.smac.layout:generator_layout", entries=(("params_ema", "params"),),
                      strip_prefix="module."),
            ModelFile(SMAC_MOTION_ESTIMATOR, "checkpoint", "SMAC motion estimator (keypoints + dense motion)",
                      by_hand=SMAC_SHARE, layout="talkhead.smac.layout:motion_estimator_layout",
                      entries=(("params",),), strip_prefix="module."),
        ),
        optional=True,
        notice="SMAC's code and weights are licensed CC BY-NC 4.0 (parts NTU S-Lab License 1.0): "
               "non-commercial use only (models/smac.md)",
    ),
}
"""Every model, by name. Sources and pins are documented, with who hosts each, in ``models/*.md``."""

SourceMap = Mapping[str, Sequence[Source]]
PinMap = Mapping[str, Sequence[Pin]]


DEFAULT_MODELS: tuple[str, ...] = tuple(n for n, s in REGISTRY.items() if not s.optional)
"""The models ``animate`` needs and ``talkhead download`` fetches by default (``fomm``, ``mssync``)."""


def _present(root: Path, spec: ModelSpec) -> bool:
    """Whether any file of ``spec`` other than a packaged one is in ``root``."""
    return any((root / f.relpath).exists() for f in spec.files if not f.packaged)


def _specs(names: str | Iterable[str] | None, root: Optional[Path] = None, *,
           every: bool = False) -> list[ModelSpec]:
    """The specs for ``names``, in registry order. ``None``: every model with ``every``; otherwise
    the default ones (:data:`DEFAULT_MODELS`) plus, when ``root`` is given, the optional models
    with a file in it.

    Raises:
        InputError: an unknown model name.
    """
    if names is None:
        return [s for s in REGISTRY.values()
                if every or not s.optional or (root is not None and _present(root, s))]
    wanted = [names] if isinstance(names, str) else list(names)
    unknown = [n for n in wanted if n not in REGISTRY]
    if unknown:
        raise InputError(f"unknown model {', '.join(map(repr, unknown))}: choose from {', '.join(REGISTRY)}")
    return [spec for name, spec in REGISTRY.items() if name in wanted]


def _file_of(relpath: str) -> ModelFile:
    return next(f for f in REGISTRY[relpath.split("/", 1)[0]].files if f.relpath == relpath)


def _resolve(dotted: str) -> Callable:
    """``"package.module:function"`` -> the function, imported at call time."""
    module, _, name = dotted.partition(":")
    return getattr(importlib.import_module(module), name)


def _packaged_path(f: ModelFile) -> Path:
    return Path(_resolve(f.packaged)())


def _pins_of(f: ModelFile, pins: Optional[PinMap]) -> tuple[Pin, ...]:
    return tuple(pins[f.relpath]) if pins is not None and f.relpath in pins else f.pins


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


def resolve_mirror(mirror: Optional[str] = None) -> Optional[str]:
    """The mirror base URL: ``mirror`` if given, else ``$TALKHEAD_MIRROR`` (when set), else ``None``.
    A trailing ``/`` is dropped; files are fetched from ``<mirror>/<relpath>``.

    Raises:
        InputError: not an ``http://`` or ``https://`` URL.
    """
    mirror = mirror or os.environ.get(MIRROR_ENV) or None
    if mirror is None:
        return None
    parsed = urlparse(mirror)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise InputError(f"--mirror / ${MIRROR_ENV} must be an http(s):// base URL, not {mirror!r}")
    return mirror.rstrip("/")


@dataclass(frozen=True)
class ModelPaths:
    """Paths of the model files ``animate`` loads.

    Attributes:
        root: the models directory.
        fomm_config: FOMM YAML (``talkhead.fomm.load_fomm``'s ``config_path``).
        fomm_checkpoint: ``vox-adv-cpk.pth.tar`` (its ``checkpoint_path``).
        mssync_dir: folder with ``args`` + ``model_chkpt.pt`` (``talkhead.mssync.load_mssync``'s ``model_dir``).
        smac_config / smac_generator / smac_motion_estimator: SMAC's ``config.yml``,
            ``net_g_latest.pth`` and ``net_motion_estimator_latest.pth`` (``talkhead.smac.load_smac``).
    """

    root: Path
    fomm_config: Path
    fomm_checkpoint: Path
    mssync_dir: Path
    smac_config: Path
    smac_generator: Path
    smac_motion_estimator: Path


def model_paths(models_dir: str | os.PathLike | None = None) -> ModelPaths:
    """Where each model file lives in ``models_dir`` (resolved as in :func:`resolve_models_dir`),
    whether or not it exists."""
    root = resolve_models_dir(models_dir)
    return ModelPaths(root=root, fomm_config=root / FOMM_CONFIG, fomm_checkpoint=root / FOMM_CHECKPOINT,
                      mssync_dir=root / "mssync", smac_config=root / SMAC_CONFIG, smac_generator=root / SMAC_GENERATOR,
                      smac_motion_estimator=root / SMAC_MOTION_ESTIMATOR)


# ---------------------------------------------------------------------------------------- cards
def cards_dir() -> Path:
    """Folder of the model cards: ``talkhead/cards`` of the installed package (package data; in a
    source checkout a link to the repository's ``models/``), else the checkout's ``models/``."""
    packaged = Path(str(resources.files("talkhead").joinpath("cards")))
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[1] / "models"


def model_card(name: str) -> str:
    """The markdown model card of ``name`` (``"fomm"`` or ``"mssync"``): sources, pinned digests,
    files, expected layout, licence and citation.

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
        state: ``"missing"``, ``"packaged"``, ``"verified"``, ``"corrupt"`` or ``"unverified"``.
        path: absolute path.
        reason: why it is not ``verified`` (empty when it is).
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


# ---------------------------------------------------------------------------------------- hashing
_HASH_MEMO: dict[str, tuple[int, int, dict[str, str]]] = {}
"""``str(path) -> (size, mtime_ns, digests)`` of files hashed by this process."""


def clear_hash_memo() -> None:
    """Forget which files this process has hashed, so the next :func:`verify` re-hashes them as a
    new process would (for tests and long-running services)."""
    _HASH_MEMO.clear()


def _digests(path: Path, algorithms: Sequence[str], *, fresh: bool = False) -> dict[str, str]:
    """Digests of ``path`` (memoised per process by size + ``mtime_ns``; ``fresh`` re-reads)."""
    st = path.stat()
    memo = _HASH_MEMO.get(str(path))
    if not fresh and memo is not None and memo[:2] == (st.st_size, st.st_mtime_ns) \
            and all(a in memo[2] for a in algorithms):
        return memo[2]
    out = file_digests(path, tuple(dict.fromkeys(("sha256", *algorithms))))
    _HASH_MEMO[str(path)] = (st.st_size, st.st_mtime_ns, out)
    return out


def _hashed_this_process(path: Path, st: os.stat_result) -> Optional[dict[str, str]]:
    memo = _HASH_MEMO.get(str(path))
    return memo[2] if memo is not None and memo[:2] == (st.st_size, st.st_mtime_ns) else None


def _match_pin(digests: Mapping[str, str], pins: Sequence[Pin]) -> Optional[Pin]:
    return next((p for p in pins if digests.get(p.algorithm) == p.digest), None)


# ---------------------------------------------------------------------------------------- manifest
def read_store_manifest(models_dir: str | os.PathLike | None = None) -> dict[str, dict[str, Any]]:
    """The manifest's file entries, ``relpath -> {"sha256", "size", "mtime_ns", "pin", "source",
    "how", "recorded_at"}`` (plus ``"md5"`` for a file pinned by md5); empty without a manifest.

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
        files = read_store_manifest(root)
    except CheckpointError:
        files = {}  # an unreadable manifest is rebuilt from what is verified now
    files.update(updates)
    text = json.dumps({"format": MANIFEST_FORMAT, "files": dict(sorted(files.items()))}, indent=2) + "\n"
    path = root / MANIFEST_NAME
    try:
        atomic_write(path, lambda f: f.write(text.encode("utf-8")))
    except OutputError as exc:
        raise CheckpointError(f"cannot write {path}: {exc}") from None


def _entry(path: Path, digests: Mapping[str, str], pin: Optional[Pin], how: str, source: str) -> dict[str, Any]:
    st = path.stat()
    entry = {"sha256": digests["sha256"], "size": st.st_size, "mtime_ns": st.st_mtime_ns,
             "pin": pin.label if pin else None, "source": source, "how": how,
             "recorded_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    if pin is not None and pin.algorithm != "sha256":
        entry[pin.algorithm] = digests[pin.algorithm]
    _HASH_MEMO[str(path)] = (st.st_size, st.st_mtime_ns, dict(digests))
    return entry


# ---------------------------------------------------------------------------------------- verify
HASH_CHECKS = ("stat", "once", "always")


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
        why = manifest_problem or f"present but not recorded in {MANIFEST_NAME} (placed by hand?)"
        return ModelState(f.relpath, model, UNVERIFIED, path, why)
    want_sha, want_size = entry.get("sha256"), entry.get("size")
    pin = next((p for p in pins if p.label == entry.get("pin")), None)
    bad = lambda why: ModelState(f.relpath, model, CORRUPT, path, why, want_sha, want_size, entry.get("pin"))  # noqa: E731
    if pin is not None and entry.get(pin.algorithm) != pin.digest:
        return bad(f"{MANIFEST_NAME} says it is the {pin.label!r} copy, but its recorded {pin.algorithm} is not "
                   "that copy's (the record was edited)")
    st = path.stat()
    if st.st_size != want_size:
        return bad(f"size {st.st_size} bytes differs from the recorded {want_size} (damaged, truncated or replaced)")
    known = _hashed_this_process(path, st)
    if hash_check == "always" or st.st_mtime_ns != entry.get("mtime_ns") or (hash_check == "once" and known is None):
        known = _digests(path, [pin.algorithm] if pin else [], fresh=True)
    if known is not None:
        if known["sha256"] != want_sha:
            return bad(f"its sha256 {known['sha256'][:16]}... differs from the recorded {str(want_sha)[:16]}... "
                       f"(the file was damaged or replaced, or {MANIFEST_NAME} was edited)")
        if pin is not None and pin.algorithm in known and known[pin.algorithm] != pin.digest:
            return bad(f"its {pin.algorithm} is not that of the {pin.label!r} copy it was recorded as")
        if st.st_mtime_ns != entry.get("mtime_ns"):
            refreshed[f.relpath] = {**entry, "mtime_ns": st.st_mtime_ns}
    return ModelState(f.relpath, model, VERIFIED, path, "", want_sha, want_size, entry.get("pin"))


def verify(models_dir: str | os.PathLike | None = None, names: str | Iterable[str] | None = None, *,
           hash_check: str = "once", check_layout: bool = True, pins: Optional[PinMap] = None) -> dict[str, ModelState]:
    """The state of every file of the models ``names`` (default: all) in ``models_dir``.

    Recorded files are compared with the manifest: size, pin (the recorded digest must be the
    pin's), then sha256 according to ``hash_check``. A re-hash that matches refreshes the recorded
    ``mtime_ns`` (best effort). Unrecorded files are ``unverified``; with ``check_layout=True``
    their model is also checked (:func:`check_layout`) and a failure makes the blamed file
    ``corrupt`` with the reason. Nothing is recorded: see :func:`register_local`.

    Args:
        models_dir: resolved with :func:`resolve_models_dir`.
        names: model names (``"fomm"``, ``"mssync"``, ``"smac"``) or ``None``: the default models
            plus each optional one (SMAC) with a file in the directory.
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
    specs = _specs(names, root)
    try:
        manifest, problem = read_store_manifest(root), ""
    except CheckpointError as exc:
        manifest, problem = {}, f"not recorded: {exc}"
    refreshed: dict[str, dict] = {}
    states = {f.relpath: _file_state(root, f, manifest, problem, hash_check, _pins_of(f, pins), refreshed)
              for spec in specs for f in spec.files}
    if refreshed:
        with contextlib.suppress(CheckpointError):
            _write_manifest(root, refreshed)
    if check_layout:
        for spec in specs:
            fresh = [f.relpath for f in spec.files if states[f.relpath].state == UNVERIFIED]
            if not fresh:
                continue
            group = {f.relpath: root / f.relpath for f in spec.files if states[f.relpath].state not in (MISSING, PACKAGED)}
            try:
                _check_layout(spec, group)
            except TalkheadError as exc:
                for rel in _blame(spec, fresh, exc):
                    old = states[rel]
                    states[rel] = ModelState(rel, old.model, CORRUPT, old.path, f"fails the checks: {exc}")
    return states


# ---------------------------------------------------------------------------------------- layout
def check_layout(name: str, files: Mapping[str, str | os.PathLike]) -> None:
    """Check model ``name``'s files before they are recorded: config readable, every checkpoint
    loads safely, the state dicts inference reads match the expected listing key by key and shape
    by shape, and every floating tensor is finite. Networks are not built (the listing comes from
    the ``meta`` device).

    Args:
        name: ``"fomm"``, ``"mssync"`` or ``"smac"``.
        files: ``{relpath: path}``, any subset of the model's files. A checkpoint without its config
            is checked against the packaged config (FOMM, SMAC); an MS-Sync checkpoint without
            ``args`` only for safe loading, its ``checkpoints`` entry and finite weights.

    Raises:
        ConfigError: a bad config. CheckpointError: unreadable, tampered with, an entry missing,
        or a non-finite tensor (named). StateDictMismatchError: keys/shapes differ (listed).
    """
    _check_layout(_specs(name)[0], {rel: Path(p) for rel, p in files.items()})


def _check_checkpoint(spec: ModelSpec, f: ModelFile, path: Path, config_path: Optional[Path]) -> None:
    """Check one checkpoint file ``f`` at ``path`` against its layout for ``config_path``."""
    expected = _resolve(f.layout)(config_path) if config_path is not None and f.layout else None
    data = load_checkpoint(path, mmap=True)  # shapes + finiteness: mapped, not read into memory
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{path}: a {spec.title} checkpoint is a dict, not {type(data).__name__}")
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
                raise ConfigError(f"{f.layout} gives no listing for {' or '.join(alternatives)}")
            diff = state_dict_diff(listing, state_dict)
            if diff:
                raise StateDictMismatchError(diff.report(f"{path} [{name}]"))
        require_finite(state_dict, path, name)


def _check_layout(spec: ModelSpec, group: Mapping[str, Path]) -> None:
    """:func:`check_layout` on the files of ``group``; an error names the blamed file in its
    ``model_file`` attribute (a relpath) when it is a checkpoint's."""
    cfg = spec.config
    config_path = group.get(cfg.relpath)
    if config_path is None and cfg.packaged:
        config_path = _packaged_path(cfg)
    current: Optional[ModelFile] = None
    try:
        checkpoints = [f for f in spec.checkpoints if f.relpath in group]
        if not checkpoints:
            if config_path is not None and cfg.relpath in group:
                for f in spec.checkpoints:  # the config alone: it must parse and describe a buildable model
                    if f.layout:
                        _resolve(f.layout)(config_path)
            return
        for current in checkpoints:
            _check_checkpoint(spec, current, group[current.relpath], config_path)
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


def _blame(spec: ModelSpec, fresh: Sequence[str], exc: BaseException) -> list[str]:
    """Which of the ``fresh`` (new or unrecorded) files a failed check is blamed on: the checkpoint
    it names, the config for a config error, else all of them."""
    if len(fresh) <= 1:
        return list(fresh)
    rel = spec.config.relpath if isinstance(exc, ConfigError) else getattr(exc, "model_file", None)
    return [rel] if rel in fresh else list(fresh)


# ---------------------------------------------------------------------------------------- staging / commit
@contextlib.contextmanager
def _staging(root: Path) -> Iterator[Path]:
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
class _Accepted:
    """A checked file waiting to be moved into place and recorded."""

    path: Path
    digests: dict[str, str]
    pin: Optional[Pin]
    source: str


def _accept(path: Path, pins: Sequence[Pin], source: str) -> _Accepted:
    digests = _digests(path, [p.algorithm for p in pins], fresh=True)
    return _Accepted(path, digests, _match_pin(digests, pins), source)


def _commit(root: Path, accepted: Mapping[str, _Accepted], how: str) -> None:
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
        entries[rel] = _entry(target, item.digests, item.pin, how, item.source)
    _write_manifest(root, entries)


def _stage_packaged(f: ModelFile, staging: Path) -> Path:
    dst = staging / f.basename
    shutil.copyfile(_packaged_path(f), dst)
    return dst


# ---------------------------------------------------------------------------------------- register / install
def register_local(models_dir: str | os.PathLike | None = None, *, names: str | Iterable[str] | None = None,
                   accept_changed: bool = True, pins: Optional[PinMap] = None) -> dict[str, ModelState]:
    """Check and record files already in place (put there by hand, or replaced on purpose).

    For each model, every present file that is ``unverified`` (and, with ``accept_changed``, every
    ``corrupt`` one: a file changed since it was recorded) is checked (:func:`check_layout`)
    together with its partner; if that passes, its sha256, size, mtime and matching pin (if any)
    are recorded (``how: "register"``). The packaged FOMM config is copied into place when the
    checkpoint is there. Files that fail stay unrecorded and are returned as ``corrupt`` with the
    reason; nothing is raised for them.

    Args:
        models_dir: resolved with :func:`resolve_models_dir`.
        names: model names or ``None``: the default models and every optional one with a file there.
        accept_changed: also re-record files whose bytes differ from the record (the explicit
            "I replaced it" action). :func:`ensure_models` passes ``False``.
        pins: known-good copies per relpath, replacing the registry's (tests).

    Returns:
        ``{relpath: ModelState}`` of the models after registration.

    Raises:
        InputError: an unknown model name. CheckpointError: the manifest cannot be written.
    """
    root = resolve_models_dir(models_dir)
    specs = _specs(names, root)
    states = verify(root, [s.name for s in specs], check_layout=False, pins=pins)
    takes = (UNVERIFIED, CORRUPT) if accept_changed else (UNVERIFIED,)
    failed: dict[str, str] = {}
    unrecorded: dict[str, str] = {}
    for spec in specs:
        pending = {f.relpath: root / f.relpath for f in spec.files if states[f.relpath].state in takes}
        cfg = spec.config
        needs_config = (states[cfg.relpath].state == PACKAGED
                        and any(c.relpath in pending or states[c.relpath].state == VERIFIED for c in spec.checkpoints))
        if not pending and not needs_config:
            continue
        with _staging(root) if needs_config else contextlib.nullcontext() as staging:
            if needs_config:
                pending[cfg.relpath] = _stage_packaged(cfg, staging)
            group = {f.relpath: root / f.relpath for f in spec.files if states[f.relpath].state == VERIFIED}
            group.update(pending)
            try:
                _check_layout(spec, group)
            except TalkheadError as exc:
                failed.update({rel: f"fails the checks: {exc}" for rel in _blame(spec, list(pending), exc)})
                continue
            accepted = {rel: _accept(p, _pins_of(_file_of(rel), pins), "local file") for rel, p in pending.items()}
            try:
                _commit(root, accepted, how="register")
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


def _find_in(folder: Path, spec: ModelSpec, f: ModelFile) -> Optional[Path]:
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
    are copied into a staging folder, checked (:func:`check_layout`) with their partners (present or
    copied along; the FOMM and SMAC configs fall back to the packaged ones), and only then moved into place
    and recorded (``how: "install"``, with the pin they match, if any: a hand-installed file need
    not match one). A model that fails leaves the directory as it was.

    Args:
        source: a folder, one file, or several files.
        models_dir: the destination, resolved with :func:`resolve_models_dir`.
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
    specs = _specs(names, every=True)
    if isinstance(source, (str, os.PathLike)):
        src = Path(source).expanduser()
        if src.is_dir():
            found = {f.relpath: p for spec in specs for f in spec.files if (p := _find_in(src, spec, f))}
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
        with _staging(root) as staging:
            new = {}
            for rel, p in mine.items():
                dst = staging / rel.rsplit("/", 1)[-1]
                try:
                    shutil.copyfile(p, dst)
                except OSError as exc:
                    raise CheckpointError(f"cannot copy {p} into {root}: {exc.strerror or exc}") from None
                new[rel] = dst
            cfg = spec.config
            if cfg.packaged and cfg.relpath not in new and not (root / cfg.relpath).is_file():
                new[cfg.relpath] = _stage_packaged(cfg, staging)
            group = {f.relpath: root / f.relpath for f in spec.files if (root / f.relpath).is_file()}
            group.update(new)
            try:
                _check_layout(spec, group)
            except TalkheadError as exc:
                bad = ", ".join(str(mine.get(rel, rel)) for rel in _blame(spec, list(new), exc))
                errors.append(f"{bad} is not a valid {spec.title} file, nothing was installed for {spec.name}: {exc}")
                continue
            _commit(root, {rel: _accept(p, _pins_of(_file_of(rel), pins), f"install_from {where}")
                           for rel, p in new.items()}, how="install")
    if errors:
        raise CheckpointError("\n".join(errors))
    return verify(root, touched, hash_check="stat", check_layout=False, pins=pins)


# ---------------------------------------------------------------------------------------- download
@dataclass(frozen=True)
class Attempt:
    """One source tried for one file: ``reason`` is empty when it gave the accepted file."""

    source: Source
    reason: str


class _Unresolved(OSError):
    def __init__(self, host: str):
        super().__init__(f"cannot resolve {host}")
        self.host = host


class _FileFailed(Exception):
    def __init__(self, attempts: list[Attempt], cause: Optional[BaseException]):
        super().__init__("every source failed")
        self.attempts, self.cause = attempts, cause


def _short_reason(exc: BaseException, timeout: float) -> str:
    """A few words on why a transfer failed, from the exception and its chain (no raw urllib3 text)."""
    import requests

    chain, e = [], exc
    while e is not None and len(chain) < 8:
        chain.append(e)
        e = e.__cause__ or e.__context__
    text = " ".join(str(x) for x in chain)
    host = re.search(r"host='([^']+)'", text)
    host = host.group(1) if host else None
    if isinstance(exc, _Unresolved):
        return f"cannot resolve {exc.host}"
    for e in chain:
        if isinstance(e, requests.exceptions.HTTPError) and e.response is not None:
            return f"HTTP {e.response.status_code} {e.response.reason or ''}".strip()
        if isinstance(e, requests.exceptions.Timeout):
            return f"no answer within {timeout:g} s" + (f" from {host}" if host else "")
        if isinstance(e, requests.exceptions.ConnectionError):
            if re.search(r"NameResolution|Failed to resolve|Name or service not known|nodename nor servname|getaddrinfo",
                         text):
                return f"cannot resolve {host or 'the host'}"
            if "Connection refused" in text:
                return f"connection refused{f' by {host}' if host else ''}"
            if "incomplete" in text.lower() or "IncompleteRead" in text:
                return "the connection broke off and could not be resumed"
            return f"cannot connect{f' to {host}' if host else ''}"
    if "did not honor the requested byte range" in text:
        return "the connection broke off and the server does not allow resuming"
    if "Download is incomplete" in text:
        return "the connection broke off and could not be resumed"
    if type(exc).__name__ == "FileURLRetrievalError":
        return "Google Drive would not hand out the file (download quota exceeded, or access denied)"
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    first = first if len(first) <= 120 else first[:117] + "..."
    return first if isinstance(exc, FileNotFoundError) else f"{type(exc).__name__}: {first}"


class _Transfers:
    """gdown transfers into a staging folder, with Drive folder listings cached per call."""

    def __init__(self, staging: Path, timeout: float, retries: int, progress: Optional[ProgressCallback]):
        self.staging, self.timeout, self.retries, self.progress = staging, timeout, retries, progress
        self.listings: dict[str, dict[str, str]] = {}
        self.unresolved: dict[str, Optional[OSError]] = {}

    def _resolve_host(self, src: Source) -> None:
        """Fail at once when the source's host has no address (offline, no DNS), instead of letting
        gdown retry the connection with back-off; the answer is cached per host for this call."""
        host = urlparse(src.url).hostname
        if not host:
            return
        if host not in self.unresolved:
            try:
                socket.getaddrinfo(host, None)
                self.unresolved[host] = None
            except OSError as exc:
                self.unresolved[host] = exc
        if self.unresolved[host] is not None:
            raise _Unresolved(host) from self.unresolved[host]

    def _drive_ids(self, folder: str) -> dict[str, str]:
        """``{file name: Drive file id}`` of a Drive folder, listed without downloading."""
        import gdown

        if folder not in self.listings:
            entries = gdown.download_folder(id=folder, output=str(self.staging / ".listing"), quiet=True,
                                            skip_download=True, timeout=self.timeout)
            ids: dict[str, str] = {}
            for e in entries or ():
                name = str(getattr(e, "path", "")).replace("\\", "/").rsplit("/", 1)[-1]
                if name and getattr(e, "id", None):
                    ids.setdefault(name, e.id)
            self.listings[folder] = ids
        return self.listings[folder]

    def fetch(self, src: Source, out: Path) -> None:
        """Download ``src`` to ``out`` (gdown writes ``out<random>.part`` and renames it when done).

        Raises:
            Exception: whatever the transfer raises (network, HTTP status, Drive refusal,
            ``FileNotFoundError`` when a Drive folder lacks the file). KeyboardInterrupt passes.
        """
        import gdown

        self._resolve_host(src)
        cb = None
        if self.progress is not None:
            stage, report = f"download {out.name}", self.progress
            cb = lambda done, total: report(stage, int(done), int(total or 0))  # noqa: E731
        common = dict(output=str(out), quiet=True, progress=cb, timeout=self.timeout, retries=self.retries)
        if src.kind == "drive-folder":
            ids = self._drive_ids(src.location)
            if src.remote_name not in ids:
                raise FileNotFoundError(f"{src.remote_name!r} is not in the folder (it holds: "
                                        f"{', '.join(sorted(ids)) or 'nothing'})")
            gdown.download(id=ids[src.remote_name], **common)
        elif src.kind == "drive-file":
            gdown.download(id=src.location, **common)
        elif src.kind == "url":
            gdown.download(url=src.location, use_cookies=False, **common)
        else:
            raise ValueError(f"unknown source kind {src.kind!r}")
        if not out.is_file():
            raise FileNotFoundError("the transfer produced no file")


def _sources_of(f: ModelFile, sources: Optional[SourceMap], mirror: Optional[str]) -> list[Source]:
    out = list(sources[f.relpath]) if sources is not None and f.relpath in sources else list(f.sources)
    if mirror is not None:
        out.append(Source("url", f"{mirror}/{f.relpath}", f"mirror {mirror}"))
    return out


def _fetch_checked(spec: ModelSpec, f: ModelFile, srcs: Sequence[Source], pins: Sequence[Pin],
                   group: Mapping[str, Path], transfers: _Transfers, say: Callable[[str], None]) -> _Accepted:
    """Try ``srcs`` in order until one gives a file that matches a pin (when ``pins``) and passes
    :func:`check_layout` with ``group``.

    Raises:
        _FileFailed: every source failed (attempts with reasons; the first exception as cause).
    """
    attempts: list[Attempt] = []
    cause: Optional[BaseException] = None
    out = transfers.staging / f.basename

    def reject(src: Source, reason: str) -> None:
        attempts.append(Attempt(src, reason))
        say(f"{f.relpath}: {src.host}: {reason}")
        out.unlink(missing_ok=True)

    for src in srcs:
        out.unlink(missing_ok=True)
        say(f"{f.relpath}: trying {src.host} ({src.url})")
        try:
            transfers.fetch(src, out)
        except Exception as exc:  # network, HTTP, Drive refusal: try the next source
            reject(src, _short_reason(exc, transfers.timeout))
            cause = cause or exc
            continue
        item = _accept(out, pins, src.url)
        if pins and item.pin is None:
            reject(src, f"sha256 {item.digests['sha256'][:12]}... is not a known-good copy "
                        f"({', '.join(p.label for p in pins)})")
            continue
        try:
            _check_layout(spec, {**group, f.relpath: out})
        except TalkheadError as exc:
            reject(src, f"fails the checks ({(str(exc).splitlines() or [''])[0][:160]})")
            cause = cause or exc
            continue
        say(f"{f.relpath}: verified the copy from {src.host}" + (f" ({item.pin.label})" if item.pin else ""))
        return item
    raise _FileFailed(attempts, cause)


def _by_hand_message(name: str, files: Sequence[ModelFile]) -> str:
    """What to do for a model whose missing files have no download source (SMAC: a browser share)."""
    where = " and ".join(dict.fromkeys(f.by_hand for f in files if f.by_hand)) or f"models/{name}.md"
    return (f"{name} has no download source: download {' and '.join(f.basename for f in files)} by hand from "
            f"{where} (a browser link; see models/{name}.md), then run `talkhead download {name} --from-dir DIR`")


def _failure_message(failures: Mapping[str, Optional[list[Attempt]]], skipped: Mapping[str, str],
                     by_hand: Mapping[str, Sequence[ModelFile]] = {}) -> str:
    manual = "; ".join(_by_hand_message(name, files) for name, files in by_hand.items())
    if not failures and not skipped:
        return manual
    parts = []
    for rel, attempts in failures.items():
        tried = "; ".join(f"{a.source.host}: {a.reason}" for a in attempts) if attempts else "no source configured"
        parts.append(f"{rel} ({tried})")
    parts.extend(f"{rel} (not tried: {why})" for rel, why in skipped.items())
    reasons = [a.reason for v in failures.values() for a in v or []]
    offline = " (no network?)" if reasons and all("cannot resolve" in r for r in reasons) else ""
    return ("could not download " + ", ".join(parts) + offline + "; get the files by hand (sources in models/*.md) and run "
            "`talkhead download --from-dir DIR`, or serve a copy of a models directory and use "
            f"`talkhead download --mirror URL` (or ${MIRROR_ENV})" + (f". {manual}" if manual else ""))


def download(names: str | Iterable[str] | None = None, models_dir: str | os.PathLike | None = None, *,
             mirror: Optional[str] = None, sources: Optional[SourceMap] = None, pins: Optional[PinMap] = None,
             progress: Optional[ProgressCallback] = None, log: Optional[Callable[[str], None]] = None,
             force: bool = False, timeout: float = DOWNLOAD_TIMEOUT_S,
             retries: int = DOWNLOAD_RETRIES) -> dict[str, ModelState]:
    """Fetch the checkpoints of ``names`` (default: all), check and record them.

    Per model: files already ``verified`` are kept (unless ``force``); ``unverified`` ones are
    first checked and recorded instead of downloaded (:func:`register_local`); the rest are
    downloaded, config first. For each file the sources are tried in order (the registry's, then
    ``<mirror>/<relpath>``) until one gives a file that matches a pin (when the file has pins)
    and passes :func:`check_layout`; rejected copies are deleted at once. Only when every needed
    file of a model is accepted are they moved into place and recorded; the packaged FOMM YAML is
    copied in along. Every model is attempted. A failure leaves no partial file, no staging folder
    and no empty model folder, also on Ctrl-C.

    Args:
        names: ``"fomm"``, ``"mssync"``, ``"smac"``, a list of them, or ``None`` for the default
            models (:data:`DEFAULT_MODELS`, what ``animate`` needs). SMAC's weights have no download
            source (a browser share): they come from ``mirror`` or are installed with
            :func:`install_from`; otherwise it fails with the by-hand instructions.
        models_dir: destination, resolved with :func:`resolve_models_dir` (created if needed).
        mirror: base URL tried last for every file (default ``$TALKHEAD_MIRROR``).
        sources: ``{relpath: [Source, ...]}`` replacing the registry's sources of those files.
        pins: ``{relpath: [Pin, ...]}`` replacing the registry's pins of those files.
        progress: ``progress("download <file>", bytes_done, bytes_total)``.
        log: receives one line per source tried and per accepted file.
        force: download even files that are ``verified``.
        timeout: seconds to wait for a server (connect and between bytes).
        retries: reconnections per transfer after a broken connection (resumed with HTTP Range).

    Returns:
        ``{relpath: ModelState}`` of the requested models afterwards.

    Raises:
        InputError: an unknown model name or a bad mirror URL.
        DownloadError: one line naming each file that could not be obtained, each source tried
            with a short reason, and the by-hand fix; ``attempts`` holds the details and the
            first underlying exception is chained (``--debug`` shows it).
    """
    root = resolve_models_dir(models_dir)
    specs = _specs(names)
    mirror = resolve_mirror(mirror)
    say = log or (lambda msg: None)
    if not force:  # files placed by hand: keep them if they pass the checks
        register_local(root, names=[s.name for s in specs], accept_changed=False, pins=pins)
    states = verify(root, [s.name for s in specs], check_layout=False, pins=pins)
    failures: dict[str, Optional[list[Attempt]]] = {}
    skipped: dict[str, str] = {}
    by_hand: dict[str, list[ModelFile]] = {}
    cause: Optional[BaseException] = None
    for spec in specs:
        need = [f for f in spec.files if not f.packaged and (force or states[f.relpath].state != VERIFIED)]
        packaged = [f for f in spec.files if f.packaged and (force or states[f.relpath].state != VERIFIED)]
        if not need and not packaged:
            continue
        manual = [f for f in need if f.by_hand and not _sources_of(f, sources, mirror)]
        if manual:  # nothing to try: say where a person gets the files, touch nothing
            by_hand[spec.name] = manual
            continue
        with _staging(root) as staging:
            transfers = _Transfers(staging, timeout, retries, progress)
            accepted: dict[str, _Accepted] = {}
            group = {f.relpath: root / f.relpath for f in spec.files
                     if f not in need and f not in packaged and states[f.relpath].state == VERIFIED}
            for f in packaged:
                accepted[f.relpath] = _accept(_stage_packaged(f, staging), (), "packaged with talkhead")
                group[f.relpath] = accepted[f.relpath].path
            failed = False
            for f in need:
                if failed:
                    skipped[f.relpath] = f"{spec.name} already failed"
                    continue
                srcs = _sources_of(f, sources, mirror)
                try:
                    item = _fetch_checked(spec, f, srcs, _pins_of(f, pins), group, transfers, say)
                except _FileFailed as fail:
                    failures[f.relpath] = fail.attempts
                    cause = cause or fail.cause
                    failed = True
                    continue
                accepted[f.relpath] = item
                group[f.relpath] = item.path
            if failed:
                continue
            if not need:  # only the packaged config: it must fit the checkpoint in place
                try:
                    _check_layout(spec, group)
                except TalkheadError as exc:
                    fitted = ", ".join(str(root / f.relpath) for f in spec.checkpoints if f.relpath in group)
                    raise DownloadError(f"the packaged {', '.join(f.relpath for f in packaged)} does not fit "
                                        f"{fitted}: {exc}") from exc
            _commit(root, accepted, how="download" if need else "packaged")
    if failures or skipped or by_hand:
        err = DownloadError(_failure_message(failures, skipped, by_hand))
        err.attempts = failures
        raise err from cause
    return verify(root, [s.name for s in specs], hash_check="stat", check_layout=False, pins=pins)


# ---------------------------------------------------------------------------------------- ensure
def ensure_models(models_dir: str | os.PathLike | None = None, *, names: str | Iterable[str] | None = None,
                  offline: bool = False, progress: Optional[ProgressCallback] = None, log: Optional[Callable[[str], None]] = None,
                  mirror: Optional[str] = None, sources: Optional[SourceMap] = None, pins: Optional[PinMap] = None,
                  timeout: float = DOWNLOAD_TIMEOUT_S) -> ModelPaths:
    """Make sure every file of the models ``names`` is present and verified; what ``animate`` and
    ``reenact`` call before loading.

    Steps: recorded files -> size, pin and sha256 checked (sha256 once per process and file, see
    the module docstring); corrupt files -> error (never replaced silently); files placed by hand
    (``unverified``) -> checked and recorded; missing checkpoints -> downloaded (:func:`download`),
    or with ``offline`` an error saying what is missing and how to get it; the FOMM config ->
    copied from the package. Nothing here loads a recorded checkpoint: the pipeline loads each
    one once.

    Args:
        models_dir: resolved with :func:`resolve_models_dir`.
        names: the models to check (``None``: :data:`DEFAULT_MODELS`, what ``animate`` needs); a
            renderer's are in its registry entry (``talkhead.renderers``, ``store_names``).
        offline: never touch the network.
        progress: download progress, see :func:`download`.
        log: receives one-line status messages (``None``: silent).
        mirror, sources, pins, timeout: passed to :func:`download`.

    Returns:
        :class:`ModelPaths` of the verified files.

    Raises:
        CheckpointError: a file is corrupt or fails the checks (named, with the fix).
        DownloadError: files are missing and ``offline`` is set, or the download failed.
    """
    root = resolve_models_dir(models_dir)
    say = log or (lambda msg: None)
    wanted = [s.name for s in _specs(DEFAULT_MODELS if names is None else names)]
    states = verify(root, wanted, check_layout=False, pins=pins)
    fresh = sorted({s.model for s in states.values() if s.state == UNVERIFIED})
    if fresh:
        say(f"checking model files placed by hand in {root}")
        states.update(register_local(root, names=fresh, accept_changed=False, pins=pins))
        for s in states.values():
            if s.state == UNVERIFIED:  # checked, but the directory is read-only: used unrecorded
                say(f"note: {s.name} {s.reason}")
    bad = [s for s in states.values() if s.state == CORRUPT]
    if bad:
        lines = [f"{s.path}: {s.reason}" for s in bad]
        models = " ".join(sorted({s.model for s in bad}))
        raise CheckpointError(f"model file{'s' if len(bad) > 1 else ''} failed verification: " + "; ".join(lines)
                              + f"; replace {'them' if len(bad) > 1 else 'it'} with `talkhead download --force {models}` "
                              "(a new copy is verified before it replaces the old one), or put a good copy "
                              "in a folder and run `talkhead download --from-dir FOLDER`.")
    missing = [s.name for s in states.values() if s.state == MISSING]
    if missing and offline:
        def origin(rel: str) -> str:
            f = _file_of(rel)
            return f"{rel} from {f.sources[0].url}" if f.sources else f"{rel} from {f.by_hand}" if f.by_hand else rel

        where = "; ".join(map(origin, missing))
        models = " ".join(sorted({s.model for s in states.values() if s.state == MISSING}))
        downloadable = all(_file_of(rel).sources for rel in missing)
        raise DownloadError(f"model files missing in {root} and downloads are off (--offline): {where}; get them "
                            f"by hand and run `talkhead download {models} --from-dir FOLDER` (or put them at those "
                            "paths in the models directory)"
                            + (f", or run `talkhead download {models}` with network" if downloadable else ""))
    need = sorted({s.model for s in states.values() if s.state in (MISSING, PACKAGED)})
    if need:
        if missing:
            say(f"downloading {', '.join(missing)} to {root}")
        download(need, root, mirror=None if offline else mirror, sources=sources, pins=pins, progress=progress,
                 log=log, timeout=timeout)
    return model_paths(root)
