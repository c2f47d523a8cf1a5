"""CLI commands for retraining and evaluation: ``preprocess``, ``merge-shards``, ``train syncers``,
``train generator``, ``evaluate``. Thin: parse, call :mod:`talkhead.train`, render progress (Rich)
and results.

Two Typer apps, added by :mod:`talkhead.cli`: :data:`commands` (top-level ``preprocess``,
``merge-shards``, ``evaluate``) and :data:`train_app` (``train syncers``, ``train generator``).
Consoles and error handling are :mod:`talkhead.cli_common`'s; preprocess's options are
:class:`talkhead.options.PreprocessOptions`, turned into flags by :func:`talkhead.cli_options.with_options`.

Multi-GPU / multi-machine: launch with ``torchrun --nproc_per_node N -m talkhead train ...``; the
engine joins the process group from torchrun's environment, and only rank 0 prints and writes.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Optional

import numpy as np
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .cli_common import ModelsDir, Quiet, StageBars, err_console, errors, out_console, progress_bars, syncnet_scoring
from rich.markup import escape

from .cli_options import with_options
from .errors import InputError
from .options import PreprocessOptions

commands = typer.Typer()
"""Top-level commands: ``preprocess``, ``merge-shards``, ``evaluate``."""
train_app = typer.Typer(no_args_is_help=True, help="Retrain the syncer pyramid or the MS-Sync generator.")
"""The ``train`` group: ``train syncers``, ``train generator``."""


def _is_rank0() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _parse_overrides(items: Optional[List[str]]) -> dict:
    """``["optim.lr=1e-4", "steps=10"]`` -> ``{"optim.lr": 1e-4, "steps": 10}`` (values parsed as YAML)."""
    import yaml

    out = {}
    for item in items or []:
        if "=" not in item:
            raise InputError(f"--set expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


class _TrainBar:
    """Rich bar over optimisation steps with the latest losses in its description."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.task = None

    def __call__(self, event) -> None:
        if self.task is None:
            self.task = self.progress.add_task("train", total=event.total_steps, losses="")
        if event.kind == "step" and event.metrics:
            losses = "  ".join(f"{k} {v:.4g}" for k, v in event.metrics.items() if isinstance(v, (int, float)))
            self.progress.update(self.task, completed=event.step, losses=losses)
        elif event.kind == "val" and event.metrics:
            shown = "  ".join(f"{k} {v:.3g}" for k, v in event.metrics.items() if isinstance(v, (int, float)))
            self.progress.console.print(f"[cyan]val @ {event.step}[/]: {shown}", highlight=False)
        else:
            self.progress.update(self.task, completed=event.step)


def _train_progress(console, quiet: bool) -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), TextColumn("{task.fields[losses]}"), console=console,
                    disable=quiet or not _is_rank0())


# options shared by `train syncers` and `train generator`
DataDir = typer.Argument(..., metavar="DATA_DIR", help="Training data folder written by `talkhead preprocess`.")
RunConfig = typer.Option(None, "--config", help="YAML overriding the paper defaults.")
Overrides = typer.Option(None, "--set", help="KEY=VALUE override (repeatable), e.g. --set steps=2000.")
Resume = typer.Option(False, "--resume", help="Continue the run in RUN_DIR from its checkpoint.")
Device = typer.Option("auto", "--device", metavar="auto|cpu|cuda|mps",
                      help="Where to train: auto (cuda > mps > cpu), cpu, cuda or mps (the run config's device).")


@commands.command()
@with_options(PreprocessOptions)
def preprocess(
    videos: List[Path] = typer.Argument(..., metavar="VIDEOS", help="Talking-head videos or folders of them (mp4, mkv, avi, webm)."),
    out_dir: Path = typer.Option(..., "--output", "-o", help="Training data folder (manifest.json + clips/)."),
    quiet: bool = Quiet,
    *, options,
) -> None:
    """Videos -> per clip the renderer's keypoints + jacobians (T,K,6) at 25 fps and the logfbank at 100 Hz.

    --renderer fomm (the default) takes FOMM's 10 keypoints, what the released MS-Sync speaks; --renderer
    smac takes SMAC's 15, to train an MS-Sync for SMAC. The data folder records which; it holds one kind.
    Resumable (clips already done are skipped); clips with no face, no audio or too few frames are
    skipped and reported. With --shard I/N, join the shard folders with `talkhead merge-shards`.

    Examples

      talkhead preprocess videos/ -o data/

      talkhead preprocess videos/ -o data-smac/ --renderer smac --device cuda

      talkhead preprocess a.mp4 b.mp4 -o data/ --split val --landmarker dlib

      talkhead preprocess videos/ -o data-0/ --shard 0/4 --device cuda
    """
    from .train.preprocess import preprocess as run

    with errors():
        opts = options()
        with progress_bars(quiet) as progress:
            report = run(videos, out_dir, opts, progress=StageBars(progress, {"videos": "videos"}))
        for outcome in report.skipped:
            out_console.print(f"[yellow]skipped[/] {outcome.source}: {outcome.reason}", highlight=False)
        out_console.print(report.summary())


