"""Windowed MS-Sync: the keypoints of a speech stream, window by window, equal to the one-pass rollout.

:func:`~talkhead.mssync.inference.generate_keypoints` needs the whole logfbank and keeps the whole audio
pyramid (``4 x audio_dim`` floats per frame: 8 KiB a frame, ~0.33 MiB per second of speech at full size).
:func:`stream_keypoints` yields the same keypoints in windows of a few frames while the logfbank arrives
in chunks, keeping only the context the next step needs:

- **the model's audio input** (:func:`~talkhead.mssync.inference.build_audio_input`) is produced row by
  row (:class:`AudioInRows`): the mirrored warm-up rows first, the kept logfbank rows as they come, the
  5 reflected rows at the end. Its total length ``L`` (hence the pyramid's interpolation grid) follows
  from the number of logfbank rows, known before the first chunk (from the sample count).
- **the encoder's halo**: the audio pyramid is encoded on the chunk grid of
  :meth:`AudioPyramidEncoder.forward <talkhead.mssync.blocks.AudioPyramidEncoder.forward>` (chunks of
  ``chunk_rows`` rows, each read with ``halo`` rows on both sides; one pass when ``L <= chunk_rows +
  2 halo``), so every raw pyramid column is computed from the very same input slice as in the one-pass
  run; only the columns the coming frames interpolate from are kept (:class:`AudioPyramidStream`).
- **the pyramid's interpolation**: frame ``f`` of level ``l`` is resampled from raw columns ``i0, i1``
  with the weights of :func:`~talkhead.mssync.blocks.align_corners_weights` - the arithmetic
  :meth:`MSSyncGenerator.embed_audio <talkhead.mssync.generator.MSSyncGenerator.embed_audio>` uses too.
- **the autoregressive state**: the last position, the last ``MAX_CONTEXT_LENGTH`` keypoint embeddings
  and their cached key/value projections carry over from one window to the next (:class:`Rollout`).

Every operation is the one the one-pass incremental rollout runs, on the same values, so the windows
concatenated equal ``generate_keypoints`` (tested within 1e-6 for window sizes from 1 frame, below the
shortest syncer scale of 5 frames, to more than the clip, and for encoder chunks of 32 rows up;
``tests/test_windowed.py``). Memory: the context above, independent of the clip's length.

Live use (:mod:`talkhead.live`) runs the same classes with an open-ended input (``length=None`` until
the speech ends): then frame ``f`` of level ``l`` sits at raw column ``4 f / s_l`` (the limit of the
one-pass grid for long clips), and :meth:`AudioPyramidStream.rows_needed` says how many input rows a
frame needs (the lookahead).
"""
from __future__ import annotations

import time
from typing import Callable, Iterable, Iterator, Optional

import torch

from ..constants import KP_DIM, N_FILT
from ..errors import AudioTooShortError, ConfigError
from ..keypoints import Keypoints
from ..progress import Progress
from .blocks import AudioPyramidEncoder, align_corners_weights, resample_frames
from .generator import MAX_CONTEXT_LENGTH, MSSyncGenerator
from .inference import REFLECT_PAD_ROWS, MSSyncMotion, _kept_rows, _single_cpu_thread, build_warmup_input, required_len

DEFAULT_WINDOW = 25
"""Keypoint frames per window :func:`stream_keypoints` yields by default (1 s at 25 fps)."""


def audio_in_length(num_rows: int, obs_len: int) -> int:
    """Rows of the model's audio input for ``num_rows`` logfbank rows (full run, ``seq_len=0``):
    ``4 (obs_len - 1) + min(4 R, round(3.9943 R) + 5)``, as :func:`~talkhead.mssync.inference.build_audio_input`.

    Raises:
        AudioTooShortError: too few rows (the same condition and message as ``build_audio_input``).
    """
    req = required_len(num_rows)
    rows = _kept_rows(req) if req > 0 else 0
    prepad = 4 * (obs_len - 1)
    if req < 2 or rows <= REFLECT_PAD_ROWS or rows < prepad:
        raise AudioTooShortError(f"{num_rows} logfbank rows are too few for MS-Sync: at least 2 frames "
                                 "(0.0851 s of audio) are needed")
    return prepad + min(4 * req, rows + REFLECT_PAD_ROWS)


