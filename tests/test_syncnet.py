"""Tests of talkhead.syncnet: parity with the reference SyncNet scoring (syncnet-python 0.2.3, how the
data was made: tests/data/syncnet/make_fixtures.py, docs/fixtures.md), the released file's strict
layout and safe loading, the offset logic on a clip with a known audio delay, and the crop rule."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from talkhead.errors import CheckpointError, InputError, StateDictMismatchError
from talkhead.syncnet import (SyncNet, SyncNetConfig, distance_matrix, expected_layout, load_syncnet, mfcc,
                              num_windows, pcm16_units, read_state_dict, score_clip, smooth_track, syncnet_crop,
                              crop_track)
from talkhead.syncnet.layout import check_state_dict
from talkhead.syncnet.scoring import VSHIFT, audio_windows, video_windows
from helpers import syncnet_fixture_script

DATA = Path(__file__).parent / "data"
SYNC = DATA / "syncnet"
ATOL = 1e-4  # the parity tolerance; the measured differences are 0.0 (see test_parity_*)


MAKE = syncnet_fixture_script()


@pytest.fixture(scope="module")
def parity() -> dict:
    with np.load(SYNC / "parity.npz") as z:
        return {k: z[k] for k in z.files}


def _save(state_dict: dict, path: Path, *, legacy: bool = True) -> Path:
    torch.save(state_dict, path, _use_new_zipfile_serialization=not legacy)
    return path


def _without_counters(state_dict: dict) -> dict:
    return {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}


# ================================================================================================ parity
@pytest.fixture(scope="module")
def released_like(tmp_path_factory, parity) -> tuple[SyncNet, Path]:
    """Full-size SyncNet loaded from a file shaped like syncnet_v2.model: legacy (non-zip) format, no
    BatchNorm counters, the fixture script's seeded weights."""
    weights = _without_counters(MAKE.seeded_state_dict(expected_layout(), int(parity["seed"])))
    path = _save(weights, tmp_path_factory.mktemp("syncnet") / "syncnet_v2.model", legacy=True)
    return load_syncnet(path), path


class _Recorder:
    """An EmbeddingModel that passes windows to ``model`` and keeps its outputs."""

    def __init__(self, model):
        self.model, self.video, self.audio = model, [], []

    def embed_video(self, frames):
        self.video.append(self.model.embed_video(frames))
        return self.video[-1]

    def embed_audio(self, windows):
        self.audio.append(self.model.embed_audio(windows))
        return self.audio[-1]


@pytest.fixture(scope="module")
def parity_run(released_like, parity) -> dict:
    model, _ = released_like
    frames = MAKE.parity_frames(parity["offsets"])
    recorder = _Recorder(model)
    scores = score_clip(recorder, frames, parity["audio"], vshift=int(parity["vshift"]),
                        batch_size=int(parity["batch_size"]))
    video, audio = torch.cat(recorder.video), torch.cat(recorder.audio)
    return {"frames": frames, "mfcc": mfcc(pcm16_units(parity["audio"])),
            "count": num_windows(frames.shape[0], parity["audio"].shape[0]), "video": video, "audio": audio,
            "dists": distance_matrix(video, audio, int(parity["vshift"])), "scores": scores,
            "batches": [v.shape[0] for v in recorder.video]}


def test_parity_inputs(parity_run, parity):
    """The same windows as the reference: 37 = min(44 frames, 42 audio frames) - 5; its MFCC matrix."""
    assert parity_run["count"] == parity["dists"].shape[0] == 37
    assert parity_run["batches"] == [20, 17]
    np.testing.assert_allclose(parity_run["mfcc"], parity["mfcc"], rtol=0, atol=1e-8)


def test_parity_embeddings_and_distances(parity_run, parity):
    """Full-size embeddings of both streams and calc_pdist's matrix (measured max abs diff: 0.0)."""
    np.testing.assert_allclose(parity_run["video"].numpy(), parity["video_embeddings"], rtol=0, atol=ATOL)
    np.testing.assert_allclose(parity_run["audio"].numpy(), parity["audio_embeddings"], rtol=0, atol=ATOL)
    np.testing.assert_allclose(parity_run["dists"].numpy(), parity["dists"], rtol=0, atol=ATOL)


