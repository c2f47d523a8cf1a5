"""Tests of talkhead.audio: decoding (soundfile and ffmpeg paths), resampling, the reference logfbank
and the typed errors."""
from __future__ import annotations

import dataclasses
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from scipy.io import wavfile

import talkhead.audio as audio
from talkhead.audio import (
    MIN_NUM_SAMPLES,
    SILENCE_PEAK,
    Speech,
    load_speech,
    logfbank,
    mel_filterbank,
    num_logfbank_frames,
    speech_features,
)
from talkhead.errors import AudioError, AudioTooShortError, InputError

N_SPEECH = 76_800  # samples of speech_16k.wav (4.80 s)


@pytest.fixture(scope="module")
def features(data_dir) -> dict:
    with np.load(data_dir / "audio" / "features.npz") as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def speech16(data_dir) -> Path:
    return data_dir / "audio" / "speech_16k.wav"


@pytest.fixture(scope="module")
def ref_features(speech16) -> np.ndarray:
    return speech_features(speech16)[1]


# ----------------------------------------------------------------------------------------------
# logfbank parity with the reference
# ----------------------------------------------------------------------------------------------
def test_parity_with_reference_logfbank(speech16, features):
    speech, fb = speech_features(speech16)
    assert speech.num_samples == N_SPEECH == int(features["num_samples"])
    assert speech.duration_s == pytest.approx(4.8)
    assert (speech.sample_rate, speech.source_sample_rate, speech.source_channels, speech.decoder) == \
        (16000, 16000, 1, "soundfile")
    assert speech.samples.dtype == np.float32 and speech.samples.ndim == 1
    assert not speech.samples.flags.writeable
    assert fb.shape == (479, 26) and fb.dtype == np.float64
    np.testing.assert_allclose(fb, features["logfbank_f64"], rtol=0, atol=1e-8)
    np.testing.assert_allclose(fb.astype(np.float32), features["logfbank"], rtol=0, atol=1e-8)


def test_logfbank_of_raw_int16_matches_reference(speech16, features):
    """Mean removal and peak division happen inside logfbank: raw int16 input gives the same."""
    rate, raw = wavfile.read(speech16)
    assert raw.dtype == np.int16
    assert raw.mean() == pytest.approx(float(features["signal_mean"]), abs=1e-9)
    np.testing.assert_allclose(logfbank(raw, rate), features["logfbank_f64"], rtol=0, atol=1e-8)
    np.testing.assert_allclose(logfbank(raw.astype(np.float64) * 3.0 + 1000.0), features["logfbank_f64"],
                               rtol=0, atol=1e-8)


def test_mel_filterbank_bins():
    """Fixture README section 3: 28 mel points map to these FFT bins; filter j peaks at b[j+1]."""
    bins = [0, 2, 4, 7, 10, 13, 16, 20, 24, 29, 34, 40, 46, 53, 60, 68, 77, 87, 97, 109, 122, 136,
            152, 169, 188, 209, 231, 256]
    fb = mel_filterbank()
    assert fb.shape == (26, 257)
    for j in range(26):
        nz = np.nonzero(fb[j])[0]
        assert fb[j, bins[j]] == 0.0 and fb[j, bins[j + 1]] == 1.0
        assert nz[0] == bins[j] + 1 and nz[-1] == bins[j + 2] - 1
        assert fb[j, bins[j + 2]:].sum() == 0


def _naive_logfbank(x: np.ndarray) -> np.ndarray:
    """Frame-by-frame re-derivation of python_speech_features.logfbank (after normalisation)."""
    x = x.astype(np.float64)
    x = x - x.mean()
    x = x / np.abs(x).max()
    y = np.append(x[0], x[1:] - 0.97 * x[:-1])
    m = num_logfbank_frames(len(y))
    y = np.concatenate([y, np.zeros((m - 1) * 160 + 400 - len(y))])
    fb = mel_filterbank()
    out = np.empty((m, 26))
    for i in range(m):
        power = np.abs(np.fft.rfft(y[160 * i:160 * i + 400], 512)) ** 2 / 512
        e = fb @ power
        out[i] = np.log(np.where(e == 0, np.finfo(float).eps, e))
    return out


def test_chunking_does_not_change_results(monkeypatch, speech16, features):
    monkeypatch.setattr(audio, "_FFT_CHUNK", 7)
    np.testing.assert_allclose(speech_features(speech16)[1], features["logfbank_f64"], rtol=0, atol=1e-8)


