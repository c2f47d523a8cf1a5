"""Atomic output files: write beside the target under a hidden name, rename into place on success.

Every file talkhead writes (the MP4, the keypoints ``.npz``) goes through :func:`atomic_output`, so
an error or Ctrl-C at any point leaves either the previous file (with ``overwrite``) or nothing at
all - never a truncated video. The pattern is the one huggingface_hub uses for downloads
(``.incomplete`` then rename), with :func:`os.replace` as the atomic step (POSIX ``rename(2)``; on
Windows ``MoveFileEx`` with replace). The temporary file lives in the *same directory* as the target
(a rename across file systems is not atomic) and keeps the target's suffix, so tools that pick a
format from the extension (ffmpeg, numpy) behave as if they wrote the target itself.

Paths are only ever handed to the OS and to subprocesses as argument vectors, never through a shell,
so names with spaces, quotes, unicode, a leading dash or ``$(...)`` are ordinary names here.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import signal
import socket
import threading
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Callable, Sequence

from .errors import ConfigError, InputError, OutputError

__all__ = ["atomic_output", "check_output_path", "check_outputs", "check_input_file", "check_not_input",
           "sweep_stale_partials", "printable", "unexpected_reason", "AtomicOutput"]

_TMP_MARK = ".partial"
_PROBE_MARK = ".probe"

_HOST_TAG = hashlib.sha1(socket.gethostname().encode("utf-8", "surrogateescape")).hexdigest()[:6]
"""6 hex digits of sha1(hostname) in every hidden name: a sweep only judges pids of this host."""

_HIDDEN_RE = re.compile(rb"^\..*\.(?P<pid>[0-9]+)-(?P<host>[0-9a-f]{6})-[0-9a-f]{16}(?:\.partial|\.probe)[^/]*$")
"""Hidden temporary names written by :func:`_create_hidden_sibling` (as bytes: any file name matches)."""


def printable(text: object) -> str:
    """``str(text)`` safe to print on a UTF-8 terminal: undecodable bytes of a file name (held by
    Python as lone surrogates, PEP 383) are shown as ``\\xNN`` escapes instead of raising."""
    s = str(text)
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return s.encode("utf-8", "surrogateescape" if _only_escapes(s) else "backslashreplace") \
            .decode("utf-8", "backslashreplace")


def _only_escapes(s: str) -> bool:
    try:
        s.encode("utf-8", "surrogateescape")
        return True
    except UnicodeEncodeError:
        return False


def unexpected_reason(exc: BaseException) -> str:
    """One printable line for an exception that is not a :class:`~talkhead.errors.TalkheadError` (a
    bug, or a case not handled yet): its type and first message line (at most 300 characters), and a
    pointer to ``--debug``."""
    first = (str(exc).strip().splitlines() or [""])[0][:300]
    what = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return printable(f"unexpected error ({what}); rerun with --debug for the traceback")


def _same_file(a: Path, b: Path) -> bool:
    if os.path.abspath(a) == os.path.abspath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_not_input(output: str | os.PathLike, *inputs: str | os.PathLike | None) -> None:
    """Refuse an output that is one of the inputs (same path, or the same file through a link).

    ``--overwrite`` does not lift this: replacing the user's recording or photo with the MP4 is never
    what was meant.

    Raises:
        OutputError: ``output`` names the same file as one of ``inputs`` (``None`` entries are skipped).
    """
    out = Path(os.path.abspath(Path(output).expanduser()))
    for inp in inputs:
        if inp is not None and _same_file(out, Path(os.path.abspath(Path(inp).expanduser()))):
            raise OutputError(f"output {printable(out)!r} is the input file {printable(inp)!r}; "
                              "choose another output path (--overwrite never replaces an input)")


def sweep_stale_partials(folder: str | os.PathLike) -> list[Path]:
    """Delete hidden temporary files (``.partial``/``.probe``) in ``folder`` left by dead processes.

    Only names made by :func:`_create_hidden_sibling` on this host are considered; the owner pid
    encoded in the name is checked with ``os.kill(pid, 0)`` and the file is removed only when no
    such process exists (``ProcessLookupError``). Files of live processes (including this one), of
    other users' processes (``PermissionError``) and of other hosts are left alone. Never raises
    for an unreadable folder or a file that vanished meanwhile.

    Returns:
        The paths removed.
    """
    removed: list[Path] = []
    try:
        entries = os.listdir(os.fsencode(os.fspath(folder)))
    except OSError:
        return removed
    alive: dict[int, bool] = {}
    for name in entries:
        m = _HIDDEN_RE.match(name)
        if m is None or m.group("host").decode() != _HOST_TAG:
            continue
        pid = int(m.group("pid"))
        if pid not in alive:
            alive[pid] = _pid_alive(pid)
        if alive[pid]:
            continue
        path = Path(os.fsdecode(os.path.join(os.fsencode(os.fspath(folder)), name)))
        try:
            path.unlink()
            removed.append(path)
        except OSError:
            pass
    return removed


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if pid <= 0:
        return True  # not a real owner: keep
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def check_input_file(path: str | os.PathLike, what: str) -> Path:
    """``path`` as a Path if it names an existing regular file (the one check of every input file).

    Args:
        path: the input.
        what: its role in messages (``"photo"``, ``"speech"``, ``"driving video"``).

    Raises:
        InputError: ``"<what> not found: <path>"`` or ``"<what> is not a file: <path>"``.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{what} not found: {printable(path)}")
    if not path.is_file():
        raise InputError(f"{what} is not a file: {printable(path)}")
    return path


