"""Batch rendering: pair photos with speech files (or, with ``--reenact``, driving videos) and render each
pair with one loaded :class:`Pipeline`.

Four ways to say what to render (see :func:`collect_pairs`):

* ``PHOTOS_DIR SPEECH_FILE``: every photo of the folder with the one speech file (output: the photo's
  stem) - "these five photos, this one announcement";
* ``PHOTO_FILE SPEECH_DIR``: the one photo with every speech file of the folder (the speech's stem);
* ``PHOTOS_DIR SPEECH_DIR``: files paired by stem, as the reference tool does (``execute_model.main``:
  ``<stem>.wav`` goes with ``<stem>.png``); unmatched files are listed as skipped, not failed;
* ``--pairs CSV``: ``image,audio[,output]`` rows.

Output names never collide: they are unique within a run and depend only on the inputs, so a rerun
with ``--skip-existing`` finds exactly the outputs of the pairs already done (:func:`plan_outputs`). Two
pairs that would still write one file (e.g. ``a.png`` and ``a.jpg``) are an error before any work, and
no pair's output is ever replaced by another pair of the same run, with or without ``overwrite``.

A failing pair - whatever the exception - is recorded with a one-line reason and the batch goes on
(:func:`run_batch`); only Ctrl-C / SIGTERM stop it. :class:`BatchReport` writes one JSON-lines or CSV
row per pair as the batch goes.

Per-pair overhead (:func:`run_batch`): the same photo content is decoded, searched, cropped and encoded once
(the pipeline's :class:`talkhead.pipeline.SourceCache`), the next pair is prepared in a thread while one
renders, and the previous pair's ffmpeg finishes in another; each video is the one its pair gives alone.
Measured: ``benchmarks/README.md``, "Batch: per-item overhead".
"""
from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

from .errors import InputError, TalkheadError
from .io import _same_file, check_not_input, printable, unexpected_reason

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
AUDIO_EXTS = (".wav", ".flac", ".mp3", ".m4a", ".aac", ".ogg", ".opus")
VIDEO_EXTS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")
"""Driving videos ``batch --reenact`` pairs with the photos."""
DRIVINGS = {"speech": (AUDIO_EXTS, "speech", "speech file"), "video": (VIDEO_EXTS, "driving videos", "driving video")}
"""What moves the faces of a batch -> ``(file suffixes, folder word, file word)``: speech (``animate``) or a
driving video (``--reenact``)."""
REPORT_SUFFIXES = (".jsonl", ".csv")
REPORT_FIELDS = ("image", "audio", "output", "status", "reason", "seconds", "frames")
"""Columns of a batch report, in order (see :class:`BatchReport`)."""
SCORE_FIELDS = ("lse_c", "lse_d", "av_offset", "score_error")
"""Columns a report with a scorer adds (``batch --report FILE --score``): SyncNet LSE-C, LSE-D and
the AV offset in frames (+ = audio late) of each written video, or why it could not be scored."""

NAMINGS = ("auto", "image", "audio", "stem")
"""Output naming rules of :func:`plan_outputs`."""


@dataclass(frozen=True)
class Pair:
    """One job: ``image`` + ``audio`` -> ``output``.

    Attributes:
        image / audio: the inputs; one is ``None`` for a file left unmatched in the folders-by-stem
            mode (such a pair is reported as skipped with ``note`` as its reason).
        output: the MP4; ``None`` until :func:`plan_outputs` names it (a CSV ``output`` column sets it:
            relative to the output folder until planned).
        note: why an unmatched pair is skipped.
        origin: where the pair was listed (``jobs.csv:3``), for messages; empty for folder pairs.
    """

    image: Optional[Path]
    audio: Optional[Path]
    output: Optional[Path] = None
    note: str = ""
    origin: str = ""

    @property
    def runnable(self) -> bool:
        """Both inputs are present."""
        return self.image is not None and self.audio is not None

    @property
    def name(self) -> str:
        """The pair's name in reports: the output's stem once named, else the audio's (else the image's)."""
        return printable((self.output or self.audio or self.image).stem)

    @property
    def label(self) -> str:
        """``photo.png + speech.wav`` (printable), for messages."""
        parts = [p.name for p in (self.image, self.audio) if p is not None]
        return printable(" + ".join(parts))


