"""GFPGAN v1.4 (talkhead.gfpgan): parity with TencentARC's gfpganv1_clean_arch.py (tests/data/gfpgan,
docs/fixtures.md), the released layout, safe and strict loading, the store entry and download paths."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from talkhead import store
from talkhead.errors import CheckpointError, StateDictMismatchError
from talkhead.gfpgan import (ENTRY, GFPGANConfig, GFPGANRestorer, GFPGANv1Clean, expected_layout, load_gfpgan,
                             read_state_dict)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DATA = Path(__file__).parent / "data" / "gfpgan"
REL = "gfpgan/GFPGANv1.4.pth"


def _script():
    spec = importlib.util.spec_from_file_location("gfpgan_make_parity", DATA / "make_parity.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MAKE = _script()
TINY = GFPGANConfig(**MAKE.TINY)


@pytest.fixture(scope="module")
def parity():
    with np.load(DATA / "parity.npz") as z:
        return {k: z[k] for k in z.files}


def tiny_file(path: Path, *, seed: int = MAKE.TINY_SEED, **top) -> Path:
    """A tiny random-weight GFPGAN file in the released layout (``{"params_ema": ...}``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({ENTRY: MAKE.seeded_state_dict(expected_layout(TINY), seed), **top}, path)
    return path


# ------------------------------------------------------------------------------------------ parity
def test_tiny_matches_the_reference(parity):
    net = GFPGANv1Clean(TINY).eval()
    net.load_state_dict(MAKE.seeded_state_dict(expected_layout(TINY), MAKE.TINY_SEED), strict=True)
    x = torch.from_numpy(parity["tiny_input"])
    np.testing.assert_array_equal(x.numpy(), MAKE.parity_input(64, MAKE.TINY_SEED + 100).numpy())
    with torch.no_grad():
        out = net(x).numpy()
    assert float(np.abs(out - parity["tiny_output"]).max()) <= 1e-5
    assert list(parity["tiny_keys"]) == list(expected_layout(TINY))


def test_full_size_matches_the_reference_and_the_released_layout(parity):
    """v1.4's widths: the reference's own key list and shapes, in order; its output at every 8th pixel
    and on a full-resolution patch within 1e-5 (seeded random weights, loaded strictly)."""
    layout = expected_layout()
    assert list(parity["full_keys"]) == list(layout)
    assert [",".join(map(str, s)) for s in layout.values()] == list(parity["full_shapes"])
    assert len(layout) == 285 and sum(math.prod(s) for s in layout.values()) * 4 < 348632874
    net = GFPGANv1Clean().eval()
    from talkhead.checkpoints import load_state_dict_checked

    load_state_dict_checked(net, MAKE.seeded_state_dict(layout, MAKE.FULL_SEED), "GFPGAN v1.4")
    with torch.no_grad():
        out = net(MAKE.parity_input(512, MAKE.FULL_SEED + 100))
    assert float((out[..., ::8, ::8] - torch.from_numpy(parity["full_output_stride8"])).abs().max()) <= 1e-5
    patch = out[..., MAKE.PATCH[0], MAKE.PATCH[1]]
    assert float((patch - torch.from_numpy(parity["full_output_patch"])).abs().max()) <= 1e-5


def test_the_stored_noise_is_used_every_call():
    net = GFPGANv1Clean(TINY).eval()
    net.load_state_dict(MAKE.seeded_state_dict(expected_layout(TINY), 3))   # noise strengths 0.1, not 0
    r = GFPGANRestorer(net)
    x = torch.rand(2, 3, 64, 64)
    a, b = r(x), r(x)
    assert torch.equal(a, b) and a.shape == x.shape and float(a.min()) >= 0 and float(a.max()) <= 1
    net = r.net.stylegan_decoder
    net.noises.noise3.add_(1.0)   # the output depends on the stored noise
    assert not torch.equal(r(x), a)


def test_bf16_runs_under_autocast_close_to_fp32():
    net = GFPGANv1Clean(TINY).eval()
    net.load_state_dict(MAKE.seeded_state_dict(expected_layout(TINY), 4))
    r = GFPGANRestorer(net)
    x = torch.rand(1, 3, 64, 64)
    ref = r(x)
    r.precision = "bf16"
    out = r(x)
    assert out.dtype == torch.float32 and not torch.equal(out, ref)
    assert float((out - ref).abs().max()) < 0.02


# ------------------------------------------------------------------------------------------ files
def test_read_and_load_a_tiny_file(tmp_path):
    path = tiny_file(tmp_path / "GFPGANv1.4.pth")
    with pytest.raises(StateDictMismatchError, match="wrong shape"):   # the store's check: v1.4's widths
        read_state_dict(path)
    sd, cfg = read_state_dict(path, infer_widths=True)
    assert cfg == TINY and len(sd) == len(expected_layout(TINY))
    r = load_gfpgan(path, infer_widths=True)
    assert r.face_size == 64 and not any(p.device.type == "meta" for p in r.parameters())


@pytest.mark.parametrize("case", ["truncated", "no-entry", "missing-key", "nan", "payload", "extra-top"])
def test_bad_files_are_one_line(tmp_path, case):
    path = tmp_path / "GFPGANv1.4.pth"
    if case == "truncated":
        tiny_file(path)
        path.write_bytes(path.read_bytes()[:4000])
    elif case == "no-entry":
        torch.save({"params": MAKE.seeded_state_dict(expected_layout(TINY), 0)}, path)
    elif case == "missing-key":
        sd = MAKE.seeded_state_dict(expected_layout(TINY), 0)
        del sd["stylegan_decoder.noises.noise2"]
        torch.save({ENTRY: sd}, path)
    elif case == "nan":
        sd = MAKE.seeded_state_dict(expected_layout(TINY), 0)
        sd["final_linear.weight"][0, 0] = float("nan")
        torch.save({ENTRY: sd}, path)
    elif case == "payload":
        import os
        import pickle

        class Payload:
            def __reduce__(self):
                return (os.system, ("true",))

        path.write_bytes(pickle.dumps({ENTRY: Payload()}))
    else:
        tiny_file(path, junk=bytearray(b"x"))
    with pytest.raises(CheckpointError) as info:
        load_gfpgan(path, infer_widths=True)
    first = str(info.value).splitlines()[0]
    assert str(path) in str(info.value) and len(first) < 400
    if case == "missing-key":
        assert "noise2" in str(info.value)
    if case == "nan":
        assert "non-finite" in first


# ------------------------------------------------------------------------------------------ store
def test_registry_entry():
    spec = store.REGISTRY["gfpgan"]
    assert spec.optional and "gfpgan" not in store.default_models() and spec.config is None
    assert "CC BY-NC-SA 4.0" in spec.notice and "Apache-2.0" in spec.notice
    (f,) = spec.files
    assert f.relpath == REL and f.check is not None
    assert [s.url for s in f.sources] == [
        "https://github.com/TencentARC/GFPGAN/releases/download/v1.3.0/GFPGANv1.4.pth",
        "https://github.com/TencentARC/GFPGAN/releases/download/v1.3.4/GFPGANv1.4.pth"]
    assert [(p.algorithm, p.digest, p.size) for p in f.pins] == [
        ("sha256", "e2cd4703ab14f4d01fd1383a8a8b266f9a5833dacee8e6a79d3bf21a1b6be5ad", 348632874)]
    assert store.registry.sources_of(f, None, "https://m.example")[-1].url == "https://m.example/gfpgan/GFPGANv1.4.pth"


def test_store_refuses_other_widths(tmp_path):
    src = tiny_file(tmp_path / "src" / "GFPGANv1.4.pth").parent
    with pytest.raises(CheckpointError) as info:
        store.install_from(src, tmp_path / "models", names="gfpgan")
    assert "wrong shape" in str(info.value)
    assert not (tmp_path / "models" / REL).exists()


@pytest.fixture
def tiny_widths(monkeypatch):
    """The store's GFPGAN check reads the widths from the file (as the released one passes with v1.4's)."""
    import talkhead.gfpgan

    monkeypatch.setattr(talkhead.gfpgan, "read_state_dict",
                        lambda path, **kw: read_state_dict(path, infer_widths=True, **kw))


def test_from_dir_installs_records_and_doctor_lists_it(tmp_path, tiny_widths):
    from helpers import run_cli, states_of
    from talkhead.doctor import doctor_report

    src = tiny_file(tmp_path / "src" / "GFPGANv1.4.pth").parent
    root = tmp_path / "models"
    info = doctor_report(root)["models"]["optional"]["gfpgan"]
    assert info["installed"] is False and info["install"] == "talkhead download gfpgan"
    result = run_cli("download", "gfpgan", "--from-dir", src, "--models-dir", root)
    assert result.exit_code == 0, result.output
    assert "CC BY-NC-SA 4.0" in result.output + result.stderr
    assert states_of(store.verify(root, "gfpgan")) == {REL: store.VERIFIED}
    record = store.read_store_manifest(root)[REL]
    assert not record.get("pin")   # not the published file: recorded without the published pin
    report = doctor_report(root)
    assert report["models"]["optional"]["gfpgan"]["installed"] is True
    assert report["models"]["files"][REL]["pin"] is None
