"""GFPGAN v1 "clean" (no custom CUDA ops): a U-Net encoder whose style code and per-level SFT
conditions drive a StyleGAN2 decoder; checkpoint-compatible with TencentARC's ``GFPGANv1.4.pth``.

Written for talkhead from the paper (Wang et al., "Towards Real-World Blind Face Restoration with
Generative Facial Prior", CVPR 2021) and the structure of TencentARC/GFPGAN's
``gfpgan/archs/gfpganv1_clean_arch.py`` + ``stylegan2_clean_arch.py`` (Apache-2.0): every parameter
and buffer has the released key name and shape (:mod:`talkhead.gfpgan.layout`), and the forward
pass matches theirs within 1e-5 (``tests/data/gfpgan/parity.npz``, made by
``tests/data/gfpgan/make_parity.py``; docs/fixtures.md).

Differences from the reference, on purpose:

* the decoder's noise is always the checkpoint's stored noise (``stylegan_decoder.noises.noise{i}``,
  the reference's ``randomize_noise=False``): the same face in gives the same face out, frame after
  frame. The reference's default draws fresh Gaussian noise on every call.
* only what restoration runs is computed: no intermediate RGB outputs (``toRGB`` weights are kept
  so the released file loads strictly), no style mixing, truncation or latent return, no training
  options (``decoder_load_path``, ``fix_decoder``).

Tensor convention: faces ``(B, 3, N, N)`` float RGB in [-1, 1] (``N`` = :attr:`GFPGANConfig.out_size`,
512 for v1.4), in and out. :class:`talkhead.gfpgan.GFPGANRestorer` wraps it for [0, 1] faces.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["GFPGANConfig", "GFPGANv1Clean"]


@dataclass(frozen=True)
class GFPGANConfig:
    """Widths of a GFPGANv1Clean. The defaults are GFPGAN v1.4's (``GFPGANer(arch="clean")``).

    Attributes:
        out_size: face side ``N``, pixels (a power of two, >= 16).
        num_style_feat: style code width.
        channel_multiplier: StyleGAN2's channel multiplier (levels 64 px and finer).
        narrow: width ratio of every level (the U-Net uses half of it).
        num_mlp: style MLP layers (their weights are in the file; unused: GFPGAN v1.4's encoder gives
            the latent directly, the reference's ``input_is_latent=True``, the only mode here).
        different_w: one style code per decoder layer (v1.4: yes).
        sft_half: the SFT conditions modulate half of the decoder's channels (v1.4: yes).
    """

    out_size: int = 512
    num_style_feat: int = 512
    channel_multiplier: int = 2
    narrow: float = 1.0
    num_mlp: int = 8
    different_w: bool = True
    sft_half: bool = True

    def __post_init__(self) -> None:
        log = math.log2(self.out_size) if self.out_size > 0 else 0.5
        if log != int(log) or self.out_size < 16:
            raise ValueError(f"GFPGAN out_size must be a power of two >= 16, not {self.out_size}")

    @property
    def log_size(self) -> int:
        return int(math.log2(self.out_size))

    def channels(self, res: int, unet: bool = False) -> int:
        """Channels at resolution ``res`` (decoder; ``unet``: the encoder's, half as wide)."""
        narrow = self.narrow * (0.5 if unet else 1.0)
        base = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * self.channel_multiplier,
                128: 128 * self.channel_multiplier, 256: 64 * self.channel_multiplier,
                512: 32 * self.channel_multiplier, 1024: 16 * self.channel_multiplier}[res]
        return int(base * narrow)

    @property
    def num_layers(self) -> int:
        """Style convolutions of the decoder (one noise map each)."""
        return (self.log_size - 2) * 2 + 1

    @property
    def num_latent(self) -> int:
        """Style codes the decoder reads (convolutions + to-RGB layers)."""
        return self.log_size * 2 - 2


# ------------------------------------------------------------------------------------------ decoder parts
class ModulatedConv2d(nn.Module):
    """StyleGAN2's weight-modulated convolution (no bias): the weight is scaled per input channel by
    an affine map of the style, optionally demodulated to unit norm per output channel, and applied
    as one grouped convolution over the batch. ``sample_mode`` "upsample" doubles the input
    (bilinear, half-pixel centres) before the convolution."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, num_style_feat: int, *, demodulate: bool = True,
                 upsample: bool = False, eps: float = 1e-8):
        super().__init__()
        self.in_ch, self.out_ch, self.k = in_ch, out_ch, kernel_size
        self.demodulate, self.upsample, self.eps = demodulate, upsample, eps
        self.modulation = nn.Linear(num_style_feat, in_ch, bias=True)
        self.weight = nn.Parameter(torch.randn(1, out_ch, in_ch, kernel_size, kernel_size)
                                   / math.sqrt(in_ch * kernel_size ** 2))

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """``x (B, in, H, W)``, ``style (B, num_style_feat)`` -> ``(B, out, H', W')``."""
        b = x.shape[0]
        w = self.weight * self.modulation(style)[:, None, :, None, None]        # (B, out, in, k, k)
        if self.demodulate:
            w = w * torch.rsqrt(w.square().sum(dim=(2, 3, 4), keepdim=True) + self.eps)
        if self.upsample:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        h, wd = x.shape[2:]
        out = F.conv2d(x.reshape(1, b * self.in_ch, h, wd), w.reshape(b * self.out_ch, self.in_ch, self.k, self.k),
                       padding=self.k // 2, groups=b)
        return out.reshape(b, self.out_ch, *out.shape[2:])


class StyleConv(nn.Module):
    """Modulated 3x3 convolution (x sqrt 2), + ``weight`` x noise, + bias, leaky ReLU 0.2."""

    def __init__(self, in_ch: int, out_ch: int, num_style_feat: int, upsample: bool = False):
        super().__init__()
        self.modulated_conv = ModulatedConv2d(in_ch, out_ch, 3, num_style_feat, upsample=upsample)
        self.weight = nn.Parameter(torch.zeros(1))
        self.bias = nn.Parameter(torch.zeros(1, out_ch, 1, 1))

    def forward(self, x: torch.Tensor, style: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        out = self.modulated_conv(x, style) * math.sqrt(2.0) + self.weight * noise + self.bias
        return F.leaky_relu(out, 0.2)


class ToRGB(nn.Module):
    """Modulated 1x1 convolution to RGB (not demodulated) + bias, added to the upsampled skip image."""

    def __init__(self, in_ch: int, num_style_feat: int, upsample: bool = True):
        super().__init__()
        self.upsample = upsample
        self.modulated_conv = ModulatedConv2d(in_ch, 3, 1, num_style_feat, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, style: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        out = self.modulated_conv(x, style) + self.bias
        if skip is not None:
            if self.upsample:
                skip = F.interpolate(skip, scale_factor=2, mode="bilinear", align_corners=False)
            out = out + skip
        return out


class ConstantInput(nn.Module):
    """The decoder's learned 4x4 starting tensor."""

    def __init__(self, channels: int, size: int = 4):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, channels, size, size))


