"""``talkhead`` command line: a thin Typer layer over the Python API.

Each command parses its options, calls one API function, and renders progress with Rich. Expected
errors (:class:`talkhead.errors.TalkheadError`) become one red line on stderr and exit code 2; the
traceback is shown only with ``--debug``; any other exception is named as an unexpected error in one
line (exit 1; the traceback with ``--debug``). Ctrl-C (exit 130), SIGTERM (143) and SIGHUP (129) run
the same cleanup - ffmpeg is killed and reaped, temporary files removed - and leave nothing half-written.
"""
from __future__ import annotations

import contextlib
import json
import signal
import threading
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from .cli_options import with_options
from .errors import TalkheadError, unexpected_reason
from .options import AnimateOptions

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="rich",
                  help="Talking-head video from one face photo and a speech recording (MS-Sync + FOMM).")
train_app = typer.Typer(no_args_is_help=True, help="Retrain the syncer pyramid or the MS-Sync generator.")
app.add_typer(train_app, name="train")

err_console = Console(stderr=True)
out_console = Console()


class _State:
    debug = False
    debug_anywhere = False  # set by main() when --debug stood after the subcommand


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors.")) -> None:
    _State.debug = debug or _State.debug_anywhere


def _fail(exc: BaseException) -> None:
    from rich.markup import escape

    from .io import printable

    if _State.debug:
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
def _errors():
    """Map TalkheadError -> one line + exit 2; any other exception -> one line naming it as
    unexpected + exit 1 (traceback with --debug); Ctrl-C -> 130; SIGTERM -> 143; SIGHUP -> 129."""
    try:
        with _termination_as_interrupt():
            yield
    except TalkheadError as exc:
        _fail(exc)
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

        if _State.debug:
            err_console.print_exception()
        err_console.print(f"[bold red]error:[/] {escape(unexpected_reason(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


def _progress(quiet: bool) -> Progress:
    return Progress(TextColumn("[bold]{task.description:<10}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[unit]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                    console=err_console, disable=quiet, transient=False)


class _Bars:
    """Adapter from the API's ``progress(stage, done, total)`` callback to Rich tasks."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.tasks: dict[str, int] = {}

    def __call__(self, stage: str, done: int, total: int) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(stage, total=total, unit="frames")
        self.progress.update(self.tasks[stage], completed=done, total=total)

    def reset(self) -> None:
        for task in self.tasks.values():
            self.progress.remove_task(task)
        self.tasks.clear()


# ----------------------------------------------------------------------------------------------- options
# Options shared with the Python API are declared once, in talkhead.options (AnimateOptions), and turned
# into Typer parameters by with_options; only command-specific options are declared here.
ModelsDir = typer.Option(None, "--models-dir", help="Checkpoint folder [default: $TALKHEAD_MODELS or the platform cache].",
                         file_okay=False)
Quiet = typer.Option(False, "--quiet", "-q", help="No progress bars.")


def _log(quiet: bool):
    return None if quiet else (lambda msg: err_console.print(msg, highlight=False))


# ----------------------------------------------------------------------------------------------- animate
@app.command()
@with_options(AnimateOptions)
def animate(
    image: Path = typer.Argument(..., help="Face photo (PNG, JPEG, WebP, BMP)."),
    audio: Path = typer.Argument(..., help="Speech (wav, flac, mp3, m4a, ogg, ...)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Output MP4 [default: <audio stem>.mp4 beside the audio]."),
    save_keypoints: Optional[Path] = typer.Option(None, "--save-keypoints", help="Also write the generated keypoints, jacobians and crop box (.npz)."),
    quiet: bool = Quiet, *, options,
) -> None:
    """Animate IMAGE with the speech in AUDIO into an MP4 (H.264 + AAC, 25 fps)."""
    from .io import check_not_input, check_output_path, printable
    from .pipeline import Pipeline

    with _errors():
        opts = options()
        output = output or audio.with_suffix(".mp4")
        check_not_input(output, image, audio)  # even with --overwrite
        check_output_path(output, opts.overwrite)  # before loading any model
        pipeline = Pipeline(opts, log=_log(quiet))
        with _progress(quiet) as progress:
            result = pipeline.animate(image, audio, output, save_keypoints=save_keypoints, progress=_Bars(progress))
        if not quiet:
            err_console.print(f"[green]wrote[/] {printable(result.output)}  ({result.num_frames} frames, "
                              f"{result.duration_s:.2f} s)", highlight=False)


# ----------------------------------------------------------------------------------------------- batch
@app.command()
@with_options(AnimateOptions)
def batch(
    images: Optional[Path] = typer.Argument(None, help="Folder of face photos, or one photo."),
    audio: Optional[Path] = typer.Argument(None, help="Folder of speech files, or one speech file."),
    out_dir: Path = typer.Option(..., "--output", "-o", help="Folder for the MP4s."),
    pairs: Optional[Path] = typer.Option(None, "--pairs", help="CSV of image,audio[,output] rows instead of PHOTOS SPEECH."),
    skip_existing: bool = typer.Option(False, "--skip-existing", help="Leave pairs whose output exists from an earlier run (resume)."),
    report: Optional[Path] = typer.Option(None, "--report", help="Also write one row per pair to this .jsonl or .csv "
                                          "file (replaced), as the batch goes."),
    quiet: bool = Quiet, *, options,
) -> None:
    """Animate many pairs; models load once. PHOTOS and SPEECH are each a folder or one file:

    folder + one speech: every photo says it (output: the photo's name); one photo + folder: it says
    every speech file (the speech's name); two folders: files paired by name (alice.png + alice.wav);
    --pairs CSV: listed rows (photo__speech names where both vary).

    A failing pair is reported and the batch goes on. Ends with a summary; exit code 1 if any pair failed.
    """
    from rich.markup import escape

    from .batch import BatchReport, collect_pairs, plan_outputs, run_batch
    from .pipeline import Pipeline

    with _errors():
        opts = options()
        jobs, naming = collect_pairs(images, audio, pairs)
        planned = plan_outputs(jobs, out_dir, naming)  # collisions are an error before any model loads
        if report is not None:
            from .io import check_not_input

            check_not_input(report, *(x for p in planned for x in (p.image, p.audio, p.output)))
        pipeline = Pipeline(opts, log=_log(quiet))
        with contextlib.ExitStack() as stack:
            sink = stack.enter_context(BatchReport(report)) if report is not None else None
            progress = stack.enter_context(_progress(quiet))
            bars = _Bars(progress)
            overall = progress.add_task("pairs", total=len(jobs), unit="pairs")

            def on_item(item):
                bars.reset()
                progress.advance(overall)
                if item.status == "failed" and not quiet:
                    progress.console.print(f"[red]failed[/] {escape(item.pair.label)}: {escape(item.reason)}",
                                           highlight=False)
                if item.status == "failed" and _State.debug and item.error is not None \
                        and not isinstance(item.error, TalkheadError):
                    import traceback

                    progress.console.print(escape("".join(traceback.format_exception(item.error))), highlight=False)

            items = run_batch(pipeline, jobs, out_dir, skip_existing=skip_existing, naming=naming, on_item=on_item,
                              progress=bars, report=sink)
        _print_summary(items)
        if any(i.status == "failed" for i in items):
            raise typer.Exit(1)


def _print_summary(items) -> None:
    from rich.markup import escape

    from .io import printable

    table = Table(title="talkhead batch")
    for col in ("photo", "speech", "status", "output / reason"):
        table.add_column(col)
    colours = {"done": "green", "skipped": "yellow", "failed": "red"}
    for item in items:
        show = (lambda p: escape(printable(p.name)) if p is not None else "-")
        detail = printable(item.output) if item.status == "done" else item.reason
        table.add_row(show(item.pair.image), show(item.pair.audio), f"[{colours[item.status]}]{item.status}[/]",
                      escape(detail))
    out_console.print(table)
    counts = {s: sum(i.status == s for i in items) for s in ("done", "skipped", "failed")}
    out_console.print(f"done {counts['done']}, skipped {counts['skipped']}, failed {counts['failed']}")


# ----------------------------------------------------------------------------------------------- download
@app.command()
def download(
    names: Optional[List[str]] = typer.Argument(None, help="Models to fetch (fomm, mssync) [default: all]."),
    models_dir: Optional[Path] = ModelsDir,
    from_dir: Optional[Path] = typer.Option(None, "--from-dir", help="Install files you downloaded by hand from this folder instead."),
    force: bool = typer.Option(False, "--force", help="Download again even if a verified copy is present."),
    quiet: bool = Quiet,
) -> None:
    """Fetch every checkpoint the pipeline needs (Google Drive, via gdown), verify and record its sha256."""
    from . import models

    with _errors():
        root = models.resolve_models_dir(models_dir)
        if from_dir is not None:
            models.install_from(from_dir, root, names=names or None)
        else:
            models.download(names or None, root, quiet=quiet, force=force)
        _print_states(models.verify(root), root)


def _print_states(states: dict, root: Path) -> None:
    table = Table(title=f"checkpoints in {root}")
    table.add_column("file")
    table.add_column("state")
    table.add_column("detail")
    colours = {"verified": "green", "missing": "yellow", "corrupt": "red", "unverified": "yellow"}
    for name, st in states.items():
        state = getattr(st, "state", str(st))
        table.add_row(str(name), f"[{colours.get(state, 'white')}]{state}[/]", getattr(st, "reason", "") or "")
    out_console.print(table)


# ----------------------------------------------------------------------------------------------- doctor
@app.command()
def doctor(models_dir: Optional[Path] = ModelsDir,
           as_json: bool = typer.Option(False, "--json", help="Print the report as JSON.")) -> None:
    """Check torch and devices, ffmpeg (libx264, aac), checkpoints and landmark backends."""
    from .doctor import doctor_report, has_problems, render_report
    from .models import resolve_models_dir

    with _errors():
        report = doctor_report(resolve_models_dir(models_dir))
        if as_json:
            out_console.print_json(json.dumps(report, default=str))
        else:
            render_report(report, out_console)
        if has_problems(report):
            raise typer.Exit(1)


from . import cli_train  # noqa: E402  (preprocess, train syncers/generator, evaluate)

cli_train.register(app, train_app, _errors, err_console, out_console)


def main(argv: Optional[List[str]] = None) -> None:
    """Console-script entry point. ``--debug`` is accepted anywhere on the command line."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    _State.debug_anywhere = "--debug" in args
    app(args=[a for a in args if a != "--debug"], prog_name="talkhead")


if __name__ == "__main__":  # pragma: no cover
    main()
