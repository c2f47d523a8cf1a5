"""Transfers: every download goes through gdown (Google Drive folders and files, plain HTTP(S)), into
a staging folder, with a network timeout, resumed reconnections (HTTP ``Range``), byte progress, and a
few words on why a transfer failed.
"""
from __future__ import annotations

import contextlib
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence
from urllib.parse import urlparse

from ..progress import Progress
from .registry import Pin, Source

DOWNLOAD_TIMEOUT_S = 20.0
"""Network timeout, seconds: connecting, and waiting between received bytes (DNS failures end at once)."""

DOWNLOAD_RETRIES = 3
"""Reconnections per transfer after a broken connection; each resumes with an HTTP ``Range``
request where the server honours it (gdown's ``retries``)."""


CONFIG_MAX_BYTES = 1 << 20
"""Most bytes accepted for a config file (MS-Sync ``args``: 1.3 KB; the YAMLs: a few KB)."""

CHECKPOINT_MAX_BYTES = 4 << 30
"""Most bytes accepted for a checkpoint whose size no pin states."""

UNKNOWN_SIZE_MARGIN = 1.25
"""A checkpoint with some pins of unknown size may be this many times the largest known one."""


def size_cap(role: str, pins: Sequence[Pin]) -> int:
    """Most bytes a transfer of a file may bring, counted after decoding (a gzip body is counted
    as the bytes it expands to): a config :data:`CONFIG_MAX_BYTES`; a checkpoint whose pins all
    state a size, the largest of them; with some unknown, :data:`UNKNOWN_SIZE_MARGIN` times the
    largest known; with none known, :data:`CHECKPOINT_MAX_BYTES`."""
    if role == "config":
        return CONFIG_MAX_BYTES
    known = [p.size for p in pins if p.size]
    if known and len(known) == len(pins):
        return max(known)
    return int(max(known) * UNKNOWN_SIZE_MARGIN) if known else CHECKPOINT_MAX_BYTES


class TooLarge(Exception):
    """A transfer brought more bytes than the file can have (an endless or inflated body)."""

    def __init__(self, cap: int):
        super().__init__(f"sent more than {cap} bytes, more than the file can be: stopped")
        self.cap = cap


@dataclass(frozen=True)
class Attempt:
    """One source tried for one file: ``reason`` is empty when it gave the accepted file."""

    source: Source
    reason: str


class Unresolved(OSError):
    def __init__(self, host: str):
        super().__init__(f"cannot resolve {host}")
        self.host = host


class FileFailed(Exception):
    def __init__(self, attempts: list[Attempt], cause: Optional[BaseException]):
        super().__init__("every source failed")
        self.attempts, self.cause = attempts, cause


def short_reason(exc: BaseException, timeout: float) -> str:
    """A few words on why a transfer failed, from the exception and its chain (no raw urllib3 text)."""
    import requests

    chain, e = [], exc
    while e is not None and len(chain) < 8:
        chain.append(e)
        e = e.__cause__ or e.__context__
    text = " ".join(str(x) for x in chain)
    host = re.search(r"host='([^']+)'", text)
    host = host.group(1) if host else None
    if isinstance(exc, Unresolved):
        return f"cannot resolve {exc.host}"
    if isinstance(exc, TooLarge):
        return str(exc)
    if "Read timed out" in text:
        return f"stalled: no data for {timeout:g} s" + (f" from {host}" if host else "")
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


class Transfers:
    """gdown transfers into a staging folder, with Drive folder listings cached per call."""

    def __init__(self, staging: Path, timeout: float, retries: int, progress: Optional[Progress]):
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
            raise Unresolved(host) from self.unresolved[host]

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

    def fetch(self, src: Source, out: Path, cap: Optional[int] = None) -> str:
        """Download ``src`` to ``out`` (gdown writes ``out<random>.part`` and renames it when done),
        stopping as soon as more than ``cap`` bytes arrived (decoded bytes, see :func:`size_cap`;
        the announced total is checked at the first block).

        Returns:
            The URL the bytes came from: the last URL answered after HTTP redirects (``src.url``
            when gdown's session cannot be observed).

        Raises:
            TooLarge: more than ``cap`` bytes (announced or received); the file is deleted.
            Exception: whatever the transfer raises (network, HTTP status, Drive refusal,
            ``FileNotFoundError`` when a Drive folder lacks the file). KeyboardInterrupt passes.
        """
        import gdown

        self._resolve_host(src)
        stage, report = f"download {out.name}", self.progress

        def cb(done: int, total: Optional[int]) -> None:
            if cap is not None and (done > cap or (total or 0) > cap):
                raise TooLarge(cap)
            if report is not None:
                report(stage, int(done), int(total or 0))

        common = dict(output=str(out), quiet=True, progress=cb, timeout=self.timeout, retries=self.retries)
        answered: list[str] = []
        with _observe_responses(answered):
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
        if cap is not None and out.stat().st_size > cap:  # before anything reads it
            out.unlink(missing_ok=True)
            raise TooLarge(cap)
        return answered[-1] if answered else src.url


@contextlib.contextmanager
def _observe_responses(answered: list[str]):
    """Within the block, append the URL of every HTTP response gdown's sessions receive (redirect hops
    included, the final answer last) to ``answered``; a no-op if gdown's session factory moved."""
    import importlib

    module = importlib.import_module("gdown.download")
    make = getattr(module, "_get_session", None)
    if make is None:
        yield
        return

    def observed(*args, **kwargs):
        made = make(*args, **kwargs)
        sess = made[0] if isinstance(made, tuple) else made
        with contextlib.suppress(AttributeError, KeyError):
            sess.hooks["response"].append(lambda r, *a, **k: answered.append(r.url))
        return made

    module._get_session = observed
    try:
        yield
    finally:
        module._get_session = make

