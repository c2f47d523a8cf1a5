"""Helpers shared by the test modules (fixtures live in conftest.py).

- :func:`assert_clean_error`: the "bad input -> one readable line" contract of the CLI;
  :func:`run_cli`, :func:`offline_args` to run it in-process.
- :func:`probe`, :func:`decode_frames`, :func:`moov_before_mdat`: an independent media oracle.
- :func:`psnr`.
- Synthetic data: :func:`speech_excerpt`, :func:`silent_wav`, :func:`pattern`, :func:`face_frame`,
  :func:`applied_dx`, :func:`write_video`, :func:`no_face_photo`, :func:`blank_photo`.
- Fakes for the pipeline's seams: :class:`ToyRenderer`, :func:`toy_motion`, :func:`astronaut_face`,
  :class:`ListWriter`, :class:`FakePipeline`, :class:`CentroidKP`, :func:`render_inputs`.
- Processes: :func:`subprocess_env`, :func:`wait_for`, :func:`assert_terminated_cleanly`.
- Files: :func:`names`, :func:`sha256_of`, :func:`flip_byte`, :func:`states_of`.
"""
from __future__ import annotations

import hashlib
import os
import re
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import cv2
import imageio.v3 as iio
import imageio_ffmpeg
import numpy as np
import skimage.data
import soundfile as sf
import torch
from PIL import Image

from talkhead.constants import NUM_KP
from talkhead.landmarks import Face
from talkhead.keypoints import Keypoints
from toy_renderer import SourceImageRenderer

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
ASTRONAUT = ROOT / "examples" / "astronaut.png"
"""A real photo (skimage's astronaut, 512 x 512 RGB) with one face."""
SPEECH = DATA / "audio" / "speech_16k.wav"
"""Real speech: 4.80 s, 16 kHz mono int16 (76 800 samples, 120 frames at 25 fps)."""


# ============================================================================ the CLI and its one-line errors
def run_cli(*args, catch_exceptions: bool = False):
    """``talkhead ARGS`` in-process (``CliRunner``; arguments are ``str()``-ed); the click ``Result``."""
    from typer.testing import CliRunner

    from talkhead.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=catch_exceptions)


def offline_args(models_dir: Path) -> list[str]:
    """The options of an offline, quiet run on ``models_dir`` with dlib landmarks (no network, no FAN)."""
    return ["--models-dir", str(models_dir), "--landmarker", "dlib", "--offline", "--quiet"]


def _streams(result) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of a click ``Result`` or a ``subprocess.CompletedProcess``."""
    if hasattr(result, "exit_code"):  # click.testing.Result (click >= 8.2 keeps stderr apart)
        return result.exit_code, result.stdout, result.stderr
    out, err = result.stdout or "", result.stderr or ""
    if isinstance(out, bytes):
        out = out.decode("utf-8", "replace")
    if isinstance(err, bytes):
        err = err.decode("utf-8", "replace")
    return result.returncode, out, err


def assert_clean_error(result, kind: str, *details: str, code: int = 2) -> str:
    """Assert a CLI run failed the way a user should see it: exit ``code``, exactly one non-blank line
    on stdout + stderr together, starting with ``error:``, no traceback; return that line.

    Args:
        result: a ``CliRunner().invoke`` result or a ``subprocess.run(..., capture_output=True)`` result.
        kind: words naming the KIND of error (``"not found"``, ``"no face"``, ``"already exists"``,
            ``"is silent"``); a path or file name is not a kind (checked: not one token with ``/`` or ``.``).
        details: further substrings the line must hold (e.g. the file's name).
        code: the expected exit status (2 for bad input, 1 for unexpected errors).
    """
    assert kind.strip() and not re.fullmatch(r"\S*[/.\\]\S*", kind), \
        f"kind must name the kind of error, not a path: {kind!r}"
    exit_code, out, err = _streams(result)
    text = out + err
    assert exit_code == code, (exit_code, text)
    assert "Traceback" not in text, text
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected exactly one line, got {len(lines)}:\n{text}"
    line = lines[0]
    assert line.startswith("error:"), line
    for needle in (kind, *details):
        assert needle in line, (needle, line)
    return line


# ============================================================================ media oracle
def _ffmpeg() -> str:
    return imageio_ffmpeg.get_ffmpeg_exe()


class ProbeError(Exception):
    """ffmpeg could not read the probed file."""


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe` found in a media file (first video and first audio stream).

    Attributes:
        path: the probed file.
        format_name: ffmpeg's demuxer names, e.g. ``"mov,mp4,m4a,3gp,3g2,mj2"``.
        major_brand / compatible_brands: ISO-BMFF ``ftyp`` brands, ``None`` for other containers.
        duration_s: container duration as ffmpeg reports it, seconds (0.01 s resolution).
        video_codec: e.g. ``"h264"``; pix_fmt: e.g. ``"yuv420p"``; width/height: pixels;
        fps: frames per second (stream's average rate); num_frames: exact, counted by demuxing.
        video_duration_s: ``num_frames / fps`` seconds.
        audio_codec: e.g. ``"aac"``; audio_sample_rate: Hz; audio_channels: layout (``"mono"``);
        audio_duration_s: seconds, exact (end time of the fully decoded first audio stream).
        faststart: MP4 ``moov`` box before ``mdat``; ``None`` when the file is not ISO-BMFF.
    Fields of an absent stream are ``None``.
    """

    path: Path
    format_name: str | None
    major_brand: str | None
    compatible_brands: str | None
    duration_s: float | None
    video_codec: str | None
    pix_fmt: str | None
    width: int | None
    height: int | None
    fps: float | None
    num_frames: int | None
    video_duration_s: float | None
    audio_codec: str | None
    audio_sample_rate: int | None
    audio_channels: str | None
    audio_duration_s: float | None
    faststart: bool | None

    @property
    def has_audio(self) -> bool:
        return self.audio_codec is not None


def _split_top_level(text: str) -> list[str]:
    """Split ``a (x, y), b, c`` on commas outside parentheses/brackets."""
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch in "([":
            depth += 1
        elif ch in ")]":
            depth = max(depth - 1, 0)
        if ch == "," and depth == 0:
            parts.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur).strip())
    return parts


