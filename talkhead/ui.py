"""``talkhead ui``: a local web page (Gradio) over :class:`talkhead.pipeline.Pipeline`, also an HTTP API.

The page: drop a face photo and a speech file (or record from the microphone), pick the options
users reach for (motion scale, full photo or crop, face index, device), press *Animate*, watch the
progress bar (the pipeline's ``progress(stage, done, total)`` callback: ``keypoints`` then ``render``
frames) and the video playing while it renders (:meth:`Animator.stream`: segments of
:class:`talkhead.video.SegmentWriter` fed to Gradio's streaming player), then download the MP4. A
*Reenact* tab moves the photo like the face in a driving video (:func:`talkhead.reenact.reenact`,
endpoint ``/reenact``), played the same way. The animate job is also the API endpoint ``/animate``
(answering with the finished MP4), so another program can call it::

    from gradio_client import Client, handle_file
    client = Client("http://127.0.0.1:7860/")
    video = client.predict(handle_file("photo.png"), handle_file("speech.wav"), api_name="/animate")

Life cycle (:func:`serve`): the models load once at start-up (a failure, such as a missing checkpoint,
becomes a message on the page naming the command that fixes it); requests run one at a time on the
loaded components (Gradio's queue, concurrency 1), each in its own temporary folder removed when
the request ends; every file the app keeps (uploads, results) lives under one temporary root that is
removed when the server stops (Ctrl-C or SIGTERM).

Gradio is an optional extra (``pip install 'talkhead[ui]'``) and is imported only in this module,
inside its functions, so ``import talkhead.ui`` works without it and :func:`require_gradio` can say
what to install.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import functools
import os
import queue
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from .constants import DEVICES
from .errors import InputError, TalkheadError
from .options import AnimateOptions
from .video import SEGMENT_S

INSTALL_HINT = "pip install 'talkhead[ui]'"
"""The command that installs the page's dependencies (the ``ui`` extra: gradio)."""

FRAMES = {"full photo": "full", "face crop": "crop"}
"""Page labels of ``AnimateOptions.frame``: the whole photo with the face animated in place, or the crop."""

API_NAME = "animate"
"""Name of the page's event and HTTP endpoint (``Client.predict(..., api_name="/animate")``)."""

REENACT_API_NAME = "reenact"
"""The Reenact tab's endpoint: ``/reenact(photo, driving_video, ...)`` (photo + driving video -> MP4)."""

MAX_UPLOAD_MB = 500
"""Largest upload the page accepts, megabytes (Gradio's ``max_file_size``): about 40 minutes of 1080p
phone video or several hours of WAV speech; bigger files are refused before they are stored."""

TEMP_PREFIX = "talkhead-ui-"
"""Name prefix of a server's temporary root in the system temp folder."""

OWNER_FILE = "owner.pid"
"""File in a temporary root naming the server process that owns it (for :func:`sweep_stale_roots`)."""

PAGE_CSS = "#status { overflow-wrap: anywhere; } #status code { white-space: pre-wrap; }"
"""The status banner wraps at the page's width (long paths and commands included)."""

LOOPBACK = ("127.0.0.1", "localhost", "::1")
"""Hosts that serve this computer only (any other ``--host`` is reachable from the network)."""

STREAM_TOOLS = ("ffmpeg", "ffprobe")
"""What Gradio's streaming video output runs from ``PATH`` (it re-muxes each segment for the browser's
HLS player); without them the page shows each video once it is finished."""


def can_stream() -> bool:
    """Whether the page can play a video while it renders: :data:`STREAM_TOOLS` are on ``PATH``."""
    return all(shutil.which(tool) for tool in STREAM_TOOLS)


WAIT_S = 0.5
"""How often a request that has nothing new for the page yields anyway (seconds): a Stop takes effect there."""


class _Stopped(Exception):
    """Raised in a request's render thread once the request has ended (Stop, a closed page, an error)."""


def require_gradio():
    """Import and return the ``gradio`` module.

    Raises:
        TalkheadError: gradio is not installed (the message is the one-line install command).
    """
    try:
        import gradio
    except ImportError as exc:  # ModuleNotFoundError, or a broken install of one of its dependencies
        raise TalkheadError(f"talkhead ui needs the web-page extra: {INSTALL_HINT}  ({exc})") from None
    return gradio


def request_options(base: AnimateOptions, *, motion_scale: float | None = None, frame: str | None = None,
                    face_index: float | int | None = None, device: str | None = None, enhance: str | None = None,
                    enhance_strength: float | None = None) -> AnimateOptions:
    """The options of one request: ``base`` (the command line's) with the page's choices applied.

    ``motion_scale`` (0 = still head) and ``frame`` (a :data:`FRAMES` label or ``"full"``/``"crop"``)
    override the base, and so do ``enhance`` (``none``/``gfpgan``) and ``enhance_strength`` (the face
    restoration, :mod:`talkhead.restore`). ``None`` keeps the base value; a blank face index means "the largest confident face". The run always writes a fresh
    file in its own folder, so ``overwrite`` is on.

    Raises:
        InputError: a value out of range or not among the choices (AnimateOptions' own checks).
    """
    changes: dict[str, Any] = {"overwrite": True}
    if device is not None:
        changes["device"] = device
    if face_index is not None and face_index != "":
        if float(face_index) != int(float(face_index)):
            raise InputError(f"--face-index must be a whole number, not {face_index}")
        changes["face_index"] = int(float(face_index))
    else:
        changes["face_index"] = None
    if frame is not None:
        changes["frame"] = FRAMES.get(frame, frame)
    if enhance is not None:
        changes["enhance"] = enhance
    if enhance_strength is not None:
        changes["enhance_strength"] = enhance_strength
    if motion_scale is not None:
        changes["motion_scale"] = float(motion_scale)
        changes["still"] = False  # the page's slider decides (--still only set its starting value, 0)
    return dataclasses.replace(base, **changes)


