"""Tests of talkhead.checkpoints: safe loading (exploit payloads, pickled DataLoaders, zip and
legacy formats, corrupt files), state-dict mismatch reports and hashing."""
from __future__ import annotations

import builtins
import collections
import hashlib
import logging
import os
import pickle
import subprocess
from pathlib import Path

import pytest
import torch

from talkhead.checkpoints import (
    RefusedGlobal,
    UnloadedObject,
    allowed_globals,
    file_digests,
    load_checkpoint,
    load_state_dict_checked,
    require_finite,
    state_dict_diff,
)
from talkhead.errors import CheckpointError, StateDictMismatchError


class Reduce:
    """Pickles as ``fn(*args)``; nested instances build call chains (e.g. getattr(__import__(..)))."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args

    def __call__(self, *args):  # the pickler requires a callable in a reduce tuple
        raise AssertionError("never called while pickling")


def payloads(marker: Path) -> dict:
    """Objects whose unpickling would create ``marker``, through different globals."""
    m = str(marker)
    return {
        "os.system": Reduce(os.system, f"touch '{m}'"),  # pickled as posix.system
        "exec": Reduce(builtins.exec, f"open({m!r}, 'w').close()"),
        "eval": Reduce(builtins.eval, f"open({m!r}, 'w').close()"),
        "getattr_chain": Reduce(Reduce(getattr, Reduce(builtins.__import__, "os"), "system"), f"touch '{m}'"),
        "subprocess": Reduce(subprocess.call, ["touch", m]),
    }


@pytest.fixture
def weights() -> dict:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(5, 2))
    return net.state_dict()


def _loader():
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.arange(12.0).reshape(6, 2)),
                                       batch_size=2, shuffle=True)


@pytest.mark.parametrize("name", list(payloads(Path("x"))))
def test_payloads_are_live_under_plain_pickle(tmp_path, name):
    """Control: each payload really creates the marker when unpickled normally (protocol 2 as
    torch.save uses it; builtins are written under their Python 2 name ``__builtin__``)."""
    marker = tmp_path / "marker"
    data = pickle.dumps(payloads(marker)[name], protocol=2)
    if name in ("exec", "eval", "getattr_chain"):
        assert b"__builtin__" in data
    if name == "os.system":
        assert b"posix" in data or b"nt\n" in data
    pickle.loads(data)
    assert marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("protocol", [2, 4])
def test_training_dict_with_loaders_loads_as_placeholders(tmp_path, weights, legacy, protocol, caplog):
    """The MS-Sync trainer's full save (pickled DataLoaders) loads: trainer objects become inert."""
    path = tmp_path / "model_chkpt.pt"
    obj = {"checkpoints": weights, "loader": _loader(), "val_loader": _loader(), "steps": 7,
           "lrs": collections.defaultdict(list, {"g": [0.1]})}
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy, pickle_protocol=protocol)

    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, map_location="cpu", weights_only=True)

    with caplog.at_level(logging.WARNING, logger="talkhead.checkpoints"):
        out = load_checkpoint(path)

    assert list(out["checkpoints"]) == list(weights)
    for key, tensor in weights.items():
        assert out["checkpoints"][key].dtype == tensor.dtype
        assert torch.equal(out["checkpoints"][key], tensor)
    assert out["steps"] == 7
    loader = out["loader"]
    assert isinstance(loader, UnloadedObject)
    assert (loader.module, loader.name) == ("torch.utils.data.dataloader", "DataLoader")
    assert isinstance(loader.state, dict) and loader.state["batch_size"] == 2
    assert "restricted unpickler" in caplog.text
    assert "torch.utils.data.dataloader.DataLoader" in caplog.text


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("name", list(payloads(Path("x"))))
def test_payloads_are_refused_as_tampered(tmp_path, weights, legacy, name):
    """A callable no training dump holds (os.system, eval, exec, getattr chains, subprocess) is not
    neutralised but refused: the file is reported as tampered and nothing of it is returned."""
    marker = tmp_path / "marker"
    path = tmp_path / "model_chkpt.pt"
    torch.save({"checkpoints": weights, "loader": _loader(), "x": payloads(marker)[name]}, path,
               _use_new_zipfile_serialization=not legacy)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert not marker.exists()
    assert msg.startswith(f"refused checkpoint {path}") and "tampered" in msg and "\n" not in msg
    expected = {"os.system": ("posix.system", "nt.system"), "exec": ("builtins.exec",), "eval": ("builtins.eval",),
                "getattr_chain": ("builtins.getattr",), "subprocess": ("subprocess.call",)}[name]
    assert any(e in msg for e in expected)
    assert isinstance(info.value.__cause__, RefusedGlobal)


