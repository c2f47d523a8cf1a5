"""talkhead.video and talkhead.ffmpeg: streaming frames to ffmpeg (H.264 + AAC MP4), atomic output, commands."""
from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
import soundfile as sf

from helpers import DATA, ProbeError, decode_frames, moov_before_mdat, names, pattern, probe, speech_excerpt
from talkhead.errors import FFmpegError, InputError, OutputError
from talkhead.ffmpeg import ffmpeg_capabilities, ffmpeg_exe, flags
from talkhead.video import VideoWriter, to_uint8_frames


@pytest.fixture(scope="module")
def audio_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("audio")


@pytest.fixture(scope="module")
def speech_2s(audio_dir) -> Path:
    """The first 2.000 s of the test speech (16 kHz mono) as a wav."""
    return speech_excerpt(audio_dir / "speech_2s.wav", 2.0)


def test_capabilities():
    caps = ffmpeg_capabilities()
    assert caps["exe"] == ffmpeg_exe() and Path(caps["exe"]).is_file()
    assert caps["has_libx264"] and caps["has_aac"]
    assert caps["version"] != "unknown"
    assert "libx264" in caps["encoders"] and "definitely-not-an-encoder" not in caps["encoders"]


def test_h264_aac_faststart_50_frames(tmp_path, speech_2s):
    out = tmp_path / "out.mp4"
    frames = [pattern(t) for t in range(50)]
    with VideoWriter(out, size=(64, 64), fps=25, audio_path=speech_2s) as writer:
        for f in frames:
            writer.write(f)
        assert not out.exists()  # only the hidden temp file exists while encoding
    assert writer.num_frames == 50
    info = probe(out)
    assert (info.video_codec, info.pix_fmt, info.width, info.height) == ("h264", "yuv420p", 64, 64)
    assert info.fps == pytest.approx(25.0)
    assert info.num_frames == 50
    assert info.duration_s == pytest.approx(2.0, abs=0.04)
    assert info.video_duration_s == pytest.approx(2.0, abs=1e-9)
    assert info.audio_codec == "aac" and info.audio_sample_rate == 16000 and info.has_audio
    assert info.audio_duration_s == pytest.approx(2.0, abs=0.04)
    assert "mp4" in info.format_name and info.major_brand == "isom"
    assert info.faststart is True and moov_before_mdat(out)
    assert names(tmp_path) == ["out.mp4"]
    # The pixels survive RGB -> BT.709 yuv420p -> RGB (a wrong colour matrix would be off by >10).
    _, dec = decode_frames(out)
    assert dec.shape == (50, 64, 64, 3)
    err = np.abs(dec.astype(np.int16) - np.stack(frames)).mean(axis=(1, 2, 3))
    assert err.max() < 4.0, err
    assert np.abs(dec[10].astype(int) - dec[11]).mean() > 1  # frames really move, in order


def test_batches_floats_and_tensors_are_equivalent(tmp_path):
    import torch

    frames = np.stack([pattern(t) for t in range(12)])
    as_float = frames.astype(np.float32) / 255
    out = tmp_path / "mix.mp4"
    with VideoWriter(out, size=(64, 64), crf=0, preset="ultrafast") as w:
        w.write(frames[:4])  # uint8 batch
        w.write(torch.from_numpy(as_float[4:8]))  # float tensor batch
        for f in as_float[8:]:
            w.write(f.astype(np.float64))  # float64 single frames
    info = probe(out)
    assert info.num_frames == 12 and info.audio_codec is None and info.audio_duration_s is None


def test_to_uint8_matches_skimage_img_as_ubyte():
    from skimage import img_as_ubyte

    rng = np.random.default_rng(0)
    x = rng.random((2, 5, 7, 3), dtype=np.float32)
    x[0, 0, 0] = [0.0, 1.0, 0.5 / 255]
    np.testing.assert_array_equal(to_uint8_frames(x), img_as_ubyte(x))
    np.testing.assert_array_equal(to_uint8_frames(x[0].astype(np.float64)), img_as_ubyte(x[:1].astype(np.float64)))
    assert to_uint8_frames(np.full((1, 1, 3), 1.5))[0, 0, 0, 0] == 255  # clipped (skimage would raise)
    with pytest.raises(ValueError, match="NaN"):
        to_uint8_frames(np.full((2, 2, 3), np.nan))
    with pytest.raises(ValueError, match="RGB"):
        to_uint8_frames(np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="dtype"):
        to_uint8_frames(np.zeros((4, 4, 3), np.int32))