class _ProgressBridge:
    """The pipeline's ``progress(stage, done, total)`` -> Gradio's progress bar (``gr.Progress``)."""

    LABELS = {"keypoints": "keypoints (MS-Sync)", "render": "frames (FOMM + ffmpeg)"}

    def __init__(self, progress: Callable):
        self.progress = progress

    def __call__(self, stage: str, done: int, total: int) -> None:
        self.progress((done, total), desc=self.LABELS.get(stage, stage), unit="frames")


class Animator:
    """The loaded pipeline(s) and the request handler behind the page and the ``/animate`` endpoint.

    Args:
        base: the command line's options (models dir, device, landmarker, ...); the page's
            controls start at these values.
        workdir: folder for the per-request temporary folders (removed after each request).
        pipeline: an already built :class:`~talkhead.pipeline.Pipeline` (tests); default: built
            from ``base``.
        log: one-line status messages (model loading), e.g. printed to the terminal.
        segment_s: length of the segments :meth:`stream` hands out, seconds.
    """

    def __init__(self, base: AnimateOptions, workdir: Path, *, pipeline=None,
                 log: Callable[[str], None] | None = None, segment_s: float = SEGMENT_S):
        self.base = base
        self.segment_s = float(segment_s)
        self.workdir = Path(workdir)
        self.log = log or (lambda msg: None)
        self.load_error: Optional[str] = None
        self._pipeline = pipeline
        self._by_device: dict[str, Any] = {}
        self._restorers: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()  # the queue runs one request at a time; this guards direct callers too
        from .pipeline import SourceCache

        self._sources = SourceCache(capacity=2)  # a request with the last photos again reuses its prepared source

    def load(self) -> "Animator":
        """Load the models (and the landmark backend) once; a failure is kept in :attr:`load_error`.

        The message is the error's own one line(s) (e.g. a missing checkpoint and the
        ``talkhead download`` command that fixes it); the page shows it and every request returns it.

        Raises:
            InputError: the base device is not available (before anything is served).
        """
        from .landmarks import get_landmarker
        from .pipeline import Pipeline

        if self._pipeline is None:  # a bad --device is the command line's error, not the page's
            self._pipeline = Pipeline(self.base, log=self.log)
        try:
            self._pipeline.load()
            if self.base.crop != "none":
                get_landmarker(self.base.landmarker, str(self._pipeline.device), offline=self.base.offline)
            self._by_device[str(self._pipeline.device)] = self._pipeline
            self.load_error = None
        except TalkheadError as exc:
            self.load_error = str(exc)
        return self

    def pipeline_for(self, options: AnimateOptions):
        """A :class:`~talkhead.pipeline.Pipeline` for one request's options, sharing the loaded components.

        Options are frozen, so each request gets its own ``Pipeline(options, renderer=..., motion=...)``
        over the components loaded at start-up. A device other than the start-up one loads the
        models once more, on that device, and keeps them.

        Raises:
            InputError: the requested device is not available.
            CheckpointError / DownloadError: loading for a new device failed.
        """
        from .pipeline import Pipeline

        loaded = self._loaded_for(options.device)
        return Pipeline(options, renderer=loaded.renderer, motion=loaded.motion, landmarker=loaded.landmarker,
                        log=self.log, restorer=self._restorer_for(options, loaded), source_cache=self._sources)

    def _restorer_for(self, options: AnimateOptions, loaded):
        """The face restorer of ``options.enhance`` on ``loaded``'s device, loaded once and kept (``None``
        for ``enhance="none"``).

        Raises:
            InputError: its weights are not installed (names ``talkhead download gfpgan``).
        """
        if options.enhance == "none":
            return None
        key = (str(loaded.device), options.enhance)
        if key not in self._restorers:
            from .pipeline import Pipeline

            self.log(f"loading the {options.enhance} face restorer on {key[0]}")
            opts = dataclasses.replace(self.base, device=options.device, enhance=options.enhance)
            self._restorers[key] = Pipeline(opts, renderer=loaded.renderer, motion=loaded.motion,
                                            log=self.log).restorer
        return self._restorers[key]

    def _loaded_for(self, device: str):
        """The loaded pipeline on ``device`` (loading it once for a device other than the start-up one)."""
        from .devices import resolve_device
        from .pipeline import Pipeline

        key = str(resolve_device(device))
        loaded = self._by_device.get(key)
        if loaded is None:
            self.log(f"loading the models on {key}")
            loaded = Pipeline(dataclasses.replace(self.base, device=device), log=self.log).load()
            self._by_device[key] = loaded
        return loaded

    def run(self, image: str | None, audio: str | None, *, keep: Callable[[Path], str],
            progress: Callable | None = None, **choices) -> str:
        """Animate one (photo, speech) upload; return the kept MP4's path.

        The MP4 is written in a fresh temporary folder under :attr:`workdir`; ``keep(path)`` copies
        it to where the server serves it from (Gradio's cache) before that folder is removed.

        Args:
            image / audio: paths of the uploaded files (``None`` = nothing uploaded).
            keep: ``path -> served path``.
            progress: the pipeline's ``progress(stage, done, total)`` callback.
            **choices: the page's options, see :func:`request_options`.

        Raises:
            TalkheadError: the message the CLI would print for the same input (upload paths shown
                by file name only), the start-up load error, or a missing upload.
        """
        from .pipeline import SpeechMotion

        self._check_uploads(image, audio, "no speech: drop a speech file or record one first")
        options = request_options(self.base, **choices)
        return self._render(image, SpeechMotion(audio), options, "talking", keep=keep, progress=progress)

    def run_reenact(self, photo: str | None, video: str | None, *, keep: Callable[[Path], str],
                    progress: Callable | None = None, relative: bool = True, find_best_frame: bool = False,
                    **choices) -> str:
        """Move the face in one uploaded photo like the face in an uploaded driving video; return the MP4.

        The same pipeline as :meth:`run` with a :class:`talkhead.reenact.VideoMotion` source and
        :class:`~talkhead.options.ReenactOptions` built from the command line's options and the page's
        choices, on the renderer loaded at start-up (FOMM relative motion transfer; the MP4 keeps the
        driving video's frame rate and audio).

        Args:
            photo / video: paths of the uploaded files (``None`` = nothing uploaded).
            keep: ``path -> served path`` (see :meth:`run`).
            progress: the ``progress(stage, done, total)`` callback.
            relative: FOMM ``--relative`` (otherwise the driving keypoints are used as they are).
            find_best_frame: start from the driving frame whose face is closest to the photo's.
            **choices: ``frame``, ``face_index``, ``device``, see :func:`request_options`.

        Raises:
            TalkheadError: as :meth:`run`.
        """
        photo, motion, options = self._reenact_job(photo, video, relative, find_best_frame, choices)
        return self._render(photo, motion, options, "reenacted", keep=keep, progress=progress)

    def _reenact_job(self, photo, video, relative, find_best_frame, choices):
        """``(photo, VideoMotion, ReenactOptions)`` of one reenact request (uploads checked)."""
        from .options import ReenactOptions
        from .reenact import VideoMotion

        self._check_uploads(photo, video, "no driving video: drop a video of a moving face first")
        options = request_options(self.base, **choices)
        common = {f.name: getattr(options, f.name) for f in dataclasses.fields(AnimateOptions)}
        options = ReenactOptions(**common, relative=bool(relative), find_best_frame=bool(find_best_frame))
        return photo, VideoMotion(video), options

    def _check_uploads(self, photo: str | None, driving: str | None, missing: str) -> None:
        """The start-up load error, a missing photo, or a missing speech/video (``missing``), in that order."""
        if self.load_error is not None:
            raise TalkheadError(self.load_error)
        if not photo:
            raise InputError("no photo: drop a face photo (PNG, JPEG, WebP, BMP) first")
        if not driving:
            raise InputError(missing)

    def stream(self, image: str | None, audio: str | None, *, keep: Callable[[Path], str],
               progress: Callable | None = None, segments: bool = True, stop: threading.Event | None = None,
               **choices) -> Iterator[tuple[str, str]]:
        """Animate one (photo, speech) upload, handing out the video while it renders: what the page plays.

        Yields ``("segment", path)`` for each finished segment (:class:`talkhead.video.SegmentWriter`:
        :attr:`segment_s` seconds of H.264 with its slice of the speech, in order; the path is valid until
        the next item is asked for; none with ``segments=False``), ``("wait", "")`` every :data:`WAIT_S`
        while nothing is new, then ``("video", served path)``: the whole MP4, the CLI's, kept with ``keep``
        as in :meth:`run`. Closing the generator early (the page's Stop, a closed tab), or setting ``stop``
        (the page's Stop handler), returns at once (at the next item) and stops the render at its next batch;
        its files are then removed.

        Raises:
            TalkheadError: as :meth:`run` (also after segments were handed out; the MP4 is then never made).
        """
        from .pipeline import SpeechMotion

        self._check_uploads(image, audio, "no speech: drop a speech file or record one first")
        options = request_options(self.base, **choices)
        yield from self._stream(image, SpeechMotion(audio), options, "talking", keep=keep, progress=progress,
                                segment_s=self.segment_s if segments else None, stop=stop)

    def stream_reenact(self, photo: str | None, video: str | None, *, keep: Callable[[Path], str],
                       progress: Callable | None = None, relative: bool = True, find_best_frame: bool = False,
                       segments: bool = True, stop: threading.Event | None = None,
                       **choices) -> Iterator[tuple[str, str]]:
        """:meth:`run_reenact`, handing out the video while it renders, as :meth:`stream` does."""
        photo, motion, options = self._reenact_job(photo, video, relative, find_best_frame, choices)
        yield from self._stream(photo, motion, options, "reenacted", keep=keep, progress=progress,
                                segment_s=self.segment_s if segments else None, stop=stop)

    def _render(self, photo: str, motion, options: AnimateOptions, suffix: str, *, keep: Callable[[Path], str],
                progress: Callable | None) -> str:
        """One request through :meth:`talkhead.pipeline.Pipeline.run`; returns the kept MP4 (:meth:`_stream`
        without segments)."""
        for _, path in self._stream(photo, motion, options, suffix, keep=keep, progress=progress, segment_s=None):
            pass
        return path

    def _stream(self, photo: str, motion, options: AnimateOptions, suffix: str, *, keep: Callable[[Path], str],
                progress: Callable | None, segment_s: float | None,
                stop: threading.Event | None = None) -> Iterator[tuple[str, str]]:
        """One request through :meth:`talkhead.pipeline.Pipeline.run` on the loaded components, in a
        per-request temporary folder, the render in a thread of its own: ``("segment", path)`` items while
        it renders (with ``segment_s``; none with ``None``), ``("wait", "")`` every :data:`WAIT_S` without
        one (a generator can only be closed where it yields: this is where a Stop gets in), then
        ``("video", keep(mp4))``. Errors keep their type, with upload paths shortened to file names.

        Closing it early returns at once: the render stops at its next batch, and then its folder is
        removed and the next request may start (it waits for that)."""
        from .video import SegmentWriter

        uploads = (photo, *(path for path, _ in motion.inputs))
        self._lock.acquire()
        try:
            pipeline = self.pipeline_for(options)
            self.workdir.mkdir(parents=True, exist_ok=True)
            work = Path(tempfile.mkdtemp(prefix="request-", dir=self.workdir))
            output = work / f"{Path(photo).stem or 'talkhead'}-{suffix}.mp4"
            ready: queue.Queue = queue.Queue()
            preview = None
            if segment_s is not None:
                (work / "segments").mkdir()
                preview = functools.partial(SegmentWriter, work / "segments",
                                            lambda segment: ready.put(("segment", segment)), seconds=segment_s)
            stop = stop if stop is not None else threading.Event()
            parties, settling = [2], threading.Lock()

            def settle() -> None:
                """The request's thread and the render's each call this once they are done with the
                folder; the last one removes it and lets the next request in."""
                with settling:
                    parties[0] -= 1
                    last = parties[0] == 0
                if last:
                    shutil.rmtree(work, ignore_errors=True)
                    self._lock.release()

            state = {"ended": False, "closed": False}  # ended: by the render; closed: the request's side is done

            def end_request() -> None:
                """The request's side, once: stop the render, say so if it had not ended, and settle. Run by
                the generator's ``finally`` or by :meth:`RequestStop.set` (a Stop whose generator Gradio
                neither resumes nor closes again)."""
                with settling:
                    if state["closed"]:
                        return
                    state["closed"] = True
                stop.set()  # a request that ends early (a Stop, a closed page) stops its render
                if not state["ended"]:
                    self.log("request stopped: its render ends after the frames in hand")
                settle()

            if isinstance(stop, RequestStop):
                stop.on_set(end_request)

            def report(stage: str, done: int, total: int) -> None:  # the render's thread; stops it too
                if stop.is_set():
                    raise _Stopped()
                if progress:
                    progress(stage, done, total)

            def job() -> None:
                try:
                    pipeline.run(photo, motion, output, keep_keypoints=False, progress=report, preview=preview)
                    ready.put(("done", None))
                except BaseException as exc:  # handed to the request's thread, which raises it
                    ready.put(("error", exc))
                finally:
                    settle()

            # in the request's context: Gradio's progress bar finds its request through context variables
            render = threading.Thread(target=contextvars.copy_context().run, args=(job,), name="talkhead-ui-render",
                                      daemon=True)
            render.start()
        except BaseException:
            self._lock.release()
            raise
        handed: Optional[Path] = None
        try:
            while True:
                if stop.is_set():  # the page's Stop handler (Gradio's own cancel may not reach a generator)
                    return
                try:
                    kind, value = ready.get(timeout=WAIT_S)
                except queue.Empty:
                    yield "wait", ""
                    continue
                if handed is not None:  # served by now: Gradio read it before asking for more
                    handed.unlink(missing_ok=True)
                    handed = None
                if kind == "segment":
                    handed = value.path
                    yield "segment", str(value.path)
                elif kind == "error":
                    state["ended"] = True
                    if isinstance(value, TalkheadError):
                        value.args = (_short_paths(str(value), *uploads),)
                    raise value
                else:
                    break
            state["ended"] = True
            yield "video", keep(output)
        finally:
            end_request()


