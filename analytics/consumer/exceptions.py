"""Exceptions of analytics.consumer."""


class ConsumerError(Exception):
    """Root exception of analytics.consumer."""


class CheckpointOffsetBackwards(ConsumerError, ValueError):
    """A record offset is not after the last one the checkpoint holds for its partition."""
