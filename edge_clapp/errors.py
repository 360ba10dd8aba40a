"""Errors that reach the user as one clear line (what went wrong, what to do next)."""


class EdgeClappError(Exception):
    """An expected failure with a message for the user (what went wrong and what to do)."""

    exit_code = 2


class SourceError(EdgeClappError):
    """An audio source cannot be opened or read."""


class ConfigError(EdgeClappError):
    """A configuration value is invalid."""


class CheckpointError(EdgeClappError):
    """A checkpoint cannot be written or read."""


class SessionError(EdgeClappError):
    """A learning run cannot write its folder."""


class HardInterrupt(SessionError):
    """A second Ctrl-C stopped a run inside a learning step: its state was not saved."""

    exit_code = 130