def test_dangerous_names_are_not_on_the_allow_list():
    allowed = {f"{m}.{n}" for m, n in allowed_globals()}
    for name in ("builtins.eval", "builtins.exec", "builtins.getattr", "builtins.__import__",
                 "builtins.open", "posix.system", "os.system", "subprocess.Popen", "subprocess.call",
                 "copyreg._reconstructor", "torch.load", "builtins.setattr"):
        assert name not in allowed
    assert "torch._utils._rebuild_tensor_v2" in allowed and "collections.OrderedDict" in allowed


def test_codecs_encode_only_latin1(tmp_path):
    """Protocol 2 stores bytes via _codecs.encode(str, 'latin1'); other codecs are refused."""
    path = tmp_path / "b.pt"
    torch.save({"blob": b"\x00\xffabc", "w": torch.ones(2), "x": _loader()}, path)
    assert load_checkpoint(path)["blob"] == b"\x00\xffabc"
    from talkhead.checkpoints import _latin1_encode

    with pytest.raises(pickle.UnpicklingError):
        _latin1_encode("abc", "rot13")


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_plain_state_dict_loads_with_weights_only(tmp_path, weights, legacy, caplog):
    path = tmp_path / "sd.pt"
    torch.save({"generator": weights, "epoch": 3}, path, _use_new_zipfile_serialization=not legacy)
    with caplog.at_level(logging.WARNING, logger="talkhead.checkpoints"):
        out = load_checkpoint(path)
    assert caplog.text == ""  # no fallback needed
    assert out["epoch"] == 3 and all(torch.equal(out["generator"][k], v) for k, v in weights.items())


def test_real_fixture_checkpoints_load(fomm_tiny_files, mssync_tiny_dir):
    fomm = load_checkpoint(fomm_tiny_files[1])
    assert list(fomm) == ["generator", "discriminator", "kp_detector", "optimizer_generator",
                          "optimizer_discriminator", "optimizer_kp_detector", "epoch"]
    assert fomm["kp_detector"]["down.weight"].shape == (3, 1, 13, 13)
    ms = load_checkpoint(mssync_tiny_dir / "model_chkpt.pt")
    assert ms["steps"] == 0 and len(ms["checkpoints"]) == 256