@pytest.mark.parametrize("n", [1, 2, 399, 400, 401, 559, 560, 561, MIN_NUM_SAMPLES, 5000])
def test_frame_count_and_naive_equivalence(n):
    x = np.random.default_rng(n).standard_normal(n).astype(np.float32) if n > 1 else np.array([0.3], np.float32)
    expected_m = 1 if n <= 400 else 1 + int(np.ceil((n - 400) / 160))
    assert num_logfbank_frames(n) == expected_m
    if n == 1:  # a single sample is all-mean: silent
        with pytest.raises(AudioError):
            logfbank(x)
        return
    out = logfbank(x)
    assert out.shape == (expected_m, 26)
    np.testing.assert_allclose(out, _naive_logfbank(x), rtol=0, atol=1e-8)


def test_logfbank_of_a_long_clip():
    """10 minutes (several internal chunks): the frame count rule holds and every row is finite; its speed
    and memory are measured by benchmarks/logfbank_memory.py, not asserted here."""
    x = np.random.default_rng(0).standard_normal(16000 * 600).astype(np.float32)
    out = logfbank(x)
    assert out.shape == (60_000 - 2 + 1, 26) and np.isfinite(out).all()


def test_logfbank_argument_errors():
    with pytest.raises(ValueError, match="16000"):
        logfbank(np.ones(1000), 44100)
    with pytest.raises(ValueError, match="shape"):
        logfbank(np.ones((1000, 2)))
    with pytest.raises(AudioError, match="empty"):
        logfbank(np.zeros(0))
    with pytest.raises(AudioError, match="silent"):
        logfbank(np.full(2000, 0.25))
    with pytest.raises(AudioError, match="non-finite"):
        logfbank(np.array([0.0, np.nan, 1.0] * 200))


# ----------------------------------------------------------------------------------------------
# resampling and channels
# ----------------------------------------------------------------------------------------------
def test_44k_stereo_deviation(data_dir, ref_features):
    speech, fb = speech_features(data_dir / "audio" / "speech_44k_stereo.wav")
    assert (speech.source_sample_rate, speech.source_channels, speech.num_samples) == (44100, 2, N_SPEECH)
    assert fb.shape == ref_features.shape
    d = np.abs(fb - ref_features)
    per_band = d.mean(axis=0)
    # measured: max 1.161 (band 0), mean 0.00859, p99 0.170, band 25 0.1315, bands 1-24 0.0034 (worst 0.0077)
    assert d.max() < 1.25
    assert d.mean() < 0.0095
    assert np.percentile(d, 99) < 0.19
    assert np.unravel_index(d.argmax(), d.shape)[1] == 0
    assert per_band[25] < 0.15
    assert per_band[1:25].mean() < 0.004 and per_band[1:25].max() < 0.009


def test_channels_are_averaged(tmp_path, speech16, features):
    """The reference keeps channel 1 (here all zeros: NaN features); we average the channels."""
    x, rate = sf.read(speech16, dtype="int16")
    stereo = np.stack([x, np.zeros_like(x)], axis=1)
    path = tmp_path / "left_only.wav"
    sf.write(path, stereo, rate, subtype="PCM_16")
    speech, fb = speech_features(path)
    assert speech.source_channels == 2
    np.testing.assert_array_equal(speech.samples, x.astype(np.float32) / 32768 / 2)
    np.testing.assert_allclose(fb, features["logfbank_f64"], rtol=0, atol=1e-8)


# ----------------------------------------------------------------------------------------------
# compressed formats (transcoded with the imageio-ffmpeg binary)
# ----------------------------------------------------------------------------------------------
FORMATS = {  # name: (file suffix, ffmpeg encoder, extra args)
    "mp3": (".mp3", "libmp3lame", ["-b:a", "64k"]),
    "m4a": (".m4a", "aac", ["-b:a", "64k"]),
    "m4a_48k_stereo": (".m4a", "aac", ["-b:a", "96k", "-ar", "48000", "-ac", "2"]),
    "flac": (".flac", "flac", []),
    "ogg": (".ogg", "libvorbis", ["-q:a", "3"]),
    "opus": (".opus", "libopus", ["-b:a", "48k"]),
}


@pytest.fixture(scope="module")
def ffmpeg_exe() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


@pytest.fixture(scope="module")
def encoders(ffmpeg_exe) -> str:
    return subprocess.run([ffmpeg_exe, "-hide_banner", "-encoders"], capture_output=True, text=True, check=True).stdout


