"""A Pipecat bot with a talkhead avatar that runs anywhere: no cloud keys, no microphone, no screen.

A WAV file plays the TTS's part (its audio enters the pipeline as ``TTSAudioRawFrame`` chunks, as a TTS
service would send them), :class:`talkhead.integrations.pipecat.TalkheadAvatarService` turns it into
video at the frame rate, and a recorder stands in for the output transport: it writes the frames and the
speech the service re-emitted, as the transport would play them, into an MP4::

    pip install -e '.[pipecat]'
    python examples/pipecat_bot.py --photo examples/astronaut.png --speech examples/speech.wav --out bot.mp4

The models come from ``--models-dir`` (default: ``$TALKHEAD_MODELS`` or ``~/.cache/talkhead``, filled by
``talkhead download``). The video starts with ``--idle`` seconds of idle frames, then the speech, then idle
again until the speech has played; the frames are made in real time when the machine keeps up (on a CPU
at full size it does not: ``--frame crop`` and ``--precision bf16`` are quicker, ``--threads 1`` keeps a
busy shared CPU from stalling, and the run then simply takes longer).

**A real bot.** Keep the service and swap the two stand-ins:

- the WAV -> a TTS service (any Pipecat TTS, e.g. ``CartesiaTTSService``), after your STT and LLM:
  ``Pipeline([transport.input(), stt, user_aggregator, llm, tts, avatar, transport.output(),
  assistant_aggregator])``;
- the recorder -> a transport with video out (``SmallWebRTCTransport``, ``DailyTransport``, ...) whose
  ``TransportParams`` say ``video_out_enabled=True, video_out_is_live=True, video_out_width=W,
  video_out_height=H, video_out_framerate=FPS`` with ``(W, H) = session.frame_size`` and ``FPS`` the
  session's ``fps``. The service already answers Pipecat's ``InterruptionFrame`` (barge-in).
"""
from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

import numpy as np
import soundfile as sf
from pipecat.frames.frames import (
    EndFrame,
    OutputImageRawFrame,
    StartFrame,
    TTSAudioRawFrame,
    TTSStartedFrame,
    TTSStoppedFrame,
)
from pipecat.pipeline.pipeline import Pipeline as PipecatPipeline
from pipecat.pipeline.worker import PipelineParams, PipelineWorker
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from pipecat.workers.runner import WorkerRunner

from talkhead import AnimateOptions, Pipeline
from talkhead.integrations.pipecat import METADATA_KEY, SPEECH_RATE, TalkheadAvatarService
from talkhead.live import LiveSession
from talkhead.video import VideoWriter

HERE = Path(__file__).resolve().parent


class Mp4Recorder(FrameProcessor):
    """Stands in for the output transport: keeps each image and the speech frame that follows it, and at
    the ``EndFrame`` writes them to an MP4 (silence under the idle frames, as a transport plays none)."""

    def __init__(self, out: Path, fps: float) -> None:
        super().__init__()
        self.out, self.fps = out, fps
        self.images: list[np.ndarray] = []
        self.audio: dict[int, np.ndarray] = {}

    async def process_frame(self, frame, direction):
        await super().process_frame(frame, direction)
        if isinstance(frame, OutputImageRawFrame):
            w, h = frame.size
            self.images.append(np.frombuffer(frame.image, np.uint8).reshape(h, w, 3))
        elif isinstance(frame, TTSAudioRawFrame) and METADATA_KEY in frame.metadata:
            self.audio[frame.metadata[METADATA_KEY]["index"]] = np.frombuffer(frame.audio, np.int16)
        elif isinstance(frame, EndFrame):
            self.write()
        if not isinstance(frame, (OutputImageRawFrame, TTSAudioRawFrame)) or direction != FrameDirection.DOWNSTREAM:
            await self.push_frame(frame, direction)

    def write(self) -> None:
        edges = [round(k * SPEECH_RATE / self.fps) for k in range(len(self.images) + 1)]
        track = np.concatenate([self.audio.get(k, np.zeros(edges[k + 1] - edges[k], np.int16))
                                for k in range(len(self.images))])
        h, w = self.images[0].shape[:2]
        with tempfile.TemporaryDirectory() as tmp:
            wav = Path(tmp) / "speech.wav"
            sf.write(wav, track, SPEECH_RATE, subtype="PCM_16")
            with VideoWriter(self.out, size=(w, h), fps=self.fps, audio_path=wav, overwrite=True) as writer:
                writer.write(np.stack(self.images))
        spoken = sum(1 for k in self.audio)
        print(f"wrote {self.out}: {len(self.images)} frames ({spoken} speaking) at {self.fps:g} fps")


async def run(args) -> None:
    options = AnimateOptions(models_dir=args.models_dir, device=args.device, frame=args.frame,
                             landmarker=args.landmarker, precision=args.precision)
    session = LiveSession(Pipeline(options), fps=args.fps)
    session.set_photo(args.photo)
    print(f"session ready: {session.frame_size[0]}x{session.frame_size[1]} at {args.fps:g} fps, "
          f"lookahead {session.lookahead_ms:.0f} ms")
    avatar = TalkheadAvatarService(session)
    recorder = Mp4Recorder(Path(args.out), args.fps)
    worker = PipelineWorker(PipecatPipeline([avatar, recorder]), params=PipelineParams(),
                            cancel_on_idle_timeout=False)
    started = asyncio.Event()

    @worker.event_handler("on_pipeline_started")
    async def _started(worker, frame):
        started.set()

    pcm, rate = sf.read(args.speech, dtype="int16", always_2d=True)
    if args.seconds:
        pcm = pcm[:int(args.seconds * rate)]
    chunk = rate // 50  # 20 ms, as TTS services send it

    async def tts() -> None:
        await started.wait()
        await asyncio.sleep(args.idle)  # the avatar idles until the bot speaks
        await worker.queue_frame(TTSStartedFrame(context_id="wav"))
        for i in range(0, len(pcm), chunk):
            part = pcm[i:i + chunk]
            await worker.queue_frame(TTSAudioRawFrame(part.tobytes(), rate, part.shape[1], context_id="wav"))
        await worker.queue_frames([TTSStoppedFrame(context_id="wav"), EndFrame()])  # ends once it has played

    runner = WorkerRunner(handle_sigint=True)
    await runner.add_workers(worker)
    await asyncio.gather(runner.run(), tts())


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--photo", default=str(HERE / "astronaut.png"))
    ap.add_argument("--speech", default=str(HERE / "speech.wav"), help="plays the TTS's part (any rate)")
    ap.add_argument("--out", default="bot.mp4")
    ap.add_argument("--seconds", type=float, default=0, help="use only the speech's first seconds (0: all)")
    ap.add_argument("--idle", type=float, default=1.0, help="seconds of idle frames before the speech")
    ap.add_argument("--fps", type=float, default=25.0, help="the transport's video_out_framerate")
    ap.add_argument("--models-dir", default=None)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--frame", choices=("full", "crop"), default="full")
    ap.add_argument("--landmarker", default="auto")
    ap.add_argument("--precision", default="fp32", help="fp32, or bf16 (CPUs with native bf16, CUDA) / fp16 (CUDA)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default; 1 on a busy CPU)")
    args = ap.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
