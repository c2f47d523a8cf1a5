"""Keypoint-domain evaluation: SyncNet-style offset search, multi-scale |AV-Off| / AV-Conf table, LMD."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from talkhead.errors import InputError
from talkhead.train.evaluate import EvalClip, av_sync_clip, evaluate, format_table, lmd, offset_search
from talkhead.train.synthetic import make_synthetic_dataset, synthetic_clip
from talkhead.mssync.syncers import level_name
from talkhead.train.syncers import load_syncers, train_syncers

SHIFT = 10  # frames (400 ms at 25 fps)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def metric_syncers(tmp_path_factory):
    """A metric pyramid, trained separately (own data seed and run seed) from any loss syncer."""
    data = tmp_path_factory.mktemp("synth_metric")
    make_synthetic_dataset(data, num_clips=48, num_frames=160, val_clips=0, seed=11)
    run = tmp_path_factory.mktemp("metric_run")
    train_syncers(data, run, overrides={"seed": 1, "steps": 150, "batch_size": 16, "segment_frames": 64,
                                        "anchors_per_segment": 8, "model.hidden": 32, "model.embed_dim": 32,
                                        "lr": 1e-3, "val_every": 0, "checkpoint_every": 1000, "log_every": 50})
    return load_syncers(run)


def _shift(x: np.ndarray, k: int) -> np.ndarray:
    """The same motion ``k`` frames late: ``y[t] = x[t - k]`` (the first frame held for ``k`` frames)."""
    return np.concatenate([np.repeat(x[:1], k, axis=0), x[:-k]])


@pytest.fixture(scope="module")
def held_out():
    """4 fresh 12.8 s clips (never seen by the metric syncer) with 68-point landmarks in pixels."""
    clips = []
    for i in range(4):
        c = synthetic_clip(np.random.default_rng([99, i]), 320)
        proj = np.random.default_rng([5, i]).normal(size=(68, 10))
        landmarks = 128.0 + 100.0 * np.einsum("pk,tkd->tpd", proj, c["keypoints"][:, :, :2]) / 10.0
        clips.append(EvalClip(c["keypoints"], c["logfbank"], landmarks))
    return clips


def test_in_sync_beats_shifted_beats_static_at_every_level(metric_syncers, held_out):
    generated = [{"keypoints": _shift(c.keypoints, SHIFT), "landmarks": _shift(c.landmarks, SHIFT)} for c in held_out]
    result = evaluate(generated, held_out, metric_syncers)
    assert json.loads(json.dumps(result)) == result  # plain JSON types only
    assert result["levels"] == ["200ms", "400ms", "800ms", "1600ms"] and result["num_clips"] == 4
    rows = result["rows"]
    print("\n" + format_table(result))
    for l in range(4):
        name = level_name(l)
        gt, shifted, static = rows["ground_truth"][name], rows["generated"][name], rows["static"][name]
        assert gt["clips"] == shifted["clips"] == 4
        # ground truth in sync: offset 0 at every level
        assert gt["abs_offset_frames"] == 0.0, name
        # the shifted motion is found SHIFT frames late, to the resolution of the level (2**l frames)
        assert abs(shifted["offset_frames"] + SHIFT) <= 2 ** l, (name, shifted)
        assert gt["abs_offset_frames"] < shifted["abs_offset_frames"]
        # a static head has no synchrony: its AV-Conf is far below that of real motion
        assert static["conf"] < 0.25 * min(gt["conf"], shifted["conf"]), (name, static, shifted, gt)
    # LMD: 0 for the ground truth; the late motion and the frozen first frame are both off
    assert rows["ground_truth"]["lmd_px"] == 0.0
    assert rows["generated"]["lmd_px"] > 0.0 and rows["static"]["lmd_px"] > 0.0
    want = np.mean([lmd(g["landmarks"], c.landmarks) for g, c in zip(generated, held_out)])
    assert rows["generated"]["lmd_px"] == pytest.approx(want)


def test_av_sync_clip_on_short_clips_and_without_landmarks(metric_syncers, held_out):
    c = held_out[0]
    short = av_sync_clip(metric_syncers, c.keypoints[:60], c.logfbank)
    # 60 frames -> 56 (a multiple of 8) -> 56, 28, 14, 7 frames per level -> 52, 24, 10, 3 windows:
    # the search range shrinks to (windows - 1) // 3, and 3 windows leave nothing to search
    assert [None if r is None else r["max_shift"] for r in short.values()] == [15, 7, 3, None]
    assert short["200ms"]["offset_frames"] == 0
    tiny = av_sync_clip(metric_syncers, c.keypoints[:30], c.logfbank)
    assert [r is None for r in tiny.values()] == [False, False, True, True]
    result = evaluate([c.keypoints], [{"keypoints": c.keypoints, "logfbank": c.logfbank}], metric_syncers)
    assert result["rows"]["generated"]["lmd_px"] is None
    assert result["rows"]["generated"]["200ms"] == result["rows"]["ground_truth"]["200ms"]


def test_offset_search_finds_a_planted_offset():
    g = torch.Generator().manual_seed(0)
    e_x = torch.nn.functional.normalize(torch.randn(60, 16, generator=g), dim=-1)
    d = 4
    e_a = torch.nn.functional.normalize(torch.randn(60, 16, generator=g), dim=-1)
    e_a[d:] = e_x[:-d]  # audio window t + d is the twin of video window t: motion leads by d
    r = offset_search(e_x, e_a, max_shift=15)
    assert r["offset"] == d and r["max_shift"] == 15 and len(r["dists"]) == 31
    assert r["conf"] == pytest.approx(np.median(r["dists"]) - min(r["dists"]))
    assert r["conf"] > 0.5
    flat = offset_search(e_x[:1].expand(60, -1), e_a, max_shift=15)  # a frozen face
    assert flat["conf"] < 0.2 * r["conf"]


def test_lmd_and_input_errors(metric_syncers, held_out):
    a = np.random.default_rng(0).normal(size=(20, 68, 2)) * 50
    b = a.copy()
    b[..., 0] += 3.0
    assert lmd(a, b) == pytest.approx(3.0)
    assert lmd(a, b[:10]) == pytest.approx(3.0)
    with pytest.raises(InputError, match=r"\(T, 68, 2\)"):
        lmd(a[..., :1], b)
    c = held_out[0]
    with pytest.raises(InputError, match="1 generated clips but 2"):
        evaluate([c.keypoints], [c, c], metric_syncers)
    with pytest.raises(InputError, match="no logfbank"):
        evaluate([c.keypoints], [{"keypoints": c.keypoints}], metric_syncers)
    with pytest.raises(InputError, match=r"keypoints must have shape"):
        evaluate([c.keypoints[..., :2]], [c], metric_syncers)
