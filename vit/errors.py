"""Bad input that our code recognises: reported as one line, never as a traceback.

A `ConfigError` is raised where a value is checked (sizes, a scheme's constraint, a data
option); it is a ValueError, so code that calls the library directly can catch either.
Any other exception is a bug and keeps its traceback.
"""


class ConfigError(ValueError):
    """A bad value in the config: one line, exit code 2."""


class TrainingError(Exception):
    """A run that cannot go on (a diverging loss, a run folder that holds another run):
    one line and exit code 1."""


class DataError(Exception):
    """Data that is missing or does not match the config: one line, exit code 1."""
