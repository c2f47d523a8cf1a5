"""The GPU path, tested on CPU where it can be (issue 8 item 4): ``--precision``, the on-device uint8
conversion and the writer thread (paste-back + encoding overlapped with rendering).

What needs a CUDA device is marked ``skipif(not torch.cuda.is_available())``; everything else runs
here: the precision arithmetic itself runs on CPU through the same autocast code path."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from talkhead import devices
from talkhead.cli import app
from talkhead.errors import FFmpegError, InputError
from talkhead.fomm import load_fomm
from talkhead.options import AnimateOptions, ReenactOptions
from talkhead.pipeline import Pipeline, held_batches, host_frames, speech_keypoints
from talkhead.video import VideoWriter, WriterThread, to_uint8_frames

from helpers import (ASTRONAUT, SPEECH, ListWriter, ToyRenderer, assert_clean_error, assert_terminated_cleanly,
                     astronaut_face, decode_frames, names, probe, psnr, render_inputs, speech_excerpt, subprocess_env,
                     toy_motion, wait_for)

ROOT = Path(__file__).parents[1]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

BF16_MAX_ABS, BF16_MIN_PSNR = 0.03, 45.0
"""bf16 decoder vs fp32 on the tiny FOMM (measured 0.0095 max abs, 55.9 dB PSNR on CPU)."""
FP16_MAX_ABS, FP16_MIN_PSNR = 0.005, 60.0
"""fp16 decoder vs fp32 on the tiny FOMM (measured 0.0011 max abs, 74.1 dB)."""


def _writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "talkhead-writer"]


@pytest.fixture(scope="module")
def tiny_fomm(fomm_tiny_files):
    return load_fomm(*fomm_tiny_files)


@pytest.fixture
def native_bf16(monkeypatch):
    """Pretend this CPU has native bf16 (the check itself is tested separately)."""
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)


# ------------------------------------------------------------------------------------ option + refusals
def test_precision_option_is_checked_with_its_flag():
    assert AnimateOptions().precision == "fp32" and ReenactOptions(precision="bf16").precision == "bf16"
    with pytest.raises(InputError, match=r"^--precision must be one of fp32, fp16, bf16, not 'fp8'$"):
        AnimateOptions(precision="fp8")


def test_cli_precision_reaches_the_pipeline_and_a_bad_one_is_one_line(monkeypatch, tmp_path):
    seen = {}

    def fake_pipeline(options, log=None, single_use=False):
        seen["options"] = options
        raise InputError("stop here")

    monkeypatch.setattr("talkhead.pipeline.Pipeline", fake_pipeline)
    ok = CliRunner().invoke(app, ["animate", str(ASTRONAUT), str(SPEECH), "-o", str(tmp_path / "o.mp4"),
                                  "--precision", "bf16"])
    assert ok.exit_code == 2 and seen["options"].precision == "bf16"
    bad = CliRunner().invoke(app, ["animate", str(ASTRONAUT), str(SPEECH), "--precision", "half"])
    assert_clean_error(bad, "must be one of", "--precision must be one of fp32, fp16, bf16", "'half'")
    assert "--writer-thread" not in CliRunner().invoke(app, ["animate", "--help"]).output  # API only


def test_check_precision_refusals_are_one_line(monkeypatch):
    for p in ("fp32", "fp16", "bf16"):
        devices.check_precision(p, "cuda")  # the device type is enough: no GPU needed to decide
    devices.check_precision("fp32", "cpu")
    devices.check_precision("fp32", "mps")
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(InputError, match=r"^--precision bf16 needs a CUDA device or a CPU with native bf16") as e:
        devices.check_precision("bf16", "cpu")
    assert "use --precision fp32" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(InputError, match=r"^--precision fp16 needs a CUDA device .*use --precision fp32$"):
        devices.check_precision("fp16", "cpu")
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: True)
    devices.check_precision("bf16", "cpu")
    with pytest.raises(InputError, match=r"use --precision bf16 \(this CPU has native bf16\) or fp32$"):
        devices.check_precision("fp16", "cpu")
    for p in ("fp16", "bf16"):
        with pytest.raises(InputError, match=f"--precision {p} needs a CUDA device .*untested on mps"):
            devices.check_precision(p, "mps")
    with pytest.raises(InputError, match="--precision must be one of"):
        devices.check_precision("int8", "cuda")


BF16_CLIP_MIN_PSNR = 33.0
"""bf16 vs fp32 ``animate`` of 1 s of speech with the tiny models, decoded H.264 crops, dB (measured 39.5 dB
on an AVX512-BF16 CPU; the decoder alone: 55.9 dB, see BF16_MIN_PSNR)."""


def test_bf16_on_this_cpu_is_refused_in_one_line_or_stays_near_fp32(tiny_models_dir, tmp_path):
    """Whatever CPU runs this (nothing patched): ``animate --device cpu --precision bf16`` either refuses
    in one line and writes nothing, or writes the clip the fp32 run writes within a stated tolerance
    (and not bit-identical to it: the decoder really ran in bf16)."""
    speech = speech_excerpt(tmp_path / "speech.wav", 1.0)
    frames = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / f"{precision}.mp4"
        result = CliRunner().invoke(app, ["animate", str(ASTRONAUT), str(speech), "-o", str(out), "--frame", "crop",
                                          "--device", "cpu", "--precision", precision, "--batch-size", "5",
                                          "--models-dir", str(tiny_models_dir), "--offline", "--landmarker", "dlib",
                                          "--quiet"])
        if precision == "bf16" and result.exit_code != 0:  # a CPU without native bf16
            assert_clean_error(result, "needs a CUDA device or a CPU with native bf16", "use --precision fp32")
            assert not out.exists()
            return
        assert result.exit_code == 0, result.output
        frames[precision] = decode_frames(out)[1]
    assert frames["bf16"].shape == frames["fp32"].shape == (25, 64, 64, 3)
    assert not np.array_equal(frames["bf16"], frames["fp32"])
    assert psnr(frames["bf16"], frames["fp32"]) >= BF16_CLIP_MIN_PSNR


def test_pipeline_refuses_before_loading_anything(monkeypatch, tmp_path):
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(InputError, match="--precision fp16 needs a CUDA device"):
        Pipeline(AnimateOptions(device="cpu", precision="fp16", models_dir=tmp_path / "none"))
    result = CliRunner().invoke(app, ["animate", str(ASTRONAUT), str(SPEECH), "-o", str(tmp_path / "o.mp4"),
                                      "--device", "cpu", "--precision", "bf16", "--models-dir", str(tmp_path)])
    assert_clean_error(result, "needs a CUDA device or a CPU with native bf16")
    assert names(tmp_path) == []


def test_renderer_without_precision_refuses_reduced_precision(native_bf16, tmp_path):
    pipe = Pipeline(AnimateOptions(device="cpu", precision="bf16", frame="crop"), renderer=ToyRenderer(),
                    motion=toy_motion, landmarker=astronaut_face)
    with pytest.raises(InputError, match=r"^--precision bf16 is not supported by the fomm renderer; use "
                                         r"--precision fp32$"):
        pipe.animate(ASTRONAUT, SPEECH, tmp_path / "o.mp4")
    assert names(tmp_path) == []
    fp32 = Pipeline(AnimateOptions(device="cpu"), renderer=ToyRenderer(), motion=toy_motion)
    assert isinstance(fp32.renderer, ToyRenderer)  # fp32 needs nothing of a renderer


# ------------------------------------------------------------------------------------ precision: numbers
def test_fomm_precision_setting(tiny_fomm):
    assert tiny_fomm.precision == "fp32"
    with pytest.raises(ValueError, match="precision must be one of fp32, fp16, bf16"):
        tiny_fomm.precision = "float16"


def test_pipeline_sets_the_renderers_precision(native_bf16, fomm_tiny_files):
    fomm = load_fomm(*fomm_tiny_files)
    pipe = Pipeline(AnimateOptions(device="cpu", precision="bf16"), renderer=fomm, motion=toy_motion)
    assert pipe.renderer is fomm and fomm.precision == "bf16"


@pytest.mark.parametrize("precision, max_abs, min_psnr", [("bf16", BF16_MAX_ABS, BF16_MIN_PSNR),
                                                          ("fp16", FP16_MAX_ABS, FP16_MIN_PSNR)])
def test_reduced_precision_stays_near_fp32_and_keeps_keypoints_exact(tiny_fomm, precision, max_abs, min_psnr):
    """The decoder runs in bf16/fp16 (the frames differ), within a stated tolerance of fp32; keypoint
    detection and the float32 parts are untouched (detect is bit-identical; frames come back float32)."""
    fomm = tiny_fomm
    src, kp, kp_d = render_inputs(fomm, 4)
    enc = fomm.encode_source(src, kp)  # float32 whatever the precision: one encoding serves both
    ref = fomm.render(enc, kp_d)
    try:
        fomm.precision = precision
        out = fomm.render(enc, kp_d)
        kp_again = fomm.detect(src)
    finally:
        fomm.precision = "fp32"
    assert out.dtype == torch.float32 and out.shape == ref.shape
    diff = float((out - ref).abs().max())
    assert 0 < diff <= max_abs, diff  # > 0: it really ran in reduced precision
    assert psnr(out, ref) >= min_psnr
    assert kp_again.equal(kp)
    assert torch.equal(fomm.render(enc, kp_d), ref)  # back to fp32: exact again


# ------------------------------------------------------------------------------------ on-device uint8
def test_tensor_uint8_conversion_matches_numpys_bytes():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(3, 17, 19, 3, generator=g) * 1.2 - 0.1  # out of range values are clipped
    x[0, 0, :5, 0] = torch.tensor([0.5 / 255, 1.5 / 255, 2.5 / 255, 254.5 / 255, 1.0])  # rounding ties
    want = to_uint8_frames(x.numpy())
    got = to_uint8_frames(x)
    assert got.dtype == np.uint8 and got.flags["C_CONTIGUOUS"] and np.array_equal(got, want)
    assert np.array_equal(to_uint8_frames(x.permute(0, 3, 1, 2).contiguous().permute(0, 2, 3, 1)), want)
    assert np.array_equal(to_uint8_frames(x.double()), to_uint8_frames(x.double().numpy()))
    half = x.half()
    assert np.array_equal(to_uint8_frames(half), to_uint8_frames(half.numpy()))
    x[1, 2, 3, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN or infinite"):
        to_uint8_frames(x)


def test_host_frames_owns_its_memory_when_asked():
    frames = torch.rand(2, 3, 8, 8) + 0.5
    view = host_frames(frames, uint8=False)
    owned = host_frames(frames, uint8=False, own=True)
    assert view.shape == owned.shape == (2, 8, 8, 3) and np.array_equal(view, owned)
    frames.zero_()  # the renderer reusing its output tensor
    assert owned.min() >= 0.5  # the owned copy kept the values
    assert not view.any()  # the view followed the tensor (why the threaded path copies)
    assert host_frames(torch.full((1, 3, 4, 4), 0.5), uint8=True).tolist() == \
        np.full((1, 4, 4, 3), 128, np.uint8).tolist()


# ------------------------------------------------------------------------------------ WriterThread
@pytest.mark.parametrize("threaded", [True, False])
def test_writer_thread_writes_everything_in_order(threaded):
    got, where = [], set()

    def prepare(item):
        where.add(threading.current_thread().name)
        return item * 2

    with WriterThread(got.append, prepare, depth=2, threaded=threaded) as out:
        for i in range(20):
            out.put(i)
    assert got == [2 * i for i in range(20)]
    assert where == ({"talkhead-writer"} if threaded else {threading.main_thread().name})
    assert _writer_threads() == []


def test_writer_thread_queue_is_bounded():
    release = threading.Event()
    written = []

    def slow(item):
        release.wait(10)
        written.append(item)

    out = WriterThread(slow, depth=2).__enter__()
    returned = []
    blocked = threading.Thread(target=lambda: [returned.append(out.put(i)) for i in range(4)])
    blocked.start()
    # one item in hand + 2 queued: three puts return, the 4th waits (memory stays flat)
    wait_for(lambda: len(returned) >= 3, what="three puts returning")
    blocked.join(0.2)
    assert blocked.is_alive() and len(returned) == 3 and written == []
    release.set()
    blocked.join(60)  # guards against a hang only
    out.__exit__(None, None, None)
    assert written == [0, 1, 2, 3] and len(returned) == 4


@pytest.mark.parametrize("threaded", [True, False])
def test_writer_thread_error_is_raised_in_the_caller_as_the_same_object(threaded):
    boom = FFmpegError("No space left on device: stopped after 3 frames")
    written = []

    def write(item):
        if item == 3:
            raise boom
        written.append(item)

    with pytest.raises(FFmpegError) as info:
        with WriterThread(write, threaded=threaded) as out:
            for i in range(1000):
                out.put(i)
    assert info.value is boom
    assert written == [0, 1, 2]  # nothing after the failing item
    assert _writer_threads() == []


def test_writer_thread_error_found_at_the_end_is_raised_by_the_exit():
    def write(item):
        raise ValueError("bad frame shape")

    with pytest.raises(ValueError, match="bad frame shape"):
        with WriterThread(write) as out:
            out.put(1)  # the thread fails after this put returned; the exit raises it


def test_interrupt_in_the_render_loop_stops_the_thread(tmp_path):
    out_path = tmp_path / "out.mp4"
    frames = np.zeros((1, 32, 32, 3), np.uint8)
    with pytest.raises(KeyboardInterrupt):
        with VideoWriter(out_path, size=(32, 32), preset="ultrafast") as w, WriterThread(w.write) as out:
            for _ in range(5):
                out.put(frames)
            proc = w._proc
            raise KeyboardInterrupt
    assert proc.poll() is not None and names(tmp_path) == [] and _writer_threads() == []


# ------------------------------------------------------------------------------------ the pipeline path
def _tiny_pipeline(tiny_models_dir, **options) -> Pipeline:
    opts = AnimateOptions(models_dir=tiny_models_dir, offline=True, device="cpu", **options)
    return Pipeline(opts, landmarker=astronaut_face)


@pytest.mark.parametrize("frame", ["full", "crop"])
def test_writer_thread_gives_the_frames_of_the_synchronous_path(tiny_models_dir, frame):
    """Frames handed to the writer (pasted full frames, or uint8 crops) are identical either way."""
    from talkhead.audio import load_speech, logfbank
    from talkhead.compose import Compositor
    from talkhead.image import load_image

    written = {}
    for threaded in (False, True):
        pipe = _tiny_pipeline(tiny_models_dir, frame=frame, batch_size=3, writer_thread=threaded)
        assert pipe.writer_thread is threaded
        image = pipe.photo(load_image(ASTRONAUT))
        crop = pipe.face_crop(image)
        source = pipe.source_tensor(crop.crop)
        speech = load_speech(SPEECH)
        kp_source = pipe.detect_source(source)
        kp_driving = speech_keypoints(pipe, kp_source, logfbank(speech.samples, speech.sample_rate))
        comp = Compositor(image, crop) if frame == "full" else None
        sink = ListWriter()
        pipe.render_into(sink, source, kp_source, held_batches(kp_driving, 20, pipe.batch_size), 20, compositor=comp)
        written[threaded] = np.stack(sink.frames)
    assert written[True].dtype == np.uint8 and len(written[True]) == 20
    assert np.array_equal(written[True], written[False])


def test_threaded_animate_writes_the_same_mp4_frames(tiny_models_dir, tmp_path):
    speech = speech_excerpt(tmp_path / "speech_1s.wav", 1.0)
    decoded = {}
    for threaded in (False, True):
        out = tmp_path / f"{threaded}.mp4"
        _tiny_pipeline(tiny_models_dir, writer_thread=threaded, batch_size=2).animate(ASTRONAUT, speech, out)
        decoded[threaded] = decode_frames(out)[1]
    assert len(decoded[True]) == 25
    assert np.array_equal(decoded[True], decoded[False])


def test_paste_error_in_the_thread_surfaces_and_leaves_nothing(tiny_models_dir, tmp_path, monkeypatch):
    from talkhead.compose import Compositor

    calls = {"n": 0}
    real = Compositor.paste

    def failing(self, frames, out=None):
        calls["n"] += 1
        if calls["n"] == 3:
            raise ValueError("rendered frames must be (b, 256, 256, 3), got (1, 2, 3)")
        return real(self, frames, out=out)

    monkeypatch.setattr(Compositor, "paste", failing)
    pipe = _tiny_pipeline(tiny_models_dir, writer_thread=True, batch_size=2)
    with pytest.raises(ValueError, match=r"rendered frames must be"):
        pipe.animate(ASTRONAUT, SPEECH, tmp_path / "o.mp4")
    assert names(tmp_path) == [] and _writer_threads() == []


def test_full_disk_in_the_thread_is_one_line_at_the_cli(tiny_models_dir, tmp_path, monkeypatch):
    import talkhead.video as video

    monkeypatch.setattr(devices, "default_writer_thread", lambda device: True)
    calls = {"n": 0}
    real = video._free_bytes

    def free(folder):
        calls["n"] += 1
        return 0 if calls["n"] > 4 else real(folder)  # fills up after a few batches, in the thread

    monkeypatch.setattr(video, "_free_bytes", free)
    out = tmp_path / "o.mp4"
    result = CliRunner().invoke(app, ["animate", str(ASTRONAUT), str(SPEECH), "-o", str(out), "--models-dir",
                                      str(tiny_models_dir), "--offline", "--device", "cpu", "--quiet",
                                      "--batch-size", "2"])
    assert_clean_error(result, "No space left on device")
    assert names(tmp_path) == [] and _writer_threads() == []


def _partial_bytes(folder: Path) -> int:
    """Size of the hidden partial output in ``folder`` (0 while there is none)."""
    sizes = []
    for name in os.listdir(folder):
        if ".partial" in name:
            try:
                sizes.append((folder / name).stat().st_size)
            except FileNotFoundError:
                pass
    return max(sizes, default=0)


_THREADED_CLI = ("import sys, talkhead.devices as d; d.default_writer_thread = lambda device: True; "
                 "from talkhead.cli import main; sys.argv[0] = 'talkhead'; main()")


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_with_the_writer_thread_leaves_nothing_and_exits_143(tiny_models_dir, tmp_path):
    speech = speech_excerpt(tmp_path / "speech_8s.wav", 8.0)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    cmd = [sys.executable, "-c", _THREADED_CLI, "animate", str(ASTRONAUT), str(speech), "-o",
           str(out_dir / "clip.mp4"), "--batch-size", "1", "--models-dir", str(tiny_models_dir), "--landmarker",
           "dlib", "--offline", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=subprocess_env())
    try:
        # into the render loop: ffmpeg writes the MP4 header only once its encoder has the first frame,
        # which the writer thread handed it (the rest of the 200 frames follow)
        wait_for(lambda: _partial_bytes(out_dir) > 0, proc=proc, what="the MP4 header in the partial output")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert_terminated_cleanly(proc.returncode, err, out_dir)


def test_writer_thread_defaults_by_device():
    assert devices.default_writer_thread("cuda") and devices.default_writer_thread("mps")
    assert not devices.default_writer_thread("cpu")
    assert Pipeline(AnimateOptions(device="cpu"), renderer=ToyRenderer(), motion=toy_motion).writer_thread is False


# ------------------------------------------------------------------------------------ CUDA only
@cuda
@pytest.mark.parametrize("precision, max_abs, min_psnr", [
    ("fp32", FP16_MAX_ABS, FP16_MIN_PSNR),  # cuDNN may run fp32 convs in TF32 (fp16's 10-bit mantissa)
    ("bf16", BF16_MAX_ABS, BF16_MIN_PSNR), ("fp16", FP16_MAX_ABS, FP16_MIN_PSNR)])
def test_cuda_render_matches_cpu_fp32(fomm_tiny_files, precision, max_abs, min_psnr):
    cpu = load_fomm(*fomm_tiny_files)
    gpu = load_fomm(*fomm_tiny_files, device="cuda")
    gpu.precision = precision
    src, kp, kp_d = render_inputs(cpu, 8)
    ref = cpu.render(cpu.encode_source(src, kp), kp_d)
    out = gpu.render(gpu.encode_source(src, kp), kp_d)
    assert out.device.type == "cuda" and out.dtype == torch.float32
    out = out.cpu()
    assert float((out - ref).abs().max()) <= max_abs and psnr(out, ref) >= min_psnr


@cuda
def test_cuda_animate_defaults_batch_8_and_the_writer_thread(tiny_models_dir, tmp_path):
    pipe = Pipeline(AnimateOptions(models_dir=tiny_models_dir, offline=True, device="cuda", precision="fp16"),
                    landmarker=astronaut_face)
    assert pipe.batch_size == 8 and pipe.writer_thread
    result = pipe.animate(ASTRONAUT, SPEECH, tmp_path / "o.mp4")
    assert result.num_frames == 120 and pipe.renderer.precision == "fp16"
    info = probe(tmp_path / "o.mp4")
    assert info.num_frames == 120 and info.audio_duration_s == pytest.approx(4.8, abs=0.04)
