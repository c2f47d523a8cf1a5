"""SMAC generator: VQGAN encoder/decoder with motion and appearance codebook compensation at 4 scales.

Re-implementation of ``AppMotionCompFormer`` (``basicsr/archs/appmotioncodebook_arch.py`` of
``ShaelynZ/synergize-motion-appearance``; Zhao, Hong, Huang, Xu, "Synergizing Motion and Appearance:
Multi-Scale Compensatory Codebooks for Talking Head Video Generation", CVPR 2025, Sec. 3.2-3.4),
inference path only (``inference=True``, ``w=1``). Module names give the official state-dict keys
(``net_g_latest.pth``), including the training-only ``to_motion`` head and both quantisers' codebooks.

Data flow for one source image ``x`` (B, 3, 256, 256) in ``[-1, 1]`` and the FOMM-style dense motion
of :class:`~talkhead.smac.motion_estimator.DenseMotionNetwork` (deformation (B, 64, 64, 2), occlusion
(B, 1, 64, 64), driving keypoint gaussians (B, 15, 64, 64)):

1. encoder -> features at 256/128/64 px (blocks 2, 5, 8) and the 32x32x256 latent (block 18);
2. scale 32 (the latent): motion compensation (:meth:`AppMotionCompFormer.motion_codebook_compensation`)
   adds a residual flow and occlusion logit to the dense motion; the latent is warped and occluded
   (``lq_feat``) and refined by appearance compensation (:meth:`AppMotionCompFormer.app_codebook_compensation`);
3. decoder; after blocks 9, 12, 15 (64, 128, 256 px) the same two compensations run on the encoder
   feature of that size, which is fused into the decoder by an SFT block (``fuse_convs_dict``) plus a
   3x3 conv (``fuse_ms_dict``).

Grid conventions (fixture ``parity.conventions.json``): every ``grid_sample`` and bilinear
``interpolate`` here uses ``align_corners=True`` (unlike the dense motion network's warp).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .vqgan import Downsample, Encoder, Generator, ResBlock, Upsample, VectorQuantizer, normalize

#: channels of the encoder/decoder features at each resolution (reference ``self.channels``)
CHANNELS = {32: 256, 64: 128, 128: 128, 256: 64}
#: encoder block whose output is the source feature at that resolution (reference ``fuse_encoder_block``)
ENCODER_TAPS = {256: 2, 128: 5, 64: 8}
#: decoder block after which the feature of that resolution is fused (reference ``fuse_generator_block``)
DECODER_TAPS = {64: 9, 128: 12, 256: 15}
#: 1-based scale index k of the codebook prefix ``[: size // n * k]`` (reference ``dict``)
SCALE_INDEX = {32: 1, 64: 2, 128: 3, 256: 4}
TOKENS_SIDE = 32  # the transformers work on 32 x 32 = 1024 tokens at every scale


class PatchTokens(nn.Module):
    """``(B, C, p*h, p*w) -> (B, h*w, p*p*C)``: non-overlapping ``p x p`` patches, ``(p1, p2, c)`` order.

    Same layout as einops ``'b c (h p1) (w p2) -> b (h w) (p1 p2 c)'`` (reference patch embedding).
    """

    def __init__(self, patch: int):
        super().__init__()
        self.patch = patch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hh, ww = x.shape
        p = self.patch
        x = x.reshape(b, c, hh // p, p, ww // p, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(b, (hh // p) * (ww // p), p * p * c)


class TokensToPatches(nn.Module):
    """Inverse of :class:`PatchTokens`: ``(B, h*w, p*p*C) -> (B, C, p*h, p*w)`` with ``h`` given."""

    def __init__(self, patch: int, h: int):
        super().__init__()
        self.patch, self.h = patch, h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        p, h = self.patch, self.h
        w = n // h
        c = d // (p * p)
        x = x.reshape(b, h, w, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(b, c, h * p, w * p)


class SwapLastAxes(nn.Module):
    """``(B, N, D) -> (B, D, N)`` (einops ``'b n d -> b d n'``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2)