def test_to_uint8_makes_channels_first_renders_contiguous():
    """Renderer output (b, 3, H, W) permuted to (b, H, W, 3) is a strided view; the pipe needs C order."""
    chw = np.random.default_rng(1).random((2, 3, 6, 5), dtype=np.float32)
    out = to_uint8_frames(chw.transpose(0, 2, 3, 1))
    assert out.flags.c_contiguous and out.shape == (2, 6, 5, 3)
    memoryview(out).cast("B")  # what VideoWriter.write does


def test_odd_size_is_edge_padded_to_even(tmp_path, speech_2s):
    out = tmp_path / "odd.mp4"
    frames = [pattern(t, h=65, w=63) for t in range(50)]
    with VideoWriter(out, size=(63, 65), audio_path=speech_2s) as w:
        assert w.encoded_size == (64, 66)
        for f in frames:
            w.write(f)
    info = probe(out)
    assert (info.width, info.height, info.num_frames) == (64, 66, 50)
    assert info.audio_codec == "aac"
    _, dec = decode_frames(out)
    assert np.abs(dec[:, :65, :63].astype(np.int16) - np.stack(frames)).mean() < 4.0
    # the extra column/row repeats the last one (not black)
    assert np.abs(dec[:, :65, 63].astype(int) - dec[:, :65, 62]).mean() < 4.0
    assert dec[:, 65, :63].mean() > 60


def test_duration_matches_audio_within_one_frame(tmp_path, audio_dir):
    x, sr = sf.read(DATA / "audio" / "speech_44k_stereo.wav", dtype="float32")
    n = int(1.23 * sr)
    wav = audio_dir / "stereo_1.23s.wav"
    sf.write(wav, x[:n], sr)
    audio_s = n / sr
    num_frames = round(audio_s * 25)  # the caller's rule
    out = tmp_path / "d.mp4"
    with VideoWriter(out, size=(32, 32), audio_path=wav, preset="ultrafast") as w:
        for t in range(num_frames):
            w.write(pattern(t, 32, 32))
    info = probe(out)
    assert info.audio_sample_rate == sr and info.audio_channels == "stereo"
    assert info.audio_duration_s == pytest.approx(audio_s, abs=0.005)
    assert abs(info.video_duration_s - info.audio_duration_s) <= 1 / 25
    assert abs(info.duration_s - audio_s) <= 1 / 25


@pytest.mark.parametrize("exc", [RuntimeError("render failed"), KeyboardInterrupt()])
def test_interrupted_write_leaves_nothing(tmp_path, speech_2s, exc):
    out = tmp_path / "out.mp4"
    with pytest.raises(type(exc)):
        with VideoWriter(out, size=(64, 64), audio_path=speech_2s) as w:
            for t in range(10):
                w.write(pattern(t))
            proc = w._proc
            raise exc
    assert proc.poll() is not None  # ffmpeg was stopped
    assert names(tmp_path) == []


def test_existing_output_refused_before_ffmpeg_starts(tmp_path, speech_2s, monkeypatch):
    out = tmp_path / "out.mp4"
    out.write_bytes(b"precious")
    started = []
    real_popen = subprocess.Popen
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: started.append(a) or real_popen(*a, **k))
    with pytest.raises(OutputError, match="--overwrite"):
        VideoWriter(out, size=(64, 64), audio_path=speech_2s)
    assert started == [] and out.read_bytes() == b"precious"
    monkeypatch.undo()
    with VideoWriter(out, size=(64, 64), audio_path=speech_2s, overwrite=True) as w:
        for t in range(50):
            w.write(pattern(t))
    assert probe(out).num_frames == 50
    assert names(tmp_path) == ["out.mp4"]


