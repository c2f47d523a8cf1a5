"""Photo loading, 68-point facial landmarks (FAN or dlib) and FOMM's face-crop rule.

The data's path through this module::

    load_image(path)            -> (H, W, 3) uint8 RGB, EXIF orientation applied
    detect_faces(image, "dlib") -> [Face(box, score, landmarks (68, 2) px, iBUG order), ...]
    select_face(faces)          -> the largest *confident* Face (NoFaceError when none)
    fomm_crop(image, face, S)   -> FaceCrop(box, crop (S, S, 3) float32 [0, 1], affine (2, 3))
    fomm_crop(..., pad=True)    -> the same, the square kept centred at full size past the image
                                   edge (mirrored pixels there), for full-frame paste-back
                                   (talkhead.compose)

Coordinates are image pixels, ``x`` to the right and ``y`` down, with integer values at pixel
centres (the OpenCV / scikit-image convention): pixel ``(row r, col c)`` is the point ``(c, r)`` and
covers ``[c - 0.5, c + 0.5) x [r - 0.5, r + 0.5)``. Boxes are ``(x0, y0, x1, y1)`` with ``x1, y1``
exclusive, so the box of pixels ``image[y0:y1, x0:x1]`` spans ``[x0 - 0.5, x1 - 0.5)``.

Landmark backends (one small interface, :class:`Landmarker`; instances cached per backend/device),
registered once in :data:`LANDMARK_BACKENDS` (name -> factory, offline availability check,
confident-score threshold, detection size), which the pipeline, the options/CLI, ``doctor`` and
``preprocess`` read:

* ``"fan"``: face-alignment's S3FD detector + 2D-FAN (Bulat & Tzimiropoulos, ICCV 2017), the detector
  FOMM's ``crop-video.py`` and VoxCeleb preprocessing use. Weights are fetched by face-alignment from
  its author's site into torch hub's cache; offline and uncached this fails at once with
  :class:`LandmarkerUnavailableError`.
* ``"dlib"``: dlib's HOG frontal-face detector + the 68-point shape predictor shipped by the
  ``face-recognition-models`` package. Fully offline.
* ``"auto"`` (:func:`resolve_landmarker`): ``fan`` when its weights are cached or can be fetched,
  otherwise ``dlib``, with a one-line note saying so.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import socket
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence
from urllib.parse import urlparse

import numpy as np

from .errors import ImageError, InputError, NoFaceError, TalkheadError

__all__ = [
    "LandmarkerUnavailableError",
    "Face",
    "FaceCrop",
    "Landmarker",
    "LandmarkBackend",
    "LANDMARK_BACKENDS",
    "BACKENDS",
    "LANDMARKER_CHOICES",
    "confident_score",
    "is_confident",
    "resolve_landmarker",
    "landmark_backend_status",
    "dlib_predictor_path",
    "FOMM_INCREASE_AREA",
    "load_image",
    "get_landmarker",
    "detect_faces",
    "select_face",
    "fomm_crop",
    "fomm_square_box",
    "face_extent",
    "fan_weights_cached",
    "no_crop",
]


class LandmarkerUnavailableError(TalkheadError):
    """A landmark backend cannot be used: its package or its weights are missing (the message says
    which pip package to install, or to use ``--landmarker dlib``), or the backend name is unknown."""


FOMM_INCREASE_AREA = 0.1
"""``increase_area`` of FOMM ``crop-video.py`` ``compute_bbox`` (default of its ``--increase``): the
crop margin of animate's photos and of preprocess's videos alike."""

DEFAULT_CONFIDENT_SCORE = 0.5
"""Confidence threshold for a face whose backend is unknown (a custom landmarker's)."""

LANDMARK_MAX_SIDE = 1280
"""Landmarks are predicted on a copy whose longest side is at most this (pixels) and mapped back to
full-resolution pixels, so a 4000-8000 px photo costs about what a 1280 px one does (FAN would
otherwise turn the whole photo into a tensor). A face filling a tenth of such a copy still spans
~128 px, more than the 68-point models' own input resolution (FAN: 256 px crops of the face box)."""

_DLIB_UPSAMPLE = 1
_DLIB_PREDICTOR = "shape_predictor_68_face_landmarks.dat"
_PROBE_TIMEOUT_S = 5.0


# =============================================================================================== image
def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read a photo as an ``(H, W, 3)`` uint8 RGB array with its EXIF orientation applied.

    Decoding is Pillow's (PNG, JPEG, WebP, BMP and the other formats Pillow reads; for animations,
    the first frame). ``PIL.ImageOps.exif_transpose`` rotates/flips the pixels as the EXIF
    ``Orientation`` tag says, so phone photos come out upright. Conversions:

    * alpha (RGBA, LA, palette with transparency): **composited on white** (transparent pixels of a
      cut-out portrait often hold arbitrary colour, usually black; white is what viewers show);
    * grayscale, bilevel, palette, CMYK, YCbCr: converted to RGB;
    * 16-bit (``I;16*``, ``I``) grayscale: scaled to 8 bits (``round(v / 257)``); float (``F``)
      images in [0, 1] are scaled by 255, others clipped to [0, 255].

    Args:
        path: the image file.

    Returns:
        ``(H, W, 3)`` uint8 RGB, C-contiguous and writable.

    Raises:
        InputError: ``path`` does not exist or is not a regular file (the message names it).
        ImageError: the file is not an image Pillow can decode, is truncated/corrupt, or is too
            large (Pillow's decompression-bomb limit); the message names the file.
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    p = Path(path)
    if not p.exists():
        raise InputError(f"image not found: '{p}'")
    if not p.is_file():
        raise InputError(f"image is not a file: '{p}'")
    try:
        with Image.open(p) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            return _to_rgb8(img)
    except UnidentifiedImageError:
        raise ImageError(f"'{p}' is not an image file (or a format Pillow cannot read)") from None
    except Image.DecompressionBombError as exc:
        raise ImageError(f"image '{p}' is too large to decode safely: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError) as exc:
        # Pillow reports truncated/corrupt data as OSError; some plugins and malformed EXIF blocks
        # surface as SyntaxError, ValueError, struct.error or IndexError.
        raise ImageError(f"cannot decode image '{p}': {exc}") from None


def _to_rgb8(img) -> np.ndarray:
    """Any Pillow image -> ``(H, W, 3)`` uint8 RGB (alpha composited on white)."""
    from PIL import Image

    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(img).astype(np.float64)
        g = np.clip(np.rint(a / 257.0), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(g[..., None], 3, axis=2))
    if mode == "F":
        a = np.asarray(img).astype(np.float64)
        if a.size and np.nanmax(a) <= 1.0:
            a = a * 255.0
        g = np.clip(np.rint(np.nan_to_num(a)), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(g[..., None], 3, axis=2))
    bands = img.getbands()
    has_alpha = "A" in bands or "a" in bands or "transparency" in img.info
    if has_alpha:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.array(img, dtype=np.uint8, copy=True)


# =============================================================================================== faces
@dataclass(frozen=True, eq=False)
class Face:
    """One detected face.

    Attributes:
        box: detector box ``(x0, y0, x1, y1)`` in image pixels (float).
        score: detector confidence; its scale depends on ``backend`` (see :func:`confident_score`).
        landmarks: ``(68, 2)`` float32 ``(x, y)`` image pixels in iBUG 300-W order (0-16 jaw,
            17-26 brows, 27-35 nose, 36-47 eyes, 48-67 mouth).
        backend: ``"fan"`` or ``"dlib"`` (which score scale applies); ``""`` when unknown.
    """

    box: tuple[float, float, float, float]
    score: float
    landmarks: np.ndarray
    backend: str = ""

    @property
    def area(self) -> float:
        """Box area, square pixels (what "largest face" means)."""
        x0, y0, x1, y1 = self.box
        return max(0.0, x1 - x0) * max(0.0, y1 - y0)


class Landmarker(Protocol):
    """A landmark backend: ``landmarker(image (H, W, 3) uint8 RGB) -> list[Face]`` (any order)."""

    name: str

    def __call__(self, image: np.ndarray) -> list[Face]: ...


def _to_full(points: np.ndarray, s: float) -> np.ndarray:
    """Map pixel-centre coordinates ``(..., 2)`` of a copy downscaled by ``s`` back to full resolution:
    ``full = (small + 0.5) s - 0.5`` (cv2.resize's pixel-centre alignment). Float32."""
    if s == 1.0:
        return np.asarray(points, dtype=np.float32)
    return ((np.asarray(points, dtype=np.float64) + 0.5) * s - 0.5).astype(np.float32)


def _detection_copy(image: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """Downscale ``image`` so its longest side is at most ``max_side``; return it and the factor
    ``s`` with ``full-resolution pixel = s * small pixel`` (1.0 when not resized)."""
    import cv2

    h, w = image.shape[:2]
    if max(h, w) <= max_side:
        return image, 1.0
    s = max(h, w) / float(max_side)
    small = cv2.resize(image, (max(1, round(w / s)), max(1, round(h / s))), interpolation=cv2.INTER_AREA)
    return small, s


# ----------------------------------------------------------------------------------------------- dlib
def dlib_predictor_path() -> Path | None:
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


def _dlib_missing_model() -> str:
    return f"dlib's 68-point landmark model ({_DLIB_PREDICTOR}) was not found: `pip install face-recognition-models`"


def _dlib_status() -> dict[str, Any]:
    """Offline availability of ``dlib``: ``{"offline", "importable", "model_path", "reason"}``."""
    out: dict[str, Any] = {"offline": False, "importable": False, "model_path": None, "reason": ""}
    try:
        import dlib  # noqa: F401
    except ImportError as exc:
        out["reason"] = f"dlib is not installed ({exc}): `pip install dlib-bin`"
        return out
    out["importable"] = True
    path = dlib_predictor_path()
    if path is None:
        out["reason"] = _dlib_missing_model()
        return out
    out.update(offline=True, model_path=str(path))
    return out


class _DlibLandmarker:
    """dlib HOG detector (``run(img, 1, 0.0)``: one 2x upsampling, dlib's default threshold, scores
    kept) + the 68-point ``shape_predictor`` (Kazemi & Sullivan, CVPR 2014; iBUG 300-W order)."""

    name = "dlib"

    def __init__(self) -> None:
        try:
            import dlib
        except ImportError:
            raise LandmarkerUnavailableError(
                "the dlib landmark backend needs dlib: `pip install dlib-bin`") from None
        path = dlib_predictor_path()
        if path is None:
            raise LandmarkerUnavailableError(_dlib_missing_model())
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
        dlib = self._dlib
        work, sw = _detection_copy(image, LANDMARK_MAX_SIDE)  # landmarks: bounded copy, mapped back
        small, s = _detection_copy(work, LANDMARK_BACKENDS["dlib"].detect_max_side)
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
                                  landmarks=_to_full(pts, sw), backend="dlib"))
        return faces


# ------------------------------------------------------------------------------------------------ FAN
def _fan_weight_urls() -> dict[str, str]:
    """The URLs face-alignment downloads (S3FD detector, 2D-FAN-4), read from the installed package."""
    try:
        from face_alignment.api import models_urls as fan_urls
        from face_alignment.detection.sfd.sfd_detector import models_urls as sfd_urls
    except ImportError:
        raise LandmarkerUnavailableError(
            "the fan landmark backend needs face-alignment: `pip install face-alignment` "
            "(or use `--landmarker dlib`)") from None
    return {"s3fd": sfd_urls["s3fd"], "2DFAN-4": fan_urls["2DFAN-4"]}


def _fan_cache_dir() -> Path:
    """torch hub's checkpoint cache (``$TORCH_HOME/hub/checkpoints``), where face-alignment's loaders look."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def _fan_weight_paths() -> dict[str, Path]:
    """Where each FAN weight file is (or will be) cached."""
    cache = _fan_cache_dir()
    return {name: cache / os.path.basename(urlparse(u).path) for name, u in _fan_weight_urls().items()}


def fan_weights_cached() -> bool:
    """Whether both FAN weight files are already in torch hub's checkpoint cache.

    Raises:
        LandmarkerUnavailableError: face-alignment is not installed.
    """
    return all(p.is_file() for p in _fan_weight_paths().values())


def _fan_unavailable(offline: bool) -> str | None:
    """Why ``fan`` cannot run now (package missing, or weights uncached and not downloadable:
    ``offline``, or the weight server unreachable), or ``None`` when it can."""
    try:
        urls, paths = _fan_weight_urls(), _fan_weight_paths()
    except LandmarkerUnavailableError as exc:
        return str(exc)
    if all(p.is_file() for p in paths.values()):
        return None
    names = ", ".join(p.name for p in paths.values())
    host = urlparse(urls["s3fd"]).hostname or ""
    why = "offline mode" if offline else _probe(host)
    if why is None:
        return None
    return (f"the fan landmarker's weights ({names}) are not in {_fan_cache_dir()} and cannot be "
            f"downloaded from {host} ({why}); use `--landmarker dlib` (works offline) or copy those files there")


def _fan_status() -> dict[str, Any]:
    """Offline availability of ``fan``: ``{"offline", "importable", "weights": {name: {"url", "path",
    "present"}}, "cache_dir", "reason"}`` (never touches the network)."""
    out: dict[str, Any] = {"offline": False, "importable": False, "weights": {}, "cache_dir": None, "reason": ""}
    if importlib.util.find_spec("face_alignment") is None:
        out["reason"] = "face-alignment is not installed: `pip install face-alignment`"
        return out
    try:
        urls, paths = _fan_weight_urls(), _fan_weight_paths()
    except Exception as exc:  # an incompatible face-alignment version
        out["reason"] = f"cannot import face-alignment ({type(exc).__name__}: {exc})"
        return out
    out["importable"] = True
    out["cache_dir"] = str(_fan_cache_dir())
    out["weights"] = {n: {"url": urls[n], "path": str(paths[n]), "present": paths[n].is_file()} for n in urls}
    missing = [n for n, w in out["weights"].items() if not w["present"]]
    out["offline"] = not missing
    if missing:
        out["reason"] = (f"weights not cached yet ({', '.join(missing)}): face-alignment downloads them on first "
                         f"use into {out['cache_dir']}; use `--landmarker dlib` offline")
    return out


def _probe(host: str, port: int = 443, timeout: float = _PROBE_TIMEOUT_S) -> str | None:
    """Try a TCP connection to ``host:port`` within ``timeout`` seconds (DNS included, which
    ``socket`` timeouts do not bound, hence the thread). Return ``None`` if it works, else why not."""
    result: list[str | None] = []

    def attempt() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(None)
        except OSError as exc:
            result.append(str(exc) or type(exc).__name__)

    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(timeout)
    return result[0] if result else f"no answer within {timeout:g} s"


class _FanLandmarker:
    """face-alignment ``FaceAlignment(LandmarksType.TWO_D, face_detector="sfd")``: S3FD boxes with
    their scores (``detect_from_image``: rows ``[x0, y0, x1, y1, score]``), then 2D-FAN landmarks
    for those boxes (``get_landmarks_from_image(detected_faces=...)``)."""

    name = "fan"

    def __init__(self, device: str = "cpu", offline: bool = False) -> None:
        why = _fan_unavailable(offline)
        if why is not None:
            raise LandmarkerUnavailableError(why)
        import face_alignment

        try:
            self._fa = face_alignment.FaceAlignment(face_alignment.LandmarksType.TWO_D, device=device,
                                                    face_detector="sfd", compile=False)
        except (OSError, RuntimeError) as exc:  # urllib's URLError/HTTPError are OSErrors
            raise LandmarkerUnavailableError(
                f"cannot load the fan landmarker ({exc}); use `--landmarker dlib`") from None
        self._lock = threading.Lock()

    def __call__(self, image: np.ndarray) -> list[Face]:
        work, sw = _detection_copy(image, LANDMARK_MAX_SIDE)  # landmarks: bounded copy, mapped back
        small, s = _detection_copy(work, LANDMARK_BACKENDS["fan"].detect_max_side)
        with self._lock:
            dets = self._fa.face_detector.detect_from_image(np.ascontiguousarray(small))
            if len(dets) == 0:
                return []
            dets = np.asarray(dets, dtype=np.float64).reshape(-1, 5)
            boxes = dets[:, :4] * s  # work pixels
            lms = self._fa.get_landmarks_from_image(np.ascontiguousarray(work), detected_faces=list(boxes))
        return [Face(box=tuple(float(v) * sw for v in b), score=float(d[4]),
                     landmarks=_to_full(np.asarray(lm, dtype=np.float32)[:, :2].reshape(68, 2), sw), backend="fan")
                for b, d, lm in zip(boxes, dets, lms or [])]


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
            only; landmarks are then predicted on the full-resolution image.
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
    # S3FD face probability in [0, 1] (face-alignment itself keeps boxes above 0.5); 640 px is FOMM
    # crop-video.py extract_bbox's detection size.
    "fan": LandmarkBackend("fan", "face-alignment S3FD + 2D-FAN (downloads its weights once)",
                           lambda device, offline: _FanLandmarker(device, offline=offline), _fan_status,
                           confident_score=0.8, detect_max_side=640, uses_device=True),
    # HOG-SVM margin: dlib keeps windows above 0; real frontal faces score about 1-3, false positives
    # on textures about 0-0.3 (0.12 on skimage.data.astronaut()'s suit). With one 2x upsampling the
    # HOG detector finds faces down to ~40 px at 1024.
    "dlib": LandmarkBackend("dlib", "dlib HOG + 68-point shape predictor (offline)",
                            lambda device, offline: _DlibLandmarker(), _dlib_status,
                            confident_score=0.5, detect_max_side=1024, uses_device=False),
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
    why = _fan_unavailable(offline)
    if why is None:
        return "fan", None
    return "dlib", f"landmarker auto: using dlib, fan is not available ({why.split(';')[0]})"


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
        image: ``(H, W, 3)`` uint8 RGB (as :func:`load_image` returns).
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


# ================================================================================================ crop
@dataclass(frozen=True, eq=False)
class FaceCrop:
    """The source frame FOMM animates, and where it sits in the photo.

    Attributes:
        box: ``(x0, y0, x1, y1)`` int pixels of the crop in the image (``image[y0:y1, x0:x1]``;
            square for :func:`fomm_crop`, the whole image for :func:`no_crop`). With
            ``fomm_crop(..., pad=True)`` the box may extend past the image (negative ``x0``/``y0``,
            or ``x1 > W``, ``y1 > H``); the crop pixels there are the image mirrored at its edge
            (``cv2.BORDER_REFLECT``, ``fedcba|abcdef``).
        crop: ``(S, S, 3)`` float32 RGB in [0, 1], ``S`` = the FOMM config's frame size (pixels).
        affine: ``(2, 3)`` float64 ``A`` mapping crop pixel coordinates to image pixel coordinates,
            ``[x, y] = A @ [u, v, 1]`` (pixel-centre convention, see the module docstring). Paste a
            rendered ``(S, S, 3)`` frame back with ``cv2.warpAffine(frame, affine, (W, H))``.
    """

    box: tuple[int, int, int, int]
    crop: np.ndarray
    affine: np.ndarray

    @property
    def size(self) -> int:
        """``S``, the side of :attr:`crop` in pixels."""
        return int(self.crop.shape[0])


def fomm_square_box(face_box: Sequence[float], image_shape: Sequence[int],
                    increase_area: float = FOMM_INCREASE_AREA, *,
                    pad: bool = False) -> tuple[int, int, int, int]:
    """FOMM's face-crop rule (``crop-video.py`` ``compute_bbox``) for a still, kept square.

    ``compute_bbox`` grows the face box by ``increase_area`` on each side of its longer dimension
    and makes it square about the box centre: side ``L = (1 + 2 * increase_area) * max(w, h)``.
    We round the corners (FOMM truncates with ``int()``: at most 1 px apart). FOMM then clips the
    box to the frame, which makes it non-square and ``ffmpeg scale`` stretches it; here the square
    is instead shifted back inside the image (same scale, no stretch), and only when ``L`` exceeds
    the image's shorter side is it shrunk to that side.

    Args:
        face_box: ``(x0, y0, x1, y1)`` detector box, pixels.
        image_shape: ``(H, W, ...)``.
        increase_area: FOMM's ``--increase`` (0.1).
        pad: keep the square centred on the face at full size even where it leaves the image (no
            shift, no shrink); the caller pads the image (:func:`fomm_crop` with ``pad=True``
            mirrors it). Used for full-frame paste-back, where a shifted crop would put the face
            off-centre in FOMM's frame.

    Returns:
        ``(x0, y0, x1, y1)`` ints with ``x1 - x0 == y1 - y0 >= 1``; without ``pad`` also
        ``0 <= x0 < x1 <= W``, ``0 <= y0 < y1 <= H``.
    """
    h_img, w_img = int(image_shape[0]), int(image_shape[1])
    left, top, right, bot = (float(v) for v in face_box)
    w, h = max(right - left, 1.0), max(bot - top, 1.0)
    side = int(round((1.0 + 2.0 * increase_area) * max(w, h)))
    side = max(1, side if pad else min(side, h_img, w_img))
    cx, cy = (left + right) / 2.0, (top + bot) / 2.0
    x0 = int(round(cx - side / 2.0))
    y0 = int(round(cy - side / 2.0))
    if pad:
        return x0, y0, x0 + side, y0 + side
    x0 = min(max(x0, 0), w_img - side)
    y0 = min(max(y0, 0), h_img - side)
    return x0, y0, x0 + side, y0 + side


def _crop_resize(image: np.ndarray, box: tuple[int, int, int, int], size: int) -> FaceCrop:
    """Cut ``image[y0:y1, x0:x1]`` and resize it to ``(size, size)`` exactly as FOMM ``demo.py``
    prepares its source: ``skimage.transform.resize`` defaults (bilinear, order=1, mode='reflect',
    Gaussian anti-aliasing when downscaling; uint8 -> float in [0, 1]).

    A box reaching past the image takes its outside pixels from the image mirrored at its edges
    (:func:`_reflect_indices`, ``cv2.BORDER_REFLECT``)."""
    from skimage.util import img_as_float

    if int(size) < 1:
        raise ValueError(f"crop size must be a positive number of pixels, not {size}")
    size = int(size)
    x0, y0, x1, y1 = (int(v) for v in box)
    h_img, w_img = image.shape[:2]
    if 0 <= x0 and 0 <= y0 and x1 <= w_img and y1 <= h_img:
        patch = image[y0:y1, x0:x1, :3]
    else:
        rows = _reflect_indices(y0, y1, h_img)
        cols = _reflect_indices(x0, x1, w_img)
        patch = image[rows[:, None], cols[None, :], :3]
    if patch.shape[:2] == (size, size):
        # already the frame size: what ``resize`` returns here (an identity zoom of the image as float,
        # exactly), without the ~35 MiB and 0.5 s of scipy.ndimage it would import to compute it
        crop = img_as_float(patch.astype(np.float32) if patch.dtype == np.float16 else patch).astype(np.float32)
    else:
        from skimage.transform import resize  # imports scipy.ndimage

        crop = resize(patch, (size, size), order=1, mode="reflect").astype(np.float32)
    crop = np.clip(crop, 0.0, 1.0)
    # Pixel centres: image x = x0 + (u + 0.5) * (x1 - x0) / S - 0.5 (skimage/OpenCV resize mapping).
    sx, sy = (x1 - x0) / size, (y1 - y0) / size
    affine = np.array([[sx, 0.0, x0 + 0.5 * sx - 0.5],
                       [0.0, sy, y0 + 0.5 * sy - 0.5]], dtype=np.float64)
    return FaceCrop(box=(int(x0), int(y0), int(x1), int(y1)), crop=np.ascontiguousarray(crop), affine=affine)


def _reflect_indices(start: int, stop: int, n: int) -> np.ndarray:
    """Indices ``start .. stop - 1`` of an axis of length ``n`` folded back into ``[0, n)`` by
    mirroring at the edges with the edge pixel repeated (OpenCV ``BORDER_REFLECT``,
    ``fedcba|abcdefgh|hgfedcb``; repeated for offsets beyond one image length)."""
    i = np.arange(start, stop)
    if n == 1:
        return np.zeros_like(i)
    m = np.mod(i, 2 * n)
    return np.where(m >= n, 2 * n - 1 - m, m)


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] < 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
    return image


def face_extent(face: Face) -> tuple[float, float, float, float]:
    """The box FOMM's rule grows: the detector box joined with the landmarks' bounding box.

    For S3FD (``fan``) boxes, which already hold the 68 points, this is the detector box itself, as
    in ``crop-video.py``. dlib's HOG boxes are tighter (brows to lower lip, about 80 % of an S3FD box)
    and the jaw/chin points fall outside them; joining the landmarks keeps the chin in the crop.
    Non-finite landmarks are ignored.

    Returns:
        ``(x0, y0, x1, y1)`` float pixels.
    """
    x0, y0, x1, y1 = (float(v) for v in face.box)
    pts = np.asarray(face.landmarks, dtype=np.float64).reshape(-1, 2)
    pts = pts[np.isfinite(pts).all(axis=1)]
    if len(pts):
        x0, y0 = min(x0, pts[:, 0].min()), min(y0, pts[:, 1].min())
        x1, y1 = max(x1, pts[:, 0].max() + 1.0), max(y1, pts[:, 1].max() + 1.0)  # x1, y1 exclusive
    return x0, y0, x1, y1


def fomm_crop(image: np.ndarray, face: Face, size: int,
              increase_area: float = FOMM_INCREASE_AREA, *, pad: bool = False) -> FaceCrop:
    """Crop ``image`` around ``face`` with FOMM's rule (:func:`fomm_square_box` of
    :func:`face_extent`) and resize it to the FOMM frame size (:func:`_crop_resize`: FOMM
    ``demo.py``'s ``skimage.transform.resize``).

    Args:
        image: ``(H, W, 3)`` uint8 RGB (or float in [0, 1]).
        face: the chosen face (its box joined with its landmarks, see :func:`face_extent`).
        size: the FOMM config's frame side ``S``, pixels (256 for vox-adv-256).
        increase_area: margin added on each side, as a fraction of the longer box side (FOMM: 0.1).
        pad: for a face near the image border, keep the square centred on the face at FOMM's size
            and fill its part outside the image by mirroring the image (``cv2.BORDER_REFLECT``)
            instead of shifting/shrinking the square inside the image. The full-frame
            compositor (:class:`talkhead.compose.Compositor`) pastes back only inside the image.

    Returns:
        :class:`FaceCrop` with a square ``box`` (inside the image unless ``pad``) and ``crop``
        ``(S, S, 3)`` float32; ``affine`` maps crop pixels to image pixels in both cases.

    Raises:
        ValueError: bad image shape or ``size`` < 1.
    """
    image = _check_image(image)
    box = fomm_square_box(face_extent(face), image.shape, increase_area, pad=pad)
    return _crop_resize(image, box, size)


def no_crop(image: np.ndarray, size: int) -> FaceCrop:
    """``--crop none``: the image already is a face crop; resize all of it to ``(S, S)`` (as FOMM
    ``demo.py`` does with its source). A non-square image is stretched; ``affine`` records the two
    scales so paste-back still lands on the right pixels.

    Args:
        image: ``(H, W, 3)`` uint8 RGB (or float in [0, 1]).
        size: the FOMM frame side ``S``, pixels.

    Returns:
        :class:`FaceCrop` with ``box == (0, 0, W, H)``.

    Raises:
        ValueError: bad image shape or ``size`` < 1.
    """
    image = _check_image(image)
    return _crop_resize(image, (0, 0, image.shape[1], image.shape[0]), size)
