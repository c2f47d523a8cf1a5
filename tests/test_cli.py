"""End-to-end tests of the ``talkhead`` CLI on a real photo and real speech, with the tiny checkpoints.

The tiny fixture checkpoints are arranged as a models directory (see ``models_dir``), landmarks come
from the offline dlib backend, and every MP4 is checked by probing the file.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from helpers import (ASTRONAUT, SPEECH, assert_clean_error, flip_byte, no_face_photo, offline_args, probe, run_cli,
                     silent_wav, speech_excerpt)
from talkhead.cli import app

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def models_dir(tiny_models_dir) -> Path:
    return tiny_models_dir


@pytest.fixture(scope="module")
def speech_2s(tmp_path_factory) -> Path:
    """The first 2.0 s of the real speech clip (keeps most tests short)."""
    return speech_excerpt(tmp_path_factory.mktemp("audio") / "speech 2s.wav", 2.0)


@pytest.fixture(scope="module")
def photo() -> Path:
    return ASTRONAUT


def only_inputs_left(folder: Path, *expected: str) -> None:
    assert sorted(p.name for p in folder.iterdir()) == sorted(expected)


# --------------------------------------------------------------------------------------------- animate
def test_animate_real_photo_full_clip(models_dir, photo, tmp_path):
    out = tmp_path / "out.mp4"
    kps = tmp_path / "kp.npz"
    result = run_cli("animate", photo, SPEECH, "-o", out, "--save-keypoints", kps,
                     *offline_args(models_dir))
    assert result.exit_code == 0, result.output
    info = probe(out)
    assert info.video_codec == "h264" and info.pix_fmt == "yuv420p"
    assert info.audio_codec == "aac"
    assert info.fps == pytest.approx(25.0)
    assert (info.width, info.height) == (512, 512)  # the whole photo (--frame full, the default)
    assert info.num_frames == 120  # round(4.8 s * 25)
    assert info.duration_s == pytest.approx(4.8, abs=0.04)
    with np.load(kps) as z:
        assert z["kp_driving_value"].shape == (119, 10, 2)  # the reference frame-count rule
        assert z["kp_driving_jacobian"].shape == (119, 10, 2, 2)
        x0, y0, x1, y1 = z["crop_box"]
        assert x1 - x0 == pytest.approx(y1 - y0, abs=1)  # square crop around the astronaut's head
        assert 100 < (x0 + x1) / 2 < 330 and 0 < (y0 + y1) / 2 < 220


def test_crop_none_reproduces_fixture_keypoints(models_dir, mssync_parity, tmp_path):
    import imageio.v3 as iio

    src = tmp_path / "source.png"
    iio.imwrite(src, mssync_parity["source_uint8"])
    kps = tmp_path / "kp.npz"
    result = run_cli("animate", src, SPEECH, "-o", tmp_path / "o.mp4", "--crop", "none",
                     "--save-keypoints", kps, *offline_args(models_dir))
    assert result.exit_code == 0, result.output
    out_kp = mssync_parity["full_out_kp"][0]  # (119, 10, 6)
    with np.load(kps) as z:
        np.testing.assert_allclose(z["kp_driving_value"], out_kp[..., :2], atol=1e-5, rtol=0)
        np.testing.assert_allclose(z["kp_driving_jacobian"], out_kp[..., 2:].reshape(-1, 10, 2, 2), atol=1e-5, rtol=0)
        np.testing.assert_allclose(z["kp_source_value"], mssync_parity["kp0"][..., :2], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["with space.mp4", "quote'\"s.mp4", "ünïcødé 音声.mp4", "-dash.mp4", "$(touch pwned).mp4"])
def test_odd_output_names(models_dir, photo, speech_2s, tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / name
    result = run_cli("animate", photo, speech_2s, "-o", out, *offline_args(models_dir))
    assert result.exit_code == 0, result.output
    assert probe(out).num_frames == 50
    assert not (tmp_path / "pwned").exists()
    only_inputs_left(tmp_path, name)


def test_existing_output_needs_overwrite(models_dir, photo, speech_2s, tmp_path):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"precious")
    line = assert_clean_error(run_cli("animate", photo, speech_2s, "-o", out, *offline_args(models_dir)),
                              "already exists", "out.mp4", "pass --overwrite to replace it")
    assert "overwrite=True" not in line  # the API's keyword is not CLI wording
    assert out.read_bytes() == b"precious"
    result = run_cli("animate", photo, speech_2s, "-o", out, "--overwrite", *offline_args(models_dir))
    assert result.exit_code == 0, result.output
    assert probe(out).num_frames == 50
    only_inputs_left(tmp_path, "out.mp4")


# --------------------------------------------------------------------------------------------- bad input
def _bad_inputs(tmp: Path, speech_2s: Path, photo: Path) -> dict:
    """name -> (image, audio, (the kind of error, the file named in the message))."""
    tmp.mkdir(parents=True, exist_ok=True)
    corrupt_png = tmp / "corrupt.png"
    corrupt_png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(200)))
    noface = no_face_photo(tmp / "noface.png")
    corrupt_wav = tmp / "corrupt.wav"
    corrupt_wav.write_bytes(b"RIFF" + bytes(np.random.default_rng(0).integers(0, 255, 3000, dtype=np.uint8)))
    empty_wav = tmp / "empty.wav"
    sf.write(empty_wav, np.zeros(0, np.int16), 16000)
    silent = silent_wav(tmp / "silent.wav", 2.0)
    short_wav = tmp / "short.wav"
    samples, _ = sf.read(speech_2s, dtype="int16")
    sf.write(short_wav, samples[:800], 16000)
    return {
        "missing image": (tmp / "nope.png", speech_2s, ("photo not found", "nope.png")),
        "missing audio": (photo, tmp / "nope.wav", ("audio not found", "nope.wav")),
        "corrupt image": (corrupt_png, speech_2s, ("is not an image file", "corrupt.png")),
        "no face": (noface, speech_2s, ("no face found", "noface.png")),
        "corrupt audio": (photo, corrupt_wav, ("cannot decode audio", "corrupt.wav")),
        "empty audio": (photo, empty_wav, ("contains no samples", "empty.wav")),
        "silent audio": (photo, silent, ("is silent", "silent.wav")),
        "too short audio": (photo, short_wav, ("is too short", "short.wav")),
    }


@pytest.mark.parametrize("case", ["missing image", "missing audio", "corrupt image", "no face", "corrupt audio",
                                  "empty audio", "silent audio", "too short audio"])
def test_bad_input_is_one_clean_line(models_dir, photo, speech_2s, tmp_path, case):
    image, audio, (kind, name) = _bad_inputs(tmp_path / "in", speech_2s, photo)[case]
    outdir = tmp_path / "out"
    outdir.mkdir()
    result = run_cli("animate", image, audio, "-o", outdir / "o.mp4", *offline_args(models_dir))
    assert_clean_error(result, kind, name)
    only_inputs_left(outdir)


def test_unwritable_output_dir(models_dir, photo, speech_2s, tmp_path):
    missing = tmp_path / "no" / "such" / "dir"
    result = run_cli("animate", photo, speech_2s, "-o", missing / "o.mp4", *offline_args(models_dir))
    assert_clean_error(result, "does not exist", f"output folder '{missing}'")
    assert list(tmp_path.iterdir()) == []


def test_missing_checkpoints_offline(photo, speech_2s, tmp_path):
    empty = tmp_path / "models"
    empty.mkdir()
    result = run_cli("animate", photo, speech_2s, "-o", tmp_path / "o.mp4", *offline_args(empty))
    assert_clean_error(result, "model files missing", "--offline", "mssync/model_chkpt.pt", "fomm/vox-adv-cpk.pth.tar",
                       "talkhead download")
    assert not (tmp_path / "o.mp4").exists()


def test_tampered_checkpoint(models_dir, photo, speech_2s, tmp_path):
    bad = tmp_path / "models"
    shutil.copytree(models_dir, bad)
    ckpt = bad / "fomm" / "vox-adv-cpk.pth.tar"
    flip_byte(ckpt)
    result = run_cli("animate", photo, speech_2s, "-o", tmp_path / "o.mp4", *offline_args(bad))
    assert_clean_error(result, "failed verification", "vox-adv-cpk.pth.tar", "sha256", "talkhead download --force fomm")
    assert not (tmp_path / "o.mp4").exists()


def test_debug_shows_traceback(photo, tmp_path):
    result = CliRunner().invoke(app, ["--debug", "animate", str(photo), str(tmp_path / "nope.wav"),
                                      "--models-dir", str(tmp_path), "--offline", "--landmarker", "dlib"])
    assert result.exit_code == 2
    assert "Traceback" in result.stderr and "InputError" in result.stderr
    assert result.stderr.rstrip().splitlines()[-1] == f"error: audio not found: {tmp_path / 'nope.wav'}"


# --------------------------------------------------------------------------------------------- batch
def test_batch_mixed_pairs_and_resume(models_dir, photo, speech_2s, tmp_path):
    images, audios, out = tmp_path / "images", tmp_path / "audio", tmp_path / "out"
    images.mkdir()
    audios.mkdir()
    shutil.copy(photo, images / "alice.png")
    shutil.copy(speech_2s, audios / "alice.wav")
    shutil.copy(photo, images / "bob.png")
    silent_wav(audios / "bob.wav", 1.0)  # silent: fails
    shutil.copy(photo, images / "carol.png")  # no audio: unmatched
    shutil.copy(speech_2s, audios / "dave.wav")  # no image: unmatched

    result = run_cli("batch", images, audios, "-o", out, *offline_args(models_dir))
    assert result.exit_code == 1, result.output
    assert "done 1, skipped 2, failed 1" in result.output  # carol and dave are unmatched: skipped
    assert probe(out / "alice.mp4").num_frames == 50
    assert sorted(p.name for p in out.iterdir()) == ["alice.mp4"]

    mtime = (out / "alice.mp4").stat().st_mtime_ns
    result = run_cli("batch", images, audios, "-o", out, *offline_args(models_dir))  # re-run: alice exists
    assert "done 0, skipped 2, failed 2" in result.output
    assert "overwrite=True" not in result.output  # CLI wording at the CLI
    hint = [ln for ln in result.stderr.splitlines() if "--skip-existing" in ln]
    assert len(hint) == 1 and "1 output exists" in hint[0] and "--overwrite" in hint[0], result.stderr
    result = run_cli("batch", images, audios, "-o", out, "--skip-existing", *offline_args(models_dir))
    assert result.exit_code == 1, result.output
    assert "done 0, skipped 3, failed 1" in result.output
    assert (out / "alice.mp4").stat().st_mtime_ns == mtime


def test_batch_pairs_csv(models_dir, photo, speech_2s, tmp_path):
    csv = tmp_path / "pairs.csv"
    csv.write_text(f"image,audio,output\n{photo},{speech_2s},{tmp_path / 'custom name.mp4'}\n")
    result = run_cli("batch", "--pairs", csv, "-o", tmp_path / "out", *offline_args(models_dir))
    assert result.exit_code == 0, result.output
    info = probe(tmp_path / "custom name.mp4")
    assert info.num_frames == 50 and info.audio_duration_s == pytest.approx(2.0, abs=0.03)


# --------------------------------------------------------------------------------------------- doctor / download
def test_doctor_reports_models_and_ffmpeg(models_dir):
    result = run_cli("doctor", "--models-dir", models_dir, "--json")
    assert result.exit_code == 0, result.output  # ready: every file verified, ffmpeg has what it needs
    report = json.loads(result.stdout)
    assert report["ready"] is True and report["problems"] == []
    assert report["ffmpeg"]["ok"] is True and report["ffmpeg"]["has_libx264"] is True
    assert {rel: f["state"] for rel, f in report["models"]["files"].items()} == dict.fromkeys(
        ["fomm/vox-adv-256.yaml", "fomm/vox-adv-cpk.pth.tar", "mssync/args", "mssync/model_chkpt.pt"], "verified")
    assert report["landmarkers"]["dlib"]["importable"] is True


def test_doctor_not_ready_without_checkpoints(tmp_path):
    result = run_cli("doctor", "--models-dir", tmp_path / "empty")
    assert result.exit_code == 1, result.output
    assert "verdict: not ready" in result.output
    assert "run `talkhead download`" in result.output
    assert "problem: checkpoints missing: fomm/vox-adv-cpk.pth.tar, mssync/args, mssync/model_chkpt.pt" in result.output
    assert re.search(r"fomm/vox-adv-256\.yaml\s*│\s*packaged\s*│", result.output)  # the shipped config: not missing


def test_download_offline_failure_leaves_nothing(tmp_path, monkeypatch):
    import gdown

    def boom(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(gdown, "download", boom)
    monkeypatch.setattr(gdown, "download_folder", boom)
    root = tmp_path / "models"
    result = run_cli("download", "--models-dir", root, "--quiet")
    assert_clean_error(result, "could not download", "fomm/vox-adv-cpk.pth.tar, mssync/args")
    assert "--mirror URL" in result.output and "--from-dir DIR" in result.output
    assert not root.exists()  # no file, no staging folder, no empty fomm/ or mssync/
    # each source and why it failed: with -v (offline here: the host does not resolve; with DNS,
    # the patched gdown fails)
    result = run_cli("-v", "download", "--models-dir", root, "--quiet")
    assert "fomm/vox-adv-cpk.pth.tar (Google Drive folder of the FOMM authors: " in result.output
    assert "cannot resolve drive.google.com" in result.output or "network is unreachable" in result.output


def test_help_lists_commands():
    result = run_cli("--help")
    assert result.exit_code == 0, result.output
    for cmd in ("animate", "batch", "download", "doctor", "train"):
        assert cmd in result.output


def test_resolve_device():
    import torch

    from talkhead.devices import resolve_device
    from talkhead.errors import InputError

    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto", allow_mps=False) == torch.device("cpu")
        with pytest.raises(InputError, match="cuda"):
            resolve_device("cuda")
    with pytest.raises(InputError, match="tpu"):
        resolve_device("tpu")


def test_keypoint_and_render_bars_say_what_they_count():
    """119 keypoint frames and 120 video frames (the last is held): each bar names its unit."""
    from talkhead.cli_common import StageBars, progress_bars

    with progress_bars(quiet=True) as progress:
        bars = StageBars(progress)
        bars("keypoints", 119, 119)
        bars("render", 120, 120)
        units = {t.description: t.fields["unit"] for t in progress.tasks}
    assert units == {"keypoints": "frames predicted", "render": "video frames"}