class TransformerLayer(nn.Module):
    """Pre-norm transformer layer: self-attention, cross-attention to a codebook, 3x3-conv FFN.

    Tokens are ``(L, B, D)`` with ``L = h * w`` (sequence first, as ``nn.MultiheadAttention``'s
    default); the FFN reshapes them to ``(B, D, h, w)`` and applies ``conv2(gelu(conv1(.)))``.
    Positional embeddings are added to queries and keys (not values). Reference:
    ``appmotioncodebook_arch.TransformerLayer`` (after CodeFormer), with ``use_spatial_attn`` and
    ``use_residual`` off, dropout 0.
    """

    def __init__(self, embed_dim: int, nhead: int = 8, dim_conv: int = 2048, dropout: float = 0.0):
        super().__init__()
        self.embed_dim = embed_dim
        self.self_attn = nn.MultiheadAttention(embed_dim, nhead, dropout=dropout)
        self.cross_attn = nn.MultiheadAttention(embed_dim, nhead, dropout=dropout)
        self.conv1 = nn.Conv2d(embed_dim, dim_conv, kernel_size=3, padding=1)
        self.conv2 = nn.Conv2d(dim_conv, embed_dim, kernel_size=3, padding=1)
        self.norm1 = nn.LayerNorm(embed_dim)
        self.norm2 = nn.LayerNorm(embed_dim)
        self.norm3 = nn.LayerNorm(embed_dim)

    def forward(self, tgt: torch.Tensor, context: torch.Tensor, hw: tuple[int, int],
                key_padding_mask: Optional[torch.Tensor] = None,
                query_pos: Optional[torch.Tensor] = None) -> torch.Tensor:
        """One layer.

        Args:
            tgt: query tokens ``(h*w, B, D)``.
            context: codebook entries ``(N, B, D)`` (keys and values of the cross-attention).
            hw: ``(h, w)`` token grid.
            key_padding_mask: bool ``(B, h*w)``, True = token ignored as a self-attention key.
            query_pos: positional embedding ``(h*w, B, D)`` or ``None``.

        Returns:
            ``(h*w, B, D)``.
        """
        h, w = hw
        b = tgt.shape[1]
        t2 = self.norm1(tgt)
        # q and k are two separate tensors as in the reference, so the in-projection runs q, k, v apart;
        # need_weights stays on (the reference default), which selects the explicit softmax(QK^T) path
        q = t2 if query_pos is None else t2 + query_pos
        k = t2 if query_pos is None else t2 + query_pos
        tgt = tgt + self.self_attn(q, k, value=t2, key_padding_mask=key_padding_mask)[0]
        t2 = self.norm2(tgt)
        q = t2 if query_pos is None else t2 + query_pos
        tgt = tgt + self.cross_attn(q, context, value=context)[0]
        t2 = self.norm3(tgt).permute(1, 2, 0).reshape(b, self.embed_dim, h, w)
        t2 = self.conv2(F.gelu(self.conv1(t2)))
        return tgt + t2.reshape(b, self.embed_dim, h * w).permute(2, 0, 1)


class BasicMotionEncoder(nn.Module):
    """MRFA motion encoder: motion features + flow -> ``(B, 128, H, W)`` (126 channels + the flow).

    Args of :meth:`forward`: ``delta_flow`` (B, 2, H, W) in pixels, ``motion_feat`` (B, motion_dim, H, W).
    Reference: ``appmotioncodebook_arch.BasicMotionEncoder`` ("from MRFA").
    """

    def __init__(self, motion_dim: int):
        super().__init__()
        self.convc1 = nn.Conv2d(motion_dim, 128, 1, padding=0)
        self.convc2 = nn.Conv2d(128, 96, 3, padding=1)
        self.convf1 = nn.Conv2d(2, 128, 7, padding=3)
        self.convf2 = nn.Conv2d(128, 64, 3, padding=1)
        self.conv = nn.Conv2d(64 + 96, 128 - 2, 3, padding=1)

    def forward(self, delta_flow: torch.Tensor, motion_feat: torch.Tensor) -> torch.Tensor:
        cor = F.relu(self.convc2(F.relu(self.convc1(motion_feat))))
        flo = F.relu(self.convf2(F.relu(self.convf1(delta_flow))))
        out = F.relu(self.conv(torch.cat([cor, flo], dim=1)))
        return torch.cat([out, delta_flow], dim=1)


