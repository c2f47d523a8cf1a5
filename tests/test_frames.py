"""What the frames show, decoded from the MP4s the real :class:`Pipeline` writes.

A code renderer paints, into every frame, the integer its kp_driving's keypoint 0 carries (x = code /
1000) as 10 black/white 16x16 blocks - big enough that H.264 never flips one - and its detector reads
the same blocks back from an image. So a decoded frame says which pose drove it:

* ``animate`` (speech): a motion generator whose frame ``t`` carries code ``t``; every video frame ``t``
  must show ``min(t, T-1)`` (the last pose held to the speech's length), and there must be as many
  frames as the speech lasts at 25 fps;
* ``reenact`` (driving video): a driving video whose frame ``k`` shows code ``50 + 3k``; with relative
  motion each output frame shows the photo's own code plus the driving motion, ``3k``.

Also: frames rendered through the pipeline against the reference's end-to-end fixture frames, and
outputs that are inputs refused by every command.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from talkhead.cli import app
from talkhead.errors import OutputError
from talkhead.ffmpeg import read_frames
from talkhead.keypoints import Keypoints
from talkhead.options import AnimateOptions, ReenactOptions
from talkhead.pipeline import Pipeline, num_video_frames
from talkhead.reenact import load_reenact_pipeline, reenact
from toy_renderer import SourceImageRenderer

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).parent.parent
ASTRONAUT = ROOT / "examples" / "astronaut.png"
SPEECH = DATA / "audio" / "speech_16k.wav"  # 4.80 s: 120 frames at 25 fps

BITS, BLOCK, SIDE = 10, 16, 64
"""The code: 10 bits as 16x16 blocks on a 4x4 grid of a 64x64 frame (blocks 10-15 stay grey)."""
RING = torch.stack([torch.cos(torch.arange(9) * 2 * torch.pi / 9), torch.sin(torch.arange(9) * 2 * torch.pi / 9)], -1) * 3
"""Keypoints 1-9: a fixed ring of radius 3 around keypoint 0 (x in [0, 1.023]), so its convex hull, and
FOMM's adaptive movement scale, never change."""