@dataclass
class BatchItem:
    """Outcome of one pair.

    Attributes:
        pair: the job.
        output: the MP4 path (``None`` for unmatched files).
        status: ``done``, ``skipped`` or ``failed``.
        reason: one printable line saying why (empty when done).
        seconds: wall time spent on the pair, seconds.
        frames: frames written (25 fps), ``None`` unless done.
        error: the exception of a failed pair (for ``--debug`` tracebacks); not reported.
    """

    pair: Pair
    output: Optional[Path]
    status: str
    reason: str = ""
    seconds: float = 0.0
    frames: Optional[int] = None
    error: Optional[BaseException] = None

    def row(self) -> dict:
        """The report row: :data:`REPORT_FIELDS` -> printable strings / numbers (``None`` when absent)."""
        def show(p):
            return printable(p) if p is not None else None

        return {"image": show(self.pair.image), "audio": show(self.pair.audio), "output": show(self.output),
                "status": self.status, "reason": self.reason, "seconds": round(self.seconds, 3),
                "frames": self.frames}


# ------------------------------------------------------------------------------------------- finding
def _files(folder: Path, exts: Iterable[str], what: str) -> list[Path]:
    """Visible regular files of ``folder`` whose suffix is in ``exts``, sorted by name (file-system bytes)."""
    if not folder.is_dir():
        raise InputError(f"{what} folder not found: {printable(folder)}")
    try:
        entries = list(folder.iterdir())
    except OSError as err:
        raise InputError(f"cannot list the {what} folder {printable(folder)}: {err.strerror or err}") from err
    found = [p for p in entries if p.suffix.lower() in exts and not p.name.startswith(".") and p.is_file()]
    return sorted(found, key=lambda p: os.fsencode(p.name))


def find_pairs(images_dir: str | Path, audio_dir: str | Path, driving: str = "speech") -> list[Pair]:
    """Pair files by stem (``alice.png`` with ``alice.wav``, or with ``alice.mp4`` for
    ``driving="video"``), sorted by stem.

    A stem with several photos or speech files gives every combination (which then collide in
    :func:`plan_outputs`, an error naming them). A file without a partner becomes a Pair with
    ``image`` or ``audio`` ``None`` and a ``note``, reported as skipped.

    Raises:
        InputError: a folder does not exist, or neither holds a single usable file.
    """
    exts, folder_word, file_word = DRIVINGS[driving]
    images, audios = Path(images_dir), Path(audio_dir)
    by_stem: dict[str, tuple[list[Path], list[Path]]] = {}
    for p in _files(images, IMAGE_EXTS, "photos"):
        by_stem.setdefault(p.stem, ([], []))[0].append(p)
    for p in _files(audios, exts, folder_word):
        by_stem.setdefault(p.stem, ([], []))[1].append(p)
    if not by_stem:
        raise InputError(f"no photos ({', '.join(IMAGE_EXTS)}) in {printable(images)} and no {file_word}s "
                         f"({', '.join(exts)}) in {printable(audios)}")
    pairs = []
    for stem in sorted(by_stem, key=os.fsencode):
        imgs, auds = by_stem[stem]
        if not auds:
            pairs += [Pair(i, None, note=f"no {file_word} named {printable(stem)}.* in {printable(audios)}")
                      for i in imgs]
        elif not imgs:
            pairs += [Pair(None, a, note=f"no photo named {printable(stem)}.* in {printable(images)}")
                      for a in auds]
        else:
            pairs += [Pair(i, a) for i in imgs for a in auds]
    return pairs


def photos_with_speech(photos_dir: str | Path, speech: str | Path) -> list[Pair]:
    """Every photo of ``photos_dir`` with the one ``speech`` file (named after each photo).

    Raises:
        InputError: the folder does not exist or holds no photo.
    """
    photos = _files(Path(photos_dir), IMAGE_EXTS, "photos")
    if not photos:
        raise InputError(f"no photos ({', '.join(IMAGE_EXTS)}) in {printable(photos_dir)}")
    return [Pair(p, Path(speech)) for p in photos]