@pytest.mark.parametrize("name", list(FORMATS))
def test_compressed_formats(name, tmp_path, speech16, ref_features, ffmpeg_exe, encoders):
    suffix, encoder, extra = FORMATS[name]
    if f" {encoder} " not in encoders:
        pytest.skip(f"ffmpeg has no {encoder} encoder")
    path = tmp_path / f"speech{suffix}"
    subprocess.run([ffmpeg_exe, "-nostdin", "-y", "-loglevel", "error", "-i", str(speech16), "-c:a", encoder,
                    *extra, str(path)], check=True)
    speech, fb = speech_features(path)
    assert abs(speech.num_samples - N_SPEECH) <= 160  # encoder delay removed, within one hop
    if name.startswith("m4a") or name == "mp3":
        assert speech.decoder == "ffmpeg"  # libsndfile does not read MP4/AAC; MP3 goes to ffmpeg, quietly
    if name == "m4a_48k_stereo":
        assert (speech.source_sample_rate, speech.source_channels) == (48000, 2)
    n = min(len(fb), len(ref_features))
    d = np.abs(fb[:n] - ref_features[:n])
    if name == "flac":
        assert d.max() < 1e-8
    else:
        # measured mean abs 0.03-0.14; a 10 ms misalignment alone gives 0.57
        assert d.mean() < 0.25, d.mean()


def test_damaged_mp3_decodes_quietly_through_ffmpeg(tmp_path, speech16, ffmpeg_exe):
    """An MP3 with damaged frames: decoded by ffmpeg (the frames it can read), nothing printed by a
    decoder library on stderr (libsndfile's mpg123 printed a dozen lines before talkhead's own); also
    under a name that hides what it is."""
    import sys

    good = tmp_path / "speech.mp3"
    subprocess.run([ffmpeg_exe, "-nostdin", "-y", "-loglevel", "error", "-i", str(speech16), "-c:a", "libmp3lame",
                    "-b:a", "64k", str(good)], check=True)
    data = bytearray(good.read_bytes())
    rng = np.random.default_rng(0)
    for i in range(2000, 20000, 997):
        data[i:i + 40] = rng.integers(0, 256, 40, dtype=np.uint8).tobytes()
    bad = tmp_path / "damaged.audio"
    bad.write_bytes(bytes(data))
    code = ("import sys; from talkhead.audio import load_speech; s = load_speech(sys.argv[1]); "
            "print(s.decoder, round(s.duration_s, 2))")
    proc = subprocess.run([sys.executable, "-c", code, str(bad)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    decoder, seconds = proc.stdout.split()
    assert decoder == "ffmpeg" and abs(float(seconds) - N_SPEECH / 16000) < 0.2
    assert proc.stderr == ""


def test_more_channels_than_a_video_track_holds_is_one_line_at_once(tmp_path):
    """A 256-channel WAV is refused when it is opened (before any model runs), in one line; 8 channels
    (7.1) are taken."""
    path = tmp_path / "many.wav"
    sf.write(path, np.random.default_rng(0).normal(0, 0.1, (1600, 256)).astype(np.float32), 16000, subtype="FLOAT")
    with pytest.raises(AudioError) as info:
        audio.scan_speech(path)
    msg = str(info.value)
    assert "256 channels" in msg and "at most 8" in msg and "\n" not in msg
    eight = tmp_path / "eight.wav"
    sf.write(eight, np.random.default_rng(0).normal(0, 0.1, (3200, 8)).astype(np.float32), 16000, subtype="FLOAT")
    assert audio.scan_speech(eight).source_channels == 8


def test_file_without_audio_stream(tmp_path, ffmpeg_exe):
    path = tmp_path / "video_only.mp4"
    subprocess.run([ffmpeg_exe, "-nostdin", "-y", "-loglevel", "error", "-f", "lavfi", "-i",
                    "color=c=black:s=16x16:d=0.5", "-c:v", "mpeg4", str(path)], check=True)
    with pytest.raises(AudioError, match="no audio stream") as info:
        load_speech(path)
    assert str(path) in str(info.value)


# ----------------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------------
def _write(path: Path, samples: np.ndarray, rate: int = 16000, subtype: str = "PCM_16") -> Path:
    sf.write(path, samples, rate, subtype=subtype)
    return path


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(InputError, match="not found") as info:
        load_speech(tmp_path / "nope.wav")
    assert type(info.value) is InputError and "nope.wav" in str(info.value)
    with pytest.raises(InputError, match="not a file"):
        load_speech(tmp_path)


def test_corrupt_file(tmp_path):
    path = tmp_path / "corrupt.wav"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8).tobytes())
    with pytest.raises(AudioError, match="cannot decode") as info:
        load_speech(path)
    assert str(path) in str(info.value)
    assert not isinstance(info.value, AudioTooShortError)


