"""talkhead.io: atomic outputs and up-front output-path checks."""
from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from helpers import names
from talkhead.errors import OutputError
from talkhead.io import atomic_output, check_output_path

WEIRD_NAMES = ["with space.npz", "quote'\"s.npz", "ünïcødé 音声.npz", "-dash.npz", "$(touch pwned).npz"]


def test_success_renames_temp_beside_target(tmp_path):
    target = tmp_path / "out.npz"
    with atomic_output(target) as tmp:
        assert tmp.parent == target.parent  # same folder: the rename is atomic
        assert tmp.name.startswith(".") and tmp.suffix == ".npz" and tmp != target
        assert tmp.exists() and not target.exists()
        with open(tmp, "wb") as fh:
            np.savez(fh, x=np.arange(5))
    with np.load(target) as z:
        np.testing.assert_array_equal(z["x"], np.arange(5))
    assert names(tmp_path) == ["out.npz"]


def test_result_mode_follows_umask(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_output(tmp_path / "a.bin") as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o644  # not mkstemp's 0600


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()])
def test_exception_removes_temp_and_keeps_old_target(tmp_path, exc):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(type(exc)):
        with atomic_output(target, overwrite=True) as tmp:
            tmp.write_bytes(b"half-written")
            raise exc
    assert target.read_bytes() == b"old"
    assert names(tmp_path) == ["out.bin"]


def test_exception_without_previous_target_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_output(tmp_path / "new.mp4") as tmp:
            tmp.write_bytes(b"partial")
            raise KeyboardInterrupt
    assert names(tmp_path) == []


def test_existing_target_refused_before_block_runs(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"precious")
    ran = []
    with pytest.raises(OutputError, match="--overwrite") as info:
        with atomic_output(target):
            ran.append(True)
    assert not ran and str(target) in str(info.value)
    assert target.read_bytes() == b"precious"
    with atomic_output(target, overwrite=True) as tmp:
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert names(tmp_path) == ["out.bin"]


def test_target_appearing_during_write_is_not_clobbered(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(OutputError, match="appeared"):
        with atomic_output(target) as tmp:
            tmp.write_bytes(b"mine")
            target.write_bytes(b"someone else's")
    assert target.read_bytes() == b"someone else's"
    assert names(tmp_path) == ["out.bin"]


def test_missing_or_bad_parent(tmp_path):
    missing = tmp_path / "no such dir" / "out.mp4"
    with pytest.raises(OutputError, match="does not exist") as info:
        check_output_path(missing, overwrite=True)
    assert str(missing.parent) in str(info.value)
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(OutputError, match="not a directory"):
        atomic_output(afile / "out.mp4")
    with pytest.raises(OutputError, match="is a directory"):
        check_output_path(tmp_path, overwrite=True)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_unwritable_parent_real(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="not writable"):
            check_output_path(ro / "out.mp4", overwrite=False)
    finally:
        ro.chmod(0o700)


def test_unwritable_parent_reported_with_path(tmp_path, monkeypatch):
    import talkhead.io as tio

    def deny(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tio.os, "open", deny)
    with pytest.raises(OutputError, match="not writable") as info:
        check_output_path(tmp_path / "out.mp4", overwrite=False)
    assert str(tmp_path) in str(info.value)


def test_check_output_path_returns_absolute_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    got = check_output_path("rel.mp4", overwrite=False)
    assert got == tmp_path / "rel.mp4" and got.is_absolute()
    assert names(tmp_path) == []  # the writability probe is removed


@pytest.mark.parametrize("name", WEIRD_NAMES)
def test_weird_names(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    with atomic_output(name) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, v=np.ones(3))
    with np.load(tmp_path / name) as z:
        assert z["v"].sum() == 3
    assert names(tmp_path) == [name]
    assert not (tmp_path / "pwned").exists()


# ------------------------------------------------------------------------------------------- stale temporaries
def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # reaped: no process has this pid now (reuse within the test is vanishingly unlikely)


def test_hidden_name_carries_owner_pid(tmp_path):
    from talkhead.io import _HIDDEN_RE

    with atomic_output(tmp_path / "clip.mp4") as tmp:
        m = _HIDDEN_RE.match(os.fsencode(tmp.name))
        assert m is not None and int(m.group("pid")) == os.getpid()
        assert tmp.name.startswith(".clip.") and tmp.name.endswith(".partial.mp4")


def test_stale_partial_of_dead_process_is_swept_on_next_run(tmp_path):
    from talkhead.io import _HOST_TAG

    dead = tmp_path / f".old.{_dead_pid()}-{_HOST_TAG}-0123456789abcdef.partial.mp4"
    live = tmp_path / f".mine.{os.getpid()}-{_HOST_TAG}-0123456789abcdef.partial.mp4"
    other_host = tmp_path / f".far.{_dead_pid()}-zzzzzz-0123456789abcdef.partial.mp4"
    legacy = tmp_path / ".legacy.0123456789abcdef.partial.mp4"  # no pid: cannot be judged, kept
    for p in (dead, live, other_host, legacy):
        p.write_bytes(b"half a video")
    with atomic_output(tmp_path / "new.mp4") as tmp:
        tmp.write_bytes(b"video")
    assert names(tmp_path) == sorted([live.name, other_host.name, legacy.name, "new.mp4"])


def test_undecodable_target_name(tmp_path):
    target = tmp_path / os.fsdecode(b"clip\xe9.mp4")
    with atomic_output(target) as tmp:
        tmp.write_bytes(b"video")
    assert [os.fsencode(n) for n in os.listdir(tmp_path)] == [b"clip\xe9.mp4"]


def test_output_equal_to_input_refused(tmp_path):
    from talkhead.io import check_not_input

    audio = tmp_path / "talk.wav"
    audio.write_bytes(b"RIFF")
    link = tmp_path / "link.wav"
    link.symlink_to(audio)
    for out in (audio, link, tmp_path / "." / "talk.wav"):
        with pytest.raises(OutputError, match="is the input file"):
            check_not_input(out, None, audio)
    check_not_input(tmp_path / "talk.mp4", audio)