def audio_in_pieces(chunks: Iterable, num_rows: int, obs_len: int) -> Iterator[torch.Tensor]:
    """The model's audio input (``build_audio_input(logfbank, obs_len=obs_len)[0]``) in pieces, from the
    logfbank in chunks.

    Args:
        chunks: ``(k, 26)`` logfbank chunks (arrays or tensors, any float dtype, cast to float32 as
            ``build_audio_input`` does), ``num_rows`` rows in all, in order.
        num_rows: the logfbank's total rows ``M``.
        obs_len: the model's warm-up length, frames.

    Yields:
        float32 CPU tensors ``(n, 26)``; concatenated and cut to :func:`audio_in_length` rows they are
        ``audio_in``. Rows past the ones the reference keeps (``round(3.9943 R)``) are read and ignored.

    Raises:
        ValueError: a chunk of the wrong width, or fewer than ``num_rows`` rows in all.
    """
    rows = _kept_rows(required_len(num_rows))
    prepad = 4 * (obs_len - 1)
    taken, head, tail = 0, ([] if prepad else None), None
    for chunk in chunks:
        chunk = torch.as_tensor(chunk)
        if chunk.ndim != 2 or chunk.shape[1] != N_FILT:
            raise ValueError(f"logfbank chunks must have shape (k, {N_FILT}), got {tuple(chunk.shape)}")
        chunk = chunk.to(torch.float32)[:max(0, rows - taken)]
        if not len(chunk):
            continue
        taken += len(chunk)
        tail = chunk[-REFLECT_PAD_ROWS - 1:] if tail is None else torch.cat([tail, chunk])[-REFLECT_PAD_ROWS - 1:]
        if head is not None:
            head.append(chunk)
            if sum(len(h) for h in head) < prepad:
                continue
            chunk, head = torch.cat(head), None
            yield chunk[:prepad].flip(0)
        yield chunk
    if taken < rows:
        raise ValueError(f"the logfbank stream ended after {taken} rows; {rows} were expected")
    yield tail[:-1].flip(0)  # rows n-2, n-3, ..., n-6


