"""Errors of the workflows (each message says what to fix)."""
from __future__ import annotations

from semanom_ros.core.errors import SemanomError

__all__ = ["BuildError"]


class BuildError(SemanomError):
    """A bank build or bank operation cannot start or produced nothing (the message says what to fix)."""
