"""talkhead.compose (full-frame paste-back) and fomm_crop(pad=True), on the real astronaut photo.

Crops are built from a fixed face box (the dlib face extent of ``skimage.data.astronaut()``,
``(175, 76, 273, 179)``: FOMM square ``(162, 66, 286, 190)``), so no landmark model is needed.
Stand-in renderers: identity (the source crop), shifting (the crop content moved by a few crop
pixels), colour drift (+0.1 on the red channel). Seam figures are :func:`seam_metrics`'s:
``gradient_ratio`` (largest ring-wise ratio of the gradient across the crop edge, output / photo)
and ``tint`` (colour step at the band's inner edge, 8-bit levels).
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data

from helpers import psnr
from talkhead import crop as C
from talkhead.compose import Compositor, seam_metrics
from talkhead.landmarks import Face

ASTRO = skimage.data.astronaut()
EXTENT = (175.0, 76.0, 273.0, 179.0)
S = 256


def _face(extent) -> Face:
    x0, y0, x1, y1 = extent
    pts = np.stack(np.meshgrid(np.linspace(x0 + 2, x1 - 3, 17), np.linspace(y0 + 2, y1 - 3, 4)), -1)
    return Face(box=tuple(map(float, extent)), score=2.0, landmarks=pts.reshape(-1, 2)[:68].astype(np.float32),
                  backend="dlib")


# photos where the face touches each image edge, with the face extent in that photo's pixels
EDGE_CASES = {
    "interior": (ASTRO, EXTENT),
    "left": (ASTRO[:, 175:], (0.0, 76.0, 98.0, 179.0)),
    "top": (ASTRO[76:], (175.0, 0.0, 273.0, 103.0)),
    "right": (ASTRO[:, :273], EXTENT),
    "bottom": (ASTRO[:179], EXTENT),
}


def _case(name):
    img, extent = EDGE_CASES[name]
    img = np.ascontiguousarray(img)
    return img, C.fomm_crop(img, _face(extent), S, pad=True)


def _shift(crop: np.ndarray, dx: float, dy: float = 0.0) -> np.ndarray:
    M = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(crop, M, (crop.shape[1], crop.shape[0]), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REFLECT)


def _drift(crop: np.ndarray) -> np.ndarray:
    return np.clip(crop + np.float32([0.1, 0.0, 0.0]), 0.0, 1.0).astype(np.float32)


@pytest.fixture(scope="module")
def astro():
    img, fc = _case("interior")
    return img, fc, Compositor(img, fc)


# ============================================================================== fomm_crop(pad=True)
def test_reflect_indices_match_opencv():
    img = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    pad = 12                                                    # more than the image is wide/high
    ref = cv2.copyMakeBorder(img, pad, pad, pad, pad, cv2.BORDER_REFLECT)
    rows, cols = C._reflect_indices(-pad, 5 + pad, 5), C._reflect_indices(-pad, 7 + pad, 7)
    np.testing.assert_array_equal(img[rows[:, None], cols[None, :]], ref)


@pytest.mark.parametrize("edge", ["left", "top", "right", "bottom"])
def test_padded_crop_square_centred_and_mirrored(edge):
    img, fc = _case(edge)
    h, w = img.shape[:2]
    x0, y0, x1, y1 = fc.box
    ex0, ey0, ex1, ey1 = EDGE_CASES[edge][1]
    assert x1 - x0 == y1 - y0 == 124                             # FOMM's size, not shrunk
    assert abs((x0 + x1) / 2 - (ex0 + ex1) / 2) <= 1 and abs((y0 + y1) / 2 - (ey0 + ey1) / 2) <= 1
    assert x0 < 0 or y0 < 0 or x1 > w or y1 > h                  # it really leaves the image
    # the crop is the reflect-padded photo's square, resized as FOMM's demo.py does
    p = 200
    padded = cv2.copyMakeBorder(img, p, p, p, p, cv2.BORDER_REFLECT)
    want = C._crop_resize(padded, (x0 + p, y0 + p, x1 + p, y1 + p), S).crop
    np.testing.assert_array_equal(fc.crop, want)
    # affine: crop corners -> the (partly outside) box corners
    np.testing.assert_allclose(fc.affine @ [-0.5, -0.5, 1.0], (x0 - 0.5, y0 - 0.5), atol=1e-9)
    np.testing.assert_allclose(fc.affine @ [S - 0.5, S - 0.5, 1.0], (x1 - 0.5, y1 - 0.5), atol=1e-9)
    # the default (pad=False) still shifts the square inside the image
    inside = C.fomm_crop(img, _face(EDGE_CASES[edge][1]), S)
    assert 0 <= inside.box[0] and 0 <= inside.box[1] and inside.box[2] <= w and inside.box[3] <= h


def test_padded_crop_inside_image_is_the_plain_crop():
    a = C.fomm_crop(ASTRO, _face(EXTENT), S, pad=True)
    b = C.fomm_crop(ASTRO, _face(EXTENT), S)
    assert a.box == b.box == (162, 66, 286, 190)
    np.testing.assert_array_equal(a.crop, b.crop)


# ============================================================================== paste-back
@pytest.mark.parametrize("edge", list(EDGE_CASES))
def test_identity_renderer_gives_back_the_photo(edge):
    img, fc = _case(edge)
    comp = Compositor(img, fc)
    out = comp.paste(fc.crop[None])
    assert out.shape == (1,) + img.shape and out.dtype == np.uint8
    assert psnr(out[0], img) >= 40.0
    x0, y0, x1, y1 = comp.region
    assert (x0, y0) >= (0, 0) and x1 <= img.shape[1] and y1 <= img.shape[0]
    assert psnr(out[0, y0:y1, x0:x1], img[y0:y1, x0:x1]) >= 38.0   # the face region itself
    # pixels outside the region are the photo's, exactly
    outside = np.ones(img.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    np.testing.assert_array_equal(out[0][outside], img[outside])


def test_far_pixels_untouched_and_buffer_reused(astro):
    img, fc, comp = astro
    buf = comp.new_buffer(2)
    frames = np.stack([_drift(_shift(fc.crop, 6)), _drift(fc.crop)])
    out = comp.paste(frames, out=buf)
    assert out is buf
    x0, y0, x1, y1 = comp.region
    assert comp.region == (162, 66, 286, 190)
    for f in out:
        np.testing.assert_array_equal(f[:y0], img[:y0])
        np.testing.assert_array_equal(f[y1:], img[y1:])
        np.testing.assert_array_equal(f[:, :x0], img[:, :x0])
        np.testing.assert_array_equal(f[:, x1:], img[:, x1:])
    # the same buffer again, other frames: only the region changes, and it matches a fresh paste
    again = comp.paste(fc.crop[None].repeat(2, 0), out=buf)
    np.testing.assert_array_equal(again, comp.paste(fc.crop[None].repeat(2, 0)))


def test_shifting_renderer_moves_the_face(astro):
    img, fc, comp = astro
    px_per_crop_px = 124 / S
    x0, y0, x1, y1 = comp.region
    cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
    centre = (slice(cy - 25, cy + 25), slice(cx - 25, cx + 25))
    for k, dx in enumerate([4.0, 8.0, 12.0]):                    # crop pixels per frame
        out = comp.paste(_shift(fc.crop, dx)[None])[0]
        moved = cv2.warpAffine(img, np.float32([[1, 0, dx * px_per_crop_px], [0, 1, 0]]), img.shape[1::-1])
        err_moved = np.abs(out[centre].astype(float) - moved[centre]).mean()
        err_still = np.abs(out[centre].astype(float) - img[centre]).mean()
        assert err_moved < 4.0 and err_still > 2 * err_moved, (dx, err_moved, err_still)
        # no rectangle edge: across the seam no more gradient than the photo has there
        m = seam_metrics(out, img, comp, _shift(fc.crop, dx))
        assert m["gradient_ratio"] <= 1.02, (dx, m)
    # the metric does see a hard rectangle edge (the same frame pasted with a 1-px band)
    hard = Compositor(img, fc, feather=0.004, colour="none")
    frame = _shift(fc.crop, 12.0)
    assert seam_metrics(hard.paste(frame[None])[0], img, hard, frame)["gradient_ratio"] > 1.15


def test_colour_drift_shows_no_rectangle(astro):
    img, fc, comp = astro
    out = comp.paste(_drift(fc.crop)[None])[0]
    m = seam_metrics(out, img, comp, _drift(fc.crop))
    assert m["gradient_ratio"] <= 1.02 and m["tint"] < 1.5, m
    # the drift is removed in the face too (the correction field reaches the crop centre)
    x0, y0, x1, y1 = comp.region
    cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
    centre = (slice(cy - 20, cy + 20), slice(cx - 20, cx + 20))
    assert np.abs((out[centre].astype(float) - img[centre]).mean(axis=(0, 1))).max() < 2.0
    # without colour matching the same frame shows a tinted square; pasted hard, a sharp edge
    plain = Compositor(img, fc, colour="none")
    assert seam_metrics(plain.paste(_drift(fc.crop)[None])[0], img, plain)["tint"] > 20
    hard = Compositor(img, fc, feather=0.004, colour="none")
    assert seam_metrics(hard.paste(_drift(fc.crop)[None])[0], img, hard, _drift(fc.crop))["gradient_ratio"] > 1.5


@pytest.mark.parametrize("colour", ["lowfreq", "mean"])
def test_colour_matching_leaves_a_moving_head_alone(astro, colour):
    """Head motion in the band must not be mistaken for colour drift (the face keeps its colour),
    and drift on top of motion is still removed."""
    img, fc, _ = astro
    comp = Compositor(img, fc, colour=colour)
    moved = _shift(fc.crop, 8.0, 4.0)
    shifted_photo = cv2.warpAffine(img, np.float32([[1, 0, 8 * 124 / S], [0, 1, 4 * 124 / S]]), img.shape[1::-1])
    x0, y0, x1, y1 = comp.region
    cy, cx = (y0 + y1) // 2, (x0 + x1) // 2
    centre = (slice(cy - 20, cy + 20), slice(cx - 20, cx + 20))
    for frame in (moved, _drift(moved)):
        out = comp.paste(frame[None])[0]
        offset = (out[centre].astype(float) - shifted_photo[centre]).mean(axis=(0, 1))
        assert np.abs(offset).max() < 2.0, offset
    tint_move = seam_metrics(comp.paste(moved[None])[0], img, comp)["tint"]
    tint_both = seam_metrics(comp.paste(_drift(moved)[None])[0], img, comp)["tint"]
    assert tint_both < tint_move + 1.0


def test_lowfreq_follows_a_spatially_varying_drift(astro):
    """A left-right colour ramp (-0.1 .. +0.1 on red and green): one offset cannot match both sides
    of the band; the low-frequency field can."""
    img, fc, _ = astro
    ramp = np.linspace(-0.1, 0.1, S, dtype=np.float32)[None, :, None] * np.float32([1, 1, 0])
    frame = np.clip(fc.crop + ramp, 0, 1).astype(np.float32)
    tints = {}
    for colour in ("lowfreq", "mean", "none"):
        comp = Compositor(img, fc, colour=colour)
        tints[colour] = seam_metrics(comp.paste(frame[None])[0], img, comp, frame)["tint"]
    assert tints["none"] > 15 and tints["mean"] > 15, tints
    assert tints["lowfreq"] < 0.5 * tints["mean"], tints


@pytest.mark.parametrize("edge", ["left", "top", "right", "bottom"])
def test_border_faces_drift_and_motion(edge):
    img, fc = _case(edge)
    comp = Compositor(img, fc)
    frame = _drift(_shift(fc.crop, 6.0))
    out = comp.paste(frame[None])[0]
    m = seam_metrics(out, img, comp, frame)
    assert m["gradient_ratio"] <= 1.02, m
    x0, y0, x1, y1 = comp.region
    outside = np.ones(img.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    np.testing.assert_array_equal(out[outside], img[outside])


def test_resize_fast_path_equals_warp(astro):
    """FOMM's axis-aligned crops are pasted with cv2.resize; it must land where warpAffine does."""
    img, fc, comp = astro
    assert comp._resize_to is not None
    frame = _drift(_shift(fc.crop, 5.0, 3.0))
    fast = comp.paste(frame[None])[0]
    comp_warp = Compositor(img, fc)
    comp_warp._resize_to = None
    slow = comp_warp.paste(frame[None])[0]
    assert np.abs(fast.astype(int) - slow).max() <= 1


