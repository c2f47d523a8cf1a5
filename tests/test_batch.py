"""Batch runs: the four ways to list pairs, collision-free output names, the report, every pair's
failure recorded (the batch goes on), --skip-existing resuming a killed batch, SIGTERM cleanup.

Fast tests drive :func:`talkhead.batch.run_batch` with a fake pipeline; the end-to-end ones run the
CLI on real photos (examples/astronaut.png and variants) and real speech with the tiny models.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from talkhead.batch import (BatchItem, BatchReport, Pair, collect_pairs, find_pairs, plan_outputs, read_pairs_csv,
                            run_batch)
from talkhead.errors import InputError, OutputError
from helpers import (ASTRONAUT, SPEECH, FakePipeline, assert_clean_error, assert_terminated_cleanly, offline_args,
                     probe, run_cli, speech_excerpt, subprocess_env, wait_for)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def rows(report: Path) -> list[dict]:
    return [json.loads(line) for line in report.read_text().splitlines()]


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def speech_1s(tmp_path_factory) -> Path:
    """The first second of the real speech clip (25 frames: keeps the end-to-end tests short)."""
    return speech_excerpt(tmp_path_factory.mktemp("speech") / "announcement.wav", 1.0)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Real-photo variants of skimage's astronaut: the original, mirrored, and slightly darker."""
    import imageio.v3 as iio

    img = iio.imread(ASTRONAUT)[..., :3]
    d = tmp_path_factory.mktemp("photos")
    iio.imwrite(d / "front.png", img)
    iio.imwrite(d / "mirror.png", img[:, ::-1])
    iio.imwrite(d / "dark.jpg", (img * 0.8).astype(np.uint8), quality=95)
    return d


# ------------------------------------------------------------------------------------------- naming (fast)
def test_shared_speech_names_outputs_after_photos(tmp_path):
    pairs = [Pair(Path("/p/a.png"), Path("/s/talk.wav")), Pair(Path("/p/b.jpg"), Path("/s/talk.wav"))]
    planned = plan_outputs(pairs, tmp_path, "auto")
    assert [p.output.name for p in planned] == ["a.mp4", "b.mp4"]


def test_shared_photo_names_outputs_after_speech(tmp_path):
    pairs = [Pair(Path("/p/me.png"), Path("/s/one.wav")), Pair(Path("/p/me.png"), Path("/s/two.flac"))]
    assert [p.output.name for p in plan_outputs(pairs, tmp_path, "auto")] == ["one.mp4", "two.mp4"]


def test_both_varying_gives_photo__speech_and_csv_output_wins(tmp_path):
    pairs = [Pair(Path("/p/a.png"), Path("/s/x.wav")), Pair(Path("/p/b.png"), Path("/s/y.wav")),
             Pair(Path("/p/c.png"), Path("/s/c.wav")), Pair(Path("/p/a.png"), Path("/s/y.wav"), tmp_path / "mine.mp4")]
    assert [p.output.name for p in plan_outputs(pairs, tmp_path, "auto")] == \
        ["a__x.mp4", "b__y.mp4", "c.mp4", "mine.mp4"]


def test_names_are_stable_across_runs(tmp_path):
    pairs = [Pair(Path("/p/a.png"), Path("/s/x.wav")), Pair(Path("/p/b.png"), Path("/s/x.wav"))]
    assert plan_outputs(pairs, tmp_path) == plan_outputs(list(pairs), tmp_path)


def test_collision_is_refused_up_front_listing_the_pairs(tmp_path):
    pairs = [Pair(Path("/p/a.png"), Path("/s/talk.wav")), Pair(Path("/q/a.jpg"), Path("/s/talk.wav")),
             Pair(Path("/p/b.png"), Path("/s/talk.wav"))]
    with pytest.raises(InputError) as err:
        plan_outputs(pairs, tmp_path)
    msg = str(err.value)
    assert "a.mp4" in msg and "a.png + talk.wav" in msg and "a.jpg + talk.wav" in msg and "b.png" not in msg


