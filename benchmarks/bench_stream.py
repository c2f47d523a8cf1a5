"""Streaming ``animate``: time to the first frame written, and the whole run's peak RSS, against the
speech's length (not a test).

Full-size FOMM (vox-adv-256) and default-size MS-Sync with random weights (``bench_animate``'s models
directory), the example photo, speech made by repeating ``examples/speech.wav`` (16 kHz WAV). Each length
runs ``Pipeline(single_use=True).animate`` (what ``talkhead animate`` runs) in a fresh subprocess, so its
peak RSS (``ru_maxrss``) is its own.

- **time to first frame**: from the ``animate`` call (models not yet loaded, as on the command line) to
  the first ``VideoWriter.write`` (the first frame handed to ffmpeg).
- **peak RSS**: the child's maximum resident set. ``--render-frames N`` (this script only) renders,
  pastes and encodes the first ``N`` frames and then only draws the remaining keypoint batches without
  rendering them, so the keypoints (decode, logfbank, MS-Sync) still cover the whole speech while an
  hour does not take days to render on a CPU.

    python benchmarks/bench_stream.py --seconds 5 60 600 --render-frames 8      # time to first frame
    python benchmarks/bench_stream.py --seconds 5 600 3600 --render-frames 50   # peak RSS

Each child also samples its VmRSS every 20 ms and prints the largest value in each phase: before the first
keypoint window, first window -> first frame written, the rest of the rollout, and after it (finish, mux).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def _make_audio(seconds: float, path: Path) -> None:
    import numpy as np
    import soundfile as sf

    clip, sr = sf.read(ROOT / "examples" / "speech.wav", dtype="int16")
    with sf.SoundFile(path, "w", samplerate=sr, channels=1, subtype="PCM_16") as f:  # written in pieces
        left = int(seconds * sr)
        while left > 0:
            f.write(clip[:left])
            left -= min(left, len(clip))
    del np


def _vm_rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_one(seconds: float, models_dir: Path, workdir: Path, render_frames: int, frame: str) -> dict:
    import torch

    from talkhead.pipeline import AnimateOptions, Pipeline, SpeechMotion
    from talkhead.video import VideoWriter

    audio = workdir / f"speech_{seconds:g}s.wav"
    if not audio.exists():
        _make_audio(seconds, audio)
    out: dict = {"seconds": seconds, "torch_threads": torch.get_num_threads(), "render_frames": render_frames}
    marks: dict = {}
    real_write = VideoWriter.write

    def write(self, frames):
        marks.setdefault("first_frame", time.perf_counter())
        return real_write(self, frames)
    VideoWriter.write = write

    real_render_into = Pipeline.render_into

    def render_into(self, writer, source, kp_source, batches, total, progress=None, **kw):
        def cut():
            n = 0
            for batch in batches:
                if render_frames and n >= render_frames:
                    continue  # drawn (the keypoints are generated), not rendered
                n += len(batch)
                yield batch
        return real_render_into(self, writer, source, kp_source, cut(), total, progress, **kw)
    Pipeline.render_into = render_into

    real_windows = SpeechMotion._windows

    def windows(self, *args, **kwargs):
        for w in real_windows(self, *args, **kwargs):
            marks.setdefault("first_window", time.perf_counter())
            yield w
        marks["rollout_end"] = time.perf_counter()
    SpeechMotion._windows = windows

    trace: list = []
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            trace.append((time.perf_counter(), _vm_rss_mib()))
            stop.wait(0.02)
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()

    pipe = Pipeline(AnimateOptions(models_dir=models_dir, device="cpu", landmarker="dlib", offline=True,
                                   overwrite=True, frame=frame, max_seconds=0), single_use=True)
    t0 = time.perf_counter()
    result = pipe.animate(ROOT / "examples" / "astronaut.png", audio, workdir / f"out_{seconds:g}.mp4")
    out["wall_s"] = time.perf_counter() - t0
    out["first_frame_s"] = marks["first_frame"] - t0
    out["frames"] = result.num_frames
    out["keypoint_frames"] = len(result.kp_driving) if result.kp_driving is not None else None
    out["timings"] = result.timings
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    stop.set()
    sampler.join()
    edges = [("call", t0), *sorted(marks.items(), key=lambda kv: kv[1]), ("end", time.perf_counter())]
    out["phases"] = [{"from": a, "to": b, "seconds": tb - ta,
                      "max_rss_mib": max((r for t, r in trace if ta <= t < tb), default=None)}
                     for (a, ta), (b, tb) in zip(edges, edges[1:])]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, nargs="+", default=[5, 60, 600])
    ap.add_argument("--render-frames", type=int, default=8, help="frames rendered (0 = all)")
    ap.add_argument("--frame", choices=("full", "crop"), default="full")
    ap.add_argument("--models-dir", type=Path, help="an existing full-size random-weight models dir")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--_child", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        seconds, models_dir, workdir, render_frames, frame = args._child
        print(json.dumps(run_one(float(seconds), Path(models_dir), Path(workdir), int(render_frames), frame)))
        return
    from bench_animate import _make_models_dir

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models_dir = args.models_dir or _make_models_dir(tmp / "models")
        for s in args.seconds:
            proc = subprocess.run([sys.executable, __file__, "--_child", str(s), str(models_dir), str(tmp),
                                   str(args.render_frames), args.frame], capture_output=True, text=True)
            if proc.returncode:
                print(proc.stderr[-3000:], file=sys.stderr)
                raise SystemExit(proc.returncode)
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            results.append(res)
            print(f"{s:>6g} s speech, {res['frames']:>6d} frames ({res['keypoint_frames']} keypoint sets) | first frame "
                  f"{res['first_frame_s']:.2f} s | wall {res['wall_s']:.1f} s | peak RSS {res['peak_rss_mib']:.0f} MiB | "
                  f"load avg {open('/proc/loadavg').read().split()[0]}", flush=True)
            print("        RSS by phase: " + "; ".join(
                f"{p['from']} -> {p['to']} {p['seconds']:.1f} s: max {p['max_rss_mib'] or float('nan'):.0f} MiB"
                for p in res["phases"]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