def test_rotated_crop_general_warp():
    """Any crop -> photo affine works (warpAffine path, whole-region blend): a crop rotated 20 deg."""
    img = ASTRO
    th, sc = np.deg2rad(20.0), 124 / S
    c, s = sc * np.cos(th), sc * np.sin(th)
    centre = np.array([224.0, 128.0])
    A = np.array([[c, -s, 0.0], [s, c, 0.0]])
    A[:, 2] = centre - A[:, :2] @ [(S - 1) / 2, (S - 1) / 2]
    crop = cv2.warpAffine(img, A, (S, S), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                          borderMode=cv2.BORDER_REFLECT).astype(np.float32) / 255
    fc = C.FaceCrop(box=(162, 66, 286, 190), crop=crop, affine=A)
    comp = Compositor(img, fc)
    assert comp._resize_to is None and comp._interior is None
    out = comp.paste(crop[None])[0]
    assert psnr(out, img) >= 40.0
    x0, y0, x1, y1 = comp.region
    assert x1 - x0 > 124 and y1 - y0 > 124                      # the rotated square's bounding box
    np.testing.assert_array_equal(out[:y0], img[:y0])
    frame = _drift(crop)
    m = seam_metrics(comp.paste(frame[None])[0], img, comp, frame)
    assert m["gradient_ratio"] <= 1.02 and m["tint"] < 1.5, m


def test_uint8_frames(astro):
    img, fc, comp = astro
    f = _drift(_shift(fc.crop, 6.0))
    a = comp.paste(f[None])[0].astype(int)
    b = comp.paste(np.rint(f * 255).astype(np.uint8)[None])[0].astype(int)
    assert np.abs(a - b).max() <= 2


def test_bad_inputs(astro):
    img, fc, comp = astro
    with pytest.raises(ValueError, match="rendered frames"):
        comp.paste(np.zeros((1, 64, 64, 3), np.float32))
    with pytest.raises(ValueError, match="out holds"):
        comp.paste(fc.crop[None], out=comp.new_buffer(2))
    with pytest.raises(ValueError, match="colour"):
        Compositor(img, fc, colour="poisson")
    with pytest.raises(ValueError, match="photo"):
        Compositor(img.astype(np.float32), fc)
    far = C._crop_resize(np.zeros((600, 600, 3), np.uint8), (550, 550, 600, 600), 32)
    with pytest.raises(ValueError, match="does not overlap"):
        Compositor(np.zeros((100, 100, 3), np.uint8), far)
