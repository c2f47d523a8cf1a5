"""Training data format, syncer-pyramid ops, InfoNCE, `train_syncers` on synthetic data, and a 2-rank run."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from talkhead.train.data import (DataFormatError, DatasetWriter, StepBatchSampler, WindowDataset, load_clip,
                                 read_manifest, shard_indices, usable_frames, write_clip)
from talkhead.train.engine import CHECKPOINT_NAME, METRICS_NAME, read_run_checkpoint
from talkhead.train.evaluate import av_sync_clip
from talkhead.train.synthetic import make_synthetic_dataset, synthetic_clip
from talkhead.mssync.syncers import (LEVEL_MS, SyncerPyramid, blur_halve, build_pyramid, level_name, save_syncers,
                                     sliding_windows)
from talkhead.train.syncers import PyramidSegments, info_nce, load_syncers, pyramid_sync_loss, train_syncers

pytestmark = pytest.mark.usefixtures("one_torch_thread")


RNG = np.random.default_rng(0)


def _clip(t: int, m: int | None = None):
    """Keypoints whose x of keypoint 0 is the frame index; logfbank whose band 0 is the row index."""
    kp = RNG.normal(size=(t, 10, 6)).astype(np.float32)
    kp[:, 0, 0] = np.arange(t)
    m = 4 * t if m is None else m
    lf = RNG.normal(size=(m, 26)).astype(np.float32)
    lf[:, 0] = np.arange(m)
    return kp, lf


# ============================================================================================ data format
def test_write_read_roundtrip_and_manifest(tmp_path):
    kp, lf = _clip(30, 118)  # real recordings end a couple of rows short of 4T
    with DatasetWriter(tmp_path) as w:
        info = w.add("spk1-a_0001", kp, lf, source="vox/a.mp4", split="val")
        w.add("spk2", *_clip(12))
    assert info.num_frames == 30 and info.num_logfbank_frames == 118 and info.usable_frames == 29
    doc = json.loads((tmp_path / "manifest.json").read_text())
    assert doc["fps"] == 25 and doc["logfbank_hz"] == 100 and [c["id"] for c in doc["clips"]] == ["spk1-a_0001", "spk2"]
    clips = read_manifest(tmp_path)
    assert clips[0] == info and clips[1].split == "train"
    kp2, lf2 = load_clip(tmp_path, clips[0])
    assert kp2.dtype == np.float32 and np.array_equal(kp2, kp) and np.array_equal(lf2, lf)
    # reopening keeps the clips and appends
    with DatasetWriter(tmp_path) as w:
        assert w.has("spk2")
        w.add("spk3", *_clip(8))
    assert [c.id for c in read_manifest(tmp_path)] == ["spk1-a_0001", "spk2", "spk3"]
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.parametrize("kp_shape,lf_shape,match", [
    ((10, 10, 2), (40, 26), r"keypoints must have shape \(T, 10, 6\)"),
    ((10, 10, 6), (40, 40), r"logfbank must have shape \(M, 26\)"),
    ((10, 10, 6), (60, 26), "disagree by 5.00 frames"),
])
def test_write_clip_rejects_bad_arrays(tmp_path, kp_shape, lf_shape, match):
    with pytest.raises(DataFormatError, match=match):
        write_clip(tmp_path, "x", np.zeros(kp_shape, np.float32), np.zeros(lf_shape, np.float32))


def test_write_clip_rejects_nan_and_unsafe_ids(tmp_path):
    kp, lf = _clip(5)
    kp[2, 3, 1] = np.nan
    with pytest.raises(DataFormatError, match="NaN"):
        write_clip(tmp_path, "x", kp, lf)
    with pytest.raises(DataFormatError, match="not file-safe"):
        write_clip(tmp_path, "../evil", *_clip(5))
    with pytest.raises(DataFormatError, match="no manifest.json"):
        read_manifest(tmp_path)


def test_window_dataset_alignment_frame_t_is_rows_4t_to_4t3(tmp_path):
    with DatasetWriter(tmp_path) as w:
        w.add("a", *_clip(23, 90))   # usable: min(23, 90 // 4) = 22 frames
        w.add("b", *_clip(9))
    assert usable_frames(23, 90) == 22
    ds = WindowDataset(tmp_path, "train", 8, hop=7)
    # clip a: starts 0, 7, 14 (14 + 8 <= 22); clip b: start 0
    assert [ds.locate(i) for i in range(len(ds))] == [(0, 0), (0, 7), (0, 14), (1, 0)]
    item = ds[2]
    assert item["keypoints"].shape == (8, 10, 6) and item["logfbank"].shape == (32, 26)
    frames = item["keypoints"][:, 0, 0]
    rows = item["logfbank"][:, 0].reshape(8, 4)
    assert torch.equal(frames, torch.arange(14, 22, dtype=torch.float32))
    assert torch.equal(rows, 4 * frames[:, None] + torch.arange(4))


def test_sharding_is_a_deterministic_partition():
    shards = [shard_indices(10, r, 3, seed=5, epoch=2) for r in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4]                      # padded to a multiple of world size
    assert set(sum(shards, [])) == set(range(10))
    assert shards == [shard_indices(10, r, 3, seed=5, epoch=2) for r in range(3)]
    assert shards != [shard_indices(10, r, 3, seed=5, epoch=3) for r in range(3)]
    s0 = StepBatchSampler(12, 2, total_steps=9, rank=0, world_size=2, seed=1)
    s1 = StepBatchSampler(12, 2, total_steps=9, rank=1, world_size=2, seed=1)
    b0, b1 = list(s0), list(s1)
    assert len(b0) == 9 and all(not set(x) & set(y) for x, y in zip(b0, b1))  # ranks never share an item in a step
    resumed = list(StepBatchSampler(12, 2, total_steps=9, start_step=4, rank=0, world_size=2, seed=1))
    assert resumed == b0[4:]


# ============================================================================================ pyramid ops
def _reference_moving_avg_reflect(a: torch.Tensor, n: int) -> torch.Tensor:
    """Independent re-derivation of HMo-audio ``moving_avg_with_reflect_pad_torch`` (cumulative sums
    over a reflect-padded copy, pads (n-1)/2 and (n-1)/2 + 1) on axis 0."""
    h = (n - 1) // 2
    idx = np.concatenate([np.arange(h, 0, -1), np.arange(len(a)), len(a) - 2 - np.arange(h + 1)])
    padded = a[torch.from_numpy(idx)]
    c = torch.cumsum(padded.double(), 0)
    c = torch.cat([c[n - 1:n], c[n:] - c[:-n]])
    return (c[: len(a)] / n).to(a.dtype)


@pytest.mark.parametrize("length", [8, 13, 64])
def test_blur_halve_matches_reference_moving_average(length):
    x = torch.randn(length, 10, 6, dtype=torch.float64)
    want = _reference_moving_avg_reflect(x, 7)[::2]
    got = blur_halve(x[None], 7, dim=1)[0]
    assert got.shape == (-(-length // 2), 10, 6)
    assert torch.allclose(got, want, atol=1e-12)
    # a constant stays constant; a ramp is preserved away from the edges
    assert torch.allclose(blur_halve(torch.ones(1, length, 3), 7), torch.ones(1, -(-length // 2), 3))


def test_build_pyramid_shapes_and_windows():
    kp, lf = torch.randn(2, 69, 10, 6), torch.randn(2, 280, 26)
    pyr = build_pyramid(kp, lf, levels=4)
    assert [tuple(k.shape[1:2]) + tuple(a.shape[1:2]) for k, a in pyr] == [(64, 256), (32, 128), (16, 64), (8, 32)]
    x, a = sliding_windows(*pyr[0])
    assert x.shape == (2, 60, 5, 10, 6) and a.shape == (2, 60, 20, 26)
    assert torch.equal(x[1, 7], pyr[0][0][1, 7:12]) and torch.equal(a[1, 7], pyr[0][1][1, 28:48])
    with pytest.raises(ValueError, match="too few"):
        build_pyramid(kp[:, :39], lf, levels=4)
    model = SyncerPyramid({"hidden": 8, "embed_dim": 4})
    out = model(kp, lf)
    assert [e.shape for e, _ in out] == [(2, p, 4) for p in (60, 28, 12, 4)]
    assert torch.allclose(out[2][1].norm(dim=-1), torch.ones(2, 12))
    assert [level_name(l) for l in range(4)] == [f"{ms}ms" for ms in LEVEL_MS]


def test_pyramid_segments_slice_the_whole_clip_pyramid(tmp_path):
    with DatasetWriter(tmp_path) as w:
        w.add("a", *_clip(80))
    ds = PyramidSegments(tmp_path, "train", 48, 16)
    assert len(ds) == 3
    item = ds[1]
    kp, lf = ds.windows.store.get(0)
    full = build_pyramid(torch.from_numpy(kp)[None], torch.from_numpy(lf)[None])
    for l, (k, a) in enumerate(item["levels"]):
        s, n = 16 >> l, 48 >> l
        assert torch.equal(k, full[l][0][0, s:s + n]) and torch.equal(a, full[l][1][0, 4 * s:4 * (s + n)])


# ============================================================================================ InfoNCE
def test_info_nce_perfect_random_and_aligned_duplicates():
    b, p, d = 6, 10, 64
    e = torch.nn.functional.normalize(torch.randn(b, p, d), dim=-1)
    clip, start = torch.arange(b), torch.zeros(b, dtype=torch.long)
    loss, acc = info_nce(e, e.clone(), clip, start, 0, temperature=0.05)
    assert acc == 1.0 and loss < 0.1
    loss_r, acc_r = info_nce(e, torch.nn.functional.normalize(torch.randn(b, p, d), dim=-1), clip, start, 0)
    assert acc_r < 0.3 and loss_r > 3.0                    # ~log(49) = 3.9 at chance
    # segment 1 duplicates segment 0 (same clip, same start): its aligned windows must not be negatives
    e2 = e.clone()
    e2[1] = e2[0]
    clip2 = clip.clone()
    clip2[1] = 0
    _, acc_dup = info_nce(e2, e2.clone(), clip2, start, 0)
    assert acc_dup == 1.0
    # ... whereas declaring them different clips makes those duplicates (wrong) negatives
    _, acc_wrong = info_nce(e2, e2.clone(), clip, start, 0, same_clip_negatives=0, negatives=48)
    assert acc_wrong < 1.0


# ============================================================================================ training
TRAIN_CFG = {"steps": 200, "batch_size": 16, "segment_frames": 64, "anchors_per_segment": 8, "model.hidden": 32,
             "model.embed_dim": 32, "lr": 1e-3, "val_every": 0, "checkpoint_every": 1000, "log_every": 50}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    data = tmp_path_factory.mktemp("synth")
    make_synthetic_dataset(data, num_clips=56, num_frames=160, val_clips=8, seed=0)
    run = tmp_path_factory.mktemp("run")
    events = []
    final = train_syncers(data, run, overrides=TRAIN_CFG, progress=events.append)
    return data, run, final, events


def test_train_syncers_detects_true_alignment_on_held_out_clips(trained):
    data, run, final, events = trained
    chance = final["chance_accuracy"]
    assert chance == pytest.approx(1 / 49)
    accs = {l: final["val"][f"acc_{level_name(l)}"] for l in range(4)}
    print("held-out InfoNCE accuracy (1 positive vs 48 negatives):", accs)
    for l, acc in accs.items():
        assert acc > 5 * chance, f"level {level_name(l)}: accuracy {acc:.3f} not far above chance {chance:.3f}"
    # SyncNet offset search on the 8 held-out clips: the true offset (0) at every level for most clips
    model = load_syncers(run)
    clips = [c for c in read_manifest(data) if c.split == "val"]
    offsets = np.array([[r["offset_level_frames"] for r in av_sync_clip(model, *load_clip(data, c)).values()]
                        for c in clips])
    hits = (offsets == 0).mean(0)
    print("fraction of held-out clips at offset 0 per level:", hits)
    # chance: 1 / (2 S + 1) <= 1 / 11 of the offsets searched at each level
    assert (hits >= 5 / 8).all() and hits.mean() >= 0.85
    assert all(final["av_sync"][level_name(l)]["conf"] > 0.2 for l in range(4))
    # the progress callback saw every step, then the end
    kinds = [e.kind for e in events]
    assert kinds[0] == "start" and kinds[-1] == "end" and kinds.count("step") == TRAIN_CFG["steps"]
    assert "loss_1600ms" in events[-3].metrics or "loss_1600ms" in events[1].metrics


def test_trained_pyramid_as_a_sync_loss(trained):
    data, run, _, _ = trained
    model = load_syncers(run)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    c = synthetic_clip(np.random.default_rng([7, 7]), 160)
    kp = torch.from_numpy(c["keypoints"])[None].requires_grad_(True)
    lf = torch.from_numpy(c["logfbank"])[None]
    aligned = pyramid_sync_loss(model, kp, lf)
    shifted = pyramid_sync_loss(model, torch.roll(kp.detach(), 12, dims=1), lf)
    assert aligned < shifted - 0.1
    aligned.backward()
    assert torch.isfinite(kp.grad).all() and kp.grad.abs().sum() > 0


def test_load_syncers_roundtrip_and_errors(trained, tmp_path):
    _, run, _, _ = trained
    model = load_syncers(run)
    path = save_syncers(model, tmp_path / "syncers.pt")
    again = load_syncers(path)
    assert again.config == model.config
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    assert torch.load(path, weights_only=True)["format"] == "talkhead-syncer-pyramid"
    from talkhead.errors import CheckpointError

    with pytest.raises(CheckpointError):
        load_syncers(tmp_path / "missing")
    ckpt = read_run_checkpoint(run)
    assert ckpt["task"] == "syncers" and ckpt["step"] == TRAIN_CFG["steps"]
    assert {"adam"} == set(ckpt["optimizers"]) and {"step_lr"} == set(ckpt["schedulers"])


# ============================================================================================ 2 ranks
def test_two_process_gloo_run_writes_one_checkpoint(tmp_path):
    data = tmp_path / "data"
    make_synthetic_dataset(data, num_clips=6, num_frames=96, val_clips=1, seed=1)
    run = tmp_path / "run"
    script = tmp_path / "launch.py"
    script.write_text(textwrap.dedent("""
        import json, os, sys
        import torch
        torch.set_num_threads(1)
        from talkhead.train import train_syncers
        final = train_syncers(sys.argv[1], sys.argv[2], overrides=json.loads(sys.argv[3]))
        import torch.distributed as dist
        print(f"rank={os.environ['RANK']} world={os.environ['WORLD_SIZE']} step={final['step']} "
              f"group_left={not dist.is_initialized()}", flush=True)
    """))
    cfg = {"steps": 3, "batch_size": 2, "segment_frames": 48, "model.hidden": 8, "model.embed_dim": 8,
           "anchors_per_segment": 2, "val_every": 0, "checkpoint_every": 100, "log_every": 1, "device": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(data), str(run), json.dumps(cfg)],
                          capture_output=True, text=True, timeout=180, cwd=Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        assert f"rank={rank} world=2 step=3 group_left=True" in proc.stdout
    files = sorted(p.name for p in run.iterdir())
    assert files == ["checkpoint.pt", "config.yaml", "final_metrics.json", "metrics.jsonl"]
    ckpt = read_run_checkpoint(run / CHECKPOINT_NAME)
    assert ckpt["step"] == 3 and ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2
    records = [json.loads(l) for l in (run / METRICS_NAME).read_text().splitlines()]
    assert [r["step"] for r in records if r.get("split") == "train"] == [1, 2, 3]   # rank 0 only, once per step
    assert sum(r.get("event") == "checkpoint" for r in records) == 1
    # the two ranks drew different random anchors: their RNG states differ
    assert not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])
