"""The restore stage (talkhead.restore) inside the one pipeline: exact inverse warps (an identity
restorer changes nothing beyond resampling error), the face pasted at 2 S, no per-frame noise, the
alignment moving exactly as the head transform, colour kept; with injected restorers and renderers."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import ASTRONAUT, psnr
from talkhead.keypoints import Keypoints, fit_head_motion
from talkhead.landmarks import Face
from talkhead.options import AnimateOptions
from talkhead.pipeline import Pipeline
from talkhead.restore import identity_restorer
from toy_renderer import SourceImageRenderer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

KP0 = torch.tensor([[-0.5, -0.4], [0.5, -0.4], [0.0, 0.0], [-0.4, 0.5], [0.4, 0.5],
                    [-0.2, -0.6], [0.2, -0.6], [0.0, 0.3], [-0.6, 0.1], [0.6, 0.1]])[None]


class ShiftRenderer(SourceImageRenderer):
    """The source crop translated by the driving keypoints' mean displacement (keypoint units -> pixels
    with FOMM's grid, ``(S - 1) / 2`` px per unit), by torch's own ``affine_grid``; fixed spread keypoints."""

    def __init__(self, frame_size: int = 64):
        super().__init__()
        self.frame_size = frame_size

    def detect(self, source):
        return Keypoints(KP0.expand(len(source), -1, -1).clone(), torch.eye(2).expand(len(source), 10, 2, 2).clone())

    def frames(self, source, kp_source, kp_driving):
        d = (kp_driving.value - kp_source.value).mean(1)                      # (b, 2) keypoint units
        S = self.frame_size
        theta = torch.zeros(len(d), 2, 3)
        theta[:, 0, 0] = theta[:, 1, 1] = 1.0
        theta[:, :, 2] = -d * (S - 1) / S                                      # align_corners=False units
        grid = F.affine_grid(theta, (len(d), 3, S, S), align_corners=False)
        return F.grid_sample(source.expand(len(d), -1, -1, -1), grid, padding_mode="border", align_corners=False)


def shifting_motion(steps):
    """A motion generator: the source keypoints translated by ``steps`` (list of (dx, dy), keypoint units)."""
    def motion(kp_source, logfbank, progress=None):
        shift = torch.tensor(steps, dtype=torch.float32)[:, None]
        return Keypoints(kp_source.value + shift, kp_source.jacobian.expand(len(steps), -1, -1, -1).clone())
    return motion


@pytest.fixture(scope="module")
def photos(tmp_path_factory, astro_face):
    """Photo files and landmarkers: the astronaut at 2x (face box ~240 px), and the same cut so the face
    touches the image's left border."""
    import cv2
    import imageio.v3 as iio

    d = tmp_path_factory.mktemp("photos")
    img = iio.imread(ASTRONAUT)[..., :3]
    big = cv2.resize(img, (1024, 1024), interpolation=cv2.INTER_CUBIC)
    out = {}
    for name, image, scale, dx in (("big", big, 2.0, 0), ("border", img[:, 200:], 1.0, 200)):
        path = d / f"{name}.png"
        iio.imwrite(path, image)
        face = Face(box=tuple((np.asarray(astro_face.box) - [dx, 0, dx, 0]) * scale), score=0.99,
                    landmarks=(astro_face.landmarks - [dx, 0]) * scale, backend="dlib")
        out[name] = (path, lambda image, face=face: [face])
    return out


S = 128
"""The stand-in renderer's side (FOMM's is 256; at 64 the detail per pixel makes the 2 S paste's own
resampling differ from the plain path's by more than the restore stage's round trip)."""


def render(photo, landmarker, *, restorer=None, steps=((0.0, 0.0),), frame="full", strength=1.0):
    enhance = "gfpgan" if restorer is not None else "none"
    options = AnimateOptions(enhance=enhance, enhance_strength=strength, frame=frame)
    p = Pipeline(options, renderer=ShiftRenderer(S), motion=shifting_motion(steps), landmarker=landmarker,
                 restorer=restorer)
    sp = p.prepare_photo(photo)
    source = p.source_tensor(sp.crop.crop)
    kp_source = p.detect_source(source)
    stage = p.restore_stage(sp, kp_source)
    side = stage.out_size if stage else S
    writer = CopyWriter()
    kp = p.motion(kp_source, np.zeros((40, 26)))
    p.render_into(writer, source, kp_source, [kp[i:i + 1] for i in range(len(kp))], len(kp),
                  compositor=p.compositor(sp, side), restore=stage)
    comp = p.compositor(sp)
    return np.stack(writer.frames), (comp.region if comp else None), stage


