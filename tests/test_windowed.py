"""Windowed MS-Sync (talkhead.mssync.windowed): window by window == the one-pass rollout; bounded context."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from talkhead.errors import AudioTooShortError
from talkhead.keypoints import Keypoints
from talkhead.mssync import build_audio_input, generate_keypoints, load_mssync
from talkhead.mssync.inference import frames_for_logfbank
from talkhead.mssync.windowed import AudioPyramidStream, StepThreads, audio_in_length, audio_in_pieces, stream_keypoints

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model(mssync_tiny_dir):
    return load_mssync(mssync_tiny_dir)


@pytest.fixture(scope="module")
def kp0(mssync_parity) -> Keypoints:
    return Keypoints.unpack(torch.from_numpy(mssync_parity["kp0"]))


def _logfbank(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, 26)) * 2 - 5


def _pieces(lf: np.ndarray, size: int) -> list[np.ndarray]:
    return [lf[i:i + size] for i in range(0, len(lf), size)]


@pytest.fixture()
def encoder_chunk(model):
    """Set the model's encoder chunk (the one-pass grid) for a test; restored afterwards."""
    before = model.encoder_a.chunk_rows

    def set_chunk(rows: int) -> None:
        model.encoder_a.chunk_rows = rows
    yield set_chunk
    model.encoder_a.chunk_rows = before


# 8 rows: the fewest (2 frames); 123: one encoder pass; 700 and 1300 (325 frames, 13 s) with small encoder
# chunks: many chunk borders inside the clip. Windows 1 and 3 frames are below the shortest syncer scale
# (200 ms = 5 frames), 7 below the longest (1600 ms = 40 frames); 1000 is more than the clip.
_ONE_PASS: dict = {}


@pytest.mark.parametrize("rows, chunk_rows", [(8, None), (9, 32), (123, None), (700, 32), (1300, 96)])
@pytest.mark.parametrize("window", [1, 3, 7, 1000])
def test_windows_equal_the_one_pass_rollout(model, kp0, encoder_chunk, rows, chunk_rows, window):
    lf = _logfbank(rows, seed=rows)
    if chunk_rows is not None:
        encoder_chunk(chunk_rows)
    if (rows, chunk_rows) not in _ONE_PASS:
        _ONE_PASS[rows, chunk_rows] = generate_keypoints(model, kp0, lf)
    one_pass = _ONE_PASS[rows, chunk_rows]
    seen = []
    windows = list(stream_keypoints(model, kp0, iter(_pieces(lf, 37)), rows, window=window,
                                    progress=lambda stage, done, total: seen.append((stage, done, total))))
    assert all(len(w) == window for w in windows[:-1]) and 1 <= len(windows[-1]) <= window
    out = Keypoints.cat(windows)
    assert len(out) == len(one_pass) == frames_for_logfbank(rows)
    assert torch.allclose(out.value, one_pass.value, rtol=0, atol=1e-6)
    assert torch.allclose(out.jacobian, one_pass.jacobian, rtol=0, atol=1e-6)
    assert seen[-1] == ("keypoints", len(out), len(out)) and len(seen) == len(windows)


def test_long_clip_on_the_default_encoder_grid(model, kp0):
    """1900 rows (19 s) are encoded in two chunks of the default 1600-row grid, as in the one-pass run."""
    assert 1900 > model.encoder_a.chunk_rows + 2 * model.encoder_a.halo
    lf = _logfbank(1900, seed=4)
    one_pass = generate_keypoints(model, kp0, lf)
    out = Keypoints.cat(list(stream_keypoints(model, kp0, iter(_pieces(lf, 500)), 1900, window=40)))
    assert len(out) == len(one_pass) == frames_for_logfbank(1900)
    assert torch.allclose(out.value, one_pass.value, rtol=0, atol=1e-6)


def test_audio_input_pieces_rebuild_the_model_input(model):
    for rows in (8, 40, 123, 1001):
        lf = _logfbank(rows, seed=rows)
        whole = build_audio_input(lf, obs_len=3)[0]
        got = torch.cat(list(audio_in_pieces(iter(_pieces(lf, 3)), rows, 3)))[:audio_in_length(rows, 3)]
        assert torch.equal(got, whole)


