"""``talkhead score``: SyncNet LSE-C / LSE-D / AV offset of whole videos, the store's ``syncnet``
model, ``doctor``'s optional models and ``batch --report --score``.

The talking clip is the real astronaut photo moved a few pixels per frame (a face dlib finds) with
real speech, encoded at 30 fps so the 25-fps resampling is exercised; the SyncNet file is tiny,
random-weight, in the released layout (legacy format, no BatchNorm counters), built with the
parity fixture's :func:`seeded_state_dict`. The offset sign through the whole video path is checked
with the fixture's injected :class:`LevelCode` model on a lossless clip whose audio is delayed.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
import skimage.data
import soundfile as sf
import torch

import talkhead.syncnet
from talkhead import store
from talkhead.errors import CheckpointError, NoFaceError
from talkhead.score import SCORE_VF, VideoScore, face_boxes, fill_track, score_video, summary
from talkhead.syncnet import SyncNetConfig, expected_layout, read_state_dict
from helpers import syncnet_fixture_script
from helpers import ASTRONAUT, SPEECH, assert_clean_error, run_cli, sha256_of, speech_excerpt, states_of, write_video
from test_store import server  # noqa: F401 - the loopback HTTP server fixture

pytestmark = pytest.mark.usefixtures("new_process")  # each test starts like a new process: nothing hashed yet

SYNC = Path(__file__).parent / "data" / "syncnet"
REL = "syncnet/syncnet_v2.model"


MAKE = syncnet_fixture_script()


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> dict[str, Path]:
    """The clips: a talking face (2.4 s at 30 fps + speech), a face-less one (skimage coffee +
    speech), one without audio, one of 4 frames, and the tiny SyncNet file by its released name."""
    d = tmp_path_factory.mktemp("score")
    photo = np.asarray(skimage.data.astronaut())
    rng = np.random.default_rng(0)
    jitter = rng.integers(-5, 6, size=(72, 2))
    talk = [photo[20 + dy:276 + dy, 100 + dx:356 + dx] for dy, dx in jitter]
    speech = speech_excerpt(d / "speech.wav", 2.4)
    coffee = np.asarray(skimage.data.coffee())[:256, :256]
    out = {
        "talk": write_video(d / "talk.mp4", talk, 30, speech),
        "coffee": write_video(d / "coffee.mp4", [coffee] * 60, 25, speech),
        "mute": write_video(d / "mute.mp4", talk[:50], 25),
        "short": write_video(d / "short.mp4", talk[:4], 25, speech_excerpt(d / "short.wav", 0.16)),
    }
    weights = {k: v for k, v in MAKE.seeded_state_dict(expected_layout(SyncNetConfig.tiny()), seed=3).items()
               if not k.endswith("num_batches_tracked")}
    (d / "released").mkdir()
    out["syncnet"] = d / "released" / "syncnet_v2.model"
    torch.save(weights, out["syncnet"], _use_new_zipfile_serialization=False)
    return out


# ------------------------------------------------------------------------------------------ the track
def test_fill_track_interpolates_gaps_and_holds_the_ends():
    a, b = np.array([10.0, 20, 110, 120]), np.array([30.0, 20, 130, 120])
    boxes = fill_track([None, a, None, None, None, b, None])
    np.testing.assert_allclose(boxes[0], a)
    np.testing.assert_allclose(boxes[3], (a + b) / 2)  # halfway between frames 1 and 5
    np.testing.assert_allclose(boxes[2], a + (b - a) / 4)
    np.testing.assert_allclose(boxes[6], b)
    with pytest.raises(NoFaceError):
        fill_track([None, None])


def test_face_boxes_follow_one_face_on_every_resampled_frame(media):
    """30 fps in, 25 fps out: 72 frames -> 60 boxes; with two faces the track keeps the one it
    started on (IoU with the previous box), and a frame without a face is interpolated."""
    calls = []
    left, right = np.array([0.0, 0, 50, 50]), np.array([150.0, 0, 250, 100])  # right is larger

    def detect(frame):
        calls.append(frame.shape)
        n = len(calls)
        if n == 1:
            return np.stack([left])
        if n == 10:
            return np.zeros((0, 4))
        return np.stack([right, left + (n - 1)])  # left drifts by 1 px a frame

    boxes = face_boxes(media["talk"], detect)
    assert boxes.shape == (60, 4) and calls[0] == (256, 256, 3) and len(calls) == 60
    np.testing.assert_allclose(boxes[:, 0], np.arange(60))  # never jumped to the larger face
    assert SCORE_VF == "fps=25"


def test_face_boxes_without_a_face_is_one_error(media):
    with pytest.raises(NoFaceError, match="no face"):
        face_boxes(media["coffee"], lambda frame: np.zeros((0, 4)))


# ------------------------------------------------------------------------------------------ offsets
def test_audio_delay_through_the_video_path_gives_k(tmp_path):
    """A lossless video whose frame t is flat grey of the level LevelCode reads from audio frame t,
    its audio delayed by k frames in the container: score_video finds offset +k (positive = audio
    late), and the aligned clip scores offset 0 with the lowest LSE-D."""
    speech, rate = sf.read(SPEECH, dtype="int16")
    from talkhead.syncnet.mfcc import mfcc
    from talkhead.syncnet.scoring import audio_windows

    rows = mfcc(speech)
    count = (rows.shape[0] - 20) // 4 + 1
    per_window = MAKE.LevelCode().audio_levels(audio_windows(rows, 0, count))
    levels = np.concatenate([per_window[:, 0].numpy(), per_window[-1, 1:].numpy()]).astype(np.uint8)
    frames = MAKE.level_frames(levels, size=64)
    box = np.array([8.0, 8, 56, 56])
    results = {}
    for k in (0, 4, -3):
        wav = tmp_path / f"a{k}.wav"
        sf.write(wav, np.roll(speech, 640 * k), rate, subtype="PCM_16")
        video = tmp_path / f"v{k}.mkv"
        writer = imageio_ffmpeg.write_frames(str(video), (64, 64), fps=25, codec="ffv1", pix_fmt_out="bgr0",
                                             macro_block_size=1, audio_path=str(wav), audio_codec="pcm_s16le",
                                             ffmpeg_log_level="error", output_params=["-shortest"])
        writer.send(None)
        for f in frames:
            writer.send(np.ascontiguousarray(f))
        writer.close()
        results[k] = score_video(MAKE.LevelCode(), video, detect=lambda frame: box[None])
    for k, item in results.items():
        assert item.scores.offset == k, (k, item.scores.offset)
    assert results[0].scores.lse_d < min(results[4].scores.lse_d, results[-3].scores.lse_d)


# ------------------------------------------------------------------------------------------ the command
def test_score_command_figures_json_and_bad_inputs(tmp_path, media):
    """The talking clip is scored (figures on stdout and in the JSON); each bad video is one line and
    the others are still scored; exit code 1."""
    out = tmp_path / "scores.json"
    missing = tmp_path / "missing.mp4"
    videos = [media["talk"], media["coffee"], media["mute"], media["short"], missing]
    result = run_cli("score", *videos, "--syncnet", media["syncnet"], "--json", out, "--landmarker", "dlib",
                     "--offline", "--device", "cpu", "--quiet")
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output + result.stderr
    data = json.loads(out.read_text())
    rows = {Path(r["video"]).name: r for r in data["videos"]}
    assert list(rows) == [v.name for v in videos]
    talk = rows["talk.mp4"]
    assert talk["ok"] and talk["error"] is None
    assert set(talk) >= {"lse_c", "lse_d", "offset_frames", "offset_ms", "num_windows", "num_frames"}
    assert talk["num_frames"] == 60  # 2.4 s resampled to 25 fps
    assert talk["num_windows"] == min(60, int(talk["duration_s"] * 16000) // 640) - 5
    assert talk["lse_d"] > 0 and talk["lse_c"] >= 0 and -15 <= talk["offset_frames"] <= 15
    assert talk["offset_ms"] == 40 * talk["offset_frames"]
    assert f"{talk['lse_c']:.3f}" in result.stdout and f"{talk['lse_d']:.3f}" in result.stdout
    reasons = {name: rows[name]["error"] for name in rows if name != "talk.mp4"}
    assert all(not rows[n]["ok"] for n in reasons)
    assert "no face" in reasons["coffee.mp4"]
    assert "no audio" in reasons["mute.mp4"]
    assert "too short" in reasons["short.mp4"]
    assert "not found" in reasons["missing.mp4"]
    failed = [ln for ln in result.stderr.splitlines() if ln.startswith("failed")]
    assert len(failed) == 4 and all("\n" not in r for r in reasons.values())
    assert data["mean"] == {"videos": 5, "scored": 1, "failed": 4, "lse_c": talk["lse_c"], "lse_d": talk["lse_d"],
                            "offset_frames": float(talk["offset_frames"]),
                            "abs_offset_frames": float(abs(talk["offset_frames"]))}


def test_score_without_syncnet_names_the_download(tmp_path, media):
    result = run_cli("score", media["talk"], "--models-dir", tmp_path / "models", "--landmarker", "dlib",
                     "--offline", "--device", "cpu", "--quiet")
    assert_clean_error(result, "not installed", "talkhead download syncnet")


def test_score_refuses_a_bad_syncnet_file_in_one_line(tmp_path, media):
    bad = tmp_path / "syncnet_v2.model"
    bad.write_bytes(media["syncnet"].read_bytes()[:5000])
    result = run_cli("score", media["talk"], "--syncnet", bad, "--landmarker", "dlib", "--offline", "--quiet")
    assert_clean_error(result, "truncated")


def test_summary_of_nothing_scored():
    assert summary([VideoScore(Path("a.mp4"), error="x")]) == {
        "videos": 1, "scored": 0, "failed": 1, "lse_c": None, "lse_d": None, "offset_frames": None,
        "abs_offset_frames": None}


# ------------------------------------------------------------------------------------------ the store
@pytest.fixture
def tiny_widths(monkeypatch):
    """The store's SyncNet check reads the widths from the file (so the tiny file passes, as the
    released one does with the released widths)."""
    monkeypatch.setattr(talkhead.syncnet, "read_state_dict",
                        lambda path, **kw: read_state_dict(path, infer_widths=True, **kw))


def test_registry_entry():
    spec = store.REGISTRY["syncnet"]
    assert spec.optional and "syncnet" not in store.default_models() and spec.config is None
    assert "not a commercial licence" in spec.notice
    (f,) = spec.files
    assert f.relpath == REL and f.check is not None
    assert [s.url for s in f.sources] == [
        "https://www.robots.ox.ac.uk/~vgg/software/lipsync/data/syncnet_v2.model",
        "https://huggingface.co/ByteDance/LatentSync-1.6/resolve/main/auxiliary/syncnet_v2.model"]
    assert [(p.algorithm, p.digest, p.size) for p in f.pins] == [
        ("sha256", "961e8696f888fce4f3f3a6c3d5b3267cf5b343100b238e79b2659bff2c605442", 54573114)]
    assert store.registry.sources_of(f, None, "https://m.example")[-1].url == "https://m.example/syncnet/syncnet_v2.model"


def test_from_dir_refuses_a_file_of_other_widths(tmp_path, media):
    """The store checks the released widths: the tiny file is refused in one line, nothing installed."""
    root = tmp_path / "models"
    with pytest.raises(CheckpointError) as info:  # the listing of differences follows the first line
        store.install_from(media["syncnet"].parent, root, names="syncnet")
    first = str(info.value).splitlines()[0]
    assert "not a valid SyncNet v2 file" in first and "wrong shape" in first
    assert not (root / REL).exists()


def test_from_dir_installs_and_records_it(tmp_path, media, tiny_widths):
    """By its released name in the folder: checked, copied, recorded (a hand-installed file need not
    match the published pin), the licence line shown; then score uses the installed file."""
    root = tmp_path / "models"
    result = run_cli("download", "syncnet", "--from-dir", media["syncnet"].parent, "--models-dir", root)
    assert result.exit_code == 0, result.output
    assert "not a commercial licence" in result.output + result.stderr
    assert states_of(store.verify(root, "syncnet")) == {REL: store.VERIFIED}
    record = store.read_store_manifest(root)[REL]
    assert record["size"] == media["syncnet"].stat().st_size and not record.get("pin")
    # the default set is untouched by an optional model
    assert all(st.model != "syncnet" for st in store.verify(tmp_path / "other").values())


@pytest.mark.parametrize("case", ["payload", "nan"])
def test_install_refuses_tampered_or_nan_files(tmp_path, media, tiny_widths, case):
    src = tmp_path / "src"
    src.mkdir()
    if case == "nan":
        weights = torch.load(media["syncnet"], weights_only=True)
        weights["netfclip.0.weight"][0, 0] = float("nan")
        torch.save(weights, src / "syncnet_v2.model")
    else:
        import os
        import pickle

        class Payload:
            def __reduce__(self):
                return (os.system, ("true",))

        (src / "syncnet_v2.model").write_bytes(pickle.dumps({"x": Payload()}))
    with pytest.raises(Exception) as info:
        store.install_from(src, tmp_path / "models", names="syncnet")
    assert ("non-finite" in str(info.value) or "NaN" in str(info.value)) if case == "nan" else \
        "tampered" in str(info.value) or "not allowed" in str(info.value) or "os.system" in str(info.value)
    assert not (tmp_path / "models" / REL).exists()


def test_doctor_lists_syncnet(tmp_path, media, tiny_widths):
    from talkhead.doctor import doctor_report

    root = tmp_path / "models"
    report = doctor_report(root)
    info = report["models"]["optional"]["syncnet"]
    assert info == {"title": "SyncNet v2", "installed": False, "install": "talkhead download syncnet",
                    "notice": store.REGISTRY["syncnet"].notice}
    assert not any("syncnet" in p for p in report["problems"])
    store.install_from(media["syncnet"].parent, root, names="syncnet")
    assert doctor_report(root)["models"]["optional"]["syncnet"]["installed"] is True
    result = run_cli("doctor", "--models-dir", root)
    assert "optional models" in result.stdout and "syncnet (SyncNet" in result.stdout


# ------------------------------------------------------------------------------------------ batch --score
def test_batch_report_score_columns(tmp_path):
    from types import SimpleNamespace

    from talkhead.batch import REPORT_FIELDS, SCORE_FIELDS, BatchItem, BatchReport, Pair
    from talkhead.errors import NoFaceError as NF

    def scorer(path):
        if path.name == "b.mp4":
            raise NF(f"{path}: no face found in any of its 10 frames")
        return SimpleNamespace(lse_c=7.123456, lse_d=6.5, offset=-2)

    pair = Pair(image=Path("p.png"), audio=Path("s.wav"))
    items = [BatchItem(pair, tmp_path / "a.mp4", "done", frames=10), BatchItem(pair, tmp_path / "b.mp4", "done"),
             BatchItem(pair, tmp_path / "c.mp4", "failed", reason="boom")]
    with BatchReport(tmp_path / "r.jsonl", scorer) as rep:
        for it in items:
            rep.write(it)
    rows = [json.loads(ln) for ln in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert list(rows[0]) == list(REPORT_FIELDS + SCORE_FIELDS)
    assert (rows[0]["lse_c"], rows[0]["lse_d"], rows[0]["av_offset"], rows[0]["score_error"]) == (7.1235, 6.5, -2, None)
    assert rows[1]["lse_c"] is None and "no face" in rows[1]["score_error"]
    assert all(rows[2][k] is None for k in SCORE_FIELDS)
    with BatchReport(tmp_path / "plain.csv") as rep:  # without a scorer: the columns as before
        rep.write(items[0])
    assert (tmp_path / "plain.csv").read_text().splitlines()[0] == ",".join(REPORT_FIELDS)


def test_batch_score_needs_report_and_syncnet(tmp_path):
    out = tmp_path / "out"
    result = run_cli("batch", ASTRONAUT, SPEECH, "-o", out, "--score", "--models-dir", tmp_path / "m",
                     "--landmarker", "dlib", "--offline", "--quiet")
    assert_clean_error(result, "--report")
    result = run_cli("batch", ASTRONAUT, SPEECH, "-o", out, "--score", "--report", tmp_path / "r.csv",
                     "--models-dir", tmp_path / "m", "--landmarker", "dlib", "--offline", "--quiet")
    assert_clean_error(result, "not installed", "talkhead download syncnet")


def test_shortest_clips(tmp_path, media):
    """6 frames (one window) are scored, though a 13-frame median filter over 6 boxes would be mostly
    zero padding; 4 frames of video with 1 s of audio are refused as too short (one line)."""
    from talkhead.errors import InputError
    from talkhead.score import load_scorer

    model = load_scorer(media["syncnet"])
    box = np.array([[60.0, 40, 200, 200]])
    six = write_video(tmp_path / "six.mp4", [np.asarray(skimage.data.astronaut())[:256, 100:356]] * 6, 25,
                      speech_excerpt(tmp_path / "six.wav", 0.24))
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message="kernel_size")  # a one-window clip: scipy's note is not shown
        item = score_video(model, six, detect=lambda frame: box)
    assert item.num_frames == 6 and item.scores.num_windows == 1
    four = write_video(tmp_path / "four.mp4", [np.asarray(skimage.data.astronaut())[:256, 100:356]] * 4, 25)
    muxed = tmp_path / "four_long_audio.mp4"
    speech_excerpt(tmp_path / "one.wav", 1.0)
    import subprocess

    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-i", str(four), "-i",
                    str(tmp_path / "one.wav"), "-c:v", "copy", "-c:a", "aac", str(muxed)], check=True)
    with pytest.raises(InputError, match="too short.*4 frames"), warnings.catch_warnings():
        warnings.filterwarnings("error", message="kernel_size")  # and no scipy note on the way
        score_video(model, muxed, detect=lambda frame: box)


def test_download_takes_the_first_source_that_is_the_pinned_copy(tmp_path, media, tiny_widths, server, caplog):
    """Sources in order; a valid SyncNet file that is not the pinned copy is passed over, the pinned
    one is checked, installed and recorded with its pin."""
    from test_store import Route

    from talkhead.store import Pin, Source, download

    other = tmp_path / "other.model"
    weights = MAKE.seeded_state_dict(expected_layout(SyncNetConfig.tiny()), seed=4)
    torch.save(weights, other)
    server.routes["/vgg/syncnet_v2.model"] = Route(other.read_bytes())
    server.routes["/mirror/syncnet_v2.model"] = Route(media["syncnet"].read_bytes())
    sources = {REL: [Source("url", server.url("/vgg/syncnet_v2.model"), "vgg"),
                     Source("url", server.url("/mirror/syncnet_v2.model"), "mirror")]}
    pins = {REL: [Pin("sha256", sha256_of(media["syncnet"]), "published")]}
    import logging

    caplog.set_level(logging.INFO, logger="talkhead.store")
    root = tmp_path / "models"
    result = download("syncnet", root, sources=sources, pins=pins, retries=0, timeout=5)
    logs = caplog.messages  # each source tried: the talkhead.store logger (the CLI's -v)
    assert states_of(result) == {REL: store.VERIFIED}
    record = store.read_store_manifest(root)[REL]
    assert record["pin"] == "published" and record["source"].endswith("/mirror/syncnet_v2.model")
    assert any("vgg: sha256" in line and "not a known-good copy" in line for line in logs)


# ------------------------------------------------------------------------------- evaluate --videos
def test_evaluate_videos_adds_syncnet_columns(tmp_path, media):
    """``evaluate --videos``: the generated row gets the SyncNet scores of ``<clip id>.mp4`` (the same
    figures ``talkhead score`` gives that file), the ground-truth row those of the clips' source
    videos that exist; a clip without a scorable video is one line and does not count; the static
    row has none; without SyncNet installed it is one line naming the download."""
    import dataclasses
    import shutil

    import yaml

    from talkhead.facetrack import face_detector
    from talkhead.score import load_scorer
    from talkhead.train.data import read_manifest, write_manifest
    from talkhead.train.synthetic import make_synthetic_dataset
    from tiny_train import TINY_SYNCERS

    data, syncers = tmp_path / "data", tmp_path / "syncers"
    make_synthetic_dataset(data, num_clips=3, num_frames=60, val_clips=0, seed=0)
    cfg = tmp_path / "syncers.yaml"
    cfg.write_text(yaml.safe_dump(TINY_SYNCERS))
    assert run_cli("train", "syncers", data, "-o", syncers, "--config", cfg, "--quiet").exit_code == 0
    clips = read_manifest(data)
    ids = [c.id for c in clips]
    write_manifest(data, [dataclasses.replace(clips[0], source=str(media["talk"]))] + clips[1:])
    videos = tmp_path / "rendered"
    videos.mkdir()
    shutil.copy(media["talk"], videos / f"{ids[0]}.mp4")
    shutil.copy(media["coffee"], videos / f"{ids[1]}.mp4")  # no face; ids[2] has no video at all
    out = tmp_path / "eval.json"
    args = ("evaluate", data, "--ground-truth", data, "--syncers", syncers, "--videos", videos,
            "--landmarker", "dlib", "--offline", "--json", out, "--quiet")
    result = run_cli(*args, "--syncnet", media["syncnet"])
    assert result.exit_code == 0, result.output
    rows = json.loads(out.read_text())["rows"]
    want = score_video(load_scorer(media["syncnet"]), media["talk"], detect=face_detector("dlib", "cpu", None)).scores
    gen, gt = rows["generated"]["lse"], rows["ground_truth"]["lse"]
    assert (gen["videos"], gen["scored"], gen["failed"]) == (3, 1, 2)
    assert (gt["videos"], gt["scored"], gt["failed"]) == (1, 1, 0)  # only clip 0's source is a video
    for got in (gen, gt):
        assert got["lse_c"] == pytest.approx(want.lse_c, abs=1e-6)
        assert got["lse_d"] == pytest.approx(want.lse_d, abs=1e-6)
        assert got["offset_frames"] == want.offset
    assert "lse" not in rows["static"]
    not_scored = [ln for ln in result.stderr.splitlines() if ln.startswith("not scored")]
    assert len(not_scored) == 2 and any("no face" in ln for ln in not_scored)
    assert any("not found" in ln for ln in not_scored)
    head, *lines = result.stdout.strip().splitlines()
    assert "LSE-C" in head and "LSE-D" in head
    table = {ln.split()[0]: ln for ln in lines}
    assert f"{want.lse_c:.3f}" in table["generated"] and f"{want.lse_d:.3f}" in table["ground_truth"]
    assert table["static"].split()[-3:] == ["-", "-", "-"]

    result = run_cli(*args, "--models-dir", tmp_path / "empty")
    assert_clean_error(result, "not installed", "talkhead download syncnet")
    result = run_cli("evaluate", data, "--ground-truth", data, "--syncers", syncers, "--videos", tmp_path / "nope")
    assert_clean_error(result, "--videos", "nope")
