"""Per-frame FOMM render time, plain eager vs the fused inference path (and other engines); not a test.

Builds the FULL-SIZE vox-adv-256 FOMM (``talkhead/configs/vox-adv-256.yaml``) with random weights and
randomised batch-norm statistics (so that batch-norm folding is exercised with non-trivial values),
detects kp_source on ``examples/astronaut.png`` resized to 256x256 and renders driving keypoints near
it (kp_source + noise), batch 1, from one ``FOMM.encode_source`` of the source (encoded once, not timed).

The variants run in ONE process, alternating round by round (the machine is shared and noisy): the
report gives each variant's median seconds per frame, the median of the per-round ratios to the
plain eager path, and the largest absolute difference of its frames from the plain path's.

    python benchmarks/bench_render.py                        # plain vs fused, 2 threads, 7 rounds
    python benchmarks/bench_render.py --rounds 11 --threads 2 --engines plain fused compile
    python benchmarks/bench_render.py --json out.json
    python benchmarks/bench_render.py --threads 1 --clock cpu   # CPU seconds: robust on a busy machine

Engines: ``plain`` (the reference-shaped eager path, ``fused_inference(False)``), ``fused`` (default
eager path: Winograd convolutions and the final conv's tap GEMM on CPU where ``talkhead.fomm.winograd``
chooses them), ``fused_direct`` (the fused path with ``winograd_inference(False)``: oneDNN's direct convolutions
everywhere), ``plain_cl`` (plain path on channels_last weights/inputs only), ``compile``
(``torch.compile`` of the fused decode, inductor; compile time reported), ``jit_freeze``
(``torch.jit.trace`` + ``torch.jit.freeze`` of the plain path: conv/BN folding by TorchScript),
``onnxruntime`` (if installed: the plain render graph exported with ``torch.onnx``).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def build(seed: int = 0):
    """The full-size FOMM (eval) with random weights + random BN stats, a source and driving keypoints."""
    from PIL import Image

    from talkhead.fomm import FOMM, FOMMConfig, default_config_path

    torch.manual_seed(seed)
    fomm = FOMM.from_config(FOMMConfig.from_yaml(default_config_path()))
    with torch.no_grad():
        for m in [*fomm.generator.modules(), *fomm.kp_detector.modules()]:
            if isinstance(m, torch.nn.Conv2d) and m.groups == 1:
                # variance-preserving (He) init: activations of trained-model size, not the
                # shrinking default init, so that rounding differences are not hidden
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    img = Image.open(ROOT / "examples" / "astronaut.png").convert("RGB").resize((256, 256))
    source = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)[None].contiguous()
    kp_source = fomm.detect(source).as_dict()
    g = torch.Generator().manual_seed(seed + 1)
    kp_driving = {"value": kp_source["value"] + 0.05 * torch.randn(1, 10, 2, generator=g),
                  "jacobian": kp_source["jacobian"] + 0.05 * torch.randn(1, 10, 2, 2, generator=g)}
    return fomm, source, kp_source, kp_driving


def _render(fomm, encoding, kp_driving: dict):
    """``FOMM.render`` of dict driving keypoints from a source encoding."""
    from talkhead.keypoints import Keypoints

    return fomm.render(encoding, Keypoints.from_dict(kp_driving))


def make_engines(names, fomm, source, kp_source, kp_driving) -> tuple[dict, dict]:
    """name -> zero-argument render callable returning frames (1, 3, 256, 256); and setup seconds."""
    from talkhead.fomm.blocks import fused_inference, winograd_inference

    engines, setup = {}, {}

    def plain():
        with fused_inference(False):
            return _render(fomm, enc, kp_driving)

    def fused():
        with fused_inference(True):
            return _render(fomm, enc, kp_driving)

    def fused_direct():
        with fused_inference(True), winograd_inference(False):
            return _render(fomm, enc, kp_driving)

    from talkhead.keypoints import Keypoints

    enc = fomm.encode_source(source, Keypoints.from_dict(kp_source))  # encode the source once
    gen = fomm.generator
    dm = gen.dense_motion_network

    for name in names:
        t = time.perf_counter()
        if name == "plain":
            engines[name] = plain
        elif name == "fused":
            engines[name] = fused
        elif name == "fused_direct":
            engines[name] = fused_direct
        elif name == "plain_cl":
            import copy
            g2 = copy.deepcopy(gen).to(memory_format=torch.channels_last)
            feats = enc.features.contiguous(memory_format=torch.channels_last)

            def plain_cl(g2=g2, feats=feats):
                with fused_inference(False), torch.inference_mode():
                    m = g2.dense_motion_network.motion(enc.source_down, kp_driving, kp_source)
                    return g2.decode(g2.warp(feats, m)).contiguous()
            engines[name] = plain_cl
        elif name == "compile":
            def step(source_down, features, value, jacobian):
                kp_d = {"value": value, "jacobian": jacobian}
                m = dm.motion(source_down, kp_d, kp_source)
                return gen.decode(gen.warp(features, m))
            import torch._inductor.config as inductor_config
            inductor_config.freezing = True  # constant-fold weights: conv/BN folding, oneDNN weight prepacking
            compiled = torch.compile(step, dynamic=False)

            def run_compiled():
                # inductor compiles the plain (reference-shaped) graph and fuses it itself
                with fused_inference(False), torch.no_grad():
                    return compiled(enc.source_down, enc.features, kp_driving["value"], kp_driving["jacobian"])
            run_compiled()
            engines[name] = run_compiled
        elif name == "jit_freeze":
            class Step(torch.nn.Module):
                def __init__(self):
                    super().__init__()
                    self.gen = gen

                def forward(self, source_down, features, value, jacobian):
                    kp_d = {"value": value, "jacobian": jacobian}
                    m = self.gen.dense_motion_network.motion(source_down, kp_d, kp_source)
                    return self.gen.decode(self.gen.warp(features, m))
            with fused_inference(False), torch.no_grad():
                traced = torch.jit.trace(Step().eval(), (enc.source_down, enc.features, kp_driving["value"],
                                                         kp_driving["jacobian"]), check_trace=False)
                frozen = torch.jit.optimize_for_inference(torch.jit.freeze(traced))
                frozen(enc.source_down, enc.features, kp_driving["value"], kp_driving["jacobian"])

            def run_frozen():
                with torch.no_grad():
                    return frozen(enc.source_down, enc.features, kp_driving["value"], kp_driving["jacobian"])
            engines[name] = run_frozen
        elif name == "onnxruntime":
            import onnxruntime as ort
            import tempfile

            class Step(torch.nn.Module):
                def __init__(self):
                    super().__init__()
                    self.gen = gen

                def forward(self, source_down, features, value, jacobian):
                    kp_d = {"value": value, "jacobian": jacobian}
                    m = self.gen.dense_motion_network.motion(source_down, kp_d, kp_source)
                    return self.gen.decode(self.gen.warp(features, m))
            path = Path(tempfile.mkdtemp()) / "render.onnx"
            args = (enc.source_down, enc.features, kp_driving["value"], kp_driving["jacobian"])
            with fused_inference(False), torch.no_grad():
                torch.onnx.export(Step().eval(), args, str(path), opset_version=17, dynamo=False,
                                  input_names=["source_down", "features", "value", "jacobian"])
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = torch.get_num_threads()
            opts.inter_op_num_threads = 1
            sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            feeds = {k: v.numpy() for k, v in zip(["source_down", "features", "value", "jacobian"], args)}

            def run_ort():
                return torch.from_numpy(sess.run(None, feeds)[0])
            run_ort()
            engines[name] = run_ort
        else:
            raise SystemExit(f"unknown engine {name}")
        setup[name] = time.perf_counter() - t
    return engines, setup


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engines", nargs="+", default=["plain", "fused"])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="wall: perf_counter; cpu: process CPU time (robust on a loaded machine; use --threads 1)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    torch.set_num_threads(args.threads)
    fomm, source, kp_source, kp_driving = build()
    engines, setup = make_engines(args.engines, fomm, source, kp_source, kp_driving)
    base_name = args.engines[0]
    reference = engines[base_name]()
    for f in engines.values():  # warm-up (caches, oneDNN primitives)
        f()
    times = {k: [] for k in engines}
    for _ in range(args.rounds):
        for name, f in engines.items():
            t = clock()
            f()
            times[name].append(clock() - t)
    results = []
    for name, f in engines.items():
        diff = float((f().float() - reference).abs().max())
        ratios = [b / t for b, t in zip(times[base_name], times[name])]
        res = {"engine": name, "median_s_per_frame": statistics.median(times[name]),
               "median_speedup_vs_" + base_name: statistics.median(ratios), "max_abs_diff": diff,
               "setup_s": setup[name], "threads": args.threads, "rounds": args.rounds, "clock": args.clock}
        results.append(res)
        print(f"{name:>12}: {res['median_s_per_frame']:.3f} s/frame | x{statistics.median(ratios):.2f} vs "
              f"{base_name} | max |diff| {diff:.2e} | setup {setup[name]:.1f} s", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
