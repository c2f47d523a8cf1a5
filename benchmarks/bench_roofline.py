"""Roofline of one FOMM frame on this CPU: each layer group's work, time, rate and bound (not a test).

The full-size vox-adv-256 FOMM with random weights (``bench_render.build``), batch 1, the source encoded
once, rendered frame after frame on the default (fused) path. Each layer group is timed inside the real
``FOMM.render`` (its methods and modules wrapped with timers; nested groups subtracted):

- dense motion: keypoint heatmaps, sparse motions, the source's ``grid_sample`` warps, softmax, the
  deformation sum (``DenseMotionNetwork.motion`` minus the two below);
- hourglass: the dense-motion hourglass (13 convolutions, 44 -> 1024 -> 64 channels, 64x64 .. 2x2);
- motion heads: the mask + occlusion 7x7 convolutions (108 -> 12 channels at 64x64);
- feature warp: ``grid_sample`` of the 256-channel source features and the occlusion multiply;
- bottleneck: the 12 residual 3x3 convolutions (256 channels, 64x64) and the residual stream's batch norms;
- up blocks: the generator's two up blocks (nearest x2 + 3x3, computed in the sub-pixel form);
- final 7x7: the 64 -> 3 convolution at 256x256 and the sigmoid;
- paste-back: ``talkhead.compose.Compositor.paste`` of the frame into the 1920x1080 photo (``bench_compose``);
- encoding: ``talkhead.video.VideoWriter`` (x264 medium, crf 18) of 1080p frames: this process's pipe
  writes plus ffmpeg's own CPU time (a child's, read from ``RUSAGE_CHILDREN``), per frame.

GFLOP per frame: ``torch.utils.flop_counter`` on the plain (reference-shaped) path: the model's nominal
work (a 3x3 convolution counts its 9 multiply-adds per output and channel pair whatever algorithm runs;
the up blocks count the 3x3 on the upsampled map). "rate" = nominal GFLOP / measured time, so a group
that runs a Winograd or sub-pixel kernel can exceed the SGEMM peak. "bound": the group's convolutions
each timed alone with the best kernel this CPU has for its shape, in this run (oneDNN's direct kernel
on pre-packed weights, the sub-pixel 2x2 form, each Winograd transform, the tap GEMM), summed: how fast the group
could go if everything around its convolutions were free. "SGEMM": a 2048^3 ``torch.mm``, the CPU's
practical float32 peak.

Each mode (``--modes``: 1 thread / process CPU time, the robust figure on a shared machine, and 2 threads
/ wall time) times ``--rounds`` frames after a warm-up; the report gives medians. ``--engine direct``
switches the Winograd convolutions off (``winograd_inference(False)``) for a before/after in one run.

    python benchmarks/bench_roofline.py                        # 1 thread CPU time and 2 threads wall
    python benchmarks/bench_roofline.py --rounds 9 --modes 1:cpu --json out.json
"""
from __future__ import annotations

import argparse
import contextlib
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

GROUPS = ["dense motion (heatmaps, sparse motions, warps)", "hourglass", "motion heads 7x7", "feature warp",
          "bottleneck", "up blocks", "final 7x7", "paste-back 1080p", "encoding 1080p"]


def cpu_info() -> dict:
    """The CPU kind torch runs on: its capability, the vector/matrix extensions, the model name."""
    flags, model = set(), "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
            if line.startswith("model name") and model == "?":
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    caps = {}
    try:
        caps = torch.cpu.get_capabilities()
    except Exception:  # a private torch API
        pass
    ext = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16")
           if f in flags or caps.get(f)]
    return {"model": model, "torch_capability": torch.backends.cpu.get_cpu_capability(), "extensions": ext,
            "cores": torch.get_num_threads() if not caps else caps.get("num_physical_cores")}


