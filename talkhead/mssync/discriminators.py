"""The MS-Sync training discriminator (reference ``nets/networks.py`` ``Discriminator``).

Two critics over keypoint sequences (``num_kp`` keypoints x ``data_dim``; 10 x 6 for the released model):

- a frame critic ``landmark_classifier`` scoring every generated frame's embedding;
- a multi-scale sequence critic: an LSTM encodes windows of 5, 10, 20, 40 frames (``dis_config`` 1)
  with stride window/2, and a spectral-normalised projection discriminator ``D_seq`` scores each
  window against the LSTM state of the observed (warm-up) frames; the dot-product term is weighted
  by ``distance ** (-1/beta)`` (distance = window start in frames after the warm-up, >= 1).

Losses are hinge losses (``compute_dis_loss``) and the negated mean scores (``compute_gen_loss``).
State-dict keys match the reference (``dis_checkpoints`` entry of the training checkpoint),
including the spectral-norm ``weight_orig`` / ``weight_u`` / ``weight_v`` of ``D_seq``.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .blocks import DeepMLP, frame_encoder
from .config import DEEP_MLP_LAYERS, DISCRIMINATOR_WINDOWS, MSSyncConfig

DISCRIMINATOR_WIDTH = 408
"""Hard-coded width of the discriminator's keypoint encoder (reference constant; 408 = 6 x 68, a hidden width
that does not follow the keypoint count)."""


class SpectralLinear(nn.Module):
    """Spectral-normalised Linear + optional ReLU (reference ``LinearLayer`` with defaults).

    Uses ``torch.nn.utils.spectral_norm`` (one power iteration per training forward), so the
    keys are ``linear.bias``, ``linear.weight_orig``, ``linear.weight_u``, ``linear.weight_v``.

    Shapes: ``(N, in_channels) -> (N, out_channels)``.
    """

    def __init__(self, in_channels: int, out_channels: int, activation: str = "none") -> None:
        super().__init__()
        self.linear = nn.utils.spectral_norm(nn.Linear(in_channels, out_channels))
        if activation == "relu":
            self.activation: nn.Module | None = nn.ReLU()
        elif activation == "none":
            self.activation = None
        else:
            raise ValueError(f"unsupported activation {activation!r}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.linear(x)
        return self.activation(x) if self.activation is not None else x


class ProjectionDisc(nn.Module):
    """Distance-weighted projection discriminator head (reference ``ProjectionDisc``).

    ``score = A(d^(-1/beta) * <y, V(phi(x))> + psi(phi(x)))`` with ``phi``, ``psi`` spectral-norm
    ReLU layers, ``beta`` a learnt scalar (init 5) and ``d = max(distance, 1)``.

    Args:
        input_dim: width of ``x`` and ``y`` (the LSTM hidden size).
    """

    def __init__(self, input_dim: int) -> None:
        super().__init__()
        dim = 2 * input_dim
        self.phi = SpectralLinear(input_dim, dim, "relu")
        self.psi = SpectralLinear(dim, dim, "relu")
        self.V = SpectralLinear(dim, input_dim)
        self.A = SpectralLinear(dim, 1)
        self.beta = nn.Parameter(torch.full((1,), 5.0))

    def forward(self, x: torch.Tensor, y: torch.Tensor, distances) -> torch.Tensor:
        """Scores of ``n`` windows for a batch.

        Args:
            x: ``(n * B, input_dim)`` window encodings, window-major.
            y: ``(B, input_dim)`` conditioning (LSTM state of the observed frames).
            distances: ``n`` window start offsets, frames.

        Returns:
            ``(n, B, 1)``.
        """
        batch = y.shape[0]
        dist = torch.as_tensor(np.asarray(distances), device=x.device).clamp(1).to(x.dtype)
        phi = self.phi(x)
        y = y.repeat(len(dist), 1)
        projection = torch.matmul(y.unsqueeze(1), self.V(phi).unsqueeze(2)).squeeze(1)       # (n*B, 1)
        coef = (dist ** (-1 / self.beta)).repeat_interleave(batch)
        return self.A(coef.unsqueeze(1) * projection + self.psi(phi)).view(len(dist), batch, 1)


class MSSyncDiscriminator(nn.Module):
    """The reference MS-Sync ``Discriminator`` (frame critic + multi-scale sequence critic).

    Sub-modules: ``encoder_x`` Linear(num_kp * data_dim (60 released), 408) -> LayerNorm -> Linear(408, 1632) -> GELU ->
    Linear(1632, coord_dim_D); ``landmark_classifier`` DeepMLP(coord_dim_D -> 1,
    ``DEEP_MLP_LAYERS[str(nblocks_frame_D)]``, expansion 4); ``lstm`` LSTM(coord_dim_D,
    hidden_size_D); ``D_seq`` :class:`ProjectionDisc`.

    Args:
        config: needs the discriminator keys (``coord_dim_D``, ``nblocks_frame_D``,
            ``dis_config``, ``hidden_size_D``, ``seq_stream_weight``, ``frame_weight``).
        all_tf: the reference ``Config.all_tf`` (not in ``args``, default False): condition on
            frame 0 only instead of frames 1..obs_len-1.

    Raises:
        ConfigError: discriminator keys missing from the config.
    """

    def __init__(self, config: MSSyncConfig, *, all_tf: bool = False) -> None:
        super().__init__()
        config.require_discriminator()
        self.config = config
        self.all_tf = all_tf
        self.lambda_seq_stream = config.seq_stream_weight
        self.lambda_frame = config.frame_weight
        self.input_dim = config.num_kp
        self.emb_dim = config.frame_dim
        self.encoder_x = frame_encoder(self.emb_dim, DISCRIMINATOR_WIDTH, config.coord_dim_D)
        self.landmark_classifier = DeepMLP(config.coord_dim_D, 1, layers=list(DEEP_MLP_LAYERS[str(config.nblocks_frame_D)]),
                                           expansion_fact=4)
        self.windows = DISCRIMINATOR_WINDOWS[str(config.dis_config)]
        self.lstm = nn.LSTM(input_size=config.coord_dim_D, hidden_size=config.hidden_size_D)
        self.D_seq = ProjectionDisc(config.hidden_size_D)

    def forward(self, x_obs: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores of a sequence given its observed prefix.

        Args:
            x_obs: ``(B, obs, num_kp, data_dim)`` observed (conditioning) frames.
            x: ``(B, S, num_kp, data_dim)`` frames to judge (S >= 5 for ``dis_config`` 1).

        Returns:
            ``(seq_score (B, 1), frame_score (B*S, 1))``.
        """
        bs, seq_len = x.shape[0], x.shape[1]
        obs_len = x_obs.shape[1]
        frames = torch.cat([x_obs, x], dim=1).flatten(start_dim=-2)
        emb = self.encoder_x(frames.flatten(end_dim=1)).view(bs, obs_len + seq_len, -1)
        frame_score = self.landmark_classifier(emb[:, obs_len:].flatten(end_dim=1))
        return self.forward_local_proj_dis(emb[:, :obs_len], emb, obs_len, seq_len), frame_score

    def forward_local_proj_dis(self, x_obs: torch.Tensor, x: torch.Tensor, obs_len: int, seq_len: int) -> torch.Tensor:
        """Mean over window sizes of the mean projection score of overlapping windows, ``(B, 1)``.

        Window w starts every ``w // 2`` frames from ``max(-obs_len, w//2 - w)`` (may overlap the
        observed frames) to ``seq_len - w``. Reference: ``Discriminator.forward_local_proj_dis``.
        """
        bs = x.shape[0]
        _, (y, _) = self.lstm(x_obs.transpose(0, 1))
        y = y[-1]                                                             # (B, hidden_D)
        scores = x.new_zeros(bs, 1)
        for window in self.windows:
            stride = window // 2
            starts = np.arange(max(-obs_len, stride - window), seq_len - window + 1, stride)
            if len(starts) == 0:
                raise ValueError(f"sequence of {seq_len} frames is shorter than the {window}-frame window")
            chunks = torch.cat([x[:, obs_len + i:obs_len + i + window] for i in starts], dim=0)
            _, (local, _) = self.lstm(chunks.transpose(0, 1))
            scores = scores + self.D_seq(local[-1], y, distances=starts).mean(dim=0)
        return scores / len(self.windows)

    def _observed(self, x: torch.Tensor) -> torch.Tensor:
        d = self.config.data_dim
        return x[:, [0], :, :d] if self.all_tf else x[:, 1:self.config.obs_len, :, :d]

    def compute_gen_loss(self, x: torch.Tensor, x_pred: torch.Tensor):
        """Generator adversarial loss: ``-(w_seq mean(seq) + w_frame mean(frame))``.

        Args:
            x: ground truth ``(B, obs_len + S, num_kp, >= data_dim)`` (only its observed part is used).
            x_pred: generated ``(B, S, num_kp, data_dim)``.

        Returns:
            ``(loss, adv_loss_seq, adv_loss_frame)`` scalars.
        """
        f_seq, f_frame = self.forward(self._observed(x), x_pred)
        adv_seq, adv_frame = -f_seq.mean(), -f_frame.mean()
        return self.lambda_seq_stream * adv_seq + self.lambda_frame * adv_frame, adv_seq, adv_frame

    def compute_dis_loss(self, x: torch.Tensor, x_pred: torch.Tensor):
        """Discriminator hinge loss on generated ``x_pred`` vs ground truth ``x[:, obs_len:]``.

        Returns:
            ``(loss, loss_seq, loss_frame, mean fake seq score, mean real seq score)``.
        """
        x_gt = x[:, self.config.obs_len:, :, :self.config.data_dim]
        x_obs = self._observed(x)
        f_seq, f_frame = self.forward(x_obs, x_pred)
        r_seq, r_frame = self.forward(x_obs, x_gt)
        loss_seq = torch.relu(1 + f_seq).mean() + torch.relu(1 - r_seq).mean()
        loss_frame = torch.relu(1 + f_frame).mean() + torch.relu(1 - r_frame).mean()
        loss = self.lambda_seq_stream * loss_seq + self.lambda_frame * loss_frame
        return loss, loss_seq, loss_frame, f_seq.mean().item(), r_seq.mean().item()
