"""The checkpoint store knows SMAC: two weight files installed by hand, checked against the config
(full-size and tiny layouts), recorded by sha256 on the first verified install, verified on every use,
and never fetched from a network (no public source: the authors share a browser link).

Tiny weights come from the fixture's weight rule (``test_smac.rule_state_dict``) and its tiny motion
estimator file, saved in the released layouts (``{'params_ema', 'params'}`` / ``{'params'}``).
"""
from __future__ import annotations

import lzma
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import talkhead.smac
from talkhead import store
from talkhead.cli import app
from talkhead.errors import CheckpointError, DownloadError, StateDictMismatchError
from talkhead.smac import SMACConfig
from talkhead.store import CORRUPT, MISSING, PACKAGED, VERIFIED, install_from, read_store_manifest, verify
from helpers import assert_clean_error, sha256_of, states_of
from test_smac import DATA, rule_state_dict

pytestmark = pytest.mark.usefixtures("new_process")  # each test starts like a new process: nothing hashed yet

G, ME, CFG = (store.REGISTRY["smac"].file(key).relpath for key in ("generator", "motion_estimator", "config"))
SMAC_FILES = [CFG, G, ME]


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> dict[str, Path]:
    """A folder as a user downloads it: ``net_g_latest.pth`` (params + params_ema, DataParallel
    ``module.`` keys in params_ema) and ``net_motion_estimator_latest.pth`` (params), tiny weights;
    plus the tiny config (not in that folder)."""
    d = tmp_path_factory.mktemp("downloads")
    g_state = rule_state_dict(SMACConfig.from_yaml(DATA / "tiny.yml").build_generator())
    torch.save({"params": g_state, "params_ema": {f"module.{k}": v for k, v in g_state.items()}},
               d / "net_g_latest.pth")
    with lzma.open(DATA / "net_motion_estimator_tiny.pth.xz") as src, open(d / "net_motion_estimator_latest.pth", "wb") as dst:
        shutil.copyfileobj(src, dst)
    return {"dir": d, G: d / "net_g_latest.pth", ME: d / "net_motion_estimator_latest.pth", CFG: DATA / "tiny.yml"}


@pytest.fixture
def packaged_tiny(monkeypatch):
    """The 'packaged' SMAC config is the tiny one, so it fits the tiny weights."""
    monkeypatch.setattr(talkhead.smac, "default_config_path", lambda: DATA / "tiny.yml")


def smac_states(root: Path) -> dict[str, str]:
    return {rel: st for rel, st in states_of(verify(root, "smac")).items()}


# ------------------------------------------------------------------------------------------ registry
def test_registry_entry_and_layouts_are_the_released_ones():
    spec = store.REGISTRY["smac"]
    assert spec.optional and "non-commercial" in spec.notice and "smac" not in store.default_models()
    assert [f.relpath for f in spec.files] == SMAC_FILES
    for f in spec.checkpoints:  # no download source: a browser share, recorded for the by-hand message
        assert f.sources == () and f.pins == () and f.by_hand == store.builtin.SMAC_SHARE
    assert spec.file("generator").entries == (("params_ema", "params"),)
    # the store's full-size listings are the official key/shape lists (keys-full.json, cut into tests/data)
    import gzip
    import json

    with gzip.open(DATA / "keys.json.gz", "rt", encoding="utf-8") as fh:
        full = json.load(fh)["full"]
    from talkhead.smac.layout import generator_layout, motion_estimator_layout

    for net, layout in (("net_g", generator_layout), ("net_motion_estimator", motion_estimator_layout)):
        ours = [[k, list(v)] for k, v in layout(None)["params"].items()]
        assert ours == [[k, shape] for k, shape, *_ in full[net]["state_dict"]]


def test_smac_is_not_part_of_the_default_set(tmp_path):
    """animate's models are fomm + mssync: an empty directory lists no SMAC files, and a download
    or doctor never asks for them."""
    root = tmp_path / "models"
    assert not any(rel.startswith("smac/") for rel in verify(root))
    assert store.model_file(root, "smac", "generator") == root / G


