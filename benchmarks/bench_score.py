"""Seconds per minute of video of ``talkhead score`` on this CPU, by stage (not a test).

A talking clip of ``--seconds`` (the astronaut photo moved a few pixels per frame, 256 x 256, 25 fps,
the test speech looped) is scored by :func:`talkhead.score.score_video` with a full-size random-weight
SyncNet (the released widths: timing does not depend on the weights) and the chosen landmarker.
Stage times are taken from the progress callbacks: ``faces`` (decode + landmarker on every frame),
``crops`` (second decode + 224 x 224 crops) and ``syncnet`` (MFCCs + embeddings + offset search).
Peak RSS is the process's (``ru_maxrss``).

``--compare-boxes`` (the crop comparison of issue 22): the same clip and weights scored twice, with
talkhead's dlib box (the HOG box joined with the 68 landmarks, :func:`talkhead.crop.face_extent`) and
with the HOG box alone (a face-only detector box, like the reference's S3FD box, which this machine
cannot run: its weights are not reachable); prints the mean IoU of the two smoothed crop squares,
their side ratio and both LSE-C / LSE-D / offsets.

    python benchmarks/bench_score.py
    python benchmarks/bench_score.py --seconds 20 --threads 2 --landmarker dlib
    python benchmarks/bench_score.py --seconds 20 --compare-boxes
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SPEECH = ROOT / "tests" / "data" / "audio" / "speech_16k.wav"


def make_clip(path: Path, seconds: float) -> Path:
    """A 25-fps 256 x 256 talking clip of ``seconds`` with the test speech looped under it."""
    import skimage.data

    photo = np.asarray(skimage.data.astronaut())
    n = int(round(seconds * 25))
    jitter = np.random.default_rng(0).integers(-5, 6, size=(n, 2))
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", "256x256", "-r", "25", "-i", "-", "-stream_loop", "-1", "-i", str(SPEECH), "-t", f"{seconds}",
           "-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "18", "-c:a", "aac", "-shortest", str(path)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE)
    for dy, dx in jitter:
        proc.stdin.write(np.ascontiguousarray(photo[20 + dy:276 + dy, 100 + dx:356 + dx]).tobytes())
    proc.stdin.close()
    if proc.wait():
        sys.exit("ffmpeg failed")
    return path


def compare_boxes(model, clip: Path, detect) -> None:
    """Crop squares and scores with talkhead's dlib box vs the HOG box alone, on the same clip."""
    from talkhead.facetrack import box_iou
    from talkhead.landmarks import detect_faces, is_confident
    from talkhead.score import face_boxes, score_video
    from talkhead.syncnet import smooth_track
    from talkhead.syncnet.crop import CROP_SCALE

    def hog_only(frame):
        return np.asarray([f.box for f in detect_faces(frame, backend="dlib") if is_confident(f)],
                          dtype=np.float64).reshape(-1, 4)

    def squares(boxes):  # the crop square of each frame: side 2 s (1 + CROP_SCALE) from y - s (the reference's rule)
        x, y, s = smooth_track(boxes).T
        side = 2 * s * (1 + CROP_SCALE)
        return np.stack([x - side / 2, y - s, x + side / 2, y - s + side], axis=1)

    with torch.inference_mode():
        ours, hog = face_boxes(clip, detect), face_boxes(clip, hog_only)
        a, b = squares(ours), squares(hog)
        iou = float(np.mean([box_iou(p, q) for p, q in zip(a, b)]))
        side = float(np.mean((b[:, 2] - b[:, 0]) / (a[:, 2] - a[:, 0])))
        s_ours = score_video(model, clip, detect=detect).scores
        s_hog = score_video(model, clip, detect=hog_only).scores
    print(json.dumps({"crop_iou_mean": round(iou, 3), "hog_side_over_ours": round(side, 3),
                      "ours": {"lse_c": round(s_ours.lse_c, 4), "lse_d": round(s_ours.lse_d, 4), "offset": s_ours.offset},
                      "hog_box": {"lse_c": round(s_hog.lse_c, 4), "lse_d": round(s_hog.lse_d, 4),
                                  "offset": s_hog.offset}}), flush=True)


def main() -> None:
    from talkhead.facetrack import face_detector
    from talkhead.score import score_video
    from talkhead.syncnet import SyncNet, SyncNetConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--landmarker", default="dlib")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--compare-boxes", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = SyncNet(SyncNetConfig()).eval()
    detect = face_detector(args.landmarker, "cpu", None)
    marks: dict[str, list[float]] = {}

    def progress(stage, done, total):
        now = time.perf_counter()
        marks.setdefault(stage, [now, now])[1] = now

    with tempfile.TemporaryDirectory() as tmp:
        clip = make_clip(Path(tmp) / "talk.mp4", args.seconds)
        t0 = time.perf_counter()
        with torch.inference_mode():
            item = score_video(model, clip, detect=detect, progress=progress)
        total = time.perf_counter() - t0
        if args.compare_boxes:
            compare_boxes(model, clip, detect)
    per_min = 60.0 / args.seconds
    stages = {k: round((v[1] - v[0]) * per_min, 1) for k, v in marks.items()}
    row = {"seconds": args.seconds, "threads": args.threads, "landmarker": args.landmarker,
           "frames": item.num_frames, "windows": item.scores.num_windows,
           "s_per_min_video": round(total * per_min, 1), "stage_s_per_min": stages,
           "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
           "cpu": open("/proc/cpuinfo").read().split("model name")[1].split("\n")[0].strip("\t: ")
           if Path("/proc/cpuinfo").exists() else "?"}
    print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
