"""talkhead.reenact / ``talkhead reenact``: a photo driven by the head motion of a video (FOMM demo).

Inputs are real: the astronaut photo (examples/astronaut.png) and driving clips made, as in
tests/test_preprocess.py, from ``skimage.data.astronaut()``'s face moved by a known motion (a
+-12 px horizontal sinusoid, or a rotation) at 30 fps with the real speech as the audio track.
Renderers: the tiny FOMM (random weights, 64 x 64 frames); the tiny FOMM with a keypoint detector
of known geometry (the centroid of the face, test_preprocess.CentroidKP, spread into a ring so the
keypoints have a convex hull); and a lookup renderer returning the reference ``normalize_kp``
fixture's keypoints (tests/data/fomm/parity.npz ``norm_*``) for the parity check.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from talkhead.errors import InputError, NoFaceError
from talkhead.ffmpeg import read_frames as iter_frames
from talkhead.fomm import FOMM, FOMMConfig, load_fomm
from talkhead.keypoints import Keypoints
from talkhead.options import ReenactOptions
from talkhead.reenact import find_best_frame, load_reenact_pipeline, normalized_landmarks, reenact
from talkhead.renderers import _RENDERERS, RendererEntry, register_renderer
from helpers import (BG, FRAME, SRC_FPS, CentroidKP, applied_dx, assert_clean_error, face_frame, probe, run_cli,
                     write_video)
from helpers import speech_excerpt as speech_wav
from toy_renderer import SourceImageRenderer

ROOT = Path(__file__).parent.parent
DATA = Path(__file__).parent / "data"
PHOTO = ROOT / "examples" / "astronaut.png"
SECONDS = 2.0


run = run_cli


def rotated_face_frame(angle_deg: float) -> np.ndarray:
    """(256, 256, 3) uint8: the astronaut's face disk (as :func:`face_frame`) rotated about its centre."""
    m = cv2.getRotationMatrix2D((FRAME / 2, FRAME / 2), angle_deg, 1.0)
    return cv2.warpAffine(face_frame(0.0), m, (FRAME, FRAME), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(BG, BG, BG))


class RingCentroidKP(CentroidKP):
    """:class:`CentroidKP` (every keypoint at the face's centroid) plus a fixed ring of offsets of
    radius 0.25, so the keypoints span an area (FOMM's adaptive movement scale needs a 2-D hull) and
    move exactly with the face: a face translated by ``d`` px in a crop of side ``L`` moves every
    keypoint by ``2 d / L``."""

    def forward(self, x: torch.Tensor) -> dict:
        kp = super().forward(x)
        k = torch.arange(kp["value"].shape[1], dtype=torch.float32)
        ring = 0.25 * torch.stack([torch.cos(2 * np.pi * k / len(k)), torch.sin(2 * np.pi * k / len(k))], -1)
        kp["value"] = kp["value"] + ring.to(kp["value"])
        return kp


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("driving")
    wav = speech_wav(d / "speech.wav", SECONDS)
    t = np.arange(int(SECONDS * SRC_FPS)) / SRC_FPS
    talk = [face_frame(dx) for dx in applied_dx(t)]
    grey = np.full_like(talk[0], BG)
    lost = [grey if 24 <= i < 45 else f for i, f in enumerate(talk)]  # no face from 0.8 s to 1.5 s
    import skimage.data

    coffee = skimage.data.coffee()
    best = 30  # the upright face is frame 30; every other frame is rotated
    angles = 20.0 * (np.arange(int(SECONDS * SRC_FPS)) - best) / best
    ffmpeg = __import__("imageio_ffmpeg").get_ffmpeg_exe()
    zero = d / "zero.avi"
    subprocess.run([ffmpeg, "-v", "error", "-y", "-f", "lavfi", "-i", "color=c=gray:s=64x64:r=25", "-t", "1",
                    "-frames:v", "0", "-c:v", "mpeg4", str(zero)], check=True)
    corrupt = d / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return {
        "talk": write_video(d / "talk.mp4", talk, SRC_FPS, wav),
        "silent": write_video(d / "silent.mp4", talk[:30], SRC_FPS, None),
        "lost": write_video(d / "lost.mp4", lost, SRC_FPS, wav),
        "rotate": write_video(d / "rotate.mp4", [rotated_face_frame(a) for a in angles], SRC_FPS, None),
        "noface": write_video(d / "coffee.mp4", [np.roll(coffee, k, 1) for k in range(0, 40)], 25, wav),
        "zero": zero, "corrupt": corrupt, "audio_only": wav,
    }


