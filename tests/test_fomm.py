"""FOMM renderer: golden parity with the official first-order-model modules, checkpoint layout, loading.

Golden data: ``tests/data/fomm/parity.npz`` (tiny random-weight FOMM run through the reference code,
see ``docs/fixtures.md``) and ``vox-adv-256.keys.json``.
Tolerances are docs/fixtures.md's recommendations (rtol = 0).
"""
from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch

from talkhead.keypoints import Keypoints
import yaml

from talkhead.errors import CheckpointError, ConfigError, StateDictMismatchError
from talkhead.fomm import (FOMM, FOMMConfig, KPDetector, MultiScaleDiscriminator, OcclusionAwareGenerator,
                           default_config_path, load_fomm, movement_scale, relative_kp)

ATOL = {
    "kp": 1e-5,  # kp value / jacobian and the detector intermediates
    "dense": 1e-5,  # mask, occlusion_map, prediction, deformation, encoder / downsampling intermediates
    "warped": 5e-5,  # sparse_deformed, deformed (and the hourglass input holding sparse_deformed)
    "normalize": 1e-6,  # relative_kp (normalize_kp) outputs
}
_models: dict[bool, FOMM] = {}


def assert_close(actual, expected, atol: float, name: str) -> None:
    actual = actual.detach().cpu().numpy() if torch.is_tensor(actual) else np.asarray(actual)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    diff = float(np.abs(actual.astype(np.float64) - expected.astype(np.float64)).max())
    assert diff <= atol, f"{name}: max abs diff {diff:.3g} > {atol:g}"


@pytest.fixture(scope="module")
def tiny_model(fomm_tiny_files):
    """``load(align_corners)`` -> the tiny FOMM loaded through ``load_fomm`` (cached per convention)."""

    def load(align_corners: bool) -> FOMM:
        if align_corners not in _models:
            _models[align_corners] = load_fomm(*fomm_tiny_files, align_corners=align_corners)
        return _models[align_corners]

    return load


@pytest.fixture(scope="module")
def source(fomm_parity) -> torch.Tensor:
    # exactly the reference input: channels-last strides, (1, 3, 64, 64)
    return torch.tensor(fomm_parity["source"][None]).permute(0, 3, 1, 2)


def kp_from(p: dict, prefix: str) -> Keypoints:
    """Fixture keypoints ``{prefix}_value``/``_jacobian``; the reference's per-frame ``(T, 1, K, .)`` is flattened."""
    value, jacobian = torch.tensor(p[f"{prefix}_value"]), torch.tensor(p[f"{prefix}_jacobian"])
    if value.ndim == 4:
        value, jacobian = value[:, 0], jacobian[:, 0]
    return Keypoints(value, jacobian)


def tiny_yaml_dict(data_dir, **frame) -> dict:
    cfg = yaml.safe_load((data_dir / "fomm" / "tiny.yaml").read_text())
    if frame:
        cfg["dataset_params"]["frame_shape"] = frame["frame_shape"]
    return cfg


# --- keypoint detector ------------------------------------------------------------------------------
def test_kp_detector_parity_with_intermediates(tiny_model, source, fomm_parity):
    fomm = tiny_model(True)
    kp = fomm.kp_detector
    captured = {}
    hooks = [
        kp.down.register_forward_hook(lambda m, i, o: captured.__setitem__("kp_down", o)),
        kp.predictor.register_forward_hook(lambda m, i, o: captured.__setitem__("kp_feature_map", o)),
        kp.kp.register_forward_hook(lambda m, i, o: captured.__setitem__("kp_heatmap_logits", o)),
    ]
    try:
        out = fomm.detect(source)
    finally:
        for h in hooks:
            h.remove()
    for name in ("kp_down", "kp_feature_map", "kp_heatmap_logits"):
        assert_close(captured[name], fomm_parity[name], ATOL["kp"], name)
    assert_close(out.value, fomm_parity["kp_source_value"], ATOL["kp"], "kp_source_value")
    assert_close(out.jacobian, fomm_parity["kp_source_jacobian"], ATOL["kp"], "kp_source_jacobian")


