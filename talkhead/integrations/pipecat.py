"""A Pipecat avatar service: talkhead's live session (:class:`talkhead.live.LiveSession`) between a voice
agent's TTS and its output transport, open and local (``pip install 'talkhead[pipecat]'``).

::

    from pipecat.pipeline.pipeline import Pipeline as PipecatPipeline
    from talkhead import AnimateOptions, Pipeline
    from talkhead.live import LiveSession
    from talkhead.integrations.pipecat import TalkheadAvatarService

    session = LiveSession(Pipeline(AnimateOptions(device="cuda")), fps=transport_params.video_out_framerate)
    session.set_photo("photo.png")
    avatar = TalkheadAvatarService(session)
    pipeline = PipecatPipeline([transport.input(), stt, user_agg, llm, tts, avatar, transport.output(), assistant_agg])

The contract of Pipecat's own avatar services (Simli, Tavus, HeyGen), kept by :class:`TalkheadAvatarService`:

- **Placed after the TTS.** ``TTSAudioRawFrame`` in (any rate and channel count: resampled to 16 kHz
  mono by the session, :class:`talkhead.audio.ToMono16k`); the input copy is swallowed.
- **Video out, continuously.** One RGB ``OutputImageRawFrame`` per frame at the session's frame rate
  (make it the transport's ``video_out_framerate``), paced in real time by :class:`RealTimeClock`, idle
  frames included (the session's idle motion) whether or not anyone speaks.
- **The speech re-emitted in sync.** Each speaking frame's own audio follows its image as a
  ``TTSAudioRawFrame`` (16 kHz mono int16, the input's ``context_id``), so the transport plays exactly
  the audio of the frame it shows (the session's frames carry their audio: they cannot drift apart). The
  speech comes out later than it went in by MS-Sync's lookahead (:attr:`LiveSession.lookahead_ms`,
  ~1.5 s; less when the TTS delivers faster than real time) plus the rendering time.
- **``TTSStoppedFrame`` held** until the speech queued before it has played (then pushed after the
  frame carrying its last sample), so the transport's "bot stopped speaking" matches what is heard.
- **``InterruptionFrame``** drops the queued speech and the held stops (the frame being drawn is
  dropped too): the next frame is idle. The frame itself is passed on.
- **A rendering failure does not silence the bot:** the frame's audio is still emitted (with the last
  good image again, if any), and one line is logged per run of failures.
- **``EndFrame``** lets the queued speech play out (at the clock's pace), then stops the frames.

Slower than real time (a CPU at full size: ``benchmarks/README.md``, "Live session"), the frames and
their audio come out at the rate they are drawn: the speech plays slowed, with gaps, never out of sync.

Layer 6 (an edge, like the web page); it drives the session from one worker thread (the session is not
thread-safe), so rendering never blocks Pipecat's event loop.
"""
from __future__ import annotations

import asyncio
import functools
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Optional, Protocol

import numpy as np

from ..errors import TalkheadError
from ..live import LiveSession

INSTALL_HINT = "pip install 'talkhead[pipecat]'"
"""The command that installs the service's dependencies (the ``pipecat`` extra: pipecat-ai)."""

try:
    from loguru import logger
    from pipecat.frames.frames import (
        CancelFrame,
        EndFrame,
        Frame,
        InterruptionFrame,
        OutputImageRawFrame,
        StartFrame,
        TTSAudioRawFrame,
        TTSStoppedFrame,
    )
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
except ImportError as exc:  # ModuleNotFoundError, or a broken install of one of its dependencies
    raise TalkheadError(f"the Pipecat avatar service needs the pipecat extra: {INSTALL_HINT}  ({exc})") from None

SPEECH_RATE = 16000
"""Sample rate of the re-emitted speech, Hz (the session's; the transport resamples to its own)."""

METADATA_KEY = "talkhead"
"""Key of the ``metadata`` each emitted image and audio frame carries: ``{"index": k, "speaking": bool}``."""


class FrameClock(Protocol):
    """When the service may make frame ``k`` (``k = 0, 1, ...``)."""

    async def wait(self, k: int) -> None: ...


class RealTimeClock:
    """Paces frame ``k`` at ``t0 + k / fps`` on the event loop's monotonic clock (``t0``: the first frame).

    A producer that falls more than a frame behind (rendering slower than real time) is not made to catch
    up in a burst: the schedule restarts from now.

    Args:
        fps: frames per second, > 0.
    """

    def __init__(self, fps: float) -> None:
        self.period = 1.0 / float(fps)
        self._t0: Optional[float] = None

    async def wait(self, k: int) -> None:
        now = asyncio.get_running_loop().time()
        if self._t0 is None:
            self._t0 = now - k * self.period
        delay = self._t0 + k * self.period - now
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -self.period:
            self._t0 = now - k * self.period