def _null_run(path: Path, stream: str, copy: bool) -> dict[str, str]:
    """Demux (``copy``) or decode one stream into the null muxer; ffmpeg's final progress block."""
    cmd = [_ffmpeg(), "-nostdin", "-nostats", "-loglevel", "error", "-i", f"file:{path}", "-map", stream]
    if copy:
        cmd += ["-c", "copy"]
    proc = subprocess.run([*cmd, "-f", "null", "-", "-progress", "pipe:1"], capture_output=True)
    if proc.returncode != 0:
        raise ProbeError(f"ffmpeg could not read stream {stream} of {str(path)!r}: "
                         f"{proc.stderr.decode('utf-8', 'replace')[-500:]}")
    values: dict[str, str] = {}
    for line in proc.stdout.decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip()
    return values


def probe(path: str | os.PathLike) -> VideoInfo:
    """Describe a media file: the test oracle for every MP4/WAV the package writes.

    Deliberately independent of :mod:`talkhead.ffmpeg` (and of the rest of talkhead): it runs the
    ffmpeg binary of imageio-ffmpeg itself with its own arguments, so a bug in the package's argument
    vectors or parsing cannot hide behind the same bug here. It parses the ``ffmpeg -i`` stream
    listing (imageio-ffmpeg ships no ffprobe); counts video frames exactly by demuxing the first video
    stream into the null muxer; measures the audio duration exactly by decoding the first audio stream
    (``out_time_us``, which honours MP4 edit lists: AAC priming is not counted); checks faststart
    with :func:`moov_before_mdat`.

    Raises:
        FileNotFoundError: ``path`` is not an existing file.
        ProbeError: ffmpeg cannot read it.
    """
    p = Path(os.path.abspath(Path(path).expanduser()))
    if not p.is_file():
        raise FileNotFoundError(f"cannot probe {str(path)!r}: no such file")
    listing = subprocess.run([_ffmpeg(), "-nostdin", "-hide_banner", "-i", f"file:{p}"], capture_output=True)
    text = listing.stderr.decode("utf-8", "replace")  # exits 1: no output file given
    header = re.search(r"^Input #0, (.+?), from ", text, flags=re.M)
    if header is None:
        raise ProbeError(f"ffmpeg cannot read {str(p)!r}: {text[-500:]}")
    before_streams = text[header.end():].split("Stream #", 1)[0]
    major = re.search(r"^\s*major_brand\s*:\s*(\S+)", before_streams, flags=re.M)
    compat = re.search(r"^\s*compatible_brands\s*:\s*(\S+)", before_streams, flags=re.M)
    dur = re.search(r"Duration:\s*(\d+):(\d+):(\d+(?:\.\d+)?)", text)
    duration_s = int(dur.group(1)) * 3600 + int(dur.group(2)) * 60 + float(dur.group(3)) if dur else None

    video = audio = None
    for kind, desc in re.findall(r"^\s*Stream #0:\d+\S*: (Video|Audio): (.+)$", text, flags=re.M):
        if kind == "Video" and video is None and "attached pic" not in desc:
            video = _split_top_level(desc)
        elif kind == "Audio" and audio is None:
            audio = _split_top_level(desc)

    v: dict[str, Any] = dict(video_codec=None, pix_fmt=None, width=None, height=None, fps=None, num_frames=None,
                             video_duration_s=None)
    if video is not None:
        v["video_codec"] = video[0].split()[0]
        if len(video) > 1 and not re.match(r"^\d+x\d+", video[1]):
            v["pix_fmt"] = video[1].split("(")[0].strip()
        for part in video[1:]:
            size = re.match(r"^(\d+)x(\d+)", part)
            if size and v["width"] is None:
                v["width"], v["height"] = int(size.group(1)), int(size.group(2))
            rate = re.match(r"^([\d.]+)(k?) fps$", part)
            if rate:
                v["fps"] = float(rate.group(1)) * (1000 if rate.group(2) else 1)
        v["num_frames"] = int(_null_run(p, "0:v:0", copy=True).get("frame", "0"))
        if v["fps"]:
            v["video_duration_s"] = v["num_frames"] / v["fps"]

    a: dict[str, Any] = dict(audio_codec=None, audio_sample_rate=None, audio_channels=None, audio_duration_s=None)
    if audio is not None:
        a["audio_codec"] = audio[0].split()[0]
        for i, part in enumerate(audio[1:], start=1):
            hz = re.match(r"^(\d+) Hz$", part)
            if hz:
                a["audio_sample_rate"] = int(hz.group(1))
                if i + 1 < len(audio):
                    a["audio_channels"] = audio[i + 1]
        us = _null_run(p, "0:a:0", copy=False).get("out_time_us", "N/A")
        a["audio_duration_s"] = int(us) / 1e6 if us.lstrip("-").isdigit() else None

    try:
        faststart: bool | None = moov_before_mdat(p)
    except ValueError:
        faststart = None
    return VideoInfo(path=p, format_name=header.group(1), major_brand=major.group(1) if major else None,
                     compatible_brands=compat.group(1) if compat else None, duration_s=duration_s,
                     faststart=faststart, **v, **a)


