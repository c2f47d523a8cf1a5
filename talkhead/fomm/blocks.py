"""Building blocks shared by the FOMM keypoint detector, dense motion network and generator.

Re-implementation of the layers in the official ``first-order-model/modules/util.py``
(Siarohin et al., "First Order Motion Model for Image Animation", NeurIPS 2019). Attribute names
are chosen so that ``state_dict()`` keys equal the official checkpoint's (``conv``, ``norm``,
``conv1``/``conv2``/``norm1``/``norm2``, ``encoder.down_blocks``, ``decoder.up_blocks``,
``weight`` of the anti-alias kernel), in the same registration order.

Batch norms are plain :class:`torch.nn.BatchNorm2d`: the official ``SynchronizedBatchNorm2d`` has the
same state-dict entries (``weight``, ``bias``, ``running_mean``, ``running_var``,
``num_batches_tracked``) and, in ``eval()`` mode, the same arithmetic (running statistics).

Coordinate convention: every grid lives in ``[-1, 1]``; channel 0 is x (column), channel 1 is y (row),
as ``F.grid_sample`` expects.

Fused inference. In ``eval()`` mode with autograd off (``torch.no_grad``/``inference_mode``) the blocks
take a faster path with the same maths (see :func:`fused_inference`): each batch norm that follows a
convolution is folded into it (``W' = W * g / sqrt(v + eps)``, ``b' = (b - m) * g / sqrt(v + eps) + beta``),
ReLUs and residual additions run in place, weights and activations are ``channels_last`` (NHWC, what
oneDNN convolutions run fastest on), and a nearest x2 upsampling followed by a 3x3 convolution is
computed as one 2x2 convolution per output phase on the low-resolution input (the sub-pixel form:
4/9 of the multiply-adds). Only the float rounding differs from the plain path (``tests/test_fomm.py``
holds the fused path to the reference tolerances, ``tests/test_fast_paths.py`` to the plain path within
1e-5; the measured full-size difference: ``benchmarks/README.md``, "FOMM rendering"). The derived
weights are cached on the module (on CPU only the oneDNN-packed copy, not the folded weight it was made
from: one extra copy of the weights, not two) and rebuilt when a parameter or running statistic changes
(in-place updates included). When the weights are memory-mapped from the checkpoint file
(:func:`mark_weights_mapped`, what :func:`talkhead.fomm.load_fomm` does on Linux), the pages a derived copy
replaces are dropped from the resident set as it is built (:func:`talkhead.memory.page_out`): the weights are
then held in memory once, as their packed or transformed copies, not twice.

On CPU in float32 the 3x3 convolutions (the generator's bottleneck: 12 of them at 256 channels and 64x64,
most of a frame's multiply-adds; the dense-motion hourglass at 16x16 and above) and the sub-pixel 2x2
convolutions of the up blocks run as Winograd convolutions where :func:`talkhead.fomm.winograd.choose_transform`
picks one for the shape and CPU kind (F(4x4, 3x3): 4x fewer multiplies; F(2x2, 3x3); F(3x3, 2x2));
:func:`winograd_inference` switches that part off.
"""
from __future__ import annotations

import contextlib
import math
import threading
from typing import Iterator, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..memory import page_out
from .winograd import (WinogradTransform, choose_transform, kernel_taps, tap_gemm_conv, use_tap_gemm, winograd_applies,
                       winograd_conv, winograd_weight)


def make_coordinate_grid(height: int, width: int, *, dtype: torch.dtype = torch.float32,
                         device: torch.device | str | None = None) -> torch.Tensor:
    """Regular grid over ``[-1, 1] x [-1, 1]``, shape ``(height, width, 2)`` as ``(x, y)``.

    ``grid[i, j] = (2 j / (width - 1) - 1, 2 i / (height - 1) - 1)``, the same values as the reference
    ``modules/util.py::make_coordinate_grid``.
    """
    x = torch.arange(width, dtype=dtype, device=device)
    y = torch.arange(height, dtype=dtype, device=device)
    x = 2 * (x / (width - 1)) - 1
    y = 2 * (y / (height - 1)) - 1
    return torch.stack(torch.broadcast_tensors(x[None, :], y[:, None]), dim=-1)


def kp2gaussian(value: torch.Tensor, spatial_size: Sequence[int], kp_variance: float) -> torch.Tensor:
    """Gaussian heatmap of each keypoint on a ``spatial_size`` grid (FOMM paper, Eq. 6 ``H_k``).

    Args:
        value: keypoint positions ``(..., K, 2)`` in ``[-1, 1]`` (x, y).
        spatial_size: ``(h, w)`` of the heatmap, pixels.
        kp_variance: variance of the isotropic gaussian, in squared grid units (0.01 in FOMM).

    Returns:
        ``(..., K, h, w)``: ``exp(-0.5 * |z - value|^2 / kp_variance)``. Matches the reference
        ``modules/util.py::kp2gaussian``.
    """
    h, w = int(spatial_size[0]), int(spatial_size[1])
    grid = make_coordinate_grid(h, w, dtype=value.dtype, device=value.device)
    diff = grid - value[..., None, None, :]  # (..., K, h, w, 2)
    return torch.exp(-0.5 * diff.pow(2).sum(-1) / kp_variance)