class CopyWriter:
    """Keeps a copy of every frame written (the pipeline reuses its paste buffer)."""

    def __init__(self):
        self.frames = []

    def write(self, frames):
        self.frames.extend(np.array(frames))


STEPS = [(0.0, 0.0), (0.06, -0.03), (-0.05, 0.04), (0.1, 0.08)]


@pytest.mark.parametrize("name", ["big", "border"])
def test_identity_restorer_changes_nothing_but_resampling(photos, name):
    """Alignment and warp back are exact inverses: the identity restorer's output equals the plain
    output within resampling error over the face (PSNR >= 40 dB), while the head moves and at the border."""
    photo, lm = photos[name]
    plain, (x0, y0, x1, y1), _ = render(photo, lm, steps=STEPS)
    enhanced, _, stage = render(photo, lm, restorer=identity_restorer(256), steps=STEPS)
    assert enhanced.shape == plain.shape
    for t in range(len(STEPS)):
        assert psnr(enhanced[t, y0:y1, x0:x1], plain[t, y0:y1, x0:x1]) >= 40.0, t
    assert np.array_equal(np.delete(enhanced, np.s_[y0:y1], axis=1), np.delete(plain, np.s_[y0:y1], axis=1))


def test_identity_restorer_on_the_crop_frame(photos):
    """``--frame crop --enhance``: 2 S crops, equal to the render upscaled within resampling error."""
    photo, lm = photos["big"]
    plain, _, _ = render(photo, lm, steps=STEPS, frame="crop")
    enhanced, _, _ = render(photo, lm, restorer=identity_restorer(256), steps=STEPS, frame="crop")
    assert plain.shape[1:] == (S, S, 3) and enhanced.shape[1:] == (2 * S, 2 * S, 3)
    up = F.interpolate(torch.from_numpy(plain).permute(0, 3, 1, 2).float(), scale_factor=2, mode="bicubic",
                       align_corners=False).permute(0, 2, 3, 1).numpy()
    assert psnr(enhanced.astype(np.float64), up, peak=255.0) >= 38.0


