"""Models directory: resolution, manifest, verification, register/install, downloads, model cards.

The tiny fixture checkpoints stand in for the released files (same names and top-level layout).
gdown is replaced by fakes that fail in the ways a Google Drive download fails; one test makes a
real gdown call, which fails fast here (no network, or a folder id that does not exist).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import talkhead.fomm
from talkhead import models
from talkhead.errors import CheckpointError, DownloadError, InputError
from talkhead.models import (CORRUPT, MISSING, UNVERIFIED, VERIFIED, download, ensure_models, install_from,
                             model_card, read_manifest, register_local, resolve_models_dir, verify)

DATA = Path(__file__).parent / "data"
ALL = ["fomm/vox-adv-256.yaml", "fomm/vox-adv-cpk.pth.tar", "mssync/args", "mssync/model_chkpt.pt"]


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def tiny_sources(tmp_path_factory, mssync_tiny_dir) -> dict[str, Path]:
    """relpath -> the tiny fixture file that plays the released file of that name."""
    return {"fomm/vox-adv-256.yaml": DATA / "fomm" / "tiny.yaml",
            "fomm/vox-adv-cpk.pth.tar": DATA / "fomm" / "tiny-cpk.pth.tar",
            "mssync/args": mssync_tiny_dir / "args",
            "mssync/model_chkpt.pt": mssync_tiny_dir / "model_chkpt.pt"}


@pytest.fixture
def packaged_tiny_config(monkeypatch):
    """Make the 'packaged' FOMM config the tiny one, so it fits the tiny checkpoint."""
    monkeypatch.setattr(talkhead.fomm, "default_config_path", lambda: DATA / "fomm" / "tiny.yaml")


def arrange(root: Path, sources: dict[str, Path], rels=ALL) -> Path:
    """Copy the tiny files into ``root`` in the released layout (not recorded)."""
    for rel in rels:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sources[rel], root / rel)
    return root


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_under(root: Path) -> list[str]:
    """Every file and every staging folder under ``root`` (relative, sorted)."""
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)).replace(os.sep, "/") for p in root.rglob("*")
                  if p.is_file() or p.name.startswith(".incoming-"))


def flip_byte(path: Path, keep_mtime: bool = False) -> None:
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def states(result) -> dict[str, str]:
    return {rel: st.state for rel, st in result.items()}


@pytest.fixture
def no_gdown(monkeypatch):
    """Fail the test if anything reaches gdown."""
    import gdown

    def forbidden(*a, **k):
        raise AssertionError("gdown must not be called")

    monkeypatch.setattr(gdown, "download", forbidden)
    monkeypatch.setattr(gdown, "download_folder", forbidden)


class FakeDrive:
    """Stands in for gdown: lists the two Drive folders and 'downloads' with a chosen behaviour."""

    FOLDERS = {models.REGISTRY["fomm"].drive_folder: ["vox-adv-cpk.pth.tar", "vox-cpk.pth.tar", "taichi-cpk.pth.tar"],
               models.REGISTRY["mssync"].drive_folder: ["args", "model_chkpt.pt"]}

    def __init__(self, sources: dict[str, Path], mode: str = "good"):
        self.by_name = {rel.rsplit("/", 1)[-1]: p for rel, p in sources.items()}
        self.mode = mode
        self.fetched: list[str] = []
        self.kwargs: list[dict] = []

    def download_folder(self, url=None, id=None, output=None, quiet=False, skip_download=False, timeout=None):
        assert skip_download, "the folder must only be listed"
        self.kwargs.append({"timeout": timeout})
        return [SimpleNamespace(id=f"id-{name}", path=name, local_path=name) for name in self.FOLDERS[id]]

    def download(self, url=None, output=None, quiet=False, id=None, timeout=None, progress=None):
        name = id.removeprefix("id-")
        self.fetched.append(name)
        self.kwargs.append({"timeout": timeout})
        src = self.by_name[name].read_bytes()
        if self.mode == "raise":
            raise ConnectionError("Failed to resolve 'drive.google.com'")
        if self.mode == "partial":
            Path(output + ".part").write_bytes(src[: len(src) // 3])
            Path(output).write_bytes(src[: len(src) // 3])
            raise ConnectionError("Connection broken: IncompleteRead")
        if self.mode == "corrupt":
            Path(output).write_bytes(b"<!DOCTYPE html><html>Google Drive - Virus scan warning</html>")
            return output
        if self.mode == "interrupt":
            Path(output).write_bytes(src[:100])
            raise KeyboardInterrupt
        Path(output).write_bytes(src)
        if progress is not None:
            progress(len(src) // 2, len(src))
            progress(len(src), len(src))
        return output

    def install(self, monkeypatch):
        import gdown

        monkeypatch.setattr(gdown, "download", self.download)
        monkeypatch.setattr(gdown, "download_folder", self.download_folder)
        return self


# ------------------------------------------------------------------------------------------ resolution
def test_models_dir_precedence(monkeypatch, tmp_path):
    import platformdirs

    monkeypatch.setattr(platformdirs, "user_cache_dir", lambda app: str(tmp_path / "cache" / app))
    monkeypatch.delenv(models.MODELS_ENV, raising=False)
    assert resolve_models_dir() == tmp_path / "cache" / "talkhead"
    monkeypatch.setenv(models.MODELS_ENV, "")
    assert resolve_models_dir() == tmp_path / "cache" / "talkhead"
    monkeypatch.setenv(models.MODELS_ENV, str(tmp_path / "env"))
    assert resolve_models_dir() == tmp_path / "env"
    assert resolve_models_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_models_dir("~/m") == tmp_path / "home" / "m"
    assert not (tmp_path / "env").exists() and not (tmp_path / "cache").exists()  # nothing created


def test_model_paths_layout(tmp_path):
    paths = models.model_paths(tmp_path)
    assert paths.fomm_config == tmp_path / "fomm" / "vox-adv-256.yaml"
    assert paths.fomm_checkpoint == tmp_path / "fomm" / "vox-adv-cpk.pth.tar"
    assert paths.mssync_dir == tmp_path / "mssync"


def test_unknown_model_name(tmp_path):
    with pytest.raises(InputError, match="'vox'.*fomm, mssync"):
        verify(tmp_path, "vox")


# ------------------------------------------------------------------------------------------ register / verify
def test_register_records_sha256_size_and_mtime(tmp_path, tiny_sources):
    root = arrange(tmp_path / "m", tiny_sources)
    assert states(verify(root, check_layout=False)) == dict.fromkeys(ALL, UNVERIFIED)
    result = register_local(root)
    assert states(result) == dict.fromkeys(ALL, VERIFIED)
    manifest = read_manifest(root)
    assert sorted(manifest) == ALL
    for rel in ALL:
        st = (root / rel).stat()
        assert manifest[rel]["sha256"] == sha(tiny_sources[rel]) == result[rel].sha256
        assert manifest[rel]["size"] == st.st_size and manifest[rel]["mtime_ns"] == st.st_mtime_ns
        assert manifest[rel]["how"] == "register"
    assert json.loads((root / "manifest.json").read_text())["format"] == 1
    assert states(verify(root, rehash=True)) == dict.fromkeys(ALL, VERIFIED)


def test_missing_files(tmp_path):
    result = verify(tmp_path / "empty")
    assert states(result) == dict.fromkeys(ALL, MISSING)
    assert str(tmp_path / "empty" / "mssync" / "model_chkpt.pt") in result["mssync/model_chkpt.pt"].reason


def test_tampered_file_is_corrupt(tmp_path, tiny_sources):
    root = arrange(tmp_path, tiny_sources)
    register_local(root)
    flip_byte(root / "fomm/vox-adv-cpk.pth.tar")  # new mtime -> re-hashed
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


def test_stat_cache_and_rehash(tmp_path, tiny_sources, monkeypatch):
    root = arrange(tmp_path, tiny_sources)
    register_local(root)
    calls = []
    real = models._sha256
    monkeypatch.setattr(models, "_sha256", lambda p: calls.append(p) or real(p))
    assert states(verify(root)) == dict.fromkeys(ALL, VERIFIED)
    assert calls == []  # size + mtime unchanged: no re-hash
    assert states(verify(root, rehash=True)) == dict.fromkeys(ALL, VERIFIED)
    assert len(calls) == 4

    # a touched but unchanged file is re-hashed once, and its new mtime recorded
    calls.clear()
    path = root / "mssync/args"
    os.utime(path, ns=(time.time_ns(), path.stat().st_mtime_ns + 5_000_000_000))
    assert verify(root)["mssync/args"].state == VERIFIED
    assert calls == [path]
    assert read_manifest(root)["mssync/args"]["mtime_ns"] == path.stat().st_mtime_ns
    calls.clear()
    verify(root)
    assert calls == []

    # the documented blind spot of the cache: same size, mtime restored -> only a re-hash sees it
    flip_byte(root / "mssync/model_chkpt.pt", keep_mtime=True)
    assert verify(root)["mssync/model_chkpt.pt"].state == VERIFIED
    assert verify(root, rehash=True)["mssync/model_chkpt.pt"].state == CORRUPT


def test_layout_check_of_unrecorded_files(tmp_path, tiny_sources):
    root = arrange(tmp_path, tiny_sources)
    args = json.loads((root / "mssync/args").read_text())
    args["hidden_size"] = 12  # a different architecture than the checkpoint's
    (root / "mssync/args").write_text(json.dumps(args))
    result = verify(root)
    assert result["fomm/vox-adv-cpk.pth.tar"].state == UNVERIFIED  # fits: stays unverified, not recorded
    blamed = [rel for rel in ("mssync/args", "mssync/model_chkpt.pt") if result[rel].state == CORRUPT]
    assert blamed == ["mssync/model_chkpt.pt"]
    assert "layout" in result["mssync/model_chkpt.pt"].reason
    assert not (root / "manifest.json").exists()

    reg = register_local(root)
    assert reg["fomm/vox-adv-cpk.pth.tar"].state == VERIFIED
    assert reg["mssync/model_chkpt.pt"].state == CORRUPT
    assert sorted(read_manifest(root)) == ["fomm/vox-adv-256.yaml", "fomm/vox-adv-cpk.pth.tar"]


def test_unreadable_manifest_means_unverified(tmp_path, tiny_sources):
    root = arrange(tmp_path, tiny_sources)
    register_local(root)
    (root / "manifest.json").write_text("{not json")
    result = verify(root, check_layout=False)
    assert states(result) == dict.fromkeys(ALL, UNVERIFIED)
    assert "manifest.json" in result["mssync/args"].reason
    ensure_models(root, offline=True)  # re-checks and re-records what is there
    assert sorted(read_manifest(root)) == ALL


def test_register_accept_changed(tmp_path, tiny_sources):
    root = arrange(tmp_path, tiny_sources)
    register_local(root)
    # replace the checkpoint on purpose with another valid file: a re-saved copy (different bytes)
    ckpt = torch.load(root / "fomm/vox-adv-cpk.pth.tar", map_location="cpu", weights_only=True)
    ckpt["epoch"] = 7
    torch.save(ckpt, root / "fomm/vox-adv-cpk.pth.tar")
    assert register_local(root, accept_changed=False)["fomm/vox-adv-cpk.pth.tar"].state == CORRUPT
    assert register_local(root)["fomm/vox-adv-cpk.pth.tar"].state == VERIFIED
    assert read_manifest(root)["fomm/vox-adv-cpk.pth.tar"]["sha256"] == sha(root / "fomm/vox-adv-cpk.pth.tar")


# ------------------------------------------------------------------------------------------ ensure_models
def test_ensure_models_ready_dir(tmp_path, tiny_sources, no_gdown, monkeypatch):
    root = arrange(tmp_path, tiny_sources)
    register_local(root)
    monkeypatch.setattr(models, "_sha256", lambda p: pytest.fail("a ready directory must not be re-hashed"))
    paths = ensure_models(root)
    assert paths == models.model_paths(root)
    assert (paths.mssync_dir / "args").is_file() and paths.fomm_checkpoint.is_file()


def test_ensure_models_offline_missing(tmp_path, tiny_sources, no_gdown):
    root = arrange(tmp_path / "m", tiny_sources, ["fomm/vox-adv-256.yaml", "fomm/vox-adv-cpk.pth.tar"])
    register_local(root)
    before = files_under(root)
    with pytest.raises(DownloadError) as err:
        ensure_models(root, offline=True)
    msg = str(err.value)
    for text in ("--offline", "model_chkpt.pt", str(root / "mssync" / "model_chkpt.pt"), str(root / "mssync" / "args"),
                 models.REGISTRY["mssync"].source_url, "--from-dir"):
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
        assert "talkhead download fomm" in str(err.value)


def test_ensure_models_records_hand_placed_files(tmp_path, tiny_sources, no_gdown, packaged_tiny_config):
    root = arrange(tmp_path, tiny_sources, ["fomm/vox-adv-cpk.pth.tar", "mssync/args", "mssync/model_chkpt.pt"])
    logs = []
    ensure_models(root, offline=True, log=logs.append)
    assert sorted(read_manifest(root)) == ALL  # the FOMM config was copied in from the package
    assert (root / "fomm/vox-adv-256.yaml").read_bytes() == (DATA / "fomm" / "tiny.yaml").read_bytes()
    assert read_manifest(root)["mssync/args"]["how"] == "register"
    assert logs and str(root) in logs[0]


def test_ensure_models_read_only_dir(tmp_path, tiny_sources, no_gdown, monkeypatch):
    """Files baked into a read-only directory: checked and used, not recorded."""
    root = arrange(tmp_path, tiny_sources)

    def read_only(root, updates):
        raise CheckpointError(f"cannot write {root / 'manifest.json'}: Read-only file system")

    monkeypatch.setattr(models, "_write_manifest", read_only)
    logs = []
    assert ensure_models(root, offline=True, log=logs.append) == models.model_paths(root)
    assert any("cannot be recorded" in line and "Read-only" in line for line in logs)
    assert not (root / "manifest.json").exists()


# ------------------------------------------------------------------------------------------ download
@pytest.mark.parametrize("mode", ["raise", "partial", "corrupt", "interrupt"])
def test_failed_download_leaves_nothing(tmp_path, tiny_sources, monkeypatch, packaged_tiny_config, mode):
    drive = FakeDrive(tiny_sources, mode).install(monkeypatch)
    root = tmp_path / "models"
    if mode == "interrupt":
        with pytest.raises(KeyboardInterrupt):
            download(None, root, quiet=True)
        assert files_under(root) == []
        return
    with pytest.raises(DownloadError) as err:
        download(None, root, quiet=True)
    msg = str(err.value)
    assert files_under(root) == []  # no file, no manifest, no staging folder
    for spec in models.REGISTRY.values():
        assert spec.source_url in msg  # every model is attempted and reported
    assert str(root / "fomm" / "vox-adv-cpk.pth.tar") in msg
    assert str(root / "mssync" / "model_chkpt.pt") in msg
    assert "--from-dir" in msg
    if mode == "corrupt":
        assert "failed verification" in msg
    assert set(drive.fetched) <= {"vox-adv-cpk.pth.tar", "args", "model_chkpt.pt"}  # never the other files


def test_good_download_lands_verified(tmp_path, tiny_sources, monkeypatch, packaged_tiny_config):
    drive = FakeDrive(tiny_sources, "good").install(monkeypatch)
    root = tmp_path / "models"
    seen = []
    result = download(None, root, quiet=True, timeout=7.0, progress=lambda *a: seen.append(a))
    assert states(result) == dict.fromkeys(ALL, VERIFIED)
    assert files_under(root) == sorted(ALL + ["manifest.json"])
    manifest = read_manifest(root)
    for rel in ALL:
        assert manifest[rel]["sha256"] == sha(tiny_sources[rel])
    assert manifest["mssync/model_chkpt.pt"]["source"] == models.REGISTRY["mssync"].source_url
    assert manifest["fomm/vox-adv-256.yaml"]["how"] == "download"
    assert sorted(drive.fetched) == ["args", "model_chkpt.pt", "vox-adv-cpk.pth.tar"]
    assert all(k["timeout"] == 7.0 for k in drive.kwargs)
    size = (root / "mssync/model_chkpt.pt").stat().st_size
    assert ("download model_chkpt.pt", size, size) in seen

    # already verified: nothing is fetched again
    drive.fetched.clear()
    download(None, root, quiet=True)
    assert drive.fetched == []


def test_download_fetches_only_what_is_needed(tmp_path, tiny_sources, monkeypatch):
    root = arrange(tmp_path, tiny_sources, ["mssync/args", "mssync/model_chkpt.pt"])
    register_local(root)
    flip_byte(root / "mssync/model_chkpt.pt")
    drive = FakeDrive(tiny_sources, "good").install(monkeypatch)
    result = download("mssync", root, quiet=True)
    assert drive.fetched == ["model_chkpt.pt"]  # the corrupt one is replaced, args kept
    assert states(result) == {"mssync/args": VERIFIED, "mssync/model_chkpt.pt": VERIFIED}
    assert sha(root / "mssync/model_chkpt.pt") == sha(tiny_sources["mssync/model_chkpt.pt"])


def test_download_missing_from_folder(tmp_path, tiny_sources, monkeypatch):
    drive = FakeDrive(tiny_sources, "good")
    drive.FOLDERS = {models.REGISTRY["mssync"].drive_folder: ["args"]}
    drive.install(monkeypatch)
    with pytest.raises(DownloadError, match="'model_chkpt.pt' is not in the Drive folder"):
        download("mssync", tmp_path, quiet=True)
    assert files_under(tmp_path) == []


def test_ensure_models_downloads_missing(tmp_path, tiny_sources, monkeypatch):
    root = arrange(tmp_path, tiny_sources, ["fomm/vox-adv-256.yaml", "fomm/vox-adv-cpk.pth.tar", "mssync/args"])
    register_local(root)
    drive = FakeDrive(tiny_sources, "good").install(monkeypatch)
    paths = ensure_models(root)
    assert drive.fetched == ["model_chkpt.pt"]
    assert states(verify(root)) == dict.fromkeys(ALL, VERIFIED)
    assert paths.mssync_dir == root / "mssync"


def test_real_gdown_fails_fast_and_clean(tmp_path, monkeypatch):
    """A real gdown call: offline here (DNS fails), and on a networked machine the folder id does
    not exist; either way a DownloadError within seconds and nothing left behind."""
    bogus = dataclasses.replace(models.REGISTRY["mssync"], drive_folder="0000talkheadNoSuchFolder0000")
    monkeypatch.setitem(models.REGISTRY, "mssync", bogus)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # gdown's cookie file
    root = tmp_path / "models"
    start = time.monotonic()
    with pytest.raises(DownloadError) as err:
        download("mssync", root, quiet=True, timeout=5.0)
    assert time.monotonic() - start < 30
    assert bogus.source_url in str(err.value)
    assert str(root / "mssync" / "model_chkpt.pt") in str(err.value)
    assert files_under(root) == []


# ------------------------------------------------------------------------------------------ install_from
def test_install_from_folder(tmp_path, tiny_sources, packaged_tiny_config):
    src = tmp_path / "downloads"
    (src / "checkpoint").mkdir(parents=True)
    shutil.copyfile(tiny_sources["fomm/vox-adv-cpk.pth.tar"], src / "vox-adv-cpk.pth.tar")
    shutil.copyfile(tiny_sources["mssync/args"], src / "checkpoint" / "args")  # MS-Sync README's layout
    shutil.copyfile(tiny_sources["mssync/model_chkpt.pt"], src / "checkpoint" / "model_chkpt.pt")
    root = tmp_path / "models"
    result = install_from(src, root)
    assert states(result) == dict.fromkeys(ALL, VERIFIED)
    assert files_under(root) == sorted(ALL + ["manifest.json"])
    assert read_manifest(root)["mssync/model_chkpt.pt"]["how"] == "install"
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
    assert states(result) == {"fomm/vox-adv-256.yaml": VERIFIED, "fomm/vox-adv-cpk.pth.tar": VERIFIED}
    assert read_manifest(root)["fomm/vox-adv-cpk.pth.tar"]["sha256"] == sha(legacy)


def test_install_partner_and_bad_file(tmp_path, tiny_sources):
    root = arrange(tmp_path / "models", tiny_sources)
    register_local(root)
    # a single new args file is checked together with the checkpoint already in place
    args = json.loads(tiny_sources["mssync/args"].read_text())
    args["out_dir"] = "elsewhere"  # a harmless change
    good = tmp_path / "good" / "args"
    good.parent.mkdir()
    good.write_text(json.dumps(args))
    assert install_from(good, root)["mssync/args"].state == VERIFIED
    assert read_manifest(root)["mssync/args"]["sha256"] == sha(good)
    # a bad args file is refused and changes nothing
    args["hidden_size"] = 12
    bad = tmp_path / "bad" / "args"
    bad.parent.mkdir()
    bad.write_text(json.dumps(args))
    before = {rel: sha(root / rel) for rel in ALL}
    with pytest.raises(CheckpointError, match=str(bad).replace("\\", "\\\\")):
        install_from(bad, root)
    assert {rel: sha(root / rel) for rel in ALL} == before
    assert states(verify(root)) == dict.fromkeys(ALL, VERIFIED)
    assert files_under(root) == sorted(ALL + ["manifest.json"])


def test_install_from_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        install_from(tmp_path / "nope", tmp_path / "m")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="model_chkpt.pt"):
        install_from(tmp_path / "empty", tmp_path / "m")


def test_stale_staging_is_removed(tmp_path, tiny_sources):
    root = tmp_path / "models"
    stale, fresh = root / "mssync" / ".incoming-old", root / "mssync" / ".incoming-busy"
    for d in (stale, fresh):
        d.mkdir(parents=True)
        (d / "model_chkpt.pt").write_bytes(b"partial")
    old = time.time() - models.STALE_STAGING_S - 60
    os.utime(stale, (old, old))
    install_from([tiny_sources["mssync/args"], tiny_sources["mssync/model_chkpt.pt"]], root)
    assert not stale.exists() and fresh.exists()  # another process may still be using a fresh one


# ------------------------------------------------------------------------------------------ cards
@pytest.mark.parametrize("name", sorted(models.REGISTRY))
def test_model_cards(name):
    card = model_card(name)
    spec = models.REGISTRY[name]
    assert spec.source_url in card
    for f in spec.files:
        assert f"`{f.relpath}`" in card
    for section in ("## License", "## Citation", "## Expected layout", "```bibtex"):
        assert section in card
    repo_copy = Path(__file__).parents[1] / "models" / f"{name}.md"
    assert card == repo_copy.read_text(encoding="utf-8")  # the packaged card is the repository's


def test_cards_are_package_data():
    assert (models.cards_dir() / "fomm.md").is_file()
    assert models.cards_dir().parent.name == "talkhead"