def decode_frames(path: str | os.PathLike) -> tuple[dict, np.ndarray]:
    """Every frame of a video decoded to RGB uint8 ``(n, H, W, 3)``, with imageio-ffmpeg's metadata dict.

    Independent of :mod:`talkhead.ffmpeg` (imageio-ffmpeg's own reader), like :func:`probe`.
    """
    gen = imageio_ffmpeg.read_frames(str(path))
    meta = next(gen)
    w, h = meta["size"]
    frames = [np.frombuffer(b, np.uint8).reshape(h, w, 3) for b in gen]
    return meta, np.stack(frames) if frames else np.zeros((0, h, w, 3), np.uint8)


def moov_before_mdat(path: str | os.PathLike) -> bool:
    """Whether an MP4's ``moov`` box precedes its ``mdat`` box ("faststart": playable while streaming).

    Walks the top-level ISO-BMFF boxes (ISO/IEC 14496-12 §4.2: 32-bit big-endian size + 4-char type;
    size 1 = 64-bit size follows, size 0 = box runs to end of file) reading headers only.

    Returns:
        True if ``moov`` comes first; False if ``mdat`` comes first or either is missing.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: it does not start like an ISO-BMFF file (``ftyp`` etc.).
    """
    p = Path(path)
    file_size = p.stat().st_size
    with open(p, "rb") as fh:
        offset, first = 0, True
        while offset + 8 <= file_size:
            fh.seek(offset)
            size, box = struct.unpack(">I4s", fh.read(8))
            header = 8
            if size == 1:
                (size,) = struct.unpack(">Q", fh.read(8))
                header = 16
            elif size == 0:
                size = file_size - offset
            if first and (box not in (b"ftyp", b"styp", b"free", b"skip", b"wide", b"moov", b"mdat")
                          or size < header):
                raise ValueError(f"{str(path)!r} is not an MP4/ISO-BMFF file (first box {box!r})")
            first = False
            if box == b"moov":
                return True
            if box == b"mdat":
                return False
            if size < header:  # corrupt size: stop rather than loop
                break
            offset += size
    if first:
        raise ValueError(f"{str(path)!r} is not an MP4/ISO-BMFF file (too short)")
    return False


