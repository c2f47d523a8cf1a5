"""68-point facial landmarks: the backends (one module each), their registry, and face selection.

The data's path::

    detect_faces(image, "dlib") -> [Face(box, score, landmarks (68, 2) px, iBUG order), ...]
    select_face(faces)          -> the largest *confident* Face (NoFaceError when none)

(then :func:`talkhead.crop.fomm_crop` cuts the renderer's square around the chosen face).
Coordinates: image pixels, pixel centres at integers (see :mod:`talkhead.landmarks.base`).

Landmark backends (one small interface, :class:`Landmarker`; instances cached per backend/device),
registered once in :data:`LANDMARK_BACKENDS` (name -> factory, offline availability check,
confident-score threshold, detection size), which the pipeline, the options/CLI, ``doctor`` and
``preprocess`` read:

* ``"fan"`` (:mod:`talkhead.landmarks.fan`): face-alignment's S3FD detector + 2D-FAN (Bulat &
  Tzimiropoulos, ICCV 2017), the detector FOMM's ``crop-video.py`` and VoxCeleb preprocessing use.
  Weights are fetched by face-alignment from its author's site into torch hub's cache; offline and
  uncached this fails at once with :class:`~talkhead.errors.LandmarkerUnavailableError`.
* ``"dlib"`` (:mod:`talkhead.landmarks.dlib`): dlib's HOG frontal-face detector + the 68-point shape
  predictor shipped by the ``face-recognition-models`` package. Fully offline.
* ``"auto"`` (:func:`resolve_landmarker`): ``fan`` when its weights are cached or can be fetched,
  otherwise ``dlib``, with a one-line note saying so.

Importing this package imports neither torch, dlib nor face-alignment (``talkhead.options`` reads
:data:`LANDMARKER_CHOICES` from here and must stay light).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..errors import LandmarkerUnavailableError, NoFaceError
from . import dlib, fan
from .base import LANDMARK_MAX_SIDE, Face, Landmarker

__all__ = [
    "Face",
    "Landmarker",
    "LandmarkBackend",
    "LANDMARK_BACKENDS",
    "BACKENDS",
    "LANDMARKER_CHOICES",
    "DEFAULT_CONFIDENT_SCORE",
    "LANDMARK_MAX_SIDE",
    "confident_score",
    "is_confident",
    "resolve_landmarker",
    "note_once",
    "landmark_backend_status",
    "get_landmarker",
    "detect_faces",
    "select_face",
]

DEFAULT_CONFIDENT_SCORE = 0.5
"""Confidence threshold for a face whose backend is unknown (a custom landmarker's)."""


# ------------------------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class LandmarkBackend:
    """One registered landmark backend.

    Attributes:
        name: the ``--landmarker`` value.
        summary: one line for ``--help``.
        factory: ``factory(device, offline) -> Landmarker`` (loads its models; raises
            :class:`LandmarkerUnavailableError`).
        status: ``status() -> dict`` with at least ``"offline"`` (runs without network now),
            ``"importable"`` and ``"reason"`` (why not); what ``talkhead doctor`` shows. No network.
        confident_score: minimum detector score of a *confident* face (scores are not comparable
            across backends).
        detect_max_side: images are downscaled to this longest side (pixels) for face *detection*
            only; landmarks are then predicted on a copy of at most :data:`LANDMARK_MAX_SIDE` px.
        uses_device: whether it runs on the torch device (``dlib`` always runs on the CPU).
    """

    name: str
    summary: str
    factory: Callable[[str, bool], Landmarker]
    status: Callable[[], dict]
    confident_score: float
    detect_max_side: int
    uses_device: bool


LANDMARK_BACKENDS: dict[str, LandmarkBackend] = {
    # S3FD face probability in [0, 1]; detection at FOMM crop-video.py extract_bbox's 640 px.
    "fan": LandmarkBackend("fan", "face-alignment S3FD + 2D-FAN (downloads its weights once)",
                           lambda device, offline: fan.FanLandmarker(device, offline=offline), fan.status,
                           confident_score=fan.CONFIDENT_SCORE, detect_max_side=fan.DETECT_MAX_SIDE,
                           uses_device=True),
    # HOG-SVM margin (real faces ~1-3, texture false positives ~0-0.3); detection at 1024 px.
    "dlib": LandmarkBackend("dlib", "dlib HOG + 68-point shape predictor (offline)",
                            lambda device, offline: dlib.DlibLandmarker(), dlib.status,
                            confident_score=dlib.CONFIDENT_SCORE, detect_max_side=dlib.DETECT_MAX_SIDE,
                            uses_device=False),
}
"""The landmark backends, by ``--landmarker`` name."""

BACKENDS = tuple(LANDMARK_BACKENDS)
"""Names of the registered backends (``("fan", "dlib")``)."""

LANDMARKER_CHOICES = ("auto", *BACKENDS)
"""``--landmarker`` choices: ``auto`` (see :func:`resolve_landmarker`) or a backend name."""


def confident_score(backend: str) -> float:
    """The confidence threshold of ``backend`` (:data:`DEFAULT_CONFIDENT_SCORE` when not registered)."""
    entry = LANDMARK_BACKENDS.get(backend)
    return entry.confident_score if entry is not None else DEFAULT_CONFIDENT_SCORE


def is_confident(face: Face, min_score: float | None = None) -> bool:
    """The *confident face* rule: ``face.score >= min_score``, by default the threshold of the face's
    backend (:func:`confident_score`). Used by :func:`select_face` and by preprocessing."""
    return face.score >= (float(min_score) if min_score is not None else confident_score(face.backend))


def landmark_backend_status() -> dict[str, dict]:
    """``{name: status()}`` for every registered backend (what ``talkhead doctor`` reports)."""
    return {name: entry.status() for name, entry in LANDMARK_BACKENDS.items()}


def resolve_landmarker(name: str, *, offline: bool = False) -> tuple[str, str | None]:
    """The backend to use for ``--landmarker name``, and a one-line note when ``auto`` fell back.

    ``auto`` is ``fan`` when face-alignment is installed and its weights are cached, or can be
    fetched (not ``offline`` and the weight server answers within a few seconds); otherwise ``dlib``.

    Returns:
        ``(backend, note)``: ``note`` is ``None`` unless ``auto`` chose ``dlib``.

    Raises:
        LandmarkerUnavailableError: ``name`` is neither ``auto`` nor a registered backend.
    """
    if name in LANDMARK_BACKENDS:
        return name, None
    if name != "auto":
        raise LandmarkerUnavailableError(
            f"unknown landmark backend {name!r}; choose one of {', '.join(LANDMARKER_CHOICES)}")
    why = fan.unavailable_short(offline)
    if why is None:
        return "fan", None
    return "dlib", f"landmarker auto: using dlib ({why})"


_NOTED: set[str] = set()
_NOTED_LOCK = threading.Lock()


def note_once(note: str | None) -> str | None:
    """``note`` the first time this process passes it here, ``None`` after (and for ``None``): the
    landmarker fallback is said once per process, not for every batch item or web request."""
    if not note:
        return None
    with _NOTED_LOCK:
        if note in _NOTED:
            return None
        _NOTED.add(note)
    return note


# ------------------------------------------------------------------------------------------ interface
_CACHE: dict[tuple[str, str], Landmarker] = {}
_CACHE_LOCK = threading.Lock()


def get_landmarker(backend: str = "fan", device: str = "cpu", *, offline: bool = False) -> Landmarker:
    """The cached landmark backend for ``(backend, device)``; built (models loaded) on first use.

    Args:
        backend: ``"fan"`` (face-alignment S3FD + 2D-FAN), ``"dlib"`` (HOG + shape predictor) or
            ``"auto"`` (:func:`resolve_landmarker`).
        device: torch device string for ``fan`` (``"cpu"``, ``"cuda:0"``...); dlib runs on the CPU.
        offline: for ``fan``: never try the network; fail at once unless its weights are cached.

    Raises:
        LandmarkerUnavailableError: unknown ``backend``; dlib / face-recognition-models /
            face-alignment missing (names the pip package); FAN weights uncached and not
            downloadable (names ``--landmarker dlib``). Failures are not cached.
    """
    backend, _ = resolve_landmarker(backend, offline=offline)
    entry = LANDMARK_BACKENDS[backend]
    key = (backend, str(device) if entry.uses_device else "cpu")
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = entry.factory(key[1], offline)
        return _CACHE[key]


def detect_faces(image: np.ndarray, backend: str = "fan", device: str = "cpu", *,
                 offline: bool = False) -> list[Face]:
    """All faces in ``image`` with their 68 landmarks, largest box first.

    Detection runs on a copy downscaled to the backend's ``detect_max_side`` (FOMM ``extract_bbox`` uses 640
    px), landmarks on a copy of at most :data:`LANDMARK_MAX_SIDE` px; boxes and landmarks are mapped
    back to full-resolution pixels, so very large photos cost a bounded time and memory. Backend instances are cached (see
    :func:`get_landmarker`), so calling this per image of a batch loads the models once.

    Args:
        image: ``(H, W, 3)`` uint8 RGB (as :func:`talkhead.image.load_image` returns).
        backend: ``"fan"`` or ``"dlib"``.
        device: torch device for ``fan``.
        offline: see :func:`get_landmarker`.

    Returns:
        ``list[Face]`` (possibly empty, including low-score detections; :func:`select_face` filters).

    Raises:
        ValueError: ``image`` is not ``(H, W, 3)`` uint8.
        LandmarkerUnavailableError: see :func:`get_landmarker`.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")
    faces = get_landmarker(backend, str(device), offline=offline)(np.ascontiguousarray(image))
    return sorted(faces, key=lambda f: f.area, reverse=True)


def select_face(faces: Sequence[Face], index: int | None = None, min_score: float | None = None,
                source: str = "image") -> Face:
    """Pick the face to animate: the largest confident one, or the ``index``-th largest.

    Only faces with ``score >= min_score`` are candidates, so a low-score false positive never wins,
    however large its box. Candidates are ranked by box area, largest first.

    Args:
        faces: detections (any order), e.g. from :func:`detect_faces`.
        index: ``None`` -> the largest candidate; ``k`` -> the ``k``-th largest (0 = largest).
        min_score: confidence threshold; ``None`` -> per face, its backend's (:func:`is_confident`).
        source: what the faces were found in (the image path), quoted in error messages.

    Returns:
        The chosen :class:`Face`.

    Raises:
        NoFaceError: no candidate (no face at all, or only low-score ones: the message gives the
            best score and the threshold), or ``index`` beyond the number of candidates.
        ValueError: negative ``index``.
    """
    if index is not None and index < 0:
        raise ValueError(f"face index must be 0 or more, not {index}")

    if not faces:
        raise NoFaceError(f"no face found in '{source}'")
    confident = sorted((f for f in faces if is_confident(f, min_score)), key=lambda f: f.area, reverse=True)
    if not confident:
        best = max(faces, key=lambda f: f.score)
        threshold = float(min_score) if min_score is not None else confident_score(best.backend)
        raise NoFaceError(f"no confident face found in '{source}' (best detection score "
                          f"{best.score:.3f} < {threshold:.3f})")
    if index is None:
        return confident[0]
    if index >= len(confident):
        raise NoFaceError(f"face index {index} requested but only {len(confident)} confident "
                          f"face(s) found in '{source}'")
    return confident[index]
