"""One exception family, so the CLI can turn any user mistake into a one-line message."""


class InfloraError(Exception):
    """A problem with the user's input or environment; the message is meant to be shown as is."""


class DataError(InfloraError, ValueError):
    """Missing, empty, corrupt or ill-shaped data."""


class ChecksumError(DataError):
    """A data file does not match the checksum recorded for it."""


class ArchitectureError(InfloraError, ValueError):
    """A model family that the architecture table does not know, or a model that lacks attention blocks."""


class ConfigError(InfloraError, ValueError):
    """An unknown name (rule, strategy, remedy) or an inconsistent option."""


class OutputError(InfloraError, OSError):
    """An output that cannot be written: a folder that cannot be created, no permission, a full disk."""


class TrainingError(InfloraError, RuntimeError):
    """Training cannot go on (non-finite loss, label mismatch, ...)."""