def test_ffmpeg_failure_quotes_stderr_and_leaves_nothing(tmp_path):
    bad_audio = tmp_path / "not audio.wav"
    bad_audio.write_text("this is not a wav file")
    out = tmp_path / "out.mp4"
    with pytest.raises(FFmpegError) as info:
        with VideoWriter(out, size=(64, 64), audio_path=bad_audio) as w:
            for t in range(50):
                w.write(pattern(t))
    msg = str(info.value)
    assert "exit code" in msg and str(out) in msg
    assert "Invalid data" in msg or "not audio.wav" in msg  # ffmpeg's own words
    assert names(tmp_path) == ["not audio.wav"]


def test_bad_arguments(tmp_path, speech_2s):
    with pytest.raises(InputError, match="does not exist"):
        VideoWriter(tmp_path / "o.mp4", size=(64, 64), audio_path=tmp_path / "missing.wav")
    with pytest.raises(ValueError, match="crf"):
        VideoWriter(tmp_path / "o.mp4", size=(64, 64), crf=99)
    with pytest.raises(ValueError, match="expects 64x64"):
        with VideoWriter(tmp_path / "o.mp4", size=(64, 64)) as w:
            w.write(pattern(0, 32, 32))
    with pytest.raises(ValueError, match="no frames"):
        with VideoWriter(tmp_path / "o.mp4", size=(64, 64), audio_path=speech_2s):
            pass
    assert names(tmp_path) == []


@pytest.mark.parametrize("name", ["with space.mp4", "quote'\"s.mp4", "ünïcødé 音声.mp4", "-dash.mp4",
                                  "$(touch pwned).mp4", "a:b.mp4"])
def test_weird_filenames(tmp_path, speech_2s, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    wav = tmp_path / ("-$(touch pwned) 'ä'.wav")
    shutil.copy(speech_2s, wav)
    with VideoWriter(name, size=(32, 32), audio_path=wav.name, preset="ultrafast") as w:
        for t in range(50):
            w.write(pattern(t, 32, 32))
    info = probe(name)
    assert info.num_frames == 50 and info.audio_codec == "aac"
    assert sorted(names(tmp_path)) == sorted([name, wav.name])
    assert not (tmp_path / "pwned").exists()


def _peak_rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_memory_does_not_grow_with_length(tmp_path):
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter (Linux >= 4.0)
    except OSError:
        pytest.skip("cannot reset peak RSS")
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (8, 256, 256, 3), dtype=np.uint8)
    out = tmp_path / "long.mp4"
    with VideoWriter(out, size=(256, 256), preset="ultrafast", crf=30) as w:
        w.write(noise[:1])
        base = _peak_rss_kb()
        for i in range(1, 2000):
            w.write(noise[i % 8])  # 2000 frames = 393 MB of raw RGB in total
    grown_mb = (_peak_rss_kb() - base) / 1024
    assert probe(out).num_frames == 2000
    assert grown_mb < 100, grown_mb


def test_moov_before_mdat_reads_box_headers(tmp_path):
    def box(kind: bytes, payload: bytes = b"") -> bytes:
        return struct.pack(">I4s", 8 + len(payload), kind) + payload

    ftyp = box(b"ftyp", b"isom\0\0\0\0isom")
    (tmp_path / "fast.mp4").write_bytes(ftyp + box(b"moov", b"x" * 9) + box(b"mdat", b"y" * 20))
    (tmp_path / "slow.mp4").write_bytes(ftyp + box(b"free") + box(b"mdat", b"y" * 20) + box(b"moov"))
    large = struct.pack(">I4sQ", 1, b"mdat", 16 + 5) + b"z" * 5  # 64-bit size
    (tmp_path / "large.mp4").write_bytes(ftyp + large + box(b"moov"))
    (tmp_path / "text.mp4").write_text("hello, I am not a video at all")
    assert moov_before_mdat(tmp_path / "fast.mp4") is True
    assert moov_before_mdat(tmp_path / "slow.mp4") is False
    assert moov_before_mdat(tmp_path / "large.mp4") is False
    with pytest.raises(ValueError, match="not an MP4"):
        moov_before_mdat(tmp_path / "text.mp4")


