"""Which frames of a nominal recording go into a bank.

Bags and folders are thinned by :mod:`semanom_ros.io.frames` (time range, stride, minimum
interval); live camera frames by :class:`LiveFrameSelector` with the same rules. After embedding,
:class:`NearDuplicateFilter` drops frames whose CLS token is almost the one of the last frame kept
from the same source (a robot standing at a traffic light records the same view for a minute):
the embedding is paid anyway, the skip saves bank space and search time.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import ConfigError

__all__ = ["LiveFrameSelector", "NearDuplicateFilter", "check_dedup_similarity", "resolve_time_range"]

# --start/--end values at or above this many seconds are absolute Unix times (2001-09-09 onwards);
# smaller values are seconds from the start of the bag.
ABSOLUTE_TIME_S = 1e9


def check_dedup_similarity(value: float | None) -> float | None:
    """None / 0 = off; else a cosine similarity in (0, 1] (e.g. 0.98)."""
    if value is None or (not isinstance(value, bool) and isinstance(value, (int, float)) and float(value) == 0.0):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) <= 1.0:
        raise ConfigError(
            f"dedup_similarity: {value!r} must be in (0, 1] (CLS cosine similarity at or above which a frame counts "
            "as a near duplicate of the last kept one, e.g. 0.98) or 0 for off"
        )
    return float(value)


class NearDuplicateFilter:
    """Skips a frame whose CLS cosine similarity to the last *kept* frame of its source is >= ``similarity``.

    Comparing with the last kept frame (not the previous frame) means a slow drift is still
    recorded once it has moved far enough from what the bank already holds.
    """

    def __init__(self, similarity: float | None) -> None:
        self.similarity = check_dedup_similarity(similarity)
        self._last_kept: dict[str, np.ndarray] = {}
        self.skipped = 0

    @property
    def enabled(self) -> bool:
        return self.similarity is not None

    def keep(self, source: str, cls: np.ndarray) -> bool:
        """True (and remember ``cls``) when the frame is kept; False (counted) for a near duplicate."""
        if self.similarity is None:
            return True
        cls = np.asarray(cls, np.float32)
        last = self._last_kept.get(source)
        if last is not None:
            norm = float(np.linalg.norm(cls) * np.linalg.norm(last)) or 1.0
            if float(cls @ last) / norm >= self.similarity:
                self.skipped += 1
                return False
        self._last_kept[source] = cls
        return True

    def reset(self, source: str | None = None) -> None:
        if source is None:
            self._last_kept.clear()
        else:
            self._last_kept.pop(source, None)


@dataclass
class LiveFrameSelector:
    """Stride, minimum interval and maximum count for frames arriving one by one (live recording).

    Same rules as :func:`semanom_ros.io.frames.iter_bag_frames`: ``stride`` keeps every n-th
    frame offered, ``min_interval_s`` drops a frame stamped sooner than that after the last one
    accepted, ``max_frames`` (None = no limit) stops accepting after that many.
    """

    stride: int = 1
    min_interval_s: float = 0.0
    max_frames: int | None = None
    offered: int = 0
    accepted: int = 0
    skipped: dict[str, int] = field(default_factory=lambda: {"stride": 0, "min_interval": 0, "max_count": 0})
    _last_stamp_ns: int | None = None
    _previous_stamp_ns: int | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stride, bool) or not isinstance(self.stride, int) or self.stride < 1:
            raise ConfigError(f"stride: {self.stride!r} must be an integer >= 1 (keep every n-th frame)")
        if isinstance(self.min_interval_s, bool) or not float(self.min_interval_s) >= 0.0:
            raise ConfigError(f"min_interval_s: {self.min_interval_s!r} must be >= 0 seconds")
        if self.max_frames is not None and (
            isinstance(self.max_frames, bool) or not isinstance(self.max_frames, int) or self.max_frames < 0
        ):
            raise ConfigError(f"max_frames: {self.max_frames!r} must be an integer >= 0 (0 or None = no limit)")
        if self.max_frames == 0:
            self.max_frames = None

    def offer(self, stamp_ns: int) -> str | None:
        """None when the frame is accepted, else the reason it is skipped (and counted)."""
        k = self.offered
        self.offered += 1
        reason = None
        if self.max_frames is not None and self.accepted >= self.max_frames:
            reason = "max_count"
        elif k % self.stride:
            reason = "stride"
        elif (
            self._last_stamp_ns is not None
            # A stamp older than the last one (a replayed bag looping, a simulator reset) starts afresh.
            and 0 <= stamp_ns - self._last_stamp_ns < round(float(self.min_interval_s) * 1e9)
        ):
            reason = "min_interval"
        if reason is not None:
            self.skipped[reason] += 1
            return reason
        self._previous_stamp_ns, self._last_stamp_ns = self._last_stamp_ns, int(stamp_ns)
        self.accepted += 1
        return None

    def undo_accept(self) -> None:
        """The frame just accepted was not used after all (undecodable, near duplicate): free its slot."""
        self.accepted = max(0, self.accepted - 1)
        self._last_stamp_ns = self._previous_stamp_ns

    @property
    def full(self) -> bool:
        return self.max_frames is not None and self.accepted >= self.max_frames


def resolve_time_range(
    start_s: float | None, end_s: float | None, bag_start_ns: int | None, where: str = "bag"
) -> tuple[int | None, int | None]:
    """``--start``/``--end`` seconds -> absolute [start_ns, end_ns) receive times of a bag.

    Values below 1e9 s are relative to the bag's first message (``bag_start_ns``), larger ones
    are absolute Unix times. Raises ConfigError when a relative time is given but the bag's
    start is unknown, or when the range is empty.
    """
    def to_ns(value: float | None, name: str) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
            raise ConfigError(f"{name}: {value!r} must be a number of seconds")
        if value >= ABSOLUTE_TIME_S:
            return int(round(float(value) * 1e9))
        if value < 0:
            raise ConfigError(f"{name}: {value} s is negative; give seconds from the start of the bag or a Unix time")
        if bag_start_ns is None:
            raise ConfigError(
                f"{name}: {value} s is relative to the start of {where}, whose start time cannot be read "
                "(damaged bag?); give an absolute Unix time instead"
            )
        return int(bag_start_ns) + int(round(float(value) * 1e9))

    start_ns, end_ns = to_ns(start_s, "start"), to_ns(end_s, "end")
    if start_ns is not None and end_ns is not None and end_ns <= start_ns:
        raise ConfigError(f"end ({end_s} s) must be after start ({start_s} s) for {where}")
    return start_ns, end_ns
