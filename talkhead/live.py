"""A live talking head: push speech chunks, pull video frames with their speech at the output frame rate.

::

    from talkhead import AnimateOptions, Pipeline
    from talkhead.live import LiveSession

    session = LiveSession(Pipeline(AnimateOptions(device="cuda")), fps=25)
    session.set_photo("photo.png")                   # the face found, cropped and encoded once
    session.push(pcm_int16, sample_rate=24000)        # any rate, int16 or float in [-1, 1], any chunk size
    session.end_speech()                              # optional: the utterance is complete
    frame = session.pull()                            # LiveFrame: image (H, W, 3) uint8 + its audio
    session.interrupt()                               # barge-in: drop what is queued, idle from the next frame

The same stages as ``animate``, chunk by chunk: speech -> 16 kHz mono (:class:`talkhead.audio.ToMono16k`,
streamed soxr) -> logfbank rows as their 25 ms windows fill (:class:`talkhead.audio.LogfbankStream`) ->
MS-Sync, one frame at a time (:class:`talkhead.mssync.windowed.Rollout` over an open-ended
:class:`~talkhead.mssync.windowed.AudioPyramidStream`) -> head motion scaled by ``options.motion_scale``
(:func:`talkhead.pipeline.speech_keypoint_windows`) -> the renderer -> [``options.enhance``: the restore
stage] -> paste-back into the photo (:meth:`talkhead.pipeline.Pipeline.photo_stages` and
:meth:`~talkhead.pipeline.Pipeline.render_batch`, the stages ``animate`` runs). Each :meth:`LiveSession.pull` returns one frame and exactly
the audio that plays during it, so audio and video cannot drift apart.

**Latency.** MS-Sync looks ahead: a frame's keypoints depend on the audio pyramid's coarsest level
around it (a 1.28 s-stride level whose convolutions reach 0.9 s further). A frame of speech is
therefore emitted only once :attr:`LiveSession.lookahead_ms` of later audio has arrived (about 1.5 s
for the released architecture; the exact figure is computed from the model) or the utterance ended;
until then the session emits idle frames (the speech is delayed, not cut). Rendering cost comes on top
(on CPU at full size it is slower than real time: see ``benchmarks/README.md``, "Live session").

**Idle.** With no speech queued the face shows the photo's own expression (mouth as in the photo:
use a photo with a closed mouth) under a small, smooth head motion (a few hundredths of the crop,
incommensurate sines, scaled by ``options.motion_scale`` like speech motion: 0 keeps the head still,
idle frames included), so it is never a frozen picture at the default scale. Speech starts from the current idle pose
(MS-Sync's warm-up uses it) and, at its end, the pose eases back to idle over
:data:`RETURN_FRAMES` frames; :meth:`LiveSession.interrupt` drops the queued speech and the next
frame is idle.

**Differences from ``animate``** (the file path stays exact): the logfbank is normalised by the mean
and peak of the utterance's first :attr:`lookahead_ms` of audio (the whole utterance is not known
yet), and the audio pyramid is read at column ``4 f / s`` (no whole-clip ``align_corners`` stretch)
with zero padding at the utterance's end instead of the reference's 5 reflected rows.
"""
from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .constants import FPS, SAMPLE_RATE
from .errors import InputError
from .keypoints import Keypoints

RETURN_FRAMES = 5
"""Frames over which the pose eases back to idle after an utterance ends (not after an interruption)."""

IDLE_ROTATION = 0.03
"""Peak head roll of the idle motion, radians (about 1.7 degrees)."""

IDLE_SHIFT = 0.015
"""Peak idle translation, in keypoint coordinates ([-1, 1] across the crop: 0.2 % of the crop per 0.004)."""

_ENCODER_CHUNK = 32
"""Audio-encoder chunk of the live pyramid (rows; the encoder's stride): the least lookahead."""

_LOGFBANK_CHUNK = 4
"""logfbank rows computed per batch (one 25-fps frame)."""


