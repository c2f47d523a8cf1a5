"""talkhead.live: push speech, pull frames + their audio at the fps asked; idle, interruption, bad input."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from helpers import ASTRONAUT, SPEECH, ToyRenderer, astronaut_face, blank_photo
from talkhead.errors import AudioError, InputError, NoFaceError
from talkhead.live import RETURN_FRAMES, LiveSession
from talkhead.options import AnimateOptions
from talkhead.pipeline import Pipeline

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _faces(image):
    return [] if float(image.std()) < 1 else astronaut_face(image)


@pytest.fixture(scope="module")
def pipeline(tiny_models_dir):
    opts = AnimateOptions(models_dir=str(tiny_models_dir), device="cpu", offline=True, frame="crop")
    return Pipeline(opts, landmarker=_faces)


@pytest.fixture()
def session(pipeline):
    s = LiveSession(pipeline, fps=25)
    s.set_photo(ASTRONAUT)
    return s


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    x, sr = sf.read(SPEECH, dtype="int16")
    assert sr == 16000
    return x


def test_a_minute_of_speech_at_30_fps_stays_aligned(mssync_tiny_dir, speech):
    """A minute of 22.05 kHz int16 speech pushed in uneven chunks, pulled at 30 fps: every frame carries
    exactly its 1/30 s of audio, the speech comes out whole and in order, and each speaking frame shows the
    MS-Sync frame of its own time (within one frame). (A stand-in renderer: 1800 frames of the tiny FOMM
    would dominate the suite; the tiny MS-Sync runs every step.)"""
    import soxr

    from talkhead.mssync import MSSyncMotion, load_mssync

    pipeline = Pipeline(AnimateOptions(device="cpu", frame="crop", models_dir="unused"), renderer=ToyRenderer(),
                        motion=MSSyncMotion(load_mssync(mssync_tiny_dir)), landmarker=astronaut_face)
    session = LiveSession(pipeline, fps=30)
    session.set_photo(ASTRONAUT)
    clip = soxr.resample(speech.astype(np.float32) / 32768, 16000, 22050).astype(np.float32)
    minute = (np.resize(clip, 60 * 22050) * 32767).astype(np.int16)
    rng = np.random.default_rng(0)
    pos = 0
    while pos < len(minute):
        n = int(rng.integers(100, 5000))
        session.push(minute[pos:pos + n], 22050)
        pos += n
    session.end_speech()
    frames = []
    while session.queued_s > 0 or not frames or frames[-1].speaking:
        frames.append(session.pull())
    assert [f.index for f in frames] == list(range(len(frames)))
    lengths = [len(f.audio) for f in frames]
    assert lengths == [round((k + 1) * 16000 / 30) - round(k * 16000 / 30) for k in range(len(frames))]
    speaking = [f for f in frames if f.speaking]
    assert 59.9 * 30 <= len(speaking) <= 60 * 30 + 1
    first = frames.index(speaking[0])
    assert all(f.speaking for f in frames[first:first + len(speaking)])          # one unbroken stretch
    heard = np.concatenate([f.audio for f in speaking])
    expected = soxr.resample(minute.astype(np.float32) / 32768, 22050, 16000)
    assert abs(len(heard) - len(expected)) < 16000 / 30
    n = min(len(heard), len(expected)) - 200
    np.testing.assert_allclose(heard[:n], expected[:n], atol=2e-3)               # streamed vs one-shot soxr
    for f in speaking:
        assert abs(f.keypoint_time_s - f.speech_time_s) < 1 / 30
    assert first * 1000 / 30 <= session.lookahead_ms + 1000 / 30 + 1                # waited for the lookahead only


def test_first_speech_frame_waits_exactly_for_the_lookahead(session, speech):
    need = int(session._norm_samples)
    lookahead = session.lookahead_ms
    assert 900 < lookahead < 2000                                   # the released architecture: ~1.5 s
    x = speech[:need + 640 * 3]
    session.push(x[:need - 640], 16000)
    assert not session.pull().speaking                                # not enough lookahead yet
    session.push(x[need - 640:], 16000)
    f = session.pull()
    assert f.speaking and f.speech_time_s == 0 and np.array_equal(f.audio, x[:640] / 32768.0)


def test_idle_frames_move_and_are_silent(session):
    frames = [session.pull() for _ in range(12)]
    assert not any(f.speaking for f in frames)
    assert all(not f.audio.any() and len(f.audio) == 640 for f in frames)
    images = [f.image for f in frames]
    assert images[0].shape == (64, 64, 3) and images[0].dtype == np.uint8
    assert len({im.tobytes() for im in images}) > 6                  # not a frozen picture
    steps = [np.abs(a.astype(int) - b.astype(int)).mean() for a, b in zip(images, images[1:])]
    assert max(steps) < 8                                              # small and smooth


def test_interruption_empties_the_queue_and_idles_next_frame(session, speech):
    session.push(np.tile(speech, 2), 16000)                         # 9.6 s
    session.end_speech()
    assert session.pull().speaking
    session.pull()
    assert session.queued_s > 5
    session.interrupt()
    assert session.queued_s == 0
    f = session.pull()
    assert not f.speaking and not f.audio.any()
    assert f.image.tobytes() == session.render(session._idle_pose(f.index)).tobytes()  # idle at once, no easing
    # and speech pushed afterwards plays again
    session.push(speech, 16000)
    session.end_speech()
    assert any(session.pull().speaking for _ in range(5))


def test_utterance_end_eases_back_to_idle(session, speech):
    session.push(speech[:16000], 16000)
    session.end_speech()
    frames = [session.pull() for _ in range(25 + RETURN_FRAMES + 2)]
    assert sum(f.speaking for f in frames) == 25
    assert not frames[-1].speaking and session.queued_s == 0


@pytest.mark.parametrize("chunk, rate, error, match", [
    (np.zeros(100, np.int32), 16000, InputError, "int16 or float"),
    (np.array(["a"]), 16000, InputError, "int16 or float"),
    (np.array([0.1, np.nan], np.float32), 16000, AudioError, "NaN"),
    (np.array([[0.1, 0.0], [np.inf, 0.0]]), 16000, AudioError, "infinity"),
    (np.array([0.1, -np.inf], np.float16), 22050, AudioError, "infinity"),
    (np.zeros((10, 9), np.float32), 16000, AudioError, "channels"),
    (np.zeros(100, np.float32), 0, InputError, "positive integer"),
    (np.zeros(100, np.float32), -8000, InputError, "positive integer"),
    (np.zeros(100, np.float32), 16000.5, InputError, "positive integer"),
    (np.zeros((2, 2, 2), np.float32), 16000, InputError, "shape"),
])
def test_bad_chunks_raise_and_change_nothing(session, speech, chunk, rate, error, match):
    session.push(speech[:8000], 16000)
    before = session.queued_s
    with pytest.raises(error, match=match):
        session.push(chunk, rate)
    assert session.queued_s == before
    session.push(speech[8000:16000], 16000)                           # still usable
    session.end_speech()
    assert session.samples_in == 16000
    frames = [session.pull() for _ in range(26)]
    assert sum(f.speaking for f in frames) == 25 and session.samples_out == 16000


def test_a_bad_chunk_after_a_rate_change_keeps_the_resampler(session, speech):
    """A NaN chunk at a new rate is refused before the previous rate's resampler is flushed: the speech
    queued at 22.05 kHz still comes out whole (its resampler tail included)."""
    import soxr

    x = soxr.resample(speech[:16000].astype(np.float32) / 32768, 16000, 22050).astype(np.float32)
    session.push(x, 22050)
    with pytest.raises(AudioError, match="NaN"):
        session.push(np.array([np.nan] * 100, np.float32), 16000)
    session.end_speech()
    assert abs(session.samples_in - 16000) <= 2                        # the tail came with end_speech
    n = 0
    while session.queued_s > 0:
        n += session.pull().speaking
    assert n == 25 and session.samples_out == session.samples_in


def test_pull_before_photo_and_photo_without_face(pipeline, tmp_path, speech):
    session = LiveSession(pipeline)
    with pytest.raises(InputError, match="set_photo"):
        session.pull()
    with pytest.raises(InputError, match="set_photo"):
        session.push(speech, 16000)
    with pytest.raises(NoFaceError):
        session.set_photo(blank_photo(tmp_path / "wall.png"))
    with pytest.raises(InputError, match="set_photo"):
        session.pull()
    session.set_photo(ASTRONAUT)
    before = session.pull().image
    with pytest.raises(NoFaceError):
        session.set_photo(blank_photo(tmp_path / "wall.png"))
    assert session.pull().image.shape == before.shape                # the previous photo is kept
    with pytest.raises(InputError, match="fps"):
        LiveSession(pipeline, fps=0)


def test_motion_scale_zero_keeps_the_head_still(tiny_models_dir, speech):
    """options.motion_scale reaches the live frames as animate's: 0 -> idle frames are the photo's pose
    (identical), and the speech frames' keypoints are the scaled generated ones."""
    from talkhead.keypoints import scale_head_motion

    opts = AnimateOptions(models_dir=str(tiny_models_dir), device="cpu", offline=True, frame="crop", motion_scale=0)
    session = LiveSession(Pipeline(opts, landmarker=_faces), fps=25)
    session.set_photo(ASTRONAUT)
    idle = [session.pull() for _ in range(4)]
    assert len({f.image.tobytes() for f in idle}) == 1                 # a still head: nothing moves when idle
    torch.testing.assert_close(idle[0].keypoints.value, session._stages.kp_source.value, atol=1e-6, rtol=0)
    moving = LiveSession(Pipeline(AnimateOptions(models_dir=str(tiny_models_dir), device="cpu", offline=True,
                                                 frame="crop"), landmarker=_faces), fps=25)
    moving.set_photo(ASTRONAUT)
    for _ in range(4):
        moving.step()                                                  # the same idle pose when speech starts
    for s in (session, moving):
        s.push(speech[:16000], 16000)
        s.end_speech()
    still = [session.pull() for _ in range(3)]
    free = [moving.step() for _ in range(3)]
    assert all(f.speaking for f in still + free)
    for a, b in zip(still, free):
        expected = scale_head_motion(b.keypoints, moving._stages.kp_source, 0.0)
        torch.testing.assert_close(a.keypoints.value, expected.value, atol=1e-5, rtol=0)


def test_enhance_runs_the_restore_stage(tiny_models_dir, speech, astro_face):
    """options.enhance: the live frames go through the restore stage (2 S crops, the restorer called per
    frame), as animate's."""
    from talkhead.restore import identity_restorer

    calls = []
    base = identity_restorer(256)

    class Counting:
        face_size = base.face_size

        def __call__(self, x):
            calls.append(x.shape)
            return base(x)

    opts = AnimateOptions(models_dir=str(tiny_models_dir), device="cpu", offline=True, frame="crop", enhance="gfpgan")
    session = LiveSession(Pipeline(opts, landmarker=lambda image: [astro_face], restorer=Counting()), fps=25)
    session.set_photo(ASTRONAUT)
    assert session.frame_size == (128, 128)
    session.push(speech[:8000], 16000)
    session.end_speech()
    frames = [session.pull() for _ in range(3)]
    assert frames[0].speaking and all(f.image.shape == (128, 128, 3) for f in frames)
    assert len(calls) == 3
