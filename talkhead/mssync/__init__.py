"""MS-Sync: the audio-driven keypoint generator (checkpoint-compatible with LouisBearing/HMo-audio).

Public API:

- :class:`MSSyncConfig` - the released ``args`` JSON as a validated frozen dataclass.
- :class:`MSSyncGenerator` - the reference ``DynamicalModel`` (training forward + inference rollout).
- :class:`MSSyncDiscriminator` - the reference training ``Discriminator``.
- :func:`load_mssync` - a released model directory (``args`` + ``model_chkpt.pt``) -> generator.
- :func:`generate_keypoints` - kp_source + logfbank ``(M, 26)`` -> kp_driving Keypoints ``(T, K, ...)`` (``K = config.num_kp``, 10 released)
  at 25 fps, exactly as the reference ``execute_model``.
- :class:`MSSyncMotion` - the pipeline's motion generator over a loaded model.
- :func:`num_frames`, :data:`MIN_NUM_SAMPLES` - the frame-count rule for 16-kHz audio.
"""
from .config import MSSyncConfig
from .discriminators import MSSyncDiscriminator
from .generator import MAX_CONTEXT_LENGTH, MSSyncGenerator, load_mssync
from .inference import (MIN_NUM_SAMPLES, MSSyncMotion, build_audio_input, build_warmup_input, generate_keypoints,
                        generate_keypoints_trace, num_frames)

__all__ = [
    "MSSyncConfig", "MSSyncGenerator", "MSSyncMotion", "MSSyncDiscriminator", "load_mssync", "generate_keypoints",
    "generate_keypoints_trace", "build_audio_input", "build_warmup_input", "num_frames", "MIN_NUM_SAMPLES",
    "MAX_CONTEXT_LENGTH",
]
