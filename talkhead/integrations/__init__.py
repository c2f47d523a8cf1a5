"""Integrations of talkhead into other frameworks, each an optional extra (layer 6, the edges):

- :mod:`talkhead.integrations.pipecat`: a Pipecat avatar service over :class:`talkhead.live.LiveSession`
  (``pip install 'talkhead[pipecat]'``).
"""
