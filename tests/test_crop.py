"""talkhead.crop: FOMM's face-crop rule (square box, affine, resize) and ``--crop none``.

Real-photo tests use ``skimage.data.astronaut()`` (512x512 NASA portrait, one face in rows ~20-200,
cols ~140-320), its face found by the dlib backend. The padded (``pad=True``) crop is tested with the
paste-back in ``test_compose.py``.
"""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data

from talkhead import crop as C
from talkhead.landmarks import Face

ASTRO = skimage.data.astronaut()


@pytest.mark.parametrize("size", [64, 256])
def test_fomm_crop_on_astronaut(astro_face, size):
    c = C.fomm_crop(ASTRO, astro_face, size)
    x0, y0, x1, y1 = c.box
    assert all(isinstance(v, int) for v in c.box)
    assert x1 - x0 == y1 - y0 and 0 <= x0 and 0 <= y0 and x1 <= 512 and y1 <= 512
    assert c.crop.shape == (size, size, 3) and c.crop.dtype == np.float32 and c.size == size
    assert 0.0 <= c.crop.min() and c.crop.max() <= 1.0
    # contains the whole face: detector box and every landmark
    fx0, fy0, fx1, fy1 = astro_face.box
    assert x0 <= fx0 and y0 <= fy0 and fx1 <= x1 and fy1 <= y1
    lm = astro_face.landmarks
    assert (lm >= (x0, y0)).all() and (lm < (x1, y1)).all()
    # FOMM rule: side = 1.2 x the longer side of the face extent, centred on it
    ex0, ey0, ex1, ey1 = C.face_extent(astro_face)
    assert abs((x1 - x0) - 1.2 * max(ex1 - ex0, ey1 - ey0)) <= 1
    assert abs((x0 + x1) / 2 - (ex0 + ex1) / 2) <= 1 and abs((y0 + y1) / 2 - (ey0 + ey1) / 2) <= 1
    # affine: crop pixel -> image pixel; outer crop corners land on the box's outer corners
    A = c.affine
    assert A.shape == (2, 3) and A.dtype == np.float64
    corner = lambda u, v: A @ np.array([u, v, 1.0])
    np.testing.assert_allclose(corner(-0.5, -0.5), (x0 - 0.5, y0 - 0.5), atol=1e-9)
    np.testing.assert_allclose(corner(size - 0.5, size - 0.5), (x1 - 0.5, y1 - 0.5), atol=1e-9)
    np.testing.assert_allclose(corner(size - 0.5, -0.5), (x1 - 0.5, y0 - 0.5), atol=1e-9)
    # the crop's content really is that region: resample it back and compare
    region = ASTRO[y0:y1, x0:x1].astype(np.float32) / 255
    back = cv2.warpAffine(c.crop, A, (512, 512), flags=cv2.INTER_LINEAR)[y0 + 2:y1 - 2, x0 + 2:x1 - 2]
    tol = 0.03 if size == 256 else 0.06
    assert np.abs(back - region[2:-2, 2:-2]).mean() < tol
    # ... and not some other region
    shifted = ASTRO[y0 + 20:y1 + 20, x0:x1].astype(np.float32) / 255
    assert np.abs(back - shifted[2:-2, 2:-2]).mean() > 2 * tol


