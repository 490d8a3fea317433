"""The error types every layer shares, at the bottom of the package (it imports nothing from it).

Each is a bad input that a command reports in one line (`error: ...`, exit status 2) instead of a
traceback; `USER_ERRORS` is that list. Errors that one room raises and handles itself stay in that
room (e.g. `pruning.graph.WiringError`, `evaluation.suite.SuiteError`, `report.collect.ReportError`).
"""
from __future__ import annotations


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names it and what is accepted."""


class UnknownNameError(KeyError):
    """A name that is not registered (an algorithm, an env); the message lists the ones that are."""

    def __str__(self) -> str:  # KeyError quotes its message; ours is a sentence
        return str(self.args[0])


class DatasetError(ValueError):
    """A dataset that is missing, malformed or does not fit the environment."""


class CheckpointError(ValueError):
    """A checkpoint that is refused (it holds more than tensors and plain values) or cannot be read."""


#: What the commands print as one line: the errors above, and any ValueError (which includes them and
#: the rooms' own errors) or missing file.
USER_ERRORS = (ConfigError, DatasetError, UnknownNameError, ValueError, FileNotFoundError)
