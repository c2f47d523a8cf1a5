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
import signal
import threading
from typing import Mapping

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .errors import TalkheadError
from .io import printable, unexpected_reason

err_console = Console(stderr=True)
"""Progress bars, status lines and errors (stderr)."""
out_console = Console()
"""Results: tables, JSON (stdout)."""


class State:
    """Process-wide CLI flags."""

    debug = False
    debug_anywhere = False  # set by talkhead.cli.main() when --debug stood after the subcommand


def fail(exc: BaseException) -> None:
    """Print ``exc`` as one red ``error:`` line on stderr (its traceback too under ``--debug``) and exit.

    Raises:
        typer.Exit: always, with ``exc.exit_code`` (a :class:`~talkhead.errors.TalkheadError`'s, 2 if none).
    """
    from rich.markup import escape

    if State.debug:
        err_console.print_exception()
    msg = printable(str(exc) or exc.__class__.__name__)
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
        units: unit shown per stage (default ``"frames"``).
    """

    def __init__(self, progress: Progress, units: Mapping[str, str] | None = None):
        self.progress = progress
        self.units = dict(units or {})
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


__all__ = ["err_console", "out_console", "State", "Terminated", "fail", "errors", "progress_bars", "StageBars"]
