"""The pipeline's seams: injected components (renderer, motion generator, landmarker), the renderer
registry, the Keypoints type, and CLI options generated once from AnimateOptions."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from talkhead.cli import app
from talkhead.errors import InputError
from talkhead.landmarks import Face
from talkhead.keypoints import Keypoints
from talkhead.options import AnimateOptions
from talkhead.pipeline import Pipeline, held_batches, speech_keypoints
from talkhead.renderers import RendererEntry, get_renderer, register_renderer, renderer_names, _RENDERERS
from helpers import ASTRONAUT, SPEECH, ListWriter, ToyRenderer, astronaut_face, probe, psnr, toy_motion


def test_keypoints_pack_unpack_index_and_checks():
    value = torch.randn(4, 10, 2)
    jac = torch.randn(4, 10, 2, 2)
    kp = Keypoints(value, jac)
    packed = kp.pack()
    assert packed.shape == (4, 10, 6)
    assert torch.equal(packed[..., 2], jac[..., 0, 0]) and torch.equal(packed[..., 3], jac[..., 0, 1])
    assert torch.equal(packed[..., 4], jac[..., 1, 0])
    back = Keypoints.unpack(packed.numpy())
    assert back.equal(kp)
    assert len(kp[1]) == 1 and torch.equal(kp[1].value, value[1:2])
    assert torch.equal(kp[-1].value, value[3:])
    assert torch.equal(kp[torch.tensor([0, 0, 3])].jacobian, jac[[0, 0, 3]])
    assert Keypoints.cat([kp[:2], kp[2:]]).equal(kp)
    assert not kp.equal(Keypoints(value))
    with pytest.raises(ValueError, match=r"\(B, K, 2\)"):
        Keypoints(torch.zeros(10, 2))
    with pytest.raises(ValueError, match="jacobians"):
        Keypoints(value, jac[:3])
    with pytest.raises(ValueError, match="6"):
        Keypoints.unpack(torch.zeros(1, 10, 5))
    with pytest.raises(ValueError, match="without jacobians"):
        Keypoints(value).pack()


def test_injected_components_drive_the_whole_animate(tmp_path):
    renderer = ToyRenderer()
    pipe = Pipeline(AnimateOptions(batch_size=7, frame="crop"), renderer=renderer, motion=toy_motion,
                    landmarker=astronaut_face)
    assert pipe.models_dir is None  # nothing was loaded from a models directory
    out = tmp_path / "toy.mp4"
    stages = []
    result = pipe.animate(ASTRONAUT, SPEECH, out, save_keypoints=tmp_path / "kp.npz",
                          progress=lambda stage, done, total: stages.append((stage, done, total)))
    info = probe(out)
    assert (info.width, info.height) == (32, 32)
    assert info.num_frames == result.num_frames == 120  # 4.8 s at 25 fps
    assert abs(info.duration_s - 4.8) < 0.05 and info.has_audio
    # batches of 7 cover the 120 frames; the generator's T frames are followed by its last pose held
    assert sum(renderer.calls) == 120 and max(renderer.calls) == 7
    assert renderer.encodings == 1  # the source was encoded once for all 18 batches
    assert stages[-1] == ("render", 120, 120) and ("keypoints", len(result.kp_driving), len(result.kp_driving)) in stages
    with np.load(tmp_path / "kp.npz") as z:
        np.testing.assert_array_equal(z["kp_driving_value"], result.kp_driving.value.numpy())
        assert z["crop_box"].tolist() == list(result.crop_box)
    # the crop follows the landmarker's box: square, around the face
    x0, y0, x1, y1 = result.crop_box
    assert x1 - x0 == y1 - y0 and x0 <= 175 and x1 >= 290


def test_renderer_registry_takes_a_second_renderer(tmp_path):
    assert "fomm" in renderer_names()
    entry = register_renderer(RendererEntry(name="toy", summary="test renderer", num_kp=10, store_names=(),
                                            load=lambda models_dir, device, options: ToyRenderer()))
    try:
        assert get_renderer("toy") is entry
        built = get_renderer("toy").load(tmp_path, torch.device("cpu"), AnimateOptions())
        assert isinstance(built, ToyRenderer) and built.frame_size == 32
    finally:
        _RENDERERS.pop("toy")
    with pytest.raises(InputError, match="--renderer must be one of fomm"):
        get_renderer("toy")


def test_options_are_validated_with_the_flag_name():
    with pytest.raises(InputError, match="--device must be one of auto, cpu, cuda, mps, not 'tpu'"):
        AnimateOptions(device="tpu")
    with pytest.raises(InputError, match="--batch-size must be at least 1"):
        AnimateOptions(batch_size=0)
    assert AnimateOptions(models_dir="x").models_dir == Path("x")


@pytest.mark.parametrize("command", ["animate", "batch"])
def test_cli_declares_every_animate_option_once(command):
    """Each AnimateOptions field meant for the CLI is a flag of animate and batch, with its help."""
    out = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"}, prog_name="talkhead").output
    for f in dataclasses.fields(AnimateOptions):
        flag = (f.metadata.get("flags") or ("--" + f.name.replace("_", "-"),))[0].split("/")[0]
        if f.metadata.get("cli", True):
            assert flag in out, (command, flag)
        else:
            assert flag not in out


def test_cli_option_values_reach_the_pipeline(monkeypatch, tmp_path):
    seen = {}

    def fake_pipeline(options, log=None, single_use=False):
        seen["options"] = options
        raise InputError("stop here")

    monkeypatch.setattr("talkhead.pipeline.Pipeline", fake_pipeline)
    result = CliRunner().invoke(app, ["animate", str(ASTRONAUT), str(SPEECH), "-o", str(tmp_path / "o.mp4"),
                                      "--device", "cpu", "--batch-size", "3", "--landmarker", "dlib",
                                      "--no-align-corners", "--face-index", "1"])
    assert result.exit_code == 2 and "stop here" in result.output
    opts = seen["options"]
    assert (opts.device, opts.batch_size, opts.landmarker, opts.align_corners, opts.face_index) == \
        ("cpu", 3, "dlib", False, 1)
    bad = CliRunner().invoke(app, ["animate", str(ASTRONAUT), str(SPEECH), "--device", "tpu"])
    assert bad.exit_code == 2 and "--device must be one of" in bad.output and "Traceback" not in bad.output


# --- full-frame output, head-motion control (issue 7) -----------------------------------------------------
class IdentityRenderer(ToyRenderer):
    """Renders the source crop unchanged, whatever the keypoints (at vox-adv-256's frame size)."""

    frame_size = 256

    def frames(self, source, kp_source, kp_driving):
        return source.expand(len(kp_driving), -1, -1, -1).clone()


CUTS = {  # photo = astronaut[rows, cols]; the face box (175, 40, 290, 190) moved with it
    "inside": (slice(None), slice(None)), "left-edge": (slice(None), slice(175, None)),
    "top-edge": (slice(40, None), slice(None)), "right-edge": (slice(None), slice(None, 290)),
    "bottom-edge": (slice(None, 190), slice(None)),
}


@pytest.mark.parametrize("cut", list(CUTS))
def test_full_frame_identity_renderer_gives_back_the_photo(tmp_path, cut):
    """Through the pipeline (prepare -> crop -> render -> paste), a renderer that changes nothing gives the
    photo back, also for a face cut by each image border (the crop is padded by mirroring)."""
    from PIL import Image
    from skimage.data import astronaut

    rows, cols = CUTS[cut]
    photo = np.ascontiguousarray(astronaut()[rows, cols])
    path = tmp_path / "photo.png"
    Image.fromarray(photo).save(path)
    x0, y0 = cols.start or 0, rows.start or 0
    box = (175.0 - x0, 40.0 - y0, 290.0 - x0, 190.0 - y0)
    faces = lambda image: [Face(box=box, score=0.99, landmarks=np.zeros((0, 2), np.float32), backend="fan")]
    pipe = Pipeline(AnimateOptions(), renderer=IdentityRenderer(), motion=toy_motion, landmarker=faces)
    inputs = pipe.prepare_photo(path)
    h, w = photo.shape[:2]
    assert inputs.image.shape == (h + h % 2, w + w % 2, 3)
    bx0, by0, bx1, by1 = inputs.crop.box
    assert bx1 - bx0 == by1 - by0  # square, centred on the face even where it leaves the photo
    assert abs((bx0 + bx1) / 2 - (box[0] + box[2]) / 2) <= 1 and abs((by0 + by1) / 2 - (box[1] + box[3]) / 2) <= 1
    source = pipe.source_tensor(inputs.crop.crop)
    kp_source = pipe.detect_source(source)
    kp_driving = speech_keypoints(pipe, kp_source, np.zeros((120, 26)))
    writer = ListWriter()
    pipe.render_into(writer, source, kp_source, held_batches(kp_driving, 3, 1), 3, compositor=pipe.compositor(inputs))
    assert len(writer.frames) == 3 and writer.frames[0].shape == inputs.image.shape
    assert psnr(writer.frames[0][:h, :w], photo) >= 40.0


def test_motion_scale_one_leaves_keypoints_untouched_and_zero_stills_the_head(tmp_path):
    def rolling_motion(kp_source, logfbank, progress=None):
        t = 30
        angle = torch.linspace(0, 0.2, t)[:, None]
        rot = torch.stack([torch.cat([angle.cos(), -angle.sin()], -1), torch.cat([angle.sin(), angle.cos()], -1)], -2)
        value = torch.randn(1, 10, 2, generator=torch.Generator().manual_seed(0)) * 0.3
        return Keypoints((value @ rot.transpose(-1, -2)) + torch.linspace(0, 0.1, t)[:, None, None],
                         rot[:, None].expand(t, 10, 2, 2).clone())

    class Source(ToyRenderer):
        def detect(self, source):
            return Keypoints(torch.randn(1, 10, 2, generator=torch.Generator().manual_seed(0)) * 0.3,
                             torch.eye(2).expand(1, 10, 2, 2).clone())

    crop = np.random.default_rng(0).random((32, 32, 3), dtype=np.float32)
    lf = np.zeros((120, 26))
    base = Pipeline(AnimateOptions(frame="crop"), renderer=Source(), motion=rolling_motion)
    src = base.source_tensor(crop)
    generated = speech_keypoints(base, base.detect_source(src), lf)
    assert generated.equal(rolling_motion(None, lf))  # motion_scale 1: bit for bit what the generator made
    still = Pipeline(AnimateOptions(frame="crop", still=True), renderer=Source(), motion=rolling_motion)
    kp_source = still.detect_source(src)
    held = speech_keypoints(still, kp_source, lf)
    assert float((held.value - kp_source.value).abs().max()) < 1e-4  # the whole motion was head motion
    assert float((held.jacobian - kp_source.jacobian).abs().max()) < 1e-4


def test_cli_full_frame_video_has_the_photos_size_and_keeps_the_background(tiny_models_dir, tmp_path):
    """End to end with the tiny models on a real photo of odd size: the MP4 has the photo's size (even-rounded)
    and the audio's duration; pixels far from the face are the photo's (after H.264)."""
    from PIL import Image
    from skimage.data import astronaut

    photo = astronaut()[:, :511]  # 511 wide: rounded up to 512 by one mirrored column
    path = tmp_path / "astronaut-511.png"
    Image.fromarray(np.ascontiguousarray(photo)).save(path)
    out = tmp_path / "full.mp4"
    result = CliRunner().invoke(app, ["animate", str(path), str(SPEECH), "-o", str(out), "--models-dir",
                                      str(tiny_models_dir), "--offline", "--landmarker", "dlib", "-q"])
    assert result.exit_code == 0, result.output
    info = probe(out)
    assert (info.width, info.height) == (512, 512) and abs(info.duration_s - 4.8) < 0.05 and info.has_audio
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(out))
    meta = next(reader)
    assert tuple(meta["size"]) == (512, 512)
    frame = np.frombuffer(next(reader), np.uint8).reshape(512, 512, 3)
    reader.close()
    far = np.zeros(photo.shape[:2], bool)
    far[300:, :] = True  # below the face box (rows ~40-190): body and background
    diff = np.abs(frame[:, :511].astype(float) - photo.astype(float))[far].mean() / 255
    assert diff < 3 / 255, diff


