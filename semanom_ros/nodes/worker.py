"""The newest-frame worker both nodes use.

The subscription callback offers each message, one thread handles them, and a message still waiting
when a newer one arrives is replaced (counted as dropped by the caller) instead of queuing up behind
a slow frame. No rclpy here: threading only.
"""
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
    """A thread that calls ``handle(item)`` on the newest offered item.

    ``on_error(exc)`` gets what ``handle`` raises, and the thread carries on with the next item.

    :meth:`stop` never waits longer than its timeout: a thread still busy with one item after it is
    abandoned (a daemon thread, so it cannot hold up the process's exit), and :meth:`start` begins a
    fresh thread on a fresh mailbox. The abandoned thread sees :meth:`cancelled` turn True, so it
    can skip publishing a result nobody waits for any more, and its errors are no longer reported.
    """

    _local = threading.local()  # the cancel event of the worker thread running the current code

    def __init__(self, name: str, handle: Callable[[Any], Any], on_error: Callable[[Exception], None],
                 after: Callable[[], None] | None = None) -> None:
        """``after()`` runs after each item once the thread has let go of it (e.g. to return memory)."""
        self.name = name
        self._handle = handle
        self._after = after
        self._on_error = on_error
        self._slot = LatestFrameSlot()
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self._busy_since: float | None = None  # time.monotonic() the current item was taken
        self.abandoned = 0  # threads given up on by stop() while busy

    def start(self) -> None:
        self._slot = LatestFrameSlot()
        self._cancel = threading.Event()
        self._busy_since = None
        self._thread = threading.Thread(target=self._run, args=(self._slot, self._cancel), name=self.name,
                                        daemon=True)
        self._thread.start()

    def offer(self, item: Any) -> bool:
        """Hand over an item; True when it replaced one the thread had not taken yet (a drop)."""
        return self._slot.put(item)

    def stop(self, timeout: float = 2.0) -> bool:
        """Close the mailbox and wait up to ``timeout`` seconds for the item in hand.

        False when the thread is still busy then (it is abandoned: see the class docstring).
        """
        self._slot.close()
        self._cancel.set()
        thread, self._thread = self._thread, None
        self._busy_since = None
        if thread is None or thread is threading.current_thread():
            return True
        thread.join(timeout=timeout)
        if thread.is_alive():
            self.abandoned += 1
            return False
        return True

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def busy_since(self) -> float | None:
        """time.monotonic() at which the running thread took the item it is working on; None when idle."""
        return self._busy_since

    @classmethod
    def cancelled(cls) -> bool:
        """True inside a worker thread that :meth:`stop` has given up on (False on any other thread)."""
        cancel = getattr(cls._local, "cancel", None)
        return cancel is not None and cancel.is_set()

    def _run(self, slot: LatestFrameSlot, cancel: threading.Event) -> None:
        self._local.cancel = cancel
        while True:
            item = slot.take()
            if item is None or cancel.is_set():
                return
            if not cancel.is_set():
                self._busy_since = time.monotonic()
            try:
                self._handle(item)
            except Exception as exc:  # noqa: BLE001 - the worker must survive anything one frame does
                if not cancel.is_set():
                    self._on_error(exc)
            finally:
                if not cancel.is_set():
                    self._busy_since = None
            del item  # a large message must not stay alive while the thread waits for the next one
            if self._after is not None:
                try:
                    self._after()
                except Exception as exc:  # noqa: BLE001 - as above
                    self._on_error(exc)


__all__ = ["LatestFrameSlot", "LatestFrameWorker"]
