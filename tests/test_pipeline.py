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
from talkhead.face import Face
from talkhead.keypoints import Keypoints
from talkhead.options import AnimateOptions
from talkhead.pipeline import Pipeline
from talkhead.renderers import RendererEntry, get_renderer, register_renderer, renderer_names, _RENDERERS
from talkhead.video import probe

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).parent.parent
ASTRONAUT = ROOT / "examples" / "astronaut.png"
SPEECH = DATA / "audio" / "speech_16k.wav"


class ToyRenderer:
    """A renderer with FOMM's interface and known behaviour: keypoint 0's x shifts the frame's colour.

    ``detect`` returns fixed keypoints; ``render`` returns the source with its red channel offset by
    ``kp_driving.value[:, 0, 0]`` (so each frame encodes the keypoints that drove it).
    """

    frame_size = 32
    num_kp = 10

    def __init__(self):
        self.device = torch.device("cpu")
        self.calls = []

    def detect(self, source):
        b = source.shape[0]
        return Keypoints(torch.zeros(b, 10, 2), torch.eye(2).expand(b, 10, 2, 2).clone())

    def render(self, source, kp_source, kp_driving):
        self.calls.append(len(kp_driving))
        frames = source.expand(len(kp_driving), -1, -1, -1).clone()
        frames[:, 0] = (frames[:, 0] * 0 + 0.5 + kp_driving.value[:, 0, 0, None, None]).clamp(0, 1)
        return frames


def toy_motion(kp_source, logfbank, progress=None):
    """T = M // 4 frames; keypoint 0's x ramps from -0.4 to 0.4 (visible through ToyRenderer)."""
    t = max(2, logfbank.shape[0] // 4)
    value = kp_source.value.repeat(t, 1, 1)
    value[:, 0, 0] = torch.linspace(-0.4, 0.4, t)
    if progress:
        progress(t, t)
    return Keypoints(value, kp_source.jacobian.repeat(t, 1, 1, 1))


def astronaut_face(image):
    """The astronaut's face box, as a landmarker would report it (no model needed)."""
    return [Face(box=(175.0, 40.0, 290.0, 190.0), score=0.99, landmarks=np.zeros((0, 2), np.float32),
                 backend="fan")]


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
    pipe = Pipeline(AnimateOptions(batch_size=7), renderer=renderer, motion=toy_motion, landmarker=astronaut_face)
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
    out = CliRunner().invoke(app, [command, "--help"], terminal_width=200).output
    for f in dataclasses.fields(AnimateOptions):
        flag = (f.metadata.get("flags") or ("--" + f.name.replace("_", "-"),))[0].split("/")[0]
        if f.metadata.get("cli", True):
            assert flag in out, (command, flag)
        else:
            assert flag not in out


def test_cli_option_values_reach_the_pipeline(monkeypatch, tmp_path):
    seen = {}

    def fake_pipeline(options, log=None):
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


# ------------------------------------------------------------------------------------------- non-finite values
class _NaNDetect(ToyRenderer):
    def detect(self, source):
        kp = super().detect(source)
        kp.value[0, 3, 1] = float("nan")
        return kp


class _InfRender(ToyRenderer):
    def render(self, source, kp_source, kp_driving):
        frames = super().render(source, kp_source, kp_driving)
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
