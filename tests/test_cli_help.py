"""Every command's --help reads as written: no text eaten as Rich markup, an Examples section whose
lines fit 80 columns, usage names as the text names them, no value shown for flags, one default each."""
from __future__ import annotations

import inspect
import re

import pytest
import typer
from typer.testing import CliRunner

from talkhead.cli import app


def _commands():
    """``[(path, click command)]`` of every leaf command (``["train", "syncers"]``, ...)."""
    root = typer.main.get_command(app)
    out = []

    def walk(group, path):
        ctx = group.context_class(group)
        for name in group.list_commands(ctx):
            cmd = group.get_command(ctx, name)
            if hasattr(cmd, "list_commands"):
                walk(cmd, path + [name])
            else:
                out.append((path + [name], cmd))

    walk(root, [])
    return out


COMMANDS = _commands()
IDS = [" ".join(p) for p, _ in COMMANDS]


def _help(path, columns):
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": str(columns)}, prog_name="talkhead")
    assert result.exit_code == 0, result.output
    return result.output


def _flat(text):
    return " ".join(text.replace("│", " ").split())


def test_every_command_is_covered():
    assert {"animate", "batch", "reenact", "download", "doctor", "ui", "preprocess", "merge-shards", "evaluate",
            "train syncers", "train generator"} <= set(IDS)


@pytest.mark.parametrize("path,cmd", COMMANDS, ids=IDS)
def test_bracketed_text_survives(path, cmd):
    """A ``[word]`` in a docstring or an option's help is shown, not swallowed as Rich markup
    (``pip install 'talkhead[ui]'`` once showed as ``'talkhead'``)."""
    out = _flat(_help(path, 1000))
    texts = [inspect.getdoc(cmd.callback) or ""]
    texts += [p.help.replace("\\[", "[") for p in cmd.params if getattr(p, "help", None)]
    brackets = [b for t in texts for b in re.findall(r"\[[^\[\]\n]+\]", t)]
    assert all(_flat(b) in out for b in brackets), [b for b in brackets if _flat(b) not in out]
    if path == ["ui"]:
        assert "pip install 'talkhead[ui]'" in out


@pytest.mark.parametrize("path,cmd", COMMANDS, ids=IDS)
def test_examples_fit_80_columns(path, cmd):
    """An Examples section, and each example command on one line of an 80-column help."""
    doc = inspect.getdoc(cmd.callback)
    assert "\nExamples\n" in doc, f"{' '.join(path)}: no Examples section"
    examples = [line.strip() for line in doc.split("\nExamples\n", 1)[1].splitlines() if line.strip()]
    assert examples and all(e.startswith("talkhead " + " ".join(path)) for e in examples), examples
    lines = [line.strip() for line in _help(path, 80).splitlines()]
    assert all(e in lines for e in examples), [e for e in examples if e not in lines]


@pytest.mark.parametrize("path,cmd", COMMANDS, ids=IDS)
def test_options_column_and_usage(path, cmd):
    out = _help(path, 1000)
    assert "<bool>" not in out  # a flag takes no value
    usage = next(line for line in out.splitlines() if "Usage:" in line)
    assert "{" not in usage
    for arg in (p for p in cmd.params if p.param_type_name == "argument"):
        name = arg.metavar or arg.name
        assert name.isupper() and name in usage, (name, usage)
    for line in out.splitlines():
        if line.lstrip("│ *").startswith("--"):
            assert line.count("[default:") <= 1, line  # one default per option
            assert "<str>" not in line or not re.search(r"--(device|landmarker|crop|precision|frame)\b", line)


def test_prose_paragraphs_are_reflowed():
    """The docstring's own line breaks do not show: each paragraph wraps at the terminal's width."""
    out = _help(["animate"], 80)
    assert "run downloads them, see `talkhead download`" in _flat(out)
    assert not any(line.rstrip().endswith("(the first run downloads them,") for line in out.splitlines())


def test_choices_and_single_defaults():
    out = _help(["animate"], 1000)
    assert "auto|cpu|cuda|mps" in out and "auto|fan|dlib" in out
    row = next(line for line in out.splitlines() if "--batch-size" in line)
    assert row.count("[default:") == 1
    pre = next(line for line in _help(["preprocess"], 1000).splitlines() if line.startswith("│") and "--device" in line)
    assert "[default: cpu]" in pre and "cpu (the default here)" in pre
    ev = next(line for line in _help(["evaluate"], 1000).splitlines() if line.startswith("│") and "--split" in line)
    assert "[default: every split]" in ev


@pytest.mark.parametrize("which", ["syncers", "generator"])
def test_train_device_reaches_the_run_config(which, tmp_path, monkeypatch):
    seen = {}

    def fake(data_dir, run_dir, *, config, overrides, resume, progress, **kw):
        seen.update(overrides)
        return {"ok": 1}

    module = "talkhead.train.syncers.train_syncers" if which == "syncers" else "talkhead.train.generator.train_generator"
    monkeypatch.setattr(module, fake)
    extra = ["--syncers", str(tmp_path)] if which == "generator" else []
    result = CliRunner().invoke(app, ["train", which, str(tmp_path), "-o", str(tmp_path / "run"), *extra,
                                      "--device", "cpu", "-q"])
    assert result.exit_code == 0, result.output
    assert seen.get("device") == "cpu"
    seen.clear()
    result = CliRunner().invoke(app, ["train", which, str(tmp_path), "-o", str(tmp_path / "run"), *extra,
                                      "--device", "cpu", "--set", "device=auto", "-q"])
    assert seen.get("device") == "auto"  # an explicit --set wins