class PatternRestorer:
    """Adds a fine checkerboard (period 4 aligned pixels, +-0.08) to the face."""

    face_size = 256

    def __call__(self, faces):
        yy, xx = torch.meshgrid(torch.arange(256), torch.arange(256), indexing="ij")
        pattern = torch.where(((yy // 2) + (xx // 2)) % 2 == 0, 0.08, -0.08)
        return (faces + pattern).clamp(0, 1)


def _hf_energy(img):
    """Mean squared Laplacian of the grey image (fine detail energy)."""
    import cv2

    g = img.astype(np.float32).mean(axis=2)
    return float((cv2.Laplacian(g, cv2.CV_32F) ** 2).mean())


def test_fine_pattern_reaches_the_photo_at_the_face_resolution(photos):
    """The restored face is pasted from 2 S: a fine pattern added by the restorer shows in the full photo
    with far more high-frequency energy than the same face after a round trip through the render's S."""
    import cv2

    from talkhead.compose import Compositor

    photo, lm = photos["big"]
    plain, (x0, y0, x1, y1), _ = render(photo, lm)
    pattern, _, _ = render(photo, lm, restorer=PatternRestorer())
    crops, _, _ = render(photo, lm, restorer=PatternRestorer(), frame="crop")
    p = Pipeline(AnimateOptions(), renderer=ShiftRenderer(S), motion=shifting_motion([(0, 0)]), landmarker=lm)
    sp = p.prepare_photo(photo)
    small = cv2.resize(crops[0], (S, S), interpolation=cv2.INTER_AREA)          # the 2S face through S
    round_trip = Compositor(sp.image, sp.crop).paste(small[None].astype(np.float32) / 255.0)[0]
    cx0, cy0, cx1, cy1 = x0 + (x1 - x0) // 4, y0 + (y1 - y0) // 4, x1 - (x1 - x0) // 4, y1 - (y1 - y0) // 4
    face = np.s_[cy0:cy1, cx0:cx1]
    e_full, e_trip, e_plain = _hf_energy(pattern[0][face]), _hf_energy(round_trip[face]), _hf_energy(plain[0][face])
    assert e_full > 3 * e_trip and e_full > 3 * e_plain, (e_full, e_trip, e_plain)


def test_identical_frames_give_bit_identical_restored_frames(photos):
    """No per-frame noise: a still head gives the same restored frame every time (tiny GFPGAN, its stored
    noise), and the stage called twice on a batch gives the same bytes."""
    from talkhead.gfpgan import GFPGANConfig, GFPGANRestorer, GFPGANv1Clean

    from talkhead.gfpgan.model import StyleConv

    torch.manual_seed(0)
    net = GFPGANv1Clean(GFPGANConfig(out_size=64, num_style_feat=32, narrow=1 / 16)).eval()
    for m in net.modules():
        if isinstance(m, StyleConv):
            m.weight.data.fill_(0.1)   # noise strengths of a trained model are not 0 (the init's value)
    restorer = GFPGANRestorer(net)
    photo, lm = photos["big"]
    frames, _, stage = render(photo, lm, restorer=restorer, steps=[(0.0, 0.0)] * 3, strength=0.8)
    assert np.array_equal(frames[0], frames[1]) and np.array_equal(frames[0], frames[2])
    batch = torch.rand(2, 3, S, S)
    kp = Keypoints(KP0.expand(2, -1, -1).clone(), None)
    assert torch.equal(stage(batch, kp), stage(batch, kp))


def test_alignment_moves_exactly_as_the_head_transform(photos):
    """M_t = M0 o H_t^-1: the alignment's change from frame to frame is the head transform's, in crop pixels
    (no detector noise): a translation d of the keypoints moves the aligned face's origin by -A0 d px."""
    photo, lm = photos["big"]
    _, _, stage = render(photo, lm, restorer=identity_restorer(256), steps=STEPS)
    steps = torch.tensor(STEPS)
    kp = Keypoints(KP0 + steps[:, None], None)
    M = stage.alignments(kp).numpy()
    A0, b0 = stage.to_aligned[:, :2], stage.to_aligned[:, 2]
    d_px = steps.double().numpy() * (S - 1) / 2
    np.testing.assert_allclose(M[:, :, :2], np.broadcast_to(A0, (len(STEPS), 2, 2)), atol=1e-5)
    np.testing.assert_allclose(M[:, :, 2], b0 - d_px @ A0.T, atol=1e-4)
    # a rotated and scaled head: the same fit as --motion-scale's (talkhead.keypoints.fit_head_motion)
    ang, s = 0.1, 1.05
    R = torch.tensor([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]], dtype=torch.float32) * s
    kp_rot = Keypoints(KP0 @ R.T, None)
    motion = fit_head_motion(kp_rot, Keypoints(KP0, None))
    assert float(motion.angle[0]) == pytest.approx(ang, abs=1e-5)
    H = stage.head_transforms(kp_rot)[0].numpy()
    u = np.array([10.0, 40.0])
    Hu = H[:, :2] @ u + H[:, 2]
    Mt = stage.alignments(kp_rot)[0].numpy()
    np.testing.assert_allclose(Mt[:, :2] @ Hu + Mt[:, 2], A0 @ u + b0, atol=1e-4)


class WhiteningRestorer:
    """Returns the face brighter by 0.15 everywhere (the 'whiter than the neck' failure)."""

    face_size = 256

    def __call__(self, faces):
        return (faces + 0.15).clamp(0, 1)


def test_colour_is_matched_in_the_band(photos):
    """A whitening restorer does not whiten the face: the restored face keeps the render's colour (mean
    within 2 levels at the face centre in the photo; the stage alone within 0.005 on a flat face); the
    stage without colour matching adds the restorer's +0.15 (x strength)."""
    photo, lm = photos["big"]
    plain, (x0, y0, x1, y1), stage = render(photo, lm)
    white, _, stage = render(photo, lm, restorer=WhiteningRestorer())
    c = np.s_[y0 + (y1 - y0) // 3: y1 - (y1 - y0) // 3, x0 + (x1 - x0) // 3: x1 - (x1 - x0) // 3]
    assert abs(float(white[0][c].astype(float).mean() - plain[0][c].astype(float).mean())) < 2.0
    batch = torch.full((1, 3, S, S), 0.4)
    kp = Keypoints(KP0.clone(), None)
    assert float(stage(batch, kp)[0, :, S, S].mean()) == pytest.approx(0.4, abs=0.005)   # the stage alone
    stage.colour = False
    assert float(stage(batch, kp)[0, :, S, S].mean()) == pytest.approx(0.55, abs=0.005)
    stage.strength = 0.5   # the blend: half the restored face
    assert float(stage(batch, kp)[0, :, S, S].mean()) == pytest.approx(0.475, abs=0.005)


def test_strength_zero_is_the_upscaled_render(photos):
    photo, lm = photos["big"]
    _, _, stage = render(photo, lm, restorer=WhiteningRestorer(), strength=0.0)
    batch = torch.rand(1, 3, S, S)
    up = F.interpolate(batch, scale_factor=2, mode="bicubic", align_corners=False)
    calls = []
    inner = stage.restorer
    stage.restorer = lambda faces: calls.append(faces.shape) or inner(faces)
    assert torch.equal(stage(batch, Keypoints(KP0.clone(), None)), up.clamp(0, 1))
    assert calls == []  # nothing of the restored face is kept, so the restorer does not run