def test_parity_scores(parity_run, parity):
    """AV offset, LSE-D, LSE-C, the mean distance per offset and the per-frame confidence."""
    scores = parity_run["scores"]
    assert scores.offset == -int(parity["offset"])  # the reference's sign, negated (scoring's module doc)
    assert scores.lse_d == pytest.approx(float(parity["lse_d"]), abs=ATOL)
    assert scores.lse_c == pytest.approx(float(parity["lse_c"]), abs=ATOL)
    np.testing.assert_allclose(scores.mean_distance, parity["mean_distance"], rtol=0, atol=ATOL)
    np.testing.assert_allclose(scores.frame_confidence, parity["frame_confidence"], rtol=0, atol=ATOL)
    assert scores.num_windows == 37 and scores.as_dict()["offset_ms"] == 40.0 * scores.offset


def test_mfcc_matches_python_speech_features(parity):
    """python_speech_features.mfcc(audio, 16000) on int16 audio: the whole clip and framing edge cases,
    and on the MS-Sync fixture's normalised signal (its ``mfcc_f64``)."""
    from scipy.io import wavfile

    rate, speech = wavfile.read(DATA / "audio" / "speech_16k.wav")
    np.testing.assert_allclose(mfcc(speech, rate), parity["mfcc_full"], rtol=0, atol=1e-8)
    for n in MAKE.MFCC_EDGE_LENGTHS:
        ref = parity[f"mfcc_edge_{n}"]
        got = mfcc(speech[5000:5000 + n])
        assert got.shape == ref.shape, n
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-8)
    with np.load(DATA / "audio" / "features.npz") as f:
        normalised = (speech - f["signal_mean"]) / f["signal_peak_after_mean_removal"]
        np.testing.assert_allclose(mfcc(normalised), f["mfcc_f64"], rtol=0, atol=1e-8)


def test_pcm16_units():
    assert pcm16_units(np.array([-32768, 0, 32767], np.int16)).tolist() == [-32768.0, 0.0, 32767.0]
    assert pcm16_units(np.array([-1.0, 0.5], np.float32)).tolist() == [-32768.0, 16384.0]
    with pytest.raises(ValueError):
        pcm16_units(np.zeros((2, 10)))


# ================================================================================================ offsets
@pytest.fixture(scope="module")
def level_clip(parity) -> dict:
    """The fixture's lag-run clip: the whole speech (int16), one level per frame, its frames, and its
    scores without delay."""
    from scipy.io import wavfile

    _, speech = wavfile.read(DATA / "audio" / "speech_16k.wav")
    frames = MAKE.level_frames(parity["lag_levels"])
    return {"levels": parity["lag_levels"], "speech": speech, "frames": frames,
            "aligned": score_clip(MAKE.LevelCode(), frames, speech)}


def test_level_clip_is_what_our_mfcc_gives(level_clip):
    """The injected model's frame levels recomputed through talkhead's MFCC and windows equal the
    reference-made ones (so the lag tests below feed it the clip the reference scored)."""
    levels, speech = level_clip["levels"], level_clip["speech"]
    rows = mfcc(speech)
    per_window = MAKE.LevelCode().audio_levels(audio_windows(rows, 0, levels.shape[0] - 4))
    ours = np.concatenate([per_window[:, 0].numpy(), per_window[-1, 1:].numpy()])
    np.testing.assert_array_equal(ours, levels)
    assert len(np.unique(levels)) > 40  # the speech moves the levels: windows are distinguishable


def test_offset_sign_matches_reference(parity, level_clip):
    """Audio delayed by 3 frames: the reference reports offset -3; we report +3 (its negation: audio late
    is positive, as evaluate's AV-Off), with the same LSE-D and LSE-C."""
    k = int(parity["lag_frames"])
    scores = score_clip(MAKE.LevelCode(), level_clip["frames"], np.roll(level_clip["speech"], 640 * k))
    assert scores.offset == -int(parity["lag_offset"]) == k
    assert scores.lse_d == pytest.approx(float(parity["lag_lse_d"]), abs=ATOL)
    assert scores.lse_c == pytest.approx(float(parity["lag_lse_c"]), abs=ATOL)


@pytest.mark.parametrize("k", range(-10, 11))
def test_known_audio_delay_gives_its_offset(level_clip, k):
    """A real clip whose audio is delayed by k frames (k < 0: advanced), scored with an embedding model
    whose streams agree exactly on aligned windows: the offset is +k (the audio's delay; the
    reference prints -k), the mean distance is lowest there alone, and LSE-D is lowest for the undelayed clip."""
    scores = score_clip(MAKE.LevelCode(), level_clip["frames"], np.roll(level_clip["speech"], 640 * k))
    assert scores.offset == k
    best = VSHIFT + k
    others = np.delete(scores.mean_distance, best)
    assert scores.mean_distance[best] == scores.lse_d < others.min()
    aligned = level_clip["aligned"]
    assert aligned.offset == 0 and aligned.lse_d < 1e-4  # ||1e-6 * ones(1280)|| = 3.6e-5: pairwise eps
    if k:
        assert scores.lse_d > aligned.lse_d + 0.01