@pytest.fixture(scope="module")
def tiny_fomm(fomm_tiny_files) -> FOMM:
    return load_fomm(*fomm_tiny_files)


@pytest.fixture(scope="module")
def centroid_fomm(fomm_tiny_files, tiny_fomm) -> FOMM:
    """The tiny FOMM's generator driven by :class:`RingCentroidKP` keypoints (64 x 64 frames)."""
    config = FOMMConfig.from_yaml(fomm_tiny_files[0])
    fomm = FOMM(RingCentroidKP(), config.build_generator(True), config)
    fomm.generator.load_state_dict(tiny_fomm.generator.state_dict())
    return fomm


def cli_common(models_dir: Path) -> list[str]:
    return ["--models-dir", models_dir, "--landmarker", "dlib", "--offline", "--quiet", "--device", "cpu"]


# ------------------------------------------------------------------------------------------ output
def test_cli_output_follows_the_driving_clip(clips, tiny_models_dir, tmp_path):
    """Crop output: the driving clip's frame count, fps, duration and audio; the renderer's frame size."""
    out, kps = tmp_path / "out.mp4", tmp_path / "kp.npz"
    result = run("reenact", PHOTO, clips["talk"], "-o", out, "--frame", "crop", "--save-keypoints", kps,
                 "--batch-size", "7", *cli_common(tiny_models_dir))
    assert result.exit_code == 0, result.output
    src, info = probe(clips["talk"]), probe(out)
    assert info.num_frames == src.num_frames == 60 and info.fps == src.fps == SRC_FPS
    assert abs(info.duration_s - src.duration_s) < 0.05
    assert info.has_audio and abs(info.audio_duration_s - src.audio_duration_s) < 0.05
    assert (info.width, info.height) == (64, 64)
    with np.load(kps) as z:
        assert z["kp_driving_value"].shape == (60, 10, 2) and z["kp_driving_jacobian"].shape == (60, 10, 2, 2)
        assert z["kp_detected_value"].shape == (60, 10, 2) and int(z["initial_frame"]) == 0
        # the driving crop is one square box around the moving face, inside the 256 x 256 frame
        x0, y0, x1, y1 = z["driving_crop_box"]
        assert x1 - x0 == y1 - y0 and 0 <= x0 and x1 <= FRAME and x0 < FRAME / 2 - 50 and x1 > FRAME / 2 + 50
        # relative motion: the initial frame's transferred keypoints are the photo's own
        np.testing.assert_allclose(z["kp_driving_value"][0], z["kp_source_value"][0], atol=1e-6)
        np.testing.assert_allclose(z["kp_driving_jacobian"][0], z["kp_source_jacobian"][0], atol=1e-5)


def test_silent_driving_clip_gives_a_silent_video_and_fps_resamples(clips, tiny_fomm, tmp_path):
    pipe = load_reenact_pipeline(ReenactOptions(frame="crop", landmarker="dlib", device="cpu", fps=25),
                                 renderer=tiny_fomm)
    result = reenact(pipe, PHOTO, clips["silent"], tmp_path / "silent.mp4")
    info = probe(tmp_path / "silent.mp4")
    assert not info.has_audio and not result.has_audio
    # 30 frames at 30 fps = 1 s -> 25 frames at --fps 25
    assert info.fps == 25 and info.num_frames == result.num_frames == 25


