"""The renderer contract (:class:`talkhead.renderers.Renderer`), checked on every renderer we have: the
tiny FOMM (``tests/data/fomm``), the tiny SMAC (``tests/data/smac``) and the toy
:class:`toy_renderer.PoseCodeRenderer`.

Contract::

    detect(images (B, 3, S, S) [0, 1]) -> Keypoints (B, K, 2) [+ (B, K, 2, 2)], finite, on device, the
        same per image as in a batch;
    encode_source(source (1, 3, S, S), kp_source=None) -> SourceEncoding with kp_source (1, K, ...)
        (detected, or the given keypoints);
    render(encoding, kp_driving (b, K, ...)) -> (b, 3, S, S) float32 in [0, 1] on device, S = frame_size;
        one encoding renders any number of batches, the same frames as a fresh encoding per batch, and
        a frame does not depend on the batch it is in or on other sources encoded in between.

Where a model promises more at the rest pose (``kp_driving == kp_source``), that is checked too: the
toy reproduces its source; FOMM's dense motion is the identity warp (Eq. 4 with ``d_k = s_k``,
``J_d = J_s``). SMAC promises neither (its motion codebook adds a learned residual flow).

Each renderer's frames are computed once per module (``runs``); SMAC's tiny model is the slow one
(about 4 s a 256 x 256 frame on one core), so its driving batch has 2 sets (8 frames in all, with the
reference forward pass).
"""
from __future__ import annotations

import lzma
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pytest
import torch

from talkhead.fomm import FOMMSourceEncoding, load_fomm
from talkhead.fomm.blocks import make_coordinate_grid
from talkhead.keypoints import Keypoints
from talkhead.renderers import Renderer
from talkhead.rendering import SourceEncoding
from talkhead.smac import SMAC, SMACConfig
from toy_renderer import PoseCodeRenderer, SourceImage

DATA = Path(__file__).parent / "data"


@dataclass
class Case:
    """One renderer under test with its inputs and the tolerances it is held to."""

    renderer: Renderer
    source: torch.Tensor                 # (1, 3, S, S) in [0, 1]
    other: torch.Tensor                  # another source (1, 3, S, S)
    drive: Callable[[Keypoints], Keypoints]  # kp_source -> kp_driving (b, K, ...), distinct sets
    atol: float                          # batch-size / re-encoding invariance of frames
    identity: Optional[Callable[["Case", SourceEncoding], None]] = None  # the rest-pose promise, if any
    # the model in one piece (no encode/render split): (source, kp_source, kp_driving) -> frames
    reference: Optional[Callable[[torch.Tensor, Keypoints, Keypoints], torch.Tensor]] = None
    kp_range: float = 1.0                # |keypoint values| bound
    extra: dict = field(default_factory=dict)


def _perturbed(kp_source: Keypoints, b: int, amplitude: float = 0.06) -> Keypoints:
    """``b`` distinct driving sets near ``kp_source`` (shifts and small rotations of the jacobians)."""
    t = torch.arange(b, dtype=torch.float32)[:, None, None]
    k = torch.arange(kp_source.num_kp, dtype=torch.float32)[None, :, None]
    src = kp_source.to("cpu")
    offset = amplitude * torch.cat([torch.sin(0.9 * t + 0.7 * k), torch.cos(1.3 * t - 0.4 * k)], dim=-1)
    angle = 0.08 * (t[..., None] - 1.5)
    rot = torch.cat([torch.cat([angle.cos(), -angle.sin()], -1), torch.cat([angle.sin(), angle.cos()], -1)], -2)
    return Keypoints(src.value + offset, src.jacobian @ rot)


def _fomm_identity(case: Case, enc: SourceEncoding) -> None:
    """FOMM's rest pose: every sparse motion, hence the dense deformation, is the identity grid."""
    fomm = case.renderer
    assert isinstance(enc, FOMMSourceEncoding)
    dm = fomm.generator.dense_motion_network
    with torch.inference_mode():
        motion = dm.motion(enc.source_down, enc.kp_source.as_dict(), enc.kp_source.as_dict())
    h, w = enc.source_down.shape[2:]
    identity = make_coordinate_grid(h, w)[None]
    torch.testing.assert_close(motion["deformation"], identity, rtol=0, atol=1e-6)