def test_missing_and_empty_and_directory(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(tmp_path / "empty.pt")
    with pytest.raises(CheckpointError, match="not a file"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("fraction", [0.02, 0.5, 0.98])
def test_truncated_files(tmp_path, weights, legacy, fraction):
    path = tmp_path / "full.pt"
    torch.save({"checkpoints": weights, "loader": _loader()}, path, _use_new_zipfile_serialization=not legacy)
    data = path.read_bytes()
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(bad)
    msg = str(info.value)
    assert str(bad) in msg and "\n" not in msg and "Traceback" not in msg and len(msg) < 400
    assert "truncated" in msg or "corrupt" in msg


def test_corrupt_files(tmp_path):
    rng = torch.Generator().manual_seed(3)
    for name, data in [("random.pt", bytes(torch.randint(0, 256, (4096,), generator=rng, dtype=torch.uint8).tolist())),
                       ("text.pt", b"definitely not a checkpoint\n" * 20),
                       ("image.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)]:
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(path)
        msg = str(info.value)
        assert str(path) in msg and "\n" not in msg and len(msg) < 400


def test_corrupted_zip_member(tmp_path, weights):
    """Flip bytes inside the stored pickle of a zip checkpoint: a readable CheckpointError."""
    path = tmp_path / "c.pt"
    torch.save({"checkpoints": weights}, path)
    data = bytearray(path.read_bytes())
    start = data.index(b"data.pkl") + 40
    data[start:start + 30] = b"\xff" * 30
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=str(path).replace(".", r"\.")):
        load_checkpoint(path)


def test_zip_failures_name_the_archive_only_when_it_is_damaged(tmp_path):
    """A sound zip archive whose pickle is not a checkpoint's (a storage typename or class renamed, the
    CRCs recomputed) is not called "corrupt or truncated"; a damaged central directory is."""
    import zipfile

    src = tmp_path / "ok.pt"
    torch.save({"w": torch.zeros(4)}, src)

    def rewrite(name: str, old: bytes, new: bytes, *, fix_crc: bool = True) -> Path:
        dst = tmp_path / name
        if fix_crc:
            with zipfile.ZipFile(src) as z, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as out:
                for n in z.namelist():
                    d = z.read(n)
                    out.writestr(n, d.replace(old, new) if n.endswith("data.pkl") else d)
        else:
            data = src.read_bytes()
            assert data.count(old) == 1
            dst.write_bytes(data.replace(old, new))
        return dst

    for bad in (rewrite("typename.pt", b"storageq", b"storagXq"), rewrite("class.pt", b"FloatStorage", b"FloatStoragf")):
        with pytest.raises(CheckpointError) as info:
            load_checkpoint(bad)
        msg = str(info.value)
        assert "corrupt" not in msg and "truncated" not in msg and "not a valid checkpoint" in msg, msg
        assert "\n" not in msg and str(bad) in msg
    flipped = rewrite("flipped.pt", b"PK\x05\x06", b"PK\x05\x07", fix_crc=False)  # end of central directory
    with pytest.raises(CheckpointError, match="zip archive is corrupt"):
        load_checkpoint(flipped)


# ----------------------------------------------------------------------------------------------
# state dict checks
# ----------------------------------------------------------------------------------------------
def _net():
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Conv2d(8, 2, 1))


def test_state_dict_diff_structure():
    expected = {"a.weight": (4, 3), "a.bias": torch.Size([4]), "b.weight": torch.zeros(2, 4), "c": (1,)}
    found = {"a.weight": torch.zeros(4, 3), "a.bias": torch.zeros(5), "b.weight": "oops", "d": torch.zeros(1)}
    diff = state_dict_diff(expected, found)
    assert diff and diff.count == 4
    assert diff.missing == ("c",) and diff.unexpected == ("d",)
    assert [(m.key, m.expected, m.found) for m in diff.wrong_shape] == [("a.bias", (4,), (5,)),
                                                                           ("b.weight", (2, 4), None)]
    assert diff.wrong_shape[1].found_type == "str"
    assert not state_dict_diff(expected, {k: torch.zeros(v if isinstance(v, tuple) else tuple(v.shape))
                                          for k, v in expected.items()})


def test_load_state_dict_checked_ok():
    src, dst = _net(), torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Conv2d(8, 2, 1))
    load_state_dict_checked(dst, src.state_dict(), "toy")
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v)


def test_load_state_dict_checked_assign_takes_the_tensors_in_the_module_dtype():
    src = _net()
    state = {k: (v.double() if k == "0.weight" else v) for k, v in src.state_dict().items()}
    with torch.device("meta"):
        dst = _net()
    load_state_dict_checked(dst, state, "toy", assign=True)
    assert dst[0].weight.dtype == torch.float32 and not dst[0].weight.is_meta
    assert torch.equal(dst[0].weight, src[0].weight)
    assert dst[1].running_var.data_ptr() == state["1.running_var"].data_ptr()  # taken, not copied
    assert dst[1].num_batches_tracked.dtype == torch.int64


def test_mismatch_report_is_readable():
    model = _net()
    sd = dict(model.state_dict())
    del sd["1.running_var"]                     # missing
    sd["3.weight"] = torch.zeros(1)             # unexpected
    sd["2.weight"] = torch.zeros(2, 16, 1, 1)   # wrong shape
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(StateDictMismatchError) as info:
        load_state_dict_checked(model, sd, "toy model")
    msg = str(info.value)
    lines = msg.splitlines()
    assert lines[0].startswith("toy model: the checkpoint does not match the model: 1 missing, 1 unexpected, "
                               "1 wrong shape (model has 9 entries, checkpoint has 9)")
    assert "missing from the checkpoint (1):" in msg and "    1.running_var" in lines
    assert "unexpected in the checkpoint (1):" in msg and "    3.weight" in lines
    assert "    2.weight: model expects (2, 8, 1, 1), checkpoint has (2, 16, 1, 1)" in lines
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())  # nothing loaded


