"""The README's Python API snippet runs verbatim: in a folder holding what it names (``photo.png``,
``speech.wav``, ``driving.mp4`` and a ``models`` folder, here the tiny models), unchanged."""
from __future__ import annotations

import re
import shutil

import numpy as np

from helpers import ASTRONAUT, ROOT, SPEECH, probe


def _python_api_snippet(which: int = 0) -> str:
    """The ``which``-th Python code block of the README's "Python API" section (0: the API, 1: live)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Python API", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)[which]


def test_python_api_snippet_runs_verbatim(tmp_path, tiny_models_dir, monkeypatch):
    from talkhead.video import VideoWriter

    shutil.copytree(tiny_models_dir, tmp_path / "models")
    shutil.copy(ASTRONAUT, tmp_path / "photo.png")
    shutil.copy(SPEECH, tmp_path / "speech.wav")
    frames = np.stack([np.roll(np.asarray(__import__("PIL.Image").Image.open(ASTRONAUT).convert("RGB")), 3 * t, 1)
                       for t in range(10)])
    with VideoWriter(tmp_path / "driving.mp4", size=(512, 512), fps=25) as writer:
        writer.write(frames)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TALKHEAD_MODELS", raising=False)
    scope: dict = {}
    exec(compile(_python_api_snippet(), "README.md (Python API)", "exec"), scope)
    talk, moved = probe(tmp_path / "talk.mp4"), probe(tmp_path / "moved.mp4")
    assert talk.num_frames == 120 and moved.num_frames == 10
    assert scope["result"].output == (tmp_path / "moved.mp4") and scope["result"].output.is_absolute()
    assert "tensor" not in repr(scope["result"])  # printing a result shows no keypoint tensors


def test_live_snippet_runs_verbatim(tmp_path, tiny_models_dir, monkeypatch):
    """The README's live-session snippet, unchanged, with the tiny models: a frame of the photo's size
    with its audio, then an interruption leaves the session idle."""
    shutil.copytree(tiny_models_dir, tmp_path / "models")
    shutil.copy(ASTRONAUT, tmp_path / "photo.png")
    shutil.copy(SPEECH, tmp_path / "speech.wav")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("TALKHEAD_MODELS", raising=False)
    scope: dict = {}
    exec(compile(_python_api_snippet(1), "README.md (live)", "exec"), scope)
    frame = scope["frame"]
    assert frame.image.shape == (512, 512, 3) and frame.image.dtype == np.uint8
    assert len(frame.audio) == 16000 // 25
    after = scope["session"].pull()
    assert not after.speaking  # interrupted: idle