# ------------------------------------------------------------------------------------------ install by hand
def test_install_from_records_sha256_on_first_verified_install(tmp_path, released, packaged_tiny):
    root = tmp_path / "models"
    result = install_from(released["dir"], root)  # no names: SMAC is found by its weight files
    assert states_of(result) == {CFG: VERIFIED, G: VERIFIED, ME: VERIFIED}
    manifest = read_store_manifest(root)
    for rel in (G, ME):
        entry = manifest[rel]
        assert entry["sha256"] == sha256_of(released[rel]) == sha256_of(root / rel)
        assert entry["size"] == released[rel].stat().st_size and entry["how"] == "install" and entry["pin"] is None
    assert (root / CFG).read_bytes() == (DATA / "tiny.yml").read_bytes()  # packaged config copied along
    assert sorted(p.name for p in (root / "smac").iterdir()) == sorted(Path(r).name for r in SMAC_FILES)
    assert released[G].is_file()  # copied, not moved
    assert verify(root)[G].state == VERIFIED  # verify(None) lists an optional model once it is there
    # every later use re-checks the recorded digest: a changed byte is caught
    with open(root / G, "r+b") as fh:
        fh.seek(-10, 2)
        b = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([b[0] ^ 0xFF]))
    store.clear_hash_memo()
    assert smac_states(root)[G] == CORRUPT
    with pytest.raises(CheckpointError, match="net_g_latest.pth"):
        store.ensure_models(root, names="smac", offline=True)


def test_install_with_config_override_checks_it_against_the_weights(tmp_path, released):
    """With the full-size packaged config the tiny weights do not fit; DIR/smac/config.yml (the
    tiny one) overrides it and is checked and recorded with them."""
    root = tmp_path / "models"
    with pytest.raises(CheckpointError) as info:
        install_from([released[G], released[ME]], root)
    assert "not a valid SMAC renderer file" in str(info.value) and "net_g_latest.pth" in str(info.value)
    assert not (root / "smac").exists() and not (root / "manifest.json").exists()  # nothing half-installed
    src = tmp_path / "dl"
    (src / "smac").mkdir(parents=True)
    for rel in (G, ME, CFG):
        shutil.copyfile(released[rel], src / rel)
    assert states_of(install_from(src, root, names="smac")) == {CFG: VERIFIED, G: VERIFIED, ME: VERIFIED}
    assert read_store_manifest(root)[CFG]["sha256"] == sha256_of(DATA / "tiny.yml")


def test_a_stray_config_yml_is_not_taken_for_smac(tmp_path, released, packaged_tiny):
    """A folder of downloads with some other config.yml: only DIR/smac/config.yml overrides SMAC's."""
    src = tmp_path / "dl"
    (src / "other").mkdir(parents=True)
    (src / "other" / "config.yml").write_text("not: smac\n")
    (src / "config.yml").write_text("neither: smac\n")
    for rel in (G, ME):
        shutil.copyfile(released[rel], src / Path(rel).name)
    root = tmp_path / "models"
    assert states_of(install_from(src, root)) == {CFG: VERIFIED, G: VERIFIED, ME: VERIFIED}
    assert (root / CFG).read_bytes() == (DATA / "tiny.yml").read_bytes()


def _save_variant(path: Path, released: dict, rel: str, change) -> Path:
    data = torch.load(released[rel], weights_only=True)
    change(data)
    torch.save(data, path)
    return path


