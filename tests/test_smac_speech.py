"""Speech drives SMAC: `preprocess --renderer smac` -> `train syncers` -> `train generator` -> `animate
--renderer smac --motion-model RUN_DIR`, end to end with tiny models, and every mismatched pairing refused.

Real data: the astronaut's face (``skimage.data.astronaut()``) moved by ffmpeg-encoded translations with
the real test speech (clips as tests/test_preprocess.py builds them, 1.6 and 2 s); the photo is
``examples/astronaut.png`` (512 x 512). SMAC: the tiny config and weights of tests/data/smac in the
released file layout, placed in a models folder by hand as a user does. Tiny syncers and generator
(tests/tiny_train.py) train a few steps in SMAC's 15-keypoint space. The animate run is short (0.2 s of
speech, 5 frames): the tiny SMAC still decodes at full 256 px, ~8 s a frame on the shared 2-core machine.
"""
from __future__ import annotations

import json
import lzma
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from helpers import SRC_FPS, applied_dx, face_frame, probe, speech_excerpt, write_video
from test_smac import DATA as SMAC_DATA, rule_state_dict
from tiny_train import TINY_GENERATOR, TINY_SYNCERS, tiny
from talkhead.cli import app
from talkhead.keypoints import FOMM_SPACE, KeypointSpace
from talkhead.options import PreprocessOptions
from talkhead.smac import SMACConfig
from talkhead.train import preprocess as pp
from talkhead.train.data import DataFormatError, iter_clips, read_data_space
from talkhead.fomm import load_fomm

