"""The sources of a bank build: which bags / image folders, which topic, which frames, and a reader thread.

The reader thread decodes the next frames while the model embeds the current batch.

Data faults never stop a build halfway: a bag that cannot be opened or lacks the topic is
recorded in its :class:`SourceSummary` (``error``) and skipped; only a build with no usable
source at all raises :class:`BuildError`.
"""
from __future__ import annotations

import dataclasses
import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import cv2
import numpy as np

from semanom_ros.core.errors import ConfigError
from semanom_ros.core.selection import resolve_time_range
from semanom_ros.io.bags import (
    bag_start_ns,
    choose_image_topic,
    is_bag_path,
    iter_bag_frames,
    list_image_topics,
)
from semanom_ros.io.folders import image_files, iter_folder_frames
from semanom_ros.io.frame_types import Frame, SkipStats

from .errors import BuildError
from .settings import BuildOptions

__all__ = [
    "FramePrefetcher", "SourcePlan", "SourceSummary", "as_stills", "plan_sources", "read_ignore_mask",
    "with_ignore_masks",
]


@dataclass
class SourceSummary:
    """One bag topic or image folder in a build."""

    path: str
    kind: str  # bag | folder
    topic: str | None = None
    msgtype: str | None = None
    messages: int = 0  # messages on the topic (image files in the folder)
    decoded: int = 0  # frames the reader produced (after time range, stride, interval)
    used: int = 0  # frames added to the bank
    skipped: dict[str, int] = field(default_factory=dict)
    read_errors: int = 0  # times reading stopped early (damaged file)
    error: str | None = None  # why the whole source was skipped
    first_stamp_ns: int | None = None
    last_stamp_ns: int | None = None
    masked: int = 0  # frames that came with a per-frame ignore mask (--masks)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class SourcePlan:
    """One source of a build: its summary, its skip counters and its frame stream (None when skipped)."""

    summary: SourceSummary
    stats: SkipStats
    frames: Iterator[Frame] | None = None


class _Quiet:
    def warning(self, text: str) -> None:
        pass


_QUIET = _Quiet()


def plan_sources(sources: Sequence[str | Path], options: BuildOptions, logger: Any) -> list[SourcePlan]:
    """Open every source (bag topic or image folder) with the frame selection of ``options``.

    Raises :class:`BuildError` for a path that does not exist, a time range on a folder, or when no
    source is usable; other faults are recorded on the source and warned about.
    """
    plans: list[SourcePlan] = []
    for given in sources:
        path = Path(given).expanduser()
        if not path.exists():
            raise BuildError(
                f"source {str(given)!r} does not exist; pass rosbag2 bags (directory, .mcap or .db3) or image folders"
            )
        name = str(path.resolve())
        stats = SkipStats()
        if is_bag_path(path) and (options.masks is not None or options.stills):
            raise BuildError(
                f"{'--masks' if options.masks is not None else '--stills'} applies to image folders and "
                f"{str(given)!r} is a bag; build it separately without that option"
            )
        if is_bag_path(path):
            summary = SourceSummary(path=name, kind="bag")
            plan = SourcePlan(summary, stats)
            plans.append(plan)
            try:
                # Quiet: iter_bag_frames below opens the bag again and warns about damage once.
                topics = list_image_topics(path, logger=_QUIET)
                if options.topic is not None:
                    found = [t for t in topics if t[0] == options.topic]
                    chosen = (options.topic, found[0][1], sum(t[2] for t in found)) if found else None
                else:
                    chosen = choose_image_topic(topics)
                    bases = {t.removesuffix("/compressed") for t, _, c in topics if c}
                    if chosen is not None and len(bases) > 1:
                        logger.warning(
                            f"Bag {name!r} has several image topics "
                            f"({', '.join(f'{t} [{c} msgs]' for t, _, c in topics)}); "
                            f"using {chosen[0]!r} (most messages); pass --topic to choose another"
                        )
                start_ns = end_ns = None
                if options.start_s is not None or options.end_s is not None:
                    needs_start = any(v is not None and v < 1e9 for v in (options.start_s, options.end_s))
                    start_ns, end_ns = resolve_time_range(
                        options.start_s, options.end_s, bag_start_ns(path) if needs_start else None, f"bag {name!r}"
                    )
                # Opens the bag and checks the topic (its error lists the topics there are).
                plan.frames = iter_bag_frames(
                    name,  # absolute: the manifest's sources must mean the same from any directory
                    topic=chosen[0] if chosen else options.topic,
                    start_ns=start_ns,
                    end_ns=end_ns,
                    stride=options.stride,
                    min_interval_s=options.min_interval_s,
                    stats=stats,
                    logger=logger,
                )
                if chosen is not None:
                    summary.topic, summary.msgtype, summary.messages = chosen
            except (ValueError, ConfigError, OSError) as exc:
                summary.error = str(exc)
        else:
            summary = SourceSummary(path=name, kind="folder")
            plan = SourcePlan(summary, stats)
            plans.append(plan)
            if options.start_s is not None or options.end_s is not None:
                raise BuildError(
                    f"--start/--end select bag receive times; {str(given)!r} is an image folder "
                    "(use --stride or --max-frames, or build it separately)"
                )
            try:
                frames = iter_folder_frames(
                    name, stride=options.stride, min_interval_s=options.min_interval_s, stats=stats,
                    logger=logger, fps=options.fps,
                )
                if options.masks is not None:
                    frames = with_ignore_masks(frames, Path(options.masks).expanduser(), summary, stats, logger)
                plan.frames = as_stills(frames) if options.stills else frames
                summary.messages = len(image_files(path))
            except (ValueError, OSError) as exc:
                summary.error = str(exc)
    usable = [p for p in plans if p.frames is not None]
    if not usable:
        reasons = "; ".join(p.summary.error or "?" for p in plans)
        raise BuildError(reasons if len(plans) == 1 else f"no usable source: {reasons}")
    for plan in plans:
        if plan.summary.error:
            logger.warning(f"skipping {plan.summary.path}: {plan.summary.error}")
    return plans


