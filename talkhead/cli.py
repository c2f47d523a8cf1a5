"""``talkhead`` command line: a thin Typer layer over the Python API.

Each command parses its options, calls one API function, and renders progress with Rich. Expected
errors (:class:`talkhead.errors.TalkheadError`) become one red line on stderr and exit code 2; the
traceback is shown only with ``--debug``; any other exception is named as an unexpected error in one
line (exit 1; the traceback with ``--debug``). Ctrl-C (exit 130), SIGTERM (143) and SIGHUP (129) run
the same cleanup - ffmpeg is killed and reaped, temporary files removed - and leave nothing half-written.
"""
from __future__ import annotations

import json
import contextlib
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape
from rich.table import Table

from . import cli_train
from .cli_common import (ModelsDir, Quiet, State, StageBars, syncnet_scoring, err_console, errors, finish_help, out_console, progress_bars,
                         show_details)
from .cli_options import with_options
from .errors import TalkheadError
from .options import AnimateOptions, ReenactOptions

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode="rich",
                  help="Talking-head video from one face photo and a speech recording (MS-Sync + FOMM).")
app.add_typer(cli_train.commands)                     # preprocess, merge-shards, evaluate
app.add_typer(cli_train.train_app, name="train")      # train syncers, train generator


def _version(value: bool) -> None:
    if value:
        from . import __version__

        out_console.print(f"talkhead {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _main(debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors (accepted anywhere)."),
          verbose: bool = typer.Option(False, "--verbose", "-v", help="Also show detail lines, such as each "
                                       "download source tried (accepted anywhere)."),
          version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    State.debug = debug or State.debug_anywhere
    State.verbose = verbose or State.verbose_anywhere or State.debug
    show_details(State.verbose)


# ----------------------------------------------------------------------------------------------- options
# Options shared with the Python API are declared once, in talkhead.options (AnimateOptions), and turned
# into Typer parameters by with_options; only command-specific options are declared here.


def _print_path(path: Path) -> None:
    """The output path on stdout, exactly (its bytes, so undecodable names survive), for scripts."""
    sys.stdout.flush()
    sys.stdout.buffer.write(os.fsencode(path) + b"\n")
    sys.stdout.flush()


def _log(quiet: bool):
    return None if quiet else (lambda msg: err_console.print(msg, highlight=False))


