"""Anomaly clip recorder: the last seconds of input and outputs, written as a bag around every onset.

The monitor node hands every processed frame's messages to :meth:`ClipRecorder.add` (a ring
buffer of references: nothing is copied or serialised there; measured 40 us per frame, p99
0.3 ms, bench/bench_clip_recorder.py) and calls :meth:`ClipRecorder.trigger` on every alarm onset. A clip holds the
messages stamped from ``pre_s`` before the onset to ``post_s`` after it (a second onset inside
that window extends it), in one rosbag2 directory (MCAP, readable by rosbags, Foxglove and
``ros2 bag``) named by the onset stamp (:func:`semanom_ros.io.clips.clip_name`). Serialisation
and disk writes happen on a background thread; the folder is kept under ``quota_bytes`` by
deleting the oldest clips. Memory is bounded twice: the ring holds at most ``pre_s`` seconds and
``buffer_bytes`` bytes, and messages waiting for the writer at most ``buffer_bytes`` more (beyond
that they are dropped and counted, the clip is marked truncated).
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from semanom_ros.io.serialization import serialize_rclpy
from semanom_ros.io.clips import CLIP_PREFIX, ClipBagWriter, clip_name, dir_bytes, enforce_quota

__all__ = ["ClipRecord", "ClipRecorder", "ClipStats", "message_nbytes"]

_log = logging.getLogger("semanom_ros.clips")
_SMALL_MESSAGE_BYTES = 256  # the size charged for a message without a data field (headers, strings)


def message_nbytes(msg: Any) -> int:
    """Approximate serialised size of a message: its ``data`` payload (images) plus a small constant."""
    data = getattr(msg, "data", None)
    if isinstance(data, (bytes, bytearray, memoryview)) or hasattr(data, "__len__") and not isinstance(data, str):
        try:
            return len(data) + _SMALL_MESSAGE_BYTES
        except TypeError:
            pass
    return _SMALL_MESSAGE_BYTES


@dataclass(frozen=True)
class ClipRecord:
    """One message for a clip: where it goes, its type ('sensor_msgs/msg/Image'), its stamp and the message."""

    topic: str
    msgtype: str
    stamp_ns: int
    message: Any  # an rclpy message (serialised on the writer thread) or CDR bytes
    nbytes: int


@dataclass
class ClipStats:
    """What the recorder did (read by /diagnostics)."""

    clips_started: int = 0
    clips_written: int = 0
    clips_deleted: int = 0
    truncated: int = 0
    records_dropped: int = 0
    bytes_written: int = 0
    errors: int = 0
    last_clip: str = ""
    last_error: str = ""
    add_s: deque = field(default_factory=lambda: deque(maxlen=300))  # time spent in add() per frame
    write_s: deque = field(default_factory=lambda: deque(maxlen=300))  # writer thread time per message


class ClipRecorder:
    """Ring buffer + background clip writer (see the module docstring)."""

    def __init__(
        self,
        folder: str | Path,
        *,
        pre_s: float = 5.0,
        post_s: float = 5.0,
        quota_bytes: int = 2 << 30,
        buffer_bytes: int = 256 << 20,
        storage: str = "mcap",
        serialize: Callable[[Any], bytes] | None = None,
        prefix: str = CLIP_PREFIX,
    ) -> None:
        if pre_s < 0 or post_s < 0:
            raise ValueError(f"clip pre_s and post_s must be >= 0 seconds, got {pre_s} and {post_s}")
        if quota_bytes <= 0 or buffer_bytes <= 0:
            raise ValueError(f"clip quota_bytes and buffer_bytes must be > 0, got {quota_bytes} and {buffer_bytes}")
        self.folder = Path(folder).expanduser()
        self.pre_ns = int(pre_s * 1e9)
        self.post_ns = int(post_s * 1e9)
        self.quota_bytes = int(quota_bytes)
        self.buffer_bytes = int(buffer_bytes)
        self.storage = storage
        self.prefix = prefix
        self._serialize = serialize or serialize_rclpy
        self.stats = ClipStats()
        self._ring: deque[ClipRecord] = deque()
        self._ring_bytes = 0
        self._clip_end_ns: int | None = None  # stamp after which the open clip closes
        self._pending_bytes = 0
        self._lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="semanom_clip_writer", daemon=True)
        self._thread.start()

    # -- called by the node's worker -----------------------------------------------------------------
    @property
    def recording(self) -> bool:
        """True while a clip is open (between an onset and ``post_s`` after the last onset)."""
        return self._clip_end_ns is not None

    def add(self, records: list[ClipRecord]) -> None:
        """One frame's messages (all with the frame's stamp): into the ring, and into the open clip."""
        t0 = time.perf_counter()
        with self._lock:
            for record in records:
                self._ring.append(record)
                self._ring_bytes += record.nbytes
            newest = records[-1].stamp_ns if records else None
            while self._ring and (self._ring_bytes > self.buffer_bytes
                                  or (newest is not None and self._ring[0].stamp_ns < newest - self.pre_ns)):
                self._ring_bytes -= self._ring.popleft().nbytes
            if self._clip_end_ns is not None and records:
                if newest > self._clip_end_ns:
                    self._clip_end_ns = None
                    self._queue.put(("close", None))
                else:
                    self._enqueue(records)
        self.stats.add_s.append(time.perf_counter() - t0)

    def trigger(self, onset_stamp_ns: int) -> Path | None:
        """Start a clip around an onset (or extend the open one); returns the new clip's path, if any."""
        with self._lock:
            end = int(onset_stamp_ns) + self.post_ns
            if self._clip_end_ns is not None:
                self._clip_end_ns = max(self._clip_end_ns, end)
                return None
            self._clip_end_ns = end
            path = self._unique_path(clip_name(onset_stamp_ns, self.prefix))
            self.stats.clips_started += 1
            self._queue.put(("open", path))
            self._enqueue([r for r in self._ring if r.stamp_ns >= onset_stamp_ns - self.pre_ns])
            return path

    def close(self, timeout: float = 30.0) -> bool:
        """Finish the open clip (if any) and stop the writer thread; False if it is still busy after ``timeout``."""
        with self._lock:
            if self._clip_end_ns is not None:
                self._clip_end_ns = None
                self._queue.put(("close", None))
            self._queue.put(("stop", None))
            self._ring.clear()
            self._ring_bytes = 0
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until the writer thread has written everything queued so far (tests, shutdown)."""
        done = threading.Event()
        self._queue.put(("mark", done))
        return done.wait(timeout)

    # -- internals ----------------------------------------------------------------------------------------
    def _enqueue(self, records: list[ClipRecord]) -> None:
        for record in records:
            if self._pending_bytes + record.nbytes > self.buffer_bytes:
                self.stats.records_dropped += 1
                continue
            self._pending_bytes += record.nbytes
            self._queue.put(("record", record))

    def _unique_path(self, name: str) -> Path:
        path = self.folder / name
        n = 2
        while path.exists():
            path = self.folder / f"{name}_{n}"
            n += 1
        return path

    def _run(self) -> None:
        writer: ClipBagWriter | None = None
        truncated = False
        while True:
            kind, item = self._queue.get()
            try:
                if kind == "record":
                    with self._lock:
                        self._pending_bytes -= item.nbytes
                    if writer is None:
                        continue  # the clip could not be opened, or it reached the quota
                    t0 = time.perf_counter()
                    raw = item.message if isinstance(item.message, (bytes, bytearray)) else self._serialize(
                        item.message)
                    if writer.bytes + len(raw) > self.quota_bytes:
                        truncated = True  # one clip larger than the whole quota: stop it here
                        writer = self._finish(writer, truncated)
                        continue
                    writer.write(item.topic, item.msgtype, item.stamp_ns, raw)
                    self.stats.write_s.append(time.perf_counter() - t0)
                elif kind == "open":
                    if writer is not None:
                        writer = self._finish(writer, truncated)
                    truncated = False
                    self.stats.clips_deleted += len(enforce_quota(self.folder, self.quota_bytes, prefix=self.prefix))
                    writer = ClipBagWriter(item, self.storage)
                elif kind == "close":
                    if writer is not None:
                        writer = self._finish(writer, truncated)
                elif kind == "mark":
                    item.set()
                elif kind == "stop":
                    if writer is not None:
                        self._finish(writer, truncated)
                    return
            except Exception as exc:  # noqa: BLE001 - a full disk or a bad message must not kill the thread
                self.stats.errors += 1
                self.stats.last_error = f"{type(exc).__name__}: {exc}"
                _log.error("clip recorder: %s", self.stats.last_error)
                if writer is not None and kind != "record":
                    writer = None

    def _finish(self, writer: ClipBagWriter, truncated: bool) -> None:
        writer.close()
        self.stats.clips_written += 1
        self.stats.truncated += int(truncated)
        self.stats.bytes_written += writer.bytes
        self.stats.last_clip = str(writer.path)
        # Another clip may have pushed the folder over the quota: the newest (this one) is kept.
        self.stats.clips_deleted += len(enforce_quota(self.folder, self.quota_bytes, prefix=self.prefix,
                                                      keep=(writer.path,)))
        _log.info("clip %s: %d messages, %.1f MB", writer.path, writer.messages, dir_bytes(writer.path) / 1e6)
        return None