def inverse_2x2(m: torch.Tensor) -> torch.Tensor:
    """Closed-form inverse of a batch of 2x2 matrices ``(..., 2, 2)``.

    Cheaper than a batched LU on every device and free of host synchronisation; agrees with
    ``torch.inverse`` to float32 rounding for the well-conditioned FOMM jacobians. A singular matrix
    gives ``inf``/``nan`` entries (``torch.inverse`` would raise).
    """
    a, b = m[..., 0, 0], m[..., 0, 1]
    c, d = m[..., 1, 0], m[..., 1, 1]
    det = a * d - b * c
    adj = torch.stack([torch.stack([d, -b], -1), torch.stack([-c, a], -1)], -2)
    return adj / det[..., None, None]


_FUSED = threading.local()
CHANNELS_LAST = torch.channels_last


def fused_enabled() -> bool:
    """Whether the fused inference path is switched on (it is by default; see :func:`fused_inference`)."""
    return getattr(_FUSED, "enabled", True)


@contextlib.contextmanager
def fused_inference(enabled: bool = True) -> Iterator[None]:
    """Switch the fused inference path of the FOMM blocks on or off in this thread (a context manager).

    The fused path (module docstring) is taken by a module in ``eval()`` mode while autograd is off;
    ``with fused_inference(False):`` forces the plain, reference-shaped path, e.g. to compare the two.

    Public API for comparing the two paths (``tests/test_fast_paths.py``, ``benchmarks/bench_render.py``);
    not used by the CLI or the pipeline, which always run the default (on).
    """
    previous = fused_enabled()
    _FUSED.enabled = bool(enabled)
    try:
        yield
    finally:
        _FUSED.enabled = previous


def winograd_enabled() -> bool:
    """Whether the fused path runs its faster exact convolution algorithms where they apply (CPU, float32):
    the Winograd convolutions :func:`talkhead.fomm.winograd.choose_transform` picks and the tap GEMM of the
    final 7x7 (:func:`fused_narrow_conv`); on by default; see :func:`winograd_inference`."""
    return getattr(_FUSED, "winograd", True)


@contextlib.contextmanager
def winograd_inference(enabled: bool = True) -> Iterator[None]:
    """Switch the Winograd convolutions (and the final conv's tap GEMM) of the fused path on or off in this
    thread (a context manager); off, every convolution runs on oneDNN's direct kernels.

    Public API for comparing the two (``tests/test_fast_paths.py``, ``benchmarks/bench_render.py``);
    not used by the CLI or the pipeline, which always run the default (on)."""
    previous = winograd_enabled()
    _FUSED.winograd = bool(enabled)
    try:
        yield
    finally:
        _FUSED.winograd = previous


def use_fused(module: nn.Module) -> bool:
    """True when ``module`` should take the fused path: eval mode, autograd off, the switch on."""
    return not module.training and not torch.is_grad_enabled() and fused_enabled()


def _version_key(tensors: Sequence[Optional[torch.Tensor]]) -> tuple:
    """Identity of parameter values: storage, in-place version, device and dtype of each tensor.

    Inference tensors (made under ``torch.inference_mode``) have no version counter; they can only be
    modified in place inside inference mode, which this key cannot see (call ``clear_fused_cache``).
    """
    return tuple(None if t is None else (t.data_ptr(), None if t.is_inference() else t._version, t.device, t.dtype)
                 for t in tensors)


def clear_fused_cache(module: nn.Module) -> None:
    """Drop the cached fused weights of ``module`` and its children (rebuilt on the next fused call)."""
    for m in module.modules():
        for name in [n for n in m.__dict__ if n.startswith("_fused_")]:
            del m.__dict__[name]


MAPPED_WEIGHTS = "_mapped_weights"
"""Attribute :func:`mark_weights_mapped` sets on a module whose parameters are views of a mapped checkpoint file."""


def mark_weights_mapped(module: nn.Module, mapped: bool = True) -> None:
    """Record that the parameters of ``module`` and its children are memory-mapped from a checkpoint file
    (``torch.load(mmap=True)`` + ``load_state_dict(assign=True)``): once a convolution's derived weights exist
    (packed, Winograd-transformed or tap-ordered copies), the pages of the tensors they were built from are
    paged out (:func:`talkhead.memory.page_out`; read back from the file if ever needed again, e.g. for
    another input shape or the plain path). Only for file-backed weights: anonymous memory would go to swap."""
    for m in module.modules():
        m.__dict__[MAPPED_WEIGHTS] = bool(mapped)


