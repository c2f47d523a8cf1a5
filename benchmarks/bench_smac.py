"""CPU time per rendered frame: SMAC vs FOMM (not a test).

Random weights (timing does not depend on them), one source encoded once, then ``--frames`` renders of
one driving keypoint set each (``render`` with a batch of 1, as the reference demo renders), 1 torch
thread by default. Reports seconds per frame as process CPU time and as wall time (on a shared machine
the wall time is the less reliable of the two).

Models: ``smac-tiny`` (tests/data/smac/tiny.yml: the fixture's tiny SMAC; its VQGAN encoder/decoder
is full size, only the codebooks, transformers and motion estimator are small), ``smac`` (the released
settings, talkhead/configs/smac-test.yml), ``fomm`` (vox-adv-256) and ``fomm-tiny``
(tests/data/fomm/tiny.yaml, 64x64 frames).

    python benchmarks/bench_smac.py
    python benchmarks/bench_smac.py --models smac-tiny fomm --frames 3 --threads 2
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def build(name: str):
    from talkhead.fomm import FOMM, FOMMConfig
    from talkhead.fomm import default_config_path as fomm_config
    from talkhead.smac import SMAC, SMACConfig
    from talkhead.smac import default_config_path as smac_config

    torch.manual_seed(0)
    if name.startswith("smac"):
        path = ROOT / "tests/data/smac/tiny.yml" if name == "smac-tiny" else smac_config()
        return SMAC.from_config(SMACConfig.from_yaml(path))
    path = ROOT / "tests/data/fomm/tiny.yaml" if name == "fomm-tiny" else fomm_config()
    return FOMM.from_config(FOMMConfig.from_yaml(path))


def bench(name: str, frames: int) -> dict:
    from talkhead.keypoints import Keypoints

    model = build(name)
    s = model.frame_size
    source = torch.rand(1, 3, s, s, generator=torch.Generator().manual_seed(1))
    encoding = model.encode_source(source)  # not timed
    kp = encoding.kp_source
    driving = [Keypoints(kp.value + 0.02 * (i + 1), kp.jacobian) for i in range(frames + 1)]
    model.render(encoding, driving[0])  # warm-up (not timed)
    cpu, wall = time.process_time(), time.perf_counter()
    for k in driving[1:]:
        model.render(encoding, k)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    params = sum(p.numel() for m in vars(model).values() if isinstance(m, torch.nn.Module) for p in m.parameters())
    return {"model": name, "frame_size": s, "parameters": params, "frames": frames,
            "cpu_s_per_frame": round(cpu / frames, 3), "wall_s_per_frame": round(wall / frames, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["smac-tiny", "smac", "fomm", "fomm-tiny"])
    parser.add_argument("--frames", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    with torch.inference_mode():
        for name in args.models:
            rows.append(bench(name, args.frames))
            print(json.dumps(rows[-1]), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
