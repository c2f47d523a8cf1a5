"""Make tests/data/syncnet/parity.npz (and syncnet_v2.keys.json) by running the reference SyncNet scoring on CPU.

The reference is ``syncnet-python`` 0.2.3 from PyPI (joonson/syncnet_python's ``SyncNetModel.S`` and
``SyncNetInstance.evaluate``, device-agnostic), run unchanged on a real clip: 44 frames cut from
``skimage.data.astronaut()`` with seeded jitter, and 1.70 s of real speech (``tests/data/audio/speech_16k.wav``),
with seeded random weights in the released ``syncnet_v2.model`` layout (:func:`seeded_state_dict`).
The values the tests compare are recorded by wrapping the reference's ``python_speech_features.mfcc``,
``S.forward_lip``/``forward_aud``, ``calc_pdist`` and ``signal.medfilt`` (the per-frame confidence
evaluate() prints) calls; nothing in the reference is edited. ``mean_distance`` is recomputed from the
captured distances as evaluate() does (it returns only offset, LSE-C and LSE-D).

Run it in a scratch environment, outside the repository (talkhead itself is not imported)::

    python -m venv --system-site-packages /tmp/syncref/venv      # torch, numpy, scipy, opencv, skimage
    /tmp/syncref/venv/bin/pip install --no-deps syncnet-python==0.2.3 python_speech_features==0.6 \\
        ffmpeg-python future 'scenedetect>=0.6,<0.7'
    /tmp/syncref/venv/bin/python tests/data/syncnet/make_fixtures.py

The tests import :func:`seeded_state_dict`, :func:`parity_frames`, :class:`LevelCode` and
:func:`level_frames` from this file to rebuild the same weights, frames and injected model (torch's and
numpy's seeded generators are stable across versions).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
SPEECH = HERE.parent / "audio" / "speech_16k.wav"
OUT = HERE / "parity.npz"
KEYS = HERE / "syncnet_v2.keys.json"

SEED = 0
NUM_FRAMES = 44
AUDIO_SAMPLES = 42 * 640 + 300  # 42 frames' worth and a bit: the reference scores min(44, 42) - 5 = 37 windows
AUDIO_START = 3200               # 0.2 s into the clip
VSHIFT = 15
BATCH_SIZE = 20


def seeded_state_dict(layout, seed: int = SEED) -> dict:
    """Random weights for a SyncNet ``layout`` (``{key: shape}`` in state-dict order), drawn from one
    ``torch.Generator`` seeded with ``seed`` in key order. He-scaled convolutions and linears
    (the first lip conv / 128 and the first audio conv / 16 for the 0..255 pixels and MFCCs up to ~60
    they see; the last linears x 0.1), BatchNorm weight 1 + 0.1 N, bias / running mean 0.1 N,
    running variance U(0.5, 1.5); both heads' last biases share one N(0, 1) vector, so embeddings
    have norms near 35 and distances near 17, like the released model's. ``num_batches_tracked``: 0."""
    gen = torch.Generator().manual_seed(seed)
    shared_bias = None
    out = {}
    for key, shape in layout.items():
        shape = tuple(shape)
        leaf = key.rsplit(".", 1)[1]
        if leaf == "num_batches_tracked":
            out[key] = torch.tensor(0, dtype=torch.long)
            continue
        if leaf == "weight" and len(shape) >= 2:
            value = torch.randn(shape, generator=gen) * math.sqrt(2.0 / math.prod(shape[1:]))
            if key == "netcnnlip.0.weight":
                value /= 128
            elif key == "netcnnaud.0.weight":
                value /= 16
            elif key.startswith("netfc") and key.endswith(".3.weight"):
                value *= 0.1
        elif leaf == "weight":
            value = 1 + 0.1 * torch.randn(shape, generator=gen)
        elif leaf in ("bias", "running_mean"):
            value = 0.1 * torch.randn(shape, generator=gen)
            if key.startswith("netfc") and key.endswith(".3.bias"):
                if shared_bias is None:
                    shared_bias = torch.randn(shape, generator=gen)
                value = value + shared_bias
        elif leaf == "running_var":
            value = 0.5 + torch.rand(shape, generator=gen)
        else:
            raise KeyError(f"no rule for {key}")
        out[key] = value
    return out


def parity_frames(offsets: np.ndarray) -> np.ndarray:
    """``(T, 224, 224, 3)`` uint8 RGB: ``astronaut[20 + dy : 244 + dy, 120 + dx : 344 + dx]`` for each
    ``(dy, dx)`` row of ``offsets`` (the face, moved a few pixels per frame like a talking head)."""
    import skimage.data

    image = skimage.data.astronaut()
    return np.stack([image[20 + dy:244 + dy, 120 + dx:344 + dx] for dy, dx in np.asarray(offsets, dtype=int)])


