"""talkhead.integrations.pipecat: a real Pipecat pipeline in-process (no network, no transport) with the
avatar service and the tiny models.

The service's frame clock is stepped by the test (:class:`GatedClock`), and every wait is on an event the
pipeline produces (a frame reaching the sink), never on time: frame counts and their order are exact.
"""
from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("pipecat", reason="pipecat-ai is not installed (the pipecat extra: pip install 'talkhead[pipecat]')")

from pipecat.frames.frames import (  # noqa: E402
    EndFrame,
    InterruptionFrame,
    OutputImageRawFrame,
    StartFrame,
    TextFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from pipecat.pipeline.pipeline import Pipeline as PipecatPipeline  # noqa: E402
from pipecat.pipeline.worker import PipelineParams, PipelineWorker  # noqa: E402
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor  # noqa: E402
from pipecat.workers.runner import WorkerRunner  # noqa: E402

from helpers import ASTRONAUT, SPEECH, ToyRenderer, astronaut_face  # noqa: E402
from talkhead.integrations.pipecat import METADATA_KEY, SPEECH_RATE, TalkheadAvatarService  # noqa: E402
from talkhead.live import LiveSession  # noqa: E402
from talkhead.options import AnimateOptions  # noqa: E402
from talkhead.pipeline import Pipeline  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TTS_RATE = 24000
CHUNK = 480  # 20 ms of 24 kHz TTS audio


def _faces(image):
    return [] if float(image.std()) < 1 else astronaut_face(image)


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """The test clip as a 24 kHz int16 TTS would deliver it."""
    import soxr

    x, sr = sf.read(SPEECH, dtype="float32")
    return np.round(soxr.resample(x, sr, TTS_RATE) * 32767).astype(np.int16)


class GatedClock:
    """Frame ``k`` may be made once the test has allowed more than ``k`` frames."""

    def __init__(self) -> None:
        self.allowed = 0
        self._cond = asyncio.Condition()

    async def wait(self, k: int) -> None:
        async with self._cond:
            await self._cond.wait_for(lambda: k < self.allowed)

    async def allow(self, n: float) -> None:
        async with self._cond:
            self.allowed = n
            self._cond.notify_all()


class Sink(FrameProcessor):
    """Keeps every frame that reaches the end of the pipeline (downstream, StartFrame aside)."""

    def __init__(self) -> None:
        super().__init__()
        self.frames: list = []
        self._cond = asyncio.Condition()

    async def process_frame(self, frame, direction):
        await super().process_frame(frame, direction)
        if direction == FrameDirection.DOWNSTREAM and not isinstance(frame, StartFrame):
            async with self._cond:
                self.frames.append(frame)
                self._cond.notify_all()
        await self.push_frame(frame, direction)

    async def until(self, predicate) -> None:
        async with self._cond:
            await self._cond.wait_for(lambda: predicate(self.frames))

    def images(self) -> list:
        return [f for f in self.frames if isinstance(f, OutputImageRawFrame)]


def _images(n):
    return lambda frames: sum(isinstance(f, OutputImageRawFrame) for f in frames) >= n


def _seen(frame):
    return lambda frames: any(f is frame for f in frames)


class Harness:
    """The avatar service between a source and a :class:`Sink` in a real Pipecat pipeline worker."""

    def __init__(self, session: LiveSession) -> None:
        self.clock = GatedClock()
        self.service = TalkheadAvatarService(session, clock=self.clock)
        self.sink = Sink()
        self.worker = PipelineWorker(PipecatPipeline([self.service, self.sink]), params=PipelineParams(),
                                     cancel_on_idle_timeout=False)
        self.started = asyncio.Event()

        @self.worker.event_handler("on_pipeline_started")
        async def _started(worker, frame):
            self.started.set()

    async def run(self, script) -> None:
        async def drive():
            await self.started.wait()
            await script(self)

        runner = WorkerRunner()
        await runner.add_workers(self.worker)
        await asyncio.wait_for(asyncio.gather(runner.run(), drive()), timeout=300)  # a hang fails, not a timing

    async def queue(self, *frames) -> None:
        for frame in frames:
            await self.worker.queue_frame(frame)

    async def speak(self, pcm: np.ndarray) -> TextFrame:
        """TTS started, the audio in 20 ms chunks, TTS stopped, then a marker: when the marker reaches the
        sink, the service has taken all of it (frames are processed in order)."""
        await self.queue(TTSStartedFrame(context_id="c1"))
        for i in range(0, len(pcm), CHUNK):
            await self.queue(TTSAudioRawFrame(pcm[i:i + CHUNK].tobytes(), TTS_RATE, 1, context_id="c1"))
        marker = TextFrame("marker")
        await self.queue(TTSStoppedFrame(context_id="c1"), marker)
        await self.sink.until(_seen(marker))
        return marker


def _meta(frame):
    return frame.metadata[METADATA_KEY]


def _audio_out(frames) -> list:
    return [f for f in frames if isinstance(f, TTSAudioRawFrame)]


def _expected(pcm: np.ndarray) -> np.ndarray:
    import soxr

    return soxr.resample(pcm.astype(np.float32) / 32768, TTS_RATE, SPEECH_RATE)


@pytest.fixture(scope="module")
def tiny_pipeline(tiny_models_dir):
    opts = AnimateOptions(models_dir=str(tiny_models_dir), device="cpu", offline=True, frame="crop")
    return Pipeline(opts, landmarker=_faces)


def _session(pipeline) -> LiveSession:
    session = LiveSession(pipeline, fps=25)
    session.set_photo(ASTRONAUT)
    return session


def test_speech_in_video_and_the_same_speech_out_once(tiny_pipeline, speech):
    """Idle frames, then one speaking frame per 40 ms of speech, each followed by exactly its audio at
    16 kHz; the input copy does not come out; TTSStoppedFrame after the speech's last frame."""
    pcm = speech[:int(1.2 * TTS_RATE)]
    session = _session(tiny_pipeline)
    h = Harness(session)

    async def script(h):
        await h.clock.allow(3)
        await h.sink.until(_images(3))
        await h.speak(pcm)
        await h.clock.allow(math.inf)
        await h.queue(EndFrame())

    asyncio.run(h.run(script))
    frames = h.sink.frames
    images = h.sink.images()
    assert all(f.size == (64, 64) and f.format == "RGB" and len(f.image) == 64 * 64 * 3 for f in images)
    assert [_meta(f)["index"] for f in images] == list(range(len(images)))      # one image per frame, no gap
    assert not any(_meta(f)["speaking"] for f in images[:3])                     # idle before the speech
    speaking = [f for f in images if _meta(f)["speaking"]]
    first = images.index(speaking[0])
    assert images[first:first + len(speaking)] == speaking                       # one unbroken stretch
    assert session.samples_out == session.samples_in and abs(session.samples_in - 19200) <= 1
    assert len(speaking) == math.ceil(session.samples_in / 640) == 30            # frames as long as the speech
    out = _audio_out(frames)
    assert all(f.sample_rate == SPEECH_RATE and f.num_channels == 1 and f.context_id == "c1" for f in out)
    assert len(out) == len(speaking)                                             # the input copy swallowed
    for image, audio in zip(speaking, out):                                      # each image, then its audio
        assert frames.index(audio) == frames.index(image) + 1 and _meta(audio) == _meta(image)
    heard = np.concatenate([np.frombuffer(f.audio, np.int16) for f in out]).astype(np.float32) / 32768
    assert len(heard) == 30 * 640 and not heard[session.samples_in:].any()       # the last frame padded
    expected = _expected(pcm)
    n = min(len(expected), session.samples_in) - 200
    np.testing.assert_allclose(heard[:n], expected[:n], atol=2e-3)                # once, whole, in order
    stops = [i for i, f in enumerate(frames) if isinstance(f, TTSStoppedFrame)]
    assert len(stops) == 1 and stops[0] == frames.index(out[-1]) + 1              # held until the speech played
    assert frames.index(next(f for f in frames if isinstance(f, TTSStartedFrame))) < frames.index(speaking[0])


def test_interruption_drops_the_speech_and_idles_next_frame(tiny_pipeline, speech):
    session = _session(tiny_pipeline)
    h = Harness(session)
    record = {}

    async def script(h):
        await h.clock.allow(3)
        await h.sink.until(_images(3))
        await h.speak(speech)                                                    # 4.8 s
        await h.clock.allow(13)
        await h.sink.until(_images(13))
        interruption = InterruptionFrame()
        await h.queue(interruption)
        await h.sink.until(_seen(interruption))
        record["queued_after"] = session.queued_s
        await h.clock.allow(16)
        await h.sink.until(_images(16))
        record["cut"] = len(h.sink.frames)
        await h.speak(speech[:int(0.4 * TTS_RATE)])                              # speech after it plays again
        await h.clock.allow(math.inf)
        await h.queue(EndFrame())

    asyncio.run(h.run(script))
    frames = h.sink.frames
    images = h.sink.images()
    assert [_meta(f)["speaking"] for f in images[:13]] == [False] * 3 + [True] * 10
    assert record["queued_after"] == 0
    at = next(i for i, f in enumerate(frames) if isinstance(f, InterruptionFrame))
    after = frames[at:record["cut"]]
    assert [_meta(f)["speaking"] for f in after if isinstance(f, OutputImageRawFrame)] == [False] * 3
    assert not _audio_out(after) and not any(isinstance(f, TTSStoppedFrame) for f in after)
    later = frames[record["cut"]:]
    assert sum(_meta(f)["speaking"] for f in later if isinstance(f, OutputImageRawFrame)) == 10
    assert sum(isinstance(f, TTSStoppedFrame) for f in frames) == 1              # only the second one's


class FailingRenderer(ToyRenderer):
    """The toy renderer, failing on every render once ``fail`` is set."""

    fail = False

    def render(self, encoding, kp_driving):
        if self.fail:
            raise RuntimeError("out of memory (a stand-in)")
        return super().render(encoding, kp_driving)


def test_a_rendering_failure_still_passes_the_audio(mssync_tiny_dir, speech):
    from loguru import logger

    from talkhead.mssync import MSSyncMotion, load_mssync

    renderer = FailingRenderer()
    pipeline = Pipeline(AnimateOptions(device="cpu", frame="crop", models_dir="unused"), renderer=renderer,
                        motion=MSSyncMotion(load_mssync(mssync_tiny_dir)), landmarker=astronaut_face)
    session = _session(pipeline)
    h = Harness(session)
    pcm = speech[:int(0.8 * TTS_RATE)]
    errors: list[str] = []
    sink_id = logger.add(lambda m: errors.append(str(m)), level="ERROR")

    async def script(h):
        await h.clock.allow(2)
        await h.sink.until(_images(2))
        await h.speak(pcm)
        renderer.fail = True
        await h.clock.allow(math.inf)
        await h.queue(EndFrame())

    try:
        asyncio.run(h.run(script))
    finally:
        logger.remove(sink_id)
    frames = h.sink.frames
    out = _audio_out(frames)
    assert len(out) == 20                                                        # all the speech's frames
    heard = np.concatenate([np.frombuffer(f.audio, np.int16) for f in out]).astype(np.float32) / 32768
    expected = _expected(pcm)
    n = min(len(expected), session.samples_in) - 200
    np.testing.assert_allclose(heard[:n], expected[:n], atol=2e-3)
    assert isinstance(frames[frames.index(out[-1]) + 1], TTSStoppedFrame)
    images = h.sink.images()
    assert all(f.image == images[1].image for f in images[2:])                   # the last good image again
    assert len([e for e in errors if "rendering failed" in e]) == 1              # one line, not one per frame


def test_the_example_bot_runs_as_the_readme_says(tiny_models_dir, tmp_path, monkeypatch):
    """The README's command for examples/pipecat_bot.py, its arguments unchanged (from the repository
    root), with the tiny models and a shorter run added: an MP4 of idle and speaking frames with the
    speech's audio track."""
    import importlib.util
    import re
    import shlex

    from helpers import ROOT, probe

    section = (ROOT / "README.md").read_text(encoding="utf-8").split("\n## Pipecat avatar service", 1)[1]
    command = re.search(r"^python (examples/pipecat_bot\.py .*)$", section, flags=re.M).group(1)
    script, *argv = shlex.split(command)
    spec = importlib.util.spec_from_file_location("pipecat_bot", ROOT / script)
    bot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bot)
    monkeypatch.chdir(ROOT)
    out = tmp_path / "bot.mp4"
    argv = [a.replace("bot.mp4", str(out)) for a in argv]
    bot.main([*argv, "--models-dir", str(tiny_models_dir), "--device", "cpu", "--landmarker", "dlib",
              "--seconds", "0.6", "--idle", "0"])
    info = probe(out)
    assert info.num_frames >= 15 and info.has_audio
