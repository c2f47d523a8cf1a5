"""``talkhead doctor`` data: versions, devices, ffmpeg, checkpoint states, offline landmark backends."""
from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

import talkhead.ffmpeg
from talkhead.doctor import doctor_report, has_problems, render_report
from talkhead.errors import FFmpegError

DATA = Path(__file__).parent / "data"
GOOD_FFMPEG = {"exe": "/opt/ffmpeg", "version": "n9.0", "has_libx264": True, "has_aac": True, "encoders": frozenset()}


@pytest.fixture(scope="module")
def registered(tiny_models_dir) -> Path:
    """The tiny checkpoints as a recorded models directory."""
    return tiny_models_dir


@pytest.fixture
def fake_ffmpeg(monkeypatch):
    """A deterministic ffmpeg probe; the returned dict can be edited by the test."""
    caps = dict(GOOD_FFMPEG)
    monkeypatch.setattr(talkhead.ffmpeg, "ffmpeg_exe", lambda: caps["exe"])
    monkeypatch.setattr(talkhead.ffmpeg, "ffmpeg_capabilities", lambda: dict(caps))
    return caps


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    """An empty torch hub cache (no FAN weights)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


def test_report_on_ready_install(registered, fake_ffmpeg):
    report = doctor_report(registered)
    json.dumps(report)  # plain JSON data, no default= needed
    assert report["python"]["version"].count(".") == 2
    assert report["torch"]["version"] == torch.__version__
    assert report["devices"]["cpu"]["available"] is True
    assert report["devices"]["cuda"]["available"] == torch.cuda.is_available()
    assert report["ffmpeg"] == {"ok": True, "exe": "/opt/ffmpeg", "version": "n9.0", "has_libx264": True,
                                "has_aac": True, "error": None}
    assert report["models"]["dir"] == str(registered)
    files = report["models"]["files"]
    assert sorted(files) == ["fomm/vox-adv-256.yaml", "fomm/vox-adv-cpk.pth.tar", "mssync/args", "mssync/model_chkpt.pt"]
    assert {st["state"] for st in files.values()} == {"verified"}
    assert report["problems"] == []
    assert not has_problems(report) and report["ready"] is True


def test_real_ffmpeg_probe(registered):
    """The binary talkhead really uses (imageio-ffmpeg's) is reported with its encoders."""
    report = doctor_report(registered)
    exe = talkhead.ffmpeg.ffmpeg_exe()
    assert report["ffmpeg"]["exe"] == exe and os.path.isfile(exe)
    assert report["ffmpeg"]["has_libx264"] == ("libx264" in talkhead.ffmpeg.ffmpeg_capabilities()["encoders"])


def test_corrupt_checkpoint_is_a_problem_even_with_mtime_kept(registered, tmp_path, fake_ffmpeg):
    root = tmp_path / "models"
    shutil.copytree(registered, root)  # copy2 keeps mtimes: the manifest still matches
    ckpt = root / "mssync" / "model_chkpt.pt"
    st = ckpt.stat()
    data = bytearray(ckpt.read_bytes())
    data[12345] ^= 0x01
    ckpt.write_bytes(bytes(data))
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns))  # size + mtime unchanged: doctor re-hashes
    report = doctor_report(root)
    assert report["models"]["files"]["mssync/model_chkpt.pt"]["state"] == "corrupt"
    assert has_problems(report)
    assert any("mssync/model_chkpt.pt" in p and "talkhead download --force mssync" in p for p in report["problems"])


def test_missing_checkpoints_mean_not_ready(tmp_path, fake_ffmpeg):
    report = doctor_report(tmp_path / "fresh")
    files = report["models"]["files"]
    assert files["fomm/vox-adv-256.yaml"]["state"] == "packaged"  # ships with talkhead: not missing
    assert {st["state"] for rel, st in files.items() if rel != "fomm/vox-adv-256.yaml"} == {"missing"}
    assert report["models"]["exists"] is False and report["models"]["writable"] is True
    assert has_problems(report) and report["ready"] is False
    missing = [p for p in report["problems"] if "missing" in p]
    assert len(missing) == 1 and missing[0].startswith(
        "checkpoints missing: fomm/vox-adv-cpk.pth.tar, mssync/args, mssync/model_chkpt.pt: run `talkhead download`")
    assert "talkhead download --from-dir FOLDER" in missing[0]  # the way in without internet
    assert not any("vox-adv-256.yaml" in m for m in report["problems"] + report["warnings"])