ROOT = Path(__file__).parent.parent
PHOTO = ROOT / "examples" / "astronaut.png"
SMAC15 = KeypointSpace("smac", 15)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def cli(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(result, *needles: str) -> str:
    """Exit 2, one line on the output, no traceback, each needle in it."""
    out = result.output.strip()
    assert result.exit_code == 2, result.output
    assert len(out.splitlines()) == 1 and "Traceback" not in out, out
    for needle in needles:
        assert needle in out, (needle, out)
    return out


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("smac_speech")


@pytest.fixture(scope="module")
def models(work) -> Path:
    """A models folder with the tiny SMAC placed by hand (config.yml overrides the packaged release one)."""
    smac = work / "models" / "smac"
    smac.mkdir(parents=True)
    torch.save({"params_ema": rule_state_dict(SMACConfig.from_yaml(SMAC_DATA / "tiny.yml").build_generator())},
               smac / "net_g_latest.pth")
    with lzma.open(SMAC_DATA / "net_motion_estimator_tiny.pth.xz") as src, \
            open(smac / "net_motion_estimator_latest.pth", "wb") as dst:
        shutil.copyfileobj(src, dst)
    shutil.copy(SMAC_DATA / "tiny.yml", smac / "config.yml")
    return work / "models"


@pytest.fixture(scope="module")
def videos(work) -> Path:
    """Two talking-face clips (1.6 s and 2 s at 30 fps, H.264 + AAC with real speech) in one folder."""
    folder = work / "videos"
    for name, seconds in (("a", 1.6), ("b", 2.0)):
        t = np.arange(int(seconds * SRC_FPS)) / SRC_FPS
        write_video(folder / f"{name}.mp4", [face_frame(dx) for dx in applied_dx(t + len(name))], SRC_FPS,
                    speech_excerpt(work / f"{name}.wav", seconds))
    return folder


@pytest.fixture(scope="module")
def smac_data(work, videos, models):
    """`preprocess --renderer smac` (the API, SMAC loaded from the models folder through the store)."""
    opts = PreprocessOptions(renderer="smac", models_dir=models, landmarker="dlib", offline=True, min_frames=30)
    report = pp.preprocess(videos, work / "data-smac", opts)
    return report, work / "data-smac"


@pytest.fixture(scope="module")
def fomm_data(work, videos, fomm_tiny_files):
    """The same clips preprocessed with the tiny FOMM (FOMM's 10-keypoint space)."""
    opts = PreprocessOptions(landmarker="dlib", offline=True, min_frames=30)
    report = pp.preprocess(videos, work / "data-fomm", opts, fomm=load_fomm(*fomm_tiny_files))
    return report, work / "data-fomm"


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def trained(work, smac_data):
    """`train syncers` then `train generator` (the CLI, tiny configs, a few steps) on the SMAC-space data."""
    data = smac_data[1]
    syncers = work / "runs" / "syncers"
    result = cli("train", "syncers", data, "-o", syncers, "-q",
                 "--config", write_config(work / "syncers.yaml", tiny(TINY_SYNCERS, steps=2)))
    assert result.exit_code == 0, result.output
    gen = work / "runs" / "gen"
    config = tiny(TINY_GENERATOR, steps=4, checkpoint_every=0, val_every=0)
    result = cli("train", "generator", data, "--syncers", syncers, "-o", gen, "-q",
                 "--config", write_config(work / "generator.yaml", config))
    assert result.exit_code == 0, result.output
    return syncers, gen


# ------------------------------------------------------------------------------------------ preprocess
def test_preprocess_smac_writes_15_keypoints_on_the_same_fixed_crop(smac_data, fomm_data):
    report, data = smac_data
    assert sorted(o.clip_id for o in report.done) == ["a", "b"] and not report.skipped
    assert read_data_space(data) == SMAC15
    doc = json.loads((data / "manifest.json").read_text())
    assert (doc["keypoint_space"], doc["num_kp"], doc["kp_dim"]) == ("smac", 15, 6)
    clips = {info.id: (kp, lf) for info, kp, lf in iter_clips(data)}
    for clip_id, seconds in (("a", 1.6), ("b", 2.0)):
        kp, lf = clips[clip_id]
        assert kp.shape[1:] == (15, 6) and abs(len(kp) - seconds * 25) <= 1 and len(lf) == 4 * len(kp)
        assert np.all(np.abs(kp[..., :2]) <= 1.0) and np.isfinite(kp).all()
        assert np.ptp(kp[..., :2], axis=0).max() > 0  # the keypoints move with the face
    fomm_report = fomm_data[0]
    assert read_data_space(fomm_data[1]) == FOMM_SPACE
    # the same face track, hence the same fixed crop, whichever renderer's keypoints are taken
    assert {o.clip_id: o.crop_box for o in report.done} == {o.clip_id: o.crop_box for o in fomm_report.done}
    for info, kp, _ in iter_clips(fomm_data[1]):
        assert kp.shape[1:] == (10, 6) and len(kp) == len(clips[info.id][0])


def test_preprocess_refuses_a_folder_of_the_other_space_before_loading(smac_data, fomm_data, videos, work):
    before = (fomm_data[1] / "manifest.json").read_text()
    result = cli("preprocess", videos, "-o", fomm_data[1], "--renderer", "smac", "--models-dir", work / "no-models",
                 "--landmarker", "dlib", "--offline", "-q")
    one_line_error(result, "fomm keypoint space (10 keypoints", "smac keypoint space (15 keypoints")
    assert (fomm_data[1] / "manifest.json").read_text() == before
    with pytest.raises(DataFormatError, match="cannot be mixed"):
        pp.merge_shards([fomm_data[1], smac_data[1]], work / "merged")


# ------------------------------------------------------------------------------------------ training
def test_training_records_the_space_in_config_and_args(trained):
    syncers, gen = trained
    model = yaml.safe_load((syncers / "config.yaml").read_text())["model"]
    assert (model["keypoint_space"], model["num_kp"], model["kp_dim"]) == ("smac", 15, 6)
    from talkhead.train import load_syncers

    assert load_syncers(syncers).space == SMAC15
    args = json.loads((gen / "mssync" / "args").read_text())
    assert (args["num_kp"], args["keypoint_space"], args["data_dim"]) == (15, "smac", 6)
    from talkhead.mssync import load_mssync

    model = load_mssync(gen)  # RUN_DIR itself: its mssync/ folder
    assert model.config.space == SMAC15 and model.encoder_x[0].in_features == 90


def test_training_refuses_mixed_spaces_in_one_line(trained, smac_data, fomm_data, work):
    smac_syncers, _ = trained
    # syncers trained on FOMM keypoints cannot guide a generator on SMAC keypoints (and the reverse)
    fomm_syncers = work / "runs" / "syncers-fomm"
    result = cli("train", "syncers", fomm_data[1], "-o", fomm_syncers, "-q",
                 "--config", write_config(work / "s1.yaml", tiny(TINY_SYNCERS, steps=1)))
    assert result.exit_code == 0, result.output
    gen_config = write_config(work / "g1.yaml", tiny(TINY_GENERATOR, steps=1, checkpoint_every=0, val_every=0))
    for data, syncers, have, new in ((smac_data[1], fomm_syncers, "fomm keypoint space (10", "smac keypoint space (15"),
                                     (fomm_data[1], smac_syncers, "smac keypoint space (15", "fomm keypoint space (10")):
        out = work / "runs" / f"bad-{data.name}"
        result = cli("train", "generator", data, "--syncers", syncers, "-o", out, "-q", "--config", gen_config)
        one_line_error(result, f"the syncer pyramid {syncers} holds the {have}", f"training data is the {new}")
        assert not (out / "checkpoint.pt").exists()
    result = cli("train", "syncers", smac_data[1], "-o", work / "runs" / "bad-s", "-q", "--set", "model.num_kp=10",
                 "--config", write_config(work / "s2.yaml", tiny(TINY_SYNCERS, steps=1)))
    one_line_error(result, "the run config holds the smac keypoint space (10 keypoints", "smac keypoint space (15")


# ------------------------------------------------------------------------------------------ animate
def test_animate_smac_with_the_trained_motion_model(trained, models, work):
    _, gen = trained
    speech = speech_excerpt(work / "say.wav", 0.2)
    out = work / "talk.mp4"
    result = cli("animate", PHOTO, speech, "-o", out, "--renderer", "smac", "--motion-model", gen,
                 "--models-dir", models, "--landmarker", "dlib", "--offline", "-q")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)
    info = probe(out)
    assert (info.width, info.height) == (512, 512)  # the photo's size
    assert info.num_frames == 5 and info.fps == pytest.approx(25.0) and info.has_audio  # the speech's length
    assert not (models / "mssync").exists() and not (models / "fomm").exists()  # nothing downloaded


