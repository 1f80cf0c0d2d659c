"""User-facing errors: one clear line naming the file, key or value and what was expected."""


class MaiaAdaptError(Exception):
    pass


class ConfigError(MaiaAdaptError):
    """A config key or value that is not what the schema expects."""


class DataError(MaiaAdaptError):
    """An input file (PGN, FEN list, position store) that is missing or unusable."""


class CheckpointError(MaiaAdaptError):
    """A checkpoint that is missing, unreadable or of another architecture."""
