"""Inference fast paths keep the numbers: fused FOMM blocks == plain blocks, chunked MS-Sync audio
encoder == one pass, and the ``--batch-size auto`` default per device.

The golden parity tests (``test_fomm.py``, ``test_mssync.py``, ``test_e2e_parity.py``) run the default
(fast) paths against the reference; these tests pin each fast path to the plain computation directly,
on inputs where the two differ only by float rounding, and check that the caches follow the weights.
"""
from __future__ import annotations

import mmap
import os
import sys

import numpy as np
import pytest
import torch

from helpers import resident_fraction
from talkhead.devices import default_batch_size, default_piece_frames
from talkhead.fomm import load_fomm
from talkhead.fomm.blocks import (Hourglass, ResBlock2d, UpBlock2d, fused_inference, use_fused, winograd_enabled,
                                  winograd_inference)
from talkhead.fomm import winograd
from talkhead.fomm.winograd import (F2_3, F3_2, F4_3, TRANSFORMS, choose_transform, cpu_kind, kernel_taps,
                                    winograd_applies, winograd_conv, winograd_weight)
from talkhead.keypoints import Keypoints
from talkhead.mssync import load_mssync

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _randomise_batch_norms(module: torch.nn.Module, seed: int) -> None:
    """Non-trivial eval statistics, so that folding a batch norm into its conv is really exercised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)


def _plain_and_fused(module: torch.nn.Module, *args):
    with torch.inference_mode():
        with fused_inference(False):
            plain = module(*args)
        fused = module(*args)
    return plain, fused


# --- FOMM fused blocks ------------------------------------------------------------------------------
def test_fused_path_only_in_eval_without_grad():
    block = ResBlock2d(4)
    assert not use_fused(block)  # training mode
    block.eval()
    assert not use_fused(block)  # autograd on
    with torch.no_grad():
        assert use_fused(block)
        with fused_inference(False):
            assert not use_fused(block)
        assert use_fused(block)


# --- Winograd convolutions ---------------------------------------------------------------------------
@pytest.mark.parametrize("transform", list(TRANSFORMS.values()), ids=list(TRANSFORMS))
def test_winograd_transforms_are_exact_in_float64(transform):
    # in float64 a Winograd convolution is the convolution to ~1e-13: every transform entry is right
    g = torch.Generator().manual_seed(transform.m)
    r = transform.r
    x = torch.randn(2, 3, 11, 7, dtype=torch.float64, generator=g)  # ragged: partial tiles at both ends
    weight = torch.randn(5, 3, r, r, dtype=torch.float64, generator=g)
    bias = torch.randn(5, dtype=torch.float64, generator=g)
    for padding in (1, r // 2):
        want = torch.nn.functional.conv2d(x, weight, bias, padding=padding)
        got = winograd_conv(x, winograd_weight(weight, transform), bias, transform, padding=padding)
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


# float32 against a float64 convolution: F(4x4, 3x3)'s larger transform entries round more (still at the
# level of a direct float32 convolution on these sizes: benchmarks/README.md, "FOMM rendering")
WINOGRAD_F32_ATOL = {"F(2x2,3x3)": 2e-6, "F(4x4,3x3)": 1e-5, "F(3x3,2x2)": 2e-6, "F(2x2,2x2)": 2e-6}


@pytest.mark.parametrize("transform", list(TRANSFORMS.values()), ids=list(TRANSFORMS))
@pytest.mark.parametrize("batch,cin,cout,size,tiles", [(1, 16, 24, 16, 1024), (2, 8, 8, 10, 4), (1, 5, 7, 4, 1)])
def test_winograd_conv_equals_conv2d(transform, batch, cin, cout, size, tiles):
    g = torch.Generator().manual_seed(cin)
    r = transform.r
    conv = torch.nn.Conv2d(cin, cout, r, padding=1)
    x = torch.randn(batch, cin, size, size, generator=g)
    with torch.no_grad():
        want = torch.nn.functional.conv2d(x.double(), conv.weight.double(), conv.bias.double(), padding=1)
        residual = torch.randn(want.shape, generator=g).float()
        assert winograd_applies(conv, x)
        u = winograd_weight(conv.weight, transform)
        assert u.shape == (transform.a ** 2, cin, cout)
        got = winograd_conv(x, u, conv.bias, transform, tiles_per_step=tiles)
        assert got.shape == want.shape and got.is_contiguous(memory_format=torch.channels_last)
        atol = WINOGRAD_F32_ATOL[transform.name]
        torch.testing.assert_close(got.double(), want, rtol=0, atol=atol)
        # one step for the whole image gives the same convolution as tile-row steps (the transform products
        # may round differently with their width)
        whole = winograd_conv(x, u, conv.bias, transform, tiles_per_step=1 << 20)
        torch.testing.assert_close(whole, got, rtol=0, atol=atol)
        # the kernel taps, transformed on the call, give the same convolution
        taps = winograd_conv(x, kernel_taps(conv.weight), conv.bias, transform, tiles_per_step=tiles)
        torch.testing.assert_close(taps, got, rtol=0, atol=atol)
        fused = winograd_conv(x, u, conv.bias, transform, residual=residual, relu=True, tiles_per_step=tiles)
        torch.testing.assert_close(fused.double(), (want + residual.double()).relu(), rtol=0, atol=atol)


def test_winograd_is_only_for_what_it_computes():
    x = torch.randn(1, 4, 8, 8)
    assert winograd_applies(torch.nn.Conv2d(4, 4, 3, padding=1), x)
    assert winograd_applies(torch.nn.Conv2d(4, 4, 3, padding=1), torch.randn(1, 4, 7, 8))  # ragged tiles
    assert not winograd_applies(torch.nn.Conv2d(4, 4, 3, padding=1), x.double())
    assert not winograd_applies(torch.nn.Conv2d(4, 4, 3, padding=1, stride=2), x)
    assert not winograd_applies(torch.nn.Conv2d(4, 4, 3, padding=1, groups=2), x)
    assert not winograd_applies(torch.nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"), x)
    assert not winograd_applies(torch.nn.Conv2d(4, 4, 3, padding=(1, 0)), x)
    with pytest.raises(ValueError, match="3x3 kernels"):
        winograd_weight(torch.zeros(4, 4, 5, 5), F2_3)


@pytest.mark.parametrize("kind", ["avx512", "avx2"])
def test_choose_transform_per_shape_and_cpu_kind(kind):
    # the FOMM shapes (benchmarks/README.md, "FOMM rendering"): bottleneck and hourglass 3x3s, sub-pixel 2x2s
    assert choose_transform(3, 256, 256, 64, 64, kind=kind) is F4_3  # bottleneck
    assert choose_transform(3, 128, 256, 32, 32, kind=kind) is F4_3  # hourglass level 1
    assert choose_transform(3, 256, 512, 16, 16, kind=kind) is None  # hourglass level 2 (F(2x2, 3x3) moved SMAC)
    assert choose_transform(3, 512, 1024, 8, 8, kind=kind) is None  # deep levels: direct
    assert choose_transform(7, 64, 3, 256, 256, kind=kind) is None  # the final 7x7
    assert choose_transform(3, 3, 64, 64, 64, kind=kind) is None  # an image input (keypoint detector)
    assert choose_transform(2, 256, 256, 32, 32, kind=kind) is F3_2  # hourglass's last up block
    assert choose_transform(2, 512, 512, 16, 16, kind=kind) is None
    assert choose_transform(2, 256, 512, 64, 64, kind=kind) is F3_2  # the generator's up blocks
    assert choose_transform(2, 128, 256, 128, 128, kind=kind) is F3_2


def test_cpu_kind_reads_torch_capability():
    assert cpu_kind("AVX512") == "avx512" and cpu_kind("AVX2") == "avx2" and cpu_kind("DEFAULT") == "avx2"
    assert cpu_kind() in ("avx512", "avx2")


@pytest.fixture(params=["avx512", "avx2"])
def cpu_kind_as(request, monkeypatch):
    """Run the fused blocks as if on a CPU of this kind (the transform choice; the arithmetic is this CPU's)."""
    monkeypatch.setattr(winograd, "cpu_kind", lambda capability=None: request.param)
    return request.param


@pytest.mark.parametrize("size,transform", [(32, "F(4x4,3x3)"), (36, "F(4x4,3x3)"), (16, None)])
def test_res_block_fused_equals_plain_with_and_without_winograd(size, transform):
    torch.manual_seed(0)
    block = ResBlock2d(12).eval()
    _randomise_batch_norms(block, 3)
    x = torch.randn(2, 12, size, size)
    assert winograd_enabled()
    plain, fused = _plain_and_fused(block, x)
    state = block.conv1.__dict__.get("_fused_winograd")
    assert (state.transform.name if state is not None else None) == transform
    with torch.inference_mode(), winograd_inference(False):
        direct = block(x)
        assert not winograd_enabled()
    assert winograd_enabled()
    torch.testing.assert_close(fused, plain, rtol=0, atol=1e-5)
    torch.testing.assert_close(direct, plain, rtol=0, atol=1e-5)
    assert plain.abs().max() > 0.5


def test_winograd_weights_follow_the_input_size(monkeypatch):
    # one block at two sizes (a source of another size, a resized render) with two transforms (F(2x2, 3x3)
    # is not chosen today: forced at 16x16 here): each size's transform, each exact
    from talkhead.fomm import blocks

    monkeypatch.setattr(blocks, "choose_transform", lambda k, cin, cout, h, w: F4_3 if h * w >= 1024 else F2_3)
    torch.manual_seed(2)
    block = ResBlock2d(6).eval()
    _randomise_batch_norms(block, 5)
    for size, name in [(16, "F(2x2,3x3)"), (32, "F(4x4,3x3)"), (16, "F(2x2,3x3)")]:
        x = torch.randn(1, 6, size, size)
        plain, fused = _plain_and_fused(block, x)
        assert block.conv1.__dict__["_fused_winograd"].transform.name == name
        torch.testing.assert_close(fused, plain, rtol=0, atol=1e-5)


def test_res_block_winograd_against_float64():
    # one fused block (BN folded, F(4x4, 3x3) twice, residual) against the plain block in float64
    import copy

    torch.manual_seed(1)
    block = ResBlock2d(16).eval()
    _randomise_batch_norms(block, 4)
    x = torch.randn(1, 16, 32, 32)
    with torch.inference_mode():
        fused = block(x)
        with fused_inference(False):
            want = copy.deepcopy(block).double()(x.double())
    assert block.conv2.__dict__["_fused_winograd"].transform is F4_3
    torch.testing.assert_close(fused.double(), want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("size", [8, 16, 24, 32])  # below, at and above the sub-pixel threshold (16x16); F(3x3, 2x2)
def test_up_block_fused_equals_upsample_then_conv(size, cpu_kind_as):
    torch.manual_seed(0)
    block = UpBlock2d(6, 5).eval()
    _randomise_batch_norms(block, 1)
    x = torch.randn(2, 6, size, size)
    plain, fused = _plain_and_fused(block, x)
    assert ("_fused_winograd_subpixel" in block.conv.__dict__) == (size >= 32)
    assert fused.shape == plain.shape == (2, 5, 2 * size, 2 * size)
    torch.testing.assert_close(fused, plain, rtol=0, atol=1e-5)
    assert plain.abs().max() > 0.5  # a real signal, not an all-zero ReLU output


def test_hourglass_fused_equals_plain(cpu_kind_as):
    torch.manual_seed(0)
    hourglass = Hourglass(block_expansion=8, in_features=5, num_blocks=3, max_features=32).eval()
    _randomise_batch_norms(hourglass, 2)
    plain, fused = _plain_and_fused(hourglass, torch.randn(1, 5, 64, 64))
    # F(4x4, 3x3) at 64 and 32 (encoder), F(3x3, 2x2) for the sub-pixel up block at 32; 16x16 and below direct
    chosen = sorted(v.transform.name for m in hourglass.modules() for k, v in m.__dict__.items()
                    if k.startswith("_fused_winograd"))
    assert chosen == ["F(3x3,2x2)", "F(4x4,3x3)", "F(4x4,3x3)"]
    torch.testing.assert_close(fused, plain, rtol=0, atol=1e-5)


@pytest.mark.parametrize("batch,cin,cout,k,size,rows", [(1, 8, 3, 7, 20, 64), (2, 5, 2, 7, 13, 4), (1, 6, 4, 5, 9, 1)])
def test_tap_gemm_conv_equals_conv2d(batch, cin, cout, k, size, rows):
    g = torch.Generator().manual_seed(k + cin)
    x = torch.randn(batch, cin, size, size + 3, generator=g)
    weight = torch.randn(cout, cin, k, k, generator=g) / k
    bias = torch.randn(cout, generator=g)
    want = torch.nn.functional.conv2d(x.double(), weight.double(), bias.double(), padding=k // 2)
    got = winograd.tap_gemm_conv(x.contiguous(memory_format=torch.channels_last), weight, bias, rows=rows)
    assert got.shape == want.shape and got.is_contiguous()
    torch.testing.assert_close(got.double(), want, rtol=0, atol=2e-6)
    exact = winograd.tap_gemm_conv(x.double(), weight.double(), bias.double(), rows=rows)
    torch.testing.assert_close(exact, want, rtol=0, atol=1e-12)


def test_final_conv_takes_the_tap_gemm_where_chosen(monkeypatch):
    from talkhead.fomm import blocks

    assert winograd.use_tap_gemm(7, 64, 3, 256, 256) and not winograd.use_tap_gemm(7, 108, 12, 64, 64)
    assert not winograd.use_tap_gemm(7, 64, 3, 64, 64) and not winograd.use_tap_gemm(3, 64, 3, 256, 256)
    calls = []
    monkeypatch.setattr(blocks, "tap_gemm_conv", lambda *a, **kw: calls.append(1) or winograd.tap_gemm_conv(*a, **kw))
    conv = torch.nn.Conv2d(4, 3, 7, padding=3).eval()
    x = torch.randn(1, 4, 128, 128, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        got = blocks.fused_narrow_conv(conv, x)
        assert calls == [1]
        with winograd_inference(False):
            direct = blocks.fused_narrow_conv(conv, x)
        assert calls == [1]
        want = conv(x)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    torch.testing.assert_close(direct, want, rtol=0, atol=1e-5)


@pytest.fixture()
def fomm(fomm_tiny_files):
    return load_fomm(*fomm_tiny_files)


def _inputs(fomm, fomm_parity):
    source = torch.tensor(fomm_parity["source"][None]).permute(0, 3, 1, 2)
    kp_source = fomm.detect(source)
    assert isinstance(kp_source, Keypoints)
    g = torch.Generator().manual_seed(0)
    kp_driving = Keypoints(kp_source.value + 0.1 * torch.randn(3, 10, 2, generator=g),
                           kp_source.jacobian + 0.1 * torch.randn(3, 10, 2, 2, generator=g))
    return source, kp_source, kp_driving


def _render(fomm, source, kp_source, kp_driving):
    """Encode ``source`` and render: a fresh encoding each call, so the encoder runs on the path of the
    moment (fused or plain) too."""
    return fomm.render(fomm.encode_source(source, kp_source), kp_driving)


def test_fomm_render_fused_equals_plain(fomm, fomm_parity):
    source, kp_source, kp_driving = _inputs(fomm, fomm_parity)
    with fused_inference(False):
        plain = _render(fomm, source, kp_source, kp_driving)
    with winograd_inference(False):
        direct = _render(fomm, source, kp_source, kp_driving)
    fused = _render(fomm, source, kp_source, kp_driving)
    assert any("_fused_winograd_subpixel" in b.conv.__dict__ for b in fomm.generator.up_blocks)  # it ran
    torch.testing.assert_close(direct, plain, rtol=0, atol=1e-5)
    assert fused.is_contiguous() and fused.shape == plain.shape == (3, 3, 64, 64)
    torch.testing.assert_close(fused, plain, rtol=0, atol=1e-5)
    assert (plain - plain.mean()).abs().max() > 1e-3  # frames with content


def test_fused_weights_follow_in_place_weight_changes(fomm, fomm_parity):
    source, kp_source, kp_driving = _inputs(fomm, fomm_parity)
    before = _render(fomm, source, kp_source, kp_driving)  # builds the fused-weight caches
    state = fomm.generator.state_dict()
    g = torch.Generator().manual_seed(3)
    changed = {k: (v + 0.05 * torch.randn(v.shape, generator=g) if v.is_floating_point() and "running_var" not in k
                   else v) for k, v in state.items()}
    fomm.generator.load_state_dict(changed)  # copies in place: same storages, new versions
    # the source encoding (features) depends on the weights too: _render encodes again
    after = _render(fomm, source, kp_source, kp_driving)
    with fused_inference(False):
        plain_after = _render(fomm, source, kp_source, kp_driving)
    assert (after - before).abs().max() > 1e-3
    torch.testing.assert_close(after, plain_after, rtol=0, atol=1e-5)


# --- MS-Sync chunked audio encoder -------------------------------------------------------------------
@pytest.fixture(scope="module")
def audio_encoder(mssync_tiny_dir):
    return load_mssync(mssync_tiny_dir).encoder_a


def test_audio_encoder_receptive_field(audio_encoder):
    assert audio_encoder.strides == [4, 8, 16, 32]
    # 1 + 1 + 2 + 2 (conv0 kernels 3) + 3 * (4 + 8 + 16) (pyramid kernels 7) = 90 rows -> 96
    assert audio_encoder.halo == 96


@pytest.mark.parametrize("length", [1000, 1017])  # a multiple of the stride and a ragged end
def test_chunked_audio_encoder_equals_one_pass(audio_encoder, length):
    torch.manual_seed(0)
    logfbank = torch.randn(2, length, 26)
    with torch.no_grad():
        one_pass = audio_encoder(logfbank, chunk_rows=0)
        chunked = audio_encoder(logfbank, chunk_rows=64)  # 16 chunks, every one with a halo
    assert [t.shape for t in chunked] == [t.shape for t in one_pass]
    assert one_pass[0].shape[-1] == -(-length // 4)
    for a, b in zip(chunked, one_pass):
        # float32: different chunk lengths round differently in the point-wise GEMMs (~1e-6 measured)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_chunked_audio_encoder_is_exact_in_float64(audio_encoder):
    import copy

    enc = copy.deepcopy(audio_encoder).double()
    logfbank = torch.randn(1, 900, 26, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        one_pass = enc(logfbank, chunk_rows=0)
        chunked = enc(logfbank, chunk_rows=96)
    for a, b in zip(chunked, one_pass):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_chunks_without_enough_halo_would_differ(audio_encoder, monkeypatch):
    # the equality above depends on the halo: one stride too little and the deepest level changes
    logfbank = torch.randn(1, 900, 26, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        one_pass = audio_encoder(logfbank, chunk_rows=0)
        monkeypatch.setattr(type(audio_encoder), "halo", property(lambda self: 64))
        short = audio_encoder(logfbank, chunk_rows=96)
    assert (short[-1] - one_pass[-1]).abs().max() > 1e-3
    torch.testing.assert_close(short[0], one_pass[0], rtol=0, atol=1e-5)  # level 0 needs only 6 rows


def test_chunked_audio_encoder_default_and_bad_chunk(audio_encoder):
    assert audio_encoder.chunk_rows % audio_encoder.stride == 0
    with pytest.raises(ValueError, match="multiple of 32"):
        audio_encoder(torch.zeros(1, 3000, 26), chunk_rows=100)


# --- --batch-size auto --------------------------------------------------------------------------------
def test_default_batch_size_per_device():
    assert default_batch_size("cpu") == 8                      # FOMM: passes of 8, rendered in pieces of 2
    assert default_batch_size(torch.device("cpu"), "fomm") == 8
    assert default_batch_size("cpu", "smac") == 2              # a renderer without pieces
    assert default_piece_frames("cpu") == 2 and default_piece_frames("cuda") is None
    assert default_batch_size("cuda:1") == 8  # torch.device needs no GPU to be present
    assert default_batch_size("mps") == 4
    assert all(isinstance(default_batch_size(d), int) for d in ("cpu", "cuda", "mps"))


def test_render_frames_agree_between_batch_sizes(fomm, fomm_parity):
    # the default batch differs per device: frames must not depend on it
    source, kp_source, kp_driving = _inputs(fomm, fomm_parity)
    batched = _render(fomm, source, kp_source, kp_driving)
    single = torch.cat([_render(fomm, source, kp_source, kp_driving[i]) for i in range(3)])
    np.testing.assert_allclose(single.numpy(), batched.numpy(), rtol=0, atol=1e-5)


def test_render_passes_in_pieces_give_the_same_frames(fomm, fomm_parity):
    """A pass of 5 frames rendered 2 at a time (dense motion's inputs and heads, decoder) gives exactly the frames
    of the pass rendered whole."""
    source, kp_source, kp_driving = _inputs(fomm, fomm_parity)
    kp = Keypoints.cat([kp_driving, kp_driving[:2]])
    encoding = fomm.encode_source(source, kp_source)
    before = fomm.piece_frames
    try:
        fomm.piece_frames = None
        whole = fomm.render(encoding, kp)
        fomm.piece_frames = 2
        pieces = fomm.render(encoding, kp)
    finally:
        fomm.piece_frames = before
    assert pieces.shape == whole.shape == (5, 3, fomm.frame_size, fomm.frame_size)
    assert torch.equal(pieces, whole)
    # a source and kp_source given per frame (batch 5, not shared) are cut into the same pieces
    dm = fomm.generator.dense_motion_network
    g = torch.Generator().manual_seed(5)
    source_down = encoding.source_down.expand(5, -1, -1, -1) + 0.05 * torch.rand(5, *encoding.source_down.shape[1:], generator=g)
    kp_s = {k: v.expand(5, *v.shape[1:]) + 0.01 * torch.randn(5, *v.shape[1:], generator=g)
            for k, v in kp_source.as_dict().items()}
    with torch.inference_mode():
        one = dm.motion(source_down, kp.as_dict(), kp_s)
        two = dm.motion(source_down, kp.as_dict(), kp_s, piece=2)
    assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)


def test_hourglass_pieces_run_the_deep_levels_once_and_equal_forward(cpu_kind_as):
    torch.manual_seed(0)
    hourglass = Hourglass(block_expansion=8, in_features=5, num_blocks=3, max_features=32).eval()
    _randomise_batch_norms(hourglass, 2)
    x = torch.randn(5, 5, 64, 64).contiguous(memory_format=torch.channels_last)
    calls = []
    for i, block in enumerate(hourglass.encoder.down_blocks):
        block.register_forward_pre_hook(lambda m, args, i=i: calls.append((i, args[0].shape[0])))
    with torch.inference_mode():
        whole = hourglass(x)
        calls.clear()
        pieces = list(hourglass.forward_pieces([x[:2], x[2:4], x[4:]]))
        # 64x64 and 32x32 by piece (2, 2, 1 frames), the 16x16 level once for all five frames
        assert calls == [(0, 2), (1, 2), (0, 2), (1, 2), (0, 1), (1, 1), (2, 5)]
        assert [p.shape[0] for p in pieces] == [2, 2, 1]
        assert torch.equal(torch.cat(pieces), whole)
        calls.clear()
        alone = list(hourglass.forward_pieces([x[:2], x[2:]], min_pixels=1 << 20))  # no level large enough
        assert calls == [(0, 2), (1, 2), (2, 2), (0, 3), (1, 3), (2, 3)]
        assert torch.equal(torch.cat(alone), whole)


# --- what the fused path keeps ---------------------------------------------------------------------
def _fused_states(module: torch.nn.Module) -> list:
    return [v for m in module.modules() for k, v in m.__dict__.items() if k.startswith("_fused_")]


def test_fused_path_keeps_only_the_packed_weight_on_cpu(fomm, fomm_parity):
    """On CPU each fused conv keeps its oneDNN-packed weight, not also the folded copy it came from; a
    new batch size re-derives and re-packs it, giving the same frames as a fresh model."""
    from talkhead.fomm.blocks import _PACKED_OPS

    if not (_PACKED_OPS and torch.backends.mkldnn.enabled):
        pytest.skip("this torch has no packed oneDNN convolutions")
    source, kp_source, kp_driving = _inputs(fomm, fomm_parity)
    batch3 = _render(fomm, source, kp_source, kp_driving)
    states = _fused_states(fomm.generator)
    convs = [s for s in states if hasattr(s, "packed")]
    assert convs and all(s.packed is not None and s.weight is None for s in convs)
    # a convolution that runs as a Winograd one keeps its Winograd weights instead: never both copies
    wino = [s for s in states if hasattr(s, "transform")]
    assert wino and len(states) == len(convs) + len(wino)
    for m in fomm.generator.modules():
        assert not ("_fused_winograd" in m.__dict__ and "_fused_conv" in m.__dict__)
        assert not ("_fused_winograd_subpixel" in m.__dict__ and "_fused_conv_subpixel" in m.__dict__)
    single = _render(fomm, source, kp_source, kp_driving[torch.arange(1, 2)])  # new shape: re-packed
    torch.testing.assert_close(single, batch3[1:2], rtol=0, atol=1e-5)
    again = _render(fomm, source, kp_source, kp_driving)
    assert torch.equal(again, batch3)


def test_detector_weights_dropped_after_first_detect(fomm, fomm_parity):
    source = torch.tensor(fomm_parity["source"][None]).permute(0, 3, 1, 2)
    first = fomm.detect(source)
    assert _fused_states(fomm.kp_detector) == []  # one photo per run: not kept
    second = fomm.detect(source)
    assert _fused_states(fomm.kp_detector)  # called again: kept from now on
    third = fomm.detect(source)
    for kp in (second, third):
        assert torch.equal(kp.value, first.value) and torch.equal(kp.jacobian, first.jacobian)


def test_separate_large_allocations_is_harmless():
    from talkhead.memory import separate_large_allocations

    with separate_large_allocations() as applied:
        x = torch.ones(1 << 20)
    assert isinstance(applied, bool) and float(x.sum()) == float(1 << 20)


def test_winograd_is_left_to_the_direct_convs_under_autocast():
    # --precision bf16/fp16 runs the decoder under torch.autocast: its measured deviation is the direct path's
    block = ResBlock2d(8).eval()
    x = torch.randn(1, 8, 32, 32)  # 32x32: F(4x4, 3x3) without autocast
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        block(x)
    assert "_fused_winograd" not in block.conv1.__dict__ and "_fused_winograd" not in block.conv2.__dict__
    with torch.inference_mode():
        block(x)
    assert "_fused_winograd" in block.conv1.__dict__


linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise(MADV_PAGEOUT) is Linux's")


@linux_only
def test_page_out_drops_mapped_pages_and_keeps_values(tmp_path):
    from talkhead.memory import page_out

    _saved({"w": torch.randn(1 << 20)}, tmp_path / "w.pt")  # 4 MiB
    w = torch.load(tmp_path / "w.pt", mmap=True, weights_only=True)["w"]
    total = float(w.double().sum())  # reads every page
    assert resident_fraction(w) == 1.0
    advised = page_out([w, w[10:]])  # a view of the same storage counts once
    if advised == 0:
        pytest.skip("this kernel has no MADV_PAGEOUT")
    assert advised >= (1 << 22) - 2 * mmap.PAGESIZE and resident_fraction(w) < 0.05
    assert float(w.double().sum()) == total  # read back from the file, unchanged
    assert resident_fraction(w) == 1.0


def _saved(obj, path):
    """``torch.save`` and flush to disk: the kernel reclaims a file's pages at once only when they are clean
    (a downloaded checkpoint's are long before it is used)."""
    torch.save(obj, path)
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def _medium_fomm_files(tmp_path, fomm_tiny_files):
    """A FOMM config + zip checkpoint whose convolutions span many pages (256-channel 3x3 bottleneck)."""
    from talkhead.fomm import FOMM, FOMMConfig

    text = fomm_tiny_files[0].read_text()
    for section, end in (("kp_detector_params:", "generator_params:"), ("generator_params:", "dense_motion_params:")):
        part = text.split(section)[1].split(end)[0]
        text = text.replace(part, part.replace("block_expansion: 8", "block_expansion: 64")
                            .replace("max_features: 16", "max_features: 256"))
    config_path = tmp_path / "medium.yaml"
    config_path.write_text(text)
    torch.manual_seed(0)
    model = FOMM.from_config(FOMMConfig.from_yaml(config_path))
    _saved({"generator": model.generator.state_dict(), "kp_detector": model.kp_detector.state_dict()},
           tmp_path / "medium-cpk.pth.tar")
    return config_path, tmp_path / "medium-cpk.pth.tar"


@linux_only
def test_mapped_fomm_weights_are_held_once_and_render_the_same(tmp_path, fomm_tiny_files, fomm_parity, monkeypatch):
    import talkhead.fomm.model as fomm_model

    files = _medium_fomm_files(tmp_path, fomm_tiny_files)
    mapped = load_fomm(*files)
    bottleneck = mapped.generator.bottleneck[0].conv1.weight  # (256, 256, 3, 3): 2.25 MiB
    probe = float(bottleneck.double().sum())
    from talkhead.memory import page_out
    if page_out([bottleneck]) == 0:
        pytest.skip("this kernel has no MADV_PAGEOUT")
    monkeypatch.setattr(fomm_model.sys, "platform", "other")  # the copying loader (as on macOS / Windows)
    copied = load_fomm(*files)
    monkeypatch.undo()
    up = mapped.generator.up_blocks[0].conv.weight
    assert resident_fraction(bottleneck) < 0.05 and resident_fraction(up) < 0.05  # not read after the load check
    source = torch.tensor(fomm_parity["source"][None]).permute(0, 3, 1, 2)
    frames = {}
    for name, model in (("mapped", mapped), ("copied", copied)):
        kp_source = model.detect(source)
        g = torch.Generator().manual_seed(0)
        kp_driving = Keypoints(kp_source.value + 0.1 * torch.randn(2, 10, 2, generator=g),
                               kp_source.jacobian + 0.1 * torch.randn(2, 10, 2, 2, generator=g))
        encoding = model.encode_source(source, kp_source)
        frames[name] = [model.render(encoding, kp_driving[i:i + 1]) for i in range(2)]
        if name == "mapped":  # every weight a packed / transformed copy replaced was paged out as it was built
            assert resident_fraction(up) < 0.05 and resident_fraction(bottleneck) < 0.05
            assert resident_fraction(model.kp_detector.predictor.encoder.down_blocks[-1].conv.weight) < 0.05
        with fused_inference(False):
            frames[name].append(model.render(encoding, kp_driving[:1]))  # the plain path reads the weights
    # ... and read back unchanged where the plain path needs them: the same frames as copied weights
    for a, b in zip(frames["mapped"], frames["copied"]):
        assert torch.equal(a, b)
    assert float(bottleneck.double().sum()) == probe
    assert resident_fraction(copied.generator.bottleneck[0].conv1.weight) == 1.0  # copies stay in memory


def test_winograd_output_in_a_zero_border_feeds_the_next_conv_without_a_copy():
    from talkhead.fomm.winograd import _PADDED

    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 32, 32, generator=g)
    w1, w2 = torch.randn(16, 16, 3, 3, generator=g) / 12, torch.randn(16, 16, 3, 3, generator=g) / 12
    b = torch.randn(16, generator=g)
    scale, shift = torch.rand(16, generator=g) + 0.5, torch.randn(16, generator=g)
    torch.full((1, 34, 34, 16), float("nan"))  # freed: the buffer below may reuse this memory
    y = winograd_conv(x, kernel_taps(w1), b, F4_3, relu=True, pre=(scale, shift), out_padding=1)
    buffer, padding = getattr(y, _PADDED)
    assert padding == 1 and buffer.shape == (1, 34, 34, 16)
    framed = buffer.permute(0, 3, 1, 2)
    assert torch.equal(framed[:, :, 1:-1, 1:-1], y)
    border = framed.clone()
    border[:, :, 1:-1, 1:-1] = 0
    assert not border.any()  # zeros all round
    want1 = torch.nn.functional.conv2d(torch.relu(x * scale[:, None, None] + shift[:, None, None]), w1, b, padding=1).relu()
    torch.testing.assert_close(y, want1, rtol=0, atol=1e-5)
    z = winograd_conv(y, kernel_taps(w2), b, F4_3, residual=x)
    torch.testing.assert_close(z, torch.nn.functional.conv2d(want1, w2, b, padding=1) + x, rtol=0, atol=1e-5)
    assert torch.equal(z, winograd_conv(y.contiguous(), kernel_taps(w2), b, F4_3, residual=x))  # same as copied
    act = torch.relu(want1 * scale[:, None, None] + shift[:, None, None])  # with a pre-activation: not reused
    torch.testing.assert_close(winograd_conv(y, kernel_taps(w2), b, F4_3, pre=(scale, shift)),
                               torch.nn.functional.conv2d(act, w2, b, padding=1), rtol=0, atol=1e-5)
    framed[:, :, 0, 0] = float("nan")  # the next conv reads the buffer itself (its corner is in the first tile)
    assert torch.isnan(winograd_conv(y, kernel_taps(w2), b, F4_3)[:, :, 0, 0]).all()


def test_subpixel_winograd_writes_the_upsampled_map_into_a_zero_border_the_next_convs_read():
    """An up block's four phases written interleaved by the output transform (no phases buffer): the result is
    relu(conv3x3(upsample2x(x))), framed by zeros, and the next sub-pixel Winograd conv and the final tap GEMM
    read that frame instead of copying the map."""
    from talkhead.fomm.blocks import _subpixel_weight
    from talkhead.fomm.winograd import _PADDED

    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 6, 32, 35, generator=g)  # 33 x 36 phase outputs: the 3x3 tiles overhang both ways
    w, b = torch.randn(5, 6, 3, 3, generator=g) / 6, torch.randn(5, generator=g)
    up = torch.nn.functional.interpolate(x, scale_factor=2, mode="nearest")
    want = torch.nn.functional.conv2d(up.double(), w.double(), b.double(), padding=1).relu()
    torch.full((2, 70, 76, 5), float("nan"))  # freed: the buffer below may reuse this memory
    got = winograd_conv(x, winograd_weight(_subpixel_weight(w), F3_2), b.repeat(4), F3_2, relu=True, subpixel=True)
    assert got.shape == (2, 5, 64, 70)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=2e-6)
    buffer, padding = getattr(got, _PADDED)
    framed = buffer.permute(0, 3, 1, 2)
    assert padding == 1 and framed.shape[2] >= 66 and framed.shape[3] >= 72
    assert torch.equal(framed[:, :, 1:65, 1:71], got)
    border = framed.clone()
    border[:, :, 1:65, 1:71] = 0
    assert not border.any()  # zeros all round, the phases' cropped border and the tiles' overhang included
    # the next up block's sub-pixel conv takes the frame as its padded input
    w2, b2 = torch.randn(4, 5, 3, 3, generator=g) / 5, torch.randn(4, generator=g)
    u2 = winograd_weight(_subpixel_weight(w2), F3_2)
    want2 = torch.nn.functional.conv2d(torch.nn.functional.interpolate(want, scale_factor=2, mode="nearest"),
                                       w2.double(), b2.double(), padding=1).relu()
    got2 = winograd_conv(got, u2, b2.repeat(4), F3_2, relu=True, subpixel=True)
    torch.testing.assert_close(got2.double(), want2, rtol=0, atol=1e-5)
    assert torch.equal(got2, winograd_conv(got.contiguous(), u2, b2.repeat(4), F3_2, relu=True, subpixel=True))
    framed[:, :, 0, 5] = float("nan")  # it reads the frame itself: its top border feeds the first output row
    assert torch.isnan(winograd_conv(got, u2, b2.repeat(4), F3_2, relu=False, subpixel=True)[:, :, 0]).any()
    framed[:, :, 0, 5] = 0
    # the final 7x7 tap GEMM multiplies the frame's whole rows
    w7, b7 = torch.randn(3, 5, 7, 7, generator=g) / 15, torch.randn(3, generator=g)
    want7 = torch.nn.functional.conv2d(want, w7.double(), b7.double(), padding=3)
    got7 = winograd.tap_gemm_conv(got, w7, b7, rows=9)
    torch.testing.assert_close(got7.double(), want7, rtol=0, atol=5e-6)  # on the float32 map above
    torch.testing.assert_close(got7, winograd.tap_gemm_conv(got.contiguous(), w7, b7, rows=9), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="subpixel"):
        winograd_conv(x, winograd_weight(_subpixel_weight(w), F3_2), b.repeat(4), F3_2, subpixel=True,
                      residual=torch.zeros(2, 20, 33, 36))


def test_packed_weights_serve_every_batch_size(fomm, fomm_parity):
    source, kp_source, kp_driving = _inputs(fomm, fomm_parity)
    encoding = fomm.encode_source(source, kp_source)
    pair = fomm.render(encoding, kp_driving[:2])
    states = {id(m): m.__dict__["_fused_conv"] for m in fomm.generator.modules() if "_fused_conv" in m.__dict__}
    packed = {k: s.packed for k, s in states.items()}
    assert states and all(p is not None for p in packed.values())
    single = [fomm.render(encoding, kp_driving[i:i + 1]) for i in range(2)]  # another batch size: not re-packed
    assert all(states[k].packed is packed[k] for k in states)
    assert torch.equal(torch.cat(single), pair)
