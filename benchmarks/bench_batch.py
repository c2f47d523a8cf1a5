"""Per-item overhead of ``talkhead batch`` (and the web page) by stage, before/after the fast batch (not a test).

Full-size random-weight models as ``bench_animate.py`` builds them (vox-adv-256 FOMM, default MS-Sync), the
dlib landmarker, ``--frame full``, and a batch of short speech clips (0.4-0.5 s cut from the example clip: the
overhead does not grow with the clip, the render does, and the shared machine is slow) on
several photos: the example astronaut (512x512) twice (a repeated photo), its mirror image, and a 1080p
version (``bench_compose.photo_1080p``).

Modes (all in ONE process, after one warm-up item, so the machine's load hits them alike; ``--rounds``
alternates them):

* ``sequential``: :func:`talkhead.batch.run_batch` with ``prepare_ahead=False`` and no source cache: every
  item is prepared, rendered and finished in turn (what a batch did before the fast batch);
* ``fast``: ``run_batch`` as shipped: the source cache (same photo content + options -> its landmarks, crop,
  keypoints and source encoding reused), the next item prepared in a thread while this one renders (with its
  first MS-Sync window), the previous item's ffmpeg finished in another thread;
* ``single``: each item as its own ``talkhead.animate`` call (a fresh single-use pipeline: models load
  every time), what running ``animate`` N times in one process costs;
* ``load``: only what ``single`` adds to ``sequential`` per item, measured: a fresh single-use pipeline's
  model load (``Pipeline.load``); N x single animate ~= N x (sequential wall per item + load).

Per item and stage it records the seconds spent (wrapping the stage functions): checks, audio scan (decode
+ level), photo decode, landmarks + crop, kp_source, source encoding, compositor, ffmpeg start, MS-Sync's
first window (streamed decode + logfbank + generation), later MS-Sync windows, render, paste-back, write,
ffmpeg finish (closing stdin: x264 encodes the frames still in its lookahead, AAC, mux). "overhead" is an
item's share of the batch's wall time minus what scales with its frames on the rendering thread (render,
paste-back, write, later MS-Sync windows): the per-item cost a batch pays besides rendering.
Stages that ran in another thread (the next item's preparation, the previous item's ffmpeg finish) are
listed apart ("+ overlapped"): they overlap a render. CPU seconds (this process + ffmpeg) per item are printed
too (on the loaded 2-core VM they swung with the other tenants as much as wall time: see the README).

    python benchmarks/bench_batch.py                       # sequential vs fast, 1 round, + model load
    python benchmarks/bench_batch.py --rounds 2 --modes sequential fast
    python benchmarks/bench_batch.py --json out.json
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

STAGES = ("checks", "audio_scan", "photo_decode", "landmarks_crop", "kp_source", "source_encode", "compositor",
          "ffmpeg_start", "kp_first_window", "kp_windows", "render", "paste", "write", "ffmpeg_finish")
PER_FRAME = ("render", "paste", "write", "kp_windows")
"""Stages whose time scales with the item's frames (not overhead when on the rendering thread)."""