def test_antialias_kernel_matches_checkpoint_buffer(fomm_tiny_files):
    config = FOMMConfig.from_yaml(fomm_tiny_files[0])
    ckpt = torch.load(fomm_tiny_files[1], map_location="cpu", weights_only=True)
    built = config.build_kp_detector().down.weight
    assert built.shape == (3, 1, 13, 13)  # sigma = 1.5 for scale 0.25 -> 2 * round(6) + 1
    torch.testing.assert_close(built, ckpt["kp_detector"]["down.weight"], rtol=0, atol=1e-8)
    torch.testing.assert_close(built.sum(dim=(1, 2, 3)), torch.ones(3), rtol=0, atol=1e-6)


# --- generator (both grid_sample conventions) -------------------------------------------------------
@pytest.mark.parametrize("align_corners,prefix", [(False, "gen_"), (True, "legacy_gen_")])
def test_generator_parity(tiny_model, source, fomm_parity, align_corners, prefix):
    fomm = tiny_model(align_corners)
    gen, dm = fomm.generator, fomm.generator.dense_motion_network
    assert fomm.align_corners is align_corners and dm.align_corners is align_corners
    captured = {}
    hooks = [
        dm.down.register_forward_hook(lambda m, i, o: captured.__setitem__("dm_source_down", o)),
        dm.hourglass.register_forward_pre_hook(lambda m, i: captured.__setitem__("dm_hourglass_input", i[0])),
        gen.down_blocks[-1].register_forward_hook(lambda m, i, o: captured.__setitem__("gen_encoded", o)),
        dm.register_forward_hook(lambda m, i, o: captured.__setitem__("deformation", o["deformation"])),
    ]
    kp_source = kp_from(fomm_parity, "kp_source")
    kp_driving = kp_from(fomm_parity, "kp_driving")
    try:
        with torch.inference_mode():
            out = gen(source, kp_driving=kp_driving.as_dict(), kp_source=kp_source.as_dict())
    finally:
        for h in hooks:
            h.remove()

    assert set(out) == {"mask", "sparse_deformed", "occlusion_map", "deformed", "prediction"}
    for name in ("mask", "occlusion_map", "prediction"):
        assert_close(out[name], fomm_parity[prefix + name], ATOL["dense"], prefix + name)
    for name in ("sparse_deformed", "deformed"):
        assert_close(out[name], fomm_parity[prefix + name], ATOL["warped"], prefix + name)
    assert_close(captured["deformation"], fomm_parity[prefix + "deformation"], ATOL["dense"], prefix + "deformation")
    # convention-independent intermediates
    assert_close(captured["dm_source_down"], fomm_parity["dm_source_down"], ATOL["dense"], "dm_source_down")
    assert_close(captured["gen_encoded"], fomm_parity["gen_encoded"], ATOL["dense"], "gen_encoded")
    if not align_corners:  # recorded in the modern (align_corners=False) run
        assert_close(captured["dm_hourglass_input"], fomm_parity["dm_hourglass_input"], ATOL["warped"],
                     "dm_hourglass_input")

    # the fast path gives the same frame
    frames = fomm.render(fomm.encode_source(source, kp_source), kp_driving)
    assert_close(frames, fomm_parity[prefix + "prediction"], ATOL["dense"], "render " + prefix + "prediction")


def test_align_corners_is_switchable_and_matters(tiny_model, source, fomm_parity):
    fomm = tiny_model(True)
    kp_source, kp_driving = kp_from(fomm_parity, "kp_source"), kp_from(fomm_parity, "kp_driving")
    encoding = fomm.encode_source(source, kp_source)  # independent of the convention: one for both
    try:
        fomm.align_corners = False
        assert fomm.generator.dense_motion_network.align_corners is False
        modern = fomm.render(encoding, kp_driving)
    finally:
        fomm.align_corners = True
    legacy = fomm.render(encoding, kp_driving)
    assert_close(modern, fomm_parity["gen_prediction"], ATOL["dense"], "switched gen_prediction")
    assert_close(legacy, fomm_parity["legacy_gen_prediction"], ATOL["dense"], "switched legacy_gen_prediction")
    assert float((modern - legacy).abs().max()) > 0.05  # the two conventions really differ (0.19 here)


# --- batched rendering -------------------------------------------------------------------------------
def _driving_batch(kp_source: Keypoints, b: int) -> Keypoints:
    t = torch.arange(b, dtype=torch.float32)[:, None, None]
    k = torch.arange(kp_source.num_kp, dtype=torch.float32)[None, :, None]
    offset = 0.06 * torch.cat([torch.sin(0.9 * t + 0.7 * k), torch.cos(1.3 * t - 0.4 * k)], dim=-1)
    angle = 0.08 * (t[..., None] - 1.5)
    rot = torch.cat([torch.cat([angle.cos(), -angle.sin()], -1), torch.cat([angle.sin(), angle.cos()], -1)], -2)
    return Keypoints(kp_source.value + offset, kp_source.jacobian @ rot)


