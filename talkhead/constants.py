"""Named constants shared by every stage (time, audio features, keypoints).

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

LOGFBANK_PER_FRAME = 3.9943
"""Reference ``execute_model`` constant ``inc``: logfbank rows per generated video frame."""

NUM_KP = 10
"""Number of FOMM keypoints (``KEYPOINTS_DIM`` in the MS-Sync reference)."""

KP_DIM = 6
"""Numbers per keypoint in MS-Sync sequences: ``[x, y, j00, j01, j10, j11]``."""
