"""What every frame reader shares (no reader code here).

The Frame record, skip counting with a warning budget, and the argument checks and file ordering
of bag and folder readers.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

__all__ = [
    "BAG_SUFFIXES",
    "IMAGE_EXTENSIONS",
    "IMAGE_MSGTYPES",
    "BagTopic",
    "Frame",
    "SkipStats",
    "SkipWarner",
    "check_selection_args",
    "natural_key",
]

IMAGE_MSGTYPES: tuple[str, ...] = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
BAG_SUFFIXES: tuple[str, ...] = (".mcap", ".db3")
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp")

# The frame readers' default logger (callers usually pass their own).
_log = logging.getLogger("semanom_ros.io.frames")

# Per-message warnings beyond this are counted only, so a bag with thousands of
# bad messages does not flood the log.
_MAX_ITEM_WARNINGS = 20


@dataclass(eq=False)  # comparing ndarrays with == is ambiguous; compare fields explicitly
class Frame:
    """One RGB frame and where it came from."""

    rgb: np.ndarray
    """(H, W, 3) uint8, RGB order, C-contiguous."""
    source: str
    """Bag path or folder path as given."""
    index: int
    """Ordinal of the message on the topic (or file in the folder), counting skipped ones."""
    stamp_ns: int
    """Header stamp if non-zero, else bag receive time; folders: ``round(index * 1e9 / fps)``."""
    topic: str | None
    """Bag topic; None for folders."""
    name: str
    """File name, or ``f"{topic}@{stamp_ns}"`` for bags."""
    ignore: np.ndarray | None = None
    """(H, W) bool pixels left out of a bank (a per-frame ignore mask), or None."""


@dataclass
class SkipStats:
    """Counts of messages/files not turned into frames, by reason, plus the warnings emitted.

    ``read_error`` counts damaged-file events (reading stopped early), not frames,
    and is therefore not part of :attr:`skipped`.
    """

    yielded: int = 0
    decode_error: int = 0
    deserialize_error: int = 0
    stride: int = 0
    time_range: int = 0
    min_interval: int = 0
    max_count: int = 0
    read_error: int = 0
    warnings: list[str] = field(default_factory=list)

    REASONS: ClassVar[tuple[str, ...]] = (
        "decode_error", "deserialize_error", "stride", "time_range", "min_interval", "max_count",
    )

    @property
    def skipped(self) -> int:
        """Total number of skipped messages/files over all reasons."""
        return sum(getattr(self, r) for r in self.REASONS)

    def summary(self) -> str:
        """One line such as ``"140 frames, 10 skipped (stride=8, decode_error=2)"``."""
        parts = [f"{r}={getattr(self, r)}" for r in self.REASONS if getattr(self, r)]
        text = f"{self.yielded} frames, {self.skipped} skipped"
        if parts:
            text += f" ({', '.join(parts)})"
        if self.read_error:
            text += f"; reading stopped early {self.read_error}x (damaged file)"
        return text


class SkipWarner:
    """Sends reader warnings to a logger and records them in ``stats``; per-item warnings are capped."""

    def __init__(self, stats: SkipStats, logger: Any) -> None:
        self.stats = stats
        self.logger = logger if logger is not None else _log
        self.items = 0

    def warn(self, text: str) -> None:
        self.stats.warnings.append(text)
        # rclpy loggers and logging.Logger both have .warning(str).
        self.logger.warning(text)

    def item(self, text: str) -> None:
        self.items += 1
        if self.items <= _MAX_ITEM_WARNINGS:
            self.warn(text)
        elif self.items == _MAX_ITEM_WARNINGS + 1:
            self.warn(
                f"More than {_MAX_ITEM_WARNINGS} frames skipped with errors; further ones are "
                f"only counted (see SkipStats)"
            )


def natural_key(name: str) -> list[Any]:
    """Sort key: frame_2.jpg before frame_10.jpg; zero-padded names sort the same either way."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


@dataclass
class BagTopic:
    """One image topic of a bag: name, message type, message count and the reader's connections."""

    topic: str
    msgtype: str
    count: int
    connections: list[Any] = field(default_factory=list)


def check_selection_args(stride: int, max_frames: int | None, min_interval_s: float) -> None:
    """The ValueError for a stride, frame limit or minimum interval no reader can apply."""
    if int(stride) < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    if max_frames is not None and int(max_frames) < 0:
        raise ValueError(f"max_frames must be >= 0 or None, got {max_frames}")
    if not float(min_interval_s) >= 0.0:
        raise ValueError(f"min_interval_s must be >= 0, got {min_interval_s}")
