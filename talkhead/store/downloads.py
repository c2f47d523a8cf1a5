"""Downloads: :func:`download` fetches a model's files from its sources in order (then the mirror)
until one gives a file that matches a pin and passes the checks, and records it; :func:`ensure_models`
is what ``animate`` and ``reenact`` call before loading: verify, record what was placed by hand,
download what is missing.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional, Sequence

from ..errors import CheckpointError, DownloadError, TalkheadError
from ..progress import Progress
from .checks import check_group
from .install import Accepted, accept, commit, register_local, stage_packaged, staging_dir
from .paths import MIRROR_ENV, resolve_mirror, resolve_models_dir
from .registry import (ModelFile, ModelSpec, Pin, PinMap, Source, SourceMap, default_models, file_of, pins_of,
                       sources_of, specs_for)
from .transfer import DOWNLOAD_RETRIES, DOWNLOAD_TIMEOUT_S, Attempt, FileFailed, Transfers, short_reason, size_cap
from .verification import CORRUPT, MISSING, PACKAGED, UNVERIFIED, VERIFIED, ModelState, verify

_detail = logging.getLogger(__name__).info
"""Each source tried and why it was refused: logger ``talkhead.store.downloads`` at INFO (the CLI shows
these with ``-v``/``--debug``); the ``log`` callbacks get only what a user needs by default."""


def _fetch_checked(spec: ModelSpec, f: ModelFile, srcs: Sequence[Source], pins: Sequence[Pin],
                   group: Mapping[str, Path], transfers: Transfers, say: Callable[[str], None]) -> Accepted:
    """Try ``srcs`` in order until one gives a file that matches a pin (when ``pins``) and passes
    :func:`~talkhead.store.check_layout` with ``group``.

    Raises:
        FileFailed: every source failed (attempts with reasons; the first exception as cause).
    """
    attempts: list[Attempt] = []
    cause: Optional[BaseException] = None
    out = transfers.staging / f.basename

    def reject(src: Source, reason: str) -> None:
        attempts.append(Attempt(src, reason))
        _detail(f"{f.relpath}: {src.host}: {reason}")
        out.unlink(missing_ok=True)

    for src in srcs:
        out.unlink(missing_ok=True)
        _detail(f"{f.relpath}: trying {src.host} ({src.url})")
        try:
            came_from = transfers.fetch(src, out, size_cap(f.role, pins))
        except Exception as exc:  # network, HTTP, Drive refusal: try the next source
            reject(src, short_reason(exc, transfers.timeout))
            cause = cause or exc
            continue
        item = accept(out, pins, src.url if came_from == src.url else f"{came_from} (redirected from {src.url})")
        if pins and item.pin is None:
            reject(src, f"sha256 {item.digests['sha256'][:12]}... is not a known-good copy "
                        f"({', '.join(p.label for p in pins)})")
            continue
        try:
            check_group(spec, {**group, f.relpath: out})
        except TalkheadError as exc:
            reject(src, f"fails the checks ({(str(exc).splitlines() or [''])[0][:160]})")
            cause = cause or exc
            continue
        say(f"{f.relpath}: verified the copy from {src.host}" + (f" ({item.pin.label})" if item.pin else ""))
        return item
    raise FileFailed(attempts, cause)


def _by_hand_message(name: str, files: Sequence[ModelFile]) -> str:
    """What to do for a model whose missing files have no download source (SMAC: a browser share)."""
    where = " and ".join(dict.fromkeys(f.by_hand for f in files if f.by_hand)) or f"models/{name}.md"
    return (f"{name} has no download source: download {' and '.join(f.basename for f in files)} by hand from "
            f"{where} (a browser link; see models/{name}.md), then run `talkhead download {name} --from-dir DIR`")


def _failure_message(failures: Mapping[str, Optional[list[Attempt]]], skipped: Mapping[str, str],
                     by_hand: Mapping[str, Sequence[ModelFile]] = {}) -> tuple[str, str]:
    """``(message, brief)``: both name the files and the fix first; ``message`` then lists each source
    tried with its reason, ``brief`` (what the CLI prints without ``-v``) says how to see them."""
    manual = "; ".join(_by_hand_message(name, files) for name, files in by_hand.items())
    if not failures and not skipped:
        return manual, manual
    reasons = [a.reason for v in failures.values() for a in v or []]
    offline = " (no network?)" if reasons and all("cannot resolve" in r for r in reasons) else ""
    head = ("could not download " + ", ".join([*failures, *skipped]) + offline + ": get the files by hand and run "
            "`talkhead download --from-dir DIR`, or serve a copy of a models directory and use "
            f"`talkhead download --mirror URL` (or ${MIRROR_ENV})" + (f". {manual}" if manual else ""))
    parts = []
    for rel, attempts in failures.items():
        tried = "; ".join(f"{a.source.host}: {a.reason}" for a in attempts) if attempts else "no source configured"
        parts.append(f"{rel} ({tried})")
    parts.extend(f"{rel} (not tried: {why})" for rel, why in skipped.items())
    return (f"{head}. Tried: " + ", ".join(parts),
            f"{head}. `talkhead -v download` shows each source (URL) and why it failed")


def download(names: str | Iterable[str] | None = None, models_dir: str | os.PathLike | None = None, *,
             mirror: Optional[str] = None, sources: Optional[SourceMap] = None, pins: Optional[PinMap] = None,
             progress: Optional[Progress] = None, log: Optional[Callable[[str], None]] = None,
             force: bool = False, timeout: float = DOWNLOAD_TIMEOUT_S,
             retries: int = DOWNLOAD_RETRIES) -> dict[str, ModelState]:
    """Fetch the checkpoints of ``names`` (default: all), check and record them.

    Per model: files already ``verified`` are kept (unless ``force``); ``unverified`` ones are
    first checked and recorded instead of downloaded (:func:`~talkhead.store.register_local`); the rest are
    downloaded, config first. For each file the sources are tried in order (the registry's, then
    ``<mirror>/<relpath>``) until one gives a file that matches a pin (when the file has pins)
    and passes :func:`~talkhead.store.check_layout`; rejected copies are deleted at once. Only when every needed
    file of a model is accepted are they moved into place and recorded; the packaged FOMM YAML is
    copied in along. Every model is attempted. A failure leaves no partial file, no staging folder
    and no empty model folder, also on Ctrl-C.

    Args:
        names: ``"fomm"``, ``"mssync"``, ``"smac"``, a list of them, or ``None`` for the default
            models (:func:`~talkhead.store.registry.default_models`, what ``animate`` needs). SMAC's
            weights have no download source (a browser share): they come from ``mirror`` or are
            installed with :func:`~talkhead.store.install_from`; otherwise it fails with the by-hand instructions.
        models_dir: destination, resolved with :func:`~talkhead.store.resolve_models_dir` (created if needed).
        mirror: base URL tried last for every file (default ``$TALKHEAD_MIRROR``).
        sources: ``{relpath: [Source, ...]}`` replacing the registry's sources of those files.
        pins: ``{relpath: [Pin, ...]}`` replacing the registry's pins of those files.
        progress: ``progress("download <file>", bytes_done, bytes_total)``.
        log: receives one line per accepted file (each source tried and why it was refused go to
            the ``logging`` logger ``talkhead.store.downloads``, INFO).
        force: download even files that are ``verified``.
        timeout: seconds to wait for a server (connect and between bytes).
        retries: reconnections per transfer after a broken connection (resumed with HTTP Range).

    Returns:
        ``{relpath: ModelState}`` of the requested models afterwards.

    Raises:
        InputError: an unknown model name or a bad mirror URL.
        DownloadError: one line naming each file that could not be obtained and the by-hand fix,
            then each source tried with a short reason; ``brief`` is the same without the sources
            (what the CLI prints by default), ``attempts`` holds the details and the first
            underlying exception is chained (``--debug`` shows it).
    """
    root = resolve_models_dir(models_dir)
    specs = specs_for(names)
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
        manual = [f for f in need if f.by_hand and not sources_of(f, sources, mirror)]
        if manual:  # nothing to try: say where a person gets the files, touch nothing
            by_hand[spec.name] = manual
            continue
        with staging_dir(root) as staging:
            transfers = Transfers(staging, timeout, retries, progress)
            accepted: dict[str, Accepted] = {}
            group = {f.relpath: root / f.relpath for f in spec.files
                     if f not in need and f not in packaged and states[f.relpath].state == VERIFIED}
            for f in packaged:
                accepted[f.relpath] = accept(stage_packaged(f, staging), (), "packaged with talkhead")
                group[f.relpath] = accepted[f.relpath].path
            failed = False
            for f in need:
                if failed:
                    skipped[f.relpath] = f"{spec.name} already failed"
                    continue
                srcs = sources_of(f, sources, mirror)
                try:
                    item = _fetch_checked(spec, f, srcs, pins_of(f, pins), group, transfers, say)
                except FileFailed as fail:
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
                    check_group(spec, group)
                except TalkheadError as exc:
                    fitted = ", ".join(str(root / f.relpath) for f in spec.checkpoints if f.relpath in group)
                    raise DownloadError(f"the packaged {', '.join(f.relpath for f in packaged)} does not fit "
                                        f"{fitted}: {exc}") from exc
            commit(root, accepted, how="download" if need else "packaged")
    if failures or skipped or by_hand:
        message, brief = _failure_message(failures, skipped, by_hand)
        err = DownloadError(message)
        err.attempts, err.brief = failures, brief
        raise err from cause
    return verify(root, [s.name for s in specs], hash_check="stat", check_layout=False, pins=pins)


def ensure_models(models_dir: str | os.PathLike | None = None, *, names: str | Iterable[str] | None = None,
                  offline: bool = False, progress: Optional[Progress] = None, log: Optional[Callable[[str], None]] = None,
                  mirror: Optional[str] = None, sources: Optional[SourceMap] = None, pins: Optional[PinMap] = None,
                  timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Make sure every file of the models ``names`` is present and verified; what ``animate`` and
    ``reenact`` call before loading.

    Steps: recorded files -> size, pin and sha256 checked (sha256 once per process and file, see
    the module docstring); corrupt files -> error (never replaced silently); files placed by hand
    (``unverified``) -> checked and recorded; missing checkpoints -> downloaded (:func:`download`),
    or with ``offline`` an error saying what is missing and how to get it; the FOMM config ->
    copied from the package. Nothing here loads a recorded checkpoint: the pipeline loads each
    one once.

    Args:
        models_dir: resolved with :func:`~talkhead.store.resolve_models_dir`.
        names: the models to check (``None``: :func:`~talkhead.store.registry.default_models`, what ``animate`` needs); a
            renderer's are in its registry entry (``talkhead.renderers``, ``store_names``).
        offline: never touch the network.
        progress: download progress, see :func:`download`.
        log: receives one-line status messages (``None``: silent).
        mirror, sources, pins, timeout: passed to :func:`download`.

    Returns:
        The models directory (resolved), where every file of ``names`` is now verified: its files
        are at :func:`~talkhead.store.model_file` / :func:`~talkhead.store.model_dir` of it.

    Raises:
        CheckpointError: a file is corrupt or fails the checks (named, with the fix).
        DownloadError: files are missing and ``offline`` is set, or the download failed.
    """
    root = resolve_models_dir(models_dir)
    say = log or (lambda msg: None)
    wanted = [s.name for s in specs_for(default_models() if names is None else names)]
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
            f = file_of(rel)
            return f"{rel} from {f.sources[0].url}" if f.sources else f"{rel} from {f.by_hand}" if f.by_hand else rel

        where = "; ".join(map(origin, missing))
        models = " ".join(sorted({s.model for s in states.values() if s.state == MISSING}))
        downloadable = all(file_of(rel).sources for rel in missing)
        raise DownloadError(f"model files missing in {root} and downloads are off (--offline): {where}; get them "
                            f"by hand and run `talkhead download {models} --from-dir FOLDER` (or put them at those "
                            "paths in the models directory)"
                            + (f", or run `talkhead download {models}` with network" if downloadable else ""))
    need = sorted({s.model for s in states.values() if s.state in (MISSING, PACKAGED)})
    if need:
        if missing:
            _detail(f"downloading {', '.join(missing)} to {root}")
        download(need, root, mirror=None if offline else mirror, sources=sources, pins=pins, progress=progress,
                 log=log, timeout=timeout)
    return root