def test_batched_render_equals_per_frame(tiny_model, source, fomm_parity):
    fomm = tiny_model(True)
    encoding = fomm.encode_source(source)
    kp_source = encoding.kp_source
    kp_driving = _driving_batch(kp_source, 5)
    batched = fomm.render(encoding, kp_driving)
    assert batched.shape == (5, 3, 64, 64)
    assert 0 < float(batched.min()) and float(batched.max()) < 1
    with torch.inference_mode():
        for i in range(5):
            one = kp_driving[i]
            single = fomm.render(encoding, one)
            reference = fomm.generator(source, kp_driving=one.as_dict(), kp_source=kp_source.as_dict())["prediction"]
            assert_close(batched[i:i + 1], single.numpy(), 1e-5, f"batched vs single frame {i}")
            assert_close(batched[i:i + 1], reference.numpy(), 1e-5, f"batched vs generator.forward frame {i}")
    # distinct poses give distinct frames (the batch is not one frame repeated)
    assert float((batched[0] - batched[3]).abs().max()) > 1e-3


def test_render_follows_the_encoding(tiny_model, source, fomm_parity):
    """Two sources encoded side by side: each encoding renders its own source, in any order."""
    fomm = tiny_model(True)
    encoding = fomm.encode_source(source)
    kp_driving = _driving_batch(encoding.kp_source, 2)
    first = fomm.render(encoding, kp_driving)
    other = torch.flip(source, dims=[3]).contiguous()
    encoding_other = fomm.encode_source(other)
    kp_other = fomm.detect(other)
    assert encoding_other.kp_source.equal(kp_other)
    got = fomm.render(encoding_other, kp_driving)
    with torch.inference_mode():
        expected = fomm.generator(other.expand(2, -1, -1, -1), kp_driving=kp_driving.as_dict(),
                                  kp_source={k: v.expand(2, *v.shape[1:]) for k, v in kp_other.as_dict().items()})
    assert_close(got, expected["prediction"].numpy(), 1e-5, "render of the second source")
    assert torch.equal(fomm.render(encoding, kp_driving), first)  # the first encoding is untouched


def test_render_rejects_bad_shapes(tiny_model, source, fomm_parity):
    fomm = tiny_model(True)
    kp_source, kp_driving = kp_from(fomm_parity, "kp_source"), kp_from(fomm_parity, "kp_driving")
    with pytest.raises(ValueError, match="64"):
        fomm.encode_source(source[..., :32, :32], kp_source)
    with pytest.raises(ValueError, match="one source"):
        fomm.encode_source(source.expand(2, -1, -1, -1), kp_source)
    with pytest.raises(ValueError, match="jacobian"):
        fomm.encode_source(source, Keypoints(kp_source.value))
    encoding = fomm.encode_source(source, kp_source)
    with pytest.raises(ValueError, match="jacobian"):
        fomm.render(encoding, Keypoints(kp_driving.value))
    with pytest.raises(ValueError, match="Keypoints"):
        fomm.render(encoding, kp_driving.as_dict())
    with pytest.raises(ValueError, match="FOMMSourceEncoding"):
        fomm.render(source, kp_driving)


# --- relative motion transfer -----------------------------------------------------------------------
@pytest.mark.parametrize("adapt", [False, True])
def test_relative_kp_parity(fomm_parity, adapt):
    p = fomm_parity
    kp_source = kp_from(p, "norm_kp_source")
    kp_initial = kp_from(p, "norm_driving_initial")
    driving = kp_from(p, "norm_driving")  # the reference's per-frame (T=4, 1, 10, 2), batched as (T, 10, 2)
    out = relative_kp(kp_source, driving, kp_initial, adapt_movement_scale=adapt)
    assert_close(out.value, p[f"norm_adapt{int(adapt)}_value"][:, 0], ATOL["normalize"], "value")
    assert_close(out.jacobian, p[f"norm_adapt{int(adapt)}_jacobian"][:, 0], ATOL["normalize"], "jacobian")
    assert torch.equal(driving.value, torch.tensor(p["norm_driving_value"][:, 0]))  # inputs untouched