def _toy_identity(case: Case, enc: SourceEncoding) -> None:
    """The toy's rest pose: the source itself (its code blocks are flat)."""
    frames = case.renderer.render(enc, enc.kp_source)
    torch.testing.assert_close(frames, case.source, rtol=0, atol=1e-6)


def _fomm_reference(fomm) -> Callable:
    def forward(source, kp_source, kp_driving):
        """The reference ``OcclusionAwareGenerator.forward`` on the (repeated) source."""
        b = len(kp_driving)
        with torch.inference_mode():
            return fomm.generator(source.expand(b, -1, -1, -1), kp_driving=kp_driving.as_dict(),
                                  kp_source={k: v.expand(b, *v.shape[1:]) for k, v in kp_source.as_dict().items()}
                                  )["prediction"]
    return forward


def _smac_reference(smac) -> Callable:
    def forward(source, kp_source, kp_driving):
        """The reference ``net_g(source, estimate_motion_w_kp(kp_source, kp_driving, source))['out']``."""
        x = source * 2 - 1
        with torch.inference_mode():
            dense = smac.motion_estimator.estimate_motion_w_kp(kp_source.as_dict(), kp_driving.as_dict(), x)
            return (smac.generator(x, dense)["out"].clamp(-1, 1) + 1) / 2
    return forward


def _toy_reference(toy: PoseCodeRenderer) -> Callable:
    def paint(source, kp_source, kp_driving):
        """The code drawn block by block (an independent rewrite of the toy's rule)."""
        out = source.repeat(len(kp_driving), 1, 1, 1)
        side = toy.frame_size // 8
        for i, v in enumerate(kp_driving.value.reshape(len(kp_driving), -1).T):
            r, c = divmod(i, 8)
            level = 0.5 + 0.4 * v.clamp(-1, 1)
            out[:, :, r * side:(r + 1) * side, c * side:(c + 1) * side] = level[:, None, None, None]
        return out
    return paint


def _toy_case() -> Case:
    toy = PoseCodeRenderer(frame_size=64, num_kp=10)
    gen = torch.Generator().manual_seed(0)
    pose = Keypoints(torch.rand(1, 10, 2, generator=gen) * 1.6 - 0.8, torch.eye(2).expand(1, 10, 2, 2).clone())
    source = toy.pose_image(pose, background=torch.rand(1, 3, 64, 64, generator=gen))
    other = toy.pose_image(Keypoints(-pose.value, pose.jacobian), background=torch.rand(1, 3, 64, 64, generator=gen))
    return Case(toy, source, other, lambda kp: _perturbed(kp, 3, amplitude=0.15), atol=0.0, identity=_toy_identity,
                reference=_toy_reference(toy))


def _fomm_case() -> Case:
    fomm = load_fomm(DATA / "fomm" / "tiny.yaml", DATA / "fomm" / "tiny-cpk.pth.tar", align_corners=True)
    with np.load(DATA / "fomm" / "parity.npz") as z:
        source = torch.from_numpy(z["source"]).permute(2, 0, 1)[None].float().contiguous()
    other = torch.flip(source, dims=[3]).contiguous()
    return Case(fomm, source, other, lambda kp: _perturbed(kp, 3), atol=1e-5, identity=_fomm_identity,
                reference=_fomm_reference(fomm))


def _smac_case(tmp_path_factory) -> Case:
    config = SMACConfig.from_yaml(DATA / "smac" / "tiny.yml")
    torch.manual_seed(0)
    smac = SMAC.from_config(config)  # the generator's own initialisation; the motion estimator's tiny weights
    path = tmp_path_factory.mktemp("smac_contract") / "me.pth"
    with lzma.open(DATA / "smac" / "net_motion_estimator_tiny.pth.xz") as src, open(path, "wb") as dst:
        shutil.copyfileobj(src, dst)
    smac.motion_estimator.load_state_dict(torch.load(path, weights_only=True)["params"], strict=True)
    with np.load(DATA / "smac" / "parity-cut.npz") as z:
        source = torch.from_numpy(z["inputs/source_uint8"].astype(np.float32) / 255).permute(2, 0, 1)[None]
    other = torch.flip(source, dims=[3]).contiguous()
    # batch invariance: measured 1.07e-5 (one pixel of 196608 over 1e-5; transformer and conv kernels by batch)
    return Case(smac, source.contiguous(), other, lambda kp: _perturbed(kp, 2), atol=5e-5,
                reference=_smac_reference(smac))


