"""Writer thread on or off: wall time of the render -> paste-back -> ffmpeg stream (not a test).

Runs :meth:`talkhead.pipeline.Pipeline.render_into` into a real :class:`talkhead.video.VideoWriter`
(H.264, preset medium, crf 18) with the full-size vox-adv-256 FOMM on random weights
(``bench_render.build``), driving keypoints near the source's (noise), and either ``--frame full``
(the 1080p astronaut photo of ``bench_compose.py``, face square ~262 px, colour matching
``lowfreq``) or ``--frame crop`` (256x256 frames). The two settings of ``writer_thread`` alternate
in one process, round by round (the machine is shared); the report gives each one's median wall
seconds, frames/s and the median of the per-round ratios (threaded / synchronous wall: < 1 means
the thread helps), and checks that both wrote the same frames (decoded MP4s equal).

    python benchmarks/bench_writer.py                                  # 24 frames, batch 1, 3 rounds
    python benchmarks/bench_writer.py --frames 48 --batch-size 1 --rounds 5 --frame crop
    python benchmarks/bench_writer.py --precision bf16                 # CPUs with native bf16 only
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and its reaped children (ffmpeg)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--frame", choices=("full", "crop"), default="full")
    ap.add_argument("--precision", choices=("fp32", "fp16", "bf16"), default="fp32")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from bench_compose import ASTRO_EXTENT, S, photo_1080p
    from bench_render import build

    from talkhead.compose import Compositor
    from talkhead.crop import fomm_crop
    from talkhead.ffmpeg import read_frames
    from talkhead.keypoints import Keypoints
    from talkhead.landmarks import Face
    from talkhead.options import AnimateOptions
    from talkhead.pipeline import Pipeline, held_batches
    from talkhead.video import VideoWriter

    fomm, source, kp_s, kp_d = build()
    fomm.precision = args.precision
    kp_source = Keypoints.from_dict(kp_s)
    g = torch.Generator().manual_seed(7)
    n = args.frames
    kp_driving = Keypoints(kp_source.value + 0.03 * torch.randn(n, 10, 2, generator=g),
                           kp_source.jacobian + 0.03 * torch.randn(n, 10, 2, 2, generator=g))
    photo, k, left = photo_1080p()
    x0, y0, x1, y1 = ASTRO_EXTENT
    extent = (x0 * k + left, y0 * k, x1 * k + left, y1 * k)
    face = Face(box=extent, score=2.0, landmarks=np.array([extent[:2], extent[2:]], np.float32) - 1, backend="dlib")
    crop = fomm_crop(photo, face, S, pad=True)
    src = torch.from_numpy(np.ascontiguousarray(crop.crop, dtype=np.float32)).permute(2, 0, 1)[None]
    fomm.render(fomm.encode_source(src, kp_source), kp_driving[:1])  # warm up
    size = (photo.shape[1], photo.shape[0]) if args.frame == "full" else (S, S)

    pipes = {name: Pipeline(AnimateOptions(device="cpu", batch_size=args.batch_size, writer_thread=on,
                                           frame=args.frame), renderer=fomm, motion=lambda *a, **kw: None)
             for name, on in (("sync", False), ("thread", True))}
    times: dict[str, list[float]] = {name: [] for name in pipes}
    cpu: dict[str, list[float]] = {name: [] for name in pipes}
    outputs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name, pipe in pipes.items():
                out = Path(tmp) / f"{name}.mp4"
                comp = Compositor(photo, crop) if args.frame == "full" else None
                t, c = time.perf_counter(), _cpu_seconds()
                with VideoWriter(out, size=size, fps=25, overwrite=True) as w:
                    pipe.render_into(w, src, kp_source, held_batches(kp_driving, n, pipe.batch_size), n, compositor=comp)
                times[name].append(time.perf_counter() - t)
                cpu[name].append(_cpu_seconds() - c)
                if r == 0:
                    _, it = read_frames(out, "null", size)
                    outputs[name] = np.stack(list(it))
    same = np.array_equal(outputs["sync"], outputs["thread"])
    print(f"{n} frames, batch {args.batch_size}, --frame {args.frame} ({size[0]}x{size[1]}), precision "
          f"{args.precision}, torch threads {torch.get_num_threads()}, {args.rounds} rounds alternating")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:6s}: median {med:6.2f} s  ({n / med:5.2f} frames/s)  all: {', '.join(f'{t:.2f}' for t in ts)}"
              f"   CPU (this process + ffmpeg) median {statistics.median(cpu[name]):6.2f} s")
    ratio = statistics.median(a / b for a, b in zip(times["thread"], times["sync"]))
    print(f"  thread / sync wall, median of per-round ratios: {ratio:.3f}   decoded frames identical: {same}")


if __name__ == "__main__":
    main()
