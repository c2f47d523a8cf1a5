"""Cut the SMAC golden fixture (``shared/fixtures/smac/parity.npz``, 9 MB) down to ``parity-cut.npz``.

Dev tool, not a test: ``python tests/data/smac/cut_parity.py /path/to/parity.npz tests/data/smac/parity-cut.npz``.
Every value kept is the fixture's own float32/float64/uint8/bool number (no re-quantisation):

- keypoints, ``key_padding_mask``, anti-alias kernels, ``@shape``/``@win_channel_stride``: as they are;
- ``NAME@win`` (8x8 windows at 4 positions): the first ``WIN_CHANNELS`` kept channels;
- ``NAME@chmean`` / ``NAME@chstd`` (per-channel statistics, float64): as they are;
- full 64x64 maps (deformations, occlusions, ``m_res`` ...): ``NAME@sub2`` = ``[::2, ::2]`` of H, W for the
  absolute run, ``NAME@sub4`` for the relative one, except those in ``FULL`` (kept whole);
- the float prediction ``net_g/out`` (1, 3, 256, 256): ``@sub4`` and ``@win`` (windows made here, stride 1);
- ``pred_uint8`` (N, 256, 256, 3) and the uint8 inputs: ``pred_uint8@sub2``; inputs whole.
"""
import sys

import numpy as np

WIN_CHANNELS = 4
FULL = {"absolute/f0/dense/deformation", "absolute/f0/dense/occlusion_map", "absolute/f0/net_g/deformation_list.4",
        "absolute/f0/net_g/out_occ.3", "absolute/f0/motion_comp.32/m_res"}


def nhwc(name: str) -> bool:
    return any(t in name for t in ("deformation", "res_deform_list", "m_res", "in_motion_px", "_uint8"))


def windows(a: np.ndarray) -> np.ndarray:
    """(N, C, H, W) -> (4, N, C, 8, 8) at (0, 0), (0, W-8), (H/2-4, W/2-4), (H-8, W-8)."""
    h, w = a.shape[-2:]
    return np.stack([a[..., y:y + 8, x:x + 8] for y, x in ((0, 0), (0, w - 8), (h // 2 - 4, w // 2 - 4),
                                                             (h - 8, w - 8))])


def main(src: str, dst: str) -> None:
    z = np.load(src)
    out = {}
    for k in z.files:
        a = z[k]
        if k.startswith("meta/") or (k.startswith("inputs/") and not k.endswith("_uint8")):
            continue
        if k.endswith("@win"):
            out[k] = a[:, :, :WIN_CHANNELS]
        elif "@" in k or k.startswith(("weights/", "inputs/")) or a.dtype == bool or a.size <= 64:
            out[k] = a
        elif "kp" in k.split("/")[-2] or "estimate_kp" in k:
            out[k] = a
        elif k.endswith("net_g/out"):
            out[k + "@sub4"] = a[:, :, ::4, ::4]
            out[k + "@win"] = windows(a)
            out[k + "@win_channel_stride"] = np.int64(1)
        elif k in FULL:
            out[k] = a
        else:
            s = 2 if k.startswith("absolute/") or "uint8" in k else 4
            out[f"{k}@sub{s}"] = a[:, ::s, ::s] if nhwc(k) else a[..., ::s, ::s]
    np.savez_compressed(dst, **out)


if __name__ == "__main__":
    main(*sys.argv[1:3])