def test_without_faststart_is_detected(tmp_path):
    out = tmp_path / "plain.mp4"
    subprocess.run([ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i",
                    "testsrc=size=32x32:rate=25", "-frames:v", "5", "-c:v", "libx264", "-pix_fmt", "yuv420p",
                    str(out)], check=True)
    info = probe(out)
    assert info.faststart is False and info.num_frames == 5


def test_probe_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        probe(tmp_path / "missing.mp4")
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\0junk" * 50)
    with pytest.raises(ProbeError):
        probe(junk)


def test_probe_audio_only(speech_2s):
    info = probe(speech_2s)
    assert info.video_codec is None and info.num_frames is None
    assert info.audio_codec == "pcm_s16le" and info.audio_sample_rate == 16000
    assert info.audio_duration_s == pytest.approx(2.0, abs=1e-6)
    assert info.faststart is None


def test_flags_builds_options_in_order():
    assert flags({"f": "mp4", "crf": 18, "y": True, "an": False, "vf": None, "map_metadata": -1}) == \
        ["-f", "mp4", "-crf", "18", "-y", "-map_metadata", "-1"]


def test_writer_command_is_the_argument_vector_it_runs(tmp_path):
    """The command ffmpeg-python used to compile for us, built by talkhead.ffmpeg.flags instead."""
    audio = tmp_path / "a.wav"
    audio.write_bytes(b"x")
    argv = VideoWriter(tmp_path / "o.mp4", size=(31, 32), audio_path=audio).command(tmp_path / "t.mp4")
    assert argv[0] == ffmpeg_exe()
    assert argv[1:] == ["-f", "rawvideo", "-framerate", "25", "-pix_fmt", "rgb24", "-s", "32x32", "-i", "pipe:",
                        "-i", f"file:{audio.resolve()}", "-map", "0", "-map", "1:a:0",
                        "-f", "mp4", "-b:a", "128k", "-acodec", "aac", "-crf", "18", "-movflags", "+faststart",
                        "-pix_fmt", "yuv420p", "-preset", "medium", "-vcodec", "libx264",
                        "-vf", "scale=out_color_matrix=bt709:out_range=tv,"
                               "setparams=range=tv:color_primaries=bt709:color_trc=bt709:colorspace=bt709",
                        f"file:{(tmp_path / 't.mp4').resolve()}", "-hide_banner", "-nostats", "-loglevel", "error", "-y"]
    silent = VideoWriter(tmp_path / "o.mkv", size=(32, 32)).command(tmp_path / "t.mkv")
    assert "-map" not in silent and "-movflags" not in silent and silent[silent.index("-i") + 2:][:2] == ["-f", "matroska"]


def test_read_frames_decodes_what_the_writer_wrote(tmp_path):
    from talkhead.ffmpeg import probe as media_probe, read_frames

    out = tmp_path / "v.mp4"
    with VideoWriter(out, size=(32, 32), crf=0) as writer:
        for t in range(10):
            writer.write(pattern(t, 32, 32))
    info = media_probe(out)
    assert info.size == (32, 32) and info.fps == 25 and not info.has_audio
    _, want = decode_frames(out)  # the independent decode
    _, frames = read_frames(out, "null")
    full = np.stack(list(frames))
    assert full.shape == (10, 32, 32, 3) and full.dtype == np.uint8
    assert np.abs(full.astype(int) - want).max() <= 2  # same pixels (up to the yuv->rgb rounding)
    _, frames = read_frames(out, "format=rgb24,scale=16:16:flags=area", size=(16, 16))
    small = np.stack(list(frames))
    assert small.shape == (10, 16, 16, 3) and small.dtype == np.uint8
    area = np.stack([cv2.resize(f, (16, 16), interpolation=cv2.INTER_AREA) for f in want])
    assert np.abs(small.astype(int) - area).max() <= 4  # the frames, in order, area-downscaled