def test_distance_matrix_against_a_loop():
    """calc_pdist by its definition, with zero audio outside the clip, over several chunks."""
    gen = torch.Generator().manual_seed(1)
    video, audio = torch.randn(23, 7, generator=gen), torch.randn(23, 7, generator=gen)
    got = distance_matrix(video, audio, vshift=4, chunk=5)
    want = torch.empty(23, 9)
    for i in range(23):
        for j in range(9):
            a = audio[i + j - 4] if 0 <= i + j - 4 < 23 else torch.zeros(7)
            want[i, j] = torch.linalg.vector_norm(video[i] - a + 1e-6)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    same = distance_matrix(video, video, vshift=0)  # pairwise_distance's eps: ||0 + 1e-6|| over 7 dims
    torch.testing.assert_close(same, torch.full((23, 1), 7 ** 0.5 * 1e-6), rtol=1e-3, atol=0)


def test_windows_layout():
    """Video windows are BGR frames i..i+4 unscaled; audio windows are MFCC rows 4i..4i+19 transposed."""
    frames = np.zeros((8, 224, 224, 3), np.uint8)
    frames[..., 0], frames[..., 1], frames[..., 2] = 10, 20, 30  # RGB
    frames[:, 0, 0, 0] = np.arange(8)
    win = video_windows(frames, 1, 3)
    assert win.shape == (2, 3, 5, 224, 224) and win.dtype == torch.float32
    assert win[0, :, 0, 5, 5].tolist() == [30.0, 20.0, 10.0]
    assert win[1, 2, :, 0, 0].tolist() == [2.0, 3.0, 4.0, 5.0, 6.0]
    rows = np.arange(40 * 13, dtype=np.float64).reshape(40, 13)
    aw = audio_windows(rows, 2, 4)
    assert aw.shape == (2, 1, 13, 20)
    np.testing.assert_array_equal(aw[1, 0].numpy(), rows[12:32].T.astype(np.float32))


def test_too_short_clip_is_one_line():
    model = MAKE.LevelCode()
    frames = np.zeros((5, 224, 224, 3), np.uint8)
    with pytest.raises(InputError) as info:
        score_clip(model, frames, np.zeros(16000, np.int16))
    assert "\n" not in str(info.value) and "too short" in str(info.value)
    assert num_windows(6, 6 * 640) == 1 and num_windows(100, 10 * 640 - 1) == 4
    with pytest.raises(ValueError):
        score_clip(model, np.zeros((10, 112, 112, 3), np.uint8), np.zeros(16000, np.int16))


# ================================================================================================ layout
def test_released_layout_is_the_reference_one():
    """88 tensors in syncnet_v2.model's order (listed from the reference S()), 14 optional counters."""
    with open(SYNC / "syncnet_v2.keys.json") as fh:
        reference = {k: tuple(v) for k, v in json.load(fh).items()}
    assert list(expected_layout(counters=False).items()) == list(reference.items())
    full = expected_layout()
    assert len(full) == 102 and len(reference) == 88
    assert {k.split(".")[0] for k in full} == {"netcnnaud", "netfcaud", "netfclip", "netcnnlip"}
    assert sum(int(np.prod(s)) for s in reference.values()) == 13_640_256


def test_released_file_size(tmp_path):
    """A legacy-format save of the 88 tensors is the released file's 54,573,114 bytes, give or take
    pickle framing (an extra or missing tensor moves it by >= 256 bytes of data + its key)."""
    zeros = {k: torch.zeros(s) for k, s in expected_layout(counters=False).items()}
    size = _save(zeros, tmp_path / "zeros.model", legacy=True).stat().st_size
    assert abs(size - 54_573_114) < 600


def test_full_size_shape_mismatch_is_refused():
    """The released layout checked on the meta device: another width is refused, every key named."""
    with torch.device("meta"):
        wrong = SyncNet(SyncNetConfig(embed_dim=512)).state_dict()
        right = SyncNet().state_dict()
    assert len(check_state_dict(_without_counters(right), "x")) == 102
    with pytest.raises(StateDictMismatchError) as info:
        check_state_dict(wrong, "syncnet_v2.model")
    msg = str(info.value)
    assert msg.splitlines()[0].startswith("syncnet_v2.model: the checkpoint does not match the model: 4 wrong shape")
    assert "netfcaud.3.weight: model expects (1024, 512), checkpoint has (512, 512)" in msg


TINY = SyncNetConfig.tiny()