def test_variable_frame_rate_driving_video_keeps_its_duration(clips, tiny_fomm, tmp_path):
    """A VFR driving video (2 s at 30 fps, then 1.2 s at 10 fps: 72 frames over 3.2 s, the way phones
    record) is read and written at one explicit rate: the output lasts as long as the input and its
    audio, with duration x fps frames (read at the stream's nominal rate and written at its average,
    it came out 1.5x too long)."""
    ffmpeg = __import__("imageio_ffmpeg").get_ffmpeg_exe()
    talk = tmp_path / "cfr.mp4"
    write_video(talk, [face_frame(dx) for dx in applied_dx(np.arange(72) / SRC_FPS)], SRC_FPS, None)
    wav = speech_wav(tmp_path / "vfr.wav", 3.2)
    vfr = tmp_path / "vfr.mp4"
    subprocess.run([ffmpeg, "-v", "error", "-y", "-i", str(talk), "-i", str(wav), "-vf",
                    "setpts='if(lt(N,60),N/30,2+(N-60)/10)/TB'", "-fps_mode", "vfr", "-c:v", "libx264",
                    "-pix_fmt", "yuv420p", "-c:a", "aac", str(vfr)], check=True)
    src = probe(vfr)
    assert src.num_frames == 72 and abs(src.duration_s - 3.2) < 0.1  # really variable: 72 frames, 3.2 s
    pipe = load_reenact_pipeline(ReenactOptions(frame="crop", landmarker="dlib", device="cpu"), renderer=tiny_fomm)
    result = reenact(pipe, PHOTO, vfr, tmp_path / "out.mp4")
    out = probe(tmp_path / "out.mp4")
    assert abs(out.duration_s - src.duration_s) < 2 / out.fps, (out, src)
    assert abs(out.num_frames - src.duration_s * out.fps) <= 1 and out.num_frames == result.num_frames
    assert out.has_audio and abs(out.audio_duration_s - out.num_frames / out.fps) < 0.1


def test_full_frame_output_is_the_photo_size(clips, tiny_fomm, tmp_path):
    pipe = load_reenact_pipeline(ReenactOptions(frame="full", landmarker="dlib", device="cpu"), renderer=tiny_fomm)
    result = reenact(pipe, PHOTO, clips["silent"], tmp_path / "full.mp4")
    info = probe(tmp_path / "full.mp4")
    assert (info.width, info.height) == (512, 512) and info.num_frames == result.num_frames == 30
    # outside the pasted face region the frames are the photo
    _, frames = iter_frames(tmp_path / "full.mp4", "format=rgb24", (512, 512))
    first = next(frames)
    frames.close()
    photo = cv2.cvtColor(cv2.imread(str(PHOTO)), cv2.COLOR_BGR2RGB)
    x0, y0, x1, y1 = result.crop_box
    outside = np.ones((512, 512), bool)
    outside[max(0, y0 - 8):y1 + 8, max(0, x0 - 8):x1 + 8] = False
    assert np.abs(first.astype(int) - photo)[outside].mean() < 3.0


# ------------------------------------------------------------------------------------------ motion
def test_rendered_motion_follows_the_driving_motion(clips, centroid_fomm, tmp_path):
    """With keypoints of known geometry, the transferred keypoints move like the driving face (scaled
    by the fixed crop and the adaptive scale) and the rendered frames shift with them."""
    pipe = load_reenact_pipeline(ReenactOptions(frame="crop", landmarker="dlib", device="cpu"),
                                 renderer=centroid_fomm)
    result = reenact(pipe, PHOTO, clips["talk"], tmp_path / "m.mp4", keep_keypoints=True)
    d = applied_dx(np.arange(result.num_frames) / SRC_FPS) - applied_dx(0.0)  # motion relative to frame 0
    mean_x = result.kp_driving.value[:, :, 0].mean(1).numpy()
    side = result.driving_crop_box[2] - result.driving_crop_box[0]
    assert np.corrcoef(mean_x, d)[0, 1] > 0.999  # measured 0.99999
    assert np.polyfit(d, mean_x, 1)[0] == pytest.approx(2.0 / side * result.movement_scale, rel=0.05)
    assert result.kp_driving.value[:, :, 1].mean(1).std() < 0.1 * mean_x.std()  # no vertical motion applied

    # the rendered frames: horizontal shift of each frame against frame 0 (phase correlation)
    _, frames = iter_frames(tmp_path / "m.mp4", "format=rgb24", (64, 64))
    gray = [f.astype(np.float32).mean(2) for f in frames]
    shifts = np.array([cv2.phaseCorrelate(gray[0], g)[0][0] for g in gray])
    assert np.corrcoef(shifts, d)[0, 1] > 0.9, np.corrcoef(shifts, d)[0, 1]  # measured 0.99
    assert np.polyfit(d, shifts, 1)[0] > 0  # same direction (x = column)


