"""The one error type for mistakes a user can make (bad config, bad files).

The command-line entry points catch `FinetuneError` and print its message as one
line, then exit with a non-zero code. Everything else is a bug and keeps its traceback.
"""


class FinetuneError(Exception):
    """Base class of every user-caused error."""


class ConfigError(FinetuneError, ValueError):
    """A config key has a wrong value, type or name."""


class DataError(FinetuneError, ValueError):
    """A data file exists but cannot be used (corrupt image, empty folder, ...)."""


class MissingFileError(FinetuneError, FileNotFoundError):
    """A file or folder named in the config does not exist."""

    def __str__(self) -> str:  # FileNotFoundError formats args as a tuple otherwise
        return str(self.args[0]) if self.args else ""
