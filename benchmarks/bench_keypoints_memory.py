"""Peak memory of the keypoint stage (MS-Sync) against the audio length (not a test).

Runs :func:`talkhead.mssync.inference.generate_keypoints` with the default-size MS-Sync generator
(random weights: memory and time do not depend on them) on the logfbank of speech made by repeating
``examples/speech.wav`` to 5 s, 120 s and 600 s. Each length runs in a fresh subprocess; it reports the
process RSS before the stage (model + logfbank loaded), the peak RSS (``ru_maxrss``) and their
difference (what the stage itself added), in MiB, and the stage's speed in frames/s.

    python benchmarks/bench_keypoints_memory.py                      # 5, 120, 600 s, chunked encoder
    python benchmarks/bench_keypoints_memory.py --chunk-rows 0       # the one-pass audio encoder
    python benchmarks/bench_keypoints_memory.py --seconds 5 120 --json out.json
    python benchmarks/bench_keypoints_memory.py --stage audio       # only the whole-clip audio part
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_one(logfbank_path: Path, chunk_rows: int | None, stage: str = "full") -> dict:
    """Run the keypoint stage on one logfbank in this process; memory and timing figures.

    ``stage``: ``full`` = :func:`generate_keypoints` (the autoregressive rollout, ~25 frames/s on 2
    cores); ``audio`` = only the part that sees the whole clip at once (``build_audio_input`` +
    ``MSSyncGenerator.embed_audio``: the audio pyramid at the frame rate), quick even for 600 s.
    """
    import numpy as np
    import torch

    from talkhead.keypoints import Keypoints
    from talkhead.mssync import MSSyncConfig, MSSyncGenerator
    from talkhead.mssync.inference import build_audio_input, generate_keypoints

    torch.manual_seed(0)
    model = MSSyncGenerator(MSSyncConfig.default()).eval()
    if chunk_rows is not None:
        model.encoder_a.chunk_rows = chunk_rows
    feats = np.load(logfbank_path)
    value = torch.rand(1, 10, 2) * 2 - 1
    jac = torch.eye(2).expand(1, 10, 2, 2).clone()
    before = _rss_mib()
    t = time.perf_counter()
    if stage == "full":
        frames = len(generate_keypoints(model, Keypoints(value, jac), feats))
    else:
        with torch.inference_mode():
            audio = build_audio_input(torch.as_tensor(feats), obs_len=model.config.obs_len).float()
            frames = int(model.embed_audio(audio)[0].shape[1])
    elapsed = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"stage": stage, "frames": frames, "seconds_run": elapsed, "fps": frames / elapsed,
            "rss_before_mib": before, "peak_rss_mib": peak, "stage_growth_mib": peak - before,
            "chunk_rows": model.encoder_a.chunk_rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, nargs="+", default=[5, 120, 600])
    ap.add_argument("--chunk-rows", type=int, default=None,
                    help="audio-encoder chunk in logfbank rows (0 = one pass; default: the model's)")
    ap.add_argument("--stage", choices=["full", "audio"], default="full",
                    help="full: generate_keypoints; audio: only the whole-clip audio pyramid (fast)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--_child", nargs=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        print(json.dumps(run_one(Path(args._child[0]), args.chunk_rows, args.stage)))
        return

    import numpy as np
    import soundfile as sf

    from talkhead.audio import logfbank

    clip, sr = sf.read(ROOT / "examples" / "speech.wav", dtype="float32")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for s in args.seconds:
            path = Path(tmp) / f"logfbank_{s:g}.npy"
            np.save(path, logfbank(np.resize(clip, int(s * sr)), sr))
            cmd = [sys.executable, __file__, "--_child", str(path), "--stage", args.stage]
            if args.chunk_rows is not None:
                cmd += ["--chunk-rows", str(args.chunk_rows)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
            res = {"audio_s": s, **json.loads(proc.stdout.strip().splitlines()[-1])}
            results.append(res)
            print(f"{s:>6g} s audio, {res['frames']:>6d} frames | {res['fps']:.0f} fps | RSS before "
                  f"{res['rss_before_mib']:.0f} MiB, peak {res['peak_rss_mib']:.0f} MiB, stage added "
                  f"{res['stage_growth_mib']:.0f} MiB ({args.stage} stage, chunk_rows {res['chunk_rows']})", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
