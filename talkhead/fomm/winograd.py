"""Winograd (and tap-GEMM) convolutions for the FOMM fused path on CPU: fewer multiplies, the same convolution.

A stride-1, zero-padded ``r x r`` convolution computed tile by tile: each ``m x m`` block of outputs comes
from an ``a x a`` block (``a = m + r - 1``) of the padded input as ``Y = A^T [ (G g G^T) * (B^T d B) ] A``
(Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016, eq. 8), the elementwise
products summed over input channels as ``a^2`` matrix products (one ``torch.bmm``). Per ``m^2`` outputs and
channel pair that is ``a^2`` multiplies instead of ``m^2 r^2``:

- :data:`F2_3`, F(2x2, 3x3): 16 for 36 (2.25x fewer); transform entries 0, +-1, +-1/2.
- :data:`F4_3`, F(4x4, 3x3): 36 for 144 (4x fewer); interpolation points 0, 1, -1, 1/2, -2 (the
  smallest largest error of the point sets tried: ``benchmarks/README.md``, "FOMM rendering").
- :data:`F3_2`, F(3x3, 2x2), for the sub-pixel (2x2) form of the up blocks: 16 for 36 (2.25x fewer);
  points 0, 1, -1. (:data:`F2_2`, F(2x2, 2x2), 9 for 16, was evaluated and is not chosen.)

Besides Winograd, :func:`tap_gemm_conv` computes a wide convolution with few output channels (the
generator's final 64 -> 3 7x7) as one wide matrix product and shifted additions: the same multiplies, a
faster kernel.

The input transform is one gather of the overlapping tiles (a strided copy, tile-major) and one matrix
product with ``B^T (x) B^T`` on the ``(a^2, tiles * C)`` view; the output transform one product with
``A^T (x) A^T`` and one strided copy into the channels_last output (with the residual added in the same
pass); the bias is added to the one product entry that every output reads with weight 1 (1/a^2 of the
products' size, not a pass over the output).

Numerics: the larger the tile, the larger the transform entries and the rounding error of one
convolution (F(4x4, 3x3) about 3x a direct float32 convolution's largest error, F(2x2, 3x3) below it);
the full-size frames stay as close to the plain path and to float64 as the direct kernels' frames
(``benchmarks/README.md``, "FOMM rendering"; ``tests/test_fast_paths.py`` pins each transform against a
float64 convolution and the fused blocks against the plain ones). Which transform a convolution gets is
decided in one place, :func:`choose_transform` (and :func:`use_tap_gemm` beside it), per shape and CPU kind
(:func:`cpu_kind`).

Not in the reference (FOMM uses ``nn.Conv2d``); the result is the same convolution up to float32 rounding.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Optional, Sequence

import torch

__all__ = ["WinogradTransform", "F2_3", "F4_3", "F3_2", "F2_2", "TRANSFORMS", "kernel_taps", "transform_taps",
           "winograd_weight", "winograd_conv",
           "winograd_applies", "choose_transform", "cpu_kind", "release_workspace", "TILES_PER_STEP",
           "tap_gemm_conv", "use_tap_gemm", "TAP_ROWS"]

TILES_PER_STEP = 128
"""Output tiles (over the batch) transformed and multiplied per step of :func:`winograd_conv` (whole tile rows,
at least one): bounds the reused temporaries (:func:`_workspace`) at ~``4 a^2 (TILES_PER_STEP (2 Cin + Cout)
+ Cin Cout)`` bytes (float32; the last term only for weights transformed per call), besides the padded input
and the output: 22 MiB for the bottleneck's F(4x4, 3x3) (two steps of 8 tile rows per 64x64 map, as fast as
one step of 16: ``benchmarks/README.md``, "FOMM rendering"). 1024 tiles held ~97 MiB for the encoder's
128 -> 256 convolution at 128x128 and raised the render's peak RSS by ~70 MiB."""


