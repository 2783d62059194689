"""Decode ahead: the next frame is decoded on its own thread while the worker processes the current one.

Two one-slot mailboxes (:class:`semanom_ros.nodes.worker.LatestFrameSlot`): the subscription
callback puts raw messages into the first, a decode thread turns the newest into pixels and puts
them into the second, the worker takes the newest decoded frame. A frame replaced in either slot
is reported through ``on_drop`` (the node counts it as dropped), so latency never grows and the
worker never waits for a decode. No rclpy here: threading only.
"""
from __future__ import annotations

import threading
from typing import Any, Callable

from .worker import LatestFrameSlot, LatestFrameWorker

__all__ = ["DecodeAheadWorker"]


class DecodeAheadWorker:
    """``decode(item)`` on one thread (None = skip the item), ``handle(decoded)`` on another.

    Same interface as :class:`semanom_ros.nodes.worker.LatestFrameWorker` (start, offer, stop,
    running), whose newest-item thread runs ``handle``; ``on_error(exc)`` gets what either function
    raises, and both threads carry on.
    """

    def __init__(self, name: str, decode: Callable[[Any], Any], handle: Callable[[Any], Any],
                 on_error: Callable[[Exception], None], on_drop: Callable[[], None],
                 after: Callable[[], None] | None = None) -> None:
        self.name = name
        self._decode = decode
        self._on_error = on_error
        self._on_drop = on_drop
        self._raw = LatestFrameSlot()
        self._worker = LatestFrameWorker(name, handle, on_error, after=after)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._raw.reopen()
        self._worker.start()
        self._thread = threading.Thread(target=self._decode_loop, name=f"{self.name}_decode", daemon=True)
        self._thread.start()

    def offer(self, item: Any) -> bool:
        """Hand over a raw item; True when it replaced one the decode thread had not taken (a drop)."""
        return self._raw.put(item)

    def stop(self, timeout: float = 2.0) -> bool:
        """Stop the decode thread, then the worker (it finishes its frame); False if one outlives ``timeout``."""
        self._raw.close()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=timeout)
        worker_stopped = self._worker.stop(timeout)
        return worker_stopped and not (thread is not None and thread.is_alive())

    @property
    def busy_since(self) -> float | None:
        """When the worker took the frame it is processing (time.monotonic()), None when idle."""
        return self._worker.busy_since

    @staticmethod
    def cancelled() -> bool:
        """True in a worker thread that :meth:`stop` abandoned (see LatestFrameWorker.cancelled)."""
        return LatestFrameWorker.cancelled()

    @property
    def running(self) -> bool:
        return self._worker.running or (self._thread is not None and self._thread.is_alive())

    def _decode_loop(self) -> None:
        while True:
            item = self._raw.take()
            if item is None:
                return
            try:
                decoded = self._decode(item)
            except Exception as exc:  # noqa: BLE001 - the thread must survive anything one frame does
                self._on_error(exc)
                continue
            if decoded is not None and self._worker.offer(decoded):
                self._on_drop()  # the worker was busy with an older one: that decoded frame is dropped
            # Let go of the message and its pixels now, not when the next one arrives: the worker
            # returns a large frame's memory to the OS once its own reference is gone.
            del item, decoded