def test_absolute_motion_uses_the_driving_keypoints(clips, centroid_fomm, tmp_path):
    pipe = load_reenact_pipeline(ReenactOptions(frame="crop", landmarker="dlib", device="cpu", relative=False),
                                 renderer=centroid_fomm)
    reenact(pipe, PHOTO, clips["silent"], tmp_path / "abs.mp4", save_keypoints=tmp_path / "abs.npz")
    with np.load(tmp_path / "abs.npz") as z:
        np.testing.assert_array_equal(z["kp_driving_value"], z["kp_detected_value"])
        assert float(z["movement_scale"]) == 1.0
        assert not np.allclose(z["kp_driving_value"][0], z["kp_source_value"][0], atol=1e-3)


def test_face_lost_mid_clip_does_not_stop_the_run(clips, tiny_fomm, tmp_path):
    from talkhead.landmarks import detect_faces

    found = []

    def landmarker(image):
        faces = detect_faces(image, backend="dlib")
        found.append(len(faces))
        return faces

    pipe = load_reenact_pipeline(ReenactOptions(frame="crop", device="cpu"), renderer=tiny_fomm,
                                 landmarker=landmarker)
    result = reenact(pipe, PHOTO, clips["lost"], tmp_path / "lost.mp4")
    assert 0 in found[1:] and max(found[1:]) >= 1  # a sampled driving frame had no face, others had one
    assert result.num_frames == probe(tmp_path / "lost.mp4").num_frames == 60


# ------------------------------------------------------------------------------------------ best frame
def test_normalized_landmarks_ignore_place_and_size_not_rotation():
    rng = np.random.default_rng(1)
    lm = rng.uniform(0, 100, (68, 2))
    ref = normalized_landmarks(lm)
    np.testing.assert_allclose(normalized_landmarks(3.5 * lm + [40.0, -7.0]), ref, atol=1e-12)
    rot = lm @ np.array([[np.cos(0.3), -np.sin(0.3)], [np.sin(0.3), np.cos(0.3)]]).T
    assert np.abs(normalized_landmarks(rot) - ref).max() > 0.05
    assert abs(np.sqrt(__import__("scipy.spatial").spatial.ConvexHull(ref).volume) - 1.0) < 1e-12

    frames = [None, rot, 2 * lm + 5, lm * [1.0, 1.3]]
    best, dist = find_best_frame(lm, iter(range(4)), lambda i: frames[i])
    assert best == 2 and np.isinf(dist[0]) and dist[2] < 1e-20 < dist[1]


def test_find_best_frame_starts_from_the_closest_face(clips, centroid_fomm, tmp_path):
    """The clip's face is upright only in frame 30 (rotated by up to 20 degrees elsewhere); the photo's
    face is upright: the initial driving frame is found there, and it maps onto the photo's keypoints."""
    pipe = load_reenact_pipeline(ReenactOptions(frame="crop", landmarker="dlib", device="cpu",
                                                find_best_frame=True), renderer=centroid_fomm)
    result = reenact(pipe, PHOTO, clips["rotate"], tmp_path / "best.mp4", save_keypoints=tmp_path / "best.npz")
    assert abs(result.initial_frame - 30) <= 3, result.initial_frame
    with np.load(tmp_path / "best.npz") as z:
        i = int(z["initial_frame"])
        np.testing.assert_allclose(z["kp_driving_initial_value"][0], z["kp_detected_value"][i], atol=1e-6)
        np.testing.assert_allclose(z["kp_driving_value"][i], z["kp_source_value"][0], atol=1e-6)
    assert result.num_frames == 60


# ------------------------------------------------------------------------------------------ parity
LEVELS = {"photo": 220, "frames": (40, 80, 120, 160)}
"""Uniform grey levels: the photo and the 4 driving frames of the parity clip (told apart by the lookup)."""