@commands.command("merge-shards")
def merge_shards(
    shard_dirs: List[Path] = typer.Argument(..., metavar="SHARD_DIRS", help="Data folders written by `preprocess --shard I/N`."),
    out_dir: Path = typer.Option(..., "--output", "-o", help="The merged training data folder."),
    copy: bool = typer.Option(False, "--copy", help="Copy clip files instead of hard-linking them."),
) -> None:
    """Join the shard folders of `preprocess --shard` into one training data folder (idempotent).

    Clip files are hard-linked (copied with --copy, or where the folders are on different disks).

    Examples

      talkhead merge-shards data-0/ data-1/ data-2/ data-3/ -o data/

      talkhead merge-shards data-*/ -o data/ --copy
    """
    from .train.preprocess import merge_shards as run

    with errors():
        for d in shard_dirs:
            if not d.is_dir():
                raise InputError(f"shard folder not found: {d}")
        clips = run(shard_dirs, out_dir, link=not copy)
        out_console.print(f"{len(clips)} clips in {out_dir}")


def _train(fn, data_dir, run_dir, config, overrides, resume, quiet, device=None, **kw):
    with errors():
        overrides = _parse_overrides(overrides)
        if device is not None and device != "auto":
            overrides.setdefault("device", device)  # an explicit --set device=... wins
        with _train_progress(err_console, quiet) as progress:
            final = fn(data_dir, run_dir, config=config, overrides=overrides, resume=resume,
                       progress=_TrainBar(progress), **kw)
        if _is_rank0():
            out_console.print_json(json.dumps(final, default=str))


@train_app.command("syncers")
def train_syncers(
    data_dir: Path = DataDir,
    run_dir: Path = typer.Option(..., "--output", "-o", help="Run folder (config, checkpoints, metrics)."),
    config: Optional[Path] = RunConfig, overrides: Optional[List[str]] = Overrides, resume: bool = Resume,
    device: str = Device, quiet: bool = Quiet,
) -> None:
    """Train the pyramid of audio-visual syncers (InfoNCE; 200, 400, 800, 1600 ms windows).

    Prints the final metrics as JSON on stdout. Several GPUs: torchrun --nproc_per_node N -m talkhead
    train syncers ...

    Examples

      talkhead train syncers data/ -o runs/syncers

      talkhead train syncers data/ -o runs/syncers --set steps=2000 --device cuda

      talkhead train syncers data/ -o runs/syncers --resume
    """
    from .train.syncers import train_syncers as fn

    _train(fn, data_dir, run_dir, config, overrides, resume, quiet, device)


@train_app.command("generator")
def train_generator(
    data_dir: Path = DataDir,
    syncers: Path = typer.Option(..., "--syncers", help="Run folder of `talkhead train syncers` (frozen AV loss)."),
    run_dir: Path = typer.Option(..., "--output", "-o", help="Run folder; the released-format model goes to RUN_DIR/mssync."),
    config: Optional[Path] = RunConfig, overrides: Optional[List[str]] = Overrides, resume: bool = Resume,
    device: str = Device, quiet: bool = Quiet,
) -> None:
    """Train the MS-Sync generator GAN with the multi-scale AV synchrony loss.

    Prints the final metrics as JSON on stdout; the model in the released format goes to RUN_DIR/mssync.

    Examples

      talkhead train generator data/ --syncers runs/syncers -o runs/gen

      talkhead train generator data/ --syncers runs/syncers -o runs/gen --resume
    """
    from .train.generator import train_generator as fn

    _train(fn, data_dir, run_dir, config, overrides, resume, quiet, device, syncers_dir=syncers)