def test_empty_file(tmp_path):
    path = _write(tmp_path / "empty.wav", np.zeros(0, np.int16))
    with pytest.raises(AudioError, match="no samples") as info:
        load_speech(path)
    assert str(path) in str(info.value) and not isinstance(info.value, AudioTooShortError)
    zero_bytes = tmp_path / "zero_bytes.wav"
    zero_bytes.write_bytes(b"")
    with pytest.raises(AudioError, match=str(zero_bytes)):
        load_speech(zero_bytes)


@pytest.mark.parametrize("kind", ["zeros", "tiny", "dc"])
def test_silent_file(tmp_path, kind):
    n = 16000
    samples = {"zeros": np.zeros(n), "tiny": 0.5 * SILENCE_PEAK * np.sin(np.arange(n) / 5.0),
               "dc": np.full(n, 0.5)}[kind]
    path = _write(tmp_path / f"{kind}.wav", samples.astype(np.float32), subtype="FLOAT")
    with pytest.raises(AudioError, match="silent") as info:
        load_speech(path)
    assert str(path) in str(info.value)
    # just above the threshold is accepted
    loud = _write(tmp_path / "ok.wav", (4 * SILENCE_PEAK * np.sin(np.arange(n) / 5.0)).astype(np.float32),
                  subtype="FLOAT")
    assert load_speech(loud).num_samples == n


def test_non_finite_samples(tmp_path):
    x = np.sin(np.arange(4000) / 7.0).astype(np.float32)
    x[100] = np.nan
    path = _write(tmp_path / "nan.wav", x, subtype="FLOAT")
    with pytest.raises(AudioError, match="non-finite"):
        load_speech(path)


def test_too_short(tmp_path, speech16):
    x, _ = sf.read(speech16, dtype="int16")
    short = _write(tmp_path / "short.wav", x[20_000:20_000 + MIN_NUM_SAMPLES - 1])
    with pytest.raises(AudioTooShortError) as info:
        load_speech(short)
    msg = str(info.value)
    assert str(short) in msg and "0.0850 s" in msg and str(MIN_NUM_SAMPLES) in msg and "0.0851 s" in msg
    ok = _write(tmp_path / "minimum.wav", x[20_000:20_000 + MIN_NUM_SAMPLES])
    speech = load_speech(ok)
    assert speech.num_samples == MIN_NUM_SAMPLES
    assert logfbank(speech.samples).shape == (8, 26)
    # the minimum applies after resampling: 0.07 s at 44.1 kHz is still too short
    y = np.sin(np.arange(int(0.07 * 44100)) / 3.0).astype(np.float32)
    with pytest.raises(AudioTooShortError, match="44k_short"):
        load_speech(_write(tmp_path / "44k_short.wav", y, 44100, "FLOAT"))


def test_speech_is_frozen(speech16):
    speech = load_speech(speech16)
    with pytest.raises(dataclasses.FrozenInstanceError):
        speech.sample_rate = 8000
    with pytest.raises(ValueError):
        speech.samples[0] = 1.0
    assert isinstance(speech, Speech) and speech.path == speech16


# ----------------------------------------------------------------------------------------------
# streaming: scan_speech + speech_blocks + logfbank_stream (a file never held whole)
# ----------------------------------------------------------------------------------------------
def _streamed(path) -> tuple[audio.SpeechInfo, np.ndarray, int]:
    info = audio.scan_speech(path)
    biggest = 0

    def blocks():
        nonlocal biggest
        for block in audio.speech_blocks(path):
            biggest = max(biggest, block.shape[0])
            yield block
    rows = list(audio.logfbank_stream(blocks(), info))
    return info, np.concatenate(rows), biggest


@pytest.mark.parametrize("make", ["16k", "44k_stereo", "m4a"])
def test_streamed_logfbank_is_bit_identical(make, data_dir, tmp_path, ffmpeg_exe, monkeypatch):
    """The file decoded twice in blocks (scan, then rows) gives exactly logfbank(load_speech(...)), on the
    soundfile path (with resampling) and on the ffmpeg pipe; blocks stay small."""
    monkeypatch.setattr(audio, "_BLOCK_FRAMES", 4096)  # many blocks even for 4.8 s
    monkeypatch.setattr(audio, "_FFT_CHUNK", 100)      # many logfbank chunks
    monkeypatch.setattr(audio, "_SUM_BLOCK", 10_000)    # many sum blocks, not aligned with the decoded ones
    path = data_dir / "audio" / ("speech_16k.wav" if make == "16k" else "speech_44k_stereo.wav")
    if make == "m4a":
        path2 = tmp_path / "speech.m4a"
        subprocess.run([ffmpeg_exe, "-nostdin", "-y", "-loglevel", "error", "-i", str(path), "-c:a", "aac",
                        str(path2)], check=True)
        path = path2
    speech = load_speech(path)
    info, rows, biggest = _streamed(path)
    assert (info.num_samples, info.source_sample_rate, info.source_channels, info.decoder) == \
        (speech.num_samples, speech.source_sample_rate, speech.source_channels, speech.decoder)
    assert info.num_logfbank_rows == len(rows)
    assert np.array_equal(rows, logfbank(speech.samples))
    assert biggest <= 4096 * 16000 // 44100 + 4096 // 8 if make != "16k" else biggest <= 4096