# ----------------------------------------------------------------------------------------------- animate
@app.command()
@with_options(AnimateOptions)
def animate(
    image: Path = typer.Argument(..., metavar="PHOTO", help="Face photo (PNG, JPEG, WebP, BMP)."),
    audio: Path = typer.Argument(..., metavar="SPEECH", help="Speech (wav, flac, mp3, m4a, ogg, ...)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help=escape("Output MP4 [default: <audio stem>.mp4 beside the audio].")),
    save_keypoints: Optional[Path] = typer.Option(None, "--save-keypoints", help="Also write the generated keypoints, jacobians and crop box (.npz)."),
    quiet: bool = Quiet, *, options,
) -> None:
    """Animate the face in PHOTO saying SPEECH into an MP4 (H.264 + AAC, 25 fps, as long as the audio).

    Inputs are checked first (files, face, audio); then the models load (the first run downloads them,
    see `talkhead download`). The path of the written MP4 is printed on stdout, even with -q.

    Examples

      talkhead animate photo.png speech.wav -o talk.mp4

      talkhead animate photo.jpg speech.m4a --device cpu --landmarker dlib

      talkhead animate photo.png speech.wav --save-keypoints kp.npz
    """
    from .io import printable
    from .pipeline import Pipeline

    with errors():
        opts = options()
        output = output or audio.with_suffix(".mp4")
        pipeline = Pipeline(opts, log=_log(quiet), single_use=True)
        with progress_bars(quiet) as progress:
            result = pipeline.animate(image, audio, output, save_keypoints=save_keypoints, progress=StageBars(progress))
        if not quiet:
            err_console.print(f"[green]wrote[/] {printable(result.output)}  ({result.num_frames} frames, "
                              f"{result.duration_s:.2f} s)", highlight=False)
        _print_path(result.output)


# ----------------------------------------------------------------------------------------------- batch
@app.command()
@with_options(ReenactOptions)
def batch(
    images: Optional[Path] = typer.Argument(None, metavar="PHOTOS", help="Folder of face photos, or one photo."),
    audio: Optional[Path] = typer.Argument(None, metavar="SPEECH", help="Folder of speech files, or one speech file (with --reenact: "
                                           "driving videos)."),
    out_dir: Path = typer.Option(..., "--output", "-o", help="Folder for the MP4s."),
    pairs: Optional[Path] = typer.Option(None, "--pairs", help="CSV of image,audio[,output] rows instead of PHOTOS "
                                         "SPEECH: image and audio relative to the CSV's folder, output relative to "
                                         "-o (and inside it) unless absolute."),
    shard: Optional[str] = typer.Option(None, "--shard", metavar="I/N", help="Render only share I of N of the "
                                        "pairs (0 <= I < N), e.g. one task of a SLURM array; names are those of "
                                        "the whole batch."),
    reenact_mode: bool = typer.Option(False, "--reenact", help="The second argument holds driving videos: each "
                                      "photo moves like its video's face (as `talkhead reenact`; --relative, "
                                      "--find-best-frame, --fps, --max-seconds apply)."),
    skip_existing: bool = typer.Option(False, "--skip-existing", help="Leave pairs whose output exists from an earlier run (resume)."),
    report: Optional[Path] = typer.Option(None, "--report", help="Also write one row per pair to this .jsonl or .csv "
                                          "file (replaced), as the batch goes."),
    score: bool = typer.Option(False, "--score", help="With --report: add SyncNet lse_c, lse_d and av_offset "
                               "columns for each video written (needs `talkhead download syncnet`)."),
    quiet: bool = Quiet, *, options,
) -> None:
    """Animate many pairs; models load once. PHOTOS and SPEECH are each a folder or one file:

    folder + one speech: every photo says it (output: the photo's name); one photo + folder: it says
    every speech file (the speech's name); two folders: files paired by name (alice.png + alice.wav);
    --pairs CSV: listed rows (photo__speech names where both vary). With --reenact the second argument
    (and the CSV's second column) holds driving videos instead of speech, paired the same way.

    A failing pair is reported and the batch goes on. Ends with a summary; exit code 1 if any pair failed.

    Examples

      talkhead batch photos/ announcement.wav -o videos/ --report run.jsonl

      talkhead batch me.png speeches/ -o videos/

      talkhead batch photos/ speeches/ -o videos/ --skip-existing

      talkhead batch --pairs jobs.csv -o videos/

      talkhead batch photos/ drivers/ --reenact -o videos/

      talkhead batch photos/ speeches/ -o videos/ --shard 0/4 --report part0.jsonl

      talkhead batch photos/ announcement.wav -o videos/ --report run.csv --score
    """
    from rich.markup import escape

    from .batch import BatchReport, collect_pairs, plan_outputs, run_batch, shard_pairs
    from .pipeline import Pipeline, SourceCache

    with errors():
        opts = options()
        from .options import parse_shard

        driving = "video" if reenact_mode else "speech"
        if shard is not None:
            parse_shard(shard)  # a bad --shard is refused before anything else
        jobs, naming = collect_pairs(images, audio, pairs, driving)
        protected = [x for x in (pairs, report) if x is not None]
        planned = plan_outputs(jobs, out_dir, naming, protected)  # collisions are an error before any model loads
        if report is not None:
            from .io import check_not_input

            check_not_input(report, *(x for p in planned for x in (p.image, p.audio, p.output)))
        scorer = None
        if score:
            if report is None:
                from .errors import InputError

                raise InputError("--score adds columns to the report: give --report FILE.jsonl or .csv")
            scorer = _batch_scorer(opts)  # a missing SyncNet file fails here, before any pair is rendered
        # 2 photos: the one rendering and the next, prepared ahead (run_batch)
        pipeline = Pipeline(opts, log=_log(quiet), source_cache=SourceCache(capacity=2))
        with contextlib.ExitStack() as stack:
            sink = stack.enter_context(BatchReport(report, scorer)) if report is not None else None
            progress = stack.enter_context(progress_bars(quiet))
            bars = StageBars(progress)
            share = planned if shard is None else shard_pairs(planned, parse_shard(shard))
            overall = progress.add_task("pairs", total=len(share), unit="pairs")

            def on_item(item):  # called in order, from the thread that finishes the pairs (run_batch)
                progress.advance(overall)
                if item.status == "failed" and not quiet:
                    progress.console.print(f"[red]failed[/] {escape(item.pair.label)}: {escape(item.reason)}",
                                           highlight=False)
                if item.status == "failed" and State.debug and item.error is not None \
                        and not isinstance(item.error, TalkheadError):
                    import traceback

                    progress.console.print(escape("".join(traceback.format_exception(item.error))), highlight=False)

            items = run_batch(pipeline, jobs, out_dir, skip_existing=skip_existing, naming=naming, on_item=on_item,
                              on_start=lambda pair: bars.reset(), progress=bars, report=sink, driving=driving, protected=protected,
                              shard=parse_shard(shard) if shard is not None else None)
        _print_summary(items)
        _hint_existing(items, opts.overwrite)
        if any(i.status == "failed" for i in items):
            raise typer.Exit(1)


def _hint_existing(items, overwrite: bool) -> None:
    """After a re-run whose pairs failed on outputs from an earlier run: one line naming the two ways on."""
    from .errors import OutputError

    existing = [i for i in items if i.status == "failed" and isinstance(i.error, OutputError)
                and "already exists" in i.reason]
    if existing and not overwrite:
        n = len(existing)
        err_console.print(f"{n} output{' exists' if n == 1 else 's exist'} from an earlier run: --skip-existing "
                          f"leaves {'it' if n == 1 else 'them'} (resume), --overwrite replaces "
                          f"{'it' if n == 1 else 'them'}", highlight=False, markup=False)


def _batch_scorer(opts):
    """``video -> SyncScores`` with the installed SyncNet, on the batch's device and landmarker."""
    from .devices import resolve_device
    from .facetrack import face_detector
    from .landmarks import resolve_landmarker
    from .score import load_scorer, score_video

    dev = str(resolve_device(opts.device))
    model = load_scorer(None, opts.models_dir, device=dev)
    detect = face_detector(resolve_landmarker(opts.landmarker, offline=opts.offline)[0], dev, None)
    return lambda path: score_video(model, path, detect=detect).scores


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


# ----------------------------------------------------------------------------------------------- reenact
@app.command()
@with_options(ReenactOptions, exclude=("motion_scale", "still", "motion_model"))  # speech-motion options: not used here
def reenact(
    photo: Path = typer.Argument(..., metavar="PHOTO", help="Face photo (PNG, JPEG, WebP, BMP)."),
    driving_video: Path = typer.Argument(..., metavar="DRIVING_VIDEO", help="Video of a face whose head motion drives the photo (its audio is kept)."),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help=escape("Output MP4 [default: <video stem>-<photo stem>.mp4 beside the video].")),
    save_keypoints: Optional[Path] = typer.Option(None, "--save-keypoints", help="Also write the driving and transferred keypoints and the crop boxes (.npz)."),
    quiet: bool = Quiet, *, options,
) -> None:
    """Move the face in PHOTO like the face in DRIVING_VIDEO (FOMM relative motion transfer), with its audio.

    The driving face is cropped with one box fixed over the clip; keypoints are detected on every
    frame and their motion is transferred to the photo's. The MP4 has the video's frame rate (or
    --fps) and audio track. Inputs are checked before the renderer loads. The path of the written
    MP4 is printed on stdout, even with -q.

    Examples

      talkhead reenact photo.png driving.mp4 -o moved.mp4

      talkhead reenact photo.jpg driving.mp4 --find-best-frame --frame crop
    """
    from .reenact import default_output, load_reenact_pipeline
    from .reenact import reenact as run

    with errors():
        opts = options()
        output = output or default_output(photo, driving_video)
        pipeline = load_reenact_pipeline(opts, log=_log(quiet))
        with progress_bars(quiet) as progress:
            result = run(pipeline, photo, driving_video, output, save_keypoints=save_keypoints,
                         progress=StageBars(progress))
        if not quiet:
            err_console.print(f"[green]wrote[/] {result.output}  ({result.num_frames} frames at {result.fps:g} fps, "
                              f"{result.duration_s:.2f} s{'' if result.has_audio else ', no audio'})", highlight=False)
        _print_path(result.output)


