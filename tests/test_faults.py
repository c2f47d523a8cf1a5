"""Fault-probe regressions (issue 23, items 12-15): hostile model files and mirrors are refused before
they cost memory or disk, and every refusal names the file and the key at fault.

The hostile files are built here, small: a 40-byte pickle entry that would allocate gigabytes, a
checkpoint of stride-0 views, YAML/JSON sizes far beyond the published models.
"""
from __future__ import annotations

import collections
import copy
import gzip
import json
import re
import shutil
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest
import torch
import yaml

from helpers import QuietHTTPServer, states_of
from talkhead import store
from talkhead.checkpoints import load_checkpoint, require_finite
from talkhead.errors import CheckpointError, ConfigError
from talkhead.store import VERIFIED, install_from, read_store_manifest, register_local

pytestmark = pytest.mark.usefixtures("new_process")  # each test starts like a new process: nothing hashed yet

DATA = Path(__file__).parent / "data"


class Reduce:
    """Pickles as ``fn(*args)``."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def _tiny_fomm() -> dict:
    return torch.load(DATA / "fomm" / "tiny-cpk.pth.tar", map_location="cpu", weights_only=True)


def _loader():
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(4, 2)), batch_size=2)


# ------------------------------------------------------------------------------------------ 12: checkpoints
@pytest.mark.parametrize("entry, trainer", [
    (Reduce(bytearray, 50_000_000), False),         # torch's own weights_only unpickler allows bytearray
    (Reduce(set, range(30_000_000)), True),         # our fallback (a pickled DataLoader beside it)
    (Reduce(frozenset, range(30_000_000)), True),
], ids=["bytearray", "set-range", "frozenset-range"])
def test_size_taking_constructor_is_refused_before_allocating(tmp_path, entry, trainer, packaged_tiny_config):
    ckpt = _tiny_fomm()
    ckpt["x"] = entry
    if trainer:
        ckpt["loader"] = _loader()
    bad = tmp_path / "in" / "vox-adv-cpk.pth.tar"
    bad.parent.mkdir()
    torch.save(ckpt, bad)
    assert bad.stat().st_size < (DATA / "fomm" / "tiny-cpk.pth.tar").stat().st_size + 4096  # a few bytes more
    with pytest.raises(CheckpointError, match=r"refused checkpoint .*(bytearray|builtins.range)") as err:
        load_checkpoint(bad)
    assert "\n" not in str(err.value)
    root = tmp_path / "models"
    with pytest.raises(CheckpointError):
        install_from(bad, root)
    assert "fomm/vox-adv-cpk.pth.tar" not in read_store_manifest(root)


def test_pickled_bytes_and_sets_still_load(tmp_path):
    """What pickles legitimately hold (a set of items, a bytearray copy) still loads."""
    path = tmp_path / "c.pt"
    torch.save({"sd": {"w": torch.ones(2)}, "loader": _loader(), "s": {1, 2}, "b": bytearray(b"ab")}, path)
    out = load_checkpoint(path)
    assert out["s"] == {1, 2} and out["b"] == bytearray(b"ab")


def test_top_level_entry_that_is_not_a_state_dict_is_refused(tmp_path, packaged_tiny_config):
    ckpt = _tiny_fomm()
    ckpt["blob"] = b"\0" * 1000
    root = tmp_path / "models"
    (root / "fomm").mkdir(parents=True)
    torch.save(ckpt, root / "fomm" / "vox-adv-cpk.pth.tar")
    shutil.copyfile(DATA / "fomm" / "tiny.yaml", root / "fomm" / "vox-adv-256.yaml")
    states = register_local(root, names="fomm")
    assert states["fomm/vox-adv-cpk.pth.tar"].state != VERIFIED
    assert "'blob' is a bytes" in states["fomm/vox-adv-cpk.pth.tar"].reason


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_call_of_a_tolerated_function_is_refused(tmp_path, legacy):
    """torch.hub.load(...) is in a tolerated namespace; calling it (REDUCE) is still refused."""
    path = tmp_path / "c.pt"
    torch.save({"checkpoints": {"w": torch.ones(2)}, "x": Reduce(torch.hub.load, "evil/repo", "m")}, path,
               _use_new_zipfile_serialization=not legacy)
    with pytest.raises(CheckpointError, match=r"refused checkpoint .*calls torch\.hub\.load"):
        load_checkpoint(path)


def test_trainer_dump_with_defaultdict_still_loads(tmp_path):
    path = tmp_path / "c.pt"
    torch.save({"checkpoints": {"w": torch.ones(2)}, "loader": _loader(),
                "lrs": collections.defaultdict(list, {"g": [0.1]})}, path)
    assert load_checkpoint(path)["lrs"].name == "defaultdict"  # rebuilt inertly, not refused


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_stride0_views_are_refused(tmp_path, legacy):
    """A few bytes of storage described as a 512x8192 tensor: refused when read, and by require_finite."""
    path = tmp_path / "c.pt"
    torch.save({"generator": {"w": torch.zeros(1).expand(512, 8192)}}, path,
               _use_new_zipfile_serialization=not legacy)
    assert path.stat().st_size < 10_000
    with pytest.raises(CheckpointError, match=r"refused checkpoint .*storage of 1"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"'w' \(512, 8192\) has 4194304 elements but its storage holds 1"):
        require_finite({"w": torch.zeros(1).expand(512, 8192)}, path, "generator")


def test_finite_check_of_a_strided_view(tmp_path):
    """A legitimate non-contiguous tensor is checked in chunks and its NaN still found."""
    base = torch.zeros(64, 64)
    base[3, 5] = float("nan")
    require_finite({"ok": base[:, :2]}, tmp_path, "g")
    with pytest.raises(CheckpointError, match="1 non-finite"):
        require_finite({"bad": base.t()}, tmp_path, "g")


def _fomm_yaml() -> dict:
    return yaml.safe_load((DATA / "fomm" / "tiny.yaml").read_text())


def test_fomm_config_far_larger_than_published_is_refused(tmp_path):
    from talkhead.fomm.config import FOMMConfig

    data = _fomm_yaml()
    for section in (data["model_params"]["kp_detector_params"], data["model_params"]["generator_params"],
                    data["model_params"]["generator_params"]["dense_motion_params"]):
        section["block_expansion"], section["max_features"] = 512, 8192
    with pytest.raises(ConfigError, match=r"M parameters, more than talkhead accepts"):
        FOMMConfig.from_dict(data, "big.yaml")

    data = _fomm_yaml()
    data["dataset_params"]["frame_shape"] = [8192, 8192, 3]
    with pytest.raises(ConfigError, match=r"frame_shape \[8192, 8192, 3\] is larger than talkhead renders"):
        FOMMConfig.from_dict(data, "big.yaml")
    FOMMConfig.from_dict(_fomm_yaml(), "tiny.yaml")  # control


def test_smac_config_far_larger_than_published_is_refused():
    from talkhead.smac.config import SMACConfig, default_config_path

    data = yaml.safe_load(default_config_path().read_text())
    SMACConfig.from_dict(copy.deepcopy(data), "smac.yml")  # control
    data["network_motion_estimator"]["dense_motion_params"]["max_features"] = 8192
    with pytest.raises(ConfigError, match=r"dense_motion_params.max_features = 8192 is outside"):
        SMACConfig.from_dict(data, "big.yml")


# ------------------------------------------------------------------------------------------ 13: MS-Sync args
def _args_text(kind: str) -> str:
    base = json.loads((DATA / "mssync" / "args").read_text())
    return {"float": json.dumps({**base, "hidden_size": 1e30}),
            "huge-int": json.dumps({**base, "hidden_size": 10 ** 30}),
            "digits": json.dumps(base)[:-1] + ', "x": ' + "9" * 5000 + "}",
            "nested": json.dumps(base)[:-1] + ', "x": ' + "[" * 200_000 + "}",
            "obs_len": json.dumps({**base, "obs_len": 10 ** 9})}[kind]


@pytest.mark.parametrize("kind, words", [
    ("float", "'hidden_size' = 1e+30"), ("huge-int", "hidden_size=1000000000000000000000000000000 is larger"),
    ("digits", "thousands of digits"), ("nested", "nested too deeply"), ("obs_len", "obs_len=1000000000 is larger")])
def test_bad_args_blamed_on_args_naming_the_key(tmp_path, mssync_tiny_dir, kind, words):
    root = tmp_path / "models"
    shutil.copytree(mssync_tiny_dir, root / "mssync")
    (root / "mssync" / "args").write_text(_args_text(kind))
    states = register_local(root, names="mssync")
    args, ckpt = states["mssync/args"], states["mssync/model_chkpt.pt"]
    assert args.state == "corrupt" and ckpt.state != "corrupt", (args, ckpt)
    assert str(root / "mssync" / "args") in args.reason and words in args.reason
    for raw in ("Overflow", "Exceeds the limit", "RecursionError", "logfbank", "\n"):
        assert raw not in args.reason

    from talkhead.mssync.config import MSSyncConfig

    with pytest.raises(ConfigError, match=re.escape(words)):
        MSSyncConfig.from_args_file(root / "mssync" / "args")


# ------------------------------------------------------------------------------------------ 14: broken manifest
ALL = ["fomm/vox-adv-256.yaml", "fomm/vox-adv-cpk.pth.tar", "mssync/args", "mssync/model_chkpt.pt"]


def _good_dir(root: Path, mssync_tiny_dir: Path) -> Path:
    (root / "fomm").mkdir(parents=True)
    shutil.copyfile(DATA / "fomm" / "tiny.yaml", root / "fomm" / "vox-adv-256.yaml")
    shutil.copyfile(DATA / "fomm" / "tiny-cpk.pth.tar", root / "fomm" / "vox-adv-cpk.pth.tar")
    shutil.copytree(mssync_tiny_dir, root / "mssync")
    return root


def test_broken_manifest_re_trusts_nothing(tmp_path, mssync_tiny_dir, packaged_tiny_config):
    from talkhead.doctor import doctor_report
    from talkhead.store import ensure_models, verify

    root = _good_dir(tmp_path / "models", mssync_tiny_dir)
    register_local(root)
    assert states_of(verify(root)) == dict.fromkeys(ALL, VERIFIED)
    ckpt = torch.load(root / "mssync" / "model_chkpt.pt", map_location="cpu", weights_only=True)
    ckpt["steps"] = 12345  # another layout-valid file
    torch.save(ckpt, root / "mssync" / "model_chkpt.pt")
    (root / "manifest.json").write_text("{ this is not json")
    store.clear_hash_memo()

    with pytest.raises(CheckpointError, match=r"manifest\.json.*download --force") as err:
        ensure_models(root, offline=True)
    assert "mssync/model_chkpt.pt" in str(err.value)
    assert (root / "manifest.json").read_text() == "{ this is not json"  # nothing re-recorded
    assert set(states_of(verify(root)).values()) == {"corrupt"}

    report = doctor_report(root)
    assert not report["ready"]
    assert any("manifest.json" in p and "--from-dir" in p for p in report["problems"]), report["problems"]

    # --from-dir with one model's good files: only those are trusted again, the rest stay refused
    good = _good_dir(tmp_path / "good", mssync_tiny_dir)
    install_from(good / "mssync", root)
    states = states_of(verify(root))
    assert states["mssync/model_chkpt.pt"] == VERIFIED and states["mssync/args"] == VERIFIED
    assert states["fomm/vox-adv-cpk.pth.tar"] == "corrupt"
    assert json.loads((root / "manifest.json").read_text()).get("lost") is True
    install_from(good / "fomm", root)
    assert states_of(verify(root)) == dict.fromkeys(ALL, VERIFIED)
    assert "lost" not in json.loads((root / "manifest.json").read_text())
    assert doctor_report(root)["models"]["manifest_problem"] == ""


def test_new_directory_without_manifest_still_records_files_placed_by_hand(tmp_path, mssync_tiny_dir,
                                                                           packaged_tiny_config):
    from talkhead.store import ensure_models, verify

    root = _good_dir(tmp_path / "models", mssync_tiny_dir)
    ensure_models(root, offline=True)
    assert states_of(verify(root)) == dict.fromkeys(ALL, VERIFIED)


# ------------------------------------------------------------------------------------------ 15: download caps
class _Hostile(BaseHTTPRequestHandler):
    """Loopback answers: ``/endless/*`` an endless body, ``/gzip/*`` a small gzip body that expands
    to 20 MB, ``/stall/*`` a few bytes then nothing until the test ends, ``/good/<rel>`` the tiny file,
    ``/redirect/<rel>`` a redirect to ``server.other``'s ``/good/<rel>``."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _head(self, code=200, **headers):
        self.send_response(code)
        for k, v in headers.items():
            self.send_header(k.replace("_", "-"), str(v))
        self.end_headers()

    def do_GET(self):  # noqa: N802 - http.server API
        server, path = self.server, self.path
        kind, _, rel = path.lstrip("/").partition("/")
        try:
            if kind == "endless":
                self._head(Content_Type="application/octet-stream", Connection="close")
                block = b"x" * 65536
                while server.sent < 256 << 20:  # a safety bound for the test machine, far above any cap
                    self.wfile.write(block)
                    server.sent += len(block)
            elif kind == "gzip":
                body = gzip.compress(b"{" + b" " * (20 << 20) + b"}")
                self._head(Content_Encoding="gzip", Content_Length=len(body), Connection="close")
                self.wfile.write(body)
                server.sent += len(body)
            elif kind == "stall":
                self._head(Content_Length=100_000, Connection="close")
                self.wfile.write(b"x" * 100)
                self.wfile.flush()
                server.release.wait()
            elif kind == "redirect":
                self._head(302, Location=server.other.url(f"/good/{rel}"), Content_Length=0)
            elif kind == "good" and rel in server.files:
                data = server.files[rel].read_bytes()
                self._head(Content_Length=len(data))
                self.wfile.write(data)
            else:
                self._head(404, Content_Length=0)
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture
def hostile(mssync_tiny_dir):
    servers = []
    for _ in range(2):
        httpd = QuietHTTPServer(("127.0.0.1", 0), _Hostile)
        httpd.daemon_threads = True
        httpd.sent, httpd.release = 0, threading.Event()
        httpd.files = {"mssync/args": mssync_tiny_dir / "args", "mssync/model_chkpt.pt": mssync_tiny_dir / "model_chkpt.pt"}
        httpd.url = (lambda h: lambda path: f"http://127.0.0.1:{h.server_address[1]}{path}")(httpd)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        servers.append(httpd)
    servers[0].other = servers[1]
    yield servers[0]
    for httpd in servers:
        httpd.release.set()
        httpd.shutdown()
        httpd.server_close()


def _mssync_sources(server, args_kind: str, ckpt_kind: str = "good") -> dict:
    from talkhead.store import Source

    return {rel: [Source("url", server.url(f"/{kind}/{rel}"), "hostile mirror")]
            for rel, kind in (("mssync/args", args_kind), ("mssync/model_chkpt.pt", ckpt_kind))}


@pytest.mark.parametrize("kind", ["endless", "gzip"])
def test_transfer_is_capped_by_the_file_size(tmp_path, hostile, kind):
    from talkhead.errors import DownloadError
    from talkhead.store import download

    root = tmp_path / "models"
    with pytest.raises(DownloadError) as err:
        download("mssync", root, sources=_mssync_sources(hostile, kind), timeout=5, retries=0)
    assert "mssync/args (hostile mirror: sent more than 1048576 bytes" in str(err.value)
    assert "mssync/args" not in read_store_manifest(root)
    assert not list(root.rglob("args*"))
    if kind == "endless":
        assert hostile.sent < 64 << 20  # stopped near the cap, not at the server's safety bound


def test_stalled_transfer_is_reported_as_stalled(tmp_path, hostile):
    from talkhead.errors import DownloadError
    from talkhead.store import download

    with pytest.raises(DownloadError) as err:
        download("mssync", tmp_path / "models", sources=_mssync_sources(hostile, "stall"), timeout=0.5, retries=0)
    assert "stalled: no data for 0.5 s" in str(err.value) and "cannot connect" not in str(err.value)


def test_size_caps():
    from talkhead.store import Pin
    from talkhead.store.transfer import CHECKPOINT_MAX_BYTES, CONFIG_MAX_BYTES, size_cap

    assert size_cap("config", ()) == CONFIG_MAX_BYTES == 1 << 20
    assert size_cap("checkpoint", (Pin("sha256", "a", "p", 1000),)) == 1000
    assert size_cap("checkpoint", (Pin("sha256", "a", "p", 1000), Pin("md5", "b", "q"))) == 1250
    assert size_cap("checkpoint", ()) == CHECKPOINT_MAX_BYTES


def test_redirect_to_another_host_records_where_the_bytes_came_from(tmp_path, hostile):
    from talkhead.store import download

    root = tmp_path / "models"
    download("mssync", root, sources=_mssync_sources(hostile, "redirect"), timeout=5, retries=0)
    source = read_store_manifest(root)["mssync/args"]["source"]
    assert source == (f"{hostile.other.url('/good/mssync/args')} (redirected from "
                      f"{hostile.url('/redirect/mssync/args')})")
    assert read_store_manifest(root)["mssync/model_chkpt.pt"]["source"] == hostile.url("/good/mssync/model_chkpt.pt")
