"""Training speed of `train syncers` and `train generator` at the paper's defaults, in steps per second.

Synthetic clips (:func:`talkhead.train.make_synthetic_dataset`, 200 frames each) in FOMM's keypoint space
(10 keypoints), or widened to SMAC's 15 (``--space smac``: keypoints 0-4 repeated, the shapes a SMAC-space
run trains on). Each stage runs ``--steps + 1`` optimisation steps with the default run config
(``talkhead/train/configs/*.yaml``: syncers batch 64 x 64 frames, generator batch 50 x (3 + 40) frames,
35 M parameters); the first step (allocation, warm-up) is not timed. Nothing is asserted.

    python benchmarks/bench_train_steps.py --space smac --steps 3 --threads 2
    python benchmarks/bench_train_steps.py --space fomm --device cuda --steps 20
    python benchmarks/bench_train_steps.py --space smac --steps 1 --count   # + FLOPs and aten ops of one step

``--count`` also counts, during the untimed first step, the floating-point operations
(``torch.utils.flop_counter``) and the aten operator calls (each roughly one kernel launch on a GPU) of
one optimisation step: what a GPU estimate can be built on where no GPU is at hand.

Figures: benchmarks/README.md, "Training steps per second".
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def make_data(root: Path, space: str) -> Path:
    from talkhead.keypoints import KeypointSpace
    from talkhead.train import make_synthetic_dataset
    from talkhead.train.data import DatasetWriter, iter_clips, read_manifest

    fomm_dir = root / "data-fomm"
    make_synthetic_dataset(fomm_dir, num_clips=24, num_frames=200, val_clips=0)  # no val split: no validation
    if space == "fomm":
        return fomm_dir
    out = root / "data-smac"
    splits = {c.id: c.split for c in read_manifest(fomm_dir)}
    with DatasetWriter(out, space=KeypointSpace("smac", 15)) as writer:
        for clip, kp, lf in iter_clips(fomm_dir):
            writer.add(clip.id, np.concatenate([kp, kp[:, :5]], axis=1), lf, split=splits[clip.id])
    return out


COUNTS: dict[str, dict] = {}


def count_first_step(task_cls) -> None:
    """Count FLOPs and aten operator calls of ``task_cls.train_step`` at step 1 (the untimed warm-up)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode

    class OpCounter(TorchDispatchMode):
        calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            OpCounter.calls += 1
            return func(*args, **(kwargs or {}))

    original = task_cls.train_step

    def train_step(self, batch, step):
        if step != 1:
            return original(self, batch, step)
        OpCounter.calls = 0
        with FlopCounterMode(display=False) as flops, OpCounter():
            out = original(self, batch, step)
        COUNTS[task_cls.name] = {"gflop_per_step": flops.get_total_flops() / 1e9, "aten_ops_per_step": OpCounter.calls}
        print(task_cls.name, json.dumps(COUNTS[task_cls.name]), flush=True)
        return out

    task_cls.train_step = train_step


def timed_run(fn, *args, steps: int, **kwargs) -> dict:
    """Run ``fn`` (train_syncers / train_generator) for ``steps + 1`` steps; time steps 2 .. steps + 1."""
    marks: dict[int, float] = {}

    def progress(event):
        if event.kind == "step":
            marks[event.step] = time.perf_counter()

    kwargs["overrides"] = {**kwargs.get("overrides", {}), "steps": steps + 1, "checkpoint_every": 0,
                           "val_every": 0, "log_every": 1}
    fn(*args, progress=progress, **kwargs)
    span = marks[steps + 1] - marks[1]
    return {"steps_timed": steps, "s_per_step": span / steps, "steps_per_s": steps / span}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--space", choices=("fomm", "smac"), default="fomm")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per stage (one more is run first)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (CPU)")
    ap.add_argument("--stage", choices=("syncers", "generator", "both"), default="both")
    ap.add_argument("--count", action="store_true", help="count FLOPs and aten ops of the first (untimed) step")
    ap.add_argument("--syncers-batch", type=int, default=None, help="override batch_size of train syncers (default 64)")
    ap.add_argument("--generator-batch", type=int, default=None, help="override batch_size of train generator "
                    "(default 50; FLOPs scale with it, the number of aten ops hardly does)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from talkhead.train import train_generator, train_syncers
    from talkhead.train.generator import GeneratorTask
    from talkhead.train.syncers import SyncerTask

    if args.count:
        count_first_step(SyncerTask)
        count_first_step(GeneratorTask)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = make_data(tmp, args.space)
        out = {"space": args.space, "device": args.device, "threads": torch.get_num_threads(),
               "syncers_batch": args.syncers_batch or 64, "generator_batch": args.generator_batch or 50}
        syncers_steps = args.steps if args.stage != "generator" else 0
        batch = lambda n: {} if n is None else {"batch_size": n}
        res = timed_run(train_syncers, data, tmp / "syncers", steps=max(syncers_steps, 1),
                        overrides={"device": args.device, **batch(args.syncers_batch)})
        if args.stage != "generator":
            out["syncers"] = res
        if args.stage != "syncers":
            out["generator"] = timed_run(train_generator, data, tmp / "gen", syncers_dir=tmp / "syncers",
                                         steps=args.steps, overrides={"device": args.device,
                                                                      **batch(args.generator_batch)})
        for stage, counts in COUNTS.items():
            if stage in out:
                out[stage].update(counts)
        print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
