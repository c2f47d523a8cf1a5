"""What every talkhead CLI module shares: the two consoles, the error mapping and the progress bars.

Expected errors (:class:`talkhead.errors.TalkheadError`) become one red line on stderr and their
``exit_code`` (2); the traceback is shown only with ``--debug``; Ctrl-C exits with 130.
:mod:`talkhead.cli` (animate, batch, download, doctor) and :mod:`talkhead.cli_train` (preprocess,
merge-shards, train, evaluate) both use these, so there is one console pair and one error rule.
"""
from __future__ import annotations

import contextlib
from typing import Mapping

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .errors import TalkheadError

err_console = Console(stderr=True)
"""Progress bars, status lines and errors (stderr)."""
out_console = Console()
"""Results: tables, JSON (stdout)."""


class State:
    """Process-wide CLI flags."""

    debug = False
    debug_anywhere = False  # set by talkhead.cli.main() when --debug stood after the subcommand


def fail(exc: BaseException) -> None:
    """Print ``exc`` as one error line (traceback first with ``--debug``) and exit with its ``exit_code``."""
    if State.debug:
        err_console.print_exception()
    msg = str(exc) or exc.__class__.__name__
    err_console.print(f"[bold red]error:[/] {msg}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(getattr(exc, "exit_code", 2))


@contextlib.contextmanager
def errors():
    """Map TalkheadError -> one line + exit 2; Ctrl-C -> exit 130."""
    try:
        yield
    except TalkheadError as exc:
        fail(exc)
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]: nothing partial was left behind")
        raise typer.Exit(130)


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


__all__ = ["err_console", "out_console", "State", "fail", "errors", "progress_bars", "StageBars"]