@pytest.mark.parametrize("lacking", ["has_libx264", "has_aac"])
def test_ffmpeg_without_encoder(registered, fake_ffmpeg, lacking):
    fake_ffmpeg[lacking] = False
    report = doctor_report(registered)
    assert report["ffmpeg"]["ok"] is False
    assert has_problems(report)
    assert any(lacking.removeprefix("has_") in p for p in report["problems"])


def test_ffmpeg_missing(registered, monkeypatch):
    def broken():
        raise FFmpegError("ffmpeg is not available (install imageio-ffmpeg)")

    monkeypatch.setattr(talkhead.ffmpeg, "ffmpeg_exe", broken)
    report = doctor_report(registered)
    assert report["ffmpeg"]["ok"] is False and "imageio-ffmpeg" in report["ffmpeg"]["error"]
    assert has_problems(report)


def test_landmark_backends_offline(registered, fake_ffmpeg, torch_home):
    report = doctor_report(registered)
    dlib = report["landmarkers"]["dlib"]
    assert dlib["importable"] and dlib["offline"]
    assert Path(dlib["model_path"]).name == "shape_predictor_68_face_landmarks.dat"
    assert Path(dlib["model_path"]).is_file()
    fan = report["landmarkers"]["fan"]
    assert fan["importable"] and not fan["offline"]
    assert fan["cache_dir"] == str(torch_home)
    assert "--landmarker dlib" in fan["reason"]

    # with both weight files in the hub cache, FAN runs offline
    torch_home.mkdir(parents=True)
    for w in fan["weights"].values():
        Path(w["path"]).write_bytes(b"weights")
    fan = doctor_report(registered)["landmarkers"]["fan"]
    assert fan["offline"] and all(w["present"] for w in fan["weights"].values())


def test_cuda_devices_listed(registered, fake_ffmpeg, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: f"Fake GPU {i}")
    report = doctor_report(registered)
    assert report["devices"]["cuda"] == {"available": True, "devices": ["Fake GPU 0", "Fake GPU 1"]}
    assert not any("no GPU" in w for w in report["warnings"])


def test_render_report(registered, fake_ffmpeg, tmp_path):
    from rich.console import Console

    bad = tmp_path / "models"
    shutil.copytree(registered, bad)
    (bad / "fomm" / "vox-adv-cpk.pth.tar").write_bytes(b"truncated")
    console = Console(file=io.StringIO(), width=200, color_system=None)
    render_report(doctor_report(bad), console)
    text = console.file.getvalue()
    for needle in ("libx264", "verified", "corrupt", "fomm/vox-adv-cpk.pth.tar", "dlib", "problem:",
                   "verdict: not ready"):
        assert needle in text


def test_render_report_shows_whole_paths_at_80_columns(tmp_path, fake_ffmpeg):
    """A long models path is folded, never cut with an ellipsis, at a terminal's 80 columns."""
    from rich.console import Console

    deep = tmp_path / ("a-rather-long-folder-name-" * 4) / "models"
    console = Console(file=io.StringIO(), width=80, color_system=None)
    render_report(doctor_report(deep), console)
    text = console.file.getvalue()
    assert "\u2026" not in text and "..." not in text.replace("sha256 / reason", "")
    joined = "".join(ln.strip("│ ┃") for ln in text.splitlines())
    assert str(deep / "mssync" / "model_chkpt.pt").replace(" ", "") in joined.replace(" ", "").replace("│", "")


def test_hand_placed_config_that_differs_is_said(registered, fake_ffmpeg, monkeypatch):
    """A recorded FOMM config that is not the copy talkhead ships (here the tiny test config) is
    verified, with a note and a warning saying it differs; the packaged copy itself gets neither."""
    report = doctor_report(registered)
    st = report["models"]["files"]["fomm/vox-adv-256.yaml"]
    assert st["state"] == "verified" and "differs from the copy that ships with talkhead" in st["reason"]
    assert any(w.startswith("fomm/vox-adv-256.yaml differs") for w in report["warnings"])
    # the same bytes as the shipped copy (here: the shipped copy taken to be the tiny config): no note
    import hashlib

    import talkhead.store.verification as verification

    tiny = hashlib.sha256((registered / "fomm" / "vox-adv-256.yaml").read_bytes()).hexdigest()
    monkeypatch.setattr(verification, "_packaged_sha256", lambda f: tiny)
    report = doctor_report(registered)
    assert report["models"]["files"]["fomm/vox-adv-256.yaml"]["reason"] == ""
    assert not any("differs" in w for w in report["warnings"])