def read_ignore_mask(path: Path, size: tuple[int, int]) -> np.ndarray:
    """A per-frame mask file as (H, W) bool at a frame's ``size`` (non-zero in any channel = ignore).

    Raises ValueError when the file cannot be read as an image.
    """
    data = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if image is None:
        raise ValueError(f"ignore mask {str(path)!r} is not a readable image")
    if image.ndim == 3:
        image = image.max(axis=2)
    if image.shape != tuple(size):
        # Nearest neighbour keeps the mask binary; a mask at another resolution of the same camera still fits.
        image = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
    return image > 0


def with_ignore_masks(
    frames: Iterator[Frame], masks: Path, summary: SourceSummary, stats: SkipStats, logger: Any
) -> Iterator[Frame]:
    """Attach ``masks/<file stem>.png`` (non-zero = ignore) to each folder frame as ``frame.ignore``.

    A frame without a mask file is used whole; a frame whose mask cannot be read is skipped
    (counted as decode_error): its masked pixels may be what must stay out of the bank.
    """
    for frame in frames:
        path = masks / f"{Path(frame.name).stem}.png"
        if path.is_file():
            try:
                frame.ignore = read_ignore_mask(path, frame.rgb.shape[:2])
            except (ValueError, OSError, cv2.error) as exc:
                stats.decode_error += 1
                stats.yielded -= 1
                logger.warning(f"Image folder {frame.source!r}: {frame.name} skipped: {exc}")
                continue
            summary.masked += 1
        yield frame


def as_stills(frames: Iterator[Frame]) -> Iterator[Frame]:
    """Frames of a folder of unrelated stills: each image becomes its own source (its file path).

    Calibration then never leaves a neighbouring file out as a near duplicate, and the near-
    duplicate filter compares an image only with itself.
    """
    for frame in frames:
        frame.source = str(Path(frame.source) / frame.name)
        yield frame


class FramePrefetcher:
    """Reads and decodes frames in a thread, a bounded queue ahead of the model.

    JPEG decoding and bag reading release the GIL, so they overlap the forward pass; the
    queue bound keeps at most ``depth`` decoded frames in memory.
    """

    _DONE = object()

    def __init__(self, plans: Sequence[SourcePlan], depth: int, logger: Any) -> None:
        self._plans = [p for p in plans if p.frames is not None]
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._logger = logger
        self._thread = threading.Thread(target=self._run, name="semanom-bank-reader", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for plan in self._plans:
                frames = plan.frames
                assert frames is not None
                try:
                    for frame in frames:
                        if not self._put((plan, frame)):
                            return
                except Exception as exc:  # noqa: BLE001 - a reader failure io.frames did not expect: skip the rest
                    plan.stats.read_error += 1
                    self._logger.warning(
                        f"{plan.summary.kind} {plan.summary.path!r}"
                        + (f" topic {plan.summary.topic!r}" if plan.summary.topic else "")
                        + f": reading stopped ({type(exc).__name__}: {exc}); continuing with the next source"
                    )
                finally:
                    close = getattr(frames, "close", None)
                    if close is not None:
                        close()
                if self._stop.is_set():
                    return
        finally:
            self._put(self._DONE)

    def __iter__(self) -> Iterator[tuple[SourcePlan, Frame]]:
        while True:
            item = self._queue.get()
            if item is self._DONE:
                return
            yield item

    def close(self) -> None:
        self._stop.set()
        while True:  # unblock a reader waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                break
        self._thread.join(timeout=10.0)
