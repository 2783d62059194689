"""Frames from rosbag2 bags, read with ``rosbags`` (no ROS install needed).

Everything streams: one message (or one MCAP chunk) is in memory at a time. A message that
cannot be deserialized or decoded is skipped, counted in a :class:`SkipStats` and warned about;
a damaged bag file is read up to the damage (:mod:`semanom_ros.io.mcap_recovery` when rosbags
cannot open it at all), then a warning is emitted and iteration stops without an exception.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from .frame_types import (
    BAG_SUFFIXES,
    IMAGE_MSGTYPES,
    BagTopic,
    Frame,
    SkipStats,
    SkipWarner,
    check_selection_args,
    natural_key,
)
from .images import decode_image
from .mcap_recovery import BagDamaged, RecoveredMcapBag

__all__ = [
    "bag_start_ns",
    "choose_image_topic",
    "is_bag_path",
    "iter_bag_frames",
    "list_image_topics",
    "ros2_typestore",
]

_TYPESTORE: Any = None


def ros2_typestore() -> Any:
    """The rosbags typestore (ROS 2 Humble types) for bags without embedded definitions and for writing."""
    global _TYPESTORE  # noqa: PLW0603 - built once; get_typestore costs ~0.1 s
    if _TYPESTORE is None:
        from rosbags.typesys import Stores, get_typestore  # noqa: PLC0415

        # sensor_msgs/Image and CompressedImage are identical in every ROS 2 distro.
        _TYPESTORE = get_typestore(Stores.ROS2_HUMBLE)
    return _TYPESTORE


# --------------------------------------------------------------------------- rosbags reader


class _RosbagsBag:
    """A bag that rosbags' AnyReader can open (the normal case)."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = paths
        self.reader: Any = None
        self._open()
        self.topics, self.all_topics = self._topics()
        self.close()

    def _open(self) -> None:
        from rosbags.highlevel import AnyReader  # noqa: PLC0415

        reader = AnyReader(self.paths, default_typestore=ros2_typestore())
        reader.open()
        self.reader = reader

    def _topics(self) -> tuple[list[BagTopic], dict[str, str]]:
        groups: dict[tuple[str, str], BagTopic] = {}
        all_topics: dict[str, str] = {}
        for conn in self.reader.connections:
            all_topics.setdefault(conn.topic, conn.msgtype)
            if conn.msgtype in IMAGE_MSGTYPES:
                entry = groups.setdefault((conn.topic, conn.msgtype), BagTopic(conn.topic, conn.msgtype, 0))
                entry.count += int(conn.msgcount)
                entry.connections.append(conn)
        return sorted(groups.values(), key=lambda t: (t.topic, t.msgtype)), all_topics

    def open(self) -> None:
        self._open()
        # Connection objects belong to one open reader; refresh them.
        self.topics, self.all_topics = self._topics()

    def close(self) -> None:
        if self.reader is not None:
            reader, self.reader = self.reader, None
            reader.close()

    def messages(self, topic: str, stop: int | None) -> Iterator[tuple[int, bytes, str]]:
        conns = [c for t in self.topics if t.topic == topic for c in t.connections]
        for conn, ts, raw in self.reader.messages(connections=conns, stop=stop):
            yield ts, raw, conn.msgtype

    def deserialize(self, raw: bytes, msgtype: str) -> Any:
        if msgtype in self.reader.typestore.fielddefs:
            return self.reader.deserialize(raw, msgtype)
        # A bag may embed definitions for some types only; AnyReader then knows no others.
        return ros2_typestore().deserialize_cdr(raw, msgtype)


# --------------------------------------------------------------------------- opening


def _storage_files(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in BAG_SUFFIXES]
    return sorted(files, key=lambda p: natural_key(p.name))