class Timers:
    """Accumulates time spent inside wrapped callables, by group (nested groups are recorded as they are)."""

    def __init__(self, clock):
        self.clock, self.total = clock, {}

    def wrap(self, owner, attr: str, group: str) -> None:
        inner = getattr(owner, attr)

        def timed(*args, **kwargs):
            t = self.clock()
            try:
                return inner(*args, **kwargs)
            finally:
                self.total[group] = self.total.get(group, 0.0) + self.clock() - t
        setattr(owner, attr, timed)


def instrument(fomm, timers: Timers) -> None:
    """Wrap the generator's and dense motion network's parts (instance attributes: the model's own code runs)."""
    gen, dm = fomm.generator, fomm.generator.dense_motion_network
    timers.wrap(dm, "motion", "motion")
    timers.wrap(dm.hourglass, "forward", "hourglass")
    timers.wrap(dm, "_heads_fused", "heads")
    timers.wrap(dm.mask, "forward", "heads")  # plain path: the two heads as modules
    if dm.occlusion is not None:
        timers.wrap(dm.occlusion, "forward", "heads")
    timers.wrap(gen, "warp", "warp")
    timers.wrap(gen, "decode", "decode")
    timers.wrap(gen.bottleneck, "forward", "bottleneck")
    for block in gen.up_blocks:
        timers.wrap(block, "forward", "up")


GROUP_NAMES = {"motion": GROUPS[0], "hourglass": GROUPS[1], "heads": GROUPS[2], "warp": GROUPS[3],
               "bottleneck": GROUPS[4], "up": GROUPS[5], "decode": GROUPS[6]}
"""Innermost timer -> group (a convolution belongs to the innermost group it runs in)."""


def groups_of(total: dict) -> dict:
    """Raw nested totals -> the disjoint model groups of :data:`GROUPS` (seconds)."""
    g = lambda k: total.get(k, 0.0)  # noqa: E731
    return {GROUPS[0]: g("motion") - g("hourglass") - g("heads"), GROUPS[1]: g("hourglass"),
            GROUPS[2]: g("heads"), GROUPS[3]: g("warp"), GROUPS[4]: g("bottleneck"), GROUPS[5]: g("up"),
            GROUPS[6]: g("decode") - g("bottleneck") - g("up")}


def count_flops(fomm, enc, kp_d) -> tuple[dict, list]:
    """Nominal GFLOP per group (plain path) and the convolutions each group runs: (group, conv, input shape)."""
    from torch.utils.flop_counter import FlopCounterMode

    from talkhead.fomm.blocks import fused_inference

    flops, convs, stack = {}, [], []
    gen, dm = fomm.generator, fomm.generator.dense_motion_network
    originals = []

    def wrap(owner, attr, group):
        inner = getattr(owner, attr)
        originals.append((owner, attr))

        def counted(*args, **kwargs):
            stack.append(group)
            mode = FlopCounterMode(display=False)
            try:
                with mode:
                    return inner(*args, **kwargs)
            finally:
                stack.pop()
                flops[group] = flops.get(group, 0) + mode.get_total_flops()
        setattr(owner, attr, counted)

    from talkhead.fomm.blocks import UpBlock2d

    up_convs = {id(m.conv) for m in [*dm.modules(), *gen.modules()] if isinstance(m, UpBlock2d)}
    for m in {id(m): m for m in [*dm.modules(), *gen.modules()]}.values():  # first: innermost wrappers
        if isinstance(m, torch.nn.Conv2d) and m.groups == 1:
            def record(x, *rest, m=m, inner=m.forward):
                convs.append((GROUP_NAMES[stack[-1]], m, tuple(x.shape), id(m) in up_convs))
                return inner(x, *rest)
            originals.append((m, "forward"))
            m.forward = record
    wrap(dm, "motion", "motion")
    wrap(dm.hourglass, "forward", "hourglass")
    wrap(dm.mask, "forward", "heads")
    if dm.occlusion is not None:
        wrap(dm.occlusion, "forward", "heads")
    wrap(gen, "warp", "warp")
    wrap(gen, "decode", "decode")
    wrap(gen.bottleneck, "forward", "bottleneck")
    for block in gen.up_blocks:
        wrap(block, "forward", "up")
    try:
        with fused_inference(False):
            fomm.render(enc, kp_d)
    finally:
        for owner, attr in originals:
            owner.__dict__.pop(attr, None)
    return {k: v / 1e9 for k, v in groups_of(flops).items()}, convs


