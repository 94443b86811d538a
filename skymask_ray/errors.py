"""Errors a user can cause: the CLI turns each into one line, never a traceback."""


class ConfigError(ValueError):
    """A configuration or CLI value is out of range, unknown, or inconsistent."""


class DataNotFoundError(ConfigError):
    """A dataset could not be found in any of the places searched."""