def test_mismatched_motion_models_are_refused_before_rendering(trained, models, mssync_tiny_dir, work):
    _, gen = trained
    speech = speech_excerpt(work / "say2.wav", 0.2)
    out = work / "refused.mp4"
    common = ("--models-dir", models, "--landmarker", "dlib", "--offline", "-q")
    # a 15-keypoint SMAC-space MS-Sync cannot drive FOMM
    result = cli("animate", PHOTO, speech, "-o", out, "--renderer", "fomm", "--motion-model", gen, *common)
    one_line_error(result, f"the MS-Sync model {gen} generates the smac keypoint space (15 keypoints",
                   "--renderer fomm takes the fomm keypoint space (10 keypoints")
    # a 10-keypoint FOMM-space MS-Sync (the released kind) cannot drive SMAC
    result = cli("animate", PHOTO, speech, "-o", out, "--renderer", "smac", "--motion-model", mssync_tiny_dir, *common)
    one_line_error(result, "generates the fomm keypoint space (10 keypoints",
                   "--renderer smac takes the smac keypoint space (15 keypoints")
    # batch: refused once, before any pair
    result = cli("batch", PHOTO, speech, "-o", work / "batch-out", "--renderer", "fomm", "--motion-model", gen, *common)
    one_line_error(result, "smac keypoint space (15", "--renderer fomm")
    assert not out.exists() and not (work / "batch-out").exists()
    assert not (models / "fomm").exists() and not (models / "mssync").exists()  # refused before any download
    # a folder that is no model
    result = cli("animate", PHOTO, speech, "-o", out, "--renderer", "smac", "--motion-model", work / "nowhere", *common)
    one_line_error(result, "MS-Sync model directory not found")