def test_fomm_square_box_matches_compute_bbox_and_stays_inside():
    # interior: the same square as FOMM's compute_bbox (int() truncation: within 1 px)
    left, top, right, bot = 200.0, 150.0, 280.0, 250.0
    w, h, inc = right - left, bot - top, 0.1
    wi = max(inc, ((1 + 2 * inc) * h - w) / (2 * w))
    hi = max(inc, ((1 + 2 * inc) * w - h) / (2 * h))
    ref = (int(left - wi * w), int(top - hi * h), int(right + wi * w), int(bot + hi * h))
    box = C.fomm_square_box((left, top, right, bot), (600, 800))
    assert box[2] - box[0] == box[3] - box[1] == 120
    assert np.abs(np.subtract(box, ref)).max() <= 1
    # near the top-left corner: shifted inside, same size, no stretch
    box = C.fomm_square_box((5, 3, 85, 103), (400, 300))
    assert box[0] == 0 and box[1] == 0 and box[2] - box[0] == box[3] - box[1] == 120
    # near the bottom-right corner
    box = C.fomm_square_box((250, 350, 298, 398), (400, 300))
    assert box[2] == 300 and box[3] == 400 and box[2] - box[0] == box[3] - box[1]
    # face fills a wide image: shrunk to its height
    box = C.fomm_square_box((100, 10, 280, 190), (200, 500))
    assert box[1] == 0 and box[3] == 200 and box[2] - box[0] == 200 and 0 <= box[0] and box[2] <= 500


def test_fomm_crop_face_at_border_is_square():
    img = np.ascontiguousarray(ASTRO[60:, 150:])            # face touches the top-left corner
    face = Face(box=(25.0, 16.0, 116.0, 107.0), score=1.2,
                  landmarks=np.full((68, 2), 60.0, np.float32), backend="dlib")
    c = C.fomm_crop(img, face, 32)
    x0, y0, x1, y1 = c.box
    assert x1 - x0 == y1 - y0 and x0 >= 0 and y0 >= 0 and c.crop.shape == (32, 32, 3)


def test_no_crop_matches_fixture_source(fomm_parity):
    """``--crop none`` resizes like FOMM demo.py; the fixtures' source is exactly that resize."""
    c = C.no_crop(np.ascontiguousarray(ASTRO[0:220, 115:335]), 64)
    assert c.box == (0, 0, 220, 220) and c.crop.shape == (64, 64, 3)
    np.testing.assert_array_equal(np.rint(c.crop * 255).astype(np.uint8), fomm_parity["source_uint8"])
    assert np.abs(c.crop - fomm_parity["source"]).max() <= 0.5 / 255 + 1e-6
    # non-square image: stretched; the affine carries both scales
    wide = C.no_crop(np.zeros((100, 300, 3), np.uint8), 50)
    np.testing.assert_allclose(wide.affine @ [49.5, 49.5, 1.0], (299.5, 99.5))
    assert wide.box == (0, 0, 300, 100)


@pytest.mark.parametrize("kind", ["uint8", "rgba", "float64", "float32", "float16", "out_of_range", "padded"])
def test_frame_sized_crop_equals_skimage_resize(kind):
    """A crop already at the frame size skips ``skimage.transform.resize`` (scipy.ndimage): same values."""
    from skimage.transform import resize

    rng = np.random.default_rng(1)
    img = {"uint8": lambda: rng.integers(0, 256, (40, 40, 3), dtype=np.uint8),
           "rgba": lambda: rng.integers(0, 256, (40, 40, 4), dtype=np.uint8),
           "float64": lambda: rng.random((40, 40, 3)),
           "float32": lambda: rng.random((40, 40, 3)).astype(np.float32),
           "float16": lambda: rng.random((40, 40, 3)).astype(np.float16),
           "out_of_range": lambda: rng.random((40, 40, 3)) * 1.4 - 0.2,
           "padded": lambda: rng.integers(0, 256, (30, 36, 3), dtype=np.uint8)}[kind]()
    box = (-3, -5, 37, 35) if kind == "padded" else (0, 0, 40, 40)
    got = C._crop_resize(img, box, 40)
    rows, cols = C._reflect_indices(box[1], box[3], img.shape[0]), C._reflect_indices(box[0], box[2], img.shape[1])
    patch = img[rows[:, None], cols[None, :], :3]
    want = np.clip(resize(patch, (40, 40), order=1, mode="reflect").astype(np.float32), 0.0, 1.0)
    assert got.crop.dtype == np.float32
    np.testing.assert_array_equal(got.crop, want)