def _release_sources(conv: nn.Module, sources: Sequence[Optional[torch.Tensor]], kept: Sequence[Optional[torch.Tensor]]) -> None:
    """Page out the ``sources`` a derived state of ``conv`` was built from (all but those it keeps using), if
    ``conv``'s weights are mapped (:func:`mark_weights_mapped`)."""
    if not conv.__dict__.get(MAPPED_WEIGHTS):
        return
    keep = {t.untyped_storage().data_ptr() for t in kept if t is not None}
    page_out([t for t in sources if t is not None and t.untyped_storage().data_ptr() not in keep])


def bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode batch norm as a per-channel affine map: ``bn(x) = x * scale + shift``, each ``(C,)``."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


def folded_weights(conv: nn.Conv2d, bn: Optional[nn.BatchNorm2d]) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight ``(Cout, Cin/g, kh, kw)`` (channels_last) and bias ``(Cout,)`` of ``bn(conv(x))`` as one conv.

    Computed afresh (not cached; :func:`conv_forward` keeps what it needs). Requires ``bn`` in eval
    mode (running statistics).
    """
    weight, bias = conv.weight, conv.bias
    if bias is None:
        bias = weight.new_zeros(weight.shape[0])
    if bn is not None:
        scale, shift = bn_scale_shift(bn)
        weight = weight * scale[:, None, None, None]
        bias = bias * scale + shift
    return weight.contiguous(memory_format=CHANNELS_LAST), bias.contiguous()


def conv_bn_sources(conv: nn.Conv2d, bn: Optional[nn.BatchNorm2d]) -> list[Optional[torch.Tensor]]:
    """The tensors :func:`folded_weights` reads (the cache key of a folded convolution)."""
    sources = [conv.weight, conv.bias]
    if bn is not None:
        sources += [bn.weight, bn.bias, bn.running_mean, bn.running_var]
    return sources


_PACKED_OPS = (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")
               and hasattr(torch._C._nn, "mkldnn_reorder_conv2d_weight"))
"""Whether this torch has the oneDNN ops for convolutions on pre-packed weights (those inductor uses)."""


class _FusedConvState:
    """What :func:`conv_forward` keeps per convolution and weight slot.

    ``bias`` always; ``packed``, the oneDNN-reordered weight for inputs of image shape ``shape`` ``(Cin, H, W)``
    (any batch size), on CPU; ``weight``, the channels_last weight, only while no packed copy replaces it
    (another device or dtype, or a case oneDNN refuses): keeping both would hold every convolution's weights
    twice. A new image shape re-derives the weight from the module's tensors to pack it again.
    """

    __slots__ = ("key", "weight", "bias", "packed", "shape", "unpackable")

    def __init__(self, key: tuple, weight: torch.Tensor, bias: Optional[torch.Tensor]):
        self.key, self.weight, self.bias = key, weight, bias
        self.packed: Optional[torch.Tensor] = None
        self.shape: Optional[tuple] = None
        self.unpackable: set = set()


def _cached_state(conv: nn.Conv2d, slot: str, sources: Sequence[Optional[torch.Tensor]], make):
    """The derived-weight state cached on ``conv`` under ``slot``, made afresh by ``make(key)`` when the
    :func:`_version_key` of ``sources`` changed (the stale state is dropped first, so its copies are
    released before new ones are built)."""
    key = _version_key(sources)
    state = conv.__dict__.get(slot)
    if state is None or state.key != key:
        conv.__dict__.pop(slot, None)
        state = conv.__dict__[slot] = make(key)
    return state


def _built(build) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    # built outside inference mode (plain tensors, like the module's own), without autograd
    with torch.inference_mode(False), torch.no_grad():
        return build()


def conv_forward(conv: nn.Conv2d, x: torch.Tensor, build, sources: Sequence[Optional[torch.Tensor]],
                 relu: bool = False, *, padding: Optional[Sequence[int]] = None,
                 cache: str = "_fused_conv") -> torch.Tensor:
    """``conv`` (its stride/dilation/groups and zero padding) applied with derived weights.

    Args:
        conv: the module whose settings are used (and on which the weights are cached, under ``cache``).
        x: ``(B, Cin, H, W)``.
        build: ``build() -> (weight (Cout, Cin / groups, kh, kw), bias (Cout,))``, the weights to apply
            (e.g. :func:`folded_weights`); called again only when one of ``sources`` changes (in place
            included) or a new input shape must be packed.
        sources: the tensors ``build`` reads (cache key: storage, version, device, dtype).
        relu: apply a ReLU to the result.
        padding: overrides ``conv.padding``; ``cache``: the cache slot name (one per weight).

    On CPU (float32, oneDNN available) the weight is reordered once into oneDNN's blocked layout
    (cached on ``conv`` for the input's image shape ``(Cin, H, W)``, replacing the built weight; packed for the
    first batch size seen and used for every other: the layout oneDNN picks does not depend on the batch here,
    and a kernel that wanted another would reorder it itself, same results: batch 1 ran as fast on weights
    packed for batch 4 as on its own, ``benchmarks/README.md``, "Batch size on CPU") and the ReLU is fused into
    the convolution: the same oneDNN kernel as ``F.conv2d`` on channels_last tensors (bit-identical
    results), without re-packing the weight on every call, which dominates the deep hourglass levels
    (2048 x 512 x 3 x 3 weights on 8x8 maps). Anywhere else: ``F.conv2d`` (+ in-place ReLU).
    """
    state = _cached_state(conv, cache, sources, lambda key: _FusedConvState(key, *_built(build)))
    padding = list(conv.padding if padding is None else padding)
    image = tuple(x.shape[1:])  # packed per image shape: every batch size runs on the same packed weight
    if (_PACKED_OPS and torch.backends.mkldnn.enabled and x.device.type == "cpu" and x.dtype == torch.float32
            and conv.padding_mode == "zeros" and state.bias is not None and state.bias.dtype == torch.float32
            and image not in state.unpackable):
        try:
            if state.shape != image:  # one image shape at a time (a render's batches share it)
                weight = state.weight if state.weight is not None else _built(build)[0]
                state.packed, state.shape = None, None
                with torch.inference_mode(False), torch.no_grad():
                    state.packed = torch._C._nn.mkldnn_reorder_conv2d_weight(
                        weight.contiguous().to_mkldnn(), padding, list(conv.stride), list(conv.dilation),
                        conv.groups, list(x.shape))
                state.shape, state.weight = image, None
                del weight
                _release_sources(conv, sources, [state.bias])
            return torch.ops.mkldnn._convolution_pointwise(
                x.contiguous(memory_format=CHANNELS_LAST), state.packed, state.bias, padding, list(conv.stride),
                list(conv.dilation), conv.groups, "relu" if relu else "none", [], "")
        except (RuntimeError, NotImplementedError):  # an unsupported case: the plain oneDNN call below
            state.unpackable.add(image)
    if state.weight is None:
        state.weight = _built(build)[0]
    out = F.conv2d(x, state.weight, state.bias, conv.stride, padding, conv.dilation, conv.groups)
    return out.relu_() if relu else out


class _WinogradState:
    """What :func:`winograd_forward` keeps per convolution: the source key, the transform, the bias and either
    the transformed weight ``u`` ``(a^2, Cin, Cout)`` (``transform.keep_transformed``) or the kernel taps
    ``(r^2, Cin, Cout)`` it is computed from on every call (the size of the weight: no larger than the packed
    copy the direct path would keep)."""

    __slots__ = ("key", "transform", "weight", "bias")

    def __init__(self, key: tuple, transform: WinogradTransform, weight: torch.Tensor, bias: torch.Tensor):
        self.key, self.transform, self.weight, self.bias = key, transform, weight, bias


def winograd_forward(conv: nn.Conv2d, x: torch.Tensor, build, sources: Sequence[Optional[torch.Tensor]], *,
                     kernel: Optional[int] = None, out_channels: Optional[int] = None,
                     padding: Optional[int] = None, relu: bool = False, residual: Optional[torch.Tensor] = None,
                     pre: Optional[tuple[torch.Tensor, torch.Tensor]] = None, out_padding: int = 0,
                     subpixel: bool = False, cache: str = "_fused_winograd") -> Optional[torch.Tensor]:
    """``relu?(conv'(x) + residual)`` by a Winograd convolution (:func:`talkhead.fomm.winograd.winograd_conv`),
    where ``conv'`` has the weights ``build()`` returns, or ``None`` where none applies (switched off, no
    transform chosen for the shape and CPU kind, not a stride-1 square zero-padded convolution, input or
    weight not float32 on CPU, under ``torch.autocast`` as ``--precision bf16`` runs): the caller then
    takes the direct path.

    Args:
        conv: the module whose settings are used and on which the derived weights are cached (``cache``).
        x: ``(B, Cin, H, W)``.
        build: ``build() -> (weight (Cout', Cin, k, k), bias (Cout',))``, e.g. :func:`folded_weights`.
        sources: the tensors ``build`` reads (the cache key, as in :func:`conv_forward`).
        kernel, out_channels, padding: ``k``, ``Cout'`` and the padding of the built convolution (default:
            ``conv``'s); known before building so that a convolution left to the direct path builds nothing.
        residual: ``(B, Cout', Ho, Wo)`` added before the ReLU.
        pre: ``(scale, shift)`` ``(Cin,)`` each: ``conv'`` is applied to ``relu(x * scale + shift)``
            (:func:`talkhead.fomm.winograd.winograd_conv`); with ``None`` returned the caller applies it itself.
        out_padding: the result is the interior of a zero-bordered buffer that the next Winograd convolution
            with this padding takes as its padded input (:func:`talkhead.fomm.winograd.winograd_conv`).
        subpixel: the built 2x2 convolution is an up block's four phases (:func:`_subpixel_weight`): the result
            is the upsampled ``(B, Cout' / 4, 2 H, 2 W)`` map, written in place by the output transform
            (:func:`talkhead.fomm.winograd.winograd_conv`).

    Returns:
        ``(B, Cout', Ho, Wo)`` channels_last (``(B, Cout' / 4, 2 H, 2 W)`` with ``subpixel``), or ``None``.
    """
    pad = int(conv.padding[0] if padding is None else padding)
    if (not winograd_enabled() or torch.is_autocast_enabled(x.device.type)
            or not winograd_applies(conv, x, padding=(pad, pad))):
        return None  # under autocast (--precision bf16/fp16): the direct convs, whose deviation was measured
    k = int(conv.kernel_size[0] if kernel is None else kernel)
    cout = int(conv.out_channels if out_channels is None else out_channels)
    transform = choose_transform(k, x.shape[1], cout, x.shape[2], x.shape[3])
    if transform is None:
        return None

    def make(key: tuple) -> _WinogradState:
        weight, bias = _built(build)
        with torch.inference_mode(False), torch.no_grad():
            kept = winograd_weight(weight, transform) if transform.keep_transformed else kernel_taps(weight)
        del weight
        _release_sources(conv, sources, [bias])
        return _WinogradState(key, transform, kept, bias)

    state = conv.__dict__.get(cache)
    if state is not None and state.transform is not transform:  # another shape chose another transform
        del conv.__dict__[cache]
    state = _cached_state(conv, cache, sources, make)
    return winograd_conv(x, state.weight, state.bias, transform, padding=pad, relu=relu, residual=residual, pre=pre,
                         out_padding=out_padding, subpixel=subpixel)


def fused_conv_bn(conv: nn.Conv2d, bn: Optional[nn.BatchNorm2d], x: torch.Tensor, relu: bool = False) -> torch.Tensor:
    """``bn(conv(x))`` (``bn`` folded into ``conv``; ``None``: the conv alone), then an optional ReLU;
    channels_last output. ``(B, Cin, H, W) -> (B, Cout, H', W')``."""
    return conv_forward(conv, x, lambda: folded_weights(conv, bn), conv_bn_sources(conv, bn), relu=relu)


def conv_bn_relu(conv: nn.Conv2d, bn: Optional[nn.BatchNorm2d], x: torch.Tensor) -> torch.Tensor:
    """``relu(bn(conv(x)))`` on the fused path: a Winograd convolution where :func:`winograd_forward` takes
    it, else :func:`fused_conv_bn`. Channels_last output."""
    y = winograd_forward(conv, x, lambda: folded_weights(conv, bn), conv_bn_sources(conv, bn), relu=True)
    return fused_conv_bn(conv, bn, x, relu=True) if y is None else y


def fused_conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` with its weight cached in channels_last (the output is channels_last)."""
    return fused_conv_bn(conv, None, x)


def fused_narrow_conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """``conv(x)`` for a convolution with few output channels (the generator's final 7x7): by
    :func:`talkhead.fomm.winograd.tap_gemm_conv` where :func:`talkhead.fomm.winograd.use_tap_gemm` picks it
    (CPU, float32, stride 1, zero padding ``k // 2``, not under autocast; switched off with the Winograd
    convolutions by :func:`winograd_inference`), else :func:`fused_conv`. ``(B, Cin, H, W) -> (B, Cout, H, W)``;
    the module's own weight is used (nothing cached)."""
    k = conv.kernel_size[0]
    if (winograd_enabled() and not torch.is_autocast_enabled(x.device.type)
            and winograd_applies(conv, x) and tuple(conv.padding) == (k // 2, k // 2) and k % 2 == 1
            and conv.bias is not None and use_tap_gemm(k, x.shape[1], conv.out_channels, x.shape[2], x.shape[3])):
        return tap_gemm_conv(x, conv.weight.detach(), conv.bias.detach())
    return fused_conv(conv, x)


def _subpixel_weight(weight: torch.Tensor) -> torch.Tensor:
    """3x3 kernels ``(Cout, Cin, 3, 3)`` of a conv after nearest x2 upsampling -> ``(4 Cout, Cin, 2, 2)``.

    Output pixel ``(2i + p, 2j + q)`` of ``conv3x3(upsample2x(x))`` reads upsampled rows
    ``2i + p - 1 .. 2i + p + 1``, i.e. input rows ``(i - 1, i)`` for ``p = 0`` with kernel rows
    ``(k0, k1 + k2)`` and ``(i, i + 1)`` for ``p = 1`` with ``(k0 + k1, k2)``; columns likewise. With padding
    1 the 2x2 convolution's pixel ``(i + p, j + q)`` is that output pixel. Phase ``(p, q)`` is the 2x2 kernel
    block ``k = 2 (1 - p) + (1 - q)`` (rows ``k Cout .. (k + 1) Cout``) of the result: in that order the
    phases' pixel ``(Y, X)`` lands at ``(2 Y + 1 - p, 2 X + 1 - q)`` of the upsampled map framed by one pixel,
    a layout with positive strides (:func:`talkhead.fomm.winograd.winograd_conv`'s ``subpixel`` output).
    """
    def halves(w: torch.Tensor, dim: int) -> list[torch.Tensor]:  # [p = 1, p = 0]
        k0, k1, k2 = w.unbind(dim)
        return [torch.stack([k0 + k1, k2], dim), torch.stack([k0, k1 + k2], dim)]

    return torch.cat([col for row in halves(weight, 2) for col in halves(row, 3)], dim=0)


SUBPIXEL_MIN_PIXELS = 256
"""Smallest input (H * W pixels) an up block computes in the sub-pixel form. Below 16x16 the 2x2
phase convolutions' one-pixel border ((H + 1)(W + 1) outputs) and their 16/9 larger weights outweigh
the saved multiply-adds (those layers are bound by reading the weights, not by arithmetic)."""


PIECE_MIN_PIXELS = 32 * 32
"""Smallest input map (H * W pixels) of an hourglass level that :meth:`Hourglass.forward_pieces` runs piece by
piece; the deeper levels run on all the pieces' frames at once. In FOMM's dense-motion hourglass (64x64 input)
the 64x64 and 32x32 levels go by pieces, the five levels from 16x16 down (~150 MB of weights, 3 % of its
multiply-adds) at once (measured: ``benchmarks/README.md``, "Fifth pass")."""


def _is_subpixel_conv(conv: nn.Conv2d) -> bool:
    return (tuple(conv.kernel_size) == (3, 3) and tuple(conv.padding) == (1, 1) and tuple(conv.stride) == (1, 1)
            and tuple(conv.dilation) == (1, 1) and conv.groups == 1 and conv.padding_mode == "zeros")


class ResBlock2d(nn.Module):
    """Pre-activation residual block, resolution preserving: ``x + conv2(relu(bn2(conv1(relu(bn1(x))))))``.

    Shapes: ``(B, C, H, W) -> (B, C, H, W)``. Reference: ``modules/util.py::ResBlock2d``.
    """

    def __init__(self, in_features: int, kernel_size=3, padding=1):
        super().__init__()
        # registration order fixes the state-dict order: conv1, conv2, norm1, norm2
        self.conv1 = nn.Conv2d(in_features, in_features, kernel_size=kernel_size, padding=padding)
        self.conv2 = nn.Conv2d(in_features, in_features, kernel_size=kernel_size, padding=padding)
        self.norm1 = nn.BatchNorm2d(in_features, affine=True)
        self.norm2 = nn.BatchNorm2d(in_features, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if use_fused(self):
            return self._fused(x)
        h = self.conv1(F.relu(self.norm1(x)))
        h = self.conv2(F.relu(self.norm2(h)))
        return h + x

    def _fused(self, x: torch.Tensor) -> torch.Tensor:
        # norm1 acts on the residual stream (which is also added back), so it is applied, not folded: as the
        # Winograd conv1 writes its padded input (relu(x * scale + shift)); conv1 writes its output into
        # conv2's padded input. norm2 directly follows conv1 and is folded into it.
        conv1, conv2, norm2 = self.conv1, self.conv2, self.norm2
        y = winograd_forward(conv1, x, lambda: folded_weights(conv1, norm2), conv_bn_sources(conv1, norm2), relu=True,
                             pre=bn_scale_shift(self.norm1), out_padding=int(conv2.padding[0]))
        if y is None:
            h = F.batch_norm(x, self.norm1.running_mean, self.norm1.running_var, self.norm1.weight, self.norm1.bias,
                             False, 0.0, self.norm1.eps).relu_()
            y = winograd_forward(conv1, h, lambda: folded_weights(conv1, norm2), conv_bn_sources(conv1, norm2), relu=True)
            y = fused_conv_bn(conv1, norm2, h, relu=True) if y is None else y
        h = y
        y = winograd_forward(conv2, h, lambda: folded_weights(conv2, None), conv_bn_sources(conv2, None), residual=x)
        return fused_conv(conv2, h).add_(x) if y is None else y


class UpBlock2d(nn.Module):
    """Nearest-neighbour x2 upsampling, then conv -> BN -> ReLU. ``(B, Cin, H, W) -> (B, Cout, 2H, 2W)``.

    Reference: ``modules/util.py::UpBlock2d``.
    """

    def __init__(self, in_features: int, out_features: int, kernel_size=3, padding=1, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size=kernel_size, padding=padding, groups=groups)
        self.norm = nn.BatchNorm2d(out_features, affine=True)

    def forward(self, x: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``x`` ``(B, Cin, H, W)`` -> ``(B, Cout, 2H, 2W)``.

        ``out`` (fused path only): a ``(B, Cout, 2H, 2W)`` tensor (e.g. a channel slice of a larger
        buffer) to write the result into; it is returned.
        """
        if use_fused(self):
            return self._fused(x, out)
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        result = F.relu(self.norm(self.conv(x)))
        if out is not None:
            return out.copy_(result)
        return result

    def _fused(self, x: torch.Tensor, out: Optional[torch.Tensor]) -> torch.Tensor:
        conv, norm = self.conv, self.norm
        if not _is_subpixel_conv(conv) or x.shape[2] * x.shape[3] < SUBPIXEL_MIN_PIXELS:
            result = conv_bn_relu(conv, norm, F.interpolate(x, scale_factor=2, mode="nearest"))
            return out.copy_(result) if out is not None else result

        def subpixel():
            weight, bias = folded_weights(conv, norm)
            return _subpixel_weight(weight).contiguous(memory_format=CHANNELS_LAST), bias.repeat(4)

        b, _, h, w = x.shape
        cout = conv.out_channels
        sources = conv_bn_sources(conv, norm)
        if out is None:  # the Winograd output transform writes the upsampled map itself (no phases buffer)
            up = winograd_forward(conv, x, subpixel, sources, kernel=2, out_channels=4 * cout, padding=1, relu=True,
                                  subpixel=True, cache="_fused_winograd_subpixel")
            if up is not None:
                return up
        phases = winograd_forward(conv, x, subpixel, sources, kernel=2, out_channels=4 * cout, padding=1, relu=True,
                                  cache="_fused_winograd_subpixel")
        if phases is None:
            phases = conv_forward(conv, x, subpixel, sources, relu=True, padding=(1, 1),
                                  cache="_fused_conv_subpixel")  # (B, 4 Cout, H + 1, W + 1)
        if out is None:
            out = torch.empty(b, cout, 2 * h, 2 * w, dtype=x.dtype, device=x.device, memory_format=CHANNELS_LAST)
        for p in range(2):
            for q in range(2):
                k = 2 * (1 - p) + (1 - q)  # the phase's block (_subpixel_weight)
                out[:, :, p::2, q::2] = phases[:, k * cout:(k + 1) * cout, p:p + h, q:q + w]
        return out


class DownBlock2d(nn.Module):
    """conv -> BN -> ReLU -> 2x2 average pooling. ``(B, Cin, H, W) -> (B, Cout, H/2, W/2)``.

    Reference: ``modules/util.py::DownBlock2d`` (its ``AvgPool2d`` holds no state, so it is functional here).
    """

    def __init__(self, in_features: int, out_features: int, kernel_size=3, padding=1, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size=kernel_size, padding=padding, groups=groups)
        self.norm = nn.BatchNorm2d(out_features, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if use_fused(self):
            return F.avg_pool2d(conv_bn_relu(self.conv, self.norm, x), kernel_size=2)
        return F.avg_pool2d(F.relu(self.norm(self.conv(x))), kernel_size=2)


class SameBlock2d(nn.Module):
    """conv -> BN -> ReLU, resolution preserving. ``(B, Cin, H, W) -> (B, Cout, H, W)``.

    Reference: ``modules/util.py::SameBlock2d``.
    """

    def __init__(self, in_features: int, out_features: int, groups: int = 1, kernel_size=3, padding=1):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, kernel_size=kernel_size, padding=padding, groups=groups)
        self.norm = nn.BatchNorm2d(out_features, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if use_fused(self):
            return conv_bn_relu(self.conv, self.norm, x)
        return F.relu(self.norm(self.conv(x)))


def _width(block_expansion: int, max_features: int, level: int) -> int:
    """Channel width at hourglass/encoder ``level``: ``min(max_features, block_expansion * 2**level)``."""
    return min(max_features, block_expansion * (2 ** level))


class Encoder(nn.Module):
    """Hourglass encoder: ``num_blocks`` :class:`DownBlock2d`; returns the input and every block output.

    Reference: ``modules/util.py::Encoder``.
    """

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int = 3, max_features: int = 256):
        super().__init__()
        self.down_blocks = nn.ModuleList(
            DownBlock2d(in_features if i == 0 else _width(block_expansion, max_features, i),
                        _width(block_expansion, max_features, i + 1), kernel_size=3, padding=1)
            for i in range(num_blocks))

    def forward(self, x: torch.Tensor, start: int = 0, stop: Optional[int] = None) -> list[torch.Tensor]:
        """``x`` and the outputs of down blocks ``start .. stop - 1`` (all by default), in order: ``x`` is the
        input of block ``start``."""
        outs = [x]
        for block in self.down_blocks[start:stop]:
            outs.append(block(outs[-1]))
        return outs


class Decoder(nn.Module):
    """Hourglass decoder: :class:`UpBlock2d` from the deepest level up, concatenating each skip.

    The output has ``out_filters = block_expansion + in_features`` channels at the input resolution.
    Reference: ``modules/util.py::Decoder``.
    """

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int = 3, max_features: int = 256):
        super().__init__()
        blocks = []
        for i in reversed(range(num_blocks)):
            mult = 1 if i == num_blocks - 1 else 2  # deeper levels receive [up, skip] concatenated
            blocks.append(UpBlock2d(mult * _width(block_expansion, max_features, i + 1),
                                    _width(block_expansion, max_features, i), kernel_size=3, padding=1))
        self.up_blocks = nn.ModuleList(blocks)
        self.out_filters = block_expansion + in_features

    def forward(self, skips: list[torch.Tensor], start: int = 0) -> torch.Tensor:
        """Up blocks ``start ..`` from ``skips[-1]``, each concatenated with the next skip from the end of
        ``skips`` (the encoder's outputs at the matching levels): ``len(skips) - 1`` blocks."""
        out = skips[-1]
        fused = use_fused(self)
        for block, skip in zip(self.up_blocks[start:start + len(skips) - 1], reversed(skips[:-1])):
            if fused:  # the up block writes straight into the concatenation buffer
                b, c, h, w = skip.shape
                cout = block.conv.out_channels
                buf = torch.empty(b, cout + c, h, w, dtype=skip.dtype, device=skip.device, memory_format=CHANNELS_LAST)
                block(out, out=buf[:, :cout])
                buf[:, cout:] = skip
                out = buf
            else:
                out = torch.cat([block(out), skip], dim=1)
        return out


class Hourglass(nn.Module):
    """U-Net style hourglass. ``(B, in_features, H, W) -> (B, block_expansion + in_features, H, W)``.

    ``H`` and ``W`` must be divisible by ``2**num_blocks``. Reference: ``modules/util.py::Hourglass``.
    """

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int = 3, max_features: int = 256):
        super().__init__()
        self.encoder = Encoder(block_expansion, in_features, num_blocks, max_features)
        self.decoder = Decoder(block_expansion, in_features, num_blocks, max_features)
        self.out_filters = self.decoder.out_filters

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))

    def forward_pieces(self, pieces: Sequence[torch.Tensor], min_pixels: int = PIECE_MIN_PIXELS) -> Iterator[torch.Tensor]:
        """:meth:`forward` of ``torch.cat(pieces)``, yielded piece by piece: ``(b_i, in_features, H, W) ->
        (b_i, out_filters, H, W)`` for each piece in order.

        The levels whose input maps have at least ``min_pixels`` pixels (large activations, small weights) run
        piece by piece; the deeper levels (small maps, large weights, bound by reading them) run once on all the
        pieces' frames together, so their weights are read once per call instead of once per piece. Every
        output frame equals :meth:`forward`'s (each convolution computes a frame the same way at any batch
        size); between the two halves only the pieces' skips at the top levels are held.
        """
        pieces = list(pieces)
        if not pieces:
            return
        n = len(self.encoder.down_blocks)
        h, w = pieces[0].shape[2:]
        top = 0
        while top < n and (h >> top) * (w >> top) >= min_pixels:
            top += 1
        if len(pieces) == 1 or top in (0, n):
            for x in pieces:
                yield self(x)
            return
        skips = [self.encoder(x, 0, top) for x in pieces]
        deep = self.decoder(self.encoder(torch.cat([s.pop() for s in skips]), top))
        start = 0
        for s in skips:
            b = s[0].shape[0]
            yield self.decoder([*s, deep[start:start + b]], n - top)
            start += b


class AntiAliasInterpolation2d(nn.Module):
    """Band-limited downsampling by ``scale`` (Gaussian blur, then keep every ``1/scale``-th pixel).

    The depthwise kernel has ``sigma = (1/scale - 1) / 2`` and size ``2 * round(4 sigma) + 1``
    (13x13 for scale 0.25), normalised to sum 1, and is a *persistent buffer* named ``weight`` of
    shape ``(channels, 1, k, k)``: it is part of the official checkpoints. The blur and the
    subsampling are fused into one strided convolution, equal to the reference's full convolution
    followed by ``[::s, ::s]``. Shapes: ``(B, C, H, W) -> (B, C, ceil(H*scale), ceil(W*scale))``.
    Reference: ``modules/util.py::AntiAliasInterpolation2d``.
    """

    def __init__(self, channels: int, scale: float):
        super().__init__()
        sigma = (1 / scale - 1) / 2
        size = 2 * round(sigma * 4) + 1
        self.ka = size // 2
        self.kb = self.ka - 1 if size % 2 == 0 else self.ka
        # computed on the CPU and then moved to the default device: under ``torch.device("meta")`` (the
        # store's layout listing) ``arange`` would run through torch's Python decompositions, which
        # import torch._dynamo and sympy for a 13x13 kernel (cost: benchmarks/README.md, "animate peak RSS")
        coords = torch.arange(size, dtype=torch.float32, device="cpu") - (size - 1) / 2
        g = torch.exp(-coords ** 2 / (2 * sigma ** 2)) if sigma > 0 else (coords == 0).float()
        kernel = g[:, None] * g[None, :]
        kernel = kernel / kernel.sum()
        self.register_buffer("weight", kernel.expand(channels, 1, size, size).clone().to(torch.get_default_device()))
        self.groups = channels
        self.scale = scale
        self.stride = int(1 / scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.scale == 1.0:
            return x
        x = F.pad(x, (self.ka, self.kb, self.ka, self.kb))
        return F.conv2d(x, self.weight, stride=self.stride, groups=self.groups)


def check_scale(scale: float) -> bool:
    """True when ``1/scale`` is a positive integer (the only scales the anti-alias resampler supports)."""
    if not 0 < scale <= 1:
        return False
    inv = 1 / scale
    return math.isclose(inv, round(inv), rel_tol=0, abs_tol=1e-9)