class RefineFlow(nn.Module):
    """MRFA refinement head: ``(m_f (B, 128, H, W), warp_f (B, 192, H, W)) -> (B, 3, H, W)``.

    Output channels: residual flow ``dx, dy`` in pixels of the 64x64 motion grid, and an occlusion
    logit. :meth:`forward` also returns the concatenated input ``(B, 256, H, W)`` as the reference does.
    """

    def __init__(self):
        super().__init__()
        self.convc1 = nn.Conv2d(192, 128, 3, padding=1)
        self.conv1 = nn.Conv2d(256, 128, 3, padding=1)
        self.conv2 = nn.Conv2d(128, 2, 3, padding=1)
        self.convo1 = nn.Conv2d(256, 128, 3, padding=1)
        self.convo2 = nn.Conv2d(128, 1, 3, padding=1)

    def forward(self, m_f: torch.Tensor, warp_f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inp = torch.cat([m_f, F.relu(self.convc1(warp_f))], dim=1)
        flow = self.conv2(F.relu(self.conv1(inp)))
        occ = self.convo2(F.relu(self.convo1(inp)))
        return torch.cat([flow, occ], dim=1), inp


class FuseSFTBlock(nn.Module):
    """Spatial feature transform fusion (CodeFormer's ``Fuse_sft_block``).

    ``out = dec + w * (dec * scale(e) + shift(e))`` with ``e = ResBlock(cat(enc, dec))``;
    ``(B, C, H, W)`` in and out.
    """

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.encode_enc = ResBlock(2 * in_ch, out_ch)
        self.scale = nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1), nn.LeakyReLU(0.2, True),
                                   nn.Conv2d(out_ch, out_ch, kernel_size=3, padding=1))
        self.shift = nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1), nn.LeakyReLU(0.2, True),
                                   nn.Conv2d(out_ch, out_ch, kernel_size=3, padding=1))

    def forward(self, enc_feat: torch.Tensor, dec_feat: torch.Tensor, w: float = 1) -> torch.Tensor:
        e = self.encode_enc(torch.cat([enc_feat, dec_feat], dim=1))
        return dec_feat + w * (dec_feat * self.scale(e) + self.shift(e))


def deform_input(inp: torch.Tensor, deformation: torch.Tensor) -> torch.Tensor:
    """Backward-warp ``inp`` (B, C, h, w) by a sampling grid ``deformation`` (B, H, W, 2) in ``[-1, 1]``.

    The grid is resized to ``(h, w)`` first (bilinear, ``align_corners=True``); sampling is bilinear,
    zero padding, ``align_corners=True`` (reference ``AppMotionCompFormer.deform_input``).
    """
    h, w = inp.shape[2:]
    if deformation.shape[1:3] != (h, w):
        deformation = F.interpolate(deformation.permute(0, 3, 1, 2), size=(h, w), mode="bilinear",
                                    align_corners=True).permute(0, 2, 3, 1)
    return F.grid_sample(inp, deformation, align_corners=True)


def occlude_input(inp: torch.Tensor, occlusion_map: torch.Tensor) -> torch.Tensor:
    """``inp * occlusion`` with the map (B, 1, H, W) resized to ``inp`` (bilinear, ``align_corners=True``)."""
    if occlusion_map.shape[2:] != inp.shape[2:]:
        occlusion_map = F.interpolate(occlusion_map, size=inp.shape[2:], mode="bilinear", align_corners=True)
    return inp * occlusion_map