@pytest.fixture(scope="module", params=["toy", "fomm", "smac"])
def case(request, tmp_path_factory) -> Case:
    if request.param == "toy":
        return _toy_case()
    if request.param == "fomm":
        return _fomm_case()
    return _smac_case(tmp_path_factory)


@pytest.fixture(scope="module")
def runs(case) -> dict:
    """Every renderer call the checks look at, made once per renderer, in this order."""
    r = case.renderer
    out = {"kp_batch": r.detect(torch.cat([case.source, case.other])),
           "kp_each": [r.detect(case.source), r.detect(case.other)]}
    enc = r.encode_source(case.source)
    kp_driving = case.drive(enc.kp_source)
    out.update(enc=enc, kp_driving=kp_driving,
               whole=r.render(enc, kp_driving),                                          # one batch of b
               parts=[r.render(enc, kp_driving[i:i + 1]) for i in range(len(kp_driving))])  # b batches of 1
    given = r.encode_source(case.source, kp_source=out["kp_each"][0])  # a fresh encoding, keypoints given
    out.update(given=given, fresh=r.render(given, kp_driving[:1]))
    other = r.encode_source(case.other)
    out.update(other_enc=other, other=r.render(other, kp_driving[:1]),
               again=r.render(enc, kp_driving[:1]))  # the first source again, after another one
    if case.reference is not None:  # the other source, so that the first one's encoding cannot stand in
        out["reference"] = case.reference(case.other.to(r.device), other.kp_source, kp_driving[:1])
    return out


def _is_on(t: torch.Tensor, device: torch.device) -> bool:
    return t.device.type == device.type and (device.index is None or t.device.index == device.index)


# ------------------------------------------------------------------------------------------------- detect
def test_is_a_renderer(case):
    assert isinstance(case.renderer, Renderer)
    assert case.source.shape == (1, 3, case.renderer.frame_size, case.renderer.frame_size)


def test_detect_shapes_dtype_range_device(case, runs):
    r, kp = case.renderer, runs["kp_batch"]
    assert isinstance(kp, Keypoints)
    k = kp.num_kp
    assert kp.value.shape == (2, k, 2) and kp.value.dtype == torch.float32 and _is_on(kp.value, r.device)
    assert kp.jacobian is not None and kp.jacobian.shape == (2, k, 2, 2) and kp.jacobian.dtype == torch.float32
    assert torch.isfinite(kp.value).all() and torch.isfinite(kp.jacobian).all()
    assert float(kp.value.abs().max()) <= case.kp_range


def test_detect_is_per_image(case, runs):
    """A batch of images gives each image's own keypoints."""
    both = Keypoints.cat(runs["kp_each"])
    torch.testing.assert_close(runs["kp_batch"].value, both.value, rtol=0, atol=1e-5)
    torch.testing.assert_close(runs["kp_batch"].jacobian, both.jacobian, rtol=0, atol=1e-5)
    assert float((both.value[0] - both.value[1]).abs().max()) > 1e-3  # two images, two poses


# ------------------------------------------------------------------------------------------------- encode
def test_encode_source_holds_the_source_keypoints(case, runs):
    r, enc = case.renderer, runs["enc"]
    assert isinstance(enc, SourceEncoding)
    assert enc.kp_source.value.shape == (1, runs["kp_batch"].num_kp, 2) and _is_on(enc.kp_source.value, r.device)
    torch.testing.assert_close(enc.kp_source.value, runs["kp_each"][0].value, rtol=0, atol=0)  # detected
    assert runs["given"].kp_source.equal(runs["kp_each"][0])  # given: held as given
    assert not runs["other_enc"].kp_source.equal(enc.kp_source)