@commands.command()
def evaluate(
    generated: Path = typer.Argument(..., metavar="GENERATED", help="Generated keypoints: a training-data folder, or a folder of "
                                               "`--save-keypoints` .npz files named like the ground-truth clip ids."),
    ground_truth: Path = typer.Option(..., "--ground-truth", help="Training-data folder with the real clips (keypoints + logfbank)."),
    syncers: Path = typer.Option(..., "--syncers", help="Metric syncer pyramid (a `train syncers` run, trained apart from any loss syncer)."),
    split: Optional[str] = typer.Option(None, "--split", show_default=False,
                                        help=escape("Only ground-truth clips of this split (train, val, test) "
                                                    "[default: every split].")),
    videos: Optional[Path] = typer.Option(None, "--videos", file_okay=False, show_default=False, help=escape(
        "Folder of the rendered videos, `<clip id>.mp4`: adds SyncNet's LSE-C, LSE-D and AV offset to the generated "
        "row, and to the ground-truth row for clips whose source video still exists [default: keypoint metrics "
        "only].")),
    syncnet: Optional[Path] = typer.Option(None, "--syncnet", help=escape(
        "With --videos: a SyncNet file in syncnet_v2.model's layout [default: the installed one, "
        "`talkhead download syncnet`].")),
    landmarker: str = typer.Option("auto", "--landmarker", metavar="auto|fan|dlib", help="With --videos: face landmarker."),
    offline: bool = typer.Option(False, "--offline", help="Never download (the fan landmarker's weights)."),
    models_dir: Optional[Path] = ModelsDir,
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the table as JSON."),
    quiet: bool = Quiet,
) -> None:
    """Multi-scale AV synchrony (|AV-Off|, AV-Conf at 200/400/800/1600 ms) with static and ground-truth rows.

    GENERATED is matched to the ground-truth clips by clip id. Use a metric syncer pyramid trained
    apart from the one the generator's loss used. With --videos, SyncNet scores the rendered videos
    too (LSE-C higher is better, LSE-D lower is better, offset in 25-fps frames, positive = audio
    late; see `talkhead score`); a clip whose video is missing or unscorable gets one line and the
    others are still scored.

    Examples

      talkhead evaluate runs/gen-kp/ --ground-truth data/ --syncers runs/metric

      talkhead evaluate kp/ --ground-truth data/ --syncers metric/ --split test

      talkhead evaluate kp/ --ground-truth data/ --syncers metric/ --videos out/
    """
    from .io import atomic_output
    from .train import evaluate as run, format_table, load_syncers
    from .train.data import read_data_space, require_same_space

    with errors():
        gen, gt = load_eval_pairs(generated, ground_truth, split)
        if videos is not None and not videos.is_dir():
            raise InputError(f"--videos folder not found: {videos}")
        pyramid = load_syncers(syncers)
        # same shapes are not the same keypoints (another renderer's 10 x 6)
        require_same_space(f"the syncers {syncers}", pyramid.space, read_data_space(ground_truth),
                           f"the ground truth {ground_truth}")
        result = run(gen, gt, pyramid)
        if videos is not None:
            rows = {"generated": [videos / f"{g['id']}.mp4" for g in gen],
                    "ground_truth": [_source_video(t["source"]) for t in gt]}
            for name, lse in _syncnet_scores(rows, syncnet, landmarker, offline, models_dir, quiet).items():
                result["rows"][name]["lse"] = lse
        out_console.print(format_table(result), highlight=False, soft_wrap=True)
        if json_out is not None:
            with atomic_output(json_out, overwrite=True) as tmp:
                Path(tmp).write_text(json.dumps(result, indent=2))


def _source_video(source: str) -> Optional[Path]:
    """A ground-truth clip's source video, when the manifest's ``source`` is a file that still exists."""
    p = Path(source) if source else None
    return p if p is not None and p.is_file() else None


def _syncnet_scores(rows, syncnet, landmarker, offline, models_dir, quiet) -> dict:
    """:func:`talkhead.train.syncnet_rows` with the CLI's SyncNet, landmarker and progress bars."""
    from .train import syncnet_rows

    total = sum(p is not None for v in rows.values() for p in v)
    with syncnet_scoring(syncnet, landmarker, offline, models_dir, "auto", quiet, total=total, label="SyncNet",
                         failed="not scored") as (model, detect, bars, on_video):
        return syncnet_rows(model, rows, detect=detect, progress=bars, on_video=on_video)


def load_eval_pairs(generated: Path, ground_truth: Path, split: Optional[str] = None):
    """Match generated sequences to ground-truth clips by clip id.

    ``generated`` is a training-data folder (``manifest.json``) or a folder of ``<clip id>.npz`` files
    holding ``keypoints (T,K,6)`` or the ``--save-keypoints`` arrays ``kp_driving_value (T,K,2)`` +
    ``kp_driving_jacobian (T,K,2,2)`` (``K``: the keypoint space's count, 10 for FOMM).

    Returns:
        ``(generated, ground_truth)``: two equally long lists of mappings with ``id`` (the clip id) and
        ``keypoints``, plus ``logfbank`` and ``source`` (the manifest's source, e.g. a video path) for
        the ground truth.

    Raises:
        InputError: a folder is missing, or no generated sequence matches a ground-truth clip.
    """
    from .keypoints import load_keypoints_npz
    from .train.data import iter_clips

    truth = {info.id: {"id": info.id, "source": info.source, "keypoints": kp, "logfbank": lf}
             for info, kp, lf in iter_clips(ground_truth, split)}
    if (generated / "manifest.json").is_file():
        gen = {info.id: kp for info, kp, _ in iter_clips(generated)}
    elif generated.is_dir():
        gen = {}
        for path in sorted(generated.glob("*.npz")):
            with np.load(path) as z:
                packed = np.array(z["keypoints"]) if "keypoints" in z else None
                saved = "kp_driving_value" in z
            if packed is not None:
                gen[path.stem] = packed
            elif saved:
                gen[path.stem] = load_keypoints_npz(path).pack().numpy()
    else:
        raise InputError(f"generated keypoints folder not found: {generated}")
    ids = [i for i in truth if i in gen]
    if not ids:
        raise InputError(f"no generated sequence in {generated} matches a clip id of {ground_truth}")
    return [{"id": i, "keypoints": gen[i]} for i in ids], [truth[i] for i in ids]