def test_movement_scale_parity(fomm_parity):
    scale = movement_scale(kp_from(fomm_parity, "norm_kp_source"), kp_from(fomm_parity, "norm_driving_initial"))
    assert abs(scale - float(fomm_parity["norm_adapt1_scale"])) < 1e-9
    collinear = Keypoints(torch.stack([torch.linspace(-1, 1, 10), torch.zeros(10)], -1)[None])
    with pytest.raises(ValueError, match="degenerate"):
        movement_scale(collinear, kp_from(fomm_parity, "norm_driving_initial"))


# --- official layout --------------------------------------------------------------------------------
def test_vox_adv_256_layout_matches_official(data_dir):
    official = json.loads((data_dir / "fomm" / "vox-adv-256.keys.json").read_text())
    config = FOMMConfig.from_yaml(default_config_path())
    assert config.frame_size == 256
    assert {"common_params": config.common_params, "kp_detector_params": config.kp_detector_params,
            "generator_params": config.generator_params,
            "discriminator_params": config.discriminator_params} == official["model_params"]
    builders = {"generator": (config.build_generator, OcclusionAwareGenerator),
                "discriminator": (config.build_discriminator, MultiScaleDiscriminator),
                "kp_detector": (config.build_kp_detector, KPDetector)}
    total = 0
    for name, (build, cls) in builders.items():
        module = build()
        assert isinstance(module, cls)
        expected = official["modules"][name]
        got = [(k, list(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in module.state_dict().items()]
        want = [(e["key"], e["shape"], e["dtype"]) for e in expected["state_dict"]]
        assert got == want, f"{name}: state-dict layout differs from the official one"
        counts = expected["counts"]
        assert sum(p.numel() for p in module.parameters()) == counts["parameters"]
        assert sum(b.numel() for b in module.buffers()) == counts["buffer_elements"]
        assert [n for n, _ in module.named_parameters()] == expected["optimizer_param_order"]
        total += counts["parameters"]
    assert total == official["total_parameters"]


# --- loading ----------------------------------------------------------------------------------------
def test_load_fomm_legacy_format_checkpoint(tmp_path, fomm_tiny_files, source, fomm_parity):
    ckpt = torch.load(fomm_tiny_files[1], map_location="cpu", weights_only=True)
    legacy = tmp_path / "legacy-cpk.pth.tar"
    torch.save(ckpt, legacy, _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(legacy)
    fomm = load_fomm(fomm_tiny_files[0], legacy, device="cpu", align_corners=False)
    assert not fomm.generator.training and not fomm.kp_detector.training
    assert fomm.device == torch.device("cpu") and fomm.frame_size == 64 and fomm.align_corners is False
    encoding = fomm.encode_source(source)
    assert_close(encoding.kp_source.value, fomm_parity["kp_source_value"], ATOL["kp"], "legacy kp value")
    frame = fomm.render(encoding, kp_from(fomm_parity, "kp_driving"))
    assert_close(frame, fomm_parity["gen_prediction"], ATOL["dense"], "legacy gen_prediction")


@pytest.mark.parametrize("keep,missing", [(("kp_detector", "epoch"), "generator"),
                                          (("generator", "discriminator"), "kp_detector"),
                                          (("epoch",), "generator, kp_detector")])
def test_load_fomm_missing_entries(tmp_path, fomm_tiny_files, keep, missing):
    ckpt = torch.load(fomm_tiny_files[1], map_location="cpu", weights_only=True)
    path = tmp_path / "partial.pth.tar"
    torch.save({k: ckpt[k] for k in keep}, path)
    with pytest.raises(CheckpointError, match=f"lacks entr(y|ies) {missing}"):
        load_fomm(fomm_tiny_files[0], path)


def test_load_fomm_state_dict_mismatch(tmp_path, fomm_tiny_files):
    ckpt = torch.load(fomm_tiny_files[1], map_location="cpu", weights_only=True)
    del ckpt["generator"]["final.bias"]
    path = tmp_path / "broken.pth.tar"
    torch.save(ckpt, path)
    with pytest.raises(StateDictMismatchError, match="final.bias"):
        load_fomm(fomm_tiny_files[0], path)


# --- config -----------------------------------------------------------------------------------------
def test_config_128_frames_builds_and_renders(tmp_path, data_dir):
    path = tmp_path / "tiny-128.yaml"
    path.write_text(yaml.safe_dump(tiny_yaml_dict(data_dir, frame_shape=[128, 128, 3])))
    config = FOMMConfig.from_yaml(path)
    assert config.frame_size == 128
    torch.manual_seed(0)
    fomm = FOMM.from_config(config)
    assert fomm.frame_size == 128
    source = torch.rand(1, 3, 128, 128)
    encoding = fomm.encode_source(source)
    kp_source = encoding.kp_source
    assert kp_source.value.shape == (1, 10, 2) and kp_source.jacobian.shape == (1, 10, 2, 2)
    frames = fomm.render(encoding, _driving_batch(kp_source, 3))
    assert frames.shape == (3, 3, 128, 128)
    assert torch.isfinite(frames).all()
    with pytest.raises(ValueError, match="128"):
        fomm.detect(torch.rand(1, 3, 64, 64))


def test_config_missing_sections_are_named(tmp_path, data_dir):
    cfg = tiny_yaml_dict(data_dir)
    del cfg["model_params"]["kp_detector_params"]
    del cfg["model_params"]["generator_params"]["dense_motion_params"]
    del cfg["dataset_params"]["frame_shape"]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError) as err:
        FOMMConfig.from_yaml(path)
    for name in ("dataset_params.frame_shape", "kp_detector_params", "dense_motion_params"):
        assert name in str(err.value)
    with pytest.raises(ConfigError, match="model_params"):
        FOMMConfig.from_dict({"dataset_params": {"frame_shape": [64, 64, 3]}})


@pytest.mark.parametrize("edit,match", [
    (lambda c: c["dataset_params"].__setitem__("frame_shape", [100, 100, 3]), "divisible"),
    (lambda c: c["dataset_params"].__setitem__("frame_shape", [64, 128, 3]), "square"),
    (lambda c: c["model_params"]["kp_detector_params"].pop("temperature"), "temperature"),
    (lambda c: c["model_params"]["generator_params"].__setitem__("num_bottlenecks", 2), "num_bottlenecks"),
    (lambda c: c["model_params"]["kp_detector_params"].__setitem__("scale_factor", 0.3), "scale_factor"),
    (lambda c: c["model_params"]["kp_detector_params"].__setitem__("num_blocks", "three"), "non-numeric"),
])
def test_config_bad_values(tmp_path, data_dir, edit, match):
    cfg = tiny_yaml_dict(data_dir)
    edit(cfg)
    with pytest.raises(ConfigError, match=match):
        FOMMConfig.from_dict(cfg, origin="edited tiny.yaml")


def test_config_unreadable(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        FOMMConfig.from_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model_params: [unclosed\n")
    with pytest.raises(ConfigError, match="YAML"):
        FOMMConfig.from_yaml(bad)


def test_render_reproduces_e2e_frames(fomm_tiny_files, e2e_parity):
    """The MS-Sync keypoints rendered by HMo's ``make_animation`` (modern convention, absolute keypoints)."""
    p = e2e_parity
    fomm = load_fomm(*fomm_tiny_files, align_corners=False)
    source = torch.tensor(p["source"][None]).permute(0, 3, 1, 2)
    encoding = fomm.encode_source(source)
    assert_close(encoding.kp_source.value, p["kp_source_value"], ATOL["kp"], "e2e kp_source_value")
    kp_driving = kp_from(p, "driving")
    frames = fomm.render(encoding, kp_driving).permute(0, 2, 3, 1)
    assert_close(frames, p["frames"], 2e-5, "e2e frames")


@pytest.mark.parametrize("edit, needles", [
    (lambda c: c["model_params"]["common_params"].__setitem__("num_kp", None), ("common_params", "num_kp", "null")),
    (lambda c: c["model_params"]["generator_params"].__setitem__("max_features", "16"), ("max_features", "str")),
    (lambda c: c["model_params"]["kp_detector_params"].__setitem__("temperature", None), ("temperature", "null")),
    (lambda c: c["model_params"]["common_params"].__setitem__("estimate_jacobian", "yes"), ("estimate_jacobian",)),
    (lambda c: c["dataset_params"].__setitem__("frame_shape", ["64", 64, 3]), ("frame_shape",)),
])
def test_config_null_or_wrong_type(data_dir, edit, needles):
    cfg = tiny_yaml_dict(data_dir)
    edit(cfg)
    with pytest.raises(ConfigError) as err:
        FOMMConfig.from_dict(cfg, origin="edited tiny.yaml")
    assert "edited tiny.yaml" in str(err.value) and all(n in str(err.value) for n in needles), str(err.value)
