"""`train_generator`: the MS-Sync GAN on synthetic data with a tiny syncer pyramid, resume, export, NaN stop."""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from talkhead.keypoints import Keypoints

import talkhead.train.generator as gen_mod
from talkhead.checkpoints import load_checkpoint
from talkhead.errors import ConfigError
from talkhead.mssync import MSSyncConfig, generate_keypoints, load_mssync
from talkhead.mssync.inference import frames_for_logfbank
from talkhead.train.data import load_clip, read_manifest
from talkhead.train.engine import METRICS_NAME, NonFiniteLossError, read_run_checkpoint
from talkhead.train.generator import (
    PairedSequenceDiscriminator,
    SmoothedClipStore,
    augment_batch,
    build_mssync_config,
    default_config,
    hinge_d_loss,
    hinge_g_loss,
    l2_loss,
    mssync_export_dir,
    train_generator,
    window_starts,
)
from talkhead.train.syncers import train_syncers
from talkhead.train.synthetic import make_synthetic_dataset
from tiny_train import TINY_GENERATOR, TINY_SYNCERS
from tiny_train import tiny as tiny_config


def _tiny(**changes) -> dict:
    return tiny_config(TINY_GENERATOR, **changes)


def _train_lines(run_dir: Path) -> list[dict]:
    lines = [json.loads(l) for l in (run_dir / METRICS_NAME).read_text().splitlines()]
    return [l for l in lines if l.get("split") == "train"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    """A synthetic dataset (4 train + 2 val clips of 60 frames) and a 2-level syncer pyramid trained 2 steps."""
    root = tmp_path_factory.mktemp("gen")
    data = root / "data"
    make_synthetic_dataset(data, num_clips=6, num_frames=60, val_clips=2, seed=0)
    syncers = root / "syncers"
    train_syncers(data, syncers, config=tiny_config(TINY_SYNCERS))
    return {"root": root, "data": data, "syncers": syncers}


@pytest.fixture(scope="module")
def main_run(tiny) -> dict:
    """24 uninterrupted steps; keeps a copy of the exported generator at the step-12 checkpoint."""
    run = tiny["root"] / "run"
    snapshots = {}

    def progress(event):
        if event.kind == "checkpoint":
            ck = load_checkpoint(mssync_export_dir(run) / "model_chkpt.pt")
            snapshots[event.step] = ck

    final = train_generator(tiny["data"], run, syncers_dir=tiny["syncers"], config=TINY_GENERATOR, progress=progress)
    return {"run": run, "final": final, "snapshots": snapshots}


# ============================================================================================ training
def test_training_runs_with_finite_losses_and_paper_optimiser(main_run):
    run = main_run["run"]
    lines = _train_lines(run)
    assert [l["step"] for l in lines] == list(range(1, 25))
    keys = {"loss", "g_adv", "g_window", "g_frame", "g_paired", "sync", "sup", "reco", "first_order", "d_loss",
            "d_window", "d_frame", "d_paired", "d_real", "d_fake"}
    for line in lines:
        assert keys <= set(line)
        assert all(math.isfinite(line[k]) for k in keys)
        assert -1.0 <= line["sync"] <= 1.0          # -mean cosine
        assert line["d_window"] >= 0 and line["d_frame"] >= 0 and line["d_paired"] >= 0  # hinge losses
    # lr 2e-5 / 1e-5, x0.1 after lr_decay_step = 20
    assert {l["lr_g"] for l in lines if l["step"] <= 20} == {2e-5}
    assert {l["lr_d"] for l in lines if l["step"] <= 20} == {1e-5}
    assert all(l["lr_g"] == pytest.approx(2e-6) and l["lr_d"] == pytest.approx(1e-6) for l in lines if l["step"] > 20)
    ckpt = read_run_checkpoint(run)
    assert ckpt["step"] == 24 and ckpt["task"] == "generator"
    assert set(ckpt["models"]) == {"generator", "discriminator", "paired_discriminator", "syncers"}
    for name in ("gen", "dis"):
        group = ckpt["optimizers"][name]["param_groups"][0]
        assert tuple(group["betas"]) == (0.0, 0.999)
    val = main_run["final"]["val"]
    assert set(val) >= {"sync", "sup", "reco", "first_order"} and all(math.isfinite(v) for v in val.values())
    assert main_run["final"]["mssync_dir"] == str(run / "mssync")


def test_export_is_released_format_and_generates_keypoints(main_run, tiny):
    run = main_run["run"]
    out = mssync_export_dir(run)
    assert out == run / "mssync" and (out / "args").is_file() and (out / "model_chkpt.pt").is_file()
    assert not list(out.glob("*.tmp"))
    args = json.loads((out / "args").read_text())
    assert args["lip_loss_weight"] == 8.0 and args["coord_dim"] == 16 and args["seq_len"] == 8
    assert args["adam_beta_1"] == 0.0 and args["learning_rate_g"] == 2e-5 and args["learning_rate_d"] == 1e-5
    exported = load_checkpoint(out / "model_chkpt.pt")
    assert set(exported) == {"checkpoints", "steps"} and exported["steps"] == 24
    trained = read_run_checkpoint(run)["models"]["generator"]
    assert all(torch.equal(exported["checkpoints"][k], trained[k]) for k in trained)
    # the step-12 export differs: the generator did train between the two checkpoints
    early = main_run["snapshots"][12]
    assert early["steps"] == 12
    assert any(not torch.equal(early["checkpoints"][k], trained[k]) for k in trained)

    model = load_mssync(out)
    clip = read_manifest(tiny["data"])[-1]
    kp, lf = load_clip(tiny["data"], clip)
    kp_driving = generate_keypoints(model, Keypoints.unpack(kp[:1]), lf)
    value, jac = kp_driving.value, kp_driving.jacobian
    t = frames_for_logfbank(lf.shape[0])
    assert value.shape == (t, 10, 2) and jac.shape == (t, 10, 2, 2)
    assert torch.isfinite(value).all() and torch.isfinite(jac).all()


def test_resume_reproduces_uninterrupted_losses(main_run, tiny):
    run = tiny["root"] / "resumed"
    train_generator(tiny["data"], run, syncers_dir=tiny["syncers"], config=_tiny(steps=2))
    assert read_run_checkpoint(run)["step"] == 2
    # syncers_dir may be omitted on resume: the run config remembers it
    final = train_generator(tiny["data"], run, syncers_dir=None, config={"steps": 4}, resume=True)
    assert final["step"] == 4
    ref = {l["step"]: l for l in _train_lines(main_run["run"])}
    got = _train_lines(run)
    assert [l["step"] for l in got] == [1, 2, 3, 4]
    for line in got:
        want = ref[line["step"]]
        assert {k: v for k, v in line.items() if k != "time_s"} == {k: v for k, v in want.items() if k != "time_s"}
    assert load_checkpoint(run / "mssync" / "model_chkpt.pt")["steps"] == 4


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tiny, monkeypatch):
    calls = {"n": 0}
    real = gen_mod.pyramid_sync_loss

    def sometimes_nan(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 3 else loss

    monkeypatch.setattr(gen_mod, "pyramid_sync_loss", sometimes_nan)
    run = tiny["root"] / "nan"
    with pytest.raises(NonFiniteLossError, match="step 3"):
        train_generator(tiny["data"], run, syncers_dir=tiny["syncers"],
                        config=_tiny(steps=6, checkpoint_every=2, val_every=0))
    assert read_run_checkpoint(run)["step"] == 2
    exported = load_checkpoint(run / "mssync" / "model_chkpt.pt")
    assert exported["steps"] == 2
    assert all(torch.isfinite(v).all() for v in exported["checkpoints"].values() if v.is_floating_point())
    events = [json.loads(l) for l in (run / METRICS_NAME).read_text().splitlines()]
    assert any(e.get("event") == "non_finite" and e["step"] == 3 for e in events)


@pytest.mark.parametrize("changes,match", [
    ({"batch_size": 3}, "must be even"),
    ({"discriminator": {"windows": None}}, r"too short for discriminator window\(s\) \[20, 40\]"),
    ({"seq_len": 6, "discriminator": {"windows": [5]}}, "too few for the 2-level syncer pyramid"),
    ({"model": {"obs_len": 1}}, "at least 2 warm-up frames"),
    ({"kp_smoothing": 2}, "odd"),
    ({"losses": {"sink": 1.0}}, "unknown config key 'losses.sink'"),
])
def test_bad_configs_are_rejected_before_training(tiny, tmp_path, changes, match):
    cfg = _tiny()
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    with pytest.raises(ConfigError, match=match):
        train_generator(tiny["data"], tmp_path / "run", syncers_dir=tiny["syncers"], config=cfg)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_missing_syncers_is_a_config_error(tiny, tmp_path):
    with pytest.raises(ConfigError, match="syncers_dir"):
        train_generator(tiny["data"], tmp_path / "run", syncers_dir=None, config=_tiny())


# ============================================================================================ pieces
def test_defaults_are_the_paper_values():
    cfg = default_config()
    assert cfg["betas"] == [0.0, 0.999] and cfg["lr_g"] == 2e-5 and cfg["lr_d"] == 1e-5
    assert cfg["lr_decay_gamma"] == 0.1 and 0 < cfg["lr_decay_step"] < cfg["steps"]
    assert cfg["losses"]["sync"] == 8.0 and cfg["seq_len"] == 40 and cfg["batch_size"] % 2 == 0
    cfg["syncers"] = "/syncers"
    mcfg = build_mssync_config(cfg)
    released = MSSyncConfig.default()
    for field in ("data_dim", "obs_len", "audio_dim", "coord_dim", "hidden_size", "nblocks_do", "expansion_fact_do",
                  "nheads_tf", "nlayers_tf", "coord_dim_D", "hidden_size_D", "dis_config", "frame_weight"):
        assert getattr(mcfg, field) == getattr(released, field), field
    assert mcfg.args["lip_loss_weight"] == 8.0 and mcfg.args["syncer_pyramid"] is True


def test_hinge_losses():
    real = torch.tensor([2.0, 0.5])
    fake = torch.tensor([-2.0, 0.0])
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.25 + 0.5)
    assert hinge_g_loss(fake).item() == pytest.approx(1.0)
    pred, target = torch.zeros(1, 2, 10, 6), torch.ones(1, 2, 10, 6)
    assert l2_loss(pred, target).item() == pytest.approx(6.0)      # sum over the 6 numbers, mean elsewhere
    assert l2_loss(pred[:, :0], target[:, :0]).item() == 0.0