def test_mismatch_report_truncates_and_hints():
    expected = {f"layer{i}.weight": (3,) for i in range(50)}
    found = {f"module.layer{i}.weight": torch.zeros(3) for i in range(50)}
    diff = state_dict_diff(expected, found)
    report = diff.report("big", limit=5)
    assert "missing from the checkpoint (50):" in report and "... and 45 more" in report
    assert report.count("\n    layer") == 5
    assert "'module.' prefix" in report
    whole = state_dict_diff(expected, {"checkpoints": {}, "steps": 0}).report("gen")
    assert "whole checkpoint" in whole


def test_not_a_mapping():
    with pytest.raises(StateDictMismatchError, match="expected a state dict"):
        load_state_dict_checked(_net(), UnloadedObject(), "toy")


def test_file_digests(tmp_path):
    data = os.urandom(3 * 1024 * 1024 + 17)
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert file_digests(path) == {"sha256": hashlib.sha256(data).hexdigest()}
    assert file_digests(path, ("sha256", "md5")) == {"sha256": hashlib.sha256(data).hexdigest(),
                                                     "md5": hashlib.md5(data).hexdigest()}
    with pytest.raises(CheckpointError, match="not found"):
        file_digests(tmp_path / "missing")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_require_finite_names_file_and_tensor(weights, bad):
    require_finite(weights, "ok.pt", "generator")  # finite weights and integer buffers pass
    broken = dict(weights)
    key = "1.running_var"
    broken[key] = weights[key].clone()
    broken[key][2] = bad
    with pytest.raises(CheckpointError) as info:
        require_finite(broken, "/models/x.pt", "generator")
    msg = str(info.value)
    assert msg.startswith("/models/x.pt: generator tensor '1.running_var' (4,) holds 1 non-finite value")


def test_require_finite_accepts_finite_values_whose_sum_overflows():
    huge = torch.full((4,), 3e38)  # finite, but their float32 sum is inf: the exact pass decides
    assert not torch.isfinite(huge.sum())
    require_finite({"w": huge, "v": huge.view(2, 2).t()}, "ok.pt", "generator")
    huge[3] = float("nan")
    with pytest.raises(CheckpointError, match="'w' \\(4,\\) holds 1 non-finite value"):
        require_finite({"w": huge}, "x.pt", "generator")


# ------------------------------------------------------------------------------------------------
# memory-mapped loading
# ------------------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("trainer", [False, True], ids=["weights_only", "restricted"])
def test_mmap_load_gives_identical_tensors(tmp_path, weights, legacy, trainer):
    """``mmap=True`` maps a zip-format file (both loaders) and reads a legacy one as usual: same values."""
    path = tmp_path / "ckpt.pt"
    obj = {"generator": weights, "epoch": 3}
    if trainer:
        obj["loader"] = _loader()
    torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
    plain, mapped = load_checkpoint(path), load_checkpoint(path, mmap=True)
    assert mapped["epoch"] == 3 and list(mapped["generator"]) == list(weights)
    for key, tensor in plain["generator"].items():
        got = mapped["generator"][key]
        assert got.dtype == tensor.dtype and got.shape == tensor.shape and torch.equal(got, tensor)
    if trainer:
        assert isinstance(mapped["loader"], UnloadedObject)
    got = mapped["generator"]["0.weight"]
    got.add_(1.0)  # a private mapping: writable, and the file is untouched
    assert torch.equal(load_checkpoint(path)["generator"]["0.weight"], weights["0.weight"])


@pytest.mark.parametrize("name", ["os.system", "exec"])
def test_mmap_load_still_refuses_payloads(tmp_path, weights, name):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"generator": weights, "x": payloads(marker)[name]}, path)
    with pytest.raises(CheckpointError, match="refused checkpoint"):
        load_checkpoint(path, mmap=True)
    assert not marker.exists()


def test_mmap_truncated_zip_is_a_checkpoint_error(tmp_path, weights):
    path = tmp_path / "cut.pt"
    torch.save({"generator": weights}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=f"cannot read checkpoint {path}") as info:
        load_checkpoint(path, mmap=True)
    assert "\n" not in str(info.value)


def test_mmap_non_finite_weights_still_refused(tmp_path, weights):
    weights["0.weight"][0, 0, 0, 0] = float("nan")
    path = tmp_path / "nan.pt"
    torch.save({"generator": weights}, path)
    with pytest.raises(CheckpointError, match="non-finite"):
        require_finite(load_checkpoint(path, mmap=True)["generator"], path, "generator")