# ============================================================================ image comparison
def psnr(a, b, peak: float | None = None) -> float:
    """Peak signal-to-noise ratio of ``a`` against ``b`` (numpy arrays or torch tensors, same shape), dB.

    ``peak`` defaults to 255 for uint8 input and 1.0 otherwise (frames in [0, 1]); identical inputs
    give ``inf``.
    """
    if peak is None:
        peak = 255.0 if str(getattr(a, "dtype", "")).endswith("uint8") else 1.0
    a = np.asarray(a.detach().cpu() if hasattr(a, "detach") else a, np.float64)
    b = np.asarray(b.detach().cpu() if hasattr(b, "detach") else b, np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(peak ** 2 / mse))


# ============================================================================ synthetic data
def speech_excerpt(path: Path, seconds: float, subtype: str = "PCM_16") -> Path:
    """Write the real test speech cut (or looped) to ``seconds`` at 16 kHz mono; return ``path``."""
    samples, sr = sf.read(SPEECH, dtype="int16")
    n = int(round(seconds * sr))
    reps = -(-n // len(samples)) if n else 1
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.tile(samples, reps)[:n], sr, subtype=subtype)
    return path


def silent_wav(path: Path, seconds: float = 1.0, rate: int = 16000) -> Path:
    """Digital silence (int16 zeros) as a WAV."""
    sf.write(path, np.zeros(int(seconds * rate), np.int16), rate, subtype="PCM_16")
    return path


def no_face_photo(path: Path) -> Path:
    """A real photo without a face (skimage's coffee cup, 400 x 600)."""
    iio.imwrite(path, skimage.data.coffee())
    return path


def blank_photo(path: Path, size: tuple[int, int] = (300, 400), value: int = 128) -> Path:
    """A uniform grey image ``size`` = (H, W): nothing to detect."""
    Image.fromarray(np.full((*size, 3), value, np.uint8)).save(path)
    return path


def pattern(t: int, h: int = 64, w: int = 64) -> np.ndarray:
    """A smooth moving colour pattern, uint8 (h, w, 3); frame ``t`` differs from ``t - 1``."""
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = [(xx * 3 + t * 2) % 200 + 20, 255 - yy * 3, xx + yy + t]
    return np.stack(rgb, -1).clip(0, 255).astype(np.uint8)


SRC_FPS = 30
"""Frame rate the synthetic face videos are written at (preprocess must resample to 25 fps)."""
AMP_PX = 12.0
PERIOD_S = 2.0
BG = 110
"""Uniform grey of the synthetic face video's background, uint8."""
FACE_CENTRE = (220.0, 121.0)
"""(x, y) of the astronaut's face in ``skimage.data.astronaut()``, pixels."""
FRAME = 256


def applied_dx(t_s: np.ndarray | float) -> np.ndarray:
    """The horizontal translation of the face at time ``t_s`` (s), pixels (positive = to the right)."""
    return AMP_PX * np.sin(2 * np.pi * np.asarray(t_s) / PERIOD_S)


