"""Errors raised at the boundaries (configs, files, models, CLI). Each message says how to fix it.

The CLI turns any `SaekitError` into a one-line message and exit code 2, without a traceback.
"""


class SaekitError(Exception):
    """Base class: user-facing problems whose message says what to do."""


class ConfigError(SaekitError, ValueError):
    """A config file or override is wrong (unknown key, wrong type, bad value)."""


class HookpointError(SaekitError, ValueError):
    """A hook name the model does not have."""


class ModelLoadError(SaekitError, RuntimeError):
    """A model could not be loaded (offline hub name, bad directory, missing package)."""


class CorpusError(SaekitError, ValueError):
    """A corpus is empty, missing or malformed."""


class CacheError(SaekitError, ValueError):
    """An activation cache is missing, corrupt, truncated or inconsistent."""


class RunDirError(SaekitError, FileNotFoundError):
    """A run directory or checkpoint is missing or incomplete."""


class DataError(SaekitError, ValueError):
    """Activations are unusable (NaN/inf, wrong width)."""
