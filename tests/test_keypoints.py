"""talkhead.keypoints: head-motion control (fit_head_motion, scale_head_motion).

Synthetic keypoint sequences with a KNOWN global motion: driving = T_t(source + e_t), where T_t is a
similarity (rotation about the source centroid, scale, translation) and e_t moves only 3 of the 10
keypoints (the "mouth"). Tolerances are in keypoint units (the [-1, 1] grid; 1e-3 is 1/8 of a pixel
of a 256-px crop).
"""
from __future__ import annotations

import math

import pytest
import torch

from talkhead.errors import InputError
from talkhead.keypoints import Keypoints, fit_head_motion, scale_head_motion

K, T = 10, 8
MOUTH = [7, 8, 9]


def _rot_scale(log_scale: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    s = torch.exp(log_scale)
    c, n = s * torch.cos(angle), s * torch.sin(angle)
    return torch.stack([torch.stack([c, -n], -1), torch.stack([n, c], -1)], -2)


@pytest.fixture(scope="module")
def synthetic():
    g = torch.Generator().manual_seed(3)
    x = (torch.rand(1, K, 2, generator=g) - 0.5) * 1.2
    jx = torch.eye(2).expand(1, K, 2, 2) + 0.1 * torch.randn(1, K, 2, 2, generator=g)
    angle = torch.linspace(-0.3, 0.25, T)
    log_scale = torch.linspace(-0.1, 0.15, T)
    trans = torch.stack([torch.linspace(-0.1, 0.12, T), torch.linspace(0.06, -0.08, T)], -1)
    e = torch.zeros(T, K, 2)                                      # mouth opening, in the head's frame
    e[:, MOUTH, 1] = torch.linspace(0.0, 0.12, T)[:, None]
    e[:, 8, 0] = torch.linspace(0.0, 0.03, T)
    c = x.mean(dim=1)
    A = _rot_scale(log_scale, angle)
    y = (x + e - c[:, None]) @ A.transpose(1, 2) + c[:, None] + trans[:, None]
    J = A[:, None] @ jx
    return dict(source=Keypoints(x, jx), driving=Keypoints(y, J), x=x, jx=jx, e=e, A=A,
                angle=angle, log_scale=log_scale, trans=trans)


def test_fit_recovers_known_motion(synthetic):
    m = fit_head_motion(synthetic["driving"], synthetic["source"])
    assert m.angle.shape == (T,) and m.translation.shape == (T, 2)
    torch.testing.assert_close(m.angle, synthetic["angle"], atol=1e-4, rtol=0)
    torch.testing.assert_close(m.log_scale, synthetic["log_scale"], atol=1e-4, rtol=0)
    torch.testing.assert_close(m.translation, synthetic["trans"], atol=1e-4, rtol=0)
    # the plain least-squares fit is pulled by the mouth keypoints: the robust rounds matter
    plain = fit_head_motion(synthetic["driving"], synthetic["source"], robust_iters=0)
    assert (plain.translation - synthetic["trans"]).abs().max() > 1e-2


def test_scale_one_returns_the_input(synthetic):
    kd = synthetic["driving"]
    out = scale_head_motion(kd, synthetic["source"], 1.0)
    assert out is kd and out.equal(kd)
    assert scale_head_motion(kd, synthetic["source"], 1) is kd


def test_scale_zero_removes_head_motion_keeps_mouth(synthetic):
    x, e = synthetic["x"], synthetic["e"]
    out = scale_head_motion(synthetic["driving"], synthetic["source"], 0.0)
    # what is left: the source pose plus the mouth motion only
    torch.testing.assert_close(out.value, x.expand(T, K, 2) + e, atol=1e-4, rtol=0)
    non_mouth = [k for k in range(K) if k not in MOUTH]
    assert (out.value[:, non_mouth] - x[:, non_mouth]).abs().max() < 1e-4
    mouth_motion = (out.value[:, MOUTH] - x[:, MOUTH]).abs().amax(dim=(1, 2))
    assert mouth_motion[-1] > 0.1                                 # the mouth still opens
    # jacobians: J' = A_0 A^-1 J = A^-1 (A jx) = jx
    torch.testing.assert_close(out.jacobian, synthetic["jx"].expand(T, K, 2, 2), atol=1e-4, rtol=0)
    # and nothing global is left to fit
    m = fit_head_motion(out, synthetic["source"])
    assert m.angle.abs().max() < 1e-4 and m.log_scale.abs().max() < 1e-4
    assert m.translation.abs().max() < 1e-4


def test_scale_half_halves_angle_translation_log_scale(synthetic):
    out = scale_head_motion(synthetic["driving"], synthetic["source"], 0.5)
    m = fit_head_motion(out, synthetic["source"])
    torch.testing.assert_close(m.angle, 0.5 * synthetic["angle"], atol=2e-4, rtol=0)
    torch.testing.assert_close(m.log_scale, 0.5 * synthetic["log_scale"], atol=2e-4, rtol=0)
    torch.testing.assert_close(m.translation, 0.5 * synthetic["trans"], atol=2e-4, rtol=0)
    # residual carried through the scaled transform: y' = A_half (x + e - c) + c + t / 2
    x, e = synthetic["x"], synthetic["e"]
    c = x.mean(dim=1)
    A_half = _rot_scale(0.5 * synthetic["log_scale"], 0.5 * synthetic["angle"])
    want = (x + e - c[:, None]) @ A_half.transpose(1, 2) + c[:, None] + 0.5 * synthetic["trans"][:, None]
    torch.testing.assert_close(out.value, want, atol=2e-4, rtol=0)
    # jacobians: J' = A_half A^-1 J = A_half jx
    torch.testing.assert_close(out.jacobian, A_half[:, None] @ synthetic["jx"], atol=2e-4, rtol=0)


def test_scale_two_exaggerates_and_keeps_dtype_device(synthetic):
    kd = synthetic["driving"].to(dtype=torch.float64)
    out = scale_head_motion(kd, synthetic["source"], 2.0)
    assert out.value.dtype == torch.float64 and out.value.device == kd.device
    m = fit_head_motion(out, synthetic["source"])
    torch.testing.assert_close(m.angle, 2 * synthetic["angle"].double(), atol=5e-4, rtol=0)


def test_without_jacobians(synthetic):
    kd = Keypoints(synthetic["driving"].value)
    out = scale_head_motion(kd, Keypoints(synthetic["x"]), 0.0)
    assert out.jacobian is None
    torch.testing.assert_close(out.value, synthetic["x"].expand(T, K, 2) + synthetic["e"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("bad", [-0.1, math.inf, math.nan, "a lot", None, True])
def test_bad_scale_is_an_input_error(synthetic, bad):
    with pytest.raises(InputError, match="head-motion scale"):
        scale_head_motion(synthetic["driving"], synthetic["source"], bad)


def test_mismatched_and_degenerate_sources(synthetic):
    with pytest.raises(ValueError, match="does not match"):
        scale_head_motion(synthetic["driving"], Keypoints(torch.zeros(1, K + 1, 2)), 0.5)
    with pytest.raises(ValueError, match="one point"):
        scale_head_motion(synthetic["driving"], Keypoints(torch.zeros(1, K, 2)), 0.5)


def test_on_generated_keypoints(e2e_parity):
    """The tiny MS-Sync model's generated sequence (tests/data/e2e, K = 10) with its kp_source:
    no known truth, but the decomposition must be consistent: after S = 0 nothing global is left,
    and scaling twice multiplies the scales."""
    src = Keypoints(torch.from_numpy(e2e_parity["kp_source_value"]),
                    torch.from_numpy(e2e_parity["kp_source_jacobian"]))
    drv = Keypoints.unpack(torch.from_numpy(e2e_parity["out_kp"]))
    m = fit_head_motion(drv, src)
    assert torch.isfinite(m.angle).all() and m.angle.abs().max() > 1e-2     # it rolls ~1.4 deg
    still = fit_head_motion(scale_head_motion(drv, src, 0.0), src)
    assert still.angle.abs().max() < 1e-4 and still.log_scale.abs().max() < 1e-4
    assert still.translation.abs().max() < 1e-4
    twice = scale_head_motion(scale_head_motion(drv, src, 0.5), src, 0.5)
    once = scale_head_motion(drv, src, 0.25)
    torch.testing.assert_close(twice.value, once.value, atol=1e-4, rtol=0)
    torch.testing.assert_close(twice.jacobian, once.jacobian, atol=1e-4, rtol=0)