class AudioPyramidStream:
    """The audio pyramid (``MSSyncGenerator.embed_audio``) frame by frame, from audio-input rows in pieces.

    Args:
        encoder: the model's :class:`~talkhead.mssync.blocks.AudioPyramidEncoder`.
        source: an iterator of audio-input pieces ``(n, 26)`` (:func:`audio_in_pieces`), or ``None`` to
            push them (:meth:`push`, live use).
        length: total audio-input rows ``L``, or ``None`` while unknown (live; :meth:`end` sets it).
        device, dtype: where and in what the encoder runs (the model's).
        chunk_rows: encoder chunk (rows, a multiple of the encoder's stride); default the encoder's
            :attr:`~talkhead.mssync.blocks.AudioPyramidEncoder.chunk_rows`, the one-pass grid.

    With ``length`` known, frame ``f`` interpolates ``int(L / 4)`` frames over each level as ``embed_audio``
    does; open-ended (``length=None`` at construction) it sits at raw column ``4 f / s_l``.
    """

    def __init__(self, encoder: AudioPyramidEncoder, source: Optional[Iterator[torch.Tensor]], length: Optional[int],
                 *, device: torch.device, dtype: torch.dtype, chunk_rows: Optional[int] = None) -> None:
        self.encoder = encoder
        self.strides = encoder.strides
        self.halo = encoder.halo
        chunk = encoder.chunk_rows if chunk_rows is None else int(chunk_rows)
        if chunk < 0 or chunk % encoder.stride or (chunk == 0 and length is None):
            raise ValueError(f"chunk_rows must be a positive multiple of {encoder.stride}, got {chunk}")
        self.chunk = chunk
        self.device, self.dtype = device, dtype
        self._source = source
        self.open_ended = length is None
        self.length = length
        self.single = length is not None and (chunk == 0 or length <= chunk + 2 * self.halo)
        self.tgt_len = None if length is None else int(length / 4)
        self._rows = torch.zeros(0, N_FILT, dtype=dtype, device=device)
        self._rows_start = 0
        self._raw: list[Optional[torch.Tensor]] = [None] * len(self.strides)
        self._raw_start = [0] * len(self.strides)
        self._next = 0  # first audio-input row of the next encoder chunk

    # -- input rows -------------------------------------------------------------------------------
    @property
    def rows_received(self) -> int:
        """Audio-input rows received so far."""
        return self._rows_start + len(self._rows)

    def push(self, rows: torch.Tensor) -> None:
        """Append audio-input rows ``(n, 26)`` (push mode)."""
        rows = torch.as_tensor(rows).to(self.device, self.dtype)
        self._rows = torch.cat([self._rows, rows]) if len(self._rows) else rows

    def end(self) -> None:
        """No more rows: the length is what was received (open-ended use); the last columns see zero padding."""
        if self.length is None:
            self.length = self.rows_received

    def _ensure_rows(self, hi: int) -> None:
        while self.rows_received < hi:
            piece = next(self._source, None) if self._source is not None else None
            if piece is None:
                raise RuntimeError(f"audio input ended at row {self.rows_received}; row {hi} is needed")
            self.push(piece)

    def _drop_rows(self, lo: int) -> None:
        if lo > self._rows_start:
            self._rows = self._rows[lo - self._rows_start:]
            self._rows_start = lo

    # -- encoder ------------------------------------------------------------------------------------
    def _chunk_span(self, start: int) -> tuple[int, int, int]:
        """``(stop, lo, hi)`` of the encoder chunk starting at row ``start`` (rows read: ``[lo, hi)``)."""
        if self.single:
            return self.length, 0, self.length
        stop = start + self.chunk if self.length is None else min(start + self.chunk, self.length)
        hi = stop + self.halo if self.length is None else min(self.length, stop + self.halo)
        return stop, max(0, start - self.halo), hi

    def _encode_next(self) -> None:
        start = self._next
        if self.length is not None and start >= self.length:
            raise RuntimeError("the audio pyramid has no more columns")
        stop, lo, hi = self._chunk_span(start)
        self._ensure_rows(hi)
        x = self._rows[lo - self._rows_start:hi - self._rows_start][None].transpose(1, 2)
        levels = self.encoder._one_pass(x)
        for i, (s, level) in enumerate(zip(self.strides, levels)):
            first, last = start // s, -(-stop // s)
            piece = level[..., first - lo // s:last - lo // s]
            held = self._raw[i]
            self._raw[i] = piece if held is None else torch.cat([held, piece], dim=-1)
        self._next = stop
        self._drop_rows(stop - self.halo)

    def _columns_done(self, i: int) -> int:
        """Raw columns of level ``i`` computed so far (global count)."""
        s = self.strides[i]
        return -(-self._next // s)

    def _positions(self, frames: torch.Tensor, i: int):
        s = self.strides[i]
        if not self.open_ended:
            raw_len = -(-self.length // s)
            return align_corners_weights(raw_len, self.tgt_len, frames, self.dtype)
        real = frames.to(torch.float64) * (4.0 / s)  # exact: s is a power of two
        i0 = real.floor().long()
        w1 = (real - i0).to(self.dtype)
        i1 = i0 + 1
        if self.length is not None:
            last = -(-self.length // s) - 1
            i0, i1 = i0.clamp(max=last), i1.clamp(max=last)
        return i0, i1, 1 - w1, w1

    def rows_needed(self, frame: int) -> int:
        """Audio-input rows (from row 0) that must have arrived before frame ``frame`` can be computed
        (open-ended use): the encoder chunk holding each level's right neighbour column, plus its halo."""
        need = 0
        frames = torch.tensor([frame])
        for i, s in enumerate(self.strides):
            i1 = int(self._positions(frames, i)[1][0])
            start = (i1 * s) // self.chunk * self.chunk
            need = max(need, self._chunk_span(start)[2])
        return need

    def frames(self, fa: int, fb: int) -> list[torch.Tensor]:
        """Pyramid frames ``[fa, fb)``: one ``(1, fb - fa, audio_dim)`` tensor per level, equal to
        ``embed_audio(audio_in)[l][:, fa:fb]``. Frames must be asked in non-decreasing order: columns
        before the first one ``fa`` needs are dropped."""
        frames = torch.arange(fa, fb, device=self.device)
        out = []
        for i in range(len(self.strides)):
            i0, i1, w0, w1 = self._positions(frames, i)
            while self._columns_done(i) <= int(i1.max()):
                self._encode_next()
            base = self._raw_start[i]
            out.append(resample_frames(self._raw[i], i0 - base, i1 - base, w0, w1).transpose(1, 2))
            keep = int(i0.min())
            if keep > base:
                self._raw[i] = self._raw[i][..., keep - base:]
                self._raw_start[i] = keep
        return out


class StepThreads:
    """Intra-op CPU threads for the rollout's decoding steps, chosen by timing them as they run.

    A decoding step is ~40 batch-1 matrix-vector products that read ~95 MB of weights (full size): bound by
    memory traffic, which two threads roughly double on an idle machine. But when another process holds a
    core, OpenMP's spin-waiting makes every small parallel region wait for a descheduled thread: five to ten
    times slower (measured: ``benchmarks/README.md``, "MS-Sync rollout threads"). So the choice is measured,
    not assumed: the first window's steps run on one thread; then ``probe_steps`` steps try ``threads``; if
    they were faster per step by ``margin``, the steps stay on ``threads`` (and go back to one thread as soon
    as a span on ``threads`` is slower than the last one-thread span by that margin: another process took a
    core); if not, one thread again, and the next probe comes after ``backoff`` more steps on one thread (100,
    4 windows of 25 frames; doubling after each lost probe, at most 6400). The keypoints do not depend on the
    choice: the steps give the same bits on any thread count (``tests/test_windowed.py``).

    Args:
        threads: the thread count to try besides 1 (the caller's ``torch.get_num_threads()``; 1 turns the
            choosing off: every step on the caller's setting).
        clock: seconds, monotonic (tests pass a fake one).
        margin: how much faster per step ``threads`` must be to be kept (1.1: 10 % faster).
        probe_steps: steps a probe of ``threads`` runs before the choice is made.

    Attributes:
        history: ``(threads, steps, seconds per step)`` of every timed span, in order.
    """

    FIRST_BACKOFF = 100
    MAX_BACKOFF = 6400

    def __init__(self, threads: int, *, clock: Callable[[], float] = time.perf_counter, margin: float = 1.1,
                 probe_steps: int = 5) -> None:
        self.threads = max(1, int(threads))
        self.clock = clock
        self.margin = float(margin)
        self.probe_steps = max(1, int(probe_steps))
        self.current = 1                                 # thread count of the next span
        self.one_thread_step: Optional[float] = None     # seconds per step of the last one-thread span
        self.history: list[tuple[int, int, float]] = []
        self._probing = False                            # the next span on `threads` is a probe
        self._backoff = self.FIRST_BACKOFF
        self._wait = 0                                   # one-thread steps before the next probe

    def spans(self, count: int) -> Iterator[int]:
        """Split ``count`` decoding steps into spans: yields each span's step count with the thread count set
        for it (restored after), and times the caller's work on the span to update the choice."""
        left = count
        while left > 0:
            if self.threads == 1:
                yield left
                return
            threads = self.current
            n = min(left, self.probe_steps) if threads != 1 and self._probing else left
            before = torch.get_num_threads()
            torch.set_num_threads(threads)
            start = self.clock()
            try:
                yield n
            finally:
                torch.set_num_threads(before)
            self._update(threads, n, (self.clock() - start) / n)
            left -= n

    def _update(self, threads: int, steps: int, per_step: float) -> None:
        self.history.append((threads, steps, per_step))
        if threads == 1:
            self.one_thread_step = per_step
            self._wait = max(0, self._wait - steps)
            if self._wait == 0:
                self.current, self._probing = self.threads, True
            return
        if self.one_thread_step is not None and per_step * self.margin > self.one_thread_step:
            self.current = 1  # no faster than one thread (or a core was taken): one thread, probe later
            self._wait = self._backoff
            self._backoff = min(2 * self._backoff, self.MAX_BACKOFF)
        elif self._probing:
            self._probing = False
            self._backoff = self.FIRST_BACKOFF


class Rollout:
    """MS-Sync's autoregressive state, stepped window by window (the incremental path of
    :meth:`MSSyncGenerator.rollout <talkhead.mssync.generator.MSSyncGenerator.rollout>`).

    Args:
        model: the generator (``data_dim`` 6).
        inpt: the warm-up frames ``(1, obs_len, K, 6)`` (``K = model.config.num_kp``) (:func:`~talkhead.mssync.inference.build_warmup_input`).
        pyramid: where the audio frames come from.
        threads: chooses the decoding steps' CPU thread count (:class:`StepThreads`); ``None``: the caller's.

    Output frame ``t`` (what ``generate_keypoints`` returns as frame ``t``) is conditioned on pyramid
    frames up to ``t + obs_len - 1``. Call under ``torch.inference_mode()``.
    """

    def __init__(self, model: MSSyncGenerator, inpt: torch.Tensor, pyramid: AudioPyramidStream,
                 threads: Optional[StepThreads] = None) -> None:
        self.model, self.pyramid = model, pyramid
        self.threads = threads
        cfg = model.config
        self.obs_len = cfg.obs_len
        self.num_kp = cfg.num_kp
        self.data_dim = cfg.data_dim
        self._inpt = inpt
        self._pending: list[torch.Tensor] = []  # frames made but not yet taken
        self.made = 0  # output frames made
        self._coord = None
        self._kv = None
        self._last = None

    def _warm_up(self) -> None:
        model, obs = self.model, self.obs_len
        inpt = self._inpt
        bs = inpt.shape[0]
        pyramid = self.pyramid.frames(1, obs + 1)
        coord = model.encoder_x(inpt.flatten(start_dim=-2))
        hidden = model.temporal(coord)
        z = torch.cat([hidden, coord], dim=-1)
        z = torch.cat([torch.cat([z, a], dim=-1) for a in pyramid], dim=-1)
        vel = model.merge_streams(z.flatten(end_dim=1))
        positions = inpt + vel.view(bs, obs, self.num_kp, self.data_dim)
        if obs > 1:
            self._pending.append(positions[:, -2])
        self._last = positions[:, -1]
        self._pending.append(self._last)
        self._coord = coord
        self._kv = [model._kv(coord[:, j]) for j in range(obs)] if model.config.nlayers_tf == 1 else None

    def _steps(self, first: int, count: int) -> None:
        """Decoding steps ``first .. first + count - 1`` (step ``i`` reads pyramid frame ``i + obs_len + 1``)."""
        obs = self.obs_len
        audio = self.pyramid.frames(first + obs + 1, first + obs + 1 + count)
        done = 0
        for n in (self.threads.spans(count) if self.threads is not None else [count]):
            self._decode(audio, done, n)
            done += n

    def _decode(self, audio: list[torch.Tensor], first: int, count: int) -> None:
        """Steps ``first .. first + count - 1`` of this call's, reading pyramid frames ``audio[l][:, k]``."""
        model = self.model
        bs = self._last.shape[0]
        for k in range(first, first + count):
            coord_i = model.encoder_x(self._last.reshape(bs, -1))
            self._coord = torch.cat([self._coord, coord_i[:, None]], dim=1)[:, -MAX_CONTEXT_LENGTH:]
            if self._kv is not None:
                self._kv = (self._kv + [model._kv(coord_i)])[-MAX_CONTEXT_LENGTH:]
            h_i = model._temporal_last(self._coord, self._kv)
            z = torch.cat([h_i, coord_i], dim=-1)
            z = torch.cat([torch.cat([z, a[:, k]], dim=-1) for a in audio], dim=-1)
            vel_i = model.merge_streams(z)
            self._last = self._last + vel_i.view(bs, self.num_kp, self.data_dim)
            self._pending.append(self._last)

    def frames_before_steps(self) -> int:
        """Output frames the warm-up gives (2 for ``obs_len > 1``, else 1)."""
        return 2 if self.obs_len > 1 else 1

    def advance(self, count: int) -> torch.Tensor:
        """The next ``count`` output frames, ``(count, K, 6)``."""
        if self._last is None:
            self._warm_up()
        need = count - len(self._pending)
        if need > 0:
            first = self.made + len(self._pending) - self.frames_before_steps()
            self._steps(first, need)
        out, self._pending = self._pending[:count], self._pending[count:]
        self.made += count
        return torch.stack(out, dim=1)[0]


def stream_keypoints(model: MSSyncGenerator, kp_source: Keypoints, chunks: Iterable, num_rows: int, *,
                     window: int = DEFAULT_WINDOW, chunk_rows: Optional[int] = None,
                     progress: Progress | None = None, threads: Optional[StepThreads] = None) -> Iterator[Keypoints]:
    """:func:`~talkhead.mssync.inference.generate_keypoints` (a full run) in windows, from the logfbank in chunks.

    Args:
        model: the generator (``data_dim`` 6).
        kp_source: kp_source ``(1, K, 2)`` + jacobian ``(1, K, 2, 2)``, ``K = model.config.num_kp``.
        chunks: the logfbank ``(k, 26)`` at 100 Hz in chunks (arrays or tensors), ``num_rows`` rows in
            all; read as the windows need them.
        num_rows: the logfbank's rows ``M`` (known from the sample count before the first chunk,
            :func:`talkhead.audio.num_logfbank_frames`).
        window: keypoint frames per yielded window (the last may be shorter), >= 1.
        chunk_rows: the audio encoder's chunk (default: the model's, the one-pass grid; equality with
            ``generate_keypoints`` holds on the same grid).
        progress: ``progress("keypoints", done, T)`` after each window.
        threads: chooses the decoding steps' thread count (default on CPU: a :class:`StepThreads` trying the
            caller's ``torch.get_num_threads()``).

    Yields:
        :class:`~talkhead.keypoints.Keypoints` ``(w, K, 2)`` + ``(w, K, 2, 2)`` on the model's device,
        ``T = frames_for_logfbank(num_rows)`` frames in all; concatenated they equal
        ``generate_keypoints(model, kp_source, logfbank)`` (float rounding aside: the same operations).
        Each window is computed under ``torch.inference_mode()``: the audio encoding and the warm-up on one
        CPU thread, the decoding steps on the thread count :class:`StepThreads` chooses (up to the caller's
        ``torch.get_num_threads()``; the keypoints do not depend on it); neither setting is held while the
        caller works between windows.

    Raises:
        AudioTooShortError: too few rows (< 8).
        ConfigError: the model's ``data_dim`` is not 6.
        ValueError: ``window < 1``, a bad chunk shape, or fewer rows than ``num_rows``.
    """
    cfg = model.config
    if cfg.data_dim != KP_DIM:
        raise ConfigError(f"MS-Sync model has data_dim={cfg.data_dim}; generating FOMM keypoints with "
                          f"jacobians needs data_dim={KP_DIM}")
    if window < 1:
        raise ValueError(f"window must be >= 1 frame, got {window}")
    length = audio_in_length(num_rows, cfg.obs_len)
    total = int(length / 4) - cfg.obs_len + 1
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    if threads is None and device.type == "cpu":
        threads = StepThreads(torch.get_num_threads())
    with torch.inference_mode():
        inpt = build_warmup_input(kp_source.to(device, dtype), obs_len=cfg.obs_len, num_kp=cfg.num_kp)
        pyramid = AudioPyramidStream(model.encoder_a, audio_in_pieces(chunks, num_rows, cfg.obs_len), length,
                                     device=device, dtype=dtype, chunk_rows=chunk_rows)
        rollout = Rollout(model, inpt, pyramid, threads)
    done = 0
    while done < total:
        n = min(window, total - done)
        with torch.inference_mode(), _single_cpu_thread(device):
            packed = rollout.advance(n)
        done += n
        if progress is not None:
            progress("keypoints", done, total)
        yield Keypoints.unpack(packed)


class StreamingMSSyncMotion(MSSyncMotion):
    """:class:`~talkhead.mssync.inference.MSSyncMotion` that can also stream: what the pipeline loads.

    ``motion(kp_source, logfbank, progress)`` is the one-pass generation; ``motion.stream(kp_source, chunks,
    num_rows, window=, progress=)`` yields the same keypoints window by window (:func:`stream_keypoints`).
    """

    def stream(self, kp_source: Keypoints, chunks: Iterable, num_rows: int, *, window: int = DEFAULT_WINDOW,
               progress: Progress | None = None) -> Iterator[Keypoints]:
        """:func:`stream_keypoints` with this model (the decoding steps' thread count chosen by timing)."""
        return stream_keypoints(self.model, kp_source, chunks, num_rows, window=window, progress=progress)


__all__ = ["DEFAULT_WINDOW", "StepThreads", "StreamingMSSyncMotion", "audio_in_length", "audio_in_pieces", "AudioPyramidStream", "Rollout", "stream_keypoints"]