class RequestStop(threading.Event):
    """The stop of one page request (:meth:`Animator.stream`'s ``stop``): :meth:`set` stops its render at
    the next batch and ends the request's side at once (its line logged, its folder and the one-request
    lock released once the render has stopped too), even when Gradio never resumes nor closes the request's
    generator again - seen after a Stop's cancel on a second in-process server."""

    def __init__(self) -> None:
        super().__init__()
        self._callbacks: list[Callable[[], None]] = []

    def on_set(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (once) when the stop is set."""
        self._callbacks.append(callback)

    def set(self) -> None:
        super().set()
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()


def _short_paths(message: str, *paths: str) -> str:
    """``message`` with each upload's server-side path replaced by its file name."""
    for path in paths:
        if path:
            message = message.replace(str(path), Path(path).name)
    return message


def build_app(animator: Animator, *, title: str = "talkhead", stream: bool | None = None):
    """The Gradio page over ``animator``: an *Animate* and a *Reenact* tab, and their HTTP endpoints.

    The page's buttons play the video while it renders: a streaming player (``gr.Video(streaming=True)``)
    gets each segment of :meth:`Animator.stream` as it is finished (Gradio joins them into one HLS
    stream), and once the whole MP4 (the CLI's) is written it is offered for download beside it
    (``result-file``); an error shows its one line and offers no file. *Stop* ends the render in
    progress (Gradio closes the request's generator at its next item, at most :data:`WAIT_S` away; the
    render stops at its next batch) and offers no file. Without :data:`STREAM_TOOLS` (``stream=False``)
    the player gets the finished MP4 instead.

    Endpoint ``/animate(image, audio, motion_scale=1.0, frame="full photo", face_index=0,
    device=<--device>, enhance=<--enhance>, enhance_strength=<--enhance-strength>) -> MP4 path``; the
    defaults are the command line's options (``frame`` is ``"face crop"`` where :class:`AnimateOptions`
    has no ``frame`` field); ``/reenact`` takes the same two face-restoration options last. They answer
    with the finished MP4 (no segments). Element ids for scripted browsers: ``photo``, ``speech``,
    ``animate-button``, ``animate-stop``, ``result`` (the player), ``result-file`` (the MP4 to download), ``status``,
    ``enhance``, ``enhance-strength`` (``reenact-button``, ``reenact-stop``, ``reenact-result``, ``reenact-result-file``, ``reenact-enhance``,
    ``reenact-enhance-strength`` on the Reenact tab).

    Args:
        animator: the loaded models and request handler.
        title: the page's title.
        stream: play videos while they render (default: :func:`can_stream`).

    Returns:
        The ``gradio.Blocks`` (not launched; call ``.queue(...).launch(...)`` or use :func:`serve`).
    """
    gr = require_gradio()
    base = animator.base
    streaming = can_stream() if stream is None else bool(stream)
    busy = {"concurrency_limit": 1, "concurrency_id": "render"}  # one render at a time, page and API alike

    def player(label: str, elem_id: str):
        """The result player (streaming: segments as they come) and the finished MP4's download box."""
        video = gr.Video(label=label, elem_id=elem_id, interactive=False, height=420, streaming=streaming,
                         autoplay=streaming, buttons=[])
        return video, gr.File(label="MP4 (download, once finished)", elem_id=f"{elem_id}-file", interactive=False)

    current: dict = {}  # "stop": the RequestStop of the page request in progress (one renders at a time)
    current_lock = threading.Lock()

    @contextlib.contextmanager
    def stoppable():
        """The :class:`RequestStop` of one page request, which the Stop buttons set."""
        stop = RequestStop()
        with current_lock:
            current["stop"] = stop
        try:
            yield stop
        finally:
            with current_lock:
                if current.get("stop") is stop:
                    del current["stop"]

    def stop_page() -> None:
        """The Stop buttons (beside Gradio's own cancel, which did not always end a generator waiting for its
        render): end the page request in progress at once and its render at its next batch. The page runs
        one request at a time, so a Stop on any open page ends the one in progress."""
        with current_lock:
            stop = current.get("stop")
        if stop is not None:
            stop.set()

    def page_items(items: Iterator[tuple[str, str]]):
        """:meth:`Animator.stream` items -> (player, download) values."""
        for kind, path in items:
            if kind == "segment":
                yield path, gr.skip()
            elif kind == "video":
                yield (gr.skip() if streaming else path), path
            else:  # "wait": nothing new, a Stop may close the generator here
                yield gr.skip(), gr.skip()

    def run_buttons(label: str, prefix: str):
        """The tab's run button and its Stop (ends the render in progress; offers no file)."""
        with gr.Row():
            run = gr.Button(label, variant="primary", elem_id=f"{prefix}-button", scale=4,
                            interactive=animator.load_error is None)
            stop = gr.Button("Stop", variant="stop", elem_id=f"{prefix}-stop", scale=1, min_width=80)
        return run, stop

    with gr.Blocks(title=title, analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(f"# {title}\nOne face photo + speech → a talking-head video (MS-Sync keypoints, FOMM "
                    "renderer). Everything runs on this computer.")
        gr.Markdown(_status_markdown(animator.load_error), elem_id="status")
        with gr.Tab("Animate"):
            with gr.Row():
                with gr.Column():
                    with gr.Row(equal_height=True):  # side by side: the button stays above the fold
                        image = _pass_unreadable_images(gr.Image(
                            type="filepath", image_mode=None, label="Face photo", sources=["upload", "clipboard"],
                            elem_id="photo", height=280))
                        audio = gr.Audio(type="filepath", sources=["upload", "microphone"], label="Speech",
                                         elem_id="speech")
                    button, stop_button = run_buttons("Animate", "animate")
                    with gr.Accordion("Options", open=True):
                        motion = gr.Slider(0.0, 2.0, value=float(base.motion_scale), step=0.05,
                                           label="Motion scale", info="0 = still head, 1 = as generated")
                        frame = gr.Radio(list(FRAMES), value=_frame_label(base.frame),
                                         label="Frame", info="the whole photo, or the square face crop")
                        face = gr.Number(value=base.face_index or 0, precision=0, minimum=0, label="Face index",
                                         info="when several faces are found: 0 = the largest, 1 = the next, ...")
                        device = gr.Dropdown(list(DEVICES), value=base.device, label="Device",
                                             info="auto = cuda > mps > cpu; another device loads the models again")
                        enhance, strength = _enhance_controls(gr, base, "")
                with gr.Column():
                    video, video_file = player("Talking head (plays while it renders)", "result")

        def animate(image: str | None, audio: str | None, motion_scale: float = motion.value,
                    frame: str = frame.value, face_index: float | None = face.value, device: str = base.device,
                    enhance: str = base.enhance, enhance_strength: float = float(base.enhance_strength),
                    progress=gr.Progress()) -> str:
            """Animate the photo with the speech; returns the MP4 (H.264 + AAC, 25 fps)."""
            try:
                return animator.run(image, audio, keep=video_file.move_resource_to_block_cache,
                                    progress=_ProgressBridge(progress), motion_scale=motion_scale, frame=frame,
                                    face_index=face_index, device=device, enhance=enhance,
                                    enhance_strength=enhance_strength)
            except TalkheadError as exc:
                animator.log(f"request failed: {exc}")
                raise gr.Error(str(exc), title="talkhead", print_exception=False) from None

        def animate_page(image: str | None, audio: str | None, motion_scale: float = motion.value,
                         frame: str = frame.value, face_index: float | None = face.value, device: str = base.device,
                         enhance: str = base.enhance, enhance_strength: float = float(base.enhance_strength),
                         progress=gr.Progress()):
            """The page's Animate button: the video's segments while it renders, then the MP4."""
            choices = dict(motion_scale=motion_scale, frame=frame, face_index=face_index, device=device,
                           enhance=enhance, enhance_strength=enhance_strength)
            try:
                with stoppable() as stop:
                    yield from page_items(animator.stream(image, audio, keep=video_file.move_resource_to_block_cache,
                                                          progress=_ProgressBridge(progress), segments=streaming,
                                                          stop=stop, **choices))
            except TalkheadError as exc:
                animator.log(f"request failed: {exc}")
                raise gr.Error(str(exc), title="talkhead", print_exception=False) from None

        inputs = [image, audio, motion, frame, face, device, enhance, strength]
        page = button.click(animate_page, inputs=inputs, outputs=[video, video_file], api_name="animate_page",
                            api_visibility="private", show_progress_on=[video_file], **busy)
        stop_button.click(stop_page, None, None, queue=False, cancels=[page])
        gr.on([], animate, inputs=inputs, outputs=video_file, api_name=API_NAME, **busy)

        with gr.Tab("Reenact"):
            with gr.Row():
                with gr.Column():
                    with gr.Row(equal_height=True):
                        r_photo = _pass_unreadable_images(gr.Image(
                            type="filepath", image_mode=None, label="Face photo", sources=["upload", "clipboard"],
                            elem_id="reenact-photo", height=280))
                        r_driving = gr.Video(label="Driving video (a moving face; its audio is kept)",
                                             sources=["upload"], elem_id="reenact-video", height=280)
                    r_button, r_stop_button = run_buttons("Reenact", "reenact")
                    with gr.Accordion("Options", open=True):
                        r_frame = gr.Radio(list(FRAMES), value=frame.value, label="Frame",
                                           info="the whole photo, or the square face crop")
                        r_relative = gr.Checkbox(value=True, label="Relative motion",
                                                 info="move the photo's own face by the driving motion (FOMM --relative)")
                        r_best = gr.Checkbox(value=False, label="Find the best starting frame",
                                             info="start from the driving frame closest to the photo's pose")
                        r_face = gr.Number(value=base.face_index or 0, precision=0, minimum=0, label="Face index")
                        r_device = gr.Dropdown(list(DEVICES), value=base.device, label="Device")
                        r_enhance, r_strength = _enhance_controls(gr, base, "reenact-")
                with gr.Column():
                    r_video, r_video_file = player("Reenacted (plays while it renders)", "reenact-result")

        def reenact(photo: str | None, driving_video: str | None, frame: str = r_frame.value,
                    relative: bool = True, find_best_frame: bool = False, face_index: float | None = r_face.value,
                    device: str = base.device, enhance: str = base.enhance,
                    enhance_strength: float = float(base.enhance_strength), progress=gr.Progress()) -> str:
            """Move the face in the photo like the face in the driving video; returns the MP4."""
            try:
                return animator.run_reenact(photo, driving_video, keep=r_video_file.move_resource_to_block_cache,
                                            progress=_ProgressBridge(progress), relative=relative,
                                            find_best_frame=find_best_frame, frame=frame, face_index=face_index,
                                            device=device, enhance=enhance, enhance_strength=enhance_strength)
            except TalkheadError as exc:
                animator.log(f"request failed: {exc}")
                raise gr.Error(str(exc), title="talkhead", print_exception=False) from None

        def reenact_page(photo: str | None, driving_video: str | None, frame: str = r_frame.value,
                         relative: bool = True, find_best_frame: bool = False,
                         face_index: float | None = r_face.value, device: str = base.device,
                         enhance: str = base.enhance, enhance_strength: float = float(base.enhance_strength),
                         progress=gr.Progress()):
            """The page's Reenact button: the video's segments while it renders, then the MP4."""
            choices = dict(relative=relative, find_best_frame=find_best_frame, frame=frame, face_index=face_index,
                           device=device, enhance=enhance, enhance_strength=enhance_strength)
            try:
                with stoppable() as stop:
                    yield from page_items(animator.stream_reenact(
                        photo, driving_video, keep=r_video_file.move_resource_to_block_cache,
                        progress=_ProgressBridge(progress), segments=streaming, stop=stop, **choices))
            except TalkheadError as exc:
                animator.log(f"request failed: {exc}")
                raise gr.Error(str(exc), title="talkhead", print_exception=False) from None

        r_inputs = [r_photo, r_driving, r_frame, r_relative, r_best, r_face, r_device, r_enhance, r_strength]
        r_page = r_button.click(reenact_page, inputs=r_inputs, outputs=[r_video, r_video_file],
                                api_name="reenact_page", api_visibility="private", show_progress_on=[r_video_file],
                                **busy)
        r_stop_button.click(stop_page, None, None, queue=False, cancels=[r_page])
        gr.on([], reenact, inputs=r_inputs, outputs=r_video_file, api_name=REENACT_API_NAME, **busy)
    return demo


def _enhance_controls(gr, base: AnimateOptions, prefix: str):
    """The face-restoration controls of a tab: ``(enhance radio, strength slider)`` (``--enhance``,
    ``--enhance-strength``), starting at the command line's values."""
    from .options import ENHANCERS

    enhance = gr.Radio(list(ENHANCERS), value=base.enhance, label="Face restoration", elem_id=f"{prefix}enhance",
                       info="gfpgan: GFPGAN v1.4 on the face, following the head (`talkhead download gfpgan`; "
                            "slower)")
    strength = gr.Slider(0.0, 1.0, value=float(base.enhance_strength), step=0.05, label="Restoration strength",
                         elem_id=f"{prefix}enhance-strength", info="0 = the render, 1 = fully restored")
    return enhance, strength


def _pass_unreadable_images(component):
    """Let an upload that Pillow cannot open reach the pipeline unchanged (returns ``component``).

    Gradio's image preprocessing opens every upload and fails with a generic error on a non-image
    (and with Pillow's multi-line decompression-bomb error, naming the server's temp path, on a huge
    one); passing the path through lets :func:`talkhead.image.load_image` raise the CLI's
    :class:`~talkhead.errors.ImageError` line instead. Done on the instance: a ``gr.Image`` subclass
    would make Gradio write a ``.pyi`` stub next to this module at import time.
    """
    import warnings

    from PIL import Image, UnidentifiedImageError

    preprocess = component.preprocess

    def tolerant(payload):
        try:
            with warnings.catch_warnings():  # a 90-180 megapixel photo: Pillow's warning is not for the log
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                return preprocess(payload)
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError):
            return str(payload.path) if payload is not None and payload.path else None

    component.preprocess = tolerant
    return component


def _frame_label(value: str) -> str:
    return next((label for label, v in FRAMES.items() if v == value), "full photo")


def _status_markdown(load_error: str | None) -> str:
    """The banner shown when the models could not be loaded: the error's own line, wrapped at the page's
    width (no scrolling code box: the fix it names, e.g. ``talkhead download``, stays in view)."""
    if load_error is None:
        return ""
    text = load_error.replace("<", "&lt;").replace(">", "&gt;")
    return f"### ⚠ The models could not be loaded\n\n{text}\n\nFix it, then restart `talkhead ui`."


def sweep_stale_roots(tempdir: str | os.PathLike | None = None) -> list[Path]:
    """Remove the temporary roots of servers that are gone (killed with SIGKILL, a power cut).

    A root is stale when its :data:`OWNER_FILE` names a process that no longer exists; a root
    without one (being created, or from another program) is left alone, and so is one whose owner
    cannot be checked.

    Args:
        tempdir: where the roots are (default: the system temp folder, ``tempfile.gettempdir()``).

    Returns:
        The roots removed.
    """
    removed = []
    for root in sorted(Path(tempdir or tempfile.gettempdir()).glob(TEMP_PREFIX + "*")):
        try:
            pid = int((root / OWNER_FILE).read_text().strip())
        except (OSError, ValueError):
            continue
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(root, ignore_errors=True)
            removed.append(root)
        except OSError:  # PermissionError: alive, another user's
            continue
    return removed


def _gradio_default_dirs() -> list[Path]:
    """Folders Gradio makes under its default temp folder, ``GRADIO_TEMP_DIR`` as it was when gradio
    was imported (an import before :func:`serve` set it): the empty ``vibe_edit_history`` it creates
    on every launch, and that folder's parent."""
    try:
        from gradio import routes

        base = Path(routes.DEFAULT_TEMP_DIR)
    except (ImportError, AttributeError, TypeError):
        return []
    return [base / "vibe_edit_history", base]


def serve(base: AnimateOptions, *, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
          log: Callable[[str], None] | None = None, ready: Callable[[str], None] | None = None,
          stop: threading.Event | None = None) -> Optional[int]:
    """Load the models, start the page on ``http://host:port/`` and block until Ctrl-C (or SIGTERM).

    Every file the app writes (Gradio's uploads and results, the per-request folders) lives under
    one temporary root (``talkhead-ui-*`` in the system temp folder, its owner's pid in
    :data:`OWNER_FILE`), removed on the way out, also when a second signal arrives during the clean-up;
    roots left by servers that were killed outright are swept at start-up (:func:`sweep_stale_roots`).
    Uploads above :data:`MAX_UPLOAD_MB` are refused.

    Args:
        base: the command line's options.
        host: interface to listen on; the default serves this computer only.
        port: TCP port (0 = the first free one from 7860 up, Gradio's search).
        share: also open a public Gradio share link (off by default). When the link cannot be
            made (offline), one ``log`` line says so and the page serves this computer only; Gradio's
            own messages never reach stdout (where the URL is printed).
        log: status lines (loading, the URL, failed requests, shutdown).
        ready: called with the local URL once the server accepts requests.
        stop: setting this event stops the server like Ctrl-C (for callers that run it in a thread;
            signal handlers are installed only in the main thread).

    Returns:
        The signal that stopped the server (``signal.SIGINT`` / ``signal.SIGTERM``), or ``None`` when
        ``stop`` was set or the server ended by itself.

    Raises:
        TalkheadError: gradio is missing, or the port cannot be opened.
    """
    import contextlib
    import io

    gr = require_gradio()
    say = log or (lambda msg: None)
    for stale in sweep_stale_roots():
        say(f"removed {stale}, left by a server that was killed")
    root = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))
    (root / OWNER_FILE).write_text(str(os.getpid()))
    gradio_made = [p for p in _gradio_default_dirs() if not p.exists()]  # removed on the way out when empty
    previous = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(root / "gradio")  # read when the components are built
    demo = None
    stop = stop or threading.Event()
    received: list[int] = []
    handlers: dict = {}
    served = False  # "stopped" is said only of a server that ran (a failed start is the error's one line)

    state = {"serving": False, "cleaning": False}

    def on_signal(signum, frame) -> None:
        received.append(signum)
        stop.set()
        if not state["serving"] and not state["cleaning"]:  # still starting: stop now, as before serve()
            previous_handler = handlers.get(signum)
            if callable(previous_handler):
                previous_handler(signum, frame)
            raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        # installed before anything is written and restored only after the clean-up, so a second
        # SIGTERM (timeout, docker stop, systemd) cannot end the process half-way through it
        for sig in (signal.SIGINT, signal.SIGTERM):
            handlers[sig] = signal.signal(sig, on_signal)
    try:
        animator = Animator(base, root / "requests", log=say).load()
        if animator.load_error:
            say(f"models not loaded (shown on the page): {animator.load_error}")
        if not can_stream():
            say(f"note: the page shows each video once it is finished; to play it while it renders, put "
                f"{' and '.join(STREAM_TOOLS)} on PATH (Gradio's streaming player runs them)")
        demo = build_app(animator)
        demo.queue(default_concurrency_limit=1)
        theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
        chatter = io.StringIO()
        try:
            with contextlib.redirect_stdout(chatter):  # Gradio's share-link messages: stdout is the URL's
                _, url, share_url = demo.launch(server_name=host, server_port=port or None, share=share,
                                                prevent_thread_lock=True, quiet=True, show_error=True,
                                                ssr_mode=False, theme=theme, footer_links=["api"], css=PAGE_CSS,
                                                max_file_size=f"{MAX_UPLOAD_MB}mb")
        except OSError as exc:
            raise TalkheadError(f"cannot serve on {host}:{port}: {exc}") from None
        url = f"http://{host}:{demo.server_port}/"
        served = state["serving"] = True
        if share and not share_url:
            reason = next((ln.strip() for ln in chatter.getvalue().splitlines() if ln.strip()), "no reason given")
            say(f"warning: no public share link could be made ({reason}); serving on {url} only")
        say(f"talkhead ui running on {url}" + (f" and {share_url}" if share_url else "") + "  (Ctrl-C to stop)")
        if ready:
            ready(url)
        while not stop.is_set() and demo.is_running:
            stop.wait(0.2)
        if received:
            say(f"stopping ({signal.Signals(received[0]).name}): closing the server, removing temporary files")
    finally:
        state["cleaning"] = True
        if demo is not None:
            demo.close(verbose=False)
        if previous is None:
            os.environ.pop("GRADIO_TEMP_DIR", None)
        else:
            os.environ["GRADIO_TEMP_DIR"] = previous
        shutil.rmtree(root, ignore_errors=True)
        for leftover in gradio_made:  # innermost first; a folder something else has filled is kept
            with contextlib.suppress(OSError):
                leftover.rmdir()
        if served:
            say("stopped; temporary files removed")
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    return received[0] if received else None


__all__ = ["Animator", "build_app", "serve", "can_stream", "STREAM_TOOLS", "sweep_stale_roots", "MAX_UPLOAD_MB", "LOOPBACK", "request_options", "require_gradio", "INSTALL_HINT", "API_NAME",
           "REENACT_API_NAME", "FRAMES"]
