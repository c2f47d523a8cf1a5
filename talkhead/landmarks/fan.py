"""The ``fan`` landmark backend: face-alignment's S3FD detector + 2D-FAN (Bulat & Tzimiropoulos,
ICCV 2017), the detector FOMM's ``crop-video.py`` and VoxCeleb preprocessing use.

Weights are fetched by face-alignment from its author's site into torch hub's cache
(``$TORCH_HOME/hub/checkpoints``); offline and uncached this fails at once with
:class:`~talkhead.errors.LandmarkerUnavailableError` (:func:`unavailable_reason` says why, after at most
one bounded probe of the weight server). face-alignment and torch are imported only when needed.
"""
from __future__ import annotations

import importlib.util
import os
import socket
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from ..errors import LandmarkerUnavailableError
from .base import LANDMARK_MAX_SIDE, Face, detection_copy, to_full

__all__ = ["CONFIDENT_SCORE", "DETECT_MAX_SIDE", "weights_cached", "unavailable_reason", "unavailable_short", "status", "FanLandmarker"]

CONFIDENT_SCORE = 0.8
"""Minimum S3FD face probability (in [0, 1]) of a confident face; face-alignment itself keeps boxes
above 0.5."""

DETECT_MAX_SIDE = 640
"""Detection runs on a copy of at most this longest side (pixels): FOMM ``crop-video.py``
``extract_bbox``'s detection size."""

_PROBE_TIMEOUT_S = 5.0


def _weight_urls() -> dict[str, str]:
    """The URLs face-alignment downloads (S3FD detector, 2D-FAN-4), read from the installed package."""
    try:
        from face_alignment.api import models_urls as fan_urls
        from face_alignment.detection.sfd.sfd_detector import models_urls as sfd_urls
    except ImportError:
        raise LandmarkerUnavailableError(
            "the fan landmark backend needs face-alignment: `pip install face-alignment` "
            "(or use `--landmarker dlib`)") from None
    return {"s3fd": sfd_urls["s3fd"], "2DFAN-4": fan_urls["2DFAN-4"]}


def _cache_dir() -> Path:
    """torch hub's checkpoint cache (``$TORCH_HOME/hub/checkpoints``), where face-alignment's loaders look."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def _weight_paths() -> dict[str, Path]:
    """Where each FAN weight file is (or will be) cached."""
    cache = _cache_dir()
    return {name: cache / os.path.basename(urlparse(u).path) for name, u in _weight_urls().items()}


def weights_cached() -> bool:
    """Whether both FAN weight files are already in torch hub's checkpoint cache (never touches the network).

    Public API (a cheap "is fan ready offline?" for library callers); not used by the CLI, which asks
    :func:`unavailable_reason` / :func:`status`.

    Raises:
        LandmarkerUnavailableError: face-alignment is not installed.
    """
    return all(p.is_file() for p in _weight_paths().values())


def unavailable_reason(offline: bool) -> str | None:
    """Why ``fan`` cannot run now (package missing, or weights uncached and not downloadable:
    ``offline``, or the weight server unreachable), or ``None`` when it can."""
    why = _unavailable(offline)
    return why and why[0]


def unavailable_short(offline: bool) -> str | None:
    """:func:`unavailable_reason` in a few words for a one-line note (``"fan's weights are not cached,
    www.adrianbulat.com is unreachable"``), or ``None`` when ``fan`` can run."""
    why = _unavailable(offline)
    return why and why[1]


def _unavailable(offline: bool) -> tuple[str, str] | None:
    """``(full reason, short reason)`` for :func:`unavailable_reason` / :func:`unavailable_short`."""
    try:
        urls, paths = _weight_urls(), _weight_paths()
    except LandmarkerUnavailableError as exc:
        return str(exc), str(exc).split(";")[0].split(":")[0]
    if all(p.is_file() for p in paths.values()):
        return None
    names = ", ".join(p.name for p in paths.values())
    host = urlparse(urls["s3fd"]).hostname or ""
    why = "offline mode" if offline else _probe(host)
    if why is None:
        return None
    short = ("offline mode" if offline else f"{host} did not answer" if why.startswith("no answer")
             else f"{host} is unreachable")
    return (f"the fan landmarker's weights ({names}) are not in {_cache_dir()} and cannot be "
            f"downloaded from {host} ({why}); use `--landmarker dlib` (works offline) or copy those files there",
            f"fan's weights are not cached, {short}")


def status() -> dict[str, Any]:
    """Offline availability of ``fan``: ``{"offline", "importable", "weights": {name: {"url", "path",
    "present"}}, "cache_dir", "reason"}`` (never touches the network)."""
    out: dict[str, Any] = {"offline": False, "importable": False, "weights": {}, "cache_dir": None, "reason": ""}
    if importlib.util.find_spec("face_alignment") is None:
        out["reason"] = "face-alignment is not installed: `pip install face-alignment`"
        return out
    try:
        urls, paths = _weight_urls(), _weight_paths()
    except Exception as exc:  # an incompatible face-alignment version
        out["reason"] = f"cannot import face-alignment ({type(exc).__name__}: {exc})"
        return out
    out["importable"] = True
    out["cache_dir"] = str(_cache_dir())
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


class FanLandmarker:
    """face-alignment ``FaceAlignment(LandmarksType.TWO_D, face_detector="sfd")``: S3FD boxes with
    their scores (``detect_from_image``: rows ``[x0, y0, x1, y1, score]``), then 2D-FAN landmarks
    for those boxes (``get_landmarks_from_image(detected_faces=...)``)."""

    name = "fan"

    def __init__(self, device: str = "cpu", offline: bool = False) -> None:
        """Build face-alignment's models on torch ``device`` (``"cpu"``, ``"cuda:0"``...).

        Raises:
            LandmarkerUnavailableError: face-alignment is missing, or its weights are uncached and
                cannot be downloaded (``offline``, or the server unreachable), or they fail to load.
        """
        why = unavailable_reason(offline)
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
        """Faces of ``image`` (``(H, W, 3)`` uint8 RGB), boxes and landmarks in its full-resolution pixels."""
        work, sw = detection_copy(image, LANDMARK_MAX_SIDE)  # landmarks: bounded copy, mapped back
        small, s = detection_copy(work, DETECT_MAX_SIDE)
        with self._lock:
            dets = self._fa.face_detector.detect_from_image(np.ascontiguousarray(small))
            if len(dets) == 0:
                return []
            dets = np.asarray(dets, dtype=np.float64).reshape(-1, 5)
            boxes = dets[:, :4] * s  # work pixels
            lms = self._fa.get_landmarks_from_image(np.ascontiguousarray(work), detected_faces=list(boxes))
        return [Face(box=tuple(float(v) * sw for v in b), score=float(d[4]),
                     landmarks=to_full(np.asarray(lm, dtype=np.float32)[:, :2].reshape(68, 2), sw), backend="fan")
                for b, d, lm in zip(boxes, dets, lms or [])]
