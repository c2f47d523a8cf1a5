"""A first run that explains itself: inputs are checked before any model loads or downloads, and the
CLI's manners (--version, --debug anywhere, help with examples, output path on stdout)."""
from __future__ import annotations

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