def photo_with_speeches(photo: str | Path, speech_dir: str | Path, driving: str = "speech") -> list[Pair]:
    """The one ``photo`` with every speech file (``driving="video"``: driving video) of ``speech_dir``
    (named after each of them).

    Raises:
        InputError: the folder does not exist or holds no such file.
    """
    exts, folder_word, file_word = DRIVINGS[driving]
    speeches = _files(Path(speech_dir), exts, folder_word)
    if not speeches:
        raise InputError(f"no {file_word}s ({', '.join(exts)}) in {printable(speech_dir)}")
    return [Pair(Path(photo), a) for a in speeches]


def read_pairs_csv(path: str | Path) -> list[Pair]:
    """Read ``image,audio[,output]`` rows: a header row naming ``image`` is skipped, ``#`` starts a
    comment row, a UTF-8 byte-order mark (Excel's "CSV UTF-8") is ignored.

    Path rule: ``image`` and ``audio`` (speech, or driving videos with ``--reenact``) are relative to
    the CSV's folder unless absolute; ``output`` is relative to the output folder (``-o``) and must stay
    inside it (:func:`plan_outputs`), unless absolute. The file is UTF-8; bytes that are not (a file name
    in another encoding) pass through to the paths unchanged (PEP 383).

    Raises:
        InputError: missing file, a row with fewer than two fields, or a row the CSV reader cannot parse
            (a NUL byte): ``file:line: ...``.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"pairs file not found: {printable(path)}")
    pairs = []

    def resolve(s: str) -> Optional[Path]:
        return (Path(s) if Path(s).is_absolute() else path.parent / s) if s else None

    with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as fh:
        reader = csv.reader(fh)
        lineno = 0
        while True:
            try:
                row = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                raise InputError(f"{printable(path)}:{reader.line_num}: not a CSV row ({exc})") from None
            lineno = reader.line_num
            if any("\x00" in c for c in row):
                raise InputError(f"{printable(path)}:{lineno}: not a CSV row (a NUL byte)")
            row = [c.strip() for c in row]
            if not row or not any(row) or row[0].startswith("#"):
                continue
            if not pairs and row[0].lower() == "image":
                continue
            if len(row) < 2 or not row[0] or not row[1]:
                raise InputError(f"{printable(path)}:{lineno}: expected image,audio[,output], "
                                 f"got {printable(','.join(row))!r}")
            output = Path(row[2]) if len(row) > 2 and row[2] else None
            pairs.append(Pair(resolve(row[0]), resolve(row[1]), output, origin=f"{printable(path)}:{lineno}"))
    if not pairs:
        raise InputError(f"pairs file {printable(path)} lists no pairs")
    return pairs


def collect_pairs(images: Optional[Path], audio: Optional[Path], pairs_csv: Optional[Path] = None,
                  driving: str = "speech") -> tuple[list[Pair], str]:
    """The batch's pairs from the command line, and the naming rule that fits them.

    ``driving`` (a key of :data:`DRIVINGS`): what ``audio`` holds, speech files or (``"video"``,
    ``batch --reenact``) driving videos; each pair's ``audio`` is then that file.

    ``pairs_csv`` wins; otherwise ``images``/``audio`` are each a folder or a file:
    folder + file -> :func:`photos_with_speech` (naming ``"image"``); file + folder ->
    :func:`photo_with_speeches` (``"audio"``); folder + folder -> :func:`find_pairs` (``"stem"``);
    file + file -> that one pair (``"audio"``, like ``animate``).

    Returns:
        ``(pairs, naming)``, naming one of :data:`NAMINGS`.

    Raises:
        InputError: arguments missing, a path that does not exist, or an empty folder.
    """
    if pairs_csv is not None:
        if images is not None or audio is not None:
            raise InputError("give either PHOTOS SPEECH or --pairs FILE.csv, not both")
        return read_pairs_csv(pairs_csv), "auto"
    _, folder_word, file_word = DRIVINGS[driving]
    if images is None or audio is None:
        raise InputError(f"give PHOTOS (a folder or one photo) and {folder_word.upper().replace(' ', '_')} (a folder "
                         f"or one {file_word}), or --pairs FILE.csv")
    for p, what in ((images, "photo"), (audio, file_word)):
        if not p.exists():
            raise InputError(f"{what} path not found: {printable(p)}")
    if images.is_dir() and audio.is_dir():
        return find_pairs(images, audio, driving), "stem"
    if images.is_dir():
        return photos_with_speech(images, audio), "image"
    if audio.is_dir():
        return photo_with_speeches(images, audio, driving), "audio"
    return [Pair(images, audio)], "audio"


# ------------------------------------------------------------------------------------------- naming
def _key(path: Path) -> str:
    """Identity of an output path for collision checks: absolute, normalised and case-folded (two
    names differing only in case are one file on macOS/Windows file systems)."""
    return os.path.normcase(os.path.abspath(path)).casefold()


def default_stem(pair: Pair, naming: str, shared_audio: bool, shared_image: bool) -> str:
    """Output stem of a runnable pair without an explicit output.

    ``"image"``: the photo's stem; ``"audio"``: the speech's; ``"stem"``: the common stem (folders
    by stem). ``"auto"`` (CSV): the common stem when photo and speech stems are equal; the photo's
    stem when every pair shares one speech file (``shared_audio``); the speech's stem when every
    pair shares one photo (``shared_image``); else ``<photo stem>__<speech stem>``.
    """
    img, aud = pair.image.stem, pair.audio.stem
    if naming == "image":
        return img
    if naming in ("audio", "stem"):
        return aud
    if img == aud:
        return img
    if shared_audio:
        return img
    if shared_image:
        return aud
    return f"{img}__{aud}"


VIDEO_OUTPUT_SUFFIXES = (".mp4", ".mov", ".mkv", ".m4v")
"""An existing output file with another suffix is never replaced by a batch, even with ``--overwrite``."""


def plan_outputs(pairs: list[Pair], out_dir: str | Path, naming: str = "auto",
                 protected: Iterable[str | Path] = ()) -> list[Pair]:
    """Give every runnable pair its output (``out_dir/<stem>.mp4``, see :func:`default_stem`; an
    explicit ``output`` is kept) and check, before any work, that no two pairs write one file and
    that no output is an input of the batch.

    Names depend only on the pairs, so the same inputs give the same names on every run (what
    ``--skip-existing`` relies on). A relative ``output`` (from a pairs CSV) is taken inside ``out_dir``
    and may not leave it (``../``); an absolute one is kept. No output may replace a ``protected`` file
    (the pairs CSV, the report), an input of the batch, or an existing file that is not a video
    (:data:`VIDEO_OUTPUT_SUFFIXES`), with or without ``overwrite``.

    Returns:
        The pairs with ``output`` set (unmatched ones unchanged).

    Raises:
        InputError: two or more pairs map to one output (each collision is listed with its pairs), a
            relative output leaves ``out_dir``, or an output would replace a protected or non-video file.
        OutputError: an output is one of the batch's photos or speech files.
    """
    if naming not in NAMINGS:
        raise ValueError(f"naming must be one of {NAMINGS}, not {naming!r}")
    out_dir = Path(out_dir)
    runnable = [p for p in pairs if p.runnable]
    one = len(runnable) == 1
    shared_audio = not one and len({_key(p.audio) for p in runnable}) == 1
    shared_image = not one and len({_key(p.image) for p in runnable}) == 1
    planned = []
    base = os.path.abspath(out_dir)
    for p in pairs:
        if p.runnable and p.output is None:
            stem = p.audio.stem if one and naming == "auto" else default_stem(p, naming, shared_audio, shared_image)
            p = replace(p, output=out_dir / f"{stem}.mp4")
        elif p.runnable and not p.output.is_absolute():
            inside = os.path.normpath(os.path.join(base, p.output))
            if os.path.commonpath([base, inside]) != base or inside == base:
                where = f"{p.origin}: " if p.origin else ""
                raise InputError(f"{where}output {printable(p.output)!r} leaves the output folder "
                                 f"{printable(out_dir)!r} (a relative output is taken inside -o; give an "
                                 "absolute path to write elsewhere)")
            p = replace(p, output=Path(inside))
        planned.append(p)

    by_output: dict[str, list[Pair]] = {}
    for p in planned:
        if p.runnable:
            by_output.setdefault(_key(p.output), []).append(p)
    clashes = [group for group in by_output.values() if len(group) > 1]
    if clashes:
        lines = "; ".join(f"{printable(g[0].output.name)} <- " + ", ".join(q.label for q in g) for g in clashes)
        raise InputError(f"{len(clashes)} output name(s) would be written by more than one pair: {lines}. "
                         "Rename the inputs or give each pair an output in a --pairs CSV")
    inputs = {_key(x): x for p in planned for x in (p.image, p.audio) if x is not None}
    for p in planned:
        if p.runnable and _key(p.output) in inputs:
            check_not_input(p.output, inputs[_key(p.output)])  # raises OutputError naming both
        if p.runnable:
            for x in (p.image, p.audio):  # same file through a link
                if _same_file(p.output, x):
                    check_not_input(p.output, x)
    guarded = {_key(Path(x)): Path(x) for x in protected}
    for p in planned:
        if not p.runnable:
            continue
        where = f"{p.origin}: " if p.origin else ""
        if _key(p.output) in guarded or any(_same_file(p.output, x) for x in guarded.values()):
            raise InputError(f"{where}output {printable(p.output)!r} is the batch's own pairs/report file; "
                             "choose another output")
        if os.path.lexists(p.output) and p.output.suffix.lower() not in VIDEO_OUTPUT_SUFFIXES:
            raise InputError(f"{where}output {printable(p.output)!r} exists and is not a video; a batch never "
                             "replaces it (choose an output ending in .mp4)")
    return planned


# ------------------------------------------------------------------------------------------- report
class BatchReport:
    """Rows of a batch as they finish: JSON lines (``.jsonl``) or CSV (``.csv``) with the columns
    :data:`REPORT_FIELDS`; each row is flushed and fsync-ed at once, so a crash keeps the rows so far.

    The file is created (replaced if present) when the report is opened. Use as a context manager or
    call :meth:`close`.

    Args:
        path: the ``.jsonl`` or ``.csv`` file.
        scorer: ``scorer(video) -> SyncScores`` (e.g. :func:`talkhead.score.score_video` with a loaded
            SyncNet), or ``None``. When given, the rows gain :data:`SCORE_FIELDS`, filled for each
            ``done`` item (a :class:`TalkheadError` while scoring leaves the figures empty and its
            line in ``score_error``; the batch goes on).

    Raises:
        InputError: (constructor) another suffix, or the folder does not exist.
        OutputError: (constructor) the file cannot be created.
    """

    def __init__(self, path: str | Path, scorer: Optional[Callable[[Path], Any]] = None):
        from .errors import OutputError

        self.path = Path(path)
        self.kind = self.path.suffix.lower()
        if self.kind not in REPORT_SUFFIXES:
            raise InputError(f"--report must end in .jsonl or .csv, not {printable(self.path.name)!r}")
        if not self.path.parent.is_dir():
            raise InputError(f"--report folder does not exist: {printable(self.path.parent)}")
        try:
            self._fh = open(self.path, "w", encoding="utf-8", newline="")
        except OSError as err:
            raise OutputError(f"cannot write the report {printable(self.path)!r}: {err.strerror or err}") from err
        self._csv = None
        self.scorer = scorer
        self.fields = REPORT_FIELDS + (SCORE_FIELDS if scorer is not None else ())
        if self.kind == ".csv":
            self._csv = csv.DictWriter(self._fh, fieldnames=self.fields)
            self._csv.writeheader()
            self._sync()

    def write(self, item: BatchItem) -> None:
        """Append ``item``'s row and push it to disk."""
        row = item.row()
        if self.scorer is not None:
            row.update(self._scores(item))
        if self._csv is not None:
            self._csv.writerow({k: _csv_cell(v) for k, v in row.items()})
        else:
            self._fh.write(json.dumps(row) + "\n")
        self._sync()

    def _scores(self, item: BatchItem) -> dict:
        out: dict[str, Any] = dict.fromkeys(SCORE_FIELDS)
        if item.status != "done" or item.output is None:
            return out
        try:
            scores = self.scorer(Path(item.output))
        except TalkheadError as exc:
            out["score_error"] = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            return out
        out.update(lse_c=round(float(scores.lse_c), 4), lse_d=round(float(scores.lse_d), 4),
                   av_offset=int(scores.offset))
        return out

    def _sync(self) -> None:
        self._fh.flush()
        try:
            os.fsync(self._fh.fileno())
        except OSError:
            pass

    def close(self) -> None:
        """Close the report file (idempotent; rows already written stay)."""
        if not self._fh.closed:
            self._fh.close()

    def __enter__(self) -> "BatchReport":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def shard_pairs(planned: list[Pair], shard: tuple[int, int]) -> list[Pair]:
    """Share ``I`` of ``N`` of a planned batch: every ``N``-th pair from the ``I``-th, in the batch's own
    order (sorted file names or CSV rows), so the split is deterministic and needs no shared state.

    Raises:
        InputError: not ``0 <= I < N`` (:func:`talkhead.options.parse_shard`).
    """
    from .options import parse_shard

    index, count = parse_shard(shard)
    return planned[index::count]