def test_output_equal_to_an_input_is_refused(tmp_path):
    audio = tmp_path / "talk.wav"
    audio.write_bytes(b"RIFF")
    with pytest.raises(OutputError, match="is the input"):
        plan_outputs([Pair(tmp_path / "a.png", audio, audio)], tmp_path)


def test_collect_pairs_modes(tmp_path, photos, speech_1s):
    speeches = tmp_path / "speeches"
    speeches.mkdir()
    shutil.copy(speech_1s, speeches / "hello.wav")
    shutil.copy(speech_1s, speeches / "bye.flac")
    (speeches / "notes.txt").write_text("ignored")
    pairs, naming = collect_pairs(photos, speech_1s)
    assert naming == "image" and [p.image.name for p in pairs] == ["dark.jpg", "front.png", "mirror.png"]
    pairs, naming = collect_pairs(photos / "front.png", speeches)
    assert naming == "audio" and [p.audio.name for p in pairs] == ["bye.flac", "hello.wav"]
    with pytest.raises(InputError, match="--pairs"):
        collect_pairs(photos, None)


def test_find_pairs_lists_unmatched_files_with_a_reason(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "aud").mkdir()
    for name in ("alice.png", "carol.png"):
        (tmp_path / "img" / name).write_bytes(b"x")
    for name in ("alice.wav", "dave.wav"):
        (tmp_path / "aud" / name).write_bytes(b"x")
    pairs = find_pairs(tmp_path / "img", tmp_path / "aud")
    assert [(p.image and p.image.name, p.audio and p.audio.name) for p in pairs] == \
        [("alice.png", "alice.wav"), ("carol.png", None), (None, "dave.wav")]
    assert "no speech file named carol" in pairs[1].note and "no photo named dave" in pairs[2].note


def test_csv_with_non_utf8_bytes_and_quoted_commas(tmp_path):
    csv = tmp_path / "pairs.csv"
    csv.write_bytes(b'image,audio\n"a, b.png",caf\xe9.wav\n')
    (pair,) = read_pairs_csv(csv)
    assert pair.image.name == "a, b.png"
    assert os.fsencode(pair.audio.name) == b"caf\xe9.wav"


# ------------------------------------------------------------------------------------------- running (fast)
def test_every_failure_is_recorded_and_the_batch_goes_on(tmp_path):
    from talkhead.errors import NoFaceError

    pairs = [Pair(Path(f"/p/{s}.png"), Path("/s/talk.wav")) for s in "abcde"]
    fake = FakePipeline({"b": NoFaceError("no face in b.png"), "c": RuntimeError("boom\nsecond line"),
                         "d": ValueError("array must not contain infs or NaNs")})
    report = tmp_path / "report.jsonl"
    with BatchReport(report) as sink:
        items = run_batch(fake, pairs, tmp_path / "out", naming="image", report=sink)
    assert [i.status for i in items] == ["done", "failed", "failed", "failed", "done"]
    assert items[1].reason == "no face in b.png"
    assert items[2].reason.startswith("unexpected error (RuntimeError: boom)") and "--debug" in items[2].reason
    assert "ValueError" in items[3].reason
    got = rows(report)
    assert [r["status"] for r in got] == ["done", "failed", "failed", "failed", "done"]
    assert got[0]["output"].endswith("a.mp4") and got[0]["frames"] == 25 and got[1]["frames"] is None
    assert set(got[0]) == {"image", "audio", "output", "status", "reason", "seconds", "frames"}


