"""FOMM render at fp32 / bf16 / fp16 (``FOMM.precision``): speed and deviation from fp32 (not a test).

Full-size vox-adv-256 FOMM with random weights and randomised batch-norm statistics
(``bench_render.build``: He-initialised convolutions, so activations are of trained-model size),
one source and ``--batch-size`` driving keypoint sets near it, the source encoded once. Each
precision renders the same frames; the variants alternate round by round in one process. Reports
seconds per frame (median), the median per-round speed ratio to fp32, and the frames' deviation
from fp32: max abs (frames in [0, 1]), max difference after the uint8 conversion (8-bit levels)
and PSNR (peak 1). ``--tiny`` uses the tiny test FOMM (tests/data/fomm) instead.

A random-weight deviation is not a trained-weight figure: trained activations, jacobians and
output statistics differ. Re-measure with the real checkpoint (``--checkpoint``) where you have it.

    python benchmarks/bench_precision.py                       # CPU: fp32 vs bf16 (+ fp16 with --fp16)
    python benchmarks/bench_precision.py --threads 1 --clock cpu   # on a busy machine
    python benchmarks/bench_precision.py --device cuda --batch-size 8 --fp16
    python benchmarks/bench_precision.py --checkpoint ~/.cache/talkhead/fomm/vox-adv-cpk.pth.tar
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="cpu: process CPU seconds (robust on a shared, loaded machine; CPU devices only)")
    ap.add_argument("--fp16", action="store_true", help="also fp16 (slow on CPU: ~10x fp32)")
    ap.add_argument("--tiny", action="store_true", help="the tiny test FOMM instead of the full-size one")
    ap.add_argument("--checkpoint", type=Path, help="a real vox-adv-cpk.pth.tar instead of random weights")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from talkhead.fomm import default_config_path, load_fomm
    from talkhead.keypoints import Keypoints

    device = torch.device(args.device)
    if args.tiny or args.checkpoint:
        cfg, ckpt = ((ROOT / "tests/data/fomm/tiny.yaml", ROOT / "tests/data/fomm/tiny-cpk.pth.tar") if args.tiny
                     else (default_config_path(), args.checkpoint))
        fomm = load_fomm(cfg, ckpt, device=device)
        g = torch.Generator().manual_seed(0)
        source = torch.rand(1, 3, fomm.frame_size, fomm.frame_size, generator=g)
        kp = fomm.detect(source).to("cpu")
        kp_s = kp.as_dict()
    else:
        from bench_render import build

        fomm, source, kp_s, _ = build()
        fomm.generator.to(device), fomm.kp_detector.to(device)
        fomm.device = device
    kp_source = Keypoints.from_dict(kp_s).to(device)
    g = torch.Generator().manual_seed(1)
    b = args.batch_size
    kp_driving = Keypoints(kp_source.value.cpu() + 0.05 * torch.randn(b, 10, 2, generator=g),
                           kp_source.jacobian.cpu() + 0.05 * torch.randn(b, 10, 2, 2, generator=g)).to(device)
    source = source.to(device)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    names = ["fp32", "bf16"] + (["fp16"] if args.fp16 else [])
    frames, times = {}, {n: [] for n in names}
    encoding = fomm.encode_source(source, kp_source)  # float32 whatever the precision: one for all
    for n in names:  # warm-up + the frames compared
        fomm.precision = n
        frames[n] = fomm.render(encoding, kp_driving).cpu()
    for _ in range(args.rounds):
        for n in names:
            fomm.precision = n
            _sync(device)
            t = clock()
            fomm.render(encoding, kp_driving)
            _sync(device)
            times[n].append((clock() - t) / b)
    fomm.precision = "fp32"
    ref = frames["fp32"]
    ref8 = torch.round(ref * 255)
    kind = "tiny test FOMM" if args.tiny else ("checkpoint " + str(args.checkpoint) if args.checkpoint
                                               else "full-size vox-adv-256, random weights")
    print(f"{kind}; device {device}, batch {b}, torch threads {torch.get_num_threads()}, {args.rounds} rounds, "
          f"{args.clock} clock")
    print("| precision | s/frame (median) | speed vs fp32 | max abs diff | max diff (8-bit levels) | PSNR vs fp32 |")
    print("|---|---|---|---|---|---|")
    for n in names:
        d = (frames[n] - ref).abs()
        mse = float((d.double() ** 2).mean())
        psnr = float("inf") if mse == 0 else 10 * np.log10(1 / mse)
        levels = float((torch.round(frames[n] * 255) - ref8).abs().max())
        speed = statistics.median(a / c for a, c in zip(times["fp32"], times[n]))
        print(f"| {n} | {statistics.median(times[n]):.4f} | {speed:.2f} | {float(d.max()):.2e} | {levels:.0f} | "
              f"{psnr:.1f} dB |")


if __name__ == "__main__":
    main()
