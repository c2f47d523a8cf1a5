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

import os
import secrets
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Callable

from .errors import OutputError

__all__ = ["atomic_output", "check_output_path", "AtomicOutput"]

_TMP_MARK = ".partial"


def check_output_path(path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Check, before any heavy work, that ``path`` can be written; return it as an absolute Path.

    Performs exactly the up-front checks of :func:`atomic_output`, so callers (CLI, pipeline) can
    fail fast - before loading models or rendering frames.

    Args:
        path: the output file (any name; it is never passed through a shell).
        overwrite: allow replacing an existing file.

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
        raise OutputError(f"output {str(target)!r} already exists; pass --overwrite (overwrite=True) to replace it")
    parent = target.parent
    if not parent.exists():
        raise OutputError(f"output folder {str(parent)!r} does not exist (for {str(target)!r})")
    if not parent.is_dir():
        raise OutputError(f"output folder {str(parent)!r} is not a directory (for {str(target)!r})")
    try:
        probe = _create_hidden_sibling(target, ".probe")
    except OSError as err:
        raise OutputError(f"output folder {str(parent)!r} is not writable: {err.strerror or err}") from err
    probe.unlink(missing_ok=True)
    return target


def _create_hidden_sibling(target: Path, mark: str) -> Path:
    """Create (O_EXCL, mode 0666 & ~umask) and return an empty hidden file beside ``target``.

    Name: ``.<target stem>.<16 hex>.<mark><target suffix>``, e.g. ``.out.3f9c...partial.mp4``; the
    stem is shortened so the name stays under the usual 255-byte limit.
    """
    stem, suffix = target.stem, target.suffix
    budget = 200 - len(suffix.encode()) - len(mark.encode())
    while len(stem.encode()) > budget:
        stem = stem[:-1]
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        candidate = target.with_name(f".{stem}.{secrets.token_hex(8)}{mark}{suffix}")
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
        self.target = check_output_path(path, overwrite)
        self.overwrite = overwrite
        self.tmp_path: Path | None = None

    def __enter__(self) -> Path:
        if self.tmp_path is not None:
            raise RuntimeError("AtomicOutput is not re-entrant")
        check_output_path(self.target, self.overwrite)  # the world may have changed since __init__
        try:
            self.tmp_path = _create_hidden_sibling(self.target, _TMP_MARK)
        except OSError as err:
            raise OutputError(f"cannot create a temporary file beside {str(self.target)!r}: {err}") from err
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
                                  "pass --overwrite (overwrite=True) to replace it")
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

    The target is checked immediately (at call time, before any work) and again on entering; the
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
