"""Speed and memory of one ``animate`` run per audio length, stage by stage (not a test).

Uses the FULL-SIZE FOMM config (vox-adv-256, 256x256) and the default-size MS-Sync generator with
random weights (timing does not depend on the weights), the dlib landmarker, the example photo, and
speech made by repeating the example clip to 5 s, 30 s and 120 s. Each length runs in a fresh
subprocess so its peak RSS (``ru_maxrss``) is its own.

Reports, per length: frames, seconds and frames per second for landmarks (per photo), keypoint
generation (MS-Sync), rendering (FOMM) and encoding (ffmpeg), and the process's peak RSS in MiB.

    python benchmarks/bench_animate.py                 # 5, 30, 120 s
    python benchmarks/bench_animate.py --seconds 5 30  # a subset
    python benchmarks/bench_animate.py --json out.json
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

ROOT = Path(__file__).resolve().parents[1]


def _make_models_dir(root: Path) -> Path:
    """Random-weight full-size checkpoints in the released layouts (fomm/, mssync/)."""
    import shutil

    import torch

    from talkhead.fomm import FOMMConfig, default_config_path
    from talkhead.store import register_local
    from talkhead.mssync import MSSyncConfig, MSSyncGenerator

    torch.manual_seed(0)
    (root / "fomm").mkdir(parents=True)
    (root / "mssync").mkdir(parents=True)
    shutil.copy(default_config_path(), root / "fomm" / "vox-adv-256.yaml")
    cfg = FOMMConfig.from_yaml(default_config_path())
    kp = cfg.build_kp_detector()
    gen = cfg.build_generator()
    torch.save({"generator": gen.state_dict(), "kp_detector": kp.state_dict()}, root / "fomm" / "vox-adv-cpk.pth.tar")
    mcfg = MSSyncConfig.default()
    (root / "mssync" / "args").write_text(json.dumps(mcfg.to_args_dict()))
    torch.save({"checkpoints": MSSyncGenerator(mcfg).state_dict()}, root / "mssync" / "model_chkpt.pt")
    register_local(root)
    return root


def _make_audio(seconds: float, path: Path) -> None:
    import numpy as np
    import soundfile as sf

    clip, sr = sf.read(ROOT / "examples" / "speech.wav", dtype="float32")
    n = int(seconds * sr)
    sf.write(path, np.resize(clip, n), sr)


def run_one(seconds: float, models_dir: Path, workdir: Path) -> dict:
    """Time one animate run of ``seconds`` of speech, stage by stage (runs in the current process)."""
    import torch

    from talkhead.audio import load_speech, logfbank
    from talkhead.image import load_image
    from talkhead.pipeline import AnimateOptions, Pipeline, held_batches, num_video_frames, speech_keypoints
    from talkhead.video import VideoWriter

    audio = workdir / f"speech_{seconds:g}s.wav"
    _make_audio(seconds, audio)
    pipe = Pipeline(AnimateOptions(models_dir=models_dir, device="cpu", landmarker="dlib", offline=True,
                                   overwrite=True, batch_size=8))
    out: dict = {"seconds": seconds, "torch_threads": torch.get_num_threads()}

    t = time.perf_counter()
    image = load_image(ROOT / "examples" / "astronaut.png")
    crop = pipe.face_crop(image)
    out["landmarks_s"] = time.perf_counter() - t

    speech = load_speech(audio)
    feats = logfbank(speech.samples, speech.sample_rate)
    source = pipe.source_tensor(crop.crop)
    t = time.perf_counter()
    kp_source = pipe.detect_source(source)
    kp_driving = speech_keypoints(pipe, kp_source, feats)
    out["keypoints_s"] = time.perf_counter() - t
    total = num_video_frames(speech.duration_s)
    out["frames"] = total

    # rendering alone (frames discarded) vs rendering + encoding; the difference is encoding.
    class _Null:
        def write(self, frames):
            pass

    t = time.perf_counter()
    pipe.render_into(_Null(), source, kp_source, held_batches(kp_driving, total, pipe.batch_size), total)
    out["render_s"] = time.perf_counter() - t
    t = time.perf_counter()
    with VideoWriter(workdir / f"out_{seconds:g}.mp4", size=(pipe.frame_size,) * 2, audio_path=audio,
                     overwrite=True) as writer:
        frame = (source[0].permute(1, 2, 0).cpu().numpy())
        for _ in range(total):
            writer.write(frame)
    out["encode_s"] = time.perf_counter() - t
    for stage in ("keypoints", "render", "encode"):
        out[f"{stage}_fps"] = total / out[f"{stage}_s"]
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, nargs="+", default=[5, 30, 120])
    ap.add_argument("--json", type=Path)
    ap.add_argument("--_child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        seconds, models_dir, workdir = args._child
        print(json.dumps(run_one(float(seconds), Path(models_dir), Path(workdir))))
        return
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models_dir = _make_models_dir(tmp / "models")
        for s in args.seconds:
            proc = subprocess.run([sys.executable, __file__, "--_child", str(s), str(models_dir), str(tmp)],
                                  capture_output=True, text=True, check=True)
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            results.append(res)
            print(f"{s:>6g} s audio, {res['frames']:>5d} frames | landmarks {res['landmarks_s']:.2f} s | "
                  f"keypoints {res['keypoints_fps']:.1f} fps | render {res['render_fps']:.2f} fps | "
                  f"encode {res['encode_fps']:.1f} fps | peak RSS {res['peak_rss_mib']:.0f} MiB", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