def test_window_starts_reach_into_conditioning():
    assert window_starts(2, 8, 5).tolist() == [-2, 0, 2]
    assert window_starts(2, 8, 10).tolist() == [-2]
    assert window_starts(2, 8, 20).tolist() == []


def test_paired_discriminator_scores_unordered_pairs():
    torch.manual_seed(0)
    d = PairedSequenceDiscriminator(embed_dim=16, hidden=12, windows=(5, 10)).eval()  # no power iteration
    x_obs, x = torch.randn(4, 2, 10, 6), torch.randn(4, 8, 10, 6, requires_grad=True)
    s = d(x_obs, x)
    assert s.shape == (2, 1)
    within = d(x_obs[[1, 0, 3, 2]], x[[1, 0, 3, 2]])          # members swapped inside each pair
    assert torch.allclose(s, within, atol=1e-6)
    across = d(x_obs[[2, 3, 0, 1]], x[[2, 3, 0, 1]])          # the two pairs swapped
    assert torch.allclose(s.flip(0), across, atol=1e-6)
    mixed = d(x_obs[[0, 2, 1, 3]], x[[0, 2, 1, 3]])           # other pairings give other scores
    assert not torch.allclose(s, mixed)
    s.sum().backward()
    assert x.grad.abs().sum(dim=(1, 2, 3)).gt(0).sum() >= 2
    with pytest.raises(ValueError, match="even batch"):
        d(x_obs[:3], x[:3])


