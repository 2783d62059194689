"""Errors the engine raises; each message names the file, setting or input at fault and a fix."""


class SemanomError(Exception):
    """Base class for every error semanom_ros raises on purpose."""


class ConfigError(SemanomError, ValueError):
    """A setting is missing, out of range or inconsistent."""


class ImageError(SemanomError, ValueError):
    """A frame cannot be processed (wrong dtype, channels, size, layout)."""


class ModelError(SemanomError):
    """A model id or folder cannot be loaded as a supported backbone."""


class BankError(SemanomError):
    """A bank directory is missing, truncated, corrupt or of an unknown format."""


class BankMismatchError(BankError):
    """A bank was built with another model or input size than the pipeline uses."""
