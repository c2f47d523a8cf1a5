"""What every talkhead CLI module shares: the two consoles, the error mapping and the progress bars.

Expected errors (:class:`talkhead.errors.TalkheadError`) become one red line on stderr and their
``exit_code`` (2); any other exception one line naming it as unexpected (exit 1); the traceback is
shown only with ``--debug``. Ctrl-C exits with 130, SIGTERM with 143 and SIGHUP with 129, all after the
same cleanup (outputs discarded, ffmpeg reaped).
:mod:`talkhead.cli` (animate, batch, download, doctor) and :mod:`talkhead.cli_train` (preprocess,
merge-shards, train, evaluate) both use these, so there is one console pair and one error rule.
"""
from __future__ import annotations

import contextlib
import inspect
import logging
import signal
import sys
import threading
from typing import Mapping

import typer
import typer.core
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .errors import TalkheadError
from .io import printable, unexpected_reason

err_console = Console(stderr=True, soft_wrap=not sys.stderr.isatty())
"""Progress bars, status lines and errors (stderr); lines are wrapped only on a terminal (a log file
or a pipe gets each message as one line)."""
out_console = Console()
"""Results: tables, JSON (stdout)."""


class State:
    """Process-wide CLI flags."""

    debug = False
    debug_anywhere = False  # set by talkhead.cli.main() when --debug stood after the subcommand
    verbose = False  # -v/--verbose (or --debug): also the detail lines (each download source tried)
    verbose_anywhere = False  # set by talkhead.cli.main() when -v/--verbose stood after the subcommand


# ----------------------------------------------------------------------------------------------- help
def help_text(doc: str | None) -> str:
    """A command's docstring as its ``--help`` text (Rich markup mode).

    Each prose paragraph becomes one line (the help console wraps it to the terminal, instead of
    keeping the source's line breaks); a paragraph whose lines are all indented (example commands)
    keeps its lines; every ``[`` that Rich would read as markup is escaped (``pip install
    'talkhead[ui]'`` shows as written); a paragraph ``Examples`` becomes a bold heading.
    """
    out = []
    for para in inspect.cleandoc(doc or "").split("\n\n"):
        lines = para.split("\n")
        if para.strip() == "Examples":
            out.append("[bold]Examples[/]")
        elif all(line.startswith(" ") for line in lines):
            out.append("\n".join(escape(line) for line in lines))
        else:
            out.append(escape(" ".join(line.strip() for line in lines)))
    return "\n\n".join(out)


def finish_help(app: typer.Typer) -> None:
    """Give every command of ``app`` (and of its sub-groups) :func:`help_text` of its docstring as help
    (commands with an explicit ``help=`` keep it). Idempotent; call it once all commands are registered."""
    for info in app.registered_commands:
        if info.help is None and info.callback is not None:
            info.help = help_text(info.callback.__doc__)
    for group in app.registered_groups:
        if group.typer_instance is not None:
            finish_help(group.typer_instance)


def _no_type_for_flags(display_type_rich):
    def display(self, ctx):
        return None if getattr(self, "is_flag", False) else display_type_rich(self, ctx)

    display.__doc__ = "The type column of --help: none for a flag (it takes no value, so no ``<bool>``)."
    return display


def _usage_name(self) -> str:
    """An argument in the usage line as the help text names it: ``PHOTO``, ``[PHOTOS]``, ``VIDEOS...``
    (typer's own style would be ``{PHOTO}``)."""
    name = self.display_name_raw if self.required else f"[{self.display_name_raw}]"
    return name + ("..." if self.nargs != 1 else "")


# The two help-rendering choices of typer (>= 0.16) that read wrongly here; both are display only.
if hasattr(typer.core.TyperOption, "display_type_rich"):
    typer.core.TyperOption.display_type_rich = _no_type_for_flags(typer.core.TyperOption.display_type_rich)
if hasattr(typer.core.TyperArgument, "_usage_display_name"):
    typer.core.TyperArgument._usage_display_name = _usage_name