class LookupRenderer(SourceImageRenderer):
    """Detects by looking up a frame's grey level: the photo -> the fixture's ``norm_kp_source``,
    driving frame ``t`` -> ``norm_driving[t]`` (so frame 0 -> ``norm_driving_initial``); renders the source."""

    frame_size = 32

    def __init__(self, p: dict):
        super().__init__()
        table = {LEVELS["photo"]: (p["norm_kp_source_value"][0], p["norm_kp_source_jacobian"][0])}
        for t, level in enumerate(LEVELS["frames"]):
            table[level] = (p["norm_driving_value"][t, 0], p["norm_driving_jacobian"][t, 0])
        self.levels = np.array(sorted(table))
        self.table = table

    def detect(self, x):
        means = (x.mean((1, 2, 3)) * 255).numpy()
        keys = [int(self.levels[np.abs(self.levels - m).argmin()]) for m in means]
        assert all(abs(k - m) < 6 for k, m in zip(keys, means)), (keys, means)
        value = torch.tensor(np.stack([self.table[k][0] for k in keys]))
        return Keypoints(value, torch.tensor(np.stack([self.table[k][1] for k in keys])))


@pytest.fixture()
def lookup_renderer(fomm_parity):
    register_renderer(RendererEntry(name="parity-lookup", summary="test: fixture keypoints by grey level",
                                    num_kp=10, store_names=(), load=lambda d, dev, o: LookupRenderer(fomm_parity),
                                    frame_size=lambda models_dir: LookupRenderer.frame_size))
    yield "parity-lookup"
    _RENDERERS.pop("parity-lookup", None)


@pytest.mark.parametrize("adapt", [False, True])
def test_relative_motion_matches_fomm_normalize_kp_through_the_cli(lookup_renderer, fomm_parity, tmp_path, adapt):
    """``--relative`` reproduces the reference ``normalize_kp`` (``norm_adapt{0,1}_*``) end to end:
    video decoding, per-frame detection, motion transfer, --save-keypoints."""
    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), np.full((48, 48, 3), LEVELS["photo"], np.uint8))
    clip = write_video(tmp_path / "levels.mp4", [np.full((48, 48, 3), v, np.uint8) for v in LEVELS["frames"]], 25)
    kps = tmp_path / "kp.npz"
    result = run("reenact", photo, clip, "-o", tmp_path / "out.mp4", "--renderer", lookup_renderer,
                 "--crop", "none", "--frame", "crop", "--relative", "--adapt-scale" if adapt else "--no-adapt-scale",
                 "--save-keypoints", kps, "--models-dir", tmp_path / "models", "--quiet", "--device", "cpu")
    assert result.exit_code == 0, result.output
    with np.load(kps) as z:
        np.testing.assert_allclose(z["kp_driving_value"], fomm_parity[f"norm_adapt{int(adapt)}_value"][:, 0],
                                   atol=1e-5)
        np.testing.assert_allclose(z["kp_driving_jacobian"], fomm_parity[f"norm_adapt{int(adapt)}_jacobian"][:, 0],
                                   atol=1e-5)
        expected_scale = float(fomm_parity["norm_adapt1_scale"]) if adapt else 1.0
        assert float(z["movement_scale"]) == pytest.approx(expected_scale, abs=1e-6)
    assert probe(tmp_path / "out.mp4").num_frames == 4


# ------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("name, needle", [
    ("noface", "no face found in driving video"),
    ("audio_only", "has no video stream"),
    ("corrupt", "cannot read driving video"),
    ("zero", "has no video frames"),
    ("talk", "more than --max-seconds 1"),
    ("missing", "driving video not found"),
])
def test_bad_driving_video_is_one_line_exit_2_nothing_written(clips, tiny_models_dir, tmp_path, name, needle):
    video = clips.get(name, tmp_path / "missing.mp4")
    out, kps = tmp_path / "out" / "o.mp4", tmp_path / "out" / "k.npz"
    out.parent.mkdir()
    limit = ["--max-seconds", "1"] if name == "talk" else []
    result = run("reenact", PHOTO, video, "-o", out, "--save-keypoints", kps, "--frame", "crop", *limit,
                 *cli_common(tiny_models_dir))
    assert_clean_error(result, needle)
    assert list(out.parent.iterdir()) == []


