"""Cost of full-frame paste-back (talkhead.compose.Compositor) per frame at 1080p (not a test).

The photo is ``skimage.data.astronaut()`` scaled to 1080 rows and mirrored out to 1920 columns; the
face box is the astronaut's, scaled (FOMM square ~262 px), and a close-up case where the face fills
most of the frame height (square ~1000 px). The rendered frames are the source crop moved a few
pixels with a +0.1 drift on red, at S = 256. Prints ms/frame for each colour-matching mode (and
``cv2.seamlessClone`` per frame as the reference it replaces), wall time with OpenCV's default
thread pool and wall + process CPU time with one thread (CPU time is the figure to trust on a
shared, loaded machine), plus the seam figures of :func:`talkhead.compose.seam_metrics` (the
``tint`` here includes the head's own motion in the band, see its docstring).

    python benchmarks/bench_compose.py
    python benchmarks/bench_compose.py --frames 200
"""
from __future__ import annotations

import argparse
import time

import cv2
import numpy as np
import skimage.data

from talkhead.crop import FaceCrop, fomm_crop
from talkhead.landmarks import Face
from talkhead.compose import COLOUR_MATCHES, Compositor, seam_metrics

S = 256
ASTRO_EXTENT = (175.0, 76.0, 273.0, 179.0)


def photo_1080p() -> tuple[np.ndarray, float, int]:
    a = skimage.data.astronaut()
    k = 1080 / a.shape[0]
    big = cv2.resize(a, (1080, 1080), interpolation=cv2.INTER_CUBIC)
    left = (1920 - 1080) // 2
    return cv2.copyMakeBorder(big, 0, 0, left, 1920 - 1080 - left, cv2.BORDER_REFLECT), k, left


def frames_for(fc: FaceCrop, n: int) -> np.ndarray:
    out = np.empty((n, S, S, 3), np.float32)
    for i in range(n):
        M = np.float32([[1, 0, 3 * np.sin(i / 5)], [0, 1, 2 * np.cos(i / 7)]])
        out[i] = cv2.warpAffine(fc.crop, M, (S, S), borderMode=cv2.BORDER_REFLECT)
    out[..., 0] = np.clip(out[..., 0] + 0.1, 0, 1)
    return out


def time_paste(comp: Compositor, frames: np.ndarray, repeats: int = 3) -> tuple[float, float]:
    """Best of ``repeats``: (wall ms/frame, process CPU ms/frame)."""
    buf = comp.new_buffer(len(frames))
    comp.paste(frames[:2], out=buf[:2])                        # warm-up
    best, best_cpu = float("inf"), float("inf")
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        comp.paste(frames, out=buf)
        best = min(best, (time.perf_counter() - t) / len(frames))
        best_cpu = min(best_cpu, (time.process_time() - c) / len(frames))
    return best * 1e3, best_cpu * 1e3


def time_seamless_clone(photo: np.ndarray, comp: Compositor, frames: np.ndarray) -> float:
    x0, y0, x1, y1 = comp.region
    mask = (comp.mask > 0.5).astype(np.uint8) * 255
    centre = ((x0 + x1) // 2, (y0 + y1) // 2)
    n = min(len(frames), 5)
    t = time.process_time()
    for f in frames[:n]:
        warped = cv2.warpAffine(np.rint(f * 255).astype(np.uint8), comp._to_region, (x1 - x0, y1 - y0))
        cv2.seamlessClone(warped, photo, mask, centre, cv2.NORMAL_CLONE)
    return (time.process_time() - t) / n * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=100)
    args = ap.parse_args()

    photo, k, left = photo_1080p()
    x0, y0, x1, y1 = ASTRO_EXTENT
    cases = {
        "astronaut face (1080p)": (x0 * k + left, y0 * k, x1 * k + left, y1 * k),
        "close-up face (1080p)": (560.0, 120.0, 1360.0, 950.0),
    }
    default_threads = cv2.getNumThreads()
    print(f"photo {photo.shape[1]}x{photo.shape[0]}, S = {S}, {args.frames} frames, "
          f"OpenCV threads: {default_threads} (default) and 1")
    for name, extent in cases.items():
        face = Face(box=extent, score=2.0, landmarks=np.array([extent[:2], extent[2:]], np.float32) - 1,
                      backend="dlib")
        fc = fomm_crop(photo, face, S, pad=True)
        frames = frames_for(fc, args.frames)
        bx0, by0, bx1, by1 = fc.box
        print(f"\n{name}: FOMM square {bx1 - bx0} px, box {fc.box}")
        for colour in COLOUR_MATCHES:
            comp = Compositor(photo, fc, colour=colour)
            cv2.setNumThreads(default_threads)
            ms, _ = time_paste(comp, frames)
            cv2.setNumThreads(1)
            ms1, cpu1 = time_paste(comp, frames)
            cv2.setNumThreads(default_threads)
            out = comp.paste(frames[:1])[0]
            m = seam_metrics(out, photo, comp, frames[0])
            print(f"  colour={colour:8s} wall {ms:6.2f} ms/frame; 1 thread: wall {ms1:6.2f}, CPU {cpu1:6.2f} ms/frame"
                  f"   gradient_ratio {m['gradient_ratio']:.3f}  tint {m['tint']:5.2f} levels")
        comp = Compositor(photo, fc, colour="none")
        cv2.setNumThreads(1)
        ms_clone = time_seamless_clone(photo, comp, frames)
        cv2.setNumThreads(default_threads)
        print(f"  cv2.seamlessClone (reference, not used): CPU {ms_clone:7.1f} ms/frame (1 thread)")


if __name__ == "__main__":
    main()
