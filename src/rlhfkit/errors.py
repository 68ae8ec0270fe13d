"""Errors that are the user's to fix. The CLI prints them as one line and exits with status 2."""


class UsageError(Exception):
    """Bad input: a config value, a path, a dataset row, a model that does not load."""


class ConfigError(UsageError):
    """A config file or override that names an unknown field or gives a value of the wrong type."""