def _csv_cell(value) -> object:
    """A report value as a CSV cell: ``None`` -> empty; text a spreadsheet would run as a formula
    (starting with ``= + - @``, tab or carriage return) gets a leading ``'`` (OWASP's CSV-injection rule)."""
    if value is None:
        return ""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


# ------------------------------------------------------------------------------------------- running
def run_batch(pipeline, pairs: list[Pair], out_dir: str | Path, *, skip_existing: bool = False,
              naming: str = "auto", on_item: Callable[[BatchItem], None] | None = None,
              on_start: Callable[[Pair], None] | None = None, progress=None,
              report: BatchReport | None = None, driving: str = "speech",
              protected: Iterable[str | Path] = (), shard: Optional[tuple[int, int]] = None,
              prepare_ahead: bool = True) -> list[BatchItem]:
    """Render every pair with one loaded ``pipeline`` (a :class:`talkhead.pipeline.Pipeline`): each
    pair's ``audio`` drives its photo as speech (:class:`talkhead.pipeline.SpeechMotion`) or, with
    ``driving="video"``, as a driving video (:class:`talkhead.reenact.VideoMotion`).

    Outputs are planned first (:func:`plan_outputs`: collisions are an error before any work).

    Overlap (``prepare_ahead``, with a pipeline that has ``prepare``/``start_render``): while a pair renders,
    one thread prepares the next pair (:meth:`~talkhead.pipeline.Pipeline.prepare`: input checks, audio scan,
    photo decode, face, crop and - with speech - its keypoints and source encoding, through the pipeline's
    :class:`~talkhead.pipeline.SourceCache`, and its first MS-Sync keypoint window), and another finishes the previous one (ffmpeg encoding what it
    still holds, the file moved into place: :meth:`~talkhead.pipeline.RenderedRun.complete`). Frames are
    rendered on the calling thread, one pair at a time, in order; each pair's video is what it would be
    alone. Items are reported in order, from the finishing thread (``on_item``, ``report``); ``on_start`` is
    called on the calling thread when a pair starts rendering (or fails to prepare).
    ``prepare_ahead=False``: each pair prepared, rendered and finished in turn.

    Args:
        pairs: the jobs (unmatched ones are reported as ``skipped`` with their note).
        out_dir: where pairs without an explicit output go (created if missing).
        skip_existing: leave pairs whose output existed *before this run* (resume an interrupted
            batch); a file this run wrote is never a reason to skip.
        naming: see :func:`plan_outputs`.
        on_item: called with each finished :class:`BatchItem`; on_start: with each pair before it runs.
        progress: passed to the pipeline's rendering for each pair.
        driving: ``"speech"`` or ``"video"`` (:data:`DRIVINGS`).
        protected: files no output may replace (the pairs CSV, the report; see :func:`plan_outputs`).
        shard: ``(I, N)``: render only share ``I`` of ``N`` (:func:`shard_pairs`): N machines given the same
            arguments and ``I = 0..N-1`` write together exactly what one unsharded run writes.
        report: receives each item as it finishes.
        prepare_ahead: overlap the next pair's preparation and the previous pair's finish with rendering.

    Returns:
        One :class:`BatchItem` per pair, in order (``seconds``: from the pair's start on the calling thread
        to its end; with the overlap its preparation ran before that, during the previous pair). A pair's
        error of any type - a :class:`TalkheadError` or an unexpected one (named as such) - makes it
        ``failed`` and the batch goes on; only ``KeyboardInterrupt`` (Ctrl-C, or SIGTERM through the CLI)
        stops it: the pair rendering is discarded, the one finishing is finished and reported first.

    Raises:
        InputError / OutputError: colliding outputs, an output that is an input, or an ``out_dir``
            that cannot be created; with speech, a motion model and a renderer of different keypoint
            spaces (:meth:`talkhead.pipeline.Pipeline.check_motion_pairing`).
    """
    from .errors import OutputError
    from .pipeline import SpeechMotion
    from .reenact import VideoMotion

    motion_of = {"speech": SpeechMotion, "video": VideoMotion}[driving]
    out_dir = Path(out_dir)
    planned = plan_outputs(pairs, out_dir, naming, protected)  # names from the whole batch, so shards agree
    if shard is not None:
        planned = shard_pairs(planned, shard)
    check_pairing = getattr(pipeline, "check_motion_pairing", None)  # a Pipeline has it (stand-ins may not)
    if driving == "speech" and check_pairing is not None:  # motion and renderer spaces differ: one line, before any pair
        check_pairing()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create the output folder {printable(out_dir)!r}: {err.strerror or err}") from err
    existed = {_key(p.output) for p in planned if p.runnable and os.path.lexists(p.output)}
    written: set[str] = set()
    items: list[BatchItem] = []

    def settled(pair: Pair) -> Optional[BatchItem]:
        """The item of a pair that is not rendered (unmatched, already written, skipped), else ``None``."""
        if not pair.runnable:
            return BatchItem(pair, None, "skipped", pair.note or "unmatched file")
        if _key(pair.output) in written:  # unreachable after plan_outputs; kept as the last guard
            return BatchItem(pair, pair.output, "failed", "another pair of this run already wrote "
                             f"{printable(pair.output)!r}; it is not replaced")
        if skip_existing and _key(pair.output) in existed and os.path.lexists(pair.output):
            return BatchItem(pair, pair.output, "skipped", "output exists from an earlier run (--skip-existing)")
        return None

    def failed(pair: Pair, exc: BaseException) -> BatchItem:
        if isinstance(exc, TalkheadError):
            return BatchItem(pair, pair.output, "failed", printable(str(exc) or type(exc).__name__), error=exc)
        return BatchItem(pair, pair.output, "failed", unexpected_reason(exc), error=exc)

    def emit(item: BatchItem, t0: float, t1: Optional[float] = None) -> None:
        """Record a finished item (``seconds``: ``t0`` to ``t1``, default now), in the report and ``on_item``."""
        if item.status != "skipped" and item.output is not None and os.path.lexists(item.output):
            written.add(_key(item.output))
        item.seconds = (time.perf_counter() if t1 is None else t1) - t0
        items.append(item)
        if report is not None:
            report.write(item)
        if on_item:
            on_item(item)

    overlap = prepare_ahead and all(hasattr(pipeline, name) for name in ("prepare", "start_render"))
    if not overlap:
        for pair in planned:
            t0 = time.perf_counter()
            item = settled(pair)
            if item is None:
                if on_start:
                    on_start(pair)
                try:
                    result = pipeline.run(pair.image, motion_of(pair.audio), pair.output, keep_keypoints=False,
                                          progress=progress)
                    item = BatchItem(pair, pair.output, "done", frames=int(result.num_frames))
                except Exception as exc:  # noqa: BLE001 - any error of one pair must not end the batch
                    item = failed(pair, exc)
            emit(item, t0)
        return items
    return _run_overlapped(pipeline, planned, motion_of, settled, failed, emit, items, on_start, progress,
                           encode_ahead=driving == "speech")