def _toom_cook(m: int, r: int, points: Sequence[Fraction]) -> tuple[list, list, list]:
    """Exact (rational) ``B^T (a x a)``, ``G (a x r)``, ``A^T (m x a)`` of F(m, r) for the finite
    interpolation ``points`` (``a - 1`` of them) and the point at infinity (Lavin & Gray, sec. 4; the
    Toom-Cook construction): ``A^T`` evaluates the output polynomial's coefficients, ``G`` the filter's at
    the points (divided by the Lagrange denominators), ``B^T`` the data's (the Lagrange basis, scaled)."""
    a = m + r - 1
    pts = [Fraction(p) for p in points]
    if len(pts) != a - 1 or len(set(pts)) != len(pts):
        raise ValueError(f"F({m}, {r}) needs {a - 1} distinct finite points, got {points}")
    at = [[p ** i for p in pts] + [Fraction(int(i == m - 1))] for i in range(m)]
    denom = []
    for j, p in enumerate(pts):
        d = Fraction(1)
        for k, q in enumerate(pts):
            if k != j:
                d *= p - q
        denom.append(d)
    g = [[p ** k / denom[j] for k in range(r)] for j, p in enumerate(pts)] + [[Fraction(int(k == r - 1)) for k in range(r)]]
    # B^T row j (finite point p_j): the coefficients of prod_{k != j} (x - p_k), i.e. the Lagrange numerator
    # (the denominators sit in G); the last row: the coefficients of prod_k (x - p_k) (the point at infinity).
    bt = []
    for j in range(a):
        poly = [Fraction(1)]
        for k, q in enumerate(pts):
            if k != j:
                poly = [(poly[i - 1] if i > 0 else 0) - q * (poly[i] if i < len(poly) else 0) for i in range(len(poly) + 1)]
        bt.append(poly + [Fraction(0)] * (a - len(poly)))
    return bt, g, at


@dataclass(frozen=True)
class WinogradTransform:
    """The matrices of one Winograd algorithm F(m x m, r x r): ``a = m + r - 1``.

    Attributes:
        name: e.g. ``"F(4x4,3x3)"``.
        m: output tile side; ``r``: kernel side.
        bt: ``B^T`` ``(a, a)``; ``g``: ``G`` ``(a, r)``; ``at``: ``A^T`` ``(m, a)``; float64, exact rationals.
        keep_transformed: whether the fused path caches the transformed weight ``(a^2, Cin, Cout)`` (``a^2 / r^2``
            times the weight's size) or keeps the kernel taps and transforms them on every call (one small
            matrix product: ``benchmarks/README.md``, "FOMM rendering"), so that its cache is no larger than
            the packed weight the direct path would keep.
    """

    name: str
    m: int
    r: int
    bt: torch.Tensor = field(repr=False)
    g: torch.Tensor = field(repr=False)
    at: torch.Tensor = field(repr=False)
    keep_transformed: bool = True

    @classmethod
    def from_points(cls, m: int, r: int, points: Sequence, *, keep_transformed: bool = True) -> "WinogradTransform":
        """F(m, r) from its ``m + r - 2`` finite interpolation points (and infinity)."""
        bt, g, at = _toom_cook(m, r, points)

        def t(rows: list) -> torch.Tensor:
            return torch.tensor([[float(v) for v in row] for row in rows], dtype=torch.float64)
        return cls(f"F({m}x{m},{r}x{r})", m, r, t(bt), t(g), t(at), keep_transformed)

    def weight_matrix(self, dtype: torch.dtype) -> torch.Tensor:
        """``G (x) G`` ``(a^2, r^2)``: the weight transform of a row-major flattened ``r x r`` kernel."""
        return torch.kron(self.g, self.g).to(dtype)

    @property
    def a(self) -> int:
        """Input tile side ``m + r - 1``."""
        return self.m + self.r - 1

    def input_matrix(self, dtype: torch.dtype) -> torch.Tensor:
        """``B^T (x) B^T`` ``(a^2, a^2)``: the input transform of a row-major flattened ``a x a`` tile."""
        return torch.kron(self.bt, self.bt).to(dtype)

    def output_matrix(self, dtype: torch.dtype) -> torch.Tensor:
        """``A^T (x) A^T`` ``(m^2, a^2)``: the output transform of a flattened ``a x a`` product tile."""
        return torch.kron(self.at, self.at).to(dtype)

    @property
    def bias_entry(self) -> int:
        """Index (into the ``a^2`` products) that every output of a tile reads with weight exactly 1: a
        bias added there reaches each output once."""
        ones = [j for j in range(self.a) if bool((self.at[:, j] == 1).all())]
        if not ones:
            raise ValueError(f"{self.name}: no column of A^T is all ones")
        return ones[0] * self.a + ones[0]


