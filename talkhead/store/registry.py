"""The store's registry: which files each model has, where they come from and how they are checked.

A model is one :class:`ModelSpec`: its files (:class:`ModelFile`), each with its download sources
(:class:`Source`), known-good copies (:class:`Pin`) and, for a checkpoint, a layout callable. Models
are added with :func:`register_model`, from one place: the built-in ones by :mod:`talkhead.store.builtin`,
a renderer's by its :class:`talkhead.renderers.RendererEntry` (``models``). Data only: nothing here
touches a file.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Iterable, Mapping, Optional, Sequence

from ..errors import InputError

Layout = Callable[[Path], Mapping[str, Mapping[str, tuple[int, ...]]]]
"""``layout(config_path) -> {entry: {key: shape}}``: the state dicts a checkpoint must hold for a
config file (the model package computes them on the ``meta`` device)."""

ROLES = ("config", "checkpoint")


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
        relpath: path relative to the models directory, ``<model>/<file name>``
            (``"fomm/vox-adv-cpk.pth.tar"``).
        role: ``"config"`` or ``"checkpoint"``.
        description: what it is, for messages.
        sources: where to download it, in the order they are tried (empty for a packaged file).
        pins: known-good copies; a downloaded file must match one when any are given.
        packaged: ``packaged() -> Path`` of the copy that ships with talkhead (the FOMM and SMAC
            YAMLs), or ``None``. The callable imports its model package when called, not before.
        layout: for a checkpoint, its :data:`Layout` callable (imports its model package when called).
        entries: for a checkpoint, the top-level entries inference reads, each a tuple of
            alternatives in order of preference (the first present is read and checked against
            the layout's listing of whichever alternative it names).
        strip_prefix: a key prefix the loader removes before matching (SMAC's DataParallel
            ``"module."``), or ``""``.
        by_hand: where a person downloads the file when it has no download source (a browser
            share), or ``None``.
        key: the file's name within its model, what :func:`talkhead.store.model_file` asks for
            (``"config"``, ``"checkpoint"``, SMAC's ``"generator"``); default: ``role``.
        check: for a checkpoint of a model without a config file (SyncNet's bare state dict),
            ``check(path)`` raising a :class:`talkhead.errors.CheckpointError` for a bad file; it
            replaces the ``layout``/``entries`` check. Imports its model package when called.

    Raises:
        ValueError: an unknown ``role``, a ``relpath`` without a model folder, or a ``packaged`` or
            ``layout`` that is not callable.
    """

    relpath: str
    role: str
    description: str
    sources: tuple[Source, ...] = ()
    pins: tuple[Pin, ...] = ()
    packaged: Optional[Callable[[], Path]] = None
    layout: Optional[Layout] = None
    entries: tuple[tuple[str, ...], ...] = ()
    strip_prefix: str = ""
    by_hand: Optional[str] = None
    key: str = ""
    check: Optional[Callable[[Path], None]] = None

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"{self.relpath}: role must be one of {', '.join(ROLES)}, not {self.role!r}")
        model, _, name = self.relpath.partition("/")
        if not model or not name or "\\" in self.relpath:
            raise ValueError(f"relpath must be '<model>/<file name>', not {self.relpath!r}")
        for what in ("packaged", "layout", "check"):
            if getattr(self, what) is not None and not callable(getattr(self, what)):
                raise ValueError(f"{self.relpath}: {what} must be a callable, not {getattr(self, what)!r}")
        if not self.key:
            object.__setattr__(self, "key", self.role)

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
        files: the model's files: one config first (or none, for a model whose checkpoint
            describes itself, SyncNet), then one or more checkpoints (each with its ``layout`` and
            ``entries``, or its own ``check``), every one under ``<name>/``, each with its own ``key``.
        optional: not needed by ``animate``: left out of the default set of
            :func:`talkhead.store.download` and :func:`talkhead.store.ensure_models`, and reported
            by :func:`talkhead.store.verify` only once one of its files is there.
        notice: one line users must see when the model is installed (SMAC's non-commercial licence).

    Raises:
        ValueError: a bad name, a file outside ``<name>/``, no file, more than one config or one
            that is not first, no config and a checkpoint without ``check``, or two files with one ``key``.
    """

    name: str
    title: str
    files: tuple[ModelFile, ...]
    optional: bool = False
    notice: str = ""

    def __post_init__(self):
        if not self.name or "/" in self.name or self.name.startswith("."):
            raise ValueError(f"a model name is a folder name, not {self.name!r}")
        stray = [f.relpath for f in self.files if f.model != self.name]
        if stray:
            raise ValueError(f"model {self.name!r}: files must lie under {self.name}/, not {', '.join(stray)}")
        configs = sum(f.role == "config" for f in self.files)
        if not self.files or configs > 1 or (configs == 1 and self.files[0].role != "config"):
            raise ValueError(f"model {self.name!r}: the first file, and only it, is the config (or there is none)")
        if not configs and any(f.check is None for f in self.files):
            raise ValueError(f"model {self.name!r}: without a config file every checkpoint needs its own check")
        keys = [f.key for f in self.files]
        if len(set(keys)) != len(keys):
            raise ValueError(f"model {self.name!r}: file keys must differ ({', '.join(keys)})")

    def file(self, key: str) -> ModelFile:
        """The file named ``key`` (:attr:`ModelFile.key`).

        Raises:
            InputError: no such file (the model's keys are listed).
        """
        for f in self.files:
            if f.key == key:
                return f
        raise InputError(f"model {self.name!r} has no file {key!r}: choose from "
                         f"{', '.join(f.key for f in self.files)}")

    @property
    def config(self) -> Optional[ModelFile]:
        """The config file, or ``None`` for a model without one (SyncNet)."""
        return self.files[0] if self.files[0].role == "config" else None

    @property
    def checkpoints(self) -> tuple[ModelFile, ...]:
        """The checkpoint files, in registry order."""
        return tuple(f for f in self.files if f.role == "checkpoint")


SourceMap = Mapping[str, Sequence[Source]]
"""``{relpath: [Source, ...]}`` replacing the registry's sources of those files (tests, mirrors)."""
PinMap = Mapping[str, Sequence[Pin]]
"""``{relpath: [Pin, ...]}`` replacing the registry's pins of those files (tests)."""

_MODELS: dict[str, ModelSpec] = {}

REGISTRY: Mapping[str, ModelSpec] = MappingProxyType(_MODELS)
"""Every registered model, by name, in registration order (read-only: see :func:`register_model`).
The built-in models' sources and pins are documented, with who hosts each, in ``models/*.md``."""


def register_model(spec: ModelSpec, *, replace: bool = False) -> ModelSpec:
    """Add ``spec`` to :data:`REGISTRY`: from then on the store verifies, downloads, installs and
    locates its files like the built-in models'. Registering an equal spec again is a no-op.

    Args:
        spec: the model.
        replace: replace a different model registered under the same name.

    Returns:
        ``spec``.

    Raises:
        ValueError: a different model of that name is registered and ``replace`` is not set.
    """
    old = _MODELS.get(spec.name)
    if old is not None and old != spec and not replace:
        raise ValueError(f"a different model {spec.name!r} is already registered")
    _MODELS[spec.name] = spec
    return spec


def unregister_model(name: str) -> ModelSpec:
    """Remove model ``name`` from :data:`REGISTRY` (its files on disk are left alone).

    Returns:
        The removed spec.

    Raises:
        InputError: no model of that name.
    """
    get_model(name)
    return _MODELS.pop(name)


def get_model(name: str) -> ModelSpec:
    """The registered model ``name``.

    Raises:
        InputError: an unknown name (the registered ones are listed).
    """
    return specs_for(name)[0]


def default_models() -> tuple[str, ...]:
    """The models ``animate`` needs and ``talkhead download`` fetches by default: every registered
    model that is not ``optional`` (``fomm``, ``mssync``)."""
    return tuple(n for n, s in _MODELS.items() if not s.optional)


def present(root: Path, spec: ModelSpec) -> bool:
    """Whether any file of ``spec`` other than a packaged one is in ``root``."""
    return any((root / f.relpath).exists() for f in spec.files if not f.packaged)


def specs_for(names: str | Iterable[str] | None, root: Optional[Path] = None, *,
              every: bool = False) -> list[ModelSpec]:
    """The specs for ``names``, in registry order. ``None``: every model with ``every``; otherwise
    the default ones (:func:`default_models`) plus, when ``root`` is given, the optional models
    with a file in it.

    Raises:
        InputError: an unknown model name.
    """
    if names is None:
        return [s for s in _MODELS.values()
                if every or not s.optional or (root is not None and present(root, s))]
    wanted = [names] if isinstance(names, str) else list(names)
    unknown = [n for n in wanted if n not in _MODELS]
    if unknown:
        raise InputError(f"unknown model {', '.join(map(repr, unknown))}: choose from {', '.join(_MODELS)}")
    return [spec for name, spec in _MODELS.items() if name in wanted]


def file_of(relpath: str) -> ModelFile:
    """The registered file at ``relpath`` (``"fomm/vox-adv-cpk.pth.tar"``)."""
    return next(f for f in _MODELS[relpath.split("/", 1)[0]].files if f.relpath == relpath)


def pins_of(f: ModelFile, pins: Optional[PinMap]) -> tuple[Pin, ...]:
    """``f``'s known-good copies: ``pins[f.relpath]`` when given, else the registry's."""
    return tuple(pins[f.relpath]) if pins is not None and f.relpath in pins else f.pins


def sources_of(f: ModelFile, sources: Optional[SourceMap], mirror: Optional[str]) -> list[Source]:
    """Where to download ``f``, in order: ``sources[f.relpath]`` when given, else the registry's;
    then ``<mirror>/<relpath>`` when a mirror is given."""
    out = list(sources[f.relpath]) if sources is not None and f.relpath in sources else list(f.sources)
    if mirror is not None:
        out.append(Source("url", f"{mirror}/{f.relpath}", f"mirror {mirror}"))
    return out
