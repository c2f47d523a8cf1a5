"""talkhead.train.preprocess: talking-head videos -> MS-Sync training clips.

The test videos are made here from real data: ``skimage.data.astronaut()``'s face (a disk around it,
on a uniform grey background) moved horizontally by a known sinusoid of +-12 px over 3 s, written
at 30 fps as H.264 + AAC with the real speech of ``tests/data/audio/speech_16k.wav``; a no-face clip
from ``skimage.data.coffee()``; the face clip without audio; and a clip that is too short.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from talkhead.constants import FPS, NUM_KP
from talkhead.errors import InputError
from talkhead.fomm import FOMM, FOMMConfig, load_fomm
from talkhead.options import AnimateOptions, PreprocessOptions
from talkhead.train import preprocess as pp
from talkhead.train.data import DataFormatError, DatasetWriter, load_clip, read_manifest

# the synthetic face videos and their known motion (test_reenact.py imports these names from here too)
from helpers import AMP_PX, FRAME, SRC_FPS, CentroidKP, applied_dx, face_frame, write_video
from helpers import speech_excerpt as speech_wav

# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("videos")
    wav = speech_wav(d / "speech.wav", 3.0)
    short_wav = speech_wav(d / "short.wav", 1.2)
    t = np.arange(int(3.0 * SRC_FPS)) / SRC_FPS
    talk = [face_frame(dx) for dx in applied_dx(t)]
    import skimage.data

    coffee = skimage.data.coffee()  # (400, 600, 3), no face
    return {
        "talk": write_video(d / "in" / "spk 1" / "talk.mp4", talk, SRC_FPS, wav),
        "noface": write_video(d / "in" / "coffee.mp4", [np.roll(coffee, k, 1) for k in range(0, 75, 1)],
                              FPS, wav),
        "silent": write_video(d / "in" / "silent.mkv", talk, SRC_FPS, None),
        "short": write_video(d / "in" / "short.avi", talk[:36], SRC_FPS, short_wav),
    }


@pytest.fixture(scope="module")
def tiny_fomm(fomm_tiny_files) -> FOMM:
    return load_fomm(*fomm_tiny_files)


@pytest.fixture(scope="module")
def centroid_fomm(fomm_tiny_files) -> FOMM:
    """The tiny FOMM with :class:`CentroidKP` as keypoint detector (64 x 64 frames)."""
    config = FOMMConfig.from_yaml(fomm_tiny_files[0])
    return FOMM(CentroidKP(), config.build_generator(True), config)


@pytest.fixture(scope="module")
def run_all(videos, tiny_fomm, tmp_path_factory):
    """One preprocess run over the four videos (a folder input) with the tiny FOMM and dlib."""
    out = tmp_path_factory.mktemp("data")
    report = pp.preprocess([videos["talk"].parent.parent], out, PreprocessOptions(landmarker="dlib"), fomm=tiny_fomm)
    return report, out


# ------------------------------------------------------------------------------------------ tests
def test_tiny_fomm_run_writes_clip_and_skips_bad_videos(run_all, videos, tiny_fomm):
    report, out = run_all
    by_id = {o.clip_id: o for o in report.outcomes}
    assert sorted(by_id) == ["coffee", "short", "silent", "spk-1_talk"]
    assert [o.clip_id for o in report.done] == ["spk-1_talk"]
    reasons = {o.clip_id: o.reason for o in report.skipped}
    assert "no face" in reasons["coffee"]
    assert "audio" in reasons["silent"]
    assert "too few frames" in reasons["short"]
    # only the good clip is in the data directory; the skips are remembered with their reasons
    assert [c.id for c in read_manifest(out)] == ["spk-1_talk"]
    assert sorted(os.listdir(out / "clips")) == ["spk-1_talk.npz"]
    assert set(pp.read_skipped(out)) == {"coffee", "short", "silent"}

    kp, lf = load_clip(out, "spk-1_talk")
    # 3 s at 30 fps -> 75 frames at 25 fps (the last may be lost to the audio's last window)
    assert kp.shape[1:] == (NUM_KP, 6) and 73 <= kp.shape[0] <= 75
    assert lf.shape == (4 * kp.shape[0], 26)
    assert np.abs(kp[..., :2]).max() <= 1.0

    # logfbank rows are exactly inference's features of the video's own audio track
    from talkhead.audio import load_speech, logfbank

    speech = load_speech(videos["talk"])
    ref = logfbank(speech.samples, speech.sample_rate)
    np.testing.assert_array_equal(lf, ref[: len(lf)].astype(np.float32))

    # keypoints are the tiny detector on the FIXED crop of every 25-fps frame: recompute them from
    # frames we cut ourselves (cv2, crop box from the report) and compare
    x0, y0, x1, y1 = by_id["spk-1_talk"].crop_box
    assert x1 - x0 == y1 - y0
    times = np.arange(len(kp)) / FPS
    frames = [cv2.resize(face_frame(dx)[y0:y1, x0:x1], (64, 64), interpolation=cv2.INTER_AREA)
              for dx in applied_dx(np.round(times * SRC_FPS) / SRC_FPS)]
    ours = tiny_fomm.detect(torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).float() / 255)
    ours = ours.pack().numpy()
    err = np.abs(ours - kp)[..., :2]  # measured: median 0.0016, max 0.012 (codec + resize filter)
    assert np.median(err) < 0.01 and err.max() < 0.05, (np.median(err), err.max())
    # ... and much closer than keypoints of a crop that followed the face instead
    moving = [cv2.resize(face_frame(0.0)[y0:y1, x0:x1], (64, 64), interpolation=cv2.INTER_AREA)] * len(kp)
    still = tiny_fomm.detect(torch.from_numpy(np.stack(moving)).permute(0, 3, 1, 2).float() / 255).value.numpy()
    assert np.median(np.abs(still - kp[..., :2])) > 10 * np.median(err)


def test_crop_box_covers_the_moving_face(run_all):
    report, _ = run_all
    x0, y0, x1, y1 = report.done[0].crop_box
    side = x1 - x0
    # the face (dlib box + landmarks, about 100 px) travels +-12 px around x = 128: the FOMM rule
    # (1.2 x the union) gives a square of about 150 px, centred on the face's mean position
    assert 120 <= side <= 200
    assert abs((x0 + x1) / 2 - FRAME / 2) < 6
    assert x0 <= FRAME / 2 - 50 - AMP_PX and x1 >= FRAME / 2 + 50 + AMP_PX


@pytest.mark.parametrize("crop", ["auto", "none"])
def test_keypoints_follow_the_applied_motion(videos, centroid_fomm, tmp_path, crop):
    """With a detector of known geometry, the keypoints' mean x follows the face's translation, with
    the sign (x = column) and the scale ``2 / crop side`` of the fixed crop - at 25 fps."""
    report = pp.preprocess([videos["talk"]], tmp_path, PreprocessOptions(landmarker="dlib", crop=crop), fomm=centroid_fomm)
    (outcome,) = report.done
    kp, _ = load_clip(tmp_path, outcome.clip_id)
    d = applied_dx(np.arange(len(kp)) / FPS)
    mean_x = kp[:, :, 0].mean(1)
    assert np.corrcoef(mean_x, d)[0, 1] > 0.99
    side = (outcome.crop_box[2] - outcome.crop_box[0]) if crop == "auto" else FRAME
    slope = np.polyfit(d, mean_x, 1)[0]
    assert slope == pytest.approx(2.0 / side, rel=0.05)
    # no vertical motion was applied
    assert kp[:, :, 1].mean(1).std() < 0.1 * mean_x.std()
    # frames are 40 ms apart: a 25-fps keypoint track lags/leads a 30-fps one measurably
    assert np.corrcoef(mean_x, applied_dx(np.arange(len(kp)) / SRC_FPS))[0, 1] < 0.95


def test_resume_does_not_redo_work(run_all, videos, tiny_fomm, tmp_path, monkeypatch):
    _, out = run_all
    resumed = tmp_path / "data"
    shutil.copytree(out, resumed)
    npz = resumed / "clips" / "spk-1_talk.npz"
    before = (npz.stat().st_mtime_ns, npz.read_bytes())
    calls = {"detect": 0, "faces": 0}
    real_detect = tiny_fomm.detect

    def counting_detect(x):
        calls["detect"] += 1
        return real_detect(x)

    monkeypatch.setattr(tiny_fomm, "detect", counting_detect)

    def landmarker(image):
        calls["faces"] += 1
        from talkhead.landmarks import detect_faces
        return detect_faces(image, backend="dlib")

    report = pp.preprocess([videos["talk"].parent.parent], resumed, fomm=tiny_fomm, landmarker=landmarker)
    assert calls == {"detect": 0, "faces": 0}
    assert [o.clip_id for o in report.resumed] == ["spk-1_talk"]
    assert all(o.reason.startswith("(earlier run)") for o in report.skipped) and len(report.skipped) == 3
    assert (npz.stat().st_mtime_ns, npz.read_bytes()) == before
    assert [c.id for c in read_manifest(resumed)] == ["spk-1_talk"]

    # retry_skipped looks at the no-face video again (and still skips it); the done clip stays untouched
    report = pp.preprocess([videos["noface"]], resumed, PreprocessOptions(retry_skipped=True), fomm=tiny_fomm, landmarker=landmarker,
                           root=videos["talk"].parent.parent)
    assert calls["faces"] > 0 and calls["detect"] == 0
    assert "no face" in report.skipped[0].reason and not report.skipped[0].reason.startswith("(earlier")


def test_sharding_splits_inputs_disjointly(videos, tmp_path):
    root = videos["talk"].parent.parent
    everything = [j.clip_id for j in pp.plan_jobs([root])]
    assert everything == sorted(everything) and len(everything) == 4
    for n in (1, 2, 3, 5):
        shards = [[j.clip_id for j in pp.plan_jobs([root], shard=(i, n))] for i in range(n)]
        flat = [c for s in shards for c in s]
        assert sorted(flat) == everything and len(set(flat)) == len(flat)
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
    # the split does not depend on the order the videos are given in
    files = [videos[k] for k in ("talk", "noface", "silent", "short")]
    assert pp.plan_jobs(files, shard=(1, 2)) == pp.plan_jobs(files[::-1], shard=(1, 2))
    with pytest.raises(ValueError):
        pp.plan_jobs([root], shard=(2, 2))


def test_preprocess_touches_only_its_shard(videos, tiny_fomm, tmp_path):
    root = videos["talk"].parent.parent
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    inputs = [videos["silent"], videos["short"], broken]
    seen, ticks = [], []
    for i in range(2):
        report = pp.preprocess(inputs, tmp_path / f"shard-{i}", PreprocessOptions(landmarker="dlib", shard=f"{i}/2"), fomm=tiny_fomm,
                               root=root.parent, on_clip=seen.append, progress=lambda *a: ticks.append(a))
        assert [o.clip_id for o in report.outcomes] == [j.clip_id for j in pp.plan_jobs(inputs, root=root.parent,
                                                                                        shard=(i, 2))]
        assert ticks[-1] == ("videos", len(report.outcomes), len(report.outcomes))
    assert sorted(o.clip_id for o in seen) == sorted(j.clip_id for j in pp.plan_jobs(inputs, root=root.parent))
    # an undecodable file is skipped with a reason, not fatal
    assert all(o.status == "skipped" and o.reason for o in seen)


def test_clip_ids_are_file_safe_and_unique(tmp_path):
    paths = [tmp_path / p for p in ("a/1.mp4", "b/1.mp4", "a b/ü clip!.webm", "x/Talk.mkv", "x/talk.mp4",
                                    "id00012/21Uxsk56VDQ/00001.mp4")]
    ids = pp.clip_ids(paths, tmp_path)
    assert ids[0] == "a_1" and ids[1] == "b_1" and ids[5] == "id00012_21Uxsk56VDQ_00001"
    assert ids[2] == "a-b_u-clip"
    assert len({i.lower() for i in ids}) == len(ids)  # Talk / talk collide case-insensitively
    assert ids[3].startswith("x_Talk-") and ids[4].startswith("x_talk-") and ids[3][-8:] != ids[4][-8:]
    assert all(pp.ID_PATTERN.match(i) and len(i) < 190 for i in ids)
    assert pp.clip_ids(paths, tmp_path) == ids  # deterministic
    # a file name alone when the videos share a folder
    assert pp.clip_ids([tmp_path / "v" / "one.mp4", tmp_path / "v" / "two.mp4"], tmp_path / "v") == ["one", "two"]


def test_face_track_and_fixed_crop_rule():
    a = np.array([100.0, 50.0, 200.0, 170.0])
    moved = a + [10, 0, 10, 0]
    false_positive = np.array([400.0, 300.0, 430.0, 330.0])
    dets = [np.stack([a, false_positive]), moved[None], np.zeros((0, 4)), (a - [8, 0, 8, 0])[None]]
    boxes, seen = pp.face_track(dets)
    assert seen == 3 and np.all(boxes[:, 0] < 120)
    # union (92, 50, 210, 170): 118 x 120 -> square of side 1.2 * 120 = 144 about (151, 110)
    assert pp.fixed_crop_box(boxes, (480, 640)) == (79, 38, 223, 182)
    # near the border the square is moved inside, not cut, and capped by the frame's shorter side
    assert pp.fixed_crop_box(np.array([[0.0, 0.0, 60.0, 60.0]]), (100, 300)) == (0, 0, 72, 72)
    assert pp.fixed_crop_box(np.array([[0.0, 0.0, 290.0, 100.0]]), (100, 300)) == (95, 0, 195, 100)
    assert pp.face_track([np.zeros((0, 4))] * 3) [1] == 0


def test_merge_shards(tmp_path):
    rng = np.random.default_rng(0)

    def clip(t):
        return rng.normal(size=(t, NUM_KP, 6)).astype(np.float32), rng.normal(size=(4 * t, 26)).astype(np.float32)

    with DatasetWriter(tmp_path / "s0") as w:
        w.add("a", *clip(5))
        w.add("c", *clip(6))
    with DatasetWriter(tmp_path / "s1") as w:
        w.add("b", *clip(7))
    skipped = {"clips": {"z": {"source": "z.mp4", "reason": "no face"}}}
    (tmp_path / "s1" / pp.SKIPPED_NAME).write_text(json.dumps(skipped))
    merged = pp.merge_shards([tmp_path / "s0", tmp_path / "s1"], tmp_path / "all")
    assert sorted(c.id for c in merged) == ["a", "b", "c"]
    for sid, cid in (("s0", "a"), ("s1", "b"), ("s0", "c")):
        got, want = load_clip(tmp_path / "all", cid), load_clip(tmp_path / sid, cid)
        np.testing.assert_array_equal(got[0], want[0])
    assert pp.read_skipped(tmp_path / "all") == {"z": {"source": "z.mp4", "reason": "no face"}}
    # merging again is a no-op; a conflicting clip of the same id is refused
    assert len(pp.merge_shards([tmp_path / "s0", tmp_path / "s1"], tmp_path / "all")) == 3
    with DatasetWriter(tmp_path / "s2") as w:
        w.add("a", *clip(5))
    with pytest.raises(DataFormatError):
        pp.merge_shards([tmp_path / "s2"], tmp_path / "all")


def test_preprocess_options_share_animate_fields_and_check_values():
    import dataclasses

    anim = {f.name: f for f in dataclasses.fields(AnimateOptions)}
    for f in dataclasses.fields(PreprocessOptions):
        if f.name in ("models_dir", "landmarker", "offline"):
            assert f.metadata == anim[f.name].metadata and f.default == anim[f.name].default
    assert PreprocessOptions().device == "cpu" and PreprocessOptions(shard=(1, 3)).shard_index == (1, 3)
    with pytest.raises(InputError, match="--shard must be I/N"):
        PreprocessOptions(shard="2/2")
    with pytest.raises(InputError, match="--landmarker must be one of auto, fan, dlib"):
        PreprocessOptions(landmarker="hog")
    with pytest.raises(InputError, match="--min-frames must be at least 1"):
        PreprocessOptions(min_frames=0)