class _NormStyleCode(nn.Module):
    """Pixel norm of style codes (first layer of the style MLP; no parameters)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + 1e-8)


class StyleGAN2GeneratorCSFT(nn.Module):
    """StyleGAN2 decoder with spatial feature transforms (SFT): after the first convolution of each
    resolution, (half of) the features are scaled and shifted by the U-Net's conditions. Uses the
    stored noise buffers ``noises.noise{i}`` ``(1, 1, r, r)``."""

    def __init__(self, cfg: GFPGANConfig):
        super().__init__()
        nsf = cfg.num_style_feat
        mlp: list[nn.Module] = [_NormStyleCode()]
        for _ in range(cfg.num_mlp):
            mlp += [nn.Linear(nsf, nsf), nn.LeakyReLU(0.2)]
        self.style_mlp = nn.Sequential(*mlp)
        self.sft_half = cfg.sft_half
        c4 = cfg.channels(4)
        self.constant_input = ConstantInput(c4)
        self.style_conv1 = StyleConv(c4, c4, nsf)
        self.to_rgb1 = ToRGB(c4, nsf, upsample=False)
        self.style_convs, self.to_rgbs = nn.ModuleList(), nn.ModuleList()
        self.noises = nn.Module()   # registered after the two lists: the released file's key order
        for i in range(cfg.num_layers):
            r = 2 ** ((i + 5) // 2)
            self.noises.register_buffer(f"noise{i}", torch.randn(1, 1, r, r))
        in_ch = c4
        for level in range(3, cfg.log_size + 1):
            out_ch = cfg.channels(2 ** level)
            self.style_convs.append(StyleConv(in_ch, out_ch, nsf, upsample=True))
            self.style_convs.append(StyleConv(out_ch, out_ch, nsf))
            self.to_rgbs.append(ToRGB(out_ch, nsf))
            in_ch = out_ch
        self.num_layers = cfg.num_layers

    def forward(self, latent: torch.Tensor, conditions: list[torch.Tensor]) -> torch.Tensor:
        """``latent (B, num_latent, nsf)`` (one code per layer), ``conditions`` (scale, shift) per level
        -> image ``(B, 3, N, N)``."""
        noise = [getattr(self.noises, f"noise{i}") for i in range(self.num_layers)]
        out = self.constant_input.weight.expand(latent.shape[0], -1, -1, -1)
        out = self.style_conv1(out, latent[:, 0], noise[0])
        skip = self.to_rgb1(out, latent[:, 1])
        for j, to_rgb in enumerate(self.to_rgbs):
            i = 2 * j + 1
            out = self.style_convs[2 * j](out, latent[:, i], noise[i])
            if i < len(conditions):
                scale, shift = conditions[i - 1], conditions[i]
                if self.sft_half:
                    keep, mod = out.split(out.shape[1] // 2, dim=1)
                    out = torch.cat([keep, mod * scale + shift], dim=1)
                else:
                    out = out * scale + shift
            out = self.style_convs[2 * j + 1](out, latent[:, i + 1], noise[i + 1])
            skip = to_rgb(out, latent[:, i + 2], skip)
        return skip


# ------------------------------------------------------------------------------------------ encoder parts
class ResBlock(nn.Module):
    """Residual block that halves (``down``) or doubles (``up``) the resolution, bilinearly."""

    def __init__(self, in_ch: int, out_ch: int, down: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, in_ch, 3, 1, 1)
        self.conv2 = nn.Conv2d(in_ch, out_ch, 3, 1, 1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1, bias=False)
        self.factor = 0.5 if down else 2.0

    def _resize(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=self.factor, mode="bilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._resize(F.leaky_relu(self.conv1(x), 0.2))
        out = F.leaky_relu(self.conv2(out), 0.2)
        return out + self.skip(self._resize(x))


def _condition_branch(ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(ch, ch, 3, 1, 1), nn.LeakyReLU(0.2), nn.Conv2d(ch, out_ch, 3, 1, 1))


class GFPGANv1Clean(nn.Module):
    """The GFPGAN v1 clean network (keys and shapes of the released ``params_ema``).

    Args:
        config: widths (:class:`GFPGANConfig`; default: v1.4's).

    Call: ``face (B, 3, N, N)`` float RGB in [-1, 1] -> restored face ``(B, 3, N, N)``, roughly in
    [-1, 1] (not clamped). Deterministic: the decoder's noise is the stored buffers.
    """

    def __init__(self, config: GFPGANConfig | None = None):
        super().__init__()
        cfg = self.config = config or GFPGANConfig()
        self.log_size = L = cfg.log_size
        unet = lambda res: cfg.channels(res, unet=True)  # noqa: E731
        self.conv_body_first = nn.Conv2d(3, unet(cfg.out_size), 1)
        self.conv_body_down = nn.ModuleList()
        in_ch = unet(cfg.out_size)
        for level in range(L, 2, -1):
            self.conv_body_down.append(ResBlock(in_ch, unet(2 ** (level - 1)), down=True))
            in_ch = unet(2 ** (level - 1))
        self.final_conv = nn.Conv2d(in_ch, unet(4), 3, 1, 1)
        self.conv_body_up = nn.ModuleList()
        in_ch = unet(4)
        for level in range(3, L + 1):
            self.conv_body_up.append(ResBlock(in_ch, unet(2 ** level), down=False))
            in_ch = unet(2 ** level)
        self.toRGB = nn.ModuleList([nn.Conv2d(unet(2 ** level), 3, 1) for level in range(3, L + 1)])
        codes = cfg.num_latent if cfg.different_w else 1
        self.final_linear = nn.Linear(unet(4) * 16, codes * cfg.num_style_feat)
        self.stylegan_decoder = StyleGAN2GeneratorCSFT(cfg)
        self.condition_scale, self.condition_shift = nn.ModuleList(), nn.ModuleList()
        for level in range(3, L + 1):
            ch = unet(2 ** level)
            sft = ch if cfg.sft_half else 2 * ch
            self.condition_scale.append(_condition_branch(ch, sft))
            self.condition_shift.append(_condition_branch(ch, sft))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        feat = F.leaky_relu(self.conv_body_first(x), 0.2)
        skips = []
        for block in self.conv_body_down:
            feat = block(feat)
            skips.append(feat)
        feat = F.leaky_relu(self.final_conv(feat), 0.2)
        code = self.final_linear(feat.flatten(1))
        latent = (code.view(code.shape[0], -1, cfg.num_style_feat) if cfg.different_w
                  else code[:, None].expand(-1, cfg.num_latent, -1))
        conditions = []
        for up, scale, shift, skip in zip(self.conv_body_up, self.condition_scale, self.condition_shift,
                                          reversed(skips)):
            feat = up(feat + skip)
            conditions += [scale(feat), shift(feat)]
        return self.stylegan_decoder(latent, conditions)
