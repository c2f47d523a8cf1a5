"""Test helper: describe a media file with the bundled ffmpeg (no ffprobe), and check MP4 faststart.

``imageio-ffmpeg`` ships no ``ffprobe``, so :func:`probe` parses the ``ffmpeg -i`` stream listing
and counts frames by running ffmpeg into the ``null`` muxer; :func:`moov_before_mdat` reads the MP4
box headers. Only the tests need this (the package itself never inspects its output), so it lives
here, on top of :mod:`talkhead.ffmpeg`.
"""
from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from talkhead import ffmpeg as ff
from talkhead.errors import FFmpegError, InputError

__all__ = ["VideoInfo", "probe", "moov_before_mdat"]


# ------------------------------------------------------------------------------------------ probing
@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe` found in a media file (first video and first audio stream).

    Attributes:
        path: the probed file.
        format_name: ffmpeg's demuxer names, e.g. ``"mov,mp4,m4a,3gp,3g2,mj2"``.
        major_brand / compatible_brands: ISO-BMFF ``ftyp`` brands (``"isom"``,
            ``"isomiso2avc1mp41"``), ``None`` for other containers.
        duration_s: container duration as ffmpeg reports it, seconds (0.01 s resolution).
        video_codec: e.g. ``"h264"``; pix_fmt: e.g. ``"yuv420p"``; width/height: pixels;
        fps: frames per second (stream's average rate); num_frames: exact, counted by demuxing.
        video_duration_s: ``num_frames / fps`` seconds.
        audio_codec: e.g. ``"aac"``; audio_sample_rate: Hz; audio_channels: layout (``"mono"``);
        audio_duration_s: seconds, exact (end time of the fully decoded first audio stream).
        faststart: MP4 ``moov`` box before ``mdat`` (:func:`moov_before_mdat`); ``None`` when the
            file is not ISO-BMFF.
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
    """Demux (``copy``) or decode one stream into the null muxer; return ffmpeg's final progress block."""
    args = ["-nostats", "-loglevel", "error", "-i", f"file:{path}", "-map", stream]
    if copy:
        args += ["-c", "copy"]
    proc = ff.run([*args, "-f", "null", "-", "-progress", "pipe:1"])
    if proc.returncode != 0:
        raise FFmpegError(f"ffmpeg could not read stream {stream} of {str(path)!r}: {ff.decode_tail(proc.stderr)}")
    values: dict[str, str] = {}
    for line in proc.stdout.decode("utf-8", "replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key.strip()] = value.strip()
    return values


def probe(path: str | os.PathLike) -> VideoInfo:
    """Describe a media file with the bundled ffmpeg (no ffprobe needed).

    Parses the ``ffmpeg -i`` stream listing; counts video frames exactly by demuxing the first
    video stream (``-map 0:v:0 -c copy -f null -``); measures the audio duration exactly by
    decoding the first audio stream into the null muxer (``out_time_us``, which already honours
    MP4 edit lists, i.e. AAC priming is not counted); checks faststart with :func:`moov_before_mdat`.

    Args:
        path: a video or audio file.

    Returns:
        :class:`VideoInfo`.

    Raises:
        InputError: ``path`` is not an existing file.
        FFmpegError: ffmpeg cannot read it (the message quotes ffmpeg's stderr tail).
    """
    p = Path(os.path.abspath(Path(path).expanduser()))
    if not p.is_file():
        raise InputError(f"cannot probe {str(path)!r}: no such file")
    text = ff.run(["-i", f"file:{p}"]).stderr.decode("utf-8", "replace")  # exits 1: no output given
    header = re.search(r"^Input #0, (.+?), from ", text, flags=re.M)
    if header is None:
        raise FFmpegError(f"ffmpeg cannot read {str(p)!r}: {ff.decode_tail(text.encode())}")
    format_name = header.group(1)
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
        progress = _null_run(p, "0:v:0", copy=True)
        v["num_frames"] = int(progress.get("frame", "0"))
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
        progress = _null_run(p, "0:a:0", copy=False)
        us = progress.get("out_time_us", "N/A")
        a["audio_duration_s"] = int(us) / 1e6 if us.lstrip("-").isdigit() else None

    try:
        faststart: bool | None = moov_before_mdat(p)
    except InputError:
        faststart = None
    return VideoInfo(path=p, format_name=format_name, major_brand=major.group(1) if major else None,
                     compatible_brands=compat.group(1) if compat else None, duration_s=duration_s,
                     faststart=faststart, **v, **a)


def moov_before_mdat(path: str | os.PathLike) -> bool:
    """Whether an MP4's ``moov`` box precedes its ``mdat`` box ("faststart": playable while streaming).

    Walks the top-level ISO-BMFF boxes (ISO/IEC 14496-12 §4.2: 32-bit big-endian size + 4-char type;
    size 1 = 64-bit size follows, size 0 = box runs to end of file) reading headers only.

    Returns:
        True if ``moov`` comes first; False if ``mdat`` comes first or either is missing.

    Raises:
        InputError: the file is missing or does not start like an ISO-BMFF file (``ftyp`` etc.).
    """
    p = Path(path)
    try:
        file_size = p.stat().st_size
        fh = open(p, "rb")
    except OSError as err:
        raise InputError(f"cannot read {str(path)!r}: {err}") from err
    with fh:
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
                raise InputError(f"{str(path)!r} is not an MP4/ISO-BMFF file (first box {box!r})")
            first = False
            if box == b"moov":
                return True
            if box == b"mdat":
                return False
            if size < header:  # corrupt size: stop rather than loop
                break
            offset += size
    if first:
        raise InputError(f"{str(path)!r} is not an MP4/ISO-BMFF file (too short)")
    return False
