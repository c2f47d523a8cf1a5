"""Named constants shared by every stage (time, audio features, keypoints) and the device choices.

Sources: MS-Sync reference ``dataset/preprocess_audio.py`` and ``execute_model.py``
(LouisBearing/HMo-audio), ``python_speech_features`` defaults, and FOMM ``vox-adv-256.yaml``.
"""

SAMPLE_RATE = 16_000
"""Audio sample rate the features are computed at, Hz."""

FPS = 25
"""Video frame rate of the generated keypoints and of the output video, frames per second."""

HOP_S = 0.010
"""logfbank hop (python_speech_features ``winstep``), seconds: 100 feature frames per second."""

WIN_S = 0.025
"""logfbank analysis window (``winlen``), seconds (400 samples at 16 kHz, rectangular)."""

NFFT = 512
"""FFT size of the logfbank power spectrum."""

N_FILT = 26
"""Number of mel bands of the logfbank; hard-coded as the MS-Sync audio encoder's input width."""

PREEMPH = 0.97
"""Pre-emphasis coefficient: y[n] = x[n] - 0.97 x[n-1]."""

LOGFBANK_HZ = 100
"""logfbank rows per second (``1 / HOP_S``)."""

LOGFBANK_PER_VIDEO_FRAME = LOGFBANK_HZ // FPS
"""Exact logfbank rows per 25-fps video frame: 4 (frame t <-> rows 4t..4t+3). The rate of the
training data (:mod:`talkhead.train.data`), the syncers' windows and the evaluation."""

REFERENCE_LOGFBANK_PER_FRAME = 3.9943
"""The MS-Sync reference ``execute_model``'s constant ``inc`` (rows per generated frame), used only
to size its inference input (``R = int(M / 3.9943)`` frames, ``round(3.9943 R)`` rows kept, see
:mod:`talkhead.mssync.inference`). It is not the true rate (that is
:data:`LOGFBANK_PER_VIDEO_FRAME` = 4); we keep it so the frame count and the input rows match the
reference exactly. Not a different concept of "rows per frame", a reference quirk to reproduce."""

NUM_KP = 10
"""Number of FOMM vox-adv-256 keypoints (``KEYPOINTS_DIM`` in the MS-Sync reference): the keypoint count of
the released MS-Sync and of data, ``args`` and syncer configs that do not state theirs. Models and data
take their own count from their config (:class:`talkhead.keypoints.KeypointSpace`); this is the default."""

KP_DIM = 6
"""Numbers per keypoint in MS-Sync sequences with jacobians: ``[x, y, j00, j01, j10, j11]`` (2 without)."""

DETECT_EVERY_S = 0.5
"""Seconds between the video frames a face is looked for in (``preprocess``'s training clips and
``reenact``'s driving video; :func:`talkhead.facetrack.sample_faces`)."""

MAX_DETECTIONS = 24
"""The most video frames sampled for a face track (spread over the clip)."""

DEVICES = ("auto", "cpu", "cuda", "mps")
"""``--device`` choices; ``auto`` = cuda > mps > cpu (see :func:`talkhead.devices.resolve_device`).
Here, not in :mod:`talkhead.devices` (which imports torch), so the options can list them cheaply."""

PRECISIONS = ("fp32", "fp16", "bf16")
"""``--precision`` choices: the renderer's arithmetic (see :func:`talkhead.devices.check_precision`)."""
