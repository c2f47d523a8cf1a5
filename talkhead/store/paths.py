"""Where the store's files are: the models directory, the mirror, each registered model's folder and
files, and the model cards. Nothing here reads or creates a file, except :func:`model_card`.
"""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

from ..errors import ConfigError, InputError
from .registry import get_model

MODELS_ENV = "TALKHEAD_MODELS"
"""Environment variable naming the models directory (used when no ``--models-dir`` is given)."""

MIRROR_ENV = "TALKHEAD_MIRROR"
"""Environment variable naming a mirror base URL (used when no ``--mirror`` is given)."""


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


def model_dir(models_dir: str | os.PathLike | None, model: str) -> Path:
    """The folder of the registered model ``model`` in the models directory (resolved as in
    :func:`resolve_models_dir`), e.g. ``<root>/mssync`` (what :func:`talkhead.mssync.load_mssync`
    takes), whether or not it exists.

    Raises:
        InputError: ``model`` is not registered.
    """
    return resolve_models_dir(models_dir) / get_model(model).name


def model_file(models_dir: str | os.PathLike | None, model: str, key: str) -> Path:
    """The path of file ``key`` of the registered model ``model`` in the models directory (resolved
    as in :func:`resolve_models_dir`), whether or not it exists: e.g. ``model_file(root, "fomm",
    "checkpoint")`` -> ``<root>/fomm/vox-adv-cpk.pth.tar``. The keys are the model's
    :attr:`~talkhead.store.registry.ModelFile.key` (``"config"``, ``"checkpoint"``; SMAC:
    ``"config"``, ``"generator"``, ``"motion_estimator"``).

    Raises:
        InputError: ``model`` is not registered or has no file ``key``.
    """
    return resolve_models_dir(models_dir) / get_model(model).file(key).relpath


def cards_dir() -> Path:
    """Folder of the model cards: ``talkhead/cards`` of the installed package (package data; in a
    source checkout a link to the repository's ``models/``), else the checkout's ``models/``."""
    packaged = Path(str(resources.files("talkhead").joinpath("cards")))
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "models"


def model_card(name: str) -> str:
    """The markdown model card of ``name`` (``"fomm"``, ``"mssync"``, ``"smac"``): sources, pinned
    digests, files, expected layout, licence and citation.

    Raises:
        InputError: unknown model. ConfigError: the card is missing (a broken installation).
    """
    spec = get_model(name)
    path = cards_dir() / f"{spec.name}.md"
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"model card {path} is missing ({exc.strerror or exc}); reinstall talkhead") from None
