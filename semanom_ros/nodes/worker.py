"""The newest-frame worker both nodes use: the subscription callback offers each message, one
thread handles them, and a message still waiting when a newer one arrives is replaced (counted as
dropped by the caller) instead of queuing up behind a slow frame. No rclpy here: threading only."""
from __future__ import annotations

import threading
import time
from typing import Any, Callable


class LatestFrameSlot:
    """A one-slot mailbox: ``put`` replaces what is waiting (returns True when it did), ``take`` blocks.

    The subscription callback puts, the worker takes; the slot never holds more than one frame,
    so the worker always gets the newest one and nothing queues up.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: Any = None
        self._closed = False

    def put(self, item: Any) -> bool:
        with self._cond:
            if self._closed:
                return False
            replaced = self._item is not None
            self._item = item
            self._cond.notify()
            return replaced

    def take(self, timeout: float | None = None) -> Any:
        """The waiting item, or None once closed (or after ``timeout`` seconds without one)."""
        with self._cond:
            deadline = None if timeout is None else time.monotonic() + timeout
            while self._item is None and not self._closed:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)
            if self._closed:
                return None
            item, self._item = self._item, None
            return item

    def close(self) -> None:
        """Wake the taker for good and forget what was waiting."""
        with self._cond:
            self._closed = True
            self._item = None
            self._cond.notify_all()

    def reopen(self) -> None:
        with self._cond:
            self._closed = False
            self._item = None


class LatestFrameWorker:
    """A thread that calls ``handle(item)`` on the newest offered item; ``on_error(exc)`` gets what
    ``handle`` raises, and the thread carries on with the next item."""

    def __init__(self, name: str, handle: Callable[[Any], Any], on_error: Callable[[Exception], None]) -> None:
        self.name = name
        self._handle = handle
        self._on_error = on_error
        self._slot = LatestFrameSlot()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._slot.reopen()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def offer(self, item: Any) -> bool:
        """Hand over an item; True when it replaced one the thread had not taken yet (a drop)."""
        return self._slot.put(item)

    def stop(self, timeout: float = 60.0) -> bool:
        """Close the slot and join the thread (it finishes the item in hand first); False if it is
        still running after ``timeout`` seconds."""
        self._slot.close()
        thread, self._thread = self._thread, None
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(timeout=timeout)
        return not thread.is_alive()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while True:
            item = self._slot.take()
            if item is None:
                return
            try:
                self._handle(item)
            except Exception as exc:  # noqa: BLE001 - the worker must survive anything one frame does
                self._on_error(exc)


__all__ = ["LatestFrameSlot", "LatestFrameWorker"]
