"""Make ``tests/data/gfpgan/parity.npz``: TencentARC's own GFPGANv1Clean, run on CPU with seeded random
weights in the released layout, against talkhead's (docs/fixtures.md, "GFPGAN").

Run it in a scratch folder OUTSIDE the repository, with the reference package unpacked there (nothing
of it is copied into talkhead)::

    pip download --no-deps gfpgan==1.3.8 -d /tmp/gfp && cd /tmp/gfp && unzip -oq gfpgan-1.3.8-py3-none-any.whl
    PYTHONPATH=/path/to/talkhead python /path/to/talkhead/tests/data/gfpgan/make_parity.py /tmp/gfp tests/data/gfpgan/parity.npz

The reference imports two things from ``basicsr`` (a registry decorator and a weight initialiser that
only matters for training); small stand-ins are installed under those module names first. The
reference package's ``__init__`` is not run (only the two arch modules are imported); its ``forward`` is called with ``randomize_noise=False`` (its stored noise) and
``return_rgb=False``, v1.4's arguments (``GFPGANer(arch="clean")``) otherwise.

The tests import :func:`seeded_state_dict`, :data:`TINY` and :func:`parity_input` from this file, so
the full-size weights are re-made from the seed (nothing of 348 MB is stored); the npz holds the
tiny weights' outputs whole and the full-size output at every 8th pixel plus one full-resolution patch.
"""
from __future__ import annotations

import importlib
import math
import sys
import types
from pathlib import Path

import numpy as np
import torch

TINY = dict(out_size=64, num_style_feat=32, channel_multiplier=2, narrow=1 / 16)
"""The tiny config: every level of the released structure, 64 px faces, 16 to 32 channels."""

FULL_SEED, TINY_SEED = 20, 21
PATCH = (slice(200, 264), slice(180, 244))
"""Rows and columns of the full-resolution patch of the full-size output (eyes and nose of the template)."""


def seeded_state_dict(layout: dict, seed: int) -> dict:
    """Random weights in ``layout``'s keys and shapes (``{key: shape}``, state_dict order), made from
    ``seed`` alone: weights ``N(0, 1/fan_in)`` (the to-RGB ones 10x smaller), modulation biases 1, other
    biases ``N(0, 0.01)``, the constant input and noise buffers ``N(0, 1)``, StyleConv noise weights 0.1."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in layout.items():
        shape = tuple(shape)
        if key.endswith("modulation.bias"):
            t = torch.ones(shape)
        elif key.endswith(".bias"):
            t = 0.01 * torch.randn(shape, generator=g)
        elif ".noises." in key or key.endswith("constant_input.weight"):
            t = torch.randn(shape, generator=g)
        elif len(shape) == 1 and shape == (1,):   # StyleConv noise strength
            t = torch.full(shape, 0.1)
        else:
            fan_in = math.prod(shape[1:]) if len(shape) > 1 else 1
            if key.endswith("modulated_conv.weight"):
                fan_in = math.prod(shape[2:])
            t = torch.randn(shape, generator=g) / math.sqrt(fan_in)
            if "to_rgb" in key and key.endswith("modulated_conv.weight"):
                t = t * 0.1   # keeps the summed RGB skips near a face's [-1, 1] (float error ~1e-6, not 1e-5)
        out[key] = t.float()
    return out


def parity_input(size: int, seed: int) -> torch.Tensor:
    """``(1, 3, size, size)`` in [-1, 1]: a smooth seeded pattern plus fine noise (like a face crop's range)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, 8, 8, generator=g)
    smooth = torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    return (smooth + 0.1 * torch.randn(1, 3, size, size, generator=g)).clamp(0, 1) * 2 - 1


def _stub_basicsr() -> None:
    registry = types.SimpleNamespace(register=lambda *a, **k: (lambda cls: cls))
    mods = {"basicsr": {}, "basicsr.utils": {}, "basicsr.utils.registry": {"ARCH_REGISTRY": registry},
            "basicsr.archs": {}, "basicsr.archs.arch_util": {"default_init_weights": lambda *a, **k: None}}
    for name, attrs in mods.items():
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        sys.modules[name] = m


def _reference(reference_dir: Path, config: dict):
    _stub_basicsr()
    for name, folder in (("gfpgan", reference_dir / "gfpgan"), ("gfpgan.archs", reference_dir / "gfpgan" / "archs")):
        package = types.ModuleType(name)   # the package without its __init__ (which imports all of basicsr)
        package.__path__ = [str(folder)]
        sys.modules[name] = package
    arch = importlib.import_module("gfpgan.archs.gfpganv1_clean_arch")
    return arch.GFPGANv1Clean(out_size=config["out_size"], num_style_feat=config["num_style_feat"],
                              channel_multiplier=config["channel_multiplier"], decoder_load_path=None,
                              fix_decoder=False, num_mlp=8, input_is_latent=True, different_w=True,
                              narrow=config["narrow"], sft_half=True)


def main(reference_dir: str, out_path: str) -> None:
    from talkhead.gfpgan import GFPGANConfig, GFPGANv1Clean, expected_layout

    torch.set_num_threads(2)
    out = {}
    for name, config, seed in (("tiny", TINY, TINY_SEED),
                               ("full", dict(out_size=512, num_style_feat=512, channel_multiplier=2, narrow=1),
                                FULL_SEED)):
        cfg = GFPGANConfig(**config)
        weights = seeded_state_dict(expected_layout(cfg), seed)
        ref = _reference(Path(reference_dir), config).eval()
        ref_keys = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
        assert list(ref_keys) == list(expected_layout(cfg)) and ref_keys == expected_layout(cfg), name
        ref.load_state_dict(weights, strict=True)
        ours = GFPGANv1Clean(cfg).eval()
        ours.load_state_dict(weights, strict=True)
        x = parity_input(cfg.out_size, seed + 100)
        with torch.no_grad():
            expected, _ = ref(x, return_rgb=False, randomize_noise=False)
            again, _ = ref(x, return_rgb=False, randomize_noise=False)
            got = ours(x)
        assert torch.equal(expected, again)
        diff = float((got - expected).abs().max())
        print(f"{name}: max abs diff ours vs reference {diff:.3g}; output range "
              f"[{float(expected.min()):.3f}, {float(expected.max()):.3f}]")
        out[f"{name}_max_abs_diff"] = np.float64(diff)
        if name == "tiny":
            out["tiny_input"], out["tiny_output"] = x.numpy(), expected.numpy()
            out["tiny_keys"] = np.array(list(ref_keys))
        else:
            out["full_output_stride8"] = expected[..., ::8, ::8].numpy()
            out["full_output_patch"] = expected[..., PATCH[0], PATCH[1]].numpy()
            out["full_keys"] = np.array(list(ref_keys))
            out["full_shapes"] = np.array([",".join(map(str, s)) for s in ref_keys.values()])
    np.savez_compressed(out_path, **out)


if __name__ == "__main__":
    main(*sys.argv[1:3])