# ------------------------------------------------------------------------------------------- encoder failure
def _noise(t: int, n: int = 4) -> np.ndarray:
    return np.random.default_rng(t).integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)  # incompressible


def test_full_disk_faked_stops_within_a_batch_one_line(tmp_path, monkeypatch):
    import talkhead.video as video

    out = tmp_path / "out.mp4"
    calls = {"n": 0}
    real = video._free_bytes

    def free(folder):
        calls["n"] += 1
        return 0 if calls["n"] > 3 else real(folder)  # the disk fills up after a few batches

    monkeypatch.setattr(video, "_free_bytes", free)
    with pytest.raises(FFmpegError) as info:
        with VideoWriter(out, size=(64, 64)) as w:
            for t in range(100):
                w.write(_noise(t))
    msg = str(info.value)
    assert "No space left on device" in msg and str(out) in msg and "\n" not in msg
    assert w.num_frames <= 12
    assert names(tmp_path) == []


@pytest.fixture
def small_tmpfs(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_full_disk_real_tmpfs_fails_within_a_few_frames(small_tmpfs):
    out = small_tmpfs / "out.mp4"
    with pytest.raises(FFmpegError) as info:
        with VideoWriter(out, size=(64, 64), audio_path=DATA / "audio" / "speech_16k.wav") as w:
            for t in range(250):  # 1000 frames of noise: several MB, the disk holds 256 KiB
                w.write(_noise(t))
    msg = str(info.value)
    assert "No space left on device" in msg and str(out) in msg and "\n" not in msg
    assert w.num_frames < 200
    assert os.listdir(small_tmpfs) == []


# ------------------------------------------------------------------------------------------ segments
def _segment_audio(path: Path, channels: int) -> np.ndarray:
    """A file's audio decoded by ffmpeg to int16 ``(n, channels)`` at its own rate (empty without audio)."""
    out = subprocess.run([ffmpeg_exe(), "-v", "error", "-i", str(path), "-vn", "-f", "s16le", "-acodec", "pcm_s16le",
                          "pipe:"], capture_output=True)
    return np.frombuffer(out.stdout, np.int16).reshape(-1, channels)


def _stereo_noise(path: Path, seconds: float, rate: int = 22050, seed: int = 0) -> np.ndarray:
    pcm = (np.random.RandomState(seed).randn(int(round(seconds * rate)), 2) * 3000).astype(np.int16)
    sf.write(path, pcm, rate, subtype="PCM_16")
    return pcm


def test_segments_join_into_the_whole_video_frames_and_samples(tmp_path):
    """63 frames at 25 fps in batches of 7 (crossing the boundaries), segments of 10 frames, 22.05 kHz
    stereo audio half a frame longer than the video: each segment holds its frames and exactly the samples
    of those frames; played in order they are the whole MP4's frames and the audio file's samples."""
    from talkhead.video import FrameTee, SegmentWriter, segment_sample

    fps, total = 25, 63
    pcm = _stereo_noise(tmp_path / "a.wav", total / fps + 0.02)
    frames = np.random.RandomState(1).randint(0, 256, (total, 48, 64, 3), np.uint8)
    (tmp_path / "segs").mkdir()
    got = []
    with VideoWriter(tmp_path / "whole.mp4", size=(64, 48), fps=fps, audio_path=tmp_path / "a.wav", crf=0) as whole, \
            SegmentWriter(tmp_path / "segs", got.append, size=(64, 48), fps=fps, audio_path=tmp_path / "a.wav",
                          seconds=0.4, crf=0) as segments:
        tee = FrameTee(whole, segments)
        for i in range(0, total, 7):
            tee.write(frames[i:i + 7])
            assert sum(s.num_frames for s in got) == (i + 7) // 10 * 10  # each finished as soon as it is full
    assert [s.num_frames for s in got] == [10] * 6 + [3]
    assert [s.index for s in got] == list(range(7)) and [s.start_frame for s in got] == list(range(0, 61, 10))
    assert sum(s.duration_s for s in got) == pytest.approx(total / fps)
    assert sorted(p.name for p in (tmp_path / "segs").iterdir()) == [f"segment-{i:05d}.mp4" for i in range(7)]

    _, whole_frames = decode_frames(tmp_path / "whole.mp4")
    joined = []
    for s in got:
        info = probe(s.path)
        assert (info.video_codec, info.audio_codec, info.num_frames) == ("h264", "flac", s.num_frames)
        assert info.fps == pytest.approx(fps)
        joined.append(decode_frames(s.path)[1])
    assert np.array_equal(np.concatenate(joined), whole_frames)  # lossless x264: the same frames, in order

    audio = [_segment_audio(s.path, 2) for s in got]
    for s, a in zip(got, audio):
        assert s.sample_rate == 22050 and s.start_sample == segment_sample(s.start_frame, fps, 22050)
        assert len(a) == s.num_samples
    assert [len(a) for a in audio[:-1]] == [8820] * 6  # 882 samples a frame, no priming, no padding
    assert np.array_equal(np.concatenate(audio), pcm)  # every sample once, in order; the tail in the last


def test_segments_without_audio_and_with_audio_shorter_than_the_video(tmp_path):
    from talkhead.video import SegmentWriter

    frames = np.zeros((30, 32, 32, 3), np.uint8)
    got = []
    with SegmentWriter(tmp_path, got.append, size=(32, 32), fps=25, seconds=0.5) as w:  # round(12.5) = 12
        w.write(frames)
    assert [s.num_frames for s in got] == [12, 12, 6] and all(s.num_samples == 0 for s in got)
    assert probe(got[0].path).audio_codec is None

    pcm = _stereo_noise(tmp_path / "short.wav", 0.6, rate=16000)  # 15 frames' worth of sound for 30 frames
    (tmp_path / "b").mkdir()
    got = []
    with SegmentWriter(tmp_path / "b", got.append, size=(32, 32), fps=25, audio_path=tmp_path / "short.wav",
                       seconds=0.4) as w:
        w.write(frames)
    assert [s.num_samples for s in got] == [6400, 3200, 0]
    assert probe(got[2].path).audio_codec is None and probe(got[2].path).num_frames == 10
    assert np.array_equal(np.concatenate([_segment_audio(s.path, 2) for s in got[:2]]), pcm)


def test_segment_writer_stops_cleanly_and_checks_its_arguments(tmp_path):
    """An error inside the block: the segments handed over stay, the one in hand is never created and no
    audio slice is left; bad arguments are refused before anything starts."""
    from talkhead.video import SegmentWriter

    speech = speech_excerpt(tmp_path / "s.wav", 2.0)
    (tmp_path / "segs").mkdir()
    got = []
    with pytest.raises(KeyboardInterrupt):
        with SegmentWriter(tmp_path / "segs", got.append, size=(32, 32), audio_path=speech, seconds=0.4) as w:
            w.write(np.zeros((14, 32, 32, 3), np.uint8))
            raise KeyboardInterrupt
    assert [s.num_frames for s in got] == [10]
    assert names(tmp_path / "segs") == ["segment-00000.mp4"]  # no segment-00001, no .wav, no temporary file

    def refuse(segment):
        raise RuntimeError(f"receiver failed on {segment.index}")

    (tmp_path / "r").mkdir()
    with pytest.raises(RuntimeError, match="receiver failed on 0"):
        with SegmentWriter(tmp_path / "r", refuse, size=(32, 32), seconds=0.4) as w:
            w.write(np.zeros((12, 32, 32, 3), np.uint8))
    assert names(tmp_path / "r") == ["segment-00000.mp4"]

    with pytest.raises(ValueError, match="seconds must be > 0"):
        SegmentWriter(tmp_path, print, size=(32, 32), seconds=0)
    with pytest.raises(InputError, match="is not a folder"):
        SegmentWriter(tmp_path / "missing", print, size=(32, 32))
    with pytest.raises(InputError, match="does not exist"):
        SegmentWriter(tmp_path, print, size=(32, 32), audio_path=tmp_path / "nope.wav")
    with pytest.raises(ValueError, match="audio_codec must be one of"):
        VideoWriter(tmp_path / "x.mp4", size=(32, 32), audio_codec="mp3")