def test_augment_batch_scales_shifts_and_is_identity_at_zero():
    torch.manual_seed(0)
    kp = torch.randn(3, 11, 10, 6)
    lf = torch.randn(3, 44, 26)
    same_kp, same_lf = augment_batch(kp, lf, scale=0.0, translate=0.0, audio_shift=0.0)
    assert torch.equal(same_kp, kp) and torch.equal(same_lf, lf)
    akp, alf = augment_batch(kp, lf, scale=0.1, translate=0.16, audio_shift=0.1)
    ratio = akp[..., 2:] / kp[..., 2:]                              # jacobians: one factor per sequence
    factor = ratio.flatten(1).mean(1)
    assert torch.allclose(ratio, factor.view(3, 1, 1, 1).expand_as(ratio), atol=1e-5)
    assert ((factor >= 0.9) & (factor <= 1.1)).all() and not torch.allclose(factor, torch.ones(3))
    offset = akp[..., :2] - kp[..., :2] * factor.view(3, 1, 1, 1)   # positions: one shift per sequence and axis
    assert torch.allclose(offset, offset[:, :1, :1].expand_as(offset), atol=1e-5)
    assert offset.abs().max() <= 0.16 + 1e-6
    shift = alf - lf
    span = (lf.amax(dim=(1, 2)) - lf.amin(dim=(1, 2)))
    assert torch.allclose(shift, shift[:, :1, :1].expand_as(shift), atol=1e-5)
    assert (shift[:, 0, 0].abs() <= 0.1 * span + 1e-6).all()


