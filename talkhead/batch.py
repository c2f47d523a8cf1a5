"""Batch animation: pair images with audio files and render each pair with one loaded :class:`Pipeline`.

Pairing follows the reference tool (``execute_model.main``): an audio file ``<stem>.<ext>`` goes with
the image of the same stem in the images folder. A CSV with ``image,audio[,output]`` rows may be given
instead. A failing pair is reported and skipped, never fatal.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Optional

from .errors import InputError, TalkheadError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
AUDIO_EXTS = (".wav", ".flac", ".mp3", ".m4a", ".aac", ".ogg", ".opus")


@dataclass(frozen=True)
class Pair:
    """One job: ``image`` + ``audio`` -> ``output`` (``None`` = ``OUT_DIR/<audio stem>.mp4``)."""

    image: Optional[Path]
    audio: Optional[Path]
    output: Optional[Path] = None

    @property
    def name(self) -> str:
        """The pair's name in reports and its default output stem: the audio's stem (else the image's)."""
        return (self.audio or self.image).stem


@dataclass
class BatchItem:
    """Outcome of one pair: ``status`` is ``done``, ``skipped`` or ``failed``; ``reason`` says why."""

    pair: Pair
    output: Optional[Path]
    status: str
    reason: str = ""


def _files(folder: Path, exts: Iterable[str]) -> dict[str, Path]:
    if not folder.is_dir():
        raise InputError(f"not a folder: {folder}")
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in exts and not p.name.startswith("."):
            found.setdefault(p.stem, p)
    return found


def find_pairs(images_dir: str | Path, audio_dir: str | Path) -> list[Pair]:
    """Pair files by stem. Returns every stem seen, sorted; an unmatched one has ``image`` or ``audio`` None.

    Raises:
        InputError: a folder does not exist.
    """
    images = _files(Path(images_dir), IMAGE_EXTS)
    audios = _files(Path(audio_dir), AUDIO_EXTS)
    return [Pair(images.get(stem), audios.get(stem)) for stem in sorted(set(images) | set(audios))]


def read_pairs_csv(path: str | Path) -> list[Pair]:
    """Read ``image,audio[,output]`` rows (a header row naming ``image`` is skipped; relative paths are
    taken relative to the CSV's folder).

    Raises:
        InputError: missing file or a row with fewer than two fields.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"pairs file not found: {path}")
    pairs = []
    with open(path, newline="", encoding="utf-8") as fh:
        for lineno, row in enumerate(csv.reader(fh), 1):
            row = [c.strip() for c in row]
            if not row or not any(row) or row[0].startswith("#"):
                continue
            if lineno == 1 and row[0].lower() == "image":
                continue
            if len(row) < 2:
                raise InputError(f"{path}:{lineno}: expected image,audio[,output], got {','.join(row)!r}")
            resolve = lambda s: (Path(s) if Path(s).is_absolute() else path.parent / s) if s else None
            pairs.append(Pair(resolve(row[0]), resolve(row[1]), resolve(row[2]) if len(row) > 2 else None))
    return pairs


def run_batch(pipeline, pairs: list[Pair], out_dir: str | Path, *, skip_existing: bool = False,
              on_item: Callable[[BatchItem], None] | None = None, progress=None) -> list[BatchItem]:
    """Animate every pair with one loaded ``pipeline`` (a :class:`talkhead.pipeline.Pipeline`).

    Args:
        out_dir: where ``<stem>.mp4`` goes for pairs without an explicit output (created if missing).
        skip_existing: leave pairs whose output already exists (resume an interrupted batch).
        on_item: called with each finished :class:`BatchItem`.
        progress: passed to ``Pipeline.animate`` for each pair.

    Returns:
        One :class:`BatchItem` per pair. Bad pairs are ``failed`` with the error's message; only
        ``KeyboardInterrupt`` stops the batch.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    items = []
    for pair in pairs:
        output = pair.output or out_dir / f"{pair.name}.mp4"
        if pair.image is None or pair.audio is None:
            item = BatchItem(pair, output, "failed", "no audio with this stem" if pair.audio is None
                             else "no image with this stem")
        elif skip_existing and output.exists():
            item = BatchItem(pair, output, "skipped", "output exists")
        else:
            try:
                pipeline.animate(pair.image, pair.audio, output, progress=progress)
                item = BatchItem(pair, output, "done")
            except TalkheadError as exc:
                item = BatchItem(pair, output, "failed", str(exc))
        items.append(item)
        if on_item:
            on_item(item)
    return items