F2_3 = WinogradTransform.from_points(2, 3, [0, 1, -1])
"""F(2x2, 3x3): ``B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]`` up to row signs;
transformed weights cached (16/9 of the weight). Evaluated, not chosen since F(4x4, 3x3) (see
:func:`choose_transform`)."""
F4_3 = WinogradTransform.from_points(4, 3, [0, 1, -1, Fraction(1, 2), -2], keep_transformed=False)
"""F(4x4, 3x3), points 0, 1, -1, 1/2, -2 and infinity; weights transformed per call (4x the weight)."""
F3_2 = WinogradTransform.from_points(3, 2, [0, 1, -1], keep_transformed=False)
"""F(3x3, 2x2), points 0, 1, -1 and infinity: the up blocks' sub-pixel 2x2 convolutions (16 multiplies for 36);
weights transformed per call (4x the weight)."""
F2_2 = WinogradTransform.from_points(2, 2, [0, 1])
"""F(2x2, 2x2) (9 multiplies for 16): evaluated for the sub-pixel convolutions, not chosen (slower than F(3x3, 2x2))."""
TRANSFORMS = {t.name: t for t in (F2_3, F4_3, F3_2, F2_2)}


def kernel_taps(weight: torch.Tensor) -> torch.Tensor:
    """Kernels ``(Cout, Cin, r, r)`` -> ``(r^2, Cin, Cout)`` (tap ``(y, x)`` at ``r y + x``), contiguous: the
    layout :func:`transform_taps` multiplies by ``G (x) G``."""
    r = weight.shape[2]
    return weight.detach().permute(2, 3, 1, 0).reshape(r * weight.shape[3], weight.shape[1], weight.shape[0]).contiguous()


