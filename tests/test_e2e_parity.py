"""Issue item 4: the whole model chain reproduces the reference ``execute_model.main`` run.

From the speech FILE (our decoder + logfbank) and the fixture source image, through the FOMM keypoint
detector, the MS-Sync generator (``seq_len=50``, the ``s50`` run) and the FOMM generator, to the
first five frames in ``tests/data/e2e/parity.npz``. The fixture ran under a modern torch, so the
renderer uses ``align_corners=False`` here (see docs/fixtures.md, "Reference behaviours" 1).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from talkhead.keypoints import Keypoints

from talkhead.audio import load_speech, logfbank
from talkhead.fomm import load_fomm
from talkhead.mssync import generate_keypoints, load_mssync

DATA = Path(__file__).parent / "data"


def test_audio_file_to_frames_matches_reference(fomm_tiny_files, mssync_tiny_dir, e2e_parity):
    p = e2e_parity
    fomm = load_fomm(*fomm_tiny_files, align_corners=False)
    model = load_mssync(mssync_tiny_dir)

    speech = load_speech(DATA / "audio" / "speech_16k.wav")
    features = logfbank(speech.samples, speech.sample_rate)
    source = torch.from_numpy(p["source"]).permute(2, 0, 1)[None]
    kp_source = fomm.detect(source)
    np.testing.assert_allclose(kp_source.value.numpy(), p["kp_source_value"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(kp_source.jacobian.numpy(), p["kp_source_jacobian"], atol=1e-5, rtol=0)

    kp_driving = generate_keypoints(model, kp_source, features.astype(np.float32), seq_len=50)
    value, jacobian = kp_driving.value, kp_driving.jacobian
    assert value.shape == (51, 10, 2) and jacobian.shape == (51, 10, 2, 2)
    np.testing.assert_allclose(value[:5].numpy(), p["driving_value"][:, 0], atol=1e-5, rtol=0)
    np.testing.assert_allclose(jacobian[:5].numpy(), p["driving_jacobian"][:, 0], atol=1e-5, rtol=0)

    frames = fomm.render(fomm.encode_source(source, kp_source), kp_driving[:5])
    frames = frames.permute(0, 2, 3, 1).numpy()
    err = np.abs(frames - p["frames"]).max()
    assert err <= 2e-5, err
    # The reference wrote its PNGs by truncation; ours agree except where a value sits on a boundary.
    png = (frames * 255).astype(np.uint8)
    assert (png.astype(int) - p["frames_png_uint8"]).__abs__().max() <= 1
    assert (png == p["frames_png_uint8"]).mean() > 0.999


def test_training_time_convention_changes_frames(fomm_tiny_files, e2e_parity):
    """The renderer's default (align_corners=True, vox-adv's torch-1.0 behaviour) differs visibly."""
    p = e2e_parity
    legacy = load_fomm(*fomm_tiny_files)
    assert legacy.align_corners is True
    source = torch.from_numpy(p["source"]).permute(2, 0, 1)[None]
    kp = legacy.detect(source)
    drive = Keypoints(torch.from_numpy(p["driving_value"][:, 0]), torch.from_numpy(p["driving_jacobian"][:, 0]))
    frames = legacy.render(legacy.encode_source(source, kp), drive).permute(0, 2, 3, 1).numpy()
    assert np.abs(frames - p["frames"]).max() > 1e-2