def _clocked(fn, clock, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls (after one warm-up)."""
    fn()
    times = []
    for _ in range(repeats):
        t = clock()
        fn()
        times.append(clock() - t)
    return statistics.median(times)


def conv_candidates(conv: torch.nn.Conv2d, shape: tuple, upsampled: bool) -> dict:
    """name -> zero-argument callable computing this convolution (or its sub-pixel form) with one kernel."""
    from talkhead.fomm import winograd as wg

    x = torch.randn(shape).relu_().contiguous(memory_format=torch.channels_last)
    weight = conv.weight.detach().contiguous(memory_format=torch.channels_last)
    bias = conv.bias.detach() if conv.bias is not None else weight.new_zeros(weight.shape[0])
    pad = list(conv.padding)
    cands = {}

    def direct(x, weight, bias, pad):
        packed = torch._C._nn.mkldnn_reorder_conv2d_weight(weight.to_mkldnn(), pad, [1, 1], [1, 1], 1, list(x.shape))
        return lambda: torch.ops.mkldnn._convolution_pointwise(x, packed, bias, pad, [1, 1], [1, 1], 1, "none", [], "")

    k = conv.kernel_size[0]
    transforms = list(getattr(wg, "TRANSFORMS", {}).values())
    if upsampled and k == 3 and shape[2] >= 32:
        # the plain path saw the upsampled map: the sub-pixel 2x2 form on the low-resolution input instead
        from talkhead.fomm.blocks import _subpixel_weight

        xl = x[:, :, ::2, ::2].contiguous(memory_format=torch.channels_last)
        w2 = _subpixel_weight(conv.weight.detach()).contiguous(memory_format=torch.channels_last)
        b2 = bias.repeat(4)
        cands["direct 3x3 (upsampled)"] = direct(x, weight, bias, pad)
        cands["direct sub-pixel 2x2"] = direct(xl, w2, b2, [1, 1])
        for t in transforms:
            if t.r == 2:
                u = wg.winograd_weight(w2, t)
                cands[f"sub-pixel {t.name}"] = lambda u=u, t=t: wg.winograd_conv(xl, u, b2, t, padding=1)
        return cands
    cands["direct"] = direct(x, weight, bias, pad)
    if hasattr(wg, "tap_gemm_conv") and k >= 5 and conv.out_channels <= 4:
        cands["tap GEMM"] = lambda: wg.tap_gemm_conv(x, conv.weight.detach(), bias)
    if k == 3 and tuple(conv.padding) == (1, 1):
        for t in transforms:
            if t.r == 3:
                u = wg.winograd_weight(conv.weight.detach(), t)
                cands[t.name] = lambda u=u, t=t: wg.winograd_conv(x, u, bias, t, padding=1)
        if not transforms and hasattr(wg, "winograd_conv3x3"):  # the F(2x2, 3x3)-only module of earlier releases
            u = wg.winograd_weight(conv.weight.detach())
            cands["F(2x2,3x3)"] = lambda: wg.winograd_conv3x3(x, u, bias)
    return cands


def measure_bounds(convs: list, clock, repeats: int) -> tuple[dict, dict]:
    """Per group: seconds if each convolution ran alone with its fastest kernel; and per distinct shape
    the rate (nominal GFLOP/s) of every kernel tried."""
    bound, rates, seen = {}, {}, {}
    for group, conv, shape, upsampled in convs:
        key = (group, tuple(conv.weight.shape), shape)
        if key not in seen:
            nominal = 2 * conv.weight[0].numel() * conv.out_channels * shape[2] * shape[3] / 1e9
            with torch.inference_mode():
                times = {name: _clocked(fn, clock, repeats)
                         for name, fn in conv_candidates(conv, shape, upsampled).items()}
            seen[key] = min(times.values())
            label = (f"{group.split(' (')[0]}: {shape[1]}->{conv.out_channels} {conv.kernel_size[0]}x"
                     f"{conv.kernel_size[1]} at {shape[2]}x{shape[3]}{' (upsampled)' if upsampled else ''}")
            rates[label] = {name: nominal / t for name, t in times.items()} | {"GFLOP": nominal}
        bound[group] = bound.get(group, 0.0) + seen[key]
    return bound, rates


def sgemm_peak(clock, n: int = 2048) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n ** 3 / 1e9 / _clocked(lambda: torch.mm(a, b), clock, 3)


def paste_and_encode(frame: torch.Tensor, frames: int) -> tuple[float, float, float, float]:
    """Per frame: paste-back CPU seconds (1 OpenCV thread); 1080p encoding CPU seconds (this process's pipe
    writes + ffmpeg's) and wall seconds; 256x256 encoding (the crop alone, ``--frame crop``) CPU seconds."""
    import cv2
    from bench_compose import ASTRO_EXTENT, S, photo_1080p

    from talkhead.compose import Compositor
    from talkhead.crop import fomm_crop
    from talkhead.landmarks import Face
    from talkhead.video import VideoWriter

    photo, k, left = photo_1080p()
    x0, y0, x1, y1 = ASTRO_EXTENT
    extent = (x0 * k + left, y0 * k, x1 * k + left, y1 * k)
    face = Face(box=extent, score=2.0, landmarks=np.array([extent[:2], extent[2:]], np.float32) - 1, backend="dlib")
    comp = Compositor(photo, fomm_crop(photo, face, S, pad=True))
    crops = np.repeat(frame.permute(0, 2, 3, 1).numpy(), frames, axis=0)
    buf = comp.new_buffer(frames)
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    comp.paste(crops[:1], out=buf[:1])
    t = time.process_time()
    comp.paste(crops, out=buf)
    paste = (time.process_time() - t) / frames
    cv2.setNumThreads(threads)
    def encode(images: np.ndarray) -> tuple[float, float]:
        with tempfile.TemporaryDirectory() as tmp:
            kids = resource.getrusage(resource.RUSAGE_CHILDREN)
            t, w0 = time.process_time(), time.perf_counter()
            with VideoWriter(Path(tmp) / "out.mp4", size=(images.shape[2], images.shape[1]), fps=25) as writer:
                for i in range(frames):
                    writer.write(images[i:i + 1])
            own, wall = time.process_time() - t, time.perf_counter() - w0
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
        child = (after.ru_utime + after.ru_stime) - (kids.ru_utime + kids.ru_stime)
        return (own + child) / frames, wall / frames

    full_cpu, full_wall = encode(buf)
    crop_cpu, _ = encode(np.ascontiguousarray(crops))
    return paste, full_cpu, full_wall, crop_cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7, help="frames timed per mode")
    ap.add_argument("--modes", nargs="+", default=["1:cpu", "2:wall"], help="THREADS:CLOCK, clock cpu or wall")
    ap.add_argument("--engine", choices=["fused", "direct"], default="fused",
                    help="direct: Winograd convolutions off (winograd_inference(False))")
    ap.add_argument("--encode-frames", type=int, default=25)
    ap.add_argument("--no-bounds", action="store_true", help="skip the per-convolution kernel timings")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from bench_render import build

    from talkhead.fomm.blocks import winograd_inference
    from talkhead.keypoints import Keypoints

    info = cpu_info()
    print(f"CPU: {info['model']}; torch capability {info['torch_capability']}; extensions: "
          f"{', '.join(info['extensions'])}; torch {torch.__version__}; engine {args.engine}", flush=True)
    fomm, source, kp_source, kp_driving = build()
    enc = fomm.encode_source(source, Keypoints.from_dict(kp_source))
    kp_d = Keypoints.from_dict(kp_driving)
    gflop, convs = count_flops(fomm, enc, kp_d)
    print(f"nominal GFLOP per frame (plain path): {sum(gflop.values()):.1f}", flush=True)
    switch = winograd_inference(False) if args.engine == "direct" else contextlib.nullcontext()
    results = {"cpu": info, "engine": args.engine, "gflop": gflop, "modes": {}}
    with switch:
        frame = fomm.render(enc, kp_d)
        paste, encode_cpu, encode_wall, encode_crop = paste_and_encode(frame, args.encode_frames)
        for spec in args.modes:
            threads, clock_name = spec.split(":")
            torch.set_num_threads(int(threads))
            clock = time.process_time if clock_name == "cpu" else time.perf_counter
            timers = Timers(clock)
            instrument(fomm, timers)
            try:
                fomm.render(enc, kp_d)  # warm-up (packing, workspace)
                per_round, frame_times = [], []
                for _ in range(args.rounds):
                    timers.total = {}
                    t = clock()
                    fomm.render(enc, kp_d)
                    frame_times.append(clock() - t)
                    per_round.append(groups_of(timers.total))
            finally:
                for owner in (fomm.generator, fomm.generator.dense_motion_network,
                              fomm.generator.dense_motion_network.hourglass, fomm.generator.bottleneck,
                              fomm.generator.dense_motion_network.mask, fomm.generator.dense_motion_network.occlusion,
                              *fomm.generator.up_blocks):
                    if owner is not None:
                        for attr in ("forward", "motion", "_heads_fused", "warp", "decode"):
                            owner.__dict__.pop(attr, None)
            times = {g: statistics.median(r[g] for r in per_round) for g in per_round[0]}
            times[GROUPS[7]] = paste
            times[GROUPS[8]] = encode_cpu
            bound, rates = ({}, {}) if args.no_bounds else measure_bounds(convs, clock, 3)
            peak = sgemm_peak(clock)
            render = statistics.median(frame_times)
            total = render + paste + encode_cpu
            print(f"\n{threads} thread(s), {clock_name} time, {args.rounds} frames: render {render * 1e3:.0f} ms/frame "
                  f"(+ paste-back {paste * 1e3:.1f} ms, encoding {encode_cpu * 1e3:.1f} ms CPU / "
                  f"{encode_wall * 1e3:.1f} ms wall per frame; 256x256 encoding {encode_crop * 1e3:.1f} ms CPU); "
                  f"SGEMM {peak:.0f} GFLOP/s")
            print(f"{'group':48s} {'GFLOP':>6s} {'ms':>7s} {'share':>6s} {'GFLOP/s':>8s} {'bound ms':>9s} {'of bound':>8s}")
            for g in GROUPS:
                t, f, b = times[g], gflop.get(g), bound.get(g)
                rate = f"{f / t:8.0f}" if f and t > 0 else f"{'-':>8s}"
                print(f"{g:48s} {f if f else 0:6.2f} {t * 1e3:7.1f} {t / total:6.1%} {rate} "
                      f"{(b * 1e3 if b else float('nan')):9.1f} {(t / b if b else float('nan')):8.2f}x")
            print(f"{'frame':48s} {sum(gflop.values()):6.2f} {total * 1e3:7.1f} {1:6.1%} "
                  f"{sum(gflop.values()) / render:8.0f} {sum(bound.values()) * 1e3 if bound else float('nan'):9.1f}")
            if rates:
                print("kernels per convolution shape (nominal GFLOP/s):")
                for label, r in rates.items():
                    print(f"  {label:50s} {r['GFLOP']:.3f} GFLOP: "
                          + ", ".join(f"{k} {v:.0f}" for k, v in r.items() if k != "GFLOP"))
            results["modes"][spec] = {"render_s": render, "times_s": times, "bound_s": bound, "sgemm_gflops": peak,
                                      "kernel_rates": rates, "encode_wall_s": encode_wall,
                                      "encode_256_cpu_s": encode_crop}
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