def test_pyramid_frames_equal_embed_audio_and_the_context_stays_bounded(model, encoder_chunk):
    """The pyramid frame by frame equals embed_audio's; the raw columns and input rows held stay under
    a bound set by the encoder chunk, not by the clip's length."""
    rows = 3000
    audio_in = build_audio_input(_logfbank(rows), obs_len=3)
    encoder_chunk(64)  # the same encoder grid on both sides
    with torch.inference_mode():
        whole = model.embed_audio(audio_in)
        pieces = iter(list(torch.split(audio_in[0], 50)))
        stream = AudioPyramidStream(model.encoder_a, pieces, audio_in.shape[1], device=torch.device("cpu"),
                                    dtype=torch.float32, chunk_rows=64)
        held_rows, held_cols = 0, 0
        for fa in range(0, whole[0].shape[1], 9):
            fb = min(fa + 9, whole[0].shape[1])
            for level, frames in zip(whole, stream.frames(fa, fb)):
                assert torch.equal(frames, level[:, fa:fb])
            held_rows = max(held_rows, len(stream._rows))
            held_cols = max(held_cols, max(raw.shape[-1] for raw in stream._raw))
    halo = model.encoder_a.halo
    assert held_rows <= 64 + 2 * halo + 50                  # one chunk + its halo + one piece
    assert held_cols <= 2 * (64 // 4) + 9 + 2               # level 0: two chunks of columns + one window


def test_too_short_and_bad_arguments(model, kp0):
    with pytest.raises(AudioTooShortError):
        next(stream_keypoints(model, kp0, iter([_logfbank(7)]), 7))
    with pytest.raises(ValueError, match="window"):
        next(stream_keypoints(model, kp0, iter([_logfbank(40)]), 40, window=0))
    with pytest.raises(ValueError, match="ended after"):
        list(stream_keypoints(model, kp0, iter([_logfbank(40)]), 80))


# --- the decoding steps' thread count (StepThreads) -------------------------------------------------------
class _FakeSteps:
    """Runs StepThreads spans on a fake clock: each step costs ``cost[threads]`` seconds."""

    def __init__(self, cost: dict[int, float]):
        self.cost, self.now = dict(cost), 0.0

    def clock(self) -> float:
        return self.now

    def window(self, chooser, steps: int = 25) -> list[int]:
        spans = []
        for n in chooser.spans(steps):
            threads = torch.get_num_threads()
            spans.append((threads, n))
            self.now += n * self.cost[threads]
        return spans


def test_step_threads_keep_two_threads_only_while_they_are_faster():
    before = torch.get_num_threads()
    fake = _FakeSteps({1: 0.010, 2: 0.006})
    chooser = StepThreads(2, clock=fake.clock, probe_steps=5)
    assert fake.window(chooser) == [(1, 25)]                  # first window: one thread, the reference
    assert fake.window(chooser) == [(2, 5), (2, 20)]          # a probe of 5 steps wins: the rest on 2
    assert fake.window(chooser) == [(2, 25)]
    assert torch.get_num_threads() == before                  # restored after every span
    fake.cost[2] = 0.050                                      # another process takes a core
    assert fake.window(chooser) == [(2, 25)]                  # measured slower than one thread ...
    assert [fake.window(chooser) for _ in range(4)] == [[(1, 25)]] * 4  # ... so one thread for 4 windows
    assert fake.window(chooser) == [(2, 5), (1, 20)]          # the probe loses: back to one thread at once
    assert [fake.window(chooser) for _ in range(8)] == [[(1, 25)]] * 8  # the wait doubles
    fake.cost[2] = 0.006                                      # the core is free again
    assert fake.window(chooser) == [(2, 5), (2, 20)]
    assert fake.window(chooser) == [(2, 25)]
    assert [t for t, _, _ in chooser.history][:3] == [1, 2, 2]
    # no second thread to try: every step on the caller's setting, nothing timed
    single = StepThreads(1, clock=fake.clock)
    assert fake.window(single) == [(before, 25)] and single.history == []


def test_step_threads_do_not_change_the_keypoints(model, kp0):
    """The decoding steps on two threads give the same bits as on one (so the timing-based choice never shows
    in the output; the rollout's softmax over the streams is written out for this)."""
    lf = _logfbank(400, seed=7)
    one = Keypoints.cat(list(stream_keypoints(model, kp0, iter(_pieces(lf, 100)), 400, window=25,
                                              threads=StepThreads(1))))
    fake = _FakeSteps({1: 0.010, 2: 0.001})
    fake_clock = fake.clock

    class TwoThreads(StepThreads):  # every span after the first on 2 threads; the fake clock says they win
        def spans(self, count):
            for n in super().spans(count):
                yield n
                fake.now += n * fake.cost[torch.get_num_threads()]

    chooser = TwoThreads(2, clock=fake_clock)
    two = Keypoints.cat(list(stream_keypoints(model, kp0, iter(_pieces(lf, 100)), 400, window=25, threads=chooser)))
    assert sum(n for t, n, _ in chooser.history if t == 2) >= len(two) - 25  # all but the first window
    assert torch.equal(one.value, two.value) and torch.equal(one.jacobian, two.jacobian)