class _DetailLines(logging.Handler):
    """``talkhead.*`` log records (INFO and up) as plain lines on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        err_console.print(printable(record.getMessage()), highlight=False, markup=False)


def show_details(on: bool = True) -> None:
    """Show (``on``) or stop showing the detail lines the library logs at INFO (each download source
    tried, where models load from) on stderr: what ``-v``/``--verbose`` and ``--debug`` turn on."""
    logger = logging.getLogger("talkhead")
    for handler in [h for h in logger.handlers if isinstance(h, _DetailLines)]:
        logger.removeHandler(handler)
    if on:
        logger.addHandler(_DetailLines())
    logger.setLevel(logging.INFO if on else logging.NOTSET)


def fail(exc: BaseException) -> None:
    """Print ``exc`` as one red ``error:`` line on stderr (its traceback too under ``--debug``) and exit.

    An exception with a ``brief`` attribute (:class:`~talkhead.errors.DownloadError`: the files and
    the fix, without each source tried) is shown by it unless ``-v``/``--debug``.

    Raises:
        typer.Exit: always, with ``exc.exit_code`` (a :class:`~talkhead.errors.TalkheadError`'s, 2 if none).
    """
    from rich.markup import escape

    if State.debug:
        err_console.print_exception()
    brief = None if State.verbose else getattr(exc, "brief", None)  # e.g. a DownloadError without its sources
    msg = printable(brief or str(exc) or exc.__class__.__name__)
    err_console.print(f"[bold red]error:[/] {escape(msg)}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(getattr(exc, "exit_code", 2))


class Terminated(KeyboardInterrupt):
    """Raised in the main thread by SIGTERM / SIGHUP, so they unwind like Ctrl-C (every ``finally``,
    ``VideoWriter.abort`` and ``AtomicOutput.discard`` runs). ``signum`` is the signal's number."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


def _raise_terminated(signum, frame):  # signal handler
    for sig in _SIGNALS:  # a second signal during cleanup must not interrupt the cleanup
        signal.signal(sig, signal.SIG_IGN)
    raise Terminated(signum)


@contextlib.contextmanager
def _termination_as_interrupt():
    """While the block runs (main thread only), SIGTERM and SIGHUP raise :class:`Terminated`."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _raise_terminated) for sig in _SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# options several commands share (declared once; the Python API's options live in talkhead.options)
ModelsDir = typer.Option(None, "--models-dir", file_okay=False, help=escape(
    "Checkpoint folder [default: $TALKHEAD_MODELS, else the platform cache, ~/.cache/talkhead on Linux]."))
"""``--models-dir``: where the checkpoints live (:func:`talkhead.store.resolve_models_dir`)."""
Quiet = typer.Option(False, "--quiet", "-q", help="No progress bars.")
"""``--quiet``: no progress bars."""


@contextlib.contextmanager
def errors():
    """Map TalkheadError -> one line + exit 2; any other exception -> one line naming it as
    unexpected + exit 1 (traceback with --debug); Ctrl-C -> 130; SIGTERM -> 143; SIGHUP -> 129."""
    try:
        with _termination_as_interrupt():
            yield
    except TalkheadError as exc:
        fail(exc)
    except Terminated as exc:
        name = signal.Signals(exc.signum).name
        err_console.print(f"[yellow]terminated[/] by {name}: nothing partial was left behind")
        raise typer.Exit(128 + exc.signum)
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]: nothing partial was left behind")
        raise typer.Exit(130)
    except Exception as exc:  # a bug or an unhandled case: one line, not a traceback
        if isinstance(exc, (typer.Exit, typer.Abort)) or type(exc).__module__.split(".")[0] in ("click", "typer"):
            raise  # exits and usage errors of the CLI framework itself
        from rich.markup import escape

        if State.debug:
            err_console.print_exception()
        err_console.print(f"[bold red]error:[/] {escape(unexpected_reason(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


class _LazyProgress(Progress):
    """A Rich Progress that draws nothing until its first task (so an early one-line error stays one line)."""

    def __enter__(self) -> "_LazyProgress":
        return self

    def add_task(self, *args, **kwargs):
        if not self.live.is_started:
            self.start()
        return super().add_task(*args, **kwargs)

    def __exit__(self, *exc) -> None:
        if self.live.is_started:
            self.stop()


def progress_bars(quiet: bool) -> Progress:
    """Rich bars on stderr (stage, bar, done/total, unit, elapsed, ETA); ``quiet`` disables them. Nothing is
    drawn until the first bar is added."""
    return _LazyProgress(TextColumn("[bold]{task.description:<10}"), BarColumn(), MofNCompleteColumn(),
                         TextColumn("{task.fields[unit]}"), TimeElapsedColumn(), TextColumn("ETA"),
                         TimeRemainingColumn(), console=err_console, disable=quiet, transient=False)


class StageBars:
    """Adapter from the API's :data:`talkhead.progress.Progress` callback to one Rich task per stage.

    Args:
        progress: from :func:`progress_bars`.
        units: unit shown per stage, over :data:`UNITS` (default ``"frames"``).
    """

    UNITS = {"keypoints": "frames predicted", "render": "video frames"}
    """The generator predicts one or two frames fewer than the video has (the last is held,
    :class:`talkhead.pipeline.Pipeline`), so the two bars say what each counts."""

    def __init__(self, progress: Progress, units: Mapping[str, str] | None = None):
        self.progress = progress
        self.units = {**self.UNITS, **(units or {})}
        self.tasks: dict[str, int] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(stage, total=total, unit=self.units.get(stage, "frames"))
        self.progress.update(self.tasks[stage], completed=done, total=total)

    def reset(self) -> None:
        """Remove every stage's bar (between the pairs of a batch)."""
        for task in self.tasks.values():
            self.progress.remove_task(task)
        self.tasks.clear()


__all__ = ["err_console", "out_console", "State", "Terminated", "fail", "errors", "progress_bars", "StageBars",
           "help_text", "finish_help", "show_details"]


@contextlib.contextmanager
def syncnet_scoring(syncnet, landmarker: str, offline: bool, models_dir, device: str, quiet: bool, *,
                    total: int, label: str, failed: str):
    """The command-line side of SyncNet scoring, shared by ``score`` and ``evaluate --videos``: the
    landmarker (its fallback note), the SyncNet (:func:`talkhead.score.load_scorer`), the face detector
    and the progress bars.

    Yields:
        ``(model, detect, progress, on_video)`` for :func:`talkhead.score.score_videos`: ``on_video``
        advances the ``label`` bar (``total`` videos) and prints ``"<failed> VIDEO: reason"`` for a
        video that could not be scored.

    Raises:
        InputError: SyncNet not installed (names ``talkhead download syncnet``); as
        :func:`talkhead.landmarks.get_landmarker` for a missing landmark backend.
    """
    from .devices import resolve_device
    from .facetrack import face_detector
    from .landmarks import get_landmarker, resolve_landmarker
    from .score import load_scorer

    dev = str(resolve_device(device))
    backend, note = resolve_landmarker(landmarker, offline=offline)
    if note and not quiet:
        err_console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    model = load_scorer(syncnet, models_dir, device=dev)
    get_landmarker(backend, dev, offline=offline)  # a missing backend fails once, here
    detect = face_detector(backend, dev, None)
    with progress_bars(quiet) as progress:
        bars = StageBars(progress, {"syncnet": "windows"})
        overall = progress.add_task(label, total=total, unit="videos")

        def on_video(item) -> None:
            bars.reset()
            progress.advance(overall)
            if item.error is not None:
                progress.console.print(f"[red]{failed}[/] {escape(printable(item.path))}: {escape(item.error)}",
                                       highlight=False, soft_wrap=True)

        yield model, detect, bars, on_video