def transform_taps(taps: torch.Tensor, transform: WinogradTransform, *, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Kernel taps ``(r^2, Cin, Cout)`` (:func:`kernel_taps`) -> ``U = G g G^T`` as ``(a^2, Cin, Cout)``, in
    ``taps``' dtype (one matrix product; ``out``: an ``(a^2, Cin * Cout)`` tensor to write into)."""
    r2, cin, cout = taps.shape
    if r2 != transform.r ** 2:
        raise ValueError(f"{transform.name} needs {transform.r}x{transform.r} kernels, not {r2} taps")
    kg = transform.weight_matrix(taps.dtype).to(taps.device)
    return torch.mm(kg, taps.reshape(r2, cin * cout), out=out).view(transform.a ** 2, cin, cout)


def winograd_weight(weight: torch.Tensor, transform: WinogradTransform = F2_3) -> torch.Tensor:
    """Kernels ``(Cout, Cin, r, r)`` -> their transforms ``U = G g G^T`` as ``(a^2, Cin, Cout)``.

    ``U[a i + j]`` is the ``(Cin, Cout)`` matrix the input-transform entry ``(i, j)`` of every tile is
    multiplied by. Computed in float64 and rounded once to ``weight``'s dtype.

    Raises:
        ValueError: the kernel is not ``r x r`` for ``transform``.
    """
    if tuple(weight.shape[2:]) != (transform.r, transform.r):
        raise ValueError(f"{transform.name} needs {transform.r}x{transform.r} kernels, not {tuple(weight.shape[2:])}")
    return transform_taps(kernel_taps(weight.to(torch.float64)), transform).to(weight.dtype).contiguous()


def winograd_applies(conv: torch.nn.Conv2d, x: torch.Tensor, *, padding: Optional[Sequence[int]] = None) -> bool:
    """Whether :func:`winograd_conv` can compute ``conv`` (or its derived kernels, with ``padding``) on ``x``:
    a square-kernel, stride-1, dilation-1, ungrouped convolution with zero padding, float32 input and
    weight on CPU, input ``(B, C, H, W)``."""
    pad = tuple(conv.padding if padding is None else padding)
    return (x.device.type == "cpu" and x.dtype == torch.float32 and conv.weight.dtype == torch.float32
            and x.dim() == 4 and conv.kernel_size[0] == conv.kernel_size[1] and len(set(pad)) == 1
            and tuple(conv.stride) == (1, 1) and tuple(conv.dilation) == (1, 1) and conv.groups == 1
            and conv.padding_mode == "zeros")


_WORKSPACE = threading.local()


def _workspace(x: torch.Tensor, shapes: Sequence[tuple]) -> list[torch.Tensor]:
    """Disjoint tensors of ``shapes`` (``x``'s dtype) carved from one buffer kept per thread and grown
    as needed: the transforms' temporaries are reused from call to call instead of being allocated (and
    page-faulted in) afresh by every convolution (measured: ``benchmarks/README.md``, "FOMM rendering").
    Held until :func:`release_workspace`; at most the largest call's temporaries (see :data:`TILES_PER_STEP`)."""
    sizes = [math.prod(s) for s in shapes]
    buf = getattr(_WORKSPACE, "buf", None)
    if buf is None or buf.dtype != x.dtype or buf.device != x.device or buf.numel() < sum(sizes):
        _WORKSPACE.buf = None
        with torch.inference_mode(False):  # a plain tensor: usable in and out of inference mode
            buf = _WORKSPACE.buf = torch.empty(sum(sizes), dtype=x.dtype, device=x.device)
    out, start = [], 0
    for shape, size in zip(shapes, sizes):
        out.append(buf[start:start + size].view(shape))
        start += size
    return out


def release_workspace() -> None:
    """Free this thread's Winograd workspace (the next convolution allocates it again)."""
    _WORKSPACE.buf = None


def winograd_conv(x: torch.Tensor, u: torch.Tensor, bias: torch.Tensor, transform: WinogradTransform = F2_3, *,
                  padding: int = 1, relu: bool = False, residual: Optional[torch.Tensor] = None,
                  pre: Optional[tuple[torch.Tensor, torch.Tensor]] = None, out_padding: int = 0,
                  subpixel: bool = False, tiles_per_step: int = TILES_PER_STEP) -> torch.Tensor:
    """``conv(x, padding) + bias`` (then ``+ residual``, then ReLU if ``relu``) by Winograd ``transform``.

    Args:
        x: ``(B, Cin, H, W)`` float32 (any memory format; read as channels_last).
        u: ``(a^2, Cin, Cout)`` from :func:`winograd_weight` with the same ``transform``, or the kernel taps
            ``(r^2, Cin, Cout)`` (:func:`kernel_taps`), transformed here (:func:`transform_taps`).
        bias: ``(Cout,)``.
        transform: the algorithm, F(m, r) (kernel side ``r``).
        padding: zeros on each side; the output is ``(Ho, Wo) = (H + 2 padding - r + 1, W + 2 padding - r + 1)``.
        residual: optional ``(B, Cout, Ho, Wo)`` added to the result (before the ReLU).
        pre: optional per-input-channel ``(scale, shift)``, each ``(Cin,)``: the convolution is applied to
            ``relu(x * scale + shift)`` (an eval-mode batch norm and ReLU before it, e.g. a pre-activation
            residual block's), computed while the padded input is written instead of as a separate tensor.
        out_padding: write the output into the interior of a buffer with this many zeros on each side (when
            the tiles cover the output exactly; otherwise ignored), so that a following ``winograd_conv`` with
            that ``padding`` and no ``pre`` reads the buffer as its padded input instead of copying ``x`` into
            one (a residual block's conv1 -> conv2). The returned tensor is the interior (a strided view).
        subpixel: the ``Cout = 4 C`` outputs are the four phases of a 3x3 convolution after nearest x2
            upsampling, computed as 2x2 convolutions with ``padding`` 1 (``talkhead.fomm.blocks._subpixel_weight``,
            channel block ``2 (1 - p) + (1 - q)`` for output pixels ``(2 i + p, 2 j + q)``): they are written
            interleaved, straight from the output transform, into a zero-bordered buffer; the result is the
            ``(B, C, 2 H, 2 W)`` upsampled map, the interior of that buffer (a strided view, one pixel of zeros
            around it and a few more past its end) that a following :func:`winograd_conv` or
            :func:`tap_gemm_conv` reads as its padded input. Not with ``residual`` or ``out_padding``.
        tiles_per_step: output tiles transformed and multiplied at a time (whole tile rows; at least one
            row): see :data:`TILES_PER_STEP`.

    Returns:
        ``(B, Cout, Ho, Wo)`` in channels_last memory format (``(B, Cout / 4, 2 H, 2 W)`` with ``subpixel``).
    """
    m, r, a = transform.m, transform.r, transform.a
    bsz, cin, h, w = x.shape
    cout = u.shape[2]
    ho, wo = h + 2 * padding - r + 1, w + 2 * padding - r + 1
    th, tw = -(-ho // m), -(-wo // m)
    hp, wp = th * m + r - 1, tw * m + r - 1  # padded input: every tile complete (extra zeros past the end)
    if subpixel and (residual is not None or out_padding or padding != 1 or r != 2 or cout % 4):
        raise ValueError("subpixel output needs a 2x2 kernel, padding 1, 4 C outputs, no residual or out_padding")
    made = getattr(x, _PADDED, None)  # x is the interior of a zero-bordered buffer (out_padding, subpixel)
    if (pre is None and made is not None and made[1] == padding and made[0].shape[0] == bsz
            and made[0].shape[3] == cin and made[0].shape[1] >= hp and made[0].shape[2] >= wp):
        pad = made[0]  # zero past the interior up to (hp, wp) at least
    else:
        pad = _zero_bordered(x, (bsz, hp, wp, cin), padding, h, w)
        interior = pad[:, padding:padding + h, padding:padding + w]
        if pre is None:
            interior.copy_(x.permute(0, 2, 3, 1))
        else:
            torch.addcmul(pre[1], x.permute(0, 2, 3, 1), pre[0], out=interior).relu_()
        del interior
    q = out_padding if out_padding > 0 and th * m == ho and tw * m == wo else 0
    if subpixel:  # phase pixel (Y, X) of block (pp, qq) -> buffer pixel (2 Y + pp, 2 X + qq): image at [1, 2H]
        # at least as large as the padded input of a next sub-pixel conv with this transform on the 2H x 2W map
        framed = x.new_empty(bsz, max(2 * th * m, -(-(2 * h + 1) // m) * m + 1),
                             max(2 * tw * m, -(-(2 * w + 1) // m) * m + 1), cout // 4)
        fb, fr = framed.stride(0), framed.stride(1)
        c4 = cout // 4
    elif q:  # (B, H, W, Cout) inside a zero border: channels_last storage of (B, Cout, H, W), strided
        framed = _zero_bordered(x, (bsz, ho + 2 * q, wo + 2 * q, cout), q, ho, wo)
        out = framed[:, q:q + ho, q:q + wo]
    else:
        out = x.new_empty(bsz, th * m, tw * m, cout)  # (B, H, W, Cout): channels_last storage of (B, Cout, H, W)
    kb, ka = transform.input_matrix(x.dtype), transform.output_matrix(x.dtype)
    step = max(1, min(th, int(tiles_per_step) // max(1, bsz * tw)))
    n_max = bsz * step * tw
    taps = u.shape[0] == r * r
    # d (the gathered tiles) is dead once transformed, so the output transform's y reuses its memory
    dy, v, prods, ut = _workspace(x, [(max(a * a * n_max * cin, m * m * n_max * cout),), (a * a, n_max * cin),
                                      (a * a, n_max, cout), (a * a, cin * cout) if taps else (0,)])
    d, y = dy[:a * a * n_max * cin].view(a * a, n_max * cin), dy[:m * m * n_max * cout].view(m * m, n_max * cout)
    if taps:
        u = transform_taps(u, transform, out=ut)
    elif u.shape != (a * a, cin, cout):
        raise ValueError(f"{transform.name}: weight of shape {tuple(u.shape)} for {cin} -> {cout} channels")
    sb, sh, sw = pad.stride(0), pad.stride(1), pad.stride(2)  # the padded input's (may be wider than (hp, wp))
    corner = transform.bias_entry
    res = None if residual is None else residual.permute(0, 2, 3, 1)  # (B, Ho, Wo, Cout) view
    for t0 in range(0, th, step):
        tc = min(step, th - t0)
        n = bsz * tc * tw
        # tiles, entry-major: d[(i, j), (b, ty, tx, c)] = pad[b, m (t0 + ty) + i, m tx + j, c]
        tiles = pad.as_strided((a, a, bsz, tc, tw, cin), (sh, sw, sb, m * sh, m * sw, 1), t0 * m * sh)
        dd = d[:, :n * cin]
        dd.view(a, a, bsz, tc, tw, cin).copy_(tiles)
        vv = torch.mm(kb, dd, out=v[:, :n * cin]).view(a * a, n, cin)  # B^T d B of every tile
        mm = torch.bmm(vv, u, out=prods[:, :n])  # (a^2, n, Cout)
        mm[corner].add_(bias)
        yy = torch.mm(ka, mm.view(a * a, n * cout), out=y[:, :n * cout]).view(m, m, bsz, tc, tw, cout)
        if subpixel:  # (my, mx, b, ty, tx, pp, qq, c) -> framed[b, 2 ((t0 + ty) m + my) + pp, 2 (tx m + mx) + qq, c]
            dst = framed.as_strided((m, m, bsz, tc, tw, 2, 2, c4), (2 * fr, 2 * c4, fb, 2 * m * fr, 2 * m * c4, fr, c4, 1),
                                    framed.storage_offset() + 2 * t0 * m * fr)
            src = yy.view(m, m, bsz, tc, tw, 2, 2, c4)
            if relu:
                torch.clamp_min(src, 0.0, out=dst)
            else:
                dst.copy_(src)
            continue
        dst = out[:, t0 * m:(t0 + tc) * m].view(bsz, tc, m, tw, m, cout).permute(2, 4, 0, 1, 3, 5)
        r0, r1 = t0 * m, (t0 + tc) * m
        if res is None and relu:  # the ReLU on the way (one pass over the output fewer)
            torch.clamp_min(yy, 0.0, out=dst)
        elif res is None:
            dst.copy_(yy)
        elif r1 <= ho and tw * m == wo:  # the residual's rows cover the step: add it on the way
            torch.add(yy, res[:, r0:r1].view(bsz, tc, m, tw, m, cout).permute(2, 4, 0, 1, 3, 5), out=dst)
            if relu:
                dst.clamp_min_(0.0)
        else:
            dst.copy_(yy)
            rows = min(r1, ho) - r0
            out[:, r0:r0 + rows, :wo].add_(res[:, r0:r0 + rows])
            if relu:
                out[:, r0:r1].clamp_min_(0.0)
    del pad, dy, d, v, prods, y, ut
    if subpixel:  # zero everything but the upsampled map [1, 2H] x [1, 2W] (the phases' cropped border too)
        h2, w2 = 2 * (ho - 1), 2 * (wo - 1)
        framed[:, 0].zero_()
        framed[:, h2 + 1:].zero_()
        framed[:, 1:h2 + 1, 0].zero_()
        framed[:, 1:h2 + 1, w2 + 1:].zero_()
        image = framed[:, 1:h2 + 1, 1:w2 + 1].permute(0, 3, 1, 2)
        setattr(image, _PADDED, (framed, 1))
        return image
    if th * m != ho or tw * m != wo:
        out = out[:, :ho, :wo].contiguous()
    out = out.permute(0, 3, 1, 2)
    if q:
        setattr(out, _PADDED, (framed, q))
    return out


_PADDED = "_winograd_padded"
"""Attribute of a :func:`winograd_conv` output made with ``out_padding``: ``(buffer, padding)``, the
zero-bordered ``(B, H + 2 p, W + 2 p, C)`` buffer it is the interior of."""


def _zero_bordered(x: torch.Tensor, shape: tuple, padding: int, h: int, w: int) -> torch.Tensor:
    """An uninitialised ``shape`` = ``(B, Hp, Wp, C)`` tensor (``x``'s dtype and device) whose cells outside
    ``[padding, padding + h) x [padding, padding + w)`` are zero."""
    buf = x.new_empty(shape)
    bsz, hp, wp, c = shape
    buf[:, :padding].zero_()
    buf[:, padding + h:].zero_()
    if padding > 0:  # a row's right border and the next row's left border are one run of memory: one fill each
        buf.as_strided((bsz, h + 1, (wp - w) * c), (hp * wp * c, wp * c, 1),
                       buf.storage_offset() + ((padding - 1) * wp + padding + w) * c).zero_()
    else:
        buf[:, :h, w:].zero_()
    return buf


def cpu_kind(capability: Optional[str] = None) -> str:
    """This CPU's vector kind as torch's kernels see it: ``"avx512"`` or ``"avx2"`` (also anything
    older or not x86, e.g. ``"default"``, ``"neon"``, which run oneDNN's and MKL's narrower kernels too).

    Args:
        capability: ``torch.backends.cpu.get_cpu_capability()``'s answer (``"AVX512"``, ``"AVX2"``, ...);
            ``None`` asks torch.
    """
    if capability is None:
        capability = torch.backends.cpu.get_cpu_capability()
    return "avx512" if "AVX512" in str(capability).upper() else "avx2"


def choose_transform(kernel: int, cin: int, cout: int, height: int, width: int, *,
                     kind: Optional[str] = None) -> Optional[WinogradTransform]:
    """The Winograd transform the fused path uses for a stride-1 ``kernel x kernel`` convolution of
    ``cin -> cout`` channels on a ``height x width`` input, or ``None`` for the direct (oneDNN) kernel.

    The one place the choice is made, from one-thread CPU-time measurements of each FOMM shape against
    oneDNN's direct kernel on an AVX-512 CPU and with AVX2 kernels (``benchmarks/README.md``, "FOMM
    rendering", Winograd rows):

    - 3x3 on maps of 32x32 and more (the bottleneck at 64x64, the dense-motion hourglass's first two
      levels): F(4x4, 3x3), 1.2-2.1x faster than direct on both kinds; not on a 3-channel image input
      (tiny products: the keypoint detector's first conv ran 5.6x slower).
    - 3x3 on 16x16 maps: direct, although F(2x2, 3x3) was 1.2-1.4x faster there: in the dense-motion
      hourglass it moved SMAC's decoder parity (``tests/test_smac.py``, which reuses that network) past its
      reference tolerance (0.0125 > 0.0121), and it saved ~2 ms a frame. Smaller maps (8x8, 4x4: the deep
      hourglass levels, bound by reading the weights): direct.
    - 2x2 (the up blocks' sub-pixel form) on inputs of 32x32 and more: F(3x3, 2x2) on both kinds. With AVX2
      kernels it won at every such size (1.1-1.4x). With AVX-512 kernels it was first kept to 32x32 (the
      hourglass's last up block, 1.15x), from runs on a loaded machine where it tied oneDNN at 64x64 and lost
      at 128x128 (0.8x); on the idle machine it won there too: 1.42x and 1.49x per convolution, 1.067x per
      frame at 1 thread and 1.022x at 2 threads (``benchmarks/README.md``, "Weights held once"). The ``kind``
      argument stays for the next shape whose best kernel differs.

    Args:
        kernel: the kernel side; cin, cout: channels; height, width: the input's (= the output's, for 3x3).
        kind: :func:`cpu_kind`'s answer (``None`` asks it), so that tests cover both branches on any machine.
    """
    del kind  # both kinds agree today (measured, above)
    pixels = height * width
    if cin < 4:  # an image input (the keypoint detector's 3 -> 64 at 64x64: 5.6x slower than direct)
        return None
    if kernel == 3:
        return F4_3 if pixels >= 32 * 32 else None
    if kernel == 2 and pixels >= 32 * 32:
        return F3_2
    return None


TAP_ROWS = 32
"""Output rows per step of :func:`tap_gemm_conv`: bounds its product temporary at
``4 k^2 Cout (TAP_ROWS + k - 1) W`` bytes (5.7 MiB for the generator's final 7x7 conv at 256x256) and keeps
each shifted addition (``Cout x TAP_ROWS x W`` elements) under torch's parallel grain, so that the additions
run without thread barriers: fastest measured (1 thread) and the least hurt on a loaded machine with 2
threads (``benchmarks/README.md``, "FOMM rendering")."""


def tap_gemm_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, *, rows: int = TAP_ROWS) -> torch.Tensor:
    """A stride-1 ``k x k`` convolution with zero padding ``k // 2`` and few output channels, as one matrix
    product per band of rows, ``P = W_taps (k^2 Cout, Cin) @ X^T (Cin, pixels)``, then ``k^2`` shifted
    additions of ``P``'s image planes into the output: the same multiply-adds as the direct convolution
    (summed in another order), but the product runs as a wide GEMM where a direct kernel with 3 output
    channels uses a fraction of the vector units (measured: ``benchmarks/README.md``, "FOMM rendering").

    Args:
        x: ``(B, Cin, H, W)`` float (read as channels_last: ``X`` is a view of it, not a copy; when ``x`` is the
            interior of a zero-bordered buffer, e.g. a ``subpixel`` :func:`winograd_conv`'s output, the products
            run over the buffer's whole rows, a few columns wider, instead of a copy of ``x``).
        weight: ``(Cout, Cin, k, k)``, ``k`` odd; bias: ``(Cout,)``.
        rows: output rows per step (see :data:`TAP_ROWS`).

    Returns:
        ``(B, Cout, H, W)``, contiguous (NCHW).
    """
    bsz, cin, h, w = x.shape
    cout, _, k, _ = weight.shape
    p = k // 2
    taps = weight.permute(2, 3, 0, 1).reshape(k * k * cout, cin)  # rows (ky, kx, co)
    made = getattr(x, _PADDED, None)  # x is the interior of a zero-bordered buffer: multiply its whole rows
    if made is not None and made[0].shape[0] == bsz and made[0].shape[3] == cin and made[0].is_contiguous():
        xr, e = made[0], made[1]  # (B, H', W', Cin), x at [e, e + h) x [e, e + w)
    else:
        xr, e = x.permute(0, 2, 3, 1), 0
        if not xr.is_contiguous():
            xr = xr.contiguous()
    wr = xr.shape[2]  # the product's row width (w, or the buffer's)
    out = bias.view(1, cout, 1, 1).expand(bsz, cout, h, w).contiguous()
    band = max(1, min(int(rows), h))
    (work,) = _workspace(x, [(k * k * cout, (band + 2 * p) * wr)])
    for b in range(bsz):
        for y0 in range(0, h, band):
            y1 = min(h, y0 + band)
            r0, r1 = max(0, y0 - p), min(h, y1 + p)  # the input rows these outputs read
            n = (r1 - r0) * wr
            prod = torch.mm(taps, xr[b, r0 + e:r1 + e].reshape(n, cin).t(), out=work[:, :n]).view(k, k, cout, r1 - r0, wr)
            o = out[b, :, y0:y1]
            for ky in range(k):  # output row y reads input row y + ky - p
                ya, yb = max(y0, r0 - ky + p), min(y1, r1 - ky + p)
                if ya >= yb:
                    continue
                for kx in range(k):
                    xa, xb = max(0, p - kx), min(w, w + p - kx)
                    o[:, ya - y0:yb - y0, xa:xb] += prod[ky, kx, :, ya + ky - p - r0:yb + ky - p - r0,
                                                         xa + kx - p + e:xb + kx - p + e]
    return out


def use_tap_gemm(kernel: int, cin: int, cout: int, height: int, width: int, *, kind: Optional[str] = None) -> bool:
    """Whether the fused path computes a stride-1 ``kernel x kernel`` convolution (zero padding ``kernel // 2``)
    by :func:`tap_gemm_conv`: for wide kernels with at most 4 output channels on maps of 128x128 and more (the
    generator's final 64 -> 3 7x7 at 256x256: 1.5x faster with AVX2 kernels, 1.7x with AVX-512; the dense
    motion's 108 -> 12 heads at 64x64 stayed faster direct on both). Decided here, beside
    :func:`choose_transform`; ``kind`` as there (both kinds agree today)."""
    del kind  # the same rule for both kinds (measured)
    return kernel >= 5 and kernel % 2 == 1 and cout <= 4 and height * width >= 128 * 128