def test_smoothed_store_is_centred_3_frame_mean_with_mirror_ends(tiny):
    store = SmoothedClipStore(tiny["data"], "train", min_frames=11, kp_smoothing=3)
    raw = SmoothedClipStore(tiny["data"], "train", min_frames=11, kp_smoothing=1)
    kp, lf = store.get(0)
    kp0, lf0 = raw.get(0)
    assert np.array_equal(lf, lf0) and kp.shape == kp0.shape and kp.dtype == np.float32
    np.testing.assert_allclose(kp[5], (kp0[4] + kp0[5] + kp0[6]) / 3, atol=1e-6)
    np.testing.assert_allclose(kp[0], (kp0[1] + kp0[0] + kp0[1]) / 3, atol=1e-6)
    np.testing.assert_allclose(kp[-1], (kp0[-2] + kp0[-1] + kp0[-2]) / 3, atol=1e-6)


# ============================================================================================ 2 ranks
def test_two_process_gloo_run_keeps_ranks_identical(tiny, tmp_path):
    """Ranks see different batches; averaged gradients (and rank 0's spectral-norm vectors) keep every
    network identical across ranks."""
    script = tmp_path / "launch.py"
    script.write_text(textwrap.dedent("""
        import hashlib, json, os, sys
        import torch
        torch.set_num_threads(1)
        from talkhead.train.engine import resolve_run_config, run_training
        from talkhead.train.generator import DEFAULTS_PATH, GeneratorTask
        cfg = resolve_run_config(DEFAULTS_PATH, sys.argv[2], config=json.loads(sys.argv[4]))
        cfg["syncers"] = sys.argv[3]
        task = GeneratorTask(sys.argv[1])
        final = run_training(task, sys.argv[2], cfg)
        h = hashlib.sha256()
        for m in (task.generator, task.discriminator, task.paired):
            for t in m.state_dict().values():
                h.update(t.detach().contiguous().numpy().tobytes())
        print(f"rank={os.environ['RANK']} step={final['step']} digest={h.hexdigest()}", flush=True)
    """))
    run = tmp_path / "run"
    cfg = _tiny(steps=2, checkpoint_every=0, val_every=0)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), str(tiny["data"]), str(run), str(tiny["syncers"]), json.dumps(cfg)],
                          check=False, capture_output=True, text=True, timeout=240, cwd=Path(__file__).parents[1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the two ranks share one stdout pipe: their lines may interleave, so match the fixed-size records
    records = re.findall(r"rank=(\d) step=(\d+) digest=([0-9a-f]{64})", proc.stdout)
    assert sorted(r[0] for r in records) == ["0", "1"], proc.stdout
    assert {r[1] for r in records} == {"2"}
    digests = {rank: digest for rank, _, digest in records}
    assert digests["0"] == digests["1"]
    ckpt = read_run_checkpoint(run)
    assert ckpt["world_size"] == 2 and not torch.equal(ckpt["rng"][0]["torch"], ckpt["rng"][1]["torch"])
    assert load_checkpoint(run / "mssync" / "model_chkpt.pt")["steps"] == 2
