"""The live session (``talkhead.live.LiveSession``) at full size: first audio in -> first voiced frame out,
steady frames/s and the real-time factor, per precision (not a test).

Full-size FOMM (vox-adv-256) and default-size MS-Sync with random weights (``bench_animate``'s models
directory; random weights cost the same as trained ones), the example photo pasted back at its full size
(``frame="full"``), speech from ``examples/speech.wav`` (16 kHz).

- **first voiced frame**: the whole utterance pushed at once (a TTS that delivers faster than real time),
  then :meth:`LiveSession.pull` until the first speaking frame: from the ``push`` call to that frame's
  return (MS-Sync warm-up and its first steps, the render, the paste-back). With speech arriving in real
  time, the lookahead (:attr:`LiveSession.lookahead_ms`) and one frame come on top.
- **steady**: the next ``--frames`` speaking frames pulled back to back: frames/s, ms per frame, and the
  real-time factor (wall time / the speech they carry; below 1 is faster than real time).
  Each frame's cost is split into :meth:`LiveSession.step` (MS-Sync's next keypoints) and
  :meth:`LiveSession.render` (FOMM render + paste-back).
- **idle**: ``--frames`` idle frames pulled after the speech (render + paste-back only).

    python benchmarks/bench_live.py --precision fp32 bf16 --frames 50
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def run_one(models_dir: Path, precision: str, frames: int, frame: str, device: str = "cpu") -> dict:
    import numpy as np
    import soundfile as sf
    import torch

    from talkhead.live import LiveSession
    from talkhead.pipeline import AnimateOptions, Pipeline

    speech, sr = sf.read(ROOT / "examples" / "speech.wav", dtype="int16")
    need = int((frames + 10) / 25 * sr)
    speech = np.resize(speech, max(need, len(speech)))
    pipe = Pipeline(AnimateOptions(models_dir=models_dir, device=device, landmarker="dlib", offline=True,
                                   frame=frame, precision=precision))
    session = LiveSession(pipe, fps=25)
    t0 = time.perf_counter()
    session.set_photo(ROOT / "examples" / "astronaut.png")
    out = {"precision": precision, "frame": frame, "torch_threads": torch.get_num_threads(),
           "set_photo_s": time.perf_counter() - t0, "lookahead_ms": session.lookahead_ms,
           "frame_size": session.frame_size}
    print(f"  {precision}: set_photo {out['set_photo_s']:.1f} s", file=sys.stderr, flush=True)
    session.pull()  # one idle frame: first-call allocations out of the figures
    t0 = time.perf_counter()
    session.push(speech, sr)
    session.end_speech()
    idle_before = 0
    while not (f := session.pull()).speaking:
        idle_before += 1
    out["first_voiced_frame_s"] = time.perf_counter() - t0
    print(f"  {precision}: first voiced frame after {out['first_voiced_frame_s']:.2f} s", file=sys.stderr, flush=True)
    out["idle_frames_before"] = idle_before
    t0 = time.perf_counter()
    n, step_s, render_s = 0, 0.0, 0.0
    while n < frames:
        t1 = time.perf_counter()
        f = session.step()                     # MS-Sync (keypoints) and the frame's audio
        t2 = time.perf_counter()
        f.image = session.render(f.keypoints)  # FOMM render + paste-back
        render_s += time.perf_counter() - t2
        step_s += t2 - t1
        assert f.speaking
        n += 1
    wall = time.perf_counter() - t0
    out["speaking_step_ms"] = 1000 * step_s / n
    out["speaking_render_ms"] = 1000 * render_s / n
    out["speaking_fps"] = n / wall
    out["speaking_ms_per_frame"] = 1000 * wall / n
    out["rtf"] = wall / (n / 25)
    print(f"  {precision}: {n} speaking frames in {wall:.1f} s", file=sys.stderr, flush=True)
    session.interrupt()
    t0 = time.perf_counter()
    for _ in range(frames):
        assert not session.pull().speaking
    wall = time.perf_counter() - t0
    out["idle_fps"] = frames / wall
    out["idle_ms_per_frame"] = 1000 * wall / frames
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--precision", nargs="+", default=["fp32", "bf16"])
    ap.add_argument("--frames", type=int, default=50)
    ap.add_argument("--frame", choices=("full", "crop"), default="full")
    ap.add_argument("--models-dir", type=Path, help="an existing full-size random-weight models dir")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (a GPU: CUDA synchronises with each frame's host copy)")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    from bench_animate import _make_models_dir

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        models_dir = args.models_dir or _make_models_dir(Path(tmp) / "models")
        for precision in args.precision:
            load = open("/proc/loadavg").read().split()[0]
            res = run_one(models_dir, precision, args.frames, args.frame, args.device)
            res["load_avg_before"] = float(load)
            res["load_avg_after"] = float(open("/proc/loadavg").read().split()[0])
            results.append(res)
            print(f"{precision}: {res['frame_size'][0]}x{res['frame_size'][1]} | lookahead {res['lookahead_ms']:.0f} ms | "
                  f"first voiced frame {res['first_voiced_frame_s'] * 1000:.0f} ms after the push | speaking "
                  f"{res['speaking_fps']:.2f} frames/s ({res['speaking_ms_per_frame']:.0f} ms/frame: MS-Sync step "
                  f"{res['speaking_step_ms']:.0f} + render {res['speaking_render_ms']:.0f}; RTF {res['rtf']:.2f}) | "
                  f"idle {res['idle_fps']:.2f} frames/s ({res['idle_ms_per_frame']:.0f} ms/frame) | "
                  f"{res['torch_threads']} torch threads | load avg {res['load_avg_before']:.2f} -> "
                  f"{res['load_avg_after']:.2f}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
