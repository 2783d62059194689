"""Debounce of the per-frame anomaly flag: an alarm that rises and clears with hysteresis.

A single noisy frame should not start a clip or stop a robot. The alarm rises when at least
``onset_frames`` of the last ``window`` frames were anomalous, and clears after ``release_frames``
nominal frames in a row. Each change is an :class:`AlarmEvent` (onset or offset) carrying the
stamp of the frame that caused it. ``onset_frames = window = release_frames = 1`` follows the raw
flag exactly.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

__all__ = ["AlarmEvent", "Debouncer"]


@dataclass(frozen=True)
class AlarmEvent:
    """A change of the debounced alarm: ``kind`` 'onset' or 'offset' at the frame stamped ``stamp_ns``."""

    kind: str
    stamp_ns: int
    score: float
    anomalous_in_window: int
    window: int
    # Stamp of the onset this event ends (offset events), or of itself (onset events).
    onset_stamp_ns: int


class Debouncer:
    """Hysteresis on a boolean stream: ``update(flag, stamp_ns, score)`` returns the event it causes (or None)."""

    def __init__(self, onset_frames: int = 1, window: int = 1, release_frames: int = 1) -> None:
        if window < 1:
            raise ValueError(f"window: must be >= 1 frame, got {window}")
        if not 1 <= onset_frames <= window:
            raise ValueError(f"onset_frames: must be in [1, window={window}], got {onset_frames}")
        if release_frames < 1:
            raise ValueError(f"release_frames: must be >= 1 frame, got {release_frames}")
        self.onset_frames = int(onset_frames)
        self.window = int(window)
        self.release_frames = int(release_frames)
        self._recent: deque[bool] = deque(maxlen=self.window)
        self._nominal_run = 0
        self.active = False
        self.onset_stamp_ns = 0
        self.onsets = 0

    def reset(self) -> None:
        """Forget the history and clear the alarm without an event (e.g. after a deactivation)."""
        self._recent.clear()
        self._nominal_run = 0
        self.active = False

    def update(self, anomalous: bool, stamp_ns: int, score: float = float("nan")) -> AlarmEvent | None:
        """Feed one frame's flag; the onset or offset it causes, else None."""
        flag = bool(anomalous)
        self._recent.append(flag)
        self._nominal_run = 0 if flag else self._nominal_run + 1
        count = sum(self._recent)
        if not self.active and count >= self.onset_frames:
            self.active = True
            self.onset_stamp_ns = int(stamp_ns)
            self.onsets += 1
            return AlarmEvent("onset", int(stamp_ns), float(score), count, self.window, int(stamp_ns))
        if self.active and self._nominal_run >= self.release_frames:
            self.active = False
            self._recent.clear()  # a new onset needs onset_frames fresh anomalous frames
            return AlarmEvent("offset", int(stamp_ns), float(score), count, self.window, self.onset_stamp_ns)
        return None