def test_bad_driving_video_fails_before_the_renderer_loads(clips, tmp_path):
    """Inputs are checked first: a driving video without a face never loads (or downloads) a model."""
    loads = []
    register_renderer(RendererEntry(name="counting", summary="test", num_kp=10, store_names=(),
                                    load=lambda d, dev, o: loads.append(1), frame_size=lambda d: 64))
    try:
        pipe = load_reenact_pipeline(ReenactOptions(frame="crop", landmarker="dlib", device="cpu",
                                                    renderer="counting", models_dir=tmp_path / "models"))
        with pytest.raises(NoFaceError, match="no face found in driving video"):
            reenact(pipe, PHOTO, clips["noface"], tmp_path / "o.mp4")
    finally:
        _RENDERERS.pop("counting", None)
    assert loads == [] and not (tmp_path / "o.mp4").exists()


def test_api_errors_are_typed(clips, tiny_fomm, tmp_path):
    pipe = load_reenact_pipeline(ReenactOptions(frame="crop", landmarker="dlib", device="cpu", max_seconds=0.5),
                                 renderer=tiny_fomm)
    with pytest.raises(InputError, match="max-seconds"):
        reenact(pipe, PHOTO, clips["talk"], tmp_path / "a.mp4")
    pipe = load_reenact_pipeline(ReenactOptions(frame="crop", landmarker="dlib", device="cpu"), renderer=tiny_fomm)
    with pytest.raises(NoFaceError):
        reenact(pipe, PHOTO, clips["noface"], tmp_path / "b.mp4")
    with pytest.raises(InputError, match="renderer"):
        load_reenact_pipeline(ReenactOptions(renderer="nope"))
    with pytest.raises(InputError, match="--frame"):
        ReenactOptions(frame="square")
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------ streaming
class ShiftRenderer(SourceImageRenderer):
    """Fast stand-in renderer (64 x 64): keypoints = the frame's mean colour; renders the source."""

    frame_size = 64

    def detect(self, x):
        b = x.shape[0]
        value = x.mean((2, 3))[:, :2, None].permute(0, 2, 1).expand(b, 10, 2) + torch.linspace(-0.5, 0.5, 10)[:, None]
        return Keypoints(value.contiguous(), torch.eye(2).expand(b, 10, 2, 2).contiguous())


def test_memory_does_not_grow_with_the_driving_video(tmp_path):
    """Peak Python/numpy memory (tracemalloc) of a 6 s clip is that of a 1 s clip: frames are decoded,
    rendered and encoded as a stream (180 frames held would be 8.8 MB of float32 crops)."""
    import tracemalloc

    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)
    peaks = {}
    pipe = load_reenact_pipeline(ReenactOptions(frame="crop", crop="none", device="cpu", batch_size=4,
                                                adapt_scale=False), renderer=ShiftRenderer())
    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), base)
    clips = {s: write_video(tmp_path / f"c{s}.mp4", [np.roll(base, k, 1) for k in range(30 * s)], 30) for s in (1, 6)}
    reenact(pipe, photo, clips[1], tmp_path / "warm-up.mp4")  # first-call caches (imports, ffmpeg probe)
    for seconds, clip in clips.items():
        tracemalloc.start()
        result = reenact(pipe, photo, clip, tmp_path / f"o{seconds}.mp4")
        peaks[seconds] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert result.num_frames == 30 * seconds and result.kp_driving is None
    assert peaks[6] < peaks[1] + 500_000, peaks  # measured: 0.57 MB both (6 s and 12 s alike)


@pytest.mark.parametrize("frame", ["full", "crop"])
def test_writer_thread_writes_the_same_frames(clips, tiny_fomm, tmp_path, frame):
    """reenact's paste-back + encoding in the writer thread (the CUDA default) gives the same MP4 frames."""
    from talkhead.ffmpeg import read_frames

    decoded = {}
    for threaded in (False, True):
        pipe = load_reenact_pipeline(ReenactOptions(frame=frame, landmarker="dlib", device="cpu", batch_size=3,
                                                    writer_thread=threaded), renderer=tiny_fomm)
        assert pipe.writer_thread is threaded
        out = reenact(pipe, PHOTO, clips["silent"], tmp_path / f"{frame}-{threaded}.mp4").output
        decoded[threaded] = np.stack(list(read_frames(out, "null")[1]))
    assert len(decoded[True]) > 3 and np.array_equal(decoded[True], decoded[False])
