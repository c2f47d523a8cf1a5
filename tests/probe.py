"""Old home of the media oracle, now :mod:`helpers` (``probe``, ``moov_before_mdat``, ``VideoInfo``).

Kept only while tests/test_reenact.py and tests/test_pipeline.py still say ``from probe import probe``;
delete this file once they import from helpers.
"""
from helpers import VideoInfo, moov_before_mdat, probe

__all__ = ["VideoInfo", "probe", "moov_before_mdat"]