class Recorder:
    """Seconds per (item, stage, thread kind), from wrapped stage functions; the item is the output
    file the current thread is working on (set by the wrapped ``Pipeline.run`` / ``Pipeline.prepare``)."""

    def __init__(self):
        self.local = threading.local()
        self.times: dict = defaultdict(float)
        self.lock = threading.Lock()
        self.patches: list = []

    def item(self) -> tuple[str, str]:
        return getattr(self.local, "item", "?"), ("main" if threading.current_thread() is threading.main_thread()
                                                  else "other")

    def add(self, stage: str, seconds: float) -> None:
        item, kind = self.item()
        with self.lock:
            self.times[(item, stage, kind)] += seconds

    def wrap(self, owner, name: str, stage: str) -> None:
        real = getattr(owner, name, None)
        if real is None:
            return
        rec = self

        @functools.wraps(real)
        def timed(*a, **kw):
            t = time.perf_counter()
            try:
                return real(*a, **kw)
            finally:
                rec.add(stage, time.perf_counter() - t)

        setattr(owner, name, timed)
        self.patches.append((owner, name, real))

    def wrap_item(self, owner, name: str, output_arg: int) -> None:
        """``owner.name(self, photo, motion, output, ...)``: the thread works on ``output``'s item."""
        real = getattr(owner, name, None)
        if real is None:
            return
        rec = self

        @functools.wraps(real)
        def scoped(*a, **kw):
            before = getattr(rec.local, "item", "?")
            rec.local.item = Path(a[output_arg] if len(a) > output_arg else kw["output"]).name
            try:
                return real(*a, **kw)
            finally:
                rec.local.item = before

        setattr(owner, name, scoped)
        self.patches.append((owner, name, real))

    def wrap_windows(self, owner) -> None:
        """Time each window of ``owner.stream`` (MS-Sync): the first apart from the rest."""
        real = owner.stream
        rec = self

        def stream(*a, **kw):
            it = iter(real(*a, **kw))
            first = True
            while True:
                t = time.perf_counter()
                try:
                    window = next(it)
                except StopIteration:
                    rec.add("kp_windows", time.perf_counter() - t)
                    return
                rec.add("kp_first_window" if first else "kp_windows", time.perf_counter() - t)
                first = False
                yield window

        owner.stream = stream
        self.patches.append((owner, "stream", real))

    def install(self) -> None:
        import talkhead.compose as compose
        import talkhead.image as image
        import talkhead.io as io
        import talkhead.pipeline as pipeline
        import talkhead.video as video
        from talkhead.fomm import FOMM
        from talkhead.mssync.windowed import StreamingMSSyncMotion

        self.wrap(io, "check_input_file", "checks")
        self.wrap(io, "check_outputs", "checks")
        self.wrap(pipeline.SpeechMotion, "prepare", "audio_scan")
        self.wrap(image, "load_image", "photo_decode")
        self.wrap(pipeline.Pipeline, "find_face", "landmarks_crop")
        self.wrap(pipeline.Pipeline, "detect_source", "kp_source")
        self.wrap(FOMM, "encode_source", "source_encode")
        self.wrap(FOMM, "render", "render")
        self.wrap(pipeline.Pipeline, "compositor", "compositor")
        self.wrap(video.VideoWriter, "__enter__", "ffmpeg_start")
        self.wrap(video.VideoWriter, "_finish", "ffmpeg_finish")
        self.wrap(video.VideoWriter, "write", "write")
        self.wrap(compose.Compositor, "paste", "paste")
        self.wrap_windows(StreamingMSSyncMotion)
        self.wrap_item(pipeline.Pipeline, "run", 3)
        self.wrap_item(pipeline.Pipeline, "prepare", 3)

    def take(self) -> dict:
        with self.lock:
            out, self.times = dict(self.times), defaultdict(float)
        return out


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and its reaped children (ffmpeg)."""
    import resource

    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def make_inputs(tmp: Path) -> list[tuple[Path, Path]]:
    """(photo, speech) items: astronaut twice (repeated photo), its mirror, a 1080p version; 0.4-0.5 s clips."""
    import imageio.v3 as iio
    import numpy as np
    import soundfile as sf

    from bench_compose import photo_1080p

    astro = iio.imread(ROOT / "examples" / "astronaut.png")[..., :3]
    photos = {"astro": tmp / "astro.png", "mirror": tmp / "mirror.png", "big": tmp / "big.jpg"}
    iio.imwrite(photos["astro"], astro)
    iio.imwrite(photos["mirror"], np.ascontiguousarray(astro[:, ::-1]))
    iio.imwrite(photos["big"], photo_1080p()[0], quality=92)
    clip, sr = sf.read(ROOT / "examples" / "speech.wav", dtype="float32")
    clips = {}
    for name, start, seconds in (("a", 0.0, 0.4), ("b", 1.0, 0.5), ("c", 2.5, 0.4)):
        clips[name] = tmp / f"{name}.wav"
        sf.write(clips[name], clip[int(start * sr):int((start + seconds) * sr)], sr)
    return [(photos["astro"], clips["a"]), (photos["astro"], clips["b"]), (photos["mirror"], clips["c"]),
            (photos["big"], clips["a"])]


def summarise(times: dict, wall: float, items: list[str], frames: dict) -> dict:
    """Per stage: seconds per item on the rendering thread and ahead; overhead per item."""
    n = len(items)
    main = {s: sum(v for (i, st, k), v in times.items() if st == s and k == "main") / n for s in STAGES}
    ahead = {s: sum(v for (i, st, k), v in times.items() if st == s and k == "other") / n for s in STAGES}
    scaled = sum(main[s] for s in PER_FRAME)
    return {"wall_per_item": wall / n, "overhead_per_item": wall / n - scaled, "main": main, "ahead": ahead,
            "frames_per_item": sum(frames.values()) / n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modes", nargs="+", default=["sequential", "fast", "load"],
                    choices=("sequential", "fast", "single", "load"))
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from bench_animate import _make_models_dir

    from talkhead.batch import Pair, run_batch
    from talkhead.pipeline import AnimateOptions, Pipeline

    try:
        from talkhead.pipeline import SourceCache
    except ImportError:  # the code before the fast batch
        SourceCache = None

    rec = Recorder()
    results: dict = defaultdict(list)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models = _make_models_dir(tmp / "models")
        opts = AnimateOptions(models_dir=models, device="cpu", landmarker="dlib", offline=True, overwrite=True)
        inputs = make_inputs(tmp)
        pairs = [Pair(img, aud, tmp / "out" / f"item{k}_{img.stem}_{aud.stem}.mp4") for k, (img, aud) in
                 enumerate(inputs)]
        fast_api = "prepare_ahead" in run_batch.__code__.co_varnames
        pipe = Pipeline(opts)
        t = time.perf_counter()
        pipe.run(inputs[0][0], __import__("talkhead.pipeline", fromlist=["SpeechMotion"]).SpeechMotion(inputs[0][1]),
                 tmp / "warm.mp4", keep_keypoints=False)  # loads the models, packs the weights
        print(f"warm-up item (models load, weights packed): {time.perf_counter() - t:.1f} s", flush=True)
        rec.install()
        rec.take()
        for r in range(args.rounds):
            for mode in args.modes:
                out = tmp / "out"
                for f in out.glob("*.mp4") if out.exists() else ():
                    f.unlink()
                frames = {}
                cpu0 = _cpu_seconds()
                t = time.perf_counter()
                if mode == "load":
                    for p in pairs:
                        Pipeline(opts, single_use=True).load()
                        frames[p.output.name] = 0
                elif mode == "single":
                    from talkhead.pipeline import animate

                    for p in pairs:
                        frames[p.output.name] = animate(p.image, p.audio, p.output, opts).num_frames
                else:
                    kw = {}
                    if fast_api:
                        kw = {"prepare_ahead": mode == "fast"}
                        batch_pipe = Pipeline(opts, renderer=pipe.renderer, motion=pipe.motion,
                                              source_cache=(False if mode == "sequential" else SourceCache(2)))
                    else:
                        batch_pipe = Pipeline(opts, renderer=pipe.renderer, motion=pipe.motion)
                    items = run_batch(batch_pipe, pairs, out, **kw)
                    bad = [i.reason for i in items if i.status != "done"]
                    if bad:
                        raise SystemExit(f"{mode}: {bad}")
                    frames = {i.output.name: i.frames for i in items}
                wall = time.perf_counter() - t
                s = summarise(rec.take(), wall, [p.output.name for p in pairs], frames)
                s["load_avg"] = os.getloadavg()[0]
                s["cpu_per_item"] = (_cpu_seconds() - cpu0) / len(pairs)
                results[mode].append(s)
                print(f"round {r} {mode:10s}: {wall:6.1f} s for {len(pairs)} items, {s['wall_per_item']:.2f} s/item, "
                      f"overhead {s['overhead_per_item']:.2f} s/item, CPU {s['cpu_per_item']:.1f} s/item "
                      f"(load {s['load_avg']:.1f})", flush=True)
    print(f"\nper item ({len(pairs)} items, {results[args.modes[0]][0]['frames_per_item']:.0f} frames each on "
          f"average), torch threads {torch.get_num_threads()}, median of {args.rounds} round(s); "
          "seconds per item on the rendering thread [+ in the other threads, overlapped]")
    print(f"{'stage':16s}" + "".join(f"{m:>18s}" for m in args.modes))
    for stage in STAGES + ("overhead", "wall", "cpu"):
        cells = []
        for m in args.modes:
            rs = results[m]
            if stage == "overhead":
                cells.append(f"{statistics.median(r['overhead_per_item'] for r in rs):18.3f}")
            elif stage == "wall":
                cells.append(f"{statistics.median(r['wall_per_item'] for r in rs):18.3f}")
            elif stage == "cpu":
                cells.append(f"{statistics.median(r['cpu_per_item'] for r in rs):18.3f}")
            else:
                main_s = statistics.median(r["main"][stage] for r in rs)
                ahead_s = statistics.median(r["ahead"][stage] for r in rs)
                cells.append(f"{main_s:10.3f}" + (f" +{ahead_s:6.3f}" if ahead_s else " " * 8))
        print(f"{stage:16s}" + "".join(cells))
    if "sequential" in results and "fast" in results:
        ratio = statistics.median(f["wall_per_item"] / s["wall_per_item"]
                                  for f, s in zip(results["fast"], results["sequential"]))
        print(f"fast / sequential wall per item, median of per-round ratios: {ratio:.3f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