def is_bag_path(path: str | os.PathLike[str]) -> bool:
    """True for a rosbag2 storage file (.mcap / .db3) or a directory with metadata.yaml or storage files."""
    path = Path(path)
    if path.is_file():
        return path.suffix.lower() in BAG_SUFFIXES
    return path.is_dir() and ((path / "metadata.yaml").is_file() or bool(_storage_files(path)))


def _open_bag(bag_path: str | os.PathLike[str], warner: SkipWarner) -> _RosbagsBag | RecoveredMcapBag:
    path = Path(bag_path)
    if not path.exists():
        raise ValueError(f"Bag {str(path)!r} does not exist")
    if path.is_file():
        if path.suffix.lower() not in BAG_SUFFIXES:
            raise ValueError(
                f"Bag {str(path)!r} is not a rosbag2 storage file; pass a bag directory or a "
                f'{" / ".join(BAG_SUFFIXES)} file'
            )
        files = [path]
        attempts = [files]
    else:
        files = _storage_files(path)
        attempts = []
        if (path / "metadata.yaml").is_file():
            attempts.append([path])
        if files:
            # A recording that crashed may lack metadata.yaml (or have a stale one).
            attempts.append(files)
        if not attempts:
            raise ValueError(
                f"Bag {str(path)!r} is not a rosbag2 bag: it has no metadata.yaml and no "
                f'{" / ".join(BAG_SUFFIXES)} files'
            )
    errors: list[str] = []
    for paths in attempts:
        try:
            bag = _RosbagsBag(paths)
        except Exception as exc:  # noqa: BLE001 - rosbags raises many types; all mean "cannot open"
            errors.append(_reason(exc))
            continue
        if errors:
            warner.warn(
                f"Bag {str(path)!r}: metadata.yaml could not be used ({errors[0]}); read the "
                f"storage files directly"
            )
        return bag
    reason = errors[0] if errors else "unknown error"
    mcaps = [f for f in files if f.suffix.lower() == ".mcap"]
    if mcaps:
        try:
            recovered = RecoveredMcapBag(mcaps, ros2_typestore())
        except Exception:  # noqa: BLE001 - not recoverable either; report rosbags' reason
            recovered = None
        if recovered is not None:
            recovered.warn = lambda text: warner.item(f"Bag {str(path)!r}: {text}")
            warner.warn(
                f"Bag {str(path)!r} could not be opened normally ({reason}); reading it "
                f"sequentially up to the damage (the `mcap recover` tool can rebuild a damaged MCAP file)"
            )
            return recovered
    raise ValueError(f"Cannot open bag {str(path)!r}: {reason}")


def _reason(exc: BaseException) -> str:
    # rosbags messages end with '.', which reads badly inside our sentences.
    text = str(exc).strip().rstrip(".")
    return text if isinstance(exc, BagDamaged) else f"{type(exc).__name__}: {text}"


def _fmt_topics(topics: Sequence[BagTopic]) -> str:
    if not topics:
        return "(none)"
    return ", ".join(f'{t.topic} [{t.msgtype.rsplit("/", 1)[-1]}, {t.count} msgs]' for t in topics)


def _select_topic(
    bag: _RosbagsBag | RecoveredMcapBag, src: str, topic: str | None, warner: SkipWarner
) -> tuple[str, int]:
    topics = bag.topics
    others = ", ".join(f"{t} [{m}]" for t, m in sorted(bag.all_topics.items())) or "(none)"
    if topic is not None:
        sel = [t for t in topics if t.topic == topic]
        if sel:
            return topic, sum(t.count for t in sel)
        if topic in bag.all_topics:
            raise ValueError(
                f"Topic {topic!r} in bag {src!r} has type {bag.all_topics[topic]}, not "
                f"sensor_msgs/msg/Image or CompressedImage; image topics: {_fmt_topics(topics)}"
            )
        raise ValueError(
            f"Topic {topic!r} not found in bag {src!r}; image topics: {_fmt_topics(topics)}; "
            f"all topics: {others}"
        )
    if not topics:
        raise ValueError(
            f"Bag {src!r} has no sensor_msgs/msg/Image or CompressedImage topic; topics: {others}"
        )
    chosen = choose_image_topic([(t.topic, t.msgtype, t.count) for t in topics])
    if chosen is None:
        raise ValueError(f"Bag {src!r}: no image topic has any message; image topics: {_fmt_topics(topics)}")
    best, _, count = chosen
    bases = {t.topic.removesuffix("/compressed") for t in topics if t.count}
    if len(bases) > 1:
        warner.warn(
            f"Bag {src!r} has several image topics ({_fmt_topics(topics)}); using {best!r} "
            f"(most messages); pass topic= to choose another"
        )
    return best, count


