"""The checkpoint store: resolution, manifest, verification, register/install, downloads, cards.

The tiny fixture checkpoints stand in for the released files (same names and top-level layout).
Downloads run against a loopback HTTP server in a thread (Range support, broken connections,
404s); the sources and pins are injected so that the tiny files are the "known-good" copies.
Google Drive folder listing is exercised with a fake gdown; one test makes a real gdown call,
which fails fast here (no network, or a folder id that does not exist).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
import threading
import time
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import talkhead.fomm
from talkhead import store
from helpers import QuietHTTPServer, flip_byte, sha256_of, states_of
from talkhead.errors import CheckpointError, DownloadError, InputError
from talkhead.store import (CORRUPT, MISSING, PACKAGED, UNVERIFIED, VERIFIED, Pin, Source, download, ensure_models,
                            install_from, model_card, read_store_manifest, register_local, resolve_models_dir, verify)

pytestmark = pytest.mark.usefixtures("new_process")  # each test starts like a new process: nothing hashed yet

DATA = Path(__file__).parent / "data"
ALL = ["fomm/vox-adv-256.yaml", "fomm/vox-adv-cpk.pth.tar", "mssync/args", "mssync/model_chkpt.pt"]
DOWNLOADED = ["fomm/vox-adv-cpk.pth.tar", "mssync/args", "mssync/model_chkpt.pt"]


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def tiny_sources(tmp_path_factory, mssync_tiny_dir) -> dict[str, Path]:
    """relpath -> the tiny fixture file that plays the released file of that name."""
    return {"fomm/vox-adv-256.yaml": DATA / "fomm" / "tiny.yaml",
            "fomm/vox-adv-cpk.pth.tar": DATA / "fomm" / "tiny-cpk.pth.tar",
            "mssync/args": mssync_tiny_dir / "args",
            "mssync/model_chkpt.pt": mssync_tiny_dir / "model_chkpt.pt"}


def arrange(root: Path, sources: dict[str, Path], rels=ALL) -> Path:
    """Copy the tiny files into ``root`` in the released layout (not recorded)."""
    for rel in rels:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sources[rel], root / rel)
    return root


def files_under(root: Path) -> list[str]:
    """Every file and folder under ``root`` (relative, sorted): empty folders count too."""
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)).replace(os.sep, "/") + ("/" if p.is_dir() else "")
                  for p in root.rglob("*"))


def edit_manifest(root: Path, rel: str, **changes) -> None:
    data = json.loads((root / "manifest.json").read_text())
    data["files"][rel].update(changes)
    (root / "manifest.json").write_text(json.dumps(data))


@pytest.fixture
def no_gdown(monkeypatch):
    """Fail the test if anything reaches gdown (the network)."""
    import gdown

    def forbidden(*a, **k):
        raise AssertionError("gdown must not be called")

    monkeypatch.setattr(gdown, "download", forbidden)
    monkeypatch.setattr(gdown, "download_folder", forbidden)


# ------------------------------------------------------------------------------------------ loopback server
@dataclasses.dataclass
class Route:
    """What the server answers on one path: ``data``; ``ranges``: honour ``Range: bytes=N-``;
    ``breaks``: how many times to cut the connection after ``break_after`` bytes of the body."""

    data: bytes
    ranges: bool = True
    breaks: int = 0
    break_after: int = 0


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):  # noqa: N802 - http.server API
        server = self.server
        server.requests.append((self.path, self.headers.get("Range")))
        route = server.routes.get(self.path)
        if route is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and route.ranges:
            start = int(match.group(1))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(route.data) - 1}/{len(route.data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(route.data) - start))
        self.send_header("Content-Type", "application/octet-stream")
        if route.ranges:
            self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        body = route.data[start:]
        if route.breaks > 0:
            route.breaks -= 1
            self.wfile.write(body[:route.break_after])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    """A loopback HTTP server in a thread: ``server.routes[path] = Route(...)``, ``server.url(path)``,
    ``server.requests`` (path, Range header) in arrival order."""
    httpd = QuietHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.routes, httpd.requests = {}, []
    httpd.url = lambda path: f"http://127.0.0.1:{httpd.server_address[1]}{path}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def serve_tiny(server, tiny_sources, prefix="/good") -> dict[str, list[Source]]:
    """Serve the tiny files under ``prefix/<relpath>``; the matching one-source-per-file map."""
    out = {}
    for rel in DOWNLOADED:
        server.routes[f"{prefix}/{rel}"] = Route(tiny_sources[rel].read_bytes())
        out[rel] = [Source("url", server.url(f"{prefix}/{rel}"), f"test server {prefix}")]
    return out


def tiny_pins(tiny_sources) -> dict[str, list[Pin]]:
    """The tiny FOMM checkpoint pinned by sha256, as the real one is."""
    rel = "fomm/vox-adv-cpk.pth.tar"
    return {rel: [Pin("sha256", sha256_of(tiny_sources[rel]), "test-published")]}


def resaved_fomm(tiny_sources, tmp_path) -> bytes:
    """A valid tiny FOMM checkpoint with different bytes (so not the pinned copy)."""
    ckpt = torch.load(tiny_sources["fomm/vox-adv-cpk.pth.tar"], map_location="cpu", weights_only=True)
    ckpt["epoch"] = 99
    path = tmp_path / "resaved.pth.tar"
    torch.save(ckpt, path)
    return path.read_bytes()


# ------------------------------------------------------------------------------------------ resolution
def test_models_dir_precedence(monkeypatch, tmp_path):
    import platformdirs

    monkeypatch.setattr(platformdirs, "user_cache_dir", lambda app: str(tmp_path / "cache" / app))
    monkeypatch.delenv(store.MODELS_ENV, raising=False)
    assert resolve_models_dir() == tmp_path / "cache" / "talkhead"
    monkeypatch.setenv(store.MODELS_ENV, "")
    assert resolve_models_dir() == tmp_path / "cache" / "talkhead"
    monkeypatch.setenv(store.MODELS_ENV, str(tmp_path / "env"))
    assert resolve_models_dir() == tmp_path / "env"
    assert resolve_models_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_models_dir("~/m") == tmp_path / "home" / "m"
    assert not (tmp_path / "env").exists() and not (tmp_path / "cache").exists()  # nothing created


def test_mirror_resolution(monkeypatch):
    monkeypatch.delenv(store.MIRROR_ENV, raising=False)
    assert store.resolve_mirror() is None
    monkeypatch.setenv(store.MIRROR_ENV, "https://cache.example/talkhead/")
    assert store.resolve_mirror() == "https://cache.example/talkhead"
    assert store.resolve_mirror("http://other:8000/m") == "http://other:8000/m"
    with pytest.raises(InputError, match="http"):
        store.resolve_mirror("/mnt/share/models")


def test_model_file_and_dir_layout(tmp_path):
    assert store.model_file(tmp_path, "fomm", "config") == tmp_path / "fomm" / "vox-adv-256.yaml"
    assert store.model_file(tmp_path, "fomm", "checkpoint") == tmp_path / "fomm" / "vox-adv-cpk.pth.tar"
    assert store.model_dir(tmp_path, "mssync") == tmp_path / "mssync"
    assert store.model_file(tmp_path, "mssync", "checkpoint") == tmp_path / "mssync" / "model_chkpt.pt"
    with pytest.raises(InputError, match="'generator'.*config, checkpoint"):
        store.model_file(tmp_path, "fomm", "generator")
    with pytest.raises(InputError, match="'vox'"):
        store.model_dir(tmp_path, "vox")


def test_unknown_model_name(tmp_path):
    with pytest.raises(InputError, match="'vox'.*fomm, mssync"):
        verify(tmp_path, "vox")


def test_store_builds_no_network_with_weights(tiny_sources, tmp_path, monkeypatch):
    """Layout checks use listings: every module the store instantiates lives on the meta device,
    and the loaders that build real networks are never called."""
    devices = []
    real_init = torch.nn.Module.__init__

    def spy(self, *a, **k):
        real_init(self, *a, **k)
        devices.append(torch.get_default_device().type)

    import talkhead.mssync

    monkeypatch.setattr(talkhead.fomm, "load_fomm", lambda *a, **k: pytest.fail("load_fomm called"))
    monkeypatch.setattr(talkhead.mssync, "load_mssync", lambda *a, **k: pytest.fail("load_mssync called"))
    monkeypatch.setattr(torch.nn.Module, "__init__", spy)
    root = arrange(tmp_path, tiny_sources)
    assert states_of(register_local(root)) == dict.fromkeys(ALL, VERIFIED)
    assert devices and set(devices) == {"meta"}


# ------------------------------------------------------------------------------------------ register / verify
def test_register_records_sha256_size_mtime_and_pin(tmp_path, tiny_sources):
    root = arrange(tmp_path / "m", tiny_sources)
    assert states_of(verify(root, check_layout=False)) == dict.fromkeys(ALL, UNVERIFIED)
    result = register_local(root, pins=tiny_pins(tiny_sources))
    assert states_of(result) == dict.fromkeys(ALL, VERIFIED)
    manifest = read_store_manifest(root)
    assert sorted(manifest) == ALL
    for rel in ALL:
        st = (root / rel).stat()
        assert manifest[rel]["sha256"] == sha256_of(tiny_sources[rel]) == result[rel].sha256
        assert manifest[rel]["size"] == st.st_size and manifest[rel]["mtime_ns"] == st.st_mtime_ns
        assert manifest[rel]["how"] == "register"
    assert manifest["fomm/vox-adv-cpk.pth.tar"]["pin"] == "test-published"
    assert manifest["mssync/model_chkpt.pt"]["pin"] is None  # no published digest: trusted on first use
    assert json.loads((root / "manifest.json").read_text())["format"] == 1
    assert states_of(verify(root, hash_check="always", pins=tiny_pins(tiny_sources))) == dict.fromkeys(ALL, VERIFIED)


def test_missing_files_and_packaged_config(tmp_path):
    result = verify(tmp_path / "empty")
    assert result["fomm/vox-adv-256.yaml"].state == PACKAGED  # ships with talkhead: not missing
    assert states_of(result) == {**dict.fromkeys(DOWNLOADED, MISSING), "fomm/vox-adv-256.yaml": PACKAGED}
    assert str(tmp_path / "empty" / "mssync" / "model_chkpt.pt") in result["mssync/model_chkpt.pt"].reason


def test_tampered_file_is_corrupt(tmp_path, tiny_sources):
    root = arrange(tmp_path, tiny_sources)
    register_local(root)
    flip_byte(root / "fomm/vox-adv-cpk.pth.tar")
    result = verify(root)
    assert result["fomm/vox-adv-cpk.pth.tar"].state == CORRUPT
    assert "sha256" in result["fomm/vox-adv-cpk.pth.tar"].reason
    assert result["mssync/model_chkpt.pt"].state == VERIFIED


def test_truncated_file_is_corrupt_by_size(tmp_path, tiny_sources):
    root = arrange(tmp_path, tiny_sources)
    register_local(root)
    path = root / "mssync/model_chkpt.pt"
    path.write_bytes(path.read_bytes()[:1000])
    result = verify(root)
    assert result["mssync/model_chkpt.pt"].state == CORRUPT
    assert "size 1000" in result["mssync/model_chkpt.pt"].reason


def test_hash_once_per_process(tmp_path, tiny_sources, monkeypatch):
    """A recorded file is re-hashed on its first use in a process, then trusted by size + mtime."""
    root = arrange(tmp_path, tiny_sources)
    register_local(root)
    store.clear_hash_memo()  # a new process
    calls = []
    real = store.manifest.file_digests
    monkeypatch.setattr(store.manifest, "file_digests", lambda p, algos=("sha256",): calls.append(Path(p)) or real(p, algos))
    assert states_of(verify(root)) == dict.fromkeys(ALL, VERIFIED)
    assert sorted(calls) == sorted(root / rel for rel in ALL)  # first use: every file hashed
    calls.clear()
    assert states_of(verify(root)) == dict.fromkeys(ALL, VERIFIED)
    assert calls == []  # same process, same size + mtime: no re-hash
    assert states_of(verify(root, hash_check="always")) == dict.fromkeys(ALL, VERIFIED)
    assert len(calls) == 4

    # a touched but unchanged file is re-hashed, and its new mtime recorded
    calls.clear()
    path = root / "mssync/args"
    os.utime(path, ns=(time.time_ns(), path.stat().st_mtime_ns + 5_000_000_000))
    assert verify(root)["mssync/args"].state == VERIFIED
    assert calls == [path]
    assert read_store_manifest(root)["mssync/args"]["mtime_ns"] == path.stat().st_mtime_ns

    # an edit with the mtime restored slips past the in-process memo, not past the next process
    flip_byte(root / "mssync/model_chkpt.pt", keep_mtime=True)
    assert verify(root)["mssync/model_chkpt.pt"].state == VERIFIED
    store.clear_hash_memo()
    assert verify(root, hash_check="stat")["mssync/model_chkpt.pt"].state == VERIFIED  # what "stat" trusts
    assert verify(root)["mssync/model_chkpt.pt"].state == CORRUPT


def test_edited_manifest_hash_is_caught(tmp_path, tiny_sources, no_gdown):
    root = arrange(tmp_path, tiny_sources)
    register_local(root)
    edit_manifest(root, "mssync/model_chkpt.pt", sha256="0" * 64)
    store.clear_hash_memo()  # the next process
    result = verify(root)
    assert result["mssync/model_chkpt.pt"].state == CORRUPT
    assert "manifest.json was edited" in result["mssync/model_chkpt.pt"].reason
    with pytest.raises(CheckpointError, match="model_chkpt.pt"):
        ensure_models(root, offline=True)
    # within the process that hashed it, the edit is caught too (the memo holds the real digest)
    register_local(root)
    verify(root)
    edit_manifest(root, "fomm/vox-adv-cpk.pth.tar", sha256="f" * 64)
    assert verify(root)["fomm/vox-adv-cpk.pth.tar"].state == CORRUPT


def test_edited_pin_claim_is_caught(tmp_path, tiny_sources):
    """Recording a hand-placed file as the published copy does not make it one."""
    root = arrange(tmp_path, tiny_sources)
    register_local(root)
    edit_manifest(root, "fomm/vox-adv-cpk.pth.tar", pin="published")
    result = verify(root, hash_check="stat")
    assert result["fomm/vox-adv-cpk.pth.tar"].state == CORRUPT
    assert "'published'" in result["fomm/vox-adv-cpk.pth.tar"].reason


def test_layout_check_of_unrecorded_files(tmp_path, tiny_sources):
    root = arrange(tmp_path, tiny_sources)
    args = json.loads((root / "mssync/args").read_text())
    args["hidden_size"] = 12  # a different architecture than the checkpoint's
    (root / "mssync/args").write_text(json.dumps(args))
    result = verify(root)
    assert result["fomm/vox-adv-cpk.pth.tar"].state == UNVERIFIED  # fits: stays unverified, not recorded
    blamed = [rel for rel in ("mssync/args", "mssync/model_chkpt.pt") if result[rel].state == CORRUPT]
    assert blamed == ["mssync/model_chkpt.pt"]
    assert "does not match the model" in result["mssync/model_chkpt.pt"].reason
    assert not (root / "manifest.json").exists()

    reg = register_local(root)
    assert reg["fomm/vox-adv-cpk.pth.tar"].state == VERIFIED
    assert reg["mssync/model_chkpt.pt"].state == CORRUPT
    assert sorted(read_store_manifest(root)) == ["fomm/vox-adv-256.yaml", "fomm/vox-adv-cpk.pth.tar"]


def test_unreadable_manifest_means_untrusted(tmp_path, tiny_sources):
    """An unreadable manifest re-trusts nothing (issue 23 #14; more in test_faults.py)."""
    root = arrange(tmp_path, tiny_sources)
    register_local(root)
    (root / "manifest.json").write_text("{not json")
    result = verify(root, check_layout=False)
    assert states_of(result) == dict.fromkeys(ALL, CORRUPT)
    assert "manifest.json" in result["mssync/args"].reason and "--force" in result["mssync/args"].reason
    with pytest.raises(CheckpointError, match="manifest.json"):
        ensure_models(root, offline=True)


def test_register_accept_changed(tmp_path, tiny_sources):
    root = arrange(tmp_path, tiny_sources)
    register_local(root)
    (root / "fomm/vox-adv-cpk.pth.tar").write_bytes(resaved_fomm(tiny_sources, tmp_path))
    assert register_local(root, accept_changed=False)["fomm/vox-adv-cpk.pth.tar"].state == CORRUPT
    assert register_local(root)["fomm/vox-adv-cpk.pth.tar"].state == VERIFIED
    recorded = read_store_manifest(root)["fomm/vox-adv-cpk.pth.tar"]["sha256"]
    assert recorded == sha256_of(root / "fomm/vox-adv-cpk.pth.tar")


# ------------------------------------------------------------------------------------------ refused checkpoints
def _nan_copy(src: Path, dst: Path, entry: str) -> str:
    """Copy checkpoint ``src`` to ``dst`` with one NaN in the first floating tensor of ``entry``."""
    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    key = next(k for k, v in ckpt[entry].items() if v.is_floating_point() and v.numel() > 1)
    ckpt[entry][key] = ckpt[entry][key].clone()
    ckpt[entry][key].view(-1)[1] = float("nan")
    torch.save(ckpt, dst)
    return key


@pytest.mark.parametrize("rel, entry", [("fomm/vox-adv-cpk.pth.tar", "generator"),
                                        ("mssync/model_chkpt.pt", "checkpoints")])
def test_nan_weights_are_refused_and_never_recorded(tmp_path, tiny_sources, packaged_tiny_config, rel, entry):
    bad = tmp_path / "downloads" / rel.rsplit("/", 1)[-1]
    bad.parent.mkdir()
    key = _nan_copy(tiny_sources[rel], bad, entry)
    partner = "mssync/args" if rel.startswith("mssync") else "fomm/vox-adv-256.yaml"
    shutil.copyfile(tiny_sources[partner], bad.parent / partner.rsplit("/", 1)[-1])
    root = tmp_path / "models"
    with pytest.raises(CheckpointError) as err:
        install_from(bad.parent, root)
    assert str(bad) in str(err.value) and repr(key) in str(err.value) and "NaN" in str(err.value)
    assert rel not in read_store_manifest(root)

    # placed by hand: reported corrupt, not recorded; and the loaders refuse it too
    arrange(root, {**tiny_sources, rel: bad}, [rel, partner])
    assert register_local(root)[rel].state == CORRUPT
    assert rel not in read_store_manifest(root)
    from talkhead.fomm import load_fomm
    from talkhead.mssync import load_mssync

    with pytest.raises(CheckpointError, match=re.escape(repr(key))):
        if rel.startswith("fomm"):
            load_fomm(tiny_sources["fomm/vox-adv-256.yaml"], root / rel)
        else:
            load_mssync(root / "mssync")


def test_payload_checkpoint_is_refused_and_never_recorded(tmp_path, tiny_sources, packaged_tiny_config):
    class Reduce:
        def __init__(self, fn, *args):
            self.fn, self.args = fn, args

        def __reduce__(self):
            return self.fn, self.args

    marker = tmp_path / "marker"
    ckpt = torch.load(tiny_sources["fomm/vox-adv-cpk.pth.tar"], map_location="cpu", weights_only=True)
    ckpt["x"] = Reduce(os.system, f"touch '{marker}'")
    bad = tmp_path / "in" / "vox-adv-cpk.pth.tar"
    bad.parent.mkdir()
    torch.save(ckpt, bad)
    root = tmp_path / "models"
    with pytest.raises(CheckpointError, match="posix.system|nt.system") as err:
        install_from(bad, root)
    assert "tampered" in str(err.value) and not marker.exists()
    assert files_under(root) == []


# ------------------------------------------------------------------------------------------ ensure_models
def test_ensure_models_ready_dir_hashes_once(tmp_path, tiny_sources, no_gdown, monkeypatch):
    root = arrange(tmp_path, tiny_sources)
    register_local(root)
    store.clear_hash_memo()
    assert ensure_models(root) == root  # first use in this process: hashed
    monkeypatch.setattr(store.manifest, "file_digests", lambda *a: pytest.fail("hashed twice in one process"))
    monkeypatch.setattr(store.checks, "load_checkpoint", lambda *a: pytest.fail("a recorded file must not be loaded"))
    assert ensure_models(root) == root


def test_ensure_models_offline_missing(tmp_path, tiny_sources, no_gdown):
    root = arrange(tmp_path / "m", tiny_sources, ["fomm/vox-adv-256.yaml", "fomm/vox-adv-cpk.pth.tar"])
    register_local(root)
    before = files_under(root)
    with pytest.raises(DownloadError) as err:
        ensure_models(root, offline=True)
    msg = str(err.value)
    assert "\n" not in msg
    for text in ("--offline", "mssync/model_chkpt.pt", "mssync/args", str(root),
                 "https://drive.google.com/drive/folders/" + store.builtin.MSSYNC_DRIVE_FOLDER, "--from-dir"):
        assert text in msg
    assert "vox-adv-cpk" not in msg  # only what is missing
    assert files_under(root) == before


def test_ensure_models_refuses_corrupt(tmp_path, tiny_sources, no_gdown):
    root = arrange(tmp_path, tiny_sources)
    register_local(root)
    flip_byte(root / "fomm/vox-adv-cpk.pth.tar")
    for offline in (True, False):
        with pytest.raises(CheckpointError, match="vox-adv-cpk.pth.tar") as err:
            ensure_models(root, offline=offline)
        assert not isinstance(err.value, DownloadError)
        assert "talkhead download --force fomm" in str(err.value)


def test_ensure_models_records_hand_placed_files(tmp_path, tiny_sources, no_gdown, packaged_tiny_config):
    root = arrange(tmp_path, tiny_sources, DOWNLOADED)
    logs = []
    ensure_models(root, offline=True, log=logs.append)
    assert sorted(read_store_manifest(root)) == ALL  # the FOMM config was copied in from the package
    assert (root / "fomm/vox-adv-256.yaml").read_bytes() == (DATA / "fomm" / "tiny.yaml").read_bytes()
    assert read_store_manifest(root)["mssync/args"]["how"] == "register"
    assert logs and str(root) in logs[0]


def test_ensure_models_read_only_dir(tmp_path, tiny_sources, no_gdown, monkeypatch):
    """Files baked into a read-only directory: checked and used, not recorded."""
    root = arrange(tmp_path, tiny_sources)

    def read_only(root, updates):
        raise CheckpointError(f"cannot write {root / 'manifest.json'}: Read-only file system")

    monkeypatch.setattr(store.install, "write_manifest", read_only)
    logs = []
    assert ensure_models(root, offline=True, log=logs.append) == root
    assert any("cannot be recorded" in line and "Read-only" in line for line in logs)
    assert not (root / "manifest.json").exists()


# ------------------------------------------------------------------------------------------ download (HTTP)
def test_sources_tried_in_order_until_one_verifies(tmp_path, tiny_sources, server, packaged_tiny_config, caplog):
    """A dead source, one serving a valid checkpoint with the wrong hash, then the right file."""
    caplog.set_level(logging.INFO, logger="talkhead.store")
    good = serve_tiny(server, tiny_sources)
    server.routes["/other/vox-adv-cpk.pth.tar"] = Route(resaved_fomm(tiny_sources, tmp_path))
    rel = "fomm/vox-adv-cpk.pth.tar"
    chain = {**good, rel: [Source("url", server.url("/gone/vox-adv-cpk.pth.tar"), "dead mirror"),
                           Source("url", server.url("/other/vox-adv-cpk.pth.tar"), "wrong mirror"), *good[rel]]}
    root = tmp_path / "models"
    logs, seen = [], []
    result = download(None, root, sources=chain, pins=tiny_pins(tiny_sources), log=logs.append,
                      progress=lambda *a: seen.append(a), retries=0, timeout=5)
    assert states_of(result) == dict.fromkeys(ALL, VERIFIED)
    assert files_under(root) == sorted(["fomm/", "mssync/", "manifest.json", *ALL])  # no staging left
    manifest = read_store_manifest(root)
    assert manifest[rel]["source"] == good[rel][0].url and manifest[rel]["pin"] == "test-published"
    assert manifest[rel]["how"] == "download"
    assert manifest["fomm/vox-adv-256.yaml"]["how"] == "download"  # the packaged config came along
    for r in DOWNLOADED:
        assert manifest[r]["sha256"] == sha256_of(tiny_sources[r])
    assert [p for p, _ in server.requests if "vox-adv" in p] == ["/gone/vox-adv-cpk.pth.tar",
                                                               "/other/vox-adv-cpk.pth.tar",
                                                               "/good/fomm/vox-adv-cpk.pth.tar"]
    details = caplog.messages  # each source tried: the talkhead.store logger (the CLI's -v), not log
    assert any("wrong mirror: sha256" in line and "not a known-good copy" in line for line in details)
    assert any("dead mirror: HTTP 404" in line for line in details)
    assert not any("dead mirror" in line for line in logs)
    size = (root / "mssync/model_chkpt.pt").stat().st_size
    assert ("download model_chkpt.pt", size, size) in seen

    # already verified: nothing is fetched again
    server.requests.clear()
    download(None, root, sources=chain, pins=tiny_pins(tiny_sources))
    assert server.requests == []


def test_every_source_fails_one_line_nothing_left(tmp_path, tiny_sources, server, packaged_tiny_config):
    server.routes["/other/vox-adv-cpk.pth.tar"] = Route(resaved_fomm(tiny_sources, tmp_path))
    rel = "fomm/vox-adv-cpk.pth.tar"
    chain = {rel: [Source("url", server.url("/gone/x"), "dead mirror"),
                   Source("url", server.url("/other/vox-adv-cpk.pth.tar"), "wrong mirror"),
                   Source("url", "http://127.0.0.1:9/refused", "closed port")]}
    root = tmp_path / "models"
    with pytest.raises(DownloadError) as err:
        download("fomm", root, sources=chain, pins=tiny_pins(tiny_sources), retries=0, timeout=5)
    msg = str(err.value)
    assert "\n" not in msg and "HTTPConnectionPool" not in msg and "Traceback" not in msg
    assert msg.startswith(f"could not download {rel}")
    assert "dead mirror: HTTP 404" in msg
    assert "wrong mirror: sha256" in msg and "not a known-good copy" in msg
    assert "closed port: connection refused" in msg
    assert "talkhead download --from-dir DIR" in msg and "--mirror URL" in msg
    assert [a.source.host for a in err.value.attempts[rel]] == ["dead mirror", "wrong mirror", "closed port"]
    assert err.value.__cause__ is not None  # the details, for --debug
    assert not root.exists()  # no file, no manifest, no staging, no empty fomm/ folder


def test_resume_after_broken_connection(tmp_path, tiny_sources, server, packaged_tiny_config):
    sources = serve_tiny(server, tiny_sources)
    route = server.routes["/good/mssync/model_chkpt.pt"]
    route.breaks, route.break_after = 1, len(route.data) // 3
    root = tmp_path / "models"
    download("mssync", root, sources=sources, retries=2, timeout=5)
    assert sha256_of(root / "mssync/model_chkpt.pt") == sha256_of(tiny_sources["mssync/model_chkpt.pt"])
    ranges = [r for p, r in server.requests if p == "/good/mssync/model_chkpt.pt"]
    assert len(ranges) == 2 and ranges[0] is None
    resumed_at = int(re.fullmatch(r"bytes=(\d+)-", ranges[1]).group(1))
    assert 0 < resumed_at <= route.break_after  # resumed from the bytes already on disk, not from zero


def test_broken_connection_without_range_support_tries_next_source(tmp_path, tiny_sources, server):
    sources = serve_tiny(server, tiny_sources)
    route = server.routes["/good/mssync/args"]
    route.ranges, route.breaks, route.break_after = False, 5, 10
    server.routes["/second/args"] = Route(route.data)
    chain = {**sources, "mssync/args": [sources["mssync/args"][0], Source("url", server.url("/second/args"), "second")]}
    root = tmp_path / "models"
    download("mssync", root, sources=chain, retries=1, timeout=5)
    assert read_store_manifest(root)["mssync/args"]["source"] == server.url("/second/args")


def test_mirror_serves_the_models_directory_layout(tmp_path, tiny_sources, server, packaged_tiny_config, monkeypatch):
    serve_tiny(server, tiny_sources, prefix="/cache/talkhead")
    no_public = {rel: [] for rel in DOWNLOADED}  # an offline site: only the mirror answers
    root = tmp_path / "models"
    download(None, root, sources=no_public, pins=tiny_pins(tiny_sources), mirror=server.url("/cache/talkhead/"))
    assert states_of(verify(root)) == dict.fromkeys(ALL, VERIFIED)
    assert read_store_manifest(root)["mssync/args"]["source"] == server.url("/cache/talkhead/mssync/args")

    # the same through $TALKHEAD_MIRROR, via ensure_models (what animate calls)
    root2 = tmp_path / "models2"
    monkeypatch.setenv(store.MIRROR_ENV, server.url("/cache/talkhead"))
    assert ensure_models(root2, sources=no_public, pins=tiny_pins(tiny_sources)) == root2
    assert states_of(verify(root2)) == dict.fromkeys(ALL, VERIFIED)


def test_interrupted_download_leaves_nothing(tmp_path, tiny_sources, server, packaged_tiny_config):
    sources = serve_tiny(server, tiny_sources)

    def ctrl_c(stage, done, total):
        if stage == "download model_chkpt.pt":
            raise KeyboardInterrupt

    root = tmp_path / "models"
    with pytest.raises(KeyboardInterrupt):
        download(None, root, sources=sources, pins=tiny_pins(tiny_sources), progress=ctrl_c)
    # fomm had already landed; mssync left nothing: no partial file, no staging, no empty folder
    assert files_under(root) == ["fomm/", "fomm/vox-adv-256.yaml", "fomm/vox-adv-cpk.pth.tar", "manifest.json"]
    assert sorted(read_store_manifest(root)) == ["fomm/vox-adv-256.yaml", "fomm/vox-adv-cpk.pth.tar"]


def test_layout_failure_rejects_a_download(tmp_path, tiny_sources, server):
    """A file that is not the model (an HTML page instead of the checkpoint) is rejected."""
    sources = serve_tiny(server, tiny_sources)
    server.routes["/good/mssync/model_chkpt.pt"] = Route(b"<!DOCTYPE html><html>Virus scan warning</html>")
    root = tmp_path / "models"
    with pytest.raises(DownloadError, match=r"mssync/model_chkpt.pt \(test server /good: fails the checks"):
        download("mssync", root, sources=sources)
    assert not root.exists()


# ------------------------------------------------------------------------------------------ download (Drive)
class FakeDrive:
    """Stands in for gdown's Drive calls: lists the two Drive folders and 'downloads' by id."""

    FOLDERS = {store.builtin.FOMM_DRIVE_FOLDER: ["vox-adv-cpk.pth.tar", "vox-cpk.pth.tar", "taichi-cpk.pth.tar"],
               store.builtin.MSSYNC_DRIVE_FOLDER: ["args", "model_chkpt.pt"]}

    def __init__(self, sources: dict[str, Path]):
        self.by_name = {rel.rsplit("/", 1)[-1]: p for rel, p in sources.items()}
        self.fetched: list[str] = []
        self.listed: list[str] = []

    def download_folder(self, id=None, output=None, quiet=False, skip_download=False, timeout=None, **kw):
        assert skip_download, "the folder must only be listed"
        self.listed.append(id)
        return [SimpleNamespace(id=f"id-{name}", path=name, local_path=name) for name in self.FOLDERS[id]]

    def download(self, url=None, output=None, quiet=False, id=None, progress=None, timeout=None, retries=0, **kw):
        assert id is not None and url is None, "Drive sources download by file id"
        name = id.removeprefix("id-")
        self.fetched.append(name)
        Path(output).write_bytes(self.by_name[name].read_bytes())
        return output

    def install(self, monkeypatch):
        import gdown

        monkeypatch.setattr(gdown, "download", self.download)
        monkeypatch.setattr(gdown, "download_folder", self.download_folder)
        real = store.transfer.socket.getaddrinfo  # drive.google.com "resolves"; other hosts as they really do
        monkeypatch.setattr(store.transfer.socket, "getaddrinfo", lambda host, *a, **k: [()] if host == "drive.google.com"
                            else real(host, *a, **k))
        return self


def test_drive_folder_source_lists_once_and_fetches_only_what_is_needed(tmp_path, tiny_sources, monkeypatch,
                                                                         packaged_tiny_config):
    drive = FakeDrive(tiny_sources).install(monkeypatch)
    root = arrange(tmp_path, tiny_sources, ["mssync/args", "mssync/model_chkpt.pt"])
    register_local(root)
    flip_byte(root / "mssync/model_chkpt.pt")
    result = download("mssync", root)
    assert drive.fetched == ["model_chkpt.pt"]  # the corrupt one is replaced, args kept
    assert states_of(result) == {"mssync/args": VERIFIED, "mssync/model_chkpt.pt": VERIFIED}
    assert read_store_manifest(root)["mssync/model_chkpt.pt"]["source"].endswith(store.builtin.MSSYNC_DRIVE_FOLDER)

    # FOMM from its Drive folder: the tiny file is not the published copy, so the pin rejects it
    # (and every public mirror, which cannot be reached here or serves the real file)
    rel = "fomm/vox-adv-cpk.pth.tar"
    drive_only = {rel: [store.REGISTRY["fomm"].file("checkpoint").sources[0]]}
    with pytest.raises(DownloadError, match="not a known-good copy"):
        download("fomm", root, sources=drive_only)
    assert download("fomm", root, sources=drive_only, pins=tiny_pins(tiny_sources))[rel].state == VERIFIED
    assert drive.listed == [store.builtin.MSSYNC_DRIVE_FOLDER, store.builtin.FOMM_DRIVE_FOLDER, store.builtin.FOMM_DRIVE_FOLDER]


def test_download_missing_from_drive_folder(tmp_path, tiny_sources, monkeypatch):
    drive = FakeDrive(tiny_sources)
    drive.FOLDERS = {store.builtin.MSSYNC_DRIVE_FOLDER: ["args"]}
    drive.install(monkeypatch)
    with pytest.raises(DownloadError, match="'model_chkpt.pt' is not in the folder"):
        download("mssync", tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_real_gdown_fails_clean(tmp_path, monkeypatch):
    """A real gdown call: offline here (DNS fails), and on a networked machine the folder id does
    not exist; either way a one-line DownloadError and nothing left behind."""
    bogus = [Source("drive-folder", "0000talkheadNoSuchFolder0000", "bogus Drive folder", "args")]
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # gdown's cookie file
    root = tmp_path / "models"
    with pytest.raises(DownloadError) as err:
        download("mssync", root, sources={"mssync/args": bogus}, timeout=5.0, retries=0)
    msg = str(err.value)
    assert "\n" not in msg and "HTTPSConnectionPool" not in msg and "NameResolutionError" not in msg
    assert "mssync/args (bogus Drive folder: " in msg
    assert "mssync/model_chkpt.pt (not tried" in msg
    assert not root.exists()


# ------------------------------------------------------------------------------------------ install_from
def test_install_from_folder(tmp_path, tiny_sources, packaged_tiny_config):
    src = tmp_path / "downloads"
    (src / "checkpoint").mkdir(parents=True)
    shutil.copyfile(tiny_sources["fomm/vox-adv-cpk.pth.tar"], src / "vox-adv-cpk.pth.tar")
    shutil.copyfile(tiny_sources["mssync/args"], src / "checkpoint" / "args")  # MS-Sync README's layout
    shutil.copyfile(tiny_sources["mssync/model_chkpt.pt"], src / "checkpoint" / "model_chkpt.pt")
    root = tmp_path / "models"
    result = install_from(src, root)
    assert states_of(result) == dict.fromkeys(ALL, VERIFIED)
    assert files_under(root) == sorted(["fomm/", "mssync/", "manifest.json", *ALL])
    manifest = read_store_manifest(root)
    assert manifest["mssync/model_chkpt.pt"]["how"] == "install"
    assert manifest["fomm/vox-adv-cpk.pth.tar"]["pin"] is None  # not the published copy: recorded as such
    assert (src / "vox-adv-cpk.pth.tar").is_file()  # copied, not moved


def test_install_legacy_format_checkpoint(tmp_path, tiny_sources):
    """The official vox-adv-cpk.pth.tar is in torch's legacy (non-zip) format."""
    import zipfile

    ckpt = torch.load(tiny_sources["fomm/vox-adv-cpk.pth.tar"], map_location="cpu", weights_only=True)
    legacy = tmp_path / "vox-adv-cpk.pth.tar"
    torch.save(ckpt, legacy, _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(legacy)
    config = tmp_path / "vox-adv-256.yaml"
    shutil.copyfile(tiny_sources["fomm/vox-adv-256.yaml"], config)
    root = tmp_path / "models"
    result = install_from([legacy, config], root, names="fomm")
    assert states_of(result) == {"fomm/vox-adv-256.yaml": VERIFIED, "fomm/vox-adv-cpk.pth.tar": VERIFIED}
    assert read_store_manifest(root)["fomm/vox-adv-cpk.pth.tar"]["sha256"] == sha256_of(legacy)


def test_install_partner_and_bad_file(tmp_path, tiny_sources):
    root = arrange(tmp_path / "models", tiny_sources)
    register_local(root)
    args = json.loads(tiny_sources["mssync/args"].read_text())
    args["out_dir"] = "elsewhere"  # a harmless change, checked with the checkpoint already in place
    good = tmp_path / "good" / "args"
    good.parent.mkdir()
    good.write_text(json.dumps(args))
    assert install_from(good, root)["mssync/args"].state == VERIFIED
    assert read_store_manifest(root)["mssync/args"]["sha256"] == sha256_of(good)
    args["hidden_size"] = 12  # a bad args file is refused and changes nothing
    bad = tmp_path / "bad" / "args"
    bad.parent.mkdir()
    bad.write_text(json.dumps(args))
    before = {rel: sha256_of(root / rel) for rel in ALL}
    with pytest.raises(CheckpointError, match=re.escape(str(bad))):
        install_from(bad, root)
    assert {rel: sha256_of(root / rel) for rel in ALL} == before
    assert states_of(verify(root)) == dict.fromkeys(ALL, VERIFIED)
    assert files_under(root) == sorted(["fomm/", "mssync/", "manifest.json", *ALL])


def test_install_from_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        install_from(tmp_path / "nope", tmp_path / "m")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="model_chkpt.pt"):
        install_from(tmp_path / "empty", tmp_path / "m")


def test_stale_staging_is_removed(tmp_path, tiny_sources):
    root = tmp_path / "models"
    stale, fresh = root / ".incoming-old", root / ".incoming-busy"
    for d in (stale, fresh):
        d.mkdir(parents=True)
        (d / "model_chkpt.pt").write_bytes(b"partial")
    old = time.time() - store.STALE_STAGING_S - 60
    os.utime(stale, (old, old))
    install_from([tiny_sources["mssync/args"], tiny_sources["mssync/model_chkpt.pt"]], root)
    assert not stale.exists() and fresh.exists()  # another process may still be using a fresh one


# ------------------------------------------------------------------------------------------ registry and cards
def test_registry_pins_and_source_order():
    ckpt = store.REGISTRY["fomm"].file("checkpoint")
    assert [s.kind for s in ckpt.sources][0] == "drive-folder"  # the authors' folder first
    assert {(p.algorithm, p.digest) for p in ckpt.pins} == {
        ("sha256", "6792d6810d7f46e3c5c487a1cfec916b96fad8912c3c6cc81baa1fc300c820d3"),
        ("md5", "8a45a24037871c045fbb8a6a8aa95ebc")}
    for f in store.REGISTRY["mssync"].files:  # MS-Sync: only the authors' Drive folder, nothing pinned
        assert [s.location for s in f.sources] == [store.builtin.MSSYNC_DRIVE_FOLDER] and f.pins == ()


@pytest.mark.parametrize("name", sorted(store.REGISTRY))
def test_model_cards(name):
    card = model_card(name)
    spec = store.REGISTRY[name]
    for f in spec.files:
        assert f"`{f.relpath}`" in card
        for src in f.sources:  # every source is listed, in the order it is tried
            assert src.url in card
        positions = [card.index(src.url) for src in f.sources]
        assert positions == sorted(positions)
        for pin in f.pins:
            assert pin.digest in card
    for section in ("## Sources", "## License", "## Citation", "## Expected layout", "```bibtex"):
        assert section in card
    repo_copy = Path(__file__).parents[1] / "models" / f"{name}.md"
    assert card == repo_copy.read_text(encoding="utf-8")  # the packaged card is the repository's


def test_cards_are_package_data():
    assert (store.cards_dir() / "fomm.md").is_file()
    assert store.cards_dir().parent.name == "talkhead"


# ------------------------------------------------------------------------------------------ a renderer's own model
def _toy_layout(config_path: Path) -> dict:
    """The toy model's listing: ``weights`` = ``{w: (n, n), b: (n,)}`` for a config ``{"size": n}``."""
    n = json.loads(Path(config_path).read_text())["size"]
    return {"weights": {"w": (n, n), "b": (n,)}}


def _toy_files(folder: Path, size: int = 3, weight_size: int | None = None) -> Path:
    """A folder with the toy model's two files (``weight_size`` != ``size``: weights that do not fit)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "toy.json").write_text(json.dumps({"size": size}))
    m = size if weight_size is None else weight_size
    torch.save({"weights": {"w": torch.eye(m) * 2, "b": torch.ones(m)}}, folder / "toy.pt")
    return folder


def _toy_spec(sources: dict) -> store.ModelSpec:
    return store.ModelSpec(name="toy", title="toy renderer", optional=True, files=(
        store.ModelFile("toy/toy.json", "config", "toy config", sources=sources["toy/toy.json"]),
        store.ModelFile("toy/toy.pt", "checkpoint", "toy weights", sources=sources["toy/toy.pt"],
                        layout=_toy_layout, entries=(("weights",),), key="weights")))


def _load_toy(models_dir: Path, device, options):
    """The toy renderer's loader: finds its files through the store by the names its entry gives them."""
    from talkhead.checkpoints import load_checkpoint

    size = json.loads(store.model_file(models_dir, "toy", "config").read_text())["size"]
    return SimpleNamespace(frame_size=size, weights=load_checkpoint(store.model_file(models_dir, "toy", "weights"))["weights"])


def test_a_renderer_brings_its_own_model(tmp_path, server):
    """One RendererEntry with its ModelSpec, registered from here (no store code edited): its files
    are located, downloaded, checked by its layout callable, recorded and verified like FOMM's."""
    from talkhead.renderers import RendererEntry, get_renderer, register_renderer, renderer_names, unregister_renderer

    published = _toy_files(tmp_path / "published")
    sources = {}
    for name in ("toy.json", "toy.pt"):
        server.routes[f"/toy/{name}"] = Route((published / name).read_bytes())
        sources[f"toy/{name}"] = (Source("url", server.url(f"/toy/{name}"), "toy host"),)
    entry = RendererEntry(name="toy", summary="a toy renderer", num_kp=2, store_names=("toy",), load=_load_toy,
                          audio_driven=False, models=(_toy_spec(sources),))
    root = tmp_path / "models"
    register_renderer(entry)
    try:
        assert "toy" in store.REGISTRY and "toy" in renderer_names()
        assert "toy" not in store.default_models()  # optional: animate and `talkhead download` never ask for it
        assert store.model_file(root, "toy", "weights") == root / "toy" / "toy.pt"
        assert store.model_dir(root, "toy") == root / "toy"
        assert states_of(verify(root, "toy")) == {"toy/toy.json": MISSING, "toy/toy.pt": MISSING}
        assert "toy/toy.pt" not in verify(root)  # not listed by default until a file of it is there

        # what the pipeline does for a renderer: ensure its models, then load it
        assert ensure_models(root, names=get_renderer("toy").store_names) == root
        assert states_of(verify(root, "toy", hash_check="always")) == {"toy/toy.json": VERIFIED, "toy/toy.pt": VERIFIED}
        manifest = read_store_manifest(root)
        assert manifest["toy/toy.pt"]["sha256"] == sha256_of(published / "toy.pt")
        assert manifest["toy/toy.pt"]["source"] == server.url("/toy/toy.pt") and manifest["toy/toy.pt"]["how"] == "download"
        toy = get_renderer("toy").load(root, "cpu", None)
        assert toy.frame_size == 3 and torch.equal(toy.weights["w"], torch.eye(3) * 2)

        # verified on use like a built-in model: a changed byte is caught, never used
        flip_byte(root / "toy/toy.pt")
        store.clear_hash_memo()
        with pytest.raises(CheckpointError, match="toy/toy.pt"):
            ensure_models(root, names="toy", offline=True)
        # its layout callable is the check: weights that do not fit its config are refused
        with pytest.raises(CheckpointError, match="not a valid toy renderer file") as err:
            install_from(_toy_files(tmp_path / "bad", size=3, weight_size=4), root, names="toy")
        assert "w: model expects (3, 3), checkpoint has (4, 4)" in str(err.value)
        assert states_of(install_from(published, root, names="toy")) == {"toy/toy.json": VERIFIED, "toy/toy.pt": VERIFIED}
    finally:
        unregister_renderer("toy")
    assert "toy" not in store.REGISTRY and "toy" not in renderer_names()
    with pytest.raises(InputError, match="unknown model 'toy'"):
        verify(root, "toy")
    with pytest.raises(InputError, match="'toy'"):
        store.model_file(root, "toy", "weights")
    assert not any(rel.startswith("toy/") for rel in verify(root, check_layout=False))


def test_model_registration_is_checked():
    """Bad specs and clashes are refused at registration, and leave the registry as it was."""
    from talkhead.renderers import RendererEntry, register_renderer, renderer_names

    cfg, ckpt = store.ModelFile("toy/c.json", "config", "c"), store.ModelFile("toy/w.pt", "checkpoint", "w")
    with pytest.raises(ValueError, match="config"):
        store.ModelSpec("toy", "toy", (ckpt,))
    # a model without a config (SyncNet's bare state dict) is accepted only when each file checks itself
    store.ModelSpec("toy", "toy", (store.ModelFile("toy/w.pt", "checkpoint", "w", check=lambda p: None),))
    with pytest.raises(ValueError, match="config"):
        store.ModelSpec("toy", "toy", (ckpt, cfg))
    with pytest.raises(ValueError, match="under toy/"):
        store.ModelSpec("toy", "toy", (store.ModelFile("other/c.json", "config", "c"), ckpt))
    with pytest.raises(ValueError, match="keys"):
        store.ModelSpec("toy", "toy", (cfg, ckpt, store.ModelFile("toy/v.pt", "checkpoint", "v")))
    with pytest.raises(ValueError, match="role"):
        store.ModelFile("toy/x", "weights", "x")
    with pytest.raises(ValueError, match="callable"):  # the registry holds functions, not dotted import strings
        store.ModelFile("toy/w.pt", "checkpoint", "w", layout="talkhead.fomm.layout:layout_for_config_file")
    other_fomm = store.ModelSpec("fomm", "not FOMM", (store.ModelFile("fomm/c.yaml", "config", "c"),))
    with pytest.raises(ValueError, match="already registered"):
        store.register_model(other_fomm)
    with pytest.raises(TypeError):
        store.REGISTRY["toy"] = store.ModelSpec("toy", "toy", (cfg, ckpt))  # read-only: register_model adds
    spec = store.ModelSpec("toy", "toy", (cfg, ckpt))
    entry = RendererEntry(name="toy", summary="toy", num_kp=2, store_names=(), load=_load_toy, models=(spec,))
    with pytest.raises(ValueError, match="store_names"):
        register_renderer(entry)
    clash = dataclasses.replace(entry, store_names=("toy", "fomm"), models=(spec, other_fomm))
    with pytest.raises(ValueError, match="already registered"):
        register_renderer(clash)
    assert "toy" not in store.REGISTRY and "toy" not in renderer_names()
    assert store.REGISTRY["fomm"] is store.builtin.FOMM and list(store.REGISTRY) == ["fomm", "mssync", "smac", "syncnet", "gfpgan"]


def test_registry_holds_callables_that_import_their_model_package_when_called():
    """No dotted import strings: each layout/packaged entry is a function of the store (layer 4) that
    imports its model package (layer 3) inside its body, downward."""
    for spec in store.REGISTRY.values():
        for f in spec.files:
            for fn in (f.layout, f.packaged):
                if fn is not None:
                    assert callable(fn) and fn.__module__ == "talkhead.store.builtin"
    assert list(store.REGISTRY["mssync"].file("checkpoint").layout(store.model_file(DATA, "mssync", "config"))) \
        == ["checkpoints"]
    assert store.REGISTRY["fomm"].config.packaged() == talkhead.fomm.default_config_path()