def test_signal_stats_do_not_depend_on_the_pieces(monkeypatch):
    monkeypatch.setattr(audio, "_SUM_BLOCK", 1000)
    rng = np.random.default_rng(0)
    # magnitudes from 1e-12 to 1: float64 sums of these round (seed 0: one pairwise sum of all differs
    # from the 1000-sample block sums by 2.7e-15), so a different grouping would show
    x = (rng.normal(size=12_345) * 10.0 ** rng.uniform(-12, 0, 12_345)).astype(np.float32)
    whole = audio.SignalStats()
    whole.feed(x)
    for size in (1, 7, 999, 1000, 5000):
        parts = audio.SignalStats()
        for i in range(0, len(x), size):
            parts.feed(x[i:i + size])
        assert (parts.num_samples, parts.mean, parts.peak) == (whole.num_samples, whole.mean, whole.peak)
    assert whole.peak == np.max(np.abs(x.astype(np.float64) - whole.mean))


def test_open_ended_logfbank_stream_matches_within_rounding():
    """Live use: rows come out as soon as their 400 samples are in (small chunks: equal up to float rounding)."""
    x = (np.random.default_rng(4).normal(size=20_000) * 0.2).astype(np.float32)
    stats = audio.SignalStats()
    stats.feed(x)
    stream = audio.LogfbankStream(None, stats.mean, stats.peak, chunk_frames=3)
    rows = []
    for i in range(0, len(x), 320):
        got = stream.feed(x[i:i + 320])
        rows += got
        done = sum(len(r) for r in rows)
        assert done == (min(i + 320, len(x)) - 400) // 160 + 1 or done == 0  # every complete frame, no more
    rows += stream.finish()
    np.testing.assert_allclose(np.concatenate(rows), logfbank(x), rtol=0, atol=1e-12)


def test_scan_speech_errors_are_load_speech_errors(tmp_path, speech16):
    silent = _write(tmp_path / "silent.wav", np.zeros(16000, np.float32), subtype="FLOAT")
    with pytest.raises(AudioError, match="silent"):
        audio.scan_speech(silent)
    x, _ = sf.read(speech16, dtype="int16")
    with pytest.raises(AudioTooShortError):
        audio.scan_speech(_write(tmp_path / "short.wav", x[:MIN_NUM_SAMPLES - 1]))
    with pytest.raises(InputError, match="not found"):
        audio.scan_speech(tmp_path / "nope.wav")
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 20_000, dtype=np.uint8).tobytes())
    with pytest.raises(AudioError, match="cannot decode"):
        audio.scan_speech(corrupt)
    stream = audio.LogfbankStream(20_000, 0.0, 1.0)
    stream.feed(np.ones(100, np.float32))
    with pytest.raises(AudioError, match="expected"):
        stream.finish()


def test_a_file_libsndfile_fails_inside_is_read_by_ffmpeg_on_every_path(monkeypatch, speech16):
    """libsndfile opens the file but fails part-way (a damaged file): load_speech and scan_speech start
    again with ffmpeg, and the streamed decode the pipeline runs after the scan goes straight to the
    decoder the scan settled on, so it reads every sample too."""
    def fails_inside(f, path, info):
        with f:
            yield np.zeros(160, np.float32)
            raise sf.SoundFileError("damaged block")

    monkeypatch.setattr(audio, "_blocks_soundfile", fails_inside)
    speech = load_speech(speech16)
    assert speech.decoder == "ffmpeg" and speech.num_samples == N_SPEECH
    info = audio.scan_speech(speech16)
    assert info.decoder == "ffmpeg" and info.num_samples == N_SPEECH
    streamed = np.concatenate(list(audio.speech_blocks(speech16, decoder=info.decoder)))
    np.testing.assert_array_equal(streamed, speech.samples)
    with pytest.raises(AudioError, match="damaged block"):
        list(audio.speech_blocks(speech16))  # without it, the second decode fails where the scan did
