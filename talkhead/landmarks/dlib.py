"""The ``dlib`` landmark backend: dlib's HOG frontal-face detector + the 68-point shape predictor
shipped by the ``face-recognition-models`` package. Fully offline; runs on the CPU.

dlib is imported only when the backend is built or its status is asked for.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import LandmarkerUnavailableError
from .base import LANDMARK_MAX_SIDE, Face, detection_copy, to_full

__all__ = ["CONFIDENT_SCORE", "DETECT_MAX_SIDE", "predictor_path", "status", "DlibLandmarker"]

CONFIDENT_SCORE = 0.5
"""Minimum HOG-SVM margin of a confident face. dlib keeps windows above 0; real frontal faces score
about 1-3, false positives on textures about 0-0.3 (0.12 on ``skimage.data.astronaut()``'s suit)."""

DETECT_MAX_SIDE = 1024
"""Detection runs on a copy of at most this longest side (pixels): with one 2x upsampling the HOG
detector finds faces down to ~40 px at 1024."""

_DLIB_UPSAMPLE = 1
_DLIB_PREDICTOR = "shape_predictor_68_face_landmarks.dat"


def predictor_path() -> Path | None:
    """Locate ``shape_predictor_68_face_landmarks.dat`` of ``face-recognition-models`` WITHOUT
    importing that package (its ``__init__`` needs ``pkg_resources``, gone from new setuptools);
    ``None`` when it is not installed."""
    candidates: list[Path] = []
    try:
        spec = importlib.util.find_spec("face_recognition_models")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(d) / "models" / _DLIB_PREDICTOR for d in spec.submodule_search_locations]
    try:
        for f in importlib.metadata.files("face_recognition_models") or ():
            if f.name == _DLIB_PREDICTOR:
                candidates.append(Path(f.locate()))
    except importlib.metadata.PackageNotFoundError:
        pass
    for c in candidates:
        if c.is_file():
            return c
    return None


def _missing_model() -> str:
    return f"dlib's 68-point landmark model ({_DLIB_PREDICTOR}) was not found: `pip install face-recognition-models`"


def status() -> dict[str, Any]:
    """Offline availability of ``dlib``: ``{"offline", "importable", "model_path", "reason"}``."""
    out: dict[str, Any] = {"offline": False, "importable": False, "model_path": None, "reason": ""}
    try:
        import dlib  # noqa: F401
    except ImportError as exc:
        out["reason"] = f"dlib is not installed ({exc}): `pip install dlib-bin`"
        return out
    out["importable"] = True
    path = predictor_path()
    if path is None:
        out["reason"] = _missing_model()
        return out
    out.update(offline=True, model_path=str(path))
    return out


class DlibLandmarker:
    """dlib HOG detector (``run(img, 1, 0.0)``: one 2x upsampling, dlib's default threshold, scores
    kept) + the 68-point ``shape_predictor`` (Kazemi & Sullivan, CVPR 2014; iBUG 300-W order)."""

    name = "dlib"

    def __init__(self) -> None:
        """Load dlib's detector and shape predictor.

        Raises:
            LandmarkerUnavailableError: dlib or face-recognition-models is not installed (names the
                pip package), or the predictor file cannot be loaded.
        """
        try:
            import dlib
        except ImportError:
            raise LandmarkerUnavailableError(
                "the dlib landmark backend needs dlib: `pip install dlib-bin`") from None
        path = predictor_path()
        if path is None:
            raise LandmarkerUnavailableError(_missing_model())
        self._dlib = dlib
        self._detector = dlib.get_frontal_face_detector()
        try:
            self._predictor = dlib.shape_predictor(str(path))
        except RuntimeError as exc:
            raise LandmarkerUnavailableError(
                f"cannot load dlib landmark model '{path}' ({exc}); "
                "reinstall it with `pip install --force-reinstall face-recognition-models`") from None
        self._lock = threading.Lock()

    def __call__(self, image: np.ndarray) -> list[Face]:
        """Faces of ``image`` (``(H, W, 3)`` uint8 RGB), boxes and landmarks in its full-resolution pixels."""
        dlib = self._dlib
        work, sw = detection_copy(image, LANDMARK_MAX_SIDE)  # landmarks: bounded copy, mapped back
        small, s = detection_copy(work, DETECT_MAX_SIDE)
        work = np.ascontiguousarray(work)
        with self._lock:  # dlib objects are not documented as thread-safe
            rects, scores, _ = self._detector.run(np.ascontiguousarray(small), _DLIB_UPSAMPLE, 0.0)
            faces = []
            for r, score in zip(rects, scores):
                # dlib rectangles are inclusive: right/bottom are the last pixel inside.
                box = (r.left() * s, r.top() * s, (r.right() + 1) * s, (r.bottom() + 1) * s)  # work pixels
                rect = dlib.rectangle(int(round(box[0])), int(round(box[1])),
                                      int(round(box[2])) - 1, int(round(box[3])) - 1)
                shape = self._predictor(work, rect)
                pts = np.array([(shape.part(i).x, shape.part(i).y) for i in range(shape.num_parts)],
                               dtype=np.float32)
                faces.append(Face(box=tuple(float(v) * sw for v in box), score=float(score),
                                  landmarks=to_full(pts, sw), backend="dlib"))
        return faces