class AppMotionCompFormer(nn.Module):
    """The SMAC generator (``network_g`` of ``options/test.yml``), released inference path.

    Args: the ``network_g`` options (see :class:`~talkhead.smac.config.SMACConfig`, which validates
    them). The architecture is fixed by the reference code at ``img_size`` 256, ``nf`` 64,
    ``ch_mult`` [1, 2, 2, 4], ``res_blocks`` 2, ``attn_resolutions`` [32], ``connect_list``
    ['64', '128', '256'] and ``connect_app_list`` ['32', '64', '128', '256']; the codebook sizes,
    embedding widths, layer and head counts are free.

    Codebooks: at scale ``s`` (k = 1..4 for 32/64/128/256) the transformers cross-attend to the first
    ``codebook_size // 4 * k`` entries (``*_codebook_split`` on, shared) or to the k-th quarter
    (``wo_*_cdbk_share``), or to the whole codebook (split off).
    """

    def __init__(self, img_size: int = 256, nf: int = 64, ch_mult: Sequence[int] = (1, 2, 2, 4), res_blocks: int = 2,
                 attn_resolutions: Sequence[int] = (32,), beta: float = 0.25,
                 codebook_size_motion: int = 1024, embed_dim_motion: int = 32, codebook_size_app: int = 1024,
                 embed_dim_app: int = 256, n_head: int = 8, dim_embd_motion: int = 32, n_layers_motion: int = 2,
                 dim_embd_app: int = 256, n_layers_app: int = 2, num_kp: int = 15, with_position_emb: bool = True,
                 motion_codebook_split: bool = True, multiscale_feature_fusion: bool = True,
                 app_codebook_split: bool = True, wo_motion_cdbk_share: bool = False,
                 wo_app_cdbk_share: bool = False):
        super().__init__()
        self.img_size = img_size
        self.with_position_emb = with_position_emb
        self.motion_codebook_split = motion_codebook_split
        self.multiscale_feature_fusion = multiscale_feature_fusion
        self.app_codebook_split = app_codebook_split
        self.wo_motion_cdbk_share = wo_motion_cdbk_share
        self.wo_app_cdbk_share = wo_app_cdbk_share
        self.dim_embd_motion = dim_embd_motion
        self.dim_embd_app = dim_embd_app
        self.codebook_size_motion = codebook_size_motion
        self.codebook_size_app = codebook_size_app
        self.embed_dim_motion = embed_dim_motion
        self.embed_dim_app = embed_dim_app

        # registration order = the reference state-dict order
        emb_dim = 256  # AutoEncoder default latent width
        self.encoder = Encoder(3, nf, emb_dim, ch_mult, res_blocks, img_size, attn_resolutions)
        self.generator = Generator(nf, emb_dim, ch_mult, res_blocks, img_size, attn_resolutions)

        # appearance tokens: 1x1 conv at 32 px, p x p patch embedding (p = 2, 4, 8) above
        self.app_feat_emb_32 = nn.Conv2d(CHANNELS[32], dim_embd_app, kernel_size=1)
        self.to_app_feat_32 = nn.Conv2d(dim_embd_app, CHANNELS[32], kernel_size=1)
        for size in (64, 128, 256):
            p = size // TOKENS_SIDE
            c = CHANNELS[size] * p * p
            setattr(self, f"app_feat_emb_{size}",
                    nn.Sequential(PatchTokens(p), nn.Linear(c, dim_embd_app), SwapLastAxes()))
            setattr(self, f"to_app_feat_{size}",
                    nn.Sequential(nn.Linear(dim_embd_app, c), TokensToPatches(p, TOKENS_SIDE)))
        self.quantize_app = VectorQuantizer(codebook_size_app, embed_dim_app, beta)

        self.fuse_convs_dict = nn.ModuleDict()
        if multiscale_feature_fusion:
            self.fuse_ms_dict = nn.ModuleDict()
        for size in DECODER_TAPS:
            ch = CHANNELS[size]
            self.fuse_convs_dict[str(size)] = FuseSFTBlock(ch, ch)
            if multiscale_feature_fusion:
                self.fuse_ms_dict[str(size)] = nn.Conv2d(ch, ch, kernel_size=3, stride=1, padding=1)

        if with_position_emb:
            self.position_emb_app = nn.Parameter(torch.zeros(TOKENS_SIDE ** 2, dim_embd_app))
            self.position_emb_motion = nn.Parameter(torch.zeros(TOKENS_SIDE ** 2, dim_embd_motion))
        else:
            self.position_emb_app = None
            self.position_emb_motion = None
        self.quantize_motion = VectorQuantizer(codebook_size_motion, embed_dim_motion, beta)

        # motion branch
        self.motion_emb = nn.Sequential(nn.Conv2d(2, dim_embd_motion, kernel_size=3, stride=1, padding=1),
                                        Downsample(dim_embd_motion), ResBlock(dim_embd_motion, dim_embd_motion))
        self.motion_block = nn.Sequential(*[TransformerLayer(dim_embd_motion, n_head, dim_conv=2 * dim_embd_motion)
                                            for _ in range(n_layers_motion)])
        # training-only head (motion reconstruction from quantised codes); kept for the state dict
        self.to_motion = nn.Sequential(Upsample(dim_embd_motion), ResBlock(dim_embd_motion, dim_embd_motion),
                                       normalize(dim_embd_motion),
                                       nn.Conv2d(dim_embd_motion, 2, kernel_size=3, stride=1, padding=1))
        self.BasicMotionEncoder = BasicMotionEncoder(dim_embd_motion)
        self.to_context = nn.ModuleList(nn.Conv2d(CHANNELS[s], 192, 1, padding=0) for s in (32, 64, 128, 256))
        self.refine = RefineFlow()

        # appearance branch
        self.app_block = nn.Sequential(*[TransformerLayer(dim_embd_app, n_head, dim_conv=2 * dim_embd_app)
                                         for _ in range(n_layers_app)])

        # motion queries from the warped source feature and the driving keypoint heatmaps
        for size in (32, 64, 128, 256):
            setattr(self, f"warped_source_enc_{size}", nn.Conv2d(CHANNELS[size], dim_embd_motion, kernel_size=1))
        self.driving_kp_enc = nn.Conv2d(num_kp, dim_embd_motion, kernel_size=1)
        self.motion_query_enc_1 = nn.Conv2d(2 * dim_embd_motion, dim_embd_motion, kernel_size=1)
        self.motion_query_enc_2 = nn.Conv2d(2 * dim_embd_motion, dim_embd_motion, kernel_size=1)

    # ------------------------------------------------------------------------------------ helpers
    def _codebook(self, weight: torch.Tensor, size: int, split: bool, unshared: bool, scale: int,
                  parts: int, batch: int) -> torch.Tensor:
        """Codebook entries attended at ``scale`` as cross-attention context ``(N, batch, D)``."""
        if split:
            step = size // parts
            k = SCALE_INDEX[scale]
            weight = weight[step * (k - 1):step * k] if unshared else weight[:step * k]
        return weight.unsqueeze(1).repeat(1, batch, 1)

    @staticmethod
    def _positions(param: Optional[torch.Tensor], batch: int) -> Optional[torch.Tensor]:
        return None if param is None else param.unsqueeze(1).repeat(1, batch, 1)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Source encoding: ``x`` (B, 3, S, S) in ``[-1, 1]`` -> latent (B, 256, S/8, S/8) and
        ``{256: (B, 64, S, S), 128: (B, 128, S/2, S/2), 64: (B, 128, S/4, S/4)}`` (encoder blocks 2, 5, 8)."""
        taps = {i: s for s, i in ENCODER_TAPS.items()}
        feats = {}
        for i, block in enumerate(self.encoder.blocks):
            x = block(x)
            if i in taps:
                feats[taps[i]] = x
        return x, feats

    def motion_codebook_compensation(self, motion: torch.Tensor, query_feat: torch.Tensor,
                                     warp_source_feat: torch.Tensor, scale: int) -> torch.Tensor:
        """Motion codebook compensation at one scale (paper Sec. 3.2).

        Args:
            motion: the current motion as displacement from the identity grid, in pixels of the
                64x64 motion grid ``(B, 64, 64, 2)`` (``(deformation - grid) * 31.5``).
            query_feat: motion query from the warped source and driving keypoints ``(B, Dm, 32, 32)``.
            warp_source_feat: the source feature at ``scale`` warped by the current motion ``(B, C, s, s)``.
            scale: 32, 64, 128 or 256.

        Returns:
            ``(B, 64, 64, 3)``: residual flow ``dx, dy`` (pixels of 64) and an occlusion logit.
        """
        b, h, w, _ = motion.shape
        m = motion.permute(0, 3, 1, 2)
        m_feat = self.motion_emb(m)  # (B, Dm, 32, 32)
        if query_feat.shape[2:] != m_feat.shape[2:]:
            query_feat = F.interpolate(query_feat, size=m_feat.shape[2:], mode="bilinear", align_corners=True)
        tokens = self.motion_query_enc_2(torch.cat((m_feat, query_feat), dim=1))
        side = TOKENS_SIDE
        tokens = tokens.reshape(b, self.dim_embd_motion, side * side).permute(2, 0, 1)
        pos = self._positions(self.position_emb_motion, b)
        context = self._codebook(self.quantize_motion.embedding.weight, self.codebook_size_motion,
                                 self.motion_codebook_split, self.wo_motion_cdbk_share, scale,
                                 1 + len(DECODER_TAPS), b)
        for block in self.motion_block:
            tokens = block(tokens, context, (side, side), query_pos=pos)
        motion_f = tokens.permute(1, 2, 0).reshape(b, self.dim_embd_motion, side, side)
        if (h, w) != (side, side):
            motion_f = F.interpolate(motion_f, size=(h, w), mode="bilinear", align_corners=True)
        m_f = self.BasicMotionEncoder(m, motion_f)
        warp_f = F.relu(self.to_context[SCALE_INDEX[scale] - 1](warp_source_feat))
        if warp_f.shape[2:] != (h, w):
            warp_f = F.interpolate(warp_f, size=(h, w), mode="bilinear", align_corners=True)
        m_res, _ = self.refine(m_f, warp_f)
        return m_res.permute(0, 2, 3, 1)

    @staticmethod
    def key_padding_mask(motion: torch.Tensor) -> torch.Tensor:
        """Appearance tokens to ignore: bool ``(B, 1024)``, True where the motion ``(B, 64, 64, 2)``,
        resized to 32x32 (bilinear, ``align_corners=True``), samples outside ``[-1, 1]`` in x or y."""
        b = motion.shape[0]
        side = TOKENS_SIDE
        m = F.interpolate(motion.permute(0, 3, 1, 2), size=(side, side), mode="bilinear", align_corners=True)
        outside = (m > 1) | (m < -1)
        return (outside[:, 0] | outside[:, 1]).reshape(b, side * side)

    def app_codebook_compensation(self, feat: torch.Tensor, motion: torch.Tensor) -> torch.Tensor:
        """Appearance codebook compensation of a warped feature (paper Sec. 3.3).

        Tokens of :meth:`key_padding_mask` are masked as keys of the first self-attention layer.

        Args:
            feat: warped, occluded source feature ``(B, C, s, s)``, ``s`` in 32/64/128/256.
            motion: the compensated deformation ``(B, 64, 64, 2)`` in ``[-1, 1]`` units.

        Returns:
            The compensated feature, ``(B, C, s, s)``.
        """
        b, _, _, size = feat.shape
        side = TOKENS_SIDE
        ignore = self.key_padding_mask(motion)
        tokens = getattr(self, f"app_feat_emb_{size}")(feat).reshape(b, self.dim_embd_app, side * side).permute(2, 0, 1)
        pos = self._positions(self.position_emb_app, b)
        context = self._codebook(self.quantize_app.embedding.weight, self.codebook_size_app,
                                 self.app_codebook_split, self.wo_app_cdbk_share, size, 4, b)
        for i, block in enumerate(self.app_block):
            tokens = block(tokens, context, (side, side), key_padding_mask=ignore if i == 0 else None, query_pos=pos)
        if size == side:
            return self.to_app_feat_32(tokens.permute(1, 2, 0).reshape(b, self.dim_embd_app, side, side))
        return getattr(self, f"to_app_feat_{size}")(tokens.permute(1, 0, 2))

    def _compensate_motion(self, deformation: torch.Tensor, grid: torch.Tensor, source_feat: torch.Tensor,
                           driving_kp_feat: torch.Tensor,
                           scale: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One motion step: returns (compensated deformation, residual in grid units, occlusion logit)."""
        half = (deformation.shape[1] - 1.0) / 2.0  # 31.5: grid units -> pixels of the 64x64 motion grid
        warped = deform_input(source_feat, deformation)
        query_in = warped if warped.shape[-1] == TOKENS_SIDE else F.interpolate(
            warped, size=(TOKENS_SIDE, TOKENS_SIDE), mode="bilinear", align_corners=True)
        warped_enc = F.relu(getattr(self, f"warped_source_enc_{scale}")(query_in))
        query = self.motion_query_enc_1(torch.cat((warped_enc, driving_kp_feat), dim=1))
        m_res = self.motion_codebook_compensation((deformation - grid) * half, query, warped, scale)
        d_occ = m_res[..., 2:].permute(0, 3, 1, 2)
        residual = m_res[..., :2] / half
        return deformation + residual, residual, d_occ

    # ------------------------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, dense_motion: dict, w: float = 1,
                encoded: Optional[tuple[torch.Tensor, dict[int, torch.Tensor]]] = None) -> dict:
        """Render from a source and its dense motion (reference ``forward(..., inference=True)``).

        Args:
            x: source image ``(B, 3, 256, 256)`` in ``[-1, 1]`` (may be ``None`` when ``encoded`` is given).
            dense_motion: :class:`~talkhead.smac.motion_estimator.DenseMotionNetwork` outputs with
                ``deformation`` (B, 64, 64, 2), ``occlusion_map`` (B, 1, 64, 64) and
                ``driving_kp_heatmap`` (B, K, 64, 64).
            w: SFT fusion weight (1 in the reference demo).
            encoded: :meth:`encode` of the source, batch 1 or B (batch 1 is broadcast), to skip the encoder.

        Returns:
            dict with ``out`` (B, 3, 256, 256) (about ``[-1, 1]``, not clamped), ``lq_feat``
            (B, 256, 32, 32), lists over the scales 32/64/128/256: ``out_occ`` (B, 1, 64, 64),
            ``res_deform_list`` (B, 64, 64, 2), ``deform_feat_list``, ``app_before_comp_list``,
            ``app_comp_list`` (B, C_s, s, s); and ``deformation_list`` (5 entries: the dense motion, then
            after each scale).
        """
        latent, feats = encoded if encoded is not None else self.encode(x)
        deformation = dense_motion["deformation"]
        b = deformation.shape[0]
        if latent.shape[0] != b:
            latent = latent.expand(b, *latent.shape[1:])
            feats = {s: f.expand(b, *f.shape[1:]) for s, f in feats.items()}
        n = deformation.shape[1]
        lin = torch.linspace(-1.0, 1.0, n, dtype=deformation.dtype, device=deformation.device)
        grid = torch.stack(torch.meshgrid(lin, lin, indexing="xy"), dim=-1)[None]  # (1, n, n, 2), (x, y)

        heat = F.interpolate(dense_motion["driving_kp_heatmap"], size=(TOKENS_SIDE, TOKENS_SIDE), mode="bilinear",
                             align_corners=True)
        driving_kp_feat = F.relu(self.driving_kp_enc(heat))

        motions, residuals, occlusions = [deformation], [], []
        deform_feats, before, after = [], [], []

        m_com, res, d_occ = self._compensate_motion(deformation, grid, latent, driving_kp_feat, TOKENS_SIDE)
        motions.append(m_com)
        residuals.append(res)
        occlusions.append(torch.sigmoid(dense_motion["occlusion_map"] + d_occ))
        lq_feat = occlude_input(deform_input(latent, m_com), occlusions[-1])
        deform_feats.append(lq_feat)
        before.append(lq_feat)
        lq_feat = self.app_codebook_compensation(lq_feat, m_com)
        after.append(lq_feat)

        taps = {i: s for s, i in DECODER_TAPS.items()}
        h = lq_feat
        for i, block in enumerate(self.generator.blocks):
            h = block(h)
            if i not in taps or w <= 0:
                continue
            size = taps[i]
            m_com, res, d_occ = self._compensate_motion(motions[-1], grid, feats[size], driving_kp_feat, size)
            motions.append(m_com)
            residuals.append(res)
            occlusions.append(torch.sigmoid(occlusions[-1] + d_occ))
            warped = occlude_input(deform_input(feats[size], m_com), occlusions[-1])
            deform_feats.append(warped)
            before.append(warped)
            warped = self.app_codebook_compensation(warped, m_com)
            after.append(warped)
            h = self.fuse_convs_dict[str(size)](warped, h, w)
            if self.multiscale_feature_fusion:
                h = h + self.fuse_ms_dict[str(size)](warped)
        return {"out": h, "lq_feat": lq_feat, "out_occ": occlusions, "deformation_list": motions,
                "res_deform_list": residuals, "deform_feat_list": deform_feats, "app_comp_list": after,
                "app_before_comp_list": before}
