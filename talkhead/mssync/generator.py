"""The MS-Sync generator: autoregressive audio-driven keypoint dynamics (reference ``DynamicalModel``).

Paper: "A Comprehensive Multi-scale Approach for Speech and Dynamics Synchrony in Talking Head
Generation" (MS-Sync); code: LouisBearing/HMo-audio ``nets/networks.py`` ``DynamicalModel``.

One step of the model, for the keypoint frame ``x_t`` (``K = num_kp`` keypoints x ``data_dim`` numbers;
the released model: 10 x 6, so a frame is 60 numbers):

- ``c_t = encoder_x(x_t)``: keypoint embedding (``coord_dim``).
- ``h_t = lin_out(transformer([c_{t-K+1} .. c_t])[-1])``: causal temporal module without
  positional encoding over at most the last ``MAX_CONTEXT_LENGTH`` = 40 embeddings (``hidden_size``).
- for each pyramid level l = 0..3, ``z_l = [h_t, c_t, a_l(t+1)]`` where ``a_l`` is level l of the
  audio pyramid (``encoder_a``), resampled to the frame rate (25 fps).
- multi-scale module: a grouped DeepMLP backbone (``deep_output``) over ``[z_0..z_3]`` yields per
  level a leaf ``v_l`` (K * data_dim) and a mask ``m_l`` (K); a bias stream (``deep_output_bias``,
  ``mask_bias``, ``leaf_bias``) sees only ``[h_t, c_t]``. Masks are repeated per keypoint
  coordinate and normalised over the 5 streams with a softmax (paper eq. 8).
- velocity ``dx_t = final_block([m_b v_b | m_0 v_0 | .. | m_3 v_3])`` and integration
  ``x_{t+1} = x_t + dx_t`` (paper eq. 6-7).
"""
from __future__ import annotations

import contextlib
import math
import sys
from pathlib import Path
from typing import MutableMapping

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoints import load_checkpoint, load_state_dict_checked, require_finite
from ..errors import CheckpointError
from ..progress import Progress
from .blocks import AudioPyramidEncoder, DeepMLP, align_corners_weights, frame_encoder, resample_frames
from .config import ARGS_NAME, CHECKPOINT_NAME, MSSyncConfig, resolve_model_dir

MAX_CONTEXT_LENGTH = 40
"""Most keypoint embeddings the temporal transformer sees (reference ``MAX_CONTEXT_LENGTH``), frames."""

ENCODER_WIDTH = 272
"""Hard-coded width of the keypoint encoder and of one multi-scale stream (reference constant; 272 = 4 x 68,
from the reference's 68-landmark days). A hidden width: it does not follow the keypoint count, so a model
in another keypoint space keeps it (only the layers that read or write a frame change width)."""

TRANSFORMER_FF_DIM = 1024
"""Hard-coded ``dim_feedforward`` of the temporal transformer (reference constant)."""



def _causal_mask(n: int, device: torch.device) -> torch.Tensor:
    """``(n, n)`` bool mask, True above the diagonal (a position may not attend to later ones)."""
    return torch.ones(n, n, dtype=torch.bool, device=device).triu(1)


