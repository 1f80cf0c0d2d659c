"""User-facing errors: one clear line naming the file, key or value and what was expected."""


class MaiaAdaptError(Exception):
    pass
