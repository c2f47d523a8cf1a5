"""A first run that explains itself: inputs are checked before any model loads or downloads, and the
CLI's manners (--version, --debug anywhere, help with examples, output path on stdout)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import talkhead
from helpers import assert_clean_error, blank_photo, run_cli, silent_wav
from talkhead.cli import app

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).parent.parent
ASTRONAUT = ROOT / "examples" / "astronaut.png"
SPEECH = DATA / "audio" / "speech_16k.wav"


@pytest.fixture
def no_model_loading(monkeypatch):
    """Fail the test if anything tries to ensure (download/verify) or load checkpoints."""
    def refuse(*args, **kwargs):
        raise AssertionError("models were ensured/loaded before the inputs were checked")

    monkeypatch.setattr("talkhead.store.ensure_models", refuse)
    monkeypatch.setattr("talkhead.store.download", refuse)


def test_missing_image_is_reported_before_any_download(tmp_path, no_model_loading):
    empty = tmp_path / "models"
    empty.mkdir()
    result = run_cli("animate", tmp_path / "missing.png", SPEECH, "-o", tmp_path / "o.mp4", "--models-dir", empty,
                     "--quiet")
    assert_clean_error(result, "photo not found", "missing.png")
    assert list(empty.iterdir()) == [] and not (tmp_path / "o.mp4").exists()


def test_face_less_image_and_silent_audio_beat_missing_models(tmp_path, no_model_loading):
    empty = tmp_path / "models"
    empty.mkdir()
    blank = blank_photo(tmp_path / "wall.png")
    result = run_cli("animate", blank, SPEECH, "-o", tmp_path / "o.mp4", "--models-dir", empty, "--offline",
                     "--landmarker", "dlib", "--quiet")
    assert_clean_error(result, "no face found", "wall.png")  # not the missing model files

    silent = silent_wav(tmp_path / "silent.wav", 1.0)
    result = run_cli("animate", ASTRONAUT, silent, "-o", tmp_path / "o.mp4", "--models-dir", empty, "--offline",
                     "--landmarker", "dlib", "--quiet")
    assert_clean_error(result, "is silent", "silent.wav")  # not the missing model files
    assert not (tmp_path / "o.mp4").exists()


def test_good_inputs_then_report_the_missing_models(tmp_path):
    empty = tmp_path / "models"
    empty.mkdir()
    result = run_cli("animate", ASTRONAUT, SPEECH, "-o", tmp_path / "o.mp4", "--models-dir", empty, "--offline",
                     "--landmarker", "dlib", "--quiet")
    assert_clean_error(result, "model files missing", "talkhead download")


def test_animate_prints_the_output_path_on_stdout_even_quiet(tiny_models_dir, tmp_path):
    out = tmp_path / "talk.mp4"
    proc = subprocess.run([sys.executable, "-m", "talkhead", "animate", str(ASTRONAUT), str(SPEECH), "-o", str(out),
                           "--models-dir", str(tiny_models_dir), "--offline", "--landmarker", "dlib", "-q"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out) and out.is_file()


def test_version_and_debug_after_the_subcommand(tmp_path):
    result = run_cli("--version")
    assert result.exit_code == 0 and result.output.strip() == f"talkhead {talkhead.__version__}"
    # --debug after the subcommand (main() takes it anywhere) shows the traceback of an expected error
    proc = subprocess.run([sys.executable, "-m", "talkhead", "animate", str(tmp_path / "none.png"), str(SPEECH),
                           "--debug"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" in proc.stderr and "photo not found" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "talkhead", "animate", str(tmp_path / "none.png"), str(SPEECH)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert_clean_error(proc, "photo not found", "none.png")


@pytest.mark.parametrize("command", ["animate", "batch", "download", "doctor"])
def test_help_shows_examples_and_defaults(command):
    out = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"}, prog_name="talkhead").output
    assert "Examples" in out and f"talkhead {command}" in out
    if command in ("animate", "batch"):
        assert "[default: auto]" in out  # --device
        assert "$TALKHEAD_MODELS" in out


def test_help_does_not_import_torch():
    code = "import sys; from talkhead.cli import app; print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.stdout.strip() == "False", proc.stderr


@pytest.fixture
def no_dns(monkeypatch, tmp_path):
    """The network as on an offline machine: every name but localhost fails to resolve (what a
    laptop without Wi-Fi does), and no FAN weights are cached."""
    import socket

    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if host in ("localhost", "127.0.0.1", "::1"):
            return real(host, *args, **kwargs)
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("TALKHEAD_MIRROR", raising=False)


def test_offline_quick_start_is_one_line_with_the_fix_first(tmp_path, no_dns):
    """README's quick start with no models and no network: one error line (not wrapped, though
    longer than 80 columns) naming the missing files and then the fix; no line per source tried."""
    result = run_cli("animate", ASTRONAUT, SPEECH, "-o", tmp_path / "x.mp4", "--models-dir", tmp_path / "m",
                     "--landmarker", "dlib")
    line = assert_clean_error(result, "could not download", "fomm/vox-adv-cpk.pth.tar, mssync/args")
    assert len(line) > 80  # one line although stderr is not a terminal 80 columns wide
    fix = line.index("talkhead download --from-dir DIR")
    assert fix < 250 and "--mirror URL" in line and "-v download" in line
    assert "cannot resolve" not in line and "trying" not in line and "models/*.md" not in line
    assert not (tmp_path / "x.mp4").exists()


def test_offline_quick_start_with_auto_landmarks_is_one_line_too(tmp_path, no_dns, monkeypatch):
    """With the default ``--landmarker auto`` the landmarker's fallback note waits for the models:
    the offline quick start is still the one error line. A photo without a face (found before any
    model is needed) gets the note with its error, since which landmarker looked matters there."""
    import talkhead.landmarks as L

    monkeypatch.setattr(L, "_NOTED", set())  # as in a fresh process
    result = run_cli("animate", ASTRONAUT, SPEECH, "-o", tmp_path / "x.mp4", "--models-dir", tmp_path / "m")
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: could not download fomm/vox-adv-cpk.pth.tar")
    monkeypatch.setattr(L, "_NOTED", set())
    result = run_cli("animate", blank_photo(tmp_path / "wall.png"), SPEECH, "-o", tmp_path / "x.mp4",
                     "--models-dir", tmp_path / "m")
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.exit_code == 2 and len(lines) == 2, result.stderr
    assert lines[0].startswith("landmarker auto: using dlib (") and "Errno" not in lines[0]
    assert lines[1].startswith("error: no face found")


def test_verbose_shows_each_source_tried(tmp_path, no_dns):
    result = run_cli("-v", "animate", ASTRONAUT, SPEECH, "-o", tmp_path / "x.mp4", "--models-dir", tmp_path / "m",
                     "--landmarker", "dlib")
    assert result.exit_code == 2
    assert "fomm/vox-adv-cpk.pth.tar: trying Google Drive folder" in result.stderr
    assert "cannot resolve drive.google.com" in result.stderr
    trying = [ln for ln in result.stderr.splitlines() if ": trying " in ln]
    assert trying and all(re.search(r"\(https?://\S+\)$", ln) for ln in trying), trying  # not wrapped
    assert max(map(len, trying)) > 80
    assert "Tried: fomm/vox-adv-cpk.pth.tar (" in result.stderr.splitlines()[-1]


def test_verbose_is_accepted_after_the_subcommand(tmp_path, no_dns):
    proc = subprocess.run([sys.executable, "-m", "talkhead", "doctor", "--models-dir", str(tmp_path / "m"), "-v"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert "No such option" not in proc.stderr, proc.stderr


def test_max_seconds_refuses_long_speech_before_any_model(tmp_path, no_dns):
    """``--max-seconds``: speech longer than the limit is one line naming both durations and the way on,
    before any checkpoint is looked for (the models folder is empty); 0 lifts the limit (the run then
    stops at the missing checkpoints); a negative or NaN limit is a usage error."""
    args = ("animate", ASTRONAUT, SPEECH, "-o", tmp_path / "x.mp4", "--models-dir", tmp_path / "m",
            "--landmarker", "dlib", "--offline")
    line = assert_clean_error(run_cli(*args, "--max-seconds", "2"), "lasts 4.8 s", "--max-seconds 2")
    assert "0 = no limit" in line and "120 frames" in line
    assert_clean_error(run_cli(*args, "--max-seconds", "0"), "missing")
    for bad in ("-1", "nan"):
        assert_clean_error(run_cli(*args, "--max-seconds", bad), "--max-seconds must be")
    from talkhead.options import DEFAULT_MAX_SECONDS, AnimateOptions

    assert AnimateOptions().max_seconds == DEFAULT_MAX_SECONDS == 1800


def test_speech_above_full_scale_is_said_once(tmp_path):
    """A float WAV far above full scale: a note that the video's audio will be clipped (the keypoints
    use it as is); a normal file says nothing."""
    import soundfile as sf

    from talkhead.options import AnimateOptions
    from talkhead.pipeline import SpeechMotion

    samples, rate = sf.read(SPEECH, dtype="float32")
    loud = tmp_path / "loud.wav"
    sf.write(loud, samples * 8.0, rate, subtype="FLOAT")

    class Stub:
        options = AnimateOptions(landmarker="dlib", device="cpu")
        lines: list = []
        log = lines.append

    SpeechMotion(loud).prepare(Stub)
    assert len(Stub.lines) == 1 and "x full scale" in Stub.lines[0] and "clipped" in Stub.lines[0]
    SpeechMotion(SPEECH).prepare(Stub)
    assert len(Stub.lines) == 1
