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

from .worker import LatestFrameSlot

__all__ = ["DecodeAheadWorker"]


class DecodeAheadWorker:
    """``decode(item)`` on one thread (None = skip the item), ``handle(decoded)`` on another.

    Same interface as :class:`semanom_ros.nodes.worker.LatestFrameWorker` (start, offer, stop,
    running); ``on_error(exc)`` gets what either function raises, and both threads carry on.
    """

    def __init__(self, name: str, decode: Callable[[Any], Any], handle: Callable[[Any], Any],
                 on_error: Callable[[Exception], None], on_drop: Callable[[], None]) -> None:
        self.name = name
        self._decode = decode
        self._handle = handle
        self._on_error = on_error
        self._on_drop = on_drop
        self._raw = LatestFrameSlot()
        self._decoded = LatestFrameSlot()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._raw.reopen()
        self._decoded.reopen()
        self._threads = [
            threading.Thread(target=self._decode_loop, name=f"{self.name}_decode", daemon=True),
            threading.Thread(target=self._work_loop, name=self.name, daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def offer(self, item: Any) -> bool:
        """Hand over a raw item; True when it replaced one the decode thread had not taken (a drop)."""
        return self._raw.put(item)

    def stop(self, timeout: float = 60.0) -> bool:
        """Close both slots and join both threads; False if one still runs after ``timeout`` seconds."""
        self._raw.close()
        self._decoded.close()
        threads, self._threads = self._threads, []
        for thread in threads:
            if thread is not threading.current_thread():
                thread.join(timeout=timeout)
        return not any(t.is_alive() for t in threads)

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)

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
            if decoded is not None and self._decoded.put(decoded):
                self._on_drop()  # the worker was busy with an older one: that decoded frame is dropped

    def _work_loop(self) -> None:
        while True:
            decoded = self._decoded.take()
            if decoded is None:
                return
            try:
                self._handle(decoded)
            except Exception as exc:  # noqa: BLE001
                self._on_error(exc)