@pytest.fixture
def tiny_weights() -> dict:
    return MAKE.seeded_state_dict(expected_layout(TINY), seed=3)


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "zip"])
def test_with_or_without_counters_loads_the_same(tmp_path, tiny_weights, legacy):
    with_c = load_syncnet(_save(tiny_weights, tmp_path / "with.model", legacy=legacy), TINY)
    without = load_syncnet(_save(_without_counters(tiny_weights), tmp_path / "without.model", legacy=legacy), TINY)
    x = torch.rand(2, 3, 5, 224, 224) * 255
    a = torch.randn(2, 1, 13, 20) * 10
    torch.testing.assert_close(with_c.embed_video(x), without.embed_video(x), rtol=0, atol=0)
    torch.testing.assert_close(with_c.embed_audio(a), without.embed_audio(a), rtol=0, atol=0)
    assert with_c.embed_video(x).shape == (2, 16) and not with_c.training


def _mutations(weights: dict) -> dict:
    missing = dict(weights)
    del missing["netcnnlip.0.weight"]
    extra = dict(weights, **{"netcnnlip.99.weight": torch.zeros(3)})
    wrong = dict(weights, **{"netfcaud.0.bias": torch.zeros(33)})
    some_counters = _without_counters(weights)
    some_counters["netcnnaud.1.num_batches_tracked"] = torch.tensor(0)
    return {"missing": (missing, "netcnnlip.0.weight"), "unexpected": (extra, "netcnnlip.99.weight"),
            "wrong shape": (wrong, "netfcaud.0.bias"), "some counters": (some_counters, "netcnnaud.5.num_batches_tracked"),
            "nested": ({"state_dict": weights}, "state_dict")}


@pytest.mark.parametrize("case", ["missing", "unexpected", "wrong shape", "some counters", "nested"])
def test_layout_mismatch_is_refused(tmp_path, tiny_weights, case):
    state_dict, key = _mutations(tiny_weights)[case]
    path = _save(state_dict, tmp_path / "bad.model")
    with pytest.raises(StateDictMismatchError) as info:
        load_syncnet(path, TINY)
    msg = str(info.value)
    first = msg.splitlines()[0]
    assert first.startswith(f"{path}: the checkpoint does not match the model:") and key in msg
    assert (case if case in ("missing", "unexpected", "wrong shape") else "missing") in first


def test_widths_read_from_the_file(tmp_path, tiny_weights):
    """infer_widths: a tiny file in the released key layout loads without naming its config; the
    default (released widths) refuses it; widths inferred, the rest is still checked strictly."""
    path = _save(_without_counters(tiny_weights), tmp_path / "tiny.model")
    assert SyncNetConfig.from_state_dict(tiny_weights) == TINY
    with torch.device("meta"):
        assert SyncNetConfig.from_state_dict(SyncNet().state_dict()) == SyncNetConfig.released()
    assert load_syncnet(path, infer_widths=True).config == TINY
    with pytest.raises(StateDictMismatchError, match="wrong shape"):
        load_syncnet(path)
    broken = dict(tiny_weights, **{"netcnnlip.5.weight": torch.ones(9)})
    with pytest.raises(StateDictMismatchError, match="netcnnlip.5.weight"):
        load_syncnet(_save(broken, tmp_path / "broken.model"), infer_widths=True)
    gone = {k: v for k, v in tiny_weights.items() if k != "netfcaud.3.weight"}
    with pytest.raises(StateDictMismatchError, match="netfcaud.3.weight is missing"):
        read_state_dict(_save(gone, tmp_path / "gone.model"), infer_widths=True)


def test_not_a_state_dict(tmp_path):
    with pytest.raises(StateDictMismatchError) as info:
        read_state_dict(_save([torch.zeros(2)], tmp_path / "list.model"), TINY)
    assert "\n" not in str(info.value) and "not list" in str(info.value)


class _Reduce:
    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "zip"])
def test_payload_is_refused_and_never_runs(tmp_path, tiny_weights, legacy):
    marker = tmp_path / "marker"
    bad = dict(tiny_weights, extra=_Reduce(os.system, f"touch '{marker}'"))
    path = _save(bad, tmp_path / "payload.model", legacy=legacy)
    with pytest.raises(CheckpointError) as info:
        load_syncnet(path, TINY)
    msg = str(info.value)
    assert not marker.exists()
    assert msg.startswith(f"refused checkpoint {path}") and "system" in msg and "\n" not in msg


