"""The error types every layer shares, at the bottom of the package (it imports nothing from it).

Each is a bad input that a command reports in one line (`error: ...`, exit status 2) instead of a
traceback; `USER_ERRORS` is that list. Every error type of the package is here, grouped by the room
that raises it; the module that raises one also imports it, so either path works.
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


# -- raised by checks ------------------------------------------------------------------------------
class StaleRunError(ConfigError):
    """The job directory holds a run of another config (a reused sweep dir, a changed preset)."""


# -- raised by sparse ------------------------------------------------------------------------------
class WiringError(ValueError):
    """The data flow between a network's Linear layers cannot be read from its forward."""


# -- raised by pruning -----------------------------------------------------------------------------
class UnitCollapseError(ValueError):
    """A structured target would leave a hidden layer with no unit."""


class LayerCollapseError(ValueError):
    """A prunable layer kept no weight at all: the network is disconnected."""


# -- raised by algorithms --------------------------------------------------------------------------
class D3rlpyNotInstalledError(ImportError):
    """`algo=d3rlpy:<name>` without d3rlpy installed; the message says how to install it."""


class PluginImportError(ImportError):
    """A module named with `plugins=` / `import_plugin` could not be imported."""


# -- raised by evaluation --------------------------------------------------------------------------
class PerturbationError(ValueError):
    """A perturbation name or level that cannot be applied."""


class SuiteError(ValueError):
    """An unknown suite or a malformed suite definition."""


# -- raised by the commands ------------------------------------------------------------------------
class JobError(RuntimeError):
    """A sweep job that cannot run; Hydra records it as failed and the other jobs carry on."""


class ReportError(ValueError):
    """A sweep directory that cannot be reported on; the message says why."""


class ExportError(ValueError):
    """A run whose actor cannot be exported, or whose export does not reproduce the framework's actions."""


#: What the commands print as one line: the errors above, and any ValueError (which includes them and
#: the rooms' own errors) or missing file.
USER_ERRORS = (ConfigError, DatasetError, UnknownNameError, ValueError, FileNotFoundError)
