"""Errors that reach the user as one clear line (what went wrong, what to do next)."""


class EdgeClappError(Exception):
    """An expected failure with a message for the user (what went wrong and what to do)."""


class SourceError(EdgeClappError):
    """An audio source cannot be opened or read."""


class ConfigError(EdgeClappError):
    """A configuration value is invalid."""


class CheckpointError(EdgeClappError):
    """A checkpoint cannot be written or read."""


class SessionError(EdgeClappError):
    """A learning run cannot write its folder, or stopped where its state cannot be saved."""