def choose_image_topic(topics: Sequence[tuple[str, str, int]]) -> tuple[str, str, int] | None:
    """(topic, msgtype, messages) a reader picks from ``list_image_topics`` rows when no topic is given.

    The most messages; on a tie a raw Image beats .../compressed (lossless, no JPEG decode).
    None when no image topic has a message.
    """
    per_topic: dict[str, int] = {}
    types: dict[str, str] = {}
    for topic, msgtype, count in topics:
        per_topic[topic] = per_topic.get(topic, 0) + count
        types.setdefault(topic, msgtype)
    if not per_topic or max(per_topic.values()) == 0:
        return None
    raw = {t for t, m, _ in topics if m == IMAGE_MSGTYPES[0]}
    best = sorted(per_topic, key=lambda n: (-per_topic[n], n not in raw, n))[0]
    return best, types[best], per_topic[best]


def list_image_topics(bag_path: str | os.PathLike[str], *, logger: Any = None) -> list[tuple[str, str, int]]:
    """(topic, msgtype, message count) of every Image / CompressedImage topic, sorted by topic.

    Raises:
        ValueError: the path is not a bag or cannot be opened.
    """
    bag = _open_bag(bag_path, SkipWarner(SkipStats(), logger))
    return [(t.topic, t.msgtype, t.count) for t in bag.topics]


def _header_stamp_ns(msg: Any) -> int:
    try:
        stamp = msg.header.stamp
        return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)
    except AttributeError:
        return 0


# --------------------------------------------------------------------------- bag frames


def iter_bag_frames(
    bag_path: str | os.PathLike[str],
    topic: str | None = None,
    *,
    start_ns: int | None = None,
    end_ns: int | None = None,
    stride: int = 1,
    min_interval_s: float = 0.0,
    max_frames: int | None = None,
    stats: SkipStats | None = None,
    logger: Any = None,
) -> Iterator[Frame]:
    """Stream RGB frames from one image topic of a rosbag2 bag (directory, .mcap or .db3 file).

    ``topic=None`` picks the image topic with the most messages (a raw Image
    wins a tie with its ``/compressed`` twin). ``start_ns``/``end_ns`` select
    bag receive time in ``[start_ns, end_ns)`` (absolute ns, as ``ros2 bag info``
    shows); ``stride`` keeps every n-th message in that range;
    ``min_interval_s`` drops a message received sooner than that after the
    previous frame; ``max_frames`` stops after that many frames. Skips and
    warnings go to ``stats`` and ``logger`` (``logging.Logger`` or rclpy logger).

    Raises (on the call, before iterating):
        ValueError: bag missing or unopenable, topic missing or not an image topic, bad arguments.
    """
    check_selection_args(stride, max_frames, min_interval_s)
    if start_ns is not None and end_ns is not None and end_ns <= start_ns:
        raise ValueError(f"end_ns ({end_ns}) must be greater than start_ns ({start_ns})")
    stats = stats if stats is not None else SkipStats()
    warner = SkipWarner(stats, logger)
    src = str(bag_path)
    bag = _open_bag(bag_path, warner)
    name, total = _select_topic(bag, src, topic, warner)
    if total == 0:
        warner.warn(f"Bag {src!r}: topic {name!r} has no messages; no frames")
    return _bag_frames(
        bag, src, name, total, start_ns, end_ns, int(stride),
        round(float(min_interval_s) * 1e9), max_frames, stats, warner,
    )


