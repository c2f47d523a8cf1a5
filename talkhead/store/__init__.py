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

**Models** are registry entries (:class:`ModelSpec`, :func:`register_model`): the built-in ones in
:mod:`talkhead.store.builtin`; a renderer brings its own in its
:class:`talkhead.renderers.RendererEntry` (``models``). Code asks the registry where a file is
(:func:`model_file`, :func:`model_dir`), never spells a path. One card per model (sources in order,
pinned digests, layout, licence, citation) is in the repository's ``models/`` folder and ships as
``talkhead/cards/<name>.md`` (:func:`model_card`).

**Sources.** Each downloadable file lists its sources in order: the authors' Google Drive folder
first (gdown), then public mirrors other projects use, then the mirror given by ``--mirror URL`` /
``$TALKHEAD_MIRROR`` (a base URL serving the models directory's layout, e.g.
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
  key and shape by shape, with the listing its model's layout callable derives from the config
  (``talkhead.fomm.layout`` / ``talkhead.mssync.layout`` / ``talkhead.smac.layout``, computed on the
  ``meta`` device; for an entry with alternatives, such as SMAC's ``params_ema`` else ``params``,
  the one inference reads), and every floating tensor must be finite. Only then is the file moved
  into place (atomically, from a staging folder ``<root>/.incoming-*`` that is always removed) and
  recorded.

**Verification on use** (:func:`verify`, :func:`ensure_models`): a recorded file must have its
recorded size, and its sha256 is recomputed on the first use of the file in each process
(``hash_check="once"``; its cost: ``benchmarks/README.md``, "Checkpoint checks") and compared with the manifest
and, for a pinned file, with the pin. An edited manifest or a replaced file is therefore caught the
next time a process uses it. Later uses in the same process trust size + ``mtime_ns``;
``talkhead doctor`` re-hashes every time (``hash_check="always"``). The pipeline then loads each
checkpoint exactly once (``load_fomm``, ``load_mssync``); the store never deserializes a recorded
file again.

States: ``missing``; ``packaged`` (the FOMM YAML is not in the directory yet: it ships with
talkhead and is copied in on first use); ``verified``; ``corrupt`` (size, sha256 or pin differ from
the record, or, unrecorded, it fails the checks); ``unverified`` (present, not recorded: placed by
hand; checked and recorded on first use).

Modules, by job: :mod:`~talkhead.store.registry` (the data and :func:`register_model`),
:mod:`~talkhead.store.builtin` (FOMM, MS-Sync, SMAC), :mod:`~talkhead.store.paths` (directories, file
paths, cards), :mod:`~talkhead.store.manifest` (the record, the hash memo),
:mod:`~talkhead.store.verification` (states, :func:`verify`), :mod:`~talkhead.store.checks` (layout
checks), :mod:`~talkhead.store.install` (staging, :func:`register_local`, :func:`install_from`),
:mod:`~talkhead.store.transfer` (gdown transfers), :mod:`~talkhead.store.downloads`
(:func:`download`, :func:`ensure_models`).
"""
from __future__ import annotations

from . import builtin  # noqa: F401  (registers FOMM, MS-Sync and SMAC)
from .checks import check_layout
from .downloads import download, ensure_models
from .install import STALE_STAGING_S, install_from, register_local
from .manifest import STORE_MANIFEST_NAME, clear_hash_memo, read_store_manifest
from .paths import MIRROR_ENV, MODELS_ENV, cards_dir, model_card, model_dir, model_file, resolve_mirror, resolve_models_dir
from .registry import (REGISTRY, ModelFile, ModelSpec, Pin, PinMap, Source, SourceMap, default_models, register_model,
                       unregister_model)
from .transfer import DOWNLOAD_RETRIES, DOWNLOAD_TIMEOUT_S, Attempt
from .verification import CORRUPT, HASH_CHECKS, MISSING, PACKAGED, UNVERIFIED, VERIFIED, ModelState, verify

__all__ = [
    "CORRUPT", "MISSING", "PACKAGED", "UNVERIFIED", "VERIFIED", "HASH_CHECKS",
    "DOWNLOAD_RETRIES", "DOWNLOAD_TIMEOUT_S", "STORE_MANIFEST_NAME", "MIRROR_ENV", "MODELS_ENV", "STALE_STAGING_S",
    "REGISTRY", "Attempt", "ModelFile", "ModelSpec", "ModelState", "Pin", "PinMap", "Source", "SourceMap",
    "cards_dir", "check_layout", "clear_hash_memo", "default_models", "download", "ensure_models", "install_from",
    "model_card", "model_dir", "model_file", "read_store_manifest", "register_local", "register_model",
    "resolve_mirror", "resolve_models_dir", "unregister_model", "verify",
]