class TalkheadAvatarService(FrameProcessor):
    """Pipecat frame processor: TTS audio in, the talking head's video and the same speech out (see the
    module docstring for the contract).

    Args:
        session: a :class:`talkhead.live.LiveSession` with its photo set (:meth:`LiveSession.set_photo`),
            created with the transport's frame rate (``fps``).
        clock: when each frame is made (:class:`FrameClock`); default :class:`RealTimeClock` at the
            session's rate. Tests pass one they step themselves.
        **kwargs: passed to ``FrameProcessor`` (``name``, ...).

    Raises:
        InputError: the session has no photo set (from :attr:`LiveSession.frame_size`).
    """

    def __init__(self, session: LiveSession, *, clock: Optional[FrameClock] = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.session = session
        self.frame_size = session.frame_size  # (W, H); raises when no photo is set
        self.clock = clock if clock is not None else RealTimeClock(session.fps)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="talkhead-live")
        self._producer: Optional[asyncio.Task] = None
        self._held: deque[tuple[int, TTSStoppedFrame]] = deque()  # (samples_in mark, frame)
        self._context_id: Optional[str] = None
        self._epoch = 0                  # bumped by each interruption: frames made before it are dropped
        self._last_image: Optional[bytes] = None
        self._failing = False
        self._draining: Optional[asyncio.Event] = None

    # -- session calls, one worker thread -----------------------------------------------------------
    async def _call(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._executor, functools.partial(fn, *args))

    # -- frames in ------------------------------------------------------------------------------------
    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        """Route one frame (Pipecat calls this): see the module docstring."""
        await super().process_frame(frame, direction)
        if isinstance(frame, StartFrame):
            await self.push_frame(frame, direction)
            self._start()
        elif isinstance(frame, EndFrame):
            await self._finish()
            await self.push_frame(frame, direction)
        elif isinstance(frame, CancelFrame):
            await self._stop()
            await self.push_frame(frame, direction)
        elif isinstance(frame, InterruptionFrame):
            await self._interrupt()
            await self.push_frame(frame, direction)
        elif isinstance(frame, TTSAudioRawFrame) and direction == FrameDirection.DOWNSTREAM:
            await self._speech(frame)  # the input copy is swallowed: the speech comes out with the frames
        elif isinstance(frame, TTSStoppedFrame) and direction == FrameDirection.DOWNSTREAM:
            mark = await self._call(self._end_speech)
            self._held.append((mark, frame))
        else:
            await self.push_frame(frame, direction)

    def _end_speech(self) -> int:
        self.session.end_speech()
        return self.session.samples_in

    async def _speech(self, frame: TTSAudioRawFrame) -> None:
        pcm = np.frombuffer(frame.audio, dtype=np.int16)
        if frame.num_channels > 1:
            pcm = pcm[:len(pcm) - len(pcm) % frame.num_channels].reshape(-1, frame.num_channels)
        self._context_id = frame.context_id
        try:
            await self._call(self.session.push, pcm, frame.sample_rate)
        except TalkheadError as exc:
            logger.warning(f"{self}: a TTS audio chunk was refused: {exc}")

    async def _interrupt(self) -> None:
        self._epoch += 1
        self._held.clear()
        await self._call(self.session.interrupt)
        self._check_drained()

    # -- frames out -----------------------------------------------------------------------------------
    def _start(self) -> None:
        if self._producer is None:
            self._producer = self.create_task(self._produce(), name=f"{self}::frames")

    async def _stop(self) -> None:
        if self._producer is not None:
            task, self._producer = self._producer, None
            await self.cancel_task(task)

    async def _finish(self) -> None:
        """EndFrame: end the utterance, let the queued speech play out, then stop making frames."""
        await self._call(self.session.end_speech)
        if self._producer is not None:
            self._draining = asyncio.Event()
            self._check_drained()
            await self._draining.wait()
        await self._stop()

    def _played(self) -> bool:
        return not self._held and self.session.samples_out >= self.session.samples_in

    def _check_drained(self) -> None:
        if self._draining is not None and self._played():
            self._draining.set()

    async def _produce(self) -> None:
        k = 0
        while True:
            await self.clock.wait(k)
            try:
                await self._one_frame(k)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the frames must go on: log it, drop the speech that failed
                logger.error(f"{self}: frame {k} failed, the queued speech is dropped: {exc!r}")
                self._held.clear()
                await self._call(self.session.interrupt)
            self._check_drained()
            k += 1

    async def _one_frame(self, k: int) -> None:
        epoch = self._epoch
        frame = await self._call(self.session.step)
        try:
            image = (await self._call(self.session.render, frame.keypoints)).tobytes()
            self._failing = False
        except Exception as exc:
            if not self._failing:
                logger.error(f"{self}: rendering failed from frame {k} on, the speech plays on without new "
                             f"images: {exc!r}")
            self._failing = True
            image = self._last_image
        if epoch != self._epoch:
            return  # interrupted while it was made: its speech is dropped, the next frame is idle
        meta = {"index": frame.index, "speaking": frame.speaking}
        if image is not None:
            self._last_image = image
            out = OutputImageRawFrame(image=image, size=self.frame_size, format="RGB")
            out.metadata[METADATA_KEY] = meta
            await self.push_frame(out)
        if frame.speaking:
            pcm = np.clip(np.rint(frame.audio * 32768.0), -32768, 32767).astype(np.int16)
            audio = TTSAudioRawFrame(audio=pcm.tobytes(), sample_rate=SPEECH_RATE, num_channels=1,
                                     context_id=self._context_id)
            audio.metadata[METADATA_KEY] = meta
            await self.push_frame(audio)
        while self._held and self._held[0][0] <= self.session.samples_out:
            await self.push_frame(self._held.popleft()[1])

    async def cleanup(self) -> None:
        """Stop making frames and release the worker thread (Pipecat calls this at the end)."""
        await super().cleanup()
        await self._stop()
        self._executor.shutdown(wait=False)


__all__ = ["TalkheadAvatarService", "RealTimeClock", "FrameClock", "SPEECH_RATE", "METADATA_KEY", "INSTALL_HINT"]