@dataclass
class LiveFrame:
    """One output frame and the speech that plays during it.

    Attributes:
        image: ``(H, W, 3)`` uint8 RGB: the whole photo with the face pasted (``options.frame == "full"``) or
            the renderer's square crop (``2 S`` with ``options.enhance``); ``None`` from :meth:`LiveSession.step`
            until :meth:`LiveSession.render` draws it.
        audio: ``(n,)`` float32 16 kHz samples in [-1, 1] played during this frame (zeros when idle);
            ``n = round((k + 1) 16000 / fps) - round(k 16000 / fps)`` for the session's k-th frame.
        index: the frame's number in the session (0, 1, ...); it starts at ``index / fps`` seconds.
        speaking: whether the frame is driven by speech (False: idle or easing back to idle).
        speech_time_s: for speaking frames, where in the utterance the frame starts, seconds (from its audio).
        keypoint_time_s: for speaking frames, the time of the MS-Sync keypoint frame shown (``t / 25``).
    """

    image: np.ndarray
    audio: np.ndarray
    index: int
    speaking: bool
    speech_time_s: Optional[float] = None
    keypoint_time_s: Optional[float] = None
    keypoints: Optional[Keypoints] = field(default=None, repr=False)
    """The frame's driving keypoints ``(1, K, ...)`` on the device, as rendered (head motion scaled)."""


