"""Exception types the harness raises for bad input."""


class BytegolfError(Exception):
    """Base class: a problem with the user's input that deserves a one-line message."""


class ConfigError(BytegolfError):
    """A configuration value or override that cannot work."""


class ArtifactError(BytegolfError):
    """An artifact file that is corrupt, truncated, foreign or otherwise unreadable."""


class DataError(BytegolfError):
    """A corpus, shard, tokenizer or checkpoint that cannot be used."""
