"""Errors a user can cause: the CLI turns each into one line, never a traceback."""


class UserError(Exception):
    """Base of every error whose message is the whole story (one line, no traceback)."""


class ConfigError(UserError, ValueError):
    """A configuration or CLI value is out of range, unknown, or inconsistent."""


class DataNotFoundError(ConfigError):
    """A dataset could not be found in any of the places searched."""


class ResultsWriteError(UserError, OSError):
    """A result file could not be written (full disk, no permission); the previous version is intact."""


class ResultsFolderError(ConfigError):
    """An output folder holds another run's results, or a checkpoint that cannot be used."""


class RunError(UserError, RuntimeError):
    """A run stopped for a reason the user can act on (divergence, unreachable cluster, dead workers)."""
