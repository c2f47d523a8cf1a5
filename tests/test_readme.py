"""The README's Python API snippet runs verbatim: in a folder holding what it names (``photo.png``,
``speech.wav``, ``driving.mp4`` and a ``models`` folder, here the tiny models), unchanged."""
from __future__ import annotations

import re
import shutil

import numpy as np

from helpers import ASTRONAUT, ROOT, SPEECH, probe


def _python_api_snippet() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)


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