def _run_overlapped(pipeline, planned: list[Pair], motion_of, settled, failed, emit, items: list[BatchItem],
                    on_start, progress, *, encode_ahead: bool) -> list[BatchItem]:
    """:func:`run_batch`'s loop with the next pair prepared and the previous one finished in threads.

    ``encode_ahead``: the thread also computes the photo's keypoints and source encoding (speech: the
    render loop uses the renderer's generator only; a driving video's frames go through its detector on the
    calling thread, so then they are computed there)."""
    from concurrent.futures import Future, ThreadPoolExecutor

    preparer = ThreadPoolExecutor(1, thread_name_prefix="talkhead-prepare")
    finisher = ThreadPoolExecutor(1, thread_name_prefix="talkhead-finish")  # one thread: items stay in order
    emitted: list[Future] = []

    def prepare(pair: Pair):
        return pipeline.prepare(pair.image, motion_of(pair.audio), pair.output, keep_keypoints=False,
                                encode=encode_ahead, prefetch=encode_ahead)

    def complete(pair: Pair, rendered, t0: float) -> None:
        try:
            item = BatchItem(pair, pair.output, "done", frames=int(rendered.complete().num_frames))
        except Exception as exc:  # noqa: BLE001 - any error of one pair must not end the batch
            item = failed(pair, exc)
        emit(item, t0)

    def submit(fn, *args) -> None:
        emitted.append(finisher.submit(fn, *args))
        for fut in emitted:  # an error of on_item / the report ends the batch, as without the overlap
            if fut.done() and fut.exception() is not None:
                raise fut.exception()

    todo = [(k, pair) for k, pair in enumerate(planned)]
    ahead: dict[int, Future] = {}
    rendered = None
    try:
        for pos, (k, pair) in enumerate(todo):
            t0 = time.perf_counter()
            item = settled(pair)
            if item is not None:
                ahead.pop(k, None)
                submit(emit, item, t0, time.perf_counter())
                continue
            if on_start:
                on_start(pair)
            try:
                fut = ahead.pop(k, None)
                prepared = fut.result() if fut is not None else prepare(pair)
            except Exception as exc:  # noqa: BLE001
                submit(emit, failed(pair, exc), t0, time.perf_counter())
                continue
            nxt = next(((j, p) for j, p in todo[pos + 1:] if settled(p) is None), None)
            if nxt is not None and nxt[0] not in ahead:
                ahead[nxt[0]] = preparer.submit(prepare, nxt[1])
            try:
                rendered = pipeline.start_render(prepared, progress=progress)
            except Exception as exc:  # noqa: BLE001
                submit(emit, failed(pair, exc), t0, time.perf_counter())
                continue
            submit(complete, pair, rendered, t0)
            rendered = None
    except BaseException:
        if rendered is not None:
            rendered.abort()
        for fut in ahead.values():
            fut.cancel()
        preparer.shutdown(wait=False, cancel_futures=True)
        finisher.shutdown(wait=True)  # the pair finishing is finished and reported
        raise
    preparer.shutdown(wait=True)
    finisher.shutdown(wait=True)
    for fut in emitted:
        fut.result()  # an error of on_item / the report
    return items


__all__ = ["Pair", "BatchItem", "BatchReport", "IMAGE_EXTS", "AUDIO_EXTS", "VIDEO_EXTS", "DRIVINGS", "REPORT_FIELDS", "NAMINGS",
           "find_pairs", "photos_with_speech", "photo_with_speeches", "read_pairs_csv", "collect_pairs",
           "default_stem", "plan_outputs", "shard_pairs", "run_batch"]