def check_outputs(outputs: Sequence[str | os.PathLike | None], inputs: Sequence[str | os.PathLike | None], *,
                  overwrite: bool = False) -> list[Path | None]:
    """The one up-front check of a run's outputs: none is an input (:func:`check_not_input`, even with
    ``overwrite``), no two are the same file, and each can be written (:func:`check_output_path`).

    Args:
        outputs: the files the run will write (``None`` entries: not asked for, kept as ``None``).
        inputs: every file the run reads (``None`` entries skipped).
        overwrite: allow replacing existing outputs.

    Returns:
        ``outputs`` made absolute (``None`` kept).

    Raises:
        OutputError: see :func:`check_not_input` and :func:`check_output_path`; two outputs naming the
            same file.
    """
    checked: list[Path | None] = []
    for out in outputs:
        if out is None:
            checked.append(None)
            continue
        check_not_input(out, *inputs)
        for earlier in checked:
            if earlier is not None and _same_file(Path(os.path.abspath(Path(out).expanduser())), earlier):
                raise OutputError(f"two outputs name the same file {printable(earlier)!r}; choose different paths")
        checked.append(check_output_path(out, overwrite))
    return checked


def check_output_path(path: str | os.PathLike, overwrite: bool = False, *, probe: bool = True) -> Path:
    """Check, before any heavy work, that ``path`` can be written; return it as an absolute Path.

    Performs the up-front checks of :func:`atomic_output`, so callers (CLI, pipeline) can fail fast -
    before loading models or rendering frames.

    Args:
        path: the output file (any name; it is never passed through a shell).
        overwrite: allow replacing an existing file.
        probe: also prove the folder writable by creating and removing a hidden probe file; without
            it only the path and its folder are looked at (:class:`AtomicOutput` proves writability by
            creating its temporary file instead).

    Returns:
        ``path`` made absolute (``~`` expanded; symlinks in the parent folder are not resolved).

    Raises:
        OutputError: ``path`` exists and ``overwrite`` is false (the message mentions
            ``--overwrite``); ``path`` is an existing directory; its parent folder does not exist,
            is not a directory, or is not writable (tested by creating and removing a hidden probe
            file, which also catches read-only mounts and ACLs). The message quotes the path.
    """
    target = Path(os.path.abspath(Path(path).expanduser()))
    if target.name in ("", ".", ".."):
        raise OutputError(f"output path {str(path)!r} does not name a file")
    if target.is_dir():
        raise OutputError(f"output path {str(target)!r} is a directory, not a file")
    if (target.exists() or target.is_symlink()) and not overwrite:
        raise OutputError(f"output {str(target)!r} already exists; pass --overwrite to replace it")
    parent = target.parent
    if not parent.exists():
        raise OutputError(f"output folder {str(parent)!r} does not exist (for {str(target)!r})")
    if not parent.is_dir():
        raise OutputError(f"output folder {str(parent)!r} is not a directory (for {str(target)!r})")
    if probe:
        try:
            probe_file = _create_hidden_sibling(target, _PROBE_MARK)
        except OSError as err:
            raise OutputError(f"output folder {str(parent)!r} is not writable: {err.strerror or err}") from err
        probe_file.unlink(missing_ok=True)
    return target


