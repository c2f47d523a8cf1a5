"""talkhead: one face photo + speech -> a talking-head video (MS-Sync keypoints, FOMM renderer)."""

__version__ = "0.1.0"