# ----------------------------------------------------------------------------------------------- score
@app.command()
def score(
    videos: List[Path] = typer.Argument(..., metavar="VIDEOS...", help="MP4s (any video ffmpeg reads) with a face and "
                                        "speech."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the scores to this JSON file (replaced)."),
    syncnet: Optional[Path] = typer.Option(None, "--syncnet", help=escape(
        "A SyncNet file in syncnet_v2.model's layout [default: the installed one, `talkhead download syncnet`].")),
    landmarker: str = typer.Option("auto", "--landmarker", metavar="auto|fan|dlib", help="Face landmarker."),
    device: str = typer.Option("auto", "--device", metavar="auto|cpu|cuda|mps", help="Where SyncNet runs."),
    offline: bool = typer.Option(False, "--offline", help="Never download (the fan landmarker's weights)."),
    models_dir: Optional[Path] = ModelsDir,
    quiet: bool = Quiet,
) -> None:
    """Measure lip sync with SyncNet: LSE-C (higher is better), LSE-D (lower is better) and the AV offset.

    Each video is resampled to 25 fps and 16 kHz; the face is tracked on every frame and cut as the
    reference scripts do (joonson/syncnet_python). The offset is in frames (40 ms each) and ms:
    positive = the audio is late (the video leads): audio delayed by k frames scores +k. A video that cannot be
    scored (no face, no audio, shorter than 6 frames) gets one line and the others are still scored;
    exit code 1 if any failed. The weights are for research use only (models/syncnet.md); install them
    once with `talkhead download syncnet`.

    Examples

      talkhead score out.mp4

      talkhead score videos/*.mp4 --json scores.json
    """
    from rich.markup import escape as esc

    from .io import atomic_output, check_not_input, printable
    from .score import score_videos, summary

    with errors():
        if json_out is not None:
            check_not_input(json_out, *videos)
            sink = atomic_output(json_out, overwrite=True)  # checked now, before any model loads
        with syncnet_scoring(syncnet, landmarker, offline, models_dir, device, quiet, total=len(videos),
                             label="videos", failed="failed") as (model, detect, bars, on_video):
            items = score_videos(model, videos, detect=detect, progress=bars, on_video=on_video)
        mean = summary(items)
        table = Table(title="talkhead score (SyncNet)")
        for col in ("video", "LSE-C", "LSE-D", "offset (frames)", "offset (ms)", "windows"):
            table.add_column(col)
        for item in items:
            name = esc(printable(item.path))
            if item.scores is None:
                table.add_row(name, "-", "-", "-", "-", f"[red]failed[/]: {esc(item.error or '')}")
            else:
                s = item.scores
                table.add_row(name, f"{s.lse_c:.3f}", f"{s.lse_d:.3f}", f"{s.offset:+d}", f"{s.offset_ms:+.0f}",
                              str(s.num_windows))
        if mean["scored"]:
            table.add_row("[bold]mean[/]", f"{mean['lse_c']:.3f}", f"{mean['lse_d']:.3f}", f"{mean['offset_frames']:+.2f}",
                          f"{mean['offset_frames'] * 40:+.0f}", f"{mean['scored']} videos")
        out_console.print(table)
        if json_out is not None:
            with sink as tmp:
                tmp.write_text(json.dumps({"videos": [i.as_dict() for i in items], "mean": mean}, indent=2) + "\n",
                               encoding="utf-8")
            _print_path(json_out)
        if mean["failed"]:
            raise typer.Exit(1)


# ----------------------------------------------------------------------------------------------- download
@app.command()
def download(
    names: Optional[List[str]] = typer.Argument(None, metavar="MODELS", help=escape("Models to fetch (fomm, mssync, smac, syncnet, gfpgan) [default: fomm and mssync, what animate needs].")),
    models_dir: Optional[Path] = ModelsDir,
    from_dir: Optional[Path] = typer.Option(None, "--from-dir", help="Install files you downloaded by hand from this folder instead."),
    mirror: Optional[str] = typer.Option(None, "--mirror", help=escape("Base URL serving a models directory (URL/fomm/vox-adv-cpk.pth.tar, ...), tried after the public sources [default: $TALKHEAD_MIRROR].")),
    force: bool = typer.Option(False, "--force", help="Download again even if a verified copy is present."),
    quiet: bool = Quiet,
) -> None:
    """Fetch every checkpoint the pipeline needs, verify it and record its sha256 in the models folder.

    Sources, in order: the authors' Google Drive folders, public mirrors (see models/*.md), then --mirror URL / $TALKHEAD_MIRROR.

    The optional SMAC renderer (reenact --renderer smac; non-commercial licence) is shared by its authors through a browser link only: download its two files by hand and install them with --from-dir.

    Examples

      talkhead download

      talkhead download fomm --from-dir ~/Downloads

      talkhead download smac --from-dir ~/Downloads/smac

      talkhead download gfpgan

      talkhead download --mirror https://cache.example.com/talkhead
    """
    from . import store

    with errors():
        root = store.resolve_models_dir(models_dir)
        if from_dir is not None:
            store.install_from(from_dir, root, names=names or None)
        else:
            from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                                       TransferSpeedColumn)

            bars = Progress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                            TimeRemainingColumn(), console=err_console, disable=quiet, transient=False)
            tasks: dict[str, int] = {}

            def on_bytes(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = bars.add_task(stage, total=total or None)
                bars.update(tasks[stage], completed=done, total=total or None)

            with bars:
                store.download(names or None, root, mirror=mirror, force=force, progress=on_bytes, log=_log(quiet))
        states = store.verify(root, names or None, hash_check="stat")
        _print_states(states, root)
        for name in dict.fromkeys(st.model for st in states.values()):
            notice = store.REGISTRY[name].notice
            if notice and not quiet and any(st.ok for st in states.values() if st.model == name):
                err_console.print(f"[yellow]note:[/] {notice}", highlight=False, soft_wrap=True)


def _print_states(states: dict, root: Path) -> None:
    table = Table(title=f"checkpoints in {root}")
    table.add_column("file")
    table.add_column("state")
    table.add_column("detail")
    colours = {"verified": "green", "packaged": "green", "missing": "yellow", "corrupt": "red", "unverified": "yellow"}
    for name, st in states.items():
        state = getattr(st, "state", str(st))
        table.add_row(str(name), f"[{colours.get(state, 'white')}]{state}[/]", getattr(st, "reason", "") or "")
    out_console.print(table)


# ----------------------------------------------------------------------------------------------- doctor
@app.command()
def doctor(models_dir: Optional[Path] = ModelsDir,
           as_json: bool = typer.Option(False, "--json", help="Print the report as JSON.")) -> None:
    """Check torch and devices, ffmpeg (libx264, aac), checkpoints and landmark backends.

    Exit code 0 when `talkhead animate` can run ("verdict: ready"), 1 otherwise.

    Examples

      talkhead doctor

      talkhead doctor --json --models-dir ./models
    """
    from .doctor import doctor_report, has_problems, render_report
    from .store import resolve_models_dir

    with errors():
        report = doctor_report(resolve_models_dir(models_dir))
        if as_json:
            out_console.print_json(json.dumps(report, default=str))
        else:
            render_report(report, out_console)
        if has_problems(report):
            raise typer.Exit(1)


# ----------------------------------------------------------------------------------------------- ui
@app.command()
@with_options(AnimateOptions, exclude=("face_index", "overwrite"))
def ui(
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (0.0.0.0 = every network)."),
    port: int = typer.Option(7860, "--port", min=0, max=65535, help="TCP port (0 = the first free one from 7860 up)."),
    share: bool = typer.Option(False, "--share/--no-share", help="Also open a public Gradio share link."),
    quiet: bool = Quiet, *, options,
) -> None:
    """Serve a local web page (and HTTP API) for animate: drop a photo and a speech file, get the MP4.

    Needs the ui extra: pip install 'talkhead[ui]'. The models load once at start-up; requests run one
    at a time; uploads are limited to 500 MB. The options below are the page's defaults. Ctrl-C (exit 0)
    or SIGTERM (exit 143) stops it and removes its temporary files; those of a server that was killed
    outright are removed by the next start.

    Examples

      talkhead ui

      talkhead ui --port 8080 --landmarker dlib --device cpu
    """
    from . import ui as web

    import signal

    with errors():
        opts = options()
        web.require_gradio()
        if host not in web.LOOPBACK:
            err_console.print(f"[yellow]warning:[/] --host {host} serves the page and its API to every machine that "
                              "can reach this one, with no login", highlight=False, soft_wrap=True)
        if share:
            err_console.print("[yellow]warning:[/] --share publishes the page through Gradio's share servers: anyone "
                              "with the link can upload files and run the models on this machine",
                              highlight=False, soft_wrap=True)
        stopped_by = web.serve(opts, host=host, port=port, share=share, log=_log(quiet),
                               ready=lambda url: print(url, flush=True))
    if stopped_by == signal.SIGTERM:
        raise typer.Exit(128 + signal.SIGTERM)  # the CLI's rule for SIGTERM: 143


finish_help(app)  # every command's docstring -> its --help text (after the last command is registered)


def main(argv: Optional[List[str]] = None) -> None:
    """Console-script entry point. ``--debug`` and ``-v``/``--verbose`` are accepted anywhere on the
    command line."""
    import sys

    args = list(sys.argv[1:] if argv is None else argv)
    State.debug_anywhere = "--debug" in args
    State.verbose_anywhere = any(a in ("-v", "--verbose") for a in args)
    finish_help(app)
    try:
        app(args=[a for a in args if a not in ("--debug", "-v", "--verbose")], prog_name="talkhead")
    finally:
        # Interpreter exit would run the cyclic garbage collector over every object torch's import made
        # (~0.2 s of a ~0.3 s exit, measured: benchmarks/README.md, "Start and exit"); frozen, they are
        # skipped. Nothing is left to collect that matters: files are closed, outputs in place.
        import gc

        gc.freeze()


if __name__ == "__main__":  # pragma: no cover
    main()
