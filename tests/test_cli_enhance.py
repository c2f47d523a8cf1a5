"""``--enhance gfpgan`` end to end on a real photo and real speech (tiny FOMM + tiny MS-Sync + a tiny
random-weight GFPGAN file in the released ``{"params_ema": ...}`` layout), and its bad inputs."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import ASTRONAUT, assert_clean_error, decode_frames, flip_byte, offline_args, probe, run_cli, \
    speech_excerpt
from talkhead import store

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TINY_GFPGAN = dict(out_size=64, num_style_feat=32, channel_multiplier=2, narrow=1 / 16)
"""The tiny file's widths (GFPGAN v1.4's structure, 64 px faces): the CLI test's choice. A full-size
random file (349 MB) would cost ~10 s a frame here; the full-size layout is tested on the meta device
and against the reference in tests/test_gfpgan.py."""


@pytest.fixture(scope="module")
def speech_2s(tmp_path_factory) -> Path:
    return speech_excerpt(tmp_path_factory.mktemp("audio") / "speech.wav", 2.0)


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_models_dir) -> Path:
    """The tiny models directory plus a tiny GFPGAN installed with ``talkhead download gfpgan --from-dir``
    (the store's check reading the widths from the file, as the released file passes with v1.4's)."""
    import talkhead.gfpgan
    from talkhead.gfpgan import GFPGANConfig, GFPGANv1Clean, read_state_dict

    root = tmp_path_factory.mktemp("models") / "m"
    shutil.copytree(tiny_models_dir, root)
    src = root.parent / "src"
    src.mkdir()
    torch.manual_seed(0)
    net = GFPGANv1Clean(GFPGANConfig(**TINY_GFPGAN))
    torch.save({"params_ema": net.state_dict()}, src / "GFPGANv1.4.pth")
    mp = pytest.MonkeyPatch()
    mp.setattr(talkhead.gfpgan, "read_state_dict", lambda path, **kw: read_state_dict(path, infer_widths=True, **kw))
    try:
        result = run_cli("download", "gfpgan", "--from-dir", src, "--models-dir", root)
    finally:
        mp.undo()
    assert result.exit_code == 0, result.output
    return root


def test_animate_with_enhance_writes_the_whole_photo_for_the_speech(models, speech_2s, tmp_path):
    out = tmp_path / "out.mp4"
    result = run_cli("animate", ASTRONAUT, speech_2s, "-o", out, "--enhance", "gfpgan", "--enhance-strength", "0.7",
                     *offline_args(models))
    assert result.exit_code == 0, result.output
    info = probe(out)
    assert (info.width, info.height) == (512, 512) and info.num_frames == 50
    assert info.duration_s == pytest.approx(2.0, abs=0.04) and info.audio_codec == "aac"
    plain = tmp_path / "plain.mp4"
    assert run_cli("animate", ASTRONAUT, speech_2s, "-o", plain, *offline_args(models)).exit_code == 0
    _, a = decode_frames(out)
    _, b = decode_frames(plain)
    assert a.shape == b.shape and not np.array_equal(a, b)   # the restorer ran (random weights change the face)


def test_frame_crop_with_enhance_writes_the_2s_crop(models, speech_2s, tmp_path):
    out = tmp_path / "crop.mp4"
    result = run_cli("animate", ASTRONAUT, speech_2s, "-o", out, "--enhance", "gfpgan", "--frame", "crop",
                     *offline_args(models))
    assert result.exit_code == 0, result.output
    info = probe(out)
    assert (info.width, info.height, info.num_frames) == (128, 128, 50)   # the tiny FOMM's 64 px, twice


def test_without_the_checkpoint_one_line_names_the_file_and_the_download(tiny_models_dir, speech_2s, tmp_path):
    out = tmp_path / "o.mp4"
    result = run_cli("animate", ASTRONAUT, speech_2s, "-o", out, "--enhance", "gfpgan", *offline_args(tiny_models_dir))
    assert_clean_error(result, "not installed", "gfpgan/GFPGANv1.4.pth", "talkhead download gfpgan")
    assert not out.exists()
    # inputs are checked first
    result = run_cli("animate", tmp_path / "nope.png", speech_2s, "-o", out, "--enhance", "gfpgan",
                     *offline_args(tiny_models_dir))
    assert_clean_error(result, "not found", "nope.png")


@pytest.mark.parametrize("value", ["1.5", "-0.1", "abc", "nan"])
def test_strength_out_of_range_is_one_line_exit_2(tiny_models_dir, speech_2s, tmp_path, value):
    result = run_cli("animate", ASTRONAUT, speech_2s, "-o", tmp_path / "o.mp4", "--enhance", "gfpgan",
                     "--enhance-strength", value, *offline_args(tiny_models_dir))
    assert_clean_error(result, "must be a number in [0, 1]" if value != "abc" else "must be a number",
                       "--enhance-strength")


def test_enhance_needs_a_crop(tiny_models_dir, speech_2s, tmp_path):
    result = run_cli("animate", ASTRONAUT, speech_2s, "-o", tmp_path / "o.mp4", "--enhance", "gfpgan", "--crop", "none",
                     *offline_args(tiny_models_dir))
    assert_clean_error(result, "needs the face's landmarks", "--crop auto")


def test_a_tampered_checkpoint_is_one_line_and_nothing_is_written(models, speech_2s, tmp_path):
    bad = tmp_path / "models"
    shutil.copytree(models, bad)
    flip_byte(bad / "gfpgan" / "GFPGANv1.4.pth")
    out = tmp_path / "o.mp4"
    result = run_cli("animate", ASTRONAUT, speech_2s, "-o", out, "--enhance", "gfpgan", *offline_args(bad))
    assert_clean_error(result, "failed verification", "GFPGANv1.4.pth")
    assert not out.exists()


def test_every_command_has_the_options():
    for command in ("animate", "reenact", "batch"):
        result = run_cli(command, "--help")
        assert "--enhance" in result.output and "none|gfpgan" in result.output, command
        assert "Blend of the" in result.output, command   # --enhance-strength (its name is cut at 80 columns)


def test_the_published_file_is_what_download_fetches(monkeypatch, tmp_path):
    """``talkhead download gfpgan`` tries the v1.3.0 release, then v1.3.4, then the mirror."""
    tried = []

    def fetch(self, src, out, cap=None):
        tried.append((src.url, cap))
        raise OSError("offline")

    monkeypatch.setattr(store.transfer.Transfers, "fetch", fetch)
    result = run_cli("download", "gfpgan", "--models-dir", tmp_path / "m", "--mirror", "https://m.example")
    assert result.exit_code != 0
    assert [u for u, _ in tried] == [
        "https://github.com/TencentARC/GFPGAN/releases/download/v1.3.0/GFPGANv1.4.pth",
        "https://github.com/TencentARC/GFPGAN/releases/download/v1.3.4/GFPGANv1.4.pth",
        "https://m.example/gfpgan/GFPGANv1.4.pth"]