@pytest.mark.parametrize("case", ["no_entry", "nan_me", "missing_key", "params_only"])
def test_checks_on_install(tmp_path, released, packaged_tiny, case):
    """Each file is checked as inference reads it: params_ema else params, the `module.` prefix
    stripped, keys and shapes, finite weights; a failing file is named and nothing is installed."""
    d = tmp_path / "variants"
    d.mkdir()
    g, me = d / "net_g_latest.pth", d / "net_motion_estimator_latest.pth"
    shutil.copyfile(released[G], g)
    shutil.copyfile(released[ME], me)
    root = tmp_path / "models"
    if case == "params_only":  # the fallback entry inference reads is accepted
        _save_variant(g, released, G, lambda data: data.pop("params_ema"))
        assert states_of(install_from(d, root)) == {CFG: VERIFIED, G: VERIFIED, ME: VERIFIED}
        return
    if case == "no_entry":
        _save_variant(g, released, G, lambda data: [data.pop("params_ema"), data.pop("params")])
        expect, blamed = "lacks the 'params_ema' or 'params' state dict", g
    elif case == "nan_me":
        _save_variant(me, released, ME, lambda data: data["params"]["kp_detector.kp.weight"].view(-1)[0].fill_(float("nan")))
        expect, blamed = "kp_detector.kp.weight", me
    else:
        _save_variant(me, released, ME, lambda data: data["params"].pop("dense_motion_network.mask.bias"))
        expect, blamed = "dense_motion_network.mask.bias", me
    with pytest.raises(CheckpointError) as info:
        install_from(d, root)
    message = str(info.value)
    assert expect in message and f"{blamed} is not a valid SMAC renderer file" in message
    assert not (root / "smac").exists()
    if case == "missing_key":
        with pytest.raises(StateDictMismatchError):
            store.check_layout("smac", {ME: me, G: g})


def test_hand_placed_files_are_recorded_on_first_use(tmp_path, released, packaged_tiny):
    root = tmp_path / "models"
    (root / "smac").mkdir(parents=True)
    for rel in (G, ME):
        shutil.copyfile(released[rel], root / rel)
    assert smac_states(root) == {CFG: PACKAGED, G: "unverified", ME: "unverified"}
    logs: list[str] = []
    assert store.ensure_models(root, names="smac", offline=True, log=logs.append) == root
    assert smac_states(root) == {CFG: VERIFIED, G: VERIFIED, ME: VERIFIED}
    assert read_store_manifest(root)[G]["how"] == "register"
    assert not (root / "fomm").exists() and not (root / "mssync").exists()  # only what was asked for


# ------------------------------------------------------------------------------------------ never downloaded
def test_offline_missing_names_the_share_and_the_install_command(tmp_path):
    with pytest.raises(DownloadError) as info:
        store.ensure_models(tmp_path / "models", names="smac", offline=True)
    message = str(info.value)
    assert store.builtin.SMAC_SHARE in message and "talkhead download smac --from-dir FOLDER" in message
    assert "with network" not in message  # no network would help
    assert not (tmp_path / "models").exists()


def test_cli_download_smac_without_from_dir_is_one_line_and_leaves_nothing(tmp_path):
    root = tmp_path / "models"
    result = CliRunner().invoke(app, ["download", "smac", "--models-dir", str(root)])
    assert_clean_error(result, "no download source", "--from-dir")
    assert not root.exists() or not any(root.rglob("*.pth"))


def test_cli_download_from_dir_installs_and_says_the_licence(tmp_path, released, packaged_tiny):
    root = tmp_path / "models"
    result = CliRunner().invoke(app, ["download", "smac", "--from-dir", str(released["dir"]), "--models-dir", str(root)])
    assert result.exit_code == 0, result.output
    assert "non-commercial" in result.output and "verified" in result.output
    assert smac_states(root) == {CFG: VERIFIED, G: VERIFIED, ME: VERIFIED}


def test_doctor_does_not_require_smac(tmp_path, released, packaged_tiny):
    from talkhead.doctor import _findings

    root = tmp_path / "models"
    (root / "smac").mkdir(parents=True)
    shutil.copyfile(released[G], root / G)  # half an optional install: a warning, never a problem
    report = {"ffmpeg": {"has_libx264": True, "has_aac": True}, "landmarkers": {},
              "models": {"dir": str(root), "writable": True,
                         "files": {rel: st.to_dict() for rel, st in verify(root).items()}},
              "devices": {"cuda": {"available": True}}}
    problems, warnings = _findings(report)
    assert not any("smac" in p for p in problems)
    assert any(ME in w for w in warnings)
    assert verify(root)[ME].state == MISSING