class MSSyncGenerator(nn.Module):
    """MS-Sync keypoint generator; the reference's ``nets/networks.py`` ``DynamicalModel``.

    Sub-modules (names, order and shapes give exactly the reference state-dict keys, so the
    released ``model_chkpt.pt['checkpoints']`` loads with ``strict=True``):

    With ``F = num_kp * data_dim`` numbers per frame (60 for the released 10 x 6) and ``K = num_kp``:

    - ``encoder_x``: Linear(F, 272) -> LayerNorm(272) -> Linear(272, 1088) -> GELU ->
      Linear(1088, coord_dim).
    - ``encoder_a``: :class:`~talkhead.mssync.blocks.AudioPyramidEncoder` (4 levels, width audio_dim).
    - ``deep_output``/``mask``/``leaf``: grouped (4 groups) DeepMLPs,
      ``4*(hidden+coord+audio) -> 4*272 -> 4*K`` (masks) and ``-> 4*F`` (leaves).
    - ``deep_output_bias``/``mask_bias``/``leaf_bias``: the audio-free bias stream,
      ``hidden+coord -> 272 -> K`` and ``-> F``.
    - ``final_block``: Linear(5*F, F), the velocity.
    - ``temp_module``: ``nn.TransformerEncoder`` of ``nlayers_tf`` post-norm layers (d_model
      coord_dim, nheads_tf heads, feed-forward 1024, dropout 0, ReLU, sequence-first).
    - ``lin_out``: Linear(coord_dim, hidden_size).

    Call it as the reference: ``x_rec, x_pred = model(inpt, audio)`` (see :meth:`forward`).
    """

    def __init__(self, config: MSSyncConfig) -> None:
        super().__init__()
        self.config = config
        self.h_size = config.hidden_size
        self.input_dim = config.num_kp
        self.emb_dim = config.frame_dim

        self.encoder_x = frame_encoder(self.emb_dim, ENCODER_WIDTH, config.coord_dim)
        self.encoder_a = AudioPyramidEncoder(config.audio_dim, n_levels=config.pyramid_layers_g)

        groups = config.pyramid_layers_g
        layers = list(config.deep_mlp_layers)
        expansion = config.expansion_fact_do
        in_dim = self.h_size + config.audio_dim + config.coord_dim
        frame_dim = config.frame_dim
        self.deep_output = DeepMLP(in_dim * groups, ENCODER_WIDTH * groups, layers=layers[:-1],
                                   expansion_fact=expansion, groups=groups)
        self.mask = DeepMLP(ENCODER_WIDTH * groups, config.num_kp * groups, layers=layers[-1:],
                            expansion_fact=expansion, groups=groups)
        self.leaf = DeepMLP(ENCODER_WIDTH * groups, frame_dim * groups, layers=layers[-1:],
                            expansion_fact=expansion, groups=groups)
        self.deep_output_bias = DeepMLP(in_dim - config.audio_dim, ENCODER_WIDTH, layers=layers[:-1],
                                        expansion_fact=expansion)
        self.mask_bias = DeepMLP(ENCODER_WIDTH, config.num_kp, layers=layers[-1:], expansion_fact=expansion)
        self.leaf_bias = DeepMLP(ENCODER_WIDTH, frame_dim, layers=layers[-1:], expansion_fact=expansion)
        self.final_block = nn.Linear(frame_dim * (groups + 1), frame_dim)

        layer = nn.TransformerEncoderLayer(d_model=config.coord_dim, nhead=config.nheads_tf,
                                           dim_feedforward=TRANSFORMER_FF_DIM, dropout=0.0)
        self.temp_module = nn.TransformerEncoder(layer, num_layers=config.nlayers_tf, enable_nested_tensor=False)
        self.lin_out = nn.Linear(config.coord_dim, self.h_size)

    # -- pieces -----------------------------------------------------------------------------------
    def embed_audio(self, audio: torch.Tensor, trace: MutableMapping | None = None) -> tuple[torch.Tensor, ...]:
        """Audio pyramid at the keypoint frame rate.

        Args:
            audio: logfbank ``(B, L, 26)`` at 100 Hz (4 rows per 25-fps frame).
            trace: optional dict receiving ``fpn_raw_i`` ``(B, audio_dim, L_i)`` and
                ``audio_pyramid_i``.

        Returns:
            4 tensors ``(B, int(L/4), audio_dim)``: each level linearly interpolated
            (``align_corners=True``, as ``F.interpolate``: :func:`~talkhead.mssync.blocks.align_corners_weights`) to ``int(L/4)`` frames. Reference: ``DynamicalModel.embed_audio``.
        """
        tgt_len = int(audio.shape[1] / 4)
        levels = self.encoder_a(audio)
        frames = torch.arange(tgt_len, device=audio.device)
        out = tuple(resample_frames(t, *align_corners_weights(t.shape[-1], tgt_len, frames, t.dtype)).transpose(1, 2)
                    for t in levels)
        if trace is not None:
            for i, (raw, res) in enumerate(zip(levels, out)):
                trace[f"fpn_raw_{i}"] = raw.detach()
                trace[f"audio_pyramid_{i}"] = res.detach()
        return out

    def merge_streams(self, deep_out_input: torch.Tensor) -> torch.Tensor:
        """Multi-scale module: velocity from the 4 audio streams + the bias stream (paper eq. 8).

        Args:
            deep_out_input: ``(N, 4 * (hidden + coord + audio))``, per level ``[h, c, a_l]``.

        Returns:
            Velocity ``(N, num_kp * data_dim)``. Reference: ``DynamicalModel.deep_out_forward``.
        """
        groups = self.config.pyramid_layers_g
        data_dim = self.config.data_dim
        backbone = self.deep_output(deep_out_input)
        leaf = self.leaf(backbone)                                    # (N, G*F)
        leaf = torch.stack(leaf.split(leaf.shape[-1] // groups, dim=-1), dim=0)       # (G, N, F)
        mask = self.mask(backbone).repeat_interleave(data_dim, dim=1)                  # (N, G*F)
        mask = torch.stack(mask.split(mask.shape[-1] // groups, dim=-1), dim=0)       # (G, N, F)

        per_group = deep_out_input.shape[1] // groups - self.config.audio_dim       # hidden + coord
        backbone_bias = self.deep_output_bias(deep_out_input[:, :per_group])
        leaf = torch.cat([self.leaf_bias(backbone_bias)[None], leaf], dim=0)          # (G+1, N, F)
        mask_bias = self.mask_bias(backbone_bias).repeat_interleave(data_dim, dim=1)
        mask = torch.cat([mask_bias[None], mask], dim=0)
        if self.config.streams_merging_activation == "softmax":
            # written out rather than torch.softmax(mask, dim=0), whose CPU kernel rounds differently on one
            # and on two threads for these small tensors: the rollout's keypoints must not depend on the
            # thread count (talkhead.mssync.windowed.StepThreads chooses it by timing)
            e = torch.exp(mask - mask.amax(dim=0, keepdim=True))
            mask = e / e.sum(dim=0, keepdim=True)
        else:
            mask = torch.sigmoid(mask)
        return self.final_block((mask * leaf).transpose(0, 1).flatten(start_dim=1))

    def temporal(self, coord: torch.Tensor) -> torch.Tensor:
        """Causal temporal module over a context of embeddings, every position.

        Args:
            coord: ``(B, K, coord_dim)`` keypoint embeddings, oldest first.

        Returns:
            ``(B, K, hidden_size)``: ``lin_out`` of the transformer output, position k seeing 0..k.
        """
        mask = _causal_mask(coord.shape[1], coord.device)
        return self.lin_out(self.temp_module(coord.transpose(0, 1), mask=mask).transpose(0, 1))

    def _temporal_last(self, coord: torch.Tensor, kv_cache: list[torch.Tensor] | None) -> torch.Tensor:
        """The temporal module's output at the last context position only, ``(B, hidden_size)``.

        With a causal mask the last position attends to the whole context, so only its row of the
        last layer is needed; for a single layer the key/value projections of each embedding are
        computed once (``kv_cache``, one ``(B, 2*coord_dim)`` tensor per context position,
        aligned with ``coord``). Mathematically identical to ``temporal(coord)[:, -1]``.
        """
        layers = self.temp_module.layers
        x = coord.transpose(0, 1)                                            # (K, B, E)
        if len(layers) > 1:
            x = self._run_layers(layers[:-1], x)
        layer = layers[-1]
        attn = layer.self_attn
        E = attn.embed_dim
        heads = attn.num_heads
        last = x[-1]                                                         # (B, E)
        if kv_cache is not None and len(layers) == 1:
            kv = torch.stack(kv_cache, dim=1)                                # (B, K, 2E)
        else:
            kv = F.linear(x.transpose(0, 1), attn.in_proj_weight[E:], attn.in_proj_bias[E:])
        q = F.linear(last, attn.in_proj_weight[:E], attn.in_proj_bias[:E])  # (B, E)
        B, K = kv.shape[0], kv.shape[1]
        k, v = kv.split(E, dim=-1)
        q = q.view(B, heads, 1, E // heads)
        k = k.reshape(B, K, heads, E // heads).transpose(1, 2)
        v = v.reshape(B, K, heads, E // heads).transpose(1, 2)
        weights = torch.softmax((q / math.sqrt(E // heads)) @ k.transpose(-1, -2), dim=-1)
        ctx = (weights @ v).reshape(B, E)
        h = layer.norm1(last + attn.out_proj(ctx))
        h = layer.norm2(h + layer.linear2(layer.dropout(layer.activation(layer.linear1(h)))))
        return self.lin_out(h)

    @staticmethod
    def _run_layers(layers, x: torch.Tensor) -> torch.Tensor:
        mask = _causal_mask(x.shape[0], x.device)
        for layer in layers:
            x = layer(x, src_mask=mask)
        return x

    def _kv(self, coord_i: torch.Tensor) -> torch.Tensor:
        """Key/value projection ``(B, 2*coord_dim)`` of one embedding for the first layer."""
        attn = self.temp_module.layers[0].self_attn
        E = attn.embed_dim
        return F.linear(coord_i, attn.in_proj_weight[E:], attn.in_proj_bias[E:])

    # -- rollout ----------------------------------------------------------------------------------
    def forward(self, inpt: torch.Tensor, audio: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Warm up on ``inpt`` and roll out autoregressively under ``audio`` (reference signature).

        Args:
            inpt: observed keypoint frames ``(B, obs_len, num_kp, data_dim)`` (teacher-forced warm-up;
                at inference kp0 repeated ``obs_len`` times).
            audio: logfbank ``(B, 4 * (obs_len + seq_len), 26)`` at 100 Hz (4 rows per frame).

        Returns:
            ``(x_rec, x_pred)``: ``x_rec`` ``(B, obs_len - 1, num_kp, data_dim)`` = ``inpt[:, j]`` plus its
            warm-up velocity for j < obs_len - 1 (an empty ``(0, 0, 0, 0)`` tensor when
            ``obs_len == 1``, as in the reference); ``x_pred`` ``(B, seq_len, num_kp, data_dim)``, the
            integrated positions (paper eq. 7). Differentiable (used for training).
        """
        return self.rollout(inpt, audio)

    def rollout(self, inpt: torch.Tensor, audio: torch.Tensor, *, trace: MutableMapping | None = None,
                progress: Progress | None = None,
                incremental: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward` with options: intermediates, progress, incremental temporal module.

        Args:
            inpt, audio: as in :meth:`forward`.
            trace: optional dict filled with detached intermediates (fixture names):
                ``fpn_raw_i`` ``(B, audio_dim, L_i)``, ``audio_pyramid_i`` ``(B, T, audio_dim)``,
                ``encoder_x_obs`` ``(B, obs_len, coord_dim)``, ``temporal_obs`` ``(B, obs_len, hidden)``,
                ``vel_obs`` ``(B*obs_len, F)``, and per decoding step i (seq_len - 1 steps)
                ``encoder_x_decode`` ``(S-1, B, coord_dim)``, ``temporal_decode`` ``(S-1, B, hidden)``,
                ``vel_decode`` ``(S-1, B, F)``, ``context_len_decode`` ``(S-1,)`` int64.
            progress: ``progress("keypoints", done, seq_len)`` after the warm-up (done = 1) and after each
                decoding step (x_pred frames produced so far).
            incremental: compute the transformer only at the last context position (with cached
                key/value projections for one layer) instead of re-running it over the whole
                context each step as the reference does; identical maths, agrees with the reference
                to float32 rounding (~1e-7). Default: on when autograd is disabled (inference).

        Returns:
            ``(x_rec, x_pred)`` as in :meth:`forward`.

        Raises:
            ValueError: ``audio`` too short to predict one frame after the ``obs_len``-frame warm-up
                (fewer than ``4 (obs_len + 1)`` rows).
        """
        if incremental is None:
            incremental = not torch.is_grad_enabled()
        cfg = self.config
        bs, obs_len = inpt.shape[0], inpt.shape[1]
        seq_len = int(audio.shape[1] / 4) - obs_len
        if seq_len < 1:
            raise ValueError(f"audio of {audio.shape[1]} rows gives no frame to predict after the "
                             f"{obs_len}-frame warm-up (need at least {4 * (obs_len + 1)} rows)")
        pyramid = self.embed_audio(audio, trace)

        # Warm-up over the observed frames (teacher forcing).
        coord = self.encoder_x(inpt.flatten(start_dim=-2))                    # (B, obs, E)
        hidden = self.temporal(coord)                                          # (B, obs, H)
        z = torch.cat([hidden, coord], dim=-1)
        z = torch.cat([torch.cat([z, a[:, 1:obs_len + 1]], dim=-1) for a in pyramid], dim=-1)
        vel = self.merge_streams(z.flatten(end_dim=1))
        positions = inpt + vel.view(bs, obs_len, cfg.num_kp, cfg.data_dim)
        if trace is not None:
            trace["encoder_x_obs"] = coord.detach()
            trace["temporal_obs"] = hidden.detach()
            trace["vel_obs"] = vel.detach()
        if obs_len > 1:
            x_rec = positions[:, :-1]
        else:
            x_rec = inpt.new_empty(0, 0, 0, 0)
        last_pos = positions[:, -1]
        if progress is not None:
            progress("keypoints", 1, seq_len)

        # Autoregressive decoding.
        kv_cache = [self._kv(coord[:, j]) for j in range(obs_len)] if incremental and cfg.nlayers_tf == 1 else None
        outputs = [last_pos]
        steps: dict[str, list] = {"encoder_x_decode": [], "temporal_decode": [], "vel_decode": [],
                                  "context_len_decode": []}
        for i in range(seq_len - 1):
            coord_i = self.encoder_x(last_pos.reshape(bs, -1))                # (B, E)
            coord = torch.cat([coord, coord_i[:, None]], dim=1)[:, -MAX_CONTEXT_LENGTH:]
            if incremental:
                if kv_cache is not None:
                    kv_cache = (kv_cache + [self._kv(coord_i)])[-MAX_CONTEXT_LENGTH:]
                h_i = self._temporal_last(coord, kv_cache)
            else:
                h_i = self.temporal(coord)[:, -1]
            z = torch.cat([h_i, coord_i], dim=-1)
            z = torch.cat([torch.cat([z, a[:, i + obs_len + 1]], dim=-1) for a in pyramid], dim=-1)
            vel_i = self.merge_streams(z)
            last_pos = last_pos + vel_i.view(bs, cfg.num_kp, cfg.data_dim)
            outputs.append(last_pos)
            if trace is not None:
                steps["encoder_x_decode"].append(coord_i.detach())
                steps["temporal_decode"].append(h_i.detach())
                steps["vel_decode"].append(vel_i.detach())
                steps["context_len_decode"].append(coord.shape[1])
            if progress is not None:
                progress("keypoints", i + 2, seq_len)
        if trace is not None:
            widths = {"encoder_x_decode": cfg.coord_dim, "temporal_decode": cfg.hidden_size,
                      "vel_decode": cfg.frame_dim}
            for name, width in widths.items():
                trace[name] = torch.stack(steps[name]) if steps[name] else inpt.new_empty(0, bs, width)
            trace["context_len_decode"] = torch.tensor(steps["context_len_decode"], dtype=torch.int64)
        return x_rec, torch.stack(outputs, dim=1)


def load_mssync(model_dir: str | Path, *, device: str | torch.device = "cpu") -> MSSyncGenerator:
    """Load an MS-Sync model directory (``args`` + ``model_chkpt.pt``: the released one, or one written by
    ``train generator``, given as ``RUN_DIR/mssync`` or as ``RUN_DIR``: :func:`resolve_model_dir`) for inference.

    Only ``model_chkpt.pt['checkpoints']`` (the generator's state dict) is read, strictly, through
    :func:`talkhead.checkpoints.load_checkpoint` (CPU, no full pickle; on Linux the model takes the memory-mapped
    checkpoint's tensors instead of copies, elsewhere they are copied and the file closed). The model is moved to
    ``device`` and put in ``eval()`` mode. Reference: ``execute_model.load_model`` (which instead
    fills missing ``args`` keys with defaults and loads on the saving device).

    Args:
        model_dir: the directory.
        device: torch device for the model (the caller chooses; nothing is moved to CUDA implicitly).

    Raises:
        CheckpointError: the directory, ``args`` or ``model_chkpt.pt`` is missing, the checkpoint
            is unreadable or tampered with, has no ``'checkpoints'`` entry, or holds NaN/Inf weights.
        StateDictMismatchError: the state dict does not match the ``args`` architecture.
        ConfigError: ``args`` lacks keys or holds bad values.
    """
    model_dir = resolve_model_dir(model_dir)
    args_path, ckpt_path = model_dir / ARGS_NAME, model_dir / CHECKPOINT_NAME
    for path in (args_path, ckpt_path):
        if not path.is_file():
            raise CheckpointError(f"MS-Sync model directory {model_dir} lacks {path.name!r} (expected {path})")
    config = MSSyncConfig.from_args_file(args_path)
    checkpoint = load_checkpoint(ckpt_path, mmap=True)
    if not isinstance(checkpoint, dict) or "checkpoints" not in checkpoint:
        keys = list(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(f"{ckpt_path}: expected a dict with a 'checkpoints' entry (the generator "
                              f"state dict), found {keys}")
    require_finite(checkpoint["checkpoints"], ckpt_path, "checkpoints")
    # On Linux the model is built on the meta device and takes the checkpoint's (memory-mapped) tensors: no
    # random initialisation, no copy. Elsewhere a mapped file would stay open (locked on Windows) for the
    # model's life: the weights are copied into a model built normally and the file is closed.
    assign = sys.platform.startswith("linux")
    with torch.device("meta") if assign else contextlib.nullcontext():
        model = MSSyncGenerator(config)
    load_state_dict_checked(model, checkpoint["checkpoints"], f"MS-Sync generator ({ckpt_path}['checkpoints'])",
                            assign=assign)
    return model.to(device).eval()