def face_frame(dx: float) -> np.ndarray:
    """(256, 256, 3) uint8: a disk of radius 54 px around the astronaut's face on grey, moved by ``dx``."""
    astro = skimage.data.astronaut()
    yy, xx = np.mgrid[:512, :512]
    r = np.hypot(xx - FACE_CENTRE[0], yy - FACE_CENTRE[1])
    alpha = np.clip((54.0 - r) / 3.0, 0.0, 1.0).astype(np.float32)
    m = np.float32([[1, 0, FRAME / 2 - FACE_CENTRE[0] + dx], [0, 1, FRAME / 2 - FACE_CENTRE[1]]])
    content = cv2.warpAffine(astro, m, (FRAME, FRAME), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    a = cv2.warpAffine(alpha, m, (FRAME, FRAME), flags=cv2.INTER_LINEAR)[..., None]
    out = a * content.astype(np.float32) + (1 - a) * BG
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def write_video(path: Path, frames: list[np.ndarray], fps: float, audio: Path | None = None) -> Path:
    """Encode ``frames`` (H, W, 3) uint8 to ``path`` (codec chosen by extension), muxing ``audio``.

    Written with imageio-ffmpeg, not :mod:`talkhead.video`, so inputs do not depend on the code tested.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames[0].shape[:2]
    codec = {"avi": "mpeg4"}.get(path.suffix[1:], "libx264")
    kwargs = dict(fps=fps, codec=codec, quality=None, macro_block_size=2, ffmpeg_log_level="error",
                  output_params=["-q:v", "2"] if codec == "mpeg4" else ["-crf", "14"])
    if audio is not None:
        kwargs.update(audio_path=str(audio), audio_codec="pcm_s16le" if codec == "mpeg4" else "aac")
        kwargs["output_params"] = kwargs["output_params"] + ["-shortest"]
    writer = imageio_ffmpeg.write_frames(str(path), (w, h), **kwargs)
    writer.send(None)
    for f in frames:
        writer.send(np.ascontiguousarray(f))
    writer.close()
    return path


# ============================================================================ fakes for the pipeline's seams
class ToyRenderer(SourceImageRenderer):
    """A renderer on the renderer contract with known behaviour: keypoint 0's x shifts the frame's colour.

    ``detect`` returns fixed keypoints; ``render`` returns the source with its red channel set to
    ``0.5 + kp_driving.value[:, 0, 0]`` (so each frame encodes the keypoints that drove it).
    """

    frame_size = 32
    num_kp = 10

    def detect(self, source):
        b = source.shape[0]
        return Keypoints(torch.zeros(b, 10, 2), torch.eye(2).expand(b, 10, 2, 2).clone())

    def frames(self, source, kp_source, kp_driving):
        frames = source.expand(len(kp_driving), -1, -1, -1).clone()
        frames[:, 0] = (frames[:, 0] * 0 + 0.5 + kp_driving.value[:, 0, 0, None, None]).clamp(0, 1)
        return frames


def toy_motion(kp_source, logfbank, progress=None):
    """T = M // 4 frames; keypoint 0's x ramps from -0.4 to 0.4 (visible through :class:`ToyRenderer`)."""
    t = max(2, logfbank.shape[0] // 4)
    value = kp_source.value.repeat(t, 1, 1)
    value[:, 0, 0] = torch.linspace(-0.4, 0.4, t)
    if progress:
        progress("keypoints", t, t)
    return Keypoints(value, kp_source.jacobian.repeat(t, 1, 1, 1))


def astronaut_face(image):
    """The astronaut's face box, as a landmarker would report it (no model needed)."""
    return [Face(box=(175.0, 40.0, 290.0, 190.0), score=0.99, landmarks=np.zeros((0, 2), np.float32),
                 backend="fan")]


class ListWriter:
    """A video sink that keeps the frames written to it (``frames``: a list of (H, W, 3) arrays)."""

    def __init__(self):
        self.frames = []

    def write(self, frames):
        self.frames.extend(np.asarray(frames))


class FakePipeline:
    """``run`` (:meth:`talkhead.pipeline.Pipeline.run`'s signature) writes a small file, or raises what
    ``fail`` maps the image's stem to."""

    def __init__(self, fail=None):
        self.fail = fail or {}
        self.calls = []

    def run(self, image, motion, output, keep_keypoints=True, progress=None):
        self.calls.append(Path(output).name)
        exc = self.fail.get(Path(image).stem)
        if exc is not None:
            raise exc
        Path(output).write_bytes(b"mp4")
        return type("Result", (), {"num_frames": 25})()


class CentroidKP(torch.nn.Module):
    """A keypoint detector with known geometry, for checking crops: every keypoint is the centroid of
    the pixels that differ from the grey background :data:`BG`, in FOMM's [-1, 1] grid (x = column),
    with identity jacobians. A face translated by ``d`` px in a crop of side ``L`` moves it by ``2 d / L``."""

    def forward(self, x: torch.Tensor) -> dict:
        b, _, s, _ = x.shape
        w = torch.relu((x - BG / 255.0).abs().sum(1) - 0.06)  # (B, S, S)
        grid = torch.linspace(-1, 1, s)
        total = w.sum((1, 2)).clamp_min(1e-6)
        cx = (w.sum(1) * grid).sum(1) / total
        cy = (w.sum(2) * grid).sum(1) / total
        value = torch.stack([cx, cy], -1)[:, None].expand(b, NUM_KP, 2).contiguous()
        return {"value": value, "jacobian": torch.eye(2).expand(b, NUM_KP, 2, 2).contiguous()}


def render_inputs(fomm, n: int, seed: int = 0):
    """A seeded random source ``(1, 3, S, S)``, its detected kp_source and ``n`` kp_driving sets near it."""
    g = torch.Generator().manual_seed(seed)
    src = torch.rand(1, 3, fomm.frame_size, fomm.frame_size, generator=g)
    kp = fomm.detect(src)
    kp_d = Keypoints(kp.value + 0.05 * torch.randn(n, 10, 2, generator=g),
                     kp.jacobian + 0.05 * torch.randn(n, 10, 2, 2, generator=g))
    return src, kp, kp_d


# ============================================================================ processes
def subprocess_env() -> dict:
    """The environment for a ``python -m talkhead`` child: this checkout first on PYTHONPATH, one OMP thread."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def wait_for(cond: Callable[[], bool], timeout: float = 120.0, proc=None, what: str = "the condition") -> None:
    """Poll ``cond`` until true. ``timeout`` only guards against hanging (it is no speed assertion);
    with ``proc``, fail at once if that process ends first."""
    end = time.monotonic() + timeout
    while not cond():
        if proc is not None and proc.poll() is not None:
            _, err = proc.communicate()
            err = err.decode("utf-8", "replace") if isinstance(err, bytes) else (err or "")
            raise AssertionError(f"process ended (rc {proc.returncode}) before {what}: {err[-2000:]}")
        if time.monotonic() > end:
            raise AssertionError(f"{what} did not happen within {timeout} s (hung?)")
        time.sleep(0.02)


def assert_terminated_cleanly(returncode: int, err: bytes, out_dir: Path) -> None:
    """A SIGTERM'd talkhead run: exit 143, one stderr line saying so, nothing left in ``out_dir`` and no
    ffmpeg child still writing there."""
    assert returncode == 143, err.decode()
    lines = [ln for ln in err.decode().splitlines() if ln.strip()]
    assert len(lines) == 1 and "terminated by SIGTERM" in lines[0], lines
    assert os.listdir(out_dir) == []
    assert ffmpeg_writing_into(out_dir) == []


def ffmpeg_writing_into(folder: Path) -> list[int]:
    """Pids of live (non-zombie) processes whose command line mentions ``folder`` and ffmpeg."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if os.fsencode(str(folder)) in cmd and b"ffmpeg" in cmd and state != "Z":
            pids.append(int(entry.name))
    return pids


# ============================================================================ files
def names(folder: Path) -> list[str]:
    """The entries of ``folder``, sorted (hidden ones too)."""
    return sorted(os.listdir(folder))


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def flip_byte(path: Path, keep_mtime: bool = False) -> None:
    """Corrupt a file in place: invert its middle byte (size kept; mtime too with ``keep_mtime``)."""
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def states_of(result) -> dict[str, str]:
    """``{relpath: state}`` of a store verification result (``{relpath: FileState}``)."""
    return {rel: st.state for rel, st in result.items()}


def syncnet_fixture_script():
    """``tests/data/syncnet/make_fixtures.py`` as a module (its seeded weights, stand-in models and clips)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("syncnet_make_fixtures", DATA / "syncnet" / "make_fixtures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class QuietHTTPServer(ThreadingHTTPServer):
    """The tests' loopback HTTP server: a client that hangs up mid-transfer (what the download tests
    do on purpose) is not a server error, so its ``ConnectionResetError`` / ``BrokenPipeError`` is not
    printed as a traceback in the middle of the test run; any other handler error still is."""

    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
            return
        super().handle_error(request, client_address)


def resident_fraction(tensor) -> float:
    """Share of the whole memory pages inside ``tensor``'s storage that are present in this process's page
    tables (``/proc/self/pagemap`` bit 63; Linux only): 1.0 once read, ~0 after they were paged out."""
    import mmap as _mmap
    import struct

    page = _mmap.PAGESIZE
    storage = tensor.untyped_storage()
    first = -(-storage.data_ptr() // page)
    end = (storage.data_ptr() + storage.nbytes()) // page
    if end <= first:
        raise ValueError("the storage holds no whole page")
    with open("/proc/self/pagemap", "rb") as fh:
        fh.seek(first * 8)
        entries = struct.unpack(f"{end - first}Q", fh.read((end - first) * 8))
    return sum(e >> 63 for e in entries) / (end - first)
