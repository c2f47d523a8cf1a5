"""Render + restore + paste-back per frame at full size, beside the plain path, in one run; not a test.

The full-size vox-adv-256 FOMM and the full-size GFPGAN v1.4 network (both random weights: the cost
does not depend on the values), the astronaut photo at 1080p (1920 x 1080, its face found by dlib),
``Pipeline.render_into`` into a null writer (encoding excluded: the same for both paths):

* ``plain``: render -> paste-back (``--enhance none``);
* ``enhance``: render -> restore stage (align, GFPGAN 512, colour match, warp back at 2 S) -> paste-back
  of the 512 face (``--enhance gfpgan``).

Then the restorer alone on one aligned 512 face per variant: fp32 (default), fp32 channels_last,
bf16 autocast (only where the CPU has native bf16), with the largest difference from fp32. And the
peak RSS after a first batch of enhanced frames and after ``--frames`` more (flat with the clip's
length: the stage keeps nothing per frame).

    python benchmarks/bench_restore.py                     # 3 frames, 3 rounds alternating, torch's threads
    python benchmarks/bench_restore.py --frames 5 --rounds 3 --threads 2 --json out.json
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class NullWriter:
    def write(self, frames):
        pass


def native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from bench_compose import photo_1080p
    from bench_render import build

    from talkhead.gfpgan import GFPGANRestorer, GFPGANv1Clean
    from talkhead.keypoints import Keypoints
    from talkhead.landmarks import detect_faces, select_face
    from talkhead.options import AnimateOptions
    from talkhead.pipeline import Pipeline, held_batches

    fomm, _, _, _ = build()
    torch.manual_seed(1)
    restorer = GFPGANRestorer(GFPGANv1Clean().eval())
    photo, _, _ = photo_1080p()
    face = select_face(detect_faces(photo, backend="dlib"), source="astronaut 1080p")
    n = args.frames
    pipes = {name: Pipeline(AnimateOptions(device="cpu", enhance=enhance), renderer=fomm,
                            motion=lambda *a, **kw: None, landmarker=lambda image: [face], restorer=restorer)
             for name, enhance in (("plain", "none"), ("enhance", "gfpgan"))}
    p0 = pipes["plain"]
    from talkhead.crop import fomm_crop

    crop = fomm_crop(photo, face, p0.frame_size, pad=True)
    from talkhead.pipeline import SourcePhoto

    sp = SourcePhoto(path=Path("astronaut.png"), image=photo, crop=crop, face=face)
    src = p0.source_tensor(crop.crop)
    kp_source = p0.detect_source(src)
    g = torch.Generator().manual_seed(7)
    kp_driving = Keypoints(kp_source.value + 0.03 * torch.randn(n, 10, 2, generator=g),
                           kp_source.jacobian + 0.03 * torch.randn(n, 10, 2, 2, generator=g))
    stages = {name: p.restore_stage(sp, kp_source) for name, p in pipes.items()}
    comps = {name: p.compositor(sp, stages[name].out_size if stages[name] else None) for name, p in pipes.items()}
    with torch.inference_mode():
        fomm.render(fomm.encode_source(src, kp_source), kp_driving[:1])  # warm up
    times: dict[str, list[float]] = {name: [] for name in pipes}
    rss = {}
    for r in range(args.rounds):
        for name, p in pipes.items():
            t = time.perf_counter()
            with torch.inference_mode():
                p.render_into(NullWriter(), src, kp_source, held_batches(kp_driving, n, 1), n,
                              compositor=comps[name], restore=stages[name])
            times[name].append((time.perf_counter() - t) / n)
            if name == "enhance":
                rss[f"after round {r + 1} ({(r + 1) * n} enhanced frames)"] = _rss_mib()

    # the restorer alone, per variant
    face_in = torch.rand(1, 3, 512, 512, generator=g)
    variants = {"fp32": lambda: restorer(face_in)}
    cl = GFPGANRestorer(GFPGANv1Clean().eval())
    cl.load_state_dict(restorer.state_dict())
    for m in cl.modules():   # the encoder's plain convolutions (the modulated ones build their weights per call)
        if isinstance(m, torch.nn.Conv2d):
            m.weight.data = m.weight.data.contiguous(memory_format=torch.channels_last)
    variants["fp32 channels_last"] = lambda: cl(face_in.contiguous(memory_format=torch.channels_last))
    if native_bf16():
        def bf16():
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return restorer(face_in)
        variants["bf16 autocast"] = bf16
    ref = restorer(face_in)
    alone: dict[str, list[float]] = {k: [] for k in variants}
    diff = {}
    for r in range(args.rounds):
        for k, fn in variants.items():
            t = time.perf_counter()
            out = fn()
            alone[k].append(time.perf_counter() - t)
            diff[k] = float((out.float() - ref).abs().max())

    print(f"photo 1920x1080, face box {crop.box}, S = {p0.frame_size}, {n} frames x {args.rounds} rounds "
          f"alternating, torch threads {torch.get_num_threads()}, native bf16: {native_bf16()}")
    report = {"s_per_frame": {}, "restorer_alone_s": {}, "max_abs_diff_vs_fp32": diff, "peak_rss_mib": rss}
    for name, ts in times.items():
        report["s_per_frame"][name] = statistics.median(ts)
        print(f"  {name:8s}: median {statistics.median(ts):6.2f} s/frame   all: {', '.join(f'{t:.2f}' for t in ts)}")
    print(f"  enhance / plain: {statistics.median(a / b for a, b in zip(times['enhance'], times['plain'])):.1f}x")
    for k, ts in alone.items():
        report["restorer_alone_s"][k] = statistics.median(ts)
        print(f"  GFPGAN 512 alone, {k:20s}: median {statistics.median(ts):6.2f} s   max |diff| vs fp32 {diff[k]:.2e}")
    for k, v in rss.items():
        print(f"  peak RSS {k}: {v:.0f} MiB")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