def test_report_keeps_rows_of_an_interrupted_batch_csv(tmp_path):
    import csv

    pairs = [Pair(Path(f"/p/{s}.png"), Path("/s/talk.wav")) for s in "abc"]
    fake = FakePipeline({"b": KeyboardInterrupt()})
    report = tmp_path / "report.csv"
    with pytest.raises(KeyboardInterrupt), BatchReport(report) as sink:
        run_batch(fake, pairs, tmp_path / "out", naming="image", report=sink)
    with open(report, newline="") as fh:
        got = list(csv.DictReader(fh))
    assert [(Path(r["output"]).name, r["status"]) for r in got] == [("a.mp4", "done")]
    assert fake.calls == ["a.mp4", "b.mp4"]


def test_skip_existing_only_skips_outputs_of_earlier_runs(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.mp4").write_bytes(b"earlier run")
    pairs = [Pair(Path(f"/p/{s}.png"), Path("/s/talk.wav")) for s in "ab"]
    fake = FakePipeline()
    items = run_batch(fake, pairs, out, naming="image", skip_existing=True)
    assert [i.status for i in items] == ["skipped", "done"]
    assert (out / "a.mp4").read_bytes() == b"earlier run" and fake.calls == ["b.mp4"]


def test_report_suffix_checked(tmp_path):
    with pytest.raises(InputError, match="jsonl"):
        BatchReport(tmp_path / "report.txt")


# ------------------------------------------------------------------------------------------- CLI, real models
def test_photos_dir_with_one_speech_non_utf8_name_and_unexpected_error(tiny_models_dir, photos, speech_1s,
                                                                       tmp_path, monkeypatch):
    """Four photos, one speech: the 2nd has a non-UTF-8 name, the 3rd hits an unexpected error; the
    4th still renders, the summary is printed, the report has one row per pair."""
    from talkhead import pipeline as pipeline_mod

    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(photos / "front.png", folder / "1_front.png")
    odd = os.fsdecode(b"2_caf\xe9.png")  # Latin-1 bytes: not UTF-8
    shutil.copy(photos / "mirror.png", folder / odd)
    import imageio.v3 as iio

    broken = iio.imread(photos / "front.png")
    broken[0, 0] ^= 1  # not 1_front.png's content, which the source cache would find (no find_face call)
    iio.imwrite(folder / "3_broken.png", broken)
    shutil.copy(photos / "dark.jpg", folder / "4_dark.jpg")
    real = pipeline_mod.Pipeline.find_face

    def find_face(self, image, source="image"):
        if source.endswith("3_broken.png"):
            raise ZeroDivisionError("float division by zero")
        return real(self, image, source)

    monkeypatch.setattr(pipeline_mod.Pipeline, "find_face", find_face)
    out, report = tmp_path / "out", tmp_path / "report.jsonl"
    result = run_cli("batch", folder, speech_1s, "-o", out, "--report", report, *offline_args(tiny_models_dir))
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    got = rows(report)
    assert "done 3, skipped 0, failed 1" in result.output, [r["reason"] for r in got]
    assert [r["status"] for r in got] == ["done", "done", "failed", "done"]
    assert "unexpected error (ZeroDivisionError" in got[2]["reason"]
    assert [r["frames"] for r in got] == [25, 25, None, 25]
    assert sorted(os.fsencode(p.name) for p in out.iterdir()) == \
        [b"1_front.mp4", b"2_caf\xe9.mp4", b"4_dark.mp4"]  # named after the photos; nothing hidden left
    assert probe(out / "4_dark.mp4").num_frames == 25
    assert probe(out / os.fsdecode(b"2_caf\xe9.mp4")).num_frames == 25


def test_one_photo_with_speech_dir_named_after_speech(tiny_models_dir, photos, speech_1s, tmp_path):
    speeches = tmp_path / "speeches"
    speeches.mkdir()
    shutil.copy(speech_1s, speeches / "hello.wav")
    samples, sr = sf.read(speech_1s)
    sf.write(speeches / "bye.flac", samples[::-1], sr)  # other words, same length
    out, report = tmp_path / "out", tmp_path / "report.csv"
    result = run_cli("batch", photos / "front.png", speeches, "-o", out, "--report", report,
                     *offline_args(tiny_models_dir))
    assert result.exit_code == 0, result.output
    assert "done 2, skipped 0, failed 0" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["bye.mp4", "hello.mp4"]
    for name in ("bye.mp4", "hello.mp4"):
        info = probe(out / name)
        assert info.num_frames == 25 and info.audio_duration_s == pytest.approx(1.0, abs=0.03)
    assert report.read_text().splitlines()[0] == "image,audio,output,status,reason,seconds,frames"


def test_cli_collision_refused_before_models_load(photos, speech_1s, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(photos / "front.png", folder / "me.png")
    shutil.copy(photos / "dark.jpg", folder / "me.jpg")
    # an empty models dir: loading models would fail offline; the collision must be reported first
    result = run_cli("batch", folder, speech_1s, "-o", tmp_path / "out", *offline_args(tmp_path / "no-models"))
    assert_clean_error(result, "would be written by more than one pair", "me.mp4 <- ", "me.png", "me.jpg")
    assert not (tmp_path / "out").exists()


def test_animate_output_equal_to_input_audio_refused_even_with_overwrite(photos, speech_1s, tmp_path):
    audio = tmp_path / "talk.wav"
    shutil.copy(speech_1s, audio)
    before = audio.read_bytes()
    result = run_cli("animate", photos / "front.png", audio, "-o", audio, "--overwrite",
                     *offline_args(tmp_path / "none"))
    assert_clean_error(result, "is the input file", "talk.wav")
    assert audio.read_bytes() == before


def test_unexpected_error_is_one_line_not_a_traceback(photos, speech_1s, tmp_path, monkeypatch):
    from talkhead import pipeline as pipeline_mod

    def broken(self, *args, **kwargs):
        raise ValueError("operands could not be broadcast together")

    monkeypatch.setattr(pipeline_mod.Pipeline, "__init__", broken)
    result = run_cli("animate", photos / "front.png", speech_1s, "-o", tmp_path / "o.mp4", "--quiet")
    assert_clean_error(result, "unexpected error", "(ValueError: operands could not be broadcast together)", code=1)


# ------------------------------------------------------------------------------------------- processes
@pytest.fixture(scope="module")
def speech_8s(tmp_path_factory) -> Path:
    return speech_excerpt(tmp_path_factory.mktemp("long") / "long.wav", 8.0)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_during_rendering_leaves_nothing_and_exits_143(tiny_models_dir, photos, speech_8s, tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    cmd = [sys.executable, "-m", "talkhead", "animate", str(photos / "front.png"), str(speech_8s),
           "-o", str(out_dir / "clip.mp4"), "--batch-size", "1", *offline_args(tiny_models_dir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=subprocess_env())
    try:
        wait_for(lambda: any(".partial" in n for n in os.listdir(out_dir)), proc=proc)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert_terminated_cleanly(proc.returncode, err, out_dir)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_killed_batch_resumes_only_missing_pairs_and_sweeps_its_partial(tiny_models_dir, photos, speech_1s,
                                                                        tmp_path):
    out, report = tmp_path / "out", tmp_path / "report.jsonl"
    cmd = [sys.executable, "-m", "talkhead", "batch", str(photos), str(speech_1s), "-o", str(out),
           "--batch-size", "1", *offline_args(tiny_models_dir)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=subprocess_env())
    try:
        # dark.jpg renders first; kill -9 while the second pair (front.png) is being written
        wait_for(lambda: out.is_dir() and "dark.mp4" in os.listdir(out)
                  and any(".partial" in n for n in os.listdir(out)), proc=proc)
        proc.kill()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert any(".partial" in n for n in os.listdir(out))  # SIGKILL leaves the hidden file...
    finished = {n for n in os.listdir(out) if not n.startswith(".")}
    assert "mirror.mp4" not in finished  # (the kill came while front.png or mirror.png was rendering)
    mtimes = {n: (out / n).stat().st_mtime_ns for n in finished}
    result = run_cli("batch", photos, speech_1s, "-o", out, "--skip-existing", "--report", report,
                     *offline_args(tiny_models_dir))
    assert result.exit_code == 0, result.output
    got = {Path(r["output"]).name: r["status"] for r in rows(report)}
    assert got == {n: "skipped" if n in finished else "done" for n in ("dark.mp4", "front.mp4", "mirror.mp4")}
    assert {n: (out / n).stat().st_mtime_ns for n in finished} == mtimes
    assert hidden(out) == []  # ...which the next run into the folder sweeps (its owner is dead)
    assert sorted(os.listdir(out)) == ["dark.mp4", "front.mp4", "mirror.mp4"]


def test_one_photo_with_many_speech_files_finds_its_face_once(tmp_path):
    """`batch PHOTO SPEECH_DIR`: the photo is decoded and its face found once for the whole batch."""
    from talkhead.options import AnimateOptions
    from talkhead.pipeline import Pipeline

    from helpers import ToyRenderer, astronaut_face, toy_motion

    speeches = tmp_path / "speeches"
    speeches.mkdir()
    for name in ("a", "b", "c"):
        shutil.copy(SPEECH, speeches / f"{name}.wav")
    calls = []
    pipe = Pipeline(AnimateOptions(frame="crop"), renderer=ToyRenderer(), motion=toy_motion,
                    landmarker=lambda image: calls.append(1) or astronaut_face(image))
    jobs, naming = collect_pairs(ASTRONAUT, speeches)
    items = run_batch(pipe, jobs, tmp_path / "out", naming=naming)
    assert [i.status for i in items] == ["done"] * 3 and len(calls) == 1


# ------------------------------------------------------------------------------------------- pairs CSV rules
def _jobs_csv(tmp_path, text: str, *, bom: bool = False) -> Path:
    path = tmp_path / "jobs" / "jobs.csv"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


def test_pairs_csv_with_a_byte_order_mark_keeps_its_header(tmp_path):
    """Excel's "CSV UTF-8" starts with a BOM: the header is still recognised and skipped."""
    pairs = read_pairs_csv(_jobs_csv(tmp_path, "image,audio,output\na.png,a.wav,first.mp4\n", bom=True))
    assert len(pairs) == 1 and pairs[0].image == tmp_path / "jobs" / "a.png" and pairs[0].origin.endswith("jobs.csv:2")


def test_pairs_csv_with_a_nul_byte_is_one_line_naming_the_line(tmp_path):
    csv = _jobs_csv(tmp_path, "image,audio\na.png,a.wav\nb.png,b\x00.wav\n")
    result = run_cli("batch", "--pairs", csv, "-o", tmp_path / "out", *offline_args(tmp_path / "models"))
    assert_clean_error(result, "not a CSV row", "jobs.csv:3")


def test_relative_outputs_go_inside_the_output_folder_and_may_not_leave_it(tmp_path):
    out = tmp_path / "out"
    inside = plan_outputs(read_pairs_csv(_jobs_csv(tmp_path, "a.png,a.wav,x.mp4\n")), out)
    assert inside[0].output == out / "x.mp4"  # relative to -o, not to the CSV's folder
    absolute = plan_outputs(read_pairs_csv(_jobs_csv(tmp_path, f"a.png,a.wav,{tmp_path / 'elsewhere.mp4'}\n")), out)
    assert absolute[0].output == tmp_path / "elsewhere.mp4"
    for escape in ("../x.mp4", "sub/../../x.mp4"):
        with pytest.raises(InputError, match=r"jobs.csv:1: output .* leaves the output folder .* inside -o"):
            plan_outputs(read_pairs_csv(_jobs_csv(tmp_path, f"a.png,a.wav,{escape}\n")), out)


@pytest.mark.parametrize("target", ["csv", "other"])
def test_an_output_never_replaces_the_pairs_csv_or_a_file_that_is_not_a_video(tmp_path, target):
    keep = tmp_path / "notes.txt"
    keep.write_text("mine")
    csv = _jobs_csv(tmp_path, "")
    csv.write_text(f"{ASTRONAUT},{SPEECH},{csv if target == 'csv' else keep}\n")
    before = {p: p.read_bytes() for p in (csv, keep)}
    result = run_cli("batch", "--pairs", csv, "-o", tmp_path / "out", "--overwrite", *offline_args(tmp_path / "models"))
    assert_clean_error(result, "pairs/report file" if target == "csv" else "is not a video", "jobs.csv:1")
    assert {p: p.read_bytes() for p in (csv, keep)} == before


def test_csv_report_cells_are_never_spreadsheet_formulas(tmp_path):
    import csv as csv_module

    report = tmp_path / "report.csv"
    with BatchReport(report) as sink:
        sink.write(BatchItem(Pair(Path("/p/a.png"), Path("/s/a.wav")), Path("/o/a.mp4"), "failed", "=1+1"))
        sink.write(BatchItem(Pair(Path("/p/b.png"), Path("/s/b.wav")), Path("/o/b.mp4"), "failed", "-2+3"))
    with open(report, newline="") as fh:
        reasons = [row["reason"] for row in csv_module.DictReader(fh)]
    assert reasons == ["'=1+1", "'-2+3"]


def test_shards_together_write_what_one_unsharded_run_writes(tmp_path):
    """`--shard I/N`: N runs with the same arguments write the same names, as many, as one run."""
    from talkhead.batch import shard_pairs

    pairs = [Pair(Path(f"/p/{s}.png"), Path("/s/talk.wav")) for s in "abcdefg"]
    whole = FakePipeline()
    run_batch(whole, pairs, tmp_path / "whole", naming="image")
    parts = []
    for i in range(3):
        fake = FakePipeline()
        run_batch(fake, pairs, tmp_path / "sharded", naming="image", shard=(i, 3))
        parts.append(fake.calls)
    assert sorted(sum(parts, [])) == sorted(whole.calls) == [f"{s}.mp4" for s in "abcdefg"]
    assert all(parts) and len(set(map(tuple, parts))) == 3  # disjoint, none empty
    assert sorted(p.name for p in (tmp_path / "sharded").iterdir()) == sorted(p.name for p in (tmp_path / "whole").iterdir())
    with pytest.raises(InputError, match="--shard must be I/N"):
        shard_pairs(pairs, (3, 3))
    result = run_cli("batch", "/nowhere", "/nowhere", "-o", tmp_path / "o", "--shard", "2/2")
    assert_clean_error(result, "--shard must be I/N")


# ------------------------------------------------------------------------------------------- fast batch
def _toy_pipeline(calls: list, **options):
    """A ToyRenderer pipeline whose landmarker records each photo it searches (``calls``); a photo
    whose pixels are all one value has no face."""
    from talkhead.options import AnimateOptions
    from talkhead.pipeline import Pipeline, SourceCache

    from helpers import ToyRenderer, astronaut_face, toy_motion

    def landmarker(image):
        calls.append(int(image[0, 0, 0]))
        return [] if image.min() == image.max() else astronaut_face(image)

    cache = options.pop("source_cache", None)
    cache = SourceCache(2) if cache is None else cache  # (an empty cache is falsy: it has a length)
    return Pipeline(AnimateOptions(**{"frame": "crop", **options}), renderer=ToyRenderer(), motion=toy_motion,
                    landmarker=landmarker, source_cache=cache)


def test_source_cache_hits_only_the_same_photo_content_under_the_same_options(tmp_path):
    """The key is the file's bytes + the options that shape the prepared source: a renamed copy hits, the
    same name with new content misses, and so do another frame / max-size / face index, or another
    renderer; a hit is the very prepared source (keypoints and encoding not recomputed)."""
    from talkhead.options import AnimateOptions
    from talkhead.pipeline import Pipeline, SourceCache

    from helpers import ToyRenderer, toy_motion

    calls: list = []
    cache = SourceCache(capacity=8)  # every entry below stays
    pipe = _toy_pipeline(calls, source_cache=cache)
    photo, copy = tmp_path / "me.png", tmp_path / "copy.png"
    shutil.copy(ASTRONAUT, photo)
    shutil.copy(ASTRONAUT, copy)
    first = pipe.prepare_source(photo)
    assert first.encoded and len(calls) == 1
    again = pipe.prepare_source(copy)
    assert len(calls) == 1 and again.encoding is first.encoding and again.kp_source is first.kp_source
    assert again.photo.path == copy  # messages name the file of this run
    import imageio.v3 as iio

    img = iio.imread(ASTRONAUT)[..., :3]
    stat = photo.stat()
    iio.imwrite(photo, np.ascontiguousarray(img[:, ::-1]))  # new content, same name and time stamp
    os.utime(photo, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    changed = pipe.prepare_source(photo)
    assert len(calls) == 2 and not np.array_equal(changed.photo.image, first.photo.image)
    # other options, same cache and same components
    lm, renderer = pipe.landmarker, pipe.renderer
    for opts in (AnimateOptions(frame="full"), AnimateOptions(frame="full", max_size=300),
                 AnimateOptions(frame="crop", face_index=0)):
        n = len(calls)
        Pipeline(opts, renderer=renderer, motion=toy_motion, landmarker=lm, source_cache=cache).prepare_source(copy)
        assert len(calls) == n + 1, opts
    other = Pipeline(AnimateOptions(frame="crop"), renderer=ToyRenderer(), motion=toy_motion, landmarker=lm,
                     source_cache=cache)
    n = len(calls)
    assert other.prepare_source(copy).encoding is not first.encoding and len(calls) == n + 1


def test_error_of_the_item_prepared_ahead_is_that_items_only(tmp_path):
    """Pairs b (no face), c (an unexpected error in the landmarker) and d (undecodable speech) fail while
    they are prepared in the thread, during the render of the pair before; each is reported for itself,
    in order, and every other pair is written whole."""
    from talkhead.errors import NoFaceError

    calls: list = []
    pipe = _toy_pipeline(calls)
    real = pipe.landmarker

    def landmarker(image):
        if image[0, 0, 0] == 7:
            raise ZeroDivisionError("float division by zero")
        return real(image)

    pipe.landmarker = landmarker
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(ASTRONAUT, src / "a.png")
    blank_value = {"b": 128, "c": 7}
    import imageio.v3 as iio

    img = iio.imread(ASTRONAUT)[..., :3].copy()
    for name, value in blank_value.items():
        pic = img.copy() if name == "c" else np.full_like(img, value)
        pic[0, 0] = value
        iio.imwrite(src / f"{name}.png", pic)
    shutil.copy(ASTRONAUT, src / "d.png")
    shutil.copy(ASTRONAUT, src / "e.png")
    for name in "abce":
        shutil.copy(SPEECH, src / f"{name}.wav")
    (src / "d.wav").write_bytes(b"RIFF not really a wav file")
    jobs, naming = collect_pairs(src, src)
    seen = []
    items = run_batch(pipe, jobs, tmp_path / "out", naming=naming, on_item=seen.append)
    assert [i.status for i in items] == ["done", "failed", "failed", "failed", "done"]
    assert [i.pair.image.stem for i in seen] == list("abcde")
    assert isinstance(items[1].error, NoFaceError) and "b.png" in items[1].reason
    assert items[2].reason.startswith("unexpected error (ZeroDivisionError")
    assert "d.wav" in items[3].reason
    assert sorted(os.listdir(tmp_path / "out")) == ["a.mp4", "e.mp4"]
    for name in ("a.mp4", "e.mp4"):
        assert probe(tmp_path / "out" / name).num_frames == items[0].frames


def test_overlapped_batch_writes_what_each_item_writes_alone(tiny_models_dir, photos, speech_1s, tmp_path,
                                                             monkeypatch):
    """Three pairs (one photo twice, then another; three different speeches) through the overlapped batch
    with the tiny models: the frames given to ffmpeg, the decoded videos and every keypoint set driving the
    renderer equal those of ``animate`` run for each pair alone; the repeated photo is searched and encoded
    once."""
    import soundfile as sf

    from talkhead.fomm import FOMM
    from talkhead.options import AnimateOptions
    from talkhead.pipeline import Pipeline, SourceCache, animate
    from talkhead.video import VideoWriter, to_uint8_frames

    from helpers import decode_frames

    samples, sr = sf.read(speech_1s)
    speeches = [tmp_path / "one.wav", tmp_path / "two.wav", tmp_path / "three.wav"]
    sf.write(speeches[0], samples, sr)
    sf.write(speeches[1], samples[::-1], sr)
    sf.write(speeches[2], np.roll(samples, len(samples) // 3), sr)
    images = [photos / "front.png", photos / "front.png", photos / "mirror.png"]
    opts = AnimateOptions(models_dir=tiny_models_dir, landmarker="dlib", offline=True, device="cpu")

    written: dict = {}
    driven: list = []
    counts = {"faces": 0, "encodings": 0}
    real_write, real_render, real_encode = VideoWriter.write, FOMM.render, FOMM.encode_source
    real_find = Pipeline.find_face

    def write(self, frames):
        written.setdefault(self.path.name, []).append(to_uint8_frames(frames).copy())
        return real_write(self, frames)

    def render(self, encoding, kp_driving):
        driven.append((encoding.kp_source.value.clone(), kp_driving.value.clone(), kp_driving.jacobian.clone()))
        return real_render(self, encoding, kp_driving)

    def encode_source(self, *a, **kw):
        counts["encodings"] += 1
        return real_encode(self, *a, **kw)

    def find_face(self, *a, **kw):
        counts["faces"] += 1
        return real_find(self, *a, **kw)

    monkeypatch.setattr(VideoWriter, "write", write)
    monkeypatch.setattr(FOMM, "render", render)
    monkeypatch.setattr(FOMM, "encode_source", encode_source)
    monkeypatch.setattr(Pipeline, "find_face", find_face)

    alone = tmp_path / "alone"
    alone.mkdir()
    for k, (img, sp) in enumerate(zip(images, speeches)):
        animate(img, sp, alone / f"item{k}.mp4", opts)
    alone_written, alone_driven = written, driven
    written, driven = {}, []
    counts.update(faces=0, encodings=0)

    pairs = [Pair(img, sp, tmp_path / "batch" / f"item{k}.mp4") for k, (img, sp) in enumerate(zip(images, speeches))]
    items = run_batch(Pipeline(opts, source_cache=SourceCache(2)), pairs, tmp_path / "batch")
    assert [i.status for i in items] == ["done"] * 3, [i.reason for i in items]
    assert counts == {"faces": 2, "encodings": 2}  # front.png once for its two pairs
    assert sorted(written) == sorted(alone_written) == ["item0.mp4", "item1.mp4", "item2.mp4"]
    for name in written:
        assert np.array_equal(np.concatenate(written[name]), np.concatenate(alone_written[name])), name
        assert np.array_equal(decode_frames(tmp_path / "batch" / name)[1], decode_frames(alone / name)[1]), name
    assert len(driven) == len(alone_driven) and sum(len(d[1]) for d in driven) == 75  # 3 x 25 frames
    for got, want in zip(driven, alone_driven):
        assert all(torch_equal(a, b) for a, b in zip(got, want))


def torch_equal(a, b) -> bool:
    import torch

    return a.shape == b.shape and bool(torch.equal(a, b))