_PARSED_CONFIGS: dict[tuple, object] = {}
"""Parsed model configs by file identity (path, device, inode, size, mtime): each config file is parsed
once per process while it is unchanged, however many stages ask (frame size, loading, layout checks)."""


def read_yaml_config(path: str | os.PathLike, what: str):
    """The parsed YAML of a config file (``yaml.safe_load``), for the model configs (FOMM, SMAC).

    The file is parsed once while it is unchanged (same path, inode, size and modification time): later
    calls get a fresh deep copy of that result, so callers may modify what they get.

    Args:
        path: the file.
        what: its name in messages (``"FOMM config"``).

    Raises:
        ConfigError: the file cannot be read, or is not valid YAML (both name the file).
    """
    import copy

    import yaml

    path = Path(path)
    try:
        st = path.stat()
        key = (os.path.abspath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if key in _PARSED_CONFIGS:
            return copy.deepcopy(_PARSED_CONFIGS[key])
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    try:
        parsed = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path} is not valid YAML: {exc}") from None
    if len(_PARSED_CONFIGS) >= 64:
        _PARSED_CONFIGS.clear()
    _PARSED_CONFIGS[key] = parsed
    return copy.deepcopy(parsed)


_DEFERRED_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))


@contextlib.contextmanager
def signals_deferred():
    """Hold Ctrl-C, SIGTERM and SIGHUP back (POSIX, main thread) while the block runs; a signal that
    arrives meanwhile is delivered when it ends. Used where a file or a child process is created and
    must be recorded before an interrupt can unwind (else the cleanup would not know it exists)."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _DEFERRED_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _create_hidden_sibling(target: Path, mark: str) -> Path:
    """Create (O_EXCL, mode 0666 & ~umask) and return an empty hidden file beside ``target``.

    Name: ``.<target stem>.<pid>-<host tag>-<16 hex><mark><target suffix>``, e.g.
    ``.out.4242-a1b2c3-3f9c....partial.mp4``: the owner pid (and a tag of this host's name) lets
    :func:`sweep_stale_partials` remove the file once its owner is gone (SIGKILL, power loss). The
    stem is shortened so the name stays under the usual 255-byte limit; lengths are counted in
    file-system bytes (``os.fsencode``), so undecodable names (PEP 383 surrogates) work.
    """
    stem, suffix = target.stem, target.suffix
    tag = f"{os.getpid()}-{_HOST_TAG}"
    budget = 200 - len(os.fsencode(suffix)) - len(mark) - len(tag)
    while len(os.fsencode(stem)) > budget:
        stem = stem[:-1]
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        candidate = target.with_name(f".{stem}.{tag}-{secrets.token_hex(8)}{mark}{suffix}")
        try:
            fd = os.open(candidate, flags, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return candidate
    raise FileExistsError(f"could not create a unique temporary file beside {str(target)!r}")


class AtomicOutput:
    """Context manager behind :func:`atomic_output` (also usable with explicit enter/exit calls).

    ``__enter__`` checks the target (see :func:`check_output_path`), creates an empty hidden
    temporary file beside it and returns that temporary path. ``__exit__`` without an exception
    flushes the temporary file to disk and renames it onto the target; with any exception
    (``KeyboardInterrupt`` and ``SystemExit`` included) it deletes the temporary file and lets the
    exception propagate.

    Attributes:
        target: the absolute output path.
        tmp_path: the temporary path while entered, else ``None``.
    """

    def __init__(self, path: str | os.PathLike, *, overwrite: bool = False):
        self.target = check_output_path(path, overwrite, probe=False)
        self.overwrite = overwrite
        self.tmp_path: Path | None = None

    def __enter__(self) -> Path:
        if self.tmp_path is not None:
            raise RuntimeError("AtomicOutput is not re-entrant")
        # the world may have changed since __init__; creating the temporary file proves the folder writable
        check_output_path(self.target, self.overwrite, probe=False)
        sweep_stale_partials(self.target.parent)  # leftovers of runs killed by SIGKILL / power loss
        try:
            with signals_deferred():  # the name is recorded before an interrupt can unwind
                self.tmp_path = _create_hidden_sibling(self.target, _TMP_MARK)
        except OSError as err:
            raise OutputError(f"output folder {str(self.target.parent)!r} is not writable: "
                              f"{err.strerror or err}") from err
        return self.tmp_path

    def discard(self) -> None:
        """Delete the temporary file (if any); idempotent."""
        if self.tmp_path is not None:
            try:
                self.tmp_path.unlink(missing_ok=True)
            finally:
                self.tmp_path = None

    def commit(self) -> Path:
        """fsync the temporary file and rename it onto the target; return the target.

        Raises:
            OutputError: the temporary file vanished, the target appeared meanwhile (without
                ``overwrite``), or the rename failed. The temporary file is removed in every case.
        """
        tmp = self.tmp_path
        if tmp is None:
            raise RuntimeError("AtomicOutput.commit() outside the with-block")
        try:
            try:
                with open(tmp, "rb+") as fh:
                    os.fsync(fh.fileno())
            except FileNotFoundError as err:
                raise OutputError(f"temporary output {str(tmp)!r} disappeared before it could be renamed") from err
            if not self.overwrite and (self.target.exists() or self.target.is_symlink()):
                raise OutputError(f"output {str(self.target)!r} appeared while it was being written; "
                                  "pass --overwrite to replace it")
            try:
                os.replace(tmp, self.target)
            except OSError as err:
                raise OutputError(f"cannot move the finished output onto {str(self.target)!r}: {err}") from err
        except BaseException:
            self.discard()
            raise
        self.tmp_path = None
        return self.target

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        if exc_type is None:
            self.commit()
        else:
            self.discard()
        return False


def atomic_output(path: str | os.PathLike, *, overwrite: bool = False) -> AtomicOutput:
    """Write ``path`` atomically: ``with atomic_output(p) as tmp:`` write to ``tmp``, then it moves.

    The target is checked immediately (at call time, before any work) and again on entering (creating the
    temporary file proves the folder writable); the
    yielded temporary path sits beside the target, is hidden (leading dot), already exists (empty)
    and ends with the target's suffix (``.mp4``, ``.npz``) so writers choose the same format. Tools
    that refuse to overwrite an existing file need their "overwrite" flag (ffmpeg ``-y``).

    Example::

        with atomic_output("clip.mp4", overwrite=False) as tmp:
            write_video(tmp)          # any exception here: tmp is deleted, clip.mp4 untouched
        # here clip.mp4 is complete

    Args:
        path: the final output file.
        overwrite: allow replacing an existing ``path``.

    Returns:
        An :class:`AtomicOutput` context manager whose ``__enter__`` yields the temporary ``Path``.

    Raises:
        OutputError: see :func:`check_output_path` (raised by this call, before the block runs);
            also when the final rename fails.
    """
    return AtomicOutput(path, overwrite=overwrite)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object]) -> Path:
    """Atomically create or replace ``path`` with what ``write(fileobj)`` writes (binary mode).

    Parent folders are created. The bytes go to a hidden temporary file beside ``path`` (see
    :class:`AtomicOutput`), which is fsync-ed and renamed onto ``path``; on any error it is removed
    and ``path`` keeps its old content. Used for checkpoints, manifests, clips and keypoint files.

    Raises:
        OutputError: the folder cannot be created or written, or the rename fails.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create the folder {str(path.parent)!r}: {err.strerror or err}") from err
    with atomic_output(path, overwrite=True) as tmp, open(tmp, "wb") as fh:
        write(fh)
    return path