# ------------------------------------------------------------------------------------------------- render
def test_render_frames(case, runs):
    r = case.renderer
    s = r.frame_size
    frames = [runs["whole"], *runs["parts"], runs["fresh"], runs["other"], runs["again"]]
    assert runs["whole"].shape == (len(runs["kp_driving"]), 3, s, s)
    for f in frames:
        assert f.shape[1:] == (3, s, s) and f.dtype == torch.float32 and _is_on(f, r.device)
        assert torch.isfinite(f).all() and float(f.min()) >= 0.0 and float(f.max()) <= 1.0


def test_render_is_batch_size_invariant(case, runs):
    whole, parts = runs["whole"], runs["parts"]
    for i, part in enumerate(parts):
        torch.testing.assert_close(whole[i:i + 1], part, rtol=0, atol=case.atol, msg=lambda m: f"set {i}: {m}")
    assert float((whole[0] - whole[-1]).abs().max()) > 1e-3  # distinct poses, distinct frames


def test_one_encoding_renders_many_batches(case, runs):
    """Batches rendered from one encoding equal those from a fresh encoding of the same source, also
    after another source was encoded and rendered (the renderer keeps no per-source state)."""
    torch.testing.assert_close(runs["fresh"], runs["parts"][0], rtol=0, atol=case.atol)
    torch.testing.assert_close(runs["again"], runs["parts"][0], rtol=0, atol=0)
    assert float((runs["other"] - runs["parts"][0]).abs().max()) > 1e-2  # the source matters


def test_render_equals_the_model_in_one_piece(case, runs):
    """Encoding once and rendering from the encoding gives the model's own forward pass on the source."""
    torch.testing.assert_close(runs["other"], runs["reference"], rtol=0, atol=max(case.atol, 1e-5))


def test_render_at_the_rest_pose(case, runs):
    if case.identity is None:
        pytest.skip(f"{type(case.renderer).__name__} promises nothing at kp_driving == kp_source")
    case.identity(case, runs["enc"])


def test_bad_calls_are_refused(case, runs):
    r, enc, kp = case.renderer, runs["enc"], runs["kp_driving"]
    with pytest.raises(ValueError, match="encode_source"):
        r.render(case.source, kp)  # the old render(source, kp_source, kp_driving) way round
    foreign = SourceImage(kp_source=enc.kp_source, source=case.source) if not isinstance(enc, SourceImage) else \
        SourceEncoding(kp_source=enc.kp_source)
    with pytest.raises(ValueError, match=type(enc).__name__):
        r.render(foreign, kp)
    with pytest.raises(ValueError, match="one source image"):
        r.encode_source(torch.cat([case.source, case.other]))
    with pytest.raises(ValueError, match="Keypoints"):
        r.render(enc, kp.as_dict())
    with pytest.raises(ValueError, match=f"\\(B, {kp.num_kp}, 2\\)"):
        r.render(enc, Keypoints(kp.value[:, :-1], kp.jacobian[:, :-1]))


# ------------------------------------------------------------------------------------------------- the toy
def test_pose_code_survives_h264(tmp_path):
    """The toy's frames, written as H.264 (yuv420p, crf 18, our default) and decoded, still tell which
    keypoints drove them: every value back within 0.07 (mean 0.02; measured 0.032, 0.0087), each frame's
    pose found among the 24."""
    from talkhead.ffmpeg import read_frames
    from talkhead.video import VideoWriter

    toy = PoseCodeRenderer(frame_size=64, num_kp=10)
    gen = torch.Generator().manual_seed(1)
    enc = toy.encode_source(torch.rand(1, 3, 64, 64, generator=gen))  # noise around the code blocks
    t = 24
    poses = Keypoints(torch.rand(t, 10, 2, generator=gen) * 1.8 - 0.9, torch.eye(2).expand(t, 10, 2, 2).clone())
    order = torch.randperm(t, generator=gen)
    frames = toy.render(enc, poses[order])
    path = tmp_path / "code.mp4"
    with VideoWriter(path, size=(64, 64), crf=18) as writer:
        writer.write(frames.permute(0, 2, 3, 1))
    _, decoded = read_frames(path, "null")
    decoded = np.stack(list(decoded))
    assert decoded.shape == (t, 64, 64, 3)
    err = (toy.decode(decoded) - poses.value[order]).abs()
    assert float(err.max()) < 0.07 and float(err.mean()) < 0.02, (float(err.max()), float(err.mean()))
    assert torch.equal(toy.nearest(decoded, poses), order)