MFCC_EDGE_LENGTHS = (1, 400, 401, 560, 561, 1000)
"""Short clip lengths (samples) whose MFCCs are recorded: the framing's edge cases."""
LAG_FRAMES = 3
"""The lag run delays the audio by this many frames (np.roll by 640 samples a frame)."""


class LevelCode(torch.nn.Module):
    """An injected embedding model whose two streams agree exactly on aligned windows of a *level
    clip*: frame t is a flat grey image of level ``q_t``, the quantised mean log energy (MFCC 0 x 8)
    of MFCC rows 4t .. 4t+3 of the audio. Each window is embedded as the one-hot codes of its 5
    levels (5 x 256 = 1280 values): aligned windows are at distance ~0, others at up to sqrt(10).
    It has both the reference's method names (``forward_lip``/``forward_aud``) and talkhead's."""

    LEVELS = 256
    SCALE = 8.0

    def audio_levels(self, mfcc: torch.Tensor) -> torch.Tensor:
        """``(B, 1, 13, 20)`` MFCC windows -> ``(B, 5)`` levels of their 5 frames."""
        c0 = mfcc[:, 0, 0, :].reshape(mfcc.shape[0], 5, 4).mean(-1)
        return torch.clamp(torch.round(c0 * self.SCALE), 0, self.LEVELS - 1).long()

    def video_levels(self, frames: torch.Tensor) -> torch.Tensor:
        """``(B, 3, 5, H, W)`` -> ``(B, 5)`` levels (the centre pixel of each frame)."""
        return frames[:, 0, :, frames.shape[3] // 2, frames.shape[4] // 2].round().long()

    def _code(self, levels: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(levels, self.LEVELS).flatten(1).float()

    def forward_lip(self, frames: torch.Tensor) -> torch.Tensor:
        return self._code(self.video_levels(frames))

    def forward_aud(self, mfcc: torch.Tensor) -> torch.Tensor:
        return self._code(self.audio_levels(mfcc))

    embed_video = forward_lip
    embed_audio = forward_aud


def level_frames(levels: np.ndarray, size: int = 224) -> np.ndarray:
    """``(T, size, size, 3)`` uint8 flat frames, frame t of grey level ``levels[t]``."""
    levels = np.asarray(levels, dtype=np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (levels.shape[0], size, size, 3)).copy()


def _clip_levels(speech: np.ndarray) -> np.ndarray:
    """Frame levels of :class:`LevelCode` for a clip, from the reference's own MFCC windows."""
    import python_speech_features

    rows = python_speech_features.mfcc(speech, 16000).T.astype(np.float32)  # (13, M) as cct
    count = (rows.shape[1] - 20) // 4 + 1  # every full window: the clip has count + 4 frames
    windows = torch.stack([torch.from_numpy(rows[None, :, 4 * i:4 * i + 20]) for i in range(count)])
    per_window = LevelCode().audio_levels(windows)  # window i -> levels of frames i .. i+4
    return np.concatenate([per_window[:, 0].numpy(), per_window[-1, 1:].numpy()]).astype(np.uint8)


def _run_reference(ref_instance, net, frames: np.ndarray, audio: np.ndarray) -> tuple:
    """Reference ``SyncNetInstance.evaluate`` on frames (RGB uint8) and int16 audio, in a temp dir."""
    import tempfile
    import types

    import cv2
    from scipy.io import wavfile

    with tempfile.TemporaryDirectory() as tmp:
        for i, frame in enumerate(frames):
            # PNG bytes under the .jpg name evaluate() globs: cv2.imread reads them losslessly (BGR)
            ok, png = cv2.imencode(".png", np.ascontiguousarray(frame[:, :, ::-1]))
            assert ok
            Path(tmp, f"{i + 1:06d}.jpg").write_bytes(png.tobytes())
        wavfile.write(Path(tmp, "audio.wav"), 16000, audio)
        instance = ref_instance.SyncNetInstance(net, device="cpu")
        opt = types.SimpleNamespace(tmp_dir=tmp, batch_size=BATCH_SIZE, vshift=VSHIFT)
        return instance.evaluate(opt)


def main() -> None:
    import importlib
    import json
    import types

    import python_speech_features
    from scipy.io import wavfile
    from syncnet_python.SyncNetModel import S

    # the module (the package's __init__ shadows the attribute with the class of the same name)
    ref_instance = importlib.import_module("syncnet_python.SyncNetInstance")

    torch.set_num_threads(1)
    offsets = np.random.default_rng(SEED).integers(-6, 7, size=(NUM_FRAMES, 2))
    frames = parity_frames(offsets)
    rate, speech = wavfile.read(SPEECH)
    assert rate == 16000 and speech.dtype == np.int16
    audio = speech[AUDIO_START:AUDIO_START + AUDIO_SAMPLES]

    net = S()
    layout = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    released_layout = {k: list(v) for k, v in layout.items() if not k.endswith("num_batches_tracked")}
    KEYS.write_text("{\n" + ",\n".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in released_layout.items())
                    + "\n}\n")
    released = {k: v for k, v in seeded_state_dict(layout).items() if not k.endswith("num_batches_tracked")}
    net.load_state_dict(released, strict=False)  # the released file has no num_batches_tracked either

    captured: dict[str, list] = {"mfcc": [], "lip": [], "aud": [], "dists": [], "medfilt": []}
    real_mfcc, real_pdist = python_speech_features.mfcc, ref_instance.calc_pdist
    real_lip, real_aud = net.forward_lip, net.forward_aud

    def mfcc_spy(*args, **kwargs):
        out = real_mfcc(*args, **kwargs)
        captured["mfcc"].append(np.array(out))
        return out

    def pdist_spy(*args, **kwargs):
        out = real_pdist(*args, **kwargs)
        captured["dists"].append(torch.stack(out).numpy())
        return out

    def lip_spy(x):
        out = real_lip(x)
        captured["lip"].append(out.detach().numpy().copy())
        return out

    def aud_spy(x):
        out = real_aud(x)
        captured["aud"].append(out.detach().numpy().copy())
        return out

    def medfilt_spy(*args, **kwargs):
        out = real_medfilt(*args, **kwargs)
        captured["medfilt"].append(np.array(out))
        return out

    real_medfilt = ref_instance.signal.medfilt
    ref_instance.signal = types.SimpleNamespace(medfilt=medfilt_spy)  # only evaluate()'s per-frame confidence
    ref_instance.python_speech_features.mfcc = mfcc_spy
    ref_instance.calc_pdist = pdist_spy
    net.forward_lip, net.forward_aud = lip_spy, aud_spy
    offset, conf, minval = _run_reference(ref_instance, net, frames, audio)
    ref_instance.python_speech_features.mfcc = real_mfcc

    # the lag run: the level clip of the whole speech, audio delayed by LAG_FRAMES (the sign check)
    levels = _clip_levels(speech)
    lag_offset, lag_conf, lag_minval = _run_reference(ref_instance, LevelCode(), level_frames(levels),
                                                      np.roll(speech, 640 * LAG_FRAMES))

    dists = captured["dists"][0]  # (W, 2 vshift + 1)
    mdist = torch.mean(torch.stack(list(torch.from_numpy(dists)), 1), 1)  # evaluate()'s mdist, as it computes it
    full_rate, full = wavfile.read(SPEECH)
    np.savez_compressed(
        OUT,
        seed=np.int64(SEED), vshift=np.int64(VSHIFT), batch_size=np.int64(BATCH_SIZE),
        offsets=offsets.astype(np.int16), audio_start=np.int64(AUDIO_START), audio=audio,
        mfcc=captured["mfcc"][0],
        mfcc_full=python_speech_features.mfcc(full, full_rate),
        **{f"mfcc_edge_{n}": python_speech_features.mfcc(full[5000:5000 + n], full_rate) for n in MFCC_EDGE_LENGTHS},
        lag_frames=np.int64(LAG_FRAMES), lag_levels=levels, lag_offset=np.int64(lag_offset),
        lag_lse_c=np.float64(lag_conf), lag_lse_d=np.float64(lag_minval),
        video_embeddings=np.concatenate(captured["lip"]), audio_embeddings=np.concatenate(captured["aud"]),
        dists=dists, mean_distance=mdist.numpy(), offset=np.int64(offset), lse_c=np.float64(conf),
        lse_d=np.float64(minval), frame_confidence=captured["medfilt"][0],
    )
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes): offset {offset}, LSE-D {minval:.4f}, LSE-C {conf:.4f}, "
          f"{dists.shape[0]} windows; lag run (audio delayed {LAG_FRAMES} frames): offset {lag_offset}, "
          f"LSE-D {lag_minval:.4f}, LSE-C {lag_conf:.4f}")


if __name__ == "__main__":
    main()