def _bag_frames(
    bag: _RosbagsBag | RecoveredMcapBag,
    src: str,
    topic: str,
    total: int,
    start_ns: int | None,
    end_ns: int | None,
    stride: int,
    min_interval_ns: int,
    max_frames: int | None,
    stats: SkipStats,
    warner: SkipWarner,
) -> Iterator[Frame]:
    if max_frames == 0:
        stats.max_count += total
        return
    seen = 0
    in_range = 0
    yielded = 0
    last_emit: int | None = None
    last_ts: int | None = None
    ended = "eof"
    bag.open()
    try:
        messages = bag.messages(topic, end_ns)
        while True:
            try:
                ts, raw, msgtype = next(messages)
            except StopIteration:
                break
            except Exception as exc:  # noqa: BLE001 - any reader failure means the file is damaged here
                stats.read_error += 1
                where = f"after message #{seen - 1} at {last_ts} ns" if seen else "before the first message"
                warner.warn(
                    f"Bag {src!r}: reading topic {topic!r} stopped {where}: {_reason(exc)}. The bag is "
                    f"damaged or truncated; the {seen} messages on the topic before this point were read"
                )
                ended = "error"
                break
            index = seen
            seen += 1
            last_ts = ts
            if (start_ns is not None and ts < start_ns) or (end_ns is not None and ts >= end_ns):
                stats.time_range += 1
                continue
            k = in_range
            in_range += 1
            if k % stride:
                stats.stride += 1
                continue
            if last_emit is not None and ts - last_emit < min_interval_ns:
                stats.min_interval += 1
                continue
            try:
                msg = bag.deserialize(raw, msgtype)
            except Exception as exc:  # noqa: BLE001 - corrupt payloads raise assorted errors
                stats.deserialize_error += 1
                warner.item(
                    f"Bag {src!r}: topic {topic!r} message #{index} at {ts} ns could not be "
                    f"deserialized as {msgtype}: {exc}; skipped"
                )
                continue
            try:
                rgb = decode_image(msg)
            except Exception as exc:  # noqa: BLE001 - ImageDecodeError or an OpenCV failure
                stats.decode_error += 1
                warner.item(f"Bag {src!r}: topic {topic!r} message #{index} at {ts} ns skipped: {exc}")
                continue
            stamp = _header_stamp_ns(msg) or ts
            last_emit = ts
            yielded += 1
            stats.yielded += 1
            yield Frame(
                rgb=rgb, source=src, index=index, stamp_ns=stamp, topic=topic, name=f"{topic}@{stamp}"
            )
            if max_frames is not None and yielded >= max_frames:
                ended = "max"
                break
    finally:
        bag.close()
    # Messages never read (past end_ns or max_frames) still count, so that
    # yielded + skipped == messages on the topic for an intact bag.
    unread = max(0, total - seen)
    if ended == "max":
        stats.max_count += unread
    elif ended == "eof" and end_ns is not None:
        stats.time_range += unread


def bag_start_ns(path: str | os.PathLike[str]) -> int | None:
    """Receive time of the bag's first message (any topic), or None when the bag cannot be indexed."""
    from rosbags.highlevel import AnyReader  # noqa: PLC0415

    path = Path(path)
    attempts = [[path]]
    if path.is_dir():
        attempts.append(sorted(p for p in path.iterdir() if p.suffix.lower() in BAG_SUFFIXES))
    for paths in attempts:
        if not paths:
            continue
        try:
            with AnyReader(paths, default_typestore=ros2_typestore()) as reader:
                return int(reader.start_time)
        except Exception:  # noqa: BLE001 - rosbags raises many types; all mean "cannot index"
            continue
    return None