def paint(codes: torch.Tensor) -> torch.Tensor:
    """``(b,)`` integer codes -> ``(b, 3, 64, 64)`` frames in [0, 1]."""
    frames = torch.full((len(codes), 3, SIDE, SIDE), 0.5)
    for i in range(BITS):
        r, c = divmod(i, SIDE // BLOCK)
        bit = ((codes.long() >> i) & 1).float()[:, None, None, None]
        frames[:, :, r * BLOCK:(r + 1) * BLOCK, c * BLOCK:(c + 1) * BLOCK] = bit
    return frames


def read_codes(frames: np.ndarray) -> np.ndarray:
    """``(n, 64, 64, 3)`` uint8 (or float [0,1] ``(n, 3, 64, 64)`` tensors) -> ``(n,)`` codes."""
    if isinstance(frames, torch.Tensor):
        frames = (frames.permute(0, 2, 3, 1) * 255).numpy()
    codes = np.zeros(len(frames), dtype=np.int64)
    for i in range(BITS):
        r, c = divmod(i, SIDE // BLOCK)
        inner = frames[:, r * BLOCK + 4:(r + 1) * BLOCK - 4, c * BLOCK + 4:(c + 1) * BLOCK - 4].mean(axis=(1, 2, 3))
        codes |= (inner > 127).astype(np.int64) << i
    return codes


class CodeRenderer(SourceImageRenderer):
    """Renders the code of keypoint 0 (``round(x * 1000)``); detects the code painted in an image."""

    frame_size = SIDE

    def detect(self, images):
        codes = torch.from_numpy(read_codes(images)).float()
        value = torch.cat([torch.stack([codes / 1000, torch.zeros_like(codes)], -1)[:, None],
                           RING[None].expand(len(codes), 9, 2)], 1)
        return Keypoints(value, torch.eye(2).expand(len(codes), 10, 2, 2).clone())

    def frames(self, source, kp_source, kp_driving):
        return paint(torch.round(kp_driving.value[:, 0, 0] * 1000))


def code_motion(T):
    """A motion generator (MS-Sync's interface) whose frame ``t`` carries code ``t``: ``T`` frames."""
    def motion(kp_source, logfbank, progress=None):
        value = kp_source.value.repeat(T, 1, 1)
        value[:, 0, 0] = torch.arange(T) / 1000
        return Keypoints(value, kp_source.jacobian.repeat(T, 1, 1, 1))
    return motion


def decoded_codes(path: Path) -> np.ndarray:
    _, frames = read_frames(path, "format=rgb24", (SIDE, SIDE))
    return read_codes(np.stack(list(frames)))


def whole_image(image):
    """A landmarker reporting the whole image as the face (the crop is then the image, resized)."""
    from talkhead.landmarks import Face

    h, w = image.shape[:2]
    return [Face(box=(0.0, 0.0, float(w), float(h)), score=0.99, landmarks=np.zeros((0, 2), np.float32),
                 backend="fan")]


def photo_with_code(tmp_path: Path, code: int) -> Path:
    from PIL import Image

    path = tmp_path / f"photo{code}.png"
    Image.fromarray((paint(torch.tensor([code]))[0].permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(path)
    return path


def driving_video(tmp_path: Path, codes, fps: float = 25.0) -> Path:
    from talkhead.video import VideoWriter

    path = tmp_path / "driving.mp4"
    frames = (paint(torch.as_tensor(codes)).permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)
    with VideoWriter(path, size=(SIDE, SIDE), fps=fps) as writer:
        writer.write(frames)
    return path


# -------------------------------------------------------------------------------------- animate (speech)
@pytest.mark.parametrize("batch_size", [1, 7])
def test_animate_frame_t_shows_pose_t_and_the_last_pose_is_held(tmp_path, batch_size):
    """Every frame t of the written MP4 was rendered from kp_driving[min(t, T-1)], and the video lasts
    as long as the speech (120 frames) though the generator made only T = 100 poses."""
    T = 100
    opts = AnimateOptions(frame="crop", crop="none", batch_size=batch_size)
    pipe = Pipeline(opts, renderer=CodeRenderer(), motion=code_motion(T))
    result = pipe.animate(photo_with_code(tmp_path, 0), SPEECH, tmp_path / "out.mp4")
    codes = decoded_codes(result.output)
    total = num_video_frames(4.8)
    assert total == 120 and result.num_frames == total and len(codes) == total
    np.testing.assert_array_equal(codes, np.minimum(np.arange(total), T - 1))
    assert len(result.kp_driving) == T


def test_animate_keeps_every_pose_when_the_generator_makes_more(tmp_path):
    """More poses than frames: the first ``total`` are shown, none skipped."""
    pipe = Pipeline(AnimateOptions(frame="crop", crop="none"), renderer=CodeRenderer(), motion=code_motion(130))
    codes = decoded_codes(pipe.animate(photo_with_code(tmp_path, 0), SPEECH, tmp_path / "out.mp4").output)
    np.testing.assert_array_equal(codes, np.arange(120))


# -------------------------------------------------------------------------------------- reenact (video)
@pytest.mark.parametrize("batch_size", [1, 4])
def test_reenact_frames_follow_the_driving_motion(tmp_path, batch_size):
    """Relative transfer: output frame k shows the photo's code + (driving code k - driving code 0)."""
    k = np.arange(30)
    video = driving_video(tmp_path, 50 + 3 * k)
    pipe = load_reenact_pipeline(ReenactOptions(frame="crop", crop="none", batch_size=batch_size),
                                 renderer=CodeRenderer())
    result = reenact(pipe, photo_with_code(tmp_path, 7), video, tmp_path / "out.mp4", keep_keypoints=True)
    codes = decoded_codes(result.output)
    assert result.num_frames == len(k) and result.movement_scale == pytest.approx(1.0)
    np.testing.assert_array_equal(codes, 7 + 3 * k)
    np.testing.assert_allclose(result.kp_driving.value[:, 0, 0].numpy() * 1000, 7 + 3 * k, atol=1e-3)


def test_reenact_absolute_uses_the_driving_pose_itself(tmp_path):
    k = np.arange(12)
    video = driving_video(tmp_path, 50 + 3 * k)
    pipe = load_reenact_pipeline(ReenactOptions(frame="crop", crop="none", relative=False), renderer=CodeRenderer())
    codes = decoded_codes(reenact(pipe, photo_with_code(tmp_path, 7), video, tmp_path / "out.mp4").output)
    np.testing.assert_array_equal(codes, 50 + 3 * k)


def test_batch_reenact_renders_each_photo_with_its_video(tmp_path):
    """`talkhead batch PHOTOS VIDEOS --reenact`: pairs by stem; each output follows its own video. The
    code renderer is added as a user's renderer would be: one registry entry, no other file changed."""
    from talkhead.renderers import RendererEntry, register_renderer, unregister_renderer

    photos, videos, out = tmp_path / "photos", tmp_path / "videos", tmp_path / "out"
    photos.mkdir(), videos.mkdir()
    for stem, code, step in (("ann", 5, 2), ("bob", 9, 4)):
        photo_with_code(tmp_path, code).rename(photos / f"{stem}.png")
        driving_video(tmp_path, 100 + step * np.arange(10)).rename(videos / f"{stem}.mp4")
    register_renderer(RendererEntry(name="code", summary="test", num_kp=10, store_names=(),
                                    load=lambda models_dir, device, options: CodeRenderer(),
                                    frame_size=lambda models_dir: SIDE, audio_driven=False))
    try:
        result = CliRunner().invoke(app, ["batch", str(photos), str(videos), "--reenact", "-o", str(out),
                                          "--renderer", "code", "--crop", "none", "--frame", "crop",
                                          "--models-dir", str(tmp_path / "models"), "--offline"])
    finally:
        unregister_renderer("code")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["ann.mp4", "bob.mp4"]
    np.testing.assert_array_equal(decoded_codes(out / "ann.mp4"), 5 + 2 * np.arange(10))
    np.testing.assert_array_equal(decoded_codes(out / "bob.mp4"), 9 + 4 * np.arange(10))


# -------------------------------------------------------------------------------------- the reference frames
def test_pipeline_frames_match_the_reference_end_to_end(tmp_path, tiny_models_dir, e2e_parity, monkeypatch):
    """The real Pipeline (tiny FOMM + tiny MS-Sync from the models folder, the fixture's source image as
    the photo, crop none) hands the encoder the reference ``execute_model.main`` frames."""
    from PIL import Image

    from talkhead.video import VideoWriter

    p = e2e_parity
    photo = tmp_path / "source.png"
    Image.fromarray(p["source_uint8"]).save(photo)
    written = []
    real_write = VideoWriter.write
    monkeypatch.setattr(VideoWriter, "write", lambda self, frames: written.append(np.array(frames)) or
                        real_write(self, frames))
    opts = AnimateOptions(models_dir=tiny_models_dir, device="cpu", offline=True, crop="none", frame="crop",
                          align_corners=False, batch_size=5)
    result = Pipeline(opts).animate(photo, SPEECH, tmp_path / "out.mp4")
    frames = np.concatenate(written)[:5]
    reference = np.clip(np.round(p["frames"] * 255), 0, 255).astype(np.uint8)
    assert np.abs(frames.astype(int) - reference).max() <= 1
    # the fixture is the reference's `s50` run (max_l: 51 frames generated from the truncated audio); the
    # pipeline generates from the whole clip, which moves the first poses by 1.4e-4 (the model-level
    # test, tests/test_e2e_parity.py, reproduces the s50 run to 1e-5)
    np.testing.assert_allclose(result.kp_driving.value[:5].numpy(), p["driving_value"][:, 0], atol=2e-4)
    _, decoded = read_frames(result.output, "format=rgb24", (64, 64))
    first = np.stack([f for _, f in zip(range(5), decoded)]).astype(float)
    mse = ((first - reference) ** 2).mean()
    assert 10 * np.log10(255 ** 2 / mse) >= 25  # the MP4 shows them (H.264 crf 18 on a 64-px textured face: 27 dB)


# -------------------------------------------------------------------------------------- outputs that are inputs
def _one_line_refusal(result, *needles):
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error:"), result.output
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


@pytest.fixture
def inputs(tmp_path):
    photo = photo_with_code(tmp_path, 3)
    video = driving_video(tmp_path, 10 + np.arange(5))
    speech = tmp_path / "speech.wav"
    speech.write_bytes(SPEECH.read_bytes())
    return {"photo": photo, "video": video, "speech": speech}


@pytest.mark.parametrize("command", ["animate", "reenact"])
@pytest.mark.parametrize("which", ["photo", "motion", "keypoints-is-photo", "keypoints-is-motion", "keypoints-is-output"])
def test_an_output_that_is_an_input_is_refused_even_with_overwrite(tmp_path, inputs, command, which):
    motion = inputs["speech"] if command == "animate" else inputs["video"]
    output, keypoints = tmp_path / "out.mp4", None
    if which == "photo":
        output = inputs["photo"]
    elif which == "motion":
        output = motion
    elif which == "keypoints-is-photo":
        keypoints = inputs["photo"]
    elif which == "keypoints-is-motion":
        keypoints = motion
    else:
        keypoints = output
    before = {k: v.read_bytes() for k, v in inputs.items()}
    args = [command, str(inputs["photo"]), str(motion), "-o", str(output), "--overwrite",
            "--models-dir", str(tmp_path / "no-models"), "--offline"]
    if keypoints is not None:
        args += ["--save-keypoints", str(keypoints)]
    result = CliRunner().invoke(app, args)
    _one_line_refusal(result, "choose another output path" if which != "keypoints-is-output" else "same file")
    assert {k: v.read_bytes() for k, v in inputs.items()} == before
    assert not (tmp_path / "out.mp4").exists()


@pytest.mark.parametrize("reenact_mode", [False, True])
def test_batch_refuses_an_output_that_is_an_input(tmp_path, inputs, reenact_mode):
    motion = inputs["video"] if reenact_mode else inputs["speech"]
    csv = tmp_path / "jobs.csv"
    csv.write_text(f"image,audio,output\n{inputs['photo']},{motion},{inputs['photo']}\n")
    before = inputs["photo"].read_bytes()
    args = ["batch", "--pairs", str(csv), "-o", str(tmp_path / "out"), "--overwrite",
            "--models-dir", str(tmp_path / "no-models"), "--offline"] + (["--reenact"] if reenact_mode else [])
    result = CliRunner().invoke(app, args)
    _one_line_refusal(result, "is the input file")
    assert inputs["photo"].read_bytes() == before


def test_api_refuses_the_photo_as_output(tmp_path, inputs):
    pipe = load_reenact_pipeline(ReenactOptions(frame="crop", crop="none", overwrite=True), renderer=CodeRenderer())
    before = inputs["photo"].read_bytes()
    with pytest.raises(OutputError, match="is the input file"):
        reenact(pipe, inputs["photo"], inputs["video"], inputs["photo"])
    assert inputs["photo"].read_bytes() == before