class _Utterance:
    """One stretch of speech: its 16 kHz samples, logfbank rows and MS-Sync state."""

    def __init__(self, session: "LiveSession", kp_start: Keypoints) -> None:
        from .mssync.inference import build_warmup_input
        from .mssync.windowed import AudioPyramidStream, Rollout

        self.session = session
        model = session._model
        param = next(model.parameters())
        self.samples: list[np.ndarray] = []   # not yet emitted
        self.queued = 0                       # samples not yet emitted
        self.received = 0                     # samples received in all
        self.emitted = 0                      # samples emitted with frames
        self.frames_out = 0                   # output frames of this utterance emitted
        self.ended = False
        self.stream = None                    # LogfbankStream once normalised
        self.head: list[np.ndarray] = []      # samples before the normalisation is fixed
        self.rows_in = 0                      # logfbank rows given to the pyramid
        self.prepad = 4 * (model.config.obs_len - 1)
        self.first_rows: list[np.ndarray] = []
        self.pyramid = AudioPyramidStream(model.encoder_a, None, None, device=param.device, dtype=param.dtype,
                                          chunk_rows=_ENCODER_CHUNK)
        with torch.inference_mode():
            inpt = build_warmup_input(kp_start.to(param.device, param.dtype), obs_len=model.config.obs_len,
                                      num_kp=model.config.num_kp)
            self.rollout = Rollout(model, inpt, self.pyramid)
        self.kp_frames: list[Keypoints] = []  # MS-Sync frames made, from index kp_base
        self.kp_base = 0

    # -- audio in --------------------------------------------------------------------------------
    def add(self, samples: np.ndarray) -> None:
        self.samples.append(samples)
        self.queued += len(samples)
        self.received += len(samples)
        if self.stream is None:
            self.head.append(samples)
            if self.received >= self.session._norm_samples or self.ended:
                self._start_features()
        else:
            self._rows(self.stream.feed(samples))

    def end(self) -> None:
        if self.ended:
            return
        self.ended = True
        if self.stream is None:
            if not self.received:
                return
            self._start_features()
        self._rows(self.stream.finish())
        if self.first_rows:  # fewer rows than the mirrored warm-up needs: mirror what there is
            self._flush_first(force=True)
        self.pyramid.end()

    def _start_features(self) -> None:
        from .audio import LogfbankStream, SILENCE_PEAK

        head = np.concatenate(self.head)
        mean = float(np.mean(head, dtype=np.float64))
        peak = max(float(np.max(np.abs(head.astype(np.float64) - mean))), SILENCE_PEAK)
        self.stream = LogfbankStream(None, mean, peak, chunk_frames=_LOGFBANK_CHUNK)
        self.head = []
        self._rows(self.stream.feed(head))

    def _rows(self, batches: list[np.ndarray]) -> None:
        for rows in batches:
            if self.rows_in < self.prepad or self.first_rows:
                self.first_rows.append(rows)
                self._flush_first()
            else:
                self.pyramid.push(torch.from_numpy(rows).to(torch.float32))
            self.rows_in += len(rows)

    def _flush_first(self, force: bool = False) -> None:
        rows = np.concatenate(self.first_rows)
        if len(rows) < self.prepad and not force:
            return
        head = torch.from_numpy(rows).to(torch.float32)
        mirror = head[:self.prepad].flip(0)
        if len(mirror) < self.prepad:  # a very short utterance: repeat to the warm-up's length
            mirror = mirror.repeat(-(-self.prepad // max(1, len(mirror))), 1)[:self.prepad]
        self.pyramid.push(mirror)
        self.pyramid.push(head)
        self.first_rows = []

    # -- frames out ------------------------------------------------------------------------------
    def keypoint_frames_available(self) -> int:
        """MS-Sync frames whose audio (with the lookahead) has arrived; all frames once ended."""
        if self.ended:
            return max(1, -(-self.received // (SAMPLE_RATE // FPS)))
        rows = self.pyramid.rows_received
        frames = self.session._frames_for_rows
        n = bisect.bisect_right(frames, rows)  # the table is non-decreasing
        if n == len(frames):  # beyond the precomputed table: extend it
            return self.session._extend_table(rows)
        return n

    def keypoint(self, t: int) -> Keypoints:
        """MS-Sync keypoint frame ``t`` (made when needed; frames before ``t`` are dropped)."""
        while self.kp_base + len(self.kp_frames) <= t:
            with torch.inference_mode():
                packed = self.rollout.advance(1)
            self.kp_frames.append(Keypoints.unpack(packed))
        drop = t - self.kp_base
        if drop > 0:
            self.kp_frames = self.kp_frames[drop:]
            self.kp_base = t
        return self.kp_frames[0]

    def take_audio(self, n: int) -> np.ndarray:
        out = np.zeros(n, np.float32)
        got = 0
        while got < n and self.samples:
            head = self.samples[0]
            k = min(n - got, len(head))
            out[got:got + k] = head[:k]
            got += k
            if k == len(head):
                self.samples.pop(0)
            else:
                self.samples[0] = head[k:]
        self.queued -= got
        self.emitted += got
        return out


class LiveSession:
    """A session of live talking-head video: a prepared photo + models; speech in, frames + speech out.

    Args:
        pipeline: a :class:`talkhead.pipeline.Pipeline` (its renderer, MS-Sync, landmarker, device and
            ``frame``/``crop``/``face_index`` options); its models load on the first :meth:`set_photo`.
        fps: output frame rate (any positive rate; MS-Sync's 25-fps keypoints are sampled at it).
        seed: of the idle motion's phases.

    Not thread-safe: push and pull from one thread (or guard the session with a lock).

    Raises:
        InputError: ``fps`` not a positive finite number.
    """

    def __init__(self, pipeline, *, fps: float = FPS, seed: int = 0) -> None:
        if not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
            raise InputError(f"fps must be a positive number, got {fps!r}")
        self.pipeline = pipeline
        self.fps = float(fps)
        self._rng = np.random.default_rng(seed)
        self._phases = self._rng.uniform(0, 2 * math.pi, 4)
        self._stages = None                   # pipeline.PhotoStages of the photo
        self._encoding = None
        self._model = None
        self._index = 0
        self._utterances: deque[_Utterance] = deque()
        self._to16k = None                    # audio.ToMono16k of the chunks' rate and channels
        self._samples_in = 0
        self._samples_out = 0
        self._last_kp: Optional[Keypoints] = None
        self._return_from: Optional[Keypoints] = None
        self._return_left = 0
        self._frames_for_rows: list[int] = []

    # -- setup ---------------------------------------------------------------------------------
    def set_photo(self, photo: str | Path) -> None:
        """Prepare a photo (face found, cropped, keypoints detected, source encoded). On any error the
        session keeps its previous photo (if any) and stays usable.

        Raises:
            InputError / ImageError / NoFaceError: a bad photo. DownloadError / CheckpointError: models.
        """
        pipe = self.pipeline
        with torch.inference_mode():
            stages = pipe.photo_stages(pipe.prepare_source(photo, motion=True))
        model = getattr(pipe.motion, "model", None)
        if model is None:
            raise InputError("the live session needs MS-Sync as the pipeline's motion generator")
        self._stages, self._encoding = stages, stages.encoding
        if self._model is not model:
            self._model = model
            self._build_lookahead_table()
        self.interrupt()

    @property
    def frame_size(self) -> tuple[int, int]:
        """``(width, height)`` of the frames :meth:`pull` returns (after :meth:`set_photo`)."""
        self._require_photo()
        return self._stages.frame_size

    # -- lookahead -----------------------------------------------------------------------------
    def _pyramid_frame(self, t: int) -> int:
        obs = self._model.config.obs_len
        return max(obs, t + obs - 1)

    def _build_lookahead_table(self, upto: int = 256) -> None:
        from .mssync.windowed import AudioPyramidStream

        probe = AudioPyramidStream(self._model.encoder_a, None, None, device=torch.device("cpu"),
                                   dtype=torch.float32, chunk_rows=_ENCODER_CHUNK)
        self._probe = probe
        self._frames_for_rows = [probe.rows_needed(self._pyramid_frame(t)) for t in range(upto)]

    def _extend_table(self, rows: int) -> int:
        t = len(self._frames_for_rows)
        while True:
            need = self._probe.rows_needed(self._pyramid_frame(t))
            self._frames_for_rows.append(need)
            if need > rows:
                return t
            t += 1

    @property
    def lookahead_ms(self) -> float:
        """The most audio (ms) beyond a speech frame's own end that must have arrived before the frame
        can be emitted (MS-Sync's encoder reach + the pyramid's coarsest stride), for this session's
        model; the added latency is this plus one frame and the rendering time."""
        self._require_model()
        prepad = 4 * (self._model.config.obs_len - 1)
        worst = 0.0
        for t in range(2, min(len(self._frames_for_rows), 200)):
            rows = self._frames_for_rows[t] - prepad           # logfbank rows needed
            samples = (rows - 1) * 160 + 400
            worst = max(worst, samples - (t + 1) * (SAMPLE_RATE // FPS))
        return 1000.0 * worst / SAMPLE_RATE

    @property
    def _norm_samples(self) -> int:
        return int(round(self.lookahead_ms / 1000 * SAMPLE_RATE)) + SAMPLE_RATE // FPS

    # -- speech in -------------------------------------------------------------------------------
    def push(self, samples, sample_rate: int) -> None:
        """Queue speech: ``(n,)`` or ``(n, channels)`` int16 or float (in [-1, 1]) samples at ``sample_rate`` Hz.

        Chunks may have any size and rate (channels averaged, then resampled to 16 kHz, streamed:
        :class:`talkhead.audio.ToMono16k`; a change of rate or channel count flushes the previous
        resampler). Checked before anything is queued, so a bad chunk changes nothing.

        Raises:
            InputError: not an array of int16/float samples, a sample rate that is not a positive
                integer, more than 2 dimensions, or no photo set yet. AudioError: NaN or infinite
                samples, more than :data:`talkhead.audio.MAX_CHANNELS` channels.
        """
        from .audio import ToMono16k

        x = self._check_chunk(samples, sample_rate)
        self._require_model()
        rate, channels = int(sample_rate), x.shape[1]
        old = self._to16k
        same = old is not None and (old.rate, old.channels) == (rate, channels)
        conv = old if same else ToMono16k("speech chunk", rate, channels)
        mono = conv.feed(x)                   # raises before any state changes
        if not same:
            self._to16k = conv
            if old is not None:
                mono = np.concatenate([old.finish(), mono])
        self._queue(mono)

    def _queue(self, mono: np.ndarray) -> None:
        if not mono.size:
            return
        if not self._utterances or self._utterances[-1].ended:
            self._utterances.append(_Utterance(self, self._idle_pose(self._index)))
        self._utterances[-1].add(mono.astype(np.float32, copy=False))
        self._samples_in += len(mono)

    @staticmethod
    def _check_chunk(samples, sample_rate) -> np.ndarray:
        """The chunk as ``(n, channels)`` float32 (int16 scaled by 1/32768); finiteness is checked by the
        converter."""
        if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
            raise InputError(f"sample_rate must be a positive integer (Hz), got {sample_rate!r}")
        x = np.asarray(samples) if not isinstance(samples, torch.Tensor) else samples.detach().cpu().numpy()
        if x.dtype == np.int16:
            x = x.astype(np.float32) / 32768.0
        elif x.dtype in (np.float32, np.float64, np.float16):
            x = x.astype(np.float32)
        else:
            raise InputError(f"speech samples must be int16 or float (in [-1, 1]), got dtype {x.dtype}")
        if x.ndim == 1:
            x = x[:, None]
        elif x.ndim != 2:
            raise InputError(f"speech samples must have shape (n,) or (n, channels), got {x.shape}")
        return x

    def end_speech(self) -> None:
        """The speech pushed so far is a complete utterance: its last frames no longer wait for lookahead."""
        if self._to16k is not None:
            tail, self._to16k = self._to16k.finish(), None
            if self._utterances and not self._utterances[-1].ended:
                self._queue(tail)
        if self._utterances:
            self._utterances[-1].end()

    def interrupt(self) -> None:
        """Drop all queued speech (and the resampler's state): the next frame is idle."""
        self._utterances.clear()
        self._to16k = None
        self._return_left = 0
        self._samples_in = self._samples_out  # the dropped speech will never play

    @property
    def queued_s(self) -> float:
        """Seconds of speech queued and not yet emitted (16 kHz samples)."""
        return sum(u.queued for u in self._utterances) / SAMPLE_RATE

    @property
    def samples_in(self) -> int:
        """16 kHz speech samples queued so far in the session (an interruption sets it back to
        :attr:`samples_out`: the speech it dropped will never play)."""
        return self._samples_in

    @property
    def samples_out(self) -> int:
        """16 kHz speech samples emitted with frames so far (the silence padding an utterance's last frame
        is not counted). The speech queued before a point has played once this reaches that point's
        :attr:`samples_in`."""
        return self._samples_out

    # -- frames out ------------------------------------------------------------------------------
    def pull(self) -> LiveFrame:
        """The next frame and the audio that plays during it: :meth:`step`, then :meth:`render`.

        A speech frame when the queued speech's next frame has its lookahead (or the utterance ended);
        otherwise an idle frame with silent audio (an utterance waiting for its lookahead keeps its
        place: its speech is delayed, never cut).

        Raises:
            InputError: no photo set yet (:meth:`set_photo`). NonFiniteError: NaN/inf keypoints or frames.
        """
        frame = self.step()
        frame.image = self.render(frame.keypoints)
        return frame

    def step(self) -> LiveFrame:
        """Advance one frame without drawing it: its audio, its keypoints (MS-Sync run as needed) and
        flags, ``image=None``. :meth:`render` draws it; a caller that must not lose the speech when
        drawing fails (the Pipecat service) plays the audio either way.

        Raises:
            InputError: no photo set yet. NonFiniteError: ``stage="keypoints"``: NaN/inf generated keypoints.
        """
        from .pipeline import speech_keypoint_windows

        self._require_photo()
        k = self._index
        n_audio = int(round((k + 1) * SAMPLE_RATE / self.fps)) - int(round(k * SAMPLE_RATE / self.fps))
        utt = self._utterances[0] if self._utterances else None
        if utt is not None and utt.queued == 0 and utt.ended:
            self._utterances.popleft()
            self._return_from, self._return_left = self._last_kp, RETURN_FRAMES
            utt = self._utterances[0] if self._utterances else None
        frame = None
        if utt is not None:
            m = utt.frames_out
            t = int(math.floor(m * FPS / self.fps))
            if t < utt.keypoint_frames_available() and (utt.queued > 0 or utt.ended):
                kp = next(speech_keypoint_windows(self.pipeline, self._stages.kp_source, [utt.keypoint(t)]))
                speech_time = utt.emitted / SAMPLE_RATE
                before = utt.emitted
                audio = utt.take_audio(n_audio)
                self._samples_out += utt.emitted - before
                utt.frames_out += 1
                self._last_kp = kp
                self._return_left = 0
                frame = LiveFrame(None, audio, k, True, speech_time, t / FPS, keypoints=kp)
        if frame is None:
            kp = self._idle_pose(k, self.pipeline.options.motion_scale)
            if self._return_left > 0 and self._return_from is not None:
                w = self._return_left / (RETURN_FRAMES + 1)
                kp = Keypoints(w * self._return_from.value + (1 - w) * kp.value,
                               w * self._return_from.jacobian + (1 - w) * kp.jacobian)
                self._return_left -= 1
            frame = LiveFrame(None, np.zeros(n_audio, np.float32), k, False, keypoints=kp)
        self._index += 1
        return frame

    def _idle_pose(self, k: int, scale: float = 1.0) -> Keypoints:
        """The idle keypoints at output frame ``k``: kp_source under a small similarity (roll, shift), its
        angle and shift times ``scale`` (``options.motion_scale`` for the frames shown: a similarity of
        kp_source scaled as :func:`talkhead.keypoints.scale_head_motion` scales one; MS-Sync's warm-up
        takes the unscaled pose, as ``animate``'s generator sees the unscaled motion)."""
        t = k / self.fps
        p = self._phases
        angle = scale * IDLE_ROTATION * (0.6 * math.sin(2 * math.pi * 0.13 * t + p[0])
                                         + 0.4 * math.sin(2 * math.pi * 0.31 * t + p[1]))
        dx = scale * IDLE_SHIFT * math.sin(2 * math.pi * 0.17 * t + p[2])
        dy = scale * IDLE_SHIFT * 0.6 * math.sin(2 * math.pi * 0.23 * t + p[3])
        src = self._stages.kp_source
        c, s = math.cos(angle), math.sin(angle)
        rot = torch.tensor([[c, -s], [s, c]], dtype=src.value.dtype, device=src.value.device)
        centre = src.value.mean(dim=1, keepdim=True)
        shift = torch.tensor([dx, dy], dtype=src.value.dtype, device=src.value.device)
        value = (src.value - centre) @ rot.T + centre + shift
        jac = None if src.jacobian is None else rot @ src.jacobian
        return Keypoints(value, jac)

    def render(self, kp: Keypoints) -> np.ndarray:
        """Draw driving keypoints ``(1, K, ...)`` of this photo: render, restore (``options.enhance``), paste
        back (``options.frame == "full"``) -> ``(H, W, 3)`` uint8 RGB (:attr:`frame_size`).

        Raises:
            InputError: no photo set yet. NonFiniteError: ``stage="render"`` / ``"restore"``: NaN/inf frames.
        """
        from .pipeline import host_frames

        self._require_photo()
        pipe, stages = self.pipeline, self._stages
        with torch.inference_mode():
            frames = pipe.render_batch(self._encoding, kp.to(pipe.device), stages.restore, first=self._index - 1)
        if stages.compositor is None:
            return host_frames(frames, uint8=True)[0]
        return stages.compositor.paste(host_frames(frames, uint8=False))[0]

    def _require_photo(self) -> None:
        if self._stages is None:
            raise InputError("no photo set: call set_photo(photo) before pulling frames")

    def _require_model(self) -> None:
        if self._model is None:
            raise InputError("no photo set: call set_photo(photo) first (it loads the models)")


__all__ = ["LiveSession", "LiveFrame", "RETURN_FRAMES"]
