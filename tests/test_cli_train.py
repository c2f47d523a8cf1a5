"""The retraining commands through the CLI: train syncers -> evaluate -> train generator -> animate.

Tiny sizes via ``--config``/``--set``; the algorithms themselves are tested in test_train_*.py and
test_evaluate.py. This checks the commands wire options, outputs and errors correctly.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from talkhead.mssync import load_mssync
from talkhead.train.engine import read_run_checkpoint
from talkhead.train.synthetic import make_synthetic_dataset
from helpers import assert_clean_error, probe, run_cli
from tiny_train import TINY_GENERATOR, TINY_SYNCERS, tiny

SYNCERS = TINY_SYNCERS
GENERATOR = tiny(TINY_GENERATOR, steps=2, checkpoint_every=2, val_every=2)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("cli_train")
    data = root / "data"
    make_synthetic_dataset(data, num_clips=6, num_frames=60, val_clips=2, seed=0)
    cfg = root / "syncers.yaml"
    cfg.write_text(yaml.safe_dump(SYNCERS))
    result = run_cli("train", "syncers", data, "-o", root / "syncers", "--config", cfg, "--set", "steps=3", "--quiet")
    assert result.exit_code == 0, result.output
    return {"root": root, "data": data, "syncers": root / "syncers"}


def test_train_syncers_cli_saves_config_with_overrides(runs):
    saved = yaml.safe_load((runs["syncers"] / "config.yaml").read_text())
    assert saved["steps"] == 3 and saved["model"]["hidden"] == 16
    lines = [json.loads(l) for l in (runs["syncers"] / "metrics.jsonl").read_text().splitlines()]
    assert max(l.get("step", 0) for l in lines) == 3


def test_evaluate_cli_writes_table_and_json(runs, tmp_path):
    out = tmp_path / "eval.json"
    result = run_cli("evaluate", runs["data"], "--ground-truth", runs["data"], "--syncers", runs["syncers"],
                     "--json", out)
    assert result.exit_code == 0, result.output
    table = json.loads(out.read_text())
    assert set(table["rows"]) == {"generated", "ground_truth", "static"}
    assert table["num_clips"] == 6
    # generated == ground truth here: the two rows must agree exactly
    assert table["rows"]["generated"] == table["rows"]["ground_truth"]


def test_evaluate_accepts_save_keypoints_files(runs, tmp_path):
    from talkhead.train.data import iter_clips

    gen = tmp_path / "gen"
    gen.mkdir()
    for info, kp, _ in iter_clips(runs["data"]):
        np.savez(gen / f"{info.id}.npz", kp_driving_value=kp[..., :2], kp_driving_jacobian=kp[..., 2:].reshape(-1, 10, 2, 2))
    out = tmp_path / "eval.json"
    result = run_cli("evaluate", gen, "--ground-truth", runs["data"], "--syncers", runs["syncers"], "--json", out)
    assert result.exit_code == 0, result.output
    table = json.loads(out.read_text())
    assert table["rows"]["generated"] == table["rows"]["ground_truth"]


def test_evaluate_without_matching_ids_is_a_clean_error(runs, tmp_path):
    result = run_cli("evaluate", tmp_path, "--ground-truth", runs["data"], "--syncers", runs["syncers"])
    assert_clean_error(result, "no generated sequence")


def test_bad_override_is_a_clean_error(runs, tmp_path):
    result = run_cli("train", "syncers", runs["data"], "-o", tmp_path / "r", "--set", "steps")
    assert_clean_error(result, "KEY=VALUE", "'steps'")


def test_train_generator_cli_model_animates(runs, tiny_models_dir, tmp_path):
    cfg = tmp_path / "gen.yaml"
    cfg.write_text(yaml.safe_dump(GENERATOR))
    run_dir = tmp_path / "gen run"
    result = run_cli("train", "generator", runs["data"], "--syncers", runs["syncers"], "-o", run_dir, "--config", cfg,
                     "--quiet")
    assert result.exit_code == 0, result.output
    model = load_mssync(run_dir / "mssync")
    # the exported model is the generator of the last checkpoint (written by the task's on_checkpoint)
    ckpt = read_run_checkpoint(run_dir)
    saved = ckpt["models"]["generator"]
    assert set(model.state_dict()) == set(saved)
    assert all(torch.equal(v.cpu(), saved[k]) for k, v in model.state_dict().items())
    assert torch.load(run_dir / "mssync" / "model_chkpt.pt", weights_only=True)["steps"] == ckpt["step"] == 2
    # the trained generator drops into a models directory and drives `animate`
    models = tmp_path / "models"
    shutil.copytree(tiny_models_dir / "fomm", models / "fomm")
    shutil.copytree(run_dir / "mssync", models / "mssync")
    photo = Path(__file__).parents[1] / "examples" / "astronaut.png"
    out = tmp_path / "o.mp4"
    result = run_cli("animate", photo, Path(__file__).parent / "data" / "audio" / "speech_16k.wav", "-o", out,
                     "--models-dir", models, "--landmarker", "dlib", "--offline", "--quiet")
    assert result.exit_code == 0, result.output
    info = probe(out)
    assert info.num_frames == 120 and (info.width, info.height) == (512, 512)  # 4.8 s of speech, the whole photo
    assert info.audio_duration_s == pytest.approx(4.8, abs=0.04)


def test_preprocess_cli_skips_clip_without_face(tiny_models_dir, tmp_path):
    import skimage.data
    import soundfile as sf

    from talkhead.video import VideoWriter

    samples, sr = sf.read(Path(__file__).parent / "data" / "audio" / "speech_16k.wav", dtype="int16")
    wav = tmp_path / "speech.wav"
    sf.write(wav, samples[: 3 * sr], sr)
    frame = np.ascontiguousarray(skimage.data.coffee()[:256, :256])
    videos = tmp_path / "videos"
    videos.mkdir()
    with VideoWriter(videos / "coffee.mp4", size=(256, 256), audio_path=wav) as writer:
        for _ in range(75):
            writer.write(frame)
    out = tmp_path / "data"
    result = run_cli("preprocess", videos, "-o", out, "--models-dir", tiny_models_dir, "--landmarker", "dlib",
                     "--offline", "--quiet")
    assert result.exit_code == 0, result.output
    said = "".join(result.output.split())  # the console wraps long lines, also inside a long path
    assert f"skipped{videos / 'coffee.mp4'}:nofacefoundin" in said and "1skipped" in said
    assert json.loads((out / "manifest.json").read_text())["clips"] == []
    skipped = json.loads((out / "preprocess-skipped.json").read_text())["clips"]
    assert [(Path(v["source"]).name, v["reason"].startswith("no face found")) for v in skipped.values()] == \
        [("coffee.mp4", True)]


def test_preprocess_cli_bad_shard_is_one_line(tmp_path):
    result = run_cli("preprocess", tmp_path, "-o", tmp_path / "data", "--shard", "3/2")
    assert_clean_error(result, "--shard must be I/N", "3/2")


def test_merge_shards_cli(tmp_path):
    for i in range(2):
        make_synthetic_dataset(tmp_path / f"s{i}", num_clips=2, num_frames=30, val_clips=0, seed=i)
        manifest = json.loads((tmp_path / f"s{i}" / "manifest.json").read_text())
        for clip in manifest["clips"]:   # distinct clip ids per shard, as preprocess's shards have
            (tmp_path / f"s{i}" / "clips" / f"{clip['id']}.npz").rename(tmp_path / f"s{i}" / "clips" / f"s{i}-{clip['id']}.npz")
            clip["id"] = f"s{i}-{clip['id']}"
        (tmp_path / f"s{i}" / "manifest.json").write_text(json.dumps(manifest))
    result = run_cli("merge-shards", tmp_path / "s0", tmp_path / "s1", "-o", tmp_path / "all")
    assert result.exit_code == 0, result.output
    ids = [c["id"] for c in json.loads((tmp_path / "all" / "manifest.json").read_text())["clips"]]
    assert sorted(ids) == ["s0-synth_0000", "s0-synth_0001", "s1-synth_0000", "s1-synth_0001"] and "4 clips" in result.output
    result = run_cli("merge-shards", tmp_path / "missing", "-o", tmp_path / "all")
    assert_clean_error(result, "shard folder not found", "missing")


def test_evaluate_refuses_ground_truth_of_another_keypoint_space(runs, tmp_path):
    """Keypoints of the syncers' shape (10 x 6) but another renderer's space are not scored by them: one
    line naming both spaces, exit 2."""
    data = tmp_path / "other"
    shutil.copytree(runs["data"], data)
    manifest = json.loads((data / "manifest.json").read_text())
    manifest.update(keypoint_space="other", num_kp=10, kp_dim=6)
    (data / "manifest.json").write_text(json.dumps(manifest))
    result = run_cli("evaluate", data, "--ground-truth", data, "--syncers", runs["syncers"])
    assert_clean_error(result, "other", "fomm")