@pytest.mark.parametrize("args,message", [
    (["--motion-scale", "-1"], "--motion-scale must be a finite number >= 0"),
    (["--motion-scale", "abc"], "--motion-scale must be a number, not 'abc'"),
    (["--max-size", "100"], "--max-size 100 is smaller than the renderer's 256x256 frame"),
    (["--max-size", "big"], "--max-size must be a whole number"),
    (["--frame", "poster"], "--frame must be one of full, crop"),
])
def test_cli_bad_frame_and_motion_options_are_one_line(tmp_path, args, message):
    out = tmp_path / "o.mp4"
    result = CliRunner().invoke(app, ["animate", str(ASTRONAUT), str(SPEECH), "-o", str(out), "--models-dir",
                                      str(tmp_path), "--offline", "--landmarker", "dlib", *args])
    assert result.exit_code == 2 and message in result.output
    assert len(result.output.strip().splitlines()) == 1 and not out.exists()


def test_tiny_photo_is_refused_for_full_frame(tmp_path):
    from PIL import Image

    small = tmp_path / "small.png"
    Image.open(ASTRONAUT).resize((48, 48)).save(small)
    pipe = Pipeline(AnimateOptions(), renderer=IdentityRenderer(), motion=toy_motion, landmarker=astronaut_face)
    with pytest.raises(InputError, match="48x48 pixels, smaller than the 256x256 frame"):
        pipe.prepare_photo(small)