def test_non_finite_weights_are_refused(tmp_path, tiny_weights):
    tiny_weights["netfclip.3.weight"][1, 2] = float("nan")
    path = _save(tiny_weights, tmp_path / "nan.model")
    with pytest.raises(CheckpointError) as info:
        load_syncnet(path, TINY)
    msg = str(info.value)
    assert "netfclip.3.weight" in msg and "non-finite" in msg and "\n" not in msg and str(path) in msg


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "zip"])
@pytest.mark.parametrize("fraction", [0.01, 0.5, 0.99])
def test_truncated_and_missing_files_are_refused(tmp_path, tiny_weights, legacy, fraction):
    data = _save(tiny_weights, tmp_path / "full.model", legacy=legacy).read_bytes()
    bad = tmp_path / "truncated.model"
    bad.write_bytes(data[:int(len(data) * fraction)])
    with pytest.raises(CheckpointError) as info:
        load_syncnet(bad, TINY)
    msg = str(info.value)
    assert str(bad) in msg and "\n" not in msg and ("truncated" in msg or "corrupt" in msg)
    with pytest.raises(CheckpointError, match="not found"):
        load_syncnet(tmp_path / "absent.model", TINY)


def test_embedding_input_shapes_are_checked():
    model = SyncNet(TINY).eval()
    with pytest.raises(ValueError, match=r"\(B, 3, 5, 224, 224\)"):
        model.embed_video(torch.zeros(1, 3, 4, 224, 224))
    with pytest.raises(ValueError, match=r"\(B, 1, 13, 20\)"):
        model.embed_audio(torch.zeros(1, 1, 13, 21))
    assert model.lip_features(torch.zeros(1, 3, 5, 224, 224)).shape == (1, 32)


# ================================================================================================ crop
def _coordinate_frame(h: int = 200, w: int = 180) -> np.ndarray:
    """Channel 0 = row, channel 1 = column, channel 2 = 7."""
    rows, cols = np.mgrid[0:h, 0:w]
    return np.stack([rows, cols, np.full_like(rows, 7)], axis=-1).astype(np.uint8)


def test_crop_rule_geometry():
    """Square of side 2.8 s: columns x -/+ 1.4 s, rows y - s .. y + 1.8 s (towards the mouth)."""
    out = syncnet_crop(_coordinate_frame(), x=90.0, y=80.0, s=30.0, size=84)  # 84 = the crop's side: no resampling
    assert out.shape == (84, 84, 3) and out.dtype == np.uint8
    assert out[0, 0, :2].tolist() == [50, 48] and out[-1, -1, :2].tolist() == [133, 131]
    assert (out[..., 2] == 7).all()
    full = syncnet_crop(_coordinate_frame(), x=90.0, y=80.0, s=30.0)
    assert full.shape == (224, 224, 3)


def test_crop_pads_with_grey_at_the_border():
    out = syncnet_crop(_coordinate_frame(), x=10.0, y=190.0, s=40.0, size=112)
    assert (out[-1, 0] == 110).all() and (out[0, -1, 2] == 7)  # below/left of the frame: grey; inside: image


def test_smooth_track_removes_a_one_frame_jump():
    boxes = np.tile([40.0, 50.0, 100.0, 130.0], (30, 1))
    boxes[15] += 60
    smoothed = smooth_track(boxes)
    assert smoothed.shape == (30, 3)
    np.testing.assert_allclose(smoothed[6:24], np.tile([70.0, 90.0, 40.0], (18, 1)))


def test_crop_track_crops_each_frame_at_its_smoothed_box():
    frames = np.stack([_coordinate_frame()] * 20)
    frames[:, :, :, 2] = np.arange(20)[:, None, None]
    boxes = np.tile([60.0, 50.0, 120.0, 110.0], (20, 1)) + np.arange(20)[:, None]
    crops = crop_track(frames, boxes)
    track = smooth_track(boxes)
    assert crops.shape == (20, 224, 224, 3)
    for t in (0, 9, 19):
        np.testing.assert_array_equal(crops[t], syncnet_crop(frames[t], *track[t]))
    with pytest.raises(ValueError, match="19 frames but 20 boxes"):
        crop_track(frames[:19], boxes)


def test_windows_of_another_shape_are_refused():
    """The streams take only (B, 3, 5, 224, 224) lip windows and (B, 1, 13, 20) MFCC windows."""
    net = SyncNet(SyncNetConfig.tiny()).eval()
    for call in (net.embed_video, net.lip_features):
        with pytest.raises(ValueError, match=r"\(B, 3, 5, 224, 224\)"):
            call(torch.zeros(1, 3, 4, 224, 224))
    with pytest.raises(ValueError, match=r"\(B, 1, 13, 20\)"):
        net.embed_audio(torch.zeros(1, 1, 13, 19))
