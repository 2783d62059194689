"""What the monitor node reports on /diagnostics.

Counters and recent timings written by the callback and worker threads (:class:`MonitorStats`), and
the DiagnosticStatus made of them (:class:`MonitorDiagnostics`: OK / WARN / ERROR with rate, latency,
drops, bank size, device, last error).

The watchdog lives here too: ERROR while one frame has been in the worker for longer than
``stall_timeout_s`` (a stalled engine: nothing else is answered meanwhile), WARN while the processed
rate is below ``min_rate_fraction`` of the input rate.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue

from semanom_ros.core.monitor import Monitor

__all__ = ["MonitorDiagnostics", "MonitorStats", "NO_INPUT_WARN_S", "RECENT_ERROR_S", "calibration_warning"]

RECENT_ERROR_S = 10.0  # /diagnostics stays WARN this long after an error or a bad message
NO_INPUT_WARN_S = 5.0  # ... and when an active node has received nothing for this long
_LATENCY_WINDOW = 300  # frames behind the latency percentiles
_RATE_WINDOW_S = 5.0
_MAX_PUBLISHERS = 64  # publishers whose sequence numbers are followed (bounded: drivers may restart often)


@dataclass
class MonitorStats:
    """Counters and recent timings behind /diagnostics (written by the callback and worker threads)."""

    received: int = 0
    missed: int = 0  # sent by a publisher but never received: replaced in the reader history or lost on the way
    processed: int = 0
    dropped: int = 0
    bad_messages: int = 0
    errors: int = 0
    last_error: str = ""
    last_error_time: float = 0.0  # time.monotonic()
    last_received_time: float = 0.0
    received_times: deque = field(default_factory=lambda: deque(maxlen=1000))
    latencies_s: deque = field(default_factory=lambda: deque(maxlen=_LATENCY_WINDOW))
    processing_s: deque = field(default_factory=lambda: deque(maxlen=_LATENCY_WINDOW))
    done_times: deque = field(default_factory=lambda: deque(maxlen=1000))
    # Per-frame stages (seconds): wait in the mailbox, decode, engine, overlay, build + publish.
    stages_s: deque = field(default_factory=lambda: deque(maxlen=_LATENCY_WINDOW))
    lock: threading.Lock = field(default_factory=threading.Lock)
    # The last publication sequence number seen from each publisher (by GID), to count ``missed``.
    last_sequence: dict = field(default_factory=dict)

    def record_frame(self, latency_s: float, processing_s: float, stages_s: dict[str, float] | None = None) -> None:
        with self.lock:
            self.processed += 1
            self.latencies_s.append(latency_s)
            self.processing_s.append(processing_s)
            self.done_times.append(time.monotonic())
            if stages_s:
                self.stages_s.append(stages_s)

    def stages_ms(self, q: float) -> str:
        """'wait 3.1, decode 2.0, ...' : the q-th percentile of each stage over recent frames."""
        with self.lock:
            rows = list(self.stages_s)
        if not rows:
            return ""
        return ", ".join(f"{k} {np.percentile([r[k] for r in rows], q) * 1e3:.1f}" for k in rows[-1])

    def record_received(self, publisher: bytes | None = None, sequence: int | None = None) -> float:
        """Count one arriving message; returns its arrival time (time.monotonic()).

        ``publisher`` (its GID) and ``sequence`` (the publication sequence number the RMW reports
        in the message info): a jump in one publisher's numbers counts the messages in between as
        ``missed``, so frames that vanish before the callback (replaced in the reader history,
        dropped by the publisher's own history, lost by best effort) are still accounted for.
        Nothing is counted without them (an RMW that does not report sequence numbers).
        """
        now = time.monotonic()
        with self.lock:
            self.received += 1
            self.last_received_time = now
            self.received_times.append(now)
            if publisher is not None and sequence:
                last = self.last_sequence.get(publisher)
                if last is not None and sequence > last + 1:
                    self.missed += sequence - last - 1
                if last is None and len(self.last_sequence) >= _MAX_PUBLISHERS:
                    del self.last_sequence[next(iter(self.last_sequence))]  # the longest-known publisher
                if last is None or sequence > last:
                    self.last_sequence[publisher] = sequence
        return now

    def forget_publishers(self) -> None:
        """Start the sequence counting afresh (a new subscription: messages sent meanwhile are not missed)."""
        with self.lock:
            self.last_sequence.clear()

    def clear_error(self) -> None:
        """Forget the last error (after a successful configure: it no longer describes the node)."""
        with self.lock:
            self.last_error = ""
            self.last_error_time = 0.0

    def record_error(self, message: str, bad_message: bool) -> None:
        with self.lock:
            if bad_message:
                self.bad_messages += 1
            else:
                self.errors += 1
            self.last_error = message
            self.last_error_time = time.monotonic()

    def rate_hz(self, now: float | None = None) -> float:
        """Frames processed per second over the last few seconds."""
        return self._rate(self.done_times, now)

    def input_rate_hz(self, now: float | None = None) -> float:
        """Messages received per second over the last few seconds."""
        return self._rate(self.received_times, now)

    def _rate(self, times: deque, now: float | None) -> float:
        now = time.monotonic() if now is None else now
        with self.lock:
            recent = [t for t in times if now - t <= _RATE_WINDOW_S]
        if len(recent) < 2 or recent[-1] <= recent[0]:
            return 0.0
        # Over the whole window, not first..last event: a rate that stopped reads low at once.
        span = max(recent[-1] - recent[0], min(_RATE_WINDOW_S, now - recent[0]))
        return (len(recent) - 1) / span

    def latency_ms(self, q: float) -> float:
        with self.lock:
            values = list(self.latencies_s)
        return float(np.percentile(values, q) * 1e3) if values else float("nan")

    def processing_ms(self, q: float) -> float:
        with self.lock:
            values = list(self.processing_s)
        return float(np.percentile(values, q) * 1e3) if values else float("nan")


def calibration_warning(monitor: Monitor | None) -> str:
    """The bank's calibration warning (a threshold calibrated within its own drive), '' when none applies.

    A fixed ``threshold`` parameter replaces the calibration, and with it the warning.
    """
    if monitor is None or monitor.config.threshold is not None:
        return ""
    return str((monitor.bank.calibration or {}).get("warning") or "")


class MonitorDiagnostics:
    """The DiagnosticStatus of a monitor node from its :class:`MonitorStats`.

    The drop fraction is over the frames received (or missed) since the previous status;
    ``frames_received`` = ``frames_processed`` + ``frames_dropped`` + ``bad_messages`` once the worker
    is idle, and ``frames_missed`` counts what publishers sent that never reached the node.
    """

    def __init__(self, stats: MonitorStats) -> None:
        self.stats = stats
        self._prev = (0, 0)  # (received, dropped) at the previous status

    def status(
        self,
        *,
        name: str,
        state: str,
        transition_error: str,
        input_topic: str,
        device: str,
        drop_warn_fraction: float,
        monitor: Monitor | None,
        busy_since: float | None = None,
        stall_timeout_s: float = float("inf"),
        min_rate_fraction: float = 0.0,
    ) -> DiagnosticStatus:
        """The node's DiagnosticStatus now (level, message, key/values).

        ``state`` is the lifecycle state, ``transition_error`` why the last configure/activate failed
        ('' after a success), ``busy_since`` when the worker took the frame it is working on (None: idle).
        """
        now = time.monotonic()
        s = self.stats
        # Missed messages count as dropped here: both are frames sent and never answered.
        received, dropped = s.received + s.missed, s.dropped + s.missed
        prev_received, prev_dropped = self._prev
        self._prev = (received, dropped)
        new_received = received - prev_received
        drop_fraction = (dropped - prev_dropped) / new_received if new_received > 0 else 0.0
        level, message = DiagnosticStatus.OK, state
        recent_error = s.last_error and now - s.last_error_time < RECENT_ERROR_S
        if state == "unconfigured" and transition_error:
            level, message = DiagnosticStatus.ERROR, f"unconfigured: {transition_error}"
        elif state == "active":
            rate, input_rate = s.rate_hz(now), s.input_rate_hz(now)
            busy_s = now - busy_since if busy_since is not None else 0.0
            message = f"active: {rate:.1f} Hz"
            if busy_s > stall_timeout_s:
                level, message = DiagnosticStatus.ERROR, (
                    f"active: stalled: one frame has been processing for {busy_s:.0f} s (stall_timeout_s "
                    f"{stall_timeout_s:g}); no other frame is answered meanwhile"
                )
            elif recent_error:
                level, message = DiagnosticStatus.WARN, f"active: {s.last_error}"
            elif input_rate > 0 and rate < min_rate_fraction * input_rate:
                level, message = DiagnosticStatus.WARN, (
                    f"active: processing {rate:.1f} Hz of {input_rate:.1f} Hz received (below "
                    f"min_rate_fraction {min_rate_fraction:g})"
                )
            elif new_received > 0 and drop_fraction > drop_warn_fraction:
                level, message = DiagnosticStatus.WARN, f"active: dropping {100 * drop_fraction:.0f} % of frames"
            elif now - (s.last_received_time or now) > NO_INPUT_WARN_S or not s.received:
                level, message = DiagnosticStatus.WARN, f"active: no frames on {input_topic}"
        values = {
            "state": state,
            "input_topic": input_topic,
            "rate_hz": f"{s.rate_hz(now):.2f}",
            "input_rate_hz": f"{s.input_rate_hz(now):.2f}",
            "busy_s": f"{now - busy_since:.1f}" if busy_since is not None else "0.0",
            "latency_p50_ms": f"{s.latency_ms(50):.1f}",
            "latency_p95_ms": f"{s.latency_ms(95):.1f}",
            "processing_p50_ms": f"{s.processing_ms(50):.1f}",
            "processing_p95_ms": f"{s.processing_ms(95):.1f}",
            "stages_p50_ms": s.stages_ms(50),
            "stages_p95_ms": s.stages_ms(95),
            "frames_received": str(s.received),
            "frames_processed": str(s.processed),
            "frames_dropped": str(s.dropped),
            "frames_missed": str(s.missed),
            "bad_messages": str(s.bad_messages),
            "errors": str(s.errors),
            "bank_vectors": str(len(monitor.bank)) if monitor is not None else "0",
            "device": device,
            "threshold": f"{monitor.threshold:.5f}" if monitor is not None else "-",
            "calibration_warning": calibration_warning(monitor),
            "last_error": s.last_error,
        }
        return DiagnosticStatus(
            level=level,
            name=name,
            message=message,
            hardware_id=device,
            values=[KeyValue(key=k, value=v) for k, v in values.items()],
        )
