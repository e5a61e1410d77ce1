"""Exceptions of analytics.events (one root, narrow subclasses)."""


class EventsError(Exception):
    """Root exception of analytics.events."""


class InvalidEvent(EventsError, ValueError):
    """An event is missing a required field or has an unknown schema version."""


class JournalError(EventsError):
    """The local journal cannot be opened, is locked by another producer, or is corrupt."""


class JournalLocked(JournalError):
    """Another live producer holds the journal file."""