# ------------------------------------------------------------------------------------------- non-finite values
class _NaNDetect(ToyRenderer):
    def detect(self, source):
        kp = super().detect(source)
        kp.value[0, 3, 1] = float("nan")
        return kp


class _InfRender(ToyRenderer):
    def frames(self, source, kp_source, kp_driving):
        frames = super().frames(source, kp_source, kp_driving)
        if sum(self.calls) > 10:  # a later batch goes bad
            frames[0, 1, 2, 3] = float("inf")
        return frames


def _nan_motion(kp_source, logfbank, progress=None):
    kp = toy_motion(kp_source, logfbank, progress)
    kp.jacobian[5, 2, 0, 1] = float("nan")
    return kp


@pytest.mark.parametrize("renderer, motion, stage, what", [
    (_NaNDetect, toy_motion, "keypoints", "source photo"),
    (ToyRenderer, _nan_motion, "keypoints", "generated"),
    (_InfRender, toy_motion, "render", "frames"),
])
def test_non_finite_values_name_the_stage_and_write_nothing(tmp_path, renderer, motion, stage, what):
    from talkhead.errors import NonFiniteError

    pipe = Pipeline(AnimateOptions(batch_size=4), renderer=renderer(), motion=motion, landmarker=astronaut_face)
    out = tmp_path / "out.mp4"
    with pytest.raises(NonFiniteError) as err:
        pipe.animate(ASTRONAUT, SPEECH, out)
    assert err.value.stage == stage and what in str(err.value) and "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_non_finite_is_one_line_exit_2_at_the_cli(tmp_path, monkeypatch):
    import talkhead.pipeline as pipeline_mod

    real_init = Pipeline.__init__

    def init(self, options, **kwargs):
        real_init(self, options, renderer=ToyRenderer(), motion=_nan_motion, landmarker=astronaut_face)

    monkeypatch.setattr(pipeline_mod.Pipeline, "__init__", init)
    result = CliRunner().invoke(app, ["animate", str(ASTRONAUT), str(SPEECH), "-o", str(tmp_path / "o.mp4"),
                                      "--quiet"], catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert "keypoints stage produced NaN" in result.output and "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []


def test_smac_is_registered_for_reenact_and_refused_for_animate(tmp_path):
    from talkhead.errors import CheckpointError

    entry = get_renderer("smac")
    assert entry.num_kp == 15 and not entry.audio_driven and "non-commercial" in entry.licence
    assert entry.frame_size(tmp_path) == 256  # the packaged release config, no weights needed
    with pytest.raises(CheckpointError, match="SMAC weights missing.*models/smac.md"):
        entry.load(tmp_path, torch.device("cpu"), AnimateOptions(renderer="smac"))
    result = CliRunner().invoke(app, ["animate", str(ASTRONAUT), str(SPEECH), "-o", str(tmp_path / "o.mp4"),
                                      "--renderer", "smac", "--models-dir", str(tmp_path)])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert "the released MS-Sync generates the fomm keypoint space (10 keypoints" in result.output
    assert "--renderer smac takes the smac keypoint space (15 keypoints" in result.output
    assert "--motion-model" in result.output
    assert "talkhead reenact --renderer smac" in result.output and not (tmp_path / "o.mp4").exists()


def test_single_use_releases_the_motion_generator_after_the_last_window(tiny_models_dir, tmp_path, monkeypatch):
    """The keypoints stream: the first frames render while MS-Sync is still generating; ``single_use`` (what
    `talkhead animate` runs) drops the MS-Sync model it loaded once the last keypoint window exists, without
    changing the video; the next animate loads it again."""
    import talkhead.mssync as mssync

    loads = []
    real_load = mssync.load_mssync
    monkeypatch.setattr(mssync, "load_mssync", lambda *a, **k: loads.append(1) or real_load(*a, **k))
    opts = AnimateOptions(models_dir=str(tiny_models_dir), device="cpu", offline=True, frame="crop")
    pipe = Pipeline(opts, landmarker=astronaut_face, single_use=True)
    seen_at_render = []  # the motion generator held by the pipeline when each batch renders
    from talkhead.fomm import FOMM

    render = FOMM.render
    monkeypatch.setattr(FOMM, "render", lambda self, *a, **k: seen_at_render.append(pipe._motion) or render(self, *a, **k))
    first = pipe.animate(ASTRONAUT, SPEECH, tmp_path / "a.mp4")
    # 120 frames from 119 keypoint sets: the first renders before the keypoints are done, the held last one after
    assert seen_at_render[0] is not None and seen_at_render[-1] is None and pipe._motion is None and len(loads) == 1
    del seen_at_render[:]
    second = pipe.animate(ASTRONAUT, SPEECH, tmp_path / "b.mp4")  # loads it again
    assert len(loads) == 2 and seen_at_render[0] is not None and seen_at_render[-1] is None
    kept = Pipeline(opts, landmarker=astronaut_face).animate(ASTRONAUT, SPEECH, tmp_path / "c.mp4")
    for result in (second, kept):
        assert torch.equal(result.kp_driving.value, first.kp_driving.value)
    assert (tmp_path / "a.mp4").read_bytes() == (tmp_path / "c.mp4").read_bytes()
    # an injected motion generator is the caller's: never released
    given = Pipeline(opts, motion=toy_motion, landmarker=astronaut_face, single_use=True)
    given.animate(ASTRONAUT, SPEECH, tmp_path / "d.mp4")
    assert given._motion is toy_motion


def test_one_animate_parses_its_renderer_config_once(tiny_models_dir, tmp_path, monkeypatch):
    """The frame size (before any model loads) and the loader read the same FOMM YAML: parsed once,
    and parsed again only when the file changes."""
    import yaml

    import talkhead.io as tio

    parses = []
    real = yaml.safe_load
    monkeypatch.setattr(yaml, "safe_load", lambda text: parses.append(1) or real(text))
    monkeypatch.setattr(tio, "_PARSED_CONFIGS", {})
    opts = AnimateOptions(models_dir=str(tiny_models_dir), device="cpu", offline=True, frame="crop")
    Pipeline(opts, landmarker=astronaut_face).animate(ASTRONAUT, SPEECH, tmp_path / "a.mp4")
    assert len(parses) == 1
    config = tmp_path / "c.yaml"
    config.write_text("a: 1\n")
    first = tio.read_yaml_config(config, "test config")
    first["a"] = 5  # a caller's change does not reach the next reader
    assert tio.read_yaml_config(config, "test config") == {"a": 1} and len(parses) == 2
    config.write_text("a: 22\n")  # another size: parsed anew
    assert tio.read_yaml_config(config, "test config") == {"a": 22} and len(parses) == 3


def test_streamed_animate_keypoints_equal_the_one_pass_generation(tiny_models_dir, tmp_path):
    """animate decodes, computes the logfbank and generates the keypoints window by window while it renders;
    the keypoints equal MS-Sync's one-pass generation from the whole file's logfbank."""
    from talkhead.audio import speech_features

    opts = AnimateOptions(models_dir=str(tiny_models_dir), device="cpu", offline=True, frame="crop")
    pipe = Pipeline(opts, landmarker=astronaut_face)
    result = pipe.animate(ASTRONAUT, SPEECH, tmp_path / "a.mp4")
    one_pass = pipe.motion(result.kp_source, speech_features(SPEECH)[1])   # the whole sequence at once
    assert len(result.kp_driving) == len(one_pass) == 119 and result.num_frames == 120
    assert torch.allclose(result.kp_driving.value, one_pass.value, rtol=0, atol=1e-6)
    assert torch.allclose(result.kp_driving.jacobian, one_pass.jacobian, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------- preview segments
def test_a_preview_sink_gets_every_frame_as_it_renders_and_an_error_aborts_both(tmp_path):
    """``run(preview=...)``: segments are handed over while the render goes on (the first one before the
    last batch renders), they add up to the MP4's frames and the speech; a render error mid-way leaves
    the segments already handed over and no MP4."""
    import functools

    from talkhead.errors import NonFiniteError
    from talkhead.pipeline import SpeechMotion
    from talkhead.video import SegmentWriter

    renderer = ToyRenderer()
    pipe = Pipeline(AnimateOptions(batch_size=5, frame="crop"), renderer=renderer, motion=toy_motion,
                    landmarker=astronaut_face)
    (tmp_path / "segs").mkdir()
    got, rendered_at = [], []

    def on_segment(segment):
        got.append(segment)
        rendered_at.append(sum(renderer.calls))

    result = pipe.run(ASTRONAUT, SpeechMotion(SPEECH), tmp_path / "out.mp4",
                      preview=functools.partial(SegmentWriter, tmp_path / "segs", on_segment, seconds=1.0))
    assert [s.num_frames for s in got] == [25, 25, 25, 25, 20]  # 4.8 s: 120 frames
    assert sum(s.num_frames for s in got) == result.num_frames == probe(tmp_path / "out.mp4").num_frames
    assert rendered_at[0] < 120  # handed over while frames were still to render
    assert sum(s.num_samples for s in got) == 76800 and got[-1].sample_rate == 16000  # all 4.8 s of the speech
    assert probe(got[0].path).audio_codec == "flac"

    (tmp_path / "bad").mkdir()
    got.clear()
    with pytest.raises(NonFiniteError):
        Pipeline(AnimateOptions(batch_size=4, frame="crop"), renderer=_InfRender(), motion=toy_motion,
                 landmarker=astronaut_face).run(
            ASTRONAUT, SpeechMotion(SPEECH), tmp_path / "bad.mp4",
            preview=functools.partial(SegmentWriter, tmp_path / "bad", on_segment, seconds=0.2))
    # a first batch of 2 (Pipeline.piece_frames on CPU: the first frames out sooner), then batches of 4: the
    # fourth goes bad, so frames 0-9 were written: two whole segments of 5
    assert not (tmp_path / "bad.mp4").exists() and [s.num_frames for s in got] == [5, 5]
    assert [p.name for p in sorted((tmp_path / "bad").iterdir())] == ["segment-00000.mp4", "segment-00001.mp4"]


def test_held_batches_first_batch_is_smaller_when_asked():
    kp = Keypoints(torch.arange(7.0)[:, None, None].expand(7, 10, 2).clone())
    sizes = [len(b) for b in held_batches(kp, 20, 8, first=2)]
    assert sizes == [2, 8, 8, 2]
    frames = torch.cat([b.value for b in held_batches(kp, 20, 8, first=2)])[:, 0, 0]
    assert frames.tolist() == [0, 1, 2, 3, 4, 5, 6] + [6] * 13  # the last pose held
    windows = [kp[:3], kp[3:4], kp[4:]]  # streamed windows: regrouped the same way
    assert [len(b) for b in held_batches(iter(windows), 7, 4, first=2)] == [2, 4, 1]
    assert [len(b) for b in held_batches(kp, 7, 4)] == [4, 3]


def test_a_render_pass_is_restored_and_written_in_pieces_on_cpu():
    """A pass of 5 frames on CPU: the restorer and the paste-back / writer take at most Pipeline.piece_frames (2)
    frames at a time, in order, and every frame arrives once."""
    renderer = ToyRenderer()
    pipe = Pipeline(AnimateOptions(batch_size=5, frame="crop", device="cpu"), renderer=renderer, motion=toy_motion,
                    landmarker=astronaut_face)
    assert pipe.piece_frames == 2
    source = torch.rand(1, 3, renderer.frame_size, renderer.frame_size)
    kp_source = renderer.detect(source)
    kp = Keypoints(kp_source.value.expand(5, -1, -1) + torch.linspace(0, 0.1, 5)[:, None, None],
                   kp_source.jacobian.expand(5, -1, -1, -1))
    seen = []

    def restore(frames, kp_driving):
        seen.append(len(frames))
        assert len(kp_driving) == len(frames)
        return torch.nn.functional.interpolate(frames, scale_factor=2)

    encoding = renderer.encode_source(source, kp_source)
    restored = pipe.render_batch(encoding, kp, restore)
    assert seen == [2, 2, 1] and restored.shape[0] == 5
    torch.testing.assert_close(restored, torch.nn.functional.interpolate(renderer.render(encoding, kp), scale_factor=2))
    class Chunks(ListWriter):
        def write(self, frames):
            self.frames.append(np.asarray(frames))

    writer = Chunks()
    assert pipe.render_into(writer, source, kp_source, [kp], 5, encoding=encoding) == 5
    assert [len(f) for f in writer.frames] == [2, 2, 1]  # each piece written on its own, in order
    whole = np.concatenate(writer.frames)
    assert len(whole) == 5 and not np.array_equal(whole[0], whole[4])
